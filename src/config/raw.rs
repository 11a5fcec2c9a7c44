//! Stage one of loading: every known key's text value and where it came from (default, INI
//! line, environment variable), no interpretation yet.
//!
//! Invariants: priority is environment, then INI, then the defaults of [`KEYS`]; an unknown key
//! or `BITVILLE_PG_*` variable is a warning, never an error; a value is never logged here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::ini;
use super::keys::{KeySpec, KEYS, NON_KEY_ENV};
use super::secret::short;
use super::{ConfigError, ENV_PREFIX};

/// Where one effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A line of the INI file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line number, when it could be found.
        line: Option<usize>,
    },
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment {name}"),
        }
    }
}

/// Stage one: every known key's text value and where it came from.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The file the values were read from, if any.
    pub file: Option<PathBuf>,
    values: HashMap<(&'static str, &'static str), (String, Origin)>,
}

/// The `BITVILLE_PG_*` entries of an environment, read as `OsString`s so that a variable that
/// is not UTF-8 never panics: one of the agent's own variables whose value is not UTF-8 is an
/// error naming it; another with the prefix is kept (lossily) so that it is warned about as
/// unknown; everything else is ignored.
pub fn agent_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    for (name, value) in vars {
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let name = name.to_string_lossy().into_owned();
        let value = match value.into_string() {
            Ok(v) => v,
            Err(raw) if is_agent_env(&name) => {
                return Err(ConfigError::Environment {
                    name,
                    reason: format!(
                        "the value is not valid UTF-8 ({} bytes); set it in UTF-8",
                        raw.len()
                    ),
                })
            }
            Err(raw) => raw.to_string_lossy().into_owned(),
        };
        env.insert(name, value);
    }
    Ok(env)
}

/// Whether `name` is one of the agent's environment variables.
fn is_agent_env(name: &str) -> bool {
    NON_KEY_ENV.contains(&name) || KEYS.iter().any(|s| s.env.contains(&name))
}

impl RawConfig {
    /// Merges defaults, the INI text (if any) and the environment, in rising priority.
    pub fn build(
        file: Option<(&Path, &str)>,
        env: &BTreeMap<String, String>,
        warnings: &mut Vec<String>,
    ) -> Result<RawConfig, ConfigError> {
        let mut values = HashMap::new();
        for spec in KEYS {
            values.insert(
                (spec.section, spec.key),
                (spec.default.to_string(), Origin::Default),
            );
        }
        if let Some((path, text)) = file {
            let entries = ini::read(text).map_err(|(line, reason)| ConfigError::File {
                path: path.to_path_buf(),
                reason: format!("line {line}: {reason}"),
            })?;
            for entry in entries {
                let at = Origin::File {
                    path: path.to_path_buf(),
                    line: Some(entry.line),
                };
                match find_key(&entry.section, &entry.key) {
                    Some(spec) => {
                        if let Some((_, Origin::File { line: Some(l), .. })) =
                            values.get(&(spec.section, spec.key))
                        {
                            warnings.push(format!(
                                "{at}: [{}] {} is set again (first at line {l}); the later value wins",
                                spec.section, spec.key
                            ));
                        }
                        values.insert((spec.section, spec.key), (entry.value, at));
                    }
                    // Names passed `is_name`: safe to show, only cut short.
                    None if entry.section.is_empty() => warnings.push(format!(
                        "{at}: key {} outside any section is ignored",
                        short(&entry.key)
                    )),
                    None => warnings.push(format!(
                        "{at}: unknown key [{}] {} is ignored (a typo?)",
                        short(&entry.section),
                        short(&entry.key)
                    )),
                }
            }
        }
        for spec in KEYS {
            let set: Vec<(&str, &String)> = spec
                .env
                .iter()
                .filter_map(|name| env.get(*name).map(|v| (*name, v)))
                .collect();
            if let Some((name, value)) = set.first() {
                if set.iter().any(|(_, v)| v != value) {
                    warnings.push(format!(
                        "environment {} and {} disagree for [{}] {}; {name} wins",
                        set[0].0, set[1].0, spec.section, spec.key
                    ));
                }
                values.insert(
                    (spec.section, spec.key),
                    (value.to_string(), Origin::Env(name.to_string())),
                );
            }
        }
        for name in env.keys() {
            if !is_agent_env(name) {
                warnings.push(format!(
                    "unknown environment variable {name} is ignored (a typo?)"
                ));
            }
        }
        Ok(RawConfig {
            file: file.map(|(p, _)| p.to_path_buf()),
            values,
        })
    }

    /// The text value and origin of a known key.
    pub fn get(&self, section: &str, key: &str) -> (&str, &Origin) {
        let spec = find_key(section, key).expect("known key");
        let (v, o) = &self.values[&(spec.section, spec.key)];
        (v.as_str(), o)
    }
}

pub(super) fn find_key(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.section == section && s.key == key)
}
