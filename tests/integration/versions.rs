//! The version matrix: the same backup → point-in-time recovery story on
//! every PostgreSQL major walden supports (13–18), so the version-dependent
//! parts (backup functions, WAL segment size, pg_control, PG 17/18 layout
//! changes) are proven, not assumed. 15 is Debian's; the others come from
//! scripts/pg-versions.sh. Kept small (scale 1, a few seconds of pgbench):
//! the matrix runs in every CI run.
//!
//! The recovery settings are written by `backup-fetch --recovery-target-name`.

use std::fs;
use std::time::Duration;

use crate::harness::{walden_bin_for_postgres, PgCluster, TempDir, Walden};
use crate::store::Store;

const ROWS: &str =
    "SELECT sum(abalance)::text || '/' || count(*) || '/' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";

fn pitr_on(major: u32) {
    let store = Store::fs();
    let mut pg = PgCluster::builder()
        .major(major)
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start();
    let version: u32 = pg.psql("SHOW server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "the server runs the wanted major");
    pg.pgbench_init(1);

    store.backup_push_under_load(&pg);
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    let expected = pg.psql(ROWS);
    pg.psql("SELECT pg_create_restore_point('walden_matrix')");
    // Past the restore point: recovery must stop before these.
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    assert_ne!(pg.psql(ROWS), expected, "writes after the restore point");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(60));
    pg.stop();

    let listing = store
        .walden()
        .args(["st", "ls", "basebackups_005/"])
        .run()
        .stdout_str();
    let name = listing
        .split_whitespace()
        .find_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .unwrap_or_else(|| panic!("a sentinel in {listing}"));
    let sentinel: serde_json::Value = serde_json::from_slice(
        &fs::read(store.object_file(&format!("basebackups_005/{name}_backup_stop_sentinel.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sentinel["PgVersion"], version, "{sentinel}");

    // walden's own point-in-time recovery: the binary PostgreSQL will
    // call (reachable by the postgres user) writes its own restore_command.
    let restored_dir = TempDir::new("matrix");
    restored_dir.chown_postgres();
    let data = restored_dir.join("data");
    Walden::program(walden_bin_for_postgres(restored_dir.path()))
        .envs(store.env())
        .arg("backup-fetch")
        .arg(&data)
        .args(["LATEST", "--recovery-target-name", "walden_matrix"])
        .run()
        .assert_ok();
    let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("recovery_target_name = 'walden_matrix'"),
        "{auto}"
    );
    assert!(data.join("recovery.signal").exists());
    let restored = PgCluster::builder()
        .major(major)
        .conf("archive_mode", "off")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
    let log = fs::read_to_string(restored.log_path()).unwrap();
    assert!(
        log.contains("recovery stopping at restore point \"walden_matrix\""),
        "{log}"
    );
}

#[test]
fn pitr_pg13() {
    pitr_on(13);
}

#[test]
fn pitr_pg14() {
    pitr_on(14);
}

#[test]
fn pitr_pg15() {
    pitr_on(15);
}

#[test]
fn pitr_pg16() {
    pitr_on(16);
}

#[test]
fn pitr_pg17() {
    pitr_on(17);
}

#[test]
fn pitr_pg18() {
    pitr_on(18);
}
