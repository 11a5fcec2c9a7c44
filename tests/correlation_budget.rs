//! The correlated budget serves the spike: 40 distinct requests of 0.3 to 0.5 s in one interval,
//! sampled at the default pace (1 s) with every statement logged, driven in-process through the
//! sampler, the log feed and the correlator sized as the daemon sizes it at the default settings
//! (60 requests a minute, 60 s interval). One record per request instead of two makes at least
//! twice as many requests linkable as the old per-producer cap (13), and the heaviest requests
//! win.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::collect::correlate::{Correlator, CorrelatorConfig, LoggedStatement};
use bitville_pg_agent::daemon::correlated_budget;
use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::unix_now;
use bitville_pg_agent::pool::Pool;
use common::logs::routed_feed;
use common::TestPg;

const N: usize = 40;

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Request `i` sleeps 300 + 5·i ms: request 39 is the heaviest.
fn sleep_ms(i: usize) -> u64 {
    300 + 5 * i as u64
}

#[test]
fn forty_short_requests_at_the_default_pace_twice_as_many_linkable_heaviest_first() {
    let pg = TestPg::builder()
        .setting("log_min_duration_statement", "0")
        .start();
    let pool = Pool::new(&pg.db_config());
    let mut feed = routed_feed(&pg, &pool);
    let mut c = pool.acquire().unwrap();

    let interval = Duration::from_secs(60);
    let budget = correlated_budget(60, interval);
    // The cap each producer had when a request took two payloads (one per producer).
    let per_interval = 60;
    let before = (per_interval / 2 - 4) / 2;
    assert_eq!(before, 13);
    let mut corr = Correlator::new(CorrelatorConfig {
        budget,
        ..CorrelatorConfig::default()
    });
    let mut sampler = ActivitySampler::new(ActivityConfig {
        max_correlated: budget,
        ..ActivityConfig::default()
    });
    sampler.sample(&mut c).unwrap();
    let _ = sampler.finish_interval_parts();

    // Four PHP workers, ten requests each, in a random-ish order of weight.
    let mut workers = Vec::new();
    for w in 0..4 {
        let (host, port) = (pg.socket_dir().to_path_buf(), pg.port());
        workers.push(std::thread::spawn(move || {
            let mut app = postgres::Config::new()
                .host(host.to_str().unwrap())
                .port(port)
                .user("postgres")
                .dbname("postgres")
                .application_name("php-fpm")
                .connect(postgres::NoTls)
                .unwrap();
            for k in 0..N / 4 {
                let i = (k * 4 + w * 7) % N;
                app.batch_execute(&format!(
                    "/* correlation:{} */ SELECT pg_sleep({})",
                    id(i),
                    sleep_ms(i) as f64 / 1000.0
                ))
                .unwrap();
            }
        }));
    }
    let mut logged = Vec::new();
    while !workers.iter().all(|w| w.is_finished()) {
        sampler.sample(&mut c).unwrap();
        let _ = feed.poll(Instant::now());
        logged.extend(feed.take_correlated());
        std::thread::sleep(Duration::from_secs(1));
    }
    for w in workers {
        w.join().unwrap();
    }
    sampler.sample(&mut c).unwrap();
    let (_, sampled) = sampler.finish_interval_parts();
    // Every log line is in (bounded wait: the server wrote them before the clients returned).
    let deadline = Instant::now() + Duration::from_secs(20);
    while logged.len() < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let _ = feed.poll(Instant::now());
        logged.extend(feed.take_correlated());
    }
    let distinct: HashSet<String> = logged
        .iter()
        .filter_map(|j| match j.get("correlation_id") {
            Some(Json::Str(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(distinct.len(), N, "every request logged");
    corr.add_logged(
        logged
            .into_iter()
            .filter_map(LoggedStatement::from_log_json)
            .collect(),
        unix_now(),
    );
    let now = unix_now();
    corr.add_sampled(sampled, None, Some(now), now);
    let records = corr.take_due(now + 3.5);

    let linked: Vec<usize> = records
        .iter()
        .map(|p| {
            let cid = p.correlation_id.clone().unwrap();
            (0..N).find(|&i| id(i) == cid).unwrap()
        })
        .collect();
    assert_eq!(records.len(), budget, "the whole budget is used");
    assert!(
        linked.len() >= 2 * before,
        "{} linkable, {before} before",
        linked.len()
    );
    assert_eq!(corr.n_over_budget(), (N - budget) as u64);
    // The heaviest win: the 20 heaviest are all linked and nothing lighter than the cut by more
    // than the jitter of two neighbours (5 ms steps) is.
    for i in N - 20..N {
        assert!(
            linked.contains(&i),
            "request {i} ({} ms) left out: {linked:?}",
            sleep_ms(i)
        );
    }
    let cut = N - budget;
    assert!(
        linked.iter().all(|&i| i + 2 >= cut),
        "lighter requests linked: {linked:?}"
    );
    for p in &records {
        assert_eq!(
            p.data.get("duration_source"),
            Some(&Json::Str("log".into())),
            "{}",
            p.data.to_json_string()
        );
    }
}
