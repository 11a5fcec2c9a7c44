//! Loss accounting: what was dropped or found damaged, until a delivered payload reported it.
//!
//! Invariants: every loss is counted twice, in the pending report (`Inner::unreported`, kept in
//! the cursor file, cleared only by the acknowledgement of the payload that carried it) and in
//! the lifetime totals (`SpoolStats::lost`); a segment dropped for room is counted record by
//! record, by source and by kind (read from each record's text as it is evicted, a frame at a
//! time: nothing kept per segment, nothing a crash could make wrong), with the seq range.

use crate::payload::{DropCounts, RecordKind};

use super::frame::{self, HEADER_LEN};
use super::segment::{read_frame_at, resync_file, Segment};
use super::{cursor, Inner};

/// The spool's bookkeeping on the report: kept in the cursor file, added up, and cleared by
/// what a delivered payload carried.
impl DropCounts {
    pub(super) fn to_array(self) -> [u64; cursor::UNREPORTED_LEN] {
        let mut v = [0u64; cursor::UNREPORTED_LEN];
        let [a, b, c, d] = self.by_source;
        v[..cursor::LEGACY_UNREPORTED_LEN].copy_from_slice(&[
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
        ]);
        let kinds = cursor::LEGACY_UNREPORTED_LEN..cursor::LEGACY_UNREPORTED_LEN + N_KINDS;
        v[kinds].copy_from_slice(&self.by_kind);
        v[cursor::UNREPORTED_LEN - 2] = self.first_seq;
        v[cursor::UNREPORTED_LEN - 1] = self.last_seq;
        v
    }

    pub(super) fn from_array(v: [u64; cursor::UNREPORTED_LEN]) -> DropCounts {
        let mut by_kind = [0u64; N_KINDS];
        by_kind.copy_from_slice(
            &v[cursor::LEGACY_UNREPORTED_LEN..cursor::LEGACY_UNREPORTED_LEN + N_KINDS],
        );
        DropCounts {
            records: v[0],
            bytes: v[1],
            by_source: [v[2], v[3], v[4], v[5]],
            by_kind,
            write_errors: v[6],
            oversized: v[7],
            corrupt_records: v[8],
            corrupt_bytes: v[9],
            first_seq: v[cursor::UNREPORTED_LEN - 2],
            last_seq: v[cursor::UNREPORTED_LEN - 1],
        }
    }

    /// Takes away what a delivered report carried. The seq range is not a counter: what stays
    /// pending are drops made after the report was handed out, all of them above its range
    /// (the oldest segment goes first), so the range now starts past the delivered one.
    pub(super) fn subtract(&mut self, delivered: &DropCounts) {
        let (first, last) = (self.first_seq, self.last_seq);
        let mut mine = self.to_array();
        for (m, d) in mine
            .iter_mut()
            .zip(delivered.to_array())
            .take(cursor::UNREPORTED_LEN - 2)
        {
            *m = m.saturating_sub(d);
        }
        *self = DropCounts::from_array(mine);
        if self.records == 0 {
            (self.first_seq, self.last_seq) = (0, 0);
        } else {
            self.first_seq = first.max(delivered.last_seq + 1).min(last);
            self.last_seq = last;
        }
    }

    pub(super) fn add(&mut self, other: &DropCounts) {
        self.records += other.records;
        self.bytes += other.bytes;
        for (a, b) in self.by_source.iter_mut().zip(other.by_source) {
            *a += b;
        }
        for (a, b) in self.by_kind.iter_mut().zip(other.by_kind) {
            *a += b;
        }
        self.write_errors += other.write_errors;
        self.oversized += other.oversized;
        self.corrupt_records += other.corrupt_records;
        self.corrupt_bytes += other.corrupt_bytes;
        if other.last_seq > 0 {
            self.first_seq = if self.last_seq == 0 {
                other.first_seq
            } else {
                self.first_seq.min(other.first_seq)
            };
            self.last_seq = self.last_seq.max(other.last_seq);
        }
    }
}

const N_KINDS: usize = RecordKind::ALL.len();

/// What dropping `seg` loses: its records with a sequence number above `acked` (counted by
/// source and by kind, with their seq range, reading each frame once, a frame at a time);
/// sequence numbers above `acked` up to its last one that it does not hold count as lost to
/// damage.
pub(super) fn count_unacked(seg: &Segment, acked: u64, max_record: usize) -> DropCounts {
    let mut counts = DropCounts::default();
    let Some(last_seq) = seg.last_seq.filter(|l| *l > acked) else {
        return counts;
    };
    let file = match crate::fsutil::open_regular(&seg.path) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("read segment {} to count its loss: {e}", seg.path.display());
            // Fall back to the segment's own totals (its kinds cannot be known).
            counts.records = seg.n_records;
            counts.bytes = seg.len;
            counts.first_seq = seg.first_seq.map_or(acked + 1, |f| f.max(acked + 1));
            counts.last_seq = last_seq;
            return counts;
        }
    };
    let mut off = HEADER_LEN as u64;
    let mut last = 0;
    while off < seg.len {
        match read_frame_at(&file, off, seg.len, max_record) {
            Ok(Ok((seq, source, body, end))) => {
                if seq > acked {
                    counts.records += 1;
                    counts.bytes += end - off;
                    counts.by_source[frame::source_tag(source) as usize] += 1;
                    counts.by_kind[RecordKind::of_record(source, &body) as usize] += 1;
                    if counts.first_seq == 0 {
                        counts.first_seq = seq;
                    }
                    counts.last_seq = seq;
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
    use crate::payload::{Lane, Payload, RecordKind, Source};
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
    }

    fn kind_payload(source: Source, kind: Option<&str>, n: i64) -> Payload {
        let mut data = Json::object();
        if let Some(k) = kind {
            data.push("kind", k);
        }
        data.push("n", n);
        data.push("pad", "x".repeat(200));
        Payload {
            source,
            collected_at: 1_700_000_000.0 + n as f64,
            correlation_id: None,
            data,
        }
    }

    /// Steady-state records of four kinds in turn.
    fn steady(n: i64) -> Payload {
        match n % 4 {
            0 => kind_payload(Source::PgStatActivity, None, n),
            1 => kind_payload(Source::PgLog, Some("log_entries"), n),
            2 => kind_payload(Source::PgStatStatements, None, n),
            _ => kind_payload(Source::PgStatActivity, Some("correlated_request"), n),
        }
    }

    fn spike(n: i64) -> Payload {
        kind_payload(Source::PgStatActivity, Some("spike"), n)
    }

    #[test]
    fn an_evicted_segment_is_reported_by_kind_with_its_seq_range() {
        let (dir, spool) = open_with("bykind", |o| o.max_bytes = 64 * 1024);
        for n in 0..400 {
            spool.append(&steady(n)).unwrap();
        }
        let r = spool.peek().unwrap().unwrap();
        let d = r.report;
        assert!(d.records > 0, "the bound was passed: {d:?}");
        assert_eq!(d.by_kind.iter().sum::<u64>(), d.records, "{d:?}");
        for kind in [
            RecordKind::ActivitySummary,
            RecordKind::LogEntries,
            RecordKind::Statements,
            RecordKind::CorrelatedRequest,
        ] {
            assert!(d.by_kind[kind as usize] > 0, "{kind:?} in {d:?}");
        }
        assert_eq!(d.by_kind[RecordKind::Spike as usize], 0);
        // Nothing was delivered: the range starts at 1 and ends just before the first record
        // still held, and every number in it was dropped.
        assert_eq!(d.first_seq, 1);
        assert_eq!(d.last_seq, r.seq - 1);
        assert_eq!(d.records, d.last_seq - d.first_seq + 1);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let dropped = &v["data"]["agent"]["dropped"];
        assert_eq!(dropped["last_seq"].as_u64(), Some(d.last_seq), "{dropped}");
        assert_eq!(
            dropped["by_kind"]["log_entries"].as_u64(),
            Some(d.by_kind[RecordKind::LogEntries as usize])
        );

        // The report survives a restart until delivered, kinds and range included.
        drop(spool);
        let spool = Spool::open(opts_with(&dir)).unwrap();
        let again = spool.peek().unwrap().unwrap();
        assert_eq!((again.seq, again.report), (r.seq, d));
        spool.ack(&again).unwrap();
        // Later drops are reported on their own, with a range past the delivered one.
        for n in 400..800 {
            spool.append(&steady(n)).unwrap();
        }
        let next = spool.peek().unwrap().unwrap();
        assert!(next.report.records > 0, "{:?}", next.report);
        assert!(next.report.first_seq > d.last_seq, "{:?}", next.report);
        assert_eq!(next.report.last_seq, next.seq - 1);
        assert_eq!(next.report.by_kind.iter().sum::<u64>(), next.report.records);
    }

    fn opts_with(dir: &std::path::Path) -> crate::spool::SpoolOptions {
        let mut o = opts(dir);
        o.max_bytes = 64 * 1024;
        o
    }

    #[test]
    fn spike_reports_are_never_evicted_by_steady_records_and_go_first() {
        let (dir, spool) = open_with("lanes", |o| o.max_bytes = 64 * 1024);
        let mut spikes = Vec::new();
        for n in 0..1000 {
            spool.append(&steady(n)).unwrap();
            if n % 250 == 100 {
                spikes.push(spool.append(&spike(n)).unwrap());
            }
        }
        assert_eq!(spikes, [1, 2, 3, 4], "the spike lane has its own numbers");
        let stats = spool.stats();
        assert_eq!(stats.spike_pending, 4);
        assert_eq!(
            stats.n_pending,
            spool.lane_stats(Lane::Main).n_pending + 4,
            "pending counts both lanes (what --once and --status show)"
        );
        assert!(
            stats.bytes <= 64 * 1024,
            "the bound holds for both lanes: {stats:?}"
        );
        assert!(
            stats.lost.records > 0,
            "the main lane overflowed: {stats:?}"
        );
        // The spike reports come first, in order, without a loss report...
        for want in 1..=4 {
            let r = spool.peek().unwrap().unwrap();
            assert_eq!((r.lane, r.seq), (Lane::Spike, want));
            assert!(r.report.is_empty(), "{:?}", r.report);
            assert!(r.body.contains("\"lane\":\"spike\""), "{}", r.body);
            spool.ack(&r).unwrap();
        }
        // ...then the main lane, whose report names what went: never a spike report.
        let r = spool.peek().unwrap().unwrap();
        assert_eq!(r.lane, Lane::Main);
        assert!(r.report.records > 0);
        assert_eq!(r.report.by_kind[RecordKind::Spike as usize], 0);
        assert!(!r.body.contains("\"lane\""), "{}", r.body);
        // The spike lane's numbering survives a reopen.
        drop(spool);
        let spool = Spool::open(opts_with(&dir)).unwrap();
        assert_eq!(spool.append(&spike(1)).unwrap(), 5);
        assert_eq!(spool.peek().unwrap().unwrap().lane, Lane::Spike);
    }

    #[test]
    fn a_spike_report_too_large_for_its_lane_goes_to_the_main_lane_or_is_reported_there() {
        let (_dir, spool) = open_with("spikeoversized", |o| o.max_bytes = 64 * 1024);
        // 64 KiB: the spike lane takes records up to 8 KiB, the main lane up to 24 KiB.
        let mut big = spike(1);
        big.data.push("timeline", "y".repeat(12 * 1024));
        assert_eq!(
            spool.append(&big).unwrap(),
            1,
            "too large for the spike lane only"
        );
        let r = spool.peek().unwrap().unwrap();
        assert_eq!((r.lane, r.seq), (Lane::Main, 1));
        assert!(r.report.is_empty(), "nothing was lost: {:?}", r.report);
        assert!(r.body.contains("\"kind\":\"spike\""));
        spool.ack(&r).unwrap();
        let mut huge = spike(2);
        huge.data.push("timeline", "y".repeat(30 * 1024));
        assert!(matches!(
            spool.append(&huge),
            Err(SpoolError::TooLarge { .. })
        ));
        spool.append(&steady(0)).unwrap();
        let r = spool.peek().unwrap().unwrap();
        assert_eq!((r.lane, r.report.oversized), (Lane::Main, 1));
        spool.ack(&r).unwrap();
        assert_eq!(spool.stats().lost.oversized, 1);
    }

    #[test]
    fn spike_reports_alone_filling_their_share_evict_their_own_oldest_and_say_so() {
        let (_dir, spool) = open_with("spikefull", |o| o.max_bytes = 64 * 1024);
        for n in 0..200 {
            spool.append(&spike(n)).unwrap();
        }
        spool.append(&steady(0)).unwrap();
        let stats = spool.lane_stats(Lane::Spike);
        assert!(
            stats.bytes <= 16 * 1024,
            "the spike lane keeps to its share: {stats:?}"
        );
        let r = spool.peek().unwrap().unwrap();
        assert_eq!(r.lane, Lane::Spike);
        let d = r.report;
        assert!(d.records > 0);
        assert_eq!(d.by_kind[RecordKind::Spike as usize], d.records, "{d:?}");
        assert_eq!((d.first_seq, d.last_seq), (1, r.seq - 1));
        // The main lane lost nothing.
        assert!(spool.lane_stats(Lane::Main).lost.is_empty());
    }

    #[test]
    fn the_spike_lane_recovers_a_torn_tail_and_reports_the_gap_in_its_own_numbers() {
        let (dir, spool) = open_with("spiketorn", |_| {});
        for n in 0..3 {
            spool.append(&spike(n)).unwrap();
            spool.append(&steady(n)).unwrap();
        }
        spool.sync().unwrap();
        drop(spool);
        // A torn last frame in the spike lane (as a crash mid-write leaves it).
        let lane_dir = dir.join(crate::spool::SPIKE_LANE_DIR);
        let seg = fs::read_dir(&lane_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "spool"))
            .unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let spool = Spool::open(opts(&dir)).unwrap();
        for want in [1, 2] {
            let r = spool.peek().unwrap().unwrap();
            assert_eq!((r.lane, r.seq, r.gap), (Lane::Spike, want, 0));
            spool.ack(&r).unwrap();
        }
        // The torn record's number is never reused, and its loss comes with the next report.
        assert_eq!(spool.append(&spike(9)).unwrap(), 4);
        let r = spool.peek().unwrap().unwrap();
        assert_eq!((r.lane, r.seq, r.gap), (Lane::Spike, 4, 1));
        assert_eq!(r.report.corrupt_records, 1);
        spool.ack(&r).unwrap();
        // The main lane is untouched.
        let r = spool.peek().unwrap().unwrap();
        assert_eq!(
            (r.lane, r.seq, r.report.corrupt_records),
            (Lane::Main, 1, 0)
        );
    }

    #[test]
    fn something_else_under_the_spike_lanes_name_is_moved_aside() {
        let dir = crate::spool::test_support::temp_dir("spikefile");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(crate::spool::SPIKE_LANE_DIR), "not a directory").unwrap();
        let spool = Spool::open(opts(&dir)).unwrap();
        assert!(dir.join("spike.bad").is_file());
        spool.append(&spike(1)).unwrap();
        assert_eq!(spool.peek().unwrap().unwrap().lane, Lane::Spike);
    }
}
