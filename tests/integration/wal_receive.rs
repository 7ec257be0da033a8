//! wal-receive end to end: a real PostgreSQL 15 without archiving streams
//! its WAL to walden over a replication slot while pgbench writes and the
//! server restarts once; every stored segment is byte-identical to the
//! server's, the slot never claims more than storage holds, and a base
//! backup taken meanwhile recovers through wal-fetch from that WAL alone.

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::scenario::{
    assert_wal_matches_server, recovering_through_walden, restore_and_compare, standby_of,
    start_wal_receive, stop_wal_receive, wait_replayed, wait_slot_active, wait_streaming,
    wal_keeping_cluster,
};
use crate::harness::TempDir;
use crate::store::{codec_env, Store};

/// The rows pgbench changes.
const BALANCES: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

fn stored_names(store: &Store, ext: &str) -> Vec<String> {
    let dir = store.object_file("wal_005");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(ext).map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

/// Until segment `name` is stored (with extension `ext`), 2 minutes at most.
pub(crate) fn wait_stored(store: &Store, name: &str, ext: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let path = store.object_file(&format!("wal_005/{name}{ext}"));
    while !path.is_file() {
        assert!(Instant::now() < deadline, "{name} was not stored in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The LSN just past segment `name` (16 MiB segments).
fn end_lsn(name: &str) -> String {
    let hi = u64::from_str_radix(&name[8..16], 16).unwrap();
    let lo = u64::from_str_radix(&name[16..24], 16).unwrap();
    let end = ((hi << 32) | (lo << 24)) + (1 << 24);
    format!("{:X}/{:X}", end >> 32, end & 0xFFFF_FFFF)
}

#[test]
fn wal_receive_streams_stores_and_recovers() {
    let store = Store::fs();
    let codec = codec_env("lz4", true);
    let ext = ".lz4";
    let mut pg = wal_keeping_cluster().start();
    pg.pgbench_init(2);

    let receiver = start_wal_receive(store.walden().envs(codec.clone()), &pg, "walden_test");

    // A base backup while receiving: only wal-receive supplies its WAL.
    let restored_dir = TempDir::new("walrecv-restored");
    let data = restored_dir.join("data");
    pg.base_backup(&data);
    pg.pgbench(&["-n", "-t", "1500", "-c", "2"]);
    let first = pg.switch_wal();
    wait_stored(&store, &first, ext);

    // The server restarts: wal-receive reconnects and goes on.
    pg.restart();
    wait_slot_active(&pg, "walden_test");
    pg.pgbench(&["-n", "-t", "1500", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'streamed'::text AS note");
    let expected = pg.psql(BALANCES);
    let last = pg.switch_wal();
    wait_stored(&store, &last, ext);
    // The slot holds no more than storage does.
    let slot_ok = pg.psql(&format!(
        "SELECT restart_lsn <= '{}' FROM pg_replication_slots WHERE slot_name = 'walden_test'",
        end_lsn(&last)
    ));
    assert_eq!(slot_ok, "t", "the slot passed what storage holds");
    // Some WAL after the last complete segment, for the .partial.
    pg.psql("CREATE TABLE after_last AS SELECT 1 AS x");
    std::thread::sleep(Duration::from_secs(1));

    let out = stop_wal_receive(receiver);
    assert!(out.stderr.contains("connection lost"), "{}", out.stderr);

    // Every stored segment equals the server's copy, fetched back.
    let names = stored_names(&store, ext);
    assert!(names.contains(&first) && names.contains(&last), "{names:?}");
    assert!(
        names.len() >= 4,
        "pgbench wrote several segments: {names:?}"
    );
    let walden = || store.walden().envs(codec.clone());
    assert_wal_matches_server(walden, &pg.data_dir().join("pg_wal"), &names);
    let partials: Vec<String> = fs::read_dir(store.object_file("wal_005"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(
        !partials.is_empty(),
        "a .partial segment on stop: {names:?}"
    );
    // The slot, after the stop, still claims no more than storage holds.
    let slot_ok = pg.psql(&format!(
        "SELECT restart_lsn <= '{}' AND NOT active FROM pg_replication_slots WHERE slot_name = 'walden_test'",
        end_lsn(names.last().unwrap())
    ));
    assert_eq!(slot_ok, "t");
    pg.stop();

    // Recovery of the base backup through the received WAL.
    let restored = recovering_through_walden(&data, store.env()).env(codec.clone());
    let restored = restore_and_compare(restored, data.clone(), BALANCES, &expected);
    assert_eq!(restored.psql("SELECT note FROM marker"), "streamed");
}

#[test]
fn wal_receive_refuses_a_bad_slot_name() {
    let store = Store::fs();
    let out = store
        .walden()
        .env("WALG_SLOTNAME", "bad-name")
        .arg("wal-receive")
        .run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("[0-9A-Za-z_]"), "{}", out.stderr);
}

/// wal-receive streaming from a standby that is then promoted follows the
/// new timeline (the old one's last segment stored as `.partial`, the
/// `.history` stored), reconnects after that server restarts, and a base
/// backup of the old primary recovers through the stored WAL onto the new
/// timeline with the new primary's rows.
#[test]
fn wal_receive_follows_a_promotion_and_a_restart() {
    let store = Store::fs();
    let codec = codec_env("zstd", false);
    let ext = ".zst";
    let primary = wal_keeping_cluster().start();
    primary.pgbench_init(1);
    let standby_dir = TempDir::new("walrecv-standby");
    let standby_data = standby_dir.join("data");
    primary.base_backup(&standby_data);
    let mut standby = standby_of(&primary, &standby_data)
        .conf("archive_mode", "off")
        .conf("wal_keep_size", "'2GB'")
        .start_restored(standby_data.clone());
    wait_streaming(&standby);

    let receiver = start_wal_receive(store.walden().envs(codec.clone()), &standby, "cascade");
    // The old primary's base backup, to recover through the stored WAL.
    let restored_dir = TempDir::new("walrecv-tl-restored");
    let data = restored_dir.join("data");
    primary.base_backup(&data);
    primary.pgbench(&["-n", "-t", "800", "-c", "2"]);
    let on_tl1 = primary.switch_wal();
    wait_stored(&store, &on_tl1, ext);

    // Some WAL into the next segment first, replayed by the standby: the
    // old timeline ends inside a segment, stored as .partial.
    primary.psql("CREATE TABLE before_promotion AS SELECT 1 AS x");
    wait_replayed(&primary, &standby);
    // Promotion: timeline 2.
    standby.psql("SELECT pg_promote()");
    standby.wait_for_promotion(Duration::from_secs(60));
    wait_stored(&store, "00000002", ".history.zst");
    standby.pgbench(&["-n", "-t", "800", "-c", "2"]);
    let on_tl2 = standby.switch_wal();
    assert!(on_tl2.starts_with("00000002"), "{on_tl2}");
    wait_stored(&store, &on_tl2, ext);

    // The new primary restarts: wal-receive reconnects on timeline 2.
    standby.restart();
    wait_slot_active(&standby, "cascade");
    standby.pgbench(&["-n", "-t", "800", "-c", "2"]);
    standby.psql("CREATE TABLE marker AS SELECT 'after promotion'::text AS note");
    let expected = standby.psql(BALANCES);
    let last = standby.switch_wal();
    wait_stored(&store, &last, ext);
    let out = stop_wal_receive(receiver);
    assert!(
        out.stderr.contains("following timeline 2"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("connection lost"), "{}", out.stderr);

    // The old timeline's last segment as .partial; every complete
    // segment of both timelines equals the new primary's copy.
    let objects: Vec<String> = fs::read_dir(store.object_file("wal_005"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    assert!(
        objects
            .iter()
            .any(|n| n.starts_with("00000001") && n.contains(".partial")),
        "{objects:?}"
    );
    let names = stored_names(&store, ext);
    assert!(names.iter().any(|n| n.starts_with("00000002")), "{names:?}");
    let walden = || store.walden().envs(codec.clone());
    assert_wal_matches_server(walden, &standby_data.join("pg_wal"), &names);
    standby.stop();

    let restored = recovering_through_walden(&data, store.env())
        .conf("recovery_target_timeline", "'latest'")
        .env(codec.clone());
    let restored = restore_and_compare(restored, data.clone(), BALANCES, &expected);
    assert_eq!(restored.psql("SELECT note FROM marker"), "after promotion");
    assert_eq!(restored.psql("SELECT x FROM before_promotion"), "1");
}
