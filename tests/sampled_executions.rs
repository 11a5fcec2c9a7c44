//! What the activity sampler records per execution, against a real PostgreSQL: a CPU-bound
//! query seen in a single sample is charged its CPU (from the backend's last reading to the
//! first sample after it ended, never a false 0); the `query_id` of a sampled execution is the
//! `queryid` of its pg_stat_statements delta row (PostgreSQL 14+; null before, and said so);
//! background processes (the checkpointer during a forced CHECKPOINT) join the summary with their
//! `backend_type`, never correlated.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use bitville_pg_agent::collect::activity::{
    query_id_status, ActivityConfig, ActivitySampler, QueryIdStatus, QUERY_ID_SINCE,
};
use bitville_pg_agent::collect::procfs::{clock_ticks_per_sec, parse_stat};
use bitville_pg_agent::collect::statements::{StatementsCollector, StatementsConfig};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::Payload;
use bitville_pg_agent::pool::Pool;
use common::logs::session;
use common::{TempDir, TestPg};

const ID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

fn array<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    match v.get(key) {
        Some(Json::Array(a)) => a,
        other => panic!("{key}: {other:?}"),
    }
}

fn num(v: &Json, key: &str) -> Option<f64> {
    match v.get(key) {
        Some(Json::Float(f)) => Some(*f),
        Some(Json::Int(i)) => Some(*i as f64),
        Some(Json::UInt(u)) => Some(*u as f64),
        _ => None,
    }
}

fn with_id<'a>(summary: &'a Payload, id: &str) -> &'a Json {
    array(&summary.data, "sessions")
        .iter()
        .find(|s| s.get("correlation_id") == Some(&Json::Str(id.into())))
        .unwrap_or_else(|| panic!("no {id} in {}", summary.data.to_json_string()))
}

/// utime + stime of `pid` in ms, read as the test's own ground truth.
fn cpu_ms_of(pid: i32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    parse_stat(text.as_bytes()).unwrap().cpu_ticks as f64 * 1000.0 / clock_ticks_per_sec() as f64
}

#[test]
fn a_cpu_bound_query_seen_in_one_sample_is_charged_its_cpu() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut c = pool.acquire().unwrap();
    sampler.sample(&mut c).unwrap();
    // A backend that connects after that sample, as a PHP request does.
    let mut app = session(&pg, &format!("bitville-{ID}"));
    let pid: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let before = cpu_ms_of(pid);
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        // CPU-bound for 1.5 s of server time: a sum over a series until the clock says stop.
        app.query_one(
            "WITH RECURSIVE spin(n) AS (SELECT 1::bigint UNION ALL SELECT n + 1 FROM spin \
             WHERE clock_timestamp() < statement_timestamp() + interval '1.5 seconds') \
             SELECT sum(n) FROM spin",
            &[],
        )
        .unwrap();
        tx.send(t0.elapsed()).unwrap();
        app
    });
    std::thread::sleep(Duration::from_millis(700));
    // The only sample that sees it running.
    sampler.sample(&mut c).unwrap();
    let elapsed = rx.recv().unwrap();
    let _app = worker.join().unwrap();
    let truth = cpu_ms_of(pid) - before;
    // The first sample after it ended.
    sampler.sample(&mut c).unwrap();
    let out = sampler.finish_interval();
    let e = with_id(&out[0], ID);
    assert_eq!(num(e, "n_samples"), Some(1.0), "{}", e.to_json_string());
    let cpu = num(e, "cpu_ms").unwrap_or_else(|| panic!("null: {}", e.to_json_string()));
    let duration = elapsed.as_secs_f64() * 1000.0;
    eprintln!("cpu_ms {cpu}, process CPU {truth} ms, duration {duration} ms");
    // What the backend really spent (on a busy machine a 1.5 s query may get less than 1.5 s
    // of CPU); at least half its duration whenever it got that much.
    assert!(
        cpu >= 0.8 * truth && cpu >= (0.5 * duration).min(0.8 * truth),
        "cpu_ms {cpu} for {truth} ms of process CPU, {duration} ms long"
    );
    assert_eq!(e.get("cpu_partial"), Some(&Json::Bool(false)));
    // The correlated record carries the same figure.
    let rec = out
        .iter()
        .find(|p| p.correlation_id.as_deref() == Some(ID))
        .expect("a record");
    assert_eq!(num(&rec.data, "cpu_ms"), Some(cpu));
}

#[test]
fn query_id_of_a_sampled_execution_is_its_pg_stat_statements_queryid() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("qid-state");
    let mut coll = StatementsCollector::new(StatementsConfig::new(state.path()));
    let mut c = pool.acquire().unwrap();
    assert!(coll.collect(&mut c).unwrap().is_none(), "baseline");
    let version = bitville_pg_agent::collect::server_version_num(&mut c, "test").unwrap();
    let status = query_id_status(&mut c).unwrap();

    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut app = session(&pg, &format!("bitville-{ID}"));
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        app.batch_execute("SELECT pg_sleep(0.8) AS qid_probe")
            .unwrap();
        tx.send(()).unwrap();
    });
    loop {
        sampler.sample(&mut c).unwrap();
        if rx.try_recv().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    worker.join().unwrap();
    let out = sampler.finish_interval();
    let e = with_id(&out[0], ID);
    let deltas = coll.collect(&mut c).unwrap().expect("a delta");
    let row = array(&deltas.data, "statements")
        .iter()
        .find(|s| matches!(s.get("query"), Some(Json::Str(q)) if q.contains("qid_probe")))
        .unwrap_or_else(|| panic!("no probe in {}", deltas.data.to_json_string()));

    // Neither the sample nor the compute_query_id check leaves an error in the server log.
    let log = std::fs::read_to_string(pg.server_log()).unwrap();
    assert!(
        !log.lines().any(|l| l.contains("ERROR:")),
        "server log has errors:\n{log}"
    );
    if version >= QUERY_ID_SINCE {
        // The harness preloads pg_stat_statements, so `auto` computes query ids.
        assert_eq!(status, QueryIdStatus::On);
        let sampled = match e.get("query_id") {
            Some(Json::Int(q)) => *q,
            other => panic!("query_id {other:?} in {}", e.to_json_string()),
        };
        assert_eq!(
            row.get("queryid"),
            Some(&Json::Str(sampled.to_string())),
            "{}",
            row.to_json_string()
        );
        let rec = out
            .iter()
            .find(|p| p.correlation_id.as_deref() == Some(ID))
            .unwrap();
        assert_eq!(rec.data.get("query_id"), Some(&Json::Int(sampled)));
    } else {
        assert_eq!(e.get("query_id"), Some(&Json::Null));
        assert!(status.problem().unwrap().contains("has no query_id"));
    }
}

#[test]
fn a_forced_checkpoint_shows_the_checkpointer_in_the_summary() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "CREATE TABLE dirty AS SELECT g AS id, repeat('x', 200) AS pad \
             FROM generate_series(1, 200000) g",
        )
        .unwrap();
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut c = pool.acquire().unwrap();
    sampler.sample(&mut c).unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        admin.batch_execute("CHECKPOINT").unwrap();
        tx.send(()).unwrap();
    });
    loop {
        sampler.sample(&mut c).unwrap();
        if rx.try_recv().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    worker.join().unwrap();
    sampler.sample(&mut c).unwrap();
    let out = sampler.finish_interval();
    let summary = &out[0].data;
    let background = array(summary, "background");
    let cp = background
        .iter()
        .find(|b| b.get("backend_type") == Some(&Json::Str("checkpointer".into())))
        .unwrap_or_else(|| panic!("no checkpointer in {}", summary.to_json_string()));
    assert_eq!(cp.get("correlation_id"), Some(&Json::Null));
    assert_eq!(
        cp.get("state"),
        Some(&Json::Str(String::new())),
        "state NULL"
    );
    assert!(num(cp, "cpu_ms").is_some(), "{}", cp.to_json_string());
    if summary
        .get("procfs")
        .and_then(|p| p.get("io_permitted"))
        .is_some_and(|v| *v == Json::Bool(true))
    {
        assert!(
            num(cp, "write_bytes").unwrap_or(0.0) > 0.0,
            "the checkpoint wrote the dirty table: {}",
            cp.to_json_string()
        );
    }
    // Background processes are not client sessions.
    assert!(array(summary, "sessions")
        .iter()
        .all(|s| s.get("backend_type") != Some(&Json::Str("checkpointer".into()))));
}

#[test]
fn without_query_ids_the_agent_says_so_once_with_the_fix() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    let modern = pg.major_version() >= 14;
    if modern {
        admin
            .batch_execute("ALTER SYSTEM SET compute_query_id = off")
            .unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    // The reload reaches new sessions at once; the pool's first connection is one.
    let status = query_id_status(&mut c).unwrap();
    let problem = status.problem().expect("a problem to report");
    if modern {
        assert_eq!(
            status,
            QueryIdStatus::Off {
                setting: "off".into()
            }
        );
        assert!(problem.contains("set compute_query_id = on"), "{problem}");
    } else {
        assert!(problem.contains("has no query_id"), "{problem}");
    }
    drop(c);

    let listener = common::listener::TestListener::start(common::e2e::KEY);
    let rig = common::e2e::Rig::new("qid-off", &pg, &listener.url());
    let out = rig.run(&["--once"], Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    let said = out.stderr.matches(problem.as_str()).count();
    assert_eq!(said, 1, "said once:\n{}", out.stderr);
}
