//! What server health costs on a server with many tables: a measuring program, not a test.
//!
//! `cargo bench --bench health_cost` (optionally `BITVILLE_HEALTH_BENCH_TABLES=1000,10000,50000`
//! and `BITVILLE_TEST_PG_BIN`) starts a throwaway server, grows it to each size (every table has
//! a primary key and one row, so every table has statistics and none is filtered out as idle),
//! and prints per collection cycle (averaged over the cycles after the baseline): agent CPU (this
//! thread, which also runs the driver), CPU of the agent's backend (from /proc, 10 ms ticks, so
//! summed over several cycles), wall time, the block's JSON size; the first cycle's wall time
//! (it also runs the slow parts: database sizes, unused indexes); how many intervals apart the
//! hot-tables query runs and its wall time when it runs; and the server-side execution time of
//! each health query from pg_stat_statements. Autovacuum is off so the numbers are the agent's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bitville_pg_agent::health::{Health, HealthOptions};
use bitville_pg_agent::pool::Pool;
use common::TestPg;

const CYCLES: u32 = 10;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// utime + stime of a process in clock ticks.
fn process_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_to_ms(t: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    t as f64 * 1000.0 / hz
}

fn grow(pg: &TestPg, from: usize, to: usize) {
    let mut admin = pg.admin();
    let mut i = from;
    while i < to {
        let end = (i + 1000).min(to);
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN FOR i IN {} .. {} LOOP
                   EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v int);
                                   INSERT INTO t%s VALUES (1, 1)', i, i);
                 END LOOP; END $$",
                i + 1,
                end
            ))
            .unwrap();
        i = end;
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BITVILLE_HEALTH_BENCH_TABLES")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pg = TestPg::builder()
        .setting("max_locks_per_transaction", "256")
        .setting("autovacuum", "off")
        .start();
    println!(
        "PostgreSQL {}; {CYCLES} cycles per size after a baseline",
        pg.major_version()
    );
    println!(
        "{:>7} | {:>12} | {:>14} | {:>11} | {:>10} | {:>16} | {:>6} | {:>10}",
        "tables",
        "agent CPU ms",
        "backend CPU ms",
        "wall ms",
        "JSON bytes",
        "first cycle ms",
        "every",
        "tables ms"
    );
    let mut have = 0;
    let mut reports = Vec::new();
    for &n in &sizes {
        let t = Instant::now();
        grow(&pg, have, n);
        have = n;
        eprintln!("grew to {n} tables in {:.1} s", t.elapsed().as_secs_f64());
        let mut admin = pg.admin();
        admin
            .batch_execute("SELECT pg_stat_statements_reset()")
            .unwrap();
        let pool = Pool::new(&pg.db_config());
        let mut client = pool.acquire().unwrap();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let mut health = Health::new(HealthOptions::default());
        // The baseline cycle also runs the slow parts (sizes, unused indexes): priced apart.
        let wall = Instant::now();
        health.collect(&mut client, Instant::now());
        let first_ms = wall.elapsed().as_secs_f64() * 1000.0;

        let (mut cpu, mut wall_total, mut bytes) = (Duration::ZERO, Duration::ZERO, 0usize);
        let (mut every, mut query_ms, mut ran) = (String::new(), 0.0, 0u32);
        let ticks0 = process_ticks(pid);
        for c in 0..CYCLES {
            // Some activity between cycles so there is something to rank.
            let scans: String = (0..50)
                .map(|k| {
                    format!(
                        "SELECT count(*) FROM t{};",
                        (c as usize * 97 + k * 31) % n + 1
                    )
                })
                .collect();
            // A session of its own, closed at once, so its statistics are visible to the cycle.
            pg.admin().batch_execute(&scans).unwrap();
            let cpu0 = thread_cpu();
            let w = Instant::now();
            let block = health.collect(&mut client, Instant::now());
            wall_total += w.elapsed();
            cpu += thread_cpu() - cpu0;
            let text = block.to_json_string();
            assert!(text.contains("\"errors\":[]"), "{text}");
            bytes += text.len();
            if let Some(t) = block.get("tables") {
                if let Some(bitville_pg_agent::json::Json::Float(q)) = t.get("query_ms") {
                    query_ms += q;
                    ran += 1;
                }
                if let Some(e) = t.get("every_intervals") {
                    every = e.to_json_string();
                }
            }
        }
        let backend_ms = ticks_to_ms(process_ticks(pid) - ticks0);
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(CYCLES);
        println!(
            "{n:>7} | {:>12.2} | {:>14.2} | {:>11.2} | {:>10} | {:>16.1} | {:>6} | {:>10.1}",
            per(cpu),
            backend_ms / f64::from(CYCLES),
            per(wall_total),
            bytes / CYCLES as usize,
            first_ms,
            every,
            query_ms / f64::from(ran.max(1)),
        );
        // PG13 renamed total_time to total_exec_time.
        let total = if pg.major_version() >= 13 {
            "total_exec_time"
        } else {
            "total_time"
        };
        let rows = admin
            .query(
                &format!(
                    "SELECT calls, {total}::float8 / calls AS mean_ms,
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS q
                 FROM pg_stat_statements
                 WHERE userid = 'bitville_monitor'::regrole AND calls > 0
                 ORDER BY {total} DESC LIMIT 6"
                ),
                &[],
            )
            .unwrap();
        let mut report = format!("  {n} tables, server-side mean per query:\n");
        for r in rows {
            let calls: i64 = r.get(0);
            let mean: f64 = r.get(1);
            let q: String = r.get(2);
            report.push_str(&format!("    {mean:>9.2} ms x{calls:<3} {q}\n"));
        }
        reports.push(report);
    }
    for r in reports {
        print!("{r}");
    }
}
