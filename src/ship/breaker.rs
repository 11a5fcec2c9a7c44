//! The circuit breaker: a failure counter that stops the shipper from hammering a listener that
//! is down, and lets exactly one probe through when it is time to try again.
//!
//! It is a pure state machine: time is passed in (`allow(now)`, `record(outcome, now)`), it never
//! sleeps and never reads a clock, so every transition is unit-tested. Only transitions are
//! logged. Invariant: while open, `allow` is false until the reset timeout passed; in half-open at
//! most one request is in flight.

use std::time::{Duration, Instant};

/// How one request ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The listener answered as a healthy server does (200, and also 400/413: it judged the
    /// payload, so it is up).
    Success,
    /// The listener is unreachable or failing: 5xx, timeout, refused connection, TLS error.
    Failure,
    /// An answer that says nothing about the listener's health: 429 (rate limited, it is
    /// protecting itself) and configuration errors (401, 404).
    Neutral,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures since the last success.
        failures: u32,
    },
    /// No requests until `until`.
    Open {
        /// When a probe may be sent.
        until: Instant,
    },
    /// One probe may be sent; its outcome closes or re-opens the breaker.
    HalfOpen {
        /// Whether the probe was let through and has not been recorded yet.
        probe_in_flight: bool,
    },
}

/// A failure-count circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    threshold: u32,
    reset: Duration,
}

impl State {
    /// `closed`, `open` or `half-open`, for the agent's own metrics and the status file.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (at least 1) and stays
    /// open for `reset`.
    pub fn new(threshold: u32, reset: Duration) -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            reset,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request may be sent at `now`. In half-open this lets exactly one probe through
    /// and claims it, so call it only right before actually sending.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                log::info!("circuit breaker half-open: sending one probe");
                self.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probe_in_flight } => {
                if probe_in_flight {
                    false
                } else {
                    self.state = State::HalfOpen {
                        probe_in_flight: true,
                    };
                    true
                }
            }
        }
    }

    /// When the breaker will let a request through, if it does not now.
    pub fn blocked_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Records how a request sent at `allow`'s permission ended.
    pub fn record(&mut self, outcome: Outcome, now: Instant) {
        self.state = match (self.state, outcome) {
            (State::Closed { .. }, Outcome::Success) => State::Closed { failures: 0 },
            (State::Closed { failures }, Outcome::Failure) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    log::warn!(
                        "circuit breaker open after {failures} consecutive failures; next try in \
                         {:?}",
                        self.reset
                    );
                    State::Open {
                        until: now + self.reset,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::Closed { failures }, Outcome::Neutral) => State::Closed { failures },
            (State::HalfOpen { .. }, Outcome::Success) => {
                log::info!("circuit breaker closed: the probe succeeded");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { .. }, Outcome::Failure) => {
                log::warn!(
                    "circuit breaker open again: the probe failed; next try in {:?}",
                    self.reset
                );
                State::Open {
                    until: now + self.reset,
                }
            }
            // The probe proved nothing either way: the next request is a probe again.
            (State::HalfOpen { .. }, Outcome::Neutral) => State::HalfOpen {
                probe_in_flight: false,
            },
            // Nothing is sent while open, so nothing can be recorded; keep the state.
            (open @ State::Open { .. }, _) => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Duration = Duration::from_secs(60);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, RESET);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record(Outcome::Failure, t0);
        }
        assert_eq!(b.state(), State::Closed { failures: 2 });
        assert!(b.allow(t0));
        b.record(Outcome::Failure, t0);
        assert_eq!(b.state(), State::Open { until: t0 + RESET });
        assert!(!b.allow(t0 + RESET - Duration::from_millis(1)));
        assert_eq!(b.blocked_until(), Some(t0 + RESET));
    }

    #[test]
    fn a_success_resets_the_count_and_neutral_keeps_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, RESET);
        b.record(Outcome::Failure, t0);
        b.record(Outcome::Neutral, t0);
        assert_eq!(b.state(), State::Closed { failures: 1 });
        b.record(Outcome::Success, t0);
        b.record(Outcome::Failure, t0);
        assert_eq!(b.state(), State::Closed { failures: 1 });
    }

    #[test]
    fn half_open_lets_one_probe_through_and_success_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, RESET);
        b.record(Outcome::Failure, t0);
        let later = t0 + RESET;
        assert!(b.allow(later));
        assert_eq!(
            b.state(),
            State::HalfOpen {
                probe_in_flight: true
            }
        );
        assert!(!b.allow(later), "only one probe at a time");
        b.record(Outcome::Success, later);
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(b.allow(later));
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_reset_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, RESET);
        b.record(Outcome::Failure, t0);
        let t1 = t0 + RESET + Duration::from_secs(5);
        assert!(b.allow(t1));
        b.record(Outcome::Failure, t1);
        assert_eq!(b.state(), State::Open { until: t1 + RESET });
        assert!(!b.allow(t1 + RESET - Duration::from_millis(1)));
    }

    #[test]
    fn a_neutral_probe_allows_another_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, RESET);
        b.record(Outcome::Failure, t0);
        assert!(b.allow(t0 + RESET));
        b.record(Outcome::Neutral, t0 + RESET);
        assert!(b.allow(t0 + RESET));
        assert!(!b.allow(t0 + RESET));
    }

    #[test]
    fn threshold_zero_behaves_as_one() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, RESET);
        b.record(Outcome::Failure, t0);
        assert!(matches!(b.state(), State::Open { .. }));
    }
}
