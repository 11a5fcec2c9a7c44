//! The deep snapshot, taken once per spike right after it started: the full lock-wait trees,
//! the sessions idle in a transaction that hold locks, and the `/proc` run state of every
//! PostgreSQL process the server lists (not only the sampled ones).
//!
//! Invariants: three read-only queries on the agent's guarded session (statement and lock
//! timeouts apply), once per spike; query texts go through the configured [`QueryText`] (so
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

/// Takes the snapshot. Errors of single parts are inside the result; only a lost connection
/// fails it as a whole.
pub fn snapshot(client: &mut postgres::Client, o: &DeepOptions) -> Result<Json, CollectError> {
    let version = server_version_num(client, COLLECTOR)?;
    let mut errors = Vec::new();
    let sessions_sql = "SELECT pid, state, backend_type, usename, datname, application_name, \
         query, xact_start, now() FROM pg_stat_activity WHERE pid <> pg_backend_pid()";
    let rows = client
        .query_typed(sessions_sql, &[])
        .map_err(CollectError::query(COLLECTOR, "sessions"))?;
    let mut info: BTreeMap<i32, Json> = BTreeMap::new();
    let mut backends: Vec<(i32, Option<String>)> = Vec::new();
    for r in &rows {
        let Some(pid) = col::<i32>(r, 0) else {
            continue;
        };
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
                            j.push(k, v.clone());
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
    Ok(Json::object()
        .field("lock_trees", trees)
        .field("idle_in_transaction_holding_locks", idle_holders)
        .field("processes", processes(&mut ProcReader::new(), &backends))
        .field("errors", Json::Array(errors)))
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
        counts.push(&k, v);
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
