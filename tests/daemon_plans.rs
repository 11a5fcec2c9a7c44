//! The running agent links auto_explain plans to pg_stat_statements: the log thread keeps the
//! latest plan per query_id and the interval thread ships it on that query's statements row.
//! The real binary against a real PostgreSQL 14+ (query_id) with auto_explain, and the contract
//! listener.

mod common;

use std::time::Duration;

use common::e2e::{source, wait_until, Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::TestPg;
use serde_json::Value;

/// The statements row of the first stored pg_stat_statements payload whose row for a query
/// matching `needle` carries a plan.
fn row_with_plan(stored: &[Value], needle: &str) -> Option<Value> {
    stored
        .iter()
        .filter(|v| source(v) == "pg_stat_statements")
        .filter_map(|v| v["data"]["statements"].as_array())
        .flatten()
        .find(|row| {
            row["query"].as_str().is_some_and(|q| q.contains(needle)) && row["plan"].is_object()
        })
        .cloned()
}

#[test]
fn a_statements_row_carries_the_latest_auto_explain_plan_of_its_query_id() {
    let pg = TestPg::builder()
        .setting(
            "shared_preload_libraries",
            "pg_stat_statements,auto_explain",
        )
        .setting("auto_explain.log_min_duration", "0")
        .setting("auto_explain.log_analyze", "on")
        .setting("auto_explain.log_timing", "off")
        .setting("auto_explain.log_format", "json")
        .setting("lc_messages", "C")
        // The query_id of each log line (PostgreSQL 14+), the key the plans are kept under.
        .setting("log_line_prefix", "%m [%p] %Q ")
        .start();
    if pg.major_version() < 14 {
        println!(
            "PostgreSQL {} has no query_id: nothing to link",
            pg.major_version()
        );
        return;
    }
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("plans-e2e", &pg, &listener.url());
    rig.set("collection", "interval_s", "2");
    let mut agent = rig.start();
    assert!(
        listener.wait_for_stored(1, LIVENESS),
        "{}",
        agent.log_text()
    );
    let mut app = pg.admin();
    app.batch_execute("CREATE TABLE plan_probe AS SELECT g AS id FROM generate_series(1, 20000) g")
        .unwrap();
    let found = wait_until(LIVENESS, || {
        app.query(
            "SELECT count(*) FROM plan_probe WHERE id > 4242 AND id < 17001",
            &[],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        row_with_plan(&listener.stored(), "plan_probe").is_some()
    });
    let status = agent.stop();
    assert!(
        found,
        "no pg_stat_statements row with a plan; agent log:\n{}",
        agent.log_text()
    );
    let row = row_with_plan(&listener.stored(), "plan_probe").unwrap();
    assert_eq!(row["plan_format"], "json", "{row}");
    assert!(row["plan_summary"].is_object(), "{row}");
    let text = row.to_string();
    assert!(
        !text.contains("4242") && !text.contains("17001"),
        "a literal of the query reached the listener: {text}"
    );
    assert_eq!(status.code(), Some(0));
    assert!(listener.schema_violations().is_empty());
}
