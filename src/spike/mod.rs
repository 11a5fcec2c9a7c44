//! Load spikes: the per-sample load timeline, its attribution to queries and requests, the spike
//! detector with its burst-sampling budget, the spike report and the local flight recorder.
//!
//! Data flow: after every activity sample the sampler hands over a [`SampleSnapshot`] (plain
//! values, see [`crate::collect::activity::ActivitySampler::take_spike_snapshot`]); `hostline`
//! adds the host's figures of that moment; `timeline` turns both into one [`timeline::Row`];
//! `attrib` adds the sample to the per-interval "load by SQL / by request" table; `detector`
//! decides whether a spike starts, lasts or ends and whether to sample faster; `report` gathers
//! what a spike shows and builds its payload; `deep` takes the once-per-spike snapshot and the
//! statement counters; `watch` is the sampler thread's glue around all of these; `recorder`
//! keeps rows and reports on local disk (`jsonread` reads its lines back) and `render` prints
//! them for `--report`.
//!
//! Invariants: everything here is computation on plain values with time passed in, except
//! `hostline` (reads `/proc`), `recorder` (its two files), `deep` (its queries) and `watch`
//! (which calls them). Nothing panics on odd `/proc` content or damaged recorder files.

pub mod attrib;
pub mod deep;
pub mod detector;
pub mod hostline;
pub mod jsonread;
pub mod recorder;
pub mod render;
pub mod report;
pub mod timeline;
pub mod watch;

use crate::collect::locks::LockWaiter;

/// One session of one sample, as the spike code needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleRow {
    /// Backend pid.
    pub pid: i32,
    /// The execution's `query_start` in µs (with the pid, the execution's key).
    pub exec_start: i64,
    /// `pg_stat_activity.state` (`None` for background processes).
    pub state: Option<String>,
    /// `wait_event_type` (`None`: on CPU when active).
    pub wait_event_type: Option<String>,
    /// `pg_stat_activity.query_id` (PostgreSQL 14+, when computed).
    pub query_id: Option<i64>,
    /// The rendered (normalized, truncated) query text: the fingerprint before query_id.
    pub query: Option<String>,
    /// The request's correlation id, when the session carries one.
    pub correlation_id: Option<String>,
    /// Role.
    pub usename: Option<String>,
    /// Database.
    pub datname: Option<String>,
    /// Client address.
    pub client_addr: Option<String>,
    /// CPU ticks charged to the execution so far in this interval (the sampler's figure).
    pub cpu_ticks_total: u64,
    /// CPU ticks the backend spent since the previous sample: filled by [`watch::Watch`] from
    /// `cpu_ticks_total` (0 when unknown).
    pub cpu_ticks: u64,
}

/// What one activity sample saw, for the spike code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleSnapshot {
    /// Server time of the sample (unix seconds).
    pub at: f64,
    /// The sampled sessions.
    pub rows: Vec<SampleRow>,
    /// Run states (`/proc/<pid>/stat` field 3) of every PostgreSQL process read in this sample,
    /// parallel workers included.
    pub run_states: Vec<u8>,
    /// The lock waiters, when a lock tree was queried during this sample.
    pub waiters: Option<Vec<LockWaiter>>,
}

/// Load classes, Performance Insights' way: `CPU` is an active session with no wait event, the
/// rest are PostgreSQL's `wait_event_type`s; `Other` takes a wait type this list does not know
/// (a newer server), so totals stay exact.
pub const CLASSES: [&str; 11] = [
    "CPU",
    "IO",
    "Lock",
    "LWLock",
    "IPC",
    "Client",
    "Timeout",
    "BufferPin",
    "Activity",
    "Extension",
    "Other",
];

/// Index of `CPU` in [`CLASSES`].
pub const CLASS_CPU: usize = 0;
/// Index of `Lock` in [`CLASSES`].
pub const CLASS_LOCK: usize = 2;

/// The load class of an active session with this `wait_event_type`.
pub fn class_of(wait_event_type: Option<&str>) -> usize {
    match wait_event_type {
        None => CLASS_CPU,
        Some(w) => CLASSES
            .iter()
            .position(|c| *c == w && *c != "CPU" && *c != "Other")
            .unwrap_or(CLASSES.len() - 1),
    }
}

/// Whether a session in this state counts as active load.
pub fn is_active(state: Option<&str>) -> bool {
    matches!(state, Some("active") | Some("fastpath function call"))
}

/// Whether a session in this state is idle inside a transaction.
pub fn is_idle_in_transaction(state: Option<&str>) -> bool {
    state.is_some_and(|s| s.starts_with("idle in transaction"))
}

/// Rounds to `digits` decimals (payload compactness; the figures are not more precise).
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_wait_event_types() {
        assert_eq!(CLASSES[class_of(None)], "CPU");
        assert_eq!(CLASSES[class_of(Some("Lock"))], "Lock");
        assert_eq!(CLASSES[class_of(Some("LWLock"))], "LWLock");
        assert_eq!(CLASSES[class_of(Some("InjectionPoint"))], "Other");
        assert_eq!(CLASSES[class_of(Some("CPU"))], "Other");
        assert!(is_active(Some("active")));
        assert!(!is_active(Some("idle in transaction")));
        assert!(!is_active(None));
        assert!(is_idle_in_transaction(Some(
            "idle in transaction (aborted)"
        )));
        assert_eq!(round(1.2345, 1), 1.2);
    }
}
