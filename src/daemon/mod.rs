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
//! Files: `context` ([`Context`] and the step runner every database step and append goes
//! through), `health` ([`AgentHealth`], the agent's bookkeeping), one file per thread body
//! (`sampler`, `interval`, `logtail`, `status`); this file spawns the threads, applies reloads and
//! stops. `Config` becomes component options only in [`crate::wiring`]; the agent's own report is
//! [`crate::agent_report::AgentReport`].
//!
//! Invariants:
//! - Collectors only append to the spool; they never wait for the shipper.
//! - Cycles run on fixed boundaries (`schedule::Ticker`) on one thread each, so two cycles of the
//!   same collector never overlap; an overrun skips the missed boundaries and says so.
//! - Every database query goes through the pool; while the pause file exists none is made.
//! - On stop, what was collected is appended and synced; the process exits within
//!   [`SHUTDOWN_GRACE`] even when the database or the listener hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config;
use crate::logtail::{EventStore, PlanStore};
use crate::pool::Pool;
use crate::shutdown::{Event, Shutdown};
use crate::spool::Spool;
use crate::{logging, wiring};

mod context;
mod health;
mod interval;
mod logtail;
mod sampler;
mod status;

pub use context::Context;
pub use health::AgentHealth;

/// The wiring's `Config` → options functions, under the paths `main`, `oneshot`, `selftest` and
/// the tests have always used.
pub use crate::wiring::{
    budget_note, correlated_budget, correlator, correlator_config, cycle_options, pools,
    shipper_options, spool_options,
};

/// How long shutdown waits for the threads before it syncs the spool and exits anyway. A query
/// in flight ends within `statement_timeout`, a request within the listener timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

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
        events: EventStore::default(),
    });
    let mut threads = Vec::new();
    let spawned = (|| -> std::io::Result<()> {
        let corr = wiring::correlator(&ctx.config);
        let (c, k) = (ctx.clone(), corr.clone());
        threads.push(spawn("sampler", move || sampler::run_sampler(&c, &k))?);
        let (c, s) = (ctx.clone(), ship_status.clone());
        threads.push(spawn("interval", move || interval::run_interval(&c, &s))?);
        let (c, k) = (ctx.clone(), corr);
        threads.push(spawn("logtail", move || logtail::run_logtail(&c, &k))?);
        let stop = shutdown.clone();
        let mut shipper = shipper;
        threads.push(spawn("shipper", move || shipper.run(&stop))?);
        let (c, s) = (ctx.clone(), ship_status.clone());
        threads.push(spawn("status", move || status::run_status(&c, &s))?);
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
    // The idle shipper waits on the spool and the status thread on the shipper, not on the
    // stop token: wake them.
    ctx.spool.wake_waiters();
    ship_status.wake_waiters();
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
    if let Err(e) = status::write_status(&ctx, &ship_status) {
        log::warn!("{}: {e}", status::status_what(&ctx));
    }
    ctx.pool.close_idle();
    for (_, p) in &ctx.extra_pools {
        p.close_idle();
    }
    log::info!("stopped");
    crate::cli::EXIT_OK
}
