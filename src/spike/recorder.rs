//! The local flight recorder: every timeline row and every spike report, one JSON line each, in
//! two files of the state directory: `flight-recorder.0.jsonl` (being written) and
//! `flight-recorder.1.jsonl` (the one before). `--report` reads them; the listener plays no part.
//!
//! Invariants:
//! - Bounded: the current file is rotated (renamed over the previous one) before it would grow
//!   past half of `max_bytes`, or once its first line is older than `history`; so both files
//!   together never exceed `max_bytes` and always hold at least the last `history` when that
//!   fits.
//! - Lines are written whole, several with one `write` call, on a file opened with `O_APPEND`,
//!   so a reader (another process, no lock) sees whole lines, except the last one after a crash,
//!   which it skips. Outside spikes rows wait in memory up to [`FLUSH_EVERY`] and the file is
//!   opened for that write and closed again (outside spikes the agent does not keep the state
//!   directory busy, so an operator can remount it read-only); while a spike lasts every row,
//!   and every report, is written at once on a file kept open (no open and close 4 times a
//!   second in a burst), until the next steady write closes it; a rotation closes it too.
//! - Never fails the sampler: a write error is logged (once until writing works again) and
//!   counted; reading skips damaged lines and says how many.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::jsonread;
use super::timeline::{json_f64, Row};
use crate::json::Json;

/// The file being written.
pub const CURRENT: &str = "flight-recorder.0.jsonl";
/// The file before it.
pub const PREVIOUS: &str = "flight-recorder.1.jsonl";

/// Where and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderConfig {
    /// The state directory.
    pub dir: PathBuf,
    /// Both files together at most this big. Default 64 MiB.
    pub max_bytes: u64,
    /// History kept at least (when it fits). Default 24 h.
    pub history: Duration,
}

/// The writer.
#[derive(Debug)]
pub struct Recorder {
    cfg: RecorderConfig,
    /// Whether `bytes` and `first_t` describe the current file (measured once, then kept).
    measured: bool,
    bytes: u64,
    first_t: Option<f64>,
    failing: bool,
    /// Lines that could not be written.
    pub n_write_errors: u64,
    pending: String,
    pending_span: Option<(f64, f64)>,
    pending_since: Option<Instant>,
    /// The current file, kept open between the writes of a spike.
    file: Option<File>,
}

/// Longest time rows wait in memory before they are written (outside spikes): one `write` per
/// 10 rows instead of per row; a crash loses at most this much of the steady timeline.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Most bytes waiting to be written.
const MAX_PENDING: usize = 64 * 1024;

/// The time of a recorder line (its `t`).
fn line_time(line: &str) -> Option<f64> {
    jsonread::parse(line).ok()?.get("t").and_then(json_f64)
}

impl Recorder {
    /// A recorder in `cfg.dir`; opens lazily at the first line.
    pub fn new(cfg: RecorderConfig) -> Recorder {
        Recorder {
            cfg,
            measured: false,
            bytes: 0,
            first_t: None,
            failing: false,
            n_write_errors: 0,
            pending: String::new(),
            pending_span: None,
            pending_since: None,
            file: None,
        }
    }

    /// The current file, opened for one append.
    fn open_append(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.dir.join(CURRENT))
    }

    /// Measures the current file: its size and the time of its first line.
    fn measure(&mut self) -> std::io::Result<()> {
        let path = self.cfg.dir.join(CURRENT);
        let f = self.open_append()?;
        self.bytes = f.metadata()?.len();
        self.first_t = None;
        if self.bytes > 0 {
            let mut first = String::new();
            let _ = BufReader::new(File::open(&path)?)
                .take(1 << 20)
                .read_line(&mut first);
            self.first_t = line_time(first.trim_end());
        }
        self.measured = true;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(self.cfg.dir.join(CURRENT), self.cfg.dir.join(PREVIOUS))?;
        self.bytes = 0;
        self.first_t = None;
        Ok(())
    }

    /// Writes the pending lines (one `write`), rotating first when they would not fit; `keep`:
    /// keep the file open for the next write (while a spike lasts).
    fn write_pending(&mut self, keep: bool) -> std::io::Result<()> {
        let Some((first, last)) = self.pending_span else {
            return Ok(());
        };
        if !self.measured {
            self.measure()?;
        }
        let len = self.pending.len() as u64;
        let half = (self.cfg.max_bytes / 2).max(4096);
        let too_old = self
            .first_t
            .is_some_and(|f| last - f > self.cfg.history.as_secs_f64());
        if self.bytes > 0 && (self.bytes + len > half || too_old) {
            self.rotate()?;
        }
        let file = match self.file.take() {
            Some(f) => Ok(f),
            None => self.open_append(),
        };
        let written = file.and_then(|mut f| {
            f.write_all(self.pending.as_bytes())?;
            if keep {
                self.file = Some(f);
            }
            Ok(())
        });
        self.pending.clear();
        self.pending_span = None;
        self.pending_since = None;
        written?;
        self.bytes += len;
        self.first_t.get_or_insert(first);
        Ok(())
    }

    /// Adds one line whose value `write_value` writes; writes the pending lines when `now` asks
    /// for it or they are due.
    fn record(&mut self, t: f64, kind: &str, write_value: impl FnOnce(&mut String), now: bool) {
        let half = (self.cfg.max_bytes / 2).max(4096) as usize;
        let before = self.pending.len();
        self.pending.push_str("{\"t\":");
        Json::Float(t).write_to(&mut self.pending);
        self.pending.push_str(",\"k\":");
        crate::json::write_str(kind, &mut self.pending);
        self.pending.push_str(",\"v\":");
        write_value(&mut self.pending);
        self.pending.push_str("}\n");
        let len = self.pending.len() - before;
        let mut result = Ok(());
        if len > half {
            // One line bigger than a file's share cannot be kept within the bound.
            self.pending.truncate(before);
            result = Err(std::io::Error::other(format!(
                "a {len}-byte line does not fit the flight recorder's {half}-byte files"
            )));
        } else {
            let span = self.pending_span.get_or_insert((t, t));
            span.1 = t;
            let since = *self.pending_since.get_or_insert_with(Instant::now);
            let full = self.pending.len() + len > half.min(MAX_PENDING);
            if now || full || since.elapsed() >= FLUSH_EVERY {
                result = self.write_pending(now);
            }
        }
        match result {
            Ok(()) => {
                if self.failing {
                    log::info!("flight recorder: writing again");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.n_write_errors += 1;
                self.measured = false;
                if !self.failing {
                    log::warn!(
                        "flight recorder: cannot write in {}: {e}",
                        self.cfg.dir.display()
                    );
                    self.failing = true;
                }
            }
        }
    }

    /// Records one timeline row; `now`: write it at once (while a spike lasts), else it may wait
    /// up to [`FLUSH_EVERY`] with others.
    pub fn row(&mut self, row: &Row, now: bool) {
        self.record(row.t, "row", |out| row.write_flat_json(out), now);
    }

    /// Records one spike report (at its `start`), written at once with what is pending.
    pub fn spike(&mut self, at: f64, report: &Json) {
        self.record(at, "spike", |out| report.write_to(out), true);
    }

    /// Writes what is pending (at shutdown).
    pub fn flush(&mut self) {
        if let Err(e) = self.write_pending(false) {
            self.n_write_errors += 1;
            log::warn!(
                "flight recorder: cannot write in {}: {e}",
                self.cfg.dir.display()
            );
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What the recorder files hold for a time window.
#[derive(Debug, Default)]
pub struct History {
    /// Timeline rows, in time order.
    pub rows: Vec<Row>,
    /// Spike reports (the last one written per `spike_id`), by start.
    pub spikes: Vec<Json>,
    /// Lines that could not be read (damaged, truncated), skipped.
    pub n_damaged: u64,
    /// The files that were read.
    pub files: Vec<PathBuf>,
}

/// Most bytes read of one line: a longer one is damaged.
const MAX_LINE: u64 = 16 << 20;

/// Reads the recorder files of `dir` for `since..=until` (unix seconds). Missing files are
/// fine (an empty history); an unreadable directory or file is an error naming it.
pub fn read(dir: &Path, since: f64, until: f64) -> Result<History, String> {
    let mut h = History::default();
    let mut spikes: Vec<(String, Json)> = Vec::new();
    for name in [PREVIOUS, CURRENT] {
        let path = dir.join(name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        h.files.push(path.clone());
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = match (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            if buf.last() != Some(&b'\n') {
                h.n_damaged += 1;
                if n as u64 >= MAX_LINE {
                    // Skip the rest of the overlong line.
                    let mut rest = Vec::new();
                    let _ = r.read_until(b'\n', &mut rest);
                    continue;
                }
                break;
            }
            let Some(v) = std::str::from_utf8(&buf)
                .ok()
                .and_then(|s| jsonread::parse(s.trim_end()).ok())
            else {
                h.n_damaged += 1;
                continue;
            };
            let (Some(t), Some(Json::Str(kind)), Some(body)) =
                (v.get("t").and_then(json_f64), v.get("k"), v.get("v"))
            else {
                h.n_damaged += 1;
                continue;
            };
            match kind.as_str() {
                "row" => match Row::from_flat_json(body) {
                    Some(row) if row.t >= since && row.t <= until => h.rows.push(row),
                    Some(_) => {}
                    None => h.n_damaged += 1,
                },
                "spike" => {
                    let start = body.get("start").and_then(json_f64).unwrap_or(t);
                    let end = body.get("end").and_then(json_f64).unwrap_or(start);
                    if end < since || start > until {
                        continue;
                    }
                    let id = match body.get("spike_id") {
                        Some(Json::Str(s)) => s.clone(),
                        _ => format!("{start:.3}"),
                    };
                    match spikes.iter_mut().find(|(i, _)| *i == id) {
                        Some(slot) => slot.1 = body.clone(),
                        None => spikes.push((id, body.clone())),
                    }
                }
                _ => {}
            }
        }
    }
    h.rows.sort_by(|a, b| a.t.total_cmp(&b.t));
    spikes.sort_by(|a, b| {
        let s = |j: &Json| j.get("start").and_then(json_f64).unwrap_or(0.0);
        s(&a.1).total_cmp(&s(&b.1))
    });
    h.spikes = spikes.into_iter().map(|(_, j)| j).collect();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("bv-rec-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn row(t: f64, active: u32) -> Row {
        let mut r = Row {
            t,
            ..Row::default()
        };
        r.classes[0] = active;
        r
    }

    fn size(d: &Path) -> u64 {
        [CURRENT, PREVIOUS]
            .iter()
            .filter_map(|n| std::fs::metadata(d.join(n)).ok())
            .map(|m| m.len())
            .sum()
    }

    #[test]
    fn rows_and_reports_come_back_and_the_size_stays_bounded() {
        let d = Dir::new("bound");
        let cfg = RecorderConfig {
            dir: d.0.clone(),
            max_bytes: 64 * 1024,
            history: Duration::from_secs(86400),
        };
        let mut rec = Recorder::new(cfg.clone());
        rec.row(&row(0.0, 0), false);
        assert_eq!(size(&d.0), 0, "steady rows wait in memory");
        rec.flush();
        assert!(size(&d.0) > 0);
        for i in 1..5000 {
            rec.row(&row(i as f64, i % 7), false);
            assert!(size(&d.0) <= cfg.max_bytes, "at {i}: {}", size(&d.0));
        }
        let report = Json::object()
            .field("kind", "spike")
            .field("phase", "start")
            .field("spike_id", "4990.000")
            .field("start", 4990.0);
        rec.spike(4990.0, &report);
        rec.spike(4990.0, &report.clone().field("end", 4995.0));
        assert_eq!(rec.n_write_errors, 0);
        let h = read(&d.0, 0.0, 1e12).unwrap();
        assert_eq!(h.n_damaged, 0);
        assert!(h.rows.len() > 300, "{}", h.rows.len());
        assert_eq!(h.rows.last().unwrap().t, 4999.0, "the newest rows are kept");
        assert_eq!(h.spikes.len(), 1, "start and end report of one spike");
        assert!(h.spikes[0].get("end").is_some());
        let window = read(&d.0, 4995.0, 4997.0).unwrap();
        assert_eq!(window.rows.len(), 3);
        // A new writer (agent restart) continues the same files.
        let mut again = Recorder::new(cfg);
        again.row(&row(5000.0, 1), true);
        assert_eq!(read(&d.0, 5000.0, 5000.0).unwrap().rows.len(), 1);
    }

    #[test]
    fn old_history_rotates_out() {
        let d = Dir::new("age");
        let mut rec = Recorder::new(RecorderConfig {
            dir: d.0.clone(),
            max_bytes: 64 << 20,
            history: Duration::from_secs(100),
        });
        for t in 0..350 {
            rec.row(&row(t as f64, 1), true);
        }
        let h = read(&d.0, 0.0, 1e12).unwrap();
        assert!(h.rows.first().unwrap().t >= 150.0, "{}", h.rows[0].t);
        assert!(
            h.rows.first().unwrap().t <= 250.0,
            "at least the history is kept"
        );
    }

    #[test]
    fn damaged_files_are_skipped_not_fatal() {
        let d = Dir::new("damaged");
        let mut rec = Recorder::new(RecorderConfig {
            dir: d.0.clone(),
            max_bytes: 1 << 20,
            history: Duration::from_secs(86400),
        });
        rec.row(&row(1.0, 5), false);
        drop(rec);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.0.join(CURRENT))
            .unwrap();
        f.write_all(b"garbage\n\xff\xfe\n{\"t\":2,\"k\":\"row\",\"v\":{}}\n{\"t\":3}\n")
            .unwrap();
        let mut line = String::new();
        row(4.0, 9).write_flat_json(&mut line);
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n{\"t\":5,\"k\":\"row\",\"v\":{\"t\":5,\"act")
            .unwrap();
        std::fs::write(d.0.join(PREVIOUS), b"\0\0\0\0").unwrap();
        let h = read(&d.0, 0.0, 1e12).unwrap();
        assert_eq!(h.rows.len(), 1, "only the intact row line");
        assert_eq!(h.rows[0].active(), 5);
        assert_eq!(h.n_damaged, 7);
        assert!(read(&d.0.join("nope"), 0.0, 1.0).unwrap().rows.is_empty());
    }
}
