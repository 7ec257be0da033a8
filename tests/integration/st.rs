//! `walden st` against both storages: every codec both ways, listings,
//! deletes, large multipart objects, and bad input refused.

use std::fs;

use crate::harness::{TempDir, Walden};
use crate::store::{codec_env, noise, text, Store};

#[test]
fn every_codec_round_trips_on_both_storages() {
    let tmp = TempDir::new("st-codecs");
    let data = [text(300_000), noise(70_000, 7)].concat();
    let src = tmp.join("src");
    fs::write(&src, &data).unwrap();
    for store in Store::both() {
        for (method, ext) in [
            ("lz4", ".lz4"),
            ("zstd", ".zst"),
            ("lzma", ".lzma"),
            ("brotli", ".br"),
            ("none", ""),
        ] {
            for encrypted in [false, true] {
                let env = codec_env(method, encrypted);
                let remote = format!("t/{method}-{encrypted}");
                store
                    .walden()
                    .envs(env.clone())
                    .args(["st", "put"])
                    .arg(&src)
                    .arg(&remote)
                    .run()
                    .assert_ok();
                let key = format!("{remote}{ext}");
                assert!(store.object_file(&key).is_file(), "{} {key}", store.name());
                let dest = tmp.join(format!("{}-{method}-{encrypted}", store.name()));
                store
                    .walden()
                    .envs(env.clone())
                    .args(["st", "get", &key])
                    .arg(&dest)
                    .run()
                    .assert_ok();
                assert!(
                    fs::read(&dest).unwrap() == data,
                    "{} {method} {encrypted}",
                    store.name()
                );
                let cat = store
                    .walden()
                    .envs(env.clone())
                    .args(["st", "cat", &key, "--decrypt", "--decompress"])
                    .run();
                cat.assert_ok();
                assert!(cat.stdout == data);
                // Raw bytes are what is stored: compressed and/or sealed.
                let raw = store.walden().args(["st", "cat", &key]).run();
                raw.assert_ok();
                assert_eq!(raw.stdout == data, method == "none" && !encrypted);
                if encrypted {
                    // Without the key the stored bytes cannot be decoded.
                    let nokey = store
                        .walden()
                        .env("WALG_COMPRESSION_METHOD", method)
                        .args(["st", "cat", &key, "--decompress"])
                        .run();
                    assert!(method == "none" || nokey.code != 0 || nokey.stdout != data);
                }
            }
        }
    }
}

#[test]
fn lists_recurses_and_deletes() {
    let tmp = TempDir::new("st-ls");
    let src = tmp.join("f");
    fs::write(&src, b"hello").unwrap();
    for store in Store::both() {
        for remote in [
            "basebackups_005/b1/part_1",
            "basebackups_005/b1/part_2",
            "wal_005/a",
            "top",
        ] {
            store
                .walden()
                .args(["st", "put", "--no-compress"])
                .arg(&src)
                .arg(remote)
                .run()
                .assert_ok();
        }
        let top = store.walden().args(["st", "ls"]).run();
        top.assert_ok();
        let lines: Vec<String> = top.stdout_str().lines().map(String::from).collect();
        assert_eq!(lines[0], "type\tsize\tlast modified\tname");
        let names: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.rsplit('\t').next().unwrap())
            .collect();
        assert_eq!(
            names,
            ["basebackups_005/", "top", "wal_005/"],
            "{}",
            store.name()
        );
        assert!(lines
            .iter()
            .any(|l| l.starts_with("obj\t5\t") && l.ends_with("\ttop")));
        let rec = store
            .walden()
            .args(["st", "ls", "-r", "basebackups_005"])
            .run();
        rec.assert_ok();
        let names: Vec<String> = rec
            .stdout_str()
            .lines()
            .skip(1)
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(names, ["b1/part_1", "b1/part_2"], "{}", store.name());
        // As WAL-G: an existing object is only replaced with -f.
        let again = store
            .walden()
            .args(["st", "put", "--no-compress"])
            .arg(&src)
            .arg("top")
            .run();
        assert_eq!(again.code, 1);
        assert!(
            again.stderr.contains("already exists") && again.stderr.contains("-f"),
            "{}",
            again.stderr
        );
        store
            .walden()
            .args(["st", "put", "-f", "--no-compress"])
            .arg(&src)
            .arg("top")
            .run()
            .assert_ok();
        store.walden().args(["st", "rm", "top"]).run().assert_ok();
        store
            .walden()
            .args(["st", "rm", "basebackups_005"])
            .run()
            .assert_ok();
        let after = store.walden().args(["st", "ls", "-r"]).run();
        after.assert_ok();
        let names: Vec<String> = after
            .stdout_str()
            .lines()
            .skip(1)
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(names, ["wal_005/a"], "{}", store.name());
        let missing = store.walden().args(["st", "rm", "nothing/here"]).run();
        assert_eq!(missing.code, 1, "{}", missing.stderr);
        assert!(
            missing.stderr.contains("nothing/here"),
            "{}",
            missing.stderr
        );
    }
}

#[test]
fn listing_more_than_a_thousand_keys_and_deleting_them() {
    for store in Store::both() {
        // Objects made with st put, one process each, as a user would.
        let tmp = TempDir::new("st-many");
        let src = tmp.join("f");
        fs::write(&src, b"x").unwrap();
        let base = store.env();
        let mut children = Vec::new();
        for i in 0..1100 {
            let mut cmd = std::process::Command::new(crate::harness::walden_bin());
            crate::harness::walden::scrub_env(&mut cmd);
            cmd.envs(base.clone())
                .env("HOME", tmp.path())
                .args(["st", "put", "--no-compress"])
                .arg(&src)
                .arg(format!("wal_005/{i:024X}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            children.push(cmd.spawn().expect("spawn walden"));
            if children.len() == 16 {
                for mut c in children.drain(..) {
                    assert!(c.wait().unwrap().success());
                }
            }
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let ls = store.walden().args(["st", "ls", "wal_005/"]).run();
        ls.assert_ok();
        let names: Vec<String> = ls
            .stdout_str()
            .lines()
            .skip(1)
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 1100, "{}", store.name());
        assert_eq!(names[0], format!("{:024X}", 0));
        assert_eq!(names[1099], format!("{:024X}", 1099));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names, "listing comes in key order");
        store
            .walden()
            .args(["st", "rm", "wal_005"])
            .run()
            .assert_ok();
        let ls = store.walden().args(["st", "ls", "-r"]).run();
        ls.assert_ok();
        assert_eq!(ls.stdout_str().lines().count(), 1, "{}", ls.stdout_str());
    }
}

#[test]
fn s3_multipart_round_trip_of_100_mb() {
    let store = Store::s3();
    let tmp = TempDir::new("st-big");
    let src = tmp.join("big");
    let data = noise(100 << 20, 42);
    fs::write(&src, &data).unwrap();
    store
        .walden()
        .env("WALG_UPLOAD_CONCURRENCY", "3")
        .args(["st", "put", "--no-compress"])
        .arg(&src)
        .arg("big/object")
        .run()
        .assert_ok();
    // nanio keeps S3's multipart ETag form, "<md5>-<parts>", in its metadata.
    let meta = store_meta(&store, "big/object");
    assert!(
        meta.contains("-5\\\""),
        "100 MiB in 20 MiB parts is 5 parts: {meta}"
    );
    let dest = tmp.join("back");
    store
        .walden()
        .args(["st", "get", "big/object"])
        .arg(&dest)
        .run()
        .assert_ok();
    assert!(fs::read(&dest).unwrap() == data);
}

fn store_meta(store: &Store, key: &str) -> String {
    let object = store.object_file(key);
    let Store::S3 { server } = store else {
        return String::new();
    };
    let rel = object.strip_prefix(server.bucket_dir()).unwrap();
    let meta = server
        .bucket_dir()
        .join(".nanio-meta")
        .join(format!("{}.json", rel.display()));
    fs::read_to_string(&meta).unwrap_or_else(|e| panic!("{}: {e}", meta.display()))
}

#[test]
fn damaged_objects_and_wrong_keys_are_refused_and_nothing_is_written() {
    let tmp = TempDir::new("st-bad");
    let src = tmp.join("src");
    let data = text(100_000);
    fs::write(&src, &data).unwrap();
    for store in Store::both() {
        for method in ["lz4", "zstd", "lzma", "brotli"] {
            let ext = match method {
                "zstd" => "zst",
                "brotli" => "br",
                m => m,
            };
            for encrypted in [false, true] {
                let env = codec_env(method, encrypted);
                store
                    .walden()
                    .envs(env.clone())
                    .args(["st", "put", "-f"])
                    .arg(&src)
                    .arg("obj")
                    .run()
                    .assert_ok();
                let key = format!("obj.{ext}");
                let raw = store.walden().args(["st", "cat", &key]).run();
                raw.assert_ok();
                let good = raw.stdout;
                let mut flipped = good.clone();
                let mid = flipped.len() / 2;
                flipped[mid] ^= 0x40;
                let mut cases: Vec<(&str, Vec<u8>)> = vec![
                    ("truncated", good[..good.len() - 3].to_vec()),
                    ("cut in half", good[..good.len() / 2].to_vec()),
                ];
                // Raw brotli and LZMA-alone streams carry no checksum, so
                // only encryption can catch a flipped byte in them.
                if encrypted || method == "lz4" || method == "zstd" {
                    cases.push(("tampered", flipped));
                }
                for (what, bytes) in cases {
                    store.put_raw(tmp.path(), &key, &bytes);
                    let dest = tmp.join("dest");
                    let out = store
                        .walden()
                        .envs(env.clone())
                        .args(["st", "get", &key])
                        .arg(&dest)
                        .run();
                    assert_eq!(
                        out.code,
                        1,
                        "{} {method} {encrypted} {what}: {}",
                        store.name(),
                        out.stderr
                    );
                    assert!(
                        out.stderr.contains(&key),
                        "error names the object: {}",
                        out.stderr
                    );
                    assert!(!dest.exists(), "{what}: nothing may be written");
                    assert_eq!(
                        fs::read_dir(tmp.path()).unwrap().count(),
                        1,
                        "only the source file: no temp file left behind"
                    );
                }
                if encrypted {
                    store.put_raw(tmp.path(), &key, &good);
                    let dest = tmp.join("dest");
                    let out = store
                        .walden()
                        .env("WALG_COMPRESSION_METHOD", method)
                        .env("WALG_LIBSODIUM_KEY", "another key, 32 bytes long......")
                        .args(["st", "get", &key])
                        .arg(&dest)
                        .run();
                    assert_eq!(out.code, 1);
                    assert!(
                        out.stderr.contains("wrong WALG_LIBSODIUM_KEY"),
                        "{}",
                        out.stderr
                    );
                    assert!(!dest.exists());
                }
            }
        }
    }
}

#[test]
fn bad_settings_are_errors_that_name_the_setting() {
    let tmp = TempDir::new("st-settings");
    let repo = tmp.join("repo").display().to_string();
    let src = tmp.join("f");
    fs::write(&src, b"x").unwrap();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("WALG_FILE_PREFIX", &repo),
                ("WALG_COMPRESSION_METHOD", "snappy"),
            ],
            "WALG_COMPRESSION_METHOD",
        ),
        (
            vec![
                ("WALG_FILE_PREFIX", &repo),
                ("WALG_UPLOAD_CONCURRENCY", "0"),
            ],
            "WALG_UPLOAD_CONCURRENCY",
        ),
        (
            vec![
                ("WALG_S3_PREFIX", "bucket/path"),
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "b"),
            ],
            "WALG_S3_PREFIX",
        ),
        (
            vec![("WALG_FILE_PREFIX", &repo), ("WALG_LIBSODIUM_KEY", "short")],
            "WALG_LIBSODIUM_KEY",
        ),
        (
            vec![
                ("WALG_FILE_PREFIX", &repo),
                ("WALG_LIBSODIUM_KEY", "abababababababababab"),
                ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
            ],
            "WALG_LIBSODIUM_KEY",
        ),
        (
            vec![("WALG_FILE_PREFIX", &repo), ("WALG_LOG_LEVEL", "LOUD")],
            "WALG_LOG_LEVEL",
        ),
        (
            vec![("WALG_FILE_PREFIX", &repo), ("WALG_ZSTD_LEVEL", "best")],
            "WALG_ZSTD_LEVEL",
        ),
        (vec![], "WALG_FILE_PREFIX or WALG_S3_PREFIX"),
    ];
    for (env, named) in cases {
        let out = Walden::new()
            .envs(env.clone())
            .args(["st", "put"])
            .arg(&src)
            .arg("x")
            .run();
        assert_eq!(out.code, 1, "{env:?}");
        assert!(out.stderr.contains(named), "{env:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("ERROR: "), "{}", out.stderr);
    }
    // The short libsodium key is not echoed back.
    let out = Walden::new()
        .env("WALG_FILE_PREFIX", &repo)
        .env("WALG_LIBSODIUM_KEY", "sekrit-short")
        .args(["st", "put"])
        .arg(&src)
        .arg("x")
        .run();
    assert!(!out.stderr.contains("sekrit-short"), "{}", out.stderr);
}

#[test]
fn config_file_and_secrets() {
    let tmp = TempDir::new("st-config");
    let repo = tmp.join("repo");
    let config = tmp.join("walg.json");
    fs::write(
        &config,
        format!(
            r#"{{"WALG_FILE_PREFIX": "{}", "WALG_LIBSODIUM_KEY": "config-file-secret-0123456789abcdef", "AWS_SECRET_ACCESS_KEY": "aws-secret-value", "WALG_LOG_LEVEL": "DEVEL", "WALG_UPLOAD_CONCURRENCY": 2}}"#,
            repo.display()
        ),
    )
    .unwrap();
    let src = tmp.join("f");
    fs::write(&src, b"config works").unwrap();
    let out = Walden::new()
        .arg("--config")
        .arg(&config)
        .args(["st", "put"])
        .arg(&src)
        .arg("c")
        .run();
    out.assert_ok();
    assert!(repo.join("c.lz4").is_file());
    assert!(
        out.stderr.contains("DEBUG: "),
        "DEVEL logging from the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("WALG_LIBSODIUM_KEY=--HIDDEN--"),
        "{}",
        out.stderr
    );
    for secret in ["config-file-secret", "aws-secret-value"] {
        assert!(
            !out.stderr.contains(secret),
            "secret leaked: {}",
            out.stderr
        );
    }
    // The same file through WALG_CONFIG_PATH, and a YAML one.
    let out = Walden::new()
        .env("WALG_CONFIG_PATH", &config)
        .args(["st", "cat", "c.lz4", "--decrypt", "--decompress"])
        .run();
    out.assert_ok();
    assert_eq!(out.stdout, b"config works");
    let yaml = tmp.join("walg.yaml");
    fs::write(
        &yaml,
        format!(
            "WALG_FILE_PREFIX: {}\nWALG_COMPRESSION_METHOD: zstd\n",
            repo.display()
        ),
    )
    .unwrap();
    Walden::new()
        .arg("--config")
        .arg(&yaml)
        .args(["st", "put"])
        .arg(&src)
        .arg("y")
        .run()
        .assert_ok();
    assert!(repo.join("y.zst").is_file());
    // The environment wins over the file.
    let out = Walden::new()
        .arg("--config")
        .arg(&yaml)
        .env("WALG_COMPRESSION_METHOD", "brotli")
        .args(["st", "put"])
        .arg(&src)
        .arg("z")
        .run();
    out.assert_ok();
    assert!(repo.join("z.br").is_file());
    let broken = tmp.join("broken.json");
    fs::write(&broken, "{ not json").unwrap();
    let out = Walden::new()
        .arg("--config")
        .arg(&broken)
        .args(["st", "ls"])
        .run();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("broken.json"), "{}", out.stderr);
}

#[test]
fn help_version_and_unknown_commands_need_no_configuration() {
    let out = Walden::new().arg("--help").run();
    out.assert_ok();
    for cmd in [
        "backup-push",
        "wal-push",
        "wal-fetch",
        "st",
        "delete",
        "wal-verify",
    ] {
        assert!(out.stdout_str().contains(cmd), "{cmd}");
    }
    let out = Walden::new().args(["help", "st"]).run();
    out.assert_ok();
    assert!(out.stdout_str().contains("st ls"));
    let out = Walden::new().args(["wal-push", "--help"]).run();
    out.assert_ok();
    assert!(out.stdout_str().contains("walden wal-push PATH"));
    let out = Walden::new().arg("--version").run();
    out.assert_ok();
    assert!(out.stdout_str().starts_with("walden version "));
    let out = Walden::new().arg("frobnicate").run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("unknown command 'frobnicate'"),
        "{}",
        out.stderr
    );
    let out = Walden::new().args(["st", "check", "write"]).run();
    assert_eq!(out.code, 1, "no storage configured");
}

#[test]
fn check_read_and_write() {
    for mut store in Store::both() {
        store
            .walden()
            .args(["st", "check", "write"])
            .run()
            .assert_ok();
        store
            .walden()
            .args(["st", "check", "read"])
            .run()
            .assert_ok();
        if let Some(server) = store.server() {
            server.stop();
            let out = store
                .walden()
                .env("S3_MAX_RETRIES", "1")
                .args(["st", "check", "read"])
                .run();
            assert_eq!(out.code, 1);
            assert!(out.stderr.contains("ERROR"), "{}", out.stderr);
        }
    }
}
