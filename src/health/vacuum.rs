//! Vacuum and wraparound: the vacuums running now (`pg_stat_progress_vacuum`: which table, which
//! phase, how far), autovacuum workers busy against `autovacuum_max_workers`, and per database
//! the age of `datfrozenxid` and `datminmxid` as a share of the wraparound limit.
//!
//! Invariants: a relation of another database is named by its oid only: `regclass` resolves names
//! in the connected database, where the same oid may be another relation.

use super::counters::{self, number, round3, Value};
use super::version::{self, VACUUM_PROGRESS};
use super::{Ctx, PgError};
use crate::json::Json;

/// Transaction ids (and multixact ids) wrap around after 2^31: the share is age / 2^31.
pub const WRAPAROUND_LIMIT: f64 = 2_147_483_648.0;

/// Most databases listed in the wraparound figures (the oldest first).
pub const MAX_DATABASES: i64 = 100;

/// Reads the running vacuums and the autovacuum worker count.
pub(crate) fn collect_progress(client: &mut postgres::Client, ctx: &Ctx) -> Result<Json, PgError> {
    let err = PgError::at("vacuum", "pg_stat_progress_vacuum, pg_stat_activity");
    let cols = version::resolve(VACUUM_PROGRESS, ctx.major);
    // LEFT JOIN from the one-row settings relation: one row even when nothing is vacuuming.
    let sql = format!(
        "SELECT s.max_workers, s.busy, p.*
         FROM (SELECT current_setting('autovacuum_max_workers')::int8 AS max_workers,
                      (SELECT count(*) FROM pg_stat_activity
                       WHERE backend_type = 'autovacuum worker')::int8 AS busy) s
         LEFT JOIN (
           SELECT v.pid, v.datname::text AS datname,
                  CASE WHEN v.datid = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
                       THEN v.relid::regclass::text ELSE v.relid::text END AS relation,
                  v.phase::text AS phase,
                  (a.backend_type = 'autovacuum worker') AS autovacuum,
                  extract(epoch FROM now() - a.xact_start)::float8 AS running_s,
                  {}
           FROM pg_stat_progress_vacuum v LEFT JOIN pg_stat_activity a ON a.pid = v.pid
         ) p ON true
         ORDER BY p.running_s DESC NULLS LAST",
        version::select_list(&cols)
    );
    let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
    let mut out = Json::object();
    let mut running = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if i == 0 {
            let max: Option<i64> = row.try_get("max_workers").map_err(&err)?;
            let busy: Option<i64> = row.try_get("busy").map_err(&err)?;
            out.push("autovacuum_max_workers", max);
            out.push("autovacuum_workers_busy", busy);
            out.push(
                "autovacuum_busy_share",
                match (busy, max) {
                    (Some(b), Some(m)) if m > 0 => Json::Float(round3(b as f64 / m as f64)),
                    _ => Json::Null,
                },
            );
        }
        let pid: Option<i32> = row.try_get("pid").map_err(&err)?;
        if pid.is_none() {
            continue;
        }
        let mut e = Json::object().field("pid", pid);
        for k in ["datname", "relation", "phase"] {
            e.push(k, row.try_get::<_, Option<String>>(k).map_err(&err)?);
        }
        e.push(
            "autovacuum",
            row.try_get::<_, Option<bool>>("autovacuum").map_err(&err)?,
        );
        e.push(
            "running_s",
            row.try_get::<_, Option<f64>>("running_s")
                .map_err(&err)?
                .map(round3),
        );
        let values = counters::read(row, &cols).map_err(&err)?;
        let num = |name: &str| {
            cols.iter()
                .position(|c| c.name == name)
                .and_then(|i| values.get(i))
                .and_then(Value::num)
        };
        // How far the heap scan got; the later phases (indexes, truncate) show in `phase`.
        e.push(
            "scanned_share",
            match (num("heap_blks_scanned"), num("heap_blks_total")) {
                (Some(s), Some(t)) if t > 0.0 => Json::Float(round3(s / t)),
                _ => Json::Null,
            },
        );
        for (c, v) in cols.iter().zip(values.iter()) {
            e.push(c.name, v.num().map(number));
        }
        running.push(e);
    }
    out.push("running", Json::Array(running));
    Ok(out)
}

/// Reads the transaction id and multixact ages of every database.
pub(crate) fn collect_wraparound(client: &mut postgres::Client) -> Result<Json, PgError> {
    let err = PgError::at("wraparound", "pg_database");
    let sql = format!(
        "SELECT datname::text, age(datfrozenxid)::int8 AS xid_age,
                mxid_age(datminmxid)::int8 AS mxid_age,
                current_setting('autovacuum_freeze_max_age')::int8 AS freeze_max_age,
                current_setting('autovacuum_multixact_freeze_max_age')::int8
                    AS multixact_freeze_max_age
         FROM pg_database ORDER BY greatest(age(datfrozenxid), mxid_age(datminmxid)) DESC
         LIMIT {MAX_DATABASES}"
    );
    let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
    let mut out = Json::object();
    let mut list = Vec::with_capacity(rows.len());
    let (mut max_xid, mut max_mxid) = (0i64, 0i64);
    for (i, row) in rows.iter().enumerate() {
        let xid: i64 = row
            .try_get::<_, Option<i64>>("xid_age")
            .map_err(&err)?
            .unwrap_or(0);
        let mxid: i64 = row
            .try_get::<_, Option<i64>>("mxid_age")
            .map_err(&err)?
            .unwrap_or(0);
        if i == 0 {
            out.push(
                "autovacuum_freeze_max_age",
                row.try_get::<_, Option<i64>>("freeze_max_age")
                    .map_err(&err)?,
            );
            out.push(
                "autovacuum_multixact_freeze_max_age",
                row.try_get::<_, Option<i64>>("multixact_freeze_max_age")
                    .map_err(&err)?,
            );
        }
        max_xid = max_xid.max(xid);
        max_mxid = max_mxid.max(mxid);
        list.push(
            Json::object()
                .field(
                    "datname",
                    row.try_get::<_, Option<String>>("datname").map_err(&err)?,
                )
                .field("xid_age", xid)
                .field("xid_wraparound_share", share(xid))
                .field("mxid_age", mxid)
                .field("mxid_wraparound_share", share(mxid)),
        );
    }
    out.push("max_xid_age", max_xid);
    out.push("max_xid_wraparound_share", share(max_xid));
    out.push("max_mxid_age", max_mxid);
    out.push("max_mxid_wraparound_share", share(max_mxid));
    out.push("databases", Json::Array(list));
    Ok(out)
}

/// `age` as a share of the wraparound limit.
fn share(age: i64) -> f64 {
    age as f64 / WRAPAROUND_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_relative_to_two_to_the_31() {
        assert_eq!(share(0), 0.0);
        assert_eq!(share(1_073_741_824), 0.5);
        assert!((share(200_000_000) - 0.093132).abs() < 1e-6);
    }
}
