//! What `delete` and `wal-show` cost in S3 requests on a storage of 5,000
//! WAL objects (issue 15 item 1: WAL-G needed 72,000 requests to list 420
//! files). Counted by the test S3 server itself (nanio's access log), so
//! nothing walden does escapes the count: one listing pass is
//! ceil(N/1000) LISTs, deletes go 1000 keys to a request. The counts are
//! printed for the notes.

use std::fs;

use crate::harness::{S3Server, Walden};

const PREFIX: &str = "counted";
const WAL_OBJECTS: u64 = 5_000;
/// The backup starts in segment number 4001: WAL 1..=4000 sorts before it.
const BACKUP_SEG: u64 = 4_001;

fn seg(n: u64) -> String {
    format!("00000001{:08X}{:08X}", n >> 8, n & 0xFF)
}

/// Writes the objects as files where nanio keeps them (it lists and
/// serves files without its own metadata): 5,000 uploads would take
/// minutes.
fn plant(s3: &S3Server, key: &str, body: &[u8]) {
    let path = s3.object_path(&format!("{PREFIX}/{key}"));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
}

/// The requests of one run, by kind.
#[derive(Debug, Default)]
struct Counts {
    lists_wal: usize,
    lists_other: usize,
    gets: usize,
    heads: usize,
    deletes: usize,
    other: usize,
    total: usize,
}

fn count(requests: &[String]) -> Counts {
    let mut c = Counts::default();
    for r in requests {
        let (method, target) = r.split_once(' ').unwrap_or((r, ""));
        c.total += 1;
        match method {
            "GET" if target.contains("list-type=2") => {
                if target.contains("wal_005") {
                    c.lists_wal += 1
                } else {
                    c.lists_other += 1
                }
            }
            "GET" => c.gets += 1,
            "HEAD" => c.heads += 1,
            "POST" if target.contains("?delete") => c.deletes += 1,
            _ => c.other += 1,
        }
    }
    c
}

fn run_counted(s3: &S3Server, args: &[&str]) -> (Counts, crate::harness::Output) {
    let before = s3.requests().len();
    let out = Walden::new().envs(s3.env(PREFIX)).args(args).run();
    out.assert_ok();
    // nanio writes its access log line after answering; give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let reqs = s3.requests()[before..].to_vec();
    let c = count(&reqs);
    eprintln!(
        "REQUESTS walden {}: {} in all: {} LIST of wal_005/, {} other LIST, {} GET, {} HEAD, {} DeleteObjects, {} other",
        args.join(" "),
        c.total,
        c.lists_wal,
        c.lists_other,
        c.gets,
        c.heads,
        c.deletes,
        c.other
    );
    (c, out)
}

#[test]
fn delete_and_wal_show_requests_on_5000_wal_objects() {
    let s3 = S3Server::start_counting();
    for n in 1..=WAL_OBJECTS {
        plant(&s3, &format!("wal_005/{}.lz4", seg(n)), b"w");
    }
    let name = format!("base_{}", seg(BACKUP_SEG));
    let lsn = BACKUP_SEG * (16 << 20) + 0x28;
    plant(
        &s3,
        &format!("basebackups_005/{name}/tar_partitions/part_1.tar.lz4"),
        b"t",
    );
    plant(
        &s3,
        &format!("basebackups_005/{name}/metadata.json"),
        format!(
            r#"{{"start_time":"2026-01-01T00:00:00Z","finish_time":"2026-01-01T00:01:00Z","start_lsn":{lsn},"finish_lsn":{},"is_permanent":false}}"#,
            lsn + 0x1000
        )
        .as_bytes(),
    );
    plant(
        &s3,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        format!(r#"{{"LSN":{lsn},"FinishLSN":{}}}"#, lsn + 0x1000).as_bytes(),
    );
    // One listing pass: ceil(N/1000) pages on S3. nanio also answers
    // IsTruncated=true for a page exactly full, so a multiple of 1000
    // costs it one empty page more.
    let pages = (WAL_OBJECTS / 1000 + 1) as usize;

    // wal-show: one listing pass of wal_005/, the backups' listing and
    // what it reads of the one backup.
    let (c, out) = run_counted(&s3, &["wal-show"]);
    assert!(
        out.stdout_str().contains(&seg(WAL_OBJECTS)),
        "{}",
        out.dump()
    );
    assert_eq!(c.lists_wal, pages, "{c:?}");
    assert!(c.total <= pages + 4, "{c:?}");
    let (c, _) = run_counted(&s3, &["wal-show", "--detailed-json"]);
    assert_eq!(c.lists_wal, pages, "{c:?}");
    assert!(c.total <= pages + 4, "{c:?}");

    // delete dry run: the same listing pass, no delete.
    let (c, out) = run_counted(&s3, &["delete", "retain", "1"]);
    assert!(
        out.stderr
            .contains("Dry run: objects would be deleted count=4000"),
        "{}",
        out.dump()
    );
    assert_eq!(c.lists_wal, pages, "{c:?}");
    assert_eq!(c.deletes, 0, "{c:?}");
    assert!(c.total <= pages + 4, "{c:?}");

    // WAL-G 3.0.9's dry run on the same storage, for comparison: the
    // same decision; its requests are printed.
    match std::env::var_os("WALDEN_WALG_BIN") {
        Some(bin) if !bin.is_empty() => {
            let before = s3.requests().len();
            let out = Walden::program(bin)
                .envs(s3.env(PREFIX))
                .args(["delete", "retain", "1"])
                .run();
            out.assert_ok();
            assert!(out.stderr.contains("count=4000"), "{}", out.dump());
            std::thread::sleep(std::time::Duration::from_millis(300));
            let c = count(&s3.requests()[before..]);
            eprintln!(
                "REQUESTS wal-g delete retain 1: {} in all: {} LIST of wal_005/, {} other LIST, {} GET, {} HEAD",
                c.total, c.lists_wal, c.lists_other, c.gets, c.heads
            );
        }
        _ => eprintln!("WALDEN_WALG_BIN not set: skipping WAL-G's delete request count"),
    }

    // delete: 4,000 WAL objects in 4 requests.
    let (c, out) = run_counted(&s3, &["delete", "retain", "1", "--confirm"]);
    assert!(
        out.stderr
            .contains("Objects deleted successfully: count=4000"),
        "{}",
        out.dump()
    );
    assert_eq!(c.lists_wal, pages, "{c:?}");
    assert_eq!(c.deletes, 4, "{c:?}");
    assert_eq!(c.gets, 2, "one sentinel, one metadata.json: {c:?}");
    assert!(c.total <= pages + 4 + 4, "{c:?}");
    let left = s3.list_objects(&format!("{PREFIX}/wal_005/"));
    assert_eq!(
        left.len() as u64,
        WAL_OBJECTS - (BACKUP_SEG - 1),
        "{left:?}"
    );
    assert!(left[0].ends_with(&format!("{}.lz4", seg(BACKUP_SEG))));

    // everything FORCE: the sentinel first, then one listing pass of the
    // root (1,003 objects: two pages) and its objects 1000 at a time;
    // like WAL-G's, it takes what is outside the two prefixes too, and
    // nothing outside the storage root.
    plant(&s3, "wal_005_bulk/metadata.json", b"{}");
    let beside = s3.object_path("counted-beside/wal_005/000000010000000000000001.lz4");
    fs::create_dir_all(beside.parent().unwrap()).unwrap();
    fs::write(&beside, b"w").unwrap();
    let (c, out) = run_counted(&s3, &["delete", "everything", "FORCE", "--confirm"]);
    assert!(
        out.stderr
            .contains("Objects deleted successfully: count=1004"),
        "{}",
        out.dump()
    );
    assert_eq!(c.lists_wal + c.lists_other, 1 + 2, "{c:?}");
    assert_eq!(c.deletes, 3, "the sentinel, then 1,000 + 3 objects: {c:?}");
    assert!(s3.list_objects(&format!("{PREFIX}/")).is_empty());
    assert!(beside.exists(), "an object beside the storage root went");
}
