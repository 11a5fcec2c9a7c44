//! The one PostgreSQL error layer: a failed query as [`PgError`] (which collector, which query,
//! the driver's error), the decisions callers take on it (timeout, privilege, broken
//! connection, ...) and the one shape an error has inside a payload ([`entry`]).
//!
//! Invariants:
//! - Every decision is made through `postgres::error::SqlState` constants, never by comparing
//!   SQLSTATE strings or searching the error's message text.
//! - Every error object inside a payload (`errors[]` of any collector, health's and the host's
//!   included) has the shape `{collector, query | file, error, sqlstate (when the server sent
//!   one), timed_out}`; a collector may add fields of its own (`backed_off_cycles`, `skipped`,
//!   ...), never rename these. docs/payloads.md describes it.
//! - This module depends on nothing of the agent but `json`, so the pool, the collectors and
//!   the health collectors can all use it.

use std::fmt;

use postgres::error::SqlState;

use crate::json::Json;

/// A query of a collector failed.
#[derive(Debug)]
pub struct PgError {
    /// The collector (`activity`, `statements`, a health part such as `wal`, ...).
    pub collector: &'static str,
    /// Which query: a short stable name or the view(s) it reads.
    pub query: &'static str,
    /// The driver's error.
    pub source: postgres::Error,
}

impl PgError {
    /// A function wrapping driver errors of `query` in `collector` (for `map_err`).
    pub fn at(collector: &'static str, query: &'static str) -> impl Fn(postgres::Error) -> PgError {
        move |source| PgError {
            collector,
            query,
            source,
        }
    }

    /// The server's SQLSTATE, if the server answered with an error.
    pub fn code(&self) -> Option<&SqlState> {
        self.source.code()
    }

    /// The SQLSTATE as text (`57014`), for payloads and logs.
    pub fn sqlstate(&self) -> Option<&str> {
        self.code().map(SqlState::code)
    }

    /// Cancelled by `statement_timeout` (`QUERY_CANCELED`).
    pub fn is_statement_timeout(&self) -> bool {
        self.code() == Some(&SqlState::QUERY_CANCELED)
    }

    /// Cancelled by `lock_timeout` (`LOCK_NOT_AVAILABLE`).
    pub fn is_lock_timeout(&self) -> bool {
        self.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
    }

    /// Cancelled by `statement_timeout` or `lock_timeout`: counts for the backoff.
    pub fn is_timeout(&self) -> bool {
        self.code().is_some_and(is_timeout_state)
    }

    /// The role lacks a privilege (`INSUFFICIENT_PRIVILEGE`): grant pg_monitor.
    pub fn is_privilege(&self) -> bool {
        self.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    }

    /// A column, view or function the version map expected is missing (`UNDEFINED_COLUMN`,
    /// `UNDEFINED_TABLE`, `UNDEFINED_FUNCTION`): the server version should be read again.
    pub fn is_version_mismatch(&self) -> bool {
        self.code().is_some_and(is_version_mismatch_state)
    }

    /// The session is read-only and the query tried to write (`READ_ONLY_SQL_TRANSACTION`).
    pub fn is_read_only(&self) -> bool {
        self.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
    }

    /// The object is not ready for this (`OBJECT_NOT_IN_PREREQUISITE_STATE`: e.g.
    /// pg_stat_statements created but not in `shared_preload_libraries`).
    pub fn is_not_in_prerequisite_state(&self) -> bool {
        has_state(&self.source, &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    }

    /// Whether the connection itself is unusable (the pooled client should be discarded).
    pub fn is_connection_error(&self) -> bool {
        is_connection_error(&self.source)
    }

    /// What went wrong, without the SQLSTATE: the server's message, or the driver's error with
    /// its cause (an I/O error, a closed connection).
    pub fn message(&self) -> String {
        message(&self.source)
    }

    /// The error as a payload entry (see the module doc).
    pub fn to_json(&self) -> Json {
        entry(
            self.collector,
            Subject::Query(self.query),
            &self.message(),
            self.sqlstate(),
            self.is_timeout(),
        )
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} collector: query {}: {}",
            self.collector,
            self.query,
            self.message()
        )?;
        if let Some(code) = self.sqlstate() {
            write!(f, " ({code})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What a payload error entry names besides the collector.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A query, by its short name (`"query"`).
    Query(&'a str),
    /// A file (`"file"`).
    File(&'a str),
    /// Nothing more specific than the collector.
    Collector,
}

/// The one shape of an error inside a payload: `{collector, query | file, error, sqlstate (only
/// when there is one), timed_out}`.
pub fn entry(
    collector: &str,
    subject: Subject<'_>,
    error: &str,
    sqlstate: Option<&str>,
    timed_out: bool,
) -> Json {
    let mut o = Json::object().field("collector", collector);
    match subject {
        Subject::Query(q) => o.push("query", q),
        Subject::File(f) => o.push("file", f),
        Subject::Collector => {}
    }
    o.push("error", error);
    if let Some(code) = sqlstate {
        o.push("sqlstate", code);
    }
    o.field("timed_out", timed_out)
}

/// The entry of a collector that did not run this cycle: the common shape with `error`
/// `"skipped: <reason>"` and `skipped` holding the reason.
pub fn skipped_entry(collector: &str, reason: &str) -> Json {
    entry(
        collector,
        Subject::Collector,
        &format!("skipped: {reason}"),
        None,
        false,
    )
    .field("skipped", reason)
}

/// Whether the server answered `err` with `state`.
pub fn has_state(err: &postgres::Error, state: &SqlState) -> bool {
    err.code() == Some(state)
}

/// Whether `err` means the connection itself is unusable (rather than the statement failing):
/// closed, an I/O or protocol error (no server error), the backend going away
/// (`ADMIN_SHUTDOWN`, `CRASH_SHUTDOWN`, `CANNOT_CONNECT_NOW`) or any connection exception
/// (class 08).
pub fn is_connection_error(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        None => true,
        Some(code) => is_connection_state(code),
    }
}

/// The kind of the I/O error under `err` (the first `std::io::Error` in its source chain), if
/// the driver failed on I/O: `ConnectionRefused` or `NotFound` (no server on that port or
/// socket), `TimedOut`, ... A connect failure without a server answer is classified by this,
/// never by the message text.
pub fn io_error_kind(err: &postgres::Error) -> Option<std::io::ErrorKind> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// The server's message of `err`, or the driver's error with its cause.
pub fn message(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(err) {
            Some(inner) => format!("{err}: {inner}"),
            None => err.to_string(),
        },
    }
}

fn is_timeout_state(code: &SqlState) -> bool {
    *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE
}

fn is_version_mismatch_state(code: &SqlState) -> bool {
    *code == SqlState::UNDEFINED_COLUMN
        || *code == SqlState::UNDEFINED_TABLE
        || *code == SqlState::UNDEFINED_FUNCTION
}

fn is_connection_state(code: &SqlState) -> bool {
    *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        // Class 08: connection exception.
        || code.code().starts_with("08")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_sqlstate_constants() {
        assert!(is_timeout_state(&SqlState::QUERY_CANCELED));
        assert!(is_timeout_state(&SqlState::LOCK_NOT_AVAILABLE));
        assert!(!is_timeout_state(&SqlState::INSUFFICIENT_PRIVILEGE));
        assert!(!is_timeout_state(&SqlState::from_code("57014x")));
        assert!(is_version_mismatch_state(&SqlState::UNDEFINED_TABLE));
        assert!(!is_version_mismatch_state(&SqlState::SYNTAX_ERROR));
        assert!(is_connection_state(&SqlState::ADMIN_SHUTDOWN));
        assert!(is_connection_state(&SqlState::CONNECTION_FAILURE));
        assert!(!is_connection_state(&SqlState::QUERY_CANCELED));
    }

    #[test]
    fn an_entry_has_the_one_shape() {
        let e = entry(
            "wal",
            Subject::Query("pg_stat_wal"),
            "boom",
            Some("57014"),
            true,
        );
        assert_eq!(
            e.to_json_string(),
            r#"{"collector":"wal","query":"pg_stat_wal","error":"boom","sqlstate":"57014","timed_out":true}"#
        );
        let f = entry("host", Subject::File("/proc/stat"), "gone", None, false);
        assert_eq!(
            f.to_json_string(),
            r#"{"collector":"host","file":"/proc/stat","error":"gone","timed_out":false}"#
        );
        let s = skipped_entry("health", "paused");
        assert_eq!(
            s.to_json_string(),
            r#"{"collector":"health","error":"skipped: paused","timed_out":false,"skipped":"paused"}"#
        );
    }
}
