//! Leaving nothing behind when the process is told to stop. PostgreSQL
//! sends SIGTERM to `restore_command` at shutdown, and an operator's ^C
//! is SIGINT: either would otherwise leave a temp file in `pg_wal` forever
//! or a multipart upload whose parts the bucket keeps (and bills) until
//! someone aborts it.
//!
//! Commands that create such things call [`install`] first, while the
//! process has one thread: it blocks the stop signals in that thread (so
//! in every thread started later) and starts one thread that waits for
//! them. Temp files and uploads are registered while they exist; on a
//! signal that thread removes the files, aborts the uploads (for at most
//! [`ABORT_BUDGET`]), then dies of the same signal, so the parent sees
//! what it sent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::storage::Storage;

/// How long a stopping process may spend aborting uploads: a stuck
/// storage must not keep a shutdown waiting.
const ABORT_BUDGET: Duration = Duration::from_secs(5);

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

struct Upload {
    storage: Arc<dyn Storage>,
    key: String,
    upload_id: String,
}

#[derive(Default)]
struct Registry {
    files: HashMap<u64, PathBuf>,
    uploads: HashMap<u64, Upload>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static INSTALL: Once = Once::new();
/// Set when a stop signal arrived: the process is about to end of it.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // A poisoned lock only means another thread panicked while holding
    // it; the map itself is still usable.
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Route SIGTERM, SIGINT and SIGHUP to the cleanup thread. Call before
/// starting any other thread; later calls do nothing.
pub fn install() {
    INSTALL.call_once(|| {
        let set = signal_set();
        // SAFETY: changes only this thread's signal mask; threads started
        // afterwards inherit it. Child processes get a clean mask from
        // std's process spawning.
        let blocked =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } == 0;
        if !blocked {
            return;
        }
        let started = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || wait_and_clean(set));
        if started.is_err() {
            // Without the waiting thread, blocked signals would make the
            // process unstoppable: give them back their default effect.
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        }
    });
}

fn wait_and_clean(set: libc::sigset_t) {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait writes the received signal number into `sig`.
    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
        return;
    }
    STOPPING.store(true, Ordering::SeqCst);
    clean_up();
    // SAFETY: restore the default action and let the signal through in
    // this thread; raising it then ends the process as the sender meant.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig);
}

/// If a stop signal arrived, wait for the clean-up thread to end the
/// process (it does within [`ABORT_BUDGET`]); return at once otherwise.
pub fn await_stop() {
    if !STOPPING.load(Ordering::SeqCst) {
        return;
    }
    let deadline = std::time::Instant::now() + ABORT_BUDGET + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Remove every registered temp file and abort every registered upload.
fn clean_up() {
    let (files, uploads) =
        with_registry(|r| (std::mem::take(&mut r.files), std::mem::take(&mut r.uploads)));
    for path in files.values() {
        let _ = std::fs::remove_file(path);
    }
    if uploads.is_empty() {
        return;
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let aborting = std::thread::Builder::new().spawn(move || {
        for upload in uploads.values() {
            if let Err(e) = upload
                .storage
                .abort_multipart(&upload.key, &upload.upload_id)
            {
                log::warn!(
                    "could not abort the unfinished upload of '{}': {e}",
                    upload.key
                );
            }
        }
        let _ = done_tx.send(());
    });
    if aborting.is_ok() && done_rx.recv_timeout(ABORT_BUDGET).is_err() {
        log::warn!("stopping without waiting longer for unfinished uploads to be aborted");
    }
}

/// Registration of one temp file or upload; dropping it unregisters.
pub struct Tracked(u64);

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.0;
        with_registry(|r| {
            r.files.remove(&id);
            r.uploads.remove(&id);
        });
    }
}

/// Remove `path` (which must exist already) if the process is stopped by a
/// signal while the returned guard lives.
pub fn track_file(path: PathBuf) -> Tracked {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    with_registry(|r| {
        // The clean-up has taken the registry already (it sets STOPPING
        // before it takes the lock): this file would be missed.
        if STOPPING.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&path);
        } else {
            r.files.insert(id, path);
        }
    });
    Tracked(id)
}

/// Abort the multipart upload if the process is stopped by a signal while
/// the returned guard lives.
pub fn track_upload(storage: Arc<dyn Storage>, key: &str, upload_id: &str) -> Tracked {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let upload = Upload {
        storage,
        key: key.to_string(),
        upload_id: upload_id.to_string(),
    };
    let missed = with_registry(|r| {
        if STOPPING.load(Ordering::SeqCst) {
            Some(upload)
        } else {
            r.uploads.insert(id, upload);
            None
        }
    });
    // Started after the clean-up ran: abort it here, outside the lock.
    if let Some(upload) = missed {
        let _ = upload
            .storage
            .abort_multipart(&upload.key, &upload.upload_id);
    }
    Tracked(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_unregister_on_drop() {
        let path = std::env::temp_dir().join(format!("walden-cleanup-{}", std::process::id()));
        let guard = track_file(path.clone());
        assert!(with_registry(|r| r.files.values().any(|p| *p == path)));
        drop(guard);
        assert!(!with_registry(|r| r.files.values().any(|p| *p == path)));
    }
}
