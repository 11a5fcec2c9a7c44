//! The activity sampler: samples non-idle sessions every second, aggregates every query execution
//! it sees during an interval, and emits one `pg_stat_activity` summary per interval plus one
//! correlated payload per correlation ID (the listener links those to PHP requests).
//!
//! An execution is one (pid, query_start) pair: the same query text run twice is two executions,
//! and the correlation ID is carried along, never used as a key. Between two consecutive samples
//! of a pid, the CPU ticks and I/O bytes it spent (from `/proc/<pid>`) are added to the execution
//! running at the second sample, which is what answers "which query burned the CPU".
//!
//! Invariants:
//! - The per-second query touches only `pg_stat_activity`, excludes idle sessions, the agent's
//!   own sessions (application_name `bitville-monitor` and its own pid) and WAL senders, and calls
//!   no function per row (`now()` and `pg_backend_pid()` are init-plans, evaluated once).
//! - `pg_blocking_pids()` runs (in [`super::locks`]) only when a sample saw a session waiting on
//!   a lock, and at most once per `lock_snapshot_min_gap`.
//! - Memory is bounded: at most `2 * max_executions` executions are held (more only while more
//!   sessions than that are running at once); when full, the least interesting executions no
//!   longer running are dropped and counted in `n_left_out`.
//! - A parallel worker's CPU and I/O are charged to its leader's execution.
//! - Query texts are rendered (normalized, truncated) once, when an execution is first seen.
//! - A failed sample is counted and named in the summary's `errors`; it never loses the interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::correlate::{Correlator, CorrelatorConfig, SampledStatement};
use super::locks::{self, LockWaiter};
use super::procfs::{self, ProcReader};
use super::{col, unix_secs, CollectError};
use crate::json::Json;
use crate::normalize::{Correlation, CorrelationPattern, QueryText};
use crate::payload::{unix_now, Payload, Source};
use crate::pool::PooledClient;

const COLLECTOR: &str = "activity";

/// The per-second query for PostgreSQL 14 and later. Rows: one per session that is not idle
/// and not the agent, background processes included (their `state` is NULL: checkpointer,
/// background writer, WAL writer, autovacuum, ...). Column 13 is `leader_pid` (PostgreSQL 13+),
/// so parallel workers fold into their leader; column 14 is `query_id` (PostgreSQL 14+, NULL
/// while `compute_query_id` is off).
const SAMPLE_SQL_14: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, leader_pid, query_id FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// [`SAMPLE_SQL_14`] for PostgreSQL 13, which has no `query_id`.
const SAMPLE_SQL_13: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, leader_pid, NULL::bigint FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// Runs `sql` as the statement `name`, prepared once per connection
/// ([`PooledClient::query_cached`]). Planning pg_stat_activity's view costs the server far more
/// than executing it (481 against 27 µs a query in a hot loop), and the sample runs every
/// second: the cached plan cuts the agent's CPU inside PostgreSQL by 30 to 50 %
/// (BENCHMARKS.md). The connection knows what it prepared, so no `EXECUTE` of a missing
/// statement ever writes an ERROR into the server log.
fn query_prepared(
    client: &mut PooledClient,
    name: &'static str,
    sql: &str,
) -> Result<Vec<postgres::Row>, postgres::Error> {
    client.query_cached(name, sql)
}

/// [`SAMPLE_SQL_13`] for PostgreSQL 12, which has no `leader_pid`.
const SAMPLE_SQL_12: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, NULL::int, NULL::bigint FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// `pg_stat_activity.leader_pid` exists from PostgreSQL 13.
const LEADER_PID_SINCE: u32 = 130000;

/// `pg_stat_activity.query_id` and `compute_query_id` exist from PostgreSQL 14.
pub const QUERY_ID_SINCE: u32 = 140000;

/// Most background processes listed per summary (a server has about ten).
const MAX_BACKGROUND: usize = 50;

/// Most errors kept per interval for the summary (the count is always exact).
const MAX_ERRORS_KEPT: usize = 5;

/// Whether the server gives executions a `query_id` (the exact join between a sampled
/// execution, its pg_stat_statements row and its log lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryIdStatus {
    /// PostgreSQL before 14 has no `query_id`.
    Unsupported {
        /// `server_version_num`.
        version: u32,
    },
    /// Query ids are computed.
    On,
    /// `compute_query_id` is off (or `auto` with no module that asks for it).
    Off {
        /// The `compute_query_id` setting.
        setting: String,
    },
}

impl QueryIdStatus {
    /// A sentence for the agent's log and `--test`: what is missing and the fix; `None` when
    /// query ids are computed.
    pub fn problem(&self) -> Option<String> {
        match self {
            QueryIdStatus::On => None,
            QueryIdStatus::Unsupported { version } => Some(format!(
                "PostgreSQL {} has no query_id (14 and later have): sampled executions are \
                 joined to pg_stat_statements and log lines by text and time only",
                version / 10000
            )),
            QueryIdStatus::Off { setting } => Some(format!(
                "compute_query_id is {setting}: sampled executions carry no query_id; set \
                 compute_query_id = on (or auto with pg_stat_statements in \
                 shared_preload_libraries) to join them exactly to pg_stat_statements and the log"
            )),
        }
    }
}

/// Asks the server whether it computes query ids (`compute_query_id`, and for `auto` whether
/// pg_stat_statements is preloaded).
pub fn query_id_status(client: &mut postgres::Client) -> Result<QueryIdStatus, CollectError> {
    let version = super::server_version_num(client, COLLECTOR)?;
    if version < QUERY_ID_SINCE {
        return Ok(QueryIdStatus::Unsupported { version });
    }
    let row = client
        .query_one(
            "SELECT current_setting('compute_query_id'), \
             current_setting('shared_preload_libraries')",
            &[],
        )
        .map_err(CollectError::query(COLLECTOR, "compute_query_id"))?;
    let setting: String = col::<&str>(&row, 0).unwrap_or("").to_string();
    let preload: &str = col(&row, 1).unwrap_or("");
    Ok(query_id_from_settings(&setting, preload))
}

fn query_id_from_settings(setting: &str, preload: &str) -> QueryIdStatus {
    let with_pgss = preload
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "pg_stat_statements");
    match setting {
        "on" | "regress" | "verbose" => QueryIdStatus::On,
        "auto" if with_pgss => QueryIdStatus::On,
        other => QueryIdStatus::Off {
            setting: other.to_string(),
        },
    }
}

/// Settings of the sampler.
#[derive(Debug, Clone)]
pub struct ActivityConfig {
    /// How query texts are shipped. Defaults to normalized, 1000 characters.
    pub query_text: QueryText,
    /// How correlation IDs are found in application_name. Defaults to `bitville-<uuid>`.
    pub correlation: CorrelationPattern,
    /// Most executions listed per summary. Defaults to 200.
    pub max_executions: usize,
    /// Most correlated payloads per interval (one per correlation ID, longest first); the rest
    /// stay in the summary only. Defaults to 10, so the listener's rate limit (shared by every payload) keeps room.
    pub max_correlated: usize,
    /// Shortest time between two lock-tree queries. Defaults to 1 s.
    pub lock_snapshot_min_gap: Duration,
    /// Whether to read `/proc/<pid>`: only meaningful when the server runs on this host.
    /// Defaults to true.
    pub read_procfs: bool,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            query_text: QueryText::default(),
            correlation: CorrelationPattern::default(),
            max_executions: 200,
            max_correlated: 10,
            lock_snapshot_min_gap: Duration::from_secs(1),
            read_procfs: true,
        }
    }
}

impl ActivityConfig {
    /// The sampler settings from the agent's `[collection]` configuration, defaults elsewhere.
    pub fn from_collection(c: &crate::config::CollectionConfig) -> ActivityConfig {
        ActivityConfig {
            query_text: QueryText::from_collection(c),
            correlation: CorrelationPattern::from_collection(c),
            ..ActivityConfig::default()
        }
    }
}

type ExecKey = (i32, i64);

#[derive(Debug, Clone)]
struct WaitSeen {
    kind: String,
    event: String,
    count: u32,
}

#[derive(Debug, Clone)]
struct LockSeen {
    locktype: Option<String>,
    mode: Option<String>,
    relation: Option<String>,
    blockers: Vec<i32>,
    /// Who the blockers were at the latest snapshot: pid, request, query, state, age.
    blocker_details: Vec<Json>,
    max_wait_ms: Option<f64>,
    n_snapshots: u32,
}

/// Sessions this execution held up (directly or behind another waiter), each with its longest
/// wait seen and its request.
#[derive(Debug, Clone, Default)]
struct BlockingSeen {
    waiters: Vec<(i32, Option<String>, f64)>,
}

/// Most held-up sessions listed per blocker (the counts cover all).
const MAX_BLOCKED_LISTED: usize = 20;

impl BlockingSeen {
    fn note(&mut self, pid: i32, correlation_id: Option<&str>, wait_ms: f64) {
        match self.waiters.iter_mut().find(|w| w.0 == pid) {
            Some(w) => w.2 = w.2.max(wait_ms),
            None => self
                .waiters
                .push((pid, correlation_id.map(str::to_string), wait_ms)),
        }
    }

    fn to_json(&self) -> Json {
        let total: f64 = self.waiters.iter().map(|w| w.2).sum();
        let max = self.waiters.iter().map(|w| w.2).fold(0.0, f64::max);
        let mut ids: Vec<&str> = self.waiters.iter().filter_map(|w| w.1.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        Json::object()
            .field("n_blocked", self.waiters.len())
            .field("total_wait_ms", total)
            .field("max_wait_ms", max)
            .field(
                "correlation_ids",
                Json::Array(ids.into_iter().map(Json::from).collect()),
            )
            .field(
                "blocked",
                Json::Array(
                    self.waiters
                        .iter()
                        .take(MAX_BLOCKED_LISTED)
                        .map(|(pid, id, ms)| {
                            Json::object()
                                .field("pid", *pid)
                                .field("correlation_id", id.as_deref())
                                .field("wait_ms", *ms)
                        })
                        .collect(),
                ),
            )
    }
}

#[derive(Debug, Clone)]
struct Execution {
    pid: i32,
    query_start: Option<f64>,
    xact_start: Option<f64>,
    first_seen: f64,
    last_seen: f64,
    n_seen: u32,
    state: String,
    wait_event_type: Option<String>,
    wait_event: Option<String>,
    waits: Vec<WaitSeen>,
    datname: Option<String>,
    usename: Option<String>,
    application_name: Option<String>,
    client_addr: Option<String>,
    backend_type: Option<String>,
    query: Option<String>,
    correlation: Option<Correlation>,
    query_id: Option<i64>,
    background: bool,
    cpu_ticks: u64,
    read_bytes: u64,
    write_bytes: u64,
    os_seen: bool,
    cpu_attributed: bool,
    cpu_partial: bool,
    io_seen: bool,
    io_attributed: bool,
    rss_bytes: u64,
    lock: Option<LockSeen>,
    blocking: Option<BlockingSeen>,
    n_worker_samples: u32,
    round: u64,
}

impl Execution {
    fn duration_ms(&self) -> f64 {
        match self.query_start {
            Some(qs) => ((self.last_seen - qs) * 1000.0).max(0.0),
            None => ((self.last_seen - self.first_seen) * 1000.0).max(0.0),
        }
    }

    fn cpu_ms(&self) -> u64 {
        procfs::ticks_to_ms(self.cpu_ticks)
    }

    /// Ranking when memory or the payload is full: long-running and CPU-hungry executions win.
    fn score(&self) -> f64 {
        self.duration_ms() + self.cpu_ms() as f64
    }

    fn to_json(&self) -> Json {
        let waits = self
            .waits
            .iter()
            .map(|w| {
                Json::object()
                    .field("wait_event_type", w.kind.as_str())
                    .field("wait_event", w.event.as_str())
                    .field("count", w.count)
            })
            .collect();
        let lock = self.lock.as_ref().map(|l| {
            Json::object()
                .field("locktype", l.locktype.as_deref())
                .field("mode", l.mode.as_deref())
                .field("relation", l.relation.as_deref())
                .field(
                    "blocked_by",
                    Json::Array(l.blockers.iter().map(|&b| b.into()).collect()),
                )
                .field("blockers", Json::Array(l.blocker_details.clone()))
                .field("max_wait_ms", l.max_wait_ms)
                .field("n_snapshots", l.n_snapshots)
        });
        Json::object()
            .field("pid", self.pid)
            .field("datname", self.datname.as_deref())
            .field("usename", self.usename.as_deref())
            .field("application_name", self.application_name.as_deref())
            .field("client_addr", self.client_addr.as_deref())
            .field("backend_type", self.backend_type.as_deref())
            .field("state", self.state.as_str())
            .field("query_start", self.query_start)
            .field("xact_start", self.xact_start)
            .field("first_seen", self.first_seen)
            .field("last_seen", self.last_seen)
            .field("n_samples", self.n_seen)
            .field("duration_ms", self.duration_ms())
            .field("wait_event_type", self.wait_event_type.as_deref())
            .field("wait_event", self.wait_event.as_deref())
            .field("wait_events", Json::Array(waits))
            .field("cpu_ms", self.cpu_attributed.then(|| self.cpu_ms()))
            .field("cpu_partial", self.cpu_partial)
            .field("read_bytes", self.io_attributed.then_some(self.read_bytes))
            .field(
                "write_bytes",
                self.io_attributed.then_some(self.write_bytes),
            )
            .field("rss_bytes", self.os_seen.then_some(self.rss_bytes))
            .field("lock", lock)
            .field(
                "blocking",
                self.blocking.as_ref().map(BlockingSeen::to_json),
            )
            .field("parallel_worker_samples", self.n_worker_samples)
            .field("query", self.query.as_deref())
            .field("query_id", self.query_id)
            .field("correlation_id", self.correlation_id())
            .field(
                "correlation_source",
                self.correlation.as_ref().map(|c| c.source.as_str()),
            )
    }

    /// The statement a correlator merges into its request's record; `None` without a
    /// correlation ID. `round` is the interval's last sampling round (was it still running?).
    fn sampled_statement(&self, round: u64) -> Option<SampledStatement> {
        let c = self.correlation.as_ref()?;
        Some(SampledStatement {
            correlation_id: c.id.clone(),
            correlation_source: c.source.as_str(),
            pid: self.pid,
            start: self.query_start.unwrap_or(self.first_seen),
            last_seen: self.last_seen,
            running: self.round == round && self.state == "active",
            duration_ms: self.duration_ms(),
            cpu_ms: self.cpu_attributed.then(|| self.cpu_ms()),
            io_bytes: self
                .io_attributed
                .then_some((self.read_bytes, self.write_bytes)),
            n_samples: self.n_seen,
            query: self.query.clone(),
            query_id: self.query_id,
            json: self.to_json(),
        })
    }

    fn correlation_id(&self) -> Option<&str> {
        self.correlation.as_ref().map(|c| c.id.as_str())
    }

    /// What a lock tree shows about this session.
    fn session_json(&self, now: f64) -> Json {
        Json::object()
            .field("state", self.state.as_str())
            .field("datname", self.datname.as_deref())
            .field("usename", self.usename.as_deref())
            .field("application_name", self.application_name.as_deref())
            .field(
                "xact_age_ms",
                self.xact_start.map(|x| ((now - x) * 1000.0).max(0.0)),
            )
            .field("duration_ms", self.duration_ms())
            .field("query", self.query.as_deref())
            .field("query_id", self.query_id)
            .field("correlation_id", self.correlation_id())
    }
}

/// The OS counters of a pid at its latest reading, and the execution it was running then.
#[derive(Debug, Clone, Copy)]
struct PidTrack {
    round: u64,
    start_ticks: u64,
    cpu_ticks: u64,
    io: Option<procfs::PidIo>,
    exec: Option<ExecKey>,
}

/// Rounds a pid's last reading is kept while the pid is not sampled (an idle pooled
/// connection): its next execution is charged from that reading.
const TRACK_MAX_AGE_ROUNDS: u64 = 600;

/// Most pids whose last reading is kept.
const MAX_TRACKS: usize = 4096;

#[derive(Debug, Clone)]
struct LockSnapshot {
    at: f64,
    n_blocked: usize,
    max_depth: u32,
    total_wait_ms: f64,
    trees: Json,
}

#[derive(Debug, Default)]
struct LockAgg {
    n_snapshots: u32,
    peak: Option<LockSnapshot>,
    last: Option<LockSnapshot>,
}

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
    execs: HashMap<ExecKey, Execution>,
    tracks: HashMap<i32, PidTrack>,
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
    last_lock_query: Option<Instant>,
    version_num: Option<u32>,
    query_id_checked: bool,
    n_background_execs: usize,
    current: HashMap<i32, ExecKey>,
    leaders_by_start: HashMap<i64, ExecKey>,
    room_check_at: usize,
    text_buf: String,
    /// The lock waiters of the last sample, when it queried them (for the spike code).
    spike_waiters: Option<Vec<LockWaiter>>,
}

/// One row of the per-second query, decoded (strings borrowed from the driver's row).
#[derive(Debug, Clone, Copy, Default)]
struct SessionRow<'a> {
    pid: i32,
    now: f64,
    query_start: Option<f64>,
    xact_start: Option<f64>,
    state: Option<&'a str>,
    wait_event_type: Option<&'a str>,
    wait_event: Option<&'a str>,
    datname: Option<&'a str>,
    usename: Option<&'a str>,
    application_name: Option<&'a str>,
    client_addr: Option<IpAddr>,
    backend_type: Option<&'a str>,
    query: Option<&'a str>,
    leader_pid: Option<i32>,
    query_id: Option<i64>,
}

impl<'a> SessionRow<'a> {
    /// `None` for a row without pid or server time (never expected; skipped, not fatal).
    fn decode(row: &'a postgres::Row) -> Option<SessionRow<'a>> {
        Some(SessionRow {
            pid: col(row, 0)?,
            now: unix_secs(col(row, 1)?),
            query_start: col::<SystemTime>(row, 2).map(unix_secs),
            xact_start: col::<SystemTime>(row, 3).map(unix_secs),
            state: col(row, 4),
            wait_event_type: col(row, 5),
            wait_event: col(row, 6),
            datname: col(row, 7),
            usename: col(row, 8),
            application_name: col(row, 9),
            client_addr: col(row, 10),
            backend_type: col(row, 11),
            query: col(row, 12),
            leader_pid: col(row, 13),
            query_id: col::<i64>(row, 14).filter(|q| *q != 0),
        })
    }

    /// A server process rather than a client's session: its state is NULL (checkpointer,
    /// background writer, WAL writer, ...) or its type says so (autovacuum, logical replication
    /// workers, extensions' background workers). Never correlated.
    fn is_background(&self) -> bool {
        self.state.is_none()
            || self
                .backend_type
                .is_some_and(|t| t != "client backend" && t != "parallel worker")
    }

    /// For a parallel worker, its leader: `Some(Some(pid))` from `leader_pid` (PostgreSQL 13+),
    /// `Some(None)` when only the backend type says it is a worker (PostgreSQL 12). `None` for
    /// every other session.
    fn worker_leader(&self) -> Option<Option<i32>> {
        if let Some(l) = self.leader_pid.filter(|l| *l != self.pid) {
            return Some(Some(l));
        }
        (self.backend_type == Some("parallel worker")).then_some(None)
    }

    fn key(&self) -> ExecKey {
        (self.pid, micros(self.query_start))
    }
}

fn micros(t: Option<f64>) -> i64 {
    match t {
        None => i64::MIN,
        Some(t) => (t * 1e6) as i64,
    }
}

impl ActivitySampler {
    /// A sampler with `cfg`; reads the real `/proc`.
    pub fn new(cfg: ActivityConfig) -> ActivitySampler {
        ActivitySampler::with_proc(cfg, ProcReader::new())
    }

    /// A sampler reading per-pid figures through `proc` (tests point it elsewhere).
    pub fn with_proc(cfg: ActivityConfig, proc: ProcReader) -> ActivitySampler {
        ActivitySampler {
            cfg,
            proc,
            execs: HashMap::new(),
            tracks: HashMap::new(),
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
            last_lock_query: None,
            version_num: None,
            query_id_checked: false,
            n_background_execs: 0,
            current: HashMap::new(),
            leaders_by_start: HashMap::new(),
            room_check_at: 0,
            text_buf: String::new(),
            spike_waiters: None,
        }
    }

    /// What the last sample saw, as plain values for the load timeline and the spike detector
    /// (`crate::spike`). Call after each successful [`Self::sample`], before
    /// [`Self::finish_interval`]; the lock waiters are handed over once.
    pub fn take_spike_snapshot(&mut self) -> crate::spike::SampleSnapshot {
        let rows = self
            .current
            .iter()
            .filter_map(|(pid, key)| {
                let e = self.execs.get(key)?;
                Some(crate::spike::SampleRow {
                    pid: *pid,
                    exec_start: key.1,
                    state: Some(e.state.clone()).filter(|s| !s.is_empty()),
                    wait_event_type: e.wait_event_type.clone(),
                    query_id: e.query_id,
                    query: e.query.clone(),
                    correlation_id: e.correlation_id().map(str::to_string),
                    usename: e.usename.clone(),
                    datname: e.datname.clone(),
                    client_addr: e.client_addr.clone(),
                    cpu_ticks_total: e.cpu_ticks,
                    cpu_ticks: 0,
                })
            })
            .collect();
        crate::spike::SampleSnapshot {
            at: self.last_sample_at.unwrap_or(0.0),
            rows,
            run_states: self.proc.last_round_states().iter().map(|s| s.1).collect(),
            waiters: self.spike_waiters.take(),
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
        let res = self.sample_inner(client);
        if let Err(e) = &res {
            self.n_failed += 1;
            self.record_error(e);
        }
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
        let (sql, name) = if version >= QUERY_ID_SINCE {
            (SAMPLE_SQL_14, "bitville_sample_14")
        } else if version >= LEADER_PID_SINCE {
            (SAMPLE_SQL_13, "bitville_sample_13")
        } else {
            (SAMPLE_SQL_12, "bitville_sample_12")
        };
        let rows =
            query_prepared(client, name, sql).map_err(CollectError::query(COLLECTOR, "sample"))?;
        let decoded: Vec<SessionRow> = rows.iter().filter_map(SessionRow::decode).collect();
        let (mut stats, now) = self.absorb(&decoded);
        stats.n_rows = rows.len();
        if stats.n_lock_waits > 0 {
            let due = self
                .last_lock_query
                .is_none_or_elapsed(self.cfg.lock_snapshot_min_gap);
            if due {
                self.last_lock_query = Some(Instant::now());
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

    /// Aggregates one sample's rows: the part of [`Self::sample`] after the query, separate so
    /// it can be tested without a server. Returns the sample's figures and its server time.
    fn absorb(&mut self, rows: &[SessionRow]) -> (SampleStats, f64) {
        self.round += 1;
        self.n_samples += 1;
        self.current.clear();
        self.leaders_by_start.clear();
        let mut stats = SampleStats {
            n_rows: rows.len(),
            n_background: rows.iter().filter(|r| r.is_background()).count(),
            ..SampleStats::default()
        };
        // Leaders first, so that a parallel worker's CPU can be charged to its leader's
        // execution in the second pass.
        for row in rows.iter().filter(|r| r.worker_leader().is_none()) {
            self.absorb_row(row, &mut stats);
        }
        for row in rows {
            if let Some(leader) = row.worker_leader() {
                if !self.fold_worker(row, leader) {
                    self.absorb_row(row, &mut stats);
                }
            }
        }
        // An empty sample carries no server time; the agent runs on the same host.
        let now = rows.first().map_or_else(unix_now, |r| r.now);
        if self.cfg.read_procfs {
            self.read_ended(now);
        }
        self.proc.end_round();
        self.interval_start.get_or_insert(now);
        self.last_sample_at = Some(now);
        (stats, now)
    }

    /// Adds one session row to its execution.
    fn absorb_row(&mut self, row: &SessionRow, stats: &mut SampleStats) {
        let key = row.key();
        if row.wait_event_type == Some("Lock") {
            stats.n_lock_waits += 1;
        }
        if !self.execs.contains_key(&key) {
            // Background processes are few (one per server process) and never dropped.
            if row.is_background() {
                self.n_background_execs += 1;
            } else {
                self.make_room();
            }
            let exec = self.new_execution(row);
            self.execs.insert(key, exec);
        }
        self.current.insert(row.pid, key);
        if key.1 != i64::MIN && row.worker_leader().is_none() {
            self.leaders_by_start.insert(key.1, key);
        }
        let round = self.round;
        let Some(exec) = self.execs.get_mut(&key) else {
            return;
        };
        exec.last_seen = row.now;
        exec.n_seen += 1;
        if exec.query_id.is_none() {
            exec.query_id = row.query_id;
        }
        exec.round = round;
        let state = row.state.unwrap_or("");
        if exec.state != state {
            exec.state.clear();
            exec.state.push_str(state);
        }
        set_opt(&mut exec.wait_event_type, row.wait_event_type);
        set_opt(&mut exec.wait_event, row.wait_event);
        if let (Some(t), Some(e)) = (row.wait_event_type, row.wait_event) {
            match exec.waits.iter_mut().find(|w| w.kind == t && w.event == e) {
                Some(w) => w.count += 1,
                None => exec.waits.push(WaitSeen {
                    kind: t.to_string(),
                    event: e.to_string(),
                    count: 1,
                }),
            }
        }
        if self.cfg.read_procfs {
            self.read_pid(row.pid, key);
        }
    }

    /// Charges a parallel worker's CPU and I/O to its leader's execution. False when the leader
    /// was not in this sample (the worker is then reported on its own).
    fn fold_worker(&mut self, row: &SessionRow, leader: Option<i32>) -> bool {
        // Without leader_pid (PostgreSQL 12), a worker shares its leader's query_start.
        let key = match leader {
            Some(l) => self.current.get(&l).copied(),
            None => self.leaders_by_start.get(&micros(row.query_start)).copied(),
        };
        let Some(key) = key else {
            return false;
        };
        let Some(exec) = self.execs.get_mut(&key) else {
            return false;
        };
        exec.n_worker_samples += 1;
        if self.cfg.read_procfs {
            self.read_pid(row.pid, key);
        }
        true
    }

    /// Reads `/proc/<pid>` while it runs the execution `key` and charges what it spent since
    /// its previous reading: to the execution it ran then when that one has ended (its tail),
    /// else to `key`.
    fn read_pid(&mut self, pid: i32, key: ExecKey) {
        let Some(s) = self.proc.sample(pid) else {
            self.tracks.remove(&pid);
            return;
        };
        if let Some(exec) = self.execs.get_mut(&key) {
            exec.os_seen = true;
            exec.rss_bytes = s.stat.rss_pages.saturating_mul(procfs::page_size());
            if s.io.is_some() {
                exec.io_seen = true;
            }
        }
        let prev = self.tracks.get(&pid).copied();
        self.charge(prev, &s, Some(key));
        self.tracks.insert(
            pid,
            PidTrack {
                round: self.round,
                start_ticks: s.stat.start_ticks,
                cpu_ticks: s.stat.cpu_ticks,
                io: s.io,
                exec: Some(key),
            },
        );
    }

    /// The first reading after an execution ended: every pid read in the previous round while
    /// running an execution and not read in this one is read once more, so the CPU and I/O of
    /// the execution's last second (all of it for a query seen once) are charged to it.
    fn read_ended(&mut self, now: f64) {
        let round = self.round;
        let ended: Vec<i32> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.round + 1 == round && t.exec.is_some())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ended {
            let prev = self.tracks.get(&pid).copied();
            match self.proc.sample(pid) {
                Some(s) => {
                    self.charge(prev, &s, None);
                    self.tracks.insert(
                        pid,
                        PidTrack {
                            round,
                            start_ticks: s.stat.start_ticks,
                            cpu_ticks: s.stat.cpu_ticks,
                            io: s.io,
                            exec: None,
                        },
                    );
                }
                None => {
                    self.tracks.remove(&pid);
                }
            }
        }
        if self.tracks.len() > MAX_TRACKS {
            let mut rounds: Vec<u64> = self.tracks.values().map(|t| t.round).collect();
            rounds.sort_unstable();
            let keep_from = rounds[rounds.len() - MAX_TRACKS];
            self.tracks.retain(|_, t| t.round >= keep_from);
        }
        let oldest = round.saturating_sub(TRACK_MAX_AGE_ROUNDS);
        self.tracks.retain(|_, t| t.round >= oldest);
        self.last_reading_at = Some(now);
    }

    /// Charges the CPU and I/O `pid` spent between `prev` and `s`. The delta goes to the
    /// execution running at `prev` when that one has ended (or nothing runs now), else to
    /// `running`. Without a previous reading of this process, a process that started after the
    /// previous sample is charged everything since its start; an older one only from now on
    /// (its execution is marked `cpu_partial`).
    fn charge(&mut self, prev: Option<PidTrack>, s: &procfs::PidSample, running: Option<ExecKey>) {
        let same_process = prev.filter(|p| p.start_ticks == s.stat.start_ticks);
        let (target, base_cpu, base_io) = match same_process {
            Some(p) => {
                let ended = p.exec.filter(|k| Some(*k) != running);
                let target = match ended {
                    Some(k) if self.execs.contains_key(&k) => Some(k),
                    // The execution it ran was already shipped or dropped: the delta belongs to
                    // neither.
                    Some(_) => None,
                    None => running,
                };
                (target, p.cpu_ticks, p.io)
            }
            None => {
                let started = self.proc.process_start(&s.stat);
                let fresh = match (started, self.last_reading_at) {
                    // btime is whole seconds: a second of slack.
                    (Some(st), Some(prev_sample)) => st + 1.0 >= prev_sample,
                    _ => false,
                };
                if !fresh {
                    if let Some(e) = running.and_then(|k| self.execs.get_mut(&k)) {
                        e.cpu_partial = true;
                    }
                    return;
                }
                let zero = procfs::PidIo {
                    read_bytes: 0,
                    write_bytes: 0,
                };
                (running, 0, Some(zero))
            }
        };
        let Some(exec) = target.and_then(|k| self.execs.get_mut(&k)) else {
            return;
        };
        exec.cpu_ticks += s.stat.cpu_ticks.saturating_sub(base_cpu);
        exec.cpu_attributed = true;
        if let (Some(p), Some(c)) = (base_io, s.io) {
            exec.read_bytes += c.read_bytes.saturating_sub(p.read_bytes);
            exec.write_bytes += c.write_bytes.saturating_sub(p.write_bytes);
            exec.io_seen = true;
            exec.io_attributed = true;
        }
    }

    fn new_execution(&mut self, row: &SessionRow) -> Execution {
        // Found in the raw text, before normalization and truncation can cut the marker.
        let correlation = if row.is_background() {
            None
        } else {
            let texts: &[&str] = match row.query {
                Some(q) => &[q],
                None => &[],
            };
            self.cfg.correlation.find(row.application_name, texts)
        };
        let query = row.query.and_then(|q| {
            self.cfg
                .query_text
                .render_into(q, &mut self.text_buf)
                .then(|| self.text_buf.clone())
        });
        Execution {
            pid: row.pid,
            query_start: row.query_start,
            xact_start: row.xact_start,
            first_seen: row.now,
            last_seen: row.now,
            n_seen: 0,
            state: String::new(),
            wait_event_type: None,
            wait_event: None,
            waits: Vec::new(),
            datname: row.datname.map(str::to_string),
            usename: row.usename.map(str::to_string),
            application_name: row.application_name.map(str::to_string),
            client_addr: row.client_addr.map(|a| a.to_string()),
            backend_type: row.backend_type.map(str::to_string),
            query,
            correlation,
            query_id: row.query_id,
            background: row.is_background(),
            cpu_ticks: 0,
            read_bytes: 0,
            write_bytes: 0,
            os_seen: false,
            cpu_attributed: false,
            cpu_partial: false,
            io_seen: false,
            io_attributed: false,
            rss_bytes: 0,
            lock: None,
            blocking: None,
            n_worker_samples: 0,
            round: 0,
        }
    }

    /// Keeps memory bounded: when full, drops the least interesting executions that are not
    /// running any more, down to `max_executions`.
    fn make_room(&mut self) {
        let cap = (self.cfg.max_executions.max(1) * 2).max(self.room_check_at);
        let n_client = self.execs.len().saturating_sub(self.n_background_execs);
        if n_client < cap {
            return;
        }
        let round = self.round;
        let mut finished: Vec<(f64, ExecKey)> = self
            .execs
            .iter()
            .filter(|(_, e)| e.round != round && !e.background)
            .map(|(k, e)| (e.score(), *k))
            .collect();
        finished.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = n_client + 1 - self.cfg.max_executions.max(1);
        for (_, k) in finished.into_iter().take(excess) {
            self.execs.remove(&k);
            self.n_left_out += 1;
        }
        // When most executions are still running nothing could go: the map may exceed the cap
        // (it is bounded by max_connections then), and the next scan waits for a quarter more,
        // so a server with hundreds of active sessions does not rescan on every new row.
        self.room_check_at = self.execs.len().saturating_sub(self.n_background_execs)
            + self.cfg.max_executions.max(4) / 2;
    }

    fn lock_snapshot(
        &mut self,
        client: &mut postgres::Client,
        version: u32,
        now: f64,
    ) -> Result<(), CollectError> {
        let mut waiters = locks::query_waiters(client, version)?;
        if waiters.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.relation_names.resolve(client, &mut waiters) {
            // The OIDs stay; the tree is still worth shipping.
            log::debug!("{e}");
            self.record_error(&e);
        }
        self.note_lock_waits(&waiters, now);
        self.spike_waiters = Some(waiters.clone());
        let trees = locks::build_trees(&waiters);
        let total_wait_ms = self.note_blocking(&trees, &waiters, now);
        let (execs, current) = (&self.execs, &self.current);
        let json = locks::trees_json(&trees, &waiters, |pid| {
            execs.get(current.get(&pid)?).map(|e| e.session_json(now))
        });
        let snap = LockSnapshot {
            at: now,
            n_blocked: waiters.len(),
            max_depth: trees.iter().map(|t| t.depth).max().unwrap_or(0),
            total_wait_ms,
            trees: json,
        };
        self.locks.n_snapshots += 1;
        if self.locks.peak.as_ref().is_none_or_smaller(&snap) {
            self.locks.peak = Some(snap.clone());
        }
        self.locks.last = Some(snap);
        Ok(())
    }

    /// How long `w` has waited: `pg_locks.waitstart` (PostgreSQL 14+), else its statement's
    /// age (the wait began at or after the statement's start).
    fn wait_of(&self, w: &LockWaiter, now: f64) -> f64 {
        w.wait_ms.unwrap_or_else(|| {
            self.current
                .get(&w.pid)
                .and_then(|k| self.execs.get(k))
                .and_then(|e| e.query_start)
                .map_or(0.0, |qs| ((now - qs) * 1000.0).max(0.0))
        })
    }

    /// Charges every waiter to each session above it in its tree (its direct blocker, and that
    /// one's blockers up to the root): a root that held up a chain of two blocked two sessions.
    /// Returns the snapshot's total wait.
    fn note_blocking(
        &mut self,
        trees: &[locks::LockTree],
        waiters: &[LockWaiter],
        now: f64,
    ) -> f64 {
        let waits: HashMap<i32, f64> = waiters
            .iter()
            .map(|w| (w.pid, self.wait_of(w, now)))
            .collect();
        for t in trees {
            let parent: HashMap<i32, i32> = t
                .nodes
                .iter()
                .filter_map(|n| Some((n.pid, n.parent?)))
                .collect();
            for n in t.nodes.iter().filter(|n| n.parent.is_some()) {
                let wait = waits.get(&n.pid).copied().unwrap_or(0.0);
                let id = self
                    .current
                    .get(&n.pid)
                    .and_then(|k| self.execs.get(k))
                    .and_then(|e| e.correlation_id().map(str::to_string));
                let mut up = parent.get(&n.pid).copied();
                let mut hops = 0;
                while let Some(b) = up {
                    // A cycle returns to the waiter; the tree is finite anyway.
                    if b == n.pid || hops > t.nodes.len() {
                        break;
                    }
                    if let Some(e) = self.current.get(&b).and_then(|k| self.execs.get_mut(k)) {
                        e.blocking.get_or_insert_with(BlockingSeen::default).note(
                            n.pid,
                            id.as_deref(),
                            wait,
                        );
                    }
                    up = parent.get(&b).copied();
                    hops += 1;
                }
            }
        }
        waits.values().sum()
    }

    fn note_lock_waits(&mut self, waiters: &[LockWaiter], now: f64) {
        for w in waiters {
            let details: Vec<Json> = w
                .blockers
                .iter()
                .map(
                    |&b| match self.current.get(&b).and_then(|k| self.execs.get(k)) {
                        Some(e) => Json::object()
                            .field("pid", b)
                            .field("correlation_id", e.correlation_id())
                            .field("query", e.query.as_deref())
                            .field("query_id", e.query_id)
                            .field("state", e.state.as_str())
                            .field(
                                "xact_age_ms",
                                e.xact_start.map(|x| ((now - x) * 1000.0).max(0.0)),
                            ),
                        // Not sampled: idle with a session-level lock, or a prepared transaction.
                        None => Json::object().field("pid", b),
                    },
                )
                .collect();
            let Some(key) = self.current.get(&w.pid) else {
                continue;
            };
            let Some(e) = self.execs.get_mut(key) else {
                continue;
            };
            let seen = e.lock.get_or_insert_with(|| LockSeen {
                locktype: w.locktype.clone(),
                mode: w.mode.clone(),
                relation: w.relation.clone(),
                blockers: Vec::new(),
                blocker_details: Vec::new(),
                max_wait_ms: None,
                n_snapshots: 0,
            });
            seen.n_snapshots += 1;
            seen.blockers.clone_from(&w.blockers);
            seen.blocker_details = details;
            if seen.relation.is_none() {
                seen.relation.clone_from(&w.relation);
            }
            if let Some(ms) = w.wait_ms {
                seen.max_wait_ms = Some(seen.max_wait_ms.map_or(ms, |m| m.max(ms)));
            }
        }
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
        let collected_at = unix_now();
        let round = self.round;
        let (background, execs): (Vec<Execution>, Vec<Execution>) = self
            .execs
            .drain()
            .map(|(_, e)| e)
            .partition(|e| e.background);
        let n_seen = execs.len() as u64 + self.n_left_out;
        let selected = select(execs, self.cfg.max_executions);
        let n_left_out = n_seen - selected.len() as u64;
        let mut background = background;
        // The busiest first: CPU, then how often they waited.
        background.sort_by(|a, b| {
            b.cpu_ticks
                .cmp(&a.cpu_ticks)
                .then(b.waits.len().cmp(&a.waits.len()))
                .then(a.pid.cmp(&b.pid))
        });
        background.truncate(MAX_BACKGROUND);

        let with_correlation = selected.iter().filter(|e| e.correlation.is_some()).count();
        let start = self.interval_start;
        let end = self.last_sample_at;
        let locks = match (&self.locks.peak, &self.locks.last) {
            (Some(peak), Some(last)) => Json::object()
                .field("n_snapshots", self.locks.n_snapshots)
                .field("max_blocked", peak.n_blocked)
                .field("max_depth", peak.max_depth)
                .field("peak", snapshot_json(peak))
                // The latest snapshot only when it differs from the peak, to keep payloads small.
                .field(
                    "last",
                    if last.at == peak.at {
                        Json::Null
                    } else {
                        snapshot_json(last)
                    },
                ),
            _ => Json::object()
                .field("n_snapshots", 0u32)
                .field("max_blocked", 0u32)
                .field("max_depth", 0u32)
                .field("peak", Json::Null)
                .field("last", Json::Null),
        };
        let summary = Json::object()
            .field("interval_start", start)
            .field("interval_end", end)
            .field(
                "interval_s",
                match (start, end) {
                    (Some(s), Some(e)) => Some(e - s),
                    _ => None,
                },
            )
            .field("n_samples", self.n_samples)
            .field("n_failed_samples", self.n_failed)
            .field("count", selected.len())
            .field("n_executions_seen", n_seen)
            .field("n_left_out", n_left_out)
            .field("with_correlation", with_correlation)
            .field("query_text", self.cfg.query_text.mode.as_str())
            .field(
                "procfs",
                Json::object()
                    .field("enabled", self.cfg.read_procfs)
                    .field("io_permitted", !self.proc.io_refused()),
            )
            .field(
                "sessions",
                Json::Array(selected.iter().map(Execution::to_json).collect()),
            )
            .field(
                "background",
                Json::Array(background.iter().map(Execution::to_json).collect()),
            )
            .field("locks", locks)
            .field("errors", Json::Array(std::mem::take(&mut self.errors)));
        let summary = Payload {
            source: Source::PgStatActivity,
            collected_at,
            correlation_id: None,
            data: summary,
        };
        let statements = selected
            .iter()
            .filter_map(|e| e.sampled_statement(round))
            .collect();

        self.interval_start = None;
        self.last_sample_at = None;
        self.n_samples = 0;
        self.n_failed = 0;
        self.n_left_out = 0;
        self.locks = LockAgg::default();
        self.room_check_at = 0;
        self.n_background_execs = 0;
        // The server may have been upgraded and restarted meanwhile.
        self.version_num = None;
        (summary, statements)
    }
}

fn set_opt(slot: &mut Option<String>, v: Option<&str>) {
    match (slot.as_mut(), v) {
        (Some(s), Some(v)) if s == v => {}
        (Some(s), Some(v)) => {
            s.clear();
            s.push_str(v);
        }
        (None, Some(v)) => *slot = Some(v.to_string()),
        (_, None) => *slot = None,
    }
}

fn snapshot_json(s: &LockSnapshot) -> Json {
    Json::object()
        .field("at", s.at)
        .field("n_blocked", s.n_blocked)
        .field("total_wait_ms", s.total_wait_ms)
        .field("max_depth", s.max_depth)
        .field("trees", s.trees.clone())
}

/// Picks what a summary lists: half the slots to the longest-running executions, the rest to
/// the most CPU-hungry, then longest again. Returned longest first.
fn select(mut execs: Vec<Execution>, cap: usize) -> Vec<Execution> {
    execs.sort_by(|a, b| b.duration_ms().total_cmp(&a.duration_ms()));
    if execs.len() <= cap {
        return execs;
    }
    let by_duration = cap.div_ceil(2);
    let mut rest = execs.split_off(by_duration);
    rest.sort_by_key(|e| std::cmp::Reverse(e.cpu_ticks));
    rest.truncate(cap - by_duration);
    execs.append(&mut rest);
    execs.sort_by(|a, b| b.duration_ms().total_cmp(&a.duration_ms()));
    execs
}

fn as_f64(v: &Json) -> Option<f64> {
    match v {
        Json::Float(f) => Some(*f),
        Json::Int(i) => Some(*i as f64),
        Json::UInt(u) => Some(*u as f64),
        _ => None,
    }
}

trait InstantExt {
    fn is_none_or_elapsed(&self, gap: Duration) -> bool;
}

impl InstantExt for Option<Instant> {
    fn is_none_or_elapsed(&self, gap: Duration) -> bool {
        match self {
            None => true,
            Some(at) => at.elapsed() >= gap,
        }
    }
}

trait PeakExt {
    fn is_none_or_smaller(&self, snap: &LockSnapshot) -> bool;
}

impl PeakExt for Option<&LockSnapshot> {
    /// The peak is the snapshot with the largest total wait (then the most waiters, then the
    /// deepest): one 8 s wait matters more than two 1 s waits.
    fn is_none_or_smaller(&self, snap: &LockSnapshot) -> bool {
        match self {
            None => true,
            Some(p) => snap
                .total_wait_ms
                .total_cmp(&p.total_wait_ms)
                .then(snap.n_blocked.cmp(&p.n_blocked))
                .then(snap.max_depth.cmp(&p.max_depth))
                .is_gt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(pid: i32, duration_s: f64, cpu_ticks: u64) -> Execution {
        Execution {
            pid,
            query_start: Some(1000.0),
            xact_start: Some(999.0),
            first_seen: 1000.5,
            last_seen: 1000.0 + duration_s,
            n_seen: 2,
            state: "active".into(),
            wait_event_type: None,
            wait_event: None,
            waits: vec![],
            datname: Some("app".into()),
            usename: Some("u".into()),
            application_name: None,
            client_addr: None,
            backend_type: Some("client backend".into()),
            query: Some("SELECT ?".into()),
            correlation: None,
            query_id: None,
            background: false,
            cpu_ticks,
            read_bytes: 0,
            write_bytes: 0,
            os_seen: true,
            cpu_attributed: true,
            cpu_partial: false,
            io_seen: false,
            io_attributed: false,
            rss_bytes: 0,
            lock: None,
            blocking: None,
            n_worker_samples: 0,
            round: 0,
        }
    }

    const UUID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const UUID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

    /// A directory laid out like /proc, removed on drop.
    struct FakeProc(std::path::PathBuf);

    impl FakeProc {
        fn new(tag: &str) -> FakeProc {
            let dir = std::env::temp_dir().join(format!("bv-act-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeProc(dir)
        }

        /// A postgres backend with `cpu` ticks of utime, started at `start`.
        fn set(&self, pid: i32, cpu: u64, start: u64, io: Option<(u64, u64)>) {
            let d = self.0.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} (postgres) S 1 1 1 0 -1 0 0 0 0 0 {cpu} 0 0 0 20 0 1 0 {start} 1000 256 0\n"
                ),
            )
            .unwrap();
            if let Some((r, w)) = io {
                std::fs::write(d.join("io"), format!("read_bytes: {r}\nwrite_bytes: {w}\n"))
                    .unwrap();
            }
        }

        fn sampler(&self, cfg: ActivityConfig) -> ActivitySampler {
            ActivitySampler::with_proc(cfg, ProcReader::with_root(&self.0))
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn row(pid: i32, now: f64, query_start: f64) -> SessionRow<'static> {
        SessionRow {
            pid,
            now,
            query_start: Some(query_start),
            xact_start: Some(query_start),
            state: Some("active"),
            datname: Some("app"),
            usename: Some("u"),
            application_name: Some("bitville-aaaaaaaa-0000-4000-8000-000000000001"),
            backend_type: Some("client backend"),
            query: Some("SELECT * FROM t WHERE id = 42"),
            ..SessionRow::default()
        }
    }

    fn sessions(payloads: &[Payload]) -> &[Json] {
        match payloads[0].data.get("sessions") {
            Some(Json::Array(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn field_f64(v: &Json, key: &str) -> f64 {
        match v.get(key) {
            Some(Json::UInt(u)) => *u as f64,
            Some(Json::Int(i)) => *i as f64,
            Some(Json::Float(f)) => *f,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn cpu_and_io_are_charged_between_consecutive_samples_only() {
        let p = FakeProc::new("cpu");
        let mut s = p.sampler(ActivityConfig::default());
        p.set(100, 100, 5, Some((0, 0)));
        s.absorb(&[row(100, 1000.0, 999.0)]);
        p.set(100, 150, 5, Some((4096, 8192)));
        s.absorb(&[row(100, 1001.0, 999.0)]);
        // The query ends: the first sample after it reads the pid once more and charges the
        // query's tail to it.
        p.set(100, 170, 5, Some((5000, 8192)));
        s.absorb(&[]);
        // Idle meanwhile: the next query is charged from the pid's last reading.
        p.set(100, 300, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1003.0, 1002.5)]);
        p.set(100, 320, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1004.0, 1002.5)]);
        // The pid is reused by a new backend (another start time, more ticks than the old one
        // had): no delta across it, and its start is unknown here, so what follows is partial.
        p.set(100, 1000, 6, Some((0, 0)));
        s.absorb(&[row(100, 1005.0, 1002.5)]);
        let out = s.finish_interval();
        let by_start = |qs: f64| {
            sessions(&out)
                .iter()
                .find(|e| e.get("query_start") == Some(&Json::Float(qs)))
                .unwrap()
        };
        let first = by_start(999.0);
        assert_eq!(field_f64(first, "cpu_ms"), procfs::ticks_to_ms(70) as f64);
        assert_eq!(field_f64(first, "read_bytes"), 5000.0);
        assert_eq!(field_f64(first, "write_bytes"), 8192.0);
        assert_eq!(field_f64(first, "n_samples"), 2.0);
        assert_eq!(field_f64(first, "duration_ms"), 2000.0);
        assert_eq!(
            first.get("cpu_partial"),
            Some(&Json::Bool(true)),
            "no reading before it"
        );
        let second = by_start(1002.5);
        assert_eq!(
            field_f64(second, "cpu_ms"),
            procfs::ticks_to_ms(130 + 20) as f64
        );
        assert_eq!(second.get("cpu_partial"), Some(&Json::Bool(true)));
        assert_eq!(field_f64(second, "n_samples"), 3.0);
        assert_eq!(
            first.get("query"),
            Some(&Json::Str("SELECT * FROM t WHERE id = ?".into()))
        );
        assert_eq!(field_f64(&out[0].data, "n_samples"), 6.0);
    }

    #[test]
    fn a_query_seen_once_on_a_new_backend_is_charged_all_its_cpu() {
        let p = FakeProc::new("once");
        // Booted at 900 s: a start of 10_000 ticks is 1000 s (at 100 ticks a second).
        std::fs::write(p.0.join("stat"), "cpu 1 2 3\nbtime 900\n").unwrap();
        let tck = procfs::clock_ticks_per_sec();
        let mut s = p.sampler(ActivityConfig::default());
        p.set(50, 0, 1, None);
        s.absorb(&[row(50, 999.0, 998.0)]);
        // The backend connected after that sample and is seen once, mid-query.
        p.set(300, 80, 100 * tck, None);
        s.absorb(&[row(50, 1001.0, 998.0), row(300, 1001.0, 1000.5)]);
        p.set(300, 150, 100 * tck, None);
        s.absorb(&[row(50, 1002.0, 998.0)]);
        let out = s.finish_interval();
        let once = sessions(&out)
            .iter()
            .find(|e| field_f64(e, "pid") == 300.0)
            .unwrap();
        assert_eq!(field_f64(once, "cpu_ms"), procfs::ticks_to_ms(150) as f64);
        assert_eq!(once.get("cpu_partial"), Some(&Json::Bool(false)));
        assert_eq!(field_f64(once, "n_samples"), 1.0);
    }

    #[test]
    fn without_proc_figures_cpu_is_null_not_zero() {
        let p = FakeProc::new("noproc");
        let mut s = p.sampler(ActivityConfig::default());
        s.absorb(&[row(7, 1000.0, 999.0)]);
        s.absorb(&[row(7, 1001.0, 999.0)]);
        let out = s.finish_interval();
        assert_eq!(sessions(&out)[0].get("cpu_ms"), Some(&Json::Null));
        assert_eq!(sessions(&out)[0].get("read_bytes"), Some(&Json::Null));
    }

    #[test]
    fn parallel_workers_are_folded_by_leader_pid_or_query_start() {
        let p = FakeProc::new("par");
        let mut s = p.sampler(ActivityConfig::default());
        let leader = row(200, 1000.0, 999.0);
        let pg13_worker = SessionRow {
            pid: 201,
            leader_pid: Some(200),
            backend_type: Some("parallel worker"),
            ..row(201, 1000.0, 999.1)
        };
        let pg12_worker = SessionRow {
            pid: 202,
            backend_type: Some("parallel worker"),
            ..row(202, 1000.0, 999.0)
        };
        for (pid, cpu) in [(200, 10), (201, 10), (202, 10)] {
            p.set(pid, cpu, 1, None);
        }
        s.absorb(&[pg13_worker, pg12_worker, leader]);
        for (pid, cpu) in [(200, 20), (201, 30), (202, 40)] {
            p.set(pid, cpu, 1, None);
        }
        s.absorb(&[
            SessionRow {
                now: 1001.0,
                ..pg13_worker
            },
            SessionRow {
                now: 1001.0,
                ..pg12_worker
            },
            SessionRow {
                now: 1001.0,
                ..leader
            },
        ]);
        let out = s.finish_interval();
        let all = sessions(&out);
        assert_eq!(all.len(), 1, "workers are not executions of their own");
        assert_eq!(field_f64(&all[0], "parallel_worker_samples"), 4.0);
        assert_eq!(
            field_f64(&all[0], "cpu_ms"),
            procfs::ticks_to_ms(10 + 20 + 30) as f64
        );
    }

    #[test]
    fn waits_are_counted_and_the_last_state_wins() {
        let p = FakeProc::new("waits");
        let mut s = p.sampler(ActivityConfig {
            read_procfs: false,
            ..ActivityConfig::default()
        });
        let io = SessionRow {
            wait_event_type: Some("IO"),
            wait_event: Some("DataFileRead"),
            ..row(9, 1000.0, 999.0)
        };
        let stats = s.absorb(&[io]).0;
        assert_eq!(stats.n_lock_waits, 0);
        s.absorb(&[SessionRow { now: 1001.0, ..io }]);
        let lock = SessionRow {
            now: 1002.0,
            wait_event_type: Some("Lock"),
            wait_event: Some("relation"),
            state: Some("active"),
            ..io
        };
        assert_eq!(s.absorb(&[lock]).0.n_lock_waits, 1);
        s.absorb(&[SessionRow {
            now: 1003.0,
            state: Some("idle in transaction"),
            wait_event_type: None,
            wait_event: None,
            ..io
        }]);
        let out = s.finish_interval();
        let e = &sessions(&out)[0];
        assert_eq!(
            e.get("state"),
            Some(&Json::Str("idle in transaction".into()))
        );
        assert_eq!(e.get("wait_event"), Some(&Json::Null));
        let waits = e.get("wait_events").unwrap().to_json_string();
        assert_eq!(
            waits,
            r#"[{"wait_event_type":"IO","wait_event":"DataFileRead","count":2},{"wait_event_type":"Lock","wait_event":"relation","count":1}]"#
        );
    }

    #[test]
    fn correlated_payloads_are_capped_longest_first() {
        let p = FakeProc::new("corr");
        let mut s = p.sampler(ActivityConfig {
            max_correlated: 1,
            read_procfs: false,
            ..ActivityConfig::default()
        });
        let app_b = "bitville-bbbbbbbb-0000-4000-8000-000000000002";
        s.absorb(&[
            row(1, 1000.0, 999.0),
            SessionRow {
                application_name: Some(app_b),
                ..row(2, 1000.0, 990.0)
            },
            SessionRow {
                application_name: Some("plain"),
                ..row(3, 1000.0, 900.0)
            },
        ]);
        let out = s.finish_interval();
        assert_eq!(out.len(), 2, "summary + one correlated payload");
        assert_eq!(
            out[1].correlation_id.as_deref(),
            Some(UUID_B),
            "the longest wins"
        );
        assert_eq!(field_f64(&out[1].data, "duration_ms"), 10_000.0);
        assert_eq!(field_f64(&out[0].data, "with_correlation"), 2.0);
        assert!(
            out[0].data.to_json_string().contains(UUID_A),
            "the rest stays in the summary"
        );
        // The next interval starts empty.
        let next = s.finish_interval();
        assert_eq!(next.len(), 1);
        assert_eq!(field_f64(&next[0].data, "count"), 0.0);
    }

    #[test]
    fn memory_is_bounded_and_running_executions_are_kept() {
        let p = FakeProc::new("cap");
        let mut s = p.sampler(ActivityConfig {
            max_executions: 2,
            read_procfs: false,
            ..ActivityConfig::default()
        });
        // pid 1 runs the whole time; pids 10.. each run one short query.
        for i in 0..10 {
            let t = 1000.0 + i as f64;
            s.absorb(&[row(1, t, 999.0), row(10 + i, t, t - 0.5)]);
            assert!(s.n_executions() <= 4, "round {i}: {}", s.n_executions());
        }
        let out = s.finish_interval();
        let data = &out[0].data;
        assert_eq!(field_f64(data, "n_executions_seen"), 11.0);
        assert_eq!(field_f64(data, "count"), 2.0);
        assert_eq!(field_f64(data, "n_left_out"), 9.0);
        assert_eq!(
            field_f64(&sessions(&out)[0], "pid"),
            1.0,
            "the long runner is kept"
        );
    }

    #[test]
    fn selection_keeps_longest_and_most_cpu_hungry() {
        let execs = vec![
            exec(1, 50.0, 0),
            exec(2, 40.0, 0),
            exec(3, 1.0, 900),
            exec(4, 2.0, 10),
            exec(5, 3.0, 0),
        ];
        let picked: Vec<i32> = select(execs, 3).iter().map(|e| e.pid).collect();
        assert_eq!(picked, vec![1, 2, 3]);
    }

    #[test]
    fn execution_json_has_python_names_and_os_figures() {
        let mut e = exec(7, 3.0, 300);
        e.correlation = Some(Correlation {
            id: "abc".into(),
            source: crate::normalize::CorrelationSource::Comment,
        });
        let j = e.to_json();
        assert_eq!(j.get("duration_ms"), Some(&Json::Float(3000.0)));
        assert_eq!(j.get("cpu_ms"), Some(&Json::UInt(procfs::ticks_to_ms(300))));
        assert_eq!(j.get("read_bytes"), Some(&Json::Null), "io not permitted");
        for k in [
            "usename",
            "client_addr",
            "backend_type",
            "query",
            "correlation_id",
            "state",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn query_id_status_follows_the_settings() {
        assert_eq!(query_id_from_settings("on", ""), QueryIdStatus::On);
        assert_eq!(
            query_id_from_settings("auto", "auto_explain, \"pg_stat_statements\""),
            QueryIdStatus::On
        );
        let off = query_id_from_settings("auto", "auto_explain");
        assert!(off.problem().unwrap().contains("compute_query_id is auto"));
        assert!(query_id_from_settings("off", "pg_stat_statements")
            .problem()
            .unwrap()
            .contains("set compute_query_id = on"));
        assert!(QueryIdStatus::Unsupported { version: 130004 }
            .problem()
            .unwrap()
            .contains("PostgreSQL 13"));
        assert_eq!(QueryIdStatus::On.problem(), None);
    }

    #[test]
    fn the_peak_is_the_snapshot_with_the_largest_total_wait() {
        let snap = |n_blocked, total_wait_ms| LockSnapshot {
            at: 0.0,
            n_blocked,
            max_depth: 1,
            total_wait_ms,
            trees: Json::Null,
        };
        let two_short = snap(2, 2000.0);
        let one_long = snap(1, 8000.0);
        assert!(Some(&two_short).is_none_or_smaller(&one_long));
        assert!(!Some(&one_long).is_none_or_smaller(&two_short));
        assert!(
            Some(&snap(1, 2000.0)).is_none_or_smaller(&two_short),
            "then waiters"
        );
        assert!(None.is_none_or_smaller(&two_short));
    }

    #[test]
    fn blocking_keeps_each_waiter_once_with_its_longest_wait() {
        let mut b = BlockingSeen::default();
        b.note(20, Some("r2"), 100.0);
        b.note(30, None, 50.0);
        b.note(20, Some("r2"), 900.0);
        let j = b.to_json();
        assert_eq!(j.get("n_blocked"), Some(&Json::UInt(2)));
        assert_eq!(j.get("total_wait_ms"), Some(&Json::Float(950.0)));
        assert_eq!(j.get("max_wait_ms"), Some(&Json::Float(900.0)));
        assert_eq!(
            j.get("correlation_ids"),
            Some(&Json::Array(vec![Json::from("r2")]))
        );
    }

    #[test]
    fn set_opt_reuses_and_clears() {
        let mut s = None;
        set_opt(&mut s, Some("Lock"));
        set_opt(&mut s, Some("IO"));
        assert_eq!(s.as_deref(), Some("IO"));
        set_opt(&mut s, None);
        assert_eq!(s, None);
    }
}
