//! Bounding a plan to its byte cap: a JSON plan loses its deepest `Plans` first (replaced by
//! `"Plans Omitted": n`), then its long strings are cut; a text plan is cut and marked.
//!
//! Invariant: what leaves here never serializes above the cap it was given (a JSON plan that
//! cannot be made to fit becomes `{"Plan Omitted": true}`), and a cut never splits a character.

use crate::json::Json;

/// Marker appended to a cut text plan.
pub const PLAN_TRUNCATION_MARKER: &str = "\n...[plan truncated]";

/// Cuts `s` to at most `max` bytes on a character boundary, marked; true when it was cut.
pub(super) fn cut_bytes(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let cut = crate::normalize::char_floor(s, max.saturating_sub(PLAN_TRUNCATION_MARKER.len()));
    s.truncate(cut);
    s.push_str(PLAN_TRUNCATION_MARKER);
    true
}

/// Shrinks a JSON plan until it serializes within `max` bytes: the deepest `Plans` go first
/// (replaced by `"Plans Omitted": n`), then long strings are cut. True when anything went.
pub(super) fn fit_json(plan: &mut Json, max: usize) -> bool {
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
                        *k = "Plans Omitted".into();
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
