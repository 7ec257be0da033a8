//! Multipart uploads: create, upload parts, complete, abort.

use crate::storage::{ErrorKind, Result, StorageError};

use super::client::{self, Call};
use super::{error, xml, S3Storage};

fn param(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

impl S3Storage {
    pub(super) fn create_upload(&self, key: &str) -> Result<String> {
        let object = self.object_key(key);
        let call = Call {
            op: "create_multipart",
            method: "POST",
            object: &object,
            key,
            query: vec![param("uploads", "")],
            headers: self.create_headers.clone(),
            body: Some(&[][..]),
        };
        let resp = self.client.send_ok(&call)?;
        let body = client::read_body(call.op, key, resp)?;
        xml::parse_upload_id(&body).map_err(|e| {
            StorageError::new(
                ErrorKind::Permanent,
                call.op,
                key,
                format!("unreadable CreateMultipartUpload answer: {e}"),
            )
        })
    }

    pub(super) fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: &[u8],
    ) -> Result<String> {
        let object = self.object_key(key);
        let call = Call {
            op: "put_part",
            method: "PUT",
            object: &object,
            key,
            query: vec![
                param("partNumber", &number.to_string()),
                param("uploadId", upload_id),
            ],
            headers: Vec::new(),
            body: Some(data),
        };
        let resp = self.client.send_ok(&call)?;
        let etag = client::header(&resp, "etag").map(str::to_string);
        let _ = client::read_body(call.op, key, resp);
        etag.filter(|e| !e.is_empty()).ok_or_else(|| {
            StorageError::new(
                ErrorKind::Permanent,
                call.op,
                key,
                format!("no ETag in the answer for part {number}"),
            )
        })
    }

    pub(super) fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        let object = self.object_key(key);
        let body = xml::complete_body(parts);
        let call = Call {
            op: "complete_multipart",
            method: "POST",
            object: &object,
            key,
            query: vec![param("uploadId", upload_id)],
            headers: vec![param("content-type", "application/xml")],
            body: Some(body.as_bytes()),
        };
        let resp = self.client.send_ok(&call)?;
        let status = resp.status().as_u16();
        let answer = client::read_body(call.op, key, resp)?;
        // S3 answers 200 before assembling the object and reports a failure
        // to assemble it in the body.
        if xml::parse_error(&answer).is_some() {
            return Err(error::from_response(call.op, key, status, &answer, None));
        }
        Ok(())
    }

    pub(super) fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let object = self.object_key(key);
        let call = Call {
            op: "abort_multipart",
            method: "DELETE",
            object: &object,
            key,
            query: vec![param("uploadId", upload_id)],
            headers: Vec::new(),
            body: None,
        };
        let resp = self.client.send(&call)?;
        if resp.status().is_success() {
            let _ = client::read_body(call.op, key, resp);
            return Ok(());
        }
        let err = client::error_from(call.op, key, resp);
        // Already aborted (or completed) uploads are gone: what abort wants.
        if err.kind == ErrorKind::NotFound {
            return Ok(());
        }
        Err(err)
    }
}
