//! `walden copy --from CFG --to CFG [--backup-name NAME|LATEST]
//! [--without-history]`: raw objects from one storage to another (spec
//! walg-wal-admin §9.4), each storage described by its own config file.
//! Data first, then each backup's `metadata.json`, then the sentinels
//! (bases before their deltas), so a backup shows at the destination only
//! once all of it is there; objects the destination has with the same
//! size are skipped, so a rerun finishes an interrupted copy.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backup::layout;
use crate::commands::{open_storage, upload_concurrency};
use crate::config::{unsupported, Settings};
use crate::copy::select;
use crate::copy::transfer::{Held, Pick, Transfer};
use crate::error::{Error, Result};
use crate::progress::human_bytes;
use crate::storage::capped::Capped;
use crate::storage::Storage;
use crate::wal::object::WAL_FOLDER;
use crate::wal::segment_size_mb;

const USAGE: &str =
    "walden copy --from CONFIG --to CONFIG [--backup-name NAME|LATEST] [--without-history]";

/// Objects copied at once unless WALG_UPLOAD_CONCURRENCY says otherwise
/// (WAL-G's copy runs 8).
const DEFAULT_WORKERS: usize = 8;

struct Options {
    from: PathBuf,
    to: PathBuf,
    backup: Option<String>,
    without_history: bool,
    workers: usize,
    wal_size_mb: u64,
}

impl Options {
    fn parse(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
        use lexopt::prelude::*;
        let usage = |what: String| Error::Usage(format!("{what}; usage: {USAGE}"));
        let mut parser = lexopt::Parser::from_args(args);
        let (mut from, mut to, mut backup, mut without_history) = (None, None, None, false);
        while let Some(arg) = parser.next()? {
            match arg {
                Short('f') | Long("from") => from = Some(PathBuf::from(parser.value()?)),
                Short('t') | Long("to") => to = Some(PathBuf::from(parser.value()?)),
                Short('b') | Long("backup-name") => {
                    let v = parser
                        .value()?
                        .into_string()
                        .map_err(|_| usage("--backup-name needs a UTF-8 value".to_string()))?;
                    backup = Some(v);
                }
                Short('w') | Long("without-history") => without_history = true,
                _ => return Err(usage(arg.unexpected().to_string())),
            }
        }
        let from = from.ok_or_else(|| usage("--from CONFIG is required".into()))?;
        let to = to.ok_or_else(|| usage("--to CONFIG is required".into()))?;
        if without_history && backup.is_none() {
            return Err(usage(
                "--without-history applies to one backup: give --backup-name too".into(),
            ));
        }
        let workers = match settings.origin("WALG_UPLOAD_CONCURRENCY") {
            Some(_) => upload_concurrency(settings)?,
            None => DEFAULT_WORKERS,
        };
        Ok(Options {
            from,
            to,
            backup,
            without_history,
            workers,
            wal_size_mb: segment_size_mb(settings)?,
        })
    }
}

/// The storage a `--from`/`--to` file describes.
fn storage_of(flag: &str, path: &Path) -> Result<Arc<dyn Storage>> {
    let settings = Settings::load_storage_file(path.to_path_buf())?;
    unsupported::check(&settings)?;
    open_storage(&settings)
        .map_err(|e| Error::Other(format!("the storage of {flag} {}: {e}", path.display())))
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let o = Options::parse(settings, args)?;
    let src = storage_of("--from", &o.from)?;
    let dst = storage_of("--to", &o.to)?;
    src.verify_root()?;
    let same_service =
        src.copy_source("", 0).map(|c| c.service) == dst.copy_source("", 0).map(|c| c.service);
    if same_service && src.location() == dst.location() {
        return Err(Error::Usage(format!(
            "--from and --to both name {}: nothing to copy",
            src.location()
        )));
    }
    log::info!("Copying from {} to {}", src.location(), dst.location());
    // One part buffer per object in flight: the parallelism is across
    // objects.
    let dst: Arc<dyn Storage> = Arc::new(Capped::new(dst, 1));
    let transfer = Transfer::new(src.clone(), dst, o.workers);
    let result = match &o.backup {
        None => copy_everything(&transfer),
        Some(wanted) => {
            let selection = select::backup(&src, wanted, !o.without_history, o.wal_size_mb, USAGE)?;
            copy_backup(&transfer, &selection)
        }
    };
    transfer.finish();
    result?;
    let s = &transfer.stats;
    log::info!(
        "Copied {} objects ({}), {} of them server-side; {} already at the destination were skipped",
        s.copied.load(Ordering::Relaxed),
        human_bytes(s.bytes.load(Ordering::Relaxed)),
        s.server_side.load(Ordering::Relaxed),
        s.skipped.load(Ordering::Relaxed)
    );
    log::info!("Success copy.");
    Ok(())
}

/// A sentinel: `basebackups_005/NAME_backup_stop_sentinel.json`.
fn is_sentinel(key: &str) -> bool {
    key.strip_prefix(layout::BASEBACKUPS)
        .is_some_and(|rest| !rest.contains('/') && rest.ends_with(layout::SENTINEL_SUFFIX))
}

/// A backup's `basebackups_005/NAME/metadata.json`.
fn is_metadata(key: &str) -> bool {
    key.strip_prefix(layout::BASEBACKUPS)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, inside)| inside == "metadata.json")
}

/// Every object; the sentinels and metadata.json held to the end, the
/// sentinels then written in name order (a delta's base is older, so its
/// name sorts first).
fn copy_everything(transfer: &Transfer) -> Result<()> {
    let mut held = Vec::new();
    transfer.copy_listing(
        "",
        &mut |key| {
            if is_sentinel(key) || is_metadata(key) {
                Pick::Later
            } else {
                Pick::Copy
            }
        },
        &mut held,
    )?;
    let (sentinels, metadata): (Vec<Held>, Vec<Held>) =
        held.into_iter().partition(|h| is_sentinel(&h.object.key));
    transfer.copy_held(metadata, true)?;
    transfer.copy_held(sentinels, false)
}

/// One backup chain: its WAL, its objects, metadata, sentinels.
fn copy_backup(transfer: &Transfer, selection: &select::Selection) -> Result<()> {
    let mut held = Vec::new();
    transfer.copy_listing(
        WAL_FOLDER,
        &mut |key| {
            let base = key.strip_prefix(WAL_FOLDER).unwrap_or(key);
            if !base.contains('/') && selection.wants_wal(base) {
                Pick::Copy
            } else {
                Pick::Skip
            }
        },
        &mut held,
    )?;
    for name in &selection.chain {
        transfer.copy_listing(
            &format!("{}{name}/", layout::BASEBACKUPS),
            &mut |key| {
                if is_metadata(key) {
                    Pick::Later
                } else if selection.in_chain(key) {
                    Pick::Copy
                } else {
                    Pick::Skip
                }
            },
            &mut held,
        )?;
    }
    transfer.copy_held(std::mem::take(&mut held), true)?;
    // The sentinels, bases first, each listed on its own (one key).
    for name in &selection.chain {
        let key = layout::sentinel_key(name);
        transfer.copy_listing(
            &key,
            &mut |k| if k == key { Pick::Later } else { Pick::Skip },
            &mut held,
        )?;
        transfer.copy_held(std::mem::take(&mut held), false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_and_metadata_are_told_apart() {
        assert!(is_sentinel(
            "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json"
        ));
        assert!(!is_sentinel(
            "basebackups_005/base_000000010000000000000002/x_backup_stop_sentinel.json"
        ));
        assert!(is_metadata(
            "basebackups_005/base_000000010000000000000002/metadata.json"
        ));
        assert!(!is_metadata(
            "basebackups_005/base_000000010000000000000002/tar_partitions/metadata.json"
        ));
        assert!(!is_metadata("wal_005/metadata.json"));
    }
}
