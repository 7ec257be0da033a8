//! Where a pgBackRest backup's files go on restore (spec §6.4, §6.9, §12.4):
//! `pg_data/...` under DEST, `pg_tblspc/<oid>/...` under the tablespace's
//! location, which is the path recorded at backup time unless pgBackRest's
//! own options move it: `--tablespace-map NAME=DIR` (NAME is the
//! tablespace's name or oid) and `--tablespace-map-all DIR` (each
//! tablespace in DIR/<name>). `pg_data/pg_tblspc/<oid>` becomes a link to
//! that location. Other links of the data directory (a `pg_wal` elsewhere)
//! are restored as plain directories inside DEST, as pgBackRest does
//! without `--link-all`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::ini::Ini;
use super::PgbrError;
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

/// `rest` as a relative path that cannot leave its base.
fn relative(name: &str, rest: &str) -> Result<PathBuf> {
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::Other(format!(
            "manifest entry '{name}' would be written outside the restore; refused"
        )));
    }
    Ok(rel.to_path_buf())
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
                    (None, Some(all)) => all.join(relative(key, &name)?),
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
        Ok(Layout {
            dest: dest.to_path_buf(),
            tablespaces,
            link_dirs,
        })
    }

    /// Each tablespace location must be absent or empty, as DEST: a
    /// restore over files would mix two clusters. Checked for all before
    /// any is created.
    pub fn prepare(&self) -> Result<()> {
        for t in &self.tablespaces {
            match fs::read_dir(&t.location) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(Error::Other(format!(
                            "tablespace {} (oid {}) would be restored into {}, which is not empty; \
                             give an empty or new directory with --tablespace-map {}=DIR or --tablespace-map-all DIR",
                            t.name,
                            t.oid,
                            t.location.display(),
                            t.name
                        )));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("reading {}", t.location.display()), e)),
            }
        }
        for t in &self.tablespaces {
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
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            let t = self
                .tablespaces
                .iter()
                .find(|t| t.oid == oid)
                .ok_or_else(|| {
                    Error::Other(format!(
                        "manifest entry '{name}' is in tablespace {oid}, which [backup:target] does not name"
                    ))
                })?;
            if inner.is_empty() {
                return Ok(Some(t.location.clone()));
            }
            return Ok(Some(t.location.join(relative(name, inner)?)));
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
