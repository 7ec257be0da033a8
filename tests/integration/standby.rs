//! Backups from a standby: taken while the primary writes, restored, rows
//! compared; and a standby whose timeline changes during the backup (its
//! upstream is promoted) leaves the backup uploaded but unfinalised, with
//! an error that says how to finalise it, and following it works.

use std::fs;
use std::time::Duration;

use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

/// A streaming standby of `upstream`, fed also from the archive. The
/// cluster comes first so that it stops before its directory goes.
fn standby_of(upstream: &PgCluster, store: &Store, major: u32) -> (PgCluster, TempDir) {
    let dir = TempDir::new("standby");
    let data = dir.join("data");
    upstream.base_backup(&data);
    fs::write(data.join("standby.signal"), "").unwrap();
    let conninfo = format!(
        "'host={} port={} user=postgres'",
        upstream.socket_dir().display(),
        upstream.port()
    );
    let pg = PgCluster::builder()
        .major(major)
        .conf("primary_conninfo", &conninfo)
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "on")
        .env(store.env())
        .start_restored(data);
    pg.wait_for_sql(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(60),
    );
    (pg, dir)
}

fn archiving_primary(store: &Store, major: u32) -> PgCluster {
    PgCluster::builder()
        .major(major)
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start()
}

fn sentinels(store: &Store) -> Vec<String> {
    store
        .walden()
        .args(["st", "ls", "basebackups_005/"])
        .run()
        .stdout_str()
        .split_whitespace()
        .filter_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .map(str::to_string)
        .collect()
}

#[test]
fn standby_backup_and_restore() {
    backup_from_standby(15);
}

/// pg_start_backup/pg_stop_backup on a standby (Debian's pg_basebackup
/// makes standbys of older servers, not of newer ones).
#[test]
fn standby_backup_and_restore_pg13() {
    backup_from_standby(13);
}

fn backup_from_standby(major: u32) {
    let store = Store::fs();
    let mut primary = archiving_primary(&store, major);
    primary.pgbench_init(1);
    let (standby, _standby_dir) = standby_of(&primary, &store, major);

    std::thread::scope(|s| {
        let load = s.spawn(|| primary.pgbench(&["-n", "-T", "3", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(300));
        let out = store
            .walden()
            .envs(standby.env())
            .arg("backup-push")
            .timeout(Duration::from_secs(120))
            .run();
        out.assert_ok();
        assert!(
            out.stderr.contains("The server is a standby"),
            "{}",
            out.dump()
        );
        load.join().unwrap();
    });
    primary.pgbench(&["-n", "-t", "200", "-c", "2"]);
    let expected = primary.psql(ROWS);
    let last = primary.switch_wal();
    primary.wait_for_archive(&last, Duration::from_secs(60));
    primary.stop();

    let names = sentinels(&store);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("base_00000001"), "{names:?}");
    let label = store
        .walden()
        .args([
            "st",
            "cat",
            "--decompress",
            &format!(
                "basebackups_005/{}/tar_partitions/backup_label.tar.lz4",
                names[0]
            ),
        ])
        .run();
    label.assert_ok();
    assert!(
        String::from_utf8_lossy(&label.stdout).contains("BACKUP FROM: standby"),
        "the backup_label is the standby's"
    );

    let restored_dir = TempDir::new("standby-restored");
    let data = restored_dir.join("data");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .run()
        .assert_ok();
    assert!(!data.join("standby.signal").exists());
    fs::write(data.join("recovery.signal"), "").unwrap();
    let restored = PgCluster::builder()
        .major(major)
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .conf("primary_conninfo", "''")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
}

#[test]
fn standby_timeline_change_leaves_backup_unfinalised() {
    let store = Store::fs();
    let primary = archiving_primary(&store, 15);
    primary.pgbench_init(2);
    let (upstream, _upstream_dir) = standby_of(&primary, &store, 15);
    let (standby, _standby_dir) = standby_of(&upstream, &store, 15);

    // LZMA makes the walk take seconds, long enough to stop walden
    // between the backup's start and its stop.
    let mut running = store
        .walden()
        .envs(standby.env())
        .env("WALG_COMPRESSION_METHOD", "lzma")
        .arg("backup-push")
        .spawn();
    // Once walden has a file of base/ open, the walk is under way; the
    // backup stops only after pg_control's tar is stored.
    let base = standby.data_dir().join("base");
    let fds = format!("/proc/{}/fd", running.child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !fs::read_dir(&fds)
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&base)))
    {
        if running.child.try_wait().unwrap().is_some() {
            panic!(
                "walden ended before it could be stopped:\n{}",
                running.wait(Duration::from_secs(1)).dump()
            );
        }
        assert!(std::time::Instant::now() < deadline, "backup never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    running.signal(libc::SIGSTOP);
    let written: Vec<String> = fs::read_dir(store.object_file("basebackups_005"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|b| {
            fs::read_dir(b.path().join("tar_partitions"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !written.iter().any(|p| p.starts_with("pg_control")),
        "walden was stopped before its backup's stop: {written:?}"
    );

    // The upstream is promoted; the standby follows it to timeline 2 and
    // makes a restartpoint there.
    upstream.psql("SELECT pg_promote()");
    upstream.wait_for_promotion(Duration::from_secs(60));
    upstream.psql("CHECKPOINT");
    standby.wait_for_sql(
        "SELECT received_tli FROM pg_stat_wal_receiver",
        "2",
        Duration::from_secs(60),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while standby.psql("SELECT timeline_id FROM pg_control_checkpoint()") != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            standby.log_tail()
        );
        upstream.psql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(200));
        standby.psql("CHECKPOINT");
    }
    running.signal(libc::SIGCONT);
    let out = running.wait(Duration::from_secs(300));
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("its timeline changed during the backup, from 1 to 2"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("not finalised"), "{}", out.dump());
    assert!(sentinels(&store).is_empty(), "no sentinel was written");

    // Following the error's instructions finalises it.
    let lines: Vec<&str> = out.stderr.lines().collect();
    let mut finalised = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("walden st put ") else {
            continue;
        };
        let args: Vec<&str> = rest.trim_end_matches(" <<'EOF'").split(' ').collect();
        store
            .walden()
            .args(["st", "put"])
            .args(args)
            .stdin_bytes(lines[i + 1].trim().as_bytes().to_vec())
            .run()
            .assert_ok();
        finalised += 1;
    }
    assert_eq!(finalised, 2, "{}", out.dump());
    let names = sentinels(&store);
    assert_eq!(names.len(), 1, "{names:?}");
    let sentinel: serde_json::Value = serde_json::from_slice(
        &fs::read(store.object_file(&format!(
            "basebackups_005/{}_backup_stop_sentinel.json",
            names[0]
        )))
        .unwrap(),
    )
    .unwrap();
    assert!(sentinel["FinishLSN"].as_u64() > sentinel["LSN"].as_u64());
}
