//! backup-fetch of a delta backup (spec §9.2–§9.4): the chain from the
//! chosen backup back to its full backup, what each backup of it must
//! restore, and the two ways of composing them.
//!
//! For the newest backup `B_n` the files to restore are all of its
//! `files_metadata.json` `Files`; for each older `B_i` only those that
//! every newer backup recorded as unchanged (`IsSkipped`) or as an
//! increment (`IsIncremented`): everything else a newer backup has whole.
//! Each backup keeps only those names ([`super::metadata_read`]).
//!
//! * forward (default, WAL-G's): the full backup first, then each delta
//!   in turn overwrites whole files and patches increments
//!   ([`increment::apply_forward`]);
//! * reverse (`--reverse-unpack`): newest first, each file written once;
//!   older backups only fill the pages still missing
//!   ([`increment::fill_holes`]). With `--skip-redundant-tars` an older
//!   backup's tar is not downloaded when every file its `TarFileSets`
//!   lists is already complete.
//!
//! Forward and reverse without skip-redundant run every backup's tars in
//! one queue, each file's writes still in that order ([`overlap`]).
//!
//! In every mode a tar of an older backup that holds none of the files it
//! must give is not downloaded (nothing in it would be written), and
//! directories, links and the label/control files come from the newest
//! backup only, so a dropped database leaves no empty directory behind.

pub mod increment;
mod overlap;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{Map, Value};

use self::increment::IncrementError;
use super::catalog;
use super::extract::{safe_relative, Decision, Member, MemberPolicy};
use super::layout::{self, TarKind};
use super::metadata_read::{self, FileSet, TarSet, INCREMENTED, SKIPPED};
use super::partial::Filter;
use super::tablespaces::Route;
use super::unpack::{Job, Unpacker};
use crate::error::{Error, Result};
use crate::storage::Storage;
use overlap::Tracker;

/// How the chain is composed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Reverse { skip_redundant: bool },
}

/// One backup of the chain and what it must restore.
struct Link {
    name: String,
    delta: bool,
    /// The files this backup gives (see the module comment), with its own
    /// flags for them.
    files: FileSet,
    tar_sets: Option<Vec<TarSet>>,
    /// Its data tars, by number.
    data_tars: Vec<String>,
}

impl Link {
    fn tar_set(&self, tar: &str) -> Option<&TarSet> {
        self.tar_sets.as_ref()?.iter().find(|t| t.tar == tar)
    }
}

/// A delta backup's chain, newest first, ending with the full backup.
pub struct Chain {
    links: Vec<Link>,
}

/// Member names that are not in `Files` and come from the newest backup
/// only (spec §9.2).
fn utility(name: &[u8]) -> bool {
    matches!(
        name,
        b"/global/pg_control"
            | b"global/pg_control"
            | b"backup_label"
            | b"/backup_label"
            | b"tablespace_map"
            | b"/tablespace_map"
    )
}

/// A chain longer than this is a loop in `DeltaFrom` links, not a chain.
const MAX_LINKS: usize = 10_000;

impl Chain {
    /// Follow `DeltaFrom` from `newest` to the full backup and read what
    /// every backup of it must restore. Checks everything it can before
    /// DEST is touched: every sentinel, every `files_metadata.json` a
    /// delta needs, every tar listing.
    pub fn resolve(
        storage: &Arc<dyn Storage>,
        newest: &str,
        sentinel: &Map<String, Value>,
    ) -> Result<Chain> {
        let mut names = vec![newest.to_string()];
        let mut deltas = vec![true];
        let mut current = sentinel.clone();
        while let Some(base) = catalog::delta_from(&current) {
            let child = names.last().cloned().unwrap_or_default();
            if names.contains(&base) || names.len() >= MAX_LINKS {
                return Err(Error::Other(format!(
                    "backup {child} names {base} as the backup it was taken against (DeltaFrom), \
                     which makes the chain of {newest} a loop; its sentinels are damaged"
                )));
            }
            if storage.stat(&layout::sentinel_key(&base))?.is_none() {
                return Err(Error::Other(format!(
                    "backup {base}, which delta backup {child} was taken against (DeltaFrom), is missing \
                     from {}: its sentinel '{}' does not exist. The chain of {newest} is broken and it cannot \
                     be restored; restore a full backup, or a delta whose chain is whole ('walden backup-list --detail')",
                    storage.location(),
                    layout::sentinel_key(&base)
                )));
            }
            current = catalog::read_sentinel(storage, &base)?;
            deltas.push(catalog::delta_from(&current).is_some());
            names.push(base);
        }
        log::info!(
            "Delta chain of {newest}: {}",
            names
                .iter()
                .rev()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" <- ")
        );

        let mut links: Vec<Link> = Vec::with_capacity(names.len());
        for (name, delta) in names.into_iter().zip(deltas) {
            let files_key = layout::files_metadata_key(&name);
            let newer = links.last().map(|l| &l.files);
            let needed = |n: &[u8]| match newer {
                None => true,
                Some(f) => f.flags(n).is_some_and(|f| f & (SKIPPED | INCREMENTED) != 0),
            };
            let read = read_files_metadata(storage, &files_key, &needed)?;
            let (mut files, mut tar_sets) = match read {
                Some(m) => {
                    log::debug!(
                        "'{files_key}': {} of its {} files kept, {} bytes",
                        m.files.len(),
                        m.files_listed,
                        m.heap_bytes()
                    );
                    (m.files, m.tar_sets)
                }
                None if delta => {
                    return Err(Error::Other(format!(
                        "delta backup {name} has no files metadata ('{files_key}' does not exist): without it \
                         walden cannot tell its increments from whole files, and it does not restore increment \
                         bytes as file data. The chain of {newest} cannot be restored"
                    )))
                }
                None => (FileSet::default(), None),
            };
            if delta && links.is_empty() && files.is_empty() {
                return Err(Error::Other(format!(
                    "delta backup {name} lists no files in '{files_key}' (pushed without files metadata?): \
                     walden cannot tell its increments from whole files, so it cannot be restored"
                )));
            }
            if let Some(newer) = newer {
                let wanted = (0..newer.len())
                    .filter(|&i| newer.flags_at(i) & (SKIPPED | INCREMENTED) != 0)
                    .count();
                if files.len() < wanted {
                    let missing: Vec<&[u8]> = (0..newer.len())
                        .filter(|&i| newer.flags_at(i) & (SKIPPED | INCREMENTED) != 0)
                        .map(|i| newer.name(i))
                        .filter(|n| files.index(n).is_none())
                        .collect();
                    if delta {
                        return Err(Error::Other(format!(
                            "delta backup {name} has no entry for '{}' in '{files_key}', although the newer \
                             backup {} says it is unchanged or an increment since {name}; the chain of {newest} \
                             is inconsistent and cannot be restored",
                            String::from_utf8_lossy(missing[0]),
                            links.last().map_or("", |l| l.name.as_str())
                        )));
                    }
                    // A full backup restores what its tars hold: names
                    // its metadata lacks (or all, without metadata) are
                    // whole files.
                    let mut pairs: Vec<(&[u8], u8)> = (0..files.len())
                        .map(|i| (files.name(i), files.flags_at(i)))
                        .collect();
                    pairs.extend(missing.into_iter().map(|n| (n, 0)));
                    files = FileSet::from_pairs(pairs);
                    // Its tar sets index the old list and never name the
                    // added files: every tar is read instead.
                    tar_sets = None;
                }
            }
            log::debug!(
                "backup {name}: {} files to restore from it, {} bytes of metadata kept",
                files.len(),
                files.heap_bytes()
            );
            let stored = super::fetch::list_tars(storage, &name)?;
            let named = tar_sets.iter().flatten().map(|s| s.tar.as_str());
            super::fetch::require_named_tars("backup", &name, named, &stored)?;
            let data_tars = stored
                .into_iter()
                .filter(|(k, _)| *k == TarKind::Data)
                .map(|(_, key)| key)
                .collect();
            links.push(Link {
                name,
                delta,
                files,
                tar_sets,
                data_tars,
            });
        }
        Ok(Chain { links })
    }

    /// Write the data tars of every backup of the chain into the
    /// unpacker's DEST (label and control tars are the caller's).
    pub fn restore_data(&self, unpacker: &Unpacker, concurrency: usize, mode: Mode) -> Result<()> {
        let mode = match mode {
            Mode::Reverse { .. } if !self.holes_work(unpacker)? => {
                log::warn!(
                    "the file system of '{}' does not keep sparse-file holes as reverse unpack needs; \
                     restoring the delta chain oldest first instead (same result)",
                    unpacker.dest.display()
                );
                Mode::Forward
            }
            m => m,
        };
        match mode {
            Mode::Forward => {
                let order: Vec<usize> = (0..self.links.len()).rev().collect();
                self.overlapped(unpacker, concurrency, &order, false)?;
            }
            Mode::Reverse {
                skip_redundant: false,
            } => {
                let order: Vec<usize> = (0..self.links.len()).collect();
                self.overlapped(unpacker, concurrency, &order, true)?;
            }
            // Which tars of an older backup are needed is known only once
            // the newer ones are on disk: one backup after the other.
            Mode::Reverse {
                skip_redundant: true,
            } => {
                let mut open: Option<Vec<bool>> = None;
                for i in 0..self.links.len() {
                    self.unpack_link(unpacker, concurrency, i, open.as_deref())?;
                    if let Some(older) = self.links.get(i + 1) {
                        open = Some(still_open(unpacker, &older.files)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every backup's tars in one queue, in `order` of the links
    /// ([`overlap`]).
    fn overlapped(
        &self,
        unpacker: &Unpacker,
        concurrency: usize,
        order: &[usize],
        reverse: bool,
    ) -> Result<()> {
        let keys: Vec<Vec<String>> = order
            .iter()
            .map(|&i| self.tars_to_fetch(i, None, unpacker.keep))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let tracker = Tracker::new(
            order.iter().map(|&i| &self.links[i].files).collect(),
            &keys.iter().map(Vec::len).collect::<Vec<_>>(),
            stop.clone(),
        );
        let policies: Vec<LinkPolicy> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| LinkPolicy {
                link: &self.links[i],
                newest: i == 0,
                reverse,
                writeback: unpacker.writeback,
                tracker: Some((&tracker, pos)),
            })
            .collect();
        let mut jobs = Vec::new();
        let mut position = Vec::new();
        for (pos, keys) in keys.iter().enumerate() {
            for key in keys {
                jobs.push(Job {
                    key,
                    policy: Some(&policies[pos]),
                });
                position.push(pos);
            }
        }
        unpacker
            .jobs(&jobs, concurrency, &stop, &|j| {
                tracker.tar_done(position[j])
            })
            // The object named in the error tells which backup it was.
            .map_err(|e| Error::Other(format!("restoring the delta chain: {e}")))
    }

    fn holes_work(&self, unpacker: &Unpacker) -> Result<bool> {
        for dir in std::iter::once(unpacker.dest).chain(unpacker.tablespaces.locations()) {
            let works = increment::holes_work(dir).map_err(|e| {
                Error::io(
                    format!("checking sparse-file support in '{}'", dir.display()),
                    e,
                )
            })?;
            if !works {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The data tars of link `i` to download (logged), given what is
    /// still open (skip-redundant).
    /// With a partial restore (`keep`) the newest backup's tars holding
    /// nothing kept are left out too.
    fn tars_to_fetch(&self, i: usize, open: Option<&[bool]>, keep: Option<&Filter>) -> Vec<String> {
        let link = &self.links[i];
        let newest = i == 0;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for key in &link.data_tars {
            if (newest && keep.is_none()) || tar_needed(link, key, open, keep) {
                keys.push(key.clone());
            } else {
                skipped += 1;
                log::debug!(
                    "backup {}: tar '{key}' holds nothing still needed: not downloaded",
                    link.name
                );
            }
        }
        log::info!(
            "Unpacking {} backup {}: {} of its {} data tars{}",
            if link.delta { "delta" } else { "full" },
            link.name,
            keys.len(),
            link.data_tars.len(),
            if skipped > 0 {
                format!(" ({skipped} hold nothing still needed)")
            } else {
                String::new()
            }
        );
        keys
    }

    /// Reverse unpack of link `i` alone, newer links already on disk.
    fn unpack_link(
        &self,
        unpacker: &Unpacker,
        concurrency: usize,
        i: usize,
        open: Option<&[bool]>,
    ) -> Result<()> {
        let link = &self.links[i];
        let keys = self.tars_to_fetch(i, open, unpacker.keep);
        if keys.is_empty() {
            return Ok(());
        }
        let policy = LinkPolicy {
            link,
            newest: i == 0,
            reverse: true,
            writeback: unpacker.writeback,
            tracker: None,
        };
        let unpacker = Unpacker {
            policy: Some(&policy),
            ..*unpacker
        };
        unpacker.parallel(&keys, concurrency).map_err(|e| {
            Error::Other(format!(
                "restoring backup {} of the delta chain: {e}",
                link.name
            ))
        })
    }
}

/// Whether a tar of an older backup must be downloaded: it has no
/// `TarFileSets` entry (nothing known), or lists a file this backup gives
/// (and, with skip-redundant, that is not complete yet; with a partial
/// restore, that is restored).
fn tar_needed(link: &Link, key: &str, open: Option<&[bool]>, keep: Option<&Filter>) -> bool {
    let base = key.rsplit('/').next().unwrap_or(key);
    let Some(set) = link.tar_set(base) else {
        return true;
    };
    set.members.iter().any(|&m| {
        let m = m as usize;
        link.files.flags_at(m) & SKIPPED == 0
            && open.is_none_or(|o| o[m])
            && keep.is_none_or(|k| k.keeps(&String::from_utf8_lossy(link.files.name(m))))
    })
}

/// For each file the next older backup gives: whether it is still
/// missing or has missing pages after the newer backups were written.
fn still_open(unpacker: &Unpacker, files: &FileSet) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(files.len());
    for i in 0..files.len() {
        let open = match local_path(unpacker, files.name(i)) {
            None => false,
            Some(path) => match File::open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => return Err(Error::io(format!("checking '{}'", path.display()), e)),
                Ok(f) => {
                    let size = f
                        .metadata()
                        .map_err(|e| Error::io(format!("checking '{}'", path.display()), e))?
                        .len();
                    increment::has_holes(&f, size)
                        .map_err(|e| Error::io(format!("checking '{}'", path.display()), e))?
                }
            },
        };
        out.push(open);
    }
    Ok(out)
}

/// Where member `name` is restored, as the extractor places it.
fn local_path(unpacker: &Unpacker, name: &[u8]) -> Option<PathBuf> {
    let rel = safe_relative(name).ok()?;
    match unpacker.tablespaces.route(&rel) {
        Route::Skip => None,
        Route::Dest => Some(unpacker.dest.join(&rel)),
        Route::Tablespace { root, rel } => Some(root.join(rel)),
    }
}

/// The per-member rules of one backup of the chain.
struct LinkPolicy<'a> {
    link: &'a Link,
    newest: bool,
    reverse: bool,
    /// A sync follows the restore ([`Unpacker::writeback`]).
    writeback: bool,
    /// Backups restored at the same time: this one's position among them.
    tracker: Option<(&'a Tracker<'a>, usize)>,
}

impl LinkPolicy<'_> {
    fn damaged(&self, m: &Member, e: IncrementError) -> Error {
        match e {
            IncrementError::Write(e) => Error::io(
                format!("writing '{}' (from '{}')", m.path.display(), m.key),
                e,
            ),
            e => Error::Other(format!(
                "member '{}' in object '{}' of backup {} is damaged: {e}. Nothing of it was \
                 written as file data; the backup cannot be restored",
                String::from_utf8_lossy(m.name),
                m.key,
                self.link.name
            )),
        }
    }

    fn local(&self, m: &Member, e: io::Error) -> Error {
        Error::io(
            format!("writing '{}' (from '{}')", m.path.display(), m.key),
            e,
        )
    }

    /// The file as the newer backups (reverse) or older ones (forward)
    /// left it, if there is one.
    fn open_existing(&self, m: &Member) -> Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(m.path)
        {
            Ok(f) => {
                let meta = f.metadata().map_err(|e| self.local(m, e))?;
                if !meta.is_file() {
                    return Err(Error::Other(format!(
                        "'{}' is in the way of member '{}' of '{}': it is not a regular file",
                        m.path.display(),
                        String::from_utf8_lossy(m.name),
                        m.key
                    )));
                }
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.local(m, e)),
        }
    }

    fn create(&self, m: &Member) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(m.path)
            .map_err(|e| self.local(m, e))
    }

    /// Start writing the member's pages to disk (as the extractor does
    /// for whole files): the sync before `pg_control` then finds little
    /// left, and disk writes overlap the next members' decompression.
    fn start_writeback(&self, file: &File) {
        if self.writeback {
            use std::os::fd::AsRawFd;
            crate::localfile::start_writeback(file.as_raw_fd(), 0, 0);
        }
    }

    fn finish(&self, m: &Member, file: &File) -> Result<()> {
        file.set_permissions(fs::Permissions::from_mode(m.mode))
            .map_err(|e| self.local(m, e))
    }
}

impl MemberPolicy for LinkPolicy<'_> {
    fn decide(&self, name: &[u8], kind: tar::EntryType) -> Result<Decision> {
        if utility(name) {
            return Ok(if self.newest {
                Decision::Extract
            } else {
                Decision::Skip
            });
        }
        let regular = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        let Some(flags) = self.link.files.flags(name) else {
            if self.newest && regular {
                return Err(Error::Other(format!(
                    "delta backup {} has a member '{}' that its files_metadata.json does not list, so \
                     walden cannot tell whether it is an increment; the backup's objects are inconsistent",
                    self.link.name,
                    String::from_utf8_lossy(name)
                )));
            }
            return Ok(if self.newest {
                Decision::Extract
            } else {
                Decision::Skip
            });
        };
        if !regular {
            return Ok(if self.newest {
                Decision::Extract
            } else {
                Decision::Skip
            });
        }
        if let Some((tracker, pos)) = self.tracker {
            tracker.wait(pos, name)?;
        }
        Ok(
            if flags & INCREMENTED != 0 || (self.reverse && !self.newest) {
                Decision::Custom
            } else {
                Decision::Extract
            },
        )
    }

    fn written(&self, name: &[u8]) {
        if let Some((tracker, pos)) = self.tracker {
            tracker.written(pos, name);
        }
    }

    fn write(&self, m: &Member, data: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
        self.write_member(m, data, buf)?;
        self.written(m.name);
        Ok(())
    }
}

impl LinkPolicy<'_> {
    fn write_member(&self, m: &Member, data: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
        let incremented = self.link.files.flags(m.name).unwrap_or(0) & INCREMENTED != 0;
        let header = if incremented {
            let mut data = &mut *data;
            Some(increment::read_header(&mut data, m.size).map_err(|e| self.damaged(m, e))?)
        } else {
            None
        };
        if self.reverse {
            match self.open_existing(m)? {
                Some(file) => {
                    let size = file.metadata().map_err(|e| self.local(m, e))?.len();
                    let mut data = &mut *data;
                    increment::fill_holes(&file, size, header.as_ref(), &mut data, m.size, buf)
                        .map_err(|e| self.damaged(m, e))?;
                    self.start_writeback(&file);
                    // The mode is the newest copy's, set when it was written.
                    Ok(())
                }
                None => {
                    let file = self.create(m)?;
                    let mut data = &mut *data;
                    match &header {
                        // Scattered pages: left to the kernel, which
                        // writes them with the older copies' pages that
                        // fill the holes between them.
                        Some(h) => increment::create_sparse(&file, h, &mut data)
                            .map_err(|e| self.damaged(m, e))?,
                        None => {
                            copy_whole(&file, &mut data, m.size, buf)
                                .map_err(|e| self.damaged(m, e))?;
                            self.start_writeback(&file);
                        }
                    }
                    self.finish(m, &file)
                }
            }
        } else {
            let Some(h) = header else {
                return Err(Error::Other(format!(
                    "internal: member '{}' of '{}' handed to the chain without an increment",
                    String::from_utf8_lossy(m.name),
                    m.key
                )));
            };
            let Some(file) = self.open_existing(m)? else {
                return Err(Error::Other(format!(
                    "the increment '{}' in object '{}' of backup {} has no file to apply to: no older \
                     backup of the chain restored it. The chain is inconsistent and cannot be restored",
                    String::from_utf8_lossy(m.name),
                    m.key,
                    self.link.name
                )));
            };
            let mut data = &mut *data;
            increment::apply_forward(&file, &h, &mut data).map_err(|e| self.damaged(m, e))?;
            self.start_writeback(&file);
            self.finish(m, &file)
        }
    }
}

/// A whole member into a new file, checked for its full size.
fn copy_whole(
    file: &File,
    data: &mut impl Read,
    size: u64,
    buf: &mut [u8],
) -> std::result::Result<(), IncrementError> {
    use std::io::Write;
    let mut out = file;
    let mut total = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IncrementError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(IncrementError::Write)?;
        total += n as u64;
    }
    if total != size {
        return Err(IncrementError::SizeMismatch {
            pages: 0,
            expected: size,
            actual: total,
        });
    }
    Ok(())
}

/// The files metadata of a backup, keeping the names `keep` accepts;
/// `None` when the object does not exist.
pub(crate) fn read_files_metadata(
    storage: &Arc<dyn Storage>,
    key: &str,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<metadata_read::FilesMetadata>> {
    let input = match storage.get(key, 0) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    metadata_read::read(input, keep).map(Some).map_err(|e| {
        Error::Other(format!(
            "the files metadata '{key}' cannot be read: {e}; the backup's objects are damaged"
        ))
    })
}
