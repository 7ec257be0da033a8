//! Single-object requests: PUT, GET (streamed, from an offset) and HEAD.

use std::io::{self, Read};

use crate::storage::{ErrorKind, ObjectInfo, Result, StorageError};

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

    pub(super) fn get_object(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        let object = self.object_key(key);
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push(("range".to_string(), format!("bytes={offset}-")));
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
            206 => Ok(Box::new(resp.into_body().into_reader())),
            200 => {
                let mut reader = resp.into_body().into_reader();
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
