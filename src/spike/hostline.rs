//! The host's figures of one sample: run queue and blocked tasks, CPU busy and iowait since the
//! previous sample (`/proc/stat`), load1 (`/proc/loadavg`) and PSI `some avg10` of cpu, io and
//! memory (`/proc/pressure/*`).
//!
//! Invariants: nothing here fails or panics; a file that is missing or odd gives `None` for its
//! figures (PSI is absent on kernels before 4.20 or with `psi=0`). CPU percentages need two
//! readings: the first sample, and one after counters went backwards, give `None`. The five
//! files stay open and are re-read with `pread` at offset 0 (procfs regenerates them), which
//! saves an open and a close per file per sample; a missing file is looked for again at most
//! once a minute. `/proc/loadavg` (load1 and the runnable tasks) is read every sample while a
//! spike lasts and at most every [`LOADAVG_EVERY`] otherwise (the kernel recomputes load1 every
//! 5 s; between readings load1 is the last one and the runnable tasks are `None`). PSI is
//! read at most every [`SPIKE_PSI_EVERY`] while a spike lasts (the kernel recomputes its
//! averages every 2 s) and every [`PSI_EVERY`] otherwise (`avg10` is a 10 s average). `/proc/stat`
//! (blocked tasks, CPU busy and iowait since its previous reading) is read at most every
//! [`SPIKE_STAT_EVERY`] while a spike lasts (once a second, not at every 250 ms burst sample)
//! and otherwise at most every [`STAT_EVERY`]: between two readings those figures are `None`,
//! never a repeated value.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::collect::host::{parse_loadavg, parse_proc_stat, CpuTimes};

/// One sample's host figures (`None`: not read at this sample, or unavailable).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPoint {
    /// Runnable tasks, the agent's own thread included (`/proc/loadavg`, or `procs_running` of
    /// `/proc/stat` when that was read).
    pub procs_running: Option<u64>,
    /// `procs_blocked` (tasks in uninterruptible sleep, mostly I/O).
    pub procs_blocked: Option<u64>,
    /// CPU busy percent (everything but idle and iowait) since the previous `/proc/stat` reading.
    pub cpu_busy_pct: Option<f64>,
    /// iowait percent since the previous `/proc/stat` reading.
    pub iowait_pct: Option<f64>,
    /// 1-minute load average.
    pub load1: Option<f64>,
    /// Online CPUs (`cpuN` lines of `/proc/stat`).
    pub n_cpus: Option<u64>,
    /// PSI cpu `some avg10`.
    pub psi_cpu: Option<f64>,
    /// PSI io `some avg10`.
    pub psi_io: Option<f64>,
    /// PSI memory `some avg10`.
    pub psi_memory: Option<f64>,
}

/// Parses the `some avg10=` figure of a `/proc/pressure/*` file.
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let v = line
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?;
    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)
}

fn busy_and_total(c: &CpuTimes) -> (u64, u64, u64) {
    let total = c
        .user
        .saturating_add(c.nice)
        .saturating_add(c.system)
        .saturating_add(c.idle)
        .saturating_add(c.iowait)
        .saturating_add(c.irq)
        .saturating_add(c.softirq)
        .saturating_add(c.steal);
    let busy = total.saturating_sub(c.idle).saturating_sub(c.iowait);
    (busy, c.iowait, total)
}

/// The CPU busy and iowait percent between two readings; `None` when no time passed or a counter
/// went backwards.
pub fn cpu_percent(prev: &CpuTimes, now: &CpuTimes) -> Option<(f64, f64)> {
    let (b0, w0, t0) = busy_and_total(prev);
    let (b1, w1, t1) = busy_and_total(now);
    if t1 <= t0 || b1 < b0 || w1 < w0 {
        return None;
    }
    let dt = (t1 - t0) as f64;
    Some((
        ((b1 - b0) as f64 * 100.0 / dt).min(100.0),
        ((w1 - w0) as f64 * 100.0 / dt).min(100.0),
    ))
}

/// The files read, in [`HostLine`]'s slot order.
const FILES: [&str; 5] = [
    "stat",
    "loadavg",
    "pressure/cpu",
    "pressure/io",
    "pressure/memory",
];

/// Least time between two readings of PSI outside spikes: `some avg10` is an average over 10 s,
/// so reading it more often adds little but three file reads (a quarter of the sampler's
/// `/proc` reads a second on an idle server).
pub const PSI_EVERY: Duration = Duration::from_secs(10);

/// Least time between two readings of PSI while a spike lasts: as often as the kernel
/// recomputes the averages.
pub const SPIKE_PSI_EVERY: Duration = Duration::from_secs(2);

/// Least time between two readings of `/proc/stat` outside spikes. The kernel formats every
/// interrupt counter into it, which made it most of the host line's cost (about 60 µs of the
/// sampler's CPU per reading on a 2-core VM, against 8 µs in a hot loop): every 5 s that was
/// 0.7 ms of CPU a minute, a fifth of what the spike work may add to the steady state.
pub const STAT_EVERY: Duration = Duration::from_secs(15);

/// Least time between two readings of `/proc/loadavg` outside spikes: the kernel recomputes
/// load1 every 5 s (`LOAD_FREQ`), so reading it every second finds the same figure four times.
pub const LOADAVG_EVERY: Duration = Duration::from_secs(5);

/// Least time between two readings of `/proc/stat` while a spike lasts: a burst samples 4 times
/// a second, and reading this file at each would cost 4 × 60 µs a second of burst for CPU
/// percentages over 250 ms, which the kernel's tick accounting makes coarse anyway.
pub const SPIKE_STAT_EVERY: Duration = Duration::from_secs(1);

/// How long a file that could not be opened is left alone.
const REOPEN_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Slot {
    Closed,
    Open(File),
    Missing(Instant),
}

/// Reads the host figures; keeps the previous CPU reading for the percentages.
#[derive(Debug)]
pub struct HostLine {
    root: PathBuf,
    prev_cpu: Option<CpuTimes>,
    slots: [Slot; 5],
    buf: Vec<u8>,
    psi_every: Duration,
    spike_psi_every: Duration,
    psi: Option<(Instant, [Option<f64>; 3])>,
    stat_every: Duration,
    spike_stat_every: Duration,
    stat_at: Option<Instant>,
    loadavg_every: Duration,
    /// The last `/proc/loadavg` reading: when, and its load1.
    loadavg: Option<(Instant, f64)>,
    n_cpus: Option<u64>,
}

impl Default for HostLine {
    fn default() -> Self {
        HostLine::new()
    }
}

impl HostLine {
    /// A reader of the real `/proc`.
    pub fn new() -> HostLine {
        HostLine::with_root("/proc")
    }

    /// A reader of a directory laid out like `/proc` (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> HostLine {
        HostLine {
            root: root.into(),
            prev_cpu: None,
            slots: [
                Slot::Closed,
                Slot::Closed,
                Slot::Closed,
                Slot::Closed,
                Slot::Closed,
            ],
            buf: vec![0; 16 * 1024],
            psi_every: PSI_EVERY,
            spike_psi_every: SPIKE_PSI_EVERY,
            psi: None,
            stat_every: STAT_EVERY,
            spike_stat_every: SPIKE_STAT_EVERY,
            stat_at: None,
            loadavg_every: LOADAVG_EVERY,
            loadavg: None,
            n_cpus: None,
        }
    }

    /// Reads every file at every sample (tests).
    pub fn every_sample(mut self) -> HostLine {
        self.psi_every = Duration::ZERO;
        self.spike_psi_every = Duration::ZERO;
        self.stat_every = Duration::ZERO;
        self.spike_stat_every = Duration::ZERO;
        self.loadavg_every = Duration::ZERO;
        self
    }

    /// Reads `/proc/stat` at most every `every` while a spike lasts (tests).
    pub fn with_spike_stat_period(mut self, every: Duration) -> HostLine {
        self.spike_stat_every = every;
        self
    }

    /// Reads file `i` of [`FILES`] into the buffer (kept and reused); the text, or `None` (also
    /// for a file that is not UTF-8: procfs writes ASCII).
    fn read(&mut self, i: usize) -> Option<&str> {
        if let Slot::Missing(at) = self.slots[i] {
            if at.elapsed() < REOPEN_AFTER {
                return None;
            }
            self.slots[i] = Slot::Closed;
        }
        if matches!(self.slots[i], Slot::Closed) {
            match File::open(self.root.join(FILES[i])) {
                Ok(f) => self.slots[i] = Slot::Open(f),
                Err(_) => {
                    self.slots[i] = Slot::Missing(Instant::now());
                    return None;
                }
            }
        }
        let Slot::Open(f) = &self.slots[i] else {
            return None;
        };
        loop {
            match f.read_at(&mut self.buf, 0) {
                // A file that fills the buffer may be cut: /proc/stat grows with the CPU count.
                Ok(n) if n == self.buf.len() && self.buf.len() < (1 << 22) => {
                    let bigger = self.buf.len() * 4;
                    self.buf.resize(bigger, 0);
                }
                Ok(n) => return std::str::from_utf8(&self.buf[..n]).ok(),
                Err(_) => {
                    self.slots[i] = Slot::Closed;
                    return None;
                }
            }
        }
    }

    /// Reads the figures of this moment; `detailed` (while a spike lasts) reads `/proc/stat`
    /// at [`SPIKE_STAT_EVERY`] instead of [`STAT_EVERY`] and PSI at [`SPIKE_PSI_EVERY`] instead
    /// of [`PSI_EVERY`].
    pub fn sample(&mut self, detailed: bool) -> HostPoint {
        let mut p = HostPoint {
            n_cpus: self.n_cpus,
            ..HostPoint::default()
        };
        let loadavg_due = detailed
            || self
                .loadavg
                .map_or(true, |(at, _)| at.elapsed() >= self.loadavg_every);
        if loadavg_due {
            self.loadavg = None;
            if let Some((load1, running)) = self.read(1).and_then(parse_loadavg_running) {
                p.procs_running = Some(running);
                self.loadavg = Some((Instant::now(), load1));
            }
        }
        p.load1 = self.loadavg.map(|(_, l)| l);
        let every = if detailed {
            self.spike_stat_every
        } else {
            self.stat_every
        };
        let stat_due = self.stat_at.map_or(true, |at| at.elapsed() >= every);
        if stat_due {
            self.stat_at = Some(Instant::now());
            if let Some(st) = self.read(0).and_then(parse_proc_stat) {
                p.procs_running = Some(st.running);
                p.procs_blocked = Some(st.blocked);
                if st.n_cpus > 0 {
                    self.n_cpus = Some(st.n_cpus);
                    p.n_cpus = self.n_cpus;
                }
                if let Some((busy, wait)) =
                    self.prev_cpu.and_then(|prev| cpu_percent(&prev, &st.cpu))
                {
                    p.cpu_busy_pct = Some(busy);
                    p.iowait_pct = Some(wait);
                }
                self.prev_cpu = Some(st.cpu);
            }
        }
        let psi_every = if detailed {
            self.spike_psi_every
        } else {
            self.psi_every
        };
        let psi = match self.psi {
            Some((at, v)) if at.elapsed() < psi_every => v,
            _ => {
                let v = [
                    self.read(2).and_then(parse_psi_some_avg10),
                    self.read(3).and_then(parse_psi_some_avg10),
                    self.read(4).and_then(parse_psi_some_avg10),
                ];
                self.psi = Some((Instant::now(), v));
                v
            }
        };
        [p.psi_cpu, p.psi_io, p.psi_memory] = psi;
        p
    }
}

/// Parses `/proc/loadavg` into load1 and the runnable tasks now (the `3` of `3/174`).
pub fn parse_loadavg_running(text: &str) -> Option<(f64, u64)> {
    let load1 = parse_loadavg(text)?[0];
    let running = text
        .split_ascii_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    (load1.is_finite() && load1 >= 0.0).then_some((load1, running))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSI: &str = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n\
                       full avg10=1.00 avg60=0.00 avg300=0.00 total=100\n";

    #[test]
    fn psi_some_avg10() {
        assert_eq!(parse_psi_some_avg10(PSI), Some(12.5));
        assert_eq!(parse_psi_some_avg10("full avg10=1.00\n"), None);
        assert_eq!(parse_psi_some_avg10("some avg10=x\n"), None);
        assert_eq!(parse_psi_some_avg10("some avg10=-1\n"), None);
        assert_eq!(parse_psi_some_avg10(""), None);
        assert_eq!(parse_psi_some_avg10("some\n"), None);
    }

    #[test]
    fn cpu_percent_between_readings() {
        let a = CpuTimes {
            user: 100,
            idle: 100,
            ..CpuTimes::default()
        };
        let b = CpuTimes {
            user: 150,
            idle: 130,
            iowait: 20,
            ..CpuTimes::default()
        };
        assert_eq!(cpu_percent(&a, &b), Some((50.0, 20.0)));
        assert_eq!(cpu_percent(&b, &a), None, "backwards");
        assert_eq!(cpu_percent(&a, &a), None, "no time");
    }

    #[test]
    fn reads_a_fake_proc_and_survives_garbage() {
        let dir = std::env::temp_dir().join(format!("bv-hostline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pressure")).unwrap();
        let stat = |user: u64, iowait: u64| {
            format!(
                "cpu  {user} 0 0 100 {iowait} 0 0 0 0 0\ncpu0 1 0 0 0 0\ncpu1 1 0 0 0 0\n\
                 procs_running 7\nprocs_blocked 3\n"
            )
        };
        std::fs::write(dir.join("stat"), stat(100, 0)).unwrap();
        std::fs::write(dir.join("loadavg"), "4.20 1.00 0.50 3/200 999\n").unwrap();
        std::fs::write(dir.join("pressure/io"), PSI).unwrap();
        let mut h = HostLine::with_root(&dir).every_sample();
        let p = h.sample(false);
        assert_eq!(p.procs_running, Some(7));
        assert_eq!(p.procs_blocked, Some(3));
        assert_eq!(p.n_cpus, Some(2));
        assert_eq!(p.load1, Some(4.2));
        assert_eq!(
            parse_loadavg_running("4.20 1.00 0.50 3/200 999\n"),
            Some((4.2, 3))
        );
        assert_eq!(parse_loadavg_running("4.20 1.00 0.50\n"), None);
        assert_eq!(p.cpu_busy_pct, None, "first reading");
        assert_eq!(p.psi_io, Some(12.5));
        assert_eq!(p.psi_cpu, None, "absent file");
        std::fs::write(dir.join("stat"), stat(200, 100)).unwrap();
        let p = h.sample(false);
        assert_eq!(p.cpu_busy_pct, Some(50.0));
        assert_eq!(p.iowait_pct, Some(50.0));
        for junk in ["", "\u{0}\u{1}garbage", "cpu x y z\nprocs_running -1\n"] {
            std::fs::write(dir.join("stat"), junk).unwrap();
            std::fs::write(dir.join("loadavg"), junk).unwrap();
            std::fs::write(dir.join("pressure/io"), junk).unwrap();
            let p = h.sample(false);
            assert_eq!(p.load1, None);
            assert_eq!(p.psi_io, None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stat_and_pressure_are_read_less_often_outside_spikes() {
        let dir = std::env::temp_dir().join(format!("bv-hostline-slow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pressure")).unwrap();
        std::fs::write(dir.join("loadavg"), "1.00 1.00 1.00 4/10 9\n").unwrap();
        std::fs::write(
            dir.join("stat"),
            "cpu 1 0 0 1 0 0 0 0\ncpu0 1\nprocs_blocked 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("pressure/io"), PSI).unwrap();
        let mut h = HostLine::with_root(&dir);
        let p = h.sample(false);
        assert_eq!(
            (p.load1, p.procs_running, p.procs_blocked),
            (Some(1.0), Some(0), Some(2))
        );
        assert_eq!(p.psi_io, Some(12.5));
        std::fs::write(dir.join("loadavg"), "2.00 1.00 1.00 7/10 9\n").unwrap();
        std::fs::write(dir.join("pressure/io"), PSI.replace("12.50", "50.00")).unwrap();
        let p = h.sample(false);
        assert_eq!(
            (p.load1, p.procs_running),
            (Some(1.0), None),
            "loadavg not due outside a spike: load1 is the last reading"
        );
        assert_eq!(p.procs_blocked, None, "/proc/stat not due outside a spike");
        assert_eq!(p.n_cpus, Some(1), "the CPU count is remembered");
        assert_eq!(
            p.psi_io,
            Some(12.5),
            "the kernel has not recomputed PSI yet"
        );
        let p = h.sample(true);
        assert_eq!(
            (p.load1, p.procs_running),
            (Some(2.0), Some(7)),
            "loadavg at every sample of a spike"
        );
        assert_eq!(
            p.procs_blocked, None,
            "during a spike: at most once a second"
        );
        let mut h = h.with_spike_stat_period(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        let p = h.sample(true);
        assert_eq!(p.procs_blocked, Some(2), "during a spike: its own period");
        assert_eq!(h.sample(true).procs_blocked, None, "not again at once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
