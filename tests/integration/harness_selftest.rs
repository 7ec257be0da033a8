//! Proves the harness itself works, so failures elsewhere point at walden.

use std::net::TcpStream;

use crate::harness::{PgCluster, S3Server};

#[test]
fn s3_server_starts_stops_and_restarts() {
    let mut s3 = S3Server::start();
    let addr = ("127.0.0.1", s3.port());
    TcpStream::connect(addr).expect("nanio answers on its port");
    assert!(
        s3.bucket_dir().is_dir(),
        "bucket dir {} exists",
        s3.bucket_dir().display()
    );
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    let env = s3.env("/selftest");
    assert!(
        env.contains(&("WALG_S3_PREFIX".into(), "s3://walden-test/selftest".into())),
        "{env:?}"
    );

    s3.stop();
    assert!(TcpStream::connect(addr).is_err(), "port closed after stop");
    s3.restart();
    TcpStream::connect(addr).expect("nanio answers again after restart");
    assert!(s3.bucket_dir().is_dir(), "bucket dir survives restart");
}

#[test]
fn pg_cluster_runs_sql_and_pgbench() {
    let mut pg = PgCluster::start(&[]);
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "1000");
    assert_eq!(pg.psql("SHOW data_checksums"), "on");
    assert!(pg.try_psql("SELECT * FROM missing_table").is_err());

    pg.pgbench_init(1);
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_accounts"), "100000");

    pg.stop();
    pg.stop(); // idempotent
    assert!(!pg.is_running());
}

/// Covers what backup/restore tests rely on beyond plain SQL: the server
/// environment reaching archive_command, and starting a server on a copied
/// data directory in archive recovery. Uses only PostgreSQL's own tools
/// (cp and pg_basebackup) so a failure here is the harness's fault.
#[test]
fn pg_cluster_archives_and_restores_without_walden() {
    use crate::harness::TempDir;
    use std::time::Duration;

    let archive = TempDir::new("selftest-archive");
    archive.chown_postgres();
    let dir = archive.path().display();
    // The guard on $MARKER proves the builder's env reaches archive_command.
    let cmd = format!("'test \"$MARKER\" = yes && cp %p {dir}/%f'");
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", &cmd)
        .env([("MARKER", "yes")])
        .start();
    assert!(
        pg.walden_path().is_file(),
        "walden binary for postgres exists"
    );
    pg.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g");

    let copy = TempDir::new("selftest-restore");
    let data = copy.join("data");
    pg.base_backup(&data);
    pg.psql("INSERT INTO t SELECT g FROM generate_series(501, 1000) g");
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(60));
    pg.stop();

    std::fs::write(data.join("recovery.signal"), "").expect("write recovery.signal");
    let restore = format!("'cp {dir}/%f %p'");
    let restored = PgCluster::start_restored(
        data,
        &[("restore_command", &restore), ("archive_mode", "off")],
    );
    restored.wait_for_promotion(Duration::from_secs(60));
    assert_eq!(
        restored.psql("SELECT count(*) FROM t"),
        "1000",
        "{}",
        restored.log_tail()
    );
}
