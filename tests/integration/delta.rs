//! Delta backups (issue 14 item 1): a full backup and three deltas with
//! pgbench writes between them, and among them a VACUUM FULL, a DROP
//! TABLE, a TRUNCATE, a relation that shrinks, a new table and a new
//! database, for both `WALG_DELTA_ORIGIN`s. Every link is restored (by
//! [`restore_chain`]) to its consistent point and every table of every
//! database compared with what the source had when that backup was taken;
//! `pg_amcheck` then checks the heap and B-tree pages of every database.
//!
//! Each link is restored by walden, forward and with reverse unpack and
//! skip-redundant-tars, and by WAL-G 3.0.9 when `WALDEN_WALG_BIN` names
//! it (without it that part says it skips).

use std::path::Path;
use std::time::Duration;

use crate::harness::scenario::{
    amcheck, archiving_cluster, pushed_backup_name, recovering_through_walden, stored_json,
};
use crate::harness::walg_bin;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

/// Which program restores a delta chain.
enum Tool<'a> {
    /// walden's backup-fetch with these extra flags.
    Walden(&'a [&'a str]),
    Walg(&'a Path),
}

/// Restore backup `name` (and the chain below it) from `store` into `dest`.
fn restore_chain(tool: &Tool, store: &Store, name: &str, dest: &Path) {
    let (cmd, flags): (Walden, &[&str]) = match tool {
        Tool::Walden(flags) => (store.walden(), flags),
        Tool::Walg(bin) => (Walden::program(bin).envs(store.env()), &[]),
    };
    cmd.timeout(Duration::from_secs(300))
        .arg("backup-fetch")
        .arg(dest)
        .arg(name)
        .args(flags)
        .run()
        .assert_ok();
}

/// Every user table of every database: name and a checksum of its rows.
fn state(pg: &PgCluster) -> String {
    let dbs = pg.psql(
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datallowconn AND datname <> 'template1'",
    );
    let mut out = String::new();
    for db in dbs.split(',') {
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

fn push(store: &Store, pg: &PgCluster, origin: &str) -> String {
    // Files written this close to a base's start are not skipped by the
    // next delta (see delta/mod.rs): leave the changes settled.
    std::thread::sleep(Duration::from_millis(1100));
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .env("WALG_DELTA_ORIGIN", origin)
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    let log = &out.stderr;
    let name = pushed_backup_name(&out);
    if name.contains("_D_") {
        assert!(log.contains("Delta backup from "), "{log}");
        assert!(log.contains(" bytes, stored "), "{log}");
    }
    name
}

fn sentinel(store: &Store, name: &str) -> serde_json::Value {
    let key = format!("basebackups_005/{name}_backup_stop_sentinel.json");
    stored_json(store.walden(), &key)
}

fn files_metadata(store: &Store, name: &str) -> serde_json::Value {
    stored_json(
        store.walden(),
        &format!("basebackups_005/{name}/files_metadata.json"),
    )
}

#[test]
fn delta_chain_latest() {
    chain("LATEST");
}

#[test]
fn delta_chain_latest_full() {
    chain("LATEST_FULL");
}

fn chain(origin: &str) {
    let walg = walg_bin("the WAL-G restores of walden's delta chains");
    // The archiver (user postgres) creates the store's root.
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env())
        .conf("archive_timeout", "0")
        .conf("autovacuum", "off")
        .start();
    pg.pgbench_init(2);
    pg.psql("CREATE TABLE keep AS SELECT g AS id, repeat('k', 200) AS pad FROM generate_series(1, 5000) g");
    pg.psql("CREATE TABLE shrinks AS SELECT g AS id, repeat('s', 500) AS pad FROM generate_series(1, 20000) g");
    pg.psql("CHECKPOINT");

    let mut links: Vec<(String, String)> = Vec::new();
    let full = push(&store, &pg, origin);
    assert!(!full.contains("_D_"), "{full}");
    links.push((full.clone(), state(&pg)));

    // Delta 1: writes, a VACUUM FULL (new relfilenode), a new table.
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("VACUUM FULL pgbench_tellers");
    pg.psql(
        "CREATE TABLE added AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 3000) g",
    );
    let d1 = push(&store, &pg, origin);
    links.push((d1.clone(), state(&pg)));

    // Delta 2: a DROP TABLE, a TRUNCATE, a relation that shrinks (its
    // tail deleted and truncated away by VACUUM), a new database.
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql("DROP TABLE keep");
    pg.psql("TRUNCATE pgbench_history");
    pg.psql("DELETE FROM shrinks WHERE id > 2000");
    pg.psql("VACUUM shrinks");
    pg.psql("CREATE DATABASE newdb");
    pg.psql_in(
        "newdb",
        "CREATE TABLE t AS SELECT g AS id, g * 2 AS v FROM generate_series(1, 4000) g",
    );
    let d2 = push(&store, &pg, origin);
    links.push((d2.clone(), state(&pg)));

    // Delta 3: more writes in both databases.
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    pg.psql_in("newdb", "UPDATE t SET v = v + 1 WHERE id % 7 = 0");
    pg.psql("INSERT INTO added SELECT g, 'late' FROM generate_series(3001, 3100) g");
    let d3 = push(&store, &pg, origin);
    links.push((d3.clone(), state(&pg)));

    // The states compared below differ where the changes were made.
    assert!(links[0].1.contains("keep=5000:"), "{}", links[0].1);
    assert!(!links[2].1.contains("keep="), "{}", links[2].1);
    assert!(links[2].1.contains("shrinks=2000:"), "{}", links[2].1);
    assert!(links[2].1.contains("pgbench_history=0:"), "{}", links[2].1);
    assert!(links[2].1.contains("newdb: t=4000:"), "{}", links[2].1);
    assert_ne!(links[2].1, links[3].1);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    // The sentinels chain as WAL-G writes them.
    let full_lsn = sentinel(&store, &full)["LSN"].as_u64().unwrap();
    for (i, (name, _)) in links.iter().enumerate().skip(1) {
        let s = sentinel(&store, name);
        let base = if origin == "LATEST" {
            &links[i - 1].0
        } else {
            &full
        };
        assert_eq!(s["DeltaFrom"], base.as_str(), "{name}: {s}");
        assert_eq!(s["DeltaFullName"], full.as_str(), "{name}: {s}");
        assert_eq!(s["DeltaCount"], i as u64, "{name}: {s}");
        assert_eq!(s["DeltaLSN"], sentinel(&store, base)["LSN"], "{name}: {s}");
        let base_segment = &base[5..29];
        assert!(
            name.ends_with(&format!("_D_{base_segment}")),
            "{name} on {base}"
        );
        assert!(s["DeltaLSN"].as_u64().unwrap() >= full_lsn);
        // Some files unchanged (skipped), some stored as increments.
        let fm = files_metadata(&store, name);
        let files = fm["Files"].as_object().unwrap();
        let skipped = files.values().filter(|f| f["IsSkipped"] == true).count();
        let incremented = files
            .values()
            .filter(|f| f["IsIncremented"] == true)
            .count();
        assert!(skipped > 100, "{name}: {skipped} skipped");
        assert!(incremented > 0, "{name}: {incremented} incremented");
        // A skipped file is in no tar.
        let sets = fm["TarFileSets"].as_object().unwrap();
        let (skipped_name, _) = files.iter().find(|(_, f)| f["IsSkipped"] == true).unwrap();
        assert!(sets.values().all(|m| !m
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == skipped_name.as_str())));
    }

    let mut tools = vec![
        Tool::Walden(&[]),
        Tool::Walden(&["--reverse-unpack", "--skip-redundant-tars"]),
    ];
    if let Some(bin) = &walg {
        tools.push(Tool::Walg(bin));
    }
    let dirs = TempDir::new("delta-restore");
    for ((name, expected), (t, tool)) in links
        .iter()
        .flat_map(|l| tools.iter().enumerate().map(move |t| (l, t)))
    {
        let dest = dirs.join(format!("{name}-{t}"));
        restore_chain(tool, &store, name, &dest);
        let mut restored = recovering_through_walden(&dest, store.env())
            .conf("recovery_target", "'immediate'")
            .conf("recovery_target_action", "'promote'")
            .start_restored(dest.clone());
        restored.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(
            &state(&restored),
            expected,
            "{origin}: {name} restored by tool {t}\n{}",
            restored.log_tail()
        );
        // Heap pages and B-tree indexes of every database as PostgreSQL
        // checks them: a page of the wrong link, or half an increment,
        // shows here even where the rows compared equal.
        amcheck(&restored);
        restored.stop();
    }
}

/// Peak RSS (KiB, logged at DEVEL level) and the log of one backup-push;
/// `full` adds `--full`.
fn push_measured(store: &Store, pg: &PgCluster, full: bool) -> (i64, String) {
    let mut cmd = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .env("WALG_LOG_LEVEL", "DEVEL")
        .arg("backup-push");
    if full {
        cmd = cmd.arg("--full");
    }
    let out = cmd.timeout(Duration::from_secs(600)).run();
    out.assert_ok();
    let peak = out
        .stderr
        .lines()
        .find_map(|l| l.split("peak memory (RSS) of backup-push: ").nth(1))
        .and_then(|r| r.trim_end_matches(" KiB").parse::<i64>().ok())
        .unwrap_or_else(|| panic!("peak memory logged: {}", out.dump()));
    (peak, out.stderr.clone())
}

/// A delta's memory does not grow with the base's file list: 20,000 vs
/// 200,000 extra files, each skipped as unchanged. Both backups upload a
/// files_metadata.json that grows with the files (in multipart parts, as
/// many at once as uploads allow: bounded, but not flat), so the delta is
/// held to the full backup of the same files, which has no base list.
#[test]
fn delta_memory_is_flat_in_the_file_count() {
    let store = Store::fs();
    let pg = archiving_cluster(store.env())
        .conf("archive_timeout", "0")
        .start();
    let oid = pg.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'");
    let db = pg.data_dir().join("base").join(&oid);
    let mut peaks = Vec::new();
    for (first, count) in [(0usize, 20_000usize), (20_000, 180_000)] {
        for i in first..first + count {
            std::fs::write(
                db.join(format!("{}", 900_000_000 + i)),
                vec![b'x'; (i * 7919) % 2049],
            )
            .unwrap();
        }
        // Older than the next backup's start by the skip margin.
        std::thread::sleep(Duration::from_millis(1200));
        let (full_peak, full_log) = push_measured(&store, &pg, true);
        assert!(!full_log.contains("Delta backup enabled"), "{full_log}");
        let started = std::time::Instant::now();
        let (peak, log) = push_measured(&store, &pg, false);
        let took = started.elapsed();
        let line = log
            .lines()
            .find(|l| l.contains(" unchanged files skipped "))
            .unwrap_or_else(|| panic!("no delta line in {log}"))
            .to_string();
        let skipped: usize = line
            .split(" unchanged files skipped")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(skipped >= first + count, "{line}");
        eprintln!(
            "{} extra files: full backup peak RSS {full_peak} KiB; delta peak RSS {peak} KiB, {took:?}; {line}",
            first + count
        );
        peaks.push(peak - full_peak);
    }
    assert!(
        peaks.iter().all(|&extra| extra < 8 * 1024),
        "the delta's peak RSS exceeded the full backup's by {peaks:?} KiB"
    );
}

/// The increment stored for a relation holds exactly the pages that
/// changed: one HOT update touches one block, and only that block is in
/// the `wi1` member, with the file's size in its header.
#[test]
fn delta_increment_holds_exactly_the_changed_pages() {
    let store = Store::fs();
    let pg = archiving_cluster(store.env())
        .conf("archive_timeout", "0")
        .conf("autovacuum", "off")
        .start();
    pg.psql(
        "CREATE TABLE paged (id int, pad text) WITH (fillfactor = 50); \
         INSERT INTO paged SELECT g, repeat('p', 100) FROM generate_series(1, 4000) g",
    );
    pg.psql("VACUUM FREEZE paged");
    pg.psql("CHECKPOINT");
    let path = pg.psql("SELECT pg_relation_filepath('paged')");
    let pages: u64 = pg
        .psql("SELECT pg_relation_size('paged') / 8192")
        .parse()
        .unwrap();
    assert!(pages > 20, "{pages} pages");
    let full = push(&store, &pg, "LATEST");
    assert!(!full.contains("_D_"));
    let block: u32 = pg
        .psql("UPDATE paged SET pad = 'changed' WHERE id = 2500 RETURNING (ctid::text::point)[0]::int")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    let delta = push(&store, &pg, "LATEST");
    assert!(delta.contains("_D_"), "{delta}");

    let member = format!("/{path}");
    let fm = files_metadata(&store, &delta);
    assert_eq!(
        fm["Files"][&member]["IsIncremented"], true,
        "{}",
        fm["Files"][&member]
    );
    let tar_name = fm["TarFileSets"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, m)| m.as_array().unwrap().iter().any(|n| n == member.as_str()))
        .map(|(t, _)| t.clone())
        .unwrap();
    let out = store
        .walden()
        .args([
            "st",
            "cat",
            "--decompress",
            &format!("basebackups_005/{delta}/tar_partitions/{tar_name}"),
        ])
        .run();
    out.assert_ok();
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut found = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path_bytes().as_ref() == member.as_bytes() {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).unwrap();
            found = Some(body);
        }
    }
    let body = found.unwrap_or_else(|| panic!("{member} in {tar_name}"));
    assert_eq!(&body[..4], b"wi1\x55");
    assert_eq!(
        u64::from_le_bytes(body[4..12].try_into().unwrap()),
        pages * 8192
    );
    let n = u32::from_le_bytes(body[12..16].try_into().unwrap());
    let blocks: Vec<u32> = (0..n as usize)
        .map(|i| u32::from_le_bytes(body[16 + 4 * i..20 + 4 * i].try_into().unwrap()))
        .collect();
    assert_eq!(blocks, vec![block], "the changed block only");
    assert_eq!(body.len(), 16 + 4 + 8192);
    // The page stored is the page with the update.
    let page = &body[20..];
    assert!(page.windows(7).any(|w| w == b"changed"));
}

/// `WALG_USE_WAL_DELTA` / `WALG_FORCE_WAL_DELTA` are accepted: walden's
/// backup-push says once that it writes and reads no WAL delta files and
/// takes its delta from a page scan; walden's wal-push stores no
/// `_delta` object. WAL-G 3.0.9 (when `WALDEN_WALG_BIN` names it) with
/// `WALG_USE_WAL_DELTA=true` on the WAL walden archived finds no delta
/// file, falls back to its page scan as its source says, and the delta it
/// takes on walden's backup restores with walden to the rows of its
/// moment, pg_amcheck clean.
#[test]
fn wal_delta_setting_is_said_once_and_walg_falls_back_to_a_page_scan() {
    let walg = walg_bin("the WAL-G restores of walden's delta chains");
    let store = Store::fs();
    let mut pg = archiving_cluster(store.env())
        .conf("archive_timeout", "0")
        .conf("autovacuum", "off")
        .env([("WALG_USE_WAL_DELTA", "true")])
        .start();
    pg.pgbench_init(1);
    pg.psql("CHECKPOINT");
    let full = push(&store, &pg, "LATEST");
    assert!(!full.contains("_D_"), "{full}");

    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    std::thread::sleep(Duration::from_millis(1100));
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .env("WALG_USE_WAL_DELTA", "true")
        .env("WALG_FORCE_WAL_DELTA", "true")
        .arg("backup-push")
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    let said = "walden neither writes nor reads WAL-G's WAL delta files";
    assert_eq!(out.stderr.matches(said).count(), 1, "{}", out.dump());
    assert!(out.stderr.contains("WALG_FORCE_WAL_DELTA has no effect"));
    assert!(
        out.stderr.contains("Wrote backup with name base_") && out.stderr.contains("_D_"),
        "{}",
        out.dump()
    );

    let Some(bin) = walg else {
        pg.stop();
        return;
    };
    pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
    let expected = state(&pg);
    let out = Walden::program(&bin)
        .envs(store.env())
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .env("WALG_USE_WAL_DELTA", "true")
        .arg("backup-push")
        .arg(pg.data_dir())
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    assert!(
        out.stderr.contains("Fallback to full scan delta backup"),
        "{}",
        out.dump()
    );
    let name = pushed_backup_name(&out);
    assert!(name.contains("_D_"), "{name}");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    let wal: Vec<String> = std::fs::read_dir(store.object_file("wal_005"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wal.iter().all(|n| !n.contains("_delta")),
        "walden's wal-push wrote a WAL delta file: {wal:?}"
    );

    let dirs = TempDir::new("wal-delta-restore");
    let dest = dirs.join("walden");
    restore_chain(&Tool::Walden(&[]), &store, &name, &dest);
    let mut restored = recovering_through_walden(&dest, store.env())
        .conf("recovery_target", "'immediate'")
        .conf("recovery_target_action", "'promote'")
        .start_restored(dest.clone());
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(state(&restored), expected, "{}", restored.log_tail());
    amcheck(&restored);
    restored.stop();
}
