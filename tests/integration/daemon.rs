//! `walden daemon`: WAL-G's daemon socket protocol spoken byte by byte by
//! a client written here from the spec's framing (and, when
//! WALDEN_WALG_DAEMON_CLIENT names WAL-G's `walg-daemon-client`, by that
//! client as PostgreSQL's archive_command), on real segments of a real
//! PostgreSQL 15, against the S3 server; every pushed segment fetched back
//! by `walden wal-fetch` equals the server's; bad messages get `E` and the
//! daemon goes on; SIGTERM stops it and removes the socket. Also measures
//! a push through the daemon against a `walden wal-push` process. With
//! WALDEN_WALG_ARCHIVE (WAL-G's walg_archive.so, built with PGXS),
//! PostgreSQL archives through the daemon with that archive library.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::scenario::{
    assert_wal_matches_server, recovering_through_walden, restore_and_compare,
};
use crate::harness::tmp::{postgres_ids, running_as_root};
use crate::harness::{walden_bin_for_postgres, PgCluster, Running, TempDir, Walden};
use crate::store::{codec_env, Store};

/// The rows pgbench changes.
const BALANCES: &str = "SELECT sum(abalance)::text || '/' || count(*) FROM pgbench_accounts";

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 3) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// WAL-G's argument list: count byte, then u16 BE length + bytes each.
fn args(list: &[&str]) -> Vec<u8> {
    let mut out = vec![list.len() as u8];
    for a in list {
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(a.as_bytes());
    }
    out
}

/// Send `bytes` on a new connection and read every reply byte until the
/// daemon closes it.
fn exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).expect("connect to the daemon");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    if let Err(e) = conn.read_to_end(&mut reply) {
        let log = DAEMON_LOG.with(|l| l.borrow().clone());
        let log = fs::read_to_string(log).unwrap_or_default();
        panic!("reading the daemon's reply to {bytes:?}: {e}\n--- daemon log ---\n{log}");
    }
    reply
}

thread_local! {
    /// The daemon's log file (WALG_LOG_DESTINATION), shown on failures.
    static DAEMON_LOG: std::cell::RefCell<PathBuf> = std::cell::RefCell::new(PathBuf::new());
}

/// The daemon as PostgreSQL's own user would run it (when the tests run as
/// root: the postgres user, which owns PGDATA and reads what it fetches).
fn start_daemon(
    store: &Store,
    codec: &[(String, String)],
    pgdata: &Path,
    socket: &Path,
) -> Running {
    let dir = socket.parent().unwrap();
    let mut daemon = Walden::program(walden_bin_for_postgres(dir))
        .envs(store.env())
        .envs(codec.to_vec())
        .env("PGDATA", pgdata)
        .env("WALG_LOG_LEVEL", "DEVEL")
        .env("HOME", dir)
        .env("WALG_LOG_DESTINATION", dir.join("daemon.log"))
        .arg("daemon")
        .arg(socket);
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        daemon = daemon.user(uid, gid);
    }
    DAEMON_LOG.with(|l| *l.borrow_mut() = dir.join("daemon.log"));
    let mut daemon = daemon.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(socket).is_err() {
        if daemon.child.try_wait().unwrap().is_some() {
            let out = daemon.wait(Duration::from_secs(5));
            let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            panic!("the daemon ended: {}{log}", out.stderr);
        }
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// `count` closed, real segments in pg_wal (kept by wal_keep_size).
fn make_segments(pg: &PgCluster, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..count {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g; -- {i}"
        ));
        names.push(pg.switch_wal());
    }
    names
}

fn assert_stored(store: &Store, codec: &[(String, String)], pg: &PgCluster, names: &[String]) {
    let walden = || store.walden().envs(codec.to_vec());
    assert_wal_matches_server(walden, &pg.data_dir().join("pg_wal"), names);
}

#[test]
fn daemon_speaks_walg_protocol() {
    let store = Store::s3();
    let codec = codec_env("lz4", true);
    let pg = PgCluster::builder()
        .conf("archive_mode", "off")
        .conf("wal_keep_size", "'1GB'")
        .start();
    pg.psql("CREATE TABLE t (id int, v text)");
    let segments = make_segments(&pg, 8);
    let sock_dir = TempDir::new("daemon-sock");
    sock_dir.chown_postgres();
    let socket = sock_dir.join("walden.sock");
    // A stale socket of an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    crate::harness::tmp::chown_postgres(&socket);
    let daemon = start_daemon(&store, &codec, pg.data_dir(), &socket);

    // walg_archive's exchange: a check, then on the same connection the
    // 24-byte name; the daemon answers each with one byte and closes.
    let mut wire = frame(b'C', b"CHECK");
    assert_eq!(wire, b"C\x00\x08CHECK");
    wire.extend(frame(b'F', segments[0].as_bytes()));
    assert_eq!(exchange(&socket, &wire), b"OO");

    // Clients at once (walg-daemon-client's raw single argument).
    std::thread::scope(|s| {
        for name in &segments[1..5] {
            let socket = &socket;
            s.spawn(move || {
                assert_eq!(
                    exchange(socket, &frame(b'F', name.as_bytes())),
                    b"O",
                    "{name}"
                );
            });
        }
    });
    // `%p` relative to PGDATA names the same file.
    let relative = format!("pg_wal/{}", segments[5]);
    assert_eq!(exchange(&socket, &frame(b'F', relative.as_bytes())), b"O");
    assert_stored(&store, &codec, &pg, &segments[..6]);

    // The point of the daemon: push latency against a process per segment
    // (same segments, same storage, one at a time as the archiver works;
    // before any fetch, whose prefetching would compete for the CPU).
    // 50 pushes, as the benchmark asks (8 segments, cycled).
    let rounds: Vec<&String> = segments.iter().cycle().take(50).collect();
    let start = Instant::now();
    for name in &rounds {
        assert_eq!(exchange(&socket, &frame(b'F', name.as_bytes())), b"O");
    }
    let via_daemon = start.elapsed();
    let start = Instant::now();
    for name in &rounds {
        store
            .walden()
            .envs(codec.clone())
            .arg("wal-push")
            .arg(pg.data_dir().join("pg_wal").join(name))
            .run()
            .assert_ok();
    }
    let via_processes = start.elapsed();
    eprintln!(
        "push latency per segment ({} segments, S3, lz4 + libsodium): daemon {:.1} ms, wal-push process {:.1} ms",
        rounds.len(),
        via_daemon.as_secs_f64() * 1000.0 / rounds.len() as f64,
        via_processes.as_secs_f64() * 1000.0 / rounds.len() as f64
    );

    // wal-fetch: the destination is relative to PGDATA, or absolute
    // inside it; any other absolute one is taken below PGDATA, as WAL-G's
    // daemon does, and one with '..' is refused.
    let server = fs::read(pg.data_dir().join("pg_wal").join(&segments[2])).unwrap();
    let inside = pg.data_dir().join("daemon-fetched");
    let dest_text = inside.display().to_string();
    for dest in [dest_text.as_str(), "daemon-fetched-relative"] {
        let reply = exchange(&socket, &frame(b'f', &args(&[segments[2].as_str(), dest])));
        assert_eq!(reply, b"O", "{dest}");
        let fetched = pg.data_dir().join(dest);
        assert!(fs::read(&fetched).unwrap() == server, "{dest}");
        fs::remove_file(fetched).unwrap();
    }
    // (Below PGDATA its directories do not exist: an error, but nothing
    // outside PGDATA either way.)
    let outside = TempDir::new("daemon-fetch");
    outside.chown_postgres();
    let absolute = outside.join("RECOVERYXLOG");
    exchange(
        &socket,
        &frame(
            b'f',
            &args(&[segments[2].as_str(), &absolute.display().to_string()]),
        ),
    );
    assert!(!absolute.exists(), "nothing written outside PGDATA");
    let reply = exchange(
        &socket,
        &frame(b'f', &args(&[segments[2].as_str(), "../escaped"])),
    );
    assert_eq!(reply, b"E");
    assert!(!pg.data_dir().parent().unwrap().join("escaped").exists());
    // A segment storage does not have: N, which the client turns into 74.
    let reply = exchange(
        &socket,
        &frame(
            b'f',
            &args(&["0000000100000000000000FE", dest_text.as_str()]),
        ),
    );
    assert_eq!(reply, b"N");

    // Bad messages: E and the connection closed; the daemon lives on.
    let missing = "000000010000000000000099";
    for (what, bytes) in [
        ("unknown type", frame(b'X', b"hello")),
        ("length below the header", b"F\x00\x02".to_vec()),
        ("fetch with one argument", frame(b'f', &args(&["x"]))),
        ("fetch body cut short", frame(b'f', b"\x02\x00\x30abc")),
        (
            "push of a path outside pg_wal",
            frame(b'F', b"../../../etc/passwd"),
        ),
        (
            "push of a file that is not there",
            frame(b'F', missing.as_bytes()),
        ),
    ] {
        assert_eq!(exchange(&socket, &bytes), b"E", "{what}");
    }
    // A header cut off by the client: no crash either.
    {
        let mut conn = UnixStream::connect(&socket).unwrap();
        conn.write_all(b"F\x00").unwrap();
    }
    // A check leaves the connection open for the next message.
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&frame(b'C', b"CHECK")).unwrap();
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"O");
    conn.write_all(&frame(b'C', b"CHECK")).unwrap();
    conn.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"O");
    drop(conn);

    // WAL-G's own client, when built (see the module comment).
    if let Some(client) = std::env::var_os("WALDEN_WALG_DAEMON_CLIENT").filter(|c| !c.is_empty()) {
        let run = |args: &[&str]| {
            std::process::Command::new(&client)
                .arg(&socket)
                .args(args)
                .output()
                .expect("run walg-daemon-client")
        };
        let out = run(&["wal-push", segments[6].as_str()]);
        assert!(out.status.success(), "{out:?}");
        let out = run(&["wal-fetch", segments[6].as_str(), "viaclient"]);
        assert!(out.status.success(), "{out:?}");
        assert!(pg.data_dir().join("viaclient").exists());
        let out = run(&["wal-fetch", "0000000100000000000000FE", "viaclient"]);
        assert_eq!(out.status.code(), Some(74), "{out:?}");
        assert_stored(&store, &codec, &pg, &segments[6..7]);
    } else {
        eprintln!("WALDEN_WALG_DAEMON_CLIENT unset: WAL-G's walg-daemon-client not tried");
    }

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!socket.exists(), "the socket file is removed on stop");
    let log = fs::read_to_string(sock_dir.join("daemon.log")).unwrap();
    assert!(log.contains("Message loop failure"), "{log}");
}

/// PostgreSQL archives a pgbench run through WAL-G's walg-daemon-client
/// and the daemon, and a base backup recovers through the daemon's
/// wal-fetch. Needs WALDEN_WALG_DAEMON_CLIENT (WAL-G's client, built with
/// `go build ./cmd/daemonclient`); says so and skips without it.
#[test]
fn postgres_archives_through_walg_daemon_client() {
    let Some(client) = std::env::var_os("WALDEN_WALG_DAEMON_CLIENT").filter(|c| !c.is_empty())
    else {
        eprintln!("WALDEN_WALG_DAEMON_CLIENT unset: skipped");
        return;
    };
    let client = PathBuf::from(client);
    let store = Store::fs();
    let codec = codec_env("zstd", false);
    let sock_dir = TempDir::new("daemon-sock");
    sock_dir.chown_postgres();
    let socket = sock_dir.join("walden.sock");
    let archive = format!("'{} {} wal-push %f'", client.display(), socket.display());
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", &archive)
        .start();
    let daemon = start_daemon(&store, &codec, pg.data_dir(), &socket);
    pg.pgbench_init(1);
    let restored_dir = TempDir::new("daemon-restored");
    let data = restored_dir.join("data");
    pg.base_backup(&data);
    pg.pgbench(&["-n", "-t", "1000", "-c", "2"]);
    let expected = pg.psql(BALANCES);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    pg.stop();

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Recovery fetches through a daemon serving the restored data
    // directory, %p relative to it, as PostgreSQL gives it.
    crate::harness::tmp::chown_postgres(&data);
    let daemon = start_daemon(&store, &codec, &data, &socket);
    let restore = format!(
        "'{} {} wal-fetch %f %p'",
        client.display(),
        socket.display()
    );
    fs::write(data.join("recovery.signal"), "").unwrap();
    let restored = PgCluster::builder()
        .conf("restore_command", &restore)
        .conf("archive_mode", "off");
    let _restored = restore_and_compare(restored, data.clone(), BALANCES, &expected);

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// PostgreSQL 15's archiver loads WAL-G's `walg_archive` archive library
/// (WALDEN_WALG_ARCHIVE names the built walg_archive.so; skipped without)
/// and archives a pgbench run through the daemon; a base backup taken
/// before recovers through `walden wal-fetch` from what was archived.
#[test]
fn postgres_archives_through_walg_archive_library() {
    let Some(library) = std::env::var_os("WALDEN_WALG_ARCHIVE").filter(|c| !c.is_empty()) else {
        eprintln!("WALDEN_WALG_ARCHIVE unset: skipped");
        return;
    };
    let store = Store::fs();
    let codec = codec_env("lz4", true);
    let sock_dir = TempDir::new("daemon-sock");
    sock_dir.chown_postgres();
    let socket = sock_dir.join("walden.sock");
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "off")
        .conf("wal_keep_size", "'1GB'")
        .start();
    let daemon = start_daemon(&store, &codec, pg.data_dir(), &socket);
    // walg_archive checks at load time that the socket exists.
    pg.stop();
    let mut conf = fs::read_to_string(pg.data_dir().join("postgresql.conf")).unwrap();
    conf.push_str(&format!(
        "\narchive_mode = on\narchive_library = '{}'\nwalg_archive.walg_socket = '{}'\n",
        PathBuf::from(library).display(),
        socket.display()
    ));
    fs::write(pg.data_dir().join("postgresql.conf"), conf).unwrap();
    pg.start_server();

    pg.pgbench_init(1);
    let restored_dir = TempDir::new("walg-archive-restored");
    let data = restored_dir.join("data");
    pg.base_backup(&data);
    pg.pgbench(&["-n", "-t", "1000", "-c", "2"]);
    let expected = pg.psql(BALANCES);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(120));
    assert_eq!(
        pg.psql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "{}",
        pg.log_tail()
    );
    assert_stored(&store, &codec, &pg, std::slice::from_ref(&last));
    pg.stop();

    let restored = recovering_through_walden(&data, store.env()).env(codec.clone());
    let _restored = restore_and_compare(restored, data.clone(), BALANCES, &expected);

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stderr);
}
