//! Faults that go on are logged once per streak, and again when they end, never once per
//! payload or per cycle: a full spool filesystem, a read-only state directory. The real binary
//! against real PostgreSQL and the contract listener; the faults are tmpfs mounts (root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::agent::AgentProcess;
use common::e2e::{wait_until, Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::TestPg;

/// A tmpfs mounted on a directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    /// `None` where mounting is not allowed (then the test says so and proves nothing).
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }

    fn remount(&self, how: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {how} {}", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Where a test mounts its own small tmpfs before the agent starts.
enum Tmpfs {
    None,
    /// On the spool directory, of this size.
    Spool(&'static str),
    /// On the state directory, of this size.
    State(&'static str),
}

/// The rig every flood test starts from: a server, the listener, the agent's configuration
/// (with its tmpfs, if any) and the running agent, past its first three deliveries. Fields drop
/// in order: the agent is killed before its tmpfs is unmounted and the server stopped.
struct Flood {
    agent: AgentProcess,
    mount: Option<Mount>,
    rig: Rig,
    /// Kept running for the agent.
    _listener: TestListener,
    pg: TestPg,
}

impl Flood {
    /// `None` where the tmpfs cannot be mounted (not root): the caller skips, saying so.
    fn start(name: &str, tmpfs: Tmpfs) -> Option<Flood> {
        let pg = TestPg::start();
        let listener = TestListener::start(KEY);
        let rig = Rig::new(name, &pg, &listener.url());
        let mount = match tmpfs {
            Tmpfs::None => None,
            Tmpfs::Spool(size) => Some(Mount::tmpfs(&rig.spool_dir(), size)?),
            Tmpfs::State(size) => Some(Mount::tmpfs(&rig.state_dir(), size)?),
        };
        let agent = rig.start();
        assert!(
            listener.wait_for_stored(3, LIVENESS),
            "{}",
            agent.log_text()
        );
        Some(Flood {
            agent,
            mount,
            rig,
            _listener: listener,
            pg,
        })
    }
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Fills the filesystem of `dir` with one file, to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    path
}

#[test]
fn a_full_spool_filesystem_is_one_error_per_streak() {
    let Some(mut f) = Flood::start("floods-full", Tmpfs::Spool("2m")) else {
        eprintln!("mount refused: this test needs root; skipped");
        return;
    };
    let agent = &mut f.agent;
    let filler = fill(&f.rig.spool_dir());
    // Several cycles of every collector (interval 1 s, sampler 250 ms) with a full disk.
    assert!(
        wait_until(LIVENESS, || count(&agent.log_text(), "payload not stored")
            >= 1),
        "the full disk is not reported:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(4));
    let during = agent.log_text();
    assert_eq!(
        count(&during, "payload not stored"),
        1,
        "one error per streak, not per payload:\n{during}"
    );
    std::fs::remove_file(filler).unwrap();
    assert!(
        wait_until(LIVENESS, || agent
            .log_text()
            .contains("appending works again")),
        "the recovery is not logged:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn a_read_only_state_directory_is_one_warning_per_streak_and_file() {
    let Some(mut f) = Flood::start("floods-ro", Tmpfs::State("4m")) else {
        eprintln!("mount refused: this test needs root; skipped");
        return;
    };
    let (agent, mount) = (&mut f.agent, f.mount.as_ref().expect("the state tmpfs"));
    let warnings = |log: &str| log.lines().filter(|l| l.contains(" WARN ")).count();
    let before = warnings(&agent.log_text());
    mount.remount("ro");
    // Six cycles of the interval thread, six of the status file, dozens of log polls.
    common::e2e::some_statements(&f.pg, "floods");
    std::thread::sleep(Duration::from_secs(6));
    let during = agent.log_text();
    let new_warnings = warnings(&during) - before;
    assert!(
        (1..=4).contains(&new_warnings),
        "one warning per file and streak (status, log position, baseline), got {new_warnings}:\n{during}"
    );
    assert_eq!(count(&during, "status file in"), 1, "{during}");
    mount.remount("rw");
    assert!(
        wait_until(LIVENESS, || agent
            .log_text()
            .contains("writing works again")),
        "the recovery is not logged:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.stop().code(), Some(0));
}

/// The server log's lock-timeout errors so far, with the statement that hit each.
fn lock_timeouts(pg: &TestPg) -> Vec<String> {
    let log = std::fs::read_to_string(pg.server_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("canceling statement due to lock timeout"))
        .map(|(i, _)| lines.get(i + 1).copied().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_locked_statistics_view_costs_the_server_log_few_errors() {
    let mut f = Flood::start("floods-lock", Tmpfs::None).expect("no tmpfs needed");
    let (pg, agent) = (&f.pg, &mut f.agent);
    let before = lock_timeouts(pg).len();
    let mut locker = pg.admin();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let during = lock_timeouts(pg);
    tx.rollback().unwrap();
    let n = during.len() - before;
    eprintln!("{n} lock timeouts in 8 s: {:#?}", &during[before..]);
    assert!(n >= 1, "the lock was not met: {}", agent.log_text());
    assert!(
        n <= 16,
        "{n} lock-timeout errors in 8 s (34 before the back-off): {:#?}",
        &during[before..]
    );
    assert_eq!(agent.stop().code(), Some(0));
}
