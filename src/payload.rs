//! What a collector hands to the spool: one listener payload before it gets its envelope.
//!
//! Collectors build `data` as a [`Json`] object and never add `data.agent` themselves: the
//! delivery path stamps it (version, host, sequence number, collected_at) when the payload is
//! appended to the spool, so the sequence number is assigned in exactly one place.
//!
//! The envelope, the `data.agent` stamp and the `data.agent.dropped` report are rendered in one
//! place, the `record` submodule (re-exported here); the spool stores its output as opaque bytes.

use crate::json::Json;

mod record;

pub use record::{
    envelope_body, render_record, with_dropped, AgentStamp, DropCounts, Lane, RecordKind,
};

/// The four sources the listener accepts; any other is rejected with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Sessions, the lock wait tree and per-query OS figures.
    PgStatActivity,
    /// Per-interval deltas of pg_stat_statements.
    PgStatStatements,
    /// Parsed server log entries.
    PgLog,
    /// Host figures, server health and the agent's own cost.
    SystemMetrics,
}

impl Source {
    /// Every source, in a fixed order.
    pub const ALL: [Source; 4] = [
        Source::PgStatActivity,
        Source::PgStatStatements,
        Source::PgLog,
        Source::SystemMetrics,
    ];

    /// The exact string the listener expects in `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::PgStatActivity => "pg_stat_activity",
            Source::PgStatStatements => "pg_stat_statements",
            Source::PgLog => "pg_log",
            Source::SystemMetrics => "system_metrics",
        }
    }

    /// The source named `name`, if the listener accepts it.
    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One payload as a collector produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Which listener source this payload is sent as.
    pub source: Source,
    /// When the data was collected, in unix seconds (becomes the envelope's `timestamp`).
    pub collected_at: f64,
    /// The request this payload belongs to (`bitville-<uuid>` application names); sent as the
    /// top-level `correlation_id` so the listener links it to the PHP request.
    pub correlation_id: Option<String>,
    /// The `data` object (must be a [`Json::Object`]).
    pub data: Json,
}

/// The current time in unix seconds, as the envelope's `timestamp` wants it.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Who stamps the payloads: the `version` and `host` of `data.agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's version (the crate version).
    pub version: String,
    /// The host name the agent runs on.
    pub host: String,
}

impl AgentInfo {
    /// This build's version and the kernel's host name (`unknown` when it cannot be read).
    pub fn current() -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: hostname().unwrap_or_else(|| "unknown".to_string()),
        }
    }
}

fn hostname() -> Option<String> {
    let buf = crate::sys::hostname().ok()?;
    let name = String::from_utf8_lossy(&buf).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// The longest `project` the listener accepts, in characters.
pub const PROJECT_MAX_CHARS: usize = 50;

/// Checks `project` against the listener's rule (1 to 50 characters).
pub fn check_project(project: &str) -> Result<(), String> {
    let n = project.chars().count();
    if n == 0 || n > PROJECT_MAX_CHARS {
        return Err(format!(
            "project must be 1 to {PROJECT_MAX_CHARS} characters, got {n}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_round_trip_and_reject_others() {
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        assert_eq!(Source::parse("pg_locks"), None);
    }

    #[test]
    fn the_project_rule_is_the_key_tables_project_id_range() {
        let row = crate::config::KEYS
            .iter()
            .find(|k| (k.section, k.key) == ("listener", "project_id"))
            .unwrap();
        assert_eq!(
            row.allowed,
            crate::config::Allowed::Chars(1, PROJECT_MAX_CHARS)
        );
    }

    #[test]
    fn project_rule_counts_characters() {
        assert!(check_project("").is_err());
        assert!(check_project(&"é".repeat(50)).is_ok());
        assert!(check_project(&"x".repeat(51)).is_err());
    }
}
