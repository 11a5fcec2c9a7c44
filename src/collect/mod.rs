//! Collectors: each file turns one source (PostgreSQL views, `/proc`) into plain data for a
//! listener payload. Collectors never talk to the spool or the shipper; the daemon decides when
//! to call them and what to do with what they return.
//!
//! Invariants: a collector that talks to PostgreSQL takes a `&mut postgres::Client` (a pooled
//! client derefs to one) and never opens connections itself; every query it sends is read-only
//! and named in [`CollectError`] when it fails, so the payload and the log say which collector and
//! which query. Nothing here panics on what the server or `/proc` returns.

pub mod activity;
pub mod correlate;
pub mod cycle;
pub mod host;
pub mod locks;
pub mod procfs;
pub mod statements;

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::json::Json;

/// Why a collector produced nothing this cycle.
#[derive(Debug)]
pub enum CollectError {
    /// A query failed (timeout, permission, connection lost, ...).
    Query {
        /// Which collector (`activity`, `locks`, `statements`).
        collector: &'static str,
        /// Which query, by a short stable name (`sample`, `lock_tree`, `counters`, ...).
        query: &'static str,
        /// The driver's error.
        source: postgres::Error,
    },
    /// A state file (the persisted statements baseline) could not be written.
    State {
        /// Which collector.
        collector: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl CollectError {
    pub(crate) fn query(
        collector: &'static str,
        query: &'static str,
    ) -> impl FnOnce(postgres::Error) -> CollectError {
        move |source| CollectError::Query {
            collector,
            query,
            source,
        }
    }

    /// The collector that failed.
    pub fn collector(&self) -> &'static str {
        match self {
            CollectError::Query { collector, .. } | CollectError::State { collector, .. } => {
                collector
            }
        }
    }

    /// The SQLSTATE when the server refused the query.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CollectError::Query { source, .. } => source.code().map(|c| c.code()),
            CollectError::State { .. } => None,
        }
    }

    /// Whether `statement_timeout` or `lock_timeout` cancelled the query: the daemon backs the
    /// collector off instead of retrying it every cycle.
    pub fn is_timeout(&self) -> bool {
        matches!(self.sqlstate(), Some("57014") | Some("55P03"))
    }

    /// Whether the connection itself is unusable (the pooled client should be discarded).
    pub fn is_connection_error(&self) -> bool {
        match self {
            CollectError::Query { source, .. } => crate::pool::is_connection_error(source),
            CollectError::State { .. } => false,
        }
    }

    /// The error as a payload entry: `{collector, query|file, error}`.
    pub fn to_json(&self) -> Json {
        let o = Json::object().field("collector", self.collector());
        match self {
            CollectError::Query { query, .. } => o.field("query", *query),
            CollectError::State { path, .. } => o.field("file", path.display().to_string()),
        }
        .field("error", self.detail())
    }

    fn detail(&self) -> String {
        match self {
            CollectError::Query { source, .. } => match source.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => match std::error::Error::source(source) {
                    Some(inner) => format!("{source}: {inner}"),
                    None => source.to_string(),
                },
            },
            CollectError::State { source, .. } => source.to_string(),
        }
    }
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectError::Query {
                collector, query, ..
            } => write!(f, "{collector} collector: query {query}: {}", self.detail()),
            CollectError::State {
                collector, path, ..
            } => write!(
                f,
                "{collector} collector: state file {}: {}",
                path.display(),
                self.detail()
            ),
        }
    }
}

impl std::error::Error for CollectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CollectError::Query { source, .. } => Some(source),
            CollectError::State { source, .. } => Some(source),
        }
    }
}

/// Unix seconds of a server timestamp (negative before 1970, which PostgreSQL allows).
pub fn unix_secs(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Column `i` of `row`, `None` when NULL or of another type than expected: a row the server sent
/// differently never panics the agent.
pub(crate) fn col<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    i: usize,
) -> Option<T> {
    row.try_get::<_, Option<T>>(i).ok().flatten()
}

/// The server's `server_version_num` (e.g. 150004).
pub fn server_version_num(
    client: &mut postgres::Client,
    collector: &'static str,
) -> Result<u32, CollectError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .map_err(CollectError::query(collector, "server_version"))?;
    let v: Option<&str> = col(&row, 0);
    Ok(v.and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// Backs a collector off after a timeout, counted in cycles: the one back-off policy of the
/// agent, [`crate::health::backoff::Backoff`], with its cycle counter kept here. After the first
/// timeout (`lock_timeout` on a locked statistics view, `statement_timeout`) the collector skips
/// 1 cycle, then 2, 4, ... up to `max_skip`, so a locked view costs the server log a few
/// lock-timeout errors a minute instead of one per sample; one success resets it. Other errors
/// do not back off (they are not a sign of load). The daemon keeps one per collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    policy: crate::health::backoff::Backoff,
    /// Cycles asked about so far ([`Backoff::should_run`] calls).
    cycle: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(32)
    }
}

impl Backoff {
    /// A backoff that never skips more than `max_skip` cycles in a row.
    pub fn new(max_skip: u32) -> Backoff {
        Backoff {
            policy: crate::health::backoff::Backoff::new(0, u64::from(max_skip)),
            cycle: 0,
        }
    }

    /// Whether the collector runs this cycle; call exactly once per cycle.
    pub fn should_run(&mut self) -> bool {
        let run = self.policy.allows(self.cycle);
        self.cycle += 1;
        run
    }

    /// Records how the cycle that ran went.
    pub fn record<T>(&mut self, outcome: &Result<T, CollectError>) {
        match outcome {
            Ok(_) => self.record_outcome(false, true),
            Err(e) => self.record_outcome(e.is_timeout(), false),
        }
    }

    /// [`Backoff::record`] from plain facts: whether the cycle timed out, whether it succeeded.
    pub fn record_outcome(&mut self, timed_out: bool, succeeded: bool) {
        if succeeded {
            self.policy.record_success();
        } else if timed_out {
            // The cycle that ran is the one `should_run` last answered.
            self.policy.record_timeout(self.cycle.saturating_sub(1));
        }
    }

    /// Consecutive timeouts so far (for the payload's error report).
    pub fn consecutive_timeouts(&self) -> u32 {
        self.policy.consecutive_timeouts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector error that is not a timeout (a state-file failure).
    fn not_a_timeout() -> Result<(), CollectError> {
        Err(CollectError::State {
            collector: "t",
            path: PathBuf::from("x"),
            source: std::io::Error::other("not a timeout"),
        })
    }

    #[test]
    fn backoff_skips_from_the_first_timeout_and_resets_on_success() {
        let mut b = Backoff::new(4);
        // A non-timeout error never backs off.
        b.record(&not_a_timeout());
        assert!(b.should_run());
        assert_eq!(b.consecutive_timeouts(), 0);
        b.record(&Ok::<(), CollectError>(()));
        assert!(b.should_run());

        // From the first timeout on: 1, 2, 4, 4 (capped) cycles skipped.
        assert!(b.should_run());
        let mut skipped = Vec::new();
        for _ in 0..4 {
            b.record_outcome(true, false);
            let mut n = 0;
            while !b.should_run() {
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(skipped, vec![1, 2, 4, 4]);
        assert_eq!(b.consecutive_timeouts(), 4);
        b.record_outcome(false, true);
        assert_eq!(b.consecutive_timeouts(), 0);
        assert!(b.should_run(), "a success ends the skipping");
        b.record_outcome(true, false);
        assert!(!b.should_run(), "and the next timeout starts again at 1");
        assert!(b.should_run());
    }

    #[test]
    fn error_json_names_collector_and_file() {
        let e = not_a_timeout().unwrap_err();
        assert!(!e.is_timeout());
        let j = e.to_json().to_json_string();
        assert_eq!(j, r#"{"collector":"t","file":"x","error":"not a timeout"}"#);
        assert_eq!(e.to_string(), "t collector: state file x: not a timeout");
    }
}
