//! `walden catchup-fetch PGDATA NAME|LATEST` (spec §11.2): a catch-up
//! applied onto the stopped replica's data directory.
//!
//! Order, so that an interrupted catch-up can never be started as a
//! PostgreSQL cluster: everything is checked first (the replica is
//! stopped, is a copy of the same cluster, and is not behind the
//! catch-up's `--from-lsn`); then `global/pg_control` is moved aside
//! (`pg_control.walden-catchup`, read again by a retry), so PostgreSQL
//! refuses to start the half-updated directory; the data tars are applied
//! (increments patched in place, other files replaced, files new on the
//! primary created); files and directories the primary no longer has are
//! removed (WAL-G leaves them); `backup_label` is written, the file
//! systems synced, and the primary's `pg_control` written last under a
//! temp name and renamed.
//!
//! The replica keeps its own `postgresql.conf`, `postgresql.auto.conf`,
//! `pg_hba.conf`, `standby.signal` and tablespace links (catch-up never
//! stores the first three, nor `tablespace_map` is written).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::control::Control;
use super::folder::{catchup_view, CATCHUPS};
use crate::backup::catalog;
use crate::backup::chain::increment::{self, IncrementError, PAGE};
use crate::backup::extract::{Decision, Member, MemberPolicy};
use crate::backup::layout::{self, TarKind};
use crate::backup::metadata_read::{self, FileSet, INCREMENTED};
use crate::backup::tablespaces;
use crate::backup::unpack::{Unpacker, MAX_DOWNLOAD_CONCURRENCY};
use crate::backup::walk::{self, Kind, Tablespace};
use crate::commands::{codecs, open_storage};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::storage::Storage;

const USAGE: &str = "walden catchup-fetch PGDATA NAME|LATEST [--use-new-unwrap]";

/// Where the replica's own `pg_control` waits while the catch-up is
/// applied: PostgreSQL does not start without `global/pg_control`.
pub(super) const PARKED: &str = "global/pg_control.walden-catchup";

struct Options {
    pgdata: PathBuf,
    /// `None`: LATEST.
    name: Option<String>,
    fsync: bool,
    concurrency: usize,
}

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let usage = |what: String| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut parser = lexopt::Parser::from_args(args);
    let mut positional: Vec<OsString> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            // WAL-G's second unwrap implementation: the result is the same.
            Long("use-new-unwrap") => {}
            Value(v) if positional.len() < 2 => positional.push(v),
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }
    let mut it = positional.into_iter();
    let (Some(dir), Some(name)) = (it.next(), it.next()) else {
        return Err(usage("PGDATA and NAME (or LATEST) are needed".into()));
    };
    let name = name
        .into_string()
        .map_err(|_| usage("NAME must be UTF-8".into()))?;
    let name = if name == "LATEST" {
        None
    } else if layout::valid_name(&name) {
        Some(name)
    } else {
        return Err(usage(format!(
            "'{name}' is not a backup name (base_...) or LATEST"
        )));
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
    Ok(Options {
        pgdata: PathBuf::from(dir),
        name,
        fsync: !settings.bool("WALG_TAR_DISABLE_FSYNC")?,
        concurrency,
    })
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = options(settings, args)?;
    let storage = catchup_view(open_storage(settings)?);
    let codecs = codecs(settings)?;
    let pgdata = opts
        .pgdata
        .canonicalize()
        .map_err(|e| Error::io(format!("the data directory '{}'", opts.pgdata.display()), e))?;
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::Usage(format!(
            "'{}' is not a PostgreSQL data directory (it has no PG_VERSION); catchup-fetch updates an \
             existing replica, for a new copy use backup-fetch",
            pgdata.display()
        )));
    }
    check_stopped(&pgdata)?;

    // Everything that can be checked is, before the replica is touched.
    let name = match opts.name {
        Some(n) => {
            if storage.stat(&layout::sentinel_key(&n))?.is_none() {
                return Err(Error::Other(format!(
                    "catch-up backup '{n}' does not exist in {} (no sentinel under {CATCHUPS}); \
                     'walden catchup-list' shows the catch-up backups",
                    storage.location()
                )));
            }
            n
        }
        None => {
            catalog::latest(&storage)?
                .ok_or_else(|| {
                    Error::Other(format!(
                        "there is no catch-up backup in {} (no sentinel under {CATCHUPS}); take one with \
                         catchup-push on the primary",
                        storage.location()
                    ))
                })?
                .name
        }
    };
    let sentinel = catalog::read_sentinel(&storage, &name)?;
    let replica = read_control(&pgdata)?;
    check_fits(&name, &sentinel, &replica, &pgdata)?;
    let Listed { files, tars: named } = require_files(&name, read_files(&storage, &name)?)?;
    let plan = tablespace_plan(&pgdata, &sentinel, &name)?;
    let tars = crate::backup::fetch::list_tars(&storage, &name)?;
    if !tars.iter().any(|(k, _)| *k == TarKind::Control) {
        return Err(Error::Other(format!(
            "catch-up backup {name} has no pg_control tar; it is incomplete or damaged"
        )));
    }
    require_tars(&name, named.as_deref(), &tars)?;

    log::info!(
        "Applying catch-up backup {name} to '{}' (the replica's checkpoint is at {}, the catch-up holds \
         changes from {})",
        pgdata.display(),
        catalog::lsn_text(replica.checkpoint),
        catalog::lsn_text(delta_lsn(&sentinel).unwrap_or(0)),
    );
    park_control(&pgdata)?;

    let total = sentinel.get("UncompressedSize").and_then(Value::as_u64);
    let progress = Progress::new(&format!("catchup-fetch {name}"), total);
    let policy = CatchupPolicy {
        files: &files,
        name: &name,
    };
    let unpacker = Unpacker {
        storage: &storage,
        codecs: &codecs,
        dest: &pgdata,
        writeback: opts.fsync,
        tablespaces: &plan,
        progress: &progress,
        keep: None,
        policy: Some(&policy),
    };
    let data: Vec<String> = tars
        .iter()
        .filter(|(k, _)| *k == TarKind::Data)
        .map(|(_, key)| key.clone())
        .collect();
    let applied = (|| {
        unpacker.parallel(&data, opts.concurrency)?;
        remove_gone(&pgdata, &files)?;
        for (_, key) in tars.iter().filter(|(k, _)| *k == TarKind::Label) {
            unpacker.one(key, false)?;
        }
        if opts.fsync {
            for dir in std::iter::once(pgdata.as_path()).chain(plan.locations()) {
                crate::backup::fetch::sync_filesystem(dir)?;
            }
        }
        for (_, key) in tars.iter().filter(|(k, _)| *k == TarKind::Control) {
            unpacker.one(key, true)?;
        }
        Ok::<(), Error>(())
    })();
    applied.map_err(|e| {
        Error::Other(format!(
            "{e}\nhint: '{}' is half caught up and will not start (its pg_control is set aside as {PARKED}); \
             run catchup-fetch again",
            pgdata.display()
        ))
    })?;
    let parked = pgdata.join(PARKED);
    fs::remove_file(&parked)
        .map_err(|e| Error::io(format!("removing '{}'", parked.display()), e))?;
    progress.finish();
    log::info!(
        "Catch-up backup {name} applied to '{}'; start it as a standby of the primary",
        pgdata.display()
    );
    Ok(())
}

/// A running server would overwrite what catch-up writes.
pub(super) fn check_stopped(pgdata: &Path) -> Result<()> {
    let pidfile = pgdata.join("postmaster.pid");
    let text = match fs::read_to_string(&pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading '{}'", pidfile.display()), e)),
    };
    let pid: i32 = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(0);
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    if alive {
        return Err(Error::Usage(format!(
            "PostgreSQL is running on '{}' (postmaster.pid names process {pid}); stop the replica \
             (pg_ctl stop) before catchup-fetch",
            pgdata.display()
        )));
    }
    Ok(())
}

/// The replica's control file, or the one a previous interrupted run set
/// aside.
fn read_control(pgdata: &Path) -> Result<Control> {
    let live = pgdata.join("global/pg_control");
    let parked = pgdata.join(PARKED);
    if parked.is_file() {
        log::info!(
            "'{}' is from an interrupted catch-up: applying again",
            parked.display()
        );
        return Control::read(&parked);
    }
    if live.is_file() {
        return Control::read(&live);
    }
    Err(Error::Other(format!(
        "'{}' has no global/pg_control: it is not a replica that catch-up can update; \
         restore a base backup into it instead (backup-fetch)",
        pgdata.display()
    )))
}

fn delta_lsn(sentinel: &Map<String, Value>) -> Option<u64> {
    catalog::field(sentinel, "DeltaLSN").and_then(Value::as_u64)
}

/// The catch-up must be of the replica's cluster, and start no later than
/// the replica got (else changes between the two would be missing).
fn check_fits(
    name: &str,
    sentinel: &Map<String, Value>,
    replica: &Control,
    pgdata: &Path,
) -> Result<()> {
    if let Some(id) = catalog::field(sentinel, "SystemIdentifier").and_then(Value::as_u64) {
        if id != replica.system_identifier {
            return Err(Error::Usage(format!(
                "catch-up backup {name} is of the cluster with system identifier {id}, and '{}' of {}: \
                 it is not a copy of that cluster",
                pgdata.display(),
                replica.system_identifier
            )));
        }
    }
    let Some(from) = delta_lsn(sentinel) else {
        return Err(Error::Other(format!(
            "backup {name} has no DeltaLSN in its sentinel: it is not a catch-up backup"
        )));
    };
    let limit = replica.catchup_limit();
    if from > limit {
        return Err(Error::Usage(format!(
            "catch-up backup {name} holds the changes from {} on, but '{}' has only those up to {} \
             (its {}): changes in between would be missing. Take a catch-up with --from-lsn {} \
             (the replica's 'Latest checkpoint's REDO location', decimal)",
            catalog::lsn_text(from),
            pgdata.display(),
            catalog::lsn_text(limit),
            if replica.clean() {
                "latest checkpoint"
            } else {
                "latest checkpoint's REDO location: it was not shut down cleanly"
            },
            replica.redo
        )));
    }
    Ok(())
}

/// Every name of the catch-up's `Files` with its flags; `None` without
/// a `files_metadata.json` (every member is then a whole file).
fn read_files(storage: &Arc<dyn Storage>, name: &str) -> Result<Option<Listed>> {
    let key = layout::files_metadata_key(name);
    let input = match storage.get(&key, 0) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let read = metadata_read::read(input, &|_| true).map_err(|e| {
        Error::Other(format!(
            "the files metadata of catch-up backup {name} cannot be read: {e}; its objects are damaged"
        ))
    })?;
    if read.files.is_empty() {
        return Ok(None);
    }
    Ok(Some(Listed {
        files: read.files,
        tars: read
            .tar_sets
            .map(|sets| sets.into_iter().map(|s| s.tar).collect()),
    }))
}

/// A catch-up's file list, and the tars its metadata names (none for a
/// catch-up made without tar sets).
struct Listed {
    files: FileSet,
    tars: Option<Vec<String>>,
}

/// Every tar the metadata names must be in storage: applying the others
/// would leave the replica's old files where the missing tar's belong,
/// and a replica that starts.
fn require_tars(name: &str, named: Option<&[String]>, stored: &[(TarKind, String)]) -> Result<()> {
    let missing = named.into_iter().flatten().find(|tar| {
        !stored
            .iter()
            .any(|(_, key)| key.rsplit('/').next() == Some(tar.as_str()))
    });
    match missing {
        Some(tar) => Err(Error::Other(format!(
            "catch-up backup {name} names tar '{tar}' in its files metadata, but storage does not hold it; \
             the catch-up is incomplete or damaged and was not applied (the replica is unchanged)"
        ))),
        None => Ok(()),
    }
}

/// The file list is what tells increments from whole files: without it
/// increment bytes would be written as file contents.
fn require_files(name: &str, files: Option<Listed>) -> Result<Listed> {
    files.ok_or_else(|| {
        Error::Other(format!(
            "catch-up backup {name} has no file list (files_metadata.json is missing or empty): walden \
             cannot tell its increments from whole files, so it does not apply it"
        ))
    })
}

/// The replica's own tablespace links; each tablespace of the catch-up
/// must have one.
fn tablespace_plan(
    pgdata: &Path,
    sentinel: &Map<String, Value>,
    name: &str,
) -> Result<tablespaces::Plan> {
    let dir = pgdata.join("pg_tblspc");
    let mut links = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
            let path = entry.path();
            let Ok(target) = fs::read_link(&path) else {
                continue;
            };
            let location = if target.is_absolute() {
                target
            } else {
                dir.join(target)
            };
            links.push(Tablespace {
                name: entry.file_name().to_string_lossy().into_owned(),
                location,
            });
        }
    }
    let wanted: Vec<String> = catalog::field(sentinel, "Spec")
        .and_then(|s| s.get("tablespaces"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for t in &wanted {
        if !links.iter().any(|l| &l.name == t) {
            return Err(Error::Usage(format!(
                "catch-up backup {name} has tablespace {t}, which '{}' lacks (no link pg_tblspc/{t}): \
                 create its directory and the link on the replica first, or take a new base backup",
                pgdata.display()
            )));
        }
    }
    Ok(tablespaces::Plan::existing(links))
}

/// Set the replica's `pg_control` aside (durably) before anything else
/// changes: a half-applied catch-up must not start.
pub(super) fn park_control(pgdata: &Path) -> Result<()> {
    let live = pgdata.join("global/pg_control");
    let parked = pgdata.join(PARKED);
    if parked.exists() {
        // An interrupted run set it aside already; a pg_control next to
        // it came from that run's tar.
        return match fs::remove_file(&live) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing '{}'", live.display()), e)),
        };
    }
    fs::rename(&live, &parked).map_err(|e| {
        Error::io(
            format!("moving '{}' to '{}'", live.display(), parked.display()),
            e,
        )
    })?;
    let global = pgdata.join("global");
    File::open(&global)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing '{}'", global.display()), e))
}

/// Names the primary never sends that the replica keeps.
fn kept(rel: &[u8]) -> bool {
    let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
    rel == b"global/pg_control"
        || rel == PARKED.as_bytes()
        || matches!(
            rel,
            b"backup_label" | b"tablespace_map" | b"recovery.signal" | b"standby.signal"
        )
        || matches!(
            base,
            b"pg_hba.conf" | b"postgresql.conf" | b"postgresql.auto.conf"
        )
}

/// Remove what the replica has and the primary did not (dropped tables
/// and databases): files and links first, during the walk, then the
/// directories, deepest first. Excluded directories (pg_wal, ...) are not
/// looked into.
fn remove_gone(pgdata: &Path, files: &FileSet) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut removed = 0u64;
    let mut catalog = 0u64;
    walk::walk(pgdata, &mut catalog, &mut |e| {
        let rel = e.rel.as_os_str().as_bytes();
        let member = [b"/", rel].concat();
        if files.index(&member).is_some() || kept(rel) {
            return Ok(());
        }
        let path = pgdata.join(e.rel);
        match e.kind {
            Kind::Dir => dirs.push(path),
            Kind::File | Kind::Symlink(_) => {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(Error::io(format!("removing '{}'", path.display()), err))
                    }
                }
                log::debug!("removed '{}': the primary has no such file", path.display());
            }
        }
        Ok(())
    })?;
    for dir in dirs.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "removing '{}', a directory the primary does not have",
                        dir.display()
                    ),
                    e,
                ))
            }
        }
    }
    if removed > 0 {
        log::info!("Removed {removed} files and directories the primary no longer has");
    }
    Ok(())
}

/// Increments are applied to the replica's file, or create it when the
/// primary's file is new; everything else is extracted as usual (which
/// replaces an existing file).
struct CatchupPolicy<'a> {
    files: &'a FileSet,
    name: &'a str,
}

impl CatchupPolicy<'_> {
    fn incremented(&self, name: &[u8]) -> bool {
        self.files.flags(name).is_some_and(|f| f & INCREMENTED != 0)
    }

    /// An unlogged relation's fork (its `<relfilenode>_init` exists):
    /// its pages carry no LSN and PostgreSQL empties it at start, so a
    /// new one may be created with only the pages the catch-up has.
    fn unlogged(&self, name: &[u8]) -> bool {
        let (dir, file) = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => (&name[..=i], &name[i + 1..]),
            None => (&name[..0], name),
        };
        let rel = file.split(|&b| b == b'.').next().unwrap_or(file);
        let init = [dir, rel, b"_init"].concat();
        self.files.index(&init).is_some()
    }

    fn damaged(&self, m: &Member, e: IncrementError) -> Error {
        match e {
            IncrementError::Write(e) => Error::io(
                format!("writing '{}' (from '{}')", m.path.display(), m.key),
                e,
            ),
            e => Error::Other(format!(
                "member '{}' in object '{}' of catch-up backup {} is damaged: {e}",
                String::from_utf8_lossy(m.name),
                m.key,
                self.name
            )),
        }
    }

    fn local(&self, m: &Member, e: io::Error) -> Error {
        Error::io(
            format!("writing '{}' (from '{}')", m.path.display(), m.key),
            e,
        )
    }
}

impl MemberPolicy for CatchupPolicy<'_> {
    fn decide(&self, name: &[u8], kind: tar::EntryType) -> Result<Decision> {
        let regular = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        Ok(if regular && self.incremented(name) {
            Decision::Custom
        } else {
            Decision::Extract
        })
    }

    fn write(&self, m: &Member, data: &mut dyn Read, _buf: &mut [u8]) -> Result<()> {
        let mut data = &mut *data;
        let header = increment::read_header(&mut data, m.size).map_err(|e| self.damaged(m, e))?;
        let open = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(m.path);
        let file = match open {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // New on the primary. Its pages older than --from-lsn are
                // not in the catch-up (a file copied with its pages, as
                // CREATE DATABASE ... STRATEGY FILE_COPY does): WAL-G would
                // leave zeros there; refuse instead.
                let pages = header.size.div_ceil(PAGE);
                if header.blocks.len() as u64 != pages && !self.unlogged(m.name) {
                    return Err(Error::Other(format!(
                        "the replica has no '{}', and catch-up backup {} holds only {} of its {pages} pages \
                         (the others are older than its --from-lsn, e.g. a database created by copying \
                         files): the replica cannot be caught up with it; take a new base backup for it",
                        m.path.display(),
                        self.name,
                        header.blocks.len()
                    )));
                }
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(m.path)
                    .map_err(|e| self.local(m, e))?
            }
            Err(e) => return Err(self.local(m, e)),
        };
        increment::apply_forward(&file, &header, &mut data).map_err(|e| self.damaged(m, e))?;
        file.set_permissions(fs::Permissions::from_mode(m.mode))
            .map_err(|e| self.local(m, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tar_the_metadata_names_must_be_stored() {
        let stored = [
            (
                TarKind::Data,
                "catchup_005/c/tar_partitions/part_001.tar.lz4".to_string(),
            ),
            (
                TarKind::Control,
                "catchup_005/c/tar_partitions/pg_control.tar.lz4".to_string(),
            ),
        ];
        let named = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(require_tars("c", None, &stored).is_ok());
        assert!(require_tars("c", Some(&named(&["part_001.tar.lz4"])), &stored).is_ok());
        let e = require_tars(
            "c",
            Some(&named(&["part_001.tar.lz4", "backup_label.tar.lz4"])),
            &stored,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("'backup_label.tar.lz4'") && e.contains("not applied"),
            "{e}"
        );
    }

    #[test]
    fn unlogged_forks_are_known_by_their_init_fork() {
        let files = FileSet::from_pairs([
            (&b"/base/5/100_init"[..], 0),
            (&b"/base/5/100"[..], INCREMENTED),
            (&b"/base/5/200"[..], INCREMENTED),
        ]);
        let p = CatchupPolicy {
            files: &files,
            name: "base_1",
        };
        assert!(p.unlogged(b"/base/5/100"));
        assert!(p.unlogged(b"/base/5/100.1"));
        assert!(!p.unlogged(b"/base/5/200"));
        assert!(p.incremented(b"/base/5/200"));
        assert!(!p.incremented(b"/base/5/100_init"));
    }

    #[test]
    fn the_replica_keeps_its_configuration() {
        assert!(kept(b"postgresql.conf"));
        assert!(kept(b"global/pg_control"));
        assert!(kept(PARKED.as_bytes()));
        assert!(kept(b"standby.signal"));
        assert!(!kept(b"base/1/1259"));
        assert!(!kept(b"global/1262"));
    }
}
