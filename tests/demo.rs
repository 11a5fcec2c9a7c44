//! `make demo`: the agent against a throwaway PostgreSQL server, with a readable summary.
//!
//! A plain program (harness = false) that reuses the integration tests' server harness: it starts
//! PostgreSQL with pg_stat_statements, writes an agent configuration for it, shows the effective
//! configuration, then runs the agent's start-up check and reports what it found. Everything it
//! started is stopped and removed at the end, also when a step fails.

mod common;

use std::process::Command;

use common::{TempDir, TestPg};

fn main() {
    println!("== bitville-pg-agent demo ==");
    let pg = TestPg::start();
    println!(
        "started a throwaway PostgreSQL {} on port {} (socket in {})",
        pg.major_version(),
        pg.port(),
        pg.socket_dir().display()
    );
    let work = TempDir::new("demo");
    let ini = work.path().join("agent.ini");
    let state = work.path().join("state");
    let spool = work.path().join("spool");
    std::fs::write(
        &ini,
        pg.agent_ini(&format!(
            "\n[collection]\ninterval_s = 2\nstate_dir = {}\n[buffer]\npath = {}\n[listener]\nurl = http://127.0.0.1:9/ingest/postgres\napi_key = demo-key\n",
            state.display(),
            spool.display()
        )),
    )
    .unwrap();
    let agent = env!("CARGO_BIN_EXE_bitville-pg-agent");

    println!("\n-- effective configuration (bitville-pg-agent --check-config) --");
    let out = Command::new(agent)
        .args(["--check-config", "-c"])
        .arg(&ini)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "--check-config failed");

    println!("\n-- start-up check (bitville-pg-agent -c agent.ini) --");
    let out = Command::new(agent).arg("-c").arg(&ini).output().unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the agent's start-up check failed");
    println!("\ndemo finished: the agent connected through its safe pool; everything started is being removed");
}
