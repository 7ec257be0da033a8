//! Config files and settings end to end: nested sections never override
//! top-level settings, a byte-order mark or an inline comment does not
//! change a key, settings walden cannot honour are refused before storage
//! is touched, and credentials never reach the log.

use std::fs;
use std::path::Path;

use crate::harness::{TempDir, Walden};
use crate::store::FakeWal;

const SEG: &str = "000000010000000000000001";
/// A libsodium key (32 bytes, `none` transform).
const KEY: &str = "configtest-key-0123456789abcdefg";
/// The first bytes of an LZ4 frame: what an unencrypted object starts with.
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

fn write(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// Every file under `dir`, for "nothing was written" checks.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn nested_sections_do_not_override_top_level_settings() {
    let tmp = TempDir::new("cfg-nested");
    let top = tmp.join("top");
    let other = tmp.join("other");
    let wal = FakeWal::new();
    let seg = wal.segment(SEG, 1, false);
    // The nested key comes after the top-level one, where a flat reader
    // would let it win.
    let configs = [
        write(
            &tmp,
            "walg.yaml",
            &format!(
                "WALG_FILE_PREFIX: {}\nstandby:\n  WALG_FILE_PREFIX: {}\n",
                top.display(),
                other.display()
            ),
        ),
        write(
            &tmp,
            "walg.toml",
            &format!(
                "WALG_FILE_PREFIX = \"{}\"\n[standby]\nWALG_FILE_PREFIX = \"{}\"\n",
                top.display(),
                other.display()
            ),
        ),
    ];
    for config in &configs {
        let out = Walden::new()
            .arg("--config")
            .arg(config)
            .arg("wal-push")
            .arg(&seg)
            .run();
        out.assert_ok();
        assert!(
            top.join(format!("wal_005/{SEG}.lz4")).is_file(),
            "{}: {}",
            config.display(),
            out.stderr
        );
        assert!(files_under(&other).is_empty(), "{}", config.display());
        assert!(out.stderr.contains("STANDBY is unknown"), "{}", out.stderr);
        fs::remove_dir_all(&top).unwrap();
    }
}

#[test]
fn failover_storages_are_refused_not_used() {
    let tmp = TempDir::new("cfg-failover");
    let top = tmp.join("top");
    let failover = tmp.join("failover");
    let wal = FakeWal::new();
    let seg = wal.segment(SEG, 2, false);
    let config = write(
        &tmp,
        "walg.yaml",
        &format!(
            "WALG_FILE_PREFIX: {}\nWALG_FAILOVER_STORAGES:\n  store1:\n    WALG_FILE_PREFIX: {}\n",
            top.display(),
            failover.display()
        ),
    );
    let out = Walden::new()
        .arg("--config")
        .arg(&config)
        .arg("wal-push")
        .arg(&seg)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("WALG_FAILOVER_STORAGES") && out.stderr.contains("not support"),
        "{}",
        out.stderr
    );
    assert!(files_under(&top).is_empty() && files_under(&failover).is_empty());
}

#[test]
fn a_byte_order_mark_does_not_drop_the_encryption_key() {
    let tmp = TempDir::new("cfg-bom");
    let repo = tmp.join("repo");
    let wal = FakeWal::new();
    let seg = wal.segment(SEG, 3, false);
    let config = write(
        &tmp,
        "walg.yaml",
        &format!(
            "\u{feff}WALG_LIBSODIUM_KEY: {KEY}\nWALG_FILE_PREFIX: {}\n",
            repo.display()
        ),
    );
    Walden::new()
        .arg("--config")
        .arg(&config)
        .arg("wal-push")
        .arg(&seg)
        .run()
        .assert_ok();
    let stored = fs::read(repo.join(format!("wal_005/{SEG}.lz4"))).unwrap();
    assert!(
        stored.get(..4) != Some(&LZ4_MAGIC[..]),
        "the segment was stored unencrypted"
    );
    // And the key is the one written after the mark.
    let dest = tmp.join("fetched");
    Walden::new()
        .env("WALG_FILE_PREFIX", &repo)
        .env("WALG_LIBSODIUM_KEY", KEY)
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", SEG])
        .arg(&dest)
        .run()
        .assert_ok();
    assert!(fs::read(&dest).unwrap() == fs::read(&seg).unwrap());
}

#[test]
fn a_quoted_key_with_a_comment_is_the_unquoted_value() {
    let tmp = TempDir::new("cfg-quoted");
    let repo = tmp.join("repo");
    let src = write(&tmp, "src", "quoted key data");
    let configs = [
        write(
            &tmp,
            "walg.yaml",
            &format!(
                "WALG_LIBSODIUM_KEY: \"{KEY}\" # the archive key\nWALG_FILE_PREFIX: {}\n",
                repo.display()
            ),
        ),
        write(
            &tmp,
            "walg.toml",
            &format!(
                "WALG_LIBSODIUM_KEY = \"{KEY}\" # the archive key\nWALG_FILE_PREFIX = \"{}\"\n",
                repo.display()
            ),
        ),
        write(
            &tmp,
            "walg.env",
            &format!(
                "WALG_LIBSODIUM_KEY=\"{KEY}\" # the archive key\nWALG_FILE_PREFIX={}\n",
                repo.display()
            ),
        ),
    ];
    for (i, config) in configs.iter().enumerate() {
        let name = format!("q{i}");
        Walden::new()
            .arg("--config")
            .arg(config)
            .args(["st", "put"])
            .arg(&src)
            .arg(&name)
            .run()
            .assert_ok();
        // Readable with the bare key from the environment.
        let out = Walden::new()
            .env("WALG_FILE_PREFIX", &repo)
            .env("WALG_LIBSODIUM_KEY", KEY)
            .args([
                "st",
                "cat",
                &format!("{name}.lz4"),
                "--decrypt",
                "--decompress",
            ])
            .run();
        out.assert_ok();
        assert_eq!(out.stdout, b"quoted key data", "{}", config.display());
    }
}

#[test]
fn toml_escapes_are_read() {
    let tmp = TempDir::new("cfg-toml");
    let src = write(&tmp, "src", "x");
    let repo = tmp.join("repo");
    // \u0070 is 'p': the repository is ".../repo", not ".../re\u0070o".
    let escaped = repo.display().to_string().replace("/repo", "/re\\u0070o");
    let config = write(
        &tmp,
        "walg.toml",
        &format!("WALG_FILE_PREFIX = \"{escaped}\"\n"),
    );
    Walden::new()
        .arg("--config")
        .arg(&config)
        .args(["st", "put"])
        .arg(&src)
        .arg("t")
        .run()
        .assert_ok();
    assert!(repo.join("t.lz4").is_file());
}

#[test]
fn unreadable_config_files_name_file_and_line() {
    let tmp = TempDir::new("cfg-bad");
    let repo = tmp.join("repo");
    let src = write(&tmp, "src", "x");
    for (name, text, place) in [
        ("bad.yaml", "WALG_FILE_PREFIX: /x\nB: [1, 2\n", "line 3"),
        (
            "bad.toml",
            "WALG_FILE_PREFIX = \"/x\"\nB = \"open\n",
            "line 2",
        ),
        (
            "bad.json",
            "{\n\"WALG_FILE_PREFIX\": \"/x\",\n}\n",
            "line 3",
        ),
        ("bad.env", "WALG_FILE_PREFIX=/x\nB=$HOME\n", "line 2"),
        (
            "dup.yaml",
            "WALG_FILE_PREFIX: /x\nwalg_file_prefix: /y\n",
            "line 2",
        ),
    ] {
        let config = write(&tmp, name, text);
        let out = Walden::new()
            .arg("--config")
            .arg(&config)
            .args(["st", "put"])
            .arg(&src)
            .arg("x")
            .run();
        out.assert_code(1);
        assert!(
            out.stderr.contains(name) && out.stderr.contains(place),
            "{name}: {}",
            out.stderr
        );
    }
    assert!(files_under(&repo).is_empty());
}

#[test]
fn unsupported_settings_are_refused_before_storage_is_touched() {
    let tmp = TempDir::new("cfg-refused");
    let repo = tmp.join("repo");
    let wal = FakeWal::new();
    let seg = wal.segment(SEG, 4, false);
    let secret = "pgp-secret-material";
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
        "WALG_STATSD_ADDRESS",
        "AWS_ROLE_ARN",
    ] {
        let out = Walden::new()
            .env("WALG_FILE_PREFIX", &repo)
            .env(name, secret)
            .arg("wal-push")
            .arg(&seg)
            .run();
        out.assert_code(1);
        assert!(
            out.stderr.contains(name) && out.stderr.contains("does not support"),
            "{name}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
    }
    // The same through a flag and through the config file.
    let out = Walden::new()
        .env("WALG_FILE_PREFIX", &repo)
        .arg(format!("--walg-pgp-key={secret}"))
        .arg("wal-push")
        .arg(&seg)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("WALG_PGP_KEY is set (flag)"),
        "{}",
        out.stderr
    );
    let config = write(
        &tmp,
        "walg.json",
        &format!(
            "{{\"WALG_FILE_PREFIX\": \"{}\", \"walg_pgp_key\": \"{secret}\"}}",
            repo.display()
        ),
    );
    let out = Walden::new()
        .arg("--config")
        .arg(&config)
        .arg("wal-push")
        .arg(&seg)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("WALG_PGP_KEY is set (config file)"),
        "{}",
        out.stderr
    );
    // Two storages: WAL-G would silently use one of them.
    let out = Walden::new()
        .env("WALG_FILE_PREFIX", &repo)
        .env("WALG_S3_PREFIX", "s3://bucket/path")
        .arg("wal-push")
        .arg(&seg)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("WALG_S3_PREFIX and WALG_FILE_PREFIX"),
        "{}",
        out.stderr
    );
    assert!(files_under(&repo).is_empty(), "{:?}", files_under(&repo));
    // `flags` only lists names: it runs whatever is set.
    Walden::new()
        .env("WALG_PGP_KEY", secret)
        .arg("flags")
        .run()
        .assert_ok();
}

#[test]
fn endpoint_credentials_never_reach_the_log() {
    for level in ["NORMAL", "DEVEL"] {
        let out = Walden::new()
            .env("WALG_S3_PREFIX", "s3://bucket/path")
            .env("AWS_ACCESS_KEY_ID", "id")
            .env("AWS_SECRET_ACCESS_KEY", "key")
            .env("AWS_ENDPOINT", "http://user:s3cret@127.0.0.1:1")
            .env("WALG_LOG_LEVEL", level)
            .args(["st", "ls"])
            .run();
        out.assert_code(1);
        assert!(
            !out.stderr.contains("s3cret") && !out.stderr.contains("user:"),
            "{level}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("AWS_ENDPOINT"), "{}", out.stderr);
        assert!(!out.stderr.contains("WALG_S3_PREFIX='"), "{}", out.stderr);
    }
}

#[test]
fn devel_dump_hides_nested_secrets() {
    let tmp = TempDir::new("cfg-devel");
    let repo = tmp.join("repo");
    let config = write(
        &tmp,
        "walg.json",
        &format!(
            r#"{{"WALG_FILE_PREFIX": "{}", "WALG_LOG_LEVEL": "DEVEL",
                "WALG_FAILOVER_STORAGES": {{"store1": {{"AWS_SECRET_ACCESS_KEY": "nested-secret-1",
                   "WALG_LIBSODIUM_KEY": "nested-secret-2", "WALG_S3_PREFIX": "s3://b/p"}}}}}}"#,
            repo.display()
        ),
    );
    let out = Walden::new()
        .arg("--config")
        .arg(&config)
        .args(["st", "ls"])
        .run();
    assert!(!out.stderr.contains("nested-secret"), "{}", out.stderr);
    assert!(out.stderr.contains("DEBUG: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("WALG_FAILOVER_STORAGES={"),
        "{}",
        out.stderr
    );
    // Failover storages are refused, after the dump was written.
    out.assert_code(1);
}
