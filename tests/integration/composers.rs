//! Tar composers of backup-push (issue 14 item 5): `--database-composer`
//! keeps each database's files in tars of their own, `--rating-composer`
//! (`WALG_USE_RATING_COMPOSER`) groups files by their relation's update
//! count and records it as `UpdatesCount`. Each backup's layout is read
//! from its files_metadata.json `TarFileSets` (written from what the
//! builders put into each tar, and checked against the stored tars), then
//! it is restored by walden and, when `WALDEN_WALG_BIN` names it, by WAL-G
//! 3.0.9; PostgreSQL is started on every copy and every table compared.
//! `--copy-composer` copies the previous full backup's unchanged tars
//! (server-side on S3, through walden on the filesystem) and packs the
//! rest. Composers with `--without-files-metadata` are refused before
//! anything is uploaded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::harness::scenario::{
    archiving_cluster, pushed_backup_name, recovering_through_walden, stored_json,
};
use crate::harness::walg_bin;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

/// Every table of the two databases: name and a checksum of its rows.
fn state(pg: &PgCluster) -> String {
    let mut out = String::new();
    for db in ["postgres", "other"] {
        let tables = pg.psql_in(
            db,
            "SELECT coalesce(string_agg(c.relname || '=' || (xpath('/row/x/text()', query_to_xml(\
               format('SELECT count(*) || '':'' || coalesce(md5(string_agg(t::text, ''|'' ORDER BY t::text)), '''') AS x FROM %I t', c.relname), \
               false, true, '')))[1]::text, ',' ORDER BY c.relname), '') \
             FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace",
        );
        out.push_str(&format!("{db}: {tables}\n"));
    }
    out
}

fn push(store: &Store, pg: &PgCluster, extra: &[(&str, &str)], args: &[&str]) -> String {
    let out = store
        .walden()
        .envs(pg.env())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .arg("backup-push")
        .args(args)
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    pushed_backup_name(&out)
}

fn files_metadata(store: &Store, name: &str) -> serde_json::Value {
    stored_json(
        store.walden(),
        &format!("basebackups_005/{name}/files_metadata.json"),
    )
}

/// The data tars and their members (pg_control and label tars left out);
/// each one is stored.
fn data_tars(store: &Store, name: &str) -> BTreeMap<String, Vec<String>> {
    let fm = files_metadata(store, name);
    let mut tars = BTreeMap::new();
    for (tar, members) in fm["TarFileSets"].as_object().unwrap() {
        if tar.starts_with("backup_label") || tar.starts_with("pg_control") {
            continue;
        }
        let key = format!("basebackups_005/{name}/tar_partitions/{tar}");
        assert!(
            store.object_file(&key).is_file(),
            "{key} listed in TarFileSets but not stored"
        );
        let list = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        tars.insert(tar.clone(), list);
    }
    tars
}

fn relation_file(pg: &PgCluster, db: &str, table: &str) -> String {
    format!(
        "/{}",
        pg.psql_in(db, &format!("SELECT pg_relation_filepath('{table}')"))
    )
}

fn restore_and_compare(store: &Store, name: &str, expected: &str, walg: Option<&Path>) {
    let dirs = TempDir::new("composer-restore");
    let mut tools: Vec<(&str, Walden)> = vec![("walden", store.walden())];
    if let Some(bin) = walg {
        tools.push(("wal-g", Walden::program(bin).envs(store.env())));
    }
    for (tool, cmd) in tools {
        let dest = dirs.join(tool);
        cmd.timeout(Duration::from_secs(300))
            .arg("backup-fetch")
            .arg(&dest)
            .arg(name)
            .run()
            .assert_ok();
        let mut restored = recovering_through_walden(&dest, store.env())
            .conf("recovery_target", "'immediate'")
            .conf("recovery_target_action", "'promote'")
            .start_restored(dest.clone());
        restored.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(
            state(&restored),
            expected,
            "{name} restored by {tool}\n{}",
            restored.log_tail()
        );
        restored.stop();
    }
}

fn source() -> (Store, PgCluster) {
    source_in(Store::fs())
}

fn source_in(store: Store) -> (Store, PgCluster) {
    let pg = archiving_cluster(store.env())
        .conf("archive_timeout", "0")
        .conf("autovacuum", "off")
        .start();
    pg.psql("CREATE DATABASE other");
    pg.psql("CREATE TABLE cold AS SELECT g AS id, repeat('c', 300) AS pad FROM generate_series(1, 1000) g");
    pg.psql("CREATE TABLE hot AS SELECT g AS id, 0 AS v FROM generate_series(1, 1000) g");
    for _ in 0..40 {
        pg.psql("UPDATE hot SET v = v + 1");
    }
    pg.psql_in(
        "other",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 5000) g",
    );
    pg.psql("CHECKPOINT");
    // The archiver (user postgres) creates the store's root first.
    let walfile = pg.switch_wal();
    pg.wait_for_archive(&walfile, Duration::from_secs(120));
    (store, pg)
}

fn finish(pg: &mut PgCluster) {
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
}

/// Every tar holds the files of one database directory, or none; the
/// user databases' tables are in different tars, the headers in a tar.
fn check_database_layout(store: &Store, name: &str, other_file: &str, hot_file: &str) {
    let group = |m: &str| -> String {
        let parts: Vec<&str> = m.split('/').collect();
        match parts.as_slice() {
            ["", "base", db, _, ..] => format!("db {db}"),
            _ => "others".into(),
        }
    };
    let tars = data_tars(store, name);
    let mut groups = BTreeSet::new();
    for (tar, members) in &tars {
        let mine: BTreeSet<String> = members.iter().map(|m| group(m)).collect();
        assert_eq!(mine.len(), 1, "{name}: {tar} mixes {mine:?}: {members:?}");
        groups.extend(mine);
    }
    // template1, template0, postgres, other, and the rest.
    assert!(groups.len() >= 5, "{name}: {groups:?}");
    let holder = |file: &str| {
        tars.iter()
            .find(|(_, m)| m.iter().any(|n| n == file))
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| panic!("{file} in no tar: {tars:?}"))
    };
    assert_ne!(holder(other_file), holder(hot_file));
    // Headers in a tar of their own, as WAL-G.
    let headers = holder("/base");
    assert!(tars[&headers].iter().all(|m| group(m) == "others"));
}

#[test]
fn database_composer_keeps_each_database_in_its_own_tars() {
    let walg = walg_bin("the WAL-G restores of composed backups");
    let (store, mut pg) = source();
    let expected = state(&pg);
    let other_file = relation_file(&pg, "other", "t");
    let hot_file = relation_file(&pg, "postgres", "hot");
    let one = push(&store, &pg, &[], &["--database-composer"]);
    // Two builder threads: each closes its tar when the database changes.
    let two = push(
        &store,
        &pg,
        &[
            ("WALG_USE_DATABASE_COMPOSER", "true"),
            ("WALG_UPLOAD_DISK_CONCURRENCY", "2"),
            ("WALG_UPLOAD_CONCURRENCY", "4"),
        ],
        &[],
    );
    finish(&mut pg);
    for name in [&one, &two] {
        check_database_layout(&store, name, &other_file, &hot_file);
        restore_and_compare(&store, name, &expected, walg.as_deref());
    }
}

#[test]
fn rating_composer_groups_files_by_update_count() {
    let walg = walg_bin("the WAL-G restores of composed backups");
    let (store, mut pg) = source();
    let expected = state(&pg);
    // Statistics reach the shared counters within a second of a session's end.
    std::thread::sleep(Duration::from_millis(1500));
    let count = |table: &str| -> u64 {
        pg.psql(&format!(
            "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_all_tables WHERE relid = '{table}'::regclass"
        ))
        .parse()
        .unwrap()
    };
    let (hot_count, cold_count) = (count("hot"), count("cold"));
    assert!(
        hot_count >= 41_000 && cold_count == 1000,
        "{hot_count} {cold_count}"
    );
    let hot_file = relation_file(&pg, "postgres", "hot");
    let cold_file = relation_file(&pg, "postgres", "cold");
    let name = push(&store, &pg, &[("WALG_USE_RATING_COMPOSER", "true")], &[]);
    finish(&mut pg);

    let fm = files_metadata(&store, &name);
    let files = fm["Files"].as_object().unwrap();
    let updates = |f: &str| files[f]["UpdatesCount"].as_u64().unwrap();
    assert_eq!(updates(&hot_file), hot_count);
    assert_eq!(updates(&cold_file), cold_count);
    assert_eq!(updates("/PG_VERSION"), 0);
    // Every tar holds files of one rating bucket (0, or one power of two).
    let bucket = |n: u64| if n == 0 { 0 } else { 64 - n.leading_zeros() };
    let tars = data_tars(&store, &name);
    let mut holders = BTreeMap::new();
    for (tar, members) in &tars {
        let buckets: BTreeSet<u32> = members
            .iter()
            .filter(|m| files.contains_key(*m))
            .map(|m| bucket(updates(m)))
            .collect();
        assert!(buckets.len() <= 1, "{tar} mixes buckets {buckets:?}");
        for m in members {
            holders.insert(m.clone(), tar.clone());
        }
    }
    assert_ne!(holders[&hot_file], holders[&cold_file]);
    assert_ne!(holders[&cold_file], holders["/PG_VERSION"]);

    restore_and_compare(&store, &name, &expected, walg.as_deref());
}

/// Bytes of a stored object.
fn object(store: &Store, name: &str, tar: &str) -> Vec<u8> {
    let key = format!("basebackups_005/{name}/tar_partitions/{tar}");
    std::fs::read(store.object_file(&key)).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// Backups with `--copy-composer` on both storages: the first has no
/// previous backup (regular packing, one INFO line); after an UPDATE of
/// one table the second copies every tar of the first whose files did
/// not change — byte-identical objects, made by S3 CopyObject without a
/// download on S3 — and packs the changed table anew; a third copies the
/// second's copies again. Every backup restored by walden (and WAL-G) to
/// the rows of its moment.
#[test]
fn copy_composer_copies_the_unchanged_tars_of_the_previous_backup() {
    let walg = walg_bin("the WAL-G restores of composed backups");
    for store in Store::both() {
        let kind = store.name();
        let (store, mut pg) = source_in(store);
        let hot_file = relation_file(&pg, "postgres", "hot");
        let other_file = relation_file(&pg, "other", "t");
        // Small tars, so that one changed table leaves others whole.
        let small = [("WALG_TAR_SIZE_THRESHOLD", "200000")];
        // The first read of the new rows sets their hint bits: the pages
        // are written at the next checkpoint, and files written within a
        // second of a backup's start are not trusted as unchanged by the
        // next one.
        state(&pg);
        pg.psql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(1500));
        let first_state = state(&pg);
        let out = store
            .walden()
            .envs(pg.env())
            .envs(small.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .args(["backup-push", "--copy-composer"])
            .timeout(Duration::from_secs(300))
            .run();
        out.assert_ok();
        assert!(
            out.stderr.contains("will use the RegularComposer instead"),
            "{kind}: {}",
            out.dump()
        );
        let first = pushed_backup_name(&out);
        let first_tars = data_tars(&store, &first);
        assert!(first_tars.len() >= 4, "{kind}: {first_tars:?}");

        pg.psql("UPDATE hot SET v = v + 1 WHERE id <= 10");
        pg.psql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(1500));
        let second_state = state(&pg);
        let mut env: Vec<(String, String)> = small
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("WALG_USE_COPY_COMPOSER".into(), "true".into()));
        env.push(("WALG_LOG_LEVEL".into(), "DEVEL".into()));
        let push_copying = |env: &[(String, String)]| {
            let out = store
                .walden()
                .envs(pg.env())
                .envs(env.iter().cloned())
                .arg("backup-push")
                .timeout(Duration::from_secs(300))
                .run();
            out.assert_ok();
            out
        };
        let out = push_copying(&env);
        let second = pushed_backup_name(&out);
        assert!(
            !second.contains("_D_"),
            "{kind}: the copy composer takes full backups: {second}"
        );
        let second_tars = data_tars(&store, &second);
        let copies: Vec<&String> = second_tars
            .keys()
            .filter(|t| t.starts_with("copy_"))
            .collect();
        assert!(
            !copies.is_empty(),
            "{kind}: {second_tars:?}\n{}",
            out.dump()
        );
        // Each copy is a tar of the first backup, byte for byte, listing
        // the same members; the updated table is in no copy, the other
        // database's table is.
        for copy in &copies {
            let members = &second_tars[*copy];
            let (orig, _) = first_tars
                .iter()
                .find(|(_, m)| *m == members)
                .unwrap_or_else(|| {
                    panic!("{kind}: {copy} lists {members:?}, no tar of {first} does")
                });
            assert_eq!(
                object(&store, &second, copy),
                object(&store, &first, orig),
                "{kind}: {copy} is not a copy of {orig}"
            );
            assert!(
                !members.contains(&hot_file),
                "{kind}: {copy} holds {hot_file}"
            );
        }
        assert!(
            copies.iter().any(|c| second_tars[*c].contains(&other_file)),
            "{kind}: {other_file} not copied: {second_tars:?}"
        );
        assert!(
            second_tars
                .iter()
                .any(|(t, m)| t.starts_with("part_") && m.contains(&hot_file)),
            "{kind}: {hot_file} not packed anew: {second_tars:?}"
        );
        let requests = |out: &crate::harness::Output, op: &str, of: &str| {
            out.stderr
                .lines()
                .filter(|l| l.contains(op) && l.contains(of))
                .count()
        };
        if kind == "s3" {
            // Made by the server: one CopyObject per copy, the first
            // backup's tars never downloaded.
            assert_eq!(
                requests(&out, "s3 copy PUT", "/tar_partitions/copy_"),
                copies.len(),
                "{}",
                out.dump()
            );
            assert_eq!(
                requests(&out, "s3 get GET", &format!("{first}/tar_partitions")),
                0,
                "{}",
                out.dump()
            );
        }
        assert!(
            out.stderr
                .contains(&format!("Copy composer: copied {} of the", copies.len())),
            "{}",
            out.dump()
        );

        // Copies of copies: the second's copied tars come again.
        let out = push_copying(&env);
        let third = pushed_backup_name(&out);
        let third_tars = data_tars(&store, &third);
        let again = third_tars.iter().find(|(t, m)| {
            t.starts_with("copy_")
                && copies.iter().any(|c| {
                    &second_tars[*c] == *m
                        && object(&store, &second, c) == object(&store, &third, t)
                })
        });
        assert!(again.is_some(), "{kind}: {third_tars:?}\n{}", out.dump());
        let third_state = state(&pg);
        finish(&mut pg);

        restore_and_compare(&store, &first, &first_state, walg.as_deref());
        restore_and_compare(&store, &second, &second_state, walg.as_deref());
        restore_and_compare(&store, &third, &third_state, walg.as_deref());
    }
}

#[test]
fn composers_without_metadata_are_refused() {
    let store = Store::fs();
    let dir = TempDir::new("composer-refused");
    let refused = |env: &[(&str, &str)], args: &[&str], says: &str| {
        let out = store
            .walden()
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .arg("backup-push")
            .arg(dir.path())
            .args(args)
            .run();
        out.assert_failed();
        assert!(out.stderr.contains(says), "{}", out.dump());
    };
    refused(
        &[],
        &["--rating-composer", "--without-files-metadata"],
        "--rating-composer (WALG_USE_RATING_COMPOSER) cannot be used with --without-files-metadata",
    );
    refused(
        &[("WALG_WITHOUT_FILES_METADATA", "true")],
        &["-b"],
        "--database-composer (WALG_USE_DATABASE_COMPOSER) cannot be used with --without-files-metadata",
    );
    refused(
        &[("WALG_WITHOUT_FILES_METADATA", "true")],
        &["-c"],
        "cannot be used with --without-files-metadata",
    );
    // Nothing was uploaded.
    let listed = store.walden().args(["backup-list"]).run();
    assert!(!listed.stderr.contains("base_"), "{}", listed.dump());
}
