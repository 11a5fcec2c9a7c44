//! The deep snapshot, taken once per spike right after it started: the full lock-wait trees,
//! the sessions idle in a transaction that hold locks, the `/proc` run state of every
//! PostgreSQL process the server lists (not only the sampled ones), and the pg_stat_statements
//! counters of the query_ids active then; when the spike ends the same counters again, so the
//! spike gets its own statement deltas.
//!
//! Invariants: a few read-only queries on the agent's guarded session (statement and lock
//! timeouts apply), at the start and the end of a spike only; pg_stat_statements is asked only
//! when the extension exists and is preloaded (PostgreSQL 14+, for query_id), so the normal path
//! puts no error in the server log; query texts go through the configured [`QueryText`] (so
//! `normalized` leaks no literals); a failing part is named in `errors` and the rest still ships.

use std::collections::BTreeMap;

use crate::collect::procfs::ProcReader;
use crate::collect::{col, locks, server_version_num, unix_secs, CollectError};
use crate::json::Json;
use crate::normalize::{CorrelationPattern, QueryText};

const COLLECTOR: &str = "spike_deep";

/// Most sessions listed per part (the counts are exact).
const MAX_LISTED: usize = 100;

/// How query texts and request ids are taken from the server's rows.
#[derive(Debug, Clone, Default)]
pub struct DeepOptions {
    /// Query text mode.
    pub query_text: QueryText,
    /// Correlation ids in application_name.
    pub correlation: CorrelationPattern,
}

/// `pg_stat_activity.query_id` exists from PostgreSQL 14.
const QUERY_ID_SINCE: u32 = 140000;

/// Most query_ids whose statement counters are followed per spike.
const MAX_QUERY_IDS: usize = 50;

/// What the sampler thread asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The deep snapshot at the spike's start.
    Start,
    /// The statement counters of these query_ids at the spike's end.
    End {
        /// The query_ids of the start snapshot.
        query_ids: Vec<i64>,
    },
}

/// pg_stat_statements counters of one query_id (summed over users and databases).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatementCounters {
    /// `queryid`.
    pub query_id: i64,
    /// `calls`.
    pub calls: i64,
    /// `total_exec_time`, ms.
    pub total_exec_time_ms: f64,
    /// `rows`.
    pub rows: i64,
    /// `shared_blks_hit`.
    pub shared_blks_hit: i64,
    /// `shared_blks_read`.
    pub shared_blks_read: i64,
    /// `temp_blks_written`.
    pub temp_blks_written: i64,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The deep snapshot (start only).
    pub snapshot: Option<Json>,
    /// Statement counters of `query_ids`.
    pub statements: Vec<StatementCounters>,
    /// The query_ids followed (start: those active then).
    pub query_ids: Vec<i64>,
}

/// The spike's own statement figures: end minus start per query_id, most execution time first.
/// A query_id that had no entry at the start counts from zero (its first calls finished during
/// the spike); one missing at the end (evicted, or a reset) or whose calls went backwards (a
/// reset) is marked `reset` instead of shipping negative numbers.
pub fn deltas(start: &[StatementCounters], end: &[StatementCounters]) -> Json {
    let mut out: Vec<(f64, Json)> = Vec::new();
    for s in start {
        let found = end.iter().find(|e| e.query_id == s.query_id);
        if found.is_none() && s.calls == 0 {
            // Not finished once yet at either end: nothing to say.
            continue;
        }
        let row = match found {
            Some(e) if e.calls >= s.calls => {
                let time = (e.total_exec_time_ms - s.total_exec_time_ms).max(0.0);
                let d = |a: i64, b: i64| (a - b).max(0);
                (
                    time,
                    Json::object()
                        .field("query_id", s.query_id)
                        .field("calls", e.calls - s.calls)
                        .field("total_exec_time_ms", super::round(time, 3))
                        .field("rows", d(e.rows, s.rows))
                        .field("shared_blks_hit", d(e.shared_blks_hit, s.shared_blks_hit))
                        .field(
                            "shared_blks_read",
                            d(e.shared_blks_read, s.shared_blks_read),
                        )
                        .field(
                            "temp_blks_written",
                            d(e.temp_blks_written, s.temp_blks_written),
                        )
                        .field("reset", false),
                )
            }
            _ => (
                -1.0,
                Json::object()
                    .field("query_id", s.query_id)
                    .field("reset", true),
            ),
        };
        out.push(row);
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    Json::Array(out.into_iter().map(|(_, j)| j).collect())
}

/// Answers `req` on `client`.
pub fn run(
    client: &mut postgres::Client,
    o: &DeepOptions,
    req: &Request,
) -> Result<Answer, CollectError> {
    match req {
        Request::Start => snapshot(client, o),
        Request::End { query_ids } => {
            let version = server_version_num(client, COLLECTOR)?;
            let statements = if version >= QUERY_ID_SINCE && statements_usable(client)? {
                statement_counters(client, query_ids)?
            } else {
                Vec::new()
            };
            Ok(Answer {
                snapshot: None,
                statements,
                query_ids: query_ids.clone(),
            })
        }
    }
}

/// Whether pg_stat_statements can be read without an error: created and preloaded.
fn statements_usable(client: &mut postgres::Client) -> Result<bool, CollectError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') \
             AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
            &[],
        )
        .map_err(CollectError::query(COLLECTOR, "pg_stat_statements_check"))?;
    Ok(col::<bool>(&row, 0).unwrap_or(false))
}

fn statement_counters(
    client: &mut postgres::Client,
    ids: &[i64],
) -> Result<Vec<StatementCounters>, CollectError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ids.to_vec();
    let rows = client
        .query_typed(
            "SELECT queryid, sum(calls)::int8, sum(total_exec_time)::float8, sum(rows)::int8, \
             sum(shared_blks_hit)::int8, sum(shared_blks_read)::int8, \
             sum(temp_blks_written)::int8 FROM pg_stat_statements \
             WHERE queryid = ANY($1) GROUP BY queryid",
            &[(&ids, postgres::types::Type::INT8_ARRAY)],
        )
        .map_err(CollectError::query(COLLECTOR, "pg_stat_statements"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(StatementCounters {
                query_id: col(r, 0)?,
                calls: col(r, 1).unwrap_or(0),
                total_exec_time_ms: col(r, 2).unwrap_or(0.0),
                rows: col(r, 3).unwrap_or(0),
                shared_blks_hit: col(r, 4).unwrap_or(0),
                shared_blks_read: col(r, 5).unwrap_or(0),
                temp_blks_written: col(r, 6).unwrap_or(0),
            })
        })
        .collect())
}

/// Takes the start snapshot. Errors of single parts are inside the result; only a lost
/// connection fails it as a whole.
fn snapshot(client: &mut postgres::Client, o: &DeepOptions) -> Result<Answer, CollectError> {
    let version = server_version_num(client, COLLECTOR)?;
    let mut errors = Vec::new();
    let query_id = if version >= QUERY_ID_SINCE {
        "query_id"
    } else {
        "NULL::int8"
    };
    let sessions_sql = format!(
        "SELECT pid, state, backend_type, usename, datname, application_name, \
         query, xact_start, now(), {query_id} FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    );
    let rows = client
        .query_typed(&sessions_sql, &[])
        .map_err(CollectError::query(COLLECTOR, "sessions"))?;
    let mut info: BTreeMap<i32, Json> = BTreeMap::new();
    let mut backends: Vec<(i32, Option<String>)> = Vec::new();
    let mut query_ids: Vec<i64> = Vec::new();
    for r in &rows {
        let Some(pid) = col::<i32>(r, 0) else {
            continue;
        };
        if let Some(q) = col::<i64>(r, 9).filter(|q| *q != 0) {
            let active = col::<&str>(r, 1) == Some("active");
            if active && !query_ids.contains(&q) && query_ids.len() < MAX_QUERY_IDS {
                query_ids.push(q);
            }
        }
        let app: Option<&str> = col(r, 5);
        let now = col(r, 8).map(unix_secs);
        let xact = col(r, 7).map(unix_secs);
        backends.push((pid, col::<&str>(r, 2).map(str::to_string)));
        info.insert(
            pid,
            Json::object()
                .field("state", col::<&str>(r, 1))
                .field("backend_type", col::<&str>(r, 2))
                .field("usename", col::<&str>(r, 3))
                .field("datname", col::<&str>(r, 4))
                .field("correlation_id", app.and_then(|a| o.correlation.extract(a)))
                .field(
                    "xact_age_ms",
                    match (now, xact) {
                        (Some(n), Some(x)) => Some(((n - x) * 1000.0).max(0.0)),
                        _ => None,
                    },
                )
                .field(
                    "query",
                    col::<&str>(r, 6).and_then(|q| o.query_text.render(q)),
                ),
        );
    }
    let trees = match locks::query_waiters(client, version) {
        Ok(waiters) => {
            let trees = locks::build_trees(&waiters);
            locks::trees_json(&trees, &waiters, |pid| info.get(&pid).cloned())
        }
        Err(e) => {
            errors.push(e.to_json());
            Json::Null
        }
    };
    let holders_sql = "SELECT l.pid, count(*)::int8 FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.granted AND a.state LIKE 'idle in transaction%' \
         AND l.locktype NOT IN ('virtualxid') GROUP BY l.pid ORDER BY 2 DESC";
    let idle_holders = match client.query_typed(holders_sql, &[]) {
        Ok(rows) => Json::Array(
            rows.iter()
                .take(MAX_LISTED)
                .filter_map(|r| {
                    let pid: i32 = col(r, 0)?;
                    let mut j = Json::object()
                        .field("pid", pid)
                        .field("locks_held", col::<i64>(r, 1));
                    if let Some(Json::Object(f)) = info.get(&pid) {
                        for (k, v) in f {
                            j.push(k.clone(), v.clone());
                        }
                    }
                    Some(j)
                })
                .collect(),
        ),
        Err(e) => {
            errors.push(CollectError::query(COLLECTOR, "idle_lock_holders")(e).to_json());
            Json::Null
        }
    };
    let statements = if query_ids.is_empty() || version < QUERY_ID_SINCE {
        Vec::new()
    } else {
        match statements_usable(client).and_then(|ok| {
            if ok {
                statement_counters(client, &query_ids)
            } else {
                Ok(Vec::new())
            }
        }) {
            Ok(s) => s,
            Err(e) => {
                if e.is_connection_error() {
                    return Err(e);
                }
                errors.push(e.to_json());
                Vec::new()
            }
        }
    };
    // A query_id with no entry yet has not finished once: it starts from zero.
    let mut statements = statements;
    for &q in &query_ids {
        if !statements.iter().any(|c| c.query_id == q) {
            statements.push(StatementCounters {
                query_id: q,
                ..StatementCounters::default()
            });
        }
    }
    let snapshot = Json::object()
        .field("lock_trees", trees)
        .field("idle_in_transaction_holding_locks", idle_holders)
        .field("processes", processes(&mut ProcReader::new(), &backends))
        .field(
            "query_ids_followed",
            Json::Array(query_ids.iter().map(|&q| q.into()).collect()),
        )
        .field("errors", Json::Array(errors));
    Ok(Answer {
        snapshot: Some(snapshot),
        statements,
        query_ids,
    })
}

/// The run state of every listed process: counts by state and the processes in R or D.
pub fn processes(proc: &mut ProcReader, backends: &[(i32, Option<String>)]) -> Json {
    let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
    let mut busy = Vec::new();
    let mut n_read = 0u32;
    for (pid, backend_type) in backends {
        let Some(s) = proc.sample(*pid) else { continue };
        n_read += 1;
        let st = (s.stat.state as char).to_string();
        *by_state.entry(st.clone()).or_default() += 1;
        if matches!(s.stat.state, b'R' | b'D') && busy.len() < MAX_LISTED {
            busy.push(
                Json::object()
                    .field("pid", *pid)
                    .field("state", st)
                    .field("backend_type", backend_type.as_deref()),
            );
        }
    }
    proc.end_round();
    let mut counts = Json::object();
    for (k, v) in by_state {
        counts.push(k, v);
    }
    Json::object()
        .field("n_listed", backends.len())
        .field("n_read", n_read)
        .field("by_state", counts)
        .field("running_or_blocked", Json::Array(busy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: i64, calls: i64, ms: f64) -> StatementCounters {
        StatementCounters {
            query_id: id,
            calls,
            total_exec_time_ms: ms,
            rows: calls,
            ..StatementCounters::default()
        }
    }

    #[test]
    fn statement_deltas_are_the_spikes_own_and_resets_are_marked() {
        let start = [
            c(1, 10, 100.0),
            c(2, 5, 50.0),
            c(3, 7, 1.0),
            c(4, 0, 0.0),
            c(5, 0, 0.0),
        ];
        let end = [c(1, 12, 2100.0), c(2, 1, 1.0), c(4, 40, 9000.0)];
        let j = deltas(&start, &end).to_json_string();
        assert_eq!(
            j,
            r#"[{"query_id":4,"calls":40,"total_exec_time_ms":9000.0,"rows":40,"shared_blks_hit":0,"shared_blks_read":0,"temp_blks_written":0,"reset":false},{"query_id":1,"calls":2,"total_exec_time_ms":2000.0,"rows":2,"shared_blks_hit":0,"shared_blks_read":0,"temp_blks_written":0,"reset":false},{"query_id":2,"reset":true},{"query_id":3,"reset":true}]"#
        );
    }

    #[test]
    fn process_states_are_counted_from_proc() {
        let dir = std::env::temp_dir().join(format!("bv-deep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (pid, st) in [(10, 'R'), (11, 'D'), (12, 'S'), (13, 'S')] {
            std::fs::create_dir_all(dir.join(pid.to_string())).unwrap();
            std::fs::write(
                dir.join(format!("{pid}/stat")),
                format!(
                    "{pid} (postgres) {st} 1 1 1 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 99 1000 256 0\n"
                ),
            )
            .unwrap();
        }
        let mut r = ProcReader::with_root(&dir);
        let list: Vec<(i32, Option<String>)> = [10, 11, 12, 13, 14]
            .iter()
            .map(|p| (*p, Some("client backend".to_string())))
            .collect();
        let j = processes(&mut r, &list).to_json_string();
        assert!(
            j.contains(r#""n_listed":5,"n_read":4,"by_state":{"D":1,"R":1,"S":2}"#),
            "{j}"
        );
        assert!(
            j.contains(r#"{"pid":10,"state":"R","backend_type":"client backend"}"#),
            "{j}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
