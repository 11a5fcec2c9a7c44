//! A lock pile-up is a spike: 40 requests queue behind one request that holds a row lock. The
//! per-second timeline shows the Lock waiters at the right seconds; the spike report reaches the
//! listener within 15 s of the spike's end, before the interval ends, sampled at burst
//! resolution, naming the holding request and its query as the root blocker and Lock as the top
//! class.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::e2e::{Rig, KEY};
use common::listener::TestListener;
use common::pileup::{self, Background, HOLDER_QUERY_NORMALIZED};
use common::TestPg;

fn spike_reports<'a>(stored: &'a [Value], phase: &str) -> Vec<&'a Value> {
    stored
        .iter()
        .filter(|v| v["source"] == "pg_stat_activity")
        .filter(|v| v["data"]["kind"] == "spike" && v["data"]["phase"] == phase)
        .collect()
}

/// Whether `v` is an activity summary with timeline rows (not a spike report).
fn is_summary(v: &Value) -> bool {
    v["data"]["kind"].is_null() && v["data"]["timeline"]["n_rows"].as_u64() > Some(0)
}

/// (t, Lock count) of a column-wise timeline.
fn lock_column(timeline: &Value) -> Vec<(f64, u64)> {
    let t = timeline["t"].as_array().expect("t column");
    let lock = timeline["by_class"]["Lock"]
        .as_array()
        .expect("Lock column");
    assert_eq!(t.len(), lock.len(), "columns line up");
    t.iter()
        .zip(lock)
        .map(|(t, l)| (t.as_f64().unwrap(), l.as_u64().unwrap()))
        .collect()
}

#[test]
fn a_lock_pile_up_is_reported_at_once_with_its_root_blocker() {
    let pg = TestPg::start();
    pileup::setup(&pg);
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("spike-lock", &pg, &listener.url());
    rig.set("collection", "interval_s", "40")
        .set("collection", "sample_interval_ms", "1000")
        .set("spike", "min_active_sessions", "20")
        .set("spike", "load_per_cpu", "0")
        .set("spike", "end_after_quiet_s", "3")
        .set("spike", "burst_sample_interval_ms", "250");
    let started = Instant::now();
    let mut agent = rig.start();
    let _steady = Background::light(&pg);
    std::thread::sleep(Duration::from_secs(4));
    let tag = 0x5a1;
    let pile = pileup::lock_pile_up(&pg, tag, 40, Duration::from_secs(10));
    let released = Instant::now();

    assert!(
        listener.wait_for(Duration::from_secs(15), |reqs| {
            reqs.iter().any(|r| {
                r.json
                    .as_ref()
                    .is_some_and(|v| v["data"]["kind"] == "spike" && v["data"]["phase"] == "end")
            })
        }),
        "no spike end report within 15 s of the spike's end; agent log:\n{}",
        agent.log_text()
    );
    assert!(
        released.elapsed() < Duration::from_secs(16),
        "the end report came {:?} after the release",
        released.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the test was too slow to prove the report beats the interval"
    );
    let stored = listener.stored();
    assert!(
        !stored.iter().any(is_summary),
        "the spike report arrived before the interval's summary"
    );
    assert_eq!(
        spike_reports(&stored, "start").len(),
        1,
        "one short report at the start"
    );
    let ends = spike_reports(&stored, "end");
    assert_eq!(ends.len(), 1);
    // The daemon spools both reports in the spike lane, numbered on their own.
    assert_eq!(
        listener.stored_seqs_in("spike"),
        [1, 2],
        "the start and end reports travel in the spike lane"
    );
    let report = &ends[0]["data"];
    assert_eq!(report["top_class"], "Lock", "{report}");
    let root = &report["root_blockers"][0];
    assert_eq!(
        root["correlation_id"].as_str(),
        Some(pileup::request_id(tag, 0).as_str()),
        "{report}"
    );
    assert_eq!(root["query"], HOLDER_QUERY_NORMALIZED);
    assert_eq!(root["state"], "idle in transaction");
    assert!(root["max_blocked"].as_u64().unwrap() >= 35, "{root}");
    // Burst sampling: the samples of the spike are 250 ms apart. On a loaded test machine one
    // sample may start late, so nine in ten gaps must be within 300 ms and none over a second.
    let t: Vec<f64> = report["timeline"]["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    gaps.sort_by(f64::total_cmp);
    assert!(gaps.len() >= 20, "only {} samples in the spike", t.len());
    let p90 = gaps[gaps.len() * 9 / 10];
    assert!(
        p90 <= 300.0,
        "samples {p90} ms apart (90th percentile) during the spike: {gaps:?}"
    );
    let gap = report["max_sample_gap_ms"].as_f64().unwrap();
    assert!(gap <= 1000.0, "samples {gap} ms apart during the spike");
    assert!(report["peak"]["by_class"]["Lock"].as_u64().unwrap() >= 35);
    let top_request = &report["load"]["requests"][0];
    assert!(top_request["key"]
        .as_str()
        .unwrap()
        .starts_with("000005a1-"));
    assert!(
        report["deep"]["lock_trees"].is_array(),
        "{}",
        report["deep"]
    );

    // The spike's own timeline, at burst resolution: >= 35 Lock waiters, only while they waited.
    let rows = lock_column(&report["timeline"]);
    let piled: Vec<f64> = rows.iter().filter(|r| r.1 >= 35).map(|r| r.0).collect();
    assert!(
        piled.len() >= 30,
        "{} samples with >= 35 waiters",
        piled.len()
    );
    for t in &piled {
        assert!(
            *t >= pile.full_at - 2.0 && *t <= pile.released_at + 1.0,
            "waiters at {t}, pile-up {pile:?}"
        );
    }
    assert!(piled.iter().any(|t| (*t - pile.full_at).abs() < 1.5));
    assert!(piled.iter().any(|t| (*t - pile.released_at).abs() < 1.5));

    // The interval summary carries the same seconds in its timeline, and exact attribution.
    assert!(
        listener.wait_for(Duration::from_secs(45), |reqs| {
            reqs.iter().any(|r| r.json.as_ref().is_some_and(is_summary))
        }),
        "no interval summary; agent log:\n{}",
        agent.log_text()
    );
    let stored = listener.stored();
    let summary = stored.iter().find(|v| is_summary(v)).unwrap();
    let rows = lock_column(&summary["data"]["timeline"]);
    let in_window = rows
        .iter()
        .filter(|(t, l)| *l >= 35 && *t >= pile.full_at - 2.0 && *t <= pile.released_at + 1.0)
        .count();
    assert!(in_window >= 30, "{in_window}");
    let load = &summary["data"]["load"];
    let total = load["total"]["active_s"].as_f64().unwrap();
    let by_query: f64 = load["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["active_s"].as_f64().unwrap())
        .sum();
    assert!((total - by_query).abs() < 0.1, "{total} vs {by_query}");
    assert!(total >= 35.0 * 10.0 * 0.9, "{total} active seconds");
    agent.stop();
    assert!(listener.schema_violations().is_empty());
}
