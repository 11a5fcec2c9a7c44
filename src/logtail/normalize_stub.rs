//! STUB FOR THE LEAD TO REPLACE: a minimal literal normalizer so log payloads can honour
//! `query_text = normalized` before `src/normalize.rs` (written on another branch) is merged.
//! Once it is, pass `crate::normalize::<fn>` as [`super::build::PayloadOptions::normalize`] and
//! delete this file.
//!
//! It replaces string literals (`'...'` with `''` escapes, `E'...'` with backslash escapes,
//! dollar quotes `$tag$...$tag$`) and numeric literals with `?`, leaving identifiers, `$1`
//! parameters, comments and keywords alone. Invariants: never panics, the output is never
//! longer than the input (each literal becomes one `?`), never keeps a literal's text.

/// The query with its string and numeric literals replaced by `?`.
pub fn normalize_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && (ident(b[i - 1]) || b[i - 1] == b'$');
        let lit_end = if c == b'\'' {
            let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e') && !(i > 1 && ident(b[i - 2]));
            let start = if escapes { i - 1 } else { i };
            Some((start, skip_string(b, i + 1, escapes)))
        } else if c == b'$' && !prev_ident {
            dollar_tag(b, i).map(|tag_end| {
                let tag = &b[i..tag_end];
                let body = &b[tag_end..];
                let end = body
                    .windows(tag.len())
                    .position(|w| w == tag)
                    .map_or(b.len(), |p| tag_end + p + tag.len());
                (i, end)
            })
        } else if c.is_ascii_digit() && !prev_ident {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                j += 1;
            }
            Some((i, j))
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            // A comment: copy it as is.
            i = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            continue;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = b[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(b.len(), |p| i + 2 + p + 2);
            continue;
        } else if c == b'"' {
            // A quoted identifier: copy it as is.
            i = b[i + 1..]
                .iter()
                .position(|&x| x == b'"')
                .map_or(b.len(), |p| i + 1 + p + 1);
            continue;
        } else {
            None
        };
        match lit_end {
            Some((start, end)) => {
                out.push_str(sql.get(copied..start).unwrap_or(""));
                out.push('?');
                i = end.max(i + 1);
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(sql.get(copied..).unwrap_or(""));
    out
}

/// The index after a string literal whose body starts at `i`.
fn skip_string(b: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// For `$tag$` or `$$` at `i`, the index after the opening tag.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        if j == i + 1 && b[j].is_ascii_digit() {
            // `$1` is a parameter, not a tag.
            return None;
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::normalize_literals as n;

    #[test]
    fn literals_go_identifiers_stay() {
        assert_eq!(
            n("SELECT * FROM t1 WHERE a = 'x''y' AND b = 42"),
            "SELECT * FROM t1 WHERE a = ? AND b = ?"
        );
        assert_eq!(
            n("SELECT E'a\\'b', 1.5e3, $1, col2"),
            "SELECT ?, ?, $1, col2"
        );
        assert_eq!(n("SELECT $$x'y$$, $f$ 1 $f$"), "SELECT ?, ?");
        assert_eq!(
            n("/* bitville-1 */ SELECT \"a1'\" -- 'c' 9\n, 7"),
            "/* bitville-1 */ SELECT \"a1'\" -- 'c' 9\n, ?"
        );
        assert_eq!(n("$1 = 'secret', $2 = '3'"), "$1 = ?, $2 = ?");
        assert_eq!(n("unterminated 'abc"), "unterminated ?");
    }
}
