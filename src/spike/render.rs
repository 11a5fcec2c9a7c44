//! `--report`: the flight recorder's history printed for a person at a terminal. A sparkline of
//! active sessions per second with the spikes marked under it, then per spike its window, peak,
//! wait classes, top queries, requests, root blockers and the host's run queue and pressure.
//!
//! Invariants: pure (history and options in, text out) apart from [`run`], which reads the files
//! and the locale; times are UTC, as in the agent's log; Unicode block characters only when the
//! locale says UTF-8, else plain ASCII.

use crate::calendar::{civil_from_days, days_from_civil};
use std::path::Path;

use super::recorder::{self, History};
use super::timeline::json_f64;
use crate::json::Json;

/// Width of one sparkline line, in buckets.
const LINE_WIDTH: usize = 60;
/// Most sparkline lines: longer windows use buckets of several seconds.
const MAX_LINES: usize = 24;

const UNICODE_LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const ASCII_LEVELS: [char; 9] = [' ', '.', ':', '-', '=', '+', '*', '#', '@'];

/// Parses a `--since` duration: a number with `s`, `m`, `h` or `d` (plain numbers are minutes).
pub fn parse_since(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "m"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("--since {text:?}: expected a duration such as 30m, 2h or 1d"))?;
    let mult = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("--since {text:?}: the unit must be s, m, h or d")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("--since {text:?}: must be more than 0"));
    }
    Ok(n * mult)
}

/// Parses `--at "YYYY-MM-DD HH:MM[:SS]"` (UTC) into unix seconds.
pub fn parse_at(text: &str) -> Result<f64, String> {
    let bad = || format!("--at {text:?}: expected \"YYYY-MM-DD HH:MM\" (UTC)");
    let t = text.trim();
    let (date, time) = t.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let tm: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || !(2..=3).contains(&tm.len()) {
        return Err(bad());
    }
    let sec = tm.get(2).copied().unwrap_or(0);
    let ok = (1970..=9999).contains(&d[0])
        && (1..=12).contains(&d[1])
        && (1..=31).contains(&d[2])
        && (0..24).contains(&tm[0])
        && (0..60).contains(&tm[1])
        && (0..61).contains(&sec);
    if !ok {
        return Err(bad());
    }
    Ok((days_from_civil(d[0], d[1], d[2]) * 86400 + tm[0] * 3600 + tm[1] * 60 + sec) as f64)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix seconds.
pub fn fmt_time(t: f64) -> String {
    let s = t.floor() as i64;
    let (y, m, d) = civil_from_days(s.div_euclid(86400));
    let r = s.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

/// Whether the locale (`LC_ALL`, else `LC_CTYPE`, else `LANG`) is UTF-8.
pub fn locale_is_utf8(get: impl Fn(&str) -> Option<String>) -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| get(k).filter(|v| !v.is_empty()))
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("utf-8") || v.contains("utf8")
        })
}

fn num(j: &Json, path: &[&str]) -> Option<f64> {
    let mut v = j;
    for k in path {
        v = v.get(k)?;
    }
    json_f64(v)
}

fn text<'a>(j: &'a Json, key: &str) -> Option<&'a str> {
    match j.get(key) {
        Some(Json::Str(s)) => Some(s),
        _ => None,
    }
}

fn shorten(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        let mut out: String = one_line.chars().take(n.saturating_sub(3)).collect();
        out.push_str("...");
        out
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The report text for `history` over `since..until`.
pub fn render(h: &History, since: f64, until: f64, unicode: bool) -> String {
    let mut out = String::new();
    let levels = if unicode {
        &UNICODE_LEVELS
    } else {
        &ASCII_LEVELS
    };
    out.push_str(&format!(
        "flight recorder: {} to {} UTC, {} samples, {} spike(s)\n",
        fmt_time(since),
        fmt_time(until),
        h.rows.len(),
        h.spikes.len()
    ));
    if h.n_damaged > 0 {
        out.push_str(&format!(
            "note: {} damaged line(s) in the recorder files were skipped\n",
            h.n_damaged
        ));
    }
    let spans: Vec<(f64, f64)> = h
        .spikes
        .iter()
        .filter_map(|s| {
            let start = num(s, &["start"])?;
            Some((start, num(s, &["end"]).unwrap_or(start)))
        })
        .collect();
    if let (Some(first), Some(last)) = (h.rows.first(), h.rows.last()) {
        let t0 = first.t.floor();
        let span = (last.t.floor() - t0 + 1.0).max(1.0);
        let bucket = (span / (LINE_WIDTH * MAX_LINES) as f64).ceil().max(1.0);
        let n = (span / bucket).ceil() as usize;
        let mut peaks = vec![None::<u32>; n];
        for r in &h.rows {
            let i = (((r.t.floor() - t0) / bucket) as usize).min(n - 1);
            peaks[i] = Some(peaks[i].map_or(r.active(), |p: u32| p.max(r.active())));
        }
        let max = peaks.iter().flatten().copied().max().unwrap_or(0).max(1);
        out.push_str(&format!(
            "\nactive sessions, one column per {bucket} s (full height = {max}; ^ = spike):\n"
        ));
        for (line, chunk) in peaks.chunks(LINE_WIDTH).enumerate() {
            let lt = t0 + (line * LINE_WIDTH) as f64 * bucket;
            let spark: String = chunk
                .iter()
                .map(|p| match p {
                    None => ' ',
                    Some(0) => levels[0],
                    Some(v) => {
                        levels[(((*v as f64) / max as f64 * 8.0).ceil() as usize).clamp(1, 8)]
                    }
                })
                .collect();
            let marks: String = (0..chunk.len())
                .map(|i| {
                    let a = lt + i as f64 * bucket;
                    let b = a + bucket;
                    if spans.iter().any(|(s, e)| *s < b && *e + 1.0 > a) {
                        '^'
                    } else {
                        ' '
                    }
                })
                .collect();
            out.push_str(&format!("{} |{spark}|\n", &fmt_time(lt)[11..]));
            if marks.contains('^') {
                // Under the sparkline: "HH:MM:SS |" is 10 characters.
                out.push_str(&format!("{:10}{}\n", "", marks.trim_end()));
            }
        }
    } else {
        out.push_str("\nno timeline rows in this window\n");
    }
    for (i, s) in h.spikes.iter().enumerate() {
        out.push('\n');
        out.push_str(&spike_text(i + 1, s));
    }
    out
}

fn spike_text(n: usize, s: &Json) -> String {
    let mut out = String::new();
    let start = num(s, &["start"]).unwrap_or(0.0);
    let end = num(s, &["end"]);
    out.push_str(&format!(
        "spike {n}: {} to {} UTC ({} s){}\n",
        fmt_time(start),
        end.map_or("?".into(), |e| fmt_time(e)[11..].to_string()),
        opt(num(s, &["duration_s"]), 0),
        if text(s, "phase") == Some("start") {
            ", still running or its end was not recorded"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  peak: {} active sessions at {} (R {}, D {}); started by {}, baseline {}\n",
        opt(num(s, &["peak", "active"]), 0),
        num(s, &["peak", "at"]).map_or("?".into(), |t| fmt_time(t)[11..].to_string()),
        opt(num(s, &["peak", "run_r"]), 0),
        opt(num(s, &["peak", "run_d"]), 0),
        text(s, "reason").unwrap_or("?"),
        opt(num(s, &["baseline"]), 1),
    ));
    if let Some(Json::Array(classes)) = s.get("wait_classes") {
        let parts: Vec<String> = classes
            .iter()
            .map(|c| {
                format!(
                    "{} {:.0} %",
                    text(c, "class").unwrap_or("?"),
                    num(c, &["share"]).unwrap_or(0.0) * 100.0
                )
            })
            .collect();
        out.push_str(&format!("  wait classes: {}\n", parts.join(", ")));
    }
    if let Some(Json::Array(roots)) = s.get("root_blockers") {
        for b in roots {
            out.push_str(&format!(
                "  root blocker: pid {} blocking {} ({}), request {}, query: {}\n",
                opt(num(b, &["pid"]), 0),
                opt(num(b, &["max_blocked"]), 0),
                text(b, "state").unwrap_or("?"),
                text(b, "correlation_id").unwrap_or("-"),
                shorten(text(b, "query").unwrap_or("-"), 100)
            ));
        }
    }
    let load = s.get("load");
    for (dim, title) in [("queries", "top queries"), ("requests", "top requests")] {
        let Some(Json::Array(rows)) = load.and_then(|l| l.get(dim)) else {
            continue;
        };
        let named: Vec<&Json> = rows
            .iter()
            .filter(|r| r.get("other") != Some(&Json::Bool(true)))
            .take(5)
            .collect();
        if named.is_empty() {
            continue;
        }
        out.push_str(&format!("  {title} (active s, share, top class):\n"));
        for r in named {
            let top_class = match r.get("by_class") {
                Some(Json::Object(f)) => f
                    .iter()
                    .max_by(|a, b| {
                        json_f64(&a.1)
                            .unwrap_or(0.0)
                            .total_cmp(&json_f64(&b.1).unwrap_or(0.0))
                    })
                    .map_or("-".to_string(), |(k, _)| k.to_string()),
                _ => "-".into(),
            };
            let label = if dim == "queries" {
                let id = num(r, &["query_id"]).map_or(String::new(), |i| format!("query_id {i} "));
                format!("{id}{}", shorten(text(r, "query").unwrap_or("-"), 90))
            } else {
                text(r, "key").unwrap_or("-").to_string()
            };
            out.push_str(&format!(
                "    {:>8.1} s {:>5.1} % {:<8} {label}\n",
                num(r, &["active_s"]).unwrap_or(0.0),
                num(r, &["share"]).unwrap_or(0.0) * 100.0,
                top_class
            ));
        }
    }
    if let Some(ev) = s.get("log_events") {
        let counts = match ev.get("counts") {
            Some(Json::Object(f)) if !f.is_empty() => f
                .iter()
                .map(|(k, v)| format!("{k} {}", json_f64(v).unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".into(),
        };
        out.push_str(&format!("  log events: {counts}\n"));
        if let Some(Json::Array(top)) = ev.get("top") {
            for e in top {
                let figure = if let Some(b) = num(e, &["size_bytes"]) {
                    format!(" {:.1} MB", b / 1e6)
                } else if let Some(ms) = num(e, &["wait_ms"]) {
                    format!(" {ms:.0} ms")
                } else if let Some(s) = num(e, &["total_s"]).or(num(e, &["elapsed_s"])) {
                    format!(" {s:.1} s")
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "    {}{figure} at {}, pid {}, request {}\n",
                    text(e, "class").unwrap_or("?"),
                    num(e, &["at"]).map_or("?".into(), |t| fmt_time(t)[11..].to_string()),
                    opt(num(e, &["pid"]), 0),
                    text(e, "correlation_id").unwrap_or("-"),
                ));
            }
        }
    }
    if let Some(h) = s.get("host") {
        out.push_str(&format!(
            "  host: max R {} D {}, procs_running {}, procs_blocked {}, load1 {}, CPU busy {} %, iowait {} %, PSI some avg10 cpu {} io {} memory {}\n",
            opt(num(h, &["max_run_r"]), 0),
            opt(num(h, &["max_run_d"]), 0),
            opt(num(h, &["max_procs_running"]), 0),
            opt(num(h, &["max_procs_blocked"]), 0),
            opt(num(h, &["max_load1"]), 2),
            opt(num(h, &["max_cpu_busy_pct"]), 0),
            opt(num(h, &["max_iowait_pct"]), 0),
            opt(num(h, &["max_psi_cpu_some_avg10"]), 1),
            opt(num(h, &["max_psi_io_some_avg10"]), 1),
            opt(num(h, &["max_psi_memory_some_avg10"]), 1),
        ));
    }
    out
}

/// `--report`: reads the recorder in `state_dir` and prints the window. `since_s` is the
/// `--since` length, `at` the `--at` time (10 minutes around it); neither means the last hour.
/// Returns the exit status.
pub fn run(state_dir: &Path, since_s: Option<f64>, at: Option<f64>, now: f64) -> i32 {
    let (since, until) = match (since_s, at) {
        (_, Some(at)) => (at - 300.0, at + 300.0),
        (Some(s), None) => (now - s, now),
        (None, None) => (now - 3600.0, now),
    };
    match recorder::read(state_dir, since, until) {
        Ok(h) => {
            if h.files.is_empty() {
                eprintln!(
                    "bitville-pg-agent: no flight recorder in {} (the agent writes {} there while it runs)",
                    state_dir.display(),
                    recorder::CURRENT
                );
                return crate::cli::EXIT_FAILURE;
            }
            let unicode = locale_is_utf8(|k| std::env::var(k).ok());
            print!("{}", render(&h, since, until, unicode));
            crate::cli::EXIT_OK
        }
        Err(e) => {
            eprintln!("bitville-pg-agent: {e}");
            crate::cli::EXIT_STORAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::timeline::Row;
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_since("30m"), Ok(1800.0));
        assert_eq!(parse_since("2h"), Ok(7200.0));
        assert_eq!(parse_since("45s"), Ok(45.0));
        assert_eq!(parse_since("10"), Ok(600.0));
        assert!(parse_since("x").is_err());
        assert!(parse_since("0m").is_err());
        assert!(parse_since("5w").is_err());
        let t = parse_at("2026-12-01 14:32").unwrap();
        assert_eq!(fmt_time(t), "2026-12-01 14:32:00");
        assert_eq!(parse_at("1970-01-01 00:00:01"), Ok(1.0));
        assert!(parse_at("2026-13-01 14:32").is_err());
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("2026-12-01").is_err());
        assert_eq!(fmt_time(951_782_400.0), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_locale_decides_unicode() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(locale_is_utf8(env(&[("LANG", "en_US.UTF-8")])));
        assert!(!locale_is_utf8(env(&[("LANG", "C")])));
        assert!(!locale_is_utf8(env(&[
            ("LC_ALL", "C"),
            ("LANG", "en_US.UTF-8")
        ])));
        assert!(locale_is_utf8(env(&[
            ("LC_ALL", ""),
            ("LANG", "de_DE.utf8")
        ])));
        assert!(!locale_is_utf8(env(&[])));
    }

    #[test]
    fn a_spike_is_drawn_and_described() {
        let mut h = History::default();
        for i in 0..120 {
            let mut r = Row {
                t: 1000.0 + i as f64,
                ..Row::default()
            };
            r.classes[2] = if (50..60).contains(&i) { 40 } else { 1 };
            h.rows.push(r);
        }
        let spike = Json::object()
            .field("kind", "spike")
            .field("phase", "end")
            .field("start", 1050.0)
            .field("end", 1059.0)
            .field("duration_s", 9.0)
            .field(
                "peak",
                Json::object()
                    .field("at", 1052.0)
                    .field("active", 40u32)
                    .field("run_r", 1u32)
                    .field("run_d", 0u32),
            )
            .field(
                "wait_classes",
                Json::Array(vec![Json::object()
                    .field("class", "Lock")
                    .field("share", 0.97)]),
            )
            .field(
                "root_blockers",
                Json::Array(vec![Json::object()
                    .field("pid", 77)
                    .field("max_blocked", 40)
                    .field("state", "idle in transaction")
                    .field("correlation_id", "req-holder")
                    .field("query", "UPDATE t SET v = ?")]),
            )
            .field(
                "load",
                Json::object().field(
                    "queries",
                    Json::Array(vec![Json::object()
                        .field("key", "q")
                        .field("query_id", 42)
                        .field("query", "UPDATE t SET v = v + ?")
                        .field("active_s", 380.0)
                        .field("share", 0.95)
                        .field("by_class", Json::object().field("Lock", 380.0))]),
                ),
            )
            .field("host", Json::object().field("max_run_r", 3))
            .field(
                "log_events",
                Json::object()
                    .field("counts", Json::object().field("lock_wait", 39u64))
                    .field(
                        "top",
                        Json::Array(vec![Json::object()
                            .field("class", "lock_wait")
                            .field("at", 1052.5)
                            .field("pid", 78u64)
                            .field("correlation_id", "req-waiter")
                            .field("wait_ms", 4000.0)]),
                    ),
            );
        h.spikes.push(spike);
        let text = render(&h, 1000.0, 1120.0, true);
        assert!(text.contains('█'), "{text}");
        assert!(
            text.contains("spike 1: 1970-01-01 00:17:30 to 00:17:39 UTC (9 s)"),
            "{text}"
        );
        assert!(text.contains("root blocker: pid 77 blocking 40 (idle in transaction), request req-holder, query: UPDATE t SET v = ?"), "{text}");
        assert!(text.contains("Lock 97 %"), "{text}");
        assert!(
            text.contains("query_id 42 UPDATE t SET v = v + ?"),
            "{text}"
        );
        assert!(text.contains("max R 3"), "{text}");
        assert!(text.contains("log events: lock_wait 39\n"), "{text}");
        assert!(
            text.contains("lock_wait 4000 ms at 00:17:32, pid 78, request req-waiter"),
            "{text}"
        );
        let marks = text
            .lines()
            .find(|l| l.trim_start().starts_with('^'))
            .unwrap();
        assert_eq!(marks.matches('^').count(), 10, "{text}");
        let ascii = render(&h, 1000.0, 1120.0, false);
        assert!(ascii.is_ascii(), "{ascii}");
        assert!(ascii.contains('@'));
        let empty = render(&History::default(), 0.0, 1.0, false);
        assert!(empty.contains("no timeline rows"));
    }
}
