//! A Bitville listener for tests: a real HTTP/1.1 server on 127.0.0.1 in the test process that
//! speaks the listener's contract (docs/delivery.md, "The listener's contract") and can be told
//! how to answer.
//!
//! Checks in the listener's order: optional rate limit (429 with `Retry-After`, every request
//! counts), path (404; `/ingest/postgres` and, like the real listener, `/ingest/php` with its own
//! schema), `Authorization: Bearer <key>` (401), JSON and schema (400 with `details`). Bodies that pass are then answered by, in order: the next scripted answer, the
//! rule, the default (200 unless changed). Every request is recorded with its arrival time and
//! what it was answered; every schema failure is recorded so a test can assert there was none.
//!
//! Include it with `#[path = "common/listener.rs"] mod listener;`.

#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The path the real listener serves.
pub const PATH: &str = "/ingest/postgres";

/// The PHP agents' ingest path, which the real listener serves beside [`PATH`] with a schema of
/// its own (see [`validate_php`]): the wrong endpoint an agent can be configured for.
pub const PHP_PATH: &str = "/ingest/php";

/// How the listener answers a request that passed the contract checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 `{"success":true,"row_id":N,"source":...}`; the body counts as stored.
    Ok,
    /// This status with a JSON error body.
    Status(u16),
    /// 429 with this `Retry-After` value (none: the header is missing).
    TooMany(Option<String>),
    /// Read the request, never answer, keep the connection open until the listener is dropped
    /// or [`TestListener::release_hung`] is called.
    Hang,
    /// Read the request and close the connection without an answer.
    Drop,
}

/// One request as the listener received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When its body had been read completely.
    pub at: Instant,
    /// Method and path, e.g. `POST /ingest/postgres`.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The raw body.
    pub body: String,
    /// The body parsed, when it is JSON.
    pub json: Option<Value>,
    /// The status answered; 0 for a hang or a drop.
    pub status: u16,
}

impl Request {
    /// `data.agent.seq` of the body, if present.
    pub fn seq(&self) -> Option<u64> {
        self.json.as_ref().and_then(seq_of)
    }
}

/// The spool lane of a body: `data.agent.lane`, `main` when absent.
pub fn lane_of(v: &Value) -> &str {
    v.get("data")
        .and_then(|d| d.get("agent"))
        .and_then(|a| a.get("lane"))
        .and_then(Value::as_str)
        .unwrap_or("main")
}

/// `data.agent.seq` of a body.
pub fn seq_of(v: &Value) -> Option<u64> {
    v.get("data")?.get("agent")?.get("seq")?.as_u64()
}

/// The listener's body schema. `Err` names the field like the listener's `details` does.
pub fn validate(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("body is not an object")?;
    match obj.get("project") {
        Some(Value::String(p)) if (1..=50).contains(&p.chars().count()) => {}
        Some(_) => return Err("project must be a string of 1 to 50 characters".into()),
        None => return Err("project is required".into()),
    }
    if !obj.get("timestamp").is_some_and(Value::is_number) {
        return Err("timestamp must be a number".into());
    }
    match obj.get("source").and_then(Value::as_str) {
        Some("pg_stat_activity" | "pg_stat_statements" | "pg_log" | "system_metrics") => {}
        _ => return Err("source must be one of the four".into()),
    }
    if !obj.get("data").is_some_and(Value::is_object) {
        return Err("data must be an object".into());
    }
    if let Some(c) = obj.get("correlation_id") {
        if !c.is_string() {
            return Err("correlation_id must be a string".into());
        }
    }
    Ok(())
}

/// The PHP endpoint's body schema (a stand-in for the real one: it requires fields the postgres
/// schema does not have, checked before anything else, and knows no `source`).
pub fn validate_php(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("body is not an object")?;
    if !obj.get("request_id").is_some_and(Value::is_string) {
        return Err("request_id is required".into());
    }
    if !obj.get("duration_ms").is_some_and(Value::is_number) {
        return Err("duration_ms must be a number".into());
    }
    match obj.get("project") {
        Some(Value::String(p)) if (1..=50).contains(&p.chars().count()) => Ok(()),
        _ => Err("project must be a string of 1 to 50 characters".into()),
    }
}

type Rule = Box<dyn Fn(&Value) -> Option<Answer> + Send>;

struct State {
    api_key: String,
    default: Answer,
    script: VecDeque<Answer>,
    rule: Option<Rule>,
    rate_limit: Option<(usize, Duration, String)>,
    window: Option<(Instant, usize)>,
    requests: Vec<Request>,
    stored: Vec<Value>,
    violations: Vec<String>,
    release_hung: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running test listener; stops when dropped.
pub struct TestListener {
    port: u16,
    shared: Arc<Shared>,
}

impl TestListener {
    /// Starts a listener that accepts `api_key`, answering 200 by default.
    pub fn start(api_key: &str) -> TestListener {
        TestListener::start_on(api_key, 0)
    }

    /// Like [`TestListener::start`] on a given port (0: any free one), e.g. to bring a listener
    /// back on the port an agent is already configured for.
    pub fn start_on(api_key: &str, port: u16) -> TestListener {
        let socket = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let port = socket.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                api_key: api_key.to_string(),
                default: Answer::Ok,
                script: VecDeque::new(),
                rule: None,
                rate_limit: None,
                window: None,
                requests: Vec::new(),
                stored: Vec::new(),
                violations: Vec::new(),
                release_hung: false,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for conn in socket.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&accept_shared);
                thread::spawn(move || serve(conn, &shared));
            }
        });
        TestListener { port, shared }
    }

    /// The ingest URL, `http://127.0.0.1:<port>/ingest/postgres`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    /// The PHP ingest URL, `http://127.0.0.1:<port>/ingest/php` (the wrong one for this agent).
    pub fn php_url(&self) -> String {
        format!("http://127.0.0.1:{}{PHP_PATH}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The answer used when no script or rule applies.
    pub fn set_default(&self, answer: Answer) {
        self.shared.lock().default = answer;
    }

    /// One-off answers, used in order before the rule and the default.
    pub fn push_answers(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.lock().script.extend(answers);
    }

    /// A per-body answer (e.g. "400 for seq 3"), used after the script and before the default.
    pub fn set_rule(&self, rule: impl Fn(&Value) -> Option<Answer> + Send + 'static) {
        self.shared.lock().rule = Some(Box::new(rule));
    }

    /// Emulates the listener's fixed-window rate limit: more than `n` requests in a `window`
    /// get 429 with `Retry-After: retry_after`.
    pub fn set_rate_limit(&self, n: usize, window: Duration, retry_after: &str) {
        self.shared.lock().rate_limit = Some((n, window, retry_after.to_string()));
    }

    /// Lets hung connections close.
    pub fn release_hung(&self) {
        self.shared.lock().release_hung = true;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The bodies answered 200, in arrival order.
    pub fn stored(&self) -> Vec<Value> {
        self.shared.lock().stored.clone()
    }

    /// `data.agent.seq` of every stored main-lane body (no `data.agent.lane`), in arrival
    /// order: the sequence the gap rule is checked on (the spike lane has its own).
    pub fn stored_seqs(&self) -> Vec<u64> {
        self.stored_seqs_in("main")
    }

    /// `data.agent.seq` of every stored body of spool lane `lane` (`main` or `spike`), in
    /// arrival order.
    pub fn stored_seqs_in(&self, lane: &str) -> Vec<u64> {
        self.shared
            .lock()
            .stored
            .iter()
            .filter(|v| lane_of(v) == lane)
            .filter_map(seq_of)
            .collect()
    }

    /// Every schema failure seen (bodies that were answered 400 by the contract checks).
    pub fn schema_violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Waits until `pred` holds for the requests so far, or `limit` passed; returns whether it
    /// holds. `limit` is a liveness bound for a broken agent, not a performance claim.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&[Request]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        loop {
            if pred(&state.requests) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until `n` bodies were stored (see [`TestListener::wait_for`]).
    pub fn wait_for_stored(&self, n: usize, limit: Duration) -> bool {
        self.wait_for(limit, |reqs| {
            reqs.iter().filter(|r| r.status == 200).count() >= n
        })
    }
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.lock().release_hung = true;
        // Unblock the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Parsed {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

/// Reads one request; `None` at a clean end of the connection or on garbage.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Parsed> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut content_length = 0usize;
    let mut authorization = None;
    let mut expect_continue = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().ok()?,
            "authorization" => authorization = Some(value.to_string()),
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if expect_continue {
        let _ = reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(Parsed {
        method,
        path,
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn write_answer(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    retry_after: Option<&str>,
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(r) = retry_after {
        head.push_str(&format!("Retry-After: {r}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).is_ok() && stream.write_all(body.as_bytes()).is_ok()
}

fn serve(conn: TcpStream, shared: &Shared) {
    // Head and body are written separately: without this, Nagle's algorithm holds the body
    // until the client's delayed ACK (40 ms), a delay no real listener adds.
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let at = Instant::now();
        let json: Option<Value> = serde_json::from_str(&req.body).ok();
        let mut state = shared.lock();

        // The contract checks, in the listener's order.
        let mut decided: Option<(Answer, String)> = None;
        if let Some((n, window, retry_after)) = state.rate_limit.clone() {
            let (start, count) = match state.window {
                Some((start, count)) if at.duration_since(start) < window => (start, count + 1),
                _ => (at, 1),
            };
            state.window = Some((start, count));
            if count > n {
                decided = Some((Answer::TooMany(Some(retry_after)), String::new()));
            }
        }
        if decided.is_none() && (req.method != "POST" || (req.path != PATH && req.path != PHP_PATH))
        {
            decided = Some((Answer::Status(404), "{\"error\":\"Not Found\"}".into()));
        }
        if decided.is_none() && req.authorization != Some(format!("Bearer {}", state.api_key)) {
            decided = Some((
                Answer::Status(401),
                "{\"error\":\"Unauthorized\",\"message\":\"invalid api key\"}".into(),
            ));
        }
        if decided.is_none() {
            let verdict = match &json {
                None => Err("body is not JSON".to_string()),
                Some(v) if req.path == PHP_PATH => validate_php(v),
                Some(v) => validate(v),
            };
            if let Err(details) = verdict {
                state.violations.push(format!("{details}: {}", req.body));
                decided = Some((
                    Answer::Status(400),
                    format!("{{\"error\":\"Bad Request\",\"details\":{details:?}}}"),
                ));
            }
        }
        let (answer, error_body) = match decided {
            Some(d) => d,
            None => {
                let scripted = state.script.pop_front();
                let ruled = scripted.or_else(|| {
                    json.as_ref()
                        .and_then(|v| state.rule.as_ref().and_then(|r| r(v)))
                });
                let answer = ruled.unwrap_or_else(|| state.default.clone());
                let body = match &answer {
                    Answer::Status(s) => {
                        format!("{{\"error\":\"scripted\",\"details\":\"status {s}\"}}")
                    }
                    _ => String::new(),
                };
                (answer, body)
            }
        };

        let status = match &answer {
            Answer::Ok => 200,
            Answer::Status(s) => *s,
            Answer::TooMany(_) => 429,
            Answer::Hang | Answer::Drop => 0,
        };
        let row_id = state.stored.len() + 1;
        if status == 200 {
            if let Some(v) = &json {
                state.stored.push(v.clone());
            }
        }
        let source = json
            .as_ref()
            .and_then(|v| v.get("source"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        state.requests.push(Request {
            at,
            method: req.method,
            path: req.path,
            authorization: req.authorization,
            body: req.body,
            json,
            status,
        });
        drop(state);
        shared.changed.notify_all();

        let ok = match answer {
            Answer::Ok => write_answer(
                &mut writer,
                200,
                &format!("{{\"success\":true,\"row_id\":{row_id},\"source\":\"{source}\"}}"),
                None,
            ),
            Answer::Status(s) => write_answer(&mut writer, s, &error_body, None),
            Answer::TooMany(retry_after) => write_answer(
                &mut writer,
                429,
                "{\"error\":\"Too Many Requests\"}",
                retry_after.as_deref(),
            ),
            Answer::Hang => {
                while !shared.stop.load(Ordering::SeqCst) && !shared.lock().release_hung {
                    thread::sleep(Duration::from_millis(20));
                }
                false
            }
            Answer::Drop => false,
        };
        if !ok {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}
