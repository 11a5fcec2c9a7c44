//! The command line: `bitville-pg-agent [-c PATH] [MODE]`.
//!
//! Parsing is pure (a list of strings in, a [`Cli`] or a usage error out) so every mode is
//! unit-tested without starting anything. Each mode is one variant of [`Mode`]; adding a mode
//! means adding a variant, its flag in [`parse`] and a line in [`USAGE`].

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

/// The help text.
pub const USAGE: &str = "\
usage: bitville-pg-agent [-c PATH] [--pid-file PATH] [--check-config | --version | --help]

Watches a PostgreSQL server and its host and ships what it sees to the Bitville listener.

options:
  -c, --config PATH   configuration file (default: $BITVILLE_PG_CONFIG_PATH,
                      else /etc/bitville/postgres-agent.ini)
      --pid-file PATH write the process id to PATH while running
      --check-config  load and validate the configuration, print it with secrets
                      masked, and exit
  -V, --version       print the version and exit
  -h, --help          print this help and exit

exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 configuration error,
            4 database unreachable at start
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

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, String> {
    let mut config = None;
    let mut pid_file = None;
    let mut mode: Option<Mode> = None;
    let mut args = args.into_iter();
    let mut set_mode = |m: Mode, flag: &str| match &mode {
        Some(existing) if *existing != m => {
            Err(format!("{flag} cannot be combined with another mode"))
        }
        _ => {
            mode = Some(m);
            Ok(())
        }
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => {
                let path = args.next().ok_or_else(|| format!("{arg} needs a path"))?;
                config = Some(PathBuf::from(path));
            }
            a if a.starts_with("--config=") => {
                config = Some(PathBuf::from(&a["--config=".len()..]))
            }
            "--pid-file" => {
                let path = args.next().ok_or_else(|| format!("{arg} needs a path"))?;
                pid_file = Some(PathBuf::from(path));
            }
            "--check-config" => set_mode(Mode::CheckConfig, &arg)?,
            "-V" | "--version" => set_mode(Mode::Version, &arg)?,
            "-h" | "--help" => set_mode(Mode::Help, &arg)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if config.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err("--config needs a non-empty path".into());
    }
    Ok(Cli {
        config,
        pid_file,
        mode: mode.unwrap_or(Mode::Run),
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
    fn bad_arguments_are_usage_errors() {
        assert!(p(&["-c"]).unwrap_err().contains("needs a path"));
        assert!(p(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(p(&["--version", "--help"])
            .unwrap_err()
            .contains("cannot be combined"));
    }
}
