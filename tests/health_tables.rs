//! Hot tables and the safety rules of server health against a real server: rankings by delta,
//! relations under an ACCESS EXCLUSIVE lock skipped instead of waited for, a failing collector
//! reported while the others still ship, and a collector that keeps timing out backed off.

mod common;
mod health_support;

use bitville_pg_agent::health::HealthOptions;
use common::TestPg;
use health_support::{
    assert_no_agent_transaction_open, find, run_and_disconnect, wait_until, Monitor,
};
use serde_json::{json, Value};

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_hundred_sequential_scans_put_the_table_at_the_top_of_the_hot_tables() {
    let pg = TestPg::start();
    run_and_disconnect(
        &pg,
        "CREATE TABLE hot (id int, pad text);
         INSERT INTO hot SELECT g, 'x' FROM generate_series(1, 1000) g;
         CREATE TABLE warm (id int);
         INSERT INTO warm SELECT generate_series(1, 10);
         CREATE INDEX hot_pad ON hot (pad)",
    );
    wait_until(
        &pg,
        "SELECT count(*) = 2 FROM pg_stat_user_tables WHERE n_tup_ins > 0",
    );
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    assert_eq!(first["tables"]["baseline"], true);
    assert_eq!(first["tables"]["top"]["seq_scan"], json!([]), "{first:#}");
    // The never-used index shows on the first (slow) run.
    let unused = &first["unused_indexes"];
    assert!(
        find(&unused["indexes"], "index", "hot_pad").is_some(),
        "{unused:#}"
    );

    let mut script = String::from("SET enable_indexscan = off; SET enable_bitmapscan = off;");
    for _ in 0..100 {
        script.push_str("SELECT count(*) FROM hot;");
    }
    for _ in 0..10 {
        script.push_str("SELECT count(*) FROM warm;");
    }
    run_and_disconnect(&pg, &script);
    wait_until(
        &pg,
        "SELECT seq_scan >= 100 FROM pg_stat_user_tables WHERE relname = 'hot'",
    );
    let block = m.collect_clean();
    let t = &block["tables"];
    assert_eq!(t["baseline"], false);
    let by_seq = names(&t["top"]["seq_scan"]);
    assert_eq!(by_seq, vec!["public.hot", "public.warm"], "{t:#}");
    assert_eq!(names(&t["top"]["tuples_read"])[0], "public.hot", "{t:#}");
    let hot = find(&t["tables"], "table", "public.hot").unwrap();
    assert_eq!(hot["seq_scan"], 100, "{hot}");
    assert_eq!(hot["tuples_read"], 100 * 1000, "{hot}");
    assert_eq!(hot["rows_modified"], 0, "{hot}");
    assert_eq!(hot["n_live_tup"], 1000, "{hot}");
    let warm = find(&t["tables"], "table", "public.warm").unwrap();
    assert_eq!(warm["seq_scan"], 10, "{warm}");

    // A smaller top N cuts the rankings.
    let mut small = Monitor::with_options(
        &pg,
        HealthOptions {
            top_n: 1,
            ..HealthOptions::default()
        },
    );
    small.collect_clean();
    run_and_disconnect(
        &pg,
        "SELECT count(*) FROM warm; SELECT count(*) FROM warm; SELECT count(*) FROM hot",
    );
    wait_until(
        &pg,
        "SELECT seq_scan >= 12 FROM pg_stat_user_tables WHERE relname = 'warm'",
    );
    let block = small.collect_clean();
    assert_eq!(
        names(&block["tables"]["top"]["seq_scan"]),
        vec!["public.warm"]
    );
}

#[test]
fn a_table_under_an_access_exclusive_lock_is_skipped_not_waited_for() {
    let pg = TestPg::start();
    run_and_disconnect(
        &pg,
        "CREATE TABLE busy (id int); CREATE INDEX busy_id ON busy (id);
         CREATE TABLE queued (id int);
         CREATE TABLE calm (id int);
         INSERT INTO busy VALUES (1); INSERT INTO queued VALUES (1); INSERT INTO calm VALUES (1)",
    );
    wait_until(
        &pg,
        "SELECT count(*) = 3 FROM pg_stat_user_tables WHERE n_tup_ins > 0",
    );
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    assert!(find(&first["unused_indexes"]["indexes"], "index", "busy_id").is_some());

    // `busy`: ACCESS EXCLUSIVE held. `queued`: ACCESS EXCLUSIVE awaited behind a reader.
    let mut holder = pg.admin();
    holder
        .batch_execute("BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut reader = pg.admin();
    reader.batch_execute("BEGIN; SELECT * FROM queued").unwrap();
    let port = pg.port();
    let dir = pg.socket_dir().to_str().unwrap().to_string();
    let alter = std::thread::spawn(move || {
        let mut c = postgres::Config::new()
            .host(&dir)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect(postgres::NoTls)
            .unwrap();
        c.batch_execute("ALTER TABLE queued ADD COLUMN extra int")
            .unwrap();
    });
    wait_until(
        &pg,
        "SELECT count(*) = 1 FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'",
    );
    run_and_disconnect(&pg, "SELECT count(*) FROM calm");
    wait_until(
        &pg,
        "SELECT seq_scan >= 1 FROM pg_stat_user_tables WHERE relname = 'calm'",
    );

    // Both slow and fast parts run in this interval; neither may wait behind the locks.
    let opts = HealthOptions {
        slow_every: std::time::Duration::ZERO,
        ..HealthOptions::default()
    };
    let mut fresh = Monitor::with_options(&pg, opts);
    let block = m.collect_clean();
    let fresh_block = fresh.collect_clean();

    let t = &block["tables"];
    let skipped: Vec<&str> = t["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["relation"].as_str().unwrap())
        .collect();
    assert!(skipped.contains(&"public.busy"), "{t:#}");
    assert!(skipped.contains(&"public.queued"), "{t:#}");
    assert!(!skipped.contains(&"public.calm"), "{t:#}");
    assert_eq!(names(&t["top"]["seq_scan"]), vec!["public.calm"], "{t:#}");
    assert!(
        find(&t["tables"], "table", "public.busy").is_none(),
        "{t:#}"
    );
    // The index of a locked table is left out of the unused indexes.
    let unused = &fresh_block["unused_indexes"]["indexes"];
    assert!(
        find(unused, "index", "busy_id").is_none(),
        "{fresh_block:#}"
    );
    assert!(fresh_block["tables"]["skipped"].as_array().unwrap().len() >= 2);

    holder.batch_execute("COMMIT").unwrap();
    reader.batch_execute("COMMIT").unwrap();
    alter.join().unwrap();
    // Closing the sessions sends their statistics (the reader's scan of `queued`) now, not at
    // some later idle moment (PG14 and older).
    drop(holder);
    drop(reader);
    wait_until(
        &pg,
        "SELECT seq_scan >= 1 FROM pg_stat_user_tables WHERE relname = 'queued'",
    );
    // The interval after a skip has no baseline for the skipped table: it stays out of the
    // rankings once, then counts again.
    let scans = seq_scans(&pg, "busy");
    run_and_disconnect(&pg, "SELECT count(*) FROM busy");
    wait_until(
        &pg,
        &format!("SELECT seq_scan > {scans} FROM pg_stat_user_tables WHERE relname = 'busy'"),
    );
    let after = m.collect_clean();
    assert!(
        after["tables"]["skipped"].as_array().unwrap().is_empty(),
        "{after:#}"
    );
    assert!(!names(&after["tables"]["top"]["seq_scan"]).contains(&"public.busy".to_string()));
    let scans = seq_scans(&pg, "busy");
    run_and_disconnect(&pg, "SELECT count(*) FROM busy");
    wait_until(
        &pg,
        &format!("SELECT seq_scan > {scans} FROM pg_stat_user_tables WHERE relname = 'busy'"),
    );
    let later = m.collect_clean();
    assert_eq!(
        names(&later["tables"]["top"]["seq_scan"]),
        vec!["public.busy"],
        "{later:#}"
    );
}

/// The table's sequential scans so far (CREATE INDEX counts one on some versions).
fn seq_scans(pg: &TestPg, table: &str) -> i64 {
    pg.admin()
        .query_one(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_missing_privilege_fails_only_its_collector() {
    let pg = TestPg::start();
    // The archiver figures come from pg_stat_get_archiver(); without it the WAL part fails.
    run_and_disconnect(
        &pg,
        "REVOKE EXECUTE ON FUNCTION pg_stat_get_archiver() FROM PUBLIC",
    );
    let mut m = Monitor::new(&pg);
    m.collect();
    let block = m.collect();
    let errors = block["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{block:#}");
    let e = &errors[0];
    assert_eq!(e["collector"], "wal", "{e}");
    assert_eq!(e["sqlstate"], "42501", "{e}");
    assert_eq!(e["timed_out"], false, "{e}");
    assert!(
        e["query"].as_str().unwrap().contains("pg_stat_archiver"),
        "{e}"
    );
    assert!(block["wal"].is_null(), "{block:#}");
    // The parts after the failed one ran in a fresh transaction, and none was left open.
    assert!(
        block["checkpoints"]["checkpoints_timed"].is_number(),
        "{block:#}"
    );
    assert!(block["wraparound"]["databases"].is_array(), "{block:#}");
    assert!(block["tables"]["top"].is_object(), "{block:#}");
    assert_no_agent_transaction_open(&pg);
    assert!(block["databases"]["databases"].is_array(), "{block:#}");
}

#[test]
fn a_collector_that_keeps_timing_out_is_backed_off_and_comes_back() {
    let pg = TestPg::start();
    let mut m = Monitor::new(&pg);
    m.collect_clean();
    // Locking the view makes the WAL query wait for it: lock_timeout (100 ms) cancels it.
    let mut holder = pg.admin();
    holder
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_stat_archiver IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let block = m.collect();
        let errors = block["errors"].as_array().unwrap().clone();
        assert_eq!(errors.len(), 1, "{block:#}");
        let e = &errors[0];
        assert_eq!(e["collector"], "wal", "{e}");
        assert!(block["wal"].is_null());
        assert!(
            block["checkpoints"].is_object(),
            "others still ship: {block:#}"
        );
        seen.push(if e["skipped"].is_string() {
            "skip".to_string()
        } else {
            assert_eq!(e["sqlstate"], "55P03", "{e}");
            assert_eq!(e["timed_out"], true, "{e}");
            format!("timeout+{}", e["backed_off_cycles"])
        });
    }
    assert_eq!(
        seen,
        vec![
            "timeout+0",
            "timeout+1",
            "skip",
            "timeout+2",
            "skip",
            "skip"
        ]
    );
    holder.batch_execute("COMMIT").unwrap();
    let back = m.collect_clean();
    // Every attempt above returned 55P03 instead of blocking until COMMIT: the collector never
    // waited longer than lock_timeout (not asserted on wall time).
    assert!(back["wal"].is_object());
}

#[test]
fn another_database_gets_its_own_hot_tables_and_baseline() {
    let pg = TestPg::start();
    run_and_disconnect(&pg, "CREATE DATABASE shop");
    let mut shop_admin = postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("shop")
        .connect(postgres::NoTls)
        .unwrap();
    shop_admin
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .unwrap();
    drop(shop_admin);
    let mut m = Monitor::new(&pg);
    let shop_pool =
        bitville_pg_agent::pool::Pool::new(&bitville_pg_agent::config::DatabaseConfig {
            dbname: "shop".into(),
            ..pg.db_config()
        });
    let mut shop = shop_pool.acquire().unwrap();
    m.collect_clean();
    let first = m
        .health
        .collect_database("shop", &mut shop, std::time::Instant::now());
    let first: Value = serde_json::from_str(&first.to_json_string()).unwrap();
    assert_eq!(first["database"], "shop");
    assert_eq!(first["errors"], json!([]), "{first:#}");
    assert_eq!(first["tables"]["baseline"], true, "{first:#}");

    let mut c = postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("shop")
        .connect(postgres::NoTls)
        .unwrap();
    c.batch_execute("SELECT count(*) FROM orders; SELECT count(*) FROM orders")
        .unwrap();
    drop(c);
    // Statistics of another database are visible from a session connected to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n: i64 = shop
            .query_one(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'orders'",
                &[],
            )
            .unwrap()
            .get(0);
        if n >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "statistics never showed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let main = m.collect_clean();
    let other = m
        .health
        .collect_database("shop", &mut shop, std::time::Instant::now());
    let other: Value = serde_json::from_str(&other.to_json_string()).unwrap();
    assert_eq!(other["errors"], json!([]), "{other:#}");
    assert_eq!(
        names(&other["tables"]["top"]["seq_scan"]),
        vec!["public.orders"]
    );
    assert!(find(&main["tables"]["tables"], "table", "public.orders").is_none());
}
