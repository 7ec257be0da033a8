//! Remote delta backups (issue 16 item 2): `backup-push` without a data
//! directory on PostgreSQL 17 with `summarize_wal = on` uploads a manifest
//! made from the base's objects and takes an INCREMENTAL BASE_BACKUP; its
//! `INCREMENTAL.` files are stored as WAL-G increments. A remote full,
//! pgbench writes, a remote delta, more writes (a TRUNCATE, a VACUUM that
//! shrinks a table, a new table) and a second delta: the newest delta is
//! restored by walden with a time target through walden's restore_command
//! and its rows compared, and by WAL-G 3.0.9 when `WALDEN_WALG_BIN` names
//! it; the deltas are much smaller than the full. A remote delta on a
//! LOCAL full backup restores too, and so does one of a cluster with a
//! tablespace (its table stored as an increment, the tablespace moved), and
//! deltas taken from a streaming standby. Refusals: PostgreSQL 15, summarize_wal
//! off, and a base older than the server's WAL summaries, each explicit
//! (an error saying what to do) and implicit (`WALG_DELTA_MAX_STEPS`
//! alone: a full backup and a line saying why). Each PostgreSQL 17 test
//! skips, saying so, when 17 is not installed.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::scenario::{
    archiving_cluster, fetch_for_postgres, pushed_backup_name, recovering_to_time, remote_env,
    restore_and_compare,
};
use crate::harness::walg_bin;
use crate::harness::{Output, PgCluster, TempDir, Walden};
use crate::store::Store;

const ROWS: &str = "SELECT (SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts) || ' ' || \
    (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT count(*) || '/' || coalesce(sum(id), 0) FROM trunc) || ' ' || \
    (SELECT count(*) || '/' || coalesce(sum(id), 0) FROM shrink) || ' ' || \
    (SELECT count(*) || '/' || coalesce(sum(id), 0) FROM fresh)";

fn installed(major: u32) -> bool {
    std::panic::catch_unwind(|| crate::harness::pg::server_bin(major)).is_ok()
}

fn push(store: &Store, env: &[(String, String)], max_steps: &str, args: &[&str]) -> Output {
    store
        .walden()
        .envs(env.to_vec())
        .env("WALG_DELTA_MAX_STEPS", max_steps)
        .arg("backup-push")
        .args(args)
        .timeout(Duration::from_secs(300))
        .run()
}

/// The name of the backup a backup-push that must succeed wrote.
fn name_of(out: &Output) -> String {
    out.assert_ok();
    pushed_backup_name(out)
}

fn json(store: &Store, key: &str) -> Value {
    serde_json::from_slice(&fs::read(store.object_file(key)).unwrap()).unwrap()
}

fn sentinel(store: &Store, name: &str) -> Value {
    json(
        store,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
    )
}

/// The stored (compressed) size of all of a backup's tar partitions.
fn stored_bytes(store: &Store, name: &str) -> u64 {
    let dir = store.object_file(&format!("basebackups_005/{name}/tar_partitions"));
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Files flagged `IsIncremented` in a backup's files_metadata.json.
fn incremented(store: &Store, name: &str) -> Vec<String> {
    let meta = json(
        store,
        &format!("basebackups_005/{name}/files_metadata.json"),
    );
    meta["Files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["IsIncremented"] == Value::Bool(true))
        .map(|(k, _)| k.clone())
        .collect()
}

fn cluster(store: &Store, summarize: &str) -> PgCluster {
    archiving_cluster(store.env())
        .major(17)
        .conf("summarize_wal", summarize)
        .start()
}

fn tables(pg: &PgCluster) {
    pg.pgbench_init(5);
    pg.psql(
        "CREATE TABLE trunc (id int, pad text); \
         INSERT INTO trunc SELECT g, repeat('t', 200) FROM generate_series(1, 5000) g; \
         CREATE TABLE shrink (id int, pad text); \
         INSERT INTO shrink SELECT g, repeat('s', 200) FROM generate_series(1, 20000) g; \
         CREATE TABLE fresh (id int)",
    );
    pg.psql("CHECKPOINT");
}

/// Writes after the time target, then all WAL archived.
fn after_target(pg: &PgCluster) {
    std::thread::sleep(Duration::from_millis(1100));
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("INSERT INTO fresh SELECT g FROM generate_series(1, 77) g");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
}

/// The rows now and the time to recover to.
fn target(pg: &PgCluster) -> (String, String) {
    let expected = pg.psql(ROWS);
    let target = pg.psql("SELECT clock_timestamp()::text");
    (expected, target)
}

/// backup-fetch NAME by walden at `target` (walden's restore_command),
/// PostgreSQL 17 started on the copy: its rows are `expected`.
fn restore_by_walden(store: &Store, name: &str, target: &str, dest: &Path, expected: &str) {
    let bin_dir = fetch_for_postgres(store.env(), dest, name, &["--recovery-target-time", target]);
    let label = fs::read_to_string(dest.join("backup_label")).unwrap();
    assert!(
        !label.contains("INCREMENTAL"),
        "PostgreSQL refuses to start from an incremental backup_label:\n{label}"
    );
    let restored = PgCluster::builder()
        .major(17)
        .conf("archive_mode", "off")
        .env(store.env());
    let restored = restore_and_compare(restored, dest.to_path_buf(), ROWS, expected);
    drop(restored);
    // Kept until the server is gone: its restore_command is that binary.
    drop(bin_dir);
}

#[test]
fn remote_delta_chain_restores_by_walden_and_walg() {
    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping the remote delta test");
        return;
    }
    let walg = walg_bin("WAL-G's restore of a remote delta");
    let store = Store::fs();
    let mut pg = cluster(&store, "on");
    tables(&pg);
    let env = remote_env(&pg);

    let started = std::time::Instant::now();
    let full = name_of(&push(&store, &env, "5", &[]));
    let full_time = started.elapsed();
    assert!(!full.contains("_D_"), "{full}");

    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let started = std::time::Instant::now();
    let out = push(&store, &env, "5", &[]);
    let delta1_time = started.elapsed();
    let delta1 = name_of(&out);
    assert!(delta1.contains("_D_"), "{}", out.dump());
    assert!(
        out.stderr
            .contains(&format!("Remote delta backup from {full}")),
        "{}",
        out.dump()
    );

    // A cut relation, a shrunk one (VACUUM truncates), a grown one.
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("TRUNCATE trunc");
    pg.psql("INSERT INTO trunc SELECT g, 'after' FROM generate_series(1, 10) g");
    pg.psql("DELETE FROM shrink WHERE id > 5000");
    pg.psql("VACUUM shrink");
    pg.psql("INSERT INTO fresh SELECT g FROM generate_series(1, 3000) g");
    let out = push(&store, &env, "5", &["--delta-from-name", delta1.as_str()]);
    let delta2 = name_of(&out);

    let s1 = sentinel(&store, &delta1);
    assert_eq!(s1["DeltaFrom"], full.as_str());
    assert_eq!(s1["DeltaFullName"], full.as_str());
    assert_eq!(s1["DeltaCount"], 1);
    assert_eq!(s1["DeltaLSN"], sentinel(&store, &full)["LSN"]);
    let s2 = sentinel(&store, &delta2);
    assert_eq!(s2["DeltaFrom"], delta1.as_str());
    assert_eq!(s2["DeltaFullName"], full.as_str());
    assert_eq!(s2["DeltaCount"], 2);
    assert_eq!(s2["DeltaLSN"], s1["LSN"]);
    let accounts = pg.psql(
        "SELECT 'base/' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' \
         || pg_relation_filenode('pgbench_accounts')",
    );
    for d in [&delta1, &delta2] {
        let inc = incremented(&store, d);
        assert!(
            inc.contains(&accounts),
            "{d}: pgbench_accounts ({accounts}) is an increment: {inc:?}"
        );
    }

    let (full_size, d1_size, d2_size) = (
        stored_bytes(&store, &full),
        stored_bytes(&store, &delta1),
        stored_bytes(&store, &delta2),
    );
    eprintln!(
        "remote full {full_size} bytes in {full_time:?}, delta {d1_size} bytes in {delta1_time:?}, second delta {d2_size} bytes"
    );
    assert!(
        d1_size * 4 < full_size && d2_size * 4 < full_size,
        "the deltas are much smaller than the full: {d1_size}, {d2_size} vs {full_size}"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let (expected, at) = target(&pg);
    after_target(&pg);
    pg.stop();

    let dirs = TempDir::new("rdelta-restore");
    dirs.chown_postgres();
    restore_by_walden(&store, &delta2, &at, &dirs.join("walden"), &expected);

    if let Some(walg) = walg {
        let dest = dirs.join("walg");
        Walden::program(&walg)
            .envs(store.env())
            .arg("backup-fetch")
            .arg(&dest)
            .arg(&delta2)
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
        let restored = recovering_to_time(&dest, store.env(), &at).major(17);
        restore_and_compare(restored, dest, ROWS, &expected);
    }
}

#[test]
fn remote_delta_on_a_local_full_backup() {
    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping the remote delta test");
        return;
    }
    let store = Store::fs();
    let mut pg = cluster(&store, "on");
    tables(&pg);
    let local = name_of(&push(&store, &pg.env(), "5", &[]));
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("INSERT INTO fresh SELECT g FROM generate_series(1, 500) g");
    let out = push(&store, &remote_env(&pg), "5", &[]);
    let delta = name_of(&out);
    assert!(
        out.stderr
            .contains(&format!("Remote delta backup from {local}")),
        "{}",
        out.dump()
    );
    // Named as the local base names its files, so the restore pairs them.
    let inc = incremented(&store, &delta);
    assert!(
        inc.iter().any(|n| n.starts_with("/base/")) && inc.iter().all(|n| n.starts_with('/')),
        "{inc:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (expected, at) = target(&pg);
    after_target(&pg);
    pg.stop();
    let dirs = TempDir::new("rdelta-local");
    dirs.chown_postgres();
    restore_by_walden(&store, &delta, &at, &dirs.join("data"), &expected);
}

#[test]
fn remote_delta_refusals() {
    // PostgreSQL 15: an explicit base is refused, saying what to do;
    // WALG_DELTA_MAX_STEPS alone makes a full backup and says why.
    let store = Store::fs();
    let pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start();
    let env = remote_env(&pg);
    let full = name_of(&push(&store, &env, "0", &[]));
    let out = push(&store, &env, "5", &["--delta-from-name", full.as_str()]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("remote delta backups need PostgreSQL 17 or later")
            && out.stderr.contains("--full")
            && out.stderr.contains("local delta"),
        "{}",
        out.dump()
    );
    let out = push(&store, &env, "5", &[]);
    assert!(!name_of(&out).contains("_D_"), "{}", out.dump());
    assert!(
        out.stderr
            .contains("remote delta backups need PostgreSQL 17 or later")
            && out.stderr.contains("doing a full backup"),
        "{}",
        out.dump()
    );
    drop(pg);

    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping its refusals");
        return;
    }
    // PostgreSQL 17 with summarize_wal off.
    let store = Store::fs();
    let pg = cluster(&store, "off");
    let env = remote_env(&pg);
    let full = name_of(&push(&store, &env, "0", &[]));
    let out = push(&store, &env, "5", &["--delta-from-name", full.as_str()]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("summarize_wal = on") && out.stderr.contains("--full"),
        "{}",
        out.dump()
    );
    let out = push(&store, &env, "5", &[]);
    assert!(!name_of(&out).contains("_D_"), "{}", out.dump());
    assert!(out.stderr.contains("summarize_wal = off"), "{}", out.dump());

    // Turned on now, after a checkpoint past both backups: summaries
    // begin there, both bases predate them and the server refuses.
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    pg.psql("CHECKPOINT");
    pg.psql("ALTER SYSTEM SET summarize_wal = on");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    let out = push(&store, &env, "5", &["--delta-from-name", full.as_str()]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("cannot take an incremental backup from")
            && out.stderr.contains("WAL summaries")
            && out.stderr.contains("--full"),
        "{}",
        out.dump()
    );
    let out = push(&store, &env, "5", &[]);
    assert!(!name_of(&out).contains("_D_"), "{}", out.dump());
    assert!(
        out.stderr.contains("doing a full backup instead"),
        "{}",
        out.dump()
    );
    // That full backup began after the summaries did: the next is a delta.
    pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    let out = push(&store, &env, "5", &[]);
    assert!(name_of(&out).contains("_D_"), "{}", out.dump());
}

/// The README's figure (hand-run, `--ignored`): a remote full and a remote
/// delta after `pgbench -t 2000 -c 4` on a PostgreSQL 17 cluster of
/// pgbench scale `WALDEN_BENCH_SCALE` (default 50): time and stored size.
#[test]
#[ignore]
fn remote_delta_bench() {
    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping the remote delta benchmark");
        return;
    }
    let scale: u32 = std::env::var("WALDEN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let store = Store::fs();
    let pg = cluster(&store, "on");
    pg.pgbench_init(scale);
    pg.psql("CHECKPOINT");
    let env = remote_env(&pg);
    let started = std::time::Instant::now();
    let full = name_of(&push(&store, &env, "5", &[]));
    let full_time = started.elapsed();
    pg.pgbench(&["-n", "-t", "2000", "-c", "4"]);
    let started = std::time::Instant::now();
    let out = push(&store, &env, "5", &[]);
    let delta_time = started.elapsed();
    let delta = name_of(&out);
    assert!(delta.contains("_D_"), "{}", out.dump());
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("Remote delta backup from"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "BENCH scale {scale}: remote full {} bytes stored in {full_time:.2?}; remote delta {} bytes stored in {delta_time:.2?}\n{line}",
        stored_bytes(&store, &full),
        stored_bytes(&store, &delta),
    );
}

/// A remote delta of a cluster with a tablespace: the tablespace's
/// archive carries INCREMENTAL files too, stored as increments of the
/// base's `pg_tblspc/<oid>/` files; restored with the tablespace moved
/// (the original location is the live server's) and its rows compared.
#[test]
fn remote_delta_with_a_tablespace() {
    use crate::harness::scenario::{assert_tablespace_at, moved_restore, tablespace, MovedRestore};
    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping the remote delta test");
        return;
    }
    const SPACED: &str = "SELECT count(*) || '/' || sum(id) || '/' || sum(length(pad)) FROM spaced";
    let store = Store::fs();
    let mut pg = cluster(&store, "on");
    let (_ts_dir, _loc, oid) = tablespace(&pg, "rdelta-ts");
    pg.psql(
        "CREATE TABLE spaced (id int PRIMARY KEY, pad text) TABLESPACE ts1; \
         INSERT INTO spaced SELECT g, repeat('s', 200) FROM generate_series(1, 20000) g",
    );
    // Hint bits set now, not by the first scan after the full backup: that
    // scan would change every page, and a file mostly changed is sent whole.
    pg.psql("VACUUM (FREEZE) spaced");
    pg.psql("CHECKPOINT");
    let env = remote_env(&pg);
    let full = name_of(&push(&store, &env, "5", &[]));

    pg.psql("UPDATE spaced SET pad = 'changed' WHERE id IN (7, 5000, 12000, 19000)");
    pg.psql("INSERT INTO spaced SELECT g, 'late' FROM generate_series(20001, 20100) g");
    let out = push(&store, &env, "5", &[]);
    let delta = name_of(&out);
    assert!(
        out.stderr
            .contains(&format!("Remote delta backup from {full}")),
        "{}",
        out.dump()
    );
    let spaced = pg.psql(&format!(
        "SELECT 'pg_tblspc/{oid}/' || (SELECT regexp_replace(pg_relation_filepath('spaced'), '^pg_tblspc/[0-9]+/', ''))"
    ));
    let inc = incremented(&store, &delta);
    assert!(
        inc.iter().any(|n| n.trim_start_matches('/') == spaced),
        "the tablespace's table ({spaced}) is an increment: {inc:?}"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let expected = pg.psql(SPACED);
    let at = pg.psql("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("DELETE FROM spaced WHERE id % 3 = 0");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    let MovedRestore {
        dirs: _dirs,
        data,
        new_loc,
        spec_file,
    } = moved_restore("rdelta-ts-restore", &oid);
    let spec_arg = spec_file.display().to_string();
    let bin_dir = fetch_for_postgres(store.env(), &data, &delta, &["--restore-spec", &spec_arg]);
    crate::harness::tmp::chown_postgres(&new_loc);
    let restored = restore_and_compare(
        recovering_to_time(&data, store.env(), &at).major(17),
        data.clone(),
        SPACED,
        &expected,
    );
    assert_tablespace_at(&restored, &new_loc);
    drop(restored);
    // Kept until the server is gone: its restore_command is that binary.
    drop(bin_dir);
}

/// Remote deltas taken from a streaming PostgreSQL 17 standby with its own
/// WAL summarizer: the first on a full backup of the primary, the second
/// on the first. The standby is a walden restore of that full, so its
/// summaries begin at the full's start. Restored at a time target, rows
/// compared.
#[test]
fn remote_delta_from_a_standby() {
    use crate::harness::scenario::{standby_of, wait_replayed, wait_streaming, WAL_FETCH};
    if !installed(17) {
        eprintln!("PostgreSQL 17 is not installed (scripts/pg-versions.sh): skipping the remote delta test");
        return;
    }
    let store = Store::fs();
    let mut primary = cluster(&store, "on");
    tables(&primary);
    let full = name_of(&push(&store, &remote_env(&primary), "5", &[]));

    let standby_dir = TempDir::new("rdelta-standby");
    let standby_data = standby_dir.join("data");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&standby_data)
        .arg(&full)
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let mut standby = standby_of(&primary, &standby_data)
        .major(17)
        .conf("summarize_wal", "on")
        .conf("hot_standby", "on")
        .conf("restore_command", WAL_FETCH)
        .env(store.env())
        .start_restored(standby_data.clone());
    wait_streaming(&standby);
    let standby_env = remote_env(&standby);

    // Each delta after a checkpoint the standby has replayed: a standby's
    // backup starts at its last restartpoint.
    let mut deltas = Vec::new();
    for (round, fresh_rows) in [(1, 500), (2, 700)] {
        primary.pgbench(&["-n", "-t", "300", "-c", "2"]);
        primary.psql(&format!(
            "INSERT INTO fresh SELECT g FROM generate_series(1, {fresh_rows}) g"
        ));
        primary.psql("CHECKPOINT");
        wait_replayed(&primary, &standby);
        let out = push(&store, &standby_env, "5", &[]);
        let delta = name_of(&out);
        let base = deltas.last().unwrap_or(&full);
        assert!(
            out.stderr
                .contains(&format!("Remote delta backup from {base}")),
            "round {round}: {}",
            out.dump()
        );
        deltas.push(delta);
    }
    let last = deltas.last().unwrap().clone();
    let sent = sentinel(&store, &last);
    assert_eq!(sent["DeltaFrom"], deltas[0].as_str());
    assert_eq!(sent["DeltaFullName"], full.as_str());
    assert_eq!(
        sent["DataDir"],
        standby_data.canonicalize().unwrap().display().to_string(),
        "the standby was backed up: {sent}"
    );
    let accounts = primary.psql(
        "SELECT 'base/' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' \
         || pg_relation_filenode('pgbench_accounts')",
    );
    let inc = incremented(&store, &last);
    assert!(
        inc.iter().any(|n| n.trim_start_matches('/') == accounts),
        "pgbench_accounts ({accounts}) is an increment: {inc:?}"
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");

    std::thread::sleep(Duration::from_millis(1100));
    let (expected, at) = target(&primary);
    after_target(&primary);
    standby.stop();
    primary.stop();
    let dirs = TempDir::new("rdelta-standby-restore");
    dirs.chown_postgres();
    restore_by_walden(&store, &last, &at, &dirs.join("data"), &expected);
}
