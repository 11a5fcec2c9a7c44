//! `--test`: everything an operator needs checked before trusting the agent, one line per check,
//! each failure with its fix. Nothing is written to the monitored database, nothing is stored at
//! the listener (its probe is refused by the right endpoint), and a running agent is not
//! disturbed (the spool is probed, not locked).

use std::path::Path;

use crate::cli;
use crate::config::Config;
use crate::daemon;
use crate::json::Json;
use crate::logtail;
use crate::pool::Pool;
use crate::ship::http::Client;

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works.
    Ok,
    /// Works partly; the agent runs but reports less.
    Warn,
    /// Does not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it went.
    pub verdict: Verdict,
    /// What was found, and for a warning or failure, the fix.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{v} {:<18} {}", self.name, self.detail)
    }
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// A directory the agent must write to: created if missing, then a file written and removed.
fn writable_dir(name: &'static str, dir: &Path) -> Check {
    let probe = dir.join(format!(".bitville-test-{}", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"x"))
        .and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => check(name, Verdict::Ok, format!("{} is writable", dir.display())),
        Err(e) => check(
            name,
            Verdict::Fail,
            format!(
                "{}: {e}; fix: create it owned by the agent's user (make install does)",
                dir.display()
            ),
        ),
    }
}

/// The `source` of the listener probe: no ingest endpoint accepts it, and the postgres endpoint
/// refuses it with a 400 whose `details` name `source`.
pub const PROBE_SOURCE: &str = "bitville_probe";

/// The probe body: valid for the postgres ingest schema except for `source`, so the postgres
/// endpoint answers 400 naming `source` after it checked the key, and stores nothing.
pub fn probe_body(project: &str) -> String {
    Json::object()
        .field("project", project)
        .field("timestamp", crate::payload::unix_now())
        .field("source", PROBE_SOURCE)
        .field(
            "data",
            Json::object().field("probe", "bitville-pg-agent --test: not data, refuse me"),
        )
        .to_json_string()
}

/// At most this much of a listener answer is shown.
const ANSWER_CHARS: usize = 160;

fn short_answer(body: &str) -> String {
    let t = body.trim();
    let mut out: String = t.chars().take(ANSWER_CHARS).collect();
    if t.chars().count() > ANSWER_CHARS {
        out.push_str("...");
    }
    out
}

const FIX_URL: &str =
    "fix: [listener] url must end in /ingest/postgres (the exact path, no trailing slash)";

/// What the listener's answer to the probe says. Only the postgres ingest endpoint answers 400
/// naming `source`; another ingest endpoint (`/ingest/php`) names the fields of its own schema.
pub fn judge_probe(url: &str, status: u16, body: &str) -> Check {
    let names_source = body.to_ascii_lowercase().contains("source");
    match status {
        400 if names_source => check(
            "listener",
            Verdict::Ok,
            format!(
                "{url} reachable, API key accepted, postgres ingest endpoint recognised (the probe \
                 was refused for its source, nothing stored)"
            ),
        ),
        400 => check(
            "listener",
            Verdict::Fail,
            format!(
                "{url} refused the probe for other fields than source ({}): this is not the \
                 postgres ingest endpoint; {FIX_URL}",
                short_answer(body)
            ),
        ),
        200..=299 => check(
            "listener",
            Verdict::Fail,
            format!(
                "{url} accepted the probe (source \"{PROBE_SOURCE}\") with {status}: the postgres \
                 ingest endpoint refuses it, so this is another endpoint (it may have stored the \
                 probe); {FIX_URL}"
            ),
        ),
        401 => check(
            "listener",
            Verdict::Fail,
            format!("{url} refused the API key (401); fix: [listener] api_key"),
        ),
        404 => check(
            "listener",
            Verdict::Fail,
            format!("{url} answered 404; {FIX_URL}"),
        ),
        429 => check(
            "listener",
            Verdict::Warn,
            format!("{url} reachable but rate limiting (429); the key and the path could not be checked"),
        ),
        _ => check(
            "listener",
            Verdict::Fail,
            format!("{url} answered {status}: {}", short_answer(body)),
        ),
    }
}

/// The listener: one probe that only the postgres ingest endpoint refuses the expected way.
fn listener(cfg: &Config) -> Check {
    let client = match Client::new(&daemon::shipper_options(&cfg.listener)) {
        Ok(c) => c,
        Err(e) => {
            return check(
                "listener",
                Verdict::Fail,
                format!("{e}; fix: [listener] url / ca_file"),
            )
        }
    };
    match client.post(&probe_body(&cfg.listener.project_id)) {
        Ok(r) => judge_probe(client.url(), r.status, &r.body),
        Err(e) => check(
            "listener",
            Verdict::Fail,
            format!("{e}; fix: check [listener] url, the network path and, for https, [listener] ca_file"),
        ),
    }
}

fn database_checks(cfg: &Config, pool: &Pool, out: &mut Vec<Check>) {
    match pool.check() {
        Ok(version) => out.push(check(
            "connection",
            Verdict::Ok,
            format!("{version} as {}", cfg.database.user),
        )),
        Err(e) => {
            out.push(check(
                "connection",
                Verdict::Fail,
                format!("{e}; fix: [database] host, port, name, user, password"),
            ));
            return;
        }
    }
    let mut client = match pool.acquire() {
        Ok(c) => c,
        Err(e) => {
            out.push(check("connection", Verdict::Fail, e.to_string()));
            return;
        }
    };
    let privileged = client
        .query_one(
            "SELECT pg_has_role(current_user, 'pg_monitor', 'USAGE') OR \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .map(|r| r.get::<_, bool>(0));
    out.push(match privileged {
        Ok(true) => check(
            "privileges",
            Verdict::Ok,
            format!("{} has pg_monitor", cfg.database.user),
        ),
        Ok(false) => check(
            "privileges",
            Verdict::Fail,
            format!(
                "{} lacks pg_monitor: other sessions' queries and the statistics views are hidden; \
                 fix: GRANT pg_monitor TO {} (see etc/monitor-role.sql)",
                cfg.database.user, cfg.database.user
            ),
        ),
        Err(e) => check("privileges", Verdict::Fail, e.to_string()),
    });
    let installed = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'",
            &[],
        )
        .map(|r| r.map(|r| r.get::<_, String>(0)));
    out.push(match installed {
        Ok(Some(v)) => {
            match client.query_one("SELECT count(*) FROM pg_stat_statements(false)", &[]) {
                Ok(r) => check(
                    "pg_stat_statements",
                    Verdict::Ok,
                    format!("version {v}, {} entries", r.get::<_, i64>(0)),
                ),
                Err(e) => check(
                    "pg_stat_statements",
                    Verdict::Fail,
                    format!(
                        "installed but not readable ({}); fix: add pg_stat_statements to \
                     shared_preload_libraries and restart the server",
                        e.as_db_error()
                            .map_or(e.to_string(), |d| d.message().to_string())
                    ),
                ),
            }
        }
        Ok(None) => check(
            "pg_stat_statements",
            Verdict::Fail,
            "not installed; fix: shared_preload_libraries = 'pg_stat_statements', restart, then \
             CREATE EXTENSION pg_stat_statements (statement statistics are missing until then)",
        ),
        Err(e) => check("pg_stat_statements", Verdict::Fail, e.to_string()),
    });
    out.push(log_check(cfg, &mut client));
    out.push(proc_check(&mut client));
    out.push(log_settings_check(&mut client));
}

/// The settings that make the log explain slow queries and spikes with bounded cost (events,
/// auto_explain); a warning lists what to change (docs/logs.md says why).
fn log_settings_check(client: &mut postgres::Client) -> Check {
    let rows = match client.query(logtail::analyze::ADVICE_SETTINGS_QUERY, &[]) {
        Ok(rows) => rows,
        Err(e) => return check("log settings", Verdict::Warn, e.to_string()),
    };
    let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let advice =
        logtail::analyze::settings_advice(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    if advice.is_empty() {
        check(
            "log settings",
            Verdict::Ok,
            "events and auto_explain plans are logged with bounded cost",
        )
    } else {
        check(
            "log settings",
            Verdict::Warn,
            format!("recommended: {}", advice.join("; ")),
        )
    }
}

fn log_check(cfg: &Config, client: &mut postgres::Client) -> Check {
    let source =
        match logtail::discover_from_server(client, cfg.collection.log_path.as_deref(), None) {
            Ok(Ok(s)) => s,
            Ok(Err(why)) => return check("server log", Verdict::Fail, why.0),
            Err(e) => return check("server log", Verdict::Fail, e.to_string()),
        };
    let path = match &source.follow {
        logtail::Follow::Path(p) => Some(p.clone()),
        _ => None,
    };
    match path.as_deref().map(std::fs::File::open) {
        Some(Err(e)) => check(
            "server log",
            Verdict::Fail,
            format!(
                "{}: {e}; fix: let the agent's user read it (group adm on Debian) or set [collection] log_path",
                source.description
            ),
        ),
        _ => check("server log", Verdict::Ok, source.description),
    }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/io` of this session's own backend.
fn proc_check(client: &mut postgres::Client) -> Check {
    let pid: i32 = match client.query_one("SELECT pg_backend_pid()", &[]) {
        Ok(r) => r.get(0),
        Err(e) => return check("backend /proc", Verdict::Fail, e.to_string()),
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"));
    match (stat, io) {
        (Ok(_), Ok(_)) => check("backend /proc", Verdict::Ok, "CPU, memory and I/O of every backend are readable"),
        (Ok(_), Err(_)) => check(
            "backend /proc",
            Verdict::Warn,
            "CPU and memory per query readable, I/O bytes not; fix: run the agent as the PostgreSQL OS user \
             for per-query I/O bytes",
        ),
        (Err(e), _) => check(
            "backend /proc",
            Verdict::Warn,
            format!("/proc/{pid} not readable ({e}): the server is not on this host or /proc is hidden; per-query CPU is unavailable"),
        ),
    }
}

/// Runs every check, prints one line each, and returns the exit status.
pub fn run(cfg: &Config) -> i32 {
    let mut out = vec![check("config", Verdict::Ok, "valid")];
    database_checks(cfg, &crate::pool::Pool::new(&cfg.database), &mut out);
    out.push(writable_dir("spool directory", &cfg.buffer.path));
    out.push(writable_dir("state directory", &cfg.collection.state_dir));
    out.push(listener(cfg));
    for c in &out {
        println!("{c}");
    }
    if out.iter().any(|c| c.verdict == Verdict::Fail) {
        cli::EXIT_TEST_FAILED
    } else {
        cli::EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_400_naming_source_is_the_postgres_endpoint() {
        let url = "http://l/ingest/postgres";
        let ok = judge_probe(
            url,
            400,
            "{\"error\":\"Bad Request\",\"details\":\"source must be one of the four\"}",
        );
        assert_eq!(ok.verdict, Verdict::Ok, "{ok}");
        for (status, body) in [
            (
                400,
                "{\"error\":\"Bad Request\",\"details\":\"request_id is required\"}",
            ),
            (200, "{\"success\":true,\"row_id\":1}"),
            (404, "{\"error\":\"Not Found\"}"),
        ] {
            let c = judge_probe("http://l/ingest/php", status, body);
            assert_eq!(c.verdict, Verdict::Fail, "{c}");
            assert!(c.detail.contains("url must end in /ingest/postgres"), "{c}");
        }
        let c = judge_probe(url, 401, "");
        assert!(
            c.verdict == Verdict::Fail && c.detail.contains("api_key"),
            "{c}"
        );
    }

    #[test]
    fn the_probe_is_valid_for_the_postgres_schema_except_its_source() {
        let body = probe_body("proj");
        for field in ["\"project\":\"proj\"", "\"timestamp\":", "\"data\":{"] {
            assert!(body.contains(field), "{body}");
        }
        assert!(body.contains("\"source\":\"bitville_probe\""), "{body}");
        assert!(crate::payload::Source::parse(PROBE_SOURCE).is_none());
    }
}
