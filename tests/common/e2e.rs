//! The end-to-end rig: a configuration for the real agent binary against a [`TestPg`] and a
//! [`TestListener`](super::listener::TestListener), kept in a [`TempDir`], and small helpers to
//! read what reached the listener.
//!
//! Defaults suit fast tests: `interval_s = 1`, `sample_interval_ms = 250`, the server's stderr log
//! tailed, a fast pace (6000 requests a minute), a 1 s breaker reset and the load1 spike rule
//! off. [`Rig::set`] changes a key and rewrites the file.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::{AgentProcess, AGENT_BIN};
use super::{TempDir, TestPg, MONITOR_ROLE};

/// The API key the rig's listener expects.
pub const KEY: &str = "e2e-key";

/// Liveness bound for waits: only a broken agent gets anywhere near it.
pub const LIVENESS: Duration = Duration::from_secs(60);

/// The agent's configuration for one test, in a temp directory.
pub struct Rig {
    /// The test's scratch directory (configuration, spool, state, agent log).
    pub work: TempDir,
    settings: Vec<(String, String, String)>,
}

/// How a one-shot run of the agent ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the agent's log).
    pub stderr: String,
}

impl Rig {
    /// A configuration for `pg` and the listener at `url`.
    pub fn new(name: &str, pg: &TestPg, url: &str) -> Rig {
        let work = TempDir::new(name);
        let w = work.path().to_path_buf();
        let mut rig = Rig {
            work,
            settings: Vec::new(),
        };
        let defaults = [
            ("database", "host", pg.socket_dir().display().to_string()),
            ("database", "port", pg.port().to_string()),
            ("database", "user", MONITOR_ROLE.to_string()),
            ("database", "name", "postgres".into()),
            ("collection", "interval_s", "1".into()),
            ("collection", "sample_interval_ms", "250".into()),
            (
                "collection",
                "state_dir",
                w.join("state").display().to_string(),
            ),
            (
                "collection",
                "log_path",
                pg.server_log().display().to_string(),
            ),
            ("listener", "url", url.to_string()),
            ("listener", "api_key", KEY.into()),
            ("listener", "project_id", "e2e".into()),
            ("listener", "max_requests_per_minute", "6000".into()),
            ("listener", "timeout_s", "5".into()),
            ("listener", "breaker_reset_s", "1".into()),
            ("buffer", "path", w.join("spool").display().to_string()),
            // The load1 spike rule would fire on a busy test machine (other builds): tests set
            // their spike thresholds themselves.
            ("spike", "load_per_cpu", "0".into()),
            // The tests run the debug binary, whose samples cost several times the release
            // agent's: the 2 ms cost budget would stretch their sampling. The cost control has
            // its own test (tests/sample_cost_control.rs).
            ("collection", "sample_cpu_budget_ms", "0".into()),
        ];
        for (s, k, v) in defaults {
            rig.settings.push((s.into(), k.into(), v));
        }
        rig.write();
        rig
    }

    /// Sets `[section] key = value` and rewrites the file.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Rig {
        match self
            .settings
            .iter_mut()
            .find(|(s, k, _)| s == section && k == key)
        {
            Some(entry) => entry.2 = value.to_string(),
            None => self
                .settings
                .push((section.into(), key.into(), value.into())),
        }
        self.write();
        self
    }

    /// The configuration as INI text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for section in [
            "database",
            "collection",
            "listener",
            "buffer",
            "log",
            "spike",
        ] {
            let keys: Vec<_> = self
                .settings
                .iter()
                .filter(|(s, _, _)| s == section)
                .collect();
            if keys.is_empty() {
                continue;
            }
            out.push_str(&format!("[{section}]\n"));
            for (_, k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    fn write(&self) {
        std::fs::write(self.ini(), self.text()).unwrap();
    }

    /// The configuration file.
    pub fn ini(&self) -> PathBuf {
        self.work.path().join("agent.ini")
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.work.path().join("spool")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.work.path().join("state")
    }

    /// Starts the agent as a daemon (its log: `<work>/agent.log`).
    pub fn start(&self) -> AgentProcess {
        self.start_with(&[])
    }

    /// Starts the agent with extra arguments.
    pub fn start_with(&self, args: &[&str]) -> AgentProcess {
        AgentProcess::start(&self.ini(), args, self.work.path())
    }

    /// `bitville-pg-agent -c <ini> <args>` with a clean environment, output captured.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(AGENT_BIN);
        cmd.arg("-c")
            .arg(self.ini())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd
    }

    /// Runs `bitville-pg-agent -c <ini> <args>` to its end (killed after `limit`).
    pub fn run(&self, args: &[&str], limit: Duration) -> Outcome {
        run_to_end(self.command(args), self.work.path(), limit)
    }
}

/// Runs `cmd` with stdout and stderr in files under `dir`; kills it and panics after `limit`.
pub fn run_to_end(mut cmd: Command, dir: &Path, limit: Duration) -> Outcome {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out_path = dir.join(format!("run-{n}.out"));
    let err_path = dir.join(format!("run-{n}.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn the agent");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Polls `pred` every 50 ms until it holds or `limit` passed; returns whether it holds.
pub fn wait_until(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The `source` of a body.
pub fn source(v: &Value) -> &str {
    v["source"].as_str().unwrap_or("")
}

/// `data.agent.collected_at` of a body (0 when missing).
pub fn collected_at(v: &Value) -> f64 {
    v["data"]["agent"]["collected_at"].as_f64().unwrap_or(0.0)
}

/// Whether some stored body of `src` was collected after `t` (unix seconds).
pub fn has_after(stored: &[Value], src: &str, t: f64) -> bool {
    stored
        .iter()
        .any(|v| source(v) == src && collected_at(v) > t)
}

/// The sequence numbers in `1..=max(seqs)` that are not in `seqs`.
pub fn gaps(seqs: &[u64]) -> Vec<u64> {
    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let max = set.iter().next_back().copied().unwrap_or(0);
    (1..=max).filter(|s| !set.contains(s)).collect()
}

/// Runs `sql` as superuser, ignoring the result (load for the collectors to see).
pub fn some_statements(pg: &TestPg, tag: &str) {
    let mut admin = pg.admin();
    admin
        .batch_execute(&format!("SELECT '{tag}', count(*) FROM pg_class"))
        .unwrap();
}
