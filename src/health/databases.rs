//! Databases: per-interval deltas of `pg_stat_database` per database, and (slowly) their sizes.
//!
//! Invariants: a database's deltas are computed only against its own previous reading (by oid);
//! a database that did nothing in the interval is counted but not listed, so an idle server with
//! hundreds of databases ships a short list. At most [`MAX_LISTED`] databases are listed, the
//! busiest first. `pg_database_size` walks the database's files, so sizes run on the slow
//! schedule only.

use std::collections::HashMap;

use super::counters::{self, number, Reading};
use super::version::{self, Resolved, DATABASE};
use super::{marker, Ctx, PgError};
use crate::json::Json;

/// Most databases listed per interval.
pub const MAX_LISTED: usize = 100;

/// Previous readings per database oid.
#[derive(Default)]
pub(crate) struct Databases {
    prev: HashMap<u32, Reading>,
    sql: Option<(u32, Vec<Resolved>, String)>,
}

impl Databases {
    fn statement(&mut self, major: u32) -> (Vec<Resolved>, String) {
        if let Some((m, cols, sql)) = &self.sql {
            if *m == major {
                return (cols.clone(), sql.clone());
            }
        }
        let cols = version::resolve(DATABASE, major);
        let sql = format!(
            "SELECT d.datid, d.datname::text AS datname, {},
                    extract(epoch FROM d.stats_reset)::float8 AS stats_reset,
                    extract(epoch FROM pg_postmaster_start_time())::float8 AS started
             FROM pg_stat_database d WHERE d.datname IS NOT NULL",
            version::select_list(&cols)
        );
        self.sql = Some((major, cols.clone(), sql.clone()));
        (cols, sql)
    }

    /// Reads `pg_stat_database` and returns the deltas of the databases that moved.
    pub(crate) fn collect(
        &mut self,
        client: &mut postgres::Client,
        ctx: &Ctx,
    ) -> Result<Json, PgError> {
        let err = PgError::at("databases", "pg_stat_database");
        let (cols, sql) = self.statement(ctx.major);
        let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
        let mut next = HashMap::with_capacity(rows.len());
        let mut listed: Vec<(f64, Json)> = Vec::new();
        let mut n_reset = 0usize;
        for row in &rows {
            let oid: u32 = row.try_get("datid").map_err(&err)?;
            let name: Option<String> = row.try_get("datname").map_err(&err)?;
            let cur = Reading {
                values: counters::read(row, &cols).map_err(&err)?,
                marker: marker(row, &["stats_reset", "started"]).map_err(&err)?,
            };
            if let Some(prev) = self.prev.get(&oid) {
                let moved = counters::any_counter_moved(&cols, prev, &cur);
                let mut entry = Json::object().field("datname", name);
                let reset = counters::write_figures(&cols, Some(prev), &cur, &mut entry);
                if reset {
                    n_reset += 1;
                    entry.push("reset", true);
                }
                if moved || reset {
                    let weight = ["xact_commit", "xact_rollback", "blks_read"]
                        .iter()
                        .filter_map(|k| match entry.get(k) {
                            Some(Json::Int(v)) => Some(*v as f64),
                            _ => None,
                        })
                        .sum::<f64>();
                    listed.push((weight, entry));
                }
            }
            next.insert(oid, cur);
        }
        let baseline = self.prev.is_empty();
        self.prev = next;
        listed.sort_by(|a, b| b.0.total_cmp(&a.0));
        let n_active = listed.len();
        listed.truncate(MAX_LISTED);
        Ok(Json::object()
            .field("n_databases", rows.len())
            .field(
                "n_active",
                if baseline {
                    Json::Null
                } else {
                    n_active.into()
                },
            )
            .field("n_reset", n_reset)
            .field(
                "databases",
                Json::Array(listed.into_iter().map(|(_, j)| j).collect()),
            ))
    }
}

/// Reads the size of every database that accepts connections (the slow schedule).
pub(crate) fn collect_sizes(client: &mut postgres::Client) -> Result<Json, PgError> {
    let err = PgError::at("database_sizes", "pg_database_size");
    // pg_database_size needs CONNECT on the database or pg_read_all_stats (part of pg_monitor);
    // databases the role may not size are left out rather than failing the whole query.
    let rows = client
        .query(
            "SELECT datname::text, pg_database_size(oid)::float8 AS size_bytes
             FROM pg_database
             WHERE datallowconn AND (has_database_privilege(oid, 'CONNECT')
                   OR pg_has_role('pg_read_all_stats', 'MEMBER'))
             ORDER BY 2 DESC LIMIT 100",
            &[],
        )
        .map_err(&err)?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: Option<String> = row.try_get(0).map_err(&err)?;
        let size: Option<f64> = row.try_get(1).map_err(&err)?;
        list.push(
            Json::object()
                .field("datname", name)
                .field("size_bytes", size.map(number)),
        );
    }
    Ok(Json::object().field("databases", Json::Array(list)))
}
