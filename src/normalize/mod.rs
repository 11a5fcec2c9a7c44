//! What counts as customer data, and how it is removed before anything leaves the server:
//! literal masking of SQL texts, the comments that may stay, the values quoted by server messages
//! (DETAIL, CONTEXT, HINT, error messages), auto_explain plans (text, JSON, YAML, XML), lines the
//! log parser could not read; truncation; and the correlation ID of a request (a
//! `/* correlation:<uuid> */` comment, `application_name`, or a W3C traceparent), found in the
//! raw text before it is normalized.
//!
//! This module is the one place that decides what is customer data: every collector and the log
//! tailer call it, none has its own rule. It holds the query-text modes ([`QueryTextMode`],
//! [`QueryText`]) and truncation; the rules live in its parts, re-exported here so callers name
//! only `crate::normalize::*`: `sql` (literal masking, kept comments), `log_text` (server
//! messages, DETAIL/HINT/CONTEXT, unparsed lines), `plan` (auto_explain plans) and `correlation`
//! (finding a request's correlation ID).
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

mod correlation;
mod log_text;
mod plan;
mod sql;

pub use correlation::{
    extract_comment_correlation, extract_correlation_id, extract_sqlcommenter_traceparent,
    find_traceparent, Correlation, CorrelationPattern, CorrelationSource, CorrelationSources,
    CORRELATION_ID_LEN, DEFAULT_CORRELATION_PREFIX,
};
pub use log_text::{scrub, scrub_text, LogText, NAMES_BEFORE_IDENTIFIERS};
pub use plan::{
    normalize_plan_json, normalize_plan_opaque, normalize_plan_text, PLAN_FIGURE_KEYS,
    PLAN_NAME_KEYS,
};
pub use sql::{kept_comment, normalize, normalize_into, SQLCOMMENTER_KEYS};

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

/// The largest byte index at most `at` (and at most `s.len()`) where a character of `s` starts:
/// cutting there never splits a character. The one byte cut of the agent (log entries' size cap,
/// auto_explain plans' byte cap).
pub fn char_floor(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `text` rewritten line by line: `line_end(rest)` says where the line that starts `rest` ends
/// (at a `\n` of `rest` or at its end), `each(line, rest, out)` writes the form of that line (and
/// of any lines it takes with it) into the output and returns the length it took, which ends the
/// same way; the line break after it stays.
fn rewrite_lines(
    text: &str,
    line_end: impl Fn(&str) -> usize,
    mut each: impl FnMut(&str, &str, &mut String) -> usize,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    loop {
        let rest = &text[at..];
        at += each(&rest[..line_end(rest)], rest, &mut out);
        if at >= text.len() {
            return out;
        }
        out.push('\n');
        at += 1;
    }
}

/// The length of the first line of `rest` (up to its first `\n`).
fn first_line_len(rest: &str) -> usize {
    rest.find('\n').unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_cuts_fall_back_to_the_start_of_a_character() {
        let s = "aé€";
        assert_eq!(
            (0..=7).map(|i| char_floor(s, i)).collect::<Vec<_>>(),
            [0, 1, 1, 3, 3, 3, 6, 6]
        );
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
            let mut j = crate::json::Json::object().field(t.clone(), t.as_str());
            normalize_plan_json(&mut j);
            let mut cut = t.clone();
            truncate_chars(&mut cut, 3);
        }
    }
}
