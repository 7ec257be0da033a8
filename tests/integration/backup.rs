//! backup-push and backup-fetch end to end: a backup taken while pgbench
//! writes, restored with backup-fetch and replayed through wal-fetch to
//! the primary's last commit; and the ways a restore must refuse.

use std::fs;
use std::time::Duration;

use crate::harness::{PgCluster, TempDir};
use crate::store::{codec_env, Store};

fn archiving_cluster(store: &Store, codec: &[(String, String)]) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        .env(store.env())
        .env(codec.to_vec())
        .start()
}

const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

fn backup_under_load_and_restore(
    store: Store,
    method: &str,
    encrypted: bool,
    tar_size: &str,
    disk_concurrency: &str,
) {
    let codec = codec_env(method, encrypted);
    let mut pg = archiving_cluster(&store, &codec);
    pg.pgbench_init(4);

    std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "6", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        store
            .walden()
            .envs(codec.clone())
            .envs(pg.env())
            .env("WALG_TAR_SIZE_THRESHOLD", tar_size)
            .env("WALG_UPLOAD_DISK_CONCURRENCY", disk_concurrency)
            .env("WALG_SENTINEL_USER_DATA", r#"{"purpose":"test"}"#)
            .args(["backup-push", "--permanent"])
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
        load.join().unwrap();
    });
    pg.pgbench(&["-n", "-t", "500", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'after the backup'::text AS note");
    let expected = pg.psql(ROWS);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    // WAL-G's layout: one sentinel with WAL-G's fields, metadata, tars.
    let listing = store.walden().args(["st", "ls", "basebackups_005/"]).run();
    listing.assert_ok();
    let text = listing.stdout_str();
    let name = text
        .split_whitespace()
        .find_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .unwrap_or_else(|| panic!("a sentinel in {text}"))
        .to_string();
    assert!(name.starts_with("base_") && name.len() == 29, "{name}");
    let sentinel: serde_json::Value = serde_json::from_slice(
        &fs::read(store.object_file(&format!("basebackups_005/{name}_backup_stop_sentinel.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sentinel["Version"], 2);
    assert_eq!(sentinel["IsPermanent"], true);
    assert_eq!(sentinel["UserData"]["purpose"], "test");
    assert!(sentinel["FinishLSN"].as_u64() > sentinel["LSN"].as_u64());
    assert!(store
        .object_file(&format!("basebackups_005/{name}/metadata.json"))
        .is_file());
    let ext = match method {
        "zstd" => ".zst",
        "lz4" => ".lz4",
        _ => "",
    };
    for tar in ["part_001", "pg_control", "backup_label"] {
        let key = format!("basebackups_005/{name}/tar_partitions/{tar}.tar{ext}");
        assert!(store.object_file(&key).is_file(), "{key}");
    }
    let parts = fs::read_dir(store.object_file(&format!("basebackups_005/{name}/tar_partitions")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("part_"))
        })
        .count();
    if tar_size == "1048576" {
        assert!(
            parts > 3,
            "a 1 MiB threshold splits the data: {parts} parts"
        );
    }
    check_files_metadata(&store, &name, ext, &codec);
    // GNU tar reads what we wrote, members named as WAL-G names them.
    for (tar, members) in [
        ("pg_control", "/global/pg_control\n"),
        ("backup_label", "backup_label\ntablespace_map\n"),
    ] {
        let key = format!("basebackups_005/{name}/tar_partitions/{tar}.tar{ext}");
        let out = store
            .walden()
            .envs(codec.clone())
            .args(["st", "cat", "--decrypt", "--decompress", &key])
            .run();
        out.assert_ok();
        let raw = TempDir::new("backup-tar");
        let file = raw.join("t.tar");
        fs::write(&file, &out.stdout).unwrap();
        let list = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&file)
            .output()
            .unwrap();
        assert!(list.status.success(), "{list:?}");
        assert_eq!(String::from_utf8_lossy(&list.stdout), members, "{key}");
    }

    let restored_dir = TempDir::new("backup-restored");
    let data = restored_dir.join("data");
    store
        .walden()
        .envs(codec.clone())
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .run()
        .assert_ok();
    assert!(data.join("global/pg_control").is_file());
    assert!(data.join("backup_label").is_file());
    assert!(
        data.join("pg_wal").is_dir(),
        "excluded directories are restored empty"
    );
    assert!(!data.join("postmaster.pid").exists());
    fs::write(data.join("recovery.signal"), "").unwrap();
    let restored = PgCluster::builder()
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .env(store.env())
        .env(codec.clone())
        .start_restored(data.clone());
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
    assert_eq!(restored.psql("SELECT note FROM marker"), "after the backup");
    let log = fs::read_to_string(restored.log_path()).unwrap();
    assert!(
        log.contains("restored log file"),
        "replayed from the archive:\n{log}"
    );
}

/// `files_metadata.json` as WAL-G writes it (spec §3.3): every part
/// listed in `TarFileSets` with the members it holds, `Files` keyed by
/// member name, pg_control in neither; the sentinel then lacks
/// `FilesMetadataDisabled`.
fn check_files_metadata(store: &Store, name: &str, ext: &str, codec: &[(String, String)]) {
    let read = |key: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(store.object_file(key)).unwrap()).unwrap()
    };
    let sentinel = read(&format!("basebackups_005/{name}_backup_stop_sentinel.json"));
    assert!(
        sentinel.get("FilesMetadataDisabled").is_none(),
        "{sentinel}"
    );
    let meta = read(&format!("basebackups_005/{name}/files_metadata.json"));
    let files = meta["Files"].as_object().expect("Files");
    for member in ["/base", "/global", "/PG_VERSION", "/pg_wal"] {
        let entry = &files[member];
        assert_eq!(entry["IsIncremented"], false, "{member}: {entry}");
        assert_eq!(entry["IsSkipped"], false);
        assert!(
            entry["MTime"].as_str().is_some_and(|t| t.len() >= 20),
            "{entry}"
        );
    }
    assert!(files.get("/global/pg_control").is_none());
    let sets = meta["TarFileSets"].as_object().expect("TarFileSets");
    assert_eq!(
        sets[&format!("backup_label.tar{ext}")],
        serde_json::json!(["tablespace_map", "backup_label"])
    );
    let dir = store.object_file(&format!("basebackups_005/{name}/tar_partitions"));
    let mut parts: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part_"))
        .collect();
    parts.sort();
    let mut listed: Vec<String> = sets
        .keys()
        .filter(|k| k.starts_with("part_"))
        .cloned()
        .collect();
    listed.sort();
    assert_eq!(parts, listed, "every part and only they are in TarFileSets");
    let mut in_sets = 0;
    for part in parts.iter().take(3) {
        let out = store
            .walden()
            .envs(codec.to_vec())
            .args(["st", "cat", "--decrypt", "--decompress"])
            .arg(format!("basebackups_005/{name}/tar_partitions/{part}"))
            .run();
        out.assert_ok();
        let members: Vec<&str> = sets[part]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let mut archive = tar::Archive::new(&out.stdout[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            assert!(members.contains(&path.as_str()), "{path} listed for {part}");
            in_sets += 1;
        }
    }
    assert!(in_sets > 0);
    let total: usize = sets.values().map(|v| v.as_array().unwrap().len()).sum();
    assert!(
        total >= files.len(),
        "{total} members in sets, {} files",
        files.len()
    );
}

#[test]
fn backup_fs_lz4_many_partitions() {
    // A tiny threshold: every file closes a partition.
    // Three builders fill partitions at once.
    backup_under_load_and_restore(Store::fs(), "lz4", false, "1048576", "3");
}

#[test]
fn backup_s3_zstd_encrypted() {
    backup_under_load_and_restore(Store::s3(), "zstd", true, "1073741823", "1");
}

/// A tar built by hand, the way a hostile storage would plant it.
fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn backup_fetch_refuses_bad_input() {
    for store in Store::both() {
        refuses_bad_input(store);
    }
}

fn refuses_bad_input(store: Store) {
    let scratch = TempDir::new("backup-bad");
    let none = [("WALG_COMPRESSION_METHOD", "none")];

    // No backups at all: LATEST is a clear error.
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(scratch.join("d0"))
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("no backups found"), "{}", out.dump());

    // A complete-looking backup whose data tar holds `../evil`.
    let name = "base_000000010000000000000002";
    let prefix = format!("basebackups_005/{name}/tar_partitions");
    store.put_raw(
        scratch.path(),
        &format!("{prefix}/part_001.tar"),
        &tar_bytes(&[("/PG_VERSION", b"15\n"), ("../evil", b"owned")]),
    );
    store.put_raw(
        scratch.path(),
        &format!("{prefix}/pg_control.tar"),
        &tar_bytes(&[("/global/pg_control", b"x")]),
    );
    // Without its sentinel the backup does not exist.
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(scratch.join("d1"))
        .arg(name)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("backup {name} not found")),
        "{}",
        out.dump()
    );
    assert!(
        !scratch.join("d1").exists(),
        "nothing created for an unknown backup"
    );

    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        br#"{"LSN":33554472,"PgVersion":150000,"FinishLSN":33554600,"Version":2}"#,
    );
    let dest = scratch.join("d2");
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(&dest)
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("'../evil'"), "{}", out.dump());
    assert!(
        out.stderr.contains("outside the destination"),
        "{}",
        out.dump()
    );
    assert!(!scratch.join("evil").exists(), "nothing lands outside DEST");
    assert!(!dest.join("global/pg_control").exists(), "no pg_control");

    // A second backup, sentinel missing: it is not LATEST.
    let other = "base_000000010000000000000009";
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{other}/tar_partitions/pg_control.tar"),
        &tar_bytes(&[("/global/pg_control", b"y")]),
    );
    // The planted backup, now harmless: LATEST must still be it, not `other`.
    store.put_raw(
        scratch.path(),
        &format!("{prefix}/part_001.tar"),
        &tar_bytes(&[("/PG_VERSION", b"15\n")]),
    );
    let dest3 = scratch.join("d3");
    store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(&dest3)
        .arg("LATEST")
        .run()
        .assert_ok();
    assert_eq!(fs::read(dest3.join("global/pg_control")).unwrap(), b"x");

    // DEST not empty.
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(&dest3)
        .arg(name)
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("is not empty"), "{}", out.dump());

    // A delta backup (WAL-G's DeltaFrom) is refused, not restored as if full.
    let delta = "base_00000001000000000000000B_D_000000010000000000000002";
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{delta}_backup_stop_sentinel.json"),
        br#"{"LSN":1,"DeltaLSN":1,"DeltaFrom":"base_000000010000000000000002","DeltaFullName":"base_000000010000000000000002","DeltaCount":1}"#,
    );
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(scratch.join("d5"))
        .arg(delta)
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("delta backup"), "{}", out.dump());
    assert!(!scratch.join("d5").exists());

    // User data selects the backup: with a name too, it is refused (as
    // WAL-G does), not ignored.
    let out = store
        .walden()
        .envs(none)
        .env("WALG_FETCH_TARGET_USER_DATA", r#"{"x":1}"#)
        .arg("backup-fetch")
        .arg(scratch.join("d6"))
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("WALG_FETCH_TARGET_USER_DATA"),
        "{}",
        out.dump()
    );

    // Unknown name.
    let out = store
        .walden()
        .envs(none)
        .arg("backup-fetch")
        .arg(scratch.join("d4"))
        .arg("base_0000000100000000000000FF")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{}", out.dump());
}

#[test]
fn backup_push_refuses_bad_user_data_before_uploading() {
    let store = Store::fs();
    let pg = PgCluster::builder().start();
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_SENTINEL_USER_DATA", "{not json")
        .arg("backup-push")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.dump());
    assert!(
        !store.object_file("basebackups_005").exists(),
        "nothing uploaded"
    );
}

/// A backup-push killed (SIGKILL) while uploading data tars, or while its
/// stop waits for the archive, leaves no sentinel: the
/// backup does not exist, LATEST is unaffected, and the next push works.
#[test]
fn backup_push_killed_leaves_no_backup() {
    let store = Store::fs();
    let mut pg = archiving_cluster(&store, &codec_env("zstd", false));
    pg.pgbench_init(10);
    let push = || {
        store
            .walden()
            .envs(pg.env())
            .env("WALG_COMPRESSION_METHOD", "zstd")
            .env("WALG_TAR_SIZE_THRESHOLD", "1048576")
            .arg("backup-push")
    };
    push().run().assert_ok();
    let first = backup_list_names(&store);
    assert_eq!(first.len(), 1, "{first:?}");
    let base = store.object_file("basebackups_005");
    // The tar objects of backups other than the finished one.
    let new_tars = || -> Vec<String> {
        fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy() != first[0])
                    .flat_map(|e| fs::read_dir(e.path().join("tar_partitions")).into_iter())
                    .flatten()
                    .flatten()
                    .map(|f| f.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let kill_when = |stage: &str, reached: &dyn Fn(&[String]) -> bool| {
        let running = push().spawn();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !reached(&new_tars()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{stage}: never reached ({:?})",
                new_tars()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        running.signal(SIGKILL);
        let out = running.wait(Duration::from_secs(30));
        assert_ne!(out.code, 0, "{stage}: killed: {}", out.dump());
        // No sentinel: the unfinished backup does not exist for any reader.
        assert_eq!(backup_list_names(&store), first, "{stage}");
        let shown = store.walden().args(["backup-show", "LATEST"]).run();
        shown.assert_ok();
        assert!(
            shown
                .stdout_str()
                .starts_with(&format!("backup_name:             {}\n", first[0])),
            "{stage}: {}",
            shown.dump()
        );
        // Start the next stage from a clean slate of new tars.
        for e in fs::read_dir(&base).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() && e.file_name().to_string_lossy() != first[0] {
                fs::remove_dir_all(e.path()).unwrap();
            }
        }
    };
    // While data tars are being uploaded.
    kill_when("data tars", &|tars| {
        tars.iter().filter(|t| t.starts_with("part_")).count() >= 2
    });
    // After pg_control's tar, while the stop waits for the archive (made
    // slow here, so the window is seconds wide).
    let slow = format!("'sleep 3; {} wal-push %p'", pg.walden_path().display());
    pg.psql(&format!("ALTER SYSTEM SET archive_command = {slow}"));
    pg.psql("SELECT pg_reload_conf()");
    kill_when("backup stop", &|tars| {
        tars.iter().any(|t| t.starts_with("pg_control.tar"))
    });
    pg.psql("ALTER SYSTEM RESET archive_command");
    pg.psql("SELECT pg_reload_conf()");

    // PostgreSQL ended the killed sessions' backups; a new one succeeds
    // and becomes LATEST.
    push().run().assert_ok();
    let names = backup_list_names(&store);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], first[0]);
    pg.stop();
}

/// Names in `backup-list` order (oldest first).
fn backup_list_names(store: &Store) -> Vec<String> {
    let out = store.walden().arg("backup-list").run();
    out.assert_ok();
    out.stdout_str()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Not catchable: nothing of walden's clean-up runs.
const SIGKILL: i32 = 9;
