//! Restoring the backups of a chain at the same time instead of one after
//! the other. Every tar of every backup is one job, queued in the order
//! the backups are composed (oldest first forward, newest first reverse);
//! `WALG_DOWNLOAD_CONCURRENCY` threads take them in that order, so a
//! backup's tars start while the previous backup's last tars are still
//! being written, and the second thread no longer idles when a backup has
//! a single tar (a delta's increments usually fit in one).
//!
//! What must stay in order is each file's writes: a member of the backup
//! at position `p` is written only once the nearest earlier backup that
//! writes the same file (not `IsSkipped` there) has written it, or has
//! finished all of its tars without it, and so on back. Each file then
//! sees exactly the writes of the one-after-the-other restore, in the
//! same order. Waiting cannot deadlock: a job waits only for backups
//! queued before it, whose jobs were all taken before its own, and the
//! first backup's jobs never wait.
//!
//! Bookkeeping is one bit per file each backup restores, next to the
//! names [`super::metadata_read`] already keeps.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{FileSet, SKIPPED};
use crate::error::{Error, Result};

/// Progress of the chain's backups, by position in the queue.
pub struct Tracker<'c> {
    files: Vec<&'c FileSet>,
    /// Per position: one bit per file of its set, set once written.
    written: Vec<Vec<AtomicU64>>,
    /// Per position: tars not finished yet.
    remaining: Vec<AtomicUsize>,
    finished: Vec<AtomicBool>,
    lock: Mutex<()>,
    changed: Condvar,
    stop: Arc<AtomicBool>,
}

/// How often a waiting job looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

impl<'c> Tracker<'c> {
    /// `files[p]` and `tars[p]`: what the backup at position `p` restores
    /// and how many of its tars are queued.
    pub fn new(files: Vec<&'c FileSet>, tars: &[usize], stop: Arc<AtomicBool>) -> Tracker<'c> {
        let written = files
            .iter()
            .map(|f| {
                (0..f.len().div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            })
            .collect();
        Tracker {
            written,
            remaining: tars.iter().map(|&n| AtomicUsize::new(n)).collect(),
            finished: tars.iter().map(|&n| AtomicBool::new(n == 0)).collect(),
            files,
            lock: Mutex::new(()),
            changed: Condvar::new(),
            stop,
        }
    }

    /// Whether the earlier backups are done with file `name` as far as
    /// the backup at `pos` is concerned.
    fn ready(&self, pos: usize, name: &[u8]) -> bool {
        for q in (0..pos).rev() {
            let files = self.files[q];
            let Some(i) = files.index(name) else {
                continue;
            };
            if files.flags_at(i) & SKIPPED != 0 {
                continue;
            }
            if self.written[q][i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0 {
                return true;
            }
            if self.finished[q].load(Ordering::Acquire) {
                continue;
            }
            return false;
        }
        true
    }

    /// Block until member `name` of the backup at `pos` may be written.
    pub fn wait(&self, pos: usize, name: &[u8]) -> Result<()> {
        if self.ready(pos, name) {
            return Ok(());
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.ready(pos, name) {
                return Ok(());
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Other(
                    "stopped: another tar of the delta chain failed".into(),
                ));
            }
            guard = self
                .changed
                .wait_timeout(guard, POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The backup at `pos` has written file `name`.
    pub fn written(&self, pos: usize, name: &[u8]) {
        if let Some(i) = self.files[pos].index(name) {
            self.written[pos][i / 64].fetch_or(1 << (i % 64), Ordering::Release);
            self.wake();
        }
    }

    /// One tar of the backup at `pos` is extracted.
    pub fn tar_done(&self, pos: usize) {
        if self.remaining[pos].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finished[pos].store(true, Ordering::Release);
            self.wake();
        }
    }

    fn wake(&self) {
        // Taken so that a waiter between its check and its wait is not
        // missed.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::metadata_read::INCREMENTED;

    #[test]
    fn a_file_waits_for_the_nearest_earlier_writer() {
        // Forward order: the full backup, then two deltas.
        let full = FileSet::from_pairs([(&b"/a"[..], 0), (b"/b", 0)]);
        let d1 = FileSet::from_pairs([(&b"/a"[..], INCREMENTED), (b"/b", SKIPPED), (b"/c", 0)]);
        let d2 = FileSet::from_pairs([
            (&b"/a"[..], INCREMENTED),
            (b"/b", INCREMENTED),
            (b"/c", INCREMENTED),
            (b"/d", 0),
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let t = Tracker::new(vec![&full, &d1, &d2], &[2, 1, 1], stop.clone());
        // Nothing before the full backup; a file no earlier backup has.
        assert!(t.ready(0, b"/a"));
        assert!(t.ready(2, b"/d"));
        assert!(!t.ready(1, b"/a"));
        t.written(0, b"/a");
        assert!(t.ready(1, b"/a"));
        // d1 writes /a too: d2 waits for d1, not for the full backup.
        assert!(!t.ready(2, b"/a"));
        t.written(1, b"/a");
        assert!(t.ready(2, b"/a"));
        // d1 skipped /b: d2 waits for the full backup's copy, or for the
        // full backup to have finished all its tars without it.
        assert!(!t.ready(2, b"/b"));
        t.tar_done(0);
        assert!(!t.ready(2, b"/b"));
        t.tar_done(0);
        assert!(t.ready(2, b"/b"));
        assert!(!t.ready(2, b"/c"));
        t.written(1, b"/c");
        assert!(t.ready(2, b"/c"));
        t.wait(2, b"/c").unwrap();
    }

    #[test]
    fn a_waiting_file_is_released_by_its_writer_or_by_a_failure() {
        let full = FileSet::from_pairs([(&b"/a"[..], 0), (b"/b", 0)]);
        let delta = FileSet::from_pairs([(&b"/a"[..], INCREMENTED), (b"/b", INCREMENTED)]);
        let stop = Arc::new(AtomicBool::new(false));
        let t = Tracker::new(vec![&full, &delta], &[1, 1], stop.clone());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| t.wait(1, b"/a"));
            std::thread::sleep(Duration::from_millis(50));
            t.written(0, b"/a");
            waiter.join().unwrap().unwrap();
            let waiter = s.spawn(|| t.wait(1, b"/b"));
            stop.store(true, Ordering::Relaxed);
            let e = waiter.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("another tar"), "{e}");
        });
    }
}
