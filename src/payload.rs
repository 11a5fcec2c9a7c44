//! What a collector hands to the spool: one listener payload before it gets its envelope.
//!
//! Collectors build `data` as a [`Json`] object and never add `data.agent` themselves: the
//! delivery path stamps it (version, host, sequence number, collected_at) when the payload is
//! appended to the spool, so the sequence number is assigned in exactly one place.

use crate::json::Json;

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
}
