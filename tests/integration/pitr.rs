//! Point-in-time recovery in one command: backup-fetch with a recovery
//! target writes recovery.signal and postgresql.auto.conf, and starting
//! PostgreSQL on DEST is the whole restore. Each kind of target is proven
//! end to end (rows compared with the ones noted at the target), LATEST
//! picks the newest backup that finished before the target, --standby
//! stays in recovery, and bad input leaves DEST untouched.

use std::fs;
use std::path::Path;
use std::time::Duration;

pub(crate) use crate::harness::scenario::amcheck;
use crate::harness::scenario::{archiving_cluster, backup_names, restore_and_compare};
use crate::harness::{walden_bin_for_postgres, Output, PgCluster, TempDir, Walden};
use crate::store::Store;

/// The state a restore must reproduce: every account balance, in order,
/// and the history's length.
const ROWS: &str = "SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) \
                    || '/' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";

/// backup-fetch as the postgres user will run the restore_command it
/// writes: the binary must be one postgres can execute.
fn fetch(bin: &Path, env: &[(String, String)], args: &[&str], dest: &Path) -> Output {
    Walden::program(bin)
        .envs(env.to_vec())
        .arg("backup-fetch")
        .arg(dest)
        .args(args)
        .timeout(Duration::from_secs(300))
        .run()
}

fn backup_push(pg: &PgCluster, walden: Walden) {
    walden
        .envs(pg.env())
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
}

fn auto_conf(dest: &Path) -> String {
    fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap()
}

/// Filesystem storage through a config file: the restored server gets no
/// storage environment at all, so its restore_command works only through
/// the `--config FILE` walden wrote. Two backups; targets by name (with
/// the older backup's name), by LSN (LATEST must pick the older backup),
/// immediate, and --standby.
#[test]
fn pitr_fs_name_lsn_immediate_standby() {
    let store = Store::fs();
    let conf_dir = TempDir::new("pitr-conf");
    let config = conf_dir.join("walg.json");
    let prefix = store.env()[0].1.clone();
    fs::write(
        &config,
        format!(
            r#"{{"WALG_FILE_PREFIX": "{prefix}", "WALG_COMPRESSION_METHOD": "zstd",
                "WALG_TAR_SIZE_THRESHOLD": "1048576", "WALG_DOWNLOAD_CONCURRENCY": "4"}}"#
        ),
    )
    .unwrap();
    conf_dir.chown_postgres();
    let config_arg = config.display().to_string();
    let walden = || Walden::new().args(["--config", &config_arg]);

    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf(
            "archive_command",
            &format!("'{{walden}} --config {config_arg} wal-push %p'"),
        )
        .start();
    pg.pgbench_init(4);
    std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "5", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        backup_push(&pg, walden());
        load.join().unwrap();
    });
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let point_lsn = pg.psql("SELECT pg_create_restore_point('before_more')");
    let at_point = pg.psql(ROWS);
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'before the second backup'::text AS note");
    backup_push(&pg, walden());
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("CREATE TABLE marker2 AS SELECT 'after the second backup'::text AS note");
    let at_end = pg.psql(ROWS);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let names = backup_names(walden());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        fs::read_dir(store.object_file(&format!("basebackups_005/{}/tar_partitions", names[0])))
            .unwrap()
            .count()
            > 4,
        "many data tars to extract in parallel"
    );

    let scratch = TempDir::new("pitr-fs");
    scratch.chown_postgres();
    let bin = walden_bin_for_postgres(scratch.path());
    let conf_env = vec![("WALG_CONFIG_PATH".to_string(), config_arg.clone())];
    let start = || PgCluster::builder().conf("archive_mode", "off");

    // By name: the restore point lies between the two backups, so the
    // older one is named.
    let dest = scratch.join("by-name");
    let out = fetch(
        &bin,
        &conf_env,
        &[&names[0], "--recovery-target-name", "before_more"],
        &dest,
    );
    out.assert_ok();
    let conf = auto_conf(&dest);
    assert!(
        conf.contains(&format!(" --config {config_arg} wal-fetch %f %p'")),
        "{conf}"
    );
    assert!(
        conf.contains("recovery_target_name = 'before_more'"),
        "{conf}"
    );
    assert!(
        conf.contains("recovery_target_action = 'promote'"),
        "{conf}"
    );
    assert!(dest.join("recovery.signal").is_file());
    let restored = restore_and_compare(start(), dest, ROWS, &at_point);
    assert!(restored.try_psql("SELECT 1 FROM marker").is_err());
    amcheck(&restored);
    drop(restored);

    // By LSN, LATEST: the newest backup that finished at or before it is
    // the older one (the newer one would not be consistent by then).
    let dest = scratch.join("by-lsn");
    let out = fetch(
        &bin,
        &conf_env,
        &["LATEST", "--recovery-target-lsn", &point_lsn],
        &dest,
    );
    out.assert_ok();
    assert!(
        out.stderr.contains(&format!(
            "Backup {} is the newest that finished before the recovery target",
            names[0]
        )),
        "{}",
        out.dump()
    );
    let restored = restore_and_compare(start(), dest, ROWS, &at_point);
    drop(restored);

    // Immediate: the newest backup, as soon as it is consistent.
    let dest = scratch.join("immediate");
    fetch(
        &bin,
        &conf_env,
        &["LATEST", "--recovery-target", "immediate"],
        &dest,
    )
    .assert_ok();
    assert!(auto_conf(&dest).contains("recovery_target = 'immediate'"));
    let restored = start().start_restored(dest);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql("SELECT note FROM marker"),
        "before the second backup"
    );
    assert!(restored.try_psql("SELECT 1 FROM marker2").is_err());
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "400000"
    );
    drop(restored);

    // Standby: replays everything archived and stays in recovery.
    let dest = scratch.join("standby");
    fetch(&bin, &conf_env, &["LATEST", "--standby"], &dest).assert_ok();
    assert!(dest.join("standby.signal").is_file());
    assert!(!dest.join("recovery.signal").exists());
    assert!(!auto_conf(&dest).contains("recovery_target_action"));
    let restored = start().start_restored(dest);
    restored.wait_for_sql(
        "SELECT count(*) FROM pg_class WHERE relname = 'marker2'",
        "1",
        Duration::from_secs(120),
    );
    restored.wait_for_sql(ROWS, &at_end, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "t");
}

/// S3 with its keys in the environment: nothing secret is written to
/// postgresql.auto.conf, the log names what the server's environment must
/// provide, and a time target with LATEST picks the backup that finished
/// before it although a newer one exists.
#[test]
fn pitr_s3_time() {
    let store = Store::s3();
    let mut pg = archiving_cluster(store.env()).start();
    pg.pgbench_init(2);
    std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "4", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        backup_push(&pg, store.walden());
        load.join().unwrap();
    });
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let noted = pg.psql(ROWS);
    // Commits before this instant are in, later ones are not.
    let target = pg.psql("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    backup_push(&pg, store.walden());
    pg.pgbench(&["-n", "-t", "100", "-c", "2"]);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let names = backup_names(store.walden());
    assert_eq!(names.len(), 2, "{names:?}");

    let scratch = TempDir::new("pitr-s3");
    scratch.chown_postgres();
    let bin = walden_bin_for_postgres(scratch.path());
    let dest = scratch.join("by-time");
    let out = fetch(
        &bin,
        &store.env(),
        &["LATEST", "--recovery-target-time", &target],
        &dest,
    );
    out.assert_ok();
    assert!(
        out.stderr.contains(&format!(
            "Backup {} is the newest that finished before the recovery target",
            names[0]
        )),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("AWS_SECRET_ACCESS_KEY") && out.stderr.contains("WALG_S3_PREFIX"),
        "the log names the settings the server must be given: {}",
        out.dump()
    );
    let conf = auto_conf(&dest);
    for secret in [
        crate::harness::s3::SECRET_KEY,
        crate::harness::s3::ACCESS_KEY,
    ] {
        assert!(
            !conf.contains(secret),
            "a secret in postgresql.auto.conf:\n{conf}"
        );
    }
    assert!(
        !conf.contains("--config"),
        "no config file was used: {conf}"
    );
    assert!(conf.contains("recovery_target_time = '"), "{conf}");
    assert!(!out.stderr.contains(crate::harness::s3::SECRET_KEY));
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .env(store.env());
    let restored = restore_and_compare(restored, dest, ROWS, &noted);
    amcheck(&restored);
}

/// The retention window as a promise: after `delete retain --window`, a
/// moment just inside the window still restores. Three backups; the window
/// ends between the second backup's finish and a noted moment after it, so
/// the first backup (and its WAL) goes, and the noted moment restores from
/// the second with the WAL kept after it.
#[test]
fn pitr_to_a_moment_just_inside_the_retention_window() {
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env()).start();
    pg.pgbench_init(2);
    backup_push(&pg, store.walden());
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    backup_push(&pg, store.walden());
    // The window's edge falls in this pause: after the second backup
    // finished, before the noted moment.
    std::thread::sleep(Duration::from_secs(3));
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let noted = pg.psql(ROWS);
    let target = pg.psql("SELECT clock_timestamp()::text");
    let noted_at = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1100));
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    backup_push(&pg, store.walden());
    pg.pgbench(&["-n", "-t", "100", "-c", "2"]);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let names = backup_names(store.walden());
    assert_eq!(names.len(), 3, "{names:?}");

    // now - window lies 2-3 s before the noted moment.
    let window = format!("{}s", noted_at.elapsed().as_secs() + 3);
    let out = store
        .walden()
        .args(["delete", "retain", "--window", &window, "--confirm"])
        .run();
    out.assert_ok();
    assert_eq!(
        backup_names(store.walden()),
        names[1..].to_vec(),
        "{}",
        out.dump()
    );
    let wal = store.walden().args(["st", "ls", "wal_005/"]).run();
    wal.assert_ok();
    assert!(
        !wal.stdout_str().contains("000000010000000000000001"),
        "WAL older than the kept backups goes: {}",
        wal.stdout_str()
    );

    let scratch = TempDir::new("pitr-window");
    scratch.chown_postgres();
    let bin = walden_bin_for_postgres(scratch.path());
    let dest = scratch.join("inside");
    let out = fetch(
        &bin,
        &store.env(),
        &["LATEST", "--recovery-target-time", &target],
        &dest,
    );
    out.assert_ok();
    assert!(
        out.stderr.contains(&names[1]),
        "the kept backup before the moment is used: {}",
        out.dump()
    );
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .env(store.env());
    let _restored = restore_and_compare(restored, dest, ROWS, &noted);
}

/// A tar holding `entries` (name, contents), as plain bytes.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A finished-looking backup: a few data tars, backup_label and
/// pg_control tars (pg_control holds `tag`), and its sentinel.
fn plant(store: &Store, scratch: &Path, name: &str, sentinel: &str, tag: &str, parts: usize) {
    let prefix = format!("basebackups_005/{name}/tar_partitions");
    for i in 1..=parts {
        store.put_raw(
            scratch,
            &format!("{prefix}/part_{i:03}.tar"),
            &tar_of(&[(&format!("base/1/{i}"), tag.as_bytes())]),
        );
    }
    store.put_raw(
        scratch,
        &format!("{prefix}/part_{:03}.tar", parts + 1),
        &tar_of(&[("postgresql.auto.conf", b"work_mem = '8MB'\n")]),
    );
    store.put_raw(
        scratch,
        &format!("{prefix}/backup_label.tar"),
        &tar_of(&[("backup_label", b"label")]),
    );
    store.put_raw(
        scratch,
        &format!("{prefix}/pg_control.tar"),
        &tar_of(&[("global/pg_control", tag.as_bytes())]),
    );
    store.put_raw(
        scratch,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        sentinel.as_bytes(),
    );
}

/// Bad targets and user data, on planted backups (no server needed):
/// each a clear error with DEST not created; and what a good request
/// writes, in the order promised.
#[test]
fn pitr_refuses_bad_targets() {
    let store = Store::fs();
    let scratch = TempDir::new("pitr-bad");
    let none = vec![("WALG_COMPRESSION_METHOD".to_string(), "none".to_string())];
    let env: Vec<(String, String)> = store.env().into_iter().chain(none).collect();
    let a = "base_000000010000000000000002";
    let b = "base_000000010000000000000009";
    plant(
        &store,
        scratch.path(),
        a,
        r#"{"LSN":33554472,"PgVersion":150000,"FinishLSN":33554600,"UserData":{"k":1},"Version":2,
            "StartTime":"2026-01-01T10:00:00.000000Z","FinishTime":"2026-01-01T10:05:00.000000Z"}"#,
        "A",
        6,
    );
    plant(
        &store,
        scratch.path(),
        b,
        r#"{"LSN":150994984,"PgVersion":150000,"FinishLSN":150995200,"UserData":{"k":2},"Version":2,
            "StartTime":"2026-01-02T10:00:00.000000Z","FinishTime":"2026-01-02T10:05:00.000000Z"}"#,
        "B",
        6,
    );
    let bin = crate::harness::walden_bin();
    let mut n = 0;
    let mut refused = |args: &[&str], wanted: &str| {
        n += 1;
        let dest = scratch.join(format!("d{n}"));
        let out = fetch(&bin, &env, args, &dest);
        out.assert_code(1);
        assert!(out.stderr.contains(wanted), "{args:?}: {}", out.dump());
        assert!(!dest.exists(), "{args:?}: DEST was created");
    };
    refused(
        &["LATEST", "--recovery-target-time", "yesterday"],
        "--recovery-target-time 'yesterday' is invalid",
    );
    refused(
        &["LATEST", "--recovery-target-time", "2026-01-02 12:00:00"],
        "no time zone",
    );
    refused(&["LATEST", "--recovery-target-lsn", "12345"], "is invalid");
    refused(
        &[
            "LATEST",
            "--recovery-target-lsn",
            "0/1",
            "--recovery-target-name",
            "x",
        ],
        "give one recovery target",
    );
    refused(&["LATEST", "--recovery-target", "latest"], "'immediate'");
    refused(
        &["LATEST", "--recovery-target-time", "2025-12-31 00:00:00+00"],
        "none of the 2 backups",
    );
    refused(
        &["LATEST", "--recovery-target-lsn", "0/1"],
        "none of the 2 backups",
    );
    // A named backup that ends after the target.
    refused(
        &[b, "--recovery-target-time", "2026-01-02 10:04:00+00"],
        "not before the target time",
    );
    refused(&["--target-user-data", r#"{"k":3}"#], "no backup in");
    refused(&["--target-user-data", "{nope"], "not valid JSON");
    refused(&[a, "--target-user-data", r#"{"k":1}"#], "give DEST alone");

    // LATEST with a time between the two: the older one, with the
    // settings appended to what the backup had, pg_control last.
    let dest = scratch.join("between");
    let out = fetch(
        &bin,
        &env,
        &["LATEST", "--recovery-target-time", "2026-01-02 12:00:00+02"],
        &dest,
    );
    out.assert_ok();
    assert_eq!(fs::read(dest.join("global/pg_control")).unwrap(), b"A");
    assert_eq!(fs::read(dest.join("base/1/6")).unwrap(), b"A");
    let conf = auto_conf(&dest);
    assert!(conf.starts_with("work_mem = '8MB'\n"), "{conf}");
    assert!(
        conf.contains("recovery_target_time = '2026-01-02 10:00:00+00'"),
        "{conf}"
    );
    assert!(dest.join("recovery.signal").is_file());
    let exe = bin.display().to_string();
    assert!(
        conf.contains(&format!("restore_command = '{exe} wal-fetch %f %p'")),
        "{conf}"
    );

    // User data picks one; the same user data twice is ambiguous.
    let dest = scratch.join("user-data");
    fetch(&bin, &env, &["--target-user-data", r#"{"k":2.0}"#], &dest).assert_ok();
    assert_eq!(fs::read(dest.join("global/pg_control")).unwrap(), b"B");
    assert!(!dest.join("recovery.signal").exists());
    let dest = scratch.join("user-data-env");
    let out = Walden::program(&bin)
        .envs(env.clone())
        .env("WALG_FETCH_TARGET_USER_DATA", r#"{"k":1}"#)
        .arg("backup-fetch")
        .arg(&dest)
        .run();
    out.assert_ok();
    assert_eq!(fs::read(dest.join("global/pg_control")).unwrap(), b"A");
    let c = "base_00000001000000000000000C";
    plant(
        &store,
        scratch.path(),
        c,
        r#"{"LSN":201326632,"FinishLSN":201326800,"UserData":{"k":2}}"#,
        "C",
        1,
    );
    refused(&["--target-user-data", r#"{"k":2}"#], "several backups");

    // A damaged data tar among many, extracted in parallel: the restore
    // fails, and no pg_control, signal or settings are written.
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{a}/tar_partitions/part_003.tar"),
        b"not a tar at all, and not zeros",
    );
    let dest = scratch.join("damaged");
    let out = Walden::program(&bin)
        .envs(env.clone())
        .env("WALG_DOWNLOAD_CONCURRENCY", "3")
        .arg("backup-fetch")
        .arg(&dest)
        .args([a, "--recovery-target", "immediate"])
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("part_003.tar"), "{}", out.dump());
    assert!(
        out.stderr.contains("is incomplete; remove it"),
        "{}",
        out.dump()
    );
    for never in ["global/pg_control", "recovery.signal", "backup_label"] {
        assert!(
            !dest.join(never).exists(),
            "{never} written: {}",
            out.dump()
        );
    }
}
