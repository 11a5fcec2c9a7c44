//! A small JSON value and writer: the agent builds every payload with it (no serde in the binary).
//!
//! Invariants: the output is always valid JSON (RFC 8259). Strings are escaped (quotes,
//! backslashes, every control character); non-ASCII text is written as UTF-8; non-finite floats
//! become `null`. Object keys keep their insertion order so payloads read the way they were built.
//! The readers of JSON text the agent does not write (jsonlog lines, auto_explain plans) decode
//! string escapes with the one [`unescape`] here, each deciding what a malformed escape means.

use std::fmt::Write as _;

/// A JSON value as the agent builds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (counters that may exceed `i64`).
    UInt(u64),
    /// A float; NaN and infinities are written as `null`.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object whose keys keep insertion order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An empty object, to be filled with [`Json::field`].
    pub fn object() -> Json {
        Json::Object(Vec::new())
    }

    /// Adds `key: value` to an object and returns it (builder style).
    ///
    /// Panics in debug builds when called on something that is not an object: that is a bug in
    /// the agent, not bad input.
    pub fn field(mut self, key: &str, value: impl Into<Json>) -> Json {
        self.push(key, value);
        self
    }

    /// Adds `key: value` to an object in place.
    pub fn push(&mut self, key: &str, value: impl Into<Json>) {
        match self {
            Json::Object(fields) => fields.push((key.to_string(), value.into())),
            _ => debug_assert!(false, "Json::push on a non-object"),
        }
    }

    /// The value of `key` when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Appends the JSON text of this value to `out`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Json::Float(f) => write_float(*f, out),
            Json::Str(s) => write_str(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_to(out);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(key, out);
                    out.push(':');
                    value.write_to(out);
                }
                out.push('}');
            }
        }
    }

    /// The JSON text of this value.
    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }
}

fn write_float(f: f64, out: &mut String) {
    if !f.is_finite() {
        out.push_str("null");
    } else if f == f.trunc() && f.abs() < 1e15 {
        // Keep a fractional part so readers see a float, not an integer.
        let _ = write!(out, "{f:.1}");
    } else {
        // Rust's `Display` for f64 is the shortest text that round-trips, and never uses
        // exponent notation, so it is valid JSON.
        let _ = write!(out, "{f}");
    }
}

/// Appends `s` as a quoted JSON string.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl From<bool> for Json {
    fn from(v: bool) -> Json {
        Json::Bool(v)
    }
}
impl From<i64> for Json {
    fn from(v: i64) -> Json {
        Json::Int(v)
    }
}
impl From<i32> for Json {
    fn from(v: i32) -> Json {
        Json::Int(v.into())
    }
}
impl From<u32> for Json {
    fn from(v: u32) -> Json {
        Json::UInt(v.into())
    }
}
impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::UInt(v)
    }
}
impl From<usize> for Json {
    fn from(v: usize) -> Json {
        Json::UInt(v as u64)
    }
}
impl From<f64> for Json {
    fn from(v: f64) -> Json {
        Json::Float(v)
    }
}
impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_string())
    }
}
impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}
impl From<&String> for Json {
    fn from(v: &String) -> Json {
        Json::Str(v.clone())
    }
}
impl From<Vec<Json>> for Json {
    fn from(v: Vec<Json>) -> Json {
        Json::Array(v)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

/// What [`unescape`] made of one backslash escape inside a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Decoded into the output; reading goes on at this index.
    Done(usize),
    /// The text ends right after the backslash.
    Cut,
    /// `\u` is not followed by four hex digits (or the text ends inside them); nothing was
    /// written, and the index is the one right after the `u`.
    BadUnicode(usize),
}

/// Decodes the escape whose backslash is at `at - 1` (`at` is the index of the letter after it)
/// into `out` as UTF-8: `\n`, `\t`, `\r`, `\b`, `\f`, `\uXXXX` (a high surrogate with its low
/// one as one character; a lone surrogate as U+FFFD), and any other byte as itself (`\"`, `\\`,
/// `\/`). The one JSON string-escape decoder of the readers (jsonlog lines, auto_explain plans, the
/// flight recorder).
pub fn unescape(text: &[u8], at: usize, out: &mut Vec<u8>) -> Escape {
    let Some(&esc) = text.get(at) else {
        return Escape::Cut;
    };
    let mut i = at + 1;
    match esc {
        b'n' => out.push(b'\n'),
        b't' => out.push(b'\t'),
        b'r' => out.push(b'\r'),
        b'b' => out.push(8),
        b'f' => out.push(12),
        b'u' => {
            let Some(mut cp) = hex4(text, i) else {
                return Escape::BadUnicode(i);
            };
            i += 4;
            if (0xD800..0xDC00).contains(&cp) && text.get(i..i + 2) == Some(b"\\u") {
                // A high surrogate must be followed by `\uDC00`..`\uDFFF`.
                if let Some(lo) = hex4(text, i + 2).filter(|lo| (0xDC00..0xE000).contains(lo)) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
            out.extend_from_slice(ch.encode_utf8(&mut [0u8; 4]).as_bytes());
        }
        other => out.push(other),
    }
    Escape::Done(i)
}

/// Four hex digits at `i`, if there are.
fn hex4(text: &[u8], i: usize) -> Option<u32> {
    let s = std::str::from_utf8(text.get(i..i + 4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_to_utf8_and_say_where_they_end_or_why_not() {
        let decode = |text: &str| {
            let mut out = Vec::new();
            let r = unescape(text.as_bytes(), 1, &mut out);
            (String::from_utf8(out).unwrap(), r)
        };
        assert_eq!(decode(r"\nx"), ("\n".into(), Escape::Done(2)));
        assert_eq!(decode(r#"\"x"#), ("\"".into(), Escape::Done(2)));
        assert_eq!(decode(r"\u00e9x"), ("é".into(), Escape::Done(6)));
        assert_eq!(decode(r"\ud83d\ude00x"), ("😀".into(), Escape::Done(12)));
        // A lone high surrogate, and one followed by something else than a low one.
        assert_eq!(decode(r"\ud83dx"), ("\u{fffd}".into(), Escape::Done(6)));
        assert_eq!(
            decode(r"\ud83d\u0041"),
            ("\u{fffd}".into(), Escape::Done(6))
        );
        assert_eq!(decode(r"\"), (String::new(), Escape::Cut));
        assert_eq!(decode(r"\u00"), (String::new(), Escape::BadUnicode(2)));
        assert_eq!(decode(r"\uzzzzx"), (String::new(), Escape::BadUnicode(2)));
    }

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        let s = Json::from("a\"b\\c\nd\u{1}e\u{7f}");
        assert_eq!(s.to_json_string(), r#""a\"b\\c\nd\u0001e\u007f""#);
    }

    #[test]
    fn non_finite_floats_become_null() {
        let v = Json::Array(vec![
            f64::NAN.into(),
            f64::INFINITY.into(),
            1.5.into(),
            2.0.into(),
        ]);
        assert_eq!(v.to_json_string(), "[null,null,1.5,2.0]");
    }

    #[test]
    fn objects_keep_insertion_order() {
        let v = Json::object()
            .field("b", 1i64)
            .field("a", Option::<i64>::None);
        assert_eq!(v.to_json_string(), r#"{"b":1,"a":null}"#);
    }

    /// A tiny xorshift PRNG, so the property tests need no dependency and repeat exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A character biased towards the ones that need escaping.
        fn char(&mut self) -> char {
            let pick = self.next() % 10;
            let cp = match pick {
                0 => (self.next() % 0x20) as u32,
                1 => ['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{2029}'][(self.next() % 6) as usize]
                    as u32,
                2 => 0x80 + (self.next() % 0x780) as u32,
                3 => 0x1_0000 + (self.next() % 0xF_0000) as u32,
                4 => 0xE000 + (self.next() % 0x2000) as u32,
                _ => 0x20 + (self.next() % 0x5f) as u32,
            };
            char::from_u32(cp).unwrap_or('?')
        }

        fn string(&mut self) -> String {
            let n = (self.next() % 40) as usize;
            (0..n).map(|_| self.char()).collect()
        }
    }

    #[test]
    fn random_strings_round_trip_through_a_real_parser() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..5000 {
            let s = rng.string();
            let text = Json::from(s.as_str()).to_json_string();
            let parsed: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
            assert_eq!(parsed.as_str(), Some(s.as_str()), "{text:?}");
        }
    }

    #[test]
    fn random_objects_with_random_keys_and_floats_parse() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..500 {
            let mut obj = Json::object();
            for _ in 0..(rng.next() % 8) {
                let key = rng.string();
                let value = match rng.next() % 4 {
                    0 => Json::Float(f64::from_bits(rng.next())),
                    1 => Json::Int(rng.next() as i64),
                    2 => Json::UInt(rng.next()),
                    _ => Json::Str(rng.string()),
                };
                obj.push(&key, value);
            }
            let text = obj.to_json_string();
            let parsed: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
            assert!(parsed.is_object(), "{text}");
        }
    }
}
