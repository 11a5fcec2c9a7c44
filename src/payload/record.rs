//! The record: what the spool stores for one payload, and what is added to it on the way out.
//!
//! One place for everything the delivery path writes into a payload: the envelope
//! (`timestamp`, `source`, `correlation_id`, `data`), the `data.agent` stamp (version, host,
//! sequence number, collected_at), the `data.agent.dropped` loss report ([`DropCounts`]) added
//! when a record is handed to the shipper, and the `project` added when it is sent. The spool
//! keeps the rendered text as opaque bytes.
//!
//! Invariants: a rendered record is a JSON object ending in `}}}` (`data.agent` last, inside
//! `data`, last in the envelope), which [`with_dropped`] relies on; a collector's own
//! `data.agent` fields are kept, but never its version, host, seq, lane or collected_at.
//! [`RecordKind::of_record`] reads a stored text back only as far as `data.kind`, and never
//! panics on what it reads (spool files are external input).

use crate::json::Json;

use super::{unix_now, AgentInfo, Payload, Source};

/// What the spool stamps into `data.agent` when a payload is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStamp<'a> {
    /// Version and host.
    pub agent: &'a AgentInfo,
    /// The payload's sequence number in its lane: +1 per payload, never reused, survives
    /// restarts.
    pub seq: u64,
    /// The spool lane the payload is written to; stamped as `data.agent.lane` for the spike
    /// lane only (a record without `lane` is in the main lane, as every record before lanes).
    pub lane: Lane,
}

/// The spool lane of a payload: its own segments, sequence space, size share and drop report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Everything but spike reports: oldest first, its oldest segment evicted at the bound.
    Main,
    /// Spike reports (`pg_stat_activity` with `data.kind = "spike"`): shipped before the main
    /// lane's backlog, never evicted to make room for main-lane records.
    Spike,
}

impl Lane {
    /// Both lanes, in the order the shipper looks at them.
    pub const ALL: [Lane; 2] = [Lane::Spike, Lane::Main];

    /// The lane `payload` belongs to.
    pub fn of(payload: &Payload) -> Lane {
        if RecordKind::of_payload(payload) == RecordKind::Spike {
            Lane::Spike
        } else {
            Lane::Main
        }
    }

    /// The lane's name, as in `data.agent.lane`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Spike => "spike",
        }
    }
}

/// What a record holds, as the drop report counts it (`data.agent.dropped.by_kind`): the
/// payload's `data.kind` where its source has several kinds, else its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `pg_stat_activity` without a `data.kind`: the interval's activity summary.
    ActivitySummary,
    /// `pg_stat_activity` with `kind = "correlated_request"`.
    CorrelatedRequest,
    /// `pg_stat_activity` with `kind = "spike"`: a spike report (start or end).
    Spike,
    /// `pg_stat_statements`.
    Statements,
    /// `pg_log` with `kind = "log_entries"` (or none).
    LogEntries,
    /// `pg_log` with `kind = "log_correlated"`.
    LogCorrelated,
    /// `system_metrics`.
    SystemMetrics,
    /// A `pg_stat_activity` kind this build does not know, or a body that could not be read.
    Other,
}

impl RecordKind {
    /// Every kind, in the order of [`DropCounts::by_kind`].
    pub const ALL: [RecordKind; 8] = [
        RecordKind::ActivitySummary,
        RecordKind::CorrelatedRequest,
        RecordKind::Spike,
        RecordKind::Statements,
        RecordKind::LogEntries,
        RecordKind::LogCorrelated,
        RecordKind::SystemMetrics,
        RecordKind::Other,
    ];

    /// The key in `data.agent.dropped.by_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::ActivitySummary => "activity_summary",
            RecordKind::CorrelatedRequest => "correlated_request",
            RecordKind::Spike => "spike",
            RecordKind::Statements => "pg_stat_statements",
            RecordKind::LogEntries => "log_entries",
            RecordKind::LogCorrelated => "log_correlated",
            RecordKind::SystemMetrics => "system_metrics",
            RecordKind::Other => "other",
        }
    }

    /// The kind of a payload of `source` whose `data.kind` is `kind`.
    pub fn from_parts(source: Source, kind: Option<&[u8]>) -> RecordKind {
        match (source, kind) {
            (Source::PgStatActivity, None) => RecordKind::ActivitySummary,
            (Source::PgStatActivity, Some(b"correlated_request")) => RecordKind::CorrelatedRequest,
            (Source::PgStatActivity, Some(b"spike")) => RecordKind::Spike,
            (Source::PgStatActivity, Some(_)) => RecordKind::Other,
            (Source::PgStatStatements, _) => RecordKind::Statements,
            (Source::PgLog, Some(b"log_correlated")) => RecordKind::LogCorrelated,
            (Source::PgLog, _) => RecordKind::LogEntries,
            (Source::SystemMetrics, _) => RecordKind::SystemMetrics,
        }
    }

    /// The kind of a payload before it is stored.
    pub fn of_payload(payload: &Payload) -> RecordKind {
        let kind = match payload.data.get("kind") {
            Some(Json::Str(k)) => Some(k.as_bytes()),
            Some(_) => Some(&b"?"[..]),
            None => None,
        };
        RecordKind::from_parts(payload.source, kind)
    }

    /// The kind of a stored record (the output of [`render_record`]) of `source`, read from its
    /// text without building it: how an evicted segment's records are counted.
    pub fn of_record(source: Source, record: &[u8]) -> RecordKind {
        match data_kind(record) {
            Ok(kind) => RecordKind::from_parts(source, kind),
            Err(Unreadable) => RecordKind::Other,
        }
    }
}

/// A record text [`data_kind`] cannot follow (never the case for what [`render_record`] wrote).
struct Unreadable;

/// The raw `data.kind` string of a record text: `Ok(None)` when `data` has no `kind` (or a
/// `kind` that is not a plain string, given as `?`). Walks the envelope's and `data`'s top-level
/// keys, skipping values byte by byte: linear in the text, never panics, allocates nothing.
fn data_kind(text: &[u8]) -> Result<Option<&[u8]>, Unreadable> {
    let data = find_key(text, 0, b"data")?.ok_or(Unreadable)?;
    let Some(at) = find_key(text, data, b"kind")? else {
        return Ok(None);
    };
    if text.get(at) != Some(&b'"') {
        return Ok(Some(b"?"));
    }
    let end = skip_string(text, at)?;
    let raw = &text[at + 1..end - 1];
    Ok(Some(if raw.contains(&b'\\') { b"?" } else { raw }))
}

/// The offset of the value of `key` in the object opening at `open`, if it has that key.
fn find_key(b: &[u8], open: usize, key: &[u8]) -> Result<Option<usize>, Unreadable> {
    if b.get(open) != Some(&b'{') {
        return Err(Unreadable);
    }
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(Unreadable);
        }
        let after = skip_string(b, i)?;
        let name = &b[i + 1..after - 1];
        i = skip_ws(b, after);
        if b.get(i) != Some(&b':') {
            return Err(Unreadable);
        }
        i = skip_ws(b, i + 1);
        if name == key {
            return Ok(Some(i));
        }
        i = skip_ws(b, skip_value(b, i)?);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(None),
            _ => return Err(Unreadable),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The offset just past the string starting (with its quote) at `i`.
fn skip_string(b: &[u8], i: usize) -> Result<usize, Unreadable> {
    let mut j = i + 1;
    loop {
        match b.get(j) {
            Some(b'\\') => j += 2,
            Some(b'"') => return Ok(j + 1),
            Some(_) => j += 1,
            None => return Err(Unreadable),
        }
    }
}

/// The offset just past the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Result<usize, Unreadable> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j) {
                    Some(b'"') => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(Unreadable),
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            if j == i {
                return Err(Unreadable);
            }
            Ok(j)
        }
        None => Err(Unreadable),
    }
}

/// Losses not yet reported to the listener; sent as `data.agent.dropped` with the next payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Unacknowledged records removed because the spool reached `max_bytes`.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Those records per source, in [`Source::ALL`] order.
    pub by_source: [u64; 4],
    /// Those records per kind, in [`RecordKind::ALL`] order (what could be read of them: a
    /// segment that cannot be opened any more counts in `records` only).
    pub by_kind: [u64; RecordKind::ALL.len()],
    /// The lowest sequence number among those records (0 when there are none). The range is
    /// in the sequence space of the lane of the record that carries the report.
    pub first_seq: u64,
    /// The highest sequence number among those records (0 when there are none). Every number
    /// from `first_seq` to `last_seq` the listener did not receive was dropped for room.
    pub last_seq: u64,
    /// Payloads dropped because writing them failed (disk full, I/O error).
    pub write_errors: u64,
    /// Payloads dropped because they were over `max_record_bytes`.
    pub oversized: u64,
    /// Records lost to damage found in segments (counted from sequence gaps).
    pub corrupt_records: u64,
    /// Bytes of damaged data skipped or truncated.
    pub corrupt_bytes: u64,
}

impl DropCounts {
    /// Whether nothing was lost.
    pub fn is_empty(&self) -> bool {
        *self == DropCounts::default()
    }

    /// The `data.agent.dropped` object.
    pub fn to_json(&self) -> Json {
        let mut by_source = Json::object();
        for (s, n) in Source::ALL.iter().zip(self.by_source) {
            if n > 0 {
                by_source.push(s.as_str(), n);
            }
        }
        let mut by_kind = Json::object();
        for (k, n) in RecordKind::ALL.iter().zip(self.by_kind) {
            if n > 0 {
                by_kind.push(k.as_str(), n);
            }
        }
        let mut out = Json::object()
            .field("records", self.records)
            .field("bytes", self.bytes)
            .field("by_source", by_source)
            .field("by_kind", by_kind);
        if self.last_seq > 0 {
            out.push("first_seq", self.first_seq);
            out.push("last_seq", self.last_seq);
        }
        out.field("write_errors", self.write_errors)
            .field("oversized", self.oversized)
            .field("corrupt_records", self.corrupt_records)
            .field("corrupt_bytes", self.corrupt_bytes)
    }
}

/// Renders the envelope of `payload` without its `project`: the text the spool stores.
///
/// Field order: `timestamp`, `source`, `correlation_id` only when the payload has one (the
/// listener rejects a null), then `data` with `data.agent` last. That order makes the text end
/// in `}}}` (agent, data, envelope), which [`with_dropped`] relies on. A `data` that is not an object
/// (a collector bug) is wrapped as `{"value": ...}` so the listener still accepts it, and a
/// non-finite or non-positive `collected_at` is replaced by the current time so `timestamp` is
/// always a number.
pub fn render_record(payload: &Payload, stamp: &AgentStamp<'_>) -> String {
    let collected_at = if payload.collected_at.is_finite() && payload.collected_at > 0.0 {
        payload.collected_at
    } else {
        unix_now()
    };
    let wrapped;
    let fields: &[(crate::json::Key, Json)] = match &payload.data {
        Json::Object(fields) => fields,
        other => {
            log::error!(
                "{} payload data is not an object; wrapped as data.value",
                payload.source.as_str()
            );
            wrapped = [("value".into(), other.clone())];
            &wrapped
        }
    };
    // The stamp is the delivery path's alone: a collector's `data.agent` (the agent's own cost
    // in system_metrics) keeps its other fields, but never its own version, host, seq or
    // collected_at.
    let mut agent = Json::object()
        .field("version", stamp.agent.version.as_str())
        .field("host", stamp.agent.host.as_str())
        .field("seq", stamp.seq);
    if stamp.lane == Lane::Spike {
        agent.push("lane", stamp.lane.as_str());
    }
    agent.push("collected_at", collected_at);
    if let Some((_, Json::Object(own))) = fields.iter().find(|(k, _)| k == "agent") {
        for (k, v) in own {
            if !matches!(
                k.as_ref(),
                "version" | "host" | "seq" | "lane" | "collected_at"
            ) {
                agent.push(k.clone(), v.clone());
            }
        }
    }

    // Written field by field rather than built as one `Json` and rendered: the data (an
    // interval's activity summary is the largest) is borrowed, never cloned.
    let mut out = String::with_capacity(4096);
    out.push_str("{\"timestamp\":");
    Json::Float(collected_at).write_to(&mut out);
    out.push_str(",\"source\":");
    crate::json::write_str(payload.source.as_str(), &mut out);
    if let Some(id) = &payload.correlation_id {
        out.push_str(",\"correlation_id\":");
        crate::json::write_str(id, &mut out);
    }
    out.push_str(",\"data\":{");
    for (key, value) in fields.iter().filter(|(k, _)| k != "agent") {
        crate::json::write_str(key, &mut out);
        out.push(':');
        value.write_to(&mut out);
        out.push(',');
    }
    out.push_str("\"agent\":");
    agent.write_to(&mut out);
    out.push_str("}}");
    out
}

/// Adds `data.agent.dropped` to a stored record (output of [`render_record`]) at send time, so
/// a loss report travels with the next payload actually delivered and cannot be lost with a
/// dropped record. An empty report adds nothing; a text not ending in `}}}` is returned
/// unchanged.
pub fn with_dropped(record: &str, dropped: &DropCounts) -> String {
    if dropped.is_empty() {
        return record.to_string();
    }
    let Some(head) = record.strip_suffix("}}}") else {
        return record.to_string();
    };
    let mut out = String::with_capacity(record.len() + 256);
    out.push_str(head);
    out.push_str(",\"dropped\":");
    dropped.to_json().write_to(&mut out);
    out.push_str("}}}");
    out
}

/// The HTTP body for a stored record: `{"project":...,` followed by the stored envelope.
///
/// `record` is the output of [`render_record`] (an object that is never empty); anything else
/// is passed through unchanged so the listener's 400 reports the damage.
pub fn envelope_body(project: &str, record: &str) -> String {
    let Some(rest) = record.strip_prefix('{') else {
        return record.to_string();
    };
    let mut out = String::with_capacity(record.len() + project.len() + 16);
    out.push_str("{\"project\":");
    crate::json::write_str(project, &mut out);
    if !rest.starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(correlation_id: Option<&str>) -> Payload {
        Payload {
            source: Source::PgStatActivity,
            collected_at: 1_700_000_000.25,
            correlation_id: correlation_id.map(str::to_string),
            data: Json::object()
                .field("query", "select 1")
                .field("agent", "spoofed"),
        }
    }

    fn info() -> AgentInfo {
        AgentInfo {
            version: "1.2.3".into(),
            host: "db\"1".into(),
        }
    }

    /// `p` rendered with [`info`] and sequence number `seq`.
    fn render(p: &Payload, seq: u64) -> String {
        render_record(
            p,
            &AgentStamp {
                agent: &info(),
                seq,
                lane: Lane::of(p),
            },
        )
    }

    #[test]
    fn envelope_has_the_listener_fields_and_data_agent() {
        let record = render(&sample(Some("bitville-abc")), 9);
        let body = envelope_body("shop", &record);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["project"], "shop");
        assert_eq!(v["timestamp"].as_f64(), Some(1_700_000_000.25));
        assert_eq!(v["source"], "pg_stat_activity");
        assert_eq!(v["correlation_id"], "bitville-abc");
        assert_eq!(v["data"]["query"], "select 1");
        assert_eq!(v["data"]["agent"]["seq"], 9);
        assert_eq!(v["data"]["agent"]["host"], "db\"1");
        assert_eq!(v["data"]["agent"]["version"], "1.2.3");
        assert_eq!(
            v["data"]["agent"]["collected_at"].as_f64(),
            Some(1_700_000_000.25)
        );
        assert!(body.starts_with("{\"project\":\"shop\","));
    }

    #[test]
    fn the_record_text_is_exactly_the_envelope_with_data_agent_last() {
        let mut p = sample(Some("bitville-abc"));
        p.data = Json::object()
            .field(
                "agent",
                Json::object().field("rss_bytes", 1u64).field("seq", 7u64),
            )
            .field("query", "select \"x\"\n")
            .field("n", 2i64);
        assert_eq!(
            render(&p, 5),
            concat!(
                r#"{"timestamp":1700000000.25,"source":"pg_stat_activity","#,
                r#""correlation_id":"bitville-abc","data":{"query":"select \"x\"\n","n":2,"#,
                r#""agent":{"version":"1.2.3","host":"db\"1","seq":5,"#,
                r#""collected_at":1700000000.25,"rss_bytes":1}}}"#
            )
        );
    }

    #[test]
    fn a_collectors_agent_object_keeps_its_fields_but_not_the_stamp() {
        let mut p = sample(None);
        p.data = Json::object().field(
            "agent",
            Json::object()
                .field("rss_bytes", 123u64)
                .field("seq", 999u64),
        );
        let v: serde_json::Value =
            serde_json::from_str(&envelope_body("p", &render(&p, 4))).unwrap();
        assert_eq!(v["data"]["agent"]["rss_bytes"], 123);
        assert_eq!(v["data"]["agent"]["seq"], 4);
        assert_eq!(v["data"]["agent"]["version"], "1.2.3");
    }

    #[test]
    fn envelope_omits_a_missing_correlation_id_and_fixes_bad_inputs() {
        let mut p = sample(None);
        p.data = Json::Array(vec![]);
        p.collected_at = f64::NAN;
        let v: serde_json::Value = serde_json::from_str(&envelope_body(
            "p",
            &with_dropped(
                &render(&p, 1),
                &DropCounts {
                    records: 3,
                    ..DropCounts::default()
                },
            ),
        ))
        .unwrap();
        assert!(v.get("correlation_id").is_none());
        assert!(v["timestamp"].as_f64().unwrap() > 1_600_000_000.0);
        assert!(v["data"]["value"].is_array());
        assert_eq!(v["data"]["agent"]["dropped"]["records"], 3);
    }

    #[test]
    fn spike_reports_go_to_the_spike_lane_and_are_stamped_with_it() {
        let mut p = sample(None);
        assert_eq!(Lane::of(&p), Lane::Main);
        let v: serde_json::Value = serde_json::from_str(&render(&p, 3)).unwrap();
        assert!(v["data"]["agent"].get("lane").is_none(), "{v}");
        p.data = Json::object()
            .field("kind", "spike")
            .field("agent", Json::object().field("lane", "main"));
        assert_eq!(Lane::of(&p), Lane::Spike);
        let v: serde_json::Value = serde_json::from_str(&render(&p, 3)).unwrap();
        assert_eq!(v["data"]["agent"]["lane"], "spike");
        // Only pg_stat_activity carries spike reports.
        p.source = Source::PgLog;
        assert_eq!(Lane::of(&p), Lane::Main);
    }

    #[test]
    fn the_kind_of_a_stored_record_is_read_from_its_text() {
        let cases: [(Source, Json, RecordKind); 7] = [
            (
                Source::PgStatActivity,
                Json::object().field("n", 1u64),
                RecordKind::ActivitySummary,
            ),
            (
                Source::PgStatActivity,
                Json::object()
                    .field("x", Json::object().field("kind", "spike"))
                    .field("kind", "correlated_request"),
                RecordKind::CorrelatedRequest,
            ),
            (
                Source::PgStatActivity,
                Json::object()
                    .field(
                        "timeline",
                        Json::Array(vec![Json::from("a\"}{[,"), Json::object()]),
                    )
                    .field("kind", "spike"),
                RecordKind::Spike,
            ),
            (
                Source::PgStatActivity,
                Json::object().field("kind", 7u64),
                RecordKind::Other,
            ),
            (
                Source::PgLog,
                Json::object().field("kind", "log_correlated"),
                RecordKind::LogCorrelated,
            ),
            (
                Source::PgLog,
                Json::object().field("kind", "log_entries"),
                RecordKind::LogEntries,
            ),
            (
                Source::SystemMetrics,
                Json::object(),
                RecordKind::SystemMetrics,
            ),
        ];
        for (source, data, want) in cases {
            let p = Payload {
                source,
                collected_at: 1.0,
                correlation_id: Some("\"data\":{\"kind\":\"spike\"}".into()),
                data,
            };
            assert_eq!(RecordKind::of_payload(&p), want, "{p:?}");
            let text = render(&p, 1);
            assert_eq!(
                RecordKind::of_record(source, text.as_bytes()),
                want,
                "{text}"
            );
            // A reported record (with `dropped`) reads the same.
            let reported = with_dropped(
                &text,
                &DropCounts {
                    records: 1,
                    ..DropCounts::default()
                },
            );
            assert_eq!(RecordKind::of_record(source, reported.as_bytes()), want);
        }
        // Damaged or foreign text: never a panic, never a wrong spike.
        for bad in [
            &b""[..],
            b"{",
            b"{\"data\":",
            b"{\"data\":{\"kind\":\"spi",
            b"[1]",
            b"{\"a\"}",
            b"\xff\xfe",
        ] {
            assert_eq!(
                RecordKind::of_record(Source::PgStatActivity, bad),
                RecordKind::Other,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_drop_report_names_kinds_and_the_seq_range() {
        let mut d = DropCounts {
            records: 3,
            ..DropCounts::default()
        };
        d.by_kind[RecordKind::LogEntries as usize] = 2;
        d.by_kind[RecordKind::ActivitySummary as usize] = 1;
        d.first_seq = 10;
        d.last_seq = 12;
        let v: serde_json::Value = serde_json::from_str(&d.to_json().to_json_string()).unwrap();
        assert_eq!(v["by_kind"]["log_entries"], 2);
        assert_eq!(v["by_kind"]["activity_summary"], 1);
        assert!(v["by_kind"].get("spike").is_none());
        assert_eq!(
            (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
            (Some(10), Some(12))
        );
        let none: serde_json::Value = serde_json::from_str(
            &DropCounts {
                oversized: 1,
                ..DropCounts::default()
            }
            .to_json()
            .to_json_string(),
        )
        .unwrap();
        assert!(none.get("first_seq").is_none(), "{none}");
    }
}
