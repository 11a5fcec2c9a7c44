//! The agent's modes and runtime controls, with the real binary against real PostgreSQL and a
//! contract listener: `--dry-run`, `--once`, `--test` (one line per problem, with the fix),
//! `--status`, SIGHUP reloads, and the pause file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::e2e::{source, unix_now, wait_until, Rig, KEY, LIVENESS};
use common::listener::{validate, Answer, TestListener};
use common::{TestPg, MONITOR_ROLE};
use serde_json::Value;

const SOURCES: [&str; 4] = [
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_log",
    "system_metrics",
];

/// A PHP-style session that keeps the server busy (statements, log lines, a correlated session)
/// until the returned guard is dropped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(pg: &TestPg) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut php = pg.admin();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            php.batch_execute(
                "SET application_name = 'bitville-6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b'",
            )
            .unwrap();
            let mut i = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                php.batch_execute(&format!(
                    "SELECT {i}, count(*) FROM pg_class; SELECT pg_sleep(0.2)"
                ))
                .unwrap();
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn dry_run_prints_schema_valid_payloads_of_the_four_sources_and_sends_nothing() {
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("modes-dry", &pg, &listener.url());
    let _load = Load::start(&pg);
    let out = rig.run(&["--dry-run"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    let bodies: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &bodies {
        assert_eq!(validate(v), Ok(()), "{v}");
    }
    for src in SOURCES {
        assert!(
            bodies.iter().any(|v| source(v) == src),
            "no {src} payload in the dry run:\n{}\nlog:\n{}",
            out.stdout,
            out.stderr
        );
    }
    // One full collection: the daemon's interval cycle, server health included.
    let metrics = bodies
        .iter()
        .find(|v| source(v) == "system_metrics")
        .unwrap();
    assert!(
        metrics["data"]["postgres"]["connections"].is_object(),
        "the dry run's system_metrics lacks the server-health block: {metrics}"
    );
    assert!(listener.requests().is_empty(), "a dry run sends nothing");
    let spooled = std::fs::read_dir(rig.spool_dir()).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        })
        .count()
    });
    assert_eq!(spooled, 0, "a dry run spools nothing");
}

#[test]
fn dry_run_makes_no_query_while_the_pause_file_exists() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-dry-pause", &pg, &listener.url());
    let pause = rig.state_dir().join("pause");
    std::fs::create_dir_all(rig.state_dir()).unwrap();
    std::fs::write(&pause, "").unwrap();
    rig.set("collection", "pause_file", &pause.display().to_string());
    let mut admin = pg.admin();
    let before = monitor_calls(&mut admin);
    let out = rig.run(&["--dry-run"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        monitor_calls(&mut admin),
        before,
        "the dry run queried the server although the pause file exists:\n{}",
        out.stderr
    );
    let sources: Vec<String> = out
        .stdout
        .lines()
        .map(|l| source(&serde_json::from_str(l).unwrap()).to_string())
        .collect();
    assert!(
        sources.iter().any(|s| s == "system_metrics"),
        "host figures are still collected while paused: {sources:?}"
    );
    assert!(out.stderr.contains("pause file"), "{}", out.stderr);
}

#[test]
fn once_delivers_to_the_listener_and_exits_0() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("modes-once", &pg, &listener.url());
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    let stored = listener.stored();
    for src in ["pg_stat_activity", "system_metrics"] {
        assert!(
            stored.iter().any(|v| source(v) == src),
            "no {src} delivered: {stored:?}"
        );
    }
    assert!(out.stderr.contains("everything was delivered"), "{out:?}");
    assert!(listener.schema_violations().is_empty());
}

/// The `FAIL` lines of a `--test` report.
fn failures(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// Asserts `--test` exited 6 with exactly one failing check, `name`, whose line names the fix.
fn assert_only_failure(out: &common::e2e::Outcome, name: &str, fix: &str) {
    assert_eq!(out.code, Some(6), "{out:?}");
    let failed = failures(&out.stdout);
    assert_eq!(
        failed.len(),
        1,
        "one failing check expected:\n{}",
        out.stdout
    );
    assert!(
        failed[0].starts_with(&format!("FAIL {name} ")),
        "{}",
        out.stdout
    );
    assert!(
        failed[0].contains("fix:") && failed[0].contains(fix),
        "the line names the fix ({fix}): {}",
        failed[0]
    );
}

#[test]
fn test_mode_passes_when_everything_is_in_place() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("modes-test-ok", &pg, &listener.url());
    let out = rig.run(&["--test"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(failures(&out.stdout).is_empty(), "{}", out.stdout);
    for name in [
        "config",
        "connection",
        "privileges",
        "pg_stat_statements",
        "server log",
        "spool directory",
        "state directory",
        "listener",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok   {name} "))),
            "no ok line for {name}:\n{}",
            out.stdout
        );
    }
    assert!(listener.stored().is_empty(), "--test stores nothing");
}

#[test]
fn test_mode_reports_a_role_without_pg_monitor() {
    let pg = TestPg::start();
    pg.admin()
        .batch_execute("CREATE ROLE plain_login LOGIN")
        .unwrap();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-test-role", &pg, &listener.url());
    rig.set("database", "user", "plain_login");
    let out = rig.run(&["--test"], LIVENESS);
    assert_only_failure(&out, "privileges", "GRANT pg_monitor TO plain_login");
}

#[test]
fn test_mode_reports_a_server_without_pg_stat_statements() {
    let pg = TestPg::builder().without_pg_stat_statements().start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("modes-test-pgss", &pg, &listener.url());
    let out = rig.run(&["--test"], LIVENESS);
    assert_only_failure(&out, "pg_stat_statements", "shared_preload_libraries");
}

/// The uid and gid of `nobody`.
fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static entry read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no 'nobody' user");
    // SAFETY: checked non-null.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

#[test]
fn test_mode_reports_an_unreadable_log_file() {
    use std::os::unix::process::CommandExt;
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-test-log", &pg, &listener.url());
    let log = rig.work.path().join("postgresql.log");
    std::fs::write(&log, "2024-05-01 12:00:00.000 UTC [1] LOG:  hello\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o000)).unwrap();
    rig.set("collection", "log_path", &log.display().to_string());
    // Mode 000 stops everyone but root, and the tests run as root: the agent runs as `nobody`
    // (as it would as its own user), with its spool and state directories its own.
    let (uid, gid) = nobody();
    for dir in [rig.spool_dir(), rig.state_dir()] {
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let mut cmd = rig.command(&["--test"]);
    cmd.uid(uid).gid(gid);
    let out = common::e2e::run_to_end(cmd, rig.work.path(), LIVENESS);
    assert_only_failure(&out, "server log", "let the agent's user read it");
    assert!(
        out.stdout.contains("Permission denied"),
        "the reason is named:\n{}",
        out.stdout
    );
}

#[test]
fn test_mode_reports_a_wrong_api_key() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-test-key", &pg, &listener.url());
    rig.set("listener", "api_key", "not-the-key");
    let out = rig.run(&["--test"], LIVENESS);
    assert_only_failure(&out, "listener", "[listener] api_key");
    assert!(out.stdout.contains("401"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("not-the-key"),
        "the key is never printed"
    );
}

#[test]
fn status_shows_the_spool_depth_while_running_and_exits_3_after_stop() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    // The listener fails every request, so the spool fills.
    listener.set_default(Answer::Status(500));
    let rig = Rig::new("modes-status", &pg, &listener.url());
    let mut agent = rig.start();
    let pending = |text: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix("spool_records_pending: "))
            .and_then(|n| n.trim().parse().ok())
    };
    let mut last = None;
    let filled = wait_until(LIVENESS, || {
        let out = rig.run(&["--status"], LIVENESS);
        let depth = pending(&out.stdout);
        let ok = out.code == Some(0) && depth.is_some_and(|n| n > 0);
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    assert!(
        filled,
        "--status of the running agent: {out:?}\nlog:\n{}",
        agent.log_text()
    );
    assert!(out.stdout.starts_with("state: running"), "{}", out.stdout);
    assert_eq!(agent.stop().code(), Some(0));

    let out = rig.run(&["--status"], LIVENESS);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.contains("not running"), "{}", out.stdout);
    assert!(
        pending(&out.stdout).is_some_and(|n| n > 0),
        "{}",
        out.stdout
    );
}

#[test]
fn sighup_rejects_an_invalid_config_and_applies_a_new_log_level() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-hup", &pg, &listener.url());
    rig.set("log", "level", "info");
    let mut agent = rig.start();
    assert!(
        listener.wait_for_stored(1, LIVENESS),
        "log:\n{}",
        agent.log_text()
    );

    // An invalid file (a port that is not a number) that would also turn on debug logging.
    let valid = rig.text();
    rig.set("log", "level", "debug");
    rig.set("database", "port", "not-a-port");
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(LIVENESS, || agent.log_text().contains("reload rejected")),
        "the rejection is not logged:\n{}",
        agent.log_text()
    );
    let rejected_at = unix_now();
    assert!(
        wait_until(LIVENESS, || common::e2e::has_after(
            &listener.stored(),
            "system_metrics",
            rejected_at + 1.0
        )),
        "the agent stopped working after the rejected reload:\n{}",
        agent.log_text()
    );
    assert!(
        agent.wait_exit(Duration::ZERO).is_none(),
        "the agent exited after the rejected reload"
    );
    let log = agent.log_text();
    let after_rejection = &log[log.find("reload rejected").unwrap()..];
    assert!(
        !after_rejection.contains(" DEBUG "),
        "the rejected file's log level was applied:\n{after_rejection}"
    );

    // The same change in a valid file is applied: debug lines appear.
    std::fs::write(rig.ini(), valid.replace("level = info", "level = debug")).unwrap();
    agent.signal(libc::SIGHUP);
    let applied = wait_until(LIVENESS, || {
        let log = agent.log_text();
        log.find("configuration reloaded")
            .is_some_and(|at| log[at..].contains(" DEBUG "))
    });
    let status = agent.stop();
    assert!(
        applied,
        "no debug line after reloading level = debug:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_after_a_reload_switched_log_files_reopens_the_new_file_not_the_first() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-hup-file", &pg, &listener.url());
    let (first, second) = (
        rig.state_dir().join("first.log"),
        rig.state_dir().join("second.log"),
    );
    std::fs::create_dir_all(rig.state_dir()).unwrap();
    rig.set("log", "level", "info");
    rig.set("log", "file", &first.display().to_string());
    let mut agent = rig.start();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(LIVENESS, || read(&first).contains("running:")),
        "the first log file has no start-up line:\n{}",
        read(&first)
    );

    rig.set("log", "file", &second.display().to_string());
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(LIVENESS, || read(&second)
            .contains("configuration reloaded")),
        "the reload is not logged in the new file:\n{}",
        read(&second)
    );
    // As logrotate would: the old file is gone, then SIGHUP.
    std::fs::remove_file(&first).unwrap();
    agent.signal(libc::SIGHUP);
    let second_reload = wait_until(LIVENESS, || {
        read(&second).matches("configuration reloaded").count() >= 2
    });
    let status = agent.stop();
    assert!(
        second_reload,
        "the second reload is not logged in the new file:\n{}",
        read(&second)
    );
    assert!(
        !first.exists(),
        "SIGHUP recreated the log file the agent started with:\n{}",
        read(&first)
    );
    assert_eq!(status.code(), Some(0));
}

/// Calls of every statement the monitoring role ran, as pg_stat_statements counts them.
fn monitor_calls(admin: &mut postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s \
             JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1",
            &[&MONITOR_ROLE],
        )
        .unwrap()
        .get(0)
}

#[test]
fn while_the_pause_file_exists_no_query_runs_and_host_metrics_flow() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("modes-pause", &pg, &listener.url());
    let pause = rig.work.path().join("pause");
    rig.set("collection", "pause_file", &pause.display().to_string());
    let mut agent = rig.start();
    assert!(
        wait_until(LIVENESS, || listener
            .stored()
            .iter()
            .any(|v| source(v) == "pg_stat_activity")),
        "log:\n{}",
        agent.log_text()
    );
    let metrics = |paused: bool| -> Vec<Value> {
        listener
            .stored()
            .into_iter()
            .filter(|v| {
                source(v) == "system_metrics" && v["data"]["agent"]["paused"] == Value::Bool(paused)
            })
            .collect()
    };

    std::fs::write(&pause, b"").unwrap();
    // Two paused cycles: every thread has seen the pause file since.
    assert!(
        wait_until(LIVENESS, || metrics(true).len() >= 2),
        "the pause was not reported; log:\n{}",
        agent.log_text()
    );
    let mut admin = pg.admin();
    let calls_before = monitor_calls(&mut admin);
    let first = metrics(true)[1].clone();
    // Host metrics keep flowing: three more cycles.
    assert!(
        wait_until(LIVENESS, || metrics(true).len() >= 5),
        "system_metrics stopped during the pause; log:\n{}",
        agent.log_text()
    );
    let calls_after = monitor_calls(&mut admin);
    let last = metrics(true)[4].clone();
    assert_eq!(
        calls_before, calls_after,
        "the monitoring role ran queries while paused"
    );
    let counter = |v: &Value, c: &str, k: &str| v["data"]["agent"]["collectors"][c][k].as_u64();
    assert_eq!(
        counter(&first, "activity", "ok"),
        counter(&last, "activity", "ok"),
        "the activity collector ran while paused"
    );
    assert!(
        counter(&last, "activity", "skipped") > counter(&first, "activity", "skipped"),
        "the skipped samples are counted: {} then {}",
        first["data"]["agent"]["collectors"],
        last["data"]["agent"]["collectors"]
    );
    assert!(agent.log_text().contains("pause file"));

    // Removing the file resumes the queries.
    std::fs::remove_file(&pause).unwrap();
    let resumed = wait_until(LIVENESS, || monitor_calls(&mut admin) > calls_after);
    let status = agent.stop();
    assert!(
        resumed,
        "queries did not resume; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));
}
