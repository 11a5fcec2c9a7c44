//! The position file: where the tailer resumes after a restart.
//!
//! `logtail.position` in the state directory holds a version line (`bitville-logtail 1`), one
//! `pos` line (device, inode, offset, fingerprint length, fingerprint, then the path the file had)
//! and up to 16 `done` lines, the files read to their end before (so a file name PostgreSQL reuses
//! is resumed where it ended, not read again). The fingerprint is an FNV-1a hash of the file's
//! first bytes (at most 64, at most the offset): an inode reused by another file does not match.
//!
//! Invariants: the file is written only from a position handed out with a batch whose entries the
//! caller has appended to the spool, and replaced atomically and durably (temp file, fsync,
//! rename, directory fsync), so a crash leaves the old or the new position and a position never
//! goes back; a file that is not a position (another version, a damaged line, too large) is a
//! warning and a first-run start, never a panic.

use std::io;
use std::path::{Path, PathBuf};

/// How many leading bytes identify a file's content (its first line's timestamp and pid).
pub(super) const FINGERPRINT_LEN: usize = 64;

/// How many finished files are remembered (their end offsets), so a file name PostgreSQL reuses
/// (`postgresql-%a.log` with `log_truncate_on_rotation = off`) is resumed, not re-read.
const MAX_FINISHED: usize = 16;

/// Name of the position file inside the state directory.
pub const POSITION_FILE: &str = "logtail.position";

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

/// A file's identity and how far it was read, as remembered for resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) offset: u64,
    pub(super) fp_len: u32,
    pub(super) fp: u64,
}

impl Mark {
    /// The mark of a position handed out with a batch.
    pub(super) fn of(p: &Position) -> Mark {
        Mark {
            dev: p.dev,
            ino: p.ino,
            offset: p.offset,
            fp_len: p.fp_len,
            fp: p.fp,
        }
    }

    /// True when the file with this identity, `size` bytes long and starting with `head`, is the
    /// file this mark was taken of (an inode reused by another file has other first bytes, or is
    /// shorter than the offset).
    pub(super) fn fits(&self, dev: u64, ino: u64, size: u64, head: &[u8]) -> bool {
        self.dev == dev
            && self.ino == ino
            && size >= self.offset
            && (self.fp_len as usize) <= head.len()
            && fnv1a(&head[..self.fp_len as usize]) == self.fp
    }
}

/// Remembers that a file ended at `mark` (replacing an older mark of the same file), keeping
/// the newest [`MAX_FINISHED`].
pub(super) fn remember_finished(finished: &mut Vec<Mark>, mark: Mark) {
    finished.retain(|m| (m.dev, m.ino) != (mark.dev, mark.ino));
    finished.push(mark);
    if finished.len() > MAX_FINISHED {
        finished.remove(0);
    }
}

/// FNV-1a, 64 bits: a cheap, stable fingerprint (not a defence against anyone).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the position file holds: where to resume (with the path the file had), and the files
/// finished before.
pub(super) type State = (Option<(PathBuf, Mark)>, Vec<Mark>);

/// Reads the position file at `path`: `None` when there is none (a first run) or it is not
/// readable as a position (warned; the tailer then starts as on a first run).
pub(super) fn load(path: &Path) -> Option<State> {
    match crate::fsutil::read_regular_to_string(path, super::MAX_SMALL_FILE) {
        Ok(text) => {
            let state = parse_state(&text);
            if state.is_none() {
                log::warn!(
                    "log position file {} is not readable as a position; starting as on a first run",
                    path.display()
                );
            }
            state
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("reading log position file {}: {e}", path.display());
            None
        }
    }
}

/// The position file's text for `position` and the files finished before.
pub(super) fn render(position: &Position, finished: &[Mark]) -> String {
    let mark = |m: &Mark| {
        format!(
            "{} {} {} {} {:016x}",
            m.dev, m.ino, m.offset, m.fp_len, m.fp
        )
    };
    let mut text = String::from("bitville-logtail 1\n");
    // A path with a newline cannot be written on one line; the inode still finds the file.
    let shown = position.path.to_string_lossy().replace('\n', "?");
    text.push_str(&format!("pos {} {}\n", mark(&Mark::of(position)), shown));
    for f in finished {
        text.push_str(&format!("done {}\n", mark(f)));
    }
    text
}

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
pub(super) fn save(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::fsutil::write_atomically(path, bytes, crate::fsutil::Durability::Durable)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_rendered_position_parses_back_with_its_finished_files() {
        let pos = Position {
            path: PathBuf::from("/var/log/pg\nlog"),
            dev: 7,
            ino: 8,
            offset: 9,
            fp_len: 9,
            fp: 0xabc,
        };
        let done = Mark {
            dev: 7,
            ino: 3,
            offset: 100,
            fp_len: 64,
            fp: 1,
        };
        let (resume, finished) = parse_state(&render(&pos, &[done])).unwrap();
        let (path, m) = resume.unwrap();
        // The newline cannot stand in the one-line path; the inode still finds the file.
        assert_eq!(path, PathBuf::from("/var/log/pg?log"));
        assert_eq!(m, Mark::of(&pos));
        assert_eq!(finished, vec![done]);
    }

    #[test]
    fn a_mark_fits_only_its_own_file() {
        let head = b"2024-05-01 12:00:00 UTC [1] LOG:  ready";
        let m = Mark {
            dev: 1,
            ino: 2,
            offset: 30,
            fp_len: 20,
            fp: fnv1a(&head[..20]),
        };
        assert!(m.fits(1, 2, 30, head));
        assert!(!m.fits(1, 2, 29, head), "shorter than the offset");
        assert!(!m.fits(1, 3, 30, head), "another inode");
        assert!(!m.fits(1, 2, 30, b"2024-05-02 12:00:00 UTC [1] LOG:  ready"));
        assert!(
            !m.fits(1, 2, 30, &head[..10]),
            "fewer first bytes than fingerprinted"
        );
    }

    #[test]
    fn at_most_sixteen_finished_files_are_remembered_one_mark_each() {
        let mark = |ino, offset| Mark {
            dev: 1,
            ino,
            offset,
            fp_len: 0,
            fp: fnv1a(b""),
        };
        let mut finished = Vec::new();
        for ino in 0..20 {
            remember_finished(&mut finished, mark(ino, 1));
        }
        remember_finished(&mut finished, mark(10, 2));
        assert_eq!(finished.len(), MAX_FINISHED);
        assert_eq!(finished.first().map(|m| m.ino), Some(4));
        assert_eq!(finished.last(), Some(&mark(10, 2)));
        assert_eq!(finished.iter().filter(|m| m.ino == 10).count(), 1);
    }
}
