//! Backups in WAL-G's layout that are damaged or made to harm, planted
//! object by object (plain tars, no compression) and restored with
//! backup-fetch: each is refused with a message naming what is wrong, or,
//! where the layout allows it, restored whole. Never a panic, never a
//! link out of the destination, never a file silently missing.

use std::fs;
use std::path::Path;

use crate::harness::{Output, TempDir};
use crate::store::Store;

const FULL: &str = "base_000000010000000000000002";
const DELTA: &str = "base_000000010000000000000004";

enum Member<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
    Link(&'a str, &'a str),
}

fn tar_of(members: &[Member<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        match m {
            Member::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                h.set_size(0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Member::File(name, data) => {
                h.set_mode(0o600);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            Member::Link(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A data tar of one file, `base/1/a`, holding `data`.
fn file_a_tar(data: Vec<u8>) -> Vec<u8> {
    tar_of(&[
        Member::Dir("base"),
        Member::Dir("base/1"),
        Member::File("base/1/a", data),
    ])
}

fn put(store: &Store, key: &str, bytes: &[u8]) {
    let path = store.object_file(key);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A backup: its sentinel, its files metadata (if any), its data tars and
/// a pg_control tar.
fn backup(
    store: &Store,
    name: &str,
    sentinel: &str,
    metadata: Option<&str>,
    tars: &[(&str, Vec<u8>)],
) {
    put(
        store,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        sentinel.as_bytes(),
    );
    if let Some(m) = metadata {
        put(
            store,
            &format!("basebackups_005/{name}/files_metadata.json"),
            m.as_bytes(),
        );
    }
    for (tar, bytes) in tars {
        put(
            store,
            &format!("basebackups_005/{name}/tar_partitions/{tar}"),
            bytes,
        );
    }
    put(
        store,
        &format!("basebackups_005/{name}/tar_partitions/pg_control.tar"),
        &tar_of(&[
            Member::Dir("global"),
            Member::File("global/pg_control", vec![b'C'; 8192]),
        ]),
    );
}

/// The full backup FULL.
fn full(store: &Store, metadata: Option<&str>, tars: &[(&str, Vec<u8>)]) {
    backup(store, FULL, FULL_SENTINEL, metadata, tars);
}

/// The delta backup DELTA, of FULL.
fn delta(store: &Store, metadata: Option<&str>, tars: &[(&str, Vec<u8>)]) {
    backup(store, DELTA, DELTA_SENTINEL, metadata, tars);
}

/// A WAL-G increment of a file of `size` bytes with `pages` (block, byte).
fn increment(size: u64, pages: &[(u32, u8)]) -> Vec<u8> {
    let mut m = b"wi1\x55".to_vec();
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for (block, _) in pages {
        m.extend_from_slice(&block.to_le_bytes());
    }
    for (_, byte) in pages {
        m.extend(std::iter::repeat_n(*byte, 8192));
    }
    m
}

fn fetch(store: &Store, dest: &Path, args: &[&str]) -> Output {
    store
        .walden()
        .arg("backup-fetch")
        .arg(dest)
        .arg(DELTA)
        .args(args)
        .run()
}

const FULL_SENTINEL: &str = r#"{"LSN":33554472,"FinishLSN":33554688,"PgVersion":150000}"#;
const DELTA_SENTINEL: &str = r#"{"LSN":67108904,"FinishLSN":67109120,"PgVersion":150000,
    "DeltaFrom":"base_000000010000000000000002","DeltaFullName":"base_000000010000000000000002"}"#;

/// A full backup whose files metadata lacks a file its tars hold (and the
/// newer delta needs): every tar of it is read, in every restore order,
/// so the file is restored whole and the increment's holes are filled.
#[test]
fn a_full_backup_whose_metadata_lacks_a_file_still_restores_it() {
    let store = Store::fs();
    full(
        &store,
        Some(
            r#"{"Files":{"base/1/b":{}},"TarFileSets":{"part_001.tar":["base/1/a"],"part_002.tar":["base/1/b"]}}"#,
        ),
        &[
            ("part_001.tar", file_a_tar(vec![b'a'; 16384])),
            (
                "part_002.tar",
                tar_of(&[Member::File("base/1/b", vec![b'b'; 8192])]),
            ),
        ],
    );
    delta(
        &store,
        Some(
            r#"{"Files":{"base/1/a":{"IsIncremented":true},"base/1/b":{"IsSkipped":true}},"TarFileSets":{"part_001.tar":["base/1/a"]}}"#,
        ),
        &[("part_001.tar", file_a_tar(increment(16384, &[(0, b'A')])))],
    );
    let dirs = TempDir::new("hostile-lacking");
    for (i, args) in [
        &["--reverse-unpack", "--skip-redundant-tars"][..],
        &["--reverse-unpack"][..],
    ]
    .iter()
    .enumerate()
    {
        let dest = dirs.join(format!("d{i}"));
        let out = fetch(&store, &dest, args);
        out.assert_ok();
        let b = fs::read(dest.join("base/1/b")).unwrap_or_default();
        assert_eq!(b, vec![b'b'; 8192], "{args:?}: base/1/b\n{}", out.dump());
        let a = fs::read(dest.join("base/1/a")).unwrap();
        assert_eq!(a.len(), 16384, "{args:?}");
        assert!(
            a[..8192].iter().all(|&x| x == b'A') && a[8192..].iter().all(|&x| x == b'a'),
            "{args:?}: base/1/a is the delta's page 0 and the full's page 1"
        );
    }
}

/// `Files` given twice (Go matches `files` too) once made the restore
/// panic on indices into the first list.
#[test]
fn files_metadata_with_files_twice_is_refused() {
    let store = Store::fs();
    let data = file_a_tar(vec![b'a'; 8192]);
    full(
        &store,
        Some(r#"{"Files":{"base/1/a":{}}}"#),
        &[("part_001.tar", data.clone())],
    );
    delta(
        &store,
        Some(
            r#"{"Files":{"base/1/a":{},"base/1/b":{},"base/1/c":{}},"TarFileSets":{"part_001.tar":["base/1/c"]},"files":{"base/1/a":{}}}"#,
        ),
        &[("part_001.tar", data)],
    );
    let dirs = TempDir::new("hostile-twice");
    let out = fetch(&store, &dirs.join("d"), &[]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("files_metadata.json") && out.stderr.contains("appears twice"),
        "{}",
        out.dump()
    );
}

/// A symlink whose target climbs out of a name the same backup made a
/// link (`a/b/up -> ..`): its names stay inside, the path does not.
#[test]
fn a_link_that_climbs_out_through_another_link_is_refused() {
    let store = Store::fs();
    let dirs = TempDir::new("hostile-link");
    let outside = dirs.join("outside");
    let escape = format!(
        "a/b/up/../../../{}",
        outside.file_name().unwrap().to_str().unwrap()
    );
    let data = tar_of(&[
        Member::Dir("a"),
        Member::Dir("a/b"),
        Member::Link("a/b/up", ".."),
        Member::Link("pg_wal", &escape),
        Member::File("PG_VERSION", b"15\n".to_vec()),
    ]);
    full(&store, None, &[("part_001.tar", data)]);
    let dest = dirs.join("dest");
    let out = store
        .walden()
        .arg("backup-fetch")
        .arg(&dest)
        .arg(FULL)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("pg_wal") && out.stderr.contains("outside the destination"),
        "{}",
        out.dump()
    );
    assert!(
        fs::symlink_metadata(dest.join("pg_wal")).is_err(),
        "the link was not made"
    );
}

/// An increment whose header claims a file larger than any relation
/// segment (a restore would write that many zeros), or a block past its
/// own size: refused, naming the member.
#[test]
fn increments_beyond_any_segment_or_their_own_size_are_refused() {
    for (label, member, what) in [
        ("huge", increment(1 << 40, &[(0, b'A')]), "more than"),
        (
            "past",
            increment(8192, &[(100, b'A')]),
            "block 100, past the end",
        ),
    ] {
        let store = Store::fs();
        full(
            &store,
            Some(r#"{"Files":{"base/1/a":{}}}"#),
            &[("part_001.tar", file_a_tar(vec![b'a'; 8192]))],
        );
        delta(
            &store,
            Some(
                r#"{"Files":{"base/1/a":{"IsIncremented":true}},"TarFileSets":{"part_001.tar":["base/1/a"]}}"#,
            ),
            &[("part_001.tar", file_a_tar(member))],
        );
        let dirs = TempDir::new("hostile-increment");
        for args in [&[][..], &["--reverse-unpack"][..]] {
            let dest = dirs.join(format!("d{}", args.len()));
            let out = fetch(&store, &dest, args);
            out.assert_code(1);
            assert!(
                out.stderr.contains("base/1/a") && out.stderr.contains(what),
                "{label} {args:?}: {}",
                out.dump()
            );
            let written = fs::metadata(dest.join("base/1/a")).map_or(0, |m| m.len());
            assert!(
                written <= 16384,
                "{label} {args:?}: {written} bytes written"
            );
        }
    }
}

/// A tar the files metadata names is gone from storage (a lost object, a
/// partial copy): refused before anything is written, for a full backup
/// and for a delta chain whose base lost one.
#[test]
fn a_backup_missing_a_tar_its_metadata_names_is_refused() {
    let store = Store::fs();
    let data = file_a_tar(vec![b'a'; 8192]);
    full(
        &store,
        Some(
            r#"{"Files":{"base/1/a":{},"base/1/b":{}},"TarFileSets":{"part_001.tar":["base/1/a"],"part_002.tar":["base/1/b"]}}"#,
        ),
        &[("part_001.tar", data.clone())],
    );
    delta(
        &store,
        Some(
            r#"{"Files":{"base/1/a":{},"base/1/b":{"IsSkipped":true}},"TarFileSets":{"part_001.tar":["base/1/a"]}}"#,
        ),
        &[("part_001.tar", data)],
    );
    let dirs = TempDir::new("hostile-missing");
    for name in [FULL, DELTA] {
        let dest = dirs.join(name);
        let out = store
            .walden()
            .arg("backup-fetch")
            .arg(&dest)
            .arg(name)
            .run();
        out.assert_code(1);
        assert!(
            out.stderr
                .contains(&format!("backup {FULL} names tar 'part_002.tar'"))
                && out.stderr.contains("nothing of it was written"),
            "{name}: {}",
            out.dump()
        );
        assert!(!dest.exists(), "{name}: nothing written");
    }
}

/// A data tar that carries `global/pg_control` (WAL-G's remote backups
/// put a copy there): only the pg_control tar's is restored, last, so a
/// restore that fails on a later tar leaves no pg_control behind.
#[test]
fn pg_control_comes_only_from_its_own_tar() {
    let store = Store::fs();
    let with_control = tar_of(&[
        Member::Dir("global"),
        Member::File("global/pg_control", vec![b'E'; 8192]),
        Member::File("PG_VERSION", b"15\n".to_vec()),
    ]);
    full(&store, None, &[("part_001.tar", with_control.clone())]);
    let dirs = TempDir::new("hostile-control");
    let whole = dirs.join("whole");
    store
        .walden()
        .arg("backup-fetch")
        .arg(&whole)
        .arg(FULL)
        .run()
        .assert_ok();
    assert_eq!(
        fs::read(whole.join("global/pg_control")).unwrap(),
        vec![b'C'; 8192]
    );

    // A second data tar cut short: the restore fails before pg_control.
    let cut = tar_of(&[Member::File("base_file", vec![b'x'; 100_000])]);
    let cut = cut[..20_000].to_vec();
    full(
        &store,
        None,
        &[("part_001.tar", with_control), ("part_002.tar", cut)],
    );
    let failed = dirs.join("failed");
    let out = store
        .walden()
        .env("WALG_DOWNLOAD_CONCURRENCY", "1")
        .arg("backup-fetch")
        .arg(&failed)
        .arg(FULL)
        .run();
    out.assert_code(1);
    assert!(
        !failed.join("global/pg_control").exists(),
        "a failed restore has no pg_control: {}",
        out.dump()
    );
}
