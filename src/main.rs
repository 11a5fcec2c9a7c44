//! The `bitville-pg-agent` binary: wiring only (command line, configuration, logging, start).

#![deny(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use bitville_pg_agent::cli::{self, Cli, Mode};
use bitville_pg_agent::config::{self, Loaded};
use bitville_pg_agent::pool::{ConnectFailure, Pool};
use bitville_pg_agent::ship::Shipper;
use bitville_pg_agent::shutdown::Shutdown;
use bitville_pg_agent::spool::Spool;
use bitville_pg_agent::{daemon, logging, oneshot, selftest, signals, status};

/// A file in the state directory that says the database was reached once: after that, a server
/// that is down at start is waited for instead of ending the agent.
const DB_SEEN_FILE: &str = "database-seen";

fn main() -> ExitCode {
    bitville_pg_agent::selfstats::limit_malloc_arenas();
    ExitCode::from(run() as u8)
}

fn run() -> i32 {
    let cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("bitville-pg-agent: {e}\n\n{}", cli::USAGE);
            return cli::EXIT_USAGE;
        }
    };
    match &cli.mode {
        Mode::Help => {
            print!("{}", cli::USAGE);
            return cli::EXIT_OK;
        }
        Mode::Version => {
            println!("bitville-pg-agent {}", env!("CARGO_PKG_VERSION"));
            return cli::EXIT_OK;
        }
        Mode::AnalyzeLog { file, prefix } => return oneshot::analyze_log(file, prefix.as_deref()),
        _ => {}
    }
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("bitville-pg-agent: configuration error: {e}");
            return cli::EXIT_CONFIG;
        }
    };
    match cli.mode {
        Mode::CheckConfig => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let (budget, budget_warning) = daemon::budget_note(&loaded.config);
            if let Some(w) = budget_warning {
                eprintln!("warning: {w}");
            }
            print!("{}", config::describe(&loaded.raw));
            println!("\n; {budget}");
            println!("; configuration is valid");
            return cli::EXIT_OK;
        }
        Mode::Report { since_s, at } => {
            return bitville_pg_agent::spike::render::run(
                &loaded.config.collection.state_dir,
                since_s.map(|s| s as f64),
                at.map(|a| a as f64),
                bitville_pg_agent::payload::unix_now(),
            );
        }
        Mode::Status => {
            let stale = status::stale_after(loaded.config.collection.interval);
            let (report, healthy) = status::report(&loaded.config.collection.state_dir, stale);
            print!("{report}");
            return if healthy {
                cli::EXIT_OK
            } else {
                cli::EXIT_NOT_RUNNING
            };
        }
        _ => {}
    }
    // A daemon takes its signals on one thread: block them before any thread exists.
    let blocked = if cli.mode == Mode::Run {
        match signals::block() {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("bitville-pg-agent: cannot block signals: {e}");
                return cli::EXIT_FAILURE;
            }
        }
    } else {
        None
    };
    if let Err(e) = logging::init(loaded.config.log.level, loaded.config.log.file.as_deref()) {
        eprintln!("bitville-pg-agent: cannot start logging: {e}");
        return cli::EXIT_CONFIG;
    }
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    let cfg = &loaded.config;
    match cli.mode {
        Mode::Test => selftest::run(cfg),
        Mode::DryRun => {
            let (pool, extra_pools) = daemon::pools(cfg);
            oneshot::dry_run(cfg, &pool, &extra_pools)
        }
        Mode::Once => match open_storage(&loaded) {
            Ok((spool, shipper)) => {
                let (pool, extra_pools) = daemon::pools(cfg);
                // While paused not even the start-up check queries the database.
                if !oneshot::paused(cfg) {
                    if let Err(code) = check_database(&pool, &cfg.collection.state_dir, false) {
                        return code;
                    }
                }
                oneshot::once(cfg, &pool, &extra_pools, spool, shipper)
            }
            Err(code) => code,
        },
        _ => run_daemon(&cli, loaded, blocked.expect("signals blocked for run")),
    }
}

/// Opens the spool and builds the shipper; the error is the exit status.
fn open_storage(loaded: &Loaded) -> Result<(Arc<Spool>, Shipper), i32> {
    let cfg = &loaded.config;
    if let Err(e) = std::fs::create_dir_all(&cfg.collection.state_dir) {
        log::error!(
            "cannot create the state directory {}: {e}",
            cfg.collection.state_dir.display()
        );
        return Err(cli::EXIT_STORAGE);
    }
    let spool = match Spool::open(daemon::spool_options(&cfg.buffer)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::error!("cannot open the spool: {e}");
            return Err(cli::EXIT_STORAGE);
        }
    };
    match Shipper::new(spool.clone(), daemon::shipper_options(&cfg.listener)) {
        Ok(shipper) => Ok((spool, shipper)),
        Err(e) => {
            log::error!("listener configuration: {e}");
            Err(cli::EXIT_CONFIG)
        }
    }
}

/// The start-up check. A wrong password, a missing database or a refused role end the agent
/// (they do not fix themselves). A server that is down or starting is waited for when the agent
/// has reached it before (`tolerate_down`), so a database restart never stops monitoring.
fn check_database(pool: &Pool, state_dir: &Path, tolerate_down: bool) -> Result<(), i32> {
    let seen = state_dir.join(DB_SEEN_FILE);
    match pool.check() {
        Ok(version) => {
            log::info!("connected: {version}");
            if !seen.exists() {
                let _ = std::fs::write(&seen, b"");
            }
            Ok(())
        }
        Err(e)
            if tolerate_down
                && seen.exists()
                && matches!(
                    e.failure,
                    ConnectFailure::ServerDown | ConnectFailure::NotReady | ConnectFailure::Blocked
                ) =>
        {
            log::warn!("database check failed: {e}; running on, the agent reconnects when the server is back");
            Ok(())
        }
        Err(e) => {
            log::error!("database check failed: {e}");
            Err(cli::EXIT_DATABASE)
        }
    }
}

fn run_daemon(cli: &Cli, loaded: Loaded, blocked: signals::Blocked) -> i32 {
    let cfg = &loaded.config;
    let (spool, shipper) = match open_storage(&loaded) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (pool, extra_pools) = daemon::pools(cfg);
    if let Err(code) = check_database(&pool, &cfg.collection.state_dir, true) {
        return code;
    }
    let shutdown = Shutdown::new();
    if let Err(e) = signals::spawn_waiter(blocked, shutdown.clone()) {
        log::error!("cannot start the signal thread: {e}");
        return cli::EXIT_FAILURE;
    }
    if let Some(pid_file) = &cli.pid_file {
        if let Err(e) = logging::write_pid_file(pid_file) {
            log::error!("cannot write pid file {}: {e}", pid_file.display());
            return cli::EXIT_FAILURE;
        }
    }
    let code = daemon::run(
        cli.config.as_deref(),
        loaded,
        pool,
        extra_pools,
        spool,
        shipper,
        shutdown,
    );
    if let Some(pid_file) = &cli.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    code
}
