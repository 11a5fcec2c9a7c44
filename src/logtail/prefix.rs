//! A matcher for stderr log lines built from the server's live `log_line_prefix`.
//!
//! The prefix is compiled once into literals and fields (every escape PostgreSQL documents:
//! `%a %u %d %r %h %b %p %P %t %m %n %i %e %c %l %s %v %x %q %Q %%`, with padding such as
//! `%-10a`). A line starts a new entry when the prefix matches and is followed by `LEVEL:  `;
//! that second check is what makes free-text fields (`%a`, `%u`, ...) safe to match.
//!
//! Invariants: matching is byte-level, allocation-free and never panics; fields with a fixed
//! shape (timestamps, numbers) are scanned directly; free-text fields end at the next literal,
//! trying later occurrences only when the rest fails, within a fixed step budget, so a hostile
//! line costs a bounded amount of work.

use super::entry::{parse_level, Level};

/// The prefix PostgreSQL 10+ uses when `log_line_prefix` is not set.
pub const DEFAULT_PREFIX: &str = "%m [%p] ";

/// Upper bound on matching steps per line (backtracking over free-text fields).
const STEP_BUDGET: u32 = 512;

/// Escapes that capture a value, in capture-slot order.
const ESCAPES: &[u8; 19] = b"audrhbpPtmnieclsvxQ";

/// One compiled element of the prefix.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// Text written as is.
    Lit(Vec<u8>),
    /// A `%` escape: its letter, capture slot and padding (`%-10a` is -10).
    Field { esc: u8, slot: u8, pad: i32 },
    /// `%q`: non-session processes stop the prefix here.
    StopIfNoSession,
}

/// Value spans of one matched line, indexed by escape; no allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captures {
    spans: [(u32, u32); 19],
    set: u32,
}

impl Captures {
    /// The value of escape `esc` (e.g. `b'a'`) in `line`, trimmed of padding; `None` when the
    /// escape is not in the prefix or was not written (after `%q`).
    pub fn get<'a>(&self, esc: u8, line: &'a [u8]) -> Option<&'a [u8]> {
        let slot = ESCAPES.iter().position(|&e| e == esc)?;
        if self.set & (1 << slot) == 0 {
            return None;
        }
        let (s, e) = self.spans[slot];
        line.get(s as usize..e as usize)
    }

    fn put(&mut self, slot: u8, start: usize, end: usize, line: &[u8]) {
        // Padding is spaces around the value: trim them.
        let (mut s, mut e) = (start, end);
        while s < e && line[s] == b' ' {
            s += 1;
        }
        while e > s && line[e - 1] == b' ' {
            e -= 1;
        }
        self.spans[slot as usize] = (s as u32, e as u32);
        self.set |= 1 << slot;
    }

    fn clear(&mut self, slot: u8) {
        self.set &= !(1 << slot);
    }
}

/// What a line that starts a prefixed record contains.
#[derive(Debug, Clone, Copy)]
pub struct PrefixMatch {
    /// The captured fields.
    pub captures: Captures,
    /// The severity (or secondary kind) after the prefix.
    pub level: Level,
    /// Where the message text starts in the line.
    pub message_start: usize,
}

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone)]
pub struct PrefixParser {
    items: Vec<Item>,
    source: String,
    warnings: Vec<String>,
}

impl PrefixParser {
    /// Compiles `prefix` (the value of `log_line_prefix`). Never fails: unknown escapes write
    /// nothing in PostgreSQL, so they match nothing here. Warnings say what will be missing.
    pub fn new(prefix: &str) -> PrefixParser {
        let b = prefix.as_bytes();
        let mut items: Vec<Item> = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        let mut unknown = Vec::new();
        while i < b.len() {
            if b[i] != b'%' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            i += 1;
            // Padding, as process_log_prefix_padding reads it: optional '-', then digits.
            let mut pad: i32 = 0;
            let mut neg = false;
            if i < b.len() && b[i] == b'-' {
                neg = true;
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                pad = pad
                    .saturating_mul(10)
                    .saturating_add(i32::from(b[i] - b'0'));
                i += 1;
            }
            if neg {
                pad = -pad;
            }
            let Some(&esc) = b.get(i) else { break };
            i += 1;
            match esc {
                b'%' => lit.push(b'%'),
                b'q' => {
                    flush_lit(&mut items, &mut lit);
                    items.push(Item::StopIfNoSession);
                }
                _ => match ESCAPES.iter().position(|&e| e == esc) {
                    Some(slot) => {
                        flush_lit(&mut items, &mut lit);
                        items.push(Item::Field {
                            esc,
                            slot: slot as u8,
                            pad,
                        });
                    }
                    None => unknown.push(esc as char),
                },
            }
        }
        flush_lit(&mut items, &mut lit);
        let has = |e: u8| {
            items
                .iter()
                .any(|it| matches!(it, Item::Field { esc, .. } if *esc == e))
        };
        let mut warnings = Vec::new();
        if !has(b'm') && !has(b't') && !has(b'n') {
            warnings.push(format!(
                "log_line_prefix {prefix:?} has no %m or %t: entries will carry no timestamp"
            ));
        }
        if !has(b'p') {
            warnings.push(format!(
                "log_line_prefix {prefix:?} has no %p: entries will carry no pid and interleaved \
                 lines cannot be told apart"
            ));
        }
        if !has(b'a') {
            warnings.push(format!(
                "log_line_prefix {prefix:?} has no %a: correlation IDs are only found in statement \
                 texts; add %a (e.g. '%m [%p] %q%u@%d %a ')"
            ));
        }
        if !unknown.is_empty() {
            warnings.push(format!(
                "log_line_prefix {prefix:?} has escapes PostgreSQL ignores: {unknown:?}"
            ));
        }
        PrefixParser {
            items,
            source: prefix.to_string(),
            warnings,
        }
    }

    /// The prefix this parser was built from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the prefix lacks (no timestamp, no pid, no application name), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// True when the prefix captures escape `esc`.
    pub fn has(&self, esc: u8) -> bool {
        self.items
            .iter()
            .any(|it| matches!(it, Item::Field { esc: e, .. } if *e == esc))
    }

    /// Matches one physical line (without its newline). `Some` when the line starts a record:
    /// the prefix matched and a severity word follows it.
    pub fn parse(&self, line: &[u8]) -> Option<PrefixMatch> {
        // Continuation lines of multi-line messages start with a tab: never a record.
        if line.first() == Some(&b'\t') {
            return None;
        }
        let mut caps = Captures::default();
        let mut budget = STEP_BUDGET;
        let (level, message_start) = self.match_from(line, 0, 0, &mut caps, &mut budget)?;
        Some(PrefixMatch {
            captures: caps,
            level,
            message_start,
        })
    }

    fn match_from(
        &self,
        line: &[u8],
        item: usize,
        pos: usize,
        caps: &mut Captures,
        budget: &mut u32,
    ) -> Option<(Level, usize)> {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let Some(it) = self.items.get(item) else {
            let (level, len) = parse_level(line.get(pos..)?)?;
            return Some((level, pos + len));
        };
        match it {
            Item::Lit(l) => {
                if line.get(pos..)?.starts_with(l) {
                    self.match_from(line, item + 1, pos + l.len(), caps, budget)
                } else {
                    None
                }
            }
            Item::StopIfNoSession => {
                // Postmaster and background processes stop at %q: the severity follows.
                if let Some((level, len)) = parse_level(line.get(pos..)?) {
                    // Fields after %q were not written.
                    for later in &self.items[item + 1..] {
                        if let Item::Field { slot, .. } = later {
                            caps.clear(*slot);
                        }
                    }
                    return Some((level, pos + len));
                }
                self.match_from(line, item + 1, pos, caps, budget)
            }
            Item::Field { esc, slot, pad } => {
                if *pad == 0 {
                    if let Some(end) = scan_fixed(*esc, line, pos) {
                        caps.put(*slot, pos, end, line);
                        return self.match_from(line, item + 1, end, caps, budget);
                    }
                    if is_fixed(*esc) {
                        return None;
                    }
                }
                // Free text (or a padded field): try each end where the next literal occurs,
                // nearest first.
                let min_end = pos + pad.unsigned_abs() as usize;
                match self.items.get(item + 1) {
                    Some(Item::Lit(next)) => {
                        let first = next[0];
                        let mut end = pos;
                        while end < line.len() {
                            let hit = line[end..].iter().position(|&c| c == first)?;
                            end += hit;
                            if end >= min_end && line[end..].starts_with(next) {
                                caps.put(*slot, pos, end, line);
                                if let Some(r) = self.match_from(line, item + 1, end, caps, budget)
                                {
                                    return Some(r);
                                }
                                if *budget == 0 {
                                    return None;
                                }
                            }
                            end += 1;
                        }
                        None
                    }
                    _ => {
                        // Followed by the severity, %q or another field: try every end.
                        for end in pos.max(min_end.min(line.len()))..=line.len() {
                            caps.put(*slot, pos, end, line);
                            if let Some(r) = self.match_from(line, item + 1, end, caps, budget) {
                                return Some(r);
                            }
                            if *budget == 0 {
                                return None;
                            }
                        }
                        None
                    }
                }
            }
        }
    }
}

fn flush_lit(items: &mut Vec<Item>, lit: &mut Vec<u8>) {
    if !lit.is_empty() {
        items.push(Item::Lit(std::mem::take(lit)));
    }
}

/// Escapes whose value has a shape that can be scanned without looking at what follows.
fn is_fixed(esc: u8) -> bool {
    matches!(
        esc,
        b't' | b'm' | b's' | b'n' | b'p' | b'l' | b'x' | b'Q' | b'c' | b'e' | b'P' | b'v'
    )
}

/// The end of a fixed-shape value of escape `esc` starting at `pos`; `None` when the bytes do not
/// have that shape (or the escape is free text).
fn scan_fixed(esc: u8, line: &[u8], pos: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while i < line.len() && line[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    match esc {
        b't' | b's' => scan_timestamp(line, pos, false),
        b'm' => scan_timestamp(line, pos, true),
        b'n' => {
            let end = digits(pos)?;
            if line.get(end) == Some(&b'.') {
                return digits(end + 1).or(Some(end));
            }
            Some(end)
        }
        b'p' | b'l' | b'x' => digits(pos),
        b'Q' => digits(if line.get(pos) == Some(&b'-') {
            pos + 1
        } else {
            pos
        }),
        // Empty when the process has no parallel leader.
        b'P' => Some(digits(pos).unwrap_or(pos)),
        b'c' => {
            let hex = |mut i: usize| {
                let start = i;
                while i < line.len() && line[i].is_ascii_hexdigit() {
                    i += 1;
                }
                (i > start).then_some(i)
            };
            let end = hex(pos)?;
            if line.get(end) != Some(&b'.') {
                return None;
            }
            hex(end + 1)
        }
        b'e' => {
            let code = line.get(pos..pos + 5)?;
            code.iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
                .then_some(pos + 5)
        }
        // `backendid/lxid`, or nothing outside a transaction-capable process.
        b'v' => match digits(pos) {
            Some(end) if line.get(end) == Some(&b'/') => digits(end + 1),
            _ => Some(pos),
        },
        _ => None,
    }
}

/// `YYYY-MM-DD HH:MM:SS[.mmm] ZONE`: the zone is a token without spaces (`UTC`, `CEST`, `+03`).
fn scan_timestamp(line: &[u8], pos: usize, millis: bool) -> Option<usize> {
    const SHAPE: &[u8; 19] = b"0000-00-00 00:00:00";
    let s = line.get(pos..pos + 19)?;
    for (c, want) in s.iter().zip(SHAPE) {
        let ok = if *want == b'0' {
            c.is_ascii_digit()
        } else {
            c == want
        };
        if !ok {
            return None;
        }
    }
    let mut end = pos + 19;
    if millis {
        if line.get(end) != Some(&b'.') {
            return None;
        }
        end += 1;
        let start = end;
        while end < line.len() && line[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
    }
    if line.get(end) == Some(&b' ') {
        let z = end + 1;
        let mut e = z;
        // Zone abbreviations are letters, digits and signs (`UTC`, `CEST`, `+0530`); anything
        // else is the next literal.
        while e < line.len() && (line[e].is_ascii_alphanumeric() || matches!(line[e], b'+' | b'-'))
        {
            e += 1;
        }
        if e > z && e - z <= 32 {
            return Some(e);
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(m: &PrefixMatch, esc: u8, line: &'a str) -> Option<&'a str> {
        m.captures
            .get(esc, line.as_bytes())
            .map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn default_prefix() {
        let p = PrefixParser::new(DEFAULT_PREFIX);
        let line = "2024-05-01 12:00:00.123 UTC [4242] LOG:  database system is ready";
        let m = p.parse(line.as_bytes()).unwrap();
        assert_eq!(m.level, Level::Log);
        assert_eq!(&line[m.message_start..], "database system is ready");
        assert_eq!(field(&m, b'm', line), Some("2024-05-01 12:00:00.123 UTC"));
        assert_eq!(field(&m, b'p', line), Some("4242"));
        assert!(p.parse(b"\tcontinued line").is_none());
        assert!(p.parse(b"random text LOG:  x").is_none());
        assert_eq!(p.warnings().len(), 1, "only %a is missing");
    }

    #[test]
    fn q_stops_for_background_processes() {
        let p = PrefixParser::new("%m [%p] %q%u@%d/%a ");
        let bg = "2024-05-01 12:00:00.123 UTC [10] LOG:  checkpoint starting: time";
        let m = p.parse(bg.as_bytes()).unwrap();
        assert_eq!(field(&m, b'u', bg), None);
        assert_eq!(&bg[m.message_start..], "checkpoint starting: time");
        let s = "2024-05-01 12:00:00.123 UTC [11] alice@shop/bitville-x y ERROR:  oops";
        let m = p.parse(s.as_bytes()).unwrap();
        assert_eq!(m.level, Level::Error);
        assert_eq!(field(&m, b'u', s), Some("alice"));
        assert_eq!(field(&m, b'd', s), Some("shop"));
        // The application name contains a space: the match backtracks to the next literal.
        assert_eq!(field(&m, b'a', s), Some("bitville-x y"));
        assert!(p.warnings().is_empty());
    }

    #[test]
    fn every_escape_and_padding() {
        let p = PrefixParser::new(
            "%t|%-10a|%u|%d|%r|%h|%b|%p|%P|%n|%i|%e|%c|%l|%s|%v|%x|%Q|%%|%5p|%z ",
        );
        let line = "2024-05-01 12:00:00 CEST|app       |bob|db1|10.0.0.1(5432)|10.0.0.1|client backend|77||1714564800.123|SELECT|42P01|66323f00.4d|3|2024-05-01 11:59:00 CEST|3/17|0|-123|%|   77| ERROR:  relation \"x\" does not exist";
        let m = p.parse(line.as_bytes()).expect("matches");
        assert_eq!(m.level, Level::Error);
        for (esc, want) in [
            (b't', "2024-05-01 12:00:00 CEST"),
            (b'a', "app"),
            (b'u', "bob"),
            (b'd', "db1"),
            (b'r', "10.0.0.1(5432)"),
            (b'h', "10.0.0.1"),
            (b'b', "client backend"),
            (b'P', ""),
            (b'n', "1714564800.123"),
            (b'i', "SELECT"),
            (b'e', "42P01"),
            (b'c', "66323f00.4d"),
            (b'l', "3"),
            (b's', "2024-05-01 11:59:00 CEST"),
            (b'v', "3/17"),
            (b'x', "0"),
            (b'Q', "-123"),
        ] {
            assert_eq!(field(&m, esc, line), Some(want), "escape %{}", esc as char);
        }
        // The padded %5p is the second pid slot: the last write wins, trimmed.
        assert_eq!(field(&m, b'p', line), Some("77"));
        assert!(p.warnings().iter().any(|w| w.contains("'z'")));
    }

    #[test]
    fn missing_fields_warn() {
        let p = PrefixParser::new("%u ");
        assert_eq!(p.warnings().len(), 3);
        let p = PrefixParser::new("");
        let m = p.parse(b"LOG:  no prefix at all").unwrap();
        assert_eq!(m.message_start, 6);
    }

    #[test]
    fn prefix_ending_in_a_free_field() {
        let p = PrefixParser::new("%m:%a");
        let line = "2024-05-01 12:00:00.1 UTC:my app LOG:  hi";
        let m = p.parse(line.as_bytes()).unwrap();
        assert_eq!(field(&m, b'a', line), Some("my app"));
        assert_eq!(&line[m.message_start..], "hi");
    }
}
