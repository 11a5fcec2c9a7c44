//! Stage two of loading: the text values of a [`RawConfig`] become the typed sub-configs, with
//! the safety caps applied and warnings collected.
//!
//! Invariants: a number's range, and whether a value outside it is capped (with a warning) or
//! rejected, comes from its row in [`KEYS`](super::KEYS); every error names the value's origin,
//! section and key, and never a secret.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{Allowed, KeySpec};
use super::raw::{find_key, Origin, RawConfig};
use super::secret::{excerpt, Secret};
use super::ConfigError;

/// How query texts leave the server: the one enum, kept with the rule it selects.
pub use crate::normalize::QueryTextMode;

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
    /// Most connections open at once, at most [`MAX_POOL_SIZE`](super::MAX_POOL_SIZE). Defaults to 5.
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
    /// Which markers link a statement to a request. Defaults to comment, application_name and
    /// traceparent.
    pub correlation_sources: crate::normalize::CorrelationSources,
    /// While this file exists no database query is made.
    pub pause_file: Option<PathBuf>,
    /// Server log entries shipped in full per minute. Defaults to 5000.
    pub log_max_entries_per_minute: usize,
    /// Largest auto_explain plan shipped per statement, in bytes. Defaults to 64 KiB.
    pub plan_max_bytes: usize,
    /// Tables per hot-table ranking. Defaults to 20.
    pub health_top_n: usize,
    /// Least time between the costly health figures. Defaults to 5 minutes.
    pub health_slow_interval: Duration,
    /// Hot-table query budget per interval on large catalogs. Defaults to 50 ms.
    pub health_tables_budget: Duration,
    /// More databases whose hot tables are collected (each takes one of the pool's connections).
    pub databases: Vec<String>,
    /// CPU one activity sample may take before the sampler degrades; zero turns the cost
    /// control off. Defaults to 2 ms (5 µs per session at 400 active sessions, issue 16's target).
    pub sample_cpu_budget: Duration,
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

/// The spike detector, burst sampling, load attribution and the flight recorder (`[spike]`).
#[derive(Debug, Clone)]
pub struct SpikeConfig {
    /// Floor of active sessions (or R+D backends) for a spike. Defaults to 10.
    pub min_active_sessions: u32,
    /// Multiple of the baseline a spike exceeds. Defaults to 3.
    pub baseline_factor: f64,
    /// load1 per CPU that is a spike by itself; 0 disables. Defaults to 2.
    pub load_per_cpu: f64,
    /// Quiet time that ends a spike. Defaults to 10 s.
    pub end_after_quiet: Duration,
    /// Time constant of the baseline. Defaults to 300 s.
    pub baseline: Duration,
    /// Sample period while bursting. Defaults to 250 ms.
    pub burst_sample_interval: Duration,
    /// Most burst time per spike. Defaults to 60 s.
    pub burst_max: Duration,
    /// Most burst time per hour. Defaults to 300 s.
    pub burst_budget_per_hour: Duration,
    /// Rows per attribution table. Defaults to 10.
    pub attribution_top_n: usize,
    /// History the flight recorder keeps. Defaults to 24 h.
    pub history: Duration,
    /// Size cap of the flight recorder. Defaults to 64 MiB.
    pub history_max_bytes: u64,
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
    /// `[spike]`.
    pub spike: SpikeConfig,
}

/// Reads typed values out of a [`RawConfig`], turning every failure into a [`ConfigError`].
///
/// Its panics only say that a read and its key's row disagree (say `whole` on a `Text` key):
/// a programming error that every test loading the defaults catches, never a bad value.
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
            self.error(section, key, format!("{} {what}", excerpt(v)))
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

    /// A whole-number key, checked against its row in [`KEYS`](super::KEYS): `Range` rejects a
    /// value outside it, `Cap` clamps it with a warning.
    fn whole(&mut self, section: &str, key: &str) -> Result<u64, ConfigError> {
        self.whole_at_most(section, key, u64::MAX)
    }

    /// [`Reader::whole`] with the row's upper bound lowered to `at_most` (a bound that depends
    /// on another key's value).
    fn whole_at_most(
        &mut self,
        section: &str,
        key: &str,
        at_most: u64,
    ) -> Result<u64, ConfigError> {
        match self.spec(section, key).allowed {
            Allowed::Range(min, max) => self.number(section, key, min, max.min(at_most)),
            Allowed::Cap(min, max) => self.capped(section, key, min, max.min(at_most)),
            other => panic!("[{section}] {key} is {other:?} in KEYS, not a whole number"),
        }
    }

    /// A `Decimal` key within its row's range; outside it is an error.
    fn decimal(&self, section: &str, key: &str) -> Result<f64, ConfigError> {
        let Allowed::Decimal(min, max) = self.spec(section, key).allowed else {
            panic!("[{section}] {key} is not a decimal in KEYS");
        };
        let v = self.string(section, key);
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
            _ => Err(self.error(
                section,
                key,
                format!("{} is not a number from {min} to {max}", excerpt(&v)),
            )),
        }
    }

    /// A `Chars` key's text, of as many characters as its row allows; another is an error.
    fn chars(&self, section: &str, key: &str) -> Result<String, ConfigError> {
        let Allowed::Chars(min, max) = self.spec(section, key).allowed else {
            panic!("[{section}] {key} is not a Chars key in KEYS");
        };
        let v = self.string(section, key);
        let n = v.chars().count();
        if !(min..=max).contains(&n) {
            return Err(self.error(
                section,
                key,
                format!(
                    "{} must be {min} to {max} characters (it is {n})",
                    excerpt(&v)
                ),
            ));
        }
        Ok(v)
    }

    /// The error for a `OneOf` key's value that is none of its row's words.
    fn not_one_of(&self, section: &str, key: &str, value: &str) -> ConfigError {
        let Allowed::OneOf(words) = self.spec(section, key).allowed else {
            panic!("[{section}] {key} is not a OneOf key in KEYS");
        };
        let reason = format!("{} is not one of {}", excerpt(value), words.join(", "));
        self.error(section, key, reason)
    }
}

impl Config {
    /// Stage two: parses and checks every value, applying the safety caps.
    pub fn from_raw(raw: &RawConfig, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
        let mut r = Reader { raw, warnings };
        let database = Self::database(&mut r)?;
        let collection = Self::collection(&mut r)?;
        let listener = Self::listener(&mut r)?;
        let spike = Self::spike(&mut r)?;
        let max_mb = r.whole("buffer", "max_size_mb")?;
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
            other => return Err(r.not_one_of("log", "level", other)),
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
            spike,
        })
    }

    fn spike(r: &mut Reader<'_>) -> Result<SpikeConfig, ConfigError> {
        let factor = r.decimal("spike", "baseline_factor")?;
        if factor < 1.0 {
            return Err(r.error(
                "spike",
                "baseline_factor",
                format!("{factor} is below 1: every sample would be a spike"),
            ));
        }
        Ok(SpikeConfig {
            min_active_sessions: r.whole("spike", "min_active_sessions")? as u32,
            baseline_factor: factor,
            load_per_cpu: r.decimal("spike", "load_per_cpu")?,
            end_after_quiet: Duration::from_secs(r.whole("spike", "end_after_quiet_s")?),
            baseline: Duration::from_secs(r.whole("spike", "baseline_s")?),
            burst_sample_interval: Duration::from_millis(
                r.whole("spike", "burst_sample_interval_ms")?,
            ),
            burst_max: Duration::from_secs(r.whole("spike", "burst_max_s")?),
            burst_budget_per_hour: Duration::from_secs(
                r.whole("spike", "burst_budget_s_per_hour")?,
            ),
            attribution_top_n: r.whole("spike", "attribution_top_n")? as usize,
            history: Duration::from_secs(r.whole("spike", "history_hours")? * 3600),
            history_max_bytes: r.whole("spike", "history_max_mb")? << 20,
        })
    }

    fn database(r: &mut Reader<'_>) -> Result<DatabaseConfig, ConfigError> {
        let host = r.string("database", "host");
        if host.is_empty() {
            return Err(r.error("database", "host", "must not be empty".into()));
        }
        let port = r.whole("database", "port")? as u16;
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
        let statement_timeout_ms = r.whole("database", "statement_timeout_ms")?;
        let lock_timeout_ms = r.whole("database", "lock_timeout_ms")?;
        let idle_ms = r.whole("database", "idle_in_transaction_timeout_ms")?;
        let pool_max_size = r.whole("database", "pool_max_size")? as usize;
        Ok(DatabaseConfig {
            dbname: r.string("database", "name"),
            user: r.string("database", "user"),
            host,
            port,
            password,
            statement_timeout: Duration::from_millis(statement_timeout_ms),
            lock_timeout: Duration::from_millis(lock_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(idle_ms),
            connect_timeout: Duration::from_secs(r.whole("database", "connect_timeout_s")?),
            acquire_timeout: Duration::from_secs(r.whole("database", "acquire_timeout_s")?),
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
                format!("{} is longer than 63 bytes", excerpt(bad)),
            ));
        }
        let interval_s = r.whole("collection", "interval_s")?;
        let sample_ms = r.whole_at_most("collection", "sample_interval_ms", interval_s * 1000)?;
        let query_text_word = r.string("collection", "query_text");
        let query_text = QueryTextMode::parse(&query_text_word).ok_or_else(|| {
            r.not_one_of(
                "collection",
                "query_text",
                &query_text_word.to_ascii_lowercase(),
            )
        })?;
        let correlation_prefix = r.string("collection", "correlation_prefix");
        if correlation_prefix.is_empty() {
            return Err(r.error(
                "collection",
                "correlation_prefix",
                "must not be empty".into(),
            ));
        }
        let correlation_sources = crate::normalize::CorrelationSources::parse(
            &r.string("collection", "correlation_sources"),
        )
        .map_err(|why| r.error("collection", "correlation_sources", why))?;
        Ok(CollectionConfig {
            interval: Duration::from_secs(interval_s),
            sample_interval: Duration::from_millis(sample_ms),
            log_path: r.optional_path("collection", "log_path"),
            state_dir: PathBuf::from(r.string("collection", "state_dir")),
            query_text,
            query_max_chars: r.whole("collection", "query_max_chars")? as usize,
            correlation_prefix,
            correlation_sources,
            pause_file: r.optional_path("collection", "pause_file"),
            log_max_entries_per_minute: r.whole("collection", "log_max_entries_per_minute")?
                as usize,
            plan_max_bytes: r.whole("collection", "plan_max_bytes")? as usize,
            health_top_n: r.whole("collection", "health_top_n")? as usize,
            health_slow_interval: Duration::from_secs(
                r.whole("collection", "health_slow_interval_s")?,
            ),
            health_tables_budget: Duration::from_millis(
                r.whole("collection", "health_tables_budget_ms")?,
            ),
            databases,
            sample_cpu_budget: Duration::from_secs_f64(
                r.decimal("collection", "sample_cpu_budget_ms")? / 1000.0,
            ),
        })
    }

    fn listener(r: &mut Reader<'_>) -> Result<ListenerConfig, ConfigError> {
        let url = r.string("listener", "url");
        if let Some(problem) = listener_url_problem(&url) {
            return Err(r.error("listener", "url", format!("{} {problem}", excerpt(&url))));
        }
        let project_id = r.chars("listener", "project_id")?;
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
            timeout: Duration::from_secs(r.whole("listener", "timeout_s")?),
            max_requests_per_minute: r.whole("listener", "max_requests_per_minute")? as u32,
            breaker_failures: r.whole("listener", "breaker_failures")? as u32,
            breaker_reset: Duration::from_secs(r.whole("listener", "breaker_reset_s")?),
        })
    }
}

/// What is wrong with a listener URL, if anything: the one rule for the configuration and the
/// shipper (`http://` or `https://`, any case, then a host).
pub fn listener_url_problem(url: &str) -> Option<&'static str> {
    let lower = url.to_ascii_lowercase();
    match lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        None => Some("is not an http:// or https:// URL"),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => Some("has no host"),
        Some(_) => None,
    }
}
