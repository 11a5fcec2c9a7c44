//! What counts as customer data, and how it is removed before anything leaves the server:
//! literal masking of SQL texts, the comments that may stay, the values quoted by server messages
//! (DETAIL, CONTEXT, HINT, error messages), auto_explain plans (text, JSON, YAML, XML), lines the
//! log parser could not read; truncation; and the correlation ID of a request (a
//! `/* correlation:<uuid> */` comment, `application_name`, or a W3C traceparent), found in the
//! raw text before it is normalized.
//!
//! This module is the one place that decides what is customer data: every collector and the log
//! tailer call it, none has its own rule.
//!
//! Invariants: [`normalize_into`] never copies a string or numeric literal to its output (each
//! becomes one `?`), keeps identifiers (`t1`), parameters (`$1`) and quoted identifiers, and keeps
//! of the comments only correlation markers (`/* correlation:<uuid> */`) and sqlcommenter keys on
//! [`SQLCOMMENTER_KEYS`]; it never panics whatever the input (an unterminated literal or comment
//! is masked to the end of the text). [`scrub_text`] keeps a server message's words, numbers and
//! the identifiers it names (`relation "t"`), and masks every value it quotes. Plans keep their
//! structure and figures and lose every literal. Truncation always cuts on a character boundary.
//! Everything works on bytes and splits only at ASCII bytes, so no regex and no per-character
//! allocation.

/// What to ship of a query text (`query_text = full | normalized | none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryTextMode {
    /// The text as PostgreSQL reports it (may contain customer data).
    Full,
    /// String and numeric literals replaced with `?`. Defaults to this.
    #[default]
    Normalized,
    /// No text at all (`null` in payloads).
    None,
}

impl QueryTextMode {
    /// The mode named `name` (`full`, `normalized` or `none`, case-insensitive).
    pub fn parse(name: &str) -> Option<QueryTextMode> {
        match name.trim().to_ascii_lowercase().as_str() {
            "full" => Some(QueryTextMode::Full),
            "normalized" | "normalised" => Some(QueryTextMode::Normalized),
            "none" => Some(QueryTextMode::None),
            _ => None,
        }
    }

    /// The configuration spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryTextMode::Full => "full",
            QueryTextMode::Normalized => "normalized",
            QueryTextMode::None => "none",
        }
    }
}

impl From<crate::config::QueryTextMode> for QueryTextMode {
    fn from(m: crate::config::QueryTextMode) -> QueryTextMode {
        match m {
            crate::config::QueryTextMode::Full => QueryTextMode::Full,
            crate::config::QueryTextMode::Normalized => QueryTextMode::Normalized,
            crate::config::QueryTextMode::None => QueryTextMode::None,
        }
    }
}

/// Default maximum length of a shipped query text, in characters.
pub const DEFAULT_MAX_CHARS: usize = 1000;

/// Appended to a text that was cut (the Python agent's marker, kept for dashboards).
pub const TRUNCATION_MARKER: &str = "...[truncated]";

/// How query texts are rendered: the mode and the length cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryText {
    /// Full, normalized or none.
    pub mode: QueryTextMode,
    /// Maximum characters kept before [`TRUNCATION_MARKER`]; 0 means no limit.
    pub max_chars: usize,
}

impl Default for QueryText {
    fn default() -> Self {
        QueryText {
            mode: QueryTextMode::Normalized,
            max_chars: DEFAULT_MAX_CHARS,
        }
    }
}

impl QueryText {
    /// The `query_text` and `query_max_chars` settings of `[collection]`.
    pub fn from_collection(c: &crate::config::CollectionConfig) -> QueryText {
        QueryText {
            mode: c.query_text.into(),
            max_chars: c.query_max_chars,
        }
    }

    /// Renders `sql` into `out` (cleared first) according to the mode, then truncates.
    /// Returns false (and leaves `out` empty) when the mode is `none`.
    pub fn render_into(&self, sql: &str, out: &mut String) -> bool {
        out.clear();
        match self.mode {
            QueryTextMode::None => return false,
            QueryTextMode::Full => out.push_str(sql),
            QueryTextMode::Normalized => normalize_into(sql, out),
        }
        truncate_chars(out, self.max_chars);
        true
    }

    /// Renders `sql` into a new string; `None` when the mode is `none`.
    pub fn render(&self, sql: &str) -> Option<String> {
        let mut out = String::new();
        self.render_into(sql, &mut out).then_some(out)
    }
}

/// Cuts `s` after `max_chars` characters and appends [`TRUNCATION_MARKER`]; 0 means no limit.
pub fn truncate_chars(s: &mut String, max_chars: usize) {
    if max_chars == 0 || s.len() <= max_chars {
        // A string of at most `max_chars` bytes has at most that many characters.
        return;
    }
    if let Some((cut, _)) = s.char_indices().nth(max_chars) {
        s.truncate(cut);
        s.push_str(TRUNCATION_MARKER);
    }
}

fn is_ident_byte(b: u8) -> bool {
    // Bytes >= 0x80 belong to non-ASCII letters, which PostgreSQL allows in identifiers.
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// `sql` with every string and numeric literal replaced by `?` (see [`normalize_into`]); the
/// `fn(&str) -> String` the log payload builder takes.
pub fn normalize(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    normalize_into(sql, &mut out);
    out
}

/// Appends `sql` to `out` with every string and numeric literal replaced by `?`.
///
/// Recognised: `'...'` (with `''`), `E'...'` (with backslash escapes), `B'..'`, `X'..'`, `N'..'`,
/// `U&'..'`, dollar quotes `$tag$...$tag$`, integers, decimals, exponents, `0x..` and `1_000`.
/// Kept: identifiers (`t1`, `col_2`), parameters (`$1`), `"quoted identifiers"`. Comments are
/// dropped (they are free text a developer or ORM wrote, which may carry data) except a
/// correlation marker and sqlcommenter keys on [`SQLCOMMENTER_KEYS`] (see [`kept_comment`]).
pub fn normalize_into(sql: &str, out: &mut String) {
    normalize_with(sql, out, Dq::Identifier);
}

/// What a double quote starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dq {
    /// A quoted identifier (SQL): copied as it is.
    Identifier,
    /// Nothing special (YAML/XML plan text, whose strings are double-quoted): its contents are
    /// normalized like the rest.
    Plain,
    /// A value (a line of unknown shape): masked whole.
    Literal,
}

fn normalize_with(sql: &str, out: &mut String, dq: Dq) {
    let b = sql.as_bytes();
    let n = b.len();
    let mut i = 0;
    // Start of the run of bytes not yet copied; copying runs keeps the common path cheap.
    let mut copied = 0;
    while i < n {
        let c = b[i];
        let prev_ident = i > 0 && is_ident_byte(b[i - 1]);
        match c {
            b'\'' => {
                out.push_str(&sql[copied..i]);
                i = skip_quoted(b, i + 1, false);
                out.push('?');
                copied = i;
            }
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
                if !prev_ident && i + 1 < n && b[i + 1] == b'\'' =>
            {
                out.push_str(&sql[copied..i]);
                i = skip_quoted(b, i + 2, c == b'e' || c == b'E');
                out.push('?');
                copied = i;
            }
            b'u' | b'U' if !prev_ident && i + 2 < n && b[i + 1] == b'&' && b[i + 2] == b'\'' => {
                out.push_str(&sql[copied..i]);
                i = skip_quoted(b, i + 3, false);
                // A UESCAPE clause may follow; it is a literal too but carries no data.
                out.push('?');
                copied = i;
            }
            b'"' if dq == Dq::Identifier => {
                // A quoted identifier: copied as it is, `""` included.
                i = skip_until_quote(b, i + 1, b'"');
            }
            b'"' if dq == Dq::Literal => {
                out.push_str(&sql[copied..i]);
                i = skip_until_quote(b, i + 1, b'"');
                out.push('?');
                copied = i;
            }
            b'-' if i + 1 < n && b[i + 1] == b'-' => {
                out.push_str(&sql[copied..i]);
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
                copied = i;
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                out.push_str(&sql[copied..i]);
                let end = skip_block_comment(b, i + 2);
                let body = if end >= i + 4 && sql[..end].ends_with("*/") {
                    &sql[i + 2..end - 2]
                } else {
                    // Unterminated: never kept.
                    ""
                };
                match kept_comment(body) {
                    Some(kept) => {
                        out.push_str("/* ");
                        out.push_str(&kept);
                        out.push_str(" */");
                    }
                    None => {
                        if !out.is_empty() && !out.ends_with(|c: char| c.is_ascii_whitespace()) {
                            out.push(' ');
                        }
                    }
                }
                i = end;
                copied = i;
            }
            b'$' if !prev_ident => {
                if let Some((body_end, tag_len)) = dollar_quote(b, i) {
                    out.push_str(&sql[copied..i]);
                    out.push('?');
                    i = body_end + tag_len;
                    copied = i;
                } else {
                    // `$1` (a parameter) or a stray dollar: keep the digits with it.
                    i += 1;
                    while i < n && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' if !prev_ident => {
                out.push_str(&sql[copied..i]);
                i = skip_number(b, i);
                out.push('?');
                copied = i;
            }
            b'.' if !prev_ident && i + 1 < n && b[i + 1].is_ascii_digit() => {
                out.push_str(&sql[copied..i]);
                i = skip_number(b, i);
                out.push('?');
                copied = i;
            }
            _ => {
                if is_ident_byte(c) {
                    // Skip the whole word so digits inside it (`t1`) are never taken for numbers.
                    while i < n && is_ident_byte(b[i]) {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
        }
    }
    out.push_str(&sql[copied.min(n)..]);
}

/// The sqlcommenter keys whose values are kept in normalized texts: tracing and routing
/// metadata that frameworks put there, never request data.
pub const SQLCOMMENTER_KEYS: &[&str] = &[
    "traceparent",
    "tracestate",
    "route",
    "controller",
    "action",
    "framework",
    "application",
    "db_driver",
];

/// What of a block comment's `body` (between `/*` and `*/`) a normalized text keeps: a
/// correlation marker (`correlation:<uuid>`, `bitville-<uuid>`, a bare UUID: a short word prefix
/// and 36 characters of `[a-f0-9-]`), or the sqlcommenter pairs (`key='value',...`) whose key is
/// on [`SQLCOMMENTER_KEYS`]. `None` drops the comment.
pub fn kept_comment(body: &str) -> Option<String> {
    let t = body.trim();
    if is_correlation_marker(t) {
        return Some(t.to_string());
    }
    let mut kept: Vec<&str> = Vec::new();
    for pair in t.split(',') {
        let pair = pair.trim();
        let (key, value) = pair.split_once('=')?;
        let inner = value.strip_prefix('\'')?.strip_suffix('\'')?;
        if inner.contains('\'') || key.is_empty() {
            return None;
        }
        if SQLCOMMENTER_KEYS.contains(&key) {
            kept.push(pair);
        }
    }
    (!kept.is_empty()).then(|| kept.join(","))
}

fn is_correlation_marker(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() < CORRELATION_ID_LEN || b.len() > CORRELATION_ID_LEN + 32 {
        return false;
    }
    let (prefix, id) = b.split_at(b.len() - CORRELATION_ID_LEN);
    id.iter()
        .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'-')
        && id.iter().filter(|&&c| c == b'-').count() == 4
        && prefix
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b':' | b'.'))
}

/// Index just past the closing quote of a `'...'` body starting at `i` (or the end).
fn skip_quoted(b: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
    let n = b.len();
    while i < n {
        match b[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if i + 1 < n && b[i + 1] == b'\'' => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    n
}

fn skip_until_quote(b: &[u8], mut i: usize, q: u8) -> usize {
    let n = b.len();
    while i < n {
        if b[i] == q {
            if i + 1 < n && b[i + 1] == q {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    n
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    // PostgreSQL block comments nest.
    let n = b.len();
    let mut depth = 1usize;
    while i < n {
        if b[i] == b'/' && i + 1 < n && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && i + 1 < n && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    n
}

/// If a dollar quote opens at `start`, the index of its closing tag and the tag's length.
/// An unterminated dollar quote runs to the end of the text (closing tag length 0).
fn dollar_quote(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let n = b.len();
    let mut j = start + 1;
    if j < n && b[j].is_ascii_digit() {
        return None;
    }
    while j < n && b[j] != b'$' {
        if !(b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            return None;
        }
        j += 1;
    }
    if j >= n {
        return None;
    }
    let tag = &b[start..=j];
    let mut k = j + 1;
    while k + tag.len() <= n {
        if b[k] == b'$' && &b[k..k + tag.len()] == tag {
            return Some((k, tag.len()));
        }
        k += 1;
    }
    Some((n, 0))
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    let n = b.len();
    while i < n {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            // An exponent sign belongs to the number: `1e-5`.
            if (c == b'e' || c == b'E')
                && i + 1 < n
                && (b[i + 1] == b'+' || b[i + 1] == b'-')
                && i + 2 < n
                && b[i + 2].is_ascii_digit()
            {
                i += 2;
            }
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// A text the server wrote about a statement, besides the statement itself: which rule masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogText {
    /// A primary message (`invalid input syntax for type integer: "..."`).
    Message,
    /// A `DETAIL` (`Key (email)=(...) already exists.`, `parameters: ...`, `prepare: ...`,
    /// deadlock reports with the statements of each process).
    Detail,
    /// A `HINT`.
    Hint,
    /// A `CONTEXT` (`SQL statement "..."`, `COPY t, line 1, column a: "..."`).
    Context,
    /// A line the log parser could not read: its shape is unknown, so every quoted thing and
    /// number is masked.
    Unparsed,
}

impl QueryText {
    /// `text` of kind `kind` as it may be shipped: as it is in `full` mode; with every value it
    /// quotes masked (see [`scrub_text`]) in `normalized` mode; in `none` mode the message masked
    /// the same way (it names the event) and the other kinds not at all. Truncated to
    /// `max_chars` in every mode.
    pub fn render_log_text(&self, kind: LogText, text: &str) -> Option<String> {
        let mut out = match (self.mode, kind) {
            (QueryTextMode::Full, _) => text.to_string(),
            (QueryTextMode::None, LogText::Message) | (QueryTextMode::Normalized, _) => {
                scrub(kind, text)
            }
            (QueryTextMode::None, _) => return None,
        };
        truncate_chars(&mut out, self.max_chars);
        Some(out)
    }
}

/// `text` of kind `kind` with its values masked (the `normalized` rule, no truncation).
pub fn scrub(kind: LogText, text: &str) -> String {
    match kind {
        LogText::Unparsed => {
            let mut out = String::with_capacity(text.len());
            normalize_with(text, &mut out, Dq::Literal);
            out
        }
        _ => scrub_text(text),
    }
}

/// Words before a double-quoted name in PostgreSQL's messages that make it an identifier
/// (`relation "t"`, `constraint "t_pkey"`, `user "bob"`); any other quoted thing is a value.
pub const NAMES_BEFORE_IDENTIFIERS: &[&str] = &[
    "relation",
    "table",
    "column",
    "constraint",
    "index",
    "function",
    "procedure",
    "routine",
    "aggregate",
    "schema",
    "database",
    "role",
    "user",
    "type",
    "domain",
    "sequence",
    "view",
    "extension",
    "operator",
    "trigger",
    "tablespace",
    "parameter",
    "publication",
    "subscription",
    "server",
    "wrapper",
    "collation",
    "conversion",
    "language",
    "policy",
    "rule",
    "statistics",
    "cursor",
    "portal",
    "statement",
    "savepoint",
    "slot",
    "encoding",
    "family",
    "class",
    "method",
    "template",
    "dictionary",
    "configuration",
    "channel",
    "attribute",
    "partition",
    "file",
    "directory",
];

/// Line starts after which the rest of the line (and the lines that continue it) is SQL text.
const SQL_LINE_STARTS: &[&str] = &[
    "parameters: ",
    "Parameters: ",
    "prepare: ",
    "SQL statement \"",
    "SQL expression \"",
    "PL/pgSQL assignment \"",
];

/// Line starts that end a run of SQL lines (the next part of a DETAIL or CONTEXT).
const SECTION_STARTS: &[&str] = &[
    "Process ",
    "PL/pgSQL function ",
    "SQL function ",
    "SQL statement \"",
    "COPY ",
    "JSON data, ",
    "parameters: ",
    "Parameters: ",
    "prepare: ",
    "while ",
    "unnamed portal ",
    "portal ",
    "extended query ",
];

/// A server message, DETAIL, HINT or CONTEXT with every value it quotes masked, its words,
/// numbers (pids, sizes, durations) and named identifiers kept.
///
/// - `"..."` stays when an identifier word ([`NAMES_BEFORE_IDENTIFIERS`]) comes right before it,
///   else becomes `"?"` (`invalid input syntax for type integer: "?"`, `at or near "?"`);
/// - `'...'` starting a word becomes `'?'` (an apostrophe inside a word, `don't`, stays);
/// - `Key (email)=(...)`, `... = (...)` and `Failing row contains (...)`: the values become `?`;
/// - `parameters:`, `prepare:`, `Process N: <statement>`, `SQL statement "..."`, `... with
///   parameters: ...` and the lines continuing them are normalized as SQL;
/// - `JSON data, line N: ...`: everything after the colon is masked.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_sql = false;
    let mut mask_to_close = false;
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let trimmed = line.trim_start();
        let starts_section = SECTION_STARTS.iter().any(|p| trimmed.starts_with(p));
        if mask_to_close {
            // The rest of a masked value list that ran over the line end.
            match line.rfind(')') {
                Some(at) => {
                    out.push_str(&line[at..]);
                    mask_to_close = false;
                }
                None => continue,
            }
            continue;
        }
        if in_sql && !starts_section {
            normalize_into(line, &mut out);
            continue;
        }
        in_sql = false;
        if let Some(p) = SQL_LINE_STARTS.iter().find(|p| trimmed.starts_with(*p)) {
            let at = line.len() - trimmed.len() + p.len();
            out.push_str(&line[..at]);
            normalize_into(&line[at..], &mut out);
            in_sql = true;
            continue;
        }
        if let Some(at) = process_statement_at(trimmed) {
            let at = line.len() - trimmed.len() + at;
            out.push_str(&line[..at]);
            normalize_into(&line[at..], &mut out);
            in_sql = true;
            continue;
        }
        if let Some(at) = line.find("with parameters: ") {
            let at = at + "with parameters: ".len();
            out.push_str(&line[..at]);
            normalize_into(&line[at..], &mut out);
            in_sql = true;
            continue;
        }
        if trimmed.starts_with("JSON data, ") {
            if let Some(at) = line.find(": ") {
                out.push_str(&line[..at + 2]);
                out.push('?');
                continue;
            }
        }
        mask_to_close = scrub_line(line, &mut out);
    }
    out
}

/// `Process 123: UPDATE ...` (a deadlock DETAIL): where the statement starts.
fn process_statement_at(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("Process ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && rest[digits..].starts_with(": ")).then_some("Process ".len() + digits + 2)
}

/// One line of free text into `out`; true when a masked value list is still open at its end.
fn scrub_line(line: &str, out: &mut String) -> bool {
    let b = line.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut copied = 0;
    while i < n {
        match b[i] {
            b'"' => {
                let end = skip_until_quote(b, i + 1, b'"');
                if quoted_is_identifier(&line[..i]) {
                    i = end;
                    continue;
                }
                out.push_str(&line[copied..i]);
                out.push_str("\"?\"");
                i = end;
                copied = i;
            }
            b'\'' if i == 0 || !is_ident_byte(b[i - 1]) => {
                out.push_str(&line[copied..i]);
                i = skip_quoted(b, i + 1, false);
                out.push_str("'?'");
                copied = i;
            }
            b'(' if value_list_opens(&line[..i]) => {
                out.push_str(&line[copied..=i]);
                out.push('?');
                // The values may hold parentheses and quotes: mask to the last `)` of the line.
                match line[i + 1..].rfind(')') {
                    Some(at) => {
                        i = i + 1 + at;
                        copied = i;
                    }
                    None => return true,
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&line[copied.min(n)..]);
    false
}

/// True when the text before a `"` ends with an identifier word (`relation `, `of table `).
fn quoted_is_identifier(before: &str) -> bool {
    let t = before.trim_end();
    let word_start = t
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_ascii_alphabetic())
        .map_or(0, |(p, c)| p + c.len_utf8());
    let word = &t[word_start..];
    !word.is_empty()
        && before.len() > t.len()
        && NAMES_BEFORE_IDENTIFIERS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word))
}

/// True when a `(` after `before` opens a list of values: `Key (a)=(`, `(a) = (`,
/// `Failing row contains (`.
fn value_list_opens(before: &str) -> bool {
    before.ends_with(")=") || before.ends_with(") = ") || before.ends_with("row contains ")
}

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
    let mut out = String::with_capacity(plan.len());
    let mut in_query = false;
    for (i, line) in plan.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
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
            normalize_into(rest, &mut out);
            in_query = true;
            continue;
        }
        let node_at = body.find("  (cost=").or_else(|| body.find("  (actual "));
        if in_query && node_at.is_none() {
            // The query text runs over several lines until the first plan node.
            normalize_into(body, &mut out);
            continue;
        }
        in_query = false;
        if let Some(at) = node_at {
            let (head, figures) = body.split_at(at);
            normalize_into(head, &mut out);
            if figures.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b' ' | b'(' | b')' | b'=' | b'.' | b'_')
            }) {
                out.push_str(figures);
            } else {
                normalize_into(figures, &mut out);
            }
            continue;
        }
        if let Some((key, value)) = body.split_once(": ").or_else(|| body.split_once(':')) {
            let figure = PLAN_FIGURE_KEYS.contains(&key)
                || key.starts_with("Worker ")
                || key.starts_with("Trigger ");
            if figure && !value.contains(['\'', '"', '$']) {
                out.push_str(body);
            } else {
                out.push_str(&body[..key.len()]);
                normalize_into(&body[key.len()..], &mut out);
            }
            continue;
        }
        normalize_into(body, &mut out);
    }
    out
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
                        *k = "?".to_string();
                    }
                    walk(val, PLAN_NAME_KEYS.contains(&k.as_str()));
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

/// Where a correlation ID was found, in order of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CorrelationSource {
    /// A `/* correlation:<uuid> */` comment in the query text (the PHP agent's form).
    Comment,
    /// `application_name` holding `<prefix><uuid>` (the Python agent's convention).
    ApplicationName,
    /// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) in `application_name` or in a
    /// sqlcommenter comment (`/*traceparent='00-...'*/`); the ID is the trace id.
    Traceparent,
}

impl CorrelationSource {
    /// Every source, in order of trust.
    pub const ALL: [CorrelationSource; 3] = [
        CorrelationSource::Comment,
        CorrelationSource::ApplicationName,
        CorrelationSource::Traceparent,
    ];

    /// The configuration and payload spelling (`comment`, `application_name`, `traceparent`).
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationSource::Comment => "comment",
            CorrelationSource::ApplicationName => "application_name",
            CorrelationSource::Traceparent => "traceparent",
        }
    }

    /// The source spelled `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<CorrelationSource> {
        let name = name.trim();
        CorrelationSource::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

/// Which markers are trusted (`[collection] correlation_sources`). Defaults to all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationSources {
    /// `/* correlation:<uuid> */` comments.
    pub comment: bool,
    /// `application_name` with the configured prefix.
    pub application_name: bool,
    /// W3C traceparent in `application_name` or a sqlcommenter comment.
    pub traceparent: bool,
}

impl Default for CorrelationSources {
    fn default() -> Self {
        CorrelationSources {
            comment: true,
            application_name: true,
            traceparent: true,
        }
    }
}

impl CorrelationSources {
    /// Parses a comma-separated list (`comment,application_name,traceparent`); an empty list
    /// turns correlation off. The error names the unknown entry.
    pub fn parse(list: &str) -> Result<CorrelationSources, String> {
        let mut s = CorrelationSources {
            comment: false,
            application_name: false,
            traceparent: false,
        };
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match CorrelationSource::parse(item) {
                Some(CorrelationSource::Comment) => s.comment = true,
                Some(CorrelationSource::ApplicationName) => s.application_name = true,
                Some(CorrelationSource::Traceparent) => s.traceparent = true,
                None => {
                    return Err(format!(
                        "\"{item}\" is not one of comment, application_name, traceparent"
                    ))
                }
            }
        }
        Ok(s)
    }

    /// Whether `source` is trusted.
    pub fn accepts(self, source: CorrelationSource) -> bool {
        match source {
            CorrelationSource::Comment => self.comment,
            CorrelationSource::ApplicationName => self.application_name,
            CorrelationSource::Traceparent => self.traceparent,
        }
    }

    /// The list as configured (`comment,application_name,traceparent`).
    pub fn to_list(self) -> String {
        CorrelationSource::ALL
            .into_iter()
            .filter(|s| self.accepts(*s))
            .map(CorrelationSource::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A correlation ID and the marker it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The ID as the listener matches it: the bare UUID, or a traceparent's 32-hex trace id.
    pub id: String,
    /// Which marker carried it.
    pub source: CorrelationSource,
}

/// How correlation IDs are found: the `application_name` prefix (`<prefix>` followed by 36
/// characters of `[a-f0-9-]`, the Python agent's `bitville-([a-f0-9-]{36})`) and which markers
/// are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationPattern {
    /// The text before the ID in `application_name`. Defaults to `bitville-`.
    pub prefix: String,
    /// The markers trusted. Defaults to all.
    pub sources: CorrelationSources,
}

/// Default correlation prefix set by the PHP agent.
pub const DEFAULT_CORRELATION_PREFIX: &str = "bitville-";

/// Length of the ID after the prefix (a UUID with dashes).
pub const CORRELATION_ID_LEN: usize = 36;

impl Default for CorrelationPattern {
    fn default() -> Self {
        CorrelationPattern {
            prefix: DEFAULT_CORRELATION_PREFIX.to_string(),
            sources: CorrelationSources::default(),
        }
    }
}

impl CorrelationPattern {
    /// The pattern of `[collection] correlation_prefix` and `correlation_sources`.
    pub fn from_collection(c: &crate::config::CollectionConfig) -> CorrelationPattern {
        CorrelationPattern {
            prefix: c.correlation_prefix.clone(),
            sources: c.correlation_sources,
        }
    }

    /// The first `<prefix><uuid>` ID in `application_name`, if any (whatever the sources).
    pub fn extract<'a>(&self, application_name: &'a str) -> Option<&'a str> {
        extract_correlation_id(application_name, &self.prefix)
    }

    /// The most trusted correlation ID in a session's `application_name` and raw statement
    /// texts (the query, a log entry's STATEMENT): a `/* correlation:<uuid> */` comment anywhere
    /// in a text, then `application_name` with the prefix, then a traceparent in
    /// `application_name` or in a sqlcommenter comment of a text. Run it on the raw text, before
    /// normalization or truncation.
    pub fn find(&self, application_name: Option<&str>, texts: &[&str]) -> Option<Correlation> {
        let s = self.sources;
        let hit = |id: &str, source| {
            Some(Correlation {
                id: id.to_string(),
                source,
            })
        };
        if s.comment {
            if let Some(id) = texts.iter().find_map(|t| extract_comment_correlation(t)) {
                return hit(id, CorrelationSource::Comment);
            }
        }
        if s.application_name {
            if let Some(id) = application_name.and_then(|a| self.extract(a)) {
                return hit(id, CorrelationSource::ApplicationName);
            }
        }
        if s.traceparent {
            let found = application_name.and_then(find_traceparent).or_else(|| {
                texts
                    .iter()
                    .find_map(|t| extract_sqlcommenter_traceparent(t))
            });
            if let Some(trace) = found {
                return Some(Correlation {
                    id: trace,
                    source: CorrelationSource::Traceparent,
                });
            }
        }
        None
    }
}

/// The first `<prefix>[a-f0-9-]{36}` in `text`, returning the 36 characters: exactly what the
/// Python agent's `re.search(r"bitville-([a-f0-9-]{36})")` captured, the ID the PHP agent reports.
pub fn extract_correlation_id<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let b = text.as_bytes();
    let p = prefix.as_bytes();
    if p.is_empty() && b.len() < CORRELATION_ID_LEN {
        return None;
    }
    let mut from = 0;
    while from + p.len() + CORRELATION_ID_LEN <= b.len() {
        let at = from + find_bytes(&b[from..], p)?;
        let id_start = at + p.len();
        let id_end = id_start + CORRELATION_ID_LEN;
        if id_end <= b.len()
            && b[id_start..id_end]
                .iter()
                .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'-')
        {
            // All bytes are ASCII, so these are character boundaries.
            return Some(&text[id_start..id_end]);
        }
        from = at + 1;
    }
    None
}

/// The ID of the first `/* correlation:<id> */` comment anywhere in `text`: the PHP agent's
/// case-insensitive `\/\*\s*correlation:([a-f0-9-]+)\s*\*\/`, returned as written.
pub fn extract_comment_correlation(text: &str) -> Option<&str> {
    const KEY: &[u8] = b"correlation:";
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"/*") {
        let open = from + off;
        from = open + 2;
        let mut i = skip_space(b, open + 2);
        if b.len() < i + KEY.len() || !b[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            continue;
        }
        i += KEY.len();
        let id_start = i;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'-') {
            i += 1;
        }
        let id_end = i;
        let close = skip_space(b, i);
        if id_end > id_start && b[close..].starts_with(b"*/") {
            // The ID bytes are ASCII, so these are character boundaries.
            return Some(&text[id_start..id_end]);
        }
    }
    None
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The trace id of the first W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex,
/// trace and span id not all zeros) anywhere in `text`.
pub fn find_traceparent(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"00-") {
        let at = from + off;
        from = at + 1;
        // Not the tail of a longer hex run (`a00-...`).
        if at > 0 && b[at - 1].is_ascii_hexdigit() {
            continue;
        }
        if let Some(trace) = parse_traceparent(&b[at..]) {
            return Some(trace);
        }
    }
    None
}

/// The trace id when `b` starts with a valid traceparent.
fn parse_traceparent(b: &[u8]) -> Option<String> {
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    // 00-{32}-{16}-{2}: 55 bytes.
    if b.len() < 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&b[3..35], &b[36..52], &b[53..55]);
    if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    if b.len() > 55 && b[55].is_ascii_hexdigit() {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || span.iter().all(|&c| c == b'0') {
        return None;
    }
    Some(String::from_utf8_lossy(trace).into_owned())
}

/// The trace id of a sqlcommenter `traceparent='...'` key inside a `/* ... */` comment of
/// `text` (the value may be URL-encoded, `%2D` for `-`).
pub fn extract_sqlcommenter_traceparent(text: &str) -> Option<String> {
    const KEY: &[u8] = b"traceparent='";
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"/*") {
        let open = from + off;
        let body_start = open + 2;
        let body_end = body_start + find_bytes(&b[body_start..], b"*/")?;
        from = body_end + 2;
        let body = &b[body_start..body_end];
        let mut at = 0;
        while let Some(k) = find_bytes(&body[at..], KEY) {
            let v_start = at + k + KEY.len();
            at = v_start;
            let Some(len) = body[v_start..].iter().position(|&c| c == b'\'') else {
                break;
            };
            let decoded = url_decode(&body[v_start..v_start + len]);
            if let Some(trace) = parse_traceparent(&decoded) {
                return Some(trace);
            }
        }
    }
    None
}

/// `%XX` sequences decoded; anything malformed is kept as it is.
fn url_decode(v: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = String::new();
        normalize_into(s, &mut out);
        out
    }

    #[test]
    fn normalize_allocates_the_same_text() {
        assert_eq!(normalize("SELECT 'a', 1"), norm("SELECT 'a', 1"));
    }

    #[test]
    fn masks_string_literals_with_doubled_quotes() {
        assert_eq!(
            norm("SELECT * FROM users WHERE name = 'O''Brien' AND x = 'a'"),
            "SELECT * FROM users WHERE name = ? AND x = ?"
        );
    }

    #[test]
    fn masks_escape_strings_with_backslashes() {
        assert_eq!(norm(r"SELECT E'it\'s secret', 1"), "SELECT ?, ?");
        assert_eq!(norm(r"SELECT e'a\\' , 'b'"), "SELECT ? , ?");
        // Without E, a backslash is an ordinary character.
        assert_eq!(norm(r"SELECT 'a\' , 'b'"), "SELECT ? , ?");
    }

    #[test]
    fn masks_prefixed_literals_but_not_identifiers_ending_in_e() {
        assert_eq!(
            norm("SELECT B'101', X'1F', N'x', U&'d\\0061'"),
            "SELECT ?, ?, ?, ?"
        );
        // `type'..'` is an identifier followed by a literal, not an E'' string.
        assert_eq!(norm("SELECT date'2024-01-01'"), "SELECT date?");
    }

    #[test]
    fn masks_dollar_quotes_and_keeps_parameters() {
        assert_eq!(
            norm("SELECT $$secret$$, $tag$a $$ b$tag$, $1, $23"),
            "SELECT ?, ?, $1, $23"
        );
        assert_eq!(norm("SELECT $x$never closed"), "SELECT ?");
    }

    #[test]
    fn masks_numbers_but_not_identifiers() {
        assert_eq!(
            norm("SELECT t1.c2, 42, -3.5, .5, 1e-5, 0x1F, 1_000 FROM t1 WHERE id IN (1,2)"),
            "SELECT t1.c2, ?, -?, ?, ?, ?, ? FROM t1 WHERE id IN (?,?)"
        );
    }

    #[test]
    fn keeps_quoted_identifiers_and_drops_comments() {
        assert_eq!(
            norm(r#"SELECT "col ""1""" FROM "t'2" /* a 'b' /* nested 3 */ */ -- it's 5"#),
            r#"SELECT "col ""1""" FROM "t'2"  "#
        );
        assert_eq!(norm("SELECT 1 -- x\n, 2"), "SELECT ? \n, ?");
        assert_eq!(norm("SELECT/*secret*/1"), "SELECT ?");
        assert_eq!(norm("SELECT 1 /* never closed secret"), "SELECT ? ");
    }

    #[test]
    fn keeps_correlation_markers_and_allowlisted_sqlcommenter_keys() {
        let uuid = "0123abcd-0123-4567-89ab-0123456789ab";
        assert_eq!(
            norm(&format!("/* correlation:{uuid} */ SELECT 'x'")),
            format!("/* correlation:{uuid} */ SELECT ?")
        );
        assert_eq!(
            norm(&format!("SELECT 1 /*bitville-{uuid}*/")),
            format!("SELECT ? /* bitville-{uuid} */")
        );
        assert_eq!(
            norm("SELECT 1 /*controller='users',email='a%40b.com',traceparent='00-ab-cd-01'*/"),
            "SELECT ? /* controller='users',traceparent='00-ab-cd-01' */"
        );
        // Nothing on the allowlist, or not sqlcommenter at all: dropped.
        assert_eq!(norm("SELECT 1 /*user_email='a%40b.com'*/"), "SELECT ? ");
        assert_eq!(norm("SELECT 1 /* route='/x' and more */"), "SELECT ? ");
        assert_eq!(norm(&format!("SELECT 1 /* secret {uuid} */")), "SELECT ? ");
    }

    fn scrubbed(s: &str) -> String {
        scrub_text(s)
    }

    #[test]
    fn messages_keep_identifiers_and_mask_quoted_values() {
        assert_eq!(
            scrubbed(r#"invalid input syntax for type integer: "424242secret""#),
            r#"invalid input syntax for type integer: "?""#
        );
        assert_eq!(
            scrubbed(r#"unterminated quoted string at or near "'secret person"#),
            r#"unterminated quoted string at or near "?""#
        );
        assert_eq!(
            scrubbed(r#"syntax error at or near "secret" at character 8"#),
            r#"syntax error at or near "?" at character 8"#
        );
        assert_eq!(
            scrubbed(r#"duplicate key value violates unique constraint "users_email_key""#),
            r#"duplicate key value violates unique constraint "users_email_key""#
        );
        assert_eq!(
            scrubbed(r#"column "x" of relation "t" does not exist"#),
            r#"column "x" of relation "t" does not exist"#
        );
        assert_eq!(
            scrubbed("process 12 still waiting for ShareLock on transaction 734 after 1000.1 ms"),
            "process 12 still waiting for ShareLock on transaction 734 after 1000.1 ms"
        );
        assert_eq!(scrubbed("it's 'secret' here"), "it's '?' here");
        assert_eq!(
            scrubbed(r#"value "999999999999" is out of range"#),
            r#"value "?" is out of range"#
        );
    }

    #[test]
    fn details_mask_keys_rows_parameters_and_statements() {
        assert_eq!(
            scrubbed("Key (email)=(dup.person@example.com) already exists."),
            "Key (email)=(?) already exists."
        );
        assert_eq!(
            scrubbed(r#"Key (a, b)=(1, x)y)) is not present in table "t"."#),
            r#"Key (a, b)=(?) is not present in table "t"."#
        );
        assert_eq!(
            scrubbed("Failing row contains (7, secret, null)."),
            "Failing row contains (?)."
        );
        assert_eq!(
            scrubbed("Failing row contains (7, multi\nline secret)."),
            "Failing row contains (?\n)."
        );
        assert_eq!(
            scrubbed("parameters: $1 = 'secret', $2 = '42'"),
            "parameters: $1 = ?, $2 = ?"
        );
        assert_eq!(
            scrubbed("prepare: PREPARE p1(text) AS SELECT $1 || 'secret'"),
            "prepare: PREPARE p1(text) AS SELECT $1 || ?"
        );
        assert_eq!(
            scrubbed(
                "Process 10 waits for ShareLock on transaction 5; blocked by process 11.\n\
                 Process 11 waits for ShareLock on transaction 6; blocked by process 10.\n\
                 Process 10: UPDATE t SET v = 'secret'\n  WHERE id = 424242\n\
                 Process 11: UPDATE t SET v = 'other' WHERE id = 2"
            ),
            "Process 10 waits for ShareLock on transaction 5; blocked by process 11.\n\
             Process 11 waits for ShareLock on transaction 6; blocked by process 10.\n\
             Process 10: UPDATE t SET v = ?\n  WHERE id = ?\n\
             Process 11: UPDATE t SET v = ? WHERE id = ?"
        );
        assert_eq!(
            scrubbed("Token \"secret\" is invalid.\nJSON data, line 1: {\"a\":secret..."),
            "Token \"?\" is invalid.\nJSON data, line 1: ?"
        );
    }

    #[test]
    fn contexts_mask_statements_and_copy_values() {
        assert_eq!(
            scrubbed(
                "SQL statement \"SELECT 'secret', 42\"\nPL/pgSQL function f() line 3 at PERFORM"
            ),
            "SQL statement \"SELECT ?, ?\"\nPL/pgSQL function f() line 3 at PERFORM"
        );
        assert_eq!(
            scrubbed(r#"COPY t, line 1, column email: "secret@example.com""#),
            r#"COPY t, line 1, column email: "?""#
        );
        assert_eq!(
            scrubbed("unnamed portal with parameters: $1 = 'secret'"),
            "unnamed portal with parameters: $1 = ?"
        );
    }

    #[test]
    fn no_rule_panics_on_any_text() {
        // A small deterministic generator over the bytes that matter to the rules, with
        // multi-byte characters next to every delimiter.
        let pieces = [
            "'",
            "\"",
            "$",
            "$a$",
            "(",
            ")",
            ")=(",
            ") = (",
            "Failing row contains (",
            "/*",
            "*/",
            "--",
            "\n",
            "\\",
            "E'",
            "U&'",
            "é",
            "ü\"",
            "関",
            "Process 1: ",
            "Key (",
            "parameters: ",
            "SQL statement \"",
            "JSON data, line 1: ",
            "relation ",
            "ö'",
            "Query Text:",
            "  (cost=",
            "->  ",
            "Filter: ",
            "1.5",
            "&apos;",
            ": ",
            "ab",
            " ",
        ];
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..3000 {
            let mut t = String::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            x = x.wrapping_add(1);
            let _ = normalize(&t);
            let _ = scrub_text(&t);
            let _ = scrub(LogText::Unparsed, &t);
            let _ = normalize_plan_text(&t);
            let _ = normalize_plan_opaque(&t);
            let _ = kept_comment(&t);
            let mut j = crate::json::Json::object().field(&t, t.as_str());
            normalize_plan_json(&mut j);
            let mut cut = t.clone();
            truncate_chars(&mut cut, 3);
        }
    }

    #[test]
    fn log_text_modes() {
        let qt = QueryText::default();
        let detail = "Key (email)=(secret) already exists.";
        assert_eq!(
            qt.render_log_text(LogText::Detail, detail).as_deref(),
            Some("Key (email)=(?) already exists.")
        );
        let none = QueryText {
            mode: QueryTextMode::None,
            max_chars: 0,
        };
        assert_eq!(none.render_log_text(LogText::Detail, detail), None);
        assert_eq!(
            none.render_log_text(LogText::Message, r#"bad "secret""#)
                .as_deref(),
            Some(r#"bad "?""#)
        );
        let full = QueryText {
            mode: QueryTextMode::Full,
            max_chars: 0,
        };
        assert_eq!(
            full.render_log_text(LogText::Detail, detail).as_deref(),
            Some(detail)
        );
        assert_eq!(
            scrub(
                LogText::Unparsed,
                r#"	WHERE a = "secret" AND b = 'x' AND c = 42"#
            ),
            "\tWHERE a = ? AND b = ? AND c = ?"
        );
    }

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
    fn yaml_and_xml_plans_are_normalized_whole() {
        let yaml = "Query Text: \"SELECT 'secret', 424242\"\nPlan: \n  Node Type: \"Result\"\n  Filter: \"(a = 'secret'::text)\"";
        let n = normalize_plan_opaque(yaml);
        assert!(!n.contains("secret") && !n.contains("424242"), "{n}");
        assert!(n.contains("Node Type: \"Result\""), "{n}");
        let xml = "<Query-Text>SELECT &apos;secret&apos;, &quot;c&quot;</Query-Text>";
        let n = normalize_plan_opaque(xml);
        assert!(!n.contains("secret"), "{n}");
    }

    #[test]
    fn unterminated_literals_are_masked_to_the_end() {
        assert_eq!(norm("SELECT 'abc"), "SELECT ?");
        assert_eq!(norm("SELECT E'abc\\"), "SELECT ?");
        assert_eq!(norm("'"), "?");
        assert_eq!(norm(""), "");
    }

    #[test]
    fn non_ascii_text_survives() {
        assert_eq!(norm("SELECT 'ünïcode' AS größe, 5"), "SELECT ? AS größe, ?");
    }

    #[test]
    fn truncates_on_char_boundary_with_marker() {
        let mut s = "ééééé".to_string();
        truncate_chars(&mut s, 3);
        assert_eq!(s, format!("ééé{TRUNCATION_MARKER}"));
        let mut short = "abc".to_string();
        truncate_chars(&mut short, 3);
        assert_eq!(short, "abc");
        let mut unlimited = "abcdef".to_string();
        truncate_chars(&mut unlimited, 0);
        assert_eq!(unlimited, "abcdef");
    }

    #[test]
    fn render_applies_mode_then_truncation() {
        let qt = QueryText {
            mode: QueryTextMode::Normalized,
            max_chars: 10,
        };
        assert_eq!(
            qt.render("SELECT 'x', 12345").as_deref(),
            Some("SELECT ?, ...[truncated]")
        );
        let none = QueryText {
            mode: QueryTextMode::None,
            max_chars: 10,
        };
        assert_eq!(none.render("SELECT 1"), None);
        let full = QueryText {
            mode: QueryTextMode::Full,
            max_chars: 0,
        };
        assert_eq!(full.render("SELECT 'x'").as_deref(), Some("SELECT 'x'"));
        assert_eq!(QueryTextMode::parse(" None "), Some(QueryTextMode::None));
        assert_eq!(QueryTextMode::parse("raw"), None);
    }

    #[test]
    fn extracts_correlation_id_like_the_python_pattern() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            extract_correlation_id(&format!("bitville-{id}"), "bitville-"),
            Some(id)
        );
        assert_eq!(
            extract_correlation_id(&format!("php bitville-{id}-extra"), "bitville-"),
            Some(id)
        );
        // Upper case is outside [a-f0-9-], like the regex.
        assert_eq!(
            extract_correlation_id(&format!("bitville-{}", id.to_uppercase()), "bitville-"),
            None
        );
        assert_eq!(
            extract_correlation_id("bitville-monitor", "bitville-"),
            None
        );
        assert_eq!(
            extract_correlation_id("bitville-0f8fad5b", "bitville-"),
            None
        );
        // A first false match does not hide a later true one.
        assert_eq!(
            extract_correlation_id(&format!("bitville-x bitville-{id}"), "bitville-"),
            Some(id)
        );
        let custom = CorrelationPattern {
            prefix: "acme:".into(),
            ..CorrelationPattern::default()
        };
        assert_eq!(custom.extract(&format!("acme:{id}")), Some(id));
        assert_eq!(custom.extract(&format!("bitville-{id}")), None);
        assert_eq!(extract_correlation_id("bitville-ü", "bitville-"), None);
    }

    #[test]
    fn correlation_ids_are_the_uuid_matched_whole() {
        let uuid = "0123abcd-0123-4567-89ab-0123456789ab";
        let app = format!("bitville-{uuid}");
        assert_eq!(extract_correlation_id(&app, "bitville-"), Some(uuid));
        let text = format!("/* {app} */ SELECT 1");
        assert_eq!(extract_correlation_id(&text, "bitville-"), Some(uuid));
        // Like the regex, a longer run of id characters yields its first 36.
        assert_eq!(
            extract_correlation_id(&format!("{app}0"), "bitville-"),
            Some(uuid)
        );
        assert_eq!(
            extract_correlation_id("bitville-monitor", "bitville-"),
            None
        );
        let upper = "bitville-0123ABCD-0123-4567-89ab-0123456789ab";
        assert_eq!(extract_correlation_id(upper, "bitville-"), None);
        assert_eq!(
            extract_correlation_id(&format!("req-{uuid}"), "req-"),
            Some(uuid)
        );
    }

    #[test]
    fn comment_marker_is_found_anywhere_case_insensitive() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            extract_comment_correlation(&format!("/* correlation:{id} */ SELECT 1")),
            Some(id)
        );
        assert_eq!(
            extract_comment_correlation(&format!("SELECT 1 /*CORRELATION:{id}*/")),
            Some(id)
        );
        assert_eq!(
            extract_comment_correlation(&format!("/* other */ SELECT /*\n correlation:{id}\t*/ 1")),
            Some(id)
        );
        // Not a closed marker comment, or no ID.
        assert_eq!(
            extract_comment_correlation("/* correlation: */ SELECT 1"),
            None
        );
        assert_eq!(
            extract_comment_correlation(&format!("/* correlation:{id} x */")),
            None
        );
        assert_eq!(extract_comment_correlation("/* correlation:abc"), None);
        assert_eq!(extract_comment_correlation("/*"), None);
        assert_eq!(
            extract_comment_correlation("é/* correlation:ab */"),
            Some("ab")
        );
    }

    #[test]
    fn traceparent_in_application_name_or_sqlcommenter() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        assert_eq!(find_traceparent(&tp).as_deref(), Some(trace));
        assert_eq!(
            find_traceparent(&format!("web {tp}")).as_deref(),
            Some(trace)
        );
        assert_eq!(find_traceparent(&tp.to_uppercase()), None);
        assert_eq!(
            find_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(find_traceparent(&format!("{tp}0")), None);
        assert_eq!(find_traceparent("00-"), None);
        let sql = format!("SELECT 1 /*action='run',traceparent='{tp}'*/");
        assert_eq!(
            extract_sqlcommenter_traceparent(&sql).as_deref(),
            Some(trace)
        );
        let encoded =
            format!("SELECT 1 /*traceparent='00%2D{trace}%2D00f067aa0ba902b7%2D01',x='%zz'*/");
        assert_eq!(
            extract_sqlcommenter_traceparent(&encoded).as_deref(),
            Some(trace)
        );
        assert_eq!(
            extract_sqlcommenter_traceparent("/*traceparent='00-1'*/"),
            None
        );
        assert_eq!(extract_sqlcommenter_traceparent("/*traceparent='"), None);
        assert_eq!(
            extract_sqlcommenter_traceparent(&format!("{tp} no comment")),
            None
        );
    }

    #[test]
    fn find_follows_the_order_of_trust_and_the_sources() {
        let (a, b) = (
            "aaaaaaaa-0000-4000-8000-000000000001",
            "bbbbbbbb-0000-4000-8000-000000000002",
        );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        let app = format!("bitville-{b}");
        let sql = format!("/* correlation:{a} */ SELECT 1 /*traceparent='{tp}'*/");
        let all = CorrelationPattern::default();
        let found = all.find(Some(&app), &[&sql]).unwrap();
        assert_eq!(
            (found.id.as_str(), found.source),
            (a, CorrelationSource::Comment)
        );
        let found = all.find(Some(&app), &["SELECT 1"]).unwrap();
        assert_eq!(found.source, CorrelationSource::ApplicationName);
        assert_eq!(found.id, b);
        let found = all.find(Some(&tp), &["SELECT 1"]).unwrap();
        assert_eq!(
            (found.id.as_str(), found.source),
            (trace, CorrelationSource::Traceparent)
        );
        let found = all.find(None, &["SELECT 1", &sql[29..]]).unwrap();
        assert_eq!(found.id, trace);
        assert_eq!(all.find(Some("psql"), &["SELECT 1"]), None);

        let only_app = CorrelationPattern {
            sources: CorrelationSources::parse(" application_name ").unwrap(),
            ..CorrelationPattern::default()
        };
        assert_eq!(only_app.find(Some(&app), &[&sql]).unwrap().id, b);
        assert_eq!(only_app.find(Some(&tp), &[&sql]), None);
        let none = CorrelationPattern {
            sources: CorrelationSources::parse("").unwrap(),
            ..CorrelationPattern::default()
        };
        assert_eq!(none.find(Some(&app), &[&sql]), None);
    }

    #[test]
    fn correlation_sources_parse_and_print() {
        let all = CorrelationSources::parse("comment,application_name,traceparent").unwrap();
        assert_eq!(all, CorrelationSources::default());
        assert_eq!(all.to_list(), "comment,application_name,traceparent");
        let err = CorrelationSources::parse("comment,cookie").unwrap_err();
        assert!(err.contains("\"cookie\""), "{err}");
        assert_eq!(
            CorrelationSources::parse("Traceparent").unwrap().to_list(),
            "traceparent"
        );
    }
}
