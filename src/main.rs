//! The `bitville-pg-agent` binary: wiring only (command line, configuration, logging, start).

use std::process::ExitCode;

use bitville_pg_agent::cli::{self, Mode};
use bitville_pg_agent::config;
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
    init_logging(loaded.config.log.level);
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
    cli::EXIT_OK
}

fn init_logging(level: log::LevelFilter) {
    let logger = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_utc_timestamps()
        // The driver and HTTP client are chatty at debug level; their warnings still show.
        .with_module_level("tokio_postgres", log::LevelFilter::Warn)
        .with_module_level("postgres", log::LevelFilter::Warn)
        .with_module_level("ureq", log::LevelFilter::Warn)
        .with_module_level("ureq_proto", log::LevelFilter::Warn)
        .with_module_level("rustls", log::LevelFilter::Warn);
    if let Err(e) = logger.init() {
        eprintln!("bitville-pg-agent: cannot start logging: {e}");
    }
}
