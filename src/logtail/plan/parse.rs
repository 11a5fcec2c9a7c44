//! Reading auto_explain output into plan nodes, whatever the format: a parsed JSON plan's
//! objects, or a text plan's node lines and their detail lines (`Buffers:`, `Sort Method:`,
//! `Batches:`, `Rows Removed by Filter:`).
//!
//! Invariants: nothing here panics on any input; at most 10,000 nodes are read (and a JSON plan
//! is followed at most 200 levels deep); a node keeps only figures and node/relation names.

use crate::json::Json;

/// One plan node's figures, whatever the format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// `Node Type` (`Seq Scan`, `Sort`, ...).
    pub node_type: String,
    /// `Relation Name`, when it scans one.
    pub relation: Option<String>,
    /// Index of the parent node in the list.
    pub parent: Option<usize>,
    /// Estimated rows per loop.
    pub plan_rows: Option<f64>,
    /// Actual rows per loop (log_analyze).
    pub actual_rows: Option<f64>,
    /// Loops.
    pub loops: Option<f64>,
    /// Actual total time per loop, ms (log_analyze with log_timing).
    pub total_ms: Option<f64>,
    /// Rows removed by the filter.
    pub rows_removed: Option<f64>,
    /// Shared blocks hit / read, temp blocks read / written (log_buffers; cumulative).
    pub buffers: [Option<u64>; 4],
    /// How it spilled to disk (`Sort: external merge, 1234 kB`), if it did.
    pub spill: Option<String>,
}

/// The nodes of a parsed JSON plan (`[{"Plan": ...}]` or `{"Plan": ...}`), depth first.
pub fn json_nodes(v: &Json) -> Vec<Node> {
    fn num(o: &Json, k: &str) -> Option<f64> {
        match o.get(k)? {
            Json::UInt(u) => Some(*u as f64),
            Json::Int(i) => Some(*i as f64),
            Json::Float(f) => Some(*f),
            _ => None,
        }
    }
    fn text(o: &Json, k: &str) -> Option<String> {
        match o.get(k)? {
            Json::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn walk(o: &Json, parent: Option<usize>, out: &mut Vec<Node>, depth: usize) {
        if depth > 200 || out.len() > 10_000 {
            return;
        }
        let u = |k: &str| num(o, k).map(|f| f as u64);
        let node_type = text(o, "Node Type").unwrap_or_default();
        let mut spill = None;
        if text(o, "Sort Space Type").as_deref() == Some("Disk") {
            spill = Some(format!(
                "{}: {}, {} kB",
                node_type,
                text(o, "Sort Method").unwrap_or_default(),
                num(o, "Sort Space Used").unwrap_or(0.0)
            ));
        } else if num(o, "Hash Batches").is_some_and(|b| b > 1.0) {
            spill = Some(format!(
                "Hash: {} batches",
                num(o, "Hash Batches").unwrap_or(0.0)
            ));
        }
        out.push(Node {
            relation: text(o, "Relation Name"),
            parent,
            plan_rows: num(o, "Plan Rows"),
            actual_rows: num(o, "Actual Rows"),
            loops: num(o, "Actual Loops"),
            total_ms: num(o, "Actual Total Time"),
            rows_removed: num(o, "Rows Removed by Filter"),
            buffers: [
                u("Shared Hit Blocks"),
                u("Shared Read Blocks"),
                u("Temp Read Blocks"),
                u("Temp Written Blocks"),
            ],
            spill,
            node_type,
        });
        let me = out.len() - 1;
        if let Some(Json::Array(children)) = o.get("Plans") {
            for c in children {
                walk(c, Some(me), out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    let roots: Vec<&Json> = match v {
        Json::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for r in roots {
        if let Some(p) = r.get("Plan") {
            walk(p, None, &mut out, 0);
        }
    }
    out
}

/// The nodes of a text plan, parsed from its node lines (`->  Sort  (cost=.. rows=N ..)
/// (actual time=a..b rows=N loops=L)`) and their `Buffers:`, `Sort Method:`, `Batches:` and
/// `Rows Removed by Filter:` lines.
pub fn text_nodes(plan: &str) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for line in plan.lines() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let (body, indent) = match body.strip_prefix("->") {
            Some(rest) => (rest.trim_start(), indent + 1),
            None => (body, indent),
        };
        if let Some(at) = body.find("  (cost=").or_else(|| body.find("  (actual ")) {
            if out.len() >= 10_000 {
                break;
            }
            let head = &body[..at];
            let figures = &body[at..];
            let node_type = head
                .split(" on ")
                .next()
                .unwrap_or(head)
                .split(" using ")
                .next()
                .unwrap_or(head)
                .trim()
                .to_string();
            let relation = head
                .split(" on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string);
            let (cost, actual) = match figures.find("(actual ") {
                Some(a) => (&figures[..a], Some(&figures[a..])),
                None => (figures, None),
            };
            while stack.last().is_some_and(|&(d, _)| d >= indent) {
                stack.pop();
            }
            let parent = stack.last().map(|&(_, i)| i);
            out.push(Node {
                node_type,
                relation,
                parent,
                plan_rows: figure(cost, "rows="),
                actual_rows: actual.and_then(|a| figure(a, "rows=")),
                loops: actual.and_then(|a| figure(a, "loops=")),
                total_ms: actual
                    .and_then(|a| a.split("time=").nth(1))
                    .and_then(|t| t.split("..").nth(1))
                    .and_then(figure_at_start),
                ..Node::default()
            });
            stack.push((indent, out.len() - 1));
            continue;
        }
        let Some(node) = out.last_mut() else { continue };
        if let Some(v) = body.strip_prefix("Rows Removed by Filter: ") {
            node.rows_removed = figure_at_start(v);
        } else if let Some(v) = body.strip_prefix("Buffers: ") {
            for part in v.split(',') {
                let part = part.trim();
                let kind = if part.starts_with("shared") {
                    0
                } else if part.starts_with("temp") {
                    2
                } else {
                    continue;
                };
                if kind == 0 {
                    node.buffers[0] = figure(part, "hit=").map(|f| f as u64);
                    node.buffers[1] = figure(part, "read=").map(|f| f as u64);
                } else {
                    node.buffers[2] = figure(part, "read=").map(|f| f as u64);
                    node.buffers[3] = figure(part, "written=").map(|f| f as u64);
                }
            }
        } else if let Some(v) = body.strip_prefix("Sort Method: ") {
            if v.contains("Disk:") {
                node.spill = Some(format!("{}: {}", node.node_type, v.trim()));
            }
        } else if let Some(v) = body.strip_prefix("Buckets: ") {
            if let Some(b) = v.split("Batches: ").nth(1).and_then(figure_at_start) {
                if b > 1.0 {
                    node.spill = Some(format!("Hash: {b} batches"));
                }
            }
        }
    }
    out
}

fn figure(s: &str, key: &str) -> Option<f64> {
    figure_at_start(&s[s.find(key)? + key.len()..])
}

fn figure_at_start(s: &str) -> Option<f64> {
    let end = s
        .bytes()
        .position(|c| !(c.is_ascii_digit() || c == b'.'))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}
