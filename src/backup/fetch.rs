//! `walden backup-fetch DEST NAME|LATEST`: restore a base backup into a
//! new or empty directory (spec §9.1–§9.3, §9.6). Data tars first, then
//! `backup_label.tar`, then `pg_control.tar` last, so that a restore cut
//! short never leaves a pg_control PostgreSQL could start from.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::extract::Extractor;
use super::layout::{self, TarKind};
use super::sentinel;
use super::tablespaces;
use crate::commands::{codecs, open_storage, positionals};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::{Entry, Storage};

const USAGE: &str = "walden backup-fetch DEST NAME|LATEST [--restore-spec FILE]";

/// A sentinel is a few hundred bytes; anything this large is not one.
const MAX_SENTINEL: u64 = 16 << 20;

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let (restore_spec, args) = tablespaces::take_restore_spec(args)?;
    let mut values = positionals(args, USAGE, 2)?.into_iter();
    let (Some(dest), Some(wanted)) = (values.next(), values.next()) else {
        return Err(Error::Usage(format!("usage: {USAGE}")));
    };
    // Selecting by user data picks a different backup than NAME/LATEST:
    // ignoring the setting would restore the wrong one.
    if let Some(v) = settings.get_explicit("WALG_FETCH_TARGET_USER_DATA") {
        return Err(Error::Other(format!(
            "WALG_FETCH_TARGET_USER_DATA is set ('{v}') but selecting a backup by user data is not built yet in walden; \
             unset it and give the backup's name"
        )));
    }
    let dest = PathBuf::from(dest);
    let fsync = !settings.bool("WALG_TAR_DISABLE_FSYNC")?;
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;

    // Everything that can be checked is, before DEST is touched.
    let name = resolve(&storage, &wanted)?;
    let sentinel = read_sentinel(&storage, &name)?;
    let tablespaces = tablespaces::Plan::new(&sentinel, restore_spec.as_deref(), &dest)?;
    if let Some(base) = sentinel::delta_from(&sentinel) {
        return Err(Error::Other(format!(
            "backup {name} is a delta backup (taken against {base}), and restoring delta backups is not built yet in walden; \
             restore it with WAL-G for now"
        )));
    }
    let tars = tar_keys(&storage, &name)?;
    let dest = prepare_dest(&dest)?;
    tablespaces.create(&dest)?;
    log::info!("Restoring backup {name} into '{}'", dest.display());

    for (_, key) in &tars {
        let raw = storage.get(key, 0)?;
        let base = key.rsplit('/').next().unwrap_or(key);
        let source = codecs.reader(raw, base, true, true)?;
        Extractor {
            dest: &dest,
            fsync,
            key,
            tablespaces: &tablespaces,
        }
        .extract(source)
        .map_err(|e| {
            Error::Other(format!(
                "{e}\nhint: '{}' is incomplete; remove it before trying again",
                dest.display()
            ))
        })?;
        log::debug!("extracted '{key}'");
    }
    log::info!("Backup {name} restored into '{}'", dest.display());
    Ok(())
}

/// `LATEST` is the backup whose sentinel was stored last (WAL-G orders by
/// the storage's modification time, spec §9.1); a name must have its
/// sentinel: a backup without one was never finished.
fn resolve(storage: &Arc<dyn Storage>, wanted: &str) -> Result<String> {
    if wanted == "LATEST" {
        let mut newest: Option<(SystemTime, String)> = None;
        storage.list(layout::BASEBACKUPS, false, &mut |e| {
            if let Entry::Object(o) = e {
                let base = o.key.strip_prefix(layout::BASEBACKUPS).unwrap_or("");
                if let Some(name) = base.strip_suffix(layout::SENTINEL_SUFFIX) {
                    let t = o.modified.unwrap_or(SystemTime::UNIX_EPOCH);
                    // `>=`: among equal times the later listed wins, as
                    // WAL-G's stable sort then "take the last" does.
                    if layout::valid_name(name) && newest.as_ref().is_none_or(|(n, _)| t >= *n) {
                        newest = Some((t, name.to_string()));
                    }
                }
            }
            Ok(())
        })?;
        return newest.map(|(_, n)| n).ok_or_else(|| {
            Error::Other(format!(
                "no backups found in {}: there is no finished backup (sentinel) under {}",
                storage.location(),
                layout::BASEBACKUPS
            ))
        });
    }
    if !layout::valid_name(wanted) {
        return Err(Error::Usage(format!(
            "'{wanted}' is not a backup name (base_...) or LATEST; usage: {USAGE}"
        )));
    }
    match storage.stat(&layout::sentinel_key(wanted))? {
        Some(_) => Ok(wanted.to_string()),
        None => Err(Error::Other(format!(
            "backup {wanted} not found in {}: it has no sentinel '{}' (an unfinished backup has none)",
            storage.location(),
            layout::sentinel_key(wanted)
        ))),
    }
}

fn read_sentinel(storage: &Arc<dyn Storage>, name: &str) -> Result<Value> {
    let key = layout::sentinel_key(name);
    let mut text = Vec::new();
    storage
        .get(&key, 0)?
        .take(MAX_SENTINEL)
        .read_to_end(&mut text)
        .map_err(|e| Error::Other(format!("reading '{key}': {e}")))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Other(format!("the sentinel '{key}' is not valid JSON: {e}")))
}

/// The tars of the backup in restore order: data tars (by number), then
/// the backup_label tar, then pg_control's.
fn tar_keys(storage: &Arc<dyn Storage>, name: &str) -> Result<Vec<(TarKind, String)>> {
    let prefix = layout::partitions_prefix(name);
    let mut tars = Vec::new();
    storage.list(&prefix, false, &mut |e| {
        if let Entry::Object(o) = e {
            let base = o.key.rsplit('/').next().unwrap_or(&o.key);
            tars.push((layout::tar_kind(base), numbered(base), o.key));
        }
        Ok(())
    })?;
    if !tars.iter().any(|(k, _, _)| *k == TarKind::Control) {
        return Err(Error::Other(format!(
            "backup {name} has no pg_control tar under '{prefix}'; it is incomplete or damaged and cannot be restored"
        )));
    }
    tars.sort();
    Ok(tars.into_iter().map(|(k, _, key)| (k, key)).collect())
}

/// `part_10` after `part_9`: the number, for sorting.
fn numbered(base: &str) -> u64 {
    base.strip_prefix("part_")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// DEST must not exist, or be an empty directory: restoring over files
/// would mix two data directories. A new DEST is made 0700, the mode
/// PostgreSQL demands of a data directory.
fn prepare_dest(dest: &Path) -> Result<PathBuf> {
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut it = fs::read_dir(dest)
                .map_err(|e| Error::io(format!("reading '{}'", dest.display()), e))?;
            if it.next().is_some() {
                return Err(Error::Usage(format!(
                    "the destination '{}' is not empty; restore into a new or empty directory",
                    dest.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::Usage(format!(
                "the destination '{}' exists and is not a directory",
                dest.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dest)
                .map_err(|e| Error::io(format!("creating '{}'", dest.display()), e))?;
        }
        Err(e) => return Err(Error::io(format!("checking '{}'", dest.display()), e)),
    }
    dest.canonicalize()
        .map_err(|e| Error::io(format!("resolving '{}'", dest.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_sort_by_number() {
        assert_eq!(numbered("part_010.tar.lz4"), 10);
        assert_eq!(numbered("part_1000.tar"), 1000);
        assert_eq!(numbered("pg_control.tar"), 0);
    }
}
