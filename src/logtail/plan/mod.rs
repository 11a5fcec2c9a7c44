//! auto_explain plans in the server log: which format a `duration: N ms  plan:` message holds,
//! the plan as it may be shipped (a JSON plan as a [`Json`] object, a text/YAML/XML plan as
//! text, every literal masked by [`crate::normalize`]), bounded in size, and the summary a DBA
//! reads first (`plan_summary`: slowest node, worst row misestimate, buffers, spills, large
//! sequential scans).
//!
//! Invariants: nothing here panics on any input (a cut or malformed JSON plan is read as far as
//! it goes); the shipped plan never exceeds the byte cap it is given (a JSON plan loses its
//! deepest nodes first and says how many in `Plans Omitted`, a text plan is cut and marked); the
//! summary holds only figures and node/relation names, never an expression.
//!
//! The pieces: `json` (the lenient JSON reader), `parse` (plan nodes from each format),
//! `summary` (`plan_summary`), `fit` (the byte cap), `store` (the shared [`PlanStore`]); this
//! module tells the formats apart and ships a plan through them.

mod fit;
mod json;
mod parse;
mod store;
mod summary;

use crate::json::Json;
use crate::normalize::{normalize_plan_json, normalize_plan_opaque, normalize_plan_text};
use fit::{cut_bytes, fit_json};

pub use fit::PLAN_TRUNCATION_MARKER;
pub use json::parse_json;
pub use parse::{json_nodes, text_nodes, Node};
pub use store::{PlanStore, StoredPlan, DEFAULT_PLAN_STORE_CAP};
pub use summary::summarize;

/// `auto_explain.log_format`, as recognised from the plan text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// `text`.
    Text,
    /// `json`.
    Json,
    /// `yaml`.
    Yaml,
    /// `xml`.
    Xml,
}

impl PlanFormat {
    /// The `log_format` word.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanFormat::Text => "text",
            PlanFormat::Json => "json",
            PlanFormat::Yaml => "yaml",
            PlanFormat::Xml => "xml",
        }
    }

    /// The format of a plan body (what follows `plan:`).
    pub fn detect(plan: &str) -> PlanFormat {
        let t = plan.trim_start();
        if t.starts_with('{') || t.starts_with('[') {
            PlanFormat::Json
        } else if t.starts_with('<') {
            PlanFormat::Xml
        } else if t.contains("\n  Node Type: ") || t.starts_with("- Plan") {
            PlanFormat::Yaml
        } else {
            PlanFormat::Text
        }
    }
}

/// A plan ready for a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ShippedPlan {
    /// Its format.
    pub format: PlanFormat,
    /// A JSON object (json) or a string (text, yaml, xml), literals masked unless `full`.
    pub plan: Json,
    /// True when the plan was cut to the byte cap (or the log entry itself was cut).
    pub truncated: bool,
    /// What a DBA reads first (figures and names only).
    pub summary: Json,
}

/// The plan of `body` as it may be shipped: normalized unless `full`, at most `max_bytes`
/// (serialized), with its summary. `duration_ms` is the statement's duration from the message.
pub fn ship(body: &str, full: bool, max_bytes: usize, duration_ms: Option<f64>) -> ShippedPlan {
    let format = PlanFormat::detect(body);
    let max_bytes = max_bytes.max(256);
    match format {
        PlanFormat::Json => {
            let (mut value, complete) = parse_json(body);
            let nodes = value.as_ref().map(json_nodes).unwrap_or_default();
            let summary = summarize(&nodes, duration_ms);
            let mut plan = value.take().unwrap_or_else(Json::object);
            if !full {
                normalize_plan_json(&mut plan);
            }
            let cut = fit_json(&mut plan, max_bytes);
            ShippedPlan {
                format,
                plan,
                truncated: cut || !complete,
                summary,
            }
        }
        _ => {
            let summary = if format == PlanFormat::Text {
                summarize(&text_nodes(body), duration_ms)
            } else {
                summarize(&[], duration_ms)
            };
            let mut text = match (full, format) {
                (true, _) => body.to_string(),
                (false, PlanFormat::Text) => normalize_plan_text(body),
                (false, _) => normalize_plan_opaque(body),
            };
            let cut = cut_bytes(&mut text, max_bytes);
            ShippedPlan {
                format,
                plan: Json::Str(text),
                truncated: cut,
                summary,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON_PLAN: &str = r#"{
  "Query Text": "SELECT * FROM t WHERE a = 'secret' ORDER BY b",
  "Plan": {
    "Node Type": "Sort",
    "Plan Rows": 100,
    "Actual Rows": 50000,
    "Actual Loops": 1,
    "Actual Total Time": 40.5,
    "Sort Method": "external merge",
    "Sort Space Used": 1234,
    "Sort Space Type": "Disk",
    "Shared Hit Blocks": 10,
    "Shared Read Blocks": 300,
    "Temp Read Blocks": 7,
    "Temp Written Blocks": 8,
    "Plans": [
      {
        "Node Type": "Seq Scan",
        "Relation Name": "t",
        "Filter": "(a = 'secret'::text)",
        "Plan Rows": 100,
        "Actual Rows": 50000,
        "Actual Loops": 1,
        "Actual Total Time": 10.25,
        "Rows Removed by Filter": 5
      }
    ]
  }
}"#;

    #[test]
    fn json_plans_travel_as_objects_without_literals_with_a_summary() {
        let p = ship(JSON_PLAN, false, 65536, Some(41.0));
        assert_eq!(p.format, PlanFormat::Json);
        assert!(!p.truncated);
        let text = p.plan.to_json_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains(r#""Node Type":"Seq Scan""#), "{text}");
        let s = p.summary.to_json_string();
        assert!(
            s.contains(r#""slowest_node":{"node":"Sort","own_ms":30.25}"#),
            "{s}"
        );
        assert!(s.contains(r#""factor":500"#), "{s}");
        assert!(s.contains(r#""spilled":true"#), "{s}");
        assert!(s.contains("external merge, 1234 kB"), "{s}");
        assert!(s.contains(r#""shared_read_blocks":300"#), "{s}");
        assert!(
            s.contains(r#""large_seq_scans":[{"relation":"t","rows":50005"#),
            "{s}"
        );
        assert!(!s.contains("secret"));
    }

    #[test]
    fn big_json_plans_lose_their_deepest_nodes_first_and_cut_ones_are_closed() {
        let p = ship(JSON_PLAN, false, 500, None);
        assert!(p.truncated);
        let text = p.plan.to_json_string();
        assert!(text.len() <= 500, "{}", text.len());
        assert!(text.contains(r#""Plans Omitted":1"#), "{text}");
        // A plan cut by the entry cap is read as far as it goes, and marked.
        let cut = &JSON_PLAN[..JSON_PLAN.find("\"Relation Name\"").unwrap() + 20];
        let p = ship(cut, false, 65536, None);
        assert!(p.truncated);
        assert!(p.plan.to_json_string().contains("\"Seq Scan\""));
        assert!(!p.plan.to_json_string().contains("secret"));
        assert!(parse_json(r#"[1, 2.5, -3, "\u00e9\ud83d\ude00", true, null]"#).1);
        assert_eq!(
            parse_json("{\"a\": [1, 2.5, -3, \"\\u00e9\\ud83d\\ude00\", true, null]}")
                .0
                .unwrap()
                .to_json_string(),
            "{\"a\":[1,2.5,-3,\"é😀\",true,null]}"
        );
        for junk in ["", "{", "{\"a", "[1,", "{\"a\":}", "\\", "{\"\\u12", "tru"] {
            let _ = parse_json(junk);
        }
    }

    const TEXT_PLAN: &str = "Query Text: SELECT * FROM t WHERE a = 'secret' ORDER BY b
Sort  (cost=10.00..10.25 rows=100 width=8) (actual time=30.000..40.500 rows=50000 loops=1)
  Sort Key: b
  Sort Method: external merge  Disk: 1234kB
  Buffers: shared hit=10 read=300, temp read=7 written=8
  ->  Seq Scan on t  (cost=0.00..5.00 rows=100 width=8) (actual time=0.010..10.250 rows=50000 loops=1)
        Filter: (a = 'secret'::text)
        Rows Removed by Filter: 5";

    #[test]
    fn text_plans_are_normalized_cut_and_summarized() {
        let p = ship(TEXT_PLAN, false, 65536, Some(41.0));
        assert_eq!(p.format, PlanFormat::Text);
        let Json::Str(text) = &p.plan else {
            panic!("text plan")
        };
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("Filter: (a = ?::text)"), "{text}");
        let s = p.summary.to_json_string();
        assert!(
            s.contains(r#""slowest_node":{"node":"Sort","own_ms":30.25}"#),
            "{s}"
        );
        assert!(s.contains("Sort: external merge  Disk: 1234kB"), "{s}");
        assert!(s.contains(r#""temp_written_blocks":8"#), "{s}");
        assert!(s.contains(r#""large_seq_scans":[{"relation":"t""#), "{s}");
        let p = ship(TEXT_PLAN, false, 256, None);
        let Json::Str(text) = &p.plan else {
            panic!("text plan")
        };
        assert!(p.truncated && text.len() <= 256 && text.ends_with(PLAN_TRUNCATION_MARKER));
        assert_eq!(PlanFormat::detect("<explain>"), PlanFormat::Xml);
        assert_eq!(
            PlanFormat::detect("Query Text: \"x\"\nPlan: \n  Node Type: \"Result\""),
            PlanFormat::Yaml
        );
    }

    #[test]
    fn nothing_panics_on_any_plan_text() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            "\\u",
            "\\ud83d",
            ":",
            ",",
            "1",
            "-2.5e3",
            "\"Plans\"",
            "\"Plan\"",
            "\"Node Type\"",
            "é",
            "関",
            "  (cost=",
            "rows=",
            "(actual ",
            "time=",
            "..",
            "loops=",
            "\n",
            "  ->  ",
            "Buffers: ",
            "shared hit=",
            "temp read=",
            "Sort Method: ",
            "Disk:",
            "Buckets: ",
            "Batches: ",
            "<",
            "Node Type: ",
            "true",
            "nul",
        ];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        for _ in 0..3000 {
            let mut t = String::new();
            for _ in 0..(x % 16) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            x = x.wrapping_add(1);
            let p = ship(&t, false, 300, Some(1.0));
            assert!(p.plan.to_json_string().len() <= 300 || matches!(p.plan, Json::Str(_)));
            let _ = ship(&t, true, 65536, None);
        }
    }
}
