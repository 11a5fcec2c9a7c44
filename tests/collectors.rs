//! The collectors against a real PostgreSQL server, run as the non-superuser monitoring role
//! (`pg_monitor`, `CONNECTION LIMIT 5`) through the agent's pool: the activity sampler with CPU
//! attribution and correlation IDs, the lock wait tree, pg_stat_statements deltas across resets
//! and restarts, a missing extension, and the host figures.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::host::{HostCollector, WatchedPath};
use bitville_pg_agent::collect::statements::{Availability, StatementsCollector, StatementsConfig};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{Payload, Source};
use bitville_pg_agent::pool::Pool;
use common::{TempDir, TestPg};

const UUID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

/// A superuser session with its own application_name: the "application" under observation.
fn app_session(pg: &TestPg, application_name: &str) -> postgres::Client {
    postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .application_name(application_name)
        .connect(postgres::NoTls)
        .expect("application session")
}

fn array<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    match v.get(key) {
        Some(Json::Array(items)) => items,
        other => panic!("{key} is not an array: {other:?}"),
    }
}

fn num(v: &Json, key: &str) -> f64 {
    match v.get(key) {
        Some(Json::Int(i)) => *i as f64,
        Some(Json::UInt(u)) => *u as f64,
        Some(Json::Float(f)) => *f,
        other => panic!("{key} is not a number: {other:?}"),
    }
}

fn string<'a>(v: &'a Json, key: &str) -> &'a str {
    match v.get(key) {
        Some(Json::Str(s)) => s,
        other => panic!("{key} is not a string: {other:?}"),
    }
}

/// Every number anywhere in `v` is finite and not negative.
fn assert_no_negative(v: &Json, path: &str) {
    match v {
        Json::Int(i) => assert!(*i >= 0, "{path} = {i}"),
        Json::Float(f) => assert!(f.is_finite() && *f >= 0.0, "{path} = {f}"),
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_no_negative(item, &format!("{path}[{i}]"));
            }
        }
        Json::Object(fields) => {
            for (k, item) in fields {
                assert_no_negative(item, &format!("{path}.{k}"));
            }
        }
        _ => {}
    }
}

/// Samples until `done` says the workload finished, then once more.
fn sample_until_done(sampler: &mut ActivitySampler, pool: &Pool, done: &mpsc::Receiver<()>) {
    let mut c = pool.acquire().unwrap();
    loop {
        sampler.sample(&mut c).expect("sample");
        if done.try_recv().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    sampler.sample(&mut c).expect("sample");
}

#[test]
fn a_three_second_query_between_summaries_shows_duration_cpu_and_correlation() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    {
        let mut c = pool.acquire().unwrap();
        sampler.sample(&mut c).unwrap();
    }
    let first = sampler.finish_interval();
    assert_eq!(
        first.len(),
        1,
        "only the summary when nothing correlated ran"
    );

    let mut app = app_session(&pg, &format!("bitville-{UUID}"));
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        // Burns CPU for exactly 3 seconds of server time, then returns.
        app.query_one(
            "WITH RECURSIVE spin(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM spin \
             WHERE clock_timestamp() < statement_timestamp() + interval '3 seconds') \
             SELECT count(*) FROM spin",
            &[],
        )
        .unwrap();
        tx.send(()).unwrap();
    });
    sample_until_done(&mut sampler, &pool, &rx);
    worker.join().unwrap();
    let payloads = sampler.finish_interval();

    let summary = &payloads[0];
    assert_eq!(summary.source, Source::PgStatActivity);
    assert_eq!(summary.correlation_id, None);
    let sessions = array(&summary.data, "sessions");
    let spin = sessions
        .iter()
        .find(|s| s.get("correlation_id") == Some(&Json::Str(UUID.into())))
        .unwrap_or_else(|| {
            panic!(
                "no correlated execution in {}",
                summary.data.to_json_string()
            )
        });
    let query = string(spin, "query");
    assert!(query.contains("FROM spin"), "{query}");
    assert!(!query.contains("3 seconds"), "literals are masked: {query}");
    assert!(
        num(spin, "duration_ms") >= 1000.0,
        "{}",
        spin.to_json_string()
    );
    assert!(
        num(spin, "cpu_ms") > 0.0,
        "CPU attributed: {}",
        spin.to_json_string()
    );
    assert!(num(spin, "n_samples") >= 2.0);
    assert_eq!(string(spin, "usename"), "postgres");
    assert_eq!(string(spin, "backend_type"), "client backend");
    // The agent's own sessions are never reported.
    assert!(sessions
        .iter()
        .all(|s| s.get("application_name") != Some(&Json::Str("bitville-monitor".into()))));

    let correlated: Vec<&Payload> = payloads
        .iter()
        .filter(|p| p.correlation_id.as_deref() == Some(UUID))
        .collect();
    assert_eq!(correlated.len(), 1, "one payload per correlation id");
    let data = &correlated[0].data;
    assert!(string(data, "query").contains("FROM spin"));
    assert!(num(data, "duration_ms") >= 1000.0);
    assert!(num(data, "cpu_ms") > 0.0);
    assert_eq!(correlated[0].source, Source::PgStatActivity);
}

/// Waits (as long as it takes: no timed assertion) until every pid waits on a lock.
fn wait_for_lock_waits(admin: &mut postgres::Client, pids: &[i32]) {
    let pids = pids.to_vec();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND wait_event_type = 'Lock'",
            &[&pids],
        )
        .unwrap()
        .get::<_, i64>(0)
        < pids.len() as i64
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_three_level_lock_chain_is_one_tree_rooted_at_the_first_holder() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE chain (id int PRIMARY KEY, v int); INSERT INTO chain VALUES (1, 0), (2, 0);")
        .unwrap();
    let mut a = app_session(&pg, &format!("bitville-{UUID}"));
    let a_pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    a.batch_execute("BEGIN; UPDATE chain SET v = 1 WHERE id = 1;")
        .unwrap();

    // B holds row 2 and waits for A's row 1; C waits for B's row 2: A → B → C.
    let mut b = app_session(&pg, "app-b");
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let b_thread = std::thread::spawn(move || {
        b.batch_execute("BEGIN; UPDATE chain SET v = 2 WHERE id = 2; UPDATE chain SET v = 2 WHERE id = 1; COMMIT;")
            .unwrap();
    });
    let mut c = app_session(&pg, "app-c");
    let c_pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // C may only start once B holds row 2, or C would block on nothing.
    wait_for_lock_waits(&mut admin, &[b_pid]);
    let c_thread = std::thread::spawn(move || {
        c.batch_execute("UPDATE chain SET v = 3 WHERE id = 2")
            .unwrap();
    });
    wait_for_lock_waits(&mut admin, &[b_pid, c_pid]);

    // The chain is in place and stays so until A rolls back: one sample must show all of it.
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut client = pool.acquire().unwrap();
    let stats = sampler.sample(&mut client).unwrap();
    assert_eq!(stats.n_lock_waits, 2, "{stats:?}");
    assert!(stats.lock_snapshot);
    drop(client);
    let payloads = sampler.finish_interval();
    a.batch_execute("ROLLBACK").unwrap();
    b_thread.join().unwrap();
    c_thread.join().unwrap();

    let locks = payloads[0].data.get("locks").unwrap();
    assert_eq!(num(locks, "max_blocked"), 2.0);
    assert_eq!(num(locks, "max_depth"), 2.0);
    let peak = locks.get("peak").unwrap();
    let trees = array(peak, "trees");
    assert_eq!(trees.len(), 1, "{}", peak.to_json_string());
    let tree = &trees[0];
    assert_eq!(num(tree, "root_pid"), a_pid as f64);
    assert_eq!(num(tree, "depth"), 2.0);
    assert_eq!(num(tree, "n_blocked"), 2.0);
    let nodes = array(tree, "sessions");
    let node = |pid: i32| {
        nodes
            .iter()
            .find(|n| num(n, "pid") == pid as f64)
            .unwrap_or_else(|| panic!("pid {pid} not in {}", tree.to_json_string()))
    };
    let root = node(a_pid);
    assert_eq!(string(root, "state"), "idle in transaction");
    assert_eq!(string(root, "correlation_id"), UUID);
    assert!(num(root, "xact_age_ms") >= 0.0);
    assert_eq!(num(node(b_pid), "blocked_by"), a_pid as f64);
    assert_eq!(num(node(b_pid), "depth"), 1.0);
    assert_eq!(num(node(c_pid), "blocked_by"), b_pid as f64);
    assert_eq!(num(node(c_pid), "depth"), 2.0);
    let c_lock = node(c_pid).get("lock").unwrap();
    assert_eq!(
        string(c_lock, "mode"),
        "ShareLock",
        "a row lock waits on the transaction id"
    );
    if pg.major_version() >= 14 {
        assert!(num(node(c_pid), "wait_ms") >= 0.0);
    }
    // The waiting executions carry what they waited for in the summary too.
    let sessions = array(&payloads[0].data, "sessions");
    let c_exec = sessions
        .iter()
        .find(|s| num(s, "pid") == c_pid as f64)
        .unwrap();
    let waited = c_exec.get("lock").unwrap();
    assert_eq!(array(waited, "blocked_by"), &[Json::Int(b_pid as i64)]);
}

const WORKLOAD: &str = "SELECT count(*) FROM pg_class WHERE relpages > $1";

fn run_workload(app: &mut postgres::Client, n: usize) {
    let stmt = app.prepare(WORKLOAD).unwrap();
    for i in 0..n {
        app.query_one(&stmt, &[&(i as i32)]).unwrap();
    }
}

fn workload_entry(p: &Payload) -> &Json {
    array(&p.data, "statements")
        .iter()
        .find(|s| matches!(s.get("query"), Some(Json::Str(q)) if q.contains("relpages >")))
        .unwrap_or_else(|| panic!("workload missing from {}", p.data.to_json_string()))
}

#[test]
fn statement_deltas_match_what_ran_across_reset_and_restart() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("pgss-state");
    let mut app = app_session(&pg, "app");
    let mut admin = pg.admin();
    let mut coll = StatementsCollector::new(StatementsConfig::new(state.path()));
    let mut c = pool.acquire().unwrap();
    assert!(
        coll.collect(&mut c).unwrap().is_none(),
        "first call is the baseline"
    );
    assert_eq!(coll.availability(), &Availability::Available);
    assert!(coll.baseline_path().exists(), "baseline persisted");

    // 500 executions between two intervals are a delta of 500 calls.
    run_workload(&mut app, 500);
    let p = coll.collect(&mut c).unwrap().expect("a delta payload");
    assert_eq!(p.source, Source::PgStatStatements);
    let e = workload_entry(&p);
    assert_eq!(num(e, "calls"), 500.0);
    assert!(num(e, "total_exec_time") > 0.0);
    assert!(
        matches!(string(e, "status"), "new" | "continuing"),
        "{}",
        e.to_json_string()
    );
    assert_eq!(
        p.data.get("reset").unwrap().get("detected"),
        Some(&Json::Bool(false))
    );
    assert_no_negative(&p.data, "data");

    // Another 200: only the new ones count.
    run_workload(&mut app, 200);
    let p = coll.collect(&mut c).unwrap().unwrap();
    let e = workload_entry(&p);
    assert_eq!(num(e, "calls"), 200.0);
    assert_eq!(string(e, "status"), "continuing");

    // A reset between intervals is marked, and nothing goes negative.
    admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .unwrap();
    run_workload(&mut app, 20);
    let p = coll.collect(&mut c).unwrap().unwrap();
    assert_eq!(
        p.data.get("reset").unwrap().get("detected"),
        Some(&Json::Bool(true)),
        "{}",
        p.data.to_json_string()
    );
    let e = workload_entry(&p);
    assert_eq!(num(e, "calls"), 20.0);
    assert_eq!(string(e, "status"), "reset");
    assert_no_negative(&p.data, "data");

    // A restart of the agent: a new collector continues from the persisted baseline.
    drop(coll);
    run_workload(&mut app, 300);
    let mut restarted = StatementsCollector::new(StatementsConfig::new(state.path()));
    let p = restarted
        .collect(&mut c)
        .unwrap()
        .expect("no interval lost across the restart");
    let e = workload_entry(&p);
    assert_eq!(num(e, "calls"), 300.0);
    assert_eq!(string(e, "status"), "continuing");
    assert_no_negative(&p.data, "data");
}

#[test]
fn top_n_and_the_other_row_keep_totals_complete() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("pgss-top");
    let mut app = app_session(&pg, "app");
    let mut cfg = StatementsConfig::new(state.path());
    cfg.top_n = 2;
    let mut coll = StatementsCollector::new(cfg);
    let mut c = pool.acquire().unwrap();
    assert!(coll.collect(&mut c).unwrap().is_none());
    // Six distinct statements (constants and aliases would not make them distinct).
    for table in [
        "pg_class",
        "pg_attribute",
        "pg_type",
        "pg_proc",
        "pg_namespace",
        "pg_am",
    ] {
        app.batch_execute(&format!("SELECT count(*) FROM {table}"))
            .unwrap();
    }
    let p = coll.collect(&mut c).unwrap().unwrap();
    assert_eq!(array(&p.data, "statements").len(), 2);
    let changed = num(&p.data, "n_changed");
    let other = p.data.get("other").unwrap();
    assert_eq!(num(other, "n_statements"), changed - 2.0);
    assert!(num(other, "calls") >= 4.0, "{}", other.to_json_string());
}

#[test]
fn without_pg_stat_statements_the_other_collectors_keep_working() {
    let pg = TestPg::builder().without_pg_stat_statements().start();
    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("pgss-missing");
    let mut cfg = StatementsConfig::new(state.path());
    cfg.recheck = Duration::ZERO;
    let mut coll = StatementsCollector::new(cfg);
    let mut c = pool.acquire().unwrap();
    assert!(coll.collect(&mut c).unwrap().is_none());
    assert_eq!(coll.availability(), &Availability::NotInstalled);

    // Created but not preloaded: a different fix.
    pg.admin()
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .unwrap();
    assert!(coll.collect(&mut c).unwrap().is_none());
    assert_eq!(coll.availability(), &Availability::NotLoaded);

    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    sampler.sample(&mut c).unwrap();
    let payloads = sampler.finish_interval();
    assert_eq!(payloads[0].source, Source::PgStatActivity);
    assert_eq!(num(&payloads[0].data, "n_samples"), 1.0);

    let mut host = HostCollector::new();
    let watched = [WatchedPath {
        label: "data_directory".into(),
        path: pg.data_dir(),
    }];
    assert!(host.collect(&watched).is_none());
    assert!(host.collect(&watched).is_some());
}

#[test]
fn host_metrics_are_sane_and_include_the_data_directory() {
    let pg = TestPg::start();
    let mut host = HostCollector::new();
    let watched = [
        WatchedPath {
            label: "data_directory".into(),
            path: pg.data_dir(),
        },
        WatchedPath {
            label: "wal".into(),
            path: pg.data_dir().join("pg_wal"),
        },
    ];
    assert!(
        host.collect(&watched).is_none(),
        "first call is the baseline"
    );
    // Some work so the counters move.
    pg.admin()
        .batch_execute("CREATE TABLE w AS SELECT g FROM generate_series(1, 20000) g")
        .unwrap();
    let d = host.collect(&watched).unwrap();
    assert_no_negative(&d, "system_metrics");
    let cpu = d.get("cpu").unwrap();
    for k in ["percent", "user", "system", "iowait", "steal", "idle"] {
        let v = num(cpu, k);
        assert!((0.0..=100.0).contains(&v), "cpu.{k} = {v}");
    }
    assert!(num(cpu, "count") >= 1.0);
    let mem = d.get("memory").unwrap();
    assert!(num(mem, "total") > 0.0);
    assert!(num(mem, "available") <= num(mem, "total"));
    assert!((0.0..=100.0).contains(&num(mem, "percent")));
    assert!(d.get("swap").is_some());
    assert_eq!(array(&d, "load_average").len(), 3);
    assert!(d.get("disk_io").unwrap().get("devices").is_some());
    assert!(!array(d.get("network_io").unwrap(), "interfaces").is_empty());
    let usage = array(&d, "disk_usage");
    assert_eq!(usage.len(), 2);
    for u in usage {
        assert!(num(u, "total") > 0.0, "{}", u.to_json_string());
        assert!((0.0..=100.0).contains(&num(u, "percent")));
    }
    assert!(Path::new(string(&usage[0], "path")).ends_with("data"));
    assert!(d.get("errors").is_none(), "{}", d.to_json_string());
}

#[test]
fn the_monitor_role_script_is_idempotent_and_limits_the_role() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/monitor-role.sql"))
            .unwrap();
    admin.batch_execute(&script).unwrap();
    admin.batch_execute(&script).unwrap();
    let row = admin
        .query_one(
            "SELECT rolsuper, rolconnlimit, pg_has_role('bitville_monitor', 'pg_monitor', 'member') \
             FROM pg_roles WHERE rolname = 'bitville_monitor'",
            &[],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), 5);
    assert!(row.get::<_, bool>(2));
    // The collectors still work as that role after the script ran.
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let _other = app_session(&pg, "someone-else");
    sampler.sample(&mut c).unwrap();
    let state = TempDir::new("pgss-role");
    let mut coll = StatementsCollector::new(StatementsConfig::new(state.path()));
    assert!(coll.collect(&mut c).unwrap().is_none());
    assert!(coll.collect(&mut c).unwrap().is_some());
}

#[test]
fn parallel_workers_fold_into_their_leader() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE par AS SELECT g FROM generate_series(1, 2000) g; ANALYZE par;")
        .unwrap();
    let mut app = app_session(&pg, &format!("bitville-{UUID}"));
    app.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; \
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2",
    )
    .unwrap();
    let plan: Vec<String> = app
        .query(
            "EXPLAIN SELECT count(*) FROM par WHERE pg_sleep(0.002) IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Gather")), "{plan:?}");
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        app.query_one(
            "SELECT count(*) FROM par WHERE pg_sleep(0.002) IS NOT NULL",
            &[],
        )
        .unwrap();
        tx.send(()).unwrap();
    });
    sample_until_done(&mut sampler, &pool, &rx);
    worker.join().unwrap();
    let payloads = sampler.finish_interval();
    let sessions = array(&payloads[0].data, "sessions");
    assert!(
        sessions
            .iter()
            .all(|s| s.get("backend_type") != Some(&Json::Str("parallel worker".into()))),
        "{}",
        payloads[0].data.to_json_string()
    );
    let leader = sessions
        .iter()
        .find(|s| s.get("correlation_id") == Some(&Json::Str(UUID.into())))
        .unwrap();
    assert!(
        num(leader, "parallel_worker_samples") >= 1.0,
        "{}",
        leader.to_json_string()
    );
}

#[test]
fn executions_over_the_cap_are_counted_not_kept() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let cfg = ActivityConfig {
        max_executions: 2,
        ..ActivityConfig::default()
    };
    let mut sampler = ActivitySampler::new(cfg);
    let mut c = pool.acquire().unwrap();
    let mut app = app_session(&pg, "app");
    for _ in 0..8 {
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            app.batch_execute("SELECT pg_sleep(0.3)").unwrap();
            tx.send(app).unwrap();
        });
        // Sample until the sleep is seen, then let it finish: one execution each round.
        while {
            let st = sampler.sample(&mut c).unwrap();
            st.n_rows == st.n_background
        } {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sampler.n_executions() <= 4, "memory stays bounded");
        app = rx.recv().unwrap();
        worker.join().unwrap();
    }
    let payloads = sampler.finish_interval();
    let data = &payloads[0].data;
    let seen = num(data, "n_executions_seen");
    assert!(seen >= 8.0, "{}", data.to_json_string());
    assert_eq!(num(data, "count"), 2.0);
    assert_eq!(num(data, "n_left_out"), seen - 2.0);
    assert_eq!(array(data, "sessions").len(), 2);
}

#[test]
fn an_entry_dropped_and_recreated_is_marked_with_its_new_counts() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("pgss-readd");
    let mut app = app_session(&pg, "app");
    let mut admin = pg.admin();
    run_workload(&mut app, 10);
    let mut coll = StatementsCollector::new(StatementsConfig::new(state.path()));
    let mut c = pool.acquire().unwrap();
    assert!(coll.collect(&mut c).unwrap().is_none());

    // Drop only this entry (what eviction does), then run it again: fewer calls than the baseline.
    let row = admin
        .query_one(
            "SELECT userid, dbid, queryid FROM pg_stat_statements WHERE query LIKE '%relpages >%'",
            &[],
        )
        .unwrap();
    let (userid, dbid, queryid): (u32, u32, i64) = (row.get(0), row.get(1), row.get(2));
    admin
        .execute(
            "SELECT pg_stat_statements_reset($1, $2, $3)",
            &[&userid, &dbid, &queryid],
        )
        .unwrap();
    run_workload(&mut app, 3);
    let p = coll.collect(&mut c).unwrap().unwrap();
    let e = workload_entry(&p);
    assert_eq!(num(e, "calls"), 3.0);
    // PG17+ tells a re-added entry by its stats_since; before, its counters went backwards.
    let expected = if pg.major_version() >= 17 {
        "readded"
    } else {
        "reset"
    };
    assert_eq!(string(e, "status"), expected, "{}", e.to_json_string());
    assert_no_negative(&p.data, "data");
}

#[test]
fn a_stale_or_unwritable_baseline_never_costs_data() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let mut app = app_session(&pg, "app");
    let mut c = pool.acquire().unwrap();

    // A persisted baseline older than max_baseline_age is not subtracted from.
    let state = TempDir::new("pgss-stale");
    let mut first = StatementsCollector::new(StatementsConfig::new(state.path()));
    assert!(first.collect(&mut c).unwrap().is_none());
    drop(first);
    let mut cfg = StatementsConfig::new(state.path());
    cfg.max_baseline_age = Duration::ZERO;
    let mut stale = StatementsCollector::new(cfg);
    run_workload(&mut app, 5);
    assert!(stale.collect(&mut c).unwrap().is_none(), "new baseline");

    // A state directory that cannot be written: the error names the file, the deltas still ship.
    let blocker = TempDir::new("pgss-unwritable");
    let file = blocker.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut coll = StatementsCollector::new(StatementsConfig::new(file.join("state")));
    let err = coll.collect(&mut c).unwrap_err();
    assert_eq!(err.collector(), "statements");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    run_workload(&mut app, 7);
    let p = coll
        .collect(&mut c)
        .unwrap()
        .expect("deltas despite the disk");
    assert_eq!(num(workload_entry(&p), "calls"), 7.0);
    let errors = array(&p.data, "errors");
    assert_eq!(string(&errors[0], "collector"), "statements");
}
