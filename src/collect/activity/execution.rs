//! Per-execution aggregation: what one (pid, query_start) pair did over the interval (states,
//! waits, how often it was seen), the OS figures of its backend charged honestly between
//! readings, parallel workers folded into their leader, and the bound on memory.
//!
//! Invariants:
//! - Each pid's last `/proc/<pid>` reading (CPU ticks, I/O bytes) and the execution it ran then
//!   are kept; a reading charges the difference since the previous one to that execution when
//!   it has ended, else to the one running now, and a pid whose execution ended since the
//!   previous sample is read once more. What cannot be attributed stays unmarked (`null` in the
//!   JSON), never 0.
//! - A parallel worker's CPU and I/O are charged to its leader's execution.
//! - At most `2 * max_executions` client executions are held (more only while more sessions
//!   than that run at once); background processes are never dropped.
//! - Query texts are rendered (normalized, truncated) once, when an execution is first seen.

use super::lock_roles::{BlockingSeen, LockSeen};
use super::query::{micros, SessionRow};
use super::{ActivitySampler, ExecKey, SampleStats};
use crate::collect::cost_control::DEFER_EVERY;
use crate::collect::procfs;
use crate::normalize::Correlation;
use crate::payload::unix_now;

#[derive(Debug, Clone)]
pub(super) struct WaitSeen {
    pub(super) kind: String,
    pub(super) event: String,
    pub(super) count: u32,
}

#[derive(Debug, Clone)]
pub(super) struct Execution {
    pub(super) pid: i32,
    pub(super) query_start: Option<f64>,
    pub(super) xact_start: Option<f64>,
    pub(super) first_seen: f64,
    pub(super) last_seen: f64,
    pub(super) n_seen: u32,
    pub(super) state: String,
    pub(super) wait_event_type: Option<String>,
    pub(super) wait_event: Option<String>,
    pub(super) waits: Vec<WaitSeen>,
    pub(super) datname: Option<String>,
    pub(super) usename: Option<String>,
    pub(super) application_name: Option<String>,
    pub(super) client_addr: Option<String>,
    pub(super) backend_type: Option<String>,
    pub(super) query: Option<String>,
    pub(super) correlation: Option<Correlation>,
    pub(super) query_id: Option<i64>,
    pub(super) background: bool,
    pub(super) cpu_ticks: u64,
    pub(super) read_bytes: u64,
    pub(super) write_bytes: u64,
    pub(super) os_seen: bool,
    pub(super) cpu_attributed: bool,
    pub(super) cpu_partial: bool,
    pub(super) io_seen: bool,
    pub(super) io_attributed: bool,
    pub(super) rss_bytes: u64,
    pub(super) lock: Option<LockSeen>,
    pub(super) blocking: Option<BlockingSeen>,
    pub(super) n_worker_samples: u32,
    pub(super) round: u64,
}

impl Execution {
    pub(super) fn duration_ms(&self) -> f64 {
        match self.query_start {
            Some(qs) => ((self.last_seen - qs) * 1000.0).max(0.0),
            None => ((self.last_seen - self.first_seen) * 1000.0).max(0.0),
        }
    }

    pub(super) fn cpu_ms(&self) -> u64 {
        procfs::ticks_to_ms(self.cpu_ticks)
    }

    /// Ranking when memory or the payload is full: long-running and CPU-hungry executions win.
    pub(super) fn score(&self) -> f64 {
        self.duration_ms() + self.cpu_ms() as f64
    }

    pub(super) fn correlation_id(&self) -> Option<&str> {
        self.correlation.as_ref().map(|c| c.id.as_str())
    }
}

/// The OS counters of a pid at its latest reading, and the execution it was running then.
#[derive(Debug, Clone, Copy)]
pub(super) struct PidTrack {
    pub(super) round: u64,
    pub(super) start_ticks: u64,
    pub(super) cpu_ticks: u64,
    pub(super) io: Option<procfs::PidIo>,
    pub(super) exec: Option<ExecKey>,
    /// Whether the session was in a state without storage I/O ([`io_cannot_change`]) at this
    /// reading and every deferred one since.
    pub(super) quiet: bool,
    /// A reading of this pid (both files, or `io` of a session doing work) was deferred since
    /// this one: the interval's close reads it ([`ActivitySampler::read_deferred`]).
    pub(super) pending: bool,
}

/// Whether a session in this state does no storage I/O until its state changes: waiting on a
/// heavyweight lock, in `pg_sleep`, idle in a transaction, or waiting for its client
/// (`ClientRead`). Its `/proc/<pid>/io` is not read again while it stays so in one execution.
/// Whether `row` is a background process idle in its main loop (wait class `Activity`: the
/// checkpointer, background writer, WAL writer, launchers between their rounds). Its `/proc`
/// files are read one sample in [`DEFER_EVERY`]: it spends next to nothing while it waits, and
/// whatever it did spend between two readings is charged at the next one, to the same process,
/// so nothing is lost; a background process doing work (any other wait, or none) is read every
/// sample.
pub(super) fn idle_background(row: &SessionRow) -> bool {
    row.is_background() && row.wait_event_type == Some("Activity")
}

pub(super) fn io_cannot_change(row: &SessionRow) -> bool {
    row.wait_event_type == Some("Lock")
        || matches!(row.wait_event, Some("PgSleep") | Some("ClientRead"))
        || row
            .state
            .is_some_and(|s| s.starts_with("idle in transaction"))
}

/// How a pid is read in this sample ([`ActivitySampler::read_pid`]).
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The session is in a state without storage I/O ([`io_cannot_change`]).
    quiet: bool,
    /// A background process idle in its main loop ([`idle_background`]).
    idle_background: bool,
    /// Read both files now, whatever the deferral rules say (an interval's close).
    now: bool,
}

impl Reading {
    /// How `row`'s pid is read in a sample (a parallel worker is never a background process).
    fn of(row: &SessionRow) -> Reading {
        Reading {
            quiet: io_cannot_change(row),
            idle_background: idle_background(row),
            now: false,
        }
    }
}

/// Rounds a pid's last reading is kept while the pid is not sampled (an idle pooled
/// connection): its next execution is charged from that reading.
const TRACK_MAX_AGE_ROUNDS: u64 = 600;

/// Most pids whose last reading is kept.
const MAX_TRACKS: usize = 4096;

impl ActivitySampler {
    /// Aggregates one sample's rows: the part of [`Self::sample`] after the query, separate so
    /// it can be tested without a server. Returns the sample's figures and its server time.
    pub(super) fn absorb(&mut self, rows: &[SessionRow]) -> (SampleStats, f64) {
        self.round += 1;
        self.n_samples += 1;
        self.current.clear();
        self.leaders_by_start.clear();
        let mut stats = SampleStats {
            n_rows: rows.len(),
            n_background: rows.iter().filter(|r| r.is_background()).count(),
            ..SampleStats::default()
        };
        // Leaders first, so that a parallel worker's CPU can be charged to its leader's
        // execution in the second pass.
        for row in rows.iter().filter(|r| r.worker_leader().is_none()) {
            self.absorb_row(row, &mut stats);
        }
        for row in rows {
            if let Some(leader) = row.worker_leader() {
                if !self.fold_worker(row, leader) {
                    self.absorb_row(row, &mut stats);
                }
            }
        }
        // An empty sample carries no server time; the agent runs on the same host.
        let now = rows.first().map_or_else(unix_now, |r| r.now);
        self.decide_procfs_host();
        if self.reads_procfs() {
            self.read_ended(now);
        }
        self.proc.end_round();
        self.interval_start.get_or_insert(now);
        self.last_sample_at = Some(now);
        (stats, now)
    }

    /// Adds one session row to its execution.
    fn absorb_row(&mut self, row: &SessionRow, stats: &mut SampleStats) {
        let key = row.key();
        if row.wait_event_type == Some("Lock") {
            stats.n_lock_waits += 1;
        }
        if !self.execs.contains_key(&key) {
            // Background processes are few (one per server process) and never dropped.
            if row.is_background() {
                self.n_background_execs += 1;
            } else {
                self.make_room();
            }
            let exec = self.new_execution(row);
            self.execs.insert(key, exec);
        }
        self.current.insert(row.pid, key);
        if key.1 != i64::MIN && row.worker_leader().is_none() {
            self.leaders_by_start.insert(key.1, key);
        }
        let round = self.round;
        let Some(exec) = self.execs.get_mut(&key) else {
            return;
        };
        exec.last_seen = row.now;
        exec.n_seen += 1;
        if exec.query_id.is_none() {
            exec.query_id = row.query_id;
        }
        exec.round = round;
        let state = row.state.unwrap_or("");
        if exec.state != state {
            exec.state.clear();
            exec.state.push_str(state);
        }
        set_opt(&mut exec.wait_event_type, row.wait_event_type);
        set_opt(&mut exec.wait_event, row.wait_event);
        if let (Some(t), Some(e)) = (row.wait_event_type, row.wait_event) {
            match exec.waits.iter_mut().find(|w| w.kind == t && w.event == e) {
                Some(w) => w.count += 1,
                None => exec.waits.push(WaitSeen {
                    kind: t.to_string(),
                    event: e.to_string(),
                    count: 1,
                }),
            }
        }
        if self.reads_procfs() {
            self.read_pid(row.pid, key, Reading::of(row));
        }
    }

    /// Charges a parallel worker's CPU and I/O to its leader's execution. False when the leader
    /// was not in this sample (the worker is then reported on its own).
    fn fold_worker(&mut self, row: &SessionRow, leader: Option<i32>) -> bool {
        // Without leader_pid (PostgreSQL 12), a worker shares its leader's query_start.
        let key = match leader {
            Some(l) => self.current.get(&l).copied(),
            None => self.leaders_by_start.get(&micros(row.query_start)).copied(),
        };
        let Some(key) = key else {
            return false;
        };
        let Some(exec) = self.execs.get_mut(&key) else {
            return false;
        };
        exec.n_worker_samples += 1;
        if self.reads_procfs() {
            self.read_pid(row.pid, key, Reading::of(row));
        }
        true
    }

    /// Reads `/proc/<pid>` while it runs the execution `key` and charges what it spent since
    /// its previous reading: to the execution it ran then when that one has ended (its tail),
    /// else to `key`.
    ///
    /// A reading may be deferred only for a pid whose previous reading was of this same
    /// execution (and of this interval): its last reading stays the base, so whatever it spent
    /// meanwhile is charged at the next reading, to the same execution; nothing is lost and
    /// nothing is charged to another execution. `io` is not read while the session was and is
    /// quiet (it cannot have changed) and, at cost level `no_io` and above or while samples come
    /// faster than once a second, in 3 samples of 4; at `rotate` and above `stat` too, and for
    /// an idle background process always.
    fn read_pid(&mut self, pid: i32, key: ExecKey, how: Reading) {
        let Reading {
            quiet,
            idle_background,
            now,
        } = how;
        let level = self.cost.level();
        let read_before = self.execs.get(&key).is_some_and(|e| e.os_seen);
        let prev = self.tracks.get(&pid).copied();
        let same = prev.filter(|p| read_before && p.exec == Some(key));
        let due = (pid as u64).wrapping_add(self.round) % DEFER_EVERY == 0;
        if !now && same.is_some() && (level.defers_stat() || idle_background) && !due {
            if let Some(t) = self.tracks.get_mut(&pid) {
                t.round = self.round;
                t.quiet &= quiet;
                t.pending = true;
            }
            self.proc.keep_open(pid);
            if level.defers_stat() {
                self.n_stat_deferred += 1;
            } else {
                self.n_background_deferred += 1;
            }
            return;
        }
        let io_deferred = level.defers_io() || self.sub_second;
        let carry = same
            .filter(|p| !now && ((quiet && p.quiet) || (io_deferred && !due)))
            .and_then(|p| p.io.map(|io| (p.start_ticks, io)));
        let sample = self.proc.sample_with(pid, carry);
        self.note_pid_read(sample.is_some());
        let Some(s) = sample else {
            self.tracks.remove(&pid);
            return;
        };
        let io_carried = carry.is_some_and(|(start, _)| start == s.stat.start_ticks);
        if io_carried {
            self.n_io_unchanged += 1;
        }
        // A quiet session's `io` did not change; a working one's did, and is read at the close.
        let io_pending = io_carried && !same.is_some_and(|p| quiet && p.quiet);
        if let Some(exec) = self.execs.get_mut(&key) {
            exec.os_seen = true;
            exec.rss_bytes = s.stat.rss_pages.saturating_mul(procfs::page_size());
            if s.io.is_some() {
                exec.io_seen = true;
            }
        }
        self.charge(prev, &s, Some(key));
        self.tracks.insert(
            pid,
            PidTrack {
                round: self.round,
                start_ticks: s.stat.start_ticks,
                cpu_ticks: s.stat.cpu_ticks,
                io: s.io,
                exec: Some(key),
                quiet,
                pending: io_pending,
            },
        );
    }

    /// Before the interval's summary is rendered: every pid whose reading was deferred since
    /// its last one (an idle background process, any session at cost level `rotate`, the `io`
    /// of a working session in a burst) is read now, so what it did in this interval (a
    /// checkpoint between two samples, an execution's last seconds before it ends) is in this
    /// interval's summary, not charged after its execution was shipped.
    pub(super) fn read_deferred(&mut self) {
        if !self.reads_procfs() {
            return;
        }
        let pending: Vec<(i32, ExecKey, bool)> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.pending)
            .filter_map(|(pid, t)| Some((*pid, t.exec?, t.quiet)))
            .collect();
        for (pid, key, quiet) in pending {
            if self.execs.contains_key(&key) {
                let how = Reading {
                    quiet,
                    idle_background: false,
                    now: true,
                };
                self.read_pid(pid, key, how);
            } else if let Some(t) = self.tracks.get_mut(&pid) {
                t.pending = false;
            }
        }
    }

    /// The first reading after an execution ended: every pid read in the previous round while
    /// running an execution and not read in this one is read once more, so the CPU and I/O of
    /// the execution's last second (all of it for a query seen once) are charged to it.
    /// (Waiting a round more would save the reads of sessions caught between two statements,
    /// about a third of the `/proc` reads under pgbench -c 8, but would charge the next
    /// statement's CPU up to that reading to the ended one.)
    fn read_ended(&mut self, now: f64) {
        let round = self.round;
        let ended: Vec<i32> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.round + 1 == round && t.exec.is_some())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ended {
            let prev = self.tracks.get(&pid).copied();
            match self.proc.sample(pid) {
                Some(s) => {
                    self.charge(prev, &s, None);
                    self.tracks.insert(
                        pid,
                        PidTrack {
                            round,
                            start_ticks: s.stat.start_ticks,
                            cpu_ticks: s.stat.cpu_ticks,
                            io: s.io,
                            exec: None,
                            quiet: false,
                            pending: false,
                        },
                    );
                }
                None => {
                    self.tracks.remove(&pid);
                }
            }
        }
        if self.tracks.len() > MAX_TRACKS {
            let mut rounds: Vec<u64> = self.tracks.values().map(|t| t.round).collect();
            rounds.sort_unstable();
            let keep_from = rounds[rounds.len() - MAX_TRACKS];
            self.tracks.retain(|_, t| t.round >= keep_from);
        }
        let oldest = round.saturating_sub(TRACK_MAX_AGE_ROUNDS);
        self.tracks.retain(|_, t| t.round >= oldest);
        self.last_reading_at = Some(now);
    }

    /// Charges the CPU and I/O `pid` spent between `prev` and `s`. The delta goes to the
    /// execution running at `prev` when that one has ended (or nothing runs now), else to
    /// `running`. Without a previous reading of this process, a process that started after the
    /// previous sample is charged everything since its start; an older one only from now on
    /// (its execution is marked `cpu_partial`).
    fn charge(&mut self, prev: Option<PidTrack>, s: &procfs::PidSample, running: Option<ExecKey>) {
        let same_process = prev.filter(|p| p.start_ticks == s.stat.start_ticks);
        let (target, base_cpu, base_io) = match same_process {
            Some(p) => {
                let ended = p.exec.filter(|k| Some(*k) != running);
                let target = match ended {
                    Some(k) if self.execs.contains_key(&k) => Some(k),
                    // The execution it ran was already shipped or dropped: the delta belongs to
                    // neither.
                    Some(_) => None,
                    None => running,
                };
                (target, p.cpu_ticks, p.io)
            }
            None => {
                let started = self.proc.process_start(&s.stat);
                let fresh = match (started, self.last_reading_at) {
                    // btime is whole seconds: a second of slack.
                    (Some(st), Some(prev_sample)) => st + 1.0 >= prev_sample,
                    _ => false,
                };
                if !fresh {
                    if let Some(e) = running.and_then(|k| self.execs.get_mut(&k)) {
                        e.cpu_partial = true;
                    }
                    return;
                }
                let zero = procfs::PidIo {
                    read_bytes: 0,
                    write_bytes: 0,
                };
                (running, 0, Some(zero))
            }
        };
        let Some(exec) = target.and_then(|k| self.execs.get_mut(&k)) else {
            return;
        };
        exec.cpu_ticks += s.stat.cpu_ticks.saturating_sub(base_cpu);
        exec.cpu_attributed = true;
        if let (Some(p), Some(c)) = (base_io, s.io) {
            exec.read_bytes += c.read_bytes.saturating_sub(p.read_bytes);
            exec.write_bytes += c.write_bytes.saturating_sub(p.write_bytes);
            exec.io_seen = true;
            exec.io_attributed = true;
        }
    }

    pub(super) fn new_execution(&mut self, row: &SessionRow) -> Execution {
        // Found in the raw text, before normalization and truncation can cut the marker.
        let correlation = if row.is_background() {
            None
        } else {
            let texts: &[&str] = match row.query {
                Some(q) => &[q],
                None => &[],
            };
            self.cfg.correlation.find(row.application_name, texts)
        };
        let query = row.query.and_then(|q| {
            self.cfg
                .query_text
                .render_into(q, &mut self.text_buf)
                .then(|| self.text_buf.clone())
        });
        Execution {
            pid: row.pid,
            query_start: row.query_start,
            xact_start: row.xact_start,
            first_seen: row.now,
            last_seen: row.now,
            n_seen: 0,
            state: String::new(),
            wait_event_type: None,
            wait_event: None,
            waits: Vec::new(),
            datname: row.datname.map(str::to_string),
            usename: row.usename.map(str::to_string),
            application_name: row.application_name.map(str::to_string),
            client_addr: row.client_addr.map(|a| a.to_string()),
            backend_type: row.backend_type.map(str::to_string),
            query,
            correlation,
            query_id: row.query_id,
            background: row.is_background(),
            cpu_ticks: 0,
            read_bytes: 0,
            write_bytes: 0,
            os_seen: false,
            cpu_attributed: false,
            cpu_partial: false,
            io_seen: false,
            io_attributed: false,
            rss_bytes: 0,
            lock: None,
            blocking: None,
            n_worker_samples: 0,
            round: 0,
        }
    }

    /// Keeps memory bounded: when full, drops the least interesting executions that are not
    /// running any more, down to `max_executions`.
    fn make_room(&mut self) {
        let cap = (self.cfg.max_executions.max(1) * 2).max(self.room_check_at);
        let n_client = self.execs.len().saturating_sub(self.n_background_execs);
        if n_client < cap {
            return;
        }
        let round = self.round;
        let mut finished: Vec<(f64, ExecKey)> = self
            .execs
            .iter()
            .filter(|(_, e)| e.round != round && !e.background)
            .map(|(k, e)| (e.score(), *k))
            .collect();
        finished.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = n_client + 1 - self.cfg.max_executions.max(1);
        for (_, k) in finished.into_iter().take(excess) {
            self.execs.remove(&k);
            self.n_left_out += 1;
        }
        // When most executions are still running nothing could go: the map may exceed the cap
        // (it is bounded by max_connections then), and the next scan waits for a quarter more,
        // so a server with hundreds of active sessions does not rescan on every new row.
        self.room_check_at = self.execs.len().saturating_sub(self.n_background_execs)
            + self.cfg.max_executions.max(4) / 2;
    }
}

pub(super) fn set_opt(slot: &mut Option<String>, v: Option<&str>) {
    match (slot.as_mut(), v) {
        (Some(s), Some(v)) if s == v => {}
        (Some(s), Some(v)) => {
            s.clear();
            s.push_str(v);
        }
        (None, Some(v)) => *slot = Some(v.to_string()),
        (_, None) => *slot = None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::collect::activity::ActivityConfig;
    use crate::json::Json;

    #[test]
    fn cpu_and_io_are_charged_between_consecutive_samples_only() {
        let p = FakeProc::new("cpu");
        let mut s = p.sampler(ActivityConfig::default());
        p.set(100, 100, 5, Some((0, 0)));
        s.absorb(&[row(100, 1000.0, 999.0)]);
        p.set(100, 150, 5, Some((4096, 8192)));
        s.absorb(&[row(100, 1001.0, 999.0)]);
        // The query ends: the first sample after it reads the pid once more and charges the
        // query's tail to it.
        p.set(100, 170, 5, Some((5000, 8192)));
        s.absorb(&[]);
        // Idle meanwhile: the next query is charged from the pid's last reading.
        p.set(100, 300, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1003.0, 1002.5)]);
        p.set(100, 320, 5, Some((10_000, 10_000)));
        s.absorb(&[row(100, 1004.0, 1002.5)]);
        // The pid is reused by a new backend (another start time, more ticks than the old one
        // had): no delta across it, and its start is unknown here, so what follows is partial.
        p.set(100, 1000, 6, Some((0, 0)));
        s.absorb(&[row(100, 1005.0, 1002.5)]);
        let out = s.finish_interval();
        let by_start = |qs: f64| {
            sessions(&out)
                .iter()
                .find(|e| e.get("query_start") == Some(&Json::Float(qs)))
                .unwrap()
        };
        let first = by_start(999.0);
        assert_eq!(field_f64(first, "cpu_ms"), procfs::ticks_to_ms(70) as f64);
        assert_eq!(field_f64(first, "read_bytes"), 5000.0);
        assert_eq!(field_f64(first, "write_bytes"), 8192.0);
        assert_eq!(field_f64(first, "n_samples"), 2.0);
        assert_eq!(field_f64(first, "duration_ms"), 2000.0);
        assert_eq!(
            first.get("cpu_partial"),
            Some(&Json::Bool(true)),
            "no reading before it"
        );
        let second = by_start(1002.5);
        assert_eq!(
            field_f64(second, "cpu_ms"),
            procfs::ticks_to_ms(130 + 20) as f64
        );
        assert_eq!(second.get("cpu_partial"), Some(&Json::Bool(true)));
        assert_eq!(field_f64(second, "n_samples"), 3.0);
        assert_eq!(
            first.get("query"),
            Some(&Json::Str("SELECT * FROM t WHERE id = ?".into()))
        );
        assert_eq!(field_f64(&out[0].data, "n_samples"), 6.0);
    }

    #[test]
    fn a_query_seen_once_on_a_new_backend_is_charged_all_its_cpu() {
        let p = FakeProc::new("once");
        // Booted at 900 s: a start of 10_000 ticks is 1000 s (at 100 ticks a second).
        std::fs::write(p.0.join("stat"), "cpu 1 2 3\nbtime 900\n").unwrap();
        let tck = procfs::clock_ticks_per_sec();
        let mut s = p.sampler(ActivityConfig::default());
        p.set(50, 0, 1, None);
        s.absorb(&[row(50, 999.0, 998.0)]);
        // The backend connected after that sample and is seen once, mid-query.
        p.set(300, 80, 100 * tck, None);
        s.absorb(&[row(50, 1001.0, 998.0), row(300, 1001.0, 1000.5)]);
        p.set(300, 150, 100 * tck, None);
        s.absorb(&[row(50, 1002.0, 998.0)]);
        let out = s.finish_interval();
        let once = sessions(&out)
            .iter()
            .find(|e| field_f64(e, "pid") == 300.0)
            .unwrap();
        assert_eq!(field_f64(once, "cpu_ms"), procfs::ticks_to_ms(150) as f64);
        assert_eq!(once.get("cpu_partial"), Some(&Json::Bool(false)));
        assert_eq!(field_f64(once, "n_samples"), 1.0);
    }

    #[test]
    fn parallel_workers_are_folded_by_leader_pid_or_query_start() {
        let p = FakeProc::new("par");
        let mut s = p.sampler(ActivityConfig::default());
        let leader = row(200, 1000.0, 999.0);
        let pg13_worker = SessionRow {
            pid: 201,
            leader_pid: Some(200),
            backend_type: Some("parallel worker"),
            ..row(201, 1000.0, 999.1)
        };
        let pg12_worker = SessionRow {
            pid: 202,
            backend_type: Some("parallel worker"),
            ..row(202, 1000.0, 999.0)
        };
        for (pid, cpu) in [(200, 10), (201, 10), (202, 10)] {
            p.set(pid, cpu, 1, None);
        }
        s.absorb(&[pg13_worker, pg12_worker, leader]);
        for (pid, cpu) in [(200, 20), (201, 30), (202, 40)] {
            p.set(pid, cpu, 1, None);
        }
        s.absorb(&[
            SessionRow {
                now: 1001.0,
                ..pg13_worker
            },
            SessionRow {
                now: 1001.0,
                ..pg12_worker
            },
            SessionRow {
                now: 1001.0,
                ..leader
            },
        ]);
        let out = s.finish_interval();
        let all = sessions(&out);
        assert_eq!(all.len(), 1, "workers are not executions of their own");
        assert_eq!(field_f64(&all[0], "parallel_worker_samples"), 4.0);
        assert_eq!(
            field_f64(&all[0], "cpu_ms"),
            procfs::ticks_to_ms(10 + 20 + 30) as f64
        );
    }

    #[test]
    fn waits_are_counted_and_the_last_state_wins() {
        let p = FakeProc::new("waits");
        let mut s = p.sampler(ActivityConfig {
            read_procfs: false,
            ..ActivityConfig::default()
        });
        let io = SessionRow {
            wait_event_type: Some("IO"),
            wait_event: Some("DataFileRead"),
            ..row(9, 1000.0, 999.0)
        };
        let stats = s.absorb(&[io]).0;
        assert_eq!(stats.n_lock_waits, 0);
        s.absorb(&[SessionRow { now: 1001.0, ..io }]);
        let lock = SessionRow {
            now: 1002.0,
            wait_event_type: Some("Lock"),
            wait_event: Some("relation"),
            state: Some("active"),
            ..io
        };
        assert_eq!(s.absorb(&[lock]).0.n_lock_waits, 1);
        s.absorb(&[SessionRow {
            now: 1003.0,
            state: Some("idle in transaction"),
            wait_event_type: None,
            wait_event: None,
            ..io
        }]);
        let out = s.finish_interval();
        let e = &sessions(&out)[0];
        assert_eq!(
            e.get("state"),
            Some(&Json::Str("idle in transaction".into()))
        );
        assert_eq!(e.get("wait_event"), Some(&Json::Null));
        let waits = e.get("wait_events").unwrap().to_json_string();
        assert_eq!(
            waits,
            r#"[{"wait_event_type":"IO","wait_event":"DataFileRead","count":2},{"wait_event_type":"Lock","wait_event":"relation","count":1}]"#
        );
    }

    #[test]
    fn memory_is_bounded_and_running_executions_are_kept() {
        let p = FakeProc::new("cap");
        let mut s = p.sampler(ActivityConfig {
            max_executions: 2,
            read_procfs: false,
            ..ActivityConfig::default()
        });
        // pid 1 runs the whole time; pids 10.. each run one short query.
        for i in 0..10 {
            let t = 1000.0 + i as f64;
            s.absorb(&[row(1, t, 999.0), row(10 + i, t, t - 0.5)]);
            assert!(s.n_executions() <= 4, "round {i}: {}", s.n_executions());
        }
        let out = s.finish_interval();
        let data = &out[0].data;
        assert_eq!(field_f64(data, "n_executions_seen"), 11.0);
        assert_eq!(field_f64(data, "count"), 2.0);
        assert_eq!(field_f64(data, "n_left_out"), 9.0);
        assert_eq!(
            field_f64(&sessions(&out)[0], "pid"),
            1.0,
            "the long runner is kept"
        );
    }

    fn procfs_count(out: &[crate::payload::Payload], key: &str) -> f64 {
        field_f64(out[0].data.get("procfs").unwrap(), key)
    }

    /// Every listed execution's (cpu_ms, read_bytes, write_bytes), in order of CPU then read
    /// bytes: what two ways of reading the same sessions must agree on.
    fn totals(out: &[crate::payload::Payload]) -> Vec<(f64, f64, f64)> {
        let mut v: Vec<(f64, f64, f64)> = sessions(out)
            .iter()
            .map(|e| {
                (
                    field_f64(e, "cpu_ms"),
                    field_f64(e, "read_bytes"),
                    field_f64(e, "write_bytes"),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v
    }

    #[test]
    fn io_of_a_quiet_session_is_not_read_again_and_nothing_is_lost() {
        let p = FakeProc::new("quiet");
        let mut s = p.sampler(ActivityConfig::default());
        let sleeping = SessionRow {
            wait_event_type: Some("Timeout"),
            wait_event: Some("PgSleep"),
            ..row(100, 1000.0, 999.0)
        };
        p.set(100, 10, 5, Some((0, 0)));
        s.absorb(&[sleeping]);
        // Still asleep: io is taken as unchanged. (The file changes here only to prove it is
        // not read; a real sleeping backend's would not.)
        p.set(100, 20, 5, Some((4096, 512)));
        s.absorb(&[SessionRow {
            now: 1001.0,
            ..sleeping
        }]);
        // Awake: read again, and the I/O since the last reading is charged to the execution.
        p.set(100, 30, 5, Some((4096, 512)));
        s.absorb(&[SessionRow {
            now: 1002.0,
            wait_event_type: None,
            wait_event: None,
            ..sleeping
        }]);
        // A lock waiter in a new execution is read in full first (the previous execution's
        // tail is in that reading).
        p.set(100, 40, 5, Some((8192, 512)));
        let waiting = SessionRow {
            wait_event_type: Some("Lock"),
            wait_event: Some("relation"),
            ..row(100, 1003.0, 1002.5)
        };
        s.absorb(&[waiting]);
        let out = s.finish_interval();
        assert_eq!(procfs_count(&out, "io_unchanged"), 1.0);
        assert_eq!(procfs_count(&out, "readings_deferred"), 0.0);
        let by_start = |qs: f64| {
            sessions(&out)
                .iter()
                .find(|e| e.get("query_start") == Some(&Json::Float(qs)))
                .unwrap()
                .clone()
        };
        // Everything from the first reading to the one that saw the next execution is the
        // slept execution's (the last second is its tail), as when every file is read.
        let slept = by_start(999.0);
        assert_eq!(field_f64(&slept, "read_bytes"), 8192.0);
        assert_eq!(field_f64(&slept, "write_bytes"), 512.0);
        assert_eq!(field_f64(&slept, "cpu_ms"), procfs::ticks_to_ms(30) as f64);
    }

    #[test]
    fn deferred_readings_at_the_rotate_level_charge_the_same_totals() {
        use crate::collect::cost_control::{CostControl, Level};
        let run = |level: Level| {
            let p = FakeProc::new(&format!("rot{}", level.index()));
            let mut s = p.sampler(ActivityConfig::default());
            s.cost = CostControl::new(std::time::Duration::from_millis(1)).at_level(level);
            for round in 0..10u64 {
                let t = 1000.0 + round as f64;
                let rows: Vec<SessionRow> = (0..4)
                    .map(|i| {
                        p.set(100 + i, 10 * round, 5, Some((4096 * round, 0)));
                        row(100 + i, t, 999.0)
                    })
                    .collect();
                s.absorb(&rows);
            }
            // They end: the first sample after reads each once more.
            for i in 0..4 {
                p.set(100 + i, 100, 5, Some((40960, 0)));
            }
            s.absorb(&[]);
            s.finish_interval()
        };
        let full = run(Level::Full);
        let rotated = run(Level::Rotate);
        assert_eq!(procfs_count(&full, "readings_deferred"), 0.0);
        assert!(procfs_count(&rotated, "readings_deferred") >= 20.0);
        assert_eq!(totals(&rotated), totals(&full));
        let first = totals(&full)[0];
        assert_eq!(
            (first.0, first.1),
            (procfs::ticks_to_ms(100) as f64, 40960.0),
            "charged from the first reading to the last"
        );
    }

    /// `rounds` samples `period_s` apart of `sessions` backends (pids 100, 101, ...) in one
    /// execution each, every one spending 10 ticks, 4096 bytes read and 512 written a sample.
    fn work(p: &FakeProc, s: &mut ActivitySampler, rounds: u64, sessions: i32, period_s: f64) {
        for round in 0..rounds {
            let t = 1000.0 + round as f64 * period_s;
            let rows: Vec<SessionRow> = (0..sessions)
                .map(|i| {
                    p.set(100 + i, 10 * round, 5, Some((4096 * round, 512 * round)));
                    row(100 + i, t, 999.0)
                })
                .collect();
            s.absorb(&rows);
        }
    }

    #[test]
    fn readings_deferred_at_the_close_are_taken_there_so_the_interval_has_every_second() {
        use crate::collect::cost_control::{CostControl, Level};
        // Four working sessions, still running when the interval closes (no sample after).
        let run = |level: Level, sub_second: bool| {
            let p = FakeProc::new(&format!("close{}{sub_second}", level.index()));
            let mut s = p.sampler(ActivityConfig::default());
            s.cost = CostControl::new(std::time::Duration::from_millis(1)).at_level(level);
            s.set_sub_second(sub_second);
            work(&p, &mut s, 10, 4, 1.0);
            s.finish_interval()
        };
        let full = run(Level::Full, false);
        let rotated = run(Level::Rotate, false);
        let burst = run(Level::Full, true);
        assert!(procfs_count(&rotated, "readings_deferred") >= 20.0);
        assert!(procfs_count(&burst, "io_unchanged") >= 20.0);
        assert_eq!(totals(&rotated), totals(&full));
        assert_eq!(totals(&burst), totals(&full));
        assert_eq!(
            totals(&full)[0],
            (procfs::ticks_to_ms(90) as f64, 4096.0 * 9.0, 512.0 * 9.0),
            "up to the last sample before the close"
        );
    }

    #[test]
    fn a_burst_reads_io_one_sample_in_four_and_charges_the_same_totals() {
        let run = |sub_second: bool| {
            let p = FakeProc::new(&format!("burst{sub_second}"));
            let mut s = p.sampler(ActivityConfig::default());
            s.set_sub_second(sub_second);
            work(&p, &mut s, 12, 3, 0.25);
            for i in 0..3 {
                p.set(100 + i, 200, 5, Some((65536, 8192)));
            }
            s.absorb(&[]);
            s.finish_interval()
        };
        let every = run(false);
        let burst = run(true);
        assert_eq!(procfs_count(&every, "io_unchanged"), 0.0);
        // 3 backends x 11 samples after the first reading, io read on one in four of them.
        assert!(procfs_count(&burst, "io_unchanged") >= 24.0);
        assert_eq!(totals(&burst), totals(&every));
        assert_eq!(totals(&every)[0].1, 65536.0);
    }

    #[test]
    fn set_opt_reuses_and_clears() {
        let mut s = None;
        set_opt(&mut s, Some("Lock"));
        set_opt(&mut s, Some("IO"));
        assert_eq!(s.as_deref(), Some("IO"));
        set_opt(&mut s, None);
        assert_eq!(s, None);
    }
}
