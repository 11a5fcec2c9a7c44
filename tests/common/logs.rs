//! Helpers for the tests that read a real server's log: discovery as the agent does it, and a
//! session with a chosen `application_name` (the request marker the log lines carry).

use std::time::{Duration, Instant};

use bitville_pg_agent::logtail::tail::{TailConfig, Tailer};
use bitville_pg_agent::logtail::{
    discover, discover_from_server, EntryParser, FeedConfig, LogFeed, LogSource, ServerLogSettings,
    SETTINGS_QUERY,
};
use bitville_pg_agent::pool::Pool;

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

/// The server's log, followed from its end the way the daemon does, its correlated statements
/// routed to the correlator.
pub fn routed_feed(pg: &TestPg, pool: &Pool) -> LogFeed {
    let mut c = pool.acquire().unwrap();
    let src = discover_from_server(&mut c, Some(&pg.server_log()), None)
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", e.0));
    let tail = TailConfig {
        settle: Duration::from_millis(100),
        ..TailConfig::new(src.follow.clone(), None)
    };
    let mut feed = LogFeed::new(
        Tailer::new(tail, EntryParser::new(src.format, &src.prefix)),
        FeedConfig::default(),
        Instant::now(),
    );
    feed.route_correlated();
    // Opens the file at its end.
    let _ = feed.poll(Instant::now());
    feed
}
