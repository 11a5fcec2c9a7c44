//! The connection pool: the only way the agent talks to PostgreSQL.
//!
//! A fixed-size pool guarded by a `Mutex` and a `Condvar`. Connections are opened lazily,
//! reused, and every one is opened with the same safe session settings: application_name
//! `bitville-monitor`, `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`
//! and `default_transaction_read_only=on`, a connect timeout and TCP keepalives.
//!
//! Invariants:
//! - `open == idle + checked_out <= max` at every moment, where `checked_out` also counts slots
//!   reserved by a thread that is connecting. A slot is reserved before the lock is released to
//!   connect, so replacing broken connections can never exceed the cap.
//! - The lock is held only to pop, push and count: connecting, probing and dropping a client
//!   (which closes its socket) happen outside it.
//! - [`Pool::acquire`] never waits longer than the acquire timeout.
//! - A client whose connection broke is dropped, never returned to the idle list.
//! - A connection attempt as a whole (socket, authentication, session set-up) ends within the
//!   connect timeout: it runs on a short-lived thread, and one still blocked at the deadline (a
//!   catalog lock) keeps its slot reserved until it finishes, so the cap holds.
//! - Failed attempts back off ([`ConnectBackoff`], one policy for every caller of a pool):
//!   0.5 s doubling to 15 s, reset by a success, logged once per streak.
//! - A failed connection attempt is classified ([`ConnectFailure`]) by the server's SQLSTATE
//!   (`SqlState` constants) or else by the `io::ErrorKind` under the driver's error; message text
//!   decides only the two cases that carry neither (named in `classify`). A failed query's
//!   decisions are [`crate::pgerror`]'s.
//! - Statements prepared on a connection are known to it ([`PooledClient::query_cached`]), so
//!   nothing executes a statement the server lacks.
//! - An attempt abandoned at the deadline makes the pool look who blocks it
//!   ([`crate::connect_block`]), over a connection it already holds: an idle one at once, else
//!   the next one handed out (an idle one or the next new one). Every new connection runs that
//!   lookup once at set-up, so its backend has cached what the lookup needs and running it while
//!   a catalog is locked reads no catalog. What it saw waits in the pool until the summary takes
//!   it ([`Pool::take_connect_blocked_by`]); the log names the holders once per change.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;

use crate::config::DatabaseConfig;
use crate::connect_block::{self, Sighting};
use crate::pgerror;

/// The application_name of every agent session; the agent excludes these from what it reports.
pub const APPLICATION_NAME: &str = "bitville-monitor";

/// An idle connection unused for longer than this is probed before it is handed out: the server
/// may have been restarted or the backend terminated meanwhile. Shorter idle times skip the probe
/// (it costs a round trip): a caller whose query fails with a connection error marks the client
/// broken ([`PooledClient::mark_broken`]) and acquires another.
const PROBE_AFTER_IDLE: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection could not be had.
#[derive(Debug)]
pub enum PoolError {
    /// Every connection stayed in use for the whole acquire timeout.
    Timeout {
        /// How long `acquire` waited.
        waited: Duration,
        /// The pool's cap.
        max: usize,
    },
    /// Opening a new connection failed.
    Connect(ConnectError),
    /// Recent connection attempts failed and the pool waits before the next one (see
    /// [`ConnectBackoff`]): no new connection is tried until `retry_in` has passed.
    BackingOff {
        /// Time left until the next attempt.
        retry_in: Duration,
        /// The last attempt's error.
        last: String,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Timeout { waited, max } => write!(
                f,
                "no database connection free after {:.1} s (all {max} in use)",
                waited.as_secs_f64()
            ),
            PoolError::Connect(e) => e.fmt(f),
            PoolError::BackingOff { retry_in, last } => write!(
                f,
                "not connecting for another {:.1} s after failed attempts (last: {last})",
                retry_in.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for PoolError {}

/// What kind of failure a connection attempt met, so the operator gets the right fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there, or the host is unreachable.
    ServerDown,
    /// The password was wrong or authentication failed.
    Authentication,
    /// No pg_hba.conf entry, or the role does not exist or may not log in.
    NotAuthorized,
    /// The database does not exist.
    NoSuchDatabase,
    /// The server has no free connection slot (or the role's CONNECTION LIMIT is reached).
    TooManyConnections,
    /// The server is starting up or shutting down.
    NotReady,
    /// More sessions named `bitville-monitor` exist than the cap allows (another agent instance
    /// or a leak): the agent refuses to add one.
    TooManyAgentSessions,
    /// The attempt (socket, authentication, session set-up) did not finish within the connect
    /// timeout: typically a lock on a catalog the server reads while letting a session in
    /// (`pg_database`, `pg_authid`, `pg_class`), or an overloaded server.
    Blocked,
    /// Anything else.
    Other,
}

/// A failed connection attempt, with a message that says what to check.
#[derive(Debug)]
pub struct ConnectError {
    /// The classified failure.
    pub failure: ConnectFailure,
    /// Where the agent tried to connect (`host:port` or the socket path), as user@db.
    pub target: String,
    /// The driver's or server's message.
    pub detail: String,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.failure {
            ConnectFailure::ServerDown => {
                "the server is not reachable (is it running, and are host and port right?)"
            }
            ConnectFailure::Authentication => "authentication failed (wrong password?)",
            ConnectFailure::NotAuthorized => {
                "the server refused the role (no pg_hba.conf entry, or no such role?)"
            }
            ConnectFailure::NoSuchDatabase => "the database does not exist",
            ConnectFailure::TooManyConnections => "the server has no free connection slot",
            ConnectFailure::NotReady => "the server is starting up or shutting down",
            ConnectFailure::TooManyAgentSessions => {
                "refusing to open another connection: too many bitville-monitor sessions on the server \
                 (another agent instance running?)"
            }
            ConnectFailure::Blocked => {
                "connecting was blocked: the server did not let the session in within the connect \
                 timeout (a lock on pg_database, pg_authid or pg_class held by another session, or \
                 an overloaded server?)"
            }
            ConnectFailure::Other => "cannot connect",
        };
        write!(f, "{}: {what}: {}", self.target, self.detail)
    }
}

impl std::error::Error for ConnectError {}

/// The one back-off policy for failed connection attempts: after a failure the next attempt
/// waits `FIRST`, doubling per further failure up to `MAX`; a success resets it. Without it a
/// lock on `pg_class` or a full server cost a fork, an authentication and a FATAL line in the
/// server log several times a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectBackoff {
    /// Consecutive failed attempts.
    pub failures: u32,
    /// No attempt before this moment.
    pub not_before: Option<Instant>,
}

impl ConnectBackoff {
    /// The wait after the first failure.
    pub const FIRST: Duration = Duration::from_millis(500);
    /// The longest wait between attempts.
    pub const MAX: Duration = Duration::from_secs(15);

    /// The wait after `failures` consecutive failures.
    pub fn delay(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX)
    }

    /// Records a failed attempt at `now`; returns whether it starts a streak (log it then).
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + Self::delay(self.failures));
        self.failures == 1
    }

    /// Records a success; returns how many failures the streak it ends had.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(self).failures
    }

    /// How long an attempt at `now` must still wait, if at all.
    pub fn wait_left(&self, now: Instant) -> Option<Duration> {
        self.not_before
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

/// Counters describing the pool, for the agent's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The cap.
    pub max: usize,
    /// Connections open now (idle + in use).
    pub size: usize,
    /// Open and idle.
    pub idle: usize,
    /// Handed out (or being connected).
    pub in_use: usize,
    /// `acquire` calls that had to wait for a connection.
    pub waits: u64,
    /// `acquire` calls that gave up after the acquire timeout.
    pub acquire_timeouts: u64,
    /// Connections opened since start.
    pub connections_opened: u64,
    /// Broken connections discarded (and replaced on demand).
    pub connections_replaced: u64,
    /// Connection attempts that failed (each one, including blocked ones).
    pub connect_failures: u64,
    /// Connection attempts abandoned at the connect deadline (blocked by a lock or overload).
    pub connects_blocked: u64,
}

struct Idle {
    client: postgres::Client,
    prepared: Prepared,
    since: Instant,
}

/// Statements prepared on one connection, by the caller's name for them. They live and die
/// with the connection: a new connection starts with none, so nothing ever executes a statement
/// the server does not have (which would write an ERROR into the server log).
#[derive(Default)]
struct Prepared {
    /// The callers' statements ([`PooledClient::query_cached`]).
    by_name: Vec<(&'static str, postgres::Statement)>,
    /// The pool's own lock-holder lookup, prepared at set-up ([`crate::connect_block`]).
    lookup: Option<postgres::Statement>,
}

impl Prepared {
    fn get(&self, name: &str) -> Option<&postgres::Statement> {
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, st)| st)
    }
}

struct State {
    idle: Vec<Idle>,
    /// Handed out plus reserved for a connect in progress.
    checked_out: usize,
    /// When a connection was last found broken: idle connections returned before then may be
    /// dead too (a server restart or a mass `pg_terminate_backend`), so they are probed.
    broken_seen: Option<Instant>,
    backoff: ConnectBackoff,
    /// The last failed attempt's message, for [`PoolError::BackingOff`].
    last_connect_error: String,
    stats: PoolStats,
    /// Who blocked connecting: for the summary, the status file and the log.
    blockers: connect_block::Sightings,
    /// An attempt was blocked while no connection was idle: look at the next one handed out.
    lookup_pending: bool,
}

struct Inner {
    pg: postgres::Config,
    target: String,
    /// The database connected to (named with a non-shared catalog's holder).
    dbname: String,
    /// How lock holders are rendered (query text mode, correlation markers).
    view: Mutex<connect_block::View>,
    max: usize,
    session_limit: usize,
    acquire_timeout: Duration,
    /// The whole connection attempt (socket, authentication, session set-up, the agent-session
    /// count) must finish within this.
    connect_deadline: Duration,
    state: Mutex<State>,
    returned: Condvar,
}

/// A fixed-size pool of connections to the monitored server. Cheap to clone (shared).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Builds the driver configuration with typed setters: a password with spaces, quotes or `=`
/// cannot inject options the way a formatted connection string could.
pub fn driver_config(db: &DatabaseConfig) -> postgres::Config {
    let mut pg = postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&db.dbname)
        .application_name(APPLICATION_NAME)
        .options(&session_options(db))
        .connect_timeout(db.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if !db.password.is_empty() {
        pg.password(db.password.expose());
    }
    pg
}

/// The `options` startup parameter: the session settings that keep every agent query harmless.
pub fn session_options(db: &DatabaseConfig) -> String {
    format!(
        "-c statement_timeout={} -c lock_timeout={} -c default_transaction_read_only=on \
         -c idle_in_transaction_session_timeout={}",
        db.statement_timeout.as_millis(),
        db.lock_timeout.as_millis(),
        db.idle_in_transaction_timeout.as_millis()
    )
}

fn describe_target(db: &DatabaseConfig) -> String {
    let place = if db.host.starts_with('/') {
        format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port)
    } else {
        format!("{}:{}", db.host, db.port)
    };
    format!("{}@{} on {place}", db.user, db.dbname)
}

/// What a failed connection attempt means for the operator: by the server's SQLSTATE when it
/// answered, otherwise by the I/O error under the driver's error (see the two exceptions below).
fn classify(err: &postgres::Error) -> ConnectFailure {
    if let Some(code) = err.code() {
        return classify_state(code);
    }
    match pgerror::io_error_kind(err) {
        Some(kind) if is_server_down_kind(kind) => ConnectFailure::ServerDown,
        // A host name that does not resolve: std reports the failed lookup as an io::Error of the
        // unstable kind `Uncategorized` (tests/pool_safety.rs, host `nonexistent.invalid`), which
        // cannot be matched, so only its text tells it apart.
        Some(_) if source_text(err).starts_with("failed to lookup address information") => {
            ConnectFailure::ServerDown
        }
        Some(_) => ConnectFailure::Other,
        // The server asked for a password and none is configured: the driver reports this as a
        // configuration error whose source is the plain string "password missing", with neither
        // a SQLSTATE nor an io::Error (tokio-postgres connect_raw.rs; tests/pool_safety.rs).
        None if source_text(err) == "password missing" => ConnectFailure::Authentication,
        None => ConnectFailure::Other,
    }
}

fn classify_state(code: &SqlState) -> ConnectFailure {
    if *code == SqlState::INVALID_PASSWORD {
        ConnectFailure::Authentication
    } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        ConnectFailure::NotAuthorized
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        ConnectFailure::NoSuchDatabase
    } else if *code == SqlState::TOO_MANY_CONNECTIONS {
        ConnectFailure::TooManyConnections
    } else if *code == SqlState::CANNOT_CONNECT_NOW {
        ConnectFailure::NotReady
    } else {
        ConnectFailure::Other
    }
}

/// I/O error kinds that mean no server is there to answer: nothing listens on the port or the
/// socket path, the driver's socket connect timed out, or the host cannot be reached.
fn is_server_down_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | NotFound
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | AddrNotAvailable
    )
}

/// The text of the driver error's immediate cause (empty if it has none).
fn source_text(err: &postgres::Error) -> String {
    std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The error's message with its SQLSTATE, as a connect error's detail.
fn connect_detail(err: &postgres::Error) -> String {
    match err.code() {
        Some(code) => format!("{} ({})", pgerror::message(err), code.code()),
        None => pgerror::message(err),
    }
}

impl Pool {
    /// A pool for `db`; no connection is opened until the first [`Pool::acquire`].
    pub fn new(db: &DatabaseConfig) -> Pool {
        Pool::with_limits(db, db.pool_max_size, db.pool_max_size)
    }

    /// A pool of at most `max` connections that refuses to connect while the server has more than
    /// `session_limit` agent sessions: several pools (one per extra database) share one cap.
    pub fn with_limits(db: &DatabaseConfig, max: usize, session_limit: usize) -> Pool {
        let max = max.clamp(1, crate::config::MAX_POOL_SIZE);
        Pool {
            inner: Arc::new(Inner {
                pg: driver_config(db),
                target: describe_target(db),
                dbname: db.dbname.clone(),
                view: Mutex::new(connect_block::View::default()),
                max,
                session_limit: session_limit.clamp(1, crate::config::MAX_POOL_SIZE),
                acquire_timeout: db.acquire_timeout,
                connect_deadline: db.connect_timeout.max(Duration::from_millis(100)),
                state: Mutex::new(State {
                    idle: Vec::with_capacity(max),
                    checked_out: 0,
                    broken_seen: None,
                    backoff: ConnectBackoff::default(),
                    last_connect_error: String::new(),
                    stats: PoolStats {
                        max,
                        ..PoolStats::default()
                    },
                    blockers: connect_block::Sightings::default(),
                    lookup_pending: false,
                }),
                returned: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind; they stay consistent
        // because every update is a single statement, so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens one connection (outside the pool) to check the server: returns its version string.
    /// Used at start so a wrong password, a missing database or a stopped server is reported
    /// clearly before anything else runs.
    pub fn check(&self) -> Result<String, ConnectError> {
        let (mut client, _) = self.connect_bounded(false)?;
        let row = client
            .query_one("SELECT version()", &[])
            .map_err(|e| self.connect_error(&e))?;
        Ok(row.get(0))
    }

    fn connect_error(&self, err: &postgres::Error) -> ConnectError {
        ConnectError {
            failure: classify(err),
            target: self.inner.target.clone(),
            detail: connect_detail(err),
        }
    }

    /// Opens a connection, then counts the agent's sessions on the server (this one included)
    /// and closes it again if there are more than the cap: another agent instance on the same
    /// server, or leaked sessions, must not push the total higher. Then runs the lock-holder
    /// lookup once, prepared, so the backend caches what it needs (see the module doc).
    fn connect(&self) -> Result<(postgres::Client, Prepared), ConnectError> {
        let mut client = self
            .inner
            .pg
            .connect(postgres::NoTls)
            .map_err(|e| self.connect_error(&e))?;
        let sessions: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&APPLICATION_NAME],
            )
            .map_err(|e| self.connect_error(&e))?
            .get(0);
        if sessions > self.inner.session_limit as i64 {
            return Err(ConnectError {
                failure: ConnectFailure::TooManyAgentSessions,
                target: self.inner.target.clone(),
                detail: format!(
                    "{sessions} sessions, at most {} allowed",
                    self.inner.session_limit
                ),
            });
        }
        let mut prepared = Prepared::default();
        let warmed = client
            .prepare(connect_block::LOOKUP_SQL)
            .and_then(|st| client.query(&st, &[]).map(|_| st));
        match warmed {
            Ok(st) => prepared.lookup = Some(st),
            Err(e) if pgerror::is_connection_error(&e) => return Err(self.connect_error(&e)),
            // Not fatal: only the lookup of who blocks connecting is lost (it prepares again
            // when needed); the message says what the server answered.
            Err(e) => log::warn!(
                "database: the lock-holder lookup failed on a new connection (it is tried again \
                 when connecting is blocked): {}",
                pgerror::message(&e)
            ),
        }
        Ok((client, prepared))
    }

    /// [`Pool::connect`] on a short-lived thread, waited for at most the connect deadline: the
    /// driver's own connect timeout covers only the socket, and a session that waits on a
    /// catalog lock during authentication would hold the caller for as long as the lock is held.
    /// When the deadline passes, the thread is left to finish on its own; with `reserved_slot`
    /// the pool slot stays taken until it does (so the cap holds even then) and a client that
    /// arrives late is closed. On any error the slot is released (by the thread if it was left).
    fn connect_bounded(
        &self,
        reserved_slot: bool,
    ) -> Result<(postgres::Client, Prepared), ConnectError> {
        enum Handoff {
            Waiting,
            Abandoned,
            Done(Box<Result<(postgres::Client, Prepared), ConnectError>>),
        }
        let shared = Arc::new((Mutex::new(Handoff::Waiting), Condvar::new()));
        let pool = self.clone();
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let result = pool.connect();
                let (lock, done) = &*theirs;
                let mut h = lock.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(*h, Handoff::Abandoned) {
                    drop(h);
                    // Closing the late client may block on its socket: no lock is held here.
                    drop(result);
                    if reserved_slot {
                        pool.release_slot();
                    }
                } else {
                    *h = Handoff::Done(Box::new(result));
                    done.notify_one();
                }
            });
        if let Err(e) = spawned {
            if reserved_slot {
                self.release_slot();
            }
            return Err(ConnectError {
                failure: ConnectFailure::Other,
                target: self.inner.target.clone(),
                detail: format!("cannot start a connect thread: {e}"),
            });
        }
        let deadline = Instant::now() + self.inner.connect_deadline;
        let (lock, done) = &*shared;
        let mut h = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(&mut *h, Handoff::Waiting) {
                Handoff::Done(result) => {
                    drop(h);
                    let result = *result;
                    if result.is_err() && reserved_slot {
                        self.release_slot();
                    }
                    return result;
                }
                other => *h = other,
            }
            let now = Instant::now();
            if now >= deadline {
                *h = Handoff::Abandoned;
                drop(h);
                self.lock().stats.connects_blocked += 1;
                return Err(ConnectError {
                    failure: ConnectFailure::Blocked,
                    target: self.inner.target.clone(),
                    detail: format!(
                        "no session after {:.1} s",
                        self.inner.connect_deadline.as_secs_f64()
                    ),
                });
            }
            h = done
                .wait_timeout(h, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn release_slot(&self) {
        let mut state = self.lock();
        state.checked_out -= 1;
        drop(state);
        self.inner.returned.notify_one();
    }

    /// Takes a connection: an idle one, a new one while below the cap, or the next one returned.
    /// Gives up with [`PoolError::Timeout`] after the acquire timeout.
    pub fn acquire(&self) -> Result<PooledClient, PoolError> {
        self.acquire_within(self.inner.acquire_timeout)
    }

    /// [`Pool::acquire`] with an explicit longest wait.
    pub fn acquire_within(&self, timeout: Duration) -> Result<PooledClient, PoolError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut waited = false;
        let mut state = self.lock();
        loop {
            if let Some(idle) = state.idle.pop() {
                state.checked_out += 1;
                let suspect = state.broken_seen.is_some_and(|t| idle.since <= t);
                let look = std::mem::take(&mut state.lookup_pending);
                drop(state);
                let Idle {
                    mut client,
                    prepared,
                    since: _,
                } = idle;
                let needs_probe = suspect || idle.since.elapsed() >= PROBE_AFTER_IDLE;
                let healthy =
                    !client.is_closed() && (!needs_probe || client.is_valid(PROBE_TIMEOUT).is_ok());
                if healthy {
                    let mut client = self.guard(client, prepared);
                    if look {
                        self.look_for_blockers(&mut client, false);
                    }
                    return Ok(client);
                }
                // Dropping a broken client may block on its socket: keep the lock released.
                drop(client);
                state = self.lock();
                state.lookup_pending |= look;
                state.checked_out -= 1;
                state.stats.connections_replaced += 1;
                state.broken_seen = Some(Instant::now());
                continue;
            }
            if state.idle.len() + state.checked_out < self.inner.max {
                if let Some(retry_in) = state.backoff.wait_left(Instant::now()) {
                    // Every caller shares the one policy: no new attempt until the wait is over
                    // (idle and returned connections are still handed out above).
                    return Err(PoolError::BackingOff {
                        retry_in,
                        last: state.last_connect_error.clone(),
                    });
                }
                // Reserve the slot first so concurrent replacements cannot exceed the cap.
                state.checked_out += 1;
                drop(state);
                return match self.connect_bounded(true) {
                    Ok((client, prepared)) => {
                        let mut state = self.lock();
                        state.stats.connections_opened += 1;
                        let streak = state.backoff.succeeded();
                        let look = std::mem::take(&mut state.lookup_pending);
                        drop(state);
                        if streak > 0 {
                            log::info!(
                                "database: connected again to {} after {streak} failed attempts",
                                self.inner.target
                            );
                        }
                        let mut client = self.guard(client, prepared);
                        if look {
                            self.look_for_blockers(&mut client, true);
                        }
                        // The streak of blocked attempts is over: a new one is logged again.
                        self.lock().blockers.streak_over();
                        Ok(client)
                    }
                    Err(e) => {
                        let mut state = self.lock();
                        state.stats.connect_failures += 1;
                        let first = state.backoff.failed(Instant::now());
                        state.last_connect_error = e.to_string();
                        drop(state);
                        if first {
                            log::warn!(
                                "database: {e}; retrying after {:.1} s, then less often (up to \
                                 every {} s) until a connection succeeds",
                                ConnectBackoff::delay(1).as_secs_f64(),
                                ConnectBackoff::MAX.as_secs()
                            );
                        }
                        if e.failure == ConnectFailure::Blocked {
                            self.after_blocked();
                        }
                        Err(PoolError::Connect(e))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                state.stats.acquire_timeouts += 1;
                return Err(PoolError::Timeout {
                    waited: now - start,
                    max: self.inner.max,
                });
            }
            if !waited {
                waited = true;
                state.stats.waits += 1;
            }
            // Spurious wakeups are fine: the loop re-checks everything against the deadline.
            state = self
                .inner
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A connection attempt was abandoned at the deadline: look who blocks it over an idle
    /// connection now, or over the next one handed out.
    fn after_blocked(&self) {
        let mut state = self.lock();
        let Some(idle) = state.idle.pop() else {
            state.lookup_pending = true;
            drop(state);
            self.record_blockers(Sighting::not_visible(
                "no open connection to look with (the agent looks at its next connection)",
            ));
            return;
        };
        state.checked_out += 1;
        drop(state);
        let mut client = self.guard(idle.client, idle.prepared);
        self.look_for_blockers(&mut client, false);
    }

    /// Runs the lock-holder lookup on `client` and records what it saw; `late`: run at the next
    /// new connection, so an empty answer means the lock was already gone.
    fn look_for_blockers(&self, client: &mut PooledClient, late: bool) {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let result = match client.prepared.lookup.clone() {
            Some(st) => client.query(&st, &[]),
            // Set-up could not prepare it: the plain query (which may wait on the lock).
            None => client.query(connect_block::LOOKUP_SQL, &[]),
        };
        let seen = match result {
            Ok(rows) => connect_block::sighting(&rows, &view, &self.inner.dbname, late),
            Err(e) => {
                if pgerror::is_connection_error(&e) {
                    client.mark_broken();
                    self.lock().lookup_pending = true;
                }
                Sighting::not_visible(&format!("the lookup failed: {}", pgerror::message(&e)))
            }
        };
        self.record_blockers(seen);
    }

    /// Keeps a sighting for the summary; logs it when it names someone new (or, once per streak
    /// of blocked attempts, that nobody can be named).
    fn record_blockers(&self, seen: Sighting) {
        let line = self.lock().blockers.record(seen);
        if let Some(line) = line {
            log::warn!(
                "database: connecting to {} was blocked{line}",
                self.inner.target
            );
        }
    }

    /// How lock holders are rendered from now on (the `query_text` mode and the correlation
    /// markers of `[collection]`); the default is `normalized` with every marker trusted.
    pub fn set_blocker_view(&self, view: connect_block::View) {
        *self.inner.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Who blocked connecting since the last call (for the summary, which ships it once);
    /// `None` when no attempt was blocked.
    pub fn take_connect_blocked_by(&self) -> Option<Sighting> {
        self.lock().blockers.take()
    }

    /// The latest sighting of who blocked connecting, shipped or not (for the status file).
    pub fn connect_blocked_by(&self) -> Option<Sighting> {
        self.lock().blockers.latest()
    }

    fn guard(&self, client: postgres::Client, prepared: Prepared) -> PooledClient {
        PooledClient {
            client: Some(client),
            prepared,
            pool: self.clone(),
            broken: false,
        }
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let state = self.lock();
        let mut stats = state.stats;
        stats.idle = state.idle.len();
        stats.in_use = state.checked_out;
        stats.size = stats.idle + stats.in_use;
        debug_assert!(stats.size <= stats.max);
        stats
    }

    /// Closes every idle connection (on shutdown). Connections in use close when returned.
    pub fn close_idle(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        drop(idle);
    }

    fn give_back(&self, client: postgres::Client, prepared: Prepared, broken: bool) {
        if broken || client.is_closed() {
            drop(client);
            let mut state = self.lock();
            state.checked_out -= 1;
            state.stats.connections_replaced += 1;
            state.broken_seen = Some(Instant::now());
        } else {
            let mut state = self.lock();
            state.checked_out -= 1;
            state.idle.push(Idle {
                client,
                prepared,
                since: Instant::now(),
            });
            debug_assert!(state.idle.len() + state.checked_out <= self.inner.max);
        }
        self.inner.returned.notify_one();
    }
}

/// A connection borrowed from the pool; it goes back (or, if broken, is discarded) on drop.
pub struct PooledClient {
    client: Option<postgres::Client>,
    prepared: Prepared,
    pool: Pool,
    broken: bool,
}

impl PooledClient {
    /// Marks the connection as unusable so it is closed instead of reused.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Runs `sql` (without parameters) as the statement `name`, prepared once per connection:
    /// the first call on a connection prepares it (protocol-level Parse, so the server caches
    /// the plan), later calls only execute it. The connection's own record of what it prepared
    /// decides, so the normal path never executes a missing statement and never leaves an ERROR
    /// in the server log. A `name` always stands for the same `sql`. Should the server lose the
    /// statement anyway (a transaction-pooling proxy between agent and server), it is
    /// forgotten and the plain query runs.
    pub fn query_cached(
        &mut self,
        name: &'static str,
        sql: &str,
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = match self.prepared.get(name) {
            Some(st) => st.clone(),
            None => {
                let st = self.deref_mut().prepare(sql)?;
                self.prepared.by_name.push((name, st.clone()));
                st
            }
        };
        match self.deref_mut().query(&statement, &[]) {
            Err(e) if pgerror::has_state(&e, &SqlState::INVALID_SQL_STATEMENT_NAME) => {
                self.prepared.by_name.retain(|(n, _)| *n != name);
                self.deref_mut().query_typed(sql, &[])
            }
            other => other,
        }
    }

    /// How many statements this connection has prepared through [`PooledClient::query_cached`].
    pub fn n_prepared(&self) -> usize {
        self.prepared.by_name.len()
    }
}

impl Deref for PooledClient {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.client.as_mut().expect("client present until drop")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let prepared = std::mem::take(&mut self.prepared);
            self.pool.give_back(client, prepared, self.broken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn db(password: &str) -> DatabaseConfig {
        DatabaseConfig {
            host: "/tmp/nowhere".into(),
            port: 1,
            dbname: "postgres".into(),
            user: "u".into(),
            password: Secret::new(password),
            statement_timeout: Duration::from_millis(5000),
            lock_timeout: Duration::from_millis(100),
            idle_in_transaction_timeout: Duration::from_millis(10_000),
            connect_timeout: Duration::from_secs(1),
            acquire_timeout: Duration::from_millis(200),
            pool_max_size: 9,
        }
    }

    #[test]
    fn session_options_carry_every_safety_setting() {
        let opts = session_options(&db(""));
        assert_eq!(
            opts,
            "-c statement_timeout=5000 -c lock_timeout=100 -c default_transaction_read_only=on \
             -c idle_in_transaction_session_timeout=10000"
        );
    }

    #[test]
    fn a_password_is_passed_verbatim_not_parsed() {
        let pw = "a b' -c statement_timeout=0 =\"";
        let pg = driver_config(&db(pw));
        assert_eq!(pg.get_password(), Some(pw.as_bytes()));
        assert_eq!(pg.get_options(), Some(session_options(&db("")).as_str()));
    }

    #[test]
    fn the_cap_is_enforced_even_if_config_asks_more() {
        assert_eq!(Pool::new(&db("")).stats().max, 5);
    }

    #[test]
    fn the_back_off_doubles_to_its_cap_and_a_success_resets_it() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| ConnectBackoff::delay(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(ConnectBackoff::delay(u32::MAX), ConnectBackoff::MAX);
        let now = Instant::now();
        let mut b = ConnectBackoff::default();
        assert_eq!(b.wait_left(now), None);
        assert!(b.failed(now), "the first failure starts a streak");
        assert!(!b.failed(now), "the second does not");
        assert_eq!(b.wait_left(now), Some(Duration::from_secs(1)));
        assert_eq!(b.wait_left(now + Duration::from_secs(2)), None);
        assert_eq!(b.succeeded(), 2);
        assert_eq!(b, ConnectBackoff::default());
    }

    #[test]
    fn connect_failures_are_classified_by_sqlstate_constants() {
        let cases = [
            (SqlState::INVALID_PASSWORD, ConnectFailure::Authentication),
            (
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                ConnectFailure::NotAuthorized,
            ),
            (
                SqlState::INVALID_CATALOG_NAME,
                ConnectFailure::NoSuchDatabase,
            ),
            (
                SqlState::TOO_MANY_CONNECTIONS,
                ConnectFailure::TooManyConnections,
            ),
            (SqlState::CANNOT_CONNECT_NOW, ConnectFailure::NotReady),
            (SqlState::QUERY_CANCELED, ConnectFailure::Other),
        ];
        for (code, failure) in cases {
            assert_eq!(classify_state(&code), failure, "{}", code.code());
        }
        assert!(is_server_down_kind(std::io::ErrorKind::ConnectionRefused));
        assert!(is_server_down_kind(std::io::ErrorKind::NotFound));
        assert!(is_server_down_kind(std::io::ErrorKind::TimedOut));
        assert!(!is_server_down_kind(std::io::ErrorKind::PermissionDenied));
        assert!(!is_server_down_kind(std::io::ErrorKind::Other));
    }

    #[test]
    fn a_dead_server_is_reported_as_down_and_frees_the_slot() {
        let pool = Pool::new(&db(""));
        match pool.acquire() {
            Err(PoolError::Connect(e)) => {
                assert_eq!(e.failure, ConnectFailure::ServerDown, "{e}");
                assert!(e.to_string().contains("/tmp/nowhere/.s.PGSQL.1"), "{e}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected to nothing"),
        }
        assert_eq!(pool.stats().in_use, 0);
    }
}
