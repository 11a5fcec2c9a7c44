//! The shipper against a real HTTP listener in the test process that speaks the listener
//! contract: every status of the contract, pacing, the breaker, dead letters, shutdown.
//!
//! No test asserts that something was fast. Time appears only as (a) gaps the agent's rules
//! imply (pacing spacing, `Retry-After`, the breaker's reset), measured at the listener, and
//! (b) a generous liveness bound so a broken agent fails the test instead of hanging it.

mod common;

use common::listener;
use common::TempDir;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::ship::breaker::State;
use bitville_pg_agent::ship::{ShipError, Shipper, ShipperOptions, StatusHandle};
use bitville_pg_agent::spool::{Spool, SpoolOptions, DEAD_LETTER_FILE};
use listener::{validate, Answer, TestListener};

const KEY: &str = "test-key";
/// Liveness bound: only a broken agent gets anywhere near it.
const LIVENESS: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(name)
}

fn open_spool(dir: &Path) -> Arc<Spool> {
    let mut o = SpoolOptions::new(dir);
    o.agent = AgentInfo {
        version: "test".into(),
        host: "test-host".into(),
    };
    Arc::new(Spool::open(o).expect("open spool"))
}

fn options(url: &str) -> ShipperOptions {
    let mut o = ShipperOptions::new(url, KEY, "bitville-test");
    o.max_requests_per_minute = 600;
    o.timeout = Duration::from_secs(5);
    o.breaker_failures = 3;
    o.breaker_reset = Duration::from_millis(300);
    o.config_error_retry = Duration::from_millis(200);
    // The tests talk to 127.0.0.1 whatever proxy the machine has configured.
    o.proxy_from_env = false;
    o
}

/// Payloads of every source, some correlated, with text that needs escaping.
fn payload(i: u64) -> Payload {
    let source = Source::ALL[(i % 4) as usize];
    let correlation_id =
        (i % 3 == 0).then(|| format!("bitville-{:08x}-0000-4000-8000-{:012x}", i, i));
    Payload {
        source,
        collected_at: 1_700_000_000.5 + i as f64,
        correlation_id,
        data: Json::object()
            .field("i", i)
            .field(
                "query",
                format!("select '\"{i}\"\\\n\t\u{1}é€😀' -- \u{2028}"),
            )
            .field("duration_ms", 12.5),
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<Shipper>,
    status: StatusHandle,
}

impl Running {
    /// Sets `stop` and waits for `run` to return (within the liveness bound).
    fn stop(self) -> Shipper {
        self.stop.store(true, Ordering::SeqCst);
        self.done
            .recv_timeout(LIVENESS)
            .expect("the shipper thread stops after `stop` is set")
    }

    /// Waits until `pred` holds for the shipper's status.
    fn wait_status(&self, pred: impl Fn(&bitville_pg_agent::ship::ShipStatus) -> bool) -> bool {
        let deadline = Instant::now() + LIVENESS;
        while Instant::now() < deadline {
            if pred(&self.status.get()) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn start(spool: &Arc<Spool>, opts: ShipperOptions) -> Running {
    let mut shipper = Shipper::new(Arc::clone(spool), opts).expect("build shipper");
    let status = shipper.status_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    thread::spawn(move || {
        shipper.run(&thread_stop);
        let _ = tx.send(shipper);
    });
    Running { stop, done, status }
}

fn append(spool: &Spool, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        spool.append(&payload(i)).expect("append");
    }
    spool.sync().expect("sync");
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(DEAD_LETTER_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead-letter lines are JSON"))
        .collect()
}

#[test]
fn a_backlog_after_an_outage_arrives_complete_in_order_and_paced() {
    let dir = temp_dir("backlog");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    // Outage: the listener drops every connection.
    l.set_default(Answer::Drop);
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=15);
    assert!(running.wait_status(|s| matches!(s.breaker, State::Open { .. })));
    // Collection goes on during the outage.
    append(&spool, 16..=30);
    l.set_default(Answer::Ok);
    assert!(l.wait_for_stored(30, LIVENESS), "the backlog drains");
    let shipper = running.stop();

    assert_eq!(
        l.stored_seqs(),
        (1..=30).collect::<Vec<_>>(),
        "every seq, in order, once"
    );
    assert!(
        l.schema_violations().is_empty(),
        "{:?}",
        l.schema_violations()
    );
    assert!(shipper.stats().n_failures >= 3);
    // 600 per minute means at least 100 ms between the end of one request and the start of
    // the next, so any 11 consecutive requests span at least a second: no one-second window
    // (and no minute) ever sees more than its share.
    let at: Vec<Instant> = l.requests().iter().map(|r| r.at).collect();
    for w in at.windows(11) {
        assert!(w[10] - w[0] >= Duration::from_secs(1), "pace exceeded");
    }
    assert_eq!(spool.stats().n_pending, 0);
}

#[test]
fn every_body_matches_the_listener_schema_and_carries_the_envelope() {
    let dir = temp_dir("schema");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=12);
    assert!(l.wait_for_stored(12, LIVENESS));
    running.stop();

    assert!(
        l.schema_violations().is_empty(),
        "{:?}",
        l.schema_violations()
    );
    for (i, body) in (1u64..).zip(l.stored()) {
        validate(&body).expect("schema");
        let expected = payload(i);
        assert_eq!(body["project"], "bitville-test");
        assert_eq!(body["source"], expected.source.as_str());
        assert_eq!(body["timestamp"].as_f64(), Some(expected.collected_at));
        match &expected.correlation_id {
            Some(id) => assert_eq!(body["correlation_id"].as_str(), Some(id.as_str())),
            None => assert!(body.get("correlation_id").is_none(), "never null"),
        }
        let agent = &body["data"]["agent"];
        assert_eq!(agent["seq"], i);
        assert_eq!(agent["version"], "test");
        assert_eq!(agent["host"], "test-host");
        assert_eq!(
            body["data"]["query"].as_str(),
            expected.data.get("query").and_then(|q| match q {
                Json::Str(s) => Some(s.as_str()),
                _ => None,
            })
        );
    }
    for r in l.requests() {
        assert_eq!(r.authorization.as_deref(), Some("Bearer test-key"));
        assert_eq!(r.path, listener::PATH);
    }
}

#[test]
fn a_rejected_payload_is_dead_lettered_and_does_not_block_the_queue() {
    let dir = temp_dir("reject");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.set_rule(|body| match listener::seq_of(body) {
        Some(3) => Some(Answer::Status(400)),
        Some(5) => Some(Answer::Status(413)),
        _ => None,
    });
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=7);
    assert!(l.wait_for_stored(5, LIVENESS));
    let shipper = running.stop();

    assert_eq!(l.stored_seqs(), vec![1, 2, 4, 6, 7]);
    let letters = dead_letters(&dir);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["seq"], 3);
    assert_eq!(letters[0]["status"], 400);
    assert!(letters[0]["answer"].as_str().unwrap().contains("details"));
    assert_eq!(letters[1]["seq"], 5);
    assert_eq!(letters[1]["status"], 413);
    // The dead letter holds the exact body that was sent.
    let sent: serde_json::Value =
        serde_json::from_str(letters[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(listener::seq_of(&sent), Some(3));
    validate(&sent).unwrap();
    assert_eq!(shipper.stats().n_dead_letters, 2);
    assert_eq!(
        shipper.stats().n_failures,
        0,
        "a 400 is not a listener failure"
    );
    assert_eq!(spool.peek().unwrap(), None, "nothing is left behind");
}

#[test]
fn retry_after_is_honoured_and_a_429_is_not_a_failure() {
    let dir = temp_dir("429");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.push_answers([
        Answer::TooMany(Some("1".into())),
        Answer::TooMany(Some("1".into())),
    ]);
    let mut o = options(&l.url());
    // If a 429 counted as a failure, one would open the breaker for an hour.
    o.breaker_failures = 1;
    o.breaker_reset = Duration::from_secs(3600);
    let running = start(&spool, o);
    append(&spool, 1..=2);
    assert!(l.wait_for_stored(2, LIVENESS));
    let shipper = running.stop();

    let reqs = l.requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200, 200]);
    assert_eq!(reqs[0].seq(), Some(1), "the same payload is retried");
    assert_eq!(reqs[2].seq(), Some(1));
    // Each retry came no earlier than `Retry-After: 1` allowed.
    assert!(reqs[1].at - reqs[0].at >= Duration::from_secs(1));
    assert!(reqs[2].at - reqs[1].at >= Duration::from_secs(1));
    assert_eq!(shipper.stats().n_rate_limited, 2);
    assert_eq!(shipper.stats().n_failures, 0);
    assert_eq!(shipper.breaker_state(), State::Closed { failures: 0 });
}

#[test]
fn the_listener_rate_limit_is_respected_and_the_backlog_still_arrives_in_order() {
    let dir = temp_dir("ratelimit");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.set_rate_limit(3, Duration::from_secs(1), "1");
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=8);
    assert!(l.wait_for_stored(8, LIVENESS));
    let shipper = running.stop();
    assert_eq!(l.stored_seqs(), (1..=8).collect::<Vec<_>>());
    assert!(shipper.stats().n_rate_limited >= 1);
    assert_eq!(shipper.stats().n_failures, 0);
}

#[test]
fn configuration_errors_keep_the_data_and_retry_it() {
    let dir = temp_dir("config");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.push_answers([Answer::Status(401), Answer::Status(404)]);
    let mut o = options(&l.url());
    o.breaker_failures = 1;
    o.breaker_reset = Duration::from_secs(3600);
    let running = start(&spool, o);
    append(&spool, 1..=1);
    assert!(l.wait_for_stored(1, LIVENESS));
    let shipper = running.stop();

    let reqs = l.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 404, 200]
    );
    assert!(reqs.iter().all(|r| r.seq() == Some(1)));
    assert_eq!(shipper.stats().n_config_errors, 2);
    assert_eq!(shipper.stats().n_failures, 0);
    assert!(
        dead_letters(&dir).is_empty(),
        "configuration errors never dead-letter"
    );
}

#[test]
fn a_wrong_api_key_keeps_everything_in_the_spool() {
    let dir = temp_dir("wrongkey");
    let spool = open_spool(&dir);
    let l = TestListener::start("the-right-key");
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=2);
    assert!(l.wait_for(LIVENESS, |r| r.len() >= 2));
    running.stop();
    assert!(l.requests().iter().all(|r| r.status == 401));
    assert_eq!(spool.peek().unwrap().map(|r| r.seq), Some(1));
    assert_eq!(spool.stats().n_pending, 2);
    assert!(dead_letters(&dir).is_empty());
}

#[test]
fn failures_open_the_breaker_and_one_probe_at_a_time_closes_it() {
    let dir = temp_dir("breaker");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.push_answers([Answer::Status(500), Answer::Drop, Answer::Status(503)]);
    let mut o = options(&l.url());
    o.breaker_failures = 2;
    o.breaker_reset = Duration::from_millis(500);
    let running = start(&spool, o);
    append(&spool, 1..=1);
    assert!(l.wait_for_stored(1, LIVENESS));
    let shipper = running.stop();

    let reqs = l.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 0, 503, 200]
    );
    // After the second failure the breaker was open for its reset period; the probe failed
    // and re-opened it for another full period.
    assert!(reqs[2].at - reqs[1].at >= Duration::from_millis(500));
    assert!(reqs[3].at - reqs[2].at >= Duration::from_millis(500));
    assert_eq!(shipper.stats().n_failures, 3);
    assert_eq!(shipper.breaker_state(), State::Closed { failures: 0 });
}

#[test]
fn refused_connections_count_as_failures_and_open_the_breaker() {
    let port = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let dir = temp_dir("refused");
    let spool = open_spool(&dir);
    let mut o = options(&format!("http://127.0.0.1:{port}/ingest/postgres"));
    o.breaker_failures = 2;
    o.breaker_reset = Duration::from_secs(3600);
    let running = start(&spool, o);
    append(&spool, 1..=1);
    assert!(running.wait_status(|s| matches!(s.breaker, State::Open { .. })));
    let shipper = running.stop();
    assert_eq!(
        shipper.stats().n_failures,
        2,
        "the open breaker stops further tries"
    );
    let last_error = running_status_error(&shipper);
    assert!(last_error.starts_with("cannot connect"), "{last_error}");
    assert_eq!(spool.stats().n_pending, 1);
}

fn running_status_error(shipper: &Shipper) -> String {
    shipper.status_handle().get().last_error.unwrap_or_default()
}

#[test]
fn tls_failures_count_as_failures_and_verification_stays_on() {
    let dir = temp_dir("tls");
    let spool = open_spool(&dir);
    // A plain-HTTP listener spoken to over https: the handshake fails.
    let l = TestListener::start(KEY);
    let url = format!("https://127.0.0.1:{}/ingest/postgres", l.port());
    let mut o = options(&url);
    o.breaker_failures = 1;
    o.breaker_reset = Duration::from_secs(3600);
    let running = start(&spool, o);
    append(&spool, 1..=1);
    assert!(running.wait_status(|s| matches!(s.breaker, State::Open { .. })));
    let shipper = running.stop();
    assert_eq!(shipper.stats().n_failures, 1);
    // The plain listener hangs up on the ClientHello, so this is a transport failure during
    // the handshake; certificate failures proper are in tests/shipper_tls.rs.
    let last_error = running_status_error(&shipper);
    assert!(last_error.contains(&url), "{last_error}");
    assert!(l.stored().is_empty());
    assert_eq!(spool.stats().n_pending, 1);

    // A CA file without a certificate is refused up front.
    let empty = dir.join("empty-ca.pem");
    std::fs::write(&empty, "nothing\n").unwrap();
    let mut o = options(&url);
    o.ca_file = Some(empty);
    let err = Shipper::new(Arc::clone(&spool), o).unwrap_err();
    assert!(matches!(err, ShipError::CaFile { .. }), "{err}");
}

#[test]
fn a_hanging_listener_times_out_and_does_not_block_shutdown() {
    let dir = temp_dir("hang");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.set_default(Answer::Hang);
    let mut o = options(&l.url());
    o.timeout = Duration::from_millis(500);
    o.breaker_failures = 100;
    let running = start(&spool, o);
    append(&spool, 1..=1);
    // A second request proves the first one timed out.
    assert!(l.wait_for(LIVENESS, |r| r.len() >= 2));
    // Stop while (most likely) inside the next hanging request: `run` still returns, once
    // the timeout ends that request.
    let shipper = running.stop();
    assert!(shipper.stats().n_failures >= 1);
    let last_error = running_status_error(&shipper);
    assert!(last_error.contains("timed out"), "{last_error}");
    assert_eq!(
        spool.peek().unwrap().map(|r| r.seq),
        Some(1),
        "nothing acked"
    );
    l.release_hung();
}

#[test]
fn stop_interrupts_a_long_retry_after_wait() {
    let dir = temp_dir("stop429");
    let spool = open_spool(&dir);
    let l = TestListener::start(KEY);
    l.push_answers([Answer::TooMany(Some("3600".into()))]);
    let running = start(&spool, options(&l.url()));
    append(&spool, 1..=1);
    assert!(running.wait_status(|s| s.stats.n_rate_limited == 1));
    // The shipper now waits an hour; stop must end that wait (the bound is a minute).
    let shipper = running.stop();
    assert_eq!(shipper.stats().n_rate_limited, 1);
    assert_eq!(l.requests().len(), 1);
    assert_eq!(spool.stats().n_pending, 1);
}

#[test]
fn a_tiny_spool_drops_the_oldest_and_the_drop_reaches_the_listener() {
    let dir = temp_dir("tiny");
    let mut o = SpoolOptions::new(dir.to_path_buf());
    o.max_bytes = 16 * 1024;
    let spool = Arc::new(Spool::open(o).unwrap());
    let total = 200u64;
    append(&spool, 1..=total);
    let first_kept = spool.peek().unwrap().expect("the newest are kept").seq;
    assert!(first_kept > 1, "the oldest were dropped");

    let l = TestListener::start(KEY);
    let running = start(&spool, options(&l.url()));
    let n_kept = (total - first_kept + 1) as usize;
    assert!(l.wait_for_stored(n_kept, LIVENESS));
    running.stop();

    let seqs = l.stored_seqs();
    assert_eq!(seqs, (first_kept..=total).collect::<Vec<_>>());
    // Every dropped record is accounted for in some delivered payload's report.
    let mut reported = 0;
    let mut by_source = 0;
    for body in l.stored() {
        if let Some(d) = body["data"]["agent"].get("dropped") {
            reported += d["records"].as_u64().unwrap();
            by_source += d["by_source"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>();
            assert!(d["bytes"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(reported, first_kept - 1, "dropped + kept = appended");
    assert_eq!(by_source, reported);
}

#[test]
fn concurrent_appenders_and_the_shipper_deliver_every_seq_exactly_once_in_order() {
    let dir = temp_dir("concurrent");
    let mut so = SpoolOptions::new(dir.to_path_buf());
    // Small segments: rotation and deletion happen while the shipper reads.
    so.segment_bytes = 4096;
    let spool = Arc::new(Spool::open(so).unwrap());
    let l = TestListener::start(KEY);
    let mut o = options(&l.url());
    o.max_requests_per_minute = 60_000;
    let running = start(&spool, o);
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let spool = Arc::clone(&spool);
            thread::spawn(move || {
                for i in 0..50 {
                    spool.append(&payload(w * 1000 + i)).unwrap();
                    if i % 10 == 0 {
                        spool.sync().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(l.wait_for_stored(200, LIVENESS));
    running.stop();
    assert_eq!(l.stored_seqs(), (1..=200).collect::<Vec<_>>());
    assert!(l.schema_violations().is_empty());
    assert_eq!(spool.stats().n_pending, 0);
    assert!(
        spool.stats().n_segments <= 1,
        "delivered segments are deleted"
    );
}
