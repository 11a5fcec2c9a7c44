//! The server's messages that explain load, classified: temporary files, lock waits, deadlocks,
//! timeouts and cancels, checkpoints, automatic vacuum and analyze, connections, out of
//! connections, out of memory, replication conflicts, lock failures. Each class has a stable name
//! ([`EventClass::as_str`]) and the figures parsed from its message and DETAIL.
//!
//! Invariants: classification reads the English message texts (`lc_messages = 'C'` or English),
//! whatever the log format (the entry is the same); it never panics, and a message it does not
//! recognise is simply not an event. Figures hold numbers, lock modes, pids and the names the
//! server gives (tables), never a value from a statement.

use crate::json::Json;

use super::entry::{Entry, Level};

/// What kind of event an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventClass {
    /// `temporary file: path "...", size N` (log_temp_files).
    TempFile,
    /// `process N still waiting for <mode> on <object> after N ms` (log_lock_waits).
    LockWait,
    /// `process N acquired <mode> on <object> after N ms` (log_lock_waits).
    LockAcquired,
    /// `deadlock detected` (ERROR), or `process N detected deadlock while waiting ...` (LOG).
    Deadlock,
    /// `canceling statement due to lock timeout`.
    LockTimeout,
    /// `canceling statement due to statement timeout`.
    StatementTimeout,
    /// `canceling statement due to transaction timeout` (PG17+).
    TransactionTimeout,
    /// `terminating connection due to idle-in-transaction timeout`.
    IdleInTransactionTimeout,
    /// `canceling statement due to user request`.
    Canceled,
    /// `checkpoint starting: <reason>` (also `restartpoint starting:`).
    CheckpointStarting,
    /// `checkpoint complete: wrote N buffers ...` (also `restartpoint complete:`).
    CheckpointComplete,
    /// `checkpoints are occurring too frequently (N seconds apart)`.
    CheckpointsTooFrequent,
    /// `automatic vacuum of table "..."` (log_autovacuum_min_duration).
    Autovacuum,
    /// `automatic analyze of table "..."`.
    Autoanalyze,
    /// `connection received: host=...` (log_connections).
    ConnectionReceived,
    /// `connection authorized: user=... database=...` (log_connections).
    ConnectionAuthorized,
    /// `sorry, too many clients already`, reserved slots, per-role/database limits.
    TooManyConnections,
    /// `out of memory`.
    OutOfMemory,
    /// `canceling statement due to conflict with recovery` (and the terminating variant).
    ReplicationConflict,
    /// `could not obtain lock on ...` (NOWAIT, SKIP LOCKED, PG18 `log_lock_failures`).
    LockFailure,
}

impl EventClass {
    /// Every class, in the order counts are reported.
    pub const ALL: [EventClass; 20] = [
        EventClass::TempFile,
        EventClass::LockWait,
        EventClass::LockAcquired,
        EventClass::Deadlock,
        EventClass::LockTimeout,
        EventClass::StatementTimeout,
        EventClass::TransactionTimeout,
        EventClass::IdleInTransactionTimeout,
        EventClass::Canceled,
        EventClass::CheckpointStarting,
        EventClass::CheckpointComplete,
        EventClass::CheckpointsTooFrequent,
        EventClass::Autovacuum,
        EventClass::Autoanalyze,
        EventClass::ConnectionReceived,
        EventClass::ConnectionAuthorized,
        EventClass::TooManyConnections,
        EventClass::OutOfMemory,
        EventClass::ReplicationConflict,
        EventClass::LockFailure,
    ];

    /// The stable name payloads carry.
    pub fn as_str(self) -> &'static str {
        match self {
            EventClass::TempFile => "temp_file",
            EventClass::LockWait => "lock_wait",
            EventClass::LockAcquired => "lock_acquired",
            EventClass::Deadlock => "deadlock",
            EventClass::LockTimeout => "lock_timeout",
            EventClass::StatementTimeout => "statement_timeout",
            EventClass::TransactionTimeout => "transaction_timeout",
            EventClass::IdleInTransactionTimeout => "idle_in_transaction_timeout",
            EventClass::Canceled => "canceled",
            EventClass::CheckpointStarting => "checkpoint_starting",
            EventClass::CheckpointComplete => "checkpoint_complete",
            EventClass::CheckpointsTooFrequent => "checkpoints_too_frequent",
            EventClass::Autovacuum => "autovacuum",
            EventClass::Autoanalyze => "autoanalyze",
            EventClass::ConnectionReceived => "connection_received",
            EventClass::ConnectionAuthorized => "connection_authorized",
            EventClass::TooManyConnections => "too_many_connections",
            EventClass::OutOfMemory => "out_of_memory",
            EventClass::ReplicationConflict => "replication_conflict",
            EventClass::LockFailure => "lock_failure",
        }
    }

    /// True for the classes that happen to one statement (and are listed on it in correlated
    /// records): temp files, lock waits, deadlocks, timeouts, cancels, lock failures, conflicts.
    pub fn is_per_statement(self) -> bool {
        matches!(
            self,
            EventClass::TempFile
                | EventClass::LockWait
                | EventClass::LockAcquired
                | EventClass::Deadlock
                | EventClass::LockTimeout
                | EventClass::StatementTimeout
                | EventClass::TransactionTimeout
                | EventClass::Canceled
                | EventClass::ReplicationConflict
                | EventClass::LockFailure
                | EventClass::OutOfMemory
        )
    }
}

/// A classified entry: its class and figures (`{"class": ..., ...}` in payloads).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The class.
    pub class: EventClass,
    /// The figures parsed from the message and DETAIL (an object; may be empty).
    pub figures: Json,
}

impl Event {
    /// `{"class": "...", <figures>}`.
    pub fn to_json(&self) -> Json {
        let mut o = Json::object().field("class", self.class.as_str());
        if let Json::Object(fields) = &self.figures {
            // Figures the message did not have are left out rather than sent as null.
            for (k, v) in fields.iter().filter(|(_, v)| *v != Json::Null) {
                o.push(k.clone(), v.clone());
            }
        }
        o
    }
}

/// The event `e` is, if any.
pub fn classify(e: &Entry) -> Option<Event> {
    let m = e.message.as_str();
    let detail = e.detail.as_deref().unwrap_or("");
    let level = e.level.unwrap_or(Level::Log);
    let ev = |class: EventClass, figures: Json| Some(Event { class, figures });
    if let Some(rest) = m.strip_prefix("temporary file: ") {
        return ev(
            EventClass::TempFile,
            Json::object().field("size_bytes", num_after(rest, "size ").map(Json::Float)),
        );
    }
    if m.starts_with("process ") {
        let lock = |verb: &str| -> Option<Json> {
            m.contains(verb).then(|| lock_figures(m, verb, detail))
        };
        if let Some(f) = lock(" still waiting for ") {
            return ev(EventClass::LockWait, f);
        }
        if let Some(f) = lock(" acquired ") {
            return ev(EventClass::LockAcquired, f);
        }
        if let Some(f) = lock(" detected deadlock while waiting for ") {
            return ev(EventClass::Deadlock, f.field("stage", "detected"));
        }
        if let Some(f) = lock(" could not obtain ") {
            return ev(EventClass::LockFailure, f);
        }
        if let Some(f) = lock(" avoided deadlock for ") {
            return ev(EventClass::LockWait, f.field("avoided_deadlock", true));
        }
    }
    if m.starts_with("deadlock detected") {
        let pids: Vec<Json> = detail
            .lines()
            .filter_map(|l| l.strip_prefix("Process "))
            .filter(|l| l.contains(" waits for "))
            .filter_map(|l| leading_u64(l).map(Json::UInt))
            .collect();
        return ev(
            EventClass::Deadlock,
            Json::object()
                .field("stage", "error")
                .field("processes", pids),
        );
    }
    if m.starts_with("could not obtain lock on ") {
        return ev(EventClass::LockFailure, Json::object());
    }
    if let Some(rest) = m
        .strip_prefix("canceling statement due to ")
        .or_else(|| m.strip_prefix("terminating connection due to "))
    {
        let class = match rest {
            r if r.starts_with("lock timeout") => EventClass::LockTimeout,
            r if r.starts_with("statement timeout") => EventClass::StatementTimeout,
            r if r.starts_with("transaction timeout") => EventClass::TransactionTimeout,
            r if r.starts_with("idle-in-transaction timeout") => {
                EventClass::IdleInTransactionTimeout
            }
            r if r.starts_with("user request") => EventClass::Canceled,
            r if r.starts_with("conflict with recovery") => {
                return ev(
                    EventClass::ReplicationConflict,
                    Json::object()
                        .field("reason", conflict_reason(detail))
                        .field("terminated", m.starts_with("terminating")),
                );
            }
            _ => return None,
        };
        return ev(class, Json::object());
    }
    for (word, complete) in [
        ("checkpoint starting: ", false),
        ("restartpoint starting: ", false),
        ("checkpoint complete: ", true),
        ("restartpoint complete: ", true),
    ] {
        if let Some(rest) = m.strip_prefix(word) {
            let kind = if word.starts_with("restart") {
                "restartpoint"
            } else {
                "checkpoint"
            };
            if !complete {
                return ev(
                    EventClass::CheckpointStarting,
                    Json::object()
                        .field("kind", kind)
                        .field("reason", rest.trim()),
                );
            }
            return ev(
                EventClass::CheckpointComplete,
                checkpoint_figures(rest, kind),
            );
        }
    }
    if m.starts_with("checkpoints are occurring too frequently") {
        return ev(
            EventClass::CheckpointsTooFrequent,
            Json::object().field("seconds_apart", num_after(m, "(").map(Json::Float)),
        );
    }
    if let Some(rest) = m.strip_prefix("automatic vacuum of table ") {
        return ev(EventClass::Autovacuum, vacuum_figures(rest, true));
    }
    if let Some(rest) = m.strip_prefix("automatic aggressive vacuum") {
        let rest = rest.split_once("of table ").map_or("", |(_, r)| r);
        return ev(
            EventClass::Autovacuum,
            vacuum_figures(rest, true).field("aggressive", true),
        );
    }
    if let Some(rest) = m.strip_prefix("automatic analyze of table ") {
        return ev(EventClass::Autoanalyze, vacuum_figures(rest, false));
    }
    if let Some(rest) = m.strip_prefix("connection received: ") {
        return ev(
            EventClass::ConnectionReceived,
            Json::object().field("host", word_after(rest, "host=")),
        );
    }
    if let Some(rest) = m.strip_prefix("connection authorized: ") {
        return ev(
            EventClass::ConnectionAuthorized,
            Json::object()
                .field("user", word_after(rest, "user="))
                .field("database", word_after(rest, "database=")),
        );
    }
    if m.starts_with("sorry, too many clients already")
        || m.starts_with("remaining connection slots are reserved")
        || m.starts_with("too many connections for ")
    {
        return ev(
            EventClass::TooManyConnections,
            Json::object().field(
                "reason",
                if m.starts_with("sorry") {
                    "max_connections"
                } else if m.starts_with("remaining") {
                    "reserved_slots"
                } else if m.contains("for role") {
                    "role_limit"
                } else {
                    "database_limit"
                },
            ),
        );
    }
    if m.starts_with("out of memory") && level >= Level::Error {
        let mut f = Json::object().field(
            "request_bytes",
            num_after(detail, "request of size ").map(Json::Float),
        );
        if let Some(ctx) = detail
            .split("memory context \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            f.push("memory_context", ctx);
        }
        return ev(EventClass::OutOfMemory, f);
    }
    None
}

/// Figures of `process N <verb> <Mode> on <object> after N ms` and its DETAIL.
fn lock_figures(m: &str, verb: &str, detail: &str) -> Json {
    let pid = m.strip_prefix("process ").and_then(leading_u64);
    let after_verb = m.split_once(verb).map_or("", |(_, r)| r);
    let (mode, rest) = after_verb.split_once(" on ").unwrap_or((after_verb, ""));
    let object = rest.rsplit_once(" after ").map_or(rest, |(o, _)| o);
    let mut f = Json::object()
        .field("pid", pid.map(Json::UInt))
        .field("lock_mode", mode.split_whitespace().last().unwrap_or(""))
        .field("lock_on", object.trim())
        .field("wait_ms", num_after(m, " after ").map(Json::Float));
    let pids = |key: &str| -> Option<Vec<Json>> {
        let list = detail.split(key).nth(1)?;
        let list = list.split('.').next().unwrap_or("");
        Some(
            list.split(',')
                .filter_map(|p| p.trim().parse::<u64>().ok().map(Json::UInt))
                .collect(),
        )
    };
    if let Some(h) = pids("holding the lock: ") {
        f.push("blocker_pids", h);
    }
    if let Some(q) = pids("Wait queue: ") {
        f.push("wait_queue", q);
    }
    f
}

/// Where a figure's number stands next to its key.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Right after the key (`total=1.5`).
    After(&'static str),
    /// Right before the key (`3 removed`).
    Before(&'static str),
    /// Right before the first key, else right before the second (words that changed between
    /// versions).
    BeforeEither(&'static str, &'static str),
}

/// One figure of a message: its name in the event, the line it is read from (`None`: the whole
/// text; `Some(start)`: the first line that starts with `start`, leading blanks ignored) and
/// where its number stands. A figure that is not there is `null`.
type Figure = (&'static str, Option<&'static str>, At);

/// Adds the figures of `table`, read from `text`, to `f` in the table's order.
fn push_figures(f: &mut Json, text: &str, table: &[Figure]) {
    for &(name, line, at) in table {
        let within = match line {
            None => text,
            Some(start) => text
                .lines()
                .map(str::trim_start)
                .find(|l| l.starts_with(start))
                .unwrap_or(""),
        };
        let v = match at {
            At::After(key) => num_after(within, key),
            At::Before(key) => num_before(within, key),
            At::BeforeEither(a, b) => num_before(within, a).or_else(|| num_before(within, b)),
        };
        f.push(name, v.map(Json::Float));
    }
}

#[rustfmt::skip]
const CHECKPOINT_FIGURES: &[Figure] = &[
    ("buffers", None, At::After("wrote ")),
    ("buffers_pct", None, At::After("buffers (")),
    ("wal_added", None, At::Before(" WAL file(s) added")),
    ("wal_removed", None, At::Before(" removed")),
    ("wal_recycled", None, At::Before(" recycled")),
    ("write_s", None, At::After("write=")),
    ("sync_s", None, At::After("sync=")),
    ("total_s", None, At::After("total=")),
    ("sync_files", None, At::After("sync files=")),
    ("longest_sync_s", None, At::After("longest=")),
    ("distance_kb", None, At::After("distance=")),
    ("estimate_kb", None, At::After("estimate=")),
];

/// The figures only an automatic vacuum reports (before those it shares with analyze).
#[rustfmt::skip]
const VACUUM_FIGURES: &[Figure] = &[
    ("index_scans", None, At::After("index scans: ")),
    ("pages_removed", Some("pages: "), At::Before(" removed")),
    ("pages_remain", Some("pages: "), At::Before(" remain")),
    ("pages_scanned", Some("pages: "), At::Before(" scanned")),
    ("tuples_removed", Some("tuples: "), At::Before(" removed")),
    ("tuples_remain", Some("tuples: "), At::Before(" remain")),
    ("tuples_dead_not_removable", Some("tuples: "), At::Before(" are dead")),
];

/// The figures of an automatic vacuum and an automatic analyze alike.
#[rustfmt::skip]
const VACUUM_ANALYZE_FIGURES: &[Figure] = &[
    ("buffer_hits", Some("buffer usage: "), At::Before(" hits")),
    ("buffer_misses", Some("buffer usage: "), At::BeforeEither(" misses", " reads")),
    ("buffer_dirtied", Some("buffer usage: "), At::Before(" dirtied")),
    ("wal_records", Some("WAL usage: "), At::Before(" records")),
    ("wal_fpi", Some("WAL usage: "), At::Before(" full page images")),
    ("wal_bytes", Some("WAL usage: "), At::Before(" bytes")),
    ("avg_read_mb_s", None, At::After("avg read rate: ")),
    ("avg_write_mb_s", None, At::After("avg write rate: ")),
    ("elapsed_s", None, At::After("elapsed: ")),
];

fn checkpoint_figures(rest: &str, kind: &str) -> Json {
    let mut f = Json::object().field("kind", kind);
    push_figures(&mut f, rest, CHECKPOINT_FIGURES);
    f
}

fn vacuum_figures(rest: &str, vacuum: bool) -> Json {
    let table = rest
        .strip_prefix('"')
        .and_then(|r| r.split('"').next())
        .unwrap_or("");
    let mut f = Json::object().field("table", table);
    if vacuum {
        push_figures(&mut f, rest, VACUUM_FIGURES);
    }
    push_figures(&mut f, rest, VACUUM_ANALYZE_FIGURES);
    f
}

fn conflict_reason(detail: &str) -> &'static str {
    if detail.contains("row versions that must be removed") {
        "snapshot"
    } else if detail.contains("buffer pin") {
        "buffer_pin"
    } else if detail.contains("relation lock") {
        "lock"
    } else if detail.contains("tablespace") {
        "tablespace"
    } else if detail.contains("buffer deadlock") {
        "deadlock"
    } else if detail.contains("database that must be dropped") {
        "database"
    } else if detail.contains("logical decoding") || detail.contains("replication slot") {
        "replication_slot"
    } else {
        "unknown"
    }
}

/// The number right after the first `key` in `s`.
fn num_after(s: &str, key: &str) -> Option<f64> {
    let rest = &s[s.find(key)? + key.len()..];
    let end = rest
        .bytes()
        .position(|c| !(c.is_ascii_digit() || c == b'.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The number right before the first `key` in `s`.
fn num_before(s: &str, key: &str) -> Option<f64> {
    let head = &s[..s.find(key)?];
    let start = head
        .bytes()
        .rposition(|c| !(c.is_ascii_digit() || c == b'.'))
        .map_or(0, |p| p + 1);
    head[start..].parse().ok()
}

fn leading_u64(s: &str) -> Option<u64> {
    let end = s
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

fn word_after(s: &str, key: &str) -> Option<String> {
    let rest = &s[s.find(key)? + key.len()..];
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logtail::entry::Part;

    fn event(level: Level, msg: &str, detail: Option<&str>) -> Option<Event> {
        let mut e = Entry {
            level: Some(level),
            ..Entry::default()
        };
        e.append(Part::Message, "", msg.as_bytes());
        e.detail = detail.map(str::to_string);
        classify(&e)
    }

    fn json(level: Level, msg: &str, detail: Option<&str>) -> String {
        event(level, msg, detail)
            .map(|e| e.to_json().to_json_string())
            .unwrap_or_default()
    }

    #[test]
    fn temp_files_and_lock_waits_with_blockers() {
        assert_eq!(
            json(
                Level::Log,
                "temporary file: path \"base/pgsql_tmp/pgsql_tmp123.0\", size 14016512",
                None
            ),
            r#"{"class":"temp_file","size_bytes":14016512.0}"#
        );
        assert_eq!(
            json(
                Level::Log,
                "process 4242 still waiting for ShareLock on transaction 771 after 1000.072 ms",
                Some("Process holding the lock: 4240. Wait queue: 4242, 4243.")
            ),
            r#"{"class":"lock_wait","pid":4242,"lock_mode":"ShareLock","lock_on":"transaction 771","wait_ms":1000.072,"blocker_pids":[4240],"wait_queue":[4242,4243]}"#
        );
        let acquired = json(
            Level::Log,
            "process 4242 acquired ShareLock on transaction 771 after 2002.5 ms",
            None,
        );
        assert!(
            acquired.starts_with(r#"{"class":"lock_acquired","pid":4242"#),
            "{acquired}"
        );
        let dl = json(
            Level::Error,
            "deadlock detected",
            Some("Process 10 waits for ShareLock on transaction 5; blocked by process 11.\nProcess 11 waits for ShareLock on transaction 6; blocked by process 10.\nProcess 10: UPDATE t SET v = 1"),
        );
        assert_eq!(
            dl,
            r#"{"class":"deadlock","stage":"error","processes":[10,11]}"#
        );
    }

    #[test]
    fn checkpoints_vacuum_and_the_rest() {
        let c = json(
            Level::Log,
            "checkpoint complete: wrote 1234 buffers (7.5%); 0 WAL file(s) added, 1 removed, 2 recycled; write=0.123 s, sync=0.004 s, total=0.140 s; sync files=12, longest=0.002 s, average=0.001 s; distance=16384 kB, estimate=16384 kB",
            None,
        );
        for want in [
            r#""buffers":1234.0"#,
            r#""buffers_pct":7.5"#,
            r#""wal_removed":1.0"#,
            r#""wal_recycled":2.0"#,
            r#""write_s":0.123"#,
            r#""total_s":0.14"#,
            r#""distance_kb":16384.0"#,
        ] {
            assert!(c.contains(want), "{want} in {c}");
        }
        assert_eq!(
            json(
                Level::Log,
                "checkpoint starting: immediate force wait",
                None
            ),
            r#"{"class":"checkpoint_starting","kind":"checkpoint","reason":"immediate force wait"}"#
        );
        assert_eq!(
            json(
                Level::Log,
                "checkpoints are occurring too frequently (12 seconds apart)",
                None
            ),
            r#"{"class":"checkpoints_too_frequent","seconds_apart":12.0}"#
        );
        let v = json(
            Level::Log,
            "automatic vacuum of table \"db.public.t\": index scans: 1\n\tpages: 0 removed, 45 remain, 45 scanned (100.00% of total)\n\ttuples: 100 removed, 10000 remain, 3 are dead but not yet removable\n\tbuffer usage: 120 hits, 4 misses, 5 dirtied\n\tWAL usage: 12 records, 2 full page images, 4567 bytes\n\tsystem usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.05 s",
            None,
        );
        for want in [
            r#""class":"autovacuum","table":"db.public.t""#,
            r#""index_scans":1.0"#,
            r#""pages_remain":45.0"#,
            r#""tuples_removed":100.0"#,
            r#""tuples_dead_not_removable":3.0"#,
            r#""buffer_misses":4.0"#,
            r#""wal_bytes":4567.0"#,
            r#""elapsed_s":0.05"#,
        ] {
            assert!(v.contains(want), "{want} in {v}");
        }
        let a = json(
            Level::Log,
            "automatic analyze of table \"db.public.t\" system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.02 s",
            None,
        );
        assert!(
            a.contains(r#""class":"autoanalyze","table":"db.public.t""#)
                && a.contains(r#""elapsed_s":0.02"#),
            "{a}"
        );
        let classes = |level, m: &str, d: Option<&str>| event(level, m, d).map(|e| e.class);
        assert_eq!(
            classes(
                Level::Error,
                "canceling statement due to lock timeout",
                None
            ),
            Some(EventClass::LockTimeout)
        );
        assert_eq!(
            classes(
                Level::Error,
                "canceling statement due to statement timeout",
                None
            ),
            Some(EventClass::StatementTimeout)
        );
        assert_eq!(
            classes(
                Level::Error,
                "canceling statement due to user request",
                None
            ),
            Some(EventClass::Canceled)
        );
        assert_eq!(
            json(
                Level::Error,
                "canceling statement due to conflict with recovery",
                Some("User query might have needed to see row versions that must be removed.")
            ),
            r#"{"class":"replication_conflict","reason":"snapshot","terminated":false}"#
        );
        assert_eq!(
            json(
                Level::Log,
                "connection authorized: user=app database=shop application_name=php",
                None
            ),
            r#"{"class":"connection_authorized","user":"app","database":"shop"}"#
        );
        assert_eq!(
            classes(Level::Log, "connection received: host=[local]", None),
            Some(EventClass::ConnectionReceived)
        );
        assert_eq!(
            classes(Level::Fatal, "sorry, too many clients already", None),
            Some(EventClass::TooManyConnections)
        );
        assert_eq!(
            json(
                Level::Error,
                "out of memory",
                Some("Failed on request of size 8192 in memory context \"ExecutorState\".")
            ),
            r#"{"class":"out_of_memory","request_bytes":8192.0,"memory_context":"ExecutorState"}"#
        );
        assert_eq!(
            classes(
                Level::Error,
                "could not obtain lock on row in relation \"t\"",
                None
            ),
            Some(EventClass::LockFailure)
        );
        // PG18 log_lock_failures: no wait time, and a comma before the wait queue.
        assert_eq!(
            json(
                Level::Log,
                "process 77 could not obtain ExclusiveLock on relation 16384 of database 5",
                Some("Processes holding the lock: 70, 71, Wait queue: .")
            ),
            r#"{"class":"lock_failure","pid":77,"lock_mode":"ExclusiveLock","lock_on":"relation 16384 of database 5","blocker_pids":[70,71],"wait_queue":[]}"#
        );
        assert_eq!(classes(Level::Log, "statement: SELECT 1", None), None);
        assert_eq!(classes(Level::Log, "process 1 something else", None), None);
        for junk in [
            "process ",
            "temporary file: ",
            "checkpoint complete: ",
            "automatic vacuum of table ",
        ] {
            let _ = event(Level::Log, junk, Some("Process holding the lock: x."));
        }
        let names: std::collections::BTreeSet<_> =
            EventClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), EventClass::ALL.len());
    }

    #[test]
    fn nothing_panics_on_any_message() {
        let pieces = [
            "process ",
            "1",
            " still waiting for ",
            " acquired ",
            " on ",
            " after ",
            " ms",
            "é",
            "関",
            "temporary file: ",
            "size ",
            "checkpoint complete: ",
            "wrote ",
            " removed",
            "automatic vacuum of table ",
            "\"",
            "pages: ",
            "\n",
            "Process holding the lock: ",
            ", ",
            ".",
            "Wait queue: ",
            "deadlock detected",
            "Process ",
            " waits for ",
            "canceling statement due to ",
            "out of memory",
            "request of size ",
            "memory context \"",
        ];
        let mut x: u64 = 0x853C49E6748FEA9B;
        for _ in 0..3000 {
            let mut m = String::new();
            let mut d = String::new();
            for i in 0..(x % 14) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let piece = pieces[(x % pieces.len() as u64) as usize];
                if i % 3 == 0 {
                    d.push_str(piece)
                } else {
                    m.push_str(piece)
                }
            }
            x = x.wrapping_add(1);
            for level in [Level::Log, Level::Error] {
                let _ = event(level, &m, Some(&d));
            }
        }
    }
}
