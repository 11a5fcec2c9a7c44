//! The shared `PlanStore`: the latest plan per `query_id`, recorded by the log thread and taken
//! by the statements collector each interval.
//!
//! Invariants: bounded (at most `cap` query_ids, a new one beyond that evicts the oldest plan);
//! a plan never replaces a newer one of the same query_id; a poisoned lock still serves the
//! plain data it guards.

use super::PlanFormat;
use crate::json::Json;

/// The latest plan of one `query_id`, as the log tailer saw it (already normalized per the
/// agent's `query_text`, cut to `plan_max_bytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The statement's `query_id` (`%Q`, csv/json `query_id`; PG14+ with `compute_query_id`).
    pub query_id: i64,
    /// When the plan was logged (unix seconds; the entry's timestamp, else when it was read).
    pub at: f64,
    /// The plan as shipped (`Json::Null` when `query_text = none`).
    pub plan: Json,
    /// Its format.
    pub format: PlanFormat,
    /// True when it was cut.
    pub truncated: bool,
    /// Its `plan_summary`.
    pub summary: Json,
}

/// Most query_ids a [`PlanStore`] holds by default (each plan at most `plan_max_bytes`).
pub const DEFAULT_PLAN_STORE_CAP: usize = 100;

/// A small store, shared between the log thread (which records) and the statements collector
/// (which takes the latest plan per `query_id` each interval). Cloning shares it. Bounded: at
/// most `cap` query_ids; a new one beyond that evicts the oldest plan.
#[derive(Debug, Clone)]
pub struct PlanStore {
    inner: std::sync::Arc<std::sync::Mutex<Vec<StoredPlan>>>,
    cap: usize,
}

impl Default for PlanStore {
    fn default() -> PlanStore {
        PlanStore::new(DEFAULT_PLAN_STORE_CAP)
    }
}

impl PlanStore {
    /// An empty store of at most `cap` query_ids (at least 1).
    pub fn new(cap: usize) -> PlanStore {
        PlanStore {
            inner: Default::default(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StoredPlan>> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `p` as the latest plan of its query_id (replacing an older one).
    pub fn record(&self, p: StoredPlan) {
        let mut v = self.lock();
        if let Some(old) = v.iter_mut().find(|o| o.query_id == p.query_id) {
            if p.at >= old.at {
                *old = p;
            }
            return;
        }
        if v.len() >= self.cap {
            if let Some(oldest) = v
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.at.total_cmp(&b.1.at))
                .map(|(i, _)| i)
            {
                v.swap_remove(oldest);
            }
        }
        v.push(p);
    }

    /// The latest plan of `query_id`, if one was recorded since the last [`PlanStore::take`].
    pub fn latest(&self, query_id: i64) -> Option<StoredPlan> {
        self.lock().iter().find(|p| p.query_id == query_id).cloned()
    }

    /// Takes every plan recorded since the last call (the interval's latest per query_id).
    pub fn take(&self) -> Vec<StoredPlan> {
        std::mem::take(&mut *self.lock())
    }

    /// How many query_ids have a plan now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no plan is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_the_latest_plan_per_query_id_within_its_cap() {
        let store = PlanStore::new(2);
        let p = |q: i64, at: f64| StoredPlan {
            query_id: q,
            at,
            plan: Json::Null,
            format: PlanFormat::Json,
            truncated: false,
            summary: Json::object(),
        };
        let shared = store.clone();
        shared.record(p(1, 10.0));
        shared.record(p(1, 12.0));
        shared.record(p(1, 11.0));
        assert_eq!(store.latest(1).map(|s| s.at), Some(12.0));
        shared.record(p(2, 13.0));
        shared.record(p(3, 14.0));
        assert_eq!(store.len(), 2);
        assert_eq!(store.latest(1), None, "the oldest went");
        let taken = store.take();
        assert_eq!(taken.len(), 2);
        assert!(store.is_empty());
    }
}
