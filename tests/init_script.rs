//! The POSIX init script `etc/init.d/bitville-pg-agent`, run as an operator would (`sh <script>
//! start|status|reload|restart|stop`) with every path pointed at a temp directory and `RUN_AS=`
//! (no user switch), against real PostgreSQL and a contract listener.
//!
//! Each scenario runs under every shell and start-stop-daemon combination available:
//! `sh` with Debian's start-stop-daemon, `sh` without any start-stop-daemon (the script's own
//! fallback), and, when BusyBox is installed, `busybox sh` with Debian's and with BusyBox's
//! start-stop-daemon first on PATH. Without BusyBox the test says so on its output.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::agent::AGENT_BIN;
use common::e2e::{run_to_end, wait_until, Outcome, Rig, KEY, LIVENESS};
use common::listener::{Answer, TestListener};
use common::{TempDir, TestPg};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/init.d/bitville-pg-agent");

/// One way of running the script.
struct Variant {
    name: &'static str,
    shell: Vec<String>,
    path: String,
    _bin: Option<TempDir>,
}

fn find_busybox() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/bin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("busybox"))
        .find(|p| p.exists())
}

fn variants() -> Vec<Variant> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut out = vec![
        Variant {
            name: "sh + start-stop-daemon",
            shell: vec!["sh".into()],
            path: path.clone(),
            _bin: None,
        },
        // Debian keeps start-stop-daemon in /usr/sbin: without it the script starts the agent
        // itself.
        Variant {
            name: "sh without start-stop-daemon",
            shell: vec!["sh".into()],
            path: "/usr/bin:/bin".into(),
            _bin: None,
        },
    ];
    match find_busybox() {
        Some(bb) => {
            let bin = TempDir::new("busybox-bin");
            std::os::unix::fs::symlink(&bb, bin.path().join("start-stop-daemon")).unwrap();
            let bb_path = format!("{}:{path}", bin.path().display());
            out.push(Variant {
                name: "busybox sh",
                shell: vec![bb.display().to_string(), "sh".into()],
                path: path.clone(),
                _bin: None,
            });
            out.push(Variant {
                name: "busybox sh + busybox start-stop-daemon",
                shell: vec![bb.display().to_string(), "sh".into()],
                path: bb_path,
                _bin: Some(bin),
            });
        }
        None => println!(
            "BusyBox is not installed: the script is tested with sh only \
             (apt-get install busybox to test it under busybox sh and its start-stop-daemon)"
        ),
    }
    out
}

/// Whether `pid` is a live agent process.
fn agent_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0
        && unsafe { libc::kill(pid, 0) } == 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("bitville-pg-agent"))
}

/// The service as the script sees it; kills whatever agent it left running when dropped.
struct Service<'a> {
    rig: &'a Rig,
    variant: &'a Variant,
    dir: PathBuf,
    seen: std::cell::RefCell<Vec<i32>>,
}

impl<'a> Service<'a> {
    fn new(rig: &'a Rig, variant: &'a Variant, tag: &str) -> Service<'a> {
        let dir = rig.work.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        Service {
            rig,
            variant,
            dir,
            seen: Default::default(),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("run/agent.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("log/agent.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// `sh <script> <action>` with the test's settings.
    fn run(&self, action: &str) -> Outcome {
        let mut cmd = Command::new(&self.variant.shell[0]);
        cmd.args(&self.variant.shell[1..])
            .arg(SCRIPT)
            .arg(action)
            .env_clear()
            .env("PATH", &self.variant.path)
            .env("DAEMON", AGENT_BIN)
            .env("CONFIG", self.rig.ini())
            .env("PIDFILE", self.pid_file())
            .env("LOGFILE", self.log_file())
            .env("RUN_AS", "")
            .env("DEFAULTS_FILE", "/nonexistent");
        let out = run_to_end(cmd, &self.dir, LIVENESS);
        if let Some(pid) = self.pid() {
            self.seen.borrow_mut().push(pid);
        }
        out
    }

    /// The pid in the pid file.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn what(&self, step: &str, out: &Outcome) -> String {
        format!(
            "[{}] {step}: {out:?}\nagent log:\n{}",
            self.variant.name,
            self.log()
        )
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        let mut pids = self.seen.borrow().clone();
        pids.extend(self.pid());
        for pid in pids {
            if agent_alive(pid) {
                // SAFETY: kill of an agent process this test started through the script.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn start_ok(svc: &Service) -> i32 {
    let out = svc.run("start");
    assert_eq!(out.code, Some(0), "{}", svc.what("start", &out));
    assert!(
        out.stdout.contains("started (pid"),
        "{}",
        svc.what("start", &out)
    );
    let pid = svc.pid().expect("a pid file after start");
    assert!(agent_alive(pid), "{}", svc.what("start: pid alive", &out));
    pid
}

#[test]
fn start_status_reload_restart_stop_status() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("init-cycle", &pg, &listener.url());
    for (i, v) in variants().iter().enumerate() {
        let svc = Service::new(&rig, v, &format!("v{i}"));
        let pid = start_ok(&svc);

        let out = svc.run("status");
        assert_eq!(out.code, Some(0), "{}", svc.what("status", &out));
        assert!(
            out.stdout.contains(&format!("is running (pid {pid})")),
            "{}",
            svc.what("status", &out)
        );

        let out = svc.run("reload");
        assert_eq!(out.code, Some(0), "{}", svc.what("reload", &out));
        assert!(
            wait_until(LIVENESS, || svc.log().contains("configuration reloaded")),
            "{}",
            svc.what("reload reached the agent", &out)
        );
        assert!(agent_alive(pid), "the agent survives a reload");

        let out = svc.run("restart");
        assert_eq!(out.code, Some(0), "{}", svc.what("restart", &out));
        let new_pid = svc.pid().expect("a pid file after restart");
        assert_ne!(new_pid, pid, "{}", svc.what("restart: new pid", &out));
        assert!(!agent_alive(pid), "the old agent is gone after restart");
        assert!(agent_alive(new_pid), "{}", svc.what("restart: alive", &out));

        let out = svc.run("stop");
        assert_eq!(out.code, Some(0), "{}", svc.what("stop", &out));
        assert!(
            !out.stdout.contains("did not stop"),
            "{}",
            svc.what("stop", &out)
        );
        assert!(!agent_alive(new_pid), "{}", svc.what("stop: gone", &out));
        assert!(!svc.pid_file().exists(), "the pid file is removed");
        assert!(
            svc.log().contains("SIGTERM: stopping"),
            "the agent stopped on SIGTERM"
        );

        let out = svc.run("status");
        assert_eq!(out.code, Some(3), "{}", svc.what("status after stop", &out));
    }
    assert!(listener.schema_violations().is_empty());
}

#[test]
fn start_replaces_a_stale_pid_file_and_reload_refuses_an_invalid_config() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("init-stale", &pg, &listener.url());
    let valid = rig.text();
    for (i, v) in variants().iter().enumerate() {
        let svc = Service::new(&rig, v, &format!("v{i}"));
        std::fs::create_dir_all(svc.pid_file().parent().unwrap()).unwrap();
        // The pid of a process that has exited, and then of a live process that is not the
        // agent (a recycled pid).
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id() as i32;
        dead.wait().unwrap();
        let mut other = Command::new("sleep").arg("60").spawn().unwrap();
        for stale in [dead_pid, other.id() as i32] {
            std::fs::write(svc.pid_file(), format!("{stale}\n")).unwrap();
            let out = svc.run("start");
            assert_eq!(out.code, Some(0), "{}", svc.what("start over stale", &out));
            assert!(
                out.stdout.contains("removing stale pid file"),
                "{}",
                svc.what("start over stale", &out)
            );
            let pid = svc.pid().unwrap();
            assert_ne!(pid, stale);
            assert!(agent_alive(pid), "{}", svc.what("started", &out));
            let out = svc.run("stop");
            assert_eq!(out.code, Some(0), "{}", svc.what("stop", &out));
            assert!(!agent_alive(pid));
        }
        let _ = other.kill();
        let _ = other.wait();

        // reload validates first: an invalid file is refused and the agent keeps running.
        let pid = start_ok(&svc);
        std::fs::write(
            rig.ini(),
            valid.replace("interval_s = 1", "interval_s = often"),
        )
        .unwrap();
        let out = svc.run("reload");
        assert_eq!(out.code, Some(6), "{}", svc.what("reload invalid", &out));
        assert!(out.stdout.contains("invalid, not reloading"), "{out:?}");
        assert!(agent_alive(pid));
        // ... and so does start.
        let out = svc.run("stop");
        assert_eq!(out.code, Some(0), "{}", svc.what("stop", &out));
        let out = svc.run("start");
        assert_eq!(out.code, Some(6), "{}", svc.what("start invalid", &out));
        assert!(svc.pid().is_none(), "nothing started");
        std::fs::write(rig.ini(), &valid).unwrap();
    }
}

#[test]
fn stop_while_the_listener_hangs_finishes_in_time() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    listener.set_default(Answer::Hang);
    let mut rig = Rig::new("init-hang", &pg, &listener.url());
    // A request in flight would outlast the agent's shutdown grace by far.
    rig.set("listener", "timeout_s", "120");
    for (i, v) in variants().iter().enumerate() {
        let svc = Service::new(&rig, v, &format!("v{i}"));
        let before = listener.requests().len();
        let pid = start_ok(&svc);
        assert!(
            listener.wait_for(LIVENESS, |r| r.len() > before),
            "[{}] no request reached the listener; log:\n{}",
            v.name,
            svc.log()
        );
        let out = svc.run("stop");
        assert_eq!(out.code, Some(0), "{}", svc.what("stop", &out));
        // The agent ended itself within the script's STOP_TIMEOUT: no SIGKILL was needed.
        assert!(
            !out.stdout.contains("killing it"),
            "{}",
            svc.what("stop", &out)
        );
        assert!(!agent_alive(pid), "{}", svc.what("stop: gone", &out));
        let log = svc.log();
        assert!(
            log.contains("exiting without waiting for: shipper") && log.contains("] stopped"),
            "the agent did not end its own shutdown: {log}"
        );
    }
    listener.release_hung();
}
