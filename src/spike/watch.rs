//! The sampler thread's spike bookkeeping, in one place so the thread loop stays small: after
//! each sample it reads the host line, adds the row to the interval's timeline and attribution
//! and to the flight recorder, steps the detector, captures the spike and returns the spike
//! reports to append at once; it chooses the next sample period (burst or normal); at the
//! interval's end it adds the timeline and the attribution to the activity summary.
//!
//! Invariants: the reports of one spike share its `spike_id`, the start report is returned by the
//! sample that started it and the end report by the sample that ended it (or by [`Watch::stop`]);
//! the interval's timeline is bounded ([`MAX_INTERVAL_ROWS`]).

use std::path::Path;
use std::time::Duration;

use super::attrib::Attribution;
use super::deep::{self, Request};
use super::detector::{Detector, DetectorConfig, Event, Point};
use super::hostline::HostLine;
use super::recorder::{Recorder, RecorderConfig};
use super::report::SpikeCapture;
use super::timeline::{Row, Timeline};
use super::SampleSnapshot;
use crate::collect::inthash::IntMap;
use crate::config::SpikeConfig;
use crate::json::Json;
use crate::logtail::EventStore;
use crate::payload::{unix_now, Payload, Source};

/// Most timeline rows per interval summary (an hour at 1 s, or 15 minutes of bursts).
pub const MAX_INTERVAL_ROWS: usize = 3600;

impl DetectorConfig {
    /// The detector settings of the `[spike]` section.
    pub fn from_spike(s: &SpikeConfig) -> DetectorConfig {
        DetectorConfig {
            min_active: s.min_active_sessions,
            factor: s.baseline_factor,
            load_per_cpu: s.load_per_cpu,
            quiet: s.end_after_quiet,
            baseline: s.baseline,
            burst_interval: s.burst_sample_interval,
            burst_max: s.burst_max,
            burst_budget: s.burst_budget_per_hour,
        }
    }
}

/// The spike side of the sampler thread.
#[derive(Debug)]
pub struct Watch {
    host: HostLine,
    detector: Detector,
    timeline: Timeline,
    attrib: Attribution,
    spike: Option<SpikeCapture>,
    recorder: Option<Recorder>,
    top_n: usize,
    normal: Duration,
    period: Duration,
    statements_start: Vec<deep::StatementCounters>,
    /// Per pid: the execution (`exec_start`) and its CPU ticks at the previous sample.
    cpu_prev: IntMap<i32, (i64, u64)>,
    /// The same for this sample, being filled (kept to reuse its memory).
    cpu_now: IntMap<i32, (i64, u64)>,
    /// The log thread's classified events, for the end reports' `log_events`.
    events: Option<EventStore>,
}

/// Seconds around a spike's window whose log events its end report counts: the server writes a
/// lock wait after `deadlock_timeout` and a temp file when it is deleted, so an event of the
/// spike may carry a time a little before its first or after its last hot sample.
pub const LOG_EVENT_SLACK_S: f64 = 5.0;

/// Most events per class listed in `log_events.top`.
pub const LOG_EVENTS_TOP_PER_CLASS: usize = 3;

fn spike_payload(data: Json) -> Payload {
    Payload {
        source: Source::PgStatActivity,
        collected_at: unix_now(),
        correlation_id: None,
        data,
    }
}

impl Watch {
    /// A watch with the `[spike]` settings, the normal sample period, and the flight recorder in
    /// `state_dir` (`None`: no recorder, for tests).
    pub fn new(cfg: &SpikeConfig, normal: Duration, state_dir: Option<&Path>) -> Watch {
        Watch::with_host(cfg, normal, state_dir, HostLine::new())
    }

    /// [`Watch::new`] reading the host figures through `host`.
    pub fn with_host(
        cfg: &SpikeConfig,
        normal: Duration,
        state_dir: Option<&Path>,
        host: HostLine,
    ) -> Watch {
        Watch {
            host,
            detector: Detector::new(DetectorConfig::from_spike(cfg)),
            timeline: Timeline::new(MAX_INTERVAL_ROWS),
            attrib: Attribution::default(),
            spike: None,
            recorder: state_dir.map(|d| {
                Recorder::new(RecorderConfig {
                    dir: d.to_path_buf(),
                    max_bytes: cfg.history_max_bytes,
                    history: cfg.history,
                })
            }),
            top_n: cfg.attribution_top_n,
            normal,
            period: normal,
            statements_start: Vec::new(),
            cpu_prev: IntMap::default(),
            cpu_now: IntMap::default(),
            events: None,
        }
    }

    /// Adds `log_events` (the classified log events of the spike's window, from `store`) to
    /// the end reports.
    pub fn with_event_store(mut self, store: EventStore) -> Watch {
        self.events = Some(store);
        self
    }

    /// Fills each row's `cpu_ticks` (since the previous sample) from the sampler's running
    /// total of its execution: the whole total for an execution not seen before (or after the
    /// interval restarted the totals).
    fn cpu_deltas(&mut self, snap: &mut SampleSnapshot) {
        let seen = &mut self.cpu_now;
        seen.clear();
        for r in &mut snap.rows {
            r.cpu_ticks = match self.cpu_prev.get(&r.pid) {
                Some(&(start, total)) if start == r.exec_start && total <= r.cpu_ticks_total => {
                    r.cpu_ticks_total - total
                }
                _ => r.cpu_ticks_total,
            };
            seen.insert(r.pid, (r.exec_start, r.cpu_ticks_total));
        }
        std::mem::swap(&mut self.cpu_prev, &mut self.cpu_now);
    }

    /// Takes in one sample; returns the spike reports to append now. `db` answers the deep
    /// snapshot at a spike's start and the statement counters at its end (`None`: not
    /// available, paused, or failed; the report goes out without them).
    pub fn after_sample(
        &mut self,
        mut snap: SampleSnapshot,
        db: &mut dyn FnMut(&Request) -> Option<deep::Answer>,
    ) -> Vec<Payload> {
        self.observe(&mut snap, db)
    }

    /// [`Self::after_sample`] on a snapshot the caller keeps and refills (see
    /// [`crate::collect::activity::ActivitySampler::fill_spike_snapshot`]); fills its rows'
    /// `cpu_ticks`.
    pub fn observe(
        &mut self,
        snap: &mut SampleSnapshot,
        db: &mut dyn FnMut(&Request) -> Option<deep::Answer>,
    ) -> Vec<Payload> {
        self.cpu_deltas(snap);
        let snap = &*snap;
        let host = self.host.sample(self.spike.is_some());
        let row = Row::from_sample(snap, host);
        let period_s = self.period.as_secs_f64();
        self.timeline.push(row);
        self.attrib.add_sample(&snap.rows, period_s);
        if let Some(r) = self.recorder.as_mut() {
            r.row(&row, self.spike.is_some());
        }
        let mut out = Vec::new();
        let event = self.detector.step(Point {
            t: row.t,
            active: row.active(),
            run_rd: row.run_r + row.run_d,
            load1: host.load1,
            n_cpus: host.n_cpus,
        });
        if let Event::Started {
            start,
            reason,
            baseline,
        } = event
        {
            log::info!(
                "load spike: {} active sessions, {} backends in R/D (baseline {baseline:.1}, rule: {reason})",
                row.active(),
                row.run_r + row.run_d
            );
            let mut s = SpikeCapture::new(start, reason, baseline);
            s.add(snap, &row, period_s);
            // The short report first: a spike that takes the server down still leaves it.
            out.push(self.report(&s, "start"));
            self.statements_start.clear();
            if let Some(a) = db(&Request::Start) {
                s.deep = a.snapshot;
                self.statements_start = a.statements;
            }
            self.spike = Some(s);
            return out;
        }
        if let Some(s) = self.spike.as_mut() {
            s.add(snap, &row, period_s);
        }
        if let Event::Ended { end, reason, .. } = event {
            if let Some(mut s) = self.spike.take() {
                s.end = Some(end);
                s.end_reason = Some(reason);
                self.add_statement_deltas(&mut s, db);
                log::info!(
                    "load spike over: {:.1} s, {} samples",
                    end - s.start,
                    s.timeline_len()
                );
                out.push(self.report(&s, "end"));
            }
        }
        out
    }

    fn report(&mut self, s: &SpikeCapture, phase: &str) -> Payload {
        let mut data = s.to_json(phase, self.top_n);
        if let (Some(store), "end") = (&self.events, phase) {
            let end = s.end.or(s.last_sample_at()).unwrap_or(s.start).max(s.start);
            data.push(
                "log_events",
                store.summary(
                    s.start - LOG_EVENT_SLACK_S,
                    end + LOG_EVENT_SLACK_S,
                    LOG_EVENTS_TOP_PER_CLASS,
                ),
            );
        }
        if let Some(r) = self.recorder.as_mut() {
            r.spike(s.start, &data);
        }
        spike_payload(data)
    }

    fn add_statement_deltas(
        &mut self,
        s: &mut SpikeCapture,
        db: &mut dyn FnMut(&Request) -> Option<deep::Answer>,
    ) {
        let start = std::mem::take(&mut self.statements_start);
        if start.is_empty() {
            return;
        }
        let query_ids = start.iter().map(|c| c.query_id).collect();
        if let Some(a) = db(&Request::End { query_ids }) {
            s.statements = Some(deep::deltas(&start, &a.statements));
        }
    }

    /// Whether a spike lasts.
    pub fn in_spike(&self) -> bool {
        self.spike.is_some()
    }

    /// The request ids of the current spike's top requests (blockers first), for the correlated
    /// budget.
    pub fn top_requests(&self, n: usize) -> Vec<String> {
        self.spike
            .as_ref()
            .map_or_else(Vec::new, |s| s.top_requests(n))
    }

    /// The period until the next sample (burst while a spike lasts and the budget allows).
    pub fn next_period(&mut self) -> Duration {
        self.period = self.detector.next_period(unix_now(), self.normal);
        self.period
    }

    /// Adds `timeline` and `load` (the attribution) to the interval's activity summary and
    /// starts the next interval.
    pub fn finish_interval(&mut self, summary: &mut Payload) {
        summary.data.push("timeline", self.timeline.to_json());
        summary.data.push("load", self.attrib.to_json(self.top_n));
        summary
            .data
            .push("spike_in_progress", self.spike.as_ref().map(|s| s.id()));
        self.timeline.clear();
        self.attrib = Attribution::default();
    }

    /// At shutdown: the end report of a spike still in progress (`end_reason = "agent_stop"`).
    pub fn stop(&mut self, db: &mut dyn FnMut(&Request) -> Option<deep::Answer>) -> Vec<Payload> {
        match self.spike.take() {
            Some(mut s) => {
                s.end_reason = Some("agent_stop");
                self.add_statement_deltas(&mut s, db);
                vec![self.report(&s, "end")]
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SampleRow;
    use super::*;

    fn spike_cfg() -> SpikeConfig {
        SpikeConfig {
            min_active_sessions: 5,
            baseline_factor: 3.0,
            load_per_cpu: 0.0,
            end_after_quiet: Duration::from_secs(2),
            baseline: Duration::from_secs(60),
            burst_sample_interval: Duration::from_millis(250),
            burst_max: Duration::from_secs(60),
            burst_budget_per_hour: Duration::from_secs(300),
            attribution_top_n: 10,
            history: Duration::from_secs(3600),
            history_max_bytes: 1 << 20,
        }
    }

    fn snap(t: f64, n: usize) -> SampleSnapshot {
        SampleSnapshot {
            at: t,
            rows: (0..n)
                .map(|i| SampleRow {
                    pid: i as i32 + 1,
                    state: Some("active".into()),
                    wait_event_type: Some("Lock".into()),
                    query: Some("UPDATE t SET v = ?".into()),
                    ..SampleRow::default()
                })
                .collect(),
            ..SampleSnapshot::default()
        }
    }

    #[test]
    fn cpu_is_charged_per_sample_from_the_running_totals() {
        let mut w = Watch::with_host(
            &spike_cfg(),
            Duration::from_secs(1),
            None,
            HostLine::with_root("/nonexistent"),
        );
        let row = |start: i64, total: u64| SampleRow {
            pid: 7,
            exec_start: start,
            cpu_ticks_total: total,
            ..SampleRow::default()
        };
        let mut s = SampleSnapshot {
            rows: vec![row(1, 10)],
            ..SampleSnapshot::default()
        };
        w.cpu_deltas(&mut s);
        assert_eq!(s.rows[0].cpu_ticks, 10, "a new execution: all it has");
        s.rows = vec![row(1, 25)];
        w.cpu_deltas(&mut s);
        assert_eq!(s.rows[0].cpu_ticks, 15);
        s.rows = vec![row(2, 3)];
        w.cpu_deltas(&mut s);
        assert_eq!(s.rows[0].cpu_ticks, 3, "the next query of the pid");
        s.rows = vec![row(2, 1)];
        w.cpu_deltas(&mut s);
        assert_eq!(s.rows[0].cpu_ticks, 1, "totals restarted with the interval");
    }

    #[test]
    fn a_spike_gives_a_start_and_an_end_report_and_the_summary_its_timeline() {
        let dir = std::env::temp_dir().join(format!("bv-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Watch::with_host(
            &spike_cfg(),
            Duration::from_secs(1),
            Some(&dir),
            HostLine::with_root(dir.join("no-proc")),
        );
        let mut asked = vec![];
        let mut db = |r: &Request| {
            asked.push(r.clone());
            Some(deep::Answer {
                snapshot: Some(Json::object().field("lock_trees", Json::Array(vec![]))),
                statements: vec![deep::StatementCounters {
                    query_id: 9,
                    calls: matches!(r, Request::End { .. }) as i64 * 5,
                    ..deep::StatementCounters::default()
                }],
                query_ids: vec![9],
            })
        };
        let mut reports = vec![];
        for i in 0..10 {
            reports.extend(w.after_sample(snap(i as f64, 1), &mut db));
        }
        assert!(reports.is_empty());
        for i in 10..15 {
            reports.extend(w.after_sample(snap(i as f64, 40), &mut db));
        }
        assert_eq!(reports.len(), 1);
        assert_eq!(
            reports[0].data.get("phase"),
            Some(&Json::Str("start".into()))
        );
        assert_eq!(w.next_period(), Duration::from_millis(250));
        for i in 15..20 {
            reports.extend(w.after_sample(snap(i as f64, 0), &mut db));
        }
        assert_eq!(reports.len(), 2);
        let end = &reports[1].data;
        assert_eq!(end.get("phase"), Some(&Json::Str("end".into())));
        assert_eq!(end.get("end"), Some(&Json::Float(14.0)));
        assert_eq!(end.get("spike_id"), reports[0].data.get("spike_id"));
        let text = end.to_json_string();
        assert!(
            text.contains(r#""statements":[{"query_id":9,"calls":5,"#),
            "{text}"
        );
        assert!(text.contains(r#""deep":{"lock_trees":[]}"#), "{text}");
        assert_eq!(
            asked,
            vec![Request::Start, Request::End { query_ids: vec![9] }],
            "one deep snapshot at the start, the counters again at the end"
        );
        let mut summary = spike_payload(Json::object());
        w.finish_interval(&mut summary);
        let text = summary.data.to_json_string();
        assert!(text.contains(r#""n_rows":20"#), "{text}");
        assert!(
            text.contains(r#""Lock":[1,1,1,1,1,1,1,1,1,1,40,40,40,40,40,0"#),
            "{text}"
        );
        let before_flush = super::super::recorder::read(&dir, 0.0, 100.0).unwrap();
        assert_eq!(
            before_flush.rows.len(),
            17,
            "rows up to the end of the spike are written; the 3 calm ones after it wait"
        );
        drop(w);
        let h = super::super::recorder::read(&dir, 0.0, 100.0).unwrap();
        assert_eq!(h.rows.len(), 20);
        assert_eq!(h.spikes.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_end_report_lists_the_log_events_of_the_spike_window_only() {
        use crate::logtail::events::{Event as LogEvent, EventClass};
        use crate::logtail::{EventStore, StoredEvent};
        let store = EventStore::default();
        let mut w = Watch::with_host(
            &spike_cfg(),
            Duration::from_secs(1),
            None,
            HostLine::with_root("/nonexistent"),
        )
        .with_event_store(store.clone());
        let wait = |at: f64, ms: f64| StoredEvent {
            at,
            pid: Some(at as u32),
            correlation_id: Some(format!("req-{at}")),
            event: LogEvent {
                class: EventClass::LockWait,
                figures: Json::object().field("wait_ms", ms),
            },
        };
        store.record(wait(1.0, 9000.0)); // long before the spike (it starts at 10)
        store.record(wait(8.0, 100.0)); // within the slack
        store.record(wait(12.0, 4000.0));
        let mut reports = vec![];
        for i in 0..20 {
            let n = if (10..15).contains(&i) { 40 } else { 1 };
            reports.extend(w.after_sample(snap(i as f64, n), &mut |_| None));
        }
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].data.get("log_events"), None, "end report only");
        let ev = reports[1].data.get("log_events").expect("log_events");
        assert_eq!(ev.get("total"), Some(&Json::UInt(2)));
        assert_eq!(ev.get("from"), Some(&Json::Float(10.0 - LOG_EVENT_SLACK_S)));
        let text = ev.to_json_string();
        assert!(text.contains(r#""counts":{"lock_wait":2}"#), "{text}");
        assert!(
            text.contains(r#""top":[{"class":"lock_wait","wait_ms":4000.0,"at":12.0,"pid":12,"correlation_id":"req-12"}"#),
            "{text}"
        );
    }
}
