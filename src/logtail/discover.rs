//! Decides which log file to tail and in which format, from the server's settings (plain data
//! the caller fetched with [`SETTINGS_QUERY`]) or the configured `log_path`, and says why none
//! when no file can be tailed.
//!
//! Invariants: pure except for [`ServerLogSettings::read_current_logfiles`] and the
//! file-or-directory check of an explicit `log_path`; an explicit `log_path` always wins; the
//! preferred format is jsonlog, then csvlog, then stderr, because the structured formats need no
//! prefix guessing and always carry `application_name`.

use crate::fsutil::Durability;
use std::path::{Path, PathBuf};

use super::parse::Format;
use super::prefix::DEFAULT_PREFIX;
use super::tail::{FilePattern, Follow};

/// The query the caller runs (through the pool) to fetch the settings discovery needs; rows are
/// `(name text, setting text)`. `data_directory` is only visible to superusers and members of
/// `pg_read_all_settings`: without it, a relative `log_directory` cannot be resolved.
pub const SETTINGS_QUERY: &str = "SELECT name, setting FROM pg_catalog.pg_settings \
     WHERE name IN ('log_destination', 'logging_collector', 'log_directory', 'log_filename', \
     'data_directory', 'log_line_prefix')";

/// The settings that decide where the server writes its log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerLogSettings {
    /// `log_destination` (comma-separated: stderr, csvlog, jsonlog, syslog, eventlog).
    pub log_destination: Option<String>,
    /// `logging_collector`.
    pub logging_collector: Option<bool>,
    /// `log_directory` (relative to the data directory unless absolute).
    pub log_directory: Option<String>,
    /// `log_filename` (strftime pattern).
    pub log_filename: Option<String>,
    /// `data_directory`.
    pub data_directory: Option<String>,
    /// `log_line_prefix`.
    pub log_line_prefix: Option<String>,
    /// The contents of `<data_directory>/current_logfiles`, when read.
    pub current_logfiles: Option<String>,
}

impl ServerLogSettings {
    /// Settings from the `(name, setting)` rows of [`SETTINGS_QUERY`]; unknown names are ignored.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> ServerLogSettings {
        let mut s = ServerLogSettings::default();
        for (name, value) in rows {
            let v = Some(value.to_string());
            match name {
                "log_destination" => s.log_destination = v,
                "logging_collector" => {
                    s.logging_collector = Some(matches!(value, "on" | "true" | "1"))
                }
                "log_directory" => s.log_directory = v,
                "log_filename" => s.log_filename = v,
                "data_directory" => s.data_directory = v,
                "log_line_prefix" => s.log_line_prefix = v,
                _ => {}
            }
        }
        s
    }

    /// Reads `<data_directory>/current_logfiles` into `current_logfiles` (left `None` when it
    /// cannot be read, e.g. the agent's user may not enter the data directory).
    pub fn read_current_logfiles(&mut self) {
        if let Some(dir) = &self.data_directory {
            self.current_logfiles =
                std::fs::read_to_string(Path::new(dir).join("current_logfiles")).ok();
        }
    }
}

/// The file (or the rule to find it) and how to parse it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSource {
    /// What the tailer follows.
    pub follow: Follow,
    /// The format of the file.
    pub format: Format,
    /// `log_line_prefix` to parse stderr lines with.
    pub prefix: String,
    /// One sentence for the start-up log: which file, which format, found how.
    pub description: String,
}

/// Why no log can be tailed: a sentence for the operator, with what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoLog(pub String);

impl std::fmt::Display for NoLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no server log to tail: {}", self.0)
    }
}

impl std::error::Error for NoLog {}

/// The file in the state directory that remembers the server's log settings, so a start while
/// the server is down still finds the log.
pub const SETTINGS_CACHE_FILE: &str = "log-settings";

/// Asks the server for its log settings ([`SETTINGS_QUERY`], plus its `current_logfiles`) and
/// picks the log to tail. With `cache` (the state directory), the settings are remembered there
/// for [`discover_from_cache`]. The outer error is the query's; the inner one says why no log
/// can be tailed.
pub fn discover_from_server(
    client: &mut postgres::Client,
    log_path: Option<&Path>,
    cache: Option<&Path>,
) -> Result<Result<LogSource, NoLog>, postgres::Error> {
    let rows = client.query(SETTINGS_QUERY, &[])?;
    let pairs: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1).unwrap_or_default(),
            )
        })
        .collect();
    if let Some(dir) = cache {
        let text: String = pairs
            .iter()
            .filter(|(k, v)| !k.contains(['\t', '\n']) && !v.contains(['\t', '\n']))
            .map(|(k, v)| format!("{k}\t{v}\n"))
            .collect();
        // Atomic only: a cache lost to a power failure is rewritten when the server next answers.
        let path = dir.join(SETTINGS_CACHE_FILE);
        let saved = crate::fsutil::write_atomically(&path, text.as_bytes(), Durability::Atomic);
        if let Err(e) = saved {
            log::warn!("cannot remember the log settings in {}: {e}", dir.display());
        }
    }
    Ok(discover_from_pairs(&pairs, log_path))
}

/// Picks the log from the settings the server gave at an earlier start (see
/// [`discover_from_server`]); `None` when none were remembered.
pub fn discover_from_cache(
    state_dir: &Path,
    log_path: Option<&Path>,
) -> Option<Result<LogSource, NoLog>> {
    let text = std::fs::read_to_string(state_dir.join(SETTINGS_CACHE_FILE)).ok()?;
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (!pairs.is_empty()).then(|| discover_from_pairs(&pairs, log_path))
}

fn discover_from_pairs(
    pairs: &[(String, String)],
    log_path: Option<&Path>,
) -> Result<LogSource, NoLog> {
    let mut settings =
        ServerLogSettings::from_rows(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    settings.read_current_logfiles();
    discover(&settings, log_path)
}

/// Picks the log to tail. `log_path` (a file or a directory) overrides discovery.
pub fn discover(settings: &ServerLogSettings, log_path: Option<&Path>) -> Result<LogSource, NoLog> {
    let prefix = settings
        .log_line_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let formats = destinations(settings.log_destination.as_deref());
    let best = [Format::Json, Format::Csv, Format::Stderr]
        .into_iter()
        .find(|f| formats.contains(f));
    if let Some(path) = log_path {
        if path.is_dir() {
            let format = best.unwrap_or(Format::Stderr);
            let pattern = match &settings.log_filename {
                Some(name) => FilePattern::from_log_filename(name, format),
                None => FilePattern::any(format),
            };
            return Ok(LogSource {
                description: format!(
                    "newest {} file in {} (log_path)",
                    format.as_str(),
                    path.display()
                ),
                follow: Follow::Directory {
                    dir: path.to_path_buf(),
                    pattern,
                },
                format,
                prefix,
            });
        }
        let format = Format::guess_from_path(path);
        return Ok(LogSource {
            description: format!("{} ({}, log_path)", path.display(), format.as_str()),
            follow: Follow::Path(path.to_path_buf()),
            format,
            prefix,
        });
    }
    let Some(dest) = settings.log_destination.as_deref() else {
        return Err(NoLog(
            "log_destination could not be read from the server; set log_path to the log file"
                .into(),
        ));
    };
    let Some(format) = best else {
        return Err(NoLog(format!(
            "log_destination is '{dest}': the server writes no stderr, csvlog or jsonlog file; \
             add csvlog (or jsonlog) to log_destination with logging_collector = on, or set \
             log_path"
        )));
    };
    if settings.logging_collector != Some(true) {
        return Err(NoLog(
            "logging_collector is off: the server's stderr goes wherever its start script sends \
             it (on Debian /var/log/postgresql/postgresql-<version>-<cluster>.log); set log_path \
             to that file, or turn logging_collector on"
                .into(),
        ));
    }
    let log_dir = settings.log_directory.as_deref().unwrap_or("log");
    let filename = settings
        .log_filename
        .as_deref()
        .unwrap_or("postgresql-%Y-%m-%d_%H%M%S.log");
    let pattern = FilePattern::from_log_filename(filename, format);
    let data_dir = settings.data_directory.as_deref().map(PathBuf::from);
    let abs_dir = if Path::new(log_dir).is_absolute() {
        Some(PathBuf::from(log_dir))
    } else {
        data_dir.as_ref().map(|d| d.join(log_dir))
    };
    match (data_dir, abs_dir) {
        (Some(data_dir), Some(dir)) => {
            let named = settings
                .current_logfiles
                .as_deref()
                .and_then(|text| super::tail::current_logfile(text, format))
                .map(|p| data_dir.join(p));
            let now = match named {
                Some(p) => format!("now {}", p.display()),
                None => format!("newest matching file in {}", dir.display()),
            };
            Ok(LogSource {
                description: format!(
                    "{} log named in {}/current_logfiles ({now})",
                    format.as_str(),
                    data_dir.display()
                ),
                follow: Follow::CurrentLogfiles {
                    data_dir,
                    format,
                    fallback: Some((dir, pattern)),
                },
                format,
                prefix,
            })
        }
        (None, Some(dir)) => Ok(LogSource {
            description: format!("newest {} file in {}", format.as_str(), dir.display()),
            follow: Follow::Directory { dir, pattern },
            format,
            prefix,
        }),
        _ => Err(NoLog(format!(
            "log_directory '{log_dir}' is relative to the data directory, which the monitoring \
             role cannot see (grant it pg_read_all_settings), or set log_path"
        ))),
    }
}

/// The file formats in a `log_destination` value.
fn destinations(value: Option<&str>) -> Vec<Format> {
    value
        .unwrap_or("")
        .split(',')
        .filter_map(Format::from_destination)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dest: &str, collector: bool) -> ServerLogSettings {
        ServerLogSettings::from_rows([
            ("log_destination", dest),
            ("logging_collector", if collector { "on" } else { "off" }),
            ("log_directory", "log"),
            ("log_filename", "postgresql-%a.log"),
            ("data_directory", "/var/lib/pg/data"),
            ("log_line_prefix", "%m [%p] %q%a "),
            ("unrelated", "x"),
        ])
    }

    #[test]
    fn prefers_structured_formats_and_follows_current_logfiles() {
        let mut s = settings("stderr,csvlog", true);
        s.current_logfiles =
            Some("stderr log/postgresql-Mon.log\ncsvlog log/postgresql-Mon.csv\n".into());
        let src = discover(&s, None).unwrap();
        assert_eq!(src.format, Format::Csv);
        assert_eq!(src.prefix, "%m [%p] %q%a ");
        match &src.follow {
            Follow::CurrentLogfiles {
                data_dir,
                format,
                fallback,
            } => {
                assert_eq!(data_dir, Path::new("/var/lib/pg/data"));
                assert_eq!(*format, Format::Csv);
                let (dir, pattern) = fallback.as_ref().unwrap();
                assert_eq!(dir, Path::new("/var/lib/pg/data/log"));
                assert!(pattern.matches("postgresql-Tue.csv"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(src
            .description
            .contains("/var/lib/pg/data/log/postgresql-Mon.csv"));
        assert_eq!(
            discover(&settings("jsonlog,csvlog", true), None)
                .unwrap()
                .format,
            Format::Json
        );
    }

    #[test]
    fn explains_why_there_is_none() {
        let e = discover(&settings("stderr", false), None).unwrap_err();
        assert!(e.to_string().contains("logging_collector is off"));
        let e = discover(&settings("syslog", true), None).unwrap_err();
        assert!(e.0.contains("'syslog'"));
        let e = discover(&ServerLogSettings::default(), None).unwrap_err();
        assert!(e.0.contains("log_destination"));
        let mut hidden = settings("stderr", true);
        hidden.data_directory = None;
        assert!(discover(&hidden, None)
            .unwrap_err()
            .0
            .contains("pg_read_all_settings"));
        hidden.log_directory = Some("/var/log/pg".into());
        let src = discover(&hidden, None).unwrap();
        assert!(matches!(src.follow, Follow::Directory { .. }));
    }

    #[test]
    fn log_path_overrides() {
        let src = discover(&settings("syslog", false), Some(Path::new("/x/pg.csv"))).unwrap();
        assert_eq!(src.format, Format::Csv);
        assert_eq!(src.follow, Follow::Path(PathBuf::from("/x/pg.csv")));
        let dir = std::env::temp_dir();
        let src = discover(&settings("stderr", true), Some(&dir)).unwrap();
        assert!(matches!(src.follow, Follow::Directory { .. }));
        assert_eq!(src.format, Format::Stderr);
    }
}
