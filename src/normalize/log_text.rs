//! The texts a server writes about a statement besides the statement itself: primary messages,
//! DETAIL, HINT, CONTEXT and lines the log parser could not read, and which of them each
//! `query_text` mode ships.
//!
//! Invariants: [`scrub_text`] keeps a message's words, numbers and the identifiers it names
//! (`relation "t"`) and masks every value it quotes; SQL inside a message (`parameters:`,
//! `SQL statement "..."`, deadlock statements) is normalized by the rule of [`super::sql`]; an
//! unparsed line keeps nothing quoted and no number.

use super::sql::{is_ident_byte, normalize_with, quote_end, sql_line_end, Dq};
use super::{
    first_line_len, normalize_into, rewrite_lines, truncate_chars, QueryText, QueryTextMode,
};

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
/// - a quoted value that runs over a line break is masked up to the quote that closes it;
/// - `Key (email)=(...)`, `... = (...)` and `Failing row contains (...)`: the values become `?`;
/// - `parameters:`, `prepare:`, `Process N: <statement>`, `SQL statement "..."`, `... with
///   parameters: ...` and the lines continuing them are normalized as SQL;
/// - `JSON data, line N: ...`: everything after the colon is masked.
pub fn scrub_text(text: &str) -> String {
    let mut open = Open::Nothing;
    rewrite_lines(text, first_line_len, |line, rest, out| {
        let trimmed = line.trim_start();
        match open {
            Open::Nothing => {}
            Open::ValueList => {
                // The rest of a masked value list that ran over the line end.
                if let Some(at) = line.rfind(')') {
                    out.push_str(&line[at..]);
                    open = Open::Nothing;
                }
                return line.len();
            }
            Open::Quote(q) => {
                // The rest of a masked quoted value that ran over the line end.
                if let Some(at) = quote_end(line.as_bytes(), 0, q) {
                    open = scrub_line(&line[at..], out);
                }
                return line.len();
            }
        }
        let indent = line.len() - trimmed.len();
        let sql_at = if let Some(p) = SQL_LINE_STARTS.iter().find(|p| trimmed.starts_with(*p)) {
            Some(indent + p.len())
        } else if let Some(at) = process_statement_at(trimmed) {
            Some(indent + at)
        } else {
            line.find("with parameters: ")
                .map(|at| at + "with parameters: ".len())
        };
        if let Some(at) = sql_at {
            out.push_str(&line[..at]);
            return normalize_sql_run(rest, at, out);
        }
        if trimmed.starts_with("JSON data, ") {
            if let Some(at) = line.find(": ") {
                out.push_str(&line[..at + 2]);
                out.push('?');
                return line.len();
            }
        }
        open = scrub_line(line, out);
        line.len()
    })
}

/// Writes the SQL that starts at `at` of `rest` normalized, with the lines that continue it (up
/// to a line that starts a new section, [`SECTION_STARTS`]), and returns where it ends. A line
/// break inside a literal or comment neither ends the SQL nor splits what is masked.
fn normalize_sql_run(rest: &str, at: usize, out: &mut String) -> usize {
    let mut start = at;
    loop {
        let end = sql_line_end(rest, start);
        normalize_into(&rest[start..end], out);
        if end >= rest.len() {
            return end;
        }
        let next = &rest[end + 1..];
        let next = next[..first_line_len(next)].trim_start();
        if SECTION_STARTS.iter().any(|p| next.starts_with(p)) {
            return end;
        }
        out.push('\n');
        start = end + 1;
    }
}

/// `Process 123: UPDATE ...` (a deadlock DETAIL): where the statement starts.
fn process_statement_at(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("Process ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && rest[digits..].starts_with(": ")).then_some("Process ".len() + digits + 2)
}

/// What a line of free text leaves open at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Nothing.
    Nothing,
    /// A masked value list (`Key (a)=(...`): masked up to the last `)` of a later line.
    ValueList,
    /// A masked quoted value (`"..."` or `'...'`): masked up to the quote that closes it.
    Quote(u8),
}

/// One line of free text into `out`; says what is still open at its end.
fn scrub_line(line: &str, out: &mut String) -> Open {
    let b = line.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut copied = 0;
    while i < n {
        match b[i] {
            b'"' => {
                let end = quote_end(b, i + 1, b'"');
                if quoted_is_identifier(&line[..i]) {
                    i = end.unwrap_or(n);
                    continue;
                }
                out.push_str(&line[copied..i]);
                out.push_str("\"?\"");
                let Some(end) = end else {
                    return Open::Quote(b'"');
                };
                i = end;
                copied = i;
            }
            b'\'' if i == 0 || !is_ident_byte(b[i - 1]) => {
                out.push_str(&line[copied..i]);
                out.push_str("'?'");
                let Some(end) = quote_end(b, i + 1, b'\'') else {
                    return Open::Quote(b'\'');
                };
                i = end;
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
                    None => return Open::ValueList,
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&line[copied.min(n)..]);
    Open::Nothing
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sql_in_details_masks_literals_that_run_over_a_line_break() {
        assert_eq!(
            scrubbed("parameters: $1 = 'line one\nline two secret', $2 = 5"),
            "parameters: $1 = ?, $2 = ?"
        );
        assert_eq!(
            scrubbed(
                "Process 10: UPDATE t SET v = 'multi\nline secret'\n  WHERE id = 7\n\
                 Process 11: UPDATE t SET v = $$a\nProcess 12: b$$"
            ),
            "Process 10: UPDATE t SET v = ?\n  WHERE id = ?\nProcess 11: UPDATE t SET v = ?"
        );
        assert_eq!(
            scrubbed("SQL statement \"SELECT 1\"\nCOPY t, line 1, column a: \"secret\""),
            "SQL statement \"SELECT ?\"\nCOPY t, line 1, column a: \"?\""
        );
    }

    #[test]
    fn quoted_values_that_run_over_a_line_break_are_masked_whole() {
        assert_eq!(
            scrubbed("invalid input syntax for type integer: \"12\nsecret\" here"),
            "invalid input syntax for type integer: \"?\"\n here"
        );
        assert_eq!(
            scrubbed("COPY t, line 1, column a: \"first\nsecret\nwords\""),
            "COPY t, line 1, column a: \"?\"\n\n"
        );
        assert_eq!(scrubbed("got 'a\nsecret' and \"b\""), "got '?'\n and \"?\"");
        assert_eq!(scrubbed("value \"never\nclosed secret"), "value \"?\"\n");
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
}
