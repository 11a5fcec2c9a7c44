//! A small JSON reader for the flight recorder's own lines (the binary has no serde): text into
//! [`Json`], the value the agent writes with.
//!
//! Invariants: never panics and never recurses deeper than [`MAX_DEPTH`], whatever the input
//! (a damaged file is expected); an error names the byte offset.

use crate::json::Json;

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Parses one JSON text; trailing whitespace is allowed, anything else after it is an error.
pub fn parse(text: &str) -> Result<Json, String> {
    let mut p = Parser {
        b: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(format!("unexpected data at byte {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.b[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.ws();
        let Some(&c) = self.b.get(self.i) else {
            return self.err("unexpected end");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return self.err("expected a key");
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return self.err("expected ':'");
                    }
                    let v = self.value(depth + 1)?;
                    fields.push((k.into(), v));
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(Json::Object(fields));
                    }
                    return self.err("expected ',' or '}'");
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(Json::Array(items));
                    }
                    return self.err("expected ',' or ']'");
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' if self.eat("true") => Ok(Json::Bool(true)),
            b'f' if self.eat("false") => Ok(Json::Bool(false)),
            b'n' if self.eat("null") => Ok(Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => self.err("unexpected character"),
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let mut float = false;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => float = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
        if !float {
            if let Ok(u) = text.parse::<u64>() {
                return Ok(Json::UInt(u));
            }
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Json::Int(i));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Json::Float(f)),
            _ => {
                self.i = start;
                self.err("bad number")
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => match self.b.get(self.i) {
                    None => return self.err("unterminated escape"),
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                        match crate::json::unescape(self.b, self.i, &mut out) {
                            crate::json::Escape::Done(next) => self.i = next,
                            crate::json::Escape::Cut => return self.err("unterminated escape"),
                            crate::json::Escape::BadUnicode(_) => {
                                return self.err("bad \\u escape")
                            }
                        }
                    }
                    Some(_) => return self.err("bad escape"),
                },
                _ => out.push(c),
            }
        }
        String::from_utf8(out).or_else(|_| self.err("invalid UTF-8 in string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_what_the_agent_writes() {
        let v = Json::object()
            .field("a", 1u64)
            .field("b", -2i64)
            .field("c", 1.5)
            .field("d", "x\"y\\z\n\u{e9}\u{1F600}")
            .field("e", Json::Array(vec![Json::Null, true.into(), 2.0.into()]))
            .field("f", Json::object());
        let text = v.to_json_string();
        assert_eq!(parse(&text).unwrap(), v);
        assert_eq!(
            parse(r#""\ud83d\ude00 \u00e9""#).unwrap(),
            Json::Str("\u{1F600} \u{e9}".into())
        );
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "{\"a\":",
            "{\"a\":1,}",
            "[1 2]",
            "\"abc",
            "\"\\u12\"",
            "tru",
            "-",
            "1e999",
            "{\"a\":1} x",
            "\u{0}",
            "{\"t\":1.5,\"k\":\"row\",\"v\":{\"t\":",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).unwrap_err().contains("deeply"));
    }
}
