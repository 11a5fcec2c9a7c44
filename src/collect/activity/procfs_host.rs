//! Whether the sampled server runs on this host, so that `/proc/<pid>` describes its backends.
//! A remote server's pids are other processes here (or none): reading them would charge a
//! stranger's CPU to a query, so the figures are read only when the backends are this host's
//! PostgreSQL processes.
//!
//! Invariants: decided on the first round that tried to read a pid after each server check
//! (agent start, and every interval, when the server version is asked again): the backends are
//! local when most of that round's pids read as PostgreSQL processes (`comm` `postgres` or
//! `postmaster`, see [`crate::collect::procfs::ProcReader::sample`]). When they are not, every
//! OS figure of the interval is dropped (`null`, never a stranger's number) and the summary's
//! `procfs` says why.

use super::ActivitySampler;

/// The summary's `procfs.reason` when the backends are not this host's processes.
pub(super) const NOT_LOCAL: &str = "the server's backends are not PostgreSQL processes of this \
     host (a remote server): per-backend CPU, memory and I/O are not read";

/// The summary's `procfs.reason` when the sampler was built not to read `/proc`.
pub(super) const DISABLED: &str = "read_procfs is off";

/// Per-round counts of `/proc/<pid>` reads, and what they decided.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ProcfsHost {
    /// `None` until a round has tried to read a pid since the last server check.
    pub(super) local: Option<bool>,
    /// Pids this round tried to read.
    pub(super) tries: usize,
    /// Of those, the ones that were PostgreSQL processes here.
    pub(super) hits: usize,
    /// Whether "not local" was logged (said once per run, not per interval).
    pub(super) said: bool,
}

impl ActivitySampler {
    /// Whether this round reads `/proc/<pid>`: configured, and not found to be another host's
    /// server.
    pub(super) fn reads_procfs(&self) -> bool {
        self.cfg.read_procfs && self.procfs.local != Some(false)
    }

    /// Counts one pid read of this round.
    pub(super) fn note_pid_read(&mut self, found: bool) {
        self.procfs.tries += 1;
        self.procfs.hits += usize::from(found);
    }

    /// Closes a round's count: the first round that tried decides; a "not local" decision drops
    /// the OS figures read so far.
    pub(super) fn decide_procfs_host(&mut self) {
        let (tries, hits) = (self.procfs.tries, self.procfs.hits);
        self.procfs.tries = 0;
        self.procfs.hits = 0;
        if self.procfs.local.is_some() || tries == 0 {
            return;
        }
        let local = hits * 2 > tries;
        self.procfs.local = Some(local);
        if local {
            return;
        }
        if !self.procfs.said {
            self.procfs.said = true;
            log::info!("activity: {NOT_LOCAL}");
        }
        self.tracks.clear();
        self.last_reading_at = None;
        for e in self.execs.values_mut() {
            e.cpu_ticks = 0;
            e.read_bytes = 0;
            e.write_bytes = 0;
            e.rss_bytes = 0;
            e.os_seen = false;
            e.cpu_attributed = false;
            e.cpu_partial = false;
            e.io_seen = false;
            e.io_attributed = false;
        }
    }

    /// The summary's `procfs.enabled` and `procfs.reason` (`None` while reading).
    pub(super) fn procfs_status(&self) -> (bool, Option<&'static str>) {
        if !self.cfg.read_procfs {
            (false, Some(DISABLED))
        } else if self.procfs.local == Some(false) {
            (false, Some(NOT_LOCAL))
        } else {
            (true, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::collect::activity::ActivityConfig;
    use crate::json::Json;

    fn procfs_of(out: &[crate::payload::Payload]) -> (Option<Json>, Option<Json>) {
        let p = out[0].data.get("procfs").unwrap();
        (p.get("enabled").cloned(), p.get("reason").cloned())
    }

    #[test]
    fn a_servers_pids_that_are_not_local_postgres_processes_are_not_read() {
        let p = FakeProc::new("remote");
        // Here pid 100 is a shell, 101 does not exist and 102 happens to be a PostgreSQL
        // process: the remote server's backends are strangers, a minority coincides.
        let d = p.0.join("100");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stat"),
            "100 (bash) S 1 1 1 0 -1 0 0 0 0 0 50 0 0 0 20 0 1 0 5 1000 256 0\n",
        )
        .unwrap();
        p.set(102, 500, 5, Some((4096, 4096)));
        let mut s = p.sampler(ActivityConfig::default());
        s.absorb(&[
            row(100, 1000.0, 999.0),
            row(101, 1000.0, 999.0),
            row(102, 1000.0, 999.0),
        ]);
        p.set(102, 900, 5, Some((8192, 8192)));
        s.absorb(&[row(102, 1001.0, 999.0)]);
        let out = s.finish_interval();
        assert_eq!(
            procfs_of(&out),
            (Some(Json::Bool(false)), Some(Json::from(NOT_LOCAL)))
        );
        let e = sessions(&out)
            .iter()
            .find(|e| field_f64(e, "pid") == 102.0)
            .unwrap();
        for k in ["cpu_ms", "rss_bytes", "read_bytes"] {
            assert_eq!(e.get(k), Some(&Json::Null), "{k}: a stranger's figure");
        }

        // The next interval checks again: now every pid is a local PostgreSQL process.
        for pid in [100, 101, 102] {
            p.set(pid, 1000, 5, None);
        }
        s.absorb(&[row(100, 1002.0, 1001.5), row(101, 1002.0, 1001.5)]);
        let out = s.finish_interval();
        assert_eq!(procfs_of(&out), (Some(Json::Bool(true)), Some(Json::Null)));
        assert!(field_f64(&sessions(&out)[0], "rss_bytes") > 0.0);
    }

    #[test]
    fn procfs_off_by_configuration_says_so() {
        let p = FakeProc::new("off");
        p.set(7, 10, 5, None);
        let mut s = p.sampler(ActivityConfig {
            read_procfs: false,
            ..ActivityConfig::default()
        });
        s.absorb(&[row(7, 1000.0, 999.0)]);
        let out = s.finish_interval();
        assert_eq!(
            procfs_of(&out),
            (Some(Json::Bool(false)), Some(Json::from(DISABLED)))
        );
        assert_eq!(sessions(&out)[0].get("rss_bytes"), Some(&Json::Null));
    }
}
