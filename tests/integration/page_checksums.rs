//! backup-push `--verify` (`WALG_VERIFY_PAGE_CHECKSUMS`) and
//! `--store-all-corrupt`: PostgreSQL's page checksums checked on every
//! page read, corrupt block numbers in files_metadata.json as WAL-G
//! records them, the log's summary, `backup-list --detail`, and
//! backup-verify finding the same pages in the stored backup.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::tmp::running_as_root;
use crate::harness::{Output, PgCluster};
use crate::store::Store;

const BLCKSZ: u64 = 8192;

fn cluster(store: &Store) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start()
}

fn push(store: &Store, pg: &PgCluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = store
        .walden()
        .envs(pg.env())
        .envs(env.iter().copied())
        .arg("backup-push")
        .args(args)
        .run();
    out.assert_ok();
    out
}

fn latest(store: &Store) -> String {
    let out = store.walden().args(["backup-list", "--json"]).run();
    out.assert_ok();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().last().unwrap()["backup_name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn object_json(store: &Store, name: &str, file: &str) -> Value {
    let path = store.object_file(&format!("basebackups_005/{name}/{file}"));
    serde_json::from_slice(&fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `Files` entry that has `CorruptBlocks`, by member name.
fn corrupt_entries(store: &Store, name: &str) -> Vec<(String, Value)> {
    let meta = object_json(store, name, "files_metadata.json");
    let mut found: Vec<(String, Value)> = meta["Files"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| v.get("CorruptBlocks").map(|c| (k.clone(), c.clone())))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A table of at least `pages` pages whose pages the server will not
/// write again on its own: frozen, written out, autovacuum off.
fn quiet_table(pg: &PgCluster, name: &str, pages: u32) -> (String, PathBuf) {
    pg.psql(&format!(
        "CREATE TABLE {name} (id int, pad text) WITH (autovacuum_enabled = off, fillfactor = 100); \
         INSERT INTO {name} SELECT g, repeat('x', 200) FROM generate_series(1, {}) g",
        pages * 36
    ));
    pg.psql(&format!("VACUUM FREEZE {name}"));
    pg.psql("CHECKPOINT");
    let got: u32 = pg
        .psql(&format!("SELECT pg_relation_size('{name}') / 8192"))
        .parse()
        .unwrap();
    assert!(got >= pages, "{name} has {got} pages");
    let rel = pg.psql(&format!("SELECT pg_relation_filepath('{name}')"));
    (format!("/{rel}"), pg.data_dir().join(rel))
}

/// Flip one byte in the tuple area of `block`: the page's LSN stays
/// older than any later backup's start, so the page is judged.
fn flip(file: &PathBuf, block: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let at = block * BLCKSZ + 6000;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// A clean cluster reports no corrupt page; one flipped byte in a user
/// table is reported with its block number in files_metadata.json (WAL-G's
/// `CorruptBlocks`), in a WARNING naming the file, in the summary line
/// and, as a log line, by `backup-list --detail`, whose stdout stays
/// WAL-G's. At most ten block numbers unless `--store-all-corrupt`.
#[test]
fn verify_reports_corrupt_blocks() {
    let store = Store::fs();
    let pg = cluster(&store);
    let (t_member, t_file) = quiet_table(&pg, "t", 4);
    let (u_member, u_file) = quiet_table(&pg, "u", 12);

    // Clean: a summary line, no CorruptBlocks, the count 0.
    let out = push(&store, &pg, &["--verify"], &[]);
    assert!(
        out.stderr.contains("Page checksums verified:") && out.stderr.contains("no corrupt page"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("Corruption found"), "{}", out.dump());
    let clean = latest(&store);
    assert_eq!(corrupt_entries(&store, &clean), vec![]);
    assert_eq!(
        object_json(&store, &clean, "metadata.json")["walden_corrupt_pages"],
        json!(0)
    );

    // Without --verify nothing is checked and nothing recorded.
    let out = push(&store, &pg, &[], &[]);
    assert!(!out.stderr.contains("Page checksums"), "{}", out.dump());
    let unverified = latest(&store);
    assert!(object_json(&store, &unverified, "metadata.json")
        .get("walden_corrupt_pages")
        .is_none());

    flip(&t_file, 2);
    for block in 0..12 {
        flip(&u_file, block);
    }
    let out = push(&store, &pg, &[], &[("WALG_VERIFY_PAGE_CHECKSUMS", "true")]);
    assert!(
        out.stderr.lines().any(|l| l.contains("WARNING")
            && l.contains("Corruption found in /")
            && l.contains(&format!("{t_member}: 1 corrupt page(s), blocks [2]"))),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("13 corrupt page(s) in 2 file(s)"),
        "{}",
        out.dump()
    );
    let bad = latest(&store);
    assert_eq!(
        corrupt_entries(&store, &bad),
        vec![
            (
                t_member.clone(),
                json!({"CorruptBlocksCount": 1, "SomeCorruptBlocks": [2]})
            ),
            (
                u_member.clone(),
                json!({"CorruptBlocksCount": 12, "SomeCorruptBlocks": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]})
            ),
        ]
    );
    assert_eq!(
        object_json(&store, &bad, "metadata.json")["walden_corrupt_pages"],
        json!(13)
    );

    // backup-verify reads the stored pages and names tar and member.
    let check = store.walden().args(["backup-verify", &bad]).run();
    check.assert_code(1);
    let report = check.stdout_str();
    assert!(
        report.lines().any(|l| l.contains("/tar_partitions/part_")
            && l.contains(&format!(
                "member '{t_member}': 1 page(s) fail PostgreSQL's page check, blocks [2]"
            ))),
        "{}",
        check.dump()
    );
    store
        .walden()
        .args(["backup-verify", &clean])
        .run()
        .assert_ok();

    push(&store, &pg, &["--verify", "--store-all-corrupt"], &[]);
    let all = latest(&store);
    let entries = corrupt_entries(&store, &all);
    assert_eq!(
        entries[1].1,
        json!({"CorruptBlocksCount": 12, "SomeCorruptBlocks": (0..12).collect::<Vec<u32>>()})
    );

    // backup-list --detail: stdout as WAL-G's, the counts in the log.
    let plain = store.walden().args(["backup-list", "--detail"]).run();
    plain.assert_ok();
    let stdout = plain.stdout_str();
    assert!(!stdout.contains("corrupt"), "{stdout}");
    assert_eq!(
        stdout.lines().count(),
        5,
        "header and four backups: {stdout}"
    );
    assert!(
        plain.stderr.contains(&format!(
            "Backup {bad}: 13 corrupt page(s) found by --verify"
        )),
        "{}",
        plain.dump()
    );
    assert!(
        plain.stderr.contains(&format!(
            "Backup {clean}: page checksums verified at backup time, no corrupt page"
        )),
        "{}",
        plain.dump()
    );
    assert!(!plain.stderr.contains(&format!("Backup {unverified}")));
    let js = store
        .walden()
        .args(["backup-list", "--detail", "--json"])
        .run();
    js.assert_ok();
    let rows: Value = serde_json::from_slice(&js.stdout).unwrap();
    assert!(rows[0].get("walden_corrupt_pages").is_none());
}

/// Pages written while the backup reads them (pgbench) are not reported:
/// a page newer than the backup's start is left to WAL replay and a torn
/// read is read again, as PostgreSQL's own base backup does.
#[test]
fn verify_under_load_reports_nothing() {
    let store = Store::fs();
    let pg = cluster(&store);
    pg.pgbench_init(10);
    let out = std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "4", "-c", "4"]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = store
            .walden()
            .envs(pg.env())
            .env("WALG_UPLOAD_DISK_CONCURRENCY", "2")
            .env("WALG_STOP_BACKUP_TIMEOUT", "120s")
            .args(["backup-push", "--verify"])
            .timeout(std::time::Duration::from_secs(300))
            .run();
        out.assert_ok();
        load.join().unwrap();
        out
    });
    assert!(!out.stderr.contains("Corruption found"), "{}", out.dump());
    assert!(out.stderr.contains("no corrupt page"), "{}", out.dump());
    assert_eq!(corrupt_entries(&store, &latest(&store)), vec![]);
}

/// A cluster without data checksums: `--verify` says so once and the
/// backup is taken unverified.
#[test]
fn verify_without_data_checksums_says_so() {
    let store = Store::fs();
    let mut pg = cluster(&store);
    pg.stop();
    let tool = "/usr/lib/postgresql/15/bin/pg_checksums";
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", tool]);
        c
    } else {
        Command::new(tool)
    };
    let st = cmd
        .arg("--disable")
        .arg("-D")
        .arg(pg.data_dir())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    pg.start_server();
    assert_eq!(pg.psql("SHOW data_checksums"), "off");
    let out = push(&store, &pg, &["--verify"], &[]);
    assert_eq!(
        out.stderr.matches("without data checksums").count(),
        1,
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("Page checksums verified"));
    let name = latest(&store);
    assert!(object_json(&store, &name, "metadata.json")
        .get("walden_corrupt_pages")
        .is_none());
}

/// `--verify` on delta backups: the pages an increment stores are checked
/// as a full file's are. A table changed after the base is stored as an
/// increment; clean, it reports nothing; with a byte flipped in one of
/// its changed pages the delta names that block under the increment's
/// `CorruptBlocks`, in the WARNING and in the summary.
#[test]
fn verify_checks_the_pages_of_increments() {
    let store = Store::fs();
    let pg = cluster(&store);
    let (t_member, t_file) = quiet_table(&pg, "t", 8);
    let delta = [("WALG_DELTA_MAX_STEPS", "5")];
    push(&store, &pg, &["--verify"], &delta);
    let base = latest(&store);
    assert!(!base.contains("_D_"), "{base}");
    // Rows of block 0 and block 5 updated: their pages (and the new
    // versions' page) get LSNs after the base's start.
    let change = |row: u32| {
        pg.psql(&format!(
            "UPDATE t SET id = id WHERE ctid IN ('(0,{row})', '(5,{row})')"
        ));
        pg.psql("CHECKPOINT");
    };
    change(1);
    let entry = |name: &str| -> Value {
        object_json(&store, name, "files_metadata.json")["Files"][&t_member].clone()
    };

    let out = push(&store, &pg, &["--verify"], &delta);
    let clean = latest(&store);
    assert!(clean.contains("_D_"), "{clean}");
    assert_eq!(
        entry(&clean)["IsIncremented"],
        json!(true),
        "{}",
        out.dump()
    );
    assert!(entry(&clean).get("CorruptBlocks").is_none());
    assert!(out.stderr.contains("no corrupt page"), "{}", out.dump());

    change(2);
    flip(&t_file, 5);
    let out = push(
        &store,
        &pg,
        &[],
        &[delta[0], ("WALG_VERIFY_PAGE_CHECKSUMS", "true")],
    );
    let bad = latest(&store);
    assert!(bad.contains("_D_") && bad != clean, "{bad}");
    let e = entry(&bad);
    assert_eq!(e["IsIncremented"], json!(true), "{}", out.dump());
    assert_eq!(
        e["CorruptBlocks"],
        json!({"CorruptBlocksCount": 1, "SomeCorruptBlocks": [5]}),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("WARNING") && l.contains("1 corrupt page(s), blocks [5]")),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("1 corrupt page(s) in 1 file(s)"),
        "{}",
        out.dump()
    );
    // The other tables' increments and whole files are clean.
    assert_eq!(corrupt_entries(&store, &bad).len(), 1);
}
