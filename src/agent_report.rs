//! The agent's own report: one typed value ([`AgentReport`]) with what the agent knows about
//! itself (uptime, pause, connections, pool, spool, shipper, collectors, overruns and, at an
//! interval boundary, its own cost), rendered two ways: as `data.agent` of `system_metrics`
//! ([`AgentReport::to_json`]) and as the lines of the status file behind `--status`
//! ([`AgentReport::status_lines`]).
//!
//! Invariants:
//! - Both renderings read the same value, so the status file and `data.agent` never disagree on
//!   a figure taken at the same moment.
//! - Plain data: the daemon gathers it (`daemon::Context::report`); nothing here reads a lock,
//!   a file or the clock.

use std::time::Duration;

use crate::connect_block::Sighting;
use crate::json::Json;
use crate::pool::PoolStats;
use crate::selfstats::SelfUsage;
use crate::ship::ShipStatus;
use crate::spool::SpoolStats;

/// One collector's counters and its last error (`None` once it works again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorReport {
    /// Steps that worked.
    pub ok: u64,
    /// Steps that failed.
    pub errors: u64,
    /// Steps skipped (paused or backed off).
    pub skipped: u64,
    /// The last failure, while the collector keeps failing.
    pub last_error: Option<String>,
}

/// The agent's own cost over one interval (only `data.agent` carries it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalCost {
    /// The process's CPU and memory now.
    pub usage: SelfUsage,
    /// CPU time spent since the previous boundary.
    pub cpu_interval: Duration,
    /// Time spent in database steps since the previous boundary.
    pub db_time: Duration,
}

/// What the agent reports about itself, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    /// The process id.
    pub pid: u32,
    /// Time since the agent started.
    pub uptime: Duration,
    /// Whether the pause file exists.
    pub paused: bool,
    /// Connections held to the server now, over every pool.
    pub connections_held: usize,
    /// The main pool's counters.
    pub pool: PoolStats,
    /// The spool's state.
    pub spool: SpoolStats,
    /// Appends that failed since start.
    pub append_errors: u64,
    /// The shipper's counters and breaker.
    pub shipped: ShipStatus,
    /// Per collector, by name.
    pub collectors: Vec<(&'static str, CollectorReport)>,
    /// Cycles skipped because one overran its period.
    pub overruns: u64,
    /// The interval's cost, when the report is made at an interval boundary.
    pub cost: Option<IntervalCost>,
    /// The activity sampler's adaptive cost control (`data.agent.sample_cost`), once it sampled.
    pub sample_cost: Option<crate::collect::cost_control::CostReport>,
    /// Who blocked connection attempts: in `data.agent`, what was seen since the previous
    /// summary; in the status file, the latest sighting. `None`: nothing was blocked.
    pub connect_blocked_by: Option<Sighting>,
}

impl AgentReport {
    /// `data.agent` of `system_metrics` (the spool adds version, host, seq and collected_at).
    /// Without a [`IntervalCost`] the cost figures are 0.
    pub fn to_json(&self) -> Json {
        let cost = self.cost.clone().unwrap_or_default();
        let (pool, spool, shipped) = (&self.pool, &self.spool, &self.shipped);
        let mut collectors = Json::object();
        for (name, c) in &self.collectors {
            collectors.push(
                *name,
                Json::object()
                    .field("ok", c.ok)
                    .field("errors", c.errors)
                    .field("skipped", c.skipped)
                    .field("last_error", c.last_error.clone()),
            );
        }
        Json::object()
            .field("pid", self.pid)
            .field("uptime_s", self.uptime.as_secs_f64())
            .field("rss_bytes", cost.usage.rss_bytes)
            .field("peak_rss_bytes", cost.usage.peak_rss_bytes)
            .field("cpu_seconds", cost.usage.cpu_total().as_secs_f64())
            .field("cpu_seconds_interval", cost.cpu_interval.as_secs_f64())
            .field("db_time_ms_interval", cost.db_time.as_secs_f64() * 1000.0)
            .field("connections_held", self.connections_held)
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
                    .field("connects_blocked", pool.connects_blocked)
                    .field(
                        "connect_blocked_by",
                        self.connect_blocked_by
                            .as_ref()
                            .map_or(Json::Array(Vec::new()), Sighting::holders_json),
                    )
                    .field(
                        "connect_blocked_by_note",
                        self.connect_blocked_by
                            .as_ref()
                            .and_then(|s| s.not_visible.clone()),
                    ),
            )
            .field(
                "spool",
                Json::object()
                    .field("records_pending", spool.n_pending)
                    .field("spike_records_pending", spool.spike_pending)
                    .field("bytes", spool.bytes)
                    .field("segments", spool.n_segments)
                    .field("records_dropped", spool.lost.records)
                    .field("dead_letters", spool.n_dead_letters)
                    .field("append_errors", self.append_errors),
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
                    .field("last_error", shipped.last_error.clone()),
            )
            .field("collectors", collectors)
            .field("overruns", self.overruns)
            .field("paused", self.paused)
            .field(
                "sample_cost",
                self.sample_cost.as_ref().map(|c| c.to_json()),
            )
    }

    /// The status file's `key: value` lines (`status::write` writes them, `--status` reads them).
    pub fn status_lines(&self) -> Vec<(&'static str, String)> {
        let (spool, shipped) = (&self.spool, &self.shipped);
        let errors: Vec<String> = self
            .collectors
            .iter()
            .filter_map(|(n, c)| c.last_error.as_ref().map(|e| format!("{n}: {e}")))
            .collect();
        vec![
            ("pid", self.pid.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("uptime_s", self.uptime.as_secs().to_string()),
            ("paused", self.paused.to_string()),
            ("spool_records_pending", spool.n_pending.to_string()),
            (
                "spool_spike_records_pending",
                spool.spike_pending.to_string(),
            ),
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
                shipped.last_error.clone().unwrap_or_else(|| "none".into()),
            ),
            ("connections_held", self.connections_held.to_string()),
            (
                "connect_blocked_by",
                self.connect_blocked_by
                    .as_ref()
                    .map_or_else(|| "none".into(), Sighting::status_line),
            ),
            (
                "collector_errors",
                if errors.is_empty() {
                    "none".into()
                } else {
                    errors.join("; ")
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AgentReport {
        AgentReport {
            pid: 42,
            uptime: Duration::from_millis(90_500),
            paused: false,
            connections_held: 2,
            pool: PoolStats {
                max: 5,
                size: 2,
                ..PoolStats::default()
            },
            spool: SpoolStats {
                n_pending: 7,
                bytes: 1234,
                spike_pending: 2,
                ..SpoolStats::default()
            },
            append_errors: 1,
            shipped: ShipStatus {
                stats: crate::ship::ShipStats {
                    n_sent: 9,
                    ..Default::default()
                },
                breaker: crate::ship::breaker::State::Closed { failures: 0 },
                last_error: None,
                last_success_at: Some(1_700_000_000),
            },
            collectors: vec![
                ("activity", CollectorReport::default()),
                (
                    "statements",
                    CollectorReport {
                        errors: 3,
                        last_error: Some("no pg_stat_statements".into()),
                        ..CollectorReport::default()
                    },
                ),
            ],
            overruns: 0,
            cost: None,
            sample_cost: Some(crate::collect::cost_control::CostReport {
                budget: Duration::from_millis(2),
                samples: 60,
                ..Default::default()
            }),
            connect_blocked_by: None,
        }
    }

    #[test]
    fn both_renderings_show_the_same_figures() {
        let r = report();
        let json = r.to_json();
        let lines = r.status_lines();
        let line = |k: &str| lines.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let spool = json.get("spool").expect("spool block");
        assert_eq!(
            spool.get("records_pending"),
            Some(&Json::from(7u64)),
            "{json:?}"
        );
        assert_eq!(line("spool_records_pending").as_deref(), Some("7"));
        assert_eq!(spool.get("spike_records_pending"), Some(&Json::from(2u64)));
        assert_eq!(line("spool_spike_records_pending").as_deref(), Some("2"));
        assert_eq!(line("uptime_s").as_deref(), Some("90"));
        assert_eq!(json.get("uptime_s"), Some(&Json::Float(90.5)));
        assert_eq!(line("sent").as_deref(), Some("9"));
        assert_eq!(
            line("last_success_at").as_deref(),
            Some("1700000000 (unix seconds)")
        );
        assert_eq!(
            line("collector_errors").as_deref(),
            Some("statements: no pg_stat_statements")
        );
        assert_eq!(line("connections_held").as_deref(), Some("2"));
        assert_eq!(json.get("connections_held"), Some(&Json::from(2usize)));
        let cost = json.get("sample_cost").expect("sample_cost block");
        assert_eq!(cost.get("level_name"), Some(&Json::from("full")));
        assert_eq!(cost.get("samples"), Some(&Json::from(60u64)));
        let pool = json.get("pool").expect("pool block");
        assert_eq!(pool.get("connect_blocked_by"), Some(&Json::Array(vec![])));
        assert_eq!(pool.get("connect_blocked_by_note"), Some(&Json::Null));
        assert_eq!(line("connect_blocked_by").as_deref(), Some("none"));
    }

    #[test]
    fn who_blocked_connecting_is_in_both_renderings_or_why_not() {
        use crate::connect_block::{Holder, RawHolder, Sighting, View};
        let holder = Holder::from_row(
            RawHolder {
                pid: 4711,
                relation: 1262,
                shared: true,
                mode: "AccessExclusiveLock".into(),
                listed: true,
                application_name: Some("bitville-11111111-2222-3333-4444-555555555555".into()),
                ..RawHolder::default()
            },
            &View::default(),
            "postgres",
            5,
        );
        let mut r = report();
        r.connect_blocked_by = Some(Sighting {
            holders: vec![holder],
            not_visible: None,
        });
        let json = r.to_json().to_json_string();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let by = &v["pool"]["connect_blocked_by"];
        assert_eq!(by[0]["pid"], 4711, "{json}");
        assert_eq!(by[0]["relation"], "pg_database");
        assert_eq!(by[0]["request_id"], "11111111-2222-3333-4444-555555555555");
        let lines = r.status_lines();
        let line = lines
            .iter()
            .find(|(k, _)| *k == "connect_blocked_by")
            .unwrap();
        assert!(
            line.1.starts_with("pid 4711 (app bitville-11111111-2222-3333-4444-555555555555, request 11111111-2222-3333-4444-555555555555) holding AccessExclusiveLock on pg_database"),
            "{}",
            line.1
        );
        assert!(line.1.ends_with(" (seen at 5 unix seconds)"), "{}", line.1);

        r.connect_blocked_by = Some(Sighting::not_visible("no open connection to look with"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json().to_json_string()).unwrap();
        assert_eq!(v["pool"]["connect_blocked_by"], serde_json::json!([]));
        assert_eq!(
            v["pool"]["connect_blocked_by_note"],
            "holder not visible: no open connection to look with"
        );
        let lines = r.status_lines();
        let line = lines
            .iter()
            .find(|(k, _)| *k == "connect_blocked_by")
            .unwrap();
        assert_eq!(
            line.1,
            "holder not visible: no open connection to look with"
        );
    }
}
