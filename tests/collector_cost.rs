//! The collectors at scale: a pg_stat_statements cycle over 5,000 entries and the sampler with
//! many active sessions produce correct payloads. Each test also prints the agent CPU the calls
//! took (thread rusage); the figures are read with `--release --nocapture` and never asserted, so
//! a slow machine cannot fail the suite.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::statements::{StatementsCollector, StatementsConfig};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::pool::Pool;
use common::{TempDir, TestPg};

/// CPU time (user + system) of the calling thread, in microseconds.
fn thread_cpu_us() -> u64 {
    // SAFETY: getrusage fills a plain struct; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn num(v: &Json, key: &str) -> f64 {
    match v.get(key) {
        Some(Json::UInt(u)) => *u as f64,
        Some(Json::Int(i)) => *i as f64,
        Some(Json::Float(f)) => *f,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn a_statements_cycle_over_5000_entries_ships_top_n_and_the_rest_as_other() {
    let pg = TestPg::builder()
        .setting("pg_stat_statements.max", "10000")
        .start();
    let mut admin = pg.admin();
    let cols: Vec<String> = (1..=100).map(|i| format!("c{i} int")).collect();
    admin
        .batch_execute(&format!(
            "CREATE TABLE wide ({}); INSERT INTO wide DEFAULT VALUES;",
            cols.join(", ")
        ))
        .unwrap();
    // 50 x 100 distinct column pairs: 5,000 distinct statements (nested, toplevel = false).
    let workload = "DO $$ BEGIN FOR a IN 1..50 LOOP FOR b IN 1..100 LOOP \
                    EXECUTE format('SELECT c%s + c%s FROM wide', a, b); \
                    END LOOP; END LOOP; END $$";
    admin.batch_execute(workload).unwrap();

    let pool = Pool::new(&pg.db_config());
    let state = TempDir::new("pgss-5000");
    let mut coll = StatementsCollector::new(StatementsConfig::new(state.path()));
    let mut c = pool.acquire().unwrap();
    let t0 = thread_cpu_us();
    assert!(coll.collect(&mut c).unwrap().is_none());
    let baseline_us = thread_cpu_us() - t0;

    // Every entry changes: the worst case for the delta and the baseline file.
    admin.batch_execute(workload).unwrap();
    let t0 = thread_cpu_us();
    let p = coll.collect(&mut c).unwrap().unwrap();
    let cycle_us = thread_cpu_us() - t0;
    let t0 = thread_cpu_us();
    let json = p.data.to_json_string();
    let serialize_us = thread_cpu_us() - t0;

    // Again, with the texts of the top entries already known: the steady state of a busy server.
    admin.batch_execute(workload).unwrap();
    let t0 = thread_cpu_us();
    let again = coll.collect(&mut c).unwrap().unwrap();
    let steady_us = thread_cpu_us() - t0;
    assert!(num(&again.data, "n_changed") >= 5000.0);

    assert!(num(&p.data, "n_entries") >= 5000.0);
    assert!(num(&p.data, "n_changed") >= 5000.0);
    assert_eq!(num(&p.data, "count"), 100.0);
    let other = p.data.get("other").unwrap();
    assert!(num(other, "n_statements") >= 4900.0);
    assert!(num(other, "calls") >= 4900.0);
    eprintln!(
        "COST statements: baseline {} us, cycle over {} entries {} us with texts fetched, {} us \
         with texts known (+ {} us to serialize {} bytes), RSS {} kB",
        baseline_us,
        num(&p.data, "n_entries"),
        cycle_us,
        steady_us,
        serialize_us,
        json.len(),
        rss_kb()
    );
}

#[test]
fn the_sampler_sees_every_active_session_every_second() {
    let pg = TestPg::start();
    let n_sessions = 20;
    let (tx, rx) = mpsc::channel();
    let mut sessions = Vec::new();
    for i in 0..n_sessions {
        let mut app = postgres::Config::new()
            .host(pg.socket_dir().to_str().unwrap())
            .port(pg.port())
            .user("postgres")
            .dbname("postgres")
            .application_name(&format!(
                "bitville-00000000-0000-4000-8000-0000000000{i:02}"
            ))
            .connect(postgres::NoTls)
            .unwrap();
        let tx = tx.clone();
        sessions.push(std::thread::spawn(move || {
            app.batch_execute("SELECT pg_sleep(3)").unwrap();
            tx.send(()).unwrap();
        }));
    }
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut c = pool.acquire().unwrap();
    // Wait until they all run (not timed: the loop ends when the server says so).
    while {
        let st = sampler.sample(&mut c).unwrap();
        st.n_rows - st.n_background < n_sessions
    } {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut per_sample = Vec::new();
    let mut min_rows = usize::MAX;
    for _ in 0..10 {
        let t0 = thread_cpu_us();
        let stats = sampler.sample(&mut c).unwrap();
        per_sample.push(thread_cpu_us() - t0);
        min_rows = min_rows.min(stats.n_rows - stats.n_background);
        if rx.try_recv().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = thread_cpu_us();
    let payloads = sampler.finish_interval();
    let finish_us = thread_cpu_us() - t0;
    for s in sessions {
        s.join().unwrap();
    }
    assert_eq!(num(&payloads[0].data, "count"), n_sessions as f64);
    // Correlated payloads are capped; the rest stays in the summary.
    let cap = ActivityConfig::default().max_correlated.min(n_sessions);
    assert_eq!(payloads.len(), 1 + cap, "capped correlated payloads");
    assert_eq!(
        num(&payloads[0].data, "with_correlation"),
        n_sessions as f64
    );
    per_sample.sort_unstable();
    eprintln!(
        "COST sampler: {} rows per sample, median {} us per sample (max {} us), finish_interval \
         {} us, RSS {} kB; at 1 s: ~{} ms per minute",
        min_rows,
        per_sample[per_sample.len() / 2],
        per_sample[per_sample.len() - 1],
        finish_us,
        rss_kb(),
        (per_sample[per_sample.len() / 2] * 60 + finish_us) / 1000
    );
}
