//! Moving objects from one storage to another: a listing of the source is
//! merged with a listing of the destination (both come in key order), so
//! an object already there with the same size is skipped without a
//! request of its own; the rest go to a bounded pool of workers, each
//! copying one object at a time, server-side when both storages are the
//! same S3 service, else streamed through one part buffer. Nothing here
//! grows with the number of objects, except what the caller holds back.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use crate::codec::FinishWrite;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::storage::upload::ObjectWriter;
use crate::storage::{Entry, ErrorKind, ObjectInfo, Storage, StorageError};

/// What to do with one object of a source listing.
pub enum Pick {
    Copy,
    /// Not now: the caller copies it in a later phase (sentinels, metadata).
    Later,
    Skip,
}

/// An object held back for a later phase, with the size of the object of
/// the same key the destination had when it was listed.
pub struct Held {
    pub object: ObjectInfo,
    pub present: Option<u64>,
}

#[derive(Default)]
pub struct Stats {
    pub copied: AtomicU64,
    pub server_side: AtomicU64,
    pub skipped: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct Transfer {
    src: Arc<dyn Storage>,
    dst: Arc<dyn Storage>,
    workers: usize,
    /// Cleared for good when the service refuses a server-side copy.
    server_side: AtomicBool,
    progress: Progress,
    pub stats: Stats,
}

/// Entries of the destination listing waiting to be merged.
const DEST_QUEUE: usize = 1024;

impl Transfer {
    pub fn new(src: Arc<dyn Storage>, dst: Arc<dyn Storage>, workers: usize) -> Transfer {
        let server_side = src
            .copy_source("", 0)
            .is_some_and(|s| dst.can_copy_from(&s.service));
        if server_side {
            log::info!("Source and destination are the same S3 service: copying server-side");
        }
        Transfer {
            src,
            dst,
            workers: workers.max(1),
            server_side: AtomicBool::new(server_side),
            progress: Progress::new("copy", None),
            stats: Stats::default(),
        }
    }

    /// Copy the objects under `prefix` (recursively) that `pick` selects
    /// and that the destination lacks; those `pick` holds back go to
    /// `held`, in key order.
    pub fn copy_listing(
        &self,
        prefix: &str,
        pick: &mut dyn FnMut(&str) -> Pick,
        held: &mut Vec<Held>,
    ) -> Result<()> {
        let (dest_tx, dest_rx) = sync_channel::<Result<(String, u64)>>(DEST_QUEUE);
        let dst = self.dst.clone();
        let dest_prefix = prefix.to_string();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let result = dst.list(&dest_prefix, true, &mut |e| {
                    if let Entry::Object(o) = e {
                        // The merge hung up: stop listing.
                        dest_tx.send(Ok((o.key, o.size))).map_err(|_| {
                            StorageError::new(ErrorKind::Permanent, "list", &dest_prefix, "stopped")
                        })?;
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    let _ = dest_tx.send(Err(e.into()));
                }
            });
            let mut dest = DestCursor {
                rx: dest_rx,
                next: None,
                done: false,
            };
            self.run_pool(scope_jobs(|submit| {
                // The callback must return a storage error; the real
                // cause is kept here.
                let mut cause: Option<Error> = None;
                let listed = self.src.list(prefix, true, &mut |e| {
                    let Entry::Object(o) = e else { return Ok(()) };
                    let step = (|| -> Result<()> {
                        let what = pick(&o.key);
                        if matches!(what, Pick::Skip) {
                            return Ok(());
                        }
                        let present = dest.size_of(&o.key)?;
                        if matches!(what, Pick::Later) {
                            held.push(Held { object: o, present });
                        } else if !self.already_there(&o, present)? {
                            submit(o)?;
                        }
                        Ok(())
                    })();
                    step.map_err(|e| {
                        cause = Some(e);
                        StorageError::new(ErrorKind::Permanent, "list", prefix, "copy stopped")
                    })
                });
                match cause {
                    Some(e) => Err(e),
                    None => listed.map_err(Error::from),
                }
            }))
        })
    }

    /// Copy held objects, `parallel` or one after the other in the
    /// order given.
    pub fn copy_held(&self, objects: Vec<Held>, parallel: bool) -> Result<()> {
        if !parallel {
            for h in objects {
                if !self.already_there(&h.object, h.present)? {
                    self.copy_one(&h.object)?;
                }
            }
            return Ok(());
        }
        self.run_pool(scope_jobs(|submit| {
            for h in objects {
                if !self.already_there(&h.object, h.present)? {
                    submit(h.object)?;
                }
            }
            Ok(())
        }))
    }

    /// Whether the destination's object of the same key (of `present`
    /// bytes) makes the copy unnecessary; one of another size is an error
    /// rather than something to overwrite.
    fn already_there(&self, o: &ObjectInfo, present: Option<u64>) -> Result<bool> {
        match present {
            None => Ok(false),
            Some(size) if size == o.size => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Some(size) => Err(Error::Other(format!(
                "'{}' is already in {} with {size} bytes, but has {} bytes in {}: \
                 these are different objects; remove it from the destination \
                 (walden st rm) if the source's is the one to keep, then copy again",
                o.key,
                self.dst.location(),
                o.size,
                self.src.location()
            ))),
        }
    }

    /// Run `produce` on this thread, handing each object it submits to a
    /// worker; the first error (producer's or worker's) is returned once
    /// every worker has stopped.
    fn run_pool(&self, produce: Jobs<'_>) -> Result<()> {
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let (tx, rx) = sync_channel::<ObjectInfo>(self.workers);
        let rx = Mutex::new(rx);
        let produced = std::thread::scope(|scope| {
            for _ in 0..self.workers {
                scope.spawn(|| loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(o) = job else { return };
                    if stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = self.copy_one(&o) {
                        stop.store(true, Ordering::Relaxed);
                        let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                    }
                });
            }
            let mut submit = |o: ObjectInfo| -> Result<()> {
                if stop.load(Ordering::Relaxed) {
                    return Err(Error::Other("a copy failed".into()));
                }
                tx.send(o)
                    .map_err(|_| Error::Other("the copy workers stopped".into()))
            };
            let result = produce(&mut submit);
            drop(tx);
            result
        });
        // A worker's error is the cause; the producer's then only says it
        // was told to stop.
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        produced
    }

    fn copy_one(&self, o: &ObjectInfo) -> Result<()> {
        if self.server_side.load(Ordering::Relaxed) {
            if let Some(source) = self.src.copy_source(&o.key, o.size) {
                match self.dst.copy_from(&source, &o.key) {
                    Ok(()) => {
                        self.stats.server_side.fetch_add(1, Ordering::Relaxed);
                        self.count(o.size);
                        self.progress.add(o.size);
                        return Ok(());
                    }
                    Err(e) if e.kind == ErrorKind::Permanent => {
                        // Credentials that cannot read the source, or a
                        // service without CopyObject: the bytes can still
                        // come through here.
                        if self.server_side.swap(false, Ordering::Relaxed) {
                            log::warn!(
                                "server-side copy refused ({e}); copying through walden instead"
                            );
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let reader = self.src.get(&o.key, 0)?;
        let mut writer = Box::new(ObjectWriter::new(self.dst.clone(), &o.key));
        let copied = io::copy(&mut self.progress.reader(reader), &mut writer)
            .map_err(|e| Error::io(format!("copying '{}'", o.key), e))?;
        if copied != o.size {
            // Dropping the writer unfinished leaves nothing behind.
            return Err(Error::Other(format!(
                "'{}' had {} bytes when listed and {copied} when copied: it changed in {} \
                 during the copy; copy again",
                o.key,
                o.size,
                self.src.location()
            )));
        }
        writer
            .finish()
            .map_err(|e| Error::io(format!("storing '{}' in {}", o.key, self.dst.location()), e))?;
        self.count(o.size);
        Ok(())
    }

    fn count(&self, size: u64) {
        self.stats.copied.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.progress.finish();
    }
}

/// A producer of copy jobs: called with the function that submits one.
type Jobs<'a> = Box<dyn FnOnce(&mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> + 'a>;

fn scope_jobs<'a>(
    f: impl FnOnce(&mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> + 'a,
) -> Jobs<'a> {
    Box::new(f)
}

/// The destination's listing, read as far as the source's has got.
struct DestCursor {
    rx: Receiver<Result<(String, u64)>>,
    next: Option<(String, u64)>,
    done: bool,
}

impl DestCursor {
    /// The size of the destination's object `key`, if it has one. Keys
    /// must be asked in increasing order.
    fn size_of(&mut self, key: &str) -> Result<Option<u64>> {
        loop {
            if self.next.is_none() && !self.done {
                match self.rx.recv() {
                    Ok(Ok(entry)) => self.next = Some(entry),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => self.done = true,
                }
            }
            match &self.next {
                None => return Ok(None),
                Some((k, size)) => match k.as_str().cmp(key) {
                    std::cmp::Ordering::Less => self.next = None,
                    std::cmp::Ordering::Equal => return Ok(Some(*size)),
                    std::cmp::Ordering::Greater => return Ok(None),
                },
            }
        }
    }
}
