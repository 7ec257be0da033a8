//! Fuzz targets for the config readers: realistic WAL-G config files,
//! mutated. No input may panic, and whatever is accepted has only the
//! shapes the rest of walden relies on: upper-case non-empty keys, no
//! nesting past the limit, dotenv values flat and non-empty; and the
//! DEVEL dump of it never shows a secret key's value.

use super::file::{parse, Format};
use super::value::{Section, Value, MAX_DEPTH};
use super::{known, show, Settings};

const SECRET: &str = "fuzz-secret-value";

fn seeds(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

fn check_section(section: &Section, depth: usize, format: Format) {
    assert!(depth <= MAX_DEPTH, "nested {depth} deep");
    for (key, value) in section.iter() {
        assert!(!key.trim().is_empty(), "empty key");
        assert_eq!(key, &key.to_uppercase(), "key not upper-cased");
        if known::is_secret(key) {
            let shown = show(&Value::Map({
                let mut s = Section::default();
                let _ = s.insert(key, value.clone());
                s
            }));
            assert!(!shown.contains(SECRET), "secret shown: {shown}");
        }
        check_value(value, depth, format);
    }
}

fn check_value(value: &Value, depth: usize, format: Format) {
    match value {
        Value::Scalar(s) => {
            if format == Format::Dotenv {
                assert!(!s.is_empty(), "empty dotenv value kept");
            }
        }
        Value::List(items) => {
            assert!(format != Format::Dotenv, "dotenv list");
            for item in items {
                check_value(item, depth + 1, format);
            }
        }
        Value::Map(section) => {
            assert!(format != Format::Dotenv, "dotenv section");
            check_section(section, depth + 1, format);
        }
    }
}

fn target(name: &str, format: Format, texts: &[&str]) {
    crate::fuzz::run(name, &seeds(texts), |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(section) = parse(format, text) {
            check_section(&section, 1, format);
            // The rest of the pipeline must not panic either.
            let _ = super::check_shapes(&section);
            let settings = Settings::from_section(section);
            // Each dump line is NAME=value; a secret name's value is never
            // shown (a fuzzed value of another setting may hold any text).
            for line in settings.describe() {
                if let Some((name, value)) = line.split_once('=') {
                    assert!(
                        !(known::is_secret(name) && value.contains(SECRET)),
                        "secret in the dump: {line}"
                    );
                }
            }
            let _ = settings.get("WALG_FILE_PREFIX");
            let _ = settings.section("WALG_FAILOVER_STORAGES");
        }
    });
}

#[test]
fn fuzz_config_yaml() {
    target(
        "config_yaml",
        Format::Yaml,
        &[
            "WALG_FILE_PREFIX: /var/lib/walg\nWALG_COMPRESSION_METHOD: zstd\nWALG_UPLOAD_CONCURRENCY: 4\n",
            "# walg\nWALG_S3_PREFIX: 's3://bucket/path'\nAWS_ENDPOINT: \"http://127.0.0.1:9000\"\nAWS_S3_FORCE_PATH_STYLE: true\nAWS_SECRET_ACCESS_KEY: fuzz-secret-value # c\n",
            "WALG_FILE_PREFIX: /top\nWALG_FAILOVER_STORAGES:\n  store1:\n    WALG_FILE_PREFIX: /f\n    AWS_SECRET_ACCESS_KEY: fuzz-secret-value\n  store2: {WALG_S3_PREFIX: 's3://b/x', AWS_ACCESS_KEY_ID: k}\n",
            "\u{feff}WALG_LIBSODIUM_KEY: \"fuzz-secret-value\" # key\nWALG_LIBSODIUM_KEY_TRANSFORM: none\nWALG_STATSD_EXTRA_TAGS: [a, b, 0x10, 010, 1e3, ~]\n",
            "---\nPGHOST: /var/run/postgresql\nPGPORT: 5432\nWALG_DELTA_MAX_STEPS: 7\nWALG_LOG_LEVEL: DEVEL\nX: |\n  multi\n  line\n",
        ],
    );
}

#[test]
fn fuzz_config_toml() {
    target(
        "config_toml",
        Format::Toml,
        &[
            "WALG_FILE_PREFIX = \"/var/lib/walg\"\nWALG_UPLOAD_CONCURRENCY = 4\nWALG_TAR_DISABLE_FSYNC = false\n",
            "WALG_LIBSODIUM_KEY = 'fuzz-secret-value' # key\nWALG_S3_PREFIX = \"s3://b/p\\u00e9\\t\"\nF = 1.5e3\nH = 0x1F\n",
            "WALG_FILE_PREFIX = \"/top\"\n[WALG_FAILOVER_STORAGES.store1]\nWALG_FILE_PREFIX = \"/f\"\nAWS_SECRET_ACCESS_KEY = \"fuzz-secret-value\"\n[[L]]\na = [1, [2, [3]], {x = 1}]\n",
            "\u{feff}A.b.c = \"\"\"multi\nline\"\"\"\nD = 1979-05-27T07:32:00Z\n",
        ],
    );
}

#[test]
fn fuzz_config_json() {
    target(
        "config_json",
        Format::Json,
        &[
            r#"{"WALG_FILE_PREFIX": "/var/lib/walg", "WALG_UPLOAD_CONCURRENCY": 4, "WALG_TAR_DISABLE_FSYNC": false}"#,
            r#"{"walg_s3_prefix": "s3://b/p\u00e9", "AWS_SECRET_ACCESS_KEY": "fuzz-secret-value", "N": null, "F": 1.5e3}"#,
            r#"{"WALG_FILE_PREFIX": "/top", "WALG_FAILOVER_STORAGES": {"s1": {"WALG_FILE_PREFIX": "/f", "AWS_SECRET_ACCESS_KEY": "fuzz-secret-value"}}, "L": [1, [2, [3]], {"x": 1}]}"#,
            "\u{feff}{\"WALG_LIBSODIUM_KEY\": \"fuzz-secret-value\"}",
        ],
    );
}

#[test]
fn fuzz_config_dotenv() {
    target(
        "config_dotenv",
        Format::Dotenv,
        &[
            "WALG_FILE_PREFIX=/var/lib/walg\nWALG_UPLOAD_CONCURRENCY=4\n",
            "# walg\nexport WALG_LIBSODIUM_KEY=\"fuzz-secret-value\" # key\nWALG_S3_PREFIX='s3://b/p#x'\nAWS_ENDPOINT: http://127.0.0.1:9000\n",
            "\u{feff}AWS_SECRET_ACCESS_KEY=fuzz-secret-value\r\nQ=\"a\\n\\\"b\\\\\\$\"\r\nE=\n",
        ],
    );
}
