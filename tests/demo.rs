//! `make demo`: the agent at work against a throwaway PostgreSQL, with a readable summary.
//!
//! A plain program (harness = false) that reuses the integration tests' harness: it starts
//! PostgreSQL with pg_stat_statements and a server log, a listener stand-in that speaks the
//! listener's contract, and the agent with short intervals; it runs a little load (statements, a
//! PHP-style session with a `bitville-<uuid>` application_name, a three-session lock chain),
//! stops the agent with SIGTERM, then prints what reached the listener. Every payload is written
//! to `target/demo/payloads.jsonl`. Everything it started is stopped and removed at the end, also
//! when a step fails.

mod common;

use std::time::Duration;

use common::agent::AgentProcess;
use common::listener::TestListener;
use common::{TempDir, TestPg};
use serde_json::Value;

const UUID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

fn load(pg: &TestPg) -> Vec<std::thread::JoinHandle<()>> {
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g;",
        )
        .unwrap();
    let mut threads = Vec::new();
    // A PHP request: its connection carries the correlation ID.
    let mut php = pg.admin();
    threads.push(std::thread::spawn(move || {
        php.batch_execute(&format!("SET application_name = 'bitville-{UUID}'"))
            .unwrap();
        php.batch_execute("SELECT pg_sleep(2.5)").unwrap();
        for id in 1..50 {
            php.query("SELECT balance FROM accounts WHERE id = $1", &[&id])
                .unwrap();
        }
        php.batch_execute(
            "SELECT count(*) FROM accounts a, accounts b WHERE a.id % 97 = b.id % 89",
        )
        .unwrap();
    }));
    // Steady statements, like an application's.
    let mut app = pg.admin();
    threads.push(std::thread::spawn(move || {
        for i in 0..600 {
            let id = i % 1000 + 1;
            app.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                &[&id],
            )
            .unwrap();
        }
    }));
    // A lock chain: A holds row 1, B holds row 2 and waits for row 1, C waits for row 2.
    let (mut a, mut b, mut c) = (pg.admin(), pg.admin(), pg.admin());
    threads.push(std::thread::spawn(move || {
        a.batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE id = 1001 - 1000; SELECT pg_sleep(4); COMMIT").unwrap();
    }));
    std::thread::sleep(Duration::from_millis(200));
    threads.push(std::thread::spawn(move || {
        b.batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE id = 2; UPDATE accounts SET balance = 0 WHERE id = 1; COMMIT").unwrap();
    }));
    std::thread::sleep(Duration::from_millis(200));
    threads.push(std::thread::spawn(move || {
        c.batch_execute("UPDATE accounts SET balance = 0 WHERE id = 2")
            .unwrap();
    }));
    threads
}

fn main() {
    println!("== bitville-pg-agent demo ==");
    let pg = TestPg::builder()
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .setting("log_min_duration_statement", "1000")
        .setting("log_lock_waits", "on")
        .setting("deadlock_timeout", "200ms")
        .start();
    println!(
        "PostgreSQL {} on port {} (throwaway, in {})",
        pg.major_version(),
        pg.port(),
        pg.dir().display()
    );
    let listener = TestListener::start("demo-key");
    let work = TempDir::new("demo");
    let ini = work.path().join("agent.ini");
    std::fs::write(
        &ini,
        pg.agent_ini(&format!(
            "[collection]\ninterval_s = 3\nsample_interval_ms = 250\nstate_dir = {}\nlog_path = {}\n\
             [listener]\nurl = {}\napi_key = demo-key\nproject_id = demo\nmax_requests_per_minute = 600\n\
             [buffer]\npath = {}\n",
            work.path().join("state").display(),
            pg.server_log().display(),
            listener.url(),
            work.path().join("spool").display()
        )),
    )
    .unwrap();
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    std::thread::sleep(Duration::from_millis(800));
    println!(
        "agent started (pid {}); running load for about 9 s ...",
        agent.pid()
    );
    for t in load(&pg) {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    let status = agent.stop();
    listener.wait_for_stored(1, Duration::from_secs(5));
    println!("agent stopped on SIGTERM: {status}\n");
    let log = agent.log_text();
    println!("-- agent log (first lines) --");
    for line in log.lines().take(8) {
        println!("  {line}");
    }

    let stored = listener.stored();
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("payloads.jsonl");
    std::fs::write(
        &out,
        stored.iter().map(|v| format!("{v}\n")).collect::<String>(),
    )
    .unwrap();
    summarize(&stored);
    println!(
        "\nschema violations at the listener: {}",
        listener.schema_violations().len()
    );
    println!("every payload: {}", out.display());
    assert!(status.success(), "the agent did not exit cleanly");
    assert!(
        listener.schema_violations().is_empty(),
        "{:?}",
        listener.schema_violations()
    );
    assert!(
        !stored.is_empty(),
        "nothing reached the listener; agent log:\n{log}"
    );
}

fn summarize(stored: &[Value]) {
    let count = |src: &str| stored.iter().filter(|v| v["source"] == src).count();
    println!("\n-- what reached the listener --");
    for src in [
        "pg_stat_activity",
        "pg_stat_statements",
        "pg_log",
        "system_metrics",
    ] {
        println!("  {src:<20} {} payloads", count(src));
    }
    let seqs: Vec<u64> = stored
        .iter()
        .filter_map(|v| v["data"]["agent"]["seq"].as_u64())
        .collect();
    println!(
        "  sequence numbers     {} .. {}",
        seqs.iter().min().unwrap_or(&0),
        seqs.iter().max().unwrap_or(&0)
    );

    println!("\n-- correlated with the PHP request bitville-{UUID} --");
    for v in stored.iter().filter(|v| v["correlation_id"] == UUID) {
        println!(
            "  {:<18} {:>9} ms  {}",
            v["source"].as_str().unwrap_or(""),
            v["data"]["duration_ms"]
                .as_f64()
                .map_or("-".into(), |d| format!("{d:.0}")),
            v["data"]["query"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(70)
                .collect::<String>()
        );
    }

    println!("\n-- lock chains seen by the sampler --");
    for v in stored
        .iter()
        .filter(|v| v["source"] == "pg_stat_activity" && v["correlation_id"].is_null())
    {
        if let Some(trees) = v["data"]["locks"]["peak"]["trees"].as_array() {
            for t in trees {
                let chain: Vec<String> = t["sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("pid {} (depth {})", s["pid"], s["depth"]))
                    .collect();
                println!("  root pid {}: {}", t["root_pid"], chain.join(" <- "));
            }
        }
    }

    println!("\n-- busiest statements (per-interval deltas) --");
    let mut rows: Vec<(f64, i64, String)> = stored
        .iter()
        .filter(|v| v["source"] == "pg_stat_statements")
        .flat_map(|v| {
            v["data"]["statements"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|s| {
            (
                s["total_exec_time"].as_f64().unwrap_or(0.0),
                s["calls"].as_i64().unwrap_or(0),
                s["query"].as_str().unwrap_or("").chars().take(60).collect(),
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ms, calls, q) in rows.iter().take(5) {
        println!("  {ms:>9.1} ms {calls:>6} calls  {q}");
    }

    if let Some(v) = stored
        .iter()
        .rev()
        .find(|v| v["source"] == "system_metrics")
    {
        let d = &v["data"];
        println!("\n-- host and agent (last interval) --");
        println!(
            "  cpu {}%  load {}  memory used {}%",
            d["cpu"]["percent"], d["load_average"], d["memory"]["percent"]
        );
        let a = &d["agent"];
        println!(
            "  agent: rss {:.1} MB, cpu {:.3} s in the interval, {:.1} ms in database queries, {} connections",
            a["rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            a["cpu_seconds_interval"].as_f64().unwrap_or(0.0),
            a["db_time_ms_interval"].as_f64().unwrap_or(0.0),
            a["connections_held"]
        );
    }
    let logs: usize = stored
        .iter()
        .filter(|v| v["source"] == "pg_log")
        .map(|v| v["data"]["count"].as_u64().unwrap_or(0) as usize)
        .sum();
    println!("\n-- server log: {logs} entries shipped --");
}
