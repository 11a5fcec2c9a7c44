//! No customer data leaves through the server log: a real PostgreSQL with auto_explain (text and
//! JSON plans, `log_analyze`), `log_min_duration_statement = 0` and `log_statement = all` runs a
//! table of hostile literals (quotes, doubled quotes, dollar quotes, `E''` escapes, numbers,
//! arrays, JSON, IN lists, comments, a unique violation, a check violation, bad integer input, an
//! unterminated quote, a syntax error, bind parameters, PREPARE/EXECUTE, COPY, PL/pgSQL context);
//! the real tailer reads the real log and the real feed builds the payloads; with the default
//! `query_text = normalized` no secret marker appears anywhere in them (while the raw log holds
//! every one), and with `none` no statement text, plan text or DETAIL travels at all.

mod common;

use std::time::{Duration, Instant};

use bitville_pg_agent::logtail::build::{PayloadOptions, QueryText};
use bitville_pg_agent::logtail::tail::{TailConfig, Tailer};
use bitville_pg_agent::logtail::{EntryParser, FeedConfig, LogFeed, LogSource};
use common::logs::{discovered, session};
use common::{TempDir, TestPg};

const UUID: &str = "5f0c6a1e-8d2b-4c3a-9e7f-0123456789ab";

/// Every secret contains `ECRET` (upper case, so no identifier or server word has it) or is one
/// of these numbers.
const SECRET_NUMBERS: &[&str] = &["777777771", "31415926535", "888888882", "99999999913"];

fn server(destination: &str) -> TestPg {
    TestPg::builder()
        .setting(
            "shared_preload_libraries",
            "pg_stat_statements,auto_explain",
        )
        .setting("auto_explain.log_min_duration", "0")
        .setting("auto_explain.log_analyze", "on")
        .setting("auto_explain.log_buffers", "on")
        .setting("auto_explain.log_nested_statements", "on")
        .setting("logging_collector", "on")
        .setting("log_destination", destination)
        .setting("log_directory", "log")
        .setting("log_filename", "postgresql-%Y%m%d-%H%M%S.log")
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .setting("log_min_duration_statement", "0")
        .setting("log_statement", "all")
        .setting("log_rotation_age", "0")
        .setting("log_rotation_size", "0")
        .start()
}

/// The hostile table, run with plans in `plan_format`. Statements meant to fail must fail.
fn hostile_workload(c: &mut postgres::Client, plan_format: &str) {
    c.batch_execute(&format!(
        "SET auto_explain.log_format = {plan_format}; SET enable_seqscan = off"
    ))
    .unwrap();
    let ok = [
        "SELECT * FROM users WHERE email = 'SECRET1.person@example.com'",
        "SELECT * FROM users WHERE id > 777777771",
        "SELECT * FROM users WHERE email = 'O''SECRET3'",
        "SELECT * FROM users WHERE email = $tag$SECRET4 it's$tag$",
        r"SELECT * FROM users WHERE email = E'\x53ECRET5\''",
        "SELECT * FROM users WHERE email = ANY ('{SECRET6a,SECRET6b}'::text[])",
        r#"SELECT * FROM users WHERE doc @> '{"a":"SECRET7"}'::jsonb"#,
        "SELECT * FROM users WHERE email IN ('SECRET8', 'x') OR id IN (888888882, 3)",
        "SELECT /* SECRET9 */ 1 -- SECRET10\n, 2",
        "SELECT a.id FROM users a JOIN users b ON a.id = b.id AND b.email <> 'SECRET19'",
        "SELECT 31415926535.8979 AS n, 'SECRET21' AS s",
        "SELECT * FROM users WHERE id = 99999999913 AND email LIKE 'SECRET22%'",
        "INSERT INTO users(id, email) VALUES (1001, 'SECRET11@example.com') ON CONFLICT DO NOTHING",
    ];
    for q in ok {
        c.batch_execute(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    // Bind parameters (logged as `DETAIL:  parameters: $1 = '...'`).
    c.query(
        "SELECT * FROM users WHERE email = $1",
        &[&"SECRET14@example.com"],
    )
    .unwrap();
    // PREPARE/EXECUTE (logged with `DETAIL:  prepare: PREPARE ...`).
    c.batch_execute(
        "PREPARE p1(text) AS SELECT * FROM users WHERE email = $1 OR email = 'SECRET15a'",
    )
    .unwrap();
    c.batch_execute("EXECUTE p1('SECRET15b')").unwrap();
    c.batch_execute("DEALLOCATE p1").unwrap();
    let fail = [
        // Unique violation: `DETAIL:  Key (email)=(...) already exists.`
        "INSERT INTO users(id, email) VALUES (1002, 'SECRET11@example.com')",
        // Check violation: `DETAIL:  Failing row contains (...)`.
        "INSERT INTO users(id, email, note) VALUES (5, 'x', 'SECRET16 too long')",
        // `invalid input syntax for type integer: "..."`.
        "SELECT 'SECRET12'::int",
        // `unterminated quoted string at or near "'...`.
        "SELECT 'SECRET13 never closed",
        // `syntax error at or near "'...'"`.
        "SELECT 1 'SECRET18'",
        // CONTEXT quoting the statement of a PL/pgSQL block.
        "DO $$BEGIN PERFORM 'SECRET17'::int; END$$",
        // `invalid input syntax for type json` with `Token "..." is invalid.`
        "SELECT '{\"a\":SECRET23}'::json",
    ];
    for q in fail {
        assert!(c.batch_execute(q).is_err(), "{q} should fail");
    }
    // COPY with a bad value: `CONTEXT:  COPY users, line 1, column id: "..."`.
    {
        use std::io::Write;
        let mut w = c.copy_in("COPY users(id) FROM STDIN").unwrap();
        w.write_all(b"SECRET20\n").unwrap();
        assert!(w.finish().is_err());
    }
}

/// Runs the feed until the end marker arrived; returns every payload's JSON text.
fn shipped(feed: &mut LogFeed, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all = String::new();
    loop {
        let fl = feed.flush_now();
        for p in &fl.payloads {
            all.push_str(&p.data.to_json_string());
            all.push('\n');
        }
        feed.commit(&fl).unwrap();
        if all.contains(marker) {
            return all;
        }
        assert!(Instant::now() < deadline, "{marker} never arrived:\n{all}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

trait FlushNow {
    fn flush_now(&mut self) -> bitville_pg_agent::logtail::Flush;
}

impl FlushNow for LogFeed {
    fn flush_now(&mut self) -> bitville_pg_agent::logtail::Flush {
        let now = Instant::now();
        match self.poll(now) {
            Some(f) => f,
            None => self.flush(now),
        }
    }
}

fn feed(src: &LogSource, state: &TempDir, query_text: QueryText) -> LogFeed {
    let mut cfg = TailConfig::new(src.follow.clone(), Some(state.path().to_path_buf()));
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let tailer = Tailer::new(cfg, EntryParser::new(src.format, &src.prefix));
    let fc = FeedConfig {
        interval: Duration::ZERO,
        payload: PayloadOptions {
            query_text,
            ..PayloadOptions::default()
        },
        ..FeedConfig::default()
    };
    LogFeed::new(tailer, fc, Instant::now())
}

fn leaks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.contains("ECRET") || SECRET_NUMBERS.iter().any(|n| line.contains(n)) {
            let at = line
                .find("ECRET")
                .or_else(|| SECRET_NUMBERS.iter().find_map(|n| line.find(n)))
                .unwrap_or(0);
            let from = at.saturating_sub(120);
            let from = (0..=from)
                .rev()
                .find(|&f| line.is_char_boundary(f))
                .unwrap_or(0);
            let to = (at + 60).min(line.len());
            let to = (to..=line.len())
                .find(|&t| line.is_char_boundary(t))
                .unwrap_or(line.len());
            found.push(format!("payload {i}: ...{}...", &line[from..to]));
        }
    }
    found
}

fn raw_log(pg: &TestPg) -> String {
    let mut all = String::new();
    for f in std::fs::read_dir(pg.data_dir().join("log")).unwrap() {
        all.push_str(&String::from_utf8_lossy(
            &std::fs::read(f.unwrap().path()).unwrap(),
        ));
    }
    all
}

fn check(destination: &str) {
    let pg = server(destination);
    pg.admin()
        .batch_execute(
            "CREATE TABLE users(id int PRIMARY KEY, email text UNIQUE, doc jsonb, \
             note text CHECK (length(note) < 5)); \
             INSERT INTO users SELECT g, 'u' || g || '@example.org', '{}' FROM generate_series(1, 200) g; \
             ANALYZE users",
        )
        .unwrap();
    let src = discovered(&pg);
    let state = TempDir::new("logtail-privacy");
    let mut normalized = feed(&src, &state, QueryText::Normalized);
    let none_state = TempDir::new("logtail-privacy-none");
    let mut none = feed(&src, &none_state, QueryText::None);
    let mut c = session(&pg, &format!("bitville-{UUID}"));
    c.batch_execute("SELECT 1 AS start_of_privacy_run").unwrap();
    hostile_workload(&mut c, "text");
    hostile_workload(&mut c, "json");
    // The end marker survives both modes: an error message naming a relation.
    assert!(c.batch_execute("SELECT * FROM end_of_privacy_run").is_err());

    let text = shipped(&mut normalized, "end_of_privacy_run");
    let raw = raw_log(&pg);
    for s in [
        "SECRET1.person",
        "Key (email)=(SECRET11",
        "SECRET12",
        "777777771",
    ] {
        assert!(
            raw.contains(s),
            "the server logged no {s}: the test proves nothing"
        );
    }
    let found = leaks(&text);
    assert!(found.is_empty(), "literals shipped:\n{}", found.join("\n"));
    // The payloads did carry what the secrets were part of, masked.
    for want in [
        "Key (email)=(?) already exists.",
        "Failing row contains (?)",
        r#"invalid input syntax for type integer: \"?\""#,
        r#"at or near \"?\""#,
        // PostgreSQL 18 writes "Parameters:", earlier versions "parameters:".
        "arameters: $1 = ?",
        "prepare: PREPARE p1(text) AS SELECT * FROM users WHERE email = $1 OR email = ?",
        "Index Cond: (email = ?::text)",
        r#""plan_format":"text""#,
        r#""plan_format":"json""#,
        r#""Node Type":"Index Scan""#,
        r#""Index Cond":"(email = ?::text)""#,
        "plan_summary",
        "\"log_correlated\"",
    ] {
        let near = |w: &str| {
            let key = &w[1..w.len().min(9)];
            text.match_indices(key)
                .take(3)
                .map(|(i, _)| text[i.saturating_sub(40)..(i + 120).min(text.len())].to_string())
                .collect::<Vec<_>>()
        };
        assert!(
            text.contains(want),
            "no {want} in the payloads ({} bytes); near it: {:?}",
            text.len(),
            near(want)
        );
    }
    let text = shipped(&mut none, "end_of_privacy_run");
    let found = leaks(&text);
    assert!(
        found.is_empty(),
        "literals shipped with none:\n{}",
        found.join("\n")
    );
    for field in [
        "\"query\":",
        "\"statement\":",
        "\"plan\":",
        "\"detail\":",
        "\"context\":",
    ] {
        assert!(
            !text.contains(field),
            "{field} shipped with query_text = none"
        );
    }
}

#[test]
fn stderr_log_with_text_and_json_plans_ships_no_literal() {
    check("stderr");
}

#[test]
fn csvlog_with_text_and_json_plans_ships_no_literal() {
    check("csvlog");
}

#[test]
fn jsonlog_with_text_and_json_plans_ships_no_literal_on_pg15_and_later() {
    let probe = TestPg::start();
    let major = probe.major_version();
    drop(probe);
    if major < 15 {
        // jsonlog does not exist before PostgreSQL 15.
        assert!(major >= 12);
        return;
    }
    check("jsonlog");
}
