//! The one map of what differs between PostgreSQL 12 and 18 in the views server health reads.
//!
//! Every version-dependent column is a [`Column`] row: the name the agent ships, the SQL
//! expression that produces it and the major versions that have it. Views whose columns moved
//! (PG17's `pg_stat_checkpointer`) have one row per version range with the same name, so the
//! payload keeps one shape across versions; a figure a version lacks is selected as a typed
//! `NULL` and shipped as `null`. Sub-collectors build their select lists from these tables with
//! [`select_list`] and never test the version themselves, except through [`from_clause`]-style
//! functions defined here.
//!
//! Invariants: for every name and every supported major version at most one row applies (a unit
//! test checks it); expressions reference only the aliases the matching FROM clause defines.

/// The oldest and newest major versions the map was written and tested for.
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 12..=18;

/// How a column is read and shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A cumulative counter: shipped as the per-interval delta (an integer).
    Count,
    /// A cumulative time in milliseconds: shipped as the per-interval delta (a float).
    Millis,
    /// A value as it is now (a number).
    Gauge,
    /// A text value as it is now.
    Text,
    /// A boolean as it is now.
    Flag,
}

impl Kind {
    /// The SQL type the expression is cast to, so the driver always reads one Rust type.
    pub fn sql_type(self) -> &'static str {
        match self {
            Kind::Count | Kind::Millis | Kind::Gauge => "float8",
            Kind::Text => "text",
            Kind::Flag => "bool",
        }
    }
}

/// One shipped figure and where it comes from in the versions that have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The name in the payload (also the SQL alias).
    pub name: &'static str,
    /// How it is read and shipped.
    pub kind: Kind,
    /// The SQL expression (over the aliases of the view's FROM clause).
    pub expr: &'static str,
    /// The first major version that has it.
    pub since: u32,
    /// The first major version that no longer has it this way (`u32::MAX`: still there).
    pub until: u32,
}

impl Column {
    /// Whether major version `major` has this row.
    pub fn applies(&self, major: u32) -> bool {
        (self.since..self.until).contains(&major)
    }
}

const NOW: u32 = u32::MAX;

const fn col(name: &'static str, kind: Kind, expr: &'static str) -> Column {
    Column {
        name,
        kind,
        expr,
        since: 12,
        until: NOW,
    }
}

const fn since(name: &'static str, kind: Kind, expr: &'static str, since: u32) -> Column {
    Column {
        name,
        kind,
        expr,
        since,
        until: NOW,
    }
}

const fn until(name: &'static str, kind: Kind, expr: &'static str, until: u32) -> Column {
    Column {
        name,
        kind,
        expr,
        since: 12,
        until,
    }
}

/// A column as resolved for one server: `expr` is `None` when this version lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The payload name.
    pub name: &'static str,
    /// How it is read and shipped.
    pub kind: Kind,
    /// The expression, if the version has the figure.
    pub expr: Option<&'static str>,
}

/// The columns of `table` for `major`, one per distinct name, in table order.
pub fn resolve(table: &[Column], major: u32) -> Vec<Resolved> {
    let mut out: Vec<Resolved> = Vec::with_capacity(table.len());
    for c in table {
        let hit = c.applies(major).then_some(c.expr);
        match out.iter_mut().find(|r| r.name == c.name) {
            Some(r) => r.expr = r.expr.or(hit),
            None => out.push(Resolved {
                name: c.name,
                kind: c.kind,
                expr: hit,
            }),
        }
    }
    out
}

/// The SQL select list for `cols`: `(<expr>)::<type> AS <name>`, or a typed NULL.
pub fn select_list(cols: &[Resolved]) -> String {
    cols.iter()
        .map(|c| match c.expr {
            Some(e) => format!("({e})::{} AS {}", c.kind.sql_type(), c.name),
            None => format!("NULL::{} AS {}", c.kind.sql_type(), c.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pg_stat_database` (alias `d`). `checksum_failures` is NULL when checksums are off.
pub const DATABASE: &[Column] = &[
    col("xact_commit", Kind::Count, "d.xact_commit"),
    col("xact_rollback", Kind::Count, "d.xact_rollback"),
    col("blks_read", Kind::Count, "d.blks_read"),
    col("blks_hit", Kind::Count, "d.blks_hit"),
    col("tup_returned", Kind::Count, "d.tup_returned"),
    col("tup_fetched", Kind::Count, "d.tup_fetched"),
    col("tup_inserted", Kind::Count, "d.tup_inserted"),
    col("tup_updated", Kind::Count, "d.tup_updated"),
    col("tup_deleted", Kind::Count, "d.tup_deleted"),
    col("conflicts", Kind::Count, "d.conflicts"),
    col("temp_files", Kind::Count, "d.temp_files"),
    col("temp_bytes", Kind::Count, "d.temp_bytes"),
    col("deadlocks", Kind::Count, "d.deadlocks"),
    col("checksum_failures", Kind::Count, "d.checksum_failures"),
    col("blk_read_time", Kind::Millis, "d.blk_read_time"),
    col("blk_write_time", Kind::Millis, "d.blk_write_time"),
    since("session_time", Kind::Millis, "d.session_time", 14),
    since("active_time", Kind::Millis, "d.active_time", 14),
    since(
        "idle_in_transaction_time",
        Kind::Millis,
        "d.idle_in_transaction_time",
        14,
    ),
    since("sessions", Kind::Count, "d.sessions", 14),
    since(
        "sessions_abandoned",
        Kind::Count,
        "d.sessions_abandoned",
        14,
    ),
    since("sessions_fatal", Kind::Count, "d.sessions_fatal", 14),
    since("sessions_killed", Kind::Count, "d.sessions_killed", 14),
    since(
        "parallel_workers_to_launch",
        Kind::Count,
        "d.parallel_workers_to_launch",
        18,
    ),
    since(
        "parallel_workers_launched",
        Kind::Count,
        "d.parallel_workers_launched",
        18,
    ),
];

/// Checkpointer and background writer. Before 17 everything is in `pg_stat_bgwriter` (alias
/// `b`); from 17 the checkpointer's figures are in `pg_stat_checkpointer` (alias `c`) and the
/// backends' own writes only in `pg_stat_io`.
pub const CHECKPOINTS: &[Column] = &[
    until("checkpoints_timed", Kind::Count, "b.checkpoints_timed", 17),
    since("checkpoints_timed", Kind::Count, "c.num_timed", 17),
    until(
        "checkpoints_requested",
        Kind::Count,
        "b.checkpoints_req",
        17,
    ),
    since("checkpoints_requested", Kind::Count, "c.num_requested", 17),
    since("checkpoints_done", Kind::Count, "c.num_done", 18),
    since(
        "restartpoints_timed",
        Kind::Count,
        "c.restartpoints_timed",
        17,
    ),
    since(
        "restartpoints_requested",
        Kind::Count,
        "c.restartpoints_req",
        17,
    ),
    since(
        "restartpoints_done",
        Kind::Count,
        "c.restartpoints_done",
        17,
    ),
    until("write_time", Kind::Millis, "b.checkpoint_write_time", 17),
    since("write_time", Kind::Millis, "c.write_time", 17),
    until("sync_time", Kind::Millis, "b.checkpoint_sync_time", 17),
    since("sync_time", Kind::Millis, "c.sync_time", 17),
    until(
        "buffers_checkpoint",
        Kind::Count,
        "b.buffers_checkpoint",
        17,
    ),
    since("buffers_checkpoint", Kind::Count, "c.buffers_written", 17),
    since("slru_written", Kind::Count, "c.slru_written", 18),
    col("buffers_clean", Kind::Count, "b.buffers_clean"),
    col("maxwritten_clean", Kind::Count, "b.maxwritten_clean"),
    until("buffers_backend", Kind::Count, "b.buffers_backend", 17),
    since(
        "buffers_backend",
        Kind::Count,
        "(SELECT sum(writes) FROM pg_stat_io WHERE object = 'relation' \
         AND backend_type NOT IN ('checkpointer', 'background writer'))",
        17,
    ),
    until(
        "buffers_backend_fsync",
        Kind::Count,
        "b.buffers_backend_fsync",
        17,
    ),
    since(
        "buffers_backend_fsync",
        Kind::Count,
        "(SELECT sum(fsyncs) FROM pg_stat_io WHERE object = 'relation' \
         AND backend_type NOT IN ('checkpointer', 'background writer'))",
        17,
    ),
    col("buffers_alloc", Kind::Count, "b.buffers_alloc"),
    until(
        "stats_reset",
        Kind::Gauge,
        "extract(epoch FROM b.stats_reset)",
        17,
    ),
    since(
        "stats_reset",
        Kind::Gauge,
        "extract(epoch FROM c.stats_reset)",
        17,
    ),
];

/// The FROM clause of the checkpoints query.
pub fn checkpoints_from(major: u32) -> &'static str {
    if major >= 17 {
        "pg_stat_checkpointer c CROSS JOIN pg_stat_bgwriter b"
    } else {
        "pg_stat_bgwriter b"
    }
}

/// `pg_stat_wal` (alias `w`, PG14+); PG18 moved writes and syncs to `pg_stat_io`.
pub const WAL: &[Column] = &[
    since("wal_records", Kind::Count, "w.wal_records", 14),
    since("wal_fpi", Kind::Count, "w.wal_fpi", 14),
    since("wal_bytes", Kind::Count, "w.wal_bytes", 14),
    since("wal_buffers_full", Kind::Count, "w.wal_buffers_full", 14),
    Column {
        name: "wal_write",
        kind: Kind::Count,
        expr: "w.wal_write",
        since: 14,
        until: 18,
    },
    Column {
        name: "wal_sync",
        kind: Kind::Count,
        expr: "w.wal_sync",
        since: 14,
        until: 18,
    },
    Column {
        name: "wal_write_time",
        kind: Kind::Millis,
        expr: "w.wal_write_time",
        since: 14,
        until: 18,
    },
    Column {
        name: "wal_sync_time",
        kind: Kind::Millis,
        expr: "w.wal_sync_time",
        since: 14,
        until: 18,
    },
];

/// The FROM clause of the WAL query (`a` is `pg_stat_archiver`).
pub fn wal_from(major: u32) -> &'static str {
    if major >= 14 {
        "pg_stat_archiver a CROSS JOIN pg_stat_wal w"
    } else {
        "pg_stat_archiver a"
    }
}

/// `pg_replication_slots` (alias `s`) beyond the columns every version has.
pub const SLOTS: &[Column] = &[
    since("wal_status", Kind::Text, "s.wal_status", 13),
    since("safe_wal_size", Kind::Gauge, "s.safe_wal_size", 13),
    since("conflicting", Kind::Flag, "s.conflicting", 16),
    since(
        "invalidation_reason",
        Kind::Text,
        "s.invalidation_reason",
        17,
    ),
    since(
        "inactive_since",
        Kind::Gauge,
        "extract(epoch FROM s.inactive_since)",
        17,
    ),
];

/// `pg_stat_wal_receiver` (alias `r`): PG13 split `received_lsn` into written and flushed.
pub const WAL_RECEIVER: &[Column] = &[
    until("flushed_lsn", Kind::Text, "r.received_lsn", 13),
    since("flushed_lsn", Kind::Text, "r.flushed_lsn", 13),
    since("written_lsn", Kind::Text, "r.written_lsn", 13),
];

/// `pg_stat_progress_vacuum` (alias `v`): PG17 counts dead items in bytes, not tuples.
pub const VACUUM_PROGRESS: &[Column] = &[
    col("heap_blks_total", Kind::Gauge, "v.heap_blks_total"),
    col("heap_blks_scanned", Kind::Gauge, "v.heap_blks_scanned"),
    col("heap_blks_vacuumed", Kind::Gauge, "v.heap_blks_vacuumed"),
    col("index_vacuum_count", Kind::Gauge, "v.index_vacuum_count"),
    until("max_dead_tuples", Kind::Gauge, "v.max_dead_tuples", 17),
    until("num_dead_tuples", Kind::Gauge, "v.num_dead_tuples", 17),
    since(
        "max_dead_tuple_bytes",
        Kind::Gauge,
        "v.max_dead_tuple_bytes",
        17,
    ),
    since("dead_tuple_bytes", Kind::Gauge, "v.dead_tuple_bytes", 17),
    since("num_dead_item_ids", Kind::Gauge, "v.num_dead_item_ids", 17),
    since("indexes_total", Kind::Gauge, "v.indexes_total", 17),
    since("indexes_processed", Kind::Gauge, "v.indexes_processed", 17),
    since("delay_time", Kind::Gauge, "v.delay_time", 18),
];

/// Connection limits: PG16 added `reserved_connections` (for roles with pg_use_reserved_connections).
pub const CONNECTION_LIMITS: &[Column] = &[
    col(
        "max_connections",
        Kind::Gauge,
        "current_setting('max_connections')",
    ),
    col(
        "superuser_reserved_connections",
        Kind::Gauge,
        "current_setting('superuser_reserved_connections')",
    ),
    since(
        "reserved_connections",
        Kind::Gauge,
        "current_setting('reserved_connections')",
        16,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&[Column]] = &[
        DATABASE,
        CHECKPOINTS,
        WAL,
        SLOTS,
        WAL_RECEIVER,
        VACUUM_PROGRESS,
        CONNECTION_LIMITS,
    ];

    #[test]
    fn at_most_one_row_per_name_applies_to_each_version() {
        for table in ALL {
            for major in SUPPORTED {
                for c in table.iter() {
                    let n = table
                        .iter()
                        .filter(|o| o.name == c.name && o.applies(major))
                        .count();
                    assert!(n <= 1, "{} has {n} rows for PG{major}", c.name);
                    let kinds = table.iter().filter(|o| o.name == c.name);
                    assert!(kinds.clone().all(|o| o.kind == c.kind), "{}", c.name);
                }
            }
        }
    }

    #[test]
    fn checkpoint_figures_keep_their_names_when_the_view_moves_in_17() {
        for major in [16, 17] {
            let cols = resolve(CHECKPOINTS, major);
            let timed = cols.iter().find(|c| c.name == "checkpoints_timed").unwrap();
            let expected = if major == 16 {
                "b.checkpoints_timed"
            } else {
                "c.num_timed"
            };
            assert_eq!(timed.expr, Some(expected));
        }
        assert!(checkpoints_from(17).contains("pg_stat_checkpointer"));
        assert!(!checkpoints_from(16).contains("pg_stat_checkpointer"));
    }

    #[test]
    fn figures_a_version_lacks_are_typed_nulls() {
        let pg12 = resolve(DATABASE, 12);
        let sessions = pg12.iter().find(|c| c.name == "sessions").unwrap();
        assert_eq!(sessions.expr, None);
        let sql = select_list(&pg12);
        assert!(sql.contains("NULL::float8 AS sessions"), "{sql}");
        assert!(sql.contains("(d.deadlocks)::float8 AS deadlocks"), "{sql}");
        let pg14 = select_list(&resolve(DATABASE, 14));
        assert!(pg14.contains("(d.sessions)::float8 AS sessions"), "{pg14}");
        // PG18 moved WAL writes and syncs out of pg_stat_wal.
        let wal18 = resolve(WAL, 18);
        assert_eq!(
            wal18.iter().find(|c| c.name == "wal_write").unwrap().expr,
            None
        );
        assert_eq!(
            resolve(WAL, 13).iter().filter(|c| c.expr.is_some()).count(),
            0
        );
    }

    #[test]
    fn resolving_keeps_table_order_and_one_entry_per_name() {
        let names: Vec<_> = resolve(CHECKPOINTS, 17).iter().map(|c| c.name).collect();
        // Sorted first: `dedup` only removes adjacent repeats.
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            names.len(),
            unique.len(),
            "a name resolves twice: {names:?}"
        );
        assert_eq!(names[0], "checkpoints_timed");
        assert_eq!(names[1], "checkpoints_requested");
    }
}
