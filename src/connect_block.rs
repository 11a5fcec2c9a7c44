//! Who keeps the agent's new sessions from starting: when a connection attempt is abandoned at
//! the connect deadline, the pool looks, over a connection it already holds, for sessions that
//! hold an ACCESS EXCLUSIVE lock on a catalog the server reads while letting a session in (the
//! shared catalogs such as `pg_authid` and `pg_database`, and the relcache-init catalogs of the
//! agent's database such as `pg_class`). This module holds that lookup's query, turns its rows
//! into [`Holder`]s (query text rendered by the configured mode, the request id found by the
//! configured correlation markers) and renders what was seen ([`Sighting`]) for
//! `data.agent.pool.connect_blocked_by`, the status file and the agent's log.
//!
//! Invariants:
//! - The query reads only shared memory: the functions behind `pg_locks` and `pg_stat_activity`
//!   (`pg_lock_status()`, `pg_stat_get_activity()`), never the views, which join `pg_authid` and
//!   `pg_database` and would wait on the very lock they look for. Relation names come from
//!   [`catalog_name`] (fixed catalog OIDs), not from `regclass`. The holder's role name is looked
//!   up (`pg_get_userbyid`) only when no one holds or waits for an exclusive lock on `pg_authid`.
//! - The pool prepares and runs the query once on every new connection, right after its session
//!   count: the function, operator, type and role-membership lookups it needs are then cached
//!   in that backend, so running it later, while a catalog is locked, reads no catalog (a cold
//!   backend would read `pg_authid` for the `pg_read_all_stats` check and wait on the lock;
//!   measured on PostgreSQL 15: a lock timeout). Nothing else uses an aggregate (its owner's
//!   privileges would be checked, a role lookup).
//! - What is shipped is bounded ([`MAX_HOLDERS`]) and follows `query_text` (`none` ships no text);
//!   nothing here panics on a server answer.

use crate::json::Json;
use crate::normalize::{CorrelationPattern, QueryText};

/// At most this many holders are kept and shipped per summary.
pub const MAX_HOLDERS: usize = 5;

/// What `pg_stat_get_activity` shows instead of the query of a session the role may not see.
const HIDDEN_QUERY: &str = "<insufficient privilege>";

/// Granted ACCESS EXCLUSIVE locks on catalogs (OID below 16384, the first normal object id)
/// shared by all databases or of this session's database, with their holders' sessions and how
/// many sessions wait for a lock on the same catalog (`waiting_unlisted`: those not yet in
/// `pg_stat_activity`, still authenticating or starting, as a blocked connection attempt is).
/// Only AccessExclusiveLock conflicts with the AccessShareLock a starting session takes.
/// No aggregate functions (their owner's privileges would be checked, a role lookup), no views.
pub const LOOKUP_SQL: &str = "\
WITH me AS (SELECT datid FROM pg_stat_get_activity(pg_backend_pid())), \
locks AS ( \
  SELECT l.relation, l.database, l.pid, l.mode, l.granted FROM pg_lock_status() l \
  WHERE l.locktype = 'relation' AND l.relation < 16384 \
    AND (l.database = 0 OR l.database = (SELECT datid FROM me))), \
act AS (SELECT * FROM pg_stat_get_activity(NULL)) \
SELECT h.pid, h.relation::int8 AS relation, h.database = 0 AS shared, h.mode, \
  a.pid IS NOT NULL AS listed, a.usesysid::int8 AS role_oid, \
  CASE WHEN NOT EXISTS (SELECT 1 FROM locks x WHERE x.relation IN (1260, 2676, 2677) \
                        AND x.mode = 'AccessExclusiveLock') \
       THEN pg_get_userbyid(a.usesysid)::text END AS usename, \
  a.application_name, a.query, a.state, \
  extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_age_s, \
  coalesce(array_length(ARRAY(SELECT w.pid FROM locks w \
    WHERE NOT w.granted AND w.relation = h.relation), 1), 0)::int8 AS waiting, \
  coalesce(array_length(ARRAY(SELECT w.pid FROM locks w LEFT JOIN act b ON b.pid = w.pid \
    WHERE NOT w.granted AND w.relation = h.relation AND b.pid IS NULL), 1), 0)::int8 \
    AS waiting_unlisted \
FROM locks h LEFT JOIN act a ON a.pid = h.pid \
WHERE h.granted AND h.mode = 'AccessExclusiveLock' \
ORDER BY a.xact_start NULLS LAST, h.pid \
LIMIT 5";

/// The name of a system catalog (or one of the indexes a starting session reads) by its fixed
/// OID; `None` for any other relation.
#[rustfmt::skip]
pub fn catalog_name(oid: i64) -> Option<&'static str> {
    Some(match oid {
        1213 => "pg_tablespace", 1214 => "pg_shdepend", 1260 => "pg_authid",
        1261 => "pg_auth_members", 1262 => "pg_database", 2396 => "pg_shdescription",
        2671 => "pg_database_datname_index", 2672 => "pg_database_oid_index",
        2676 => "pg_authid_rolname_index", 2677 => "pg_authid_oid_index",
        2694 => "pg_auth_members_role_member_index", 2695 => "pg_auth_members_member_role_index",
        2697 => "pg_tablespace_oid_index", 2964 => "pg_db_role_setting",
        2965 => "pg_db_role_setting_databaseid_rol_index", 3592 => "pg_shseclabel",
        6000 => "pg_replication_origin", 6100 => "pg_subscription", 6243 => "pg_parameter_acl",
        1247 => "pg_type", 1249 => "pg_attribute", 1255 => "pg_proc", 1259 => "pg_class",
        2601 => "pg_am", 2602 => "pg_amop", 2603 => "pg_amproc", 2604 => "pg_attrdef",
        2606 => "pg_constraint", 2610 => "pg_index", 2615 => "pg_namespace", 2616 => "pg_opclass",
        2617 => "pg_operator", 2618 => "pg_rewrite", 2619 => "pg_statistic", 2620 => "pg_trigger",
        2658 => "pg_attribute_relid_attnam_index", 2659 => "pg_attribute_relid_attnum_index",
        2662 => "pg_class_oid_index", 2663 => "pg_class_relname_nsp_index",
        2678 => "pg_index_indrelid_index", 2679 => "pg_index_indexrelid_index",
        2753 => "pg_opfamily", 3256 => "pg_policy",
        _ => return None,
    })
}

/// How holders are rendered: the `query_text` mode and the correlation markers trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// `[collection] query_text` and `query_max_chars`.
    pub query_text: QueryText,
    /// `[collection] correlation_prefix` and `correlation_sources`.
    pub correlation: CorrelationPattern,
}

/// One row of [`LOOKUP_SQL`], as the server sent it (raw text: render it with [`Holder::from_row`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawHolder {
    /// The holder's backend pid.
    pub pid: i32,
    /// The locked relation's OID.
    pub relation: i64,
    /// Whether the catalog is shared by all databases.
    pub shared: bool,
    /// The lock mode (`AccessExclusiveLock`).
    pub mode: String,
    /// Whether the holder appears in `pg_stat_activity` at all.
    pub listed: bool,
    /// The holder's role OID.
    pub role_oid: Option<i64>,
    /// The holder's role name, when it could be looked up.
    pub usename: Option<String>,
    /// The holder's application_name.
    pub application_name: Option<String>,
    /// The holder's current or last query, raw (or `<insufficient privilege>`).
    pub query: Option<String>,
    /// The holder's state (`idle in transaction`, ...).
    pub state: Option<String>,
    /// Seconds since the holder's transaction began.
    pub xact_age_s: Option<f64>,
    /// Sessions waiting for a lock on the same relation.
    pub waiting: i64,
    /// Of those, the ones not yet in `pg_stat_activity` (still connecting).
    pub waiting_unlisted: i64,
}

impl RawHolder {
    /// Decodes one row of [`LOOKUP_SQL`]; a column of the wrong type is an error naming it.
    pub fn from_row(row: &postgres::Row) -> Result<RawHolder, String> {
        fn col<'a, T: postgres::types::FromSql<'a>>(
            row: &'a postgres::Row,
            name: &str,
        ) -> Result<T, String> {
            row.try_get(name).map_err(|e| format!("column {name}: {e}"))
        }
        Ok(RawHolder {
            pid: col(row, "pid")?,
            relation: col(row, "relation")?,
            shared: col::<Option<bool>>(row, "shared")?.unwrap_or(false),
            mode: col::<Option<String>>(row, "mode")?.unwrap_or_default(),
            listed: col::<Option<bool>>(row, "listed")?.unwrap_or(false),
            role_oid: col(row, "role_oid")?,
            usename: col(row, "usename")?,
            application_name: col(row, "application_name")?,
            query: col(row, "query")?,
            state: col(row, "state")?,
            xact_age_s: col(row, "xact_age_s")?,
            waiting: col::<Option<i64>>(row, "waiting")?.unwrap_or(0),
            waiting_unlisted: col::<Option<i64>>(row, "waiting_unlisted")?.unwrap_or(0),
        })
    }
}

/// A session that held a lock which kept the agent's new session from starting, as shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// The holder's backend pid.
    pub pid: i32,
    /// Its role name (`None` when `pg_authid` itself was locked, so it could not be looked up).
    pub usename: Option<String>,
    /// Its role OID (given even when the name could not be looked up).
    pub role_oid: Option<i64>,
    /// Its application_name.
    pub application_name: Option<String>,
    /// The request id found in its application_name or query (`/* correlation:<uuid> */`).
    pub request_id: Option<String>,
    /// Its query rendered by `query_text` (`None` for `none`, or when hidden).
    pub query: Option<String>,
    /// The server hid its query and state: the agent's role lacks `pg_read_all_stats`.
    pub hidden: bool,
    /// The lock mode.
    pub lock_mode: String,
    /// The locked catalog's name (`catalog relation <oid>` for one not in [`catalog_name`]).
    pub relation: String,
    /// The database of a non-shared catalog (the pool's); `None` for a shared catalog.
    pub database: Option<String>,
    /// Its state.
    pub state: Option<String>,
    /// Seconds since its transaction began.
    pub xact_age_s: Option<f64>,
    /// Sessions waiting for a lock on the same catalog.
    pub sessions_waiting: u64,
    /// Of those, the ones still connecting (not yet in `pg_stat_activity`).
    pub sessions_waiting_to_start: u64,
    /// When the agent saw it (unix seconds).
    pub seen_at: u64,
}

impl Holder {
    /// Renders a raw row: the request id from the raw text (before normalization), the query
    /// by the view's mode; `database` is the pool's database (used for a non-shared catalog).
    pub fn from_row(raw: RawHolder, view: &View, database: &str, seen_at: u64) -> Holder {
        let hidden = raw.listed && (raw.query.as_deref() == Some(HIDDEN_QUERY));
        let raw_query = raw.query.as_deref().filter(|_| !hidden);
        let request_id = view
            .correlation
            .find(raw.application_name.as_deref(), raw_query.as_slice())
            .map(|c| c.id);
        Holder {
            pid: raw.pid,
            usename: raw.usename,
            role_oid: raw.role_oid,
            application_name: raw.application_name,
            request_id,
            query: raw_query.and_then(|q| view.query_text.render(q)),
            hidden,
            lock_mode: raw.mode,
            relation: catalog_name(raw.relation).map_or_else(
                || format!("catalog relation {}", raw.relation),
                str::to_string,
            ),
            database: (!raw.shared).then(|| database.to_string()),
            state: raw.state,
            xact_age_s: raw.xact_age_s,
            sessions_waiting: raw.waiting.max(0) as u64,
            sessions_waiting_to_start: raw.waiting_unlisted.max(0) as u64,
            seen_at,
        }
    }

    /// `pid 123 (user u, app a, request r) holding AccessExclusiveLock on pg_authid for 3.2 s`.
    pub fn describe(&self) -> String {
        let mut who = Vec::new();
        if let Some(u) = &self.usename {
            who.push(format!("user {u}"));
        }
        if let Some(a) = self.application_name.as_deref().filter(|a| !a.is_empty()) {
            who.push(format!("app {a}"));
        }
        if let Some(r) = &self.request_id {
            who.push(format!("request {r}"));
        }
        let mut s = format!("pid {}", self.pid);
        if !who.is_empty() {
            s.push_str(&format!(" ({})", who.join(", ")));
        }
        s.push_str(&format!(" holding {} on {}", self.lock_mode, self.relation));
        if let Some(db) = &self.database {
            s.push_str(&format!(" of database {db}"));
        }
        if let Some(age) = self.xact_age_s {
            s.push_str(&format!(" in a transaction open for {age:.1} s"));
        }
        s
    }

    /// One entry of `data.agent.pool.connect_blocked_by`.
    pub fn to_json(&self) -> Json {
        Json::object()
            .field("pid", self.pid)
            .field("usename", self.usename.clone())
            .field("role_oid", self.role_oid)
            .field("application_name", self.application_name.clone())
            .field("request_id", self.request_id.clone())
            .field("query", self.query.clone())
            .field("query_hidden", self.hidden)
            .field("lock_mode", self.lock_mode.as_str())
            .field("relation", self.relation.as_str())
            .field("database", self.database.clone())
            .field("state", self.state.clone())
            .field("xact_age_s", self.xact_age_s)
            .field("sessions_waiting", self.sessions_waiting)
            .field("sessions_waiting_to_start", self.sessions_waiting_to_start)
            .field("seen_at", self.seen_at)
    }
}

/// What the agent could see about blocked connection attempts: the holders, or why none could
/// be named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sighting {
    /// The sessions holding the blocking locks (at most [`MAX_HOLDERS`]), longest first.
    pub holders: Vec<Holder>,
    /// Why no holder is named, when none is (`holder not visible: ...`).
    pub not_visible: Option<String>,
}

impl Sighting {
    /// A sighting of nobody, for `reason`.
    pub fn not_visible(reason: &str) -> Sighting {
        Sighting {
            holders: Vec::new(),
            not_visible: Some(format!("holder not visible: {reason}")),
        }
    }

    /// Adds a later sighting: holders are merged by pid and relation (the later values win,
    /// at most [`MAX_HOLDERS`]); a reason stays only while no holder is known.
    pub fn merge(&mut self, later: Sighting) {
        for h in later.holders {
            let known = self
                .holders
                .iter()
                .position(|k| k.pid == h.pid && k.relation == h.relation);
            match known {
                Some(i) => self.holders[i] = h,
                None if self.holders.len() < MAX_HOLDERS => self.holders.push(h),
                None => {}
            }
        }
        if self.holders.is_empty() {
            if later.not_visible.is_some() {
                self.not_visible = later.not_visible;
            }
        } else {
            self.not_visible = None;
        }
    }

    /// The holders as `data.agent.pool.connect_blocked_by`.
    pub fn holders_json(&self) -> Json {
        Json::Array(self.holders.iter().map(Holder::to_json).collect())
    }

    /// For the log and the status file: `pid 1 (...) holding ... on pg_authid; pid 2 ...`, or
    /// the reason no holder is known.
    pub fn describe(&self) -> String {
        if self.holders.is_empty() {
            return self
                .not_visible
                .clone()
                .unwrap_or_else(|| "holder not visible".into());
        }
        let mut s: Vec<String> = self.holders.iter().map(Holder::describe).collect();
        if let Some(h) = self.holders.iter().find(|h| h.sessions_waiting > 0) {
            s.push(format!(
                "{} sessions wait for {} ({} still connecting)",
                h.sessions_waiting, h.relation, h.sessions_waiting_to_start
            ));
        }
        s.join("; ")
    }

    /// The status file's line: [`Sighting::describe`] and, when someone is named, when the
    /// agent saw them (the line stays after the summary shipped it).
    pub fn status_line(&self) -> String {
        match self.holders.iter().map(|h| h.seen_at).max() {
            Some(at) => format!("{} (seen at {at} unix seconds)", self.describe()),
            None => self.describe(),
        }
    }

    /// Who is named, for logging a change only: (pid, relation) pairs.
    pub fn key(&self) -> Vec<(i32, String)> {
        self.holders
            .iter()
            .map(|h| (h.pid, h.relation.clone()))
            .collect()
    }
}

/// The reason given when a lookup found no exclusive catalog lock.
pub const NOTHING_HELD: &str = "no session holds an exclusive lock on a catalog read at \
     connection start (an overloaded server, or the lock was released before the agent looked)";

/// The reason given when the lookup could only run at the next new connection and found nothing.
pub const GONE_BY_THEN: &str = "no connection was open to look with while connecting was \
     blocked, and the lock was gone by the next connection";

/// Renders the lookup's rows into a sighting (rows that do not decode are skipped); `late`: the
/// lookup ran only at the next new connection (an empty answer then means the lock was gone).
pub fn sighting(rows: &[postgres::Row], view: &View, database: &str, late: bool) -> Sighting {
    let seen_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let holders: Vec<Holder> = rows
        .iter()
        .filter_map(|r| RawHolder::from_row(r).ok())
        .take(MAX_HOLDERS)
        .map(|raw| Holder::from_row(raw, view, database, seen_at))
        .collect();
    match (holders.is_empty(), late) {
        (true, false) => Sighting::not_visible(NOTHING_HELD),
        (true, true) => Sighting::not_visible(GONE_BY_THEN),
        (false, _) => Sighting {
            holders,
            not_visible: None,
        },
    }
}

/// A pool's sightings: merged until the summary takes them, the last one kept for the status
/// file, and what the log last named (so each change is logged once, "not visible" once per
/// streak of blocked attempts).
#[derive(Debug, Default)]
pub struct Sightings {
    pending: Option<Sighting>,
    shipped: Option<Sighting>,
    /// `Some(empty)`: "not visible" was logged in this streak.
    logged: Option<Vec<(i32, String)>>,
}

impl Sightings {
    /// Adds a sighting; returns the log line's tail (` by pid ...` or `; holder not visible:
    /// ...`) when it should be logged.
    pub fn record(&mut self, seen: Sighting) -> Option<String> {
        let key = seen.key();
        let log = if key.is_empty() {
            self.logged.is_none()
        } else {
            self.logged.as_ref() != Some(&key)
        };
        let line = log.then(|| {
            if key.is_empty() {
                format!("; {}", seen.describe())
            } else {
                format!(" by {}", seen.describe())
            }
        });
        if log {
            self.logged = Some(key);
        }
        self.pending
            .get_or_insert_with(Sighting::default)
            .merge(seen);
        line
    }

    /// A connection succeeded: the next blocked attempt starts a new streak (logged again).
    pub fn streak_over(&mut self) {
        self.logged = None;
    }

    /// What was seen since the last call (for the summary); `None` when nothing was blocked.
    pub fn take(&mut self) -> Option<Sighting> {
        let taken = self.pending.take();
        if taken.is_some() {
            self.shipped.clone_from(&taken);
        }
        taken
    }

    /// The latest sighting, shipped or not (for the status file).
    pub fn latest(&self) -> Option<Sighting> {
        self.pending.clone().or_else(|| self.shipped.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::QueryTextMode;

    const UUID: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER: &str = "99999999-8888-7777-6666-555555555555";

    fn raw() -> RawHolder {
        RawHolder {
            pid: 123,
            relation: 1260,
            shared: true,
            mode: "AccessExclusiveLock".into(),
            listed: true,
            role_oid: Some(10),
            usename: None,
            application_name: Some(format!("bitville-{UUID}")),
            query: Some("LOCK TABLE pg_authid IN ACCESS EXCLUSIVE MODE; SELECT 'secret'".into()),
            state: Some("idle in transaction".into()),
            xact_age_s: Some(3.25),
            waiting: 2,
            waiting_unlisted: 1,
        }
    }

    #[test]
    fn a_holder_is_named_with_its_request_and_its_query_masked() {
        let h = Holder::from_row(raw(), &View::default(), "postgres", 1_700_000_000);
        assert_eq!(h.request_id.as_deref(), Some(UUID));
        assert_eq!(h.relation, "pg_authid");
        assert_eq!(h.database, None, "pg_authid is shared");
        let q = h.query.as_deref().unwrap();
        assert!(!q.contains("secret"), "{q}");
        assert!(q.starts_with("LOCK TABLE pg_authid"), "{q}");
        assert_eq!(
            h.describe(),
            format!(
                "pid 123 (app bitville-{UUID}, request {UUID}) holding AccessExclusiveLock on \
                 pg_authid in a transaction open for 3.2 s"
            )
        );
        let json = h.to_json().to_json_string();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["pid"], 123);
        assert_eq!(v["request_id"], UUID);
        assert_eq!(v["relation"], "pg_authid");
        assert_eq!(v["lock_mode"], "AccessExclusiveLock");
        assert_eq!(v["usename"], serde_json::Value::Null);
        assert_eq!(v["role_oid"], 10);
        assert_eq!(v["query_hidden"], false);
        assert_eq!(v["sessions_waiting"], 2);
        assert_eq!(v["sessions_waiting_to_start"], 1);
        assert_eq!(v["seen_at"], 1_700_000_000u64);
    }

    #[test]
    fn the_comment_marker_wins_and_none_ships_no_text() {
        let mut r = raw();
        r.query = Some(format!("/* correlation:{OTHER} */ LOCK TABLE pg_class"));
        r.relation = 1259;
        r.shared = false;
        r.usename = Some("app".into());
        let view = View {
            query_text: QueryText {
                mode: QueryTextMode::None,
                ..QueryText::default()
            },
            ..View::default()
        };
        let h = Holder::from_row(r, &view, "shop", 1);
        assert_eq!(h.request_id.as_deref(), Some(OTHER));
        assert_eq!(h.query, None);
        assert_eq!(h.relation, "pg_class");
        assert_eq!(h.database.as_deref(), Some("shop"));
        assert!(h.describe().starts_with("pid 123 (user app, app bitville-"));
        assert!(h.describe().contains("on pg_class of database shop"));
    }

    #[test]
    fn a_hidden_query_is_said_so_and_an_unknown_relation_keeps_its_oid() {
        let mut r = raw();
        r.query = Some(HIDDEN_QUERY.into());
        r.relation = 4242;
        let h = Holder::from_row(r, &View::default(), "postgres", 1);
        assert!(h.hidden);
        assert_eq!(h.query, None);
        assert_eq!(h.relation, "catalog relation 4242");
        // The application_name is still shown to every role: the request id survives.
        assert_eq!(h.request_id.as_deref(), Some(UUID));
    }

    #[test]
    fn sightings_merge_by_holder_and_keep_a_reason_only_without_holders() {
        let mut s = Sighting::not_visible("no open connection to look with");
        assert_eq!(
            s.describe(),
            "holder not visible: no open connection to look with"
        );
        let seen = |pid, at| Sighting {
            holders: vec![Holder::from_row(
                RawHolder { pid, ..raw() },
                &View::default(),
                "postgres",
                at,
            )],
            not_visible: None,
        };
        s.merge(seen(1, 10));
        assert_eq!(s.not_visible, None);
        s.merge(seen(1, 20));
        assert_eq!(s.holders.len(), 1);
        assert_eq!(s.holders[0].seen_at, 20, "the later sighting wins");
        s.merge(Sighting::not_visible(NOTHING_HELD));
        assert_eq!(s.holders.len(), 1, "a later miss does not forget a holder");
        for pid in 2..20 {
            s.merge(seen(pid, 30));
        }
        assert_eq!(s.holders.len(), MAX_HOLDERS);
        assert_eq!(s.key()[0], (1, "pg_authid".to_string()));
        assert!(
            s.describe()
                .ends_with("2 sessions wait for pg_authid (1 still connecting)"),
            "{}",
            s.describe()
        );
        assert_eq!(
            s.holders_json().to_json_string().matches("\"pid\"").count(),
            5
        );
    }

    #[test]
    fn each_holder_is_logged_once_and_shipped_once_and_the_status_keeps_the_last() {
        let mut s = Sightings::default();
        let miss = Sighting::not_visible("no open connection to look with");
        assert_eq!(
            s.record(miss.clone()).as_deref(),
            Some("; holder not visible: no open connection to look with")
        );
        assert_eq!(s.record(miss), None, "once per streak");
        let seen = Sighting {
            holders: vec![Holder::from_row(raw(), &View::default(), "postgres", 7)],
            not_visible: None,
        };
        let line = s.record(seen.clone()).expect("a new holder is logged");
        assert!(line.starts_with(" by pid 123 (app bitville-"), "{line}");
        assert_eq!(s.record(seen.clone()), None, "the same holder again");
        let taken = s.take().expect("pending");
        assert_eq!(taken.holders, seen.holders);
        assert_eq!(s.take(), None, "shipped once");
        assert_eq!(s.latest(), Some(taken), "the status file keeps the last");
        s.streak_over();
        assert!(s.record(seen).is_some(), "a new streak logs again");
    }

    #[test]
    fn the_lookup_reads_no_view_and_no_regclass() {
        // The views join pg_authid and pg_database: reading them would wait on the lock.
        for forbidden in [
            "pg_locks",
            "pg_stat_activity",
            "regclass",
            "pg_roles",
            "count(",
        ] {
            assert!(!LOOKUP_SQL.contains(forbidden), "{forbidden}");
        }
        assert!(LOOKUP_SQL.ends_with(&format!("LIMIT {MAX_HOLDERS}")));
        assert_eq!(catalog_name(1262), Some("pg_database"));
        assert_eq!(catalog_name(16384), None);
    }
}
