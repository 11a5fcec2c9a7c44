//! pg_stat_statements as per-interval deltas: what each statement cost since the previous
//! interval, not since the last reset.
//!
//! Each interval: read the counters without texts (`pg_stat_statements(showtext := false)`),
//! subtract the baseline per (userid, dbid, queryid, toplevel), ship the top N changed entries by
//! delta execution time plus one `other` row summing the rest, fetch texts only for the shipped
//! entries not already known, and persist the new baseline in the state directory.
//!
//! The pieces: `columns` (the version map and the counters query), `wire` (the binary array
//! decoder), `baseline` (the counters at one moment, its file and persistence), `delta`
//! (deltas, top N and `other`); this module is the collector that runs them each interval.
//!
//! Invariants:
//! - No delta is ever negative. An entry whose counters went backwards was reset or evicted and
//!   re-added: it ships its current counters (all counted since the baseline) with a `status`
//!   saying so. A global reset (`pg_stat_statements_info.stats_reset` moved, PG14+) marks the
//!   whole interval. PG17+ `stats_since` tells a re-added entry from a continuing one.
//! - Column differences between versions live in one table, [`COLUMNS`], keyed by the installed
//!   extension version (which decides the columns, not the server version).
//! - The baseline file is replaced atomically (temp file, fsync, rename, fsync of the directory),
//!   so a crash leaves the old or the new baseline, never a torn one; an unreadable or foreign
//!   baseline is ignored (the first interval is then only a baseline again). A baseline that
//!   could not be saved keeps the interval's deltas and says so in the payload.
//! - A missing or unloaded extension is one warning with the fix; the collector then stays quiet
//!   and re-checks every `recheck` (5 minutes), never every cycle.

mod baseline;
mod columns;
mod delta;
mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{col as column_of, unix_secs, CollectError};
use crate::json::Json;
use crate::normalize::QueryText;
use crate::payload::{unix_now, Payload, Source};
use baseline::{write_atomically_with, Baseline, BASELINE_FILE};
use columns::counters_sql;
use delta::{push_counters, Delta};
use wire::read_counters;

pub use baseline::Key;
pub use columns::{
    columns_for, features, parse_ext_version, Column, ExtVersion, Features, COLUMNS,
};

const COLLECTOR: &str = "statements";

/// `s` as an SQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Why the collector is not collecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Not checked yet.
    Unknown,
    /// Installed and loaded.
    Available,
    /// `CREATE EXTENSION` was not run in the connected database.
    NotInstalled,
    /// Installed but not in `shared_preload_libraries` (server restart needed).
    NotLoaded,
}

impl Availability {
    fn fix(&self) -> &'static str {
        match self {
            Availability::NotInstalled => {
                "add pg_stat_statements to shared_preload_libraries (restart) and run \
                 CREATE EXTENSION pg_stat_statements in the monitored database"
            }
            Availability::NotLoaded => {
                "add pg_stat_statements to shared_preload_libraries in postgresql.conf and \
                 restart PostgreSQL"
            }
            _ => "",
        }
    }
}

/// Settings of the statements collector.
#[derive(Debug, Clone)]
pub struct StatementsConfig {
    /// Where the baseline is persisted (the agent's state directory).
    pub state_dir: PathBuf,
    /// Entries shipped individually per interval. Defaults to 100.
    pub top_n: usize,
    /// Rendering of the (already normalized) texts: mode and length. Defaults to normalized,
    /// 1000 characters.
    pub query_text: QueryText,
    /// How long to wait before checking a missing extension again. Defaults to 5 minutes.
    pub recheck: Duration,
    /// A (persisted) baseline older than this is not subtracted from: after a long stop the
    /// first interval is a new baseline instead of one delta spanning the downtime. Defaults to
    /// 1 hour.
    pub max_baseline_age: Duration,
    /// The log tailer's latest auto_explain plans per query_id: each interval's plans are
    /// attached to the shipped row of the same queryid (`plan`, `plan_format`, `plan_summary`).
    /// Defaults to none.
    pub plans: Option<crate::logtail::PlanStore>,
}

impl StatementsConfig {
    /// Defaults with the baseline in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> StatementsConfig {
        StatementsConfig {
            state_dir: state_dir.into(),
            top_n: 100,
            query_text: QueryText::default(),
            recheck: Duration::from_secs(300),
            max_baseline_age: Duration::from_secs(3600),
            plans: None,
        }
    }
}

/// Turns pg_stat_statements into per-interval delta payloads.
#[derive(Debug)]
pub struct StatementsCollector {
    cfg: StatementsConfig,
    baseline: Option<Baseline>,
    availability: Availability,
    recheck_at: Option<Instant>,
    texts: HashMap<(u32, i64), Option<String>>,
    /// The baseline was taken by [`StatementsCollector::prime`]: the next delta covers part of
    /// an interval and says so.
    primed: bool,
    /// The last attempt to persist the baseline failed (logged once per streak).
    persist_failing: bool,
}

impl StatementsCollector {
    /// A collector that starts from the baseline persisted in `cfg.state_dir`, if there is a
    /// readable one.
    pub fn new(cfg: StatementsConfig) -> StatementsCollector {
        let baseline = baseline::load(&cfg.state_dir.join(BASELINE_FILE));
        StatementsCollector {
            cfg,
            baseline,
            availability: Availability::Unknown,
            recheck_at: None,
            texts: HashMap::new(),
            primed: false,
            persist_failing: false,
        }
    }

    /// At start-up: takes a baseline now unless a persisted one is still usable, so the first
    /// interval boundary already ships a delta (marked `partial_interval`) instead of only
    /// taking the baseline.
    pub fn prime(&mut self, client: &mut postgres::Client) -> Result<(), CollectError> {
        let max_age = self.cfg.max_baseline_age.as_secs_f64();
        if self
            .baseline
            .as_ref()
            .is_some_and(|b| unix_now() - b.taken_at <= max_age)
        {
            return Ok(());
        }
        self.baseline = None;
        self.collect(client)?;
        self.primed = self.baseline.is_some();
        Ok(())
    }

    /// Whether the extension was usable at the last check.
    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    /// The persisted baseline's path.
    pub fn baseline_path(&self) -> PathBuf {
        self.cfg.state_dir.join(BASELINE_FILE)
    }

    fn set_unavailable(&mut self, a: Availability, detail: &str) {
        if self.availability != a {
            log::warn!(
                "statements collector: pg_stat_statements unavailable ({detail}); fix: {}; \
                 other collectors keep working, re-checking every {} s",
                a.fix(),
                self.cfg.recheck.as_secs()
            );
        }
        self.availability = a;
        self.recheck_at = Some(Instant::now() + self.cfg.recheck);
    }

    /// Closes an interval: returns the `pg_stat_statements` payload with the deltas since the
    /// previous call (or since the persisted baseline), or `None` when this call only took the
    /// baseline or the extension is unavailable (then it is checked again after `recheck`).
    pub fn collect(
        &mut self,
        client: &mut postgres::Client,
    ) -> Result<Option<Payload>, CollectError> {
        if let Some(at) = self.recheck_at {
            if Instant::now() < at {
                return Ok(None);
            }
        }
        let row = client
            .query_opt(
                "SELECT e.extversion, n.nspname, now() FROM pg_extension e \
                 JOIN pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'pg_stat_statements'",
                &[],
            )
            .map_err(CollectError::query(COLLECTOR, "extension"))?;
        let Some(row) = row else {
            self.set_unavailable(Availability::NotInstalled, "extension not created");
            return Ok(None);
        };
        let ext_text: String = column_of(&row, 0).unwrap_or_default();
        let schema: String = column_of(&row, 1).unwrap_or_else(|| "public".to_string());
        let now = column_of::<SystemTime>(&row, 2).map_or_else(unix_now, unix_secs);
        let Some(version) = parse_ext_version(&ext_text) else {
            self.set_unavailable(Availability::NotInstalled, "unparseable extension version");
            return Ok(None);
        };
        let feats = features(version);
        let sql = counters_sql(&schema, version);
        let entries = match read_counters(client, &sql, self.baseline_capacity()) {
            Ok(entries) => entries,
            // object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries".
            Err(e)
                if crate::pgerror::has_state(
                    &e,
                    &postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                ) =>
            {
                self.set_unavailable(Availability::NotLoaded, "not in shared_preload_libraries");
                return Ok(None);
            }
            Err(e) => return Err(CollectError::query(COLLECTOR, "counters")(e)),
        };
        if self.availability != Availability::Available
            && self.availability != Availability::Unknown
        {
            log::info!("statements collector: pg_stat_statements available again");
        }
        self.availability = Availability::Available;
        self.recheck_at = None;

        let (stats_reset, dealloc) = if feats.info {
            let r = client
                .query_one(
                    &format!(
                        "SELECT dealloc, stats_reset FROM {}.pg_stat_statements_info",
                        quote_ident(&schema)
                    ),
                    &[],
                )
                .map_err(CollectError::query(COLLECTOR, "info"))?;
            (
                r.try_get::<_, Option<SystemTime>>(1)
                    .ok()
                    .flatten()
                    .map(unix_secs),
                r.try_get::<_, Option<i64>>(0).ok().flatten(),
            )
        } else {
            (None, None)
        };

        let current = Baseline {
            taken_at: now,
            ext_version: version,
            stats_reset,
            dealloc,
            entries,
        };

        let payload = match self.baseline.take() {
            Some(prev)
                if prev.ext_version == version
                    && now > prev.taken_at
                    && now - prev.taken_at <= self.cfg.max_baseline_age.as_secs_f64() =>
            {
                match self.build_payload(client, &schema, &prev, &current) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // Keep the old baseline: the next interval then covers both, so nothing
                        // is lost.
                        self.baseline = Some(prev);
                        return Err(e);
                    }
                }
            }
            Some(_) => {
                log::info!(
                    "statements collector: baseline too old, or extension version or clock \
                     changed; taking a new baseline"
                );
                None
            }
            None => None,
        };
        let persisted = self.persist(&current);
        self.baseline = Some(current);
        let mut payload = payload;
        if std::mem::take(&mut self.primed) {
            if let Some(p) = payload.as_mut() {
                p.data.push("partial_interval", true);
            }
        }
        if persisted.is_ok() && std::mem::take(&mut self.persist_failing) {
            log::info!("statements collector: the baseline is saved again");
        }
        if let Err(e) = persisted {
            // The deltas are right whatever the disk says; only a restart would lose the
            // interval. Say so in the log (once per streak) and in the payload rather than drop
            // the data.
            if !std::mem::replace(&mut self.persist_failing, true) {
                log::warn!("{e} (logged once until saving works again)");
            }
            if let Some(p) = payload.as_mut() {
                p.data.push("errors", Json::Array(vec![e.to_json()]));
            } else {
                return Err(e);
            }
        }
        Ok(payload)
    }

    fn baseline_capacity(&self) -> usize {
        self.baseline.as_ref().map_or(0, |b| b.entries.len())
    }

    fn persist(&mut self, b: &Baseline) -> Result<(), CollectError> {
        // About 230 bytes per entry, streamed through a 64 KiB buffer rather than built whole.
        let path = self.baseline_path();
        let res = write_atomically_with(&path, |w| b.write_to(w));
        res.map_err(|source| CollectError::State {
            collector: COLLECTOR,
            path,
            source,
        })
    }

    fn build_payload(
        &mut self,
        client: &mut postgres::Client,
        schema: &str,
        prev: &Baseline,
        cur: &Baseline,
    ) -> Result<Payload, CollectError> {
        let sel = delta::select(prev, cur, self.cfg.top_n);
        self.fetch_texts(client, schema, &sel.top)?;

        let cols = columns_for(cur.ext_version);
        let mut plans = self
            .cfg
            .plans
            .as_ref()
            .map(|p| p.take())
            .unwrap_or_default();
        let mut statements = Vec::with_capacity(sel.top.len());
        for d in &sel.top {
            let text = self.texts.get(&(d.key.1, d.key.2)).cloned().flatten();
            let mut o = Json::object()
                .field("queryid", d.key.2.to_string())
                .field("userid", d.key.0)
                .field("dbid", d.key.1)
                .field("toplevel", d.key.3)
                .field("status", d.status);
            push_counters(&mut o, &d.d, &cols);
            o.push("query", text);
            if let Some(i) = plans.iter().position(|p| p.query_id == d.key.2) {
                let p = plans.swap_remove(i);
                o.push("plan_format", p.format.as_str());
                if p.plan != Json::Null {
                    o.push("plan", p.plan);
                }
                o.push("plan_summary", p.summary);
            }
            statements.push(o);
        }
        let mut other_json = Json::object().field("n_statements", sel.n_other);
        push_counters(&mut other_json, &sel.other, &cols);

        let data = Json::object()
            .field("interval_start", prev.taken_at)
            .field("interval_end", cur.taken_at)
            .field("interval_s", cur.taken_at - prev.taken_at)
            .field(
                "extension_version",
                format!("{}.{}", cur.ext_version.0, cur.ext_version.1),
            )
            .field("n_entries", cur.entries.len())
            .field("n_changed", sel.n_changed)
            .field("count", statements.len())
            .field("reset", sel.reset_json(cur.stats_reset))
            .field("evicted", sel.evicted_json(prev.dealloc, cur.dealloc))
            .field("statements", Json::Array(statements))
            .field("other", other_json);
        Ok(Payload {
            source: Source::PgStatStatements,
            collected_at: unix_now(),
            correlation_id: None,
            data,
        })
    }

    /// Fetches texts only for shipped entries whose text is not known yet, and forgets texts of
    /// entries no longer shipped (memory stays bounded by `top_n`).
    fn fetch_texts(
        &mut self,
        client: &mut postgres::Client,
        schema: &str,
        shipped: &[Delta],
    ) -> Result<(), CollectError> {
        let mut kept: HashMap<(u32, i64), Option<String>> = HashMap::with_capacity(shipped.len());
        let mut missing: Vec<i64> = Vec::new();
        for d in shipped {
            let k = (d.key.1, d.key.2);
            match self.texts.remove(&k) {
                Some(t) => {
                    kept.insert(k, t);
                }
                None => {
                    if !kept.contains_key(&k) {
                        missing.push(d.key.2);
                    }
                }
            }
        }
        self.texts = kept;
        if missing.is_empty() || self.cfg.query_text.mode == crate::normalize::QueryTextMode::None {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = client
            .query(
                &format!(
                    "SELECT dbid, queryid, query FROM {}.pg_stat_statements(true) \
                     WHERE queryid = ANY($1)",
                    quote_ident(schema)
                ),
                &[&missing],
            )
            .map_err(CollectError::query(COLLECTOR, "texts"))?;
        let mut buf = String::new();
        for r in &rows {
            let (Ok(dbid), Ok(qid)) = (r.try_get::<_, u32>(0), r.try_get::<_, i64>(1)) else {
                continue;
            };
            let text: Option<&str> = r.try_get(2).ok().flatten();
            let rendered = text.and_then(|t| {
                self.cfg
                    .query_text
                    .render_into(t, &mut buf)
                    .then(|| buf.clone())
            });
            self.texts.insert((dbid, qid), rendered);
        }
        Ok(())
    }
}
