//! Recovery at open: takes the segments found in the directory, truncates a torn tail, skips
//! and counts damage, quarantines what cannot be read, and recovers the acknowledged position
//! and the sequence number from the segments and the cursor.
//!
//! Invariants: nothing found on disk stops the open or panics; the sequence number never goes
//! below one already assigned (the cursor's `next_seq` is a floor even when its checksum fails);
//! every number assigned and no longer held is counted as lost to damage.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use crate::payload::{DropCounts, Lane};

use super::frame::{self, HeaderCheck, HEADER_LEN};
use super::reader::Reader;
use super::segment::{read_frame_at, remove_quietly, resync_file, Segment, MAX_SEGMENT_FILE};
use super::{
    cursor, lock_dir, Inner, SpoolError, SpoolOptions, DEAD_LETTER_FILE, LOCK_FILE, SPIKE_LANE_DIR,
};

/// Opens (or creates) the spool in `opts.dir`: takes the lock, scans every segment, truncates a
/// torn tail, counts damage, and recovers the cursor and the sequence number. The main lane's
/// open also quarantines anything but a directory under the spike lane's name.
pub(super) fn open(opts: SpoolOptions, lane: Lane) -> Result<Inner, SpoolError> {
    let dir = opts.dir.clone();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| SpoolError::io("create spool directory", &dir, e))?;
    let mut found = DropCounts::default();
    // A directory or other non-file where the lock file belongs would stop every start.
    quarantine_if_not_regular(&dir.join(LOCK_FILE), &mut found);
    let lock = lock_dir(&dir)?;
    for name in [
        cursor::FILE_NAME,
        cursor::TMP_NAME,
        DEAD_LETTER_FILE,
        &format!("{DEAD_LETTER_FILE}.1"),
    ] {
        quarantine_if_not_regular(&dir.join(name), &mut found);
    }
    let _ = fs::remove_file(dir.join(cursor::TMP_NAME));
    if lane == Lane::Main {
        let spike = dir.join(SPIKE_LANE_DIR);
        if let Ok(meta) = fs::symlink_metadata(&spike) {
            if !meta.file_type().is_dir() {
                let why = format!("is {}, not a directory", crate::fsutil::kind(&meta));
                quarantine(&spike, &why, &mut found);
            }
        }
    }

    let mut ids = Vec::new();
    let entries =
        fs::read_dir(&dir).map_err(|e| SpoolError::io("list spool directory", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("list spool directory", &dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(Segment::parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    // Above every name in the directory, also the ones not taken into the spool.
    let next_seg_id = ids.last().map_or(1, |id| id + 1);

    let saved = match cursor::read(&dir) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            if !ids.is_empty() {
                log::warn!(
                    "spool {}: no cursor; every record still in the spool will be sent again",
                    dir.display()
                );
            }
            None
        }
        Err(reason) => {
            log::warn!("{reason}; every record still in the spool will be sent again");
            None
        }
    };
    let saved_acked = saved.map(|(c, _)| c.acked);

    let max_record = opts.effective_max_record() as usize;
    let mut segments = VecDeque::new();
    let mut prev_seq: Option<u64> = None;
    // Records held above the saved cursor's `acked`, for counting the holes below.
    let mut n_above_saved = 0u64;
    let n_ids = ids.len();
    for (i, id) in ids.into_iter().enumerate() {
        let is_last = i + 1 == n_ids;
        let path = dir.join(Segment::name(id));
        let mut scan = Scan {
            max_record,
            above: saved_acked.unwrap_or(0),
            n_above: 0,
            prev_seq: &mut prev_seq,
            found: &mut found,
        };
        let seg = scan_segment(id, path, is_last, &mut scan);
        n_above_saved += scan.n_above;
        if let Some(seg) = seg {
            segments.push_back(seg);
        }
    }

    let max_seq = segments
        .iter()
        .filter_map(|s| s.last_seq)
        .max()
        .unwrap_or(0);
    let first_seq = segments.iter().find_map(|s| s.first_seq);
    let n_held: u64 = segments.iter().map(|s| s.n_records).sum();
    let trusted = match saved {
        Some((c, cursor::Checksum::Mismatch)) => {
            log::warn!(
                "spool {}: the cursor's checksum does not match (damaged file, acked {} next_seq \
                 {}); positions recovered from the segments, every record still held will be \
                 sent again",
                dir.display(),
                c.acked,
                c.next_seq
            );
            None
        }
        Some((c, _)) if c.acked >= c.next_seq => {
            log::warn!(
                "spool {}: the cursor is impossible (acked {} is not below next_seq {}); \
                 positions recovered from the segments, every record still held will be sent \
                 again",
                dir.display(),
                c.acked,
                c.next_seq
            );
            None
        }
        Some((c, _)) => Some(c),
        None => None,
    };
    let (acked, n_above_acked) = match trusted {
        Some(c) => (c.acked, n_above_saved),
        None => (first_seq.map_or(max_seq, |f| f.saturating_sub(1)), n_held),
    };
    // A damaged cursor's next_seq is still a floor worth keeping: going below a number
    // already sent would make the listener take new records for duplicates.
    let next_seq = saved
        .map_or(0, |(c, _)| c.next_seq)
        .max(max_seq + 1)
        .max(acked + 1);
    // Sequence numbers above `acked` that were assigned and are no longer held: lost to
    // damage, a truncated or zero-length segment, or a quarantined file. The reader reports
    // each such gap with the record after it.
    let holes = (next_seq - 1 - acked).saturating_sub(n_above_acked);
    if holes > 0 {
        log::warn!(
            "spool {}: {holes} records between seq {} and {} are missing (damage); reported \
             in data.agent.dropped",
            dir.display(),
            acked + 1,
            next_seq - 1
        );
    }
    let mut lost = found;
    lost.corrupt_records += holes;

    let total_bytes = segments.iter().map(|s| s.len).sum();
    let reader = Reader {
        seg_id: segments.front().map_or(0, |s| s.id),
        offset: HEADER_LEN as u64,
        ..Reader::default()
    };
    let mut inner = Inner {
        lane,
        dir: dir.clone(),
        opts,
        next_seg_id,
        segments,
        active: None,
        next_seq,
        acked,
        reader,
        total_bytes,
        gap_logged: 0,
        unreported: {
            let mut u = saved.map_or_else(DropCounts::default, |(c, _)| {
                DropCounts::from_array(c.unreported)
            });
            u.add(&found);
            u
        },
        lost,
        n_dead_letters: 0,
        write_error_streak: 0,
        dirty: false,
        _lock: lock,
    };
    let saved = inner.write_cursor();
    if let Err(e) = &saved {
        log::warn!("{e}");
    }
    inner.delete_acked_segments(saved.is_err());
    let stats = inner.stats();
    log::info!(
        "spool {}: {} segments, {} bytes, {} records pending, next seq {}",
        dir.display(),
        stats.n_segments,
        stats.bytes,
        stats.n_pending,
        stats.next_seq
    );
    Ok(inner)
}

/// What scanning the segments at open carries from one segment to the next.
struct Scan<'a> {
    max_record: usize,
    /// Count the records with a sequence number above this one (the saved cursor's `acked`).
    above: u64,
    n_above: u64,
    /// The last valid sequence number seen (resynchronising only accepts larger ones).
    prev_seq: &'a mut Option<u64>,
    /// Damage found: bytes skipped, truncated or quarantined.
    found: &'a mut DropCounts,
}

/// Renames `path` aside (to `<name>.bad`, or `<name>.bad.N` when taken) so the spool can start
/// without it; the file is kept for inspection. Returns whether it was moved.
fn quarantine(path: &Path, why: &str, found: &mut DropCounts) -> bool {
    let size = fs::symlink_metadata(path).map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    let mut aside = PathBuf::from(format!("{}.bad", path.display()));
    let mut n = 1;
    while fs::symlink_metadata(&aside).is_ok() {
        aside = PathBuf::from(format!("{}.bad.{n}", path.display()));
        n += 1;
    }
    match fs::rename(path, &aside) {
        Ok(()) => {
            log::error!(
                "spool: {} {why}; moved aside to {} and left out of the spool (its records, if \
                 any, are reported lost in data.agent.dropped)",
                path.display(),
                aside.display()
            );
            found.corrupt_bytes += size;
            true
        }
        Err(e) => {
            log::error!(
                "spool: {} {why}, and moving it aside failed: {e}; left out of the spool",
                path.display()
            );
            false
        }
    }
}

/// Quarantines `path` when something other than a regular file (a directory, a FIFO, a
/// symbolic link) sits under a name the spool uses.
fn quarantine_if_not_regular(path: &Path, found: &mut DropCounts) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            let why = format!("is {}, not a regular file", crate::fsutil::kind(&meta));
            quarantine(path, &why, found);
        }
    }
}

/// Reads and checks one segment at open, a frame at a time (memory stays bounded by the
/// largest record whatever the file's size). Returns `None` when the segment holds no record
/// (it is then removed) or cannot be read (it is then quarantined).
fn scan_segment(id: u64, path: PathBuf, is_last: bool, scan: &mut Scan<'_>) -> Option<Segment> {
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            log::error!("segment {}: {e}; left out of the spool", path.display());
            return None;
        }
    };
    if !meta.file_type().is_file() {
        let why = format!("is {}, not a regular file", crate::fsutil::kind(&meta));
        quarantine(&path, &why, scan.found);
        return None;
    }
    let size = meta.len();
    if size > MAX_SEGMENT_FILE {
        // Not something this spool wrote (segments stay near `segment_bytes`).
        let why = format!("has {size} bytes, far more than any segment");
        quarantine(&path, &why, scan.found);
        return None;
    }
    let file = match crate::fsutil::open_regular(&path) {
        Ok(f) => f,
        Err(e) => {
            quarantine(&path, &format!("cannot be opened ({e})"), scan.found);
            return None;
        }
    };
    let mut seg = Segment {
        id,
        path,
        len: size,
        first_seq: None,
        last_seq: None,
        n_records: 0,
        damaged: false,
    };
    let mut header = [0u8; HEADER_LEN];
    let header_read = if size >= HEADER_LEN as u64 {
        file.read_exact_at(&mut header, 0).map(|()| HEADER_LEN)
    } else {
        Ok(0)
    };
    let header_len = match header_read {
        Ok(n) => n,
        Err(e) => {
            quarantine(&seg.path, &format!("cannot be read ({e})"), scan.found);
            return None;
        }
    };
    match frame::check_header(&header[..header_len]) {
        HeaderCheck::Valid => {}
        HeaderCheck::Short => {
            // An interrupted segment creation, or a segment emptied by damage: any records it
            // held show up as a gap in the sequence numbers, which is reported.
            // No frame fits in it, so no bytes of a record are lost with it.
            log::warn!(
                "segment {}: {size} bytes, shorter than a header; removed",
                seg.path.display(),
            );
            remove_quietly(&seg.path);
            return None;
        }
        HeaderCheck::NewerVersion(version) => {
            // A newer agent's segment, or a damaged version field: keep it for whoever can read
            // it, and start without it.
            let why = format!("has format version {version}, newer than this agent reads");
            quarantine(&seg.path, &why, scan.found);
            return None;
        }
        HeaderCheck::BadMagic => {
            // The frames carry their own checksums, so a damaged header costs nothing more.
            log::warn!(
                "segment {}: damaged header at offset 0; reading its frames anyway",
                seg.path.display()
            );
            seg.damaged = true;
        }
    }

    let mut off = HEADER_LEN as u64;
    while off < size {
        let read = read_frame_at(&file, off, size, scan.max_record);
        let damage = match read {
            Ok(Ok((seq, _source, _body, end))) => {
                seg.first_seq.get_or_insert(seq);
                seg.last_seq = Some(seq);
                seg.n_records += 1;
                if seq > scan.above {
                    scan.n_above += 1;
                }
                *scan.prev_seq = Some(seq);
                off = end;
                continue;
            }
            Ok(Err(damage)) => damage.to_string(),
            Err(e) => format!("read error ({e})"),
        };
        seg.damaged = true;
        let after = scan.prev_seq.unwrap_or(0);
        let next = resync_file(&file, off + 1, size, after, scan.max_record).unwrap_or(None);
        match next {
            Some(next) => {
                log::warn!(
                    "segment {}: {damage} at offset {off}; skipped {} bytes to the next valid frame",
                    seg.path.display(),
                    next - off
                );
                scan.found.corrupt_bytes += next - off;
                off = next;
            }
            None if is_last => {
                log::warn!(
                    "segment {}: {damage} at offset {off}; torn tail of {} bytes truncated",
                    seg.path.display(),
                    size - off
                );
                scan.found.corrupt_bytes += size - off;
                let truncated = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .and_then(|f| f.set_len(off).and_then(|()| f.sync_all()));
                if let Err(e) = truncated {
                    // Appends go to a new segment anyway; the reader skips the tail as damage.
                    log::warn!("truncate segment {}: {e}", seg.path.display());
                } else {
                    seg.len = off;
                }
                break;
            }
            None => {
                log::warn!(
                    "segment {}: {damage} at offset {off}; the remaining {} bytes of the segment \
                     are skipped",
                    seg.path.display(),
                    size - off
                );
                scan.found.corrupt_bytes += size - off;
                break;
            }
        }
    }
    if seg.n_records == 0 {
        log::warn!("segment {}: no valid record; removed", seg.path.display());
        remove_quietly(&seg.path);
        return None;
    }
    Some(seg)
}
