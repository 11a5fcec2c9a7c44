//! The status thread: rewrites the status file (the [`AgentReport`](crate::agent_report::AgentReport)'s
//! lines) when the breaker changes state and when a backlog has drained (and logs how long that
//! took), otherwise every few seconds; a failed write is logged once per streak.

use std::time::{Duration, Instant};

use crate::ship::StatusHandle;
use crate::status;

use super::context::Context;

/// How often the thread looks at the shipper and the spool. Each wake-up costs about 40 µs of
/// CPU on a VM (timer, futex, scheduling), so at 250 ms this loop alone was 12.6 ms of CPU a
/// minute under pgbench -c 8, about a quarter of the agent's steady cost (BENCHMARKS.md); at
/// 1 s a breaker change or a drained backlog still reaches the file within a second.
const STATUS_POLL: Duration = Duration::from_secs(1);

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

/// The status thread: rewrites the status file when the breaker changes state and when a
/// backlog has drained (logging how long it took), otherwise every few seconds.
pub(super) fn run_status(ctx: &Context, ship: &StatusHandle) {
    let mut watch = status::StatusWatch::new();
    let mut streak = WriteStreak::default();
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
        if d.write {
            streak.record(&status_what(ctx), write_status(ctx, ship));
            watch.written(o, now);
        }
        if ctx.shutdown.wait(STATUS_POLL) {
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
