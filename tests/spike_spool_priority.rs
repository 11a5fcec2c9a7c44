//! Spike reports in the spool: they never wait behind a backlog and are never evicted to make
//! room for steady-state records, and the drop report names what was evicted instead (by kind,
//! with counts and the seq range). The real spool and shipper against the contract listener in
//! the test process, and `--once` of the real binary (with real PostgreSQL) over a spool left
//! with a backlog and spike reports.
//!
//! No test asserts that something was fast: order is what is checked (which record arrived
//! before which), and time appears only as a liveness bound for a broken agent.

mod common;

use common::listener;
use common::TempDir;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::ship::{Shipper, ShipperOptions};
use bitville_pg_agent::spool::{Spool, SpoolOptions};
use listener::{lane_of, seq_of, TestListener};
use serde_json::Value;

const KEY: &str = "test-key";
/// Liveness bound: only a broken agent gets anywhere near it.
const LIVENESS: Duration = Duration::from_secs(45);

fn open_spool(dir: &std::path::Path, max_bytes: u64) -> Arc<Spool> {
    let mut o = SpoolOptions::new(dir);
    o.max_bytes = max_bytes;
    o.segment_bytes = 8 * 1024;
    o.agent = AgentInfo {
        version: "test".into(),
        host: "test-host".into(),
    };
    Arc::new(Spool::open(o).expect("open spool"))
}

fn options(url: &str, per_minute: u32) -> ShipperOptions {
    let mut o = ShipperOptions::new(url, KEY, "bitville-test");
    o.max_requests_per_minute = per_minute;
    o.timeout = Duration::from_secs(5);
    o.breaker_failures = 2;
    o.breaker_reset = Duration::from_millis(200);
    o.proxy_from_env = false;
    o
}

/// The kind of steady-state record number `i` (as `data.agent.dropped.by_kind` names it), and
/// the payload.
fn steady(i: u64) -> (&'static str, Payload) {
    let (kind, source, data_kind) = match i % 4 {
        0 => ("activity_summary", Source::PgStatActivity, None),
        1 => ("log_entries", Source::PgLog, Some("log_entries")),
        2 => ("pg_stat_statements", Source::PgStatStatements, None),
        _ => (
            "correlated_request",
            Source::PgStatActivity,
            Some("correlated_request"),
        ),
    };
    let mut data = Json::object();
    if let Some(k) = data_kind {
        data.push("kind", k);
    }
    data.push("i", i);
    data.push("pad", "s".repeat(900));
    let payload = Payload {
        source,
        collected_at: 1_700_000_000.0 + i as f64,
        correlation_id: None,
        data,
    };
    (kind, payload)
}

/// Spike report number `i` (a start or an end report, as the spike watch builds them).
fn spike(i: u64) -> Payload {
    Payload {
        source: Source::PgStatActivity,
        collected_at: 1_700_000_000.0 + i as f64,
        correlation_id: None,
        data: Json::object()
            .field("kind", "spike")
            .field("phase", if i % 2 == 0 { "start" } else { "end" })
            .field("spike_id", format!("spike-{i}"))
            .field("timeline", "t".repeat(2500)),
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.done
            .recv_timeout(LIVENESS)
            .expect("the shipper thread stops after `stop` is set");
    }
}

fn start(spool: &Arc<Spool>, opts: ShipperOptions) -> Running {
    let mut shipper = Shipper::new(Arc::clone(spool), opts).expect("build shipper");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    thread::spawn(move || {
        shipper.run(&thread_stop);
        let _ = tx.send(());
    });
    Running { stop, done }
}

/// A port nothing listens on (until the test starts its listener there).
fn free_port() -> u16 {
    let socket = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    socket.local_addr().unwrap().port()
}

fn wait_until(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + LIVENESS;
    while std::time::Instant::now() < deadline {
        if pred() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn dropped(v: &Value) -> Option<&Value> {
    v["data"]["agent"].get("dropped")
}

#[test]
fn spike_reports_outlive_an_overflowing_outage_and_the_drop_report_names_what_went() {
    let dir = TempDir::new("spike-lane-outage");
    // 256 KiB in all: the spike lane gets a quarter (64 KiB), the main lane the rest.
    let spool = open_spool(&dir, 256 * 1024);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}{}", listener::PATH);
    // The listener is down (nothing listens on the port) while the spool overflows.
    let running = start(&spool, options(&url, 6000));
    let mut kind_of_seq = BTreeMap::new();
    let mut spikes = 0u64;
    for i in 0..900u64 {
        let (kind, payload) = steady(i);
        let seq = spool.append(&payload).expect("append steady");
        kind_of_seq.insert(seq, kind);
        // Spike reports early (their segment would be the first evicted in one FIFO spool),
        // in the middle, and late.
        if matches!(i, 5 | 6 | 300 | 301 | 880 | 881) {
            spool.append(&spike(spikes)).expect("append spike");
            spikes += 1;
        }
    }
    spool.sync().unwrap();
    let before = spool.stats();
    assert!(
        before.lost.records > 600,
        "the main lane overflowed many times: {before:?}"
    );
    assert!(before.bytes <= 256 * 1024, "the bound holds: {before:?}");
    assert_eq!(before.spike_pending, spikes, "no spike report was evicted");

    // The listener comes up; the shipper's breaker lets a probe through and the spool drains.
    let l = TestListener::start_on(KEY, port);
    assert!(
        wait_until(|| spool.stats().n_pending == 0),
        "the spool drains: {:?}",
        spool.stats()
    );
    running.stop();
    assert!(
        l.schema_violations().is_empty(),
        "{:?}",
        l.schema_violations()
    );
    let stored = l.stored();

    // Every spike report arrived, in order, before any record of the backlog.
    assert_eq!(l.stored_seqs_in("spike"), (1..=spikes).collect::<Vec<_>>());
    let first_main = stored.iter().position(|v| lane_of(v) == "main").unwrap();
    assert!(
        stored[..first_main].iter().all(|v| lane_of(v) == "spike") && first_main as u64 == spikes,
        "the spike reports go first"
    );
    assert!(stored
        .iter()
        .filter(|v| lane_of(v) == "spike")
        .all(|v| v["data"]["kind"] == "spike" && dropped(v).is_none()));

    // The main lane's drop reports account for every seq that did not arrive, by kind and by
    // range, and never name a spike report.
    let main_seqs = l.stored_seqs();
    let max_seq = *kind_of_seq.keys().last().unwrap();
    assert_eq!(
        *main_seqs.last().unwrap(),
        max_seq,
        "the newest records arrived"
    );
    let mut missing_by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for (seq, kind) in &kind_of_seq {
        if !main_seqs.contains(seq) {
            *missing_by_kind.entry(kind).or_default() += 1;
        }
    }
    let mut reported_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut reported_records = 0;
    for v in stored.iter().filter(|v| lane_of(v) == "main") {
        let Some(d) = dropped(v) else { continue };
        let records = d["records"].as_u64().unwrap();
        reported_records += records;
        let by_kind = d["by_kind"].as_object().expect("by_kind is an object");
        assert!(!by_kind.contains_key("spike"), "{d}");
        assert_eq!(
            by_kind.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
            records,
            "{d}"
        );
        for (k, n) in by_kind {
            *reported_by_kind.entry(k.clone()).or_default() += n.as_u64().unwrap();
        }
        // The range names the seqs that went, all below the record carrying the report, and
        // none of them arrived.
        let (first, last) = (
            d["first_seq"].as_u64().unwrap(),
            d["last_seq"].as_u64().unwrap(),
        );
        assert!(first <= last && last < seq_of(v).unwrap(), "{d}");
        assert_eq!(
            last - first + 1,
            records,
            "nothing in the range arrived: {d}"
        );
        assert!(!main_seqs.iter().any(|s| (first..=last).contains(s)), "{d}");
    }
    assert_eq!(
        reported_records,
        missing_by_kind.values().sum::<u64>(),
        "every missing seq is reported"
    );
    let missing: BTreeMap<String, u64> = missing_by_kind
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    assert_eq!(
        reported_by_kind, missing,
        "the report names what went, by kind"
    );
}

#[test]
fn a_spike_report_appended_behind_a_backlog_is_delivered_before_the_backlog_drains() {
    let dir = TempDir::new("spike-lane-backlog");
    let spool = open_spool(&dir, 100 * 1024 * 1024);
    let l = TestListener::start(KEY);
    const BACKLOG: u64 = 150;
    for i in 0..BACKLOG {
        spool.append(&steady(i).1).expect("append steady");
    }
    // Ten requests a second: the backlog would take 15 s to drain.
    let running = start(&spool, options(&l.url(), 600));
    assert!(
        l.wait_for_stored(3, LIVENESS),
        "the backlog starts draining"
    );
    let delivered_before = l.stored().len();
    spool.append(&spike(0)).expect("append spike");
    assert!(
        wait_until(|| !l.stored_seqs_in("spike").is_empty()),
        "the spike report arrives"
    );
    running.stop();
    let stored = l.stored();
    let at = stored
        .iter()
        .position(|v| lane_of(v) == "spike")
        .expect("the spike report is stored");
    // At most the record that was in flight (and one whose count we read late) went before it.
    assert!(
        at <= delivered_before + 2,
        "the spike report went out after {at} records, {delivered_before} were delivered when \
         it was appended"
    );
    let main_after = l.stored_seqs().len();
    assert!(
        (main_after as u64) < BACKLOG,
        "the backlog was not drained when the spike report arrived ({main_after} of {BACKLOG})"
    );
    assert_eq!(seq_of(&stored[at]), Some(1));
}

#[test]
fn once_ships_spike_reports_left_in_the_spool_first_and_drains_both_lanes() {
    let pg = common::TestPg::start();
    let l = TestListener::start(common::e2e::KEY);
    let rig = common::e2e::Rig::new("spike-lane-once", &pg, &l.url());
    // What a daemon stopped during an outage leaves: a backlog and two spike reports after it.
    {
        let spool = open_spool(&rig.spool_dir(), 100 * 1024 * 1024);
        for i in 0..40 {
            spool.append(&steady(i).1).expect("append steady");
        }
        for i in 0..2 {
            spool.append(&spike(i)).expect("append spike");
        }
        spool.sync().unwrap();
    }
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "everything was acknowledged: {out:?}");
    assert!(out.stderr.contains("everything was delivered"), "{out:?}");
    let stored = l.stored();
    assert_eq!(l.stored_seqs_in("spike"), [1, 2]);
    assert!(
        stored[..2].iter().all(|v| lane_of(v) == "spike"),
        "the spike reports go before the backlog"
    );
    let main = l.stored_seqs();
    assert!(
        (1..=40).all(|s| main.contains(&s)) && main.len() > 40,
        "the backlog and the --once collection arrived: {main:?}"
    );
    assert!(
        l.schema_violations().is_empty(),
        "{:?}",
        l.schema_violations()
    );
}
