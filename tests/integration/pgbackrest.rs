//! `walden pgbackrest` on a repository the real pgBackRest (the Debian
//! package scripts/install-deps.sh installs) makes during the test, from a
//! PostgreSQL 15 with a tablespace, archiving through `pgbackrest
//! archive-push`: encrypted (aes-256-cbc), bundled, a gz set (full, diff,
//! incr with writes between) and then a bz2 full, its WAL gz then bz2.
//! Each backup is restored by `walden pgbackrest backup-fetch` with
//! `--recovery-target immediate` and a moved tablespace; PostgreSQL started
//! on it replays WAL through `walden pgbackrest wal-fetch` and shows the
//! rows noted right after that backup. The incr's files equal
//! `pgbackrest restore`'s byte for byte. The same tree served by the S3
//! test server restores to the end of the archive.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::tmp::chown_postgres;
use crate::harness::{walden_bin_for_postgres, PgCluster, S3Server, TempDir, Walden};

const PASS: &str = "walden-test-passphrase";
const STANZA: &str = "demo";

/// Per table, `count:sum(hashtext(row))`: pgbench's history and accounts
/// in the default tablespace, `notes` in ts1.
const FIGURES: &str = "SELECT (SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM pgbench_accounts t) \
    || '/' || (SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM pgbench_history t) \
    || '/' || (SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM notes t)";

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `pgbackrest --config=CONF --stanza=demo ARGS` as the postgres user.
fn pgbackrest(conf: &Path, args: &[&str]) -> String {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbackrest"]);
        c
    } else {
        Command::new("pgbackrest")
    };
    cmd.arg(format!("--config={}", conf.display()))
        .arg(format!("--stanza={STANZA}"))
        .args(args)
        .current_dir("/");
    let out = cmd
        .output()
        .expect("run pgbackrest (scripts/install-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbackrest {args:?} failed:\n{text}");
    text
}

fn write_conf(conf: &Path, work: &Path, pg: &PgCluster, compress: &str) {
    fs::write(
        conf,
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-retention-full=9\nrepo1-cipher-type=aes-256-cbc\n\
             repo1-cipher-pass={PASS}\nrepo1-bundle=y\ncompress-type={compress}\nstart-fast=y\n\
             log-path={work}/log\nlock-path={work}/lock\nspool-path={work}/spool\n\
             log-level-console=warn\nlog-level-file=off\n\n[{STANZA}]\npg1-path={data}\n\
             pg1-port={port}\npg1-socket-path={socket}\n",
            repo = work.join("repo").display(),
            work = work.display(),
            data = pg.data_dir().display(),
            port = pg.port(),
            socket = pg.socket_dir().display(),
        ),
    )
    .unwrap();
    chown_postgres(conf);
}

/// The settings `walden pgbackrest` reads the repository with.
fn repo_env(prefix: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = prefix;
    env.push(("PGBACKREST_STANZA".into(), STANZA.into()));
    env.push(("PGBACKREST_REPO1_CIPHER_PASS".into(), PASS.into()));
    env
}

fn write_some(pg: &PgCluster, note: &str) {
    pg.pgbench(&["-n", "-t", "150", "-c", "2"]);
    pg.psql(&format!(
        "INSERT INTO notes SELECT g, '{note}' || g FROM generate_series(1, 500) g"
    ));
}

/// Every regular file under `a` equals the one under `b` (and the other
/// way round), except the recovery settings each tool writes; links are
/// followed only for tablespaces, whose targets differ.
fn same_tree(a: &Path, b: &Path) -> usize {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let name = rel.to_string_lossy();
                if name != "postgresql.auto.conf" && name != "recovery.signal" {
                    out.insert(rel, fs::read(&p).unwrap());
                }
            }
        }
    }
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    walk(a, a, &mut x);
    walk(b, b, &mut y);
    let names_x: Vec<_> = x.keys().collect();
    let names_y: Vec<_> = y.keys().collect();
    assert_eq!(names_x, names_y, "file lists differ");
    for (name, bytes) in &x {
        assert!(bytes == &y[name], "{} differs", name.display());
    }
    x.len()
}

#[test]
fn pgbackrest_repository_made_at_test_time_restores_with_walden() {
    let work = TempDir::new("pgbr");
    work.chown_postgres();
    let conf = work.join("pgbackrest.conf");
    let mut pg = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf(
            "archive_command",
            &format!(
                "'pgbackrest --config={} --stanza={STANZA} archive-push %p'",
                conf.display()
            ),
        )
        .start();
    write_conf(&conf, work.path(), &pg, "gz");
    let ts = work.join("ts1");
    fs::create_dir(&ts).unwrap();
    chown_postgres(&ts);
    pg.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts.display()
    ));
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    pg.psql(
        "CREATE TABLE notes TABLESPACE ts1 AS \
         SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g",
    );
    pgbackrest(&conf, &["stanza-create"]);

    // A gz set: full, diff, incr, each with writes before it; then a bz2
    // full with the WAL archived as bz2 from there on.
    let mut figures = Vec::new();
    for (kind, compress) in [
        ("full", "gz"),
        ("diff", "gz"),
        ("incr", "gz"),
        ("full", "bz2"),
    ] {
        if compress == "bz2" {
            write_conf(&conf, work.path(), &pg, "bz2");
        }
        if !figures.is_empty() {
            write_some(&pg, kind);
        }
        pgbackrest(&conf, &["backup", &format!("--type={kind}")]);
        figures.push(pg.psql(FIGURES));
    }
    write_some(&pg, "end");
    let end_figures = pg.psql(FIGURES);
    let last = pg.switch_wal();
    pg.wait_for_archive(&last, Duration::from_secs(60));
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.stop();

    let bin = walden_bin_for_postgres(work.path());
    let fs_env = repo_env(vec![(
        "WALG_FILE_PREFIX".into(),
        work.join("repo").display().to_string(),
    )]);
    let walden = |env: &[(String, String)]| {
        Walden::program(&bin)
            .envs(env.to_vec())
            .timeout(Duration::from_secs(300))
    };

    // backup-list: four backups, types and compression as made.
    let out = walden(&fs_env)
        .args(["pgbackrest", "backup-list", "--json", "--detail"])
        .run();
    out.assert_ok();
    let listed: Vec<Value> = serde_json::from_str(&out.stdout_str()).unwrap();
    let kinds: Vec<&str> = listed.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "diff", "incr", "full"], "{}", out.dump());
    let compression: Vec<&str> = listed
        .iter()
        .map(|b| b["compression"].as_str().unwrap())
        .collect();
    assert_eq!(compression, ["gz", "gz", "gz", "bz2"]);
    assert!(listed.iter().all(|b| b["bundle"] == true));
    let labels: Vec<String> = listed
        .iter()
        .map(|b| b["backup_name"].as_str().unwrap().to_string())
        .collect();

    // wal-show: one timeline, no holes.
    let out = walden(&fs_env)
        .args(["pgbackrest", "wal-show", "--json"])
        .run();
    out.assert_ok();
    let shown: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(shown[0]["archive_id"], "15-1", "{}", out.dump());
    assert_eq!(shown[0]["missing_segments"], 0, "{}", out.dump());

    // Each backup restored to its own point, the tablespace moved.
    let restores = TempDir::new("pgbr-restores");
    for (i, label) in labels.iter().enumerate() {
        let dest = restores.join(format!("data-{i}"));
        let ts_dir = restores.join(format!("ts-{i}"));
        let map = if i % 2 == 0 {
            vec![
                "--tablespace-map-all".to_string(),
                ts_dir.display().to_string(),
            ]
        } else {
            vec![
                "--tablespace-map".to_string(),
                format!("ts1={}", ts_dir.display()),
            ]
        };
        let out = walden(&fs_env)
            .args(["pgbackrest", "backup-fetch"])
            .arg(&dest)
            .arg(label)
            .args(map)
            .args(["--recovery-target", "immediate"])
            .run();
        out.assert_ok();
        let conf_text = fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
        assert!(
            conf_text.contains(" pgbackrest wal-fetch %f %p'"),
            "{conf_text}"
        );
        assert!(!dest.join("tablespace_map").exists());
        chown_postgres(&ts_dir);
        let restored = PgCluster::builder()
            .conf("archive_mode", "off")
            .env(fs_env.clone())
            .start_restored(dest.clone());
        restored.wait_for_promotion(Duration::from_secs(120));
        assert_eq!(restored.psql(FIGURES), figures[i], "backup {label}");
        assert_eq!(
            restored.psql("SELECT system_identifier FROM pg_control_system()"),
            system_id
        );
        let loc = restored
            .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'");
        let want = if i % 2 == 0 {
            ts_dir.join("ts1")
        } else {
            ts_dir.clone()
        };
        assert_eq!(
            Path::new(&loc),
            std::path::absolute(&want).unwrap(),
            "{label}"
        );
        drop(restored);
    }

    // The incr's files as pgBackRest itself restores them.
    let theirs = TempDir::new("pgbr-theirs");
    let (their_data, their_ts) = (theirs.join("data"), theirs.join("ts"));
    for d in [&their_data, &their_ts] {
        fs::create_dir(d).unwrap();
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    theirs.chown_postgres();
    pgbackrest(
        &conf,
        &[
            "restore",
            &format!("--set={}", labels[2]),
            &format!("--pg1-path={}", their_data.display()),
            &format!("--tablespace-map-all={}", their_ts.display()),
            "--type=immediate",
        ],
    );
    let ours = restores.join("ours-incr");
    let ours_ts = restores.join("ours-incr-ts");
    walden(&fs_env)
        .args(["pgbackrest", "backup-fetch"])
        .arg(&ours)
        .arg(&labels[2])
        .arg("--tablespace-map-all")
        .arg(&ours_ts)
        .run()
        .assert_ok();
    let files = same_tree(&ours, &their_data);
    assert!(files > 900, "only {files} files");
    assert!(same_tree(&ours_ts.join("ts1"), &their_ts.join("ts1")) >= 3);

    // The same repository on the S3 test server: the full of the gz set,
    // replayed to the end of the archive (gz, then bz2 WAL).
    let s3 = S3Server::start();
    copy_tree(&work.join("repo"), &s3.bucket_dir().join("pgbr"));
    let s3_env = repo_env(s3.env("pgbr"));
    let dest = restores.join("from-s3");
    let ts_dir = restores.join("from-s3-ts");
    walden(&s3_env)
        .args(["pgbackrest", "backup-fetch"])
        .arg(&dest)
        .arg(&labels[0])
        .arg("--tablespace-map-all")
        .arg(&ts_dir)
        .run()
        .assert_ok();
    chown_postgres(&ts_dir);
    fs::write(dest.join("recovery.signal"), b"").unwrap();
    let restored = PgCluster::builder()
        .conf("archive_mode", "off")
        .conf("restore_command", "'{walden} pgbackrest wal-fetch %f %p'")
        .env(s3_env.clone())
        .start_restored(dest.clone());
    restored.wait_for_promotion(Duration::from_secs(180));
    assert_eq!(restored.psql(FIGURES), end_figures);
    drop(restored);

    // A wrong passphrase: a clear error, DEST not a cluster.
    let mut wrong = fs_env.clone();
    wrong.retain(|(k, _)| k != "PGBACKREST_REPO1_CIPHER_PASS");
    wrong.push(("PGBACKREST_REPO1_CIPHER_PASS".into(), "nope".into()));
    let dest = restores.join("wrong");
    let out = walden(&wrong)
        .args(["pgbackrest", "backup-fetch"])
        .arg(&dest)
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("PGBACKREST_REPO1_CIPHER_PASS"),
        "{}",
        out.dump()
    );
    assert!(!dest.join("global/pg_control").exists());
}

/// Regular files only: object stores have no symlinks (`latest`).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else if ft.is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
