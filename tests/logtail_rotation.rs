//! File-based tests of the tailer: rotation by rename, by copytruncate and to new file names
//! (directory and `current_logfiles`) while a writer thread appends, and exact resumption after a
//! stop. Every test checks that each line written arrives exactly once, in order.

mod common;
use common::TempDir;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitville_pg_agent::logtail::tail::{FilePattern, Follow, TailConfig, Tailer};
use bitville_pg_agent::logtail::{EntryParser, Format};

fn line(i: usize) -> String {
    format!(
        "2024-05-01 12:00:00.000 UTC [{}] LOG:  line {i:06}\n",
        100 + i % 7
    )
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn config(follow: Follow, state: Option<&Path>) -> TailConfig {
    let mut c = TailConfig::new(follow, state.map(Path::to_path_buf));
    c.start_at_end = false;
    c.settle = Duration::ZERO;
    c.max_batch_entries = 97;
    c.read_chunk = 4096;
    c
}

fn parser() -> EntryParser {
    EntryParser::new(Format::Stderr, "%m [%p] ")
}

/// Runs `writer` on a thread while polling `tailer`, committing after each batch; returns the
/// messages in the order they arrived. `seen` lets the writer wait for the reader's progress.
fn run_concurrently(
    mut tailer: Tailer,
    total: usize,
    writer: impl FnOnce(Arc<AtomicUsize>) + Send + 'static,
) -> Vec<String> {
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (seen2, done2) = (seen.clone(), done.clone());
    let handle = std::thread::spawn(move || {
        writer(seen2);
        done2.store(true, Ordering::SeqCst);
    });
    let mut got = Vec::new();
    // A safety net against a hang, not a timing assertion: the checks below decide.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle_after_done = 0;
    while Instant::now() < deadline {
        let batch = tailer.poll();
        let n = batch.entries.len();
        for e in batch.entries {
            got.push(e.message);
        }
        if let Some(p) = &batch.position {
            tailer.commit(p).unwrap();
        }
        seen.store(got.len(), Ordering::SeqCst);
        if n == 0 {
            if done.load(Ordering::SeqCst) {
                idle_after_done += 1;
                if idle_after_done > 3 && got.len() >= total {
                    break;
                }
                if idle_after_done > 200 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    handle.join().unwrap();
    got
}

/// Compares without printing thousands of lines: the first difference and the lengths.
#[track_caller]
fn assert_same(got: &[String], want: &[String]) {
    let first_diff = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        first_diff.is_none() && got.len() == want.len(),
        "got {} lines, want {}; first difference at {:?}: got {:?}",
        got.len(),
        want.len(),
        first_diff,
        first_diff.map(|i| &got[i.saturating_sub(2)..(i + 3).min(got.len())])
    );
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("line {i:06}")).collect()
}

/// Waits until the reader has received `n` lines. Before rotating a file whose first line is `k`,
/// wait for `k + 1` lines: the reader then got line `k`, so it has that very file open (with `k`
/// only, it may still be on the file before, and the rotation would be its second one within a
/// poll, or the first file would be renamed before the reader ever opened it).
fn wait_for(seen: &AtomicUsize, n: usize) {
    while seen.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rename_rotation_while_writing_loses_and_repeats_nothing() {
    let dir = TempDir::new("rename");
    let log = dir.path().join("postgresql.log");
    append(&log, &line(0));
    let tailer = Tailer::new(
        config(Follow::Path(log.clone()), Some(dir.path())),
        parser(),
    );
    let total = 3000;
    let log2 = log.clone();
    let got = run_concurrently(tailer, total, move |seen| {
        for i in 1..total {
            if i % 700 == 0 {
                // Do not rotate twice before the reader reached the previous file: with rename
                // rotation the middle file would have no name the tailer can know.
                wait_for(&seen, i - 700 + 1);
                fs::rename(&log2, log2.with_extension(format!("log.{i}"))).unwrap();
            }
            append(&log2, &line(i));
        }
    });
    assert_same(&got, &expected(total));
}

#[test]
fn copytruncate_while_writing_reads_the_rest_from_the_copy() {
    let dir = TempDir::new("copytruncate");
    let log = dir.path().join("postgresql.log");
    append(&log, &line(0));
    let tailer = Tailer::new(
        config(Follow::Path(log.clone()), Some(dir.path())),
        parser(),
    );
    let total = 3000;
    let log2 = log.clone();
    let lock = Arc::new(Mutex::new(()));
    let got = run_concurrently(tailer, total, move |seen| {
        for i in 1..total {
            if i % 800 == 0 {
                // Two copytruncates before the reader saw this generation would leave it only in
                // the second copy, which the tailer cannot know.
                wait_for(&seen, i - 800 + 1);
                // logrotate's copytruncate: copy, then truncate in place. The lock closes the
                // window between the two, which copytruncate itself cannot.
                let _g = lock.lock().unwrap();
                fs::copy(&log2, log2.with_extension(format!("log.{i}"))).unwrap();
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&log2)
                    .unwrap();
            }
            let _g = lock.lock().unwrap();
            append(&log2, &line(i));
        }
    });
    assert_same(&got, &expected(total));
}

#[test]
fn new_file_rotation_in_a_directory_and_via_current_logfiles() {
    for use_current in [false, true] {
        let dir = TempDir::new("newfile");
        let logdir = dir.path().join("log");
        fs::create_dir_all(&logdir).unwrap();
        let first = logdir.join("postgresql-0000.log");
        append(&first, &line(0));
        let current = dir.path().join("current_logfiles");
        fs::write(&current, "stderr log/postgresql-0000.log\n").unwrap();
        let pattern = FilePattern::from_log_filename("postgresql-%H%M.log", Format::Stderr);
        let follow = if use_current {
            Follow::CurrentLogfiles {
                data_dir: dir.path().to_path_buf(),
                format: Format::Stderr,
                fallback: None,
            }
        } else {
            Follow::Directory {
                dir: logdir.clone(),
                pattern,
            }
        };
        let state = dir.path().join("state");
        let tailer = Tailer::new(config(follow, Some(&state)), parser());
        let total = 2500;
        let (logdir2, dir2) = (logdir.clone(), dir.path().to_path_buf());
        let got = run_concurrently(tailer, total, move |seen| {
            let mut file = first;
            for i in 1..total {
                if i % 600 == 0 {
                    // The same: the middle file would be skipped for the newest one.
                    wait_for(&seen, i - 600 + 1);
                    // PostgreSQL's own rotation: a new file, then current_logfiles updated
                    // atomically; the old file is never written again.
                    let name = format!("postgresql-{:04}.log", i);
                    file = logdir2.join(&name);
                    append(&file, "");
                    let tmp = dir2.join("current_logfiles.tmp");
                    fs::write(&tmp, format!("stderr log/{name}\n")).unwrap();
                    fs::rename(&tmp, dir2.join("current_logfiles")).unwrap();
                }
                append(&file, &line(i));
            }
        });
        assert_same(&got, &expected(total));
    }
}

/// Polls until nothing new arrives; returns the messages.
fn drain(t: &mut Tailer, commit: bool) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let b = t.poll();
        if b.entries.is_empty() && !b.more {
            return got;
        }
        got.extend(b.entries.into_iter().map(|e| e.message));
        if commit {
            if let Some(p) = &b.position {
                t.commit(p).unwrap();
            }
        }
    }
}

#[test]
fn restart_resumes_exactly_even_across_a_rotation_while_stopped() {
    let dir = TempDir::new("restart");
    let log = dir.path().join("postgresql.log");
    let text: String = (0..10).map(line).collect();
    append(&log, &text);
    let cfg = config(Follow::Path(log.clone()), Some(dir.path()));
    let mut t = Tailer::new(cfg.clone(), parser());
    assert_same(&drain(&mut t, true), &expected(10));
    drop(t);
    // While the agent is stopped: more lines, a rename rotation, more lines in the new file.
    append(&log, &(10..15).map(line).collect::<String>());
    fs::rename(&log, dir.path().join("postgresql.log.1")).unwrap();
    append(&log, &(15..20).map(line).collect::<String>());
    let mut t = Tailer::new(cfg.clone(), parser());
    assert_same(&drain(&mut t, true), &expected(20)[10..]);
    // A batch polled but not committed is delivered again after a restart (at-least-once).
    append(&log, &(20..25).map(line).collect::<String>());
    let mut t = Tailer::new(cfg.clone(), parser());
    assert_same(&drain(&mut t, false), &expected(25)[20..]);
    drop(t);
    let mut t = Tailer::new(cfg, parser());
    assert_same(&drain(&mut t, true), &expected(25)[20..]);
}

#[test]
fn restart_inside_a_multi_line_entry_delivers_it_once_whole() {
    let dir = TempDir::new("multiline");
    let log = dir.path().join("postgresql.log");
    let mut cfg = config(Follow::Path(log.clone()), Some(dir.path()));
    // The entry in progress is only emitted when the next one starts.
    cfg.settle = Duration::from_secs(3600);
    append(
        &log,
        &format!(
            "{}{}",
            line(0),
            "2024-05-01 12:00:00.000 UTC [9] LOG:  statement: SELECT 1,\n"
        ),
    );
    let mut t = Tailer::new(cfg.clone(), parser());
    assert_same(&drain(&mut t, true), &expected(1));
    drop(t);
    append(&log, &format!("\t2\n{}", line(1)));
    let mut t = Tailer::new(cfg, parser());
    let b = t.poll();
    let msgs: Vec<_> = b.entries.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, vec!["statement: SELECT 1,\n2"]);
    assert_eq!(b.entries[0].query(), Some("SELECT 1,\n2"));
}

#[test]
fn first_start_at_end_skips_history_and_missing_file_is_retried() {
    let dir = TempDir::new("missing");
    let log = dir.path().join("later.log");
    let mut cfg = config(Follow::Path(log.clone()), Some(dir.path()));
    cfg.start_at_end = true;
    let mut t = Tailer::new(cfg, parser());
    let b = t.poll();
    assert!(b.entries.is_empty());
    assert!(b.position.is_none());
    append(&log, &line(0));
    // The file now exists: first start, so history is skipped.
    assert!(drain(&mut t, true).is_empty());
    append(&log, &line(1));
    assert_eq!(drain(&mut t, true), vec!["line 000001".to_string()]);
}

#[test]
fn truncation_without_a_copy_reads_the_new_content() {
    let dir = TempDir::new("trunc");
    let log = dir.path().join("postgresql.log");
    append(&log, &(0..5).map(line).collect::<String>());
    let mut t = Tailer::new(config(Follow::Path(log.clone()), None), parser());
    assert_eq!(drain(&mut t, false).len(), 5);
    fs::write(&log, line(5)).unwrap();
    assert_eq!(drain(&mut t, false), vec!["line 000005".to_string()]);
    // Rewritten past the old offset before the tailer looked: the first bytes tell.
    let text: String = (6..20).map(line).collect();
    fs::write(&log, text).unwrap();
    assert_same(&drain(&mut t, false), &expected(20)[6..]);
}

#[test]
fn overlong_lines_are_bounded_and_marked() {
    let dir = TempDir::new("long");
    let log = dir.path().join("postgresql.log");
    let mut cfg = config(Follow::Path(log.clone()), None);
    cfg.max_line = 10_000;
    let big = format!(
        "2024-05-01 12:00:00.000 UTC [1] LOG:  statement: SELECT '{}'\n{}",
        "x".repeat(300_000),
        line(1)
    );
    append(&log, &big);
    let mut t = Tailer::new(cfg, parser());
    let b = t.poll();
    assert_eq!(b.entries.len(), 2);
    assert!(b.entries[0].truncated);
    assert_eq!(b.entries[0].message.len(), 64 * 1024);
    assert_eq!(b.entries[1].message, "line 000001");
}

#[test]
fn a_reused_file_name_resumes_where_it_was_finished() {
    // postgresql-%a.log without log_truncate_on_rotation: a week later the server appends to
    // the file it finished before.
    let dir = TempDir::new("reuse");
    let mon = dir.path().join("postgresql-Mon.log");
    let tue = dir.path().join("postgresql-Tue.log");
    let pattern = FilePattern::from_log_filename("postgresql-%a.log", Format::Stderr);
    let follow = Follow::Directory {
        dir: dir.path().to_path_buf(),
        pattern,
    };
    let mut t = Tailer::new(config(follow, Some(dir.path())), parser());
    append(&mon, &line(0));
    assert_same(&drain(&mut t, true), &expected(1));
    std::thread::sleep(Duration::from_millis(20));
    append(&tue, &line(1));
    assert_same(&drain(&mut t, true), &expected(2)[1..]);
    std::thread::sleep(Duration::from_millis(20));
    append(&mon, &line(2));
    assert_same(&drain(&mut t, true), &expected(3)[2..]);
}

#[test]
fn a_saved_file_that_is_gone_means_reading_the_current_one_from_its_start() {
    let dir = TempDir::new("gone");
    let log = dir.path().join("postgresql.log");
    append(&log, &line(0));
    let cfg = config(Follow::Path(log.clone()), Some(dir.path()));
    let mut t = Tailer::new(cfg.clone(), parser());
    assert_same(&drain(&mut t, true), &expected(1));
    drop(t);
    fs::remove_file(&log).unwrap();
    append(&log, &(1..3).map(line).collect::<String>());
    let mut t = Tailer::new(cfg, parser());
    assert_same(&drain(&mut t, true), &expected(3)[1..]);
}
