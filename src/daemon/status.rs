//! The status thread: rewrites the status file (the [`AgentReport`](crate::agent_report::AgentReport)'s
//! lines) when the breaker changes state and when a backlog has drained (and logs how long that
//! took), when anything else in it changed, and at least once a minute ([`status::plan`]); a
//! failed write is logged once per streak. It wakes only when the shipper publishes, for a
//! write the plan put off, for the heartbeat and for a stop.

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
/// a backlog has drained (logging how long it took), within [`status::STATUS_EVERY`] of the
/// shipper's next request when anything else in it changed, and every [`status::heartbeat`]
/// when nothing did ([`status::plan`]).
///
/// It sleeps until the shipper publishes (after every request: a breaker change, a failed send
/// that starts a backlog, the ack that empties the spool) or the plan's next look, never on a
/// poll: a wake-up after a long sleep costs 40 to 130 µs of CPU on this VM and a rewrite (a
/// rename) about 100 µs; a 1 s poll with a rewrite every 5 s was 5 ms of CPU a minute under
/// pgbench -c 8, a look every 5 s 1 ms (BENCHMARKS.md). A stop wakes it through
/// [`StatusHandle::wake_waiters`].
pub(super) fn run_status(ctx: &Context, ship: &StatusHandle) {
    let mut watch = status::StatusWatch::new();
    let mut streak = WriteStreak::default();
    let heartbeat = status::heartbeat(ctx.config.collection.interval);
    let mut seen = ship.version();
    let mut last: Option<(Vec<(&'static str, String)>, Instant)> = None;
    // Since when the lines differ (the uptime aside) from those written.
    let mut dirty_since: Option<Instant> = None;
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
        let changed = last
            .as_ref()
            .is_some_and(|(written, _)| !status::same_but_uptime(written, &lines));
        if !changed {
            dirty_since = None;
        } else if dirty_since.is_none() {
            dirty_since = Some(now);
        }
        let plan = status::plan(
            d.write,
            dirty_since.map(|t| now.duration_since(t)),
            last.as_ref().map(|(_, at)| now.duration_since(*at)),
            heartbeat,
        );
        if plan.write {
            let result = status::write(&ctx.config.collection.state_dir, &lines);
            streak.record(&status_what(ctx), result);
            watch.written(o);
            last = Some((lines, now));
            dirty_since = None;
        }
        if ctx.shutdown.is_stopped() {
            break;
        }
        seen = ship.wait_change(seen, now + plan.look_in, || ctx.shutdown.is_stopped());
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
