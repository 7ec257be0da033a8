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
use crate::harness::{
    walden_bin_for_postgres, FakeResponse, FakeS3, PgCluster, S3Server, TempDir, Walden,
};

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
/// way round) in bytes, mode, owner and modification time (pgBackRest
/// runs as postgres here, walden as the test: as root it gives files the
/// manifest's owner, postgres, as pgBackRest does), except the recovery
/// settings each tool writes; links are followed only for tablespaces,
/// whose targets differ.
fn same_tree(a: &Path, b: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    type Seen = BTreeMap<PathBuf, ((u32, u32, u32), i64, Vec<u8>)>;
    fn walk(root: &Path, dir: &Path, out: &mut Seen) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let name = rel.to_string_lossy();
                if name != "postgresql.auto.conf" && name != "recovery.signal" {
                    let owner = (meta.mode() & 0o7777, meta.uid(), meta.gid());
                    let seen = (owner, meta.mtime(), fs::read(&p).unwrap());
                    out.insert(rel, seen);
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
    for (name, (mode, mtime, bytes)) in &x {
        let (their_mode, their_mtime, theirs) = &y[name];
        assert!(bytes == theirs, "{} differs", name.display());
        assert_eq!(
            (mode, mtime),
            (their_mode, their_mtime),
            "{}: (mode, uid, gid) and time",
            name.display()
        );
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

// The three sample repositories pgBackRest 2.45 made
// (../shared/fixtures/pgbackrest, EXPECTED.md): every backup restored by
// walden equals `pgbackrest restore`'s tree and recovers to the rows
// EXPECTED.json recorded for it.

fn fixtures_dir() -> PathBuf {
    std::env::var_os("WALDEN_PGBR_FIXTURES").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/fixtures/pgbackrest"
            ))
        },
        PathBuf::from,
    )
}

fn expected_set(set: &str) -> Value {
    let path = fixtures_dir().join("EXPECTED.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: Value = serde_json::from_str(&text).unwrap();
    all["sets"][set].clone()
}

/// The tarball of `set` extracted into `root`, owned by postgres, its
/// pgbackrest.conf pointing there (as EXPECTED.md says to use it).
fn extract_sample(set: &str, root: &Path) -> PathBuf {
    let tarball = fixtures_dir().join(format!("{set}.tar.zst"));
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -C \"$2\" -xf -")
        .arg("sh")
        .arg(&tarball)
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "extracting {}: {out:?}",
        tarball.display()
    );
    let conf = root.join("pgbackrest.conf");
    let text = fs::read_to_string(&conf)
        .unwrap()
        .replace("@FIXTURE_ROOT@", &root.display().to_string());
    fs::write(&conf, text).unwrap();
    for d in ["log", "lock", "spool"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    chown_postgres(root);
    conf
}

/// `count:sum(hashtext(row))` per table of EXPECTED.json's figures
/// (`NULL` for the sum of an empty table), as recorded and as `pg` shows.
fn sample_figures(pg: &PgCluster, expected: &Value) -> (Vec<String>, Vec<String>) {
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for (db, tables) in expected.as_object().unwrap() {
        for (table, f) in tables.as_object().unwrap() {
            let sum = match &f["sum_hashtext"] {
                Value::Null => "NULL".to_string(),
                v => v.to_string(),
            };
            want.push(format!("{db}.{table}={}:{sum}", f["count"]));
            let row = pg.psql_in(
                db,
                &format!(
                    "SELECT count(*) || ':' || coalesce(sum(hashtext(t::text))::text, 'NULL') FROM {table} t"
                ),
            );
            got.push(format!("{db}.{table}={row}"));
        }
    }
    (want, got)
}

#[test]
fn pgbackrest_sample_repositories_restore_like_pgbackrest() {
    let bin_dir = TempDir::new("pgbr-samples-bin");
    let bin = walden_bin_for_postgres(bin_dir.path());
    for set in ["lz4-plain", "zst-aes"] {
        let exp = expected_set(set);
        let work = TempDir::new(&format!("pgbr-{set}"));
        let conf = extract_sample(set, work.path());
        let mut env = vec![
            (
                "WALG_FILE_PREFIX".to_string(),
                work.join("repo").display().to_string(),
            ),
            ("PGBACKREST_STANZA".into(), STANZA.into()),
        ];
        if let Some(pass) = exp["repo_cipher_pass"].as_str() {
            env.push(("PGBACKREST_REPO1_CIPHER_PASS".into(), pass.into()));
        }
        let walden = || {
            Walden::program(&bin)
                .envs(env.clone())
                .timeout(Duration::from_secs(300))
        };
        let system_id = exp["system_identifier"].as_str().unwrap();
        let backups = exp["backups"].as_array().unwrap();
        assert_eq!(backups.len(), 3, "{set}");
        for b in backups {
            let label = b["label"].as_str().unwrap();
            let ours = work.join(format!("ours-{label}"));
            let out = walden()
                .args(["pgbackrest", "backup-fetch"])
                .arg(&ours)
                .arg(label)
                .args(["--recovery-target", "immediate"])
                .run();
            out.assert_ok();

            let theirs = work.join(format!("theirs-{label}"));
            fs::create_dir(&theirs).unwrap();
            fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            chown_postgres(&theirs);
            pgbackrest(
                &conf,
                &[
                    "restore",
                    &format!("--set={label}"),
                    &format!("--pg1-path={}", theirs.display()),
                    "--type=immediate",
                ],
            );
            let files = same_tree(&ours, &theirs);
            let listed = b["manifest"]["files_in_manifest"].as_u64().unwrap() as usize;
            // Every file of the manifest but the recovery settings.
            assert!(
                files + 1 >= listed,
                "{set} {label}: {files} files of {listed}"
            );

            // The samples' server ran with the default max_wal_senders.
            let restored = PgCluster::builder()
                .conf("archive_mode", "off")
                .conf("max_wal_senders", "10")
                .env(env.clone())
                .start_restored(ours.clone());
            restored.wait_for_promotion(Duration::from_secs(120));
            let (want, got) = sample_figures(&restored, &b["expected"]);
            assert_eq!(got, want, "{set} {label} recovered to its end");
            assert_eq!(
                restored.psql("SELECT system_identifier FROM pg_control_system()"),
                system_id
            );
            drop(restored);
        }

        // The full backup replayed to the end of the archive.
        let label = backups[0]["label"].as_str().unwrap();
        let dest = work.join("to-the-end");
        walden()
            .args(["pgbackrest", "backup-fetch"])
            .arg(&dest)
            .arg(label)
            .run()
            .assert_ok();
        fs::write(dest.join("recovery.signal"), b"").unwrap();
        let restored = PgCluster::builder()
            .conf("archive_mode", "off")
            .conf("max_wal_senders", "10")
            .conf("restore_command", "'{walden} pgbackrest wal-fetch %f %p'")
            .env(env.clone())
            .start_restored(dest.clone());
        restored.wait_for_promotion(Duration::from_secs(180));
        let (want, got) = sample_figures(&restored, &exp["expected_end_of_archive"]);
        assert_eq!(
            got, want,
            "{set} {label} replayed to the end of the archive"
        );
        drop(restored);
    }

    // The 2.45 beta block-incremental sample: refused, nothing startable.
    let work = TempDir::new("pgbr-blockincr");
    extract_sample("lz4-blockincr-beta", work.path());
    let dest = work.join("dest");
    let out = Walden::program(&bin)
        .env("WALG_FILE_PREFIX", work.join("repo"))
        .env("PGBACKREST_STANZA", STANZA)
        .args(["pgbackrest", "backup-fetch"])
        .arg(&dest)
        .arg("LATEST")
        .run();
    out.assert_code(1);
    assert!(out.stderr.contains("block incremental"), "{}", out.dump());
    assert!(!dest.join("global/pg_control").exists());
}

/// The bundled, encrypted sample served by the scripted S3 server: each
/// bundle member is one ranged GET of exactly its bytes, so every stored
/// byte of a bundle crosses the network once.
#[test]
fn pgbackrest_bundle_members_are_ranged_gets_of_their_bytes() {
    let exp = expected_set("zst-aes");
    let work = TempDir::new("pgbr-ranges");
    extract_sample("zst-aes", work.path());
    let repo = work.join("repo");
    let served = repo.clone();
    let s3 = FakeS3::start(move |req| {
        let Some(key) = req.key().and_then(|k| k.strip_prefix("pgbr/")) else {
            return FakeResponse::listing(&[]);
        };
        let Ok(bytes) = fs::read(served.join(key)) else {
            return FakeResponse::no_such_key();
        };
        let total = bytes.len() as u64;
        match req.header("range").and_then(|r| r.strip_prefix("bytes=")) {
            None => FakeResponse::ok(bytes),
            Some(range) => {
                let (a, b) = range.split_once('-').unwrap();
                let a: u64 = a.parse().unwrap();
                let b: u64 = if b.is_empty() {
                    total - 1
                } else {
                    b.parse::<u64>().unwrap().min(total - 1)
                };
                FakeResponse::new(206, bytes[a as usize..=b as usize].to_vec())
                    .header("content-range", &format!("bytes {a}-{b}/{total}"))
            }
        }
    });
    let full = &exp["backups"][0];
    let label = full["label"].as_str().unwrap();
    let dest = work.join("dest");
    Walden::new()
        .envs(s3.env("pgbr"))
        .env("PGBACKREST_STANZA", STANZA)
        .env(
            "PGBACKREST_REPO1_CIPHER_PASS",
            exp["repo_cipher_pass"].as_str().unwrap(),
        )
        .env("WALG_DOWNLOAD_CONCURRENCY", "4")
        .args(["pgbackrest", "backup-fetch"])
        .arg(&dest)
        .arg(label)
        .timeout(Duration::from_secs(300))
        .run()
        .assert_ok();
    let bundle_gets: Vec<_> = s3
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/bundle/"))
        .collect();
    let members = full["manifest"]["bundled_files"].as_u64().unwrap() as usize;
    assert_eq!(bundle_gets.len(), members, "one GET per bundled file");
    let mut read = 0u64;
    for r in &bundle_gets {
        let range = r
            .header("range")
            .unwrap_or_else(|| panic!("{r:?} has no range"));
        let (a, b) = range
            .strip_prefix("bytes=")
            .unwrap()
            .split_once('-')
            .unwrap();
        assert!(!b.is_empty(), "{r:?} reads to the end of the bundle");
        read += b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1;
    }
    let mut stored = 0u64;
    for e in fs::read_dir(repo.join(format!("backup/{STANZA}/{label}/bundle"))).unwrap() {
        stored += e.unwrap().metadata().unwrap().len();
    }
    assert_eq!(read, stored, "bytes read from bundles against their sizes");
    assert!(dest.join("global/pg_control").exists());
}

// Hostile repositories: a copy of the lz4-plain sample whose manifest is
// changed and sealed again (its checksum holds, as a hostile repository's
// would). Each restore must fail with exit 1 and a message naming what is
// wrong, write nothing outside DEST (the case directory holds only the
// repository, DEST and an empty working directory afterwards) and leave
// no global/pg_control.

/// pgBackRest's info-file checksum (spec §3.2): SHA-1 of the content as
/// one JSON object, the `backrest-checksum` line left out.
fn reseal(text: &str) -> String {
    use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
    let mut hash = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(b"{");
    let (mut out, mut section, mut previous) = (String::new(), String::new(), None::<String>);
    for line in text.lines() {
        if line.starts_with("backrest-checksum=") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap();
        match previous.as_deref() {
            None => hash.update(format!("\"{section}\":{{").as_bytes()),
            Some(p) if p != section => hash.update(format!("}},\"{section}\":{{").as_bytes()),
            Some(_) => hash.update(b","),
        }
        let key = key.replace('\\', "\\\\").replace('"', "\\\"");
        hash.update(format!("\"{key}\":{value}").as_bytes());
        previous = Some(section.clone());
    }
    hash.update(b"}}");
    let sum: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        out.ends_with("[backrest]\n"),
        "the checksum closes the file"
    );
    out + &format!("backrest-checksum=\"{sum}\"\n")
}

/// `line` added at the top of `[section]`.
fn add(text: &str, section: &str, line: &str) -> String {
    let header = format!("\n[{section}]\n");
    assert!(text.contains(&header), "no [{section}]");
    text.replacen(&header, &format!("{header}{line}\n"), 1)
}

/// Tablespace 16384 (and 16385 with a second path) recorded at `path`,
/// with an empty file and its directories, as pgBackRest lists them.
fn with_tablespaces(text: &str, tablespaces: &[(&str, &str, &str)]) -> String {
    let mut t = add(text, "target:path", "pg_tblspc={}");
    for (oid, name, path) in tablespaces {
        t = add(
            &t,
            "backup:target",
            &format!(
                "pg_tblspc/{oid}={}",
                serde_json::json!({"path": path, "tablespace-id": oid, "tablespace-name": name, "type": "link"})
            ),
        );
        t = add(&t, "target:path", &format!("pg_tblspc/{oid}={{}}"));
        t = add(
            &t,
            "target:file",
            &format!("pg_tblspc/{oid}/authorized_keys={{\"size\":0,\"timestamp\":1795498726}}"),
        );
    }
    t
}

/// The manifest line of `name` changed by `change`.
fn change_entry(text: &str, name: &str, change: impl Fn(&str) -> String) -> String {
    let prefix = format!("{name}=");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                change(l)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no entry {name}");
    out.join("\n") + "\n"
}

#[test]
fn pgbackrest_hostile_manifests_are_refused() {
    const FULL: &str = "20261124-053849F";
    let work = TempDir::new("pgbr-hostile");
    let pristine = work.join("pristine");
    fs::create_dir(&pristine).unwrap();
    extract_sample("lz4-plain", &pristine);
    let original =
        fs::read_to_string(pristine.join(format!("repo/backup/{STANZA}/{FULL}/backup.manifest")))
            .unwrap();
    assert_eq!(
        reseal(&original),
        original,
        "reseal computes pgBackRest's checksum"
    );
    let long_tail = format!("[junk]\nk=\"{}", "a".repeat(2 << 20));
    let cases = [
        "setuid-file",
        "sticky-dir",
        "relative-tablespace",
        "tablespace-in-dest",
        "nested-tablespaces",
        "map-all-name-with-slash",
        "relative-map",
        "damaged-pg-control",
        "aliased-pg-control",
        "long-line",
    ];
    for case in cases {
        let dir = work.join(case);
        let (repo, cwd, dest) = (dir.join("repo"), dir.join("cwd"), dir.join("dest"));
        copy_tree(&pristine.join("repo"), &repo);
        fs::create_dir(&cwd).unwrap();
        let at = |p: &str| dir.join(p).display().to_string();
        let mut args: Vec<String> = Vec::new();
        let (manifest, wanted): (String, &[&str]) = match case {
            "setuid-file" => (
                change_entry(&original, "pg_data/PG_VERSION", |l| {
                    l.replacen(
                        "={",
                        "={\"group\":\"root\",\"mode\":\"4755\",\"user\":\"root\",",
                        1,
                    )
                }),
                &["file pg_data/PG_VERSION: mode '4755' has bits above 0777"],
            ),
            "sticky-dir" => (
                change_entry(&original, "pg_data/base", |_| {
                    "pg_data/base={\"mode\":\"1777\"}".into()
                }),
                &["directory pg_data/base: mode '1777' has bits above 0777"],
            ),
            "relative-tablespace" => (
                with_tablespaces(&original, &[("16384", "ts1", "../rel-escape")]),
                &[
                    "tablespace ts1 (oid 16384)",
                    "'../rel-escape'",
                    "not an absolute",
                ],
            ),
            "tablespace-in-dest" => (
                with_tablespaces(&original, &[("16384", "ts1", &at("dest/global"))]),
                &["tablespace ts1 (oid 16384)", "overlaps the destination"],
            ),
            "nested-tablespaces" => (
                with_tablespaces(
                    &original,
                    &[
                        ("16384", "ts1", &at("ts-a")),
                        ("16385", "ts2", &at("ts-a/b")),
                    ],
                ),
                &[
                    "tablespaces ts1 (oid 16384) and ts2 (oid 16385)",
                    "overlapping",
                ],
            ),
            "map-all-name-with-slash" => {
                args = vec!["--tablespace-map-all".into(), at("all")];
                (
                    with_tablespaces(&original, &[("16384", "a/b", &at("recorded"))]),
                    &[
                        "tablespace name 'a/b' is not a directory name",
                        "--tablespace-map 16384=DIR",
                    ],
                )
            }
            "relative-map" => {
                args = vec!["--tablespace-map".into(), "ts1=relative/ts1".into()];
                (
                    with_tablespaces(&original, &[("16384", "ts1", &at("recorded"))]),
                    &["'relative/ts1'", "not an absolute"],
                )
            }
            "damaged-pg-control" => {
                args = vec!["--recovery-target".into(), "immediate".into()];
                (
                    change_entry(&original, "pg_data/global/pg_control", |l| {
                        l.replacen("\"checksum\":\"78", "\"checksum\":\"00", 1)
                    }),
                    &[
                        "pg_data/global/pg_control",
                        "the repository file is damaged",
                    ],
                )
            }
            "aliased-pg-control" => (
                original.replacen(
                    "\npg_data/global/pg_control=",
                    "\npg_data/global//pg_control=",
                    1,
                ),
                &["'pg_data/global//pg_control' is not a canonical path"],
            ),
            "long-line" => (original.clone(), &["line 1067: longer than 1 MiB"]),
            _ => unreachable!(),
        };
        let mut sealed = reseal(&manifest);
        if case == "long-line" {
            sealed.push_str(&long_tail);
        } else {
            assert_ne!(manifest, original, "{case}");
        }
        for name in ["backup.manifest", "backup.manifest.copy"] {
            fs::write(repo.join(format!("backup/{STANZA}/{FULL}/{name}")), &sealed).unwrap();
        }
        let out = Walden::new()
            .env("WALG_FILE_PREFIX", &repo)
            .env("PGBACKREST_STANZA", STANZA)
            .env("WALG_DOWNLOAD_CONCURRENCY", "2")
            .current_dir(&cwd)
            .args(["pgbackrest", "backup-fetch"])
            .arg(&dest)
            .arg(FULL)
            .args(args)
            .run();
        out.assert_code(1);
        for w in wanted {
            assert!(
                out.stderr.contains(w),
                "{case}: wants '{w}':\n{}",
                out.dump()
            );
        }
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        left.retain(|n| n != "dest");
        assert_eq!(left, ["cwd", "repo"], "{case}: written outside DEST");
        assert_eq!(
            fs::read_dir(&cwd).unwrap().count(),
            0,
            "{case}: written in the working directory"
        );
        if let Ok(entries) = fs::read_dir(dest.join("global")) {
            for e in entries {
                let name = e.unwrap().file_name();
                assert!(
                    !name.to_string_lossy().contains("pg_control"),
                    "{case}: {name:?} left in DEST/global"
                );
            }
        }
        if case == "damaged-pg-control" {
            // Everything but pg_control was restored: the failure is at the very end.
            assert!(dest.join("PG_VERSION").exists() && dest.join("recovery.signal").exists());
        }
    }

    // backup.info with a line of 2 MiB: backup-list refuses it, naming the file.
    let info = work
        .join("long-line/repo/backup")
        .join(STANZA)
        .join("backup.info");
    let mut text = fs::read_to_string(&info).unwrap();
    text.push_str(&long_tail);
    for name in ["backup.info", "backup.info.copy"] {
        fs::write(info.with_file_name(name), &text).unwrap();
    }
    let out = Walden::new()
        .env("WALG_FILE_PREFIX", work.join("long-line/repo"))
        .env("PGBACKREST_STANZA", STANZA)
        .args(["pgbackrest", "backup-list"])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("backup.info") && out.stderr.contains("longer than 1 MiB"),
        "{}",
        out.dump()
    );
}
