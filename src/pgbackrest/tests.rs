//! The reader against the three sample repositories made by pgBackRest
//! 2.45 (shared/fixtures/pgbackrest), each extracted to a temp dir: the
//! fixtures themselves are never touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::list::{listing, Options};
use super::repo::Repo;
use crate::storage::fs::FsStorage;

/// `../shared` beside the checkout, as CI lays it out.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/pgbackrest");

pub struct Extracted {
    pub root: PathBuf,
    pub encrypted: bool,
}

impl Drop for Extracted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Where the fixtures are: `WALDEN_PGBR_FIXTURES`, or the shared folder.
fn fixtures() -> PathBuf {
    std::env::var_os("WALDEN_PGBR_FIXTURES").map_or_else(|| PathBuf::from(FIXTURES), PathBuf::from)
}

pub fn extract(set: &str) -> Extracted {
    let root = std::env::temp_dir().join(format!(
        "walden-pgbr-{set}-{}",
        crate::localfile::random_suffix()
    ));
    fs::create_dir_all(&root).unwrap();
    let file = fs::File::open(fixtures().join(format!("{set}.tar.zst")))
        .unwrap_or_else(|e| panic!("fixture {set}.tar.zst in {}: {e}", fixtures().display()));
    let decoder = zstd::stream::read::Decoder::new(file).unwrap();
    tar::Archive::new(decoder).unpack(&root).unwrap();
    make_writable(&root);
    Extracted {
        root,
        encrypted: set == "zst-aes",
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() | 0o600 | if meta.is_dir() { 0o700 } else { 0 };
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode)).unwrap();
        if meta.is_dir() {
            make_writable(&entry.path());
        }
    }
}

pub fn repo(x: &Extracted) -> Repo {
    Repo::new(Arc::new(FsStorage::new(x.root.join("repo"))), "demo".into())
        .with_cipher_pass(pass_of(x))
}

/// The passphrase of the encrypted sample (EXPECTED.md), given to every
/// repository: a plain one ignores it.
const S2_PASS: &str = "walrus-fixture-passphrase";

fn pass_of(x: &Extracted) -> Option<String> {
    x.encrypted.then(|| S2_PASS.to_string())
}

fn expected(set: &str) -> Value {
    let text = fs::read_to_string(fixtures().join("EXPECTED.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["sets"][set].clone()
}

fn json_listing(repo: &Repo) -> Vec<Value> {
    let text = listing(
        repo,
        Options {
            json: true,
            detail: true,
            pretty: false,
        },
    )
    .unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every field of EXPECTED.json's backups the listing shows.
pub fn check_listing_matches(set: &str) -> Vec<Value> {
    let x = extract(set);
    let listed = json_listing(&repo(&x));
    let want = expected(set);
    let want = want["backups"].as_array().unwrap();
    assert_eq!(listed.len(), want.len(), "{set}: {listed:?}");
    for (got, want) in listed.iter().zip(want) {
        let label = want["label"].as_str().unwrap();
        assert_eq!(got["backup_name"], want["label"], "{set}");
        assert_eq!(got["type"], want["type"], "{label}");
        assert_eq!(got["prior"], want["prior"], "{label}");
        let refs = want["reference"].clone();
        let refs = if refs.is_null() {
            Value::Array(vec![])
        } else {
            refs
        };
        assert_eq!(got["references"], refs, "{label}");
        assert_eq!(got["wal_file_name"], want["archive_start"], "{label}");
        assert_eq!(got["wal_stop_file_name"], want["archive_stop"], "{label}");
        assert_eq!(got["start_lsn"], want["lsn_start"], "{label}");
        assert_eq!(got["finish_lsn"], want["lsn_stop"], "{label}");
        // EXPECTED.json leaves a size null where `pgbackrest info` has none.
        for (ours, theirs) in [
            ("uncompressed_size", "size"),
            ("compressed_size", "repo_size"),
            ("compressed_size_delta", "repo_delta"),
        ] {
            if !want[theirs].is_null() {
                assert_eq!(got[ours], want[theirs], "{label} {ours}");
            }
        }
        for (ours, theirs) in [
            ("start_time", "timestamp_start"),
            ("finish_time", "timestamp_stop"),
        ] {
            let t = crate::backup::gotime::GoTime::parse(got[ours].as_str().unwrap()).unwrap();
            let secs = t.t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(Some(secs), want[theirs].as_u64(), "{label} {ours}");
        }
        assert_eq!(
            got["system_identifier"].to_string(),
            expected(set)["system_identifier"].as_str().unwrap(),
            "{label}"
        );
    }
    listed
}

#[test]
fn lists_plain_lz4_repository_as_expected() {
    let listed = check_listing_matches("lz4-plain");
    assert!(listed.iter().all(|b| b["compression"] == "lz4"));
    assert!(listed.iter().all(|b| b["block_incremental"] == false));
    // 1795498732 / 1795498733 in EXPECTED.json, as RFC 3339 in UTC.
    assert_eq!(listed[1]["start_time"], "2026-11-24T05:38:52Z");
    assert_eq!(listed[1]["time"], "2026-11-24T05:38:53Z");
}

#[test]
fn lists_block_incremental_repository_and_marks_it() {
    let listed = check_listing_matches("lz4-blockincr-beta");
    assert!(listed.iter().all(|b| b["block_incremental"] == true));
}

#[test]
fn lists_encrypted_bundled_repository_as_expected() {
    let listed = check_listing_matches("zst-aes");
    assert!(listed.iter().all(|b| b["compression"] == "zst"));
    assert!(listed.iter().all(|b| b["bundle"] == true));
}

/// No passphrase: says which setting to give; a wrong one: says so, for
/// both twins, without a panic or garbage.
#[test]
fn encrypted_repository_without_or_with_wrong_passphrase_fails_clearly() {
    let x = extract("zst-aes");
    let storage = || Arc::new(FsStorage::new(x.root.join("repo")));
    let err = listing(&Repo::new(storage(), "demo".into()), Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGBACKREST_REPO1_CIPHER_PASS"), "{err}");
    assert!(err.contains("backup/demo/backup.info"), "{err}");
    let wrong = Repo::new(storage(), "demo".into()).with_cipher_pass(Some("walrus".into()));
    let err = listing(&wrong, Options::default()).unwrap_err().to_string();
    assert!(err.contains("wrong PGBACKREST_REPO1_CIPHER_PASS"), "{err}");
    assert!(err.contains("backup.info.copy"), "{err}");
    let err = super::wal::fetch(&wrong, "000000010000000000000003", &x.root.join("w"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("archive.info"), "{err}");
    assert!(!x.root.join("w").exists());
    let dest = x.root.join("d");
    let err = super::fetch::restore(&wrong, &fetch_opts(&dest, "LATEST"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong PGBACKREST_REPO1_CIPHER_PASS"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn plain_and_pretty_tables() {
    let x = extract("lz4-plain");
    let r = repo(&x);
    let plain = listing(&r, Options::default()).unwrap();
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines.len(), 4, "{plain}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "backup_name",
            "modified",
            "wal_file_name",
            "storage_name",
            "type"
        ]
    );
    let last: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        last,
        [
            "20261124-053849F_20261124-053854I",
            "2026-11-24T05:38:56Z",
            "000000010000000000000008",
            "default",
            "incr"
        ]
    );
    let detail = listing(
        &r,
        Options {
            detail: true,
            ..Options::default()
        },
    )
    .unwrap();
    let row: Vec<&str> = detail.lines().nth(3).unwrap().split_whitespace().collect();
    assert_eq!(row[5], "20261124-053849F_20261124-053852D");
    assert_eq!(row[6], "20261124-053849F,20261124-053849F_20261124-053852D");
    let pretty = listing(
        &r,
        Options {
            pretty: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(
        pretty.lines().nth(1).unwrap().contains("| TYPE "),
        "{pretty}"
    );
}

#[test]
fn damaged_backup_info_falls_back_to_its_copy_then_fails_clearly() {
    let x = extract("lz4-plain");
    let info = x.root.join("repo/backup/demo/backup.info");
    let flip = |p: &Path| {
        let mut bytes = fs::read(p).unwrap();
        let at = bytes.windows(4).position(|w| w == b"full").unwrap();
        bytes[at] = b'F';
        fs::write(p, bytes).unwrap();
    };
    flip(&info);
    let listed = json_listing(&repo(&x));
    assert_eq!(listed.len(), 3);
    flip(&x.root.join("repo/backup/demo/backup.info.copy"));
    let err = listing(&repo(&x), Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid checksum"), "{err}");
    assert!(err.contains("backup.info.copy"), "{err}");
}

#[test]
fn missing_stanza_says_what_to_check() {
    let x = extract("lz4-plain");
    let r = Repo::new(Arc::new(FsStorage::new(x.root.join("repo"))), "main".into());
    let err = listing(&r, Options::default()).unwrap_err().to_string();
    assert!(err.contains("PGBACKREST_STANZA='main'"), "{err}");
}

fn sha1_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every archived file of EXPECTED.json fetched by the name PostgreSQL
/// asks for: segments 16 MiB with the SHA-1 of their stored name,
/// `.backup` files as PostgreSQL wrote them.
fn check_wal_fetch(set: &str) {
    let x = extract(set);
    let r = repo(&x);
    let out = x.root.join("out");
    fs::create_dir_all(&out).unwrap();
    let want = expected(set);
    let files = want["wal_archive"]["files"].as_array().unwrap();
    assert!(!files.is_empty());
    for f in files {
        let stored = f.as_str().unwrap().rsplit('/').next().unwrap();
        let (name, sha) = match stored.split_once('-') {
            Some((name, rest)) => (name, Some(&rest[..40])),
            None => (stored, None),
        };
        let dest = out.join(name);
        super::wal::fetch(&r, name, &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        let bytes = fs::read(&dest).unwrap();
        match sha {
            Some(sha) => {
                assert_eq!(bytes.len(), 16 << 20, "{name}");
                assert_eq!(sha1_hex(&bytes), sha, "{name}");
            }
            None => assert!(bytes.starts_with(b"START WAL LOCATION"), "{name}"),
        }
    }
    // Past the end of the archive: "not found", exit 74.
    let err = super::wal::fetch(&r, "0000000100000000000000FF", &out.join("x")).unwrap_err();
    assert_eq!(err.exit_code(), 74, "{err}");
    let err = super::wal::fetch(&r, "00000002.history", &out.join("h")).unwrap_err();
    assert_eq!(err.exit_code(), 74, "{err}");
    assert!(!out.join("x").exists() && !out.join("h").exists());
}

#[test]
fn wal_fetch_plain_lz4_every_archived_file() {
    check_wal_fetch("lz4-plain");
}

#[test]
fn wal_fetch_block_incremental_repository_archive() {
    // The archive of a block-incremental repository is ordinary WAL.
    check_wal_fetch("lz4-blockincr-beta");
}

#[test]
fn wal_fetch_encrypted_archive_every_file() {
    check_wal_fetch("zst-aes");
}

/// A truncated segment and one whose bytes do not match its name's SHA-1:
/// exit 1 naming the stored file, and DEST not written.
#[test]
fn wal_fetch_damaged_segments_fail_without_writing() {
    let x = extract("lz4-plain");
    let r = repo(&x);
    let dir = x.root.join("repo/archive/demo/15-1/0000000100000000");
    let stored = |prefix: &str| {
        fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .unwrap()
    };
    let five = stored("000000010000000000000005-");
    let bytes = fs::read(&five).unwrap();
    fs::write(&five, &bytes[..bytes.len() / 2]).unwrap();
    let dest = x.root.join("five");
    let err = super::wal::fetch(&r, "000000010000000000000005", &dest).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains("000000010000000000000005-"),
        "{err}"
    );
    assert!(!dest.exists());

    // Same bytes under another segment's name: decodes fine, wrong SHA-1.
    let seven = stored("000000010000000000000007-");
    fs::copy(stored("000000010000000000000006-"), &seven).unwrap();
    let dest = x.root.join("seven");
    let err = super::wal::fetch(&r, "000000010000000000000007", &dest).unwrap_err();
    assert!(
        err.to_string().contains("not the SHA-1 in its name"),
        "{err}"
    );
    assert!(!dest.exists());

    // A second copy with another SHA-1: refused, not guessed.
    let mut dup = seven.file_name().unwrap().to_str().unwrap().to_string();
    dup.replace_range(25..29, "0000");
    fs::copy(&seven, dir.join(dup)).unwrap();
    let err = super::wal::fetch(&r, "000000010000000000000007", &dest).unwrap_err();
    assert!(err.to_string().contains("duplicate WAL"), "{err}");

    let err = super::wal::fetch(&r, "../../x", &dest).unwrap_err();
    assert!(err.to_string().contains("not a WAL segment"), "{err}");
}

fn fetch_opts(dest: &Path, label: &str) -> super::fetch::Options {
    super::fetch::Options::new(dest, label, 3)
}

fn count_files(dir: &Path) -> (usize, usize) {
    let (mut files, mut empty) = (0, 0);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            let (f, z) = count_files(&e.path());
            files += f;
            empty += z;
        } else {
            files += 1;
            empty += usize::from(meta.len() == 0);
        }
    }
    (files, empty)
}

/// Every backup of the plain repository, full, diff and incr: each file
/// checked against the manifest's size and SHA-1 while written (a mismatch
/// fails the restore), the counts of EXPECTED.json, modes and times.
#[test]
fn backup_fetch_every_backup_of_plain_repository() {
    check_backup_fetch("lz4-plain");
}

/// zst, aes-256-cbc with the passphrase chain, bundles (members read at
/// their offsets from the bundles of the full and the diff).
#[test]
fn backup_fetch_every_backup_of_encrypted_bundled_repository() {
    check_backup_fetch("zst-aes");
}

fn check_backup_fetch(set: &str) {
    use std::os::unix::fs::PermissionsExt;
    let x = extract(set);
    let r = repo(&x);
    let want = expected(set);
    for b in want["backups"].as_array().unwrap() {
        let label = b["label"].as_str().unwrap();
        let dest = x.root.join(format!("restore-{label}"));
        super::fetch::restore(&r, &fetch_opts(&dest, label))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let (files, empty) = count_files(&dest);
        assert_eq!(
            files as u64,
            b["manifest"]["files_in_manifest"].as_u64().unwrap(),
            "{label}"
        );
        assert_eq!(
            empty as u64,
            b["manifest"]["zero_length_files"].as_u64().unwrap(),
            "{label}"
        );
        assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
        assert!(fs::read(dest.join("backup_label"))
            .unwrap()
            .starts_with(b"START WAL LOCATION"));
        assert_eq!(
            fs::metadata(dest.join("global/pg_control")).unwrap().len(),
            8192
        );
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(""), 0o700, "{label}");
        assert_eq!(mode("base"), 0o700, "{label}");
        assert_eq!(mode("PG_VERSION"), 0o600, "{label}");
        assert!(dest.join("pg_wal/archive_status").is_dir());
    }
    // LATEST is the newest label of backup.info.
    let dest = x.root.join("latest");
    super::fetch::restore(&r, &fetch_opts(&dest, "LATEST")).unwrap();
    let last = want["backups"].as_array().unwrap().last().unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    let incr = x.root.join(format!("restore-{last}"));
    assert_eq!(
        fs::read(dest.join("backup_label")).unwrap(),
        fs::read(incr.join("backup_label")).unwrap()
    );
}

#[test]
fn backup_fetch_refuses_block_incremental_writing_nothing() {
    let x = extract("lz4-blockincr-beta");
    for label in ["20261124-054736F", "20261124-054736F_20261124-054739I"] {
        let dest = x.root.join("d");
        let err = super::fetch::restore(&repo(&x), &fetch_opts(&dest, label))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("block incremental") && err.contains(label),
            "{err}"
        );
        assert!(!dest.exists());
    }
}

/// A damaged data file, a truncated one, and a diff whose full is gone:
/// each an error naming the file, and no pg_control in DEST.
#[test]
fn backup_fetch_damage_is_named_and_leaves_no_startable_cluster() {
    let x = extract("lz4-plain");
    let r = repo(&x);
    let full = x.root.join("repo/backup/demo/20261124-053849F");
    let victim = full.join("pg_data/base/5/1259.lz4");
    let original = fs::read(&victim).unwrap();

    // Same length, one byte flipped in the middle of the compressed data.
    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x55;
    fs::write(&victim, &flipped).unwrap();
    let dest = x.root.join("flipped");
    let err = super::fetch::restore(&r, &fetch_opts(&dest, "20261124-053849F"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_data/base/5/1259"), "{err}");
    assert!(!dest.join("global/pg_control").exists());

    fs::write(&victim, &original[..original.len() - 100]).unwrap();
    let dest = x.root.join("truncated");
    let err = super::fetch::restore(&r, &fetch_opts(&dest, "20261124-053849F"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_data/base/5/1259"), "{err}");
    assert!(!dest.join("global/pg_control").exists());

    fs::write(&victim, &original).unwrap();
    fs::rename(&full, x.root.join("gone")).unwrap();
    let dest = x.root.join("orphan");
    let err = super::fetch::restore(&r, &fetch_opts(&dest, "20261124-053849F_20261124-053852D"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("20261124-053849F/pg_data/") && err.contains("missing"),
        "{err}"
    );
    assert!(!dest.join("global/pg_control").exists());

    // DEST must be empty.
    let err = super::fetch::restore(&r, &fetch_opts(&dest, "LATEST"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
}

/// wal-show: one timeline 1 in archive 15-1 from the min to the max
/// segment of EXPECTED.json, no holes; then a segment removed shows as a
/// gap of one.
#[test]
fn wal_show_ranges_and_gaps() {
    for set in ["lz4-plain", "zst-aes"] {
        let x = extract(set);
        let r = repo(&x);
        let want = expected(set);
        let text = super::walshow::report(&r, true).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        let t = &got[0];
        assert_eq!(got.as_array().unwrap().len(), 1, "{text}");
        assert_eq!(t["archive_id"], want["wal_archive"]["id"], "{set}");
        assert_eq!(t["timeline"], 1);
        assert_eq!(t["start_segment"], want["wal_archive"]["min"], "{set}");
        assert_eq!(t["end_segment"], want["wal_archive"]["max"], "{set}");
        assert_eq!(t["missing_segments"], 0, "{set}");
        assert_eq!(t["segment_size_mb"], 16, "{set}");
        let labels: Vec<Value> = want["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["label"].clone())
            .collect();
        assert_eq!(t["backups"], Value::Array(labels), "{set}");
        let table = super::walshow::report(&r, false).unwrap();
        assert!(table.contains("| 15-1 "), "{table}");
    }
    let x = extract("lz4-plain");
    let dir = x.root.join("repo/archive/demo/15-1/0000000100000000");
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("000000010000000000000005-")
        {
            fs::remove_file(p).unwrap();
        }
    }
    let got: Value =
        serde_json::from_str(&super::walshow::report(&repo(&x), true).unwrap()).unwrap();
    assert_eq!(got[0]["missing_segments"], 1);
    assert_eq!(got[0]["gaps"][0]["start"], "000000010000000000000005");
    assert!(super::walshow::report(&repo(&x), false)
        .unwrap()
        .contains("000000010000000000000005-000000010000000000000005"));
}

/// A flipped byte inside a bundle member: the restore fails naming the
/// file and the bundle, and DEST has no pg_control.
#[test]
fn backup_fetch_flipped_byte_in_bundle_is_named() {
    let x = extract("zst-aes");
    let bundle = x.root.join("repo/backup/demo/20261124-053905F/bundle/1");
    let mut bytes = fs::read(&bundle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(&bundle, bytes).unwrap();
    let dest = x.root.join("d");
    let err = super::fetch::restore(&repo(&x), &fetch_opts(&dest, "20261124-053905F"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_data/"), "{err}");
    assert!(!dest.join("global/pg_control").exists());
}

/// A damaged repository file the decoder still accepts (a flipped byte
/// in a literal of an lz4 block): the restore fails on the manifest's
/// repository checksum `rck`, naming the file, and writes no pg_control.
#[test]
fn backup_fetch_checks_the_repository_checksum() {
    use crate::codec::compression::{decoder, Method};
    use std::io::Read;
    let x = extract("lz4-plain");
    let victim = x
        .root
        .join("repo/backup/demo/20261124-053849F/pg_data/base/5/1259.lz4");
    let original = fs::read(&victim).unwrap();
    let accepted = (original.len() / 2..original.len() - 16).find_map(|at| {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        let mut out = Vec::new();
        let ok = decoder(Method::Lz4, Box::new(std::io::Cursor::new(bytes.clone())))
            .read_to_end(&mut out)
            .is_ok();
        ok.then_some(bytes)
    });
    let bytes = accepted.expect("a byte of 1259.lz4 whose flip the lz4 decoder accepts");
    fs::write(&victim, bytes).unwrap();
    let dest = x.root.join("d");
    let err = super::fetch::restore(&repo(&x), &fetch_opts(&dest, "20261124-053849F"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rck") && err.contains("pg_data/base/5/1259"),
        "{err}"
    );
    assert!(!dest.join("global/pg_control").exists());
}

/// A repository file cut short: the restore fails naming it, and DEST has
/// no pg_control that could start a half-restored cluster.
#[test]
fn backup_fetch_truncated_file_is_named() {
    let x = extract("lz4-plain");
    let victim = x
        .root
        .join("repo/backup/demo/20261124-053849F/pg_data/base/5/1259.lz4");
    let bytes = fs::read(&victim).unwrap();
    fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let dest = x.root.join("d");
    let err = super::fetch::restore(&repo(&x), &fetch_opts(&dest, "20261124-053849F"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_data/base/5/1259"), "{err}");
    assert!(!dest.join("global/pg_control").exists());
}

/// A diff backup whose manifest references a full backup that is gone:
/// a clear error naming the missing file, and no pg_control in DEST.
#[test]
fn backup_fetch_of_a_reference_to_a_missing_backup_fails_clearly() {
    let x = extract("lz4-plain");
    fs::remove_dir_all(x.root.join("repo/backup/demo/20261124-053849F")).unwrap();
    let dest = x.root.join("d");
    let err = super::fetch::restore(
        &repo(&x),
        &fetch_opts(&dest, "20261124-053849F_20261124-053852D"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("20261124-053849F"), "{err}");
    assert!(!dest.join("global/pg_control").exists());
}

/// The manifest of `label`, changed by `edit` and sealed again with the
/// checksum of its new content (spec §3.2), as the backup and its copy:
/// a hostile repository is one whose manifest checks out.
fn edit_manifest(x: &Extracted, label: &str, edit: impl Fn(&str) -> String) {
    let dir = x.root.join(format!("repo/backup/demo/{label}"));
    let text = fs::read_to_string(dir.join("backup.manifest")).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    let (content, _) = edited
        .rsplit_once("\n[backrest]\nbackrest-checksum=")
        .unwrap();
    let probe = format!("{content}\n[backrest]\nbackrest-checksum=\"0\"\n");
    let err = super::ini::parse(&mut probe.as_bytes(), "t", &|_| true)
        .unwrap_err()
        .to_string();
    let sum = err.rsplit(' ').next().unwrap();
    let sealed = format!("{content}\n[backrest]\nbackrest-checksum=\"{sum}\"\n");
    for name in ["backup.manifest", "backup.manifest.copy"] {
        fs::write(dir.join(name), &sealed).unwrap();
    }
}

const FULL: &str = "20261124-053849F";

/// A restore `edit` makes hostile fails with a message holding each of
/// `named`, and DEST has no pg_control (nor a temp file beside it).
fn refused(edit: impl Fn(&str) -> String, opts: impl Fn(&Path) -> super::fetch::Options) -> String {
    let x = extract("lz4-plain");
    edit_manifest(&x, FULL, edit);
    let dest = x.root.join("d");
    let err = super::fetch::restore(&repo(&x), &opts(&dest))
        .unwrap_err()
        .to_string();
    assert!(!dest.join("global/pg_control").exists(), "{err}");
    if let Ok(entries) = fs::read_dir(dest.join("global")) {
        for e in entries {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().contains("pg_control"),
                "{name:?} left: {err}"
            );
        }
    }
    err
}

fn restore_full(dest: &Path) -> super::fetch::Options {
    fetch_opts(dest, FULL)
}

/// Modes with bits above 0777 (setuid, setgid, sticky), on a file, a
/// directory or a default section, are refused naming the entry and the
/// mode: restored as root they would give a root-owned setuid file.
#[test]
fn backup_fetch_refuses_modes_above_0777() {
    for (from, to, named) in [
        (
            "pg_data/PG_VERSION={",
            "pg_data/PG_VERSION={\"mode\":\"4755\",",
            "file pg_data/PG_VERSION: mode '4755' has bits above 0777",
        ),
        (
            "pg_data/base={}",
            "pg_data/base={\"mode\":\"1777\"}",
            "directory pg_data/base: mode '1777' has bits above 0777",
        ),
        (
            "[target:file:default]\ngroup=\"postgres\"\nmode=\"0600\"",
            "[target:file:default]\ngroup=\"postgres\"\nmode=\"2600\"",
            "[target:file:default]: mode '2600'",
        ),
        (
            "pg_data/PG_VERSION={",
            "pg_data/PG_VERSION={\"mode\":\"rwx\",",
            "file pg_data/PG_VERSION: mode 'rwx' is not an octal mode",
        ),
    ] {
        let err = refused(|t| t.replacen(from, to, 1), restore_full);
        assert!(err.contains(named), "{err}");
    }
    let ok = |m: &str| super::fetch::mode_of(Some(&Value::from(m)), "x").unwrap();
    assert_eq!(ok("0777"), Some(0o777));
    assert_eq!(ok("0640"), Some(0o640));
    assert_eq!(super::fetch::mode_of(None, "x").unwrap(), None);
}

/// pg_control whose bytes do not match the manifest (a checksum or a
/// size the stored file does not have): refused naming it, and neither
/// `global/pg_control` nor its temp file is left in DEST.
#[test]
fn backup_fetch_damaged_pg_control_leaves_no_pg_control() {
    let control = |change: fn(&str) -> String| {
        move |t: &str| {
            t.lines()
                .map(|l| {
                    if l.starts_with("pg_data/global/pg_control=") {
                        change(l)
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
    };
    for change in [
        (|l: &str| l.replacen("\"checksum\":\"78", "\"checksum\":\"00", 1)) as fn(&str) -> String,
        |l: &str| l.replacen("\"size\":8192", "\"size\":8193", 1),
    ] {
        let err = refused(control(change), restore_full);
        assert!(
            err.contains("pg_data/global/pg_control") && err.contains("damaged"),
            "{err}"
        );
    }
}

/// `pg_data/global//pg_control` is `global/pg_control` to the file system
/// but not the name restored last: refused, and no pg_control written.
#[test]
fn backup_fetch_refuses_an_aliased_pg_control() {
    for alias in [
        "pg_data/global//pg_control=",
        "pg_data/global/./pg_control=",
    ] {
        let err = refused(
            |t| t.replacen("pg_data/global/pg_control=", alias, 1),
            restore_full,
        );
        assert!(
            err.contains(alias.trim_end_matches('=')) && err.contains("not a canonical path"),
            "{err}"
        );
    }
}
