//! The version map of pg_stat_statements: which column holds each shipped counter in each
//! extension version, what else a version offers, and the counters query built from it.
//!
//! Invariants: column differences between versions live only in [`COLUMNS`], keyed by the
//! installed extension version (which decides the columns, not the server version); the slots
//! ([`SLOTS`]) are the payload's counter names in payload order, the same for every version.

use std::fmt::Write as _;

use super::quote_ident;

/// An extension version, `(1, 10)` for "1.10".
pub type ExtVersion = (u32, u32);

/// Parses `extversion` ("1.10") into a comparable pair.
pub fn parse_ext_version(s: &str) -> Option<ExtVersion> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

const V_ANY: ExtVersion = (0, 0);
const V_NONE: ExtVersion = (u32::MAX, 0);
/// PostgreSQL 13: `total_time` → `total_exec_time`, planning and WAL counters added.
const V_PG13: ExtVersion = (1, 8);
/// PostgreSQL 14: `toplevel` in the key, `pg_stat_statements_info`.
const V_PG14: ExtVersion = (1, 9);
/// PostgreSQL 15: temp block I/O times.
const V_PG15: ExtVersion = (1, 10);
/// PostgreSQL 17: `blk_*_time` → `shared_blk_*_time`, `stats_since`.
const V_PG17: ExtVersion = (1, 11);

/// One shipped counter and the column that holds it in a range of extension versions.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The name in the payload (stable across versions; the Python agent's names).
    pub name: &'static str,
    /// The column in `pg_stat_statements(...)` for these versions.
    pub column: &'static str,
    /// First extension version with this column.
    pub since: ExtVersion,
    /// First extension version without it (renamed or dropped).
    pub until: ExtVersion,
    /// Whether the counter is an integer (written without a fraction).
    pub integer: bool,
}

const fn col(
    name: &'static str,
    column: &'static str,
    since: ExtVersion,
    until: ExtVersion,
    integer: bool,
) -> Column {
    Column {
        name,
        column,
        since,
        until,
        integer,
    }
}

/// The version map: every counter shipped, per extension version (PG12 ships 1.7, PG13 1.8,
/// PG14 1.9, PG15 and PG16 1.10, PG17 1.11, PG18 1.12).
#[rustfmt::skip]
pub const COLUMNS: &[Column] = &[
    col("calls", "calls", V_ANY, V_NONE, true),
    col("total_exec_time", "total_time", V_ANY, V_PG13, false),
    col("total_exec_time", "total_exec_time", V_PG13, V_NONE, false),
    col("rows", "rows", V_ANY, V_NONE, true),
    col("shared_blks_hit", "shared_blks_hit", V_ANY, V_NONE, true),
    col("shared_blks_read", "shared_blks_read", V_ANY, V_NONE, true),
    col("shared_blks_dirtied", "shared_blks_dirtied", V_ANY, V_NONE, true),
    col("shared_blks_written", "shared_blks_written", V_ANY, V_NONE, true),
    col("local_blks_hit", "local_blks_hit", V_ANY, V_NONE, true),
    col("local_blks_read", "local_blks_read", V_ANY, V_NONE, true),
    col("local_blks_dirtied", "local_blks_dirtied", V_ANY, V_NONE, true),
    col("local_blks_written", "local_blks_written", V_ANY, V_NONE, true),
    col("temp_blks_read", "temp_blks_read", V_ANY, V_NONE, true),
    col("temp_blks_written", "temp_blks_written", V_ANY, V_NONE, true),
    col("blk_read_time", "blk_read_time", V_ANY, V_PG17, false),
    col("blk_read_time", "shared_blk_read_time", V_PG17, V_NONE, false),
    col("blk_write_time", "blk_write_time", V_ANY, V_PG17, false),
    col("blk_write_time", "shared_blk_write_time", V_PG17, V_NONE, false),
    col("temp_blk_read_time", "temp_blk_read_time", V_PG15, V_NONE, false),
    col("temp_blk_write_time", "temp_blk_write_time", V_PG15, V_NONE, false),
    col("plans", "plans", V_PG13, V_NONE, true),
    col("total_plan_time", "total_plan_time", V_PG13, V_NONE, false),
    col("wal_records", "wal_records", V_PG13, V_NONE, true),
    col("wal_fpi", "wal_fpi", V_PG13, V_NONE, true),
    col("wal_bytes", "wal_bytes", V_PG13, V_NONE, true),
];

/// The shipped counter names, in payload order (one slot each).
pub(super) const SLOTS: [&str; 22] = [
    "calls",
    "total_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_dirtied",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_time",
    "blk_write_time",
    "temp_blk_read_time",
    "temp_blk_write_time",
    "plans",
    "total_plan_time",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
];
/// How many counters an entry holds.
pub(super) const N_SLOTS: usize = SLOTS.len();
/// The slot of `calls`.
pub(super) const CALLS: usize = 0;
/// The slot of `total_exec_time`.
pub(super) const EXEC_TIME: usize = 1;

/// What an extension version offers beyond the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `toplevel` is part of the entry key (PG14+).
    pub toplevel: bool,
    /// `pg_stat_statements_info` exists (PG14+).
    pub info: bool,
    /// Per-entry `stats_since` (PG17+).
    pub stats_since: bool,
}

/// The features of extension version `v`.
pub fn features(v: ExtVersion) -> Features {
    Features {
        toplevel: v >= V_PG14,
        info: v >= V_PG14,
        stats_since: v >= V_PG17,
    }
}

/// For each slot, the column that holds it in version `v` (`None`: the version lacks it).
pub fn columns_for(v: ExtVersion) -> [Option<&'static Column>; N_SLOTS] {
    let mut out = [None; N_SLOTS];
    for (slot, name) in SLOTS.iter().enumerate() {
        out[slot] = COLUMNS
            .iter()
            .find(|c| c.name == *name && c.since <= v && v < c.until);
    }
    out
}

/// The counters query for version `v` in `schema`: one row of parallel arrays (key columns,
/// `stats_since`, then every slot as float8, NULL where the version lacks it). One row of arrays
/// instead of 5,000 rows is what keeps the agent's side cheap: the driver's cost is per row.
pub(super) fn counters_sql(schema: &str, v: ExtVersion) -> String {
    let f = features(v);
    let mut sql = String::from("SELECT array_agg(userid), array_agg(dbid), array_agg(queryid), ");
    sql.push_str(if f.toplevel {
        "array_agg(toplevel), "
    } else {
        "array_agg(true), "
    });
    sql.push_str(if f.stats_since {
        "array_agg(stats_since)"
    } else {
        "array_agg(NULL::timestamptz)"
    });
    for c in columns_for(v) {
        match c {
            Some(c) => {
                let _ = write!(sql, ", array_agg({}::float8)", c.column);
            }
            None => sql.push_str(", array_agg(NULL::float8)"),
        }
    }
    let _ = write!(
        sql,
        " FROM {}.pg_stat_statements(false) WHERE queryid IS NOT NULL",
        quote_ident(schema)
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_map_renames_by_extension_version() {
        let pg12 = columns_for((1, 7));
        assert_eq!(pg12[EXEC_TIME].unwrap().column, "total_time");
        assert!(pg12[SLOTS.iter().position(|s| *s == "wal_bytes").unwrap()].is_none());
        let pg13 = columns_for((1, 8));
        assert_eq!(pg13[EXEC_TIME].unwrap().column, "total_exec_time");
        let read = SLOTS.iter().position(|s| *s == "blk_read_time").unwrap();
        assert_eq!(columns_for((1, 10))[read].unwrap().column, "blk_read_time");
        assert_eq!(
            columns_for((1, 11))[read].unwrap().column,
            "shared_blk_read_time"
        );
        assert_eq!(
            columns_for((1, 12))[read].unwrap().column,
            "shared_blk_read_time"
        );
        assert!(!features((1, 8)).toplevel);
        assert!(features((1, 9)).toplevel && features((1, 9)).info);
        assert!(features((1, 11)).stats_since);
        // From PG15 on every slot has a column.
        assert_eq!(
            columns_for((1, 10)).iter().filter(|c| c.is_none()).count(),
            0
        );
        let sql = counters_sql("pub\"lic", (1, 7));
        assert!(sql.contains("array_agg(total_time::float8)"), "{sql}");
        assert!(
            sql.contains("FROM \"pub\"\"lic\".pg_stat_statements(false)"),
            "{sql}"
        );
        assert_eq!(parse_ext_version("1.10"), Some((1, 10)));
        assert_eq!(parse_ext_version("x"), None);
    }
}
