//! The repository checksum `rck` of a manifest entry (spec §6.4): the
//! SHA-1 of the file's bytes as stored (compressed and/or encrypted; for
//! a bundle member, its slice), checked beside the checksum of the
//! restored content, so that a damaged repository file is named as such
//! even when the decoder happens to accept it.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::sha1::Sha1;

struct State {
    inner: Box<dyn Read + Send>,
    hash: Sha1,
    count: u64,
}

/// The reader handed to the decoder: hashes what passes through.
struct Hashing(Arc<Mutex<State>>);

/// What is left with the caller once the decoder owns the reader.
pub struct Stored(Arc<Mutex<State>>);

/// `inner` as a reader that hashes its bytes, and the handle that reads
/// the result after decoding.
pub fn hashing(inner: Box<dyn Read + Send>) -> (Box<dyn Read + Send>, Stored) {
    let state = Arc::new(Mutex::new(State {
        inner,
        hash: Sha1::new(),
        count: 0,
    }));
    (Box::new(Hashing(Arc::clone(&state))), Stored(state))
}

fn poisoned() -> io::Error {
    io::Error::other("repository checksum state poisoned")
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.lock().map_err(|_| poisoned())?;
        let n = s.inner.read(buf)?;
        s.hash.update(&buf[..n]);
        s.count += n as u64;
        Ok(n)
    }
}

impl Stored {
    /// Size and SHA-1 of all the stored bytes: whatever the decoder left
    /// unread (a stream may end before its object does) is read here.
    pub fn finish(self) -> io::Result<(u64, String)> {
        let mut s = self.0.lock().map_err(|_| poisoned())?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match s.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            s.hash.update(&buf[..n]);
            s.count += n as u64;
        }
        let hash = std::mem::replace(&mut s.hash, Sha1::new());
        Ok((s.count, hash.hex()))
    }
}
