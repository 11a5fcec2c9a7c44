//! `plan_summary`, what a DBA reads first: total time, slowest node by its own time, worst row
//! misestimate, the plan's buffers, spills, sequential scans over large tables.
//!
//! Invariant: the summary holds only figures and node/relation names, never an expression.

use super::parse::Node;
use crate::json::Json;

/// Sequential scans touching at least this many rows are worth a look.
const LARGE_SEQ_SCAN_ROWS: f64 = 10_000.0;

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
                b.push(*k, v);
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
