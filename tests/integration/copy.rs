//! `walden copy` between storages described by their own config files:
//! a filesystem storage copied to S3 restores there with PITR (rows
//! compared), and copied back to a directory with one backup only; an
//! interrupted copy (SIGKILL) shows no backup whose data is missing, and
//! its rerun skips what arrived; one backup takes its delta base and
//! exactly its WAL; between two prefixes of one S3 server no byte passes
//! through walden (server-side copy, counted in walden's request log).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{walden_bin_for_postgres, PgCluster, S3Server, TempDir, Walden};
use crate::store::noise;

const ROWS: &str = "SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) \
                    || '/' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";
const SIGKILL: i32 = 9;

fn fs_config(dir: &TempDir, name: &str, repo: &Path) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!(r#"{{"WALG_FILE_PREFIX": "{}"}}"#, repo.display()),
    )
    .unwrap();
    path
}

/// A config file with all the S3 settings in it (nothing in the
/// environment), for `s3://BUCKET/prefix`.
fn s3_config(dir: &TempDir, name: &str, s3: &S3Server, prefix: &str) -> PathBuf {
    let path = dir.join(name);
    let pairs: Vec<String> = s3
        .env(prefix)
        .into_iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    fs::write(&path, format!("{{{}}}", pairs.join(", "))).unwrap();
    path
}

fn copy(from: &Path, to: &Path, extra: &[&str]) -> Walden {
    Walden::new()
        .arg("copy")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra.iter().copied())
        .timeout(Duration::from_secs(300))
}

/// Every file under `root` (a filesystem storage or nanio's bucket
/// directory below a prefix) by relative key, with its size; nanio's
/// bookkeeping left out.
fn tree(root: &Path) -> BTreeMap<String, u64> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // The S3 server's own files: its state, and the body of a PUT
            // still arriving (or cut by the kill), which no listing shows.
            if name.starts_with(".nanio") || name.starts_with(".tmp.") {
                continue;
            }
            let key = format!("{rel}{name}");
            // Polled while a copy runs: a temporary file can be renamed
            // away between the listing and this look.
            let Ok(meta) = e.metadata() else {
                continue;
            };
            if meta.is_dir() {
                walk(&e.path(), &format!("{key}/"), out);
            } else {
                out.insert(key, meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn stat_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.contains("Copied "))
        .unwrap_or_default()
        .to_string()
}

/// A filesystem storage of two backups and archived WAL, copied whole to
/// S3: the same objects arrive, and a restore from the copy to a restore
/// point (between the backups) gives the rows noted there. Then the
/// second backup alone goes back to a new directory with
/// --without-history: its objects and its WAL only, and it restores.
#[test]
fn copy_fs_to_s3_restores_there_and_one_backup_comes_back() {
    let dir = TempDir::new("copy-pitr");
    let repo = dir.join("repo");
    let src_conf = fs_config(&dir, "src.json", &repo);
    dir.chown_postgres();
    let src_arg = src_conf.display().to_string();
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf(
            "archive_command",
            &format!("'{{walden}} --config {src_arg} wal-push %p'"),
        )
        .env([("WALG_COMPRESSION_METHOD", "zstd")])
        .start();
    let push = || {
        Walden::new()
            .args(["--config", &src_arg])
            .envs(pg.env())
            .arg("backup-push")
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
    };
    pg.pgbench_init(2);
    push();
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("SELECT pg_create_restore_point('between')");
    let at_point = pg.psql(ROWS);
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    push();
    let after_second = pg.psql("SELECT count(*) FROM pgbench_accounts");
    pg.pgbench(&["-n", "-t", "100", "-c", "2"]);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let source = tree(&repo);
    let backups: Vec<&String> = source
        .keys()
        .filter(|k| k.ends_with("_backup_stop_sentinel.json"))
        .collect();
    assert_eq!(backups.len(), 2, "{source:?}");
    let mut names: Vec<String> = backups
        .iter()
        .map(|k| {
            k.trim_start_matches("basebackups_005/")
                .trim_end_matches("_backup_stop_sentinel.json")
                .to_string()
        })
        .collect();
    names.sort();

    let s3 = S3Server::start();
    let dst_conf = s3_config(&dir, "dst.json", &s3, "copied");
    let out = copy(&src_conf, &dst_conf, &[]).run();
    out.assert_ok();
    assert!(out.stderr.contains("Success copy."), "{}", out.dump());
    assert_eq!(tree(&s3.object_path("copied")), source);
    // A second run finds everything there.
    let again = copy(&src_conf, &dst_conf, &[]).run();
    again.assert_ok();
    assert!(
        stat_line(&again.stderr).contains(&format!(
            "Copied 0 objects (0 B), 0 of them server-side; {} already",
            source.len()
        )),
        "{}",
        again.dump()
    );

    // Restore the older backup from the copy to the point after it,
    // reading the copy through the config file only.
    let scratch = TempDir::new("copy-restore");
    scratch.chown_postgres();
    let bin = walden_bin_for_postgres(scratch.path());
    let dst_arg = dst_conf.display().to_string();
    dir.chown_postgres();
    let dest = scratch.join("pitr");
    Walden::program(&bin)
        .args(["--config", &dst_arg, "backup-fetch"])
        .arg(&dest)
        .args([&names[0], "--recovery-target-name", "between"])
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .start_restored(dest);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), at_point, "{}", restored.log_tail());
    drop(restored);

    // The second backup alone, back to a directory, without history.
    let back = dir.join("back");
    let back_conf = fs_config(&dir, "back.json", &back);
    let out = copy(
        &dst_conf,
        &back_conf,
        &["--backup-name", &names[1], "--without-history"],
    )
    .run();
    out.assert_ok();
    let copied = tree(&back);
    let backup_objects: Vec<&String> = copied
        .keys()
        .filter(|k| k.starts_with("basebackups_005/"))
        .collect();
    assert!(
        backup_objects
            .iter()
            .all(|k| k.contains(&names[1]) && !k.contains(&names[0])),
        "{backup_objects:?}"
    );
    let expected: Vec<&String> = source
        .keys()
        .filter(|k| k.starts_with(&format!("basebackups_005/{}", names[1])))
        .collect();
    assert_eq!(backup_objects, expected);
    // WAL: from the backup's start segment, and not what followed it.
    let start_segment = &names[1]["base_".len()..];
    let wal: Vec<&String> = copied
        .keys()
        .filter(|k| k.starts_with("wal_005/"))
        .collect();
    assert!(!wal.is_empty());
    assert!(
        wal.iter()
            .all(|k| k["wal_005/".len()..] >= start_segment[..]),
        "{wal:?}"
    );
    let all_wal = source.keys().filter(|k| k.starts_with("wal_005/")).count();
    assert!(wal.len() < all_wal, "{wal:?}");
    for k in &wal {
        assert_eq!(copied[*k], source[*k], "{k}");
    }
    dir.chown_postgres();
    let dest = scratch.join("immediate");
    Walden::program(&bin)
        .args(["--config", &back_conf.display().to_string(), "backup-fetch"])
        .arg(&dest)
        .args(["LATEST", "--recovery-target", "immediate"])
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .start_restored(dest);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        after_second
    );
}

/// Objects of a made-up storage: `count` WAL objects of `size` bytes and
/// one backup of three tars, metadata and sentinel.
fn synthetic(repo: &Path, count: usize, size: usize) {
    let wal = repo.join("wal_005");
    fs::create_dir_all(&wal).unwrap();
    for i in 0..count {
        fs::write(
            wal.join(format!("0000000100000000{:08X}.zst", i + 1)),
            noise(size + i, i as u64),
        )
        .unwrap();
    }
    let name = "base_000000010000000000000002";
    let b = repo.join("basebackups_005").join(name);
    fs::create_dir_all(b.join("tar_partitions")).unwrap();
    for p in 1..=3 {
        fs::write(
            b.join(format!("tar_partitions/part_{p}.tar.zst")),
            noise(100_000 * p, 1000 + p as u64),
        )
        .unwrap();
    }
    fs::write(
        b.join("metadata.json"),
        r#"{"start_lsn": 33554472, "finish_lsn": 50331904}"#,
    )
    .unwrap();
    fs::write(
        repo.join(format!("basebackups_005/{name}_backup_stop_sentinel.json")),
        r#"{"LSN": 33554472}"#,
    )
    .unwrap();
}

/// A copy killed mid-way leaves no sentinel whose data is missing (the
/// sentinel goes last); the rerun copies only what is missing (counted),
/// and a destination object of another size is refused, not overwritten.
#[test]
fn interrupted_copy_resumes_and_skips_what_arrived() {
    let dir = TempDir::new("copy-resume");
    let repo = dir.join("repo");
    synthetic(&repo, 400, 4096);
    let source = tree(&repo);
    let src_conf = fs_config(&dir, "src.json", &repo);
    let s3 = S3Server::start();
    let dst_conf = s3_config(&dir, "dst.json", &s3, "dst");
    let dest_root = s3.object_path("dst");

    let running = copy(&src_conf, &dst_conf, &[])
        .env("WALG_UPLOAD_CONCURRENCY", "1")
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tree(&dest_root).len() < 20 {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    running.signal(SIGKILL);
    let out = running.wait(Duration::from_secs(30));
    assert_eq!(out.code, 128 + SIGKILL, "{}", out.dump());
    let partial = tree(&dest_root);
    assert!(partial.len() < source.len(), "killed too late: {partial:?}");
    assert!(
        !partial
            .keys()
            .any(|k| k.ends_with("_backup_stop_sentinel.json")),
        "{partial:?}"
    );
    for (k, size) in &partial {
        assert_eq!(source.get(k), Some(size), "{k}");
    }

    // A foreign object of another size at the destination stops the copy.
    let foreign = "wal_005/000000010000000000000190.zst";
    assert!(!partial.contains_key(foreign));
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    fs::write(scratch.join("f"), b"other").unwrap();
    Walden::new()
        .envs(s3.env("dst"))
        .args(["st", "put", "-f", "--no-compress", "--no-encrypt"])
        .arg(scratch.join("f"))
        .arg(foreign)
        .run()
        .assert_ok();
    let out = copy(&src_conf, &dst_conf, &[]).run();
    out.assert_failed();
    assert!(
        out.stderr.contains(foreign) && out.stderr.contains("different objects"),
        "{}",
        out.dump()
    );
    assert!(!tree(&dest_root)
        .keys()
        .any(|k| k.ends_with("_backup_stop_sentinel.json")));
    Walden::new()
        .envs(s3.env("dst"))
        .args(["st", "rm", foreign])
        .run()
        .assert_ok();

    let present = tree(&dest_root).len();
    let out = copy(&src_conf, &dst_conf, &[]).run();
    out.assert_ok();
    assert!(
        stat_line(&out.stderr).contains(&format!("Copied {} objects", source.len() - present))
            && stat_line(&out.stderr).contains(&format!("; {present} already")),
        "{}",
        out.dump()
    );
    assert_eq!(tree(&dest_root), source);
}

/// `--backup-name` of a delta backup: its base comes along, and the WAL
/// each needs (with history: everything from the base's start); a needed
/// segment missing in the source is an error before anything is written.
#[test]
fn one_backup_takes_its_base_and_its_wal() {
    let dir = TempDir::new("copy-chain");
    let repo = dir.join("repo");
    synthetic(&repo, 9, 1000);
    fs::write(repo.join("wal_005/00000002.history.zst"), b"history").unwrap();
    let delta = "base_000000010000000000000006_D_000000010000000000000002";
    let b = repo.join("basebackups_005").join(delta);
    fs::create_dir_all(b.join("tar_partitions")).unwrap();
    fs::write(b.join("tar_partitions/part_1.tar.zst"), noise(5000, 7)).unwrap();
    // Starts in segment 6, ends in segment 7.
    fs::write(
        b.join("metadata.json"),
        r#"{"start_lsn": 100663336, "finish_lsn": 117440768}"#,
    )
    .unwrap();
    fs::write(
        repo.join(format!("basebackups_005/{delta}_backup_stop_sentinel.json")),
        r#"{"DeltaFrom": "base_000000010000000000000002"}"#,
    )
    .unwrap();
    let src_conf = fs_config(&dir, "src.json", &repo);
    let wal_of = |t: &BTreeMap<String, u64>| -> Vec<String> {
        t.keys()
            .filter_map(|k| k.strip_prefix("wal_005/"))
            .map(str::to_string)
            .collect()
    };
    let seg = |n: u32| format!("0000000100000000{n:08X}.zst");

    let out_dir = dir.join("without");
    let conf = fs_config(&dir, "without.json", &out_dir);
    let elsewhere = dir.join("elsewhere");
    copy(
        &src_conf,
        &conf,
        &["--backup-name", delta, "--without-history"],
    )
    // A storage prefix in the environment is not the files' storage.
    .env("WALG_FILE_PREFIX", &elsewhere)
    .env("WALG_STORAGE_PREFIX", "sub")
    .run()
    .assert_ok();
    assert!(!elsewhere.exists());
    let got = tree(&out_dir);
    let mut expected = vec!["00000002.history.zst".to_string()];
    // Base: segments 2..=3; delta: 6..=7.
    expected.extend([2, 3, 6, 7].map(seg));
    expected.sort();
    assert_eq!(wal_of(&got), expected);
    let backups: Vec<&String> = got
        .keys()
        .filter(|k| k.ends_with("_backup_stop_sentinel.json"))
        .collect();
    assert_eq!(backups.len(), 2, "{got:?}");
    assert_eq!(got.len(), 5 + 3 + 5, "{got:?}");

    let out_dir = dir.join("with");
    let conf = fs_config(&dir, "with.json", &out_dir);
    let out = copy(&src_conf, &conf, &["-b", "LATEST"]).run();
    out.assert_ok();
    let mut expected = vec!["00000002.history.zst".to_string()];
    expected.extend((2..=9).map(seg));
    expected.sort();
    assert_eq!(wal_of(&tree(&out_dir)), expected, "{}", out.dump());

    fs::remove_file(repo.join(format!("wal_005/{}", seg(7)))).unwrap();
    let out_dir = dir.join("missing");
    let conf = fs_config(&dir, "missing.json", &out_dir);
    let out = copy(&src_conf, &conf, &["--backup-name", delta]).run();
    out.assert_failed();
    assert!(
        out.stderr.contains("000000010000000000000007") && out.stderr.contains("consistent"),
        "{}",
        out.dump()
    );
    assert!(!out_dir.exists());
}

/// Two prefixes of one S3 server: every object is copied by the server
/// (CopyObject), none is downloaded by walden, and the copies are
/// byte-identical.
#[test]
fn s3_to_s3_on_one_service_copies_server_side() {
    let dir = TempDir::new("copy-s3s3");
    let repo = dir.join("repo");
    synthetic(&repo, 30, 20_000);
    let source = tree(&repo);
    let s3 = S3Server::start();
    let src_conf = fs_config(&dir, "src.json", &repo);
    let a = s3_config(&dir, "a.json", &s3, "a");
    let b = s3_config(&dir, "b.json", &s3, "deeper/b");
    copy(&src_conf, &a, &[]).run().assert_ok();

    let out = copy(&a, &b, &[]).env("WALG_LOG_LEVEL", "DEVEL").run();
    out.assert_ok();
    let requests = |op: &str| out.stderr.lines().filter(|l| l.contains(op)).count();
    assert_eq!(requests("s3 copy PUT"), source.len(), "{}", out.dump());
    assert_eq!(requests("s3 get GET"), 0, "{}", out.dump());
    assert_eq!(requests("s3 put PUT"), 0, "{}", out.dump());
    assert!(
        stat_line(&out.stderr).contains(&format!("{} of them server-side", source.len())),
        "{}",
        out.dump()
    );
    assert_eq!(tree(&s3.object_path("deeper/b")), source);
    for key in source.keys() {
        assert_eq!(
            fs::read(s3.object_path(&format!("deeper/b/{key}"))).unwrap(),
            fs::read(repo.join(key)).unwrap(),
            "{key}"
        );
    }
}
