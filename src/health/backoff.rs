//! `Backoff`: how long a sub-collector that keeps timing out is left alone.
//!
//! A query that hit `statement_timeout` or `lock_timeout` once may have met a passing spike; one
//! that keeps timing out is adding load to a server that is already struggling, so it is skipped
//! for a growing number of collection cycles (1, 2, 4, ... up to a cap) and tried again after
//! that. One success forgets the history.
//!
//! Invariants: a pure state machine. The caller passes the cycle number (a counter it increments
//! once per collection interval); nothing here reads a clock or sleeps, so every transition is
//! unit-tested. Errors other than timeouts (a missing privilege, an undefined column) neither
//! start nor reset the backoff: they are cheap to repeat and are reported every cycle.

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
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(1, 32)
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
