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

use super::locks::{self, LockWaiter};
use super::procfs::{self, ProcReader};
use super::{col, unix_secs, CollectError};
use crate::json::Json;
use crate::normalize::{CorrelationPattern, QueryText};
use crate::payload::{unix_now, Payload, Source};
use crate::pool::PooledClient;

const COLLECTOR: &str = "activity";

/// The per-second query. Rows: one per non-idle session that is not the agent. Column 13 is
/// `leader_pid` (PostgreSQL 13+; NULL before), so parallel workers fold into their leader.
const SAMPLE_SQL_13: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, leader_pid FROM pg_stat_activity \
     WHERE state <> 'idle' AND pid <> (SELECT pg_backend_pid()) \
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
     query, NULL::int FROM pg_stat_activity \
     WHERE state <> 'idle' AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// `pg_stat_activity.leader_pid` exists from PostgreSQL 13.
const LEADER_PID_SINCE: u32 = 130000;

/// Most errors kept per interval for the summary (the count is always exact).
const MAX_ERRORS_KEPT: usize = 5;

/// Most executions listed inside one correlated payload.
const MAX_EXECUTIONS_PER_CORRELATION: usize = 20;

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
            correlation: CorrelationPattern {
                prefix: c.correlation_prefix.clone(),
            },
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
    max_wait_ms: Option<f64>,
    n_snapshots: u32,
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
    correlation_id: Option<String>,
    cpu_ticks: u64,
    read_bytes: u64,
    write_bytes: u64,
    os_seen: bool,
    io_seen: bool,
    rss_bytes: u64,
    lock: Option<LockSeen>,
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
            .field("cpu_ms", self.os_seen.then(|| self.cpu_ms()))
            .field("read_bytes", self.io_seen.then_some(self.read_bytes))
            .field("write_bytes", self.io_seen.then_some(self.write_bytes))
            .field("rss_bytes", self.os_seen.then_some(self.rss_bytes))
            .field("lock", lock)
            .field("parallel_worker_samples", self.n_worker_samples)
            .field("query", self.query.as_deref())
            .field("correlation_id", self.correlation_id.as_deref())
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
            .field("correlation_id", self.correlation_id.as_deref())
    }
}

/// The OS counters of a pid at its previous sample.
#[derive(Debug, Clone, Copy)]
struct PidTrack {
    round: u64,
    start_ticks: u64,
    cpu_ticks: u64,
    io: Option<procfs::PidIo>,
}

#[derive(Debug, Clone)]
struct LockSnapshot {
    at: f64,
    n_blocked: usize,
    max_depth: u32,
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
    /// Non-idle sessions returned.
    pub n_rows: usize,
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
    n_samples: u32,
    n_failed: u32,
    n_left_out: u64,
    errors: Vec<Json>,
    locks: LockAgg,
    last_lock_query: Option<Instant>,
    version_num: Option<u32>,
    current: HashMap<i32, ExecKey>,
    leaders_by_start: HashMap<i64, ExecKey>,
    room_check_at: usize,
    text_buf: String,
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
        })
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
            n_samples: 0,
            n_failed: 0,
            n_left_out: 0,
            errors: Vec::new(),
            locks: LockAgg::default(),
            last_lock_query: None,
            version_num: None,
            current: HashMap::new(),
            leaders_by_start: HashMap::new(),
            room_check_at: 0,
            text_buf: String::new(),
        }
    }

    /// Executions held for the current interval (for tests and the agent's self-metrics).
    pub fn n_executions(&self) -> usize {
        self.execs.len()
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
                v
            }
        };
        let (sql, name) = if version >= LEADER_PID_SINCE {
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
        // Tracks are only valid between consecutive samples: a pid that went idle and came back
        // may have run many short queries meanwhile, which must not be charged to the next one.
        let round = self.round;
        self.tracks.retain(|_, t| t.round == round);
        self.proc.end_round();
        // An empty sample carries no server time; the agent runs on the same host.
        let now = rows.first().map_or_else(unix_now, |r| r.now);
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
            self.make_room();
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
            Self::account_os(&mut self.proc, &mut self.tracks, exec, row.pid, round);
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
            Self::account_os(&mut self.proc, &mut self.tracks, exec, row.pid, self.round);
        }
        true
    }

    fn account_os(
        proc: &mut ProcReader,
        tracks: &mut HashMap<i32, PidTrack>,
        exec: &mut Execution,
        pid: i32,
        round: u64,
    ) {
        let Some(s) = proc.sample(pid) else {
            tracks.remove(&pid);
            return;
        };
        exec.os_seen = true;
        exec.rss_bytes = s.stat.rss_pages.saturating_mul(procfs::page_size());
        if let Some(prev) = tracks.get(&pid) {
            if prev.round + 1 == round && prev.start_ticks == s.stat.start_ticks {
                exec.cpu_ticks += s.stat.cpu_ticks.saturating_sub(prev.cpu_ticks);
                if let (Some(p), Some(c)) = (prev.io, s.io) {
                    exec.read_bytes += c.read_bytes.saturating_sub(p.read_bytes);
                    exec.write_bytes += c.write_bytes.saturating_sub(p.write_bytes);
                    exec.io_seen = true;
                }
            }
        }
        if s.io.is_some() {
            exec.io_seen = true;
        }
        tracks.insert(
            pid,
            PidTrack {
                round,
                start_ticks: s.stat.start_ticks,
                cpu_ticks: s.stat.cpu_ticks,
                io: s.io,
            },
        );
    }

    fn new_execution(&mut self, row: &SessionRow) -> Execution {
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
            correlation_id: row
                .application_name
                .and_then(|a| self.cfg.correlation.extract(a))
                .map(str::to_string),
            cpu_ticks: 0,
            read_bytes: 0,
            write_bytes: 0,
            os_seen: false,
            io_seen: false,
            rss_bytes: 0,
            lock: None,
            n_worker_samples: 0,
            round: 0,
        }
    }

    /// Keeps memory bounded: when full, drops the least interesting executions that are not
    /// running any more, down to `max_executions`.
    fn make_room(&mut self) {
        let cap = (self.cfg.max_executions.max(1) * 2).max(self.room_check_at);
        if self.execs.len() < cap {
            return;
        }
        let round = self.round;
        let mut finished: Vec<(f64, ExecKey)> = self
            .execs
            .iter()
            .filter(|(_, e)| e.round != round)
            .map(|(k, e)| (e.score(), *k))
            .collect();
        finished.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = self.execs.len() + 1 - self.cfg.max_executions.max(1);
        for (_, k) in finished.into_iter().take(excess) {
            self.execs.remove(&k);
            self.n_left_out += 1;
        }
        // When most executions are still running nothing could go: the map may exceed the cap
        // (it is bounded by max_connections then), and the next scan waits for a quarter more,
        // so a server with hundreds of active sessions does not rescan on every new row.
        self.room_check_at = self.execs.len() + self.cfg.max_executions.max(4) / 2;
    }

    fn lock_snapshot(
        &mut self,
        client: &mut postgres::Client,
        version: u32,
        now: f64,
    ) -> Result<(), CollectError> {
        let waiters = locks::query_waiters(client, version)?;
        if waiters.is_empty() {
            return Ok(());
        }
        self.note_lock_waits(&waiters);
        let trees = locks::build_trees(&waiters);
        let (execs, current) = (&self.execs, &self.current);
        let json = locks::trees_json(&trees, &waiters, |pid| {
            execs.get(current.get(&pid)?).map(|e| e.session_json(now))
        });
        let snap = LockSnapshot {
            at: now,
            n_blocked: waiters.len(),
            max_depth: trees.iter().map(|t| t.depth).max().unwrap_or(0),
            trees: json,
        };
        self.locks.n_snapshots += 1;
        if self
            .locks
            .peak
            .as_ref()
            .is_none_or_smaller(snap.n_blocked, snap.max_depth)
        {
            self.locks.peak = Some(snap.clone());
        }
        self.locks.last = Some(snap);
        Ok(())
    }

    fn note_lock_waits(&mut self, waiters: &[LockWaiter]) {
        for w in waiters {
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
                max_wait_ms: None,
                n_snapshots: 0,
            });
            seen.n_snapshots += 1;
            seen.blockers.clone_from(&w.blockers);
            if let Some(ms) = w.wait_ms {
                seen.max_wait_ms = Some(seen.max_wait_ms.map_or(ms, |m| m.max(ms)));
            }
        }
    }

    /// Closes the interval: returns the `pg_stat_activity` summary first, then one correlated
    /// payload per correlation ID (at most `max_correlated`, longest first), and starts the
    /// next interval. Call every `interval_s`, from the thread that calls [`Self::sample`].
    pub fn finish_interval(&mut self) -> Vec<Payload> {
        let collected_at = unix_now();
        let execs: Vec<Execution> = self.execs.drain().map(|(_, e)| e).collect();
        let n_seen = execs.len() as u64 + self.n_left_out;
        let selected = select(execs, self.cfg.max_executions);
        let n_left_out = n_seen - selected.len() as u64;

        let mut by_corr: HashMap<&str, Vec<&Execution>> = HashMap::new();
        for e in &selected {
            if let Some(id) = e.correlation_id.as_deref() {
                by_corr.entry(id).or_default().push(e);
            }
        }
        let with_correlation = selected
            .iter()
            .filter(|e| e.correlation_id.is_some())
            .count();
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
            .field("locks", locks)
            .field("errors", Json::Array(std::mem::take(&mut self.errors)));
        let mut out = vec![Payload {
            source: Source::PgStatActivity,
            collected_at,
            correlation_id: None,
            data: summary,
        }];

        let mut groups: Vec<(&str, Vec<&Execution>)> = by_corr.into_iter().collect();
        for (_, g) in groups.iter_mut() {
            g.sort_by(|a, b| b.duration_ms().total_cmp(&a.duration_ms()));
        }
        groups.sort_by(|a, b| {
            b.1[0]
                .duration_ms()
                .total_cmp(&a.1[0].duration_ms())
                .then(a.0.cmp(b.0))
        });
        for (id, g) in groups.into_iter().take(self.cfg.max_correlated) {
            out.push(Payload {
                source: Source::PgStatActivity,
                collected_at,
                correlation_id: Some(id.to_string()),
                data: correlated_json(id, &g, start, end),
            });
        }

        self.interval_start = None;
        self.last_sample_at = None;
        self.n_samples = 0;
        self.n_failed = 0;
        self.n_left_out = 0;
        self.locks = LockAgg::default();
        self.room_check_at = 0;
        // The server may have been upgraded and restarted meanwhile.
        self.version_num = None;
        out
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

fn correlated_json(id: &str, g: &[&Execution], start: Option<f64>, end: Option<f64>) -> Json {
    let top = g[0];
    let cpu: u64 = g.iter().map(|e| e.cpu_ms()).sum();
    let read: u64 = g.iter().map(|e| e.read_bytes).sum();
    let write: u64 = g.iter().map(|e| e.write_bytes).sum();
    Json::object()
        .field("correlation_id", id)
        .field("query", top.query.as_deref())
        .field("duration_ms", top.duration_ms())
        .field("pid", top.pid)
        .field("datname", top.datname.as_deref())
        .field("usename", top.usename.as_deref())
        .field("application_name", top.application_name.as_deref())
        .field("client_addr", top.client_addr.as_deref())
        .field("backend_type", top.backend_type.as_deref())
        .field("state", top.state.as_str())
        .field("query_start", top.query_start)
        .field("cpu_ms", top.os_seen.then_some(cpu))
        .field("read_bytes", top.io_seen.then_some(read))
        .field("write_bytes", top.io_seen.then_some(write))
        .field("interval_start", start)
        .field("interval_end", end)
        .field("n_executions", g.len())
        .field(
            "executions",
            Json::Array(
                g.iter()
                    .take(MAX_EXECUTIONS_PER_CORRELATION)
                    .map(|e| e.to_json())
                    .collect(),
            ),
        )
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
    fn is_none_or_smaller(&self, n_blocked: usize, depth: u32) -> bool;
}

impl PeakExt for Option<&LockSnapshot> {
    fn is_none_or_smaller(&self, n_blocked: usize, depth: u32) -> bool {
        match self {
            None => true,
            Some(p) => (n_blocked, depth) > (p.n_blocked, p.max_depth),
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
            correlation_id: None,
            cpu_ticks,
            read_bytes: 0,
            write_bytes: 0,
            os_seen: true,
            io_seen: false,
            rss_bytes: 0,
            lock: None,
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
        // The pid goes idle: its baseline is dropped, so the CPU it spends meanwhile is not
        // charged to its next query.
        s.absorb(&[]);
        p.set(100, 300, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1003.0, 1002.5)]);
        p.set(100, 320, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1004.0, 1002.5)]);
        // The pid is reused by a new backend (another start time, more ticks than the old one
        // had): no delta across it.
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
        assert_eq!(field_f64(first, "cpu_ms"), procfs::ticks_to_ms(50) as f64);
        assert_eq!(field_f64(first, "read_bytes"), 4096.0);
        assert_eq!(field_f64(first, "write_bytes"), 8192.0);
        assert_eq!(field_f64(first, "n_samples"), 2.0);
        assert_eq!(field_f64(first, "duration_ms"), 2000.0);
        let second = by_start(1002.5);
        assert_eq!(field_f64(second, "cpu_ms"), procfs::ticks_to_ms(20) as f64);
        assert_eq!(field_f64(second, "n_samples"), 3.0);
        assert_eq!(
            first.get("query"),
            Some(&Json::Str("SELECT * FROM t WHERE id = ?".into()))
        );
        assert_eq!(field_f64(&out[0].data, "n_samples"), 6.0);
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
        e.correlation_id = Some("abc".into());
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
    fn correlated_payload_reports_longest_execution() {
        let (a, b) = (exec(1, 3.0, 100), exec(1, 9.0, 50));
        let data = correlated_json("id", &[&b, &a], Some(1.0), Some(61.0));
        assert_eq!(data.get("duration_ms"), Some(&Json::Float(9000.0)));
        assert_eq!(data.get("n_executions"), Some(&Json::UInt(2)));
        assert_eq!(data.get("query"), Some(&Json::Str("SELECT ?".into())));
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
