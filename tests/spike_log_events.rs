//! A spike's end report names the log events of its window: during a lock pile-up with
//! `log_lock_waits = on` and `deadlock_timeout = 100ms` every waiter's `still waiting for
//! ShareLock` line is counted as `lock_wait` in `log_events`, the longest waits are listed with
//! their pid and request id, and a sort that spilled to disk in the spike (`log_temp_files = 0`)
//! is listed as `temp_file` with its size and request, and the waits that ended at the commit
//! (`acquired ... after N ms`) as `lock_acquired` with the whole wait; `--report` prints the same.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::e2e::{Rig, KEY};
use common::listener::TestListener;
use common::pileup::{self, Background};
use common::TestPg;

#[test]
fn a_spike_report_lists_the_lock_waits_and_temp_files_of_its_window() {
    let pg = TestPg::builder()
        .setting("log_lock_waits", "on")
        .setting("deadlock_timeout", "100ms")
        .setting("log_temp_files", "0")
        .setting("log_line_prefix", "%m [%p] %q%u@%d %a ")
        .start();
    pileup::setup(&pg);
    let listener = TestListener::start(KEY);
    let mut rig = Rig::new("spike-log-events", &pg, &listener.url());
    rig.set("collection", "interval_s", "60")
        .set("collection", "sample_interval_ms", "1000")
        .set("spike", "min_active_sessions", "15")
        .set("spike", "load_per_cpu", "0")
        .set("spike", "end_after_quiet_s", "3")
        .set("spike", "burst_sample_interval_ms", "250");
    let mut agent = rig.start();
    let _steady = Background::light(&pg);
    std::thread::sleep(Duration::from_secs(3));
    let tag = 0x5a2;
    let spiller_id = pileup::request_id(0x5a3, 1);
    let mut spiller = pileup::client(&pg, &format!("bitville-{spiller_id}"));
    let spill = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        spiller
            .batch_execute(
                "SET work_mem = '64kB'; \
                 SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g \
                 ORDER BY g DESC) s",
            )
            .unwrap();
    });
    let _pile = pileup::lock_pile_up(&pg, tag, 25, Duration::from_secs(6));
    spill.join().unwrap();

    let is_end = |v: &Value| v["data"]["kind"] == "spike" && v["data"]["phase"] == "end";
    assert!(
        listener.wait_for(Duration::from_secs(20), |reqs| {
            reqs.iter().any(|r| r.json.as_ref().is_some_and(is_end))
        }),
        "no spike end report; agent log:\n{}",
        agent.log_text()
    );
    let stored = listener.stored();
    let report = &stored.iter().find(|v| is_end(v)).unwrap()["data"];
    let ev = &report["log_events"];
    assert!(
        ev["counts"]["lock_wait"].as_u64() >= Some(20),
        "lock waits of the pile-up: {ev}"
    );
    assert!(
        ev["from"].as_f64() <= report["start"].as_f64(),
        "the window starts at the spike (with slack): {ev}"
    );
    let top = ev["top"].as_array().expect("top events");
    let waits: Vec<&Value> = top.iter().filter(|e| e["class"] == "lock_wait").collect();
    assert!(!waits.is_empty() && waits.len() <= 3, "{ev}");
    let waiter_prefix = format!("{tag:08x}-");
    for w in &waits {
        assert!(w["wait_ms"].as_f64() >= Some(100.0), "{w}");
        assert!(w["pid"].as_u64() > Some(0), "{w}");
        // The first waiter waits for the holder's transaction, the others queue on the tuple.
        assert!(
            ["ShareLock", "ExclusiveLock"].contains(&w["lock_mode"].as_str().unwrap_or("")),
            "{w}"
        );
        assert!(
            w["correlation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(&waiter_prefix)),
            "the waiter's request: {w}"
        );
    }
    // When the holder commits, the waits end: `acquired ... after N ms` with the whole wait.
    let acquired = top
        .iter()
        .find(|e| e["class"] == "lock_acquired")
        .unwrap_or_else(|| panic!("no lock_acquired in {ev}"));
    assert!(acquired["wait_ms"].as_f64() >= Some(5000.0), "{acquired}");
    let temp: Vec<&Value> = top.iter().filter(|e| e["class"] == "temp_file").collect();
    assert!(!temp.is_empty(), "the spilled sort: {ev}");
    assert!(temp[0]["size_bytes"].as_f64() > Some(100_000.0), "{ev}");
    assert_eq!(temp[0]["correlation_id"], spiller_id.as_str(), "{ev}");
    agent.stop();
    assert!(listener.schema_violations().is_empty());

    let out = rig.run(&["--report", "--since", "10m"], Duration::from_secs(20));
    assert!(
        out.stdout.contains("log events: ") && out.stdout.contains("lock_wait "),
        "--report shows the spike's log events:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(&format!("request {waiter_prefix}")),
        "{}",
        out.stdout
    );
}
