//! Finds, tails and parses the PostgreSQL server log, and turns its entries into `pg_log`
//! payloads.
//!
//! Data path: [`discover`] picks the file and format from the server's settings (or the
//! configured `log_path`) → [`tail::Tailer`] follows it across rotations and hands out complete
//! lines with their file offsets → [`parse::EntryParser`] assembles entries (stderr with any
//! `log_line_prefix`, csvlog, jsonlog) → [`feed::LogFeed`] batches them per interval and builds the
//! payloads → the caller appends them to the spool, then calls `commit` so the position file says
//! where the next start resumes.
//!
//! Invariants: the log is only read, never written; a missing or unreadable file is a warning and
//! a retry, never a panic; memory is bounded (line cap, entry cap, batch cap); the persisted
//! position only ever covers entries that were handed to the caller, so a clean restart neither
//! loses nor repeats a line (after `kill -9`, at-least-once).

pub mod entry;
pub mod prefix;
pub mod csvlog;
pub mod jsonlog;
pub mod parse;
pub mod tail;

pub use entry::{Entry, Level};
pub use parse::{EntryParser, Format, ParseStats};
