//! The one PostgreSQL error layer against a real server: each decision of `PgError`
//! (`is_statement_timeout`, `is_lock_timeout`, `is_read_only`, `is_privilege`,
//! `is_version_mismatch`, `is_connection_error`) is made on an error the server really sent, the
//! payload entry has the one documented shape, and a real timeout backs a collector off.

mod common;

use bitville_pg_agent::collect::{Backoff, CollectError, PgError};
use bitville_pg_agent::pgerror;
use bitville_pg_agent::pool::Pool;
use common::TestPg;

/// Runs `sql` through the agent's own session (read-only, short lock_timeout) as `query`.
fn fail(client: &mut postgres::Client, query: &'static str, sql: &str) -> PgError {
    let err = client
        .batch_execute(sql)
        .expect_err("the statement should fail");
    PgError::at("test", query)(err)
}

#[test]
fn every_decision_is_made_on_an_error_the_server_really_sent() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE secret (id int); REVOKE ALL ON secret FROM PUBLIC")
        .unwrap();
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().expect("a pooled connection");

    let e = fail(
        &mut c,
        "sleep",
        "SET statement_timeout = 1; SELECT pg_sleep(1)",
    );
    assert!(e.is_statement_timeout() && e.is_timeout(), "{e}");
    assert!(!e.is_lock_timeout() && !e.is_connection_error(), "{e}");
    assert_eq!(e.sqlstate(), Some("57014"));
    let j = e.to_json().to_json_string();
    assert!(
        j.starts_with(r#"{"collector":"test","query":"sleep","error":""#)
            && j.ends_with(r#","sqlstate":"57014","timed_out":true}"#),
        "{j}"
    );
    assert!(
        e.to_string().starts_with("test collector: query sleep: "),
        "{e}"
    );
    c.batch_execute("RESET statement_timeout").unwrap();

    let mut holder = pg.admin();
    holder
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_stat_archiver IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let e = fail(&mut c, "archiver", "SELECT * FROM pg_stat_archiver");
    assert!(e.is_lock_timeout() && e.is_timeout(), "{e}");
    assert!(!e.is_statement_timeout(), "{e}");
    holder.batch_execute("ROLLBACK").unwrap();

    let e = fail(&mut c, "write", "CREATE TEMP TABLE t (id int)");
    assert!(e.is_read_only() && !e.is_timeout(), "{e}");

    let e = fail(&mut c, "secret", "SELECT * FROM secret");
    assert!(e.is_privilege() && !e.is_version_mismatch(), "{e}");
    assert!(e
        .to_json()
        .to_json_string()
        .ends_with(r#""timed_out":false}"#));

    let e = fail(&mut c, "view", "SELECT * FROM pg_stat_no_such_view");
    assert!(e.is_version_mismatch() && !e.is_privilege(), "{e}");

    let e = fail(
        &mut c,
        "not_loaded",
        "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'object_not_in_prerequisite_state'; END $$",
    );
    assert!(
        e.is_not_in_prerequisite_state() && !e.is_connection_error(),
        "{e}"
    );

    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let e = fail(&mut c, "after_kill", "SELECT 1");
    assert!(e.is_connection_error() && !e.is_timeout(), "{e}");
    c.mark_broken();
}

#[test]
fn a_real_timeout_backs_the_collector_off_and_a_success_resets_it() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().expect("a pooled connection");
    c.batch_execute("SET statement_timeout = 1").unwrap();
    let mut b = Backoff::default();

    assert!(b.should_run());
    let timed_out: Result<(), CollectError> = c
        .batch_execute("SELECT pg_sleep(1)")
        .map_err(CollectError::query("test", "sleep"));
    assert!(timed_out.as_ref().unwrap_err().is_timeout());
    b.record(&timed_out);
    assert_eq!(b.consecutive_timeouts(), 1);
    assert!(!b.should_run(), "the cycle after a timeout is skipped");
    assert!(b.should_run());

    // A real error that is not a timeout neither backs off nor resets.
    let refused: Result<(), CollectError> = c
        .batch_execute("CREATE TEMP TABLE t (id int)")
        .map_err(CollectError::query("test", "write"));
    assert!(!refused.as_ref().unwrap_err().is_timeout());
    b.record(&refused);
    assert_eq!(b.consecutive_timeouts(), 1);
    assert!(b.should_run());

    b.record(&Ok::<(), CollectError>(()));
    assert_eq!(b.consecutive_timeouts(), 0);
    assert!(b.should_run());
}

#[test]
fn a_connect_failure_without_a_server_is_classified_by_its_io_error_kind() {
    let dir = common::TempDir::new("pg-errors-nosocket");
    let err = postgres::Config::new()
        .host_path(dir.path())
        .port(5432)
        .user("nobody")
        .dbname("nothing")
        .connect(postgres::NoTls)
        .err()
        .expect("no server listens there");
    assert!(err.code().is_none(), "{err}");
    assert!(pgerror::is_connection_error(&err), "{err}");
    assert_eq!(
        pgerror::io_error_kind(&err),
        Some(std::io::ErrorKind::NotFound),
        "{err}"
    );

    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("nobody")
        .connect(postgres::NoTls)
        .err()
        .expect("nothing listens on that port");
    assert_eq!(
        pgerror::io_error_kind(&err),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );

    // A port whose accept queue is full (backlog 0, one connection waiting): the SYN goes
    // unanswered and the driver's socket connect times out.
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: `full` owns a valid, bound socket for the whole call.
    assert_eq!(
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&full), 0) },
        0
    );
    let addr = full.local_addr().unwrap();
    let _queued = std::net::TcpStream::connect(addr).unwrap();
    let err = postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user("nobody")
        .connect_timeout(std::time::Duration::from_millis(300))
        .connect(postgres::NoTls)
        .err()
        .expect("the accept queue is full");
    assert_eq!(
        pgerror::io_error_kind(&err),
        Some(std::io::ErrorKind::TimedOut),
        "{err}"
    );

    // A name that does not resolve carries an io::Error too, but of std's unstable kind
    // `Uncategorized`: no kind to match (pool::classify reads its text, the one exception).
    let err = postgres::Config::new()
        .host("nonexistent.invalid")
        .port(5432)
        .user("nobody")
        .connect(postgres::NoTls)
        .err()
        .expect("the .invalid domain never resolves");
    let kind = pgerror::io_error_kind(&err).expect("an io::Error under the failed lookup");
    assert!(
        !matches!(
            kind,
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::Other
        ),
        "{kind:?}: {err}"
    );
}
