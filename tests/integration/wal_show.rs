//! wal-show and wal-verify against WAL that a real PostgreSQL archived with
//! wal-push: a healthy archive is one complete timeline and verifies OK; a
//! segment deleted in the middle shows as a gap and makes the integrity
//! check FAIL (MISSING_LOST); a restored copy promoted to timeline 2 adds a
//! second timeline with its parent and switch point, and the old primary
//! is then behind (timeline check FAILURE). With `WALDEN_WALG_BIN`, WAL-G
//! 3.0.9 prints the same bytes at each of these states.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{walden_bin_for_postgres, PgCluster, TempDir, Walden};
use crate::store::Store;

fn archiving_cluster(store: &Store) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .conf("archive_timeout", "0")
        .env(store.env())
        .start()
}

/// Close `n` segments with some rows in each; returns the last closed.
fn switches(pg: &PgCluster, n: usize) -> String {
    let mut last = String::new();
    for _ in 0..n {
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
        last = pg.switch_wal();
    }
    pg.wait_for_archive(&last, Duration::from_secs(60));
    // WAL past the boundary: the current segment is the next one.
    pg.psql("INSERT INTO t VALUES (0)");
    last
}

fn json_of(out: &crate::harness::Output) -> Value {
    out.assert_ok();
    serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.dump()))
}

fn wal_show(store: &Store, args: &[&str]) -> crate::harness::Output {
    store.walden().arg("wal-show").args(args.to_vec()).run()
}

fn wal_verify(store: &Store, pg: &PgCluster, args: &[&str]) -> crate::harness::Output {
    store
        .walden()
        .envs(pg.env())
        // One segment may be "uploading": everything older must be there.
        .env("WALG_UPLOAD_CONCURRENCY", "1")
        .arg("wal-verify")
        .args(args.to_vec())
        .run()
}

/// With `WALDEN_WALG_BIN` (WAL-G 3.0.9): WAL-G prints the same bytes for
/// every wal-show form and for each wal-verify check against `pg`.
fn same_as_walg(store: &Store, pg: &PgCluster) {
    let forms: [&[&str]; 8] = [
        &["wal-show"],
        &["wal-show", "--without-backups"],
        &["wal-show", "--detailed-json"],
        &["wal-show", "--detailed-json", "--without-backups"],
        &["wal-verify", "integrity"],
        &["wal-verify", "timeline"],
        &["wal-verify", "integrity", "--json"],
        &["wal-verify", "timeline", "integrity", "--json"],
    ];
    same_as_walg_in(store, pg, &forms);
}

/// [`same_as_walg`] for the given argument lists.
fn same_as_walg_in(store: &Store, pg: &PgCluster, forms: &[&[&str]]) {
    let Some(bin) = std::env::var_os("WALDEN_WALG_BIN").filter(|p| !p.is_empty()) else {
        eprintln!("WALDEN_WALG_BIN not set: skipping the comparison with WAL-G");
        return;
    };
    for &args in forms {
        let run = |w: Walden| {
            w.envs(store.env())
                .envs(pg.env())
                .env("WALG_UPLOAD_CONCURRENCY", "1")
                .args(args.to_vec())
                .run()
        };
        let ours = run(Walden::new());
        let theirs = run(Walden::program(&bin));
        ours.assert_ok();
        theirs.assert_ok();
        assert_eq!(
            ours.stdout_str(),
            theirs.stdout_str(),
            "{args:?} on {}\nwalden: {}\nWAL-G: {}",
            store.name(),
            ours.dump(),
            theirs.dump()
        );
    }
}

fn segment_after(name: &str) -> String {
    let n = u64::from_str_radix(&name[16..], 16).unwrap() + 1;
    format!("{}{:08X}", &name[..16], n)
}

/// The table row of timeline `tli` as its cells.
fn table_row(text: &str, tli: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(tli))
        .unwrap_or_else(|| panic!("no row for timeline {tli}:\n{text}"))
}

#[test]
fn wal_show_and_verify_find_a_deleted_segment() {
    for store in Store::both() {
        let pg = archiving_cluster(&store);
        pg.psql("CREATE TABLE t (i int)");
        switches(&pg, 2);
        store
            .walden()
            .envs(pg.env())
            .arg("backup-push")
            .timeout(Duration::from_secs(120))
            .run()
            .assert_ok();
        let backup_start = store
            .walden()
            .args(["backup-list", "--json"])
            .run()
            .stdout_str();
        let backups: Value = serde_json::from_str(&backup_start).unwrap();
        let backup_name = backups[0]["backup_name"].as_str().unwrap().to_string();
        let backup_segment = backups[0]["wal_file_name"].as_str().unwrap().to_string();
        let last = switches(&pg, 5);

        // Healthy: segment 1 up to the last one archived, no hole.
        let shown = json_of(&wal_show(&store, &["--detailed-json"]));
        let tls = shown.as_array().unwrap();
        assert_eq!(tls.len(), 1, "{}: {shown}", store.name());
        let t = &tls[0];
        assert_eq!(t["id"], 1);
        assert_eq!(t["parent_id"], 0);
        assert_eq!(t["start_segment"], "000000010000000000000001");
        assert_eq!(t["end_segment"], last.as_str());
        let size = u64::from_str_radix(&last[16..], 16).unwrap();
        assert_eq!(t["segment_range_size"], size);
        assert_eq!(t["segments_count"], size);
        assert_eq!(t["missing_segments"], serde_json::json!([]));
        assert_eq!(t["status"], "OK");
        assert_eq!(t["backups"][0]["backup_name"], backup_name.as_str());
        let table = wal_show(&store, &[]);
        table.assert_ok();
        let text = table.stdout_str();
        assert!(
            text.contains("| TLI | PARENT TLI | SWITCHPOINT LSN | START SEGMENT "),
            "{text}"
        );
        assert_eq!(
            table_row(&text, "1"),
            [
                "1",
                "0",
                "0/0",
                "000000010000000000000001",
                &last,
                &size.to_string(),
                &size.to_string(),
                "OK",
                "1",
            ]
        );
        let verified = json_of(&wal_verify(
            &store,
            &pg,
            &["integrity", "timeline", "--json"],
        ));
        assert_eq!(verified["integrity"]["status"], "OK", "{verified}");
        let details = verified["integrity"]["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "{verified}");
        assert_eq!(details[0]["status"], "FOUND");
        assert_eq!(details[0]["start_segment"], backup_segment.as_str());
        assert_eq!(details[0]["end_segment"], last.as_str());
        assert_eq!(verified["timeline"]["status"], "OK");
        assert_eq!(verified["timeline"]["details"]["current_timeline_id"], 1);
        same_as_walg(&store, &pg);

        // From a given position (no server asked) and from a named backup.
        let lsn = pg.psql("SELECT pg_current_wal_lsn()");
        let at = [
            "wal-verify",
            "integrity",
            "--json",
            "--timeline",
            "1",
            "--lsn",
            &lsn,
        ];
        let verified = json_of(&store.walden().args(at).run());
        assert_eq!(
            verified["integrity"]["details"][0]["end_segment"],
            last.as_str()
        );
        let named = ["wal-verify", "integrity", "--backup-name", &backup_name];
        let out = wal_verify(&store, &pg, &named[1..]);
        out.assert_ok();
        assert!(
            out.stdout_str()
                .contains(&format!("| {backup_segment} | {last} |")),
            "{}",
            out.dump()
        );
        same_as_walg_in(&store, &pg, &[&at, &named]);

        // A segment after the backup's start goes missing.
        let gone = segment_after(&backup_segment);
        store
            .walden()
            .args(["st", "rm", &format!("wal_005/{gone}.lz4")])
            .run()
            .assert_ok();
        let shown = json_of(&wal_show(&store, &["--detailed-json", "--without-backups"]));
        let t = &shown[0];
        assert_eq!(t["status"], "LOST_SEGMENTS", "{shown}");
        assert_eq!(t["missing_segments"], serde_json::json!([gone]));
        assert_eq!(t["segments_count"], size - 1);
        assert!(t.get("backups").is_none());
        let text = wal_show(&store, &["--without-backups"]).stdout_str();
        assert!(!text.contains("BACKUPS COUNT"), "{text}");
        assert!(text.contains("| LOST_SEGMENTS |"), "{text}");

        let out = wal_verify(&store, &pg, &["integrity", "--json"]);
        let verified = json_of(&out);
        assert_eq!(verified["integrity"]["status"], "FAILURE", "{verified}");
        assert!(verified.get("timeline").is_none());
        let lost: Vec<&Value> = verified["integrity"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["status"] == "MISSING_LOST")
            .collect();
        assert_eq!(lost.len(), 1, "{verified}");
        assert_eq!(lost[0]["start_segment"], gone.as_str());
        assert_eq!(lost[0]["end_segment"], gone.as_str());
        assert_eq!(lost[0]["segments_count"], 1);
        // The plain text says the same; the exit code stays 0 as WAL-G's.
        let out = wal_verify(&store, &pg, &["integrity"]);
        out.assert_ok();
        let text = out.stdout_str();
        assert!(
            text.starts_with("[wal-verify] integrity check status: FAILURE\n[wal-verify] integrity check details:\n"),
            "{text}"
        );
        assert!(text.contains(&format!("| {gone} | {gone} |")), "{text}");
        assert!(text.contains("| MISSING_LOST |"), "{text}");
        same_as_walg(&store, &pg);
    }
}

#[test]
fn wal_show_sees_the_timeline_of_a_promoted_copy() {
    let store = Store::fs();
    let pg = archiving_cluster(&store);
    pg.psql("CREATE TABLE t (i int)");
    switches(&pg, 2);
    store
        .walden()
        .envs(pg.env())
        .arg("backup-push")
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();
    switches(&pg, 2);

    // Restore the backup and promote it as soon as it is consistent:
    // timeline 2, archived through the same storage.
    let scratch = TempDir::new("walshow");
    scratch.chown_postgres();
    let bin = walden_bin_for_postgres(scratch.path());
    let dest: PathBuf = scratch.join("restored");
    Walden::program(&bin)
        .envs(store.env())
        .arg("backup-fetch")
        .arg(&dest)
        .args(["LATEST", "--recovery-target", "immediate"])
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();
    let restored = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(store.env())
        .start_restored(dest);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    restored.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let last = restored.switch_wal();
    restored.wait_for_archive(&last, Duration::from_secs(60));
    restored.psql("INSERT INTO t VALUES (0)");
    assert!(last.starts_with("00000002"), "{last}");

    let shown = json_of(&wal_show(&store, &["--detailed-json"]));
    let tls = shown.as_array().unwrap();
    assert_eq!(tls.len(), 2, "{shown}");
    assert_eq!(tls[0]["id"], 1);
    assert_eq!(tls[1]["id"], 2);
    assert_eq!(tls[1]["parent_id"], 1);
    assert_eq!(tls[1]["end_segment"], last.as_str());
    assert_eq!(tls[1]["status"], "OK");
    let switch_lsn = tls[1]["switch_point_lsn"].as_u64().unwrap();
    assert!(switch_lsn > 0, "{shown}");
    // The switch point is where timeline 2's first segment lies.
    let first2 = tls[1]["start_segment"].as_str().unwrap();
    assert_eq!(
        u64::from_str_radix(&first2[16..], 16).unwrap(),
        switch_lsn >> 24,
        "{shown}"
    );
    // The backup was taken on timeline 1 and belongs there.
    assert_eq!(tls[0]["backups"].as_array().unwrap().len(), 1, "{shown}");
    assert!(tls[1].get("backups").is_none(), "{shown}");
    let text = wal_show(&store, &[]).stdout_str();
    let row = table_row(&text, "2");
    assert_eq!(row[1], "1");
    assert_eq!(
        row[2],
        format!("{:X}/{:X}", switch_lsn >> 32, switch_lsn as u32)
    );

    // From the promoted copy: the walk crosses the switch to timeline 1
    // down to the backup, all found; it is on the highest timeline.
    let verified = json_of(&wal_verify(
        &store,
        &restored,
        &["timeline", "integrity", "--json"],
    ));
    assert_eq!(verified["integrity"]["status"], "OK", "{verified}");
    let groups = verified["integrity"]["details"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{verified}");
    assert_eq!(groups[0]["timeline_id"], 1);
    assert_eq!(groups[1]["timeline_id"], 2);
    assert_eq!(groups[1]["start_segment"], first2);
    assert_eq!(verified["timeline"]["status"], "OK");
    assert_eq!(
        verified["timeline"]["details"]["highest_storage_timeline_id"],
        2
    );
    same_as_walg(&store, &restored);
    same_as_walg(&store, &pg);
    // The old primary is behind the storage now: split brain.
    let out = wal_verify(&store, &pg, &["timeline"]);
    out.assert_ok();
    assert_eq!(
        out.stdout_str(),
        "[wal-verify] timeline check status: FAILURE\n[wal-verify] timeline check details:\n\
         Highest timeline found in storage: 2\nCurrent cluster timeline: 1\n"
    );
}
