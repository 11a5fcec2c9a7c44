//! The spike detector and the burst-sampling budget: a pure state machine over the per-sample
//! series, with time passed in (unix seconds), so every rule is unit-tested with a simulated
//! clock.
//!
//! Rules:
//! - The load figure of a sample is the larger of its active sessions and its PostgreSQL
//!   backends in run state R or D. A sample is *hot* when that figure is at least `min_active`
//!   and above `factor` × the baseline, or when load1 is above `load_per_cpu` × the CPU count
//!   (when `load_per_cpu` > 0) and the load figure is at least `min_active`: the floor holds for
//!   both rules, so load made by other work on the host (a build, a backup) while the database
//!   is nearly idle is no database spike and does not start burst sampling.
//! - The baseline is an exponentially weighted mean of the load figure with time constant
//!   `baseline_s`; it is frozen while a spike lasts, so the spike cannot raise its own bar.
//! - A spike starts at the first hot sample and ends once no sample was hot for `quiet_s`; its
//!   end is the last hot sample. A spike longer than [`MAX_SPIKE_S`] is closed and the baseline
//!   restarts from the current figure (load that stays is the new normal, not a spike).
//! - Burst sampling runs while a spike lasts, for at most `burst_max_s` per spike, and within a
//!   rolling hour at most `burst_budget_s` of burst time in all: flapping load cannot make the
//!   agent a load of its own.

use std::collections::VecDeque;
use std::time::Duration;

/// A spike is closed after this long, whatever the load (see the module docs).
pub const MAX_SPIKE_S: f64 = 600.0;

/// The detector's settings (the `[spike]` section).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// The absolute floor of the load figure for a spike. Default 10.
    pub min_active: u32,
    /// How many times the baseline the load figure must exceed. Default 3.
    pub factor: f64,
    /// load1 above this many times the CPU count is a spike on its own (with the load figure at
    /// least `min_active`); 0 disables. Default 2.
    pub load_per_cpu: f64,
    /// Time without a hot sample that ends a spike. Default 10 s.
    pub quiet: Duration,
    /// Time constant of the baseline. Default 300 s.
    pub baseline: Duration,
    /// Sample period while bursting. Default 250 ms.
    pub burst_interval: Duration,
    /// Most burst time per spike. Default 60 s.
    pub burst_max: Duration,
    /// Most burst time per rolling hour. Default 300 s.
    pub burst_budget: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            min_active: 10,
            factor: 3.0,
            load_per_cpu: 2.0,
            quiet: Duration::from_secs(10),
            baseline: Duration::from_secs(300),
            burst_interval: Duration::from_millis(250),
            burst_max: Duration::from_secs(60),
            burst_budget: Duration::from_secs(300),
        }
    }
}

/// What the detector is told about one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    /// Sample time (unix seconds).
    pub t: f64,
    /// Active sessions.
    pub active: u32,
    /// PostgreSQL backends in run state R or D.
    pub run_rd: u32,
    /// load1, when known.
    pub load1: Option<f64>,
    /// Online CPUs, when known.
    pub n_cpus: Option<u64>,
}

/// What a sample changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Nothing (no spike, or one that goes on).
    None,
    /// A spike started at this sample.
    Started {
        /// Its first hot sample.
        start: f64,
        /// Which rule fired: `"sessions"` or `"load"`.
        reason: &'static str,
        /// The baseline it was measured against.
        baseline: f64,
    },
    /// A spike ended.
    Ended {
        /// Its first hot sample.
        start: f64,
        /// Its last hot sample.
        end: f64,
        /// `"quiet"`, or `"max_duration"` after [`MAX_SPIKE_S`].
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
struct Spike {
    start: f64,
    last_hot: f64,
    burst_s: f64,
}

/// The detector state.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    baseline: Option<f64>,
    last_t: Option<f64>,
    spike: Option<Spike>,
    /// Burst time spent: (when, seconds), within the last hour.
    burst_log: VecDeque<(f64, f64)>,
    /// When the current period was chosen and whether it was a burst.
    chosen: Option<(f64, bool)>,
    /// False after a spike was closed for its length while load1 was high: the load rule fires
    /// again only once load1 has been below its threshold (it has no baseline to adapt).
    load_armed: bool,
}

impl Detector {
    /// A detector with `cfg`.
    pub fn new(cfg: DetectorConfig) -> Detector {
        Detector {
            cfg,
            baseline: None,
            last_t: None,
            spike: None,
            burst_log: VecDeque::new(),
            chosen: None,
            load_armed: true,
        }
    }

    /// The baseline load figure (`None` before the first sample).
    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// Whether a spike lasts.
    pub fn in_spike(&self) -> bool {
        self.spike.is_some()
    }

    fn load_high(&self, p: &Point) -> bool {
        self.cfg.load_per_cpu > 0.0
            && matches!((p.load1, p.n_cpus), (Some(l), Some(n)) if l > self.cfg.load_per_cpu * n as f64)
    }

    fn hot(&self, p: &Point, baseline: f64) -> Option<&'static str> {
        let figure = p.active.max(p.run_rd);
        if figure < self.cfg.min_active {
            return None;
        }
        if f64::from(figure) > self.cfg.factor * baseline {
            return Some("sessions");
        }
        (self.load_armed && self.load_high(p)).then_some("load")
    }

    /// Feeds one sample; samples must come in time order (an older one is ignored).
    pub fn step(&mut self, p: Point) -> Event {
        if self.last_t.is_some_and(|t| p.t < t) || !p.t.is_finite() {
            return Event::None;
        }
        let figure = f64::from(p.active.max(p.run_rd));
        let dt = self.last_t.map_or(0.0, |t| p.t - t);
        self.last_t = Some(p.t);
        let baseline = *self.baseline.get_or_insert(figure);
        if !self.load_high(&p) {
            self.load_armed = true;
        }
        let hot = self.hot(&p, baseline);
        match self.spike.as_mut() {
            Some(s) => {
                if hot.is_some() {
                    s.last_hot = p.t;
                }
                let (start, end) = (s.start, s.last_hot);
                if p.t - start >= MAX_SPIKE_S {
                    self.spike = None;
                    self.baseline = Some(figure);
                    self.load_armed = !self.load_high(&p);
                    return Event::Ended {
                        start,
                        end,
                        reason: "max_duration",
                    };
                }
                if p.t - end >= self.cfg.quiet.as_secs_f64() {
                    self.spike = None;
                    return Event::Ended {
                        start,
                        end,
                        reason: "quiet",
                    };
                }
                Event::None
            }
            None => {
                if let Some(reason) = hot {
                    self.spike = Some(Spike {
                        start: p.t,
                        last_hot: p.t,
                        burst_s: 0.0,
                    });
                    return Event::Started {
                        start: p.t,
                        reason,
                        baseline,
                    };
                }
                let tau = self.cfg.baseline.as_secs_f64().max(1.0);
                let alpha = 1.0 - (-dt / tau).exp();
                self.baseline = Some(baseline + alpha * (figure - baseline));
                Event::None
            }
        }
    }

    /// Burst seconds spent within the hour before `now`.
    pub fn burst_used(&mut self, now: f64) -> f64 {
        while self
            .burst_log
            .front()
            .is_some_and(|(t, _)| *t < now - 3600.0)
        {
            self.burst_log.pop_front();
        }
        self.burst_log.iter().map(|(_, s)| s).sum()
    }

    /// Chooses the period until the next sample, at time `now`: the burst interval while a spike
    /// lasts and the budgets allow, else `normal`. The time since the previous choice is charged
    /// to the budgets when that choice was a burst.
    pub fn next_period(&mut self, now: f64, normal: Duration) -> Duration {
        if let Some((at, true)) = self.chosen {
            let spent = (now - at).clamp(0.0, 3600.0);
            self.burst_log.push_back((now, spent));
            if let Some(s) = self.spike.as_mut() {
                s.burst_s += spent;
            }
        }
        let step = self.cfg.burst_interval.as_secs_f64();
        let used = self.burst_used(now);
        let burst = self.cfg.burst_interval < normal
            && self
                .spike
                .is_some_and(|s| s.burst_s + step <= self.cfg.burst_max.as_secs_f64() + 1e-9)
            && used + step <= self.cfg.burst_budget.as_secs_f64() + 1e-9;
        self.chosen = Some((now, burst));
        if burst {
            self.cfg.burst_interval
        } else {
            normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            min_active: 10,
            factor: 3.0,
            load_per_cpu: 0.0,
            quiet: Duration::from_secs(5),
            ..DetectorConfig::default()
        }
    }

    fn p(t: f64, active: u32) -> Point {
        Point {
            t,
            active,
            ..Point::default()
        }
    }

    #[test]
    fn a_pile_up_starts_and_ends_a_spike_with_a_frozen_baseline() {
        let mut d = Detector::new(cfg());
        for i in 0..60 {
            assert_eq!(d.step(p(i as f64, 2)), Event::None);
        }
        assert!((d.baseline().unwrap() - 2.0).abs() < 1e-9);
        match d.step(p(60.0, 41)) {
            Event::Started {
                start,
                reason,
                baseline,
            } => {
                assert_eq!((start, reason), (60.0, "sessions"));
                assert!((baseline - 2.0).abs() < 1e-9);
            }
            e => panic!("{e:?}"),
        }
        for i in 61..70 {
            assert_eq!(d.step(p(i as f64, 41)), Event::None);
        }
        assert!((d.baseline().unwrap() - 2.0).abs() < 1e-9, "frozen");
        for i in 70..74 {
            assert_eq!(d.step(p(i as f64, 1)), Event::None, "quiet not long enough");
        }
        assert_eq!(
            d.step(p(74.0, 1)),
            Event::Ended {
                start: 60.0,
                end: 69.0,
                reason: "quiet"
            }
        );
        assert!(!d.in_spike());
    }

    #[test]
    fn below_the_floor_or_the_factor_is_no_spike() {
        let mut d = Detector::new(cfg());
        d.step(p(0.0, 1));
        assert_eq!(d.step(p(1.0, 9)), Event::None, "under the floor");
        let mut d = Detector::new(cfg());
        for i in 0..2000 {
            d.step(p(i as f64, 20));
        }
        assert_eq!(d.step(p(2000.0, 50)), Event::None, "2.5 x baseline");
        assert!(matches!(d.step(p(2001.0, 61)), Event::Started { .. }));
    }

    #[test]
    fn run_queue_and_load_average_trigger_too() {
        let mut d = Detector::new(cfg());
        d.step(p(0.0, 0));
        let rd = Point {
            t: 1.0,
            run_rd: 12,
            ..Point::default()
        };
        assert!(matches!(
            d.step(rd),
            Event::Started {
                reason: "sessions",
                ..
            }
        ));
        let mut d = Detector::new(DetectorConfig {
            load_per_cpu: 2.0,
            ..cfg()
        });
        let load = |t, l, active| Point {
            t,
            active,
            load1: Some(l),
            n_cpus: Some(4),
            ..Point::default()
        };
        assert_eq!(d.step(load(0.0, 7.9, 12)), Event::None);
        assert_eq!(
            d.step(load(0.5, 8.5, 9)),
            Event::None,
            "load1 high but fewer than min_active sessions: other work on the host"
        );
        assert!(matches!(
            d.step(load(1.0, 8.5, 12)),
            Event::Started { reason: "load", .. }
        ));
        assert!(matches!(d.step(p(1.0, 0)), Event::None));
        assert_eq!(
            d.step(Point {
                t: f64::NAN,
                ..p(0.0, 0)
            }),
            Event::None
        );
    }

    #[test]
    fn a_spike_that_never_ends_is_closed_and_becomes_the_baseline() {
        let mut d = Detector::new(cfg());
        d.step(p(0.0, 0));
        assert!(matches!(d.step(p(1.0, 50)), Event::Started { .. }));
        let mut ended = None;
        for i in 2..700 {
            if let Event::Ended { reason, .. } = d.step(p(i as f64, 50)) {
                ended = Some((i, reason));
                break;
            }
        }
        assert_eq!(ended, Some((601, "max_duration")));
        assert_eq!(d.baseline(), Some(50.0));
        assert_eq!(d.step(p(702.0, 50)), Event::None);
    }

    #[test]
    fn load_that_stays_high_is_one_spike_not_one_every_ten_minutes() {
        let mut d = Detector::new(DetectorConfig {
            load_per_cpu: 2.0,
            ..cfg()
        });
        let load = |t: f64, l: f64| Point {
            t,
            active: 12,
            load1: Some(l),
            n_cpus: Some(2),
            ..Point::default()
        };
        let mut events = vec![];
        for i in 0..2000 {
            match d.step(load(i as f64, 9.0)) {
                Event::None => {}
                e => events.push((i, e)),
            }
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(
            events[1].1,
            Event::Ended {
                reason: "max_duration",
                ..
            }
        ));
        assert_eq!(
            d.step(load(2000.0, 3.0)),
            Event::None,
            "load fell: re-armed"
        );
        assert!(matches!(
            d.step(load(2001.0, 9.0)),
            Event::Started { reason: "load", .. }
        ));
    }

    /// Drives the detector like the sampler thread: sample, step, ask for the next period.
    fn simulate(d: &mut Detector, until: f64, load: impl Fn(f64) -> u32) -> (f64, Vec<f64>) {
        let normal = Duration::from_secs(1);
        let mut t = 0.0;
        let mut burst_total = 0.0;
        let mut per_spike = vec![];
        let mut current = 0.0;
        while t < until {
            match d.step(p(t, load(t))) {
                Event::Started { .. } => current = 0.0,
                Event::Ended { .. } => per_spike.push(current),
                Event::None => {}
            }
            let period = d.next_period(t, normal);
            if period < normal {
                burst_total += period.as_secs_f64();
                current += period.as_secs_f64();
            }
            t += period.as_secs_f64();
        }
        (burst_total, per_spike)
    }

    #[test]
    fn flapping_load_stays_within_the_hourly_burst_budget() {
        // Spikes of 5 s every 20 s for 10 minutes: each spike would burst for 10 s (5 s hot plus
        // 5 s quiet), 300 s in all; the budget allows 120 s per hour.
        let mut d = Detector::new(DetectorConfig {
            burst_budget: Duration::from_secs(120),
            ..cfg()
        });
        let flapping = |t: f64| if t >= 60.0 && t % 20.0 < 5.0 { 40 } else { 1 };
        let (total, per_spike) = simulate(&mut d, 660.0, flapping);
        assert!(per_spike.len() >= 25, "{}", per_spike.len());
        assert!(total <= 120.0 + 1e-6, "burst {total} s");
        assert!(total >= 119.0, "the budget is used, not wasted: {total}");
        assert!((d.burst_used(660.0) - total).abs() < 0.5);
        // An hour later the budget is back.
        assert!(d.burst_used(660.0 + 3601.0) < 1e-9);
    }

    #[test]
    fn one_spike_bursts_at_most_burst_max() {
        let mut d = Detector::new(DetectorConfig {
            burst_max: Duration::from_secs(20),
            ..cfg()
        });
        let (total, per_spike) = simulate(&mut d, 200.0, |t| {
            if (10.0..100.0).contains(&t) {
                40
            } else {
                1
            }
        });
        assert_eq!(per_spike.len(), 1);
        assert!((19.0..=20.0 + 1e-6).contains(&total), "{total}");
    }

    #[test]
    fn no_burst_when_the_burst_interval_is_not_shorter() {
        let mut d = Detector::new(cfg());
        d.step(p(0.0, 0));
        d.step(p(1.0, 40));
        assert_eq!(
            d.next_period(1.0, Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
