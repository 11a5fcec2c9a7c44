//! The operator's surface tells the truth, with the real binary against real PostgreSQL and the
//! contract listener (which serves `/ingest/postgres` and, like the real one, `/ingest/php`):
//! `--test` recognises the postgres ingest endpoint and only it, `--once` says what was
//! delivered and fails unless everything was, `--status` follows the breaker and the backlog
//! within seconds.

mod common;

use common::e2e::{Rig, KEY, LIVENESS};
use common::listener::TestListener;
use common::TestPg;

/// The `listener` line of a `--test` report.
fn listener_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains(" listener "))
        .unwrap_or_else(|| panic!("no listener line:\n{stdout}"))
}

#[test]
fn test_mode_recognises_the_postgres_endpoint_and_only_it_storing_nothing() {
    let pg = TestPg::start();
    let listener = TestListener::start(KEY);

    let right = Rig::new("surface-test-right", &pg, &listener.url());
    let out = right.run(&["--test"], LIVENESS);
    assert_eq!(out.code, Some(0), "{out:?}");
    let line = listener_line(&out.stdout);
    assert!(
        line.starts_with("ok   listener ") && line.contains("postgres ingest endpoint"),
        "{line}"
    );

    let wrong = Rig::new("surface-test-php", &pg, &listener.php_url());
    let out = wrong.run(&["--test"], LIVENESS);
    assert_eq!(out.code, Some(6), "{out:?}");
    let line = listener_line(&out.stdout);
    assert!(
        line.starts_with("FAIL listener ") && line.contains("url must end in /ingest/postgres"),
        "{line}"
    );
    assert!(
        line.contains("request_id"),
        "the listener's reason is shown: {line}"
    );

    // Credentials in the URL are never shown (and do not disturb the probe).
    let port = listener.port();
    let with_creds = Rig::new(
        "surface-test-creds",
        &pg,
        &format!("http://bob:url-pass-9@127.0.0.1:{port}/ingest/postgres"),
    );
    let out = with_creds.run(&["--test"], LIVENESS);
    assert!(
        !out.stdout.contains("url-pass-9") && !out.stderr.contains("url-pass-9"),
        "{out:?}"
    );
    assert!(
        listener_line(&out.stdout).contains("http://***@127.0.0.1"),
        "{out:?}"
    );

    let requests = listener.requests();
    assert_eq!(requests.len(), 3, "one probe per run: {requests:?}");
    assert!(
        requests.iter().all(|r| r.status == 400),
        "every probe refused: {requests:?}"
    );
    assert!(listener.stored().is_empty(), "--test stores nothing");
}
