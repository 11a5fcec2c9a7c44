//! The running agent: threads with one job each around the spool.
//!
//! - `sampler`: samples pg_stat_activity every `sample_interval` and appends the activity summary
//!   (with the lock trees and correlated payloads) at every interval boundary.
//! - `interval`: at every interval boundary collects pg_stat_statements deltas, the server-health
//!   figures and the host figures (with the agent's own cost in `data.agent`), appends them,
//!   syncs the spool and rewrites the status file.
//! - `logtail`: follows the server log and appends `pg_log` payloads, committing the log position
//!   only after the append.
//! - `shipper`: sends what is in the spool (see `ship`).
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

use crate::collect::activity::{ActivityConfig, ActivitySampler};
use crate::collect::host::{HostCollector, WatchedPath};
use crate::collect::statements::{StatementsCollector, StatementsConfig};
use crate::collect::{Backoff, CollectError};
use crate::config::{self, Config};
use crate::health::{Health, HealthOptions};
use crate::json::Json;
use crate::logtail::{self, LogFeed};
use crate::payload::{unix_now, Payload, Source};
use crate::pool::{Pool, PooledClient};
use crate::schedule::Ticker;
use crate::ship::StatusHandle;
use crate::shutdown::{Event, Shutdown};
use crate::spool::Spool;
use crate::{logging, selfstats, status};

/// How long shutdown waits for the threads before it syncs the spool and exits anyway. A query
/// in flight ends within `statement_timeout`, a request within the listener timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// How often the log thread polls the log file.
const LOG_POLL: Duration = Duration::from_secs(1);

/// The same error is logged again at most this often (it is counted every time).
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(300);

/// The pools the daemon uses: the main database's, with the connections the extra databases
/// (`[collection] databases`) do not take, and one single-connection pool per extra database.
/// Together they never exceed `pool_max_size`, and every pool's guard counts all agent sessions.
pub fn pools(cfg: &Config) -> (Pool, Vec<(String, Pool)>) {
    let cap = cfg.database.pool_max_size;
    let extra: Vec<(String, Pool)> = cfg
        .collection
        .databases
        .iter()
        .map(|name| {
            let db = config::DatabaseConfig {
                dbname: name.clone(),
                ..cfg.database.clone()
            };
            (name.clone(), Pool::with_limits(&db, 1, cap))
        })
        .collect();
    let main = Pool::with_limits(&cfg.database, cap.saturating_sub(extra.len()).max(1), cap);
    (main, extra)
}

/// Correlated payloads each of the two producers (the activity sampler and the log tailer) may
/// add per interval. The listener takes one payload per request and the shipper sends at most
/// `max_requests_per_minute`; the collectors' steady output is held to half of that (less the
/// four summary payloads of an interval), so a backlog after an outage always drains. What is
/// over the budget stays inside the summaries, never lost.
pub fn correlated_budget(max_requests_per_minute: u32, interval: Duration) -> usize {
    let per_interval =
        (f64::from(max_requests_per_minute) * interval.as_secs_f64() / 60.0) as usize;
    (per_interval / 2).saturating_sub(4) / 2
}

/// The spool options for the `[buffer]` configuration.
pub fn spool_options(buffer: &config::BufferConfig) -> crate::spool::SpoolOptions {
    let mut o = crate::spool::SpoolOptions::new(&buffer.path);
    o.max_bytes = buffer.max_size_bytes;
    o
}

/// The shipper options for the `[listener]` configuration.
pub fn shipper_options(l: &config::ListenerConfig) -> crate::ship::ShipperOptions {
    let mut o = crate::ship::ShipperOptions::new(&l.url, l.api_key.expose(), &l.project_id);
    o.ca_file = l.ca_file.clone();
    o.timeout = l.timeout;
    o.connect_timeout = l.timeout.min(o.connect_timeout);
    o.max_requests_per_minute = l.max_requests_per_minute;
    o.breaker_failures = l.breaker_failures;
    o.breaker_reset = l.breaker_reset;
    o
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
}

/// What the agent knows about its own work, shared by the threads.
#[derive(Debug)]
pub struct AgentHealth {
    started: Instant,
    pause_file: Mutex<Option<PathBuf>>,
    state: Mutex<HealthState>,
}

impl AgentHealth {
    /// Fresh bookkeeping; `pause_file` is the emergency brake.
    pub fn new(pause_file: Option<PathBuf>) -> AgentHealth {
        AgentHealth {
            started: Instant::now(),
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

    fn append_failed(&self) {
        self.lock().n_append_errors += 1;
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
        if self.health.paused() || !backoff.should_run() {
            self.health.skipped(name);
            return None;
        }
        let mut client = match self.pool.acquire() {
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

    /// Appends payloads to the spool; returns false when any append failed (the spool counts and
    /// reports the loss).
    fn append_all(&self, payloads: &[Payload]) -> bool {
        let mut all = true;
        for p in payloads {
            if let Err(e) = self.spool.append(p) {
                all = false;
                self.health.append_failed();
                log::error!("spool: {} payload not stored: {e}", p.source.as_str());
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
        .field("connections_held", pool.size)
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

fn write_status(ctx: &Context, ship: &StatusHandle) {
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
        ("connections_held", ctx.pool.stats().size.to_string()),
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
    if let Err(e) = status::write(&ctx.config.collection.state_dir, &lines) {
        log::warn!(
            "cannot write the status file in {}: {e}",
            ctx.config.collection.state_dir.display()
        );
    }
}

fn run_sampler(ctx: &Context) {
    let cfg = &ctx.config.collection;
    let budget = correlated_budget(ctx.config.listener.max_requests_per_minute, cfg.interval);
    let mut sampler = ActivitySampler::new(ActivityConfig {
        max_correlated: budget,
        ..ActivityConfig::from_collection(cfg)
    });
    let mut backoff = Backoff::default();
    let start = Instant::now();
    let mut samples = Ticker::new(start, cfg.sample_interval);
    let mut summaries = Ticker::new(start, cfg.interval);
    let mut next_summary = summaries.next_after(start).at;
    loop {
        let tick = samples.next_after(Instant::now());
        if tick.skipped > 0 {
            ctx.health.overran("activity sampler", tick.skipped);
        }
        if ctx.shutdown.wait_until(tick.at) {
            break;
        }
        ctx.db_step("activity", &mut backoff, |c| sampler.sample(c));
        let now = Instant::now();
        if now >= next_summary {
            ctx.append_all(&sampler.finish_interval());
            next_summary = summaries.next_after(now).at;
        }
    }
    ctx.append_all(&sampler.finish_interval());
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

fn run_interval(ctx: &Context, ship: &StatusHandle) {
    let cfg = &ctx.config.collection;
    let mut statements = StatementsCollector::new(StatementsConfig::from_collection(cfg));
    let mut health = Health::new(HealthOptions {
        top_n: cfg.health_top_n,
        slow_every: cfg.health_slow_interval,
        tables_budget: cfg.health_tables_budget,
    });
    let mut host = HostCollector::new();
    let mut paths = vec![WatchedPath {
        label: "spool".into(),
        path: ctx.config.buffer.path.clone(),
    }];
    let (mut b_paths, mut b_statements, mut b_health) =
        (Backoff::default(), Backoff::default(), Backoff::default());
    let mut have_server_paths = false;
    host.collect(&paths);
    let mut cpu_before = selfstats::usage().cpu_total();
    let mut ticker = Ticker::new(Instant::now(), cfg.interval);
    loop {
        let tick = ticker.next_after(Instant::now());
        if tick.skipped > 0 {
            ctx.health.overran("interval collection", tick.skipped);
        }
        if ctx.shutdown.wait_until(tick.at) {
            break;
        }
        if !have_server_paths {
            if let Some(found) = ctx.db_step("settings", &mut b_paths, |c| server_paths(c)) {
                paths.extend(found);
                have_server_paths = true;
            }
        }
        if let Some(Some(p)) =
            ctx.db_step("statements", &mut b_statements, |c| statements.collect(c))
        {
            ctx.append_all(&[p]);
        }
        // Health reports its own failures inside the block (it never fails as a whole).
        let mut postgres = ctx.db_step("health", &mut b_health, |c| {
            Ok::<_, CollectError>(health.collect(c, Instant::now()))
        });
        if let Some(block) = postgres.as_mut().filter(|_| !ctx.extra_pools.is_empty()) {
            let others: Vec<Json> = ctx
                .extra_pools
                .iter()
                .map(|(name, pool)| match pool.acquire() {
                    Ok(mut c) => health.collect_database(name, &mut c, Instant::now()),
                    Err(e) => Json::object().field("database", name.as_str()).field(
                        "errors",
                        Json::Array(vec![Json::object()
                            .field("collector", "health")
                            .field("error", e.to_string())]),
                    ),
                })
                .collect();
            block.push("other_databases", Json::Array(others));
        }
        if let Some(mut data) = host.collect(&paths) {
            if let Some(block) = postgres {
                data.push("postgres", block);
            }
            let cpu_now = selfstats::usage().cpu_total();
            let agent = agent_block(
                ctx,
                ship,
                cpu_now.saturating_sub(cpu_before),
                ctx.health.take_db_time(),
            );
            cpu_before = cpu_now;
            data.push("agent", agent);
            ctx.append_all(&[Payload {
                source: Source::SystemMetrics,
                collected_at: unix_now(),
                correlation_id: None,
                data,
            }]);
        }
        if let Err(e) = ctx.spool.sync() {
            log::error!("spool sync failed: {e}");
        }
        write_status(ctx, ship);
        selfstats::release_free_memory();
    }
}

/// Finds the server log (asking the server for its settings, or when it cannot be asked, using
/// the settings it gave before) and opens a feed on it.
fn open_log_feed(ctx: &Context, last_reason: &mut Option<String>) -> Option<LogFeed> {
    let (log_path, state_dir) = (
        ctx.config.collection.log_path.as_deref(),
        &ctx.config.collection.state_dir,
    );
    let mut backoff = Backoff::default();
    let asked = ctx.db_step("logtail", &mut backoff, |c| {
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
        Ok(source) => {
            let budget = correlated_budget(
                ctx.config.listener.max_requests_per_minute,
                ctx.config.collection.interval,
            );
            Some(LogFeed::from_source(
                &source,
                &ctx.config.collection,
                budget,
                Instant::now(),
            ))
        }
        Err(why) => {
            if last_reason.as_deref() != Some(why.0.as_str()) {
                log::warn!("no server log is tailed: {}", why.0);
                *last_reason = Some(why.0);
            }
            None
        }
    }
}

fn run_logtail(ctx: &Context) {
    let mut last_reason = None;
    let mut feed = loop {
        if let Some(feed) = open_log_feed(ctx, &mut last_reason) {
            break feed;
        }
        if ctx.shutdown.wait(ctx.config.collection.interval) {
            return;
        }
    };
    // A flush whose payloads could not all be appended is retried as a whole before the feed is
    // polled again: committing a later position would skip its entries.
    let mut pending = None;
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
            let Some(flush) = flush else { break };
            if !ctx.append_all(&flush.payloads) {
                if !stopped {
                    pending = Some(flush);
                }
                break;
            }
            if let Err(e) = feed.commit(&flush) {
                log::warn!("logtail: cannot save the log position: {e}");
            }
            if stopped || ctx.shutdown.is_stopped() {
                break;
            }
        }
        if stopped {
            break;
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

/// Applies a reloaded configuration: what can change at runtime changes (log level, log file,
/// pause file); the rest is named and needs a restart. An invalid file changes nothing.
fn reload(
    path: Option<&Path>,
    running: &Config,
    running_raw: &config::RawConfig,
    health: &AgentHealth,
) {
    if let Some(file) = &running.log.file {
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
    if loaded.config.log.file != running.log.file {
        if let Some(file) = &loaded.config.log.file {
            if let Err(e) = logging::reopen(file) {
                log::error!("cannot open the new log file {}: {e}", file.display());
            }
        }
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
        health: AgentHealth::new(loaded.config.collection.pause_file.clone()),
        config: loaded.config.clone(),
        pool,
        extra_pools,
        spool,
        shutdown: shutdown.clone(),
    });
    let mut threads = Vec::new();
    let spawned = (|| -> std::io::Result<()> {
        let c = ctx.clone();
        threads.push(spawn("sampler", move || run_sampler(&c))?);
        let (c, s) = (ctx.clone(), ship_status.clone());
        threads.push(spawn("interval", move || run_interval(&c, &s))?);
        let c = ctx.clone();
        threads.push(spawn("logtail", move || run_logtail(&c))?);
        let stop = shutdown.clone();
        let mut shipper = shipper;
        threads.push(spawn("shipper", move || shipper.run(&stop))?);
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
    write_status(&ctx, &ship_status);
    let mut seen = 0;
    while let Event::Reload(n) = shutdown.wait_event(seen) {
        seen = n;
        reload(config_path, &ctx.config, &loaded.raw, &ctx.health);
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
    write_status(&ctx, &ship_status);
    ctx.pool.close_idle();
    for (_, p) in &ctx.extra_pools {
        p.close_idle();
    }
    log::info!("stopped");
    crate::cli::EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_correlated_budget_keeps_collectors_under_half_the_pace() {
        // Defaults: 60 requests a minute, 60 s interval: 30 for the collectors, 4 summaries.
        assert_eq!(correlated_budget(60, Duration::from_secs(60)), 13);
        for (pace, secs) in [(60, 60), (100, 60), (60, 10), (10, 60), (6000, 1)] {
            let interval = Duration::from_secs(secs);
            let per_interval = pace as f64 * secs as f64 / 60.0;
            let worst = 4 + 2 * correlated_budget(pace, interval);
            assert!(
                worst as f64 <= per_interval / 2.0 + 4.0,
                "pace {pace}, {secs} s: {worst}"
            );
        }
        assert_eq!(correlated_budget(60, Duration::from_secs(10)), 0);
    }
}
