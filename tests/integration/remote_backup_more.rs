//! Remote `backup-push` (BASE_BACKUP over a replication connection) where
//! the other remote tests do not go: into S3, and from a streaming standby
//! (`PGHOST` naming the standby; its WAL comes from the primary's
//! archive). Each backup is taken under pgbench load, restored with
//! backup-fetch at a time target, PostgreSQL started on the copy and its
//! rows compared with the rows at the target (later writes must be gone).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::scenario::{
    archiving_cluster, backup_names, remote_env, standby_of, stored_json, wait_streaming, WAL_FETCH,
};
use crate::harness::{PgCluster, TempDir};
use crate::remote_backup::{notes_and_bench, restore_at, writes_and_target};
use crate::store::Store;

/// A primary archiving with walden, with pgbench's tables and notes.
fn archiving_primary(store: &Store) -> PgCluster {
    let pg = archiving_cluster(store.env()).start();
    notes_and_bench(&pg, None);
    pg
}

/// Remote backup-push with `env` while pgbench writes on `primary`.
fn push_under_load(store: &Store, primary: &PgCluster, env: &[(String, String)]) -> String {
    std::thread::scope(|s| {
        let load = s.spawn(|| primary.pgbench(&["-n", "-T", "3", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(300));
        let out = store
            .walden()
            .envs(env.to_vec())
            .arg("backup-push")
            .timeout(Duration::from_secs(300))
            .run();
        out.assert_ok();
        assert!(
            out.stderr.contains("Running remote backup"),
            "{}",
            out.dump()
        );
        load.join().unwrap();
        out.stderr
    })
}

/// The one backup in storage.
fn only_backup(store: &Store) -> String {
    let names = backup_names(store.walden());
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

fn sentinel(store: &Store, name: &str) -> Value {
    stored_json(
        store.walden(),
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
    )
}

/// The newest backup restored at time `target` into `dest`, its rows
/// compared with `expected`.
fn restore_latest_at(store: &Store, target: &str, dest: &Path, expected: &str) {
    restore_at(
        store,
        "LATEST",
        &["--recovery-target-time", target],
        &[],
        dest,
        expected,
    );
}

/// Remote backup-push into S3, WAL archived into S3 by wal-push, restored
/// from S3 at a time target.
#[test]
fn remote_backup_push_on_s3_restores_at_a_time_target() {
    let store = Store::s3();
    let mut pg = archiving_primary(&store);
    push_under_load(&store, &pg, &remote_env(&pg));
    let (expected, target) = writes_and_target(&pg);

    let name = only_backup(&store);
    let sent = sentinel(&store, &name);
    assert!(sent["Spec"].is_object(), "a remote backup's Spec: {sent}");
    assert!(sent.get("DataCatalogSize").is_none(), "{sent}");
    let parts = store
        .walden()
        .args(["st", "ls"])
        .arg(format!("basebackups_005/{name}/tar_partitions/"))
        .run()
        .stdout_str();
    assert!(
        parts.contains("part_001.tar.") && parts.contains("pg_control.tar."),
        "{parts}"
    );
    pg.stop();

    let dirs = TempDir::new("remote-s3-restore");
    dirs.chown_postgres();
    restore_latest_at(&store, &target, &dirs.join("data"), &expected);
}

/// Remote backup-push from a streaming standby while the primary writes:
/// BASE_BACKUP on a standby needs no WAL switch (none is possible there)
/// and WAL-G asks for none either; the standby's timeline and start LSN
/// name the backup, and its WAL is the primary's archive.
#[test]
fn remote_backup_push_from_a_standby() {
    let store = Store::fs();
    let mut primary = archiving_primary(&store);

    let standby_dir = TempDir::new("remote-standby");
    let standby_data = standby_dir.join("data");
    primary.base_backup(&standby_data);
    let mut standby = standby_of(&primary, &standby_data)
        .conf("restore_command", WAL_FETCH)
        .conf("archive_mode", "on")
        .env(store.env())
        .start_restored(standby_data.clone());
    wait_streaming(&standby);

    push_under_load(&store, &primary, &remote_env(&standby));
    let (expected, target) = writes_and_target(&primary);

    let name = only_backup(&store);
    assert!(name.starts_with("base_00000001"), "{name}");
    let sent = sentinel(&store, &name);
    assert_eq!(
        sent["SystemIdentifier"].as_u64().unwrap().to_string(),
        primary.psql("SELECT system_identifier FROM pg_control_system()")
    );
    let standby_dir_canon = standby_data.canonicalize().unwrap();
    assert_eq!(
        sent["DataDir"],
        standby_dir_canon.display().to_string(),
        "the standby was backed up: {sent}"
    );
    let (start, finish) = (
        sent["LSN"].as_u64().unwrap(),
        sent["FinishLSN"].as_u64().unwrap(),
    );
    assert!(start <= finish, "{sent}");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    standby.stop();
    primary.stop();

    let dirs = TempDir::new("remote-standby-restore");
    dirs.chown_postgres();
    restore_latest_at(&store, &target, &dirs.join("data"), &expected);
}
