//! Test fixtures of the tailer's unit tests: a temporary directory, numbered log lines, the
//! rotations logrotate does, and a tailer that reads from the start.

use super::{Follow, TailConfig, Tailer};
use crate::logtail::parse::{EntryParser, Format};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory of its own under the temp dir, removed on drop.
pub(super) struct Dir(pub(super) PathBuf);

impl Dir {
    pub(super) fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("logtail-unit-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub(super) fn log(&self) -> PathBuf {
        self.0.join("postgresql.log")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// 52 bytes, its number in the message.
pub(super) fn line(i: usize) -> String {
    format!(
        "2024-05-01 12:00:00.000 UTC [{}] LOG:  line {i:06}\n",
        100 + i % 7
    )
}

/// Longer than the fingerprint, the same in every generation of the file.
pub(super) const BANNER: &str =
    "2024-05-01 12:00:00.000 UTC [1] LOG:  database system is ready to accept connections\n";

pub(super) fn lines(r: Range<usize>) -> String {
    r.map(line).collect()
}

pub(super) fn want(r: Range<usize>) -> Vec<String> {
    r.map(|i| format!("line {i:06}")).collect()
}

pub(super) fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// logrotate's copytruncate, then the server writing `refill` into the emptied file.
pub(super) fn copytruncate(log: &Path, copy: &Path, refill: &str) {
    fs::copy(log, copy).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(log)
        .unwrap();
    append(log, refill);
}

pub(super) fn tailer(log: &Path) -> Tailer {
    let mut c = TailConfig::new(Follow::Path(log.to_path_buf()), None);
    c.start_at_end = false;
    c.settle = Duration::ZERO;
    c.read_chunk = 4096;
    Tailer::new(c, EntryParser::new(Format::Stderr, "%m [%p] "))
}

/// Polls until nothing more comes; the messages.
pub(super) fn poll_all(t: &mut Tailer) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..1000 {
        let b = t.poll();
        if b.entries.is_empty() && !b.more {
            break;
        }
        got.extend(b.entries.into_iter().map(|e| e.message));
    }
    got
}

pub(super) fn banner_then(r: Range<usize>) -> Vec<String> {
    let mut v = vec!["database system is ready to accept connections".to_string()];
    v.extend(want(r));
    v
}
