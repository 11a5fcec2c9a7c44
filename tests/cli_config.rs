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
    // An empty file: `/dev/null` is a device, which the agent refuses as a configuration file.
    let ini = dir.path().join("empty.ini");
    std::fs::write(&ini, "").unwrap();
    let out = agent(
        &["-c", ini.to_str().unwrap()],
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

fn agent_os(
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitville-pg-agent"))
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .expect("run the agent")
}

#[test]
fn non_utf8_environment_and_arguments_never_panic() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let bad = || OsString::from_vec(b"x\xffy".to_vec());
    let dir = TempDir::new("cli");
    let empty = dir.path().join("empty.ini");
    std::fs::write(&empty, "").unwrap();
    let check = OsString::from("--check-config");
    let c = OsString::from("-c");
    let empty_ini = OsString::from(&empty);
    // An unrelated variable is ignored.
    let out = agent_os(
        &[check.clone(), c.clone(), empty_ini.clone()],
        &[(OsString::from("FOO"), bad())],
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // One of ours is a configuration error naming it (and not showing the value).
    let out = agent_os(
        &[check.clone(), c.clone(), empty_ini.clone()],
        &[(OsString::from("BITVILLE_PG_LISTENER_API_KEY"), bad())],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("environment BITVILLE_PG_LISTENER_API_KEY: the value is not valid UTF-8"),
        "{stderr}"
    );
    // A non-UTF-8 path is a path; a non-UTF-8 flag is a usage error.
    let out = agent_os(&[check.clone(), c.clone(), bad()], &[]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("cannot read configuration file"));
    let out = agent_os(&[bad()], &[]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

#[test]
fn a_malformed_section_header_is_an_error_at_its_line_and_never_shows_the_key() {
    let dir = TempDir::new("cli");
    let ini = dir.path().join("agent.ini");
    for (body, line) in [
        (
            "[listener\napi_key = key-123-secret\nurl = http://l/ingest/postgres\n",
            1,
        ),
        (
            "\u{feff}[database]\nhost = h\n[[listener]]\napi_key = key-123-secret\n",
            3,
        ),
        ("[listener]\napi_key key-123-secret\n", 2),
    ] {
        std::fs::write(&ini, body).unwrap();
        let out = agent(&["--check-config", "-c", ini.to_str().unwrap()], &[]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{body:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("{}: line {line}: ", ini.display())),
            "{body:?}: {stderr}"
        );
        assert!(
            !stdout.contains("key-123-secret") && !stderr.contains("key-123-secret"),
            "{body:?}: the key leaked: {stdout}{stderr}"
        );
    }
}

#[test]
fn credentials_in_the_listener_url_are_masked_in_check_config() {
    let dir = TempDir::new("cli");
    let empty = dir.path().join("empty.ini");
    std::fs::write(&empty, "").unwrap();
    let out = agent(
        &["--check-config", "-c", empty.to_str().unwrap()],
        &[(
            "BITVILLE_PG_LISTENER_URL",
            "http://bob:url-pass-9@listener:8443/ingest/postgres",
        )],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("url = http://***@listener:8443/ingest/postgres"),
        "{stdout}"
    );
    assert!(!stdout.contains("url-pass-9") && !stderr.contains("url-pass-9"));
}

#[test]
fn check_config_states_the_correlated_budget_and_warns_when_it_is_zero() {
    let dir = TempDir::new("cli");
    let ini = dir.path().join("agent.ini");
    std::fs::write(&ini, "").unwrap();
    let ini_s = ini.to_str().unwrap();
    let out = agent(&["--check-config", "-c", ini_s], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("; correlated budget: 26 "), "{stdout}");
    assert!(!stderr.contains("budget is 0"), "{stderr}");

    std::fs::write(&ini, "[collection]\ninterval_s = 5\n").unwrap();
    let out = agent(&["--check-config", "-c", ini_s], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {stderr}"
    );
    assert!(stdout.contains("; correlated budget: 0 "), "{stdout}");
    assert!(
        stderr.contains("warning: the correlated budget is 0")
            && stderr.contains("fix: [collection] interval_s = "),
        "{stderr}"
    );
}
