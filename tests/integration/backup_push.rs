//! backup-push's engine: memory that does not grow with the number of
//! files, rate limits, `--without-files-metadata`, the alive check and the
//! stop timeout.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

fn archiving_cluster(store: &Store, archive_command: &str) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", archive_command)
        .conf("archive_timeout", "0")
        .env(store.env())
        .start()
}

const WAL_PUSH: &str = "'{walden} wal-push %p'";

fn sentinels(store: &Store) -> Vec<String> {
    fs::read_dir(store.object_file("basebackups_005"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("_backup_stop_sentinel.json"))
                .collect()
        })
        .unwrap_or_default()
}

fn sentinel(store: &Store, file: &str) -> serde_json::Value {
    serde_json::from_slice(
        &fs::read(store.object_file(&format!("basebackups_005/{file}"))).unwrap(),
    )
    .unwrap()
}

/// `count` orphan files of 0–2 KiB in `dir` (PostgreSQL ignores files no
/// relation points to), named from `first` on.
fn orphans(dir: &Path, first: usize, count: usize) {
    for i in first..first + count {
        let len = (i * 7919) % 2049;
        fs::write(dir.join(format!("{}", 900_000_000 + i)), vec![b'x'; len]).unwrap();
    }
}

/// One backup-push; its peak RSS (KiB, logged at DEVEL level) and time.
fn push_measured(store: &Store, pg: &PgCluster) -> (i64, Duration) {
    let start = Instant::now();
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_COMPRESSION_METHOD", "zstd")
        .env("WALG_UPLOAD_DISK_CONCURRENCY", "2")
        .env("WALG_LOG_LEVEL", "DEVEL")
        .arg("backup-push")
        .run();
    let took = start.elapsed();
    out.assert_ok();
    let peak = out
        .stderr
        .lines()
        .find_map(|l| l.split("peak memory (RSS) of backup-push: ").nth(1))
        .and_then(|r| r.trim_end_matches(" KiB").parse::<i64>().ok())
        .unwrap_or_else(|| panic!("peak memory logged: {}", out.dump()));
    (peak, took)
}

/// Peak memory of backup-push does not grow with the number of files
/// (nothing per file is kept: the file list is spilled to a temp file),
/// and every file comes back on restore.
#[test]
fn backup_push_memory_is_flat_in_the_file_count() {
    let store = Store::fs();
    let pg = archiving_cluster(&store, WAL_PUSH);
    let oid = pg.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'");
    let db = pg.data_dir().join("base").join(&oid);
    orphans(&db, 0, 5_000);
    let (small, t_small) = push_measured(&store, &pg);
    orphans(&db, 5_000, 45_000);
    let (large, t_large) = push_measured(&store, &pg);
    eprintln!(
        "backup-push peak RSS: {small} KiB with 5,000 extra files ({:?}), {large} KiB with 50,000 ({:?}, {:.1} µs per extra file)",
        t_small,
        t_large,
        t_large.saturating_sub(t_small).as_secs_f64() * 1e6 / 45_000.0
    );
    assert!(
        large - small < 16 * 1024,
        "peak RSS grew by {} KiB from 5,000 to 50,000 files",
        large - small
    );
    assert!(large < 128 * 1024, "peak RSS {large} KiB");

    let restored = TempDir::new("many-files");
    let data = restored.join("data");
    store
        .walden()
        .env("WALG_COMPRESSION_METHOD", "zstd")
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .run()
        .assert_ok();
    for i in [0, 4_999, 5_000, 49_999] {
        let name = format!("{}", 900_000_000 + i);
        let got = fs::read(data.join("base").join(&oid).join(&name)).unwrap();
        assert_eq!(got.len(), (i * 7919) % 2049, "{name}");
    }
    let count = fs::read_dir(data.join("base").join(&oid))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("9000"))
        })
        .count();
    assert_eq!(count, 50_000, "every orphan file restored");
}

/// The limits hold (a backup of N bytes at R bytes/s takes at least about
/// N/R), and `--without-files-metadata` writes no files_metadata.json and
/// says so in the sentinel.
#[test]
fn backup_push_rate_limits_and_without_files_metadata() {
    let store = Store::fs();
    let pg = archiving_cluster(&store, WAL_PUSH);
    let push = |env: (&str, &str), extra: &[&str]| {
        let start = Instant::now();
        store
            .walden()
            .envs(pg.env())
            .env("WALG_COMPRESSION_METHOD", "lz4")
            .env(env.0, env.1)
            .arg("backup-push")
            .args(extra)
            .run()
            .assert_ok();
        let took = start.elapsed();
        let newest = sentinels(&store)
            .into_iter()
            .max_by_key(|n| {
                fs::metadata(store.object_file(&format!("basebackups_005/{n}")))
                    .and_then(|m| m.modified())
                    .unwrap()
            })
            .unwrap();
        (sentinel(&store, &newest), newest, took)
    };

    let rate = 10_000_000f64;
    let (s, name, took) = push(
        ("WALG_DISK_RATE_LIMIT", "10000000"),
        &["--without-files-metadata"],
    );
    let bytes = s["UncompressedSize"].as_f64().unwrap();
    // The bucket starts with 64 KiB; pg_control and the labels are
    // read outside the data walk but through the same limit.
    let floor = (bytes - 65_536.0) / rate;
    assert!(
        took.as_secs_f64() >= floor * 0.95 && floor > 1.0,
        "{bytes} bytes at {rate} B/s took {took:?}"
    );
    assert_eq!(s["FilesMetadataDisabled"], true, "{s}");
    let base = name.trim_end_matches("_backup_stop_sentinel.json");
    assert!(!store
        .object_file(&format!("basebackups_005/{base}/files_metadata.json"))
        .exists());

    let rate = 4_000_000f64;
    pg.psql("CREATE TABLE t AS SELECT md5(g::text) || g AS x FROM generate_series(1, 200000) g");
    let (s, name, took) = push(("WALG_NETWORK_RATE_LIMIT", "4000000"), &[]);
    let stored = s["CompressedSize"].as_f64().unwrap();
    let floor = (stored - 65_536.0) / rate;
    assert!(
        took.as_secs_f64() >= floor * 0.95 && floor > 1.0,
        "{stored} bytes stored at {rate} B/s took {took:?}"
    );
    assert!(s.get("FilesMetadataDisabled").is_none(), "{s}");
    let base = name.trim_end_matches("_backup_stop_sentinel.json");
    assert!(store
        .object_file(&format!("basebackups_005/{base}/files_metadata.json"))
        .is_file());
}

/// The server dies mid-backup: the alive check stops the copy soon after
/// (not at its end), the error says what happened, and no sentinel is
/// written.
#[test]
fn backup_push_alive_check_stops_a_backup_of_a_dead_server() {
    let store = Store::fs();
    let mut pg = archiving_cluster(&store, WAL_PUSH);
    pg.pgbench_init(5);
    // At 10 MB/s the ~90 MB copy would take about 9 s.
    let running = store
        .walden()
        .envs(pg.env())
        .env("WALG_DISK_RATE_LIMIT", "10000000")
        .env("WALG_ALIVE_CHECK_INTERVAL", "200ms")
        .arg("backup-push")
        .spawn();
    let base = store.object_file("basebackups_005");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_dir(&base).is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    pg.kill();
    let killed = Instant::now();
    let out = running.wait(Duration::from_secs(60));
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(out.stderr.contains("stopped answering"), "{}", out.dump());
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "stopped {:?} after the server died",
        killed.elapsed()
    );
    assert!(sentinels(&store).is_empty(), "no sentinel");
}

/// pg_backup_stop waits for the archive; with an archive_command that
/// always fails it would wait forever. WALG_STOP_BACKUP_TIMEOUT bounds it.
#[test]
fn backup_push_stop_timeout() {
    let store = Store::fs();
    let pg = archiving_cluster(&store, "'false'");
    let start = Instant::now();
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_STOP_BACKUP_TIMEOUT", "2s")
        .arg("backup-push")
        .timeout(Duration::from_secs(120))
        .run();
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(
        out.stderr.contains("WALG_STOP_BACKUP_TIMEOUT"),
        "{}",
        out.dump()
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(sentinels(&store).is_empty(), "no sentinel");
}
