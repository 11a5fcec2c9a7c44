//! Every activity summary carries the load timeline (column-wise, one entry per sample) and the
//! load attribution; `--dry-run` shows it without a daemon.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::e2e::{Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::pileup;
use common::TestPg;

#[test]
fn the_dry_run_summary_has_a_timeline_and_attribution() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let rig = Rig::new("load-timeline", &pg, &listener.url());
    let mut c = pileup::client(&pg, &format!("bitville-{}", pileup::request_id(7, 7)));
    let sleeper = std::thread::spawn(move || c.batch_execute("SELECT pg_sleep(4)").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let out = rig.run(&["--dry-run"], LIVENESS);
    sleeper.join().unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let summary: Value = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["source"] == "pg_stat_activity" && v["data"]["timeline"].is_object())
        .unwrap_or_else(|| panic!("no summary with a timeline:\n{}", out.stdout));
    let t = &summary["data"]["timeline"];
    assert_eq!(t["n_rows"], 2, "two samples: {t}");
    for col in [
        "t",
        "active",
        "run_r",
        "run_d",
        "procs_running",
        "load1",
        "psi_io_some_avg10",
    ] {
        assert_eq!(t[col].as_array().map(Vec::len), Some(2), "{col}: {t}");
    }
    assert_eq!(t["by_class"]["Timeout"], serde_json::json!([1, 1]), "{t}");
    assert!(t["procs_running"][0].as_u64().is_some(), "{t}");
    let load = &summary["data"]["load"];
    let req = &load["requests"][0];
    assert_eq!(
        req["key"].as_str(),
        Some(pileup::request_id(7, 7).as_str()),
        "{load}"
    );
    assert_eq!(req["by_class"]["Timeout"], 2.0, "{load}");
    assert_eq!(load["queries"][0]["query"], "SELECT pg_sleep(?)");
    assert_eq!(summary["data"]["spike_in_progress"], Value::Null);
}
