//! The filesystem storage (`WALG_FILE_PREFIX`). Objects are plain files
//! under the root. A write goes to a temp name, is fsynced, renamed and the
//! directory fsynced, so a reader never sees a half-written object; temp
//! names never show in listings.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::{Entry, ErrorKind, Leftover, ObjectInfo, Result, Storage, StorageError};
use crate::cleanup;
use crate::localfile::{create_exclusive, random_suffix};

/// Marks temp files, as WAL-G's `<file>.tmp.<time>-<hex>` does.
const TEMP_MARK: &str = ".tmp.";

pub struct FsStorage {
    root: PathBuf,
    part_size: usize,
    parts_in_flight: usize,
}

impl FsStorage {
    pub fn new(root: PathBuf) -> FsStorage {
        FsStorage {
            root,
            // Local disks gain nothing from big buffers or many of them:
            // parts of 2 MiB, written by the producing thread, with their
            // writeback started at once (measured in README, "WAL").
            part_size: 2 << 20,
            parts_in_flight: 1,
        }
    }

    /// The file for `key`, refusing keys that would leave the root.
    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(StorageError::new(
                ErrorKind::Permanent,
                op,
                key,
                "the key is not a plain relative path ('..', '/' or '.' in it)",
            ));
        }
        Ok(self.root.join(rel))
    }
}

fn io_error(op: &'static str, key: &str, path: &Path, e: io::Error) -> StorageError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };
    let hint = match e.raw_os_error() {
        Some(libc::ENOSPC) => "; the disk is full: free space and try again",
        Some(libc::EACCES) | Some(libc::EPERM) => "; check the permissions of the directory",
        _ => "",
    };
    StorageError::new(kind, op, key, format!("{}: {e}{hint}", path.display()))
}

/// `<file>.tmp.<UTC time>-<random>`: the time lets a later clean-up tell
/// a stale leftover of a killed process from a write in progress.
fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        "{TEMP_MARK}{}-{}",
        crate::time::amz_date(SystemTime::now()),
        random_suffix()
    ));
    path.with_file_name(name)
}

fn is_temp(name: &str) -> bool {
    name.contains(TEMP_MARK)
}

/// Move a finished temp file into place durably.
fn publish(temp: &Path, path: &Path) -> io::Result<()> {
    File::open(temp)?.sync_all()?;
    // Not published once a stop signal came (the sync can take long): the
    // clean-up is removing the temp file, and the process ends of it.
    cleanup::await_stop();
    fs::rename(temp, path)?;
    crate::localfile::sync_dir(path.parent().unwrap_or(Path::new("/")))
}

impl FsStorage {
    fn write_new(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path("put", key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_error("put", key, &dir, e))?;
        let temp = temp_name(&path);
        let result = (|| {
            let mut f = create_exclusive(&temp)?;
            // Tracked once it exists: a stop signal from here on removes it.
            let _tracked = cleanup::track_file(temp.clone());
            f.write_all(data)?;
            drop(f);
            publish(&temp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(io_error("put", key, &path, e));
        }
        Ok(())
    }

    /// List `dir_key`; `temps` selects what is reported: finished objects,
    /// or only the temp files of unfinished writes.
    fn walk(
        &self,
        dir_key: &str,
        name_prefix: &str,
        recursive: bool,
        temps: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let dir = if dir_key.is_empty() {
            self.root.clone()
        } else {
            self.path("list", dir_key.trim_end_matches('/'))?
        };
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("list", dir_key, &dir, e)),
        };
        // Sorted per directory, as S3 lists in key order. Only the names
        // are kept while sorting (a directory of 100,000 WAL files is a
        // few MB of names, where names with their metadata were tens of
        // MB); each entry's metadata is read as it is reported.
        let mut names = Names::default();
        for entry in read {
            let entry = entry.map_err(|e| io_error("list", dir_key, &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(name_prefix) {
                continue;
            }
            // The type from the directory itself (no stat); unknown types
            // are looked at when reported.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir && is_temp(&name) != temps {
                continue;
            }
            names.push(&name, is_dir);
        }
        for (name, _) in names.sorted() {
            let path = dir.join(&name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Deleted while we listed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list", dir_key, &path, e)),
            };
            let key = format!("{dir_key}{name}");
            if meta.is_dir() {
                if recursive {
                    self.walk(&format!("{key}/"), "", true, temps, f)?;
                } else if !temps {
                    f(Entry::Dir(format!("{key}/")))?;
                }
            } else if meta.is_file() && is_temp(&name) == temps {
                f(Entry::Object(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified: meta.modified().ok(),
                }))?;
            }
        }
        Ok(())
    }
}

/// The names of one directory, packed into one buffer to be sorted in
/// key order: a directory sorts as its name followed by `/`, as its keys
/// do in S3 (`a.x` before `a/b`).
#[derive(Default)]
struct Names {
    bytes: Vec<u8>,
    /// Start and length of each name in `bytes`; the top bit of the
    /// length marks a directory.
    spans: Vec<(u32, u32)>,
}

const DIR_BIT: u32 = 1 << 31;

impl Names {
    fn push(&mut self, name: &str, is_dir: bool) {
        // Names are at most 255 bytes; a buffer past 4 GiB of names would
        // need 20 million of them in one directory.
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name.as_bytes());
        let len = name.len() as u32 | if is_dir { DIR_BIT } else { 0 };
        self.spans.push((start, len));
    }

    fn name(&self, span: (u32, u32)) -> &str {
        let (start, len) = (span.0 as usize, (span.1 & !DIR_BIT) as usize);
        // Pushed from a `&str`, cut at its own boundaries.
        std::str::from_utf8(&self.bytes[start..start + len]).unwrap_or_default()
    }

    /// The bytes a name sorts by: the name, then `/` for a directory.
    fn sort_key(&self, span: (u32, u32)) -> impl Iterator<Item = u8> + '_ {
        let slash: &[u8] = if span.1 & DIR_BIT != 0 { b"/" } else { b"" };
        self.name(span).bytes().chain(slash.iter().copied())
    }

    fn sorted(mut self) -> impl Iterator<Item = (String, bool)> {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.sort_key(*a).cmp(self.sort_key(*b)));
        spans
            .into_iter()
            .map(move |s| (self.name(s).to_string(), s.1 & DIR_BIT != 0))
    }
}

impl Storage for FsStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.write_new(key, data)
    }

    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        let path = self.path("get", key)?;
        let mut file = File::open(&path).map_err(|e| io_error("get", key, &path, e))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_error("get", key, &path, e))?;
        }
        Ok(Box::new(file))
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path("stat", key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", key, &path, e)),
        }
    }

    fn list(
        &self,
        prefix: &str,
        recursive: bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let (dir_key, name_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        self.walk(dir_key, name_prefix, recursive, false, f)
    }

    fn list_leftovers(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(Leftover) -> Result<()>,
    ) -> Result<()> {
        let (dir_key, name_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        self.walk(dir_key, name_prefix, true, true, &mut |entry| match entry {
            Entry::Object(o) => f(Leftover {
                key: o.key,
                size: o.size,
                modified: o.modified,
                upload_id: None,
            }),
            Entry::Dir(_) => Ok(()),
        })
    }

    fn lookups_are_local(&self) -> bool {
        true
    }

    /// A missing root is not an empty storage: it is an unmounted share or
    /// a wrong setting, and must not be reported as "WAL not found" (which
    /// ends a recovery).
    fn verify_root(&self) -> Result<()> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::new(
                ErrorKind::Permanent,
                "open",
                "",
                format!("storage root {} is not a directory", self.root.display()),
            )),
            Err(e) => Err(StorageError::new(
                ErrorKind::Permanent,
                "open",
                "",
                format!(
                    "storage root {} cannot be read: {e}; is the share mounted and WALG_FILE_PREFIX right?",
                    self.root.display()
                ),
            )),
        }
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            let path = self.path("delete", key)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", key, &path, e)),
            }
        }
        Ok(())
    }

    fn create_multipart(&self, key: &str) -> Result<String> {
        let path = self.path("put", key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_error("put", key, &dir, e))?;
        let temp = temp_name(&path);
        create_exclusive(&temp).map_err(|e| io_error("put", key, &temp, e))?;
        Ok(temp.display().to_string())
    }

    fn put_part(&self, key: &str, upload_id: &str, number: u32, data: &[u8]) -> Result<String> {
        let temp = Path::new(upload_id);
        let offset = (number as u64 - 1) * self.part_size as u64;
        let file = OpenOptions::new()
            .write(true)
            .open(temp)
            .map_err(|e| io_error("put", key, temp, e))?;
        file.write_all_at(data, offset)
            .map_err(|e| io_error("put", key, temp, e))?;
        // The disk writes this part while the next is produced; the fsync
        // of `complete_multipart` then waits for the last part only.
        crate::localfile::start_writeback(file.as_raw_fd(), offset, data.len() as u64);
        Ok(number.to_string())
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        _parts: &[(u32, String)],
    ) -> Result<()> {
        let path = self.path("put", key)?;
        publish(Path::new(upload_id), &path).map_err(|e| io_error("put", key, &path, e))
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        match fs::remove_file(upload_id) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("abort", key, Path::new(upload_id), e)),
        }
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

    fn temp_root(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("walden-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn put_get_list_delete() {
        let root = temp_root("basic");
        let s = FsStorage::new(root.clone());
        s.put("wal_005/b", b"bb").unwrap();
        s.put("wal_005/a", b"a").unwrap();
        s.put("basebackups_005/x/y", b"").unwrap();
        // A stray temp file is invisible.
        fs::write(root.join("wal_005/c.tmp.20260101T000000Z-00"), b"x").unwrap();
        let mut keys = Vec::new();
        s.list("", true, &mut |e| {
            keys.push(e);
            Ok(())
        })
        .unwrap();
        let names: Vec<String> = keys
            .iter()
            .map(|e| match e {
                Entry::Object(o) => o.key.clone(),
                Entry::Dir(d) => d.clone(),
            })
            .collect();
        assert_eq!(names, ["basebackups_005/x/y", "wal_005/a", "wal_005/b"]);
        let mut top = Vec::new();
        s.list("", false, &mut |e| {
            top.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            top,
            [
                Entry::Dir("basebackups_005/".into()),
                Entry::Dir("wal_005/".into())
            ]
        );
        let mut r = s.get("wal_005/b", 1).unwrap();
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "b");
        assert!(s
            .get("wal_005/zz", 0)
            .err()
            .is_some_and(|e| e.is_not_found()));
        assert_eq!(s.stat("wal_005/b").unwrap().unwrap().size, 2);
        s.delete(&["wal_005/a".into(), "wal_005/none".into()])
            .unwrap();
        assert!(s.stat("wal_005/a").unwrap().is_none());
        assert!(s.get("../etc/passwd", 0).is_err());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn listing_is_in_key_order() {
        let root = temp_root("order");
        let s = FsStorage::new(root.clone());
        // Key order as S3 gives it: `a.x` before `a/...`.
        s.put("k/a/b", b"").unwrap();
        s.put("k/a.x", b"").unwrap();
        s.put("k/a0", b"").unwrap();
        let mut keys = Vec::new();
        s.list("k/", true, &mut |e| {
            if let Entry::Object(o) = e {
                keys.push(o.key);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(keys, ["k/a.x", "k/a/b", "k/a0"]);
        fs::remove_dir_all(root).unwrap();
    }
}
