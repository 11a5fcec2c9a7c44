//! Load attribution: who made the active sessions of an interval (or a spike). Every active
//! session of a sample adds that sample's period to its query (query_id, or the normalized text
//! before PostgreSQL 14), its request (correlation id), its user, database and client address,
//! split by load class; CPU ms come from the backend's `/proc` ticks of that sample.
//!
//! Invariants: per dimension, the top N rows plus the final `other` row add up exactly to the
//! total (rounding aside); memory is bounded: at most [`MAX_KEYS`] keys per dimension, sessions
//! of keys beyond that go straight into `other`.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{class_of, is_active, round, SampleRow, CLASSES};
use crate::collect::procfs;
use crate::json::Json;

/// Most distinct keys held per dimension.
pub const MAX_KEYS: usize = 10_000;

/// The dimensions, in payload order.
pub const DIMENSIONS: [&str; 5] = ["queries", "requests", "users", "databases", "client_addrs"];

/// What one key accumulated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Active seconds (samples × sample period).
    pub active_s: f64,
    /// Active seconds by class, in [`CLASSES`] order.
    pub by_class: [f64; CLASSES.len()],
    /// CPU ms the key's backends spent in the sampled periods.
    pub cpu_ms: u64,
    /// Samples it was seen in.
    pub n_samples: u64,
    /// For queries: the query_id when known.
    pub query_id: Option<i64>,
    /// For queries: the text (the first seen).
    pub query: Option<String>,
}

impl Load {
    fn add(&mut self, other: &Load) {
        self.active_s += other.active_s;
        for i in 0..CLASSES.len() {
            self.by_class[i] += other.by_class[i];
        }
        self.cpu_ms += other.cpu_ms;
        self.n_samples += other.n_samples;
    }

    /// The class with most active seconds (`None` when nothing was active).
    pub fn top_class(&self) -> Option<&'static str> {
        let (i, v) = self
            .by_class
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        (*v > 0.0).then_some(CLASSES[i])
    }

    fn to_json(&self, with_query: bool, key: Option<&str>, total: f64) -> Json {
        let mut classes = Json::object();
        for (i, c) in CLASSES.iter().enumerate() {
            if self.by_class[i] > 0.0 {
                classes.push(*c, round(self.by_class[i], 3));
            }
        }
        let mut j = Json::object().field("key", key);
        if with_query {
            j.push("query_id", self.query_id);
            j.push("query", self.query.as_deref());
        }
        j.field("active_s", round(self.active_s, 3))
            .field(
                "share",
                if total > 0.0 {
                    round(self.active_s / total, 4)
                } else {
                    0.0
                },
            )
            .field("by_class", classes)
            .field("cpu_ms", self.cpu_ms)
    }
}

#[derive(Debug, Clone, Default)]
struct Dimension {
    keys: HashMap<String, Load>,
    overflow: Load,
    /// Active load of sessions without this key (no correlation id, no client address...).
    none: Load,
}

impl Dimension {
    fn add(&mut self, key: Option<&str>, sample: &Load, row: &SampleRow) {
        let Some(key) = key else {
            self.none.add(sample);
            return;
        };
        if let Some(l) = self.keys.get_mut(key) {
            l.add(sample);
            if l.query_id.is_none() {
                l.query_id = row.query_id;
            }
            return;
        }
        if self.keys.len() >= MAX_KEYS {
            self.overflow.add(sample);
            return;
        }
        let mut l = sample.clone();
        l.query_id = row.query_id;
        l.query = row.query.clone();
        self.keys.insert(key.to_string(), l);
    }

    /// The top `n` by active seconds, then everything else.
    fn top(&self, n: usize) -> (Vec<(&str, &Load)>, Load) {
        let mut all: Vec<(&str, &Load)> = self.keys.iter().map(|(k, v)| (k.as_str(), v)).collect();
        all.sort_by(|a, b| {
            b.1.active_s
                .total_cmp(&a.1.active_s)
                .then(b.1.cpu_ms.cmp(&a.1.cpu_ms))
                .then(a.0.cmp(b.0))
        });
        let mut other = self.overflow.clone();
        other.add(&self.none);
        for (_, l) in all.iter().skip(n) {
            other.add(l);
        }
        all.truncate(n);
        (all, other)
    }
}

/// The per-interval (or per-spike) attribution table.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    dims: [Dimension; DIMENSIONS.len()],
    total: Load,
    n_samples: u64,
    /// The `query_id:<id>` key being looked up (kept to reuse its memory).
    key_buf: String,
}

/// The key a query is attributed by: its query_id when known, else its text.
pub fn query_key(r: &SampleRow) -> Option<Cow<'_, str>> {
    match (r.query_id, &r.query) {
        (Some(id), _) if id != 0 => Some(Cow::Owned(format!("query_id:{id}"))),
        (_, Some(q)) => Some(Cow::Borrowed(q.as_str())),
        _ => None,
    }
}

/// [`query_key`] written into `buf` when it is a query_id (no allocation once `buf` has room).
fn query_key_in<'a>(r: &'a SampleRow, buf: &'a mut String) -> Option<&'a str> {
    use std::fmt::Write as _;
    match (r.query_id, &r.query) {
        (Some(id), _) if id != 0 => {
            buf.clear();
            let _ = write!(buf, "query_id:{id}");
            Some(buf.as_str())
        }
        (_, Some(q)) => Some(q.as_str()),
        _ => None,
    }
}

impl Attribution {
    /// Adds one sample whose period is `period_s` seconds.
    pub fn add_sample(&mut self, rows: &[SampleRow], period_s: f64) {
        self.n_samples += 1;
        for r in rows {
            let active = is_active(r.state.as_deref());
            let cpu_ms = procfs::ticks_to_ms(r.cpu_ticks);
            if !active && cpu_ms == 0 {
                continue;
            }
            let mut l = Load {
                cpu_ms,
                n_samples: 1,
                ..Load::default()
            };
            if active {
                l.active_s = period_s;
                l.by_class[class_of(r.wait_event_type.as_deref())] = period_s;
            }
            self.total.add(&l);
            let q = query_key_in(r, &mut self.key_buf);
            let keys = [
                q,
                r.correlation_id.as_deref(),
                r.usename.as_deref(),
                r.datname.as_deref(),
                r.client_addr.as_deref(),
            ];
            for (d, k) in self.dims.iter_mut().zip(keys) {
                d.add(k, &l, r);
            }
        }
    }

    /// The whole load.
    pub fn total(&self) -> &Load {
        &self.total
    }

    /// The top `n` of dimension `dim` (an index into [`DIMENSIONS`]) with their loads.
    pub fn top(&self, dim: usize, n: usize) -> Vec<(String, Load)> {
        self.dims[dim]
            .top(n)
            .0
            .into_iter()
            .map(|(k, l)| (k.to_string(), l.clone()))
            .collect()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.n_samples == 0
    }

    /// The table: per dimension the top `n` and an `other` row, plus the total by class.
    pub fn to_json(&self, n: usize) -> Json {
        let total = self.total.active_s;
        let mut out = Json::object()
            .field("n_samples", self.n_samples)
            .field("top_n", n)
            .field("total", self.total.to_json(false, None, total));
        for (i, d) in self.dims.iter().enumerate() {
            let (top, other) = d.top(n);
            let mut rows: Vec<Json> = top
                .iter()
                .map(|(k, l)| l.to_json(i == 0, Some(k), total))
                .collect();
            rows.push(
                other
                    .to_json(false, None, total)
                    .field("other", true)
                    .field("n_keys", d.keys.len().saturating_sub(top.len())),
            );
            out.push(DIMENSIONS[i], Json::Array(rows));
        }
        out
    }
}

/// The active seconds of a dimension's rows in a table made by [`Attribution::to_json`] (tests
/// and docs: the rows add up to the total).
pub fn sum_active(rows: &Json) -> f64 {
    match rows {
        Json::Array(a) => a
            .iter()
            .filter_map(|r| r.get("active_s"))
            .filter_map(super::timeline::json_f64)
            .sum(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(q: &str, corr: Option<&str>, wait: Option<&str>, ticks: u64) -> SampleRow {
        SampleRow {
            state: Some("active".into()),
            wait_event_type: wait.map(str::to_string),
            query: Some(q.into()),
            correlation_id: corr.map(str::to_string),
            usename: Some("app".into()),
            datname: Some("db".into()),
            cpu_ticks: ticks,
            ..SampleRow::default()
        }
    }

    #[test]
    fn top_n_and_other_add_up_to_the_total() {
        let mut a = Attribution::default();
        for i in 0..20 {
            let q = format!("SELECT {i}");
            let rows: Vec<SampleRow> = (0..=i)
                .map(|_| row(&q, Some("req-1"), Some("Lock"), 1))
                .collect();
            a.add_sample(&rows, 0.25);
        }
        a.add_sample(&[row("SELECT cpu", None, None, 10)], 1.0);
        let j = a.to_json(3);
        let total = a.total().active_s;
        assert!((total - (210.0 * 0.25 + 1.0)).abs() < 1e-9);
        for d in DIMENSIONS {
            let rows = j.get(d).unwrap();
            assert!((sum_active(rows) - total).abs() < 0.01, "{d}");
        }
        let top = a.top(0, 1);
        assert_eq!(top[0].0, "SELECT 19");
        assert_eq!(top[0].1.top_class(), Some("Lock"));
        assert_eq!(a.top(1, 5).len(), 1, "one request; the rest has none");
        let text = j.to_json_string();
        assert!(text.contains(r#""other":true"#));
        assert!(text.contains(r#""CPU":1.0"#), "{text}");
    }

    #[test]
    fn query_id_wins_over_text_and_idle_rows_only_count_cpu() {
        let mut a = Attribution::default();
        let mut r = row("SELECT ?", None, None, 0);
        r.query_id = Some(42);
        let mut idle = row("COMMIT", None, None, 0);
        idle.state = Some("idle in transaction".into());
        a.add_sample(&[r.clone(), idle], 1.0);
        let top = a.top(0, 10);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, "query_id:42");
        assert_eq!(top[0].1.query.as_deref(), Some("SELECT ?"));
        let j = a.to_json(10).to_json_string();
        assert!(
            j.contains(r#""key":"query_id:42","query_id":42,"query":"SELECT ?""#),
            "{j}"
        );
    }

    #[test]
    fn keys_are_bounded() {
        let mut a = Attribution::default();
        for i in 0..(MAX_KEYS + 5) {
            a.add_sample(&[row(&format!("q{i}"), None, None, 0)], 1.0);
        }
        assert_eq!(a.dims[0].keys.len(), MAX_KEYS);
        assert_eq!(a.dims[0].overflow.active_s, 5.0);
        let j = a.to_json(2);
        assert!((sum_active(j.get("queries").unwrap()) - a.total().active_s).abs() < 1e-6);
    }
}
