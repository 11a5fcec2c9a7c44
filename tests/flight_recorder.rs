//! The local flight recorder: with the listener down the whole time, `--report --since 10m`
//! prints the lock pile-up with its root blocker, while the daemon runs and after it stopped,
//! in Unicode or ASCII by the locale, and skips damaged lines instead of failing.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::e2e::{run_to_end, wait_until, Rig};
use common::pileup::{self, Background};
use common::TestPg;

#[test]
fn report_prints_the_spike_with_the_listener_down() {
    let pg = TestPg::start();
    pileup::setup(&pg);
    // Nothing listens on this port: every send fails, the spool keeps everything.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/ingest/postgres",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let mut rig = Rig::new("flight-recorder", &pg, &url);
    rig.set("collection", "interval_s", "60")
        .set("collection", "sample_interval_ms", "1000")
        .set("spike", "min_active_sessions", "20")
        .set("spike", "load_per_cpu", "0")
        .set("spike", "end_after_quiet_s", "2");
    let mut agent = rig.start();
    let _steady = Background::light(&pg);
    std::thread::sleep(Duration::from_secs(3));
    let tag = 0xf11;
    pileup::lock_pile_up(&pg, tag, 40, Duration::from_secs(6));
    let holder = pileup::request_id(tag, 0);
    let report = |lang: Option<&str>| {
        let mut cmd = rig.command(&["--report", "--since", "10m"]);
        if let Some(l) = lang {
            cmd.env("LANG", l);
        }
        run_to_end(cmd, rig.work.path(), Duration::from_secs(20))
    };
    let mut last = String::new();
    let found = wait_until(Duration::from_secs(20), || {
        let out = report(None);
        last = format!("{}{}", out.stdout, out.stderr);
        out.code == Some(0)
            && out.stdout.contains("to ")
            && out.stdout.contains(&holder)
            && !out.stdout.contains("still running")
    });
    assert!(
        found,
        "--report does not show the spike:\n{last}\nagent log:\n{}",
        agent.log_text()
    );
    let out = report(None);
    let text = out.stdout;
    assert!(text.is_ascii(), "no UTF-8 locale: plain ASCII\n{text}");
    assert!(text.contains("spike 1: "), "{text}");
    let blocker = text
        .lines()
        .find(|l| l.contains("root blocker"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(blocker.contains(&holder), "{blocker}");
    assert!(
        blocker.contains("UPDATE spike_t SET v = ? WHERE id = ?"),
        "{blocker}"
    );
    assert!(blocker.contains("idle in transaction"), "{blocker}");
    assert!(text.contains("wait classes: Lock"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with('^')),
        "spike marked:\n{text}"
    );
    assert!(text.contains("host: max R"), "{text}");
    let unicode = report(Some("C.UTF-8")).stdout;
    assert!(unicode.contains('█'), "{unicode}");

    // Damage: garbage and a cut-off line are skipped and counted.
    let file = rig.state_dir().join("flight-recorder.0.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(b"\x00\x01 not json\n{\"t\":1,\"k\":\"row\",\"v\":{\"t\":")
        .unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(1500));
    let damaged = report(None);
    assert_eq!(damaged.code, Some(0), "{}", damaged.stderr);
    assert!(
        damaged.stdout.contains("damaged line(s)"),
        "{}",
        damaged.stdout
    );
    assert!(damaged.stdout.contains(&holder));

    // Stopped daemon: the same spike, no database needed.
    agent.stop();
    drop(pg);
    let after = report(None);
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    assert!(after.stdout.contains(&holder), "{}", after.stdout);
}

#[test]
fn report_without_a_recorder_says_so() {
    let pg = TestPg::start();
    let rig = Rig::new("no-recorder", &pg, "http://127.0.0.1:9/ingest/postgres");
    let out = rig.run(&["--report", "--since", "1h"], Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no flight recorder"), "{}", out.stderr);
    let bad = rig.run(&["--report", "--at", "yesterday"], Duration::from_secs(20));
    assert_eq!(bad.code, Some(2), "{bad:?}");
}
