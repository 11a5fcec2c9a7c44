//! What the threads share ([`Context`]) and the step runner: every database step of a collector
//! goes through [`Context::db_step`] (pause, backoff, broken connections, the agent's own
//! database time and error counting in one place), every append through
//! [`Context::append_all`] (failed appends counted and logged once per streak).
//!
//! Invariants: no lock is held while a step queries the database or an append writes the spool.

use std::sync::Arc;
use std::time::Instant;

use crate::agent_report::{AgentReport, IntervalCost};
use crate::collect::correlate::SharedCorrelator;
use crate::collect::cycle::DbSteps;
use crate::collect::{Backoff, CollectError};
use crate::config::Config;
use crate::logtail::{EventStore, PlanStore};
use crate::payload::Payload;
use crate::pool::{Pool, PooledClient};
use crate::ship::StatusHandle;
use crate::shutdown::Shutdown;
use crate::spool::Spool;

use super::health::AgentHealth;

/// Everything the threads share.
pub struct Context {
    /// The configuration the agent started with (runtime changes: see `daemon::reload`).
    pub config: Config,
    /// The pool: the only way to the database.
    pub pool: Pool,
    /// One single-connection pool per extra database (`[collection] databases`).
    pub extra_pools: Vec<(String, Pool)>,
    /// The spool: the only way to the listener.
    pub spool: Arc<Spool>,
    /// Stop and reload requests.
    pub shutdown: Shutdown,
    /// The agent's own bookkeeping.
    pub health: AgentHealth,
    /// The latest auto_explain plan per query_id: written by the log thread, attached to the
    /// pg_stat_statements rows by the interval thread.
    pub plans: PlanStore,
    /// The recent classified log events: written by the log thread, read by the spike watch.
    pub events: EventStore,
}

impl Context {
    /// Runs one database step of collector `name`: skipped while paused or backed off; errors
    /// are counted, logged (not repeatedly) and end the step, never the thread.
    pub(super) fn db_step<T>(
        &self,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        self.db_step_on(&self.pool, name, backoff, f)
    }

    /// [`Context::db_step`] on a given pool (the extra databases have their own).
    pub(super) fn db_step_on<T>(
        &self,
        pool: &Pool,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        if self.health.paused() || !backoff.should_run() {
            self.health.skipped(name);
            return None;
        }
        let mut client = match pool.acquire() {
            Ok(c) => c,
            Err(e) => {
                self.health.failed(name, e.to_string());
                return None;
            }
        };
        let start = Instant::now();
        let result = f(&mut client);
        self.health.add_db_time(start.elapsed());
        backoff.record(&result);
        match result {
            Ok(v) => {
                self.health.ok(name);
                Some(v)
            }
            Err(e) => {
                if e.is_connection_error() {
                    client.mark_broken();
                }
                self.health.failed(name, e.to_string());
                None
            }
        }
    }

    /// Connections the agent holds to the server now, over every pool: the figure the
    /// 5-connection promise is about.
    fn connections_held(&self) -> usize {
        self.pool.stats().size
            + self
                .extra_pools
                .iter()
                .map(|(_, p)| p.stats().size)
                .sum::<usize>()
    }

    /// The agent's own report now: its bookkeeping with the pools', the spool's and the
    /// shipper's figures; `cost` at an interval boundary (for `data.agent`); with `cost` the
    /// pools' sightings of who blocked connecting are taken (shipped once).
    pub fn report(&self, ship: &StatusHandle, cost: Option<IntervalCost>) -> AgentReport {
        let (overruns, paused, append_errors) = self.health.counters();
        AgentReport {
            pid: std::process::id(),
            uptime: self.health.started.elapsed(),
            paused,
            connections_held: self.connections_held(),
            pool: self.pool.stats(),
            spool: self.spool.stats(),
            append_errors,
            shipped: ship.get(),
            collectors: self.health.collector_reports(),
            overruns,
            connect_blocked_by: self.connect_blocked_by(cost.is_some()),
            cost,
            sample_cost: self.health.sample_cost(),
        }
    }

    /// Who blocked connecting, over every pool: at an interval boundary (`take`) what was seen
    /// since the previous summary, taken so it is shipped once; otherwise the latest sighting.
    fn connect_blocked_by(&self, take: bool) -> Option<crate::connect_block::Sighting> {
        let pools = std::iter::once(&self.pool).chain(self.extra_pools.iter().map(|(_, p)| p));
        let mut all: Option<crate::connect_block::Sighting> = None;
        for pool in pools {
            let seen = if take {
                pool.take_connect_blocked_by()
            } else {
                pool.connect_blocked_by()
            };
            if let Some(seen) = seen {
                all.get_or_insert_with(Default::default).merge(seen);
            }
        }
        all
    }

    /// Appends payloads to the spool; returns false when any append failed (the spool counts and
    /// reports the loss).
    pub(super) fn append_all(&self, payloads: &[Payload]) -> bool {
        let mut all = true;
        for p in payloads {
            match self.spool.append(p) {
                Ok(_) => {
                    if let Some(n) = self.health.append_worked() {
                        log::info!(
                            "spool: appending works again (for {} s now); {n} payloads could \
                             not be stored in the streak before",
                            self.health.streak_quiet.as_secs()
                        );
                    }
                }
                Err(e) => {
                    all = false;
                    if self.health.append_failed() {
                        log::error!(
                            "spool: {} payload not stored: {e} (further failures are counted in \
                             data.agent.spool.append_errors, not logged, until appends have worked again for a while)",
                            p.source.as_str()
                        );
                    }
                }
            }
        }
        all
    }
}

impl DbSteps for Context {
    fn step<T>(
        &self,
        database: Option<&str>,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        let pool = match database {
            None => &self.pool,
            Some(db) => &self.extra_pools.iter().find(|(n, _)| n == db)?.1,
        };
        self.db_step_on(pool, name, backoff, f)
    }
}

/// Appends the correlator's due records (taken out first: the lock is never held while
/// appending).
pub(super) fn append_due(ctx: &Context, corr: &SharedCorrelator, all: bool) {
    let due = {
        let mut c = corr.lock().unwrap_or_else(|p| p.into_inner());
        if all {
            c.take_all()
        } else {
            c.take_due(crate::payload::unix_now())
        }
    };
    if !due.is_empty() {
        ctx.append_all(&due);
    }
}
