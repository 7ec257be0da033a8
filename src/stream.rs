//! Moving bytes between readers and writers, with errors that say which
//! side failed: a broken object (corrupt, truncated, wrong key) is not a
//! full disk.

use std::io::{self, Read, Write};

use crate::codec::FinishWrite;
use crate::error::{Error, Result};

const BUFFER: usize = 256 << 10;

/// Read until `buf` is full or the source ends; returns the count.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copy the decoded object `key` to `dest`.
pub fn copy_object(source: &mut dyn Read, dest: &mut dyn Write, key: &str) -> Result<u64> {
    copy_object_limited(source, dest, key, u64::MAX, "")
}

/// Copy the decoded object `key` to `dest`, refusing it when it decodes
/// to more than `limit` bytes: a small object can expand into gigabytes
/// (a decompression bomb), and a WAL file is never bigger than a segment.
/// `why` ends the error message: what the limit is and what to check.
pub fn copy_object_limited(
    source: &mut dyn Read,
    dest: &mut dyn Write,
    key: &str,
    limit: u64,
    why: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Other(format!(
                    "object '{key}' is damaged or cannot be read: {e}; nothing was written"
                )))
            }
        };
        total += n as u64;
        if total > limit {
            return Err(Error::Other(format!(
                "object '{key}' decodes to more than {limit} bytes{why}; nothing was written"
            )));
        }
        dest.write_all(&buf[..n])
            .map_err(|e| Error::io("writing the output", e))?;
    }
}

/// Feed everything `source` (named `what`) yields into the encoding
/// writer for `key`, then finish it; `buf` is reused across calls.
pub fn upload_from(
    source: &mut dyn Read,
    what: &str,
    mut writer: Box<dyn FinishWrite>,
    key: &str,
    buf: &mut [u8],
) -> Result<()> {
    let failed = |e| Error::io(format!("uploading '{key}'"), e);
    loop {
        let n = match source.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {what}"), e)),
        };
        writer.write_all(&buf[..n]).map_err(failed)?;
    }
    writer.finish().map_err(failed)
}

/// A buffer for [`upload_from`].
pub fn buffer() -> Vec<u8> {
    vec![0u8; BUFFER]
}
