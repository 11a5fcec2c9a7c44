//! The baseline: the counters at one moment (what the next interval is subtracted from), its
//! file format (magic, header, slot names, fixed-size entries, CRC32C trailer) and its
//! persistence in the state directory.
//!
//! Invariants: the file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new baseline, never a torn one; an unreadable,
//! foreign or damaged baseline (checksum, format, other slots) is ignored with one warning;
//! a corrupt entry count never reserves memory before the file's size confirms it.

use crate::fsutil::Durability;
use std::io::Write as _;
use std::path::Path;

use super::columns::{ExtVersion, N_SLOTS, SLOTS};

/// An entry's identity.
pub type Key = (u32, u32, i64, bool);

/// One entry's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Entry {
    /// One counter per slot; NaN where the extension version lacks it.
    pub(super) v: [f64; N_SLOTS],
    /// When the entry was (re-)added (PG17+), unix seconds.
    pub(super) stats_since: Option<f64>,
}

/// The counters at one moment: what the next interval is subtracted from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Baseline {
    /// The server's `now()` when the counters were read, unix seconds.
    pub(super) taken_at: f64,
    /// The extension version that decided the columns.
    pub(super) ext_version: ExtVersion,
    /// `pg_stat_statements_info.stats_reset` (PG14+).
    pub(super) stats_reset: Option<f64>,
    /// `pg_stat_statements_info.dealloc` (PG14+).
    pub(super) dealloc: Option<i64>,
    /// The counters per entry.
    pub(super) entries: Entries,
}

/// Entries sorted by key: a third of a hash map's memory for 5,000 entries, and lookups by
/// binary search are as fast at this size.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Entries(pub(super) Vec<(Key, Entry)>);

impl Entries {
    /// Sorts `v` by key (a repeated key keeps its first entry).
    pub(super) fn from_unsorted(mut v: Vec<(Key, Entry)>) -> Entries {
        v.sort_unstable_by_key(|e| e.0);
        // The view never repeats a key; a repeated one would make lookups ambiguous.
        v.dedup_by(|a, b| a.0 == b.0);
        v.shrink_to_fit();
        Entries(v)
    }

    /// The entry of `key`.
    pub(super) fn get(&self, key: &Key) -> Option<&Entry> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// How many entries.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Key, Entry)> {
        self.0.iter()
    }
}

/// The baseline's file name in the state directory.
pub(super) const BASELINE_FILE: &str = "pg_stat_statements.baseline";
/// File magic and format version: version 3 ends with a CRC32C of everything before it.
const BASELINE_MAGIC: &[u8; 8] = b"BVPGSS\x00\x03";
/// The format before the checksum, still read (then only the plausibility checks protect it).
const BASELINE_MAGIC_V2: &[u8; 8] = b"BVPGSS\x00\x02";
/// The largest baseline file read (about 230 bytes per entry: over a million entries).
const BASELINE_MAX_BYTES: u64 = 256 << 20;

/// Passes bytes through to `inner`, keeping the CRC32C of everything written.
struct CrcWriter<'a, W: std::io::Write> {
    inner: &'a mut W,
    crc: u32,
}

impl<W: std::io::Write> std::io::Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crate::spool::frame::crc32c_update(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads little-endian fields from a byte slice; every read fails cleanly past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn f64(&mut self) -> Option<f64> {
        self.take().map(f64::from_le_bytes)
    }
    fn opt_f64(&mut self) -> Option<Option<f64>> {
        let flag = self.u8()?;
        let v = self.f64()?;
        Some((flag == 1).then_some(v))
    }
}

fn put_opt_f64(out: &mut impl std::io::Write, v: Option<f64>) -> std::io::Result<()> {
    out.write_all(&[u8::from(v.is_some())])?;
    out.write_all(&v.unwrap_or(0.0).to_le_bytes())
}

impl Baseline {
    /// The binary form: magic, header, the slot names (a baseline written with other slots is
    /// not used), then fixed-size entries. Binary because formatting 100,000 floats as text
    /// costs more CPU than the rest of the cycle.
    pub(super) fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut w = CrcWriter { inner: out, crc: 0 };
        self.write_body(&mut w)?;
        let crc = w.crc;
        out.write_all(&crc.to_le_bytes())
    }

    fn write_body(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(BASELINE_MAGIC)?;
        out.write_all(&self.taken_at.to_le_bytes())?;
        out.write_all(&self.ext_version.0.to_le_bytes())?;
        out.write_all(&self.ext_version.1.to_le_bytes())?;
        put_opt_f64(out, self.stats_reset)?;
        put_opt_f64(out, self.dealloc.map(|d| d as f64))?;
        let slots = SLOTS.join(",");
        out.write_all(&(slots.len() as u32).to_le_bytes())?;
        out.write_all(slots.as_bytes())?;
        out.write_all(&(self.entries.len() as u64).to_le_bytes())?;
        for (k, e) in self.entries.iter() {
            out.write_all(&k.0.to_le_bytes())?;
            out.write_all(&k.1.to_le_bytes())?;
            out.write_all(&k.2.to_le_bytes())?;
            out.write_all(&[u8::from(k.3)])?;
            put_opt_f64(out, e.stats_since)?;
            for v in e.v {
                // Bit-exact; NaN marks a counter the version lacks.
                out.write_all(&v.to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Reads a baseline; `None` when it is not one, is torn, or fails its checksum.
    fn parse(bytes: &[u8]) -> Option<Baseline> {
        let body = match bytes.get(..8)? {
            m if m == BASELINE_MAGIC => {
                let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
                let stored = u32::from_le_bytes(crc.try_into().ok()?);
                if crate::spool::frame::crc32c(body) != stored {
                    return None;
                }
                body
            }
            m if m == BASELINE_MAGIC_V2 => bytes,
            _ => return None,
        };
        let mut r = Reader(&body[8..]);
        let taken_at = r.f64()?;
        let ext_version = (r.u32()?, r.u32()?);
        let stats_reset = r.opt_f64()?;
        let dealloc = r.opt_f64()?.map(|d| d as i64);
        let n_slot_bytes = r.u32()? as usize;
        let (slots, rest) = r.0.split_at_checked(n_slot_bytes)?;
        if slots != SLOTS.join(",").as_bytes() {
            return None;
        }
        r.0 = rest;
        let n = r.u64()?;
        let entry_size = 4 + 4 + 8 + 1 + 9 + 8 * N_SLOTS;
        // Checked before allocating: a corrupt count must not reserve gigabytes.
        if r.0.len() as u64 != n.checked_mul(entry_size as u64)? {
            return None;
        }
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let key: Key = (r.u32()?, r.u32()?, r.u64()? as i64, r.u8()? == 1);
            let stats_since = r.opt_f64()?;
            let mut v = [f64::NAN; N_SLOTS];
            for slot in v.iter_mut() {
                *slot = r.f64()?;
            }
            entries.push((key, Entry { v, stats_since }));
        }
        Some(Baseline {
            taken_at,
            ext_version,
            stats_reset,
            dealloc,
            entries: Entries::from_unsorted(entries),
        })
    }
}

/// Reads the baseline persisted at `path`: `None` (with one warning unless there is no file)
/// when it is missing, unreadable or damaged.
pub(super) fn load(path: &Path) -> Option<Baseline> {
    match crate::fsutil::read_regular_file(path, BASELINE_MAX_BYTES) {
        Ok(bytes) => {
            let b = Baseline::parse(&bytes);
            if b.is_none() {
                log::warn!(
                    "statements collector: ignoring unreadable or damaged baseline {} \
                     (checksum or format); the first interval takes a new one",
                    path.display()
                );
            }
            b
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!(
                "statements collector: ignoring baseline {}: {e}",
                path.display()
            );
            None
        }
    }
}

/// Replaces the baseline file at `path` (creating its directory) with the content streamed by
/// `fill` through a 64 KiB buffer, so a large file never needs its own allocation. Durability:
/// [`Durability::Durable`] (temp file, fsync, rename, fsync of the directory), since a baseline
/// that went back after a power failure would ship its deltas twice.
pub(super) fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::fsutil::write_atomically_with(path, Durability::Durable, |f| {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
        fill(&mut w)?;
        w.flush()
    })
}

/// An entry with only calls and execution time set: the fixture of the delta and baseline tests.
#[cfg(test)]
pub(super) fn entry(calls: f64, time: f64) -> Entry {
    let mut v = [0.0; N_SLOTS];
    v[super::columns::CALLS] = calls;
    v[super::columns::EXEC_TIME] = time;
    Entry {
        v,
        stats_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::columns::EXEC_TIME;
    use super::*;

    #[test]
    fn baseline_round_trips_and_rejects_foreign_files() {
        let mut entries = Vec::new();
        let mut e = entry(500.0, 0.1 + 0.2);
        e.v[N_SLOTS - 1] = f64::NAN;
        e.stats_since = Some(1_700_000_000.25);
        entries.push(((10, 5, 7, false), entry(1.0, 2.0)));
        entries.push(((10, 5, -42, true), e));
        let b = Baseline {
            taken_at: 1_700_000_100.5,
            ext_version: (1, 10),
            stats_reset: None,
            dealloc: Some(3),
            entries: Entries::from_unsorted(entries),
        };
        let mut bytes = Vec::new();
        b.write_to(&mut bytes).unwrap();
        let back = Baseline::parse(&bytes).unwrap();
        assert_eq!(back.taken_at, b.taken_at);
        assert_eq!(back.dealloc, Some(3));
        assert_eq!(back.stats_reset, None);
        let e2 = *back.entries.get(&(10, 5, -42, true)).unwrap();
        assert!(back.entries.get(&(10, 5, -42, false)).is_none());
        assert_eq!(e2.v[EXEC_TIME], 0.1 + 0.2, "exact round trip");
        assert!(e2.v[N_SLOTS - 1].is_nan());
        assert_eq!(e2.stats_since, Some(1_700_000_000.25));
        assert_eq!(back.entries.len(), 2);
        assert!(Baseline::parse(b"something else").is_none());
        assert!(Baseline::parse(&bytes[..bytes.len() - 1]).is_none(), "torn");
        let mut other_slots = bytes.clone();
        let at = other_slots.windows(5).position(|w| w == b"calls").unwrap();
        other_slots[at] = b'k';
        assert!(Baseline::parse(&other_slots).is_none(), "other slot layout");

        // One flipped bit in a counter fails the checksum.
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 20] ^= 0x40;
        assert!(Baseline::parse(&flipped).is_none(), "checksum");
        // A baseline of the format before the checksum still loads.
        let mut v2 = bytes[..n - 4].to_vec();
        v2[..8].copy_from_slice(BASELINE_MAGIC_V2);
        assert_eq!(Baseline::parse(&v2).unwrap().entries.len(), 2);
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = crate::testdir::TempDir::new("stmts");
        let p = dir.join("sub/state");
        write_atomically_with(&p, |w| w.write_all(b"one")).unwrap();
        write_atomically_with(&p, |w| w.write_all(b"two")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!crate::fsutil::temp_path(&p).exists());
    }
}
