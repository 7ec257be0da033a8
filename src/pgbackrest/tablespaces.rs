//! Where a pgBackRest backup's files go on restore (spec §6.4, §6.9, §12.4):
//! `pg_data/...` under DEST, `pg_tblspc/<oid>/...` under the tablespace's
//! location, which is the path recorded at backup time unless pgBackRest's
//! own options move it: `--tablespace-map NAME=DIR` (NAME is the
//! tablespace's name or oid) and `--tablespace-map-all DIR` (each
//! tablespace in DIR/<name>). `pg_data/pg_tblspc/<oid>` becomes a link to
//! that location. Other links of the data directory (a `pg_wal` elsewhere)
//! are restored as plain directories inside DEST, as pgBackRest does
//! without `--link-all`. Every location, recorded or mapped, passes the
//! WAL-G side's checks (absolute without `..`, outside DEST and the other
//! locations, absent or empty) before anything is written.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ini::Ini;
use super::PgbrError;
use crate::backup::tablespaces::check_locations;
use crate::backup::walk;
use crate::error::{Error, Result};

/// `--tablespace-map` and `--tablespace-map-all`.
#[derive(Debug, Default, Clone)]
pub struct TablespaceMap {
    pub each: Vec<(String, PathBuf)>,
    pub all: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Tablespace {
    pub oid: String,
    pub name: String,
    pub location: PathBuf,
}

#[derive(Debug)]
pub struct Layout {
    dest: PathBuf,
    pub tablespaces: Vec<Tablespace>,
    /// Non-tablespace links of the data directory that point at a
    /// directory: restored as directories under DEST.
    link_dirs: Vec<String>,
}

fn bad(what: &str, problem: String) -> Error {
    PgbrError::Format {
        what: what.to_string(),
        problem,
    }
    .into()
}

/// `rest` as a relative path that cannot leave its base. Only the
/// canonical form pgBackRest writes is taken: `Path` would read
/// `global//pg_control`, `global/./pg_control` or `global/pg_control/` as
/// `global/pg_control`, an alias that escapes every check made on names
/// (pg_control written last).
fn relative(name: &str, rest: &str) -> Result<PathBuf> {
    if rest.split('/').any(|c| c == "..") {
        return Err(Error::Other(format!(
            "manifest entry '{name}' would be written outside the restore; refused"
        )));
    }
    if rest.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(Error::Other(format!(
            "manifest entry '{name}' is not a canonical path (an empty or '.' component: '//', '/./' \
             or a trailing '/'); pgBackRest never writes one: the manifest is damaged or hostile, refused"
        )));
    }
    Ok(PathBuf::from(rest))
}

impl Layout {
    pub fn new(man: &Ini, dest: &Path, map: &TablespaceMap) -> Result<Layout> {
        let mut tablespaces = Vec::new();
        let mut link_dirs = Vec::new();
        for (key, v) in man.section("backup:target").into_iter().flatten() {
            let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
            if key == "pg_data" {
                continue;
            }
            if let Some(oid) = key.strip_prefix("pg_tblspc/") {
                let name = v
                    .get("tablespace-name")
                    .and_then(Value::as_str)
                    .unwrap_or(oid)
                    .to_string();
                let original = v
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("manifest", format!("[backup:target] {key} has no path")))?;
                if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(
                        "manifest",
                        format!("[backup:target] {key}: not a tablespace oid"),
                    ));
                }
                let mapped = map
                    .each
                    .iter()
                    .find(|(n, _)| *n == name || n == oid)
                    .map(|(_, d)| d.clone());
                let location = match (mapped, &map.all) {
                    (Some(d), _) => d,
                    (None, Some(all)) => {
                        // DIR/<name>: a name that is not one directory
                        // name would place it elsewhere.
                        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                            return Err(bad(
                                "manifest",
                                format!(
                                    "[backup:target] {key}: tablespace name '{name}' is not a directory name, \
                                     so --tablespace-map-all cannot place it; give its location with \
                                     --tablespace-map {oid}=DIR"
                                ),
                            ));
                        }
                        all.join(&name)
                    }
                    (None, None) => PathBuf::from(original),
                };
                tablespaces.push(Tablespace {
                    oid: oid.to_string(),
                    name,
                    location,
                });
            } else if let Some(rest) = key.strip_prefix("pg_data/") {
                if kind == "link" && v.get("file").is_none() {
                    relative(key, rest)?;
                    link_dirs.push(rest.to_string());
                }
            }
        }
        for (n, _) in &map.each {
            if !tablespaces.iter().any(|t| t.name == *n || t.oid == *n) {
                let known: Vec<String> = tablespaces
                    .iter()
                    .map(|t| format!("{} (oid {})", t.name, t.oid))
                    .collect();
                return Err(Error::Usage(format!(
                    "--tablespace-map {n}: the backup has no such tablespace; it has: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        // The WAL-G side's checks, on every location, mapped or recorded:
        // a manifest must not place files anywhere on the machine.
        let links: Vec<walk::Tablespace> = tablespaces
            .iter()
            .map(|t| walk::Tablespace {
                name: format!("{} (oid {})", t.name, t.oid),
                location: t.location.clone(),
            })
            .collect();
        check_locations(
            &links,
            dest,
            "--tablespace-map NAME=DIR or --tablespace-map-all DIR",
        )?;
        Ok(Layout {
            dest: dest.to_path_buf(),
            tablespaces,
            link_dirs,
        })
    }

    /// Creates each tablespace location, checked by [`Layout::new`].
    pub fn prepare(&self) -> Result<()> {
        for t in &self.tablespaces {
            log::info!(
                "Tablespace {} (oid {}) is restored into '{}'",
                t.name,
                t.oid,
                t.location.display()
            );
            fs::create_dir_all(&t.location)
                .map_err(|e| Error::io(format!("creating {}", t.location.display()), e))?;
        }
        Ok(())
    }

    /// Where manifest entry `name` goes; `None` for `pg_tblspc` itself,
    /// which names no directory of its own.
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>> {
        if name == "pg_data" {
            return Ok(Some(self.dest.clone()));
        }
        if let Some(rest) = name.strip_prefix("pg_data/") {
            return Ok(Some(self.dest.join(relative(name, rest)?)));
        }
        if name == "pg_tblspc" {
            return Ok(None);
        }
        if let Some(rest) = name.strip_prefix("pg_tblspc/") {
            let (oid, inner) = match rest.split_once('/') {
                Some((oid, inner)) => (oid, Some(relative(name, inner)?)),
                None => (rest, None),
            };
            let t = self
                .tablespaces
                .iter()
                .find(|t| t.oid == oid)
                .ok_or_else(|| {
                    Error::Other(format!(
                        "manifest entry '{name}' is in tablespace {oid}, which [backup:target] does not name"
                    ))
                })?;
            return Ok(Some(match inner {
                Some(inner) => t.location.join(inner),
                None => t.location.clone(),
            }));
        }
        Err(Error::Other(format!(
            "manifest entry '{name}' is neither in pg_data nor in pg_tblspc"
        )))
    }

    /// The links: `pg_tblspc/<oid>` in DEST to each tablespace's location
    /// (absolute, as PostgreSQL makes them), other directory links as
    /// directories.
    pub fn links(&self) -> Result<()> {
        for t in &self.tablespaces {
            let link = self.dest.join("pg_tblspc").join(&t.oid);
            let target = std::path::absolute(&t.location)
                .map_err(|e| Error::io(format!("resolving {}", t.location.display()), e))?;
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            std::os::unix::fs::symlink(&target, &link).map_err(|e| {
                Error::io(
                    format!("linking {} to {}", link.display(), target.display()),
                    e,
                )
            })?;
        }
        for rest in &self.link_dirs {
            let dir = self.dest.join(rest);
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest whose `[backup:target]` has one tablespace per
    /// (oid, name, path).
    fn manifest(tablespaces: &[(&str, &str, &str)]) -> Ini {
        let mut ini = Ini::default();
        let target = ini.sections.entry("backup:target".into()).or_default();
        for (oid, name, path) in tablespaces {
            target.insert(
                format!("pg_tblspc/{oid}"),
                serde_json::json!({"path": path, "tablespace-id": oid, "tablespace-name": name, "type": "link"}),
            );
        }
        ini
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "walden-pgbr-ts-{name}-{}",
            crate::localfile::random_suffix()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn err(man: &Ini, dest: &Path, map: &TablespaceMap) -> String {
        Layout::new(man, dest, map).unwrap_err().to_string()
    }

    #[test]
    fn hostile_recorded_locations_are_refused() {
        let root = scratch("recorded");
        let dest = root.join("dest");
        let none = TablespaceMap::default();
        let at = |p: &str| manifest(&[("16384", "ts1", p)]);
        let e = err(&at("../rel-escape"), &dest, &none);
        assert!(
            e.contains("ts1 (oid 16384)") && e.contains("not an absolute"),
            "{e}"
        );
        let e = err(&at("/a/../etc"), &dest, &none);
        assert!(e.contains("not an absolute"), "{e}");
        let e = err(&at("/"), &dest, &none);
        assert!(e.contains("not an absolute"), "{e}");
        let inside = dest.join("global");
        let e = err(&at(inside.to_str().unwrap()), &dest, &none);
        assert!(e.contains("overlaps the destination"), "{e}");
        let e = err(&at(root.to_str().unwrap()), &dest, &none);
        assert!(e.contains("overlaps the destination"), "{e}");
        let full = root.join("full");
        fs::create_dir_all(full.join("x")).unwrap();
        let e = err(&at(full.to_str().unwrap()), &dest, &none);
        assert!(e.contains("not empty"), "{e}");
        let (a, b) = (root.join("a"), root.join("a/b"));
        let two = manifest(&[
            ("16384", "ts1", a.to_str().unwrap()),
            ("16385", "ts2", b.to_str().unwrap()),
        ]);
        let e = err(&two, &dest, &none);
        assert!(e.contains("overlapping directories"), "{e}");
        // An absolute, empty, separate location is where pgBackRest puts it.
        let fine = root.join("ts");
        let layout = Layout::new(&at(fine.to_str().unwrap()), &dest, &none).unwrap();
        assert_eq!(layout.tablespaces[0].location, fine);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn mapped_locations_are_checked_too() {
        let root = scratch("mapped");
        let dest = root.join("dest");
        let man = manifest(&[("16384", "ts1", "/nonexistent/ts1")]);
        let each = |d: PathBuf| TablespaceMap {
            each: vec![("ts1".into(), d)],
            all: None,
        };
        let e = err(&man, &dest, &each("relative/ts".into()));
        assert!(e.contains("not an absolute"), "{e}");
        let e = err(&man, &dest, &each(dest.join("pg_tblspc/x")));
        assert!(e.contains("overlaps the destination"), "{e}");
        let all = |d: PathBuf| TablespaceMap {
            each: vec![],
            all: Some(d),
        };
        let e = err(&man, &dest, &all(dest.clone()));
        assert!(e.contains("overlaps the destination"), "{e}");
        for name in ["../../etc", "a/b", "..", "."] {
            let hostile = manifest(&[("16384", name, "/nonexistent/ts1")]);
            let e = err(&hostile, &dest, &all(root.join("all")));
            assert!(
                e.contains("not a directory name") && e.contains("--tablespace-map 16384=DIR"),
                "{name}: {e}"
            );
        }
        let layout = Layout::new(&man, &dest, &all(root.join("all"))).unwrap();
        assert_eq!(layout.tablespaces[0].location, root.join("all/ts1"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn only_canonical_names_are_taken() {
        let root = scratch("names");
        let ts = root.join("ts");
        let layout = Layout::new(
            &manifest(&[("16384", "ts1", ts.to_str().unwrap())]),
            &root.join("dest"),
            &TablespaceMap::default(),
        )
        .unwrap();
        let path = |n: &str| layout.path(n).map_err(|e| e.to_string());
        assert_eq!(
            path("pg_data/global/pg_control").unwrap(),
            Some(root.join("dest/global/pg_control"))
        );
        assert_eq!(path("pg_tblspc/16384").unwrap(), Some(ts.clone()));
        assert_eq!(
            path("pg_tblspc/16384/PG_15_1/5/1").unwrap(),
            Some(ts.join("PG_15_1/5/1"))
        );
        for alias in [
            "pg_data/global//pg_control",
            "pg_data/global/./pg_control",
            "pg_data/./global/pg_control",
            "pg_data/global/pg_control/",
            "pg_data/",
            "pg_data//global",
            "pg_tblspc/16384/",
            "pg_tblspc/16384//PG_15_1",
        ] {
            let e = path(alias).unwrap_err();
            assert!(
                e.contains(alias) && e.contains("not a canonical path"),
                "{e}"
            );
        }
        for out in [
            "pg_data/../x",
            "pg_data/global/../../x",
            "pg_tblspc/16384/../x",
        ] {
            let e = path(out).unwrap_err();
            assert!(e.contains("outside the restore"), "{e}");
        }
        fs::remove_dir_all(root).unwrap();
    }
}
