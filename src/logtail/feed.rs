//! The log collector's loop body: polls the tailer, keeps entries until the collection interval
//! ends or the batch is full, then hands out the payloads together with the position to commit
//! once they are in the spool.
//!
//! Invariants: at most `max_batch` entries (plus one tailer batch) are held in memory; a
//! [`Flush`]'s position covers exactly the entries of its payloads and the ones before, so
//! committing it after the spool append can neither lose nor repeat an entry; time is passed in,
//! so the interval logic is testable without sleeping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::json::Json;
use crate::payload::{unix_now, Payload, Source};

use super::build::{build_payloads, Origin, PayloadOptions};
use super::discover::LogSource;
use super::entry::{Entry, Level};
use super::events::EventClass;
use super::eventstore::{EventStore, StoredEvent};
use super::parse::{EntryParser, ParseStats};
use super::plan::{PlanStore, StoredPlan};
use super::tail::{Position, TailConfig, TailError, Tailer};

/// How the feed batches.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// Payloads are built at least this often when there is something to send. Defaults to the
    /// collection interval (60 s).
    pub interval: Duration,
    /// A batch this big is flushed at once. Defaults to 2000 entries.
    pub max_batch: usize,
    /// A batch holding this much entry text is flushed at once (bounds memory whatever the
    /// entries' size). Defaults to 8 MiB.
    pub max_batch_bytes: usize,
    /// How payloads are built.
    pub payload: PayloadOptions,
    /// Entries shipped in full per interval. Beyond it (a log burst, e.g.
    /// `log_min_duration_statement = 0` under load) only events, warnings and worse and entries
    /// with a correlation ID are kept (plain statement entries stop at four fifths of it); the
    /// others are read and counted (`over_budget`), so the tailer keeps up with the file and the
    /// spool keeps room for the other collectors. Defaults to unlimited.
    pub max_entries_per_interval: usize,
}

/// The interval is `[collection] interval_s`'s default in `config::KEYS`.
impl Default for FeedConfig {
    fn default() -> FeedConfig {
        FeedConfig {
            interval: Duration::from_secs(crate::config::default_whole("collection", "interval_s")),
            max_batch: 2000,
            max_batch_bytes: 8 * 1024 * 1024,
            max_entries_per_interval: usize::MAX,
            payload: PayloadOptions::default(),
        }
    }
}

/// Payloads to append to the spool, and the position to commit after that.
///
/// When the append fails, keep this flush and retry appending it before polling again: a later
/// flush's position also covers this one's entries, so committing it would skip them.
#[derive(Debug)]
pub struct Flush {
    /// The `pg_log` payloads (may be empty when only the position moved, e.g. past
    /// unparsable lines that were already reported).
    pub payloads: Vec<Payload>,
    /// The position after the entries of these payloads.
    pub position: Option<Position>,
}

/// Tailer + batching + payload building.
pub struct LogFeed {
    tailer: Tailer,
    cfg: FeedConfig,
    entries: Vec<Entry>,
    held_bytes: usize,
    stats: ParseStats,
    position: Option<Position>,
    committed: Option<Position>,
    last_flush: Instant,
    /// When the current budget interval started, and how many entries it kept.
    budget_since: Instant,
    kept_in_interval: usize,
    /// Entries read but not shipped because of the budget, by severity, not yet reported.
    over_budget: Vec<(Level, u64)>,
    /// Events per class read since the last flush (shipped or not), not yet reported.
    event_counts: Vec<(EventClass, u64)>,
    /// The agent's own sessions' entries (`bitville-monitor`), by severity: counted, not shipped.
    own_entries: Vec<(Level, u64)>,
    /// Where the latest plan per query_id goes for the statements collector, when attached.
    plans: Option<PlanStore>,
    events: Option<EventStore>,
    /// Whether correlated statements go to [`LogFeed::take_correlated`] (the daemon's
    /// correlator) instead of correlated `pg_log` payloads.
    route_correlated: bool,
    /// Held entries before this index were already handed to `take_correlated`.
    correlated_from: usize,
    /// Correlated statements of entries flushed before `take_correlated` was called.
    correlated_out: Vec<Json>,
}

/// Adds one to `key`'s count.
fn bump<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

/// `{"entries": total, "severity_counts": {...}}` of severity counts.
fn severity_report(mut counts: Vec<(Level, u64)>) -> Json {
    counts.sort();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    Json::object().field("entries", total).field(
        "severity_counts",
        Json::Object(
            counts
                .iter()
                .map(|(l, n)| (l.as_str().into(), Json::UInt(*n)))
                .collect(),
        ),
    )
}

impl LogFeed {
    /// A feed over `tailer`; the first interval starts at `now`.
    pub fn new(tailer: Tailer, cfg: FeedConfig, now: Instant) -> LogFeed {
        LogFeed {
            tailer,
            cfg,
            entries: Vec::new(),
            held_bytes: 0,
            stats: ParseStats::default(),
            position: None,
            committed: None,
            last_flush: now,
            budget_since: now,
            kept_in_interval: 0,
            over_budget: Vec::new(),
            event_counts: Vec::new(),
            own_entries: Vec::new(),
            plans: None,
            events: None,
            route_correlated: false,
            correlated_from: 0,
            correlated_out: Vec::new(),
        }
    }

    /// Hands correlated statements to [`LogFeed::take_correlated`] as soon as they are read,
    /// and builds no correlated `pg_log` payloads of its own (the entries stay in the summary
    /// payloads): the daemon merges them with the sampler's into one record per request.
    pub fn route_correlated(&mut self) {
        self.route_correlated = true;
        self.cfg.payload.max_correlated = 0;
    }

    /// The correlated statements read since the last call, each as the log's per-statement
    /// JSON of a correlated payload (its `statements[]` when the builder assembles them, else
    /// its `entries[]`, with `correlation_id` added), so whatever the builder attaches (plan,
    /// events) travels along.
    /// Empty unless [`LogFeed::route_correlated`] was called.
    pub fn take_correlated(&mut self) -> Vec<Json> {
        self.collect_correlated();
        std::mem::take(&mut self.correlated_out)
    }

    fn collect_correlated(&mut self) {
        if !self.route_correlated || self.correlated_from >= self.entries.len() {
            return;
        }
        let fresh: Vec<Entry> = self.entries[self.correlated_from..]
            .iter()
            .filter(|e| e.correlation_id.is_some())
            .cloned()
            .collect();
        self.correlated_from = self.entries.len();
        if fresh.is_empty() {
            return;
        }
        let opts = PayloadOptions {
            max_correlated: usize::MAX,
            ..self.cfg.payload
        };
        let origin = Origin {
            file: None,
            format: self.tailer.parser().format(),
        };
        let built = build_payloads(&fresh, &ParseStats::default(), &origin, &opts, unix_now());
        for p in built.into_iter().filter(|p| p.correlation_id.is_some()) {
            // Per-statement records when the builder assembles them (text, duration, plan and
            // events of one statement), else the entries; each names its request.
            let items = match (p.data.get("statements"), p.data.get("entries")) {
                (Some(Json::Array(s)), _) if !s.is_empty() => s,
                (_, Some(Json::Array(e))) => e,
                _ => continue,
            };
            for item in items {
                let mut item = item.clone();
                if item.get("correlation_id").is_none() {
                    if let Some(id) = p.correlation_id.as_deref() {
                        item.push("correlation_id", id);
                    }
                }
                self.correlated_out.push(item);
            }
        }
    }

    /// Records the latest auto_explain plan of each query_id (entries with a plan and a
    /// `query_id`) into `store`, whatever the budget ships.
    pub fn with_plan_store(mut self, store: PlanStore) -> LogFeed {
        self.plans = Some(store);
        self
    }

    /// Records every classified event (its time, pid, request id and figures) into `store`,
    /// whatever the budget ships, for the spike reports' `log_events`.
    pub fn with_event_store(mut self, store: EventStore) -> LogFeed {
        self.events = Some(store);
        self
    }

    fn record_event(&self, e: &Entry) {
        let (Some(store), Some(ev)) = (&self.events, &e.event) else {
            return;
        };
        store.record(StoredEvent {
            at: e
                .timestamp
                .as_deref()
                .and_then(super::entry::timestamp_to_unix)
                .unwrap_or_else(unix_now),
            pid: e.pid,
            correlation_id: e.correlation_id.clone(),
            event: ev.clone(),
        });
    }

    fn record_plan(&self, e: &Entry) {
        let (Some(store), Some(body), Some(qid)) =
            (&self.plans, e.plan(), e.query_id.filter(|q| *q != 0))
        else {
            return;
        };
        let opts = &self.cfg.payload;
        let full = opts.query_text == super::build::QueryText::Full;
        let p = super::plan::ship(body, full, opts.plan_max_bytes, e.duration_ms);
        let none = opts.query_text == super::build::QueryText::None;
        store.record(StoredPlan {
            query_id: qid,
            at: e
                .timestamp
                .as_deref()
                .and_then(super::entry::timestamp_to_unix)
                .unwrap_or_else(unix_now),
            plan: if none { Json::Null } else { p.plan },
            format: p.format,
            truncated: p.truncated || e.truncated,
            summary: p.summary,
        });
    }

    /// Holds `e` for the next payloads, or only counts it. The agent's own sessions' entries are
    /// only counted (`own_entries`). Events, warnings (or worse) and entries of a request are
    /// always held; beyond the interval's budget the others are counted (`over_budget`), plain
    /// statement entries first: they may use only four fifths of the budget, so a burst of them
    /// leaves room for the other lines.
    fn take(&mut self, e: Entry) {
        let level = e.level.unwrap_or(Level::Log);
        if e.application_name.as_deref() == Some(crate::pool::APPLICATION_NAME) {
            bump(&mut self.own_entries, level);
            return;
        }
        if let Some(ev) = &e.event {
            bump(&mut self.event_counts, ev.class);
        }
        self.record_event(&e);
        self.record_plan(&e);
        let important = e.event.is_some()
            || e.correlation_id.is_some()
            || matches!(
                level,
                Level::Warning | Level::Error | Level::Fatal | Level::Panic
            );
        let budget = self.cfg.max_entries_per_interval;
        let limit = if e.has_statement_text() || e.duration_ms.is_some() {
            budget - budget / 5
        } else {
            budget
        };
        if important || self.kept_in_interval < limit {
            self.kept_in_interval += 1;
            self.held_bytes += e.size();
            self.entries.push(e);
        } else {
            bump(&mut self.over_budget, level);
        }
    }

    /// The feed the agent runs for what discovery found: `correlation` reads the correlation
    /// IDs, the position file lives in `state_dir`, `cfg` holds the batching and payload
    /// settings (`wiring::log_feed` maps the `[collection]` ones). Logs which file is tailed, in
    /// which format, and what the prefix lacks.
    pub fn from_source(
        src: &LogSource,
        correlation: crate::normalize::CorrelationPattern,
        state_dir: PathBuf,
        cfg: FeedConfig,
        now: Instant,
    ) -> LogFeed {
        log::info!("server log: {}", src.description);
        let parser = EntryParser::new(src.format, &src.prefix).with_correlation(correlation);
        for w in parser.warnings() {
            log::warn!("{w}");
        }
        let tail = TailConfig::new(src.follow.clone(), Some(state_dir));
        LogFeed::new(Tailer::new(tail, parser), cfg, now)
    }

    /// The tailer (current file, parser warnings).
    pub fn tailer(&self) -> &Tailer {
        &self.tailer
    }

    /// Reads what is new. Returns a [`Flush`] when the interval since the last flush has passed
    /// (and there is something to send or a position to save) or the batch is full.
    pub fn poll(&mut self, now: Instant) -> Option<Flush> {
        let max = self.cfg.max_batch.max(1);
        if now.duration_since(self.budget_since) >= self.cfg.interval {
            self.budget_since = now;
            self.kept_in_interval = 0;
        }
        loop {
            let batch = self.tailer.poll();
            for e in batch.entries {
                self.take(e);
            }
            merge(&mut self.stats, self.tailer.take_stats());
            if batch.position.is_some() {
                self.position = batch.position;
            }
            if self.entries.len() >= max || self.held_bytes >= self.cfg.max_batch_bytes {
                return Some(self.flush(now));
            }
            if !batch.more {
                break;
            }
        }
        let due = now.duration_since(self.last_flush) >= self.cfg.interval;
        let something = !self.entries.is_empty()
            || !self.over_budget.is_empty()
            || self.stats.n_unparsed > 0
            || self.position != self.committed;
        if due && something {
            return Some(self.flush(now));
        }
        if due {
            self.last_flush = now;
        }
        None
    }

    /// Builds the payloads of everything held now, whatever the interval (shutdown, tests).
    pub fn flush(&mut self, now: Instant) -> Flush {
        self.collect_correlated();
        self.correlated_from = 0;
        self.last_flush = now;
        let entries = std::mem::take(&mut self.entries);
        self.held_bytes = 0;
        let stats = std::mem::take(&mut self.stats);
        let origin = Origin {
            file: self.tailer.current_path().map(|p| p.display().to_string()),
            format: self.tailer.parser().format(),
        };
        let mut payloads = if entries.is_empty() && stats.n_unparsed == 0 {
            Vec::new()
        } else {
            build_payloads(&entries, &stats, &origin, &self.cfg.payload, unix_now())
        };
        let mut extras: Vec<(&str, Json)> = Vec::new();
        if !self.over_budget.is_empty() {
            extras.push((
                "over_budget",
                severity_report(std::mem::take(&mut self.over_budget)),
            ));
        }
        if !self.own_entries.is_empty() {
            extras.push((
                "own_entries",
                severity_report(std::mem::take(&mut self.own_entries)),
            ));
        }
        let mut events = std::mem::take(&mut self.event_counts);
        events.sort();
        let event_counts = Json::Object(
            events
                .iter()
                .map(|(c, n)| (c.as_str().into(), Json::UInt(*n)))
                .collect(),
        );
        if !events.is_empty() || !extras.is_empty() || !payloads.is_empty() {
            // Per-class counts always travel, in the first summary payload of the flush.
            extras.push(("event_counts", event_counts));
        }
        if !extras.is_empty() {
            let summary = match payloads.iter_mut().position(|p| p.correlation_id.is_none()) {
                Some(i) => i,
                None => {
                    payloads.push(Payload {
                        source: Source::PgLog,
                        collected_at: unix_now(),
                        correlation_id: None,
                        data: Json::object()
                            .field("kind", "log_entries")
                            .field("file", origin.file.clone())
                            .field("format", origin.format.as_str())
                            .field("count", 0u64),
                    });
                    payloads.len() - 1
                }
            };
            for (k, v) in extras {
                payloads[summary].data.push(k, v);
            }
        }
        Flush {
            payloads,
            position: self.position.clone(),
        }
    }

    /// Persists the position of `flush`: call it once its payloads are in the spool.
    pub fn commit(&mut self, flush: &Flush) -> Result<(), TailError> {
        if let Some(p) = &flush.position {
            self.tailer.commit(p)?;
            self.committed = Some(p.clone());
        }
        Ok(())
    }
}

/// Adds `more` to `into` (samples capped).
fn merge(into: &mut ParseStats, more: ParseStats) {
    into.n_lines += more.n_lines;
    into.n_entries += more.n_entries;
    into.n_unparsed += more.n_unparsed;
    for s in more.samples {
        if into.samples.len() < 20 {
            into.samples.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logtail::parse::Format;
    use crate::logtail::tail::Follow;
    use std::io::Write;

    /// Polls at `now` (an interval must be over) and returns the flush and its payloads' text.
    fn poll_text(feed: &mut LogFeed, now: Instant) -> (Flush, String) {
        let fl = feed.poll(now).expect("interval over");
        let text = fl
            .payloads
            .iter()
            .map(|p| p.data.to_json_string())
            .collect();
        (fl, text)
    }

    #[test]
    fn over_the_budget_only_warnings_and_requests_are_shipped_and_the_rest_is_counted() {
        let dir = crate::testdir::TempDir::new("logtail-budget");
        let log = dir.join("pg.log");
        let mut f = std::fs::File::create(&log).unwrap();
        for i in 0..10 {
            writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  routine {i}").unwrap();
        }
        writeln!(
            f,
            "2024-05-01 12:00:00.000 UTC [1] ERROR:  an error over the budget"
        )
        .unwrap();
        writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  routine 10").unwrap();
        let mut tc = TailConfig::new(Follow::Path(log.clone()), Some(dir.to_path_buf()));
        tc.start_at_end = false;
        tc.settle = Duration::ZERO;
        let tailer = Tailer::new(tc, EntryParser::new(Format::Stderr, "%m [%p] "));
        let t0 = Instant::now();
        let cfg = FeedConfig {
            interval: Duration::from_secs(60),
            max_entries_per_interval: 4,
            ..FeedConfig::default()
        };
        let mut feed = LogFeed::new(tailer, cfg, t0);
        let (fl, text) = poll_text(&mut feed, t0 + Duration::from_secs(61));
        // Four routine entries and the error are shipped; seven routine entries are counted.
        assert!(
            text.contains("\"routine 3\"") && !text.contains("\"routine 4\""),
            "{text}"
        );
        assert!(text.contains("an error over the budget"), "{text}");
        assert!(
            text.contains(r#""over_budget":{"entries":7,"severity_counts":{"LOG":7}}"#),
            "{text}"
        );
        feed.commit(&fl).unwrap();
        // The next interval has a fresh budget.
        writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  next interval").unwrap();
        let (_, text) = poll_text(&mut feed, t0 + Duration::from_secs(122));
        assert!(
            text.contains("next interval") && !text.contains("over_budget"),
            "{text}"
        );
    }

    #[test]
    fn over_the_budget_events_are_kept_statements_go_first_and_own_lines_are_counted_apart() {
        let dir = crate::testdir::TempDir::new("logtail-events");
        let log = dir.join("pg.log");
        let mut f = std::fs::File::create(&log).unwrap();
        let line = |f: &mut std::fs::File, app: &str, msg: &str| {
            writeln!(f, "2024-05-01 12:00:00.000 UTC [1] {app} LOG:  {msg}").unwrap();
        };
        // Ten statements fill four fifths of a budget of 10; then two other lines fit, then
        // events beyond the budget are all kept.
        for i in 0..10 {
            line(
                &mut f,
                "app",
                &format!("duration: 1.0 ms  statement: SELECT {i}"),
            );
        }
        line(&mut f, "app", "routine one");
        line(&mut f, "app", "routine two");
        line(&mut f, "app", "routine three");
        line(&mut f, "app", "routine four");
        for _ in 0..3 {
            line(
                &mut f,
                "app",
                "temporary file: path \"base/pgsql_tmp/x\", size 4096",
            );
        }
        line(&mut f, "app", "checkpoint starting: time");
        line(
            &mut f,
            "bitville-monitor",
            "duration: 1.0 ms  statement: SELECT own",
        );
        line(&mut f, "bitville-monitor", "checkpoint starting: time");
        line(&mut f, "app", "routine end");
        let mut tc = TailConfig::new(Follow::Path(log.clone()), Some(dir.to_path_buf()));
        tc.start_at_end = false;
        tc.settle = Duration::ZERO;
        let tailer = Tailer::new(tc, EntryParser::new(Format::Stderr, "%m [%p] %a "));
        let t0 = Instant::now();
        let cfg = FeedConfig {
            max_entries_per_interval: 10,
            ..FeedConfig::default()
        };
        let mut feed = LogFeed::new(tailer, cfg, t0);
        let (_, text) = poll_text(&mut feed, t0 + Duration::from_secs(61));
        assert!(
            text.contains("SELECT ?") && text.contains("routine two"),
            "{text}"
        );
        assert!(!text.contains("routine three"), "{text}");
        assert_eq!(text.matches("\"class\":\"temp_file\"").count(), 3, "{text}");
        assert!(
            text.contains(r#""event_counts":{"temp_file":3,"checkpoint_starting":1}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""own_entries":{"entries":2,"severity_counts":{"LOG":2}}"#),
            "{text}"
        );
        assert!(
            !text.contains("SELECT own") && !text.contains("bitville-monitor"),
            "{text}"
        );
        // Eight statements were kept (four fifths of 10), two dropped; then two routine lines.
        assert_eq!(text.matches("statement:").count(), 8, "{text}");
        assert!(
            text.contains(r#""over_budget":{"entries":5,"severity_counts":{"LOG":5}}"#),
            "{text}"
        );
    }

    #[test]
    fn routed_correlated_statements_are_handed_over_once_and_no_correlated_payload_is_built() {
        let dir = crate::testdir::TempDir::new("logtail-route");
        let log = dir.join("pg.log");
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let mut f = std::fs::File::create(&log).unwrap();
        writeln!(
            f,
            "2024-05-01 12:00:03.000 UTC [7] LOG:  duration: 3000.000 ms  statement: /* correlation:{id} */ SELECT pg_sleep(3)"
        )
        .unwrap();
        writeln!(f, "2024-05-01 12:00:03.100 UTC [8] LOG:  unrelated").unwrap();
        let mut tc = TailConfig::new(Follow::Path(log.clone()), None);
        tc.start_at_end = false;
        tc.settle = Duration::ZERO;
        let tailer = Tailer::new(tc, EntryParser::new(Format::Stderr, "%m [%p] "));
        let t0 = Instant::now();
        let mut feed = LogFeed::new(tailer, FeedConfig::default(), t0);
        feed.route_correlated();
        assert!(feed.poll(t0).is_none(), "the interval has not passed");
        let got = feed.take_correlated();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].get("correlation_id"), Some(&Json::Str(id.into())));
        assert_eq!(got[0].get("pid"), Some(&Json::UInt(7)));
        assert!(feed.take_correlated().is_empty(), "handed over once");
        let fl = feed.flush(t0);
        assert!(feed.take_correlated().is_empty(), "not again at the flush");
        assert!(fl.payloads.iter().all(|p| p.correlation_id.is_none()));
        assert_eq!(fl.payloads[0].data.get("count"), Some(&Json::UInt(2)));
    }

    #[test]
    fn flushes_on_interval_and_when_full_and_commits() {
        let dir = crate::testdir::TempDir::new("logtail-feed");
        let log = dir.join("pg.log");
        let mut f = std::fs::File::create(&log).unwrap();
        for i in 0..5 {
            writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  m{i}").unwrap();
        }
        let mut tc = TailConfig::new(Follow::Path(log.clone()), Some(dir.to_path_buf()));
        tc.start_at_end = false;
        tc.settle = Duration::ZERO;
        let tailer = Tailer::new(tc.clone(), EntryParser::new(Format::Stderr, "%m [%p] "));
        let t0 = Instant::now();
        let cfg = FeedConfig {
            interval: Duration::from_secs(60),
            max_batch: 3,
            ..FeedConfig::default()
        };
        let mut feed = LogFeed::new(tailer, cfg, t0);
        // Full batch: flushed at once (one tailer batch may overshoot the cap).
        let fl = feed.poll(t0).expect("batch full");
        assert_eq!(
            fl.payloads[0].data.get("count"),
            Some(&crate::json::Json::UInt(5))
        );
        feed.commit(&fl).unwrap();
        // A smaller batch waits for the interval.
        for i in 5..7 {
            writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  m{i}").unwrap();
        }
        assert!(feed.poll(t0 + Duration::from_secs(1)).is_none());
        let fl = feed
            .poll(t0 + Duration::from_secs(61))
            .expect("interval over");
        assert_eq!(
            fl.payloads[0].data.get("count"),
            Some(&crate::json::Json::UInt(2))
        );
        feed.commit(&fl).unwrap();
        // Nothing new: no flush even when due.
        assert!(feed.poll(t0 + Duration::from_secs(200)).is_none());
        // A restart resumes after the committed entries.
        writeln!(f, "2024-05-01 12:00:00.000 UTC [1] LOG:  m7").unwrap();
        let tailer = Tailer::new(tc, EntryParser::new(Format::Stderr, "%m [%p] "));
        let mut feed = LogFeed::new(tailer, cfg, t0);
        let fl = feed.flush_after_poll(t0);
        let text = fl.payloads[0].data.to_json_string();
        assert!(
            text.contains("\"m7\"") && !text.contains("\"m6\""),
            "{text}"
        );
    }

    impl LogFeed {
        fn flush_after_poll(&mut self, now: Instant) -> Flush {
            let _ = self.poll(now);
            self.flush(now)
        }
    }
}
