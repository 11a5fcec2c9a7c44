//! The daemon's sampler thread under pgbench -c 8 (issue 16): what one tick of the real agent
//! binary costs beyond `ActivitySampler::sample`. A plain program (harness = false), never a
//! test: it prints figures and asserts none.
//!
//! `cargo bench --bench sampler_profile -- [--secs S] [--load-rule on|off|both] [--callgrind]`
//! (`make bench-sampler` builds unstripped with line tables, so callgrind names functions).
//!
//! - Native: the agent runs `S` seconds (after a warm-up of 12 s) with the spike detector's load
//!   rule on (`load_per_cpu = 2`, the default) and/or off (`0`); sampler thread CPU from
//!   `/proc/<pid>/task/<tid>/schedstat` divided by the ticks taken (timeline rows of the flight
//!   recorder over the same time), and whether the agent logged a load spike.
//! - `--callgrind`: the agent runs under `valgrind --tool=callgrind --separate-threads=yes`
//!   twice, for 10 s and for 10 + S s; one steady tick of the sampler thread = (Ir(long) -
//!   Ir(short)) / (ticks(long) - ticks(short)), per function the same difference of
//!   `callgrind_annotate --inclusive=yes` figures. User-space instructions only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
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

fn sampler_ns(pid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut ns = 0;
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "sampler" {
            ns += std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns
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
    let (ns0, u0, t0) = (sampler_ns(agent.pid()), unix_now(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (ns1, u1) = (sampler_ns(agent.pid()), unix_now());
    let wall = t0.elapsed().as_secs_f64();
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
}

/// Inclusive instructions per `file:function` of one callgrind file.
fn annotate(out: &Path) -> Vec<(u64, String)> {
    let text = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(out)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let Some((num, rest)) = t.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        let f = rest
            .trim()
            .trim_start_matches(|c: char| c == '(' || c.is_ascii_digit() || c == '.' || c == '%')
            .trim_start_matches(')')
            .trim()
            .trim_end_matches(" [/work]")
            .to_string();
        let f = match f.find(" [") {
            Some(i) => f[..i].to_string(),
            None => f,
        };
        v.push((ir, f));
    }
    v
}

/// Runs the agent under callgrind for `secs`; the sampler thread's profile and the ticks.
fn callgrind_run(pg: &TestPg, secs: u64, tag: &str) -> Option<(Vec<(u64, String)>, u64)> {
    let l = TestListener::start("bench-key");
    let work = TempDir::new("bench-sampler-cg");
    let ini = ini(pg, &l, work.path(), false);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let out = target.join(format!("callgrind.sampler.{tag}.out"));
    for e in std::fs::read_dir(&target).ok()?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("callgrind.sampler.{tag}.out"))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let wrapper = work.path().join("agent-under-callgrind.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind -q --separate-threads=yes --callgrind-out-file={} {} \"$@\"\n",
            out.display(),
            common::agent::AGENT_BIN
        ),
    )
    .ok()?;
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .ok()?;
    std::env::set_var("BITVILLE_AGENT_BIN", &wrapper);
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    std::thread::sleep(Duration::from_secs(secs));
    agent.stop();
    std::env::remove_var("BITVILLE_AGENT_BIN");
    let ticks = recorder_rows(&work.path().join("state"), 0.0, f64::MAX);
    // One file per thread: the sampler's is the one that ran `run_sampler`.
    for e in std::fs::read_dir(&target).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("callgrind.sampler.{tag}.out-")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if text.contains("run_sampler") {
            println!("  callgrind {tag}: {} ({ticks} ticks)", e.path().display());
            return Some((annotate(&e.path()), ticks));
        }
    }
    println!("  callgrind {tag}: no sampler thread profile (is valgrind installed?)");
    None
}

fn callgrind(pg: &TestPg, secs: u64) {
    let Some((short, t_short)) = callgrind_run(pg, 10, "short") else {
        return;
    };
    let Some((long, t_long)) = callgrind_run(pg, 10 + secs, "long") else {
        return;
    };
    let ticks = t_long.saturating_sub(t_short).max(1);
    let total = |v: &[(u64, String)]| v.first().map_or(0, |x| x.0);
    println!(
        "  sampler thread instructions: {} ({t_short} ticks), {} ({t_long} ticks); one steady tick = {}",
        total(&short),
        total(&long),
        (total(&long).saturating_sub(total(&short))) / ticks
    );
    let base: HashMap<&str, u64> = short.iter().map(|(ir, f)| (f.as_str(), *ir)).collect();
    let mut per_tick: Vec<(u64, &str)> = long
        .iter()
        .map(|(ir, f)| {
            (
                ir.saturating_sub(*base.get(f.as_str()).unwrap_or(&0)) / ticks,
                f.as_str(),
            )
        })
        .collect();
    per_tick.sort_by_key(|b| std::cmp::Reverse(b.0));
    println!("  top functions, inclusive instructions per steady tick:");
    for (ir, f) in per_tick.iter().take(60) {
        println!("    {ir:>12}  {f}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 30;
    let mut rules = vec![false, true];
    let mut cg = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--secs" => {
                i += 1;
                secs = args[i].parse().expect("--secs N");
            }
            "--load-rule" => {
                i += 1;
                rules = match args[i].as_str() {
                    "on" => vec![true],
                    "off" => vec![false],
                    _ => vec![false, true],
                };
            }
            "--callgrind" => cg = true,
            "--native" => {}
            _ => {}
        }
        i += 1;
    }
    println!("== the daemon's sampler thread under pgbench -c 8 (scale 5)");
    println!(
        "  load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let pg = TestPg::builder().setting("max_connections", "100").start();
    let st = pgbench(&pg, &["-i", "-q", "-s", "5"])
        .status()
        .expect("pgbench -i");
    assert!(st.success(), "pgbench -i");
    let mut bench: Child = pgbench(&pg, &["-n", "-c", "8", "-j", "2", "-T", "3600"])
        .spawn()
        .expect("pgbench");
    std::thread::sleep(Duration::from_secs(2));
    for r in rules {
        native(&pg, secs, r);
    }
    if cg {
        callgrind(&pg, secs);
    }
    let _ = bench.kill();
    let _ = bench.wait();
}
