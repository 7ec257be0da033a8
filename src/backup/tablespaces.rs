//! Tablespaces in a backup (spec §1.5, §3.4): the sentinel's `Spec` that
//! backup-push writes, and where backup-fetch puts each tablespace.
//!
//! A restore never writes outside DEST or the tablespace directories it
//! was told about: each location must be absolute, free of `..`, outside
//! DEST and the other locations, and absent or empty; the links in
//! `DEST/pg_tblspc` are made by walden, never taken from a tar; and the
//! members `/pg_tblspc/<oid>/...` are extracted below the location with the
//! same checks as any member below DEST.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::sentinel::string;
use super::walk::Tablespace;
use crate::error::{Error, Result};

/// The spec JSON as WAL-G's `TablespaceSpec.MarshalJSON` writes it: a Go
/// map, so keys sorted bytewise (OIDs before `base_prefix`), each
/// location `{"loc":…,"link":"pg_tblspc/<oid>"}` in struct order; `None`
/// without tablespaces (the sentinel then has no `Spec`).
pub fn spec_json(pgdata: &Path, tablespaces: &[Tablespace]) -> Option<String> {
    if tablespaces.is_empty() {
        return None;
    }
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    for t in tablespaces {
        keys.insert(
            &t.name,
            format!(
                "{{\"loc\":{},\"link\":{}}}",
                string(&t.location.to_string_lossy()),
                string(&format!("pg_tblspc/{}", t.name))
            ),
        );
    }
    let prefix = pgdata.to_string_lossy();
    keys.insert(
        "base_prefix",
        string(prefix.trim_end_matches('/')).to_string(),
    );
    let names: Vec<String> = tablespaces.iter().map(|t| string(&t.name)).collect();
    keys.insert("tablespaces", format!("[{}]", names.join(",")));
    let body: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{}:{v}", string(k)))
        .collect();
    Some(format!("{{{}}}", body.join(",")))
}

/// Where each tablespace of the backup goes.
#[derive(Debug, Default)]
pub struct Plan {
    links: Vec<Tablespace>,
    /// Whether the backup's `tablespace_map` is left out: whenever walden
    /// makes the links itself. With `--restore-spec` the map would point
    /// them back at the old locations (WAL-G leaves it out there too);
    /// without, it could point them anywhere, unchecked.
    skip_map: bool,
}

/// Where one member of a data tar goes.
pub enum Route<'a> {
    /// Below DEST, as it is named.
    Dest,
    /// Not restored.
    Skip,
    /// Below a tablespace's directory: `root/rel`.
    Tablespace { root: &'a Path, rel: &'a Path },
}

impl Plan {
    /// Where the tablespaces are restored to: each is synced with DEST
    /// before `pg_control` arrives (they may be other file systems).
    pub fn locations(&self) -> impl Iterator<Item = &Path> {
        self.links.iter().map(|t| t.location.as_path())
    }

    /// The backup's tablespaces (its sentinel's `Spec`), placed where
    /// `restore_spec` says, else where they were. Everything is checked
    /// here, before DEST or any location is touched.
    pub fn new(sentinel: &Value, restore_spec: Option<&Path>, dest: &Path) -> Result<Plan> {
        let recorded = match spec_of(sentinel) {
            Some(v) => parse(v).map_err(|e| {
                Error::Other(format!(
                    "the backup's tablespace spec (sentinel key Spec) is invalid: {e}"
                ))
            })?,
            None => Parsed::default(),
        };
        let dest_abs = absolute(dest)?;
        let (links, skip_map) = match restore_spec {
            // walden makes each link from the checked Spec; the backup's
            // tablespace_map, which PostgreSQL would follow instead, is
            // not checked, so it is left out. Without a Spec it is kept.
            None => {
                let skip_map = !recorded.links.is_empty();
                (recorded.links, skip_map)
            }
            Some(file) => {
                let text = fs::read(file).map_err(|e| {
                    Error::io(format!("reading the restore spec '{}'", file.display()), e)
                })?;
                let wanted = serde_json::from_slice::<Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| parse(&v))
                    .map_err(|e| {
                        Error::Usage(format!(
                            "the restore spec '{}' is invalid: {e}; it is the JSON of a sentinel's Spec, \
                             e.g. {{\"16390\":{{\"loc\":\"/mnt/ts1\",\"link\":\"pg_tblspc/16390\"}},\
                             \"base_prefix\":\"/var/lib/postgresql/data\",\"tablespaces\":[\"16390\"]}}",
                            file.display()
                        ))
                    })?;
                let base = wanted.base_prefix.clone().unwrap_or_default();
                if !same_dir(&base, &dest_abs) {
                    return Err(Error::Usage(format!(
                        "the restore spec's base_prefix '{}' is not the destination '{}': walden makes the \
                         tablespace links in the destination; set base_prefix to it",
                        base.display(),
                        dest_abs.display()
                    )));
                }
                let names = |p: &Parsed| -> Vec<String> {
                    let mut n: Vec<String> = p.links.iter().map(|t| t.name.clone()).collect();
                    n.sort();
                    n
                };
                if names(&wanted) != names(&recorded) {
                    return Err(Error::Usage(format!(
                        "the restore spec '{}' places tablespaces [{}] but the backup has [{}]; \
                         give a location for each of the backup's tablespaces and no others",
                        file.display(),
                        names(&wanted).join(", "),
                        names(&recorded).join(", ")
                    )));
                }
                (wanted.links, true)
            }
        };
        let plan = Plan { links, skip_map };
        plan.check(&dest_abs)?;
        Ok(plan)
    }

    /// Locations apart from DEST and from each other, and free to use.
    fn check(&self, dest: &Path) -> Result<()> {
        check_locations(&self.links, dest, "--restore-spec FILE")
    }

    /// Catch-up onto an existing data directory: each tablespace's members
    /// go where the directory's own link points, and the backup's
    /// `tablespace_map` (the source's locations) is not written, so that
    /// PostgreSQL keeps the links it has.
    pub fn existing(links: Vec<Tablespace>) -> Plan {
        Plan {
            links,
            skip_map: true,
        }
    }

    /// Makes `DEST/pg_tblspc`, each location (0700, as PostgreSQL makes
    /// them) and the link to it. DEST exists and is empty.
    pub fn create(&self, dest: &Path) -> Result<()> {
        if self.links.is_empty() {
            return Ok(());
        }
        self.check(dest)?;
        let dir = dest.join("pg_tblspc");
        mkdir(&dir, false)?;
        for t in &self.links {
            mkdir(&t.location, true)?;
            let link = dir.join(&t.name);
            std::os::unix::fs::symlink(&t.location, &link).map_err(|e| {
                Error::io(
                    format!(
                        "linking '{}' to the tablespace directory '{}'",
                        link.display(),
                        t.location.display()
                    ),
                    e,
                )
            })?;
            log::info!(
                "Tablespace {} is restored into '{}'",
                t.name,
                t.location.display()
            );
        }
        Ok(())
    }

    /// Where the member at `rel` (relative to DEST, already checked to be
    /// a plain relative path) goes.
    pub fn route<'a>(&'a self, rel: &'a Path) -> Route<'a> {
        if self.skip_map && rel == Path::new("tablespace_map") {
            return Route::Skip;
        }
        let mut parts = rel.components();
        if parts.next() != Some(Component::Normal("pg_tblspc".as_ref())) {
            return Route::Dest;
        }
        let Some(Component::Normal(name)) = parts.next() else {
            return Route::Dest;
        };
        match self.links.iter().find(|t| t.name.as_str() == name) {
            Some(t) => Route::Tablespace {
                root: &t.location,
                rel: parts.as_path(),
            },
            None => Route::Dest,
        }
    }
}

/// The checks every restore makes on where tablespaces go (WAL-G's and
/// pgBackRest's), before anything is written: each location an absolute
/// path without `..`, not `/`, outside DEST and the other locations, and
/// absent or empty. `how` names the option that chooses locations.
pub fn check_locations(links: &[Tablespace], dest: &Path, how: &str) -> Result<()> {
    let dest = absolute(dest)?;
    for (i, t) in links.iter().enumerate() {
        let plain = t
            .location
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !t.location.is_absolute() || !plain || t.location.parent().is_none() {
            return Err(Error::Usage(format!(
                "tablespace {} would be restored to '{}', which is not an absolute directory path \
                 without '..'; choose a location ({how})",
                t.name,
                t.location.display()
            )));
        }
        if nested(&t.location, &dest) {
            return Err(Error::Usage(format!(
                "tablespace {} would be restored to '{}', which overlaps the destination '{}'; \
                 choose a location outside it ({how})",
                t.name,
                t.location.display(),
                dest.display()
            )));
        }
        if let Some(o) = links[..i].iter().find(|o| nested(&o.location, &t.location)) {
            return Err(Error::Usage(format!(
                "tablespaces {} and {} would be restored to overlapping directories '{}' and '{}'; \
                 give each its own ({how})",
                o.name,
                t.name,
                o.location.display(),
                t.location.display()
            )));
        }
        if !empty_or_absent(&t.location)? {
            return Err(Error::Usage(format!(
                "tablespace {} would be restored to '{}', which is not empty; restore it into a new or \
                 empty directory: remove what is there, or choose another location ({how})",
                t.name,
                t.location.display()
            )));
        }
    }
    Ok(())
}

#[derive(Default)]
struct Parsed {
    base_prefix: Option<PathBuf>,
    links: Vec<Tablespace>,
}

/// `Spec` (or WAL-E's `spec`), keys matched case-insensitively as WAL-G's
/// reader does.
fn spec_of(sentinel: &Value) -> Option<&Value> {
    sentinel
        .as_object()?
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("spec") && !v.is_null())
        .map(|(_, v)| v)
}

/// Reads a spec (§3.4) and checks what WAL-G takes on trust: names are
/// OIDs, links are `pg_tblspc/<name>`, locations absolute without `..`.
fn parse(v: &Value) -> std::result::Result<Parsed, String> {
    let obj = v.as_object().ok_or("it is not a JSON object")?;
    let base_prefix = match obj.get("base_prefix") {
        Some(Value::String(s)) => Some(PathBuf::from(s)),
        _ => return Err("base_prefix is not set".into()),
    };
    let names = match obj.get("tablespaces") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("tablespaces is not a list".into()),
    };
    let mut links: Vec<Tablespace> = Vec::new();
    for n in names {
        let name = n
            .as_str()
            .ok_or("tablespaces lists something other than a name")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "tablespace '{name}' is not named by an OID (digits)"
            ));
        }
        if links.iter().any(|t| t.name == name) {
            return Err(format!("tablespace {name} is listed twice"));
        }
        let entry = obj
            .get(name)
            .and_then(Value::as_object)
            .ok_or_else(|| format!("tablespace {name} has no entry {{\"loc\":…,\"link\":…}}"))?;
        let loc = entry
            .get("loc")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tablespace {name} has no loc"))?;
        let link = entry
            .get("link")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tablespace {name} has no link"))?;
        if link != format!("pg_tblspc/{name}") {
            return Err(format!(
                "tablespace {name} has link '{link}'; it must be 'pg_tblspc/{name}'"
            ));
        }
        let location = PathBuf::from(loc.trim_end_matches('/'));
        let plain = location
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !loc.starts_with('/') || !plain || location.parent().is_none() {
            return Err(format!(
                "tablespace {name} has loc '{loc}'; it must be an absolute directory path without '..' or '.'"
            ));
        }
        links.push(Tablespace {
            name: name.to_string(),
            location,
        });
    }
    Ok(Parsed { base_prefix, links })
}

/// `p` made absolute against the working directory and cleaned of `.`
/// and `..` by name (DEST may not exist yet).
fn absolute(p: &Path) -> Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("reading the working directory".to_string(), e))?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether `base` (from a restore spec) names the directory `dest`: by
/// name, or as the same directory once symlinks are resolved.
fn same_dir(base: &Path, dest: &Path) -> bool {
    let Ok(base_abs) = absolute(base) else {
        return false;
    };
    if base_abs == dest {
        return true;
    }
    matches!((base.canonicalize(), dest.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// One of `a`, `b` is, or is inside, the other; by name and, where they
/// exist, with symlinks resolved.
fn nested(a: &Path, b: &Path) -> bool {
    let by_name = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    if by_name(a, b) {
        return true;
    }
    let resolve = |p: &Path| {
        p.ancestors()
            .find_map(|anc| {
                let real = anc.canonicalize().ok()?;
                Some(real.join(p.strip_prefix(anc).ok()?))
            })
            .unwrap_or_else(|| p.to_path_buf())
    };
    by_name(&resolve(a), &resolve(b))
}

fn empty_or_absent(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(
            format!("checking the tablespace directory '{}'", dir.display()),
            e,
        )),
    }
}

fn mkdir(dir: &Path, parents: bool) -> Result<()> {
    match fs::DirBuilder::new()
        .recursive(parents)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(Error::io(format!("creating '{}'", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(name: &str, loc: &str) -> Tablespace {
        Tablespace {
            name: name.into(),
            location: loc.into(),
        }
    }

    #[test]
    fn spec_json_is_walgs() {
        assert_eq!(spec_json(Path::new("/data"), &[]), None);
        let s = spec_json(
            Path::new("/var/lib/postgresql/16/main"),
            &[ts("16390", "/mnt/ts1"), ts("16400", "/mnt/a&b")],
        )
        .unwrap();
        assert_eq!(
            s,
            "{\"16390\":{\"loc\":\"/mnt/ts1\",\"link\":\"pg_tblspc/16390\"},\
             \"16400\":{\"loc\":\"/mnt/a\\u0026b\",\"link\":\"pg_tblspc/16400\"},\
             \"base_prefix\":\"/var/lib/postgresql/16/main\",\"tablespaces\":[\"16390\",\"16400\"]}"
        );
        // And it reads back.
        let v: Value = serde_json::from_str(&s).unwrap();
        let p = parse(&v).unwrap();
        assert_eq!(p.links, [ts("16390", "/mnt/ts1"), ts("16400", "/mnt/a&b")]);
    }

    #[test]
    fn hostile_specs_are_refused() {
        for bad in [
            r#"{"tablespaces":["1"],"1":{"loc":"/x","link":"pg_tblspc/1"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["1"]}"#,
            r#"{"base_prefix":"/d","tablespaces":["1"],"1":{"loc":"x","link":"pg_tblspc/1"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["1"],"1":{"loc":"/a/../etc","link":"pg_tblspc/1"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["1"],"1":{"loc":"/","link":"pg_tblspc/1"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["1"],"1":{"loc":"/x","link":"../../etc"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["../1"],"../1":{"loc":"/x","link":"pg_tblspc/../1"}}"#,
            r#"{"base_prefix":"/d","tablespaces":["1","1"],"1":{"loc":"/x","link":"pg_tblspc/1"}}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(parse(&v).is_err(), "{bad}");
        }
    }

    #[test]
    fn members_are_routed() {
        let plan = Plan {
            links: vec![ts("16390", "/mnt/ts1")],
            skip_map: true,
        };
        match plan.route(Path::new("pg_tblspc/16390/PG_15_1/5/16400")) {
            Route::Tablespace { root, rel } => {
                assert_eq!(root, Path::new("/mnt/ts1"));
                assert_eq!(rel, Path::new("PG_15_1/5/16400"));
            }
            _ => panic!("not routed into the tablespace"),
        }
        assert!(matches!(
            plan.route(Path::new("pg_tblspc/16390")),
            Route::Tablespace { rel, .. } if rel.as_os_str().is_empty()
        ));
        assert!(matches!(
            plan.route(Path::new("pg_tblspc/99/x")),
            Route::Dest
        ));
        assert!(matches!(plan.route(Path::new("base/1/2")), Route::Dest));
        assert!(matches!(
            plan.route(Path::new("tablespace_map")),
            Route::Skip
        ));
    }

    #[test]
    fn overlaps_are_found() {
        assert!(nested(Path::new("/a/b"), Path::new("/a")));
        assert!(nested(Path::new("/a"), Path::new("/a/b/c")));
        assert!(!nested(Path::new("/a/b"), Path::new("/a/bc")));
        assert_eq!(
            absolute(Path::new("/x/./y/../z")).unwrap(),
            Path::new("/x/z")
        );
    }
}
