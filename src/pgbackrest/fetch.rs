//! `walden pgbackrest backup-fetch DEST LABEL|LATEST`: restore a full, diff
//! or incr backup of a pgBackRest repository (spec §7, §12), bundled or
//! not, encrypted or not, gz/lz4/zst/bz2/none, with its tablespaces. Each
//! file is read from the backup that stores it (the manifest's
//! `reference`), decoded, and checked against its size and SHA-1 while it
//! is written. The manifest's file list is streamed to the workers, never
//! held. `global/pg_control` is written last, under a temp name renamed
//! once it checks out: until then DEST cannot start as a cluster, so a
//! failed restore leaves nothing PostgreSQL would run.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::codec::{self, Compress};
use super::owner::{self, Ids, Owners};
use super::rck;
use super::repo::{BackupEntry, Repo};
use super::sha1::Sha1;
use super::tablespaces::{Layout, TablespaceMap};
use super::PgbrError;
use crate::backup::recovery::{self, Recovery, Target};
use crate::config::Settings;
use crate::error::{Error, Result};

const USAGE: &str = "walden pgbackrest backup-fetch DEST LABEL|LATEST [--tablespace-map NAME=DIR ...] [--tablespace-map-all DIR] \
[--recovery-target-time T | --recovery-target-lsn L | --recovery-target-name N | --recovery-target immediate] [--standby]";
const PG_CONTROL: &str = "pg_data/global/pg_control";

/// The manifest sections a restore reads, held while it runs; the others
/// (`[target:file]`, streamed, and what a restore does not use) are never
/// held, whatever their size.
const KEPT_SECTIONS: &[&str] = &[
    "backup",
    "backup:db",
    "backup:option",
    "backup:target",
    "cipher",
    "target:file:default",
    "target:path",
    "target:path:default",
];

/// Options built once at the top of the command.
pub struct Options {
    pub dest: PathBuf,
    pub label: String,
    pub concurrency: usize,
    pub tablespaces: TablespaceMap,
    pub recovery: Recovery,
}

impl Options {
    #[cfg(test)]
    pub fn new(dest: &Path, label: &str, concurrency: usize) -> Options {
        Options {
            dest: dest.to_path_buf(),
            label: label.to_string(),
            concurrency,
            tablespaces: TablespaceMap::default(),
            recovery: Recovery::default(),
        }
    }
}

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let usage = |what: String| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut parser = lexopt::Parser::from_args(args);
    let mut positional: Vec<String> = Vec::new();
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut standby = false;
    let mut map = TablespaceMap::default();
    while let Some(arg) = parser.next()? {
        match arg {
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
            Long("tablespace-map") => {
                let v = parser.value()?.string()?;
                let (name, dir) = v
                    .split_once('=')
                    .filter(|(n, d)| !n.is_empty() && !d.is_empty())
                    .ok_or_else(|| usage(format!("--tablespace-map wants NAME=DIR, not '{v}'")))?;
                map.each.push((name.to_string(), PathBuf::from(dir)));
            }
            Long("tablespace-map-all") if map.all.is_none() => {
                map.all = Some(PathBuf::from(parser.value()?));
            }
            Value(v) if positional.len() < 2 => positional.push(
                v.into_string()
                    .map_err(|_| usage("arguments must be UTF-8".into()))?,
            ),
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }
    let target = recovery::one_target(targets, usage)?;
    if positional.len() != 2 {
        return Err(usage("DEST and LABEL (or LATEST) are needed".into()));
    }
    let label = positional.pop().unwrap_or_default();
    let dest = positional.pop().unwrap_or_default();
    Ok(Options {
        dest: PathBuf::from(dest),
        label,
        concurrency: settings.positive("WALG_DOWNLOAD_CONCURRENCY")?.min(64),
        tablespaces: map,
        recovery: Recovery { target, standby },
    })
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = options(settings, args)?;
    let repo = super::open_repo(settings)?;
    let lines = if opts.recovery.requested() {
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("finding the walden binary for restore_command", e))?;
        let config = recovery::config_file(settings)?;
        Some((exe, config))
    } else {
        None
    };
    let label = restore_with(&repo, &opts, &|label: &str| {
        lines.as_ref().map(|(exe, config)| {
            pgbackrest_conf_lines(&opts.recovery, exe, config.as_deref(), label)
        })
    })?;
    if opts.recovery.requested() {
        recovery::report(settings, &opts.recovery, &opts.dest);
        log::info!(
            "restore_command runs 'walden pgbackrest wal-fetch': PGBACKREST_STANZA{} must be set where PostgreSQL runs it",
            if repo.cipher_pass.is_some() {
                " and PGBACKREST_REPO1_CIPHER_PASS"
            } else {
                ""
            }
        );
    }
    log::info!(
        "pgBackRest backup {label} restored into {}",
        opts.dest.display()
    );
    Ok(())
}

/// walden's own recovery settings, with `restore_command` calling
/// `walden pgbackrest wal-fetch` instead of `walden wal-fetch`.
pub fn pgbackrest_conf_lines(
    recovery: &Recovery,
    exe: &Path,
    config: Option<&Path>,
    label: &str,
) -> String {
    let lines = recovery::conf_lines(recovery, exe, config, label);
    lines
        .lines()
        .map(|l| {
            if l.starts_with("restore_command = ") {
                l.replacen(" wal-fetch %f %p'", " pgbackrest wal-fetch %f %p'", 1)
            } else if l.starts_with("# Added by walden backup-fetch") {
                l.replacen("walden backup-fetch", "walden pgbackrest backup-fetch", 1)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One `[target:file]` entry, as much of it as a restore needs.
struct FileJob {
    name: String,
    size: u64,
    checksum: Option<String>,
    /// SHA-1 of the stored bytes (`rck`), where the manifest has one.
    rck: Option<String>,
    repo_size: Option<u64>,
    reference: Option<String>,
    /// Bundle id and offset (spec §7.2).
    bundle: Option<(u64, u64)>,
    mode: Option<u32>,
    timestamp: Option<i64>,
    /// uid and gid to give it, when restoring as root.
    owner: Option<(u32, u32)>,
}

fn unsupported(label: &str, problem: impl Into<String>) -> Error {
    PgbrError::Unsupported {
        what: format!("backup {label}"),
        problem: problem.into(),
    }
    .into()
}

/// The mode a manifest gives `what` (an entry or a default section), if
/// any. PostgreSQL makes its files and directories with permission bits
/// only: a setuid, setgid or sticky bit would be restored on a file owned
/// as the manifest says (root, when restoring as root), so such a mode,
/// or one that is not octal, is refused rather than applied.
pub(super) fn mode_of(v: Option<&Value>, what: &str) -> Result<Option<u32>> {
    let Some(text) = v.and_then(Value::as_str) else {
        return Ok(None);
    };
    let bad = |problem: &str| -> Error {
        PgbrError::Format {
            what: format!("manifest {what}"),
            problem: format!(
                "mode '{text}' {problem}; PostgreSQL never makes such a file or directory: \
                 the manifest is damaged or was not written by pgBackRest, the restore is refused"
            ),
        }
        .into()
    };
    match u32::from_str_radix(text, 8) {
        Ok(m) if m <= 0o777 => Ok(Some(m)),
        Ok(_) => Err(bad("has bits above 0777 (setuid, setgid or sticky)")),
        Err(_) => Err(bad("is not an octal mode")),
    }
}

/// The label LABEL|LATEST names; with a time target and LATEST, the newest
/// backup that ended before the target (spec §12.1).
fn choose<'a>(
    backups: &'a [BackupEntry],
    wanted: &str,
    target: Option<&Target>,
) -> Result<&'a BackupEntry> {
    if wanted != "LATEST" {
        return backups.iter().find(|b| b.label == wanted).ok_or_else(|| {
            Error::Other(format!(
                "no backup {wanted} in backup.info (`walden pgbackrest backup-list` lists them)"
            ))
        });
    }
    if let Some(Target::Time(t)) = target {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        return backups
            .iter()
            .rev()
            .find(|b| b.timestamp_stop < secs)
            .ok_or_else(|| {
                Error::Other("no pgBackRest backup ended before the recovery target time".into())
            });
    }
    backups
        .last()
        .ok_or_else(|| Error::Other("the pgBackRest repository has no backups".into()))
}

/// [`restore_with`] with recovery settings naming plain `walden`.
#[cfg(test)]
pub fn restore(repo: &Repo, opts: &Options) -> Result<String> {
    restore_with(repo, opts, &|label: &str| {
        opts.recovery
            .requested()
            .then(|| pgbackrest_conf_lines(&opts.recovery, Path::new("walden"), None, label))
    })
}

/// Restore, then write the recovery settings `lines(label)` gives before
/// pg_control. Returns the label restored.
fn restore_with(
    repo: &Repo,
    opts: &Options,
    lines: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    let info = repo.backup_info()?;
    let entry = choose(&info.backups, &opts.label, opts.recovery.target.as_ref())?;
    let label = entry.label.clone();
    if entry.block_incremental {
        return Err(unsupported(
            &label,
            "is a block incremental backup (pgBackRest 2.45 beta format), which walden does not read",
        ));
    }
    let manifest_key = repo.backup_key(&format!("{label}/backup.manifest"));
    let (man, used_key) = repo.load_from(&manifest_key, info.cipher_pass.as_deref(), &|s| {
        KEPT_SECTIONS.contains(&s)
    })?;
    let flag = |k: &str| man.get("backup", k).and_then(Value::as_bool) == Some(true);
    if flag("backup-block-incr") {
        return Err(unsupported(
            &label,
            "is a block incremental backup (pgBackRest 2.45 beta format), which walden does not read",
        ));
    }
    if flag("backup-bundle-raw") {
        return Err(unsupported(
            &label,
            "stores bundled files in pgBackRest's raw format (a set made with block incremental), which walden does not read",
        ));
    }
    let compress = match man
        .get("backup:option", "option-compress-type")
        .and_then(Value::as_str)
    {
        Some(t) => Compress::from_type(t).ok_or_else(|| {
            unsupported(
                &label,
                format!("is compressed with '{t}', which walden does not read"),
            )
        })?,
        // Manifests before 2.42: a boolean, which meant gz (§6.3).
        None => match man
            .get("backup:option", "option-compress")
            .and_then(Value::as_bool)
        {
            Some(true) => Compress::Gz,
            _ => Compress::None,
        },
    };
    let db_version = man
        .get("backup:db", "db-version")
        .and_then(Value::as_str)
        .unwrap_or("");
    let recovery_lines = lines(&label);
    if recovery_lines.is_some() && db_version.parse::<f64>().is_ok_and(|v| v < 12.0) {
        return Err(Error::Usage(format!(
            "backup {label} is of PostgreSQL {db_version}, which reads its recovery settings from recovery.conf; \
             walden writes them for PostgreSQL 12 and later: restore without a recovery target or --standby"
        )));
    }
    let data_pass = man
        .get("cipher", "cipher-pass")
        .and_then(Value::as_str)
        .map(str::to_string);
    if info.cipher_pass.is_some() && data_pass.is_none() {
        return Err(PgbrError::Format {
            what: used_key.clone(),
            problem: "the repository is encrypted but the manifest has no [cipher] cipher-pass"
                .into(),
        }
        .into());
    }
    let layout = Layout::new(&man, &opts.dest, &opts.tablespaces)?;
    prepare_dest(&opts.dest)?;
    layout.prepare()?;
    let file_owners = Owners::new(&man, "target:file:default", &opts.dest)?;
    let path_owners = Owners::new(&man, "target:path:default", &opts.dest)?;
    let file_mode = mode_of(
        man.get("target:file:default", "mode"),
        "[target:file:default]",
    )?
    .unwrap_or(0o600);
    let dir_mode = mode_of(
        man.get("target:path:default", "mode"),
        "[target:path:default]",
    )?
    .unwrap_or(0o700);

    // Directories first, owner-writable until the end.
    // (path, mode, owner): modes and owners set at the end.
    let mut dirs: Vec<(PathBuf, u32, Option<Ids>)> = Vec::new();
    for (name, v) in man.section("target:path").into_iter().flatten() {
        let Some(path) = layout.path(name)? else {
            continue;
        };
        fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let owner = path_owners.as_ref().map(|o| o.ids(v));
        let mode = mode_of(v.get("mode"), &format!("directory {name}"))?.unwrap_or(dir_mode);
        dirs.push((path, mode, owner));
    }
    layout.links()?;

    let ctx = Arc::new(Ctx {
        repo_storage: repo,
        label: label.clone(),
        layout: &layout,
        compress,
        pass: data_pass,
        file_mode,
    });
    let (tx, rx) = sync_channel::<FileJob>(opts.concurrency * 4);
    let rx = Arc::new(Mutex::new(rx));
    let mut deferred: Option<FileJob> = None;
    let result: Result<()> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..opts.concurrency)
            .map(|_| {
                let rx = Arc::clone(&rx);
                let ctx = Arc::clone(&ctx);
                scope.spawn(move || work(&ctx, &rx))
            })
            .collect();
        // Only the workers may hold the receiver: when they have all
        // stopped on errors, a send must fail instead of waiting forever.
        drop(rx);
        let fed = repo.stream(
            &used_key,
            info.cipher_pass.as_deref(),
            // Nothing held: the sections read are in `man` already.
            &|_| false,
            &mut |section, name, v| {
                if section != "target:file" {
                    return Ok(());
                }
                let mut job = job(name, &v)?;
                job.owner = file_owners.as_ref().map(|o| o.ids(&v));
                // spec §12.5: with tablespace_map, recovery would re-point the
                // links at the machine that made the backup.
                if name == "pg_data/tablespace_map" {
                    return Ok(());
                }
                if name == PG_CONTROL {
                    deferred = Some(job);
                    return Ok(());
                }
                // A send fails only when every worker stopped on an error,
                // which the join below reports.
                tx.send(job)
                    .map_err(|_| Error::Other("restore workers stopped".into()))
            },
        );
        drop(tx);
        let mut first_err = fed.err();
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(Error::Other("a restore worker panicked".into())));
            if let Err(e) = r {
                // A worker's error names the file; prefer it.
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    });
    result?;
    let control = deferred.ok_or_else(|| {
        Error::Other(format!(
            "the manifest of {label} lists no {PG_CONTROL}: not a data directory backup"
        ))
    })?;
    if let Some(lines) = &recovery_lines {
        recovery::write(&opts.dest, &opts.recovery, lines)?;
    }
    // Everything else durable before pg_control makes DEST a cluster: one
    // syncfs per file system (writeback was started while writing).
    crate::backup::fetch::sync_filesystem(&opts.dest)?;
    for ts in &layout.tablespaces {
        crate::backup::fetch::sync_filesystem(&ts.location)?;
    }
    restore_control(&ctx, &control)?;
    for (path, mode, owner) in dirs.iter().rev() {
        if let Some(ids) = owner {
            owner::chown(path, *ids)?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    }
    Ok(label)
}

/// DEST must be absent or empty: a restore over a cluster would mix two.
fn prepare_dest(dest: &Path) -> Result<()> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Other(format!(
                    "{} is not empty; restore into a new or empty directory",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(dest)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e)),
        Err(e) => Err(Error::io(format!("reading {}", dest.display()), e)),
    }
}

fn job(name: &str, v: &Value) -> Result<FileJob> {
    let bad = |p: &str| PgbrError::Format {
        what: format!("manifest entry {name}"),
        problem: p.to_string(),
    };
    if v.get("bi").is_some() || v.get("bim").is_some() {
        return Err(bad("is block incremental, which walden does not read").into());
    }
    Ok(FileJob {
        name: name.to_string(),
        size: v
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("has no size"))?,
        checksum: v
            .get("checksum")
            .and_then(Value::as_str)
            .map(str::to_string),
        rck: v.get("rck").and_then(Value::as_str).map(str::to_string),
        repo_size: v.get("repo-size").and_then(Value::as_u64),
        reference: v
            .get("reference")
            .and_then(Value::as_str)
            .map(str::to_string),
        bundle: match v.get("bni") {
            None => None,
            Some(id) => Some((
                id.as_u64()
                    .ok_or_else(|| bad("has a bni that is not a number"))?,
                match v.get("bno") {
                    None => 0,
                    Some(o) => o
                        .as_u64()
                        .ok_or_else(|| bad("has a bno that is not a number"))?,
                },
            )),
        },
        mode: mode_of(v.get("mode"), &format!("file {name}"))?,
        timestamp: v.get("timestamp").and_then(Value::as_i64),
        owner: None,
    })
}

struct Ctx<'a> {
    repo_storage: &'a Repo,
    label: String,
    layout: &'a Layout,
    compress: Compress,
    /// The manifest's cipher-pass: opens every data file of the set.
    pass: Option<String>,
    file_mode: u32,
}

fn work(ctx: &Ctx, rx: &Mutex<Receiver<FileJob>>) -> Result<()> {
    loop {
        let job = {
            let guard = rx
                .lock()
                .map_err(|_| Error::Other("restore queue poisoned".into()))?;
            guard.recv()
        };
        match job {
            Ok(job) => restore_file(ctx, &job)?,
            Err(_) => return Ok(()),
        }
    }
}

/// SHA-1 of no bytes: the checksum of every zero-length file.
const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

fn restore_file(ctx: &Ctx, job: &FileJob) -> Result<()> {
    write_file(ctx, job, &file_path(ctx, job)?).map(drop)
}

fn file_path(ctx: &Ctx, job: &FileJob) -> Result<PathBuf> {
    ctx.layout
        .path(&job.name)?
        .ok_or_else(|| Error::Other(format!("manifest entry {} is not a file path", job.name)))
}

/// `global/pg_control`, the file whose presence makes DEST a cluster:
/// written under a temp name beside it, checked against the manifest,
/// made durable, and only then renamed into place. A damaged copy is
/// removed, never left where PostgreSQL would read it.
fn restore_control(ctx: &Ctx, job: &FileJob) -> Result<()> {
    let path = file_path(ctx, job)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".pg_control.walden-tmp.{}",
        crate::localfile::random_suffix()
    ));
    // Removed on a stop signal, too.
    let _tracked = crate::cleanup::track_file(temp.clone());
    let published = write_file(ctx, job, &temp).and_then(|out| {
        out.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", temp.display()), e))?;
        drop(out);
        // rename replaces: nothing of the manifest may be there already.
        if fs::symlink_metadata(&path).is_ok() {
            return Err(Error::Other(format!(
                "{} exists before pg_control was restored: the manifest names it twice; refused",
                path.display()
            )));
        }
        fs::rename(&temp, &path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", temp.display(), path.display()),
                e,
            )
        })
    });
    if let Err(e) = published {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    crate::localfile::sync_dir(dir)
        .map_err(|e| Error::io(format!("syncing the directory {}", dir.display()), e))
}

/// Writes `job` to `path`, checked against its size and SHA-1, with its
/// owner, mode and time; the file is returned open.
fn write_file(ctx: &Ctx, job: &FileJob, path: &Path) -> Result<File> {
    let path = path.to_path_buf();
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let (written, sha1) = if job.size == 0 {
        // Nothing to read (bundled empty files are not even stored, §7.2).
        (0, EMPTY_SHA1.to_string())
    } else {
        copy_from_repo(ctx, job, &mut out, &path)?
    };
    let want = job.checksum.as_deref().unwrap_or(EMPTY_SHA1);
    if written != job.size || sha1 != want {
        return Err(PgbrError::Format {
            what: format!("file {} of backup {}", job.name, ctx.label),
            problem: format!(
                "restored {written} bytes with SHA-1 {sha1}, the manifest says {} bytes with SHA-1 {want}: the repository file is damaged",
                job.size
            ),
        }
        .into());
    }
    if let Some((uid, gid)) = job.owner {
        std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("changing the owner of {}", path.display()), e))?;
    }
    finish(
        &out,
        &path,
        job.mode.unwrap_or(ctx.file_mode),
        job.timestamp,
    )?;
    Ok(out)
}

fn copy_from_repo(ctx: &Ctx, job: &FileJob, out: &mut File, path: &Path) -> Result<(u64, String)> {
    let owner = job.reference.as_deref().unwrap_or(&ctx.label);
    if !super::repo::is_label(owner) {
        return Err(Error::Other(format!(
            "manifest entry {} references '{owner}', which is not a backup label",
            job.name
        )));
    }
    let (key, offset) = match job.bundle {
        Some((id, offset)) => (
            ctx.repo_storage.backup_key(&format!("{owner}/bundle/{id}")),
            offset,
        ),
        None => (
            ctx.repo_storage
                .backup_key(&format!("{owner}/{}{}", job.name, ctx.compress.suffix())),
            0,
        ),
    };
    let what = match job.bundle {
        Some(_) => format!("{key} (member {} at offset {offset})", job.name),
        None => key.clone(),
    };
    let storage = &ctx.repo_storage.storage;
    let fetched = match job.bundle {
        // A member is the bytes [bno, bno + repo-size) of its bundle: one
        // ranged read of exactly those (repo-size is left out when equal
        // to size, spec §6.4).
        Some(_) => storage.get_range(&key, offset, job.repo_size.unwrap_or(job.size)),
        None => storage.get(&key, 0),
    };
    let source = fetched.map_err(|e| {
        if e.is_not_found() {
            Error::Other(format!(
                "{key} is missing: file {} of backup {} is stored by {owner}, which is not in the repository (expired or damaged?)",
                job.name, ctx.label
            ))
        } else {
            e.into()
        }
    })?;
    let read_err = |e: std::io::Error| -> Error {
        PgbrError::Read {
            what: what.clone(),
            problem: format!("{e} (truncated or damaged file?)"),
        }
        .into()
    };
    let (source, stored) = match job.rck {
        Some(_) => {
            let (reader, stored) = rck::hashing(source);
            (reader, Some(stored))
        }
        None => (source, None),
    };
    let mut reader = codec::open(source, ctx.pass.as_deref(), ctx.compress).map_err(read_err)?;
    let mut hash = Sha1::new();
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    let mut started = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        total += n as u64;
        if total > job.size {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        if total - started >= WRITEBACK_EVERY {
            start_writeback(out, started, total);
            started = total;
        }
    }
    if total > started {
        start_writeback(out, started, total);
    }
    if let (Some(stored), Some(want)) = (stored, &job.rck) {
        drop(reader);
        let (size, got) = stored.finish().map_err(read_err)?;
        let want_size = job.repo_size.unwrap_or(job.size);
        if size != want_size || !got.eq_ignore_ascii_case(want) {
            return Err(PgbrError::Format {
                what: what.clone(),
                problem: format!(
                    "the stored bytes of file {} are {size} bytes with SHA-1 {got}, the manifest says {want_size} bytes with rck {want}: the repository file is damaged",
                    job.name
                ),
            }
            .into());
        }
    }
    Ok((total, hash.hex()))
}

/// Reads from the decoder and writes of this size: fewer calls on the
/// large files that make most of a cluster.
const COPY_BUFFER: usize = 256 << 10;

/// Writeback of a file is started every this many bytes.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Writeback of `[from, to)` of `out` (see `localfile::start_writeback`):
/// the syncfs before pg_control finds little left, where one sync of
/// everything at the end measured seconds on a 2 GiB restore.
fn start_writeback(out: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    crate::localfile::start_writeback(out.as_raw_fd(), from, to - from);
}

fn finish(out: &File, path: &Path, mode: u32, timestamp: Option<i64>) -> Result<()> {
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    if let Some(t) = timestamp {
        let when = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        out.set_modified(when)
            .map_err(|e| Error::io(format!("setting the time of {}", path.display()), e))?;
    }
    Ok(())
}
