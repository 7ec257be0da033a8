//! `walden wal-fetch NAME DEST`, for `restore_command = 'walden wal-fetch
//! %f %p'`, and the `wal-prefetch` worker it starts in the background.
//!
//! Prefetched segments wait in `.wal-g/prefetch/` beside DEST (or under
//! `WALG_PREFETCH_DIR`), downloads in progress in `.wal-g/prefetch/running/`,
//! as WAL-G lays them out. A prefetched file is complete by construction:
//! it is renamed into `prefetch/` only after its download decoded and
//! verified to the end.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{codecs, open_storage, positionals};
use crate::codec::Codecs;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::localfile::{self, AtomicFile};
use crate::storage::Storage;
use crate::stream::copy_object_limited;
use crate::wal::object::{self, Probe};
use crate::wal::Segment;

const USAGE: &str = "walden wal-fetch NAME DEST";
/// The first bytes of every WAL page: XLOG_PAGE_MAGIC of PostgreSQL ≥ 9.x
/// is at least this.
const MIN_PAGE_MAGIC: u16 = 0xD061;
/// Parallel downloads of one prefetch run.
const PREFETCH_THREADS: usize = 4;

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let values = positionals(args, USAGE, 2)?;
    let (name, dest) = (values[0].clone(), PathBuf::from(&values[1]));
    let options = FetchOptions::new(settings)?;
    let cache = options.cache(&dest);

    let open = || Ok((open_storage(settings)?, codecs(settings)?));
    let result = fetch(&open, &cache, &name, &dest, options.wal_size);
    // Recovery asks for the next segment right after this one, so prefetch
    // it. Not after a miss (WAL-G does): what follows a segment that is not
    // archived yet is not archived either, and a standby polling for it
    // would pay for those probes on every poll.
    if options.count > 1 && worth_prefetching(&name, &result) {
        if let Err(e) = spawn_prefetch(settings, &name, &dest) {
            log::warn!("could not start prefetching after {name}: {e}");
        }
    }
    result
}

/// Whether the segments after `name` should be prefetched after this
/// fetch ended with `result`.
fn worth_prefetching(name: &str, result: &Result<()>) -> bool {
    let missed = matches!(result, Err(Error::WalNotFound(_)));
    !missed && !name.contains("history") && !name.contains("partial")
}

/// The storage and codecs of a fetch, opened only when a download needs
/// them (a prefetched segment does not).
type Open<'a> = dyn Fn() -> Result<(Arc<dyn Storage>, Codecs)> + 'a;

/// The settings of wal-fetch and wal-prefetch, read once at the top of
/// the command (or of `walden daemon`) and passed down.
pub struct FetchOptions {
    /// `WALG_PG_WAL_SIZE`, in MiB.
    wal_size: u64,
    /// Segments to prefetch after the one fetched:
    /// `WALG_DOWNLOAD_CONCURRENCY` (1: none).
    count: usize,
    /// `WALG_PREFETCH_DIR`; else the prefetch cache is beside DEST.
    prefetch_dir: Option<String>,
}

impl FetchOptions {
    pub fn new(settings: &Settings) -> Result<FetchOptions> {
        Ok(FetchOptions {
            wal_size: crate::wal::segment_size_mb(settings)?,
            count: settings.positive("WALG_DOWNLOAD_CONCURRENCY")?,
            prefetch_dir: settings.get_explicit("WALG_PREFETCH_DIR"),
        })
    }

    /// The prefetch cache serving downloads to `dest`.
    fn cache(&self, dest: &Path) -> PrefetchCache {
        PrefetchCache::at(self.prefetch_dir.as_deref(), dest)
    }
}

/// wal-fetch on storage opened once by `walden daemon`: the same algorithm
/// as the command, with the next segments prefetched by a thread of the
/// daemon instead of a process (at most one such thread at a time).
pub fn fetch_on(
    options: &FetchOptions,
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
    dest: &Path,
    prefetching: &Arc<AtomicBool>,
) -> Result<()> {
    let (wal_size, count) = (options.wal_size, options.count);
    let cache = options.cache(dest);
    let open = || Ok((storage.clone(), codecs.clone()));
    let result = fetch(&open, &cache, name, dest, wal_size);
    if count > 1 && worth_prefetching(name, &result) && !prefetching.swap(true, Ordering::SeqCst) {
        let (storage, codecs, busy) = (storage.clone(), codecs.clone(), prefetching.clone());
        let first = Segment::parse(name, wal_size);
        let spawned = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                if let Some(first) = first {
                    if let Err(e) = prefetch(&storage, &codecs, &cache, first, count, wal_size) {
                        log::debug!("prefetch after {} failed: {e}", first.name(wal_size));
                    }
                }
                busy.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            prefetching.store(false, Ordering::SeqCst);
        }
    }
    result
}

fn fetch(open: &Open, cache: &PrefetchCache, name: &str, dest: &Path, wal_size: u64) -> Result<()> {
    if Segment::parse(name, wal_size).is_some() && cache.take(name, dest, wal_size) {
        log::debug!("{name} came from the prefetch cache");
        return Ok(());
    }
    let (storage, codecs) = open()?;
    // On a filesystem every extension is tried anyway (object::open): no
    // note to read or write there.
    let remote = !storage.lookups_are_local();
    let missed_before = remote && cache.missed_before(name);
    let probe = if missed_before {
        Probe::ListFirst
    } else {
        Probe::GetFirst
    };
    let found = download(&storage, &codecs, name, dest, wal_size, probe)?;
    if remote {
        cache.note(name, found.is_some(), missed_before);
    }
    match found {
        Some(()) => Ok(()),
        None => {
            // Exit 74 tells PostgreSQL the archive has no more WAL and ends
            // recovery: only say so when the storage itself is there.
            storage.verify_root()?;
            Err(Error::WalNotFound(name.to_string()))
        }
    }
}

/// `walden wal-restore`'s download: `name` into `dest`, false when storage
/// does not have it.
pub fn download_to(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
    dest: &Path,
    wal_size: u64,
) -> Result<bool> {
    Ok(download(storage, codecs, name, dest, wal_size, Probe::GetFirst)?.is_some())
}

/// Download `name` into `dest` (temp name, fsync unless PostgreSQL does
/// it, rename). `Ok(None)` when storage has no such WAL file; on any error
/// nothing is left at `dest`.
fn download(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
    dest: &Path,
    wal_size: u64,
    probe: Probe,
) -> Result<Option<()>> {
    let Some((key, mut reader)) = object::open(storage, codecs, name, probe)? else {
        return Ok(None);
    };
    let mut file = AtomicFile::create(dest)
        .map_err(|e| Error::io(format!("cannot create '{}'", dest.display()), e))?;
    let size = copy_wal(&mut reader, &mut file, &key, name, wal_size)?;
    log::debug!("{key}: {size} bytes");
    if localfile::postgres_syncs(dest) {
        file.commit_unsynced()
    } else {
        file.commit()
    }
    .map_err(|e| Error::io(format!("cannot write '{}'", dest.display()), e))?;
    Ok(Some(()))
}

/// Copy the decoded WAL object `key` (WAL file `name`): never more than a
/// segment, and a segment exactly whole. A short segment would be replayed
/// as far as it goes and then end recovery early.
fn copy_wal(
    reader: &mut dyn Read,
    out: &mut dyn io::Write,
    key: &str,
    name: &str,
    wal_size: u64,
) -> Result<u64> {
    let segment_bytes = wal_size << 20;
    let why = format!(
        ", more than a WAL segment ({wal_size} MiB): it is damaged, or WALG_PG_WAL_SIZE does not match the cluster's wal_segment_size"
    );
    let size = copy_object_limited(reader, out, key, segment_bytes, &why)?;
    if Segment::parse(name, wal_size).is_some() && size != segment_bytes {
        return Err(Error::Other(format!(
            "object '{key}' decodes to {size} bytes, not a whole WAL segment of {segment_bytes}: it is truncated, or WALG_PG_WAL_SIZE does not match the cluster; nothing was written"
        )));
    }
    Ok(size)
}

struct PrefetchCache {
    ready: PathBuf,
    running: PathBuf,
    /// Holds the name of the last WAL file found missing, so that the next
    /// call for it (a standby polling) starts with the one request that
    /// settles a miss: a LIST (see [`Probe`]).
    last_miss: PathBuf,
}

impl PrefetchCache {
    /// `prefetch_dir` is `WALG_PREFETCH_DIR`; else beside `dest`.
    fn at(prefetch_dir: Option<&str>, dest: &Path) -> PrefetchCache {
        let base = match prefetch_dir {
            Some(dir) => PathBuf::from(dir),
            None => match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            },
        };
        let ready = base.join(".wal-g").join("prefetch");
        PrefetchCache {
            running: ready.join("running"),
            last_miss: base.join(".wal-g").join("last-miss"),
            ready,
        }
    }

    fn missed_before(&self, name: &str) -> bool {
        fs::read(&self.last_miss).is_ok_and(|content| content == name.as_bytes())
    }

    /// Remember a miss of `name`, forget it once found; `noted` is what
    /// [`Self::missed_before`] said. Best effort: a lost or torn note only
    /// costs one request more on the next call.
    fn note(&self, name: &str, found: bool, noted: bool) {
        if !found && !noted {
            if let Some(dir) = self.last_miss.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let _ = fs::write(&self.last_miss, name);
        } else if found && noted {
            let _ = fs::remove_file(&self.last_miss);
        }
    }

    /// Move a prefetched `name` to `dest` if a good one is there or about
    /// to be. A bad one is removed and the caller downloads directly.
    fn take(&self, name: &str, dest: &Path, wal_size: u64) -> bool {
        let ready = self.ready.join(name);
        let running = self.running.join(name);
        // A download in progress: wait while it grows.
        let mut last = None;
        let mut still = 0;
        while !ready.exists() {
            let Ok(meta) = fs::metadata(&running) else {
                break;
            };
            if last == Some(meta.len()) {
                still += 1;
                // ~200 ms without growth: the prefetcher died.
                if still >= 100 {
                    let _ = fs::remove_file(&running);
                    return false;
                }
            } else {
                still = 0;
                last = Some(meta.len());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let Ok(meta) = fs::metadata(&ready) else {
            return false;
        };
        if meta.len() != wal_size << 20 || !has_page_magic(&ready) {
            log::warn!(
                "Prefetch error: bad prefetched file {}; downloading again",
                ready.display()
            );
            let _ = fs::remove_file(&ready);
            return false;
        }
        if let Err(e) = move_into_place(&ready, dest) {
            log::warn!("cannot use prefetched {}: {e}", ready.display());
            return false;
        }
        true
    }
}

fn has_page_magic(path: &Path) -> bool {
    let mut head = [0u8; 2];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && u16::from_le_bytes(head) >= MIN_PAGE_MAGIC
}

/// Rename within one filesystem; copy through a temp file across two.
fn move_into_place(from: &Path, dest: &Path) -> io::Result<()> {
    match fs::rename(from, dest) {
        Ok(()) if localfile::postgres_syncs(dest) => Ok(()),
        Ok(()) => {
            let dir = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut out = AtomicFile::create(dest)?;
            io::copy(&mut File::open(from)?, &mut out)?;
            out.commit()?;
            fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

/// Start `walden wal-prefetch NAME DEST` detached: recovery must not wait
/// for it, and it must outlive us.
fn spawn_prefetch(settings: &Settings, name: &str, dest: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if let Some(config) = &settings.config_path {
        cmd.arg("--config").arg(config);
    }
    cmd.args(settings.flag_args());
    cmd.arg("wal-prefetch").arg(name).arg(dest);
    let devel = settings.get("WALG_LOG_LEVEL").as_deref() == Some("DEVEL");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if devel {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .process_group(0);
    cmd.spawn().map(|_| ())
}

pub fn run_prefetch(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let values = positionals(args, "walden wal-prefetch NAME LOCATION", 2)?;
    let (name, location) = (values[0].clone(), PathBuf::from(&values[1]));
    let options = FetchOptions::new(settings)?;
    let Some(first) = Segment::parse(&name, options.wal_size) else {
        return Ok(());
    };
    let cache = options.cache(&location);
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    prefetch(
        &storage,
        &codecs,
        &cache,
        first,
        options.count,
        options.wal_size,
    )
}

/// Download the `count` segments after `first` into the prefetch cache.
fn prefetch(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    cache: &PrefetchCache,
    first: Segment,
    count: usize,
    wal_size: u64,
) -> Result<()> {
    clean(cache, first, wal_size);
    fs::create_dir_all(&cache.running)
        .map_err(|e| Error::io(format!("cannot create {}", cache.running.display()), e))?;

    let mut queue = Vec::new();
    let mut seg = first;
    for _ in 0..count {
        seg = seg.next();
        let file = seg.name(wal_size);
        if !cache.ready.join(&file).exists() && !cache.running.join(&file).exists() {
            queue.push(file);
        }
    }
    queue.reverse();
    let queue = Arc::new(Mutex::new(queue));
    let threads = PREFETCH_THREADS.min(count);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(file) = next else { return };
                match prefetch_one(storage, codecs, cache, &file, wal_size) {
                    Ok(true) => log::debug!("prefetched {file}"),
                    Ok(false) => {
                        // The standby will ask for it next: one LIST then.
                        if !storage.lookups_are_local() {
                            cache.note(&file, false, cache.missed_before(&file));
                        }
                        // Later segments do not exist yet either.
                        if let Ok(mut q) = queue.lock() {
                            q.clear();
                        }
                    }
                    Err(e) => log::debug!("prefetch of {file} failed: {e}"),
                }
            });
        }
    });
    Ok(())
}

/// Download `file` into `running/`, then move it to the ready directory.
/// `Ok(false)` when storage does not have it.
fn prefetch_one(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    cache: &PrefetchCache,
    file: &str,
    wal_size: u64,
) -> Result<bool> {
    let running = cache.running.join(file);
    let Some((key, mut reader)) = object::open(storage, codecs, file, Probe::GetFirst)? else {
        return Ok(false);
    };
    // O_EXCL: another prefetcher is already on it.
    let mut out = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&running)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(true),
        Err(e) => return Err(Error::io(format!("cannot create {}", running.display()), e)),
    };
    // A prefetcher stopped by a signal leaves no partial download behind.
    let _tracked = crate::cleanup::track_file(running.clone());
    let copied = copy_wal(&mut reader, &mut out, &key, file, wal_size).and_then(|_| {
        out.sync_all()
            .map_err(|e| Error::io(format!("cannot write {}", running.display()), e))
    });
    if let Err(e) = copied {
        let _ = fs::remove_file(&running);
        return Err(e);
    }
    let ready = cache.ready.join(file);
    if ready.exists() {
        let _ = fs::remove_file(&running);
    } else if let Err(e) = fs::rename(&running, &ready) {
        let _ = fs::remove_file(&running);
        return Err(Error::io(
            format!("cannot move {} into place", running.display()),
            e,
        ));
    }
    Ok(true)
}

/// Remove cached segments older than `current`: recovery is past them.
fn clean(cache: &PrefetchCache, current: Segment, wal_size: u64) {
    for dir in [&cache.ready, &cache.running] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(seg) = file.to_str().and_then(|f| Segment::parse(f, wal_size)) else {
                continue;
            };
            if seg < current {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}
