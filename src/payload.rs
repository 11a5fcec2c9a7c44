//! What a collector hands to the spool: one listener payload before it gets its envelope.
//!
//! Collectors build `data` as a [`Json`] object and never add `data.agent` themselves: the
//! delivery path stamps it (version, host, sequence number, collected_at) when the payload is
//! appended to the spool, so the sequence number is assigned in exactly one place.

use crate::json::Json;

/// The four sources the listener accepts; any other is rejected with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Sessions, the lock wait tree and per-query OS figures.
    PgStatActivity,
    /// Per-interval deltas of pg_stat_statements.
    PgStatStatements,
    /// Parsed server log entries.
    PgLog,
    /// Host figures, server health and the agent's own cost.
    SystemMetrics,
}

impl Source {
    /// Every source, in a fixed order.
    pub const ALL: [Source; 4] = [
        Source::PgStatActivity,
        Source::PgStatStatements,
        Source::PgLog,
        Source::SystemMetrics,
    ];

    /// The exact string the listener expects in `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::PgStatActivity => "pg_stat_activity",
            Source::PgStatStatements => "pg_stat_statements",
            Source::PgLog => "pg_log",
            Source::SystemMetrics => "system_metrics",
        }
    }

    /// The source named `name`, if the listener accepts it.
    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One payload as a collector produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Which listener source this payload is sent as.
    pub source: Source,
    /// When the data was collected, in unix seconds (becomes the envelope's `timestamp`).
    pub collected_at: f64,
    /// The request this payload belongs to (`bitville-<uuid>` application names); sent as the
    /// top-level `correlation_id` so the listener links it to the PHP request.
    pub correlation_id: Option<String>,
    /// The `data` object (must be a [`Json::Object`]).
    pub data: Json,
}

/// The current time in unix seconds, as the envelope's `timestamp` wants it.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Who stamps the payloads: the `version` and `host` of `data.agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's version (the crate version).
    pub version: String,
    /// The host name the agent runs on.
    pub host: String,
}

impl AgentInfo {
    /// This build's version and the kernel's host name (`unknown` when it cannot be read).
    pub fn current() -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: hostname().unwrap_or_else(|| "unknown".to_string()),
        }
    }
}

fn hostname() -> Option<String> {
    let buf = crate::sys::hostname().ok()?;
    let name = String::from_utf8_lossy(&buf).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// What the spool stamps into `data.agent` when a payload is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStamp<'a> {
    /// Version and host.
    pub agent: &'a AgentInfo,
    /// The payload's sequence number: +1 per payload, never reused, survives restarts.
    pub seq: u64,
}

/// The longest `project` the listener accepts, in characters.
pub const PROJECT_MAX_CHARS: usize = 50;

/// Checks `project` against the listener's rule (1 to 50 characters).
pub fn check_project(project: &str) -> Result<(), String> {
    let n = project.chars().count();
    if n == 0 || n > PROJECT_MAX_CHARS {
        return Err(format!(
            "project must be 1 to {PROJECT_MAX_CHARS} characters, got {n}"
        ));
    }
    Ok(())
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
/// dropped record. A text not ending in `}}}` is returned unchanged.
pub fn with_dropped(record: &str, dropped: &Json) -> String {
    let Some(head) = record.strip_suffix("}}}") else {
        return record.to_string();
    };
    let mut out = String::with_capacity(record.len() + 256);
    out.push_str(head);
    out.push_str(",\"dropped\":");
    dropped.write_to(&mut out);
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

    #[test]
    fn source_names_round_trip_and_reject_others() {
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        assert_eq!(Source::parse("pg_locks"), None);
    }

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

    #[test]
    fn envelope_has_the_listener_fields_and_data_agent() {
        let info = info();
        let stamp = AgentStamp {
            agent: &info,
            seq: 9,
        };
        let record = render_record(&sample(Some("bitville-abc")), &stamp);
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
        let info = info();
        let stamp = AgentStamp {
            agent: &info,
            seq: 4,
        };
        let mut p = sample(None);
        p.data = Json::object().field(
            "agent",
            Json::object()
                .field("rss_bytes", 123u64)
                .field("seq", 999u64),
        );
        let v: serde_json::Value =
            serde_json::from_str(&envelope_body("p", &render_record(&p, &stamp))).unwrap();
        assert_eq!(v["data"]["agent"]["rss_bytes"], 123);
        assert_eq!(v["data"]["agent"]["seq"], 4);
        assert_eq!(v["data"]["agent"]["version"], "1.2.3");
    }

    #[test]
    fn envelope_omits_a_missing_correlation_id_and_fixes_bad_inputs() {
        let info = info();
        let stamp = AgentStamp {
            agent: &info,
            seq: 1,
        };
        let mut p = sample(None);
        p.data = Json::Array(vec![]);
        p.collected_at = f64::NAN;
        let v: serde_json::Value = serde_json::from_str(&envelope_body(
            "p",
            &with_dropped(
                &render_record(&p, &stamp),
                &Json::object().field("records", 3u64),
            ),
        ))
        .unwrap();
        assert!(v.get("correlation_id").is_none());
        assert!(v["timestamp"].as_f64().unwrap() > 1_600_000_000.0);
        assert!(v["data"]["value"].is_array());
        assert_eq!(v["data"]["agent"]["dropped"]["records"], 3);
    }

    #[test]
    fn project_rule_counts_characters() {
        assert!(check_project("").is_err());
        assert!(check_project(&"é".repeat(50)).is_ok());
        assert!(check_project(&"x".repeat(51)).is_err());
    }
}
