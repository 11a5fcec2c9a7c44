//! What one spike showed, and its report: the `pg_stat_activity` payload with
//! `data.kind = "spike"` shipped when the spike starts (`phase = "start"`, short) and when it ends
//! (`phase = "end"`, full): window, peak, the per-sample timeline at burst resolution, the load
//! by query, request and wait class with shares, the root blockers with their request and query,
//! the host's run queue and pressure, and the deep snapshot when one was taken.
//!
//! Invariants: bounded memory (at most [`MAX_SPIKE_ROWS`] timeline rows and [`MAX_BLOCKERS`]
//! root blockers per spike; attribution is bounded by `attrib`); the start and end reports of a
//! spike carry the same `spike_id`.

use std::collections::HashMap;

use super::attrib::Attribution;
use super::timeline::{Row, Timeline};
use super::{round, SampleSnapshot, CLASSES};
use crate::collect::locks;
use crate::json::Json;

/// Most timeline rows kept per spike (10 minutes at 4 samples a second).
pub const MAX_SPIKE_ROWS: usize = 2400;

/// Most root blockers remembered per spike.
pub const MAX_BLOCKERS: usize = 50;

/// A session at the root of a lock tree during the spike.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocker {
    /// Its pid.
    pub pid: i32,
    /// Lock snapshots it was a root in.
    pub n_snapshots: u32,
    /// Most sessions waiting behind it in one snapshot.
    pub max_blocked: usize,
    /// Its request (correlation id).
    pub correlation_id: Option<String>,
    /// Its query text (rendered).
    pub query: Option<String>,
    /// Its query_id.
    pub query_id: Option<i64>,
    /// Its state (`idle in transaction` is the classic culprit).
    pub state: Option<String>,
    /// Its wait type when last seen.
    pub wait_event_type: Option<String>,
    /// Role.
    pub usename: Option<String>,
    /// Database.
    pub datname: Option<String>,
}

impl Blocker {
    fn to_json(&self) -> Json {
        Json::object()
            .field("pid", self.pid)
            .field("max_blocked", self.max_blocked)
            .field("n_snapshots", self.n_snapshots)
            .field("correlation_id", self.correlation_id.as_deref())
            .field("query_id", self.query_id)
            .field("query", self.query.as_deref())
            .field("state", self.state.as_deref())
            .field("wait_event_type", self.wait_event_type.as_deref())
            .field("usename", self.usename.as_deref())
            .field("datname", self.datname.as_deref())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct HostPeaks {
    run_r: u32,
    run_d: u32,
    procs_running: Option<u64>,
    procs_blocked: Option<u64>,
    load1: Option<f64>,
    cpu_busy_pct: Option<f64>,
    iowait_pct: Option<f64>,
    psi_cpu: Option<f64>,
    psi_io: Option<f64>,
    psi_memory: Option<f64>,
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// One spike being captured.
#[derive(Debug, Clone)]
pub struct SpikeCapture {
    /// First hot sample (unix seconds).
    pub start: f64,
    /// Last hot sample, once ended.
    pub end: Option<f64>,
    /// Which rule started it.
    pub reason: &'static str,
    /// Why it ended.
    pub end_reason: Option<&'static str>,
    /// The baseline it was measured against.
    pub baseline: f64,
    peak: Row,
    timeline: Timeline,
    attrib: Attribution,
    blockers: HashMap<i32, Blocker>,
    host: HostPeaks,
    /// The deep snapshot, once taken.
    pub deep: Option<Json>,
    /// The spike's own pg_stat_statements deltas, once known.
    pub statements: Option<Json>,
}

impl SpikeCapture {
    /// A spike that started at `start`.
    pub fn new(start: f64, reason: &'static str, baseline: f64) -> SpikeCapture {
        SpikeCapture {
            start,
            end: None,
            reason,
            end_reason: None,
            baseline,
            peak: Row::default(),
            timeline: Timeline::new(MAX_SPIKE_ROWS),
            attrib: Attribution::default(),
            blockers: HashMap::new(),
            host: HostPeaks::default(),
            deep: None,
            statements: None,
        }
    }

    /// The id both reports of this spike carry.
    pub fn id(&self) -> String {
        format!("{:.3}", self.start)
    }

    /// Adds one sample (its row, its sessions, its period in seconds).
    pub fn add(&mut self, snap: &SampleSnapshot, row: &Row, period_s: f64) {
        if row.active() > self.peak.active() || self.timeline.rows().is_empty() {
            self.peak = *row;
        }
        self.timeline.push(*row);
        self.attrib.add_sample(&snap.rows, period_s);
        let h = &mut self.host;
        h.run_r = h.run_r.max(row.run_r);
        h.run_d = h.run_d.max(row.run_d);
        h.procs_running = max_opt(h.procs_running, row.host.procs_running);
        h.procs_blocked = max_opt(h.procs_blocked, row.host.procs_blocked);
        h.load1 = max_opt(h.load1, row.host.load1);
        h.cpu_busy_pct = max_opt(h.cpu_busy_pct, row.host.cpu_busy_pct);
        h.iowait_pct = max_opt(h.iowait_pct, row.host.iowait_pct);
        h.psi_cpu = max_opt(h.psi_cpu, row.host.psi_cpu);
        h.psi_io = max_opt(h.psi_io, row.host.psi_io);
        h.psi_memory = max_opt(h.psi_memory, row.host.psi_memory);
        if let Some(waiters) = &snap.waiters {
            self.add_lock_trees(snap, waiters);
        }
    }

    fn add_lock_trees(&mut self, snap: &SampleSnapshot, waiters: &[locks::LockWaiter]) {
        for tree in locks::build_trees(waiters) {
            let known = self.blockers.contains_key(&tree.root);
            if !known && self.blockers.len() >= MAX_BLOCKERS {
                continue;
            }
            let b = self.blockers.entry(tree.root).or_insert_with(|| Blocker {
                pid: tree.root,
                ..Blocker::default()
            });
            b.n_snapshots += 1;
            b.max_blocked = b.max_blocked.max(tree.n_blocked());
            if let Some(r) = snap.rows.iter().find(|r| r.pid == tree.root) {
                b.state.clone_from(&r.state);
                b.wait_event_type.clone_from(&r.wait_event_type);
                if r.query.is_some() {
                    b.query.clone_from(&r.query);
                    b.query_id = r.query_id;
                }
                if r.correlation_id.is_some() {
                    b.correlation_id.clone_from(&r.correlation_id);
                }
                b.usename.clone_from(&r.usename);
                b.datname.clone_from(&r.datname);
            }
        }
    }

    /// Samples captured.
    pub fn timeline_len(&self) -> usize {
        self.timeline.rows().len()
    }

    /// The root blockers, most sessions blocked first.
    pub fn root_blockers(&self) -> Vec<&Blocker> {
        let mut all: Vec<&Blocker> = self.blockers.values().collect();
        all.sort_by(|a, b| {
            b.max_blocked
                .cmp(&a.max_blocked)
                .then(b.n_snapshots.cmp(&a.n_snapshots))
                .then(a.pid.cmp(&b.pid))
        });
        all
    }

    /// The attribution of the spike's samples.
    pub fn attribution(&self) -> &Attribution {
        &self.attrib
    }

    /// The longest gap between two consecutive samples of the spike, in ms.
    pub fn max_sample_gap_ms(&self) -> Option<f64> {
        self.timeline
            .rows()
            .windows(2)
            .map(|w| (w[1].t - w[0].t) * 1000.0)
            .max_by(f64::total_cmp)
    }

    /// The time of its last sample so far.
    pub fn last_sample_at(&self) -> Option<f64> {
        self.timeline.rows().last().map(|r| r.t)
    }

    /// The request ids of the spike's top `n` requests by active seconds, blockers first.
    pub fn top_requests(&self, n: usize) -> Vec<String> {
        let mut out: Vec<String> = self
            .root_blockers()
            .iter()
            .filter_map(|b| b.correlation_id.clone())
            .collect();
        for (id, _) in self.attrib.top(1, n) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out.truncate(n);
        out
    }

    /// The report: `phase` is `"start"` (short: no timeline, top 3) or `"end"` (full).
    pub fn to_json(&self, phase: &str, top_n: usize) -> Json {
        let full = phase == "end";
        let end = self.end.or(self.timeline.rows().last().map(|r| r.t));
        let total = self.attrib.total();
        let mut classes: Vec<(usize, f64)> = total
            .by_class
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, v)| *v > 0.0)
            .collect();
        classes.sort_by(|a, b| b.1.total_cmp(&a.1));
        let wait_classes = Json::Array(
            classes
                .iter()
                .map(|(i, v)| {
                    Json::object()
                        .field("class", CLASSES[*i])
                        .field("active_s", round(*v, 3))
                        .field(
                            "share",
                            if total.active_s > 0.0 {
                                round(v / total.active_s, 4)
                            } else {
                                0.0
                            },
                        )
                })
                .collect(),
        );
        let mut peak_classes = Json::object();
        for (i, c) in CLASSES.iter().enumerate() {
            if self.peak.classes[i] > 0 {
                peak_classes.push(*c, self.peak.classes[i]);
            }
        }
        let h = &self.host;
        let n = if full { top_n } else { top_n.min(3) };
        Json::object()
            .field("kind", "spike")
            .field("phase", phase)
            .field("spike_id", self.id())
            .field("start", round(self.start, 3))
            .field("end", end.map(|e| round(e, 3)))
            .field("duration_s", end.map(|e| round(e - self.start, 3)))
            .field("reason", self.reason)
            .field("end_reason", self.end_reason)
            .field("baseline", round(self.baseline, 2))
            .field(
                "peak",
                Json::object()
                    .field("at", round(self.peak.t, 3))
                    .field("active", self.peak.active())
                    .field("by_class", peak_classes)
                    .field("run_r", self.peak.run_r)
                    .field("run_d", self.peak.run_d),
            )
            .field("n_samples", self.timeline.rows().len())
            .field(
                "max_sample_gap_ms",
                self.max_sample_gap_ms().map(|g| round(g, 1)),
            )
            .field("top_class", total.top_class())
            .field("wait_classes", wait_classes)
            .field(
                "root_blockers",
                Json::Array(
                    self.root_blockers()
                        .iter()
                        .take(n)
                        .map(|b| b.to_json())
                        .collect(),
                ),
            )
            .field("load", self.attrib.to_json(n))
            .field(
                "host",
                Json::object()
                    .field("max_run_r", h.run_r)
                    .field("max_run_d", h.run_d)
                    .field("max_procs_running", h.procs_running)
                    .field("max_procs_blocked", h.procs_blocked)
                    .field("max_load1", h.load1)
                    .field("max_cpu_busy_pct", h.cpu_busy_pct.map(|x| round(x, 1)))
                    .field("max_iowait_pct", h.iowait_pct.map(|x| round(x, 1)))
                    .field("max_psi_cpu_some_avg10", h.psi_cpu)
                    .field("max_psi_io_some_avg10", h.psi_io)
                    .field("max_psi_memory_some_avg10", h.psi_memory),
            )
            .field(
                "timeline",
                if full {
                    self.timeline.to_json()
                } else {
                    Json::Null
                },
            )
            .field("deep", if full { self.deep.clone() } else { None })
            .field(
                "statements",
                if full { self.statements.clone() } else { None },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::super::hostline::HostPoint;
    use super::super::SampleRow;
    use super::*;
    use crate::collect::locks::LockWaiter;

    const HOLDER: &str = "aaaaaaaa-0000-4000-8000-000000000001";

    fn pile_up(t: f64, n: i32) -> SampleSnapshot {
        let mut rows = vec![SampleRow {
            pid: 1,
            state: Some("idle in transaction".into()),
            wait_event_type: Some("Client".into()),
            query: Some("UPDATE t SET v = ? WHERE id = ?".into()),
            correlation_id: Some(HOLDER.into()),
            ..SampleRow::default()
        }];
        let mut waiters = vec![];
        for pid in 2..2 + n {
            rows.push(SampleRow {
                pid,
                state: Some("active".into()),
                wait_event_type: Some("Lock".into()),
                query: Some("UPDATE t SET v = v + ? WHERE id = ?".into()),
                correlation_id: Some(format!("req-{pid}")),
                ..SampleRow::default()
            });
            waiters.push(LockWaiter {
                pid,
                blockers: vec![if pid == 2 { 1 } else { 2 }],
                locktype: Some("transactionid".into()),
                mode: None,
                relation: None,
                relation_oid: None,
                same_database: true,
                wait_ms: None,
            });
        }
        SampleSnapshot {
            at: t,
            rows,
            run_states: vec![b'S'; n as usize + 1],
            waiters: Some(waiters),
        }
    }

    #[test]
    fn a_lock_pile_up_names_its_root_blocker_and_lock_class() {
        let mut s = SpikeCapture::new(100.0, "sessions", 1.0);
        for i in 0..8 {
            let snap = pile_up(100.0 + i as f64 * 0.25, 40);
            let row = Row::from_sample(&snap, HostPoint::default());
            s.add(&snap, &row, 0.25);
        }
        s.end = Some(101.75);
        s.end_reason = Some("quiet");
        let roots = s.root_blockers();
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].pid, 1);
        assert_eq!(roots[0].max_blocked, 40);
        assert_eq!(roots[0].correlation_id.as_deref(), Some(HOLDER));
        assert_eq!(s.top_requests(3)[0], HOLDER, "the blocker's request first");
        assert_eq!(s.max_sample_gap_ms(), Some(250.0));
        let j = s.to_json("end", 10);
        assert_eq!(j.get("top_class"), Some(&Json::Str("Lock".into())));
        assert_eq!(j.get("spike_id"), Some(&Json::Str("100.000".into())));
        let text = j.to_json_string();
        assert!(
            text.contains(r#""peak":{"at":100.0,"active":40,"by_class":{"Lock":40}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""class":"Lock","active_s":80.0,"share":1.0"#),
            "{text}"
        );
        let short = s.to_json("start", 10);
        assert_eq!(short.get("timeline"), Some(&Json::Null));
        assert!(short.to_json_string().contains(HOLDER));
    }

    #[test]
    fn memory_per_spike_is_bounded() {
        let mut s = SpikeCapture::new(0.0, "sessions", 0.0);
        for i in 0..(MAX_SPIKE_ROWS + 10) {
            let snap = SampleSnapshot {
                at: i as f64,
                waiters: Some(vec![LockWaiter {
                    pid: 100_000 + i as i32,
                    blockers: vec![i as i32],
                    locktype: None,
                    mode: None,
                    relation: None,
                    relation_oid: None,
                    same_database: true,
                    wait_ms: None,
                }]),
                ..SampleSnapshot::default()
            };
            s.add(&snap, &Row::from_sample(&snap, HostPoint::default()), 1.0);
        }
        assert_eq!(s.timeline.rows().len(), MAX_SPIKE_ROWS);
        assert_eq!(s.blockers.len(), MAX_BLOCKERS);
    }
}
