//! One collection interval: pg_stat_statements deltas, server health (the configured database
//! and every `[collection] databases` entry) and the host figures, with the agent's own block in
//! `data.agent`. The daemon's `interval` thread, `--once`, `--dry-run` and the cost bench
//! (`benches/agent_cost.rs`) all run this one unit, so "one full collection" means the same
//! everywhere.
//!
//! Invariants:
//! - The cycle never touches the spool or HTTP: it returns payloads, the caller appends them.
//! - Every database query goes through a [`DbSteps`] runner, which decides pause, backoff and
//!   connection handling; the cycle keeps one backoff per step.
//! - `system_metrics` is built here and nowhere else.

use std::path::PathBuf;
use std::time::Instant;

use crate::collect::host::{HostCollector, WatchedPath};
use crate::collect::statements::{StatementsCollector, StatementsConfig};
use crate::collect::{Backoff, CollectError};
use crate::health::{Health, HealthOptions};
use crate::json::Json;
use crate::payload::{unix_now, Payload, Source};
use crate::pool::PooledClient;

/// Runs the database steps of a cycle: the daemon's runner counts time, honours the pause file
/// and the backoffs and replaces broken connections; a one-shot runner logs and goes on.
pub trait DbSteps {
    /// Runs `f` on a connection to `database` (`None`: the configured database) as step `name`.
    /// `None` when the step did not run (paused, backed off, no connection) or failed; a
    /// failure is reported by the runner, not by the caller.
    fn step<T>(
        &self,
        database: Option<&str>,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T>;
}

/// What one cycle collects.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    /// pg_stat_statements: state directory, text mode, how many entries.
    pub statements: StatementsConfig,
    /// Server health.
    pub health: HealthOptions,
    /// The spool directory (its filesystem is watched with the server's data and WAL dirs).
    pub spool_path: PathBuf,
    /// The extra databases whose hot tables are collected (`[collection] databases`).
    pub databases: Vec<String>,
}

/// The collectors of one interval and what they keep between intervals (baselines, backoffs).
pub struct IntervalCycle {
    statements: StatementsCollector,
    health: Health,
    host: HostCollector,
    paths: Vec<WatchedPath>,
    have_server_paths: bool,
    databases: Vec<String>,
    b_paths: Backoff,
    b_statements: Backoff,
    b_health: Backoff,
    b_databases: Vec<Backoff>,
}

impl IntervalCycle {
    /// The cycle's collectors; the host baseline is taken now, so the first cycle has deltas.
    pub fn new(opts: CycleOptions) -> IntervalCycle {
        let mut host = HostCollector::new();
        let paths = vec![WatchedPath {
            label: "spool".into(),
            path: opts.spool_path,
        }];
        host.collect(&paths);
        IntervalCycle {
            statements: StatementsCollector::new(opts.statements),
            health: Health::new(opts.health),
            host,
            paths,
            have_server_paths: false,
            b_databases: opts.databases.iter().map(|_| Backoff::default()).collect(),
            databases: opts.databases,
            b_paths: Backoff::default(),
            b_statements: Backoff::default(),
            b_health: Backoff::default(),
        }
    }

    /// Takes the baselines a first cycle compares with: the server's paths and the
    /// pg_stat_statements counters (`StatementsCollector::prime`), so the first boundary ships
    /// the delta since start-up (or since a persisted baseline that is still usable). Optional:
    /// without it the first cycle only takes them.
    pub fn prime(&mut self, steps: &impl DbSteps) {
        self.find_server_paths(steps);
        let statements = &mut self.statements;
        steps.step(None, "statements", &mut self.b_statements, |c| {
            statements.prime(c)
        });
        self.host.collect(&self.paths);
    }

    fn find_server_paths(&mut self, steps: &impl DbSteps) {
        if self.have_server_paths {
            return;
        }
        if let Some(found) = steps.step(None, "settings", &mut self.b_paths, |c| server_paths(c)) {
            self.paths.extend(found);
            self.have_server_paths = true;
        }
    }

    /// Runs one interval and returns its payloads: the statements delta (when there is one) and
    /// `system_metrics` with the `postgres` health block and `agent` from `agent_block`, which
    /// is called after the database work so it can count this cycle's cost.
    pub fn run(
        &mut self,
        steps: &impl DbSteps,
        agent_block: impl FnOnce() -> Json,
    ) -> Vec<Payload> {
        let mut out = Vec::new();
        self.find_server_paths(steps);
        let statements = &mut self.statements;
        if let Some(Some(p)) = steps.step(None, "statements", &mut self.b_statements, |c| {
            statements.collect(c)
        }) {
            out.push(p);
        }
        // Health reports its own failures inside the block (it never fails as a whole).
        let health = &mut self.health;
        let mut postgres = steps.step(None, "health", &mut self.b_health, |c| {
            Ok::<_, CollectError>(health.collect(c, Instant::now()))
        });
        if let Some(block) = postgres.as_mut().filter(|_| !self.databases.is_empty()) {
            let others: Vec<Json> = self
                .databases
                .iter()
                .zip(self.b_databases.iter_mut())
                .map(|(name, backoff)| {
                    steps
                        .step(Some(name), "health (other databases)", backoff, |c| {
                            Ok::<_, CollectError>(health.collect_database(name, c, Instant::now()))
                        })
                        .unwrap_or_else(|| skipped_database(name))
                })
                .collect();
            block.push("other_databases", Json::Array(others));
        }
        if let Some(mut data) = self.host.collect(&self.paths) {
            if let Some(block) = postgres {
                data.push("postgres", block);
            }
            data.push("agent", agent_block());
            out.push(Payload {
                source: Source::SystemMetrics,
                collected_at: unix_now(),
                correlation_id: None,
                data,
            });
        }
        out
    }
}

/// The health block of an extra database whose step did not run.
fn skipped_database(name: &str) -> Json {
    Json::object().field("database", name).field(
        "errors",
        Json::Array(vec![crate::pgerror::skipped_entry(
            "health",
            "no connection, paused or backed off",
        )]),
    )
}

/// The data directory and WAL directory of the server, for the filesystem figures.
pub fn server_paths(client: &mut postgres::Client) -> Result<Vec<WatchedPath>, CollectError> {
    let row = client
        .query_one("SELECT current_setting('data_directory')", &[])
        .map_err(CollectError::query("host", "data_directory"))?;
    let data: String = row.get(0);
    let data = PathBuf::from(data);
    Ok(vec![
        WatchedPath {
            label: "wal".into(),
            path: data.join("pg_wal"),
        },
        WatchedPath {
            label: "data_directory".into(),
            path: data,
        },
    ])
}
