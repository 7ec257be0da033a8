//! catchup-send / catchup-receive (spec §11.3): a streaming replica is
//! stopped, the primary moves on (updated pages, a dropped table, a new
//! table), the primary's changes go over one TCP connection into the
//! stopped replica, and the replica starts, streams and has the primary's
//! rows. Each pairing of walden and WAL-G (`WALDEN_WALG_BIN`; without it
//! the WAL-G pairings say they skip).

use std::fs;
use std::path::PathBuf;

use crate::catchup::{
    checkpoint_past, psql_in, redo_lsn, replica_of, rows, wait_replayed, wait_streaming,
    wal_dropping_primary,
};
use crate::harness::scenario::catchup_over_tcp;
use crate::harness::tmp::chown_postgres;
use crate::harness::{TempDir, Walden};
use crate::store::Store;

fn program(walg: bool) -> Option<Walden> {
    if !walg {
        return Some(Walden::new());
    }
    let bin = std::env::var_os("WALDEN_WALG_BIN").filter(|p| !p.is_empty())?;
    Some(Walden::program(PathBuf::from(bin)))
}

fn scenario(walg_sends: bool, walg_receives: bool) {
    let (Some(sender), Some(receiver)) = (program(walg_sends), program(walg_receives)) else {
        eprintln!("WALDEN_WALG_BIN not set: skipping catchup-send/receive with WAL-G");
        return;
    };
    let store = Store::fs();
    fs::create_dir_all(store.object_file("")).unwrap();
    let primary = wal_dropping_primary();
    primary.pgbench_init(1);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, 'k' FROM generate_series(1, 10000) g; \
         CREATE TABLE drop_t AS SELECT 1 AS id; \
         CREATE TABLE new_t (id int)",
    );
    psql_in(&primary, "postgres", "CREATE DATABASE db2");
    psql_in(&primary, "db2", "CREATE TABLE t2 (n int)");
    let drop_path = primary.psql("SELECT pg_relation_filepath('drop_t')");
    let dir = TempDir::new("catchup-direct");
    let mut replica = replica_of(&primary, &dir);
    wait_replayed(&primary, &replica);
    replica.stop();
    let data = replica.data_dir().to_path_buf();
    assert!(data.join(&drop_path).exists());
    primary.psql(
        "UPDATE keep_t SET v = 'x' WHERE id % 10 = 0; DROP TABLE drop_t; \
         INSERT INTO new_t SELECT g FROM generate_series(1, 100) g; \
         CREATE TABLE new2_t AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    psql_in(&primary, "db2", "INSERT INTO t2 SELECT 7");
    primary.pgbench(&["-n", "-t", "100"]);
    // Streaming alone could not bring the replica back.
    checkpoint_past(&primary, redo_lsn(&data));

    let (sent, received) = catchup_over_tcp(&primary, &data, sender, receiver, &store.env());
    sent.assert_ok();
    received.assert_ok();
    // Changed relation files went as increments (both implementations log
    // "Incremental file NAME" on the receiving side).
    assert!(
        received.stderr.contains("Incremental file base/"),
        "{}",
        received.dump()
    );
    assert!(
        !data.join(&drop_path).exists(),
        "the dropped table's file is left"
    );
    assert!(data.join("backup_label").exists());
    assert!(!data.join("global/pg_control.walden-catchup").exists());
    chown_postgres(&data);
    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    assert_eq!(rows(&replica), rows(&primary), "{}", replica.log_tail());
}

#[test]
fn walden_receives_from_walg_send() {
    scenario(true, false);
}

#[test]
fn walg_receives_from_walden_send() {
    scenario(false, true);
}

#[test]
fn walden_sends_to_walden_receive() {
    scenario(false, false);
}
