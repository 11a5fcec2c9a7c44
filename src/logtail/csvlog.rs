//! csvlog records: a streaming RFC 4180 reader fed one physical line at a time, so quoted fields
//! with embedded newlines (multi-line statements) form one record, and the mapping of the columns
//! PostgreSQL 12 to 18 write onto an [`Entry`].
//!
//! Invariants: memory is bounded (each field keeps at most [`MAX_ENTRY_BYTES`]; the rest is
//! counted as truncation, never buffered); any byte sequence is accepted without panicking; a
//! record with fewer columns than expected (older servers) or more (newer ones) still maps the
//! columns it has.

use super::entry::{lossy, Entry, Level, Part, MAX_ENTRY_BYTES};

/// Column positions of csvlog (PG12 has 23 columns, PG13 adds backend_type, PG14+ leader_pid and
/// query_id).
mod col {
    pub const LOG_TIME: usize = 0;
    pub const USER: usize = 1;
    pub const DATABASE: usize = 2;
    pub const PID: usize = 3;
    pub const CONNECTION_FROM: usize = 4;
    pub const SESSION_ID: usize = 5;
    pub const LINE_NUM: usize = 6;
    pub const COMMAND_TAG: usize = 7;
    pub const VXID: usize = 9;
    pub const TXID: usize = 10;
    pub const SEVERITY: usize = 11;
    pub const SQLSTATE: usize = 12;
    pub const MESSAGE: usize = 13;
    pub const DETAIL: usize = 14;
    pub const HINT: usize = 15;
    pub const INTERNAL_QUERY: usize = 16;
    pub const CONTEXT: usize = 18;
    pub const QUERY: usize = 19;
    pub const LOCATION: usize = 21;
    pub const APPLICATION_NAME: usize = 22;
    pub const BACKEND_TYPE: usize = 23;
    pub const QUERY_ID: usize = 25;
}

/// Most columns kept per record; extra columns of a future version are ignored.
const MAX_FIELDS: usize = 40;

/// Reassembles csvlog records from lines.
#[derive(Debug, Default)]
pub struct CsvRecord {
    fields: Vec<Vec<u8>>,
    n_fields: usize,
    in_quotes: bool,
    /// Inside quotes a `"` was seen: it is either the first of `""` or the closing quote.
    quote_pending: bool,
    /// The current field has content (so a `"` is literal, not an opening quote).
    field_started: bool,
    truncated: bool,
    has_bytes: bool,
}

impl CsvRecord {
    /// A reader with no record in progress.
    pub fn new() -> CsvRecord {
        CsvRecord::default()
    }

    /// True when a record has started and not yet ended.
    pub fn in_progress(&self) -> bool {
        self.has_bytes
    }

    /// Feeds a piece of a physical line; `line_end` is true when the piece ended at a newline.
    /// Returns true when this completed a record (read it with [`CsvRecord::take`]).
    pub fn push(&mut self, bytes: &[u8], line_end: bool) -> bool {
        if !self.has_bytes {
            if bytes.is_empty() && line_end {
                // Blank line between records: nothing to assemble.
                return false;
            }
            self.has_bytes = true;
            self.n_fields = 1;
            self.field_mut().clear();
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.in_quotes {
                if self.quote_pending {
                    self.quote_pending = false;
                    if bytes[i] == b'"' {
                        self.push_bytes(b"\"");
                        i += 1;
                        continue;
                    }
                    self.in_quotes = false;
                    continue;
                }
                // Copy the run up to the next quote in one go.
                let run = bytes[i..]
                    .iter()
                    .position(|&b| b == b'"')
                    .unwrap_or(bytes.len() - i);
                self.push_range(bytes, i, i + run);
                i += run;
                if i < bytes.len() {
                    self.quote_pending = true;
                    i += 1;
                }
            } else {
                match bytes[i] {
                    b',' => {
                        self.next_field();
                        i += 1;
                    }
                    b'"' if !self.field_started => {
                        self.in_quotes = true;
                        self.field_started = true;
                        i += 1;
                    }
                    _ => {
                        let run = bytes[i..]
                            .iter()
                            .position(|&b| b == b',' || b == b'"')
                            .unwrap_or(bytes.len() - i)
                            .max(1);
                        self.field_started = true;
                        self.push_range(bytes, i, i + run);
                        i += run;
                    }
                }
            }
        }
        if !line_end {
            return false;
        }
        if self.in_quotes && !self.quote_pending {
            // A newline inside a quoted field is part of the value.
            self.push_bytes(b"\n");
            return false;
        }
        self.in_quotes = false;
        self.quote_pending = false;
        true
    }

    /// The completed record as an entry (`None` when it has no recognisable severity), and
    /// resets the reader for the next record.
    pub fn take(&mut self, correlation: &crate::normalize::CorrelationPattern) -> Option<Entry> {
        let n = self.n_fields;
        let truncated = self.truncated;
        // The field buffers stay as they are (`reset` only forgets them) until the entry is read.
        self.reset();
        let f = |i: usize| -> &[u8] {
            if i < n {
                &self.fields[i]
            } else {
                &[]
            }
        };
        let opt = |i: usize| -> Option<String> {
            let v = f(i);
            (!v.is_empty()).then(|| lossy(v))
        };
        let num = |i: usize| {
            std::str::from_utf8(f(i))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        let level = Level::from_word(f(col::SEVERITY))?;
        if !level.is_primary() {
            return None;
        }
        let mut e = Entry {
            timestamp: opt(col::LOG_TIME),
            pid: num(col::PID).and_then(|p| u32::try_from(p).ok()),
            user: opt(col::USER),
            database: opt(col::DATABASE),
            application_name: opt(col::APPLICATION_NAME),
            remote_host: opt(col::CONNECTION_FROM),
            session_id: opt(col::SESSION_ID),
            line_num: num(col::LINE_NUM),
            command_tag: opt(col::COMMAND_TAG),
            vxid: opt(col::VXID),
            txid: num(col::TXID),
            backend_type: opt(col::BACKEND_TYPE),
            query_id: std::str::from_utf8(f(col::QUERY_ID))
                .ok()
                .and_then(|s| s.parse().ok()),
            level: Some(level),
            sqlstate: opt(col::SQLSTATE),
            ..Entry::default()
        };
        e.set(Part::Message, f(col::MESSAGE));
        e.set(Part::Detail, f(col::DETAIL));
        e.set(Part::Hint, f(col::HINT));
        e.set(Part::InternalQuery, f(col::INTERNAL_QUERY));
        e.set(Part::Context, f(col::CONTEXT));
        e.set(Part::Statement, f(col::QUERY));
        e.set(Part::Location, f(col::LOCATION));
        e.truncated |= truncated;
        e.finish(correlation);
        Some(e)
    }

    /// Drops a record in progress (the file it came from is gone).
    pub fn reset(&mut self) {
        self.has_bytes = false;
        self.n_fields = 0;
        self.truncated = false;
        self.field_started = false;
        self.in_quotes = false;
        self.quote_pending = false;
    }

    fn field_mut(&mut self) -> &mut Vec<u8> {
        let i = self.n_fields - 1;
        while self.fields.len() <= i {
            self.fields.push(Vec::new());
        }
        &mut self.fields[i]
    }

    fn next_field(&mut self) {
        self.field_started = false;
        if self.n_fields < MAX_FIELDS {
            self.n_fields += 1;
            self.field_mut().clear();
        } else {
            // Columns beyond what any version writes are dropped; keep writing into the last.
            self.truncated = true;
        }
    }

    fn push_range(&mut self, bytes: &[u8], from: usize, to: usize) {
        self.push_bytes(&bytes[from..to]);
    }

    fn push_bytes(&mut self, b: &[u8]) {
        let field = self.field_mut();
        let room = MAX_ENTRY_BYTES.saturating_sub(field.len());
        let take = b.len().min(room);
        field.extend_from_slice(&b[..take]);
        if take < b.len() {
            self.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::CorrelationPattern;

    fn p() -> CorrelationPattern {
        CorrelationPattern::default()
    }

    fn feed(r: &mut CsvRecord, text: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        for line in text.split_inclusive('\n') {
            let (body, end) = match line.strip_suffix('\n') {
                Some(b) => (b, true),
                None => (line, false),
            };
            if r.push(body.as_bytes(), end) {
                out.extend(r.take(&p()));
            }
        }
        out
    }

    const PG15: &str = "2024-05-01 12:00:00.123 UTC,\"alice\",\"shop\",4242,\"[local]\",66323f00.1092,3,\"SELECT\",2024-05-01 11:59:00 UTC,3/17,0,ERROR,42P01,\"relation \"\"nope\"\" does not exist\",,,,,,\"SELECT *\nFROM nope\nWHERE a = ',x'\",15,,\"bitville-0123abcd-0123-4567-89ab-0123456789ab\",\"client backend\",,-4711\n2024-05-01 12:00:01.000 UTC,,,10,,66323f00.a,1,,2024-05-01 11:00:00 UTC,,0,LOG,00000,\"checkpoint starting: time\",,,,,,,,,\"\",\"checkpointer\",,0\n";

    #[test]
    fn pg15_records_with_embedded_newlines_and_quotes() {
        let mut r = CsvRecord::new();
        let es = feed(&mut r, PG15);
        assert_eq!(es.len(), 2);
        let e = &es[0];
        assert_eq!(e.timestamp.as_deref(), Some("2024-05-01 12:00:00.123 UTC"));
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert_eq!(e.database.as_deref(), Some("shop"));
        assert_eq!(e.pid, Some(4242));
        assert_eq!(e.level, Some(Level::Error));
        assert_eq!(e.sqlstate.as_deref(), Some("42P01"));
        assert_eq!(e.message, "relation \"nope\" does not exist");
        assert_eq!(
            e.statement.as_deref(),
            Some("SELECT *\nFROM nope\nWHERE a = ',x'")
        );
        assert_eq!(e.backend_type.as_deref(), Some("client backend"));
        assert_eq!(e.query_id, Some(-4711));
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("0123abcd-0123-4567-89ab-0123456789ab")
        );
        assert_eq!(es[1].backend_type.as_deref(), Some("checkpointer"));
        assert_eq!(es[1].application_name, None);
        assert!(!r.in_progress());
    }

    #[test]
    fn pg12_has_fewer_columns_and_pieces_join() {
        let mut r = CsvRecord::new();
        let line = "2024-05-01 12:00:00.123 UTC,\"u\",\"d\",7,\"h:1\",1.2,1,\"idle\",2024-05-01 11:59:00 UTC,3/1,0,LOG,00000,\"duration: 5.5 ms  statement: SELECT 1\",,,,,,,,,\"psql\"";
        let (a, b) = line.split_at(40);
        assert!(!r.push(a.as_bytes(), false));
        assert!(r.in_progress());
        assert!(r.push(b.as_bytes(), true));
        let e = r.take(&p()).unwrap();
        assert_eq!(e.application_name.as_deref(), Some("psql"));
        assert_eq!(e.duration_ms, Some(5.5));
        assert_eq!(e.query(), Some("SELECT 1"));
        assert_eq!(e.backend_type, None);
    }

    #[test]
    fn garbage_and_oversized_fields_are_bounded() {
        let mut r = CsvRecord::new();
        assert!(r.push(b"not,a,log,line", true));
        assert!(r.take(&p()).is_none());
        let big = format!("t,,,1,,,,,,,,LOG,,\"{}\"", "y".repeat(MAX_ENTRY_BYTES * 2));
        assert!(r.push(big.as_bytes(), true));
        let e = r.take(&p()).unwrap();
        assert!(e.truncated);
        assert_eq!(e.message.len(), MAX_ENTRY_BYTES);
    }
}
