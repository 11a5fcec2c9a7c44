//! The table of damaged spool files: each damage is reopened, and what must hold is asserted.
//! The spool starts (never a fatal error for what it finds on disk), keeps every record it can
//! still read, and every sequence number the listener will never see is explained by
//! `data.agent.dropped.corrupt_records` in the record right after the gap.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitville_pg_agent::spool::Spool;
use common::spool::{options, payload};
use common::TempDir;

/// A spool with records 1..=n of which 1..=acked are acknowledged; closed again.
fn spool_with(dir: &Path, n: u64, acked: u64) {
    let spool = Spool::open(options(dir)).unwrap();
    for i in 1..=n {
        assert_eq!(spool.append(&payload(i)).unwrap(), i);
    }
    for _ in 0..acked {
        let r = spool.peek().unwrap().unwrap();
        spool.ack(&r).unwrap();
    }
    spool.sync().unwrap();
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    v.sort();
    v
}

/// What a listener sees when the spool is drained: the seqs delivered, and the records
/// reported lost to damage. Asserts the rule: a gap in the seqs is explained by the report of
/// the record after it.
fn drain(spool: &Spool, acked_before: u64) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut reported = 0;
    let mut last = acked_before;
    while let Some(r) = spool.peek().unwrap() {
        let gap = r.seq - last - 1;
        assert!(
            r.report.corrupt_records >= gap,
            "seq {} follows {last}: a gap of {gap} with a report of {}",
            r.seq,
            r.report.corrupt_records
        );
        if r.report.corrupt_records > 0 {
            assert!(r.body.contains("\"dropped\""), "{}", r.body);
        }
        reported += r.report.corrupt_records;
        last = r.seq;
        seqs.push(r.seq);
        spool.ack(&r).unwrap();
    }
    (seqs, reported)
}

fn cursor_text(dir: &Path) -> String {
    fs::read_to_string(dir.join("cursor")).unwrap()
}

#[test]
fn an_acked_above_next_seq_keeps_every_pending_record() {
    // The campaign's case: one digit of `acked` flipped, old cursor format (no checksum).
    let dir = TempDir::new("cursor-impossible");
    spool_with(dir.path(), 25, 10);
    fs::write(
        dir.path().join("cursor"),
        "bitville-spool-cursor 1\nacked 95\nnext_seq 26\n",
    )
    .unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let (seqs, _) = drain(&spool, spool.stats().acked_seq);
    assert_eq!(seqs.last(), Some(&25));
    assert!(
        seqs.contains(&11),
        "every record after the last real ack stays: {seqs:?}"
    );
    assert_eq!(spool.append(&payload(26)).unwrap(), 26, "numbering goes on");
}

#[test]
fn a_flipped_digit_fails_the_cursor_checksum_and_pending_records_stay() {
    let dir = TempDir::new("cursor-crc");
    spool_with(dir.path(), 25, 10);
    let text = cursor_text(dir.path());
    assert!(
        text.contains("\ncrc "),
        "the cursor carries a checksum: {text}"
    );
    // A plausible value (below next_seq) that only the checksum can catch.
    fs::write(
        dir.path().join("cursor"),
        text.replace("acked 10", "acked 19"),
    )
    .unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let (seqs, reported) = drain(&spool, spool.stats().acked_seq);
    assert!(
        (11..=25).all(|s| seqs.contains(&s)),
        "records 11..=25 are still delivered: {seqs:?}"
    );
    assert_eq!(reported, 0, "nothing was lost");
}

#[test]
fn an_old_cursor_without_checksum_still_loads() {
    let dir = TempDir::new("cursor-old");
    spool_with(dir.path(), 5, 2);
    fs::write(
        dir.path().join("cursor"),
        "bitville-spool-cursor 1\nacked 2\nnext_seq 6\nunreported 0 0 0 0 0 0 0 0 0 0\n",
    )
    .unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    assert_eq!(spool.stats().acked_seq, 2);
    assert_eq!(drain(&spool, 2), (vec![3, 4, 5], 0));
}

/// Which segment of a spool of 40 records a damage case cuts, and to what length.
#[derive(Clone, Copy)]
enum Segment {
    First,
    Second,
    Last,
}

#[derive(Clone, Copy)]
enum Cut {
    ToZero,
    ToHalf,
}

#[test]
fn an_emptied_or_truncated_segment_is_reported_as_a_gap() {
    // (case, segment, cut, a record appended after the reopen)
    let cases = [
        (
            "a zero-length sealed segment",
            Segment::Second,
            Cut::ToZero,
            false,
        ),
        (
            "a truncated sealed segment",
            Segment::First,
            Cut::ToHalf,
            false,
        ),
        // Reported with the next record: the one appended after the reopen.
        ("an emptied last segment", Segment::Last, Cut::ToZero, true),
    ];
    for (case, segment, cut, append) in cases {
        let dir = TempDir::new("seg-cut");
        spool_with(dir.path(), 40, 0);
        let segs = segments(dir.path());
        assert!(segs.len() >= 3, "{case}: {segs:?}");
        let seg = match segment {
            Segment::First => &segs[0],
            Segment::Second => &segs[1],
            Segment::Last => segs.last().unwrap(),
        };
        let len = match cut {
            Cut::ToZero => 0,
            Cut::ToHalf => fs::metadata(seg).unwrap().len() / 2,
        };
        fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(len)
            .unwrap();
        let spool = Spool::open(options(dir.path())).unwrap();
        let mut total = 40;
        if append {
            total += 1;
            assert_eq!(
                spool.append(&payload(total)).unwrap(),
                total,
                "{case}: no number is reused"
            );
        }
        let (seqs, reported) = drain(&spool, 0);
        assert_eq!(
            seqs.len() as u64 + reported,
            total,
            "{case}: {seqs:?} + {reported} reported"
        );
        assert!(reported > 0, "{case}: the lost records are reported");
        if append {
            assert_eq!(seqs.last(), Some(&total), "{case}");
        }
    }
}

#[test]
fn a_report_for_a_gap_survives_a_dead_letter_of_the_record_after_it() {
    let dir = TempDir::new("gap-dead-letter");
    spool_with(dir.path(), 40, 0);
    let segs = segments(dir.path());
    fs::File::create(&segs[0]).unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let r = spool.peek().unwrap().unwrap();
    assert!(r.gap > 0);
    spool.dead_letter(&r, &r.body, 400, "bad").unwrap();
    let next = spool.peek().unwrap().unwrap();
    assert_eq!(
        next.report.corrupt_records, r.gap,
        "the gap is reported with the next one"
    );
    spool.ack(&next).unwrap();
    let after = spool.peek().unwrap().unwrap();
    assert!(after.report.is_empty(), "and only once: {:?}", after.report);
}

#[test]
fn one_damaged_header_byte_does_not_stop_the_start() {
    for offset in [0usize, 8, 9, 11] {
        let dir = TempDir::new(&format!("hdr-{offset}"));
        spool_with(dir.path(), 40, 0);
        let seg = segments(dir.path())[1].clone();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[offset] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        let spool = Spool::open(options(dir.path()))
            .unwrap_or_else(|e| panic!("byte {offset} of a header: {e}"));
        let (seqs, reported) = drain(&spool, 0);
        assert_eq!(seqs.len() as u64 + reported, 40, "byte {offset}");
        assert!(spool.append(&payload(41)).is_ok());
    }
}

#[test]
fn stray_directories_and_special_files_under_spool_names_are_moved_aside() {
    let dir = TempDir::new("strays");
    spool_with(dir.path(), 5, 0);
    let d = dir.path();
    fs::create_dir(d.join("seg-00000000000000000050.spool")).unwrap();
    fs::create_dir(d.join("cursor.tmp")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("seg-00000000000000000060.spool")).unwrap();
    let fifo =
        std::ffi::CString::new(d.join("seg-00000000000000000070.spool").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let start = Instant::now();
    let spool = Spool::open(options(d)).expect("strays do not stop the start");
    // Generous: reading /dev/zero or waiting on the FIFO would never end.
    assert!(start.elapsed() < Duration::from_secs(20));
    for name in [
        "seg-00000000000000000050.spool",
        "cursor.tmp",
        "seg-00000000000000000060.spool",
        "seg-00000000000000000070.spool",
    ] {
        assert!(!d.join(name).exists(), "{name} is out of the way");
        assert!(
            fs::symlink_metadata(d.join(format!("{name}.bad"))).is_ok(),
            "{name} is kept aside"
        );
    }
    assert_eq!(drain(&spool, 0), (vec![1, 2, 3, 4, 5], 0));
    // The cursor can be written again (cursor.tmp was a directory).
    spool.sync().unwrap();
    assert!(cursor_text(d).contains("acked 5"));
    assert_eq!(spool.append(&payload(6)).unwrap(), 6);
}

/// The largest resident set of this process so far, in KiB.
fn max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss
    }
}

#[test]
fn a_large_sparse_segment_is_scanned_in_bounded_memory() {
    let dir = TempDir::new("sparse");
    spool_with(dir.path(), 5, 0);
    // Zeros after a valid header: a segment of 64 MiB that holds nothing.
    let seg = dir.path().join("seg-00000000000000000090.spool");
    let mut header = fs::read(&segments(dir.path())[0]).unwrap();
    header.truncate(16);
    fs::write(&seg, &header).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let before = max_rss_kib();
    let spool = Spool::open(options(dir.path())).unwrap();
    let grown_mib = (max_rss_kib() - before) / 1024;
    println!("scanning a 64 MiB sparse segment: peak RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 40,
        "scanning a 64 MiB segment grew the resident set by {grown_mib} MiB"
    );
    assert_eq!(drain(&spool, 0), (vec![1, 2, 3, 4, 5], 0));
}
