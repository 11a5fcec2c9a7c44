//! The activity sampler: samples non-idle sessions and background processes every second,
//! aggregates every query execution it sees during an interval, and emits one `pg_stat_activity`
//! summary per interval plus the statements of correlated requests, which
//! [`super::correlate`] turns into one record per request (the listener links those to PHP
//! requests).
//!
//! An execution is one (pid, query_start) pair: the same query text run twice is two executions,
//! and the correlation ID (found in the raw text and `application_name` by
//! [`CorrelationPattern::find`]) is carried along, never used as a key. The agent keeps each
//! pid's last `/proc/<pid>` reading (CPU ticks, I/O bytes) and the execution it ran then; every
//! reading charges the difference since the previous one to that execution when it has ended,
//! else to the one running now, and a pid whose execution ended since the previous sample is
//! read once more. So a query seen in a single sample is charged its CPU, which is what answers
//! "which query burned the CPU"; what cannot be attributed is `null`, never 0.
//!
//! Layout, one job a file: this one holds the sampler, its settings and its public calls;
//! `query` the version-gated sample SQL, row decoding and the query-id status; `execution` the
//! per-execution aggregation (waits, OS figures charged between readings, worker folding, the
//! memory bound); `lock_roles` what lock trees say (each waiter's blockers, each blocker's
//! held-up sessions, the peak snapshot); `render` the summary JSON and the statements for the
//! correlator; `procfs_host` whether `/proc` describes the server's backends at all (a remote
//! server's pids are strangers here); `spike_hook` the per-sample snapshot for [`crate::spike`];
//! `cost` each sample's own CPU fed to the adaptive cost control
//! ([`crate::collect::cost_control`]).
//!
//! Invariants:
//! - The per-second query touches only `pg_stat_activity`, excludes idle sessions, the agent's
//!   own sessions (application_name `bitville-monitor` and its own pid) and WAL senders, and calls
//!   no function per row (`now()` and `pg_backend_pid()` are init-plans, evaluated once).
//! - Background processes (state NULL) are sampled like executions, listed apart
//!   (`background[]`), never dropped for room and never correlated.
//! - `pg_blocking_pids()` runs (in [`super::locks`]) only when a sample saw a session waiting on
//!   a lock, at most once per `lock_snapshot_min_gap`, and only when a waiting execution is new
//!   since the previous lock-tree query or `lock_snapshot_refresh` has passed (a pile-up that
//!   stays the same is not queried again every second).
//! - Memory is bounded: at most `2 * max_executions` executions are held (more only while more
//!   sessions than that are running at once); when full, the least interesting executions no
//!   longer running are dropped and counted in `n_left_out`.
//! - A parallel worker's CPU and I/O are charged to its leader's execution.
//! - `/proc/<pid>` is read only when the server's backends are this host's PostgreSQL processes
//!   (decided again every interval); otherwise the summary's `procfs.enabled` is false with a
//!   `reason`.
//! - Query texts are rendered (normalized, truncated) once, when an execution is first seen.
//! - A failed sample is counted and named in the summary's `errors`; it never loses the interval.
//! - `/proc/<pid>/io` of a session that stays in a state without storage I/O (waiting on a lock,
//!   in `pg_sleep`, idle in transaction, `ClientRead`) within one execution is not read again:
//!   its figure is unchanged, not zero. Cost control may defer more readings, never lose one.

mod cost;
mod execution;
mod lock_roles;
mod procfs_host;
mod query;
mod render;
mod spike_hook;

use std::time::Duration;

use self::execution::{Execution, PidTrack};
use self::lock_roles::{LockAgg, LockGate};
use self::procfs_host::ProcfsHost;
pub use self::query::{query_id_status, QueryIdStatus, QUERY_ID_SINCE};
use self::query::{query_prepared, sample_sql, SessionRow};
use super::correlate::{Correlator, CorrelatorConfig, SampledStatement};
use super::inthash::IntMap;
use super::locks::{self, LockWaiter};
use super::procfs::ProcReader;
use super::CollectError;
use crate::json::Json;
use crate::normalize::{CorrelationPattern, QueryText};
use crate::payload::{unix_now, Payload};
use crate::pool::PooledClient;

const COLLECTOR: &str = "activity";

/// Most errors kept per interval for the summary (the count is always exact).
const MAX_ERRORS_KEPT: usize = 5;

/// Settings of the sampler.
#[derive(Debug, Clone)]
pub struct ActivityConfig {
    /// How query texts are shipped. Defaults to normalized, 1000 characters.
    pub query_text: QueryText,
    /// How correlation IDs are found in application_name. Defaults to `bitville-<uuid>`.
    pub correlation: CorrelationPattern,
    /// Most executions listed per summary. Defaults to 200.
    pub max_executions: usize,
    /// Most correlated records [`ActivitySampler::finish_interval`] returns (one per request,
    /// by load); the rest stay in the summary only. Defaults to 10; the daemon uses
    /// `daemon::correlated_budget` for its shared correlator instead.
    pub max_correlated: usize,
    /// Shortest time between two lock-tree queries. Defaults to 1 s.
    pub lock_snapshot_min_gap: Duration,
    /// Longest time the lock tree is not queried again while the same executions wait (no new
    /// waiter). Defaults to [`LOCK_SNAPSHOT_REFRESH`].
    pub lock_snapshot_refresh: Duration,
    /// Whether to read `/proc/<pid>`. Defaults to true; even then the figures are read only
    /// when the server's backends are this host's PostgreSQL processes (detected).
    pub read_procfs: bool,
    /// CPU budget per sample for the adaptive cost control ([`crate::collect::cost_control`]);
    /// zero turns it off. Defaults to zero here (a bare sampler measures its full cost); the
    /// agent takes `[collection] sample_cpu_budget_ms` (2 ms by default).
    pub sample_cpu_budget: Duration,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            query_text: QueryText::default(),
            correlation: CorrelationPattern::default(),
            max_executions: 200,
            max_correlated: 10,
            lock_snapshot_min_gap: Duration::from_secs(1),
            lock_snapshot_refresh: LOCK_SNAPSHOT_REFRESH,
            read_procfs: true,
            sample_cpu_budget: Duration::ZERO,
        }
    }
}

type ExecKey = (i32, i64);

/// Default of [`ActivityConfig::lock_snapshot_refresh`]: at 400 sessions waiting on one lock, a
/// lock-tree query costs about 2.9 ms of agent CPU and 3.7 ms of PostgreSQL CPU (BENCHMARKS.md,
/// issue 16); while no new session joins the waiters, the tree's shape and root blockers stay,
/// and only the wait times grow, so every 5 s is enough for them.
pub const LOCK_SNAPSHOT_REFRESH: Duration = Duration::from_secs(5);

/// What one call of [`ActivitySampler::sample`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleStats {
    /// Rows returned: non-idle sessions and background processes.
    pub n_rows: usize,
    /// Of those, background processes (checkpointer, WAL writer, autovacuum, ...).
    pub n_background: usize,
    /// Sessions waiting on a lock.
    pub n_lock_waits: usize,
    /// Whether the lock tree was queried.
    pub lock_snapshot: bool,
}

/// Aggregates one-second samples of `pg_stat_activity` into per-interval payloads.
#[derive(Debug)]
pub struct ActivitySampler {
    cfg: ActivityConfig,
    proc: ProcReader,
    execs: IntMap<ExecKey, Execution>,
    tracks: IntMap<i32, PidTrack>,
    round: u64,
    interval_start: Option<f64>,
    last_sample_at: Option<f64>,
    last_reading_at: Option<f64>,
    n_samples: u32,
    n_failed: u32,
    n_left_out: u64,
    errors: Vec<Json>,
    locks: LockAgg,
    relation_names: locks::RelationNames,
    lock_gate: LockGate,
    version_num: Option<u32>,
    query_id_checked: bool,
    n_background_execs: usize,
    current: IntMap<i32, ExecKey>,
    leaders_by_start: IntMap<i64, ExecKey>,
    room_check_at: usize,
    text_buf: String,
    /// The lock waiters of the last sample, when it queried them (for the spike code).
    spike_waiters: Option<Vec<LockWaiter>>,
    procfs: ProcfsHost,
    cost: super::cost_control::CostControl,
    last_sample_end: Option<std::time::Instant>,
    /// `/proc/<pid>/io` readings taken as unchanged this interval (quiet sessions, cost level).
    n_io_unchanged: u64,
    /// `/proc/<pid>` readings deferred this interval (cost level `rotate` and above).
    n_stat_deferred: u64,
    /// Readings of idle background processes deferred in this interval
    /// (`execution::idle_background`).
    n_background_deferred: u64,
    /// Samples come faster than once a second (`set_sub_second`): `io` on one sample in four.
    sub_second: bool,
}

impl ActivitySampler {
    /// A sampler with `cfg`; reads the real `/proc`.
    pub fn new(cfg: ActivityConfig) -> ActivitySampler {
        ActivitySampler::with_proc(cfg, ProcReader::new())
    }

    /// A sampler reading per-pid figures through `proc` (tests point it elsewhere).
    pub fn with_proc(cfg: ActivityConfig, proc: ProcReader) -> ActivitySampler {
        let cost = super::cost_control::CostControl::new(cfg.sample_cpu_budget);
        ActivitySampler {
            cfg,
            proc,
            execs: IntMap::default(),
            tracks: IntMap::default(),
            round: 0,
            interval_start: None,
            last_sample_at: None,
            last_reading_at: None,
            n_samples: 0,
            n_failed: 0,
            n_left_out: 0,
            errors: Vec::new(),
            locks: LockAgg::default(),
            relation_names: locks::RelationNames::default(),
            lock_gate: LockGate::default(),
            version_num: None,
            query_id_checked: false,
            n_background_execs: 0,
            current: IntMap::default(),
            leaders_by_start: IntMap::default(),
            room_check_at: 0,
            text_buf: String::new(),
            spike_waiters: None,
            procfs: ProcfsHost::default(),
            cost,
            last_sample_end: None,
            n_io_unchanged: 0,
            n_stat_deferred: 0,
            n_background_deferred: 0,
            sub_second: false,
        }
    }

    /// Client executions held for the current interval, background processes not counted
    /// (for tests and the agent's self-metrics).
    pub fn n_executions(&self) -> usize {
        self.execs.values().filter(|e| !e.background).count()
    }

    fn record_error(&mut self, e: &CollectError) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(e.to_json());
        }
    }

    /// Takes one sample: call every `sample_interval_ms`. On error the sample is counted as
    /// failed (and named in the next summary) and the interval goes on.
    pub fn sample(&mut self, client: &mut PooledClient) -> Result<SampleStats, CollectError> {
        let cpu_before = crate::sys::thread_cpu_time();
        let res = self.sample_inner(client);
        if let Err(e) = &res {
            self.n_failed += 1;
            self.record_error(e);
        }
        self.observe_cost(cpu_before);
        res
    }

    fn sample_inner(&mut self, client: &mut PooledClient) -> Result<SampleStats, CollectError> {
        let version = match self.version_num {
            Some(v) => v,
            None => {
                let v = super::server_version_num(client, COLLECTOR)?;
                self.version_num = Some(v);
                if !self.query_id_checked {
                    // Said once per run, not per interval: the setting needs a restart anyway.
                    self.query_id_checked = true;
                    match query_id_status(client) {
                        Ok(status) => {
                            if let Some(p) = status.problem() {
                                log::warn!("activity: {p}");
                            }
                        }
                        Err(e) => log::debug!("{e}"),
                    }
                }
                v
            }
        };
        let (sql, name) = sample_sql(version);
        let rows =
            query_prepared(client, name, sql).map_err(CollectError::query(COLLECTOR, "sample"))?;
        let decoded: Vec<SessionRow> = rows.iter().filter_map(SessionRow::decode).collect();
        let (mut stats, now) = self.absorb(&decoded);
        stats.n_rows = rows.len();
        if stats.n_lock_waits > 0 {
            let due = self.lock_gate.due(
                &decoded,
                self.cfg.lock_snapshot_min_gap,
                self.cfg.lock_snapshot_refresh,
            );
            if due {
                stats.lock_snapshot = true;
                if let Err(e) = self.lock_snapshot(client, version, now) {
                    // The activity sample itself succeeded; only the lock tree is missing, which
                    // the summary's `errors` says.
                    log::debug!("{e}");
                    self.record_error(&e);
                    stats.lock_snapshot = false;
                }
            }
        }
        Ok(stats)
    }

    /// Closes the interval: returns the `pg_stat_activity` summary first, then one correlated
    /// record per request (at most `max_correlated`, by load; see [`super::correlate`]), and
    /// starts the next interval. Without a log to wait for (`--once`, tests): the daemon uses
    /// [`Self::finish_interval_parts`] and a shared correlator instead.
    pub fn finish_interval(&mut self) -> Vec<Payload> {
        let (summary, statements) = self.finish_interval_parts();
        let (start, end) = (
            summary.data.get("interval_start").and_then(as_f64),
            summary.data.get("interval_end").and_then(as_f64),
        );
        let mut c = Correlator::new(CorrelatorConfig {
            grace: Duration::ZERO,
            budget: self.cfg.max_correlated,
            ..CorrelatorConfig::default()
        });
        c.add_sampled(statements, start, end, unix_now());
        let mut out = vec![summary];
        out.extend(c.take_all());
        out
    }

    /// Closes the interval: the `pg_stat_activity` summary and the statements of correlated
    /// requests it saw, for a [`Correlator`]. Call every `interval_s`, from the thread that
    /// calls [`Self::sample`].
    pub fn finish_interval_parts(&mut self) -> (Payload, Vec<SampledStatement>) {
        self.read_deferred();
        let parts = self.render_interval();
        self.interval_start = None;
        self.last_sample_at = None;
        self.n_samples = 0;
        self.n_failed = 0;
        self.n_left_out = 0;
        self.locks = LockAgg::default();
        self.room_check_at = 0;
        self.n_background_execs = 0;
        self.n_io_unchanged = 0;
        self.n_stat_deferred = 0;
        self.n_background_deferred = 0;
        // The server may have been upgraded and restarted meanwhile.
        self.version_num = None;
        // And it may not be the same server: whether it runs here is decided again.
        self.procfs.local = None;
        parts
    }
}

fn as_f64(v: &Json) -> Option<f64> {
    match v {
        Json::Float(f) => Some(*f),
        Json::Int(i) => Some(*i as f64),
        Json::UInt(u) => Some(*u as f64),
        _ => None,
    }
}

#[cfg(test)]
mod test_support;
