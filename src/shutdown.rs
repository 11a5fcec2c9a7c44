//! The stop and reload requests every thread watches.
//!
//! A [`Shutdown`] is shared by all threads. Waiting on it ([`Shutdown::wait_until`]) is how a
//! thread sleeps between cycles: it wakes at its deadline or at once when a stop is requested, so
//! shutdown never waits for a sleep to run out. Reload requests are counted, so a thread can tell
//! that one arrived since it last looked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Flags {
    reloads: u64,
}

struct Inner {
    stopped: AtomicBool,
    flags: Mutex<Flags>,
    changed: Condvar,
}

/// What [`Shutdown::wait_event`] woke up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A stop was requested.
    Stop,
    /// A reload was requested; the number is the reload count now.
    Reload(u64),
}

/// The shared stop/reload token. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A token with nothing requested.
    pub fn new() -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                stopped: AtomicBool::new(false),
                flags: Mutex::default(),
                changed: Condvar::new(),
            }),
        }
    }

    /// Requests every thread to stop; wakes all waiters.
    pub fn stop(&self) {
        let _guard = self.inner.flags.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Requests a configuration reload; wakes all waiters.
    pub fn request_reload(&self) {
        let mut flags = self.inner.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags.reloads += 1;
        self.inner.changed.notify_all();
    }

    /// How many reloads were requested so far.
    pub fn reloads(&self) -> u64 {
        self.inner
            .flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reloads
    }

    /// Sleeps until `deadline` or a stop request, whichever comes first. Returns true when
    /// stopped.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut flags = self.inner.flags.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.is_stopped() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            flags = self
                .inner
                .changed
                .wait_timeout(flags, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Blocks until a stop is requested or the reload count exceeds `seen_reloads`.
    pub fn wait_event(&self, seen_reloads: u64) -> Event {
        let mut flags = self.inner.flags.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.is_stopped() {
                return Event::Stop;
            }
            if flags.reloads > seen_reloads {
                return Event::Reload(flags.reloads);
            }
            flags = self
                .inner
                .changed
                .wait(flags)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sleeps for `d` or until a stop request. Returns true when stopped.
    pub fn wait(&self, d: Duration) -> bool {
        self.wait_until(Instant::now() + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wakes_a_long_wait() {
        let s = Shutdown::new();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait(Duration::from_secs(3600)))
        };
        s.stop();
        assert!(waiter.join().unwrap(), "the waiter saw the stop");
        assert!(s.is_stopped());
    }

    #[test]
    fn a_wait_without_stop_returns_false_and_reloads_count() {
        let s = Shutdown::new();
        assert!(!s.wait(Duration::from_millis(1)));
        s.request_reload();
        s.request_reload();
        assert_eq!(s.reloads(), 2);
        assert_eq!(s.wait_event(0), Event::Reload(2));
        s.stop();
        assert_eq!(s.wait_event(2), Event::Stop);
    }
}
