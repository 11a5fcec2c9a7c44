//! Lock waits name the culprit, against a real PostgreSQL: a chain A → B → C of table locks,
//! each session its own request (`/* correlation:<uuid> */`). C's record names B's request (its
//! blocker, with query, state and transaction age), B's names A's; A's record says it held up 2
//! sessions, with their total and longest wait and their requests; relations are shipped as
//! `schema.table`. The summary's `peak` is the snapshot with the largest total wait.

mod common;

use std::time::Duration;

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::Payload;
use bitville_pg_agent::pool::Pool;
use common::TestPg;

const A: &str = "aaaaaaaa-1111-4111-8111-000000000001";
const B: &str = "bbbbbbbb-2222-4222-8222-000000000002";
const C: &str = "cccccccc-3333-4333-8333-000000000003";

fn session(pg: &TestPg) -> postgres::Client {
    postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .application_name("php-fpm")
        .connect(postgres::NoTls)
        .unwrap()
}

fn pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Waits (bounded by the server: the loop ends when it says so) until every pid waits on a lock.
fn wait_for_lock_waits(admin: &mut postgres::Client, pids: &[i32]) {
    let pids = pids.to_vec();
    for _ in 0..3000 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) \
                 AND wait_event_type = 'Lock'",
                &[&pids],
            )
            .unwrap()
            .get(0);
        if n == pids.len() as i64 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{pids:?} never all waited");
}

fn record<'a>(out: &'a [Payload], id: &str) -> &'a Json {
    &out.iter()
        .find(|p| p.correlation_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no record for {id}: {out:?}"))
        .data
}

fn get<'a>(v: &'a Json, path: &[&str]) -> &'a Json {
    path.iter().fold(v, |v, k| {
        v.get(k)
            .unwrap_or_else(|| panic!("no {k} in {}", v.to_json_string()))
    })
}

fn num(v: &Json) -> f64 {
    match v {
        Json::Float(f) => *f,
        Json::Int(i) => *i as f64,
        Json::UInt(u) => *u as f64,
        other => panic!("not a number: {other:?}"),
    }
}

fn ids_of(blocked_by: &Json) -> Vec<String> {
    match blocked_by {
        Json::Array(a) => a
            .iter()
            .filter_map(|b| match b.get("correlation_id") {
                Some(Json::Str(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lock_chain_names_each_blocker_and_what_the_root_held_up() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin
        .batch_execute("CREATE TABLE chain (id int PRIMARY KEY, v int)")
        .unwrap();
    let mut a = session(&pg);
    let a_pid = pid(&mut a);
    a.batch_execute(&format!(
        "BEGIN; /* correlation:{A} */ LOCK TABLE chain IN ACCESS EXCLUSIVE MODE"
    ))
    .unwrap();
    // B queues behind A; C conflicts with both A's lock and B's queued request, so it is drawn
    // under B: A → B → C.
    let mut b = session(&pg);
    let b_pid = pid(&mut b);
    let b_thread = std::thread::spawn(move || {
        b.batch_execute(&format!(
            "BEGIN; /* correlation:{B} */ LOCK TABLE chain IN SHARE MODE; COMMIT"
        ))
        .unwrap();
    });
    wait_for_lock_waits(&mut admin, &[b_pid]);
    let mut c = session(&pg);
    let c_pid = pid(&mut c);
    let c_thread = std::thread::spawn(move || {
        c.batch_execute(&format!(
            "/* correlation:{C} */ INSERT INTO chain VALUES (1, 1)"
        ))
        .unwrap();
    });
    wait_for_lock_waits(&mut admin, &[b_pid, c_pid]);

    let pool = Pool::new(&pg.db_config());
    // The same sessions keep waiting: the tree is queried again only after the refresh.
    let mut sampler = ActivitySampler::new(ActivityConfig {
        lock_snapshot_refresh: Duration::from_secs(1),
        ..ActivityConfig::default()
    });
    let mut client = pool.acquire().unwrap();
    let first = sampler.sample(&mut client).unwrap();
    assert_eq!(first.n_lock_waits, 2, "{first:?}");
    // A later snapshot: the waits are longer, so it becomes the peak.
    std::thread::sleep(Duration::from_millis(1100));
    let second = sampler.sample(&mut client).unwrap();
    assert!(second.lock_snapshot, "{second:?}");
    drop(client);
    let out = sampler.finish_interval();
    a.batch_execute("ROLLBACK").unwrap();
    b_thread.join().unwrap();
    c_thread.join().unwrap();

    let c_rec = record(&out, C);
    // C waits for A's lock and for B's request queued ahead of it: both are named, B with its
    // request, query, state and transaction age.
    let c_blockers = ids_of(get(c_rec, &["blocked_by"]));
    assert!(c_blockers.contains(&B.to_string()), "{c_blockers:?}");
    let blocker = match get(c_rec, &["blocked_by"]) {
        Json::Array(a) => a
            .iter()
            .find(|b| b.get("correlation_id") == Some(&Json::Str(B.into())))
            .unwrap()
            .clone(),
        _ => unreachable!(),
    };
    assert_eq!(num(get(&blocker, &["pid"])), b_pid as f64);
    assert_eq!(get(&blocker, &["state"]), &Json::Str("active".into()));
    assert!(num(get(&blocker, &["xact_age_ms"])) >= 1000.0);
    let q = match get(&blocker, &["query"]) {
        Json::Str(q) => q.clone(),
        other => panic!("{other:?}"),
    };
    assert!(q.contains("LOCK TABLE chain"), "{q}");
    assert_eq!(
        get(&blocker, &["relation"]),
        &Json::Str("public.chain".into()),
        "relations by name"
    );
    let c_lock = get(c_rec, &["statements"]);
    let c_lock = match c_lock {
        Json::Array(a) => a[0].get("lock").unwrap().clone(),
        _ => unreachable!(),
    };
    assert_eq!(
        c_lock.get("relation"),
        Some(&Json::Str("public.chain".into()))
    );

    let b_rec = record(&out, B);
    assert_eq!(ids_of(get(b_rec, &["blocked_by"])), vec![A.to_string()]);
    assert_eq!(
        num(get(b_rec, &["blocked", "n_sessions"])),
        1.0,
        "B holds up C"
    );

    let a_rec = record(&out, A);
    let held_up = get(a_rec, &["blocked"]);
    assert_eq!(
        num(get(held_up, &["n_sessions"])),
        2.0,
        "{}",
        a_rec.to_json_string()
    );
    let total = num(get(held_up, &["total_wait_ms"]));
    let longest = num(get(held_up, &["max_wait_ms"]));
    assert!(
        longest >= 1000.0 && total >= longest + 1000.0,
        "{total} {longest}"
    );
    assert_eq!(
        get(held_up, &["correlation_ids"]),
        &Json::Array(vec![Json::from(B), Json::from(C)])
    );
    assert_eq!(get(a_rec, &["blocked_by"]), &Json::Null);

    // The peak is the snapshot with the largest total wait: the later one.
    let locks = out[0].data.get("locks").unwrap();
    let peak = get(locks, &["peak"]);
    let last = get(locks, &["last"]);
    assert_eq!(last, &Json::Null, "the latest snapshot is the peak");
    assert!(num(get(peak, &["total_wait_ms"])) >= total * 0.9);
    let tree = match get(peak, &["trees"]) {
        Json::Array(t) => t[0].clone(),
        _ => unreachable!(),
    };
    assert_eq!(num(get(&tree, &["root_pid"])), a_pid as f64);
    assert_eq!(num(get(&tree, &["depth"])), 2.0);
    // The sampler's lock and relation-name queries leave no error in the server log.
    let log = std::fs::read_to_string(pg.server_log()).unwrap();
    assert!(
        !log.lines().any(|l| l.contains("ERROR:")),
        "server log has errors:\n{log}"
    );
}
