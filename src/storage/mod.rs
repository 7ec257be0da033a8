//! Object storage: one blocking trait, the backends that implement it, the
//! retry layer that wraps any of them, and the streaming object writer.
//!
//! Keys are relative to the storage root (the prefix's path plus
//! `WALG_STORAGE_PREFIX`) and use `/` as separator, e.g.
//! `wal_005/000000010000000000000001.lz4`.

pub mod capped;
pub mod fs;
pub mod retry;
pub mod s3;
pub mod select;
pub mod upload;

use std::fmt;
use std::io::Read;
use std::time::SystemTime;

/// What a listing yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Object(ObjectInfo),
    /// A "directory" (common prefix) of a non-recursive listing, as a key
    /// ending in `/`.
    Dir(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key relative to the storage root.
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// An object another storage of the same S3 service can copy without
/// the bytes passing through walden (CopyObject's `x-amz-copy-source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    /// Which service holds it (endpoint and region): a server-side copy is
    /// only asked of the same service.
    pub service: String,
    pub bucket: String,
    /// The object's full key in its bucket.
    pub object: String,
    pub size: u64,
}

/// What a write killed midway left behind: a temp object (filesystem) or
/// an unfinished multipart upload (S3). Neither shows in a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Leftover {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// The multipart upload to abort (S3); `None` for a temp object,
    /// which [`Storage::delete`] removes.
    pub upload_id: Option<String>,
}

/// Whether an error is worth retrying decides the retry layer's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// 5xx, 429, timeouts, refused or reset connections.
    Transient,
    /// Everything a retry cannot fix: 403, bad request, full disk, ...
    Permanent,
}

#[derive(Debug, Clone)]
pub struct StorageError {
    pub kind: ErrorKind,
    /// The operation, e.g. "put", "get", "list".
    pub op: &'static str,
    /// The object key or prefix the operation was about.
    pub key: String,
    /// What went wrong, including a hint where one helps.
    pub detail: String,
}

impl StorageError {
    pub fn new(kind: ErrorKind, op: &'static str, key: &str, detail: impl Into<String>) -> Self {
        StorageError {
            kind,
            op,
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "storage {} of '{}' failed: {}",
            self.op, self.key, self.detail
        )
    }
}

impl std::error::Error for StorageError {}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A blocking object store. Every call is safe to repeat with the same
/// arguments, which is what lets [`retry::Retrying`] retry any of them.
pub trait Storage: Send + Sync {
    /// Where this storage points, for messages (`s3://bucket/path`, `/dir`).
    fn location(&self) -> String;

    /// Store `data` as `key` in one request, replacing any existing object.
    /// Durable when this returns.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;

    /// Read `key` from byte `offset` to its end. A missing key is
    /// `ErrorKind::NotFound`.
    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>>;

    /// Read the `len` bytes of `key` from `offset` (fewer if it ends
    /// first): one ranged request on object stores, for a member of a
    /// larger object (a pgBackRest bundle) instead of reading to its end.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.get(key, offset)?.take(len)))
    }

    /// Size and modification time of `key`, `None` when it does not exist.
    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Call `f` for every object under `prefix` (a key prefix, normally
    /// ending in `/`, or empty for the root). Non-recursive listings also
    /// report the sub-directories one level down as [`Entry::Dir`]. Entries
    /// come page by page; nothing is collected in memory.
    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()>;

    /// Delete the given keys; keys that do not exist are not an error.
    fn delete(&self, keys: &[String]) -> Result<()>;

    /// Start a multipart upload of `key`; returns the upload id.
    fn create_multipart(&self, key: &str) -> Result<String>;

    /// Upload part `number` (1-based). Every part but the last has exactly
    /// [`Storage::part_size`] bytes. Returns the part's ETag.
    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String>;

    /// Make the object visible, built from `parts` (number, ETag) in order.
    fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)])
        -> Result<()>;

    /// Throw away an unfinished multipart upload.
    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;

    /// Size of one part of a multipart upload; objects that fit in one part
    /// are stored with a single [`Storage::put`].
    fn part_size(&self) -> usize;

    /// How many parts of one object may be buffered at once (being filled or
    /// being uploaded).
    fn parts_in_flight(&self) -> usize;

    /// What unfinished writes (killed processes) left under `prefix`,
    /// recursively: temp objects, unfinished multipart uploads. They never
    /// show in [`Storage::list`].
    fn list_leftovers(
        &self,
        _prefix: &str,
        _f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        Ok(())
    }

    /// True when asking for a missing key is a local system call rather
    /// than a request (a filesystem), so that trying a few keys is cheaper
    /// than listing a directory that may hold every archived WAL file.
    fn lookups_are_local(&self) -> bool {
        false
    }

    /// Where a server-side copy of `key` (of `size` bytes) can read it;
    /// `None` when this storage has no such thing (a filesystem).
    fn copy_source(&self, _key: &str, _size: u64) -> Option<CopySource> {
        None
    }

    /// Whether [`Storage::copy_from`] can take objects of `service`.
    fn can_copy_from(&self, _service: &str) -> bool {
        false
    }

    /// Store a copy of `source` as `key`, made by the service itself.
    /// Only called when [`Storage::can_copy_from`] said yes; the service
    /// may still refuse (credentials that cannot read the source), which
    /// is a `Permanent` error the caller answers by copying the bytes.
    fn copy_from(&self, _source: &CopySource, key: &str) -> Result<()> {
        Err(StorageError::new(
            ErrorKind::Permanent,
            "copy",
            key,
            format!("{} cannot copy objects server-side", self.location()),
        ))
    }

    /// Check that the storage itself is there, before a missing object is
    /// reported as absent: an absence can end a recovery (wal-fetch exit
    /// 74), a missing bucket or unmounted directory must not.
    fn verify_root(&self) -> Result<()> {
        Ok(())
    }
}
