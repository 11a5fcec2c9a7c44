//! Follows the server log by path across every kind of rotation and persists the read position.
//!
//! The tailer reads the current file in chunks, hands complete lines to the [`EntryParser`] with
//! their file offsets, and at the end of the file asks `rotation` whether it was rotated
//! (renamed, or truncated in place); [`target`] says which file is the current log, and
//! `position` is the position file that a restart resumes from. This module holds the reading
//! itself: opening a file and choosing where to start in it, the read buffer, batches, and
//! finishing a file that was rotated away.
//!
//! On start the tailer resumes at the committed position: in the same file, in the file it was
//! renamed to (found by inode in the same directory), or, when the file is gone, at the start of
//! the current one; with no position file at all, at the end of the current file (history is not
//! shipped) unless told otherwise.
//!
//! Invariants: files are opened read-only, regular files only (a FIFO or a device at the log path
//! is warned about and skipped); a missing or unreadable file is a warning (said once, not at
//! every poll) and a retry; a batch holds at most `max_batch_entries` entries, a partial last line
//! is held until its newline arrives, and a line longer than `max_line` is passed on in pieces,
//! so memory stays bounded; the position handed out with a batch never points past an entry that
//! is not in that batch or an earlier one; a poll switches files a bounded number of times.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::parse::{EntryParser, ParseStats};

mod position;
mod rotation;
pub mod target;

#[cfg(test)]
mod fixtures;

pub use position::{Position, POSITION_FILE};
pub use target::{current_logfile, newest_in, FilePattern, Follow};

use position::{fnv1a, Mark, FINGERPRINT_LEN};
use rotation::{read_at_full, Check};

/// The largest position file or `current_logfiles` read (real ones are a few hundred bytes).
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// How the tailer behaves. Defaults fit a production agent.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Which file to follow.
    pub follow: Follow,
    /// Where the position file lives; `None` keeps the position in memory only.
    pub state_dir: Option<PathBuf>,
    /// On the very first start (no position file): start at the end of the current file
    /// (`true`, the default: history is not shipped) or at its beginning.
    pub start_at_end: bool,
    /// Most entries per batch. Defaults to 1000.
    pub max_batch_entries: usize,
    /// Most bytes of lines read per batch. Defaults to 8 MiB.
    pub max_batch_bytes: usize,
    /// Bytes read per `read` call. Defaults to 256 KiB.
    pub read_chunk: usize,
    /// A line longer than this is passed to the parser in pieces. Defaults to 1 MiB.
    pub max_line: usize,
    /// How long the last entry of the file may stay incomplete before it is emitted anyway
    /// (PostgreSQL writes an entry with one write, so this is short). Defaults to 500 ms.
    pub settle: Duration,
}

impl TailConfig {
    /// The defaults for following `follow`, persisting the position in `state_dir`.
    pub fn new(follow: Follow, state_dir: Option<PathBuf>) -> TailConfig {
        TailConfig {
            follow,
            state_dir,
            start_at_end: true,
            max_batch_entries: 1000,
            max_batch_bytes: 8 * 1024 * 1024,
            read_chunk: 256 * 1024,
            max_line: 1024 * 1024,
            settle: Duration::from_millis(500),
        }
    }
}

/// What one [`Tailer::poll`] produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Complete entries, in file order.
    pub entries: Vec<Entry>,
    /// The position after these entries (`None` until a file was opened).
    pub position: Option<Position>,
    /// The batch was cut by a cap: poll again without waiting.
    pub more: bool,
}

/// Errors the caller must know about (everything else is a warning and a retry).
#[derive(Debug)]
pub enum TailError {
    /// Writing the position file failed (the state directory is missing, full or read-only).
    Position {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailError::Position { path, source } => {
                write!(f, "writing log position file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for TailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TailError::Position { source, .. } => Some(source),
        }
    }
}

/// The file being read.
struct OpenFile {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Bytes read but not yet consumed start at `buf[pos]`; `buf[0]` is at file offset `buf_start`.
    buf: Vec<u8>,
    pos: usize,
    buf_start: u64,
    /// The first bytes of the file (up to 64), to recognise it after a truncation or restart.
    /// Holds at least `min(64, read_end)` bytes: never empty once bytes were read.
    head: Vec<u8>,
    /// The bytes (up to 64) just before `buf_start`, as they were read: a read is trusted only
    /// while the file still holds them there, and a copy is recognised by them.
    prev: Vec<u8>,
}

impl OpenFile {
    fn consumed(&self) -> u64 {
        self.buf_start + self.pos as u64
    }
    fn read_end(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    /// The last bytes (up to 64) before `buf[upto]`, as they were read.
    fn known_before(&self, upto: usize) -> Vec<u8> {
        let upto = upto.min(self.buf.len());
        let from_buf = upto.min(FINGERPRINT_LEN);
        let from_prev = (FINGERPRINT_LEN - from_buf).min(self.prev.len());
        let mut v = Vec::with_capacity(from_prev + from_buf);
        v.extend_from_slice(&self.prev[self.prev.len() - from_prev..]);
        v.extend_from_slice(&self.buf[upto - from_buf..upto]);
        v
    }

    /// Drops the consumed bytes from the buffer, keeping the last of them in `prev`.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        self.prev = self.known_before(self.pos);
        self.buf.drain(..self.pos);
        self.buf_start += self.pos as u64;
        self.pos = 0;
    }
}

enum Drain {
    Eof,
    Full,
    Failed(io::Error),
    /// The file was truncated before the last read: what it returned was dropped.
    Truncated,
}

/// Follows the log file and hands out batches of entries.
pub struct Tailer {
    cfg: TailConfig,
    parser: EntryParser,
    open: Option<OpenFile>,
    /// Where to resume when the next file is opened (from the position file, or after a read
    /// error), with the path it had.
    resume: Option<(PathBuf, Mark)>,
    /// No file was ever opened in this process and no position file existed.
    first_start: bool,
    finished: Vec<Mark>,
    /// A rotation was seen; the old file gets one more read before the switch.
    switch_to: Option<PathBuf>,
    eof_since: Option<Instant>,
    last_warning: Option<String>,
    last_position: Option<Position>,
    /// Runs right before each read of the file, so tests can change the file exactly there.
    #[cfg(test)]
    before_read: Option<Box<dyn FnMut() + Send>>,
}

impl Tailer {
    /// A tailer following `cfg.follow`, parsing with `parser`, resuming from the position file
    /// in `cfg.state_dir` when there is one. Never fails: a missing file is retried at each poll,
    /// an unreadable position file is a warning.
    pub fn new(cfg: TailConfig, parser: EntryParser) -> Tailer {
        let mut t = Tailer {
            cfg,
            parser,
            open: None,
            resume: None,
            first_start: true,
            finished: Vec::new(),
            switch_to: None,
            eof_since: None,
            last_warning: None,
            last_position: None,
            #[cfg(test)]
            before_read: None,
        };
        if let Some((resume, finished)) = t.position_path().and_then(|p| position::load(&p)) {
            t.first_start = false;
            t.resume = resume;
            t.finished = finished;
        }
        t
    }

    /// The file being read now, if any.
    pub fn current_path(&self) -> Option<&Path> {
        self.open.as_ref().map(|o| o.path.as_path())
    }

    /// The parser (format, prefix warnings, counts).
    pub fn parser(&self) -> &EntryParser {
        &self.parser
    }

    /// Takes the parse counts since the last call (lines read, unparsable lines).
    pub fn take_stats(&mut self) -> ParseStats {
        self.parser.take_stats()
    }

    fn position_path(&self) -> Option<PathBuf> {
        self.cfg.state_dir.as_ref().map(|d| d.join(POSITION_FILE))
    }

    fn warn_once(&mut self, msg: String) {
        if self.last_warning.as_deref() != Some(msg.as_str()) {
            log::warn!("{msg}");
            self.last_warning = Some(msg);
        }
    }

    /// Reads what was written since the last poll, up to the batch caps. Never blocks waiting
    /// for data and never fails: problems are logged and retried at the next poll.
    pub fn poll(&mut self) -> Batch {
        let mut out = Vec::new();
        let mut fed = 0usize;
        let mut more = false;
        // A bounded number of file switches per poll, so a directory churning files cannot keep
        // one poll busy forever.
        for _ in 0..8 {
            if self.open.is_none() && !self.open_target() {
                break;
            }
            // Content written after a truncation is never read as if it continued the old
            // content: `drain` checks every read (the file can be truncated and written again
            // between any check and the read).
            match self.drain(&mut out, &mut fed) {
                Drain::Full => {
                    more = true;
                    break;
                }
                Drain::Truncated => {
                    self.handle_truncation(&mut out);
                    continue;
                }
                Drain::Failed(e) => {
                    let path = self.current_path().map(|p| p.display().to_string());
                    self.warn_once(format!(
                        "reading log file {}: {e}",
                        path.unwrap_or_default()
                    ));
                    self.close_for_retry();
                    break;
                }
                Drain::Eof => {}
            }
            if let Some(next) = self.switch_to.take() {
                // The old file was read to its end once more after the rotation was seen.
                self.finish_current(&mut out);
                if !self.open_path(&next, false) {
                    break;
                }
                continue;
            }
            match self.check() {
                Check::Same | Check::Gone => {
                    self.flush_if_settled(&mut out);
                    break;
                }
                Check::Replaced(next) => self.switch_to = Some(next),
                Check::Truncated => self.handle_truncation(&mut out),
            }
        }
        let position = self.position();
        if position.is_some() {
            self.last_position = position.clone();
        }
        Batch {
            entries: out,
            position: self.last_position.clone(),
            more,
        }
    }

    /// Persists `position` (from a batch whose entries are safely in the spool) atomically:
    /// written to a temporary file, synced, renamed over the position file, directory synced.
    /// Without a state directory this only returns `Ok`.
    pub fn commit(&mut self, position: &Position) -> Result<(), TailError> {
        let Some(path) = self.position_path() else {
            return Ok(());
        };
        let text = position::render(position, &self.finished);
        position::save(&path, text.as_bytes()).map_err(|source| TailError::Position {
            path: path.clone(),
            source,
        })
    }

    /// The position after everything handed out so far.
    fn position(&self) -> Option<Position> {
        let o = self.open.as_ref()?;
        let offset = self.parser.pending_start().unwrap_or_else(|| o.consumed());
        let fp_len = o.head.len().min(offset as usize);
        Some(Position {
            path: o.path.clone(),
            dev: o.dev,
            ino: o.ino,
            offset,
            fp_len: fp_len as u32,
            fp: fnv1a(&o.head[..fp_len]),
        })
    }

    /// The file to follow now (see [`target::resolve`]); its warning is said once.
    fn target(&mut self) -> Option<PathBuf> {
        let (path, warning) = target::resolve(&self.cfg.follow);
        if let Some(w) = warning {
            self.warn_once(w);
        }
        path
    }

    /// Opens the file to follow now. False when there is none (warned).
    fn open_target(&mut self) -> bool {
        // A resumed position whose file was renamed away: finish that file first.
        if let Some((path, mark)) = self.resume.clone() {
            if let Some(found) = target::find_by_identity(&path, mark.dev, mark.ino) {
                let target_is_it = self
                    .target()
                    .and_then(|t| std::fs::metadata(t).ok())
                    .is_some_and(|m| m.dev() == mark.dev && m.ino() == mark.ino);
                if !target_is_it {
                    return self.open_path(&found, true);
                }
            }
        }
        match self.target() {
            Some(path) => self.open_path(&path, true),
            None => {
                let what = target::describe(&self.cfg.follow);
                self.warn_once(format!(
                    "no log file to tail yet: {what} not found; retrying"
                ));
                false
            }
        }
    }

    /// Opens `path` and decides where to start: a remembered position of this very file, the end
    /// offset of a file finished before, the end (first run), or the start.
    fn open_path(&mut self, path: &Path, starting: bool) -> bool {
        // Regular files only, opened without blocking: a FIFO at the log path would block the
        // open for good and a device such as /dev/zero would be read forever. Either is warned
        // about once per streak (`warn_once`) and retried at every poll, so tailing resumes as
        // soon as a regular file is back.
        let file = match crate::fsutil::open_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                self.warn_once(format!(
                    "log file {}: {e}; not read, waiting for a regular file at that path",
                    path.display()
                ));
                return false;
            }
            Err(e) => {
                self.warn_once(format!(
                    "opening log file {}: {e}; retrying",
                    path.display()
                ));
                return false;
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.warn_once(format!(
                    "reading metadata of {}: {e}; retrying",
                    path.display()
                ));
                return false;
            }
        };
        let (dev, ino, size) = (meta.dev(), meta.ino(), meta.len());
        // Up to 64 bytes, even when the file grew since the metadata was read.
        let mut head = vec![0u8; FINGERPRINT_LEN];
        let n = read_at_full(&file, &mut head, 0).unwrap_or(0);
        head.truncate(n);
        let matches = |m: &Mark| m.fits(dev, ino, size, &head);
        let resumed = self.resume.as_ref().filter(|(_, m)| matches(m));
        let (offset, replaced) = if let Some((_, m)) = resumed {
            (m.offset, None)
        } else if let Some(m) = self.finished.iter().rev().find(|m| matches(m)) {
            (m.offset, None)
        } else if let Some(r) = self.resume.clone() {
            (0, Some(r))
        } else if starting && self.first_start && self.cfg.start_at_end {
            (size, None)
        } else {
            (0, None)
        };
        // The bytes before the offset, which every later read is checked against. Fewer than
        // expected (or fewer first bytes than the offset) means the file shrank since its
        // metadata was read: try again at the next poll.
        let want = offset.min(FINGERPRINT_LEN as u64);
        let mut prev = vec![0u8; want as usize];
        let got = read_at_full(&file, &mut prev, offset - want).unwrap_or(0);
        if got < prev.len() || (head.len() as u64) < want {
            self.warn_once(format!(
                "log file {} shrank while being opened; retrying",
                path.display()
            ));
            return false;
        }
        if let Some((old, m)) = replaced {
            log::warn!(
                "log file {} (device {} inode {}) is gone or was replaced; reading {} from its start",
                old.display(),
                m.dev,
                m.ino,
                path.display()
            );
        }
        self.resume = None;
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            self.warn_once(format!(
                "seeking {} to offset {offset}: {e}; retrying",
                path.display()
            ));
            return false;
        }
        log::info!(
            "tailing {} ({}) from offset {offset}",
            path.display(),
            self.parser.format().as_str()
        );
        self.first_start = false;
        self.last_warning = None;
        self.eof_since = None;
        self.open = Some(OpenFile {
            file,
            path: path.to_path_buf(),
            dev,
            ino,
            buf: Vec::new(),
            pos: 0,
            buf_start: offset,
            head,
            prev,
        });
        true
    }

    /// Keeps the position and closes the file, so the next poll reopens it and resumes there.
    fn close_for_retry(&mut self) {
        if let Some(p) = self.position() {
            let m = Mark::of(&p);
            self.resume = Some((p.path, m));
        }
        self.parser.discard();
        self.open = None;
    }

    /// Emits the last entry of the current file and remembers where the file ended.
    fn finish_current(&mut self, out: &mut Vec<Entry>) {
        let Some(o) = self.open.as_mut() else { return };
        // A last line without a newline is complete now: its file will not grow any more.
        if o.pos < o.buf.len() {
            let start = o.consumed();
            self.parser.push(&o.buf[o.pos..], start, true, out);
            o.pos = o.buf.len();
        }
        self.parser.flush(out);
        let end = o.consumed();
        let fp_len = o.head.len();
        let mark = Mark {
            dev: o.dev,
            ino: o.ino,
            offset: end,
            fp_len: fp_len as u32,
            fp: fnv1a(&o.head),
        };
        position::remember_finished(&mut self.finished, mark);
        self.open = None;
    }

    fn flush_if_settled(&mut self, out: &mut Vec<Entry>) {
        if self.parser.pending_start().is_none() {
            self.eof_since = None;
            return;
        }
        let now = Instant::now();
        let since = *self.eof_since.get_or_insert(now);
        if now.duration_since(since) >= self.cfg.settle {
            self.parser.flush(out);
            self.eof_since = None;
        }
    }

    /// Reads to the end of the file (or until the batch is full), feeding complete lines.
    fn drain(&mut self, out: &mut Vec<Entry>, fed: &mut usize) -> Drain {
        let max_entries = self.cfg.max_batch_entries.max(1);
        let max_bytes = self.cfg.max_batch_bytes.max(1);
        let max_line = self.cfg.max_line.max(64);
        let chunk = self.cfg.read_chunk.max(4096);
        let Some(o) = self.open.as_mut() else {
            return Drain::Eof;
        };
        loop {
            // Feed every complete line in the buffer.
            while o.pos < o.buf.len() {
                if out.len() >= max_entries || *fed >= max_bytes {
                    return Drain::Full;
                }
                let rest = &o.buf[o.pos..];
                let start = o.buf_start + o.pos as u64;
                match find_newline(rest) {
                    Some(nl) => {
                        self.parser.push(&rest[..nl], start, true, out);
                        o.pos += nl + 1;
                        *fed += nl + 1;
                    }
                    None if rest.len() >= max_line => {
                        // An overlong line: pass a piece on so the buffer stays bounded.
                        self.parser.push(&rest[..max_line], start, false, out);
                        o.pos += max_line;
                        *fed += max_line;
                    }
                    None => break,
                }
            }
            // Drop consumed bytes so the buffer holds at most a partial line plus one chunk.
            o.compact();
            #[cfg(test)]
            if let Some(hook) = self.before_read.as_mut() {
                hook();
            }
            let len = o.buf.len();
            // Reads into the spare capacity without zeroing it first: an idle log is polled every
            // second, and filling a 256 KiB chunk with zeros was most of an idle poll's CPU.
            o.buf.reserve(chunk);
            let n = match (&o.file).take(chunk as u64).read_to_end(&mut o.buf) {
                Ok(n) => n,
                Err(e) => {
                    o.buf.truncate(len);
                    return Drain::Failed(e);
                }
            };
            if n == 0 {
                return Drain::Eof;
            }
            // The file may have been truncated and written again past our offset since it was
            // last checked: the bytes read are the old content only if the file still holds,
            // after the read, the bytes read before them (a truncation before the read changed
            // those, unless the file was also refilled with the very same bytes).
            match o.changed_before(len) {
                Ok(false) => {}
                Ok(true) => {
                    o.buf.truncate(len);
                    return Drain::Truncated;
                }
                Err(e) => {
                    o.buf.truncate(len);
                    return Drain::Failed(e);
                }
            }
            self.eof_since = None;
            let read_from = o.read_end() - n as u64;
            if (read_from as usize) < FINGERPRINT_LEN && o.head.len() < FINGERPRINT_LEN {
                // Keep the first bytes of the file as they are read, for fingerprints.
                let have = o.head.len() as u64;
                if read_from <= have {
                    let skip = (have - read_from) as usize;
                    let data = &o.buf[len..len + n];
                    let take = (FINGERPRINT_LEN - o.head.len()).min(n.saturating_sub(skip));
                    o.head
                        .extend_from_slice(&data[skip.min(n)..skip.min(n) + take]);
                }
            }
        }
    }
}

/// The index of the first `\n`, eight bytes at a time.
pub(crate) fn find_newline(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= hay.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ NL;
        // Has-zero-byte trick: nonzero when some byte of x is zero.
        if (x.wrapping_sub(LO) & !x & HI) != 0 {
            break;
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == b'\n').map(|p| p + i)
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::fs;

    #[test]
    fn a_fifo_or_a_device_at_the_log_path_is_skipped_and_tailing_resumes_on_a_regular_file() {
        let d = Dir::new("fifo");
        let log = d.log();
        append(&log, &lines(0..3));
        let mut t = tailer(&log);
        assert_eq!(poll_all(&mut t), want(0..3));

        // The path turns into a FIFO with no writer: opening it would block for good.
        fs::remove_file(&log).unwrap();
        crate::sys::mkfifo(&log).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            for _ in 0..3 {
                let _ = poll_all(&mut t);
            }
            let warning = t.last_warning.clone();
            tx.send(()).unwrap();
            (t, warning)
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("polling a FIFO at the log path returned");
        let (mut t, warning) = worker.join().unwrap();
        assert!(
            warning.as_deref().is_some_and(|w| w.contains("FIFO")),
            "{warning:?}"
        );

        // Then a symbolic link to /dev/zero: nothing is read from it.
        fs::remove_file(&log).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &log).unwrap();
        assert!(poll_all(&mut t).is_empty());
        assert!(t
            .last_warning
            .as_deref()
            .is_some_and(|w| w.contains("character device")));

        // A regular file again: read from its start.
        fs::remove_file(&log).unwrap();
        append(&log, &lines(10..12));
        assert_eq!(poll_all(&mut t), want(10..12));
        assert_eq!(t.last_warning, None, "the streak ended");
    }

    #[test]
    fn newline_search_matches_naive() {
        let mut data = vec![b'a'; 100];
        for i in 0..100 {
            data[i] = b'\n';
            assert_eq!(find_newline(&data), Some(i), "at {i}");
            assert_eq!(find_newline(&data[..i]), None);
            data[i] = 0x8a;
        }
    }
}
