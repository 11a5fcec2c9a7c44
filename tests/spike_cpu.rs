//! A CPU spike: sessions spinning in PL/pgSQL loops are reported with class CPU and backends in
//! run state R.

mod common;

use std::time::Duration;

use common::e2e::{Rig, KEY};
use common::listener::TestListener;
use common::pileup::{self, Background};
use common::TestPg;

#[test]
fn cpu_loops_are_a_cpu_spike_with_runnable_backends() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("spike-cpu", &pg, &listener.url());
    rig.set("collection", "interval_s", "60")
        .set("collection", "sample_interval_ms", "1000")
        .set("spike", "min_active_sessions", "6")
        .set("spike", "load_per_cpu", "0")
        .set("spike", "end_after_quiet_s", "2");
    let mut agent = rig.start();
    let _steady = Background::light(&pg);
    std::thread::sleep(Duration::from_secs(4));
    pileup::cpu_loops(&pg, 8, Duration::from_secs(6));
    assert!(
        listener.wait_for(Duration::from_secs(15), |reqs| {
            reqs.iter().any(|r| {
                r.json
                    .as_ref()
                    .is_some_and(|v| v["data"]["kind"] == "spike" && v["data"]["phase"] == "end")
            })
        }),
        "no spike end report; agent log:\n{}",
        agent.log_text()
    );
    let stored = listener.stored();
    let report = &stored
        .iter()
        .find(|v| v["data"]["kind"] == "spike" && v["data"]["phase"] == "end")
        .unwrap()["data"];
    assert_eq!(report["top_class"], "CPU", "{report}");
    assert_eq!(report["wait_classes"][0]["class"], "CPU");
    assert!(report["wait_classes"][0]["share"].as_f64().unwrap() > 0.5);
    let r = report["host"]["max_run_r"].as_u64().unwrap();
    assert!(r >= 4, "only {r} backends seen in run state R: {report}");
    let top = &report["load"]["queries"][0];
    assert!(top["query"].as_str().unwrap().starts_with("DO"), "{top}");
    assert!(top["cpu_ms"].as_u64().unwrap() > 0, "{top}");
    agent.stop();
}
