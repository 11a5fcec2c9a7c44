//! Adaptive cost control with a real server and 100 sessions in `pg_sleep`: with a budget far
//! below what a sample costs, the sampler degrades step by step (in the sampler itself, and in
//! the daemon up to sampling four times less often), says so in `data.agent.sample_cost`, the
//! activity summary and the log, and keeps sampling. No assertion on speed: only on what the
//! sampler reports and that it goes on.

mod common;

use std::time::Duration;

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::cost_control::Level;
use bitville_pg_agent::json::Json;
use bitville_pg_agent::pool::Pool;
use common::e2e::{Rig, LIVENESS};
use common::listener::TestListener;
use common::pileup::sleepers;
use common::TestPg;

const SESSIONS: u32 = 100;

fn server() -> TestPg {
    TestPg::builder().setting("max_connections", "150").start()
}

#[test]
fn a_tiny_budget_degrades_the_sampler_in_order_and_every_session_is_still_reported() {
    let pg = server();
    let _sleeping = sleepers(&pg, SESSIONS);
    let pool = Pool::new(&pg.db_config());
    let mut c = pool.acquire().unwrap();
    let mut s = ActivitySampler::new(ActivityConfig {
        sample_cpu_budget: Duration::from_micros(10),
        ..ActivityConfig::default()
    });
    let mut levels = vec![s.cost_level()];
    for _ in 0..15 {
        let stats = s.sample(&mut c).unwrap();
        assert!(stats.n_rows >= SESSIONS as usize, "{stats:?}");
        if levels.last() != Some(&s.cost_level()) {
            levels.push(s.cost_level());
        }
    }
    assert_eq!(
        levels,
        vec![
            Level::Full,
            Level::NoIo,
            Level::Rotate,
            Level::Stretch2,
            Level::Stretch4
        ],
        "one step per three samples over the budget, in the stated order"
    );
    assert_eq!(s.interval_stretch(), 4);
    let r = s.cost_report();
    assert_eq!(r.samples, 15);
    assert_eq!(r.samples_degraded, 12);
    let out = s.finish_interval();
    let data = &out[0].data;
    let procfs = data.get("procfs").unwrap();
    assert_eq!(procfs.get("cost_level"), Some(&Json::from("stretch_4")));
    let n = |v: &Json, k: &str| match v.get(k) {
        Some(Json::UInt(u)) => *u,
        other => panic!("{k}: {other:?}"),
    };
    assert!(
        n(procfs, "readings_deferred") > 0,
        "{}",
        data.to_json_string()
    );
    assert!(
        n(procfs, "io_unchanged") > 0,
        "sleeping sessions' io is not re-read"
    );
    // Degraded, not blind: every sleeping session is still an execution of the summary, with
    // the OS figures read at its first sample.
    let sessions = match data.get("sessions") {
        Some(Json::Array(a)) => a,
        other => panic!("{other:?}"),
    };
    let sleepers: Vec<&Json> = sessions
        .iter()
        .filter(|e| e.get("application_name") == Some(&Json::from("sleeper")))
        .collect();
    assert_eq!(sleepers.len(), SESSIONS as usize);
    assert!(sleepers
        .iter()
        .all(|e| matches!(e.get("rss_bytes"), Some(Json::UInt(b)) if *b > 0)));
}

#[test]
fn the_daemon_stretches_its_sampling_says_so_in_data_agent_and_keeps_sampling() {
    let pg = server();
    let listener = TestListener::start(common::e2e::KEY);
    let mut rig = Rig::new("cost-control", &pg, &listener.url());
    rig.set("collection", "sample_cpu_budget_ms", "0.01");
    let _sleeping = sleepers(&pg, SESSIONS);
    let mut agent = rig.start();
    let cost = |v: &serde_json::Value| {
        (v["source"] == "system_metrics").then(|| v["data"]["agent"]["sample_cost"].clone())
    };
    let stretched = |reqs: &[common::listener::Request]| {
        reqs.iter()
            .filter_map(|r| r.json.as_ref().and_then(cost))
            .any(|c| c["level_name"] == "stretch_4")
    };
    assert!(
        listener.wait_for(LIVENESS, stretched),
        "never degraded to stretch_4; agent log:\n{}",
        agent.log_text()
    );
    // Then, while degraded, it goes on sampling: at 4 × 250 ms about once a second.
    let first = listener
        .stored()
        .iter()
        .filter_map(cost)
        .find(|c| c["level_name"] == "stretch_4")
        .unwrap();
    let samples_at = |c: &serde_json::Value| c["samples"].as_u64().unwrap();
    let base = samples_at(&first);
    assert!(
        listener.wait_for(LIVENESS, |reqs| reqs
            .iter()
            .filter_map(|r| r.json.as_ref().and_then(cost))
            .any(|c| samples_at(&c) >= base + 5)),
        "the sampler stopped sampling while degraded; agent log:\n{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
    let last = listener.stored().iter().rev().find_map(cost).unwrap();
    assert_eq!(last["cpu_budget_ms"], 0.01, "{last}");
    assert_eq!(last["interval_stretch"], 4, "{last}");
    assert!(last["samples_degraded"].as_u64().unwrap() >= 5, "{last}");
    assert!(last["level_changes"].as_u64().unwrap() >= 4, "{last}");
    assert!(
        last["seconds_at_level"]["stretch_4"].as_f64().unwrap() > 0.0,
        "{last}"
    );
    // The activity summaries say which level their samples ran at.
    let levels: Vec<String> = listener
        .stored()
        .iter()
        .filter(|v| v["source"] == "pg_stat_activity")
        .filter_map(|v| {
            v["data"]["procfs"]["cost_level"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(levels.iter().any(|l| l == "stretch_4"), "{levels:?}");
    // Once per change in the log, in the stated order.
    let log = agent.log_text();
    let order: Vec<usize> = ["(no_io)", "(rotate)", "(stretch_2)", "(stretch_4)"]
        .iter()
        .map(|l| {
            log.find(l)
                .unwrap_or_else(|| panic!("{l} not logged:\n{log}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{log}");
    assert_eq!(log.matches("(stretch_4)").count(), 1, "logged once:\n{log}");
}
