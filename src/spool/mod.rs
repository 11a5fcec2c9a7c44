//! The spool: the write-ahead, crash-safe queue between the collectors and the shipper.
//!
//! Collectors [`Spool::append`] payloads; the shipper [`Spool::peek`]s the oldest unacknowledged
//! record, sends it, and [`Spool::ack`]s it after the listener answered 200 (or after the record
//! was moved to the dead-letter file). Nothing reaches the listener without passing through here.
//!
//! Two lanes ([`Lane`]), each a complete spool with everything below (segments, sequence space,
//! cursor, lock, its share of `max_bytes`): spike reports in `<dir>/spike/`, everything else in
//! `<dir>`. `peek` serves the spike lane first, and each lane evicts only its own segments, so a
//! spike report neither waits behind a backlog nor is deleted to make room for steady records.
//! The main lane's lock is taken first and covers the subdirectory.
//!
//! On disk (see `docs/delivery.md`): append-only segment files `seg-<20 digits>.spool` made of
//! checksummed frames ([`frame`]), the acknowledged cursor ([`cursor`]), a `lock` file, and
//! `dead-letter.jsonl`.
//!
//! The pieces: this module holds the shared state ([`Spool`], its options, errors and the
//! lock); [`recovery`] opens it (scan, torn tails, quarantine, cursor); [`writer`] appends,
//! rotates and makes room; [`reader`] peeks, skips damage and acknowledges; [`loss`] counts
//! what was dropped or damaged until it is reported; [`dead_letter`] keeps rejected payloads;
//! [`segment`] reads one segment file's frames. The spool stores the rendered record as opaque
//! bytes; what they contain (the envelope, `data.agent`) is the payload side's business.
//!
//! Invariants:
//! - A record never spans segments; segments existing at open are never appended to again.
//! - Only whole segments are deleted: when every record in them is acknowledged, or when the
//!   size bound forces the oldest out (counted, and reported as `data.agent.dropped` in the
//!   next payload delivered: the report is added when a record is handed to the shipper and
//!   cleared only when the listener acknowledged it, so it cannot be lost with a dropped record
//!   or a restart — it is kept in the cursor file).
//! - Sequence numbers are assigned only to records actually written, increase by one per
//!   record of a lane, and never go backwards across restarts (recovered from the segments and
//!   the cursor). A loss report speaks of the lane of the record carrying it.
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
mod dead_letter;
pub mod frame;
mod loss;
mod reader;
mod recovery;
mod segment;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::payload::{AgentInfo, Lane, Payload, Source};

use cursor::CursorState;
use reader::Reader;
use segment::Segment;

pub use crate::payload::DropCounts;
pub use dead_letter::DEAD_LETTER_FILE;

/// The lock file's name: held with `flock` for as long as a [`Spool`] is open.
pub const LOCK_FILE: &str = "lock";

/// The spike lane's subdirectory of the spool directory: a spool of its own (segments, cursor,
/// lock), opened only by whoever holds the main directory's lock.
pub const SPIKE_LANE_DIR: &str = "spike";

/// The spike lane's share of `max_bytes` is a tenth, but at least this much (4 MiB) where that
/// stays under a quarter of `max_bytes`: room for a few dozen spike reports.
pub const MIN_SPIKE_LANE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (created with mode 0700 when missing).
    pub dir: PathBuf,
    /// Upper bound of all segment files together, both lanes. Defaults to 100 MiB
    /// (`[buffer] max_size_mb`).
    pub max_bytes: u64,
    /// The spike lane's share of `max_bytes` (the main lane gets the rest); `None` for the rule
    /// of [`SpoolOptions::spike_lane_bytes`]. Never more than half of `max_bytes`.
    pub spike_lane_bytes: Option<u64>,
    /// A segment is sealed and a new one started past this size. Defaults to 4 MiB, and to at
    /// most a quarter of the lane's share of `max_bytes` so dropping the oldest segment frees a
    /// useful share.
    pub segment_bytes: u64,
    /// The largest single record accepted; larger payloads are dropped with a counted error.
    /// Defaults to 8 MiB, and to at most half of the lane's share of `max_bytes`.
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
            spike_lane_bytes: None,
            segment_bytes: 4 * 1024 * 1024,
            max_record_bytes: 8 * 1024 * 1024,
            dead_letter_max_bytes: 10 * 1024 * 1024,
            agent: AgentInfo::current(),
        }
    }

    /// The spike lane's share of `max_bytes`: `spike_lane_bytes` if set, else a tenth of
    /// `max_bytes` but at least [`MIN_SPIKE_LANE_BYTES`] or a quarter of `max_bytes`, whichever
    /// is less; never more than half. (100 MiB: 10 MiB; 20 MiB: 4 MiB; 1 MiB: 256 KiB.)
    pub fn spike_lane_bytes(&self) -> u64 {
        let rule = (self.max_bytes / 10).max(MIN_SPIKE_LANE_BYTES.min(self.max_bytes / 4));
        self.spike_lane_bytes
            .unwrap_or(rule)
            .min(self.max_bytes / 2)
    }

    /// The options of one lane: its directory and its share of the bound.
    fn for_lane(&self, lane: Lane) -> SpoolOptions {
        let spike = self.spike_lane_bytes();
        let mut o = self.clone();
        match lane {
            Lane::Main => o.max_bytes = self.max_bytes - spike,
            Lane::Spike => {
                o.dir = self.dir.join(SPIKE_LANE_DIR);
                o.max_bytes = spike;
            }
        }
        o
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
    /// The payload's sequence number in its lane (`data.agent.seq`).
    pub seq: u64,
    /// The lane it was read from (`data.agent.lane`); acknowledging it goes there.
    pub lane: Lane,
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
    /// Of `n_pending`, the records in the spike lane.
    pub spike_pending: u64,
    /// Of `bytes`, the spike lane's.
    pub spike_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    lane: Lane,
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
    _lock: File,
}

/// The spool: two lanes, each a complete spool of its own (segments, sequence space, cursor,
/// lock, share of `max_bytes`), behind one API. Shared between threads as `Arc<Spool>`; every
/// method takes `&self`. No method holds two of its locks (the lanes, `generation`) at once.
#[derive(Debug)]
pub struct Spool {
    main: Mutex<Inner>,
    spike: Mutex<Inner>,
    /// Incremented on every successful append; the shipper waits on it.
    generation: Mutex<u64>,
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
    /// truncates a torn tail, counts damage, and recovers the cursor and the sequence number
    /// (see [`recovery`]); then the same for the spike lane in `<dir>/spike`.
    pub fn open(opts: SpoolOptions) -> Result<Spool, SpoolError> {
        // The main lane first: its lock covers the whole directory, `spike/` included.
        let main = recovery::open(opts.for_lane(Lane::Main), Lane::Main)?;
        let spike = recovery::open(opts.for_lane(Lane::Spike), Lane::Spike)?;
        Ok(Spool {
            main: Mutex::new(main),
            spike: Mutex::new(spike),
            generation: Mutex::new(0),
            appended: Condvar::new(),
        })
    }

    fn lane(&self, lane: Lane) -> MutexGuard<'_, Inner> {
        let m = match lane {
            Lane::Main => &self.main,
            Lane::Spike => &self.spike,
        };
        // A panic while holding the lock cannot leave the files inconsistent (every file change
        // is a single write or rename), so a poisoned lock is still safe to use.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump_generation(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.appended.notify_all();
    }

    /// Appends `payload` to its lane ([`Lane::of`]: spike reports to the spike lane, the rest
    /// to the main lane), stamping `data.agent` (version, host, the lane's next sequence number,
    /// the lane when it is the spike lane, collected_at). Returns the sequence number. The
    /// record is in the page cache when this returns (it survives the process being killed);
    /// [`Spool::sync`] makes it durable.
    ///
    /// A spike report too large for the spike lane's share (records are at most half of a
    /// lane's share) goes to the main lane instead.
    ///
    /// On error the payload is dropped and counted (reported with the next payload delivered;
    /// a spike report's write error or size with the next main-lane payload, which comes
    /// soonest); it takes no sequence number, the spool stays usable and the next call tries
    /// again.
    pub fn append(&self, payload: &Payload) -> Result<u64, SpoolError> {
        let lane = Lane::of(payload);
        let mut inner = self.lane(lane);
        let mut result = inner.append(payload);
        if lane == Lane::Spike && matches!(result, Err(SpoolError::TooLarge { .. })) {
            // Too large for the spike lane's share, maybe not for the main lane's: better
            // shipped behind the backlog than not at all.
            inner.unreported.oversized = inner.unreported.oversized.saturating_sub(1);
            inner.lost.oversized = inner.lost.oversized.saturating_sub(1);
            log::warn!(
                "spike report too large for the spike lane ({}); spooled in the main lane",
                result
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            drop(inner);
            result = self.lane(Lane::Main).append(payload);
            inner = self.lane(Lane::Spike);
        }
        if lane == Lane::Spike && result.is_err() {
            // These counters take no sequence number, so nothing ties them to the spike lane's
            // gap rule; the main lane reports them without waiting for the next spike.
            let moved = DropCounts {
                write_errors: std::mem::take(&mut inner.unreported.write_errors),
                oversized: std::mem::take(&mut inner.unreported.oversized),
                ..DropCounts::default()
            };
            drop(inner);
            self.lane(Lane::Main).unreported.add(&moved);
        } else {
            drop(inner);
        }
        if result.is_ok() {
            self.bump_generation();
        }
        result
    }

    /// Flushes appended records and the cursors of both lanes to stable storage (fdatasync).
    /// Call it at least once per collection cycle, after the cycle's appends.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let spike = self.lane(Lane::Spike).sync();
        let main = self.lane(Lane::Main).sync();
        spike.and(main)
    }

    /// The record to send next, if any: the oldest unacknowledged spike report, else the oldest
    /// unacknowledged main-lane record, so a spike report never waits behind a backlog.
    /// Damaged frames met on the way are skipped with a warning.
    pub fn peek(&self) -> Result<Option<Record>, SpoolError> {
        if let Some(record) = self.lane(Lane::Spike).peek()? {
            return Ok(Some(record));
        }
        self.lane(Lane::Main).peek()
    }

    /// The listener stored `record`: marks every record of its lane up to its seq
    /// acknowledged, clears the loss report it carried, persists the lane's cursor and deletes
    /// segments that are now fully acknowledged. An error means only the cursor could not be
    /// saved: after a restart those records would be sent again.
    pub fn ack(&self, record: &Record) -> Result<(), SpoolError> {
        let mut inner = self.lane(record.lane);
        // The gap is not a pending counter: acknowledging closes it by moving `acked`.
        let mut delivered = record.report;
        delivered.corrupt_records = delivered.corrupt_records.saturating_sub(record.gap);
        inner.unreported.subtract(&delivered);
        inner.ack(record.seq)
    }

    /// The listener rejected `record` for good: appends it (the `body` sent, the listener's
    /// `status` and `answer`) to the dead-letter file (one, in the spool directory, for both
    /// lanes), fsynced, then acknowledges it so one rejected payload never blocks the queue.
    /// Its loss report stays pending for the next payload of its lane. If the dead letter
    /// cannot be written the record is acknowledged anyway (and the error returned): it can
    /// never be delivered.
    pub fn dead_letter(
        &self,
        record: &Record,
        body: &str,
        status: u16,
        answer: &str,
    ) -> Result<(), SpoolError> {
        let written = self
            .lane(Lane::Main)
            .dead_letter(record, body, status, answer);
        let mut inner = self.lane(record.lane);
        // Acknowledging closes the gap before the record; its report was not delivered, so the
        // gap becomes a pending counter.
        inner.unreported.corrupt_records += record.gap;
        let acked = inner.ack(record.seq);
        written.and(acked)
    }

    /// A counter that increases with every successful append (and every
    /// [`Spool::wake_waiters`]).
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every [`Spool::wait_for_append`] in progress or about to start for a generation
    /// observed before this call, as if something was appended: how the daemon wakes an idle
    /// shipper at once on a stop request, so it can wait for appends without polling.
    pub fn wake_waiters(&self) {
        self.bump_generation();
    }

    /// Waits up to `timeout` for an append after `generation` was observed; returns the
    /// current generation.
    pub fn wait_for_append(&self, generation: u64, timeout: Duration) -> u64 {
        let guard = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .appended
            .wait_timeout_while(guard, timeout, |g| *g == generation)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// A snapshot of sizes, positions and counters: both lanes added up, except the positions
    /// (`next_seq`, `acked_seq`), which are the main lane's.
    pub fn stats(&self) -> SpoolStats {
        let spike = self.lane(Lane::Spike).stats();
        let main = self.lane(Lane::Main).stats();
        let mut lost = main.lost;
        lost.add(&spike.lost);
        SpoolStats {
            n_segments: main.n_segments + spike.n_segments,
            bytes: main.bytes + spike.bytes,
            next_seq: main.next_seq,
            acked_seq: main.acked_seq,
            n_pending: main.n_pending + spike.n_pending,
            lost,
            n_dead_letters: main.n_dead_letters + spike.n_dead_letters,
            spike_pending: spike.n_pending,
            spike_bytes: spike.bytes,
        }
    }

    /// A snapshot of one lane alone (its own positions and counters).
    pub fn lane_stats(&self, lane: Lane) -> SpoolStats {
        self.lane(lane).stats()
    }

    /// The spool directory.
    pub fn dir(&self) -> PathBuf {
        self.lane(Lane::Main).dir.clone()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        for lane in [&mut self.spike, &mut self.main] {
            let inner = lane.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = inner.sync() {
                log::warn!("final spool sync failed: {e}");
            }
        }
    }
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
            spike_pending: if self.lane == Lane::Spike {
                n_pending
            } else {
                0
            },
            spike_bytes: if self.lane == Lane::Spike {
                self.total_bytes
            } else {
                0
            },
        }
    }
}

/// Fixtures shared by the spool's unit tests.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use super::{Spool, SpoolOptions};
    use crate::json::Json;
    use crate::payload::{AgentInfo, Payload, Source};

    /// A fresh spool directory for one test, removed when the test ends (also on panic).
    pub(super) fn temp_dir(name: &str) -> crate::testdir::TempDir {
        crate::testdir::TempDir::new(&format!("spool-{name}"))
    }

    pub(super) fn payload(n: i64) -> Payload {
        Payload {
            source: Source::PgLog,
            collected_at: 1_700_000_000.0 + n as f64,
            correlation_id: None,
            data: Json::object().field("n", n),
        }
    }

    pub(super) fn opts(dir: &Path) -> SpoolOptions {
        let mut o = SpoolOptions::new(dir);
        o.agent = AgentInfo {
            version: "t".into(),
            host: "h".into(),
        };
        o
    }

    /// A fresh spool directory named `name`, opened with [`opts`] adjusted by `configure`.
    pub(super) fn open_with(
        name: &str,
        configure: impl FnOnce(&mut SpoolOptions),
    ) -> (crate::testdir::TempDir, Spool) {
        let dir = temp_dir(name);
        let mut o = opts(&dir);
        configure(&mut o);
        let spool = Spool::open(o).unwrap();
        (dir, spool)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{opts, payload, temp_dir};
    use super::{Spool, SpoolError};

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
    }

    #[test]
    fn a_spool_opened_on_the_spike_lane_directory_and_the_spool_exclude_each_other() {
        let dir = temp_dir("lanelock");
        let lane_dir = dir.join(super::SPIKE_LANE_DIR);
        let inner = Spool::open(opts(&lane_dir)).unwrap();
        let outer = Spool::open(opts(&dir));
        assert!(matches!(outer, Err(SpoolError::Locked { .. })), "{outer:?}");
        drop(inner);
        let outer = Spool::open(opts(&dir)).unwrap();
        let inner = Spool::open(opts(&lane_dir));
        assert!(matches!(inner, Err(SpoolError::Locked { .. })), "{inner:?}");
        drop(outer);
    }
}
