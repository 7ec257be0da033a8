//! catchup-push / catchup-fetch / catchup-list: a streaming replica is
//! stopped, the primary writes (updates, a dropped table, new tables, a
//! new database) and checkpoints until the WAL the replica would need is
//! gone; catchup-push on the primary from the replica's REDO location,
//! catchup-fetch into the replica, and the replica starts as a standby,
//! streams, and has the primary's rows. With `WALDEN_WALG_BIN`, WAL-G's
//! catchup-fetch applies the same catch-up to a copy of the replica
//! (without it that part says it skips).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::pg::PG_BIN;
use crate::harness::scenario::start_standby;
pub(crate) use crate::harness::scenario::{replica_of, wait_replayed, wait_streaming};
use crate::harness::tmp::chown_postgres;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

/// What every catch-up test compares between replica and primary: the
/// rows pgbench changes, an updated table, a dropped one gone.
const COMMON_CHECKS: &[(&str, &str)] = &[
    (
        "postgres",
        "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts",
    ),
    (
        "postgres",
        "SELECT sum(length(v))::text || '/' || count(*) FROM keep_t",
    ),
    (
        "postgres",
        "SELECT count(*) FROM pg_class WHERE relname = 'drop_t'",
    ),
];

/// This file's own: a new table, a table in another database.
const CHECKS: &[(&str, &str)] = &[
    (
        "postgres",
        "SELECT sum(id)::text || '/' || count(*) FROM new_t",
    ),
    ("db2", "SELECT sum(n)::text FROM t2"),
];

/// `psql` in database `db` (kept for the tests that use it by this name).
pub(crate) fn psql_in(pg: &PgCluster, db: &str, sql: &str) -> String {
    pg.psql_in(db, sql)
}

pub(crate) fn rows(pg: &PgCluster) -> Vec<String> {
    rows_with(pg, CHECKS)
}

/// The answers to the common checks and then to `checks` (database, SQL).
pub(crate) fn rows_with(pg: &PgCluster, checks: &[(&str, &str)]) -> Vec<String> {
    COMMON_CHECKS
        .iter()
        .chain(checks)
        .map(|(db, sql)| psql_in(pg, db, sql))
        .collect()
}

/// `Latest checkpoint's REDO location` of a stopped cluster, decimal.
pub(crate) fn redo_lsn(data: &Path) -> u64 {
    let out = Command::new(format!("{PG_BIN}/pg_controldata"))
        .arg(data)
        .output()
        .expect("run pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Latest checkpoint's REDO location:"))
        .unwrap_or_else(|| panic!("no REDO location in:\n{text}"));
    let lsn = line.rsplit(' ').next().unwrap().trim();
    let (hi, lo) = lsn.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A primary that keeps no WAL beyond what it must, so that checkpoints
/// remove what a stopped replica would need.
pub(crate) fn wal_dropping_primary() -> PgCluster {
    PgCluster::builder()
        .conf("wal_keep_size", "0")
        .conf("min_wal_size", "'32MB'")
        .start()
}

/// Segment switches and checkpoints on `primary` until the segment of
/// `redo` (a stopped replica's REDO location) is gone from its pg_wal:
/// what makes a catch-up necessary.
pub(crate) fn checkpoint_past(primary: &PgCluster, redo: u64) {
    let needed = segment_of(redo);
    for _ in 0..3 {
        primary.psql("SELECT pg_switch_wal()");
        primary.psql("CHECKPOINT");
    }
    assert!(
        !primary.data_dir().join("pg_wal").join(&needed).exists(),
        "the primary still has {needed}"
    );
}

pub(crate) fn segment_of(lsn: u64) -> String {
    let seg = lsn / (16 << 20);
    format!("{:08X}{:08X}{:08X}", 1, seg >> 8, seg & 0xFF)
}

fn catchups(store: &Store) -> Vec<String> {
    store
        .walden()
        .args(["st", "ls", "catchup_005/"])
        .run()
        .stdout_str()
        .split_whitespace()
        .filter_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .map(str::to_string)
        .collect()
}

fn cat(store: &Store, key: &str) -> String {
    let out = store.walden().args(["st", "cat", key]).run();
    out.assert_ok();
    out.stdout_str()
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn catchup_brings_a_stopped_replica_back_to_streaming() {
    let store = Store::s3();
    let primary = wal_dropping_primary();
    primary.pgbench_init(3);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, repeat('k', 100) FROM generate_series(1, 100000) g; \
         CREATE TABLE drop_t AS SELECT g AS id FROM generate_series(1, 50000) g",
    );
    let drop_path = primary.psql("SELECT pg_relation_filepath('drop_t')");

    let replica_dir = TempDir::new("catchup-replica");
    let mut replica = replica_of(&primary, &replica_dir);
    wait_replayed(&primary, &replica);
    let data = replica.data_dir().to_path_buf();
    assert!(data.join(&drop_path).exists());

    // A running replica is refused before anything is read.
    let running = store
        .walden()
        .arg("catchup-fetch")
        .arg(&data)
        .arg("LATEST")
        .run();
    running.assert_failed();
    assert!(
        running.stderr.contains("PostgreSQL is running"),
        "{}",
        running.dump()
    );

    replica.stop();
    let from = redo_lsn(&data);

    // The primary moves on: some pages of keep_t change, drop_t goes,
    // new tables and a new database come; pgbench updates accounts.
    primary.psql(
        "UPDATE keep_t SET v = v || 'x' WHERE id % 1000 = 0; \
         DROP TABLE drop_t; \
         CREATE TABLE new_t AS SELECT g AS id FROM generate_series(1, 20000) g",
    );
    primary.psql("CREATE DATABASE db2");
    psql_in(
        &primary,
        "db2",
        "CREATE TABLE t2 AS SELECT g AS n FROM generate_series(1, 1000) g",
    );
    primary.pgbench(&["-n", "-t", "300", "-c", "2"]);
    // Streaming alone could not bring the replica back.
    checkpoint_past(&primary, from);

    let pushed = store
        .walden()
        .envs(primary.env())
        .arg("catchup-push")
        .arg(primary.data_dir())
        .args(["--from-lsn", &from.to_string()])
        .timeout(Duration::from_secs(120))
        .run();
    pushed.assert_ok();
    assert!(
        pushed.stderr.contains("Catch-up backup from LSN"),
        "{}",
        pushed.dump()
    );

    let names = catchups(&store);
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    assert!(!name.contains("_D_"), "{name}");
    let backups = store.walden().args(["st", "ls", "basebackups_005/"]).run();
    assert!(
        !backups.stdout_str().contains("base_"),
        "{}",
        backups.dump()
    );
    // WAL-G's catch-up sentinel: a delta of a nameless base at the LSN.
    let sentinel = cat(
        &store,
        &format!("catchup_005/{name}_backup_stop_sentinel.json"),
    );
    assert!(
        sentinel.starts_with("{\"LSN\":")
            && sentinel.contains(&format!(
                ",\"DeltaLSN\":{from},\"DeltaFrom\":\"\",\"DeltaFullName\":\"\",\"DeltaCount\":1,"
            )),
        "{sentinel}"
    );
    let files = cat(&store, &format!("catchup_005/{name}/files_metadata.json"));
    assert!(files.contains("\"IsIncremented\":true"), "no increments");
    for excluded in [
        "/postgresql.conf\"",
        "/pg_hba.conf\"",
        "/postgresql.auto.conf\"",
    ] {
        assert!(!files.contains(excluded), "{excluded} is in the catch-up");
    }
    // Changed pages only: far less than the data directory's relations.
    let list = store
        .walden()
        .args(["catchup-list", "--detail", "--json"])
        .run();
    list.assert_ok();
    let listed: serde_json::Value = serde_json::from_str(&list.stdout_str()).unwrap();
    let size = listed[0]["uncompressed_size"].as_u64().unwrap();
    assert_eq!(listed[0]["backup_name"], name.as_str());
    let accounts = psql_in(
        &primary,
        "postgres",
        "SELECT pg_relation_size('pgbench_accounts') + pg_relation_size('keep_t')",
    );
    assert!(
        size < accounts.parse::<u64>().unwrap(),
        "catch-up of {size} bytes, tables of {accounts}"
    );
    let plain = store.walden().arg("catchup-list").run();
    plain.assert_ok();
    assert!(
        plain.stdout_str().contains(name.as_str()),
        "{}",
        plain.dump()
    );

    let walg_copy = TempDir::new("catchup-walg");
    let walg = std::env::var_os("WALDEN_WALG_BIN").filter(|p| !p.is_empty());
    if walg.is_some() {
        copy_dir(&data, &walg_copy.join("data"));
    } else {
        eprintln!("WALDEN_WALG_BIN not set: skipping WAL-G's catchup-fetch of walden's catch-up");
    }

    store
        .walden()
        .arg("catchup-fetch")
        .arg(&data)
        .arg(name)
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();
    assert!(
        !data.join(&drop_path).exists(),
        "the dropped table's file is left"
    );
    assert!(data.join("backup_label").exists());
    assert!(data.join("standby.signal").exists());
    assert!(!data.join("global/pg_control.walden-catchup").exists());
    chown_postgres(&data);

    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    let expected = rows(&primary);
    assert_eq!(rows(&replica), expected, "{}", replica.log_tail());
    // It keeps streaming.
    primary.psql("INSERT INTO new_t SELECT g FROM generate_series(1, 10) g");
    wait_replayed(&primary, &replica);
    assert_eq!(rows(&replica), rows(&primary));
    let updated = psql_in(
        &replica,
        "postgres",
        "SELECT count(*) FROM keep_t WHERE v LIKE '%x'",
    );
    assert_eq!(updated, "100");

    if let Some(bin) = walg {
        let copy = walg_copy.join("data");
        Walden::program(PathBuf::from(bin))
            .envs(store.env())
            .arg("catchup-fetch")
            .arg(&copy)
            .arg(name)
            .timeout(Duration::from_secs(120))
            .run()
            .assert_ok();
        chown_postgres(&copy);
        replica.stop();
        let other = start_standby(&primary, copy);
        wait_replayed(&primary, &other);
        assert_eq!(rows(&other), rows(&primary), "{}", other.log_tail());
    }
}

/// A catch-up that starts after the replica's position would miss
/// changes: catchup-fetch refuses it and leaves the replica untouched.
#[test]
fn catchup_from_after_the_replica_is_refused() {
    let store = Store::fs();
    let primary = PgCluster::builder().start();
    primary.pgbench_init(1);
    let replica_dir = TempDir::new("catchup-late");
    let mut replica = replica_of(&primary, &replica_dir);
    replica.stop();
    let data = replica.data_dir().to_path_buf();
    let redo = redo_lsn(&data);
    primary.pgbench(&["-n", "-t", "200"]);
    primary.psql("CHECKPOINT");
    let late = primary.psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn");
    store
        .walden()
        .envs(primary.env())
        .arg("catchup-push")
        .arg(primary.data_dir())
        .args(["--from-lsn", &late])
        .run()
        .assert_ok();
    let before = fs::read(data.join("global/pg_control")).unwrap();
    let out = store
        .walden()
        .arg("catchup-fetch")
        .arg(&data)
        .arg("LATEST")
        .run();
    out.assert_failed();
    assert!(
        out.stderr.contains(&format!("--from-lsn {redo}")),
        "{}",
        out.dump()
    );
    assert_eq!(fs::read(data.join("global/pg_control")).unwrap(), before);
    // A --from-lsn ahead of the primary is refused by catchup-push.
    let ahead = store
        .walden()
        .envs(primary.env())
        .arg("catchup-push")
        .arg(primary.data_dir())
        .args(["--from-lsn", "0/FFFFFFFF"])
        .run();
    ahead.assert_failed();
    assert!(ahead.stderr.contains("ahead"), "{}", ahead.dump());
}

/// walden's catchup-fetch applies WAL-G's own catch-up (every file whole,
/// the same sentinel), with `WALDEN_WALG_BIN`; without it, skips.
#[test]
fn walden_applies_a_walg_catchup() {
    let Some(walg) = std::env::var_os("WALDEN_WALG_BIN").filter(|p| !p.is_empty()) else {
        eprintln!("WALDEN_WALG_BIN not set: skipping walden's catchup-fetch of WAL-G's catch-up");
        return;
    };
    let store = Store::fs();
    let primary = PgCluster::builder().start();
    primary.pgbench_init(1);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, 'k' FROM generate_series(1, 10000) g; \
         CREATE TABLE drop_t AS SELECT 1 AS id",
    );
    let replica_dir = TempDir::new("catchup-from-walg");
    let mut replica = replica_of(&primary, &replica_dir);
    wait_replayed(&primary, &replica);
    replica.stop();
    let data = replica.data_dir().to_path_buf();
    let from = redo_lsn(&data);
    primary.psql(
        "UPDATE keep_t SET v = 'x' WHERE id % 10 = 0; DROP TABLE drop_t; \
         CREATE TABLE new_t AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    primary.psql("CREATE DATABASE db2");
    psql_in(&primary, "db2", "CREATE TABLE t2 AS SELECT 7 AS n");
    primary.pgbench(&["-n", "-t", "100"]);
    // WAL-G wants its storage directory to exist.
    fs::create_dir_all(store.object_file("")).unwrap();
    Walden::program(PathBuf::from(walg))
        .envs(store.env())
        .envs(primary.env())
        .arg("catchup-push")
        .arg(primary.data_dir())
        .args(["--from-lsn", &from.to_string()])
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();
    let names = catchups(&store);
    assert_eq!(names.len(), 1, "{names:?}");
    store
        .walden()
        .arg("catchup-fetch")
        .arg(&data)
        .arg("LATEST")
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();
    chown_postgres(&data);
    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    assert_eq!(rows(&replica), rows(&primary), "{}", replica.log_tail());
}
