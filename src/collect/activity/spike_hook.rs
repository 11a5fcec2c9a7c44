//! The hook of the spike detector and load timeline ([`crate::spike`]): what the last sample
//! saw, as plain values. All of it lives here (the sampler only keeps the last lock waiters
//! for it), so a change of the hook is one file.

use super::ActivitySampler;
use crate::collect::locks::LockWaiter;

impl ActivitySampler {
    /// What the last sample saw, as plain values for the load timeline and the spike detector
    /// (`crate::spike`). Call after each successful [`Self::sample`], before
    /// [`Self::finish_interval`]; the lock waiters are handed over once.
    pub fn take_spike_snapshot(&mut self) -> crate::spike::SampleSnapshot {
        let rows = self
            .current
            .iter()
            .filter_map(|(pid, key)| {
                let e = self.execs.get(key)?;
                Some(crate::spike::SampleRow {
                    pid: *pid,
                    exec_start: key.1,
                    state: Some(e.state.clone()).filter(|s| !s.is_empty()),
                    wait_event_type: e.wait_event_type.clone(),
                    query_id: e.query_id,
                    query: e.query.clone(),
                    correlation_id: e.correlation_id().map(str::to_string),
                    usename: e.usename.clone(),
                    datname: e.datname.clone(),
                    client_addr: e.client_addr.clone(),
                    cpu_ticks_total: e.cpu_ticks,
                    cpu_ticks: 0,
                })
            })
            .collect();
        crate::spike::SampleSnapshot {
            at: self.last_sample_at.unwrap_or(0.0),
            rows,
            run_states: self.proc.last_round_states().iter().map(|s| s.1).collect(),
            waiters: self.spike_waiters.take(),
        }
    }

    /// Keeps a lock snapshot's waiters for the next [`Self::take_spike_snapshot`].
    pub(super) fn keep_waiters_for_spike(&mut self, waiters: &[LockWaiter]) {
        self.spike_waiters = Some(waiters.to_vec());
    }
}
