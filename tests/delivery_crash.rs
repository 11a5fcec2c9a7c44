//! SIGKILL while collecting and shipping: a child process appends payloads and ships them to
//! a contract listener in this process; it is killed with SIGKILL at random moments, 20 times,
//! then a clean run drains the spool. No sequence number may be missing at the listener
//! (duplicates are allowed: at-least-once).
//!
//! This covers the spool and the shipper together; the same test against the whole agent
//! process (with PostgreSQL) belongs with the daemon.

#[path = "common/listener.rs"]
mod listener;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::ship::{Shipper, ShipperOptions};
use bitville_pg_agent::spool::{Spool, SpoolOptions};
use listener::TestListener;

const KEY: &str = "crash-key";
const TEST_NAME: &str = "sigkill_while_collecting_and_shipping_loses_no_sequence_number";
const LIVENESS: Duration = Duration::from_secs(120);

fn spool_options(dir: &Path) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.segment_bytes = 8192;
    o.agent = AgentInfo {
        version: "crash".into(),
        host: "h".into(),
    };
    o
}

fn shipper_options(url: &str) -> ShipperOptions {
    let mut o = ShipperOptions::new(url, KEY, "crash-test");
    o.max_requests_per_minute = 6000;
    o.timeout = Duration::from_secs(2);
    o.breaker_reset = Duration::from_millis(200);
    o.proxy_from_env = false;
    o
}

/// The child: `run` appends and ships until killed; `drain` ships until the spool is empty.
fn child(mode: &str, dir: &Path, url: &str) -> ! {
    let spool = Arc::new(Spool::open(spool_options(dir)).expect("child opens the spool"));
    let mut shipper = Shipper::new(Arc::clone(&spool), shipper_options(url)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let shipping = thread::spawn(move || shipper.run(&thread_stop));
    if mode == "drain" {
        while spool.stats().n_pending > 0 {
            thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        shipping.join().unwrap();
        std::process::exit(0);
    }
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    loop {
        i += 1;
        let p = Payload {
            source: Source::ALL[(i % 4) as usize],
            collected_at: 1_700_000_000.0 + i as f64,
            correlation_id: (i % 5 == 0).then(|| format!("bitville-{i}")),
            data: Json::object().field("i", i),
        };
        let seq = spool.append(&p).expect("child append");
        writeln!(out, "{seq}").unwrap();
        out.flush().unwrap();
        if i % 10 == 0 {
            spool.sync().unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_child(mode: &str, dir: &Path, url: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture"])
        .env("BV_CRASH_CHILD", format!("{mode}|{}|{url}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_while_collecting_and_shipping_loses_no_sequence_number() {
    if let Ok(spec) = std::env::var("BV_CRASH_CHILD") {
        let mut parts = spec.splitn(3, '|');
        let (mode, dir, url) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        child(mode, Path::new(dir), url);
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("bv-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let l = TestListener::start(KEY);
    let url = l.url();

    let mut appended = BTreeSet::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20 {
        let mut c = spawn_child("run", &dir, &url);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wanted = 5 + (x % 60) as usize;
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let mut n = 0;
        while n < wanted {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Ok(seq) = line.trim().parse::<u64>() {
                        assert!(appended.insert(seq), "round {round}: seq {seq} reused");
                        n += 1;
                    }
                }
                _ => panic!("round {round}: the child stopped on its own"),
            }
        }
        c.kill().unwrap(); // SIGKILL, at whatever point the child is
        c.wait().unwrap();
    }

    let mut drain = spawn_child("drain", &dir, &url);
    let deadline = Instant::now() + LIVENESS;
    let status = loop {
        if let Some(status) = drain.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = drain.kill();
            panic!("the draining run did not finish");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());

    let stored: Vec<u64> = l.stored_seqs();
    let unique: BTreeSet<u64> = stored.iter().copied().collect();
    let max = *unique.iter().next_back().unwrap();
    let missing: Vec<u64> = (1..=max).filter(|s| !unique.contains(s)).collect();
    assert!(missing.is_empty(), "missing at the listener: {missing:?}");
    assert!(appended.is_subset(&unique), "every appended seq arrived");
    assert!(
        l.schema_violations().is_empty(),
        "{:?}",
        l.schema_violations()
    );
    println!(
        "{} payloads appended across 20 kills, {} stored, {} duplicates",
        unique.len(),
        stored.len(),
        stored.len() - unique.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
