//! Tablespaces end to end: pgbench's tables and one more live in a
//! tablespace outside PGDATA; backup-push under load stores them as WAL-G
//! does (members `/pg_tblspc/<oid>/...`, the sentinel's `Spec`);
//! backup-fetch refuses to restore over the live tablespace, then
//! restores it with `--restore-spec` to a new location; the copy starts
//! with its rows equal to the primary's.

use std::fs;
use std::time::Duration;

use crate::harness::scenario::{archiving_cluster, restore_spec, tablespace};
use crate::harness::tmp::chown_postgres;
use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) || '/' || \
    (SELECT count(*) || '/' || sum(length(note)) FROM notes) FROM pgbench_accounts";

#[test]
fn tablespace_backup_and_restore_spec() {
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env()).start();
    let (_ts_dir, loc, oid) = tablespace(&pg, "ts");
    pg.pgbench(&["-i", "-q", "-s", "1", "--tablespace=ts1"]);
    pg.psql(
        "CREATE TABLE notes TABLESPACE ts1 AS \
         SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g",
    );

    store.backup_push_under_load(&pg);
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("INSERT INTO notes SELECT g, 'after' FROM generate_series(1, 10) g");
    let expected = pg.psql(ROWS);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(60));

    // The sentinel records the tablespace byte for byte as WAL-G would.
    let listing = store
        .walden()
        .args(["st", "ls", "basebackups_005/"])
        .run()
        .stdout_str();
    let name = listing
        .split_whitespace()
        .find_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .unwrap_or_else(|| panic!("a sentinel in {listing}"))
        .to_string();
    let raw = fs::read_to_string(
        store.object_file(&format!("basebackups_005/{name}_backup_stop_sentinel.json")),
    )
    .unwrap();
    let data_dir = pg.data_dir().canonicalize().unwrap();
    let spec = format!(
        ",\"Spec\":{{\"{oid}\":{{\"loc\":\"{}\",\"link\":\"pg_tblspc/{oid}\"}},\"base_prefix\":\"{}\",\"tablespaces\":[\"{oid}\"]}},",
        loc.display(),
        data_dir.display()
    );
    assert!(raw.contains(&spec), "{raw}\nwanted {spec}");
    // In WAL-G's key order: right after DataCatalogSize.
    let before = raw.split(",\"Spec\":").next().unwrap();
    let catalog = before.rsplit(",\"DataCatalogSize\":").next().unwrap();
    assert!(catalog.bytes().all(|b| b.is_ascii_digit()), "{raw}");
    // Members are named through pg_tblspc, as WAL-G names them.
    let part = store
        .walden()
        .args([
            "st",
            "cat",
            "--decompress",
            &format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4"),
        ])
        .run();
    part.assert_ok();
    let scratch = TempDir::new("ts-tar");
    fs::write(scratch.join("t.tar"), &part.stdout).unwrap();
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(scratch.join("t.tar"))
        .output()
        .unwrap();
    let members = String::from_utf8_lossy(&list.stdout);
    assert!(
        members
            .lines()
            .any(|m| m.starts_with(&format!("/pg_tblspc/{oid}/PG_15_"))),
        "{members}"
    );
    assert!(!members.contains(&loc.display().to_string()), "{members}");

    // By default the tablespace goes back where it was: that is the live
    // one here, so the restore is refused and nothing is created.
    let refused = scratch.join("refused");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&refused)
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("not empty"), "{}", out.dump());
    assert!(!refused.exists());
    pg.stop();

    // A restore spec moves it, and no spec may point into DEST.
    let restored_dir = TempDir::new("ts-restored");
    let data = restored_dir.join("data");
    let new_loc = restored_dir.join("ts-new");
    let spec_file = scratch.join("spec.json");
    let write_spec =
        |loc: &std::path::Path| fs::write(&spec_file, restore_spec(&oid, loc, &data)).unwrap();
    write_spec(&data.join("inside"));
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .arg("--restore-spec")
        .arg(&spec_file)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("overlaps the destination"),
        "{}",
        out.dump()
    );
    write_spec(&new_loc);
    store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .arg("--restore-spec")
        .arg(&spec_file)
        .run()
        .assert_ok();
    assert_eq!(
        fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
        new_loc
    );
    assert!(
        !data.join("tablespace_map").exists(),
        "left out with a spec"
    );
    assert!(fs::read_dir(&new_loc).unwrap().next().is_some());
    assert!(
        fs::read_dir(&loc).unwrap().count() == 1,
        "the original tablespace is untouched"
    );
    chown_postgres(&new_loc);
    fs::write(data.join("recovery.signal"), "").unwrap();
    let restored = PgCluster::builder()
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
    crate::harness::scenario::assert_tablespace_at(&restored, &new_loc);
    assert_eq!(
        restored.psql(
            "SELECT count(*) FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace \
             WHERE t.spcname = 'ts1' AND c.relname IN ('notes', 'pgbench_accounts')"
        ),
        "2"
    );

    // Once the original location is empty, the default puts the
    // tablespace back there; the link walden made is what PostgreSQL
    // follows, not the backup's (unchecked) tablespace_map.
    drop(pg);
    fs::remove_dir_all(&loc).unwrap();
    fs::create_dir(&loc).unwrap();
    let again = scratch.join("again");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&again)
        .arg("LATEST")
        .run()
        .assert_ok();
    assert_eq!(
        fs::read_link(again.join("pg_tblspc").join(&oid)).unwrap(),
        loc
    );
    assert!(!again.join("tablespace_map").exists());
    let version_dirs: Vec<_> = fs::read_dir(&loc).unwrap().flatten().collect();
    assert_eq!(version_dirs.len(), 1);
    assert!(version_dirs[0]
        .file_name()
        .to_string_lossy()
        .starts_with("PG_15_"));
}
