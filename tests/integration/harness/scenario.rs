//! The setups end-to-end tests share, so that a test says only what it
//! proves: a cluster archiving to walden, its backups listed and read back,
//! a copy started (recovering through walden) with its rows compared, a
//! streaming standby, a tablespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pg::PG_BIN;
use super::tmp::{chown_postgres, free_port};
use super::walden::walden_bin_for_postgres;
use super::{Output, PgBuilder, PgCluster, Running, TempDir, Walden};

/// The restore_command of a copy recovering from storage through walden.
pub const WAL_FETCH: &str = "'{walden} wal-fetch %f %p'";

/// A cluster to be started whose archive_command is `walden wal-push`,
/// into the storage `env` names (the server's environment).
pub fn archiving_cluster<I, K, V>(env: I) -> PgBuilder
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'{walden} wal-push %p'")
        .env(env)
}

/// A copy at `data` to be started that recovers, to the end of what is
/// archived, through `walden wal-fetch` from the storage `env` names:
/// writes its recovery.signal.
pub fn recovering_through_walden<I, K, V>(data: &Path, env: I) -> PgBuilder
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    fs::write(data.join("recovery.signal"), "").unwrap();
    PgCluster::builder()
        .conf("restore_command", WAL_FETCH)
        .conf("archive_mode", "off")
        .env(env)
}

/// Start `builder`'s server on the restored copy `data`, wait until it is
/// promoted, and compare what `sql` returns there with `expected` (the
/// rows the source had at the recovery target).
pub fn restore_and_compare(
    builder: PgBuilder,
    data: PathBuf,
    sql: &str,
    expected: &str,
) -> PgCluster {
    // The copy's directory says which restore failed (e.g. `walg`).
    let shown = data.display().to_string();
    let restored = builder.start_restored(data);
    restored.wait_for_promotion(Duration::from_secs(120));
    assert_eq!(
        restored.psql(sql),
        expected,
        "restored at {shown}\n{}",
        restored.log_tail()
    );
    restored
}

/// A copy at `data` to be started that recovers through walden, from the
/// storage `env` names, to the time `target` and is then promoted.
pub fn recovering_to_time<I, K, V>(data: &Path, env: I, target: &str) -> PgBuilder
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    recovering_through_walden(data, env)
        .conf("recovery_target_time", &format!("'{target}'"))
        .conf("recovery_target_action", "'promote'")
}

/// The backups in storage, oldest first (their names grow with the start
/// LSN).
pub fn backup_names(walden: Walden) -> Vec<String> {
    let out = walden.args(["st", "ls", "basebackups_005/"]).run();
    out.assert_ok();
    let mut names: Vec<String> = out
        .stdout_str()
        .split_whitespace()
        .filter_map(|w| w.strip_suffix("_backup_stop_sentinel.json"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// The name of the backup a successful `backup-push` logged.
pub fn pushed_backup_name(out: &Output) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.split("Wrote backup with name ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("backup name in {}", out.dump()))
        .to_string()
}

/// A stored JSON object (`st cat KEY`), e.g. a sentinel or
/// files_metadata.json.
pub fn stored_json(walden: Walden, key: &str) -> Value {
    let out = walden.args(["st", "cat", key]).run();
    out.assert_ok();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each of `names` fetched back with `walden wal-fetch` (`walden()` is
/// configured for the storage) is byte-identical to the server's copy in
/// `pg_wal`.
pub fn assert_wal_matches_server(walden: impl Fn() -> Walden, pg_wal: &Path, names: &[String]) {
    let fetched = TempDir::new("wal-check");
    for name in names {
        let dest = fetched.join(name);
        walden()
            .args(["wal-fetch", name.as_str()])
            .arg(&dest)
            .run()
            .assert_ok();
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), crate::store::WAL_SIZE);
        let server = fs::read(pg_wal.join(name)).unwrap();
        assert!(got == server, "{name} differs from the server's copy");
    }
}

/// pg_amcheck over every database of a restored server: heap and B-tree
/// pages as PostgreSQL itself checks them.
pub fn amcheck(pg: &PgCluster) {
    let out = Command::new(format!("{PG_BIN}/pg_amcheck"))
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres"])
        .args(["--install-missing", "--all", "--heapallindexed"])
        .output()
        .expect("run pg_amcheck");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "pg_amcheck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tablespace `ts1` of `pg` at `<dir>/loc` in a new directory labelled
/// `label`: the directory (kept while the server lives), the location and
/// the tablespace's oid.
pub fn tablespace(pg: &PgCluster, label: &str) -> (TempDir, PathBuf, String) {
    let dir = TempDir::new(label);
    let loc = dir.join("loc");
    fs::create_dir(&loc).unwrap();
    chown_postgres(dir.path());
    pg.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        loc.display()
    ));
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    (dir, loc, oid)
}

/// A `--restore-spec` file's JSON: tablespace `oid` moved to `loc`, the
/// data directory restored at `base`.
pub fn restore_spec(oid: &str, loc: &Path, base: &Path) -> String {
    format!(
        "{{\"{oid}\":{{\"loc\":\"{}\",\"link\":\"pg_tblspc/{oid}\"}},\"base_prefix\":\"{}\",\"tablespaces\":[\"{oid}\"]}}",
        loc.display(),
        base.display()
    )
}

/// Where a restore that moves tablespace `oid` goes (the original location
/// is the live server's): the data directory, the tablespace's new place
/// and the `--restore-spec` file saying so, all in `dirs` (postgres's).
pub struct MovedRestore {
    pub dirs: TempDir,
    pub data: PathBuf,
    pub new_loc: PathBuf,
    pub spec_file: PathBuf,
}

pub fn moved_restore(label: &str, oid: &str) -> MovedRestore {
    let dirs = TempDir::new(label);
    let data = dirs.join("data");
    let new_loc = dirs.join("ts-new");
    let spec_file = dirs.join("spec.json");
    fs::write(&spec_file, restore_spec(oid, &new_loc, &data)).unwrap();
    dirs.chown_postgres();
    MovedRestore {
        dirs,
        data,
        new_loc,
        spec_file,
    }
}

/// Tablespace `ts1` of the restored server `pg` is at `loc` (where a
/// `--restore-spec` moved it).
pub fn assert_tablespace_at(pg: &PgCluster, loc: &Path) {
    assert_eq!(
        pg.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"),
        loc.display().to_string()
    );
}

/// A streaming standby of `primary` in `dir/data`, made by pg_basebackup
/// (with the WAL it needs).
pub fn replica_of(primary: &PgCluster, dir: &TempDir) -> PgCluster {
    let data = dir.join("data");
    pg_basebackup(primary, &data, &[]);
    start_standby(primary, data)
}

/// A copy of `primary` at `data` by pg_basebackup, streaming the WAL it
/// needs, each tablespace `(from, to)` of `relocate` moved: what a standby
/// starts from.
pub fn pg_basebackup(primary: &PgCluster, data: &Path, relocate: &[(&Path, &Path)]) {
    let mut cmd = Command::new(format!("{PG_BIN}/pg_basebackup"));
    cmd.args(["-h", &primary.socket_dir().display().to_string()])
        .args(["-p", &primary.port().to_string(), "-U", "postgres"])
        .args(["-X", "stream", "-c", "fast", "-D"])
        .arg(data);
    for (from, to) in relocate {
        cmd.arg(format!("-T{}={}", from.display(), to.display()));
    }
    let out = cmd.output().expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start the copy at `data` as a hot standby streaming from `primary`;
/// returns once it streams.
pub fn start_standby(primary: &PgCluster, data: PathBuf) -> PgCluster {
    let pg = standby_of(primary, &data)
        .conf("hot_standby", "on")
        .start_restored(data);
    wait_streaming(&pg);
    pg
}

/// The copy at `data` to be started as a standby of `primary` (writes its
/// standby.signal; `primary_conninfo` over the primary's socket), for the
/// tests that add their own settings (archiving, a restore_command).
pub fn standby_of(primary: &PgCluster, data: &Path) -> PgBuilder {
    fs::write(data.join("standby.signal"), "").unwrap();
    PgCluster::builder().conf("primary_conninfo", &conninfo(primary))
}

/// `primary_conninfo` (quoted for postgresql.conf) of a standby of
/// `primary`, over its socket.
pub fn conninfo(primary: &PgCluster) -> String {
    format!(
        "'host={} port={} user=postgres'",
        primary.socket_dir().display(),
        primary.port()
    )
}

/// Until `pg`'s WAL receiver streams (a standby has connected).
pub fn wait_streaming(pg: &PgCluster) {
    pg.wait_for_sql(
        "SELECT status FROM pg_stat_wal_receiver",
        "streaming",
        Duration::from_secs(60),
    );
}

/// Until `standby` has replayed everything `primary` has written so far.
pub fn wait_replayed(primary: &PgCluster, standby: &PgCluster) {
    let lsn = primary.psql("SELECT pg_current_wal_lsn()");
    standby.wait_for_sql(
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
        "t",
        Duration::from_secs(60),
    );
}

/// The cluster's connection settings without PGDATA: what a remote
/// backup-push (BASE_BACKUP over a replication connection) is given.
pub fn remote_env(pg: &PgCluster) -> Vec<(String, String)> {
    pg.env()
        .into_iter()
        .filter(|(k, _)| k != "PGDATA")
        .collect()
}

/// `backup-fetch DEST NAME ARGS` from the storage `env` names, by a walden
/// binary the postgres user can execute: the restore_command it writes
/// runs in the restored server. Returns that binary's directory, to be
/// kept until the server is gone.
pub fn fetch_for_postgres<I, K, V>(env: I, dest: &Path, name: &str, args: &[&str]) -> TempDir
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<std::ffi::OsString>,
    V: Into<std::ffi::OsString>,
{
    let bin_dir = TempDir::new("fetch-bin");
    bin_dir.chown_postgres();
    let bin = walden_bin_for_postgres(bin_dir.path());
    Walden::program(&bin)
        .envs(env)
        .arg("backup-fetch")
        .arg(dest)
        .arg(name)
        .args(args)
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    bin_dir
}

/// A server restored by [`fetch_for_postgres`], with the directory of the
/// walden binary its restore_command runs: fields drop in order, so the
/// server stops before that binary goes.
pub struct Restored {
    pub pg: PgCluster,
    pub bin_dir: TempDir,
}

impl std::ops::Deref for Restored {
    type Target = PgCluster;
    fn deref(&self) -> &PgCluster {
        &self.pg
    }
}

/// One catchup over TCP: `receiver` (`catchup-receive`) on `data`, once it
/// listens, `sender` (`catchup-send`) from `primary`; both with the
/// storage `env` names. Returns (sent, received).
pub fn catchup_over_tcp(
    primary: &PgCluster,
    data: &Path,
    sender: Walden,
    receiver: Walden,
    env: &[(String, String)],
) -> (Output, Output) {
    let (rx, port) = start_catchup_receive(receiver.envs(env.to_vec()), data);
    let sent = sender
        .envs(env.to_vec())
        .envs(primary.env())
        .arg("catchup-send")
        .arg(primary.data_dir())
        .arg(format!("127.0.0.1:{port}"))
        .timeout(Duration::from_secs(120))
        .run();
    let received = rx.wait(Duration::from_secs(60));
    (sent, received)
}

/// `walden` running `catchup-receive` on `data` at a free port; returns
/// once it listens, with the port.
pub fn start_catchup_receive(walden: Walden, data: &Path) -> (Running, u16) {
    let port = free_port();
    let rx = walden
        .arg("catchup-receive")
        .arg(data)
        .arg(port.to_string())
        .spawn();
    let start = Instant::now();
    while !listening(port) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "catchup-receive does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (rx, port)
}

/// Whether something listens on TCP `port` (from /proc, so that the
/// probe does not take the receiver's one connection).
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        fs::read_to_string(f).unwrap_or_default().lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
        })
    })
}

/// A cluster to be started that does not archive and keeps every segment
/// in pg_wal, so that what wal-receive stored can be compared with it.
pub fn wal_keeping_cluster() -> PgBuilder {
    PgCluster::builder()
        .conf("archive_mode", "off")
        .conf("wal_keep_size", "'2GB'")
}

/// `walden` running `wal-receive` from `pg` over replication slot `slot`;
/// returns once the slot is active (it streams).
pub fn start_wal_receive(walden: Walden, pg: &PgCluster, slot: &str) -> Running {
    let receiver = walden
        .envs(pg.env())
        .env("WALG_SLOTNAME", slot)
        .arg("wal-receive")
        .spawn();
    wait_slot_active(pg, slot);
    receiver
}

/// Until wal-receive streams from `pg` over replication slot `slot`.
pub fn wait_slot_active(pg: &PgCluster, slot: &str) {
    pg.wait_for_sql(
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"),
        "1",
        Duration::from_secs(60),
    );
}

/// SIGTERM to a running wal-receive, as a service manager stops it; it
/// must exit 0. Its output, for the test's own checks.
pub fn stop_wal_receive(receiver: Running) -> Output {
    receiver.signal(libc::SIGTERM);
    let out = receiver.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "wal-receive: {}", out.stderr);
    out
}
