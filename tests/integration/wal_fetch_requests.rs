//! What a standby polling `restore_command` for a segment that is not
//! archived yet costs in storage requests (issue 18 item 3): one per miss,
//! counted on the scripted S3 server; a hit with the configured
//! compression stays one request; a variant written with another
//! compression is still found; a missing bucket is never a miss.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{FakeRequest, FakeResponse, FakeS3, TempDir, Walden};

const SEGMENT: &str = "000000010000000000000007";
const SEGMENT_SIZE: usize = 16 << 20;

/// Runs `wal-fetch SEGMENT` into `dir` with lz4 configured; returns the
/// exit code and the requests it made (waiting a moment so that a
/// background prefetcher, if one were started, would show up too).
fn poll(s3: &FakeS3, dir: &TempDir, concurrency: &str) -> (i32, Vec<FakeRequest>) {
    let before = s3.requests().len();
    let out = Walden::new()
        .envs(s3.env("pfx"))
        .env("WALG_COMPRESSION_METHOD", "lz4")
        .env("WALG_DOWNLOAD_CONCURRENCY", concurrency)
        .args(["wal-fetch", SEGMENT])
        .arg(dir.join(SEGMENT))
        .run();
    std::thread::sleep(Duration::from_millis(300));
    let code = out.code;
    assert!(code == 0 || code == 74, "{}", out.dump());
    (code, s3.requests()[before..].to_vec())
}

fn describe(requests: &[FakeRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.query))
        .collect()
}

#[test]
fn polling_for_a_missing_segment_costs_one_request_per_miss() {
    // Stored without compression although lz4 is configured: the variant
    // only a listing finds without probing every extension.
    let archived = Arc::new(AtomicBool::new(false));
    let on_server = archived.clone();
    let key = format!("pfx/wal_005/{SEGMENT}");
    let s3 = FakeS3::start(move |req| {
        let there = on_server.load(Ordering::SeqCst);
        if req.is_list() {
            let prefix = req.query_value("prefix").unwrap_or("");
            if there && key.starts_with(prefix) {
                FakeResponse::listing(&[key.as_str()])
            } else {
                FakeResponse::listing(&[])
            }
        } else if there && req.key() == Some(key.as_str()) {
            FakeResponse::ok(vec![0x66; SEGMENT_SIZE])
        } else {
            FakeResponse::no_such_key()
        }
    });
    let dir = TempDir::new("fetch-requests");

    // First miss: GET of the configured extension, one LIST for the others.
    let (code, reqs) = poll(&s3, &dir, "4");
    assert_eq!(code, 74);
    assert_eq!(reqs.len(), 2, "{:#?}", describe(&reqs));
    assert!(reqs[1].is_list(), "{:#?}", describe(&reqs));

    // Every further poll: one LIST, and no prefetcher probing the
    // segments after a missing one.
    for _ in 0..3 {
        let (code, reqs) = poll(&s3, &dir, "4");
        assert_eq!(code, 74);
        assert_eq!(reqs.len(), 1, "{:#?}", describe(&reqs));
        assert!(reqs[0].is_list(), "{:#?}", describe(&reqs));
    }
    assert!(!dir.join(SEGMENT).exists());

    // Archived now: the LIST finds it, one GET brings it.
    archived.store(true, Ordering::SeqCst);
    let (code, reqs) = poll(&s3, &dir, "1");
    assert_eq!(code, 0);
    assert_eq!(reqs.len(), 2, "{:#?}", describe(&reqs));
    assert_eq!(
        fs::read(dir.join(SEGMENT)).expect("fetched segment"),
        vec![0x66; SEGMENT_SIZE]
    );

    // Asked for again (no longer a recent miss): GET lz4, missing, LIST,
    // GET of the uncompressed variant.
    fs::remove_file(dir.join(SEGMENT)).expect("remove");
    let (code, reqs) = poll(&s3, &dir, "1");
    assert_eq!(code, 0);
    assert_eq!(reqs.len(), 3, "{:#?}", describe(&reqs));
}

#[test]
fn a_hit_with_the_configured_compression_is_one_request() {
    let key = format!("pfx/wal_005/{SEGMENT}");
    let s3 = FakeS3::start(move |req| {
        if req.key() == Some(key.as_str()) {
            FakeResponse::ok(vec![0x66; SEGMENT_SIZE])
        } else if req.is_list() {
            FakeResponse::listing(&[])
        } else {
            FakeResponse::no_such_key()
        }
    });
    let dir = TempDir::new("fetch-requests-hit");
    let before = s3.requests().len();
    let out = Walden::new()
        .envs(s3.env("pfx"))
        .env("WALG_COMPRESSION_METHOD", "none")
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", SEGMENT])
        .arg(dir.join(SEGMENT))
        .run();
    out.assert_code(0);
    let reqs = s3.requests()[before..].to_vec();
    assert_eq!(reqs.len(), 1, "{:#?}", describe(&reqs));
}

#[test]
fn a_missing_bucket_is_not_a_miss_even_when_polling() {
    let s3 = FakeS3::start(|_| {
        FakeResponse::error(404, "NoSuchBucket", "The specified bucket does not exist")
    });
    let dir = TempDir::new("fetch-requests-bucket");
    // Pretend a previous call missed, so the LIST comes first.
    fs::create_dir_all(dir.join(".wal-g")).expect("mkdir");
    fs::write(dir.join(".wal-g").join("last-miss"), SEGMENT).expect("note");
    for _ in 0..2 {
        let out = Walden::new()
            .envs(s3.env("pfx"))
            .env("WALG_DOWNLOAD_CONCURRENCY", "1")
            .args(["wal-fetch", SEGMENT])
            .arg(dir.join(SEGMENT))
            .run();
        out.assert_code(1);
        assert!(out.stderr.contains("bucket"), "{}", out.dump());
        fs::remove_file(dir.join(".wal-g").join("last-miss")).ok();
    }
}
