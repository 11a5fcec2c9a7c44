//! Collectors: each file turns one source (PostgreSQL views, `/proc`) into plain data for a
//! listener payload. Collectors never talk to the spool or the shipper; the daemon decides when
//! to call them and what to do with what they return.
//!
//! Invariants: a collector that talks to PostgreSQL takes a `&mut postgres::Client` (a pooled
//! client derefs to one) and never opens connections itself; every query it sends is read-only
//! and named in [`CollectError`] when it fails, so the payload and the log say which collector
//! and which query, in the one error shape of [`crate::pgerror`]. Nothing here panics on what
//! the server or `/proc` returns.

pub mod activity;
pub mod backoff;
pub mod correlate;
pub mod cost_control;
pub mod cycle;
pub mod host;
pub mod inthash;
pub mod locks;
pub mod procfs;
pub mod statements;

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

pub use crate::pgerror::PgError;
pub use backoff::Backoff;

use crate::json::Json;
use crate::pgerror::{self, Subject};

/// Why a collector produced nothing this cycle.
#[derive(Debug)]
pub enum CollectError {
    /// A query failed (timeout, permission, connection lost, ...): collector, query and the
    /// driver's error, with the decisions on it ([`PgError::is_timeout`], ...).
    Query(PgError),
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

impl From<PgError> for CollectError {
    fn from(e: PgError) -> CollectError {
        CollectError::Query(e)
    }
}

impl CollectError {
    /// A function wrapping driver errors of `query` in `collector`, for
    /// `.map_err(CollectError::query("activity", "sample"))`.
    pub fn query(
        collector: &'static str,
        query: &'static str,
    ) -> impl FnOnce(postgres::Error) -> CollectError {
        move |source| {
            CollectError::Query(PgError {
                collector,
                query,
                source,
            })
        }
    }

    /// The failed query, when a query failed.
    pub fn as_query(&self) -> Option<&PgError> {
        match self {
            CollectError::Query(e) => Some(e),
            CollectError::State { .. } => None,
        }
    }

    /// The collector that failed.
    pub fn collector(&self) -> &'static str {
        match self {
            CollectError::Query(e) => e.collector,
            CollectError::State { collector, .. } => collector,
        }
    }

    /// The SQLSTATE when the server refused the query.
    pub fn sqlstate(&self) -> Option<&str> {
        self.as_query().and_then(PgError::sqlstate)
    }

    /// Whether `statement_timeout` or `lock_timeout` cancelled the query: the daemon backs the
    /// collector off instead of retrying it every cycle.
    pub fn is_timeout(&self) -> bool {
        self.as_query().is_some_and(PgError::is_timeout)
    }

    /// Whether the connection itself is unusable (the pooled client should be discarded).
    pub fn is_connection_error(&self) -> bool {
        self.as_query().is_some_and(PgError::is_connection_error)
    }

    /// The error as a payload entry, in the one shape of [`crate::pgerror::entry`].
    pub fn to_json(&self) -> Json {
        match self {
            CollectError::Query(e) => e.to_json(),
            CollectError::State {
                collector,
                path,
                source,
            } => pgerror::entry(
                collector,
                Subject::File(&path.display().to_string()),
                &source.to_string(),
                None,
                false,
            ),
        }
    }
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectError::Query(e) => e.fmt(f),
            CollectError::State {
                collector,
                path,
                source,
            } => write!(
                f,
                "{collector} collector: state file {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CollectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CollectError::Query(e) => Some(&e.source),
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

/// The server's `server_version_num` (e.g. 150004; 0 when the setting is not a number): the
/// one reader of the server version, for the collectors ([`server_version_num`]) and health.
pub fn read_server_version(client: &mut postgres::Client) -> Result<u32, postgres::Error> {
    let row = client.query_one("SELECT current_setting('server_version_num')", &[])?;
    let v: Option<&str> = col(&row, 0);
    Ok(v.and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// [`read_server_version`] for a collector: a failure is its `server_version` query error.
pub fn server_version_num(
    client: &mut postgres::Client,
    collector: &'static str,
) -> Result<u32, CollectError> {
    read_server_version(client).map_err(CollectError::query(collector, "server_version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_names_collector_and_file() {
        let e = CollectError::State {
            collector: "t",
            path: PathBuf::from("x"),
            source: std::io::Error::other("not a timeout"),
        };
        assert!(!e.is_timeout());
        let j = e.to_json().to_json_string();
        assert_eq!(
            j,
            r#"{"collector":"t","file":"x","error":"not a timeout","timed_out":false}"#
        );
        assert_eq!(e.to_string(), "t collector: state file x: not a timeout");
    }
}
