//! The fault campaign kept as bounded tests:
//!
//! - hostile files where the agent reads its configuration, password and CA bundle (a FIFO must
//!   not hang it, a device must not be read forever), each refused with a message naming what it
//!   is;
//! - `kill -9` of the whole agent, ten times at random moments, while the listener fails half
//!   of the requests: no sequence number missing once a clean run drained the spool, never more
//!   than 5 agent sessions, no record reported lost, and no ERROR in the server log.
//!
//! The damaged spool files are in `spool_damage.rs`, the full tmpfs in `spool_disk_full.rs`,
//! the catalog locks (watched at 10 Hz) and the back-off in `pool_connect_faults.rs`, who holds
//! such a lock in `connect_blocked_by.rs`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::e2e::{Rig, KEY};
use common::listener::{Answer, TestListener};
use common::{kill, TempDir, TestPg};

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `--check-config -c ini` with `env`; kills it after 20 s (a hang fails the test).
fn check_config(ini: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitville-pg-agent"))
        .arg("--check-config")
        .arg("-c")
        .arg(ini)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.code(), text);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("--check-config -c {} hung", ini.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_files_are_refused_with_a_clear_message_and_never_hang() {
    let dir = TempDir::new("hostile-files");
    let d = dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let zero = d.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let sub = d.join("a-directory");
    std::fs::create_dir(&sub).unwrap();

    // The configuration file itself.
    for (what, path, kind) in [
        ("a FIFO", &fifo, "FIFO"),
        ("/dev/zero", &zero, "character device"),
        ("a directory", &sub, "directory"),
    ] {
        let (code, text) = check_config(path, &[]);
        assert_ne!(code, Some(0), "-c {what}: {text}");
        assert!(text.contains(kind), "-c {what} says what it is: {text}");
    }

    // A password file named in an otherwise valid file.
    for (path, kind) in [(&fifo, "FIFO"), (&zero, "character device")] {
        let ini = d.join("password.ini");
        std::fs::write(
            &ini,
            format!("[database]\npassword_file = {}\n", path.display()),
        )
        .unwrap();
        let (code, text) = check_config(&ini, &[]);
        assert_eq!(code, Some(3), "password_file = {}: {text}", path.display());
        assert!(
            text.contains(kind),
            "password_file = {}: {text}",
            path.display()
        );
    }

    // The CA bundle (loaded when the shipper is built, not by --check-config).
    for (path, kind) in [(&fifo, "FIFO"), (&zero, "character device")] {
        let start = Instant::now();
        let err = bitville_pg_agent::ship::http::load_ca_file(path).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains(kind), "{err}");
    }
}

#[test]
fn kill_9_under_a_failing_listener_loses_nothing_and_leaves_no_server_error() {
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let listener = TestListener::start(KEY);
    // Half of the requests fail (503 or a dropped connection), by seq, so retries of one
    // payload meet both answers.
    let tries = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let counter = std::sync::Arc::clone(&tries);
    listener.set_rule(move |_v| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        match *n % 4 {
            0 => Some(Answer::Status(503)),
            1 => Some(Answer::Drop),
            _ => None,
        }
    });
    let mut rig = Rig::new("campaign-kill", &pg, &listener.url());
    rig.set("listener", "max_requests_per_minute", "600");
    let mut admin = pg.admin();
    let mut max_sessions = 0;
    kill::kill_rounds(&rig, 10, Duration::from_millis(700), 2000, || {
        max_sessions = max_sessions.max(pg.agent_sessions(&mut admin));
    });

    let tried = *tries.lock().unwrap();
    assert!(
        tried >= 4,
        "the kill rounds met the failing listener ({tried} requests)"
    );
    listener.set_rule(|_v| None);
    let seqs = kill::drain_clean(&rig, &listener);
    assert!(!seqs.is_empty());
    for v in listener.stored() {
        let lost = &v["data"]["agent"]["dropped"]["corrupt_records"];
        assert!(lost.is_null() || lost == 0, "a kill lost records: {v}");
    }
    assert!(max_sessions <= 5, "{max_sessions} agent sessions at once");
    let server_log = std::fs::read_to_string(pg.server_log()).unwrap();
    let errors: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .collect();
    assert!(
        errors.is_empty(),
        "errors in the server log:\n{}",
        errors.join("\n")
    );
    println!(
        "{} payloads stored ({} unique) across 10 kills, {tried} requests to the failing \
         listener; at most {max_sessions} agent sessions",
        seqs.len(),
        seqs.iter().collect::<std::collections::BTreeSet<_>>().len()
    );
}
