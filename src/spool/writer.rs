//! The writer: appends frames to the active segment, rotates segments, and makes room (drops
//! the oldest segments past `max_bytes`, reclaims acknowledged ones on a full filesystem).
//!
//! Invariants: a record never spans segments; a failed write leaves the segment ending on a
//! frame boundary (or the partial frame is skipped as damage) and the next append tries again;
//! only whole segments are deleted.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::payload::{render_record, AgentStamp, DropCounts, Payload, RecordKind};

use super::frame::{self, FRAME_HEADER_LEN, HEADER_LEN};
use super::loss::count_unacked;
use super::segment::{remove_quietly, Segment};
use super::{cursor, Inner, SpoolError};

impl Inner {
    pub(super) fn append(&mut self, payload: &Payload) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let stamp = AgentStamp {
            agent: &self.opts.agent,
            seq,
            lane: self.lane,
        };
        let body = render_record(payload, &stamp);
        let limit = self.opts.effective_max_record();
        if body.len() as u64 > limit {
            self.count_loss(&DropCounts {
                oversized: 1,
                ..DropCounts::default()
            });
            return Err(SpoolError::TooLarge {
                bytes: body.len() as u64,
                limit,
            });
        }

        // Room for the frame and, should the segment rotate, a new header.
        self.make_room((FRAME_HEADER_LEN + body.len() + HEADER_LEN) as u64);
        let frame = frame::encode_frame(seq, payload.source, body.as_bytes());
        let mut written = self.write_frame(&frame);
        if written.as_ref().is_err_and(SpoolError::is_disk_full) && self.reclaim_acked() {
            written = self.write_frame(&frame);
        }
        match written {
            Ok(()) => {}
            Err(e) => {
                self.count_loss(&DropCounts {
                    write_errors: 1,
                    ..DropCounts::default()
                });
                self.write_error_streak += 1;
                if self.write_error_streak == 1 {
                    log::error!("spool write failed, payload dropped: {e}");
                } else {
                    log::debug!("spool write failed again, payload dropped: {e}");
                }
                return Err(e);
            }
        }
        if self.write_error_streak > 0 {
            log::info!(
                "spool writes work again after {} failed appends",
                self.write_error_streak
            );
            self.write_error_streak = 0;
        }

        let seg = self
            .segments
            .back_mut()
            .expect("write_frame leaves an active segment");
        seg.len += frame.len() as u64;
        seg.first_seq.get_or_insert(seq);
        seg.last_seq = Some(seq);
        seg.n_records += 1;
        self.total_bytes += frame.len() as u64;
        self.next_seq = seq + 1;
        self.dirty = true;
        Ok(seq)
    }

    /// The filesystem is full below `max_bytes`: frees the space of acknowledged records before
    /// anything new is dropped. The active segment is sealed (`write_frame` did that already on
    /// the failed write) so that a fully acknowledged one can go too; the cursor is saved in the
    /// space freed, so the numbering survives a restart. Returns whether anything was freed.
    pub(super) fn reclaim_acked(&mut self) -> bool {
        self.seal_active();
        let before = self.total_bytes;
        // The older segments first: that keeps the one with the newest number while the
        // cursor may still be stale.
        self.delete_acked_segments(true);
        if self.write_cursor().is_ok() {
            self.delete_acked_segments(false);
        } else if self.total_bytes == before {
            // Nothing but the newest segment is left, all acknowledged, and not even the small
            // cursor fits: delete it and save the cursor in the space it frees. Only a crash
            // between the two steps could reuse numbers after a restart.
            self.delete_acked_segments(false);
            if let Err(e) = self.write_cursor() {
                log::warn!("{e}");
            }
        }
        let freed = before - self.total_bytes;
        if freed > 0 {
            log::info!(
                "spool: the filesystem is full; freed {freed} bytes of acknowledged records for \
                 new ones"
            );
        }
        freed > 0
    }

    /// Drops the oldest segments until `need` more bytes fit under `max_bytes`.
    pub(super) fn make_room(&mut self, need: u64) {
        while self.total_bytes + need > self.opts.max_bytes && !self.segments.is_empty() {
            let is_active = self.segments.len() == 1 && self.active.is_some();
            if is_active {
                // The bound is smaller than one segment plus this record: start over.
                self.active = None;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            let counts = count_unacked(&seg, self.acked, self.max_record());
            self.total_bytes = self.total_bytes.saturating_sub(seg.len);
            remove_quietly(&seg.path);
            if self.reader.seg_id == seg.id {
                self.reader.file = None;
                self.reader.peeked = None;
                self.reader.seg_id = self.segments.front().map_or(seg.id + 1, |s| s.id);
                self.reader.offset = HEADER_LEN as u64;
            }
            if !counts.is_empty() {
                let kinds: Vec<String> = RecordKind::ALL
                    .iter()
                    .zip(counts.by_kind)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{} {n}", k.as_str()))
                    .collect();
                log::warn!(
                    "spool {} lane over {} bytes: dropped segment {} with {} unacknowledged \
                     records ({} bytes, seq {} to {}: {})",
                    self.lane.as_str(),
                    self.opts.max_bytes,
                    seg.path.display(),
                    counts.records,
                    counts.bytes,
                    counts.first_seq,
                    counts.last_seq,
                    kinds.join(", ")
                );
                self.count_loss(&counts);
            }
            // Records up to the segment's end can never be sent now.
            if let Some(last) = seg.last_seq {
                self.acked = self.acked.max(last);
            }
        }
    }

    /// Writes one encoded frame to the active segment, rotating first when it is full.
    pub(super) fn write_frame(&mut self, frame: &[u8]) -> Result<(), SpoolError> {
        let seg_limit = self.opts.effective_segment_bytes();
        let rotate = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(seg)) => seg.n_records > 0 && seg.len + frame.len() as u64 > seg_limit,
            _ => true,
        };
        if rotate {
            self.seal_active();
            let empty_leftover = self
                .segments
                .back()
                .is_some_and(|s| s.n_records == 0 && s.len == HEADER_LEN as u64);
            if empty_leftover {
                // A segment left with only its header by a failed write: reuse it, so a long
                // disk-full spell does not leave one empty file per failed append.
                let seg = self.segments.back().expect("checked above");
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(|e| SpoolError::io("reopen segment", &seg.path, e))?;
                self.active = Some(file);
            } else {
                self.create_segment()?;
            }
        }
        let seg = self.segments.back().expect("an active segment exists");
        let old_len = seg.len;
        let path = seg.path.clone();
        let file = self.active.as_mut().expect("an active segment is open");
        if let Err(e) = file.write_all(frame) {
            // Remove a partial frame so the segment ends on a frame boundary again, and start
            // a new segment next time: a file-size limit (EFBIG) is per file, and after an I/O
            // error this file is in doubt. If even the truncation fails, the reader skips the
            // partial frame as damage.
            let trimmed = file.set_len(old_len).is_ok();
            // Records already in this segment still get their fsync.
            self.seal_active();
            if !trimmed {
                if let (Some(seg), Ok(m)) = (self.segments.back_mut(), fs::metadata(&path)) {
                    self.total_bytes = self.total_bytes - seg.len + m.len();
                    seg.len = m.len();
                }
            }
            return Err(SpoolError::io("write segment", &path, e));
        }
        Ok(())
    }

    /// Stops appending to the current segment; it becomes sealed (durable via fsync).
    pub(super) fn seal_active(&mut self) {
        if let Some(file) = self.active.take() {
            if let Err(e) = file.sync_data() {
                log::warn!("sync sealed segment: {e}");
            }
        }
    }

    pub(super) fn create_segment(&mut self) -> Result<(), SpoolError> {
        let id = self.next_seg_id;
        let path = self.dir.join(Segment::name(id));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpoolError::io("create segment", &path, e))?;
        if let Err(e) = file.write_all(&frame::encode_header()) {
            drop(file);
            remove_quietly(&path);
            return Err(SpoolError::io("write segment header", &path, e));
        }
        // Make the new name durable, so records fsynced into it later are findable.
        if let Err(e) = cursor::sync_dir(&self.dir) {
            log::warn!("sync spool directory {}: {e}", self.dir.display());
        }
        self.total_bytes += HEADER_LEN as u64;
        self.segments.push_back(Segment {
            id,
            path,
            len: HEADER_LEN as u64,
            first_seq: None,
            last_seq: None,
            n_records: 0,
            damaged: false,
        });
        self.next_seg_id = id + 1;
        self.active = Some(file);
        Ok(())
    }

    pub(super) fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            if let (Some(file), Some(seg)) = (self.active.as_ref(), self.segments.back()) {
                file.sync_data()
                    .map_err(|e| SpoolError::io("sync segment", &seg.path, e))?;
            }
            self.dirty = false;
        }
        self.write_cursor()
    }

    /// Deletes sealed segments at the front whose every record is acknowledged, keeping the
    /// one holding the newest sequence number when `keep_newest`.
    pub(super) fn delete_acked_segments(&mut self, keep_newest: bool) {
        while let Some(seg) = self.segments.front() {
            let sealed = self.segments.len() > 1 || self.active.is_none();
            let done = seg.last_seq.map_or(true, |l| l <= self.acked);
            let holds_newest = seg.last_seq.is_some()
                && self.segments.iter().skip(1).all(|s| s.last_seq.is_none());
            if !(sealed && done) || (keep_newest && holds_newest) {
                break;
            }
            let seg = self.segments.pop_front().expect("front exists");
            self.total_bytes = self.total_bytes.saturating_sub(seg.len);
            if self
                .reader
                .file
                .as_ref()
                .is_some_and(|(id, _)| *id == seg.id)
            {
                self.reader.file = None;
            }
            remove_quietly(&seg.path);
            log::debug!("segment {} fully acknowledged; removed", seg.path.display());
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::spool::test_support::{open_with, payload};

    #[test]
    fn segments_rotate_and_acked_ones_are_deleted() {
        let (_dir, spool) = open_with("rotate", |o| o.segment_bytes = 4096);
        for n in 0..100 {
            spool.append(&payload(n)).unwrap();
        }
        let before = spool.stats();
        assert!(before.n_segments > 2, "{before:?}");
        assert_eq!(before.n_pending, 100);
        for seq in 1..=100 {
            let r = spool.peek().unwrap().unwrap();
            assert_eq!(r.seq, seq);
            spool.ack(&r).unwrap();
        }
        let after = spool.stats();
        assert_eq!(after.n_segments, 1, "only the active segment stays");
        assert_eq!(after.n_pending, 0);
    }

    #[test]
    fn a_record_in_flight_whose_segment_is_dropped_can_still_be_acked() {
        let (_dir, spool) = open_with("inflight", |o| o.max_bytes = 16 * 1024);
        spool.append(&payload(0)).unwrap();
        let in_flight = spool.peek().unwrap().unwrap();
        assert_eq!(in_flight.seq, 1);
        // The spool fills up while the record is being sent: its segment is dropped.
        for n in 1..200 {
            spool.append(&payload(n)).unwrap();
        }
        spool.ack(&in_flight).unwrap();
        let next = spool.peek().unwrap().unwrap();
        assert!(next.seq > 2, "the reader moved past the dropped segments");
        assert!(next.report.records > 0, "{:?}", next.report);
        let mut last = next.seq;
        spool.ack(&next).unwrap();
        while let Some(r) = spool.peek().unwrap() {
            assert_eq!(r.seq, last + 1);
            last = r.seq;
            spool.ack(&r).unwrap();
        }
        assert_eq!(last, 200);
    }
}
