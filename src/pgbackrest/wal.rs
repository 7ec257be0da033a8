//! `walden pgbackrest wal-fetch NAME DEST`, for `restore_command`: one
//! file of a pgBackRest WAL archive (spec §9.2), decoded by its extension
//! and, for segments, checked against the SHA-1 in its stored name. Exit
//! 74 when the archive has no such file, so that PostgreSQL ends recovery
//! there (WAL-G's own pgbackrest wal-fetch exits 1, which breaks that).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;

use super::codec::{self, Compress};
use super::repo::Repo;
use super::sha1::Sha1;
use super::PgbrError;
use crate::commands::positionals;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::localfile::AtomicFile;
use crate::storage::Entry;

const USAGE: &str = "walden pgbackrest wal-fetch NAME DEST";

pub fn run_fetch(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let values = positionals(args, USAGE, 2)?;
    let repo = super::open_repo(settings)?;
    fetch(&repo, &values[0], Path::new(&values[1]))
}

/// What kind of archive file a requested name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segment,
    Partial,
    /// `.backup` (in the 16-char subdirectory) and `.history` (in the
    /// archive-id directory): stored under their own name, no SHA-1.
    Named {
        in_subdir: bool,
    },
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn kind(name: &str) -> Option<Kind> {
    if is_hex(name, 24) {
        return Some(Kind::Segment);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return is_hex(seg, 24).then_some(Kind::Partial);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let ok = rest.len() == 33
            && is_hex(&rest[..24], 24)
            && &rest[24..25] == "."
            && is_hex(&rest[25..], 8);
        return ok.then_some(Kind::Named { in_subdir: true });
    }
    if let Some(tli) = name.strip_suffix(".history") {
        return is_hex(tli, 8).then_some(Kind::Named { in_subdir: false });
    }
    None
}

/// The archive object that holds `name`, if any, and the SHA-1 its name
/// promises.
struct Found {
    key: String,
    sha1: Option<String>,
    ext: String,
}

pub fn fetch(repo: &Repo, name: &str, dest: &Path) -> Result<()> {
    let kind = kind(name).ok_or_else(|| {
        Error::Usage(format!(
            "'{name}' is not a WAL segment, .partial, .backup or .history name; usage: {USAGE}"
        ))
    })?;
    let info = repo.archive_info()?;
    // The archive ids of the current cluster, newest first (spec §9.2).
    let ids: Vec<String> = info
        .history
        .iter()
        .filter(|(_, v, sys)| *v == info.db_version && *sys == info.system_id)
        .map(|(id, v, _)| format!("{v}-{id}"))
        .collect();
    for id in &ids {
        if let Some(found) = find(repo, id, name, kind)? {
            return download(repo, &found, info.cipher_pass.as_deref(), name, dest);
        }
    }
    Err(Error::WalNotFound(name.to_string()))
}

fn find(repo: &Repo, id: &str, name: &str, kind: Kind) -> Result<Option<Found>> {
    match kind {
        Kind::Named { in_subdir } => {
            let key = if in_subdir {
                repo.archive_key(&format!("{id}/{}/{name}", &name[..16]))
            } else {
                repo.archive_key(&format!("{id}/{name}"))
            };
            Ok(repo.storage.stat(&key)?.map(|_| Found {
                key,
                sha1: None,
                ext: String::new(),
            }))
        }
        Kind::Segment | Kind::Partial => {
            let prefix = repo.archive_key(&format!("{id}/{}/{name}-", &name[..16]));
            let mut matches: Vec<Found> = Vec::new();
            repo.storage.list(&prefix, false, &mut |entry| {
                if let Entry::Object(o) = entry {
                    let base = o.key.rsplit('/').next().unwrap_or(&o.key);
                    if let Some(rest) = base.strip_prefix(name).and_then(|r| r.strip_prefix('-')) {
                        let (sha, ext) = rest.split_once('.').unwrap_or((rest, ""));
                        let known_ext = matches!(ext, "" | "gz" | "lz4" | "zst" | "bz2" | "xz");
                        if is_hex(sha, 40) && known_ext {
                            matches.push(Found {
                                key: o.key.clone(),
                                sha1: Some(sha.to_ascii_lowercase()),
                                ext: ext.to_string(),
                            });
                        }
                    }
                }
                Ok(())
            })?;
            if let Some(first) = matches.first() {
                if matches.iter().any(|m| m.sha1 != first.sha1) {
                    let keys: Vec<&str> = matches.iter().map(|m| m.key.as_str()).collect();
                    return Err(Error::Other(format!(
                        "duplicate WAL {name} with different contents in archive {id}: {}; remove the wrong one (pgBackRest refuses this too)",
                        keys.join(", ")
                    )));
                }
            }
            Ok(matches.into_iter().next())
        }
    }
}

/// `pass` is archive.info's cipher-pass, when the repository is encrypted.
fn download(repo: &Repo, found: &Found, pass: Option<&str>, name: &str, dest: &Path) -> Result<()> {
    let compress = Compress::from_extension(&found.ext).ok_or_else(|| PgbrError::Unsupported {
        what: found.key.clone(),
        problem: format!(
            "compressed with {}, which pgBackRest reserves and walden does not read",
            found.ext
        ),
    })?;
    let source = repo.storage.get(&found.key, 0)?;
    let read_err = |e: std::io::Error| PgbrError::Read {
        what: found.key.clone(),
        problem: format!("{e} (truncated or damaged file?)"),
    };
    let mut reader = codec::open(source, pass, compress).map_err(read_err)?;
    let mut out = AtomicFile::create(dest)
        .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
    let mut hash = Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PgbrError::Read {
                    what: found.key.clone(),
                    problem: format!("{e} (truncated or damaged file?)"),
                }
                .into())
            }
        };
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    }
    if let Some(want) = &found.sha1 {
        let got = hash.hex();
        if &got != want {
            // `out` is dropped unpublished: DEST is not created.
            return Err(PgbrError::Format {
                what: found.key.clone(),
                problem: format!(
                    "its content hashes to {got}, not the SHA-1 in its name: the stored file is damaged; {name} was not written"
                ),
            }
            .into());
        }
    }
    out.commit()
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    log::info!("{name} fetched from {}", found.key);
    Ok(())
}
