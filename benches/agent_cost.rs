//! `make bench`: what the agent costs, measured against a throwaway PostgreSQL with a listener
//! stand-in on loopback. A plain program (harness = false), never a test: nothing here asserts a
//! timing. Targets are printed beside the results; missing one is a finding.
//!
//! `cargo bench --bench agent_cost -- [--runs N] [--secs S] [--only 1,2,3,4,5,grow,spike,quiet,scale]
//! [--compare] [--callgrind] [--callgrind-only] [--sizes 100,400] [--no-load-rule]`; `scale`
//! (issue 16: the sampler at 100, 400 and 1,000 active sessions, about 6 minutes) runs only when
//! named, `--callgrind` adds a callgrind and an strace profile of it at 400 (both variants),
//! `--callgrind-only` only those, `--sizes` picks the sizes; `--no-load-rule` appends
//! `[spike] load_per_cpu = 0` to every agent configuration (the load1 rule fires on a loaded VM
//! and bursts the sampler).
//!
//! Method (also in BENCHMARKS.md):
//! - The release binary runs as a child with 1 s sampling and a shortened interval
//!   (`interval_s = 10`, so a run of S seconds has several collection cycles). CPU is read per
//!   thread from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on CPU) and extrapolated to a
//!   minute at default settings: sampler CPU per second x 60 + interval-thread CPU per cycle x 1
//!   + shipper CPU per payload x payloads per cycle + log thread CPU per second x 60.
//! - PostgreSQL-side CPU: the `bitville_monitor` backends' schedstat, polled every second, and
//!   pg_stat_statements' `total_exec_time` of that role (execution time, an upper bound of CPU).
//! - RSS from `/proc/<pid>/status` (VmRSS every second after the first cycle; VmHWM at the end).
//! - Per-cycle CPU and wall are measured in process with the library's collectors on the same
//!   server (thread rusage and a monotonic clock), as the interval thread runs them.

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/sessions.rs"]
mod sessions;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::cycle::{CycleOptions, DbSteps, IntervalCycle};
use bitville_pg_agent::collect::host::{HostCollector, WatchedPath};
use bitville_pg_agent::collect::statements::{StatementsCollector, StatementsConfig};
use bitville_pg_agent::collect::{Backoff, CollectError};
use bitville_pg_agent::health::HealthOptions;
use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{unix_now, Payload, Source};
use bitville_pg_agent::pool::Pool;
use bitville_pg_agent::spool::{Spool, SpoolOptions};
use common::agent::AgentProcess;
use common::listener::TestListener;
use common::{TempDir, TestPg, MONITOR_ROLE};

const INTERVAL_S: u64 = 10;

// ---------------------------------------------------------------------------------------------
// measuring helpers

fn thread_cpu_us() -> u64 {
    // SAFETY: clock_gettime fills a plain struct; zeroed is a valid initial value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// User and system CPU µs of the calling thread (getrusage; the split is tick-sampled).
fn thread_user_sys_us() -> (u64, u64) {
    // SAFETY: getrusage fills a plain struct; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// Nanoseconds on CPU of one task (thread) from schedstat.
fn schedstat_ns(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU ns per thread name of a process (threads with the same name summed).
fn threads_cpu(pid: i32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let name = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(ns) = schedstat_ns(&e.path().join("schedstat")) {
            *out.entry(name).or_insert(0) += ns;
        }
    }
    out
}

fn process_cpu_ns(pid: i32) -> u64 {
    threads_cpu(pid).values().sum()
}

/// VmRSS and VmHWM in kB.
fn rss_kb(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Voluntary + involuntary context switches of every thread (≈ wakeups).
fn ctx_switches(pid: i32) -> u64 {
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let text = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            for l in text.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    n += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    n
}

/// Tracks the CPU of the backends of one role: first and last schedstat seen per pid.
#[derive(Default)]
struct BackendCpu {
    seen: HashMap<i32, (u64, u64)>,
    max_conns: usize,
}

impl BackendCpu {
    fn poll(&mut self, admin: &mut postgres::Client, role: &str) {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .unwrap_or_default();
        self.max_conns = self.max_conns.max(rows.len());
        for r in rows {
            let pid: i32 = r.get(0);
            if let Some(ns) = schedstat_ns(Path::new(&format!("/proc/{pid}/schedstat"))) {
                let e = self.seen.entry(pid).or_insert((ns, ns));
                e.1 = ns;
            }
        }
    }
    fn total_ns(&self) -> u64 {
        self.seen.values().map(|(a, b)| b - a).sum()
    }
}

/// pg_stat_statements total_exec_time (ms) of a role's statements.
fn role_exec_ms(admin: &mut postgres::Client, role: &str) -> f64 {
    admin
        .query_one(
            "SELECT coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements s \
             JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1",
            &[&role],
        )
        .map(|r| r.get(0))
        .unwrap_or(0.0)
}

#[derive(Clone, Copy)]
struct Stat {
    med: f64,
    min: f64,
    max: f64,
}

fn stat(v: &[f64]) -> Stat {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stat {
            med: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        med,
        min: v[0],
        max: v[n - 1],
    }
}

fn fmt_stat(s: Stat, digits: usize) -> String {
    if s.med.is_nan() {
        return "n/a".into();
    }
    if (s.max - s.min).abs() < f64::EPSILON {
        return format!("{:.*}", digits, s.med);
    }
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.med, digits, s.min, digits, s.max
    )
}

/// A result row: name, value, unit, target.
#[allow(dead_code)]
struct Row(String, String, String);

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, name: &str, value: String, target: &str) {
        println!("  {name:<52} {value:<28} {target}");
        self.rows.push(Row(name.into(), value, target.into()));
    }
}

// ---------------------------------------------------------------------------------------------
// one run of the agent process

struct AgentRun {
    steady_rss_kb: f64,
    peak_rss_kb: f64,
    cpu_ms_per_min: f64,
    sampler_us_per_sample: f64,
    interval_ms_per_cycle: f64,
    shipper_us_per_payload: f64,
    logtail_ms_per_min: f64,
    pg_cpu_ms_per_min: f64,
    pg_exec_ms_per_min: f64,
    conns: f64,
    bytes_per_min: f64,
    payloads_per_cycle: f64,
    wakeups_per_s: f64,
    /// `data.agent.sample_cost` of the last system_metrics payload (the cost control's level).
    sample_cost: Option<serde_json::Value>,
}

/// Sections appended to every agent configuration of the run (`--no-load-rule`).
static AGENT_EXTRA_SECTIONS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn agent_ini(pg: &TestPg, listener: &TestListener, work: &Path, extra: &str) -> PathBuf {
    let ini = work.join("agent.ini");
    std::fs::write(
        &ini,
        pg.agent_ini(&format!(
            "[collection]\ninterval_s = {INTERVAL_S}\nstate_dir = {}\nlog_path = {}\n{extra}\n\
             [listener]\nurl = {}\napi_key = bench-key\nproject_id = bench\n\
             max_requests_per_minute = 600\n[buffer]\npath = {}\n{}",
            work.join("state").display(),
            pg.server_log().display(),
            listener.url(),
            work.join("spool").display(),
            AGENT_EXTRA_SECTIONS.get().map_or("", String::as_str)
        )),
    )
    .unwrap();
    ini
}

/// Runs the agent for `secs` seconds (after a warm-up cycle) and measures it.
fn run_agent(pg: &TestPg, secs: u64) -> AgentRun {
    run_agent_with(pg, secs, "").0
}

/// The flight recorder's files in `state`, in bytes.
fn recorder_bytes(state: &Path) -> u64 {
    ["flight-recorder.0.jsonl", "flight-recorder.1.jsonl"]
        .iter()
        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// [`run_agent`] with `extra` configuration lines (after `[collection]`'s); also returns the
/// flight recorder's growth in bytes per hour over the measured time.
fn run_agent_with(pg: &TestPg, secs: u64, extra: &str) -> (AgentRun, f64) {
    let listener = TestListener::start("bench-key");
    let work = TempDir::new("bench-agent");
    let ini = agent_ini(pg, &listener, work.path(), extra);
    let mut admin = pg.admin();
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    let pid = agent.pid();
    // Warm-up: the first cycle (baselines, connections, first texts) is not steady state.
    std::thread::sleep(Duration::from_secs(INTERVAL_S + 1));
    let recorder0 = recorder_bytes(&work.path().join("state"));
    let metrics_before = count_source(&listener, "system_metrics");
    let cpu0 = threads_cpu(pid);
    let sw0 = ctx_switches(pid);
    let exec0 = role_exec_ms(&mut admin, MONITOR_ROLE);
    let reqs0 = listener.requests().len();
    let mut backends = BackendCpu::default();
    backends.poll(&mut admin, MONITOR_ROLE);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kb(pid).0 as f64);
        backends.poll(&mut admin, MONITOR_ROLE);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = threads_cpu(pid);
    let sw1 = ctx_switches(pid);
    let exec1 = role_exec_ms(&mut admin, MONITOR_ROLE);
    let peak = rss_kb(pid).1 as f64;
    let recorder_per_h =
        (recorder_bytes(&work.path().join("state")) as f64 - recorder0 as f64) / wall * 3600.0;
    let cycles = (count_source(&listener, "system_metrics") - metrics_before).max(1) as f64;
    let reqs: Vec<_> = listener.requests().into_iter().skip(reqs0).collect();
    let payloads = reqs.iter().filter(|r| r.status == 200).count() as f64;
    let bytes: usize = reqs.iter().map(|r| r.body.len()).sum();
    agent.stop();
    let sample_cost = listener
        .stored()
        .iter()
        .rev()
        .find(|v| v["source"] == "system_metrics")
        .map(|v| v["data"]["agent"]["sample_cost"].clone());

    let d = |name: &str| {
        (cpu1.get(name).copied().unwrap_or(0) - cpu0.get(name).copied().unwrap_or(0)) as f64
    };
    let total: f64 = cpu1.values().sum::<u64>() as f64 - cpu0.values().sum::<u64>() as f64;
    let sampler_per_s = d("sampler") / wall;
    let interval_per_cycle = d("interval") / cycles;
    let shipper_per_payload = d("shipper") / payloads.max(1.0);
    let log_per_s = d("logtail") / wall;
    let other_per_s = (total - d("sampler") - d("interval") - d("shipper") - d("logtail")) / wall;
    let payloads_per_cycle = payloads / cycles;
    let per_min_ns = sampler_per_s * 60.0
        + interval_per_cycle
        + shipper_per_payload * payloads_per_cycle
        + log_per_s * 60.0
        + other_per_s * 60.0;
    let pg_ns = backends.total_ns() as f64;
    // PostgreSQL side: the sampler's share scales with time, the interval's with cycles; the
    // split is not observable from outside, so scale by wall time (conservative: cycles are
    // 6 x more frequent here than at the default 60 s).
    let run = AgentRun {
        steady_rss_kb: stat(&rss).med,
        peak_rss_kb: peak,
        cpu_ms_per_min: per_min_ns / 1e6,
        sampler_us_per_sample: sampler_per_s / 1e3,
        interval_ms_per_cycle: interval_per_cycle / 1e6,
        shipper_us_per_payload: shipper_per_payload / 1e3,
        logtail_ms_per_min: log_per_s * 60.0 / 1e6,
        pg_cpu_ms_per_min: pg_ns / 1e6 / wall * 60.0,
        pg_exec_ms_per_min: (exec1 - exec0) / wall * 60.0,
        conns: backends.max_conns as f64,
        bytes_per_min: bytes as f64 / cycles,
        payloads_per_cycle,
        wakeups_per_s: (sw1 - sw0) as f64 / wall,
        sample_cost,
    };
    (run, recorder_per_h)
}

fn count_source(l: &TestListener, source: &str) -> usize {
    l.stored().iter().filter(|v| v["source"] == source).count()
}

fn report_agent_runs(rep: &mut Report, runs: &[AgentRun], scenario: u32) {
    let col = |f: fn(&AgentRun) -> f64| stat(&runs.iter().map(f).collect::<Vec<_>>());
    let t = |s: u32, text: &'static str| if s == scenario { text } else { "" };
    rep.add(
        "agent steady RSS (MB)",
        fmt_stat(col(|r| r.steady_rss_kb / 1024.0), 2),
        t(3, "target ≤ 6 MB"),
    );
    rep.add(
        "agent peak RSS (MB)",
        fmt_stat(col(|r| r.peak_rss_kb / 1024.0), 2),
        "",
    );
    rep.add(
        "agent CPU per minute, default settings (ms)",
        fmt_stat(col(|r| r.cpu_ms_per_min), 2),
        t(2, "target ≤ 5 ms/min"),
    );
    rep.add(
        "  sampler CPU per 1 s sample (µs)",
        fmt_stat(col(|r| r.sampler_us_per_sample), 0),
        "",
    );
    rep.add(
        "  interval thread CPU per cycle (ms)",
        fmt_stat(col(|r| r.interval_ms_per_cycle), 2),
        "",
    );
    rep.add(
        "  shipper CPU per payload (µs)",
        fmt_stat(col(|r| r.shipper_us_per_payload), 0),
        "",
    );
    rep.add(
        "  log thread CPU per minute (ms)",
        fmt_stat(col(|r| r.logtail_ms_per_min), 2),
        "",
    );
    rep.add(
        "  wakeups (context switches) per second",
        fmt_stat(col(|r| r.wakeups_per_s), 1),
        "",
    );
    rep.add(
        "PostgreSQL CPU of the agent's backends, 10 s cycles (ms/min)",
        fmt_stat(col(|r| r.pg_cpu_ms_per_min), 1),
        "upper bound: 6× the cycles of the default",
    );
    rep.add(
        "PostgreSQL exec time of the agent's role (ms/min)",
        fmt_stat(col(|r| r.pg_exec_ms_per_min), 1),
        "",
    );
    rep.add("connections held (max)", fmt_stat(col(|r| r.conns), 0), "");
    rep.add(
        "payloads per interval",
        fmt_stat(col(|r| r.payloads_per_cycle), 1),
        "",
    );
    rep.add(
        "bytes shipped per minute (at 60 s interval, kB)",
        fmt_stat(col(|r| r.bytes_per_min / 1000.0), 1),
        "",
    );
}

// ---------------------------------------------------------------------------------------------
// in-process cycle costs

struct CycleCost {
    sample_cpu_us: f64,
    sample_wall_us: f64,
    rows: usize,
    stmt_cpu_ms: f64,
    stmt_wall_ms: f64,
    host_cpu_us: f64,
    sample_pg_us: f64,
    stmt_pg_ms: f64,
    /// One whole interval cycle as the daemon runs it (`IntervalCycle::run`: statements,
    /// health, host), agent CPU and wall.
    cycle_cpu_ms: f64,
    cycle_wall_ms: f64,
}

/// The benches' step runner for [`IntervalCycle`]: every step on a connection of one pool,
/// failures printed (the daemon's runner adds pause, backoff and broken-connection handling,
/// which cost nothing on this path).
struct BenchSteps<'a>(&'a Pool);

impl DbSteps for BenchSteps<'_> {
    fn step<T>(
        &self,
        _database: Option<&str>,
        name: &'static str,
        _backoff: &mut Backoff,
        f: impl FnOnce(&mut bitville_pg_agent::pool::PooledClient) -> Result<T, CollectError>,
    ) -> Option<T> {
        let mut c = self.0.acquire().ok()?;
        f(&mut c).map_err(|e| println!("  ({name}: {e})")).ok()
    }
}

fn backend_ns(c: &mut postgres::Client) -> u64 {
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    schedstat_ns(Path::new(&format!("/proc/{pid}/schedstat"))).unwrap_or(0)
}

/// One sample (median of `n`) and one statements + host cycle, CPU and wall.
fn cycle_cost(pg: &TestPg, workload: Option<&str>) -> CycleCost {
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut rows = 0;
    let _ = sampler.sample(&mut c);
    let pg0 = backend_ns(&mut c);
    for _ in 0..21 {
        let t = Instant::now();
        let c0 = thread_cpu_us();
        let s = sampler.sample(&mut c).unwrap();
        cpu.push((thread_cpu_us() - c0) as f64);
        wall.push(t.elapsed().as_secs_f64() * 1e6);
        rows = s.n_rows;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Includes one `SELECT pg_backend_pid()`, a few µs.
    let sample_pg = (backend_ns(&mut c) - pg0) as f64 / 21.0;
    let _ = sampler.finish_interval();
    let state = TempDir::new("bench-stmt");
    let mut stmts = StatementsCollector::new(StatementsConfig::new(state.path()));
    let _ = stmts.collect(&mut c);
    if let Some(w) = workload {
        pg.admin().batch_execute(w).unwrap();
    }
    let pg0 = backend_ns(&mut c);
    let t = Instant::now();
    let c0 = thread_cpu_us();
    let _ = stmts.collect(&mut c);
    let stmt_cpu = (thread_cpu_us() - c0) as f64;
    let stmt_pg = (backend_ns(&mut c) - pg0) as f64;
    let stmt_wall = t.elapsed().as_secs_f64() * 1e6;
    let mut host = HostCollector::new();
    let paths = [WatchedPath {
        label: "data_directory".into(),
        path: pg.data_dir(),
    }];
    host.collect(&paths);
    let c0 = thread_cpu_us();
    let _ = host.collect(&paths);
    let host_cpu = (thread_cpu_us() - c0) as f64;
    // The daemon's own interval unit, primed as the daemon primes it at start.
    let cycle_state = TempDir::new("bench-cycle");
    let mut cycle = IntervalCycle::new(CycleOptions {
        statements: StatementsConfig::new(cycle_state.path()),
        health: HealthOptions::default(),
        spool_path: cycle_state.path().to_path_buf(),
        databases: Vec::new(),
    });
    let steps = BenchSteps(&pool);
    drop(c);
    cycle.prime(&steps);
    if let Some(w) = workload {
        pg.admin().batch_execute(w).unwrap();
    }
    let t = Instant::now();
    let c0 = thread_cpu_us();
    let payloads = cycle.run(&steps, Json::object);
    let cycle_cpu = (thread_cpu_us() - c0) as f64;
    let cycle_wall = t.elapsed().as_secs_f64() * 1e6;
    assert!(
        !payloads.is_empty(),
        "the interval cycle returned no payload"
    );
    CycleCost {
        cycle_cpu_ms: cycle_cpu / 1e3,
        cycle_wall_ms: cycle_wall / 1e3,
        sample_cpu_us: stat(&cpu).med,
        sample_wall_us: stat(&wall).med,
        rows,
        stmt_cpu_ms: stmt_cpu / 1e3,
        stmt_wall_ms: stmt_wall / 1e3,
        host_cpu_us: host_cpu,
        sample_pg_us: sample_pg / 1e3,
        stmt_pg_ms: stmt_pg / 1e6,
    }
}

fn report_cycles(rep: &mut Report, costs: &[CycleCost], stmt_target: bool) {
    let col = |f: fn(&CycleCost) -> f64| stat(&costs.iter().map(f).collect::<Vec<_>>());
    rep.add(
        &format!(
            "one activity sample, {} rows: CPU (µs)",
            costs.first().map_or(0, |c| c.rows)
        ),
        fmt_stat(col(|c| c.sample_cpu_us), 0),
        "",
    );
    rep.add(
        "one activity sample: wall (µs)",
        fmt_stat(col(|c| c.sample_wall_us), 0),
        "",
    );
    rep.add(
        "statements cycle: CPU (ms)",
        fmt_stat(col(|c| c.stmt_cpu_ms), 2),
        if stmt_target {
            "target ≤ 10 ms over 5,000 entries"
        } else {
            ""
        },
    );
    rep.add(
        "statements cycle: wall (ms)",
        fmt_stat(col(|c| c.stmt_wall_ms), 2),
        "",
    );
    rep.add(
        "host cycle: CPU (µs)",
        fmt_stat(col(|c| c.host_cpu_us), 0),
        "",
    );
    rep.add(
        "whole interval cycle (IntervalCycle: statements + health + host): CPU (ms)",
        fmt_stat(col(|c| c.cycle_cpu_ms), 2),
        "",
    );
    rep.add(
        "whole interval cycle: wall (ms)",
        fmt_stat(col(|c| c.cycle_wall_ms), 2),
        "",
    );
    rep.add(
        "PostgreSQL CPU per sample (µs)",
        fmt_stat(col(|c| c.sample_pg_us), 0),
        "",
    );
    rep.add(
        "PostgreSQL CPU per statements cycle (ms)",
        fmt_stat(col(|c| c.stmt_pg_ms), 2),
        "",
    );
    rep.add(
        "PostgreSQL CPU per minute at defaults = 60 samples + 1 cycle (ms)",
        fmt_stat(col(|c| c.sample_pg_us * 60.0 / 1e3 + c.stmt_pg_ms), 1),
        if stmt_target {
            "target ≤ 50 ms/min"
        } else {
            ""
        },
    );
}

// ---------------------------------------------------------------------------------------------
// load generators

fn pgbench_path(pg: &TestPg) -> PathBuf {
    pg.bin_dir().join("pgbench")
}

fn pgbench_init(pg: &TestPg) {
    let st = Command::new(pgbench_path(pg))
        .args(["-i", "-q", "-s", "5", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pgbench -i");
    assert!(st.success(), "pgbench -i");
}

/// pgbench with `clients` clients for `secs` seconds, in the background.
fn pgbench_run(pg: &TestPg, clients: u32, secs: u64) -> Child {
    Command::new(pgbench_path(pg))
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
        ])
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench")
}

fn stop_child(mut c: Child) {
    // SAFETY: a pid we spawned and have not reaped.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

/// `n` distinct statements (nested, from a DO block) over a wide table.
fn statements_workload(pg: &TestPg, n: usize) -> String {
    let width = n.div_ceil(100).clamp(1, 400);
    let cols: Vec<String> = (1..=width.max(100)).map(|i| format!("c{i} int")).collect();
    pg.admin()
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS wide; CREATE TABLE wide ({}); INSERT INTO wide DEFAULT VALUES;",
            cols.join(", ")
        ))
        .unwrap();
    let a = n.div_ceil(100);
    format!(
        "DO $$ BEGIN FOR a IN 1..{a} LOOP FOR b IN 1..100 LOOP \
         EXECUTE format('SELECT c%s + c%s FROM wide', a, b); END LOOP; END LOOP; END $$"
    )
}

fn create_tables(pg: &TestPg, n: usize) {
    let mut admin = pg.admin();
    let mut done = 0;
    while done < n {
        let to = (done + 1000).min(n);
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN FOR i IN {}..{} LOOP \
                 EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v int)', i); \
                 END LOOP; END $$",
                done + 1,
                to
            ))
            .unwrap();
        done = to;
    }
    admin.batch_execute("ANALYZE").unwrap();
}

/// `total` connected sessions, `active` of them running `pg_sleep`.
struct Sessions {
    idle: Vec<postgres::Client>,
    active: Vec<std::thread::JoinHandle<()>>,
}

fn sessions(pg: &TestPg, total: usize, active: usize) -> Sessions {
    let mut idle = Vec::new();
    for _ in 0..total - active {
        idle.push(pg.admin());
    }
    let mut act = Vec::new();
    for i in 0..active {
        let mut c = pg.admin();
        act.push(std::thread::spawn(move || {
            let _ = c.batch_execute(&format!(
                "SET application_name = 'bitville-00000000-0000-4000-8000-{i:012}'; \
                 SELECT pg_sleep(3600)"
            ));
        }));
    }
    Sessions { idle, active: act }
}

impl Sessions {
    fn end(self, pg: &TestPg) {
        let _ = pg.admin().batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()",
        );
        for t in self.active {
            let _ = t.join();
        }
        drop(self.idle);
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios

struct Opts {
    runs: usize,
    secs: u64,
    only: Vec<String>,
    compare: bool,
    /// With the scale scenario: one callgrind profile of the sampler at 400 sessions.
    callgrind: bool,
    /// Sizes of the scale scenario (`--sizes 400`; default [`SCALE_SIZES`]).
    sizes: Vec<usize>,
    /// With `--callgrind`: only the callgrind profiles, no timed samples (`--callgrind-only`).
    callgrind_only: bool,
}

/// Whether scenario `s` runs: every one but `scale` when `--only` is not given.
fn want(o: &Opts, s: &str) -> bool {
    (o.only.is_empty() && s != "scale") || o.only.iter().any(|x| x == s)
}

fn scenario_idle(o: &Opts, rep: &mut Report) {
    println!("\n== scenario 1: idle server");
    let pg = TestPg::builder().start();
    let runs: Vec<AgentRun> = (0..o.runs).map(|_| run_agent(&pg, o.secs)).collect();
    report_agent_runs(rep, &runs, 1);
    let costs: Vec<CycleCost> = (0..o.runs).map(|_| cycle_cost(&pg, None)).collect();
    report_cycles(rep, &costs, false);
    startup(&pg, rep);
}

/// Scenario "spike": a lock pile-up every 30 s (40 requests behind one holder for 8 s, burst
/// sampling at 250 ms), against the idle scenario's agent: agent and PostgreSQL CPU per minute
/// with bursts, and the flight recorder's bytes per hour (with and without spikes).
/// The spike scenario's configuration: the load1 rule off, because on a shared benchmark machine
/// other work keeps load1 above 2 x CPUs and the steady figures would be burst figures.
const SPIKE_CFG: &str =
    "[spike]\nmin_active_sessions = 20\nload_per_cpu = 0\nend_after_quiet_s = 3\n";

/// Scenario "quiet": the idle server with [`SPIKE_CFG`] (no burst), the steady cost to compare
/// builds by (`BITVILLE_AGENT_BIN`; an older build ignores the `[spike]` keys with a warning).
fn scenario_quiet(o: &Opts, rep: &mut Report) {
    println!("\n== scenario quiet: idle server, load1 rule off");
    let pg = TestPg::builder().start();
    let runs: Vec<AgentRun> = (0..o.runs)
        .map(|_| run_agent_with(&pg, o.secs, SPIKE_CFG).0)
        .collect();
    let col = |f: fn(&AgentRun) -> f64| fmt_stat(stat(&runs.iter().map(f).collect::<Vec<_>>()), 1);
    rep.add("agent CPU per minute (ms)", col(|r| r.cpu_ms_per_min), "");
    rep.add(
        "- sampler CPU per 1 s sample (us)",
        col(|r| r.sampler_us_per_sample),
        "",
    );
}

fn scenario_spike(o: &Opts, rep: &mut Report) {
    println!("\n== scenario spike: a 40-session lock pile-up every 30 s, 8 s each");
    let pg = TestPg::builder().start();
    let spike_cfg = SPIKE_CFG;
    let quiet: Vec<(AgentRun, f64)> = (0..o.runs)
        .map(|_| run_agent_with(&pg, o.secs, spike_cfg))
        .collect();
    let stop = AtomicBool::new(false);
    let spiky: Vec<(AgentRun, f64)> = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..22 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                n += 1;
                common::pileup::lock_pile_up(&pg, n, 40, Duration::from_secs(8));
            }
        });
        let runs = (0..o.runs)
            .map(|_| run_agent_with(&pg, o.secs.max(60), spike_cfg))
            .collect();
        stop.store(true, Ordering::SeqCst);
        runs
    });
    let col = |v: &[(AgentRun, f64)], f: fn(&(AgentRun, f64)) -> f64| {
        fmt_stat(stat(&v.iter().map(f).collect::<Vec<_>>()), 1)
    };
    rep.add(
        "agent CPU per minute, no spikes (ms)",
        col(&quiet, |r| r.0.cpu_ms_per_min),
        "",
    );
    rep.add(
        "agent CPU per minute, pile-up every 30 s (ms)",
        col(&spiky, |r| r.0.cpu_ms_per_min),
        "",
    );
    rep.add(
        "- sampler CPU per second, with bursts (us)",
        col(&spiky, |r| r.0.sampler_us_per_sample),
        "",
    );
    rep.add(
        "PostgreSQL CPU per minute, pile-up every 30 s (ms)",
        col(&spiky, |r| r.0.pg_cpu_ms_per_min),
        "",
    );
    rep.add(
        "flight recorder, no spikes (KiB per hour)",
        col(&quiet, |r| r.1 / 1024.0),
        "",
    );
    rep.add(
        "flight recorder, pile-up every 30 s (KiB per hour)",
        col(&spiky, |r| r.1 / 1024.0),
        "",
    );
}

fn scenario_pgbench(o: &Opts, rep: &mut Report) {
    println!("\n== scenario 2: pgbench, 8 clients (scale 5)");
    let pg = TestPg::builder().setting("max_connections", "100").start();
    pgbench_init(&pg);
    let bench = pgbench_run(&pg, 8, 3600);
    std::thread::sleep(Duration::from_secs(2));
    let runs: Vec<AgentRun> = (0..o.runs).map(|_| run_agent(&pg, o.secs)).collect();
    report_agent_runs(rep, &runs, 2);
    let costs: Vec<CycleCost> = (0..o.runs).map(|_| cycle_cost(&pg, None)).collect();
    report_cycles(rep, &costs, false);
    if o.compare {
        compare(&pg, o, rep, &runs, &costs);
    }
    stop_child(bench);
}

fn big_server(
    tables: usize,
    statements: usize,
    total: usize,
    active: usize,
) -> (TestPg, Sessions, String) {
    let pg = TestPg::builder()
        .setting("pg_stat_statements.max", "25000")
        .setting("max_connections", &(total + 40).to_string())
        .start();
    let t = Instant::now();
    create_tables(&pg, tables);
    // The CREATE TABLEs were tracked too (10,000 distinct utility statements): start the
    // statements count from zero.
    pg.admin()
        .batch_execute("SELECT pg_stat_statements_reset()")
        .unwrap();
    let workload = statements_workload(&pg, statements);
    pg.admin().batch_execute(&workload).unwrap();
    let s = sessions(&pg, total, active);
    println!(
        "  (built {tables} tables, {statements} statements, {total} sessions / {active} active in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
    (pg, s, workload)
}

fn scenario_big(o: &Opts, rep: &mut Report) {
    println!("\n== scenario 3: 10,000 tables, 5,000 statements, 200 sessions of which 50 active");
    let (pg, s, workload) = big_server(10_000, 5_000, 200, 50);
    std::thread::sleep(Duration::from_secs(1));
    let runs: Vec<AgentRun> = (0..o.runs).map(|_| run_agent(&pg, o.secs)).collect();
    report_agent_runs(rep, &runs, 3);
    let costs: Vec<CycleCost> = (0..o.runs)
        .map(|_| cycle_cost(&pg, Some(&workload)))
        .collect();
    report_cycles(rep, &costs, true);
    if o.compare {
        compare(&pg, o, rep, &runs, &costs);
    }
    s.end(&pg);
}

/// How cost grows with tables, statements and active sessions (in-process cycle costs).
fn scenario_grow(o: &Opts, rep: &mut Report) {
    println!("\n== growth: statements cycle vs entries, sample vs active sessions, vs tables");
    for n in [1_000usize, 5_000, 20_000] {
        let pg = TestPg::builder()
            .setting("pg_stat_statements.max", "25000")
            .start();
        let w = statements_workload(&pg, n);
        pg.admin().batch_execute(&w).unwrap();
        let costs: Vec<CycleCost> = (0..o.runs).map(|_| cycle_cost(&pg, Some(&w))).collect();
        let col = |f: fn(&CycleCost) -> f64| stat(&costs.iter().map(f).collect::<Vec<_>>());
        rep.add(
            &format!("statements cycle, {n} entries: CPU (ms)"),
            fmt_stat(col(|c| c.stmt_cpu_ms), 2),
            "",
        );
        rep.add(
            &format!("statements cycle, {n} entries: wall (ms)"),
            fmt_stat(col(|c| c.stmt_wall_ms), 2),
            "",
        );
    }
    for active in [8usize, 50, 200] {
        let pg = TestPg::builder().setting("max_connections", "260").start();
        let s = sessions(&pg, active, active);
        std::thread::sleep(Duration::from_millis(500));
        let costs: Vec<CycleCost> = (0..o.runs).map(|_| cycle_cost(&pg, None)).collect();
        let col = |f: fn(&CycleCost) -> f64| stat(&costs.iter().map(f).collect::<Vec<_>>());
        rep.add(
            &format!("one sample, {active} active sessions: CPU (µs)"),
            fmt_stat(col(|c| c.sample_cpu_us), 0),
            "",
        );
        s.end(&pg);
    }
    let tables: Vec<usize> = std::env::var("BENCH_GROW_TABLES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000]);
    for n in tables {
        let pg = TestPg::builder().start();
        let t = Instant::now();
        create_tables(&pg, n);
        let built = t.elapsed().as_secs_f64();
        let runs: Vec<AgentRun> = (0..o.runs.min(2)).map(|_| run_agent(&pg, o.secs)).collect();
        let col = |f: fn(&AgentRun) -> f64| stat(&runs.iter().map(f).collect::<Vec<_>>());
        rep.add(
            &format!("{n} tables (built in {built:.0} s): agent CPU/min (ms)"),
            fmt_stat(col(|r| r.cpu_ms_per_min), 2),
            "",
        );
        rep.add(
            &format!("{n} tables: PostgreSQL CPU/min (ms)"),
            fmt_stat(col(|r| r.pg_cpu_ms_per_min), 1),
            "",
        );
        rep.add(
            &format!("{n} tables: steady RSS (MB)"),
            fmt_stat(col(|r| r.steady_rss_kb / 1024.0), 2),
            "",
        );
    }
}

/// A realistic payload body (a system_metrics-sized object, ~2 kB as spooled).
fn bench_payload(i: u64) -> Payload {
    let mut data = Json::object();
    for k in 0..40 {
        data.push(format!("metric_{k}"), (i * 31 + k) as f64 / 7.0);
    }
    data.push("note", "x".repeat(600 + (i % 200) as usize).as_str());
    Payload {
        source: Source::SystemMetrics,
        collected_at: unix_now(),
        correlation_id: None,
        data,
    }
}

/// Payloads per 24 h at default settings: one activity summary, one statements payload, one
/// system_metrics payload and (on a server that logs) about one pg_log payload per minute, plus
/// correlated payloads (at most 10 per minute; none counted here).
const PAYLOADS_PER_MIN_DEFAULT: u64 = 4;

fn scenario_outage(o: &Opts, rep: &mut Report) {
    println!("\n== scenario 4: listener outage, then the backlog drains under the rate limit");
    let backlog = PAYLOADS_PER_MIN_DEFAULT * 60 * 24;
    println!(
        "  24 h at default settings ≈ {PAYLOADS_PER_MIN_DEFAULT} payloads/min × 1440 = {backlog} payloads; \
         the bench pre-fills the spool with that many (~2 kB each) and drains them at 100× the \
         default pace (max_requests_per_minute = 6000 against a listener limit of 100 per second)"
    );
    // Spool throughput first (in process).
    let mut append_rates = Vec::new();
    let mut replay_rates = Vec::new();
    for _ in 0..o.runs {
        let dir = TempDir::new("bench-spool");
        let spool = Spool::open(SpoolOptions::new(dir.path().join("spool"))).unwrap();
        let payloads: Vec<Payload> = (0..backlog).map(bench_payload).collect();
        let t = Instant::now();
        for p in &payloads {
            spool.append(p).unwrap();
        }
        spool.sync().unwrap();
        append_rates.push(backlog as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut n = 0;
        while let Some(r) = spool.peek().unwrap() {
            spool.ack(&r).unwrap();
            n += 1;
        }
        spool.sync().unwrap();
        replay_rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    rep.add(
        "spool append (payloads/s, ~2 kB, one sync)",
        fmt_stat(stat(&append_rates), 0),
        "",
    );
    rep.add(
        "spool replay, peek + ack (payloads/s)",
        fmt_stat(stat(&replay_rates), 0),
        "",
    );

    let pg = TestPg::builder().start();
    let mut drain = Vec::new();
    let mut pace = Vec::new();
    let mut n429 = Vec::new();
    let mut lost = Vec::new();
    for _ in 0..o.runs.min(2) {
        let listener = TestListener::start("bench-key");
        listener.set_rate_limit(100, Duration::from_secs(1), "1");
        let work = TempDir::new("bench-outage");
        let spool_dir = work.path().join("spool");
        {
            let spool = Spool::open(SpoolOptions::new(&spool_dir)).unwrap();
            for i in 0..backlog {
                spool.append(&bench_payload(i)).unwrap();
            }
            spool.sync().unwrap();
        }
        let ini = work.path().join("agent.ini");
        std::fs::write(
            &ini,
            pg.agent_ini(&format!(
                "[collection]\ninterval_s = 60\nstate_dir = {}\n\
                 [listener]\nurl = {}\napi_key = bench-key\nproject_id = bench\n\
                 max_requests_per_minute = 6000\n[buffer]\npath = {}\n",
                work.path().join("state").display(),
                listener.url(),
                spool_dir.display()
            )),
        )
        .unwrap();
        let t = Instant::now();
        let mut agent = AgentProcess::start(&ini, &[], work.path());
        // Every backlog seq answered 200 (duplicates, if any, are counted below).
        let ok = listener.wait_for(Duration::from_secs(600), |reqs| {
            reqs.iter()
                .filter(|r| r.status == 200 && r.seq().is_some_and(|s| s <= backlog))
                .count() as u64
                >= backlog
        });
        let secs = t.elapsed().as_secs_f64();
        agent.stop();
        let reqs = listener.requests();
        let seqs: std::collections::BTreeSet<u64> = reqs
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.seq())
            .collect();
        let missing = (1..=backlog).filter(|s| !seqs.contains(s)).count();
        let tooo_many = reqs.iter().filter(|r| r.status == 429).count();
        drain.push(secs);
        pace.push(reqs.len() as f64 / secs);
        n429.push(tooo_many as f64);
        lost.push(missing as f64);
        if !ok {
            println!("  drain did not finish within 600 s");
        }
    }
    rep.add(
        &format!("drain of {backlog} payloads (s)"),
        fmt_stat(stat(&drain), 1),
        "",
    );
    rep.add(
        "requests per second during the drain",
        fmt_stat(stat(&pace), 1),
        "listener limit 100/s",
    );
    rep.add("429 answers", fmt_stat(stat(&n429), 0), "target ≤ 1");
    rep.add(
        "sequence numbers lost",
        fmt_stat(stat(&lost), 0),
        "target 0",
    );
    let default_minutes = backlog as f64 / 60.0;
    println!(
        "  at the default max_requests_per_minute = 60 the same backlog drains in ≈ {default_minutes:.0} min \
         while new payloads keep arriving at {PAYLOADS_PER_MIN_DEFAULT}/min"
    );
}

fn scenario_logburst(o: &Opts, rep: &mut Report) {
    println!(
        "\n== scenario 5: log burst, log_min_duration_statement = 0 under pgbench (8 clients)"
    );
    let pg = TestPg::builder()
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .setting("log_min_duration_statement", "0")
        .setting("max_connections", "100")
        .start();
    pgbench_init(&pg);
    let mut rate = Vec::new();
    let mut cpu_frac = Vec::new();
    let mut capacity = Vec::new();
    let mut lag = Vec::new();
    let mut read_rate = Vec::new();
    for _ in 0..o.runs {
        let listener = TestListener::start("bench-key");
        let work = TempDir::new("bench-logburst");
        let ini = agent_ini(&pg, &listener, work.path(), "");
        let mut agent = AgentProcess::start(&ini, &[], work.path());
        let pid = agent.pid();
        std::thread::sleep(Duration::from_secs(3));
        let log = pg.server_log();
        let size0 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let cpu0 = threads_cpu(pid);
        let t = Instant::now();
        let bench = pgbench_run(&pg, 8, o.secs);
        let _ = bench.wait_with_output();
        let wall = t.elapsed().as_secs_f64();
        let size1 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        // Let it catch up for up to 3 s (its poll period is 1 s).
        std::thread::sleep(Duration::from_secs(3));
        let cpu1 = threads_cpu(pid);
        agent.stop();
        let d = (cpu1.get("logtail").copied().unwrap_or(0)
            - cpu0.get("logtail").copied().unwrap_or(0)) as f64
            / 1e9;
        // What the tailer saved as read ("bitville-logtail 1 pos <dev> <ino> <offset> ...")
        // against what the server wrote.
        let saved =
            std::fs::read_to_string(work.path().join("state/logtail.position")).unwrap_or_default();
        let read_to: u64 = saved
            .split_whitespace()
            .nth(5)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let written = (size1 - size0) as f64;
        let read = read_to.saturating_sub(size0) as f64;
        rate.push(written / wall / 1e6);
        read_rate.push(read / wall / 1e6);
        cpu_frac.push(d / wall * 100.0);
        capacity.push(read / d.max(1e-9) / 1e6);
        let shipped: u64 = listener
            .stored()
            .iter()
            .filter(|v| v["source"] == "pg_log")
            .filter_map(|v| v["data"]["count"].as_u64())
            .sum();
        lag.push(shipped as f64);
    }
    rep.add(
        "server log written under pgbench (MB/s)",
        fmt_stat(stat(&rate), 2),
        "",
    );
    rep.add(
        "server log read by the agent during the run (MB/s)",
        fmt_stat(stat(&read_rate), 2),
        "",
    );
    rep.add(
        "log thread CPU (% of one core)",
        fmt_stat(stat(&cpu_frac), 1),
        "",
    );
    rep.add(
        "log bytes read per CPU second of the log thread (MB/s)",
        fmt_stat(stat(&capacity), 1),
        "target ≥ 50 MB/s",
    );
    rep.add(
        "pg_log entries shipped per run",
        fmt_stat(stat(&lag), 0),
        "",
    );
}

fn startup(pg: &TestPg, rep: &mut Report) {
    let mut first = Vec::new();
    for _ in 0..3 {
        let listener = TestListener::start("bench-key");
        let work = TempDir::new("bench-start");
        let ini = work.path().join("agent.ini");
        std::fs::write(
            &ini,
            pg.agent_ini(&format!(
                "[collection]\ninterval_s = 1\nstate_dir = {}\n\
                 [listener]\nurl = {}\napi_key = bench-key\nproject_id = bench\n[buffer]\npath = {}\n",
                work.path().join("state").display(),
                listener.url(),
                work.path().join("spool").display()
            )),
        )
        .unwrap();
        let t = Instant::now();
        let mut agent = AgentProcess::start(&ini, &[], work.path());
        let spool = work.path().join("spool");
        let spooled = |dir: &Path| {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten().any(|e| {
                        e.file_name().to_string_lossy().ends_with(".spool")
                            && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
                    })
                })
                .unwrap_or(false)
        };
        while !spooled(&spool) && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        agent.stop();
    }
    rep.add(
        "startup to first payload spooled, interval_s = 1 (ms)",
        fmt_stat(stat(&first), 0),
        "floor: one interval (1000 ms)",
    );
}

fn binary_size(rep: &mut Report) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stat_bin = root.join("target/x86_64-unknown-linux-musl/release/bitville-pg-agent");
    match std::fs::metadata(&stat_bin) {
        Ok(m) => rep.add(
            "static musl binary, stripped (MB)",
            format!("{:.2}", m.len() as f64 / 1e6),
            "target ≤ 6 MB",
        ),
        Err(_) => rep.add(
            "static musl binary, stripped (MB)",
            "not built (make static)".into(),
            "target ≤ 6 MB",
        ),
    }
    if let Ok(m) = std::fs::metadata(common::agent::AGENT_BIN) {
        rep.add(
            "glibc release binary, stripped (MB)",
            format!("{:.2}", m.len() as f64 / 1e6),
            "",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// side by side with postgres_exporter

const EXPORTER_BIN: &str = "/usr/bin/prometheus-postgres-exporter";
const EXPORTER_ROLE: &str = "exporter_monitor";

fn compare(pg: &TestPg, o: &Opts, rep: &mut Report, agent_runs: &[AgentRun], costs: &[CycleCost]) {
    if !Path::new(EXPORTER_BIN).exists() {
        rep.add(
            "postgres_exporter",
            format!("missing: {EXPORTER_BIN} (apt-get install prometheus-postgres-exporter)"),
            "",
        );
        return;
    }
    let mut admin = pg.admin();
    let _ = admin.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{EXPORTER_ROLE}') THEN \
         CREATE ROLE {EXPORTER_ROLE} LOGIN IN ROLE pg_monitor; END IF; END $$"
    ));
    let mut runs = Vec::new();
    for _ in 0..o.runs {
        runs.push(run_exporter(pg, o.secs));
    }
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| stat(&runs.iter().map(f).collect::<Vec<_>>());
    let a = |f: fn(&AgentRun) -> f64| stat(&agent_runs.iter().map(f).collect::<Vec<_>>()).med;
    let rss = col(|r| r.0);
    let cpu = col(|r| r.1);
    let pgcpu = col(|r| r.2);
    let per_scrape = col(|r| r.3);
    rep.add(
        "exporter steady RSS (MB)",
        fmt_stat(
            Stat {
                med: rss.med / 1024.0,
                min: rss.min / 1024.0,
                max: rss.max / 1024.0,
            },
            2,
        ),
        "",
    );
    rep.add(
        "exporter CPU per scrape, incl. 10 s idle (ms)",
        fmt_stat(per_scrape, 2),
        "",
    );
    rep.add(
        "exporter CPU per minute, one scrape per 60 s (ms)",
        fmt_stat(cpu, 2),
        "",
    );
    rep.add(
        "PostgreSQL CPU of the exporter's backends (ms/min)",
        fmt_stat(pgcpu, 1),
        "",
    );
    rep.add(
        "ratio agent/exporter: steady RSS",
        format!("{:.2}", a(|r| r.steady_rss_kb) / rss.med),
        "",
    );
    rep.add(
        "ratio agent/exporter: agent CPU per minute",
        format!("{:.2}", a(|r| r.cpu_ms_per_min) / cpu.med),
        "",
    );
    // The agent's PostgreSQL CPU at the default 60 s interval: 60 samples and one cycle, from
    // the in-process figures (the process runs 6 cycles a minute here).
    let agent_pg = stat(
        &costs
            .iter()
            .map(|c| c.sample_pg_us * 60.0 / 1e3 + c.stmt_pg_ms)
            .collect::<Vec<_>>(),
    )
    .med;
    rep.add(
        "ratio agent/exporter: PostgreSQL CPU per minute",
        format!(
            "{:.2} ({agent_pg:.1} / {:.1} ms)",
            agent_pg / pgcpu.med,
            pgcpu.med
        ),
        "",
    );
}

/// Runs postgres_exporter scraped every `INTERVAL_S` seconds; returns (steady RSS kB, CPU ms per
/// minute at one scrape per 60 s, PG CPU ms per minute at one scrape per 60 s, CPU ms per
/// scrape).
fn run_exporter(pg: &TestPg, secs: u64) -> (f64, f64, f64, f64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dsn = format!(
        "host={} port={} user={EXPORTER_ROLE} dbname=postgres sslmode=disable",
        pg.socket_dir().display(),
        pg.port()
    );
    let mut child = Command::new(EXPORTER_BIN)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .env_clear()
        .env("DATA_SOURCE_NAME", dsn)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres_exporter");
    let pid = child.id() as i32;
    let scrape = || {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            return buf.len();
        }
        0
    };
    std::thread::sleep(Duration::from_millis(500));
    // Warm-up scrape (connections, caches), like the agent's warm-up cycle.
    scrape();
    let mut admin = pg.admin();
    let mut backends = BackendCpu::default();
    backends.poll(&mut admin, EXPORTER_ROLE);
    let cpu0 = process_cpu_ns(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let mut n = 0;
    let stop = Arc::new(AtomicBool::new(false));
    while t0.elapsed() < Duration::from_secs(secs) {
        if t0.elapsed() >= Duration::from_secs(n * INTERVAL_S) {
            scrape();
            n += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kb(pid).0 as f64);
        backends.poll(&mut admin, EXPORTER_ROLE);
    }
    stop.store(true, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (process_cpu_ns(pid) - cpu0) as f64;
    let _ = child.kill();
    let _ = child.wait();
    let per_scrape = cpu / n as f64;
    // An exporter is idle between scrapes: its minute at a 60 s scrape interval is one scrape
    // plus idle time (measured together here; the idle share scales with wall time).
    let per_min = per_scrape / 1e6;
    let pg_per_scrape = backends.total_ns() as f64 / n as f64;
    let _ = wall;
    (
        stat(&rss).med,
        per_min,
        pg_per_scrape / 1e6,
        per_scrape / 1e6,
    )
}

// ---------------------------------------------------------------------------------------------
// scale (issue 16): the sampler at 100, 400 and 1,000 active sessions

/// Active-session counts of the scale scenario (`--only scale`).
const SCALE_SIZES: [usize; 3] = [100, 400, 1_000];
/// Seconds of 1 s sampling measured per size and variant (the rate is scaled to 60 s).
const SCALE_WINDOW_S: u64 = 20;
/// Samples at the 250 ms burst period per size and variant.
const SCALE_BURST_SAMPLES: usize = 8;
const SCALE_APP: &str = "bitville-bench-scale";

/// One size and variant of the scale scenario.
struct ScaleRow {
    sessions: usize,
    variant: &'static str,
    rows: usize,
    first_cpu_us: f64,
    cpu_us: Stat,
    wall_us: Stat,
    pg_us: Stat,
    samples_per_60: f64,
    burst_cpu_us: f64,
    burst_pg_us: f64,
    /// Share of the 1 s samples' CPU spent in the kernel (syscalls: /proc, the socket).
    sys_share: f64,
}

/// Runs a fresh sampler against the sessions held now: two warm-up samples, 1 s sampling for
/// `SCALE_WINDOW_S` (a sample that overruns its second skips the next slot, as the daemon's
/// pacer does), then `SCALE_BURST_SAMPLES` at 250 ms.
fn measure_scale(
    c: &mut bitville_pg_agent::pool::PooledClient,
    sessions: usize,
    variant: &'static str,
) -> ScaleRow {
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let sched = format!("/proc/{pid}/schedstat");
    let pg_ns = || schedstat_ns(Path::new(&sched)).unwrap_or(0);
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let c0 = thread_cpu_us();
    let first = sampler.sample(c).map(|s| s.n_rows).unwrap_or(0);
    let first_cpu = (thread_cpu_us() - c0) as f64;
    std::thread::sleep(Duration::from_millis(500));
    let _ = sampler.sample(c);
    let (mut cpu, mut wall, mut pgc) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = first;
    let start = Instant::now();
    let mut slot = 1u64;
    let mut taken = 0usize;
    let (u0, s0) = thread_user_sys_us();
    loop {
        let at = start + Duration::from_secs(slot);
        if at > start + Duration::from_secs(SCALE_WINDOW_S) {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let p0 = pg_ns();
        let t = Instant::now();
        let c0 = thread_cpu_us();
        if let Ok(s) = sampler.sample(c) {
            rows = s.n_rows;
        }
        cpu.push((thread_cpu_us() - c0) as f64);
        wall.push(t.elapsed().as_secs_f64() * 1e6);
        pgc.push((pg_ns() - p0) as f64 / 1e3);
        taken += 1;
        // The next slot not yet begun.
        slot = start.elapsed().as_secs() + 1;
    }
    let (u1, s1) = thread_user_sys_us();
    let sys_share = (s1 - s0) as f64 / ((u1 - u0) + (s1 - s0)).max(1) as f64;
    let mut bcpu = Vec::new();
    let mut bpg = Vec::new();
    let bstart = Instant::now();
    // As the daemon's sampler thread says before a burst's samples.
    sampler.set_sub_second(true);
    for k in 1..=SCALE_BURST_SAMPLES as u32 {
        std::thread::sleep(
            (bstart + Duration::from_millis(250) * k).saturating_duration_since(Instant::now()),
        );
        let p0 = pg_ns();
        let c0 = thread_cpu_us();
        let _ = sampler.sample(c);
        bcpu.push((thread_cpu_us() - c0) as f64);
        bpg.push((pg_ns() - p0) as f64 / 1e3);
    }
    let _ = sampler.finish_interval();
    ScaleRow {
        sessions,
        variant,
        rows,
        first_cpu_us: first_cpu,
        cpu_us: stat(&cpu),
        wall_us: stat(&wall),
        pg_us: stat(&pgc),
        samples_per_60: taken as f64 * 60.0 / SCALE_WINDOW_S as f64,
        burst_cpu_us: stat(&bcpu).med,
        burst_pg_us: stat(&bpg).med,
        sys_share,
    }
}

fn print_scale_table(rows: &[ScaleRow]) {
    println!(
        "\n  | sessions | variant | rows | first sample CPU (µs) | CPU per sample (µs) | µs per active session | wall per sample (µs) | PG CPU per sample (µs) | samples per 60 s | agent CPU ms/min at 1 s | at 250 ms burst | burst/1 s cost per second |"
    );
    println!("  |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let per_min_1s = r.cpu_us.med * 60.0 / 1e3;
        let per_min_burst = r.burst_cpu_us * 240.0 / 1e3;
        println!(
            "  | {} | {} | {} | {:.0} | {} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            r.sessions,
            r.variant,
            r.rows,
            r.first_cpu_us,
            fmt_stat(r.cpu_us, 0),
            r.cpu_us.med / r.sessions as f64,
            fmt_stat(r.wall_us, 0),
            fmt_stat(r.pg_us, 0),
            r.samples_per_60,
            per_min_1s,
            per_min_burst,
            per_min_burst / per_min_1s,
        );
    }
    println!(
        "  (kernel share of the 1 s samples' CPU: {})",
        rows.iter()
            .map(|r| format!("{:.0} %", r.sys_share * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "  (burst: {SCALE_BURST_SAMPLES} samples at 250 ms, median CPU {}; PG CPU per burst sample {})",
        rows.iter()
            .map(|r| format!("{:.0}", r.burst_cpu_us))
            .collect::<Vec<_>>()
            .join(" / "),
        rows.iter()
            .map(|r| format!("{:.0}", r.burst_pg_us))
            .collect::<Vec<_>>()
            .join(" / ")
    );
}

fn scenario_scale(o: &Opts, rep: &mut Report) {
    let max = *o.sizes.iter().max().unwrap_or(&1_000);
    println!(
        "\n== scale (issue 16): the activity sampler at {:?} active sessions, pg_sleep and lock waiters",
        o.sizes
    );
    let pg = TestPg::builder()
        .setting("max_connections", &(max + 30).to_string())
        .start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE scale_lock (id int); INSERT INTO scale_lock VALUES (1)")
        .unwrap();
    let mut pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let mut holders = sessions::Holders::new(&pg, SCALE_APP);
    let mut rows = Vec::new();
    let mut agent_at_400 = None;
    for &n in &o.sizes {
        holders.grow_to(n);
        // pg_sleep
        holders.run_all("SELECT pg_sleep(3600)");
        if !holders.wait_sessions(&mut admin, n, "wait_event = 'PgSleep'") {
            println!("  ({n}: not every session reached pg_sleep)");
        }
        if !o.callgrind_only {
            rows.push(measure_scale(&mut c, n, "pg_sleep"));
        }
        if n == 400 && o.callgrind {
            callgrind_profile(&pg, n, "");
        }
        holders.cancel_all(&mut admin);
        holders.wait_all();
        // Lock waiters behind one holder.
        let mut holder = pg.admin();
        holder
            .batch_execute("BEGIN; LOCK TABLE scale_lock IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        holders.run_all("SELECT count(*) FROM scale_lock");
        if !holders.wait_sessions(&mut admin, n, "wait_event_type = 'Lock'") {
            println!("  ({n}: not every session is waiting on the lock)");
        }
        if !o.callgrind_only {
            rows.push(measure_scale(&mut c, n, "lock waiters"));
        }
        if n == 400 && o.callgrind {
            callgrind_profile(&pg, n, ".lock");
        }
        holder.batch_execute("COMMIT").unwrap();
        holders.wait_all();
        if n == 400 && !o.callgrind_only {
            // The agent process itself at 400 sessions in pg_sleep: its sampler thread does more
            // than `ActivitySampler::sample` (spike detector, timeline, flight recorder). The
            // bench's own session of the role is closed first: the agent counts its role's
            // sessions against its pool size.
            drop(c);
            drop(pool);
            holders.run_all("SELECT pg_sleep(3600)");
            holders.wait_sessions(&mut admin, n, "wait_event = 'PgSleep'");
            agent_at_400 = Some(agent_at_400_both(&pg));
            holders.cancel_all(&mut admin);
            holders.wait_all();
            pool = Pool::new(&pg.db_config());
            c = pool.acquire().unwrap();
        }
        let r = &rows[rows.len().saturating_sub(2)..];
        for r in r {
            rep.add(
                &format!(
                    "{} sessions, {}: CPU per sample (µs)",
                    r.sessions, r.variant
                ),
                fmt_stat(r.cpu_us, 0),
                if r.sessions == 400 {
                    "target ≤ 2,000 (5 µs per session)"
                } else {
                    ""
                },
            );
        }
    }
    holders.close();
    drop(c);
    print_scale_table(&rows);
    if let Some(runs) = agent_at_400 {
        for (a, what) in runs.iter().zip([
            "cost control off (sample_cpu_budget_ms = 0)",
            "defaults (sample_cpu_budget_ms = 5)",
        ]) {
            println!(
                "  agent process at 400 sessions in pg_sleep, {what} ({SCALE_WINDOW_S} s after a warm-up cycle): \
                 sampler thread {:.0} µs CPU per second = {:.0} ms/min; agent CPU per minute \
                 {:.0} ms; PostgreSQL CPU of its backends {:.0} ms/min (10 s cycles); steady RSS {:.2} MB; \
                 sample_cost {}",
                a.sampler_us_per_sample,
                a.sampler_us_per_sample * 60.0 / 1e3,
                a.cpu_ms_per_min,
                a.pg_cpu_ms_per_min,
                a.steady_rss_kb / 1024.0,
                a.sample_cost
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |c| c.to_string())
            );
        }
    }
    // Backends exit a moment after their client hangs up: wait up to 10 s for all of them.
    let t = Instant::now();
    let left = loop {
        let left: i64 = admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{SCALE_APP}'"
                ),
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1);
        if left == 0 || t.elapsed() > Duration::from_secs(10) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("  (scale sessions still connected at the end: {left})");
}

/// The agent process against the sessions held now, with the cost control off (the full cost,
/// comparable with the runs before it existed) and at its default budget.
fn agent_at_400_both(pg: &TestPg) -> [AgentRun; 2] {
    let off = run_agent_with(pg, SCALE_WINDOW_S, "sample_cpu_budget_ms = 0").0;
    [off, run_agent(pg, SCALE_WINDOW_S)]
}

/// `--sample-child <socket dir> <port> <samples>`: connects as the monitoring role and takes
/// `samples` samples back to back, then exits. Run under callgrind by the scale scenario.
fn sample_child(args: &[String]) {
    let cfg = bitville_pg_agent::config::DatabaseConfig {
        host: args[0].clone(),
        port: args[1].parse().expect("port"),
        dbname: "postgres".into(),
        user: MONITOR_ROLE.into(),
        password: bitville_pg_agent::config::Secret::new(""),
        statement_timeout: Duration::from_millis(60_000),
        lock_timeout: Duration::from_millis(100),
        idle_in_transaction_timeout: Duration::from_millis(10_000),
        connect_timeout: Duration::from_secs(30),
        acquire_timeout: Duration::from_secs(60),
        // The scale scenario's own sampler holds one session of the role already.
        pool_max_size: 5,
    };
    let n: usize = args[2].parse().expect("samples");
    let pool = Pool::new(&cfg);
    let mut c = pool.acquire().expect("connect");
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    for _ in 0..n {
        let s = sampler.sample(&mut c).expect("sample");
        eprintln!("sample-child: {} rows", s.n_rows);
    }
}

/// Runs this bench's sampler child (`--sample-child`, `samples` samples against `pg`) under the
/// tool `tool` starts (valgrind, strace), output discarded.
fn sample_child_under(
    pg: &TestPg,
    exe: &Path,
    samples: usize,
    tool: &mut Command,
) -> std::io::Result<std::process::ExitStatus> {
    tool.arg(exe)
        .arg("--sample-child")
        .arg(pg.socket_dir())
        .arg(pg.port().to_string())
        .arg(samples.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// Runs the sampler child under callgrind with 1 and 11 samples against the sessions held now;
/// the difference over 10 is what one steady sample costs, in total and per function.
/// `variant` ("" for pg_sleep, ".lock" for lock waiters) names the output files.
fn callgrind_profile(pg: &TestPg, n: usize, variant: &str) {
    let exe = std::env::current_exe().expect("current exe");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut totals = Vec::new();
    for samples in [1usize, 11] {
        let out = dir.join(format!("callgrind.scale{n}{variant}.{samples}.out"));
        let t = Instant::now();
        let st = sample_child_under(
            pg,
            &exe,
            samples,
            Command::new("valgrind")
                .args(["--tool=callgrind", "-q"])
                .arg(format!("--callgrind-out-file={}", out.display())),
        );
        if !matches!(st, Ok(s) if s.success()) {
            println!("  callgrind run failed ({st:?}); is valgrind installed?");
            return;
        }
        println!(
            "  callgrind, {samples} samples at {n} sessions: {} ({:.0} s)",
            out.display(),
            t.elapsed().as_secs_f64()
        );
        totals.push(callgrind::annotate(&out));
    }
    let total = |v: &[(u64, String)]| v.first().map_or(0, |x| x.0);
    let (one, eleven) = (&totals[0], &totals[1]);
    println!(
        "  instructions{variant}: 1 sample {} (process total, with connect), 11 samples {}; one steady sample = {} ({} per session)",
        total(one),
        total(eleven),
        (total(eleven) - total(one)) / 10,
        (total(eleven) - total(one)) / 10 / n as u64
    );
    let base: HashMap<&str, u64> = one.iter().map(|(ir, f)| (f.as_str(), *ir)).collect();
    let mut steady: Vec<(u64, &str)> = eleven
        .iter()
        .map(|(ir, f)| {
            (
                ir.saturating_sub(*base.get(f.as_str()).unwrap_or(&0)) / 10,
                f.as_str(),
            )
        })
        .collect();
    steady.sort_by_key(|b| std::cmp::Reverse(b.0));
    println!("  top functions, inclusive instructions per steady sample at {n} sessions:");
    for (ir, f) in steady.iter().skip(1).take(40) {
        println!("    {ir:>12}  {f}");
    }
    syscall_profile(pg, n, variant);
}

/// Syscalls per steady sample (the kernel side callgrind does not see): the sampler child
/// under `strace -c` with 1 and 11 samples, (11 - 1) / 10 per syscall. Skipped without strace.
fn syscall_profile(pg: &TestPg, n: usize, variant: &str) {
    let exe = std::env::current_exe().expect("current exe");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut counts: Vec<HashMap<String, u64>> = Vec::new();
    for samples in [1usize, 11] {
        let out = dir.join(format!("strace.scale{n}{variant}.{samples}.txt"));
        let st = sample_child_under(
            pg,
            &exe,
            samples,
            Command::new("strace").args(["-c", "-f", "-o"]).arg(&out),
        );
        if !matches!(st, Ok(s) if s.success()) {
            println!("  strace run failed ({st:?}); is strace installed?");
            return;
        }
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let mut m = HashMap::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[0].parse::<f64>().is_err() {
                continue;
            }
            let calls = f[3].parse::<u64>().unwrap_or(0);
            m.insert(f[f.len() - 1].to_string(), calls);
        }
        counts.push(m);
    }
    let (one, eleven) = (&counts[0], &counts[1]);
    let mut per: Vec<(u64, &str)> = eleven
        .iter()
        .filter(|(k, _)| k.as_str() != "total")
        .map(|(k, v)| (v.saturating_sub(*one.get(k).unwrap_or(&0)) / 10, k.as_str()))
        .filter(|(v, _)| *v > 0)
        .collect();
    per.sort_by_key(|b| std::cmp::Reverse(b.0));
    let total: u64 = per.iter().map(|p| p.0).sum();
    println!(
        "  syscalls{variant} per steady sample at {n} sessions: {total} ({})",
        per.iter()
            .map(|(v, k)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--sample-child") {
        sample_child(&args[i + 1..]);
        return;
    }
    let mut o = Opts {
        runs: 3,
        secs: 30,
        only: Vec::new(),
        compare: false,
        callgrind: false,
        sizes: SCALE_SIZES.to_vec(),
        callgrind_only: false,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                o.runs = args[i + 1].parse().unwrap();
                i += 1;
            }
            "--secs" => {
                o.secs = args[i + 1].parse().unwrap();
                i += 1;
            }
            "--only" => {
                o.only = args[i + 1].split(',').map(str::to_string).collect();
                i += 1;
            }
            "--compare" => o.compare = true,
            "--callgrind" => o.callgrind = true,
            "--no-load-rule" => {
                // The load1 rule fires on a loaded shared VM and bursts the sampler.
                let _ = AGENT_EXTRA_SECTIONS.set("[spike]\nload_per_cpu = 0\n".into());
            }
            "--callgrind-only" => {
                o.callgrind = true;
                o.callgrind_only = true;
            }
            "--sizes" => {
                o.sizes = args[i + 1]
                    .split(',')
                    .map(|n| n.parse().expect("--sizes: whole numbers"))
                    .collect();
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    println!("== bitville-pg-agent cost benchmark");
    println!(
        "machine: {} cores, {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name\t: "))
            .unwrap_or("?"),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "runs per scenario: {}, measured seconds per run: {} (after one warm-up cycle), interval_s = {INTERVAL_S}, sample 1 s",
        o.runs, o.secs
    );
    let mut rep = Report { rows: Vec::new() };
    if o.compare {
        if want(&o, "2") {
            scenario_pgbench(&o, &mut rep);
        }
        if want(&o, "3") {
            scenario_big(&o, &mut rep);
        }
    } else {
        binary_size(&mut rep);
        if want(&o, "1") {
            scenario_idle(&o, &mut rep);
        }
        if want(&o, "2") {
            scenario_pgbench(&o, &mut rep);
        }
        if want(&o, "3") {
            scenario_big(&o, &mut rep);
        }
        if want(&o, "4") {
            scenario_outage(&o, &mut rep);
        }
        if want(&o, "5") {
            scenario_logburst(&o, &mut rep);
        }
        if want(&o, "grow") {
            scenario_grow(&o, &mut rep);
        }
        if want(&o, "spike") {
            scenario_spike(&o, &mut rep);
        }
        if want(&o, "quiet") {
            scenario_quiet(&o, &mut rep);
        }
        if want(&o, "scale") {
            scenario_scale(&o, &mut rep);
        }
    }
    println!(
        "\nload average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = rep.rows.len();
}
