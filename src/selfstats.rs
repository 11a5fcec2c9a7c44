//! The agent's own cost: CPU time and memory of this process, so nobody has to take "it never
//! harms the database server" on faith. Read with `getrusage` and `/proc/self/statm`; both are
//! cheap (no parsing of large files).

use std::time::Duration;

/// This process's resource use so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfUsage {
    /// CPU time in user mode.
    pub cpu_user: Duration,
    /// CPU time in kernel mode.
    pub cpu_system: Duration,
    /// Resident memory now, in bytes (0 when /proc is not readable).
    pub rss_bytes: u64,
    /// Highest resident memory so far, in bytes.
    pub peak_rss_bytes: u64,
}

impl SelfUsage {
    /// User plus system CPU time.
    pub fn cpu_total(&self) -> Duration {
        self.cpu_user + self.cpu_system
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

/// Reads this process's usage now.
pub fn usage() -> SelfUsage {
    let mut u = SelfUsage::default();
    if let Some(ru) = crate::sys::rusage_self() {
        u.cpu_user = timeval(ru.ru_utime);
        u.cpu_system = timeval(ru.ru_stime);
        u.peak_rss_bytes = (ru.ru_maxrss.max(0) as u64) * 1024;
    }
    u.rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| parse_statm_resident(&s))
        .map_or(0, |pages| pages * crate::collect::procfs::page_size());
    u
}

/// Keeps glibc's allocator from holding memory the agent no longer uses: at most two malloc
/// arenas (glibc otherwise gives each of the agent's threads its own, each keeping its freed
/// memory). Call once at start, before the threads. No-op with musl (the static binary).
pub fn limit_malloc_arenas() {
    crate::sys::limit_malloc_arenas(2);
}

/// Returns freed heap memory to the operating system (glibc keeps it otherwise): called after
/// each collection cycle, whose statements snapshot briefly needs a few MB on a big server.
/// Costs well under a millisecond. No-op with musl, which returns memory by itself.
pub fn release_free_memory() {
    crate::sys::malloc_trim();
}

/// The resident page count, the second field of `/proc/<pid>/statm`.
fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_is_the_second_field() {
        assert_eq!(parse_statm_resident("1000 250 100 1 0 300 0\n"), Some(250));
        assert_eq!(parse_statm_resident("garbage"), None);
    }

    #[test]
    fn this_process_uses_some_memory_and_cpu() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let u = usage();
        assert!(
            u.rss_bytes > 0 && u.peak_rss_bytes >= u.rss_bytes / 2,
            "{u:?}"
        );
        assert!(u.cpu_total() > Duration::ZERO, "{u:?}");
    }
}
