mod common;
use common::TestPg;

fn exec_ms(c: &mut postgres::Client, sql: &str) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let rows = c.query(&format!("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) {sql}"), &[]).unwrap();
        for r in rows {
            let l: String = r.get(0);
            if let Some(v) = l.strip_prefix("Execution Time: ") {
                best = best.min(v.trim_end_matches(" ms").parse().unwrap());
            }
        }
    }
    best
}

const LOCKED: &str = "locked AS MATERIALIZED (
    SELECT DISTINCT l.relation AS oid FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))";

#[test]
fn variants() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let pg = TestPg::builder().setting("max_locks_per_transaction", "256").setting("autovacuum", "off").start();
    let mut admin = pg.admin();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        admin.batch_execute(&format!("DO $$ BEGIN FOR i IN {} .. {} LOOP EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v int); INSERT INTO t%s VALUES (1, 1)', i, i); END LOOP; END $$", i + 1, end)).unwrap();
        i = end;
    }
    drop(admin);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pool = bitville_pg_agent::pool::Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let v1 = format!("WITH {LOCKED}
             SELECT s.relid AS oid, NULL::text AS skipped, NULL::text AS relkind,
                    s.seq_scan AS seq_scan, coalesce(s.idx_scan, 0) AS idx_scan,
                    s.seq_tup_read + coalesce(s.idx_tup_fetch, 0) AS tuples_read,
                    s.n_tup_ins + s.n_tup_upd + s.n_tup_del AS rows_modified,
                    s.n_dead_tup AS dead_tuples,
                    s.vacuum_count + s.autovacuum_count AS vacuums,
                    s.analyze_count + s.autoanalyze_count AS analyzes
             FROM pg_stat_user_tables s
             WHERE s.relid NOT IN (SELECT oid FROM locked)
               AND (s.seq_scan > 0 OR s.idx_scan > 0 OR s.n_tup_ins > 0 OR s.n_tup_upd > 0
                    OR s.n_tup_del > 0 OR s.n_dead_tup > 0 OR s.vacuum_count > 0
                    OR s.autovacuum_count > 0 OR s.analyze_count > 0
                    OR s.autoanalyze_count > 0)");
    let v1b = format!("WITH {LOCKED}
             SELECT s.relid AS oid,
                    s.seq_scan AS seq_scan, coalesce(s.idx_scan, 0) AS idx_scan,
                    s.seq_tup_read + coalesce(s.idx_tup_fetch, 0) AS tuples_read,
                    s.n_tup_ins + s.n_tup_upd + s.n_tup_del AS rows_modified,
                    s.n_dead_tup AS dead_tuples,
                    s.vacuum_count + s.autovacuum_count AS vacuums,
                    s.analyze_count + s.autoanalyze_count AS analyzes
             FROM pg_stat_user_tables s
             WHERE s.relid NOT IN (SELECT oid FROM locked)");
    let cls = "c.relkind IN ('r', 'm', 'p') AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema') OR nspname ~ '^pg_toast')";
    let v2 = format!("WITH {LOCKED}
      SELECT c.oid, pg_stat_get_numscans(c.oid) AS seq_scan, coalesce(ix.scans, 0) AS idx_scan,
        pg_stat_get_tuples_returned(c.oid) + pg_stat_get_tuples_fetched(c.oid) + coalesce(ix.fetched, 0) AS tuples_read,
        pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid) AS rows_modified,
        pg_stat_get_dead_tuples(c.oid) AS dead_tuples,
        pg_stat_get_vacuum_count(c.oid) + pg_stat_get_autovacuum_count(c.oid) AS vacuums,
        pg_stat_get_analyze_count(c.oid) + pg_stat_get_autoanalyze_count(c.oid) AS analyzes
      FROM pg_class c
      LEFT JOIN (SELECT indrelid, sum(pg_stat_get_numscans(indexrelid))::int8 AS scans,
                        sum(pg_stat_get_tuples_fetched(indexrelid))::int8 AS fetched
                 FROM pg_index GROUP BY indrelid) ix ON ix.indrelid = c.oid
      WHERE {cls} AND c.oid NOT IN (SELECT oid FROM locked)");
    let v3 = format!("WITH {LOCKED}
      SELECT c.oid, pg_stat_get_numscans(c.oid) AS seq_scan,
        pg_stat_get_tuples_returned(c.oid) + pg_stat_get_tuples_fetched(c.oid) AS tuples_read,
        pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid) AS rows_modified,
        pg_stat_get_dead_tuples(c.oid) AS dead_tuples,
        pg_stat_get_vacuum_count(c.oid) + pg_stat_get_autovacuum_count(c.oid) AS vacuums
      FROM pg_class c
      WHERE {cls} AND c.oid NOT IN (SELECT oid FROM locked)");
    let v3f = format!("WITH {LOCKED} SELECT * FROM (
      SELECT c.oid, pg_stat_get_numscans(c.oid) AS seq_scan,
        pg_stat_get_tuples_returned(c.oid) + pg_stat_get_tuples_fetched(c.oid) AS tuples_read,
        pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid) AS rows_modified,
        pg_stat_get_dead_tuples(c.oid) AS dead_tuples,
        pg_stat_get_vacuum_count(c.oid) + pg_stat_get_autovacuum_count(c.oid) AS vacuums,
        pg_stat_get_analyze_count(c.oid) + pg_stat_get_autoanalyze_count(c.oid) AS analyzes
      FROM pg_class c
      WHERE {cls} AND c.oid NOT IN (SELECT oid FROM locked) OFFSET 0) s
      WHERE s.seq_scan + s.tuples_read + s.rows_modified + s.dead_tuples + s.vacuums + s.analyzes > 0");
    let v4 = format!("SELECT c.oid FROM pg_class c WHERE {cls}");
    let v5 = "SELECT count(*) FROM pg_locks";
    for (name, q) in [("v1 current", v1.as_str()), ("v1b no filter", &v1b), ("v2 pg_class+index agg", &v2), ("v3 no index", &v3), ("v3f filtered", &v3f), ("v4 pg_class only", &v4), ("v5 pg_locks", v5)] {
        let ms = exec_ms(&mut c, q);
        eprintln!("{n} {name}: {ms:.2} ms");
    }
    if pg.major_version() >= 15 {
        for mode in ["none", "snapshot"] {
            c.batch_execute(&format!("SET stats_fetch_consistency = {mode}")).unwrap();
            for (name, q) in [("v1", v1.as_str()), ("v2", &v2), ("v3", &v3)] {
                let ms = exec_ms(&mut c, q);
                eprintln!("{n} {name} {mode}: {ms:.2} ms");
            }
        }
        c.batch_execute("RESET stats_fetch_consistency").unwrap();
    }
    // the wire + agent side: full fetch
    for (name, q) in [("v1 fetch", v1.as_str()), ("v2 fetch", &v2), ("v3f fetch", &v3f)] {
        let t = std::time::Instant::now();
        let rows = c.query(q, &[]).unwrap();
        eprintln!("{n} {name}: {} rows {:.2} ms client", rows.len(), t.elapsed().as_secs_f64() * 1000.0);
    }
}
