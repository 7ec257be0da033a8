//! `walden delete` on a real archive: four backups of a running
//! PostgreSQL with writes between them, the oldest marked permanent.
//! Each form removes exactly what it should (object lists compared before
//! and after), the dry run changes nothing, the newest backup still
//! restores with the WAL that is left, and the storage requests of a
//! delete follow the work (counted against the scripted fake S3).

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use crate::harness::{walden_bin_for_postgres, FakeResponse, FakeS3, PgCluster, TempDir, Walden};
use crate::store::Store;

const ROWS: &str = "SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) \
                    || '/' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";

fn objects(store: &Store) -> BTreeSet<String> {
    let out = store.walden().args(["st", "ls", "-r", ""]).run();
    out.assert_ok();
    out.stdout_str()
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|k| k.starts_with("basebackups_005/") || k.starts_with("wal_005/"))
        .map(str::to_string)
        .collect()
}

fn backup_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = objects(store)
        .iter()
        .filter_map(|k| {
            k.strip_prefix("basebackups_005/")?
                .strip_suffix("_backup_stop_sentinel.json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn delete(store: &Store, args: &[&str]) -> crate::harness::Output {
    store.walden().arg("delete").args(args).run()
}

/// The 24-hex run of a key (WAL-G's ordering).
fn run_of(key: &str) -> Option<String> {
    let b = key.as_bytes();
    (0..b.len().saturating_sub(23))
        .find(|&i| {
            b[i..i + 24]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
        })
        .map(|i| key[i..i + 24].to_string())
}

#[test]
fn delete_retain_before_everything_garbage_and_restore() {
    let store = Store::s3();
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start();
    pg.pgbench_init(1);
    for i in 0..4 {
        if i > 0 {
            pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
            let seg = pg.switch_wal();
            pg.wait_for_archive(&seg, Duration::from_secs(60));
            // Sentinel times order backups; keep them apart.
            std::thread::sleep(Duration::from_millis(1100));
        }
        store.backup_push_under_load(&pg);
    }
    let names = backup_names(&store);
    assert_eq!(names.len(), 4, "{names:?}");
    store
        .walden()
        .args(["backup-mark", &names[0]])
        .run()
        .assert_ok();

    // Dry run: lists, changes nothing.
    let before = objects(&store);
    let out = delete(&store, &["retain", "2"]);
    out.assert_ok();
    assert_eq!(objects(&store), before, "a dry run deleted something");
    assert!(
        out.stderr
            .contains("Dry run: objects would be deleted count="),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains(&format!(
            "Object marked for deletion: basebackups_005/{}_backup_stop_sentinel.json",
            names[1]
        )),
        "{}",
        out.dump()
    );
    assert!(
        !out.stderr.contains(&format!("{}_backup_stop", names[0])),
        "permanent: {}",
        out.dump()
    );

    // retain 2: backup 1 goes, with the WAL before backup 2 except the
    // permanent backup's own.
    let out = delete(&store, &["retain", "2", "--confirm"]);
    out.assert_ok();
    assert!(
        out.stderr.contains("Objects deleted successfully: count="),
        "{}",
        out.dump()
    );
    let after = objects(&store);
    assert_eq!(
        backup_names(&store),
        vec![names[0].clone(), names[2].clone(), names[3].clone()]
    );
    let gone: BTreeSet<&String> = before.difference(&after).collect();
    assert!(gone.iter().all(|k| !k.contains(&names[0])), "{gone:?}");
    assert!(
        gone.iter()
            .any(|k| k.starts_with(&format!("basebackups_005/{}/", names[1]))),
        "{gone:?}"
    );
    let boundary = run_of(&names[2]).unwrap();
    let perm = run_of(&names[0]).unwrap();
    for k in &before {
        let doomed = k.starts_with(&format!("basebackups_005/{}", names[1]));
        assert_eq!(
            gone.contains(k),
            doomed || (k.starts_with("wal_005/") && gone.contains(k)),
            "{k}"
        );
        if let Some(wal) = k.strip_prefix("wal_005/") {
            if run_of(wal).is_some_and(|r| r >= boundary) {
                assert!(after.contains(k), "{k} is needed by a kept backup");
            }
        } else if !doomed {
            assert!(after.contains(k), "{k} belongs to a kept backup");
        } else {
            assert!(!after.contains(k), "{k} belongs to the deleted backup");
        }
    }
    assert!(
        gone.iter().any(|k| k.starts_with("wal_005/")),
        "WAL before the boundary goes: {gone:?}"
    );
    assert!(
        after.contains(&format!("wal_005/{perm}.lz4")),
        "the permanent backup's first segment stays"
    );
    // Nothing more to do: a second run deletes nothing.
    let out = delete(&store, &["retain", "2", "--confirm"]);
    out.assert_ok();
    assert!(
        out.stderr
            .contains("No objects matched the deletion criteria."),
        "{}",
        out.dump()
    );

    // everything refuses while a backup is permanent.
    let out = delete(&store, &["everything", "--confirm"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("Found permanent backups=["),
        "{}",
        out.dump()
    );
    assert_eq!(objects(&store), after);

    // before NAME: backup 2 goes.
    let out = delete(&store, &["before", &names[3], "--confirm"]);
    out.assert_ok();
    assert_eq!(
        backup_names(&store),
        vec![names[0].clone(), names[3].clone()]
    );

    // garbage: a killed backup-push's leftovers (no sentinel) and WAL
    // older than the oldest non-permanent backup.
    let scratch = TempDir::new("delete");
    let leftover = "basebackups_005/base_000000010000000000000000/tar_partitions/part_1.tar.lz4";
    store.put_raw(scratch.path(), leftover, b"partial");
    let old_wal = "wal_005/000000010000000000000000.lz4";
    store.put_raw(scratch.path(), old_wal, b"old");
    let kept = objects(&store);
    let out = delete(&store, &["garbage", "--confirm"]);
    out.assert_ok();
    let now = objects(&store);
    let gone: BTreeSet<String> = kept.difference(&now).cloned().collect();
    let expected_gone: BTreeSet<String> =
        [leftover, old_wal].iter().map(|s| s.to_string()).collect();
    assert_eq!(gone, expected_gone, "{}", out.dump());

    // The newest backup restores with the WAL that is left.
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    let expected = pg.psql(ROWS);
    pg.psql("SELECT pg_create_restore_point('after_delete')");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(60));
    pg.stop();
    let dir = TempDir::new("delete-restore");
    dir.chown_postgres();
    let data = dir.join("data");
    Walden::program(walden_bin_for_postgres(dir.path()))
        .envs(store.env())
        .arg("backup-fetch")
        .arg(&data)
        .args(["LATEST", "--recovery-target-name", "after_delete"])
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    assert!(fs::metadata(data.join("recovery.signal")).is_ok());
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
}

/// One listing per prefix, one sentinel and metadata per backup, deletes
/// in batches of 1000: 2,500 WAL objects cost 3 deletes, not 2,500.
#[test]
fn delete_requests_follow_the_work() {
    let name = "base_000000010000000A00000000";
    let s3 = FakeS3::start(move |req| {
        let sentinel = format!("basebackups_005/{name}_backup_stop_sentinel.json");
        if req.is_list() {
            let prefix = req.query_value("prefix").unwrap_or("");
            let keys: Vec<String> = if prefix.starts_with("basebackups_005/") && prefix.len() > 16 {
                vec![format!("{prefix}tar_partitions/part_1.tar.lz4")]
            } else if prefix.starts_with("basebackups_005/") {
                vec![sentinel.clone()]
            } else if prefix.starts_with("wal_005/") {
                (1..=2600u64)
                    .map(|n| {
                        format!(
                            "wal_005/0000000100000{:03X}000000{:02X}.lz4",
                            n / 256,
                            n % 256
                        )
                    })
                    .collect()
            } else {
                vec![]
            };
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            return FakeResponse::listing(&refs);
        }
        match (req.method.as_str(), req.key()) {
            ("GET", Some(k)) if k.ends_with("_backup_stop_sentinel.json") => FakeResponse::ok("{}"),
            ("GET", Some(k)) if k.ends_with("metadata.json") => FakeResponse::ok(
                r#"{"start_lsn":42949673000,"finish_lsn":42949673100,"is_permanent":false}"#,
            ),
            ("HEAD", Some(_)) => {
                FakeResponse::ok("").header("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT")
            }
            ("POST", None) => FakeResponse::xml(200, "<DeleteResult></DeleteResult>"),
            _ => FakeResponse::no_such_key(),
        }
    });
    let out = Walden::new()
        .envs(s3.env(""))
        .args(["delete", "retain", "1", "--confirm"])
        .run();
    out.assert_ok();
    let reqs = s3.requests();
    let lists = reqs.iter().filter(|r| r.is_list()).count();
    let deletes = reqs.iter().filter(|r| r.method == "POST").count();
    let gets = reqs
        .iter()
        .filter(|r| r.method == "GET" && !r.is_list())
        .count();
    // WAL objects 1..=0x9FF sort before the backup's segment A00.
    assert!(
        out.stderr
            .contains(&format!("Objects deleted successfully: count={}", 0x9FF)),
        "{}",
        out.dump()
    );
    assert_eq!(
        lists, 2,
        "one listing of basebackups_005/ and one of wal_005/: {reqs:#?}"
    );
    assert_eq!(deletes, 3, "2,559 keys in batches of 1000");
    assert_eq!(gets, 2, "one sentinel and one metadata.json");
    assert!(reqs.len() <= 10, "{} requests: {reqs:#?}", reqs.len());
}

/// The retention window keeps the newest backup that finished before
/// (now - window) and everything after it: the dry run names the oldest
/// moment that stays restorable, the setting works as the flag does.
#[test]
fn delete_retain_window() {
    let store = Store::fs();
    let scratch = TempDir::new("delete-window");
    let backups = [
        (
            "base_000000010000000000000002",
            "2020-01-01T00:00:00Z",
            0x2000028u64,
        ),
        (
            "base_000000010000000000000005",
            "2020-01-05T00:00:00Z",
            0x5000028,
        ),
        (
            "base_000000010000000000000008",
            "2099-01-01T00:00:00Z",
            0x8000028,
        ),
    ];
    for n in 1..=9 {
        store.put_raw(
            scratch.path(),
            &format!("wal_005/0000000100000000000000{n:02X}.lz4"),
            b"w",
        );
    }
    store.put_raw(scratch.path(), "wal_005/00000002.history.lz4", b"h");
    for (name, finish, lsn) in backups {
        store.put_raw(
            scratch.path(),
            &format!("basebackups_005/{name}/tar_partitions/part_1.tar.lz4"),
            b"t",
        );
        store.put_raw(
            scratch.path(),
            &format!("basebackups_005/{name}/metadata.json"),
            format!(r#"{{"start_time":"{finish}","finish_time":"{finish}","start_lsn":{lsn},"finish_lsn":{}}}"#, lsn + 0x100).as_bytes(),
        );
        store.put_raw(
            scratch.path(),
            &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
            b"{}",
        );
    }
    let before = objects(&store);
    let out = delete(&store, &["retain", "--window", "7d"]);
    out.assert_ok();
    assert_eq!(objects(&store), before);
    assert!(
        out.stderr
            .contains("oldest restorable moment: 2020-01-05T00:00:00Z"),
        "{}",
        out.dump()
    );
    let out = store
        .walden()
        .env("WALDEN_RETENTION_WINDOW", "1w")
        .args(["delete", "retain", "--confirm"])
        .run();
    out.assert_ok();
    let gone: BTreeSet<String> = before.difference(&objects(&store)).cloned().collect();
    let mut expected: BTreeSet<String> = ["01", "02", "03", "04"]
        .iter()
        .map(|n| format!("wal_005/0000000100000000000000{n}.lz4"))
        .collect();
    for k in [
        "_backup_stop_sentinel.json",
        "/metadata.json",
        "/tar_partitions/part_1.tar.lz4",
    ] {
        expected.insert(format!("basebackups_005/base_000000010000000000000002{k}"));
    }
    assert_eq!(gone, expected, "{}", out.dump());
    // A window reaching past every backup keeps everything.
    let out = delete(&store, &["retain", "--window", "100000d", "--confirm"]);
    out.assert_ok();
    assert!(
        out.stderr
            .contains("the oldest restorable moment is 2020-01-05T00:00:00Z"),
        "{}",
        out.dump()
    );
    let out = delete(&store, &["retain", "--window", "7x"]);
    out.assert_code(1);

    // A delete interrupted after the sentinels leaves backup directories
    // without one; a rerun removes them.
    let b = "base_000000010000000000000005";
    store
        .walden()
        .args([
            "st",
            "rm",
            &format!("basebackups_005/{b}_backup_stop_sentinel.json"),
        ])
        .run()
        .assert_ok();
    let out = delete(&store, &["retain", "1", "--confirm"]);
    out.assert_ok();
    let left = objects(&store);
    assert!(!left.iter().any(|k| k.contains(b)), "{left:?}");
    assert!(left.contains("wal_005/00000002.history.lz4"), "{left:?}");
    assert!(
        left.contains("basebackups_005/base_000000010000000000000008_backup_stop_sentinel.json")
    );
}

/// Sentinels go in a request of their own before any other object of
/// their backups: when a later request fails, no backup is left that
/// looks whole, and what is left sorts before the target for a rerun.
#[test]
fn delete_removes_sentinels_first() {
    let old = "base_000000010000000000000002";
    let new = "base_000000010000000000000009";
    let s3 = FakeS3::start(move |req| {
        if req.is_list() {
            let prefix = req.query_value("prefix").unwrap_or("");
            let keys: Vec<String> = if prefix == "basebackups_005/" {
                [old, new]
                    .iter()
                    .map(|n| format!("basebackups_005/{n}_backup_stop_sentinel.json"))
                    .collect()
            } else if prefix.starts_with("basebackups_005/") {
                (1..=3)
                    .map(|i| format!("{prefix}tar_partitions/part_{i}.tar.lz4"))
                    .collect()
            } else {
                vec![]
            };
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            return FakeResponse::listing(&refs);
        }
        match (req.method.as_str(), req.key()) {
            ("GET", Some(k)) if k.ends_with("_backup_stop_sentinel.json") => FakeResponse::ok("{}"),
            ("GET", Some(k)) if k.ends_with("metadata.json") => {
                FakeResponse::ok(r#"{"start_lsn":33554472,"finish_lsn":33554600}"#)
            }
            ("POST", None) if String::from_utf8_lossy(&req.body).contains("tar_partitions") => {
                FakeResponse::error(500, "InternalError", "killed midway")
            }
            ("POST", None) => FakeResponse::xml(200, "<DeleteResult></DeleteResult>"),
            _ => FakeResponse::no_such_key(),
        }
    });
    let out = Walden::new()
        .envs(s3.env(""))
        .args(["delete", "retain", "1", "--confirm"])
        .run();
    assert_eq!(out.code, 1, "{}", out.dump());
    let posts: Vec<String> = s3
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(posts.len() >= 2, "{posts:?}");
    assert!(
        posts[0].contains(&format!("basebackups_005/{old}_backup_stop_sentinel.json")),
        "{posts:?}"
    );
    assert!(!posts[0].contains("tar_partitions"), "{posts:?}");
    assert!(!posts.iter().any(|p| p.contains(new)), "{posts:?}");
}
