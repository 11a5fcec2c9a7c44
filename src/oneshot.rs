//! One-shot modes: `--once` (one full collection, spooled and shipped, then exit) and
//! `--dry-run` (one collection printed to stdout; nothing spooled or sent).
//!
//! One collection covers a short window: baselines are taken, the agent waits one sample
//! interval (at least a second), then reads again, so deltas (CPU, statements, disks) mean
//! something. The collectors keep their baselines and the log position in a throwaway state
//! directory, so a one-shot run never disturbs a running agent's deltas or its place in the log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli;
use crate::collect::activity::{ActivityConfig, ActivitySampler};
use crate::collect::host::{HostCollector, WatchedPath};
use crate::collect::statements::{StatementsCollector, StatementsConfig};
use crate::config::Config;
use crate::daemon;
use crate::json::Json;
use crate::logtail::{self, LogFeed};
use crate::payload::{
    envelope_body, render_record, unix_now, AgentInfo, AgentStamp, Payload, Source,
};
use crate::pool::Pool;
use crate::ship::{Shipper, StopSignal};
use crate::shutdown::Shutdown;
use crate::spool::Spool;

/// How long `--once` waits for the listener to take what it collected.
const ONCE_SHIP_DEADLINE: Duration = Duration::from_secs(60);

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let dir =
            std::env::temp_dir().join(format!("bitville-pg-agent-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_feed(cfg: &Config, client: &mut postgres::Client) -> Option<LogFeed> {
    match logtail::discover_from_server(client, cfg.collection.log_path.as_deref(), None).ok()? {
        Ok(source) => {
            let budget = daemon::correlated_budget(
                cfg.listener.max_requests_per_minute,
                cfg.collection.interval,
            );
            Some(LogFeed::from_source(
                &source,
                &cfg.collection,
                budget,
                Instant::now(),
            ))
        }
        Err(why) => {
            log::warn!("no server log is tailed: {}", why.0);
            None
        }
    }
}

/// Collects once over one sample interval and returns the payloads (collector errors are
/// logged; what worked is returned).
pub fn collect(cfg: &Config, pool: &Pool) -> Result<Vec<Payload>, String> {
    let scratch = Scratch::new().map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let mut cfg = cfg.clone();
    cfg.collection.state_dir = scratch.0.clone();
    let window = cfg.collection.sample_interval.max(Duration::from_secs(1));
    let mut sampler = ActivitySampler::new(ActivityConfig {
        max_correlated: daemon::correlated_budget(
            cfg.listener.max_requests_per_minute,
            cfg.collection.interval,
        ),
        ..ActivityConfig::from_collection(&cfg.collection)
    });
    let mut statements =
        StatementsCollector::new(StatementsConfig::from_collection(&cfg.collection));
    let mut host = HostCollector::new();
    let mut paths = vec![WatchedPath {
        label: "spool".into(),
        path: cfg.buffer.path.clone(),
    }];
    let warn = |what: &str, e: &dyn std::fmt::Display| log::warn!("{what}: {e}");
    // The summary's load timeline and attribution; no flight recorder and no spike detection
    // (two samples have no baseline, and the load rule would fire on a busy host).
    let no_spikes = crate::config::SpikeConfig {
        min_active_sessions: u32::MAX,
        load_per_cpu: 0.0,
        ..cfg.spike.clone()
    };
    let mut watch = crate::spike::watch::Watch::new(&no_spikes, window, None);

    let mut client = pool.acquire().map_err(|e| e.to_string())?;
    match daemon::server_paths(&mut client) {
        Ok(found) => paths.extend(found),
        Err(e) => warn("host", &e),
    }
    host.collect(&paths);
    if let Err(e) = statements.collect(&mut client) {
        warn("statements", &e);
    }
    match sampler.sample(&mut client) {
        Ok(_) => drop(watch.after_sample(sampler.take_spike_snapshot(), &mut |_| None)),
        Err(e) => warn("activity", &e),
    }
    let mut feed = log_feed(&cfg, &mut client);
    if let Some(feed) = feed.as_mut() {
        // The first poll opens the log at its end: the window's entries are what follows.
        feed.poll(Instant::now());
    }
    drop(client);

    std::thread::sleep(window);

    let mut payloads = Vec::new();
    let mut client = pool.acquire().map_err(|e| e.to_string())?;
    match sampler.sample(&mut client) {
        Ok(_) => drop(watch.after_sample(sampler.take_spike_snapshot(), &mut |_| None)),
        Err(e) => warn("activity", &e),
    }
    let mut activity = sampler.finish_interval();
    if let Some(summary) = activity.first_mut() {
        watch.finish_interval(summary);
    }
    payloads.extend(activity);
    match statements.collect(&mut client) {
        Ok(Some(p)) => payloads.push(p),
        Ok(None) => {}
        Err(e) => warn("statements", &e),
    }
    drop(client);
    if let Some(mut data) = host.collect(&paths) {
        let usage = crate::selfstats::usage();
        data.push(
            "agent",
            Json::object()
                .field("pid", std::process::id())
                .field("rss_bytes", usage.rss_bytes)
                .field("cpu_seconds", usage.cpu_total().as_secs_f64())
                .field("mode", "once"),
        );
        payloads.push(Payload {
            source: Source::SystemMetrics,
            collected_at: unix_now(),
            correlation_id: None,
            data,
        });
    }
    if let Some(feed) = feed.as_mut() {
        // Read what the window added (a flush alone sends only what was read before).
        if let Some(flush) = feed.poll(Instant::now()) {
            payloads.extend(flush.payloads);
        }
        payloads.extend(feed.flush(Instant::now()).payloads);
    }
    Ok(payloads)
}

/// `--dry-run`: collect once and print every payload as the listener would receive it, one JSON
/// object per line.
pub fn dry_run(cfg: &Config, pool: &Pool) -> i32 {
    let payloads = match collect(cfg, pool) {
        Ok(p) => p,
        Err(e) => {
            log::error!("collection failed: {e}");
            return cli::EXIT_DATABASE;
        }
    };
    let agent = AgentInfo::current();
    for (i, p) in payloads.iter().enumerate() {
        let record = render_record(
            p,
            &AgentStamp {
                agent: &agent,
                seq: i as u64 + 1,
            },
        );
        println!("{}", envelope_body(&cfg.listener.project_id, &record));
    }
    log::info!(
        "dry run: {} payloads printed, nothing spooled or sent",
        payloads.len()
    );
    cli::EXIT_OK
}

/// Stops the shipper once the spool is drained, at the deadline, or on a signal.
struct UntilDrained<'a> {
    spool: &'a Spool,
    deadline: Instant,
    shutdown: &'a Shutdown,
}

impl StopSignal for UntilDrained<'_> {
    fn is_stopped(&self) -> bool {
        self.shutdown.is_stopped()
            || Instant::now() >= self.deadline
            || self.spool.stats().n_pending == 0
    }
}

/// `--once`: collect once, append to the spool (behind whatever is already queued), and ship
/// until the spool is empty or a minute has passed.
pub fn once(cfg: &Config, pool: &Pool, spool: Arc<Spool>, mut shipper: Shipper) -> i32 {
    let payloads = match collect(cfg, pool) {
        Ok(p) => p,
        Err(e) => {
            log::error!("collection failed: {e}");
            return cli::EXIT_DATABASE;
        }
    };
    let mut stored = 0;
    for p in &payloads {
        match spool.append(p) {
            Ok(_) => stored += 1,
            Err(e) => log::error!("spool: {} payload not stored: {e}", p.source.as_str()),
        }
    }
    if let Err(e) = spool.sync() {
        log::error!("spool sync failed: {e}");
    }
    log::info!(
        "collected {} payloads, {stored} spooled; shipping",
        payloads.len()
    );
    let shutdown = Shutdown::new();
    let stop = UntilDrained {
        spool: &spool,
        deadline: Instant::now() + ONCE_SHIP_DEADLINE,
        shutdown: &shutdown,
    };
    shipper.run(&stop);
    let left = spool.stats().n_pending;
    if left == 0 {
        log::info!("everything was delivered");
        cli::EXIT_OK
    } else {
        let last = shipper
            .status_handle()
            .get()
            .last_error
            .unwrap_or_else(|| "no error recorded".into());
        log::error!("{left} payloads are still in the spool (last error: {last}); the running agent will send them");
        cli::EXIT_FAILURE
    }
}

/// `--analyze-log FILE [--prefix P]`: what the parser understands of a log file.
pub fn analyze_log(file: &Path, prefix: Option<&str>) -> i32 {
    match logtail::analyze_log(file, None, prefix) {
        Ok(report) => {
            print!("{report}");
            cli::EXIT_OK
        }
        Err(e) => {
            eprintln!("bitville-pg-agent: {e}");
            cli::EXIT_FAILURE
        }
    }
}
