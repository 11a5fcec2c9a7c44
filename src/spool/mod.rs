//! The spool: the write-ahead, crash-safe queue between the collectors and the shipper.
//!
//! Collectors [`Spool::append`] payloads; the shipper [`Spool::peek`]s the oldest unacknowledged
//! record, sends it, and [`Spool::ack`]s it after the listener answered 200 (or after the record
//! was moved to the dead-letter file). Nothing reaches the listener without passing through here.
//!
//! On disk (see `docs/delivery.md`): append-only segment files `seg-<20 digits>.spool` made of
//! checksummed frames ([`frame`]), the acknowledged cursor ([`cursor`]), a `lock` file, and
//! `dead-letter.jsonl`.
//!
//! Invariants:
//! - A record never spans segments; segments existing at open are never appended to again.
//! - Only whole segments are deleted: when every record in them is acknowledged, or when the
//!   size bound forces the oldest out (counted, and reported as `data.agent.dropped` in the
//!   next payload delivered: the report is added when a record is handed to the shipper and
//!   cleared only when the listener acknowledged it, so it cannot be lost with a dropped record
//!   or a restart — it is kept in the cursor file).
//! - Sequence numbers are assigned only to records actually written, increase by one per
//!   record, and never go backwards across restarts (recovered from the segments and the cursor).
//! - Nothing here panics on what it reads from disk, and nothing found there stops the open:
//!   damage is truncated (a torn tail) or skipped and counted (damage in the middle), with a
//!   warning naming the segment and offset; what cannot be read at all (a newer format, a
//!   directory, FIFO, device or symbolic link under a spool name) is renamed aside to `.bad`.
//! - Every sequence number assigned and no longer held is reported: the record handed out after
//!   a gap carries it in `corrupt_records` (see [`Record::gap`]).
//! - Segments are read a frame at a time: memory stays bounded by the largest record.
//! - A failed write (ENOSPC, EIO, ...) drops the payload being appended with a counted error and
//!   leaves the spool usable; the next append simply tries again.
//! - Durability: a record is in the page cache when `append` returns (it survives `kill -9`);
//!   [`Spool::sync`] makes it survive power loss and must be called at least once per
//!   collection cycle. Sealed segments and the cursor are fsynced when written.

pub mod cursor;
pub mod frame;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::json::Json;
use crate::payload::{render_record, with_dropped, AgentInfo, AgentStamp, Payload, Source};

use cursor::CursorState;
use frame::{HeaderCheck, FRAME_HEADER_LEN, HEADER_LEN};

/// The lock file's name: held with `flock` for as long as a [`Spool`] is open.
pub const LOCK_FILE: &str = "lock";
/// The dead-letter file's name: one JSON line per payload the listener rejected for good.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";
/// A segment file larger than this (1 GiB) was not written by the spool, whose segments stay
/// near `segment_bytes` plus at most one record; it is not read into memory.
const MAX_SEGMENT_FILE: u64 = 1 << 30;

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (created with mode 0700 when missing).
    pub dir: PathBuf,
    /// Upper bound of all segment files together. Defaults to 100 MiB (`[buffer] max_size_mb`).
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size. Defaults to 4 MiB, and to at
    /// most a quarter of `max_bytes` so dropping the oldest segment frees a useful share.
    pub segment_bytes: u64,
    /// The largest single record accepted; larger payloads are dropped with a counted error.
    /// Defaults to 8 MiB, and to at most half of `max_bytes`.
    pub max_record_bytes: u64,
    /// The dead-letter file is rotated to `dead-letter.jsonl.1` past this size. Defaults to
    /// 10 MiB.
    pub dead_letter_max_bytes: u64,
    /// Version and host stamped into `data.agent`.
    pub agent: AgentInfo,
}

impl SpoolOptions {
    /// Options with every default, for the spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolOptions {
        SpoolOptions {
            dir: dir.into(),
            max_bytes: 100 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            max_record_bytes: 8 * 1024 * 1024,
            dead_letter_max_bytes: 10 * 1024 * 1024,
            agent: AgentInfo::current(),
        }
    }

    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.min(self.max_bytes / 4).max(4096)
    }

    fn effective_max_record(&self) -> u64 {
        self.max_record_bytes
            .min(self.max_bytes / 2)
            .min(u64::from(u32::MAX))
            .max(1)
    }
}

/// What can go wrong in the spool.
#[derive(Debug)]
pub enum SpoolError {
    /// A file operation failed (`op` says which, `path` on what): disk full, I/O error,
    /// permissions.
    Io {
        /// What was being done, e.g. `write segment`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the spool's lock file: two agents must not share one spool.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A payload is larger than the largest record the spool accepts; it was dropped.
    TooLarge {
        /// Its size in bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

impl SpoolError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the error is the disk (or a quota, or a file size limit) being full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
            ),
            _ => false,
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            SpoolError::Locked { path } => write!(
                f,
                "spool lock {} is held by another process (two agents on one spool?)",
                path.display()
            ),
            SpoolError::TooLarge { bytes, limit } => {
                write!(f, "payload of {bytes} bytes is over the {limit} byte limit")
            }
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One stored payload, as the shipper gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The payload's sequence number (`data.agent.seq`).
    pub seq: u64,
    /// The listener source.
    pub source: Source,
    /// The envelope without `project` (see [`crate::payload::envelope_body`]), including
    /// `data.agent.dropped` when `report` is not empty.
    pub body: String,
    /// The loss report this body carries; acknowledging the record clears it.
    pub report: DropCounts,
    /// Sequence numbers missing just before this record (lost to damage), included in
    /// `report.corrupt_records`; acknowledging the record closes the gap.
    pub gap: u64,
}

/// Losses not yet reported to the listener; sent as `data.agent.dropped` with the next payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Unacknowledged records removed because the spool reached `max_bytes`.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Those records per source, in [`Source::ALL`] order.
    pub by_source: [u64; 4],
    /// Payloads dropped because writing them failed (disk full, I/O error).
    pub write_errors: u64,
    /// Payloads dropped because they were over `max_record_bytes`.
    pub oversized: u64,
    /// Records lost to damage found in segments (counted from sequence gaps).
    pub corrupt_records: u64,
    /// Bytes of damaged data skipped or truncated.
    pub corrupt_bytes: u64,
}

impl DropCounts {
    /// Whether nothing was lost.
    pub fn is_empty(&self) -> bool {
        *self == DropCounts::default()
    }

    fn to_array(self) -> [u64; cursor::UNREPORTED_LEN] {
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

    fn from_array(v: [u64; cursor::UNREPORTED_LEN]) -> DropCounts {
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

    fn subtract(&mut self, delivered: &DropCounts) {
        let mut mine = self.to_array();
        for (m, d) in mine.iter_mut().zip(delivered.to_array()) {
            *m = m.saturating_sub(d);
        }
        *self = DropCounts::from_array(mine);
    }

    fn add(&mut self, other: &DropCounts) {
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

    /// The `data.agent.dropped` object.
    pub fn to_json(&self) -> Json {
        let mut by_source = Json::object();
        for (s, n) in Source::ALL.iter().zip(self.by_source) {
            if n > 0 {
                by_source.push(s.as_str(), n);
            }
        }
        Json::object()
            .field("records", self.records)
            .field("bytes", self.bytes)
            .field("by_source", by_source)
            .field("write_errors", self.write_errors)
            .field("oversized", self.oversized)
            .field("corrupt_records", self.corrupt_records)
            .field("corrupt_bytes", self.corrupt_bytes)
    }
}

/// A snapshot of the spool's state and lifetime counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Segment files on disk.
    pub n_segments: usize,
    /// Their total size.
    pub bytes: u64,
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// The highest acknowledged sequence number.
    pub acked_seq: u64,
    /// Records appended and not yet acknowledged (approximate after damage).
    pub n_pending: u64,
    /// Everything lost since the spool was opened (including what was found at open).
    pub lost: DropCounts,
    /// Payloads moved to the dead-letter file.
    pub n_dead_letters: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes in the file, header included.
    len: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    n_records: u64,
    /// Damage was already found and counted in this segment; the reader does not count it twice.
    damaged: bool,
}

impl Segment {
    fn name(id: u64) -> String {
        format!("seg-{id:020}.spool")
    }

    fn parse_name(name: &str) -> Option<u64> {
        let digits = name.strip_prefix("seg-")?.strip_suffix(".spool")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[derive(Debug, Default)]
struct Reader {
    /// The segment being read and the offset of the next frame in it.
    seg_id: u64,
    offset: u64,
    /// A read handle on `seg_id`, kept between calls.
    file: Option<(u64, File)>,
    /// The sequence number of the last valid frame passed (for resynchronising after damage).
    last_seq: u64,
    /// The record most recently returned by `peek`, and the offset just past it.
    peeked: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: SpoolOptions,
    segments: VecDeque<Segment>,
    /// The id the next segment gets: ids only grow, because the reader's position refers to
    /// them (a segment at or above the reader's id is where it continues).
    next_seg_id: u64,
    /// Append handle on the last segment; `None` until the first append after open, or after a
    /// write error left the segment's tail in doubt.
    active: Option<File>,
    next_seq: u64,
    acked: u64,
    reader: Reader,
    total_bytes: u64,
    /// The record whose preceding gap was last logged (a retried peek logs it once).
    gap_logged: u64,
    /// Losses not yet reported in a payload.
    unreported: DropCounts,
    /// Lifetime losses.
    lost: DropCounts,
    n_dead_letters: u64,
    /// Consecutive failed appends (for logging the start and the end of a streak only).
    write_error_streak: u64,
    /// Appends since the last `sync`.
    dirty: bool,
    /// Incremented on every successful append; the shipper waits on it.
    generation: u64,
    _lock: File,
}

/// The spool. Shared between threads as `Arc<Spool>`; every method takes `&self`.
#[derive(Debug)]
pub struct Spool {
    inner: Mutex<Inner>,
    appended: Condvar,
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("open lock file", &path, e))?;
    let rc = crate::sys::flock_exclusive_nonblocking(file.as_raw_fd());
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Locked { path });
        }
        return Err(SpoolError::io("lock", &path, err));
    }
    // The pid is only for operators reading the file; the lock itself is the flock, which the
    // kernel releases when the process dies, even with kill -9.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

impl Spool {
    /// Opens (or creates) the spool in `opts.dir`: takes the lock, scans every segment,
    /// truncates a torn tail, counts damage, and recovers the cursor and the sequence number.
    pub fn open(opts: SpoolOptions) -> Result<Spool, SpoolError> {
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
            generation: 0,
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
        Ok(Spool {
            inner: Mutex::new(inner),
            appended: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the files inconsistent (every file change
        // is a single write or rename), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `payload`, stamping `data.agent` (version, host, the next sequence number,
    /// collected_at). Returns the sequence number. The record is in the page cache when this
    /// returns (it survives the process being killed); [`Spool::sync`] makes it durable.
    ///
    /// On error the payload is dropped and counted (reported with the next payload delivered);
    /// it takes no sequence number, the spool stays usable and the next call tries again.
    pub fn append(&self, payload: &Payload) -> Result<u64, SpoolError> {
        let result = self.lock().append(payload);
        if result.is_ok() {
            self.appended.notify_all();
        }
        result
    }

    /// Flushes appended records and the cursor to stable storage (fdatasync). Call it at least
    /// once per collection cycle, after the cycle's appends.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.lock().sync()
    }

    /// The oldest record not yet acknowledged, if any. Damaged frames met on the way are
    /// skipped with a warning.
    pub fn peek(&self) -> Result<Option<Record>, SpoolError> {
        self.lock().peek()
    }

    /// The listener stored `record`: marks every record up to its seq acknowledged, clears the
    /// loss report it carried, persists the cursor and deletes segments that are now fully
    /// acknowledged. An error means only the cursor could not be saved: after a restart those
    /// records would be sent again.
    pub fn ack(&self, record: &Record) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        // The gap is not a pending counter: acknowledging closes it by moving `acked`.
        let mut delivered = record.report;
        delivered.corrupt_records = delivered.corrupt_records.saturating_sub(record.gap);
        inner.unreported.subtract(&delivered);
        inner.ack(record.seq)
    }

    /// The listener rejected `record` for good: appends it (the `body` sent, the listener's
    /// `status` and `answer`) to the dead-letter file, fsynced, then acknowledges it so one
    /// rejected payload never blocks the queue. Its loss report stays pending for the next
    /// payload. If the dead letter cannot be written the record is acknowledged anyway (and
    /// the error returned): it can never be delivered.
    pub fn dead_letter(
        &self,
        record: &Record,
        body: &str,
        status: u16,
        answer: &str,
    ) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        // Acknowledging closes the gap before the record; its report was not delivered, so the
        // gap becomes a pending counter.
        inner.unreported.corrupt_records += record.gap;
        let written = inner.dead_letter(record, body, status, answer);
        let acked = inner.ack(record.seq);
        written.and(acked)
    }

    /// A counter that increases with every successful append (and every
    /// [`Spool::wake_waiters`]).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Ends every [`Spool::wait_for_append`] in progress or about to start for a generation
    /// observed before this call, as if something was appended: how the daemon wakes an idle
    /// shipper at once on a stop request, so it can wait for appends without polling.
    pub fn wake_waiters(&self) {
        self.lock().generation += 1;
        self.appended.notify_all();
    }

    /// Waits up to `timeout` for an append after `generation` was observed; returns the
    /// current generation.
    pub fn wait_for_append(&self, generation: u64, timeout: Duration) -> u64 {
        let guard = self.lock();
        let (guard, _) = self
            .appended
            .wait_timeout_while(guard, timeout, |inner| inner.generation == generation)
            .unwrap_or_else(|p| p.into_inner());
        guard.generation
    }

    /// A snapshot of sizes, positions and counters.
    pub fn stats(&self) -> SpoolStats {
        self.lock().stats()
    }

    /// The spool directory.
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.sync() {
            log::warn!("final spool sync failed: {e}");
        }
    }
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

/// How many bytes [`resync_file`] examines per step (plus one largest frame).
const RESYNC_WINDOW: u64 = 1 << 20;

/// [`frame::resync`] over a file, one bounded window at a time: the offset of the next valid
/// frame at or after `from` with a sequence number above `after`.
fn resync_file(
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

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("remove {}: {e}", path.display());
        }
    }
}

/// Counts, by reading it a frame at a time, what a segment about to be dropped still holds
/// above `acked`; sequence numbers above `acked` up to its last one that it does not hold count
/// as lost to damage.
fn count_unacked(seg: &Segment, acked: u64, max_record: usize) -> DropCounts {
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
    fn max_record(&self) -> usize {
        self.opts.effective_max_record() as usize
    }

    fn cursor_state(&self) -> CursorState {
        CursorState {
            acked: self.acked,
            next_seq: self.next_seq,
            unreported: self.unreported.to_array(),
        }
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        cursor::write(&self.dir, &self.cursor_state())
            .map_err(|e| SpoolError::io("write cursor", &self.dir.join(cursor::FILE_NAME), e))
    }

    fn stats(&self) -> SpoolStats {
        let n_pending = self
            .segments
            .iter()
            .map(|s| match (s.first_seq, s.last_seq) {
                (Some(f), Some(l)) if f > self.acked => s.n_records.min(l - f + 1),
                (Some(_), Some(l)) if l > self.acked => l - self.acked,
                _ => 0,
            })
            .sum();
        SpoolStats {
            n_segments: self.segments.len(),
            bytes: self.total_bytes,
            next_seq: self.next_seq,
            acked_seq: self.acked,
            n_pending,
            lost: self.lost,
            n_dead_letters: self.n_dead_letters,
        }
    }

    fn count_loss(&mut self, counts: &DropCounts) {
        self.unreported.add(counts);
        self.lost.add(counts);
    }

    fn append(&mut self, payload: &Payload) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let stamp = AgentStamp {
            agent: &self.opts.agent,
            seq,
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
        self.generation += 1;
        Ok(seq)
    }

    /// The filesystem is full below `max_bytes`: frees the space of acknowledged records before
    /// anything new is dropped. The active segment is sealed (`write_frame` did that already on
    /// the failed write) so that a fully acknowledged one can go too; the cursor is saved in the
    /// space freed, so the numbering survives a restart. Returns whether anything was freed.
    fn reclaim_acked(&mut self) -> bool {
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
    fn make_room(&mut self, need: u64) {
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
                log::warn!(
                    "spool over {} bytes: dropped segment {} with {} unacknowledged records \
                     ({} bytes)",
                    self.opts.max_bytes,
                    seg.path.display(),
                    counts.records,
                    counts.bytes
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
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), SpoolError> {
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
    fn seal_active(&mut self) {
        if let Some(file) = self.active.take() {
            if let Err(e) = file.sync_data() {
                log::warn!("sync sealed segment: {e}");
            }
        }
    }

    fn create_segment(&mut self) -> Result<(), SpoolError> {
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

    fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            if let (Some(file), Some(seg)) = (self.active.as_ref(), self.segments.back()) {
                file.sync_data()
                    .map_err(|e| SpoolError::io("sync segment", &seg.path, e))?;
            }
            self.dirty = false;
        }
        self.write_cursor()
    }

    fn peek(&mut self) -> Result<Option<Record>, SpoolError> {
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
                    let mut body = String::from_utf8(body)
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
                    if !report.is_empty() {
                        body = with_dropped(&body, &report.to_json());
                    }
                    return Ok(Some(Record {
                        seq,
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
    fn skip_damage(
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

    fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
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

    /// Deletes sealed segments at the front whose every record is acknowledged, keeping the
    /// one holding the newest sequence number when `keep_newest`.
    fn delete_acked_segments(&mut self, keep_newest: bool) {
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

    fn dead_letter(
        &mut self,
        record: &Record,
        body: &str,
        status: u16,
        answer: &str,
    ) -> Result<(), SpoolError> {
        let path = self.dir.join(DEAD_LETTER_FILE);
        if fs::metadata(&path).is_ok_and(|m| m.len() >= self.opts.dead_letter_max_bytes) {
            let old = self.dir.join(format!("{DEAD_LETTER_FILE}.1"));
            if let Err(e) = fs::rename(&path, &old) {
                log::warn!("rotate dead-letter file {}: {e}", path.display());
            }
        }
        let line = Json::object()
            .field("at", crate::payload::unix_now())
            .field("seq", record.seq)
            .field("source", record.source.as_str())
            .field("status", u64::from(status))
            .field("answer", answer)
            .field("payload", body)
            .to_json_string();
        let result = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
        self.n_dead_letters += 1;
        result.map_err(|e| SpoolError::io("write dead letter", &path, e))
    }
}

/// Reads the frame at `off` through `file` without trusting its length before checking it.
/// The outer error is an I/O failure; the inner one is damage.
#[allow(clippy::type_complexity)] // a one-off internal result, clearer inline than named
fn read_frame_at(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bv-spool-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn payload(n: i64) -> Payload {
        Payload {
            source: Source::PgLog,
            collected_at: 1_700_000_000.0 + n as f64,
            correlation_id: None,
            data: Json::object().field("n", n),
        }
    }

    fn opts(dir: &Path) -> SpoolOptions {
        let mut o = SpoolOptions::new(dir);
        o.agent = AgentInfo {
            version: "t".into(),
            host: "h".into(),
        };
        o
    }

    #[test]
    fn wake_waiters_ends_a_wait_for_append_without_an_append() {
        let dir = temp_dir("wake");
        let spool = std::sync::Arc::new(Spool::open(opts(&dir)).unwrap());
        let seen = spool.generation();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::sync::Arc::clone(&spool);
        std::thread::spawn(move || {
            let _ = tx.send(waiter.wait_for_append(seen, Duration::from_secs(3600)));
        });
        spool.wake_waiters();
        // A liveness bound a minute long against an hour-long wait, not a speed claim.
        let after = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(after > seen);
        // A waiter that starts after the wake with the old generation returns at once too.
        assert!(spool.wait_for_append(seen, Duration::from_secs(3600)) > seen);
        assert_eq!(spool.peek().unwrap(), None, "nothing was appended");
        drop(spool);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn append_peek_ack_in_order_and_seq_survives_reopen() {
        let dir = temp_dir("order");
        {
            let spool = Spool::open(opts(&dir)).unwrap();
            assert_eq!(spool.append(&payload(1)).unwrap(), 1);
            assert_eq!(spool.append(&payload(2)).unwrap(), 2);
            let r = spool.peek().unwrap().unwrap();
            assert_eq!(r.seq, 1);
            assert!(r.body.contains("\"seq\":1"));
            // Peeking again without an ack returns the same record.
            assert_eq!(spool.peek().unwrap().unwrap().seq, 1);
            spool.ack(&r).unwrap();
            assert_eq!(spool.peek().unwrap().unwrap().seq, 2);
        }
        let spool = Spool::open(opts(&dir)).unwrap();
        assert_eq!(spool.peek().unwrap().unwrap().seq, 2);
        assert_eq!(spool.append(&payload(3)).unwrap(), 3);
        for _ in 0..2 {
            let r = spool.peek().unwrap().unwrap();
            spool.ack(&r).unwrap();
        }
        assert_eq!(spool.peek().unwrap(), None);
        drop(spool);
        // Everything acknowledged: the old segments are gone, the numbering is not.
        let spool = Spool::open(opts(&dir)).unwrap();
        assert_eq!(spool.stats().n_segments, 0);
        assert_eq!(spool.append(&payload(4)).unwrap(), 4);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = temp_dir("lock");
        let first = Spool::open(opts(&dir)).unwrap();
        let second = Spool::open(opts(&dir));
        assert!(
            matches!(second, Err(SpoolError::Locked { .. })),
            "{second:?}"
        );
        drop(first);
        assert!(Spool::open(opts(&dir)).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_rotate_and_acked_ones_are_deleted() {
        let dir = temp_dir("rotate");
        let mut o = opts(&dir);
        o.segment_bytes = 4096;
        let spool = Spool::open(o).unwrap();
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
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversized_payloads_are_refused_and_reported() {
        let dir = temp_dir("oversized");
        let mut o = opts(&dir);
        o.max_record_bytes = 600;
        let spool = Spool::open(o).unwrap();
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

    #[test]
    fn dead_letters_are_json_lines_and_rotate() {
        let dir = temp_dir("deadletter");
        let mut o = opts(&dir);
        o.dead_letter_max_bytes = 200;
        let spool = Spool::open(o).unwrap();
        for n in 1..=3 {
            spool.append(&payload(n)).unwrap();
            let r = spool.peek().unwrap().unwrap();
            spool
                .dead_letter(&r, "{\"sent\":1}", 400, "{\"details\":\"x\"}")
                .unwrap();
        }
        assert_eq!(spool.peek().unwrap(), None, "dead letters are acknowledged");
        assert_eq!(spool.stats().n_dead_letters, 3);
        let current = fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
        let old = fs::read_to_string(dir.join(format!("{DEAD_LETTER_FILE}.1"))).unwrap();
        let lines: Vec<&str> = old.lines().chain(current.lines()).collect();
        assert!(lines.len() >= 2 && lines.len() <= 3, "{lines:?}");
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last["seq"], 3);
        assert_eq!(last["status"], 400);
        assert_eq!(last["payload"], "{\"sent\":1}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_in_flight_whose_segment_is_dropped_can_still_be_acked() {
        let dir = temp_dir("inflight");
        let mut o = opts(&dir);
        o.max_bytes = 16 * 1024;
        let spool = Spool::open(o).unwrap();
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
        let _ = fs::remove_dir_all(&dir);
    }
}
