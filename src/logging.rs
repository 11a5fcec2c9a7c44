//! The agent's own log: `log` + `simple_logger`, UTC timestamps, to standard error or a file.
//!
//! With `[log] file`, the file is opened for appending and put in place of standard error
//! (`dup2`), so everything that writes to stderr (the logger, a panic message) lands in it.
//! [`reopen`] repeats that after logrotate moved the file away (on SIGHUP).

use std::path::Path;

/// Starts logging at `level`, to `file` if given (else standard error).
pub fn init(level: log::LevelFilter, file: Option<&Path>) -> std::io::Result<()> {
    if let Some(path) = file {
        reopen(path)?;
    }
    // The logger itself passes every level; the level in force is `log`'s max level, the one
    // switch `set_level` can move both ways (a logger built with `level` would drop whatever a
    // reload enables above it).
    let logger = simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Trace)
        .with_utc_timestamps()
        // The driver and HTTP client are chatty below warn.
        .with_module_level("tokio_postgres", log::LevelFilter::Warn)
        .with_module_level("postgres", log::LevelFilter::Warn)
        .with_module_level("ureq", log::LevelFilter::Warn)
        .with_module_level("ureq_proto", log::LevelFilter::Warn)
        .with_module_level("rustls", log::LevelFilter::Warn);
    logger.init().map_err(std::io::Error::other)?;
    set_level(level);
    Ok(())
}

/// Changes the level of a running logger (configuration reload).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Opens `path` for appending and makes it the process's standard error.
pub fn reopen(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    crate::sys::redirect_stderr(&file)
}

/// Writes the process id to `path` (for init scripts), atomically so that an init script never
/// reads half a pid ([`Durability::Atomic`](crate::fsutil::Durability::Atomic): a pid file is meaningless after a reboot anyway).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let pid = format!("{}\n", std::process::id());
    crate::fsutil::write_atomically(path, pid.as_bytes(), crate::fsutil::Durability::Atomic)
}
