//! The two storages every storage-touching test runs against: a directory
//! (`WALG_FILE_PREFIX`) and a real S3-compatible server (`WALG_S3_PREFIX`).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{PgCluster, S3Server, TempDir, Walden};

pub enum Store {
    Fs { dir: TempDir },
    S3 { server: S3Server },
}

pub const S3_PREFIX_PATH: &str = "cluster-a";

/// A libsodium key (32 bytes, `none` transform).
pub const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Settings for a compression method, encrypted with [`KEY`] or not.
pub fn codec_env(method: &str, encrypted: bool) -> Vec<(String, String)> {
    let mut env = vec![("WALG_COMPRESSION_METHOD".to_string(), method.to_string())];
    if encrypted {
        env.push(("WALG_LIBSODIUM_KEY".into(), KEY.into()));
    }
    env
}

impl Store {
    pub fn fs() -> Store {
        let dir = TempDir::new("store");
        // archive_command runs as the postgres user, and the prefix is
        // made here: made by a root command first (a remote backup-push
        // right after the server starts), it would leave the archiver
        // unable to create wal_005/, and the backup waiting for WAL.
        std::fs::create_dir(dir.join("repo")).unwrap();
        dir.chown_postgres();
        Store::Fs { dir }
    }

    pub fn s3() -> Store {
        Store::S3 {
            server: S3Server::start(),
        }
    }

    pub fn both() -> [Store; 2] {
        [Store::fs(), Store::s3()]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Store::Fs { .. } => "fs",
            Store::S3 { .. } => "s3",
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Store::Fs { dir } => vec![(
                "WALG_FILE_PREFIX".to_string(),
                dir.join("repo").display().to_string(),
            )],
            Store::S3 { server } => server.env(S3_PREFIX_PATH),
        }
    }

    /// A walden command configured for this storage.
    /// `backup-push` of `pg` into this store while pgbench writes for
    /// three seconds.
    pub fn backup_push_under_load(&self, pg: &PgCluster) {
        std::thread::scope(|s| {
            let load = s.spawn(|| pg.pgbench(&["-n", "-T", "3", "-c", "2"]));
            std::thread::sleep(Duration::from_millis(300));
            self.walden()
                .envs(pg.env())
                .arg("backup-push")
                .timeout(Duration::from_secs(120))
                .run()
                .assert_ok();
            load.join().unwrap();
        });
    }

    pub fn walden(&self) -> Walden {
        Walden::new().envs(self.env())
    }

    /// Where the object `key` is kept on disk (both storages keep plain
    /// files), to check that nothing half-written is there.
    pub fn object_file(&self, key: &str) -> PathBuf {
        match self {
            Store::Fs { dir } => dir.join("repo").join(key),
            Store::S3 { server } => server.object_path(&format!("{S3_PREFIX_PATH}/{key}")),
        }
    }

    /// Store `bytes` as `key` unencoded (through a file in `scratch`), to
    /// plant a foreign or damaged object.
    pub fn put_raw(&self, scratch: &std::path::Path, key: &str, bytes: &[u8]) {
        let f = scratch.join("raw-object");
        std::fs::write(&f, bytes).unwrap();
        self.walden()
            .args(["st", "put", "-f", "--no-compress", "--no-encrypt"])
            .arg(&f)
            .arg(key)
            .run()
            .assert_ok();
        std::fs::remove_file(&f).unwrap();
    }

    pub fn server(&mut self) -> Option<&mut S3Server> {
        match self {
            Store::S3 { server } => Some(server),
            Store::Fs { .. } => None,
        }
    }
}

/// Bytes that do not compress well and differ per seed (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like bytes that compress well, like WAL and heap pages do.
pub fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "row {i} of the walden test data, value {}\n",
                i * 7919 % 10007
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// The size of a PostgreSQL WAL segment (the default 16 MiB).
pub const WAL_SIZE: usize = 16 << 20;

/// A fake pg_wal with segments that look like WAL (page magic first).
pub struct FakeWal {
    /// The scratch directory holding `pg_wal/`; free for other files.
    pub tmp: TempDir,
}

impl FakeWal {
    pub fn new() -> FakeWal {
        let tmp = TempDir::new("fakewal");
        fs::create_dir_all(tmp.join("pg_wal/archive_status")).unwrap();
        FakeWal { tmp }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.join("pg_wal")
    }

    /// A 16 MiB segment `name` that differs by `seed`; `ready` adds its
    /// archive_status/NAME.ready marker.
    pub fn segment(&self, name: &str, seed: u8, ready: bool) -> PathBuf {
        let mut data = vec![0x10u8, 0xD1];
        let body = text(WAL_SIZE);
        data.extend_from_slice(&body[..WAL_SIZE - 2]);
        data[100] = seed;
        let path = self.dir().join(name);
        fs::write(&path, &data).unwrap();
        if ready {
            fs::write(self.dir().join(format!("archive_status/{name}.ready")), "").unwrap();
        }
        path
    }
}
