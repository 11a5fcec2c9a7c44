//! The agent binary as a child process, for tests, the demo and the benchmarks.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The agent binary cargo built for these tests.
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_bitville-pg-agent");

/// [`AGENT_BIN`], or the binary `BITVILLE_AGENT_BIN` names (the benchmarks compare builds, e.g.
/// the static one or an older commit's).
pub fn agent_bin() -> std::ffi::OsString {
    std::env::var_os("BITVILLE_AGENT_BIN").unwrap_or_else(|| AGENT_BIN.into())
}

/// A running agent.
pub struct AgentProcess {
    child: Option<Child>,
    /// The file its standard error (its log) goes to.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `bitville-pg-agent -c <ini> <args>` with a clean environment; its log goes to
    /// `<dir>/agent.log`.
    pub fn start(ini: &Path, args: &[&str], dir: &Path) -> AgentProcess {
        let log = dir.join("agent.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(agent_bin())
            .arg("-c")
            .arg(ini)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start the agent");
        AgentProcess {
            child: Some(child),
            log,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the exit up to `limit`; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (up to 20 s); panics if it does not stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
            .expect("the agent stops within 20 s of SIGTERM")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
