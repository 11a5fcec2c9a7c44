//! The key table: every configuration key, one row each, with its section, environment names,
//! default, allowed values and meaning.
//!
//! Invariants: this is the one place defaults live; the example INI, README's key table and
//! `--check-config` are generated from these rows, and `Config::from_raw` takes each number's
//! range (and whether leaving it is capped or rejected) from its row.

use super::{CONFIG_PATH_ENV, LOCK_TIMEOUT_MAX_MS, MAX_POOL_SIZE};
use super::{STATEMENT_TIMEOUT_MAX_MS, STATEMENT_TIMEOUT_MIN_MS};
use Allowed::{Cap, Chars, Decimal, OneOf, Range, Text};

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
    /// The values the key accepts, and what happens to one outside them.
    pub allowed: Allowed,
    /// One line on what the key does.
    pub doc: &'static str,
}

/// The values a key accepts, and whether one outside them is capped or rejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    /// Text; any check it needs (not empty, a URL, a list, an absolute path) is made where
    /// `Config::from_raw` parses it.
    Text,
    /// A whole number from `.0` to `.1`; another is an error.
    Range(u64, u64),
    /// A whole number from `.0` to `.1`; another is clamped into it, with a warning naming the
    /// value asked for and the one applied (the safety caps).
    Cap(u64, u64),
    /// A decimal number from `.0` to `.1`; another is an error.
    Decimal(f64, f64),
    /// Text of `.0` to `.1` characters; another is an error.
    Chars(usize, usize),
    /// One of these words, in any case; another is an error (`Config::from_raw` may accept a
    /// spelling variant besides).
    OneOf(&'static [&'static str]),
}

/// One row of [`KEYS`]: `key!([secret] section, key, [env names], default, allowed, doc)`.
macro_rules! key {
    (@ $secret:expr, $section:literal, $key:literal, [$($env:literal),*], $default:literal, $allowed:expr, $doc:literal) => {
        KeySpec { section: $section, key: $key, env: &[$($env),*], default: $default, secret: $secret, allowed: $allowed, doc: $doc }
    };
    (secret $($row:tt)*) => { key!(@ true, $($row)*) };
    ($($row:tt)*) => { key!(@ false, $($row)*) };
}

/// Every key the agent knows, with its default. The example config, README's key table and
/// `--check-config` are generated from and tested against this table.
///
/// A row: `key!([secret] "section", "key", ["BITVILLE_PG_KEY", more env names], "default",
/// allowed, "doc")`. `secret` hides the value everywhere. `allowed` is an [`Allowed`]: `Text`,
/// `Range(min, max)` (rejected outside), `Cap(min, max)` (clamped with a warning),
/// `Decimal(min, max)`, `Chars(min, max)` or `OneOf(&["word", ...])`. A range the doc states as
/// `(min to max)` must be the row's (a unit test checks). Rows of a section stay together, in
/// the order the example INI shows them.
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    key!("database", "host", ["BITVILLE_PG_DB_HOST", "BITVILLE_PG_HOST"], "localhost", Text,
        "server host name or IP, or a Unix socket directory such as /var/run/postgresql"),
    key!("database", "port", ["BITVILLE_PG_DB_PORT", "BITVILLE_PG_PORT"], "5432", Range(1, 65535),
        "server port"),
    key!("database", "name", ["BITVILLE_PG_DB_NAME", "BITVILLE_PG_NAME"], "postgres", Text,
        "database to connect to"),
    key!("database", "user", ["BITVILLE_PG_DB_USER", "BITVILLE_PG_USER"], "bitville_monitor", Text,
        "role to connect as (give it pg_monitor, see etc/monitor-role.sql)"),
    key!(secret "database", "password", ["BITVILLE_PG_DB_PASSWORD", "BITVILLE_PG_PASSWORD"], "", Text,
        "password; prefer password_file or peer authentication over a Unix socket"),
    key!("database", "password_file", ["BITVILLE_PG_PASSWORD_FILE", "BITVILLE_PG_DB_PASSWORD_FILE"], "", Text,
        "file whose first line is the password (wins over password)"),
    key!("database", "statement_timeout_ms", ["BITVILLE_PG_STATEMENT_TIMEOUT_MS"], "5000", Cap(STATEMENT_TIMEOUT_MIN_MS, STATEMENT_TIMEOUT_MAX_MS),
        "server-side statement_timeout of every agent query (1000 to 30000)"),
    key!("database", "lock_timeout_ms", ["BITVILLE_PG_LOCK_TIMEOUT_MS"], "100", Cap(1, LOCK_TIMEOUT_MAX_MS),
        "server-side lock_timeout: give up instead of queueing behind a lock (1 to 1000)"),
    key!("database", "idle_in_transaction_timeout_ms", ["BITVILLE_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS"], "10000", Cap(1000, 60_000),
        "server-side idle_in_transaction_session_timeout of agent sessions (1000 to 60000)"),
    key!("database", "connect_timeout_s", ["BITVILLE_PG_CONNECT_TIMEOUT_S"], "5", Range(1, 300),
        "seconds one connection attempt may take as a whole (socket, authentication, session set-up)"),
    key!("database", "acquire_timeout_s", ["BITVILLE_PG_ACQUIRE_TIMEOUT_S"], "30", Range(1, 3600),
        "seconds a collector waits for a free pooled connection before giving up"),
    key!("database", "pool_max_size", ["BITVILLE_PG_POOL_MAX_SIZE"], "5", Cap(1, MAX_POOL_SIZE as u64),
        "most connections the agent opens (never more than 5)"),
    key!("collection", "interval_s", ["BITVILLE_PG_COLLECTION_INTERVAL_S", "BITVILLE_PG_INTERVAL_S"], "60", Range(1, 3600),
        "seconds between payloads of each collector (1 to 3600)"),
    key!("collection", "sample_interval_ms", ["BITVILLE_PG_SAMPLE_INTERVAL_MS"], "1000", Cap(100, 3_600_000),
        "milliseconds between pg_stat_activity samples (100 to interval_s)"),
    key!("collection", "log_path", ["BITVILLE_PG_LOG_PATH"], "", Text,
        "server log file or directory; empty: discovered from the server's settings"),
    key!("collection", "state_dir", ["BITVILLE_PG_STATE_DIR"], "/var/lib/bitville-postgres-agent/state", Text,
        "directory for the agent's own state (baselines, log position, status)"),
    key!("collection", "query_text", ["BITVILLE_PG_QUERY_TEXT"], "normalized", OneOf(&["full", "normalized", "none"]),
        "query texts shipped: full, normalized (literals replaced) or none"),
    key!("collection", "query_max_chars", ["BITVILLE_PG_QUERY_MAX_CHARS"], "1000", Range(16, 1_000_000),
        "longest query text shipped, in characters"),
    key!("collection", "correlation_prefix", ["BITVILLE_PG_CORRELATION_PREFIX"], "bitville-", Text,
        "application_name prefix followed by a 36-character uuid that marks a PHP request"),
    key!("collection", "correlation_sources", ["BITVILLE_PG_CORRELATION_SOURCES"], "comment,application_name,traceparent", Text,
        "markers that link a statement to a request, most trusted first: comment (/* correlation:<uuid> */ in the query), application_name (the prefix above), traceparent (W3C, in application_name or a sqlcommenter comment); empty turns correlation off"),
    key!("collection", "pause_file", ["BITVILLE_PG_PAUSE_FILE"], "", Text,
        "while this file exists the agent makes no database queries (emergency brake)"),
    key!("collection", "log_max_entries_per_minute", ["BITVILLE_PG_LOG_MAX_ENTRIES_PER_MINUTE"], "5000", Range(100, 10_000_000),
        "server log entries shipped in full per minute; beyond it only events (temp files, lock waits, checkpoints, ...), warnings, errors and correlated entries, the rest counted"),
    key!("collection", "plan_max_bytes", ["BITVILLE_PG_PLAN_MAX_BYTES"], "65536", Range(1024, 1 << 20),
        "largest auto_explain plan shipped per statement, in bytes (larger ones are cut and marked)"),
    key!("collection", "health_top_n", ["BITVILLE_PG_HEALTH_TOP_N"], "20", Range(1, 100),
        "tables per hot-table ranking and unused indexes shipped (1 to 100)"),
    key!("collection", "health_slow_interval_s", ["BITVILLE_PG_HEALTH_SLOW_INTERVAL_S"], "300", Range(60, 86_400),
        "least seconds between the costly health figures: database sizes, unused indexes"),
    key!("collection", "health_tables_budget_ms", ["BITVILLE_PG_HEALTH_TABLES_BUDGET_MS"], "50", Range(1, 10_000),
        "hot-table query cost per interval above which (5000+ tables) it runs less often"),
    key!("collection", "sample_cpu_budget_ms", ["BITVILLE_PG_SAMPLE_CPU_BUDGET_MS"], "5", Decimal(0.0, 1000.0),
        "CPU one activity sample may take (ms; 0 = off); over it the sampler degrades in a stated order: /proc I/O reads, then /proc reads of unchanged executions, then a stretched sample interval (up to 4x)"),
    key!("collection", "databases", ["BITVILLE_PG_DATABASES"], "", Text,
        "more databases (comma-separated) whose hot tables are collected, one connection each, within the cap of 5"),
    key!("listener", "url", ["BITVILLE_PG_LISTENER_URL", "BITVILLE_PG_URL"], "https://listener:8443/ingest/postgres", Text,
        "the listener's ingest URL (http or https)"),
    key!(secret "listener", "api_key", ["BITVILLE_PG_LISTENER_API_KEY", "BITVILLE_PG_API_KEY"], "", Text,
        "bearer token the listener expects"),
    key!("listener", "project_id", ["BITVILLE_PG_PROJECT_ID"], "default", Chars(1, 50),
        "project identifier sent with every payload (1 to 50 characters)"),
    key!("listener", "ca_file", ["BITVILLE_PG_CA_FILE"], "", Text,
        "PEM file of CA certificates to trust instead of the system's (private CAs)"),
    key!("listener", "timeout_s", ["BITVILLE_PG_TIMEOUT_S", "BITVILLE_PG_LISTENER_TIMEOUT_S"], "5", Range(1, 300),
        "seconds one request to the listener may take in all"),
    key!("listener", "max_requests_per_minute", ["BITVILLE_PG_MAX_REQUESTS_PER_MINUTE"], "60", Range(1, 6000),
        "pace of requests to the listener (its limit is 100 per minute per client IP)"),
    key!("listener", "breaker_failures", ["BITVILLE_PG_BREAKER_FAILURES"], "5", Range(1, 1000),
        "consecutive failed sends that open the circuit breaker"),
    key!("listener", "breaker_reset_s", ["BITVILLE_PG_BREAKER_RESET_S"], "60", Range(1, 86_400),
        "seconds the open breaker waits before one probe request"),
    key!("buffer", "path", ["BITVILLE_PG_BUFFER_PATH", "BITVILLE_PG_PATH"], "/var/lib/bitville-postgres-agent/buffer", Text,
        "spool directory: every payload is written here before it is sent"),
    key!("buffer", "max_size_mb", ["BITVILLE_PG_BUFFER_MAX_SIZE_MB", "BITVILLE_PG_MAX_SIZE_MB"], "100", Range(1, 1024 * 1024),
        "spool size limit in MiB; the oldest data is dropped (and reported) beyond it"),
    key!("log", "level", ["BITVILLE_PG_LOG_LEVEL", "BITVILLE_PG_LEVEL"], "info", OneOf(&["error", "warn", "info", "debug", "trace"]),
        "agent log level: error, warn, info, debug or trace"),
    key!("log", "file", ["BITVILLE_PG_LOG_FILE", "BITVILLE_PG_FILE"], "", Text,
        "append the agent's log to this file (reopened on SIGHUP); empty: standard error"),
    key!("spike", "min_active_sessions", ["BITVILLE_PG_MIN_ACTIVE_SESSIONS"], "10", Range(1, 100_000),
        "a spike needs at least this many active sessions (or backends in run state R or D): fewer cannot hurt a server however small its baseline"),
    key!("spike", "baseline_factor", ["BITVILLE_PG_BASELINE_FACTOR"], "3", Decimal(0.0, 1000.0),
        "a spike needs more than this many times the baseline (the 5-minute mean with the spike left out) of active sessions or R+D backends"),
    key!("spike", "load_per_cpu", ["BITVILLE_PG_LOAD_PER_CPU"], "2", Decimal(0.0, 1000.0),
        "load1 above this many times the CPU count is a spike by itself (twice as many runnable tasks as CPUs) once at least min_active_sessions sessions are active, so other work on a busy host does not start burst sampling; 0 disables"),
    key!("spike", "end_after_quiet_s", ["BITVILLE_PG_END_AFTER_QUIET_S"], "10", Range(1, 3600),
        "a spike ends after this many seconds without a sample over the thresholds, so one calm second does not split it"),
    key!("spike", "baseline_s", ["BITVILLE_PG_BASELINE_S"], "300", Range(1, 86_400),
        "time constant of the rolling baseline, in seconds (1 to 86400)"),
    key!("spike", "burst_sample_interval_ms", ["BITVILLE_PG_BURST_SAMPLE_INTERVAL_MS"], "250", Range(100, 1000),
        "pg_stat_activity sample period while a spike lasts (100 to 1000; 4 samples a second see the pile-up build)"),
    key!("spike", "burst_max_s", ["BITVILLE_PG_BURST_MAX_S"], "60", Range(0, 3600),
        "most seconds of burst sampling per spike; a longer spike goes on at the normal period"),
    key!("spike", "burst_budget_s_per_hour", ["BITVILLE_PG_BURST_BUDGET_S_PER_HOUR"], "300", Range(0, 3600),
        "most seconds of burst sampling in any hour, so flapping load cannot make the agent a load of its own"),
    key!("spike", "attribution_top_n", ["BITVILLE_PG_ATTRIBUTION_TOP_N"], "10", Range(1, 100),
        "rows per table of the load attribution (queries, requests, users, databases, client addresses) before the \"other\" row (1 to 100)"),
    key!("spike", "history_hours", ["BITVILLE_PG_HISTORY_HOURS"], "24", Range(1, 720),
        "hours of timeline and spike reports the local flight recorder keeps for --report (1 to 720)"),
    key!("spike", "history_max_mb", ["BITVILLE_PG_HISTORY_MAX_MB"], "64", Range(1, 4096),
        "size cap of the flight recorder's two files together, in MiB (1 to 4096); 24 h of 1 s rows take about 20 MiB"),
];

/// The default of a whole-number key in [`KEYS`], for the `Default`s of library option structs
/// (so each default is written once, in its row). 0 for a key that is not in the table or whose
/// default is not a whole number; a unit test proves the keys the option structs use are.
pub fn default_whole(section: &str, key: &str) -> u64 {
    KEYS.iter()
        .find(|k| k.section == section && k.key == key)
        .and_then(|k| k.default.parse().ok())
        .unwrap_or(0)
}

/// Environment variables with the agent's prefix that are not configuration keys.
pub(super) const NON_KEY_ENV: &[&str] = &[CONFIG_PATH_ENV];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_struct_defaults_are_whole_numbers_of_the_table() {
        // The keys whose defaults `HealthOptions` and `ShipperOptions` take.
        let used = [
            ("collection", "health_top_n"),
            ("collection", "health_slow_interval_s"),
            ("collection", "health_tables_budget_ms"),
            ("listener", "timeout_s"),
            ("listener", "max_requests_per_minute"),
            ("listener", "breaker_failures"),
            ("listener", "breaker_reset_s"),
        ];
        for (section, key) in used {
            assert!(default_whole(section, key) > 0, "[{section}] {key}");
        }
        assert_eq!(default_whole("collection", "health_top_n"), 20);
        assert_eq!(default_whole("collection", "no_such_key"), 0);
    }
}
