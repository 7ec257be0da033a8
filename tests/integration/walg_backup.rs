//! Whole base backups between walden and WAL-G 3.0.9, on both storages:
//! walden's backup-push restored by WAL-G's backup-fetch, WAL-G's
//! backup-push restored by walden's backup-fetch, each copy started with
//! restore_command = walden wal-fetch and its rows compared with the
//! primary's; backup-list of each program prints, byte for byte, what the
//! other's does over the same backups; backup-mark of each is seen by the
//! other.
//!
//! WAL-G is not built by this repository: point `WALDEN_WALG_BIN` at a
//! PostgreSQL wal-g; without it these tests skip.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::walg_bin;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

fn walg(bin: &Path, store: &Store, method: &str) -> Walden {
    // WAL-G's file storage refuses a root that does not exist yet.
    if let Store::Fs { dir } = store {
        fs::create_dir_all(dir.join("repo")).unwrap();
    }
    Walden::program(bin)
        .envs(store.env())
        .env("WALG_COMPRESSION_METHOD", method)
        .timeout(Duration::from_secs(300))
}

fn walden(store: &Store, method: &str) -> Walden {
    store
        .walden()
        .env("WALG_COMPRESSION_METHOD", method)
        .timeout(Duration::from_secs(300))
}

#[test]
fn backups_cross_between_walden_and_walg() {
    let Some(bin) = walg_bin("WAL-G backup interoperability test") else {
        return;
    };
    for (store, method) in [(Store::fs(), "lz4"), (Store::s3(), "zstd")] {
        cross(&bin, store, method);
    }
}

/// The newest backup of `store`, by walden's listing.
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

fn cross(bin: &Path, store: Store, method: &str) {
    let what = format!("{} {method}", store.name());
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        .env(store.env())
        .env([("WALG_COMPRESSION_METHOD", method)])
        .start();
    pg.pgbench_init(2);

    walden(&store, method)
        .envs(pg.env())
        .args(["backup-push", "--add-user-data", r#"{"by":"walden"}"#])
        .run()
        .assert_ok();
    let by_walden = newest(&store);
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    std::thread::sleep(Duration::from_millis(1100));
    let data = pg.data_dir().to_path_buf();
    walg(bin, &store, method)
        .envs(pg.env())
        .arg("backup-push")
        .arg(&data)
        .run()
        .assert_ok();
    let by_walg = newest(&store);
    assert_ne!(by_walg, by_walden, "{what}: WAL-G's backup is the newest");
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'after both backups'::text AS note");
    let expected = pg.psql(ROWS);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    // Each program lists both backups exactly as the other does.
    same_lists(bin, &store, method, &what);
    // Marks cross too: WAL-G marks walden's backup, walden marks WAL-G's.
    walg(bin, &store, method)
        .args(["backup-mark", &by_walden])
        .run()
        .assert_ok();
    walden(&store, method)
        .args(["backup-mark", &by_walg])
        .run()
        .assert_ok();
    let out = walg(bin, &store, method)
        .args(["backup-list", "--detail", "--json"])
        .run();
    out.assert_ok();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for b in listed.as_array().unwrap() {
        assert_eq!(b["is_permanent"], true, "{what}: {b}");
    }
    same_lists(bin, &store, method, &what);

    // WAL-G restores walden's backup; walden restores WAL-G's.
    let dirs = TempDir::new("walg-backup");
    for (fetcher, name) in [("walg", &by_walden), ("walden", &by_walg)] {
        let dest = dirs.join(format!("{fetcher}-restored"));
        let cmd = if fetcher == "walg" {
            walg(bin, &store, method)
        } else {
            walden(&store, method)
        };
        cmd.arg("backup-fetch")
            .arg(&dest)
            .arg(name.as_str())
            .run()
            .assert_ok();
        assert!(dest.join("global/pg_control").is_file(), "{what} {fetcher}");
        fs::write(dest.join("recovery.signal"), "").unwrap();
        let mut restored = PgCluster::builder()
            .conf("restore_command", "'{walden} wal-fetch %f %p'")
            .conf("archive_mode", "off")
            .env(store.env())
            .env([("WALG_COMPRESSION_METHOD", method)])
            .start_restored(dest.clone());
        restored.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(
            restored.psql(ROWS),
            expected,
            "{what}: {fetcher} restored {name}\n{}",
            restored.log_tail()
        );
        assert_eq!(
            restored.psql("SELECT note FROM marker"),
            "after both backups"
        );
        restored.stop();
    }
}

/// backup-list in every format: walden's stdout equals WAL-G's.
fn same_lists(bin: &Path, store: &Store, method: &str, what: &str) {
    for flags in [
        &[][..],
        &["--pretty"],
        &["--json"],
        &["--detail"],
        &["--detail", "--pretty"],
        &["--detail", "--json"],
        &["--detail", "--json", "--pretty"],
    ] {
        let theirs = walg(bin, store, method)
            .arg("backup-list")
            .args(flags.iter().copied())
            .run();
        theirs.assert_ok();
        let ours = walden(store, method)
            .arg("backup-list")
            .args(flags.iter().copied())
            .run();
        ours.assert_ok();
        assert_eq!(
            ours.stdout_str(),
            theirs.stdout_str(),
            "{what}: backup-list {flags:?}"
        );
        assert!(
            ours.stdout_str().matches("base_").count() >= 2,
            "{what}: both backups listed: {}",
            ours.stdout_str()
        );
    }
}
