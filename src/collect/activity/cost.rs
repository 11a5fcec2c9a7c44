//! Each sample's own CPU time (the sampler thread's, around [`ActivitySampler::sample`]), fed
//! to the adaptive cost control, and what the sampler thread reads back from it: the interval
//! stretch and the report for `data.agent.sample_cost`.
//!
//! Invariants: one change of level is logged once, when it happens (a warning when degrading,
//! info when recovering); the levels' effect on `/proc` reads lives in `execution::read_pid`.

use std::time::Instant;

use super::ActivitySampler;
use crate::collect::cost_control::{CostReport, Level};

impl ActivitySampler {
    /// Feeds the CPU the sample took since `cpu_before` (none when the thread clock cannot be
    /// read) to the cost control, and logs a change of level.
    pub(super) fn observe_cost(&mut self, cpu_before: Option<std::time::Duration>) {
        let now = Instant::now();
        let since = self
            .last_sample_end
            .map_or(std::time::Duration::ZERO, |t| now.duration_since(t));
        self.last_sample_end = Some(now);
        let (Some(before), Some(after)) = (cpu_before, crate::sys::thread_cpu_time()) else {
            return;
        };
        let Some(ch) = self.cost.observe(after.saturating_sub(before), since) else {
            return;
        };
        let budget_ms = self.cfg.sample_cpu_budget.as_secs_f64() * 1000.0;
        let cpu_ms = ch.cpu.as_secs_f64() * 1000.0;
        if ch.to > ch.from {
            log::warn!(
                "activity: samples cost {cpu_ms:.2} ms of CPU per sample interval, over the \
                 budget of {budget_ms} ms (sample_cpu_budget_ms): cost level {} ({}): {}",
                ch.to.index(),
                ch.to.name(),
                ch.to.what()
            );
        } else {
            log::info!(
                "activity: samples cost {cpu_ms:.2} ms of CPU per sample interval, under half the \
                 budget of {budget_ms} ms: back to cost level {} ({}): {}",
                ch.to.index(),
                ch.to.name(),
                ch.to.what()
            );
        }
    }

    /// By how much the sampler thread stretches the sample interval now (1, 2 or 4).
    pub fn interval_stretch(&self) -> u32 {
        self.cost.level().stretch()
    }

    /// Says whether the next samples come faster than once a second (a spike's burst): then a
    /// backend's `/proc/<pid>/io` is read one sample in four (about once a second at 250 ms), as
    /// at cost level `no_io`, while `stat` stays at every sample (CPU and run state at burst
    /// resolution). What it wrote meanwhile is charged at the next reading, to the same
    /// execution, so a burst sample costs less than a 1 s one and nothing is lost.
    pub fn set_sub_second(&mut self, on: bool) {
        self.sub_second = on;
    }

    /// The cost level the next sample runs at.
    pub fn cost_level(&self) -> Level {
        self.cost.level()
    }

    /// What the cost control did since the sampler was made (`data.agent.sample_cost`).
    pub fn cost_report(&self) -> CostReport {
        self.cost.report()
    }
}
