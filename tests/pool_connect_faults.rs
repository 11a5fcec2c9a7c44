//! Connecting under faults: a catalog lock that holds sessions in `startup` / `authentication`
//! waits is bounded by the connect deadline (never more than 5 agent backends, watched at 10 Hz),
//! and failed attempts back off instead of forking a backend several times a second.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitville_pg_agent::pool::{ConnectFailure, Pool, PoolError};
use common::{TestPg, MONITOR_ROLE};

/// The agent role's backends of this server (children of its postmaster whose process title
/// names the role, also those still in start-up or authentication, which no statistics view
/// lists yet), and how many of them wait (the title ends in "waiting"); sampled every 100 ms
/// until `stop`.
fn watch(pg: &TestPg, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize, u32)> {
    let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    std::thread::spawn(move || {
        let (mut max_backends, mut max_waiting, mut n_samples) = (0, 0, 0);
        while !stop.load(Ordering::SeqCst) {
            let (mut backends, mut waiting) = (0, 0);
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let dir = entry.path();
                let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                    continue;
                };
                // Field 4, after the parenthesised command name.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid != Some(postmaster) {
                    continue;
                }
                let title = std::fs::read(dir.join("cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&title);
                if title.contains(MONITOR_ROLE) {
                    backends += 1;
                    if title.trim_end_matches(['\0', ' ']).ends_with("waiting") {
                        waiting += 1;
                    }
                }
            }
            max_backends = max_backends.max(backends);
            max_waiting = max_waiting.max(waiting);
            n_samples += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (max_backends, max_waiting, n_samples)
    })
}

#[test]
fn a_locked_catalog_bounds_each_attempt_and_the_cap_holds() {
    let pg = TestPg::start();
    let mut db = pg.db_config();
    db.connect_timeout = Duration::from_secs(1);
    db.acquire_timeout = Duration::from_millis(300);
    let pool = Pool::new(&db);

    let mut locker = pg.admin();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(&pg, Arc::clone(&stop));
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    // Eight threads keep asking for a connection for 4 s while the lock is held.
    let until = Instant::now() + Duration::from_secs(4);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let (mut blocked, mut longest) = (0, Duration::ZERO);
                while Instant::now() < until {
                    let t = Instant::now();
                    match pool.acquire() {
                        Ok(_) => panic!("connected through a lock on pg_database"),
                        Err(PoolError::Connect(e)) if e.failure == ConnectFailure::Blocked => {
                            assert!(e.to_string().contains("connecting was blocked"), "{e}");
                            blocked += 1;
                        }
                        Err(_) => {}
                    }
                    longest = longest.max(t.elapsed());
                    std::thread::sleep(Duration::from_millis(20));
                }
                (blocked, longest)
            })
        })
        .collect();
    let mut n_blocked = 0;
    for w in workers {
        let (blocked, longest) = w.join().unwrap();
        n_blocked += blocked;
        // Generous against a slow machine; without the deadline one call took as long as the
        // lock was held (4 s here, 18 s in the campaign).
        assert!(
            longest < Duration::from_millis(3500),
            "one acquire took {longest:?}"
        );
    }
    assert!(n_blocked >= 1, "the lock did block connecting");
    let stats = pool.stats();
    assert!(stats.connects_blocked >= 1, "{stats:?}");
    // The back-off: a handful of attempts, not one per call.
    assert!(
        stats.connect_failures <= 8,
        "{} attempts in 4 s: no back-off? {stats:?}",
        stats.connect_failures
    );

    locker.batch_execute("ROLLBACK").unwrap();
    // The abandoned attempts finish once the lock is gone; then the pool connects again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let connected = loop {
        if let Ok(mut c) = pool.acquire() {
            break c.query_one("SELECT 1", &[]).is_ok();
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::SeqCst);
    let (max_backends, max_waiting, n_samples) = watcher.join().unwrap();
    assert!(
        connected,
        "the pool connects again after the lock is released"
    );
    println!(
        "watch ({n_samples} samples at 10 Hz): at most {max_backends} agent backends, \
         {max_waiting} waiting"
    );
    assert!(n_samples >= 20, "the watch ran through the lock");
    assert!(
        max_waiting >= 1,
        "the watch saw the agent's sessions wait on the lock"
    );
    assert!(max_backends <= 5, "{max_backends} agent backends at once");
    assert!(pool.stats().size <= 5);
}

#[test]
fn failed_attempts_back_off_and_a_success_resets() {
    let mut pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    pool.acquire().unwrap().mark_broken();
    pg.stop();

    // Two seconds of callers asking as fast as they can.
    let until = Instant::now() + Duration::from_secs(2);
    let (mut calls, mut backing_off) = (0, 0);
    while Instant::now() < until {
        calls += 1;
        if let Err(PoolError::BackingOff { retry_in, last }) = pool.acquire() {
            assert!(retry_in <= Duration::from_secs(15));
            assert!(last.contains("not reachable"), "{last}");
            backing_off += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let failures = pool.stats().connect_failures;
    // 0.5 s, then 1 s, then 2 s: at most 3 attempts (4 with scheduling slack) in 2 s.
    assert!(
        (1..=4).contains(&failures),
        "{failures} attempts for {calls} calls"
    );
    assert!(backing_off > 100, "the rest waited: {backing_off}");

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.acquire().is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reset: the next failure starts again at the shortest wait.
    pg.stop();
    let before = pool.stats().connect_failures;
    pool.close_idle();
    let t = Instant::now();
    while pool.stats().connect_failures < before + 2 {
        let _ = pool.acquire();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no second attempt soon after a reset"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}
