//! Loss accounting: what was dropped or found damaged, until a delivered payload reported it.
//!
//! Invariants: every loss is counted twice, in the pending report (`Inner::unreported`, kept in
//! the cursor file, cleared only by the acknowledgement of the payload that carried it) and in
//! the lifetime totals (`SpoolStats::lost`); a segment dropped for room is counted record by
//! record, by source.

use crate::payload::DropCounts;

use super::frame::{self, HEADER_LEN};
use super::segment::{read_frame_at, resync_file, Segment};
use super::{cursor, Inner};

/// The spool's bookkeeping on the report: kept in the cursor file, added up, and cleared by
/// what a delivered payload carried.
impl DropCounts {
    pub(super) fn to_array(self) -> [u64; cursor::UNREPORTED_LEN] {
        let [a, b, c, d] = self.by_source;
        [
            self.records,
            self.bytes,
            a,
            b,
            c,
            d,
            self.write_errors,
            self.oversized,
            self.corrupt_records,
            self.corrupt_bytes,
        ]
    }

    pub(super) fn from_array(v: [u64; cursor::UNREPORTED_LEN]) -> DropCounts {
        DropCounts {
            records: v[0],
            bytes: v[1],
            by_source: [v[2], v[3], v[4], v[5]],
            write_errors: v[6],
            oversized: v[7],
            corrupt_records: v[8],
            corrupt_bytes: v[9],
        }
    }

    pub(super) fn subtract(&mut self, delivered: &DropCounts) {
        let mut mine = self.to_array();
        for (m, d) in mine.iter_mut().zip(delivered.to_array()) {
            *m = m.saturating_sub(d);
        }
        *self = DropCounts::from_array(mine);
    }

    pub(super) fn add(&mut self, other: &DropCounts) {
        self.records += other.records;
        self.bytes += other.bytes;
        for (a, b) in self.by_source.iter_mut().zip(other.by_source) {
            *a += b;
        }
        self.write_errors += other.write_errors;
        self.oversized += other.oversized;
        self.corrupt_records += other.corrupt_records;
        self.corrupt_bytes += other.corrupt_bytes;
    }
}

/// above `acked`; sequence numbers above `acked` up to its last one that it does not hold count
/// as lost to damage.
pub(super) fn count_unacked(seg: &Segment, acked: u64, max_record: usize) -> DropCounts {
    let mut counts = DropCounts::default();
    let Some(last_seq) = seg.last_seq.filter(|l| *l > acked) else {
        return counts;
    };
    let file = match crate::fsutil::open_regular(&seg.path) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("read segment {} to count its loss: {e}", seg.path.display());
            // Fall back to the segment's own totals.
            counts.records = seg.n_records;
            counts.bytes = seg.len;
            return counts;
        }
    };
    let mut off = HEADER_LEN as u64;
    let mut last = 0;
    while off < seg.len {
        match read_frame_at(&file, off, seg.len, max_record) {
            Ok(Ok((seq, source, _, end))) => {
                if seq > acked {
                    counts.records += 1;
                    counts.bytes += end - off;
                    counts.by_source[frame::source_tag(source) as usize] += 1;
                }
                last = seq;
                off = end;
            }
            Ok(Err(_)) => match resync_file(&file, off + 1, seg.len, last, max_record) {
                Ok(Some(next)) => off = next,
                _ => break,
            },
            Err(_) => break,
        }
    }
    counts.corrupt_records = (last_seq - acked).saturating_sub(counts.records);
    counts
}

impl Inner {
    /// Counts `counts` as lost: in the pending report and in the lifetime totals.
    pub(super) fn count_loss(&mut self, counts: &DropCounts) {
        self.unreported.add(counts);
        self.lost.add(counts);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::json::Json;
    use crate::spool::test_support::{open_with, opts, payload};
    use crate::spool::{Spool, SpoolError};

    #[test]
    fn oversized_payloads_are_refused_and_reported() {
        let (dir, spool) = open_with("oversized", |o| o.max_record_bytes = 600);
        let mut big = payload(1);
        big.data = Json::object().field("x", "y".repeat(1000));
        assert!(matches!(
            spool.append(&big),
            Err(SpoolError::TooLarge { .. })
        ));
        spool.append(&payload(2)).unwrap();
        let r = spool.peek().unwrap().unwrap();
        assert_eq!(r.seq, 1, "a refused payload consumes no sequence number");
        assert!(r.body.contains("\"oversized\":1"), "{}", r.body);
        assert_eq!(r.report.oversized, 1);
        // The report is cleared only by an acknowledgement, and survives a restart until then.
        drop(spool);
        let spool = Spool::open(opts(&dir)).unwrap();
        let r = spool.peek().unwrap().unwrap();
        assert_eq!(r.report.oversized, 1);
        spool.ack(&r).unwrap();
        spool.append(&payload(3)).unwrap();
        let r = spool.peek().unwrap().unwrap();
        assert!(
            r.report.is_empty() && !r.body.contains("dropped"),
            "{}",
            r.body
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
