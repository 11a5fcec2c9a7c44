//! Configuration: the INI file and the environment become typed, validated sub-configs.
//!
//! Two stages. [`RawConfig`] holds every known key's text value and where it came from (a
//! default, `file:line`, or an environment variable): no interpretation yet. [`Config::from_raw`]
//! then parses each value into the typed sub-configs ([`DatabaseConfig`], [`CollectionConfig`],
//! [`ListenerConfig`], [`BufferConfig`], [`LogConfig`]), applies the safety caps and collects
//! warnings. Loading never logs by itself (the log level is part of the configuration), it
//! returns its warnings for the caller to log.
//!
//! The files, by job: `keys` (the key table [`KEYS`], one row per key), `ini` (the strict INI
//! validator and the rust-ini read, `file:line` errors), `raw` (stage one, with the environment),
//! `typed` (stage two: the sub-configs, caps and warnings), `secret` ([`Secret`], [`excerpt`],
//! [`mask_url`]), `render` (`--check-config`'s listing, the example INI, README's table); this
//! file holds the constants, [`ConfigError`] and loading.
//!
//! Invariants:
//! - Priority is environment, then INI, then the defaults in [`KEYS`] (the one place defaults live).
//! - Whatever the file says, the pool holds at most [`MAX_POOL_SIZE`] connections,
//!   `statement_timeout` is within [`STATEMENT_TIMEOUT_MIN_MS`]..=[`STATEMENT_TIMEOUT_MAX_MS`] and
//!   `lock_timeout` is always set and within 1..=[`LOCK_TIMEOUT_MAX_MS`].
//! - Secrets (`password`, `api_key`) never appear in `Debug`, errors or [`describe`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the configuration is read from when neither `-c` nor the environment names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bitville/postgres-agent.ini";
/// The environment variable that names the configuration file (the Python agent's).
pub const CONFIG_PATH_ENV: &str = "BITVILLE_PG_CONFIG_PATH";
/// The hard cap on connections to the monitored server.
pub const MAX_POOL_SIZE: usize = 5;
/// The lowest `statement_timeout` the agent accepts.
pub const STATEMENT_TIMEOUT_MIN_MS: u64 = 1000;
/// The highest `statement_timeout` the agent accepts: a monitoring query never needs longer.
pub const STATEMENT_TIMEOUT_MAX_MS: u64 = 30_000;
/// The highest `lock_timeout`: a monitoring query must give up instead of queueing.
pub const LOCK_TIMEOUT_MAX_MS: u64 = 1000;
/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "BITVILLE_PG_";

mod ini;
mod keys;
mod raw;
mod render;
mod secret;
mod typed;

pub use keys::{default_whole, Allowed, KeySpec, KEYS};
pub use raw::{agent_env, Origin, RawConfig};
pub use render::{describe, example_ini, markdown_table};
pub use secret::{excerpt, mask_url, Secret};
pub use typed::{
    listener_url_problem, BufferConfig, CollectionConfig, Config, DatabaseConfig, ListenerConfig,
    LogConfig, QueryTextMode, SpikeConfig,
};
/// A configuration error: always names where the bad value came from.
#[derive(Debug)]
pub enum ConfigError {
    /// The configuration file could not be read or parsed.
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An environment variable of the agent cannot be used (its value is not UTF-8).
    Environment {
        /// The variable.
        name: String,
        /// What is wrong (never the value).
        reason: String,
    },
    /// A value is not acceptable.
    Value {
        /// Where the value came from.
        origin: Origin,
        /// Its section.
        section: &'static str,
        /// Its key.
        key: &'static str,
        /// What is wrong, already naming the value unless it is a secret.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::File { path, reason } => write!(f, "{}: {reason}", path.display()),
            ConfigError::Environment { name, reason } => write!(f, "environment {name}: {reason}"),
            ConfigError::Value {
                origin,
                section,
                key,
                reason,
            } => {
                write!(f, "{origin}: [{section}] {key}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded configuration with what the operator should be told about it.
#[derive(Debug)]
pub struct Loaded {
    /// The typed configuration.
    pub config: Config,
    /// Every effective value and its origin, for `--check-config`.
    pub raw: RawConfig,
    /// Warnings to log (caps applied, unknown keys, ...).
    pub warnings: Vec<String>,
}

/// Chooses the configuration file: `-c PATH`, else `BITVILLE_PG_CONFIG_PATH`, else the default
/// path. The flag says whether the operator named the file (then it must exist).
pub fn choose_path(cli: Option<&Path>, env: &BTreeMap<String, String>) -> (PathBuf, bool) {
    if let Some(p) = cli {
        return (p.to_path_buf(), true);
    }
    if let Some(p) = env.get(CONFIG_PATH_ENV).filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), true);
    }
    (PathBuf::from(DEFAULT_CONFIG_PATH), false)
}

/// Loads the configuration from the process environment and the chosen file.
pub fn load(cli_path: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_from(cli_path, &agent_env(std::env::vars_os())?)
}

/// Loads the configuration from the given environment (only `BITVILLE_PG_*` entries matter).
pub fn load_from(
    cli_path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let (path, named) = choose_path(cli_path, env);
    let mut warnings = Vec::new();
    let file_text = match crate::fsutil::read_regular_to_string(&path, crate::fsutil::MAX_TEXT_FILE)
    {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
            warnings.push(format!(
                "no configuration file at {} (the default path); running on defaults and environment",
                path.display()
            ));
            None
        }
        Err(e) => {
            return Err(ConfigError::File {
                path,
                reason: format!("cannot read configuration file: {e}"),
            })
        }
    };
    let raw = RawConfig::build(
        file_text.as_deref().map(|t| (path.as_path(), t)),
        env,
        &mut warnings,
    )?;
    let config = Config::from_raw(&raw, &mut warnings)?;
    Ok(Loaded {
        config,
        raw,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_text(
        text: &str,
        env_pairs: &[(&str, &str)],
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let raw = RawConfig::build(
            Some((Path::new("agent.ini"), text)),
            &env(env_pairs),
            &mut warnings,
        )?;
        let config = Config::from_raw(&raw, &mut warnings)?;
        Ok((config, warnings))
    }

    #[test]
    fn every_environment_name_is_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for spec in KEYS {
            assert!(!spec.env.is_empty(), "{} has no env name", spec.key);
            let own = format!("{ENV_PREFIX}{}", spec.key.to_ascii_uppercase());
            assert!(spec.env.contains(&own.as_str()), "{} lacks {own}", spec.key);
            for name in spec.env {
                assert!(name.starts_with(ENV_PREFIX));
                assert!(seen.insert(*name), "{name} used twice");
            }
        }
    }

    #[test]
    fn every_range_a_doc_states_is_the_one_its_row_enforces() {
        let mut checked = 0;
        for spec in KEYS {
            let bounds = match spec.allowed {
                Allowed::Range(min, max) | Allowed::Cap(min, max) => Some((min as f64, max as f64)),
                Allowed::Decimal(min, max) => Some((min, max)),
                Allowed::Chars(min, max) => Some((min as f64, max as f64)),
                Allowed::Text | Allowed::OneOf(_) => None,
            };
            // "(1000 to 30000)", "(1 to 4096);", "(1 to 50 characters)": the figures after a "(".
            for (open, _) in spec.doc.match_indices('(') {
                let words: Vec<&str> = spec.doc[open + 1..].split([' ', ')', ';']).collect();
                let [min, "to", max, ..] = words[..] else {
                    continue;
                };
                let (Ok(min), Ok(max)) = (min.parse::<f64>(), max.parse::<f64>()) else {
                    continue;
                };
                assert_eq!(
                    Some((min, max)),
                    bounds,
                    "[{}] {}: {}",
                    spec.section,
                    spec.key,
                    spec.doc
                );
                checked += 1;
            }
        }
        assert!(checked >= 11, "only {checked} documented ranges found");
        for spec in KEYS {
            if let Allowed::OneOf(words) = spec.allowed {
                assert!(words.contains(&spec.default), "{}", spec.key);
            }
        }
    }

    #[test]
    fn the_shipped_example_lists_every_key_with_its_default() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/etc/postgres-agent.ini.example"
        );
        if std::env::var_os("BITVILLE_REGENERATE").is_some() {
            std::fs::write(path, example_ini()).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            shipped,
            example_ini(),
            "run `make regenerate` after changing config::KEYS"
        );
        let (c, w) = from_text(&shipped, &[]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.database.port, 5432);

        let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(readme_path).unwrap();
        let (start, end) = ("<!-- keys:start -->\n", "<!-- keys:end -->");
        let a = readme
            .find(start)
            .expect("README has the keys:start marker")
            + start.len();
        let b = readme.find(end).expect("README has the keys:end marker");
        if std::env::var_os("BITVILLE_REGENERATE").is_some() {
            let fresh = format!("{}{}{}", &readme[..a], markdown_table(), &readme[b..]);
            std::fs::write(readme_path, fresh).unwrap();
        } else {
            assert_eq!(
                &readme[a..b],
                markdown_table(),
                "run `make regenerate` after changing config::KEYS"
            );
        }
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let (c, w) = from_text("", &[]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.database.pool_max_size, 5);
        assert_eq!(c.database.statement_timeout, Duration::from_millis(5000));
        assert_eq!(c.database.lock_timeout, Duration::from_millis(100));
        assert_eq!(c.database.user, "bitville_monitor");
        assert_eq!(c.collection.interval, Duration::from_secs(60));
        assert_eq!(c.collection.query_text, QueryTextMode::Normalized);
        assert_eq!(c.listener.max_requests_per_minute, 60);
        assert_eq!(c.buffer.max_size_bytes, 100 << 20);
    }

    #[test]
    fn environment_beats_ini_beats_default() {
        let text = "[database]\nhost = from-ini\nport = 6000\n";
        let (c, _) = from_text(text, &[("BITVILLE_PG_DB_HOST", "from-env")]).unwrap();
        assert_eq!(c.database.host, "from-env");
        assert_eq!(c.database.port, 6000);
        assert_eq!(c.database.dbname, "postgres");
    }

    #[test]
    fn python_and_new_env_names_both_work() {
        let (c, _) = from_text(
            "",
            &[
                ("BITVILLE_PG_POOL_MAX_SIZE", "3"),
                ("BITVILLE_PG_LISTENER_API_KEY", "k"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.pool_max_size, 3);
        assert_eq!(c.listener.api_key.expose(), "k");
        let (c, _) = from_text("", &[("BITVILLE_PG_API_KEY", "k2")]).unwrap();
        assert_eq!(c.listener.api_key.expose(), "k2");
    }

    #[test]
    fn caps_warn_with_key_asked_and_applied() {
        let text =
            "[database]\npool_max_size = 20\nstatement_timeout_ms = 10\nlock_timeout_ms = 0\n";
        let (c, w) = from_text(text, &[]).unwrap();
        assert_eq!(c.database.pool_max_size, 5);
        assert_eq!(c.database.statement_timeout, Duration::from_millis(1000));
        assert_eq!(c.database.lock_timeout, Duration::from_millis(1));
        assert!(
            w.iter()
                .any(|m| m.contains("agent.ini:2: [database] pool_max_size = 20")
                    && m.contains("using 5")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("statement_timeout_ms = 10") && m.contains("using 1000")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("lock_timeout_ms = 0") && m.contains("using 1")),
            "{w:?}"
        );
    }

    #[test]
    fn bad_values_name_file_line_section_key_and_value() {
        let err = from_text("[database]\n\nport = abc\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "agent.ini:3: [database] port: \"abc\" is not a whole number"
        );
        let err = from_text("[buffer]\nmax_size_mb = -5\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "agent.ini:2: [buffer] max_size_mb: \"-5\" must not be negative"
        );
        let err = from_text("[listener]\nurl = ftp://x/\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[listener] url: \"ftp://x/\" is not an http:// or https:// URL"),
            "{err}"
        );
        let long = "x".repeat(51);
        let err = from_text(&format!("[listener]\nproject_id = {long}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must be 1 to 50 characters (it is 51)"),
            "{err}"
        );
        let err = from_text("", &[("BITVILLE_PG_DB_PORT", "70000")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment BITVILLE_PG_DB_PORT: [database] port: 70000 is out of range (1 to 65535)"
        );
    }

    #[test]
    fn words_decimals_and_dependent_caps_are_checked_from_the_table() {
        let err = |text: &str| from_text(text, &[]).unwrap_err().to_string();
        assert_eq!(
            err("[log]\nlevel = loud\n"),
            "agent.ini:2: [log] level: \"loud\" is not one of error, warn, info, debug, trace"
        );
        assert_eq!(
            err("[collection]\nquery_text = raw\n"),
            "agent.ini:2: [collection] query_text: \"raw\" is not one of full, normalized, none"
        );
        assert_eq!(
            err("[spike]\nload_per_cpu = 1001\n"),
            "agent.ini:2: [spike] load_per_cpu: \"1001\" is not a number from 0 to 1000"
        );
        let long = err(&format!("[spike]\nbaseline_factor = {}\n", "9".repeat(200)));
        assert!(long.len() < 120 && long.contains("999...\""), "{long}");
        let (c, _) = from_text(
            "[log]\nlevel = WARNING\n[collection]\nquery_text = normalised\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.log.level, log::LevelFilter::Warn);
        assert_eq!(c.collection.query_text, QueryTextMode::Normalized);
        let text = "[collection]\ninterval_s = 2\nsample_interval_ms = 5000\n";
        let (c, w) = from_text(text, &[]).unwrap();
        assert_eq!(c.collection.sample_interval, Duration::from_millis(2000));
        assert_eq!(
            w,
            ["agent.ini:3: [collection] sample_interval_ms = 5000 is not allowed (at most 2000); using 2000"]
        );
    }

    #[test]
    fn extra_databases_fit_within_the_connection_cap() {
        let (c, _) = from_text("[collection]\ndatabases = shop, billing ,\n", &[]).unwrap();
        assert_eq!(c.collection.databases, ["shop", "billing"]);
        let err = from_text(
            "[database]\npool_max_size = 2\n[collection]\ndatabases = a,b\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[collection] databases: 2 databases need 2 connections"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_env_vars_are_warned() {
        let (_, w) =
            from_text("[database]\nprot = 5432\n", &[("BITVILLE_PG_DB_HSOT", "x")]).unwrap();
        assert!(
            w.iter()
                .any(|m| m.contains("agent.ini:2: unknown key [database] prot")),
            "{w:?}"
        );
        assert!(w.iter().any(|m| m.contains("BITVILLE_PG_DB_HSOT")), "{w:?}");
    }

    #[test]
    fn passwords_keep_quotes_hashes_and_equals() {
        let (c, _) = from_text("[database]\npassword = p#ss ;w=\"x\\y'\n", &[]).unwrap();
        assert_eq!(c.database.password.expose(), "p#ss ;w=\"x\\y'");
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        let mut warnings = Vec::new();
        let text = "[database]\npassword = hunter2\n[listener]\napi_key = topsecret\n";
        let raw =
            RawConfig::build(Some((Path::new("a.ini"), text)), &env(&[]), &mut warnings).unwrap();
        let config = Config::from_raw(&raw, &mut warnings).unwrap();
        let shown = format!("{}{config:?}", describe(&raw));
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
        assert!(shown.contains("password = ********"));
    }
    #[test]
    fn a_malformed_line_is_an_error_naming_file_and_line_never_the_text() {
        let cases = [
            (
                "[database]\nhost = h\n[listener\napi_key = topsecret\n",
                3,
                "not closed",
            ),
            ("[[listener]]\napi_key = topsecret\n", 1, "[["),
            ("[listener]\napi_key topsecret\n", 2, "is the = missing"),
            ("[listener]\n= topsecret\n", 2, "key before the ="),
            ("[listener] api_key = topsecret\n", 1, "stands alone"),
            ("[]\napi_key = topsecret\n", 1, "section name"),
            ("[lis tener]\napi_key = topsecret\n", 1, "section name"),
        ];
        for (text, line, what) in cases {
            let err = from_text(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("agent.ini: line {line}: ")) && err.contains(what),
                "{text:?}: {err}"
            );
            assert!(!err.contains("topsecret"), "{err}");
        }
    }

    #[test]
    fn a_bom_is_skipped_and_key_value_lines_keep_their_lines() {
        let (c, w) = from_text("\u{feff}[database]\nhost = h1\n", &[]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.database.host, "h1");
        let (_, w) = from_text("[database]\nhost = a\nhost: b\n", &[]).unwrap();
        assert!(
            w.iter()
                .any(|m| m.contains("agent.ini:3: [database] host is set again (first at line 2)")),
            "{w:?}"
        );
    }

    #[test]
    fn messages_show_a_short_prefix_of_a_value_and_mask_url_credentials() {
        let long = format!("{}x", "1".repeat(200));
        let err = from_text(&format!("[database]\nport = {long}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.len() < 120, "{err}");
        let err = from_text("[listener]\nurl = ftp://user:pw-in-url@host/x\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("pw-in-url") && err.contains("ftp://***@host/x"),
            "{err}"
        );
        assert_eq!(
            mask_url("http://u:p@h:1/ingest/postgres?a=b@c"),
            "http://***@h:1/ingest/postgres?a=b@c"
        );
        assert_eq!(mask_url("https://h/ingest"), "https://h/ingest");
        assert_eq!(mask_url("not a url"), "not a url");
        let mut warnings = Vec::new();
        let raw = RawConfig::build(
            Some((
                Path::new("a.ini"),
                "[listener]\nurl = http://bob:hunter2@h/ingest/postgres\n",
            )),
            &env(&[]),
            &mut warnings,
        )
        .unwrap();
        let shown = describe(&raw);
        assert!(
            !shown.contains("hunter2") && shown.contains("url = http://***@h/"),
            "{shown}"
        );
    }

    #[test]
    fn a_non_utf8_environment_value_is_an_error_only_for_our_variables() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"x\xffy".to_vec());
        let env = agent_env([
            (OsString::from("FOO"), bad()),
            (OsString::from_vec(b"\xff".to_vec()), OsString::from("v")),
            (OsString::from("BITVILLE_PG_DB_HOST"), OsString::from("h")),
        ])
        .unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["BITVILLE_PG_DB_HOST"], "h");
        let err = agent_env([(OsString::from("BITVILLE_PG_DB_PASSWORD"), bad())])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment BITVILLE_PG_DB_PASSWORD: the value is not valid UTF-8"),
            "{err}"
        );
        let err = agent_env([(OsString::from(CONFIG_PATH_ENV), bad())]).unwrap_err();
        assert!(err.to_string().contains(CONFIG_PATH_ENV));
        let env = agent_env([(OsString::from("BITVILLE_PG_TYPO"), bad())]).unwrap();
        assert!(env.contains_key("BITVILLE_PG_TYPO"));
    }
}
