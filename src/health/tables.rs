//! Hot tables and unused indexes of the connected database.
//!
//! Each interval one query reads, for every user table with any activity since the statistics
//! were reset, six cumulative counters straight from the `pg_stat_get_*` functions over
//! `pg_class` (no names, no sizes: about 60 bytes a row), plus the relations that hold or wait
//! for an ACCESS EXCLUSIVE lock. Rust computes the deltas against the previous reading and keeps
//! the top N per ranking (sequential scans, tuples read, rows modified, dead tuples added,
//! vacuums); a second query fetches names and details for those few tables only. Never-used
//! indexes are read on the slow schedule.
//!
//! The counters query deliberately avoids `pg_stat_user_tables`: that view sums every index's
//! statistics per table (`idx_scan`, `idx_tup_fetch`) through a join and an aggregate, which
//! made the query four times as expensive on 50,000 tables (164 ms against 43 ms of execution on
//! PG15). Index scans are therefore not part of the per-interval figures. On a large catalog
//! (at least [`LARGE_CATALOG`] tables) a query that cost more than its budget is spaced out over
//! several intervals; the deltas then span them.
//!
//! Invariants:
//! - Relations holding or awaiting an ACCESS EXCLUSIVE lock (an `ALTER TABLE`, `VACUUM FULL`,
//!   `TRUNCATE`, `DROP`) are filtered out in SQL through `pg_locks` before any statistic of them
//!   is read, and are listed under `skipped`. No query takes a lock on a user relation at all:
//!   sizes come from `pg_class.relpages` (as of the last vacuum or analyze), never from
//!   `pg_relation_size`, which would queue behind the ALTER TABLE.
//! - A table skipped in the previous interval has no baseline in this one (its delta would span
//!   two intervals), so it is left out of the rankings once.
//! - Tables whose counters are all zero are not fetched; a table that appears later starts from
//!   zero, which is what its counters started from.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::counters::{number, round3};
use super::{Ctx, PgError, LARGE_CATALOG};
use crate::json::Json;

/// The relations of the connected database under an ACCESS EXCLUSIVE lock, held or awaited.
const LOCKED: &str = "locked AS MATERIALIZED (
    SELECT DISTINCT l.relation AS oid FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))";

/// The cumulative counters kept per table between intervals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    seq_scan: i64,
    tuples_read: i64,
    rows_modified: i64,
    dead_tuples: i64,
    vacuums: i64,
    analyzes: i64,
}

/// One table's per-interval figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Deltas {
    seq_scan: i64,
    tuples_read: i64,
    rows_modified: i64,
    /// Growth of n_dead_tup (negative after a vacuum).
    dead_tuples: i64,
    vacuums: i64,
    analyzes: i64,
}

/// Which delta a ranking orders by.
type Key = fn(&Deltas) -> i64;

/// The rankings shipped, each the top N by one delta.
const RANKINGS: [(&str, Key); 5] = [
    ("seq_scan", |d| d.seq_scan),
    ("tuples_read", |d| d.tuples_read),
    ("rows_modified", |d| d.rows_modified),
    ("dead_tuples", |d| d.dead_tuples),
    ("vacuums", |d| d.vacuums),
];

/// The previous reading of every table with activity.
#[derive(Default)]
pub(crate) struct Tables {
    prev: Option<HashMap<u32, Counters>>,
    skipped_before: HashSet<u32>,
    /// When the previous reading was taken.
    prev_at: Option<Instant>,
    /// Run every this many intervals (1 unless the catalog is large and the query costly).
    every: u64,
    /// The first cycle in which the query runs again.
    next_cycle: u64,
}

/// The longest stretch between two hot-table readings, in intervals.
const MAX_EVERY: u64 = 10;

/// How many intervals apart the query should run so its cost per interval stays within
/// `budget`: 1 for small catalogs, else the cost over the budget rounded up, at most
/// [`MAX_EVERY`].
fn spacing(cost: Duration, budget: Duration, n_tables: usize) -> u64 {
    if n_tables < LARGE_CATALOG || budget.is_zero() {
        return 1;
    }
    let ratio = cost.as_secs_f64() / budget.as_secs_f64();
    (ratio.ceil() as u64).clamp(1, MAX_EVERY)
}

/// Deltas of `cur` against `prev`, or `None` when a counter went backwards (statistics reset).
fn deltas(prev: &Counters, cur: &Counters) -> Option<Deltas> {
    let d = Deltas {
        seq_scan: cur.seq_scan - prev.seq_scan,
        tuples_read: cur.tuples_read - prev.tuples_read,
        rows_modified: cur.rows_modified - prev.rows_modified,
        dead_tuples: cur.dead_tuples - prev.dead_tuples,
        vacuums: cur.vacuums - prev.vacuums,
        analyzes: cur.analyzes - prev.analyzes,
    };
    let cumulative = [
        d.seq_scan,
        d.tuples_read,
        d.rows_modified,
        d.vacuums,
        d.analyzes,
    ];
    cumulative.iter().all(|v| *v >= 0).then_some(d)
}

/// The oids of the top `n` tables by `key` (only positive values), largest first; ties by oid
/// so the order is stable.
fn top(all: &[(u32, Deltas)], n: usize, key: Key) -> Vec<u32> {
    let mut hits: Vec<(i64, u32)> = all
        .iter()
        .map(|(oid, d)| (key(d), *oid))
        .filter(|(v, _)| *v > 0)
        .collect();
    let by = |a: &(i64, u32), b: &(i64, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    if hits.len() > n && n > 0 {
        hits.select_nth_unstable_by(n - 1, by);
    }
    hits.truncate(n);
    hits.sort_by(by);
    hits.into_iter().map(|(_, oid)| oid).collect()
}

fn get_i64(row: &postgres::Row, idx: usize) -> Result<i64, postgres::Error> {
    Ok(row.try_get::<_, Option<i64>>(idx)?.unwrap_or(0))
}

impl Tables {
    /// Reads the table counters, ranks the deltas and fetches details of the ranked tables.
    pub(crate) fn collect(
        &mut self,
        client: &mut postgres::Client,
        ctx: &Ctx,
    ) -> Result<Json, PgError> {
        let err = PgError::at("tables", "pg_stat_get_* over pg_class, pg_locks");
        if ctx.cycle < self.next_cycle {
            return Ok(Json::object()
                .field("deferred", true)
                .field("every_intervals", self.every));
        }
        let started = Instant::now();
        let sql = format!(
            "WITH {LOCKED}
             SELECT * FROM (
               SELECT c.oid, NULL::text AS skipped, NULL::text AS relkind,
                      pg_stat_get_numscans(c.oid) AS seq_scan,
                      pg_stat_get_tuples_returned(c.oid)
                        + pg_stat_get_tuples_fetched(c.oid) AS tuples_read,
                      pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid)
                        + pg_stat_get_tuples_deleted(c.oid) AS rows_modified,
                      pg_stat_get_dead_tuples(c.oid) AS dead_tuples,
                      pg_stat_get_vacuum_count(c.oid)
                        + pg_stat_get_autovacuum_count(c.oid) AS vacuums,
                      pg_stat_get_analyze_count(c.oid)
                        + pg_stat_get_autoanalyze_count(c.oid) AS analyzes
               FROM pg_class c
               WHERE c.relkind IN ('r', 'm', 'p')
                 AND c.relnamespace NOT IN (
                       SELECT oid FROM pg_namespace
                       WHERE nspname IN ('pg_catalog', 'information_schema')
                          OR nspname ~ '^pg_toast')
                 AND c.oid NOT IN (SELECT oid FROM locked)
               OFFSET 0) t
             WHERE t.seq_scan + t.tuples_read + t.rows_modified + t.dead_tuples + t.vacuums
                   + t.analyzes > 0
             UNION ALL
             SELECT l.oid, coalesce(n.nspname || '.' || c.relname, l.oid::text),
                    c.relkind::text, NULL, NULL, NULL, NULL, NULL, NULL
             FROM locked l
             LEFT JOIN pg_class c ON c.oid = l.oid
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid IS NULL
                OR (c.relkind IN ('r', 'p', 'm', 'i', 'I')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname !~ '^pg_toast')"
        );
        let rows = client.query(sql.as_str(), &[]).map_err(&err)?;
        let mut cur: HashMap<u32, Counters> = HashMap::with_capacity(rows.len());
        let mut skipped: Vec<(u32, String, Option<String>)> = Vec::new();
        for row in &rows {
            // Columns by position: this loop runs once per table, and looking columns up by
            // name costs more than decoding them.
            let oid: u32 = row.try_get(0).map_err(&err)?;
            let skip: Option<String> = row.try_get(1).map_err(&err)?;
            if let Some(name) = skip {
                let relkind: Option<String> = row.try_get(2).map_err(&err)?;
                skipped.push((oid, name, relkind));
                continue;
            }
            cur.insert(
                oid,
                Counters {
                    seq_scan: get_i64(row, 3).map_err(&err)?,
                    tuples_read: get_i64(row, 4).map_err(&err)?,
                    rows_modified: get_i64(row, 5).map_err(&err)?,
                    dead_tuples: get_i64(row, 6).map_err(&err)?,
                    vacuums: get_i64(row, 7).map_err(&err)?,
                    analyzes: get_i64(row, 8).map_err(&err)?,
                },
            );
        }
        let n_tables = cur.len();
        let cost = started.elapsed();
        self.every = spacing(cost, ctx.tables_budget, n_tables);
        self.next_cycle = ctx.cycle.saturating_add(self.every);
        let window = self.prev_at.map(|t| ctx.now.saturating_duration_since(t));
        self.prev_at = Some(ctx.now);
        let mut all: Vec<(u32, Deltas)> = Vec::new();
        let mut n_reset = 0usize;
        if let Some(prev) = &self.prev {
            all.reserve(cur.len());
            for (oid, c) in &cur {
                if self.skipped_before.contains(oid) {
                    continue;
                }
                let p = prev.get(oid).copied().unwrap_or_default();
                match deltas(&p, c) {
                    Some(d) if d != Deltas::default() => all.push((*oid, d)),
                    Some(_) => {}
                    None => n_reset += 1,
                }
            }
        }
        let baseline = self.prev.is_none();
        self.prev = Some(cur);
        self.skipped_before = skipped.iter().map(|(oid, _, _)| *oid).collect();

        let rankings: Vec<(&str, Vec<u32>)> = RANKINGS
            .iter()
            .map(|(name, key)| (*name, top(&all, ctx.top_n, *key)))
            .collect();
        let mut wanted: Vec<u32> = rankings.iter().flat_map(|(_, v)| v.clone()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let details = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.details(client, &wanted)?
        };
        let name_of = |oid: &u32| {
            details
                .get(oid)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| oid.to_string())
        };
        let mut top_json = Json::object();
        for (name, oids) in &rankings {
            top_json.push(
                *name,
                Json::Array(oids.iter().map(|o| Json::Str(name_of(o))).collect()),
            );
        }
        // Details in the order of first appearance in the rankings, each table once.
        let by_oid: HashMap<u32, Deltas> = all.iter().copied().collect();
        let mut seen = HashSet::new();
        let mut tables = Vec::new();
        for oid in rankings.iter().flat_map(|(_, v)| v.iter()) {
            if !seen.insert(*oid) {
                continue;
            }
            let d = by_oid.get(oid).copied().unwrap_or_default();
            let mut e = Json::object()
                .field("table", name_of(oid))
                .field("seq_scan", d.seq_scan)
                .field("tuples_read", d.tuples_read)
                .field("rows_modified", d.rows_modified)
                .field("dead_tuples_added", d.dead_tuples)
                .field("vacuums", d.vacuums)
                .field("analyzes", d.analyzes);
            if let Some((_, Json::Object(fields))) = details.get(oid) {
                for (k, v) in fields {
                    e.push(k.clone(), v.clone());
                }
            }
            tables.push(e);
        }
        Ok(Json::object()
            .field("baseline", baseline)
            .field("window_s", window.map(|w| round3(w.as_secs_f64())))
            .field("every_intervals", self.every)
            .field("query_ms", round3(cost.as_secs_f64() * 1000.0))
            .field("n_tables", n_tables)
            .field(
                "n_changed",
                if baseline {
                    Json::Null
                } else {
                    all.len().into()
                },
            )
            .field("n_reset", n_reset)
            .field("top_n", ctx.top_n)
            .field("top", top_json)
            .field("tables", Json::Array(tables))
            .field(
                "skipped",
                Json::Array(
                    skipped
                        .into_iter()
                        .map(|(_, name, relkind)| {
                            Json::object()
                                .field("relation", name)
                                .field("relkind", relkind)
                                .field("reason", "access exclusive lock held or awaited")
                        })
                        .collect(),
                ),
            ))
    }

    /// Names and current figures of the ranked tables (at most 5 × top N rows).
    fn details(
        &self,
        client: &mut postgres::Client,
        oids: &[u32],
    ) -> Result<HashMap<u32, (String, Json)>, PgError> {
        let err = PgError::at("tables", "pg_stat_user_tables details");
        let rows = client
            .query(
                "SELECT s.relid AS oid, s.schemaname::text || '.' || s.relname::text AS name,
                        s.n_live_tup, s.n_dead_tup,
                        c.relpages::int8 * current_setting('block_size')::int8 AS size_bytes,
                        extract(epoch FROM s.last_vacuum)::float8 AS last_vacuum,
                        extract(epoch FROM s.last_autovacuum)::float8 AS last_autovacuum,
                        extract(epoch FROM s.last_analyze)::float8 AS last_analyze,
                        extract(epoch FROM s.last_autoanalyze)::float8 AS last_autoanalyze
                 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                 WHERE s.relid = ANY($1)",
                &[&oids],
            )
            .map_err(&err)?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let oid: u32 = row.try_get("oid").map_err(&err)?;
            let name: Option<String> = row.try_get("name").map_err(&err)?;
            let mut e = Json::object();
            for k in ["n_live_tup", "n_dead_tup", "size_bytes"] {
                e.push(k, row.try_get::<_, Option<i64>>(k).map_err(&err)?);
            }
            for k in [
                "last_vacuum",
                "last_autovacuum",
                "last_analyze",
                "last_autoanalyze",
            ] {
                e.push(
                    k,
                    row.try_get::<_, Option<f64>>(k)
                        .map_err(&err)?
                        .map(|v| number(round3(v))),
                );
            }
            out.insert(oid, (name.unwrap_or_else(|| oid.to_string()), e));
        }
        Ok(out)
    }
}

/// Reads the largest never-used indexes (no scan since the statistics reset) that do not enforce
/// a constraint, skipping those whose index or table holds or awaits an ACCESS EXCLUSIVE lock.
pub(crate) fn collect_unused_indexes(
    client: &mut postgres::Client,
    ctx: &Ctx,
) -> Result<Json, PgError> {
    let err = PgError::at(
        "unused_indexes",
        "pg_stat_get_numscans over pg_index, pg_locks",
    );
    let limit = i64::try_from(ctx.top_n).unwrap_or(i64::MAX);
    // Straight over pg_index rather than pg_stat_user_indexes, so the statistics are read only
    // for indexes that enforce nothing (the view reads them for every index).
    let sql = format!(
        "WITH {LOCKED}
         SELECT n.nspname::text || '.' || t.relname::text AS table_name,
                c.relname::text AS index_name,
                c.relpages::int8 * current_setting('block_size')::int8 AS size_bytes,
                count(*) OVER () AS n_unused
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_toast'
           AND i.indexrelid NOT IN (SELECT oid FROM locked)
           AND i.indrelid NOT IN (SELECT oid FROM locked)
           AND pg_stat_get_numscans(i.indexrelid) = 0
         ORDER BY size_bytes DESC, i.indexrelid
         LIMIT $1"
    );
    let rows = client.query(sql.as_str(), &[&limit]).map_err(&err)?;
    let mut n_unused = 0i64;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        n_unused = row
            .try_get::<_, Option<i64>>("n_unused")
            .map_err(&err)?
            .unwrap_or(0);
        list.push(
            Json::object()
                .field(
                    "table",
                    row.try_get::<_, Option<String>>("table_name")
                        .map_err(&err)?,
                )
                .field(
                    "index",
                    row.try_get::<_, Option<String>>("index_name")
                        .map_err(&err)?,
                )
                .field(
                    "size_bytes",
                    row.try_get::<_, Option<i64>>("size_bytes").map_err(&err)?,
                ),
        );
    }
    Ok(Json::object()
        .field("n_unused", n_unused)
        .field("indexes", Json::Array(list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seq: i64, dead: i64) -> Deltas {
        Deltas {
            seq_scan: seq,
            dead_tuples: dead,
            ..Deltas::default()
        }
    }

    #[test]
    fn a_costly_query_on_a_large_catalog_runs_less_often_but_at_least_every_tenth_interval() {
        let ms = Duration::from_millis;
        assert_eq!(
            spacing(ms(500), ms(25), 100),
            1,
            "small catalogs always run"
        );
        assert_eq!(spacing(ms(20), ms(25), 50_000), 1);
        assert_eq!(spacing(ms(26), ms(25), 50_000), 2);
        assert_eq!(spacing(ms(60), ms(25), 50_000), 3);
        assert_eq!(spacing(ms(5000), ms(25), 50_000), MAX_EVERY);
        assert_eq!(spacing(ms(5000), Duration::ZERO, 50_000), 1);
    }

    #[test]
    fn top_keeps_the_largest_positive_deltas_in_order() {
        let all: Vec<(u32, Deltas)> = (1..=50).map(|i| (i, d(i as i64 % 7, 0))).collect();
        let t = top(&all, 3, |d| d.seq_scan);
        assert_eq!(t, vec![6, 13, 20], "ties broken by oid");
        assert!(
            top(&all, 3, |d| d.dead_tuples).is_empty(),
            "zeros never rank"
        );
        let small = vec![(9, d(1, -5)), (4, d(2, 3))];
        assert_eq!(top(&small, 20, |d| d.seq_scan), vec![4, 9]);
        assert_eq!(top(&small, 20, |d| d.dead_tuples), vec![4]);
        assert!(top(&small, 0, |d| d.seq_scan).is_empty());
    }

    #[test]
    fn a_counter_going_backwards_gives_no_deltas_but_dead_tuples_may_shrink() {
        let prev = Counters {
            seq_scan: 10,
            dead_tuples: 500,
            ..Counters::default()
        };
        let vacuumed = Counters {
            seq_scan: 12,
            dead_tuples: 0,
            vacuums: 1,
            ..Counters::default()
        };
        let got = deltas(&prev, &vacuumed).unwrap();
        assert_eq!((got.seq_scan, got.dead_tuples, got.vacuums), (2, -500, 1));
        let reset = Counters::default();
        assert!(
            deltas(&prev, &reset).is_none(),
            "a reset is not a negative delta"
        );
    }
}
