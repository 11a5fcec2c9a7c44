//! The agent leaves no ERROR in the server log on its normal path: the activity sampler's
//! prepared statement is prepared where the connection knows it is missing, across fresh
//! connections, broken ones and a `pg_terminate_backend` of the agent's session.

mod common;

use bitville_pg_agent::collect::activity::{ActivityConfig, ActivitySampler};
use bitville_pg_agent::pool::Pool;
use common::TestPg;

fn error_lines(pg: &TestPg) -> Vec<String> {
    std::fs::read_to_string(pg.server_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn sampling_over_fresh_and_terminated_connections_logs_no_server_error() {
    let pg = TestPg::builder()
        .setting("log_min_error_statement", "error")
        .start();
    let mut admin = pg.admin();
    let pool = Pool::new(&pg.db_config());
    let mut sampler = ActivitySampler::new(ActivityConfig::default());

    // Several fresh connections: each one is discarded after its samples.
    for _ in 0..4 {
        let mut c = pool.acquire().unwrap();
        sampler.sample(&mut c).expect("sample");
        sampler
            .sample(&mut c)
            .expect("sample again on the same connection");
        assert_eq!(c.n_prepared(), 1, "prepared once per connection");
        c.mark_broken();
    }
    // Several pooled connections at once, each sampling.
    let mut held: Vec<_> = (0..3).map(|_| pool.acquire().unwrap()).collect();
    for c in &mut held {
        sampler
            .sample(c)
            .expect("sample on one of several connections");
    }
    drop(held);

    // The agent's sessions are terminated behind its back; the next connections start clean.
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'bitville-monitor'",
            &[],
        )
        .unwrap();
    let mut recovered = 0;
    for _ in 0..6 {
        let mut c = pool.acquire().unwrap();
        match sampler.sample(&mut c) {
            Ok(_) => recovered += 1,
            Err(e) => {
                assert!(
                    e.is_connection_error(),
                    "only the dead connection fails: {e}"
                );
                c.mark_broken();
            }
        }
    }
    assert!(recovered >= 3, "sampling resumed on new connections");

    // The server writes what it logs before answering, but give the pipe a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let errors = error_lines(&pg);
    assert!(
        errors.is_empty(),
        "the agent left errors in the server log:\n{}",
        errors.join("\n")
    );
    assert!(
        std::fs::read_to_string(pg.server_log())
            .unwrap()
            .contains("terminating connection due to administrator command"),
        "the termination happened (so the test covered it)"
    );
}
