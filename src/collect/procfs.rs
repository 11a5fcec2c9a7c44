//! Per-backend OS figures from `/proc/<pid>`: CPU ticks and RSS from `stat`, read/write bytes from
//! `io`. The activity sampler calls [`ProcReader::sample`] once per sampled pid per second.
//!
//! Invariants: nothing here fails. A pid that is gone, not a PostgreSQL process (the agent watches
//! a remote server, or the pid was reused), or whose `io` file the agent may not read, yields
//! `None` for the figure concerned: unavailable, never an error and never a guess. Buffers are
//! reused between calls so the per-second path does not allocate.
//!
//! RSS is taken from `stat` field 24 (the same counter `status` shows as VmRSS), which saves one
//! file open per pid per second. `/proc/<pid>/io` needs the agent to run as the PostgreSQL OS
//! user or with CAP_SYS_PTRACE; `stat` is world-readable.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Process start time in ticks since boot: a pid whose start time changed was reused.
    pub start_ticks: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
    /// Whether `comm` is a PostgreSQL server process (`postgres` or `postmaster`).
    pub is_postgres: bool,
    /// The run state (field 3): `b'R'` runnable, `b'D'` uninterruptible (I/O), `b'S'` sleeping...
    pub state: u8,
}

/// What `/proc/<pid>/io` says about one process (storage-layer bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidIo {
    /// Bytes fetched from storage.
    pub read_bytes: u64,
    /// Bytes sent to storage.
    pub write_bytes: u64,
}

/// One reading of a pid: `io` is `None` where the agent may not read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidSample {
    /// From `stat`.
    pub stat: PidStat,
    /// From `io`, when permitted.
    pub io: Option<PidIo>,
}

/// Parses `/proc/<pid>/stat`. `comm` (field 2) may contain spaces and parentheses, so the fields
/// are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<PidStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = &text[open + 1..close];
    // Field 3 (state) is the first after the comm; utime is field 14, stime 15, starttime 22,
    // rss 24.
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let utime: u64 = fields.nth(10)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let start_ticks: u64 = fields.nth(6)?.parse().ok()?;
    let rss_pages: i64 = fields.nth(1)?.parse().ok()?;
    Some(PidStat {
        cpu_ticks: utime.saturating_add(stime),
        start_ticks,
        rss_pages: rss_pages.max(0) as u64,
        is_postgres: comm.starts_with("postgres") || comm.starts_with("postmaster"),
        state,
    })
}

/// Parses `/proc/<pid>/io` (`read_bytes` and `write_bytes`).
pub fn parse_io(text: &str) -> Option<PidIo> {
    let mut read = None;
    let mut write = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("read_bytes:") {
            read = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("write_bytes:") {
            write = v.trim().parse().ok();
        }
    }
    Some(PidIo {
        read_bytes: read?,
        write_bytes: write?,
    })
}

/// `btime` (boot time, unix seconds) of `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 when the call fails.
pub fn clock_ticks_per_sec() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| crate::sys::clock_ticks_per_sec().unwrap_or(100))
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`), 4096 when the call fails.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| crate::sys::page_size().unwrap_or(4096))
}

/// Converts CPU ticks to milliseconds.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks.saturating_mul(1000) / clock_ticks_per_sec()
}

/// After `io` was refused once, how long to wait before trying again: privileges rarely change,
/// and a refused open per pid per second is wasted work.
const IO_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Most pids whose files are kept open between samples (two descriptors each); beyond that,
/// files are opened and closed per read, which is slower but bounded.
const MAX_OPEN_PIDS: usize = 128;

#[derive(Debug)]
struct OpenPid {
    stat: std::fs::File,
    io: Option<std::fs::File>,
    round: u64,
}

/// Reads `/proc/<pid>` files with reused buffers. The files of the pids sampled in the last
/// round stay open and are re-read with `pread` at offset 0 (procfs regenerates them), which
/// saves an open and a close per file per second.
#[derive(Debug)]
pub struct ProcReader {
    root: PathBuf,
    path: String,
    buf: Vec<u8>,
    io_refused_at: Option<Instant>,
    open: HashMap<i32, OpenPid>,
    round: u64,
    boot_time: Option<Option<f64>>,
    states: Vec<(i32, u8)>,
    last_states: Vec<(i32, u8)>,
}

impl Default for ProcReader {
    fn default() -> Self {
        ProcReader::new()
    }
}

/// One `pread` at offset 0; `stat` and `io` are far shorter than the buffer.
fn pread(f: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    f.read_at(buf, 0)
}

impl ProcReader {
    /// A reader of the real `/proc`.
    pub fn new() -> ProcReader {
        ProcReader::with_root("/proc")
    }

    /// A reader of another directory laid out like `/proc` (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> ProcReader {
        ProcReader {
            root: root.into(),
            path: String::with_capacity(64),
            buf: vec![0; 4096],
            io_refused_at: None,
            open: HashMap::new(),
            round: 0,
            boot_time: None,
            states: Vec::new(),
            last_states: Vec::new(),
        }
    }

    /// When the machine booted, in unix seconds (`btime` of `<root>/stat`), read once; `None`
    /// when the file cannot be read.
    pub fn boot_time(&mut self) -> Option<f64> {
        if self.boot_time.is_none() {
            let text = std::fs::read_to_string(self.root.join("stat")).unwrap_or_default();
            self.boot_time = Some(parse_btime(&text));
        }
        self.boot_time.flatten()
    }

    /// When the process of `stat` started, in unix seconds (to within a second: `btime` is whole
    /// seconds).
    pub fn process_start(&mut self, stat: &PidStat) -> Option<f64> {
        let boot = self.boot_time()?;
        Some(boot + stat.start_ticks as f64 / clock_ticks_per_sec() as f64)
    }

    /// Whether `/proc/<pid>/io` was refused recently (the privilege is missing).
    pub fn io_refused(&self) -> bool {
        self.io_refused_at.is_some()
    }

    /// (pid, run state) of every PostgreSQL process read in the round that the last
    /// [`ProcReader::end_round`] closed.
    pub fn last_round_states(&self) -> &[(i32, u8)] {
        &self.last_states
    }

    /// Closes the files of pids not sampled since the previous call. Call once per sampling
    /// round, after the round's [`ProcReader::sample`] calls.
    pub fn end_round(&mut self) {
        std::mem::swap(&mut self.states, &mut self.last_states);
        self.states.clear();
        let round = self.round;
        self.open.retain(|_, o| o.round == round);
        self.round += 1;
    }

    fn open_file(&mut self, pid: i32, file: &str) -> std::io::Result<std::fs::File> {
        self.path.clear();
        let _ = write!(self.path, "{}/{pid}/{file}", self.root.display());
        std::fs::File::open(&self.path)
    }

    fn io_allowed(&mut self) -> bool {
        match self.io_refused_at {
            Some(at) if at.elapsed() < IO_RETRY_AFTER => false,
            Some(_) => {
                self.io_refused_at = None;
                true
            }
            None => true,
        }
    }

    fn note_io_error(&mut self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            self.io_refused_at = Some(Instant::now());
        }
    }

    /// Reads `stat` and, when permitted, `io` of `pid`. `None` when the pid is gone or is not a
    /// PostgreSQL process.
    pub fn sample(&mut self, pid: i32) -> Option<PidSample> {
        if pid <= 0 {
            return None;
        }
        let round = self.round;
        // A cached file whose process exited fails to read (ESRCH): reopen once, which finds
        // the new process if the pid was reused, or nothing.
        let mut cached = self.open.remove(&pid);
        let stat = match cached.as_ref().map(|o| pread(&o.stat, &mut self.buf)) {
            Some(Ok(n)) => Some(n),
            _ => {
                cached = None;
                None
            }
        };
        let (n, mut entry) = match (stat, cached) {
            (Some(n), Some(entry)) => (n, Some(entry)),
            _ => {
                let f = self.open_file(pid, "stat").ok()?;
                let n = pread(&f, &mut self.buf).ok()?;
                let keep = self.open.len() < MAX_OPEN_PIDS;
                (
                    n,
                    keep.then_some(OpenPid {
                        stat: f,
                        io: None,
                        round,
                    }),
                )
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..n]);
        let stat = parse_stat(&text)?;
        if !stat.is_postgres {
            return None;
        }
        self.states.push((pid, stat.state));
        let io = if self.io_allowed() {
            let file = match entry.as_mut().and_then(|e| e.io.take()) {
                Some(f) => Ok(f),
                None => self.open_file(pid, "io"),
            };
            match file.and_then(|f| pread(&f, &mut self.buf).map(|n| (f, n))) {
                Ok((f, n)) => {
                    let parsed = std::str::from_utf8(&self.buf[..n]).ok().and_then(parse_io);
                    if let Some(e) = entry.as_mut() {
                        e.io = Some(f);
                    }
                    parsed
                }
                Err(e) => {
                    self.note_io_error(&e);
                    None
                }
            }
        } else {
            None
        };
        if let Some(mut e) = entry {
            e.round = round;
            self.open.insert(pid, e);
        }
        Some(PidSample { stat, io })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (postgres: app db 10.0.0.1(5432) SELECT) R 1 4242 4242 0 -1 4194560 \
                        900 0 0 0 1234 56 0 0 20 0 1 0 987654 221184000 2048 18446744073709551615 \
                        1 1 0 0 0 0 0 16781312 1 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_counts_fields_from_the_last_parenthesis() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.cpu_ticks, 1234 + 56);
        assert_eq!(s.start_ticks, 987654);
        assert_eq!(s.rss_pages, 2048);
        assert!(s.is_postgres);
        assert_eq!(s.state, b'R');
    }

    #[test]
    fn stat_of_another_program_or_garbage() {
        let other = STAT.replace("postgres: app db", "bash) (x");
        let s = parse_stat(&other).unwrap();
        assert!(!s.is_postgres);
        assert_eq!(s.cpu_ticks, 1290);
        assert_eq!(parse_stat("12 (short) R 1 2"), None);
        assert_eq!(parse_stat(")("), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn io_needs_both_fields() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\n\
                  cancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(io),
            Some(PidIo {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        assert_eq!(parse_io("rchar: 10\n"), None);
    }

    #[test]
    fn reader_marks_missing_and_foreign_pids_unavailable() {
        let dir = std::env::temp_dir().join(format!("bv-procfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("10")).unwrap();
        std::fs::create_dir_all(dir.join("11")).unwrap();
        std::fs::write(dir.join("10/stat"), STAT).unwrap();
        std::fs::write(
            dir.join("11/stat"),
            STAT.replace("postgres: app db", "nginx"),
        )
        .unwrap();
        let mut r = ProcReader::with_root(&dir);
        let s = r.sample(10).unwrap();
        assert_eq!(s.stat.cpu_ticks, 1290);
        assert_eq!(s.io, None, "no io file: unavailable");
        std::fs::write(dir.join("10/io"), "read_bytes: 1\nwrite_bytes: 2\n").unwrap();
        assert_eq!(r.sample(10).unwrap().io.map(|i| i.write_bytes), Some(2));
        r.end_round();
        assert_eq!(r.last_round_states(), &[(10, b'R'), (10, b'R')]);
        // A cached file is re-read in place: new content shows without reopening.
        std::fs::write(dir.join("10/stat"), STAT.replace(" 1234 56 ", " 2000 56 ")).unwrap();
        assert_eq!(r.sample(10).unwrap().stat.cpu_ticks, 2056);
        r.end_round();
        r.end_round();
        assert!(r.open.is_empty(), "files of pids not sampled are closed");
        assert_eq!(r.sample(11), None, "not a postgres process");
        assert_eq!(r.sample(12), None, "gone");
        assert_eq!(r.sample(-1), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn boot_time_and_process_start() {
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1.7e9)
        );
        assert_eq!(parse_btime("cpu 1 2\n"), None);
        let mut real = ProcReader::new();
        let boot = real.boot_time().expect("/proc/stat has btime");
        let own = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        let started = real.process_start(&own).unwrap();
        let now = crate::payload::unix_now();
        assert!(
            boot < started && started <= now + 1.0,
            "{boot} {started} {now}"
        );
        let mut none = ProcReader::with_root("/nonexistent-proc");
        assert_eq!(none.process_start(&own), None);
    }

    #[test]
    fn reads_own_process_from_real_proc() {
        // The test binary is not postgres, so the reader refuses it, but the parser must accept
        // the real file format.
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let s = parse_stat(&text).unwrap();
        assert!(!s.is_postgres);
        assert!(s.rss_pages > 0);
        assert!(ticks_to_ms(clock_ticks_per_sec()) == 1000);
    }
}
