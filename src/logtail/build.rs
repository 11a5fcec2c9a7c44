//! Builds `pg_log` payloads from entries: one summary payload per batch of entries (with counts
//! per severity and parse failures), and one correlated payload per entry that carries a
//! correlation ID (top-level `correlation_id`, `data.query`, `data.duration_ms`), which is how the
//! listener links a slow query to the PHP request that ran it.
//!
//! Invariants: `data` is always an object and never contains `agent` (delivery stamps it); with
//! `query_text = normalized` or `none` no statement text leaves the agent with its literals
//! (query, STATEMENT, internal QUERY and `parameters:` details are normalized or dropped); a
//! payload holds at most `max_entries_per_payload` entries.

use crate::json::Json;
use crate::payload::{Payload, Source};

use super::entry::{timestamp_to_unix, Entry, Level};
use super::parse::{Format, ParseStats};

/// What query text log payloads carry: the agent-wide `[collection] query_text` option.
pub use crate::config::QueryTextMode as QueryText;

/// How payloads are built.
#[derive(Debug, Clone, Copy)]
pub struct PayloadOptions {
    /// Query text policy. Defaults to [`QueryText::Normalized`].
    pub query_text: QueryText,
    /// The literal normalizer. Defaults to [`crate::normalize::normalize`] (the same one the
    /// activity sampler uses).
    pub normalize: fn(&str) -> String,
    /// Longest query text shipped, in characters (longer ones end in `...[truncated]`).
    /// Defaults to 1000.
    pub max_query_chars: usize,
    /// Most entries per summary payload. Defaults to 500.
    pub max_entries_per_payload: usize,
    /// Most correlated payloads (requests) per batch, slowest first; each is one HTTP request
    /// against the listener's rate limit, and entries beyond it still travel in the summary. The
    /// daemon sets it from `daemon::correlated_budget`. Defaults to 100.
    pub max_correlated: usize,
}

impl Default for PayloadOptions {
    fn default() -> PayloadOptions {
        PayloadOptions {
            query_text: QueryText::Normalized,
            normalize: crate::normalize::normalize,
            max_query_chars: 1000,
            max_entries_per_payload: 500,
            max_correlated: 100,
        }
    }
}

impl PayloadOptions {
    /// The options the agent's `[collection]` settings ask for (query text mode and length).
    pub fn from_collection(c: &crate::config::CollectionConfig) -> PayloadOptions {
        PayloadOptions {
            query_text: c.query_text,
            max_query_chars: c.query_max_chars,
            ..PayloadOptions::default()
        }
    }
}

/// Where the entries came from, for the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The file read (the latest one when the batch spans a rotation).
    pub file: Option<String>,
    /// Its format.
    pub format: Format,
}

/// The summary payloads (entries in chunks, counts in each) and the correlated payloads.
pub fn build_payloads(
    entries: &[Entry],
    stats: &ParseStats,
    origin: &Origin,
    opts: &PayloadOptions,
    collected_at: f64,
) -> Vec<Payload> {
    let mut out = Vec::new();
    let chunks = split(
        entries,
        opts.max_entries_per_payload.max(1),
        MAX_PAYLOAD_TEXT,
    );
    let n_chunks = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut counts: Vec<(Level, u64)> = Vec::new();
        for e in chunk {
            let level = e.level.unwrap_or(Level::Log);
            match counts.iter_mut().find(|(l, _)| *l == level) {
                Some((_, n)) => *n += 1,
                None => counts.push((level, 1)),
            }
        }
        counts.sort();
        let severity_counts = Json::Object(
            counts
                .iter()
                .map(|(l, n)| (l.as_str().to_string(), Json::UInt(*n)))
                .collect(),
        );
        let mut data = Json::object()
            .field("kind", "log_entries")
            .field("file", origin.file.clone())
            .field("format", origin.format.as_str())
            .field("count", chunk.len())
            .field("severity_counts", severity_counts)
            .field(
                "correlated",
                chunk.iter().filter(|e| e.correlation_id.is_some()).count(),
            )
            .field(
                "truncated_entries",
                chunk.iter().filter(|e| e.truncated).count(),
            );
        if i == 0 {
            // Batch-wide counts go in the first part only, so summing parts stays right.
            data.push("lines_read", stats.n_lines);
            data.push("parse_failures", stats.n_unparsed);
            if !stats.samples.is_empty() {
                let samples: Vec<Json> = stats
                    .samples
                    .iter()
                    .take(5)
                    .map(|(_, s)| Json::from(s.as_str()))
                    .collect();
                data.push("unparsed_samples", samples);
            }
        }
        data.push("part", i + 1);
        data.push("parts", n_chunks);
        data.push(
            "entries",
            chunk
                .iter()
                .map(|e| entry_json(e, opts))
                .collect::<Vec<_>>(),
        );
        out.push(Payload {
            source: Source::PgLog,
            collected_at,
            correlation_id: None,
            data,
        });
    }
    // One payload per request (correlation ID) in this batch: its slowest statement gives
    // `query` and `duration_ms` (what the listener's timeline shows), the rest is listed.
    let mut groups: Vec<(&str, Vec<&Entry>)> = Vec::new();
    for e in entries {
        if let Some(id) = e.correlation_id.as_deref() {
            match groups.iter_mut().find(|(g, _)| *g == id) {
                Some((_, members)) => members.push(e),
                None => groups.push((id, vec![e])),
            }
        }
    }
    let slowest = |members: &[&Entry]| -> f64 {
        members
            .iter()
            .filter_map(|e| e.duration_ms)
            .fold(0.0, f64::max)
    };
    groups.sort_by(|a, b| slowest(&b.1).total_cmp(&slowest(&a.1)));
    for (id, members) in groups.into_iter().take(opts.max_correlated) {
        let head = members
            .iter()
            .copied()
            .max_by(|a, b| {
                a.duration_ms
                    .unwrap_or(-1.0)
                    .total_cmp(&b.duration_ms.unwrap_or(-1.0))
            })
            .expect("a group has members");
        let mut data = entry_json(head, opts);
        data.push("kind", "log_correlated");
        data.push("n_entries", members.len());
        data.push(
            "total_duration_ms",
            members.iter().filter_map(|e| e.duration_ms).sum::<f64>(),
        );
        data.push(
            "entries",
            members
                .iter()
                .take(MAX_ENTRIES_PER_CORRELATION)
                .map(|e| entry_json(e, opts))
                .collect::<Vec<_>>(),
        );
        let at = head
            .timestamp
            .as_deref()
            .and_then(timestamp_to_unix)
            .unwrap_or(collected_at);
        out.push(Payload {
            source: Source::PgLog,
            collected_at: at,
            correlation_id: Some(id.to_string()),
            data,
        });
    }
    out
}

/// Most entries listed inside one correlated payload (`n_entries` counts them all).
const MAX_ENTRIES_PER_CORRELATION: usize = 50;

/// One entry as JSON; absent fields are left out to keep payloads small.
pub fn entry_json(e: &Entry, opts: &PayloadOptions) -> Json {
    let text = |s: &str| -> Option<String> {
        let t = match opts.query_text {
            QueryText::Full => s.to_string(),
            QueryText::Normalized => (opts.normalize)(s),
            QueryText::None => return None,
        };
        Some(cut_chars(t, opts.max_query_chars))
    };
    let mut o = Json::object();
    let mut put = |k: &str, v: Option<Json>| {
        if let Some(v) = v {
            o.push(k, v);
        }
    };
    put("timestamp", e.timestamp.as_deref().map(Json::from));
    put(
        "ts",
        e.timestamp
            .as_deref()
            .and_then(timestamp_to_unix)
            .map(Json::Float),
    );
    put(
        "severity",
        Some(e.level.map_or("LOG", Level::as_str).into()),
    );
    put("pid", e.pid.map(Json::from));
    put("user", e.user.as_deref().map(Json::from));
    put("database", e.database.as_deref().map(Json::from));
    put(
        "application_name",
        e.application_name.as_deref().map(Json::from),
    );
    put("remote_host", e.remote_host.as_deref().map(Json::from));
    put("session_id", e.session_id.as_deref().map(Json::from));
    put("backend_type", e.backend_type.as_deref().map(Json::from));
    put("sqlstate", e.sqlstate.as_deref().map(Json::from));
    put(
        "correlation_id",
        e.correlation_id.as_deref().map(Json::from),
    );
    let message = match opts.query_text {
        QueryText::Full => e.message.as_str(),
        _ => e.message_head(),
    };
    put("message", Some(message.into()));
    put("duration_ms", e.duration_ms.map(Json::Float));
    put("query", e.query().and_then(text).map(Json::from));
    put(
        "statement",
        e.statement.as_deref().and_then(text).map(Json::from),
    );
    put(
        "internal_query",
        e.internal_query.as_deref().and_then(text).map(Json::from),
    );
    let detail = e.detail.as_deref().and_then(|d| {
        // Bind parameter values are literals too.
        if d.starts_with("parameters: ") || d.starts_with("Parameters: ") {
            text(d)
        } else {
            Some(d.to_string())
        }
    });
    put("detail", detail.map(Json::from));
    put("hint", e.hint.as_deref().map(Json::from));
    put("context", e.context.as_deref().map(Json::from));
    put("query_id", e.query_id.filter(|q| *q != 0).map(Json::from));
    if e.truncated {
        put("truncated", Some(Json::Bool(true)));
    }
    o
}

/// Most entry text per summary payload: far below the listener's 128 MiB body limit, and small
/// enough for one quick request.
const MAX_PAYLOAD_TEXT: usize = 4 * 1024 * 1024;

/// `entries` in consecutive chunks of at most `per` entries and about `max_bytes` of text (a
/// single entry is never split); one empty chunk when there are no entries.
fn split(entries: &[Entry], per: usize, max_bytes: usize) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        if i > start && (i - start >= per || bytes + e.size() > max_bytes) {
            out.push(&entries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += e.size();
    }
    if start < entries.len() || out.is_empty() {
        out.push(&entries[start..]);
    }
    out
}

/// `s` cut to `max` characters, marked the way the other collectors mark it.
fn cut_chars(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push_str("...[truncated]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logtail::entry::Part;

    fn entry(msg: &str, app: Option<&str>, level: Level) -> Entry {
        let mut e = Entry {
            timestamp: Some("2024-05-01 12:00:00.500 UTC".into()),
            pid: Some(7),
            application_name: app.map(str::to_string),
            level: Some(level),
            ..Entry::default()
        };
        e.append(Part::Message, "", msg.as_bytes());
        e.finish(&crate::normalize::CorrelationPattern::default());
        e
    }

    const ID: &str = "bitville-0123abcd-0123-4567-89ab-0123456789ab";

    #[test]
    fn summary_and_correlated_payloads() {
        let mut es = vec![
            entry(
                "duration: 1500.5 ms  statement: SELECT * FROM t WHERE a = 'secret'",
                Some(ID),
                Level::Log,
            ),
            entry("checkpoint starting", None, Level::Log),
            entry("oops", None, Level::Error),
        ];
        es[2].detail = Some("parameters: $1 = 'secret'".into());
        let stats = ParseStats {
            n_lines: 4,
            n_entries: 3,
            n_unparsed: 1,
            samples: vec![(0, "junk".into())],
        };
        let origin = Origin {
            file: Some("/x/pg.log".into()),
            format: Format::Stderr,
        };
        let ps = build_payloads(&es, &stats, &origin, &PayloadOptions::default(), 100.0);
        assert_eq!(ps.len(), 2);
        let text = ps[0].data.to_json_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("\"agent\""));
        assert!(
            text.contains(r#""severity_counts":{"LOG":2,"ERROR":1}"#),
            "{text}"
        );
        assert!(text.contains(r#""parse_failures":1"#));
        assert_eq!(ps[0].correlation_id, None);
        let c = &ps[1];
        assert_eq!(c.correlation_id.as_deref(), ID.strip_prefix("bitville-"));
        assert_eq!(c.collected_at, 1714564800.5);
        assert_eq!(c.data.get("duration_ms"), Some(&Json::Float(1500.5)));
        assert_eq!(
            c.data.get("query"),
            Some(&Json::from("SELECT * FROM t WHERE a = ?"))
        );
        assert_eq!(
            c.data.get("message"),
            Some(&Json::from("duration: 1500.5 ms  statement:"))
        );

        // Three entries of one request become one payload headed by the slowest.
        let mut three = vec![
            entry(
                "duration: 5.0 ms  statement: SELECT 1",
                Some(ID),
                Level::Log,
            ),
            entry(
                "duration: 900.0 ms  statement: SELECT 2",
                Some(ID),
                Level::Log,
            ),
            entry(
                "duration: 7.0 ms  statement: SELECT 3",
                Some(ID),
                Level::Log,
            ),
        ];
        three.push(entry("unrelated", None, Level::Log));
        let ps = build_payloads(&three, &stats, &origin, &PayloadOptions::default(), 100.0);
        let correlated: Vec<_> = ps.iter().filter(|p| p.correlation_id.is_some()).collect();
        assert_eq!(correlated.len(), 1);
        assert_eq!(
            correlated[0].data.get("duration_ms"),
            Some(&Json::Float(900.0))
        );
        assert_eq!(correlated[0].data.get("n_entries"), Some(&Json::UInt(3)));
        assert_eq!(
            correlated[0].data.get("total_duration_ms"),
            Some(&Json::Float(912.0))
        );

        let full = PayloadOptions {
            query_text: QueryText::Full,
            ..PayloadOptions::default()
        };
        let ps = build_payloads(&es, &stats, &origin, &full, 100.0);
        assert!(ps[0].data.to_json_string().contains("secret"));
        let none = PayloadOptions {
            query_text: QueryText::None,
            ..PayloadOptions::default()
        };
        let ps = build_payloads(&es, &stats, &origin, &none, 100.0);
        assert_eq!(ps[1].data.get("query"), None);
        assert!(!ps[0].data.to_json_string().contains("secret"));
        let short = PayloadOptions {
            max_query_chars: 8,
            ..PayloadOptions::default()
        };
        let ps = build_payloads(&es, &stats, &origin, &short, 100.0);
        assert_eq!(
            ps[1].data.get("query"),
            Some(&Json::from("SELECT *...[truncated]"))
        );
    }

    #[test]
    fn chunks_and_empty_batches() {
        let es: Vec<Entry> = (0..5)
            .map(|i| entry(&format!("m{i}"), None, Level::Log))
            .collect();
        let opts = PayloadOptions {
            max_entries_per_payload: 2,
            ..PayloadOptions::default()
        };
        let origin = Origin {
            file: None,
            format: Format::Csv,
        };
        let ps = build_payloads(&es, &ParseStats::default(), &origin, &opts, 1.0);
        assert_eq!(ps.len(), 3);
        assert_eq!(ps[2].data.get("count"), Some(&Json::UInt(1)));
        assert_eq!(ps[2].data.get("parts"), Some(&Json::UInt(3)));
        assert_eq!(ps[1].data.get("parse_failures"), None);
        // Text size splits too, never inside an entry.
        let big: Vec<Entry> = (0..3)
            .map(|_| entry(&"x".repeat(60_000), None, Level::Log))
            .collect();
        assert_eq!(split(&big, 500, 100_000).len(), 3);
        assert_eq!(split(&big, 500, 10).len(), 3);
        assert_eq!(split(&big, 500, 1 << 20).len(), 1);
        // No entries but parse failures: one payload still reports them.
        let stats = ParseStats {
            n_unparsed: 3,
            ..ParseStats::default()
        };
        let ps = build_payloads(&[], &stats, &origin, &opts, 1.0);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].data.get("parse_failures"), Some(&Json::UInt(3)));
    }
}
