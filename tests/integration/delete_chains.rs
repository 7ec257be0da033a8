//! `walden delete` over delta chains and two timelines (issue 15 item 1):
//! six backups of a running PostgreSQL, full and delta, the last two on
//! the timeline of a restored copy that was promoted, one of them
//! permanent:
//!
//! ```text
//! timeline 1: B1 full   B2 delta(B1)   B3 full, permanent   B4 delta(B2)
//! timeline 2: B5 full   B6 delta(B5)
//! ```
//!
//! B4 is taken against B2 across the full B3 (`--delta-from-name`), so a
//! target between a delta and its base exists. Each delete form's dry run
//! is compared with a model written here (what goes: the backups listed
//! per form, and the WAL before the target that no kept backup needs),
//! and with WAL-G 3.0.9's dry run on a copy of the same storage when
//! `WALDEN_WALG_BIN` names it (without it that part says it skips). Then
//! two deletes are confirmed and the kept backups restored (PostgreSQL
//! started on each, rows compared with what the source had when it was
//! taken): the delta whose bases walden kept, the permanent one with only
//! its own WAL left, and the newest.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use crate::harness::walg_bin;
use crate::harness::{PgCluster, TempDir, Walden};
use crate::store::Store;

const ROWS: &str = "SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) \
                    || '/' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";
const SEG: u64 = 16 << 20;

/// What a delete form should remove: the backups (indexes) that go, and
/// the target (index) WAL is cut at.
type Outcome = (Vec<usize>, usize);

/// One backup of the storage, as the test made it.
struct Made {
    name: String,
    /// Index of the delta base in the list, for deltas.
    base: Option<usize>,
    /// The source's rows when the backup was taken (no writes during it).
    rows: String,
    /// First and last WAL segment names it needs (metadata LSNs).
    wal: (String, String),
}

fn push(store: &Store, pg: &PgCluster, extra: &[&str]) -> String {
    // Files changed this close to a base's start are read whole by the
    // next delta; keep the backups (and their sentinel times) apart.
    std::thread::sleep(Duration::from_millis(1100));
    let out = store
        .walden()
        .envs(pg.env())
        .env("WALG_DELTA_MAX_STEPS", "5")
        .arg("backup-push")
        .args(extra)
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    crate::harness::scenario::pushed_backup_name(&out)
}

fn cat_json(store: &Store, key: &str) -> serde_json::Value {
    let out = store.walden().args(["st", "cat", key]).run();
    out.assert_ok();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn seg_name(timeline: &str, lsn: u64) -> String {
    let n = lsn.saturating_sub(1) / SEG;
    format!("{timeline}{:08X}{:08X}", n >> 8, n & 0xFF)
}

fn made(store: &Store, pg: &PgCluster, rows: String, extra: &[&str], base: Option<usize>) -> Made {
    let name = push(store, pg, extra);
    let meta = cat_json(store, &format!("basebackups_005/{name}/metadata.json"));
    let tl = &name["base_".len().."base_".len() + 8];
    let lsn = |f: &str| meta[f].as_u64().unwrap_or_else(|| panic!("{f} in {meta}"));
    Made {
        wal: (
            seg_name(tl, lsn("start_lsn")),
            seg_name(tl, lsn("finish_lsn")),
        ),
        name,
        base,
        rows,
    }
}

/// Every key of the storage (both prefixes), from walden's listing.
fn objects(store: &Store) -> BTreeSet<String> {
    let out = store.walden().args(["st", "ls", "-r", ""]).run();
    out.assert_ok();
    out.stdout_str()
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|k| k.starts_with("basebackups_005/") || k.starts_with("wal_005/"))
        .map(str::to_string)
        .collect()
}

/// The 24-hex run of a key (WAL-G's ordering).
fn run_of(key: &str) -> Option<String> {
    let b = key.as_bytes();
    (0..b.len().saturating_sub(23))
        .find(|&i| {
            b[i..i + 24]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
        })
        .map(|i| key[i..i + 24].to_string())
}

/// The keys a delete run says it deletes (or would delete), and its exit
/// code. Works for walden and WAL-G alike: both log
/// `Object marked for deletion: KEY storage=NAME`.
fn marked(cmd: Walden) -> (i32, BTreeSet<String>, String) {
    let out = cmd.timeout(Duration::from_secs(120)).run();
    let keys = out
        .stderr
        .lines()
        .filter_map(|l| l.split("Object marked for deletion: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|k| {
            // WAL-G may print keys with the storage root in front.
            let at = ["basebackups_005/", "wal_005/"]
                .iter()
                .filter_map(|p| k.find(p))
                .min()
                .unwrap_or(0);
            match (&k[at..], k.starts_with("base_")) {
                // `target` runs inside basebackups_005/ in WAL-G.
                (rel, true) if at == 0 => format!("basebackups_005/{rel}"),
                (rel, _) => rel.to_string(),
            }
        })
        .collect();
    (out.code, keys, out.dump())
}

/// The model: the objects of the backups `gone`, and the WAL objects
/// sorting before `target` that no kept backup needs (a kept backup needs
/// its segments from start to finish on its timeline).
fn expected(
    all: &BTreeSet<String>,
    backups: &[Made],
    gone: &[usize],
    target: usize,
) -> BTreeSet<String> {
    let boundary = run_of(&backups[target].name).unwrap();
    let kept_wal: Vec<&(String, String)> = (0..backups.len())
        .filter(|i| !gone.contains(i))
        .map(|i| &backups[i].wal)
        .collect();
    all.iter()
        .filter(|k| {
            if let Some(rel) = k.strip_prefix("basebackups_005/") {
                return gone.iter().any(|&i| {
                    let n = &backups[i].name;
                    rel.starts_with(&format!("{n}/"))
                        || rel == format!("{n}_backup_stop_sentinel.json")
                });
            }
            let Some(run) = run_of(k) else { return false };
            run < boundary
                && !kept_wal
                    .iter()
                    .any(|(a, b)| a[..8] == run[..8] && *a <= run && run <= *b)
        })
        .cloned()
        .collect()
}

fn names(keys: &BTreeSet<String>) -> String {
    keys.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Restores `b` (its chain below it too) and starts PostgreSQL on it
/// until the backup is consistent; its rows must be the source's then.
fn restore_and_compare(store: &Store, b: &Made) {
    let dir = TempDir::new("delete-chains-restore");
    dir.chown_postgres();
    let data = dir.join("data");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg(&b.name)
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut restored = PgCluster::builder()
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .conf("archive_mode", "off")
        .conf("recovery_target", "'immediate'")
        .conf("recovery_target_action", "'promote'")
        .env(store.env())
        .start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql(ROWS),
        b.rows,
        "{} restored\n{}",
        b.name,
        restored.log_tail()
    );
    restored.stop();
}

#[test]
fn delete_over_delta_chains_and_two_timelines() {
    let walg = walg_bin("the comparison with WAL-G's delete dry runs");
    let store = Store::fs();
    let archive = [
        ("archive_mode", "on"),
        ("archive_command", "'{walden} wal-push %p'"),
    ];
    let mut pg = PgCluster::builder()
        .confs(&archive)
        .env(store.env())
        .start();
    pg.pgbench_init(1);
    // WAL before the first backup, for `garbage` to find.
    let seg = pg.switch_wal();
    pg.wait_for_archive(&seg, Duration::from_secs(60));

    let mut b: Vec<Made> = Vec::new();
    let step = |pg: &PgCluster, b: &mut Vec<Made>, extra: &[&str], base: Option<usize>| {
        pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
        let rows = pg.psql(ROWS);
        let m = made(&store, pg, rows, extra, base);
        b.push(m);
    };
    step(&pg, &mut b, &["--full"], None); // B1
    step(&pg, &mut b, &[], Some(0)); // B2
    step(&pg, &mut b, &["--full"], None); // B3
    let b2 = b[1].name.clone();
    step(&pg, &mut b, &["--delta-from-name", &b2], Some(1)); // B4
    pg.pgbench(&["-n", "-t", "300", "-c", "2"]);
    let seg = pg.switch_wal();
    pg.wait_for_archive(&seg, Duration::from_secs(60));
    pg.stop();

    // Timeline 2: the newest backup restored to the end of the archive
    // and promoted, archiving into the same storage.
    let copy_dir = TempDir::new("delete-chains-tl2");
    copy_dir.chown_postgres();
    let data = copy_dir.join("data");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&data)
        .arg("LATEST")
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut tl2 = PgCluster::builder()
        .confs(&archive)
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .env(store.env())
        .start_restored(data);
    tl2.wait_for_promotion(Duration::from_secs(120));
    step(&tl2, &mut b, &["--full"], None); // B5
    step(&tl2, &mut b, &[], Some(4)); // B6
    let seg = tl2.switch_wal();
    tl2.wait_for_archive(&seg, Duration::from_secs(60));
    tl2.stop();

    // The storage is what the diagram says.
    for (i, m) in b.iter().enumerate() {
        let tl = if i < 4 { "00000001" } else { "00000002" };
        assert!(
            m.name.starts_with(&format!("base_{tl}")),
            "B{}: {}",
            i + 1,
            m.name
        );
        let s = cat_json(
            &store,
            &format!("basebackups_005/{}_backup_stop_sentinel.json", m.name),
        );
        let from = s["DeltaFrom"].as_str().filter(|s| !s.is_empty());
        assert_eq!(
            from,
            m.base.map(|i| b[i].name.as_str()),
            "B{} {}: {s}",
            i + 1,
            m.name
        );
    }
    let out = store.walden().args(["backup-mark", &b[2].name]).run();
    out.assert_ok();
    let all = objects(&store);
    assert!(
        all.iter()
            .any(|k| k.ends_with("00000002.history.lz4") || k.contains("00000002.history")),
        "{}",
        names(&all)
    );
    assert!(
        all.iter()
            .any(|k| k.starts_with("wal_005/00000002") && !k.contains("history")),
        "{}",
        names(&all)
    );

    let walden_dry = |args: &[&str]| marked(store.walden().arg("delete").args(args));
    // WAL-G reads a copy of the storage (its dry run writes nothing, but
    // a copy makes sure of it).
    let walg_copy = TempDir::new("delete-chains-walg");
    let walg_repo = walg_copy.join("repo");
    if walg.is_some() {
        let st = Command::new("cp")
            .arg("-a")
            .arg(store.object_file(""))
            .arg(&walg_repo)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let walg_dry = |args: &[&str]| {
        walg.as_ref().map(|bin| {
            marked(
                Walden::program(bin)
                    .env("WALG_FILE_PREFIX", walg_repo.display().to_string())
                    .arg("delete")
                    .args(args),
            )
        })
    };

    // Each form: walden's dry run against the model; then WAL-G's.
    // (args, backups that go, target) or an expected refusal.
    let forms: Vec<(Vec<&str>, Option<Outcome>)> = vec![
        // Target B5: B1, B2, B4 go, the permanent B3 stays with its WAL.
        (vec!["retain", "2"], Some((vec![0, 1, 3], 4))),
        (vec!["retain", "FIND_FULL", "1"], Some((vec![0, 1, 3], 4))),
        (vec!["before", &b[4].name], Some((vec![0, 1, 3], 4))),
        // Target B3: B1 and B2 sort before it but B4 is built on them:
        // they stay, with their WAL; only WAL between goes.
        (vec!["retain", "FULL", "2"], Some((vec![], 2))),
        (vec!["before", "FIND_FULL", &b[3].name], Some((vec![], 2))),
        // garbage: the oldest non-permanent backup is B1; the WAL before.
        (vec!["garbage"], Some((vec![], 0))),
        // Delta targets are refused, permanent ones too.
        (vec!["retain", "1"], None),
        (vec!["before", &b[3].name], None),
        (vec!["target", &b[2].name], None),
        (vec!["everything"], None),
    ];
    let base_keys = |i: usize| -> BTreeSet<String> {
        expected(&all, &b, &[i], b.len() - 1)
            .into_iter()
            .filter(|k| k.starts_with("basebackups_005/"))
            .collect()
    };
    for (args, want) in &forms {
        let (code, got, log) = walden_dry(args);
        match want {
            Some((gone, target)) => {
                assert_eq!(code, 0, "{args:?}: {log}");
                let exp = expected(&all, &b, gone, *target);
                assert_eq!(
                    names(&got),
                    names(&exp),
                    "walden delete {args:?} (dry run)\n{log}"
                );
                assert!(
                    exp.iter().any(|k| k.starts_with("wal_005/")),
                    "{args:?}: the model deletes some WAL"
                );
            }
            None => {
                assert_eq!(code, 1, "{args:?} must be refused: {log}");
                assert!(got.is_empty(), "{args:?}: {log}");
            }
        }
        let walg_run = walg_dry(args);
        if let (Some((wcode, wgot, wlog)), true) = (&walg_run, args[0] == "target") {
            // WAL-G 3.0.9 does not refuse a permanent target: its check
            // compares names relative to basebackups_005/ with the
            // permanent set's and never matches. walden refuses (the
            // issue: permanent backups are never deleted).
            assert_eq!(*wcode, 0, "{wlog}");
            assert_eq!(names(wgot), names(&base_keys(2)), "{wlog}");
            eprintln!("delete {args:?}: walden refuses, WAL-G would delete the permanent backup");
            continue;
        }
        if let Some((wcode, wgot, wlog)) = walg_run {
            assert_eq!(
                wcode, code,
                "exit code of WAL-G's delete {args:?}\n{wlog}\nwalden's: {log}"
            );
            // Where walden keeps delta bases WAL-G would orphan, WAL-G's
            // list is walden's plus B1 and B2 and their WAL.
            let mut theirs = got.clone();
            if matches!(want, Some((g, 2)) if g.is_empty()) {
                theirs.extend(base_keys(0));
                theirs.extend(base_keys(1));
                theirs.extend(
                    expected(&all, &b, &[0, 1, 3], 2)
                        .into_iter()
                        .filter(|k| k.starts_with("wal_005/")),
                );
            }
            eprintln!(
                "delete {args:?}: walden {} objects, WAL-G {} (exit {wcode})",
                got.len(),
                wgot.len()
            );
            assert_eq!(
                names(&wgot),
                names(&theirs),
                "WAL-G's delete {args:?} (dry run) against walden's\n{wlog}"
            );
        }
    }
    // A delta target with FIND_FULL: its full base and all built on it.
    let (code, got, log) = walden_dry(&["target", "FIND_FULL", &b[3].name]);
    assert_eq!(code, 0, "{log}");
    let mut exp = base_keys(0);
    exp.extend(base_keys(1));
    exp.extend(base_keys(3));
    assert_eq!(names(&got), names(&exp), "{log}");
    if let Some((wcode, wgot, wlog)) = walg_dry(&["target", "FIND_FULL", &b[3].name]) {
        assert_eq!(wcode, 0, "{wlog}");
        assert_eq!(
            names(&wgot),
            names(&got),
            "WAL-G's target FIND_FULL\n{wlog}"
        );
    }
    let (code, got, log) = walden_dry(&["everything", "FORCE"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(names(&got), names(&all), "{log}");
    if let Some((wcode, wgot, wlog)) = walg_dry(&["everything", "FORCE"]) {
        assert_eq!(wcode, 0, "{wlog}");
        assert_eq!(
            names(&wgot),
            names(&got),
            "WAL-G's everything FORCE\n{wlog}"
        );
    }
    assert_eq!(objects(&store), all, "dry runs deleted something");

    // Confirmed: target B3. Nothing of a backup goes; B4 (delta of B2 of
    // B1) and the permanent B3 restore.
    let before = objects(&store);
    let out = store
        .walden()
        .args(["delete", "retain", "FULL", "2", "--confirm"])
        .run();
    out.assert_ok();
    let after = objects(&store);
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(
        names(&gone),
        names(&expected(&before, &b, &[], 2)),
        "{}",
        out.dump()
    );
    restore_and_compare(&store, &b[3]);
    restore_and_compare(&store, &b[2]);

    // Confirmed: target B5. B1, B2, B4 go; the permanent B3 keeps its WAL
    // and restores alone; the newest backup (a delta on timeline 2)
    // restores.
    let out = store
        .walden()
        .args(["delete", "retain", "2", "--confirm"])
        .run();
    out.assert_ok();
    let left = objects(&store);
    let gone: BTreeSet<String> = after.difference(&left).cloned().collect();
    assert_eq!(
        names(&gone),
        names(&expected(&after, &b, &[0, 1, 3], 4)),
        "{}",
        out.dump()
    );
    let kept: BTreeMap<&str, bool> = b
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                left.contains(&format!(
                    "basebackups_005/{}_backup_stop_sentinel.json",
                    m.name
                )),
            )
        })
        .collect();
    assert_eq!(
        kept.values().filter(|&&k| k).count(),
        3,
        "B3, B5, B6 stay: {kept:?}"
    );
    restore_and_compare(&store, &b[2]);
    restore_and_compare(&store, &b[5]);
}
