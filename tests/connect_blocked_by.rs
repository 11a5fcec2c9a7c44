//! Connecting blocked by a catalog lock names its holder: the pool looks, over a connection it
//! already holds, for the session holding ACCESS EXCLUSIVE on a catalog read at connection start
//! (pid, role, application_name, request id, query, relation), without waiting on that lock
//! itself; the daemon ships it in `data.agent.pool.connect_blocked_by`, writes it to the status
//! file and logs it; with no connection to look over it says the holder is not visible.

mod common;

use std::time::{Duration, Instant};

use bitville_pg_agent::connect_block::{Holder, Sighting};
use bitville_pg_agent::pool::{ConnectFailure, Pool, PoolError};
use common::e2e::{wait_until, Rig, KEY};
use common::listener::TestListener;
use common::TestPg;

const REQUEST: &str = "0badcafe-1111-2222-3333-444455556666";

/// A superuser session named `bitville-<REQUEST>`, as an application's request would be.
fn holder_session(pg: &TestPg) -> postgres::Client {
    postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .application_name(&format!("bitville-{REQUEST}"))
        .connect(postgres::NoTls)
        .unwrap()
}

/// Locks `catalog` in an open transaction (the statement led by `comment`); returns the
/// session's pid.
fn lock(holder: &mut postgres::Client, comment: &str, catalog: &str) -> i32 {
    let pid = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    // The lock is the session's last statement: pg_stat_activity shows it as the query.
    holder
        .batch_execute(&format!(
            "{comment} BEGIN; LOCK TABLE pg_catalog.{catalog} IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
    pid
}

fn blocked(pool: &Pool) {
    match pool.acquire() {
        Err(PoolError::Connect(e)) => assert_eq!(e.failure, ConnectFailure::Blocked, "{e}"),
        Err(e) => panic!("expected a blocked attempt, got {e}"),
        Ok(_) => panic!("connected through a catalog lock"),
    }
}

/// The lookup must never wait on the lock it looks for (a lock timeout would be an ERROR in the
/// server log naming its query).
fn assert_lookup_left_no_error(pg: &TestPg) {
    let log = std::fs::read_to_string(pg.server_log()).unwrap_or_default();
    assert!(
        !log.contains("pg_lock_status"),
        "the lookup failed on the server:\n{log}"
    );
}

/// A pool whose connection attempts are abandoned after 1 s (a blocked attempt ends quickly).
fn pool_with_short_deadline(pg: &TestPg) -> Pool {
    let mut db = pg.db_config();
    db.connect_timeout = Duration::from_secs(1);
    Pool::new(&db)
}

/// The holder with `pid` in a sighting; fails the test naming what was seen instead.
fn holder_named(seen: &Sighting, pid: i32) -> &Holder {
    seen.holders
        .iter()
        .find(|h| h.pid == pid)
        .unwrap_or_else(|| panic!("holder {pid} not named: {seen:?}"))
}

#[test]
fn an_idle_connection_names_the_holder_of_pg_authid_at_once() {
    let pg = TestPg::start();
    let pool = pool_with_short_deadline(&pg);
    let first = pool.acquire().unwrap();
    let mut second = pool.acquire().unwrap();
    second.mark_broken(); // the next caller needs a new connection
    drop(second);
    drop(first); // idle: the pool looks over it at once

    let mut holder = holder_session(&pg);
    let pid = lock(&mut holder, "", "pg_authid");
    // Open sessions keep working while pg_authid is locked; two callers need a second one.
    let _busy = pool.acquire().unwrap();
    let pool2 = pool.clone();
    let t = Instant::now();
    let waiter = std::thread::spawn(move || blocked(&pool2));
    std::thread::sleep(Duration::from_millis(300));
    drop(_busy); // idle again before the attempt is abandoned
    waiter.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));

    let seen = pool.take_connect_blocked_by().expect("a sighting");
    let h = holder_named(&seen, pid);
    assert_eq!(h.relation, "pg_authid");
    assert_eq!(h.lock_mode, "AccessExclusiveLock");
    assert_eq!(h.request_id.as_deref(), Some(REQUEST));
    assert_eq!(
        h.application_name.as_deref(),
        Some(format!("bitville-{REQUEST}").as_str())
    );
    assert_eq!(h.usename, None, "pg_authid is locked: no role name lookup");
    assert_eq!(h.role_oid, Some(10), "the bootstrap superuser");
    assert!(!h.hidden, "the role has pg_read_all_stats (pg_monitor)");
    let q = h.query.as_deref().unwrap_or_default();
    assert!(q.contains("LOCK TABLE pg_catalog.pg_authid"), "{q}");
    assert_eq!(h.database, None, "a shared catalog");
    assert!(h.xact_age_s.is_some_and(|a| a >= 0.3), "{:?}", h.xact_age_s);
    assert!(
        h.sessions_waiting >= 1,
        "the abandoned attempt still waits: {h:?}"
    );
    assert!(
        pool.take_connect_blocked_by().is_none(),
        "taken once for the summary"
    );
    assert!(
        pool.connect_blocked_by().is_some(),
        "the status file still shows the last one"
    );
    holder.batch_execute("ROLLBACK").unwrap();
    assert_lookup_left_no_error(&pg);
}

#[test]
fn with_every_connection_busy_the_next_one_handed_out_looks() {
    let pg = TestPg::start();
    let pool = pool_with_short_deadline(&pg);
    let busy = pool.acquire().unwrap();

    let mut holder = holder_session(&pg);
    holder
        .batch_execute("SET application_name = 'other'")
        .unwrap();
    let pid = lock(
        &mut holder,
        &format!("/* correlation:{REQUEST} */"),
        "pg_database",
    );
    blocked(&pool); // the only connection is in use: nothing to look over yet
    let early = pool.connect_blocked_by().expect("a sighting");
    assert!(early.holders.is_empty());
    assert!(
        early
            .not_visible
            .as_deref()
            .is_some_and(|n| n.starts_with("holder not visible: no open connection")),
        "{early:?}"
    );
    drop(busy);
    let client = pool.acquire().expect("the open connection is handed out");
    drop(client);
    let seen = pool.take_connect_blocked_by().expect("a sighting");
    let h = holder_named(&seen, pid);
    assert_eq!(seen.not_visible, None);
    assert_eq!(h.relation, "pg_database");
    assert_eq!(
        h.usename.as_deref(),
        Some("postgres"),
        "pg_authid is free: the role name is looked up"
    );
    // The application_name carries no id here: the request id comes from the query's comment.
    assert_eq!(h.application_name.as_deref(), Some("other"));
    assert_eq!(h.request_id.as_deref(), Some(REQUEST));
    assert_eq!(h.state.as_deref(), Some("idle in transaction"));
    holder.batch_execute("ROLLBACK").unwrap();
    assert_lookup_left_no_error(&pg);
}

#[test]
fn the_summary_status_file_and_log_name_who_blocked_connecting() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("blocked-by", &pg, &listener.url());
    rig.set("database", "connect_timeout_s", "1");
    let mut agent = rig.start();
    let mut holder = holder_session(&pg);
    let agent_pids = |c: &mut postgres::Client| -> Vec<i32> {
        c.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bitville-monitor' \
             ORDER BY backend_start",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // The sampler and the interval thread overlap now and then: the agent holds two sessions.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || agent_pids(&mut holder).len()
            >= 2),
        "the agent never held two sessions"
    );
    println!("two agent sessions after {:?}", t.elapsed());
    let pid = lock(&mut holder, "", "pg_authid");
    // Keep one session, end the others: the next overlap needs a new connection, which the
    // lock blocks, while the kept one is there to look over.
    let pids = agent_pids(&mut holder);
    for p in &pids[1..] {
        holder
            .execute("SELECT pg_terminate_backend($1)", &[p])
            .unwrap();
    }
    let named = |v: &serde_json::Value| {
        v["data"]["agent"]["pool"]["connect_blocked_by"]
            .as_array()
            .is_some_and(|a| {
                a.iter().any(|h| {
                    h["pid"] == pid
                        && h["relation"] == "pg_authid"
                        && h["request_id"] == REQUEST
                        && h["lock_mode"] == "AccessExclusiveLock"
                })
            })
    };
    let t = Instant::now();
    let shipped = wait_until(Duration::from_secs(30), || {
        listener.stored().iter().any(&named)
    });
    println!("the holder named in a summary after {:?}", t.elapsed());
    if let Some(v) = listener.stored().iter().find(|v| named(v)) {
        println!("pool block: {}", v["data"]["agent"]["pool"]);
    }
    // The status file is rewritten every few seconds.
    let status_file = rig.state_dir().join("status");
    let status_names = |s: &str| {
        s.lines()
            .any(|l| l.starts_with("connect_blocked_by: ") && l.contains(&format!("pid {pid} ")))
    };
    wait_until(Duration::from_secs(10), || {
        status_names(&std::fs::read_to_string(&status_file).unwrap_or_default())
    });
    let status = std::fs::read_to_string(&status_file).unwrap_or_default();
    holder.batch_execute("ROLLBACK").unwrap();
    let log = agent.log_text();
    agent.stop();
    assert!(
        shipped,
        "no summary named pid {pid}; agent log:\n{log}\nlast pool blocks: {:?}",
        listener
            .stored()
            .iter()
            .filter(|v| v["source"] == "system_metrics")
            .map(|v| v["data"]["agent"]["pool"].clone())
            .next_back()
    );
    assert!(
        log.contains(&format!(
            "was blocked by pid {pid} (app bitville-{REQUEST}, request {REQUEST}) holding \
             AccessExclusiveLock on pg_authid"
        )),
        "{log}"
    );
    assert!(status_names(&status), "status file: {status}");
    // Shipped once: every summary after the one that named the holder is clear of it unless
    // the pool saw it again; no summary lists more than the bound.
    for v in listener.stored() {
        if let Some(a) = v["data"]["agent"]["pool"]["connect_blocked_by"].as_array() {
            assert!(a.len() <= 5, "{a:?}");
        }
    }
    assert!(listener.schema_violations().is_empty());
    assert_lookup_left_no_error(&pg);
}

#[test]
fn without_pg_read_all_stats_or_an_open_connection_it_says_what_it_cannot_see() {
    let pg = TestPg::start();
    pg.admin()
        .batch_execute("CREATE ROLE bitville_nostats LOGIN")
        .unwrap();
    let mut db = pg.db_config();
    db.connect_timeout = Duration::from_secs(1);
    db.user = "bitville_nostats".into();

    // No connection at all: nothing to look over, and by the next one the lock is gone.
    let cold = Pool::new(&db);
    let mut holder = holder_session(&pg);
    let pid = lock(&mut holder, "", "pg_database");
    blocked(&cold);
    let seen = cold.connect_blocked_by().expect("a sighting");
    assert!(seen.holders.is_empty(), "{seen:?}");
    assert_eq!(
        seen.not_visible.as_deref(),
        Some(
            "holder not visible: no open connection to look with (the agent looks at its next \
             connection)"
        )
    );
    holder.batch_execute("ROLLBACK").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cold.acquire().is_err() {
        assert!(Instant::now() < deadline, "never connected after the lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = cold.take_connect_blocked_by().expect("a sighting");
    assert!(seen.holders.is_empty(), "{seen:?}");
    assert!(
        seen.not_visible
            .as_deref()
            .is_some_and(|n| n.ends_with("the lock was gone by the next connection")),
        "{seen:?}"
    );

    // An open connection, but a role that may not see other roles' queries.
    let pool = Pool::new(&db);
    drop(pool.acquire().unwrap());
    let pid2 = lock(&mut holder, "", "pg_database");
    assert_eq!(pid, pid2, "the same session");
    let busy = pool.acquire().unwrap();
    let pool2 = pool.clone();
    let waiter = std::thread::spawn(move || blocked(&pool2));
    std::thread::sleep(Duration::from_millis(300));
    drop(busy);
    waiter.join().unwrap();
    let seen = pool.take_connect_blocked_by().expect("a sighting");
    let h = holder_named(&seen, pid);
    assert!(h.hidden, "{h:?}");
    assert_eq!(h.query, None);
    assert_eq!(h.relation, "pg_database");
    assert_eq!(
        h.request_id.as_deref(),
        Some(REQUEST),
        "application_name is shown to every role"
    );
    holder.batch_execute("ROLLBACK").unwrap();
    assert_lookup_left_no_error(&pg);
}
