//! The `bitville-pg-agent` binary: wiring only (command line, configuration, logging, start).

use std::process::ExitCode;

use bitville_pg_agent::cli::{self, Mode};
use bitville_pg_agent::config;
use bitville_pg_agent::logging;
use bitville_pg_agent::pool::Pool;

fn main() -> ExitCode {
    ExitCode::from(run() as u8)
}

fn run() -> i32 {
    let cli = match cli::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("bitville-pg-agent: {e}\n\n{}", cli::USAGE);
            return cli::EXIT_USAGE;
        }
    };
    match cli.mode {
        Mode::Help => {
            print!("{}", cli::USAGE);
            return cli::EXIT_OK;
        }
        Mode::Version => {
            println!("bitville-pg-agent {}", env!("CARGO_PKG_VERSION"));
            return cli::EXIT_OK;
        }
        Mode::CheckConfig | Mode::Run => {}
    }
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("bitville-pg-agent: configuration error: {e}");
            return cli::EXIT_CONFIG;
        }
    };
    if cli.mode == Mode::CheckConfig {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        print!("{}", config::describe(&loaded.raw));
        println!("\n; configuration is valid");
        return cli::EXIT_OK;
    }
    if let Err(e) = logging::init(loaded.config.log.level, loaded.config.log.file.as_deref()) {
        eprintln!("bitville-pg-agent: cannot start logging: {e}");
        return cli::EXIT_CONFIG;
    }
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    let pool = Pool::new(&loaded.config.database);
    match pool.check() {
        Ok(version) => log::info!("connected: {version}"),
        Err(e) => {
            log::error!("database check failed: {e}");
            return cli::EXIT_DATABASE;
        }
    }
    if let Some(pid_file) = &cli.pid_file {
        if let Err(e) = logging::write_pid_file(pid_file) {
            log::error!("cannot write pid file {}: {e}", pid_file.display());
            return cli::EXIT_FAILURE;
        }
    }
    cli::EXIT_OK
}
