//! A correlated record sits where the request ran: the activity sampler, the log feed and the
//! correlator driven in-process against a real PostgreSQL (a short interval instead of 60 s; the
//! statement starts and ends between two interval boundaries, as in the issue). A 3 s
//! `pg_sleep` gives one record, stamped within 1 s of the client-side start, with the log's exact
//! duration (`duration_source = log`).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::correlate::{
    Correlator, CorrelatorConfig, LoggedStatement, SharedCorrelator,
};
use bitville_pg_agent::json::Json;
use bitville_pg_agent::logtail::LogFeed;
use bitville_pg_agent::payload::{unix_now, Payload};
use bitville_pg_agent::pool::Pool;
use common::logs::routed_feed;
use common::logs::session;
use common::TestPg;

const ID: &str = "3d6f4a2b-1c9e-4b7a-8f0d-5e6a7b8c9d0e";

fn num(v: &Json, key: &str) -> f64 {
    match v.get(key) {
        Some(Json::Float(f)) => *f,
        Some(Json::Int(i)) => *i as f64,
        Some(Json::UInt(u)) => *u as f64,
        other => panic!("{key}: {other:?} in {}", v.to_json_string()),
    }
}

fn hand_over(feed: &mut LogFeed, corr: &SharedCorrelator) {
    let _ = feed.poll(Instant::now());
    let st: Vec<LoggedStatement> = feed
        .take_correlated()
        .into_iter()
        .filter_map(LoggedStatement::from_log_json)
        .collect();
    corr.lock().unwrap().add_logged(st, unix_now());
}

fn close_interval(sampler: &mut ActivitySampler, corr: &SharedCorrelator) {
    let (summary, statements) = sampler.finish_interval_parts();
    let at = |k| match summary.data.get(k) {
        Some(Json::Float(f)) => Some(*f),
        _ => None,
    };
    corr.lock().unwrap().add_sampled(
        statements,
        at("interval_start"),
        at("interval_end"),
        unix_now(),
    );
}

#[test]
fn a_three_second_sleep_is_one_record_at_its_start_with_the_log_duration() {
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let pool = Pool::new(&pg.db_config());
    let mut feed = routed_feed(&pg, &pool);
    let corr = Correlator::shared(CorrelatorConfig::default());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());
    let mut c = pool.acquire().unwrap();
    // Boundary 0.
    sampler.sample(&mut c).unwrap();
    close_interval(&mut sampler, &corr);

    let mut app = session(&pg, "php-fpm");
    let (tx, rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let started = unix_now();
        app.batch_execute(&format!("/* correlation:{ID} */ SELECT pg_sleep(3)"))
            .unwrap();
        tx.send(started).unwrap();
    });
    let started = loop {
        sampler.sample(&mut c).unwrap();
        hand_over(&mut feed, &corr);
        if let Ok(t) = rx.try_recv() {
            break t;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    client.join().unwrap();
    // The statement ended inside the interval: a few more samples, then boundary 1.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        sampler.sample(&mut c).unwrap();
    }
    close_interval(&mut sampler, &corr);

    // Within the grace the log line joins; bounded wait for the record to fall due.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records: Vec<Payload> = Vec::new();
    while records.is_empty() && Instant::now() < deadline {
        hand_over(&mut feed, &corr);
        records = corr.lock().unwrap().take_due(unix_now());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Whatever is left would be a second record.
    hand_over(&mut feed, &corr);
    records.extend(corr.lock().unwrap().take_all());
    let mine: Vec<&Payload> = records
        .iter()
        .filter(|p| p.correlation_id.as_deref() == Some(ID))
        .collect();
    assert_eq!(mine.len(), 1, "one record: {records:?}");
    let r = mine[0];
    assert!(
        (r.collected_at - started).abs() <= 1.0,
        "timestamp {} is the statement's start (client started at {started})",
        r.collected_at
    );
    let data = &r.data;
    assert_eq!(
        data.get("duration_source"),
        Some(&Json::Str("log".into())),
        "{}",
        data.to_json_string()
    );
    let statements = match data.get("statements") {
        Some(Json::Array(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(statements.len(), 1, "{}", data.to_json_string());
    let log = statements[0].get("log").expect("the log line joined");
    let exact = num(log, "duration_ms");
    let d = num(data, "duration_ms");
    assert!(
        (d - exact).abs() <= exact * 0.02,
        "duration {d} vs the log's {exact}"
    );
    assert!((2900.0..4000.0).contains(&d), "{d}");
    let q = match data.get("query") {
        Some(Json::Str(q)) => q.clone(),
        other => panic!("{other:?}"),
    };
    assert!(q.contains("pg_sleep"), "{q}");
}
