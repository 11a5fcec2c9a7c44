//! The acknowledged cursor: the highest sequence number the listener acknowledged, the next
//! sequence number to assign, and the losses not yet reported to the listener, in one small
//! text file replaced atomically.
//!
//! Invariants: the file is never written in place. A new version is written to `cursor.tmp`,
//! fsynced, renamed over `cursor`, and the directory is fsynced, so after a crash the file is
//! either the old or the new version, never a mix. A missing or unreadable cursor is not fatal:
//! the spool then re-sends everything it still holds (duplicates are allowed, loss is not).
//! The last line is a CRC32C of the lines before it: a flipped digit is detected instead of
//! trusted (a cursor written before the checksum existed still loads, without that protection).

use crate::fsutil::Durability;
use std::fs::File;
use std::io;
use std::path::Path;

/// The cursor file's name inside the spool directory.
pub const FILE_NAME: &str = "cursor";
/// The temporary name a new cursor is written under before the rename.
pub const TMP_NAME: &str = "cursor.tmp";
const FIRST_LINE: &str = "bitville-spool-cursor 1";

/// What the cursor file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CursorState {
    /// Every record with a sequence number up to and including this one was acknowledged.
    pub acked: u64,
    /// The next sequence number to assign (so numbering survives an empty spool).
    pub next_seq: u64,
    /// Loss counters not yet delivered in a payload (see `DropCounts`); kept here so that a
    /// restart does not forget them.
    pub unreported: [u64; UNREPORTED_LEN],
}

/// How many loss counters the cursor keeps: the ten of [`LEGACY_UNREPORTED_LEN`], the dropped
/// records by kind (eight), and the dropped records' first and last seq.
pub const UNREPORTED_LEN: usize = 20;

/// How many loss counters a cursor written before the drop report named kinds and seqs holds;
/// such a cursor still loads (the counters it lacks are zero).
pub const LEGACY_UNREPORTED_LEN: usize = 10;

/// The largest cursor file read; a real one is about 100 bytes.
pub const MAX_FILE_BYTES: u64 = 4096;

/// How far the cursor text can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The checksum line matches the text.
    Valid,
    /// No checksum line (a cursor written before it existed).
    Absent,
    /// The checksum does not match: some byte was changed.
    Mismatch,
}

/// Parses the cursor text and checks its checksum; `None` when it is not a cursor at all.
pub fn parse_checked(text: &str) -> Option<(CursorState, Checksum)> {
    let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let (body, last) = text.split_at(body_end);
    let (body, checksum) = match last.trim_end().strip_prefix("crc ") {
        Some(hex) => {
            let ok = u32::from_str_radix(hex.trim(), 16).ok()
                == Some(super::frame::crc32c(body.as_bytes()));
            (
                body,
                if ok {
                    Checksum::Valid
                } else {
                    Checksum::Mismatch
                },
            )
        }
        None => (text, Checksum::Absent),
    };
    parse(body).map(|state| (state, checksum))
}

/// Parses the cursor text without its checksum line; `None` when it is not a cursor this build
/// wrote.
pub fn parse(text: &str) -> Option<CursorState> {
    let mut lines = text.lines();
    if lines.next()? != FIRST_LINE {
        return None;
    }
    let mut acked = None;
    let mut next_seq = None;
    let mut unreported = [0u64; UNREPORTED_LEN];
    for line in lines {
        let (key, value) = line.split_once(' ')?;
        match key {
            "acked" => acked = Some(value.trim().parse().ok()?),
            "next_seq" => next_seq = Some(value.trim().parse().ok()?),
            "unreported" => {
                let values: Vec<u64> = value
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                if values.len() != UNREPORTED_LEN && values.len() != LEGACY_UNREPORTED_LEN {
                    return None;
                }
                unreported[..values.len()].copy_from_slice(&values);
            }
            _ => return None,
        }
    }
    Some(CursorState {
        acked: acked?,
        next_seq: next_seq?,
        unreported,
    })
}

/// The file text for `state`, its checksum line last.
pub fn render(state: &CursorState) -> String {
    let unreported: Vec<String> = state.unreported.iter().map(u64::to_string).collect();
    let body = format!(
        "{FIRST_LINE}\nacked {}\nnext_seq {}\nunreported {}\n",
        state.acked,
        state.next_seq,
        unreported.join(" ")
    );
    let crc = super::frame::crc32c(body.as_bytes());
    format!("{body}crc {crc:08x}\n")
}

/// Reads the cursor in `dir`: `Ok(None)` when there is none, `Err` with a reason when it exists
/// but cannot be used at all. A cursor whose checksum fails is returned with
/// [`Checksum::Mismatch`]: its loss counters are still worth reporting, its positions are not
/// to be trusted.
pub fn read(dir: &Path) -> Result<Option<(CursorState, Checksum)>, String> {
    let path = dir.join(FILE_NAME);
    match crate::fsutil::read_regular_to_string(&path, MAX_FILE_BYTES) {
        Ok(text) => parse_checked(&text)
            .map(Some)
            .ok_or_else(|| format!("cursor {} is not readable", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read cursor {}: {e}", path.display())),
    }
}

/// Replaces the cursor in `dir` atomically and durably: [`Durability::Durable`] (`cursor.tmp`,
/// fsync, rename, fsync of the directory), as ARCHITECTURE.md's durability invariant requires:
/// the acknowledgements and the unreported loss counters it holds must survive a power failure.
pub fn write(dir: &Path, state: &CursorState) -> io::Result<()> {
    let path = dir.join(FILE_NAME);
    crate::fsutil::write_atomically(&path, render(state).as_bytes(), Durability::Durable)
}

/// Fsyncs a directory so that a file created, renamed or removed in it stays so after a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_name_is_the_one_recovery_knows() {
        let dir = Path::new("/spool");
        let tmp = crate::fsutil::temp_path(&dir.join(FILE_NAME));
        assert_eq!(tmp, dir.join(TMP_NAME));
    }

    #[test]
    fn round_trips_and_rejects_foreign_text() {
        let s = CursorState {
            acked: 41,
            next_seq: 77,
            unreported: std::array::from_fn(|i| i as u64 + 1),
        };
        assert_eq!(parse_checked(&render(&s)), Some((s, Checksum::Valid)));
        // A cursor from before the drop report named kinds and seqs still reads.
        let legacy = parse(
            "bitville-spool-cursor 1\nacked 1\nnext_seq 2\nunreported 1 2 3 4 5 6 7 8 9 10\n",
        )
        .unwrap();
        assert_eq!(legacy.unreported[..10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(legacy.unreported[10..], [0; UNREPORTED_LEN - 10]);
        // Without the loss line (nothing to report) it still reads.
        let bare = parse("bitville-spool-cursor 1\nacked 1\nnext_seq 2\n").unwrap();
        assert_eq!(bare.unreported, [0; UNREPORTED_LEN]);
        assert_eq!(
            parse("bitville-spool-cursor 1\nacked 1\nnext_seq 2\nunreported 1 2\n"),
            None
        );
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("bitville-spool-cursor 1\nacked x\nnext_seq 2\n"),
            None
        );
        assert_eq!(parse("bitville-spool-cursor 1\nacked 1\n"), None);
        assert_eq!(parse("something else\nacked 1\nnext_seq 2\n"), None);
    }

    #[test]
    fn a_changed_digit_fails_the_checksum_and_an_old_cursor_still_loads() {
        let s = CursorState {
            acked: 15,
            next_seq: 25,
            unreported: [0; UNREPORTED_LEN],
        };
        let text = render(&s).replace("acked 15", "acked 95");
        let (damaged, check) = parse_checked(&text).unwrap();
        assert_eq!(check, Checksum::Mismatch);
        assert_eq!(damaged.acked, 95);
        let old = "bitville-spool-cursor 1\nacked 15\nnext_seq 25\n";
        assert_eq!(
            parse_checked(old).unwrap(),
            (
                CursorState {
                    unreported: [0; UNREPORTED_LEN],
                    ..s
                },
                Checksum::Absent
            )
        );
        let bad_crc = render(&s).replace("crc ", "crc z");
        assert_eq!(parse_checked(&bad_crc).unwrap().1, Checksum::Mismatch);
    }
}
