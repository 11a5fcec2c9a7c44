//! The host's figures of one sample: run queue and blocked tasks, CPU busy and iowait since the
//! previous sample (`/proc/stat`), load1 (`/proc/loadavg`) and PSI `some avg10` of cpu, io and
//! memory (`/proc/pressure/*`).
//!
//! Invariants: nothing here fails or panics; a file that is missing or odd gives `None` for its
//! figures (PSI is absent on kernels before 4.20 or with `psi=0`). CPU percentages need two
//! readings: the first sample, and one after counters went backwards, give `None`.

use std::path::PathBuf;

use crate::collect::host::{parse_loadavg, parse_proc_stat, CpuTimes};

/// One sample's host figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPoint {
    /// `procs_running` (runnable tasks, the agent's own thread included).
    pub procs_running: Option<u64>,
    /// `procs_blocked` (tasks in uninterruptible sleep, mostly I/O).
    pub procs_blocked: Option<u64>,
    /// CPU busy percent (everything but idle and iowait) since the previous sample.
    pub cpu_busy_pct: Option<f64>,
    /// iowait percent since the previous sample.
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

/// Reads the host figures; keeps the previous CPU reading for the percentages.
#[derive(Debug)]
pub struct HostLine {
    root: PathBuf,
    prev_cpu: Option<CpuTimes>,
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
        }
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(name)).ok()
    }

    /// Reads the figures of this moment.
    pub fn sample(&mut self) -> HostPoint {
        let mut p = HostPoint::default();
        if let Some(st) = self.read("stat").as_deref().and_then(parse_proc_stat) {
            p.procs_running = Some(st.running);
            p.procs_blocked = Some(st.blocked);
            p.n_cpus = (st.n_cpus > 0).then_some(st.n_cpus);
            if let Some((busy, wait)) = self.prev_cpu.and_then(|prev| cpu_percent(&prev, &st.cpu)) {
                p.cpu_busy_pct = Some(busy);
                p.iowait_pct = Some(wait);
            }
            self.prev_cpu = Some(st.cpu);
        }
        p.load1 = self
            .read("loadavg")
            .as_deref()
            .and_then(parse_loadavg)
            .map(|l| l[0])
            .filter(|l| l.is_finite() && *l >= 0.0);
        p.psi_cpu = self
            .read("pressure/cpu")
            .as_deref()
            .and_then(parse_psi_some_avg10);
        p.psi_io = self
            .read("pressure/io")
            .as_deref()
            .and_then(parse_psi_some_avg10);
        p.psi_memory = self
            .read("pressure/memory")
            .as_deref()
            .and_then(parse_psi_some_avg10);
        p
    }
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
        let mut h = HostLine::with_root(&dir);
        let p = h.sample();
        assert_eq!(p.procs_running, Some(7));
        assert_eq!(p.procs_blocked, Some(3));
        assert_eq!(p.n_cpus, Some(2));
        assert_eq!(p.load1, Some(4.2));
        assert_eq!(p.cpu_busy_pct, None, "first reading");
        assert_eq!(p.psi_io, Some(12.5));
        assert_eq!(p.psi_cpu, None, "absent file");
        std::fs::write(dir.join("stat"), stat(200, 100)).unwrap();
        let p = h.sample();
        assert_eq!(p.cpu_busy_pct, Some(50.0));
        assert_eq!(p.iowait_pct, Some(50.0));
        for junk in ["", "\u{0}\u{1}garbage", "cpu x y z\nprocs_running -1\n"] {
            std::fs::write(dir.join("stat"), junk).unwrap();
            std::fs::write(dir.join("loadavg"), junk).unwrap();
            std::fs::write(dir.join("pressure/io"), junk).unwrap();
            let p = h.sample();
            assert_eq!(p.load1, None);
            assert_eq!(p.psi_io, None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
