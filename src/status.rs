//! The status file: what the running agent tells `--status` (and an operator with `cat`).
//!
//! The daemon rewrites `<state_dir>/status` atomically (temp file, rename) after every cycle as
//! plain `key: value` lines. `--status` reads it and adds what only the reader can know: how old
//! the file is and whether the process that wrote it is still alive.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file name inside the state directory.
pub const STATUS_FILE: &str = "status";

/// The status file's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the lines atomically. Values must not contain newlines (they are replaced by spaces).
pub fn write(state_dir: &Path, lines: &[(&str, String)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (key, value) in lines {
        text.push_str(key);
        text.push_str(": ");
        text.push_str(&value.replace(['\n', '\r'], " "));
        text.push('\n');
    }
    let tmp = state_dir.join(".status.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path(state_dir))
}

/// The value of `key` in status text.
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// Whether a process with this pid exists.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The report `--status` prints, and whether the agent looks healthy (running and recent).
pub fn report(state_dir: &Path, stale_after: Duration) -> (String, bool) {
    let file = path(state_dir);
    let text = match crate::fsutil::read_regular_to_string(&file, crate::fsutil::MAX_TEXT_FILE) {
        Ok(t) => t,
        Err(e) => {
            return (
                format!(
                    "no status at {}: {e} (has the agent run yet?)\n",
                    file.display()
                ),
                false,
            )
        }
    };
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let pid = value(&text, "pid")
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(0);
    let running = alive(pid);
    let fresh = age <= stale_after;
    let verdict = match (running, fresh) {
        (true, true) => "running".to_string(),
        (true, false) => format!(
            "running, but the status is {} s old (stuck?)",
            age.as_secs()
        ),
        (false, _) => format!(
            "not running (the status was written {} s ago by pid {pid})",
            age.as_secs()
        ),
    };
    (
        format!("state: {verdict}\nupdated: {} s ago\n{text}", age.as_secs()),
        running && fresh,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_status_reads_back_and_reports_this_process_running() {
        let dir = std::env::temp_dir().join(format!("bitville-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir,
            &[
                ("pid", std::process::id().to_string()),
                ("breaker", "closed\nx".into()),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(path(&dir)).unwrap();
        assert_eq!(value(&text, "breaker"), Some("closed x"));
        let (report, healthy) = report(&dir, Duration::from_secs(60));
        assert!(healthy, "{report}");
        assert!(report.starts_with("state: running\n"), "{report}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_status_or_dead_pid_is_not_healthy() {
        let (r, ok) = report(Path::new("/nonexistent-dir"), Duration::from_secs(60));
        assert!(!ok && r.contains("has the agent run yet"), "{r}");
        let dir = std::env::temp_dir().join(format!("bitville-status-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, &[("pid", "999999999".into())]).unwrap();
        let (r, ok) = report(&dir, Duration::from_secs(60));
        assert!(!ok && r.contains("not running"), "{r}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
