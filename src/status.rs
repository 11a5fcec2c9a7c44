//! The status file: what the running agent tells `--status` (and an operator with `cat`).
//!
//! The daemon rewrites `<state_dir>/status` atomically (`status.tmp`, rename) as plain
//! `key: value` lines: at once when the breaker changes state and when a backlog has drained
//! ([`StatusWatch`] decides), within [`STATUS_EVERY`] of the shipper's next request when
//! anything else in it changed ([`plan`]), and at least every [`heartbeat`] even when nothing
//! did. `--status` reads it and adds what only the reader can know: how old the file is and
//! whether the process that wrote it is still alive.

use crate::fsutil::Durability;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The least time between two writes for changes that are not urgent (counts, the last send):
/// a change seen when the shipper publishes reaches the file within this time.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long a change seen after a quiet spell waits before it is written, so the burst of
/// requests at an interval boundary is one write, not one per request.
pub const COALESCE: Duration = Duration::from_secs(1);

/// What the status thread does after a look ([`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Rewrite the file now.
    pub write: bool,
    /// How long after now to look again if nothing wakes the thread before.
    pub look_in: Duration,
}

/// When to write the status file: at once for an urgent change ([`Decision::write`]: the first
/// write, a breaker change, a drained backlog) or when the [`heartbeat`] is due; a change that
/// is not urgent when [`STATUS_EVERY`] has passed since the last write and [`COALESCE`] since
/// it was first seen (`dirty_for`); otherwise not now. `since_write` is `None` before the first
/// write. The thread sleeps until the plan's look or the shipper's next publication, never on
/// a poll: on this VM a thread that sleeps a second costs 40 to 130 µs of CPU per wake-up.
pub fn plan(
    urgent: bool,
    dirty_for: Option<Duration>,
    since_write: Option<Duration>,
    heartbeat: Duration,
) -> Plan {
    let Some(since) = since_write else {
        return Plan {
            write: true,
            look_in: heartbeat,
        };
    };
    let write = urgent
        || since >= heartbeat
        || dirty_for.is_some_and(|d| since >= STATUS_EVERY && d >= COALESCE);
    let look_in = match dirty_for {
        _ if write => heartbeat,
        Some(d) => STATUS_EVERY
            .saturating_sub(since)
            .max(COALESCE.saturating_sub(d)),
        None => heartbeat.saturating_sub(since),
    };
    Plan { write, look_in }
}

/// How old the status file of an agent collecting every `interval` may be before `--status`
/// calls it stale (the agent stuck): 3 intervals + 10 s.
pub fn stale_after(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(10)
}

/// How long the daemon leaves an unchanged status file alone before rewriting it anyway, for an
/// agent collecting every `interval`: at most a minute, and well inside [`stale_after`].
/// (A rename costs about 100 µs of CPU on ext4; rewriting an unchanged file every 5 s was most
/// of the status thread's cost.)
pub fn heartbeat(interval: Duration) -> Duration {
    interval.clamp(STATUS_EVERY, Duration::from_secs(60))
}

/// Whether two renderings of the status lines say the same, the uptime aside.
pub fn same_but_uptime(a: &[(&str, String)], b: &[(&str, String)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && (x.0 == "uptime_s" || x.1 == y.1))
}

/// The file name inside the state directory.
pub const STATUS_FILE: &str = "status";

/// The status file's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the lines atomically ([`Durability::Atomic`]: rewritten every few seconds, and a
/// stale one after a power failure is corrected by the next write). Values must not contain
/// newlines (they are replaced by spaces).
pub fn write(state_dir: &Path, lines: &[(&str, String)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (key, value) in lines {
        text.push_str(key);
        text.push_str(": ");
        text.push_str(&value.replace(['\n', '\r'], " "));
        text.push('\n');
    }
    // One writer at a time: two threads sharing the temp file could rename a torn one.
    static WRITING: Mutex<()> = Mutex::new(());
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    crate::fsutil::write_atomically(&path(state_dir), text.as_bytes(), Durability::Atomic)
}

/// What the status watch looks at, read from the shipper and the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The breaker's state name (`closed`, `open`, `half-open`).
    pub breaker: &'static str,
    /// Records in the spool not yet acknowledged.
    pub pending: u64,
    /// Whether the last send failed (or the breaker is not closed).
    pub failing: bool,
    /// Payloads acknowledged since the start.
    pub sent: u64,
}

/// What to do after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Rewrite the status file now.
    pub write: bool,
    /// A line for the agent's log (a backlog that finished draining).
    pub log: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Backlog {
    since: Instant,
    sent_before: u64,
    peak: u64,
}

/// Decides when the status file must be rewritten at once (the first time, a breaker change, a
/// backlog emptied) and follows a backlog, from the first failed send (or the records found at
/// start) until the spool is empty, to say how long it took. Other changes and the heartbeat are
/// [`plan`]'s. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct StatusWatch {
    written: Option<(&'static str, u64)>,
    backlog: Option<Backlog>,
    started: bool,
}

impl StatusWatch {
    /// A watch that has written nothing yet.
    pub fn new() -> StatusWatch {
        StatusWatch::default()
    }

    /// Looks at the current state; say [`StatusWatch::written`] after writing.
    pub fn observe(&mut self, o: Observation, now: Instant) -> Decision {
        let first = !std::mem::replace(&mut self.started, true);
        if self.backlog.is_none() && o.pending > 0 && (o.failing || first) {
            self.backlog = Some(Backlog {
                since: now,
                sent_before: o.sent,
                peak: o.pending,
            });
        }
        let mut log = None;
        if let Some(b) = self.backlog.as_mut() {
            b.peak = b.peak.max(o.pending);
            if o.pending == 0 {
                log = Some(format!(
                    "backlog drained: the spool is empty again after {} s ({} payloads delivered \
                     since it began, at most {} waiting)",
                    now.duration_since(b.since).as_secs(),
                    o.sent.saturating_sub(b.sent_before),
                    b.peak
                ));
                self.backlog = None;
            }
        }
        let write = match self.written {
            None => true,
            Some((breaker, pending)) => {
                breaker != o.breaker || (pending > 0 && o.pending == 0) || log.is_some()
            }
        };
        Decision { write, log }
    }

    /// Records that the status file was written with `o`.
    pub fn written(&mut self, o: Observation) {
        self.written = Some((o.breaker, o.pending));
    }
}

/// The value of `key` in status text.
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// Whether a process with this pid exists.
fn alive(pid: i32) -> bool {
    crate::sys::process_exists(pid)
}

/// The report `--status` prints, and whether the agent looks healthy (running and recent).
pub fn report(state_dir: &Path, stale_after: Duration) -> (String, bool) {
    let file = path(state_dir);
    let text = match crate::fsutil::read_regular_to_string(&file, crate::fsutil::MAX_TEXT_FILE) {
        Ok(t) => t,
        Err(e) => {
            return (
                format!(
                    "no status at {}: {e} (has the agent run yet?)\n",
                    file.display()
                ),
                false,
            )
        }
    };
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let pid = value(&text, "pid")
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(0);
    let running = alive(pid);
    let fresh = age <= stale_after;
    let verdict = match (running, fresh) {
        (true, true) => "running".to_string(),
        (true, false) => format!(
            "running, but the status is {} s old (stuck?)",
            age.as_secs()
        ),
        (false, _) => format!(
            "not running (the status was written {} s ago by pid {pid})",
            age.as_secs()
        ),
    };
    (
        format!("state: {verdict}\nupdated: {} s ago\n{text}", age.as_secs()),
        running && fresh,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_status_reads_back_and_reports_this_process_running() {
        let dir = crate::testdir::TempDir::new("status");
        write(
            &dir,
            &[
                ("pid", std::process::id().to_string()),
                ("breaker", "closed\nx".into()),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(path(&dir)).unwrap();
        assert_eq!(value(&text, "breaker"), Some("closed x"));
        let (report, healthy) = report(&dir, Duration::from_secs(60));
        assert!(healthy, "{report}");
        assert!(report.starts_with("state: running\n"), "{report}");
    }

    fn obs(breaker: &'static str, pending: u64, failing: bool, sent: u64) -> Observation {
        Observation {
            breaker,
            pending,
            failing,
            sent,
        }
    }

    #[test]
    fn the_status_is_written_on_breaker_changes_and_when_the_backlog_empties() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = StatusWatch::new();
        let mut step = |o: Observation, now: Instant| {
            let d = w.observe(o, now);
            if d.write {
                w.written(o);
            }
            d
        };
        assert!(step(obs("closed", 0, false, 0), at(0)).write, "first");
        assert!(
            !step(obs("closed", 3, false, 0), at(100)).write,
            "nothing new"
        );
        assert!(
            !step(obs("closed", 3, true, 0), at(200)).write,
            "a failure alone"
        );
        assert!(
            step(obs("open", 5, true, 0), at(300)).write,
            "breaker opened"
        );
        assert!(!step(obs("open", 6, true, 0), at(400)).write);
        assert!(
            !step(obs("open", 9, true, 0), at(5400)).write,
            "more pending is a change for the thread's look, not an urgent write"
        );
        assert!(step(obs("half-open", 9, true, 0), at(5500)).write);
        assert!(
            step(obs("closed", 4, false, 5), at(5600)).write,
            "breaker closed"
        );
        let d = step(obs("closed", 0, false, 9), at(7300));
        assert!(d.write, "backlog emptied");
        let line = d.log.expect("the drain is logged");
        assert!(
            line.contains("after 7 s") && line.contains("9 payloads") && line.contains("at most 9"),
            "{line}"
        );
        // Ordinary appends and sends are no backlog.
        assert_eq!(step(obs("closed", 2, false, 10), at(7400)).log, None);
        assert_eq!(step(obs("closed", 0, false, 12), at(7500)).log, None);
    }

    #[test]
    fn the_plan_writes_urgent_changes_at_once_and_coalesces_the_others() {
        let s = Duration::from_secs;
        let beat = s(60);
        let first = plan(false, None, None, beat);
        assert!(first.write, "the first look writes");
        assert_eq!(first.look_in, beat);
        assert!(plan(true, None, Some(s(0)), beat).write, "urgent: at once");
        // Nothing changed: the next look is the heartbeat's, then it writes.
        assert_eq!(
            plan(false, None, Some(s(20)), beat),
            Plan {
                write: false,
                look_in: s(40)
            }
        );
        assert!(plan(false, None, Some(s(60)), beat).write);
        // A change just seen after a quiet spell waits a second for the rest of the burst.
        let burst = plan(false, Some(s(0)), Some(s(30)), beat);
        assert_eq!(
            burst,
            Plan {
                write: false,
                look_in: COALESCE
            }
        );
        assert!(plan(false, Some(COALESCE), Some(s(31)), beat).write);
        // Soon after a write, a change waits until STATUS_EVERY has passed since that write.
        assert_eq!(
            plan(false, Some(s(0)), Some(s(2)), beat),
            Plan {
                write: false,
                look_in: s(3)
            }
        );
        let due = plan(false, Some(s(3)), Some(STATUS_EVERY), beat);
        assert_eq!(
            due,
            Plan {
                write: true,
                look_in: beat
            }
        );
    }

    #[test]
    fn the_heartbeat_stays_inside_the_stale_limit_and_uptime_alone_is_no_change() {
        for interval_s in [1u64, 5, 10, 60, 3600] {
            let interval = Duration::from_secs(interval_s);
            let beat = heartbeat(interval);
            assert!(beat >= STATUS_EVERY && beat <= Duration::from_secs(60));
            assert!(beat < stale_after(interval), "{interval_s}");
        }
        let a = [("pid", "1".to_string()), ("uptime_s", "5".to_string())];
        let b = [("pid", "1".to_string()), ("uptime_s", "9".to_string())];
        let c = [("pid", "2".to_string()), ("uptime_s", "9".to_string())];
        assert!(same_but_uptime(&a, &b));
        assert!(!same_but_uptime(&a, &c));
        assert!(!same_but_uptime(&a, &a[..1]));
    }

    #[test]
    fn records_found_at_start_are_a_backlog() {
        let t0 = Instant::now();
        let mut w = StatusWatch::new();
        assert!(w.observe(obs("closed", 40, false, 0), t0).log.is_none());
        let d = w.observe(obs("closed", 0, false, 40), t0 + Duration::from_secs(2));
        assert!(d.log.is_some_and(|l| l.contains("40 payloads")));
    }

    #[test]
    fn a_missing_status_or_dead_pid_is_not_healthy() {
        let (r, ok) = report(Path::new("/nonexistent-dir"), Duration::from_secs(60));
        assert!(!ok && r.contains("has the agent run yet"), "{r}");
        let dir = crate::testdir::TempDir::new("status-dead");
        write(&dir, &[("pid", "999999999".into())]).unwrap();
        let (r, ok) = report(&dir, Duration::from_secs(60));
        assert!(!ok && r.contains("not running"), "{r}");
    }
}
