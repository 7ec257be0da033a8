//! The check that runs once settings are loaded, before any storage is
//! touched: a setting walden does not implement, but whose absence would
//! change who can read the data or where it goes, is an error that names
//! it; so is a second storage prefix, which WAL-G would drop silently.

use super::known::{REFUSED, STORAGE_PREFIXES};
use super::{ConfigError, Settings};

pub fn check(settings: &Settings) -> Result<(), ConfigError> {
    for name in settings.names_set() {
        // Environment variables are case-sensitive, and WAL-G reads only
        // upper-case ones; file keys and flags are not.
        if settings.origin(&name) == Some("environment") && name != name.to_uppercase() {
            continue;
        }
        let upper = name.to_uppercase();
        let rule = REFUSED
            .iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => upper.starts_with(prefix),
                None => upper == *pattern,
            });
        if let Some((_, why)) = rule {
            return Err(ConfigError::Unsupported {
                origin: settings.origin(&name).unwrap_or("config file"),
                name,
                why: why.to_string(),
            });
        }
    }
    storage_prefixes(settings)
}

/// At most one storage, and one walden has.
fn storage_prefixes(settings: &Settings) -> Result<(), ConfigError> {
    let mut chosen: Vec<(String, String, &str, bool)> = Vec::new();
    for (bare, backend, built) in STORAGE_PREFIXES {
        let forms: Vec<(String, String)> = ["WALG_", "WALE_"]
            .iter()
            .filter_map(|p| {
                let name = format!("{p}{bare}");
                settings.get_explicit(&name).map(|v| (name, v))
            })
            .collect();
        if let [(walg, a), (wale, b)] = forms.as_slice() {
            if a != b {
                return Err(ConfigError::Conflict {
                    names: vec![walg.clone(), wale.clone()],
                    problem: format!(
                        "they differ, and WAL-G would use {walg} and ignore {wale}: keep one"
                    ),
                });
            }
        }
        if let Some((name, value)) = forms.into_iter().next() {
            chosen.push((name, value, backend, *built));
        }
    }
    match chosen.as_slice() {
        [] => Ok(()),
        [(name, _, backend, false)] => Err(ConfigError::Unsupported {
            name: name.clone(),
            origin: settings.origin(name).unwrap_or("config file"),
            why: format!("{backend} storage is not built; use WALG_S3_PREFIX or WALG_FILE_PREFIX"),
        }),
        [_] => Ok(()),
        [(first, ..), rest @ ..] => {
            let mut names = vec![first.clone()];
            names.extend(rest.iter().map(|(n, ..)| n.clone()));
            Err(ConfigError::Conflict {
                problem: format!(
                    "WAL-G would use {first} and ignore the rest without a word: set only one storage"
                ),
                names,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::{Section, Value};

    fn file(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn encryption_walden_lacks_is_refused_by_name() {
        for name in [
            "WALG_PGP_KEY",
            "WALG_PGP_KEY_PATH",
            "WALG_ENVELOPE_PGP_KEY",
            "WALG_ENVELOPE_PGP_KEY_PATH",
            "WALG_CSE_KMS_ID",
            "WALG_GPG_KEY_ID",
            "WALE_GPG_KEY_ID",
            "S3_SSE_C",
            "WALG_S3_SSE_C",
            "WALE_S3_SSE_C",
            "walg_pgp_key",
            "WALG_STATSD_ADDRESS",
            "AWS_ROLE_ARN",
            "WALG_FAILOVER_STORAGES_CHECK_TIMEOUT",
        ] {
            let s = file(&[("WALG_FILE_PREFIX", "/b"), (name, "x")]);
            let e = check(&s).unwrap_err().to_string();
            assert!(
                e.contains(&name.to_uppercase()) && e.contains("does not support"),
                "{name}: {e}"
            );
            assert!(e.contains("config file"), "{e}");
        }
        assert!(check(&file(&[("WALG_FILE_PREFIX", "/b"), ("S3_SSE", "AES256")])).is_ok());
    }

    #[test]
    fn failover_section_is_refused() {
        let mut inner = Section::default();
        inner
            .insert("WALG_FILE_PREFIX", Value::Scalar("/f".into()))
            .unwrap();
        let mut storages = Section::default();
        storages.insert("s1", Value::Map(inner)).unwrap();
        let mut top = Section::default();
        top.insert("WALG_FILE_PREFIX", Value::Scalar("/b".into()))
            .unwrap();
        top.insert("WALG_FAILOVER_STORAGES", Value::Map(storages))
            .unwrap();
        let e = check(&Settings::from_section(top)).unwrap_err().to_string();
        assert!(e.contains("WALG_FAILOVER_STORAGES"), "{e}");
    }

    #[test]
    fn one_storage_only() {
        let e = check(&file(&[
            ("WALG_FILE_PREFIX", "/b"),
            ("WALG_S3_PREFIX", "s3://b/p"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("WALG_S3_PREFIX and WALG_FILE_PREFIX")
                && e.contains("would use WALG_S3_PREFIX"),
            "{e}"
        );
        let e = check(&file(&[
            ("WALG_S3_PREFIX", "s3://b/p"),
            ("WALE_S3_PREFIX", "s3://b/q"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("WALE_S3_PREFIX"), "{e}");
        assert!(check(&file(&[
            ("WALG_S3_PREFIX", "s3://b/p"),
            ("WALE_S3_PREFIX", "s3://b/p"),
        ]))
        .is_ok());
        let e = check(&file(&[("WALG_GS_PREFIX", "gs://b")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WALG_GS_PREFIX") && e.contains("Google"), "{e}");
        assert!(check(&file(&[("WALG_FILE_PREFIX", "/b")])).is_ok());
    }
}
