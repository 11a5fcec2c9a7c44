//! Every call into `libc` that needs `unsafe`, each behind a small safe function.
//!
//! Invariants: this is the only module of the crate with `unsafe` code; each block carries a
//! `// SAFETY:` comment saying why the call is sound. The functions only translate (C types and
//! return codes to Rust values and `io::Error`s); what to do with the result is the caller's job.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in path"))
}

/// `statvfs(3)` of `path`: the figures of the filesystem that holds it.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = c_path(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value and the call fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated string and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn sysconf_positive(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`); `None` when the call fails.
pub fn clock_ticks_per_sec() -> Option<u64> {
    sysconf_positive(libc::_SC_CLK_TCK)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`); `None` when the call fails.
pub fn page_size() -> Option<u64> {
    sysconf_positive(libc::_SC_PAGESIZE)
}

/// `getrusage(RUSAGE_SELF)`: the resource use of the whole process (all threads); `None` when
/// the call fails.
pub fn rusage_self() -> Option<libc::rusage> {
    // SAFETY: rusage is plain data filled in by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage; RUSAGE_SELF covers all threads of the process.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0;
    ok.then_some(ru)
}

/// Raises the soft limit of open file descriptors (`RLIMIT_NOFILE`) to the hard limit and
/// returns the soft limit in force afterwards; `None` when the limit cannot be read. A failed
/// raise leaves the old limit, which is returned.
pub fn raise_nofile_soft_limit() -> Option<u64> {
    // SAFETY: rlimit is plain data filled in by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid pointer to an rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur as u64)
}

/// The CPU time the calling thread has used (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`);
/// `None` when the clock cannot be read.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    // SAFETY: timespec is plain data filled in by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a timespec; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

/// At most `n` malloc arenas (`mallopt(M_ARENA_MAX)`). Call once at start, before the threads.
/// No-op outside glibc.
pub fn limit_malloc_arenas(n: libc::c_int) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Returns freed heap memory to the operating system (`malloc_trim(0)`). No-op outside glibc.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: the raw return value, 0 when the lock is taken, otherwise -1
/// with the reason in `errno` (read it with `io::Error::last_os_error()` at once; `EWOULDBLOCK`
/// means another process holds the lock).
pub fn flock_exclusive_nonblocking(fd: RawFd) -> libc::c_int {
    // SAFETY: flock touches no memory; an fd that is not open only gives EBADF.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
}

/// Makes `file` the process's standard error (`dup2` onto fd 2).
pub fn redirect_stderr(file: &File) -> io::Result<()> {
    // SAFETY: both descriptors are valid (`file` is borrowed open); dup2 atomically replaces fd 2.
    let rc = unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The host name as `gethostname(2)` gives it (the bytes before the NUL).
pub fn hostname() -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(buf[..end].to_vec())
}

/// Whether a process with this pid exists (`kill(pid, 0)`; one of another user counts, EPERM).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks for existence and permission.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// A set of signals, built by [`block_signals`] and waited for with [`wait_signal`].
pub struct SignalSet(libc::sigset_t);

/// Blocks `signals` in the calling thread and every thread it spawns later
/// (`pthread_sigmask(SIG_BLOCK)`), and returns them as a set to wait for.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<SignalSet> {
    // SAFETY: sigset_t is plain data; it is initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write to it and the thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(SignalSet(set))
}

/// Waits (`sigwait`) until one of the signals in `set` is pending and returns its number.
pub fn wait_signal(set: &SignalSet) -> io::Result<libc::c_int> {
    let mut sig: libc::c_int = 0;
    // SAFETY: the set was built by `block_signals`; sigwait writes the signal number to `sig`.
    let rc = unsafe { libc::sigwait(&set.0, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Creates a FIFO at `path` (`mkfifo`), for tests that prove a FIFO never hangs a reader.
#[cfg(test)]
pub fn mkfifo(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_answer_on_this_host() {
        assert!(page_size().is_some_and(|p| p >= 4096 && p.is_power_of_two()));
        assert!(clock_ticks_per_sec().is_some_and(|t| t > 0));
        assert!(statvfs(Path::new("/")).unwrap().f_blocks > 0);
        assert!(statvfs(Path::new("/no/such/path")).is_err());
        assert!(rusage_self().is_some());
        assert!(!hostname().unwrap().is_empty());
        assert!(process_exists(std::process::id() as i32));
        assert!(!process_exists(0));
        let soft = raise_nofile_soft_limit().unwrap();
        assert!(soft >= 64, "{soft}");
        assert_eq!(
            raise_nofile_soft_limit(),
            Some(soft),
            "already at the hard limit"
        );
        let t0 = thread_cpu_time().unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(thread_cpu_time().unwrap() > t0, "{x}");
    }

    #[test]
    fn flock_is_exclusive_between_open_files() {
        let dir = crate::testdir::TempDir::new("sys-lock");
        let p = dir.join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert_eq!(flock_exclusive_nonblocking(a.as_raw_fd()), 0);
        assert_eq!(flock_exclusive_nonblocking(b.as_raw_fd()), -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EWOULDBLOCK)
        );
        drop((a, b));
    }
}
