//! Literal masking of SQL texts, and the comments allowed to stay in them (a correlation marker,
//! sqlcommenter keys on [`SQLCOMMENTER_KEYS`]).
//!
//! Invariants: [`normalize_into`] never copies a string or numeric literal to its output, keeps
//! identifiers, parameters and quoted identifiers, and never panics (an unterminated literal or
//! comment is masked to the end of the text). The scanner here is the one the other parts reuse
//! (through [`normalize_with`]) with another meaning of the double quote.

use super::CORRELATION_ID_LEN;

pub(super) fn is_ident_byte(b: u8) -> bool {
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
pub(super) enum Dq {
    /// A quoted identifier (SQL): copied as it is.
    Identifier,
    /// Nothing special (YAML/XML plan text, whose strings are double-quoted): its contents are
    /// normalized like the rest.
    Plain,
    /// A value (a line of unknown shape): masked whole.
    Literal,
}

pub(super) fn normalize_with(sql: &str, out: &mut String, dq: Dq) {
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

/// Where the line of SQL text that starts at `from` ends: at the first `\n` outside a literal,
/// dollar quote or block comment (the constructs [`normalize_into`] masks or drops whole), or at
/// the end of the text. A literal that runs over a line break so stays in one piece, and is
/// masked whole when the line is normalized.
pub(super) fn sql_line_end(sql: &str, from: usize) -> usize {
    let b = sql.as_bytes();
    let n = b.len();
    let mut i = from;
    while i < n {
        let prev_ident = i > 0 && is_ident_byte(b[i - 1]);
        match b[i] {
            b'\n' => return i,
            b'\'' => {
                // `E'...'` (an `e` that does not end a longer word) takes backslash escapes.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && !(i > 1 && is_ident_byte(b[i - 2]));
                i = skip_quoted(b, i + 1, escapes);
            }
            b'"' => {
                // A quoted identifier never holds a line break; an unclosed one (the closing
                // quote of a CONTEXT's `SQL statement "..."`) ends with its line.
                i += 1;
                while i < n && b[i] != b'"' && b[i] != b'\n' {
                    i += 1;
                }
                if i < n && b[i] == b'"' {
                    i += 1;
                }
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => i = skip_block_comment(b, i + 2),
            b'-' if i + 1 < n && b[i + 1] == b'-' => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'$' if !prev_ident => match dollar_quote(b, i) {
                Some((body_end, tag_len)) => i = body_end + tag_len,
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    n
}

/// Index just past the closing quote of a `'...'` body starting at `i` (or the end).
pub(super) fn skip_quoted(b: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
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

/// Index just past the quote `q` that closes a body starting at `i` (a doubled `q` is part of the
/// body), or the end of the text when none closes it.
pub(super) fn skip_until_quote(b: &[u8], i: usize, q: u8) -> usize {
    quote_end(b, i, q).unwrap_or(b.len())
}

/// Index just past the quote `q` that closes a body starting at `i` (a doubled `q` is part of the
/// body); `None` when none closes it.
pub(super) fn quote_end(b: &[u8], mut i: usize, q: u8) -> Option<usize> {
    let n = b.len();
    while i < n {
        if b[i] == q {
            if i + 1 < n && b[i + 1] == q {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
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
}
