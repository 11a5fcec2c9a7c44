//! Collectors: each file turns one source (PostgreSQL views, `/proc`) into plain data for a
//! listener payload. Collectors never talk to the spool or the shipper; the daemon decides when
//! to call them and what to do with what they return.
//!
//! Invariants: a collector that talks to PostgreSQL takes a `&mut postgres::Client` (a pooled
//! client derefs to one) and never opens connections itself; every query it sends is read-only
//! and named in [`CollectError`] when it fails, so the payload and the log say which collector and
//! which query. Nothing here panics on what the server or `/proc` returns.

pub mod activity;
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

/// The server's `server_version_num` (e.g. 150004).
pub fn server_version_num(
    client: &mut postgres::Client,
    collector: &'static str,
) -> Result<u32, CollectError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .map_err(CollectError::query(collector, "server_version"))?;
    let v: &str = row.get(0);
    Ok(v.trim().parse().unwrap_or(0))
}
