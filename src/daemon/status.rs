//! The status thread: rewrites the status file (the [`AgentReport`](crate::agent_report::AgentReport)'s
//! lines) when the breaker changes state and when a backlog has drained (and logs how long that
//! took), when anything else in it changed, and at least once a minute; a failed write is
//! logged once per streak.

use std::time::Instant;

use crate::ship::StatusHandle;
use crate::status;

use super::context::Context;

/// Logs a failed status write once per streak of failures, and the recovery.
#[derive(Default)]
pub(super) struct WriteStreak(Option<String>);

impl WriteStreak {
    pub(super) fn record<E: std::fmt::Display>(&mut self, what: &str, result: Result<(), E>) {
        match (result, self.0.is_some()) {
            (Ok(()), true) => {
                log::info!("{what}: writing works again");
                self.0 = None;
            }
            (Ok(()), false) => {}
            (Err(e), false) => {
                log::warn!("{what}: {e} (logged once until it works again)");
                self.0 = Some(e.to_string());
            }
            (Err(e), true) => self.0 = Some(e.to_string()),
        }
    }
}

/// The status thread: rewrites the status file at once when the breaker changes state and when
/// a backlog has drained (logging how long it took), within [`status::STATUS_EVERY`] when
/// anything else in it changed, and every [`status::heartbeat`] when nothing did.
///
/// It sleeps until the shipper publishes (after every request: a breaker change, a failed send
/// that starts a backlog, the ack that empties the spool) or its next look is due, not on a
/// poll: each wake-up costs about 40 µs of CPU on a VM and each rewrite (a rename) about 100 µs,
/// and a 1 s poll with a rewrite every 5 s was 5 ms of CPU a minute under pgbench -c 8
/// (BENCHMARKS.md). A stop wakes it through [`StatusHandle::wake_waiters`].
pub(super) fn run_status(ctx: &Context, ship: &StatusHandle) {
    let mut watch = status::StatusWatch::new();
    let mut streak = WriteStreak::default();
    let heartbeat = status::heartbeat(ctx.config.collection.interval);
    let mut seen = ship.version();
    let mut last: Option<(Vec<(&'static str, String)>, Instant)> = None;
    let mut next_look = Instant::now();
    loop {
        let shipped = ship.get();
        let o = status::Observation {
            breaker: shipped.breaker.name(),
            pending: ctx.spool.stats().n_pending,
            failing: shipped.last_error.is_some()
                || !matches!(shipped.breaker, crate::ship::breaker::State::Closed { .. }),
            sent: shipped.stats.n_sent,
        };
        let now = Instant::now();
        let d = watch.observe(o, now);
        if let Some(line) = d.log {
            log::info!("{line}");
        }
        let lines = ctx.report(ship, None).status_lines();
        let looking = now >= next_look;
        if looking {
            next_look = now + status::STATUS_EVERY;
        }
        let write = match &last {
            None => true,
            Some((written, at)) => {
                d.write
                    || now.duration_since(*at) >= heartbeat
                    || (looking && !status::same_but_uptime(written, &lines))
            }
        };
        if write {
            let result = status::write(&ctx.config.collection.state_dir, &lines);
            streak.record(&status_what(ctx), result);
            watch.written(o);
            last = Some((lines, now));
        }
        if ctx.shutdown.is_stopped() {
            break;
        }
        seen = ship.wait_change(seen, next_look, || ctx.shutdown.is_stopped());
        if ctx.shutdown.is_stopped() {
            break;
        }
    }
}

/// What the status file is, for log lines.
pub(super) fn status_what(ctx: &Context) -> String {
    format!(
        "status file in {}",
        ctx.config.collection.state_dir.display()
    )
}

/// Writes the status file: the agent's report as `key: value` lines.
pub(super) fn write_status(ctx: &Context, ship: &StatusHandle) -> std::io::Result<()> {
    let lines = ctx.report(ship, None).status_lines();
    status::write(&ctx.config.collection.state_dir, &lines)
}
