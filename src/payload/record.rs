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
//! `data.agent` fields are kept, but never its version, host, seq or collected_at.

use crate::json::Json;

use super::{unix_now, AgentInfo, Payload, Source};

/// What the spool stamps into `data.agent` when a payload is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStamp<'a> {
    /// Version and host.
    pub agent: &'a AgentInfo,
    /// The payload's sequence number: +1 per payload, never reused, survives restarts.
    pub seq: u64,
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
        Json::object()
            .field("records", self.records)
            .field("bytes", self.bytes)
            .field("by_source", by_source)
            .field("write_errors", self.write_errors)
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
    let mut fields = match &payload.data {
        Json::Object(fields) => fields.clone(),
        other => {
            log::error!(
                "{} payload data is not an object; wrapped as data.value",
                payload.source.as_str()
            );
            vec![("value".to_string(), other.clone())]
        }
    };
    // The stamp is the delivery path's alone: a collector's `data.agent` (the agent's own cost
    // in system_metrics) keeps its other fields, but never its own version, host, seq or
    // collected_at.
    let mut agent = Json::object()
        .field("version", stamp.agent.version.as_str())
        .field("host", stamp.agent.host.as_str())
        .field("seq", stamp.seq)
        .field("collected_at", collected_at);
    if let Some(pos) = fields.iter().position(|(k, _)| k == "agent") {
        if let (_, Json::Object(own)) = fields.remove(pos) {
            for (k, v) in own {
                if !matches!(k.as_str(), "version" | "host" | "seq" | "collected_at") {
                    agent.push(&k, v);
                }
            }
        }
    }
    fields.retain(|(k, _)| k != "agent");
    fields.push(("agent".to_string(), agent));

    let mut envelope = Json::object()
        .field("timestamp", collected_at)
        .field("source", payload.source.as_str());
    if let Some(id) = &payload.correlation_id {
        envelope.push("correlation_id", id.as_str());
    }
    envelope.push("data", Json::Object(fields));
    envelope.to_json_string()
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
}
