//! Turns the physical lines of a log file into entries, whatever the format: stderr lines are
//! matched against the compiled prefix and joined with their DETAIL/HINT/CONTEXT/STATEMENT and
//! tab-continued lines; csvlog lines are reassembled into records; jsonlog lines are objects.
//!
//! Invariants: entries come out in file order; an entry is only emitted once it is complete (the
//! next record started, or [`EntryParser::flush`] was called), and [`EntryParser::pending_start`]
//! is the file offset where the first byte not yet emitted starts, which is what the tailer may
//! persist. Nothing here panics on any input, and memory is bounded per entry.

use super::csvlog::CsvRecord;
use super::entry::{lossy, Entry, Part};
use super::jsonlog;
use super::prefix::{PrefixMatch, PrefixParser};
use crate::normalize::CorrelationPattern;

/// The longest jsonlog line kept; the rest of a longer line is dropped and the entry marked
/// truncated (the keys before the cut are still read).
const JSON_LINE_CAP: usize = 1024 * 1024;

/// How many unparsable lines are kept as samples for reports.
const MAX_SAMPLES: usize = 20;

/// The log formats PostgreSQL writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `stderr`: text lines with `log_line_prefix`.
    Stderr,
    /// `csvlog`.
    Csv,
    /// `jsonlog` (PostgreSQL 15+).
    Json,
}

impl Format {
    /// The `log_destination` word for the format (also what payloads say).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Stderr => "stderr",
            Format::Csv => "csvlog",
            Format::Json => "jsonlog",
        }
    }

    /// The format named by a `log_destination` word.
    pub fn from_destination(word: &str) -> Option<Format> {
        match word.trim().to_ascii_lowercase().as_str() {
            "stderr" => Some(Format::Stderr),
            "csvlog" => Some(Format::Csv),
            "jsonlog" => Some(Format::Json),
            _ => None,
        }
    }

    /// The file extension PostgreSQL gives this format's files (`log_filename` with `.log`
    /// replaced, or this appended).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Stderr => "log",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    /// The format a file name suggests: `.csv` is csvlog, `.json` jsonlog, anything else stderr.
    pub fn guess_from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            _ => Format::Stderr,
        }
    }
}

/// Counts kept while parsing, for payloads and reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseStats {
    /// Physical lines read.
    pub n_lines: u64,
    /// Entries emitted.
    pub n_entries: u64,
    /// Lines (or csv/json records) that could not be parsed and were not attached to an entry.
    pub n_unparsed: u64,
    /// The first unparsable lines: file offset and text (cut to 200 bytes).
    pub samples: Vec<(u64, String)>,
}

impl ParseStats {
    fn unparsed(&mut self, offset: u64, bytes: &[u8]) {
        self.n_unparsed += 1;
        if self.samples.len() < MAX_SAMPLES {
            let mut cut = bytes.len().min(200);
            // Keep whole UTF-8 characters where possible.
            while cut > 0 && cut < bytes.len() && (bytes[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            self.samples.push((offset, lossy(&bytes[..cut])));
        }
    }
}

enum Kind {
    Stderr {
        prefix: PrefixParser,
        part: Part,
    },
    Csv(CsvRecord),
    Json {
        line: Vec<u8>,
        key_buf: Vec<u8>,
        scratch: Vec<u8>,
        truncated: bool,
    },
}

/// A stateful parser for one format, fed physical lines (or pieces of very long lines).
pub struct EntryParser {
    kind: Kind,
    correlation: CorrelationPattern,
    pending: Option<Entry>,
    pending_start: u64,
    /// The previous push ended without a newline: this push continues the same line.
    mid_line: bool,
    /// The record in progress (csv/json) started at `pending_start`.
    record_open: bool,
    /// Where the line being fed in pieces started.
    line_start: u64,
    stats: ParseStats,
}

impl EntryParser {
    /// A parser for `format`; `prefix` is `log_line_prefix` (used for stderr only). The
    /// correlation pattern is the default one until set.
    pub fn new(format: Format, prefix: &str) -> EntryParser {
        let kind = match format {
            Format::Stderr => Kind::Stderr {
                prefix: PrefixParser::new(prefix),
                part: Part::Message,
            },
            Format::Csv => Kind::Csv(CsvRecord::new()),
            Format::Json => Kind::Json {
                line: Vec::new(),
                key_buf: Vec::new(),
                scratch: Vec::new(),
                truncated: false,
            },
        };
        EntryParser {
            kind,
            correlation: CorrelationPattern::default(),
            pending: None,
            pending_start: 0,
            mid_line: false,
            record_open: false,
            line_start: 0,
            stats: ParseStats::default(),
        }
    }

    /// Sets how correlation IDs are found (`[collection] correlation_prefix` and
    /// `correlation_sources`; every marker with the `bitville-` prefix by default).
    pub fn with_correlation(mut self, correlation: CorrelationPattern) -> EntryParser {
        self.correlation = correlation;
        self
    }

    /// The format this parser reads.
    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Stderr { .. } => Format::Stderr,
            Kind::Csv(_) => Format::Csv,
            Kind::Json { .. } => Format::Json,
        }
    }

    /// Warnings about the prefix (stderr only): missing timestamp, pid or application name.
    pub fn warnings(&self) -> &[String] {
        match &self.kind {
            Kind::Stderr { prefix, .. } => prefix.warnings(),
            _ => &[],
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Takes the counts so far and starts new ones (per payload).
    pub fn take_stats(&mut self) -> ParseStats {
        std::mem::take(&mut self.stats)
    }

    /// Where the first byte not yet emitted as part of an entry starts (an entry or record in
    /// progress), or `None` when everything fed so far has been emitted or dropped.
    pub fn pending_start(&self) -> Option<u64> {
        if self.pending.is_some() || self.record_open {
            Some(self.pending_start)
        } else if self.mid_line {
            // A line fed in pieces that belongs to no entry: resume at its start.
            Some(self.line_start)
        } else {
            None
        }
    }

    /// True when nothing is waiting to be completed.
    pub fn is_idle(&self) -> bool {
        self.pending_start().is_none() && !self.mid_line
    }

    /// Feeds `bytes`, which start at file offset `start`: a whole line without its newline when
    /// `line_end`, else a piece of a line longer than the tailer's line cap (the rest follows).
    /// Completed entries are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], start: u64, line_end: bool, out: &mut Vec<Entry>) {
        let continues = self.mid_line;
        self.mid_line = !line_end;
        if !continues {
            self.line_start = start;
        }
        if line_end {
            self.stats.n_lines += 1;
        }
        let bytes = match bytes.last() {
            Some(b'\r') if line_end => &bytes[..bytes.len() - 1],
            _ => bytes,
        };
        match &mut self.kind {
            Kind::Stderr { prefix, part } => {
                if continues {
                    // The rest of an overlong line: same field, no separator.
                    if let Some(e) = &mut self.pending {
                        e.append(*part, "", bytes);
                    }
                    return;
                }
                match prefix.parse(bytes) {
                    Some(m) if m.level.is_primary() => {
                        if let Some(mut done) = self.pending.take() {
                            done.finish(&self.correlation);
                            self.stats.n_entries += 1;
                            out.push(done);
                        }
                        self.pending = Some(entry_from_prefix(&m, bytes));
                        self.pending_start = start;
                        *part = Part::Message;
                    }
                    Some(m) => {
                        let line_pid = m.captures.get(b'p', bytes).and_then(parse_u32);
                        match &mut self.pending {
                            Some(e)
                                if line_pid.is_none() || e.pid.is_none() || e.pid == line_pid =>
                            {
                                // A DETAIL/HINT/... line: Part::of is Some for every secondary
                                // level.
                                let p = Part::of(m.level).unwrap_or(Part::Detail);
                                e.append(p, "\n", &bytes[m.message_start..]);
                                *part = p;
                            }
                            _ => self.stats.unparsed(start, bytes),
                        }
                    }
                    None => match &mut self.pending {
                        Some(e) => {
                            // Message lines after the first are tab-indented by PostgreSQL; a
                            // line with neither prefix nor tab is still the previous entry's
                            // output (an extension printing to stderr), not a new record.
                            let text = bytes.strip_prefix(b"\t").unwrap_or(bytes);
                            e.append(*part, "\n", text);
                        }
                        None => self.stats.unparsed(start, bytes),
                    },
                }
            }
            Kind::Csv(rec) => {
                if !rec.in_progress() {
                    self.pending_start = start;
                }
                if rec.push(bytes, line_end) {
                    self.record_open = false;
                    match rec.take(&self.correlation) {
                        Some(e) => {
                            self.stats.n_entries += 1;
                            out.push(e);
                        }
                        None => self.stats.unparsed(self.pending_start, bytes),
                    }
                } else {
                    self.record_open = rec.in_progress();
                }
            }
            Kind::Json {
                line,
                key_buf,
                scratch,
                truncated,
            } => {
                if !continues {
                    line.clear();
                    *truncated = false;
                    self.pending_start = start;
                }
                let room = JSON_LINE_CAP.saturating_sub(line.len());
                line.extend_from_slice(&bytes[..bytes.len().min(room)]);
                *truncated |= bytes.len() > room;
                if !line_end {
                    self.record_open = true;
                    return;
                }
                self.record_open = false;
                if line.iter().all(u8::is_ascii_whitespace) {
                    return;
                }
                match jsonlog::parse_line(line, key_buf, scratch, &self.correlation) {
                    Some(mut e) => {
                        e.truncated |= *truncated;
                        self.stats.n_entries += 1;
                        out.push(e);
                    }
                    None => self.stats.unparsed(self.pending_start, line),
                }
            }
        }
    }

    /// Emits the entry in progress, if any: its file ended (rotation) or no more lines came for a
    /// while. A csv/json record cut short is parsed as far as it goes.
    pub fn flush(&mut self, out: &mut Vec<Entry>) {
        if self.mid_line {
            // The file ended inside a line: treat it as ended.
            self.push(&[], self.pending_start, true, out);
        }
        if let Some(mut done) = self.pending.take() {
            done.finish(&self.correlation);
            self.stats.n_entries += 1;
            out.push(done);
        }
        if let Kind::Csv(rec) = &mut self.kind {
            if rec.in_progress() {
                match rec.take(&self.correlation) {
                    Some(mut e) => {
                        e.truncated = true;
                        self.stats.n_entries += 1;
                        out.push(e);
                    }
                    None => self
                        .stats
                        .unparsed(self.pending_start, b"(unterminated csv record)"),
                }
            }
        }
        self.record_open = false;
        self.mid_line = false;
    }

    /// Forgets the entry in progress without emitting it (its file was truncated away).
    pub fn discard(&mut self) {
        self.pending = None;
        self.record_open = false;
        self.mid_line = false;
        match &mut self.kind {
            Kind::Csv(rec) => rec.reset(),
            Kind::Json { line, .. } => line.clear(),
            Kind::Stderr { .. } => {}
        }
    }
}

fn parse_u32(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// An entry from a matched stderr line: the prefix fields and the first message line.
fn entry_from_prefix(m: &PrefixMatch, line: &[u8]) -> Entry {
    let g = |esc: u8| m.captures.get(esc, line);
    // Empty or `[unknown]` (connection not yet authenticated) means "not known".
    let text = |esc: u8| {
        g(esc)
            .filter(|v| !v.is_empty() && *v != b"[unknown]")
            .map(lossy)
    };
    let mut e = Entry {
        timestamp: text(b'm').or_else(|| text(b't')).or_else(|| text(b'n')),
        pid: g(b'p').and_then(parse_u32),
        user: text(b'u'),
        database: text(b'd'),
        application_name: text(b'a'),
        remote_host: text(b'r').or_else(|| text(b'h')),
        session_id: text(b'c'),
        line_num: g(b'l').and_then(parse_u64),
        command_tag: text(b'i'),
        vxid: text(b'v'),
        txid: g(b'x').and_then(parse_u64),
        backend_type: text(b'b'),
        query_id: g(b'Q').and_then(|q| std::str::from_utf8(q).ok()?.parse().ok()),
        level: Some(m.level),
        sqlstate: text(b'e'),
        ..Entry::default()
    };
    e.append(
        Part::Message,
        "",
        line.get(m.message_start..).unwrap_or(b""),
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logtail::entry::Level;

    /// Feeds `text` line by line (offsets included) and flushes at the end.
    pub(crate) fn parse_all(p: &mut EntryParser, text: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut off = 0u64;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let (body, end) = match line.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (line, false),
            };
            p.push(body, off, end, &mut out);
            off += line.len() as u64;
        }
        p.flush(&mut out);
        out
    }

    const STDERR: &str = "\
2024-05-01 12:00:00.100 UTC [10] LOG:  database system is ready to accept connections
2024-05-01 12:00:01.000 UTC [20] alice@shop bitville-0123abcd-0123-4567-89ab-0123456789ab ERROR:  relation \"nope\" does not exist at character 15
2024-05-01 12:00:01.000 UTC [20] alice@shop bitville-0123abcd-0123-4567-89ab-0123456789ab STATEMENT:  SELECT *
\t  FROM nope
\t  WHERE x = 1
2024-05-01 12:00:02.000 UTC [21] bob@shop psql LOG:  duration: 1500.250 ms  statement: SELECT pg_sleep(1.5)
2024-05-01 12:00:03.000 UTC [21] bob@shop psql ERROR:  division by zero
2024-05-01 12:00:03.000 UTC [21] bob@shop psql CONTEXT:  PL/pgSQL function f() line 3 at RETURN
2024-05-01 12:00:03.000 UTC [21] bob@shop psql HINT:  don't
2024-05-01 12:00:04.000 UTC [22] bob@shop psql WARNING:  odd \\xff byte
";

    #[test]
    fn stderr_entries_join_continuations() {
        let mut p = EntryParser::new(Format::Stderr, "%m [%p] %q%u@%d %a ");
        let es = parse_all(&mut p, STDERR.as_bytes());
        assert_eq!(es.len(), 5);
        assert_eq!(es[0].user, None);
        assert_eq!(
            es[0].message,
            "database system is ready to accept connections"
        );
        let e = &es[1];
        assert_eq!(e.level, Some(Level::Error));
        assert_eq!(
            e.statement.as_deref(),
            Some("SELECT *\n  FROM nope\n  WHERE x = 1")
        );
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("0123abcd-0123-4567-89ab-0123456789ab")
        );
        assert_eq!(es[2].duration_ms, Some(1500.25));
        assert_eq!(es[2].query(), Some("SELECT pg_sleep(1.5)"));
        assert_eq!(es[2].application_name.as_deref(), Some("psql"));
        assert_eq!(
            es[3].context.as_deref(),
            Some("PL/pgSQL function f() line 3 at RETURN")
        );
        assert_eq!(es[3].hint.as_deref(), Some("don't"));
        assert_eq!(es[4].message, "odd \\xff byte");
        assert_eq!(p.stats().n_unparsed, 0);
        assert_eq!(p.stats().n_lines, 10);
    }

    #[test]
    fn offsets_track_the_entry_in_progress() {
        let mut p = EntryParser::new(Format::Stderr, "%m [%p] ");
        let mut out = Vec::new();
        let l1 = b"2024-05-01 12:00:00.1 UTC [1] LOG:  one";
        p.push(l1, 0, true, &mut out);
        assert_eq!(p.pending_start(), Some(0));
        p.push(b"\tmore", 40, true, &mut out);
        assert!(out.is_empty());
        p.push(
            b"2024-05-01 12:00:00.2 UTC [1] LOG:  two",
            46,
            true,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message, "one\nmore");
        assert_eq!(p.pending_start(), Some(46));
        p.flush(&mut out);
        assert_eq!(p.pending_start(), None);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn orphans_and_invalid_utf8_and_other_pids() {
        let mut p = EntryParser::new(Format::Stderr, "%m [%p] ");
        let text = b"orphan line\n2024-05-01 12:00:00.1 UTC [1] LOG:  caf\xc3\xa9 \xff\n2024-05-01 12:00:00.1 UTC [2] DETAIL:  other pid\n";
        let es = parse_all(&mut p, text);
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].message, "café \u{fffd}");
        assert_eq!(es[0].detail, None);
        assert_eq!(p.stats().n_unparsed, 2);
        assert_eq!(p.stats().samples[0], (0, "orphan line".to_string()));
    }

    #[test]
    fn long_lines_arrive_in_pieces() {
        let mut p = EntryParser::new(Format::Stderr, "%m [%p] ");
        let mut out = Vec::new();
        p.push(
            b"2024-05-01 12:00:00.1 UTC [1] LOG:  statement: SELECT 'aaa",
            0,
            false,
            &mut out,
        );
        p.push(b"bbb'", 60, true, &mut out);
        p.flush(&mut out);
        assert_eq!(out[0].query(), Some("SELECT 'aaabbb'"));
        assert_eq!(p.stats().n_lines, 1);
    }

    #[test]
    fn json_and_csv_through_the_parser() {
        let mut p = EntryParser::new(Format::Json, "");
        let es = parse_all(
            &mut p,
            b"{\"error_severity\":\"LOG\",\"message\":\"a\"}\n\nnot json\n{\"error_severity\":\"ERROR\",\"message\":\"b\"}\n",
        );
        assert_eq!(es.len(), 2);
        assert_eq!(p.stats().n_unparsed, 1);
        let mut p = EntryParser::new(Format::Csv, "");
        let mut out = Vec::new();
        p.push(b"t,,,1,,,,,,,,LOG,,\"multi", 0, true, &mut out);
        assert_eq!(p.pending_start(), Some(0));
        p.push(b"line\"", 25, true, &mut out);
        assert_eq!(p.pending_start(), None);
        assert_eq!(out[0].message, "multi\nline");
    }
}
