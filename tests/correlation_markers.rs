//! Every way a PHP request marks its SQL links it at the listener: the real agent binary against
//! a real PostgreSQL and the contract listener. A `/* correlation:<uuid> */` comment (the PHP
//! agent's form), `application_name = bitville-<uuid>` (the Python agent's), a W3C traceparent in
//! `application_name` or in a sqlcommenter comment (shipped as its trace id) each give one
//! correlated record with the right id; a request marked both ways (comment and
//! application_name) gives one record, joined by its log line.

mod common;

use std::time::Duration;

use common::e2e::{Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::logs::session;
use common::TestPg;
use serde_json::Value;

/// The stored bodies whose top-level `correlation_id` is `id`.
fn records(listener: &TestListener, id: &str) -> Vec<Value> {
    listener
        .stored()
        .into_iter()
        .filter(|v| v["correlation_id"].as_str() == Some(id))
        .collect()
}

/// Waits (bounded by the liveness limit only) until a record for `id` reached the listener.
fn wait_record(listener: &TestListener, id: &str) -> Value {
    let found = common::e2e::wait_until(LIVENESS, || !records(listener, id).is_empty());
    assert!(found, "no record for {id}; stored: {:?}", listener.stored());
    records(listener, id).remove(0)
}

const COMMENT_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const APP_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const TRACE_APP: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_SQL: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

#[test]
fn each_marker_links_its_request_with_the_right_id() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("markers", &pg, &listener.url());
    let mut agent = rig.start();

    let mut php = session(&pg, "php-fpm");
    php.batch_execute(&format!(
        "/* correlation:{COMMENT_ID} */ SELECT pg_sleep(1.2)"
    ))
    .unwrap();
    let mut python = session(&pg, &format!("bitville-{APP_ID}"));
    python.batch_execute("SELECT pg_sleep(1.2)").unwrap();
    let mut traced = session(&pg, &format!("00-{TRACE_APP}-00f067aa0ba902b7-01"));
    traced.batch_execute("SELECT pg_sleep(1.2)").unwrap();
    // sqlcommenter URL-encodes values.
    php.batch_execute(&format!(
        "SELECT pg_sleep(1.2) /*action='checkout',traceparent='00-{TRACE_SQL}%2D00f067aa0ba902b7-01'*/"
    ))
    .unwrap();

    for (id, source) in [
        (COMMENT_ID, "comment"),
        (APP_ID, "application_name"),
        (TRACE_APP, "traceparent"),
        (TRACE_SQL, "traceparent"),
    ] {
        let r = wait_record(&listener, id);
        let data = &r["data"];
        assert_eq!(data["kind"], "correlated_request", "{r}");
        assert_eq!(data["correlation_source"], source, "{r}");
        let query = data["query"].as_str().unwrap_or_default();
        assert!(query.contains("pg_sleep"), "{r}");
        assert!(
            data["duration_ms"].as_f64().unwrap_or(0.0) >= 500.0,
            "a 1.2 s sleep: {r}"
        );
        let statements = data["statements"].as_array().expect("statements");
        assert_eq!(statements.len(), 1, "{r}");
    }
    // The summaries count what the correlator shipped.
    assert!(common::e2e::wait_until(LIVENESS, || listener
        .stored()
        .iter()
        .any(|v| {
            v["source"] == "pg_stat_activity"
                && v["correlation_id"].is_null()
                && v["data"]["correlated"]["records"].as_u64().unwrap_or(0) >= 1
        })));
    // The marker comment was found in the raw text; with literals masked the comment stays,
    // so the shipped text still says which request it was.
    let comment = wait_record(&listener, COMMENT_ID);
    assert!(
        !comment["data"]["query"]
            .as_str()
            .unwrap_or_default()
            .contains("1.2"),
        "literals are masked: {comment}"
    );
    agent.stop();
}

#[test]
fn a_request_marked_twice_is_one_record_joined_by_its_log_line() {
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("markers-twice", &pg, &listener.url());
    let mut agent = rig.start();
    // The agent tails from the end of the log: let it open the file first.
    assert!(common::e2e::wait_until(LIVENESS, || agent
        .log_text()
        .contains("server log:")));

    let mut both = session(&pg, &format!("bitville-{APP_ID}"));
    both.batch_execute(&format!("/* correlation:{APP_ID} */ SELECT pg_sleep(1.5)"))
        .unwrap();
    let r = wait_record(&listener, APP_ID);
    // Several intervals later there is still exactly one.
    std::thread::sleep(Duration::from_secs(6));
    let all = records(&listener, APP_ID);
    assert_eq!(all.len(), 1, "one record per request: {all:?}");
    let data = &r["data"];
    assert_eq!(data["correlation_source"], "comment", "most trusted: {r}");
    assert_eq!(r["source"], "pg_stat_activity", "{r}");
    assert_eq!(data["duration_source"], "log", "{r}");
    let d = data["duration_ms"].as_f64().unwrap();
    assert!((1500.0..3000.0).contains(&d), "{r}");
    let st = &data["statements"][0];
    assert!(data["pid"].is_number(), "{r}");
    assert_eq!(data["pid"], st["pid"], "{r}");
    assert!(
        st["log"]["duration_ms"].is_number(),
        "the log's statement: {r}"
    );
    assert_eq!(
        st["log"]["pid"], st["pid"],
        "the log line of the sampled execution: {r}"
    );
    agent.stop();
}
