//! DeleteObjects in batches of S3's maximum of 1000 keys.

use crate::storage::{ErrorKind, Result, StorageError};

use super::client::{self, Call};
use super::md5::md5;
use super::{error, xml, S3Storage};
use crate::encoding::base64;

const BATCH: usize = 1000;

/// How many failed keys an error message names.
const SHOWN_FAILURES: usize = 5;

fn batch_name(batch: &[String]) -> String {
    match batch {
        [] => String::new(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

impl S3Storage {
    pub(super) fn delete_objects(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(BATCH) {
            self.delete_batch(batch)?;
        }
        Ok(())
    }

    fn delete_batch(&self, batch: &[String]) -> Result<()> {
        let name = batch_name(batch);
        let objects: Vec<String> = batch.iter().map(|k| self.object_key(k)).collect();
        let body = xml::delete_body(&objects);
        let call = Call {
            op: "delete",
            method: "POST",
            object: "",
            key: &name,
            query: vec![("delete".to_string(), String::new())],
            headers: vec![
                // S3 refuses DeleteObjects without a body checksum.
                ("content-md5".to_string(), base64(&md5(body.as_bytes()))),
                ("content-type".to_string(), "application/xml".to_string()),
            ],
            body: Some(body.as_bytes()),
        };
        let resp = self.client.send_ok(&call)?;
        let status = resp.status().as_u16();
        let answer = client::read_body("delete", &name, resp)?;
        if xml::parse_error(&answer).is_some() {
            return Err(error::from_response("delete", &name, status, &answer, None));
        }
        let failures = xml::parse_delete_result(&answer).map_err(|e| {
            StorageError::new(
                ErrorKind::Permanent,
                "delete",
                &name,
                format!("unreadable DeleteObjects answer: {e}"),
            )
        })?;
        // A key that is already gone is what the caller wanted.
        let failures: Vec<_> = failures
            .into_iter()
            .filter(|f| f.code != "NoSuchKey")
            .collect();
        if failures.is_empty() {
            return Ok(());
        }
        let kind = if failures
            .iter()
            .all(|f| error::kind_of_code(&f.code) == Some(ErrorKind::Transient))
        {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
        let shown: Vec<String> = failures
            .iter()
            .take(SHOWN_FAILURES)
            .map(|f| {
                format!(
                    "'{}': {} {}",
                    self.relative(&f.key).unwrap_or(&f.key),
                    f.code,
                    f.message
                )
            })
            .collect();
        let more = failures.len().saturating_sub(SHOWN_FAILURES);
        let mut detail = format!(
            "{} of {} keys not deleted: {}",
            failures.len(),
            batch.len(),
            shown.join("; ")
        );
        if more > 0 {
            detail.push_str(&format!("; and {more} more"));
        }
        Err(StorageError::new(kind, "delete", &name, detail))
    }
}

#[cfg(test)]
mod tests {
    use super::batch_name;

    #[test]
    fn batch_names() {
        assert_eq!(batch_name(&[]), "");
        assert_eq!(batch_name(&["a".to_string()]), "a");
        assert_eq!(
            batch_name(&["a".to_string(), "b".to_string(), "c".to_string()]),
            "a (and 2 more)"
        );
    }
}
