//! Signals: SIGTERM and SIGINT stop the agent, SIGHUP asks for a reload.
//!
//! The signals are blocked in every thread (the mask is inherited, so [`block`] runs before any
//! thread is spawned) and one thread takes them with `sigwait`. That thread is an ordinary thread,
//! so it may lock and notify the [`Shutdown`]; a signal handler could not. While no signal
//! arrives it sleeps in the kernel and costs nothing. A second stop signal while shutting down
//! exits at once.

use crate::shutdown::Shutdown;

/// The signals the agent takes over.
const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The exit status of a forced exit (a second stop signal).
pub const EXIT_FORCED: i32 = 130;

/// A set of blocked signals, to be handed to [`spawn_waiter`].
pub struct Blocked(crate::sys::SignalSet);

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it spawns later.
pub fn block() -> std::io::Result<Blocked> {
    crate::sys::block_signals(&SIGNALS).map(Blocked)
}

/// Starts the thread that turns signals into requests on `shutdown`.
pub fn spawn_waiter(blocked: Blocked, shutdown: Shutdown) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let sig = match crate::sys::wait_signal(&blocked.0) {
                Ok(sig) => sig,
                Err(e) => {
                    log::error!("sigwait failed: {e}");
                    return;
                }
            };
            match sig {
                libc::SIGHUP => {
                    log::info!("SIGHUP: reloading the configuration");
                    shutdown.request_reload();
                }
                _ if shutdown.is_stopped() => {
                    log::warn!("second stop signal: exiting at once");
                    std::process::exit(EXIT_FORCED);
                }
                _ => {
                    let name = if sig == libc::SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    log::info!("{name}: stopping");
                    shutdown.stop();
                }
            }
        })?;
    Ok(())
}
