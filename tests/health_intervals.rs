//! Server health against a real server: what happens between two intervals shows up in the next
//! interval's figures as a delta. The collector runs as the monitoring role through the pool.

mod common;
mod health_support;

use common::TestPg;
use health_support::{
    assert_no_agent_transaction_open, find, postgres_db, run_and_disconnect, wait_until, Monitor,
};

#[test]
fn a_fresh_server_yields_every_figure_without_errors_and_a_baseline_first() {
    let pg = TestPg::start();
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    assert_eq!(first["baseline"], true);
    assert_eq!(
        first["server_version_num"].as_u64().unwrap() / 10000,
        u64::from(pg.major_version())
    );
    let before: i64 = pg
        .admin()
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'",
            &[],
        )
        .unwrap()
        .get(0);
    run_and_disconnect(&pg, "SELECT 1");
    wait_until(
        &pg,
        &format!("SELECT xact_commit > {before} FROM pg_stat_database WHERE datname = 'postgres'"),
    );
    let second = m.collect_clean();
    assert_no_agent_transaction_open(&pg);
    assert_eq!(second["baseline"], false);
    assert!(second["interval_s"].as_f64().unwrap() >= 0.0, "{second:#}");
    for part in [
        "connections",
        "databases",
        "checkpoints",
        "wal",
        "replication",
        "replication_slots",
        "wal_receiver",
        "vacuum",
        "wraparound",
        "tables",
    ] {
        assert!(second[part].is_object(), "{part} missing: {second:#}");
    }
    // The slow parts ran in the first interval and are not due again yet.
    assert!(first["database_sizes"]["databases"].is_array(), "{first:#}");
    assert!(first["unused_indexes"].is_object(), "{first:#}");
    assert!(second.get("database_sizes").is_none(), "{second:#}");
    let size = find(&first["database_sizes"]["databases"], "datname", "postgres").unwrap();
    assert!(size["size_bytes"].as_u64().unwrap() > 1_000_000, "{size}");

    // Sessions committed transactions in the postgres database in between.
    let db = postgres_db(&second);
    assert!(db["xact_commit"].as_u64().unwrap() >= 1, "{db}");
    let c = &second["connections"];
    assert_eq!(c["max_connections"], 60);
    assert!(c["client_backends"].as_u64().unwrap() >= 1, "{c}");
    assert!(
        c["by_backend_type"]["checkpointer"].as_u64() == Some(1),
        "{c}"
    );
    assert_eq!(second["wal"]["in_recovery"], false);
    assert_eq!(second["wal_receiver"]["in_recovery"], false);
    let w = &second["wraparound"];
    let share = w["max_xid_wraparound_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 0.01, "{w}");
    assert!(
        find(&w["databases"], "datname", "template1").is_some(),
        "{w}"
    );
    assert_eq!(second["vacuum"]["autovacuum_max_workers"], 3);
}

#[test]
fn a_forced_checkpoint_shows_as_a_requested_checkpoint() {
    let pg = TestPg::start();
    let counter = if pg.major_version() >= 17 {
        "SELECT num_requested FROM pg_stat_checkpointer"
    } else {
        "SELECT checkpoints_req FROM pg_stat_bgwriter"
    };
    let before: i64 = pg.admin().query_one(counter, &[]).unwrap().get(0);
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    assert!(
        first["checkpoints"]["checkpoints_requested"].is_null(),
        "baseline has no delta"
    );
    run_and_disconnect(
        &pg,
        "CREATE TABLE filler AS SELECT g FROM generate_series(1, 10000) g; CHECKPOINT",
    );
    wait_until(&pg, &format!("SELECT ({counter}) > {before}"));
    let block = m.collect_clean();
    let ck = &block["checkpoints"];
    assert!(ck["checkpoints_requested"].as_u64().unwrap() >= 1, "{ck}");
    assert!(ck["buffers_checkpoint"].as_u64().unwrap() >= 1, "{ck}");
    assert_eq!(ck["reset"], false);
    // The next interval, with no checkpoint, shows none.
    let quiet = m.collect_clean();
    assert_eq!(
        quiet["checkpoints"]["checkpoints_requested"], 0,
        "{quiet:#}"
    );
}

#[test]
fn a_sort_spilling_to_disk_shows_as_temp_files_and_bytes() {
    let pg = TestPg::start();
    let mut m = Monitor::new(&pg);
    m.collect_clean();
    run_and_disconnect(
        &pg,
        "SET work_mem = '64kB';
         SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s",
    );
    wait_until(
        &pg,
        "SELECT temp_files > 0 FROM pg_stat_database WHERE datname = 'postgres'",
    );
    let block = m.collect_clean();
    let db = postgres_db(&block);
    assert!(db["temp_files"].as_u64().unwrap() >= 1, "{db}");
    assert!(db["temp_bytes"].as_u64().unwrap() > 64 * 1024, "{db}");
    assert_eq!(db["deadlocks"], 0, "{db}");
}

#[test]
fn a_deadlock_between_two_sessions_shows_as_one_deadlock() {
    let pg = TestPg::builder()
        .setting("deadlock_timeout", "100ms")
        .start();
    run_and_disconnect(
        &pg,
        "CREATE TABLE pair (id int PRIMARY KEY, v int); INSERT INTO pair VALUES (1, 0), (2, 0)",
    );
    let mut m = Monitor::new(&pg);
    m.collect_clean();
    let mut a = pg.admin();
    let mut b = pg.admin();
    a.batch_execute("BEGIN; UPDATE pair SET v = 1 WHERE id = 1")
        .unwrap();
    b.batch_execute("BEGIN; UPDATE pair SET v = 2 WHERE id = 2")
        .unwrap();
    // a waits for b's row; b then asks for a's row: one of them is chosen as the victim.
    let waiter = std::thread::spawn(move || {
        let r = a.batch_execute("UPDATE pair SET v = 1 WHERE id = 2");
        let _ = a.batch_execute("ROLLBACK");
        r.err().and_then(|e| e.code().map(|c| c.code().to_string()))
    });
    wait_until(
        &pg,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
    );
    let r = b.batch_execute("UPDATE pair SET v = 2 WHERE id = 1");
    let _ = b.batch_execute("ROLLBACK");
    let other = waiter.join().unwrap();
    let codes = [
        r.err().and_then(|e| e.code().map(|c| c.code().to_string())),
        other,
    ];
    assert_eq!(
        codes
            .iter()
            .filter(|c| c.as_deref() == Some("40P01"))
            .count(),
        1,
        "{codes:?}"
    );
    drop(b);
    wait_until(
        &pg,
        "SELECT deadlocks = 1 FROM pg_stat_database WHERE datname = 'postgres'",
    );
    let block = m.collect_clean();
    let db = postgres_db(&block);
    assert_eq!(db["deadlocks"], 1, "{db}");
    assert!(db["xact_rollback"].as_u64().unwrap() >= 2, "{db}");
}

#[test]
fn a_vacuum_of_a_table_shows_in_the_next_interval() {
    let pg = TestPg::start();
    run_and_disconnect(
        &pg,
        "CREATE TABLE churn (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO churn SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
         DELETE FROM churn WHERE id % 2 = 0",
    );
    wait_until(
        &pg,
        "SELECT n_dead_tup >= 2500 FROM pg_stat_user_tables WHERE relname = 'churn'",
    );
    let mut m = Monitor::new(&pg);
    m.collect_clean();
    run_and_disconnect(&pg, "VACUUM churn");
    wait_until(
        &pg,
        "SELECT vacuum_count = 1 FROM pg_stat_user_tables WHERE relname = 'churn'",
    );
    let block = m.collect_clean();
    let t = &block["tables"];
    assert_eq!(t["top"]["vacuums"][0], "public.churn", "{t:#}");
    let churn = find(&t["tables"], "table", "public.churn").unwrap();
    assert_eq!(churn["vacuums"], 1, "{churn}");
    assert!(
        churn["dead_tuples_added"].as_i64().unwrap() <= -2500,
        "{churn}"
    );
    assert_eq!(churn["n_dead_tup"], 0, "{churn}");
    assert!(churn["last_vacuum"].as_f64().unwrap() > 1.7e9, "{churn}");
    assert!(churn["size_bytes"].as_u64().unwrap() >= 8192, "{churn}");
}

#[test]
fn a_logical_slot_retains_wal_and_its_retention_grows_by_the_wal_written() {
    let pg = TestPg::builder().setting("wal_level", "logical").start();
    run_and_disconnect(
        &pg,
        "SELECT pg_create_logical_replication_slot('bitville_test', 'pgoutput')",
    );
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    let slot = find(
        &first["replication_slots"]["slots"],
        "slot_name",
        "bitville_test",
    )
    .unwrap();
    assert_eq!(slot["active"], false, "{slot}");
    assert_eq!(slot["slot_type"], "logical", "{slot}");
    assert!(slot["retained_bytes_delta"].is_null(), "baseline: {slot}");
    let wal_stats = pg.major_version() >= 14;
    let before: f64 = if wal_stats {
        pg.admin()
            .query_one("SELECT wal_bytes::float8 FROM pg_stat_wal", &[])
            .unwrap()
            .get(0)
    } else {
        0.0
    };
    run_and_disconnect(
        &pg,
        "CREATE TABLE w AS SELECT g, repeat('y', 200) AS pad FROM generate_series(1, 20000) g",
    );
    if wal_stats {
        // The session's WAL statistics reach pg_stat_wal when it exits, not at commit.
        wait_until(
            &pg,
            &format!("SELECT wal_bytes::float8 > {before} + 4e6 FROM pg_stat_wal"),
        );
    }
    let block = m.collect_clean();
    let slot = find(
        &block["replication_slots"]["slots"],
        "slot_name",
        "bitville_test",
    )
    .unwrap();
    let grown = slot["retained_bytes_delta"].as_i64().unwrap();
    assert!(grown > 4_000_000, "{slot}");
    assert!(slot["retained_bytes"].as_i64().unwrap() >= grown, "{slot}");
    let wal = &block["wal"];
    let bytes = wal["bytes"].as_i64().unwrap();
    assert!(
        bytes >= grown,
        "WAL written covers what the slot retains more: {wal} {slot}"
    );
    if pg.major_version() >= 13 {
        assert!(slot["wal_status"].is_string(), "{slot}");
    } else {
        assert!(slot["wal_status"].is_null(), "{slot}");
    }
    if pg.major_version() >= 14 {
        assert!(wal["wal_bytes"].as_i64().unwrap() > 4_000_000, "{wal}");
        assert!(wal["wal_records"].as_i64().unwrap() > 0, "{wal}");
    } else {
        assert!(wal["wal_bytes"].is_null(), "{wal}");
    }
}

#[test]
fn a_standby_reports_its_replay_position_and_no_errors() {
    let mut pg = TestPg::start();
    run_and_disconnect(
        &pg,
        "CREATE TABLE before_recovery AS SELECT generate_series(1, 1000) AS g",
    );
    // A standby without a primary: the server restarts in recovery (standby.signal) and stays
    // there, serving read-only queries, which is all the standby code paths need.
    pg.stop();
    let signal = pg.data_dir().join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    common::chown_to_server_user(&signal);
    pg.start_again();
    let mut m = Monitor::new(&pg);
    let first = m.collect_clean();
    let second = m.collect_clean();
    for block in [&first, &second] {
        assert_eq!(block["wal"]["in_recovery"], true, "{block:#}");
        assert_eq!(block["wal_receiver"]["in_recovery"], true, "{block:#}");
    }
    // Nothing streams in, so nothing was replayed between the two intervals.
    assert_eq!(second["wal"]["bytes"], 0, "{second:#}");
    assert!(
        second["wal"]["lsn"].as_str().unwrap().contains('/'),
        "{second:#}"
    );
    let receiver = &second["wal_receiver"];
    assert!(receiver["status"].is_null(), "no receiver runs: {receiver}");
    assert!(receiver.get("replay_delay_s").is_some(), "{receiver}");
    assert_eq!(second["replication"]["standbys"], serde_json::json!([]));
    assert!(second["tables"].is_object(), "{second:#}");
}
