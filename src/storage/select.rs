//! Choosing the storage from the settings, in WAL-G's order: the first
//! configured prefix wins. Only the chosen backend is configured.

use std::path::PathBuf;
use std::sync::Arc;

use super::fs::FsStorage;
use super::retry::Retrying;
use super::s3::{S3Config, S3Storage};
use super::Storage;
use crate::config::known::STORAGE_PREFIXES;
use crate::config::{parse_bool, redact, ConfigError, Settings};

pub fn open(settings: &Settings) -> Result<Arc<dyn Storage>, ConfigError> {
    for (bare, backend, _) in STORAGE_PREFIXES {
        let walg = format!("WALG_{bare}");
        let Some((name, prefix)) = settings
            .get_explicit(&walg)
            .map(|v| (walg.clone(), v))
            .or_else(|| {
                let wale = format!("WALE_{bare}");
                settings.get_explicit(&wale).map(|v| (wale, v))
            })
        else {
            continue;
        };
        let sub = settings
            .get_explicit("WALG_STORAGE_PREFIX")
            .map(|p| p.trim_matches('/').to_string())
            .unwrap_or_default();
        let inner: Arc<dyn Storage> = match *bare {
            "FILE_PREFIX" => Arc::new(file_storage(&name, &prefix, &sub)?),
            "S3_PREFIX" => Arc::new(s3_storage(settings, &name, &prefix, &sub)?),
            _ => {
                return Err(ConfigError::Invalid {
                    name,
                    value: prefix,
                    problem: format!(
                        "{backend} storage is not supported by walden yet; use WALG_S3_PREFIX or WALG_FILE_PREFIX"
                    ),
                })
            }
        };
        // Checked for every backend: it is a general setting.
        settings.positive("WALG_UPLOAD_CONCURRENCY")?;
        let retries = retries(settings)?;
        return Ok(Arc::new(Retrying::new(inner, retries)));
    }
    Err(ConfigError::Missing {
        name: "storage".into(),
        hint: "Failed to find any configured storage: set WALG_FILE_PREFIX or WALG_S3_PREFIX"
            .into(),
    })
}

fn retries(settings: &Settings) -> Result<u32, ConfigError> {
    let text = settings
        .storage("S3_MAX_RETRIES")
        .unwrap_or_else(|| "15".into());
    text.trim()
        .parse::<u32>()
        .map_err(|_| ConfigError::Invalid {
            name: "S3_MAX_RETRIES".into(),
            value: text,
            problem: "not a whole number of retries".into(),
        })
}

fn file_storage(name: &str, prefix: &str, sub: &str) -> Result<FsStorage, ConfigError> {
    // WAL-E wrote `file://localhost/dir`.
    let path = prefix.strip_prefix("file://localhost").unwrap_or(prefix);
    if path.is_empty() || path.contains("://") {
        return Err(ConfigError::Invalid {
            name: name.into(),
            value: prefix.into(),
            problem: "expected a directory path such as /var/lib/walden".into(),
        });
    }
    let mut root = PathBuf::from(path);
    if !sub.is_empty() {
        root.push(sub);
    }
    Ok(FsStorage::new(root))
}

/// `s3://bucket/some/path` → ("bucket", "some/path").
pub fn parse_url(name: &str, prefix: &str, scheme: &str) -> Result<(String, String), ConfigError> {
    let invalid = |problem: &str| ConfigError::Invalid {
        name: name.into(),
        value: prefix.into(),
        problem: problem.into(),
    };
    let rest = prefix
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| invalid(&format!("expected {scheme}://bucket/path")))?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("the bucket name is missing"));
    }
    Ok((bucket.to_string(), path.trim_matches('/').to_string()))
}

fn s3_storage(
    settings: &Settings,
    name: &str,
    prefix: &str,
    sub: &str,
) -> Result<S3Storage, ConfigError> {
    let (bucket, mut root) = parse_url(name, prefix, "s3")?;
    if !sub.is_empty() {
        root = if root.is_empty() {
            sub.to_string()
        } else {
            format!("{root}/{sub}")
        };
    }
    let get = |k: &str| settings.storage(k);
    let access_key = get("AWS_ACCESS_KEY_ID")
        .or_else(|| get("AWS_ACCESS_KEY"))
        .ok_or_else(|| ConfigError::Missing {
            name: "AWS_ACCESS_KEY_ID".into(),
            hint: "walden reads S3 credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY only (not yet from AWS profiles, credential files, instance roles or web identity)"
                .into(),
        })?;
    let secret_key = get("AWS_SECRET_ACCESS_KEY")
        .or_else(|| get("AWS_SECRET_KEY"))
        .ok_or_else(|| ConfigError::Missing {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            hint: "walden reads S3 credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY only (not yet from AWS profiles, credential files, instance roles or web identity)"
                .into(),
        })?;
    let bool_setting = |k: &str| -> Result<bool, ConfigError> {
        match get(k) {
            None => Ok(false),
            Some(v) => parse_bool(&v).ok_or(ConfigError::Invalid {
                name: k.into(),
                value: v,
                problem: "expected true or false".into(),
            }),
        }
    };
    let part_size_text = get("S3_MAX_PART_SIZE").unwrap_or_else(|| "20971520".into());
    let part_size = part_size_text
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (5 << 20..=5 << 30).contains(n))
        .ok_or_else(|| ConfigError::Invalid {
            name: "S3_MAX_PART_SIZE".into(),
            value: part_size_text.clone(),
            problem: "expected a part size in bytes (S3 needs at least 5 MiB)".into(),
        })?;
    // Not a WAL-G setting: lets tests send objects of a few MiB through
    // the multipart server-side copy (UploadPartCopy) used above 5 GiB.
    let copy_part = match settings.get_explicit("WALDEN_S3_COPY_PART_SIZE") {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (5 << 20..=5 << 30).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "WALDEN_S3_COPY_PART_SIZE".into(),
                    value: text.clone(),
                    problem: "expected a size in bytes from 5 MiB to 5 GiB (S3's part limits)"
                        .into(),
                })?,
        ),
    };
    let sse = get("S3_SSE");
    let sse_kms_id = get("S3_SSE_KMS_ID");
    if sse.as_deref() == Some("aws:kms") && sse_kms_id.is_none() {
        return Err(ConfigError::Missing {
            name: "S3_SSE_KMS_ID".into(),
            hint: "server-side encryption KMS key ID must be set if 'aws:kms' encryption is used"
                .into(),
        });
    }
    let endpoint = get("AWS_ENDPOINT");
    let region = get("AWS_REGION")
        .or_else(|| get("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let config = S3Config {
        bucket,
        root,
        endpoint: endpoint.clone(),
        region,
        force_path_style: bool_setting("AWS_S3_FORCE_PATH_STYLE")?,
        access_key,
        secret_key,
        session_token: get("AWS_SESSION_TOKEN"),
        storage_class: get("S3_STORAGE_CLASS"),
        sse,
        sse_kms_id,
        ca_cert_file: get("S3_CA_CERT_FILE").map(PathBuf::from),
        part_size,
        parts_in_flight: settings.positive("WALG_UPLOAD_CONCURRENCY")?,
        copy_part,
    };
    S3Storage::new(config).map_err(|problem| {
        // The s3 module reports in text; an endpoint problem (including
        // a refused `user:password@`) is blamed on the setting that holds
        // the endpoint, not on the prefix, and no URL is shown with
        // credentials in it.
        let (name, value) = match &endpoint {
            Some(url) if problem.starts_with("S3 endpoint") => ("AWS_ENDPOINT", url.as_str()),
            _ => (name, prefix),
        };
        ConfigError::Invalid {
            name: name.into(),
            value: value.into(),
            problem: redact::urls(&problem).into_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("P", "s3://b/x/y/", "s3").unwrap(),
            ("b".to_string(), "x/y".to_string())
        );
        assert_eq!(
            parse_url("P", "s3://b", "s3").unwrap(),
            ("b".to_string(), String::new())
        );
        let e = parse_url("WALG_S3_PREFIX", "b/x", "s3")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WALG_S3_PREFIX") && e.contains("s3://bucket/path"),
            "{e}"
        );
        assert!(parse_url("P", "s3:///x", "s3").is_err());
    }

    fn s3_settings(endpoint: &str) -> Settings {
        Settings::from_pairs(&[
            ("WALG_S3_PREFIX", "s3://bucket/p"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "key"),
            ("AWS_ENDPOINT", endpoint),
        ])
    }

    #[test]
    fn endpoint_credentials_are_refused_masked_and_blamed_on_aws_endpoint() {
        for url in [
            "http://user:s3cret@127.0.0.1:1",
            "user:s3cret@127.0.0.1:1",
            "https://user:s3/cret@host/x",
        ] {
            let Err(e) = open(&s3_settings(url)) else {
                panic!("{url} accepted");
            };
            let e = e.to_string();
            assert!(e.contains("AWS_ENDPOINT"), "{e}");
            assert!(!e.contains("WALG_S3_PREFIX"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("user:"), "{e}");
        }
    }

    #[test]
    fn other_endpoint_problems_name_aws_endpoint() {
        let Err(e) = open(&s3_settings("ftp://host")) else {
            panic!("ftp accepted");
        };
        let e = e.to_string();
        assert!(e.contains("AWS_ENDPOINT='ftp://host'"), "{e}");
    }
}
