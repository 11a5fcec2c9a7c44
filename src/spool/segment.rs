//! One segment file: its name, what the spool knows about it, and reading its frames from disk.
//!
//! Invariants: a frame's length is checked before it is trusted, so reading never allocates
//! more than the largest record; a damaged frame is an inner error, an I/O failure the outer one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::payload::Source;

use super::frame::{self, FRAME_HEADER_LEN};

/// A segment file larger than this (1 GiB) was not written by the spool, whose segments stay
/// near `segment_bytes` plus at most one record; it is not read into memory.
pub(super) const MAX_SEGMENT_FILE: u64 = 1 << 30;

/// A segment file as the spool tracks it.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    /// Bytes in the file, header included.
    pub(super) len: u64,
    pub(super) first_seq: Option<u64>,
    pub(super) last_seq: Option<u64>,
    pub(super) n_records: u64,
    /// Damage was already found and counted in this segment; the reader does not count it twice.
    pub(super) damaged: bool,
}

impl Segment {
    pub(super) fn name(id: u64) -> String {
        format!("seg-{id:020}.spool")
    }

    pub(super) fn parse_name(name: &str) -> Option<u64> {
        let digits = name.strip_prefix("seg-")?.strip_suffix(".spool")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// How many bytes [`resync_file`] examines per step (plus one largest frame).
const RESYNC_WINDOW: u64 = 1 << 20;

/// [`frame::resync`] over a file, one bounded window at a time: the offset of the next valid
/// frame at or after `from` with a sequence number above `after`.
pub(super) fn resync_file(
    file: &File,
    from: u64,
    len: u64,
    after: u64,
    max_record: usize,
) -> io::Result<Option<u64>> {
    let span = RESYNC_WINDOW + (FRAME_HEADER_LEN + max_record) as u64;
    let mut buf = Vec::new();
    let mut start = from;
    while start + (FRAME_HEADER_LEN as u64) <= len {
        let end = (start + span).min(len);
        buf.resize((end - start) as usize, 0);
        file.read_exact_at(&mut buf, start)?;
        // Only candidates in the window proper are final: one further on may be a frame that
        // does not fit in this buffer, and the next window examines it whole.
        if let Some(i) = frame::resync(&buf, 0, after, max_record) {
            if (i as u64) < RESYNC_WINDOW || end == len {
                return Ok(Some(start + i as u64));
            }
        }
        if end == len {
            return Ok(None);
        }
        start += RESYNC_WINDOW;
    }
    Ok(None)
}

/// Removes `path`, logging a failure other than the file being gone already.
pub(super) fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("remove {}: {e}", path.display());
        }
    }
}

/// Reads the frame at `off` through `file` without trusting its length before checking it.
/// The outer error is an I/O failure; the inner one is damage.
#[allow(clippy::type_complexity)] // a one-off internal result, clearer inline than named
pub(super) fn read_frame_at(
    file: &File,
    off: u64,
    seg_len: u64,
    max_record: usize,
) -> io::Result<Result<(u64, Source, Vec<u8>, u64), frame::Damage>> {
    if off + FRAME_HEADER_LEN as u64 > seg_len {
        return Ok(Err(frame::Damage::Truncated));
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    file.read_exact_at(&mut h, off)?;
    let header = frame::FrameHeader::parse(&h);
    if let Err(d) = header.check(max_record) {
        return Ok(Err(d));
    }
    let end = off + header.frame_len() as u64;
    if end > seg_len {
        return Ok(Err(frame::Damage::Truncated));
    }
    let mut body = vec![0u8; header.len as usize];
    file.read_exact_at(&mut body, off + FRAME_HEADER_LEN as u64)?;
    if !header.verifies(&body) {
        return Ok(Err(frame::Damage::Checksum));
    }
    let source = frame::source_from_tag(header.tag).unwrap_or(Source::SystemMetrics);
    Ok(Ok((header.seq, source, body, end)))
}
