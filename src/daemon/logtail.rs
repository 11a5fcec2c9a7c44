//! The log thread: finds the server log (from the server, or from the settings it gave before),
//! follows it, appends `pg_log` payloads and commits the log position only after the append;
//! hands correlated statements to the correlator as they are read.

use std::time::{Duration, Instant};

use crate::collect::correlate::{LoggedStatement, SharedCorrelator};
use crate::collect::{Backoff, CollectError};
use crate::logtail::{self, LogFeed};
use crate::wiring;

use super::context::{append_due, Context};
use super::status::WriteStreak;

/// How often the log thread polls the log file.
const LOG_POLL: Duration = Duration::from_secs(1);

/// Finds the server log (asking the server for its settings, or when it cannot be asked, using
/// the settings it gave before) and opens a feed on it.
fn open_log_feed(
    ctx: &Context,
    backoff: &mut Backoff,
    last_reason: &mut Option<String>,
) -> Option<LogFeed> {
    let (log_path, state_dir) = (
        ctx.config.collection.log_path.as_deref(),
        &ctx.config.collection.state_dir,
    );
    let asked = ctx.db_step("logtail", backoff, |c| {
        logtail::discover_from_server(c, log_path, Some(state_dir))
            .map_err(CollectError::query("logtail", "settings"))
    });
    // The server may be down (or paused): the settings it gave at an earlier start still find
    // the log, so the log keeps flowing while the database is unreachable.
    let found = match asked {
        Some(found) => found,
        None => {
            let cached = logtail::discover_from_cache(state_dir, log_path)?;
            log::info!(
                "the server's log settings are not available now: using those it gave before"
            );
            cached
        }
    };
    match found {
        Ok(source) => Some(
            wiring::log_feed(&source, &ctx.config, Instant::now())
                .with_plan_store(ctx.plans.clone())
                .with_event_store(ctx.events.clone()),
        ),
        Err(why) => {
            if last_reason.as_deref() != Some(why.0.as_str()) {
                log::warn!("no server log is tailed: {}", why.0);
                *last_reason = Some(why.0);
            }
            None
        }
    }
}

/// The thread's body (until a stop).
pub(super) fn run_logtail(ctx: &Context, corr: &SharedCorrelator) {
    let mut last_reason = None;
    // One backoff across the attempts, so a settings query that keeps timing out is skipped.
    let mut backoff = Backoff::default();
    let mut feed = loop {
        if let Some(feed) = open_log_feed(ctx, &mut backoff, &mut last_reason) {
            break feed;
        }
        if ctx.shutdown.wait(ctx.config.collection.interval) {
            return;
        }
    };
    feed.route_correlated();
    // Correlated statements go to the correlator as soon as they are read (they also stay in
    // the summary payloads, which are what the log position commits).
    let hand_over = |feed: &mut LogFeed| {
        let statements: Vec<LoggedStatement> = feed
            .take_correlated()
            .into_iter()
            .filter_map(LoggedStatement::from_log_json)
            .collect();
        if !statements.is_empty() {
            corr.lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_logged(statements, crate::payload::unix_now());
        }
    };
    // A flush whose payloads could not all be appended is retried as a whole before the feed is
    // polled again: committing a later position would skip its entries.
    let mut pending = None;
    let mut commit_streak = WriteStreak::default();
    loop {
        let stopped = ctx.shutdown.wait(LOG_POLL);
        // Poll until the feed has nothing more to hand out, so a burst is read as fast as it is
        // written (the feed's budget bounds what is shipped; every flush is appended and
        // committed before the next read, so memory stays bounded).
        loop {
            let now = Instant::now();
            let flush = match pending.take() {
                Some(f) => Some(f),
                None if stopped => Some(feed.flush(now)),
                None => feed.poll(now),
            };
            hand_over(&mut feed);
            let Some(flush) = flush else { break };
            if !ctx.append_all(&flush.payloads) {
                if !stopped {
                    pending = Some(flush);
                }
                break;
            }
            commit_streak.record("logtail: saving the log position", feed.commit(&flush));
            if stopped || ctx.shutdown.is_stopped() {
                break;
            }
        }
        if stopped {
            break;
        }
    }
    // The sampler may have taken its last records before these statements came: whichever
    // thread stops last ships what is left.
    append_due(ctx, corr, true);
}
