//! Settings as WAL-G reads them: a `--name` flag, then the environment
//! (an empty variable counts as unset), then the config file (`--config`,
//! `WALG_CONFIG_PATH`, `~/.walg.json`), then WAL-G's defaults.

mod file;
#[cfg(test)]
mod fuzz_targets;
pub mod known;
mod parse_dotenv;
mod parse_json;
mod parse_toml;
mod parse_yaml;
pub mod redact;
pub mod unsupported;
pub mod value;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use value::{Section, Value};

#[derive(Debug)]
pub enum ConfigError {
    /// The config file cannot be read or used.
    File { path: String, problem: String },
    /// The config file is not valid in its format, at a known place.
    Syntax {
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        problem: String,
    },
    /// A setting walden does not implement, whose absence would change
    /// where data goes or who can read it.
    Unsupported {
        name: String,
        origin: &'static str,
        why: String,
    },
    /// Settings that exclude each other (WAL-G would drop one silently).
    Conflict { names: Vec<String>, problem: String },
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
            ConfigError::Syntax {
                path,
                line,
                column,
                problem,
            } => {
                write!(f, "config file '{path}' cannot be used: ")?;
                match (line, column) {
                    (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
                    (Some(l), None) => write!(f, "line {l}: ")?,
                    _ => {}
                }
                write!(f, "{problem}")
            }
            ConfigError::Unsupported { name, origin, why } => write!(
                f,
                "{name} is set ({origin}) but walden does not support it yet: {why}. \
                 Unset it to use walden, or keep WAL-G for this setup"
            ),
            ConfigError::Conflict { names, problem } => {
                write!(f, "{} are all set: {problem}", names.join(" and "))
            }
            ConfigError::Invalid {
                name,
                value,
                problem,
            } => {
                let problem = redact::urls(problem);
                if known::is_secret(name) {
                    write!(f, "setting {name} is invalid: {problem}")
                } else {
                    let value = redact::value(value);
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
    /// The config file's top level; nested sections stay nested.
    file: Section,
    /// The config file that was read, passed on to child processes.
    pub config_path: Option<PathBuf>,
    /// A storage's own file (`copy --from/--to`): the file comes before
    /// the environment, and a storage prefix is never taken from the
    /// environment.
    storage_file: bool,
}

impl Settings {
    /// Load the config file: `explicit` (`--config`), else
    /// `WALG_CONFIG_PATH`, else `~/.walg.EXT` if present (viper's order).
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
            Some(path) => {
                let file = file::read(path)?;
                check_shapes(&file).map_err(|problem| ConfigError::File {
                    path: path.display().to_string(),
                    problem,
                })?;
                file
            }
            None => Section::default(),
        };
        Ok(Settings {
            flags,
            file,
            config_path: path,
            storage_file: false,
        })
    }

    /// The settings of one storage of `copy --from/--to FILE`, as WAL-G
    /// builds them: the storage prefix must be in the file (one in the
    /// environment, or `WALG_STORAGE_PREFIX` there, is not used); other
    /// settings the file lacks, credentials say, still come from the
    /// environment.
    pub fn load_storage_file(path: PathBuf) -> Result<Settings, ConfigError> {
        let file = file::read(&path)?;
        check_shapes(&file).map_err(|problem| ConfigError::File {
            path: path.display().to_string(),
            problem,
        })?;
        Ok(Settings {
            flags: HashMap::new(),
            file,
            config_path: Some(path),
            storage_file: true,
        })
    }

    /// The environment's value of `name`, as far as these settings use it.
    fn env(&self, name: &str) -> Option<String> {
        if self.storage_file && is_storage_location(name) {
            return None;
        }
        env_value(name)
    }

    fn file_scalar(&self, name: &str) -> Option<String> {
        // Only a scalar: a nested section (WALG_FAILOVER_STORAGES) is
        // not a value, and its inner keys never stand in for top-level ones.
        self.file
            .scalar(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Settings with `pairs` as the config file's content (for tests).
    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Settings {
        let mut section = Section::default();
        for (k, v) in pairs {
            let _ = section.insert(k, Value::Scalar(v.to_string()));
        }
        Settings::from_section(section)
    }

    #[cfg(test)]
    pub fn from_section(file: Section) -> Settings {
        Settings {
            flags: HashMap::new(),
            file,
            config_path: None,
            storage_file: false,
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
        if self.storage_file {
            return self.file_scalar(name).or_else(|| self.env(name));
        }
        self.env(name).or_else(|| self.file_scalar(name))
    }

    /// A structured setting from the config file (a map of maps such as
    /// WALG_FAILOVER_STORAGES), for the code that will use it.
    #[allow(dead_code)]
    pub fn section(&self, name: &str) -> Option<&Section> {
        match self.file.get(name)? {
            Value::Map(section) => Some(section),
            _ => None,
        }
    }

    /// Where `name` is set, if it is: "flag", "environment" or "config file".
    pub fn origin(&self, name: &str) -> Option<&'static str> {
        let in_file = match self.file.get(name) {
            None => false,
            Some(Value::Scalar(v)) => !v.is_empty(),
            Some(_) => true,
        };
        if self.flags.get(name).is_some_and(|v| !v.is_empty()) {
            Some("flag")
        } else if self.storage_file && in_file {
            Some("config file")
        } else if self.env(name).is_some() {
            Some("environment")
        } else if in_file {
            Some("config file")
        } else {
            None
        }
    }

    /// Every setting name given a value, by flag, environment or config
    /// file (top level), each once.
    pub fn names_set(&self) -> Vec<String> {
        let mut names: Vec<String> = self.flags.keys().cloned().collect();
        names.extend(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            (!v.is_empty()).then_some(k)
        }));
        names.extend(self.file.keys().cloned());
        names.sort();
        names.dedup();
        names.retain(|n| self.origin(n).is_some());
        names
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

    /// Every setting with a value, for `WALG_LOG_LEVEL=DEVEL`: secrets
    /// hidden at any depth of a section, credentials cut out of URLs.
    pub fn describe(&self) -> Vec<String> {
        let mut names: Vec<&str> = known::KNOWN.to_vec();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let shown = match self.get_explicit(name) {
                    Some(_) if known::is_secret(name) => HIDDEN.to_string(),
                    // A structured setting given as JSON text (environment
                    // or flag) is shown as the section it stands for.
                    Some(text) if known::STRUCTURED.contains(&name) => {
                        match parse_json::parse(&text) {
                            Ok(section) => show(&Value::Map(section)),
                            Err(_) => HIDDEN.to_string(),
                        }
                    }
                    Some(value) => redact::value(&value).into_owned(),
                    None => match self.file.get(name)? {
                        Value::Scalar(_) => return None,
                        nested => show(nested),
                    },
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

const HIDDEN: &str = "--HIDDEN--";

/// A config value for the DEVEL dump, every secret key hidden however
/// deep it sits.
fn show(value: &Value) -> String {
    match value {
        Value::Scalar(s) => redact::value(s).into_owned(),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Map(section) => {
            let entries: Vec<String> = section
                .iter()
                .map(|(k, v)| {
                    let shown = if known::is_secret(k) {
                        HIDDEN.to_string()
                    } else {
                        show(v)
                    };
                    format!("{k}: {shown}")
                })
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// A known setting must hold one value, except the structured ones: a
/// list or section where WAL-G expects text would be read as empty.
fn check_shapes(file: &Section) -> Result<(), String> {
    for (key, value) in file.iter() {
        let known = known::KNOWN.contains(&key.as_str());
        let structured = known::STRUCTURED.contains(&key.as_str());
        if known && !structured && !matches!(value, Value::Scalar(_)) {
            return Err(format!(
                "{key} must be a single value, not a list or section"
            ));
        }
    }
    Ok(())
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A setting that says where a storage is: a storage prefix (either
/// form) or `WALG_STORAGE_PREFIX`.
fn is_storage_location(name: &str) -> bool {
    name == "WALG_STORAGE_PREFIX"
        || known::STORAGE_PREFIXES.iter().any(|(bare, _, _)| {
            name.strip_prefix("WALG_")
                .or_else(|| name.strip_prefix("WALE_"))
                == Some(bare)
        })
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `~/.walg.EXT` for the first extension viper tries that exists; one
/// walden cannot read is then refused rather than passed over.
fn home_config() -> Option<PathBuf> {
    let home = PathBuf::from(env_value("HOME")?);
    file::HOME_EXTENSIONS
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
        Settings::from_pairs(pairs)
    }

    #[test]
    fn storage_locations_are_the_prefixes_and_the_sub_prefix() {
        for name in [
            "WALG_S3_PREFIX",
            "WALE_S3_PREFIX",
            "WALG_FILE_PREFIX",
            "WALG_GS_PREFIX",
        ] {
            assert!(is_storage_location(name), "{name}");
        }
        assert!(is_storage_location("WALG_STORAGE_PREFIX"));
        for name in [
            "AWS_ACCESS_KEY_ID",
            "S3_PREFIX",
            "WALG_S3_PREFIXX",
            "WALG_UPLOAD_CONCURRENCY",
        ] {
            assert!(!is_storage_location(name), "{name}");
        }
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
    fn devel_dump_hides_nested_secrets_and_url_credentials() {
        let file = parse_yaml::parse(
            "AWS_ENDPOINT: http://user:s3cret@127.0.0.1:1\n\
             WALG_FILE_PREFIX: /top\n\
             WALG_FAILOVER_STORAGES:\n  \
               store1:\n    \
                 aws_secret_access_key: nested-secret-1\n    \
                 WALG_LIBSODIUM_KEY: nested-secret-2\n    \
                 deeper: {SSH_PASSWORD: nested-secret-3, WALG_S3_PREFIX: 's3://b/p'}\n",
        )
        .unwrap();
        let mut s = Settings::from_section(file);
        let all = s.describe().join("\n");
        for secret in ["s3cret", "user:", "nested-secret"] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
        assert!(all.contains("WALG_FAILOVER_STORAGES={STORE1: {"), "{all}");
        assert!(all.contains("AWS_SECRET_ACCESS_KEY: --HIDDEN--"), "{all}");
        assert!(all.contains("WALG_S3_PREFIX: s3://b/p"), "{all}");
        assert!(all.contains("AWS_ENDPOINT=http://***@127.0.0.1:1"), "{all}");
        // The same section as JSON text in a flag or variable.
        s.flags.insert(
            "WALG_FAILOVER_STORAGES".into(),
            r#"{"s": {"AWS_SECRET_ACCESS_KEY": "json-secret"}}"#.into(),
        );
        s.flags
            .insert("WALG_STATSD_EXTRA_TAGS".into(), "not json, secret?".into());
        let all = s.describe().join("\n");
        assert!(
            !all.contains("json-secret") && !all.contains("secret?"),
            "{all}"
        );
    }

    #[test]
    fn known_settings_must_be_single_values() {
        let file = parse_yaml::parse("WALG_FILE_PREFIX: [/a, /b]\n").unwrap();
        assert!(check_shapes(&file)
            .unwrap_err()
            .contains("WALG_FILE_PREFIX"));
        let ok = parse_yaml::parse("WALG_FAILOVER_STORAGES: {s: {A: 1}}\nOTHER: [1]\n").unwrap();
        assert!(check_shapes(&ok).is_ok());
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
