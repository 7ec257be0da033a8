//! walden against an S3 server that misbehaves (harness::FakeS3): absurd
//! listings, keys outside the requested prefix, downloads cut short. Each
//! must end in a clear error (exit 1, never a crash or a signal) and never
//! in a partial file taken for a whole one.

use std::fs;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::harness::{walden_bin, FakeResponse, FakeS3, TempDir, Walden};

const SEGMENT: &str = "000000010000000000000001";
const SEGMENT_SIZE: usize = 16 << 20;

/// A server whose every listing is `body`; everything else is missing.
fn listing_server(body: Vec<u8>) -> FakeS3 {
    FakeS3::start(move |req| {
        if req.is_list() {
            FakeResponse::xml(200, body.clone())
        } else {
            FakeResponse::no_such_key()
        }
    })
}

/// Runs walden under GNU time; returns the output and the peak RSS in KiB.
fn run_measured(env: Vec<(String, String)>, args: &[&str]) -> (crate::harness::Output, u64) {
    let time = "/usr/bin/time";
    assert!(
        std::path::Path::new(time).is_file(),
        "GNU time is needed to measure memory: run scripts/install-deps.sh"
    );
    let out = Walden::program(time)
        .args(["-f", "walden-maxrss-kib=%M"])
        .arg(walden_bin())
        .envs(env)
        .args(args)
        .run();
    let rss = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("walden-maxrss-kib="))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS figure from GNU time\n{}", out.dump()));
    (out, rss)
}

#[test]
fn deeply_nested_listing_is_an_error_not_a_crash() {
    // Far deeper than any stack survives when a tree of it is dropped
    // recursively; 7 MB, well inside the body limit.
    let depth = 1_000_000;
    let body = format!(
        "<ListBucketResult>{}{}</ListBucketResult>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    let s3 = listing_server(body.into_bytes());
    let out = Walden::new().envs(s3.env("pfx")).args(["st", "ls"]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("unreadable ListObjectsV2 answer")
            && out.stderr.contains("nested deeper than"),
        "{}",
        out.dump()
    );
}

#[test]
fn huge_listing_of_tiny_elements_stays_small() {
    // Just under the 32 MiB body limit: eight million empty elements.
    let mut body = b"<ListBucketResult><IsTruncated>false</IsTruncated>".to_vec();
    while body.len() < 32_000_000 {
        body.extend_from_slice(b"<a/>");
    }
    body.extend_from_slice(b"</ListBucketResult>");
    let s3 = listing_server(body);
    let (out, rss_kib) = run_measured(s3.env("pfx"), &["st", "ls"]);
    eprintln!("walden peaked at {} MiB", rss_kib / 1024);
    out.assert_code(1);
    assert!(
        out.stderr.contains("more than") && out.stderr.contains("elements"),
        "{}",
        out.dump()
    );
    // The body itself is 32 MB; the parse must add little to it.
    assert!(
        rss_kib < 150 * 1024,
        "walden peaked at {} MiB\n{}",
        rss_kib / 1024,
        out.dump()
    );
}

#[test]
fn too_many_entries_in_one_page_is_an_error() {
    // S3 sends at most 1000 entries a page; 20,000 is not S3.
    let mut body = String::from("<ListBucketResult><IsTruncated>false</IsTruncated>");
    for i in 0..20_000 {
        body.push_str(&format!("<Contents><Key>pfx/k{i:05}</Key></Contents>"));
    }
    body.push_str("</ListBucketResult>");
    let s3 = listing_server(body.into_bytes());
    let out = Walden::new().envs(s3.env("pfx")).args(["st", "ls"]).run();
    out.assert_code(1);
    assert!(out.stderr.contains("entries"), "{}", out.dump());
}

#[test]
fn listed_key_outside_the_prefix_is_an_error() {
    // Under the storage root but outside the directory asked for: the
    // listing code would slice the key by the prefix's length.
    let s3 = FakeS3::start(|req| {
        if req.is_list() {
            FakeResponse::listing(&["pfx/x"])
        } else {
            FakeResponse::no_such_key()
        }
    });
    let out = Walden::new()
        .envs(s3.env("pfx"))
        .args(["st", "ls", "wal_005/"])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("'pfx/x'") && out.stderr.contains("outside"),
        "{}",
        out.dump()
    );

    // Outside the storage root altogether: not silently skipped either.
    let s3 = FakeS3::start(|req| {
        if req.is_list() {
            FakeResponse::listing(&["elsewhere/secret"])
        } else {
            FakeResponse::no_such_key()
        }
    });
    let out = Walden::new().envs(s3.env("pfx")).args(["st", "ls"]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("'elsewhere/secret'") && out.stderr.contains("outside"),
        "{}",
        out.dump()
    );

    // A common prefix outside the prefix, likewise.
    let s3 = listing_server(
        b"<ListBucketResult><IsTruncated>false</IsTruncated>\
          <CommonPrefixes><Prefix>other/</Prefix></CommonPrefixes></ListBucketResult>"
            .to_vec(),
    );
    let out = Walden::new().envs(s3.env("pfx")).args(["st", "ls"]).run();
    out.assert_code(1);
    assert!(out.stderr.contains("'other/'"), "{}", out.dump());
}

/// 16 MiB that are not all the same byte, so a shifted resume would show.
fn segment_data() -> Arc<Vec<u8>> {
    Arc::new(
        (0..SEGMENT_SIZE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    )
}

fn wal_key() -> String {
    format!("pfx/wal_005/{SEGMENT}")
}

/// wal-fetch with `none` compression and no prefetch, into a fresh
/// directory; returns the output and the destination path's directory.
fn wal_fetch(s3: &FakeS3) -> (crate::harness::Output, TempDir) {
    let dir = TempDir::new("hostile-fetch");
    let out = Walden::new()
        .envs(s3.env("pfx"))
        .env("WALG_COMPRESSION_METHOD", "none")
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .args(["wal-fetch", SEGMENT])
        .arg(dir.join(SEGMENT))
        .run();
    (out, dir)
}

#[test]
fn get_without_length_cut_short_is_not_taken_as_whole() {
    let data = segment_data();
    let s3 = FakeS3::start(move |req| {
        if req.key() == Some(wal_key().as_str()) {
            FakeResponse::ok(data.to_vec())
                .without_content_length()
                .cut_after(SEGMENT_SIZE / 2)
        } else {
            FakeResponse::no_such_key()
        }
    });
    let (out, dir) = wal_fetch(&s3);
    out.assert_failed();
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(!dir.join(SEGMENT).exists(), "a partial segment was left");
    assert!(out.stderr.contains("no length"), "{}", out.dump());
}

#[test]
fn get_with_length_cut_short_is_an_error() {
    // Every answer breaks half way, the resumed ones too.
    let data = segment_data();
    let s3 = FakeS3::start(move |req| {
        if req.key() != Some(wal_key().as_str()) {
            return FakeResponse::no_such_key();
        }
        let start = req.range_start().unwrap_or(0) as usize;
        let rest = data.get(start..).unwrap_or_default().to_vec();
        let half = rest.len() / 2;
        let resp = if start > 0 {
            FakeResponse::new(206, rest).header(
                "content-range",
                &format!("bytes {start}-{}/{SEGMENT_SIZE}", SEGMENT_SIZE - 1),
            )
        } else {
            FakeResponse::ok(rest)
        };
        resp.cut_after(half)
    });
    let (out, dir) = wal_fetch(&s3);
    out.assert_code(1);
    assert!(!dir.join(SEGMENT).exists(), "a partial segment was left");
    // The break was taken as transient: the download resumed where it
    // stopped before giving up.
    let resumed = s3
        .requests()
        .iter()
        .any(|r| r.range_start() == Some(SEGMENT_SIZE as u64 / 2));
    assert!(resumed, "no resumed GET; requests: {:?}", s3.requests());
}

#[test]
fn get_cut_short_once_resumes_to_the_whole_object() {
    let data = segment_data();
    let expected = data.clone();
    let answers = AtomicU32::new(0);
    let s3 = FakeS3::start(move |req| {
        if req.key() != Some(wal_key().as_str()) {
            return FakeResponse::no_such_key();
        }
        let start = req.range_start().unwrap_or(0) as usize;
        let rest = data.get(start..).unwrap_or_default().to_vec();
        let resp = if start > 0 {
            FakeResponse::new(206, rest).header(
                "content-range",
                &format!("bytes {start}-{}/{SEGMENT_SIZE}", SEGMENT_SIZE - 1),
            )
        } else {
            FakeResponse::ok(rest)
        };
        if answers.fetch_add(1, Ordering::SeqCst) == 0 {
            resp.cut_after(SEGMENT_SIZE / 3)
        } else {
            resp
        }
    });
    let (out, dir) = wal_fetch(&s3);
    out.assert_ok();
    let got = fs::read(dir.join(SEGMENT)).expect("fetched segment");
    assert!(got == *expected, "fetched segment differs from the object");
}

#[test]
fn resumed_get_from_the_wrong_offset_is_an_error() {
    // The first answer breaks; the resumed one claims to start at byte 0
    // again, which spliced in would shift the rest of the segment.
    let data = segment_data();
    let s3 = FakeS3::start(move |req| {
        if req.key() != Some(wal_key().as_str()) {
            return FakeResponse::no_such_key();
        }
        if req.range_start().is_some() {
            return FakeResponse::new(206, data.to_vec()).header(
                "content-range",
                &format!("bytes 0-{}/{SEGMENT_SIZE}", SEGMENT_SIZE - 1),
            );
        }
        FakeResponse::ok(data.to_vec()).cut_after(SEGMENT_SIZE / 2)
    });
    let (out, dir) = wal_fetch(&s3);
    out.assert_code(1);
    assert!(!dir.join(SEGMENT).exists(), "a spliced segment was left");
    assert!(out.stderr.contains("Content-Range"), "{}", out.dump());
}
