//! `walden pgbackrest backup-fetch DEST LABEL|LATEST`: restore a full, diff
//! or incr backup of an unencrypted, unbundled pgBackRest repository
//! (spec §7.1, §7.3, §12). Each file is read from the backup that stores
//! it (the manifest's `reference`), decoded, and checked against its size
//! and SHA-1 while it is written. The manifest's file list is streamed to
//! the workers, never held. `global/pg_control` is written last: until
//! then DEST cannot start as a cluster, so a failed restore leaves nothing
//! PostgreSQL would run.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
use serde_json::Value;

use super::repo::Repo;
use super::PgbrError;
use crate::codec::compression::{decoder, Method};
use crate::commands::{open_storage, positionals};
use crate::config::Settings;
use crate::error::{Error, Result};

const USAGE: &str = "walden pgbackrest backup-fetch DEST LABEL|LATEST";
const PG_CONTROL: &str = "pg_data/global/pg_control";

/// Options built once at the top of the command.
pub struct Options {
    pub dest: PathBuf,
    pub label: String,
    pub concurrency: usize,
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let values = positionals(args, USAGE, 2)?;
    let opts = Options {
        dest: PathBuf::from(&values[0]),
        label: values[1].clone(),
        concurrency: settings.positive("WALG_DOWNLOAD_CONCURRENCY")?.min(64),
    };
    let repo = Repo::new(open_storage(settings)?, super::stanza(settings)?);
    restore(&repo, &opts)
}

/// One `[target:file]` entry, as much of it as a restore needs.
struct FileJob {
    name: String,
    size: u64,
    checksum: Option<String>,
    repo_size: Option<u64>,
    reference: Option<String>,
    mode: Option<u32>,
    timestamp: Option<i64>,
}

fn unsupported(label: &str, problem: impl Into<String>) -> Error {
    PgbrError::Unsupported {
        what: format!("backup {label}"),
        problem: problem.into(),
    }
    .into()
}

fn mode_of(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_str)
        .and_then(|m| u32::from_str_radix(m, 8).ok())
}

/// `pg_data/<rest>` as a path under DEST; anything that could leave DEST
/// is refused.
fn local_path(dest: &Path, name: &str) -> Result<PathBuf> {
    let rest = if name == "pg_data" {
        ""
    } else {
        name.strip_prefix("pg_data/").ok_or_else(|| {
            Error::Other(format!(
                "manifest entry '{name}' is outside pg_data (tablespaces are not restored yet)"
            ))
        })?
    };
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::Other(format!(
            "manifest entry '{name}' would be written outside DEST; refused"
        )));
    }
    Ok(dest.join(rel))
}

pub fn restore(repo: &Repo, opts: &Options) -> Result<()> {
    let info = repo.backup_info()?;
    let label = if opts.label == "LATEST" {
        info.backups
            .last()
            .map(|b| b.label.clone())
            .ok_or_else(|| Error::Other("the pgBackRest repository has no backups".into()))?
    } else {
        opts.label.clone()
    };
    let entry = info
        .backups
        .iter()
        .find(|b| b.label == label)
        .ok_or_else(|| {
            Error::Other(format!(
                "no backup {label} in backup.info (`walden pgbackrest backup-list` lists them)"
            ))
        })?;
    if entry.block_incremental {
        return Err(unsupported(
            &label,
            "is a block incremental backup (pgBackRest 2.45 beta format), which walden does not read",
        ));
    }
    let manifest_key = repo.backup_key(&format!("{label}/backup.manifest"));
    let (man, used_key) = repo.load_from(&manifest_key, &|s| s != "target:file")?;
    let flag = |k: &str| man.get("backup", k).and_then(Value::as_bool) == Some(true);
    if flag("backup-block-incr") {
        return Err(unsupported(
            &label,
            "is a block incremental backup (pgBackRest 2.45 beta format), which walden does not read",
        ));
    }
    if flag("backup-bundle") {
        return Err(unsupported(
            &label,
            "was made with repo-bundle=y; restoring bundled backups is not built yet",
        ));
    }
    let method = match man
        .get("backup:option", "option-compress-type")
        .and_then(Value::as_str)
    {
        Some("lz4") => Method::Lz4,
        Some("zst") => Method::Zstd,
        Some("none") => Method::None,
        Some(other) => {
            return Err(unsupported(
                &label,
                format!(
                    "is compressed with {other}; walden restores lz4, zst and uncompressed backups"
                ),
            ))
        }
        None => {
            return Err(unsupported(
                &label,
                "has no option-compress-type (a manifest older than pgBackRest 2.42)",
            ))
        }
    };
    if let Some(targets) = man.section("backup:target") {
        if let Some(t) = targets.keys().find(|k| *k != "pg_data") {
            return Err(unsupported(
                &label,
                format!("has a tablespace or link ({t}); restoring those is not built yet"),
            ));
        }
    }
    if man.section("target:link").is_some_and(|l| !l.is_empty()) {
        return Err(unsupported(
            &label,
            "has symlinks; restoring those is not built yet",
        ));
    }
    let ext = match method {
        Method::None => String::new(),
        m => format!(".{}", m.extension()),
    };
    prepare_dest(&opts.dest)?;
    let file_mode = mode_of(man.get("target:file:default", "mode")).unwrap_or(0o600);
    let dir_mode = mode_of(man.get("target:path:default", "mode")).unwrap_or(0o700);

    // Directories first, owner-writable until the end.
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for (name, v) in man.section("target:path").into_iter().flatten() {
        let path = local_path(&opts.dest, name)?;
        fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        dirs.push((path, mode_of(v.get("mode")).unwrap_or(dir_mode)));
    }

    let ctx = Arc::new(Ctx {
        repo_storage: repo,
        label: label.clone(),
        dest: opts.dest.clone(),
        ext,
        method,
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
            &|s| s != "target:file",
            &mut |section, name, v| {
                if section != "target:file" {
                    return Ok(());
                }
                let job = job(name, &v)?;
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
    // Everything else durable before pg_control makes DEST a cluster.
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    restore_file(&ctx, &control)?;
    for (path, mode) in dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    }
    log::info!(
        "pgBackRest backup {label} restored into {}",
        opts.dest.display()
    );
    Ok(())
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
    if v.get("bni").is_some() {
        return Err(bad("is in a bundle; restoring bundled files is not built yet").into());
    }
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
        repo_size: v.get("repo-size").and_then(Value::as_u64),
        reference: v
            .get("reference")
            .and_then(Value::as_str)
            .map(str::to_string),
        mode: mode_of(v.get("mode")),
        timestamp: v.get("timestamp").and_then(Value::as_i64),
    })
}

struct Ctx<'a> {
    repo_storage: &'a Repo,
    label: String,
    dest: PathBuf,
    ext: String,
    method: Method,
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
    let path = local_path(&ctx.dest, &job.name)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let (written, sha1) = if job.size == 0 && job.reference.is_none() && job.repo_size.is_none() {
        // Nothing stored (spec §7.2): an empty file.
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
    finish(
        &out,
        &path,
        job.mode.unwrap_or(ctx.file_mode),
        job.timestamp,
    )?;
    Ok(())
}

fn copy_from_repo(ctx: &Ctx, job: &FileJob, out: &mut File, path: &Path) -> Result<(u64, String)> {
    let owner = job.reference.as_deref().unwrap_or(&ctx.label);
    if !super::repo::is_label(owner) {
        return Err(Error::Other(format!(
            "manifest entry {} references '{owner}', which is not a backup label",
            job.name
        )));
    }
    let key = ctx
        .repo_storage
        .backup_key(&format!("{owner}/{}{}", job.name, ctx.ext));
    let source = ctx.repo_storage.storage.get(&key, 0).map_err(|e| {
        if e.is_not_found() {
            Error::Other(format!(
                "{key} is missing: file {} of backup {} is stored by {owner}, which is not in the repository (expired or damaged?)",
                job.name, ctx.label
            ))
        } else {
            e.into()
        }
    })?;
    let mut reader = decoder(ctx.method, source);
    let mut hash = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PgbrError::Read {
                    what: key.clone(),
                    problem: format!("{e} (truncated or damaged file?)"),
                }
                .into())
            }
        };
        total += n as u64;
        if total > job.size {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    let hex = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((total, hex))
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
