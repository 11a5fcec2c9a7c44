//! What the sampler learns from lock trees: each waiter's lock and blockers, each blocker's
//! held-up sessions (directly or behind another waiter), and the interval's peak and latest
//! snapshot.
//!
//! Invariants: `pg_blocking_pids()` runs (in [`crate::collect::locks`]) only when a sample saw a
//! session waiting on a lock, at most once per `lock_snapshot_min_gap`, and only when an
//! execution waits that did not at the previous lock-tree query, or `lock_snapshot_refresh`
//! passed since it ([`LockGate`]); so the wait times of a snapshot (and of the peak) are at most
//! that old while the same sessions wait. A failed name lookup keeps the OIDs and the tree; the
//! peak is the snapshot with the largest total wait.

use std::time::{Duration, Instant};

use super::query::SessionRow;
use super::{ActivitySampler, ExecKey};
use crate::collect::inthash::IntMap;
use crate::collect::locks::{self, LockWaiter};
use crate::collect::CollectError;
use crate::json::Json;

#[derive(Debug, Clone)]
pub(super) struct LockSeen {
    pub(super) locktype: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) relation: Option<String>,
    pub(super) blockers: Vec<i32>,
    /// Who the blockers were at the latest snapshot: pid, request, query, state, age.
    pub(super) blocker_details: Vec<Json>,
    pub(super) max_wait_ms: Option<f64>,
    pub(super) n_snapshots: u32,
}

/// Sessions this execution held up (directly or behind another waiter), each with its longest
/// wait seen and its request.
#[derive(Debug, Clone, Default)]
pub(super) struct BlockingSeen {
    pub(super) waiters: Vec<(i32, Option<String>, f64)>,
}

/// Most held-up sessions listed per blocker (the counts cover all).
const MAX_BLOCKED_LISTED: usize = 20;

impl BlockingSeen {
    pub(super) fn note(&mut self, pid: i32, correlation_id: Option<&str>, wait_ms: f64) {
        match self.waiters.iter_mut().find(|w| w.0 == pid) {
            Some(w) => w.2 = w.2.max(wait_ms),
            None => self
                .waiters
                .push((pid, correlation_id.map(str::to_string), wait_ms)),
        }
    }

    pub(super) fn to_json(&self) -> Json {
        let total: f64 = self.waiters.iter().map(|w| w.2).sum();
        let max = self.waiters.iter().map(|w| w.2).fold(0.0, f64::max);
        let mut ids: Vec<&str> = self.waiters.iter().filter_map(|w| w.1.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        Json::object()
            .field("n_blocked", self.waiters.len())
            .field("total_wait_ms", total)
            .field("max_wait_ms", max)
            .field(
                "correlation_ids",
                Json::Array(ids.into_iter().map(Json::from).collect()),
            )
            .field(
                "blocked",
                Json::Array(
                    self.waiters
                        .iter()
                        .take(MAX_BLOCKED_LISTED)
                        .map(|(pid, id, ms)| {
                            Json::object()
                                .field("pid", *pid)
                                .field("correlation_id", id.as_deref())
                                .field("wait_ms", *ms)
                        })
                        .collect(),
                ),
            )
    }
}

#[derive(Debug, Clone)]
pub(super) struct LockSnapshot {
    pub(super) at: f64,
    pub(super) n_blocked: usize,
    pub(super) max_depth: u32,
    pub(super) total_wait_ms: f64,
    pub(super) trees: Json,
}

#[derive(Debug, Default)]
pub(super) struct LockAgg {
    pub(super) n_snapshots: u32,
    pub(super) peak: Option<LockSnapshot>,
    /// The latest snapshot when it is not the peak (`None`: the peak is the latest), so a
    /// snapshot that becomes the peak is moved there, never copied.
    pub(super) last: Option<LockSnapshot>,
}

impl LockAgg {
    /// The summary's `locks` object: how many snapshots, the peak and, when it differs, the
    /// latest.
    pub(super) fn to_json(&self) -> Json {
        match (&self.peak, &self.last) {
            (Some(peak), last) => Json::object()
                .field("n_snapshots", self.n_snapshots)
                .field("max_blocked", peak.n_blocked)
                .field("max_depth", peak.max_depth)
                .field("peak", snapshot_json(peak))
                // The latest snapshot only when it differs from the peak, to keep payloads small.
                .field(
                    "last",
                    match last {
                        Some(last) if last.at != peak.at => snapshot_json(last),
                        _ => Json::Null,
                    },
                ),
            _ => Json::object()
                .field("n_snapshots", 0u32)
                .field("max_blocked", 0u32)
                .field("max_depth", 0u32)
                .field("peak", Json::Null)
                .field("last", Json::Null),
        }
    }
}

/// Decides whether a sample with lock waiters queries the lock tree (see the module docs).
#[derive(Debug, Default)]
pub(super) struct LockGate {
    last_query: Option<Instant>,
    /// The executions waiting on a lock at the last query, sorted.
    waiting: Vec<ExecKey>,
    /// This sample's, sorted (kept to reuse its memory).
    now_waiting: Vec<ExecKey>,
}

impl LockGate {
    /// Whether this sample's rows should be followed by a lock-tree query; when so, it counts as
    /// made now.
    pub(super) fn due(
        &mut self,
        rows: &[SessionRow],
        min_gap: Duration,
        refresh: Duration,
    ) -> bool {
        let since = self.last_query.map(|at| at.elapsed());
        if since.is_some_and(|s| s < min_gap) {
            return false;
        }
        self.now_waiting.clear();
        self.now_waiting.extend(
            rows.iter()
                .filter(|r| r.wait_event_type == Some("Lock"))
                .map(SessionRow::key),
        );
        self.now_waiting.sort_unstable();
        let stale = since.map_or(true, |s| s >= refresh);
        let joined = self
            .now_waiting
            .iter()
            .any(|k| self.waiting.binary_search(k).is_err());
        if !(stale || joined) {
            return false;
        }
        std::mem::swap(&mut self.waiting, &mut self.now_waiting);
        self.last_query = Some(Instant::now());
        true
    }
}

impl ActivitySampler {
    pub(super) fn lock_snapshot(
        &mut self,
        client: &mut postgres::Client,
        version: u32,
        now: f64,
    ) -> Result<(), CollectError> {
        let mut waiters = locks::query_waiters(client, version)?;
        if waiters.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.relation_names.resolve(client, &mut waiters) {
            // The OIDs stay; the tree is still worth shipping.
            log::debug!("{e}");
            self.record_error(&e);
        }
        self.note_lock_waits(&waiters, now);
        self.keep_waiters_for_spike(&waiters);
        let trees = locks::build_trees(&waiters);
        let total_wait_ms = self.note_blocking(&trees, &waiters, now);
        let (execs, current) = (&self.execs, &self.current);
        let json = locks::trees_json(&trees, &waiters, |pid| {
            execs.get(current.get(&pid)?).map(|e| e.session_json(now))
        });
        let snap = LockSnapshot {
            at: now,
            n_blocked: waiters.len(),
            max_depth: trees.iter().map(|t| t.depth).max().unwrap_or(0),
            total_wait_ms,
            trees: json,
        };
        self.locks.n_snapshots += 1;
        if self.locks.peak.as_ref().is_none_or_smaller(&snap) {
            self.locks.peak = Some(snap);
            self.locks.last = None;
        } else {
            self.locks.last = Some(snap);
        }
        Ok(())
    }

    /// How long `w` has waited: `pg_locks.waitstart` (PostgreSQL 14+), else its statement's
    /// age (the wait began at or after the statement's start).
    fn wait_of(&self, w: &LockWaiter, now: f64) -> f64 {
        w.wait_ms.unwrap_or_else(|| {
            self.current
                .get(&w.pid)
                .and_then(|k| self.execs.get(k))
                .and_then(|e| e.query_start)
                .map_or(0.0, |qs| ((now - qs) * 1000.0).max(0.0))
        })
    }

    /// Charges every waiter to each session above it in its tree (its direct blocker, and that
    /// one's blockers up to the root): a root that held up a chain of two blocked two sessions.
    /// Returns the snapshot's total wait.
    fn note_blocking(
        &mut self,
        trees: &[locks::LockTree],
        waiters: &[LockWaiter],
        now: f64,
    ) -> f64 {
        let waits: IntMap<i32, f64> = waiters
            .iter()
            .map(|w| (w.pid, self.wait_of(w, now)))
            .collect();
        for t in trees {
            let parent: IntMap<i32, i32> = t
                .nodes
                .iter()
                .filter_map(|n| Some((n.pid, n.parent?)))
                .collect();
            for n in t.nodes.iter().filter(|n| n.parent.is_some()) {
                let wait = waits.get(&n.pid).copied().unwrap_or(0.0);
                let id = self
                    .current
                    .get(&n.pid)
                    .and_then(|k| self.execs.get(k))
                    .and_then(|e| e.correlation_id().map(str::to_string));
                let mut up = parent.get(&n.pid).copied();
                let mut hops = 0;
                while let Some(b) = up {
                    // A cycle returns to the waiter; the tree is finite anyway.
                    if b == n.pid || hops > t.nodes.len() {
                        break;
                    }
                    if let Some(e) = self.current.get(&b).and_then(|k| self.execs.get_mut(k)) {
                        e.blocking.get_or_insert_with(BlockingSeen::default).note(
                            n.pid,
                            id.as_deref(),
                            wait,
                        );
                    }
                    up = parent.get(&b).copied();
                    hops += 1;
                }
            }
        }
        waits.values().sum()
    }

    fn note_lock_waits(&mut self, waiters: &[LockWaiter], now: f64) {
        for w in waiters {
            let details: Vec<Json> = w
                .blockers
                .iter()
                .map(
                    |&b| match self.current.get(&b).and_then(|k| self.execs.get(k)) {
                        Some(e) => Json::object()
                            .field("pid", b)
                            .field("correlation_id", e.correlation_id())
                            .field("query", e.query.as_deref())
                            .field("query_id", e.query_id)
                            .field("state", e.state.as_str())
                            .field(
                                "xact_age_ms",
                                e.xact_start.map(|x| ((now - x) * 1000.0).max(0.0)),
                            ),
                        // Not sampled: idle with a session-level lock, or a prepared transaction.
                        None => Json::object().field("pid", b),
                    },
                )
                .collect();
            let Some(key) = self.current.get(&w.pid) else {
                continue;
            };
            let Some(e) = self.execs.get_mut(key) else {
                continue;
            };
            let seen = e.lock.get_or_insert_with(|| LockSeen {
                locktype: w.locktype.clone(),
                mode: w.mode.clone(),
                relation: w.relation.clone(),
                blockers: Vec::new(),
                blocker_details: Vec::new(),
                max_wait_ms: None,
                n_snapshots: 0,
            });
            seen.n_snapshots += 1;
            seen.blockers.clone_from(&w.blockers);
            seen.blocker_details = details;
            if seen.relation.is_none() {
                seen.relation.clone_from(&w.relation);
            }
            if let Some(ms) = w.wait_ms {
                seen.max_wait_ms = Some(seen.max_wait_ms.map_or(ms, |m| m.max(ms)));
            }
        }
    }
}

fn snapshot_json(s: &LockSnapshot) -> Json {
    Json::object()
        .field("at", s.at)
        .field("n_blocked", s.n_blocked)
        .field("total_wait_ms", s.total_wait_ms)
        .field("max_depth", s.max_depth)
        .field("trees", s.trees.clone())
}

trait PeakExt {
    fn is_none_or_smaller(&self, snap: &LockSnapshot) -> bool;
}

impl PeakExt for Option<&LockSnapshot> {
    /// The peak is the snapshot with the largest total wait (then the most waiters, then the
    /// deepest): one 8 s wait matters more than two 1 s waits.
    fn is_none_or_smaller(&self, snap: &LockSnapshot) -> bool {
        match self {
            None => true,
            Some(p) => snap
                .total_wait_ms
                .total_cmp(&p.total_wait_ms)
                .then(snap.n_blocked.cmp(&p.n_blocked))
                .then(snap.max_depth.cmp(&p.max_depth))
                .is_gt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_snapshot_with_the_largest_total_wait() {
        let snap = |n_blocked, total_wait_ms| LockSnapshot {
            at: 0.0,
            n_blocked,
            max_depth: 1,
            total_wait_ms,
            trees: Json::Null,
        };
        let two_short = snap(2, 2000.0);
        let one_long = snap(1, 8000.0);
        assert!(Some(&two_short).is_none_or_smaller(&one_long));
        assert!(!Some(&one_long).is_none_or_smaller(&two_short));
        assert!(
            Some(&snap(1, 2000.0)).is_none_or_smaller(&two_short),
            "then waiters"
        );
        assert!(None.is_none_or_smaller(&two_short));
    }

    #[test]
    fn blocking_keeps_each_waiter_once_with_its_longest_wait() {
        let mut b = BlockingSeen::default();
        b.note(20, Some("r2"), 100.0);
        b.note(30, None, 50.0);
        b.note(20, Some("r2"), 900.0);
        let j = b.to_json();
        assert_eq!(j.get("n_blocked"), Some(&Json::UInt(2)));
        assert_eq!(j.get("total_wait_ms"), Some(&Json::Float(950.0)));
        assert_eq!(j.get("max_wait_ms"), Some(&Json::Float(900.0)));
        assert_eq!(
            j.get("correlation_ids"),
            Some(&Json::Array(vec![Json::from("r2")]))
        );
    }

    #[test]
    fn the_lock_tree_is_queried_again_for_a_new_waiter_or_after_the_refresh() {
        use super::super::test_support::row;
        let waiting = |pid: i32, start: f64| SessionRow {
            wait_event_type: Some("Lock"),
            ..row(pid, 100.0, start)
        };
        let (no_gap, refresh) = (Duration::ZERO, Duration::from_secs(3600));
        let mut g = LockGate::default();
        let two = [waiting(1, 10.0), waiting(2, 11.0), row(3, 100.0, 12.0)];
        assert!(g.due(&two, no_gap, refresh), "the first waiters");
        assert!(!g.due(&two, no_gap, refresh), "the same waiters");
        assert!(
            !g.due(&two[..1], no_gap, refresh),
            "one left: the rest is known"
        );
        assert!(
            g.due(&[waiting(1, 10.0), waiting(2, 50.0)], no_gap, refresh),
            "pid 2 waits in another statement"
        );
        assert!(g.due(&two, no_gap, Duration::ZERO), "refresh passed");
        let mut g = LockGate::default();
        assert!(g.due(&two, Duration::from_secs(3600), refresh));
        assert!(
            !g.due(&[waiting(4, 1.0)], Duration::from_secs(3600), refresh),
            "a new waiter still waits for the minimum gap"
        );
    }
}
