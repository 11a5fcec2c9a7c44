//! A small JSON value and writer: the agent builds every payload with it (no serde in the binary).
//!
//! Invariants: the output is always valid JSON (RFC 8259). Strings are escaped (quotes,
//! backslashes, every control character); non-ASCII text is written as UTF-8; non-finite floats
//! become `null`. Object keys keep their insertion order so payloads read the way they were built.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
