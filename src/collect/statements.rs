//! pg_stat_statements as per-interval deltas: what each statement cost since the previous
//! interval, not since the last reset.
//!
//! Each interval: read the counters without texts (`pg_stat_statements(showtext := false)`),
//! subtract the baseline per (userid, dbid, queryid, toplevel), ship the top N changed entries by
//! delta execution time plus one `other` row summing the rest, fetch texts only for the shipped
//! entries not already known, and persist the new baseline in the state directory.
//!
//! Invariants:
//! - No delta is ever negative. An entry whose counters went backwards was reset or evicted and
//!   re-added: it ships its current counters (all counted since the baseline) with a `status`
//!   saying so. A global reset (`pg_stat_statements_info.stats_reset` moved, PG14+) marks the
//!   whole interval. PG17+ `stats_since` tells a re-added entry from a continuing one.
//! - Column differences between versions live in one table, [`COLUMNS`], keyed by the installed
//!   extension version (which decides the columns, not the server version).
//! - The baseline file is replaced atomically (temp file, fsync, rename, fsync of the directory),
//!   so a crash leaves the old or the new baseline, never a torn one; an unreadable or foreign
//!   baseline is ignored (the first interval is then only a baseline again).
//! - A missing or unloaded extension is one warning with the fix; the collector then stays quiet
//!   and re-checks every `recheck` (5 minutes), never every cycle.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{col as column_of, unix_secs, CollectError};
use crate::json::Json;
use crate::normalize::QueryText;
use crate::payload::{unix_now, Payload, Source};

const COLLECTOR: &str = "statements";

/// An extension version, `(1, 10)` for "1.10".
pub type ExtVersion = (u32, u32);

/// Parses `extversion` ("1.10") into a comparable pair.
pub fn parse_ext_version(s: &str) -> Option<ExtVersion> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

const V_ANY: ExtVersion = (0, 0);
const V_NONE: ExtVersion = (u32::MAX, 0);
/// PostgreSQL 13: `total_time` → `total_exec_time`, planning and WAL counters added.
const V_PG13: ExtVersion = (1, 8);
/// PostgreSQL 14: `toplevel` in the key, `pg_stat_statements_info`.
const V_PG14: ExtVersion = (1, 9);
/// PostgreSQL 15: temp block I/O times.
const V_PG15: ExtVersion = (1, 10);
/// PostgreSQL 17: `blk_*_time` → `shared_blk_*_time`, `stats_since`.
const V_PG17: ExtVersion = (1, 11);

/// One shipped counter and the column that holds it in a range of extension versions.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The name in the payload (stable across versions; the Python agent's names).
    pub name: &'static str,
    /// The column in `pg_stat_statements(...)` for these versions.
    pub column: &'static str,
    /// First extension version with this column.
    pub since: ExtVersion,
    /// First extension version without it (renamed or dropped).
    pub until: ExtVersion,
    /// Whether the counter is an integer (written without a fraction).
    pub integer: bool,
}

const fn col(
    name: &'static str,
    column: &'static str,
    since: ExtVersion,
    until: ExtVersion,
    integer: bool,
) -> Column {
    Column {
        name,
        column,
        since,
        until,
        integer,
    }
}

/// The version map: every counter shipped, per extension version (PG12 ships 1.7, PG13 1.8,
/// PG14 1.9, PG15 and PG16 1.10, PG17 1.11, PG18 1.12).
pub const COLUMNS: &[Column] = &[
    col("calls", "calls", V_ANY, V_NONE, true),
    col("total_exec_time", "total_time", V_ANY, V_PG13, false),
    col("total_exec_time", "total_exec_time", V_PG13, V_NONE, false),
    col("rows", "rows", V_ANY, V_NONE, true),
    col("shared_blks_hit", "shared_blks_hit", V_ANY, V_NONE, true),
    col("shared_blks_read", "shared_blks_read", V_ANY, V_NONE, true),
    col(
        "shared_blks_dirtied",
        "shared_blks_dirtied",
        V_ANY,
        V_NONE,
        true,
    ),
    col(
        "shared_blks_written",
        "shared_blks_written",
        V_ANY,
        V_NONE,
        true,
    ),
    col("local_blks_hit", "local_blks_hit", V_ANY, V_NONE, true),
    col("local_blks_read", "local_blks_read", V_ANY, V_NONE, true),
    col(
        "local_blks_dirtied",
        "local_blks_dirtied",
        V_ANY,
        V_NONE,
        true,
    ),
    col(
        "local_blks_written",
        "local_blks_written",
        V_ANY,
        V_NONE,
        true,
    ),
    col("temp_blks_read", "temp_blks_read", V_ANY, V_NONE, true),
    col(
        "temp_blks_written",
        "temp_blks_written",
        V_ANY,
        V_NONE,
        true,
    ),
    col("blk_read_time", "blk_read_time", V_ANY, V_PG17, false),
    col(
        "blk_read_time",
        "shared_blk_read_time",
        V_PG17,
        V_NONE,
        false,
    ),
    col("blk_write_time", "blk_write_time", V_ANY, V_PG17, false),
    col(
        "blk_write_time",
        "shared_blk_write_time",
        V_PG17,
        V_NONE,
        false,
    ),
    col(
        "temp_blk_read_time",
        "temp_blk_read_time",
        V_PG15,
        V_NONE,
        false,
    ),
    col(
        "temp_blk_write_time",
        "temp_blk_write_time",
        V_PG15,
        V_NONE,
        false,
    ),
    col("plans", "plans", V_PG13, V_NONE, true),
    col("total_plan_time", "total_plan_time", V_PG13, V_NONE, false),
    col("wal_records", "wal_records", V_PG13, V_NONE, true),
    col("wal_fpi", "wal_fpi", V_PG13, V_NONE, true),
    col("wal_bytes", "wal_bytes", V_PG13, V_NONE, true),
];

/// The shipped counter names, in payload order (one slot each).
const SLOTS: [&str; 22] = [
    "calls",
    "total_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_dirtied",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_time",
    "blk_write_time",
    "temp_blk_read_time",
    "temp_blk_write_time",
    "plans",
    "total_plan_time",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
];
const N_SLOTS: usize = SLOTS.len();
const CALLS: usize = 0;
const EXEC_TIME: usize = 1;

/// What an extension version offers beyond the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `toplevel` is part of the entry key (PG14+).
    pub toplevel: bool,
    /// `pg_stat_statements_info` exists (PG14+).
    pub info: bool,
    /// Per-entry `stats_since` (PG17+).
    pub stats_since: bool,
}

/// The features of extension version `v`.
pub fn features(v: ExtVersion) -> Features {
    Features {
        toplevel: v >= V_PG14,
        info: v >= V_PG14,
        stats_since: v >= V_PG17,
    }
}

/// For each slot, the column that holds it in version `v` (`None`: the version lacks it).
pub fn columns_for(v: ExtVersion) -> [Option<&'static Column>; N_SLOTS] {
    let mut out = [None; N_SLOTS];
    for (slot, name) in SLOTS.iter().enumerate() {
        out[slot] = COLUMNS
            .iter()
            .find(|c| c.name == *name && c.since <= v && v < c.until);
    }
    out
}

/// The counters query for version `v` in `schema`: one row of parallel arrays (key columns,
/// `stats_since`, then every slot as float8, NULL where the version lacks it). One row of arrays
/// instead of 5,000 rows is what keeps the agent's side cheap: the driver's cost is per row.
fn counters_sql(schema: &str, v: ExtVersion) -> String {
    let f = features(v);
    let mut sql = String::from("SELECT array_agg(userid), array_agg(dbid), array_agg(queryid), ");
    sql.push_str(if f.toplevel {
        "array_agg(toplevel), "
    } else {
        "array_agg(true), "
    });
    sql.push_str(if f.stats_since {
        "array_agg(stats_since)"
    } else {
        "array_agg(NULL::timestamptz)"
    });
    for c in columns_for(v) {
        match c {
            Some(c) => {
                let _ = write!(sql, ", array_agg({}::float8)", c.column);
            }
            None => sql.push_str(", array_agg(NULL::float8)"),
        }
    }
    let _ = write!(
        sql,
        " FROM {}.pg_stat_statements(false) WHERE queryid IS NOT NULL",
        quote_ident(schema)
    );
    sql
}

/// A one-dimensional array in PostgreSQL's binary format, borrowed from the row: elements are
/// decoded one at a time, never collected into vectors.
struct RawArray<'a> {
    n: usize,
    rest: &'a [u8],
}

impl<'a> postgres::types::FromSql<'a> for RawArray<'a> {
    fn from_sql(
        _ty: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let mut r = BeReader(raw);
        let ndim = r.i32().ok_or("short array header")?;
        r.i32().ok_or("short array header")?; // has-nulls flag
        r.i32().ok_or("short array header")?; // element type
        match ndim {
            0 => Ok(RawArray { n: 0, rest: &[] }),
            1 => {
                let n = r.i32().ok_or("short array header")?;
                r.i32().ok_or("short array header")?; // lower bound
                Ok(RawArray {
                    n: usize::try_from(n).map_err(|_| "negative array length")?,
                    rest: r.0,
                })
            }
            _ => Err("multi-dimensional array".into()),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        matches!(ty.kind(), postgres::types::Kind::Array(_))
    }
}

impl<'a> RawArray<'a> {
    /// The next element's bytes (`Some(None)` for NULL); `None` past the end or when torn.
    fn next_elem(&mut self) -> Option<Option<&'a [u8]>> {
        let mut r = BeReader(self.rest);
        let len = r.i32()?;
        if len < 0 {
            self.rest = r.0;
            return Some(None);
        }
        let (elem, rest) = r.0.split_at_checked(len as usize)?;
        self.rest = rest;
        Some(Some(elem))
    }
}

/// Big-endian reads (the wire format), failing cleanly past the end.
struct BeReader<'a>(&'a [u8]);

impl BeReader<'_> {
    fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(i32::from_be_bytes(head.try_into().ok()?))
    }
}

fn be_u32(b: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_be_bytes(b?.try_into().ok()?))
}

fn be_i64(b: Option<&[u8]>) -> Option<i64> {
    Some(i64::from_be_bytes(b?.try_into().ok()?))
}

fn be_f64(b: Option<&[u8]>) -> Option<f64> {
    Some(f64::from_be_bytes(b?.try_into().ok()?))
}

/// Seconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX: f64 = 946_684_800.0;

/// A binary timestamptz (microseconds since 2000-01-01) as unix seconds.
fn be_timestamp(b: Option<&[u8]>) -> Option<f64> {
    be_i64(b).map(|us| us as f64 / 1e6 + PG_EPOCH_UNIX)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An entry's identity.
pub type Key = (u32, u32, i64, bool);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    v: [f64; N_SLOTS],
    stats_since: Option<f64>,
}

/// The counters at one moment: what the next interval is subtracted from.
#[derive(Debug, Clone, PartialEq)]
struct Baseline {
    taken_at: f64,
    ext_version: ExtVersion,
    stats_reset: Option<f64>,
    dealloc: Option<i64>,
    entries: Entries,
}

/// Entries sorted by key: a third of a hash map's memory for 5,000 entries, and lookups by
/// binary search are as fast at this size.
#[derive(Debug, Clone, PartialEq, Default)]
struct Entries(Vec<(Key, Entry)>);

impl Entries {
    fn from_unsorted(mut v: Vec<(Key, Entry)>) -> Entries {
        v.sort_unstable_by_key(|e| e.0);
        // The view never repeats a key; a repeated one would make lookups ambiguous.
        v.dedup_by(|a, b| a.0 == b.0);
        v.shrink_to_fit();
        Entries(v)
    }

    fn get(&self, key: &Key) -> Option<&Entry> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = &(Key, Entry)> {
        self.0.iter()
    }
}

const BASELINE_FILE: &str = "pg_stat_statements.baseline";
/// File magic and format version: version 3 ends with a CRC32C of everything before it.
const BASELINE_MAGIC: &[u8; 8] = b"BVPGSS\x00\x03";
/// The format before the checksum, still read (then only the plausibility checks protect it).
const BASELINE_MAGIC_V2: &[u8; 8] = b"BVPGSS\x00\x02";
/// The largest baseline file read (about 230 bytes per entry: over a million entries).
const BASELINE_MAX_BYTES: u64 = 256 << 20;
/// A counter delta above this (2^53, where f64 stops counting by one) is not a real change but
/// a damaged baseline: the entry is treated as reset.
const MAX_PLAUSIBLE_DELTA: f64 = 9_007_199_254_740_992.0;

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
    fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
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

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |w| w.write_all(data))
}

/// [`write_atomically`] with the content streamed by `fill` through a small buffer, so a large
/// file never needs its own allocation.
fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

/// Why the collector is not collecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Not checked yet.
    Unknown,
    /// Installed and loaded.
    Available,
    /// `CREATE EXTENSION` was not run in the connected database.
    NotInstalled,
    /// Installed but not in `shared_preload_libraries` (server restart needed).
    NotLoaded,
}

impl Availability {
    fn fix(&self) -> &'static str {
        match self {
            Availability::NotInstalled => {
                "add pg_stat_statements to shared_preload_libraries (restart) and run \
                 CREATE EXTENSION pg_stat_statements in the monitored database"
            }
            Availability::NotLoaded => {
                "add pg_stat_statements to shared_preload_libraries in postgresql.conf and \
                 restart PostgreSQL"
            }
            _ => "",
        }
    }
}

/// Settings of the statements collector.
#[derive(Debug, Clone)]
pub struct StatementsConfig {
    /// Where the baseline is persisted (the agent's state directory).
    pub state_dir: PathBuf,
    /// Entries shipped individually per interval. Defaults to 100.
    pub top_n: usize,
    /// Rendering of the (already normalized) texts: mode and length. Defaults to normalized,
    /// 1000 characters.
    pub query_text: QueryText,
    /// How long to wait before checking a missing extension again. Defaults to 5 minutes.
    pub recheck: Duration,
    /// A (persisted) baseline older than this is not subtracted from: after a long stop the
    /// first interval is a new baseline instead of one delta spanning the downtime. Defaults to
    /// 1 hour.
    pub max_baseline_age: Duration,
    /// The log tailer's latest auto_explain plans per query_id: each interval's plans are
    /// attached to the shipped row of the same queryid (`plan`, `plan_format`, `plan_summary`).
    /// Defaults to none.
    pub plans: Option<crate::logtail::PlanStore>,
}

impl StatementsConfig {
    /// The settings from the agent's `[collection]` configuration (state directory, query text
    /// mode and length), defaults elsewhere.
    pub fn from_collection(c: &crate::config::CollectionConfig) -> StatementsConfig {
        StatementsConfig {
            query_text: QueryText::from_collection(c),
            ..StatementsConfig::new(&c.state_dir)
        }
    }

    /// Defaults with the baseline in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> StatementsConfig {
        StatementsConfig {
            state_dir: state_dir.into(),
            top_n: 100,
            query_text: QueryText::default(),
            recheck: Duration::from_secs(300),
            max_baseline_age: Duration::from_secs(3600),
            plans: None,
        }
    }
}

/// Turns pg_stat_statements into per-interval delta payloads.
#[derive(Debug)]
pub struct StatementsCollector {
    cfg: StatementsConfig,
    baseline: Option<Baseline>,
    availability: Availability,
    recheck_at: Option<Instant>,
    texts: HashMap<(u32, i64), Option<String>>,
    /// The baseline was taken by [`StatementsCollector::prime`]: the next delta covers part of
    /// an interval and says so.
    primed: bool,
    /// The last attempt to persist the baseline failed (logged once per streak).
    persist_failing: bool,
}

struct Delta {
    key: Key,
    d: [f64; N_SLOTS],
    status: &'static str,
}

impl StatementsCollector {
    /// A collector that starts from the baseline persisted in `cfg.state_dir`, if there is a
    /// readable one.
    pub fn new(cfg: StatementsConfig) -> StatementsCollector {
        let path = cfg.state_dir.join(BASELINE_FILE);
        let baseline = match crate::fsutil::read_regular_file(&path, BASELINE_MAX_BYTES) {
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
        };
        StatementsCollector {
            cfg,
            baseline,
            availability: Availability::Unknown,
            recheck_at: None,
            texts: HashMap::new(),
            primed: false,
            persist_failing: false,
        }
    }

    /// At start-up: takes a baseline now unless a persisted one is still usable, so the first
    /// interval boundary already ships a delta (marked `partial_interval`) instead of only
    /// taking the baseline.
    pub fn prime(&mut self, client: &mut postgres::Client) -> Result<(), CollectError> {
        let max_age = self.cfg.max_baseline_age.as_secs_f64();
        if self
            .baseline
            .as_ref()
            .is_some_and(|b| unix_now() - b.taken_at <= max_age)
        {
            return Ok(());
        }
        self.baseline = None;
        self.collect(client)?;
        self.primed = self.baseline.is_some();
        Ok(())
    }

    /// Whether the extension was usable at the last check.
    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    /// The persisted baseline's path.
    pub fn baseline_path(&self) -> PathBuf {
        self.cfg.state_dir.join(BASELINE_FILE)
    }

    fn set_unavailable(&mut self, a: Availability, detail: &str) {
        if self.availability != a {
            log::warn!(
                "statements collector: pg_stat_statements unavailable ({detail}); fix: {}; \
                 other collectors keep working, re-checking every {} s",
                a.fix(),
                self.cfg.recheck.as_secs()
            );
        }
        self.availability = a;
        self.recheck_at = Some(Instant::now() + self.cfg.recheck);
    }

    /// Closes an interval: returns the `pg_stat_statements` payload with the deltas since the
    /// previous call (or since the persisted baseline), or `None` when this call only took the
    /// baseline or the extension is unavailable (then it is checked again after `recheck`).
    pub fn collect(
        &mut self,
        client: &mut postgres::Client,
    ) -> Result<Option<Payload>, CollectError> {
        if let Some(at) = self.recheck_at {
            if Instant::now() < at {
                return Ok(None);
            }
        }
        let row = client
            .query_opt(
                "SELECT e.extversion, n.nspname, now() FROM pg_extension e \
                 JOIN pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'pg_stat_statements'",
                &[],
            )
            .map_err(CollectError::query(COLLECTOR, "extension"))?;
        let Some(row) = row else {
            self.set_unavailable(Availability::NotInstalled, "extension not created");
            return Ok(None);
        };
        let ext_text: String = column_of(&row, 0).unwrap_or_default();
        let schema: String = column_of(&row, 1).unwrap_or_else(|| "public".to_string());
        let now = column_of::<SystemTime>(&row, 2).map_or_else(unix_now, unix_secs);
        let Some(version) = parse_ext_version(&ext_text) else {
            self.set_unavailable(Availability::NotInstalled, "unparseable extension version");
            return Ok(None);
        };
        let feats = features(version);
        let sql = counters_sql(&schema, version);
        let entries = match read_counters(client, &sql, self.baseline_capacity()) {
            Ok(entries) => entries,
            // object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries".
            Err(e) if e.code().map(|c| c.code()) == Some("55000") => {
                self.set_unavailable(Availability::NotLoaded, "not in shared_preload_libraries");
                return Ok(None);
            }
            Err(e) => return Err(CollectError::query(COLLECTOR, "counters")(e)),
        };
        if self.availability != Availability::Available
            && self.availability != Availability::Unknown
        {
            log::info!("statements collector: pg_stat_statements available again");
        }
        self.availability = Availability::Available;
        self.recheck_at = None;

        let (stats_reset, dealloc) = if feats.info {
            let r = client
                .query_one(
                    &format!(
                        "SELECT dealloc, stats_reset FROM {}.pg_stat_statements_info",
                        quote_ident(&schema)
                    ),
                    &[],
                )
                .map_err(CollectError::query(COLLECTOR, "info"))?;
            (
                r.try_get::<_, Option<SystemTime>>(1)
                    .ok()
                    .flatten()
                    .map(unix_secs),
                r.try_get::<_, Option<i64>>(0).ok().flatten(),
            )
        } else {
            (None, None)
        };

        let current = Baseline {
            taken_at: now,
            ext_version: version,
            stats_reset,
            dealloc,
            entries,
        };

        let payload = match self.baseline.take() {
            Some(prev)
                if prev.ext_version == version
                    && now > prev.taken_at
                    && now - prev.taken_at <= self.cfg.max_baseline_age.as_secs_f64() =>
            {
                match self.build_payload(client, &schema, &prev, &current) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // Keep the old baseline: the next interval then covers both, so nothing
                        // is lost.
                        self.baseline = Some(prev);
                        return Err(e);
                    }
                }
            }
            Some(_) => {
                log::info!(
                    "statements collector: baseline too old, or extension version or clock \
                     changed; taking a new baseline"
                );
                None
            }
            None => None,
        };
        let persisted = self.persist(&current);
        self.baseline = Some(current);
        let mut payload = payload;
        if std::mem::take(&mut self.primed) {
            if let Some(p) = payload.as_mut() {
                p.data.push("partial_interval", true);
            }
        }
        if persisted.is_ok() && std::mem::take(&mut self.persist_failing) {
            log::info!("statements collector: the baseline is saved again");
        }
        if let Err(e) = persisted {
            // The deltas are right whatever the disk says; only a restart would lose the
            // interval. Say so in the log (once per streak) and in the payload rather than drop
            // the data.
            if !std::mem::replace(&mut self.persist_failing, true) {
                log::warn!("{e} (logged once until saving works again)");
            }
            if let Some(p) = payload.as_mut() {
                p.data.push("errors", Json::Array(vec![e.to_json()]));
            } else {
                return Err(e);
            }
        }
        Ok(payload)
    }

    fn baseline_capacity(&self) -> usize {
        self.baseline.as_ref().map_or(0, |b| b.entries.len())
    }

    fn persist(&mut self, b: &Baseline) -> Result<(), CollectError> {
        // About 230 bytes per entry, streamed through a 64 KiB buffer rather than built whole.
        let path = self.baseline_path();
        let res = write_atomically_with(&path, |w| b.write_to(w));
        res.map_err(|source| CollectError::State {
            collector: COLLECTOR,
            path,
            source,
        })
    }

    fn build_payload(
        &mut self,
        client: &mut postgres::Client,
        schema: &str,
        prev: &Baseline,
        cur: &Baseline,
    ) -> Result<Payload, CollectError> {
        let global_reset = match (prev.stats_reset, cur.stats_reset) {
            (Some(p), Some(c)) => c > p,
            _ => false,
        };
        // Pass 1 keeps a small record per changed entry; the full counter deltas are recomputed
        // for the few shipped ones, so 5,000 entries never move 5,000 arrays around.
        let mut changed: Vec<(f64, usize)> = Vec::new();
        let mut n_backwards = 0u64;
        for (i, (key, e)) in cur.entries.iter().enumerate() {
            let (d, status) = entry_delta(prev.entries.get(key), e, global_reset);
            if status == "reset" && !global_reset {
                n_backwards += 1;
            }
            if d.iter().any(|x| *x > 0.0) {
                changed.push((d[EXEC_TIME], i));
            }
        }
        // Ties are broken by position, which is key order: the same input picks the same top.
        let by_time_desc =
            |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let n_changed = changed.len();
        let top_n = self.cfg.top_n.min(changed.len());
        if top_n > 0 && top_n < changed.len() {
            changed.select_nth_unstable_by(top_n - 1, by_time_desc);
        }
        let (top, rest) = changed.split_at_mut(top_n);
        top.sort_unstable_by(by_time_desc);
        let delta_at = |i: usize| {
            let (key, e) = &cur.entries.0[i];
            let (d, status) = entry_delta(prev.entries.get(key), e, global_reset);
            Delta {
                key: *key,
                d,
                status,
            }
        };
        let deltas: Vec<Delta> = top.iter().map(|&(_, i)| delta_at(i)).collect();
        self.fetch_texts(client, schema, &deltas)?;

        let cols = columns_for(cur.ext_version);
        let mut plans = self
            .cfg
            .plans
            .as_ref()
            .map(|p| p.take())
            .unwrap_or_default();
        let mut statements = Vec::with_capacity(deltas.len());
        for d in &deltas {
            let text = self.texts.get(&(d.key.1, d.key.2)).cloned().flatten();
            let mut o = Json::object()
                .field("queryid", d.key.2.to_string())
                .field("userid", d.key.0)
                .field("dbid", d.key.1)
                .field("toplevel", d.key.3)
                .field("status", d.status);
            push_counters(&mut o, &d.d, &cols);
            o.push("query", text);
            if let Some(i) = plans.iter().position(|p| p.query_id == d.key.2) {
                let p = plans.swap_remove(i);
                o.push("plan_format", p.format.as_str());
                if p.plan != Json::Null {
                    o.push("plan", p.plan);
                }
                o.push("plan_summary", p.summary);
            }
            statements.push(o);
        }
        let mut other = [0.0; N_SLOTS];
        for &(_, i) in rest.iter() {
            let d = delta_at(i).d;
            for (o, x) in other.iter_mut().zip(d.iter()) {
                if x.is_finite() {
                    *o += x;
                }
            }
        }
        let mut other_json = Json::object().field("n_statements", rest.len());
        push_counters(&mut other_json, &other, &cols);

        let reset = if global_reset {
            Json::object()
                .field("detected", true)
                .field("how", "stats_reset")
                .field("stats_reset", cur.stats_reset)
        } else if n_backwards > 0 {
            Json::object()
                .field("detected", true)
                .field("how", "counters_backwards")
                .field("n_entries", n_backwards)
        } else {
            Json::object().field("detected", false)
        };
        let dealloc = match (prev.dealloc, cur.dealloc) {
            (Some(p), Some(c)) if c >= p && !global_reset => Json::from(c - p),
            (_, Some(c)) => Json::from(c),
            _ => Json::Null,
        };
        let data = Json::object()
            .field("interval_start", prev.taken_at)
            .field("interval_end", cur.taken_at)
            .field("interval_s", cur.taken_at - prev.taken_at)
            .field(
                "extension_version",
                format!("{}.{}", cur.ext_version.0, cur.ext_version.1),
            )
            .field("n_entries", cur.entries.len())
            .field("n_changed", n_changed)
            .field("count", statements.len())
            .field("reset", reset)
            .field("evicted", dealloc)
            .field("statements", Json::Array(statements))
            .field("other", other_json);
        Ok(Payload {
            source: Source::PgStatStatements,
            collected_at: unix_now(),
            correlation_id: None,
            data,
        })
    }

    /// Fetches texts only for shipped entries whose text is not known yet, and forgets texts of
    /// entries no longer shipped (memory stays bounded by `top_n`).
    fn fetch_texts(
        &mut self,
        client: &mut postgres::Client,
        schema: &str,
        shipped: &[Delta],
    ) -> Result<(), CollectError> {
        let mut kept: HashMap<(u32, i64), Option<String>> = HashMap::with_capacity(shipped.len());
        let mut missing: Vec<i64> = Vec::new();
        for d in shipped {
            let k = (d.key.1, d.key.2);
            match self.texts.remove(&k) {
                Some(t) => {
                    kept.insert(k, t);
                }
                None => {
                    if !kept.contains_key(&k) {
                        missing.push(d.key.2);
                    }
                }
            }
        }
        self.texts = kept;
        if missing.is_empty() || self.cfg.query_text.mode == crate::normalize::QueryTextMode::None {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = client
            .query(
                &format!(
                    "SELECT dbid, queryid, query FROM {}.pg_stat_statements(true) \
                     WHERE queryid = ANY($1)",
                    quote_ident(schema)
                ),
                &[&missing],
            )
            .map_err(CollectError::query(COLLECTOR, "texts"))?;
        let mut buf = String::new();
        for r in &rows {
            let (Ok(dbid), Ok(qid)) = (r.try_get::<_, u32>(0), r.try_get::<_, i64>(1)) else {
                continue;
            };
            let text: Option<&str> = r.try_get(2).ok().flatten();
            let rendered = text.and_then(|t| {
                self.cfg
                    .query_text
                    .render_into(t, &mut buf)
                    .then(|| buf.clone())
            });
            self.texts.insert((dbid, qid), rendered);
        }
        Ok(())
    }
}

/// Runs the counters query (one row of parallel arrays) and decodes it in place.
fn read_counters(
    client: &mut postgres::Client,
    sql: &str,
    capacity: usize,
) -> Result<Entries, postgres::Error> {
    let row = client.query_typed(sql, &[])?;
    let Some(row) = row.first() else {
        return Ok(Entries::default());
    };
    // array_agg over no rows is NULL: no entries.
    let Ok(Some(mut userid)) = row.try_get::<_, Option<RawArray>>(0) else {
        return Ok(Entries::default());
    };
    let mut entries: Vec<(Key, Entry)> = Vec::with_capacity(capacity.max(userid.n));
    let mut cols: Vec<RawArray> = Vec::with_capacity(4 + N_SLOTS);
    for i in 1..5 + N_SLOTS {
        match row.try_get::<_, Option<RawArray>>(i) {
            Ok(Some(a)) if a.n == userid.n => cols.push(a),
            // A column the server sent otherwise than asked: nothing can be trusted.
            _ => return Ok(Entries::default()),
        }
    }
    for _ in 0..userid.n {
        let uid = userid.next_elem().flatten();
        let mut next = |i: usize| cols[i].next_elem().flatten();
        let (dbid, queryid, toplevel, since) = (next(0), next(1), next(2), next(3));
        let mut v = [f64::NAN; N_SLOTS];
        for (i, slot) in v.iter_mut().enumerate() {
            if let Some(x) = be_f64(cols[4 + i].next_elem().flatten()) {
                *slot = x;
            }
        }
        let (Some(uid), Some(dbid), Some(queryid), Some(toplevel)) =
            (be_u32(uid), be_u32(dbid), be_i64(queryid), toplevel)
        else {
            continue;
        };
        let key = (uid, dbid, queryid, toplevel.first() == Some(&1));
        entries.push((
            key,
            Entry {
                v,
                stats_since: be_timestamp(since),
            },
        ));
    }
    Ok(Entries::from_unsorted(entries))
}

fn push_counters(o: &mut Json, d: &[f64; N_SLOTS], cols: &[Option<&'static Column>; N_SLOTS]) {
    for (i, name) in SLOTS.iter().enumerate() {
        let v = match cols[i] {
            None => Json::Null,
            Some(c) if c.integer => Json::UInt(d[i].max(0.0).round() as u64),
            Some(_) => Json::Float(d[i].max(0.0)),
        };
        o.push(name, v);
        if i == EXEC_TIME {
            let mean = if d[CALLS] > 0.0 {
                d[EXEC_TIME] / d[CALLS]
            } else {
                0.0
            };
            o.push("mean_exec_time", mean.max(0.0));
        }
    }
}

/// The delta of one entry and how it was computed: `continuing`, `new` (not in the baseline),
/// `readded` (evicted and re-added: `stats_since` moved) or `reset` (counters went backwards, or
/// a global reset). Never negative: a counter the version lacks (NaN) stays NaN.
fn entry_delta(
    prev: Option<&Entry>,
    cur: &Entry,
    global_reset: bool,
) -> ([f64; N_SLOTS], &'static str) {
    if global_reset {
        return (cur.v, "reset");
    }
    let Some(p) = prev else {
        return (cur.v, "new");
    };
    if let (Some(ps), Some(cs)) = (p.stats_since, cur.stats_since) {
        if cs > ps {
            return (cur.v, "readded");
        }
    }
    // Backwards is a reset; so is a baseline value no counter can have (negative) or a delta
    // no interval can produce: a damaged baseline must not ship 2^64-1 calls as a delta.
    if cur.v.iter().zip(p.v.iter()).any(|(c, p)| {
        c.is_finite() && p.is_finite() && (c < p || *p < 0.0 || c - p > MAX_PLAUSIBLE_DELTA)
    }) {
        return (cur.v, "reset");
    }
    let mut d = [f64::NAN; N_SLOTS];
    for ((d, c), p) in d.iter_mut().zip(cur.v.iter()).zip(p.v.iter()) {
        *d = c - p;
    }
    (d, "continuing")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(calls: f64, time: f64) -> Entry {
        let mut v = [0.0; N_SLOTS];
        v[CALLS] = calls;
        v[EXEC_TIME] = time;
        Entry {
            v,
            stats_since: None,
        }
    }

    #[test]
    fn version_map_renames_by_extension_version() {
        let pg12 = columns_for((1, 7));
        assert_eq!(pg12[EXEC_TIME].unwrap().column, "total_time");
        assert!(pg12[SLOTS.iter().position(|s| *s == "wal_bytes").unwrap()].is_none());
        let pg13 = columns_for((1, 8));
        assert_eq!(pg13[EXEC_TIME].unwrap().column, "total_exec_time");
        let read = SLOTS.iter().position(|s| *s == "blk_read_time").unwrap();
        assert_eq!(columns_for((1, 10))[read].unwrap().column, "blk_read_time");
        assert_eq!(
            columns_for((1, 11))[read].unwrap().column,
            "shared_blk_read_time"
        );
        assert_eq!(
            columns_for((1, 12))[read].unwrap().column,
            "shared_blk_read_time"
        );
        assert!(!features((1, 8)).toplevel);
        assert!(features((1, 9)).toplevel && features((1, 9)).info);
        assert!(features((1, 11)).stats_since);
        // From PG15 on every slot has a column.
        assert_eq!(
            columns_for((1, 10)).iter().filter(|c| c.is_none()).count(),
            0
        );
        let sql = counters_sql("pub\"lic", (1, 7));
        assert!(sql.contains("array_agg(total_time::float8)"), "{sql}");
        assert!(
            sql.contains("FROM \"pub\"\"lic\".pg_stat_statements(false)"),
            "{sql}"
        );
        assert_eq!(parse_ext_version("1.10"), Some((1, 10)));
        assert_eq!(parse_ext_version("x"), None);
    }

    #[test]
    fn deltas_are_never_negative() {
        let (d, s) = entry_delta(Some(&entry(10.0, 5.0)), &entry(15.0, 7.5), false);
        assert_eq!((d[CALLS], d[EXEC_TIME], s), (5.0, 2.5, "continuing"));
        let (d, s) = entry_delta(Some(&entry(10.0, 5.0)), &entry(3.0, 1.0), false);
        assert_eq!((d[CALLS], s), (3.0, "reset"));
        let (d, s) = entry_delta(None, &entry(3.0, 1.0), false);
        assert_eq!((d[CALLS], s), (3.0, "new"));
        let (d, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(30.0, 1.0), true);
        assert_eq!((d[CALLS], s), (30.0, "reset"));
        let mut old = entry(100.0, 9.0);
        old.stats_since = Some(10.0);
        let mut readded = entry(200.0, 9.0);
        readded.stats_since = Some(20.0);
        let (d, s) = entry_delta(Some(&old), &readded, false);
        assert_eq!((d[CALLS], s), (200.0, "readded"));
    }

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
    fn an_implausible_baseline_value_is_a_reset_not_a_huge_delta() {
        // The campaign's case: calls damaged in the baseline to a huge negative number.
        let (d, s) = entry_delta(Some(&entry(-1e30, 1.0)), &entry(15.0, 7.5), false);
        assert_eq!((d[CALLS], s), (15.0, "reset"));
        let (_, s) = entry_delta(Some(&entry(-1.0, 1.0)), &entry(15.0, 7.5), false);
        assert_eq!(s, "reset", "no counter is negative");
        let (_, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(1e17, 7.5), false);
        assert_eq!(s, "reset", "no interval adds 1e17 calls");
        let (d, s) = entry_delta(Some(&entry(1.0, 1.0)), &entry(2.0, 7.5), false);
        assert_eq!((d[CALLS], s), (1.0, "continuing"));
    }

    #[test]
    fn raw_arrays_decode_elements_nulls_and_refuse_torn_input() {
        use postgres::types::{FromSql, Type};
        let mut raw = Vec::new();
        for v in [1i32, 1, 701, 3, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        raw.extend_from_slice(&8i32.to_be_bytes());
        raw.extend_from_slice(&2.5f64.to_be_bytes());
        raw.extend_from_slice(&(-1i32).to_be_bytes());
        raw.extend_from_slice(&8i32.to_be_bytes());
        raw.extend_from_slice(&(-0.0f64).to_be_bytes());
        let mut a = RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw).unwrap();
        assert_eq!(a.n, 3);
        assert_eq!(be_f64(a.next_elem().unwrap()), Some(2.5));
        assert_eq!(a.next_elem(), Some(None), "NULL");
        assert!(be_f64(a.next_elem().unwrap()).is_some());
        assert_eq!(a.next_elem(), None, "past the end");
        let mut torn = RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw[..raw.len() - 3]).unwrap();
        torn.next_elem();
        torn.next_elem();
        assert_eq!(torn.next_elem(), None);
        assert!(RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw[..6]).is_err());
        let empty = [0u8; 12];
        assert_eq!(
            RawArray::from_sql(&Type::FLOAT8_ARRAY, &empty).unwrap().n,
            0
        );
        // 2000-01-01 00:00:01 UTC.
        assert_eq!(
            be_timestamp(Some(&1_000_000i64.to_be_bytes())),
            Some(946_684_801.0)
        );
        assert_eq!(be_u32(Some(&[0, 0, 1])), None);
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("bv-stmts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("sub/state");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counters_json_uses_stable_names_and_nulls_for_missing() {
        let mut d = [0.0; N_SLOTS];
        d[CALLS] = 4.0;
        d[EXEC_TIME] = 10.0;
        let mut o = Json::object();
        push_counters(&mut o, &d, &columns_for((1, 7)));
        assert_eq!(o.get("calls"), Some(&Json::UInt(4)));
        assert_eq!(o.get("mean_exec_time"), Some(&Json::Float(2.5)));
        assert_eq!(o.get("wal_bytes"), Some(&Json::Null));
        assert_eq!(o.get("blk_read_time"), Some(&Json::Float(0.0)));
    }
}
