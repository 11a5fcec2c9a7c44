//! The daemon ships the server-health block inside system_metrics, for the main database and for
//! an extra one from `[collection] databases`, without going over the connection cap.

mod common;

use std::time::Duration;

use common::agent::AgentProcess;
use common::listener::TestListener;
use common::{TempDir, TestPg};

#[test]
fn system_metrics_carry_server_health_for_the_main_and_an_extra_database() {
    let pg = TestPg::start();
    let mut admin = pg.admin();
    admin.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("other")
        .connect(postgres::NoTls)
        .unwrap();
    other
        .batch_execute("CREATE TABLE hot (id int); INSERT INTO hot SELECT generate_series(1, 100)")
        .unwrap();
    let listener = TestListener::start("k");
    let work = TempDir::new("health");
    let ini = work.path().join("agent.ini");
    std::fs::write(
        &ini,
        pg.agent_ini(&format!(
            "[collection]\ninterval_s = 1\nstate_dir = {}\ndatabases = other\n\
             [listener]\nurl = {}\napi_key = k\nmax_requests_per_minute = 6000\n[buffer]\npath = {}\n",
            work.path().join("state").display(),
            listener.url(),
            work.path().join("spool").display()
        )),
    )
    .unwrap();
    let mut agent = AgentProcess::start(&ini, &[], work.path());
    // Scans between the agent's intervals make the table hot.
    for _ in 0..8 {
        for _ in 0..20 {
            other.batch_execute("SELECT count(*) FROM hot").unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(pg.agent_sessions(&mut admin) <= 5);
    }
    let with_other = |v: &serde_json::Value| {
        v["source"] == "system_metrics"
            && v["data"]["postgres"]["other_databases"][0]["database"] == "other"
    };
    assert!(
        listener.wait_for(Duration::from_secs(30), |reqs| {
            reqs.iter()
                .filter(|r| r.status == 200 && r.json.as_ref().is_some_and(with_other))
                .count()
                >= 2
        }),
        "no system_metrics with other_databases; agent log:\n{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
    let stored = listener.stored();
    let last = stored.iter().rev().find(|v| with_other(v)).unwrap();
    let pgblock = &last["data"]["postgres"];
    assert!(pgblock["checkpoints"].is_object(), "{pgblock}");
    assert!(pgblock["connections"].is_object(), "{pgblock}");
    assert_eq!(
        last["data"]["agent"]["pool"]["max"], 4,
        "the extra database takes one connection of five"
    );
    // The extra database's connection counts too: it held one while its health was collected.
    let held = last["data"]["agent"]["connections_held"].as_u64().unwrap();
    let main_pool = last["data"]["agent"]["pool"]["idle"].as_u64().unwrap()
        + last["data"]["agent"]["pool"]["in_use"].as_u64().unwrap();
    assert_eq!(
        held,
        main_pool + 1,
        "connections_held counts the main pool only: {}",
        last["data"]["agent"]
    );
    assert!(
        last["data"]["agent"]["collectors"]["health (other databases)"]["ok"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "the extra database's health does not go through the step runner: {}",
        last["data"]["agent"]["collectors"]
    );
    let other_block = &pgblock["other_databases"][0];
    assert!(
        other_block["errors"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{other_block}"
    );
    assert!(listener.schema_violations().is_empty());
}
