//! ListObjectsV2, page by page, handing each entry on as it arrives.

use crate::storage::{Entry, ErrorKind, Leftover, ObjectInfo, Result, StorageError};

use super::client::{self, Call};
use super::xml;
use super::S3Storage;

impl S3Storage {
    pub(super) fn list_objects(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let full_prefix = self.object_key(prefix);
        let mut token: Option<String> = None;
        // S3 lists in byte order and names each common prefix once, but
        // some compatible servers repeat earlier prefixes on every page;
        // only prefixes beyond the last one reported are new.
        let mut last_dir: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), full_prefix.clone()),
            ];
            if !recursive {
                query.push(("delimiter".to_string(), "/".to_string()));
            }
            if let Some(t) = &token {
                query.push(("continuation-token".to_string(), t.clone()));
            }
            let call = Call {
                op: "list",
                method: "GET",
                object: "",
                key: prefix,
                query,
                headers: Vec::new(),
                body: None,
            };
            let resp = self.client.send_ok(&call)?;
            let body = client::read_body("list", prefix, resp)?;
            let page = xml::parse_list(&body).map_err(|e| {
                StorageError::new(
                    ErrorKind::Permanent,
                    "list",
                    prefix,
                    format!("unreadable ListObjectsV2 answer: {e}"),
                )
            })?;

            // One page (1000 entries from S3, never more than
            // xml::MAX_PAGE_ENTRIES) is merged into key order, so
            // directories and objects interleave as in a filesystem listing.
            let mut entries: Vec<Entry> =
                Vec::with_capacity(page.objects.len() + page.prefixes.len());
            for obj in page.objects {
                let rel = self.listed_key(prefix, &full_prefix, &obj.key)?;
                entries.push(Entry::Object(ObjectInfo {
                    key: rel.to_string(),
                    size: obj.size,
                    modified: obj.modified,
                }));
            }
            for dir in page.prefixes {
                let rel = self.listed_key(prefix, &full_prefix, &dir)?.to_string();
                if last_dir.as_ref().is_some_and(|last| dir <= *last) {
                    continue;
                }
                entries.push(Entry::Dir(rel));
                last_dir = Some(dir);
            }
            entries.sort_by(|a, b| entry_key(a).cmp(entry_key(b)));
            for entry in entries {
                f(entry)?;
            }

            if !page.is_truncated {
                return Ok(());
            }
            match page.next_token {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => {
                    return Err(StorageError::new(
                        ErrorKind::Permanent,
                        "list",
                        prefix,
                        "truncated ListObjectsV2 answer without a new NextContinuationToken",
                    ))
                }
            }
        }
    }
}

impl S3Storage {
    /// ListMultipartUploads under `prefix`: the uploads that processes
    /// killed before completing or aborting them left behind. They hold
    /// storage (and cost money) without being objects.
    pub(super) fn list_uploads(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        let full_prefix = self.object_key(prefix);
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), full_prefix.clone()),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker".to_string(), key.clone()));
                query.push(("upload-id-marker".to_string(), id.clone()));
            }
            let call = Call {
                op: "list_uploads",
                method: "GET",
                object: "",
                key: prefix,
                query,
                headers: Vec::new(),
                body: None,
            };
            let resp = self.client.send_ok(&call)?;
            let body = client::read_body(call.op, prefix, resp)?;
            let page = xml::parse_uploads(&body).map_err(|e| {
                StorageError::new(
                    ErrorKind::Permanent,
                    call.op,
                    prefix,
                    format!("unreadable ListMultipartUploads answer: {e}"),
                )
            })?;
            for upload in page.uploads {
                let rel = self.listed_key(prefix, &full_prefix, &upload.key)?;
                f(Leftover {
                    key: rel.to_string(),
                    size: 0,
                    modified: upload.initiated,
                    upload_id: Some(upload.upload_id),
                })?;
            }
            if !page.is_truncated {
                return Ok(());
            }
            let next = (
                page.next_key_marker.unwrap_or_default(),
                page.next_upload_id_marker.unwrap_or_default(),
            );
            if next.0.is_empty() || markers.as_ref() == Some(&next) {
                return Err(StorageError::new(
                    ErrorKind::Permanent,
                    call.op,
                    prefix,
                    "truncated ListMultipartUploads answer without new markers",
                ));
            }
            markers = Some(next);
        }
    }

    /// The key relative to the root for a key or common prefix the server
    /// listed. Callers rely on every entry starting with the prefix they
    /// asked for (they cut it off to print the rest), and S3 only ever
    /// lists such keys; anything else is a broken or hostile server, and
    /// trusting it would hand out keys from elsewhere in the bucket.
    fn listed_key<'a>(&self, prefix: &str, full_prefix: &str, listed: &'a str) -> Result<&'a str> {
        match self.relative(listed) {
            Some(rel) if listed.starts_with(full_prefix) => Ok(rel),
            _ => Err(StorageError::new(
                ErrorKind::Permanent,
                "list",
                prefix,
                format!(
                    "the server answered with '{listed}', outside the requested prefix \
                     '{full_prefix}'; a correct S3 server never does, so the listing is not \
                     trusted (check AWS_ENDPOINT and any proxy in between)"
                ),
            )),
        }
    }
}

fn entry_key(e: &Entry) -> &str {
    match e {
        Entry::Object(o) => &o.key,
        Entry::Dir(d) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    #[test]
    fn listed_keys_must_be_under_the_prefix() {
        let s = S3Storage::new(config("root")).unwrap();
        let full = s.object_key("wal_005/");
        assert_eq!(
            s.listed_key("wal_005/", &full, "root/wal_005/x").unwrap(),
            "wal_005/x"
        );
        assert_eq!(
            s.listed_key("wal_005/", &full, "root/wal_005/").unwrap(),
            "wal_005/"
        );
        for bad in [
            "root/x",
            "root/wal_00",
            "other/wal_005/x",
            "",
            "rootwal_005/x",
        ] {
            let err = s.listed_key("wal_005/", &full, bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent);
            assert!(err.detail.contains(&format!("'{bad}'")), "{err}");
            assert!(err.detail.contains("outside the requested prefix"), "{err}");
        }

        let s = S3Storage::new(config("")).unwrap();
        assert_eq!(s.listed_key("", "", "anything").unwrap(), "anything");
        assert!(s.listed_key("a/", "a/", "b").is_err());
    }
}
