//! Partial restore (`backup-fetch --restore-only`, spec §9.5) end to end:
//! backup-push records every database's relations in files_metadata.json
//! (`DatabasesByNames`, with each table's indexes and TOAST under it),
//! backup-fetch writes only what was named plus the system catalogs, and
//! the copy starts after replaying the archived WAL through walden, with
//! the named data equal to the primary's. With WAL-G (`WALDEN_WALG_BIN`)
//! the same walden backup is also restored partially by WAL-G, whose
//! reader then brings the table's index and TOAST too, and walden
//! restores a table of WAL-G's backup (TOAST found by name, indexes
//! rebuilt as walden's warning says).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::pg::PG_BIN;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

fn archiving_cluster(store: &Store) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        .env(store.env())
        .start()
}

/// psql on database `db` of `pg`: unaligned, tuples only, trimmed.
fn psql_in(pg: &PgCluster, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(format!("{PG_BIN}/psql"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", db])
        .args(["-c", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn sql(pg: &PgCluster, db: &str, text: &str) -> String {
    psql_in(pg, db, text).unwrap_or_else(|e| panic!("{db}: {text}\n{e}\n{}", pg.log_tail()))
}

/// The names of the backups in `store`, oldest first.
fn backups(store: &Store) -> Vec<String> {
    crate::harness::scenario::backup_names(store.walden())
}

fn files_metadata(store: &Store, name: &str) -> serde_json::Value {
    let key = format!("basebackups_005/{name}/files_metadata.json");
    serde_json::from_slice(&fs::read(store.object_file(&key)).unwrap()).unwrap()
}

/// Start a restored data directory with walden as restore_command and
/// wait until recovery has ended.
fn start_restored(store: &Store, data: PathBuf) -> PgCluster {
    fs::write(data.join("recovery.signal"), "").unwrap();
    let pg = PgCluster::builder()
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .env(store.env())
        .start_restored(data);
    pg.wait_for_promotion(Duration::from_secs(120));
    pg
}

fn leading_number(name: &str) -> u64 {
    name.split(['.', '_']).next().unwrap().parse().unwrap()
}

/// Relation files (names starting with a digit) in `dir`.
fn relation_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

const T_SUM: &str =
    "SELECT count(*) || '/' || sum(id) || '/' || md5(string_agg(v, ',' ORDER BY id)) FROM t";

#[test]
fn partial_restore_of_one_database() {
    let store = Store::fs();
    let mut pg = archiving_cluster(&store);
    for db in ["app", "other db"] {
        pg.psql(&format!("CREATE DATABASE \"{db}\""));
        sql(
            &pg,
            db,
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; \
             CREATE INDEX t_v ON t (v)",
        );
    }
    let other_oid = pg.psql("SELECT oid FROM pg_database WHERE datname = 'other db'");
    let app_oid = pg.psql("SELECT oid FROM pg_database WHERE datname = 'app'");
    let other_t = sql(&pg, "other db", "SELECT pg_relation_filepath('t')");
    // A tar per file (each is closed once it holds more than one byte):
    // the tars holding only relations of 'other db' are then known, and
    // the partial restore must not download them.
    store
        .walden()
        .envs(pg.env())
        .env("WALG_TAR_SIZE_THRESHOLD", "1")
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    // Replayed from the archive after the restore.
    sql(
        &pg,
        "app",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(20001, 25000) g; \
         DELETE FROM t WHERE id % 7 = 0",
    );
    let expected = sql(&pg, "app", T_SUM);
    // A second backup without database names.
    store
        .walden()
        .envs(pg.env())
        .env("WALG_DISABLE_PARTIAL_RESTORE", "true")
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    let names = backups(&store);
    assert_eq!(names.len(), 2, "{names:?}");
    let (with_names, without_names) = (&names[0], &names[1]);

    // WAL-G's layout; every database that takes connections is there,
    // and a table lists its index and TOAST relation under it.
    let meta = files_metadata(&store, with_names);
    let dbs = meta["DatabasesByNames"]
        .as_object()
        .expect("DatabasesByNames");
    for db in ["app", "other db", "postgres", "template1"] {
        assert!(dbs.contains_key(db), "{db} in {:?}", dbs.keys());
    }
    assert!(
        !dbs.contains_key("template0"),
        "template0 takes no connections"
    );
    assert_eq!(dbs["app"]["oid"].to_string(), app_oid);
    let tables = dbs["app"]["tables_new"].as_object().unwrap();
    assert!(
        tables["pg_catalog.pg_class"]["relfilenode"]
            .as_u64()
            .unwrap()
            > 0
    );
    let subs = tables["public.t"]["subtables"]
        .as_object()
        .expect("subtables of t");
    assert!(subs.contains_key("public.t_v"), "{subs:?}");
    assert!(
        subs.keys().any(|k| k.starts_with("pg_toast.pg_toast_")),
        "{subs:?}"
    );
    assert!(
        files_metadata(&store, without_names)
            .get("DatabasesByNames")
            .is_none(),
        "WALG_DISABLE_PARTIAL_RESTORE=true"
    );

    // A backup without names: a clear error, DEST untouched.
    let dir = TempDir::new("partial-db");
    let refused = dir.join("refused");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&refused)
        .arg(without_names)
        .args(["--restore-only", "app"])
        .run();
    out.assert_failed();
    assert!(
        out.stderr.contains("has none") && out.stderr.contains("restore it whole"),
        "{}",
        out.dump()
    );
    assert!(!refused.exists());
    // A name that matches no database.
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&refused)
        .arg(with_names)
        .args(["--restore-only", "app,nosuch"])
        .run();
    out.assert_failed();
    assert!(
        out.stderr.contains("'nosuch' names no database") && out.stderr.contains("other db"),
        "{}",
        out.dump()
    );
    assert!(!refused.exists());

    let data = dir.join("data");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg(with_names)
        .args(["--restore-only", "app"])
        .run();
    out.assert_ok();
    // Exactly the data tars holding nothing but relations of 'other db'
    // were left out (counted from TarFileSets).
    let other_prefix = format!("/base/{other_oid}/");
    let sets = meta["TarFileSets"].as_object().expect("TarFileSets");
    let data_tars = sets.keys().filter(|t| t.starts_with("part_")).count();
    let only_other = sets
        .iter()
        .filter(|(t, members)| {
            t.starts_with("part_")
                && members.as_array().unwrap().iter().all(|m| {
                    m.as_str()
                        .unwrap()
                        .strip_prefix(&other_prefix)
                        .and_then(|f| f.split(['.', '_']).next()?.parse::<u64>().ok())
                        .is_some_and(|n| n >= 16384)
                })
        })
        .count();
    assert!(
        only_other >= 2,
        "t and its index of 'other db' in tars of their own: {sets:?}"
    );
    let line = format!(
        "{} of the {data_tars} data tars of {with_names} hold files to restore; {only_other} not downloaded",
        data_tars - only_other
    );
    assert!(out.stderr.contains(&line), "{line}\n{}", out.dump());
    // The other database keeps its directory and system catalogs (as
    // WAL-G: every database's catalogs are restored) but none of its own
    // relations; app and the system databases are whole.
    let other_dir = data.join("base").join(&other_oid);
    assert!(other_dir.join("PG_VERSION").is_file());
    let catalogs = relation_files(&other_dir);
    assert!(
        catalogs.iter().any(|f| f == "1259"),
        "pg_class: {catalogs:?}"
    );
    let user: Vec<&String> = catalogs
        .iter()
        .filter(|f| leading_number(f) >= 16384)
        .collect();
    assert!(user.is_empty(), "user relations of 'other db': {user:?}");
    assert!(!data.join(&other_t).exists(), "{other_t}");
    assert!(relation_files(&data.join("base").join(&app_oid)).len() > 100);
    assert!(relation_files(&data.join("base/1")).len() > 100);
    assert!(relation_files(&data.join("base/5")).len() > 100);

    let restored = start_restored(&store, data);
    assert_eq!(
        sql(&restored, "app", T_SUM),
        expected,
        "{}",
        restored.log_tail()
    );
    let by_index = sql(
        &restored,
        "app",
        "SET enable_seqscan = off; SET enable_bitmapscan = off; \
         SELECT count(*) FROM t WHERE v >= md5('1') OR v < md5('1')",
    );
    assert_eq!(by_index, sql(&restored, "app", "SELECT count(*) FROM t"));
    // The database left out has its catalog but not its table; what the
    // README recommends for it works.
    let e = psql_in(&restored, "other db", "SELECT count(*) FROM t").unwrap_err();
    assert!(e.contains("could not open file"), "{e}");
    restored.psql("DROP DATABASE \"other db\"");
}

/// Rows of `big`: ids, a checksum of the TOASTed documents read in full.
const BIG_SUM: &str = "SELECT count(*) || '/' || sum(id) || '/' || sum(length(doc)) || '/' \
                       || md5(string_agg(md5(doc), ',' ORDER BY id)) FROM big";

#[test]
fn partial_restore_of_one_table_with_index_and_toast() {
    let store = Store::fs();
    let mut pg = archiving_cluster(&store);
    pg.psql("CREATE DATABASE app");
    pg.psql("CREATE DATABASE other");
    sql(
        &pg,
        "other",
        "CREATE TABLE o AS SELECT generate_series(1, 1000) AS id",
    );
    sql(
        &pg,
        "app",
        "CREATE EXTENSION amcheck; \
         CREATE TABLE big (id int PRIMARY KEY, doc text); \
         ALTER TABLE big ALTER doc SET STORAGE EXTERNAL; \
         INSERT INTO big SELECT g, repeat(md5(g::text), 100) FROM generate_series(1, 3000) g; \
         CREATE INDEX big_prefix ON big (left(doc, 12)); \
         CREATE TABLE skipped AS SELECT generate_series(1, 1000) AS id",
    );
    // The documents are stored out of line, in the TOAST relation.
    let toast_pages = sql(
        &pg,
        "app",
        "SELECT pg_relation_size(reltoastrelid) / 8192 FROM pg_class WHERE relname = 'big'",
    );
    assert!(toast_pages.parse::<u64>().unwrap() > 1000, "{toast_pages}");
    let skipped_file = sql(&pg, "app", "SELECT pg_relation_filepath('skipped')");
    let toast_file = sql(
        &pg,
        "app",
        "SELECT pg_relation_filepath(reltoastrelid) FROM pg_class WHERE relname = 'big'",
    );
    store
        .walden()
        .envs(pg.env())
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let name = backups(&store).pop().unwrap();
    // And one by WAL-G (whose names list no indexes), in its own WAL segment.
    let walg_bin = std::env::var_os("WALDEN_WALG_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let walg_backup = walg_bin.as_ref().map(|bin| {
        pg.switch_wal();
        Walden::program(bin)
            .envs(store.env())
            .envs(pg.env())
            .arg("backup-push")
            .arg(pg.data_dir())
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
        let newest = backups(&store).pop().unwrap();
        assert_ne!(newest, name);
        newest
    });
    // After the backup: changes to the heap, the index and TOAST, replayed.
    sql(
        &pg,
        "app",
        "UPDATE big SET doc = repeat(md5((id * 7)::text), 120) WHERE id % 10 = 0; \
         INSERT INTO big SELECT g, repeat(md5(g::text), 90) FROM generate_series(3001, 3500) g; \
         DELETE FROM big WHERE id % 13 = 0",
    );
    let expected = sql(&pg, "app", BIG_SUM);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    let dir = TempDir::new("partial-table");
    let refused = dir.join("refused");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&refused)
        .arg(&name)
        .args(["--restore-only", "app/nosuch"])
        .run();
    out.assert_failed();
    assert!(
        out.stderr.contains("'app/nosuch' names no table"),
        "{}",
        out.dump()
    );
    assert!(!refused.exists());

    let data = dir.join("data");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg(&name)
        .args(["--restore-only", "app/public.big"])
        .run()
        .assert_ok();
    assert!(
        data.join(&toast_file).is_file(),
        "TOAST of big: {toast_file}"
    );
    assert!(!data.join(&skipped_file).exists(), "{skipped_file}");

    let restored = start_restored(&store, data.clone());
    check_big(&restored, &expected);
    // The table left out has no file.
    let e = psql_in(&restored, "app", "SELECT count(*) FROM skipped").unwrap_err();
    assert!(e.contains("could not open file"), "{e}");

    // WAL-G reads walden's names: its partial restore of the same table
    // brings the index and TOAST that walden lists under it.
    let (Some(bin), Some(walg_backup)) = (walg_bin, walg_backup) else {
        eprintln!(
            "WALDEN_WALG_BIN not set: skipping the partial restores between WAL-G and walden"
        );
        return;
    };
    drop(restored);
    let walg_data = dir.join("walg");
    Walden::program(&bin)
        .envs(store.env())
        .arg("backup-fetch")
        .arg(&walg_data)
        .arg(&name)
        .args(["--restore-only", "app/big"])
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    assert!(
        walg_data.join(&toast_file).is_file(),
        "WAL-G restored the TOAST"
    );
    assert!(!walg_data.join(&skipped_file).exists());
    let walg_restored = start_restored(&store, walg_data);
    check_big(&walg_restored, &expected);
    drop(walg_restored);

    // walden restores WAL-G's backup: TOAST found by its name, and a
    // warning for the indexes, which WAL-G's names do not list.
    let from_walg = dir.join("from-walg");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&from_walg)
        .arg(&walg_backup)
        .args(["--restore-only", "app/big"])
        .run();
    out.assert_ok();
    assert!(
        out.stderr.contains("REINDEX TABLE public.big"),
        "{}",
        out.dump()
    );
    assert!(from_walg.join(&toast_file).is_file());
    assert!(!from_walg.join(&skipped_file).exists());
    let restored = start_restored(&store, from_walg);
    sql(&restored, "app", "REINDEX TABLE big");
    check_big(&restored, &expected);
}

/// `big` reads back equal to the primary's, through an index scan too,
/// and its indexes agree with the heap (amcheck).
fn check_big(pg: &PgCluster, expected: &str) {
    assert_eq!(sql(pg, "app", BIG_SUM), expected, "{}", pg.log_tail());
    let forced = "SET enable_seqscan = off; SET enable_bitmapscan = off; ";
    let plan = sql(
        pg,
        "app",
        &format!("{forced} EXPLAIN SELECT sum(length(doc)) FROM big WHERE id BETWEEN 100 AND 2000"),
    );
    assert!(plan.contains("Index Scan using big_pkey"), "{plan}");
    let by_index = sql(
        pg,
        "app",
        &format!(
            "{forced} SELECT count(*) || '/' || sum(length(doc)) || '/' || md5(string_agg(md5(doc), ',' ORDER BY id)) \
             FROM big WHERE id BETWEEN 100 AND 2000"
        ),
    );
    let by_scan = sql(
        pg,
        "app",
        "SET enable_indexscan = off; SET enable_bitmapscan = off; \
         SELECT count(*) || '/' || sum(length(doc)) || '/' || md5(string_agg(md5(doc), ',' ORDER BY id)) \
         FROM big WHERE id BETWEEN 100 AND 2000",
    );
    assert_eq!(by_index, by_scan);
    for index in ["big_pkey", "big_prefix"] {
        sql(
            pg,
            "app",
            &format!("SELECT bt_index_check('{index}', true)"),
        );
    }
    let toast_index = sql(
        pg,
        "app",
        "SELECT i.indexrelid::regclass FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid \
         WHERE c.relname = 'big'",
    );
    sql(
        pg,
        "app",
        &format!("SELECT bt_index_check('{toast_index}', true)"),
    );
}

/// The `Unpacking <kind> backup <name>: N of its M data tars` line of a
/// chain restore: (N, M).
fn unpacked(stderr: &str, name: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains("Unpacking") && l.contains(&format!(" {name}: ")))
        .unwrap_or_else(|| panic!("no Unpacking line for {name}:\n{stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "of").unwrap();
    (
        words[at - 1].parse().unwrap(),
        words[at + 2].parse().unwrap(),
    )
}

#[test]
fn partial_restore_of_a_delta_chain_leaves_out_tars_of_every_link() {
    let store = Store::fs();
    let mut pg = archiving_cluster(&store);
    for db in ["app", "other db"] {
        pg.psql(&format!("CREATE DATABASE \"{db}\""));
        sql(
            &pg,
            db,
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; \
             CREATE INDEX t_v ON t (v)",
        );
    }
    let other_t = sql(&pg, "other db", "SELECT pg_relation_filepath('t')");
    // A tar per file, so that some hold only relations of 'other db'.
    let push = |pg: &PgCluster| {
        store
            .walden()
            .envs(pg.env())
            .env("WALG_TAR_SIZE_THRESHOLD", "1")
            .env("WALG_DELTA_MAX_STEPS", "3")
            .arg("backup-push")
            .timeout(Duration::from_secs(300))
            .run()
            .assert_ok();
    };
    push(&pg);
    for db in ["app", "other db"] {
        sql(&pg, db, "UPDATE t SET v = md5(v) WHERE id % 10 = 0");
    }
    push(&pg);
    sql(
        &pg,
        "app",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(20001, 21000) g",
    );
    let expected = sql(&pg, "app", T_SUM);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let names = backups(&store);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[1].contains("_D_"), "{names:?}");

    let dir = TempDir::new("partial-chain");
    let data = dir.join("data");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg(&names[1])
        .args(["--restore-only", "app"])
        .run();
    out.assert_ok();
    for name in &names {
        let (fetched, all) = unpacked(&out.stderr, name);
        assert!(
            fetched < all,
            "{name}: {fetched} of {all} tars fetched\n{}",
            out.dump()
        );
    }
    assert!(!data.join(&other_t).exists(), "{other_t}");
    let restored = start_restored(&store, data);
    assert_eq!(
        sql(&restored, "app", T_SUM),
        expected,
        "{}",
        restored.log_tail()
    );
}
