//! The wiring: the one place that turns `Config` into the components' option structs (pools,
//! spool, shipper, the interval cycle with statements and health, the activity sampler, the spike
//! deep snapshot, the log feed, the correlator and its correlated budget). Every tunable the
//! daemon, `--once`, `--dry-run` and `--test` hand to a component is read here.
//!
//! Invariants:
//! - Library modules never read `Config`; they take their own option structs, built here.
//! - The correlated budget is computed in one function ([`correlated_budget`]) and shared by the
//!   sampler, the log feed and the correlator.

use std::time::{Duration, Instant};

use crate::collect::activity::ActivityConfig;
use crate::collect::correlate::{Correlator, CorrelatorConfig, SharedCorrelator};
use crate::collect::cycle::CycleOptions;
use crate::collect::statements::StatementsConfig;
use crate::config::{self, Config};
use crate::health::HealthOptions;
use crate::logtail::{FeedConfig, LogFeed, LogSource, PayloadOptions};
use crate::normalize::{CorrelationPattern, QueryText};
use crate::pool::Pool;

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
    let view = crate::connect_block::View {
        query_text: query_text(&cfg.collection),
        correlation: correlation(&cfg.collection),
    };
    for pool in std::iter::once(&main).chain(extra.iter().map(|(_, p)| p)) {
        pool.set_blocker_view(view.clone());
    }
    (main, extra)
}

/// Correlated records (one per request, merged from the sampler and the log by the
/// [`Correlator`](crate::collect::correlate::Correlator)) per interval. The listener takes one
/// payload per HTTP request and the shipper sends at most `max_requests_per_minute`; the
/// collectors' steady output is held to half of that (less the four summary payloads of an
/// interval), so a backlog after an outage always drains. At the defaults (60 a minute, 60 s):
/// 30 - 4 = 26 records an interval. What is over the budget stays inside the summaries, never
/// lost.
pub fn correlated_budget(max_requests_per_minute: u32, interval: Duration) -> usize {
    let per_interval =
        (f64::from(max_requests_per_minute) * interval.as_secs_f64() / 60.0) as usize;
    (per_interval / 2).saturating_sub(4)
}

/// The correlator's settings: its budget is [`correlated_budget`].
pub fn correlator_config(cfg: &Config) -> CorrelatorConfig {
    CorrelatorConfig {
        budget: correlated_budget(
            cfg.listener.max_requests_per_minute,
            cfg.collection.interval,
        ),
        ..CorrelatorConfig::default()
    }
}

/// The correlator the sampler and log threads share.
pub fn correlator(cfg: &Config) -> SharedCorrelator {
    Correlator::shared(correlator_config(cfg))
}

/// The correlated budget of a configuration ([`correlated_budget`]) in words, and, when it is 0
/// (no correlated payload at all), the warning with the fix: the shortest `interval_s` at this
/// pace, or the lowest pace at this interval, that gives at least one.
pub fn budget_note(cfg: &Config) -> (String, Option<String>) {
    let pace = cfg.listener.max_requests_per_minute;
    let interval = cfg.collection.interval;
    let budget = correlated_budget(pace, interval);
    let line = format!(
        "correlated budget: {budget} correlated records per interval, one per request, sampler and \
         log merged ({} s interval, {pace} requests per minute)",
        interval.as_secs()
    );
    if budget > 0 {
        return (line, None);
    }
    let interval_fix = (interval.as_secs()..=3600)
        .find(|&s| correlated_budget(pace, Duration::from_secs(s)) > 0)
        .map(|s| format!("[collection] interval_s = {s}"));
    let pace_fix = (pace..=6000)
        .find(|&p| correlated_budget(p, interval) > 0)
        .map(|p| {
            format!("[listener] max_requests_per_minute = {p} (if the listener's limit allows)")
        });
    let fixes: Vec<String> = interval_fix.into_iter().chain(pace_fix).collect();
    let warning = format!(
        "the correlated budget is 0: with interval_s = {} and max_requests_per_minute = {pace} no \
         correlated payload (per PHP request) is shipped at all, the executions stay only in the \
         summaries; fix: {}",
        interval.as_secs(),
        if fixes.is_empty() {
            "a longer interval or a higher pace".to_string()
        } else {
            fixes.join(", or ")
        }
    );
    (line, Some(warning))
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

/// The interval cycle's options for the `[collection]` and `[buffer]` configuration.
pub fn cycle_options(cfg: &Config) -> CycleOptions {
    let c = &cfg.collection;
    CycleOptions {
        statements: StatementsConfig {
            query_text: query_text(c),
            ..StatementsConfig::new(&c.state_dir)
        },
        health: HealthOptions {
            top_n: c.health_top_n,
            slow_every: c.health_slow_interval,
            tables_budget: c.health_tables_budget,
        },
        spool_path: cfg.buffer.path.clone(),
        databases: c.databases.clone(),
    }
}

/// The query text rule of `[collection] query_text` and `query_max_chars`.
pub fn query_text(c: &config::CollectionConfig) -> QueryText {
    QueryText {
        mode: c.query_text,
        max_chars: c.query_max_chars,
    }
}

/// The correlation pattern of `[collection] correlation_prefix` and `correlation_sources`.
pub fn correlation(c: &config::CollectionConfig) -> CorrelationPattern {
    CorrelationPattern {
        prefix: c.correlation_prefix.clone(),
        sources: c.correlation_sources,
    }
}

/// The activity sampler's settings: the `[collection]` ones, with the correlated budget.
pub fn activity_config(cfg: &Config) -> ActivityConfig {
    ActivityConfig {
        max_correlated: correlated_budget(
            cfg.listener.max_requests_per_minute,
            cfg.collection.interval,
        ),
        query_text: query_text(&cfg.collection),
        correlation: correlation(&cfg.collection),
        sample_cpu_budget: cfg.collection.sample_cpu_budget,
        ..ActivityConfig::default()
    }
}

/// The spike deep snapshot's settings (query text mode, correlation pattern).
pub fn deep_options(cfg: &Config) -> crate::spike::deep::DeepOptions {
    crate::spike::deep::DeepOptions {
        query_text: query_text(&cfg.collection),
        correlation: correlation(&cfg.collection),
    }
}

/// The log feed's batching and payload settings: the `[collection]` ones (interval, query text
/// mode and length, plan size, entries per minute as entries per interval, at least 100) and the
/// correlated budget.
pub fn feed_config(cfg: &Config) -> FeedConfig {
    let c = &cfg.collection;
    let per_interval = c.log_max_entries_per_minute as f64 * c.interval.as_secs_f64() / 60.0;
    FeedConfig {
        interval: c.interval,
        payload: PayloadOptions {
            max_correlated: correlated_budget(cfg.listener.max_requests_per_minute, c.interval),
            query_text: c.query_text,
            max_query_chars: c.query_max_chars,
            plan_max_bytes: c.plan_max_bytes,
            ..PayloadOptions::default()
        },
        max_entries_per_interval: (per_interval as usize).max(100),
        ..FeedConfig::default()
    }
}

/// A log feed on a found server log, with [`feed_config`], the correlation pattern and the
/// position file in the state directory.
pub fn log_feed(source: &LogSource, cfg: &Config, now: Instant) -> LogFeed {
    let c = &cfg.collection;
    LogFeed::from_source(
        source,
        correlation(c),
        c.state_dir.clone(),
        feed_config(cfg),
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_correlated_budget_keeps_collectors_under_half_the_pace() {
        // Defaults: 60 requests a minute, 60 s interval: 30 for the collectors, 4 summaries,
        // one record per request (it was 13 per producer, two records per request).
        assert_eq!(correlated_budget(60, Duration::from_secs(60)), 26);
        for (pace, secs) in [(60, 60), (100, 60), (60, 10), (10, 60), (6000, 1)] {
            let interval = Duration::from_secs(secs);
            let per_interval = pace as f64 * secs as f64 / 60.0;
            let worst = 4 + correlated_budget(pace, interval);
            assert!(
                worst as f64 <= per_interval / 2.0 + 4.0,
                "pace {pace}, {secs} s: {worst}"
            );
        }
        assert_eq!(correlated_budget(60, Duration::from_secs(10)), 1);
        assert_eq!(correlated_budget(10, Duration::from_secs(10)), 0);
    }

    /// Every key at its `config::KEYS` default (no file, no environment).
    fn defaults() -> Config {
        let mut warnings = Vec::new();
        let raw = config::RawConfig::build(None, &BTreeMap::new(), &mut warnings).unwrap();
        Config::from_raw(&raw, &mut warnings).unwrap()
    }

    // The option structs' own defaults must be what the agent runs with when nothing is
    // configured, i.e. what wiring makes of the `config::KEYS` defaults; these tests fail when a
    // row or a `Default` changes without the other (or a key a `Default` reads through
    // `config::default_whole` is renamed: it then reads 0). Not compared, because no key states
    // them and wiring sets them from the correlated budget or a per-minute key: the correlated
    // caps (`PayloadOptions` 100, `ActivityConfig` 10, against 26 at the defaults) and the log
    // feed's entries per interval (unlimited, against 5000).

    #[test]
    fn the_spool_and_shipper_defaults_are_the_key_table_defaults() {
        let cfg = defaults();
        let spool = spool_options(&cfg.buffer);
        let lib = crate::spool::SpoolOptions::new(&cfg.buffer.path);
        assert_eq!(spool.max_bytes, lib.max_bytes, "[buffer] max_size_mb");
        let l = &cfg.listener;
        let ship = shipper_options(l);
        let lib = crate::ship::ShipperOptions::new(&l.url, l.api_key.expose(), &l.project_id);
        assert_eq!(ship.timeout, lib.timeout, "[listener] timeout_s");
        assert_eq!(ship.connect_timeout, lib.connect_timeout);
        assert_eq!(
            ship.max_requests_per_minute, lib.max_requests_per_minute,
            "[listener] max_requests_per_minute"
        );
        assert_eq!(ship.breaker_failures, lib.breaker_failures);
        assert_eq!(ship.breaker_reset, lib.breaker_reset);
    }

    #[test]
    fn the_cycle_defaults_are_the_key_table_defaults() {
        let cfg = defaults();
        let cycle = cycle_options(&cfg);
        let lib = HealthOptions::default();
        assert_eq!(cycle.health.top_n, lib.top_n, "[collection] health_top_n");
        assert_eq!(cycle.health.slow_every, lib.slow_every);
        assert_eq!(cycle.health.tables_budget, lib.tables_budget);
        let lib = StatementsConfig::new(&cfg.collection.state_dir);
        assert_eq!(cycle.statements.query_text, lib.query_text);
    }

    #[test]
    fn the_text_and_correlation_defaults_are_the_key_table_defaults() {
        let cfg = defaults();
        assert_eq!(query_text(&cfg.collection), QueryText::default());
        assert_eq!(correlation(&cfg.collection), CorrelationPattern::default());
        let (wired, lib) = (activity_config(&cfg), ActivityConfig::default());
        assert_eq!(wired.query_text, lib.query_text);
        assert_eq!(wired.correlation, lib.correlation);
        assert_eq!(
            deep_options(&cfg).query_text,
            QueryText::default(),
            "deep snapshot"
        );
    }

    #[test]
    fn the_correlator_and_spike_defaults_are_the_key_table_defaults() {
        let cfg = defaults();
        assert_eq!(
            correlator_config(&cfg).budget,
            CorrelatorConfig::default().budget,
            "the correlated budget at the default pace and interval"
        );
        assert_eq!(
            crate::spike::detector::DetectorConfig::from_spike(&cfg.spike),
            crate::spike::detector::DetectorConfig::default(),
            "[spike]"
        );
    }

    #[test]
    fn the_log_feed_defaults_are_the_key_table_defaults() {
        let cfg = defaults();
        let (wired, lib) = (feed_config(&cfg), FeedConfig::default());
        assert_eq!(wired.interval, lib.interval, "[collection] interval_s");
        assert_eq!(wired.payload.query_text, lib.payload.query_text);
        assert_eq!(
            wired.payload.max_query_chars, lib.payload.max_query_chars,
            "[collection] query_max_chars"
        );
        assert_eq!(
            wired.payload.plan_max_bytes, lib.payload.plan_max_bytes,
            "[collection] plan_max_bytes"
        );
    }

    fn config_with(interval_s: &str, pace: &str) -> Config {
        let env: BTreeMap<String, String> = [
            ("BITVILLE_PG_INTERVAL_S", interval_s),
            ("BITVILLE_PG_MAX_REQUESTS_PER_MINUTE", pace),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut warnings = Vec::new();
        let raw = config::RawConfig::build(None, &env, &mut warnings).unwrap();
        Config::from_raw(&raw, &mut warnings).unwrap()
    }

    #[test]
    fn a_zero_budget_is_a_warning_whose_fix_gives_a_budget() {
        let (line, warning) = budget_note(&config_with("60", "60"));
        assert!(line.contains("26 correlated records"), "{line}");
        assert_eq!(warning, None);
        let (line, warning) = budget_note(&config_with("5", "60"));
        assert!(line.contains("budget: 0 "), "{line}");
        let warning = warning.expect("0 is warned about");
        let fix_s: u64 = warning
            .split("interval_s = ")
            .nth(2)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no interval fix: {warning}"));
        assert!(
            correlated_budget(60, Duration::from_secs(fix_s)) > 0,
            "{warning}"
        );
        assert!(
            correlated_budget(60, Duration::from_secs(fix_s - 1)) == 0,
            "{warning}"
        );
        assert!(warning.contains("max_requests_per_minute = "), "{warning}");
    }
}
