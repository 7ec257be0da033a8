//! wal-restore before a real pg_rewind: a primary (alpha) archives with
//! walden, its standby (beta) is promoted, both write on (diverge), and
//! both lose the segments after the split from pg_wal (as recycling
//! does). wal-restore puts exactly those back (byte-identical to the
//! archived ones); Debian 15's pg_rewind then rewinds alpha with no
//! restore_command, and alpha starts as a standby of beta, with no
//! restore_command either, and shows beta's rows.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::pg::PG_BIN;
use crate::harness::scenario::{standby_of, wait_replayed, wait_streaming, WAL_FETCH};
use crate::harness::tmp::running_as_root;
use crate::harness::{PgCluster, TempDir};
use crate::store::Store;

const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

/// Segments of timeline `tl` in `data`'s pg_wal, with their bytes.
fn segments(data: &Path, tl: &str) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(data.join("pg_wal"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.starts_with(tl))
        .map(|n| {
            let bytes = fs::read(data.join("pg_wal").join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

/// Remove from pg_wal the segments in `names`, keeping their bytes.
fn lose(
    data: &Path,
    all: &BTreeMap<String, Vec<u8>>,
    names: &[String],
) -> BTreeMap<String, Vec<u8>> {
    let mut lost = BTreeMap::new();
    for n in names {
        fs::remove_file(data.join("pg_wal").join(n)).unwrap();
        lost.insert(n.clone(), all[n].clone());
    }
    lost
}

fn as_postgres(program: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// pg_rewind of alpha's `target` data directory from beta's stopped
/// `source` (as postgres), to run or to add `--dry-run` to.
fn pg_rewind(target: &Path, source: &Path) -> Command {
    let mut cmd = as_postgres(&format!("{PG_BIN}/pg_rewind"));
    cmd.arg("-D").arg(target).arg("--source-pgdata").arg(source);
    cmd
}

/// alpha, a primary archiving with walden (settings `extra` added), with
/// pgbench tables, and beta, its streaming standby, archiving too.
fn primary_and_standby(store: &Store, extra: &[(&str, &str)]) -> (PgCluster, TempDir, PgCluster) {
    let archiving = [
        ("archive_mode", "on"),
        ("archive_command", "'{walden} wal-push %p'"),
    ];
    let alpha = PgCluster::builder()
        .confs(&archiving)
        .conf("wal_keep_size", "'1GB'")
        .confs(extra)
        .env(store.env())
        .start();
    alpha.pgbench_init(1);

    let beta_dir = TempDir::new("rewind-beta");
    let beta_data = beta_dir.join("data");
    alpha.base_backup(&beta_data);
    let beta = standby_of(&alpha, &beta_data)
        .confs(&archiving)
        .conf("restore_command", WAL_FETCH)
        .confs(extra)
        .env(store.env())
        .start_restored(beta_data);
    wait_streaming(&beta);
    (alpha, beta_dir, beta)
}

/// The rows beta shows after the split, and the last segment each of
/// them archived (later ones were still being written).
struct Split {
    expected: String,
    alpha_last: String,
    beta_last: String,
}

/// The split, from where alpha is now: beta replays all of alpha's WAL
/// and is promoted, both write on (`rounds` segments each), archive all
/// they wrote, and stop.
fn split(alpha: &mut PgCluster, beta: &mut PgCluster, rounds: usize) -> Split {
    wait_replayed(alpha, beta);
    beta.psql("SELECT pg_promote()");
    beta.wait_for_promotion(Duration::from_secs(60));
    for _ in 0..rounds {
        beta.pgbench(&["-n", "-t", "300", "-c", "2"]);
        beta.switch_wal();
        alpha.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) SELECT 1, 1, g, 0 FROM generate_series(1, 20000) g");
        alpha.switch_wal();
    }
    let expected = beta.psql(ROWS);
    let beta_last = beta.switch_wal();
    let alpha_last = alpha.switch_wal();
    beta.wait_for_archive(&beta_last, Duration::from_secs(120));
    alpha.wait_for_archive(&alpha_last, Duration::from_secs(120));
    alpha.stop();
    beta.stop();
    Split {
        expected,
        alpha_last,
        beta_last,
    }
}

#[test]
fn wal_restore_lets_pg_rewind_run_without_restore_command() {
    let store = Store::fs();
    let (mut alpha, beta_dir, mut beta) = primary_and_standby(&store, &[]);
    let beta_data = beta_dir.join("data");

    // A checkpoint just before the split, in the split's segment: where
    // pg_rewind starts reading alpha's WAL.
    alpha.pgbench(&["-n", "-t", "300", "-c", "2"]);
    alpha.switch_wal();
    alpha.psql("CHECKPOINT");
    // Both write on, several segments each.
    let Split {
        expected,
        alpha_last,
        beta_last,
    } = split(&mut alpha, &mut beta, 3);

    // Recycling took every segment after the split but the newest.
    let split = fs::read_to_string(beta_data.join("pg_wal/00000002.history")).unwrap();
    let split_lsn = split.split('\t').nth(1).unwrap().to_string();
    let (hi, lo) = split_lsn.split_once('/').unwrap();
    let split_seg =
        (u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()) >> 24;
    let first_after = |tl: &str| format!("{tl}{:08X}{:08X}", split_seg >> 8, split_seg & 0xFF);
    // Only archived segments (the ones after `*_last` were still being
    // written), and each cluster keeps its newest.
    let beta_segs = segments(&beta_data, "00000002");
    let beta_gone: Vec<String> = beta_segs
        .keys()
        .filter(|n| **n >= first_after("00000002") && **n <= beta_last)
        .cloned()
        .collect();
    let alpha_data = alpha.data_dir().to_path_buf();
    let alpha_segs = segments(&alpha_data, "00000001");
    let alpha_after: Vec<String> = alpha_segs
        .keys()
        .filter(|n| **n >= first_after("00000001") && **n <= alpha_last)
        .cloned()
        .collect();
    assert!(
        beta_gone.len() >= 2 && alpha_after.len() >= 2,
        "{beta_gone:?} {alpha_after:?}"
    );
    let mut lost = lose(&beta_data, &beta_segs, &beta_gone);
    lost.extend(lose(&alpha_data, &alpha_segs, &alpha_after));

    // Without wal-restore, pg_rewind cannot read alpha's WAL.
    let dry = pg_rewind(&alpha_data, &beta_data)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(!dry.status.success(), "pg_rewind needed no WAL? {dry:?}");

    let out = store
        .walden()
        .args(["wal-restore"])
        .arg(&alpha_data)
        .arg(&beta_data)
        .run();
    out.assert_ok();
    for (name, bytes) in &lost {
        let dir = if name.starts_with("00000002") {
            &beta_data
        } else {
            &alpha_data
        };
        let got = fs::read(dir.join("pg_wal").join(name))
            .unwrap_or_else(|e| panic!("{name} not restored: {e}\n{}", out.stderr));
        assert!(got == *bytes, "{name} differs from the archived segment");
    }
    crate::harness::tmp::chown_postgres(&alpha_data);
    crate::harness::tmp::chown_postgres(&beta_data);
    // Run again: nothing is missing now.
    let again = store
        .walden()
        .arg("wal-restore")
        .arg(&alpha_data)
        .arg(&beta_data)
        .run();
    again.assert_ok();
    assert!(
        again.stderr.contains("No WAL files to restore"),
        "{}",
        again.stderr
    );

    let out = pg_rewind(&alpha_data, &beta_data).output().unwrap();
    assert!(
        out.status.success(),
        "pg_rewind: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    follow(&mut alpha, &mut beta, &expected);
}

/// After pg_rewind: alpha (rewound) starts as a standby of beta with no
/// restore_command, so that all it replays comes from its pg_wal and from
/// streaming; it must catch up with beta's new writes and show its rows.
fn follow(alpha: &mut PgCluster, beta: &mut PgCluster, expected: &str) {
    let alpha_data = alpha.data_dir().to_path_buf();
    beta.start_server();
    let conf = format!(
        "\n# after pg_rewind\nport = {}\nunix_socket_directories = '{}'\nprimary_conninfo = 'host={} port={} user=postgres'\nrestore_command = ''\narchive_mode = off\n",
        alpha.port(),
        alpha.socket_dir().display(),
        beta.socket_dir().display(),
        beta.port()
    );
    let mut pgconf = fs::read_to_string(alpha_data.join("postgresql.conf")).unwrap();
    pgconf.push_str(&conf);
    fs::write(alpha_data.join("postgresql.conf"), pgconf).unwrap();
    fs::write(alpha_data.join("standby.signal"), "").unwrap();
    crate::harness::tmp::chown_postgres(&alpha_data);
    alpha.start_server();
    alpha.wait_for_sql(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(120),
    );
    beta.pgbench(&["-n", "-t", "100", "-c", "1"]);
    let expected_now = beta.psql(ROWS);
    assert_ne!(expected_now, expected);
    wait_replayed(beta, alpha);
    assert_eq!(alpha.psql(ROWS), expected_now, "{}", alpha.log_tail());
    assert_eq!(alpha.psql("SELECT pg_is_in_recovery()"), "t");
}

/// "X/Y" as an LSN.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()
}

/// A timeline's segment name for segment `number` (16 MiB segments).
fn seg_name(tl: u32, number: u64) -> String {
    format!("{tl:08X}{:08X}{:08X}", number >> 8, number & 0xFF)
}

/// The last checkpoint record starting before `before` in the segments
/// `first..=last` of timeline 1 in `pg_wal`, as PostgreSQL's pg_waldump
/// reads them: (its LSN, its redo).
fn waldump_last_checkpoint(pg_wal: &Path, first: u64, last: u64, before: u64) -> (u64, u64) {
    let out = Command::new(format!("{PG_BIN}/pg_waldump"))
        .arg("-p")
        .arg(pg_wal)
        .args(["-r", "XLOG", &seg_name(1, first), &seg_name(1, last)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("desc: CHECKPOINT_"))
        .map(|l| {
            let at = l.split("lsn: ").nth(1).unwrap().split(',').next().unwrap();
            let redo = l.split("redo ").nth(1).unwrap().split(';').next().unwrap();
            (lsn(at), lsn(redo))
        })
        .rfind(|(at, _)| *at < before)
        .unwrap_or_else(|| {
            panic!(
                "pg_waldump shows no checkpoint: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// An immediate CHECKPOINT on `pg` while another session switches WAL
/// segments, until the checkpoint's record lands in a later segment than
/// its redo (the checkpoint writes its record after flushing the buffers
/// dirtied before it): (the record's LSN, the redo).
fn checkpoint_across_segments(pg: &PgCluster) -> (u64, u64) {
    for _ in 0..10 {
        pg.pgbench(&["-n", "-t", "200", "-c", "2"]);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    pg.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0); SELECT pg_switch_wal()");
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            pg.psql("CHECKPOINT");
            done.store(true, Ordering::Relaxed);
        });
        let row = pg.psql("SELECT checkpoint_lsn || ' ' || redo_lsn FROM pg_control_checkpoint()");
        let (at, redo) = row.split_once(' ').unwrap();
        let (at, redo) = (lsn(at), lsn(redo));
        if at >> 24 > redo >> 24 {
            return (at, redo);
        }
    }
    panic!("no checkpoint across a segment switch in 10 tries");
}

/// The last checkpoint before the split lies two segments before the
/// split's, its redo in a segment before that, and an archive cleanup removed every segment before the
/// split's from both clusters' pg_wal: pg_rewind, reading alpha's WAL
/// backwards from the split, cannot find that checkpoint. wal-restore
/// walks back to it (the one PostgreSQL's pg_waldump shows), fetches the
/// segments from it on into alpha's pg_wal and those from its redo on into
/// beta's (pg_rewind copies beta's pg_wal over alpha's, and the rewound
/// alpha replays from the redo); pg_rewind then succeeds, alpha streams
/// from beta with no restore_command and shows beta's rows.
#[test]
fn wal_restore_fetches_back_to_the_checkpoint_before_the_split() {
    let store = Store::fs();
    // No checkpoint but ours before the split.
    let quiet = [("checkpoint_timeout", "'1h'"), ("max_wal_size", "'4GB'")];
    let (mut alpha, beta_dir, mut beta) = primary_and_standby(&store, &quiet);
    let beta_data = beta_dir.join("data");
    let alpha_data = alpha.data_dir().to_path_buf();

    let (checkpoint, redo) = checkpoint_across_segments(&alpha);
    let checkpoint_seg = seg_name(1, checkpoint >> 24);
    alpha.switch_wal();
    alpha.pgbench(&["-n", "-t", "300", "-c", "2"]);
    alpha.switch_wal();
    alpha.pgbench(&["-n", "-t", "50", "-c", "1"]);
    let expected = split(&mut alpha, &mut beta, 2).expected;

    let history = fs::read_to_string(beta_data.join("pg_wal/00000002.history")).unwrap();
    let split_lsn = lsn(history.split('\t').nth(1).unwrap());
    let split_seg = split_lsn >> 24;
    let checkpoint_number = checkpoint >> 24;
    // Two segment switches lie between them; pgbench's writes can fill
    // one more segment (seen in CI), which only lengthens the walk back.
    assert!(
        split_seg >= checkpoint_number + 2,
        "the split ({split_seg:X}) is not at least two segments after the checkpoint's ({checkpoint_number:X})"
    );
    // The archive cleanup: timeline 1's segments before the split's.
    let before_split = |data: &Path| -> Vec<String> {
        segments(data, "00000001")
            .into_keys()
            .filter(|n| *n < seg_name(1, split_seg))
            .collect()
    };
    let alpha_segs = segments(&alpha_data, "00000001");
    let beta_segs = segments(&beta_data, "00000001");
    let alpha_gone = before_split(&alpha_data);
    let beta_gone = before_split(&beta_data);
    assert!(
        alpha_gone.contains(&seg_name(1, redo >> 24))
            && alpha_gone.contains(&checkpoint_seg)
            && alpha_gone.contains(&seg_name(1, split_seg - 1)),
        "{alpha_gone:?}"
    );
    let alpha_lost = lose(&alpha_data, &alpha_segs, &alpha_gone);
    let beta_lost = lose(&beta_data, &beta_segs, &beta_gone);

    // What the former wal-restore left: every segment from the split's
    // on is there, and pg_rewind stops at the first missing one before it.
    let dry = pg_rewind(&alpha_data, &beta_data)
        .arg("--dry-run")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&dry.stderr);
    assert!(
        !dry.status.success()
            && err.contains("could not find previous WAL record")
            && err.contains(&seg_name(1, split_seg - 1)),
        "pg_rewind found the checkpoint without those segments? {dry:?}"
    );

    let out = store
        .walden()
        .arg("wal-restore")
        .arg(&alpha_data)
        .arg(&beta_data)
        .run();
    out.assert_ok();
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.split("last checkpoint before the split: ").nth(1))
        .unwrap_or_else(|| panic!("no checkpoint found: {}", out.stderr));
    let (cp_text, redo_text) = line.split_once(", redo ").unwrap();
    let (cp, found_redo) = (lsn(cp_text), lsn(redo_text));
    assert_eq!(
        (cp, found_redo),
        waldump_last_checkpoint(
            &alpha_data.join("pg_wal"),
            checkpoint_number,
            split_seg,
            split_lsn
        ),
        "walden's reader and pg_waldump disagree"
    );
    assert_eq!(
        (cp, found_redo),
        (checkpoint, redo),
        "not the test's checkpoint"
    );
    // alpha: from the checkpoint's segment to the split's, and no older
    // one; beta: from the redo's.
    for (data, lost, from) in [
        (&alpha_data, &alpha_lost, cp >> 24),
        (&beta_data, &beta_lost, redo >> 24),
    ] {
        for (name, bytes) in lost {
            let number = u64::from_str_radix(&name[16..24], 16).unwrap();
            match fs::read(data.join("pg_wal").join(name)) {
                Ok(got) => {
                    assert!(number >= from, "{name} restored, not needed");
                    assert!(got == *bytes, "{name} differs from the archived segment");
                }
                Err(e) => assert!(number < from, "{name} not restored: {e}\n{}", out.stderr),
            }
        }
    }
    crate::harness::tmp::chown_postgres(&alpha_data);
    crate::harness::tmp::chown_postgres(&beta_data);

    let rewind = pg_rewind(&alpha_data, &beta_data).output().unwrap();
    assert!(
        rewind.status.success(),
        "pg_rewind: {}{}",
        String::from_utf8_lossy(&rewind.stdout),
        String::from_utf8_lossy(&rewind.stderr)
    );
    follow(&mut alpha, &mut beta, &expected);
}
