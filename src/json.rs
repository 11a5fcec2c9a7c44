//! A small JSON value and writer: the agent builds every payload with it (no serde in the binary).
//!
//! Invariants: the output is always valid JSON (RFC 8259). Strings are escaped (quotes,
//! backslashes, every control character); non-ASCII text is written as UTF-8; non-finite floats
//! become `null`. Object keys keep their insertion order so payloads read the way they were built.
//! The readers of JSON text the agent does not write (jsonlog lines, auto_explain plans) decode
//! string escapes with the one [`unescape`] here, each deciding what a malformed escape means.

use std::borrow::Cow;
use std::fmt::Write as _;

/// An object key: almost always a literal, so it is borrowed, not allocated (an interval's
/// summary has some ten thousand fields).
pub type Key = Cow<'static, str>;

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
    Object(Vec<(Key, Json)>),
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
    pub fn field(mut self, key: impl Into<Key>, value: impl Into<Json>) -> Json {
        self.push(key, value);
        self
    }

    /// Adds `key: value` to an object in place.
    pub fn push(&mut self, key: impl Into<Key>, value: impl Into<Json>) {
        match self {
            Json::Object(fields) => fields.push((key.into(), value.into())),
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
                if *i < 0 {
                    out.push('-');
                }
                push_digits(i.unsigned_abs(), out);
            }
            Json::UInt(u) => push_digits(*u, out),
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

/// The decimal digits of `n`, without the formatting machinery (integers are most of a
/// payload's numbers).
fn push_digits(mut n: u64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or("0"));
}

fn write_float(f: f64, out: &mut String) {
    let a = f.abs();
    if !f.is_finite() {
        out.push_str("null");
    } else if f == f.trunc() && a < 1e15 {
        // Keep a fractional part so readers see a float, not an integer.
        if f.is_sign_negative() {
            out.push('-');
        }
        push_digits(a as u64, out);
        out.push_str(".0");
    } else if let Some(millis) = exact_millis(a) {
        // Most of a payload's floats are rounded to milliseconds or 3 decimals: their digits
        // are written directly, the same text `Display` gives, at a tenth of its cost.
        if f.is_sign_negative() {
            out.push('-');
        }
        push_digits(millis / 1000, out);
        let frac = millis % 1000;
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let n = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        out.push('.');
        for d in &digits[..n] {
            out.push(char::from(b'0' + *d as u8));
        }
    } else {
        // Rust's `Display` for f64 is the shortest text that round-trips, and never uses
        // exponent notation, so it is valid JSON.
        let _ = write!(out, "{f}");
    }
}

/// `a × 1000` when `a` (finite, positive, below 10^12) is the double nearest to a decimal with
/// at most three decimals. Then that decimal, with its trailing zeros cut, is the shortest text
/// that reads back as `a` (doubles below 10^12 are closer than 0.001 apart), which is what
/// `Display` writes.
fn exact_millis(a: f64) -> Option<u64> {
    if a >= 1e12 {
        return None;
    }
    let m = (a * 1000.0).round();
    (m / 1000.0 == a).then_some(m as u64)
}

/// The bytes [`write_str`] looks at: the start of every character that may need an escape.
const MAY_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t[0xE2] = true;
    t
};

/// Appends `s` as a quoted JSON string.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    // Byte by byte: every character that needs an escape starts with an ASCII byte or, for
    // U+2028 and U+2029, with 0xE2; the other bytes of a UTF-8 sequence are never those.
    while i < bytes.len() {
        let b = bytes[i];
        if !MAY_ESCAPE[usize::from(b)] {
            i += 1;
            continue;
        }
        let (len, escape): (usize, Option<&str>) = match b {
            b'"' => (1, Some("\\\"")),
            b'\\' => (1, Some("\\\\")),
            b'\n' => (1, Some("\\n")),
            b'\r' => (1, Some("\\r")),
            b'\t' => (1, Some("\\t")),
            0..=0x1f | 0x7f => (1, None),
            0xE2 if matches!(bytes.get(i + 1..i + 3), Some([0x80, 0xA8 | 0xA9])) => (3, None),
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let c = s[i..].chars().next().map_or(0, |c| c as u32);
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        i += len;
        start = i;
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
        // Line and paragraph separators are escaped; other characters of their lead byte are not.
        let s = Json::from("\u{e9}\u{2028}x\u{2029}\u{2020}\u{1F600}\t");
        assert_eq!(
            s.to_json_string(),
            "\"\u{e9}\\u2028x\\u2029\u{2020}\u{1F600}\\t\""
        );
    }

    #[test]
    fn integers_are_written_in_decimal_at_both_ends_of_their_range() {
        for (v, text) in [
            (Json::Int(0), "0"),
            (Json::Int(-7), "-7"),
            (Json::Int(i64::MIN), "-9223372036854775808"),
            (Json::Int(i64::MAX), "9223372036854775807"),
            (Json::UInt(10), "10"),
            (Json::UInt(u64::MAX), "18446744073709551615"),
        ] {
            assert_eq!(v.to_json_string(), text);
        }
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
    fn floats_are_written_as_display_writes_them() {
        let reference = |f: f64| {
            if !f.is_finite() {
                "null".to_string()
            } else if f == f.trunc() && f.abs() < 1e15 {
                format!("{f:.1}")
            } else {
                format!("{f}")
            }
        };
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut values = vec![
            0.0,
            -0.0,
            0.001,
            0.1,
            0.5,
            1.5,
            -2.25,
            999.999,
            0.3,
            1e12,
            1e12 - 0.001,
        ];
        for _ in 0..20_000 {
            let k = rng.next() % 10_000_000_000_000;
            let scale = [1.0, 10.0, 100.0, 1000.0, 1e4, 1e6][(rng.next() % 6) as usize];
            let sign = if rng.next() % 4 == 0 { -1.0 } else { 1.0 };
            values.push(sign * (k % 100_000_000) as f64 / scale);
            values.push(sign * k as f64 / 1000.0);
            values.push(f64::from_bits(rng.next()));
        }
        for f in values {
            let mut out = String::new();
            write_float(f, &mut out);
            assert_eq!(out, reference(f), "{f:?}");
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
                obj.push(key, value);
            }
            let text = obj.to_json_string();
            let parsed: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
            assert!(parsed.is_object(), "{text}");
        }
    }
}
