//! The shared `EventStore`: the recent classified log events (temp files, lock waits, deadlocks,
//! timeouts, checkpoints, autovacuum, ...), recorded by the log thread and read by the sampler
//! thread's spike watch when it builds a spike's end report (`log_events`).
//!
//! Invariants: bounded (at most `cap` events; from the front, those older than `max_age` behind
//! the newest go; the oldest go first); reading never removes (a spike report only looks); a poisoned lock
//! still serves the plain data it guards. It holds what the pg_log payloads already carry: the
//! class, its figures (numbers, lock modes, pids, table names), the pid and the request id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::events::{Event, EventClass};
use crate::json::Json;

/// Most events an [`EventStore`] holds by default (a few hundred bytes each).
pub const DEFAULT_EVENT_STORE_CAP: usize = 2000;

/// How far back (behind the newest event) an [`EventStore`] keeps events by default: longer
/// than the burst limit of a spike, so a whole spike's events are still there at its end.
pub const DEFAULT_EVENT_STORE_AGE: Duration = Duration::from_secs(15 * 60);

/// One classified event as the log thread read it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// When it was logged (unix seconds; the entry's timestamp, else when it was read).
    pub at: f64,
    /// The backend that logged it.
    pub pid: Option<u32>,
    /// The request (correlation id) of the statement it belongs to, if known.
    pub correlation_id: Option<String>,
    /// The class and its figures.
    pub event: Event,
}

impl StoredEvent {
    /// The figure that ranks events of its class (bigger is worse): temp-file bytes, lock-wait
    /// ms, checkpoint and vacuum seconds; `None` for classes without one.
    pub fn key_figure(&self) -> Option<f64> {
        let key = match self.event.class {
            EventClass::TempFile => "size_bytes",
            EventClass::LockWait | EventClass::LockAcquired => "wait_ms",
            EventClass::CheckpointComplete => "total_s",
            EventClass::Autovacuum | EventClass::Autoanalyze => "elapsed_s",
            _ => return None,
        };
        match self.event.figures.get(key)? {
            Json::Float(f) => Some(*f),
            Json::UInt(u) => Some(*u as f64),
            Json::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// `{"class", "at", "pid", "correlation_id", <figures>}` (absent figures left out).
    pub fn to_json(&self) -> Json {
        let mut o = self.event.to_json();
        o.push("at", (self.at * 1000.0).round() / 1000.0);
        if o.get("pid").is_none() {
            o.push("pid", self.pid.map(|p| Json::UInt(p as u64)));
        }
        o.push("correlation_id", self.correlation_id.as_deref());
        o
    }
}

/// A small store shared between the log thread (which records) and the spike watch (which reads
/// a window). Cloning shares it.
#[derive(Debug, Clone)]
pub struct EventStore {
    inner: Arc<Mutex<VecDeque<StoredEvent>>>,
    cap: usize,
    max_age: f64,
}

impl Default for EventStore {
    fn default() -> EventStore {
        EventStore::new(DEFAULT_EVENT_STORE_CAP, DEFAULT_EVENT_STORE_AGE)
    }
}

impl EventStore {
    /// An empty store of at most `cap` events (at least 1), none older than `max_age` behind
    /// the newest.
    pub fn new(cap: usize, max_age: Duration) -> EventStore {
        EventStore {
            inner: Default::default(),
            cap: cap.max(1),
            max_age: max_age.as_secs_f64(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<StoredEvent>> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `e`, evicting the oldest beyond the cap and those too old.
    pub fn record(&self, e: StoredEvent) {
        let mut v = self.lock();
        // Lines arrive in time order (nearly: csvlog/jsonlog of concurrent backends may swap by
        // milliseconds), so the oldest are at the front and a record costs O(1) amortized.
        let newest = v.back().map_or(e.at, |b| b.at.max(e.at));
        v.push_back(e);
        while v.len() > self.cap || v.front().is_some_and(|f| f.at < newest - self.max_age) {
            v.pop_front();
        }
    }

    /// The events logged in `[from, to]`, in the order they were recorded.
    pub fn window(&self, from: f64, to: f64) -> Vec<StoredEvent> {
        self.lock()
            .iter()
            .filter(|e| e.at >= from && e.at <= to)
            .cloned()
            .collect()
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The spike report's `log_events` for `[from, to]`: `{from, to, total, counts: {class:
    /// n}, top: [...]}`; `top` holds per class at most `per_class` events, the biggest by their
    /// key figure (largest temp files, longest lock waits), for classes without one (deadlocks,
    /// timeouts) the latest.
    pub fn summary(&self, from: f64, to: f64, per_class: usize) -> Json {
        let events = self.window(from, to);
        let mut counts = Json::object();
        let mut top = Vec::new();
        for class in EventClass::ALL {
            let mut of: Vec<&StoredEvent> =
                events.iter().filter(|e| e.event.class == class).collect();
            if of.is_empty() {
                continue;
            }
            counts.push(class.as_str(), of.len() as u64);
            of.sort_by(|a, b| {
                let (ka, kb) = (a.key_figure(), b.key_figure());
                kb.unwrap_or(f64::MIN)
                    .total_cmp(&ka.unwrap_or(f64::MIN))
                    .then(b.at.total_cmp(&a.at))
            });
            top.extend(of.iter().take(per_class).map(|e| e.to_json()));
        }
        let r = |t: f64| (t * 1000.0).round() / 1000.0;
        Json::object()
            .field("from", r(from))
            .field("to", r(to))
            .field("total", events.len() as u64)
            .field("counts", counts)
            .field("top", Json::Array(top))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: f64, class: EventClass, figures: Json, pid: u32) -> StoredEvent {
        StoredEvent {
            at,
            pid: Some(pid),
            correlation_id: Some(format!("req-{pid}")),
            event: Event { class, figures },
        }
    }

    #[test]
    fn the_store_is_bounded_by_count_and_age() {
        let store = EventStore::new(3, Duration::from_secs(60));
        let shared = store.clone();
        for i in 0..5 {
            shared.record(ev(
                100.0 + i as f64,
                EventClass::Deadlock,
                Json::object(),
                i,
            ));
        }
        assert_eq!(store.len(), 3, "the cap holds");
        assert_eq!(store.window(0.0, 1e9)[0].at, 102.0, "the oldest went first");
        shared.record(ev(200.0, EventClass::Deadlock, Json::object(), 9));
        assert_eq!(
            store.len(),
            1,
            "events more than a minute behind the newest went"
        );
        assert!(!store.is_empty());
    }

    #[test]
    fn the_summary_counts_the_window_and_ranks_by_key_figure() {
        let store = EventStore::default();
        let temp = |b: f64| Json::object().field("size_bytes", b);
        let wait = |ms: f64| Json::object().field("wait_ms", ms);
        store.record(ev(10.0, EventClass::TempFile, temp(5e8), 1)); // before the window
        store.record(ev(20.0, EventClass::TempFile, temp(1e6), 2));
        store.record(ev(21.0, EventClass::TempFile, temp(2e8), 3));
        store.record(ev(22.0, EventClass::LockWait, wait(100.0), 4));
        store.record(ev(23.0, EventClass::LockWait, wait(4000.0), 5));
        store.record(ev(24.0, EventClass::LockWait, wait(300.0), 6));
        store.record(ev(25.0, EventClass::Deadlock, Json::object(), 7));
        store.record(ev(40.0, EventClass::Deadlock, Json::object(), 8)); // after it
        let s = store.summary(15.0, 30.0, 2);
        assert_eq!(s.get("total"), Some(&Json::UInt(6)));
        assert_eq!(
            s.get("counts").unwrap().to_json_string(),
            r#"{"temp_file":2,"lock_wait":3,"deadlock":1}"#
        );
        let Some(Json::Array(top)) = s.get("top") else {
            panic!("{}", s.to_json_string())
        };
        let pids: Vec<&Json> = top.iter().filter_map(|t| t.get("pid")).collect();
        assert_eq!(
            pids,
            [3u64, 2, 5, 6, 7]
                .map(Json::UInt)
                .iter()
                .collect::<Vec<_>>(),
            "{}",
            s.to_json_string()
        );
        assert_eq!(
            top[2].get("correlation_id"),
            Some(&Json::Str("req-5".into()))
        );
        assert_eq!(top[2].get("wait_ms"), Some(&Json::Float(4000.0)));
        assert_eq!(top[2].get("class"), Some(&Json::Str("lock_wait".into())));
    }
}
