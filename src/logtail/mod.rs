//! Finds, tails and parses the PostgreSQL server log, and turns its entries into `pg_log`
//! payloads.
//!
//! Data path: [`discover`] picks the file and format from the server's settings (or the
//! configured `log_path`) → [`tail::Tailer`] follows it across rotations and hands complete lines
//! with their file offsets to [`parse::EntryParser`], which assembles entries (stderr with any
//! `log_line_prefix` via [`prefix`], [`csvlog`], [`jsonlog`]) → [`feed::LogFeed`] batches them per
//! interval and [`build`] makes the payloads → the caller appends them to the spool, then calls
//! `commit` so the position file says where the next start resumes. [`analyze`] runs the same
//! parser over a whole file for `--analyze-log`.
//!
//! Invariants: the log is only read, never written; a missing or unreadable file is a warning and
//! a retry, never a panic; memory is bounded (line cap, entry cap, batch cap); the persisted
//! position only ever covers entries that were handed to the caller, so a clean restart neither
//! loses nor repeats a line (after `kill -9`, at-least-once).

pub mod analyze;
pub mod build;
pub mod csvlog;
pub mod discover;
pub mod entry;
pub mod events;
pub mod eventstore;
pub mod feed;
pub mod jsonlog;
pub mod parse;
pub mod plan;
pub mod prefix;
pub mod tail;

pub use analyze::{analyze_log, LogAnalysis};
pub use build::{PayloadOptions, QueryText};
pub use discover::{
    discover, discover_from_cache, discover_from_server, LogSource, NoLog, ServerLogSettings,
    SETTINGS_QUERY,
};
pub use entry::{Entry, Level};
pub use eventstore::{EventStore, StoredEvent};
pub use feed::{FeedConfig, Flush, LogFeed};
pub use parse::{EntryParser, Format, ParseStats};
pub use plan::{PlanStore, StoredPlan};
pub use tail::{Follow, Position, TailConfig, TailError, Tailer};
