//! Interoperability with WAL-G itself: WAL segments and `st` objects that
//! one program writes, the other reads back byte for byte, on both storages,
//! for each codec with and without libsodium encryption.
//!
//! WAL-G is not built by this repository. Point `WALDEN_WALG_BIN` at a
//! PostgreSQL wal-g built with the `brotli libsodium` tags; without it these
//! tests skip.

use std::fs;
use std::path::{Path, PathBuf};

use crate::harness::{TempDir, Walden};
use crate::store::{noise, text, FakeWal, Store};

/// 28 bytes: WAL-G's `none` key transform pads it with zeros to 32.
const KEY: &str = "walg-compat-key-0123456789ab";

/// (WALG_COMPRESSION_METHOD, file extension) pairs both programs write.
const CODECS: [(&str, &str); 3] = [("lz4", ".lz4"), ("zstd", ".zst"), ("brotli", ".br")];

fn walg_bin() -> Option<PathBuf> {
    match std::env::var_os("WALDEN_WALG_BIN") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("WALDEN_WALG_BIN not set: skipping WAL-G interoperability test");
            None
        }
    }
}

/// Who writes and who reads.
#[derive(Clone, Copy)]
enum Tool<'a> {
    Walden,
    WalG(&'a Path),
}

impl Tool<'_> {
    /// A command of this program configured for `store`, a codec and maybe a key.
    fn on(self, store: &Store, method: &str, encrypted: bool) -> Walden {
        let cmd = match self {
            Tool::Walden => store.walden(),
            Tool::WalG(bin) => {
                // WAL-G's file storage refuses a root that does not exist yet
                // (walden creates it).
                if let Store::Fs { dir } = store {
                    fs::create_dir_all(dir.join("repo")).unwrap();
                }
                Walden::program(bin).envs(store.env())
            }
        };
        let cmd = cmd
            .env("WALG_COMPRESSION_METHOD", method)
            // No prefetch processes left running after wal-fetch.
            .env("WALG_DOWNLOAD_CONCURRENCY", "1");
        if encrypted {
            cmd.env("WALG_LIBSODIUM_KEY", KEY)
        } else {
            cmd
        }
    }
}

/// Every (store, codec, encrypted) combination, each with a running number
/// so that every combination writes its own object.
fn for_each_combination(mut f: impl FnMut(&Store, &str, &str, bool, usize)) {
    let mut n = 0;
    for store in Store::both() {
        for (method, ext) in CODECS {
            for encrypted in [false, true] {
                n += 1;
                f(&store, method, ext, encrypted, n);
            }
        }
    }
}

/// `writer` wal-pushes a segment, `reader` wal-fetches it: same bytes.
fn wal_push_then_fetch(writer: Tool, reader: Tool) {
    for_each_combination(|store, method, ext, encrypted, n| {
        let what = format!("{} {method} encrypted={encrypted}", store.name());
        let name = format!("0000000100000000000000{n:02X}");
        let wal = FakeWal::new();
        let seg = wal.segment(&name, n as u8, false);
        writer
            .on(store, method, encrypted)
            .arg("wal-push")
            .arg(&seg)
            .run()
            .assert_ok();
        let key = format!("wal_005/{name}{ext}");
        assert!(store.object_file(&key).is_file(), "{what}: {key} stored");

        let out = TempDir::new("walg-compat-fetch");
        let dest = out.join("RECOVERYXLOG");
        reader
            .on(store, method, encrypted)
            .args(["wal-fetch", name.as_str()])
            .arg(&dest)
            .run()
            .assert_ok();
        assert!(
            fs::read(&dest).unwrap() == fs::read(&seg).unwrap(),
            "{what}: fetched segment differs"
        );
    });
}

/// `writer` does `st put`, `reader` does `st get`: same bytes.
fn st_put_then_get(writer: Tool, reader: Tool) {
    let tmp = TempDir::new("walg-compat-st");
    let data = [text(300_000), noise(70_000, 7)].concat();
    let src = tmp.join("src");
    fs::write(&src, &data).unwrap();
    for_each_combination(|store, method, ext, encrypted, n| {
        let what = format!("{} {method} encrypted={encrypted}", store.name());
        let remote = format!("compat/{n}-{method}-{encrypted}");
        writer
            .on(store, method, encrypted)
            .args(["st", "put"])
            .arg(&src)
            .arg(&remote)
            .run()
            .assert_ok();
        let key = format!("{remote}{ext}");
        assert!(store.object_file(&key).is_file(), "{what}: {key} stored");

        let dest = tmp.join(format!("got-{n}"));
        reader
            .on(store, method, encrypted)
            .args(["st", "get", &key])
            .arg(&dest)
            .run()
            .assert_ok();
        assert!(fs::read(&dest).unwrap() == data, "{what}: object differs");
    });
}

#[test]
fn wal_pushed_by_walg_is_fetched_by_walden() {
    let Some(bin) = walg_bin() else { return };
    wal_push_then_fetch(Tool::WalG(&bin), Tool::Walden);
}

#[test]
fn wal_pushed_by_walden_is_fetched_by_walg() {
    let Some(bin) = walg_bin() else { return };
    wal_push_then_fetch(Tool::Walden, Tool::WalG(&bin));
}

#[test]
fn st_objects_put_by_walg_are_read_by_walden() {
    let Some(bin) = walg_bin() else { return };
    st_put_then_get(Tool::WalG(&bin), Tool::Walden);
}

#[test]
fn st_objects_put_by_walden_are_read_by_walg() {
    let Some(bin) = walg_bin() else { return };
    st_put_then_get(Tool::Walden, Tool::WalG(&bin));
}
