//! Builds `pg_log` payloads from entries: one summary payload per batch of entries (with counts
//! per severity and parse failures), and one correlated payload per entry that carries a
//! correlation ID (top-level `correlation_id`, `data.query`, `data.duration_ms`), which is how the
//! listener links a slow query to the PHP request that ran it.
//!
//! Invariants: `data` is always an object and never contains `agent` (delivery stamps it); with
//! `query_text = normalized` no literal leaves the agent (query, STATEMENT, internal QUERY,
//! plans, messages, DETAIL, HINT, CONTEXT and unparsed samples all go through
//! [`crate::normalize`], the one place that decides what is customer data), and with `none` no
//! statement text, plan text, DETAIL, HINT, CONTEXT or sample at all; a payload holds at most
//! `max_entries_per_payload` entries.

use crate::json::Json;
use crate::normalize::LogText;
use crate::payload::{Payload, Source};

use super::entry::{timestamp_to_unix, Entry, Level};
use super::parse::{Format, ParseStats};

/// What query text log payloads carry: the agent-wide `[collection] query_text` option.
pub use crate::config::QueryTextMode as QueryText;

/// How payloads are built.
#[derive(Debug, Clone, Copy)]
pub struct PayloadOptions {
    /// Query text policy. Defaults to [`QueryText::Normalized`]. What it masks is decided by
    /// [`crate::normalize`] alone.
    pub query_text: QueryText,
    /// Longest query text (and DETAIL, HINT, CONTEXT) shipped, in characters (longer ones end in
    /// `...[truncated]`). Defaults to 1000.
    pub max_query_chars: usize,
    /// Largest auto_explain plan shipped per entry, in bytes. Defaults to 64 KiB.
    pub plan_max_bytes: usize,
    /// Most entries per summary payload. Defaults to 500.
    pub max_entries_per_payload: usize,
    /// Most correlated payloads (requests) per batch, slowest first; each is one HTTP request
    /// against the listener's rate limit, and entries beyond it still travel in the summary. The
    /// daemon sets it from `daemon::correlated_budget`. Defaults to 100.
    pub max_correlated: usize,
}

/// The `[collection] query_max_chars` and `plan_max_bytes` defaults of `config::KEYS`.
impl Default for PayloadOptions {
    fn default() -> PayloadOptions {
        PayloadOptions {
            query_text: QueryText::Normalized,
            max_query_chars: crate::config::default_whole("collection", "query_max_chars") as usize,
            plan_max_bytes: crate::config::default_whole("collection", "plan_max_bytes") as usize,
            max_entries_per_payload: 500,
            max_correlated: 100,
        }
    }
}

impl PayloadOptions {
    /// The text rule of [`crate::normalize`] for these options.
    fn text_rule(&self) -> crate::normalize::QueryText {
        crate::normalize::QueryText {
            mode: self.query_text,
            max_chars: self.max_query_chars,
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
                .map(|(l, n)| (l.as_str().into(), Json::UInt(*n)))
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
                // A line the parser could not read may be anything, a statement included.
                let rule = opts.text_rule();
                let samples: Vec<Json> = stats
                    .samples
                    .iter()
                    .take(5)
                    .filter_map(|(_, s)| rule.render_log_text(LogText::Unparsed, s))
                    .map(Json::from)
                    .collect();
                if !samples.is_empty() {
                    data.push("unparsed_samples", samples);
                }
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
        // A plan's duration repeats its statement's: the head and the total are statements'.
        let head = members
            .iter()
            .copied()
            .max_by(|a, b| {
                let d = |e: &Entry| match (e.plan_at, e.duration_ms) {
                    (None, Some(d)) => d,
                    (Some(_), Some(_)) => -0.5,
                    _ => -1.0,
                };
                d(a).total_cmp(&d(b))
            })
            .expect("a group has members");
        let statements = request_statements(&members);
        let mut data = entry_json(head, opts);
        if let Json::Object(fields) = &mut data {
            fields.retain(|(k, _)| k != "plan");
        }
        if data.get("query").is_none() {
            // `log_statement` + a bare `duration:` line: the text is on the statement record.
            let slowest_text = statements
                .iter()
                .filter(|s| s.text.is_some())
                .max_by(|a, b| {
                    a.duration_ms
                        .unwrap_or(-1.0)
                        .total_cmp(&b.duration_ms.unwrap_or(-1.0))
                });
            if let Some(q) = slowest_text
                .and_then(|s| s.text)
                .and_then(|t| opts.text_rule().render(t))
            {
                data.push("query", q);
            }
        }
        data.push("kind", "log_correlated");
        data.push("n_entries", members.len());
        data.push(
            "total_duration_ms",
            members
                .iter()
                .filter(|e| e.plan_at.is_none())
                .filter_map(|e| e.duration_ms)
                .sum::<f64>(),
        );
        data.push(
            "entries",
            members
                .iter()
                .take(MAX_ENTRIES_PER_CORRELATION)
                .map(|e| {
                    let mut j = entry_json(e, opts);
                    // The plan travels once, on its statement (`statements[].plan`).
                    if let Json::Object(fields) = &mut j {
                        fields.retain(|(k, _)| k != "plan");
                    }
                    j
                })
                .collect::<Vec<_>>(),
        );
        data.push(
            "statements",
            statements
                .iter()
                .take(MAX_ENTRIES_PER_CORRELATION)
                .map(|s| s.to_json(opts))
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

/// Most entries (and statements) listed inside one correlated payload (`n_entries` counts them
/// all).
const MAX_ENTRIES_PER_CORRELATION: usize = 50;

/// One statement of a request, assembled from the entries of its backend: its text, duration,
/// auto_explain plan and the events (temp files, lock waits, timeouts) that happened to it.
#[derive(Debug, Clone)]
pub struct StatementRecord<'a> {
    /// The entry that named the statement (or, for a statement known only from an error, the
    /// error entry whose `STATEMENT` it is).
    pub first: &'a Entry,
    /// The statement text as the server logged it.
    pub text: Option<&'a str>,
    /// Its duration (`duration: N ms`).
    pub duration_ms: Option<f64>,
    /// The auto_explain entry of its plan.
    pub plan: Option<&'a Entry>,
    /// Event entries that happened to it.
    pub events: Vec<&'a Entry>,
    /// SQLSTATE of the error it ended with.
    pub error: Option<&'a str>,
}

impl StatementRecord<'_> {
    /// The statement as JSON, self-contained: `query`, `pid`, `timestamp`, `ts`, `duration_ms`,
    /// `query_id`, `sqlstate`, `plan`, `plan_format`, `plan_truncated`, `plan_summary`, `events`.
    pub fn to_json(&self, opts: &PayloadOptions) -> Json {
        let rule = opts.text_rule();
        let e = self.first;
        let mut o = Json::object()
            .field("query", self.text.and_then(|t| rule.render(t)))
            .field("pid", e.pid.map(Json::from))
            .field("timestamp", e.timestamp.as_deref())
            .field(
                "ts",
                e.timestamp
                    .as_deref()
                    .and_then(timestamp_to_unix)
                    .map(Json::Float),
            )
            .field("duration_ms", self.duration_ms.map(Json::Float));
        let query_id = e
            .query_id
            .or(self.plan.and_then(|p| p.query_id))
            .filter(|q| *q != 0);
        o.push("query_id", query_id.map(Json::from));
        if let Some(code) = self.error {
            o.push("sqlstate", code);
        }
        if let Some(p) = self.plan {
            let shipped = super::plan::ship(
                p.plan().unwrap_or(""),
                opts.query_text == QueryText::Full,
                opts.plan_max_bytes,
                p.duration_ms,
            );
            o.push("plan_format", shipped.format.as_str());
            if opts.query_text != QueryText::None {
                o.push("plan", shipped.plan);
                if shipped.truncated || p.truncated {
                    o.push("plan_truncated", true);
                }
            }
            o.push("plan_summary", shipped.summary);
        }
        if !self.events.is_empty() {
            o.push(
                "events",
                self.events
                    .iter()
                    .filter_map(|ev| {
                        let mut j = ev.event.as_ref()?.to_json();
                        j.push("timestamp", ev.timestamp.as_deref());
                        Some(j)
                    })
                    .collect::<Vec<_>>(),
            );
        }
        // Leave out what is not known rather than sending nulls.
        if let Json::Object(fields) = &mut o {
            fields.retain(|(_, v)| *v != Json::Null);
        }
        o
    }
}

/// True for the protocol steps of the extended query protocol (`parse`, `bind`), which are not
/// statements of their own.
fn is_protocol_step(e: &Entry) -> bool {
    let head = e.message_head();
    let after = head.split_once(" ms  ").map_or(head, |(_, r)| r);
    after.starts_with("parse ") || after.starts_with("bind ")
}

/// The statements of one request's entries (in file order), each linked, per backend pid, with
/// its duration, its plan and its events: a `statement:` line opens a statement that the next
/// `duration:` line of that pid closes; a `duration: N ms  statement:` line is one on its own;
/// plans and events logged before the statement's line (auto_explain and temp files are logged
/// when the executor ends) attach to the next statement of that pid, those logged while one is
/// open attach to it; a plan whose `query_id` differs from the open statement's waits for the
/// next one.
pub fn request_statements<'a>(members: &[&'a Entry]) -> Vec<StatementRecord<'a>> {
    struct PerPid<'a> {
        pid: Option<u32>,
        open: Option<usize>,
        plan: Option<&'a Entry>,
        events: Vec<&'a Entry>,
    }
    let mut out: Vec<StatementRecord<'a>> = Vec::new();
    let mut pids: Vec<PerPid<'a>> = Vec::new();
    for &e in members {
        let at = match pids.iter().position(|p| p.pid == e.pid) {
            Some(i) => i,
            None => {
                pids.push(PerPid {
                    pid: e.pid,
                    open: None,
                    plan: None,
                    events: Vec::new(),
                });
                pids.len() - 1
            }
        };
        let st = &mut pids[at];
        let per_statement = e
            .event
            .as_ref()
            .is_some_and(|ev| ev.class.is_per_statement());
        let is_error = e.level.is_some_and(|l| l >= Level::Error);
        if per_statement && !is_error {
            match st.open {
                Some(i) => out[i].events.push(e),
                None => st.events.push(e),
            }
            continue;
        }
        if e.plan_at.is_some() {
            let fits = st.open.is_some_and(|i| {
                out[i].plan.is_none()
                    && match (out[i].first.query_id, e.query_id) {
                        (Some(a), Some(b)) if a != 0 && b != 0 => a == b,
                        _ => true,
                    }
            });
            match st.open {
                Some(i) if fits => out[i].plan = Some(e),
                _ => st.plan = Some(e),
            }
            continue;
        }
        if is_error {
            // An error ends the open statement (or is the only trace of one).
            let i = match st.open.take() {
                Some(i) => i,
                None => {
                    out.push(StatementRecord {
                        first: e,
                        text: e.statement.as_deref(),
                        duration_ms: None,
                        plan: st.plan.take(),
                        events: std::mem::take(&mut st.events),
                        error: None,
                    });
                    out.len() - 1
                }
            };
            out[i].error = e.sqlstate.as_deref().or(Some("ERROR"));
            if per_statement {
                out[i].events.push(e);
            }
            continue;
        }
        if is_protocol_step(e) {
            continue;
        }
        if let Some(q) = e.query() {
            // A statement still open never got its duration line; this one replaces it.
            st.open = None;
            let plan = st.plan.take().filter(|p| within_window(p, e));
            out.push(StatementRecord {
                first: e,
                text: Some(q),
                duration_ms: e.duration_ms,
                plan,
                events: std::mem::take(&mut st.events),
                error: None,
            });
            if e.duration_ms.is_none() {
                st.open = Some(out.len() - 1);
            }
            continue;
        }
        if let (Some(d), Some(i)) = (e.duration_ms, st.open) {
            out[i].duration_ms = Some(d);
            if out[i].plan.is_none() {
                out[i].plan = st.plan.take().filter(|p| within_window(p, e));
            }
            out[i].events.append(&mut st.events);
            st.open = None;
        }
    }
    out
}

/// True when a plan logged at `plan`'s time can belong to the statement that ended at `end`
/// (its duration back, with a second of slack for clock rounding); true when a time is unknown.
fn within_window(plan: &Entry, end: &Entry) -> bool {
    let ts = |e: &Entry| e.timestamp.as_deref().and_then(timestamp_to_unix);
    match (ts(plan), ts(end)) {
        (Some(p), Some(t)) => {
            let start = t - end.duration_ms.unwrap_or(0.0) / 1000.0;
            p >= start - 1.0 && p <= t + 1.0
        }
        _ => true,
    }
}

/// One entry as JSON; absent fields are left out to keep payloads small. Every text that may
/// carry customer data goes through [`crate::normalize`] (statements, plans, messages, DETAIL,
/// HINT, CONTEXT), so `query_text = normalized` ships no literal and `none` no statement text.
pub fn entry_json(e: &Entry, opts: &PayloadOptions) -> Json {
    let rule = opts.text_rule();
    let full = opts.query_text == QueryText::Full;
    let sql = |s: &str| rule.render(s);
    let log = |k: LogText, s: &str| rule.render_log_text(k, s);
    let mut o = Json::object();
    let mut put = |k: &'static str, v: Option<Json>| {
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
    let message = if full {
        e.message.clone()
    } else if e.has_statement_text() {
        e.message_head().to_string()
    } else {
        crate::normalize::scrub(LogText::Message, &e.message)
    };
    put("message", Some(message.into()));
    put("duration_ms", e.duration_ms.map(Json::Float));
    put("query", e.query().and_then(sql).map(Json::from));
    put(
        "statement",
        e.statement.as_deref().and_then(sql).map(Json::from),
    );
    put(
        "internal_query",
        e.internal_query.as_deref().and_then(sql).map(Json::from),
    );
    for (key, kind, text) in [
        ("detail", LogText::Detail, &e.detail),
        ("hint", LogText::Hint, &e.hint),
        ("context", LogText::Context, &e.context),
    ] {
        put(
            key,
            text.as_deref().and_then(|t| log(kind, t)).map(Json::from),
        );
    }
    put("query_id", e.query_id.filter(|q| *q != 0).map(Json::from));
    put("event", e.event.as_ref().map(|ev| ev.to_json()));
    if let Some(body) = e.plan() {
        let p = super::plan::ship(body, full, opts.plan_max_bytes, e.duration_ms);
        put("plan_format", Some(p.format.as_str().into()));
        if opts.query_text != QueryText::None {
            put("plan", Some(p.plan));
            if p.truncated || e.truncated {
                put("plan_truncated", Some(Json::Bool(true)));
            }
        }
        put("plan_summary", Some(p.summary));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logtail::entry::Part;

    /// The one entry builder of these tests: `E::log(msg)` or `E::error(msg)` (pid 7, a fixed
    /// timestamp), the parts a parser would add, then [`E::done`] finishes it as the parser does
    /// (correlation, duration, event).
    struct E(Entry);

    impl E {
        fn new(level: Level, msg: &str) -> E {
            let mut e = Entry {
                timestamp: Some("2024-05-01 12:00:00.500 UTC".into()),
                pid: Some(7),
                level: Some(level),
                ..Entry::default()
            };
            e.append(Part::Message, "", msg.as_bytes());
            E(e)
        }

        fn log(msg: &str) -> E {
            E::new(Level::Log, msg)
        }

        fn error(msg: &str) -> E {
            E::new(Level::Error, msg)
        }

        /// The session of a correlated request (`application_name` [`ID`]).
        fn request(mut self) -> E {
            self.0.application_name = Some(ID.into());
            self
        }

        fn at(mut self, timestamp: &str) -> E {
            self.0.timestamp = Some(timestamp.into());
            self
        }

        fn detail(mut self, text: &str) -> E {
            self.0.detail = Some(text.into());
            self
        }

        fn statement(mut self, text: &str) -> E {
            self.0.statement = Some(text.into());
            self
        }

        fn context(mut self, text: &str) -> E {
            self.0.context = Some(text.into());
            self
        }

        fn hint(mut self, text: &str) -> E {
            self.0.hint = Some(text.into());
            self
        }

        fn sqlstate(mut self, code: &str) -> E {
            self.0.sqlstate = Some(code.into());
            self
        }

        fn done(mut self) -> Entry {
            self.0
                .finish(&crate::normalize::CorrelationPattern::default());
            self.0
        }
    }

    /// The payloads of `es` from a stderr log with no parse failures, at time 1.0.
    fn payloads(es: &[Entry], opts: &PayloadOptions) -> Vec<Payload> {
        let origin = Origin {
            file: None,
            format: Format::Stderr,
        };
        build_payloads(es, &ParseStats::default(), &origin, opts, 1.0)
    }

    const ID: &str = "bitville-0123abcd-0123-4567-89ab-0123456789ab";

    #[test]
    fn summary_and_correlated_payloads() {
        let es = vec![
            E::log("duration: 1500.5 ms  statement: SELECT * FROM t WHERE a = 'secret'")
                .request()
                .done(),
            E::log("checkpoint starting").done(),
            E::error("oops").detail("parameters: $1 = 'secret'").done(),
        ];
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
            E::log("duration: 5.0 ms  statement: SELECT 1")
                .request()
                .done(),
            E::log("duration: 900.0 ms  statement: SELECT 2")
                .request()
                .done(),
            E::log("duration: 7.0 ms  statement: SELECT 3")
                .request()
                .done(),
        ];
        three.push(E::log("unrelated").done());
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
    fn no_literal_of_any_message_kind_is_shipped_normalized_and_none_ships_no_text() {
        let es = vec![
            E::log("duration: 2.0 ms  plan:\nQuery Text: SELECT * FROM users WHERE email = 'secret@x.com'\n\
                 Index Scan using users_email_key on users  (cost=0.29..8.31 rows=1 width=40)\n  \
                 Index Cond: (email = 'secret@x.com'::text)\n  Filter: (id > 424242)").request().done(),
            E::error("duplicate key value violates unique constraint \"users_email_key\"")
                .detail("Key (email)=(secret@x.com) already exists.")
                .statement("INSERT INTO users VALUES ('secret@x.com') /* secret */")
                .done(),
            E::error("invalid input syntax for type integer: \"secret\"")
                .context("SQL statement \"SELECT 'secret'\"")
                .hint("try 'secret'")
                .done(),
        ];
        let stats = ParseStats {
            samples: vec![(0, "\tAND x = 'secret' AND y = \"secret\" AND 424242".into())],
            n_unparsed: 1,
            ..ParseStats::default()
        };
        let origin = Origin {
            file: None,
            format: Format::Stderr,
        };
        let all = |opts: &PayloadOptions| -> String {
            build_payloads(&es, &stats, &origin, opts, 1.0)
                .iter()
                .map(|p| p.data.to_json_string())
                .collect()
        };
        let text = all(&PayloadOptions::default());
        assert!(
            !text.contains("secret") && !text.contains("424242"),
            "{text}"
        );
        assert!(
            text.contains(r#""plan":"Query Text: SELECT * FROM users WHERE email = ?"#),
            "{text}"
        );
        assert!(
            text.contains(r#""message":"duration: 2.0 ms  plan:""#),
            "{text}"
        );
        assert!(text.contains("Key (email)=(?) already exists."), "{text}");
        assert!(text.contains(r#""plan_format":"text""#), "{text}");
        let none = PayloadOptions {
            query_text: QueryText::None,
            ..PayloadOptions::default()
        };
        let text = all(&none);
        assert!(
            !text.contains("secret") && !text.contains("424242"),
            "{text}"
        );
        for field in [
            "\"plan\"",
            "\"detail\"",
            "\"context\"",
            "\"hint\"",
            "\"statement\"",
            "unparsed_samples",
        ] {
            assert!(!text.contains(field), "{field} in {text}");
        }
        assert!(text.contains("plan_summary"), "{text}");
        let full = PayloadOptions {
            query_text: QueryText::Full,
            ..PayloadOptions::default()
        };
        assert!(all(&full).contains("Key (email)=(secret@x.com)"));
    }

    #[test]
    fn correlated_records_list_statements_with_their_plans_and_events() {
        let plan = "duration: 900.0 ms  plan:\n{\"Query Text\": \"SELECT * FROM t WHERE a = 'secret'\", \"Plan\": {\"Node Type\": \"Sort\", \"Sort Space Type\": \"Disk\", \"Sort Method\": \"external merge\", \"Sort Space Used\": 2048, \"Filter\": \"(a = 'secret'::text)\"}}";
        let es = vec![
            // log_statement, then auto_explain and a temp file, then the duration line.
            E::log("statement: SELECT * FROM t WHERE a = 'secret'")
                .request()
                .done(),
            E::log(plan).request().done(),
            E::log("temporary file: path \"base/pgsql_tmp/x\", size 209715200")
                .request()
                .done(),
            E::log("duration: 901.5 ms").request().done(),
            // No log_statement: the lock wait comes first, the statement after.
            E::log("process 7 still waiting for ShareLock on transaction 9 after 4000.0 ms")
                .request()
                .detail("Process holding the lock: 8. Wait queue: 7.")
                .done(),
            E::log("duration: 4100.0 ms  statement: UPDATE t SET v = 'secret'")
                .request()
                .done(),
            E::error("canceling statement due to lock timeout")
                .request()
                .statement("UPDATE t SET v = 'other secret'")
                .sqlstate("55P03")
                .done(),
        ];
        let members: Vec<&Entry> = es.iter().collect();
        let stmts = request_statements(&members);
        assert_eq!(stmts.len(), 3);
        let opts = PayloadOptions::default();
        let first = stmts[0].to_json(&opts).to_json_string();
        assert!(
            first.contains(r#""query":"SELECT * FROM t WHERE a = ?""#),
            "{first}"
        );
        assert!(first.contains(r#""duration_ms":901.5"#), "{first}");
        assert!(
            first.contains(r#""plan":{"Query Text":"SELECT * FROM t WHERE a = ?""#),
            "{first}"
        );
        assert!(first.contains(r#""spilled":true"#), "{first}");
        assert!(
            first.contains(r#""events":[{"class":"temp_file","size_bytes":209715200.0"#),
            "{first}"
        );
        let second = stmts[1].to_json(&opts).to_json_string();
        assert!(
            second.contains(r#""class":"lock_wait""#) && second.contains(r#""wait_ms":4000.0"#),
            "{second}"
        );
        assert!(second.contains(r#""blocker_pids":[8]"#), "{second}");
        let third = stmts[2].to_json(&opts).to_json_string();
        assert!(
            third.contains(r#""sqlstate":"55P03""#) && third.contains("lock_timeout"),
            "{third}"
        );
        let ps = payloads(&es, &opts);
        let correlated = ps.iter().find(|p| p.correlation_id.is_some()).unwrap();
        // The slowest statement heads the record; the plan's duration is not counted twice.
        assert_eq!(
            correlated.data.get("duration_ms"),
            Some(&Json::Float(4100.0))
        );
        assert_eq!(
            correlated.data.get("total_duration_ms"),
            Some(&Json::Float(5001.5))
        );
        let text = correlated.data.to_json_string();
        assert!(
            text.contains(r#""statements":[{"query":"SELECT * FROM t WHERE a = ?""#),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn with_log_statement_the_record_takes_its_query_from_the_statement() {
        let es = vec![
            E::log("statement: SELECT pg_sleep(0.9), 'secret'")
                .request()
                .done(),
            E::log("duration: 900.5 ms").request().done(),
        ];
        let ps = payloads(&es, &PayloadOptions::default());
        let c = ps.iter().find(|p| p.correlation_id.is_some()).unwrap();
        assert_eq!(c.data.get("duration_ms"), Some(&Json::Float(900.5)));
        assert_eq!(
            c.data.get("query"),
            Some(&Json::from("SELECT pg_sleep(?), ?"))
        );
    }

    #[test]
    fn a_plan_from_outside_the_statements_time_window_is_not_attached() {
        let old_plan = E::log(
            "duration: 5.0 ms  plan:\nQuery Text: SELECT 1\nResult  (cost=0.00..0.01 rows=1 width=4)",
        )
        .request()
        .at("2024-05-01 11:50:00.000 UTC")
        .done();
        let stmt = E::log("duration: 5.0 ms  statement: SELECT 2")
            .request()
            .done();
        let members = vec![&old_plan, &stmt];
        let stmts = request_statements(&members);
        assert_eq!(stmts.len(), 1);
        assert!(stmts[0].plan.is_none());
        let mut recent = old_plan.clone();
        recent.timestamp = stmt.timestamp.clone();
        let members = vec![&recent, &stmt];
        assert!(request_statements(&members)[0].plan.is_some());
    }

    #[test]
    fn chunks_and_empty_batches() {
        let es: Vec<Entry> = (0..5).map(|i| E::log(&format!("m{i}")).done()).collect();
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
        let big: Vec<Entry> = (0..3).map(|_| E::log(&"x".repeat(60_000)).done()).collect();
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
