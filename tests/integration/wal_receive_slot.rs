//! wal-receive's promise to the server, checked while it streams under
//! pgbench load and across a server restart, on both storages: the slot
//! (and the flush/write positions walden reports) never claims a byte that
//! storage does not hold. A thread polls the server every 50 ms and, each
//! time, lists storage *after* reading the positions (storage only grows,
//! so whatever was acknowledged before the query is already listed). Every
//! byte below a claimed LSN must be in a stored complete segment, or, for
//! a claim inside a segment (walden confirms all it holds when the server
//! asks for a reply: after half of `wal_sender_timeout` without one, or
//! when it shuts down), in that segment's
//! `.partial` object, whose bytes are then fetched and compared with the
//! server's. Physical slots have no `confirmed_flush_lsn` (it is NULL);
//! their `restart_lsn` is what the standby confirmed as flushed.
//! Then SIGTERM stores the `.partial`, every complete segment equals the
//! server's, and a base backup recovers through the stored WAL alone.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::pg::PG_BIN;
use crate::harness::scenario::{
    assert_wal_matches_server, recovering_through_walden, restore_and_compare, start_wal_receive,
    stop_wal_receive, wait_slot_active, wal_keeping_cluster,
};
use crate::harness::{TempDir, Walden};
use crate::store::{codec_env, Store, WAL_SIZE};
use crate::wal_receive::wait_stored;

const SEG: u64 = WAL_SIZE as u64;
const SLOT: &str = "walden_poll";
const ROWS: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn seg_name(n: u64) -> String {
    format!("00000001{:08X}{:08X}", n >> 8, n & 0xFF)
}

fn seg_number(name: &str) -> Option<u64> {
    if name.len() != 24 || !name.starts_with("00000001") {
        return None;
    }
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((hi << 8) | lo)
}

/// What storage holds of timeline 1: complete segments and `.partial`s.
#[derive(Clone, Default)]
struct Held {
    complete: BTreeSet<u64>,
    partial: BTreeSet<u64>,
}

fn held(wal_dir: &Path, ext: &str) -> Held {
    let mut h = Held::default();
    for entry in fs::read_dir(wal_dir).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(ext) else {
            continue;
        };
        if let Some(n) = seg_number(stem) {
            h.complete.insert(n);
        } else if let Some(n) = stem.strip_suffix(".partial").and_then(seg_number) {
            h.partial.insert(n);
        }
    }
    h
}

/// One poll: the positions the server has from walden, and what storage
/// held right after.
struct Sample {
    restart: Option<u64>,
    flush: Option<u64>,
    write: Option<u64>,
    held: Held,
}

/// What the poller needs, owned, so that the test can restart the server
/// meanwhile.
struct Poller {
    socket: String,
    port: String,
    wal_dir: PathBuf,
    ext: String,
    pg_wal: PathBuf,
    walden: Vec<(String, String)>,
}

impl Poller {
    fn positions(&self) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
        let sql = format!(
            "SELECT coalesce(s.restart_lsn::text, '') || ',' || coalesce(r.flush_lsn::text, '') \
             || ',' || coalesce(r.write_lsn::text, '') FROM pg_replication_slots s \
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '{SLOT}'"
        );
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-A", "-t", "-h", &self.socket, "-p", &self.port])
            .args(["-U", "postgres", "-d", "postgres", "-c", &sql])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None; // the server is restarting
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let parts: Vec<Option<u64>> = text.trim().split(',').map(parse_lsn).collect();
        match parts[..] {
            [restart, flush, write] => Some((restart, flush, write)),
            _ => None, // no such slot yet
        }
    }

    /// The `.partial` of segment `n` holds the server's bytes below `lsn`.
    fn partial_covers(&self, n: u64, lsn: u64) -> Result<(), String> {
        let name = seg_name(n);
        let out = Walden::new()
            .envs(self.walden.clone())
            .args(["st", "cat", "--decrypt", "--decompress"])
            .arg(format!("wal_005/{name}.partial{}", self.ext))
            .run();
        if !out.success() {
            return Err(format!("{name}.partial unreadable: {}", out.stderr));
        }
        let server = fs::read(self.pg_wal.join(&name)).map_err(|e| e.to_string())?;
        let k = (lsn - n * SEG) as usize;
        if out.stdout.len() != WAL_SIZE || out.stdout[..k] != server[..k] {
            return Err(format!(
                "{name}.partial does not hold the server's first {k} bytes (the slot is at {lsn:X})"
            ));
        }
        Ok(())
    }

    /// Polls every 50 ms until `stop`; checks `.partial` coverage at once
    /// (a later upload of the segment replaces it).
    fn run(&self, stop: &AtomicBool) -> (Vec<Sample>, Vec<String>, usize) {
        let mut samples = Vec::new();
        let mut failures = Vec::new();
        let mut checked = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            if let Some((restart, flush, write)) = self.positions() {
                let held = held(&self.wal_dir, &self.ext);
                for lsn in [restart, flush, write].into_iter().flatten() {
                    let (n, off) = (lsn / SEG, lsn % SEG);
                    if off != 0
                        && !held.complete.contains(&n)
                        && held.partial.contains(&n)
                        && checked.insert(lsn)
                    {
                        if let Err(e) = self.partial_covers(n, lsn) {
                            failures.push(e);
                        }
                    }
                }
                samples.push(Sample {
                    restart,
                    flush,
                    write,
                    held,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (samples, failures, checked.len())
    }
}

/// Whether `lsn` claims only what `held` holds: every segment from `first`
/// (where streaming began) below it complete, and the bytes of its own
/// segment in the segment or its `.partial`.
fn violation(lsn: u64, first: u64, held: &Held) -> Option<String> {
    let (n, off) = (lsn / SEG, lsn % SEG);
    if lsn <= first * SEG {
        return None;
    }
    if let Some(missing) = (first..n).find(|s| !held.complete.contains(s)) {
        return Some(format!(
            "{lsn:X} claimed but segment {} is not stored",
            seg_name(missing)
        ));
    }
    if off != 0 && !held.complete.contains(&n) && !held.partial.contains(&n) {
        return Some(format!(
            "{lsn:X} claimed inside {} but neither it nor its .partial is stored",
            seg_name(n)
        ));
    }
    None
}

fn slot_never_passes_storage(store: Store, codec: Vec<(String, String)>, ext: &str) {
    let mut pg = wal_keeping_cluster()
        // The server asks for a reply after 2 s without one (walden
        // reports every 10 s): walden then stores the segment so far as
        // .partial and confirms up to inside it, the case to check.
        .conf("wal_sender_timeout", "'4s'")
        .start();
    pg.pgbench_init(2);

    let receiver = start_wal_receive(store.walden().envs(codec.clone()), &pg, SLOT);
    let restored_dir = TempDir::new("walrecv-poll-restored");
    let data = restored_dir.join("data");
    pg.base_backup(&data);

    let poller = Arc::new(Poller {
        socket: pg.socket_dir().display().to_string(),
        port: pg.port().to_string(),
        wal_dir: store.object_file("wal_005"),
        ext: ext.to_string(),
        pg_wal: pg.data_dir().join("pg_wal"),
        walden: store.env().into_iter().chain(codec.clone()).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let polling = {
        let (poller, stop) = (poller.clone(), stop.clone());
        std::thread::spawn(move || poller.run(&stop))
    };

    pg.pgbench(&["-n", "-T", "6", "-c", "2"]);
    // Idle: the server asks for a reply and walden confirms what it holds.
    std::thread::sleep(Duration::from_secs(3));
    // A restart: wal-receive reconnects and streams the unfinished
    // segment again.
    pg.restart();
    wait_slot_active(&pg, SLOT);
    pg.pgbench(&["-n", "-T", "6", "-c", "2"]);
    pg.psql("CREATE TABLE marker AS SELECT 'streamed'::text AS note");
    let expected = pg.psql(ROWS);
    let last = pg.switch_wal();
    wait_stored(&store, &last, ext);
    // WAL after the last complete segment, for the .partial on stop.
    pg.psql("CREATE TABLE after_last AS SELECT 1 AS x");
    std::thread::sleep(Duration::from_secs(1));
    let sent_end = parse_lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()")).unwrap();

    stop.store(true, Ordering::SeqCst);
    let (samples, failures, partials_checked) = polling.join().unwrap();
    let out = stop_wal_receive(receiver);
    assert!(
        out.stderr.contains("stop signal received"),
        "{}",
        out.stderr
    );

    // Streaming began at the first complete segment stored; all up to the
    // last one are there, none missing in between.
    let end = held(&store.object_file("wal_005"), ext);
    let first = *end.complete.first().expect("segments stored");
    let top = *end.complete.last().unwrap();
    assert_eq!(
        end.complete.len() as u64,
        top - first + 1,
        "a gap in the stored segments: {:?}",
        end.complete
    );
    assert!(top - first >= 3, "the load wrote several segments");

    // The polls: enough of them, across several segments, each within
    // what storage held.
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(samples.len() >= 50, "only {} polls answered", samples.len());
    let mut confirmed = false;
    let mut inside = 0;
    let mut highest = 0;
    let mut bad = BTreeSet::new();
    for s in &samples {
        // Before walden's first reply the slot is where RESERVE_WAL put
        // it (the redo pointer), which walden has not claimed.
        confirmed |= s.flush.is_some();
        let restart = s.restart.filter(|_| confirmed);
        for lsn in [restart, s.flush, s.write].into_iter().flatten() {
            highest = highest.max(lsn);
            inside += usize::from(lsn % SEG != 0 && lsn > first * SEG);
            if let Some(v) = violation(lsn, first, &s.held) {
                bad.insert(v);
            }
        }
    }
    eprintln!(
        "{} polls, {inside} positions inside a segment, {partials_checked} .partial checks, highest {highest:X}",
        samples.len()
    );
    assert!(
        bad.is_empty(),
        "the server was told of WAL not stored: {bad:#?}"
    );
    assert!(
        inside > 0 && partials_checked > 0,
        "no confirmation inside a segment was seen ({inside} positions, {partials_checked} .partial checks)"
    );
    assert!(
        highest / SEG >= first + 3,
        "the slot moved across several segments (to {highest:X} from segment {first:X})"
    );

    // SIGTERM stored what was received after the last segment.
    let tail = sent_end / SEG;
    assert!(tail > top, "{sent_end:X} after segment {top:X}");
    assert!(
        end.partial.contains(&tail),
        "no .partial of {}",
        seg_name(tail)
    );
    poller.partial_covers(tail, sent_end).unwrap();

    // Every complete segment is the server's, byte for byte.
    let names: Vec<String> = (first..=top).map(seg_name).collect();
    let walden = || store.walden().envs(codec.clone());
    assert_wal_matches_server(walden, &pg.data_dir().join("pg_wal"), &names);
    pg.stop();

    // The base backup recovers through the received WAL alone.
    let restored = recovering_through_walden(&data, store.env()).env(codec);
    let restored = restore_and_compare(restored, data.clone(), ROWS, &expected);
    assert_eq!(restored.psql("SELECT note FROM marker"), "streamed");
}

#[test]
fn wal_receive_slot_never_passes_storage_on_the_filesystem() {
    slot_never_passes_storage(Store::fs(), codec_env("lz4", false), ".lz4");
}

#[test]
fn wal_receive_slot_never_passes_storage_on_s3() {
    slot_never_passes_storage(Store::s3(), codec_env("zstd", true), ".zst");
}
