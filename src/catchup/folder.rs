//! Catch-up backups live under `catchup_005/` with exactly the layout of
//! `basebackups_005/` (spec §1.1, WAL-G's `utility.CatchupPath`). Rather
//! than teach every key builder a second folder, the push, list and fetch
//! code runs on a storage view whose `basebackups_005/` is `catchup_005/`.
//! Errors from the storage name the real key, which is what a user finds.

use std::io::Read;
use std::sync::Arc;

use crate::backup::layout::BASEBACKUPS;
use crate::storage::{CopySource, Entry, Leftover, ObjectInfo, Result, Storage};

pub const CATCHUPS: &str = "catchup_005/";

/// `storage` seen with `catchup_005/` in place of `basebackups_005/`.
pub fn catchup_view(storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
    Arc::new(Rebased { inner: storage })
}

struct Rebased {
    inner: Arc<dyn Storage>,
}

/// The real key of a key as the backup code spells it.
fn down(key: &str) -> String {
    match key.strip_prefix(BASEBACKUPS) {
        Some(rest) => format!("{CATCHUPS}{rest}"),
        None => key.to_string(),
    }
}

/// A real key as the backup code expects to see it.
fn up(key: String) -> String {
    match key.strip_prefix(CATCHUPS) {
        Some(rest) => format!("{BASEBACKUPS}{rest}"),
        None => key,
    }
}

impl Storage for Rebased {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put(&down(key), data)
    }
    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.inner.get(&down(key), offset)
    }
    // One ranged request on object stores, not a read to the object's end.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        self.inner.get_range(&down(key), offset, len)
    }
    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.inner.stat(&down(key))?.map(|mut o| {
            o.key = up(o.key);
            o
        }))
    }
    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        self.inner.list(&down(prefix), recursive, &mut |e| {
            f(match e {
                Entry::Object(mut o) => {
                    o.key = up(o.key);
                    Entry::Object(o)
                }
                Entry::Dir(d) => Entry::Dir(up(d)),
            })
        })
    }
    fn delete(&self, keys: &[String]) -> Result<()> {
        let keys: Vec<String> = keys.iter().map(|k| down(k)).collect();
        self.inner.delete(&keys)
    }
    fn create_multipart(&self, key: &str) -> Result<String> {
        self.inner.create_multipart(&down(key))
    }
    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String> {
        self.inner.put_part(&down(key), upload_id, number, data)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<()> {
        self.inner.complete_multipart(&down(key), upload_id, parts)
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.inner.abort_multipart(&down(key), upload_id)
    }
    fn part_size(&self) -> usize {
        self.inner.part_size()
    }
    fn parts_in_flight(&self) -> usize {
        self.inner.parts_in_flight()
    }
    fn list_leftovers(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        self.inner.list_leftovers(&down(prefix), &mut |mut l| {
            l.key = up(l.key);
            f(l)
        })
    }
    fn lookups_are_local(&self) -> bool {
        self.inner.lookups_are_local()
    }
    fn copy_source(&self, key: &str, size: u64) -> Option<CopySource> {
        self.inner.copy_source(&down(key), size)
    }
    fn can_copy_from(&self, service: &str) -> bool {
        self.inner.can_copy_from(service)
    }
    fn copy_from(&self, source: &CopySource, key: &str) -> Result<()> {
        self.inner.copy_from(source, &down(key))
    }
    fn verify_root(&self) -> Result<()> {
        self.inner.verify_root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers only ranged reads, and remembers what was asked.
    #[derive(Default)]
    struct RangesOnly(Mutex<Vec<(String, u64, u64)>>);

    impl Storage for RangesOnly {
        fn location(&self) -> String {
            "ranges-only".into()
        }
        fn put(&self, _: &str, _: &[u8]) -> Result<()> {
            unimplemented!()
        }
        fn get(&self, key: &str, _: u64) -> Result<Box<dyn Read + Send>> {
            panic!("whole-object get of {key}")
        }
        fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
            self.0.lock().unwrap().push((key.into(), offset, len));
            Ok(Box::new(&b"abc"[..]))
        }
        fn stat(&self, _: &str) -> Result<Option<ObjectInfo>> {
            unimplemented!()
        }
        fn list(&self, _: &str, _: bool, _: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
            unimplemented!()
        }
        fn delete(&self, _: &[String]) -> Result<()> {
            unimplemented!()
        }
        fn create_multipart(&self, _: &str) -> Result<String> {
            unimplemented!()
        }
        fn put_part(&self, _: &str, _: &str, _: u32, _: &[u8]) -> Result<String> {
            unimplemented!()
        }
        fn complete_multipart(&self, _: &str, _: &str, _: &[(u32, String)]) -> Result<()> {
            unimplemented!()
        }
        fn abort_multipart(&self, _: &str, _: &str) -> Result<()> {
            unimplemented!()
        }
        fn part_size(&self) -> usize {
            1
        }
        fn parts_in_flight(&self) -> usize {
            1
        }
        fn list_leftovers(&self, _: &str, _: &mut dyn FnMut(Leftover) -> Result<()>) -> Result<()> {
            unimplemented!()
        }
    }

    #[test]
    fn ranged_reads_reach_the_inner_storage_as_ranges() {
        let inner = Arc::new(RangesOnly::default());
        let view = catchup_view(inner.clone());
        let mut got = Vec::new();
        view.get_range("basebackups_005/b/tar_partitions/part_1.tar", 7, 3)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, b"abc");
        assert_eq!(
            *inner.0.lock().unwrap(),
            [("catchup_005/b/tar_partitions/part_1.tar".to_string(), 7, 3)]
        );
    }

    #[test]
    fn keys_move_between_the_folders() {
        assert_eq!(
            down("basebackups_005/base_1/metadata.json"),
            "catchup_005/base_1/metadata.json"
        );
        assert_eq!(down("wal_005/x"), "wal_005/x");
        assert_eq!(
            up("catchup_005/base_1_backup_stop_sentinel.json".into()),
            "basebackups_005/base_1_backup_stop_sentinel.json"
        );
    }
}
