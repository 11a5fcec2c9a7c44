//! The reader: hands out the oldest unacknowledged record, skipping damage, and moves past it
//! on acknowledgement.
//!
//! Invariants: records come out in sequence order, each at most once per acknowledgement; a
//! damaged frame is skipped with a warning and its bytes counted once per segment; every
//! sequence number missing before a record is reported with it as a gap.

use std::fs::File;

use crate::payload::{with_dropped, DropCounts};

use super::frame::HEADER_LEN;
use super::segment::{read_frame_at, resync_file};
use super::{Inner, Record, SpoolError};

/// Where the shipper's reading stands.
#[derive(Debug, Default)]
pub(super) struct Reader {
    /// The segment being read and the offset of the next frame in it.
    pub(super) seg_id: u64,
    pub(super) offset: u64,
    /// A read handle on `seg_id`, kept between calls.
    pub(super) file: Option<(u64, File)>,
    /// The sequence number of the last valid frame passed (for resynchronising after damage).
    pub(super) last_seq: u64,
    /// The record most recently returned by `peek`, and the offset just past it.
    pub(super) peeked: Option<(u64, u64)>,
}

impl Inner {
    pub(super) fn peek(&mut self) -> Result<Option<Record>, SpoolError> {
        let max_record = self.max_record();
        loop {
            // Find the reader's segment, or the next one if it was deleted.
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.id >= self.reader.seg_id)
            else {
                return Ok(None);
            };
            if self.segments[idx].id != self.reader.seg_id {
                self.reader.seg_id = self.segments[idx].id;
                self.reader.offset = HEADER_LEN as u64;
            }
            let is_last = idx + 1 == self.segments.len();
            let (seg_id, seg_len) = (self.segments[idx].id, self.segments[idx].len);
            let seg_path = self.segments[idx].path.clone();

            if self.reader.offset >= seg_len {
                if is_last {
                    return Ok(None);
                }
                self.reader.seg_id = self.segments[idx + 1].id;
                self.reader.offset = HEADER_LEN as u64;
                continue;
            }

            let file = match &self.reader.file {
                Some((id, f)) if *id == seg_id => f,
                _ => {
                    let f = File::open(&seg_path)
                        .map_err(|e| SpoolError::io("open segment", &seg_path, e))?;
                    &self.reader.file.insert((seg_id, f)).1
                }
            };
            let off = self.reader.offset;
            match read_frame_at(file, off, seg_len, max_record) {
                Ok(Ok((seq, source, body, end))) => {
                    self.reader.last_seq = seq;
                    if seq <= self.acked {
                        self.reader.offset = end;
                        continue;
                    }
                    self.reader.peeked = Some((seq, end));
                    let body = String::from_utf8(body)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    // Every number between the last acknowledged record and this one was
                    // assigned to a record that is gone (damage, a truncated, emptied or
                    // quarantined segment): the listener sees the gap, so the report explains it.
                    let gap = seq - self.acked - 1;
                    if gap > 0 && self.gap_logged != seq {
                        self.gap_logged = seq;
                        log::warn!(
                            "spool: records {} to {} are lost (damaged spool); reported with seq {seq}",
                            self.acked + 1,
                            seq - 1
                        );
                    }
                    let mut report = self.unreported;
                    report.corrupt_records += gap;
                    let body = with_dropped(&body, &report);
                    return Ok(Some(Record {
                        seq,
                        lane: self.lane,
                        source,
                        body,
                        report,
                        gap,
                    }));
                }
                Ok(Err(damage)) => {
                    let next = self.skip_damage(idx, off, &damage.to_string(), max_record)?;
                    // Without a valid frame after the damage, the rest of the segment is skipped;
                    // in the active segment later appends land past it, at the old length.
                    self.reader.offset = next.unwrap_or(seg_len);
                }
                Err(e) => return Err(SpoolError::io("read segment", &seg_path, e)),
            }
        }
    }

    /// Finds the next valid frame after damage at `off` in segment `idx`; logs and (once per
    /// segment) counts what is skipped.
    pub(super) fn skip_damage(
        &mut self,
        idx: usize,
        off: u64,
        damage: &str,
        max_record: usize,
    ) -> Result<Option<u64>, SpoolError> {
        let seg = &self.segments[idx];
        let file = crate::fsutil::open_regular(&seg.path)
            .map_err(|e| SpoolError::io("open segment", &seg.path, e))?;
        let next = resync_file(&file, off + 1, seg.len, self.reader.last_seq, max_record)
            .map_err(|e| SpoolError::io("read segment", &seg.path, e))?;
        let skipped = next.unwrap_or(seg.len) - off;
        log::warn!(
            "segment {}: {damage} at offset {off}; skipping {skipped} bytes",
            seg.path.display()
        );
        let (seg_len, already_counted) = (seg.len, seg.damaged);
        if !already_counted {
            // The records lost in the damage are reported as the gap before the next record
            // (see `peek`); here only the bytes, and the records for the lifetime counters.
            self.count_loss(&DropCounts {
                corrupt_bytes: skipped,
                ..DropCounts::default()
            });
            if let Some(n) = next {
                if let Ok(Ok((seq, ..))) = read_frame_at(&file, n, seg_len, max_record) {
                    self.lost.corrupt_records += seq.saturating_sub(self.reader.last_seq + 1);
                }
            }
            self.segments[idx].damaged = true;
        }
        Ok(next)
    }

    pub(super) fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some((peeked, end)) = self.reader.peeked.take() {
            if peeked == seq {
                self.reader.offset = end;
            }
        }
        self.acked = self.acked.max(seq);
        let saved = self.write_cursor();
        // Acknowledged records may go even when the cursor could not be saved: they were
        // delivered, and on a full disk deleting them is what frees space. Only the segment
        // with the newest sequence number stays then, because with a stale cursor it is what
        // keeps the numbering from going backwards after a restart.
        self.delete_acked_segments(saved.is_err());
        saved
    }
}
