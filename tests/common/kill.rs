//! The kill-and-drain loop of the crash tests: the agent started and `kill -9`ed at random
//! moments (from a printed seed, so a failure can be replayed), then one clean run that must
//! drain the spool with no sequence number missing at the listener.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::time::{Duration, Instant};

use super::e2e::{gaps, wait_until, Rig, LIVENESS};
use super::listener::TestListener;

/// A small xorshift generator: reproducible kills from a printed seed.
pub struct Xorshift(u64);

impl Xorshift {
    /// Seeded from the clock; prints the seed.
    pub fn from_clock() -> Xorshift {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("kill seed {seed}");
        Xorshift(seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
}

/// Starts the agent `rounds` times and kills it with SIGKILL after `least` plus up to
/// `spread_ms` random milliseconds each time, calling `during` about every 100 ms while it runs
/// (e.g. to count its sessions). Panics, with its log, when the agent exits on its own.
pub fn kill_rounds(
    rig: &Rig,
    rounds: usize,
    least: Duration,
    spread_ms: u64,
    mut during: impl FnMut(),
) {
    let mut rng = Xorshift::from_clock();
    for round in 0..rounds {
        let mut agent = rig.start();
        let until = Instant::now() + least + Duration::from_millis(rng.next() % spread_ms);
        while Instant::now() < until {
            during();
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
        assert!(
            agent.wait_exit(Duration::ZERO).is_none(),
            "round {round}: the agent exited on its own; log:\n{}",
            agent.log_text()
        );
        agent.kill9();
    }
}

/// The clean run after the kills: starts the agent, waits until a payload of this run reached
/// the listener (FIFO: everything spooled before it was sent first), stops it and asserts that
/// it drained, exited 0 and that no sequence number is missing at the listener. Returns the
/// stored sequence numbers.
pub fn drain_clean(rig: &Rig, listener: &TestListener) -> Vec<u64> {
    let mut agent = rig.start();
    let pid = agent.pid();
    let drained = wait_until(LIVENESS, || {
        listener
            .stored()
            .iter()
            .any(|v| v["data"]["agent"]["pid"].as_i64() == Some(i64::from(pid)))
    });
    let status = agent.stop();
    assert!(
        drained,
        "the clean run did not drain the spool; log:\n{}",
        agent.log_text()
    );
    assert_eq!(status.code(), Some(0));
    let seqs = listener.stored_seqs();
    assert!(
        gaps(&seqs).is_empty(),
        "missing at the listener: {:?}",
        gaps(&seqs)
    );
    seqs
}
