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
pub struct Blocked(libc::sigset_t);

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it spawns later.
pub fn block() -> std::io::Result<Blocked> {
    // SAFETY: sigset_t is plain data; it is initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write to it and the thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(Blocked(set))
}

/// Starts the thread that turns signals into requests on `shutdown`.
pub fn spawn_waiter(blocked: Blocked, shutdown: Shutdown) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: the set was built by `block`; sigwait writes the signal number to `sig`.
            let rc = unsafe { libc::sigwait(&blocked.0, &mut sig) };
            if rc != 0 {
                log::error!("sigwait failed: {}", std::io::Error::from_raw_os_error(rc));
                return;
            }
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
