//! auto_explain plans linked to their requests, from a real PostgreSQL (csvlog, auto_explain with
//! `log_format = json`, `log_analyze` with `log_timing = off`, `log_buffers`, `log_temp_files =
//! 0`, `log_lock_waits`): the plan of a correlated slow query with a spilled sort arrives on its
//! statement in the request's record (`statements[].plan` as a JSON object, `plan_summary` saying
//! it spilled, `events` with the temp file), with no literal in it; a request that waited for a
//! lock says so on its statement; and on PG14+ the plan store holds the latest plan under the
//! `query_id` pg_stat_statements reports for that statement, and the statements collector ships it
//! on that statement's row.

mod common;

use std::time::{Duration, Instant};

use bitville_pg_agent::collect::statements::{StatementsCollector, StatementsConfig};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::logtail::tail::{TailConfig, Tailer};
use bitville_pg_agent::logtail::{EntryParser, FeedConfig, LogFeed, PlanStore};
use common::logs::{discovered, session};
use common::{TempDir, TestPg};

const UUID_A: &str = "5f0c6a1e-8d2b-4c3a-9e7f-0123456789aa";
const UUID_B: &str = "5f0c6a1e-8d2b-4c3a-9e7f-0123456789bb";

fn server(major: u32) -> TestPg {
    let mut b = TestPg::builder()
        .setting(
            "shared_preload_libraries",
            "pg_stat_statements,auto_explain",
        )
        .setting("auto_explain.log_min_duration", "0")
        .setting("auto_explain.log_analyze", "on")
        .setting("auto_explain.log_timing", "off")
        .setting("auto_explain.log_buffers", "on")
        .setting("auto_explain.log_format", "json")
        .setting("logging_collector", "on")
        .setting("log_destination", "csvlog")
        .setting("log_directory", "log")
        .setting("log_filename", "postgresql-%Y%m%d-%H%M%S.log")
        .setting("log_rotation_age", "0")
        .setting("log_rotation_size", "0")
        .setting("log_min_duration_statement", "0")
        .setting("log_temp_files", "0")
        .setting("log_lock_waits", "on")
        .setting("deadlock_timeout", "100ms")
        .setting("lc_messages", "C");
    if major >= 14 {
        b = b.setting("compute_query_id", "on");
    }
    b.start()
}

fn raw_log(pg: &TestPg) -> String {
    let mut all = String::new();
    for f in std::fs::read_dir(pg.data_dir().join("log")).unwrap() {
        all.push_str(&String::from_utf8_lossy(
            &std::fs::read(f.unwrap().path()).unwrap(),
        ));
    }
    all
}

fn statements<'a>(payloads: &'a [(Option<String>, Json)], id: &str) -> Vec<&'a Json> {
    payloads
        .iter()
        .filter(|(c, _)| c.as_deref() == Some(id))
        .filter_map(|(_, d)| match d.get("statements") {
            Some(Json::Array(s)) => Some(s.iter()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn has_event(stmt: &Json, class: &str) -> Option<Json> {
    match stmt.get("events") {
        Some(Json::Array(evs)) => evs
            .iter()
            .find(|e| e.get("class") == Some(&Json::from(class)))
            .cloned(),
        _ => None,
    }
}

#[test]
fn the_plan_of_a_correlated_slow_query_arrives_on_its_statement_without_literals() {
    let probe = TestPg::start();
    let major = probe.major_version();
    drop(probe);
    let pg = server(major);
    pg.admin()
        .batch_execute(
            "CREATE TABLE acct(id int PRIMARY KEY, v int); INSERT INTO acct VALUES (1, 0)",
        )
        .unwrap();
    let src = discovered(&pg);
    let store = PlanStore::default();
    let stmt_state = TempDir::new("logtail-plans-statements");
    let mut stmt_cfg = StatementsConfig::new(stmt_state.path());
    stmt_cfg.plans = Some(store.clone());
    let mut statements_collector = StatementsCollector::new(stmt_cfg);
    let mut monitor = pg.admin();
    assert!(
        statements_collector
            .collect(&mut monitor)
            .unwrap()
            .is_none(),
        "the first interval is the baseline"
    );

    // Request A: a sort that spills (work_mem 64kB), with a literal in it.
    let mut a = session(&pg, &format!("bitville-{UUID_A}"));
    a.batch_execute("SET work_mem = '64kB'").unwrap();
    a.batch_execute(
        "SELECT g, 'SECRETplan' AS s FROM generate_series(1, 100000) g ORDER BY g DESC OFFSET 99999",
    )
    .unwrap();
    // Request B: waits ~300 ms for a row lock held by the admin session.
    let mut admin = pg.admin();
    admin
        .batch_execute("BEGIN; UPDATE acct SET v = 1 WHERE id = 1")
        .unwrap();
    let (host, port) = (pg.socket_dir().to_str().unwrap().to_string(), pg.port());
    let waiter = std::thread::spawn(move || {
        let mut b = postgres::Config::new()
            .host(&host)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name(&format!("bitville-{UUID_B}"))
            .connect(postgres::NoTls)
            .unwrap();
        b.batch_execute("UPDATE acct SET v = 424242 WHERE id = 1")
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    admin.batch_execute("COMMIT").unwrap();
    waiter.join().unwrap();
    assert!(a.batch_execute("SELECT * FROM end_of_plans_run").is_err());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !raw_log(&pg).contains("end_of_plans_run") {
        assert!(Instant::now() < deadline, "the server never logged the end");
        std::thread::sleep(Duration::from_millis(50));
    }

    let state = TempDir::new("logtail-plans");
    let mut cfg = TailConfig::new(src.follow.clone(), Some(state.path().to_path_buf()));
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let mut feed = LogFeed::new(
        Tailer::new(cfg, EntryParser::new(src.format, &src.prefix)),
        FeedConfig {
            interval: Duration::from_secs(3600),
            ..FeedConfig::default()
        },
        Instant::now(),
    )
    .with_plan_store(store.clone());
    let now = Instant::now();
    let _ = feed.poll(now);
    let fl = feed.flush(now);
    let payloads: Vec<(Option<String>, Json)> = fl
        .payloads
        .iter()
        .map(|p| (p.correlation_id.clone(), p.data.clone()))
        .collect();
    let all: String = payloads.iter().map(|(_, d)| d.to_json_string()).collect();
    assert!(
        !all.contains("SECRETplan") && !all.contains("424242"),
        "a literal shipped"
    );

    let sorted = statements(&payloads, UUID_A)
        .into_iter()
        .find(|s| matches!(s.get("query"), Some(Json::Str(q)) if q.contains("ORDER BY g DESC")))
        .expect("request A's slow statement");
    let text = sorted.to_json_string();
    let plan = sorted.get("plan").expect("a plan on the statement");
    assert!(matches!(plan, Json::Object(_)), "a JSON object: {text}");
    assert_eq!(sorted.get("plan_format"), Some(&Json::from("json")));
    assert!(text.contains(r#""Node Type":"Sort""#), "{text}");
    let summary = sorted.get("plan_summary").expect("plan_summary");
    assert_eq!(summary.get("spilled"), Some(&Json::Bool(true)), "{text}");
    let temp = has_event(sorted, "temp_file").expect("the temp file on its statement");
    assert!(matches!(temp.get("size_bytes"), Some(Json::Float(s)) if *s > 65536.0));
    assert_eq!(
        sorted.get("query"),
        Some(&Json::from(
            "SELECT g, ? AS s FROM generate_series(?, ?) g ORDER BY g DESC OFFSET ?"
        ))
    );

    let update = statements(&payloads, UUID_B)
        .into_iter()
        .find(|s| matches!(s.get("query"), Some(Json::Str(q)) if q.starts_with("UPDATE acct")))
        .expect("request B's update");
    let wait = has_event(update, "lock_wait").expect("the lock wait on its statement");
    assert!(matches!(wait.get("wait_ms"), Some(Json::Float(w)) if *w >= 100.0));
    assert!(matches!(wait.get("blocker_pids"), Some(Json::Array(p)) if p.len() == 1));
    assert!(matches!(update.get("duration_ms"), Some(Json::Float(d)) if *d >= 250.0));

    if major >= 14 {
        // The statements collector finds the plan under pg_stat_statements' queryid.
        let qid: i64 = pg
            .admin()
            .query_one(
                "SELECT queryid FROM pg_stat_statements WHERE query LIKE '%ORDER BY g DESC%' LIMIT 1",
                &[],
            )
            .unwrap()
            .get(0);
        let stored = store.latest(qid).expect("the plan under its query_id");
        assert_eq!(stored.summary.get("spilled"), Some(&Json::Bool(true)));
        assert!(!stored.plan.to_json_string().contains("SECRETplan"));
        assert_eq!(sorted.get("query_id"), Some(&Json::Int(qid)));
        // The statements collector attaches it to the row of that queryid.
        let p = statements_collector
            .collect(&mut monitor)
            .unwrap()
            .expect("a delta payload");
        let Some(Json::Array(rows)) = p.data.get("statements") else {
            panic!("no statements in {}", p.data.to_json_string())
        };
        let row = rows
            .iter()
            .find(|r| r.get("queryid") == Some(&Json::from(qid.to_string())))
            .expect("the sort's row");
        assert_eq!(row.get("plan_format"), Some(&Json::from("json")));
        assert!(matches!(row.get("plan"), Some(Json::Object(_))));
        assert_eq!(
            row.get("plan_summary").and_then(|s| s.get("spilled")),
            Some(&Json::Bool(true))
        );
        assert!(!p.data.to_json_string().contains("SECRETplan"));
    }
}
