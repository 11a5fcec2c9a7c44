//! The spool after damage: files are broken on purpose (truncated mid-frame, a checksum bit
//! flipped, a length zeroed, garbage appended, the cursor deleted, a header overwritten, the
//! process killed with SIGKILL), then the spool is reopened and we assert what was recovered
//! and what was counted as lost.

mod common;
use common::spool::{options, payload};
use common::TempDir;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bitville_pg_agent::spool::Spool;

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(name)
}

/// Creates a spool with `n` payloads and closes it.
fn spool_with(dir: &Path, n: u64) {
    let spool = Spool::open(options(dir)).unwrap();
    for i in 1..=n {
        assert_eq!(spool.append(&payload(i)).unwrap(), i);
    }
    spool.sync().unwrap();
}

/// Segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    v.sort();
    v
}

/// Offsets of the frames in a segment, read from the documented format (16-byte header,
/// frames of 17 header bytes + body, the length little-endian in the first 4).
fn frame_offsets(path: &Path) -> Vec<usize> {
    let buf = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut off = 16;
    while off + 17 <= buf.len() {
        offsets.push(off);
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        off += 17 + len;
    }
    offsets
}

/// Drains the spool: every seq it delivers, acknowledging each.
fn drain(spool: &Spool) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(r) = spool.peek().unwrap() {
        seqs.push(r.seq);
        spool.ack(&r).unwrap();
    }
    seqs
}

fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut buf = fs::read(path).unwrap();
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
    fs::write(path, buf).unwrap();
}

fn all_but(n: u64, missing: &[u64]) -> Vec<u64> {
    (1..=n).filter(|s| !missing.contains(s)).collect()
}

#[test]
fn a_torn_tail_is_truncated_and_everything_before_it_is_kept() {
    let dir = temp_dir("torn");
    spool_with(&dir, 30);
    let last = segments(&dir).pop().unwrap();
    let offsets = frame_offsets(&last);
    let full = fs::metadata(&last).unwrap().len();
    // Cut the last frame in the middle, as a power loss during a write would.
    let cut = full - 20;
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let spool = Spool::open(options(&dir)).unwrap();
    let torn_at = *offsets.last().unwrap() as u64;
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        torn_at,
        "truncated to the last good frame"
    );
    assert_eq!(spool.stats().lost.corrupt_bytes, cut - torn_at);
    assert_eq!(
        spool.append(&payload(31)).unwrap(),
        31,
        "seq 30 is never reused"
    );
    assert_eq!(drain(&spool), all_but(31, &[30]));
}

#[test]
fn a_flipped_checksum_bit_skips_that_record_and_counts_it() {
    let dir = temp_dir("crcbit");
    spool_with(&dir, 40);
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "the test needs sealed segments");
    let first = &segs[0];
    let off = frame_offsets(first)[2];
    let mut crc = fs::read(first).unwrap()[off + 4..off + 8].to_vec();
    crc[0] ^= 0x04;
    patch(first, off + 4, &crc);

    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(spool.stats().lost.corrupt_records, 1);
    assert_eq!(drain(&spool), all_but(40, &[3]));
}

#[test]
fn a_flipped_body_bit_in_the_middle_of_the_last_segment_skips_only_that_record() {
    let dir = temp_dir("bodybit");
    spool_with(&dir, 40);
    let last = segments(&dir).pop().unwrap();
    let offsets = frame_offsets(&last);
    assert!(offsets.len() >= 3);
    let victim = offsets[1];
    let mut byte = fs::read(&last).unwrap()[victim + 30];
    byte ^= 0x40;
    patch(&last, victim + 30, &[byte]);
    let first_in_last = 40 - offsets.len() as u64 + 1;

    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(spool.stats().lost.corrupt_records, 1);
    assert_eq!(drain(&spool), all_but(40, &[first_in_last + 1]));
}

#[test]
fn a_zeroed_length_skips_to_the_next_valid_frame() {
    let dir = temp_dir("zerolen");
    spool_with(&dir, 40);
    let first = segments(&dir)[0].clone();
    let off = frame_offsets(&first)[1];
    patch(&first, off, &[0, 0, 0, 0]);

    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(spool.stats().lost.corrupt_records, 1);
    assert_eq!(drain(&spool), all_but(40, &[2]));
}

#[test]
fn garbage_appended_to_a_sealed_segment_is_skipped_and_the_rest_delivered() {
    let dir = temp_dir("garbage-sealed");
    spool_with(&dir, 40);
    let first = segments(&dir)[0].clone();
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    OpenOptions::new()
        .append(true)
        .open(&first)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let spool = Spool::open(options(&dir)).unwrap();
    let lost = spool.stats().lost;
    assert_eq!(lost.corrupt_records, 0, "no record was in the garbage");
    assert_eq!(lost.corrupt_bytes, 1000);
    assert_eq!(drain(&spool), (1..=40).collect::<Vec<_>>());
}

#[test]
fn garbage_appended_to_the_last_segment_is_truncated_and_nothing_is_lost() {
    let dir = temp_dir("garbage-last");
    spool_with(&dir, 10);
    let last = segments(&dir).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&[0xA5; 333])
        .unwrap();

    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(fs::metadata(&last).unwrap().len(), len);
    assert_eq!(spool.stats().lost.corrupt_bytes, 333);
    assert_eq!(spool.append(&payload(11)).unwrap(), 11);
    assert_eq!(drain(&spool), (1..=11).collect::<Vec<_>>());
}

#[test]
fn a_deleted_cursor_resends_what_is_still_spooled_and_keeps_the_numbering() {
    let dir = temp_dir("nocursor");
    {
        let spool = Spool::open(options(&dir)).unwrap();
        for i in 1..=40 {
            spool.append(&payload(i)).unwrap();
        }
        for _ in 0..30 {
            let r = spool.peek().unwrap().unwrap();
            spool.ack(&r).unwrap();
        }
    }
    fs::remove_file(dir.join("cursor")).unwrap();

    let spool = Spool::open(options(&dir)).unwrap();
    let seqs = drain(&spool);
    // Fully acknowledged segments were deleted; the rest of the partly acknowledged one is
    // sent again (duplicates are allowed, loss is not).
    assert!(seqs.first().copied().unwrap() <= 31, "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), 40);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(spool.append(&payload(41)).unwrap(), 41);
}

#[test]
fn an_unreadable_cursor_is_treated_like_a_missing_one() {
    let dir = temp_dir("badcursor");
    spool_with(&dir, 5);
    fs::write(dir.join("cursor"), "garbage\n").unwrap();
    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(drain(&spool), (1..=5).collect::<Vec<_>>());
    assert_eq!(spool.append(&payload(6)).unwrap(), 6);
}

#[test]
fn a_damaged_segment_header_still_yields_its_frames() {
    let dir = temp_dir("magic");
    spool_with(&dir, 40);
    let first = segments(&dir)[0].clone();
    patch(&first, 0, b"XXXXXXXX");
    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(drain(&spool), (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_segment_of_a_newer_format_is_moved_aside_unchanged_and_the_spool_starts() {
    let dir = temp_dir("newer");
    spool_with(&dir, 3);
    let first = segments(&dir)[0].clone();
    patch(&first, 8, &99u32.to_le_bytes());
    let before = fs::read(&first).unwrap();
    let spool = Spool::open(options(&dir)).expect("a foreign segment does not stop the start");
    let aside = PathBuf::from(format!("{}.bad", first.display()));
    assert!(!first.exists());
    assert_eq!(fs::read(&aside).unwrap(), before, "kept, byte for byte");
    assert_eq!(spool.append(&payload(4)).unwrap(), 4, "numbering goes on");
    let r = spool.peek().unwrap().unwrap();
    assert_eq!(r.seq, 4);
    assert_eq!(
        r.report.corrupt_records, 3,
        "the records moved aside are reported"
    );
    assert!(r.body.contains("\"corrupt_records\":3"), "{}", r.body);
}

#[test]
fn an_interrupted_segment_creation_is_removed() {
    let dir = temp_dir("short");
    spool_with(&dir, 3);
    let stub = dir.join("seg-00000000000000000099.spool");
    fs::write(&stub, b"BVSP").unwrap();
    let spool = Spool::open(options(&dir)).unwrap();
    assert!(!stub.exists());
    assert_eq!(drain(&spool), vec![1, 2, 3]);
}

/// The child half of the SIGKILL test: appends forever, printing each seq once `append`
/// returned.
fn appender(dir: &Path) -> ! {
    let spool = Spool::open(options(dir)).expect("child opens the spool");
    let mut out = std::io::stdout().lock();
    let mut i = 0;
    loop {
        i += 1;
        let seq = spool.append(&payload(i)).expect("child append");
        writeln!(out, "{seq}").unwrap();
        out.flush().unwrap();
        if i % 7 == 0 {
            spool.sync().unwrap();
        }
    }
}

#[test]
fn sigkill_during_appends_loses_no_appended_record() {
    if let Ok(dir) = std::env::var("BV_SPOOL_APPENDER_DIR") {
        appender(Path::new(&dir));
    }
    let dir = temp_dir("sigkill");
    let mut acked_upto = 0;
    let mut reported_max = 0;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_during_appends_loses_no_appended_record",
                "--nocapture",
            ])
            .env("BV_SPOOL_APPENDER_DIR", dir.as_os_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wanted = 20 + (x % 150) as usize;
        let mut seen = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while seen.len() < wanted {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Ok(seq) = line.trim().parse::<u64>() {
                        seen.push(seq);
                    }
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(seen.len(), wanted, "round {round}: the child appended");
        reported_max = reported_max.max(*seen.last().unwrap());

        // Every seq the child reported as appended is still there, in order, none reused.
        let spool = Spool::open(options(&dir)).unwrap();
        let mut spooled = Vec::new();
        let mut to_ack = (x % 40) as usize;
        while let Some(r) = spool.peek().unwrap() {
            spooled.push(r.seq);
            if to_ack > 0 {
                spool.ack(&r).unwrap();
                acked_upto = r.seq;
                to_ack -= 1;
            } else {
                break;
            }
        }
        drop(spool);
        let spool = Spool::open(options(&dir)).unwrap();
        let stats = spool.stats();
        assert_eq!(stats.acked_seq, acked_upto, "round {round}");
        assert!(
            stats.next_seq > reported_max,
            "round {round}: seqs are never reused"
        );
        assert!(
            stats.n_pending >= reported_max - acked_upto,
            "round {round}: {stats:?}"
        );
        assert_eq!(stats.lost.corrupt_records, 0);
        let first = spool.peek().unwrap().map(|r| r.seq);
        assert!(
            first.map_or(true, |f| f == acked_upto + 1),
            "round {round}: {first:?}"
        );
    }
    // A final drain delivers everything not acknowledged, in order.
    let spool = Spool::open(options(&dir)).unwrap();
    let rest = drain(&spool);
    assert_eq!(rest.first().copied(), Some(acked_upto + 1));
    assert!(rest.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(*rest.last().unwrap() >= reported_max);
}

#[test]
fn a_huge_foreign_file_named_like_a_segment_is_not_read() {
    let dir = temp_dir("huge");
    spool_with(&dir, 3);
    let n_before = segments(&dir).len();
    let huge = dir.join("seg-00000000000000000099.spool");
    // Sparse: costs no disk, but reading it into memory would cost a gigabyte.
    fs::File::create(&huge)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let spool = Spool::open(options(&dir)).unwrap();
    assert_eq!(spool.stats().n_segments, n_before);
    assert_eq!(drain(&spool), vec![1, 2, 3]);
    // New segments get names above it, never colliding with it.
    assert_eq!(spool.append(&payload(4)).unwrap(), 4);
    assert!(dir.join("seg-00000000000000000100.spool").exists());
    let aside = dir.join("seg-00000000000000000099.spool.bad");
    assert_eq!(
        fs::metadata(&aside).unwrap().len(),
        (1 << 30) + 1,
        "moved aside, not read"
    );
    let _ = fs::remove_dir_all(&dir);
}
