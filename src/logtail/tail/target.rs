//! Which file is the current server log: the configured path, the file PostgreSQL's
//! `current_logfiles` names, or the newest file of the log directory whose name fits
//! `log_filename` (its rotation naming); and where a file the tailer was reading went after a
//! rename.
//!
//! Invariants: resolving only reads (`current_logfiles` as a capped regular file, directory
//! listings, metadata) and never fails: no file is `None`, an unreadable `current_logfiles` is a
//! warning for the caller to say once plus the fallback directory's newest file; a name pattern
//! matches by its literal parts in order, so any strftime expansion of `log_filename` matches.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::logtail::parse::Format;

/// Which file to follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    /// One path. Rotation by rename (a new inode at the path) or copytruncate.
    Path(PathBuf),
    /// PostgreSQL's own rotation: the file `current_logfiles` in `data_dir` names for `format`
    /// (relative names are relative to `data_dir`); when that file cannot be read, the newest
    /// file of `fallback` (a directory and a pattern).
    CurrentLogfiles {
        /// The data directory holding `current_logfiles`.
        data_dir: PathBuf,
        /// Which line of `current_logfiles` to follow.
        format: Format,
        /// Where to look when `current_logfiles` is unreadable.
        fallback: Option<(PathBuf, FilePattern)>,
    },
    /// The newest file (by modification time, then name) of a directory matching a pattern.
    Directory {
        /// The log directory.
        dir: PathBuf,
        /// Which names are log files of the chosen format.
        pattern: FilePattern,
    },
}

/// A file-name pattern derived from `log_filename`: its `%` escapes (strftime) match any text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePattern {
    parts: Vec<String>,
}

impl FilePattern {
    /// The names PostgreSQL gives files of `format` with this `log_filename`: for csvlog and
    /// jsonlog a `.log` suffix is replaced by `.csv`/`.json` (or that suffix is appended).
    pub fn from_log_filename(log_filename: &str, format: Format) -> FilePattern {
        let mut name = log_filename.to_string();
        if format != Format::Stderr {
            if let Some(stem) = name.strip_suffix(".log") {
                name = stem.to_string();
            }
            name.push('.');
            name.push_str(format.extension());
        }
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = name.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                cur.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => cur.push('%'),
                Some(_) => parts.push(std::mem::take(&mut cur)),
                None => {}
            }
        }
        parts.push(cur);
        FilePattern { parts }
    }

    /// Any file with the format's extension (`*.log`, `*.csv`, `*.json`).
    pub fn any(format: Format) -> FilePattern {
        FilePattern {
            parts: vec![String::new(), format!(".{}", format.extension())],
        }
    }

    /// True when `name` matches (literal parts in order, anything between them).
    pub fn matches(&self, name: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else {
            return true;
        };
        let Some(mut s) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        for part in middle {
            match s.find(part.as_str()) {
                Some(i) => s = &s[i + part.len()..],
                None => return false,
            }
        }
        s.ends_with(last.as_str())
    }
}

/// The file to follow now, and a warning for the caller to say (once) when `current_logfiles`
/// could not be read (then the fallback directory's newest file, if any, is the answer).
pub fn resolve(follow: &Follow) -> (Option<PathBuf>, Option<String>) {
    match follow {
        Follow::Path(p) => (Some(p.clone()), None),
        Follow::Directory { dir, pattern } => (newest_in(dir, pattern), None),
        Follow::CurrentLogfiles {
            data_dir,
            format,
            fallback,
        } => {
            let listing = data_dir.join("current_logfiles");
            match crate::fsutil::read_regular_to_string(&listing, super::MAX_SMALL_FILE) {
                Ok(text) => (
                    current_logfile(&text, *format).map(|rel| data_dir.join(rel)),
                    None,
                ),
                Err(e) => {
                    let msg = format!("reading {}: {e}", listing.display());
                    let path = fallback
                        .as_ref()
                        .and_then(|(dir, pattern)| newest_in(dir, pattern));
                    (path, Some(msg))
                }
            }
        }
    }
}

/// What `follow` looks for, for the warning when nothing is found.
pub fn describe(follow: &Follow) -> String {
    match follow {
        Follow::Path(p) => p.display().to_string(),
        Follow::Directory { dir, .. } => format!("a log file in {}", dir.display()),
        Follow::CurrentLogfiles {
            data_dir, format, ..
        } => format!(
            "the {} file named in {}/current_logfiles",
            format.as_str(),
            data_dir.display()
        ),
    }
}

/// Finds the line of `current_logfiles` for `format` (`stderr log/postgresql.log`).
pub fn current_logfile(text: &str, format: Format) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (kind, path) = line.split_once(' ')?;
        (kind == format.as_str() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
    })
}

/// The newest file in `dir` matching `pattern` (modification time, then name).
pub fn newest_in(dir: &Path, pattern: &FilePattern) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, std::ffi::OsString)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(s) = name.to_str() else { continue };
        if !pattern.matches(s) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        let newer = match &best {
            None => true,
            Some((t, n)) => (mtime, &name) > (*t, n),
        };
        if newer {
            best = Some((mtime, name));
        }
    }
    best.map(|(_, n)| dir.join(n))
}

/// The file with this identity: `path` itself, or a file in the same directory (renamed).
pub(super) fn find_by_identity(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    if let Ok(m) = std::fs::metadata(path) {
        if m.dev() == dev && m.ino() == ino {
            return Some(path.to_path_buf());
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(m) = entry.metadata() {
            if m.is_file() && m.dev() == dev && m.ino() == ino {
                return Some(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Dir;
    use super::*;

    #[test]
    fn file_patterns_follow_log_filename() {
        let p = FilePattern::from_log_filename("postgresql-%Y-%m-%d_%H%M%S.log", Format::Stderr);
        assert!(p.matches("postgresql-2024-05-01_120000.log"));
        assert!(!p.matches("postgresql-2024-05-01_120000.csv"));
        assert!(!p.matches("other-2024.log"));
        let c = FilePattern::from_log_filename("postgresql-%Y-%m-%d_%H%M%S.log", Format::Csv);
        assert!(c.matches("postgresql-2024-05-01_120000.csv"));
        let j = FilePattern::from_log_filename("pg-%a", Format::Json);
        assert!(j.matches("pg-Mon.json"));
        assert!(!j.matches("pg-Mon.log"));
        let lit = FilePattern::from_log_filename("server.log", Format::Stderr);
        assert!(lit.matches("server.log"));
        assert!(!lit.matches("server.log.1"));
        assert!(FilePattern::any(Format::Stderr).matches("x.log"));
    }

    #[test]
    fn current_logfiles_lines() {
        let text = "stderr log/postgresql-2024.log\ncsvlog log/postgresql-2024.csv\n";
        assert_eq!(
            current_logfile(text, Format::Csv),
            Some(PathBuf::from("log/postgresql-2024.csv"))
        );
        assert_eq!(current_logfile(text, Format::Json), None);
    }

    #[test]
    fn current_logfiles_is_resolved_in_the_data_directory_and_falls_back_with_a_warning() {
        let tmp = Dir::new("target");
        let dir = tmp.0.clone();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("log/fallback.log"), "x\n").unwrap();
        let follow = Follow::CurrentLogfiles {
            data_dir: dir.clone(),
            format: Format::Stderr,
            fallback: Some((dir.join("log"), FilePattern::any(Format::Stderr))),
        };
        let (path, warning) = resolve(&follow);
        assert_eq!(path, Some(dir.join("log/fallback.log")));
        assert!(warning.is_some_and(|w| w.contains("current_logfiles")));
        std::fs::write(dir.join("current_logfiles"), "stderr log/pg.log\n").unwrap();
        assert_eq!(resolve(&follow), (Some(dir.join("log/pg.log")), None));
        assert!(describe(&follow).contains("stderr file named in"));
    }
}
