//! Amazon S3 and S3-compatible object stores, over HTTP with SigV4.

mod client;
mod copy;
mod delete;
mod endpoint;
mod error;
mod list;
mod md5;
mod multipart;
mod objects;
mod sigv4;
mod xml;

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use super::{CopySource, Entry, Leftover, ObjectInfo, Result, Storage};

use client::Client;
use endpoint::Endpoint;
use sigv4::Signer;

pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may
    /// be empty.
    pub root: String,
    /// E.g. `http://127.0.0.1:9000`; `None` means AWS
    /// (`https://s3.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// `x-amz-storage-class` for new objects, unless `None` or `STANDARD`.
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption`, e.g. `AES256` or `aws:kms`.
    pub sse: Option<String>,
    /// KMS key for `aws:kms` server-side encryption.
    pub sse_kms_id: Option<String>,
    /// PEM file with the CA certificates to trust instead of the built-in
    /// roots.
    pub ca_cert_file: Option<PathBuf>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    /// Server-side copies of objects larger than this go in
    /// UploadPartCopy ranges of this size (`None`: S3's limits, 5 GiB
    /// and 512 MiB ranges); `WALDEN_S3_COPY_PART_SIZE`, for tests.
    pub copy_part: Option<u64>,
}

const HIDDEN: &str = "--HIDDEN--";

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key", &HIDDEN)
            .field("secret_key", &HIDDEN)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| HIDDEN),
            )
            .field("storage_class", &self.storage_class)
            .field("sse", &self.sse)
            .field("sse_kms_id", &self.sse_kms_id)
            .field("ca_cert_file", &self.ca_cert_file)
            .field("part_size", &self.part_size)
            .field("parts_in_flight", &self.parts_in_flight)
            .field("copy_part", &self.copy_part)
            .finish()
    }
}

pub struct S3Storage {
    client: Client,
    bucket: String,
    root: String,
    /// Headers for the requests that create objects: storage class and
    /// server-side encryption.
    create_headers: Vec<(String, String)>,
    /// The endpoint and region, for telling whether a server-side copy
    /// between two storages is possible.
    service: String,
    part_size: usize,
    parts_in_flight: usize,
    copy_part: Option<u64>,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl S3Storage {
    pub fn new(cfg: S3Config) -> std::result::Result<Self, String> {
        if cfg.part_size == 0 {
            return Err("S3 part size must be positive".to_string());
        }
        if cfg.parts_in_flight == 0 {
            return Err("S3 parts in flight must be positive".to_string());
        }
        if cfg.access_key.is_empty() || cfg.secret_key.is_empty() {
            return Err(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string(),
            );
        }
        let region = if cfg.region.is_empty() && cfg.endpoint.is_some() {
            "us-east-1"
        } else {
            cfg.region.as_str()
        };
        let endpoint = Endpoint::new(
            cfg.endpoint.as_deref(),
            region,
            &cfg.bucket,
            cfg.force_path_style,
        )?;
        log::debug!(
            "s3: bucket {} via {} ({} style)",
            cfg.bucket,
            endpoint.host(),
            if endpoint.path_style() {
                "path"
            } else {
                "virtual-host"
            }
        );
        let service = format!(
            "{}|{region}",
            cfg.endpoint
                .as_deref()
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .unwrap_or("aws")
                .trim_end_matches('/')
                .to_ascii_lowercase()
        );
        let signer = Signer::new(
            &cfg.access_key,
            &cfg.secret_key,
            cfg.session_token.as_deref(),
            region,
        );
        // Enough idle connections for the parallel part uploads plus the
        // parallel downloads the commands run.
        let connections = cfg.parts_in_flight.saturating_add(4).max(16);
        let client = Client::new(endpoint, signer, cfg.ca_cert_file.as_deref(), connections)?;

        let mut create_headers = Vec::new();
        if let Some(class) = non_empty(&cfg.storage_class).filter(|c| *c != "STANDARD") {
            create_headers.push(("x-amz-storage-class".to_string(), class.to_string()));
        }
        if let Some(sse) = non_empty(&cfg.sse) {
            create_headers.push(("x-amz-server-side-encryption".to_string(), sse.to_string()));
            // S3 rejects a KMS key id with any other kind of encryption.
            if let Some(kms) = non_empty(&cfg.sse_kms_id).filter(|_| sse.starts_with("aws:kms")) {
                create_headers.push((
                    "x-amz-server-side-encryption-aws-kms-key-id".to_string(),
                    kms.to_string(),
                ));
            }
        }

        Ok(S3Storage {
            client,
            bucket: cfg.bucket,
            root: cfg.root.trim_matches('/').to_string(),
            create_headers,
            service,
            part_size: cfg.part_size,
            parts_in_flight: cfg.parts_in_flight,
            copy_part: cfg.copy_part,
        })
    }

    /// The key in the bucket for a key relative to the root.
    fn object_key(&self, key: &str) -> String {
        if self.root.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.root, key)
        }
    }

    /// The key relative to the root for a key in the bucket; `None` for
    /// keys outside the root.
    fn relative<'a>(&self, object: &'a str) -> Option<&'a str> {
        if self.root.is_empty() {
            return Some(object);
        }
        object.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        if self.root.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.root)
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_object(key, data)
    }

    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.get_object(key, offset, None)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        if len == 0 {
            return Ok(Box::new(std::io::empty()));
        }
        let reader = self.get_object(key, offset, Some(offset.saturating_add(len)))?;
        // A server that ignores the range sends the rest of the object.
        Ok(Box::new(reader.take(len)))
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.head_object(key)
    }

    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        self.list_objects(prefix, recursive, f)
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        self.delete_objects(keys)
    }

    fn list_leftovers(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        self.list_uploads(prefix, f)
    }

    fn create_multipart(&self, key: &str) -> Result<String> {
        self.create_upload(key)
    }

    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String> {
        self.upload_part(key, upload_id, number, data)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        self.complete_upload(key, upload_id, parts)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.abort_upload(key, upload_id)
    }

    fn copy_source(&self, key: &str, size: u64) -> Option<CopySource> {
        Some(CopySource {
            service: self.service.clone(),
            bucket: self.bucket.clone(),
            object: self.object_key(key),
            size,
        })
    }

    fn can_copy_from(&self, service: &str) -> bool {
        self.service == service
    }

    fn copy_from(&self, source: &CopySource, key: &str) -> Result<()> {
        self.copy_object(source, key)
    }

    fn part_size(&self) -> usize {
        self.part_size
    }

    fn parts_in_flight(&self) -> usize {
        self.parts_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config(root: &str) -> S3Config {
        S3Config {
            bucket: "bucket".to_string(),
            root: root.to_string(),
            endpoint: Some("http://127.0.0.1:9".to_string()),
            region: "us-east-1".to_string(),
            force_path_style: false,
            access_key: "AKIDEXAMPLEKEY".to_string(),
            secret_key: "very-secret-value".to_string(),
            session_token: Some("session-token-value".to_string()),
            storage_class: Some("STANDARD".to_string()),
            sse: Some("aws:kms".to_string()),
            sse_kms_id: Some("kms-key".to_string()),
            ca_cert_file: None,
            part_size: 5 << 20,
            parts_in_flight: 4,
            copy_part: None,
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", config("root"));
        assert!(!text.contains("AKIDEXAMPLEKEY"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!text.contains("session-token-value"), "{text}");
        assert!(text.contains("--HIDDEN--"));
        assert!(text.contains("bucket: \"bucket\""));
    }

    #[test]
    fn keys_map_under_root_and_back() {
        let s = S3Storage::new(config("a/b/")).unwrap();
        assert_eq!(s.location(), "s3://bucket/a/b");
        assert_eq!(s.object_key("wal_005/x"), "a/b/wal_005/x");
        assert_eq!(s.object_key(""), "a/b/");
        assert_eq!(s.relative("a/b/wal_005/x"), Some("wal_005/x"));
        assert_eq!(s.relative("a/bc/x"), None);
        assert_eq!(s.relative("other"), None);

        let s = S3Storage::new(config("")).unwrap();
        assert_eq!(s.location(), "s3://bucket");
        assert_eq!(s.object_key("k"), "k");
        assert_eq!(s.relative("k"), Some("k"));
    }

    #[test]
    fn create_headers_skip_standard_class() {
        let s = S3Storage::new(config("")).unwrap();
        let names: Vec<&str> = s.create_headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-amz-server-side-encryption",
                "x-amz-server-side-encryption-aws-kms-key-id"
            ]
        );

        let mut cfg = config("");
        cfg.storage_class = Some("STANDARD_IA".to_string());
        cfg.sse = Some("AES256".to_string());
        let s = S3Storage::new(cfg).unwrap();
        assert_eq!(
            s.create_headers,
            vec![
                ("x-amz-storage-class".to_string(), "STANDARD_IA".to_string()),
                (
                    "x-amz-server-side-encryption".to_string(),
                    "AES256".to_string()
                ),
            ]
        );
    }

    #[test]
    fn new_reports_bad_config() {
        let mut cfg = config("");
        cfg.ca_cert_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        let err = S3Storage::new(cfg).err().unwrap_or_default();
        assert!(
            err.contains("cannot read CA certificate file /nonexistent/ca.pem"),
            "{err}"
        );

        let mut cfg = config("");
        cfg.bucket = String::new();
        assert!(S3Storage::new(cfg).is_err());

        let mut cfg = config("");
        cfg.part_size = 0;
        assert!(S3Storage::new(cfg).is_err());
    }

    #[test]
    fn unreachable_server_is_transient() {
        // Port 9 (discard) is closed on test machines: connection refused.
        let s = S3Storage::new(config("r")).unwrap();
        let err = s.put("k", b"data").unwrap_err();
        assert_eq!(err.kind, super::super::ErrorKind::Transient, "{err}");
        assert_eq!(err.op, "put");
        assert_eq!(err.key, "k");
    }
}
