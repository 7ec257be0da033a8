//! Remote `backup-push` (no data directory: BASE_BACKUP over a replication
//! connection) against real PostgreSQL: over the unix socket with a
//! tablespace, user data and --permanent; over TCP with SCRAM, and with
//! PGSSLMODE=verify-full against a CA and server certificate made here,
//! through a host list whose first host is down, and with a client
//! certificate; PostgreSQL 13–18 (the older BASE_BACKUP protocol before
//! 15). Every backup is restored with backup-fetch and a recovery target,
//! PostgreSQL started on the copy and its rows compared; WAL-G 3.0.9
//! restores one too when `WALDEN_WALG_BIN` names it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::scenario::{
    archiving_cluster, assert_tablespace_at, backup_names, fetch_for_postgres, moved_restore,
    recovering_to_time, remote_env, restore_and_compare, restore_spec, tablespace, MovedRestore,
    Restored,
};
use crate::harness::tmp::{chown_postgres, free_port};
use crate::harness::{certs, walg_bin};
use crate::harness::{Output, PgCluster, TempDir, Walden};
use crate::store::Store;

/// The rows a remote-backup test compares (pgbench's and the notes
/// table's).
pub(crate) const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) || '/' || \
    (SELECT count(*) || '/' || sum(length(note)) FROM notes) FROM pgbench_accounts";

const BOB_PW: &str = "remote-bob-pw";

fn push(store: &Store, env: &[(String, String)], args: &[&str]) -> Output {
    store
        .walden()
        .envs(env.to_vec())
        .arg("backup-push")
        .args(args)
        .timeout(Duration::from_secs(300))
        .run()
}

fn json(store: &Store, key: &str) -> Value {
    serde_json::from_slice(&fs::read(store.object_file(key)).unwrap()).unwrap()
}

/// The members of a stored tar partition.
fn members(store: &Store, key: &str) -> Vec<String> {
    let out = store
        .walden()
        .args(["st", "cat", "--decompress", key])
        .run();
    out.assert_ok();
    let scratch = TempDir::new("remote-tar");
    fs::write(scratch.join("t.tar"), &out.stdout).unwrap();
    let list = Command::new("tar")
        .arg("-tf")
        .arg(scratch.join("t.tar"))
        .output()
        .unwrap();
    assert!(list.status.success(), "{key} is not a tar");
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Writes, then the moment PITR is to stop at, then more writes that the
/// restore must not show (they change the rows); all WAL archived.
/// Returns the rows at the target and the target time.
pub(crate) fn writes_and_target(pg: &PgCluster) -> (String, String) {
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("INSERT INTO notes SELECT g, 'before target' FROM generate_series(1, 10) g");
    let expected = pg.psql(ROWS);
    let target = pg.psql("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("INSERT INTO notes SELECT g, 'after target' FROM generate_series(1, 10) g");
    let after = pg.psql(ROWS);
    assert_ne!(
        after, expected,
        "the writes after the target changed the rows"
    );
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    (expected, target)
}

/// backup-fetch NAME with a time target (PostgreSQL runs the
/// restore_command it writes, so the binary must be one postgres can
/// execute), then PostgreSQL on the copy: its rows are `expected`.
pub(crate) fn restore_at(
    store: &Store,
    name: &str,
    target: &[&str],
    extra: &[&str],
    dest: &Path,
    expected: &str,
) -> Restored {
    let args: Vec<&str> = target.iter().chain(extra).copied().collect();
    let bin_dir = fetch_for_postgres(store.env(), dest, name, &args);
    // A moved tablespace beside DEST is the server's too.
    if let Some(parent) = dest.parent() {
        chown_postgres(parent);
    }
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .env(store.env());
    Restored {
        pg: restore_and_compare(restored, dest.to_path_buf(), ROWS, expected),
        bin_dir,
    }
}

/// pgbench's tables and a notes table (in tablespace `tablespace` if
/// given): what ROWS reads.
pub(crate) fn notes_and_bench(pg: &PgCluster, tablespace: Option<&str>) {
    match tablespace {
        Some(ts) => {
            pg.pgbench(&["-i", "-q", "-s", "1", &format!("--tablespace={ts}")]);
            pg.psql(&format!(
                "CREATE TABLE notes TABLESPACE {ts} AS \
                 SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g"
            ));
        }
        None => {
            pg.pgbench(&["-i", "-q", "-s", "1"]);
            pg.psql(
                "CREATE TABLE notes AS \
                 SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g",
            );
        }
    }
}

/// Over the socket, under pgbench load, with a tablespace: WAL-G's remote
/// layout (PostgreSQL's member names, tablespace members under
/// `pg_tblspc/<oid>/`, pg_control.tar, `Files` only, `Spec` always), user
/// data and --permanent; restored to a moved tablespace at a time target
/// by walden, and by WAL-G when it is there.
#[test]
fn remote_backup_push_over_the_socket_with_a_tablespace() {
    let walg = walg_bin("WAL-G's restore of a remote backup");
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env()).start();
    let (_ts_dir, loc, oid) = tablespace(&pg, "remote-ts");
    notes_and_bench(&pg, Some("ts1"));

    // A small threshold: the data directory's archive is split in parts.
    let env: Vec<(String, String)> = remote_env(&pg)
        .into_iter()
        .chain([("WALG_TAR_SIZE_THRESHOLD".to_string(), "4000000".to_string())])
        .collect();
    std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "3", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(300));
        let out = push(
            &store,
            &env,
            &["--permanent", "--add-user-data", "{\"origin\":\"remote\"}"],
        );
        out.assert_ok();
        assert!(
            out.stderr.contains("Running remote backup")
                && out.stderr.contains("Adding tablespace"),
            "{}",
            out.dump()
        );
        load.join().unwrap();
    });
    let (expected, target) = writes_and_target(&pg);

    let names = backup_names(store.walden());
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    let sentinel = json(
        &store,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
    );
    let data_dir = pg.data_dir().canonicalize().unwrap();
    assert_eq!(sentinel["IsPermanent"], Value::Bool(true), "{sentinel}");
    assert_eq!(sentinel["UserData"]["origin"], "remote", "{sentinel}");
    assert_eq!(sentinel["PgVersion"].as_i64().unwrap() / 10000, 15);
    assert_eq!(sentinel["DataDir"], data_dir.display().to_string());
    assert_eq!(
        sentinel["Spec"][&oid]["loc"],
        loc.display().to_string(),
        "{sentinel}"
    );
    assert_eq!(sentinel["Spec"]["tablespaces"][0], oid.as_str());
    assert!(sentinel.get("DataCatalogSize").is_none(), "{sentinel}");
    assert_eq!(
        sentinel["SystemIdentifier"].as_u64().unwrap().to_string(),
        pg.psql("SELECT system_identifier FROM pg_control_system()")
    );
    let meta = json(&store, &format!("basebackups_005/{name}/metadata.json"));
    assert_eq!(meta["is_permanent"], Value::Bool(true));
    let fm = json(
        &store,
        &format!("basebackups_005/{name}/files_metadata.json"),
    );
    assert!(fm.get("TarFileSets").is_none(), "WAL-G lists no sets: {fm}");
    let files = fm["Files"].as_object().unwrap();
    for member in [
        "PG_VERSION",
        "backup_label",
        "tablespace_map",
        "global/pg_control",
    ] {
        assert!(files.contains_key(member), "{member} in {fm}");
    }
    assert!(files.keys().all(|k| !k.starts_with('/')), "{fm}");
    assert!(files
        .keys()
        .any(|k| k.starts_with(&format!("pg_tblspc/{oid}/PG_15_"))));

    let listing = store
        .walden()
        .args([
            "st",
            "ls",
            &format!("basebackups_005/{name}/tar_partitions/"),
        ])
        .run()
        .stdout_str();
    let parts: Vec<&str> = listing
        .split_whitespace()
        .filter(|w| w.contains("part_"))
        .collect();
    assert!(parts.len() >= 3, "split by the threshold: {listing}");
    assert!(listing.contains("pg_control.tar.lz4"), "{listing}");
    assert!(!listing.contains("backup_label.tar"), "{listing}");
    let control = members(
        &store,
        &format!("basebackups_005/{name}/tar_partitions/pg_control.tar.lz4"),
    );
    assert_eq!(control, ["global/pg_control"]);
    // The tablespace's archive comes first (part_001), as WAL-G packs it.
    let first = members(
        &store,
        &format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4"),
    );
    assert!(
        first
            .iter()
            .all(|m| m.starts_with(&format!("pg_tblspc/{oid}/"))),
        "{first:?}"
    );
    pg.stop();

    // Restored with the tablespace moved (the original is the live one).
    let MovedRestore {
        dirs,
        data,
        new_loc,
        spec_file,
    } = moved_restore("remote-restore", &oid);
    let spec_arg = spec_file.display().to_string();
    let restored = restore_at(
        &store,
        "LATEST",
        &["--recovery-target-time", &target],
        &["--restore-spec", &spec_arg],
        &data,
        &expected,
    );
    assert_tablespace_at(&restored, &new_loc);
    drop(restored);

    if let Some(walg) = walg {
        let dest = dirs.join("walg");
        let walg_loc = dirs.join("ts-walg");
        fs::write(&spec_file, restore_spec(&oid, &walg_loc, &dest)).unwrap();
        Walden::program(&walg)
            .envs(store.env())
            .arg("backup-fetch")
            .arg(&dest)
            .arg(name)
            .arg("--restore-spec")
            .arg(&spec_file)
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
        chown_postgres(&walg_loc);
        let restored = recovering_to_time(&dest, store.env(), &target);
        restore_and_compare(restored, dest, ROWS, &expected);
    }
}

/// A CA and a server certificate for "localhost" signed by it (a SAN:
/// webpki verifies only such), and a client certificate for the role
/// carol (a v3 one: rustls refuses v1 ones).
fn test_ca(dir: &Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    certs::ca(dir, "ca");
    fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    certs::signed(dir, "ca", "server", "localhost", Some(&dir.join("ext.cnf")));
    fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    certs::signed(dir, "ca", "carol", "carol", Some(&dir.join("client.cnf")));
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

/// Over TCP: SCRAM without TLS, then PGSSLMODE=verify-full against a test
/// CA through `--pghost` whose first host is down, then a client
/// certificate (pg_hba `cert`) instead of a password; a replication role
/// without pg_read_all_settings gets a warning, not a failure. The TLS
/// backup is restored at a time target; the password appears nowhere.
#[test]
fn remote_backup_push_over_tcp_with_scram_and_verify_full() {
    if certs::openssl_missing() {
        return;
    }
    let certs = TempDir::new("remote-tls");
    let (ca, crt, key) = test_ca(certs.path());
    certs.chown_postgres();
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env())
        .hba("host replication bob 127.0.0.1/32 scram-sha-256")
        .hba("hostssl replication carol 127.0.0.1/32 cert")
        .conf("ssl", "on")
        .conf("ssl_cert_file", &format!("'{crt}'"))
        .conf("ssl_key_file", &format!("'{key}'"))
        .conf("ssl_ca_file", &format!("'{ca}'"))
        .conf("password_encryption", "'scram-sha-256'")
        .start();
    pg.psql(&format!(
        "CREATE ROLE bob LOGIN REPLICATION PASSWORD '{BOB_PW}'; \
         CREATE ROLE carol LOGIN REPLICATION"
    ));
    notes_and_bench(&pg, None);
    let port = pg.port().to_string();
    let tcp = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        [
            ("PGPORT", port.as_str()),
            ("PGUSER", "bob"),
            ("PGPASSWORD", BOB_PW),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };

    // SCRAM over plain TCP, nothing written meanwhile.
    let first_rows = pg.psql(ROWS);
    let out = push(
        &store,
        &tcp(&[("PGHOST", "127.0.0.1"), ("PGSSLMODE", "disable")]),
        &[],
    );
    out.assert_ok();
    assert!(out.stderr.contains("127.0.0.1:"), "{}", out.dump());
    assert!(
        out.stderr.contains("data_directory cannot be read"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains(BOB_PW));
    // A wrong password: refused, one clear error, nothing stored.
    let before = backup_names(store.walden());
    let out = store
        .walden()
        .envs(tcp(&[("PGHOST", "127.0.0.1"), ("PGSSLMODE", "disable")]))
        .env("PGPASSWORD", "wrong")
        .arg("backup-push")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("28P01"), "{}", out.dump());
    assert_eq!(backup_names(store.walden()), before);

    // verify-full through a host list: 127.0.0.1 on a dead port first,
    // then "localhost" (the name the certificate is for).
    pg.psql("GRANT pg_read_all_settings TO bob");
    pg.pgbench(&["-n", "-t", "100", "-c", "2"]);
    let dead = free_port().to_string();
    let ports = format!("{dead},{port}");
    let hosts = "127.0.0.1,localhost";
    let mut env = tcp(&[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)]);
    env.retain(|(k, _)| k != "PGPORT");
    env.push(("PGPORT".into(), ports));
    env.push(("WALG_LOG_LEVEL".into(), "DEVEL".into()));
    let out = push(&store, &env, &["--pghost", hosts]);
    out.assert_ok();
    assert!(
        out.stderr.contains(&format!("localhost:{port}")),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains(BOB_PW));
    let names = backup_names(store.walden());
    assert_eq!(names.len(), 2, "{names:?}");
    let sentinel = json(
        &store,
        &format!("basebackups_005/{}_backup_stop_sentinel.json", names[1]),
    );
    assert_eq!(
        sentinel["DataDir"],
        pg.data_dir().canonicalize().unwrap().display().to_string()
    );
    // A client certificate instead of a password (pg_hba "cert").
    let certs_dir = certs.path();
    let carol = |f: &str| certs_dir.join(f).display().to_string();
    let out = push(
        &store,
        &[
            ("PGHOST", "localhost"),
            ("PGPORT", port.as_str()),
            ("PGUSER", "carol"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", ca.as_str()),
            ("PGSSLCERT", carol("carol.crt").as_str()),
            ("PGSSLKEY", carol("carol.key").as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>(),
        &[],
    );
    out.assert_ok();
    assert_eq!(backup_names(store.walden()).len(), 3);

    // The certificate is for "localhost": 127.0.0.1 alone fails to verify.
    let mut env = tcp(&[
        ("PGHOST", "127.0.0.1"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", &ca),
    ]);
    env.push(("PGCONNECT_TIMEOUT".into(), "5".into()));
    let out = push(&store, &env, &[]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("TLS") || out.stderr.contains("pg_hba"),
        "{}",
        out.dump()
    );

    let (expected, target) = writes_and_target(&pg);
    pg.stop();
    let dirs = TempDir::new("remote-tcp-restore");
    dirs.chown_postgres();
    restore_at(
        &store,
        &names[1],
        &["--recovery-target-time", &target],
        &[],
        &dirs.join("data"),
        &expected,
    );
    // The backup whose sentinel records no data directory restores too.
    let first = json(
        &store,
        &format!("basebackups_005/{}_backup_stop_sentinel.json", names[0]),
    );
    assert_eq!(first["DataDir"], "", "{first}");
    restore_at(
        &store,
        &names[0],
        &["--recovery-target", "immediate"],
        &[],
        &dirs.join("data0"),
        &first_rows,
    );
}

/// Every other major: the older BASE_BACKUP syntax and one CopyOut per
/// archive on 13 and 14, the option list and one tagged CopyOut on 16,
/// 17 and 18; with a tablespace, restored at a time target and compared.
#[test]
fn remote_backup_push_on_every_major() {
    for major in [13, 14, 16, 17, 18] {
        remote_round_trip(major);
    }
}

fn remote_round_trip(major: u32) {
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env()).major(major).start();
    let (_ts_dir, _loc, oid) = tablespace(&pg, "remote-tsv");
    notes_and_bench(&pg, Some("ts1"));
    let env: Vec<(String, String)> = remote_env(&pg)
        .into_iter()
        .chain([("WALG_LOG_LEVEL".to_string(), "DEVEL".to_string())])
        .collect();
    let out = push(&store, &env, &[]);
    out.assert_ok();
    let command = if major < 15 {
        "BASE_BACKUP LABEL 'wal-g' FAST TABLESPACE_MAP NOVERIFY_CHECKSUMS"
    } else {
        "BASE_BACKUP (LABEL 'wal-g', CHECKPOINT 'fast', TABLESPACE_MAP, VERIFY_CHECKSUMS false)"
    };
    assert!(out.stderr.contains(command), "{major}: {}", out.dump());
    let (expected, target) = writes_and_target(&pg);
    pg.stop();
    let MovedRestore {
        dirs,
        data,
        new_loc: _,
        spec_file,
    } = moved_restore("remote-restorev", &oid);
    let spec_arg = spec_file.display().to_string();
    let _bin_dir = fetch_for_postgres(
        store.env(),
        &data,
        "LATEST",
        &[
            "--recovery-target-time",
            &target,
            "--restore-spec",
            &spec_arg,
        ],
    );
    chown_postgres(dirs.path());
    let restored = PgCluster::builder()
        .major(major)
        .conf("archive_mode", "off")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql(ROWS),
        expected,
        "PostgreSQL {major}\n{}",
        restored.log_tail()
    );
}
