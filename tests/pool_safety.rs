//! The pool can never hurt the database: proven against a real PostgreSQL server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitville_pg_agent::config::Secret;
use bitville_pg_agent::pgerror::PgError;
use bitville_pg_agent::pool::{ConnectFailure, Pool, PoolError};
use common::TestPg;

#[test]
fn thirty_two_threads_never_make_more_than_five_agent_sessions() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (pool, stop, queries) = (pool.clone(), stop.clone(), queries.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = pool.acquire().expect("acquire within 30 s");
                    c.query_one("SELECT pg_sleep(0.005)", &[]).unwrap();
                    queries.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut admin = pg.admin();
    let mut most = 0;
    while queries.load(Ordering::Relaxed) < 1500 {
        most = most.max(pg.agent_sessions(&mut admin));
        assert!(pool.stats().size <= 5, "{:?}", pool.stats());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(most <= 5, "saw {most} bitville-monitor sessions");
    assert!(most >= 2, "the sampler never saw the pool busy ({most})");
    let stats = pool.stats();
    assert!(
        stats.waits > 0,
        "32 threads on 5 connections must wait: {stats:?}"
    );
    assert_eq!(
        stats.connections_opened, 5,
        "connections are reused, not reopened: {stats:?}"
    );
}

#[test]
fn a_long_query_is_cancelled_by_statement_timeout() {
    let pg = TestPg::start();
    let mut db = pg.db_config();
    db.statement_timeout = Duration::from_millis(1000);
    let pool = Pool::new(&db);
    let err = pool
        .acquire()
        .unwrap()
        .query_one("SELECT pg_sleep(10)", &[])
        .map_err(PgError::at("test", "sleep"))
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("57014"), "{err}");
    assert!(
        err.is_statement_timeout() && !err.is_connection_error(),
        "{err}"
    );
    // The connection survives a cancelled statement and is reused.
    let n: i32 = pool
        .acquire()
        .unwrap()
        .query_one("SELECT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(pool.stats().connections_opened, 1);
}

#[test]
fn a_query_behind_an_access_exclusive_lock_gives_up_with_lock_timeout() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE busy (id int); GRANT SELECT ON busy TO bitville_monitor")
        .unwrap();
    let mut holder = pg.admin();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let pool = Pool::new(&pg.db_config());
    let err = pool
        .acquire()
        .unwrap()
        .query("SELECT * FROM busy", &[])
        .map_err(PgError::at("test", "busy"))
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("55P03"), "{err}");
    assert!(err.is_lock_timeout(), "{err}");
    tx.rollback().unwrap();
    let rows = pool
        .acquire()
        .unwrap()
        .query("SELECT * FROM busy", &[])
        .unwrap();
    assert!(rows.is_empty());
}

#[test]
fn writes_through_the_pool_fail_because_sessions_are_read_only() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("GRANT CREATE ON SCHEMA public TO bitville_monitor")
        .unwrap();
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let err = c
        .batch_execute("CREATE TABLE t (id int)")
        .map_err(PgError::at("test", "create"))
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("25006"), "{err}");
    assert!(err.is_read_only(), "{err}");
    let settings = c
        .query_one(
            "SELECT current_setting('default_transaction_read_only'), current_setting('statement_timeout'), \
             current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout'), \
             current_setting('application_name')",
            &[],
        )
        .unwrap();
    let got: Vec<String> = (0..5).map(|i| settings.get(i)).collect();
    assert_eq!(got, ["on", "5s", "100ms", "10s", "bitville-monitor"]);
}

#[test]
fn acquire_gives_up_after_the_acquire_timeout_when_all_connections_are_held() {
    let pg = TestPg::start();
    let mut db = pg.db_config();
    db.pool_max_size = 2;
    db.acquire_timeout = Duration::from_millis(300);
    let pool = Pool::new(&db);
    let held: Vec<_> = (0..2).map(|_| pool.acquire().unwrap()).collect();
    match pool.acquire() {
        Err(PoolError::Timeout { max, .. }) => assert_eq!(max, 2),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a third connection was handed out"),
    }
    assert_eq!(pool.stats().acquire_timeouts, 1);
    drop(held);
    assert!(
        pool.acquire().is_ok(),
        "a returned connection is available again"
    );
}

#[test]
fn the_pool_recovers_after_every_connection_is_terminated() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    let held: Vec<_> = (0..5).map(|_| pool.acquire().unwrap()).collect();
    drop(held);
    let mut admin = pg.admin();
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'bitville-monitor'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 5);
    // At most the first caller meets a dead session (a connection error, so it marks the client
    // broken); the pool then probes the other idle ones and replaces them before handing out.
    let mut failed = 0;
    for i in 0..10 {
        let mut c = pool.acquire().unwrap();
        match c.query_one("SELECT 42", &[]) {
            Ok(row) => assert_eq!(row.get::<_, i32>(0), 42),
            Err(e) => {
                let e = PgError::at("test", "select")(e);
                assert!(e.is_connection_error(), "{e}");
                assert_eq!(i, 0, "only the first caller may see a dead session: {e}");
                failed += 1;
                c.mark_broken();
            }
        }
    }
    let stats = pool.stats();
    assert!(failed <= 1);
    assert_eq!(stats.connections_replaced, 5, "{stats:?}");
    assert!(stats.size <= 5);
}

#[test]
fn the_pool_recovers_after_a_server_restart() {
    let mut pg = TestPg::start();
    let pool = Pool::new(&pg.db_config());
    pool.acquire().unwrap().query_one("SELECT 1", &[]).unwrap();
    pg.stop();
    // The idle session either is known closed (the pool drops it and connects anew) or fails its
    // next query with a connection error (the caller marks it broken and acquires again): either
    // way the next connection attempt finds the server down.
    let down = match pool.acquire() {
        Ok(mut c) => {
            let e = c
                .query_one("SELECT 1", &[])
                .map_err(PgError::at("test", "select"))
                .expect_err("the server is stopped");
            assert!(e.is_connection_error(), "{e}");
            c.mark_broken();
            drop(c);
            pool.acquire()
                .err()
                .expect("no connection to a stopped server")
        }
        Err(e) => e,
    };
    match down {
        PoolError::Connect(e) => assert_eq!(e.failure, ConnectFailure::ServerDown, "{e}"),
        other => panic!("expected the server to be reported down, got {other}"),
    }
    pg.restart();
    // After the failed attempt the pool backs off (0.5 s first), then connects again.
    let n: i32 = retry_for(Duration::from_secs(5), || {
        pool.acquire()
            .map_err(|e| e.to_string())?
            .query_one("SELECT 7", &[])
            .map_err(|e| e.to_string())
    })
    .unwrap()
    .get(0);
    assert_eq!(n, 7);
    assert!(pool.stats().size <= 5);
}

#[test]
fn a_password_with_quotes_spaces_and_equals_connects_and_injects_nothing() {
    let pg = TestPg::start();
    let pool = Pool::new(&pg.tcp_db_config());
    let row = pool
        .acquire()
        .unwrap()
        .query_one(
            "SELECT current_user::text, current_setting('statement_timeout')",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bitville_monitor");
    assert_eq!(row.get::<_, String>(1), "5s");
}

#[test]
fn the_start_check_says_what_is_wrong() {
    let pg = TestPg::start();
    let ok = Pool::new(&pg.db_config()).check().unwrap();
    assert!(ok.starts_with("PostgreSQL "), "{ok}");

    let mut wrong_pw = pg.tcp_db_config();
    wrong_pw.password = Secret::new("nope");
    let e = Pool::new(&wrong_pw).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::Authentication, "{e}");
    assert!(e.to_string().contains("wrong password"), "{e}");

    let mut no_db = pg.db_config();
    no_db.dbname = "no_such_db".into();
    let e = Pool::new(&no_db).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::NoSuchDatabase, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    let mut no_role = pg.db_config();
    no_role.user = "nobody_here".into();
    let e = Pool::new(&no_role).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::NotAuthorized, "{e}");

    let mut down = pg.db_config();
    down.port = pg.port().wrapping_add(1).max(1025);
    let e = Pool::new(&down).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::ServerDown, "{e}");
    assert!(!e.to_string().contains(common::MONITOR_PASSWORD));

    // Classified by the I/O error under the driver's error (ConnectionRefused), not its text.
    let mut closed_port = pg.tcp_db_config();
    closed_port.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Pool::new(&closed_port).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::ServerDown, "{e}");

    // The two cases without a matchable source (see pool::classify): a name that does not
    // resolve, and a password the server asks for but the configuration lacks.
    let mut no_dns = pg.tcp_db_config();
    no_dns.host = "nonexistent.invalid".into();
    let e = Pool::new(&no_dns).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::ServerDown, "{e}");
    assert!(e.to_string().contains("nonexistent.invalid"), "{e}");

    let mut no_pw = pg.tcp_db_config();
    no_pw.password = Secret::new("");
    let e = Pool::new(&no_pw).check().unwrap_err();
    assert_eq!(e.failure, ConnectFailure::Authentication, "{e}");
    assert!(e.to_string().contains("password missing"), "{e}");
}

#[test]
fn the_pool_refuses_to_add_sessions_when_another_agent_already_holds_five() {
    let pg = TestPg::start();
    let other_agent: Vec<postgres::Client> = (0..5)
        .map(|_| {
            let mut c = pg.admin();
            c.batch_execute("SET application_name = 'bitville-monitor'")
                .unwrap();
            c
        })
        .collect();
    let pool = Pool::new(&pg.db_config());
    match pool.acquire() {
        Err(PoolError::Connect(e)) => {
            assert_eq!(e.failure, ConnectFailure::TooManyAgentSessions, "{e}");
            assert!(
                e.to_string().contains("6 sessions, at most 5 allowed"),
                "{e}"
            );
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a sixth agent session was opened"),
    }
    // The refused session was closed by the client; its backend exits asynchronously.
    let mut admin = pg.admin();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pg.agent_sessions(&mut admin) > 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        pg.agent_sessions(&mut admin),
        5,
        "the refused session was closed"
    );
    drop(other_agent);
    assert!(
        retry_for(Duration::from_secs(5), || pool.acquire()).is_ok(),
        "once the other sessions are gone the pool connects (after its back-off)"
    );
}

/// Calls `f` until it succeeds or `limit` has passed (the pool backs off after failures).
fn retry_for<T, E>(limit: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match f() {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other,
        }
    }
}
