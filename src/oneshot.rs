//! One-shot modes: `--once` (one full collection, spooled and shipped, then exit) and
//! `--dry-run` (one collection printed to stdout; nothing spooled or sent).
//!
//! One collection covers a short window: baselines are taken, the agent waits one sample
//! interval (at least a second), then reads again, so deltas (CPU, statements, disks) mean
//! something. The collectors keep their baselines and the log position in a throwaway state
//! directory, so a one-shot run never disturbs a running agent's deltas or its place in the log.
//!
//! Invariants: while the pause file exists no database query is made (host figures only);
//! `--once` exits 0 only when every record was acknowledged with 200.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli;
use crate::collect::activity::ActivitySampler;
use crate::collect::correlate::{Correlator, LoggedStatement};
use crate::collect::cycle::{DbSteps, IntervalCycle};
use crate::collect::{Backoff, CollectError};
use crate::config::Config;
use crate::json::Json;
use crate::logtail::{self, LogFeed};
use crate::payload::{envelope_body, render_record, unix_now, AgentInfo, AgentStamp, Payload};
use crate::pool::{Pool, PooledClient};
use crate::ship::{Shipper, StopSignal};
use crate::shutdown::Shutdown;
use crate::spool::Spool;
use crate::wiring;

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

fn log_feed(cfg: &Config, steps: &OneShotSteps) -> Option<LogFeed> {
    let discovered = steps.step(None, "logtail", &mut Backoff::default(), |c| {
        logtail::discover_from_server(c, cfg.collection.log_path.as_deref(), None)
            .map_err(CollectError::query("logtail", "settings"))
    })?;
    match discovered {
        Ok(source) => Some(wiring::log_feed(&source, cfg, Instant::now())),
        Err(why) => {
            log::warn!("no server log is tailed: {}", why.0);
            None
        }
    }
}

/// Whether the pause file exists: then a one-shot run makes no database query either.
pub fn paused(cfg: &Config) -> bool {
    cfg.collection
        .pause_file
        .as_deref()
        .is_some_and(Path::exists)
}

/// The one-shot step runner: honours the pause file, logs a failed step and goes on.
struct OneShotSteps<'a> {
    pool: &'a Pool,
    extra_pools: &'a [(String, Pool)],
    pause_file: Option<&'a Path>,
}

impl OneShotSteps<'_> {
    fn paused(&self) -> bool {
        self.pause_file.is_some_and(Path::exists)
    }
}

impl DbSteps for OneShotSteps<'_> {
    fn step<T>(
        &self,
        database: Option<&str>,
        name: &'static str,
        backoff: &mut Backoff,
        f: impl FnOnce(&mut PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        if self.paused() || !backoff.should_run() {
            return None;
        }
        let pool = match database {
            None => self.pool,
            Some(db) => &self.extra_pools.iter().find(|(n, _)| n == db)?.1,
        };
        let result = pool
            .acquire()
            .map_err(|e| e.to_string())
            .and_then(|mut c| f(&mut c).map_err(|e| e.to_string()));
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("{name}: {e}");
                None
            }
        }
    }
}

/// Collects once over one sample interval and returns the payloads (collector errors are
/// logged; what worked is returned). The interval part is the daemon's own cycle, server health
/// and the extra databases included. While the pause file exists no query is made: host
/// figures and the server log are still collected.
pub fn collect(
    cfg: &Config,
    pool: &Pool,
    extra_pools: &[(String, Pool)],
) -> Result<Vec<Payload>, String> {
    let scratch = Scratch::new().map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let mut cfg = cfg.clone();
    cfg.collection.state_dir = scratch.0.clone();
    let steps = OneShotSteps {
        pool,
        extra_pools,
        pause_file: cfg.collection.pause_file.as_deref(),
    };
    if steps.paused() {
        log::warn!(
            "pause file {} exists: no database query is made; host figures and the server log only",
            cfg.collection
                .pause_file
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        );
    } else {
        // Unreachable database: say so instead of a collection without any database data.
        drop(pool.acquire().map_err(|e| e.to_string())?);
    }
    let window = cfg.collection.sample_interval.max(Duration::from_secs(1));
    let mut sampler = ActivitySampler::new(wiring::activity_config(&cfg));
    // The summary's load timeline and attribution; no flight recorder and no spike detection
    // (two samples have no baseline, and the load rule would fire on a busy host).
    let no_spikes = crate::config::SpikeConfig {
        min_active_sessions: u32::MAX,
        load_per_cpu: 0.0,
        ..cfg.spike.clone()
    };
    let mut watch = crate::spike::watch::Watch::new(&no_spikes, window, None);
    let mut b_activity = Backoff::default();
    let mut cycle = IntervalCycle::new(wiring::cycle_options(&cfg));
    cycle.prime(&steps);
    let mut payloads = Vec::new();
    if steps
        .step(None, "activity", &mut b_activity, |c| sampler.sample(c))
        .is_some()
    {
        drop(watch.after_sample(sampler.take_spike_snapshot(), &mut |_| None));
    }
    let mut feed = log_feed(&cfg, &steps);
    if let Some(feed) = feed.as_mut() {
        // Correlated statements are merged with the sampler's into one record per request.
        feed.route_correlated();
        // The first poll opens the log at its end: the window's entries are what follows.
        feed.poll(Instant::now());
    }

    std::thread::sleep(window);

    if steps
        .step(None, "activity", &mut b_activity, |c| sampler.sample(c))
        .is_some()
    {
        drop(watch.after_sample(sampler.take_spike_snapshot(), &mut |_| None));
    }
    let paused = steps.paused();
    let mut correlator = Correlator::new(wiring::correlator_config(&cfg));
    if !paused {
        let (mut summary, sampled) = sampler.finish_interval_parts();
        watch.finish_interval(&mut summary);
        let at = |k| match summary.data.get(k) {
            Some(Json::Float(f)) => Some(*f),
            _ => None,
        };
        correlator.add_sampled(
            sampled,
            at("interval_start"),
            at("interval_end"),
            unix_now(),
        );
        payloads.push(summary);
    }
    payloads.extend(cycle.run(&steps, || {
        let usage = crate::selfstats::usage();
        Json::object()
            .field("pid", std::process::id())
            .field("rss_bytes", usage.rss_bytes)
            .field("cpu_seconds", usage.cpu_total().as_secs_f64())
            .field("mode", "once")
            .field("paused", paused)
    }));
    if let Some(feed) = feed.as_mut() {
        // Read what the window added (a flush alone sends only what was read before).
        if let Some(flush) = feed.poll(Instant::now()) {
            payloads.extend(flush.payloads);
        }
        payloads.extend(feed.flush(Instant::now()).payloads);
        let logged = feed
            .take_correlated()
            .into_iter()
            .filter_map(LoggedStatement::from_log_json)
            .collect();
        correlator.add_logged(logged, unix_now());
    }
    payloads.extend(correlator.take_all());
    Ok(payloads)
}

/// `--dry-run`: collect once and print every payload as the listener would receive it, one JSON
/// object per line.
pub fn dry_run(cfg: &Config, pool: &Pool, extra_pools: &[(String, Pool)]) -> i32 {
    let payloads = match collect(cfg, pool, extra_pools) {
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
                lane: crate::payload::Lane::of(p),
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
pub fn once(
    cfg: &Config,
    pool: &Pool,
    extra_pools: &[(String, Pool)],
    spool: Arc<Spool>,
    mut shipper: Shipper,
) -> i32 {
    let payloads = match collect(cfg, pool, extra_pools) {
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
    let outcome = OnceOutcome {
        delivered: shipper.stats().n_sent,
        dead_lettered: shipper.stats().n_dead_letters,
        rejection: shipper.last_rejection().map(str::to_string),
        pending: spool.stats().n_pending,
        not_stored: payloads.len() - stored,
        last_error: shipper.status_handle().get().last_error,
    };
    let (ok, text) = outcome.report();
    if ok {
        log::info!("{text}");
        cli::EXIT_OK
    } else {
        log::error!("{text}");
        cli::EXIT_FAILURE
    }
}

/// What `--once` achieved, as counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceOutcome {
    /// Payloads the listener acknowledged with 200 (this run's and any backlog before them).
    pub delivered: u64,
    /// Payloads the listener refused for good (moved to the dead-letter file).
    pub dead_lettered: u64,
    /// The listener's reason for the last refusal.
    pub rejection: Option<String>,
    /// Records still in the spool.
    pub pending: u64,
    /// Collected payloads the spool could not store.
    pub not_stored: usize,
    /// The last send error, when records are pending.
    pub last_error: Option<String>,
}

impl OnceOutcome {
    /// Whether everything was acknowledged with 200, and the line that says what happened.
    pub fn report(&self) -> (bool, String) {
        let mut text = format!("delivered {}", self.delivered);
        if self.dead_lettered > 0 {
            text.push_str(&format!(
                ", dead-lettered {} (refused by the listener: {})",
                self.dead_lettered,
                self.rejection.as_deref().unwrap_or("no reason recorded")
            ));
        }
        if self.pending > 0 {
            text.push_str(&format!(
                ", pending {} (last error: {}; the running agent will send them)",
                self.pending,
                self.last_error.as_deref().unwrap_or("none recorded")
            ));
        }
        if self.not_stored > 0 {
            text.push_str(&format!(
                ", not stored {} (the spool refused them)",
                self.not_stored
            ));
        }
        let ok = self.dead_lettered == 0 && self.pending == 0 && self.not_stored == 0;
        if ok {
            text.push_str(": everything was delivered");
        }
        (ok, text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_succeeds_only_when_everything_was_acknowledged() {
        let all = OnceOutcome {
            delivered: 4,
            dead_lettered: 0,
            rejection: None,
            pending: 0,
            not_stored: 0,
            last_error: None,
        };
        assert_eq!(
            all.report(),
            (true, "delivered 4: everything was delivered".to_string())
        );
        let refused = OnceOutcome {
            delivered: 0,
            dead_lettered: 4,
            rejection: Some("400 {\"details\":\"source\"}".into()),
            ..all.clone()
        };
        let (ok, text) = refused.report();
        assert!(!ok && !text.contains("everything was delivered"), "{text}");
        assert!(
            text.contains("dead-lettered 4 (refused by the listener: 400"),
            "{text}"
        );
        let (ok, text) = OnceOutcome {
            pending: 2,
            last_error: Some("500".into()),
            ..all
        }
        .report();
        assert!(!ok && text.contains("pending 2 (last error: 500"), "{text}");
    }
}
