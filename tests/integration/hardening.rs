//! Attacks on wal-push, wal-fetch and st, as a hostile or unlucky user would
//! make them: each test reproduces a defect of the hardening issue and
//! checks the refusal or the clean-up.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{TempDir, Walden};
use crate::store::{FakeWal, Store, WAL_SIZE};

const SEG1: &str = "000000010000000000000001";
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Wait until `found` returns true, or fail after 30 s.
fn wait_for(what: &str, mut found: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !found() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wal-fetch NAME DEST` without prefetch: the tests look at DEST's
/// directory, where a prefetcher would add its cache.
fn wal_fetch(walden: Walden, name: &str, dest: &Path) -> crate::harness::Output {
    walden
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", name])
        .arg(dest)
        .run()
}

/// Every file under `dir`, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.extend(files_under(&p).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn a_background_upload_never_replaces_a_different_history_file() {
    let store = Store::fs();
    let first = FakeWal::new();
    let hist_a = first.dir().join("00000002.history");
    fs::write(&hist_a, "1\t0/3000000\tno recovery target specified\n").unwrap();
    store
        .walden()
        .arg("wal-push")
        .arg(&hist_a)
        .run()
        .assert_ok();

    // Another pg_wal with a different 00000002.history, both .ready: the
    // segment's push would upload the history file in the background.
    let second = FakeWal::new();
    let seg = second.segment(SEG1, 1, true);
    let hist_b = second.dir().join("00000002.history");
    fs::write(&hist_b, "1\t0/5000000\ta different timeline switch\n").unwrap();
    fs::write(
        second.dir().join("archive_status/00000002.history.ready"),
        "",
    )
    .unwrap();
    store.walden().arg("wal-push").arg(&seg).run().assert_ok();

    let back = second.tmp.join("back.history");
    store
        .walden()
        .args(["wal-fetch", "00000002.history"])
        .arg(&back)
        .run()
        .assert_ok();
    assert_eq!(
        fs::read(&back).unwrap(),
        fs::read(&hist_a).unwrap(),
        "the archived history file is untouched"
    );
    // The archiver's own call for the different file fails: it is not
    // marked as uploaded.
    let own = store.walden().arg("wal-push").arg(&hist_b).run();
    assert_eq!(own.code, 1, "{}", own.dump());
    assert!(own.stderr.contains("contents differ"), "{}", own.stderr);
}

#[test]
fn a_missing_storage_directory_is_an_error_not_the_end_of_wal() {
    let tmp = TempDir::new("noroot");
    let out = wal_fetch(
        Walden::new().env("WALG_FILE_PREFIX", tmp.join("unmounted/share")),
        SEG1,
        &tmp.join("dest"),
    );
    assert_eq!(out.code, 1, "exit 74 would end recovery: {}", out.dump());
    assert!(out.stderr.contains("unmounted/share"), "{}", out.stderr);
    // With the directory there, a missing segment is exit 74 as in WAL-G.
    fs::create_dir_all(tmp.join("unmounted/share")).unwrap();
    let out = wal_fetch(
        Walden::new().env("WALG_FILE_PREFIX", tmp.join("unmounted/share")),
        SEG1,
        &tmp.join("dest"),
    );
    assert_eq!(out.code, 74, "{}", out.dump());
}

#[test]
fn a_failed_rename_leaves_no_temp_file_beside_dest() {
    let store = Store::fs();
    let wal = FakeWal::new();
    let seg = wal.segment(SEG1, 1, false);
    store.walden().arg("wal-push").arg(&seg).run().assert_ok();
    let target = TempDir::new("rename-target");
    let dest = target.join("RECOVERYXLOG");
    fs::create_dir_all(dest.join("not-empty")).unwrap();
    let out = wal_fetch(store.walden(), SEG1, &dest);
    assert_eq!(out.code, 1, "{}", out.dump());
    assert_eq!(
        files_under(target.path()),
        Vec::<String>::new(),
        "no temp file"
    );
    assert!(dest.join("not-empty").is_dir());
}

#[test]
fn sigterm_during_wal_fetch_leaves_nothing_in_pg_wal() {
    let store = Store::fs();
    // The stored segment is a FIFO that the test feeds slowly, so the
    // download is surely in progress when the signal comes.
    let key = format!("wal_005/{SEG1}");
    let fifo = store.object_file(&key);
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let pg_wal = TempDir::new("sigterm-pgwal");
    let fetch = store
        .walden()
        .env("WALG_COMPRESSION_METHOD", "none")
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", SEG1])
        .arg(pg_wal.join("RECOVERYXLOG"))
        .spawn();
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&vec![7u8; 1 << 20]).unwrap();
    wait_for("the temp file in pg_wal", || {
        !files_under(pg_wal.path()).is_empty()
    });
    fetch.signal(SIGTERM);
    let out = fetch.wait(Duration::from_secs(30));
    drop(writer);
    assert_eq!(out.code, 128 + SIGTERM, "died of SIGTERM: {}", out.dump());
    assert_eq!(files_under(pg_wal.path()), Vec::<String>::new());
}

/// `st put -s` of more than one part (8 MiB on the filesystem storage):
/// the upload's temp object exists once the first part is written.
fn start_multipart_put(store: &Store, remote: &str) -> crate::harness::Running {
    let mut put = store
        .walden()
        .env("WALG_COMPRESSION_METHOD", "none")
        .args(["st", "put", "-s", remote])
        .stdin_bytes(Vec::new())
        .spawn();
    let chunk = vec![3u8; 1 << 20];
    for _ in 0..20 {
        put.stdin().write_all(&chunk).unwrap();
    }
    put.stdin().flush().unwrap();
    wait_for("the upload's temp object", || {
        files_under(&store.object_file(""))
            .iter()
            .any(|f| f.contains(".tmp."))
    });
    put
}

#[test]
fn sigterm_during_a_multipart_upload_aborts_it() {
    let store = Store::fs();
    let put = start_multipart_put(&store, "big/object");
    put.signal(SIGTERM);
    let out = put.wait(Duration::from_secs(30));
    assert_eq!(out.code, 128 + SIGTERM, "{}", out.dump());
    assert_eq!(
        files_under(&store.object_file("")),
        Vec::<String>::new(),
        "the unfinished upload was aborted"
    );
}

#[test]
fn leftovers_of_killed_uploads_are_listed_with_a_and_removed_with_their_folder() {
    let store = Store::fs();
    let scratch = TempDir::new("scratch");
    store.put_raw(scratch.path(), "big/kept", b"x");
    let put = start_multipart_put(&store, "big/object");
    put.signal(SIGKILL);
    put.wait(Duration::from_secs(30));
    let leftover = files_under(&store.object_file(""))
        .into_iter()
        .find(|f| f.contains(".tmp."))
        .expect("kill -9 leaves the temp object");

    let plain = store.walden().args(["st", "ls", "-r"]).run();
    plain.assert_ok();
    assert!(!plain.stdout_str().contains(".tmp."), "{}", plain.dump());
    let all = store.walden().args(["st", "ls", "-r", "-a"]).run();
    all.assert_ok();
    let listed = all.stdout_str();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("tmp\t") && l.ends_with(&format!("\t{leftover}"))),
        "{leftover} not in:\n{listed}"
    );
    store.walden().args(["st", "rm", "big"]).run().assert_ok();
    assert_eq!(files_under(&store.object_file("")), Vec::<String>::new());
}

/// On S3 a killed upload is an unfinished multipart upload: invisible in
/// listings, holding storage until aborted.
#[test]
fn unfinished_s3_multipart_uploads_are_listed_with_a_and_aborted_by_rm() {
    let store = Store::s3();
    let scratch = TempDir::new("scratch");
    store.put_raw(scratch.path(), "big/kept", b"x");
    let mut put = store
        .walden()
        .env("WALG_COMPRESSION_METHOD", "none")
        .env("S3_MAX_PART_SIZE", (5 << 20).to_string())
        .args(["st", "put", "-s", "big/object"])
        .stdin_bytes(Vec::new())
        .spawn();
    let chunk = vec![3u8; 1 << 20];
    for _ in 0..12 {
        put.stdin().write_all(&chunk).unwrap();
    }
    put.stdin().flush().unwrap();
    let tmp_lines = || {
        let all = store.walden().args(["st", "ls", "-r", "-a"]).run();
        all.assert_ok();
        all.stdout_str()
            .lines()
            .filter(|l| l.starts_with("tmp\t"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_for("the unfinished upload in `st ls -a`", || {
        tmp_lines().iter().any(|l| l.ends_with("\tbig/object"))
    });
    put.signal(SIGKILL);
    put.wait(Duration::from_secs(30));
    assert_eq!(tmp_lines().len(), 1, "{:?}", tmp_lines());
    let plain = store.walden().args(["st", "ls", "-r"]).run();
    assert!(
        !plain.stdout_str().contains("big/object"),
        "{}",
        plain.dump()
    );

    let rm = store.walden().args(["st", "rm", "big"]).run();
    rm.assert_ok();
    assert_eq!(tmp_lines(), Vec::<String>::new(), "the upload was aborted");
    let after = store.walden().args(["st", "ls", "-r"]).run();
    assert!(!after.stdout_str().contains("big/kept"), "{}", after.dump());
}

#[test]
fn decompression_bombs_are_refused() {
    let store = Store::fs();
    let scratch = TempDir::new("bomb");
    // 40 MiB of zeros in a small lzma object, stored as a WAL segment.
    let zeros = scratch.join("zeros");
    fs::write(&zeros, vec![0u8; 40 << 20]).unwrap();
    let key = format!("wal_005/{SEG1}");
    store
        .walden()
        .env("WALG_COMPRESSION_METHOD", "lzma")
        .args(["st", "put"])
        .arg(&zeros)
        .arg(&key)
        .run()
        .assert_ok();
    let stored = store.object_file(&format!("{key}.lzma"));
    assert!(fs::metadata(&stored).unwrap().len() < 1 << 20);
    let dest = scratch.join("RECOVERYXLOG");
    let out = wal_fetch(store.walden(), SEG1, &dest);
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(
        out.stderr.contains("more than a WAL segment"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists());

    // A header asking for a 4 GiB dictionary is refused before it is used.
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1..5].copy_from_slice(&[0xff; 4]);
    store.put_raw(scratch.path(), &format!("{key}.lzma"), &bytes);
    let out = store
        .walden()
        .args(["st", "cat", "--decompress", &format!("{key}.lzma")])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("dictionary"), "{}", out.stderr);
}

#[test]
fn a_short_segment_is_refused() {
    let store = Store::fs();
    let scratch = TempDir::new("short");
    let half = vec![0x10u8; WAL_SIZE / 2];
    store.put_raw(scratch.path(), &format!("wal_005/{SEG1}"), &half);
    let dest = scratch.join("RECOVERYXLOG");
    let out = wal_fetch(
        store.walden().env("WALG_COMPRESSION_METHOD", "none"),
        SEG1,
        &dest,
    );
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(
        out.stderr.contains("not a whole WAL segment"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists());
}

#[test]
fn absurd_settings_are_errors_not_crashes() {
    let store = Store::fs();
    let wal = FakeWal::new();
    let seg = wal.segment(SEG1, 1, false);
    for (name, value) in [
        ("WALG_PG_WAL_SIZE", "17592186044416"),
        ("WALG_PG_WAL_SIZE", "3"),
        ("WALG_UPLOAD_CONCURRENCY", "30000"),
    ] {
        let out = store
            .walden()
            .env(name, value)
            .arg("wal-push")
            .arg(&seg)
            .run();
        assert_eq!(out.code, 1, "{name}={value}: {}", out.dump());
        assert!(out.stderr.contains(name), "{}", out.stderr);
    }
    let out = store
        .walden()
        .env("WALG_PG_WAL_SIZE", "17592186044416")
        .args(["wal-fetch", SEG1])
        .arg(wal.tmp.join("x"))
        .run();
    assert_eq!(out.code, 1, "{}", out.dump());
}

#[test]
fn a_refused_listing_prints_only_the_error() {
    let store = Store::fs();
    let out = store.walden().args(["st", "ls", ".."]).run();
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(out.stdout.is_empty(), "{}", out.dump());
    // An empty listing still has its header.
    let empty = store.walden().args(["st", "ls", "nothing-here"]).run();
    empty.assert_ok();
    assert_eq!(empty.stdout_str(), "type\tsize\tlast modified\tname\n");
}

#[test]
fn concatenated_lz4_frames_and_garbage_after_streams() {
    let store = Store::fs();
    let scratch = TempDir::new("frames");
    let part = |name: &str, text: &[u8], method: &str| {
        let f = scratch.join(name);
        fs::write(&f, text).unwrap();
        store
            .walden()
            .env("WALG_COMPRESSION_METHOD", method)
            .args(["st", "put"])
            .arg(&f)
            .arg(format!("parts/{name}"))
            .run()
            .assert_ok();
        fs::read(store.object_file(&format!(
            "parts/{name}.{}",
            if method == "brotli" { "br" } else { method }
        )))
        .unwrap()
    };
    let two = [
        part("a", b"first frame, ", "lz4"),
        part("b", b"second frame", "lz4"),
    ]
    .concat();
    store.put_raw(scratch.path(), "joined.lz4", &two);
    let out = store
        .walden()
        .args(["st", "cat", "--decompress", "joined.lz4"])
        .run();
    out.assert_ok();
    assert_eq!(out.stdout, b"first frame, second frame");

    for (method, ext) in [("lz4", "lz4"), ("brotli", "br")] {
        let mut bytes = part(&format!("g-{method}"), b"some text", method);
        bytes.extend_from_slice(b"GARBAGE");
        let key = format!("garbage.{ext}");
        store.put_raw(scratch.path(), &key, &bytes);
        let out = store
            .walden()
            .args(["st", "cat", "--decompress", &key])
            .run();
        assert_eq!(out.code, 1, "{method}: {}", out.dump());
    }
}

#[test]
fn sigterm_during_an_s3_multipart_upload_aborts_it() {
    use crate::harness::fake_s3::{FakeResponse, FakeS3};
    // Parts are accepted slowly, so the upload is in progress when the
    // signal comes.
    let s3 = FakeS3::start(|req| {
        if req.method == "POST" && req.query_value("uploads").is_some() {
            FakeResponse::xml(
                200,
                "<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>",
            )
        } else if req.method == "PUT" && req.query_value("partNumber").is_some() {
            FakeResponse::ok(Vec::new())
                .header("ETag", "\"e\"")
                .stall(Duration::from_secs(20))
        } else if req.method == "DELETE" {
            FakeResponse::new(204, Vec::new())
        } else {
            FakeResponse::no_such_key()
        }
    });
    let mut put = Walden::new()
        .envs(s3.env("pfx"))
        .env("WALG_COMPRESSION_METHOD", "none")
        .env("S3_MAX_PART_SIZE", (5 << 20).to_string())
        .args(["st", "put", "-s", "big"])
        .stdin_bytes(Vec::new())
        .spawn();
    let chunk = vec![1u8; 1 << 20];
    for _ in 0..6 {
        put.stdin().write_all(&chunk).unwrap();
    }
    put.stdin().flush().unwrap();
    wait_for("the first part", || {
        s3.requests()
            .iter()
            .any(|r| r.query_value("partNumber").is_some())
    });
    put.signal(SIGTERM);
    let out = put.wait(Duration::from_secs(30));
    assert_eq!(out.code, 128 + SIGTERM, "{}", out.dump());
    assert!(
        s3.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.query_value("uploadId") == Some("up-1")),
        "the upload was aborted: {:?}",
        s3.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}
