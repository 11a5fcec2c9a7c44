//! The log tailer against a real PostgreSQL writing real logs: discovery from the server's
//! settings, stderr with three prefixes (one with %a and %q), csvlog and jsonlog (PG15+);
//! statements, errors with DETAIL/HINT/STATEMENT, multi-line queries; a slow statement from a
//! `bitville-<uuid>` session yields a correlated payload with its duration; `pg_rotate_logfile()`
//! while statements are running loses and repeats nothing; a stopped agent resumes exactly.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bitville_pg_agent::json::Json;
use bitville_pg_agent::logtail::build::{build_payloads, Origin, PayloadOptions};
use bitville_pg_agent::logtail::tail::{TailConfig, Tailer};
use bitville_pg_agent::logtail::{Entry, EntryParser, Format, Level, LogSource, ParseStats};
use common::logs::{discovered, session};
use common::{TempDir, TestPg};

const UUID: &str = "5f0c6a1e-8d2b-4c3a-9e7f-0123456789ab";

/// A server logging through the collector into `<data>/log`, every statement with its duration.
fn server(destination: &str, prefix: &str) -> TestPg {
    TestPg::builder()
        .setting("logging_collector", "on")
        .setting("log_destination", destination)
        .setting("log_directory", "log")
        .setting("log_filename", "postgresql-%Y%m%d-%H%M%S.log")
        .setting("log_line_prefix", prefix)
        .setting("log_min_duration_statement", "0")
        .setting("log_rotation_age", "0")
        .setting("log_rotation_size", "0")
        .start()
}

fn tailer(src: &LogSource, state: &Path) -> Tailer {
    let mut cfg = TailConfig::new(src.follow.clone(), Some(state.to_path_buf()));
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    Tailer::new(cfg, EntryParser::new(src.format, &src.prefix))
}

/// Polls until an entry whose message contains `marker` arrived; commits each batch. The
/// deadline only guards against a hang; the assertions decide.
fn collect_until(t: &mut Tailer, marker: &str, got: &mut Vec<Entry>, stats: &mut ParseStats) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = t.poll();
        let done = b.entries.iter().any(|e| e.message.contains(marker));
        got.extend(b.entries);
        let s = t.take_stats();
        stats.n_lines += s.n_lines;
        stats.n_unparsed += s.n_unparsed;
        stats.samples.extend(s.samples);
        if let Some(p) = &b.position {
            t.commit(p).unwrap();
        }
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{marker} never arrived; got {} entries",
            got.len()
        );
        if !b.more {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the statements every format test checks, returns the correlated application name.
fn workload(pg: &TestPg, tag: &str) -> String {
    let app = format!("bitville-{UUID}");
    let mut c = session(pg, &app);
    c.batch_execute(&format!("SELECT 'plain_{tag}'")).unwrap();
    c.batch_execute(&format!("SELECT 'multi_{tag}',\n       2 AS line_two"))
        .unwrap();
    assert!(c
        .batch_execute(&format!("SELECT * FROM no_such_table_{tag}"))
        .is_err());
    assert!(c
        .batch_execute(&format!(
            "DO $$BEGIN RAISE EXCEPTION 'boom_{tag}' USING DETAIL = 'some detail', HINT = 'a hint'; END$$"
        ))
        .is_err());
    c.batch_execute(&format!("SELECT pg_sleep(0.3), 'slow_{tag}'"))
        .unwrap();
    c.batch_execute(&format!("SELECT 'end_{tag}'")).unwrap();
    app
}

fn find<'a>(entries: &'a [Entry], needle: &str, level: Level) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.level == Some(level) && (e.message.contains(needle)))
        .unwrap_or_else(|| panic!("no {level:?} entry containing {needle:?}"))
}

/// The whole check for one format/prefix: every entry parsed, fields right, correlated payload.
fn check_format(destination: &str, prefix: &str, has_app: bool, has_sqlstate: bool) {
    let pg = server(destination, prefix);
    let src = discovered(&pg);
    let want = Format::from_destination(destination).unwrap();
    assert_eq!(src.format, want, "{}", src.description);
    let state = TempDir::new("logtail-state");
    let mut t = tailer(&src, state.path());
    let tag = destination.replace(',', "_");
    let app = workload(&pg, &tag);
    let mut got = Vec::new();
    let mut stats = ParseStats::default();
    collect_until(&mut t, &format!("end_{tag}"), &mut got, &mut stats);

    assert_eq!(stats.n_unparsed, 0, "unparsed lines: {:?}", stats.samples);
    assert!(got.len() >= 6, "{} entries", got.len());
    for e in &got {
        assert!(e.level.is_some_and(Level::is_primary), "{e:?}");
        assert!(e.timestamp.is_some(), "no timestamp: {e:?}");
        assert!(e.pid.is_some(), "no pid: {e:?}");
        assert!(!e.truncated);
    }
    let plain = find(&got, &format!("plain_{tag}"), Level::Log);
    assert_eq!(
        plain.query(),
        Some(format!("SELECT 'plain_{tag}'").as_str())
    );
    assert!(plain.duration_ms.is_some());
    if has_app {
        assert_eq!(plain.application_name.as_deref(), Some(app.as_str()));
        assert_eq!(
            plain.correlation_id.as_deref(),
            app.strip_prefix("bitville-")
        );
    } else {
        assert_eq!(
            plain.correlation_id, None,
            "no %a: nothing to correlate with"
        );
    }
    let multi = find(&got, &format!("multi_{tag}"), Level::Log);
    assert_eq!(
        multi.query(),
        Some(format!("SELECT 'multi_{tag}',\n       2 AS line_two").as_str())
    );
    let err = find(&got, &format!("no_such_table_{tag}"), Level::Error);
    assert_eq!(
        err.statement.as_deref(),
        Some(format!("SELECT * FROM no_such_table_{tag}").as_str())
    );
    if has_sqlstate {
        assert_eq!(err.sqlstate.as_deref(), Some("42P01"));
    }
    let boom = find(&got, &format!("boom_{tag}"), Level::Error);
    assert_eq!(boom.detail.as_deref(), Some("some detail"));
    assert_eq!(boom.hint.as_deref(), Some("a hint"));
    assert!(boom
        .statement
        .as_deref()
        .is_some_and(|s| s.starts_with("DO $$BEGIN")));
    if has_sqlstate {
        assert_eq!(boom.sqlstate.as_deref(), Some("P0001"));
    }
    let slow = find(&got, &format!("slow_{tag}"), Level::Log);
    assert!(
        slow.duration_ms.is_some_and(|d| d >= 300.0),
        "{:?}",
        slow.duration_ms
    );

    let origin = Origin {
        file: None,
        format: src.format,
    };
    let payloads = build_payloads(&got, &stats, &origin, &PayloadOptions::default(), 0.0);
    let summary = &payloads[0];
    assert_eq!(summary.correlation_id, None);
    let counts = summary
        .data
        .get("severity_counts")
        .unwrap()
        .to_json_string();
    assert!(counts.contains("\"ERROR\":2"), "{counts}");
    let correlated: Vec<_> = payloads
        .iter()
        .filter(|p| p.correlation_id.is_some())
        .collect();
    if has_app {
        let slow_payload = correlated
            .iter()
            .find(|p| matches!(p.data.get("query"), Some(Json::Str(q)) if q.contains("pg_sleep")))
            .expect("a correlated payload for the slow statement");
        assert_eq!(
            slow_payload.correlation_id.as_deref(),
            app.strip_prefix("bitville-")
        );
        match slow_payload.data.get("duration_ms") {
            Some(Json::Float(d)) => assert!(*d >= 300.0, "{d}"),
            other => panic!("duration_ms {other:?}"),
        }
        // Normalized by default: the literal is gone.
        assert_eq!(
            slow_payload.data.get("query"),
            Some(&Json::from("SELECT pg_sleep(?), ?"))
        );
        assert!(slow_payload.data.get("agent").is_none());
    } else {
        assert!(correlated.is_empty());
    }
}

#[test]
fn stderr_with_application_name_and_q() {
    check_format("stderr", "%m [%p] %q%u@%d %a ", true, false);
}

#[test]
fn stderr_pgbadger_style_prefix_with_sqlstate() {
    check_format(
        "stderr",
        "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h %e ",
        true,
        true,
    );
}

#[test]
fn stderr_prefix_without_application_name() {
    check_format("stderr", "%n|%c|%l|%i|%v|%x|%r|%p: ", false, false);
}

#[test]
fn csvlog() {
    check_format("csvlog", "%m [%p] ", true, true);
}

#[test]
fn jsonlog_on_pg15_and_later() {
    let probe = TestPg::start();
    let major = probe.major_version();
    drop(probe);
    if major < 15 {
        // jsonlog does not exist before PostgreSQL 15: nothing to test on this server.
        assert!(major >= 12);
        return;
    }
    check_format("jsonlog", "%m [%p] ", true, true);
}

/// `pg_rotate_logfile()` while a session writes numbered statements: each arrives exactly once.
fn rotation(destination: &str) {
    let pg = server(destination, "%m [%p] %q%a ");
    let src = discovered(&pg);
    let state = TempDir::new("logtail-rotate");
    let mut t = tailer(&src, state.path());
    let (host, port) = (pg.socket_dir().to_str().unwrap().to_string(), pg.port());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // Writes numbered statements until told to stop; returns how many.
    let writer = std::thread::spawn(move || {
        let mut c = postgres::Config::new()
            .host(&host)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name("writer")
            .connect(postgres::NoTls)
            .unwrap();
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            c.batch_execute(&format!("SELECT 'rot_{i:06}'")).unwrap();
            i += 1;
        }
        c.batch_execute("SELECT 'rot_done'").unwrap();
        i
    });
    let mut admin = pg.admin();
    let mut got = Vec::new();
    let mut stats = ParseStats::default();
    let mut files = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rotations = 0;
    let mut last_rotation = Instant::now();
    loop {
        let b = t.poll();
        let done = b.entries.iter().any(|e| e.message.contains("rot_done"));
        got.extend(b.entries);
        if let Some(p) = &b.position {
            files.insert(p.path.clone());
            t.commit(p).unwrap();
        }
        let s = t.take_stats();
        stats.n_unparsed += s.n_unparsed;
        if done {
            break;
        }
        // log_filename has one-second resolution: rotate at most once a second so each
        // rotation makes a new file; stop the writer after the third.
        if rotations < 3 && last_rotation.elapsed() > Duration::from_millis(1100) {
            admin.batch_execute("SELECT pg_rotate_logfile()").unwrap();
            rotations += 1;
            last_rotation = Instant::now();
        } else if rotations == 3 && last_rotation.elapsed() > Duration::from_millis(300) {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        assert!(Instant::now() < deadline, "rot_done never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let total = writer.join().unwrap();
    assert!(total > 0);
    assert_eq!(stats.n_unparsed, 0);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &got {
        if let Some(q) = e.query() {
            if let Some(i) = q.find("'rot_") {
                *seen.entry(q[i..].to_string()).or_default() += 1;
            }
        }
    }
    for i in 0..total {
        let key = format!("'rot_{i:06}'");
        assert_eq!(
            seen.get(&key),
            Some(&1),
            "{key} seen {:?} times",
            seen.get(&key)
        );
    }
    // The numbered statements and 'rot_done', nothing else.
    assert_eq!(seen.len(), total + 1);
    assert_eq!(seen.get("'rot_done'"), Some(&1));
    assert!(
        files.len() >= 4,
        "the tailer followed three rotations: {files:?}"
    );
}

#[test]
fn pg_rotate_logfile_while_writing_stderr() {
    rotation("stderr");
}

#[test]
fn pg_rotate_logfile_while_writing_csvlog() {
    rotation("csvlog");
}

#[test]
fn stopped_agent_resumes_with_exactly_the_new_lines() {
    let pg = server("stderr", "%m [%p] %q%a ");
    let src = discovered(&pg);
    let state = TempDir::new("logtail-resume");
    let mut c = session(&pg, "resume");
    c.batch_execute("SELECT 'before_1'").unwrap();
    c.batch_execute("SELECT 'before_end'").unwrap();
    let mut t = tailer(&src, state.path());
    let (mut first, mut stats) = (Vec::new(), ParseStats::default());
    collect_until(&mut t, "before_end", &mut first, &mut stats);
    drop(t);
    // While the agent is stopped: more statements and a rotation.
    c.batch_execute("SELECT 'after_1'").unwrap();
    pg.admin()
        .batch_execute("SELECT pg_rotate_logfile()")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    pg.admin()
        .batch_execute("SELECT pg_rotate_logfile()")
        .unwrap();
    c.batch_execute("SELECT 'after_2'").unwrap();
    c.batch_execute("SELECT 'after_end'").unwrap();
    let mut t = tailer(&src, state.path());
    let mut second = Vec::new();
    collect_until(&mut t, "after_end", &mut second, &mut stats);
    let markers = |es: &[Entry]| -> Vec<String> {
        es.iter()
            .filter_map(|e| e.query())
            .filter(|q| q.starts_with("SELECT '"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        markers(&first),
        vec!["SELECT 'before_1'", "SELECT 'before_end'"]
    );
    assert_eq!(
        markers(&second),
        vec!["SELECT 'after_1'", "SELECT 'after_2'", "SELECT 'after_end'"]
    );
    assert_eq!(stats.n_unparsed, 0);
}
