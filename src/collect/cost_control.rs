//! Adaptive cost control of the activity sampler: a CPU budget per sample, and the stated order
//! in which the sampler does less when its samples overrun it (thousands of sessions), rather
//! than fall behind or burn a core, and comes back when they fit again.
//!
//! The levels, in the order they are taken ([`Level`]):
//! 0. `full`: every `/proc/<pid>` file of every sampled backend, every sample.
//! 1. `no_io`: `/proc/<pid>/io` is read only when a backend starts or ends an execution and once
//!    every [`DEFER_EVERY`] samples per backend otherwise; the reads in between are deferred
//!    (the I/O is charged, to the same execution, at the next reading).
//! 2. `rotate`: besides, `/proc/<pid>/stat` of a backend still running the execution of its last
//!    reading is read in one sample out of [`DEFER_EVERY`] (a rotating quarter of the backends
//!    per sample); CPU is charged at the next reading, to the same execution.
//! 3. `stretch_2`: besides, the sampler samples every 2 × `sample_interval_ms`.
//! 4. `stretch_4`: every 4 × `sample_interval_ms` (4 s at the default), the most it stretches.
//!
//! Invariants:
//! - Pure: fed the CPU time each sample took and the wall time since the previous one, it
//!   decides; no clock, no I/O, no `/proc` here.
//! - A budget of 0 turns it off: the level stays `full`.
//! - Up one level when the median CPU of the last [`ESCALATE_AFTER`] samples at the current
//!   level, divided by the stretch (the cost per nominal period), is over the budget (so one
//!   costly sample, such as the first of an interval that reads every file, does not degrade);
//!   down one level
//!   after [`RECOVER_AFTER`] samples in a row under half the budget at the current level. Halving
//!   the stretch doubles the cost per period, so a recovery from a stretch does not overrun at
//!   once; from `no_io` or `rotate` it may, which costs at most [`ESCALATE_AFTER`] samples over
//!   budget every [`RECOVER_AFTER`] samples.
//! - Nothing is lost at levels 1 and 2: a deferred reading is a reading taken later, never a
//!   zero; an execution that starts or ends is always read.

use std::time::Duration;

use crate::json::Json;

/// Samples whose median CPU decides a step up.
pub const ESCALATE_AFTER: usize = 3;

/// Samples in a row under half the budget before a step down.
pub const RECOVER_AFTER: u32 = 30;

/// At levels 1 and 2, a deferred file of a backend is still read once in this many samples.
pub const DEFER_EVERY: u64 = 4;

/// How much the sampler does per sample; each level does less than the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Every `/proc` file of every sampled backend.
    #[default]
    Full,
    /// `/proc/<pid>/io` deferred for backends still in the execution of their last reading.
    NoIo,
    /// Besides, `/proc/<pid>/stat` of those backends read for a rotating quarter per sample.
    Rotate,
    /// Besides, sampling at twice the sample interval.
    Stretch2,
    /// Besides, sampling at four times the sample interval.
    Stretch4,
}

/// Every level, in order.
pub const LEVELS: [Level; 5] = [
    Level::Full,
    Level::NoIo,
    Level::Rotate,
    Level::Stretch2,
    Level::Stretch4,
];

impl Level {
    /// The level's name in the summary and the log.
    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::NoIo => "no_io",
            Level::Rotate => "rotate",
            Level::Stretch2 => "stretch_2",
            Level::Stretch4 => "stretch_4",
        }
    }

    /// The level's number, 0 (`full`) to 4.
    pub fn index(self) -> usize {
        self as usize
    }

    /// By how much the sample interval is stretched (1, 2 or 4).
    pub fn stretch(self) -> u32 {
        match self {
            Level::Stretch2 => 2,
            Level::Stretch4 => 4,
            _ => 1,
        }
    }

    /// Whether `/proc/<pid>/io` of a backend in the same execution as at its last reading may
    /// be deferred.
    pub fn defers_io(self) -> bool {
        self >= Level::NoIo
    }

    /// Whether `/proc/<pid>/stat` of such a backend may be deferred.
    pub fn defers_stat(self) -> bool {
        self >= Level::Rotate
    }

    fn up(self) -> Level {
        LEVELS[(self.index() + 1).min(LEVELS.len() - 1)]
    }

    fn down(self) -> Level {
        LEVELS[self.index().saturating_sub(1)]
    }

    /// What the level gives up, for the log.
    pub fn what(self) -> &'static str {
        match self {
            Level::Full => "every /proc file of every backend read each sample",
            Level::NoIo => {
                "/proc/<pid>/io of backends in an unchanged execution read 1 sample in 4"
            }
            Level::Rotate => {
                "/proc/<pid>/stat and io of backends in an unchanged execution read 1 sample in 4"
            }
            Level::Stretch2 => "besides, sampling at twice the sample interval",
            Level::Stretch4 => "besides, sampling at four times the sample interval",
        }
    }
}

/// A change of level, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The level before.
    pub from: Level,
    /// The level now.
    pub to: Level,
    /// The CPU per nominal period that decided it (the median of the decisive samples, or the
    /// last sample's for a step down).
    pub cpu: Duration,
}

/// What the cost control did since the agent started (`data.agent.sample_cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CostReport {
    /// The budget per sample; zero when cost control is off.
    pub budget: Duration,
    /// The level now.
    pub level: Level,
    /// Samples measured.
    pub samples: u64,
    /// Of those, samples taken at a level above `full`.
    pub samples_degraded: u64,
    /// Level changes.
    pub changes: u64,
    /// Wall time spent at each level, by [`Level::index`].
    pub time_at_level: [Duration; 5],
    /// The CPU time of the last sample.
    pub last_cpu: Duration,
}

impl CostReport {
    /// The JSON of `data.agent.sample_cost`.
    pub fn to_json(&self) -> Json {
        let mut at = Json::object();
        for l in LEVELS {
            at.push(
                l.name(),
                Json::Float(self.time_at_level[l.index()].as_secs_f64()),
            );
        }
        Json::object()
            .field("cpu_budget_ms", self.budget.as_secs_f64() * 1000.0)
            .field("level", self.level.index())
            .field("level_name", self.level.name())
            .field("interval_stretch", self.level.stretch())
            .field("samples", self.samples)
            .field("samples_degraded", self.samples_degraded)
            .field("level_changes", self.changes)
            .field("seconds_at_level", at)
            .field("last_sample_cpu_us", self.last_cpu.as_micros() as u64)
    }
}

/// The state machine: fed each sample's CPU, it keeps or changes the level.
#[derive(Debug, Clone, Default)]
pub struct CostControl {
    report: CostReport,
    recent: [Duration; ESCALATE_AFTER],
    n_recent: usize,
    under: u32,
}

impl CostControl {
    /// Cost control with `budget` CPU per sample; zero turns it off.
    pub fn new(budget: Duration) -> CostControl {
        CostControl {
            report: CostReport {
                budget,
                ..CostReport::default()
            },
            ..CostControl::default()
        }
    }

    /// Starts at `level` instead of `full` (tests of what the levels do).
    #[cfg(test)]
    pub(crate) fn at_level(mut self, level: Level) -> CostControl {
        self.report.level = level;
        self
    }

    /// The level the next sample runs at.
    pub fn level(&self) -> Level {
        self.report.level
    }

    /// What it did so far.
    pub fn report(&self) -> CostReport {
        self.report
    }

    /// One sample took `cpu` at the current level, `since_last` after the previous one (wall
    /// time, charged to the current level). Returns the change of level it caused, if any.
    pub fn observe(&mut self, cpu: Duration, since_last: Duration) -> Option<Change> {
        let r = &mut self.report;
        let level = r.level;
        r.samples += 1;
        r.samples_degraded += u64::from(level != Level::Full);
        r.time_at_level[level.index()] += since_last;
        r.last_cpu = cpu;
        if r.budget.is_zero() {
            return None;
        }
        let per_period = cpu / level.stretch();
        self.recent[self.n_recent % ESCALATE_AFTER] = per_period;
        self.n_recent += 1;
        if per_period < r.budget / 2 {
            self.under += 1;
        } else {
            self.under = 0;
        }
        let median = {
            let mut v = self.recent;
            v.sort_unstable();
            v[ESCALATE_AFTER / 2]
        };
        let (to, decisive) =
            if self.n_recent >= ESCALATE_AFTER && median > r.budget && level != Level::Stretch4 {
                (level.up(), median)
            } else if self.under >= RECOVER_AFTER && level != Level::Full {
                (level.down(), per_period)
            } else {
                return None;
            };
        r.level = to;
        r.changes += 1;
        // The next decision sees samples of the new level only.
        self.n_recent = 0;
        self.under = 0;
        Some(Change {
            from: level,
            to,
            cpu: decisive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    /// Feeds `n` samples of `cpu_ms` one second apart; returns the levels changed to.
    fn feed(c: &mut CostControl, n: usize, cpu_ms: f64) -> Vec<Level> {
        (0..n)
            .filter_map(|_| c.observe(ms(cpu_ms), Duration::from_secs(1)))
            .map(|ch| ch.to)
            .collect()
    }

    #[test]
    fn overruns_degrade_in_the_stated_order_and_stop_at_the_last_level() {
        let mut c = CostControl::new(ms(2.0));
        assert_eq!(feed(&mut c, 2, 10.0), vec![], "two samples do not decide");
        assert_eq!(feed(&mut c, 1, 10.0), vec![Level::NoIo]);
        assert_eq!(
            feed(&mut c, 9, 10.0),
            vec![Level::Rotate, Level::Stretch2, Level::Stretch4]
        );
        // 10 ms at a quarter of the rate is 2.5 ms per second: still over, but there is no
        // further level.
        assert_eq!(feed(&mut c, 10, 10.0), vec![]);
        assert_eq!(c.level().stretch(), 4);
        let r = c.report();
        assert_eq!((r.samples, r.changes), (22, 4));
        assert_eq!(r.samples_degraded, 19);
        assert_eq!(r.time_at_level[0], Duration::from_secs(3));
        assert_eq!(r.time_at_level[4], Duration::from_secs(10));
    }

    #[test]
    fn the_stretch_is_counted_per_nominal_period() {
        let mut c = CostControl::new(ms(2.0));
        feed(&mut c, 12, 10.0);
        assert_eq!(c.level(), Level::Stretch4);
        // 6 ms every 4 s is 1.5 ms a period: under the budget, not under half of it.
        assert_eq!(feed(&mut c, 100, 6.0), vec![]);
        // 3 ms every 4 s: under half; after 30 samples one step down, to 3 ms every 2 s.
        assert_eq!(feed(&mut c, 30, 3.0), vec![Level::Stretch2]);
        assert_eq!(feed(&mut c, 29, 1.0), vec![]);
        assert_eq!(feed(&mut c, 1, 1.0), vec![Level::Rotate]);
    }

    #[test]
    fn recovery_is_step_by_step_and_a_single_spike_does_not_degrade() {
        let mut c = CostControl::new(ms(2.0));
        feed(&mut c, 6, 5.0);
        assert_eq!(c.level(), Level::Rotate);
        assert_eq!(feed(&mut c, 29, 0.5), vec![]);
        // One sample at the budget breaks the run of samples under half of it.
        assert_eq!(feed(&mut c, 1, 2.0), vec![]);
        assert_eq!(feed(&mut c, 29, 0.5), vec![]);
        assert_eq!(feed(&mut c, 1, 0.5), vec![Level::NoIo]);
        // One expensive sample among cheap ones: the median of three stays under the budget.
        assert_eq!(feed(&mut c, 1, 40.0), vec![]);
        assert_eq!(feed(&mut c, 30, 0.5), vec![Level::Full]);
        assert_eq!(feed(&mut c, 100, 0.5), vec![], "nothing below full");
    }

    #[test]
    fn two_costly_samples_of_three_decide() {
        let mut c = CostControl::new(ms(2.0));
        assert_eq!(feed(&mut c, 1, 9.0), vec![]);
        assert_eq!(feed(&mut c, 1, 1.0), vec![]);
        assert_eq!(feed(&mut c, 1, 1.5), vec![], "median 1.5 ms");
        assert_eq!(feed(&mut c, 1, 3.0), vec![], "median of 1, 1.5, 3: 1.5 ms");
        let ch = c.observe(ms(2.5), Duration::from_secs(1)).unwrap();
        assert_eq!((ch.from, ch.to), (Level::Full, Level::NoIo));
        assert_eq!(ch.cpu, ms(2.5), "the median of 1.5, 3 and 2.5");
    }

    #[test]
    fn a_zero_budget_is_off_but_still_counts() {
        let mut c = CostControl::new(Duration::ZERO);
        assert_eq!(feed(&mut c, 50, 100.0), vec![]);
        let r = c.report();
        assert_eq!(
            (r.level, r.samples, r.samples_degraded),
            (Level::Full, 50, 0)
        );
        let j = r.to_json().to_json_string();
        assert!(j.contains(r#""level_name":"full""#), "{j}");
        assert!(j.contains(r#""cpu_budget_ms":0"#), "{j}");
    }
}
