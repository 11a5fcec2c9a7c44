//! The daemon's sampler thread under pgbench -c 8 (issue 16): what one tick of the real agent
//! binary costs beyond `ActivitySampler::sample`. A plain program (harness = false), never a
//! test: it prints figures and asserts none.
//!
//! `cargo bench --bench sampler_profile -- [--secs S] [--load-rule on|off|both|none] [--callgrind]
//! [--sessions N] [--floor] [--wake-cost]` (`make bench-sampler` builds unstripped with line tables, so
//! callgrind names functions). `--floor`: first the bare per-second job in the bench process
//! (one query, then each row's `/proc` files), the least any agent doing it pays. `--sessions N`: N sessions in `pg_sleep` instead of pgbench (`--lock-waiters`:
//! waiting on one session's lock instead). `BENCH_AGENT_BIN`
//! profiles another build of the agent (e.g. the commit before a change). `--wake-cost`: only
//! what a thread that does nothing but sleep pays per wake-up (no server).
//!
//! - Native: the agent runs `S` seconds (after a warm-up of 12 s) with the spike detector's load
//!   rule on (`load_per_cpu = 2`, the default) and/or off (`0`); sampler thread CPU from
//!   `/proc/<pid>/task/<tid>/schedstat` divided by the ticks taken (timeline rows of the flight
//!   recorder over the same time), and whether the agent logged a load spike; then every
//!   thread's CPU per minute by thread name, and the RSS at the end.
//! - `--callgrind`: the agent runs under `valgrind --tool=callgrind --separate-threads=yes`
//!   (load rule off); `callgrind_control -z` zeroes the counters after a 15 s warm-up and
//!   `callgrind_control -d` dumps them S seconds later, so neither the start nor the interval
//!   summary (first one at 60 s, or at the stop) is in the profile; one tick = the sampler
//!   thread's instructions / the ticks in that window, per function the same from
//!   `callgrind_annotate --inclusive=yes`. User-space instructions only.

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/sessions.rs"]
mod sessions;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::AgentProcess;
use common::listener::TestListener;
use common::{TempDir, TestPg};

/// Ticks the agent took from `since` to `until` (unix seconds): the timeline rows of its
/// flight recorder in that window (read after the stop, which writes the rows still pending).
fn recorder_rows(state: &Path, since: f64, until: f64) -> u64 {
    let t_of = |l: &str| -> Option<f64> {
        let rest = l.strip_prefix(r#"{"t":"#)?;
        rest[..rest.find(',')?].parse().ok()
    };
    ["flight-recorder.0.jsonl", "flight-recorder.1.jsonl"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(state.join(f)).ok())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains(r#""k":"row""#))
                .filter(|l| t_of(l).is_some_and(|t| t >= since && t < until))
                .count() as u64
        })
        .sum()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Nanoseconds on CPU of every thread of `pid`, summed by thread name (`comm`).
fn threads_ns(pid: i32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *by_name.entry(comm.trim().to_string()).or_insert(0) += ns;
    }
    by_name
}

fn ini(pg: &TestPg, l: &TestListener, work: &Path, load_rule: bool) -> PathBuf {
    let path = work.join("agent.ini");
    let text = pg.agent_ini(&format!(
        "[collection]\nstate_dir = {}\nlog_path = {}\n\
         [spike]\nload_per_cpu = {}\n\
         [listener]\nurl = {}\napi_key = bench-key\nproject_id = bench\n\
         [buffer]\npath = {}\n",
        work.join("state").display(),
        pg.server_log().display(),
        if load_rule { 2 } else { 0 },
        l.url(),
        work.join("spool").display()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn pgbench(pg: &TestPg, args: &[&str]) -> Command {
    let mut c = Command::new(pg.bin_dir().join("pgbench"));
    c.args(args)
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn native(pg: &TestPg, secs: u64, load_rule: bool) {
    let l = TestListener::start("bench-key");
    let work = TempDir::new("bench-sampler");
    let ini = ini(pg, &l, work.path(), load_rule);
    let state = work.path().join("state");
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    std::thread::sleep(Duration::from_secs(12));
    let (all0, u0, t0) = (threads_ns(agent.pid()), unix_now(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (all1, u1) = (threads_ns(agent.pid()), unix_now());
    let wall = t0.elapsed().as_secs_f64();
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let ns0 = all0.get("sampler").copied().unwrap_or(0);
    let ns1 = all1.get("sampler").copied().unwrap_or(0);
    agent.stop();
    let rows = recorder_rows(&state, u0, u1).max(1);
    let spikes = agent.log_text().matches("load spike:").count();
    println!(
        "  native, load rule {}: sampler {:.0} µs per tick, {:.0} µs per s, {:.2} ticks per s ({rows} in {wall:.0} s), spikes logged {spikes}; load {}",
        if load_rule { "on " } else { "off" },
        (ns1 - ns0) as f64 / 1e3 / rows as f64,
        (ns1 - ns0) as f64 / 1e3 / wall,
        rows as f64 / wall,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let per_min = |name: &String, ns1: u64| {
        (ns1 - all0.get(name).copied().unwrap_or(0).min(ns1)) as f64 / 1e6 / wall * 60.0
    };
    let total: f64 = all1.iter().map(|(n, &ns)| per_min(n, ns)).sum();
    let threads: Vec<String> = all1
        .iter()
        .map(|(n, &ns)| format!("{n} {:.1}", per_min(n, ns)))
        .collect();
    println!(
        "    every thread, ms of CPU per minute: {total:.1} in all; {}; RSS at the end {:.2} MB",
        threads.join(", "),
        rss_kb / 1024.0
    );
}

/// The floor of the sampler's job on this machine: a bare loop that once a second runs one
/// prepared pg_stat_activity query (the columns a sample needs, decoded as borrowed `&str`),
/// preads `/proc/<pid>/stat` and `/proc/<pid>/io` of every row's pid through files kept open,
/// and `/proc/loadavg` (`with_proc`; else the query alone). No aggregation, no JSON, no other thread: what any agent that reads
/// each backend's CPU and I/O every second pays at least. CPU from the loop thread's schedstat.
fn floor(pg: &TestPg, secs: u64, with_proc: bool) {
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;
    const SQL: &str = "SELECT pid, backend_type, state, wait_event_type, wait_event, \
         query_start::text, xact_start::text, datname::text, usename::text, application_name, \
         query FROM pg_stat_activity WHERE state IS DISTINCT FROM 'idle' AND pid <> pg_backend_pid()";
    let mut c = pg.admin();
    let stmt = c.prepare(SQL).expect("prepare");
    let mut files: HashMap<i32, (std::fs::File, Option<std::fs::File>)> = HashMap::new();
    let mut buf = vec![0u8; 4096];
    let mut tick = |c: &mut postgres::Client| -> usize {
        let rows = c.query(&stmt, &[]).expect("query");
        let mut bytes = 0;
        for r in &rows {
            let pid: i32 = r.get(0);
            for i in 1..11 {
                bytes += r.get::<_, Option<&str>>(i).map_or(0, str::len);
            }
            if !with_proc {
                continue;
            }
            let (stat, io) = files.entry(pid).or_insert_with(|| {
                (
                    std::fs::File::open(format!("/proc/{pid}/stat")).expect("stat"),
                    std::fs::File::open(format!("/proc/{pid}/io")).ok(),
                )
            });
            bytes += stat.read_at(&mut buf, 0).unwrap_or(0);
            if let Some(io) = io {
                bytes += io.read_at(&mut buf, 0).unwrap_or(0);
            }
        }
        if with_proc {
            bytes += std::fs::read("/proc/loadavg").map_or(0, |b| b.len());
        }
        bytes + rows.len()
    };
    let self_ns = || {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for _ in 0..5 {
        tick(&mut c);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (ns0, t0) = (self_ns(), Instant::now());
    let mut rows = 0;
    for _ in 0..secs {
        rows += tick(&mut c).min(1);
        std::thread::sleep(Duration::from_secs(1));
    }
    let ns = self_ns() - ns0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "  floor ({}): {:.0} µs per tick, {:.1} ms per minute ({rows} ticks with rows; {} pids seen)",
        if with_proc {
            "one query, /proc stat+io per row, loadavg; kept-open files"
        } else {
            "the query alone"
        },
        ns as f64 / 1e3 / secs as f64,
        ns as f64 / 1e6 / wall * 60.0,
        files.len()
    );
}

/// The binary profiled: `BENCH_AGENT_BIN` (another build, e.g. the commit before a change) or
/// this build's.
fn agent_binary() -> String {
    std::env::var("BENCH_AGENT_BIN").unwrap_or_else(|_| common::agent::AGENT_BIN.to_string())
}

/// Runs the agent under callgrind: counters zeroed after a 15 s warm-up, dumped `secs` later
/// (so neither the start nor the summary at the stop is in it); prints the sampler thread's
/// instructions per tick and its top functions.
fn callgrind(pg: &TestPg, secs: u64, tag: &str) {
    let l = TestListener::start("bench-key");
    let work = TempDir::new("bench-sampler-cg");
    let ini = ini(pg, &l, work.path(), false);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let prefix = format!("callgrind.sampler.{tag}.out");
    let out = target.join(&prefix);
    if let Ok(dir) = std::fs::read_dir(&target) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let wrapper = work.path().join("agent-under-callgrind.sh");
    let script = format!(
        "#!/bin/sh\nexec valgrind --tool=callgrind -q --separate-threads=yes --callgrind-out-file={} {} \"$@\"\n",
        out.display(),
        agent_binary()
    );
    if std::fs::write(&wrapper, script).is_err()
        || !Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .is_ok_and(|s| s.success())
    {
        println!("  callgrind: cannot write the wrapper script");
        return;
    }
    std::env::set_var("BITVILLE_AGENT_BIN", &wrapper);
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    std::env::remove_var("BITVILLE_AGENT_BIN");
    let control = |arg: &str| {
        let o = Command::new("callgrind_control")
            .arg(arg)
            .arg(agent.pid().to_string())
            .output();
        let text = o.as_ref().map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        });
        println!(
            "  callgrind_control {arg}: {}",
            text.trim().replace('\n', " / ")
        );
        o.is_ok_and(|o| o.status.success())
    };
    std::thread::sleep(Duration::from_secs(15));
    let zeroed = control("-z");
    let u0 = unix_now();
    std::thread::sleep(Duration::from_secs(secs));
    let dumped = control("-d");
    let u1 = unix_now();
    // The dump is written by the threads as they next run.
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    let ticks = recorder_rows(&work.path().join("state"), u0, u1).max(1);
    if !(zeroed && dumped) {
        println!("  callgrind {tag}: callgrind_control failed (is valgrind installed?)");
        return;
    }
    // One file per thread and dump: the sampler thread is the one whose final file (written at
    // the stop) ran `run_sampler`; its dump is part 1 of the same thread number.
    let Ok(dir) = std::fs::read_dir(&target) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(thread) = name.strip_prefix(&format!("{prefix}-")) else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !text.contains("run_sampler") {
            continue;
        }
        let part = target.join(format!("{prefix}.1-{thread}"));
        let prof = callgrind::annotate(&part);
        let total = prof.first().map_or(0, |x| x.0);
        println!(
            "  callgrind {tag}: {} ({ticks} ticks in {:.0} s): sampler thread {} instructions per tick",
            part.display(),
            u1 - u0,
            total / ticks
        );
        println!("  top functions, inclusive instructions per tick:");
        for (ir, f) in prof.iter().take(70) {
            println!("    {:>10}  {f}", ir / ticks);
        }
        return;
    }
    println!(
        "  callgrind {tag}: no sampler thread profile in {}",
        target.display()
    );
}

/// The statement the held sessions run: a sleep, or a read behind the holder's lock.
const SLEEP_SQL: &str = "SELECT pg_sleep(3600)";
const WAIT_SQL: &str = "SELECT count(*) FROM hot16_lock";
const SLEEPERS_APP: &str = "bitville-bench-sleepers";

/// Holds `n` sessions in `pg_sleep` or waiting on a lock until dropped (then ends them).
struct Sleepers {
    admin: postgres::Client,
    holder: Option<postgres::Client>,
    sessions: Option<sessions::Holders>,
}

fn sleepers(pg: &TestPg, n: usize, lock: bool) -> Sleepers {
    let mut admin = pg.admin();
    let holder = lock.then(|| {
        admin
            .batch_execute("CREATE TABLE IF NOT EXISTS hot16_lock (i int)")
            .unwrap();
        let mut h = pg.admin();
        h.batch_execute("BEGIN; LOCK TABLE hot16_lock IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        h
    });
    let mut held = sessions::Holders::new(pg, SLEEPERS_APP);
    held.grow_to(n);
    held.run_all(if lock { WAIT_SQL } else { SLEEP_SQL });
    let cond = if lock {
        "wait_event_type = 'Lock'"
    } else {
        "wait_event = 'PgSleep'"
    };
    if !held.wait_sessions(&mut admin, n, cond) {
        println!("  (not every session reached {cond})");
    }
    Sleepers {
        admin,
        holder,
        sessions: Some(held),
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.batch_execute("COMMIT");
        }
        if let Some(held) = self.sessions.take() {
            held.cancel_all(&mut self.admin);
            held.wait_all();
            held.close();
        }
    }
}

/// `--wake-cost`: what a thread that only sleeps pays in CPU per wake-up, for sleeps of 10 ms,
/// 100 ms and 1 s (its own schedstat before and after): the fixed price of every thread that
/// wakes on a timer, before it does any work.
fn wake_cost() {
    let on_cpu_ns = || -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    for (sleep_ms, n) in [(10u64, 300u64), (100, 50), (1000, 10)] {
        let before = on_cpu_ns();
        for _ in 0..n {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
        let per_wake = on_cpu_ns().saturating_sub(before) as f64 / n as f64 / 1000.0;
        println!("  sleep {sleep_ms:>4} ms: {per_wake:.1} µs of CPU per wake-up ({n} wake-ups)");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 30;
    let mut rules = vec![false, true];
    let mut cg = false;
    let mut sessions = 0usize;
    let mut lock = false;
    let mut floor_too = false;
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--secs" => {
                secs = value(i).parse().expect("--secs N");
                i += 1;
            }
            "--load-rule" => {
                rules = match value(i).as_str() {
                    "on" => vec![true],
                    "off" => vec![false],
                    "none" => vec![],
                    _ => vec![false, true],
                };
                i += 1;
            }
            "--sessions" => {
                sessions = value(i).parse().expect("--sessions N");
                i += 1;
            }
            "--lock-waiters" => lock = true,
            "--callgrind" => cg = true,
            "--floor" => floor_too = true,
            "--wake-cost" => {
                wake_cost();
                return;
            }
            _ => {}
        }
        i += 1;
    }
    println!(
        "  load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let pg = TestPg::builder()
        .setting("max_connections", &(sessions + 100).to_string())
        .start();
    let (mut bench, _sleepers): (Option<Child>, Option<Sleepers>) = if sessions > 0 {
        println!(
            "== the daemon's sampler thread at {sessions} sessions {}",
            if lock {
                "waiting on a lock"
            } else {
                "in pg_sleep"
            }
        );
        (None, Some(sleepers(&pg, sessions, lock)))
    } else {
        println!("== the daemon's sampler thread under pgbench -c 8 (scale 5)");
        let st = pgbench(&pg, &["-i", "-q", "-s", "5"])
            .status()
            .expect("pgbench -i");
        assert!(st.success(), "pgbench -i");
        let child = pgbench(&pg, &["-n", "-c", "8", "-j", "2", "-T", "3600"])
            .spawn()
            .expect("pgbench");
        std::thread::sleep(Duration::from_secs(2));
        (Some(child), None)
    };
    if floor_too {
        floor(&pg, secs, false);
        floor(&pg, secs, true);
    }
    for r in rules {
        native(&pg, secs, r);
    }
    if cg {
        let tag = match (sessions, lock) {
            (0, _) => "pgbench".to_string(),
            (n, false) => format!("sleep{n}"),
            (n, true) => format!("lock{n}"),
        };
        callgrind(&pg, secs, &tag);
    }
    if let Some(b) = bench.as_mut() {
        let _ = b.kill();
        let _ = b.wait();
    }
}
