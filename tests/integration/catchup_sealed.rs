//! catchup-send / catchup-receive with WALG_LIBSODIUM_KEY, tablespaces and
//! the points where walden departs from WAL-G (W23): a replica with a
//! tablespace is stopped, the primary writes (in the tablespace too), makes
//! a new database (a directory the replica lacks) and leaves a relation
//! file with an invalid page; walden to walden over the encrypted stream
//! brings the replica back, it streams and has the primary's rows. Keys
//! that do not match (one side without, different keys, a WAL-G peer)
//! are refused with the reason on both sides.

use std::fs;
use std::path::{Path, PathBuf};

use crate::catchup::{
    checkpoint_past, psql_in, redo_lsn, rows_with, wait_replayed, wait_streaming,
    wal_dropping_primary,
};
use crate::harness::scenario::{catchup_over_tcp, pg_basebackup, start_standby, tablespace};
use crate::harness::tmp::chown_postgres;
use crate::harness::walden::{walg_bin, Output};
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

const KEY: &str = "walden-catchup-sealed-test-key-01";

/// This file's own checks beside the common ones: the tablespace's
/// tables, the new database.
const CHECKS: &[(&str, &str)] = &[
    (
        "postgres",
        "SELECT sum(id)::text || '/' || count(*) || '/' || sum(length(v)) FROM ts_t",
    ),
    (
        "postgres",
        "SELECT sum(id)::text || '/' || count(*) FROM ts_new",
    ),
    ("db3", "SELECT sum(n)::text || '/' || count(*) FROM t3"),
];

fn rows(pg: &PgCluster) -> Vec<String> {
    rows_with(pg, CHECKS)
}

/// One catch-up: `receiver` on `data`, then `sender` from `primary`.
fn transfer(
    primary: &PgCluster,
    data: &Path,
    sender: Walden,
    receiver: Walden,
    store: &Store,
) -> (Output, Output) {
    catchup_over_tcp(primary, data, sender, receiver, &store.env())
}

fn keyed(key: &str) -> Walden {
    Walden::new().env("WALG_LIBSODIUM_KEY", key)
}

const PAGE: usize = 8192;

#[test]
fn sealed_catchup_with_a_tablespace_a_new_database_and_an_invalid_page() {
    let store = Store::fs();
    fs::create_dir_all(store.object_file("")).unwrap();
    let primary = wal_dropping_primary();
    let (dir, ts_primary, oid) = tablespace(&primary, "catchup-sealed");
    let ts_replica = dir.join("ts-replica");
    primary.pgbench_init(1);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, 'k' FROM generate_series(1, 10000) g; \
         CREATE TABLE ts_t (id int primary key, v text) TABLESPACE ts1; \
         INSERT INTO ts_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         CREATE TABLE drop_t AS SELECT 1 AS id",
    );
    // A file PostgreSQL does not know, named and sized like a relation
    // segment, so that it is scanned for pages (all new for now).
    let db = primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'");
    let junk = PathBuf::from(format!("base/{db}/999999"));
    fs::write(primary.data_dir().join(&junk), vec![0u8; 2 * PAGE]).unwrap();
    chown_postgres(&primary.data_dir().join(&junk));
    let drop_path = primary.psql("SELECT pg_relation_filepath('drop_t')");
    let ts_path = primary.psql("SELECT pg_relation_filepath('ts_t')");
    assert!(
        ts_path.starts_with(&format!("pg_tblspc/{oid}/")),
        "{ts_path}"
    );

    let data = dir.join("data");
    pg_basebackup(&primary, &data, &[(&ts_primary, &ts_replica)]);
    chown_postgres(&ts_replica);
    let link = data.join(format!("pg_tblspc/{oid}"));
    assert_eq!(fs::read_link(&link).unwrap(), ts_replica);
    let mut replica = start_standby(&primary, data.clone());
    wait_replayed(&primary, &replica);
    replica.stop();
    assert!(data.join(&junk).exists());

    primary.psql(
        "UPDATE keep_t SET v = 'x' WHERE id % 10 = 0; DROP TABLE drop_t; \
         UPDATE ts_t SET v = 'changed' WHERE id % 7 = 0; \
         CREATE TABLE ts_new TABLESPACE ts1 AS SELECT g AS id FROM generate_series(1, 500) g",
    );
    psql_in(&primary, "postgres", "CREATE DATABASE db3");
    psql_in(
        &primary,
        "db3",
        "CREATE TABLE t3 (n int); INSERT INTO t3 SELECT generate_series(1, 300)",
    );
    let db3 = primary.psql("SELECT oid FROM pg_database WHERE datname = 'db3'");
    assert!(!data.join(format!("base/{db3}")).exists());
    primary.pgbench(&["-n", "-t", "100"]);
    // The junk file now has an invalid page between two new ones: its
    // increment cannot be computed, so it must go whole.
    let mut bad = vec![0u8; 3 * PAGE];
    bad[PAGE..2 * PAGE].fill(0xAB);
    fs::write(primary.data_dir().join(&junk), &bad).unwrap();
    // Streaming alone could not bring the replica back.
    checkpoint_past(&primary, redo_lsn(&data));
    let primary_ts_before: Vec<_> = fs::read_dir(&ts_primary).unwrap().collect();

    let (sent, received) = transfer(&primary, &data, keyed(KEY), keyed(KEY), &store);
    sent.assert_ok();
    received.assert_ok();
    // The tablespace's changed files went as increments through the link.
    assert!(
        received
            .stderr
            .contains(&format!("Incremental file {ts_path}")),
        "{}",
        received.dump()
    );
    assert!(
        sent.stderr.contains("has an invalid page") && sent.stderr.contains("999999"),
        "{}",
        sent.dump()
    );
    assert!(
        fs::read(data.join(&junk)).unwrap() == bad,
        "the file with the invalid page did not arrive whole"
    );
    assert!(data.join(format!("base/{db3}")).is_dir());
    assert!(!data.join(&drop_path).exists());
    // Files of the tablespace landed in the replica's location, the link
    // is the replica's, and the map does not move it to the primary's.
    let new_path = primary.psql("SELECT pg_relation_filepath('ts_new')");
    let inside = new_path
        .strip_prefix(&format!("pg_tblspc/{oid}/"))
        .unwrap()
        .to_string();
    assert!(ts_replica.join(&inside).is_file(), "{new_path}");
    assert_eq!(fs::read_link(&link).unwrap(), ts_replica);
    assert_eq!(fs::read(data.join("tablespace_map")).unwrap(), b"");
    assert!(!data.join("global/pg_control.walden-catchup").exists());

    chown_postgres(&data);
    chown_postgres(&ts_replica);
    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    assert_eq!(rows(&replica), rows(&primary), "{}", replica.log_tail());
    assert_eq!(fs::read_link(&link).unwrap(), ts_replica);
    let after: Vec<_> = fs::read_dir(&ts_primary).unwrap().collect();
    assert_eq!(after.len(), primary_ts_before.len());
}

/// A tablespace made on the primary after the replica stopped: refused
/// before the backup starts, with what to do.
#[test]
fn mismatched_keys_and_a_tablespace_the_replica_lacks_are_refused() {
    let store = Store::fs();
    fs::create_dir_all(store.object_file("")).unwrap();
    let primary = PgCluster::builder().start();
    let dir = TempDir::new("catchup-sealed-refused");
    let data = dir.join("data");
    pg_basebackup(&primary, &data, &[]);
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");
    primary.psql("CHECKPOINT");

    let expect = |(sent, received): (Output, Output), tx: &str, rx: &str| {
        sent.assert_failed();
        received.assert_failed();
        assert!(sent.stderr.contains(tx), "{}", sent.dump());
        assert!(received.stderr.contains(rx), "{}", received.dump());
    };
    // The sender has no key: it names the receiver's encryption; the
    // receiver sees it leave.
    expect(
        transfer(&primary, &data, Walden::new(), keyed(KEY), &store),
        "this side has no key",
        "closed the connection",
    );
    // The receiver has no key: the sender sees a stream in the clear.
    expect(
        transfer(&primary, &data, keyed(KEY), Walden::new(), &store),
        "without WALG_LIBSODIUM_KEY",
        "catch-up connection",
    );
    // Different keys.
    expect(
        transfer(
            &primary,
            &data,
            keyed(KEY),
            keyed("another-key-for-the-catch-up-test"),
            &store,
        ),
        "different WALG_LIBSODIUM_KEYs",
        "closed the connection",
    );

    // A tablespace newer than the replica.
    let loc = dir.join("ts-new");
    fs::create_dir(&loc).unwrap();
    chown_postgres(&loc);
    primary.psql(&format!(
        "CREATE TABLESPACE ts_late LOCATION '{}'",
        loc.display()
    ));
    let oid = primary.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts_late'");
    let (sent, received) = transfer(&primary, &data, keyed(KEY), keyed(KEY), &store);
    sent.assert_failed();
    assert!(
        sent.stderr
            .contains(&format!("tablespace {oid} (at '{}'", loc.display()))
            && sent.stderr.contains("ln -s"),
        "{}",
        sent.dump()
    );
    received.assert_failed();
    // Nothing was changed on the refused replica: it starts as it was.
    assert!(data.join("global/pg_control").is_file());
    assert!(!data.join("global/pg_control.walden-catchup").exists());
    primary.psql("DROP TABLESPACE ts_late");

    // WAL-G cannot encrypt this stream (its crypter is never flushed: both
    // WAL-G sides wait forever); walden names it either way round, and
    // the WAL-G side ends rather than hangs.
    let Some(walg) = walg_bin("catchup-send/receive with WAL-G and a key") else {
        return;
    };
    let walg_keyed = || Walden::program(walg.clone()).env("WALG_LIBSODIUM_KEY", KEY);
    expect(
        transfer(&primary, &data, keyed(KEY), walg_keyed(), &store),
        "W23",
        "",
    );
    expect(
        transfer(&primary, &data, walg_keyed(), keyed(KEY), &store),
        "",
        "W23",
    );
}
