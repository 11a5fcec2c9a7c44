//! Fixed-boundary scheduling without drift and without overlap.
//!
//! A [`Ticker`] fires at `start + k * period`. Cycles run on one thread, so two cycles of the same
//! collector can never overlap; when a cycle overruns one or more boundaries, those ticks are
//! skipped (not queued) and the count is reported so the caller can say so.

use std::time::{Duration, Instant};

/// The boundaries of one periodic job.
#[derive(Debug, Clone)]
pub struct Ticker {
    start: Instant,
    period: Duration,
    next: u64,
}

/// The next boundary to sleep until.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// When to run.
    pub at: Instant,
    /// Boundaries that passed while the previous cycle was still running.
    pub skipped: u64,
}

impl Ticker {
    /// A ticker whose first boundary is `start + period`.
    pub fn new(start: Instant, period: Duration) -> Ticker {
        assert!(!period.is_zero(), "a ticker needs a period");
        Ticker {
            start,
            period,
            next: 1,
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The next boundary after the cycle that ended at `now`. Boundaries already in the past are
    /// skipped and counted.
    pub fn next_after(&mut self, now: Instant) -> Tick {
        let elapsed = now.saturating_duration_since(self.start);
        // The first boundary strictly after `now`.
        let due = (elapsed.as_nanos() / self.period.as_nanos()) as u64 + 1;
        let skipped = due.saturating_sub(self.next);
        self.next = due.max(self.next);
        let at = self.start + self.period * self.next as u32;
        self.next += 1;
        Tick { at, skipped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_do_not_drift_with_cycle_length() {
        let t0 = Instant::now();
        let p = Duration::from_secs(60);
        let mut t = Ticker::new(t0, p);
        assert_eq!(
            t.next_after(t0),
            Tick {
                at: t0 + p,
                skipped: 0
            }
        );
        // A cycle that took 3 s still aims at the next exact boundary.
        assert_eq!(
            t.next_after(t0 + p + Duration::from_secs(3)),
            Tick {
                at: t0 + 2 * p,
                skipped: 0
            }
        );
    }

    #[test]
    fn an_overrun_skips_the_missed_boundaries_and_counts_them() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        let mut t = Ticker::new(t0, p);
        t.next_after(t0);
        // The cycle started at 10 s ran until 35 s: boundaries 20 and 30 were missed.
        assert_eq!(
            t.next_after(t0 + Duration::from_secs(35)),
            Tick {
                at: t0 + 4 * p,
                skipped: 2
            }
        );
        assert_eq!(
            t.next_after(t0 + Duration::from_secs(41)),
            Tick {
                at: t0 + 5 * p,
                skipped: 0
            }
        );
    }

    #[test]
    fn waking_early_never_repeats_a_boundary() {
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        let mut t = Ticker::new(t0, p);
        let a = t.next_after(t0);
        let b = t.next_after(t0);
        assert!(b.at > a.at);
    }
}
