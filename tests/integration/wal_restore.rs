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
use std::time::Duration;

use crate::harness::pg::PG_BIN;
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

#[test]
fn wal_restore_lets_pg_rewind_run_without_restore_command() {
    let store = Store::fs();
    let archiving = [
        ("archive_mode", "on"),
        ("archive_command", "'{walden} wal-push %p'"),
    ];
    let mut alpha = PgCluster::builder()
        .confs(&archiving)
        .conf("wal_keep_size", "'1GB'")
        .env(store.env())
        .start();
    alpha.pgbench_init(1);

    let beta_dir = TempDir::new("rewind-beta");
    let beta_data = beta_dir.join("data");
    alpha.base_backup(&beta_data);
    fs::write(beta_data.join("standby.signal"), "").unwrap();
    let to_alpha = format!(
        "'host={} port={} user=postgres'",
        alpha.socket_dir().display(),
        alpha.port()
    );
    let mut beta = PgCluster::builder()
        .confs(&archiving)
        .conf("primary_conninfo", &to_alpha)
        .conf("restore_command", "'{walden} wal-fetch %f %p'")
        .env(store.env())
        .start_restored(beta_data.clone());
    beta.wait_for_sql(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(60),
    );

    // A checkpoint just before the split, in the split's segment: where
    // pg_rewind starts reading alpha's WAL.
    alpha.pgbench(&["-n", "-t", "300", "-c", "2"]);
    alpha.switch_wal();
    alpha.psql("CHECKPOINT");
    let lsn = alpha.psql("SELECT pg_current_wal_lsn()");
    beta.wait_for_sql(
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
        "t",
        Duration::from_secs(60),
    );
    beta.psql("SELECT pg_promote()");
    beta.wait_for_promotion(Duration::from_secs(60));

    // Both write on, several segments each.
    for _ in 0..3 {
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
    let rewind = || {
        as_postgres(&format!("{PG_BIN}/pg_rewind"))
            .arg("-D")
            .arg(&alpha_data)
            .arg("--source-pgdata")
            .arg(&beta_data)
            .output()
            .unwrap()
    };
    let dry = as_postgres(&format!("{PG_BIN}/pg_rewind"))
        .args(["--dry-run", "-D"])
        .arg(&alpha_data)
        .arg("--source-pgdata")
        .arg(&beta_data)
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

    let out = rewind();
    assert!(
        out.status.success(),
        "pg_rewind: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // alpha follows beta, with no restore_command: all it replays came
    // from pg_wal.
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
    let lsn = beta.psql("SELECT pg_current_wal_lsn()");
    alpha.wait_for_sql(
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
        "t",
        Duration::from_secs(60),
    );
    assert_eq!(alpha.psql(ROWS), expected_now, "{}", alpha.log_tail());
    assert_eq!(alpha.psql("SELECT pg_is_in_recovery()"), "t");
}
