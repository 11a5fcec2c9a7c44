//! Dead letters: payloads the listener rejected for good, kept as JSON lines for an operator.
//!
//! Invariants: one line per rejected payload of either lane (`at`, `seq`, `lane`, `source`,
//! `status`, `answer`, `payload`), fsynced, in the main lane's directory; the file is rotated to `.1` past `dead_letter_max_bytes`, so at most
//! two files' worth is kept.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::json::Json;

use super::{Inner, Record, SpoolError};

/// The dead-letter file's name: one JSON line per payload the listener rejected for good.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

impl Inner {
    /// Appends `record` as one JSON line to the dead-letter file (rotated past its bound), fsynced.
    pub(super) fn dead_letter(
        &mut self,
        record: &Record,
        body: &str,
        status: u16,
        answer: &str,
    ) -> Result<(), SpoolError> {
        let path = self.dir.join(DEAD_LETTER_FILE);
        if fs::metadata(&path).is_ok_and(|m| m.len() >= self.opts.dead_letter_max_bytes) {
            let old = self.dir.join(format!("{DEAD_LETTER_FILE}.1"));
            if let Err(e) = fs::rename(&path, &old) {
                log::warn!("rotate dead-letter file {}: {e}", path.display());
            }
        }
        let line = Json::object()
            .field("at", crate::payload::unix_now())
            .field("seq", record.seq)
            .field("lane", record.lane.as_str())
            .field("source", record.source.as_str())
            .field("status", u64::from(status))
            .field("answer", answer)
            .field("payload", body)
            .to_json_string();
        let result = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
        self.n_dead_letters += 1;
        result.map_err(|e| SpoolError::io("write dead letter", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::DEAD_LETTER_FILE;
    use crate::spool::test_support::{open_with, payload};

    #[test]
    fn dead_letters_are_json_lines_and_rotate() {
        let (dir, spool) = open_with("deadletter", |o| o.dead_letter_max_bytes = 200);
        for n in 1..=3 {
            spool.append(&payload(n)).unwrap();
            let r = spool.peek().unwrap().unwrap();
            spool
                .dead_letter(&r, "{\"sent\":1}", 400, "{\"details\":\"x\"}")
                .unwrap();
        }
        assert_eq!(spool.peek().unwrap(), None, "dead letters are acknowledged");
        assert_eq!(spool.stats().n_dead_letters, 3);
        let current = fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
        let old = fs::read_to_string(dir.join(format!("{DEAD_LETTER_FILE}.1"))).unwrap();
        let lines: Vec<&str> = old.lines().chain(current.lines()).collect();
        assert!(lines.len() >= 2 && lines.len() <= 3, "{lines:?}");
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last["seq"], 3);
        assert_eq!(last["lane"], "main");
        assert_eq!(last["status"], 400);
        assert_eq!(last["payload"], "{\"sent\":1}");
    }
}
