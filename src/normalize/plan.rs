//! Normalizing auto_explain plans: text, JSON, and YAML/XML (normalized whole).
//!
//! Invariants: a plan keeps its structure, node names and figures and loses every literal;
//! anything of unknown shape is normalized as SQL.

use super::sql::{normalize_with, sql_line_end, Dq};
use super::{normalize, normalize_into, rewrite_lines};

/// Properties of a text plan whose values are figures or keywords, never expressions: kept as
/// they are (when they hold no quote). Every other property (`Filter`, `Index Cond`, `Output`,
/// `Sort Key`, ...) is normalized as SQL.
pub const PLAN_FIGURE_KEYS: &[&str] = &[
    "Rows Removed by Filter",
    "Rows Removed by Index Recheck",
    "Rows Removed by Join Filter",
    "Rows Removed by Conflict Filter",
    "Heap Fetches",
    "Heap Blocks",
    "Buffers",
    "Planning",
    "Execution",
    "I/O Timings",
    "Sort Method",
    "Planning Time",
    "Execution Time",
    "Batches",
    "Buckets",
    "Memory Usage",
    "Peak Memory Usage",
    "Disk Usage",
    "Workers Planned",
    "Workers Launched",
    "JIT",
    "Functions",
    "Options",
    "Timing",
    "Full-sort Groups",
    "Pre-sorted Groups",
    "Hits",
    "WAL",
    "Storage",
    "Tuples Inserted",
    "Conflicting Tuples",
    "Conflict Resolution",
    "Conflict Arbiter Indexes",
    "Index Searches",
    "Window",
];

/// A text-format plan (auto_explain `log_format = text`) with every literal masked: node lines
/// and figure properties stay, `Query Text` and every expression property (`Filter`, `Index
/// Cond`, `Recheck Cond`, `Hash Cond`, `Join Filter`, `One-Time Filter`, `Output`, parameters)
/// are normalized as SQL, and so is any line of unknown shape.
pub fn normalize_plan_text(plan: &str) -> String {
    let mut in_query = false;
    // A literal or comment may run over a line break: such a line ends where it closes.
    rewrite_lines(
        plan,
        |rest| sql_line_end(rest, 0),
        |line, _, out| {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            let (arrow, body) = match body.strip_prefix("->") {
                Some(rest) => {
                    let rest = rest.trim_start();
                    (&body[..body.len() - rest.len()], rest)
                }
                None => ("", body),
            };
            out.push_str(indent);
            out.push_str(arrow);
            if let Some(rest) = body.strip_prefix("Query Text:") {
                out.push_str("Query Text:");
                normalize_into(rest, out);
                in_query = true;
                return line.len();
            }
            let node_at = body.find("  (cost=").or_else(|| body.find("  (actual "));
            if in_query && node_at.is_none() {
                // The query text runs over several lines until the first plan node.
                normalize_into(body, out);
                return line.len();
            }
            in_query = false;
            if let Some(at) = node_at {
                let (head, figures) = body.split_at(at);
                normalize_into(head, out);
                if figures.bytes().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, b' ' | b'(' | b')' | b'=' | b'.' | b'_')
                }) {
                    out.push_str(figures);
                } else {
                    normalize_into(figures, out);
                }
                return line.len();
            }
            if let Some((key, value)) = body.split_once(": ").or_else(|| body.split_once(':')) {
                let figure = PLAN_FIGURE_KEYS.contains(&key)
                    || key.starts_with("Worker ")
                    || key.starts_with("Trigger ");
                if figure && !value.contains(['\'', '"', '$']) {
                    out.push_str(body);
                } else {
                    out.push_str(&body[..key.len()]);
                    normalize_into(&body[key.len()..], out);
                }
                return line.len();
            }
            normalize_into(body, out);
            line.len()
        },
    )
}

/// Keys of a JSON plan whose string values are names or keywords, never expressions: kept. Every
/// other string (`Query Text`, `Filter`, `Index Cond`, `Output`, `Sort Key`, ...) is normalized.
pub const PLAN_NAME_KEYS: &[&str] = &[
    "Node Type",
    "Parent Relationship",
    "Relation Name",
    "Schema",
    "Alias",
    "Index Name",
    "Join Type",
    "Strategy",
    "Partial Mode",
    "Scan Direction",
    "Sort Method",
    "Sort Space Type",
    "Sort Methods Used",
    "Operation",
    "Subplan Name",
    "CTE Name",
    "Function Name",
    "Tuplestore Name",
    "Table Function Name",
    "Trigger Name",
    "Constraint Name",
    "Relation",
    "Custom Plan Provider",
    "Conflict Resolution",
    "Conflict Arbiter Indexes",
    "Storage",
    "Command",
];

/// A JSON plan (auto_explain `log_format = json`, parsed) with every literal-bearing string
/// normalized in place: numbers and booleans stay, strings under [`PLAN_NAME_KEYS`] stay, every
/// other string is normalized as SQL, and a key that is not a plain property name is masked.
pub fn normalize_plan_json(plan: &mut crate::json::Json) {
    use crate::json::Json;
    fn walk(v: &mut Json, keep: bool) {
        match v {
            Json::Str(s) if !keep => *s = normalize(s),
            Json::Array(items) => items.iter_mut().for_each(|i| walk(i, keep)),
            Json::Object(fields) => {
                for (k, val) in fields.iter_mut() {
                    if !k
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b" -_/".contains(&c))
                    {
                        *k = "?".into();
                    }
                    walk(val, PLAN_NAME_KEYS.contains(&k.as_ref()));
                }
            }
            _ => {}
        }
    }
    walk(plan, false);
}

/// A YAML or XML plan (or any text of unknown structure) normalized as SQL whose double quotes
/// are ordinary characters, after decoding XML's entities (so `&apos;x&apos;` is a literal too).
/// Figures are masked as well: only the text's shape survives.
pub fn normalize_plan_opaque(plan: &str) -> String {
    let decoded;
    let text = if plan.contains('&') {
        decoded = plan
            .replace("&apos;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        decoded.as_str()
    } else {
        plan
    };
    let mut out = String::with_capacity(text.len());
    normalize_with(text, &mut out, Dq::Plain);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_plans_keep_figures_and_lose_literals() {
        let plan = "Query Text: SELECT * FROM users WHERE email = 'secret@example.com'\n\
                    \u{20}  AND id > 424242\n\
                    Index Scan using users_email_key on users  (cost=0.29..8.31 rows=1 width=40) (actual time=0.010..0.011 rows=0 loops=1)\n\
                    \u{20} Index Cond: (email = 'secret@example.com'::text)\n\
                    \u{20} Filter: (id > 424242)\n\
                    \u{20} Rows Removed by Filter: 3\n\
                    \u{20} Buffers: shared hit=4 read=2\n\
                    \u{20} ->  Seq Scan on t2  (cost=0.00..1.00 rows=10 width=4)\n\
                    \u{20}       One-Time Filter: ($1 = 'x{\"a\":\"secret\"}'::jsonb)\n\
                    \u{20}       Join Filter: (t2.v = ANY ('{1,2}'::integer[]))";
        let n = normalize_plan_text(plan);
        for secret in ["secret", "424242", "'{1,2}'"] {
            assert!(!n.contains(secret), "{secret} in {n}");
        }
        assert!(n.contains("Index Scan using users_email_key on users  (cost=0.29..8.31 rows=1 width=40) (actual time=0.010..0.011 rows=0 loops=1)"), "{n}");
        assert!(n.contains("Index Cond: (email = ?::text)"), "{n}");
        assert!(n.contains("Rows Removed by Filter: 3"), "{n}");
        assert!(n.contains("Buffers: shared hit=4 read=2"), "{n}");
        assert!(
            n.contains("  ->  Seq Scan on t2  (cost=0.00..1.00 rows=10 width=4)"),
            "{n}"
        );
        assert!(
            n.starts_with("Query Text: SELECT * FROM users WHERE email = ?\n   AND id > ?"),
            "{n}"
        );
    }

    #[test]
    fn json_plans_keep_names_and_numbers_and_lose_literals() {
        use crate::json::Json;
        let mut plan = Json::object()
            .field("Query Text", "SELECT * FROM t WHERE a = 'secret'")
            .field(
                "Plan",
                Json::object()
                    .field("Node Type", "Seq Scan")
                    .field("Relation Name", "t")
                    .field("Filter", "(a = 'secret'::text)")
                    .field(
                        "Output",
                        vec![Json::from("a"), Json::from("'secret'::text")],
                    )
                    .field("Actual Rows", 5u64)
                    .field("secret 'x'", 1u64),
            );
        normalize_plan_json(&mut plan);
        let text = plan.to_json_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains(r#""Node Type":"Seq Scan""#), "{text}");
        assert!(text.contains(r#""Filter":"(a = ?::text)""#), "{text}");
        assert!(text.contains(r#""Actual Rows":5"#), "{text}");
    }

    #[test]
    fn text_plans_mask_literals_and_comments_that_run_over_a_line_break() {
        let plan = "Query Text: SELECT * FROM t /* a\nsecret comment */ WHERE note = 'first\nsecret words' AND id = 1\n\
                    Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n\
                    \u{20} Filter: (note = 'a\nhidden: words'::text)\n\
                    \u{20} Rows Removed by Filter: 3";
        let n = normalize_plan_text(plan);
        for secret in ["secret", "words", "hidden"] {
            assert!(!n.contains(secret), "{secret} in {n}");
        }
        assert!(
            n.contains("WHERE note = ? AND id = ?\nSeq Scan on t  (cost="),
            "{n}"
        );
        assert!(
            n.contains("  Filter: (note = ?::text)\n  Rows Removed by Filter: 3"),
            "{n}"
        );
    }

    #[test]
    fn yaml_and_xml_plans_are_normalized_whole() {
        let yaml = "Query Text: \"SELECT 'secret', 424242\"\nPlan: \n  Node Type: \"Result\"\n  Filter: \"(a = 'secret'::text)\"";
        let n = normalize_plan_opaque(yaml);
        assert!(!n.contains("secret") && !n.contains("424242"), "{n}");
        assert!(n.contains("Node Type: \"Result\""), "{n}");
        let xml = "<Query-Text>SELECT &apos;secret&apos;, &quot;c&quot;</Query-Text>";
        let n = normalize_plan_opaque(xml);
        assert!(!n.contains("secret"), "{n}");
    }
}
