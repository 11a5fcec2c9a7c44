//! Server health: the figures besides application queries that explain a load spike on the
//! database server (checkpoints, WAL, vacuum and wraparound, temp files, deadlocks, replication,
//! connections, hot tables), as per-interval deltas. The result is the `postgres` block the
//! daemon puts into the `system_metrics` payload next to the host figures of the same interval.
//!
//! # Wiring
//!
//! ```text
//! let mut health = Health::new(HealthOptions { top_n: 20, ..HealthOptions::default() });
//! every interval:
//!     let block: Json = pool.acquire()
//!         .map(|mut c| health.collect(&mut c, Instant::now()))  // the `postgres` block
//!     for each extra database (`[collection] databases`), with a client connected to it:
//!         other.push(health.collect_database("shop", &mut client, Instant::now()));
//! ```
//!
//! [`Health::collect`] takes any `&mut postgres::Client` (a pooled one derefs to it), so this
//! module does not care how the daemon runs its threads. Each sub-collector (see [`Part`]) runs
//! one cheap query per interval (the hot tables two, the second only for the ≤ 5 × top N tables
//! shipped); the database sizes and unused indexes run at most every `slow_every`.
//!
//! # Invariants
//!
//! - Counters are shipped as deltas against the previous call's reading, never raw; the first
//!   call is a baseline (`"baseline": true`, deltas `null`). A reset or restart in between gives
//!   `null` deltas and `"reset": true`, never negative numbers.
//! - The server version is read once (`server_version_num`) and every difference between
//!   PostgreSQL 12 and 18 lives in [`version`]. An error saying a column or view does not exist
//!   makes the next call read the version again (the server may have been upgraded).
//! - A failing sub-collector never stops the others: its error ([`PgError`], naming the
//!   sub-collector and the query) goes into the block's `errors` list and its figures are `null`.
//!   One that keeps timing out is skipped for a growing number of cycles ([`Backoff`]).
//! - No query takes a lock on a user relation: sizes come from `pg_class.relpages`, and relations
//!   that hold or wait for an ACCESS EXCLUSIVE lock are filtered out in SQL (through `pg_locks`)
//!   before any statistics of them are read, and listed as skipped.
//! - A collection runs its queries in one read-only transaction (after the version query) and
//!   always ends it: a failing part rolls it back and begins a new one for the parts after it.
//! - Nothing here panics on server answers: every column is read with `try_get`.

mod checkpoints;
mod connections;
mod counters;
mod databases;
mod replication;
mod tables;
mod vacuum;
pub mod version;
mod wal;

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use crate::collect::Backoff;
pub use crate::pgerror::PgError;

use crate::collect::backoff::DEFAULT_MAX_SKIP;

use crate::config::default_whole;
use crate::json::Json;
use crate::pgerror;

/// Tunables of the health collectors (plain values: the daemon maps configuration onto them).
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// How many tables each hot-table ranking and the unused-index list ship. Defaults to 20.
    pub top_n: usize,
    /// Least time between two runs of the costly sub-collectors (database sizes, unused indexes).
    /// Defaults to 5 minutes.
    pub slow_every: Duration,
    /// What the hot-tables query may cost per interval on a database with many tables: when it
    /// took longer (measured as wall time, only with at least [`LARGE_CATALOG`] tables) it runs
    /// every few intervals instead (at most every 10th), and its deltas span those intervals.
    /// Defaults to 50 ms, so 10,000 tables are read every interval and 50,000 about every other.
    pub tables_budget: Duration,
}

/// Below this many tables the hot-tables query always runs every interval, whatever it cost.
pub const LARGE_CATALOG: usize = 5_000;

/// The `[collection] health_*` defaults of `config::KEYS`.
impl Default for HealthOptions {
    fn default() -> HealthOptions {
        HealthOptions {
            top_n: default_whole("collection", "health_top_n") as usize,
            slow_every: Duration::from_secs(default_whole("collection", "health_slow_interval_s")),
            tables_budget: Duration::from_millis(default_whole(
                "collection",
                "health_tables_budget_ms",
            )),
        }
    }
}

/// The sub-collectors, each with its own query, error and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `pg_stat_database` deltas per database.
    Databases,
    /// `pg_database_size` per database (slow).
    DatabaseSizes,
    /// `pg_stat_activity` counts, limits, oldest transactions.
    Connections,
    /// `pg_stat_bgwriter` / `pg_stat_checkpointer` deltas.
    Checkpoints,
    /// WAL position, `pg_stat_wal`, `pg_stat_archiver`.
    Wal,
    /// `pg_stat_replication`: one row per standby.
    Replication,
    /// `pg_replication_slots`.
    ReplicationSlots,
    /// `pg_stat_wal_receiver` and replay delay (standby side).
    WalReceiver,
    /// `pg_stat_progress_vacuum` and autovacuum workers.
    Vacuum,
    /// `datfrozenxid` / `datminmxid` ages.
    Wraparound,
    /// Hot tables of the connected database.
    Tables,
    /// Never-used indexes of the connected database (slow).
    UnusedIndexes,
}

impl Part {
    /// Every part, in the order they run and appear in the block.
    pub const ALL: [Part; 12] = [
        Part::Connections,
        Part::Databases,
        Part::DatabaseSizes,
        Part::Checkpoints,
        Part::Wal,
        Part::Replication,
        Part::ReplicationSlots,
        Part::WalReceiver,
        Part::Vacuum,
        Part::Wraparound,
        Part::Tables,
        Part::UnusedIndexes,
    ];

    /// Its key in the `postgres` block and its name in errors.
    pub fn name(self) -> &'static str {
        match self {
            Part::Databases => "databases",
            Part::DatabaseSizes => "database_sizes",
            Part::Connections => "connections",
            Part::Checkpoints => "checkpoints",
            Part::Wal => "wal",
            Part::Replication => "replication",
            Part::ReplicationSlots => "replication_slots",
            Part::WalReceiver => "wal_receiver",
            Part::Vacuum => "vacuum",
            Part::Wraparound => "wraparound",
            Part::Tables => "tables",
            Part::UnusedIndexes => "unused_indexes",
        }
    }

    /// Whether it runs at most every `slow_every` instead of every interval.
    pub fn is_slow(self) -> bool {
        matches!(self, Part::DatabaseSizes | Part::UnusedIndexes)
    }
}

/// A part's backoff: one timeout in a row is tolerated (a passing spike), then the agent's one
/// policy (1, 2, 4, ... cycles, at most [`DEFAULT_MAX_SKIP`]).
fn part_backoff() -> Backoff {
    Backoff::new(1, DEFAULT_MAX_SKIP)
}

/// What every sub-collector gets besides its own state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx {
    /// The server's major version.
    pub major: u32,
    /// Rows per ranking.
    pub top_n: usize,
    /// This collection's cycle number.
    pub cycle: u64,
    /// This collection's time.
    pub now: Instant,
    /// See [`HealthOptions::tables_budget`].
    pub tables_budget: Duration,
}

/// Timeouts of this many parts in one cycle mean a lock that holds back more than one view: the
/// rest of the cycle is skipped and the whole collector backs off (one locked view only backs
/// its own part off).
const BROAD_TIMEOUTS: u32 = 2;

/// Per-part backoff and last-run bookkeeping, and the block's error list while it is built.
struct Runner<'a> {
    cycle: u64,
    now: Instant,
    slow_every: Duration,
    backoffs: &'a mut HashMap<Part, Backoff>,
    last_run: &'a mut HashMap<Part, Instant>,
    errors: Vec<Json>,
    version_stale: bool,
    /// The parts run inside one read-only transaction (see [`Health::collect`]).
    in_transaction: bool,
    /// Parts that timed out in this cycle. From [`BROAD_TIMEOUTS`] on the statistics are locked
    /// broadly (not one view): the remaining parts would meet the same lock, so they are skipped
    /// and the whole collector backs off.
    timeouts: u32,
}

impl Runner<'_> {
    /// Runs `f` for `part` unless it is backed off or (slow parts) not due; puts its figures (or
    /// `null` after an error) under the part's name in `out`.
    fn run(
        &mut self,
        part: Part,
        out: &mut Json,
        client: &mut postgres::Client,
        f: impl FnOnce(&mut postgres::Client) -> Result<Json, PgError>,
    ) {
        if part.is_slow() {
            if let Some(last) = self.last_run.get(&part) {
                if self.now.saturating_duration_since(*last) < self.slow_every {
                    return;
                }
            }
        }
        if self.timeouts >= BROAD_TIMEOUTS {
            out.push(part.name(), Json::Null);
            return;
        }
        let backoff = self.backoffs.entry(part).or_insert_with(part_backoff);
        if !backoff.allows(self.cycle) {
            self.errors.push(
                pgerror::skipped_entry(part.name(), "backed off after repeated timeouts")
                    .field("consecutive_timeouts", backoff.consecutive_timeouts())
                    .field(
                        "resume_in_cycles",
                        backoff.resume_at().saturating_sub(self.cycle),
                    ),
            );
            out.push(part.name(), Json::Null);
            return;
        }
        match f(client) {
            Ok(figures) => {
                backoff.record_success();
                self.last_run.insert(part, self.now);
                out.push(part.name(), figures);
            }
            Err(e) => {
                log::debug!("{e}");
                let mut err = e.to_json();
                if e.is_timeout() {
                    let skip = backoff.record_timeout(self.cycle);
                    err.push("backed_off_cycles", skip);
                    self.timeouts += 1;
                    if self.timeouts >= BROAD_TIMEOUTS {
                        err.push("rest_of_cycle_skipped", true);
                    }
                }
                self.version_stale |= e.is_version_mismatch();
                self.errors.push(err);
                out.push(part.name(), Json::Null);
                if self.in_transaction {
                    // The error aborted the collection's transaction: start a fresh one so the
                    // remaining parts can run (they read the statistics anew).
                    self.in_transaction = client.batch_execute("ROLLBACK; BEGIN").is_ok();
                }
            }
        }
    }
}

/// The relation-level collectors of one database (hot tables, unused indexes) with their state.
struct RelationState {
    tables: tables::Tables,
    backoffs: HashMap<Part, Backoff>,
    last_run: HashMap<Part, Instant>,
    /// Collections of this database so far: its own clock for backoff and cadence, so an extra
    /// database collected on another schedule than the server is backed off correctly too.
    cycle: u64,
}

impl RelationState {
    fn new() -> RelationState {
        RelationState {
            tables: tables::Tables::default(),
            backoffs: HashMap::new(),
            last_run: HashMap::new(),
            cycle: 0,
        }
    }
}

/// The server-health collectors and their previous readings. See the module doc for wiring.
pub struct Health {
    options: HealthOptions,
    /// `server_version_num`, read once (again after a version mismatch).
    version_num: Option<u32>,
    cycle: u64,
    last_collect: Option<Instant>,
    backoffs: HashMap<Part, Backoff>,
    /// The whole collector's back-off, after a cycle in which [`BROAD_TIMEOUTS`] parts timed out.
    gate: Backoff,
    last_run: HashMap<Part, Instant>,
    databases: databases::Databases,
    checkpoints: checkpoints::Checkpoints,
    wal: wal::Wal,
    slots: replication::Slots,
    relations: RelationState,
    /// Extra databases by name (`[collection] databases`).
    others: HashMap<String, RelationState>,
}

impl Health {
    /// Collectors with no readings yet: the first [`Health::collect`] is the baseline.
    pub fn new(options: HealthOptions) -> Health {
        Health {
            options,
            version_num: None,
            cycle: 0,
            last_collect: None,
            backoffs: HashMap::new(),
            gate: Backoff::default(),
            last_run: HashMap::new(),
            databases: databases::Databases::default(),
            checkpoints: checkpoints::Checkpoints::default(),
            wal: wal::Wal::default(),
            slots: replication::Slots::default(),
            relations: RelationState::new(),
            others: HashMap::new(),
        }
    }

    /// The server's `server_version_num` once known (e.g. 170002).
    pub fn server_version_num(&self) -> Option<u32> {
        self.version_num
    }

    fn ensure_version(&mut self, client: &mut postgres::Client) -> Result<u32, PgError> {
        if let Some(v) = self.version_num {
            return Ok(v);
        }
        let v = crate::collect::read_server_version(client)
            .map_err(PgError::at("version", "server_version_num"))?;
        let major = v / 10000;
        if !version::SUPPORTED.contains(&major) {
            log::warn!(
                "server health: PostgreSQL {major} is outside the tested range 12 to 18; \
                 figures a view lacks are reported as errors"
            );
        }
        self.version_num = Some(v);
        Ok(v)
    }

    /// Collects one interval: runs every sub-collector on `client` (connected to the monitored
    /// server's configured database) and returns the `postgres` block:
    /// `{server_version_num, cycle, interval_s, baseline, connections, databases, ..., errors}`.
    /// `now` is the time of this collection (a monotonic clock): it measures the interval and
    /// decides when the slow sub-collectors are due. Call it once per collection interval, with
    /// a client that is not inside a transaction: the queries run in one read-only transaction
    /// of their own, which is always ended before this returns.
    pub fn collect(&mut self, client: &mut postgres::Client, now: Instant) -> Json {
        let interval = self.last_collect.map(|t| now.saturating_duration_since(t));
        let mut out = Json::object();
        let version = self.ensure_version(client);
        out.push("server_version_num", version.as_ref().ok().copied());
        out.push("cycle", self.cycle);
        out.push(
            "interval_s",
            interval.map(|d| counters::round3(d.as_secs_f64())),
        );
        out.push("baseline", self.last_collect.is_none());
        let Some(v) = version_or_error(version, &mut out) else {
            return out;
        };
        if !self.gate.allows(self.cycle) {
            // The statistics were locked broadly lately: the whole collector waits (1, 2, 4, ...
            // cycles), so such a lock costs the server log a few errors, not several per cycle.
            out.push(
                "errors",
                Json::Array(vec![pgerror::skipped_entry(
                    "health",
                    "backed off after timeouts of several parts",
                )
                .field("consecutive_timeouts", self.gate.consecutive_timeouts())
                .field(
                    "resume_in_cycles",
                    self.gate.resume_at().saturating_sub(self.cycle),
                )]),
            );
            self.cycle += 1;
            return out;
        }
        let ctx = self.ctx(v, now);
        let in_transaction = begin(client);
        let mut runner = Runner {
            cycle: self.cycle,
            now,
            slow_every: self.options.slow_every,
            backoffs: &mut self.backoffs,
            last_run: &mut self.last_run,
            errors: Vec::new(),
            version_stale: false,
            in_transaction,
            timeouts: 0,
        };
        let (dbs, ckpt, wal, slots) = (
            &mut self.databases,
            &mut self.checkpoints,
            &mut self.wal,
            &mut self.slots,
        );
        runner.run(Part::Connections, &mut out, client, |c| {
            connections::collect(c, &ctx)
        });
        runner.run(Part::Databases, &mut out, client, |c| dbs.collect(c, &ctx));
        runner.run(
            Part::DatabaseSizes,
            &mut out,
            client,
            databases::collect_sizes,
        );
        runner.run(Part::Checkpoints, &mut out, client, |c| {
            ckpt.collect(c, &ctx)
        });
        runner.run(Part::Wal, &mut out, client, |c| wal.collect(c, &ctx));
        runner.run(
            Part::Replication,
            &mut out,
            client,
            replication::collect_standbys,
        );
        runner.run(Part::ReplicationSlots, &mut out, client, |c| {
            slots.collect(c, &ctx)
        });
        runner.run(Part::WalReceiver, &mut out, client, |c| {
            replication::collect_receiver(c, &ctx)
        });
        runner.run(Part::Vacuum, &mut out, client, |c| {
            vacuum::collect_progress(c, &ctx)
        });
        runner.run(
            Part::Wraparound,
            &mut out,
            client,
            vacuum::collect_wraparound,
        );
        let mut errors = std::mem::take(&mut runner.errors);
        let mut stale = runner.version_stale;
        let in_transaction = runner.in_transaction;
        if runner.timeouts >= BROAD_TIMEOUTS {
            self.gate.record_timeout(self.cycle);
            if in_transaction {
                commit(client);
            }
            out.push("errors", Json::Array(errors));
            self.cycle += 1;
            return out;
        }
        self.gate.record_success();
        let rel = collect_relations(
            &mut self.relations,
            client,
            &ctx,
            self.options.slow_every,
            in_transaction,
            &mut out,
        );
        errors.extend(rel.errors);
        stale |= rel.version_stale;
        out.push("errors", Json::Array(errors));
        if stale {
            self.version_num = None;
        }
        self.cycle += 1;
        self.last_collect = Some(now);
        out
    }

    /// Collects the hot tables and unused indexes of another database (`[collection]
    /// databases`) through `client`, which must be connected to that database. Returns
    /// `{database, tables, unused_indexes, errors}`; each database keeps its own previous
    /// readings and backoff. Call it once per interval per database, after [`Health::collect`]
    /// (which supplies the server version; without it the version is read here).
    pub fn collect_database(
        &mut self,
        database: &str,
        client: &mut postgres::Client,
        now: Instant,
    ) -> Json {
        let mut out = Json::object().field("database", database);
        let version = self.ensure_version(client);
        let Some(v) = version_or_error(version, &mut out) else {
            return out;
        };
        let ctx = self.ctx(v, now);
        let state = self
            .others
            .entry(database.to_string())
            .or_insert_with(RelationState::new);
        let in_transaction = begin(client);
        let rel = collect_relations(
            state,
            client,
            &ctx,
            self.options.slow_every,
            in_transaction,
            &mut out,
        );
        out.push("errors", Json::Array(rel.errors));
        if rel.version_stale {
            self.version_num = None;
        }
        out
    }

    /// The context of this cycle's parts on a server of `server_version_num` `v`.
    fn ctx(&self, v: u32, now: Instant) -> Ctx {
        Ctx {
            major: v / 10000,
            top_n: self.options.top_n,
            cycle: self.cycle,
            now,
            tables_budget: self.options.tables_budget,
        }
    }
}

/// The server version, or `None` with the error as the block's `errors` (nothing else can be
/// collected without it).
fn version_or_error(version: Result<u32, PgError>, out: &mut Json) -> Option<u32> {
    match version {
        Ok(v) => Some(v),
        Err(e) => {
            out.push("errors", Json::Array(vec![e.to_json()]));
            None
        }
    }
}

/// Opens the collection's read-only transaction; `false` (and the parts run in autocommit) if
/// that fails.
///
/// Why one transaction: before PG15 the first statistics function called in a transaction loads
/// the whole statistics file of the database (every table), so each part in its own transaction
/// paid for it again (26 ms for `pg_stat_database` alone on 50,000 tables, PG12); on PG15+ the
/// statistics fetched by the hot-tables query are cached for its details query. All parts also
/// see one consistent statistics snapshot. The transaction holds no lock on a user relation, only
/// the catalog and view share locks the queries take anyway, for the few milliseconds it lasts.
fn begin(client: &mut postgres::Client) -> bool {
    client.batch_execute("BEGIN READ ONLY").is_ok()
}

/// Ends the collection's transaction. Nothing was written, so a failed COMMIT loses nothing; a
/// broken connection shows up in the next collection's errors.
fn commit(client: &mut postgres::Client) {
    if let Err(e) = client.batch_execute("COMMIT") {
        log::debug!("server health: COMMIT of the collection's transaction failed: {e}");
    }
}

/// What running the relation-level parts left behind.
struct RelationOutcome {
    errors: Vec<Json>,
    version_stale: bool,
}

/// Runs the relation-level parts of one database, then ends the collection's transaction (when
/// one is still open).
fn collect_relations(
    state: &mut RelationState,
    client: &mut postgres::Client,
    ctx: &Ctx,
    slow_every: Duration,
    in_transaction: bool,
    out: &mut Json,
) -> RelationOutcome {
    let ctx = &Ctx {
        cycle: state.cycle,
        ..*ctx
    };
    state.cycle += 1;
    let mut runner = Runner {
        cycle: ctx.cycle,
        now: ctx.now,
        slow_every,
        backoffs: &mut state.backoffs,
        last_run: &mut state.last_run,
        errors: Vec::new(),
        version_stale: false,
        in_transaction,
        timeouts: 0,
    };
    let tables = &mut state.tables;
    runner.run(Part::Tables, out, client, |c| tables.collect(c, ctx));
    runner.run(Part::UnusedIndexes, out, client, |c| {
        tables::collect_unused_indexes(c, ctx)
    });
    if runner.in_transaction {
        commit(client);
    }
    RelationOutcome {
        errors: runner.errors,
        version_stale: runner.version_stale,
    }
}

/// Reads the reset-marker columns `names` (epoch seconds of stats_reset, postmaster start).
pub(crate) fn marker(
    row: &postgres::Row,
    names: &[&str],
) -> Result<Vec<Option<f64>>, postgres::Error> {
    names
        .iter()
        .map(|n| row.try_get::<_, Option<f64>>(*n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_has_a_distinct_name() {
        let mut names: Vec<_> = Part::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Part::ALL.len());
        assert!(Part::DatabaseSizes.is_slow() && !Part::Tables.is_slow());
    }
}
