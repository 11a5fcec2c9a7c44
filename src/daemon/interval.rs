//! The interval thread: at every interval boundary runs the interval cycle (pg_stat_statements
//! deltas, server health, host figures, with the agent's own report in `data.agent`), appends
//! what it returns and syncs the spool.

use std::time::Instant;

use crate::agent_report::IntervalCost;
use crate::collect::cycle::IntervalCycle;
use crate::schedule::Ticker;
use crate::ship::StatusHandle;
use crate::{selfstats, wiring};

use super::context::Context;

/// The interval thread's body (until a stop).
pub(super) fn run_interval(ctx: &Context, ship: &StatusHandle) {
    let mut options = wiring::cycle_options(&ctx.config);
    options.statements.plans = Some(ctx.plans.clone());
    let mut cycle = IntervalCycle::new(options);
    cycle.prime(ctx);
    let mut cpu_before = selfstats::usage().cpu_total();
    let mut ticker = Ticker::new(Instant::now(), ctx.config.collection.interval);
    loop {
        let tick = ticker.next_after(Instant::now());
        if tick.skipped > 0 {
            ctx.health.overran("interval collection", tick.skipped);
        }
        if ctx.shutdown.wait_until(tick.at) {
            break;
        }
        let payloads = cycle.run(ctx, || {
            let cpu_now = selfstats::usage().cpu_total();
            let cost = IntervalCost {
                usage: selfstats::usage(),
                cpu_interval: cpu_now.saturating_sub(cpu_before),
                db_time: ctx.health.take_db_time(),
            };
            cpu_before = cpu_now;
            ctx.report(ship, Some(cost)).to_json()
        });
        ctx.append_all(&payloads);
        if let Err(e) = ctx.spool.sync() {
            log::error!("spool sync failed: {e}");
        }
        selfstats::release_free_memory();
    }
}
