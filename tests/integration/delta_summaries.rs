//! Delta backups from WAL summaries (issue 14 item 2): on PostgreSQL 17
//! with `summarize_wal = on`, the changed blocks of a delta come from the
//! server's WAL summaries. The same change is backed up twice against the
//! same full backup, once from summaries and once by the page scan
//! (`WALDEN_DELTA_SUMMARIES=off`): both restore to the same relation files
//! (byte for byte but for hint bits set between the two backups; a changed
//! block the summaries missed would restore the base's older page there),
//! the summary path reads far fewer bytes, and the summary
//! delta restored and recovered has the source's rows. The change holds
//! pgbench writes, a TRUNCATE, a table that VACUUM shrinks and a new table.
//! With `summarize_wal` turned off, a delta says why (INFO) and scans pages.
//! On PostgreSQL 17 and 18; each skips (saying so) when not installed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

const ROWS: &str = "SELECT (SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts) || ' ' || \
    (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT count(*) || '/' || coalesce(sum(id), 0) FROM trunc) || ' ' || \
    (SELECT count(*) || '/' || sum(id) FROM shrink) || ' ' || (SELECT count(*) || '/' || sum(id) FROM fresh)";

fn installed(major: u32) -> bool {
    std::panic::catch_unwind(|| crate::harness::pg::server_bin(major)).is_ok()
}

/// backup-push; the backup's name and the log.
fn push(store: &Store, pg: &PgCluster, extra: &[&str], summaries: &str) -> (String, String) {
    // Files written this close to a base's start are not skipped (see
    // delta/mod.rs): leave the changes settled.
    std::thread::sleep(Duration::from_millis(1100));
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .env("WALDEN_DELTA_SUMMARIES", summaries)
        .arg("backup-push")
        .args(extra)
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    let log = out.stderr.clone();
    let name = log
        .lines()
        .find_map(|l| l.split("Wrote backup with name ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("backup name in {log}"))
        .to_string();
    (name, log)
}

/// "read N bytes" of the delta's INFO line.
fn bytes_read(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("Delta backup from "))
        .find_map(|l| l.split(": read ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the delta's read/stored line in {log}"))
}

/// pd_lsn of a page: two little-endian u32 halves, high first.
fn page_lsn(page: &[u8]) -> u64 {
    let half = |o: usize| u64::from(u32::from_le_bytes(page[o..o + 4].try_into().unwrap()));
    (half(0) << 32) | half(4)
}

/// The backup's start LSN from its "Starting backup" line.
fn start_lsn(log: &str) -> u64 {
    let text = log
        .lines()
        .find_map(|l| l.split("(start LSN ").nth(1))
        .and_then(|l| l.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the start LSN in {log}"));
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Every relation main fork (numeric file name) under `base/`.
fn relation_files(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for db in std::fs::read_dir(data.join("base")).unwrap() {
        let db = db.unwrap();
        for f in std::fs::read_dir(db.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().to_string();
            if name
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                let key = format!("{}/{name}", db.file_name().to_string_lossy());
                out.insert(key, std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

fn fetch(store: &Store, name: &str, dest: &Path) {
    store
        .walden()
        .timeout(Duration::from_secs(300))
        .arg("backup-fetch")
        .arg(dest)
        .arg(name)
        .run()
        .assert_ok();
}

#[test]
fn delta_from_wal_summaries_matches_the_page_scan() {
    summaries_on(17);
}

#[test]
fn delta_from_wal_summaries_matches_the_page_scan_pg18() {
    summaries_on(18);
}

fn summaries_on(major: u32) {
    if !installed(major) {
        eprintln!("PostgreSQL {major} is not installed (scripts/pg-versions.sh): skipping the WAL summaries test");
        return;
    }
    let store = Store::fs();
    let pg = PgCluster::builder()
        .major(major)
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        .conf("autovacuum", "off")
        .conf("summarize_wal", "on")
        .env(store.env())
        .start();
    pg.pgbench_init(5);
    pg.psql(
        "CREATE TABLE trunc (id int, pad text); \
         INSERT INTO trunc SELECT g, repeat('t', 200) FROM generate_series(1, 5000) g; \
         CREATE TABLE shrink (id int, pad text); \
         INSERT INTO shrink SELECT g, repeat('s', 200) FROM generate_series(1, 20000) g",
    );
    pg.psql("VACUUM FREEZE");
    pg.psql("CHECKPOINT");
    let (full, log) = push(&store, &pg, &[], "on");
    assert!(!full.contains("_D_"), "{log}");

    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("TRUNCATE trunc");
    pg.psql("INSERT INTO trunc SELECT g, 'after' FROM generate_series(1, 10) g");
    pg.psql("DELETE FROM shrink WHERE id > 5000");
    let before: u64 = pg
        .psql("SELECT pg_relation_size('shrink')")
        .parse()
        .unwrap();
    pg.psql("VACUUM shrink");
    let after: u64 = pg
        .psql("SELECT pg_relation_size('shrink')")
        .parse()
        .unwrap();
    assert!(
        after < before,
        "VACUUM shrinks the table: {before} -> {after}"
    );
    pg.psql(
        "CREATE TABLE fresh (id int PRIMARY KEY, pad text); \
         INSERT INTO fresh SELECT g, repeat('f', 100) FROM generate_series(1, 3000) g",
    );
    let expected = pg.psql(ROWS);

    // Nothing touches the cluster between the two deltas.
    let from = ["--delta-from-name", full.as_str()];
    let (by_summaries, log_s) = push(&store, &pg, &from, "on");
    assert!(by_summaries.contains("_D_"), "{log_s}");
    assert!(
        log_s.contains("come from the server's WAL summaries")
            && log_s.contains("changed blocks from WAL summaries"),
        "{log_s}"
    );
    let (by_scan, log_p) = push(&store, &pg, &from, "off");
    assert!(by_scan.contains("_D_"), "{log_p}");
    assert!(log_p.contains("changed blocks from a page scan"), "{log_p}");
    let (read_s, read_p) = (bytes_read(&log_s), bytes_read(&log_p));
    eprintln!("bytes read: from WAL summaries {read_s}, by page scan {read_p}");
    assert!(
        read_s * 3 < read_p,
        "the summary path reads far fewer bytes: {read_s} vs {read_p}\n{log_s}\n{log_p}"
    );

    let dirs = TempDir::new("delta-summaries");
    let (dest_s, dest_p) = (dirs.join("summaries"), dirs.join("scan"));
    fetch(&store, &by_summaries, &dest_s);
    fetch(&store, &by_scan, &dest_p);
    let (files_s, files_p) = (relation_files(&dest_s), relation_files(&dest_p));
    assert_eq!(
        files_s.keys().collect::<Vec<_>>(),
        files_p.keys().collect::<Vec<_>>(),
        "the same relation files"
    );
    // Catalog pages read between the two backups may differ in hint bits
    // alone (set without WAL, same page LSN), or be pruned by a catalog
    // read after the summary delta started (a page LSN past its start,
    // replayed from WAL on restore). A block the summaries missed would
    // hold the base's page there while the scan's page changed before the
    // summary delta's start.
    let start_s = start_lsn(&log_s);
    let mut differ = Vec::new();
    let mut hint_only = 0;
    let mut later = 0;
    for (k, v) in &files_s {
        let p = &files_p[k];
        if v.len() != p.len() {
            differ.push(format!("{k}: {} vs {} bytes", v.len(), p.len()));
            continue;
        }
        for (b, (a, c)) in v.chunks(8192).zip(p.chunks(8192)).enumerate() {
            if a == c {
                continue;
            }
            let (la, lc) = (page_lsn(a), page_lsn(c));
            if la == lc {
                hint_only += 1;
            } else if lc >= start_s {
                later += 1;
            } else {
                differ.push(format!(
                    "{k} block {b}: page LSN {la:X} from summaries, {lc:X} from the scan (summary delta started at {start_s:X})"
                ));
            }
        }
    }
    assert!(differ.is_empty(), "relation files differ: {differ:?}");
    eprintln!(
        "pages differing in hint bits only: {hint_only}; changed after the summary delta started: {later}"
    );

    std::fs::write(dest_s.join("recovery.signal"), "").unwrap();
    let mut restored = PgCluster::builder()
        .major(major)
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .conf("summarize_wal", "off")
        .conf("recovery_target", "'immediate'")
        .conf("recovery_target_action", "'promote'")
        .env(store.env())
        .start_restored(dest_s);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(restored.psql(ROWS), expected, "{}", restored.log_tail());
    restored.stop();

    // Without summarize_wal the delta says why and scans pages.
    pg.psql("ALTER SYSTEM SET summarize_wal = off");
    pg.psql("SELECT pg_reload_conf()");
    pg.wait_for_sql("SHOW summarize_wal", "off", Duration::from_secs(10));
    let (_, log_off) = push(&store, &pg, &from, "on");
    assert!(
        log_off.contains("WAL summaries cannot be used (summarize_wal is off)")
            && log_off.contains("changed blocks from a page scan"),
        "{log_off}"
    );
}
