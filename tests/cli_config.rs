//! The command line and configuration, exercised through the real binary.

mod common;

use std::process::{Command, Output};

use common::TempDir;

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitville-pg-agent"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run the agent")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_exit_zero() {
    let out = agent(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("--check-config"));
    let out = agent(&["--version"], &[]);
    assert_eq!(
        text(&out).0.trim(),
        format!("bitville-pg-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_is_a_usage_error() {
    let out = agent(&["--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("unknown argument \"--frobnicate\""));
}

#[test]
fn a_named_config_file_that_does_not_exist_is_an_error() {
    let out = agent(&["--check-config", "-c", "/nonexistent/agent.ini"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out)
            .1
            .contains("/nonexistent/agent.ini: cannot read configuration file"),
        "{:?}",
        text(&out)
    );
    let out = agent(
        &["--check-config"],
        &[("BITVILLE_PG_CONFIG_PATH", "/nonexistent/env.ini")],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).1.contains("/nonexistent/env.ini"));
}

#[test]
fn check_config_shows_origins_and_masks_secrets() {
    let dir = TempDir::new("cli");
    let ini = dir.path().join("agent.ini");
    std::fs::write(
        &ini,
        "[database]\nhost = db.example\npassword = s3cret-pw\npool_max_size = 50\n[listener]\napi_key = key-123\n",
    )
    .unwrap();
    let ini_s = ini.to_str().unwrap();
    let out = agent(
        &["--check-config", "-c", ini_s],
        &[("BITVILLE_PG_DB_PORT", "6543")],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("host = db.example    ; {ini_s}:2")),
        "{stdout}"
    );
    assert!(
        stdout.contains("port = 6543    ; environment BITVILLE_PG_DB_PORT"),
        "{stdout}"
    );
    assert!(stdout.contains("name = postgres    ; default"), "{stdout}");
    assert!(stdout.contains("password = ********"), "{stdout}");
    assert!(
        stderr.contains("[database] pool_max_size = 50 is not allowed (at most 5); using 5"),
        "{stderr}"
    );
    for secret in ["s3cret-pw", "key-123"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn a_bad_value_exits_with_the_config_code_naming_file_line_and_key() {
    let dir = TempDir::new("cli");
    let ini = dir.path().join("agent.ini");
    std::fs::write(
        &ini,
        "[collection]\ninterval_s = 60\n\n[listener]\nurl = listener:8443/ingest\n",
    )
    .unwrap();
    let out = agent(&["--check-config", "-c", ini.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out).1;
    assert!(
        stderr.contains(&format!(
            "{}:5: [listener] url: \"listener:8443/ingest\" is not an http:// or https:// URL",
            ini.display()
        )),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_database_exits_with_the_database_code_and_says_why() {
    let dir = TempDir::new("cli");
    let out = agent(
        &["-c", "/dev/null"],
        &[
            ("BITVILLE_PG_DB_HOST", dir.path().to_str().unwrap()),
            ("BITVILLE_PG_DB_PORT", "1"),
            ("BITVILLE_PG_DB_PASSWORD", "pw-not-shown"),
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let stderr = text(&out).1;
    assert!(stderr.contains("the server is not reachable"), "{stderr}");
    assert!(!stderr.contains("pw-not-shown"));
}

#[test]
fn the_readme_documents_every_key_and_its_environment_names() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for spec in bitville_pg_agent::config::KEYS {
        assert!(
            readme.contains(&format!("`[{}] {}`", spec.section, spec.key)),
            "README lacks [{}] {}",
            spec.section,
            spec.key
        );
        for env in spec.env {
            assert!(readme.contains(env), "README lacks {env}");
        }
    }
}
