//! The PGDATA walk of a local backup: symlinks not followed, WAL-G's
//! exclusions by base name at any depth (spec §8.1). Tablespaces (symlinks
//! in `pg_tblspc`) are the exception: their targets are walked as if they
//! were `pg_tblspc/<oid>/...`, which is how WAL-G names their members
//! (spec §1.5), and returned so the sentinel can record them.
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

/// A tablespace found in `pg_tblspc`: the link's name (the tablespace's
/// OID) and its target, absolute, without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub name: String,
    pub location: PathBuf,
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
///
/// Returns the tablespaces walked, sorted by name (WAL-G lists them in
/// `os.ReadDir` order). Their members come as `pg_tblspc/<oid>/...`,
/// readable through PGDATA's link; the link itself and the tablespace's
/// root directory give no entry, as in WAL-G.
pub fn walk(
    root: &Path,
    catalog: &mut u64,
    f: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<Vec<Tablespace>> {
    let mut tablespaces = Vec::new();
    walk_dir(root, Path::new(""), catalog, &mut tablespaces, f)?;
    tablespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tablespaces)
}

/// Reads the link `pg_tblspc/<name>` as a tablespace; `None` when it
/// vanished (a tablespace dropped during the backup).
fn tablespace(path: &Path, name: &std::ffi::OsStr) -> Result<Option<Tablespace>> {
    let target = match fs::read_link(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading link '{}'", path.display()), e)),
    };
    let name = name
        .to_str()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            Error::Other(format!(
                "'{}' is a symlink in pg_tblspc but not a tablespace (PostgreSQL names those by OID); remove it",
                path.display()
            ))
        })?;
    let text = target.to_str().ok_or_else(|| {
        Error::Other(format!(
            "the tablespace '{}' points to '{}', which is not UTF-8 and cannot be recorded in the backup's sentinel",
            path.display(),
            target.display()
        ))
    })?;
    let trimmed = text.trim_end_matches('/');
    if !text.starts_with('/') || trimmed.is_empty() {
        // WAL-G fails the same way ("tablespace at path ... wasn't found").
        return Err(Error::Other(format!(
            "the tablespace '{}' points to '{text}', which is not an absolute directory path; \
             PostgreSQL writes absolute ones: recreate the link with the absolute path",
            path.display()
        )));
    }
    Ok(Some(Tablespace {
        name: name.to_string(),
        location: PathBuf::from(trimmed),
    }))
}

fn walk_dir(
    root: &Path,
    rel_dir: &Path,
    catalog: &mut u64,
    tablespaces: &mut Vec<Tablespace>,
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
                walk_dir(root, &rel, catalog, tablespaces, f)?;
            }
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            if rel_dir == Path::new("pg_tblspc") {
                let Some(ts) = tablespace(&path, &name)? else {
                    continue;
                };
                // The target's root counts in DataCatalogSize as in WAL-G.
                if let Ok(m) = fs::metadata(&path) {
                    *catalog += m.len();
                }
                tablespaces.push(ts);
                // Through the link: read_dir and lstat below it follow
                // the link, so members are named pg_tblspc/<oid>/...
                walk_dir(root, &rel, catalog, tablespaces, f)?;
                continue;
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
        // A tablespace outside the root, with an exclusion inside it.
        let ts = std::env::temp_dir().join(format!("walden-walk-ts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&ts);
        fs::create_dir_all(ts.join("PG_15_1/5/pgsql_tmp")).unwrap();
        fs::write(ts.join("PG_15_1/5/16400"), b"t").unwrap();
        fs::write(ts.join("PG_15_1/5/pgsql_tmp/t1"), b"t").unwrap();
        fs::create_dir_all(root.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(format!("{}/", ts.display()), root.join("pg_tblspc/16390"))
            .unwrap();
        let mut seen = Vec::new();
        let mut catalog = 0;
        let found = walk(&root, &mut catalog, &mut |e| {
            let tag = match e.kind {
                Kind::Dir => "d",
                Kind::File => "f",
                Kind::Symlink(_) => "l",
            };
            seen.push(format!("{tag} {}", e.rel.display()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            found,
            [Tablespace {
                name: "16390".into(),
                location: ts.clone()
            }]
        );
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
                "d pg_tblspc",
                "d pg_tblspc/16390/PG_15_1",
                "d pg_tblspc/16390/PG_15_1/5",
                "d pg_tblspc/16390/PG_15_1/5/pgsql_tmp",
                "d pg_wal",
                "f PG_VERSION",
                "f base/1/123",
                "f global/pg_control",
                "f pg_tblspc/16390/PG_15_1/5/16400",
                "l link",
            ]
        );
        assert!(catalog > 0);
        // A relative target is refused, as WAL-G refuses it.
        fs::remove_file(root.join("pg_tblspc/16390")).unwrap();
        std::os::unix::fs::symlink("../ts", root.join("pg_tblspc/16390")).unwrap();
        let e = walk(&root, &mut catalog, &mut |_| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains("not an absolute directory path"),
            "{e}"
        );
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&ts).unwrap();
    }
}
