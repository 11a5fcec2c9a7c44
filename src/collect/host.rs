//! Host figures for the `system_metrics` payload, read from `/proc`, `/sys/block` and
//! `statvfs(3)`: CPU, load, processes, memory, swap, disk and network I/O per interval, and the
//! usage of the filesystems PostgreSQL and the agent write to.
//!
//! Invariants: the first call only records a baseline (rates need two readings) and returns
//! `None`; afterwards every rate covers exactly the time since the previous call. Counters that
//! went backwards (a device re-attached, a wrap) give a delta of 0, never a negative number. A
//! file that cannot be read empties its section and is named in `errors`; the payload still
//! ships. Field names follow the Python agent (psutil) where it had them: `cpu.percent`,
//! `memory.total`, `swap`, `disk_io`, `network_io`, `disk_usage`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::json::Json;

/// Cumulative CPU time from the `cpu` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user (guest time included, as the kernel counts it).
    pub user: u64,
    /// nice.
    pub nice: u64,
    /// system.
    pub system: u64,
    /// idle.
    pub idle: u64,
    /// iowait.
    pub iowait: u64,
    /// irq.
    pub irq: u64,
    /// softirq.
    pub softirq: u64,
    /// steal.
    pub steal: u64,
}

impl CpuTimes {
    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

/// What `/proc/stat` holds that the payload uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// The aggregate `cpu` line.
    pub cpu: CpuTimes,
    /// Number of `cpuN` lines (online logical CPUs).
    pub n_cpus: u64,
    /// `ctxt`: context switches since boot.
    pub context_switches: u64,
    /// `processes`: forks since boot.
    pub forks: u64,
    /// `procs_running`.
    pub running: u64,
    /// `procs_blocked`.
    pub blocked: u64,
}

/// Parses `/proc/stat`; `None` when the `cpu` line is missing.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let mut st = ProcStat::default();
    let mut have_cpu = false;
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(key) = f.next() else { continue };
        let mut num = || f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match key {
            "cpu" => {
                st.cpu = CpuTimes {
                    user: num(),
                    nice: num(),
                    system: num(),
                    idle: num(),
                    iowait: num(),
                    irq: num(),
                    softirq: num(),
                    steal: num(),
                };
                have_cpu = true;
            }
            k if k.starts_with("cpu") => st.n_cpus += 1,
            "ctxt" => st.context_switches = num(),
            "processes" => st.forks = num(),
            "procs_running" => st.running = num(),
            "procs_blocked" => st.blocked = num(),
            _ => {}
        }
    }
    have_cpu.then_some(st)
}

/// `/proc/meminfo` figures, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal.
    pub total: u64,
    /// MemFree.
    pub free: u64,
    /// MemAvailable (estimated from free + reclaimable on kernels without it).
    pub available: u64,
    /// Buffers.
    pub buffers: u64,
    /// Cached + SReclaimable, as psutil counts it.
    pub cached: u64,
    /// SwapTotal.
    pub swap_total: u64,
    /// SwapFree.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`; `None` without MemTotal.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut m = MemInfo::default();
    let mut have_total = false;
    let mut have_available = false;
    let mut sreclaimable = 0;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        let Some(v) = f.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = if f.next() == Some("kB") {
            v.saturating_mul(1024)
        } else {
            v
        };
        match key {
            "MemTotal" => {
                m.total = bytes;
                have_total = true;
            }
            "MemFree" => m.free = bytes,
            "MemAvailable" => {
                m.available = bytes;
                have_available = true;
            }
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "SReclaimable" => sreclaimable = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    m.cached = m.cached.saturating_add(sreclaimable);
    if !have_available {
        m.available = m.free + m.buffers + m.cached;
    }
    have_total.then_some(m)
}

/// Parses `/proc/loadavg` into the 1, 5 and 15 minute averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_ascii_whitespace();
    let mut next = || f.next().and_then(|v| v.parse::<f64>().ok());
    Some([next()?, next()?, next()?])
}

/// Cumulative counters of one block device from `/proc/diskstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes read (sectors are always 512 bytes in this file).
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// Milliseconds the device had I/O in flight (busy time).
    pub busy_ms: u64,
}

/// Parses one `/proc/diskstats` line into the device name and its counters.
pub fn parse_diskstats_line(line: &str) -> Option<(&str, DiskCounters)> {
    let mut f = line.split_ascii_whitespace();
    f.next()?; // major
    f.next()?; // minor
    let name = f.next()?;
    let mut v = [0u64; 10];
    for slot in v.iter_mut() {
        *slot = f.next()?.parse().ok()?;
    }
    Some((
        name,
        DiskCounters {
            reads: v[0],
            read_bytes: v[2].saturating_mul(512),
            read_ms: v[3],
            writes: v[4],
            write_bytes: v[6].saturating_mul(512),
            write_ms: v[7],
            busy_ms: v[9],
        },
    ))
}

/// Cumulative counters of one network interface from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes received.
    pub bytes_recv: u64,
    /// Packets received.
    pub packets_recv: u64,
    /// Receive errors.
    pub errin: u64,
    /// Received packets dropped.
    pub dropin: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Send errors.
    pub errout: u64,
    /// Sent packets dropped.
    pub dropout: u64,
}

/// Parses one interface line of `/proc/net/dev` (headers give `None`).
pub fn parse_net_dev_line(line: &str) -> Option<(&str, NetCounters)> {
    let (name, rest) = line.split_once(':')?;
    let mut v = [0u64; 12];
    let mut f = rest.split_ascii_whitespace();
    for slot in v.iter_mut() {
        *slot = f.next()?.parse().ok()?;
    }
    Some((
        name.trim(),
        NetCounters {
            bytes_recv: v[0],
            packets_recv: v[1],
            errin: v[2],
            dropin: v[3],
            bytes_sent: v[8],
            packets_sent: v[9],
            errout: v[10],
            dropout: v[11],
        },
    ))
}

/// Counts physical cores in `/proc/cpuinfo` (distinct `physical id` + `core id`); `None` when
/// the file does not say (some virtual machines and architectures).
pub fn parse_cpuinfo_physical(text: &str) -> Option<u64> {
    let mut cores = HashSet::new();
    let mut phys = "";
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim(),
                "core id" => {
                    cores.insert((phys.to_string(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    (!cores.is_empty()).then_some(cores.len() as u64)
}

/// Usage of the filesystem holding one path, from `statvfs(3)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Size in bytes.
    pub total: u64,
    /// Bytes in use.
    pub used: u64,
    /// Bytes available to unprivileged users.
    pub free: u64,
}

impl FsUsage {
    /// Used share as psutil computes it: used / (used + free) * 100.
    pub fn percent(&self) -> f64 {
        let denom = self.used + self.free;
        if denom == 0 {
            0.0
        } else {
            self.used as f64 * 100.0 / denom as f64
        }
    }
}

/// `statvfs(3)` of `path`.
pub fn fs_usage(path: &Path) -> std::io::Result<FsUsage> {
    let st = crate::sys::statvfs(path)?;
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let free = (st.f_bavail as u64).saturating_mul(frsize);
    let used = (st.f_blocks as u64)
        .saturating_sub(st.f_bfree as u64)
        .saturating_mul(frsize);
    Ok(FsUsage { total, used, free })
}

/// A filesystem to report in `disk_usage`: a label (`data_directory`, `wal`, `spool`) and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedPath {
    /// What the path is, shown in the payload.
    pub label: String,
    /// Any path on the filesystem.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    stat: ProcStat,
    disks: Vec<(String, DiskCounters)>,
    nets: Vec<(String, NetCounters)>,
}

/// Device names that are never real disks worth reporting.
fn skip_disk(name: &str) -> bool {
    ["loop", "ram", "zram", "fd", "sr"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Produces `system_metrics` data once per interval from two consecutive readings.
#[derive(Debug)]
pub struct HostCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    buf: String,
    path: String,
    prev: Option<Snapshot>,
    count_physical: Option<u64>,
}

impl Default for HostCollector {
    fn default() -> Self {
        HostCollector::new()
    }
}

fn delta(cur: u64, prev: u64) -> u64 {
    // A counter that went backwards was reset: report nothing rather than a huge wrap.
    cur.saturating_sub(prev)
}

impl HostCollector {
    /// A collector of the real `/proc` and `/sys`.
    pub fn new() -> HostCollector {
        HostCollector::with_roots("/proc", "/sys")
    }

    /// A collector of directories laid out like `/proc` and `/sys` (tests).
    pub fn with_roots(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        let mut h = HostCollector {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            buf: String::with_capacity(8192),
            path: String::new(),
            prev: None,
            count_physical: None,
        };
        if h.read_proc("cpuinfo").is_ok() {
            h.count_physical = parse_cpuinfo_physical(&h.buf);
        }
        h
    }

    fn read_proc(&mut self, file: &str) -> std::io::Result<()> {
        self.path.clear();
        let _ = write!(self.path, "{}/{file}", self.proc_root.display());
        self.buf.clear();
        std::fs::File::open(&self.path)?.read_to_string(&mut self.buf)?;
        Ok(())
    }

    /// Whole disks per `/sys/block`; `None` when it cannot be listed (then all non-virtual names
    /// from diskstats are kept, partitions included).
    fn whole_disks(&self) -> Option<HashSet<String>> {
        let rd = std::fs::read_dir(self.sys_root.join("block")).ok()?;
        Some(
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        )
    }

    fn error(errors: &mut Vec<Json>, file: &str, e: impl std::fmt::Display) {
        errors.push(crate::pgerror::entry(
            "host",
            crate::pgerror::Subject::File(file),
            &e.to_string(),
            None,
            false,
        ));
    }

    /// Reads the host and returns the `system_metrics` data covering the time since the last
    /// call; `None` on the first call, which only records the baseline. `paths` are reported in
    /// `disk_usage`.
    pub fn collect(&mut self, paths: &[WatchedPath]) -> Option<Json> {
        let now = Instant::now();
        let mut errors = Vec::new();

        let stat = match self.read_proc("stat") {
            Ok(()) => parse_proc_stat(&self.buf),
            Err(e) => {
                Self::error(&mut errors, "/proc/stat", e);
                None
            }
        };
        let disks = self.read_disks(&mut errors);
        let nets = self.read_nets(&mut errors);

        let Some(stat) = stat else {
            // Without /proc/stat there is no baseline; report only what stands alone.
            // Forget the baseline: the next good reading starts a new one.
            self.prev.take()?;
            let mut data = Json::object();
            self.push_instant(&mut data, paths, &mut errors);
            data.push("errors", Json::Array(errors));
            return Some(data);
        };
        let cur = Snapshot {
            at: now,
            stat,
            disks,
            nets,
        };
        let prev = self.prev.replace(cur)?;
        let cur = self.prev.as_ref().expect("just stored");
        let interval_s = cur.at.duration_since(prev.at).as_secs_f64();
        let mut data = Json::object().field("interval_s", interval_s);
        data.push("cpu", self.cpu_json(&prev.stat, &cur.stat));
        data.push(
            "context_switches",
            delta(cur.stat.context_switches, prev.stat.context_switches),
        );
        data.push(
            "processes",
            Json::object()
                .field("running", cur.stat.running)
                .field("blocked", cur.stat.blocked)
                .field("forks", delta(cur.stat.forks, prev.stat.forks)),
        );
        data.push("disk_io", disk_json(&prev.disks, &cur.disks, interval_s));
        data.push("network_io", net_json(&prev.nets, &cur.nets));
        self.push_instant(&mut data, paths, &mut errors);
        if !errors.is_empty() {
            data.push("errors", Json::Array(errors));
        }
        Some(data)
    }

    /// Figures that need no previous reading: load, memory, swap, filesystems.
    fn push_instant(&mut self, data: &mut Json, paths: &[WatchedPath], errors: &mut Vec<Json>) {
        match self.read_proc("loadavg").map(|_| parse_loadavg(&self.buf)) {
            Ok(Some(l)) => data.push(
                "load_average",
                Json::Array(l.iter().map(|&v| Json::Float(v)).collect()),
            ),
            Ok(None) => Self::error(errors, "/proc/loadavg", "unparseable"),
            Err(e) => Self::error(errors, "/proc/loadavg", e),
        }
        match self.read_proc("meminfo").map(|_| parse_meminfo(&self.buf)) {
            Ok(Some(m)) => {
                let used = m
                    .total
                    .saturating_sub(m.free)
                    .saturating_sub(m.buffers)
                    .saturating_sub(m.cached);
                let pct = |part: u64, whole: u64| {
                    if whole == 0 {
                        0.0
                    } else {
                        part as f64 * 100.0 / whole as f64
                    }
                };
                data.push(
                    "memory",
                    Json::object()
                        .field("total", m.total)
                        .field("available", m.available)
                        .field("used", used)
                        .field("free", m.free)
                        .field("percent", pct(m.total.saturating_sub(m.available), m.total))
                        .field("buffers", m.buffers)
                        .field("cached", m.cached),
                );
                let swap_used = m.swap_total.saturating_sub(m.swap_free);
                data.push(
                    "swap",
                    Json::object()
                        .field("total", m.swap_total)
                        .field("used", swap_used)
                        .field("free", m.swap_free)
                        .field("percent", pct(swap_used, m.swap_total)),
                );
            }
            Ok(None) => Self::error(errors, "/proc/meminfo", "no MemTotal"),
            Err(e) => Self::error(errors, "/proc/meminfo", e),
        }
        let usage = paths
            .iter()
            .map(|w| {
                let o = Json::object()
                    .field("label", w.label.as_str())
                    .field("path", w.path.to_string_lossy().as_ref());
                match fs_usage(&w.path) {
                    Ok(u) => o
                        .field("total", u.total)
                        .field("used", u.used)
                        .field("free", u.free)
                        .field("percent", u.percent()),
                    Err(e) => o.field("error", format!("statvfs {}: {e}", w.path.display())),
                }
            })
            .collect();
        data.push("disk_usage", Json::Array(usage));
    }

    fn cpu_json(&self, prev: &ProcStat, cur: &ProcStat) -> Json {
        let (p, c) = (&prev.cpu, &cur.cpu);
        let total = delta(c.total(), p.total());
        let pct = |cv: u64, pv: u64| {
            if total == 0 {
                0.0
            } else {
                (delta(cv, pv) as f64 * 100.0 / total as f64).min(100.0)
            }
        };
        let idle = pct(c.idle, p.idle);
        let iowait = pct(c.iowait, p.iowait);
        Json::object()
            .field("percent", (100.0 - idle - iowait).clamp(0.0, 100.0))
            .field("user", pct(c.user, p.user))
            .field("nice", pct(c.nice, p.nice))
            .field("system", pct(c.system, p.system))
            .field("iowait", iowait)
            .field("irq", pct(c.irq, p.irq))
            .field("softirq", pct(c.softirq, p.softirq))
            .field("steal", pct(c.steal, p.steal))
            .field("idle", idle)
            .field("count", cur.n_cpus)
            .field("count_logical", cur.n_cpus)
            .field("count_physical", self.count_physical)
    }

    fn read_disks(&mut self, errors: &mut Vec<Json>) -> Vec<(String, DiskCounters)> {
        if let Err(e) = self.read_proc("diskstats") {
            Self::error(errors, "/proc/diskstats", e);
            return Vec::new();
        }
        let whole = self.whole_disks();
        self.buf
            .lines()
            .filter_map(parse_diskstats_line)
            .filter(|(name, _)| !skip_disk(name))
            .filter(|(name, _)| match &whole {
                Some(w) => w.contains(*name),
                None => true,
            })
            .map(|(name, c)| (name.to_string(), c))
            .collect()
    }

    fn read_nets(&mut self, errors: &mut Vec<Json>) -> Vec<(String, NetCounters)> {
        if let Err(e) = self.read_proc("net/dev") {
            Self::error(errors, "/proc/net/dev", e);
            return Vec::new();
        }
        self.buf
            .lines()
            .filter_map(parse_net_dev_line)
            .map(|(name, c)| (name.to_string(), c))
            .collect()
    }
}

/// Cumulative counters of one device or interface, shipped as deltas over the interval: per
/// item and summed over the items.
trait Counters: Default {
    /// Each counter of `self` combined by `f` with the same counter of `other`.
    fn zip(&self, other: &Self, f: fn(u64, u64) -> u64) -> Self;
    /// The counters as fields of `o`, in the payload's order.
    fn fields(&self, o: Json) -> Json;
}

impl Counters for DiskCounters {
    fn zip(&self, o: &Self, f: fn(u64, u64) -> u64) -> Self {
        DiskCounters {
            reads: f(self.reads, o.reads),
            writes: f(self.writes, o.writes),
            read_bytes: f(self.read_bytes, o.read_bytes),
            write_bytes: f(self.write_bytes, o.write_bytes),
            read_ms: f(self.read_ms, o.read_ms),
            write_ms: f(self.write_ms, o.write_ms),
            busy_ms: f(self.busy_ms, o.busy_ms),
        }
    }

    fn fields(&self, o: Json) -> Json {
        o.field("read_count", self.reads)
            .field("write_count", self.writes)
            .field("read_bytes", self.read_bytes)
            .field("write_bytes", self.write_bytes)
            .field("read_time", self.read_ms)
            .field("write_time", self.write_ms)
            .field("busy_time", self.busy_ms)
    }
}

impl Counters for NetCounters {
    fn zip(&self, o: &Self, f: fn(u64, u64) -> u64) -> Self {
        NetCounters {
            bytes_recv: f(self.bytes_recv, o.bytes_recv),
            packets_recv: f(self.packets_recv, o.packets_recv),
            errin: f(self.errin, o.errin),
            dropin: f(self.dropin, o.dropin),
            bytes_sent: f(self.bytes_sent, o.bytes_sent),
            packets_sent: f(self.packets_sent, o.packets_sent),
            errout: f(self.errout, o.errout),
            dropout: f(self.dropout, o.dropout),
        }
    }

    fn fields(&self, o: Json) -> Json {
        o.field("bytes_sent", self.bytes_sent)
            .field("bytes_recv", self.bytes_recv)
            .field("packets_sent", self.packets_sent)
            .field("packets_recv", self.packets_recv)
            .field("errin", self.errin)
            .field("errout", self.errout)
            .field("dropin", self.dropin)
            .field("dropout", self.dropout)
    }
}

/// The deltas of `cur` over `prev`: their sum, with one `{name, <counters>, ...}` per item
/// under `list` (`extra` adds an item's own fields). An item that appeared during the interval
/// has no baseline; it is reported next time.
fn deltas_json<C: Counters>(
    prev: &[(String, C)],
    cur: &[(String, C)],
    list: &str,
    extra: impl Fn(Json, &C) -> Json,
) -> Json {
    let mut sum = C::default();
    let mut items = Vec::new();
    for (name, c) in cur {
        let Some((_, p)) = prev.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let d = c.zip(p, delta);
        sum = sum.zip(&d, u64::saturating_add);
        items.push(extra(
            d.fields(Json::object().field("name", name.as_str())),
            &d,
        ));
    }
    sum.fields(Json::object())
        .field(list.to_string(), Json::Array(items))
}

fn disk_json(
    prev: &[(String, DiskCounters)],
    cur: &[(String, DiskCounters)],
    interval_s: f64,
) -> Json {
    deltas_json(prev, cur, "devices", |o, d| {
        let util = if interval_s > 0.0 {
            (d.busy_ms as f64 / (interval_s * 10.0)).min(100.0)
        } else {
            0.0
        };
        o.field("util_percent", util)
    })
}

fn net_json(prev: &[(String, NetCounters)], cur: &[(String, NetCounters)]) -> Json {
    deltas_json(prev, cur, "interfaces", |o, _| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT1: &str = "cpu  100 0 50 800 40 0 0 10 0 0\ncpu0 50 0 25 400 20 0 0 5 0 0\n\
                         cpu1 50 0 25 400 20 0 0 5 0 0\nintr 1 2 3\nctxt 1000\nbtime 1\n\
                         processes 500\nprocs_running 3\nprocs_blocked 1\n";
    const STAT2: &str = "cpu  160 0 70 900 50 0 0 20 0 0\ncpu0 80 0 35 450 25 0 0 10 0 0\n\
                         cpu1 80 0 35 450 25 0 0 10 0 0\nctxt 1500\nprocesses 510\n\
                         procs_running 5\nprocs_blocked 2\n";
    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         2000000 kB\n\
                           MemAvailable:    8000000 kB\nBuffers:          500000 kB\n\
                           Cached:          4000000 kB\nSwapCached: 0 kB\nSReclaimable:     500000 kB\n\
                           SwapTotal:       1000000 kB\nSwapFree:         750000 kB\n";
    const DISK1: &str = "   8       0 sda 100 0 2000 50 200 0 4000 80 0 300 400 0 0 0 0\n\
                            8       1 sda1 90 0 1800 45 190 0 3900 70 0 280 380\n\
                            7       0 loop0 5 0 10 1 0 0 0 0 0 1 1\n";
    const DISK2: &str = "   8       0 sda 150 0 3000 70 260 0 5000 100 0 6300 400 0 0 0 0\n\
                            8       1 sda1 140 0 2800 65 250 0 4900 90 0 6280 380\n\
                            7       0 loop0 9 0 20 1 0 0 0 0 0 1 1\n";
    const NET1: &str = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame \
                        compressed multicast|bytes packets errs drop fifo colls carrier compressed\n\
                        lo: 100 10 0 0 0 0 0 0 100 10 0 0 0 0 0 0\n\
                        eth0: 1000 20 1 2 0 0 0 0 500 15 0 1 0 0 0 0\n";
    const NET2: &str = "Inter-|   Receive |  Transmit\n face |bytes\n\
                        lo: 200 20 0 0 0 0 0 0 200 20 0 0 0 0 0 0\n\
                        eth0: 900 30 1 3 0 0 0 0 800 25 0 1 0 0 0 0\n";

    #[test]
    fn parses_proc_stat() {
        let s = parse_proc_stat(STAT1).unwrap();
        assert_eq!(s.cpu.user, 100);
        assert_eq!(s.cpu.steal, 10);
        assert_eq!(s.n_cpus, 2);
        assert_eq!(
            (s.context_switches, s.forks, s.running, s.blocked),
            (1000, 500, 3, 1)
        );
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn parses_meminfo_like_psutil() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 16_000_000 * 1024);
        assert_eq!(m.cached, 4_500_000 * 1024, "Cached + SReclaimable");
        assert_eq!(m.swap_free, 750_000 * 1024);
        let old = parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 5 kB\n")
            .unwrap();
        assert_eq!(old.available, 20 * 1024, "estimated without MemAvailable");
        assert_eq!(parse_meminfo("garbage"), None);
    }

    #[test]
    fn parses_loadavg_diskstats_netdev_cpuinfo() {
        assert_eq!(
            parse_loadavg("0.50 1.25 2.00 3/456 789\n"),
            Some([0.5, 1.25, 2.0])
        );
        assert_eq!(parse_loadavg("x"), None);
        let (name, d) = parse_diskstats_line(DISK1.lines().next().unwrap()).unwrap();
        assert_eq!(name, "sda");
        assert_eq!(
            (d.reads, d.read_bytes, d.writes, d.write_bytes, d.busy_ms),
            (100, 1_024_000, 200, 2_048_000, 300)
        );
        assert_eq!(parse_diskstats_line("8 0 sda 1 2"), None);
        let (name, n) =
            parse_net_dev_line("  eth0: 1000 20 1 2 0 0 0 0 500 15 0 1 0 0 0 0").unwrap();
        assert_eq!(name, "eth0");
        assert_eq!(
            (n.bytes_recv, n.dropin, n.bytes_sent, n.dropout),
            (1000, 2, 500, 1)
        );
        assert_eq!(parse_net_dev_line(" face |bytes packets"), None);
        let info =
            "processor : 0\nphysical id : 0\ncore id : 0\n\nprocessor : 1\nphysical id : 0\n\
                    core id : 0\n\nprocessor : 2\nphysical id : 0\ncore id : 1\n";
        assert_eq!(parse_cpuinfo_physical(info), Some(2));
        assert_eq!(parse_cpuinfo_physical("processor : 0\n"), None);
    }

    /// A fake `/proc` and `/sys` in a temp dir (removed when the guard drops).
    fn fixture_dir(tag: &str) -> (crate::testdir::TempDir, PathBuf, PathBuf) {
        let base = crate::testdir::TempDir::new(&format!("host-{tag}"));
        let proc_ = base.join("proc");
        let sys = base.join("sys");
        std::fs::create_dir_all(proc_.join("net")).unwrap();
        std::fs::create_dir_all(sys.join("block/sda")).unwrap();
        std::fs::create_dir_all(sys.join("block/loop0")).unwrap();
        (base, proc_, sys)
    }

    fn write_set(p: &Path, stat: &str, disk: &str, net: &str) {
        std::fs::write(p.join("stat"), stat).unwrap();
        std::fs::write(p.join("diskstats"), disk).unwrap();
        std::fs::write(p.join("net/dev"), net).unwrap();
        std::fs::write(p.join("meminfo"), MEMINFO).unwrap();
        std::fs::write(p.join("loadavg"), "1.00 2.00 3.00 1/100 42\n").unwrap();
    }

    #[test]
    fn two_readings_give_interval_figures() {
        let (_dir, p, s) = fixture_dir("two");
        write_set(&p, STAT1, DISK1, NET1);
        let mut h = HostCollector::with_roots(&p, &s);
        let watched = [WatchedPath {
            label: "data_directory".into(),
            path: std::env::temp_dir(),
        }];
        assert!(h.collect(&watched).is_none(), "first call is the baseline");
        write_set(&p, STAT2, DISK2, NET2);
        let d = h.collect(&watched).unwrap();
        let cpu = d.get("cpu").unwrap();
        // Deltas: user 60, system 20, idle 100, iowait 10, steal 10 → total 200.
        assert_eq!(cpu.get("user"), Some(&Json::Float(30.0)));
        assert_eq!(cpu.get("idle"), Some(&Json::Float(50.0)));
        assert_eq!(cpu.get("iowait"), Some(&Json::Float(5.0)));
        assert_eq!(cpu.get("steal"), Some(&Json::Float(5.0)));
        assert_eq!(cpu.get("percent"), Some(&Json::Float(45.0)));
        assert_eq!(cpu.get("count"), Some(&Json::UInt(2)));
        assert_eq!(d.get("context_switches"), Some(&Json::UInt(500)));
        let procs = d.get("processes").unwrap();
        assert_eq!(procs.get("running"), Some(&Json::UInt(5)));
        assert_eq!(procs.get("forks"), Some(&Json::UInt(10)));
        let disk = d.get("disk_io").unwrap();
        assert_eq!(disk.get("read_count"), Some(&Json::UInt(50)), "sda only");
        let Some(Json::Array(devs)) = disk.get("devices") else {
            panic!("devices missing")
        };
        assert_eq!(devs.len(), 1, "partitions and loop devices skipped");
        assert_eq!(devs[0].get("busy_time"), Some(&Json::UInt(6000)));
        let net = d.get("network_io").unwrap();
        // eth0 received bytes went backwards (900 < 1000): 0, never negative; lo added 100.
        assert_eq!(net.get("bytes_recv"), Some(&Json::UInt(100)));
        assert_eq!(net.get("bytes_sent"), Some(&Json::UInt(400)));
        assert_eq!(net.get("dropin"), Some(&Json::UInt(1)));
        let mem = d.get("memory").unwrap();
        assert_eq!(mem.get("percent"), Some(&Json::Float(50.0)));
        assert_eq!(
            d.get("load_average"),
            Some(&Json::Array(vec![1.0.into(), 2.0.into(), 3.0.into()]))
        );
        let Some(Json::Array(usage)) = d.get("disk_usage") else {
            panic!("disk_usage missing")
        };
        assert!(matches!(usage[0].get("total"), Some(Json::UInt(t)) if *t > 0));
        assert!(d.get("errors").is_none());
    }

    #[test]
    fn unreadable_files_are_named_not_fatal() {
        let (_dir, p, s) = fixture_dir("missing");
        write_set(&p, STAT1, DISK1, NET1);
        let mut h = HostCollector::with_roots(&p, &s);
        let missing = [WatchedPath {
            label: "spool".into(),
            path: "/nonexistent/bitville".into(),
        }];
        assert!(h.collect(&missing).is_none());
        std::fs::remove_file(p.join("diskstats")).unwrap();
        std::fs::remove_file(p.join("meminfo")).unwrap();
        let d = h.collect(&missing).unwrap();
        let text = d.to_json_string();
        assert!(text.contains("/proc/diskstats"), "{text}");
        assert!(text.contains("/proc/meminfo"), "{text}");
        assert!(d.get("memory").is_none());
        assert!(d.get("cpu").is_some());
        let Some(Json::Array(usage)) = d.get("disk_usage") else {
            panic!("disk_usage missing")
        };
        assert!(usage[0].get("error").is_some());
    }
}
