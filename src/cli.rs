//! The command line: `bitville-pg-agent [-c PATH] [MODE]`.
//!
//! Parsing is pure (a list of strings in, a [`Cli`] or a usage error out) so every mode is
//! unit-tested without starting anything. Each mode is one variant of [`Mode`]; adding a mode
//! means adding a variant, its flag in [`parse`] and a line in [`USAGE`].

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: an unexpected runtime failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status: the command line was not understood.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the configuration is invalid (file, value or key).
pub const EXIT_CONFIG: i32 = 3;
/// Exit status: the database could not be reached or refused the agent at start.
pub const EXIT_DATABASE: i32 = 4;
/// Exit status: the spool or state directory cannot be used (missing permission, locked by
/// another agent).
pub const EXIT_STORAGE: i32 = 5;
/// Exit status: `--test` found a check that failed.
pub const EXIT_TEST_FAILED: i32 = 6;
/// Exit status of `--status` when the agent is not running or its status is stale (LSB's
/// "program is not running").
pub const EXIT_NOT_RUNNING: i32 = 3;

/// The help text.
pub const USAGE: &str = "\
usage: bitville-pg-agent [-c PATH] [--pid-file PATH] [MODE]

Watches a PostgreSQL server and its host and ships what it sees to the Bitville listener.
Without a mode it runs as a daemon until SIGTERM or SIGINT; SIGHUP reloads.

modes:
      --once          collect once, spool and ship it, then exit
      --dry-run       collect once and print the payloads to stdout (nothing is
                      spooled or sent)
      --test          check everything the agent needs, one line per check
      --check-config  load and validate the configuration, print it with secrets
                      masked, and exit
      --status        show what the running agent reports (spool, breaker, errors)
      --report [--since DURATION | --at 'YYYY-MM-DD HH:MM']
                      print the local flight recorder: active sessions per
                      second and the load spikes (default: the last hour;
                      DURATION like 30m, 2h, 1d; --at: 10 minutes around a
                      UTC time); needs no database connection
      --analyze-log FILE [--prefix PREFIX]
                      parse a server log file and print what was understood
                      (PREFIX: its log_line_prefix; default PostgreSQL's '%m [%p] ')
  -V, --version       print the version and exit
  -h, --help          print this help and exit

options:
  -c, --config PATH   configuration file (default: $BITVILLE_PG_CONFIG_PATH,
                      else /etc/bitville/postgres-agent.ini)
      --pid-file PATH write the process id to PATH while running

exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 configuration error (--status:
            not running), 4 database unreachable at start, 5 spool or state directory
            unusable, 6 a --test check failed, 130 a second stop signal forced the
            exit
";

/// What the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Run as a daemon.
    Run,
    /// Validate and print the configuration.
    CheckConfig,
    /// Print the version.
    Version,
    /// Print the help.
    Help,
    /// One collection, spooled and shipped.
    Once,
    /// One collection printed to stdout.
    DryRun,
    /// The operator's checklist.
    Test,
    /// What the running agent reports.
    Status,
    /// Print the flight recorder's history.
    Report {
        /// `--since`: the last this many seconds.
        since_s: Option<u64>,
        /// `--at`: 10 minutes around this time (unix seconds, UTC).
        at: Option<i64>,
    },
    /// Parse a log file and report.
    AnalyzeLog {
        /// The file.
        file: PathBuf,
        /// Its `log_line_prefix`, when given.
        prefix: Option<String>,
    },
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// `-c PATH`, if given.
    pub config: Option<PathBuf>,
    /// `--pid-file PATH`, if given.
    pub pid_file: Option<PathBuf>,
    /// The mode.
    pub mode: Mode,
}

/// Parses the arguments after the program name. They are taken as `OsString`s: a path may be
/// any bytes, and an argument that is not UTF-8 is a usage error, never a panic.
pub fn parse<I, S>(args: I) -> Result<Cli, String>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut config = None;
    let mut pid_file = None;
    let mut prefix = None;
    let mut since_s = None;
    let mut at = None;
    let mut mode: Option<Mode> = None;
    let mut args = args.into_iter().map(Into::into);
    let mut set_mode = |m: Mode, flag: &str| match &mode {
        Some(existing) if *existing != m => {
            Err(format!("{flag} cannot be combined with another mode"))
        }
        _ => {
            mode = Some(m);
            Ok(())
        }
    };
    while let Some(os_arg) = args.next() {
        if let Some(path) = os_arg.as_bytes().strip_prefix(b"--config=".as_slice()) {
            config = Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
            continue;
        }
        let Some(arg) = os_arg.to_str().map(str::to_string) else {
            return Err(format!(
                "argument {:?} is not valid UTF-8 (only paths may be)",
                os_arg.to_string_lossy()
            ));
        };
        match arg.as_str() {
            "-c" | "--config" => {
                let path = args.next().ok_or_else(|| format!("{arg} needs a path"))?;
                config = Some(PathBuf::from(path));
            }
            "--pid-file" => {
                let path = args.next().ok_or_else(|| format!("{arg} needs a path"))?;
                pid_file = Some(PathBuf::from(path));
            }
            "--check-config" => set_mode(Mode::CheckConfig, &arg)?,
            "--once" => set_mode(Mode::Once, &arg)?,
            "--dry-run" => set_mode(Mode::DryRun, &arg)?,
            "--test" => set_mode(Mode::Test, &arg)?,
            "--status" => set_mode(Mode::Status, &arg)?,
            "--analyze-log" => {
                let file = args.next().ok_or_else(|| format!("{arg} needs a file"))?;
                set_mode(
                    Mode::AnalyzeLog {
                        file: PathBuf::from(file),
                        prefix: None,
                    },
                    &arg,
                )?;
            }
            "--report" => set_mode(
                Mode::Report {
                    since_s: None,
                    at: None,
                },
                &arg,
            )?,
            "--since" => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a duration"))?
                    .into_string()
                    .map_err(|_| format!("{arg} needs a UTF-8 value"))?;
                since_s = Some(crate::spike::render::parse_since(&value)?.round() as u64);
            }
            "--at" => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a time"))?
                    .into_string()
                    .map_err(|_| format!("{arg} needs a UTF-8 value"))?;
                at = Some(crate::spike::render::parse_at(&value)? as i64);
            }
            "--prefix" => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                let value = value
                    .into_string()
                    .map_err(|_| format!("{arg} needs a UTF-8 value"))?;
                prefix = Some(value);
            }
            "-V" | "--version" => set_mode(Mode::Version, &arg)?,
            "-h" | "--help" => set_mode(Mode::Help, &arg)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut mode = mode.unwrap_or(Mode::Run);
    match (&mut mode, prefix) {
        (Mode::AnalyzeLog { prefix, .. }, given) => *prefix = given,
        (_, Some(_)) => return Err("--prefix goes with --analyze-log".into()),
        (_, None) => {}
    }
    match (&mut mode, since_s, at) {
        (_, Some(_), Some(_)) => return Err("--since and --at cannot be combined".into()),
        (Mode::Report { since_s: s, at: a }, since, when) => {
            *s = since;
            *a = when;
        }
        (_, None, None) => {}
        _ => return Err("--since and --at go with --report".into()),
    }
    if config.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err("--config needs a non-empty path".into());
    }
    Ok(Cli {
        config,
        pid_file,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn no_arguments_runs_the_daemon_with_the_default_config() {
        assert_eq!(
            p(&[]).unwrap(),
            Cli {
                config: None,
                pid_file: None,
                mode: Mode::Run
            }
        );
    }

    #[test]
    fn config_path_in_every_spelling() {
        for args in [
            &["-c", "/x.ini"][..],
            &["--config", "/x.ini"],
            &["--config=/x.ini"],
        ] {
            assert_eq!(
                p(args).unwrap().config,
                Some(PathBuf::from("/x.ini")),
                "{args:?}"
            );
        }
        assert_eq!(
            p(&["--check-config", "-c", "/y"]).unwrap().mode,
            Mode::CheckConfig
        );
    }

    #[test]
    fn every_mode_parses() {
        assert_eq!(p(&["--once"]).unwrap().mode, Mode::Once);
        assert_eq!(p(&["--dry-run"]).unwrap().mode, Mode::DryRun);
        assert_eq!(p(&["--test"]).unwrap().mode, Mode::Test);
        assert_eq!(p(&["--status", "-c", "/a"]).unwrap().mode, Mode::Status);
        assert_eq!(
            p(&["--analyze-log", "/l", "--prefix", "%m [%p] "])
                .unwrap()
                .mode,
            Mode::AnalyzeLog {
                file: PathBuf::from("/l"),
                prefix: Some("%m [%p] ".into())
            }
        );
        assert!(p(&["--once", "--prefix", "x"])
            .unwrap_err()
            .contains("goes with --analyze-log"));
        assert!(p(&["--once", "--dry-run"])
            .unwrap_err()
            .contains("cannot be combined"));
    }

    #[test]
    fn non_utf8_arguments_are_paths_or_usage_errors_never_panics() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"/etc/\xffagent.ini".to_vec());
        let cli = parse([OsString::from("-c"), bad()]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from(bad())));
        let mut eq = b"--config=".to_vec();
        eq.extend_from_slice(bad().as_bytes());
        let cli = parse([OsString::from_vec(eq), OsString::from("--once")]).unwrap();
        assert_eq!(
            (cli.config, cli.mode),
            (Some(PathBuf::from(bad())), Mode::Once)
        );
        let err = parse([OsString::from_vec(b"--\xff".to_vec())]).unwrap_err();
        assert!(err.contains("not valid UTF-8"), "{err}");
        let err = parse([
            OsString::from("--analyze-log"),
            OsString::from("/l"),
            OsString::from("--prefix"),
            bad(),
        ])
        .unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn report_takes_since_or_at() {
        assert_eq!(
            p(&["--report"]).unwrap().mode,
            Mode::Report {
                since_s: None,
                at: None
            }
        );
        assert_eq!(
            p(&["--report", "--since", "30m"]).unwrap().mode,
            Mode::Report {
                since_s: Some(1800),
                at: None
            }
        );
        assert_eq!(
            p(&["--at", "1970-01-01 00:01", "--report"]).unwrap().mode,
            Mode::Report {
                since_s: None,
                at: Some(60)
            }
        );
        assert!(
            p(&["--report", "--since", "1h", "--at", "2026-12-01 14:32"])
                .unwrap_err()
                .contains("cannot be combined")
        );
        assert!(p(&["--once", "--since", "1h"])
            .unwrap_err()
            .contains("go with --report"));
        assert!(p(&["--report", "--since", "soon"]).is_err());
        assert!(p(&["--report", "--at"])
            .unwrap_err()
            .contains("needs a time"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(p(&["-c"]).unwrap_err().contains("needs a path"));
        assert!(p(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(p(&["--version", "--help"])
            .unwrap_err()
            .contains("cannot be combined"));
    }
}
