//! One parsed log entry, the severity words PostgreSQL writes, and what is derived from a message
//! (duration, statement text, SQLSTATE of verbose output, correlation ID).
//!
//! Invariants: building an entry never panics whatever the bytes; every text field is valid UTF-8
//! (invalid bytes become U+FFFD); the text of one entry never exceeds [`MAX_ENTRY_BYTES`], and an
//! entry that lost text to that cap says so in `truncated`.

/// The most text one entry keeps (message, detail, hint, context, statements together).
///
/// Unbounded multi-line stitching is how other agents ran out of memory; 64 KiB keeps the longest
/// realistic statement and bounds a batch.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The default start of a correlated `application_name` (one constant, in `normalize`).
pub use crate::normalize::DEFAULT_CORRELATION_PREFIX;

/// A severity (or a secondary line kind) as PostgreSQL writes it before `:  `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// `DEBUG` (PostgreSQL prints all debug levels as `DEBUG`; `DEBUG1`..`DEBUG5` accepted too).
    Debug(u8),
    /// `LOG`.
    Log,
    /// `INFO`.
    Info,
    /// `NOTICE`.
    Notice,
    /// `WARNING`.
    Warning,
    /// `ERROR`.
    Error,
    /// `FATAL`.
    Fatal,
    /// `PANIC`.
    Panic,
    /// `DETAIL` line of the previous entry.
    Detail,
    /// `HINT` line of the previous entry.
    Hint,
    /// `CONTEXT` line of the previous entry.
    Context,
    /// `STATEMENT` line: the statement that caused the previous entry.
    Statement,
    /// `QUERY` line: the internal query of the previous entry.
    Query,
    /// `LOCATION` line (log_error_verbosity = verbose).
    Location,
    /// `BACKTRACE` line (backtrace_functions).
    Backtrace,
}

impl Level {
    /// Every level, for iteration in a fixed order (counts in payloads, reports).
    pub const PRIMARY: [Level; 13] = [
        Level::Debug(0),
        Level::Debug(1),
        Level::Debug(2),
        Level::Debug(3),
        Level::Debug(4),
        Level::Debug(5),
        Level::Log,
        Level::Info,
        Level::Notice,
        Level::Warning,
        Level::Error,
        Level::Fatal,
        Level::Panic,
    ];

    /// The word as PostgreSQL writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug(1) => "DEBUG1",
            Level::Debug(2) => "DEBUG2",
            Level::Debug(3) => "DEBUG3",
            Level::Debug(4) => "DEBUG4",
            Level::Debug(5) => "DEBUG5",
            Level::Debug(_) => "DEBUG",
            Level::Log => "LOG",
            Level::Info => "INFO",
            Level::Notice => "NOTICE",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
            Level::Panic => "PANIC",
            Level::Detail => "DETAIL",
            Level::Hint => "HINT",
            Level::Context => "CONTEXT",
            Level::Statement => "STATEMENT",
            Level::Query => "QUERY",
            Level::Location => "LOCATION",
            Level::Backtrace => "BACKTRACE",
        }
    }

    /// True for a level that starts a new entry; false for DETAIL, HINT and the other lines that
    /// belong to the entry before them.
    pub fn is_primary(self) -> bool {
        !matches!(
            self,
            Level::Detail
                | Level::Hint
                | Level::Context
                | Level::Statement
                | Level::Query
                | Level::Location
                | Level::Backtrace
        )
    }

    /// The level named exactly `word` (csvlog and jsonlog carry the bare word).
    pub fn from_word(word: &[u8]) -> Option<Level> {
        Some(match word {
            b"DEBUG" => Level::Debug(0),
            b"DEBUG1" => Level::Debug(1),
            b"DEBUG2" => Level::Debug(2),
            b"DEBUG3" => Level::Debug(3),
            b"DEBUG4" => Level::Debug(4),
            b"DEBUG5" => Level::Debug(5),
            b"LOG" => Level::Log,
            b"INFO" => Level::Info,
            b"NOTICE" => Level::Notice,
            b"WARNING" => Level::Warning,
            b"ERROR" => Level::Error,
            b"FATAL" => Level::Fatal,
            b"PANIC" => Level::Panic,
            b"DETAIL" => Level::Detail,
            b"HINT" => Level::Hint,
            b"CONTEXT" => Level::Context,
            b"STATEMENT" => Level::Statement,
            b"QUERY" => Level::Query,
            b"LOCATION" => Level::Location,
            b"BACKTRACE" => Level::Backtrace,
            _ => return None,
        })
    }
}

/// Parses `LEVEL:  ` at the start of `s`: returns the level and where the message starts.
///
/// PostgreSQL writes two spaces after the colon; one (or none, at the end of a line) is accepted
/// so hand-edited fixtures and odd forwarders still parse.
pub fn parse_level(s: &[u8]) -> Option<(Level, usize)> {
    // Fast rejection: every level word starts with one of these capitals.
    match s.first() {
        Some(
            b'D' | b'L' | b'I' | b'N' | b'W' | b'E' | b'F' | b'P' | b'H' | b'C' | b'S' | b'Q'
            | b'B',
        ) => {}
        _ => return None,
    }
    let colon = s.iter().take(10).position(|&b| b == b':')?;
    let level = Level::from_word(&s[..colon])?;
    let mut at = colon + 1;
    if s.get(at) == Some(&b' ') {
        at += 1;
        if s.get(at) == Some(&b' ') {
            at += 1;
        }
    } else if at != s.len() {
        return None;
    }
    Some((level, at))
}

/// Which text field of an entry a line adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The primary message.
    Message,
    /// `DETAIL`.
    Detail,
    /// `HINT`.
    Hint,
    /// `CONTEXT`.
    Context,
    /// `STATEMENT` (the statement that caused an error).
    Statement,
    /// `QUERY` (internal query).
    InternalQuery,
    /// `LOCATION` / `BACKTRACE`.
    Location,
}

impl Part {
    /// The part a secondary level's line adds to (`None` for a primary level).
    pub fn of(level: Level) -> Option<Part> {
        Some(match level {
            Level::Detail => Part::Detail,
            Level::Hint => Part::Hint,
            Level::Context => Part::Context,
            Level::Statement => Part::Statement,
            Level::Query => Part::InternalQuery,
            Level::Location | Level::Backtrace => Part::Location,
            _ => return None,
        })
    }
}

/// One log entry: a primary line and everything that belongs to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    /// The timestamp as the server wrote it (`%m`, `%t` or `%n`; csv/json `timestamp`).
    pub timestamp: Option<String>,
    /// Backend process ID.
    pub pid: Option<u32>,
    /// Database user.
    pub user: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// `application_name` of the session.
    pub application_name: Option<String>,
    /// Client host (and port) (`%r`/`%h`, csv `connection_from`, json `remote_host`).
    pub remote_host: Option<String>,
    /// Session ID (`%c`).
    pub session_id: Option<String>,
    /// Per-session line number (`%l`).
    pub line_num: Option<u64>,
    /// Command tag / ps display (`%i`).
    pub command_tag: Option<String>,
    /// Virtual transaction ID (`%v`).
    pub vxid: Option<String>,
    /// Transaction ID (`%x`), 0 when none.
    pub txid: Option<u64>,
    /// Backend type (`%b`, PG13+).
    pub backend_type: Option<String>,
    /// Query ID (`%Q`, PG14+), 0 when not computed.
    pub query_id: Option<i64>,
    /// The severity. Always a primary level.
    pub level: Option<Level>,
    /// SQLSTATE (`%e`, csv/json column, or the `XXXXX: ` of verbose messages). `00000` is kept.
    pub sqlstate: Option<String>,
    /// The primary message (continuation lines joined with `\n`).
    pub message: String,
    /// `DETAIL`.
    pub detail: Option<String>,
    /// `HINT`.
    pub hint: Option<String>,
    /// `CONTEXT`.
    pub context: Option<String>,
    /// `STATEMENT`: the statement that caused an error.
    pub statement: Option<String>,
    /// `QUERY`: the internal query (PL/pgSQL) of an error.
    pub internal_query: Option<String>,
    /// `LOCATION` / `BACKTRACE`.
    pub location: Option<String>,
    /// `duration: N ms` of the message.
    pub duration_ms: Option<f64>,
    /// Byte offset in `message` where the statement text of a `statement:` / `execute <name>:` /
    /// `duration: N ms  statement: ...` message starts (see [`Entry::query`]).
    pub query_at: Option<usize>,
    /// Byte offset in `message` where the plan of an auto_explain `duration: N ms  plan:` message
    /// starts (see [`Entry::plan`]).
    pub plan_at: Option<usize>,
    /// The correlation ID (`bitville-<uuid>` by default) from the application name or the query.
    pub correlation_id: Option<String>,
    /// What the entry is, when it is one of the events that explain load (temp file, lock
    /// wait, checkpoint, ...; see [`super::events`]).
    pub event: Option<super::events::Event>,
    /// True when text was dropped to keep the entry under [`MAX_ENTRY_BYTES`].
    pub truncated: bool,
    /// Text bytes held so far (to enforce the cap without summing every time).
    pub(crate) size: usize,
}

impl Entry {
    /// The statement text of a `statement:`, `execute ...:` or `duration: ... statement:` message.
    pub fn query(&self) -> Option<&str> {
        self.query_at.and_then(|at| self.message.get(at..))
    }

    /// The plan of an auto_explain `duration: N ms  plan:` message (any `log_format`).
    pub fn plan(&self) -> Option<&str> {
        self.plan_at.and_then(|at| self.message.get(at..))
    }

    /// The message without the statement text or plan (`duration: 1.5 ms  statement:`,
    /// `duration: 1.5 ms  plan:`), for payloads that must not carry literal values.
    pub fn message_head(&self) -> &str {
        match self.query_at.or(self.plan_at) {
            Some(at) => self.message.get(..at).unwrap_or("").trim_end(),
            None => &self.message,
        }
    }

    /// True when the message is a statement text or a plan, whose head alone may be shipped.
    pub fn has_statement_text(&self) -> bool {
        self.query_at.is_some() || self.plan_at.is_some()
    }

    /// Bytes of text the entry holds.
    pub fn size(&self) -> usize {
        self.size
    }

    fn part_mut(&mut self, part: Part) -> &mut String {
        match part {
            Part::Message => &mut self.message,
            Part::Detail => self.detail.get_or_insert_with(String::new),
            Part::Hint => self.hint.get_or_insert_with(String::new),
            Part::Context => self.context.get_or_insert_with(String::new),
            Part::Statement => self.statement.get_or_insert_with(String::new),
            Part::InternalQuery => self.internal_query.get_or_insert_with(String::new),
            Part::Location => self.location.get_or_insert_with(String::new),
        }
    }

    /// Appends `bytes` (lossily decoded) to `part`, preceded by `sep` when the part already has
    /// text; drops what exceeds the entry cap and marks the entry truncated.
    pub fn append(&mut self, part: Part, sep: &str, bytes: &[u8]) {
        let room = MAX_ENTRY_BYTES.saturating_sub(self.size);
        let target = self.part_mut(part);
        let need_sep = !target.is_empty() && !sep.is_empty();
        let want = bytes.len() + if need_sep { sep.len() } else { 0 };
        if room == 0 {
            if !bytes.is_empty() {
                self.truncated = true;
            }
            return;
        }
        let before = target.len();
        if need_sep {
            target.push_str(sep);
        }
        let avail = room.saturating_sub(target.len() - before);
        let take = bytes.len().min(avail);
        push_lossy(target, &bytes[..take]);
        if target.len() - before > room {
            // Replacement characters are longer than the bytes they replace: cut back at a char
            // boundary so the cap holds exactly.
            let cut = crate::normalize::char_floor(target, before + room);
            target.truncate(cut);
        }
        let added = target.len() - before;
        self.size += added;
        if want > added {
            self.truncated = true;
        }
    }

    /// Sets a whole field from bytes (csvlog / jsonlog columns), counted against the cap.
    pub fn set(&mut self, part: Part, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.append(part, "", bytes);
    }

    /// Derives what the message implies once the entry is complete: the SQLSTATE of verbose
    /// output, the duration and statement text or plan, the correlation ID, and the event class.
    pub fn finish(&mut self, correlation: &crate::normalize::CorrelationPattern) {
        if self.sqlstate.is_none() {
            if let Some(code) = verbose_sqlstate(self.message.as_bytes()) {
                self.sqlstate = Some(code.to_string());
                // Keep the message readable: the code is in its own field now.
                self.message.drain(..7);
            }
        }
        let (duration, query_at) = parse_statement_message(&self.message);
        self.duration_ms = duration;
        self.query_at = query_at;
        self.plan_at = if duration.is_some() && query_at.is_none() {
            plan_start(&self.message)
        } else {
            None
        };
        if self.correlation_id.is_none() {
            // The same markers, in the same order of trust, as the activity sampler's; the
            // prefixed form inside a statement text is the Python agent's habit, kept.
            let texts: Vec<&str> = [self.query(), self.statement.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            self.correlation_id = correlation
                .find(self.application_name.as_deref(), &texts)
                .map(|c| c.id)
                .or_else(|| {
                    let prefixed = |t: &&str| correlation.extract(t).map(str::to_string);
                    let accepted = correlation.sources.application_name;
                    texts.iter().filter(|_| accepted).find_map(prefixed)
                });
        }
        self.event = super::events::classify(self);
    }
}

/// Appends `bytes` to `out`, replacing invalid UTF-8 with U+FFFD, without an intermediate
/// allocation when the bytes are valid (the common case).
pub fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Lossy conversion of a field to an owned string.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `XXXXX` of a verbose message `XXXXX: text` (5 of `[0-9A-Z]`, at least one digit).
fn verbose_sqlstate(msg: &[u8]) -> Option<&str> {
    if msg.len() < 7 || &msg[5..7] != b": " {
        return None;
    }
    let code = &msg[..5];
    if code
        .iter()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        && code.iter().any(u8::is_ascii_digit)
    {
        std::str::from_utf8(code).ok()
    } else {
        None
    }
}

/// Recognises `duration: N ms`, `duration: N ms  statement: Q`, `statement: Q`,
/// `execute <name>: Q` (and `parse`/`bind` with a duration): returns the duration and where the
/// query text starts in `msg`.
pub fn parse_statement_message(msg: &str) -> (Option<f64>, Option<usize>) {
    let b = msg.as_bytes();
    let mut at = 0;
    let mut duration = None;
    if b.starts_with(b"duration: ") {
        let start = 10;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
            end += 1;
        }
        if end == start || !b[end..].starts_with(b" ms") {
            return (None, None);
        }
        duration = msg[start..end].parse::<f64>().ok();
        at = end + 3;
        // Two spaces separate the duration from what follows.
        while at < b.len() && b[at] == b' ' {
            at += 1;
        }
        if at >= b.len() {
            return (duration, None);
        }
    }
    let rest = &b[at..];
    let tag_end = if rest.starts_with(b"statement: ") {
        Some(at + 11)
    } else if rest.starts_with(b"execute ")
        || (duration.is_some() && (rest.starts_with(b"parse ") || rest.starts_with(b"bind ")))
    {
        // `execute <unnamed>: Q`, `execute S_1: Q`, `execute fetch from S_1/C_2: Q`.
        rest.windows(2).position(|w| w == b": ").map(|p| at + p + 2)
    } else {
        None
    };
    (duration, tag_end.filter(|&e| e <= b.len()))
}

/// Where the plan of `duration: N ms  plan:` starts (after the newline or spaces that follow).
pub fn plan_start(msg: &str) -> Option<usize> {
    let first_line = msg.split('\n').next().unwrap_or("");
    let at = first_line.find(" ms  plan:")? + " ms  plan:".len();
    let rest = &msg[at..];
    Some(at + (rest.len() - rest.trim_start().len()))
}

/// Converts a PostgreSQL timestamp (`2024-05-01 12:00:00[.123] UTC`, also `+02`, `-0330`, `Z`,
/// `GMT`) or a `%n` epoch (`1714564800.123`) to unix seconds. `None` for zone abbreviations
/// other than UTC/GMT: their offset is not in the text.
pub fn timestamp_to_unix(ts: &str) -> Option<f64> {
    let b = ts.as_bytes();
    if b.len() < 19 || b[4] != b'-' {
        // `%n`: seconds since the epoch with milliseconds.
        return ts
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0);
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(r)?;
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 24 || mi > 59 || s > 60 {
        return None;
    }
    let mut at = 19;
    let mut frac = 0.0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        frac = ts
            .get(start - 1..at)
            .and_then(|f| format!("0{f}").parse().ok())
            .unwrap_or(0.0);
    }
    let zone = ts.get(at..)?.trim();
    let offset = zone_offset(zone)?;
    let days = crate::calendar::days_from_civil(y, mo, d);
    let secs = days * 86400 + h * 3600 + mi * 60 + s - offset;
    Some(secs as f64 + frac)
}

/// Seconds east of UTC for `UTC`, `GMT`, `Z`, `+hh`, `-hh`, `+hhmm`, `+hh:mm`, or an empty zone
/// (taken as UTC).
fn zone_offset(zone: &str) -> Option<i64> {
    match zone {
        "" | "UTC" | "GMT" | "Z" | "UCT" => return Some(0),
        _ => {}
    }
    let b = zone.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: Vec<u8> = b[1..].iter().copied().filter(|c| *c != b':').collect();
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(digits.get(r)?).ok()?.parse().ok()
    };
    let (h, m) = match digits.len() {
        2 => (v(0..2)?, 0),
        4 => (v(0..2)?, v(2..4)?),
        _ => return None,
    };
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_with_two_spaces_and_reject_lookalikes() {
        assert_eq!(parse_level(b"LOG:  hello"), Some((Level::Log, 6)));
        assert_eq!(parse_level(b"ERROR:  x"), Some((Level::Error, 8)));
        assert_eq!(parse_level(b"DEBUG3:  x"), Some((Level::Debug(3), 9)));
        assert_eq!(
            parse_level(b"STATEMENT:  select"),
            Some((Level::Statement, 12))
        );
        assert_eq!(parse_level(b"LOGX:  x"), None);
        assert_eq!(parse_level(b"LOG:x"), None);
        assert_eq!(parse_level(b"log:  x"), None);
        assert!(!Level::Detail.is_primary());
        assert!(Level::Fatal.is_primary());
    }

    #[test]
    fn duration_and_statement_messages() {
        let m = "duration: 12.345 ms  statement: SELECT 1";
        let (d, at) = parse_statement_message(m);
        assert_eq!(d, Some(12.345));
        assert_eq!(&m[at.unwrap()..], "SELECT 1");
        let m = "duration: 0.5 ms  execute S_1/C_2: SELECT $1";
        let (d, at) = parse_statement_message(m);
        assert_eq!(d, Some(0.5));
        assert_eq!(&m[at.unwrap()..], "SELECT $1");
        let (d, at) = parse_statement_message("duration: 3 ms");
        assert_eq!((d, at), (Some(3.0), None));
        let m = "execute <unnamed>: SELECT 2";
        let (d, at) = parse_statement_message(m);
        assert_eq!(d, None);
        assert_eq!(&m[at.unwrap()..], "SELECT 2");
        assert_eq!(parse_statement_message("duration: abc ms"), (None, None));
        assert_eq!(parse_statement_message("connection received"), (None, None));
    }

    #[test]
    fn entry_cap_truncates_and_marks() {
        let mut e = Entry::default();
        let big = vec![b'x'; MAX_ENTRY_BYTES - 10];
        e.append(Part::Message, "\n", &big);
        assert!(!e.truncated);
        e.append(Part::Detail, "\n", b"0123456789abcdef");
        assert!(e.truncated);
        assert_eq!(e.size(), MAX_ENTRY_BYTES);
        assert_eq!(e.detail.as_deref(), Some("0123456789"));
        // Invalid UTF-8 is replaced, and the cap still holds.
        let mut e = Entry::default();
        e.append(Part::Message, "", &vec![0xff; MAX_ENTRY_BYTES]);
        assert!(e.message.len() <= MAX_ENTRY_BYTES);
        assert!(e.message.starts_with('\u{fffd}'));
        assert!(e.truncated);
    }

    #[test]
    fn finish_derives_sqlstate_duration_and_correlation() {
        let mut e = Entry {
            application_name: Some("bitville-0123abcd-0123-4567-89ab-0123456789ab".into()),
            ..Entry::default()
        };
        e.append(
            Part::Message,
            "",
            b"00000: duration: 2.5 ms  statement: SELECT 1",
        );
        e.finish(&crate::normalize::CorrelationPattern::default());
        assert_eq!(e.sqlstate.as_deref(), Some("00000"));
        assert_eq!(e.duration_ms, Some(2.5));
        assert_eq!(e.query(), Some("SELECT 1"));
        assert_eq!(e.message_head(), "duration: 2.5 ms  statement:");
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("0123abcd-0123-4567-89ab-0123456789ab")
        );
    }

    #[test]
    fn timestamps_convert_when_the_zone_is_known() {
        assert_eq!(timestamp_to_unix("1970-01-01 00:00:00 UTC"), Some(0.0));
        assert_eq!(
            timestamp_to_unix("2024-05-01 12:00:00.250 UTC"),
            Some(1714564800.25)
        );
        assert_eq!(
            timestamp_to_unix("2024-05-01 14:00:00 +02"),
            Some(1714564800.0)
        );
        assert_eq!(
            timestamp_to_unix("2024-05-01 08:30:00 -03:30"),
            Some(1714564800.0)
        );
        assert_eq!(timestamp_to_unix("1714564800.123"), Some(1714564800.123));
        assert_eq!(timestamp_to_unix("2024-05-01 12:00:00 CEST"), None);
        assert_eq!(timestamp_to_unix("garbage"), None);
    }
}
