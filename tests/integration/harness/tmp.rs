//! Temporary directories that clean up after themselves, plus the few
//! ownership helpers needed because PostgreSQL refuses to run as root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Tests in one process run in parallel threads and several test processes may
/// run at once, so the name combines pid, a process-wide counter and the clock.
static COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `label` only makes leftover directories recognisable when debugging.
    pub fn new(label: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Kept short: PostgreSQL's unix socket path must fit in 107 bytes.
        let name = format!("walden-{label}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Convenience for `self.path().join(p)`.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Hands the whole tree to the `postgres` user when we run as root, so a
    /// server started through `runuser` can write into it. No-op otherwise,
    /// because then the server runs as us and already owns everything.
    pub fn chown_postgres(&self) {
        chown_postgres(&self.path);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Errors are ignored: a leftover directory in /tmp must never turn a
        // passing test into a failing one (or a panic during unwinding).
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Effective uid of this process, read from /proc so no libc binding is needed.
pub fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .expect("stat /proc/self to learn our uid")
        .uid()
}

pub fn running_as_root() -> bool {
    current_uid() == 0
}

/// uid and gid of the `postgres` OS user, from /etc/passwd (std only).
pub fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == "postgres" {
            let uid = f[2]
                .parse()
                .expect("numeric uid of postgres in /etc/passwd");
            let gid = f[3]
                .parse()
                .expect("numeric gid of postgres in /etc/passwd");
            return (uid, gid);
        }
    }
    panic!("no `postgres` user in /etc/passwd: install postgresql-15");
}

/// Recursive chown to the postgres user when root; no-op otherwise.
/// Symlinks are chowned themselves and never followed.
pub fn chown_postgres(path: &Path) {
    if !running_as_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    chown_tree(path, uid, gid);
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).unwrap_or_else(|e| panic!("read dir {}: {e}", path.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read dir {}: {e}", path.display()));
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Asks the kernel for an unused TCP port. The listener is dropped before the
/// server binds, so another process could grab the port in between; the
/// kernel hands out ephemeral ports round-robin, which makes that unlikely.
pub fn free_port() -> u16 {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local addr of probe listener").port()
}
