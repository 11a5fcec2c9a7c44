//! Deltas: what each entry cost since the baseline, the top N entries by delta execution time
//! plus one `other` row summing the rest, and the rendering of counters under the payload's
//! stable names.
//!
//! Invariants: no delta is ever negative. An entry whose counters went backwards was reset or
//! evicted and re-added: it ships its current counters (all counted since the baseline) with a
//! `status` saying so. A global reset marks every entry. PG17+ `stats_since` tells a re-added
//! entry from a continuing one. A delta no interval can produce (a damaged baseline) is a reset.
//! The same input picks the same top N (ties broken by key order).

use super::baseline::{Baseline, Entry, Key};
use super::columns::{Column, CALLS, EXEC_TIME, N_SLOTS, SLOTS};
use crate::json::Json;

/// A counter delta above this (2^53, where f64 stops counting by one) is not a real change but
/// a damaged baseline: the entry is treated as reset.
const MAX_PLAUSIBLE_DELTA: f64 = 9_007_199_254_740_992.0;

/// One shipped entry's delta.
pub(super) struct Delta {
    /// The entry.
    pub(super) key: Key,
    /// Its counters since the baseline (or all of them, see `status`).
    pub(super) d: [f64; N_SLOTS],
    /// How the delta was computed (see [`entry_delta`]).
    pub(super) status: &'static str,
}

/// The interval's deltas: the top N changed entries and the sum of the rest.
pub(super) struct Selection {
    /// `pg_stat_statements_info.stats_reset` moved: every entry counts from zero.
    pub(super) global_reset: bool,
    /// The shipped entries, by delta execution time (descending, ties in key order).
    pub(super) top: Vec<Delta>,
    /// The finite counters of the changed entries not shipped, summed.
    pub(super) other: [f64; N_SLOTS],
    /// How many changed entries `other` sums.
    pub(super) n_other: usize,
    /// How many entries changed in the interval.
    pub(super) n_changed: usize,
    /// Entries whose counters went backwards (without a global reset).
    pub(super) n_backwards: u64,
}

/// Subtracts `prev` from `cur` and picks the `top_n` entries with the largest delta execution
/// time; the other changed entries are summed.
pub(super) fn select(prev: &Baseline, cur: &Baseline, top_n: usize) -> Selection {
    let global_reset = match (prev.stats_reset, cur.stats_reset) {
        (Some(p), Some(c)) => c > p,
        _ => false,
    };
    // Pass 1 keeps a small record per changed entry; the full counter deltas are recomputed
    // for the few shipped ones, so 5,000 entries never move 5,000 arrays around.
    let mut changed: Vec<(f64, usize)> = Vec::new();
    let mut n_backwards = 0u64;
    for (i, (key, e)) in cur.entries.iter().enumerate() {
        let (d, status) = entry_delta(prev.entries.get(key), e, global_reset);
        if status == "reset" && !global_reset {
            n_backwards += 1;
        }
        if d.iter().any(|x| *x > 0.0) {
            changed.push((d[EXEC_TIME], i));
        }
    }
    // Ties are broken by position, which is key order: the same input picks the same top.
    let by_time_desc = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let n_changed = changed.len();
    let top_n = top_n.min(changed.len());
    if top_n > 0 && top_n < changed.len() {
        changed.select_nth_unstable_by(top_n - 1, by_time_desc);
    }
    let (top, rest) = changed.split_at_mut(top_n);
    top.sort_unstable_by(by_time_desc);
    let delta_at = |i: usize| {
        let (key, e) = &cur.entries.0[i];
        let (d, status) = entry_delta(prev.entries.get(key), e, global_reset);
        Delta {
            key: *key,
            d,
            status,
        }
    };
    let top: Vec<Delta> = top.iter().map(|&(_, i)| delta_at(i)).collect();
    let mut other = [0.0; N_SLOTS];
    for &(_, i) in rest.iter() {
        let d = delta_at(i).d;
        for (o, x) in other.iter_mut().zip(d.iter()) {
            if x.is_finite() {
                *o += x;
            }
        }
    }
    Selection {
        global_reset,
        top,
        other,
        n_other: rest.len(),
        n_changed,
        n_backwards,
    }
}

impl Selection {
    /// The payload's `reset`: whether and how a reset was detected in the interval.
    pub(super) fn reset_json(&self, stats_reset: Option<f64>) -> Json {
        if self.global_reset {
            Json::object()
                .field("detected", true)
                .field("how", "stats_reset")
                .field("stats_reset", stats_reset)
        } else if self.n_backwards > 0 {
            Json::object()
                .field("detected", true)
                .field("how", "counters_backwards")
                .field("n_entries", self.n_backwards)
        } else {
            Json::object().field("detected", false)
        }
    }

    /// The payload's `evicted`: entries deallocated in the interval (`dealloc` since the
    /// baseline; all of it after a reset), null before PG14.
    pub(super) fn evicted_json(&self, prev: Option<i64>, cur: Option<i64>) -> Json {
        match (prev, cur) {
            (Some(p), Some(c)) if c >= p && !self.global_reset => Json::from(c - p),
            (_, Some(c)) => Json::from(c),
            _ => Json::Null,
        }
    }
}

/// Writes the counters `d` under their payload names (null where the version lacks a column),
/// with `mean_exec_time` after `total_exec_time`.
pub(super) fn push_counters(
    o: &mut Json,
    d: &[f64; N_SLOTS],
    cols: &[Option<&'static Column>; N_SLOTS],
) {
    for (i, name) in SLOTS.iter().enumerate() {
        let v = match cols[i] {
            None => Json::Null,
            Some(c) if c.integer => Json::UInt(d[i].max(0.0).round() as u64),
            Some(_) => Json::Float(d[i].max(0.0)),
        };
        o.push(*name, v);
        if i == EXEC_TIME {
            let mean = if d[CALLS] > 0.0 {
                d[EXEC_TIME] / d[CALLS]
            } else {
                0.0
            };
            o.push("mean_exec_time", mean.max(0.0));
        }
    }
}

/// The delta of one entry and how it was computed: `continuing`, `new` (not in the baseline),
/// `readded` (evicted and re-added: `stats_since` moved) or `reset` (counters went backwards, or
/// a global reset). Never negative: a counter the version lacks (NaN) stays NaN.
fn entry_delta(
    prev: Option<&Entry>,
    cur: &Entry,
    global_reset: bool,
) -> ([f64; N_SLOTS], &'static str) {
    if global_reset {
        return (cur.v, "reset");
    }
    let Some(p) = prev else {
        return (cur.v, "new");
    };
    if let (Some(ps), Some(cs)) = (p.stats_since, cur.stats_since) {
        if cs > ps {
            return (cur.v, "readded");
        }
    }
    // Backwards is a reset; so is a baseline value no counter can have (negative) or a delta
    // no interval can produce: a damaged baseline must not ship 2^64-1 calls as a delta.
    if cur.v.iter().zip(p.v.iter()).any(|(c, p)| {
        c.is_finite() && p.is_finite() && (c < p || *p < 0.0 || c - p > MAX_PLAUSIBLE_DELTA)
    }) {
        return (cur.v, "reset");
    }
    let mut d = [f64::NAN; N_SLOTS];
    for ((d, c), p) in d.iter_mut().zip(cur.v.iter()).zip(p.v.iter()) {
        *d = c - p;
    }
    (d, "continuing")
}

#[cfg(test)]
mod tests {
    use super::super::baseline::entry;
    use super::super::columns::columns_for;
    use super::*;

    #[test]
    fn deltas_are_never_negative() {
        let (d, s) = entry_delta(Some(&entry(10.0, 5.0)), &entry(15.0, 7.5), false);
        assert_eq!((d[CALLS], d[EXEC_TIME], s), (5.0, 2.5, "continuing"));
        let (d, s) = entry_delta(Some(&entry(10.0, 5.0)), &entry(3.0, 1.0), false);
        assert_eq!((d[CALLS], s), (3.0, "reset"));
        let (d, s) = entry_delta(None, &entry(3.0, 1.0), false);
        assert_eq!((d[CALLS], s), (3.0, "new"));
        let (d, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(30.0, 1.0), true);
        assert_eq!((d[CALLS], s), (30.0, "reset"));
        let mut old = entry(100.0, 9.0);
        old.stats_since = Some(10.0);
        let mut readded = entry(200.0, 9.0);
        readded.stats_since = Some(20.0);
        let (d, s) = entry_delta(Some(&old), &readded, false);
        assert_eq!((d[CALLS], s), (200.0, "readded"));
    }

    #[test]
    fn an_implausible_baseline_value_is_a_reset_not_a_huge_delta() {
        // The campaign's case: calls damaged in the baseline to a huge negative number.
        let (d, s) = entry_delta(Some(&entry(-1e30, 1.0)), &entry(15.0, 7.5), false);
        assert_eq!((d[CALLS], s), (15.0, "reset"));
        let (_, s) = entry_delta(Some(&entry(-1.0, 1.0)), &entry(15.0, 7.5), false);
        assert_eq!(s, "reset", "no counter is negative");
        let (_, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(1e17, 7.5), false);
        assert_eq!(s, "reset", "no interval adds 1e17 calls");
        let (d, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(2.0, 7.5), false);
        assert_eq!((d[CALLS], s), (1.0, "continuing"));
    }

    #[test]
    fn counters_json_uses_stable_names_and_nulls_for_missing() {
        let mut d = [0.0; N_SLOTS];
        d[CALLS] = 4.0;
        d[EXEC_TIME] = 10.0;
        let mut o = Json::object();
        push_counters(&mut o, &d, &columns_for((1, 7)));
        assert_eq!(o.get("calls"), Some(&Json::UInt(4)));
        assert_eq!(o.get("mean_exec_time"), Some(&Json::Float(2.5)));
        assert_eq!(o.get("wal_bytes"), Some(&Json::Null));
        assert_eq!(o.get("blk_read_time"), Some(&Json::Float(0.0)));
    }
}
