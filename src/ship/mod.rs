//! The shipper: the only thread that talks to the listener. It takes the next record from the
//! spool (a spike report before the oldest of the rest, see [`Spool::peek`]), posts it, and acknowledges it in the spool only after the listener answered 200 (or
//! after a permanently rejected payload was moved to the dead-letter file).
//!
//! Invariants:
//! - Spike reports first, then oldest first, one request at a time, never faster than `max_requests_per_minute`
//!   ([`pacer`]); a 429's `Retry-After` is honoured and is not a failure.
//! - The [`breaker`] opens after `breaker_failures` consecutive failures (5xx, timeouts, refused
//!   connections, TLS errors) and lets one probe through after `breaker_reset`.
//! - 400 and 413 are permanent for that payload: dead-lettered, and the queue moves on.
//!   401, 404 (and any other 3xx/4xx) are configuration errors: logged loudly at most once a
//!   minute, the data stays in the spool, retried every `config_error_retry`.
//! - [`Shipper::run`] returns soon after `stop` is set: every wait is sliced; an in-flight
//!   request is bounded by `timeout`.
//! - The spool lock is never held during network I/O (`peek` copies the record out).
//! - The API key never appears in `Debug` output, logs or errors.

pub mod breaker;
pub mod http;
pub mod pacer;
pub mod resolve;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::default_whole;
use crate::payload::{check_project, envelope_body};
use crate::spool::{Record, Spool, SpoolError};

use breaker::{Breaker, Outcome};
use http::Client;
use pacer::Pacer;

/// How long the loop sleeps at most before looking at `stop` again.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// How long to back off after the spool itself failed (a read error).
const SPOOL_ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Configuration errors are logged at error level at most this often.
const CONFIG_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where and how to ship. Plain values; `main` maps the configuration onto it.
#[derive(Clone)]
pub struct ShipperOptions {
    /// The listener endpoint, e.g. `https://listener:8443/ingest/postgres` (exact path).
    pub url: String,
    /// Sent as `Authorization: Bearer <api_key>`; never logged.
    pub api_key: String,
    /// The envelope's `project` (1 to 50 characters).
    pub project: String,
    /// A PEM file of CAs to trust instead of the system roots (private CAs, self-signed
    /// listeners). Verification always stays on.
    pub ca_file: Option<PathBuf>,
    /// Overall bound of one request, connect to last byte of the answer. Defaults to 5 s (the
    /// Python agent's value and `[listener] timeout_s`'s default).
    pub timeout: Duration,
    /// Bound of connecting (TCP and TLS handshake); capped at `timeout`. Defaults to 5 s.
    pub connect_timeout: Duration,
    /// Pace limit. Defaults to 60, below the listener's 100 per IP that PHP agents share.
    pub max_requests_per_minute: u32,
    /// Consecutive failures that open the breaker. Defaults to 5.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe. Defaults to 60 s.
    pub breaker_reset: Duration,
    /// How long to wait before retrying after a configuration error (401, 404). Defaults to
    /// 60 s.
    pub config_error_retry: Duration,
    /// Whether `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` are honoured (as the
    /// Python agent's `requests` did). Defaults to true.
    pub proxy_from_env: bool,
}

impl ShipperOptions {
    /// Options with every default for `url`, `api_key` and `project` (the `[listener]` ones are
    /// those of `config::KEYS`).
    pub fn new(url: &str, api_key: &str, project: &str) -> ShipperOptions {
        ShipperOptions {
            url: url.to_string(),
            api_key: api_key.to_string(),
            project: project.to_string(),
            ca_file: None,
            timeout: Duration::from_secs(default_whole("listener", "timeout_s")),
            connect_timeout: http::DEFAULT_CONNECT_TIMEOUT,
            max_requests_per_minute: default_whole("listener", "max_requests_per_minute") as u32,
            breaker_failures: default_whole("listener", "breaker_failures") as u32,
            breaker_reset: Duration::from_secs(default_whole("listener", "breaker_reset_s")),
            config_error_retry: Duration::from_secs(60),
            proxy_from_env: true,
        }
    }
}

impl fmt::Debug for ShipperOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShipperOptions")
            .field("url", &crate::config::mask_url(&self.url))
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .field("project", &self.project)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_requests_per_minute", &self.max_requests_per_minute)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_reset", &self.breaker_reset)
            .field("config_error_retry", &self.config_error_retry)
            .field("proxy_from_env", &self.proxy_from_env)
            .finish()
    }
}

/// Why a payload was not delivered (or a shipper could not be built).
#[derive(Debug)]
pub enum ShipError {
    /// The options are unusable: bad URL, project out of range, a key that cannot be a header.
    Options(String),
    /// The CA file cannot be read or holds no certificate.
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// 400 or 413: the listener will never accept this payload.
    Rejected {
        /// The listener URL.
        url: String,
        /// 400 or 413.
        status: u16,
        /// The listener's answer (its `details` say which field).
        answer: String,
    },
    /// 429: the listener's rate limit; wait `retry_after`.
    RateLimited {
        /// The listener URL.
        url: String,
        /// How long the listener asked to wait (or the default).
        retry_after: Duration,
    },
    /// 401, 404, a redirect or another 4xx: the agent's configuration (key, URL) is wrong.
    ListenerConfig {
        /// The listener URL.
        url: String,
        /// The status.
        status: u16,
        /// The listener's answer.
        answer: String,
    },
    /// 5xx (or an unexpected 1xx): the listener failed.
    Server {
        /// The listener URL.
        url: String,
        /// The status.
        status: u16,
        /// The listener's answer.
        answer: String,
    },
    /// The request did not complete within the timeout.
    Timeout {
        /// The listener URL.
        url: String,
        /// What ureq said.
        detail: String,
    },
    /// The connection could not be made: refused, host not found, unreachable.
    Connect {
        /// The listener URL.
        url: String,
        /// What ureq said.
        detail: String,
    },
    /// The TLS handshake or certificate verification failed.
    Tls {
        /// The listener URL.
        url: String,
        /// What ureq said.
        detail: String,
    },
    /// Any other transport failure: connection dropped, malformed answer.
    Transport {
        /// The listener URL.
        url: String,
        /// What ureq said.
        detail: String,
    },
}

impl ShipError {
    /// Whether sending the same payload again may succeed. False for rejected payloads (they
    /// go to the dead-letter file) and for unusable options.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ShipError::Rejected { .. } | ShipError::Options(_) | ShipError::CaFile { .. }
        )
    }

    /// Whether this counts as a listener failure for the circuit breaker.
    pub fn counts_for_breaker(&self) -> bool {
        matches!(
            self,
            ShipError::Server { .. }
                | ShipError::Timeout { .. }
                | ShipError::Connect { .. }
                | ShipError::Tls { .. }
                | ShipError::Transport { .. }
        )
    }

    /// What the breaker makes of this error: a rejected payload proves the listener is up.
    fn outcome(&self) -> Outcome {
        if self.counts_for_breaker() {
            Outcome::Failure
        } else if matches!(self, ShipError::Rejected { .. }) {
            Outcome::Success
        } else {
            Outcome::Neutral
        }
    }
}

impl fmt::Display for ShipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShipError::Options(msg) => write!(f, "{msg}"),
            ShipError::CaFile { path, reason } => {
                write!(f, "ca file {}: {reason}", path.display())
            }
            ShipError::Rejected {
                url,
                status,
                answer,
            } => write!(f, "{url} rejected the payload with {status}: {answer}"),
            ShipError::RateLimited { url, retry_after } => {
                write!(f, "{url} rate limited (429); retry after {retry_after:?}")
            }
            ShipError::ListenerConfig {
                url,
                status,
                answer,
            } => write!(
                f,
                "{url} answered {status} (check listener url and api_key): {answer}"
            ),
            ShipError::Server {
                url,
                status,
                answer,
            } => write!(f, "{url} failed with {status}: {answer}"),
            ShipError::Timeout { url, detail } => write!(f, "post to {url} timed out: {detail}"),
            ShipError::Connect { url, detail } => {
                write!(f, "cannot connect to {url}: {detail}")
            }
            ShipError::Tls { url, detail } => write!(f, "tls with {url} failed: {detail}"),
            ShipError::Transport { url, detail } => write!(f, "post to {url} failed: {detail}"),
        }
    }
}

impl std::error::Error for ShipError {}

/// Maps a listener answer onto the contract: `Ok` for 2xx, a classified error otherwise.
pub fn classify_reply(url: &str, reply: http::Reply, now: SystemTime) -> Result<(), ShipError> {
    let url = url.to_string();
    let http::Reply {
        status,
        body: answer,
        retry_after,
    } = reply;
    match status {
        200..=299 => Ok(()),
        400 | 413 => Err(ShipError::Rejected {
            url,
            status,
            answer,
        }),
        429 => Err(ShipError::RateLimited {
            url,
            retry_after: retry_after
                .as_deref()
                .and_then(|v| pacer::parse_retry_after(v, now))
                .unwrap_or(pacer::DEFAULT_RETRY_AFTER),
        }),
        // 408 Request Timeout is the server giving up on a slow request: transient.
        408 => Err(ShipError::Timeout {
            url,
            detail: format!("408: {answer}"),
        }),
        300..=499 => Err(ShipError::ListenerConfig {
            url,
            status,
            answer,
        }),
        _ => Err(ShipError::Server {
            url,
            status,
            answer,
        }),
    }
}

/// What [`Shipper::run`] watches to know it should return.
pub trait StopSignal {
    /// Whether a stop was requested.
    fn is_stopped(&self) -> bool;

    /// Sleeps `d` or until a stop is seen. The default looks at [`StopSignal::is_stopped`]
    /// every 100 ms; a signal that can wake its sleepers (the daemon's `Shutdown`) sleeps in
    /// one piece.
    fn sleep(&self, d: Duration) {
        sleep_unless_stopped(d, self);
    }

    /// How long the shipper waits for an append to an empty spool before it looks at the stop
    /// signal again. 100 ms unless whoever stops the shipper also calls
    /// [`Spool::wake_waiters`] (the daemon does).
    fn idle_wait(&self) -> Duration {
        STOP_CHECK
    }
}

impl StopSignal for AtomicBool {
    fn is_stopped(&self) -> bool {
        self.load(Ordering::SeqCst)
    }
}

impl<T: StopSignal + ?Sized> StopSignal for Arc<T> {
    fn is_stopped(&self) -> bool {
        (**self).is_stopped()
    }

    fn sleep(&self, d: Duration) {
        (**self).sleep(d);
    }

    fn idle_wait(&self) -> Duration {
        (**self).idle_wait()
    }
}

/// The daemon wakes the shipper's spool wait on stop ([`Spool::wake_waiters`]), so an idle
/// shipper needs no periodic wakeups; the bound only limits the damage if that call is missed.
const IDLE_WAIT_WOKEN_ON_STOP: Duration = Duration::from_secs(5);

impl StopSignal for crate::shutdown::Shutdown {
    fn is_stopped(&self) -> bool {
        crate::shutdown::Shutdown::is_stopped(self)
    }

    fn sleep(&self, d: Duration) {
        self.wait(d);
    }

    fn idle_wait(&self) -> Duration {
        IDLE_WAIT_WOKEN_ON_STOP
    }
}

/// Counters of what the shipper did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipStats {
    /// Payloads acknowledged by the listener (200).
    pub n_sent: u64,
    /// Payloads moved to the dead-letter file (400, 413).
    pub n_dead_letters: u64,
    /// Requests that failed (5xx, timeouts, connection and TLS errors).
    pub n_failures: u64,
    /// 429 answers.
    pub n_rate_limited: u64,
    /// Configuration errors (401, 404, ...).
    pub n_config_errors: u64,
}

/// What the shipper did and where its breaker stands, readable from other threads (for the
/// agent's own metrics, and for tests) through [`StatusHandle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipStatus {
    /// The counters.
    pub stats: ShipStats,
    /// The breaker's state after the last request.
    pub breaker: breaker::State,
    /// The last request's error, `None` after a success (for status output and tests).
    pub last_error: Option<String>,
    /// When the listener last acknowledged a payload, in unix seconds.
    pub last_success_at: Option<u64>,
}

/// A cloneable, thread-safe view of a running shipper's [`ShipStatus`]. Each publication
/// (after every request) counts as a change a watcher can wait for
/// ([`StatusHandle::wait_change`]), so the status thread sleeps until the shipper did something
/// instead of polling.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Published>);

#[derive(Debug)]
struct Published {
    /// The status and how many times it was published.
    status: Mutex<(ShipStatus, u64)>,
    changed: Condvar,
}

impl StatusHandle {
    fn new(status: ShipStatus) -> StatusHandle {
        StatusHandle(Arc::new(Published {
            status: Mutex::new((status, 0)),
            changed: Condvar::new(),
        }))
    }

    /// The latest status (updated after every request).
    pub fn get(&self) -> ShipStatus {
        self.0
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// How many times the status was published: compare with a later call to see a change.
    pub fn version(&self) -> u64 {
        self.0.status.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    fn publish(&self, status: ShipStatus) {
        let mut guard = self.0.status.lock().unwrap_or_else(|p| p.into_inner());
        *guard = (status, guard.1 + 1);
        self.0.changed.notify_all();
    }

    /// Waits until the status is published again after version `seen`, `deadline` passes or
    /// `stopped()` is true (checked under the lock, so a stop followed by
    /// [`StatusHandle::wake_waiters`] is never missed). Returns the version now.
    pub fn wait_change(&self, seen: u64, deadline: Instant, stopped: impl Fn() -> bool) -> u64 {
        let mut guard = self.0.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            if guard.1 != seen || stopped() || now >= deadline {
                return guard.1;
            }
            guard = self
                .0
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wakes every [`StatusHandle::wait_change`] (after a stop was requested).
    pub fn wake_waiters(&self) {
        let _guard = self.0.status.lock().unwrap_or_else(|p| p.into_inner());
        self.0.changed.notify_all();
    }
}

/// The shipper: owns the HTTP client, the pacer and the breaker. Run it on its own thread.
#[derive(Debug)]
pub struct Shipper {
    spool: Arc<Spool>,
    project: String,
    client: Client,
    breaker: Breaker,
    pacer: Pacer,
    config_error_retry: Duration,
    last_config_log: Option<Instant>,
    last_spool_error_log: Option<Instant>,
    last_success_at: Option<u64>,
    last_rejection: Option<String>,
    stats: ShipStats,
    published: StatusHandle,
}

impl Shipper {
    /// Checks the options and builds the HTTP client (reads the CA file).
    pub fn new(spool: Arc<Spool>, opts: ShipperOptions) -> Result<Shipper, ShipError> {
        check_project(&opts.project).map_err(ShipError::Options)?;
        if opts.api_key.is_empty() {
            log::warn!("listener api_key is empty: the listener will answer 401");
        }
        let client = Client::new(&opts)?;
        let breaker = Breaker::new(opts.breaker_failures, opts.breaker_reset);
        let published = StatusHandle::new(ShipStatus {
            stats: ShipStats::default(),
            breaker: breaker.state(),
            last_error: None,
            last_success_at: None,
        });
        Ok(Shipper {
            spool,
            project: opts.project,
            client,
            breaker,
            pacer: Pacer::new(opts.max_requests_per_minute),
            config_error_retry: opts.config_error_retry,
            last_config_log: None,
            last_spool_error_log: None,
            last_success_at: None,
            last_rejection: None,
            stats: ShipStats::default(),
            published,
        })
    }

    /// A handle other threads can read this shipper's status through, also while it runs.
    pub fn status_handle(&self) -> StatusHandle {
        self.published.clone()
    }

    /// What the shipper did so far.
    pub fn stats(&self) -> ShipStats {
        self.stats.clone()
    }

    /// Why the listener refused the last dead-lettered payload (its status and answer).
    pub fn last_rejection(&self) -> Option<&str> {
        self.last_rejection.as_deref()
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> breaker::State {
        self.breaker.state()
    }

    /// Ships until `stop` is set (an `AtomicBool` or the daemon's `Shutdown`): spike reports,
    /// then the oldest record first, paced, behind the breaker. Returns within about 100 ms of
    /// `stop` (at once with the daemon's `Shutdown`, whose waits are woken; the daemon also wakes
    /// the spool wait), or after the request in flight ends (bounded by the timeout).
    pub fn run<S: StopSignal + ?Sized>(&mut self, stop: &S) {
        log::info!("shipper started for {}", self.client.url());
        while !stop.is_stopped() {
            let now = Instant::now();
            let wait = self.pacer.wait(now);
            if !wait.is_zero() {
                stop.sleep(wait);
                continue;
            }
            if let Some(until) = self.breaker.blocked_until() {
                if now < until {
                    stop.sleep(until - now);
                    continue;
                }
            }
            let generation = self.spool.generation();
            let record = match self.spool.peek() {
                Ok(Some(record)) => record,
                Ok(None) => {
                    // Woken at once by an append (or by the daemon's stop, see
                    // `StopSignal::idle_wait`); the timeout only bounds the stop check.
                    self.spool.wait_for_append(generation, stop.idle_wait());
                    continue;
                }
                Err(e) => {
                    self.log_spool_error(&e);
                    stop.sleep(SPOOL_ERROR_BACKOFF);
                    continue;
                }
            };
            if !self.breaker.allow(now) {
                stop.sleep(STOP_CHECK);
                continue;
            }
            let last_error = self.deliver(&record);
            self.published.publish(ShipStatus {
                stats: self.stats.clone(),
                breaker: self.breaker.state(),
                last_error,
                last_success_at: self.last_success_at,
            });
        }
        log::info!("shipper stopped");
    }

    /// Sends one record and acts on the answer; returns the error text, if any.
    fn deliver(&mut self, record: &Record) -> Option<String> {
        let body = envelope_body(&self.project, &record.body);
        let result = self
            .client
            .post(&body)
            .and_then(|reply| classify_reply(self.client.url(), reply, SystemTime::now()));
        let end = Instant::now();
        self.pacer.finished(end);
        let outcome = match &result {
            Ok(()) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        self.breaker.record(outcome, end);
        let error_text = result.as_ref().err().map(ToString::to_string);

        match result {
            Ok(()) => {
                self.stats.n_sent += 1;
                self.last_success_at = Some(crate::payload::unix_now() as u64);
                log::debug!("delivered seq {} ({})", record.seq, record.source.as_str());
                if let Err(e) = self.spool.ack(record) {
                    // The listener has the payload; the worst case is a duplicate after a
                    // restart.
                    log::warn!(
                        "seq {} delivered but not marked in the cursor: {e}",
                        record.seq
                    );
                }
            }
            Err(e) if !e.is_retryable() => {
                // Permanent for this payload: set it aside so it never blocks the queue.
                let (status, answer) = match &e {
                    ShipError::Rejected { status, answer, .. } => (*status, answer.as_str()),
                    _ => (0, ""),
                };
                log::warn!(
                    "seq {} ({}) moved to the dead-letter file: {e}",
                    record.seq,
                    record.source.as_str()
                );
                if let Err(dl) = self.spool.dead_letter(record, &body, status, answer) {
                    log::error!("seq {} not kept as a dead letter: {dl}", record.seq);
                }
                self.stats.n_dead_letters += 1;
                self.last_rejection = Some(format!("{status} {}", answer.trim()));
            }
            Err(ShipError::RateLimited { retry_after, .. }) => {
                self.stats.n_rate_limited += 1;
                // The listener protects itself; waiting is all it asks. Not a failure.
                log::info!("listener rate limit: waiting {retry_after:?}");
                self.pacer.hold(end + retry_after);
            }
            Err(e @ ShipError::ListenerConfig { .. }) => {
                self.stats.n_config_errors += 1;
                let due = self
                    .last_config_log
                    .is_none_or_elapsed(end, CONFIG_ERROR_LOG_EVERY);
                if due {
                    log::error!(
                        "{e}; data is kept in the spool and retried every {:?}",
                        self.config_error_retry
                    );
                    self.last_config_log = Some(end);
                } else {
                    log::debug!("{e}");
                }
                self.pacer.hold(end + self.config_error_retry);
            }
            Err(e) => {
                self.stats.n_failures += 1;
                log::warn!("seq {} not delivered: {e}", record.seq);
            }
        }
        error_text
    }

    fn log_spool_error(&mut self, e: &SpoolError) {
        let now = Instant::now();
        if self
            .last_spool_error_log
            .is_none_or_elapsed(now, CONFIG_ERROR_LOG_EVERY)
        {
            log::error!("shipper cannot read the spool: {e}");
            self.last_spool_error_log = Some(now);
        }
    }
}

trait LastLogged {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool;
}

impl LastLogged for Option<Instant> {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool {
        self.map_or(true, |last| now.saturating_duration_since(last) >= every)
    }
}

/// Sleeps `total`, in slices, returning early once `stop` is set.
fn sleep_unless_stopped<S: StopSignal + ?Sized>(total: Duration, stop: &S) {
    let deadline = Instant::now() + total;
    loop {
        if stop.is_stopped() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_status() -> ShipStatus {
        ShipStatus {
            stats: ShipStats::default(),
            breaker: Breaker::new(3, Duration::from_secs(1)).state(),
            last_error: None,
            last_success_at: None,
        }
    }

    #[test]
    fn a_publication_wakes_the_status_watcher_and_a_stop_does_too() {
        let h = StatusHandle::new(idle_status());
        let far = Instant::now() + Duration::from_secs(3600);
        let v0 = h.version();
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || h.wait_change(v0, far, || false))
        };
        let mut published = idle_status();
        published.stats.n_sent = 1;
        h.publish(published);
        assert_eq!(waiter.join().unwrap(), v0 + 1);
        assert_eq!(h.get().stats.n_sent, 1);

        let stopped = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (h, stopped) = (h.clone(), stopped.clone());
            std::thread::spawn(move || {
                h.wait_change(v0 + 1, far, || stopped.load(Ordering::SeqCst))
            })
        };
        stopped.store(true, Ordering::SeqCst);
        h.wake_waiters();
        assert_eq!(
            waiter.join().unwrap(),
            v0 + 1,
            "woken by the stop, no change"
        );

        let t = Instant::now();
        let deadline = t + Duration::from_millis(50);
        assert_eq!(h.wait_change(v0 + 1, deadline, || false), v0 + 1);
        assert!(Instant::now() >= deadline, "returns at the deadline");
    }

    fn reply(status: u16, retry_after: Option<&str>) -> http::Reply {
        http::Reply {
            status,
            body: "{\"error\":\"x\"}".into(),
            retry_after: retry_after.map(str::to_string),
        }
    }

    fn classify(status: u16, retry_after: Option<&str>) -> Result<(), ShipError> {
        classify_reply(
            "http://l/ingest/postgres",
            reply(status, retry_after),
            SystemTime::now(),
        )
    }

    #[test]
    fn statuses_map_onto_the_contract() {
        assert!(classify(200, None).is_ok());
        for s in [400, 413] {
            let e = classify(s, None).unwrap_err();
            assert!(!e.is_retryable() && !e.counts_for_breaker(), "{s}");
            assert_eq!(e.outcome(), Outcome::Success);
        }
        for s in [401, 404, 301, 403] {
            let e = classify(s, None).unwrap_err();
            assert!(matches!(e, ShipError::ListenerConfig { .. }), "{s}");
            assert!(e.is_retryable() && !e.counts_for_breaker(), "{s}");
        }
        for s in [500, 502, 503, 408] {
            let e = classify(s, None).unwrap_err();
            assert!(e.is_retryable() && e.counts_for_breaker(), "{s}");
        }
        let e = classify(429, Some("7")).unwrap_err();
        assert!(e.is_retryable() && !e.counts_for_breaker());
        assert!(matches!(
            e,
            ShipError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(429, None).unwrap_err(),
            ShipError::RateLimited { retry_after, .. } if retry_after == pacer::DEFAULT_RETRY_AFTER
        ));
    }

    #[test]
    fn debug_output_masks_the_api_key() {
        let o = ShipperOptions::new("http://l/ingest/postgres", "s3cret-key", "p");
        let text = format!("{o:?}");
        assert!(!text.contains("s3cret-key"), "{text}");
        assert!(text.contains("***"));
    }

    #[test]
    fn the_daemon_shutdown_token_is_a_stop_signal() {
        let token = crate::shutdown::Shutdown::new();
        assert!(!StopSignal::is_stopped(&token));
        token.stop();
        assert!(StopSignal::is_stopped(&token));
        assert!(StopSignal::is_stopped(&Arc::new(AtomicBool::new(true))));
    }

    #[test]
    fn stop_ends_a_long_sleep_early() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper_stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            sleep_unless_stopped(Duration::from_secs(3600), &sleeper_stop);
            let _ = tx.send(());
        });
        stop.store(true, Ordering::Relaxed);
        // A liveness bound a minute long against an hour-long sleep, not a speed claim.
        assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok());
    }
}
