//! Settings as WAL-G reads them: a `--name` flag, then the environment
//! (an empty variable counts as unset), then the config file (`--config`,
//! `WALG_CONFIG_PATH`, `~/.walg.json`), then WAL-G's defaults.

mod file;
pub mod known;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ConfigError {
    /// The config file cannot be read or parsed.
    File { path: String, problem: String },
    /// A setting has a value walden cannot use.
    Invalid {
        name: String,
        value: String,
        problem: String,
    },
    /// A required setting is missing.
    Missing { name: String, hint: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::File { path, problem } => {
                write!(f, "config file '{path}' cannot be used: {problem}")
            }
            ConfigError::Invalid {
                name,
                value,
                problem,
            } => {
                if known::is_secret(name) {
                    write!(f, "setting {name} is invalid: {problem}")
                } else {
                    write!(f, "setting {name}='{value}' is invalid: {problem}")
                }
            }
            ConfigError::Missing { name, hint } => write!(f, "{name} is not set: {hint}"),
        }
    }
}

impl std::error::Error for ConfigError {}

pub struct Settings {
    /// `--walg-s3-prefix=...` style overrides from the command line.
    flags: HashMap<String, String>,
    file: HashMap<String, String>,
    /// The config file that was read, passed on to child processes.
    pub config_path: Option<PathBuf>,
}

impl Settings {
    /// Load the config file: `explicit` (`--config`), else
    /// `WALG_CONFIG_PATH`, else `~/.walg.{json,toml,yaml,yml}` if present.
    pub fn load(
        explicit: Option<PathBuf>,
        flags: HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let named = explicit.or_else(|| env_value("WALG_CONFIG_PATH").map(PathBuf::from));
        let path = match named {
            Some(path) => Some(path),
            None => home_config(),
        };
        let file = match &path {
            Some(path) => file::read(path)?,
            None => HashMap::new(),
        };
        Ok(Settings {
            flags,
            file,
            config_path: path,
        })
    }

    /// Settings from flags and environment only (for tests).
    #[cfg(test)]
    pub fn from_map(file: HashMap<String, String>) -> Settings {
        Settings {
            flags: HashMap::new(),
            file,
            config_path: None,
        }
    }

    /// The `--setting-name=value` flags this run was given, to pass on to
    /// a child process (the prefetcher), which must see the same settings.
    pub fn flag_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self
            .flags
            .iter()
            .map(|(name, value)| format!("--{}={value}", name.to_lowercase().replace('_', "-")))
            .collect();
        args.sort();
        args
    }

    /// The value without defaults.
    pub fn get_explicit(&self, name: &str) -> Option<String> {
        if let Some(v) = self.flags.get(name) {
            return Some(v.clone());
        }
        if let Some(v) = env_value(name) {
            return Some(v);
        }
        self.file
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
    }

    /// The value, or WAL-G's default.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_explicit(name).or_else(|| {
            known::DEFAULTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// WAL-G's lookup for storage settings: `K`, `WALG_K`, `WALE_K`.
    pub fn storage(&self, name: &str) -> Option<String> {
        self.get_explicit(name)
            .or_else(|| self.get_explicit(&format!("WALG_{name}")))
            .or_else(|| self.get_explicit(&format!("WALE_{name}")))
            .or_else(|| self.get(name))
    }

    /// A boolean as Go's strconv.ParseBool reads it.
    pub fn bool(&self, name: &str) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(&v).ok_or_else(|| ConfigError::Invalid {
                name: name.into(),
                value: v,
                problem: "expected true or false".into(),
            }),
        }
    }

    /// A count that must be at least 1 (concurrency and the like).
    pub fn positive(&self, name: &str) -> Result<usize, ConfigError> {
        let value = self.get(name).unwrap_or_default();
        match value.trim().parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n as usize),
            Ok(_) => Err(ConfigError::Invalid {
                name: name.into(),
                value,
                problem: "the value is expected to be positive".into(),
            }),
            Err(_) => Err(ConfigError::Invalid {
                name: name.into(),
                value,
                problem: "not a whole number".into(),
            }),
        }
    }

    /// Every setting with a value, secrets hidden, for `WALG_LOG_LEVEL=DEVEL`.
    pub fn describe(&self) -> Vec<String> {
        let mut names: Vec<&str> = known::KNOWN.to_vec();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let value = self.get_explicit(name)?;
                let shown = if known::is_secret(name) {
                    "--HIDDEN--".to_string()
                } else {
                    value
                };
                Some(format!("{name}={shown}"))
            })
            .collect()
    }

    /// Keys in the config file that WAL-G does not know (warned about, as
    /// WAL-G does, but still honoured).
    pub fn unknown_file_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .file
            .keys()
            .filter(|k| !known::KNOWN.contains(&k.as_str()))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_config() -> Option<PathBuf> {
    let home = PathBuf::from(env_value("HOME")?);
    ["json", "toml", "yaml", "yml"]
        .iter()
        .map(|ext| home.join(format!(".walg.{ext}")))
        .find(|p| p.is_file())
}

/// Turn a long flag name into the setting it overrides:
/// `walg-s3-prefix` → `WALG_S3_PREFIX`, if that is a setting walden knows.
pub fn flag_setting(long: &str) -> Option<String> {
    let name = long.to_uppercase().replace('-', "_");
    known::KNOWN.contains(&name.as_str()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_and_file() {
        let s = settings(&[("WALG_UPLOAD_CONCURRENCY", "3"), ("WALE_ZZ_TEST_ONLY", "x")]);
        assert_eq!(s.positive("WALG_UPLOAD_CONCURRENCY").unwrap(), 3);
        assert_eq!(s.positive("WALG_DOWNLOAD_CONCURRENCY").unwrap(), 10);
        assert_eq!(s.storage("ZZ_TEST_ONLY").as_deref(), Some("x"));
    }

    #[test]
    fn non_positive_is_an_error_naming_the_setting() {
        let s = settings(&[
            ("WALG_UPLOAD_CONCURRENCY", "0"),
            ("WALG_DOWNLOAD_CONCURRENCY", "x"),
        ]);
        let e = s
            .positive("WALG_UPLOAD_CONCURRENCY")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WALG_UPLOAD_CONCURRENCY='0'") && e.contains("positive"),
            "{e}"
        );
        assert!(s.positive("WALG_DOWNLOAD_CONCURRENCY").is_err());
    }

    #[test]
    fn secrets_are_not_echoed() {
        let s = settings(&[
            ("AWS_SECRET_ACCESS_KEY", "sup3rs3cret"),
            ("WALG_LIBSODIUM_KEY", "k"),
        ]);
        let all = s.describe().join("\n");
        assert!(!all.contains("sup3rs3cret"), "{all}");
        assert!(all.contains("AWS_SECRET_ACCESS_KEY=--HIDDEN--"));
        let e = ConfigError::Invalid {
            name: "WALG_LIBSODIUM_KEY".into(),
            value: "sup3rs3cret".into(),
            problem: "short".into(),
        };
        assert!(!e.to_string().contains("sup3rs3cret"));
    }

    #[test]
    fn flag_args_round_trip() {
        let mut s = settings(&[]);
        s.flags.insert("WALG_FILE_PREFIX".into(), "/b".into());
        let args = s.flag_args();
        assert_eq!(args, ["--walg-file-prefix=/b"]);
        let long = args[0].trim_start_matches("--").split('=').next().unwrap();
        assert_eq!(flag_setting(long).as_deref(), Some("WALG_FILE_PREFIX"));
    }

    #[test]
    fn flag_names() {
        assert_eq!(
            flag_setting("walg-s3-prefix").as_deref(),
            Some("WALG_S3_PREFIX")
        );
        assert_eq!(flag_setting("no-such-thing"), None);
    }
}
