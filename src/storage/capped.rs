//! A storage seen with fewer part buffers per object: a command that
//! writes many objects at once (copy) bounds its memory by objects in
//! flight × parts per object × part size, and takes its parallelism from
//! the objects rather than from the parts of one.

use std::io::Read;
use std::sync::Arc;

use super::{CopySource, Entry, Leftover, ObjectInfo, Result, Storage};

pub struct Capped {
    inner: Arc<dyn Storage>,
    parts_in_flight: usize,
}

impl Capped {
    pub fn new(inner: Arc<dyn Storage>, parts_in_flight: usize) -> Capped {
        Capped {
            parts_in_flight: parts_in_flight.clamp(1, inner.parts_in_flight().max(1)),
            inner,
        }
    }
}

impl Storage for Capped {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put(key, data)
    }

    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.inner.get(key, offset)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        self.inner.get_range(key, offset, len)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.stat(key)
    }

    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        self.inner.list(prefix, recursive, f)
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        self.inner.delete(keys)
    }

    fn create_multipart(&self, key: &str) -> Result<String> {
        self.inner.create_multipart(key)
    }

    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String> {
        self.inner.put_part(key, upload_id, number, data)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        self.inner.complete_multipart(key, upload_id, parts)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.inner.abort_multipart(key, upload_id)
    }

    fn part_size(&self) -> usize {
        self.inner.part_size()
    }

    fn parts_in_flight(&self) -> usize {
        self.parts_in_flight
    }

    fn list_leftovers(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        self.inner.list_leftovers(prefix, f)
    }

    fn lookups_are_local(&self) -> bool {
        self.inner.lookups_are_local()
    }

    fn verify_root(&self) -> Result<()> {
        self.inner.verify_root()
    }

    fn copy_source(&self, key: &str, size: u64) -> Option<CopySource> {
        self.inner.copy_source(key, size)
    }

    fn can_copy_from(&self, service: &str) -> bool {
        self.inner.can_copy_from(service)
    }

    fn copy_from(&self, source: &CopySource, key: &str) -> Result<()> {
        self.inner.copy_from(source, key)
    }
}
