//! backup-fetch of delta chains made by WAL-G 3.0.9 (origins LATEST and
//! LATEST_FULL; walden cannot push
//! deltas yet): a full backup and three deltas with pgbench writes
//! between them and, among them, a VACUUM FULL (new relfilenode), a table
//! shrunk by VACUUM and grown again, a DROP TABLE, a TRUNCATE, a new table
//! and a new database. Every link is restored forward, reverse and
//! reverse with skip-redundant-tars; the three copies must be identical
//! byte for byte, and PostgreSQL started on each (recovery up to the
//! backup's consistency point) must hold what the source held when the
//! backup was taken. Then the chain is damaged on purpose: a corrupt
//! increment, a missing files_metadata.json and a deleted base each end
//! in an error that names the object.
//!
//! Needs `WALDEN_WALG_BIN` (a PostgreSQL wal-g); skips without it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::walg_bin;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

const METHOD: &str = "lz4";

fn walg(bin: &Path, store: &Store, origin: &str) -> Walden {
    if let Store::Fs { dir } = store {
        fs::create_dir_all(dir.join("repo")).unwrap();
    }
    Walden::program(bin)
        .envs(store.env())
        .env("WALG_COMPRESSION_METHOD", METHOD)
        // Small tars, so that a backup has many and skipping some shows.
        .env("WALG_TAR_SIZE_THRESHOLD", "1048576")
        .env("WALG_DELTA_MAX_STEPS", "3")
        .env("WALG_DELTA_ORIGIN", origin)
        .timeout(Duration::from_secs(300))
}

fn walden(store: &Store) -> Walden {
    store
        .walden()
        .env("WALG_COMPRESSION_METHOD", METHOD)
        .timeout(Duration::from_secs(300))
}

/// Every user table of `db` (name, size in bytes, md5 of its rows in
/// order): what must come back exactly, including sizes after truncation.
const STATE: &str =
    "SELECT coalesce(string_agg(c.relname || '=' || pg_relation_size(c.oid) || '/' || \
     md5(query_to_xml(format('SELECT * FROM %I ORDER BY 1', c.relname), false, false, '')::text), \
     ' ' ORDER BY c.relname), 'none') \
     FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'";

fn state(pg: &PgCluster, with_db2: bool) -> String {
    let mut s = pg.psql(STATE);
    if with_db2 {
        s.push_str(" | db2: ");
        s.push_str(&pg.psql_in("db2", STATE));
    }
    s
}

/// The newest backup by walden's listing.
fn newest(store: &Store) -> String {
    let out = store.walden().arg("backup-list").run();
    out.assert_ok();
    let text = out.stdout_str();
    text.lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("a backup in {text}"))
        .to_string()
}

/// Every regular file and symlink under `dir` with its bytes, and every
/// directory.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(p);
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// How many data tars a fetch downloaded, from its log lines.
fn tars_downloaded(stderr: &str) -> usize {
    stderr
        .lines()
        .filter_map(|l| l.split("backup ").nth(1))
        .filter_map(|rest| rest.split(": ").nth(1))
        .filter_map(|r| r.split(" of its ").next())
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .sum()
}

const MODES: [(&str, &[&str]); 3] = [
    ("forward", &[]),
    ("reverse", &["--reverse-unpack"]),
    (
        "reverse-skip",
        &["--reverse-unpack", "--skip-redundant-tars"],
    ),
];

#[test]
fn walg_delta_chain_restores_every_link() {
    let Some(bin) = walg_bin("the WAL-G delta chain test") else {
        return;
    };
    // LATEST: each delta against the one before (a chain of four);
    // LATEST_FULL: each against the full backup (chains of two).
    for origin in ["LATEST", "LATEST_FULL"] {
        chain(&bin, origin);
    }
}

fn chain(bin: &Path, origin: &str) {
    eprintln!("WALG_DELTA_ORIGIN={origin}");
    let store = Store::fs();
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        // No vacuum behind the test's back: sizes are compared exactly.
        .conf("autovacuum", "off")
        .env(store.env())
        .env([("WALG_COMPRESSION_METHOD", METHOD)])
        .start();
    pg.pgbench_init(1);
    pg.psql(
        "CREATE TABLE dropme AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g; \
         CREATE TABLE truncme AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g; \
         CREATE TABLE shrinkme AS SELECT g, md5(g::text) AS m FROM generate_series(1, 50000) g",
    );
    let data = pg.data_dir().to_path_buf();
    let mut names = Vec::new();
    let mut expected = Vec::new();
    let push = |pg: &PgCluster, names: &mut Vec<String>, expected: &mut Vec<String>, db2| {
        expected.push(state(pg, db2));
        walg(bin, &store, origin)
            .envs(pg.env())
            .arg("backup-push")
            .arg(&data)
            .run()
            .assert_ok();
        names.push(newest(&store));
    };
    push(&pg, &mut names, &mut expected, false);

    // Delta 1: writes, a new relfilenode for the biggest table, a new
    // table, a table cut short by VACUUM.
    pg.pgbench(&["-n", "-t", "500", "-c", "2"]);
    pg.psql("VACUUM FULL pgbench_accounts");
    pg.psql("CREATE TABLE t_new AS SELECT g, md5(g::text) AS m FROM generate_series(1, 10000) g");
    pg.psql("DELETE FROM shrinkme WHERE g > 5000");
    pg.psql("VACUUM shrinkme");
    push(&pg, &mut names, &mut expected, false);

    // Delta 2: a dropped table, a truncated one, a new database, the
    // shrunk table grown again.
    pg.pgbench(&["-n", "-t", "500", "-c", "2"]);
    pg.psql("DROP TABLE dropme");
    pg.psql("TRUNCATE truncme");
    pg.psql("CREATE DATABASE db2");
    pg.psql_in(
        "db2",
        "CREATE TABLE t AS SELECT g, md5(g::text) AS m FROM generate_series(1, 30000) g",
    );
    pg.psql("INSERT INTO shrinkme SELECT g, 'again' FROM generate_series(1, 20000) g");
    push(&pg, &mut names, &mut expected, true);

    // Delta 3: more writes everywhere.
    pg.pgbench(&["-n", "-t", "500", "-c", "2"]);
    pg.psql("UPDATE t_new SET m = 'changed' WHERE g % 7 = 0");
    pg.psql("INSERT INTO truncme SELECT g, 'new' FROM generate_series(1, 500) g");
    pg.psql_in("db2", "UPDATE t SET m = 'db2 changed' WHERE g < 100");
    push(&pg, &mut names, &mut expected, true);

    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();
    assert!(!names[0].contains("_D_"), "{names:?}: a full backup first");
    for (i, n) in names.iter().enumerate().skip(1) {
        // base_<seg>_D_<segment of the backup it was taken against>.
        let against = match origin {
            "LATEST" => &names[i - 1],
            _ => &names[0],
        };
        let segment: String = against
            .trim_start_matches("base_")
            .chars()
            .take(24)
            .collect();
        let suffix = format!("_D_{segment}");
        assert!(
            n.ends_with(&suffix),
            "{origin}: backup {i} is {n}, wanted a delta against {against}"
        );
    }

    for (i, e) in expected.iter().enumerate() {
        eprintln!("state at backup {i}: {e}");
    }
    let scratch = TempDir::new("delta-fetch");
    for (i, name) in names.iter().enumerate() {
        let modes: &[(&str, &[&str])] = if i == 0 { &MODES[..1] } else { &MODES };
        let mut trees = Vec::new();
        for (mode, flags) in modes {
            let dest = scratch.join(format!("{i}-{mode}"));
            let started = Instant::now();
            let out = walden(&store)
                .arg("backup-fetch")
                .arg(&dest)
                .arg(name)
                .args(flags.iter().copied())
                .run();
            out.assert_ok();
            eprintln!(
                "backup {i} ({name}) {mode}: {:?}, {} data tars downloaded",
                started.elapsed(),
                tars_downloaded(&out.stderr)
            );
            for l in out
                .stderr
                .lines()
                .filter(|l| l.contains("Unpacking") || l.contains("WARN"))
            {
                eprintln!("    {l}");
            }
            trees.push((mode, tars_downloaded(&out.stderr), tree(&dest)));
        }
        // Forward and reverse give the same bytes.
        for (mode, _, t) in &trees[1..] {
            let (first_mode, _, first) = &trees[0];
            let differ: Vec<&PathBuf> = first
                .keys()
                .chain(t.keys())
                .filter(|k| first.get(*k) != t.get(*k))
                .take(5)
                .collect();
            assert!(
                differ.is_empty(),
                "backup {i}: {mode} differs from {first_mode} in {differ:?}"
            );
        }
        if i > 0 {
            let count = |m: &str| trees.iter().find(|t| *t.0 == m).unwrap().1;
            assert!(
                count("reverse-skip") <= count("reverse"),
                "skip-redundant-tars downloads no more"
            );
        }
        // Each copy starts and holds what the source held at the backup.
        for (mode, _, _) in &trees {
            let dest = scratch.join(format!("{i}-{mode}"));
            fs::write(dest.join("recovery.signal"), "").unwrap();
            let mut restored = PgCluster::builder()
                .conf("restore_command", "'{walden} wal-fetch %f %p'")
                .conf("archive_mode", "off")
                .conf("recovery_target", "'immediate'")
                .conf("recovery_target_action", "'promote'")
                .conf("autovacuum", "off")
                .env(store.env())
                .env([("WALG_COMPRESSION_METHOD", METHOD)])
                .start_restored(dest.clone());
            restored.wait_for_promotion(Duration::from_secs(120));
            assert_eq!(
                state(&restored, i >= 2),
                expected[i],
                "backup {i} ({name}) restored {mode}\n{}",
                restored.log_tail()
            );
            restored.stop();
            drop(restored);
            fs::remove_dir_all(&dest).unwrap();
        }
    }

    if origin == "LATEST" {
        damaged_chains(&store, &names, &scratch);
    }
}

/// The newest delta's chain broken three ways, each named in the error;
/// nothing is left that PostgreSQL could start on.
fn damaged_chains(store: &Store, names: &[String], scratch: &TempDir) {
    let newest = names.last().unwrap();
    let fetch = |dest: &str, flags: &[&str]| {
        let dest = scratch.join(dest);
        let out = walden(store)
            .arg("backup-fetch")
            .arg(&dest)
            .arg(newest)
            .args(flags.iter().copied())
            .run();
        assert_ne!(out.code, 0, "{}", out.stderr);
        assert!(
            !dest.join("global/pg_control").exists(),
            "no startable copy is left"
        );
        out.stderr
    };

    // A corrupt increment: the first increment member of the newest
    // delta gets a wrong magic byte, and the tar is stored again.
    let parts = format!("basebackups_005/{newest}/tar_partitions/");
    let out = walden(store).args(["st", "ls", &parts]).run();
    out.assert_ok();
    let mut corrupted = None;
    for line in out.stdout_str().lines() {
        let Some(base) = line
            .split_whitespace()
            .find(|w| w.contains("part_"))
            .and_then(|w| w.rsplit('/').next())
        else {
            continue;
        };
        let key = format!("{parts}{base}");
        let local = scratch.join("tar");
        let _ = fs::remove_file(&local);
        walden(store)
            .args(["st", "get", &key])
            .arg(&local)
            .run()
            .assert_ok();
        let mut bytes = fs::read(&local).unwrap();
        let Some(at) = (0..bytes.len().saturating_sub(4))
            .step_by(512)
            .find(|&o| &bytes[o..o + 4] == b"wi1\x55")
        else {
            continue;
        };
        let original = bytes.clone();
        bytes[at] = b'x';
        fs::write(&local, &bytes).unwrap();
        let stem = key.strip_suffix(&format!(".{METHOD}")).unwrap().to_string();
        walden(store)
            .args(["st", "put", "-f"])
            .arg(&local)
            .arg(&stem)
            .run()
            .assert_ok();
        corrupted = Some((key, stem, original));
        break;
    }
    let (key, stem, original) = corrupted.expect("the newest delta has an increment");
    for (dest, flags) in [("bad-fwd", &[][..]), ("bad-rev", &["--reverse-unpack"][..])] {
        let err = fetch(dest, flags);
        eprintln!("{dest}: {err}");
        assert!(
            err.contains(&key) && err.contains("damaged") && err.contains("wi1"),
            "{flags:?}: {err}"
        );
    }
    let local = scratch.join("tar");
    fs::write(&local, &original).unwrap();
    walden(store)
        .args(["st", "put", "-f"])
        .arg(&local)
        .arg(&stem)
        .run()
        .assert_ok();

    // A delta without files_metadata.json.
    let middle = &names[2];
    let fm = format!("basebackups_005/{middle}/files_metadata.json");
    let saved = scratch.join("fm.json");
    walden(store)
        .args(["st", "get", &fm])
        .arg(&saved)
        .run()
        .assert_ok();
    walden(store).args(["st", "rm", &fm]).run().assert_ok();
    let err = fetch("no-metadata", &[]);
    eprintln!("no-metadata: {err}");
    assert!(err.contains(&fm) && err.contains(middle.as_str()), "{err}");
    walden(store)
        .args(["st", "put", "-f", "--no-compress"])
        .arg(&saved)
        .arg(&fm)
        .run()
        .assert_ok();
    // Whole again: restoring works.
    let dest = scratch.join("whole-again");
    walden(store)
        .arg("backup-fetch")
        .arg(&dest)
        .arg(newest)
        .run()
        .assert_ok();
    fs::remove_dir_all(&dest).unwrap();

    // The base of the first delta deleted.
    let full = &names[0];
    walden(store)
        .args([
            "st",
            "rm",
            &format!("basebackups_005/{full}_backup_stop_sentinel.json"),
        ])
        .run()
        .assert_ok();
    for (dest, flags) in [
        ("no-base", &[][..]),
        (
            "no-base-rev",
            &["--reverse-unpack", "--skip-redundant-tars"][..],
        ),
    ] {
        let err = fetch(dest, flags);
        eprintln!("{dest}: {err}");
        assert!(
            err.contains(full.as_str()) && err.contains("missing") && err.contains("broken"),
            "{err}"
        );
        assert!(!scratch.join(dest).exists(), "checked before DEST is made");
    }
}
