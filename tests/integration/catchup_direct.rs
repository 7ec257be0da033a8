//! catchup-send / catchup-receive (spec §11.3): a streaming replica is
//! stopped, the primary moves on (updated pages, a dropped table, a new
//! table), the primary's changes go over one TCP connection into the
//! stopped replica, and the replica starts, streams and has the primary's
//! rows. Each pairing of walden and WAL-G (`WALDEN_WALG_BIN`; without it
//! the WAL-G pairings say they skip). A hostile or broken sender (a
//! raw TCP client in this file) is refused with a clear message, in
//! bounded memory, without a startable half-applied replica, and the real
//! sender then brings the replica back.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catchup::{
    checkpoint_past, psql_in, redo_lsn, replica_of, rows, rows_with, wait_replayed, wait_streaming,
    wal_dropping_primary,
};
use crate::harness::scenario::{
    catchup_over_tcp, pg_basebackup, start_catchup_receive, start_standby, tablespace,
};
use crate::harness::tmp::chown_postgres;
use crate::harness::{walden_bin, Output, PgCluster, TempDir, Walden};
use crate::store::Store;

fn program(walg: bool) -> Option<Walden> {
    if !walg {
        return Some(Walden::new());
    }
    let bin = std::env::var_os("WALDEN_WALG_BIN").filter(|p| !p.is_empty())?;
    Some(Walden::program(PathBuf::from(bin)))
}

fn scenario(walg_sends: bool, walg_receives: bool) {
    let (Some(sender), Some(receiver)) = (program(walg_sends), program(walg_receives)) else {
        eprintln!("WALDEN_WALG_BIN not set: skipping catchup-send/receive with WAL-G");
        return;
    };
    let store = Store::fs();
    fs::create_dir_all(store.object_file("")).unwrap();
    let primary = wal_dropping_primary();
    primary.pgbench_init(1);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, 'k' FROM generate_series(1, 10000) g; \
         CREATE TABLE drop_t AS SELECT 1 AS id; \
         CREATE TABLE new_t (id int)",
    );
    psql_in(&primary, "postgres", "CREATE DATABASE db2");
    psql_in(&primary, "db2", "CREATE TABLE t2 (n int)");
    let drop_path = primary.psql("SELECT pg_relation_filepath('drop_t')");
    let dir = TempDir::new("catchup-direct");
    let mut replica = replica_of(&primary, &dir);
    wait_replayed(&primary, &replica);
    replica.stop();
    let data = replica.data_dir().to_path_buf();
    assert!(data.join(&drop_path).exists());
    primary.psql(
        "UPDATE keep_t SET v = 'x' WHERE id % 10 = 0; DROP TABLE drop_t; \
         INSERT INTO new_t SELECT g FROM generate_series(1, 100) g; \
         CREATE TABLE new2_t AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    psql_in(&primary, "db2", "INSERT INTO t2 SELECT 7");
    primary.pgbench(&["-n", "-t", "100"]);
    // Streaming alone could not bring the replica back.
    checkpoint_past(&primary, redo_lsn(&data));

    let (sent, received) = catchup_over_tcp(&primary, &data, sender, receiver, &store.env());
    sent.assert_ok();
    received.assert_ok();
    // Changed relation files went as increments (both implementations log
    // "Incremental file NAME" on the receiving side).
    assert!(
        received.stderr.contains("Incremental file base/"),
        "{}",
        received.dump()
    );
    assert!(
        !data.join(&drop_path).exists(),
        "the dropped table's file is left"
    );
    assert!(data.join("backup_label").exists());
    assert!(!data.join("global/pg_control.walden-catchup").exists());
    chown_postgres(&data);
    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    assert_eq!(rows(&replica), rows(&primary), "{}", replica.log_tail());
}

#[test]
fn walden_receives_from_walg_send() {
    scenario(true, false);
}

#[test]
fn walg_receives_from_walden_send() {
    scenario(false, true);
}

#[test]
fn walden_sends_to_walden_receive() {
    scenario(false, false);
}

// ---- A hostile or broken sender (findings 2, 4, 5, 9, 10) ----

/// Go `encoding/gob` bytes, as WAL-G's catchup-send writes them.
#[derive(Default)]
struct Gob {
    b: Vec<u8>,
    last: Vec<i64>,
}

impl Gob {
    fn uint(&mut self, v: u64) -> &mut Self {
        if v < 0x80 {
            self.b.push(v as u8);
        } else {
            let bytes = v.to_be_bytes();
            let skip = (v.leading_zeros() / 8) as usize;
            self.b.push(0u8.wrapping_sub((8 - skip) as u8));
            self.b.extend_from_slice(&bytes[skip..]);
        }
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.uint(if v < 0 {
            ((!v as u64) << 1) | 1
        } else {
            (v as u64) << 1
        })
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.uint(v.len() as u64);
        self.b.extend_from_slice(v);
        self
    }
    fn begin(&mut self) -> &mut Self {
        self.last.push(-1);
        self
    }
    fn field(&mut self, i: i64) -> &mut Self {
        let last = self.last.last_mut().unwrap();
        let d = (i - *last) as u64;
        *last = i;
        self.uint(d)
    }
    fn end(&mut self) -> &mut Self {
        self.last.pop();
        self.uint(0)
    }
    /// The message: its length, then its bytes.
    fn msg(&mut self) -> Vec<u8> {
        let mut head = Gob::default();
        head.uint(self.b.len() as u64);
        let mut out = head.b;
        out.append(&mut self.b);
        out
    }
}

fn common_type(o: &mut Gob, name: &str, id: i64) {
    o.field(0).begin().field(0).bytes(name.as_bytes());
    o.field(1).int(id).end();
}

const COMMAND: i64 = 70;

/// WAL-G's `CatchupCommandDto` and `[]string` definitions.
fn define_command() -> Vec<u8> {
    let fields: [(&str, i64); 9] = [
        ("IsDone", 1),
        ("IsIncremental", 1),
        ("IsFull", 1),
        ("IsDelete", 1),
        ("IsBinContents", 1),
        ("FileSize", 3),
        ("FileName", 6),
        ("BinaryContents", 5),
        ("FilesToDelete", 71),
    ];
    let mut out = define_struct(COMMAND, "CatchupCommandDto", &fields);
    out.extend(define_slice(71, "[]string", 6));
    out
}

fn define_struct(id: i64, name: &str, fields: &[(&str, i64)]) -> Vec<u8> {
    let mut o = Gob::default();
    o.int(-id).begin().field(2).begin();
    common_type(&mut o, name, id);
    o.field(1).uint(fields.len() as u64);
    for (n, t) in fields {
        o.begin()
            .field(0)
            .bytes(n.as_bytes())
            .field(1)
            .int(*t)
            .end();
    }
    o.end().end();
    o.msg()
}

fn define_map(id: i64, name: &str, key: i64, elem: i64) -> Vec<u8> {
    let mut o = Gob::default();
    o.int(-id).begin().field(3).begin();
    common_type(&mut o, name, id);
    o.field(1).int(key).field(2).int(elem).end().end();
    o.msg()
}

fn define_slice(id: i64, name: &str, elem: i64) -> Vec<u8> {
    let mut o = Gob::default();
    o.int(-id).begin().field(1).begin();
    common_type(&mut o, name, id);
    o.field(1).int(elem).end().end();
    o.msg()
}

/// Flags: 0 IsDone, 1 IsIncremental, 2 IsFull, 3 IsDelete, 4 IsBinContents.
fn command(flag: i64, size: u64, name: &str, contents: &[u8]) -> Vec<u8> {
    let mut o = Gob::default();
    o.int(COMMAND).begin().field(flag).uint(1);
    if size != 0 {
        o.field(5).uint(size);
    }
    if !name.is_empty() {
        o.field(6).bytes(name.as_bytes());
    }
    if !contents.is_empty() {
        o.field(7).bytes(contents);
    }
    o.end().msg()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut o = Gob::default();
    o.int(5).uint(0).bytes(data);
    o.msg()
}

/// An lz4 frame of stored (uncompressed) blocks, never ended (as WAL-G's).
fn lz4(data: &[u8]) -> Vec<u8> {
    let flags = [0x60u8, 0x70];
    let check = (twox_hash::XxHash32::oneshot(0, &flags) >> 8) as u8;
    let mut out = vec![0x04, 0x22, 0x4D, 0x18, flags[0], flags[1], check];
    for block in data.chunks(4 << 20) {
        out.extend_from_slice(&(block.len() as u32 | 0x8000_0000).to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

/// catchup-receive on `data` (under `/usr/bin/time -v` when `timed`), fed
/// `messages` by a sender that then closes its side.
fn receive_from(data: &Path, messages: &[u8], timed: bool) -> Output {
    let walden = if timed {
        Walden::program("/usr/bin/time").arg("-v").arg(walden_bin())
    } else {
        Walden::new()
    };
    let (rx, port) = start_catchup_receive(walden, data);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = s.try_clone().unwrap();
    // The replica's control data and file list: read and dropped.
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    // The receiver may stop reading at a refusal: a failed write is fine.
    let _ = s.write_all(&lz4(messages));
    let _ = s.shutdown(Shutdown::Write);
    let out = rx.wait(Duration::from_secs(60));
    drop(s);
    let _ = drain.join();
    out
}

fn max_rss_kib(out: &Output) -> u64 {
    out.stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .unwrap_or_else(|| panic!("no max RSS in: {}", out.dump()))
        .trim()
        .parse()
        .unwrap()
}

/// A refusal: exit 1, `says` in the log, a short log, the replica's own
/// configuration as it was.
fn refused(out: &Output, says: &[&str], data: &Path, conf: &[u8]) {
    assert_eq!(out.code, 1, "{}", out.dump());
    for s in says {
        assert!(out.stderr.contains(s), "'{s}' not in: {}", out.dump());
    }
    assert!(
        out.stderr.len() < 64 << 10,
        "a {}-byte log",
        out.stderr.len()
    );
    assert_eq!(fs::read(data.join("postgresql.auto.conf")).unwrap(), conf);
}

const HALF: &str = "is half caught up and will not start";

#[test]
fn hostile_senders_are_refused_and_a_real_one_still_catches_up() {
    let store = Store::fs();
    fs::create_dir_all(store.object_file("")).unwrap();
    let primary = wal_dropping_primary();
    let (dir, ts_primary, oid) = tablespace(&primary, "catchup-hostile");
    primary.pgbench_init(1);
    primary.psql(
        "CREATE TABLE keep_t (id int primary key, v text); \
         INSERT INTO keep_t SELECT g, 'k' FROM generate_series(1, 10000) g; \
         CREATE TABLE drop_t AS SELECT 1 AS id",
    );
    let data = dir.join("data");
    let ts_replica = dir.join("ts-replica");
    pg_basebackup(&primary, &data, &[(&ts_primary, &ts_replica)]);
    chown_postgres(&ts_replica);
    let mut replica = start_standby(&primary, data.clone());
    wait_replayed(&primary, &replica);
    replica.stop();
    // The primary drops the (empty) tablespace; the replica's copy of it
    // holds a pgsql_tmp, which catch-ups never list nor name (finding 10).
    primary.psql("UPDATE keep_t SET v = 'x' WHERE id % 10 = 0; DROP TABLE drop_t");
    primary.psql("DROP TABLESPACE ts1");
    let version_dir = fs::read_dir(&ts_replica)
        .unwrap()
        .next()
        .expect("the replica's tablespace directory")
        .unwrap()
        .path();
    fs::create_dir_all(version_dir.join("pgsql_tmp")).unwrap();
    fs::write(version_dir.join("pgsql_tmp/pgsql_tmp123.0"), b"tmp").unwrap();
    primary.pgbench(&["-n", "-t", "100"]);
    checkpoint_past(&primary, redo_lsn(&data));

    let conf = fs::read(data.join("postgresql.auto.conf")).unwrap();
    let control = fs::read(primary.data_dir().join("global/pg_control")).unwrap();
    let live = data.join("global/pg_control");
    let parked = data.join("global/pg_control.walden-catchup");

    // Finding 4: a command listing 20M empty names (20 MB; the old decoder
    // made 640 MB of values of it) is refused within bounded memory.
    let n = 20_000_000u64;
    let mut o = Gob::default();
    o.int(COMMAND).begin().field(3).uint(1).field(8).uint(n);
    o.b.resize(o.b.len() + n as usize, 0);
    o.end();
    let bomb = [define_command(), o.msg()].concat();
    let out = receive_from(&data, &bomb, true);
    refused(
        &out,
        &["expands to more memory than its size allows"],
        &data,
        &conf,
    );
    let rss = max_rss_kib(&out);
    eprintln!("catchup-receive max RSS with a 20 MB hostile command: {rss} KiB");
    assert!(rss < 200 << 10, "max RSS {rss} KiB");
    assert!(live.exists() && !parked.exists(), "the replica changed");
    // A message announced at 1 GiB: refused before it arrives.
    let mut o = Gob::default();
    o.uint(1 << 30);
    let out = receive_from(&data, &o.b, false);
    refused(
        &out,
        &["a message of 1073741824 bytes, more than"],
        &data,
        &conf,
    );
    // A value of another type is named by its kind, not printed.
    let mut o = Gob::default();
    o.int(72).uint(0).uint(10_000);
    o.b.resize(o.b.len() + 10_000, 0);
    let bools = [define_slice(72, "[]bool", 1), o.msg()].concat();
    let out = receive_from(&data, &bools, false);
    refused(
        &out,
        &["expected a CatchupCommandDto, got a list of 10000 values"],
        &data,
        &conf,
    );
    assert!(live.exists() && !parked.exists(), "the replica changed");
    // A name the protocol never carries, as the first command: refused
    // before the replica's pg_control is set aside.
    let msgs = [
        define_command(),
        command(2, 3, "pg_wal/000000010000000000000099", b""),
        chunk(b"abc"),
    ]
    .concat();
    let out = receive_from(&data, &msgs, false);
    refused(
        &out,
        &["which the catch-up protocol never carries"],
        &data,
        &conf,
    );
    assert!(!out.stderr.contains(HALF), "{}", out.dump());
    assert!(live.exists() && !parked.exists(), "the replica changed");

    // Finding 2 + 9: pg_control first, then a file cut short by the
    // connection: pg_control is not in place, the cut is the connection's,
    // the operator is told to run again.
    // The file cut is template1's pg_class: the replica's copy must stay
    // whole (a short one would be patched with increments only next time).
    let pg_class = data.join("base/1/1259");
    let pg_class_before = fs::read(&pg_class).unwrap();
    let cut = [
        define_command(),
        command(4, 0, "global/pg_control", &control),
        command(2, 3, "base/1/99999999", b""),
        chunk(b"abc"),
        command(2, 100, "base/1/1259", b""),
        chunk(b"abc"),
    ]
    .concat();
    let out = receive_from(&data, &cut, false);
    refused(
        &out,
        &[
            "catch-up connection with",
            "it ended in the middle of",
            HALF,
        ],
        &data,
        &conf,
    );
    assert!(!live.exists() && parked.exists(), "pg_control is in place");
    assert_eq!(fs::read(&pg_class).unwrap(), pg_class_before);
    assert_eq!(fs::read(data.join("base/1/99999999")).unwrap(), b"abc");
    assert!(!data.join("base/1/1259.walden-tmp").exists());

    // pg_control and IsDone, no backup_label: refused, still parked.
    let no_label = [
        define_command(),
        command(4, 0, "global/pg_control", &control),
        command(0, 0, "", b""),
    ]
    .concat();
    let out = receive_from(&data, &no_label, false);
    refused(&out, &["without sending backup_label", HALF], &data, &conf);
    assert!(!live.exists() && parked.exists(), "pg_control is in place");

    // Finding 5: names the protocol never carries.
    for (cmd, says) in [
        (
            command(
                4,
                0,
                "postgresql.auto.conf",
                b"archive_command='touch /tmp/x'\n",
            ),
            "'postgresql.auto.conf', which the catch-up protocol never carries",
        ),
        (
            command(2, 0, "recovery.signal", b""),
            "'recovery.signal', which the catch-up protocol never carries",
        ),
        (
            command(2, 3, "pg_wal/000000010000000000000099", b""),
            "'pg_wal/000000010000000000000099', which the catch-up protocol never carries",
        ),
        (
            command(2, 3, "global/pg_control.walden-catchup", b""),
            "'global/pg_control.walden-catchup', which the catch-up protocol never carries",
        ),
        (
            command(2, 8192, "global/pg_control", b""),
            "'global/pg_control', which the catch-up protocol never carries",
        ),
    ] {
        let msgs = [define_command(), cmd, chunk(b"abc")].concat();
        let out = receive_from(&data, &msgs, false);
        refused(&out, &[says, HALF], &data, &conf);
        assert!(!live.exists() && parked.exists());
    }
    assert!(!data.join("recovery.signal").exists());
    assert!(!data.join("pg_wal/000000010000000000000099").exists());

    // The real sender: the replica catches up from its parked pg_control,
    // the dropped tablespace goes with its pgsql_tmp, the replica starts.
    let (sent, received) =
        catchup_over_tcp(&primary, &data, Walden::new(), Walden::new(), &store.env());
    sent.assert_ok();
    received.assert_ok();
    assert!(live.exists() && !parked.exists());
    assert!(!data.join(format!("pg_tblspc/{oid}")).exists());
    assert!(!version_dir.exists(), "{}", received.dump());
    assert!(!data.join("base/1/99999999").exists());
    assert_eq!(fs::read(data.join("postgresql.auto.conf")).unwrap(), conf);
    chown_postgres(&data);
    replica.start_server();
    wait_streaming(&replica);
    wait_replayed(&primary, &replica);
    let template1 = &[("template1", "SELECT count(*) > 100 FROM pg_class")];
    assert_eq!(
        rows_with(&replica, template1),
        rows_with(&primary, template1),
        "{}",
        replica.log_tail()
    );
}

/// catchup-send (under `/usr/bin/time -v` when `timed`) from `primary` to
/// a fake catchup-receive that sends `messages` and reads what comes back.
fn send_to(primary: &PgCluster, messages: &[u8], timed: bool) -> Output {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stream = lz4(messages);
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(&stream);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let walden = if timed {
        Walden::program("/usr/bin/time").arg("-v").arg(walden_bin())
    } else {
        Walden::new()
    };
    let out = walden
        .envs(primary.env())
        .arg("catchup-send")
        .arg(primary.data_dir())
        .arg(format!("127.0.0.1:{port}"))
        .timeout(Duration::from_secs(60))
        .run();
    fake.join().unwrap();
    out
}

/// The decoder runs on the primary too: a hostile catchup-receive is
/// refused in bounded memory, its values named, not printed.
#[test]
fn a_hostile_receiver_is_refused_by_the_sender() {
    let primary = wal_dropping_primary();
    let id: u64 = primary
        .psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();
    let mut o = Gob::default();
    o.int(64)
        .begin()
        .field(0)
        .uint(id)
        .field(1)
        .uint(1)
        .field(2)
        .uint(1)
        .end();
    let control = [
        define_struct(
            64,
            "PgControlData",
            &[
                ("SystemIdentifier", 3),
                ("CurrentTimeline", 3),
                ("Checkpoint", 3),
            ],
        ),
        o.msg(),
    ]
    .concat();
    let check = |out: &Output, says: &str| {
        assert_eq!(out.code, 1, "{}", out.dump());
        assert!(out.stderr.contains(says), "'{says}' not in: {}", out.dump());
        assert!(
            out.stderr.contains("reading the replica's file list"),
            "{}",
            out.dump()
        );
        assert!(
            out.stderr.len() < 64 << 10,
            "a {}-byte log",
            out.stderr.len()
        );
    };
    // Another type where the list belongs.
    let mut o = Gob::default();
    o.int(72).uint(0).uint(10_000);
    o.b.resize(o.b.len() + 10_000, 0);
    let bools = [control.clone(), define_slice(72, "[]bool", 1), o.msg()].concat();
    check(
        &send_to(&primary, &bools, false),
        "expected a map, got a value of type slice",
    );
    // A list announced at 1 GiB.
    let mut o = Gob::default();
    o.uint(1 << 30);
    let huge = [control.clone(), o.b].concat();
    check(
        &send_to(&primary, &huge, false),
        "a message of 1073741824 bytes, more than the 83886080 bytes allowed",
    );
    // One entry of 20M one-byte values (640 MB as values): refused.
    let n = 20_000_000u64;
    let mut o = Gob::default();
    o.int(69).uint(0).uint(1).bytes(b"x").uint(n);
    o.b.resize(o.b.len() + n as usize, 0);
    let bomb = [
        control,
        define_slice(72, "[]bool", 1),
        define_map(69, "BackupFileList", 6, 72),
        o.msg(),
    ]
    .concat();
    let out = send_to(&primary, &bomb, true);
    check(&out, "expands to more memory than its size allows");
    let rss = max_rss_kib(&out);
    eprintln!("catchup-send max RSS with a 20 MB hostile file list: {rss} KiB");
    assert!(rss < 200 << 10, "max RSS {rss} KiB");
}
