//! Delta backups, push side (spec §6): the base ([`base`]), its file list
//! ([`index`]), the per-file decision (here), the page scan ([`scan`]) and
//! the `wi1` increment member ([`increment_writer`]).
//!
//! The tar builders call [`Plan::prepare`] for every regular file; all
//! scanning happens inside the builders, so files are scanned in parallel
//! by `WALG_UPLOAD_DISK_CONCURRENCY` builders, each with one scan buffer.

pub mod base;
pub mod increment_writer;
pub mod index;
pub mod scan;
pub mod summaries;
pub mod wal_delta;

use std::fs::{Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base::Base;
use increment_writer::IncrementReader;
use index::BaseIndex;

use super::throttle::{LimitedRead, RateLimit};
use crate::error::{Error, Result};

/// A file whose mtime is within this of the base's start may have been
/// written during the base's copy after it was read there (file system
/// timestamps are coarse: a jiffy), with the same mtime: it is not
/// skipped. WAL-G skips on equal mtime alone.
const MTIME_MARGIN: Duration = Duration::from_secs(1);

/// What a delta backup does with one regular file.
pub enum Packed {
    /// Unchanged since the base: no member, `IsSkipped` in the file list.
    Skip,
    /// Changed pages only, as a `wi1` member: `IsIncremented`.
    Increment(IncrementReader),
    /// The whole file, as a full backup stores it.
    Whole,
}

/// Counters for the per-backup line: what was read, what was stored.
#[derive(Default)]
pub struct Stats {
    pub whole_files: AtomicU64,
    pub whole_bytes: AtomicU64,
    pub increments: AtomicU64,
    pub pages: AtomicU64,
    pub scanned_bytes: AtomicU64,
    pub page_bytes_read: AtomicU64,
    pub skipped: AtomicU64,
    pub skipped_bytes: AtomicU64,
}

/// One delta backup's base and its file list.
pub struct Plan {
    pub base: Base,
    index: BaseIndex,
    pub stats: Stats,
    /// Changed blocks from the server's WAL summaries (PostgreSQL 17+),
    /// set once the backup has started; unset: pages are scanned.
    summaries: OnceLock<summaries::Changes>,
    /// A catch-up (`catchup-push --from-lsn`): there is no base file list,
    /// every relation file is an increment of its pages at or after the
    /// LSN (WAL-G's "force incremental"), nothing is skipped.
    catchup: bool,
}

impl Plan {
    pub fn new(base: Base, index: BaseIndex) -> Arc<Plan> {
        Arc::new(Plan {
            base,
            index,
            stats: Stats::default(),
            summaries: OnceLock::new(),
            catchup: false,
        })
    }

    /// The plan of a catch-up from `base.lsn` (see [`Plan::catchup`]'s field).
    pub fn catchup(base: Base) -> Result<Arc<Plan>> {
        Ok(Arc::new(Plan {
            base,
            index: BaseIndex::from_reader(&b"{}"[..], "catch-up")?,
            stats: Stats::default(),
            summaries: OnceLock::new(),
            catchup: true,
        }))
    }

    pub fn is_catchup(&self) -> bool {
        self.catchup
    }

    /// Take changed blocks from WAL summaries instead of scanning pages.
    pub fn use_summaries(&self, changes: summaries::Changes) {
        let _ = self.summaries.set(changes);
    }

    /// WAL-G's decision (spec §6.2) for member `name` of size/mtime `meta`,
    /// scanning it when it is a changed paged file of the base.
    pub fn prepare(
        &self,
        name: &[u8],
        path: &Path,
        meta: &Metadata,
        scan_buf: &mut Vec<u8>,
        disk_limit: Option<Arc<RateLimit>>,
    ) -> Result<Packed> {
        if !self.catchup {
            let Some(in_base) = self.index.get(name)? else {
                return Ok(Packed::Whole);
            };
            let mtime = meta.modified().ok();
            let settled = match (mtime, self.base.start_time) {
                (Some(m), Some(start)) => m + MTIME_MARGIN < start,
                _ => true,
            };
            if mtime.is_some() && in_base.mtime == mtime && settled {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .skipped_bytes
                    .fetch_add(meta.len(), Ordering::Relaxed);
                return Ok(Packed::Skip);
            }
        }
        let size = meta.len();
        if !scan::is_paged(name, size) {
            return Ok(Packed::Whole);
        }
        let named = self.summaries.get().and_then(|c| c.for_file(name, size));
        if let Some(summaries::FileChanges::Whole) = named {
            return Ok(Packed::Whole);
        }
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            // The whole-file path reports and records the vanished file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Packed::Whole),
            Err(e) => return Err(Error::io(format!("opening '{}'", path.display()), e)),
        };
        if let Some(summaries::FileChanges::Blocks(blocks)) = named {
            // Only the blocks WAL touched since the base are read; none
            // (an mtime change alone, or zero-extension): an increment of
            // no pages still records the size.
            self.stats.increments.fetch_add(1, Ordering::Relaxed);
            self.stats
                .pages
                .fetch_add(blocks.len() as u64, Ordering::Relaxed);
            return Ok(Packed::Increment(IncrementReader::new(
                file,
                path.to_path_buf(),
                size,
                blocks,
            )));
        }
        let mut reader = LimitedRead {
            inner: &file,
            limit: disk_limit,
        };
        let selection = scan::select(&mut reader, size, self.base.lsn, scan_buf)
            .map_err(|e| Error::io(format!("reading '{}'", path.display()), e))?;
        match selection {
            Ok(sel) => {
                self.stats
                    .scanned_bytes
                    .fetch_add(sel.bytes_read, Ordering::Relaxed);
                self.stats.increments.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .pages
                    .fetch_add(sel.blocks.len() as u64, Ordering::Relaxed);
                Ok(Packed::Increment(IncrementReader::new(
                    file,
                    path.to_path_buf(),
                    size,
                    sel.blocks,
                )))
            }
            Err(bad) => {
                log::warn!(
                    "failed to read file '{}' as incremented: block {} is not a valid PostgreSQL page; it is stored whole",
                    path.display(),
                    bad.block
                );
                Ok(Packed::Whole)
            }
        }
    }

    /// A file stored whole (also a fallback from [`Plan::prepare`]).
    pub fn count_whole(&self, size: u64) {
        self.stats.whole_files.fetch_add(1, Ordering::Relaxed);
        self.stats.whole_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Pages read back while an increment streamed out.
    pub fn count_page_reads(&self, bytes: u64) {
        self.stats
            .page_bytes_read
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes read from PGDATA's files for this backup.
    pub fn bytes_read(&self) -> u64 {
        let s = &self.stats;
        s.whole_bytes.load(Ordering::Relaxed)
            + s.scanned_bytes.load(Ordering::Relaxed)
            + s.page_bytes_read.load(Ordering::Relaxed)
    }

    /// The INFO line of a delta backup: what was read and what stored.
    pub fn summary(&self, stored: u64, compressed: u64) -> String {
        let s = &self.stats;
        format!(
            "{}: read {} bytes, stored {stored} bytes ({compressed} compressed); \
             {} files whole ({} bytes), {} files as increments ({} changed pages of {} bytes scanned), \
             {} unchanged files skipped ({} bytes); changed blocks from {}",
            if self.catchup {
                format!("Catch-up backup from LSN {}", crate::backup::catalog::lsn_text(self.base.lsn))
            } else {
                format!("Delta backup from {}", self.base.name)
            },
            self.bytes_read(),
            s.whole_files.load(Ordering::Relaxed),
            s.whole_bytes.load(Ordering::Relaxed),
            s.increments.load(Ordering::Relaxed),
            s.pages.load(Ordering::Relaxed),
            s.scanned_bytes.load(Ordering::Relaxed),
            s.skipped.load(Ordering::Relaxed),
            s.skipped_bytes.load(Ordering::Relaxed),
            if self.summaries.get().is_some() {
                "WAL summaries"
            } else {
                "a page scan"
            },
        )
    }
}
