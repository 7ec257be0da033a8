//! Downloading and extracting a backup's tars into DEST: the data tars
//! `WALG_DOWNLOAD_CONCURRENCY` at a time, each handled start to finish by
//! one thread (download → decrypt → decompress → untar, spec §9.6), so
//! memory is a few stream buffers per thread whatever the backup's size.
//! Single tars (backup_label, pg_control) are extracted by the caller in
//! its order, with [`Unpacker::one`].

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::extract::{Extractor, MemberPolicy};
use super::partial::Filter;
use super::tablespaces::Plan;
use crate::codec::Codecs;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::storage::Storage;

/// A thread per tar at most; more is a typo that would ask for that many
/// threads and stream buffers.
pub const MAX_DOWNLOAD_CONCURRENCY: usize = 256;

#[derive(Clone, Copy)]
pub struct Unpacker<'a> {
    pub storage: &'a Arc<dyn Storage>,
    pub codecs: &'a Codecs,
    pub dest: &'a Path,
    /// Start writeback while extracting: a sync follows.
    pub writeback: bool,
    /// Where tablespace members go.
    pub tablespaces: &'a Plan,
    /// Counts the tar bytes extracted (for the progress line).
    pub progress: &'a Progress,
    /// Partial restore: the files to write.
    pub keep: Option<&'a Filter>,
    /// Per-member decisions (restoring a chain of delta backups).
    pub policy: Option<&'a dyn MemberPolicy>,
}

/// Fails reads once another tar has failed, so the other threads stop
/// soon instead of downloading whole tars into a restore that is lost.
struct Cancellable {
    inner: Box<dyn Read + Send>,
    stop: Arc<AtomicBool>,
}

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "stopped: another tar of the backup failed",
            ));
        }
        self.inner.read(buf)
    }
}

impl Unpacker<'_> {
    /// Extract one tar; `atomic` writes its files under temp names.
    pub fn one(&self, key: &str, atomic: bool) -> Result<()> {
        self.extract(key, atomic, None)
    }

    fn extract(&self, key: &str, atomic: bool, stop: Option<&Arc<AtomicBool>>) -> Result<()> {
        let raw = self.storage.get(key, 0)?;
        let raw: Box<dyn Read + Send> = match stop {
            Some(stop) => Box::new(Cancellable {
                inner: raw,
                stop: stop.clone(),
            }),
            None => raw,
        };
        let source = self.codecs.reader(raw, base_name(key), true, true)?;
        let source = Box::new(self.progress.reader(source));
        Extractor {
            dest: self.dest,
            writeback: self.writeback,
            key,
            atomic,
            tablespaces: self.tablespaces,
            keep: self.keep,
            policy: self.policy,
        }
        .extract(source)?;
        log::debug!("extracted '{key}'");
        Ok(())
    }

    /// Extract `keys` with up to `concurrency` threads. The first error
    /// is returned once every thread has stopped; the others are logged.
    pub fn parallel(&self, keys: &[String], concurrency: usize) -> Result<()> {
        let jobs: Vec<Job> = keys
            .iter()
            .map(|k| Job {
                key: k,
                policy: self.policy,
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        self.jobs(&jobs, concurrency, &stop, &|_| {})
    }

    /// Extract `jobs`, taken in order by up to `concurrency` threads, each
    /// with its own member policy; `done(i)` runs when job `i` has been
    /// extracted. `stop` is set at the first failure (policies that wait
    /// for other jobs watch it). The first error is returned once every
    /// thread has stopped; the others are logged.
    pub fn jobs(
        &self,
        jobs: &[Job<'_>],
        concurrency: usize,
        stop: &Arc<AtomicBool>,
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<()> {
        let threads = concurrency.clamp(1, jobs.len().max(1));
        let next = AtomicUsize::new(0);
        let first: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else {
                        return;
                    };
                    let unpacker = Unpacker {
                        policy: job.policy,
                        ..*self
                    };
                    match unpacker.extract(job.key, false, Some(stop)) {
                        Ok(()) => done(i),
                        Err(e) => {
                            let already = stop.swap(true, Ordering::Relaxed);
                            let mut slot = first.lock().unwrap_or_else(|p| p.into_inner());
                            if already && slot.is_some() {
                                log::debug!("after the first failure: {e}");
                            } else {
                                *slot = Some(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        match first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One tar to extract and the rules for its members.
pub struct Job<'a> {
    pub key: &'a str,
    pub policy: Option<&'a dyn MemberPolicy>,
}

fn base_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
