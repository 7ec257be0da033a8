//! The copy composer (`--copy-composer`, spec §8.3): a full backup that
//! copies the tars of the previous full backup whose files did not change
//! instead of reading and uploading those files again.
//!
//! WAL-G's rules: the reference is the LATEST backup, or its
//! `DeltaFullName` when LATEST is a delta; no backup at all means the
//! regular composer. A tar of the reference is reused when every member
//! its `TarFileSets` lists is found again by the walk with the `MTime` its
//! `Files` entry has; it is copied by the storage (S3 CopyObject, or the
//! bytes through walden where there is no such thing: WAL-G's
//! `Folder.CopyObject`) to `tar_partitions/copy_<k>.tar.<ext>`, `k` from
//! 0, and keeps the reference's compression and encryption. The
//! `pg_control` and `backup_label` tars are never reused.
//!
//! Where walden differs, and why:
//! - A file whose mtime is within a second of the reference's start is
//!   taken as changed (it may have been written during the reference's
//!   copy after it was read there, with the same coarse timestamp), as
//!   the delta backup's skip rule (`delta/mod.rs`).
//! - Only regular files count as unchanged: a tar holding directory or
//!   symlink headers is packed anew (a directory's mtime moves whenever a
//!   file in it is created or removed). New headers go into a tar of
//!   their own, so the data tars of this backup can be reused next time.
//! - The reference must come from the same cluster (its sentinel's
//!   `SystemIdentifier`) and have a `files_metadata.json`; otherwise the
//!   regular composer runs, with an INFO line saying why (WAL-G fails
//!   on the second and does not look at the first).
//! - Files that changed since the reference (or are new) and unchanged
//!   files of tars that could not be reused go to different tars, and a
//!   file of at least the tar size threshold gets a tar of its own
//!   ([`Groups`]), so a tar of files at rest can be copied next time
//!   (WAL-G keeps packing them with the changed ones, so a tar mixing
//!   a busy catalog with a cold table is never reused).
//! - An uncompressed tar is copied as `copy_<k>.tar` (WAL-G:
//!   `copy_<k>.tar.tar`, W9; both read as uncompressed), and the copied
//!   bytes are counted in the backup's sizes (WAL-G leaves them out).
//!
//! Memory: the reference's file list is an index in a temporary file
//! (`delta/index.rs`); its `TarFileSets` and the files the walk holds back
//! (unchanged files of tars that may be reused) go to temporary files
//! too; in memory is one small record per reference tar.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backup::catalog;
use crate::backup::delta::index::BaseIndex;
use crate::backup::files_metadata::{Flag, Spill};
use crate::backup::layout::{self, TarKind};
use crate::backup::tars::{Member, What};
use crate::codec::FinishWrite;
use crate::error::{Error, Result};
use crate::localfile::anonymous_file;
use crate::storage::upload::ObjectWriter;
use crate::storage::{ErrorKind, Storage};

/// See the module comment: files this close to the reference's start
/// are not trusted to be unchanged.
const MTIME_MARGIN: Duration = Duration::from_secs(1);

/// The composer groups of the copy composer: files packed during the walk
/// (new or changed since the reference) and unchanged files packed after
/// it never share a tar, and a file of at least the tar size threshold
/// starts a tar of its own (it fills it anyway), so that a large file at
/// rest is reused whatever happens to the small files walked before it.
pub struct Groups {
    threshold: u64,
    next_alone: u64,
}

const CHANGED: u64 = 1;
const UNCHANGED: u64 = 2;

impl Groups {
    pub fn new(threshold: u64) -> Groups {
        Groups {
            threshold,
            next_alone: 16,
        }
    }

    /// The group of a file of `size` bytes.
    pub fn of(&mut self, changed: bool, size: u64) -> u64 {
        if size >= self.threshold {
            self.next_alone += 1;
            return self.next_alone;
        }
        if changed {
            CHANGED
        } else {
            UNCHANGED
        }
    }
}

/// One tar of the reference.
struct RefTar {
    /// Its object base name (`part_003.tar.zst`).
    name: String,
    /// Members its `TarFileSets` entry lists.
    members: u64,
    /// Of them, found unchanged by the walk.
    unchanged: u64,
    /// Some member changed, vanished, or is no regular file.
    broken: bool,
    /// Content bytes of the unchanged members.
    bytes: u64,
}

impl RefTar {
    fn reusable(&self) -> bool {
        !self.broken
            && self.members > 0
            && self.unchanged == self.members
            && layout::tar_kind(&self.name) == TarKind::Data
    }
}

/// The previous full backup, and what the walk found of its tars.
pub struct Copier {
    reference: String,
    start_time: Option<SystemTime>,
    index: BaseIndex,
    tars: Vec<RefTar>,
    /// The reference's `TarFileSets` as (tar number, member) records, in
    /// its order: the member lists of the tars that are copied.
    sets: BufWriter<File>,
    /// Unchanged files held back by the walk: (tar number, path relative
    /// to PGDATA) records.
    held: BufWriter<File>,
}

/// What [`Copier::finish`] did.
pub struct Copied {
    /// The copied tars' `Files` and `TarFileSets` lines.
    pub spill: Spill,
    /// Bytes of the copied objects (as stored).
    pub stored: u64,
    /// Content bytes of the files in them.
    pub content: u64,
}

fn temp_failed(e: io::Error) -> Error {
    Error::io("writing the copy composer's lists to a temporary file", e)
}

fn text(s: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    match catalog::field(s, key) {
        Some(serde_json::Value::String(t)) if !t.is_empty() => Some(t.clone()),
        _ => None,
    }
}

fn fallback(why: &str) -> Result<Option<Copier>> {
    log::info!("Failed to init the CopyComposer, will use the RegularComposer instead: {why}");
    Ok(None)
}

impl Copier {
    /// The reference backup and its file list, or `None` when there is
    /// none to copy from (then the regular composer runs; the INFO line
    /// says why). `system_identifier`: this server's.
    pub fn find(
        storage: &Arc<dyn Storage>,
        system_identifier: Option<u64>,
    ) -> Result<Option<Copier>> {
        let Some(latest) = catalog::latest(storage)? else {
            return fallback("couldn't get the previous backup name: there is no backup");
        };
        let sentinel = catalog::read_sentinel(storage, &latest.name)?;
        let (name, sentinel) = match text(&sentinel, "DeltaFullName") {
            Some(full) if full != latest.name => match catalog::read_sentinel(storage, &full) {
                Ok(s) => (full, s),
                Err(e) => {
                    return fallback(&format!(
                        "the full backup {full} of LATEST ({}) cannot be read: {e}",
                        latest.name
                    ))
                }
            },
            _ => (latest.name, sentinel),
        };
        let theirs = catalog::field(&sentinel, "SystemIdentifier").and_then(|v| v.as_u64());
        if let (Some(theirs), Some(ours)) = (theirs, system_identifier) {
            if theirs != ours {
                return fallback(&format!(
                    "the previous full backup {name} is of another cluster (system identifier {theirs}, this server's is {ours})"
                ));
            }
        }
        let start_time = text(&sentinel, "StartTime").and_then(|t| crate::time::parse_iso8601(&t));
        let mut numbers: HashMap<String, u32> = HashMap::new();
        let mut tars: Vec<RefTar> = Vec::new();
        let mut sets = BufWriter::with_capacity(
            64 * 1024,
            anonymous_file("the copy composer's list of the previous backup's tars")?,
        );
        let index = {
            let mut sink = |tar: &str, member: &str| -> io::Result<u32> {
                let n = match numbers.get(tar) {
                    Some(&n) => n,
                    None => {
                        let n = u32::try_from(tars.len()).unwrap_or(u32::MAX);
                        numbers.insert(tar.to_string(), n);
                        tars.push(RefTar {
                            name: tar.to_string(),
                            members: 0,
                            unchanged: 0,
                            broken: false,
                            bytes: 0,
                        });
                        n
                    }
                };
                if let Some(t) = tars.get_mut(n as usize) {
                    t.members += 1;
                }
                write_record(&mut sets, n, member.as_bytes())?;
                Ok(n)
            };
            match BaseIndex::load_with_tars(storage, &name, &mut sink) {
                Ok(index) => index,
                Err(Error::Storage(e)) if e.is_not_found() => {
                    return fallback(&format!(
                        "the previous full backup {name} has no files_metadata.json (taken with --without-files-metadata?)"
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        log::info!(
            "Copy composer: tars of {name} whose files did not change are copied ({} tars listed)",
            tars.len()
        );
        Ok(Some(Copier {
            reference: name,
            start_time,
            index,
            tars,
            sets,
            held: BufWriter::with_capacity(
                64 * 1024,
                anonymous_file("the copy composer's list of unchanged files")?,
            ),
        }))
    }

    /// The walk found `rel` (relative to PGDATA): true when it is held
    /// back (an unchanged regular file of a tar that may be copied), false
    /// when it is to be packed now.
    pub fn hold(&mut self, rel: &[u8], is_file: bool, meta: &Metadata) -> Result<bool> {
        let name = [b"/", rel].concat();
        let Some(entry) = self.index.get(&name)? else {
            return Ok(false);
        };
        let Some(n) = entry.tar else {
            return Ok(false);
        };
        let Some(tar) = self.tars.get_mut(n as usize) else {
            return Ok(false);
        };
        let mtime = meta.modified().ok();
        let settled = match (mtime, self.start_time) {
            (Some(m), Some(start)) => m + MTIME_MARGIN < start,
            _ => true,
        };
        if !is_file || tar.broken || mtime.is_none() || entry.mtime != mtime || !settled {
            tar.broken = true;
            return Ok(false);
        }
        tar.unchanged += 1;
        tar.bytes += meta.len();
        write_record(&mut self.held, n, rel).map_err(temp_failed)?;
        Ok(true)
    }

    /// After the walk: the held files of tars that are not copied go to
    /// `add` (looked at again: one that vanished since is left out, as
    /// the rating composer does), then the reused tars are copied into
    /// backup `new_name`.
    pub fn finish(
        self,
        storage: &Arc<dyn Storage>,
        pgdata: &Path,
        new_name: &str,
        groups: &mut Groups,
        add: &mut dyn FnMut(Member) -> Result<()>,
    ) -> Result<Copied> {
        let from_prefix = layout::partitions_prefix(&self.reference);
        // A reusable tar must still be there: one that is not (a damaged
        // reference) has its files packed instead.
        let mut sizes: Vec<Option<u64>> = vec![None; self.tars.len()];
        for (i, tar) in self.tars.iter().enumerate() {
            if !tar.reusable() {
                continue;
            }
            let key = format!("{from_prefix}{}", tar.name);
            match storage.stat(&key)? {
                Some(o) => sizes[i] = Some(o.size),
                None => log::warn!(
                    "'{key}' is listed in {}'s files_metadata.json but is not in {}: its files are packed anew",
                    self.reference,
                    storage.location()
                ),
            }
        }
        let reusable: Vec<bool> = sizes.iter().map(Option::is_some).collect();
        let mut held = rewound(self.held)?;
        let mut rel = Vec::new();
        while let Some(n) = read_record(&mut held, &mut rel)? {
            if reusable.get(n as usize).copied().unwrap_or(false) {
                continue;
            }
            let path = pgdata.join(std::ffi::OsStr::from_bytes(&rel));
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => {
                    log::warn!("'{}' is no longer a file; skipped", path.display());
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::warn!("'{}' vanished during the backup; skipped", path.display());
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
            };
            let group = groups.of(false, meta.len());
            add(Member {
                name: [b"/", rel.as_slice()].concat(),
                path,
                meta,
                what: What::File,
                group: Some(group),
                updates: 0,
            })?;
        }

        let mut copies: Vec<Option<String>> = vec![None; self.tars.len()];
        let (mut stored, mut content, mut count) = (0u64, 0u64, 0usize);
        let to_prefix = layout::partitions_prefix(new_name);
        for (i, tar) in self.tars.iter().enumerate() {
            let Some(size) = sizes[i] else {
                continue;
            };
            let new = copy_name(count, &tar.name);
            log::info!("Copying {} ...", tar.name);
            copy_object(
                storage,
                &format!("{from_prefix}{}", tar.name),
                size,
                &format!("{to_prefix}{new}"),
            )?;
            stored += size;
            content += tar.bytes;
            count += 1;
            copies[i] = Some(new);
        }

        let mut spill = Spill::new()?;
        let mut sets = rewound(self.sets)?;
        let mut member = Vec::new();
        while let Some(n) = read_record(&mut sets, &mut member)? {
            let Some(Some(copy)) = copies.get(n as usize) else {
                continue;
            };
            let mtime = self.index.get(&member)?.and_then(|e| e.mtime);
            spill.record_as(copy, &member, mtime, Flag::Whole, None, 0)?;
        }
        log::info!(
            "Copy composer: copied {count} of the {} tars of {} ({stored} bytes stored, {content} bytes of files not read again)",
            self.tars.len(),
            self.reference
        );
        Ok(Copied {
            spill,
            stored,
            content,
        })
    }
}

/// `copy_<k>.tar.<ext>` with the extension of the old name (`copy_<k>.tar`
/// for an uncompressed one).
fn copy_name(k: usize, old: &str) -> String {
    let stem = format!("copy_{k}");
    match old.rsplit_once('.') {
        Some((_, ext)) if ext != "tar" => layout::tar_name(&stem, ext),
        _ => layout::tar_name(&stem, ""),
    }
}

/// Copy object `from` to `to` in the same storage: by the service where
/// it can (S3 CopyObject), else through walden; `size`: its size.
fn copy_object(storage: &Arc<dyn Storage>, from: &str, size: u64, to: &str) -> Result<()> {
    if let Some(source) = storage.copy_source(from, size) {
        if storage.can_copy_from(&source.service) {
            match storage.copy_from(&source, to) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Permanent => {
                    log::warn!(
                        "server-side copy of '{from}' refused ({e}); copying it through walden"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut reader = storage.get(from, 0)?;
    let mut writer = Box::new(ObjectWriter::new(storage.clone(), to));
    let copied = io::copy(&mut reader, &mut writer)
        .map_err(|e| Error::io(format!("copying '{from}'"), e))?;
    if copied != size {
        // Dropping the writer unfinished leaves nothing behind.
        return Err(Error::Other(format!(
            "'{from}' had {size} bytes and {copied} were read: it changed during the copy"
        )));
    }
    writer
        .finish()
        .map_err(|e| Error::io(format!("storing '{to}'"), e))
}

/// u32 tar number, u32 length, bytes.
fn write_record(out: &mut impl Write, n: u32, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&n.to_le_bytes())?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

fn read_record(input: &mut impl Read, bytes: &mut Vec<u8>) -> Result<Option<u32>> {
    let mut head = [0u8; 8];
    match input.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(temp_failed(e)),
    }
    let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    bytes.resize(len, 0);
    input.read_exact(bytes).map_err(temp_failed)?;
    Ok(Some(n))
}

fn rewound(w: BufWriter<File>) -> Result<BufReader<File>> {
    let mut f = w.into_inner().map_err(|e| temp_failed(e.into_error()))?;
    f.rewind().map_err(temp_failed)?;
    Ok(BufReader::with_capacity(64 * 1024, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_unchanged_and_large_files_never_share_a_group() {
        let mut g = Groups::new(100);
        assert_eq!(g.of(true, 10), g.of(true, 99));
        assert_eq!(g.of(false, 10), g.of(false, 0));
        assert_ne!(g.of(true, 10), g.of(false, 10));
        let (a, b) = (g.of(false, 100), g.of(false, 500));
        assert_ne!(a, b);
        assert!(![g.of(true, 1), g.of(false, 1)].contains(&a));
    }

    #[test]
    fn copy_names_keep_the_old_extension() {
        assert_eq!(copy_name(0, "part_001.tar.lz4"), "copy_0.tar.lz4");
        assert_eq!(copy_name(3, "copy_0.tar.zst"), "copy_3.tar.zst");
        assert_eq!(copy_name(1, "part_002.tar"), "copy_1.tar");
    }

    #[test]
    fn only_data_tars_whose_members_all_came_back() {
        let tar = |name: &str, members, unchanged, broken| RefTar {
            name: name.into(),
            members,
            unchanged,
            broken,
            bytes: 0,
        };
        assert!(tar("part_001.tar.zst", 2, 2, false).reusable());
        assert!(!tar("part_001.tar.zst", 2, 1, false).reusable());
        assert!(!tar("part_001.tar.zst", 2, 2, true).reusable());
        assert!(!tar("pg_control.tar.zst", 1, 1, false).reusable());
        assert!(!tar("backup_label.tar.zst", 2, 2, false).reusable());
    }

    #[test]
    fn records_round_trip() {
        let mut out = BufWriter::new(anonymous_file("test").unwrap());
        write_record(&mut out, 7, b"base/5/1259").unwrap();
        write_record(&mut out, 0, b"").unwrap();
        let mut input = rewound(out).unwrap();
        let mut b = Vec::new();
        assert_eq!(read_record(&mut input, &mut b).unwrap(), Some(7));
        assert_eq!(b, b"base/5/1259");
        assert_eq!(read_record(&mut input, &mut b).unwrap(), Some(0));
        assert!(b.is_empty());
        assert_eq!(read_record(&mut input, &mut b).unwrap(), None);
    }
}
