//! `walden backup-fetch DEST NAME|LATEST`: restore a base backup into a
//! new or empty directory (spec §9.1–§9.3, §9.6), and with a recovery
//! target or `--standby` set it up so that starting PostgreSQL is the
//! whole restore. The backup is chosen in `select`, the recovery settings
//! written by `recovery`, the tars extracted by `unpack`; this module
//! checks everything it can before DEST is touched and keeps the order
//! of writing (see [`restore`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::catalog;
use super::chain::{self, Chain};
use super::layout::{self, TarKind};
use super::partial;
use super::recovery::{self, Recovery};
use super::select::{self, Wanted};
use super::sentinel;
use super::tablespaces;
use super::unpack::{Unpacker, MAX_DOWNLOAD_CONCURRENCY};
use crate::commands::{codecs, open_storage};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::storage::{Entry, Storage};

const USAGE: &str = "walden backup-fetch DEST NAME|LATEST [--target-user-data JSON] \
[--recovery-target-time T | --recovery-target-lsn L | --recovery-target-name N | --recovery-target immediate] [--standby] \
[--restore-spec FILE] [--restore-only DB[,DB/TABLE,...]] [--reverse-unpack [--skip-redundant-tars]]";

/// Everything the command line and settings ask for, checked before
/// storage is opened or DEST touched.
struct Options {
    dest: PathBuf,
    wanted: Wanted,
    recovery: Recovery,
    fsync: bool,
    concurrency: usize,
    /// `--restore-spec FILE`: where tablespaces go (spec §3.4).
    restore_spec: Option<PathBuf>,
    /// `--restore-only`: a partial restore (spec §9.5, `partial.rs`).
    restore_only: Option<partial::Request>,
    /// How a delta backup's chain is composed.
    chain_mode: chain::Mode,
}

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let usage = |what: String| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut parser = lexopt::Parser::from_args(args);
    let mut positional: Vec<String> = Vec::new();
    let mut user_data_arg: Option<String> = None;
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut standby = false;
    let mut restore_spec: Option<PathBuf> = None;
    let mut restore_only: Vec<String> = Vec::new();
    let mut partial_asked = false;
    let mut reverse_unpack = false;
    let mut skip_redundant = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("target-user-data") => user_data_arg = Some(parser.value()?.string()?),
            Long(
                flag @ ("recovery-target-time"
                | "recovery-target-lsn"
                | "recovery-target-name"
                | "recovery-target"),
            ) => {
                let flag = flag.to_string();
                targets.push((flag, parser.value()?.string()?));
            }
            Long("standby") => standby = true,
            Long("restore-only") => {
                partial_asked = true;
                restore_only.push(parser.value()?.string()?);
            }
            Long("reverse-unpack") => reverse_unpack = true,
            Long("skip-redundant-tars") => skip_redundant = true,
            Long("restore-spec") if restore_spec.is_none() => {
                restore_spec = Some(PathBuf::from(parser.value()?));
            }
            Value(v) if positional.len() < 2 => positional.push(
                v.into_string()
                    .map_err(|_| usage("arguments must be UTF-8".into()))?,
            ),
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }
    let target = recovery::one_target(targets, usage)?;
    let (user_data_source, user_data_text) = match user_data_arg {
        Some(t) => ("--target-user-data", Some(t)),
        None => (
            "WALG_FETCH_TARGET_USER_DATA",
            settings.get_explicit("WALG_FETCH_TARGET_USER_DATA"),
        ),
    };
    let mut positional = positional.into_iter();
    let Some(dest) = positional.next() else {
        return Err(usage("DEST is missing".into()));
    };
    let wanted = match (positional.next(), user_data_text) {
        (Some(_), Some(_)) => {
            // WAL-G refuses both as well: they may name different backups.
            return Err(usage(format!(
                "{user_data_source} selects the backup: give DEST alone, without NAME or LATEST"
            )));
        }
        (None, Some(text)) => Wanted::UserData(sentinel::parse_user_data(&text).map_err(|e| {
            Error::Usage(format!(
                "{user_data_source} is not valid JSON ({e}); give a JSON value such as '{{\"k\":\"v\"}}'"
            ))
        })?),
        (Some(w), None) if w == "LATEST" => Wanted::Latest,
        (Some(w), None) => {
            if !layout::valid_name(&w) {
                return Err(usage(format!("'{w}' is not a backup name (base_...) or LATEST")));
            }
            Wanted::Name(w)
        }
        (None, None) => return Err(usage("NAME or LATEST is missing".into())),
    };
    let concurrency = settings.positive("WALG_DOWNLOAD_CONCURRENCY")?;
    if concurrency > MAX_DOWNLOAD_CONCURRENCY {
        return Err(ConfigError::Invalid {
            name: "WALG_DOWNLOAD_CONCURRENCY".into(),
            value: concurrency.to_string(),
            problem: format!("at most {MAX_DOWNLOAD_CONCURRENCY} downloads at once are allowed"),
        }
        .into());
    }
    let reverse_unpack = reverse_unpack || settings.bool("WALG_USE_REVERSE_UNPACK")?;
    let skip_redundant = skip_redundant || settings.bool("WALG_SKIP_REDUNDANT_TARS")?;
    let chain_mode = if reverse_unpack {
        chain::Mode::Reverse { skip_redundant }
    } else {
        if skip_redundant {
            // WAL-G ignores it too: forward restore writes every file of
            // the oldest backup first, so no tar is redundant before.
            log::warn!(
                "--skip-redundant-tars / WALG_SKIP_REDUNDANT_TARS takes effect only with --reverse-unpack / WALG_USE_REVERSE_UNPACK"
            );
        }
        chain::Mode::Forward
    };
    Ok(Options {
        chain_mode,
        dest: PathBuf::from(dest),
        wanted,
        recovery: Recovery { target, standby },
        fsync: !settings.bool("WALG_TAR_DISABLE_FSYNC")?,
        concurrency,
        restore_spec,
        restore_only: if partial_asked {
            Some(partial::Request::parse(&restore_only)?)
        } else {
            None
        },
    })
}

/// The recovery settings, ready to write: computed before DEST is touched.
fn recovery_lines(
    settings: &Settings,
    opts: &Options,
    name: &str,
    sentinel: &Value,
) -> Result<Option<String>> {
    if !opts.recovery.requested() {
        return Ok(None);
    }
    // recovery.signal and recovery settings in postgresql.conf came with
    // PostgreSQL 12; older servers read recovery.conf.
    if let Some(v) = sentinel.get("PgVersion").and_then(Value::as_i64) {
        if v > 0 && v < 120000 {
            return Err(Error::Usage(format!(
                "backup {name} is of PostgreSQL {v}, which reads its recovery settings from recovery.conf; \
                 walden writes them for PostgreSQL 12 and later: restore without a recovery target or --standby"
            )));
        }
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("finding the walden binary for restore_command", e))?;
    let config = recovery::config_file(settings)?;
    Ok(Some(recovery::conf_lines(
        &opts.recovery,
        &exe,
        config.as_deref(),
        name,
    )))
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = options(settings, args)?;
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;

    // Everything that can be checked is, before DEST is touched.
    let chosen = select::choose(&storage, &opts.wanted, opts.recovery.target.as_ref())?;
    let (name, sentinel) = (chosen.name, chosen.sentinel);
    let tablespaces = tablespaces::Plan::new(&sentinel, opts.restore_spec.as_deref(), &opts.dest)?;
    let chain = match sentinel.as_object() {
        Some(s) if catalog::delta_from(s).is_some() => Some(Chain::resolve(&storage, &name, s)?),
        _ => None,
    };
    // The newest backup's names say which paths belong to what was asked;
    // the same paths are taken from every older backup of a chain.
    let keep = match &opts.restore_only {
        Some(request) => Some(partial_filter(&storage, &name, request)?),
        None => None,
    };
    let lines = recovery_lines(settings, &opts, &name, &sentinel)?;
    let mut tars = tar_keys(&storage, &name)?;
    if chain.is_none() {
        // One read of the files metadata (a chain's links were read and
        // checked by Chain::resolve): every tar it names must be stored,
        // and a partial restore leaves out the tars holding nothing kept.
        // Only the names a partial restore keeps are held.
        let key = layout::files_metadata_key(&name);
        let kept = |n: &[u8]| {
            keep.as_ref()
                .is_some_and(|f| f.keeps(&String::from_utf8_lossy(n)))
        };
        if let Some(meta) = chain::read_files_metadata(&storage, &key, &kept)? {
            let named = meta.tar_sets.iter().flatten().map(|s| s.tar.as_str());
            require_named_tars("backup", &name, named, &tars)?;
            if keep.is_some() {
                tars = super::partial_tars::needed(&name, meta, tars);
            }
        }
    }
    let dest = prepare_dest(&opts.dest)?;
    tablespaces.create(&dest)?;
    log::info!("Restoring backup {name} into '{}'", dest.display());

    // Counted in tar bytes, which is what UncompressedSize counts.
    // A chain's tars are more than the newest backup's, and some are not
    // downloaded: no total for it.
    let total = match chain {
        Some(_) => None,
        None => sentinel.get("UncompressedSize").and_then(Value::as_u64),
    };
    let progress = Progress::new(&format!("backup-fetch {name}"), total);
    let unpacker = Unpacker {
        storage: &storage,
        codecs: &codecs,
        dest: &dest,
        writeback: opts.fsync,
        tablespaces: &tablespaces,
        progress: &progress,
        keep: keep.as_ref(),
        policy: None,
    };
    restore(&unpacker, &opts, tars, lines.as_deref(), chain.as_ref()).map_err(|e| {
        Error::Other(format!(
            "{e}\nhint: '{}' is incomplete; remove it before trying again",
            dest.display()
        ))
    })?;
    progress.finish();
    log::info!("Backup {name} restored into '{}'", dest.display());
    if lines.is_some() {
        recovery::report(settings, &opts.recovery, &dest);
    }
    Ok(())
}

/// The partial-restore filter of backup `name`, or why there is none.
fn partial_filter(
    storage: &Arc<dyn Storage>,
    name: &str,
    request: &partial::Request,
) -> Result<partial::Filter> {
    let names = partial::Names::read(storage, name)?.ok_or_else(|| {
        Error::Other(format!(
            "--restore-only needs the database names that backup-push stores in files_metadata.json, and backup {name} \
             has none (taken over the replication protocol, with --without-files-metadata or \
             WALG_DISABLE_PARTIAL_RESTORE=true, or by an old WAL-G); restore it whole"
        ))
    })?;
    log::info!("Partial restore of {}", request.describe());
    partial::Filter::new(request, &names, name, true)
}

/// The restore order, chosen so that no interrupted restore can start:
/// data tars (in parallel), then `backup_label` (without it PostgreSQL
/// would take the copy for a crashed primary), then the recovery settings
/// and signal file, then a sync of DEST's filesystem, and only then
/// `pg_control`, written under a temp name and renamed. Until that rename
/// there is no `global/pg_control` and PostgreSQL refuses to start.
fn restore(
    unpacker: &Unpacker,
    opts: &Options,
    tars: Vec<(TarKind, String)>,
    recovery_lines: Option<&str>,
    chain: Option<&Chain>,
) -> Result<()> {
    let dest = unpacker.dest;
    let data: Vec<String> = tars
        .iter()
        .filter(|(k, _)| *k == TarKind::Data)
        .map(|(_, key)| key.clone())
        .collect();
    match chain {
        Some(chain) => chain.restore_data(unpacker, opts.concurrency, opts.chain_mode)?,
        None => unpacker.parallel(&data, opts.concurrency)?,
    }
    for (_, key) in tars.iter().filter(|(k, _)| *k == TarKind::Label) {
        unpacker.one(key, false)?;
    }
    if let Some(lines) = recovery_lines {
        recovery::write(dest, &opts.recovery, lines)?;
    }
    if opts.fsync {
        sync_filesystem(dest)?;
        for location in unpacker.tablespaces.locations() {
            sync_filesystem(location)?;
        }
    }
    for (_, key) in tars.iter().filter(|(k, _)| *k == TarKind::Control) {
        unpacker.one(key, true)?;
    }
    Ok(())
}

/// Everything written so far, files and directory entries, reaches the
/// disk before `pg_control` does: one `syncfs` per file system instead of
/// an fsync per file.
pub(crate) fn sync_filesystem(dest: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir =
        fs::File::open(dest).map_err(|e| Error::io(format!("opening '{}'", dest.display()), e))?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io(
            format!("syncing the filesystem of '{}'", dest.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The tars of the backup in restore order: data tars (by number), then
/// the backup_label tar, then pg_control's.
fn tar_keys(storage: &Arc<dyn Storage>, name: &str) -> Result<Vec<(TarKind, String)>> {
    let tars = list_tars(storage, name)?;
    if !tars.iter().any(|(k, _)| *k == TarKind::Control) {
        return Err(Error::Other(format!(
            "backup {name} has no pg_control tar under '{}'; it is incomplete or damaged and cannot be restored",
            layout::partitions_prefix(name)
        )));
    }
    Ok(tars)
}

/// Every tar that backup `name`'s files metadata names (`named`) must be
/// in storage (`stored`, as [`list_tars`] gives them): restoring without
/// one would leave its files out without a word. Checked before anything
/// is written.
pub(crate) fn require_named_tars<'n>(
    what: &str,
    name: &str,
    named: impl IntoIterator<Item = &'n str>,
    stored: &[(TarKind, String)],
) -> Result<()> {
    let mut named = named.into_iter();
    match named.find(|tar| {
        !stored
            .iter()
            .any(|(_, key)| key.rsplit('/').next() == Some(tar))
    }) {
        Some(tar) => Err(Error::Other(format!(
            "{what} {name} names tar '{tar}' in its files metadata, but storage does not hold it; \
             the {what} is incomplete or damaged and nothing of it was written"
        ))),
        None => Ok(()),
    }
}

/// Every tar of backup `name`, in restore order.
pub(crate) fn list_tars(storage: &Arc<dyn Storage>, name: &str) -> Result<Vec<(TarKind, String)>> {
    let prefix = layout::partitions_prefix(name);
    let mut tars = Vec::new();
    storage.list(&prefix, false, &mut |e| {
        if let Entry::Object(o) = e {
            let base = o.key.rsplit('/').next().unwrap_or(&o.key);
            tars.push((layout::tar_kind(base), numbered(base), o.key));
        }
        Ok(())
    })?;
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
