//! `walden wal-push PATH`, for `archive_command = 'walden wal-push %p'`.
//!
//! Uploads PATH, and meanwhile the other segments PostgreSQL has marked
//! `.ready`, so that the archiver's later calls for those return at once.
//! Exits 0 only when PATH is durable in storage.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{codecs, open_storage, positionals, upload_concurrency};
use crate::codec::Codecs;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::stream::read_full;
use crate::wal::archive_status::Markers;
use crate::wal::object::Probe;
use crate::wal::{metadata, object, Segment};

const USAGE: &str = "walden wal-push PATH";

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let path = PathBuf::from(positionals(args, USAGE, 1)?.remove(0));
    Pusher::new(settings)?.push(&path)
}

/// Everything a wal-push needs, built once from the settings: a command
/// builds it for its one file, `walden daemon` once for all its requests,
/// so that storage connections stay warm between segments.
pub struct Pusher {
    storage: Arc<dyn Storage>,
    job: Arc<Job>,
    meta_level: metadata::Level,
    concurrency: usize,
    bg_limit: usize,
    wal_size: u64,
    pgdata: Option<String>,
}

impl Pusher {
    pub fn new(settings: &Settings) -> Result<Pusher> {
        let meta_level = metadata::level(settings)?;
        let concurrency = upload_concurrency(settings)?;
        let bg_limit = settings.positive("TOTAL_BG_UPLOADED_LIMIT")?;
        let prevent_overwrite = settings.bool("WALG_PREVENT_WAL_OVERWRITE")?;
        let wal_size = crate::wal::segment_size_mb(settings)?;
        let storage = open_storage(settings)?;
        // One thread per zstd stream, the lone foreground one included:
        // measured on a 16 MiB segment at level 3 (2 cores), two workers
        // saved 2-4 % of the wall time but cost 30-40 % more CPU and twice
        // the memory (38 MiB peak RSS on random data, 19 MiB with one), CPU
        // that a busy primary needs more (see scripts/bench/wal.sh).
        let mut codecs = codecs(settings)?;
        codecs.zstd_workers = 1;
        Ok(Pusher {
            job: Arc::new(Job {
                storage: storage.clone(),
                codecs,
                prevent_overwrite,
            }),
            storage,
            meta_level,
            concurrency,
            bg_limit,
            wal_size,
            pgdata: settings.get_explicit("PGDATA"),
        })
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn codecs(&self) -> &Codecs {
        &self.job.codecs
    }

    /// Store the WAL file at `path`; Ok only when it is durable in storage.
    pub fn push(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "'{}' has no file name; usage: {USAGE}",
                    path.display()
                ))
            })?
            .to_string();
        let wal_dir = wal_dir(self.pgdata.as_deref(), path);
        let markers = Markers::new(&wal_dir);
        let meta_level = self.meta_level;
        let storage = &self.storage;

        if markers.is_marked(&name) {
            // A background upload of an earlier call already stored it.
            markers.unmark(&name);
            metadata::upload(storage, meta_level, &name, path, markers.dir())?;
            log::info!("WAL file '{name}' was already uploaded in the background");
            return Ok(());
        }

        // Segments uploaded in the background are handed back to PostgreSQL
        // at once (`.ready` renamed `.done`, which its archiver expects: it
        // re-checks each `.ready` before calling us), so that pg_wal keeps
        // only WAL not yet stored. With WAL metadata the later call for each
        // must still run, so they are marked instead, as WAL-G marks them.
        let release = if meta_level == metadata::Level::None {
            Release::Done
        } else {
            Release::Marker
        };
        let background = Background::start(
            self.job.clone(),
            path,
            &name,
            Lanes {
                threads: self.concurrency.saturating_sub(1),
                files: self.bg_limit.saturating_sub(1),
            },
            self.wal_size,
            &markers,
            release,
        );

        let mut buf = crate::stream::buffer();
        let result = self.job.push(path, &name, &mut buf);
        // Background uploads finish the segment each is on and take no new
        // one: PostgreSQL learns of this one now, and its next call starts
        // the next round. Their errors are only logged, as PostgreSQL will
        // call us again for those files.
        background.wait(&markers);
        result?;
        metadata::upload(storage, meta_level, &name, path, markers.dir())?;
        Ok(())
    }
}

/// pg_wal: `$PGDATA/pg_wal` if PGDATA is set, else the directory of the
/// file being pushed (which is pg_wal when PostgreSQL calls us).
fn wal_dir(pgdata: Option<&str>, path: &Path) -> PathBuf {
    if let Some(pgdata) = pgdata {
        let p = Path::new(pgdata).join("pg_wal");
        if p.is_dir() {
            return p;
        }
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

struct Job {
    storage: Arc<dyn Storage>,
    codecs: Codecs,
    /// `WALG_PREVENT_WAL_OVERWRITE`: compare every file with what is stored.
    prevent_overwrite: bool,
}

impl Job {
    /// Whether `name` must be compared with a stored copy before upload:
    /// always for timeline history files, whose replacement by a different
    /// one would make recovery follow the wrong timeline, whichever call
    /// (foreground or background) uploads them.
    fn compares(&self, name: &str) -> bool {
        self.prevent_overwrite || name.ends_with(".history")
    }

    fn push(&self, path: &Path, name: &str, buf: &mut [u8]) -> Result<()> {
        if self.compares(name) && self.already_stored(path, name)? {
            log::info!(
                "WAL file '{}' already archived with equal content, skipping",
                path.display()
            );
            return Ok(());
        }
        let mut file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open WAL file '{}'", path.display()), e))?;
        let key = object::upload(&self.storage, &self.codecs, name, &mut file, buf)?;
        log::info!("FILE PATH: {}", key.trim_start_matches(object::WAL_FOLDER));
        Ok(())
    }

    /// True when the same content is stored; an error when different
    /// content is: overwriting archived WAL would lose history.
    fn already_stored(&self, path: &Path, name: &str) -> Result<bool> {
        let Some((key, mut stored)) =
            object::open(&self.storage, &self.codecs, name, Probe::GetFirst)?
        else {
            return Ok(false);
        };
        let mut local = File::open(path)
            .map_err(|e| Error::io(format!("cannot open WAL file '{}'", path.display()), e))?;
        let equal = same_content(&mut stored, &mut local).map_err(|e| {
            Error::Other(format!(
                "Couldn't check whether there is an overwrite attempt due to inner error: reading '{key}': {e}"
            ))
        })?;
        if equal {
            Ok(true)
        } else {
            Err(Error::Other(format!(
                "WAL file '{}' already archived, contents differ, unable to overwrite (stored as '{key}')",
                path.display()
            )))
        }
    }
}

/// Compare two streams chunk by chunk, without holding either whole.
fn same_content(a: &mut dyn Read, b: &mut dyn Read) -> io::Result<bool> {
    let mut x = vec![0u8; 64 << 10];
    let mut y = vec![0u8; 64 << 10];
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Uploads of other `.ready` files next to the one PostgreSQL asked for.
struct Background {
    workers: Vec<std::thread::JoinHandle<()>>,
    done: Arc<Mutex<Vec<String>>>,
    /// Set when the foreground upload ends: no worker starts another file.
    stop: Arc<AtomicBool>,
    status_dir: PathBuf,
}

/// How much a call uploads besides its own file.
struct Lanes {
    /// Uploads at once: `WALG_UPLOAD_CONCURRENCY` - 1.
    threads: usize,
    /// Files at most: `TOTAL_BG_UPLOADED_LIMIT` - 1.
    files: usize,
}

/// How a segment uploaded in the background is handed back.
#[derive(Clone, Copy, PartialEq)]
enum Release {
    /// `archive_status/<name>.ready` renamed `.done`, as PostgreSQL's
    /// archiver does after a successful archive_command.
    Done,
    /// WAL-G's marker: the later archive_command call returns at once.
    Marker,
}

impl Background {
    fn start(
        job: Arc<Job>,
        path: &Path,
        name: &str,
        lanes: Lanes,
        wal_size: u64,
        markers: &Markers,
        release: Release,
    ) -> Background {
        let done = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut background = Background {
            workers: Vec::new(),
            done: done.clone(),
            stop: stop.clone(),
            status_dir: dir.join("archive_status"),
        };
        if lanes.threads == 0 || lanes.files == 0 {
            return background;
        }
        let queue = ready_files(&dir, name, lanes.files, wal_size, markers);
        if queue.is_empty() {
            return background;
        }
        log::debug!(
            "uploading {} more .ready files in the background",
            queue.len()
        );
        let queue = Arc::new(Mutex::new(queue));
        // More threads than twice the cores only hold more encoder memory:
        // the work is compression first, then one PUT per segment.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = lanes
            .threads
            .min(cores * 2)
            .min(queue.lock().map_or(0, |q| q.len()));
        for _ in 0..threads {
            let queue = queue.clone();
            let job = job.clone();
            let dir = dir.clone();
            let done = done.clone();
            let stop = stop.clone();
            let status_dir = background.status_dir.clone();
            background.workers.push(std::thread::spawn(move || {
                let mut buf = crate::stream::buffer();
                // Each worker was started for one file; it takes more only
                // while the foreground upload runs.
                let mut first = true;
                loop {
                    if !first && stop.load(Ordering::Relaxed) {
                        return;
                    }
                    first = false;
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(file) = next else { return };
                    match job.push(&dir.join(&file), &file, &mut buf) {
                        // Handed back as soon as it is stored, so that pg_wal
                        // never waits for the rest of this call.
                        Ok(()) if release == Release::Done && hand_back(&status_dir, &file) => {}
                        Ok(()) => {
                            if let Ok(mut d) = done.lock() {
                                d.push(file);
                            }
                        }
                        Err(e) => log::error!("Error of background uploader: {e}"),
                    }
                }
            }));
        }
        background
    }

    fn wait(mut self, markers: &Markers) {
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        let Ok(done) = self.done.lock() else { return };
        for file in done.iter() {
            markers.mark(file);
        }
    }
}

/// `<file>.ready` → `<file>.done` in pg_wal's archive_status, as
/// PostgreSQL's archiver renames it. Not fsynced: a rename lost in a crash
/// only makes PostgreSQL archive that file again (stored already, so the
/// call succeeds), and under a write burst each directory fsync waits for
/// a journal commit full of PostgreSQL's own writes. False when it failed:
/// the file is then marked, and PostgreSQL's call for it returns at once.
fn hand_back(status_dir: &Path, file: &str) -> bool {
    let ready = status_dir.join(format!("{file}.ready"));
    let done = status_dir.join(format!("{file}.done"));
    if let Err(e) = fs::rename(&ready, &done) {
        log::debug!("cannot rename {}: {e}", ready.display());
        return false;
    }
    true
}

/// Other WAL files PostgreSQL has marked ready for archiving, oldest first:
/// the segments that follow `name` come first, as they are the archiver's
/// next calls; then any other `.ready` file.
fn ready_files(
    dir: &Path,
    name: &str,
    limit: usize,
    wal_size: u64,
    markers: &Markers,
) -> VecDeque<String> {
    let status = dir.join("archive_status");
    let mut out = VecDeque::new();
    let mut next = Segment::parse(name, wal_size).map(|s| s.next());
    while let Some(seg) = next {
        if out.len() >= limit {
            return out;
        }
        let file = seg.name(wal_size);
        if !status.join(format!("{file}.ready")).exists() {
            break;
        }
        if !markers.is_marked(&file) {
            out.push_back(file);
        }
        next = Some(seg.next());
    }
    let Ok(entries) = fs::read_dir(&status) else {
        return out;
    };
    let mut others: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".ready").map(str::to_string))
        .filter(|f| f != name && !out.contains(f) && !markers.is_marked(f))
        .collect();
    others.sort();
    for f in others {
        if out.len() >= limit {
            break;
        }
        out.push_back(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_streams() {
        let a = vec![1u8; 200_000];
        let mut b = a.clone();
        assert!(same_content(&mut &a[..], &mut &b[..]).unwrap());
        b[199_999] = 2;
        assert!(!same_content(&mut &a[..], &mut &b[..]).unwrap());
        assert!(!same_content(&mut &a[..], &mut &a[..100]).unwrap());
    }
}
