//! Single-object requests: PUT, GET (streamed, from an offset) and HEAD.

use std::io::{self, Read};

use crate::storage::{ErrorKind, ObjectInfo, Result, StorageError};

use ureq::http::Response;
use ureq::{Body, BodyReader};

use super::client::{self, Call};
use super::S3Storage;
use crate::time::parse_http_date;

impl S3Storage {
    pub(super) fn put_object(&self, key: &str, data: &[u8]) -> Result<()> {
        let object = self.object_key(key);
        let call = Call {
            op: "put",
            method: "PUT",
            object: &object,
            key,
            query: Vec::new(),
            headers: self.create_headers.clone(),
            body: Some(data),
        };
        // The body is empty on success; reading it frees the connection
        // for reuse. S3 has stored the object once the status says so.
        let resp = self.client.send_ok(&call)?;
        let _ = client::read_body("put", key, resp);
        Ok(())
    }

    /// `key` from `offset` to `end` (exclusive) or to its end.
    pub(super) fn get_object(
        &self,
        key: &str,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Box<dyn Read + Send>> {
        let object = self.object_key(key);
        let mut headers = Vec::new();
        match end {
            Some(end) => headers.push(("range".to_string(), format!("bytes={offset}-{}", end - 1))),
            None if offset > 0 => headers.push(("range".to_string(), format!("bytes={offset}-"))),
            None => {}
        }
        let call = Call {
            op: "get",
            method: "GET",
            object: &object,
            key,
            query: Vec::new(),
            headers,
            body: None,
        };
        let resp = self.client.send(&call)?;
        match resp.status().as_u16() {
            206 => {
                // Bytes from anywhere but the offset asked for would be
                // spliced into the download unnoticed.
                let range = client::header(&resp, "content-range");
                if range.and_then(range_start) != Some(offset) {
                    return Err(StorageError::new(
                        ErrorKind::Permanent,
                        "get",
                        key,
                        format!(
                            "asked for bytes from {offset}, the partial answer has \
                             Content-Range {}",
                            range.unwrap_or("(none)")
                        ),
                    ));
                }
                Ok(Box::new(body_reader(key, offset, resp)?))
            }
            200 => {
                let mut reader = body_reader(key, 0, resp)?;
                if offset > 0 {
                    // The server ignored the range: skip to the offset.
                    io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(|e| {
                        StorageError::new(
                            ErrorKind::Transient,
                            "get",
                            key,
                            format!("reading up to offset {offset}: {e}"),
                        )
                    })?;
                }
                Ok(Box::new(reader))
            }
            // S3 answers 416 to a range starting at or past the end, some
            // compatible servers 400; either way nothing is left to read
            // if the object really is that short.
            416 | 400 if offset > 0 => {
                let err = client::error_from("get", key, resp);
                match self.head_object(key)? {
                    Some(info) if offset >= info.size => Ok(Box::new(io::empty())),
                    _ => Err(err),
                }
            }
            _ => Err(client::error_from("get", key, resp)),
        }
    }

    pub(super) fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let object = self.object_key(key);
        let call = Call {
            op: "stat",
            method: "HEAD",
            object: &object,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
        };
        let resp = self.client.send(&call)?;
        match resp.status().as_u16() {
            404 => return Ok(None),
            200..=299 => {}
            _ => return Err(client::error_from("stat", key, resp)),
        }
        let size = client::header(&resp, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                StorageError::new(
                    ErrorKind::Permanent,
                    "stat",
                    key,
                    "HEAD answer without Content-Length",
                )
            })?;
        let modified = client::header(&resp, "last-modified").and_then(parse_http_date);
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size,
            modified,
        }))
    }
}

/// The first byte of `Content-Range: bytes FIRST-LAST/TOTAL`.
fn range_start(value: &str) -> Option<u64> {
    let (first, _) = value.trim().strip_prefix("bytes ")?.split_once('-')?;
    first.trim().parse().ok()
}

/// The body of a successful GET, checked to arrive whole.
///
/// S3 always sends a Content-Length with an object. Without one, and
/// without chunked encoding (whose end marker ureq checks), the body ends
/// wherever the connection closes, so a connection that drops half way
/// would look like a complete, shorter object. `start` is the object offset
/// the body begins at, so messages count bytes of the whole object.
fn body_reader(
    key: &str,
    start: u64,
    resp: Response<Body>,
) -> Result<LengthChecked<BodyReader<'static>>> {
    let chunked = client::header(&resp, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let expected = resp
        .body()
        .content_length()
        .map(|n| n.saturating_add(start));
    if expected.is_none() && !chunked {
        return Err(StorageError::new(
            ErrorKind::Permanent,
            "get",
            key,
            format!(
                "HTTP {} answer had no length (no Content-Length, not chunked), so walden \
                 cannot tell whether the object arrived whole; S3 always sends one, so \
                 check AWS_ENDPOINT and any proxy in between",
                resp.status().as_u16()
            ),
        ));
    }
    Ok(LengthChecked {
        inner: resp.into_body().into_reader(),
        key: key.to_string(),
        expected,
        received: start,
    })
}

/// Counts the bytes of a body with a known length (`received` and
/// `expected` are object offsets) and turns an early end
/// into an `UnexpectedEof` error. ureq does that check itself today; doing
/// it here as well keeps a short object from ever passing as complete, and
/// gives the error a message naming the object and the byte count.
/// `UnexpectedEof` is what the retry layer resumes from, at the offset
/// reached.
struct LengthChecked<R> {
    inner: R,
    key: String,
    expected: Option<u64>,
    received: u64,
}

impl<R> LengthChecked<R> {
    fn cut_short(&self, cause: &dyn std::fmt::Display) -> io::Error {
        let expected = self.expected.map_or("?".to_string(), |n| n.to_string());
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the connection ended after {} of {expected} bytes of '{}' ({cause})",
                self.received, self.key
            ),
        )
    }
}

impl<R: Read> Read for LengthChecked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() && self.expected.is_some_and(|n| self.received < n) => {
                Err(self.cut_short(&"closed early"))
            }
            Ok(n) => {
                self.received = self.received.saturating_add(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.cut_short(&e)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(data: &'static [u8], expected: Option<u64>) -> LengthChecked<&'static [u8]> {
        LengthChecked {
            inner: data,
            key: "wal_005/x".to_string(),
            expected,
            received: 0,
        }
    }

    #[test]
    fn content_range_start() {
        assert_eq!(
            range_start("bytes 8388608-16777215/16777216"),
            Some(8_388_608)
        );
        assert_eq!(range_start(" bytes 0-0/*"), Some(0));
        assert_eq!(range_start("bytes */100"), None);
        assert_eq!(range_start("items 1-2/3"), None);
        assert_eq!(range_start(""), None);
    }

    #[test]
    fn short_body_is_unexpected_eof() {
        let mut out = Vec::new();
        let err = checked(b"12345678", Some(16))
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"12345678");
        let text = err.to_string();
        assert!(
            text.contains("after 8 of 16 bytes of 'wal_005/x'"),
            "{text}"
        );
    }

    #[test]
    fn whole_or_unknown_length_body_reads_to_the_end() {
        let mut out = Vec::new();
        checked(b"12345678", Some(8)).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"12345678");
        out.clear();
        checked(b"1234", None).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"1234");
    }
}
