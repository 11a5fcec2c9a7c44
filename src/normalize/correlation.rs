//! Finding the correlation ID of a request in a session's `application_name` and raw statement
//! texts: a `/* correlation:<uuid> */` comment, `<prefix><uuid>`, or a W3C traceparent.
//!
//! Invariants: it runs on the raw text, before normalization or truncation; the most trusted
//! marker wins (comment, then `application_name`, then traceparent), and only the configured
//! sources are trusted; it never panics and returns only ASCII slices of its input.

/// Where a correlation ID was found, in order of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CorrelationSource {
    /// A `/* correlation:<uuid> */` comment in the query text (the PHP agent's form).
    Comment,
    /// `application_name` holding `<prefix><uuid>` (the Python agent's convention).
    ApplicationName,
    /// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) in `application_name` or in a
    /// sqlcommenter comment (`/*traceparent='00-...'*/`); the ID is the trace id.
    Traceparent,
}

impl CorrelationSource {
    /// Every source, in order of trust.
    pub const ALL: [CorrelationSource; 3] = [
        CorrelationSource::Comment,
        CorrelationSource::ApplicationName,
        CorrelationSource::Traceparent,
    ];

    /// The configuration and payload spelling (`comment`, `application_name`, `traceparent`).
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationSource::Comment => "comment",
            CorrelationSource::ApplicationName => "application_name",
            CorrelationSource::Traceparent => "traceparent",
        }
    }

    /// The source spelled `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<CorrelationSource> {
        let name = name.trim();
        CorrelationSource::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

/// Which markers are trusted (`[collection] correlation_sources`). Defaults to all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationSources {
    /// `/* correlation:<uuid> */` comments.
    pub comment: bool,
    /// `application_name` with the configured prefix.
    pub application_name: bool,
    /// W3C traceparent in `application_name` or a sqlcommenter comment.
    pub traceparent: bool,
}

impl Default for CorrelationSources {
    fn default() -> Self {
        CorrelationSources {
            comment: true,
            application_name: true,
            traceparent: true,
        }
    }
}

impl CorrelationSources {
    /// Parses a comma-separated list (`comment,application_name,traceparent`); an empty list
    /// turns correlation off. The error names the unknown entry.
    pub fn parse(list: &str) -> Result<CorrelationSources, String> {
        let mut s = CorrelationSources {
            comment: false,
            application_name: false,
            traceparent: false,
        };
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match CorrelationSource::parse(item) {
                Some(CorrelationSource::Comment) => s.comment = true,
                Some(CorrelationSource::ApplicationName) => s.application_name = true,
                Some(CorrelationSource::Traceparent) => s.traceparent = true,
                None => {
                    return Err(format!(
                        "\"{item}\" is not one of comment, application_name, traceparent"
                    ))
                }
            }
        }
        Ok(s)
    }

    /// Whether `source` is trusted.
    pub fn accepts(self, source: CorrelationSource) -> bool {
        match source {
            CorrelationSource::Comment => self.comment,
            CorrelationSource::ApplicationName => self.application_name,
            CorrelationSource::Traceparent => self.traceparent,
        }
    }

    /// The list as configured (`comment,application_name,traceparent`).
    pub fn to_list(self) -> String {
        CorrelationSource::ALL
            .into_iter()
            .filter(|s| self.accepts(*s))
            .map(CorrelationSource::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A correlation ID and the marker it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The ID as the listener matches it: the bare UUID, or a traceparent's 32-hex trace id.
    pub id: String,
    /// Which marker carried it.
    pub source: CorrelationSource,
}

/// How correlation IDs are found: the `application_name` prefix (`<prefix>` followed by 36
/// characters of `[a-f0-9-]`, the Python agent's `bitville-([a-f0-9-]{36})`) and which markers
/// are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationPattern {
    /// The text before the ID in `application_name`. Defaults to `bitville-`.
    pub prefix: String,
    /// The markers trusted. Defaults to all.
    pub sources: CorrelationSources,
}

/// Default correlation prefix set by the PHP agent.
pub const DEFAULT_CORRELATION_PREFIX: &str = "bitville-";

/// Length of the ID after the prefix (a UUID with dashes).
pub const CORRELATION_ID_LEN: usize = 36;

impl Default for CorrelationPattern {
    fn default() -> Self {
        CorrelationPattern {
            prefix: DEFAULT_CORRELATION_PREFIX.to_string(),
            sources: CorrelationSources::default(),
        }
    }
}

impl CorrelationPattern {
    /// The first `<prefix><uuid>` ID in `application_name`, if any (whatever the sources).
    pub fn extract<'a>(&self, application_name: &'a str) -> Option<&'a str> {
        extract_correlation_id(application_name, &self.prefix)
    }

    /// The most trusted correlation ID in a session's `application_name` and raw statement
    /// texts (the query, a log entry's STATEMENT): a `/* correlation:<uuid> */` comment anywhere
    /// in a text, then `application_name` with the prefix, then a traceparent in
    /// `application_name` or in a sqlcommenter comment of a text. Run it on the raw text, before
    /// normalization or truncation.
    pub fn find(&self, application_name: Option<&str>, texts: &[&str]) -> Option<Correlation> {
        let s = self.sources;
        let hit = |id: &str, source| {
            Some(Correlation {
                id: id.to_string(),
                source,
            })
        };
        if s.comment {
            if let Some(id) = texts.iter().find_map(|t| extract_comment_correlation(t)) {
                return hit(id, CorrelationSource::Comment);
            }
        }
        if s.application_name {
            if let Some(id) = application_name.and_then(|a| self.extract(a)) {
                return hit(id, CorrelationSource::ApplicationName);
            }
        }
        if s.traceparent {
            let found = application_name.and_then(find_traceparent).or_else(|| {
                texts
                    .iter()
                    .find_map(|t| extract_sqlcommenter_traceparent(t))
            });
            if let Some(trace) = found {
                return Some(Correlation {
                    id: trace,
                    source: CorrelationSource::Traceparent,
                });
            }
        }
        None
    }
}

/// The first `<prefix>[a-f0-9-]{36}` in `text`, returning the 36 characters: exactly what the
/// Python agent's `re.search(r"bitville-([a-f0-9-]{36})")` captured, the ID the PHP agent reports.
pub fn extract_correlation_id<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let b = text.as_bytes();
    let p = prefix.as_bytes();
    if p.is_empty() && b.len() < CORRELATION_ID_LEN {
        return None;
    }
    let mut from = 0;
    while from + p.len() + CORRELATION_ID_LEN <= b.len() {
        let at = from + find_bytes(&b[from..], p)?;
        let id_start = at + p.len();
        let id_end = id_start + CORRELATION_ID_LEN;
        if id_end <= b.len()
            && b[id_start..id_end]
                .iter()
                .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'-')
        {
            // All bytes are ASCII, so these are character boundaries.
            return Some(&text[id_start..id_end]);
        }
        from = at + 1;
    }
    None
}

/// The ID of the first `/* correlation:<id> */` comment anywhere in `text`: the PHP agent's
/// case-insensitive `\/\*\s*correlation:([a-f0-9-]+)\s*\*\/`, returned as written.
pub fn extract_comment_correlation(text: &str) -> Option<&str> {
    const KEY: &[u8] = b"correlation:";
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"/*") {
        let open = from + off;
        from = open + 2;
        let mut i = skip_space(b, open + 2);
        if b.len() < i + KEY.len() || !b[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            continue;
        }
        i += KEY.len();
        let id_start = i;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'-') {
            i += 1;
        }
        let id_end = i;
        let close = skip_space(b, i);
        if id_end > id_start && b[close..].starts_with(b"*/") {
            // The ID bytes are ASCII, so these are character boundaries.
            return Some(&text[id_start..id_end]);
        }
    }
    None
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The trace id of the first W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex,
/// trace and span id not all zeros) anywhere in `text`.
pub fn find_traceparent(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"00-") {
        let at = from + off;
        from = at + 1;
        // Not the tail of a longer hex run (`a00-...`).
        if at > 0 && b[at - 1].is_ascii_hexdigit() {
            continue;
        }
        if let Some(trace) = parse_traceparent(&b[at..]) {
            return Some(trace);
        }
    }
    None
}

/// The trace id when `b` starts with a valid traceparent.
fn parse_traceparent(b: &[u8]) -> Option<String> {
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    // 00-{32}-{16}-{2}: 55 bytes.
    if b.len() < 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&b[3..35], &b[36..52], &b[53..55]);
    if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    if b.len() > 55 && b[55].is_ascii_hexdigit() {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || span.iter().all(|&c| c == b'0') {
        return None;
    }
    Some(String::from_utf8_lossy(trace).into_owned())
}

/// The trace id of a sqlcommenter `traceparent='...'` key inside a `/* ... */` comment of
/// `text` (the value may be URL-encoded, `%2D` for `-`).
pub fn extract_sqlcommenter_traceparent(text: &str) -> Option<String> {
    const KEY: &[u8] = b"traceparent='";
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = find_bytes(&b[from..], b"/*") {
        let open = from + off;
        let body_start = open + 2;
        let body_end = body_start + find_bytes(&b[body_start..], b"*/")?;
        from = body_end + 2;
        let body = &b[body_start..body_end];
        let mut at = 0;
        while let Some(k) = find_bytes(&body[at..], KEY) {
            let v_start = at + k + KEY.len();
            at = v_start;
            let Some(len) = body[v_start..].iter().position(|&c| c == b'\'') else {
                break;
            };
            let decoded = url_decode(&body[v_start..v_start + len]);
            if let Some(trace) = parse_traceparent(&decoded) {
                return Some(trace);
            }
        }
    }
    None
}

/// `%XX` sequences decoded; anything malformed is kept as it is.
fn url_decode(v: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, rest)) = needle.split_first() else {
        return Some(0);
    };
    // Scan for the first byte, compare the rest only there: a slice compare at every position
    // was most of the sampler's correlation cost (it runs on every new execution's text).
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut from = 0;
    while from <= last_start {
        let at = from + hay[from..=last_start].iter().position(|&b| b == first)?;
        if hay[at + 1..at + needle.len()] == *rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_bytes_finds_the_first_occurrence_or_none() {
        assert_eq!(find_bytes(b"abcabc", b"bc"), Some(1));
        assert_eq!(find_bytes(b"aab", b"ab"), Some(1));
        assert_eq!(find_bytes(b"abc", b"abc"), Some(0));
        assert_eq!(find_bytes(b"abc", b"c"), Some(2));
        assert_eq!(find_bytes(b"ab", b"abc"), None);
        assert_eq!(find_bytes(b"abd", b"abc"), None);
        assert_eq!(find_bytes(b"", b""), Some(0));
        assert_eq!(find_bytes(b"x", b""), Some(0));
        assert_eq!(find_bytes(b"", b"a"), None);
    }

    #[test]
    fn extracts_correlation_id_like_the_python_pattern() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            extract_correlation_id(&format!("bitville-{id}"), "bitville-"),
            Some(id)
        );
        assert_eq!(
            extract_correlation_id(&format!("php bitville-{id}-extra"), "bitville-"),
            Some(id)
        );
        // Upper case is outside [a-f0-9-], like the regex.
        assert_eq!(
            extract_correlation_id(&format!("bitville-{}", id.to_uppercase()), "bitville-"),
            None
        );
        assert_eq!(
            extract_correlation_id("bitville-monitor", "bitville-"),
            None
        );
        assert_eq!(
            extract_correlation_id("bitville-0f8fad5b", "bitville-"),
            None
        );
        // A first false match does not hide a later true one.
        assert_eq!(
            extract_correlation_id(&format!("bitville-x bitville-{id}"), "bitville-"),
            Some(id)
        );
        let custom = CorrelationPattern {
            prefix: "acme:".into(),
            ..CorrelationPattern::default()
        };
        assert_eq!(custom.extract(&format!("acme:{id}")), Some(id));
        assert_eq!(custom.extract(&format!("bitville-{id}")), None);
        assert_eq!(extract_correlation_id("bitville-ü", "bitville-"), None);
    }

    #[test]
    fn correlation_ids_are_the_uuid_matched_whole() {
        let uuid = "0123abcd-0123-4567-89ab-0123456789ab";
        let app = format!("bitville-{uuid}");
        assert_eq!(extract_correlation_id(&app, "bitville-"), Some(uuid));
        let text = format!("/* {app} */ SELECT 1");
        assert_eq!(extract_correlation_id(&text, "bitville-"), Some(uuid));
        // Like the regex, a longer run of id characters yields its first 36.
        assert_eq!(
            extract_correlation_id(&format!("{app}0"), "bitville-"),
            Some(uuid)
        );
        assert_eq!(
            extract_correlation_id("bitville-monitor", "bitville-"),
            None
        );
        let upper = "bitville-0123ABCD-0123-4567-89ab-0123456789ab";
        assert_eq!(extract_correlation_id(upper, "bitville-"), None);
        assert_eq!(
            extract_correlation_id(&format!("req-{uuid}"), "req-"),
            Some(uuid)
        );
    }

    #[test]
    fn comment_marker_is_found_anywhere_case_insensitive() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            extract_comment_correlation(&format!("/* correlation:{id} */ SELECT 1")),
            Some(id)
        );
        assert_eq!(
            extract_comment_correlation(&format!("SELECT 1 /*CORRELATION:{id}*/")),
            Some(id)
        );
        assert_eq!(
            extract_comment_correlation(&format!("/* other */ SELECT /*\n correlation:{id}\t*/ 1")),
            Some(id)
        );
        // Not a closed marker comment, or no ID.
        assert_eq!(
            extract_comment_correlation("/* correlation: */ SELECT 1"),
            None
        );
        assert_eq!(
            extract_comment_correlation(&format!("/* correlation:{id} x */")),
            None
        );
        assert_eq!(extract_comment_correlation("/* correlation:abc"), None);
        assert_eq!(extract_comment_correlation("/*"), None);
        assert_eq!(
            extract_comment_correlation("é/* correlation:ab */"),
            Some("ab")
        );
    }

    #[test]
    fn traceparent_in_application_name_or_sqlcommenter() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        assert_eq!(find_traceparent(&tp).as_deref(), Some(trace));
        assert_eq!(
            find_traceparent(&format!("web {tp}")).as_deref(),
            Some(trace)
        );
        assert_eq!(find_traceparent(&tp.to_uppercase()), None);
        assert_eq!(
            find_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(find_traceparent(&format!("{tp}0")), None);
        assert_eq!(find_traceparent("00-"), None);
        let sql = format!("SELECT 1 /*action='run',traceparent='{tp}'*/");
        assert_eq!(
            extract_sqlcommenter_traceparent(&sql).as_deref(),
            Some(trace)
        );
        let encoded =
            format!("SELECT 1 /*traceparent='00%2D{trace}%2D00f067aa0ba902b7%2D01',x='%zz'*/");
        assert_eq!(
            extract_sqlcommenter_traceparent(&encoded).as_deref(),
            Some(trace)
        );
        assert_eq!(
            extract_sqlcommenter_traceparent("/*traceparent='00-1'*/"),
            None
        );
        assert_eq!(extract_sqlcommenter_traceparent("/*traceparent='"), None);
        assert_eq!(
            extract_sqlcommenter_traceparent(&format!("{tp} no comment")),
            None
        );
    }

    #[test]
    fn find_follows_the_order_of_trust_and_the_sources() {
        let (a, b) = (
            "aaaaaaaa-0000-4000-8000-000000000001",
            "bbbbbbbb-0000-4000-8000-000000000002",
        );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        let app = format!("bitville-{b}");
        let sql = format!("/* correlation:{a} */ SELECT 1 /*traceparent='{tp}'*/");
        let all = CorrelationPattern::default();
        let found = all.find(Some(&app), &[&sql]).unwrap();
        assert_eq!(
            (found.id.as_str(), found.source),
            (a, CorrelationSource::Comment)
        );
        let found = all.find(Some(&app), &["SELECT 1"]).unwrap();
        assert_eq!(found.source, CorrelationSource::ApplicationName);
        assert_eq!(found.id, b);
        let found = all.find(Some(&tp), &["SELECT 1"]).unwrap();
        assert_eq!(
            (found.id.as_str(), found.source),
            (trace, CorrelationSource::Traceparent)
        );
        let found = all.find(None, &["SELECT 1", &sql[29..]]).unwrap();
        assert_eq!(found.id, trace);
        assert_eq!(all.find(Some("psql"), &["SELECT 1"]), None);

        let only_app = CorrelationPattern {
            sources: CorrelationSources::parse(" application_name ").unwrap(),
            ..CorrelationPattern::default()
        };
        assert_eq!(only_app.find(Some(&app), &[&sql]).unwrap().id, b);
        assert_eq!(only_app.find(Some(&tp), &[&sql]), None);
        let none = CorrelationPattern {
            sources: CorrelationSources::parse("").unwrap(),
            ..CorrelationPattern::default()
        };
        assert_eq!(none.find(Some(&app), &[&sql]), None);
    }

    #[test]
    fn correlation_sources_parse_and_print() {
        let all = CorrelationSources::parse("comment,application_name,traceparent").unwrap();
        assert_eq!(all, CorrelationSources::default());
        assert_eq!(all.to_list(), "comment,application_name,traceparent");
        let err = CorrelationSources::parse("comment,cookie").unwrap_err();
        assert!(err.contains("\"cookie\""), "{err}");
        assert_eq!(
            CorrelationSources::parse("Traceparent").unwrap().to_list(),
            "traceparent"
        );
    }
}
