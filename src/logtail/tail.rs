//! Follows the server log by path across every kind of rotation and persists the read position.
//!
//! The tailer reads the current file in chunks, hands complete lines to the [`EntryParser`] with
//! their file offsets, and at the end of the file checks whether it was rotated:
//!
//! - renamed (the path, or `current_logfiles`, or the newest file of the directory now names
//!   another file): the old file is read to its end first, its last entry emitted, then the new
//!   file is read from its start;
//! - truncated in place (copytruncate: the size dropped below what was read, or the first bytes
//!   or the bytes last read are no longer there): the copy is looked for next to it (a file
//!   holding the same first bytes and the same bytes right before our offset; the longest when
//!   several do) and read from where we were, then the truncated file from its start. Every read
//!   is checked that way too, after it returned, so content written after a truncation is never
//!   taken for the rest of the old content, however fast the file was refilled past our offset.
//!
//! The position (device, inode, offset and a fingerprint of the first bytes) is written to the
//! state directory only by [`Tailer::commit`], which the caller calls after the entries of a batch
//! were appended to the spool. On start the tailer resumes there: in the same file, in the file
//! it was renamed to (found by inode in the same directory), or, when the file is gone, at the
//! start of the current one.
//!
//! Invariants: files are opened read-only; a missing or unreadable file is a warning (said once,
//! not at every poll) and a retry; a batch holds at most `max_batch_entries` entries, a partial
//! last line is held until its newline arrives, and a line longer than `max_line` is passed on in
//! pieces, so memory stays bounded; the position handed out with a batch never points past an
//! entry that is not in that batch or an earlier one.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::parse::{EntryParser, Format, ParseStats};

/// How many leading bytes identify a file's content (its first line's timestamp and pid).
const FINGERPRINT_LEN: usize = 64;

/// How many finished files are remembered (their end offsets), so a file name PostgreSQL reuses
/// (`postgresql-%a.log` with `log_truncate_on_rotation = off`) is resumed, not re-read.
const MAX_FINISHED: usize = 16;

/// The largest position file or `current_logfiles` read (real ones are a few hundred bytes).
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Name of the position file inside the state directory.
pub const POSITION_FILE: &str = "logtail.position";

/// Which file to follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    /// One path. Rotation by rename (a new inode at the path) or copytruncate.
    Path(PathBuf),
    /// PostgreSQL's own rotation: the file `current_logfiles` in `data_dir` names for `format`
    /// (relative names are relative to `data_dir`); when that file cannot be read, the newest
    /// file of `fallback` (a directory and a pattern).
    CurrentLogfiles {
        /// The data directory holding `current_logfiles`.
        data_dir: PathBuf,
        /// Which line of `current_logfiles` to follow.
        format: Format,
        /// Where to look when `current_logfiles` is unreadable.
        fallback: Option<(PathBuf, FilePattern)>,
    },
    /// The newest file (by modification time, then name) of a directory matching a pattern.
    Directory {
        /// The log directory.
        dir: PathBuf,
        /// Which names are log files of the chosen format.
        pattern: FilePattern,
    },
}

/// A file-name pattern derived from `log_filename`: its `%` escapes (strftime) match any text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePattern {
    parts: Vec<String>,
}

impl FilePattern {
    /// The names PostgreSQL gives files of `format` with this `log_filename`: for csvlog and
    /// jsonlog a `.log` suffix is replaced by `.csv`/`.json` (or that suffix is appended).
    pub fn from_log_filename(log_filename: &str, format: Format) -> FilePattern {
        let mut name = log_filename.to_string();
        if format != Format::Stderr {
            if let Some(stem) = name.strip_suffix(".log") {
                name = stem.to_string();
            }
            name.push('.');
            name.push_str(format.extension());
        }
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = name.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                cur.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => cur.push('%'),
                Some(_) => parts.push(std::mem::take(&mut cur)),
                None => {}
            }
        }
        parts.push(cur);
        FilePattern { parts }
    }

    /// Any file with the format's extension (`*.log`, `*.csv`, `*.json`).
    pub fn any(format: Format) -> FilePattern {
        FilePattern {
            parts: vec![String::new(), format!(".{}", format.extension())],
        }
    }

    /// True when `name` matches (literal parts in order, anything between them).
    pub fn matches(&self, name: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else {
            return true;
        };
        let Some(mut s) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        for part in middle {
            match s.find(part.as_str()) {
                Some(i) => s = &s[i + part.len()..],
                None => return false,
            }
        }
        s.ends_with(last.as_str())
    }
}

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

/// Where reading resumes: the file's identity, the offset of the first byte not yet handed out
/// in an entry, and a fingerprint of the file's first bytes (to notice an inode reused by a new
/// file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The path the file had when it was read.
    pub path: PathBuf,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Byte offset where the next entry starts.
    pub offset: u64,
    /// How many leading bytes the fingerprint covers (at most 64, at most `offset`).
    pub fp_len: u32,
    /// FNV-1a hash of those bytes.
    pub fp: u64,
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

/// A file's identity and how far it was read, as remembered for resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    dev: u64,
    ino: u64,
    offset: u64,
    fp_len: u32,
    fp: u64,
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

    /// True when the file no longer holds its first bytes, or the bytes before `buf[upto]`, as
    /// they were read: it was truncated (and perhaps written again past our offset).
    fn changed_before(&self, upto: usize) -> io::Result<bool> {
        if !holds_at(&self.file, &self.head, 0)? {
            return Ok(true);
        }
        let known = self.known_before(upto);
        let end = self.buf_start + upto.min(self.buf.len()) as u64;
        Ok(!holds_at(
            &self.file,
            &known,
            end.saturating_sub(known.len() as u64),
        )?)
    }
}

enum Drain {
    Eof,
    Full,
    Failed(io::Error),
    /// The file was truncated before the last read: what it returned was dropped.
    Truncated,
}

enum Check {
    Same,
    Gone,
    Truncated,
    Replaced(PathBuf),
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
        if let Some(path) = t.position_path() {
            match crate::fsutil::read_regular_to_string(&path, MAX_SMALL_FILE) {
                Ok(text) => match parse_state(&text) {
                    Some((resume, finished)) => {
                        t.first_start = false;
                        t.resume = resume;
                        t.finished = finished;
                    }
                    None => log::warn!(
                        "log position file {} is not readable as a position; starting as on a first run",
                        path.display()
                    ),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("reading log position file {}: {e}", path.display()),
            }
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
        let mut text = String::from("bitville-logtail 1\n");
        let mark = |m: &Mark| {
            format!(
                "{} {} {} {} {:016x}",
                m.dev, m.ino, m.offset, m.fp_len, m.fp
            )
        };
        let p = position;
        let pm = Mark {
            dev: p.dev,
            ino: p.ino,
            offset: p.offset,
            fp_len: p.fp_len,
            fp: p.fp,
        };
        // A path with a newline cannot be written on one line; the inode still finds the file.
        let shown = p.path.to_string_lossy().replace('\n', "?");
        text.push_str(&format!("pos {} {}\n", mark(&pm), shown));
        for f in &self.finished {
            text.push_str(&format!("done {}\n", mark(f)));
        }
        save_position(&path, text.as_bytes()).map_err(|source| TailError::Position {
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

    fn target(&mut self) -> Option<PathBuf> {
        match &self.cfg.follow {
            Follow::Path(p) => Some(p.clone()),
            Follow::Directory { dir, pattern } => newest_in(dir, pattern),
            Follow::CurrentLogfiles {
                data_dir,
                format,
                fallback,
            } => {
                let listing = data_dir.join("current_logfiles");
                match crate::fsutil::read_regular_to_string(&listing, MAX_SMALL_FILE) {
                    Ok(text) => current_logfile(&text, *format).map(|rel| data_dir.join(rel)),
                    Err(e) => {
                        let fallback = fallback.clone();
                        let msg = format!("reading {}: {e}", listing.display());
                        self.warn_once(msg);
                        fallback.and_then(|(dir, pattern)| newest_in(&dir, &pattern))
                    }
                }
            }
        }
    }

    /// Opens the file to follow now. False when there is none (warned).
    fn open_target(&mut self) -> bool {
        // A resumed position whose file was renamed away: finish that file first.
        if let Some((path, mark)) = self.resume.clone() {
            if let Some(found) = find_by_identity(&path, mark.dev, mark.ino) {
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
                let what = match &self.cfg.follow {
                    Follow::Path(p) => p.display().to_string(),
                    Follow::Directory { dir, .. } => format!("a log file in {}", dir.display()),
                    Follow::CurrentLogfiles {
                        data_dir, format, ..
                    } => format!(
                        "the {} file named in {}/current_logfiles",
                        format.as_str(),
                        data_dir.display()
                    ),
                };
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
        let matches = |m: &Mark| {
            m.dev == dev
                && m.ino == ino
                && size >= m.offset
                && (m.fp_len as usize) <= head.len()
                && fnv1a(&head[..m.fp_len as usize]) == m.fp
        };
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
            let m = Mark {
                dev: p.dev,
                ino: p.ino,
                offset: p.offset,
                fp_len: p.fp_len,
                fp: p.fp,
            };
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
        self.finished
            .retain(|m| (m.dev, m.ino) != (mark.dev, mark.ino));
        self.finished.push(mark);
        if self.finished.len() > MAX_FINISHED {
            self.finished.remove(0);
        }
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

    /// True when the open file shrank below what was read, or its first bytes or the bytes last
    /// read changed (truncated and written again past our offset before we looked).
    fn truncated(&self) -> bool {
        let Some(o) = self.open.as_ref() else {
            return false;
        };
        match o.file.metadata() {
            Ok(m) if m.len() < o.read_end() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        o.changed_before(o.buf.len()).unwrap_or(false)
    }

    /// At the end of the file: is the file still the one to follow, truncated, or replaced?
    fn check(&mut self) -> Check {
        if self.truncated() {
            return Check::Truncated;
        }
        let Some(o) = self.open.as_ref() else {
            return Check::Gone;
        };
        let (dev, ino) = (o.dev, o.ino);
        match self.target() {
            None => Check::Gone,
            Some(path) => match std::fs::metadata(&path) {
                Ok(m) if m.dev() == dev && m.ino() == ino => Check::Same,
                Ok(_) => Check::Replaced(path),
                Err(_) => Check::Gone,
            },
        }
    }

    /// The file shrank or was rewritten: read the rest from its copy if one is next to it, then
    /// start the file again from the beginning.
    fn handle_truncation(&mut self, out: &mut Vec<Entry>) {
        let Some(o) = self.open.as_mut() else { return };
        // Unconsumed bytes are read again from the copy; `prev` then ends at `consumed`.
        o.compact();
        let consumed = o.consumed();
        let copy = find_copy(&o.path, &o.head, &o.prev, consumed, (o.dev, o.ino));
        if let Some((path, file, dev, ino)) = copy {
            log::info!(
                "log file {} was truncated at offset {consumed}; reading the rest from its copy {}",
                o.path.display(),
                path.display()
            );
            let mut file = file;
            if file.seek(SeekFrom::Start(consumed)).is_ok() {
                o.file = file;
                o.path = path;
                o.dev = dev;
                o.ino = ino;
                o.buf.clear();
                o.pos = 0;
                o.buf_start = consumed;
                // The copy is then finished and the truncated file, now a different inode from
                // the one we read, is opened from its start by the rotation check.
                return;
            }
        }
        log::warn!(
            "log file {} was truncated at offset {consumed} and no copy was found next to it; \
             lines written between the last read and the truncation are lost",
            o.path.display()
        );
        // Partial line bytes belong to the old content.
        o.buf.clear();
        o.pos = 0;
        self.parser.flush(out);
        let Some(o) = self.open.as_mut() else { return };
        o.buf_start = 0;
        o.head.clear();
        o.prev.clear();
        if o.file.seek(SeekFrom::Start(0)).is_err() {
            self.close_for_retry();
        }
    }
}

/// Finds the line of `current_logfiles` for `format` (`stderr log/postgresql.log`).
pub fn current_logfile(text: &str, format: Format) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (kind, path) = line.split_once(' ')?;
        (kind == format.as_str() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
    })
}

/// The newest file in `dir` matching `pattern` (modification time, then name).
pub fn newest_in(dir: &Path, pattern: &FilePattern) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, std::ffi::OsString)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(s) = name.to_str() else { continue };
        if !pattern.matches(s) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        let newer = match &best {
            None => true,
            Some((t, n)) => (mtime, &name) > (*t, n),
        };
        if newer {
            best = Some((mtime, name));
        }
    }
    best.map(|(_, n)| dir.join(n))
}

/// The file with this identity: `path` itself, or a file in the same directory (renamed).
fn find_by_identity(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    if let Ok(m) = std::fs::metadata(path) {
        if m.dev() == dev && m.ino() == ino {
            return Some(path.to_path_buf());
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(m) = entry.metadata() {
            if m.is_file() && m.dev() == dev && m.ino() == ino {
                return Some(entry.path());
            }
        }
    }
    None
}

/// A copy of a truncated file next to it: another inode, at least `min_len` long, holding `head`
/// at its start and `before` (the bytes last read) right before `min_len`. Copies of older
/// generations, or other files starting with the same bytes, differ there. When several qualify
/// (copies of the same content), the longest, then the newest, then the last by name.
fn find_copy(
    path: &Path,
    head: &[u8],
    before: &[u8],
    min_len: u64,
    not: (u64, u64),
) -> Option<(PathBuf, File, u64, u64)> {
    if head.is_empty() {
        return None;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    type Key = (u64, std::time::SystemTime, PathBuf);
    let mut best: Option<(Key, File, u64, u64)> = None;
    let before_at = min_len.saturating_sub(before.len() as u64);
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(m) = entry.metadata() else { continue };
        if !m.is_file() || (m.dev(), m.ino()) == not || m.len() < min_len {
            continue;
        }
        let Ok(f) = crate::fsutil::open_regular(&entry.path()) else {
            continue;
        };
        let holds = |bytes: &[u8], at: u64| holds_at(&f, bytes, at).unwrap_or(false);
        if !holds(head, 0) || !holds(before, before_at) {
            continue;
        }
        let key = (
            m.len(),
            m.modified().unwrap_or(std::time::UNIX_EPOCH),
            entry.path(),
        );
        if best.as_ref().map_or(true, |b| key > b.0) {
            best = Some((key, f, m.dev(), m.ino()));
        }
    }
    best.map(|((_, _, p), f, d, i)| (p, f, d, i))
}

/// True when `f` holds `bytes` at `offset` (always for no bytes).
fn holds_at(f: &File, bytes: &[u8], offset: u64) -> io::Result<bool> {
    if bytes.is_empty() {
        return Ok(true);
    }
    let mut now = vec![0u8; bytes.len()];
    let n = read_at_full(f, &mut now, offset)?;
    Ok(n == bytes.len() && now == bytes)
}

fn read_at_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// FNV-1a, 64 bits: a cheap, stable fingerprint (not a defence against anyone).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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

type State = (Option<(PathBuf, Mark)>, Vec<Mark>);

/// Reads the position file; `None` when it is not one.
fn parse_state(text: &str) -> Option<State> {
    let mut lines = text.lines();
    if lines.next()? != "bitville-logtail 1" {
        return None;
    }
    let mark = |it: &mut std::str::SplitN<'_, char>| -> Option<Mark> {
        Some(Mark {
            dev: it.next()?.parse().ok()?,
            ino: it.next()?.parse().ok()?,
            offset: it.next()?.parse().ok()?,
            fp_len: it.next()?.parse().ok()?,
            fp: u64::from_str_radix(it.next()?, 16).ok()?,
        })
    };
    let mut resume = None;
    let mut finished = Vec::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("pos ") {
            let mut it = rest.splitn(6, ' ');
            let m = mark(&mut it)?;
            resume = Some((PathBuf::from(it.next()?), m));
        } else if let Some(rest) = line.strip_prefix("done ") {
            let mut it = rest.splitn(6, ' ');
            finished.push(mark(&mut it)?);
        } else if !line.is_empty() {
            return None;
        }
    }
    Some((resume, finished))
}

/// Writes the position file (creating its directory) so that a crash leaves either the old or
/// the new content, [`Durability::Durable`](crate::fsutil::Durability::Durable): a position that went back after a power failure
/// would ship entries twice, and it is written only after they are in the spool.
fn save_position(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::fsutil::write_atomically(path, bytes, crate::fsutil::Durability::Durable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::ops::Range;

    /// A directory of its own under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p =
                std::env::temp_dir().join(format!("logtail-unit-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn log(&self) -> PathBuf {
            self.0.join("postgresql.log")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 52 bytes, its number in the message.
    fn line(i: usize) -> String {
        format!(
            "2024-05-01 12:00:00.000 UTC [{}] LOG:  line {i:06}\n",
            100 + i % 7
        )
    }

    /// Longer than the fingerprint, the same in every generation of the file.
    const BANNER: &str =
        "2024-05-01 12:00:00.000 UTC [1] LOG:  database system is ready to accept connections\n";

    fn lines(r: Range<usize>) -> String {
        r.map(line).collect()
    }

    fn want(r: Range<usize>) -> Vec<String> {
        r.map(|i| format!("line {i:06}")).collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// logrotate's copytruncate, then the server writing `refill` into the emptied file.
    fn copytruncate(log: &Path, copy: &Path, refill: &str) {
        fs::copy(log, copy).unwrap();
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(log)
            .unwrap();
        append(log, refill);
    }

    fn tailer(log: &Path) -> Tailer {
        let mut c = TailConfig::new(Follow::Path(log.to_path_buf()), None);
        c.start_at_end = false;
        c.settle = Duration::ZERO;
        c.read_chunk = 4096;
        Tailer::new(c, EntryParser::new(Format::Stderr, "%m [%p] "))
    }

    /// Polls until nothing more comes; the messages.
    fn poll_all(t: &mut Tailer) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..1000 {
            let b = t.poll();
            if b.entries.is_empty() && !b.more {
                break;
            }
            got.extend(b.entries.into_iter().map(|e| e.message));
        }
        got
    }

    fn banner_then(r: Range<usize>) -> Vec<String> {
        let mut v = vec!["database system is ready to accept connections".to_string()];
        v.extend(want(r));
        v
    }

    #[test]
    fn a_truncation_and_refill_between_the_check_and_the_read_is_noticed() {
        // The race of the concurrent copytruncate test, made deterministic: the file is checked
        // (unchanged), then copied, truncated and refilled past the offset, then read.
        let dir = Dir::new("race");
        let log = dir.log();
        append(&log, &lines(0..10));
        let mut t = tailer(&log);
        assert_eq!(poll_all(&mut t), want(0..10));
        append(&log, &lines(10..12));
        let (log2, copy) = (log.clone(), dir.0.join("postgresql.log.1"));
        let mut rotated = false;
        t.before_read = Some(Box::new(move || {
            if !std::mem::replace(&mut rotated, true) {
                copytruncate(&log2, &copy, &lines(100..200));
            }
        }));
        let mut expect = want(10..12);
        expect.extend(want(100..200));
        assert_eq!(poll_all(&mut t), expect);
    }

    #[test]
    fn a_refill_with_the_same_first_bytes_is_noticed_by_the_bytes_last_read() {
        // Every generation starts with the same line: only the bytes before the offset differ.
        let dir = Dir::new("samehead");
        let log = dir.log();
        append(&log, &format!("{BANNER}{}", lines(0..10)));
        let mut t = tailer(&log);
        assert_eq!(poll_all(&mut t), banner_then(0..10));
        append(&log, &lines(10..12));
        let refill = format!("{BANNER}{}", lines(100..130));
        copytruncate(&log, &dir.0.join("postgresql.log.1"), &refill);
        let mut expect = want(10..12);
        expect.extend(banner_then(100..130));
        assert_eq!(poll_all(&mut t), expect);
    }

    #[test]
    fn the_copy_read_is_the_one_holding_the_bytes_last_read() {
        let dir = Dir::new("copies");
        let log = dir.log();
        append(&log, &format!("{BANNER}{}", lines(0..10)));
        let mut t = tailer(&log);
        assert_eq!(poll_all(&mut t), banner_then(0..10));
        append(&log, &lines(10..12));
        // Files starting with the same bytes, newer than logrotate's copy: an older generation
        // (longer, other lines where we were) and a snapshot of this one that ends where we were.
        let older = dir.0.join("postgresql.log.2");
        append(&older, &format!("{BANNER}{}", lines(500..600)));
        let snapshot = dir.0.join("postgresql.log.snap");
        fs::write(&snapshot, format!("{BANNER}{}", lines(0..10))).unwrap();
        copytruncate(&log, &dir.0.join("postgresql.log.1"), &lines(200..205));
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        for p in [&older, &snapshot] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        let mut expect = want(10..12);
        expect.extend(want(200..205));
        assert_eq!(poll_all(&mut t), expect);
    }

    #[test]
    fn a_file_shorter_than_the_fingerprint_when_opened_still_tells_a_truncation() {
        let dir = Dir::new("short");
        let log = dir.log();
        // Half a line when the file is opened: the first bytes are kept as they are read.
        let first = line(0);
        append(&log, &first[..20]);
        let mut t = tailer(&log);
        assert!(poll_all(&mut t).is_empty());
        append(&log, &format!("{}{}", &first[20..], lines(1..5)));
        assert_eq!(poll_all(&mut t), want(0..5));
        copytruncate(&log, &dir.0.join("postgresql.log.1"), &lines(100..140));
        assert_eq!(poll_all(&mut t), want(100..140));
    }

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
    fn a_renamed_file_is_read_to_its_end_before_the_new_one() {
        // The server writes to the renamed file until it reopens its log: those lines come
        // first, then the new file's.
        let dir = Dir::new("rename");
        let log = dir.log();
        append(&log, &lines(0..5));
        let mut t = tailer(&log);
        assert_eq!(poll_all(&mut t), want(0..5));
        let mut server = OpenOptions::new().append(true).open(&log).unwrap();
        fs::rename(&log, dir.0.join("postgresql.log.1")).unwrap();
        append(&log, &lines(8..12));
        server.write_all(lines(5..8).as_bytes()).unwrap();
        assert_eq!(poll_all(&mut t), want(5..12));
    }

    #[test]
    fn file_patterns_follow_log_filename() {
        let p = FilePattern::from_log_filename("postgresql-%Y-%m-%d_%H%M%S.log", Format::Stderr);
        assert!(p.matches("postgresql-2024-05-01_120000.log"));
        assert!(!p.matches("postgresql-2024-05-01_120000.csv"));
        assert!(!p.matches("other-2024.log"));
        let c = FilePattern::from_log_filename("postgresql-%Y-%m-%d_%H%M%S.log", Format::Csv);
        assert!(c.matches("postgresql-2024-05-01_120000.csv"));
        let j = FilePattern::from_log_filename("pg-%a", Format::Json);
        assert!(j.matches("pg-Mon.json"));
        assert!(!j.matches("pg-Mon.log"));
        let lit = FilePattern::from_log_filename("server.log", Format::Stderr);
        assert!(lit.matches("server.log"));
        assert!(!lit.matches("server.log.1"));
        assert!(FilePattern::any(Format::Stderr).matches("x.log"));
    }

    #[test]
    fn current_logfiles_lines() {
        let text = "stderr log/postgresql-2024.log\ncsvlog log/postgresql-2024.csv\n";
        assert_eq!(
            current_logfile(text, Format::Csv),
            Some(PathBuf::from("log/postgresql-2024.csv"))
        );
        assert_eq!(current_logfile(text, Format::Json), None);
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

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let text =
            "bitville-logtail 1\npos 1 2 3 4 00000000000000ff /var/log/a b.log\ndone 5 6 7 8 0a\n";
        let (resume, done) = parse_state(text).unwrap();
        let (path, m) = resume.unwrap();
        assert_eq!(path, PathBuf::from("/var/log/a b.log"));
        assert_eq!(
            m,
            Mark {
                dev: 1,
                ino: 2,
                offset: 3,
                fp_len: 4,
                fp: 255
            }
        );
        assert_eq!(
            done,
            vec![Mark {
                dev: 5,
                ino: 6,
                offset: 7,
                fp_len: 8,
                fp: 10
            }]
        );
        assert!(parse_state("bitville-logtail 2\n").is_none());
        assert!(parse_state("bitville-logtail 1\npos 1 2\n").is_none());
    }
}
