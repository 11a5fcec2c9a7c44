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
        let mut snap = crate::spike::SampleSnapshot::default();
        self.fill_spike_snapshot(&mut snap);
        snap
    }

    /// [`Self::take_spike_snapshot`] into `snap`, reusing its rows and their strings' memory (the
    /// sampler thread keeps one snapshot, so a steady sample allocates nothing for it).
    pub fn fill_spike_snapshot(&mut self, snap: &mut crate::spike::SampleSnapshot) {
        let mut n = 0;
        for (pid, key) in &self.current {
            let Some(e) = self.execs.get(key) else {
                continue;
            };
            if n == snap.rows.len() {
                snap.rows.push(crate::spike::SampleRow::default());
            }
            let r = &mut snap.rows[n];
            n += 1;
            r.pid = *pid;
            r.exec_start = key.1;
            set_text(
                &mut r.state,
                Some(e.state.as_str()).filter(|s| !s.is_empty()),
            );
            set_text(&mut r.wait_event_type, e.wait_event_type.as_deref());
            r.query_id = e.query_id;
            set_text(&mut r.query, e.query.as_deref());
            set_text(&mut r.correlation_id, e.correlation_id());
            set_text(&mut r.usename, e.usename.as_deref());
            set_text(&mut r.datname, e.datname.as_deref());
            set_text(&mut r.client_addr, e.client_addr.as_deref());
            r.cpu_ticks_total = e.cpu_ticks;
            r.cpu_ticks = 0;
        }
        snap.rows.truncate(n);
        snap.at = self.last_sample_at.unwrap_or(0.0);
        snap.run_states.clear();
        snap.run_states
            .extend(self.proc.last_round_states().iter().map(|s| s.1));
        snap.waiters = self.spike_waiters.take();
    }

    /// Keeps a lock snapshot's waiters for the next [`Self::take_spike_snapshot`].
    pub(super) fn keep_waiters_for_spike(&mut self, waiters: &[LockWaiter]) {
        self.spike_waiters = Some(waiters.to_vec());
    }
}

/// Sets `dst` to `src`, reusing `dst`'s memory when both are texts.
fn set_text(dst: &mut Option<String>, src: Option<&str>) {
    match (dst.as_mut(), src) {
        (Some(d), Some(s)) => {
            d.clear();
            d.push_str(s);
        }
        (_, s) => *dst = s.map(str::to_string),
    }
}
