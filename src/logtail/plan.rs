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

use crate::json::Json;
use crate::normalize::{normalize_plan_json, normalize_plan_opaque, normalize_plan_text};

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

/// Marker appended to a cut text plan.
pub const PLAN_TRUNCATION_MARKER: &str = "\n...[plan truncated]";

fn cut_bytes(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut cut = max.saturating_sub(PLAN_TRUNCATION_MARKER.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(PLAN_TRUNCATION_MARKER);
    true
}

/// Shrinks a JSON plan until it serializes within `max` bytes: the deepest `Plans` go first
/// (replaced by `"Plans Omitted": n`), then long strings are cut. True when anything went.
fn fit_json(plan: &mut Json, max: usize) -> bool {
    let mut cut = false;
    for _ in 0..64 {
        if plan.to_json_string().len() <= max {
            return cut;
        }
        cut = true;
        let depth = plans_depth(plan);
        if depth == 0 || !drop_plans_at(plan, depth, 1) {
            break;
        }
    }
    // Still too big (a huge query text): cut every string to a share of the cap.
    let mut limit = max / 4;
    while plan.to_json_string().len() > max && limit > 8 {
        cut_strings(plan, limit);
        limit /= 2;
    }
    if plan.to_json_string().len() > max {
        *plan = Json::object().field("Plan Omitted", true);
    }
    cut
}

fn plans_depth(v: &Json) -> usize {
    match v {
        Json::Object(fields) => fields
            .iter()
            .map(|(k, v)| {
                let d = plans_depth(v);
                if k == "Plans" {
                    d + 1
                } else {
                    d
                }
            })
            .max()
            .unwrap_or(0),
        Json::Array(items) => items.iter().map(plans_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Replaces the `Plans` arrays found at nesting level `depth` (1 = the outermost) by a count.
fn drop_plans_at(v: &mut Json, depth: usize, level: usize) -> bool {
    let mut dropped = false;
    match v {
        Json::Object(fields) => {
            for (k, val) in fields.iter_mut() {
                if k == "Plans" {
                    if level == depth {
                        let n = match val {
                            Json::Array(a) => a.len(),
                            _ => 1,
                        };
                        *k = "Plans Omitted".to_string();
                        *val = Json::UInt(n as u64);
                        dropped = true;
                    } else {
                        dropped |= drop_plans_at(val, depth, level + 1);
                    }
                } else {
                    dropped |= drop_plans_at(val, depth, level);
                }
            }
        }
        Json::Array(items) => {
            for i in items.iter_mut() {
                dropped |= drop_plans_at(i, depth, level);
            }
        }
        _ => {}
    }
    dropped
}

fn cut_strings(v: &mut Json, limit: usize) {
    match v {
        Json::Str(s) if s.len() > limit => {
            cut_bytes(s, limit.max(PLAN_TRUNCATION_MARKER.len() + 1));
        }
        Json::Object(fields) => fields.iter_mut().for_each(|(_, v)| cut_strings(v, limit)),
        Json::Array(items) => items.iter_mut().for_each(|v| cut_strings(v, limit)),
        _ => {}
    }
}

/// Parses JSON text into a [`Json`] value, leniently: a document cut short is closed where it
/// stops (a partial string or number is dropped). Returns the value and whether the document
/// was complete. Nesting deeper than 256 is not followed.
pub fn parse_json(text: &str) -> (Option<Json>, bool) {
    let mut p = JsonParser {
        b: text.as_bytes(),
        i: 0,
        complete: true,
    };
    let v = p.value(0);
    (v, p.complete)
}

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
    complete: bool,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        self.ws();
        if depth > 256 {
            self.complete = false;
            return None;
        }
        let Some(&c) = self.b.get(self.i) else {
            self.complete = false;
            return None;
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        None => {
                            self.complete = false;
                            break;
                        }
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        Some(b'"') => {}
                        Some(_) => {
                            self.complete = false;
                            break;
                        }
                    }
                    let Some(key) = self.string() else { break };
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        self.complete = false;
                        break;
                    }
                    self.i += 1;
                    match self.value(depth + 1) {
                        Some(v) => fields.push((key, v)),
                        None => break,
                    }
                }
                Some(Json::Object(fields))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        None => {
                            self.complete = false;
                            break;
                        }
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        Some(_) => {}
                    }
                    match self.value(depth + 1) {
                        Some(v) => items.push(v),
                        None => break,
                    }
                }
                Some(Json::Array(items))
            }
            b'"' => self.string().map(Json::Str),
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.i..];
                let (v, len) = if rest.starts_with(b"true") {
                    (Json::Bool(true), 4)
                } else if rest.starts_with(b"false") {
                    (Json::Bool(false), 5)
                } else if rest.starts_with(b"null") {
                    (Json::Null, 4)
                } else {
                    self.complete = false;
                    return None;
                };
                self.i += len;
                Some(v)
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
                    )
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i]).ok()?;
                if self.i >= self.b.len() {
                    // A number at the very end may be cut.
                    self.complete = false;
                    return None;
                }
                let v = if let Ok(u) = s.parse::<u64>() {
                    Json::UInt(u)
                } else if let Ok(n) = s.parse::<i64>() {
                    Json::Int(n)
                } else if let Ok(f) = s.parse::<f64>() {
                    Json::Float(f)
                } else {
                    self.complete = false;
                    return None;
                };
                Some(v)
            }
        }
    }

    /// A string starting at the current `"`; `None` (incomplete) when it never closes.
    fn string(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        while self.i < self.b.len() {
            let c = self.b[self.i];
            match c {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    let e = *self.b.get(self.i + 1)?;
                    self.i += 2;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = |p: &Self, at: usize| -> Option<u32> {
                                let h = p.b.get(at..at + 4)?;
                                u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            };
                            let mut cp = hex(self, self.i)?;
                            self.i += 4;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.b.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                if let Some(lo) = hex(self, self.i + 2) {
                                    if (0xDC00..0xE000).contains(&lo) {
                                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                        self.i += 6;
                                    }
                                }
                            }
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        self.complete = false;
        None
    }
}

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

/// Sequential scans touching at least this many rows are worth a look.
const LARGE_SEQ_SCAN_ROWS: f64 = 10_000.0;

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

/// `plan_summary`: total time, slowest node (by its own time), worst rows misestimate, buffers
/// of the whole plan, spills, sequential scans over large tables. Figures and names only.
pub fn summarize(nodes: &[Node], duration_ms: Option<f64>) -> Json {
    let mut s = Json::object();
    if let Some(d) = duration_ms {
        s.push("total_ms", Json::Float(d));
    }
    s.push("nodes", nodes.len());
    let name = |n: &Node| match &n.relation {
        Some(r) => format!("{} on {r}", n.node_type),
        None => n.node_type.clone(),
    };
    // Own time: the node's total (per loop × loops) minus its children's.
    let inclusive: Vec<Option<f64>> = nodes
        .iter()
        .map(|n| n.total_ms.map(|t| t * n.loops.unwrap_or(1.0)))
        .collect();
    let mut own = inclusive.clone();
    for (i, n) in nodes.iter().enumerate() {
        if let (Some(p), Some(c)) = (n.parent, inclusive[i]) {
            if let Some(o) = own.get_mut(p).and_then(Option::as_mut) {
                *o -= c;
            }
        }
    }
    if let Some((i, t)) = own
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t.max(0.0))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        s.push(
            "slowest_node",
            Json::object()
                .field("node", name(&nodes[i]))
                .field("own_ms", Json::Float((t * 1000.0).round() / 1000.0)),
        );
    }
    let worst = nodes
        .iter()
        .filter_map(|n| {
            let (p, a) = (n.plan_rows?, n.actual_rows?);
            let factor = (a.max(1.0) / p.max(1.0)).max(p.max(1.0) / a.max(1.0));
            Some((n, p, a, factor))
        })
        .max_by(|a, b| a.3.total_cmp(&b.3));
    if let Some((n, p, a, factor)) = worst {
        s.push(
            "worst_misestimate",
            Json::object()
                .field("node", name(n))
                .field("estimated_rows", Json::Float(p))
                .field("actual_rows", Json::Float(a))
                .field("factor", Json::Float((factor * 10.0).round() / 10.0)),
        );
    }
    // Buffers are cumulative: the top node's are the plan's.
    if let Some(top) = nodes.first() {
        let keys = [
            "shared_hit_blocks",
            "shared_read_blocks",
            "temp_read_blocks",
            "temp_written_blocks",
        ];
        let mut b = Json::object();
        for (k, v) in keys.iter().zip(top.buffers) {
            if let Some(v) = v {
                b.push(k, v);
            }
        }
        if matches!(&b, Json::Object(f) if !f.is_empty()) {
            s.push("buffers", b);
        }
    }
    let spills: Vec<Json> = nodes
        .iter()
        .filter_map(|n| n.spill.as_deref().map(Json::from))
        .collect();
    s.push("spilled", !spills.is_empty());
    if !spills.is_empty() {
        s.push("spills", spills);
    }
    let large: Vec<Json> = nodes
        .iter()
        .filter(|n| n.node_type.ends_with("Seq Scan"))
        .filter_map(|n| {
            let rows = match n.actual_rows {
                Some(a) => a * n.loops.unwrap_or(1.0) + n.rows_removed.unwrap_or(0.0),
                None => n.plan_rows?,
            };
            (rows >= LARGE_SEQ_SCAN_ROWS).then(|| {
                Json::object()
                    .field("relation", n.relation.clone())
                    .field("rows", Json::Float(rows))
            })
        })
        .collect();
    if !large.is_empty() {
        s.push("large_seq_scans", large);
    }
    s
}

/// The latest plan of one `query_id`, as the log tailer saw it (already normalized per the
/// agent's `query_text`, cut to `plan_max_bytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The statement's `query_id` (`%Q`, csv/json `query_id`; PG14+ with `compute_query_id`).
    pub query_id: i64,
    /// When the plan was logged (unix seconds; the entry's timestamp, else when it was read).
    pub at: f64,
    /// The plan as shipped (`Json::Null` when `query_text = none`).
    pub plan: Json,
    /// Its format.
    pub format: PlanFormat,
    /// True when it was cut.
    pub truncated: bool,
    /// Its `plan_summary`.
    pub summary: Json,
}

/// Most query_ids a [`PlanStore`] holds by default (each plan at most `plan_max_bytes`).
pub const DEFAULT_PLAN_STORE_CAP: usize = 100;

/// A small store, shared between the log thread (which records) and the statements collector
/// (which takes the latest plan per `query_id` each interval). Cloning shares it. Bounded: at
/// most `cap` query_ids; a new one beyond that evicts the oldest plan.
#[derive(Debug, Clone)]
pub struct PlanStore {
    inner: std::sync::Arc<std::sync::Mutex<Vec<StoredPlan>>>,
    cap: usize,
}

impl Default for PlanStore {
    fn default() -> PlanStore {
        PlanStore::new(DEFAULT_PLAN_STORE_CAP)
    }
}

impl PlanStore {
    /// An empty store of at most `cap` query_ids (at least 1).
    pub fn new(cap: usize) -> PlanStore {
        PlanStore {
            inner: Default::default(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StoredPlan>> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `p` as the latest plan of its query_id (replacing an older one).
    pub fn record(&self, p: StoredPlan) {
        let mut v = self.lock();
        if let Some(old) = v.iter_mut().find(|o| o.query_id == p.query_id) {
            if p.at >= old.at {
                *old = p;
            }
            return;
        }
        if v.len() >= self.cap {
            if let Some(oldest) = v
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.at.total_cmp(&b.1.at))
                .map(|(i, _)| i)
            {
                v.swap_remove(oldest);
            }
        }
        v.push(p);
    }

    /// The latest plan of `query_id`, if one was recorded since the last [`PlanStore::take`].
    pub fn latest(&self, query_id: i64) -> Option<StoredPlan> {
        self.lock().iter().find(|p| p.query_id == query_id).cloned()
    }

    /// Takes every plan recorded since the last call (the interval's latest per query_id).
    pub fn take(&self) -> Vec<StoredPlan> {
        std::mem::take(&mut *self.lock())
    }

    /// How many query_ids have a plan now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no plan is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn the_store_keeps_the_latest_plan_per_query_id_within_its_cap() {
        let store = PlanStore::new(2);
        let p = |q: i64, at: f64| StoredPlan {
            query_id: q,
            at,
            plan: Json::Null,
            format: PlanFormat::Json,
            truncated: false,
            summary: Json::object(),
        };
        let shared = store.clone();
        shared.record(p(1, 10.0));
        shared.record(p(1, 12.0));
        shared.record(p(1, 11.0));
        assert_eq!(store.latest(1).map(|s| s.at), Some(12.0));
        shared.record(p(2, 13.0));
        shared.record(p(3, 14.0));
        assert_eq!(store.len(), 2);
        assert_eq!(store.latest(1), None, "the oldest went");
        let taken = store.take();
        assert_eq!(taken.len(), 2);
        assert!(store.is_empty());
    }

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
