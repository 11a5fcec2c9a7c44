//! WAL: bytes generated per interval from the WAL position (`pg_current_wal_lsn()`; on a standby
//! the replay position, so the figure is WAL replayed), `pg_stat_wal` deltas on PG14+, and the
//! archiver's archived and failed counts.
//!
//! Invariants: the byte delta is taken only between two readings on the same side of recovery
//! (a promotion in between gives `null`), and never negative.

use super::counters::{self, number, Reading};
use super::version::{self, WAL};
use super::{Ctx, PgError};
use crate::json::Json;

/// The previous reading.
#[derive(Default)]
pub(crate) struct Wal {
    prev: Option<Snapshot>,
}

struct Snapshot {
    in_recovery: bool,
    position: Option<f64>,
    archived: Option<f64>,
    failed: Option<f64>,
    stats: Reading,
}

impl Wal {
    /// Reads the WAL position, `pg_stat_archiver` and `pg_stat_wal` and returns the deltas.
    pub(crate) fn collect(
        &mut self,
        client: &mut postgres::Client,
        ctx: &Ctx,
    ) -> Result<Json, PgError> {
        let query = if ctx.major >= 14 {
            "pg_current_wal_lsn, pg_stat_archiver, pg_stat_wal"
        } else {
            "pg_current_wal_lsn, pg_stat_archiver"
        };
        let err = PgError::at("wal", query);
        let cols = version::resolve(WAL, ctx.major);
        // pg_current_wal_lsn() fails during recovery; CASE evaluates only the branch taken.
        let sql = format!(
            "SELECT pg_is_in_recovery() AS in_recovery,
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_lsn() END::text AS lsn,
                    pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                         ELSE pg_current_wal_lsn() END, '0/0')::float8 AS position,
                    a.archived_count::float8 AS archived_count,
                    a.failed_count::float8 AS failed_count,
                    a.last_failed_wal,
                    extract(epoch FROM a.last_failed_time)::float8 AS last_failed_time,
                    extract(epoch FROM a.last_archived_time)::float8 AS last_archived_time,
                    extract(epoch FROM pg_postmaster_start_time())::float8 AS started,
                    {}
             FROM {}",
            version::select_list(&cols),
            version::wal_from(ctx.major)
        );
        let row = client.query_one(sql.as_str(), &[]).map_err(&err)?;
        let in_recovery: bool = row
            .try_get::<_, Option<bool>>("in_recovery")
            .map_err(&err)?
            .unwrap_or(false);
        let lsn: Option<String> = row.try_get("lsn").map_err(&err)?;
        let get = |name: &str| row.try_get::<_, Option<f64>>(name);
        let cur = Snapshot {
            in_recovery,
            position: get("position").map_err(&err)?,
            archived: get("archived_count").map_err(&err)?,
            failed: get("failed_count").map_err(&err)?,
            stats: Reading {
                values: counters::read(&row, &cols).map_err(&err)?,
                marker: vec![get("started").map_err(&err)?],
            },
        };
        let last_failed_time = get("last_failed_time").map_err(&err)?;
        let last_archived_time = get("last_archived_time").map_err(&err)?;
        let last_failed_wal: Option<String> = row.try_get("last_failed_wal").map_err(&err)?;
        let prev = self.prev.as_ref();
        let same_side = prev.is_some_and(|p| p.in_recovery == in_recovery);
        let bytes = if same_side {
            counters::delta(prev.and_then(|p| p.position), cur.position)
        } else {
            None
        };
        let mut out = Json::object()
            .field("in_recovery", in_recovery)
            .field("lsn", lsn)
            .field("bytes", bytes.map(number))
            .field(
                "archived",
                counters::delta(prev.and_then(|p| p.archived), cur.archived).map(number),
            )
            .field(
                "archive_failed",
                counters::delta(prev.and_then(|p| p.failed), cur.failed).map(number),
            )
            .field(
                // Archiving is failing now when the last failure is newer than the last success.
                "archive_failing",
                match (last_failed_time, last_archived_time) {
                    (Some(f), Some(a)) => f > a,
                    (Some(_), None) => true,
                    _ => false,
                },
            )
            .field("last_failed_wal", last_failed_wal)
            .field("last_failed_time", last_failed_time.map(number));
        let reset = counters::write_figures(&cols, prev.map(|p| &p.stats), &cur.stats, &mut out);
        out.push("reset", reset);
        self.prev = Some(cur);
        Ok(out)
    }
}
