//! Configuration: the INI file and the environment become typed, validated sub-configs.
//!
//! Two stages. [`RawConfig`] holds every known key's text value and where it came from (a
//! default, `file:line`, or an environment variable): no interpretation yet. [`Config::from_raw`]
//! then parses each value into the typed sub-configs ([`DatabaseConfig`], [`CollectionConfig`],
//! [`ListenerConfig`], [`BufferConfig`], [`LogConfig`]), applies the safety caps and collects
//! warnings. Loading never logs by itself (the log level is part of the configuration), it
//! returns its warnings for the caller to log.
//!
//! Invariants:
//! - Priority is environment, then INI, then the defaults in [`KEYS`] (the one place defaults live).
//! - Whatever the file says, the pool holds at most [`MAX_POOL_SIZE`] connections,
//!   `statement_timeout` is within [`STATEMENT_TIMEOUT_MIN_MS`]..=[`STATEMENT_TIMEOUT_MAX_MS`] and
//!   `lock_timeout` is always set and within 1..=[`LOCK_TIMEOUT_MAX_MS`].
//! - Secrets (`password`, `api_key`) never appear in `Debug`, errors or [`Config::describe`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// One configuration key: its place in the INI, its environment names, default and meaning.
#[derive(Debug)]
pub struct KeySpec {
    /// INI section.
    pub section: &'static str,
    /// INI key (lower case).
    pub key: &'static str,
    /// Environment overrides, most preferred first (`BITVILLE_PG_<KEY>` and the Python agent's).
    pub env: &'static [&'static str],
    /// The default value as text ("" means unset).
    pub default: &'static str,
    /// Whether the value is a secret that must never be shown.
    pub secret: bool,
    /// One line on what the key does.
    pub doc: &'static str,
}

macro_rules! key {
    ($section:literal, $key:literal, [$($env:literal),*], $default:literal, $doc:literal) => {
        KeySpec { section: $section, key: $key, env: &[$($env),*], default: $default, secret: false, doc: $doc }
    };
    (secret $section:literal, $key:literal, [$($env:literal),*], $default:literal, $doc:literal) => {
        KeySpec { section: $section, key: $key, env: &[$($env),*], default: $default, secret: true, doc: $doc }
    };
}

/// Every key the agent knows, with its default. The example config and `--check-config` are
/// generated from and tested against this table.
pub const KEYS: &[KeySpec] = &[
    key!(
        "database",
        "host",
        ["BITVILLE_PG_DB_HOST", "BITVILLE_PG_HOST"],
        "localhost",
        "server host name or IP, or a Unix socket directory such as /var/run/postgresql"
    ),
    key!(
        "database",
        "port",
        ["BITVILLE_PG_DB_PORT", "BITVILLE_PG_PORT"],
        "5432",
        "server port"
    ),
    key!(
        "database",
        "name",
        ["BITVILLE_PG_DB_NAME", "BITVILLE_PG_NAME"],
        "postgres",
        "database to connect to"
    ),
    key!(
        "database",
        "user",
        ["BITVILLE_PG_DB_USER", "BITVILLE_PG_USER"],
        "bitville_monitor",
        "role to connect as (give it pg_monitor, see etc/monitor-role.sql)"
    ),
    key!(secret "database", "password", ["BITVILLE_PG_DB_PASSWORD", "BITVILLE_PG_PASSWORD"], "",
        "password; prefer password_file or peer authentication over a Unix socket"),
    key!(
        "database",
        "password_file",
        ["BITVILLE_PG_PASSWORD_FILE", "BITVILLE_PG_DB_PASSWORD_FILE"],
        "",
        "file whose first line is the password (wins over password)"
    ),
    key!(
        "database",
        "statement_timeout_ms",
        ["BITVILLE_PG_STATEMENT_TIMEOUT_MS"],
        "5000",
        "server-side statement_timeout of every agent query (1000 to 30000)"
    ),
    key!(
        "database",
        "lock_timeout_ms",
        ["BITVILLE_PG_LOCK_TIMEOUT_MS"],
        "100",
        "server-side lock_timeout: give up instead of queueing behind a lock (1 to 1000)"
    ),
    key!(
        "database",
        "idle_in_transaction_timeout_ms",
        ["BITVILLE_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS"],
        "10000",
        "server-side idle_in_transaction_session_timeout of agent sessions (1000 to 60000)"
    ),
    key!(
        "database",
        "connect_timeout_s",
        ["BITVILLE_PG_CONNECT_TIMEOUT_S"],
        "5",
        "seconds one connection attempt may take as a whole (socket, authentication, session set-up)"
    ),
    key!(
        "database",
        "acquire_timeout_s",
        ["BITVILLE_PG_ACQUIRE_TIMEOUT_S"],
        "30",
        "seconds a collector waits for a free pooled connection before giving up"
    ),
    key!(
        "database",
        "pool_max_size",
        ["BITVILLE_PG_POOL_MAX_SIZE"],
        "5",
        "most connections the agent opens (never more than 5)"
    ),
    key!(
        "collection",
        "interval_s",
        [
            "BITVILLE_PG_COLLECTION_INTERVAL_S",
            "BITVILLE_PG_INTERVAL_S"
        ],
        "60",
        "seconds between payloads of each collector (1 to 3600)"
    ),
    key!(
        "collection",
        "sample_interval_ms",
        ["BITVILLE_PG_SAMPLE_INTERVAL_MS"],
        "1000",
        "milliseconds between pg_stat_activity samples (100 to interval_s)"
    ),
    key!(
        "collection",
        "log_path",
        ["BITVILLE_PG_LOG_PATH"],
        "",
        "server log file or directory; empty: discovered from the server's settings"
    ),
    key!(
        "collection",
        "state_dir",
        ["BITVILLE_PG_STATE_DIR"],
        "/var/lib/bitville-postgres-agent/state",
        "directory for the agent's own state (baselines, log position, status)"
    ),
    key!(
        "collection",
        "query_text",
        ["BITVILLE_PG_QUERY_TEXT"],
        "normalized",
        "query texts shipped: full, normalized (literals replaced) or none"
    ),
    key!(
        "collection",
        "query_max_chars",
        ["BITVILLE_PG_QUERY_MAX_CHARS"],
        "1000",
        "longest query text shipped, in characters"
    ),
    key!(
        "collection",
        "correlation_prefix",
        ["BITVILLE_PG_CORRELATION_PREFIX"],
        "bitville-",
        "application_name prefix followed by a 36-character uuid that marks a PHP request"
    ),
    key!(
        "collection",
        "pause_file",
        ["BITVILLE_PG_PAUSE_FILE"],
        "",
        "while this file exists the agent makes no database queries (emergency brake)"
    ),
    key!(
        "collection",
        "log_max_entries_per_minute",
        ["BITVILLE_PG_LOG_MAX_ENTRIES_PER_MINUTE"],
        "5000",
        "server log entries shipped in full per minute; beyond it only warnings, errors and correlated entries, the rest counted"
    ),
    key!(
        "collection",
        "health_top_n",
        ["BITVILLE_PG_HEALTH_TOP_N"],
        "20",
        "tables per hot-table ranking and unused indexes shipped (1 to 100)"
    ),
    key!(
        "collection",
        "health_slow_interval_s",
        ["BITVILLE_PG_HEALTH_SLOW_INTERVAL_S"],
        "300",
        "least seconds between the costly health figures: database sizes, unused indexes"
    ),
    key!(
        "collection",
        "health_tables_budget_ms",
        ["BITVILLE_PG_HEALTH_TABLES_BUDGET_MS"],
        "50",
        "hot-table query cost per interval above which (5000+ tables) it runs less often"
    ),
    key!(
        "collection",
        "databases",
        ["BITVILLE_PG_DATABASES"],
        "",
        "more databases (comma-separated) whose hot tables are collected, one connection each, within the cap of 5"
    ),
    key!(
        "listener",
        "url",
        ["BITVILLE_PG_LISTENER_URL", "BITVILLE_PG_URL"],
        "https://listener:8443/ingest/postgres",
        "the listener's ingest URL (http or https)"
    ),
    key!(secret "listener", "api_key", ["BITVILLE_PG_LISTENER_API_KEY", "BITVILLE_PG_API_KEY"], "",
        "bearer token the listener expects"),
    key!(
        "listener",
        "project_id",
        ["BITVILLE_PG_PROJECT_ID"],
        "default",
        "project identifier sent with every payload (1 to 50 characters)"
    ),
    key!(
        "listener",
        "ca_file",
        ["BITVILLE_PG_CA_FILE"],
        "",
        "PEM file of CA certificates to trust instead of the system's (private CAs)"
    ),
    key!(
        "listener",
        "timeout_s",
        ["BITVILLE_PG_TIMEOUT_S", "BITVILLE_PG_LISTENER_TIMEOUT_S"],
        "5",
        "seconds one request to the listener may take in all"
    ),
    key!(
        "listener",
        "max_requests_per_minute",
        ["BITVILLE_PG_MAX_REQUESTS_PER_MINUTE"],
        "60",
        "pace of requests to the listener (its limit is 100 per minute per client IP)"
    ),
    key!(
        "listener",
        "breaker_failures",
        ["BITVILLE_PG_BREAKER_FAILURES"],
        "5",
        "consecutive failed sends that open the circuit breaker"
    ),
    key!(
        "listener",
        "breaker_reset_s",
        ["BITVILLE_PG_BREAKER_RESET_S"],
        "60",
        "seconds the open breaker waits before one probe request"
    ),
    key!(
        "buffer",
        "path",
        ["BITVILLE_PG_BUFFER_PATH", "BITVILLE_PG_PATH"],
        "/var/lib/bitville-postgres-agent/buffer",
        "spool directory: every payload is written here before it is sent"
    ),
    key!(
        "buffer",
        "max_size_mb",
        ["BITVILLE_PG_BUFFER_MAX_SIZE_MB", "BITVILLE_PG_MAX_SIZE_MB"],
        "100",
        "spool size limit in MiB; the oldest data is dropped (and reported) beyond it"
    ),
    key!(
        "log",
        "level",
        ["BITVILLE_PG_LOG_LEVEL", "BITVILLE_PG_LEVEL"],
        "info",
        "agent log level: error, warn, info, debug or trace"
    ),
    key!(
        "log",
        "file",
        ["BITVILLE_PG_LOG_FILE", "BITVILLE_PG_FILE"],
        "",
        "append the agent's log to this file (reopened on SIGHUP); empty: standard error"
    ),
];

/// Environment variables with the agent's prefix that are not configuration keys.
const NON_KEY_ENV: &[&str] = &[CONFIG_PATH_ENV];

/// Where one effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A line of the INI file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line number, when it could be found.
        line: Option<usize>,
    },
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment {name}"),
        }
    }
}

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

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it (the driver, the HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "(empty)"
        } else {
            "********"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How query texts leave the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryTextMode {
    /// As PostgreSQL shows them.
    Full,
    /// String and numeric literals replaced by placeholders (no customer data leaves the server).
    Normalized,
    /// No query text at all.
    None,
}

/// How to reach the monitored server, and the limits of every session the agent opens.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Host name, IP, or a Unix socket directory (starts with `/`).
    pub host: String,
    /// Port (also names the Unix socket file).
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// Role name.
    pub user: String,
    /// Password (from `password_file` when set).
    pub password: Secret,
    /// Server-side `statement_timeout`. Defaults to 5 s.
    pub statement_timeout: Duration,
    /// Server-side `lock_timeout`. Defaults to 100 ms.
    pub lock_timeout: Duration,
    /// Server-side `idle_in_transaction_session_timeout`. Defaults to 10 s.
    pub idle_in_transaction_timeout: Duration,
    /// Socket connect timeout. Defaults to 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for a pooled connection. Defaults to 30 s.
    pub acquire_timeout: Duration,
    /// Most connections open at once, at most [`MAX_POOL_SIZE`]. Defaults to 5.
    pub pool_max_size: usize,
}

/// What is collected, how often, and where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct CollectionConfig {
    /// Length of a collection interval (one payload per collector). Defaults to 60 s.
    pub interval: Duration,
    /// Period of the pg_stat_activity sampler. Defaults to 1 s.
    pub sample_interval: Duration,
    /// Explicit server log file or directory; `None` means discover it from the server.
    pub log_path: Option<PathBuf>,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// Query text mode. Defaults to normalized.
    pub query_text: QueryTextMode,
    /// Longest query text shipped, in characters. Defaults to 1000.
    pub query_max_chars: usize,
    /// The application_name prefix before a correlation uuid. Defaults to `bitville-`.
    pub correlation_prefix: String,
    /// While this file exists no database query is made.
    pub pause_file: Option<PathBuf>,
    /// Server log entries shipped in full per minute. Defaults to 5000.
    pub log_max_entries_per_minute: usize,
    /// Tables per hot-table ranking. Defaults to 20.
    pub health_top_n: usize,
    /// Least time between the costly health figures. Defaults to 5 minutes.
    pub health_slow_interval: Duration,
    /// Hot-table query budget per interval on large catalogs. Defaults to 50 ms.
    pub health_tables_budget: Duration,
    /// More databases whose hot tables are collected (each takes one of the pool's connections).
    pub databases: Vec<String>,
}

/// Where and how payloads are delivered.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The ingest URL (http or https).
    pub url: String,
    /// The bearer token.
    pub api_key: Secret,
    /// The project identifier (1 to 50 characters).
    pub project_id: String,
    /// A PEM file of CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Overall timeout of one request. Defaults to 5 s.
    pub timeout: Duration,
    /// Request pace. Defaults to 60 per minute.
    pub max_requests_per_minute: u32,
    /// Consecutive failures that open the breaker. Defaults to 5.
    pub breaker_failures: u32,
    /// How long the open breaker waits before a probe. Defaults to 60 s.
    pub breaker_reset: Duration,
}

/// The on-disk spool.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// Spool directory.
    pub path: PathBuf,
    /// Size limit in bytes. Defaults to 100 MiB.
    pub max_size_bytes: u64,
}

/// The agent's own logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Level. Defaults to info.
    pub level: log::LevelFilter,
    /// File the log is appended to; `None` means standard error.
    pub file: Option<PathBuf>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[collection]`.
    pub collection: CollectionConfig,
    /// `[listener]`.
    pub listener: ListenerConfig,
    /// `[buffer]`.
    pub buffer: BufferConfig,
    /// `[log]`.
    pub log: LogConfig,
}

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

/// Stage one: every known key's text value and where it came from.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The file the values were read from, if any.
    pub file: Option<PathBuf>,
    values: HashMap<(&'static str, &'static str), (String, Origin)>,
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
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    load_from(cli_path, &env)
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

impl RawConfig {
    /// Merges defaults, the INI text (if any) and the environment, in rising priority.
    pub fn build(
        file: Option<(&Path, &str)>,
        env: &BTreeMap<String, String>,
        warnings: &mut Vec<String>,
    ) -> Result<RawConfig, ConfigError> {
        let mut values = HashMap::new();
        for spec in KEYS {
            values.insert(
                (spec.section, spec.key),
                (spec.default.to_string(), Origin::Default),
            );
        }
        if let Some((path, text)) = file {
            let options = ini::ParseOption {
                // The Python agent's configparser kept quotes and backslashes as they are;
                // a password containing them must reach the server unchanged.
                enabled_quote: false,
                enabled_escape: false,
                ..ini::ParseOption::default()
            };
            let parsed =
                ini::Ini::load_from_str_opt(text, options).map_err(|e| ConfigError::File {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {}", e.line + 1, e.msg),
                })?;
            let lines = key_lines(text);
            for (section, props) in parsed.iter() {
                let section_name = section.unwrap_or("").trim().to_string();
                for (key, value) in props.iter() {
                    let key_lc = key.trim().to_ascii_lowercase();
                    let line = lines.get(&(section_name.clone(), key_lc.clone())).copied();
                    match find_key(&section_name, &key_lc) {
                        Some(spec) => {
                            let origin = Origin::File {
                                path: path.to_path_buf(),
                                line,
                            };
                            values.insert(
                                (spec.section, spec.key),
                                (value.trim().to_string(), origin),
                            );
                        }
                        None => {
                            let at = Origin::File {
                                path: path.to_path_buf(),
                                line,
                            };
                            warnings.push(if section_name.is_empty() {
                                format!("{at}: key {key_lc} outside any section is ignored")
                            } else {
                                format!("{at}: unknown key [{section_name}] {key_lc} is ignored (a typo?)")
                            });
                        }
                    }
                }
            }
        }
        for spec in KEYS {
            let set: Vec<(&str, &String)> = spec
                .env
                .iter()
                .filter_map(|name| env.get(*name).map(|v| (*name, v)))
                .collect();
            if let Some((name, value)) = set.first() {
                if set.iter().any(|(_, v)| v != value) {
                    warnings.push(format!(
                        "environment {} and {} disagree for [{}] {}; {name} wins",
                        set[0].0, set[1].0, spec.section, spec.key
                    ));
                }
                values.insert(
                    (spec.section, spec.key),
                    (value.to_string(), Origin::Env(name.to_string())),
                );
            }
        }
        for name in env.keys() {
            let known = NON_KEY_ENV.contains(&name.as_str())
                || KEYS.iter().any(|s| s.env.contains(&name.as_str()));
            if !known {
                warnings.push(format!(
                    "unknown environment variable {name} is ignored (a typo?)"
                ));
            }
        }
        Ok(RawConfig {
            file: file.map(|(p, _)| p.to_path_buf()),
            values,
        })
    }

    /// The text value and origin of a known key.
    pub fn get(&self, section: &str, key: &str) -> (&str, &Origin) {
        let spec = find_key(section, key).expect("known key");
        let (v, o) = &self.values[&(spec.section, spec.key)];
        (v.as_str(), o)
    }
}

fn find_key(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.section == section && s.key == key)
}

/// The 1-based line of every `key = value` in INI text, by (section, lower-case key); the INI
/// crate does not report lines and errors must name them.
fn key_lines(text: &str) -> HashMap<(String, String), usize> {
    let mut section = String::new();
    let mut lines = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if let Some(end) = t.find(']') {
                section = t[1..end].trim().to_string();
            }
        } else if !t.starts_with(';') && !t.starts_with('#') {
            if let Some(pos) = t.find(['=', ':']) {
                lines.insert(
                    (section.clone(), t[..pos].trim().to_ascii_lowercase()),
                    n + 1,
                );
            }
        }
    }
    lines
}

/// Reads typed values out of a [`RawConfig`], turning every failure into a [`ConfigError`].
struct Reader<'a> {
    raw: &'a RawConfig,
    warnings: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn spec(&self, section: &str, key: &str) -> &'static KeySpec {
        find_key(section, key).expect("key listed in KEYS")
    }

    fn text(&self, section: &str, key: &str) -> (&str, Origin) {
        let (v, o) = self.raw.get(section, key);
        (v, o.clone())
    }

    fn error(&self, section: &str, key: &str, reason: String) -> ConfigError {
        let spec = self.spec(section, key);
        let (_, origin) = self.text(section, key);
        ConfigError::Value {
            origin,
            section: spec.section,
            key: spec.key,
            reason,
        }
    }

    fn string(&self, section: &str, key: &str) -> String {
        self.text(section, key).0.to_string()
    }

    fn optional_path(&self, section: &str, key: &str) -> Option<PathBuf> {
        let v = self.text(section, key).0;
        (!v.is_empty()).then(|| PathBuf::from(v))
    }

    /// A whole number within `min..=max`; outside it is an error.
    fn number(&self, section: &str, key: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let (v, _) = self.text(section, key);
        let n: u64 = v.parse().map_err(|_| {
            let what = if v.starts_with('-') {
                "must not be negative"
            } else {
                "is not a whole number"
            };
            self.error(section, key, format!("\"{v}\" {what}"))
        })?;
        if n < min || n > max {
            return Err(self.error(
                section,
                key,
                format!("{n} is out of range ({min} to {max})"),
            ));
        }
        Ok(n)
    }

    /// A whole number clamped into `min..=max` with a warning naming the asked and applied value.
    fn capped(&mut self, section: &str, key: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let asked = self.number(section, key, 0, u64::MAX)?;
        let applied = asked.clamp(min, max);
        if applied != asked {
            let (_, origin) = self.text(section, key);
            let why = if asked > max {
                format!("at most {max}")
            } else {
                format!("at least {min}")
            };
            self.warnings.push(format!(
                "{origin}: [{section}] {key} = {asked} is not allowed ({why}); using {applied}"
            ));
        }
        Ok(applied)
    }
}

impl Config {
    /// Stage two: parses and checks every value, applying the safety caps.
    pub fn from_raw(raw: &RawConfig, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
        let mut r = Reader { raw, warnings };
        let database = Self::database(&mut r)?;
        let collection = Self::collection(&mut r)?;
        let listener = Self::listener(&mut r)?;
        let max_mb = r.number("buffer", "max_size_mb", 1, 1024 * 1024)?;
        let buffer = BufferConfig {
            path: PathBuf::from(r.string("buffer", "path")),
            max_size_bytes: max_mb << 20,
        };
        let level = match r.string("log", "level").to_ascii_lowercase().as_str() {
            "error" => log::LevelFilter::Error,
            "warn" | "warning" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => {
                return Err(r.error(
                    "log",
                    "level",
                    format!("\"{other}\" is not one of error, warn, info, debug, trace"),
                ))
            }
        };
        // Every extra database holds one of the pool's connections; the main database keeps one.
        if collection.databases.len() >= database.pool_max_size {
            return Err(r.error(
                "collection",
                "databases",
                format!(
                    "{} databases need {} connections besides the main one, but pool_max_size is {}",
                    collection.databases.len(),
                    collection.databases.len(),
                    database.pool_max_size
                ),
            ));
        }
        for (key, path) in [("path", &buffer.path), ("state_dir", &collection.state_dir)] {
            if path.as_os_str().is_empty() || path.is_relative() {
                let section = if key == "path" {
                    "buffer"
                } else {
                    "collection"
                };
                return Err(r.error(
                    section,
                    key,
                    format!("\"{}\" must be an absolute path", path.display()),
                ));
            }
        }
        Ok(Config {
            database,
            collection,
            listener,
            buffer,
            log: LogConfig {
                level,
                file: r.optional_path("log", "file"),
            },
        })
    }

    fn database(r: &mut Reader<'_>) -> Result<DatabaseConfig, ConfigError> {
        let host = r.string("database", "host");
        if host.is_empty() {
            return Err(r.error("database", "host", "must not be empty".into()));
        }
        let port = r.number("database", "port", 1, 65535)? as u16;
        let mut password = Secret::new(r.string("database", "password"));
        if let Some(file) = r.optional_path("database", "password_file") {
            let text = crate::fsutil::read_regular_to_string(&file, crate::fsutil::MAX_TEXT_FILE)
                .map_err(|e| {
                r.error(
                    "database",
                    "password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            if !password.is_empty() {
                r.warnings
                    .push("both password and password_file are set; password_file wins".into());
            }
            password = Secret::new(text.lines().next().unwrap_or(""));
            if let Ok(meta) = std::fs::metadata(&file) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o004 != 0 {
                    r.warnings.push(format!(
                        "password file {} is readable by every user; chmod 600 it",
                        file.display()
                    ));
                }
            }
        }
        let statement_timeout_ms = r.capped(
            "database",
            "statement_timeout_ms",
            STATEMENT_TIMEOUT_MIN_MS,
            STATEMENT_TIMEOUT_MAX_MS,
        )?;
        let lock_timeout_ms = r.capped("database", "lock_timeout_ms", 1, LOCK_TIMEOUT_MAX_MS)?;
        let idle_ms = r.capped("database", "idle_in_transaction_timeout_ms", 1000, 60_000)?;
        let pool_max_size =
            r.capped("database", "pool_max_size", 1, MAX_POOL_SIZE as u64)? as usize;
        Ok(DatabaseConfig {
            dbname: r.string("database", "name"),
            user: r.string("database", "user"),
            host,
            port,
            password,
            statement_timeout: Duration::from_millis(statement_timeout_ms),
            lock_timeout: Duration::from_millis(lock_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(idle_ms),
            connect_timeout: Duration::from_secs(r.number(
                "database",
                "connect_timeout_s",
                1,
                300,
            )?),
            acquire_timeout: Duration::from_secs(r.number(
                "database",
                "acquire_timeout_s",
                1,
                3600,
            )?),
            pool_max_size,
        })
    }

    fn collection(r: &mut Reader<'_>) -> Result<CollectionConfig, ConfigError> {
        let databases: Vec<String> = r
            .string("collection", "databases")
            .split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        if let Some(bad) = databases.iter().find(|d| d.len() > 63) {
            return Err(r.error(
                "collection",
                "databases",
                format!("\"{bad}\" is longer than 63 bytes"),
            ));
        }
        let interval_s = r.number("collection", "interval_s", 1, 3600)?;
        let sample_ms = r.capped("collection", "sample_interval_ms", 100, interval_s * 1000)?;
        let query_text = match r
            .string("collection", "query_text")
            .to_ascii_lowercase()
            .as_str()
        {
            "full" => QueryTextMode::Full,
            "normalized" | "normalised" => QueryTextMode::Normalized,
            "none" => QueryTextMode::None,
            other => {
                return Err(r.error(
                    "collection",
                    "query_text",
                    format!("\"{other}\" is not one of full, normalized, none"),
                ))
            }
        };
        let correlation_prefix = r.string("collection", "correlation_prefix");
        if correlation_prefix.is_empty() {
            return Err(r.error(
                "collection",
                "correlation_prefix",
                "must not be empty".into(),
            ));
        }
        Ok(CollectionConfig {
            interval: Duration::from_secs(interval_s),
            sample_interval: Duration::from_millis(sample_ms),
            log_path: r.optional_path("collection", "log_path"),
            state_dir: PathBuf::from(r.string("collection", "state_dir")),
            query_text,
            query_max_chars: r.number("collection", "query_max_chars", 16, 1_000_000)? as usize,
            correlation_prefix,
            pause_file: r.optional_path("collection", "pause_file"),
            log_max_entries_per_minute: r.number(
                "collection",
                "log_max_entries_per_minute",
                100,
                10_000_000,
            )? as usize,
            health_top_n: r.number("collection", "health_top_n", 1, 100)? as usize,
            health_slow_interval: Duration::from_secs(r.number(
                "collection",
                "health_slow_interval_s",
                60,
                86_400,
            )?),
            health_tables_budget: Duration::from_millis(r.number(
                "collection",
                "health_tables_budget_ms",
                1,
                10_000,
            )?),
            databases,
        })
    }

    fn listener(r: &mut Reader<'_>) -> Result<ListenerConfig, ConfigError> {
        let url = r.string("listener", "url");
        let lower = url.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        match rest {
            None => {
                return Err(r.error(
                    "listener",
                    "url",
                    format!("\"{url}\" is not an http:// or https:// URL"),
                ))
            }
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                return Err(r.error("listener", "url", format!("\"{url}\" has no host")))
            }
            Some(_) => {}
        }
        let project_id = r.string("listener", "project_id");
        let n = project_id.chars().count();
        if !(1..=50).contains(&n) {
            return Err(r.error(
                "listener",
                "project_id",
                format!("\"{project_id}\" must be 1 to 50 characters (it is {n})"),
            ));
        }
        let ca_file = r.optional_path("listener", "ca_file");
        if let Some(ca) = &ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                return Err(r.error(
                    "listener",
                    "ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                ));
            }
        }
        Ok(ListenerConfig {
            url,
            api_key: Secret::new(r.string("listener", "api_key")),
            project_id,
            ca_file,
            timeout: Duration::from_secs(r.number("listener", "timeout_s", 1, 300)?),
            max_requests_per_minute: r.number("listener", "max_requests_per_minute", 1, 6000)?
                as u32,
            breaker_failures: r.number("listener", "breaker_failures", 1, 1000)? as u32,
            breaker_reset: Duration::from_secs(r.number(
                "listener",
                "breaker_reset_s",
                1,
                86_400,
            )?),
        })
    }
}

/// The effective configuration as text, one `key = value  ; origin` line per key, with secrets
/// masked: what `--check-config` prints.
pub fn describe(raw: &RawConfig) -> String {
    let mut out = String::new();
    if let Some(file) = &raw.file {
        out.push_str(&format!("; configuration file: {}\n", file.display()));
    }
    let mut section = "";
    for spec in KEYS {
        if spec.section != section {
            section = spec.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        let (value, origin) = raw.get(spec.section, spec.key);
        let shown = if spec.secret {
            format!("{:?}", Secret::new(value))
        } else {
            value.to_string()
        };
        out.push_str(&format!("{} = {}    ; {origin}\n", spec.key, shown));
    }
    out
}

/// The example configuration file (`etc/postgres-agent.ini.example`): every key, its default
/// and what it does. A test keeps the shipped file identical to this.
pub fn example_ini() -> String {
    let mut out = String::from(
        "; bitville-pg-agent configuration. Every key is optional; shown values are the defaults.\n\
         ; Every key can be overridden from the environment: BITVILLE_PG_<KEY> (upper case),\n\
         ; or the Python agent's names (BITVILLE_PG_DB_HOST, BITVILLE_PG_LISTENER_API_KEY, ...).\n\
         ; Priority: environment, then this file, then the defaults.\n",
    );
    let mut section = "";
    for spec in KEYS {
        if spec.section != section {
            section = spec.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        out.push_str(&format!("; {} (env: {})\n", spec.doc, spec.env.join(", ")));
        out.push_str(&format!("{} = {}\n", spec.key, spec.default));
    }
    out
}

/// The README's configuration table (between `<!-- keys:start -->` and `<!-- keys:end -->`),
/// generated from [`KEYS`] like the example file.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for spec in KEYS {
        let env: Vec<String> = spec.env.iter().map(|e| format!("`{e}`")).collect();
        let default = if spec.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", spec.default)
        };
        out.push_str(&format!(
            "| `[{}] {}` | {} | {default} | {} |\n",
            spec.section,
            spec.key,
            env.join(", "),
            spec.doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
