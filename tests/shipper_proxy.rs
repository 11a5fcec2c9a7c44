//! The proxy decision: the shipper honours `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` and `NO_PROXY`
//! from the environment (as the Python agent's `requests` did), unless `proxy_from_env` is off.
//!
//! The "proxy" is the contract test listener: an HTTP proxy is asked with `CONNECT host:port`,
//! which the listener records (and answers 404), so the test sees whether the shipper went
//! through it. This file holds a single test because it changes the process environment.

#[path = "common/listener.rs"]
mod listener;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::ship::{breaker::State, ShipStatus, Shipper, ShipperOptions};
use bitville_pg_agent::spool::{Spool, SpoolOptions};
use listener::TestListener;

const LIVENESS: Duration = Duration::from_secs(60);
const TARGET: &str = "http://listener.invalid:8443/ingest/postgres";

fn spool_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bv-proxy-{}-{name}", std::process::id()))
}

fn spool(name: &str) -> Arc<Spool> {
    let dir = spool_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = SpoolOptions::new(dir);
    o.agent = AgentInfo {
        version: "t".into(),
        host: "h".into(),
    };
    let spool = Arc::new(Spool::open(o).unwrap());
    spool
        .append(&Payload {
            source: Source::SystemMetrics,
            collected_at: 1_700_000_000.0,
            correlation_id: None,
            data: Json::object(),
        })
        .unwrap();
    spool
}

/// Ships until the breaker opens (one failure opens it); returns the final status.
fn ship_until_open(name: &str, proxy_from_env: bool) -> ShipStatus {
    let mut o = ShipperOptions::new(TARGET, "k", "proxy-test");
    o.proxy_from_env = proxy_from_env;
    o.breaker_failures = 1;
    o.breaker_reset = Duration::from_secs(3600);
    o.timeout = Duration::from_secs(5);
    let mut shipper = Shipper::new(spool(name), o).unwrap();
    let status = shipper.status_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let t = thread::spawn(move || shipper.run(&thread_stop));
    let deadline = Instant::now() + LIVENESS;
    while !matches!(status.get().breaker, State::Open { .. }) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    status.get()
}

fn connects(l: &TestListener) -> usize {
    l.requests()
        .iter()
        .filter(|r| r.method == "CONNECT" && r.path == "listener.invalid:8443")
        .count()
}

#[test]
fn proxy_environment_is_honoured_with_no_proxy_and_can_be_switched_off() {
    let proxy = TestListener::start("unused");
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port()));

    // Through the proxy: it sees the CONNECT (and refuses it, so the send fails).
    let s = ship_until_open("via", true);
    assert_eq!(connects(&proxy), 1, "{:?}", proxy.requests());
    assert_eq!(s.stats.n_failures, 1);

    // NO_PROXY covers the listener: straight to it (and that host does not resolve).
    std::env::set_var("NO_PROXY", "listener.invalid");
    let s = ship_until_open("bypass", true);
    assert_eq!(connects(&proxy), 1, "no new CONNECT");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("listener.invalid")),
        "{s:?}"
    );
    std::env::remove_var("NO_PROXY");

    // Switched off: the environment is ignored.
    let s = ship_until_open("off", false);
    assert_eq!(connects(&proxy), 1, "no new CONNECT");
    assert_eq!(s.stats.n_failures, 1);
    std::env::remove_var("HTTP_PROXY");
    for name in ["via", "bypass", "off"] {
        let _ = std::fs::remove_dir_all(spool_dir(name));
    }
}
