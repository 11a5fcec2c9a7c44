//! The interval's output: the `pg_stat_activity` summary (`sessions[]`, `background[]`, the
//! lock snapshots, the sample counts and errors), each execution as JSON, the selection of what
//! a bounded summary lists, and the statements handed to the correlator.
//!
//! Invariants: background processes are listed apart (`background[]`), never dropped for room
//! and never correlated; only the busy ones are listed, all are counted; a figure that could
//! not be attributed is `null`, never 0; what the selection leaves out is counted in
//! `n_left_out`.

use super::execution::Execution;
use super::lock_roles::BlockingSeen;
use super::ActivitySampler;
use crate::collect::correlate::SampledStatement;
use crate::json::Json;
use crate::payload::{unix_now, Payload, Source};

/// Most background processes listed per summary (a server has about ten).
const MAX_BACKGROUND: usize = 50;

impl Execution {
    pub(super) fn to_json(&self) -> Json {
        let waits = self
            .waits
            .iter()
            .map(|w| {
                Json::object()
                    .field("wait_event_type", w.kind.as_str())
                    .field("wait_event", w.event.as_str())
                    .field("count", w.count)
            })
            .collect();
        let lock = self.lock.as_ref().map(|l| {
            Json::object()
                .field("locktype", l.locktype.as_deref())
                .field("mode", l.mode.as_deref())
                .field("relation", l.relation.as_deref())
                .field(
                    "blocked_by",
                    Json::Array(l.blockers.iter().map(|&b| b.into()).collect()),
                )
                .field("blockers", Json::Array(l.blocker_details.clone()))
                .field("max_wait_ms", l.max_wait_ms)
                .field("n_snapshots", l.n_snapshots)
        });
        Json::object()
            .field("pid", self.pid)
            .field("datname", self.datname.as_deref())
            .field("usename", self.usename.as_deref())
            .field("application_name", self.application_name.as_deref())
            .field("client_addr", self.client_addr.as_deref())
            .field("backend_type", self.backend_type.as_deref())
            .field("state", self.state.as_str())
            .field("query_start", self.query_start)
            .field("xact_start", self.xact_start)
            .field("first_seen", self.first_seen)
            .field("last_seen", self.last_seen)
            .field("n_samples", self.n_seen)
            .field("duration_ms", self.duration_ms())
            .field("wait_event_type", self.wait_event_type.as_deref())
            .field("wait_event", self.wait_event.as_deref())
            .field("wait_events", Json::Array(waits))
            .field("cpu_ms", self.cpu_attributed.then(|| self.cpu_ms()))
            .field("cpu_partial", self.cpu_partial)
            .field("read_bytes", self.io_attributed.then_some(self.read_bytes))
            .field(
                "write_bytes",
                self.io_attributed.then_some(self.write_bytes),
            )
            .field("rss_bytes", self.os_seen.then_some(self.rss_bytes))
            .field("lock", lock)
            .field(
                "blocking",
                self.blocking.as_ref().map(BlockingSeen::to_json),
            )
            .field("parallel_worker_samples", self.n_worker_samples)
            .field("query", self.query.as_deref())
            .field("query_id", self.query_id)
            .field("correlation_id", self.correlation_id())
            .field(
                "correlation_source",
                self.correlation.as_ref().map(|c| c.source.as_str()),
            )
    }

    /// The statement a correlator merges into its request's record; `None` without a
    /// correlation ID. `round` is the interval's last sampling round (was it still running?).
    pub(super) fn sampled_statement(&self, round: u64) -> Option<SampledStatement> {
        let c = self.correlation.as_ref()?;
        Some(SampledStatement {
            correlation_id: c.id.clone(),
            correlation_source: c.source.as_str(),
            pid: self.pid,
            start: self.query_start.unwrap_or(self.first_seen),
            last_seen: self.last_seen,
            running: self.round == round && self.state == "active",
            duration_ms: self.duration_ms(),
            cpu_ms: self.cpu_attributed.then(|| self.cpu_ms()),
            io_bytes: self
                .io_attributed
                .then_some((self.read_bytes, self.write_bytes)),
            n_samples: self.n_seen,
            query: self.query.clone(),
            query_id: self.query_id,
            json: self.to_json(),
        })
    }

    /// What a lock tree shows about this session.
    pub(super) fn session_json(&self, now: f64) -> Json {
        Json::object()
            .field("state", self.state.as_str())
            .field("datname", self.datname.as_deref())
            .field("usename", self.usename.as_deref())
            .field("application_name", self.application_name.as_deref())
            .field(
                "xact_age_ms",
                self.xact_start.map(|x| ((now - x) * 1000.0).max(0.0)),
            )
            .field("duration_ms", self.duration_ms())
            .field("query", self.query.as_deref())
            .field("query_id", self.query_id)
            .field("correlation_id", self.correlation_id())
    }
}

impl ActivitySampler {
    /// Renders the interval held so far: the summary and the correlated statements. Drains the
    /// executions and the errors; the caller resets the rest of the interval's state.
    pub(super) fn render_interval(&mut self) -> (Payload, Vec<SampledStatement>) {
        let collected_at = unix_now();
        let round = self.round;
        let (background, execs): (Vec<Execution>, Vec<Execution>) = self
            .execs
            .drain()
            .map(|(_, e)| e)
            .partition(|e| e.background);
        let n_seen = execs.len() as u64 + self.n_left_out;
        let selected = select(execs, self.cfg.max_executions);
        let n_left_out = n_seen - selected.len() as u64;
        // Only the background processes that did something: CPU or I/O charged, or a wait that
        // is not their main loop's idle wait (type `Activity`). An idle server's checkpointer,
        // WAL writer, ... are counted, not listed, which keeps the idle summary small.
        let n_background_seen = background.len();
        let mut background: Vec<Execution> = background
            .into_iter()
            .filter(|e| {
                e.cpu_ticks > 0
                    || e.read_bytes > 0
                    || e.write_bytes > 0
                    || e.waits.iter().any(|w| w.kind != "Activity")
            })
            .collect();
        // The busiest first: CPU, then how often they waited.
        background.sort_by(|a, b| {
            b.cpu_ticks
                .cmp(&a.cpu_ticks)
                .then(b.waits.len().cmp(&a.waits.len()))
                .then(a.pid.cmp(&b.pid))
        });
        background.truncate(MAX_BACKGROUND);

        let with_correlation = selected.iter().filter(|e| e.correlation.is_some()).count();
        let start = self.interval_start;
        let end = self.last_sample_at;
        let locks = self.locks.to_json();
        let (procfs_enabled, procfs_reason) = self.procfs_status();
        let summary = Json::object()
            .field("interval_start", start)
            .field("interval_end", end)
            .field(
                "interval_s",
                match (start, end) {
                    (Some(s), Some(e)) => Some(e - s),
                    _ => None,
                },
            )
            .field("n_samples", self.n_samples)
            .field("n_failed_samples", self.n_failed)
            .field("count", selected.len())
            .field("n_executions_seen", n_seen)
            .field("n_left_out", n_left_out)
            .field("with_correlation", with_correlation)
            .field("query_text", self.cfg.query_text.mode.as_str())
            .field(
                "procfs",
                Json::object()
                    .field("enabled", procfs_enabled)
                    .field("reason", procfs_reason)
                    .field("io_permitted", !self.proc.io_refused())
                    .field("io_unchanged", self.n_io_unchanged)
                    .field("readings_deferred", self.n_stat_deferred)
                    .field("background_readings_deferred", self.n_background_deferred)
                    .field("cost_level", self.cost.level().name()),
            )
            .field(
                "sessions",
                Json::Array(selected.iter().map(Execution::to_json).collect()),
            )
            .field("n_background_seen", n_background_seen)
            .field(
                "background",
                Json::Array(background.iter().map(Execution::to_json).collect()),
            )
            .field("locks", locks)
            .field("errors", Json::Array(std::mem::take(&mut self.errors)));
        let summary = Payload {
            source: Source::PgStatActivity,
            collected_at,
            correlation_id: None,
            data: summary,
        };
        let statements = selected
            .iter()
            .filter_map(|e| e.sampled_statement(round))
            .collect();
        (summary, statements)
    }
}

/// Picks what a summary lists: half the slots to the longest-running executions, the rest to
/// the most CPU-hungry, then longest again. Returned longest first. Sorts small (key, index)
/// pairs, not the executions themselves (an interval can hold thousands, each a few hundred
/// bytes).
fn select(execs: Vec<Execution>, cap: usize) -> Vec<Execution> {
    let by_duration_desc = |a: &(f64, u64, usize), b: &(f64, u64, usize)| b.0.total_cmp(&a.0);
    let mut order: Vec<(f64, u64, usize)> = execs
        .iter()
        .enumerate()
        .map(|(i, e)| (e.duration_ms(), e.cpu_ticks, i))
        .collect();
    order.sort_by(by_duration_desc);
    if order.len() > cap {
        let by_duration = cap.div_ceil(2);
        let mut rest = order.split_off(by_duration);
        rest.sort_by_key(|&(_, cpu, _)| std::cmp::Reverse(cpu));
        rest.truncate(cap - by_duration);
        order.append(&mut rest);
        order.sort_by(by_duration_desc);
    }
    let mut slots: Vec<Option<Execution>> = execs.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&(_, _, i)| slots[i].take())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::collect::activity::query::SessionRow;
    use crate::collect::activity::ActivityConfig;
    use crate::collect::procfs;
    use crate::normalize::Correlation;

    #[test]
    fn background_processes_are_listed_apart_and_only_when_busy() {
        let p = FakeProc::new("bg");
        let mut s = p.sampler(ActivityConfig::default());
        let bg = |pid, kind, (class, event), now| SessionRow {
            pid,
            now,
            state: None,
            backend_type: Some(kind),
            wait_event_type: Some(class),
            wait_event: Some(event),
            application_name: Some(""),
            ..SessionRow::default()
        };
        for (i, cpu) in [(0u64, 10u64), (1, 40), (2, 70)] {
            let now = 1000.0 + i as f64;
            p.set(40, cpu, 1, None);
            p.set(41, 5, 1, None);
            let checkpointing = ("Timeout", "CheckpointWriteDelay");
            let stats = s
                .absorb(&[
                    bg(40, "checkpointer", checkpointing, now),
                    bg(41, "walwriter", ("Activity", "WalWriterMain"), now),
                    row(7, now, 999.0),
                ])
                .0;
            assert_eq!(stats.n_background, 2);
        }
        assert_eq!(
            s.n_executions(),
            1,
            "background is not counted as client work"
        );
        let out = s.finish_interval();
        let data = &out[0].data;
        assert_eq!(field_f64(data, "n_background_seen"), 2.0);
        let listed = match data.get("background") {
            Some(Json::Array(a)) => a.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            listed.len(),
            1,
            "the idle WAL writer is counted, not listed"
        );
        assert_eq!(
            listed[0].get("backend_type"),
            Some(&Json::Str("checkpointer".into()))
        );
        assert_eq!(
            field_f64(&listed[0], "cpu_ms"),
            procfs::ticks_to_ms(60) as f64
        );
        assert_eq!(listed[0].get("correlation_id"), Some(&Json::Null));
        assert_eq!(sessions(&out).len(), 1);
        assert_eq!(
            out.len(),
            2,
            "the summary and the client's request, no other record"
        );
    }

    #[test]
    fn an_idle_background_process_is_read_one_sample_in_four_and_nothing_is_lost() {
        let p = FakeProc::new("bgidle");
        let mut s = p.sampler(ActivityConfig::default());
        let walwriter = |now, class| SessionRow {
            pid: 41,
            now,
            state: None,
            backend_type: Some("walwriter"),
            wait_event_type: class,
            wait_event: class.map(|_| "WalWriterMain"),
            application_name: Some(""),
            ..SessionRow::default()
        };
        // Idle in its main loop for 8 samples (spending a tick a second all the same), then
        // busy: the busy sample reads it and charges everything since the last reading.
        for round in 0..8u64 {
            p.set(41, 10 + round, 1, Some((0, 4096 * round)));
            s.absorb(&[walwriter(1000.0 + round as f64, Some("Activity"))]);
        }
        p.set(41, 30, 1, Some((0, 65536)));
        s.absorb(&[walwriter(1008.0, None)]);
        let out = s.finish_interval();
        let procfs = out[0].data.get("procfs").unwrap();
        // Read at its first sample and when (pid + sample) % 4 == 0 (samples 3 and 7).
        assert_eq!(field_f64(procfs, "background_readings_deferred"), 5.0);
        assert_eq!(field_f64(procfs, "readings_deferred"), 0.0);
        let listed = match out[0].data.get("background") {
            Some(Json::Array(a)) => a.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(listed.len(), 1);
        assert_eq!(
            field_f64(&listed[0], "cpu_ms"),
            procfs::ticks_to_ms(20) as f64,
            "from the first reading (10 ticks) to the last (30)"
        );
        assert_eq!(field_f64(&listed[0], "write_bytes"), 65536.0);

        // Work between two samples of a process that looks idle at both (a quick checkpoint)
        // is read at the interval's close, into this interval's summary.
        let mut s = p.sampler(ActivityConfig::default());
        for round in 0..2u64 {
            p.set(41, 100 + 50 * round, 1, Some((0, 16384 * round)));
            s.absorb(&[walwriter(2000.0 + round as f64, Some("Activity"))]);
        }
        assert_eq!(s.n_background_deferred, 1, "the second sample is deferred");
        let out = s.finish_interval();
        let listed = match out[0].data.get("background") {
            Some(Json::Array(a)) => a.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(listed.len(), 1, "its work makes it listed");
        assert_eq!(
            field_f64(&listed[0], "cpu_ms"),
            procfs::ticks_to_ms(50) as f64
        );
        assert_eq!(field_f64(&listed[0], "write_bytes"), 16384.0);
    }

    #[test]
    fn without_proc_figures_cpu_is_null_not_zero() {
        let p = FakeProc::new("noproc");
        let mut s = p.sampler(ActivityConfig::default());
        s.absorb(&[row(7, 1000.0, 999.0)]);
        s.absorb(&[row(7, 1001.0, 999.0)]);
        let out = s.finish_interval();
        assert_eq!(sessions(&out)[0].get("cpu_ms"), Some(&Json::Null));
        assert_eq!(sessions(&out)[0].get("read_bytes"), Some(&Json::Null));
    }

    #[test]
    fn correlated_payloads_are_capped_longest_first() {
        let p = FakeProc::new("corr");
        let mut s = p.sampler(ActivityConfig {
            max_correlated: 1,
            read_procfs: false,
            ..ActivityConfig::default()
        });
        let app_b = "bitville-bbbbbbbb-0000-4000-8000-000000000002";
        s.absorb(&[
            row(1, 1000.0, 999.0),
            SessionRow {
                application_name: Some(app_b),
                ..row(2, 1000.0, 990.0)
            },
            SessionRow {
                application_name: Some("plain"),
                ..row(3, 1000.0, 900.0)
            },
        ]);
        let out = s.finish_interval();
        assert_eq!(out.len(), 2, "summary + one correlated payload");
        assert_eq!(
            out[1].correlation_id.as_deref(),
            Some(UUID_B),
            "the longest wins"
        );
        assert_eq!(field_f64(&out[1].data, "duration_ms"), 10_000.0);
        assert_eq!(field_f64(&out[0].data, "with_correlation"), 2.0);
        assert!(
            out[0].data.to_json_string().contains(UUID_A),
            "the rest stays in the summary"
        );
        // The next interval starts empty.
        let next = s.finish_interval();
        assert_eq!(next.len(), 1);
        assert_eq!(field_f64(&next[0].data, "count"), 0.0);
    }

    #[test]
    fn selection_keeps_longest_and_most_cpu_hungry() {
        let execs = vec![
            exec(1, 50.0, 0),
            exec(2, 40.0, 0),
            exec(3, 1.0, 900),
            exec(4, 2.0, 10),
            exec(5, 3.0, 0),
        ];
        let picked =
            |cap| -> Vec<i32> { select(execs.clone(), cap).iter().map(|e| e.pid).collect() };
        assert_eq!(picked(3), vec![1, 2, 3]);
        // Two longest, then the two most CPU-hungry of the rest, all listed longest first.
        assert_eq!(picked(4), vec![1, 2, 4, 3]);
        assert_eq!(picked(9), vec![1, 2, 5, 4, 3]);
    }

    #[test]
    fn execution_json_has_python_names_and_os_figures() {
        let mut e = exec(7, 3.0, 300);
        e.correlation = Some(Correlation {
            id: "abc".into(),
            source: crate::normalize::CorrelationSource::Comment,
        });
        let j = e.to_json();
        assert_eq!(j.get("duration_ms"), Some(&Json::Float(3000.0)));
        assert_eq!(j.get("cpu_ms"), Some(&Json::UInt(procfs::ticks_to_ms(300))));
        assert_eq!(j.get("read_bytes"), Some(&Json::Null), "io not permitted");
        for k in [
            "usename",
            "client_addr",
            "backend_type",
            "query",
            "correlation_id",
            "state",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }
}
