//! Checkpoints and the background writer: per-interval deltas of checkpoints timed and
//! requested, write and sync time, and buffers written by the checkpointer, the background writer
//! and the backends. PostgreSQL 17 moved the checkpointer's figures to `pg_stat_checkpointer`;
//! [`super::version::CHECKPOINTS`] keeps the shipped names the same on every version.

use super::counters::{self, Reading};
use super::version::{self, CHECKPOINTS};
use super::{marker, Ctx, PgError};
use crate::json::Json;

/// The previous reading.
#[derive(Default)]
pub(crate) struct Checkpoints {
    prev: Option<Reading>,
}

impl Checkpoints {
    /// Reads the checkpointer and bgwriter views and returns the deltas.
    pub(crate) fn collect(
        &mut self,
        client: &mut postgres::Client,
        ctx: &Ctx,
    ) -> Result<Json, PgError> {
        let query = if ctx.major >= 17 {
            "pg_stat_checkpointer, pg_stat_bgwriter"
        } else {
            "pg_stat_bgwriter"
        };
        let err = PgError::at("checkpoints", query);
        let cols = version::resolve(CHECKPOINTS, ctx.major);
        let sql = format!(
            "SELECT {}, extract(epoch FROM pg_postmaster_start_time())::float8 AS started
             FROM {}",
            version::select_list(&cols),
            version::checkpoints_from(ctx.major)
        );
        let row = client.query_one(sql.as_str(), &[]).map_err(&err)?;
        let cur = Reading {
            values: counters::read(&row, &cols).map_err(&err)?,
            marker: marker(&row, &["stats_reset", "started"]).map_err(&err)?,
        };
        let mut out = Json::object();
        let reset = counters::write_figures(&cols, self.prev.as_ref(), &cur, &mut out);
        out.push("reset", reset);
        self.prev = Some(cur);
        Ok(out)
    }
}
