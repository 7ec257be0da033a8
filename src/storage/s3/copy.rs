//! Server-side copies: CopyObject for objects up to 5 GiB, a multipart
//! upload of UploadPartCopy ranges above that (S3's limit for one
//! CopyObject). The bytes never pass through walden.

use crate::encoding::uri_encode;
use crate::storage::{CopySource, ErrorKind, Result, StorageError};

use super::client::{self, Call};
use super::{error, xml, S3Storage};

/// The largest object one CopyObject request may copy.
const SINGLE_COPY_MAX: u64 = 5 << 30;
/// Ranges of a multipart copy: big, as no buffer holds them.
const COPY_PART: u64 = 512 << 20;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;

/// `x-amz-copy-source`: `/bucket/key`, the key percent-encoded.
fn copy_source_header(source: &CopySource) -> (String, String) {
    (
        "x-amz-copy-source".to_string(),
        format!("/{}/{}", source.bucket, uri_encode(&source.object, true)),
    )
}

/// The byte ranges (inclusive) of a multipart copy of `size` bytes in
/// ranges of `part` bytes (more when S3's part count demands it).
fn part_ranges(size: u64, part: u64) -> Vec<(u64, u64)> {
    let part = part.max(size.div_ceil(MAX_PARTS)).max(1);
    (0..size.div_ceil(part))
        .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
        .collect()
}

impl S3Storage {
    pub(super) fn copy_object(&self, source: &CopySource, key: &str) -> Result<()> {
        // A smaller threshold (tests) sends objects of a few MiB through
        // the multipart path real sizes take above 5 GiB.
        if source.size > self.copy_part.unwrap_or(SINGLE_COPY_MAX) {
            return self.copy_multipart(source, key);
        }
        let object = self.object_key(key);
        let mut headers = self.create_headers.clone();
        headers.push(copy_source_header(source));
        let call = Call {
            op: "copy",
            method: "PUT",
            object: &object,
            key,
            query: Vec::new(),
            headers,
            // An empty PUT still says Content-Length: 0, as S3 wants.
            body: Some(&[][..]),
        };
        let resp = self.client.send_ok(&call)?;
        let status = resp.status().as_u16();
        let answer = client::read_body(call.op, key, resp)?;
        // Like CompleteMultipartUpload, a copy can fail after the 200.
        if xml::parse_error(&answer).is_some() {
            return Err(error::from_response(call.op, key, status, &answer, None));
        }
        Ok(())
    }

    fn copy_multipart(&self, source: &CopySource, key: &str) -> Result<()> {
        let upload_id = self.create_upload(key)?;
        let result = (|| {
            let mut parts = Vec::new();
            let part = self.copy_part.unwrap_or(COPY_PART);
            for (i, (first, last)) in part_ranges(source.size, part).into_iter().enumerate() {
                let number = i as u32 + 1;
                parts.push((
                    number,
                    self.copy_part(source, key, &upload_id, number, first, last)?,
                ));
            }
            self.complete_upload(key, &upload_id, &parts)
        })();
        if result.is_err() {
            if let Err(e) = self.abort_upload(key, &upload_id) {
                log::warn!("could not abort the unfinished copy of '{key}': {e}");
            }
        }
        result
    }

    fn copy_part(
        &self,
        source: &CopySource,
        key: &str,
        upload_id: &str,
        number: u32,
        first: u64,
        last: u64,
    ) -> Result<String> {
        let object = self.object_key(key);
        let call = Call {
            op: "copy",
            method: "PUT",
            object: &object,
            key,
            query: vec![
                ("partNumber".to_string(), number.to_string()),
                ("uploadId".to_string(), upload_id.to_string()),
            ],
            headers: vec![
                copy_source_header(source),
                (
                    "x-amz-copy-source-range".to_string(),
                    format!("bytes={first}-{last}"),
                ),
            ],
            // An empty PUT still says Content-Length: 0, as S3 wants.
            body: Some(&[][..]),
        };
        let resp = self.client.send_ok(&call)?;
        let status = resp.status().as_u16();
        let answer = client::read_body(call.op, key, resp)?;
        if xml::parse_error(&answer).is_some() {
            return Err(error::from_response(call.op, key, status, &answer, None));
        }
        xml::parse(&answer)
            .ok()
            .and_then(|root| root.child_text("ETag").map(str::to_string))
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                StorageError::new(
                    ErrorKind::Permanent,
                    call.op,
                    key,
                    format!("no ETag in the answer for copied part {number}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_once() {
        let size = (5u64 << 30) + 3;
        let ranges = part_ranges(size, COPY_PART);
        assert_eq!(ranges[0], (0, COPY_PART - 1));
        assert_eq!(ranges.last().map(|r| r.1), Some(size - 1));
        for w in ranges.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        // Huge objects keep within S3's part count.
        let huge = 10u64 << 40;
        assert!(part_ranges(huge, COPY_PART).len() as u64 <= MAX_PARTS);
        assert_eq!(
            part_ranges(huge, COPY_PART).last().map(|r| r.1),
            Some(huge - 1)
        );
        let small = part_ranges((12 << 20) + 5, 5 << 20);
        assert_eq!(
            small,
            vec![
                (0, (5 << 20) - 1),
                (5 << 20, (10 << 20) - 1),
                (10 << 20, (12 << 20) + 4)
            ]
        );
    }

    #[test]
    fn source_header_encodes_the_key() {
        let source = CopySource {
            service: String::new(),
            bucket: "b".into(),
            object: "root/wal_005/a b+c".into(),
            size: 1,
        };
        assert_eq!(copy_source_header(&source).1, "/b/root/wal_005/a%20b%2Bc");
    }
}
