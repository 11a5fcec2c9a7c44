//! Rotation: noticing that the file being read was renamed away or truncated in place, and
//! continuing without losing or repeating lines.
//!
//! - Renamed (the path, or `current_logfiles`, or the newest file of the directory now names
//!   another file): [`Check::Replaced`]; the tailer reads the old file to its end first, emits its
//!   last entry, then reads the new file from its start.
//! - Truncated in place (copytruncate: the size dropped below what was read, or the first bytes or
//!   the bytes last read are no longer there): the copy is looked for next to it (a file holding
//!   the same first bytes and the same bytes right before our offset; the longest when several
//!   do) and read from where we were, then the truncated file from its start.
//!
//! Invariants: every read is checked after it returned against the first bytes and the bytes last
//! read, so content written after a truncation is never taken for the rest of the old content,
//! however fast the file was refilled past our offset; a copy is only ever another inode in the
//! same directory, at least as long as what was read, opened read-only as a regular file; a
//! truncation with no copy found is said plainly (the lines between the last read and the
//! truncation are lost) and reading restarts at the file's start.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{OpenFile, Tailer};
use crate::logtail::entry::Entry;

/// What [`Tailer::check`] found at the end of the file.
pub(super) enum Check {
    /// Still the file to follow.
    Same,
    /// No file to follow at the moment (keep reading the open one).
    Gone,
    /// Truncated in place (copytruncate).
    Truncated,
    /// Another file is the log now: finish this one, then open that.
    Replaced(PathBuf),
}

impl OpenFile {
    /// True when the file no longer holds its first bytes, or the bytes before `buf[upto]`, as
    /// they were read: it was truncated (and perhaps written again past our offset).
    pub(super) fn changed_before(&self, upto: usize) -> io::Result<bool> {
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

impl Tailer {
    /// True when the open file shrank below what was read, or its first bytes or the bytes last
    /// read changed (truncated and written again past our offset before we looked).
    pub(super) fn truncated(&self) -> bool {
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
    pub(super) fn check(&mut self) -> Check {
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
    pub(super) fn handle_truncation(&mut self, out: &mut Vec<Entry>) {
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
pub(super) fn holds_at(f: &File, bytes: &[u8], offset: u64) -> io::Result<bool> {
    if bytes.is_empty() {
        return Ok(true);
    }
    let mut now = vec![0u8; bytes.len()];
    let n = read_at_full(f, &mut now, offset)?;
    Ok(n == bytes.len() && now == bytes)
}

/// Reads `buf.len()` bytes at `offset`, fewer only at the end of the file; the count read.
pub(super) fn read_at_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::time::Duration;

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
}
