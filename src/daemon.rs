//! The running agent: threads with one job each around the spool.
//!
//! - `sampler`: samples pg_stat_activity every `sample_interval` and appends the activity summary
//!   (with the lock trees) at every interval boundary; hands the interval's correlated statements
//!   to the shared correlator and appends its records when they are due.
//! - `interval`: at every interval boundary collects pg_stat_statements deltas, the server-health
//!   figures and the host figures (with the agent's own cost in `data.agent`), appends them and
//!   syncs the spool.
//! - `logtail`: follows the server log and appends `pg_log` payloads, committing the log position
//!   only after the append; hands correlated statements to the correlator as they are read.
//! - `shipper`: sends what is in the spool (see `ship`).
//! - `status`: rewrites the status file when the breaker changes state and when a backlog has
//!   drained (and logs how long that took), otherwise every few seconds.
//!
//! Invariants:
//! - Collectors only append to the spool; they never wait for the shipper.
//! - Cycles run on fixed boundaries (`schedule::Ticker`) on one thread each, so two cycles of the
//!   same collector never overlap; an overrun skips the missed boundaries and says so.
//! - Every database query goes through the pool; while the pause file exists none is made.
//! - On stop, what was collected is appended and synced; the process exits within
//!   [`SHUTDOWN_GRACE`] even when the database or the listener hang.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collect::activity::ActivitySampler;
use crate::collect::correlate::{LoggedStatement, SharedCorrelator};
use crate::collect::cycle::{DbSteps, IntervalCycle};
use crate::collect::{Backoff, CollectError};
use crate::config::{self, Config};
use crate::json::Json;
use crate::logtail::{self, LogFeed, PlanStore};
use crate::payload::Payload;
use crate::pool::{Pool, PooledClient};
use crate::schedule::Ticker;
use crate::ship::StatusHandle;
use crate::shutdown::{Event, Shutdown};
use crate::spike::watch::Watch;
use crate::spool::Spool;
use crate::wiring;
use crate::{logging, selfstats, status};

/// The wiring's `Config` → options functions, under the paths `main`, `oneshot`, `selftest` and
/// the tests have always used.
pub use crate::wiring::{
    budget_note, correlated_budget, correlator, correlator_config, cycle_options, pools,
    shipper_options, spool_options,
};

/// How long shutdown waits for the threads before it syncs the spool and exits anyway. A query
/// in flight ends within `statement_timeout`, a request within the listener timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// How often the log thread polls the log file.
const LOG_POLL: Duration = Duration::from_secs(1);

/// The same error is logged again at most this often (it is counted every time).
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(300);

/// Appends the correlator's due records (taken out first: the lock is never held while
/// appending).
fn append_due(ctx: &Context, corr: &SharedCorrelator, all: bool) {
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
    started: Instant,
    /// How long appends must keep working before a streak of failures ends: two intervals, at
    /// least [`STREAK_QUIET_MIN`] (a failure that recurs once per interval is one streak).
    streak_quiet: Duration,
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

    fn set_pause_file(&self, file: Option<PathBuf>) {
        *self.pause_file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    fn ok(&self, name: &'static str) {
        let mut st = self.lock();
        let c = st.collectors.entry(name).or_default();
        c.n_ok += 1;
        if c.last_error.take().is_some() {
            log::info!("{name}: working again");
        }
    }

    fn failed(&self, name: &'static str, error: String) {
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

    fn skipped(&self, name: &'static str) {
        self.lock().collectors.entry(name).or_default().n_skipped += 1;
    }

    fn overran(&self, name: &str, n: u64) {
        self.lock().overruns += n;
        log::warn!("{name} cycle overran its period: skipped {n} cycle(s) instead of overlapping");
    }

    fn add_db_time(&self, d: Duration) {
        self.lock().db_time += d;
    }

    fn take_db_time(&self) -> Duration {
        std::mem::take(&mut self.lock().db_time)
    }

    /// Counts a failed append; true for the first of a streak (the one to log).
    fn append_failed(&self) -> bool {
        let mut st = self.lock();
        st.n_append_errors += 1;
        st.append_streak += 1;
        st.last_append_failure = Some(Instant::now());
        st.append_streak == 1
    }

    /// Ends a streak of failed appends once appends have worked for `streak_quiet`: how many
    /// failed in it, if a streak ended now.
    fn append_worked(&self) -> Option<u64> {
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
    fn counters(&self) -> (u64, bool, u64) {
        let st = self.lock();
        (st.overruns, st.paused, st.n_append_errors)
    }

    fn collectors_json(&self) -> Json {
        let st = self.lock();
        let mut out = Json::object();
        for (name, c) in &st.collectors {
            out.push(
                name,
                Json::object()
                    .field("ok", c.n_ok)
                    .field("errors", c.n_errors)
                    .field("skipped", c.n_skipped)
                    .field("last_error", c.last_error.clone()),
            );
        }
        out
    }
}

/// Everything the threads share.
pub struct Context {
    /// The configuration the agent started with (runtime changes: see [`reload`]).
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
}

impl Context {
    /// Runs one database step of collector `name`: skipped while paused or backed off; errors
    /// are counted, logged (not repeatedly) and end the step, never the thread.
    fn db_step<T>(
        &self,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        self.db_step_on(&self.pool, name, backoff, f)
    }

    /// [`Context::db_step`] on a given pool (the extra databases have their own).
    fn db_step_on<T>(
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

    /// Appends payloads to the spool; returns false when any append failed (the spool counts and
    /// reports the loss).
    fn append_all(&self, payloads: &[Payload]) -> bool {
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

/// The agent's own cost and state, as `data.agent` of `system_metrics` (the spool adds version,
/// host, seq and collected_at).
pub fn agent_block(
    ctx: &Context,
    ship: &StatusHandle,
    cpu_interval: Duration,
    db_time: Duration,
) -> Json {
    let usage = selfstats::usage();
    let (overruns, paused, append_errors) = ctx.health.counters();
    let collectors = ctx.health.collectors_json();
    let pool = ctx.pool.stats();
    let spool = ctx.spool.stats();
    let shipped = ship.get();
    Json::object()
        .field("pid", std::process::id())
        .field("uptime_s", ctx.health.started.elapsed().as_secs_f64())
        .field("rss_bytes", usage.rss_bytes)
        .field("peak_rss_bytes", usage.peak_rss_bytes)
        .field("cpu_seconds", usage.cpu_total().as_secs_f64())
        .field("cpu_seconds_interval", cpu_interval.as_secs_f64())
        .field("db_time_ms_interval", db_time.as_secs_f64() * 1000.0)
        .field("connections_held", ctx.connections_held())
        .field(
            "pool",
            Json::object()
                .field("max", pool.max)
                .field("idle", pool.idle)
                .field("in_use", pool.in_use)
                .field("waits", pool.waits)
                .field("acquire_timeouts", pool.acquire_timeouts)
                .field("connections_opened", pool.connections_opened)
                .field("connections_replaced", pool.connections_replaced)
                .field("connect_failures", pool.connect_failures)
                .field("connects_blocked", pool.connects_blocked),
        )
        .field(
            "spool",
            Json::object()
                .field("records_pending", spool.n_pending)
                .field("bytes", spool.bytes)
                .field("segments", spool.n_segments)
                .field("records_dropped", spool.lost.records)
                .field("dead_letters", spool.n_dead_letters)
                .field("append_errors", append_errors),
        )
        .field(
            "shipper",
            Json::object()
                .field("breaker", shipped.breaker.name())
                .field("sent", shipped.stats.n_sent)
                .field("failures", shipped.stats.n_failures)
                .field("rate_limited", shipped.stats.n_rate_limited)
                .field("config_errors", shipped.stats.n_config_errors)
                .field("last_success_at", shipped.last_success_at)
                .field("last_error", shipped.last_error),
        )
        .field("collectors", collectors)
        .field("overruns", overruns)
        .field("paused", paused)
}

/// How often the status thread looks at the shipper and the spool (two mutex reads).
const STATUS_POLL: Duration = Duration::from_millis(250);

/// Logs a failed status write once per streak of failures, and the recovery.
#[derive(Default)]
struct WriteStreak(Option<String>);

impl WriteStreak {
    fn record<E: std::fmt::Display>(&mut self, what: &str, result: Result<(), E>) {
        match (result, self.0.is_some()) {
            (Ok(()), true) => {
                log::info!("{what}: writing works again");
                self.0 = None;
            }
            (Ok(()), false) => {}
            (Err(e), false) => {
                log::warn!("{what}: {e} (logged once until it works again)");
                self.0 = Some(e.to_string());
            }
            (Err(e), true) => self.0 = Some(e.to_string()),
        }
    }
}

/// The status thread: rewrites the status file when the breaker changes state and when a
/// backlog has drained (logging how long it took), otherwise every few seconds.
fn run_status(ctx: &Context, ship: &StatusHandle) {
    let mut watch = status::StatusWatch::new();
    let mut streak = WriteStreak::default();
    loop {
        let shipped = ship.get();
        let o = status::Observation {
            breaker: shipped.breaker.name(),
            pending: ctx.spool.stats().n_pending,
            failing: shipped.last_error.is_some()
                || !matches!(shipped.breaker, crate::ship::breaker::State::Closed { .. }),
            sent: shipped.stats.n_sent,
        };
        let now = Instant::now();
        let d = watch.observe(o, now);
        if let Some(line) = d.log {
            log::info!("{line}");
        }
        if d.write {
            streak.record(&status_what(ctx), write_status(ctx, ship));
            watch.written(o, now);
        }
        if ctx.shutdown.wait(STATUS_POLL) {
            break;
        }
    }
}

fn status_what(ctx: &Context) -> String {
    format!(
        "status file in {}",
        ctx.config.collection.state_dir.display()
    )
}

fn write_status(ctx: &Context, ship: &StatusHandle) -> std::io::Result<()> {
    let spool = ctx.spool.stats();
    let shipped = ship.get();
    let (_, paused, _) = ctx.health.counters();
    let mut lines: Vec<(&str, String)> = vec![
        ("pid", std::process::id().to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "uptime_s",
            ctx.health.started.elapsed().as_secs().to_string(),
        ),
        ("paused", paused.to_string()),
        ("spool_records_pending", spool.n_pending.to_string()),
        ("spool_bytes", spool.bytes.to_string()),
        ("spool_records_dropped", spool.lost.records.to_string()),
        ("dead_letters", spool.n_dead_letters.to_string()),
        ("breaker", shipped.breaker.name().to_string()),
        ("sent", shipped.stats.n_sent.to_string()),
        (
            "last_success_at",
            shipped
                .last_success_at
                .map_or("never".into(), |t| format!("{t} (unix seconds)")),
        ),
        (
            "last_send_error",
            shipped.last_error.unwrap_or_else(|| "none".into()),
        ),
        ("connections_held", ctx.connections_held().to_string()),
    ];
    let collectors = ctx.health.lock().collectors.clone();
    let errors: Vec<String> = collectors
        .iter()
        .filter_map(|(n, c)| c.last_error.as_ref().map(|e| format!("{n}: {e}")))
        .collect();
    lines.push((
        "collector_errors",
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        },
    ));
    status::write(&ctx.config.collection.state_dir, &lines)
}

fn run_sampler(ctx: &Context, corr: &SharedCorrelator) {
    let cfg = &ctx.config.collection;
    let mut sampler = ActivitySampler::new(wiring::activity_config(&ctx.config));
    let mut watch = Watch::new(&ctx.config.spike, cfg.sample_interval, Some(&cfg.state_dir));
    let deep_options = wiring::deep_options(&ctx.config);
    // The summary (with the interval's timeline and load attribution) goes to the spool at
    // once; the requests' statements wait in the correlator for their log lines (a short
    // grace), and their records are appended when due.
    let close = |sampler: &mut ActivitySampler, watch: &mut Watch| {
        let (mut summary, statements) = sampler.finish_interval_parts();
        watch.finish_interval(&mut summary);
        let counts = corr.lock().unwrap_or_else(|p| p.into_inner()).take_counts();
        summary.data.push("correlated", counts);
        ctx.append_all(std::slice::from_ref(&summary));
        let window = |k| {
            summary.data.get(k).and_then(|v| match v {
                Json::Float(f) => Some(*f),
                _ => None,
            })
        };
        corr.lock().unwrap_or_else(|p| p.into_inner()).add_sampled(
            statements,
            window("interval_start"),
            window("interval_end"),
            crate::payload::unix_now(),
        );
    };
    let mut backoff = Backoff::default();
    let start = Instant::now();
    let mut bursting = false;
    let mut samples = Ticker::new(start, cfg.sample_interval);
    let mut summaries = Ticker::new(start, cfg.interval);
    let mut next_summary = summaries.next_after(start).at;
    let mut at = samples.next_after(start).at;
    loop {
        if ctx.shutdown.wait_until(at) {
            break;
        }
        if ctx
            .db_step("activity", &mut backoff, |c| sampler.sample(c))
            .is_some()
        {
            // Spike reports go to the spool at once, not at the interval's end.
            let snapshot = sampler.take_spike_snapshot();
            ctx.append_all(&watch.after_sample(snapshot, &mut |req| {
                ctx.db_step("spike_deep", &mut Backoff::default(), |c| {
                    crate::spike::deep::run(c, &deep_options, req)
                })
            }));
        }
        let now = Instant::now();
        if now >= next_summary {
            close(&mut sampler, &mut watch);
            next_summary = summaries.next_after(now).at;
        }
        append_due(ctx, corr, false);
        let period = watch.next_period();
        let was_bursting = std::mem::replace(&mut bursting, period < cfg.sample_interval);
        at = if bursting {
            (at + period).max(Instant::now())
        } else {
            let tick = samples.next_after(Instant::now());
            // After a burst the normal boundaries it passed were not missed.
            if tick.skipped > 0 && !was_bursting {
                ctx.health.overran("activity sampler", tick.skipped);
            }
            tick.at
        };
    }
    ctx.append_all(&watch.stop(&mut |req| {
        ctx.db_step("spike_deep", &mut Backoff::default(), |c| {
            crate::spike::deep::run(c, &deep_options, req)
        })
    }));
    close(&mut sampler, &mut watch);
    append_due(ctx, corr, true);
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

fn run_interval(ctx: &Context, ship: &StatusHandle) {
    let mut options = cycle_options(&ctx.config);
    options.statements.plans = Some(ctx.plans.clone());
    let mut cycle = IntervalCycle::new(options);
    cycle.prime(ctx);
    let mut cpu_before = selfstats::usage().cpu_total();
    let mut ticker = Ticker::new(Instant::now(), ctx.config.collection.interval);
    loop {
        let tick = ticker.next_after(Instant::now());
        if tick.skipped > 0 {
            ctx.health.overran("interval collection", tick.skipped);
        }
        if ctx.shutdown.wait_until(tick.at) {
            break;
        }
        let payloads = cycle.run(ctx, || {
            let cpu_now = selfstats::usage().cpu_total();
            let block = agent_block(
                ctx,
                ship,
                cpu_now.saturating_sub(cpu_before),
                ctx.health.take_db_time(),
            );
            cpu_before = cpu_now;
            block
        });
        ctx.append_all(&payloads);
        if let Err(e) = ctx.spool.sync() {
            log::error!("spool sync failed: {e}");
        }
        selfstats::release_free_memory();
    }
}

/// Finds the server log (asking the server for its settings, or when it cannot be asked, using
/// the settings it gave before) and opens a feed on it.
fn open_log_feed(
    ctx: &Context,
    backoff: &mut Backoff,
    last_reason: &mut Option<String>,
) -> Option<LogFeed> {
    let (log_path, state_dir) = (
        ctx.config.collection.log_path.as_deref(),
        &ctx.config.collection.state_dir,
    );
    let asked = ctx.db_step("logtail", backoff, |c| {
        logtail::discover_from_server(c, log_path, Some(state_dir))
            .map_err(CollectError::query("logtail", "settings"))
    });
    // The server may be down (or paused): the settings it gave at an earlier start still find
    // the log, so the log keeps flowing while the database is unreachable.
    let found = match asked {
        Some(found) => found,
        None => {
            let cached = logtail::discover_from_cache(state_dir, log_path)?;
            log::info!(
                "the server's log settings are not available now: using those it gave before"
            );
            cached
        }
    };
    match found {
        Ok(source) => Some(wiring::log_feed(
            &source,
            &ctx.config,
            ctx.plans.clone(),
            Instant::now(),
        )),
        Err(why) => {
            if last_reason.as_deref() != Some(why.0.as_str()) {
                log::warn!("no server log is tailed: {}", why.0);
                *last_reason = Some(why.0);
            }
            None
        }
    }
}

fn run_logtail(ctx: &Context, corr: &SharedCorrelator) {
    let mut last_reason = None;
    // One backoff across the attempts, so a settings query that keeps timing out is skipped.
    let mut backoff = Backoff::default();
    let mut feed = loop {
        if let Some(feed) = open_log_feed(ctx, &mut backoff, &mut last_reason) {
            break feed;
        }
        if ctx.shutdown.wait(ctx.config.collection.interval) {
            return;
        }
    };
    feed.route_correlated();
    // Correlated statements go to the correlator as soon as they are read (they also stay in
    // the summary payloads, which are what the log position commits).
    let hand_over = |feed: &mut LogFeed| {
        let statements: Vec<LoggedStatement> = feed
            .take_correlated()
            .into_iter()
            .filter_map(LoggedStatement::from_log_json)
            .collect();
        if !statements.is_empty() {
            corr.lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_logged(statements, crate::payload::unix_now());
        }
    };
    // A flush whose payloads could not all be appended is retried as a whole before the feed is
    // polled again: committing a later position would skip its entries.
    let mut pending = None;
    let mut commit_streak = WriteStreak::default();
    loop {
        let stopped = ctx.shutdown.wait(LOG_POLL);
        // Poll until the feed has nothing more to hand out, so a burst is read as fast as it is
        // written (the feed's budget bounds what is shipped; every flush is appended and
        // committed before the next read, so memory stays bounded).
        loop {
            let now = Instant::now();
            let flush = match pending.take() {
                Some(f) => Some(f),
                None if stopped => Some(feed.flush(now)),
                None => feed.poll(now),
            };
            hand_over(&mut feed);
            let Some(flush) = flush else { break };
            if !ctx.append_all(&flush.payloads) {
                if !stopped {
                    pending = Some(flush);
                }
                break;
            }
            commit_streak.record("logtail: saving the log position", feed.commit(&flush));
            if stopped || ctx.shutdown.is_stopped() {
                break;
            }
        }
        if stopped {
            break;
        }
    }
    // The sampler may have taken its last records before these statements came: whichever
    // thread stops last ships what is left.
    append_due(ctx, corr, true);
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

/// Applies a reloaded configuration: what can change at runtime changes (log level, log file,
/// pause file); the rest is named and needs a restart. An invalid file changes nothing.
///
/// `log_file` is the log file in use now (a reload may have switched it): SIGHUP reopens that one
/// (for logrotate), never the one the agent started with.
fn reload(
    path: Option<&Path>,
    running_raw: &config::RawConfig,
    log_file: &mut Option<PathBuf>,
    health: &AgentHealth,
) {
    if let Some(file) = log_file.as_ref() {
        if let Err(e) = logging::reopen(file) {
            log::error!("cannot reopen the log file {}: {e}", file.display());
        }
    }
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            log::error!("reload rejected, the running configuration stays in force: {e}");
            return;
        }
    };
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    logging::set_level(loaded.config.log.level);
    health.set_pause_file(loaded.config.collection.pause_file.clone());
    if loaded.config.log.file != *log_file {
        if let Some(file) = &loaded.config.log.file {
            if let Err(e) = logging::reopen(file) {
                log::error!("cannot open the new log file {}: {e}", file.display());
            }
        }
        log_file.clone_from(&loaded.config.log.file);
    }
    let runtime = [
        ("log", "level"),
        ("log", "file"),
        ("collection", "pause_file"),
    ];
    let needs_restart: Vec<String> = config::KEYS
        .iter()
        .filter(|k| !runtime.contains(&(k.section, k.key)))
        .filter(|k| loaded.raw.get(k.section, k.key).0 != running_raw.get(k.section, k.key).0)
        .map(|k| format!("[{}] {}", k.section, k.key))
        .collect();
    if needs_restart.is_empty() {
        log::info!("configuration reloaded");
    } else {
        log::warn!(
            "configuration reloaded; these changes take effect after a restart: {}",
            needs_restart.join(", ")
        );
    }
}

/// Runs the agent until a stop request. Returns the exit status.
pub fn run(
    config_path: Option<&Path>,
    loaded: config::Loaded,
    pool: Pool,
    extra_pools: Vec<(String, Pool)>,
    spool: Arc<Spool>,
    shipper: crate::ship::Shipper,
    shutdown: Shutdown,
) -> i32 {
    let ship_status = shipper.status_handle();
    let ctx = Arc::new(Context {
        health: AgentHealth::new(
            loaded.config.collection.pause_file.clone(),
            loaded.config.collection.interval,
        ),
        config: loaded.config.clone(),
        pool,
        extra_pools,
        spool,
        shutdown: shutdown.clone(),
        plans: PlanStore::default(),
    });
    let mut threads = Vec::new();
    let spawned = (|| -> std::io::Result<()> {
        let corr = correlator(&ctx.config);
        let (c, k) = (ctx.clone(), corr.clone());
        threads.push(spawn("sampler", move || run_sampler(&c, &k))?);
        let (c, s) = (ctx.clone(), ship_status.clone());
        threads.push(spawn("interval", move || run_interval(&c, &s))?);
        let (c, k) = (ctx.clone(), corr);
        threads.push(spawn("logtail", move || run_logtail(&c, &k))?);
        let stop = shutdown.clone();
        let mut shipper = shipper;
        threads.push(spawn("shipper", move || shipper.run(&stop))?);
        let (c, s) = (ctx.clone(), ship_status.clone());
        threads.push(spawn("status", move || run_status(&c, &s))?);
        Ok(())
    })();
    if let Err(e) = spawned {
        log::error!("cannot start a thread: {e}");
        shutdown.stop();
    }
    log::info!(
        "running: sampling every {} ms, collecting every {} s, spool {}",
        ctx.config.collection.sample_interval.as_millis(),
        ctx.config.collection.interval.as_secs(),
        ctx.config.buffer.path.display()
    );
    let (budget, budget_warning) = budget_note(&ctx.config);
    log::info!("{budget}");
    if let Some(w) = budget_warning {
        log::warn!("{w}");
    }
    let mut seen = 0;
    let mut log_file = ctx.config.log.file.clone();
    while let Event::Reload(n) = shutdown.wait_event(seen) {
        seen = n;
        reload(config_path, &loaded.raw, &mut log_file, &ctx.health);
    }
    // The idle shipper waits on the spool, not on the stop token: wake it.
    ctx.spool.wake_waiters();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stuck: Vec<String> = threads
        .iter()
        .filter(|t| !t.is_finished())
        .map(|t| t.thread().name().unwrap_or("?").to_string())
        .collect();
    if !stuck.is_empty() {
        log::warn!(
            "exiting without waiting for: {} (a query or request still in flight)",
            stuck.join(", ")
        );
    }
    if let Err(e) = ctx.spool.sync() {
        log::error!("spool sync at shutdown failed: {e}");
    }
    if let Err(e) = write_status(&ctx, &ship_status) {
        log::warn!("{}: {e}", status_what(&ctx));
    }
    ctx.pool.close_idle();
    for (_, p) in &ctx.extra_pools {
        p.close_idle();
    }
    log::info!("stopped");
    crate::cli::EXIT_OK
}
