//! backup-list, backup-mark and backup-show on both storages: two real
//! backups of a running PostgreSQL, a planted delta chain, and the ways
//! they must refuse (unknown name, damaged sentinel or metadata).

use std::fs;

use serde_json::Value;

use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

#[test]
fn backup_list_mark_show_on_both_storages() {
    for store in Store::both() {
        list_mark_show(store);
    }
}

fn json(out: &crate::harness::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.dump()))
}

fn list_mark_show(store: Store) {
    let what = store.name();
    // Nothing there yet: WAL-G's answers.
    let out = store.walden().arg("backup-list").run();
    out.assert_ok();
    assert!(out.stdout.is_empty(), "{what}: {}", out.dump());
    assert!(out.stderr.contains("INFO: "), "{}", out.dump());
    assert!(out.stderr.contains("No backups found"), "{}", out.dump());
    let out = store.walden().args(["backup-list", "--json"]).run();
    out.assert_ok();
    assert_eq!(out.stdout_str(), "[]\n", "{what}");
    let out = store.walden().args(["backup-show", "LATEST"]).run();
    out.assert_code(1);
    assert!(out.stderr.contains("no backups found"), "{}", out.dump());

    let pg = PgCluster::builder().start();
    pg.pgbench_init(1);
    let push = |user: &str| {
        store
            .walden()
            .envs(pg.env())
            .env("WALG_COMPRESSION_METHOD", "zstd")
            .args(["backup-push", "--add-user-data", user])
            .run()
            .assert_ok();
    };
    push(r#"{"n":1}"#);
    pg.psql("CREATE TABLE t AS SELECT 1 AS x");
    // Sentinel times are what orders backups; keep them apart.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    push(r#"{"n":2,"tag":"<b&b>"}"#);

    let out = store.walden().arg("backup-list").run();
    out.assert_ok();
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{what}: {text}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["backup_name", "modified", "wal_file_name", "storage_name"]
    );
    let names: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("base_")), "{text}");
    assert_ne!(names[0], names[1]);
    for l in &lines[1..] {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            cols[2],
            &cols[0][5..29],
            "wal_file_name is the name's segment"
        );
        assert_eq!(cols[3], "default");
        assert!(cols[1].ends_with('Z') && cols[1].len() == 20, "{l}");
    }

    // --detail --json: the metadata of each, oldest first.
    let out = store
        .walden()
        .args(["backup-list", "--detail", "--json"])
        .run();
    out.assert_ok();
    let list = json(&out);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (i, b) in list.iter().enumerate() {
        assert_eq!(b["backup_name"], names[i].as_str());
        assert_eq!(b["user_data"]["n"], i as u64 + 1);
        assert_eq!(b["is_permanent"], false);
        assert_eq!(b["pg_version"].as_u64().unwrap() / 10000, 15);
        assert!(b["finish_lsn"].as_u64() > b["start_lsn"].as_u64());
        let sentinel: Value = serde_json::from_slice(
            &fs::read(store.object_file(&format!(
                "basebackups_005/{}_backup_stop_sentinel.json",
                names[i]
            )))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(b["start_lsn"], sentinel["LSN"]);
        assert_eq!(b["system_identifier"], sentinel["SystemIdentifier"]);
    }
    // Go's HTML escaping in the raw output.
    assert!(
        out.stdout_str().contains(r#""tag":"\u003cb\u0026b\u003e""#),
        "{}",
        out.dump()
    );
    let out = store
        .walden()
        .args(["backup-list", "--detail", "--pretty"])
        .run();
    out.assert_ok();
    let pretty = out.stdout_str();
    assert!(pretty.starts_with("+---+"), "{pretty}");
    assert!(pretty.contains("| # | BACKUP NAME"), "{pretty}");
    assert!(pretty.contains(" PERMANENT |"), "{pretty}");
    assert_eq!(pretty.lines().count(), 6, "{pretty}");

    // backup-show: LATEST is the second; people's lines and JSON agree.
    let out = store.walden().args(["backup-show", "LATEST"]).run();
    out.assert_ok();
    let shown = out.stdout_str();
    assert!(
        shown.starts_with(&format!("backup_name:             {}\n", names[1])),
        "{shown}"
    );
    assert!(
        shown.contains("\nis_permanent:            false\n"),
        "{shown}"
    );
    assert!(
        shown.contains("\nfiles_metadata_disabled: false\n"),
        "{shown}"
    );
    let out = store
        .walden()
        .args(["backup-show", &names[0], "--json"])
        .run();
    out.assert_ok();
    let one = json(&out);
    assert_eq!(one["backup_name"], names[0].as_str());
    assert_eq!(one["start_lsn"], list[0]["start_lsn"]);
    assert_eq!(one["sentinel_version"], 2);
    assert_eq!(one["tablespaces"], serde_json::json!([]));
    assert!(one.get("delta_from").is_none());

    // backup-mark: metadata.json changes, the sentinel does not (so
    // LATEST and the order stay).
    let sentinel_key = format!("basebackups_005/{}_backup_stop_sentinel.json", names[0]);
    let sentinel_before = fs::read(store.object_file(&sentinel_key)).unwrap();
    let meta_key = format!("basebackups_005/{}/metadata.json", names[0]);
    let meta_before = fs::read_to_string(store.object_file(&meta_key)).unwrap();
    store
        .walden()
        .args(["backup-mark", &names[0]])
        .run()
        .assert_ok();
    let meta_after = fs::read_to_string(store.object_file(&meta_key)).unwrap();
    assert_eq!(
        meta_after,
        meta_before.replace("\"is_permanent\":false", "\"is_permanent\":true"),
        "only the flag changes"
    );
    assert_ne!(meta_after, meta_before);
    assert_eq!(
        fs::read(store.object_file(&sentinel_key)).unwrap(),
        sentinel_before
    );
    let out = store
        .walden()
        .args(["backup-list", "--detail", "--json"])
        .run();
    let after = json(&out);
    assert_eq!(after[0]["backup_name"], names[0].as_str(), "order kept");
    assert_eq!(after[0]["is_permanent"], true);
    assert_eq!(after[1]["is_permanent"], false);
    // Again: a warning, nothing rewritten.
    let out = store.walden().args(["backup-mark", &names[0]]).run();
    out.assert_ok();
    assert!(
        out.stderr
            .contains("is already marked as permanent, ignoring..."),
        "{}",
        out.dump()
    );
    store
        .walden()
        .args(["backup-mark", "-i", &names[0]])
        .run()
        .assert_ok();
    assert_eq!(
        fs::read_to_string(store.object_file(&meta_key)).unwrap(),
        meta_before
    );

    // A delta chain (WAL-G's DeltaFrom) planted on top of the second
    // backup: marking the delta marks its base; -i on the base is refused
    // while the delta is permanent.
    let scratch = TempDir::new("catalog");
    let delta = format!("base_00000001000000000000007F_D_{}", &names[1][5..]);
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{delta}/metadata.json"),
        br#"{"start_time":"2099-01-01T00:00:00Z","finish_time":"2099-01-01T00:00:01Z","is_permanent":false}"#,
    );
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{delta}_backup_stop_sentinel.json"),
        format!(
            r#"{{"LSN":2130706472,"DeltaLSN":1,"DeltaFrom":"{0}","DeltaFullName":"{0}","DeltaCount":1,"PgVersion":150000,"FinishLSN":2130706600}}"#,
            names[1]
        )
        .as_bytes(),
    );
    let out = store.walden().args(["backup-mark", &delta]).run();
    out.assert_ok();
    assert!(
        out.stderr
            .contains(&format!("marking: [{} {delta}]", names[1])),
        "bases first: {}",
        out.dump()
    );
    let out = store
        .walden()
        .args(["backup-list", "--detail", "--json"])
        .run();
    let marked = json(&out);
    let perm = |n: &str| {
        marked
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backup_name"] == n)
            .unwrap()["is_permanent"]
            .clone()
    };
    assert_eq!(perm(&names[0]), false);
    assert_eq!(perm(&names[1]), true);
    assert_eq!(perm(&delta), true);
    let out = store.walden().args(["backup-mark", "-i", &names[1]]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "Can't mark backup '{}' as impermanent. There is permanent increment backup that depends on this backup.",
            names[1]
        )),
        "{}",
        out.dump()
    );
    let out = store.walden().args(["backup-show", &delta]).run();
    out.assert_ok();
    assert!(
        out.stdout_str()
            .contains(&format!("\ndelta_from:              {}\n", names[1])),
        "{}",
        out.dump()
    );
    store
        .walden()
        .args(["backup-mark", "-i", &delta])
        .run()
        .assert_ok();
    store
        .walden()
        .args(["backup-mark", "-i", &names[1]])
        .run()
        .assert_ok();

    // Bad input.
    let unknown = "base_0000000100000000000000FF";
    for args in [
        vec!["backup-show", unknown],
        vec!["backup-mark", unknown],
        vec!["backup-mark", "-i", unknown],
    ] {
        let out = store.walden().args(&args).run();
        out.assert_code(1);
        assert!(
            out.stderr.contains(&format!("backup {unknown} not found")),
            "{args:?}: {}",
            out.dump()
        );
    }
    for args in [
        vec!["backup-show", "../etc"],
        vec!["backup-mark", "a/b"],
        vec!["backup-list", "--bogus"],
        vec!["backup-show"],
        vec!["backup-mark"],
    ] {
        let out = store.walden().args(&args).run();
        out.assert_code(1);
        assert!(
            out.stderr.contains("usage: walden backup-"),
            "{args:?}: {}",
            out.dump()
        );
    }
    // A damaged sentinel: listed by name (backup-list reads no sentinel),
    // refused with its key where it must be read.
    let broken = "base_000000010000000000000070";
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{broken}_backup_stop_sentinel.json"),
        b"{\"LSN\":12,",
    );
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{broken}/metadata.json"),
        br#"{"start_time":"2099-02-01T00:00:00Z","is_permanent":false}"#,
    );
    let out = store.walden().arg("backup-list").run();
    out.assert_ok();
    assert!(out.stdout_str().contains(broken), "{}", out.dump());
    for args in [vec!["backup-show", broken], vec!["backup-mark", broken]] {
        let out = store.walden().args(&args).run();
        out.assert_code(1);
        assert!(
            out.stderr.contains(&format!(
                "sentinel 'basebackups_005/{broken}_backup_stop_sentinel.json' is not valid JSON"
            )),
            "{args:?}: {}",
            out.dump()
        );
    }
    // -i reads every sentinel to find deltas: the damaged one stops it.
    let out = store.walden().args(["backup-mark", "-i", &names[0]]).run();
    out.assert_code(1);
    assert!(out.stderr.contains("is not valid JSON"), "{}", out.dump());
    // Damaged metadata: --detail fails as WAL-G's does, naming the object.
    store.put_raw(
        scratch.path(),
        &format!("basebackups_005/{broken}/metadata.json"),
        br#"{"start_lsn":"0/1"}"#,
    );
    let out = store.walden().args(["backup-list", "--detail"]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "'basebackups_005/{broken}/metadata.json': field start_lsn"
        )),
        "{}",
        out.dump()
    );
    assert!(out.stdout.is_empty(), "no half table: {}", out.dump());
}
