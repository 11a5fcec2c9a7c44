//! Stopping the real agent process with real signals: SIGTERM mid-cycle loses no collected
//! payload, a second SIGTERM exits at once, and a hanging listener, a query waiting behind a lock
//! or a frozen database session never keep the agent from exiting 0 within its shutdown grace.
//!
//! No test asserts a duration: the waits below are liveness bounds for a broken agent.

mod common;

use std::time::Duration;

use common::agent::AgentProcess;
use common::e2e::{collected_at, gaps, source, unix_now, wait_until, Rig, KEY, LIVENESS};
use common::listener::{Answer, TestListener};
use common::TestPg;

/// Longer than the agent's 8 s shutdown grace plus a slow machine: only a hang reaches it.
const EXIT_BOUND: Duration = Duration::from_secs(30);

/// Waits until the agent wrote its status file (its threads run), or panics.
fn wait_running(rig: &Rig, agent: &AgentProcess) {
    let status = rig.state_dir().join("status");
    let want = format!("pid: {}\n", agent.pid());
    assert!(
        wait_until(LIVENESS, || std::fs::read_to_string(&status)
            .is_ok_and(|t| t.contains(&want))),
        "the agent did not start; log:\n{}",
        agent.log_text()
    );
}

fn stop_and_expect_0(agent: &mut AgentProcess, what: &str) {
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(EXIT_BOUND)
        .unwrap_or_else(|| panic!("{what}: no exit after SIGTERM; log:\n{}", agent.log_text()));
    assert_eq!(
        status.code(),
        Some(0),
        "{what}: exit status; log:\n{}",
        agent.log_text()
    );
}

#[test]
fn sigterm_mid_cycle_loses_no_collected_payload() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("shutdown-seq", &pg, &listener.url());
    // Slower than the agent produces, so every stop leaves a backlog in the spool.
    rig.set("listener", "max_requests_per_minute", "60");
    let mut admin = pg.admin();

    // (SIGTERM time, start of the next run, the log marker written just before the SIGTERM)
    let mut stops: Vec<(f64, f64, String)> = Vec::new();
    for round in 0..3u64 {
        let started = unix_now();
        if let Some(last) = stops.last_mut() {
            last.1 = started;
        }
        let mut agent = rig.start();
        wait_running(&rig, &agent);
        // The log tailer has opened the server log (the first run starts at its end), so the
        // marker below is in what this agent must deliver.
        assert!(
            wait_until(LIVENESS, || agent.log_text().matches("] tailing ").count()
                > round as usize),
            "the server log was not opened; log:\n{}",
            agent.log_text()
        );
        // Different offsets into the 1 s cycle and the 250 ms sampling.
        std::thread::sleep(Duration::from_millis(1700 + 430 * round));
        let marker = format!("bv-shutdown-marker-{round}-{}", std::process::id());
        admin
            .batch_execute(&format!("DO $$BEGIN RAISE LOG '{marker}'; END$$"))
            .unwrap();
        let at = unix_now();
        stop_and_expect_0(&mut agent, &format!("round {round}"));
        stops.push((at, f64::MAX, marker));
    }
    let delivered_before = listener.stored().len();

    // A clean run with a fast pace drains what the stopped runs left.
    let restarted = unix_now();
    stops.last_mut().unwrap().1 = restarted;
    rig.set("listener", "max_requests_per_minute", "6000");
    let mut agent = rig.start();
    let everything_arrived = |stored: &[serde_json::Value]| {
        stops.iter().all(|(at, next, marker)| {
            // The activity summary flushed at the stop itself...
            stored.iter().any(|v| {
                source(v) == "pg_stat_activity" && collected_at(v) > *at && collected_at(v) < *next
            })
            // ... and the log line written just before it (flushed at the stop, or read again
            // from the committed position by the next run).
            && stored.iter().any(|v| source(v) == "pg_log" && v.to_string().contains(marker.as_str()))
        })
    };
    let arrived = wait_until(LIVENESS, || everything_arrived(&listener.stored()));
    stop_and_expect_0(&mut agent, "clean run");
    let stored = listener.stored();
    assert!(
        arrived,
        "payloads collected at a stop never arrived; stops {stops:?}; stored {} bodies; log:\n{}",
        stored.len(),
        agent.log_text()
    );
    let seqs = listener.stored_seqs();
    assert!(
        gaps(&seqs).is_empty(),
        "sequence numbers missing at the listener: {:?}",
        gaps(&seqs)
    );
    assert!(
        delivered_before < seqs.len(),
        "the stopped runs left nothing in the spool ({delivered_before} delivered): the test proved nothing"
    );
    assert!(
        listener.schema_violations().is_empty(),
        "{:?}",
        listener.schema_violations()
    );
    println!(
        "{} payloads, seq 1..={}, {} of them delivered only after the restart",
        seqs.len(),
        seqs.iter().max().unwrap(),
        seqs.len() - delivered_before
    );
}

#[test]
fn a_second_sigterm_while_stopping_exits_at_once() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_default(Answer::Hang);
    let mut rig = Rig::new("shutdown-twice", &pg, &listener.url());
    // The request in flight would hold the shipper far beyond the shutdown grace.
    rig.set("listener", "timeout_s", "120");
    let mut agent = rig.start();
    assert!(
        listener.wait_for(LIVENESS, |r| !r.is_empty()),
        "no request reached the listener; log:\n{}",
        agent.log_text()
    );
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(LIVENESS, || agent.log_text().contains("SIGTERM: stopping")),
        "the first SIGTERM was not taken; log:\n{}",
        agent.log_text()
    );
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(EXIT_BOUND)
        .expect("the agent exits after a second SIGTERM");
    let log = agent.log_text();
    // 130 comes only from the forced exit; the orderly path ends with 0 after the grace.
    assert_eq!(status.code(), Some(130), "log:\n{log}");
    assert!(log.contains("second stop signal: exiting at once"), "{log}");
    listener.release_hung();
}

#[test]
fn stop_while_the_listener_hangs_exits_0_and_keeps_the_payload_in_flight() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_default(Answer::Hang);
    let mut rig = Rig::new("shutdown-hang", &pg, &listener.url());
    rig.set("listener", "timeout_s", "120");
    let mut agent = rig.start();
    assert!(
        listener.wait_for(LIVENESS, |r| !r.is_empty()),
        "no request reached the listener; log:\n{}",
        agent.log_text()
    );
    let in_flight = listener.requests()[0]
        .seq()
        .expect("the body carries a seq");
    stop_and_expect_0(&mut agent, "stop while the listener hangs");
    let log = agent.log_text();
    assert!(
        log.contains("exiting without waiting for: shipper"),
        "the shipper was not the thread left behind: {log}"
    );

    // The payload that was in flight was never acknowledged: the next run delivers it.
    listener.set_default(Answer::Ok);
    listener.release_hung();
    let mut agent = rig.start();
    let arrived = wait_until(LIVENESS, || listener.stored_seqs().contains(&in_flight));
    stop_and_expect_0(&mut agent, "the next run");
    assert!(
        arrived,
        "seq {in_flight} (in flight at the stop) never arrived; log:\n{}",
        agent.log_text()
    );
    assert!(gaps(&listener.stored_seqs()).is_empty());
}

#[test]
fn stop_while_a_query_waits_behind_a_lock_exits_0() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("shutdown-lock", &pg, &listener.url());
    // The longest lock wait the agent allows, so a sample is nearly always queued on the lock.
    rig.set("database", "lock_timeout_ms", "1000");
    let mut agent = rig.start();
    wait_running(&rig, &agent);
    assert!(
        listener.wait_for(LIVENESS, |r| r.iter().any(|r| r
            .json
            .as_ref()
            .is_some_and(|v| source(v) == "pg_stat_activity"))),
        "no activity payload before the lock; log:\n{}",
        agent.log_text()
    );

    // Another session holds ACCESS EXCLUSIVE on the view every activity sample reads.
    let mut locker = pg.admin();
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let queued = wait_until(LIVENESS, || {
        let n: i64 = locker
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted \
                 AND relation = 'pg_catalog.pg_stat_activity'::regclass",
                &[],
            )
            .unwrap()
            .get(0);
        n > 0
    });
    assert!(
        queued,
        "no agent query ever queued behind the lock; log:\n{}",
        agent.log_text()
    );
    stop_and_expect_0(&mut agent, "stop while a query waits behind a lock");
    locker.batch_execute("ROLLBACK").unwrap();
}

/// Sends SIGCONT to the frozen backends when dropped, so the server can stop.
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill with a pid of a server process this test froze.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

#[test]
fn stop_while_the_database_hangs_exits_0_within_the_grace() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("shutdown-frozen", &pg, &listener.url());
    let mut agent = rig.start();
    wait_running(&rig, &agent);
    let mut admin = pg.admin();
    let mut pids: Vec<i32> = Vec::new();
    assert!(wait_until(LIVENESS, || {
        pids = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'bitville-monitor'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        !pids.is_empty()
    }));
    // Freeze the agent's server sessions: its queries on them never answer, and no server-side
    // timeout can fire in a stopped process.
    let _frozen = Frozen(pids.clone());
    for pid in &pids {
        // SAFETY: kill with a pid of a backend of our throwaway server.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    // Let a collector run into a frozen session.
    std::thread::sleep(Duration::from_millis(1500));
    stop_and_expect_0(&mut agent, "stop while the database hangs");
    let log = agent.log_text();
    // A thread stuck on a frozen session, or one whose new connection hung behind it (that
    // attempt now ends at the connect deadline, so the thread is no longer stuck at the stop).
    assert!(
        log.contains("exiting without waiting for:") || log.contains("connecting was blocked"),
        "no thread was stuck in a frozen session ({pids:?}): the test proved nothing; log:\n{log}"
    );
}
