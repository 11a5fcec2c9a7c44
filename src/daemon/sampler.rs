//! The sampler thread: samples pg_stat_activity every `sample_interval` (faster while a spike
//! lasts, up to 4 times slower while the cost control says so), appends spike reports at once
//! and the activity summary at every interval boundary, hands the interval's correlated
//! statements to the shared correlator and appends its records when they are due.

use std::time::{Duration, Instant};

use crate::collect::activity::ActivitySampler;
use crate::collect::correlate::SharedCorrelator;
use crate::collect::Backoff;
use crate::json::Json;
use crate::schedule::Ticker;
use crate::spike::watch::Watch;
use crate::wiring;

use super::context::{append_due, Context};

/// Least time between two hand-overs of the spike's top requests to the correlator: the top
/// set changes slowly, while ranking it and taking the correlator's lock 4 times a second in a
/// burst is work for nothing.
const PREFER_EVERY: Duration = Duration::from_secs(1);

/// The thread's body (until a stop).
pub(super) fn run_sampler(ctx: &Context, corr: &SharedCorrelator) {
    let cfg = &ctx.config.collection;
    let mut sampler = ActivitySampler::new(wiring::activity_config(&ctx.config));
    let mut watch = Watch::new(&ctx.config.spike, cfg.sample_interval, Some(&cfg.state_dir))
        .with_event_store(ctx.events.clone());
    let deep_options = wiring::deep_options(&ctx.config);
    // The summary (with the interval's timeline and load attribution) goes to the spool at
    // once; the requests' statements wait in the correlator for their log lines (a short
    // grace), and their records are appended when due.
    let close = |sampler: &mut ActivitySampler, watch: &mut Watch| {
        let (mut summary, statements) = sampler.finish_interval_parts();
        watch.finish_interval(&mut summary);
        let counts = corr.lock().unwrap_or_else(|p| p.into_inner()).take_counts();
        summary.data.push("correlated", counts);
        ctx.append_all(std::slice::from_ref(&summary));
        let window = |k| {
            summary.data.get(k).and_then(|v| match v {
                Json::Float(f) => Some(*f),
                _ => None,
            })
        };
        corr.lock().unwrap_or_else(|p| p.into_inner()).add_sampled(
            statements,
            window("interval_start"),
            window("interval_end"),
            crate::payload::unix_now(),
        );
    };
    let mut backoff = Backoff::default();
    let start = Instant::now();
    let mut bursting = false;
    let mut samples = Ticker::new(start, cfg.sample_interval);
    let mut summaries = Ticker::new(start, cfg.interval);
    let mut next_summary = summaries.next_after(start).at;
    let mut at = samples.next_after(start).at;
    // One snapshot refilled by every sample (no allocation per sample in steady state).
    let mut snapshot = crate::spike::SampleSnapshot::default();
    let mut preferred: (Option<Instant>, Vec<String>) = (None, Vec::new());
    loop {
        if ctx.shutdown.wait_until(at) {
            break;
        }
        if ctx
            .db_step("activity", &mut backoff, |c| sampler.sample(c))
            .is_some()
        {
            // Spike reports go to the spool at once, not at the interval's end.
            sampler.fill_spike_snapshot(&mut snapshot);
            ctx.append_all(&watch.observe(&mut snapshot, &mut |req| {
                ctx.db_step("spike_deep", &mut Backoff::default(), |c| {
                    crate::spike::deep::run(c, &deep_options, req)
                })
            }));
            let due = preferred.0.map_or(true, |t| t.elapsed() >= PREFER_EVERY);
            if watch.in_spike() && due {
                preferred.0 = Some(Instant::now());
                let top = watch.top_requests(crate::collect::correlate::MAX_PREFERRED);
                if top != preferred.1 {
                    preferred.1.clone_from(&top);
                    corr.lock().unwrap_or_else(|p| p.into_inner()).prefer(top);
                }
            }
        }
        let now = Instant::now();
        if now >= next_summary {
            close(&mut sampler, &mut watch);
            next_summary = summaries.next_after(now).at;
        }
        append_due(ctx, corr, false);
        ctx.health.set_sample_cost(sampler.cost_report());
        // Cost control may stretch the period (bounded: 4x); a stretched period is paced like a
        // burst, off the ticker, and the boundaries it passes are not overruns.
        let period = watch.next_period() * sampler.interval_stretch();
        sampler.set_sub_second(period < Duration::from_secs(1));
        let was_bursting = std::mem::replace(&mut bursting, period != cfg.sample_interval);
        at = if bursting {
            (at + period).max(Instant::now())
        } else {
            let tick = samples.next_after(Instant::now());
            // After a burst the normal boundaries it passed were not missed.
            if tick.skipped > 0 && !was_bursting {
                ctx.health.overran("activity sampler", tick.skipped);
            }
            tick.at
        };
    }
    ctx.append_all(&watch.stop(&mut |req| {
        ctx.db_step("spike_deep", &mut Backoff::default(), |c| {
            crate::spike::deep::run(c, &deep_options, req)
        })
    }));
    close(&mut sampler, &mut watch);
    append_due(ctx, corr, true);
}
