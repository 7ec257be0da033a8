//! The PGDATA walk of a local backup: symlinks not followed, WAL-G's
//! exclusions by base name at any depth (spec §8.1).
//!
//! Memory: one open directory handle per level of the current path, never
//! a list of names. So entries come in the file system's order, not
//! sorted as Go's `filepath.Walk` gives them to WAL-G: nothing reads the
//! order, and sorting would hold a whole directory's names (a database
//! directory can have millions of files).

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directories restored empty and files left out (`ExcludedFilenames` in
/// WAL-G's `bundle.go`).
const EXCLUDED: &[&str] = &[
    "log",
    "pg_log",
    "pg_xlog",
    "pg_wal",
    "pgsql_tmp",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_stat_tmp",
    "pg_snapshots",
    "pg_subtrans",
    "postgresql.auto.conf.tmp",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.conf",
    "standby.signal",
];

pub fn is_excluded(name: &[u8]) -> bool {
    EXCLUDED.iter().any(|e| e.as_bytes() == name)
}

pub enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
}

pub struct Entry<'a> {
    /// Relative to PGDATA, `/`-separated, no leading slash.
    pub rel: &'a Path,
    pub meta: &'a Metadata,
    pub kind: Kind,
}

/// Call `f` for every entry under `root` to back up (not `root` itself).
/// `catalog` receives the `stat` size of every walked entry, excluded
/// ones included (WAL-G's `DataCatalogSize`). Entries that vanish during
/// the walk are skipped: PostgreSQL removes files all the time, and WAL
/// replay recreates whatever the backup needs.
pub fn walk(root: &Path, catalog: &mut u64, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
    walk_dir(root, Path::new(""), catalog, f)
}

fn walk_dir(
    root: &Path,
    rel_dir: &Path,
    catalog: &mut u64,
    f: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<()> {
    let dir = root.join(rel_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !rel_dir.as_os_str().is_empty() => {
            return Ok(())
        }
        Err(e) => return Err(Error::io(format!("listing '{}'", dir.display()), e)),
    };
    for entry in entries {
        let name = entry
            .map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?
            .file_name();
        let rel = rel_dir.join(&name);
        let path = root.join(&rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
        };
        *catalog += meta.len();
        let excluded = is_excluded(name.as_bytes());
        let ft = meta.file_type();
        if ft.is_dir() {
            f(Entry {
                rel: &rel,
                meta: &meta,
                kind: Kind::Dir,
            })?;
            if !excluded {
                walk_dir(root, &rel, catalog, f)?;
            }
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            if rel_dir == Path::new("pg_tblspc") {
                return Err(Error::Other(format!(
                    "'{}' is a tablespace, and backups of clusters with tablespaces are not built yet in walden; \
                     back this cluster up with WAL-G for now",
                    path.display()
                )));
            }
            let target = match fs::read_link(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading link '{}'", path.display()), e)),
            };
            f(Entry {
                rel: &rel,
                meta: &meta,
                kind: Kind::Symlink(target),
            })?;
        } else if ft.is_file() {
            f(Entry {
                rel: &rel,
                meta: &meta,
                kind: Kind::File,
            })?;
        } else {
            // Sockets, FIFOs, devices have no place in a data directory
            // and nothing to restore; WAL-G's tar writer rejects sockets.
            log::warn!(
                "skipping '{}': not a file, directory or symlink",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_and_exclusions() {
        let root = std::env::temp_dir().join(format!("walden-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["base/1", "pg_wal/archive_status", "global", "pg_replslot/s"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "base/1/123",
            "pg_wal/000000010000000000000001",
            "global/pg_control",
            "postmaster.pid",
            "PG_VERSION",
            "pg_replslot/s/state",
        ] {
            fs::write(root.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/nowhere", root.join("link")).unwrap();
        let mut seen = Vec::new();
        let mut catalog = 0;
        walk(&root, &mut catalog, &mut |e| {
            let tag = match e.kind {
                Kind::Dir => "d",
                Kind::File => "f",
                Kind::Symlink(_) => "l",
            };
            seen.push(format!("{tag} {}", e.rel.display()));
            Ok(())
        })
        .unwrap();
        // Parents before their children, whatever the order of siblings.
        let pos = |s: &str| seen.iter().position(|x| x == s).unwrap();
        assert!(pos("d base") < pos("d base/1") && pos("d base/1") < pos("f base/1/123"));
        seen.sort();
        assert_eq!(
            seen,
            [
                "d base",
                "d base/1",
                "d global",
                "d pg_replslot",
                "d pg_wal",
                "f PG_VERSION",
                "f base/1/123",
                "f global/pg_control",
                "l link",
            ]
        );
        assert!(catalog > 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
