//! Replication: per standby (`pg_stat_replication`) the lag in bytes and time; per slot
//! (`pg_replication_slots`) whether it is active and how much WAL it retains, with the change
//! since the previous interval; on a standby, the WAL receiver's status and the replay delay.
//!
//! Invariants: lag bytes are measured against the server's own WAL position (the insert position
//! on a primary, the receive or replay position on a standby, where `pg_current_wal_lsn()` would
//! fail); slot and standby lists are capped at [`MAX_ROWS`].

use std::collections::HashMap;

use super::counters::{self, number, round3, Value};
use super::version::{self, SLOTS, WAL_RECEIVER};
use super::{Ctx, PgError};
use crate::json::Json;

/// Most standbys or slots listed.
pub const MAX_ROWS: i64 = 100;

/// The server's own WAL position, valid on a primary and on a standby.
const OWN_LSN: &str = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                       ELSE pg_current_wal_lsn() END";

fn opt_f64(row: &postgres::Row, name: &str) -> Result<Option<f64>, postgres::Error> {
    row.try_get(name)
}

fn opt_text(row: &postgres::Row, name: &str) -> Result<Option<String>, postgres::Error> {
    row.try_get(name)
}

/// Reads `pg_stat_replication`: one entry per connected standby.
pub(crate) fn collect_standbys(client: &mut postgres::Client) -> Result<Json, PgError> {
    let err = PgError::at("replication", "pg_stat_replication");
    let sql = format!(
        "SELECT pid, application_name::text, client_addr::text, state::text, sync_state::text,
                pg_wal_lsn_diff({OWN_LSN}, sent_lsn)::float8 AS sent_lag_bytes,
                pg_wal_lsn_diff({OWN_LSN}, write_lsn)::float8 AS write_lag_bytes,
                pg_wal_lsn_diff({OWN_LSN}, flush_lsn)::float8 AS flush_lag_bytes,
                pg_wal_lsn_diff({OWN_LSN}, replay_lsn)::float8 AS replay_lag_bytes,
                extract(epoch FROM write_lag)::float8 AS write_lag_s,
                extract(epoch FROM flush_lag)::float8 AS flush_lag_s,
                extract(epoch FROM replay_lag)::float8 AS replay_lag_s,
                extract(epoch FROM now() - reply_time)::float8 AS reply_age_s
         FROM pg_stat_replication ORDER BY application_name, pid LIMIT {MAX_ROWS}"
    );
    let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut e =
            Json::object().field("pid", row.try_get::<_, Option<i32>>("pid").map_err(&err)?);
        for k in ["application_name", "client_addr", "state", "sync_state"] {
            e.push(k, opt_text(row, k).map_err(&err)?);
        }
        for k in [
            "sent_lag_bytes",
            "write_lag_bytes",
            "flush_lag_bytes",
            "replay_lag_bytes",
        ] {
            e.push(k, opt_f64(row, k).map_err(&err)?.map(number));
        }
        for k in ["write_lag_s", "flush_lag_s", "replay_lag_s", "reply_age_s"] {
            e.push(k, opt_f64(row, k).map_err(&err)?.map(round3));
        }
        list.push(e);
    }
    Ok(Json::object().field("standbys", Json::Array(list)))
}

/// Retained WAL per slot at the previous reading.
#[derive(Default)]
pub(crate) struct Slots {
    prev: Option<HashMap<String, f64>>,
}

impl Slots {
    /// Reads `pg_replication_slots`: activity and retained WAL per slot, with the change.
    pub(crate) fn collect(
        &mut self,
        client: &mut postgres::Client,
        ctx: &Ctx,
    ) -> Result<Json, PgError> {
        let err = PgError::at("replication_slots", "pg_replication_slots");
        let cols = version::resolve(SLOTS, ctx.major);
        // On a standby, slots retain WAL relative to what was replayed.
        let sql = format!(
            "SELECT s.slot_name::text, s.slot_type::text, s.plugin::text, s.database::text,
                    s.active, s.temporary,
                    pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                         ELSE pg_current_wal_lsn() END,
                                    s.restart_lsn)::float8 AS retained_bytes,
                    pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                         ELSE pg_current_wal_lsn() END,
                                    s.confirmed_flush_lsn)::float8 AS confirmed_lag_bytes,
                    {}
             FROM pg_replication_slots s ORDER BY s.slot_name LIMIT {MAX_ROWS}",
            version::select_list(&cols)
        );
        let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
        let mut next = HashMap::with_capacity(rows.len());
        let mut list = Vec::with_capacity(rows.len());
        let mut total_retained = 0.0;
        for row in &rows {
            let name: Option<String> = row.try_get("slot_name").map_err(&err)?;
            let retained = opt_f64(row, "retained_bytes").map_err(&err)?;
            let mut e = Json::object().field("slot_name", name.clone());
            for k in ["slot_type", "plugin", "database"] {
                e.push(k, opt_text(row, k).map_err(&err)?);
            }
            for k in ["active", "temporary"] {
                e.push(k, row.try_get::<_, Option<bool>>(k).map_err(&err)?);
            }
            e.push("retained_bytes", retained.map(number));
            // A slot's retained WAL is a gauge; its growth per interval is what fills the disk.
            let grown = match (&self.prev, &name, retained) {
                (Some(prev), Some(n), Some(r)) => prev.get(n).map(|p| r - p),
                _ => None,
            };
            e.push("retained_bytes_delta", grown.map(number));
            e.push(
                "confirmed_lag_bytes",
                opt_f64(row, "confirmed_lag_bytes")
                    .map_err(&err)?
                    .map(number),
            );
            let values = counters::read(row, &cols).map_err(&err)?;
            for (c, v) in cols.iter().zip(values) {
                e.push(
                    c.name,
                    match v {
                        Value::Num(n) => Json::from(n.map(number)),
                        Value::Text(t) => Json::from(t),
                        Value::Flag(b) => Json::from(b),
                    },
                );
            }
            if let (Some(n), Some(r)) = (name, retained) {
                total_retained += r;
                next.insert(n, r);
            }
            list.push(e);
        }
        self.prev = Some(next);
        Ok(Json::object()
            .field("retained_bytes_total", number(total_retained))
            .field("slots", Json::Array(list)))
    }
}

/// Reads the standby side: `pg_stat_wal_receiver` and the replay delay. On a primary it ships
/// `{"in_recovery": false}` and nothing else.
pub(crate) fn collect_receiver(client: &mut postgres::Client, ctx: &Ctx) -> Result<Json, PgError> {
    let err = PgError::at("wal_receiver", "pg_stat_wal_receiver");
    let cols = version::resolve(WAL_RECEIVER, ctx.major);
    // LEFT JOIN from a one-row relation: exactly one row whether a receiver runs or not.
    let sql = format!(
        "SELECT pg_is_in_recovery() AS in_recovery,
                r.status::text AS status, r.sender_host::text AS sender_host,
                r.sender_port AS sender_port, r.slot_name::text AS slot_name,
                extract(epoch FROM now() - r.last_msg_receipt_time)::float8 AS last_msg_age_s,
                pg_wal_lsn_diff(pg_last_wal_receive_lsn(),
                                pg_last_wal_replay_lsn())::float8 AS replay_pending_bytes,
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
                    AS replay_delay_s,
                {}
         FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true",
        version::select_list(&cols)
    );
    let row = client.query_one(sql.as_str(), &[]).map_err(&err)?;
    let in_recovery = row
        .try_get::<_, Option<bool>>("in_recovery")
        .map_err(&err)?
        .unwrap_or(false);
    let mut out = Json::object().field("in_recovery", in_recovery);
    if !in_recovery {
        return Ok(out);
    }
    for k in ["status", "sender_host", "slot_name"] {
        out.push(k, opt_text(&row, k).map_err(&err)?);
    }
    out.push(
        "sender_port",
        row.try_get::<_, Option<i32>>("sender_port").map_err(&err)?,
    );
    out.push(
        "last_msg_age_s",
        opt_f64(&row, "last_msg_age_s").map_err(&err)?.map(round3),
    );
    out.push(
        "replay_pending_bytes",
        opt_f64(&row, "replay_pending_bytes")
            .map_err(&err)?
            .map(number),
    );
    out.push(
        "replay_delay_s",
        opt_f64(&row, "replay_delay_s").map_err(&err)?.map(round3),
    );
    for (c, v) in cols.iter().zip(counters::read(&row, &cols).map_err(&err)?) {
        if let Value::Text(t) = v {
            out.push(c.name, t);
        }
    }
    Ok(out)
}
