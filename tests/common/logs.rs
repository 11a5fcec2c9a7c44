//! Helpers for the tests that read a real server's log: discovery as the agent does it, and a
//! session with a chosen `application_name` (the request marker the log lines carry).

use bitville_pg_agent::logtail::{discover, LogSource, ServerLogSettings, SETTINGS_QUERY};

use super::TestPg;

/// Discovery exactly as the agent does it: the settings query, then current_logfiles.
pub fn discovered(pg: &TestPg) -> LogSource {
    let mut admin = pg.admin();
    let rows = admin.query(SETTINGS_QUERY, &[]).unwrap();
    let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut settings =
        ServerLogSettings::from_rows(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    settings.read_current_logfiles();
    discover(&settings, None).unwrap_or_else(|e| panic!("{e}"))
}

/// A superuser session on `pg` named `app`.
pub fn session(pg: &TestPg, app: &str) -> postgres::Client {
    postgres::Config::new()
        .host(pg.socket_dir().to_str().unwrap())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .application_name(app)
        .connect(postgres::NoTls)
        .unwrap()
}
