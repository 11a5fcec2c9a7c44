//! A full disk never kills the spool: the newest payload is dropped with a counted error, the
//! spool keeps working, and appends succeed again once space returns.
//!
//! The fault: a 256 KiB tmpfs mounted over the spool directory (needs root, which the test
//! machines have). Where `mount` is refused, the same code paths are driven by an equivalent
//! fault instead: `RLIMIT_FSIZE` (with `SIGXFSZ` ignored) makes writes past a file size fail
//! with `EFBIG`, which the spool treats like `ENOSPC`. This file holds a single test, so the
//! process-wide limit cannot disturb other tests. The test prints which fault it used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::spool::{Spool, SpoolOptions};

fn payload(i: u64) -> Payload {
    Payload {
        source: Source::ALL[(i % 4) as usize],
        collected_at: 1_700_000_000.0 + i as f64,
        correlation_id: None,
        data: Json::object().field("i", i).field("pad", "x".repeat(2000)),
    }
}

fn options(dir: &Path) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    // The spool's own bound is far above the filesystem's: the disk fills first.
    o.max_bytes = 64 * 1024 * 1024;
    o.segment_bytes = 32 * 1024;
    o.agent = AgentInfo {
        version: "test".into(),
        host: "h".into(),
    };
    o
}

/// Unmounts the tmpfs when the test ends, even on failure.
struct Mount(PathBuf);

impl Drop for Mount {
    /// Unmounts, then removes the (now empty) mount point, so no test run leaves it behind.
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `BV_TEST_NO_MOUNT=1` forces the fallback fault, to check it where mounting works.
fn try_mount_tmpfs(dir: &Path) -> Option<Mount> {
    if std::env::var_os("BV_TEST_NO_MOUNT").is_some() {
        return None;
    }
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

/// Limits every file this process writes to `bytes`; returns the previous limit.
fn limit_file_size(bytes: u64) -> libc::rlimit {
    // SAFETY: plain libc calls with valid pointers to stack values.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        let new = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
        old
    }
}

fn restore_file_size(old: libc::rlimit) {
    // SAFETY: as above.
    unsafe {
        libc::setrlimit(libc::RLIMIT_FSIZE, &old);
    }
}

#[test]
fn a_full_disk_drops_the_newest_with_a_count_and_recovers_when_space_returns() {
    let dir = std::env::temp_dir().join(format!("bv-diskfull-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mount = try_mount_tmpfs(&dir);
    let rlimit = if mount.is_some() {
        println!("fault: 256 KiB tmpfs at {}", dir.display());
        None
    } else {
        println!("fault: mount refused; RLIMIT_FSIZE of 20 KiB per file instead");
        Some(limit_file_size(20 * 1024))
    };

    let spool = Spool::open(options(&dir)).unwrap();
    let mut ok = Vec::new();
    let mut n_failed = 0u64;
    for i in 1..=300 {
        match spool.append(&payload(i)) {
            Ok(seq) => ok.push(seq),
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                assert!(
                    e.to_string().contains("seg-"),
                    "the error names the segment: {e}"
                );
                n_failed += 1;
            }
        }
        let _ = spool.sync();
    }
    assert!(n_failed > 0, "the disk filled up");
    assert!(!ok.is_empty());
    assert!(
        ok.windows(2).all(|w| w[1] == w[0] + 1),
        "a dropped payload takes no seq"
    );

    // Deliver (acknowledge) everything: fully acknowledged segments go, space returns.
    let mut delivered = Vec::new();
    let mut report = None;
    while let Some(r) = spool.peek().unwrap() {
        if !r.report.is_empty() {
            report = Some(r.report);
        }
        delivered.push(r.seq);
        let _ = spool.ack(&r);
    }
    assert_eq!(
        delivered, ok,
        "every payload that was appended is delivered"
    );
    let report = report.expect("the loss was reported");
    assert_eq!(report.write_errors, n_failed);

    // Writes work again, and the numbering continues.
    let mut recovered = 0;
    for i in 301..=305 {
        if spool.append(&payload(i)).is_ok() {
            recovered += 1;
        }
    }
    assert!(recovered > 0, "appends succeed once space returned");
    let next = spool.peek().unwrap().expect("a new record");
    assert_eq!(next.seq, ok.last().unwrap() + 1);
    drop(spool);

    if let Some(old) = rlimit {
        restore_file_size(old);
    }
    drop(mount);
    let _ = fs::remove_dir_all(&dir);
}

/// A tmpfs of `size` at `dir`, or `None` (with the reason printed) where mounting is refused.
fn mount_tmpfs_of(dir: &Path, size: &str) -> Option<Mount> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
        Ok(o) => {
            println!(
                "skipped: mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("skipped: cannot run mount: {e}");
            None
        }
    }
}

#[test]
fn a_bound_above_the_free_space_reclaims_acknowledged_bytes_before_dropping_anything() {
    let dir = std::env::temp_dir().join(format!("bv-diskfull-reclaim-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let Some(_mount) = mount_tmpfs_of(&dir, "1m") else {
        return;
    };
    let mut o = options(&dir);
    // 100 MiB allowed and 4 MiB segments on a 1 MiB filesystem: the active segment alone
    // fills the disk, holding only records the listener already acknowledged.
    o.max_bytes = 100 * 1024 * 1024;
    o.segment_bytes = 4 * 1024 * 1024;
    let spool = Spool::open(o).unwrap();
    let mut delivered = 0u64;
    for i in 1..=3000 {
        let seq = spool
            .append(&payload(i))
            .unwrap_or_else(|e| panic!("append {i} with only acknowledged records held: {e}"));
        let r = spool.peek().unwrap().expect("the record just appended");
        assert_eq!(r.seq, seq);
        spool.ack(&r).unwrap_or_else(|e| println!("ack {seq}: {e}"));
        delivered += 1;
    }
    let stats = spool.stats();
    assert_eq!(delivered, 3000);
    assert_eq!(stats.lost.write_errors, 0, "{stats:?}");
    assert!(stats.bytes < 1024 * 1024, "{stats:?}");
    drop(spool);
    // The numbering survives a restart after the reclaims.
    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(spool.stats().next_seq, 3001);
}
