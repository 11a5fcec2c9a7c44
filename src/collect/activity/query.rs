//! The per-second sample query and what it returns: the SQL for each PostgreSQL version (one
//! cheap `pg_stat_activity` read, prepared once per connection), a decoded row, and whether the
//! server computes query ids.
//!
//! Invariants: the query touches only `pg_stat_activity`, excludes idle sessions, the agent's
//! own sessions (application_name `bitville-monitor` and its own pid) and WAL senders, and calls
//! no function per row (`now()` and `pg_backend_pid()` are init-plans, evaluated once). Decoding
//! never fails a sample: a row without pid or server time is skipped.

use std::net::IpAddr;
use std::time::SystemTime;

use super::{ExecKey, COLLECTOR};
use crate::collect::{col, unix_secs, CollectError};
use crate::pool::PooledClient;

/// The per-second query for PostgreSQL 14 and later. Rows: one per session that is not idle
/// and not the agent, background processes included (their `state` is NULL: checkpointer,
/// background writer, WAL writer, autovacuum, ...). Column 13 is `leader_pid` (PostgreSQL 13+),
/// so parallel workers fold into their leader; column 14 is `query_id` (PostgreSQL 14+, NULL
/// while `compute_query_id` is off).
const SAMPLE_SQL_14: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, leader_pid, query_id FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// [`SAMPLE_SQL_14`] for PostgreSQL 13, which has no `query_id`.
const SAMPLE_SQL_13: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, leader_pid, NULL::bigint FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// [`SAMPLE_SQL_13`] for PostgreSQL 12, which has no `leader_pid`.
const SAMPLE_SQL_12: &str = "SELECT pid, (SELECT now()), query_start, xact_start, state, \
     wait_event_type, wait_event, datname, usename, application_name, client_addr, backend_type, \
     query, NULL::int, NULL::bigint FROM pg_stat_activity \
     WHERE (state IS NULL OR state <> 'idle') AND pid <> (SELECT pg_backend_pid()) \
     AND application_name IS DISTINCT FROM 'bitville-monitor' \
     AND backend_type IS DISTINCT FROM 'walsender'";

/// Runs `sql` as the statement `name`, prepared once per connection
/// ([`PooledClient::query_cached`]). Planning pg_stat_activity's view costs the server far more
/// than executing it (481 against 27 µs a query in a hot loop), and the sample runs every
/// second: the cached plan cuts the agent's CPU inside PostgreSQL by 30 to 50 %
/// (BENCHMARKS.md). The connection knows what it prepared, so no `EXECUTE` of a missing
/// statement ever writes an ERROR into the server log.
pub(super) fn query_prepared(
    client: &mut PooledClient,
    name: &'static str,
    sql: &str,
) -> Result<Vec<postgres::Row>, postgres::Error> {
    client.query_cached(name, sql)
}

/// `pg_stat_activity.leader_pid` exists from PostgreSQL 13.
const LEADER_PID_SINCE: u32 = 130000;

/// `pg_stat_activity.query_id` and `compute_query_id` exist from PostgreSQL 14.
pub const QUERY_ID_SINCE: u32 = 140000;

/// The sample query for a server of `version` (`server_version_num`) and the name it is
/// prepared under on each connection.
pub(super) fn sample_sql(version: u32) -> (&'static str, &'static str) {
    if version >= QUERY_ID_SINCE {
        (SAMPLE_SQL_14, "bitville_sample_14")
    } else if version >= LEADER_PID_SINCE {
        (SAMPLE_SQL_13, "bitville_sample_13")
    } else {
        (SAMPLE_SQL_12, "bitville_sample_12")
    }
}

/// Whether the server gives executions a `query_id` (the exact join between a sampled
/// execution, its pg_stat_statements row and its log lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryIdStatus {
    /// PostgreSQL before 14 has no `query_id`.
    Unsupported {
        /// `server_version_num`.
        version: u32,
    },
    /// Query ids are computed.
    On,
    /// `compute_query_id` is off (or `auto` with no module that asks for it).
    Off {
        /// The `compute_query_id` setting.
        setting: String,
    },
}

impl QueryIdStatus {
    /// A sentence for the agent's log and `--test`: what is missing and the fix; `None` when
    /// query ids are computed.
    pub fn problem(&self) -> Option<String> {
        match self {
            QueryIdStatus::On => None,
            QueryIdStatus::Unsupported { version } => Some(format!(
                "PostgreSQL {} has no query_id (14 and later have): sampled executions are \
                 joined to pg_stat_statements and log lines by text and time only",
                version / 10000
            )),
            QueryIdStatus::Off { setting } => Some(format!(
                "compute_query_id is {setting}: sampled executions carry no query_id; set \
                 compute_query_id = on (or auto with pg_stat_statements in \
                 shared_preload_libraries) to join them exactly to pg_stat_statements and the log"
            )),
        }
    }
}

/// Asks the server whether it computes query ids (`compute_query_id`, and for `auto` whether
/// pg_stat_statements is preloaded).
pub fn query_id_status(client: &mut postgres::Client) -> Result<QueryIdStatus, CollectError> {
    let version = crate::collect::server_version_num(client, COLLECTOR)?;
    if version < QUERY_ID_SINCE {
        return Ok(QueryIdStatus::Unsupported { version });
    }
    let row = client
        .query_one(
            "SELECT current_setting('compute_query_id'), \
             current_setting('shared_preload_libraries')",
            &[],
        )
        .map_err(CollectError::query(COLLECTOR, "compute_query_id"))?;
    let setting: String = col::<&str>(&row, 0).unwrap_or("").to_string();
    let preload: &str = col(&row, 1).unwrap_or("");
    Ok(query_id_from_settings(&setting, preload))
}

fn query_id_from_settings(setting: &str, preload: &str) -> QueryIdStatus {
    let with_pgss = preload
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "pg_stat_statements");
    match setting {
        "on" | "regress" | "verbose" => QueryIdStatus::On,
        "auto" if with_pgss => QueryIdStatus::On,
        other => QueryIdStatus::Off {
            setting: other.to_string(),
        },
    }
}

/// One row of the per-second query, decoded (strings borrowed from the driver's row).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SessionRow<'a> {
    pub(super) pid: i32,
    pub(super) now: f64,
    pub(super) query_start: Option<f64>,
    pub(super) xact_start: Option<f64>,
    pub(super) state: Option<&'a str>,
    pub(super) wait_event_type: Option<&'a str>,
    pub(super) wait_event: Option<&'a str>,
    pub(super) datname: Option<&'a str>,
    pub(super) usename: Option<&'a str>,
    pub(super) application_name: Option<&'a str>,
    pub(super) client_addr: Option<IpAddr>,
    pub(super) backend_type: Option<&'a str>,
    pub(super) query: Option<&'a str>,
    pub(super) leader_pid: Option<i32>,
    pub(super) query_id: Option<i64>,
}

impl<'a> SessionRow<'a> {
    /// `None` for a row without pid or server time (never expected; skipped, not fatal).
    pub(super) fn decode(row: &'a postgres::Row) -> Option<SessionRow<'a>> {
        Some(SessionRow {
            pid: col(row, 0)?,
            now: unix_secs(col(row, 1)?),
            query_start: col::<SystemTime>(row, 2).map(unix_secs),
            xact_start: col::<SystemTime>(row, 3).map(unix_secs),
            state: col(row, 4),
            wait_event_type: col(row, 5),
            wait_event: col(row, 6),
            datname: col(row, 7),
            usename: col(row, 8),
            application_name: col(row, 9),
            client_addr: col(row, 10),
            backend_type: col(row, 11),
            query: col(row, 12),
            leader_pid: col(row, 13),
            query_id: col::<i64>(row, 14).filter(|q| *q != 0),
        })
    }

    /// A server process rather than a client's session: its state is NULL (checkpointer,
    /// background writer, WAL writer, ...) or its type says so (autovacuum, logical replication
    /// workers, extensions' background workers). Never correlated.
    pub(super) fn is_background(&self) -> bool {
        self.state.is_none()
            || self
                .backend_type
                .is_some_and(|t| t != "client backend" && t != "parallel worker")
    }

    /// For a parallel worker, its leader: `Some(Some(pid))` from `leader_pid` (PostgreSQL 13+),
    /// `Some(None)` when only the backend type says it is a worker (PostgreSQL 12). `None` for
    /// every other session.
    pub(super) fn worker_leader(&self) -> Option<Option<i32>> {
        if let Some(l) = self.leader_pid.filter(|l| *l != self.pid) {
            return Some(Some(l));
        }
        (self.backend_type == Some("parallel worker")).then_some(None)
    }

    pub(super) fn key(&self) -> ExecKey {
        (self.pid, micros(self.query_start))
    }
}

pub(super) fn micros(t: Option<f64>) -> i64 {
    match t {
        None => i64::MIN,
        Some(t) => (t * 1e6) as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_id_status_follows_the_settings() {
        assert_eq!(query_id_from_settings("on", ""), QueryIdStatus::On);
        assert_eq!(
            query_id_from_settings("auto", "auto_explain, \"pg_stat_statements\""),
            QueryIdStatus::On
        );
        let off = query_id_from_settings("auto", "auto_explain");
        assert!(off.problem().unwrap().contains("compute_query_id is auto"));
        assert!(query_id_from_settings("off", "pg_stat_statements")
            .problem()
            .unwrap()
            .contains("set compute_query_id = on"));
        assert!(QueryIdStatus::Unsupported { version: 130004 }
            .problem()
            .unwrap()
            .contains("PostgreSQL 13"));
        assert_eq!(QueryIdStatus::On.problem(), None);
    }
}
