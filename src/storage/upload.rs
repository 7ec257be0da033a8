//! Streaming an object of unknown size into storage: bytes fill a part
//! buffer; an object that fits in one part is one `put`, a larger one a
//! multipart upload whose parts go up on worker threads (written inline
//! when only one buffer is allowed, as on the filesystem). At most
//! `parts_in_flight` buffers exist at once, so memory is bounded by
//! `parts_in_flight × part_size` whatever the object's size.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Result, Storage, StorageError};
use crate::cleanup::{self, Tracked};
use crate::codec::FinishWrite;

pub struct ObjectWriter {
    storage: Arc<dyn Storage>,
    key: String,
    part_size: usize,
    current: Vec<u8>,
    multipart: Option<Multipart>,
    failed: Option<StorageError>,
}

/// Part buffers (and upload threads) of one object, whatever
/// `WALG_UPLOAD_CONCURRENCY` asks: more only multiplies memory (a part is
/// 20 MiB by default) without making one object's upload faster.
const MAX_PARTS_IN_FLIGHT: usize = 64;

type PartResult = Result<(u32, String)>;
/// A part to upload: its number and bytes.
type PartJob = (u32, Vec<u8>);

struct Multipart {
    upload_id: String,
    /// Aborts the upload if the process is stopped by a signal.
    _tracked: Tracked,
    jobs: Option<SyncSender<PartJob>>,
    jobs_rx: Arc<Mutex<Receiver<PartJob>>>,
    results_tx: Sender<PartResult>,
    results: Receiver<PartResult>,
    free_tx: Sender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    /// Started as parts are shipped, up to `max_workers`: a small object
    /// never pays for threads it does not use.
    workers: Vec<JoinHandle<()>>,
    max_workers: usize,
    buffers: usize,
    max_buffers: usize,
    sent: u32,
    done: Vec<(u32, String)>,
}

impl ObjectWriter {
    pub fn new(storage: Arc<dyn Storage>, key: &str) -> ObjectWriter {
        let part_size = storage.part_size().max(1);
        ObjectWriter {
            storage,
            key: key.to_string(),
            part_size,
            current: Vec::new(),
            multipart: None,
            failed: None,
        }
    }

    fn start_multipart(&mut self) -> Result<()> {
        let upload_id = self.storage.create_multipart(&self.key)?;
        let tracked = cleanup::track_upload(self.storage.clone(), &self.key, &upload_id);
        let max_buffers = self.storage.parts_in_flight().clamp(1, MAX_PARTS_IN_FLIGHT);
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<PartJob>(0);
        let (results_tx, results_rx) = mpsc::channel();
        let (free_tx, free_rx) = mpsc::channel();
        // Set before any worker starts, so that a failure from here on
        // still aborts the upload (in Drop).
        self.multipart = Some(Multipart {
            upload_id,
            _tracked: tracked,
            jobs: Some(jobs_tx),
            jobs_rx: Arc::new(std::sync::Mutex::new(jobs_rx)),
            results_tx,
            results: results_rx,
            free_tx,
            free: free_rx,
            workers: Vec::new(),
            // One buffer is always being filled; the rest can be uploading.
            max_workers: (max_buffers - 1).max(1),
            buffers: 1,
            max_buffers,
            sent: 0,
            done: Vec::new(),
        });
        Ok(())
    }

    /// Hand the full current buffer to a worker and get an empty one.
    fn ship_part(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            self.start_multipart()?;
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Ok(());
        };
        if mp.max_buffers == 1 {
            // One buffer: the part is written here, by this thread. A local
            // disk takes a part in about a millisecond, while a hand-off to
            // a worker waits for that thread to get a core, which on a busy
            // primary can take longer than the write (wal-burst.sh).
            mp.sent += 1;
            let etag = self
                .storage
                .put_part(&self.key, &mp.upload_id, mp.sent, &self.current)?;
            mp.done.push((mp.sent, etag));
            self.current.clear();
            return Ok(());
        }
        mp.collect()?;
        // A new worker when every one is busy (all buffers but the one
        // being filled are out), up to the limit.
        if mp.workers.len() < mp.max_workers && mp.workers.len() < mp.buffers {
            mp.add_worker(self.storage.clone(), &self.key)?;
        }
        mp.sent += 1;
        let data = std::mem::take(&mut self.current);
        let closed = || {
            StorageError::new(
                super::ErrorKind::Permanent,
                "put",
                "",
                "upload workers stopped",
            )
        };
        mp.jobs
            .as_ref()
            .ok_or_else(closed)?
            .send((mp.sent, data))
            .map_err(|_| closed())?;
        self.current = if mp.buffers < mp.max_buffers {
            mp.buffers += 1;
            Vec::with_capacity(self.part_size)
        } else {
            // Blocks until a worker is done with a part: this is the bound.
            mp.free.recv().map_err(|_| closed())?
        };
        mp.collect()
    }

    fn finish_upload(&mut self) -> Result<()> {
        match self.multipart.as_mut() {
            None => self.storage.put(&self.key, &self.current),
            Some(_) => {
                if !self.current.is_empty() {
                    self.ship_part()?;
                }
                let Some(mp) = self.multipart.as_mut() else {
                    return Ok(());
                };
                mp.jobs = None;
                for w in mp.workers.drain(..) {
                    let _ = w.join();
                }
                mp.collect()?;
                mp.done.sort_by_key(|(n, _)| *n);
                if mp.done.len() != mp.sent as usize {
                    return Err(StorageError::new(
                        super::ErrorKind::Permanent,
                        "put",
                        &self.key,
                        format!("{} of {} parts were uploaded", mp.done.len(), mp.sent),
                    ));
                }
                let parts = std::mem::take(&mut mp.done);
                let upload_id = mp.upload_id.clone();
                // A stop signal that came while the last parts went is
                // obeyed: the upload is being aborted, not published.
                cleanup::await_stop();
                self.storage
                    .complete_multipart(&self.key, &upload_id, &parts)?;
                self.multipart = None;
                Ok(())
            }
        }
    }

    fn record(&mut self, e: StorageError) -> io::Error {
        let err = io::Error::other(e.to_string());
        self.failed = Some(e);
        err
    }
}

impl Multipart {
    fn add_worker(&mut self, storage: Arc<dyn Storage>, key: &str) -> Result<()> {
        let jobs = self.jobs_rx.clone();
        let results = self.results_tx.clone();
        let free = self.free_tx.clone();
        let key_owned = key.to_string();
        let upload_id = self.upload_id.clone();
        let spawned = std::thread::Builder::new().spawn(move || loop {
            let job = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok((number, mut data)) = job else { return };
            let r = storage.put_part(&key_owned, &upload_id, number, &data);
            let _ = results.send(r.map(|etag| (number, etag)));
            data.clear();
            let _ = free.send(data);
        });
        match spawned {
            Ok(handle) => {
                self.workers.push(handle);
                Ok(())
            }
            // Fewer threads than hoped only slows the upload down.
            Err(_) if !self.workers.is_empty() => {
                self.max_workers = self.workers.len();
                Ok(())
            }
            Err(e) => Err(StorageError::new(
                super::ErrorKind::Permanent,
                "put",
                key,
                format!("cannot start an upload thread: {e}"),
            )),
        }
    }

    /// Gather finished parts; the first failed part fails the upload.
    fn collect(&mut self) -> Result<()> {
        while let Ok(result) = self.results.try_recv() {
            self.done.push(result?);
        }
        Ok(())
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.to_string()));
        }
        if self.current.len() == self.part_size {
            if let Err(e) = self.ship_part() {
                return Err(self.record(e));
            }
        }
        let take = buf.len().min(self.part_size - self.current.len());
        let needed = self.current.len() + take;
        if needed > self.current.capacity() {
            // Grow by doubling but never past one part: a Vec left to grow
            // on its own would overshoot the part size by up to half again.
            let target = needed.max(self.current.capacity() * 2).min(self.part_size);
            self.current.reserve_exact(target - self.current.len());
        }
        self.current.extend_from_slice(&buf[..take]);
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for ObjectWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(io::Error::other(e.to_string()));
        }
        match self.finish_upload() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.record(e)),
        }
    }
}

impl Drop for ObjectWriter {
    /// An upload that did not finish leaves no object and no orphan parts.
    fn drop(&mut self) {
        if let Some(mut mp) = self.multipart.take() {
            mp.jobs = None;
            for w in mp.workers.drain(..) {
                let _ = w.join();
            }
            if let Err(e) = self.storage.abort_multipart(&self.key, &mp.upload_id) {
                log::warn!(
                    "could not abort the unfinished upload of '{}': {e}",
                    self.key
                );
            }
        }
    }
}

/// Store everything `source` yields as `key`, unencoded.
#[cfg(test)]
pub fn put_reader(
    storage: &Arc<dyn Storage>,
    key: &str,
    source: &mut dyn io::Read,
) -> io::Result<u64> {
    let mut w = Box::new(ObjectWriter::new(storage.clone(), key));
    let n = io::copy(source, &mut w)?;
    w.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;
    use std::io::Read;

    #[test]
    fn large_objects_go_multipart_and_arrive_whole() {
        let root = std::env::temp_dir().join(format!("walden-upload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(root.clone()));
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 253) as u8).collect();
        put_reader(&storage, "big", &mut &data[..]).unwrap();
        let mut back = Vec::new();
        storage
            .get("big", 0)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        put_reader(&storage, "small", &mut &b"abc"[..]).unwrap();
        let mut names = Vec::new();
        storage
            .list("", true, &mut |e| {
                names.push(format!("{e:?}"));
                Ok(())
            })
            .unwrap();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
