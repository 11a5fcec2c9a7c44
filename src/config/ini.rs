//! The INI file: a strict line-by-line validator and the rust-ini read of the values.
//!
//! Invariants: every line is blank, a comment, a `[section]` header or a `key = value` line, or
//! it is an error naming its line number and never its text (a broken line may hold a secret);
//! values are kept verbatim (no quotes, escapes or inline comments).

use std::collections::HashMap;

/// One `key = value` line of an INI file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IniEntry {
    /// The section it is in ("" before the first header).
    pub(super) section: String,
    /// The key, lower case.
    pub(super) key: String,
    /// The value, trimmed, otherwise verbatim (no quotes, escapes or inline comments).
    pub(super) value: String,
    /// 1-based line number.
    pub(super) line: usize,
}

/// The `key = value` lines of INI text, in file order (a repeated key once per line). The strict
/// validator runs first: it rejects what rust-ini would misread and knows the lines; rust-ini
/// then reads the values, and for the line that counts (the last of a key) the two must agree.
pub(super) fn read(text: &str) -> Result<Vec<IniEntry>, (usize, String)> {
    let entries = parse_ini(text)?;
    let parsed = rust_ini_values(text)?;
    let last: HashMap<(String, String), usize> = entries
        .iter()
        .map(|e| ((e.section.clone(), e.key.clone()), e.line))
        .collect();
    for entry in &entries {
        let id = (entry.section.clone(), entry.key.clone());
        match parsed.get(&id) {
            // An earlier line of a repeated key: the later one is what counts.
            Some(_) if last.get(&id) != Some(&entry.line) => {}
            Some(value) if *value == entry.value => {}
            _ => {
                return Err((
                    entry.line,
                    "this line cannot be read unambiguously (check its brackets and =)".into(),
                ))
            }
        }
    }
    Ok(entries)
}

/// Whether `s` can be a section or key name: letters, digits, `_`, `-` and `.`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Parses INI text strictly, line by line: every line is blank, a comment (`;` or `#`), a
/// `[section]` header or a `key = value` (or `key: value`) line, and anything else is an error
/// with its line number. Values are kept verbatim (a password may hold `#`, `;`, quotes and
/// backslashes, as the Python agent's configparser kept them). Errors never quote the line: a
/// broken line may hold a secret.
fn parse_ini(text: &str) -> Result<Vec<IniEntry>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut section = String::new();
    let mut entries = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        match parse_line(raw.trim()).map_err(|reason| (line, reason.to_string()))? {
            Line::Skip => {}
            Line::Section(name) => section = name.to_string(),
            Line::Entry(key, value) => entries.push(IniEntry {
                section: section.clone(),
                key: key.to_ascii_lowercase(),
                value: value.to_string(),
                line,
            }),
        }
    }
    Ok(entries)
}

/// What one trimmed line of an INI file is.
enum Line<'a> {
    /// Blank or a comment.
    Skip,
    /// A `[section]` header: the name.
    Section(&'a str),
    /// A `key = value` line: the key as written and the trimmed value.
    Entry(&'a str, &'a str),
}

/// Reads one trimmed line, or says why it is none of the lines an INI file may have.
fn parse_line(t: &str) -> Result<Line<'_>, &'static str> {
    if t.is_empty() || is_comment(t) {
        return Ok(Line::Skip);
    }
    if let Some(inner) = t.strip_prefix('[') {
        if inner.starts_with('[') {
            return Err(
                "\"[[\" is not a section header; write one pair of brackets, e.g. [listener]",
            );
        }
        let end = inner
            .find(']')
            .ok_or("the section header is not closed: a \"]\" is missing")?;
        let rest = inner[end + 1..].trim();
        if !(rest.is_empty() || is_comment(rest)) {
            return Err(
                "text after the section header's \"]\" (a header stands alone on its line)",
            );
        }
        let name = named(
            inner[..end].trim(),
            "the section name is empty or not a name (letters, digits, _ - .)",
        )?;
        return Ok(Line::Section(name));
    }
    let pos = t.find(['=', ':']).ok_or(
        "neither a [section] header, a key = value line nor a comment (is the = missing?)",
    )?;
    let key = named(
        t[..pos].trim(),
        "the key before the = is empty or not a name (letters, digits, _ - .)",
    )?;
    Ok(Line::Entry(key, t[pos + 1..].trim()))
}

/// Whether trimmed text is a comment (`;` or `#`).
fn is_comment(t: &str) -> bool {
    t.starts_with(';') || t.starts_with('#')
}

/// `s` if it [is a name](is_name), else the error `otherwise`.
fn named<'a>(s: &'a str, otherwise: &'static str) -> Result<&'a str, &'static str> {
    if is_name(s) {
        Ok(s)
    } else {
        Err(otherwise)
    }
}

/// The values rust-ini reads from already validated text, by (section, lower-case key); the
/// last of a repeated key. Its errors carry no text of the line.
fn rust_ini_values(text: &str) -> Result<HashMap<(String, String), String>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let options = ini::ParseOption {
        // The Python agent's configparser kept quotes and backslashes as they are; a password
        // containing them must reach the server unchanged.
        enabled_quote: false,
        enabled_escape: false,
        ..ini::ParseOption::default()
    };
    let parsed = ini::Ini::load_from_str_opt(text, options)
        .map_err(|e| (e.line + 1, "not readable as INI".to_string()))?;
    let mut values = HashMap::new();
    for (section, props) in parsed.iter() {
        for (key, value) in props.iter() {
            values.insert(
                (
                    section.unwrap_or("").trim().to_string(),
                    key.trim().to_ascii_lowercase(),
                ),
                value.trim().to_string(),
            );
        }
    }
    Ok(values)
}
