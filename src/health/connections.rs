//! Connections: sessions by state and by backend type against `max_connections` and the
//! reserved slots, and the oldest transaction and oldest idle-in-transaction session.
//!
//! One query over `pg_stat_activity` (materialized once in a CTE) returns the grouped counts and
//! the two oldest sessions as rows of one UNION. Query texts are never read here: only who, how
//! old and in which state. The agent's own query is not counted as the oldest transaction.

use super::counters::{number, round3};
use super::version::{self, CONNECTION_LIMITS};
use super::{Ctx, PgError};
use crate::json::Json;

const QUERY: &str = "pg_stat_activity";

/// Runs the connections query and builds its figures.
pub(crate) fn collect(client: &mut postgres::Client, ctx: &Ctx) -> Result<Json, PgError> {
    let err = PgError::at("connections", QUERY);
    let limits = version::resolve(CONNECTION_LIMITS, ctx.major);
    let sql = format!(
        "WITH a AS MATERIALIZED (
           SELECT pid, datname, usename, application_name, backend_type, state, xact_start,
                  state_change
           FROM pg_stat_activity),
         s AS (SELECT {limits})
         SELECT s.*, u.* FROM s LEFT JOIN (
           SELECT 'count' AS kind, backend_type::text AS backend_type, state::text AS state,
                  count(*)::int8 AS n, NULL::int4 AS pid, NULL::text AS datname,
                  NULL::text AS usename, NULL::text AS application_name, NULL::float8 AS age_s
           FROM a GROUP BY backend_type, state
           UNION ALL
           (SELECT 'oldest_transaction', backend_type, state, NULL, pid, datname, usename,
                   application_name, extract(epoch FROM now() - xact_start)::float8
            FROM a WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
            ORDER BY xact_start LIMIT 1)
           UNION ALL
           (SELECT 'oldest_idle_in_transaction', backend_type, state, NULL, pid, datname,
                   usename, application_name, extract(epoch FROM now() - state_change)::float8
            FROM a WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
            ORDER BY state_change LIMIT 1)
         ) u ON true",
        limits = version::select_list(&limits)
    );
    let rows = client.query(&sql, &[]).map_err(&err)?;
    let mut by_state = Json::object();
    let mut by_type: Vec<(String, i64)> = Vec::new();
    let mut client_backends = 0i64;
    let mut total = 0i64;
    let mut oldest = Json::Null;
    let mut oldest_idle = Json::Null;
    let mut out = Json::object();
    for (i, row) in rows.iter().enumerate() {
        if i == 0 {
            for c in &limits {
                let v: Option<f64> = row.try_get(c.name).map_err(&err)?;
                out.push(c.name, v.map(number));
            }
        }
        let kind: Option<String> = row.try_get("kind").map_err(&err)?;
        let backend_type: Option<String> = row.try_get("backend_type").map_err(&err)?;
        let state: Option<String> = row.try_get("state").map_err(&err)?;
        match kind.as_deref() {
            Some("count") => {
                let n: i64 = row
                    .try_get::<_, Option<i64>>("n")
                    .map_err(&err)?
                    .unwrap_or(0);
                total += n;
                let bt = backend_type.unwrap_or_else(|| "unknown".into());
                match by_type.iter_mut().find(|(t, _)| *t == bt) {
                    Some((_, c)) => *c += n,
                    None => by_type.push((bt.clone(), n)),
                }
                if bt == "client backend" {
                    client_backends += n;
                    by_state.push(state.unwrap_or_else(|| "unknown".to_string()), n);
                }
            }
            Some(which) => {
                let session = Json::object()
                    .field("pid", row.try_get::<_, Option<i32>>("pid").map_err(&err)?)
                    .field(
                        "datname",
                        row.try_get::<_, Option<String>>("datname").map_err(&err)?,
                    )
                    .field(
                        "usename",
                        row.try_get::<_, Option<String>>("usename").map_err(&err)?,
                    )
                    .field(
                        "application_name",
                        row.try_get::<_, Option<String>>("application_name")
                            .map_err(&err)?,
                    )
                    .field("backend_type", backend_type)
                    .field("state", state)
                    .field(
                        "age_s",
                        row.try_get::<_, Option<f64>>("age_s")
                            .map_err(&err)?
                            .map(round3),
                    );
                if which == "oldest_transaction" {
                    oldest = session;
                } else {
                    oldest_idle = session;
                }
            }
            None => {}
        }
    }
    let setting = |name: &str| match out.get(name) {
        Some(Json::Int(v)) => *v,
        _ => 0,
    };
    // Client backends are what max_connections limits; the reserved slots are not available to
    // ordinary roles, so "available" is what the application can still open.
    let usable = setting("max_connections")
        - setting("superuser_reserved_connections")
        - setting("reserved_connections");
    out.push("total", total);
    out.push("client_backends", client_backends);
    out.push("available", (usable - client_backends).max(0));
    out.push(
        "used_share",
        if usable > 0 {
            Json::Float(round3(client_backends as f64 / usable as f64))
        } else {
            Json::Null
        },
    );
    out.push("by_state", by_state);
    out.push(
        "by_backend_type",
        Json::Object(
            by_type
                .into_iter()
                .map(|(t, n)| (t.into(), Json::Int(n)))
                .collect(),
        ),
    );
    out.push("oldest_transaction", oldest);
    out.push("oldest_idle_in_transaction", oldest_idle);
    Ok(out)
}
