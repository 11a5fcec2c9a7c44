//! `Backoff`: the one back-off policy of the agent, for every collector and health part that
//! keeps timing out.
//!
//! A query that hit `statement_timeout` or `lock_timeout` once may have met a passing spike; one
//! that keeps timing out is adding load to a server that is already struggling, so it is skipped
//! for a growing number of collection cycles (1, 2, 4, ... up to a cap, [`DEFAULT_MAX_SKIP`]
//! unless told) and tried again after that. One success forgets the history.
//!
//! Invariants: a pure state machine; nothing here reads a clock or sleeps, so every transition
//! is unit-tested. Two ways to count cycles, one policy: the caller passes the cycle number
//! ([`Backoff::allows`], [`Backoff::record_timeout`]: health, whose parts share one cycle
//! counter per database), or the backoff counts the calls to [`Backoff::should_run`] itself
//! (the daemon's steps). Errors other than timeouts (a missing privilege, an undefined column)
//! neither start nor reset the backoff: they are cheap to repeat and are reported every cycle.

use super::CollectError;

/// The longest skip, in cycles, unless a backoff is built with another.
pub const DEFAULT_MAX_SKIP: u64 = 32;

/// The backoff state of one sub-collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Timeouts in a row since the last success.
    consecutive_timeouts: u32,
    /// The first cycle in which the sub-collector may run again.
    resume_at: u64,
    /// Timeouts in a row that are tolerated before skipping starts.
    tolerated: u32,
    /// The longest skip, in cycles.
    max_skip: u64,
    /// Calls to [`Backoff::should_run`] so far (its own cycle counter).
    cycle: u64,
}

impl Default for Backoff {
    /// Skips from the first timeout on (nothing tolerated), at most [`DEFAULT_MAX_SKIP`] cycles.
    fn default() -> Backoff {
        Backoff::new(0, DEFAULT_MAX_SKIP)
    }
}

impl Backoff {
    /// A backoff that tolerates `tolerated` timeouts in a row, then skips 1, 2, 4, ... cycles
    /// after each further timeout, never more than `max_skip` cycles (at least 1).
    pub fn new(tolerated: u32, max_skip: u64) -> Backoff {
        Backoff {
            consecutive_timeouts: 0,
            resume_at: 0,
            tolerated,
            max_skip: max_skip.max(1),
            cycle: 0,
        }
    }

    /// Whether the collector runs this cycle, counting cycles itself; call exactly once per
    /// cycle, then [`Backoff::record`] how the cycle went.
    pub fn should_run(&mut self) -> bool {
        let run = self.allows(self.cycle);
        self.cycle += 1;
        run
    }

    /// Records how the cycle that [`Backoff::should_run`] let run went.
    pub fn record<T>(&mut self, outcome: &Result<T, CollectError>) {
        match outcome {
            Ok(_) => self.record_outcome(false, true),
            Err(e) => self.record_outcome(e.is_timeout(), false),
        }
    }

    /// [`Backoff::record`] from plain facts: whether the cycle timed out, whether it succeeded.
    pub fn record_outcome(&mut self, timed_out: bool, succeeded: bool) {
        if succeeded {
            self.record_success();
        } else if timed_out {
            // The cycle that ran is the one `should_run` last answered.
            self.record_timeout(self.cycle.saturating_sub(1));
        }
    }

    /// Whether the sub-collector may run in `cycle`.
    pub fn allows(&self, cycle: u64) -> bool {
        cycle >= self.resume_at
    }

    /// The first cycle in which it may run again (≤ the current cycle when it may run now).
    pub fn resume_at(&self) -> u64 {
        self.resume_at
    }

    /// Timeouts in a row since the last success.
    pub fn consecutive_timeouts(&self) -> u32 {
        self.consecutive_timeouts
    }

    /// Records a successful run: the history is forgotten.
    pub fn record_success(&mut self) {
        self.consecutive_timeouts = 0;
        self.resume_at = 0;
    }

    /// Records a timeout in `cycle` and returns how many of the following cycles are skipped.
    pub fn record_timeout(&mut self, cycle: u64) -> u64 {
        self.consecutive_timeouts = self.consecutive_timeouts.saturating_add(1);
        let over = self.consecutive_timeouts.saturating_sub(self.tolerated);
        if over == 0 {
            self.resume_at = cycle.saturating_add(1);
            return 0;
        }
        // 1, 2, 4, ...: the shift is bounded so it cannot overflow, then capped.
        let skip = (1u64 << (over - 1).min(62)).min(self.max_skip);
        self.resume_at = cycle.saturating_add(1).saturating_add(skip);
        skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A collector error that is not a timeout (a state-file failure). A real timeout (a
    /// `postgres::Error` with SQLSTATE 57014 / 55P03) comes only from a server: see
    /// tests/pg_errors.rs, which feeds one to [`Backoff::record`].
    fn not_a_timeout() -> Result<(), CollectError> {
        Err(CollectError::State {
            collector: "t",
            path: PathBuf::from("x"),
            source: std::io::Error::other("not a timeout"),
        })
    }

    #[test]
    fn counting_its_own_cycles_it_skips_from_the_first_timeout_and_resets_on_success() {
        let mut b = Backoff::new(0, 4);
        // A non-timeout error never backs off.
        b.record(&not_a_timeout());
        assert!(b.should_run());
        assert_eq!(b.consecutive_timeouts(), 0);
        b.record(&Ok::<(), CollectError>(()));
        assert!(b.should_run());

        // From the first timeout on: 1, 2, 4, 4 (capped) cycles skipped.
        assert!(b.should_run());
        let mut skipped = Vec::new();
        for _ in 0..4 {
            b.record_outcome(true, false);
            let mut n = 0;
            while !b.should_run() {
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(skipped, vec![1, 2, 4, 4]);
        assert_eq!(b.consecutive_timeouts(), 4);
        b.record_outcome(false, true);
        assert_eq!(b.consecutive_timeouts(), 0);
        assert!(b.should_run(), "a success ends the skipping");
        b.record_outcome(true, false);
        assert!(!b.should_run(), "and the next timeout starts again at 1");
        assert!(b.should_run());
    }

    #[test]
    fn the_default_skips_from_the_first_timeout_up_to_the_default_cap() {
        let mut b = Backoff::default();
        let mut last = 0;
        for cycle in 0..20 {
            last = b.record_timeout(cycle * 100);
        }
        assert_eq!(last, DEFAULT_MAX_SKIP);
        assert_eq!(Backoff::default().record_timeout(0), 1);
    }

    #[test]
    fn a_single_timeout_is_tolerated() {
        let mut b = Backoff::new(1, 32);
        assert!(b.allows(0));
        assert_eq!(b.record_timeout(0), 0);
        assert!(b.allows(1));
        assert_eq!(b.consecutive_timeouts(), 1);
    }

    #[test]
    fn repeated_timeouts_skip_a_growing_number_of_cycles_up_to_the_cap() {
        let mut b = Backoff::new(1, 4);
        let mut cycle = 0;
        let mut skips = Vec::new();
        for _ in 0..6 {
            assert!(b.allows(cycle), "cycle {cycle} should run");
            let skip = b.record_timeout(cycle);
            skips.push(skip);
            for skipped in cycle + 1..=cycle + skip {
                assert!(!b.allows(skipped), "cycle {skipped} should be skipped");
            }
            cycle += skip + 1;
        }
        assert_eq!(skips, vec![0, 1, 2, 4, 4, 4]);
    }

    #[test]
    fn a_success_forgets_the_history() {
        let mut b = Backoff::new(0, 32);
        assert_eq!(b.record_timeout(10), 1);
        assert_eq!(b.record_timeout(12), 2);
        assert!(!b.allows(14));
        b.record_success();
        assert!(b.allows(14));
        assert_eq!(b.consecutive_timeouts(), 0);
        assert_eq!(b.record_timeout(14), 1, "starts again from one cycle");
    }

    #[test]
    fn huge_cycle_numbers_and_counts_do_not_overflow() {
        let mut b = Backoff::new(0, u64::MAX);
        for _ in 0..100 {
            b.record_timeout(u64::MAX - 1);
        }
        assert_eq!(b.resume_at(), u64::MAX);
        assert!(!b.allows(u64::MAX - 1));
    }
}
