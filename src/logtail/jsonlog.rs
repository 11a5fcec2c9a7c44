//! jsonlog (PostgreSQL 15+) records: one JSON object per line, read by a small hand-written
//! parser for flat objects (no serde in the binary), mapped onto an [`Entry`].
//!
//! Invariants: any bytes are accepted without panicking; a line cut short (by the line cap) still
//! yields the keys read before the cut; nested values are skipped, not interpreted; string escapes
//! (including `\u` surrogate pairs) decode to UTF-8, invalid ones to U+FFFD.

use super::entry::{lossy, Entry, Level, Part};
use crate::json::Escape;

/// A value of a flat JSON object, borrowed from the line or the decoding scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A string, unescaped.
    Str(&'a [u8]),
    /// A number, as its text.
    Num(&'a [u8]),
    /// `true` / `false`.
    Bool(bool),
    /// `null`, or a nested object/array (skipped).
    Null,
}

/// Why a line is not a complete flat JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// The line does not start with `{`.
    NotAnObject,
    /// Unexpected byte at this offset.
    Syntax(usize),
    /// The line ended inside the object (keys before the end were delivered).
    Truncated,
}

/// Calls `f` for each `key: value` of the object in `line`, in order. Keys and string values are
/// unescaped into `key_buf`/`scratch`, reused between calls to avoid allocating per line.
pub fn parse_flat_object(
    line: &[u8],
    key_buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(&[u8], Value<'_>),
) -> Result<(), JsonError> {
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return Err(JsonError::NotAnObject);
    }
    i = skip_ws(line, i + 1);
    if line.get(i) == Some(&b'}') {
        return Ok(());
    }
    loop {
        match line.get(i) {
            Some(b'"') => {}
            None => return Err(JsonError::Truncated),
            Some(_) => return Err(JsonError::Syntax(i)),
        }
        let (end, complete) = read_string(line, i + 1, key_buf);
        if !complete {
            return Err(JsonError::Truncated);
        }
        i = skip_ws(line, end);
        match line.get(i) {
            Some(b':') => {}
            None => return Err(JsonError::Truncated),
            Some(_) => return Err(JsonError::Syntax(i)),
        }
        i = skip_ws(line, i + 1);
        match line.get(i) {
            None => return Err(JsonError::Truncated),
            Some(b'"') => {
                let (end, complete) = read_string(line, i + 1, scratch);
                f(key_buf, Value::Str(scratch));
                if !complete {
                    return Err(JsonError::Truncated);
                }
                i = end;
            }
            Some(b'{' | b'[') => {
                i = skip_nested(line, i).ok_or(JsonError::Truncated)?;
                f(key_buf, Value::Null);
            }
            Some(_) => {
                let start = i;
                while i < line.len() && !matches!(line[i], b',' | b'}' | b' ' | b'\t' | b'\r') {
                    i += 1;
                }
                let tok = &line[start..i];
                let v = match tok {
                    b"true" => Value::Bool(true),
                    b"false" => Value::Bool(false),
                    b"null" => Value::Null,
                    _ if tok
                        .iter()
                        .all(|c| c.is_ascii_digit() || b"+-.eE".contains(c)) =>
                    {
                        Value::Num(tok)
                    }
                    _ => return Err(JsonError::Syntax(start)),
                };
                f(key_buf, v);
            }
        }
        i = skip_ws(line, i);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b'}') => return Ok(()),
            None => return Err(JsonError::Truncated),
            Some(_) => return Err(JsonError::Syntax(i)),
        }
    }
}

fn skip_ws(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && matches!(line[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Skips a nested object or array starting at `i`; returns the index after it.
fn skip_nested(line: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    while i < line.len() {
        let c = line[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Decodes the string whose body starts at `i` into `out`; returns the index after the closing
/// quote and whether the string was closed.
fn read_string(line: &[u8], mut i: usize, out: &mut Vec<u8>) -> (usize, bool) {
    out.clear();
    loop {
        let run = line[i.min(line.len())..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\');
        let Some(run) = run else {
            out.extend_from_slice(&line[i.min(line.len())..]);
            return (line.len(), false);
        };
        out.extend_from_slice(&line[i..i + run]);
        i += run;
        if line[i] == b'"' {
            return (i + 1, true);
        }
        // A backslash escape; a malformed `\u` is kept as U+FFFD (a log line is read as far as
        // it goes).
        i = match crate::json::unescape(line, i + 1, out) {
            Escape::Done(next) => next,
            Escape::Cut => return (line.len(), false),
            Escape::BadUnicode(next) => {
                out.extend_from_slice("\u{fffd}".as_bytes());
                next
            }
        };
    }
}

/// Parses one jsonlog line into an entry; `None` when it has no recognisable primary severity.
/// A truncated line still yields what was read before the cut, marked truncated.
pub fn parse_line(
    line: &[u8],
    key_buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    correlation: &crate::normalize::CorrelationPattern,
) -> Option<Entry> {
    let mut e = Entry::default();
    let mut level = None;
    let result = parse_flat_object(line, key_buf, scratch, |key, value| {
        let text = match value {
            Value::Str(s) | Value::Num(s) => s,
            Value::Bool(_) | Value::Null => return,
        };
        let opt = || (!text.is_empty()).then(|| lossy(text));
        let num = || {
            std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
        };
        match key {
            b"timestamp" => e.timestamp = opt(),
            b"user" => e.user = opt(),
            b"dbname" => e.database = opt(),
            b"pid" => e.pid = num().and_then(|p| u32::try_from(p).ok()),
            b"remote_host" => e.remote_host = opt(),
            b"session_id" => e.session_id = opt(),
            b"line_num" => e.line_num = num().and_then(|n| u64::try_from(n).ok()),
            b"ps" => e.command_tag = opt(),
            b"vxid" => e.vxid = opt(),
            b"txid" => e.txid = num().and_then(|n| u64::try_from(n).ok()),
            b"error_severity" => level = Level::from_word(text),
            b"state_code" => e.sqlstate = opt(),
            b"message" => e.set(Part::Message, text),
            b"detail" => e.set(Part::Detail, text),
            b"hint" => e.set(Part::Hint, text),
            b"internal_query" => e.set(Part::InternalQuery, text),
            b"context" => e.set(Part::Context, text),
            b"statement" => e.set(Part::Statement, text),
            b"application_name" => e.application_name = opt(),
            b"backend_type" => e.backend_type = opt(),
            b"query_id" => e.query_id = num(),
            _ => {}
        }
    });
    match result {
        Ok(()) => {}
        Err(JsonError::Truncated) => e.truncated = true,
        Err(_) => return None,
    }
    let level = level.filter(|l| l.is_primary())?;
    e.level = Some(level);
    e.finish(correlation);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::CorrelationPattern;

    fn parse(line: &str) -> Option<Entry> {
        parse_line(
            line.as_bytes(),
            &mut Vec::new(),
            &mut Vec::new(),
            &CorrelationPattern::default(),
        )
    }

    #[test]
    fn pg15_line() {
        let line = r#"{"timestamp":"2024-05-01 12:00:00.123 UTC","user":"alice","dbname":"shop","pid":4242,"remote_host":"[local]","session_id":"66323f00.1092","line_num":3,"ps":"SELECT","session_start":"2024-05-01 11:59:00 UTC","vxid":"3/17","txid":0,"error_severity":"LOG","message":"duration: 1502.5 ms  statement: SELECT pg_sleep(1.5),\n  'caf\u00e9 \ud83d\ude00 \"q\"'","application_name":"bitville-0123abcd-0123-4567-89ab-0123456789ab","backend_type":"client backend","query_id":-12}"#;
        let e = parse(line).unwrap();
        assert_eq!(e.level, Some(Level::Log));
        assert_eq!(e.pid, Some(4242));
        assert_eq!(e.line_num, Some(3));
        assert_eq!(e.duration_ms, Some(1502.5));
        assert_eq!(e.query(), Some("SELECT pg_sleep(1.5),\n  'café 😀 \"q\"'"));
        assert_eq!(e.query_id, Some(-12));
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("0123abcd-0123-4567-89ab-0123456789ab")
        );
    }

    #[test]
    fn nested_skipped_truncated_kept_garbage_rejected() {
        let e = parse(r#"{"x":{"a":[1,"}"]},"error_severity":"ERROR","message":"m"}"#).unwrap();
        assert_eq!(e.message, "m");
        let e = parse(r#"{"error_severity":"WARNING","message":"cut her"#).unwrap();
        assert!(e.truncated);
        assert_eq!(e.message, "cut her");
        assert!(parse("not json").is_none());
        assert!(parse(r#"{"error_severity":"DETAIL","message":"m"}"#).is_none());
        assert!(parse(r#"{"message":"no severity"}"#).is_none());
        assert!(parse(r#"{"a":tru}"#).is_none());
        let e = parse(r#"{"error_severity":"LOG","message":"bad \ud800 \uZZZZ"}"#).unwrap();
        assert_eq!(e.message, "bad \u{fffd} \u{fffd}ZZZZ");
    }
}
