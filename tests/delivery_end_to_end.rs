//! Issue 4's delivery guarantees with the whole agent: real PostgreSQL, a 1 s collection
//! interval, the real binary, and a listener in this process that speaks the contract.
//!
//! - the listener down for 30 cycles, then back: every sequence number arrives, in order, and
//!   the pace never exceeds `max_requests_per_minute`;
//! - 20 random `kill -9` while the agent collects and ships, then a clean run: no sequence
//!   number missing (duplicates allowed);
//! - a 400 for one payload: dead-lettered, the payloads behind it delivered;
//! - every body the agent sends validates against the listener's schema.

mod common;

use std::time::{Duration, Instant};

use common::e2e::{gaps, has_after, source, unix_now, wait_until, Rig, KEY, LIVENESS};
use common::listener::{validate, Answer, TestListener};
use common::{kill, TestPg};
use serde_json::Value;

const UUID: &str = "0f8e6a1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b";

fn assert_all_valid(listener: &TestListener) {
    assert!(
        listener.schema_violations().is_empty(),
        "{:?}",
        listener.schema_violations()
    );
    for r in listener.requests() {
        let v = r.json.as_ref().expect("every body is JSON");
        assert_eq!(validate(v), Ok(()), "{}", r.body);
    }
}

#[test]
fn listener_down_for_30_cycles_then_back_every_seq_arrives_in_order_and_paced() {
    const PACE: usize = 600; // requests per minute: at most 10 per second
    let pg = TestPg::start();
    // A port with nothing on it: connections are refused until the listener comes up there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}{}", common::listener::PATH);
    let mut rig = Rig::new("e2e-outage", &pg, &url);
    rig.set("listener", "max_requests_per_minute", &PACE.to_string());
    let mut agent = rig.start();
    let status_file = rig.state_dir().join("status");
    assert!(
        wait_until(LIVENESS, || status_file.exists()),
        "the agent did not start; log:\n{}",
        agent.log_text()
    );
    // 30 collection cycles with the listener down.
    std::thread::sleep(Duration::from_secs(30));
    let listener = TestListener::start_on(KEY, port);
    let back_at = unix_now();

    // The shipper sends oldest first: once a payload collected after the listener came back has
    // arrived, the whole backlog has.
    let drained = wait_until(Duration::from_secs(120), || {
        has_after(&listener.stored(), "system_metrics", back_at + 1.0)
    });
    let status = agent.stop();
    assert!(
        drained,
        "the backlog did not drain; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));

    let stored = listener.stored();
    let seqs = listener.stored_seqs();
    let during_outage = stored
        .iter()
        .filter(|v| source(v) == "system_metrics" && common::e2e::collected_at(v) < back_at)
        .count();
    assert!(
        during_outage >= 20,
        "only {during_outage} cycles were collected during the outage; the test proved little"
    );
    // Every seq, once, in order.
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "stored seqs are not 1..=n in order");

    // The pace, measured at the listener: consecutive requests are spaced by at least 60 s /
    // PACE (the spacing runs from the end of one request to the start of the next), so no
    // window of one second sees more than PACE / 60 requests, and no minute more than PACE.
    let arrivals: Vec<Instant> = listener.requests().iter().map(|r| r.at).collect();
    let per_window = |w: Duration| {
        (0..arrivals.len())
            .map(|i| {
                arrivals[i..]
                    .iter()
                    .take_while(|t| t.duration_since(arrivals[i]) < w)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let (per_second, per_minute) = (
        per_window(Duration::from_secs(1)),
        per_window(Duration::from_secs(60)),
    );
    assert!(
        per_second <= PACE / 60,
        "{per_second} requests within one second at a pace of {PACE} per minute"
    );
    assert!(per_minute <= PACE, "{per_minute} requests within a minute");
    assert_all_valid(&listener);
    println!(
        "{} payloads ({during_outage} cycles during the outage), at most {per_second} requests per second",
        seqs.len()
    );
}

#[test]
fn twenty_kill_9_while_collecting_and_shipping_lose_no_sequence_number() {
    // Every statement is logged, so each cycle also carries pg_log payloads.
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("e2e-kill", &pg, &listener.url());
    // A PHP-style session keeps working: correlated activity and log payloads every cycle.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop_load.clone();
        let mut php = pg.admin();
        std::thread::spawn(move || {
            php.batch_execute(&format!("SET application_name = 'bitville-{UUID}'"))
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                php.batch_execute("SELECT pg_sleep(0.3)").unwrap();
            }
        })
    };
    // A pace close to what the agent produces: at a kill there is often a request in flight and
    // a little backlog.
    rig.set("listener", "max_requests_per_minute", "240");
    kill::kill_rounds(&rig, 20, Duration::from_millis(500), 2500, || {});
    let before_clean = listener.stored_seqs();
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    load.join().unwrap();

    rig.set("listener", "max_requests_per_minute", "6000");
    let seqs = kill::drain_clean(&rig, &listener);
    assert!(
        !before_clean.is_empty(),
        "nothing was shipped during the kill rounds: the kills never hit a shipping agent"
    );
    let unique: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    assert_all_valid(&listener);
    println!(
        "{} payloads, {} delivered during the kill rounds, {} duplicates",
        unique.len(),
        before_clean.len(),
        seqs.len() - unique.len()
    );
}

#[test]
fn a_400_for_one_payload_is_dead_lettered_and_does_not_block_the_rest() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_rule(|v: &Value| {
        (common::listener::seq_of(v) == Some(3)).then_some(Answer::Status(400))
    });
    let rig = Rig::new("e2e-400", &pg, &listener.url());
    // A PHP-style request, so correlated payloads (with correlation_id) are sent too.
    let mut php = pg.admin();
    let php_thread = std::thread::spawn(move || {
        php.batch_execute(&format!(
            "SET application_name = 'bitville-{UUID}'; SELECT pg_sleep(3)"
        ))
        .unwrap();
    });
    let mut agent = rig.start();
    let enough = wait_until(LIVENESS, || {
        listener.stored_seqs().iter().any(|&s| s >= 12)
            && listener
                .stored()
                .iter()
                .any(|v| v.get("correlation_id").is_some())
    });
    let status = agent.stop();
    php_thread.join().unwrap();
    assert!(
        enough,
        "payloads behind the rejected one (or a correlated one) did not arrive; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));

    let seqs = listener.stored_seqs();
    assert_eq!(gaps(&seqs), vec![3], "only the rejected seq is missing");
    let rejected = listener
        .requests()
        .iter()
        .filter(|r| r.seq() == Some(3))
        .count();
    assert_eq!(
        rejected, 1,
        "the rejected payload was sent once, not retried"
    );
    let dead = std::fs::read_to_string(rig.spool_dir().join("dead-letter.jsonl"))
        .expect("the dead-letter file exists");
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead-letter lines are JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["seq"], 3);
    assert_eq!(lines[0]["status"], 400);
    let kept: Value = serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(common::listener::seq_of(&kept), Some(3));
    assert!(
        agent.log_text().contains("seq 3"),
        "the dead letter is logged"
    );
    let correlated = listener
        .stored()
        .into_iter()
        .find(|v| v.get("correlation_id").is_some())
        .unwrap();
    assert_eq!(correlated["correlation_id"], UUID);
    assert_all_valid(&listener);
}
