//! The log events that explain a spike, from a real PostgreSQL (`log_temp_files = 0`,
//! `log_lock_waits = on`, `deadlock_timeout = 100ms`, `log_checkpoints = on`,
//! `log_autovacuum_min_duration = 0`, `log_connections = on`): a spilled sort, a lock wait with
//! its blocker, a deadlock, a lock timeout, a statement timeout, a checkpoint and an autovacuum
//! each arrive classified with their figures through the real tailer and feed, per-class counts
//! travel with them, and the agent's own session's lines are counted apart, never shipped. A
//! statement burst far over `log_max_entries_per_minute` still ships every event.

mod common;

use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::logtail::tail::{TailConfig, Tailer};
use bitville_pg_agent::logtail::{EntryParser, FeedConfig, LogFeed};
use common::logs::{discovered, session};
use common::{TempDir, TestPg};

fn server(destination: &str) -> TestPg {
    TestPg::builder()
        .setting("logging_collector", "on")
        .setting("log_destination", destination)
        .setting("log_directory", "log")
        .setting("log_filename", "postgresql-%Y%m%d-%H%M%S.log")
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .setting("log_rotation_age", "0")
        .setting("log_rotation_size", "0")
        .setting("lc_messages", "C")
        .setting("log_temp_files", "0")
        .setting("log_lock_waits", "on")
        .setting("deadlock_timeout", "100ms")
        .setting("log_checkpoints", "on")
        .setting("log_autovacuum_min_duration", "0")
        .setting("autovacuum_naptime", "1s")
        .setting("log_connections", "on")
        .start()
}

/// Every `event` object of every entry in the payloads.
fn events(payloads: &[Json]) -> Vec<Json> {
    let mut out = Vec::new();
    for p in payloads {
        if let Some(Json::Array(entries)) = p.get("entries") {
            for e in entries {
                if let Some(ev) = e.get("event") {
                    out.push(ev.clone());
                }
            }
        }
    }
    out
}

fn class_of(ev: &Json) -> &str {
    match ev.get("class") {
        Some(Json::Str(s)) => s,
        _ => "",
    }
}

fn num(ev: &Json, k: &str) -> f64 {
    match ev.get(k) {
        Some(Json::Float(f)) => *f,
        Some(Json::UInt(u)) => *u as f64,
        Some(Json::Int(i)) => *i as f64,
        other => panic!("{k} is {other:?} in {}", ev.to_json_string()),
    }
}

fn run(destination: &str) {
    let pg = server(destination);
    let src = discovered(&pg);
    let state = TempDir::new("logtail-events");
    let mut cfg = TailConfig::new(src.follow.clone(), Some(state.path().to_path_buf()));
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let tailer = Tailer::new(cfg, EntryParser::new(src.format, &src.prefix));
    let mut feed = LogFeed::new(
        tailer,
        FeedConfig {
            interval: Duration::ZERO,
            ..FeedConfig::default()
        },
        Instant::now(),
    );
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "CREATE TABLE acct(id int PRIMARY KEY, v int); \
             INSERT INTO acct SELECT g, 0 FROM generate_series(1, 10) g; \
             CREATE TABLE churn(id int, pad text) WITH (autovacuum_vacuum_threshold = 1, \
               autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1, \
               autovacuum_analyze_scale_factor = 0); \
             INSERT INTO churn SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g; \
             DELETE FROM churn WHERE id % 2 = 0",
        )
        .unwrap();

    // A spilled sort.
    let mut a = session(&pg, "app-a");
    a.batch_execute(
        "SET work_mem = '64kB'; \
         SELECT count(*) FROM (SELECT g FROM generate_series(1, 100000) g ORDER BY g DESC OFFSET 1) s",
    )
    .unwrap();

    // A lock wait: b waits for a's row lock for ~400 ms.
    let (host, port) = (pg.socket_dir().to_str().unwrap().to_string(), pg.port());
    let connect = move |app: &str| {
        postgres::Config::new()
            .host(&host)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name(app)
            .connect(postgres::NoTls)
            .unwrap()
    };
    a.batch_execute("BEGIN; UPDATE acct SET v = 1 WHERE id = 1")
        .unwrap();
    let c2 = connect.clone();
    let waiter = std::thread::spawn(move || {
        let mut b = c2("app-b");
        b.batch_execute("UPDATE acct SET v = 2 WHERE id = 1")
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(400));
    a.batch_execute("COMMIT").unwrap();
    waiter.join().unwrap();

    // A deadlock between a and b.
    a.batch_execute("BEGIN; UPDATE acct SET v = 3 WHERE id = 2")
        .unwrap();
    let c3 = connect.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let mut b = c3("app-b");
        b.batch_execute("BEGIN; UPDATE acct SET v = 4 WHERE id = 3")
            .unwrap();
        tx.send(()).unwrap();
        let r = b.batch_execute("UPDATE acct SET v = 4 WHERE id = 2");
        let _ = b.batch_execute("ROLLBACK");
        r.is_err()
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mine_failed = a
        .batch_execute("UPDATE acct SET v = 3 WHERE id = 3")
        .is_err();
    let _ = a.batch_execute("ROLLBACK");
    let other_failed = other.join().unwrap();
    assert!(
        mine_failed || other_failed,
        "one side of the deadlock fails"
    );

    // A lock timeout and a statement timeout.
    a.batch_execute("BEGIN; UPDATE acct SET v = 5 WHERE id = 4")
        .unwrap();
    let mut b = connect("app-b");
    assert!(b
        .batch_execute("SET lock_timeout = '50ms'; UPDATE acct SET v = 6 WHERE id = 4")
        .is_err());
    a.batch_execute("ROLLBACK").unwrap();
    assert!(b
        .batch_execute("SET statement_timeout = '50ms'; SELECT pg_sleep(2)")
        .is_err());

    // A checkpoint.
    admin.batch_execute("CHECKPOINT").unwrap();

    // The agent's own session: its lines are counted apart.
    let mut own = session(&pg, "bitville-monitor");
    assert!(own
        .batch_execute("SELECT * FROM own_session_marker_table")
        .is_err());

    let mut payloads: Vec<Json> = Vec::new();
    let wanted = [
        "temp_file",
        "lock_wait",
        "lock_acquired",
        "deadlock",
        "lock_timeout",
        "statement_timeout",
        "checkpoint_starting",
        "checkpoint_complete",
        "autovacuum",
        "connection_authorized",
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = Instant::now();
        let fl = match feed.poll(now) {
            Some(f) => f,
            None => feed.flush(now),
        };
        payloads.extend(fl.payloads.iter().map(|p| p.data.clone()));
        feed.commit(&fl).unwrap();
        let got = events(&payloads);
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !got.iter().any(|e| class_of(e) == *w))
            .collect();
        let churn_vacuumed = got.iter().any(|e| {
            class_of(e) == "autovacuum"
                && matches!(e.get("table"), Some(Json::Str(t)) if t.ends_with("churn"))
        });
        if missing.is_empty() && churn_vacuumed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never arrived: {missing:?} (churn vacuumed: {churn_vacuumed}); got {:?}",
            got.iter().map(class_of).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = events(&payloads);
    let first = |class: &str| -> &Json { got.iter().find(|e| class_of(e) == class).unwrap() };

    let temp = first("temp_file");
    assert!(
        num(temp, "size_bytes") > 64.0 * 1024.0,
        "{}",
        temp.to_json_string()
    );
    let wait = got
        .iter()
        .find(|e| class_of(e) == "lock_wait" && e.get("blocker_pids").is_some())
        .expect("a lock wait with its blocker");
    assert!(num(wait, "wait_ms") >= 100.0);
    assert_eq!(wait.get("lock_mode"), Some(&Json::from("ShareLock")));
    assert!(matches!(wait.get("blocker_pids"), Some(Json::Array(p)) if p.len() == 1));
    assert!(num(first("lock_acquired"), "wait_ms") >= 100.0);
    let deadlock = got
        .iter()
        .find(|e| class_of(e) == "deadlock" && e.get("stage") == Some(&Json::from("error")))
        .expect("the deadlock error");
    assert!(matches!(deadlock.get("processes"), Some(Json::Array(p)) if p.len() == 2));
    let cp = got
        .iter()
        .find(|e| {
            class_of(e) == "checkpoint_starting"
                // PG18 calls an immediate checkpoint "fast".
                && matches!(e.get("reason"), Some(Json::Str(r)) if r.contains("immediate") || r.contains("fast"))
        })
        .expect("the CHECKPOINT's start");
    let _ = cp;
    let done = first("checkpoint_complete");
    num(done, "buffers");
    num(done, "total_s");
    let vac = got
        .iter()
        .find(|e| {
            class_of(e) == "autovacuum"
                && matches!(e.get("table"), Some(Json::Str(t)) if t.ends_with("churn"))
        })
        .expect("the autovacuum of churn");
    assert!(
        num(vac, "tuples_removed") >= 2500.0,
        "{}",
        vac.to_json_string()
    );
    num(vac, "elapsed_s");

    // Counts per class travel in the summaries; the own session is counted, not shipped.
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    let mut own_entries = 0;
    for p in &payloads {
        if let Some(Json::Object(c)) = p.get("event_counts") {
            for (k, v) in c {
                if let Json::UInt(n) = v {
                    *counted.entry(k.to_string()).or_default() += n;
                }
            }
        }
        if let Some(Json::UInt(n)) = p.get("own_entries").and_then(|o| o.get("entries")) {
            own_entries += n;
        }
    }
    for w in wanted {
        assert!(
            counted.get(w).is_some_and(|n| *n >= 1),
            "{w} not counted: {counted:?}"
        );
    }
    assert!(own_entries >= 1);
    let all: String = payloads.iter().map(Json::to_json_string).collect();
    assert!(!all.contains("own_session_marker_table"));
    assert!(!all.contains("\"application_name\":\"bitville-monitor\""));
}

#[test]
fn stderr_events_arrive_classified_with_their_figures() {
    run("stderr");
}

#[test]
fn csvlog_events_arrive_classified_with_their_figures() {
    run("csvlog");
}

#[test]
fn jsonlog_events_arrive_classified_with_their_figures_on_pg15_and_later() {
    let probe = TestPg::start();
    let major = probe.major_version();
    drop(probe);
    if major < 15 {
        // jsonlog does not exist before PostgreSQL 15.
        assert!(major >= 12);
        return;
    }
    run("jsonlog");
}

/// A burst of statements far over the budget (`log_min_duration_statement = 0`): every
/// checkpoint, temp-file and lock-wait event of that interval is still shipped, and the plain
/// statements beyond the budget are only counted.
#[test]
fn a_statement_burst_over_the_budget_still_ships_every_event() {
    let pg = TestPg::builder()
        .setting("logging_collector", "on")
        .setting("log_destination", "stderr")
        .setting("log_directory", "log")
        .setting("log_filename", "postgresql-%Y%m%d-%H%M%S.log")
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .setting("log_rotation_age", "0")
        .setting("log_rotation_size", "0")
        .setting("lc_messages", "C")
        .setting("log_min_duration_statement", "0")
        .setting("log_temp_files", "0")
        .setting("log_lock_waits", "on")
        .setting("deadlock_timeout", "100ms")
        .setting("log_checkpoints", "on")
        .start();
    let src = discovered(&pg);
    let state = TempDir::new("logtail-burst");
    let mut cfg = TailConfig::new(src.follow.clone(), Some(state.path().to_path_buf()));
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let mut feed = LogFeed::new(
        Tailer::new(cfg, EntryParser::new(src.format, &src.prefix)),
        FeedConfig {
            interval: Duration::from_secs(3600),
            max_entries_per_interval: 100,
            ..FeedConfig::default()
        },
        Instant::now(),
    );
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "CREATE TABLE acct(id int PRIMARY KEY, v int); INSERT INTO acct VALUES (1, 0)",
        )
        .unwrap();
    let mut c = session(&pg, "burst");
    let mut n_checkpoints = 0;
    let mut n_temp = 0;
    for round in 0..5 {
        for i in 0..400 {
            c.batch_execute(&format!("SELECT {i}")).unwrap();
        }
        c.batch_execute(
            "SET work_mem = '64kB'; \
             SELECT count(*) FROM (SELECT g FROM generate_series(1, 50000) g ORDER BY g DESC OFFSET 1) s",
        )
        .unwrap();
        n_temp += 1;
        if round % 2 == 0 {
            admin.batch_execute("CHECKPOINT").unwrap();
            n_checkpoints += 1;
        }
    }
    // One lock wait in the middle of more statements.
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
            .application_name("burst-b")
            .connect(postgres::NoTls)
            .unwrap();
        b.batch_execute("UPDATE acct SET v = 2 WHERE id = 1")
            .unwrap();
    });
    for i in 0..400 {
        c.batch_execute(&format!("SELECT {i}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    admin.batch_execute("COMMIT").unwrap();
    waiter.join().unwrap();
    assert!(c.batch_execute("SELECT * FROM end_of_burst").is_err());

    let mut payloads: Vec<Json> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = Instant::now();
        let _ = feed.poll(now);
        let fl = feed.flush(now);
        payloads.extend(fl.payloads.iter().map(|p| p.data.clone()));
        feed.commit(&fl).unwrap();
        let all: String = payloads.iter().map(Json::to_json_string).collect();
        if all.contains("end_of_burst") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the end of the burst never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = events(&payloads);
    let count = |class: &str| got.iter().filter(|e| class_of(e) == class).count();
    let mut raw = String::new();
    for f in std::fs::read_dir(pg.data_dir().join("log")).unwrap() {
        raw.push_str(&String::from_utf8_lossy(
            &std::fs::read(f.unwrap().path()).unwrap(),
        ));
    }
    let logged = |what: &str| raw.matches(what).count();
    // Every event the server logged was shipped, however far over the budget the burst went.
    assert!(logged("LOG:  temporary file: ") >= n_temp);
    assert_eq!(count("temp_file"), logged("LOG:  temporary file: "));
    assert!(logged("LOG:  checkpoint starting: ") >= n_checkpoints);
    assert_eq!(
        count("checkpoint_starting"),
        logged("LOG:  checkpoint starting: ")
    );
    assert_eq!(
        count("checkpoint_complete"),
        logged("LOG:  checkpoint complete: ")
    );
    assert_eq!(count("lock_wait"), logged(" still waiting for "));
    assert!(count("lock_wait") >= 1 && count("lock_acquired") >= 1);
    let over: u64 = payloads
        .iter()
        .filter_map(
            |p| match p.get("over_budget").and_then(|o| o.get("entries")) {
                Some(Json::UInt(n)) => Some(*n),
                _ => None,
            },
        )
        .sum();
    assert!(
        over > 2000,
        "the burst was mostly counted, not shipped: {over}"
    );
}
