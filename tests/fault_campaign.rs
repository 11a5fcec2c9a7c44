//! The fault campaign kept as bounded tests: hostile files where the agent reads its
//! configuration, password and CA bundle (a FIFO must not hang it, a device must not be read
//! forever), each refused with a message naming what it is.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `--check-config -c ini` with `env`; kills it after 20 s (a hang fails the test).
fn check_config(ini: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitville-pg-agent"))
        .arg("--check-config")
        .arg("-c")
        .arg(ini)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.code(), text);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("--check-config -c {} hung", ini.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_files_are_refused_with_a_clear_message_and_never_hang() {
    let dir = TempDir::new("hostile-files");
    let d = dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let zero = d.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let sub = d.join("a-directory");
    std::fs::create_dir(&sub).unwrap();

    // The configuration file itself.
    for (what, path, kind) in [
        ("a FIFO", &fifo, "FIFO"),
        ("/dev/zero", &zero, "character device"),
        ("a directory", &sub, "directory"),
    ] {
        let (code, text) = check_config(path, &[]);
        assert_ne!(code, Some(0), "-c {what}: {text}");
        assert!(text.contains(kind), "-c {what} says what it is: {text}");
    }

    // A password file named in an otherwise valid file.
    for (path, kind) in [(&fifo, "FIFO"), (&zero, "character device")] {
        let ini = d.join("password.ini");
        std::fs::write(
            &ini,
            format!("[database]\npassword_file = {}\n", path.display()),
        )
        .unwrap();
        let (code, text) = check_config(&ini, &[]);
        assert_eq!(code, Some(3), "password_file = {}: {text}", path.display());
        assert!(
            text.contains(kind),
            "password_file = {}: {text}",
            path.display()
        );
    }

    // The CA bundle (loaded when the shipper is built, not by --check-config).
    for (path, kind) in [(&fifo, "FIFO"), (&zero, "character device")] {
        let start = Instant::now();
        let err = bitville_pg_agent::ship::http::load_ca_file(path).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains(kind), "{err}");
    }
}
