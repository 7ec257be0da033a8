//! Retries with exponential backoff and jitter, as one layer around any
//! backend: every trait call is repeatable, and a download that breaks
//! mid-stream resumes from the byte where it stopped.

use std::io::{self, Read};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Entry, ErrorKind, Leftover, ObjectInfo, Result, Storage};

pub struct Retrying {
    inner: Arc<dyn Storage>,
    max_retries: u32,
}

impl Retrying {
    pub fn new(inner: Arc<dyn Storage>, max_retries: u32) -> Retrying {
        Retrying { inner, max_retries }
    }

    fn run<T>(&self, what: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        run(self.max_retries, what, &mut op)
    }
}

fn run<T>(max_retries: u32, what: &str, op: &mut dyn FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if e.kind == ErrorKind::Transient && attempt < max_retries => {
                attempt += 1;
                let delay = backoff(attempt);
                log::warn!(
                    "{what}: {e}; retry {attempt} of {max_retries} in {} ms",
                    delay.as_millis()
                );
                sleep(delay);
            }
            other => return other,
        }
    }
}

/// Full jitter over an exponential ceiling of 50 ms · 2^n, capped at 5 s:
/// spreads concurrent retries out without stalling archive_command long.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 50u64.saturating_mul(1 << attempt.min(10)).min(5_000);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    Duration::from_millis(ceiling / 2 + nanos % (ceiling / 2 + 1))
}

impl Storage for Retrying {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.run("put", || self.inner.put(key, data))
    }

    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        let reader = self.run("get", || self.inner.get(key, offset))?;
        Ok(Box::new(ResumingReader {
            storage: self.inner.clone(),
            key: key.to_string(),
            offset,
            end: None,
            reader,
            retries_left: self.max_retries,
        }))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        let reader = self.run("get", || self.inner.get_range(key, offset, len))?;
        Ok(Box::new(ResumingReader {
            storage: self.inner.clone(),
            key: key.to_string(),
            offset,
            end: Some(offset.saturating_add(len)),
            reader,
            retries_left: self.max_retries,
        }))
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.run("stat", || self.inner.stat(key))
    }

    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        // A listing that failed half-way is retried whole; entries already
        // delivered are skipped by key, as listings come in key order.
        let mut delivered: Option<String> = None;
        self.run("list", || {
            let seen = delivered.clone();
            let mut latest: Option<String> = None;
            let result = self.inner.list(prefix, recursive, &mut |e| {
                let key = match &e {
                    Entry::Object(o) => o.key.clone(),
                    Entry::Dir(d) => d.clone(),
                };
                if seen.as_ref().is_some_and(|s| key <= *s) {
                    return Ok(());
                }
                latest = Some(key);
                f(e)
            });
            if latest.is_some() {
                delivered = latest;
            }
            result
        })
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        self.run("delete", || self.inner.delete(keys))
    }

    fn create_multipart(&self, key: &str) -> Result<String> {
        self.run("create multipart upload", || {
            self.inner.create_multipart(key)
        })
    }

    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String> {
        self.run("put part", || {
            self.inner.put_part(key, upload_id, number, data)
        })
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        self.run("complete multipart upload", || {
            self.inner.complete_multipart(key, upload_id, parts)
        })
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.run("abort multipart upload", || {
            self.inner.abort_multipart(key, upload_id)
        })
    }

    fn copy_source(&self, key: &str, size: u64) -> Option<super::CopySource> {
        self.inner.copy_source(key, size)
    }

    fn can_copy_from(&self, service: &str) -> bool {
        self.inner.can_copy_from(service)
    }

    fn copy_from(&self, source: &super::CopySource, key: &str) -> Result<()> {
        self.run("copy", || self.inner.copy_from(source, key))
    }

    fn part_size(&self) -> usize {
        self.inner.part_size()
    }

    fn parts_in_flight(&self) -> usize {
        self.inner.parts_in_flight()
    }

    fn list_leftovers(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        // Not retried: a retry would report entries twice, and this is
        // only ever an operator's `st ls -a` / `st rm`, who can rerun it.
        self.inner.list_leftovers(prefix, f)
    }

    fn verify_root(&self) -> Result<()> {
        self.run("open", || self.inner.verify_root())
    }

    fn lookups_are_local(&self) -> bool {
        self.inner.lookups_are_local()
    }
}

/// Re-opens the object at the current offset when the connection breaks.
struct ResumingReader {
    storage: Arc<dyn Storage>,
    key: String,
    offset: u64,
    /// Where a ranged read stops (exclusive).
    end: Option<u64>,
    reader: Box<dyn Read + Send>,
    retries_left: u32,
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.reader.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.retries_left > 0 && e.kind() != io::ErrorKind::InvalidData => {
                    self.retries_left -= 1;
                    log::warn!(
                        "reading '{}' broke at byte {}: {e}; resuming",
                        self.key,
                        self.offset
                    );
                    sleep(backoff(1));
                    let again = match self.end {
                        Some(end) => self.storage.get_range(
                            &self.key,
                            self.offset,
                            end.saturating_sub(self.offset),
                        ),
                        None => self.storage.get(&self.key, self.offset),
                    };
                    self.reader = again.map_err(|se| io::Error::other(se.to_string()))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn transient_errors_are_retried_then_reported() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = run(2, "t", &mut || {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::Transient, "put", "k", "503"))
        });
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = run(5, "t", &mut || {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::Permanent, "put", "k", "403"))
        });
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(100));
        assert!(backoff(30) <= Duration::from_millis(5_000));
        assert!(backoff(30) >= Duration::from_millis(2_500));
    }
}
