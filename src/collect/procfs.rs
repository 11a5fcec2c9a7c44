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
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
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
/// are counted from the *last* `)`. Works on the bytes as read: no text conversion, no
/// allocation.
pub fn parse_stat(text: &[u8]) -> Option<PidStat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = &text[open + 1..close];
    // Field 3 (state) is the first after the comm; utime is field 14, stime 15, starttime 22,
    // rss 24.
    let mut fields = text[close + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    let utime = parse_u64(fields.nth(10)?)?;
    let stime = parse_u64(fields.next()?)?;
    let start_ticks = parse_u64(fields.nth(6)?)?;
    let rss = fields.nth(1)?;
    // RSS is signed in the kernel's format; a negative one counts as 0.
    let rss_pages = match rss.strip_prefix(b"-") {
        Some(digits) => parse_u64(digits).map(|_| 0)?,
        None => parse_u64(rss)?,
    };
    Some(PidStat {
        cpu_ticks: utime.saturating_add(stime),
        start_ticks,
        rss_pages,
        is_postgres: comm.starts_with(b"postgres") || comm.starts_with(b"postmaster"),
        state,
    })
}

/// A decimal number of ASCII digits only (no sign, no space); `None` when empty, not digits or
/// beyond u64.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Parses `/proc/<pid>/io` (`read_bytes` and `write_bytes`), from the bytes as read.
pub fn parse_io(text: &[u8]) -> Option<PidIo> {
    let mut read = None;
    let mut write = None;
    for line in text.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"read_bytes:") {
            read = parse_u64(v.trim_ascii());
        } else if let Some(v) = line.strip_prefix(b"write_bytes:") {
            write = parse_u64(v.trim_ascii());
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

/// Most pids whose files are kept open between samples (two descriptors each), whatever the
/// descriptor limit allows: as many as the activity sampler keeps readings of (its
/// `MAX_TRACKS`), so every session seen stays open on a server with up to 4,096 backends.
const MAX_OPEN_PIDS: usize = 4096;

/// Descriptors left to everything else in the process (connections, spool, log, status) when
/// the bound of open pids is taken from the descriptor limit.
const FD_RESERVE: u64 = 256;

/// How many pids' files a reader keeps open: `(soft RLIMIT_NOFILE - 256) / 2`, at most
/// [`MAX_OPEN_PIDS`]. The soft limit is raised to the hard one once, on the first call (the
/// common 1,024 soft limit would otherwise allow only 384 pids).
fn open_pid_bound() -> usize {
    static BOUND: OnceLock<usize> = OnceLock::new();
    *BOUND.get_or_init(|| {
        let soft = crate::sys::raise_nofile_soft_limit().unwrap_or(1024);
        (soft.saturating_sub(FD_RESERVE) / 2).min(MAX_OPEN_PIDS as u64) as usize
    })
}

/// Whether an open failed because the process or the system ran out of descriptors.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[derive(Debug)]
struct OpenPid {
    stat: std::fs::File,
    io: Option<std::fs::File>,
    round: u64,
}

/// Reads `/proc/<pid>` files with reused buffers. The files of the pids sampled in the last
/// round stay open and are re-read with `pread` at offset 0 (procfs regenerates them), which
/// saves an open and a close per file per second. At most [`open_pid_bound`] pids stay open;
/// when an open fails for want of descriptors the bound shrinks to three quarters of the files
/// held (closing the rest, said once in the log) and the file is opened again, so running out
/// of descriptors costs speed, never a reading.
#[derive(Debug)]
pub struct ProcReader {
    /// `<root>/`, the prefix of every path.
    root: Vec<u8>,
    path: Vec<u8>,
    buf: Vec<u8>,
    io_refused_at: Option<Instant>,
    open: HashMap<i32, OpenPid>,
    max_open: usize,
    said_fds: bool,
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
        let mut root = root.into().into_os_string().into_vec();
        root.push(b'/');
        ProcReader {
            path: Vec::with_capacity(root.len() + 32),
            root,
            buf: vec![0; 4096],
            io_refused_at: None,
            open: HashMap::new(),
            max_open: open_pid_bound(),
            said_fds: false,
            round: 0,
            boot_time: None,
            states: Vec::new(),
            last_states: Vec::new(),
        }
    }

    fn root_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.root))
    }

    /// When the machine booted, in unix seconds (`btime` of `<root>/stat`), read once; `None`
    /// when the file cannot be read.
    pub fn boot_time(&mut self) -> Option<f64> {
        if self.boot_time.is_none() {
            let text = std::fs::read_to_string(self.root_path().join("stat")).unwrap_or_default();
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

    /// Closes the files of pids neither sampled nor kept since the previous call. Call once per
    /// sampling round, after the round's [`ProcReader::sample`] calls.
    pub fn end_round(&mut self) {
        std::mem::swap(&mut self.states, &mut self.last_states);
        self.states.clear();
        let round = self.round;
        self.open.retain(|_, o| o.round == round);
        self.round += 1;
    }

    /// Keeps the files of `pid` open through this round's [`ProcReader::end_round`] without
    /// reading them (a pid whose reading is deferred).
    pub fn keep_open(&mut self, pid: i32) {
        if let Some(o) = self.open.get_mut(&pid) {
            o.round = self.round;
        }
    }

    /// Pids whose files are open now.
    pub fn n_open(&self) -> usize {
        self.open.len()
    }

    /// `<root>/<pid>/<file>` into the reused path buffer, without formatting machinery.
    fn set_path(&mut self, pid: i32, file: &str) {
        self.path.clear();
        self.path.extend_from_slice(&self.root);
        let mut digits = [0u8; 10];
        let mut n = pid.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.path.extend_from_slice(&digits[i..]);
        self.path.push(b'/');
        self.path.extend_from_slice(file.as_bytes());
    }

    fn open_file(&mut self, pid: i32, file: &str) -> std::io::Result<std::fs::File> {
        self.set_path(pid, file);
        let path = Path::new(OsStr::from_bytes(&self.path));
        match std::fs::File::open(path) {
            Err(e) if out_of_fds(&e) && !self.open.is_empty() => {
                self.shrink_open();
                let path = Path::new(OsStr::from_bytes(&self.path));
                std::fs::File::open(path)
            }
            other => other,
        }
    }

    /// Out of descriptors: keep at most three quarters of the files held now, close the rest.
    fn shrink_open(&mut self) {
        let keep = self.open.len() * 3 / 4;
        if !self.said_fds {
            self.said_fds = true;
            log::warn!(
                "activity: out of file descriptors with {} backends' /proc files open: keeping \
                 at most {keep} open, the others are opened per reading",
                self.open.len()
            );
        }
        self.max_open = keep;
        let excess: Vec<i32> = self.open.keys().skip(keep).copied().collect();
        for pid in excess {
            self.open.remove(&pid);
        }
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
        self.sample_with(pid, None)
    }

    /// Like [`ProcReader::sample`], but with `unchanged = Some((start_ticks, io))` the `io`
    /// file is not read when the process is still the one that started at `start_ticks`: the
    /// caller knows its I/O cannot have changed since that reading (or chose to defer it), and
    /// `io` is returned as the figure.
    pub fn sample_with(&mut self, pid: i32, unchanged: Option<(u64, PidIo)>) -> Option<PidSample> {
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
                let keep = self.open.len() < self.max_open;
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
        let stat = parse_stat(&self.buf[..n])?;
        if !stat.is_postgres {
            return None;
        }
        self.states.push((pid, stat.state));
        let io = match unchanged {
            Some((start, io)) if start == stat.start_ticks => Some(io),
            _ => self.read_io(pid, entry.as_mut()),
        };
        if let Some(mut e) = entry {
            e.round = round;
            self.open.insert(pid, e);
        }
        Some(PidSample { stat, io })
    }

    /// Reads `io` of `pid` through the cached file of `entry` (opening it when needed).
    fn read_io(&mut self, pid: i32, entry: Option<&mut OpenPid>) -> Option<PidIo> {
        if !self.io_allowed() {
            return None;
        }
        let mut entry = entry;
        let file = match entry.as_mut().and_then(|e| e.io.take()) {
            Some(f) => Ok(f),
            None => self.open_file(pid, "io"),
        };
        match file.and_then(|f| pread(&f, &mut self.buf).map(|n| (f, n))) {
            Ok((f, n)) => {
                let parsed = parse_io(&self.buf[..n]);
                if let Some(e) = entry {
                    e.io = Some(f);
                }
                parsed
            }
            Err(e) => {
                self.note_io_error(&e);
                None
            }
        }
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
        let s = parse_stat(STAT.as_bytes()).unwrap();
        assert_eq!(s.cpu_ticks, 1234 + 56);
        assert_eq!(s.start_ticks, 987654);
        assert_eq!(s.rss_pages, 2048);
        assert!(s.is_postgres);
        assert_eq!(s.state, b'R');
    }

    #[test]
    fn stat_of_another_program_or_garbage() {
        let other = STAT.replace("postgres: app db", "bash) (x");
        let s = parse_stat(other.as_bytes()).unwrap();
        assert!(!s.is_postgres);
        assert_eq!(s.cpu_ticks, 1290);
        assert_eq!(parse_stat(b"12 (short) R 1 2"), None);
        assert_eq!(parse_stat(b")("), None);
        assert_eq!(parse_stat(b""), None);
    }

    #[test]
    fn io_needs_both_fields() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\n\
                  cancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(io.as_bytes()),
            Some(PidIo {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        assert_eq!(parse_io(b"rchar: 10\n"), None);
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
    fn numbers_are_parsed_from_bytes_strictly() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None, "beyond u64");
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"+1"), None);
        let negative_rss = STAT.replace(" 2048 18446744073709551615", " -3 18446744073709551615");
        assert_eq!(parse_stat(negative_rss.as_bytes()).unwrap().rss_pages, 0);
        // Not UTF-8 in the comm: still parsed (the old text path replaced it lossily).
        let mut odd = STAT.as_bytes().to_vec();
        odd[6] = 0xff;
        assert_eq!(parse_stat(&odd).unwrap().cpu_ticks, 1290);
    }

    #[test]
    fn paths_are_built_without_formatting() {
        let mut r = ProcReader::with_root("/x/proc");
        r.set_path(0, "stat");
        assert_eq!(r.path, b"/x/proc/0/stat");
        r.set_path(i32::MAX, "io");
        assert_eq!(r.path, b"/x/proc/2147483647/io");
        r.set_path(4242, "stat");
        assert_eq!(r.path, b"/x/proc/4242/stat");
    }

    #[test]
    fn an_unchanged_io_figure_is_not_read_again_for_the_same_process() {
        let dir = std::env::temp_dir().join(format!("bv-procfs-io-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("10")).unwrap();
        std::fs::write(dir.join("10/stat"), STAT).unwrap();
        std::fs::write(dir.join("10/io"), "read_bytes: 1\nwrite_bytes: 2\n").unwrap();
        let mut r = ProcReader::with_root(&dir);
        let first = r.sample(10).unwrap();
        let io = first.io.unwrap();
        std::fs::write(dir.join("10/io"), "read_bytes: 7\nwrite_bytes: 9\n").unwrap();
        let carried = r.sample_with(10, Some((987654, io))).unwrap();
        assert_eq!(carried.io, Some(io), "carried, not read");
        // Another process under the same pid (another start time): read after all.
        let reread = r.sample_with(10, Some((1, io))).unwrap();
        assert_eq!(reread.io.map(|i| i.read_bytes), Some(7));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn running_out_of_descriptors_shrinks_the_cache_and_keeps_reading() {
        let dir = std::env::temp_dir().join(format!("bv-procfs-fds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for pid in 1..=8 {
            std::fs::create_dir_all(dir.join(pid.to_string())).unwrap();
            std::fs::write(dir.join(format!("{pid}/stat")), STAT).unwrap();
        }
        let mut r = ProcReader::with_root(&dir);
        assert!(r.max_open >= 8, "{}", r.max_open);
        for pid in 1..=8 {
            assert!(r.sample(pid).is_some());
        }
        assert_eq!(r.n_open(), 8, "every session seen stays open");
        r.shrink_open();
        assert_eq!((r.n_open(), r.max_open), (6, 6));
        for pid in 1..=8 {
            assert!(r.sample(pid).is_some(), "pid {pid} still read");
        }
        assert_eq!(r.n_open(), 6, "no more open than the shrunk bound");
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
        let own = parse_stat(&std::fs::read("/proc/self/stat").unwrap()).unwrap();
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
        let text = std::fs::read("/proc/self/stat").unwrap();
        let s = parse_stat(&text).unwrap();
        assert!(!s.is_postgres);
        assert!(s.rss_pages > 0);
        assert!(ticks_to_ms(clock_ticks_per_sec()) == 1000);
    }
}
