//! A lenient JSON reader for auto_explain's JSON plans: a plan cut short by the log entry cap is
//! read as far as it goes and closed where it stops.
//!
//! Invariants: nothing here panics on any input; nesting deeper than 256 is not followed; a
//! partial string or number at the cut is dropped, never guessed.

use crate::json::Json;

/// Parses JSON text into a [`Json`] value, leniently: a document cut short is closed where it
/// stops (a partial string or number is dropped). Returns the value and whether the document
/// was complete. Nesting deeper than 256 is not followed.
pub fn parse_json(text: &str) -> (Option<Json>, bool) {
    let mut p = JsonParser {
        b: text.as_bytes(),
        i: 0,
        complete: true,
    };
    let v = p.value(0);
    (v, p.complete)
}

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
    complete: bool,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    /// Inside an object or array closed by `close`: skips white space and commas, then gives
    /// the first byte of the next member (not consumed), or `None` when the container ended
    /// (`close` consumed, or the text ended: the document is then incomplete).
    fn next_member(&mut self, close: u8) -> Option<u8> {
        loop {
            self.ws();
            match self.b.get(self.i) {
                None => {
                    self.complete = false;
                    return None;
                }
                Some(&c) if c == close => {
                    self.i += 1;
                    return None;
                }
                Some(b',') => self.i += 1,
                Some(&c) => return Some(c),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        self.ws();
        if depth > 256 {
            self.complete = false;
            return None;
        }
        let Some(&c) = self.b.get(self.i) else {
            self.complete = false;
            return None;
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                while let Some(c) = self.next_member(b'}') {
                    if c != b'"' {
                        self.complete = false;
                        break;
                    }
                    let Some(key) = self.string() else { break };
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        self.complete = false;
                        break;
                    }
                    self.i += 1;
                    match self.value(depth + 1) {
                        Some(v) => fields.push((key.into(), v)),
                        None => break,
                    }
                }
                Some(Json::Object(fields))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                while self.next_member(b']').is_some() {
                    match self.value(depth + 1) {
                        Some(v) => items.push(v),
                        None => break,
                    }
                }
                Some(Json::Array(items))
            }
            b'"' => self.string().map(Json::Str),
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.i..];
                let (v, len) = if rest.starts_with(b"true") {
                    (Json::Bool(true), 4)
                } else if rest.starts_with(b"false") {
                    (Json::Bool(false), 5)
                } else if rest.starts_with(b"null") {
                    (Json::Null, 4)
                } else {
                    self.complete = false;
                    return None;
                };
                self.i += len;
                Some(v)
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
                    )
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i]).ok()?;
                if self.i >= self.b.len() {
                    // A number at the very end may be cut.
                    self.complete = false;
                    return None;
                }
                let v = if let Ok(u) = s.parse::<u64>() {
                    Json::UInt(u)
                } else if let Ok(n) = s.parse::<i64>() {
                    Json::Int(n)
                } else if let Ok(f) = s.parse::<f64>() {
                    Json::Float(f)
                } else {
                    self.complete = false;
                    return None;
                };
                Some(v)
            }
        }
    }

    /// A string starting at the current `"`; `None` (incomplete) when it never closes or an
    /// escape in it is cut or malformed.
    fn string(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        while self.i < self.b.len() {
            let c = self.b[self.i];
            match c {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    // A cut right after the backslash or inside `\uXXXX` leaves the string
                    // unclosed: the document is incomplete, like any other cut.
                    match crate::json::unescape(self.b, self.i + 1, &mut out) {
                        crate::json::Escape::Done(next) => self.i = next,
                        crate::json::Escape::Cut | crate::json::Escape::BadUnicode(_) => break,
                    }
                }
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        self.complete = false;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_cut_inside_an_escape_is_incomplete() {
        // auto_explain escapes the query text's newlines, so a cut lands after a backslash often.
        assert!(!parse_json(r#"{"Query Text": "SELECT 1\"#).1);
        assert!(!parse_json(r#"{"Query Text": "SELECT \u00"#).1);
        assert!(!parse_json(r#"["\"#).1);
        let cut = r#"{"Plan": {"Node Type": "Result", "Output": "a\"#;
        assert!(super::super::ship(cut, false, 65536, None).truncated);
        // A complete document with escapes stays complete.
        assert!(parse_json(r#"{"Query Text": "SELECT 1\n\u00e9"}"#).1);
    }
}
