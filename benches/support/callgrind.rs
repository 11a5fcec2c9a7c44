//! Reading callgrind output for the benches (`#[path]`-included by `agent_cost` and
//! `sampler_profile`; not a bench of its own).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Inclusive instructions per `file:function` from `callgrind_annotate --inclusive=yes`: the
/// program total first, then the largest first. A function inlined from several files has one
/// entry per file; the call-count lines ("(11x)") are left out.
pub fn annotate(out: &Path) -> Vec<(u64, String)> {
    let text = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(out)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut total = 0;
    let mut v: HashMap<String, u64> = HashMap::new();
    for l in text.lines() {
        let l = l.trim();
        let Some((num, rest)) = l.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        // "(12.34%)  file:function [object]"
        let rest = rest
            .trim_start()
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .map_or(rest, |(_, r)| r)
            .trim();
        if rest == "PROGRAM TOTALS" {
            total = ir;
            continue;
        }
        if rest.ends_with("x)") || !rest.contains(':') {
            continue;
        }
        let rest = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
        // Shorten the file to its last two components.
        let (file, func) = rest.split_once(':').unwrap_or(("", rest));
        let short: Vec<&str> = file.rsplit('/').take(2).collect();
        let file: String = short.into_iter().rev().collect::<Vec<_>>().join("/");
        // The same file:function twice (an inlined fragment within the function): the larger
        // figure already contains the smaller one.
        let key = format!("{file}:{func}");
        let e = v.entry(key).or_insert(0);
        *e = (*e).max(ir);
    }
    let mut v: Vec<(u64, String)> = v.into_iter().map(|(k, ir)| (ir, k)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v.insert(0, (total, "PROGRAM TOTALS".into()));
    v
}
