//! `--analyze-log FILE [--prefix '...']`: parses a whole file with the same parser the tailer
//! uses and reports what it understood, so an operator can check a format before deploying.
//!
//! Invariants: the file is only read; memory stays bounded by the tailer's caps plus the
//! durations list (8 bytes per entry with a duration) and five slowest entries.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::entry::{Entry, Level};
use super::events::EventClass;
use super::parse::{EntryParser, Format};
use super::plan::PlanFormat;
use super::prefix::DEFAULT_PREFIX;
use super::tail::{Follow, TailConfig, Tailer};

/// What a file contained, as the parser understood it. `Display` prints the report.
#[derive(Debug, Clone, Default)]
pub struct LogAnalysis {
    /// The file analysed.
    pub file: PathBuf,
    /// The format it was parsed as.
    pub format: Option<Format>,
    /// The prefix used (stderr).
    pub prefix: String,
    /// Prefix warnings (missing %m/%t, %p, %a).
    pub warnings: Vec<String>,
    /// Physical lines read.
    pub n_lines: u64,
    /// Entries parsed.
    pub n_entries: u64,
    /// Entries cut to the size cap.
    pub n_truncated: u64,
    /// Entries with a correlation ID.
    pub n_correlated: u64,
    /// Entries per severity.
    pub severities: Vec<(Level, u64)>,
    /// Classified events (temp files, lock waits, checkpoints, ...) per class.
    pub events: Vec<(EventClass, u64)>,
    /// auto_explain plans, per format.
    pub plans: Vec<(PlanFormat, u64)>,
    /// Every `duration: N ms`, sorted.
    pub durations_ms: Vec<f64>,
    /// The slowest entries (at most five), slowest first.
    pub slowest: Vec<Entry>,
    /// Lines that could not be parsed.
    pub n_unparsed: u64,
    /// The first unparsable lines: file offset and text.
    pub unparsed_samples: Vec<(u64, String)>,
}

/// Parses `path` as `format` (guessed from the extension when `None`) with `prefix` (the
/// PostgreSQL default `%m [%p] ` when `None`).
pub fn analyze_log(
    path: &Path,
    format: Option<Format>,
    prefix: Option<&str>,
) -> Result<LogAnalysis, String> {
    std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let format = format.unwrap_or_else(|| Format::guess_from_path(path));
    let prefix = prefix.unwrap_or(DEFAULT_PREFIX);
    let parser = EntryParser::new(format, prefix);
    let mut cfg = TailConfig::new(Follow::Path(path.to_path_buf()), None);
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let mut a = LogAnalysis {
        file: path.to_path_buf(),
        format: Some(format),
        prefix: prefix.to_string(),
        warnings: parser.warnings().to_vec(),
        ..LogAnalysis::default()
    };
    let mut tailer = Tailer::new(cfg, parser);
    loop {
        let batch = tailer.poll();
        if batch.entries.is_empty() && !batch.more {
            break;
        }
        for e in batch.entries {
            a.add(e);
        }
    }
    let stats = tailer.take_stats();
    a.n_lines = stats.n_lines;
    a.n_unparsed = stats.n_unparsed;
    a.unparsed_samples = stats.samples;
    a.durations_ms.sort_by(f64::total_cmp);
    a.severities.sort();
    a.events.sort();
    Ok(a)
}

impl LogAnalysis {
    fn add(&mut self, e: Entry) {
        self.n_entries += 1;
        self.n_truncated += u64::from(e.truncated);
        self.n_correlated += u64::from(e.correlation_id.is_some());
        let level = e.level.unwrap_or(Level::Log);
        match self.severities.iter_mut().find(|(l, _)| *l == level) {
            Some((_, n)) => *n += 1,
            None => self.severities.push((level, 1)),
        }
        if let Some(ev) = &e.event {
            match self.events.iter_mut().find(|(c, _)| *c == ev.class) {
                Some((_, n)) => *n += 1,
                None => self.events.push((ev.class, 1)),
            }
        }
        if let Some(p) = e.plan() {
            let f = PlanFormat::detect(p);
            match self.plans.iter_mut().find(|(c, _)| *c == f) {
                Some((_, n)) => *n += 1,
                None => self.plans.push((f, 1)),
            }
        }
        if let Some(d) = e.duration_ms {
            self.durations_ms.push(d);
            let pos = self
                .slowest
                .iter()
                .position(|s| s.duration_ms < Some(d))
                .unwrap_or(self.slowest.len());
            if pos < 5 {
                self.slowest.insert(pos, e);
                self.slowest.truncate(5);
            }
        }
    }
}

impl fmt::Display for LogAnalysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = self.format.map_or("?", Format::as_str);
        writeln!(f, "file:        {}", self.file.display())?;
        if self.format == Some(Format::Stderr) {
            writeln!(f, "format:      stderr, log_line_prefix '{}'", self.prefix)?;
        } else {
            writeln!(f, "format:      {format}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning:     {w}")?;
        }
        writeln!(f, "lines:       {}", self.n_lines)?;
        writeln!(
            f,
            "entries:     {} ({} truncated, {} with a correlation ID)",
            self.n_entries, self.n_truncated, self.n_correlated
        )?;
        let sev: Vec<String> = self
            .severities
            .iter()
            .map(|(l, n)| format!("{} {n}", l.as_str()))
            .collect();
        writeln!(
            f,
            "severities:  {}",
            if sev.is_empty() {
                "-".to_string()
            } else {
                sev.join(", ")
            }
        )?;
        let ev: Vec<String> = self
            .events
            .iter()
            .map(|(c, n)| format!("{} {n}", c.as_str()))
            .collect();
        writeln!(
            f,
            "events:      {}",
            if ev.is_empty() {
                "none (English lc_messages needed)".to_string()
            } else {
                ev.join(", ")
            }
        )?;
        let plans: Vec<String> = self
            .plans
            .iter()
            .map(|(p, n)| format!("{n} {}", p.as_str()))
            .collect();
        writeln!(
            f,
            "plans:       {}",
            if plans.is_empty() {
                "none (auto_explain)".to_string()
            } else {
                plans.join(", ")
            }
        )?;
        let d = &self.durations_ms;
        if d.is_empty() {
            writeln!(f, "durations:   none")?;
        } else {
            let pct = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
            writeln!(
                f,
                "durations:   {} (min {:.3} ms, median {:.3} ms, p95 {:.3} ms, max {:.3} ms, total {:.3} ms)",
                d.len(),
                d[0],
                pct(0.5),
                pct(0.95),
                d[d.len() - 1],
                d.iter().sum::<f64>()
            )?;
            for e in &self.slowest {
                let q: String = e
                    .query()
                    .unwrap_or(e.message.as_str())
                    .chars()
                    .take(100)
                    .collect();
                writeln!(
                    f,
                    "  {:>12.3} ms  pid {}  {}  {}",
                    e.duration_ms.unwrap_or(0.0),
                    e.pid.map_or("-".to_string(), |p| p.to_string()),
                    e.application_name.as_deref().unwrap_or("-"),
                    q.replace('\n', " ")
                )?;
            }
        }
        writeln!(f, "unparsable:  {} lines", self.n_unparsed)?;
        for (off, text) in &self.unparsed_samples {
            writeln!(f, "  at byte {off}: {text}")?;
        }
        Ok(())
    }
}

/// The server settings [`settings_advice`] judges, as `(name, setting)` rows.
pub const ADVICE_SETTINGS_QUERY: &str = "SELECT name, setting FROM pg_catalog.pg_settings \
     WHERE name IN ('lc_messages', 'log_temp_files', 'log_lock_waits', 'log_checkpoints', \
     'log_autovacuum_min_duration', 'shared_preload_libraries', 'session_preload_libraries', \
     'auto_explain.log_min_duration', 'auto_explain.log_format', 'auto_explain.log_analyze', \
     'auto_explain.log_timing', 'auto_explain.log_buffers', 'auto_explain.sample_rate')";

/// What to change so the log explains slow queries and spikes with bounded cost (see
/// docs/logs.md): English messages, the event settings, auto_explain with `json`, `log_analyze`
/// without per-node timing, buffers, a duration threshold or sample rate. Empty when all is well.
pub fn settings_advice<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let rows: Vec<(&str, &str)> = rows.into_iter().collect();
    let get = |k: &str| rows.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let on = |k: &str| get(k).is_some_and(|v| v == "on");
    let mut advice = Vec::new();
    if let Some(lc) = get("lc_messages") {
        let english = lc.is_empty()
            || lc == "C"
            || lc == "POSIX"
            || lc.starts_with("C.")
            || lc.starts_with("en");
        if !english {
            advice.push(format!(
                "lc_messages = 'C' (is '{lc}': events are recognised in English only)"
            ));
        }
    }
    if get("log_temp_files") == Some("-1") {
        advice.push("log_temp_files = 0 (or a size in kB): spills to disk".into());
    }
    if get("log_lock_waits").is_some() && !on("log_lock_waits") {
        advice.push("log_lock_waits = on: lock waits with their blockers".into());
    }
    if get("log_checkpoints").is_some() && !on("log_checkpoints") {
        advice.push("log_checkpoints = on".into());
    }
    if get("log_autovacuum_min_duration") == Some("-1") {
        advice.push("log_autovacuum_min_duration = 0 (or a threshold in ms)".into());
    }
    match get("auto_explain.log_min_duration") {
        None => advice.push(
            "shared_preload_libraries += 'auto_explain' with auto_explain.log_min_duration = \
             500ms, log_format = json, log_analyze = on, log_timing = off, log_buffers = on: \
             plans of slow queries"
                .into(),
        ),
        Some(min) => {
            if min == "-1" {
                advice.push("auto_explain.log_min_duration = 500ms (plans are off)".into());
            }
            if get("auto_explain.log_format").is_some_and(|f| f != "json") {
                advice.push("auto_explain.log_format = json (read exactly)".into());
            }
            if !on("auto_explain.log_analyze") {
                advice.push("auto_explain.log_analyze = on (actual rows, spills)".into());
            } else if on("auto_explain.log_timing") {
                advice.push(
                    "auto_explain.log_timing = off (log_analyze times every node of every \
                     statement otherwise)"
                        .into(),
                );
            }
            if !on("auto_explain.log_buffers") {
                advice.push("auto_explain.log_buffers = on".into());
            }
            let rate: f64 = get("auto_explain.sample_rate")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1.0);
            if min == "0" && rate >= 1.0 {
                advice.push(
                    "auto_explain.log_min_duration = 0 explains every statement: raise it \
                     (e.g. 500ms) or lower auto_explain.sample_rate"
                        .into(),
                );
            }
        }
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_advice_names_what_is_missing_and_nothing_when_all_is_well() {
        let good = [
            ("lc_messages", "C.UTF-8"),
            ("log_temp_files", "0"),
            ("log_lock_waits", "on"),
            ("log_checkpoints", "on"),
            ("log_autovacuum_min_duration", "0"),
            ("auto_explain.log_min_duration", "500"),
            ("auto_explain.log_format", "json"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_timing", "off"),
            ("auto_explain.log_buffers", "on"),
            ("auto_explain.sample_rate", "1"),
        ];
        assert!(settings_advice(good).is_empty());
        let bare = [
            ("lc_messages", "de_DE.UTF-8"),
            ("log_temp_files", "-1"),
            ("log_lock_waits", "off"),
        ];
        let a = settings_advice(bare).join("\n");
        for want in [
            "lc_messages = 'C'",
            "log_temp_files = 0",
            "log_lock_waits = on",
            "auto_explain",
        ] {
            assert!(a.contains(want), "{want} in {a}");
        }
        let costly = [
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_format", "text"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_timing", "on"),
            ("auto_explain.log_buffers", "off"),
        ];
        let a = settings_advice(costly).join("\n");
        for want in [
            "log_format = json",
            "log_timing = off",
            "log_buffers = on",
            "sample_rate",
        ] {
            assert!(a.contains(want), "{want} in {a}");
        }
    }

    #[test]
    fn reports_entries_durations_and_unparsable_lines() {
        let dir = crate::testdir::TempDir::new("logtail-analyze");
        let path = dir.join("pg.log");
        std::fs::write(
            &path,
            "garbage first\n\
             2024-05-01 12:00:00.000 UTC [1] LOG:  duration: 5.000 ms  statement: SELECT 1\n\
             2024-05-01 12:00:00.000 UTC [1] LOG:  duration: 50.000 ms  statement: SELECT 2\n\
             2024-05-01 12:00:00.000 UTC [2] ERROR:  boom\n\
             2024-05-01 12:00:00.000 UTC [2] STATEMENT:  SELECT 3\n\
             2024-05-01 12:00:00.000 UTC [2] LOG:  temporary file: path \"x\", size 8192\n\
             2024-05-01 12:00:00.000 UTC [2] LOG:  checkpoint starting: time\n\
             2024-05-01 12:00:00.000 UTC [2] LOG:  duration: 1.0 ms  plan:\n\t{\"Plan\": {}}\n",
        )
        .unwrap();
        let a = analyze_log(&path, None, None).unwrap();
        assert_eq!(a.n_lines, 9);
        assert_eq!(a.n_entries, 6);
        assert_eq!(a.n_unparsed, 1);
        assert_eq!(a.durations_ms, vec![1.0, 5.0, 50.0]);
        assert_eq!(a.slowest[0].query(), Some("SELECT 2"));
        let text = a.to_string();
        assert!(text.contains("severities:  LOG 5, ERROR 1"), "{text}");
        assert!(
            text.contains("events:      temp_file 1, checkpoint_starting 1"),
            "{text}"
        );
        assert!(text.contains("plans:       1 json"), "{text}");
        assert!(text.contains("at byte 0: garbage first"), "{text}");
        assert!(analyze_log(Path::new("/nonexistent/x.log"), None, None)
            .unwrap_err()
            .contains("/nonexistent/x.log"));
    }
}
