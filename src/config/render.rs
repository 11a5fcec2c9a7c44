//! Text generated from the key table: `--check-config`'s listing, the example INI and README's
//! key table.

use super::keys::KEYS;
use super::raw::RawConfig;
use super::secret::{mask_url, Secret};

/// The effective configuration as text, one `key = value  ; origin` line per key, with secrets
/// masked: what `--check-config` prints.
pub fn describe(raw: &RawConfig) -> String {
    let mut out = String::new();
    if let Some(file) = &raw.file {
        out.push_str(&format!("; configuration file: {}\n", file.display()));
    }
    let mut section = "";
    for spec in KEYS {
        if spec.section != section {
            section = spec.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        let (value, origin) = raw.get(spec.section, spec.key);
        let shown = if spec.secret {
            format!("{:?}", Secret::new(value))
        } else {
            mask_url(value)
        };
        out.push_str(&format!("{} = {}    ; {origin}\n", spec.key, shown));
    }
    out
}

/// The example configuration file (`etc/postgres-agent.ini.example`): every key, its default
/// and what it does. A test keeps the shipped file identical to this.
pub fn example_ini() -> String {
    let mut out = String::from(
        "; bitville-pg-agent configuration. Every key is optional; shown values are the defaults.\n\
         ; Every key can be overridden from the environment: BITVILLE_PG_<KEY> (upper case),\n\
         ; or the Python agent's names (BITVILLE_PG_DB_HOST, BITVILLE_PG_LISTENER_API_KEY, ...).\n\
         ; Priority: environment, then this file, then the defaults.\n",
    );
    let mut section = "";
    for spec in KEYS {
        if spec.section != section {
            section = spec.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        out.push_str(&format!("; {} (env: {})\n", spec.doc, spec.env.join(", ")));
        out.push_str(&format!("{} = {}\n", spec.key, spec.default));
    }
    out
}

/// The README's configuration table (between `<!-- keys:start -->` and `<!-- keys:end -->`),
/// generated from [`KEYS`] like the example file.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for spec in KEYS {
        let env: Vec<String> = spec.env.iter().map(|e| format!("`{e}`")).collect();
        let default = if spec.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", spec.default)
        };
        out.push_str(&format!(
            "| `[{}] {}` | {} | {default} | {} |\n",
            spec.section,
            spec.key,
            env.join(", "),
            spec.doc
        ));
    }
    out
}
