//! ListObjectsV2, page by page, handing each entry on as it arrives.

use crate::storage::{Entry, ErrorKind, ObjectInfo, Result, StorageError};

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

            // One page (at most 1000 entries) is merged into key order, so
            // directories and objects interleave as in a filesystem listing.
            let mut entries: Vec<Entry> =
                Vec::with_capacity(page.objects.len() + page.prefixes.len());
            for obj in page.objects {
                // S3 only returns keys under the prefix, which is under the
                // root; anything else would be a server bug, and is skipped.
                if let Some(rel) = self.relative(&obj.key) {
                    entries.push(Entry::Object(ObjectInfo {
                        key: rel.to_string(),
                        size: obj.size,
                        modified: obj.modified,
                    }));
                }
            }
            for dir in page.prefixes {
                if last_dir.as_ref().is_some_and(|last| dir <= *last) {
                    continue;
                }
                if let Some(rel) = self.relative(&dir) {
                    entries.push(Entry::Dir(rel.to_string()));
                }
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

fn entry_key(e: &Entry) -> &str {
    match e {
        Entry::Object(o) => &o.key,
        Entry::Dir(d) => d,
    }
}
