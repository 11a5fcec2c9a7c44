//! The agent's bookkeeping about its own work, shared by the threads: per-collector counts and
//! last errors (a repeated error is logged at most every five minutes), the database time of
//! the interval, overruns, the pause file, and streaks of failed spool appends.
//!
//! Invariants: one mutex around the counters, held only to read or bump them (never across I/O).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent_report::CollectorReport;

/// The same error is logged again at most this often (it is counted every time).
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(300);

/// Per-collector bookkeeping for the agent's own metrics and the status file.
#[derive(Debug, Default, Clone)]
struct CollectorState {
    n_ok: u64,
    n_errors: u64,
    n_skipped: u64,
    last_error: Option<String>,
    last_logged: Option<Instant>,
}

#[derive(Debug, Default)]
struct HealthState {
    collectors: BTreeMap<&'static str, CollectorState>,
    db_time: Duration,
    overruns: u64,
    paused: bool,
    n_append_errors: u64,
    /// Appends that failed in the current streak (logged once per streak).
    append_streak: u64,
    /// The activity sampler's cost control, as the sampler thread last published it.
    sample_cost: Option<crate::collect::cost_control::CostReport>,
    /// When the last append failed: a streak ends only after [`AgentHealth::streak_quiet`]
    /// without a failure, so a filesystem that is full again right after each reclaim is still
    /// one streak.
    last_append_failure: Option<Instant>,
}

/// The least time appends must keep working before a streak of failed appends counts as over.
const STREAK_QUIET_MIN: Duration = Duration::from_secs(30);

/// What the agent knows about its own work, shared by the threads.
#[derive(Debug)]
pub struct AgentHealth {
    pub(super) started: Instant,
    /// How long appends must keep working before a streak of failures ends: two intervals, at
    /// least [`STREAK_QUIET_MIN`] (a failure that recurs once per interval is one streak).
    pub(super) streak_quiet: Duration,
    pause_file: Mutex<Option<PathBuf>>,
    state: Mutex<HealthState>,
}

impl AgentHealth {
    /// Fresh bookkeeping; `pause_file` is the emergency brake; `interval` the collection
    /// interval (it sets how long a streak of failed appends lasts).
    pub fn new(pause_file: Option<PathBuf>, interval: Duration) -> AgentHealth {
        AgentHealth {
            started: Instant::now(),
            streak_quiet: (2 * interval).max(STREAK_QUIET_MIN),
            pause_file: Mutex::new(pause_file),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pause file exists now (logs when that changes).
    pub fn paused(&self) -> bool {
        let file = self
            .pause_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let paused = file.as_deref().is_some_and(Path::exists);
        let mut st = self.lock();
        if paused != st.paused {
            st.paused = paused;
            match (&file, paused) {
                (Some(f), true) => log::warn!(
                    "pause file {} exists: no database queries until it is removed",
                    f.display()
                ),
                _ => log::info!("pause file gone: database queries resume"),
            }
        }
        paused
    }

    pub(super) fn set_pause_file(&self, file: Option<PathBuf>) {
        *self.pause_file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    pub(super) fn ok(&self, name: &'static str) {
        let mut st = self.lock();
        let c = st.collectors.entry(name).or_default();
        c.n_ok += 1;
        if c.last_error.take().is_some() {
            log::info!("{name}: working again");
        }
    }

    pub(super) fn failed(&self, name: &'static str, error: String) {
        let mut st = self.lock();
        let c = st.collectors.entry(name).or_default();
        c.n_errors += 1;
        let repeat = c.last_error.as_deref() == Some(error.as_str())
            && c.last_logged
                .is_some_and(|t| t.elapsed() < REPEAT_LOG_EVERY);
        if !repeat {
            log::warn!("{name}: {error}");
            c.last_logged = Some(Instant::now());
        }
        c.last_error = Some(error);
    }

    pub(super) fn skipped(&self, name: &'static str) {
        self.lock().collectors.entry(name).or_default().n_skipped += 1;
    }

    pub(super) fn overran(&self, name: &str, n: u64) {
        self.lock().overruns += n;
        log::warn!("{name} cycle overran its period: skipped {n} cycle(s) instead of overlapping");
    }

    pub(super) fn add_db_time(&self, d: Duration) {
        self.lock().db_time += d;
    }

    pub(super) fn take_db_time(&self) -> Duration {
        std::mem::take(&mut self.lock().db_time)
    }

    /// Counts a failed append; true for the first of a streak (the one to log).
    pub(super) fn append_failed(&self) -> bool {
        let mut st = self.lock();
        st.n_append_errors += 1;
        st.append_streak += 1;
        st.last_append_failure = Some(Instant::now());
        st.append_streak == 1
    }

    /// Ends a streak of failed appends once appends have worked for `streak_quiet`: how many
    /// failed in it, if a streak ended now.
    pub(super) fn append_worked(&self) -> Option<u64> {
        let quiet_for = self.streak_quiet;
        let mut st = self.lock();
        let quiet = st
            .last_append_failure
            .map_or(true, |t| t.elapsed() >= quiet_for);
        if st.append_streak == 0 || !quiet {
            return None;
        }
        st.last_append_failure = None;
        Some(std::mem::take(&mut st.append_streak))
    }

    /// Overruns, paused, append errors: read together under one lock.
    /// Publishes the activity sampler's cost control report (the sampler thread, per sample).
    pub(super) fn set_sample_cost(&self, r: crate::collect::cost_control::CostReport) {
        self.lock().sample_cost = Some(r);
    }

    /// The cost control report last published, if the sampler has sampled.
    pub(super) fn sample_cost(&self) -> Option<crate::collect::cost_control::CostReport> {
        self.lock().sample_cost
    }

    pub(super) fn counters(&self) -> (u64, bool, u64) {
        let st = self.lock();
        (st.overruns, st.paused, st.n_append_errors)
    }

    /// Every collector's counters and last error, by name.
    pub(super) fn collector_reports(&self) -> Vec<(&'static str, CollectorReport)> {
        self.lock()
            .collectors
            .iter()
            .map(|(name, c)| {
                let report = CollectorReport {
                    ok: c.n_ok,
                    errors: c.n_errors,
                    skipped: c.n_skipped,
                    last_error: c.last_error.clone(),
                };
                (*name, report)
            })
            .collect()
    }
}
