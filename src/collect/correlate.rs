//! The correlated record: one payload per request (correlation ID) and interval, merged from
//! what the activity sampler saw and what the server log wrote, which is what the listener's
//! correlation API returns and its timeline draws (a bar from the top-level `timestamp`, lasting
//! `data.duration_ms`, labelled `data.query`).
//!
//! Two threads feed one [`Correlator`] behind a `Mutex` ([`SharedCorrelator`]): the sampler hands
//! over the statements of each closed interval ([`Correlator::add_sampled`]) and the log tailer
//! the correlated statements it read, as the log's own per-statement JSON
//! ([`Correlator::add_logged`]). A short grace after the interval closed lets the log line of a
//! statement that just ended arrive, so its exact duration joins; then
//! [`Correlator::take_due`] builds the records.
//!
//! Invariants:
//! - A record's `timestamp` is the start of its headline (slowest) statement; `data.duration_ms`
//!   is that statement's duration, exact from the log when the log has it (`duration_source =
//!   log`), else the sampled lower bound (`sampled`).
//! - A statement is shipped once: one still running when its interval closes waits for the next
//!   interval (and is merged with what that one saw); a statement already shipped is never
//!   shipped again, by either producer (the shipped keys are remembered, bounded).
//! - At most `budget` records per flush: the preferred requests first (the latest spike's top
//!   requests, [`Correlator::prefer`]), then by the request's load (summed active time, then
//!   CPU); the others stay in the summaries only and are counted.
//! - Memory is bounded: at most `max_held` statements wait (the oldest log statements go first),
//!   and the remembered keys are capped.
//! - No lock is held while anything is appended to the spool: callers take the payloads out and
//!   append them after the guard is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::json::Json;
use crate::payload::{Payload, Source};

/// Where a statement's duration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationSource {
    /// The server log's `duration: N ms` (exact).
    Log,
    /// The sampler: the last sample minus `query_start` (a lower bound).
    Sampled,
}

impl DurationSource {
    /// `log` or `sampled`.
    pub fn as_str(self) -> &'static str {
        match self {
            DurationSource::Log => "log",
            DurationSource::Sampled => "sampled",
        }
    }
}

/// One statement of a request, as the sampler saw it.
#[derive(Debug, Clone)]
pub struct SampledStatement {
    /// The request.
    pub correlation_id: String,
    /// The marker the ID came from (`comment`, `application_name`, `traceparent`).
    pub correlation_source: &'static str,
    /// The backend.
    pub pid: i32,
    /// `query_start`, unix seconds.
    pub start: f64,
    /// The last sample that saw it running, unix seconds.
    pub last_seen: f64,
    /// Whether it was still running at the interval's last sample.
    pub running: bool,
    /// The sampled duration (lower bound), ms.
    pub duration_ms: f64,
    /// CPU charged to it, ms; `None` when it could not be attributed.
    pub cpu_ms: Option<u64>,
    /// Storage bytes read and written; `None` when not attributable.
    pub io_bytes: Option<(u64, u64)>,
    /// Samples that saw it.
    pub n_samples: u32,
    /// Normalized text.
    pub query: Option<String>,
    /// `pg_stat_activity.query_id` (PostgreSQL 14+).
    pub query_id: Option<i64>,
    /// The execution as the summary lists it (waits, lock, OS figures, ...).
    pub json: Json,
}

/// One statement of a request as the server log wrote it.
#[derive(Debug, Clone)]
pub struct LoggedStatement {
    /// The request.
    pub correlation_id: String,
    /// The backend (`%p`).
    pub pid: Option<i32>,
    /// When it started: the line's time less its duration, or the line's time without one.
    pub start: f64,
    /// `duration: N ms`, when the line has it.
    pub duration_ms: Option<f64>,
    /// The log's per-statement JSON (with whatever the log builder attached: plan, events).
    pub json: Json,
}

impl LoggedStatement {
    /// When its line was written (start plus duration).
    fn end(&self) -> f64 {
        self.start + self.duration_ms.unwrap_or(0.0) / 1000.0
    }

    /// A statement from the log's per-statement JSON (`correlation_id`, `pid`, `ts`,
    /// `duration_ms`, and `start_ts` when the log knows the start): the start is `start_ts`, else
    /// the line's time less the duration (PostgreSQL writes `duration:` when the statement
    /// ends). `None` when it has no correlation ID or time.
    pub fn from_log_json(json: Json) -> Option<LoggedStatement> {
        let correlation_id = match json.get("correlation_id") {
            Some(Json::Str(s)) => s.clone(),
            _ => return None,
        };
        let ts = num(json.get("ts"))?;
        let duration_ms = num(json.get("duration_ms"));
        let pid = num(json.get("pid")).map(|p| p as i32);
        let start = num(json.get("start_ts")).unwrap_or(ts - duration_ms.unwrap_or(0.0) / 1000.0);
        Some(LoggedStatement {
            correlation_id,
            pid,
            start,
            duration_ms,
            json,
        })
    }
}

fn num(v: Option<&Json>) -> Option<f64> {
    match v? {
        Json::Int(i) => Some(*i as f64),
        Json::UInt(u) => Some(*u as f64),
        Json::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// Settings of the correlator.
#[derive(Debug, Clone, Copy)]
pub struct CorrelatorConfig {
    /// How long after an interval closed the log may still deliver its statements' lines.
    /// Defaults to 3 s (the log tailer polls every second).
    pub grace: Duration,
    /// Most records per flush (one flush per interval). Defaults to 26, the daemon's
    /// `correlated_budget` at the default settings.
    pub budget: usize,
    /// Most statements held while waiting. Defaults to 20 000.
    pub max_held: usize,
    /// Longest a log statement waits for the sampler's interval (a sampler that stopped
    /// handing over). Defaults to 150 s.
    pub max_wait: Duration,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        CorrelatorConfig {
            grace: Duration::from_secs(3),
            budget: 26,
            max_held: 20_000,
            max_wait: Duration::from_secs(150),
        }
    }
}

/// Most statements listed inside one record (`n_statements` counts them all).
const MAX_STATEMENTS_PER_RECORD: usize = 50;

/// Keys of shipped statements remembered so neither producer ships one twice.
const MAX_SHIPPED_KEYS: usize = 50_000;

/// How far apart the log's start (line time less duration) and `query_start` may be and still
/// be the same execution: the log's time has millisecond precision, the duration too.
const SAME_START_S: f64 = 0.5;

/// Most request ids [`Correlator::prefer`] keeps (the rest of its list is ignored).
pub const MAX_PREFERRED: usize = 20;

/// The correlator shared by the sampler and log threads.
pub type SharedCorrelator = Arc<Mutex<Correlator>>;

/// A statement waiting for its record: sampled (maybe joined by its log line) or log-only.
#[derive(Debug, Clone)]
struct Held {
    sampled: Option<SampledStatement>,
    log: Option<LoggedStatement>,
    related_logs: Vec<Json>,
    /// Flushes it has waited through while still running.
    deferred: u32,
    /// When it may be shipped (local unix seconds); `None` until an interval covering it was
    /// handed over by the sampler.
    due_at: Option<f64>,
    /// When it arrived (local unix seconds), for the longest wait.
    arrived: f64,
    /// The sampler's interval that saw it.
    window: Window,
}

impl Held {
    fn pid(&self) -> Option<i32> {
        self.sampled
            .as_ref()
            .map(|s| s.pid)
            .or_else(|| self.log.as_ref().and_then(|l| l.pid))
    }

    fn start(&self) -> f64 {
        match (&self.sampled, &self.log) {
            (Some(s), _) => s.start,
            (None, Some(l)) => l.start,
            (None, None) => 0.0,
        }
    }

    fn duration(&self) -> (Option<f64>, DurationSource) {
        if let Some(d) = self.log.as_ref().and_then(|l| l.duration_ms) {
            return (Some(d), DurationSource::Log);
        }
        (
            self.sampled.as_ref().map(|s| s.duration_ms),
            DurationSource::Sampled,
        )
    }

    /// Active time: the exact duration when known, else the sampled lower bound.
    fn load_ms(&self) -> f64 {
        self.duration().0.unwrap_or(0.0)
    }

    fn key(&self) -> (i32, i64) {
        (
            self.pid().unwrap_or(0),
            (self.start() * 1000.0).round() as i64,
        )
    }

    fn to_json(&self) -> Json {
        let (duration, source) = self.duration();
        let mut o = match (&self.sampled, &self.log) {
            (Some(s), _) => s.json.clone(),
            (None, Some(l)) => l.json.clone(),
            (None, None) => Json::object(),
        };
        set(&mut o, "start", Json::Float(self.start()));
        set(&mut o, "duration_ms", duration.into());
        set(&mut o, "duration_source", source.as_str().into());
        if let Some(s) = &self.sampled {
            set(&mut o, "running", s.running.into());
            if s.query_id.is_none() {
                if let Some(q) = self.log.as_ref().and_then(|l| l.json.get("query_id")) {
                    set(&mut o, "query_id", q.clone());
                }
            }
            if let Some(l) = &self.log {
                set(&mut o, "log", l.json.clone());
            }
        }
        if !self.related_logs.is_empty() {
            set(
                &mut o,
                "log_related",
                Json::Array(self.related_logs.clone()),
            );
        }
        o
    }
}

/// Replaces `key` in an object, or adds it.
fn set(o: &mut Json, key: &str, value: Json) {
    if let Json::Object(fields) = o {
        match fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => fields.push((key.to_string().into(), value)),
        }
    }
}

/// What a closed interval handed over, for the record's `interval_start`/`interval_end`.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Option<f64>,
    end: Option<f64>,
}

/// Merges sampled and logged statements into one record per request and interval.
#[derive(Debug)]
pub struct Correlator {
    cfg: CorrelatorConfig,
    held: HashMap<String, Vec<Held>>,
    n_held: usize,
    sampled_through: Option<f64>,
    budget_left: usize,
    /// Shipped statements, oldest first (for eviction), and by (request, pid) their starts in
    /// ms (for the look-up every added statement makes).
    shipped: VecDeque<(String, i32, i64)>,
    shipped_by: HashMap<(String, i32), Vec<i64>>,
    n_over_budget: u64,
    n_dropped: u64,
    /// Counts since the last [`Correlator::take_counts`]: records, over budget, dropped.
    since: (u64, u64, u64),
    /// Requests whose records go first within the budget, most important first.
    preferred: Vec<String>,
}

impl Correlator {
    /// An empty correlator.
    pub fn new(cfg: CorrelatorConfig) -> Correlator {
        Correlator {
            cfg,
            held: HashMap::new(),
            n_held: 0,
            sampled_through: None,
            budget_left: cfg.budget,
            shipped: VecDeque::new(),
            shipped_by: HashMap::new(),
            n_over_budget: 0,
            n_dropped: 0,
            since: (0, 0, 0),
            preferred: Vec::new(),
        }
    }

    /// Takes the records of `ids` (the spike's top requests, most important first; at most
    /// [`MAX_PREFERRED`]) first within the budget from now on, before the heavier requests,
    /// until the next call replaces the list. Request ids are unique per request, so a list
    /// kept after its spike prefers nothing else.
    pub fn prefer(&mut self, ids: Vec<String>) {
        self.preferred = ids;
        self.preferred.truncate(MAX_PREFERRED);
    }

    /// A correlator behind a mutex, for the two threads.
    pub fn shared(cfg: CorrelatorConfig) -> SharedCorrelator {
        Arc::new(Mutex::new(Correlator::new(cfg)))
    }

    /// Requests left out of the correlated records by the budget so far (they stay in the
    /// summaries).
    pub fn n_over_budget(&self) -> u64 {
        self.n_over_budget
    }

    /// Statements dropped because too many were waiting.
    pub fn n_dropped(&self) -> u64 {
        self.n_dropped
    }

    /// Statements waiting for their record.
    pub fn n_held(&self) -> usize {
        self.n_held
    }

    /// What happened since the previous call, for the activity summary: `{records,
    /// over_budget, dropped, held}` (records shipped, requests left out by the budget,
    /// statements dropped for memory, statements waiting now).
    pub fn take_counts(&mut self) -> Json {
        let (records, over, dropped) = std::mem::take(&mut self.since);
        Json::object()
            .field("records", records)
            .field("over_budget", over)
            .field("dropped", dropped)
            .field("held", self.n_held)
    }

    /// The statements of a closed interval (`start`..`end`, server time): their records are due
    /// `grace` after `now`.
    pub fn add_sampled(
        &mut self,
        statements: Vec<SampledStatement>,
        start: Option<f64>,
        end: Option<f64>,
        now: f64,
    ) {
        for s in statements {
            if self.was_shipped_near(&s.correlation_id, s.pid, s.start) {
                continue;
            }
            let group = self.held.entry(s.correlation_id.clone()).or_default();
            // The same execution held over from the previous interval: one statement, its
            // figures summed.
            if let Some(h) = group.iter_mut().find(|h| {
                h.sampled
                    .as_ref()
                    .is_some_and(|o| o.pid == s.pid && (o.start - s.start).abs() < 1e-6)
            }) {
                let old = h.sampled.take().unwrap_or_else(|| s.clone());
                h.sampled = Some(merge_sampled(old, s));
                continue;
            }
            // Its log line may have arrived first (a short statement, the log read at once).
            let log_at = group.iter().position(|h| {
                h.sampled.is_none()
                    && h.log
                        .as_ref()
                        .is_some_and(|l| same_execution(l, s.pid, s.start, s.last_seen))
            });
            match log_at {
                Some(i) => {
                    group[i].sampled = Some(s);
                    group[i].window = Window { start, end };
                }
                None => {
                    group.push(Held {
                        sampled: Some(s),
                        log: None,
                        related_logs: Vec::new(),
                        deferred: 0,
                        due_at: None,
                        arrived: now,
                        window: Window { start, end },
                    });
                    self.n_held += 1;
                }
            }
        }
        if let Some(e) = end {
            self.sampled_through = Some(self.sampled_through.map_or(e, |t| t.max(e)));
        }
        // What this interval covers is due after the grace: the sampled statements, and the
        // log's statements of its time whose sampled twin would have come by now.
        let due = now + self.cfg.grace.as_secs_f64();
        let through = self.sampled_through;
        for h in self.held.values_mut().flatten() {
            let covered = h.sampled.is_some()
                || through.is_some_and(|t| h.log.as_ref().is_some_and(|l| l.end() <= t + 1.0));
            if h.due_at.is_none() && covered {
                h.due_at = Some(due);
            }
        }
        self.budget_left = self.cfg.budget;
        self.bound();
    }

    /// Correlated statements the log read (its per-statement JSON): joined to the sampled
    /// execution of the same backend and start, or held as statements of their own.
    pub fn add_logged(&mut self, statements: Vec<LoggedStatement>, now: f64) {
        let through = self.sampled_through;
        for l in statements {
            let pid = l.pid.unwrap_or(0);
            if self.was_shipped_near(&l.correlation_id, pid, l.start) {
                continue;
            }
            let group = self.held.entry(l.correlation_id.clone()).or_default();
            let matched = group.iter().position(|h| {
                h.sampled
                    .as_ref()
                    .is_some_and(|s| same_execution(&l, s.pid, s.start, s.last_seen))
            });
            match matched {
                Some(i) if group[i].log.is_none() && l.duration_ms.is_some() => {
                    group[i].log = Some(l);
                }
                Some(i) => group[i].related_logs.push(l.json),
                None => {
                    // The sampler already handed over this time: no twin is coming.
                    let due_at = through.filter(|t| l.end() <= *t).map(|_| now);
                    group.push(Held {
                        sampled: None,
                        log: Some(l),
                        related_logs: Vec::new(),
                        deferred: 0,
                        due_at,
                        arrived: now,
                        window: Window::default(),
                    });
                    self.n_held += 1;
                }
            }
        }
        self.bound();
    }

    /// The records due at `now` (local unix seconds): `grace` after the interval that covers
    /// their statements was handed over.
    pub fn take_due(&mut self, now: f64) -> Vec<Payload> {
        let max_wait = self.cfg.max_wait.as_secs_f64();
        let is_due = |h: &Held| match h.due_at {
            Some(at) => now >= at,
            None => now - h.arrived >= max_wait,
        };
        if !self.held.values().flatten().any(is_due) {
            return Vec::new();
        }
        self.flush(false, is_due)
    }

    /// Every record now, running statements included (shutdown, `--once`).
    pub fn take_all(&mut self) -> Vec<Payload> {
        self.budget_left = self.budget_left.max(self.cfg.budget);
        self.flush(true, |_| true)
    }

    fn flush(&mut self, everything: bool, due: impl Fn(&Held) -> bool) -> Vec<Payload> {
        let mut ready: Vec<(String, Vec<Held>)> = Vec::new();
        for (id, group) in self.held.iter_mut() {
            let mut now = Vec::new();
            let mut later = Vec::new();
            for mut h in std::mem::take(group) {
                if !due(&h) {
                    later.push(h);
                } else if !everything && h.is_waiting() && h.due_at.is_some() {
                    // Still running: its next interval completes it (or, if it ends before
                    // the next sample, the next hand-over makes it due as it is).
                    h.deferred += 1;
                    h.due_at = None;
                    later.push(h);
                } else {
                    now.push(h);
                }
            }
            *group = later;
            if !now.is_empty() {
                ready.push((id.clone(), now));
            }
        }
        self.held.retain(|_, g| !g.is_empty());
        self.n_held = self.held.values().map(Vec::len).sum();
        // Heaviest requests first: summed active time, then CPU.
        let load = |g: &[Held]| -> (f64, u64) {
            (
                g.iter().map(Held::load_ms).sum(),
                g.iter()
                    .filter_map(|h| h.sampled.as_ref()?.cpu_ms)
                    .sum::<u64>(),
            )
        };
        let rank = |id: &str| {
            self.preferred
                .iter()
                .position(|p| p == id)
                .unwrap_or(usize::MAX)
        };
        ready.sort_by(|a, b| {
            let (la, lb) = (load(&a.1), load(&b.1));
            rank(&a.0)
                .cmp(&rank(&b.0))
                .then(lb.0.total_cmp(&la.0))
                .then(lb.1.cmp(&la.1))
                .then(a.0.cmp(&b.0))
        });
        let budget = self.budget_left;
        if ready.len() > budget {
            self.n_over_budget += (ready.len() - budget) as u64;
            self.since.1 += (ready.len() - budget) as u64;
        }
        self.since.0 += ready.len().min(budget) as u64;
        self.budget_left = budget.saturating_sub(ready.len());
        let mut out = Vec::new();
        for (id, mut group) in ready.into_iter().take(budget) {
            for h in &group {
                self.remember(&id, h.key());
            }
            group.sort_by(|a, b| a.start().total_cmp(&b.start()));
            out.push(record(&id, &group));
        }
        out
    }

    fn remember(&mut self, id: &str, key: (i32, i64)) {
        let starts = self.shipped_by.entry((id.to_string(), key.0)).or_default();
        if starts.contains(&key.1) {
            return;
        }
        starts.push(key.1);
        self.shipped.push_back((id.to_string(), key.0, key.1));
        while self.shipped.len() > MAX_SHIPPED_KEYS {
            let Some((old_id, old_pid, old_ms)) = self.shipped.pop_front() else {
                break;
            };
            let k = (old_id, old_pid);
            if let Some(v) = self.shipped_by.get_mut(&k) {
                v.retain(|&s| s != old_ms);
                if v.is_empty() {
                    self.shipped_by.remove(&k);
                }
            }
        }
    }

    /// Whether a statement starting near `start` on `pid` was already shipped (by the other
    /// producer, or in an earlier interval).
    fn was_shipped_near(&self, id: &str, pid: i32, start: f64) -> bool {
        let ms = (start * 1000.0).round() as i64;
        let slack = (SAME_START_S * 1000.0) as i64;
        self.shipped_by
            .get(&(id.to_string(), pid))
            .is_some_and(|v| v.iter().any(|s| (s - ms).abs() <= slack))
    }

    /// Drops the oldest log-only statements, then the oldest of any kind, above `max_held`: a
    /// tenth more at once, so a burst does not rescan everything per statement.
    fn bound(&mut self) {
        let max = self.cfg.max_held.max(1);
        if self.n_held <= max {
            return;
        }
        let n_drop = (self.n_held - max + max / 10).min(self.n_held);
        let mut all: Vec<(bool, f64, String, usize)> = self
            .held
            .iter()
            .flat_map(|(id, g)| {
                g.iter()
                    .enumerate()
                    .map(move |(i, h)| (h.sampled.is_some(), h.start(), id.clone(), i))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut doomed: HashMap<String, Vec<usize>> = HashMap::new();
        for (_, _, id, i) in all.into_iter().take(n_drop) {
            doomed.entry(id).or_default().push(i);
        }
        for (id, mut idx) in doomed {
            idx.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(g) = self.held.get_mut(&id) {
                for i in idx {
                    g.remove(i);
                }
                if g.is_empty() {
                    self.held.remove(&id);
                }
            }
        }
        self.n_held -= n_drop;
        self.n_dropped += n_drop as u64;
        self.since.2 += n_drop as u64;
    }
}

impl Held {
    /// Still running at its interval's end and not yet deferred once: its next interval (and
    /// its log line) will complete it.
    fn is_waiting(&self) -> bool {
        self.deferred == 0 && self.log.is_none() && self.sampled.as_ref().is_some_and(|s| s.running)
    }
}

/// Whether the log statement `l` is the execution on `pid` that started at `start` and was last
/// seen at `last_seen`.
fn same_execution(l: &LoggedStatement, pid: i32, start: f64, last_seen: f64) -> bool {
    if l.pid != Some(pid) {
        return false;
    }
    match l.duration_ms {
        Some(_) => (l.start - start).abs() <= SAME_START_S,
        // A line without a duration (an error, `statement:`) falls inside the execution.
        None => l.start >= start - SAME_START_S && l.start <= last_seen + 1.5,
    }
}

/// One execution seen in two intervals: the later view, with CPU, I/O and samples summed.
fn merge_sampled(old: SampledStatement, new: SampledStatement) -> SampledStatement {
    let cpu_ms = match (old.cpu_ms, new.cpu_ms) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    let io_bytes = match (old.io_bytes, new.io_bytes) {
        (None, None) => None,
        (a, b) => {
            let (a, b) = (a.unwrap_or((0, 0)), b.unwrap_or((0, 0)));
            Some((a.0 + b.0, a.1 + b.1))
        }
    };
    let n_samples = old.n_samples + new.n_samples;
    let mut json = new.json.clone();
    set(&mut json, "cpu_ms", cpu_ms.into());
    set(&mut json, "read_bytes", io_bytes.map(|b| b.0).into());
    set(&mut json, "write_bytes", io_bytes.map(|b| b.1).into());
    set(&mut json, "n_samples", n_samples.into());
    if let Some(first) = old.json.get("first_seen") {
        set(&mut json, "first_seen", first.clone());
    }
    SampledStatement {
        cpu_ms,
        io_bytes,
        n_samples,
        json,
        query_id: new.query_id.or(old.query_id),
        ..new
    }
}

/// The record of one request: headed by its slowest statement, statements in start order.
fn record(id: &str, group: &[Held]) -> Payload {
    let window = Window {
        start: group
            .iter()
            .filter_map(|h| h.window.start)
            .min_by(f64::total_cmp),
        end: group
            .iter()
            .filter_map(|h| h.window.end)
            .max_by(f64::total_cmp),
    };
    let head = group
        .iter()
        .max_by(|a, b| a.load_ms().total_cmp(&b.load_ms()))
        .expect("a record has statements");
    let (duration, source) = head.duration();
    let sampled = group.iter().any(|h| h.sampled.is_some());
    let text = |h: &Held| -> Json {
        match (&h.sampled, &h.log) {
            (Some(s), _) => s.query.as_deref().into(),
            (None, Some(l)) => l.json.get("query").cloned().unwrap_or(Json::Null),
            _ => Json::Null,
        }
    };
    let query_id = |h: &Held| -> Json {
        match h.sampled.as_ref().and_then(|s| s.query_id) {
            Some(q) => q.into(),
            None => h
                .log
                .as_ref()
                .and_then(|l| l.json.get("query_id").cloned())
                .unwrap_or(Json::Null),
        }
    };
    let cpu: Vec<u64> = group
        .iter()
        .filter_map(|h| h.sampled.as_ref()?.cpu_ms)
        .collect();
    let io: Vec<(u64, u64)> = group
        .iter()
        .filter_map(|h| h.sampled.as_ref()?.io_bytes)
        .collect();
    let from_head = |k: &str| -> Json {
        let src = match (&head.sampled, &head.log) {
            (Some(s), _) => &s.json,
            (None, Some(l)) => &l.json,
            _ => return Json::Null,
        };
        src.get(k).cloned().unwrap_or(Json::Null)
    };
    let data = Json::object()
        .field("kind", "correlated_request")
        .field("correlation_id", id)
        .field(
            "correlation_source",
            head.sampled
                .as_ref()
                .map(|s| Json::from(s.correlation_source))
                .unwrap_or(Json::Null),
        )
        .field("query", text(head))
        .field("duration_ms", duration)
        .field("duration_source", source.as_str())
        .field("query_start", head.start())
        .field("query_id", query_id(head))
        .field("pid", head.pid())
        .field("datname", from_head("datname"))
        .field("usename", from_head("usename"))
        .field("application_name", from_head("application_name"))
        .field("load_ms", group.iter().map(Held::load_ms).sum::<f64>())
        .field("cpu_ms", (!cpu.is_empty()).then(|| cpu.iter().sum::<u64>()))
        .field(
            "read_bytes",
            (!io.is_empty()).then(|| io.iter().map(|b| b.0).sum::<u64>()),
        )
        .field(
            "write_bytes",
            (!io.is_empty()).then(|| io.iter().map(|b| b.1).sum::<u64>()),
        )
        .field("blocked", blocked(group))
        .field("blocked_by", blocked_by(group))
        .field("interval_start", window.start)
        .field("interval_end", window.end)
        .field("n_statements", group.len())
        .field(
            "statements",
            Json::Array(
                group
                    .iter()
                    .take(MAX_STATEMENTS_PER_RECORD)
                    .map(Held::to_json)
                    .collect(),
            ),
        );
    Payload {
        source: if sampled {
            Source::PgStatActivity
        } else {
            Source::PgLog
        },
        collected_at: head.start(),
        correlation_id: Some(id.to_string()),
        data,
    }
}

/// The sampled statements' JSON.
fn sampled_json(group: &[Held]) -> impl Iterator<Item = &Json> {
    group
        .iter()
        .filter_map(|h| h.sampled.as_ref().map(|s| &s.json))
}

/// Whom the request held up, over its statements (each statement's `blocking`): distinct
/// sessions, their total and longest wait, their requests; `null` when it blocked nobody.
fn blocked(group: &[Held]) -> Json {
    let mut waiters: Vec<(f64, f64, Json)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for b in sampled_json(group).filter_map(|j| j.get("blocking")) {
        if let Some(Json::Array(list)) = b.get("blocked") {
            for w in list {
                let pid = num(w.get("pid")).unwrap_or(0.0);
                let ms = num(w.get("wait_ms")).unwrap_or(0.0);
                match waiters.iter_mut().find(|x| x.0 == pid) {
                    Some(x) => x.1 = x.1.max(ms),
                    None => waiters.push((pid, ms, w.clone())),
                }
            }
        }
        if let Some(Json::Array(list)) = b.get("correlation_ids") {
            ids.extend(list.iter().filter_map(|i| match i {
                Json::Str(s) => Some(s.clone()),
                _ => None,
            }));
        }
    }
    if waiters.is_empty() {
        return Json::Null;
    }
    ids.sort_unstable();
    ids.dedup();
    Json::object()
        .field("n_sessions", waiters.len())
        .field("total_wait_ms", waiters.iter().map(|w| w.1).sum::<f64>())
        .field(
            "max_wait_ms",
            waiters.iter().map(|w| w.1).fold(0.0, f64::max),
        )
        .field(
            "correlation_ids",
            Json::Array(ids.into_iter().map(Json::from).collect()),
        )
}

/// Who held the request up: the blockers of its statements' lock waits (pid, request, query,
/// state, transaction age), each once; `null` when it never waited on a lock.
fn blocked_by(group: &[Held]) -> Json {
    let mut out: Vec<Json> = Vec::new();
    for l in sampled_json(group).filter_map(|j| j.get("lock")) {
        if let Some(Json::Array(list)) = l.get("blockers") {
            for b in list {
                if !out.iter().any(|o| o.get("pid") == b.get("pid")) {
                    let mut b = b.clone();
                    set(
                        &mut b,
                        "relation",
                        l.get("relation").cloned().unwrap_or(Json::Null),
                    );
                    out.push(b);
                }
            }
        }
    }
    if out.is_empty() {
        Json::Null
    } else {
        Json::Array(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(id: &str, pid: i32, start: f64, secs: f64, running: bool) -> SampledStatement {
        SampledStatement {
            correlation_id: id.into(),
            correlation_source: "comment",
            pid,
            start,
            last_seen: start + secs,
            running,
            duration_ms: secs * 1000.0,
            cpu_ms: Some(10),
            io_bytes: None,
            n_samples: 1,
            query: Some("SELECT pg_sleep(?)".into()),
            query_id: Some(42),
            json: Json::object()
                .field("pid", pid)
                .field("datname", "app")
                .field("cpu_ms", 10u64),
        }
    }

    fn logged(id: &str, pid: i32, end: f64, ms: Option<f64>) -> LoggedStatement {
        let mut j = Json::object()
            .field("correlation_id", id)
            .field("pid", pid)
            .field("ts", end)
            .field("query", "SELECT pg_sleep(?)")
            .field("plan", "Result");
        if let Some(ms) = ms {
            j.push("duration_ms", ms);
        }
        LoggedStatement::from_log_json(j).unwrap()
    }

    fn f(v: &Json, k: &str) -> f64 {
        num(v.get(k)).unwrap_or_else(|| panic!("{k}: {:?}", v.get(k)))
    }

    #[test]
    fn sampled_and_logged_make_one_record_at_the_start_with_the_exact_duration() {
        let mut c = Correlator::new(CorrelatorConfig::default());
        c.add_sampled(
            vec![sampled("r1", 10, 1000.0, 2.7, false)],
            Some(990.0),
            Some(1050.0),
            1050.0,
        );
        assert!(c.take_due(1051.0).is_empty(), "inside the grace");
        c.add_logged(vec![logged("r1", 10, 1003.012, Some(3012.0))], 1052.0);
        let out = c.take_due(1053.0);
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(p.correlation_id.as_deref(), Some("r1"));
        assert_eq!(p.source, Source::PgStatActivity);
        assert!((p.collected_at - 1000.0).abs() < 1e-9);
        assert_eq!(f(&p.data, "duration_ms"), 3012.0);
        assert_eq!(
            p.data.get("duration_source"),
            Some(&Json::Str("log".into()))
        );
        assert_eq!(f(&p.data, "query_id"), 42.0);
        let st = match p.data.get("statements") {
            Some(Json::Array(a)) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.len(), 1);
        assert_eq!(
            st[0].get("log").and_then(|l| l.get("plan")),
            Some(&Json::Str("Result".into())),
            "the log's statement JSON travels whole"
        );
        // Nothing is shipped twice, whoever brings it again.
        c.add_logged(vec![logged("r1", 10, 1003.012, Some(3012.0))], 1052.0);
        c.add_sampled(
            vec![sampled("r1", 10, 1000.0, 2.7, false)],
            None,
            None,
            1060.0,
        );
        assert!(c.take_all().is_empty());
    }

    #[test]
    fn a_statement_running_at_the_boundary_is_shipped_once_merged() {
        let mut c = Correlator::new(CorrelatorConfig {
            grace: Duration::ZERO,
            ..CorrelatorConfig::default()
        });
        c.add_sampled(
            vec![sampled("r", 7, 100.0, 20.0, true)],
            None,
            Some(120.0),
            120.0,
        );
        assert!(c.take_due(120.0).is_empty(), "waits for its next interval");
        c.add_sampled(
            vec![sampled("r", 7, 100.0, 30.0, false)],
            None,
            Some(180.0),
            180.0,
        );
        let out = c.take_due(180.0);
        assert_eq!(out.len(), 1);
        assert_eq!(f(&out[0].data, "duration_ms"), 30_000.0);
        assert_eq!(f(&out[0].data, "cpu_ms"), 20.0, "both intervals' CPU");
        assert_eq!(
            out[0].data.get("duration_source"),
            Some(&Json::Str("sampled".into()))
        );
    }

    #[test]
    fn a_request_over_two_intervals_gives_two_records_without_repeats() {
        let mut c = Correlator::new(CorrelatorConfig {
            grace: Duration::ZERO,
            ..CorrelatorConfig::default()
        });
        c.add_sampled(
            vec![sampled("r", 7, 100.0, 2.0, false)],
            Some(90.0),
            Some(150.0),
            150.0,
        );
        let first = c.take_due(150.0);
        c.add_sampled(
            vec![
                sampled("r", 7, 100.0, 2.0, false),
                sampled("r", 7, 160.0, 3.0, false),
            ],
            Some(150.0),
            Some(210.0),
            210.0,
        );
        let second = c.take_due(210.0);
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_eq!(first[0].correlation_id, second[0].correlation_id);
        assert_eq!(
            f(&second[0].data, "n_statements"),
            1.0,
            "the first is not repeated"
        );
        assert!((second[0].collected_at - 160.0).abs() < 1e-9);
        assert_eq!(f(&second[0].data, "interval_start"), 150.0);
    }

    #[test]
    fn log_only_requests_and_the_budget_by_load() {
        let mut c = Correlator::new(CorrelatorConfig {
            grace: Duration::ZERO,
            budget: 2,
            ..CorrelatorConfig::default()
        });
        c.add_logged(
            vec![
                logged("light", 1, 10.0, Some(100.0)),
                logged("heavy", 2, 10.0, Some(400.0)),
                logged("medium", 3, 10.0, Some(150.0)),
                logged("medium", 3, 11.0, Some(150.0)),
            ],
            12.0,
        );
        assert!(
            c.take_due(50.0).is_empty(),
            "waits for the sampler's interval"
        );
        c.add_sampled(vec![], None, Some(60.0), 60.0);
        let out = c.take_due(60.0);
        let ids: Vec<_> = out
            .iter()
            .map(|p| p.correlation_id.clone().unwrap())
            .collect();
        assert_eq!(ids, vec!["heavy", "medium"]);
        assert_eq!(out[0].source, Source::PgLog);
        assert!(
            (out[0].collected_at - 9.6).abs() < 1e-9,
            "start = end less duration"
        );
        assert_eq!(f(&out[1].data, "n_statements"), 2.0);
        assert_eq!(c.n_over_budget(), 1);
        assert_eq!(
            c.take_counts().to_json_string(),
            r#"{"records":2,"over_budget":1,"dropped":0,"held":0}"#
        );
        assert_eq!(
            c.take_counts().to_json_string(),
            r#"{"records":0,"over_budget":0,"dropped":0,"held":0}"#
        );
    }

    #[test]
    fn preferred_requests_are_taken_first_within_the_budget() {
        let mut c = Correlator::new(CorrelatorConfig {
            grace: Duration::ZERO,
            budget: 2,
            ..CorrelatorConfig::default()
        });
        c.prefer(vec!["spike-b".into(), "gone".into(), "spike-a".into()]);
        c.add_logged(
            vec![
                logged("heavy", 1, 10.0, Some(900.0)),
                logged("spike-a", 2, 10.0, Some(50.0)),
                logged("medium", 3, 10.0, Some(400.0)),
                logged("spike-b", 4, 10.0, Some(10.0)),
            ],
            12.0,
        );
        c.add_sampled(vec![], None, Some(60.0), 60.0);
        let ids: Vec<_> = c
            .take_due(60.0)
            .iter()
            .map(|p| p.correlation_id.clone().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec!["spike-b", "spike-a"],
            "the spike's requests in its order, before heavier ones"
        );
        assert_eq!(c.n_over_budget(), 2);

        // Without a preference (or once replaced) the load decides again.
        c.prefer(Vec::new());
        c.add_logged(
            vec![
                logged("light", 5, 70.0, Some(10.0)),
                logged("spike-c", 6, 70.0, Some(5.0)),
            ],
            72.0,
        );
        c.add_sampled(vec![], Some(60.0), Some(120.0), 120.0);
        let ids: Vec<_> = c
            .take_due(120.0)
            .iter()
            .map(|p| p.correlation_id.clone().unwrap())
            .collect();
        assert_eq!(ids, vec!["light", "spike-c"]);
        c.prefer((0..50).map(|i| format!("r{i}")).collect());
        assert_eq!(c.preferred.len(), MAX_PREFERRED);
    }

    #[test]
    fn held_statements_are_bounded() {
        let mut c = Correlator::new(CorrelatorConfig {
            max_held: 3,
            ..CorrelatorConfig::default()
        });
        c.add_sampled(vec![sampled("s", 1, 5.0, 1.0, false)], None, None, 0.0);
        c.add_logged(
            (0..5)
                .map(|i| logged(&format!("l{i}"), 2, 10.0 + i as f64, Some(1.0)))
                .collect(),
            20.0,
        );
        assert_eq!(c.n_held(), 3);
        assert_eq!(c.n_dropped(), 3);
        let ids: Vec<_> = c
            .take_all()
            .into_iter()
            .map(|p| p.correlation_id.unwrap())
            .collect();
        assert!(
            ids.contains(&"s".to_string()),
            "sampled statements go last: {ids:?}"
        );
    }

    #[test]
    fn the_log_start_is_start_ts_or_the_line_time_less_the_duration() {
        let j = Json::object()
            .field("correlation_id", "x")
            .field("ts", 10.0)
            .field("duration_ms", 2000.0);
        assert_eq!(
            LoggedStatement::from_log_json(j.clone()).unwrap().start,
            8.0
        );
        let with_start = j.field("start_ts", 7.5);
        assert_eq!(
            LoggedStatement::from_log_json(with_start).unwrap().start,
            7.5
        );
    }

    #[test]
    fn log_json_without_id_or_time_is_refused() {
        assert!(LoggedStatement::from_log_json(Json::object().field("ts", 1.0)).is_none());
        assert!(
            LoggedStatement::from_log_json(Json::object().field("correlation_id", "x")).is_none()
        );
    }
}
