//! `walden backup-verify NAME|LATEST|--all [--json]`: a good backup
//! verifies (exit 0); a truncated tar object, a deleted tar partition and
//! a missing WAL segment each fail (exit 1) with a line naming the object.

use std::fs;
use std::time::Instant;

use serde_json::Value;

use crate::harness::{Output, PgCluster, TempDir};
use crate::store::Store;

fn cluster(store: &Store) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start()
}

/// A backup of `pg` after some writes; its name.
fn backup(store: &Store, pg: &PgCluster) -> String {
    pg.pgbench(&["-n", "-t", "200"]);
    store
        .walden()
        .envs(pg.env())
        .arg("backup-push")
        .run()
        .assert_ok();
    let out = store.walden().args(["backup-list", "--json"]).run();
    out.assert_ok();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().last().unwrap()["backup_name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn verify(store: &Store, args: &[&str]) -> Output {
    store.walden().arg("backup-verify").args(args).run()
}

fn objects(store: &Store, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.object_file(dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The failure names `object` on a problem line of stdout, and exits 1.
fn fails_naming(out: &Output, object: &str, what: &str) {
    out.assert_code(1);
    let stdout = out.stdout_str();
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{object}: ")) && l.contains(what)),
        "expected a problem '{what}' naming {object}\n{}",
        out.dump()
    );
    assert!(out.stderr.contains("backup-verify found"), "{}", out.dump());
}

#[test]
fn backup_verify_passes_good_backups_and_names_damaged_objects() {
    let store = Store::fs();
    let pg = cluster(&store);
    pg.pgbench_init(5);

    // A good backup: exit 0, text and JSON.
    let good = backup(&store, &pg);
    let out = verify(&store, &[&good]);
    out.assert_ok();
    let text = out.stdout_str();
    assert!(
        text.starts_with(&format!("backup {good}: OK (")),
        "{}",
        out.dump()
    );
    let out = verify(&store, &["LATEST", "--json"]);
    out.assert_ok();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report[0];
    assert_eq!(r["backup_name"], good.as_str());
    assert_eq!(r["ok"], true);
    assert_eq!(r["problems"], serde_json::json!([]));
    // pgbench's tables at scale 5 are over 600 pages; the cluster has checksums.
    assert!(r["pages_checked"].as_u64().unwrap() > 600, "{r}");
    assert!(r["files"].as_u64().unwrap() > 900, "{r}");
    assert!(r["wal_segments"].as_u64().unwrap() >= 1, "{r}");
    // For the note: backup-verify reads what backup-fetch reads, minus
    // the writes.
    let started = Instant::now();
    verify(&store, &[&good]).assert_ok();
    let verify_took = started.elapsed();
    let restored = TempDir::new("verify-fetch");
    let started = Instant::now();
    store
        .walden()
        .arg("backup-fetch")
        .arg(restored.join("data"))
        .arg(&good)
        .run()
        .assert_ok();
    eprintln!(
        "backup-verify {verify_took:?}, backup-fetch {:?} of the same backup ({} files, {} pages)",
        started.elapsed(),
        r["files"],
        r["pages_checked"]
    );

    // A truncated tar object.
    let cut = backup(&store, &pg);
    let parts = format!("basebackups_005/{cut}/tar_partitions");
    let part = objects(&store, &parts)
        .into_iter()
        .find(|n| n.starts_with("part_"))
        .unwrap();
    let path = store.object_file(&format!("{parts}/{part}"));
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    fails_naming(&verify(&store, &[&cut]), &format!("{parts}/{part}"), "");

    // A deleted tar partition: files_metadata.json still lists it.
    let deleted = backup(&store, &pg);
    let parts = format!("basebackups_005/{deleted}/tar_partitions");
    let part = objects(&store, &parts)
        .into_iter()
        .find(|n| n.starts_with("part_"))
        .unwrap();
    fs::remove_file(store.object_file(&format!("{parts}/{part}"))).unwrap();
    fails_naming(
        &verify(&store, &[&deleted]),
        &format!("{parts}/{part}"),
        "is missing",
    );

    // A missing WAL segment: the one the backup starts in.
    let no_wal = backup(&store, &pg);
    let segment = &no_wal[5..29];
    let wal = objects(&store, "wal_005")
        .into_iter()
        // The segment itself, not its `.00000028.backup` history file.
        .find(|n| n.split('.').next() == Some(segment) && n.matches('.').count() == 1)
        .unwrap_or_else(|| panic!("segment {segment} archived"));
    fs::remove_file(store.object_file(&format!("wal_005/{wal}"))).unwrap();
    fails_naming(
        &verify(&store, &[&no_wal]),
        &format!("wal_005/{segment}"),
        "WAL segment missing",
    );

    // The good backup is still good; --all reports every backup and fails.
    verify(&store, &[&good]).assert_ok();
    let all = verify(&store, &["--all", "--json"]);
    all.assert_code(1);
    let report: Value = serde_json::from_slice(&all.stdout).unwrap();
    let oks: Vec<(String, bool)> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["backup_name"].as_str().unwrap().to_string(),
                r["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        oks,
        vec![
            (good.clone(), true),
            (cut.clone(), false),
            (deleted.clone(), false),
            (no_wal.clone(), false)
        ]
    );
}

/// A backup-push into `store`, a delta when a base exists; its name.
fn push_delta(store: &Store, pg: &PgCluster) -> String {
    pg.pgbench(&["-n", "-t", "300"]);
    // Files changed this close to the base's start are read whole.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "3")
        .arg("backup-push")
        .run();
    out.assert_ok();
    crate::harness::scenario::pushed_backup_name(&out)
}

/// On S3: a full backup and two deltas verify, the deltas' increments
/// decoded and their pages checked; one byte flipped inside a compressed
/// tar object of a delta fails naming that object, for that delta and
/// for the delta built on it (which cannot restore without it), not for
/// its base.
#[test]
fn backup_verify_decodes_delta_increments_on_s3_and_names_a_flipped_byte() {
    let mut store = Store::s3();
    let pg = cluster(&store);
    pg.pgbench_init(2);
    let full = push_delta(&store, &pg);
    let d1 = push_delta(&store, &pg);
    let d2 = push_delta(&store, &pg);
    assert!(!full.contains("_D_") && d1.contains("_D_") && d2.contains("_D_"));

    let out = verify(&store, &["--all", "--json"]);
    out.assert_ok();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |n: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["backup_name"] == n)
            .unwrap_or_else(|| panic!("{n} in {report}"))
            .clone()
    };
    assert_eq!(by_name(&full)["increments"], 0);
    for (d, chain) in [
        (&d1, vec![full.clone()]),
        (&d2, vec![d1.clone(), full.clone()]),
    ] {
        let r = by_name(d);
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["increments"].as_u64().unwrap() > 0, "{r}");
        assert!(r["pages_checked"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["delta_chain"], serde_json::json!(chain), "{r}");
    }
    let out = verify(&store, &[&d2]);
    out.assert_ok();
    assert!(
        out.stdout_str().contains("increment(s) decoded"),
        "{}",
        out.dump()
    );

    // The largest data tar of the first delta, one byte flipped (same
    // size: only its content is wrong).
    let parts = format!("basebackups_005/{d1}/tar_partitions/");
    let server = store.server().unwrap();
    let prefix = format!("{}/{parts}", crate::store::S3_PREFIX_PATH);
    let part = server
        .list_objects(&prefix)
        .into_iter()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with("part_"))
        .max_by_key(|k| fs::metadata(server.object_path(k)).unwrap().len())
        .unwrap();
    server.corrupt_object(&part);
    let key = part
        .strip_prefix(&format!("{}/", crate::store::S3_PREFIX_PATH))
        .unwrap();
    fails_naming(&verify(&store, &[&d1]), key, "");
    fails_naming(
        &verify(&store, &[&d2]),
        key,
        &format!("(delta base {d1} of this backup)"),
    );
    verify(&store, &[&full]).assert_ok();
    // --all reads each backup once and names the object under both
    // deltas: each of d1's problems once more for d2.
    let all = verify(&store, &["--all"]);
    all.assert_code(1);
    let text = all.stdout_str();
    let naming = |base: bool| {
        text.lines()
            .filter(|l| l.contains(key) && l.contains("(delta base ") == base)
            .count()
    };
    assert!(naming(false) > 0, "{}", all.dump());
    assert_eq!(naming(false), naming(true), "{}", all.dump());
    assert_eq!(
        all.stderr
            .matches(&format!("Verifying backup {d1}"))
            .count(),
        1,
        "{}",
        all.dump()
    );
}
