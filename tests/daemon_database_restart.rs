//! The database goes away under the real agent: restarted while the agent runs, down when the
//! agent starts after it had reached it once, and never reached at all.

mod common;

use std::time::Duration;

use common::e2e::{has_after, source, unix_now, wait_until, Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::TestPg;

#[test]
fn database_restarted_under_a_running_agent_collection_resumes() {
    let mut pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("db-restart", &pg, &listener.url());
    let mut agent = rig.start();
    for src in ["pg_stat_activity", "pg_stat_statements", "system_metrics"] {
        assert!(
            wait_until(LIVENESS, || listener
                .stored()
                .iter()
                .any(|v| source(v) == src)),
            "no {src} before the restart; log:\n{}",
            agent.log_text()
        );
    }

    pg.stop();
    let down_at = unix_now();
    // Host metrics keep flowing while the server is down.
    assert!(
        wait_until(LIVENESS, || {
            let stored = listener.stored();
            stored
                .iter()
                .filter(|v| {
                    source(v) == "system_metrics"
                        && v["data"]["agent"]["collected_at"].as_f64() > Some(down_at)
                })
                .count()
                >= 3
        }),
        "system_metrics stopped while the database was down; log:\n{}",
        agent.log_text()
    );
    pg.start_again();
    let up_at = unix_now();
    assert!(
        agent.wait_exit(Duration::ZERO).is_none(),
        "the agent exited while the database was down; log:\n{}",
        agent.log_text()
    );

    // Collection resumes on the same agent process: new activity and statement payloads.
    let resumed = wait_until(LIVENESS, || {
        common::e2e::some_statements(&pg, "after-restart");
        let stored = listener.stored();
        has_after(&stored, "pg_stat_activity", up_at)
            && has_after(&stored, "pg_stat_statements", up_at)
    });
    let status = agent.stop();
    assert!(
        resumed,
        "collection did not resume after the restart; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));
    // The outage was noticed (so the test did restart the server under the agent).
    let stored = listener.stored();
    let outage_errors = stored.iter().any(|v| {
        source(v) == "system_metrics"
            && v["data"]["agent"]["collected_at"].as_f64() > Some(down_at)
            && v["data"]["agent"]["collected_at"].as_f64() < Some(up_at)
            && v["data"]["agent"]["collectors"]["activity"]["last_error"].is_string()
    });
    assert!(
        outage_errors,
        "no system_metrics during the outage reported the activity collector's error"
    );
    assert!(
        listener.schema_violations().is_empty(),
        "{:?}",
        listener.schema_violations()
    );
}

#[test]
fn started_while_the_database_is_down_after_reaching_it_once_waits_for_it() {
    let mut pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("db-down-seen", &pg, &listener.url());
    // A first run reaches the server and leaves the marker.
    let mut agent = rig.start();
    let seen = rig.state_dir().join("database-seen");
    assert!(
        wait_until(LIVENESS, || seen.exists()),
        "no database-seen marker; log:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.stop().code(), Some(0));

    pg.stop();
    let down_at = unix_now();
    let mut agent = rig.start();
    // It runs on: host metrics arrive although the server is down.
    assert!(
        wait_until(LIVENESS, || has_after(
            &listener.stored(),
            "system_metrics",
            down_at
        )),
        "no system_metrics from the agent started while the server was down; log:\n{}",
        agent.log_text()
    );
    assert!(
        agent.wait_exit(Duration::ZERO).is_none(),
        "the agent exited; log:\n{}",
        agent.log_text()
    );
    // The log keeps flowing too: the agent finds it from the settings the server gave before.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(pg.server_log())
        .unwrap();
    std::io::Write::write_all(
        &mut log,
        b"2026-11-26 17:00:00.000 UTC [4242] LOG:  marker written while the server is down\n",
    )
    .unwrap();
    assert!(
        wait_until(LIVENESS, || listener
            .stored()
            .iter()
            .any(|v| v["source"] == "pg_log"
                && v.to_string()
                    .contains("marker written while the server is down"))),
        "the log line written while the server was down never arrived; log:\n{}",
        agent.log_text()
    );
    pg.start_again();
    let up_at = unix_now();
    let connected = wait_until(LIVENESS, || {
        has_after(&listener.stored(), "pg_stat_activity", up_at)
    });
    let status = agent.stop();
    assert!(
        connected,
        "the agent never connected once the server was back; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));
    assert!(agent
        .log_text()
        .contains("reconnects when the server is back"));
}

#[test]
fn started_while_the_database_was_never_reached_exits_4() {
    let mut pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("db-never", &pg, &listener.url());
    pg.stop();
    let out = rig.run(&[], LIVENESS);
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(
        out.stderr.contains("database check failed"),
        "the reason is named: {}",
        out.stderr
    );
    assert!(!rig.state_dir().join("database-seen").exists());
    assert!(listener.requests().is_empty());
}
