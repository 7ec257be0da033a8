//! wal-push and wal-fetch end to end: a real PostgreSQL archiving through
//! `walden wal-push %p` and a restored copy replaying through
//! `walden wal-fetch %f %p`, on both storages; and the failure cases.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{PgCluster, TempDir};
use crate::store::{codec_env, FakeWal, Store, WAL_SIZE};

/// A cluster archiving with walden, keeping a plain copy of every segment
/// in `copies` through a second archive_command step.
fn archiving_cluster(store: &Store, codec: &[(String, String)], copies: &TempDir) -> PgCluster {
    let cmd = format!(
        "'cp %p {}/%f && {{walden}} wal-push %p'",
        copies.path().display()
    );
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", &cmd)
        .conf("archive_timeout", "0")
        .env(store.env())
        .env(codec.to_vec())
        .start()
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

/// The full round: archive while pgbench writes, check every segment comes
/// back byte-identical, then restore a base backup and replay it through
/// wal-fetch with prefetch, up to the primary's last commit.
fn archive_fetch_and_replay(store: Store, method: &str, encrypted: bool) {
    let codec = codec_env(method, encrypted);
    let copies = TempDir::new("wal-copies");
    copies.chown_postgres();
    let mut pg = archiving_cluster(&store, &codec, &copies);
    pg.pgbench_init(4);
    let restored_dir = TempDir::new("wal-restored");
    let data = restored_dir.join("data");
    pg.base_backup(&data);
    pg.pgbench(&["-n", "-t", "3000", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'after the backup'::text AS note");
    let expected = pg.psql("SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    // Every segment PostgreSQL wrote comes back byte for byte.
    let names = segment_names(copies.path());
    assert!(
        names.len() >= 4,
        "pgbench wrote several segments: {names:?}"
    );
    let ext = match method {
        "zstd" => ".zst",
        "lz4" => ".lz4",
        _ => "",
    };
    let fetched = TempDir::new("wal-fetched");
    for name in &names {
        assert!(
            store.object_file(&format!("wal_005/{name}{ext}")).is_file(),
            "{name} stored"
        );
        let dest = fetched.join(name);
        store
            .walden()
            .envs(codec.clone())
            .env("WALG_DOWNLOAD_CONCURRENCY", "1")
            .args(["wal-fetch", name.as_str()])
            .arg(&dest)
            .run()
            .assert_ok();
        let original = fs::read(copies.join(name)).unwrap();
        assert_eq!(original.len(), WAL_SIZE);
        assert!(
            fs::read(&dest).unwrap() == original,
            "{name} differs after the round trip"
        );
    }

    // Replay from the archive with prefetch on.
    fs::write(data.join("recovery.signal"), "").unwrap();
    let restore = "'{walden} wal-fetch %f %p'";
    let restored = PgCluster::builder()
        .conf("restore_command", restore)
        .conf("archive_mode", "off")
        .env(store.env())
        .env(codec.clone())
        .env([("WALG_DOWNLOAD_CONCURRENCY", "4")])
        .start_restored(data.clone());
    restored.wait_for_promotion(Duration::from_secs(120));
    let got = restored.psql("SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts");
    assert_eq!(got, expected, "{}", restored.log_tail());
    assert_eq!(restored.psql("SELECT note FROM marker"), "after the backup");
    let log = fs::read_to_string(restored.log_path()).unwrap();
    assert!(
        log.contains("restored log file"),
        "replayed from the archive:\n{log}"
    );
    // Let the last background prefetchers finish, then nothing may be left
    // in the cache: every prefetched segment was used or cleaned up.
    std::thread::sleep(Duration::from_secs(2));
    let cache = data.join("pg_wal/.wal-g/prefetch");
    assert!(cache.is_dir(), "prefetch was used");
    let leftovers: Vec<String> = walk(&cache);
    assert!(
        leftovers.is_empty(),
        "prefetch cache not clean: {leftovers:?}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn archive_fetch_replay_fs_lz4_plain() {
    archive_fetch_and_replay(Store::fs(), "lz4", false);
}

#[test]
fn archive_fetch_replay_s3_zstd_encrypted() {
    archive_fetch_and_replay(Store::s3(), "zstd", true);
}

#[test]
fn archive_fetch_replay_s3_lz4_plain() {
    archive_fetch_and_replay(Store::s3(), "lz4", false);
}

#[test]
fn archive_fetch_replay_fs_zstd_encrypted() {
    archive_fetch_and_replay(Store::fs(), "zstd", true);
}

const SEG1: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

#[test]
fn missing_and_damaged_wal_is_refused_without_writing_dest() {
    for store in Store::both() {
        let wal = FakeWal::new();
        let out_dir = TempDir::new("fetch-out");
        let dest = out_dir.join("RECOVERYXLOG");
        // An empty storage (a missing directory is an error of its own).
        fs::create_dir_all(store.object_file("")).unwrap();
        // Missing: 74, also for history files, and nothing at DEST.
        for name in [SEG1, "00000002.history"] {
            let out = store.walden().args(["wal-fetch", name]).arg(&dest).run();
            assert_eq!(out.code, 74, "{}: {}", store.name(), out.stderr);
            assert!(
                out.stderr
                    .contains(&format!("Archive '{name}' does not exist.")),
                "{}",
                out.stderr
            );
            assert!(!dest.exists());
        }
        let seg = wal.segment(SEG1, 1, false);
        store.walden().arg("wal-push").arg(&seg).run().assert_ok();
        let key = format!("wal_005/{SEG1}.lz4");
        let raw = store.walden().args(["st", "cat", &key]).run().stdout;
        let mut bad = raw.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        for damaged in [bad, raw[..raw.len() - 5].to_vec()] {
            store.put_raw(out_dir.path(), &key, &damaged);
            let out = store
                .walden()
                .env("WALG_DOWNLOAD_CONCURRENCY", "1")
                .args(["wal-fetch", SEG1])
                .arg(&dest)
                .run();
            assert_eq!(out.code, 1, "{}: {}", store.name(), out.stderr);
            assert!(out.stderr.contains(&key), "{}", out.stderr);
            assert!(!dest.exists());
            let left: Vec<_> = fs::read_dir(out_dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != ".wal-g")
                .collect();
            assert!(left.is_empty(), "no temp file left: {left:?}");
        }
    }
}

#[test]
fn background_uploads_hand_ready_segments_back_to_postgresql() {
    // Without WAL metadata nothing is left for the archiver's later calls:
    // a segment uploaded in the background is renamed `.done`, as
    // PostgreSQL itself does after archive_command, so pg_wal holds only
    // WAL not stored yet (PostgreSQL re-checks each `.ready` before a call).
    let store = Store::fs();
    let wal = FakeWal::new();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        wal.segment(n, i as u8, true);
    }
    store
        .walden()
        .arg("wal-push")
        .arg(wal.dir().join(&names[0]))
        .run()
        .assert_ok();
    let status = wal.dir().join("archive_status");
    let markers = wal.dir().join("walg_data/walg_archive_status");
    for n in &names[1..] {
        assert!(
            store.object_file(&format!("wal_005/{n}.lz4")).is_file(),
            "{n} uploaded"
        );
        assert!(status.join(format!("{n}.done")).is_file(), "{n} done");
        assert!(!status.join(format!("{n}.ready")).exists(), "{n} not ready");
        assert!(!markers.join(n).exists(), "{n} not marked");
    }
    // The foreground file is PostgreSQL's to rename.
    assert!(status.join(format!("{}.ready", names[0])).is_file());
}

#[test]
fn background_uploads_mark_ready_segments_and_later_calls_return_at_once() {
    for store in Store::both() {
        let wal = FakeWal::new();
        let names: Vec<String> = (1..=5)
            .map(|i| format!("0000000100000000000000{i:02X}"))
            .collect();
        for (i, n) in names.iter().enumerate() {
            wal.segment(n, i as u8, true);
        }
        let first = wal.dir().join(&names[0]);
        store
            .walden()
            .env("WALG_UPLOAD_WAL_METADATA", "INDIVIDUAL")
            .arg("wal-push")
            .arg(&first)
            .run()
            .assert_ok();
        let markers = wal.dir().join("walg_data/walg_archive_status");
        for n in &names {
            assert!(
                store.object_file(&format!("wal_005/{n}.lz4")).is_file(),
                "{n} uploaded"
            );
        }
        for n in &names[1..] {
            assert!(markers.join(n).is_file(), "{n} marked");
        }
        assert!(
            !markers.join(&names[0]).exists(),
            "the foreground file is not marked"
        );
        let meta = store
            .walden()
            .args(["st", "cat", &format!("wal_005/{}.json", names[0])])
            .run();
        meta.assert_ok();
        let doc: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
        assert_eq!(doc[&names[0]]["date_fmt"], "%Y-%m-%dT%H:%M:%S.%fZ");
        // The archiver's call for a marked file only removes the marker.
        fs::remove_file(store.object_file(&format!("wal_005/{}.lz4", names[1]))).ok();
        store
            .walden()
            .env("WALG_UPLOAD_WAL_METADATA", "INDIVIDUAL")
            .arg("wal-push")
            .arg(wal.dir().join(&names[1]))
            .run()
            .assert_ok();
        assert!(!markers.join(&names[1]).exists());
        assert!(store
            .object_file(&format!("wal_005/{}.json", names[1]))
            .is_file());
    }
}

#[test]
fn concurrent_pushes_of_one_segment_both_succeed() {
    for store in Store::both() {
        let wal = FakeWal::new();
        let seg = wal.segment(SEG2, 9, false);
        let a = store
            .walden()
            .env("WALG_PREVENT_WAL_OVERWRITE", "true")
            .arg("wal-push")
            .arg(&seg);
        let b = store
            .walden()
            .env("WALG_PREVENT_WAL_OVERWRITE", "true")
            .arg("wal-push")
            .arg(&seg);
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| a.run());
            let hb = s.spawn(|| b.run());
            (ha.join().unwrap(), hb.join().unwrap())
        });
        ra.assert_ok();
        rb.assert_ok();
        let dest = wal.tmp.join("back");
        store
            .walden()
            .args(["wal-fetch", SEG2])
            .arg(&dest)
            .env("WALG_DOWNLOAD_CONCURRENCY", "1")
            .run()
            .assert_ok();
        assert!(fs::read(&dest).unwrap() == fs::read(&seg).unwrap());
    }
}

#[test]
fn prevent_overwrite_keeps_the_stored_segment() {
    for store in Store::both() {
        let wal = FakeWal::new();
        let seg = wal.segment(SEG1, 1, false);
        let original = fs::read(&seg).unwrap();
        let guarded = || store.walden().env("WALG_PREVENT_WAL_OVERWRITE", "true");
        guarded().arg("wal-push").arg(&seg).run().assert_ok();
        // Same content again: fine.
        let again = guarded().arg("wal-push").arg(&seg).run();
        again.assert_ok();
        assert!(
            again.stderr.contains("already archived with equal content"),
            "{}",
            again.stderr
        );
        // Different content: refused, stored object untouched.
        wal.segment(SEG1, 2, false);
        let out = guarded().arg("wal-push").arg(&seg).run();
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("contents differ"), "{}", out.stderr);
        let dest = wal.tmp.join("back");
        store
            .walden()
            .args(["wal-fetch", SEG1])
            .arg(&dest)
            .env("WALG_DOWNLOAD_CONCURRENCY", "1")
            .run()
            .assert_ok();
        assert!(fs::read(&dest).unwrap() == original);
        // History files are always guarded, as in WAL-G.
        let hist = wal.dir().join("00000002.history");
        fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
        store.walden().arg("wal-push").arg(&hist).run().assert_ok();
        fs::write(&hist, "1\t0/4000000\tsomething else\n").unwrap();
        let out = store.walden().arg("wal-push").arg(&hist).run();
        assert_eq!(out.code, 1, "{}", out.stderr);
    }
}

#[test]
fn archiving_survives_storage_outage() {
    let mut store = Store::s3();
    let copies = TempDir::new("outage-copies");
    copies.chown_postgres();
    let codec = vec![("S3_MAX_RETRIES".to_string(), "1".to_string())];
    let pg = archiving_cluster(&store, &codec, &copies);
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let first = pg.switch_wal();
    pg.wait_for_archive(&first, Duration::from_secs(60));

    store.server().unwrap().stop();
    pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 10000) g");
    let during = pg.switch_wal();
    // The archiver fails and keeps the segment.
    pg.wait_for_sql(
        "SELECT failed_count > 0 FROM pg_stat_archiver",
        "t",
        Duration::from_secs(60),
    );
    assert!(pg.data_dir().join("pg_wal").join(&during).is_file());
    assert!(pg
        .data_dir()
        .join(format!("pg_wal/archive_status/{during}.ready"))
        .is_file());

    store.server().unwrap().restart();
    pg.wait_for_archive(&during, Duration::from_secs(120));
    let dest = copies.join("check");
    store
        .walden()
        .args(["wal-fetch", during.as_str()])
        .arg(&dest)
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .run()
        .assert_ok();
    assert!(fs::read(&dest).unwrap() == fs::read(copies.join(&during)).unwrap());
}

#[test]
fn prefetch_fills_the_cache_and_a_prefetched_segment_is_used() {
    let store = Store::fs();
    let wal = FakeWal::new();
    let names: Vec<String> = (1..=4)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        let p = wal.segment(n, i as u8, false);
        store.walden().arg("wal-push").arg(&p).run().assert_ok();
    }
    let restore = TempDir::new("prefetch-pgwal");
    let dest = restore.join("RECOVERYXLOG");
    store
        .walden()
        .env("WALG_DOWNLOAD_CONCURRENCY", "3")
        .args(["wal-fetch", &names[0]])
        .arg(&dest)
        .run()
        .assert_ok();
    let cache = restore.join(".wal-g/prefetch");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(cache.join(&names[1]).is_file()
        && cache.join(&names[2]).is_file()
        && cache.join(&names[3]).is_file())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not fill {}: {:?}",
            cache.display(),
            walk(&cache)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Remove the object: the next fetch must come from the cache.
    fs::remove_file(store.object_file(&format!("wal_005/{}.lz4", names[1]))).unwrap();
    fs::remove_file(&dest).unwrap();
    store
        .walden()
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", &names[1]])
        .arg(&dest)
        .run()
        .assert_ok();
    assert!(fs::read(&dest).unwrap() == fs::read(wal.dir().join(&names[1])).unwrap());
    assert!(!cache.join(&names[1]).exists(), "moved, not copied");
    // A torn prefetch (wrong size) is never used: direct download instead.
    fs::write(cache.join(&names[2]), b"torn").unwrap();
    fs::remove_file(&dest).unwrap();
    store
        .walden()
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", &names[2]])
        .arg(&dest)
        .run()
        .assert_ok();
    assert!(fs::read(&dest).unwrap() == fs::read(wal.dir().join(&names[2])).unwrap());
}

/// Settings given as flags reach the detached prefetcher too: here the
/// storage itself is only a flag.
#[test]
fn prefetch_child_sees_settings_given_as_flags() {
    let store = Store::fs();
    let wal = FakeWal::new();
    let names: Vec<String> = (1..=2)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        let p = wal.segment(n, i as u8, false);
        store.walden().arg("wal-push").arg(&p).run().assert_ok();
    }
    let (_, repo) = store.env().remove(0);
    let restore = TempDir::new("prefetch-flags");
    let dest = restore.join("RECOVERYXLOG");
    crate::harness::Walden::new()
        .arg(format!("--walg-file-prefix={repo}"))
        .arg("--walg-download-concurrency=2")
        .args(["wal-fetch", &names[0]])
        .arg(&dest)
        .run()
        .assert_ok();
    let cached = restore.join(".wal-g/prefetch").join(&names[1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cached.is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetcher did not get the storage flag"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
