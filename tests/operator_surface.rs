//! The operator's surface tells the truth, with the real binary against real PostgreSQL and the
//! contract listener (which serves `/ingest/postgres` and, like the real one, `/ingest/php`):
//! `--test` recognises the postgres ingest endpoint and only it, `--once` says what was
//! delivered and fails unless everything was, `--status` follows the breaker and the backlog
//! within seconds.

mod common;

use std::time::Duration;

use common::e2e::{source, wait_until, Rig, KEY, LIVENESS};
use common::listener::{Answer, TestListener};
use common::{TestPg, MONITOR_ROLE};
use serde_json::Value;

/// The `listener` line of a `--test` report.
fn listener_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains(" listener "))
        .unwrap_or_else(|| panic!("no listener line:\n{stdout}"))
}

#[test]
fn test_mode_recognises_the_postgres_endpoint_and_only_it_storing_nothing() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);

    let right = Rig::new("surface-test-right", &pg, &listener.url());
    let out = right.run(&["--test"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    let line = listener_line(&out.stdout);
    assert!(
        line.starts_with("ok   listener ") && line.contains("postgres ingest endpoint"),
        "{line}"
    );

    let wrong = Rig::new("surface-test-php", &pg, &listener.php_url());
    let out = wrong.run(&["--test"], LIVENESS);
    assert_eq!(out.code, Some(6), "{out:?}");
    let line = listener_line(&out.stdout);
    assert!(
        line.starts_with("FAIL listener ") && line.contains("url must end in /ingest/postgres"),
        "{line}"
    );
    assert!(
        line.contains("request_id"),
        "the listener's reason is shown: {line}"
    );

    // Credentials in the URL are never shown (and do not disturb the probe).
    let port = listener.port();
    let with_creds = Rig::new(
        "surface-test-creds",
        &pg,
        &format!("http://bob:url-pass-9@127.0.0.1:{port}/ingest/postgres"),
    );
    let out = with_creds.run(&["--test"], LIVENESS);
    assert!(
        !out.stdout.contains("url-pass-9") && !out.stderr.contains("url-pass-9"),
        "{out:?}"
    );
    assert!(
        listener_line(&out.stdout).contains("http://***@127.0.0.1"),
        "{out:?}"
    );

    let requests = listener.requests();
    assert_eq!(requests.len(), 3, "one probe per run: {requests:?}");
    assert!(
        requests.iter().all(|r| r.status == 400),
        "every probe refused: {requests:?}"
    );
    assert!(listener.stored().is_empty(), "--test stores nothing");
}

#[test]
fn once_with_every_payload_refused_says_so_and_exits_1() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_default(Answer::Status(400));
    let rig = Rig::new("surface-once-400", &pg, &listener.url());
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        !out.stderr.contains("everything was delivered"),
        "{}",
        out.stderr
    );
    let n = listener.requests().len();
    assert!(n > 0, "nothing was sent: {out:?}");
    assert!(
        out.stderr.contains(&format!(
            "delivered 0, dead-lettered {n} (refused by the listener: 400"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("scripted"),
        "the listener's reason: {}",
        out.stderr
    );

    // Everything acknowledged: exit 0 and the count.
    listener.set_default(Answer::Ok);
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    let stored = listener.stored().len();
    assert!(
        out.stderr
            .contains(&format!("delivered {stored}: everything was delivered")),
        "{}",
        out.stderr
    );
}

/// How many sessions of the monitoring role the server authorised so far (`log_connections`).
fn monitor_connections(pg: &TestPg) -> usize {
    std::fs::read_to_string(pg.server_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains(MONITOR_ROLE))
        .count()
}

#[test]
fn once_and_dry_run_make_no_database_query_while_the_pause_file_exists() {
    let pg = TestPg::builder().setting("log_connections", "on").start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("surface-once-pause", &pg, &listener.url());
    let pause = rig.work.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    rig.set("collection", "pause_file", &pause.display().to_string());
    let before = monitor_connections(&pg);

    let out = rig.run(&["--dry-run"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("pause file"), "{}", out.stderr);
    let printed: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        printed.iter().all(|v| source(v) == "system_metrics") && !printed.is_empty(),
        "only host figures while paused: {printed:?}"
    );
    assert_eq!(printed[0]["data"]["agent"]["paused"], Value::Bool(true));

    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("pause file"), "{}", out.stderr);
    assert!(
        listener
            .stored()
            .iter()
            .all(|v| source(v) == "system_metrics"),
        "{:?}",
        listener.stored()
    );
    // The server logs connections asynchronously to its log file: give it a moment to show
    // any that happened (there must be none).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        monitor_connections(&pg),
        before,
        "the agent connected while paused"
    );

    // Without the pause file the same run connects (the check above can fail).
    std::fs::remove_file(&pause).unwrap();
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        wait_until(LIVENESS, || monitor_connections(&pg) > before),
        "no connection logged without the pause file"
    );
}

/// The value of `key` in a `--status` report.
fn status_value(stdout: &str, key: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .map(str::to_string)
}

#[test]
fn status_follows_the_breaker_and_the_drained_backlog_within_seconds() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_default(Answer::Status(500));
    let mut rig = Rig::new("surface-status", &pg, &listener.url());
    // A backlog: one second's collections, none delivered.
    let mut agent = rig.start();
    assert!(
        wait_until(LIVENESS, || listener.requests().len() >= 3),
        "log:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.stop().code(), Some(0));

    // A long interval: only the status triggers can keep --status fresh now.
    rig.set("collection", "interval_s", "60");
    rig.set("listener", "breaker_reset_s", "3");
    let sent_before = listener.requests().len();
    let mut agent = rig.start();
    assert!(
        listener.wait_for(LIVENESS, |r| r.len() >= sent_before + 5),
        "the agent did not retry; log:\n{}",
        agent.log_text()
    );
    let opened = wait_until(Duration::from_secs(10), || {
        let out = rig.run(&["--status"], LIVENESS);
        status_value(&out.stdout, "breaker").as_deref() == Some("open")
    });
    assert!(
        opened,
        "--status never showed the open breaker: {:?}\nlog:\n{}",
        rig.run(&["--status"], LIVENESS),
        agent.log_text()
    );

    listener.set_default(Answer::Ok);
    let mut last = None;
    let drained = wait_until(Duration::from_secs(20), || {
        let out = rig.run(&["--status"], LIVENESS);
        let ok = status_value(&out.stdout, "breaker").as_deref() == Some("closed")
            && status_value(&out.stdout, "spool_records_pending").as_deref() == Some("0");
        last = Some(out);
        ok
    });
    assert!(
        drained,
        "--status did not follow the drain: {last:?}\nlog:\n{}",
        agent.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log_text()
            .contains("backlog drained")),
        "the drain is not logged:\n{}",
        agent.log_text()
    );
    assert!(!listener.stored().is_empty());
    assert!(
        agent.log_text().contains("correlated budget: 2996 "),
        "the start-up log states the budget:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn the_first_interval_of_pg_stat_statements_is_shipped_marked_partial() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("surface-statements", &pg, &listener.url());
    let mut agent = rig.start();
    let statements = || -> Vec<Value> {
        listener
            .stored()
            .into_iter()
            .filter(|v| source(v) == "pg_stat_statements")
            .collect()
    };
    let got = wait_until(LIVENESS, || {
        common::e2e::some_statements(&pg, "first_interval");
        statements().len() >= 2
    });
    assert!(got, "log:\n{}", agent.log_text());
    assert_eq!(agent.stop().code(), Some(0));
    let shipped = statements();
    let seqs: Vec<u64> = shipped
        .iter()
        .filter_map(|v| v["data"]["agent"]["seq"].as_u64())
        .collect();
    assert_eq!(
        shipped[0]["data"]["partial_interval"],
        Value::Bool(true),
        "the first delta is shipped and marked: {}",
        shipped[0]
    );
    assert!(
        shipped[1..]
            .iter()
            .all(|v| v["data"].get("partial_interval").is_none()),
        "only the first is partial: {seqs:?}"
    );
}
