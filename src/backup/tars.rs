//! The tar partitions of one backup (spec §1.2, §1.3, §8.2).
//!
//! The walk hands members to a [`Pool`] of `n` builders. Each builder owns
//! one open tar at a time, with its own codec chain and object upload, and
//! reads, frames and compresses its members in its own thread; partitions
//! get their numbers from one shared counter when they are opened, as in
//! WAL-G's tar ball queue, so numbers can have gaps and which member lands
//! in which part depends on timing. With one builder the walk packs in its
//! own thread: no hand-off per file.
//!
//! Memory is bounded by `n`: each builder holds one copy buffer, one codec
//! and one upload's part buffers; the walk-to-builder channel holds at
//! most a few members per builder.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::delta::{self, Packed};
use super::files_metadata::{Flag, Spill};
use super::layout;
use super::pagecheck::{self, PageCheck};
use super::throttle::{LimitedRead, LimitedWrite, RateLimit};
use crate::codec::{Codecs, FinishWrite};
use crate::error::{Error, Result};
use crate::storage::upload::ObjectWriter;
use crate::storage::Storage;

/// Copy buffer of one builder: large writes keep the codecs efficient,
/// and it is reused for every file.
const COPY_BUFFER: usize = 256 * 1024;

/// The first error of any thread of the backup (a builder, the alive
/// check); every other thread stops at its next member once it is set.
#[derive(Default)]
pub struct Abort {
    set: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Abort {
    pub fn set(&self, e: Error) {
        if let Ok(mut first) = self.first.lock() {
            if first.is_none() {
                *first = Some(e);
            }
        }
        self.set.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    /// The error to report: the first one set (its text: every thread
    /// that stops reports the same cause).
    pub fn error(&self) -> Error {
        self.first
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|e| Error::Other(e.to_string())))
            .unwrap_or_else(|| Error::Other("the backup was stopped by an earlier error".into()))
    }
}

/// What every builder of one backup shares.
pub struct Shared {
    pub storage: Arc<dyn Storage>,
    pub codecs: Codecs,
    pub prefix: String,
    pub threshold: u64,
    pub disk_limit: Option<Arc<RateLimit>>,
    pub network_limit: Option<Arc<RateLimit>>,
    /// Builders keep a files_metadata.json spill.
    pub files_metadata: bool,
    pub abort: Abort,
    counter: AtomicU32,
    /// Member content bytes (WAL-G's `UncompressedSize`).
    pub content_total: AtomicU64,
    /// Bytes handed to storage (WAL-G's `CompressedSize`).
    pub stored: Arc<AtomicU64>,
    pub parts: AtomicU32,
    /// `--verify`: page checksums checked on the bytes as they are read.
    pub verify: Option<pagecheck::Rules>,
    pub verified: pagecheck::Totals,
    /// A delta backup's base and file list (`None`: a full backup).
    pub delta: Option<Arc<delta::Plan>>,
}

impl Shared {
    pub fn new(
        storage: Arc<dyn Storage>,
        codecs: Codecs,
        name: &str,
        threshold: u64,
        disk_limit: Option<Arc<RateLimit>>,
        network_limit: Option<Arc<RateLimit>>,
        files_metadata: bool,
    ) -> Shared {
        Shared {
            storage,
            codecs,
            prefix: layout::partitions_prefix(name),
            threshold,
            disk_limit,
            network_limit,
            files_metadata,
            abort: Abort::default(),
            counter: AtomicU32::new(0),
            content_total: AtomicU64::new(0),
            stored: Arc::new(AtomicU64::new(0)),
            parts: AtomicU32::new(0),
            verify: None,
            verified: pagecheck::Totals::default(),
            delta: None,
        }
    }

    /// The object base name of tar `stem` (`part_001.tar.zst`).
    pub fn tar_name(&self, stem: &str) -> String {
        layout::tar_name(stem, self.codecs.extension())
    }
}

pub enum What {
    Dir,
    File,
    Symlink(PathBuf),
}

/// One walked entry, owned, on its way to a builder.
pub struct Member {
    /// WAL-G's member name: `/` + the path relative to PGDATA.
    pub name: Vec<u8>,
    pub path: PathBuf,
    pub meta: Metadata,
    pub what: What,
    /// The composer's group of a file (`composer/`): a builder never
    /// puts files of two groups into one tar. `None`: any tar.
    pub group: Option<u64>,
    /// `UpdatesCount` of the file in files_metadata.json.
    pub updates: u64,
}

struct OpenTar {
    key: String,
    base: String,
    builder: tar::Builder<Box<dyn FinishWrite>>,
    content: u64,
}

/// Fills one tar after another.
pub struct Builder {
    shared: Arc<Shared>,
    current: Option<OpenTar>,
    spill: Option<Spill>,
    buf: Vec<u8>,
    /// The delta page scan's buffer (empty in full backups).
    scan_buf: Vec<u8>,
    /// The composer group of the open tar's files.
    group: Option<u64>,
    /// `UpdatesCount` of the member being added.
    updates: u64,
}

impl Builder {
    pub fn new(shared: Arc<Shared>, with_spill: bool) -> Result<Builder> {
        let spill = if with_spill && shared.files_metadata {
            Some(Spill::new()?)
        } else {
            None
        };
        Ok(Builder {
            shared,
            current: None,
            spill,
            buf: Vec::new(),
            scan_buf: Vec::new(),
            group: None,
            updates: 0,
        })
    }

    /// Open the tar `stem` (`part_001`, `pg_control`), closing any open one.
    pub fn start_named(&mut self, stem: &str) -> Result<()> {
        self.close()?;
        self.shared.counter.fetch_add(1, Ordering::SeqCst);
        self.open_as(stem)
    }

    fn open_as(&mut self, stem: &str) -> Result<()> {
        let shared = &self.shared;
        let base = shared.tar_name(stem);
        let key = format!("{}{base}", shared.prefix);
        let object: Box<dyn FinishWrite> =
            Box::new(ObjectWriter::new(shared.storage.clone(), &key));
        let object: Box<dyn FinishWrite> = match &shared.network_limit {
            Some(limit) => Box::new(LimitedWrite {
                inner: object,
                limit: limit.clone(),
            }),
            None => object,
        };
        let sink = Box::new(Counting {
            inner: object,
            count: shared.stored.clone(),
        });
        let writer = shared
            .codecs
            .writer(sink, true, true)
            .map_err(|e| Error::io(format!("starting the upload of '{key}'"), e))?;
        shared.parts.fetch_add(1, Ordering::Relaxed);
        self.current = Some(OpenTar {
            key,
            base,
            builder: tar::Builder::new(writer),
            content: 0,
        });
        Ok(())
    }

    fn open(&mut self) -> Result<&mut OpenTar> {
        if self.current.is_none() {
            let n = self.shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
            self.open_as(&layout::part_stem(n))?;
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Other("internal: no tar open".into()))
    }

    /// Write the end-of-archive blocks and finish the object's upload.
    pub fn close(&mut self) -> Result<()> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let key = open.key;
        let writer = open
            .builder
            .into_inner()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e))?;
        writer
            .finish()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e))?;
        log::debug!("uploaded '{key}'");
        Ok(())
    }

    /// The files_metadata.json records of this builder.
    pub fn into_spill(self) -> Option<Spill> {
        self.spill
    }

    pub fn add(&mut self, m: &Member) -> Result<()> {
        self.updates = m.updates;
        if m.group.is_some() && matches!(m.what, What::File) {
            if self.current.is_some() && self.group != m.group {
                self.close()?;
            }
            self.group = m.group;
        }
        match &m.what {
            What::Dir => self.add_header(m, tar::EntryType::Directory, None),
            What::Symlink(target) => self.add_header(
                m,
                tar::EntryType::Symlink,
                Some(target.as_os_str().as_bytes()),
            ),
            What::File => self.add_file(m),
        }
    }

    fn record(&mut self, member: &[u8], meta: Option<&Metadata>) -> Result<()> {
        self.record_as(member, meta, Flag::Whole, None)
    }

    /// `extra`: more keys for the member's `Files` entry (`CorruptBlocks`).
    fn record_as(
        &mut self,
        member: &[u8],
        meta: Option<&Metadata>,
        flag: Flag,
        extra: Option<&str>,
    ) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let mtime = meta.and_then(|m| m.modified().ok());
        // A skipped file is in no tar.
        let tar = match (flag, self.current.as_ref()) {
            (Flag::Skipped, _) => "",
            (_, Some(open)) => open.base.as_str(),
            (_, None) => return Ok(()),
        };
        spill.record_as(tar, member, mtime, flag, extra, self.updates)
    }

    /// A changed relation file of a delta backup: its `wi1` increment
    /// under the file's member name (spec §6.4).
    fn add_increment(
        &mut self,
        m: &Member,
        mut incr: delta::increment_writer::IncrementReader,
    ) -> Result<()> {
        let size = incr.len();
        incr.check = pagecheck::BlockCheck::for_blocks(&m.name, self.shared.verify, &m.path);
        let mut header = header_from(&m.meta, tar::EntryType::Regular, size);
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUFFER];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let shared = self.shared.clone();
        let result = self.open().and_then(|open| {
            append_copy(
                open,
                &mut header,
                &m.name,
                &mut incr,
                size,
                &mut buf,
                &shared.abort,
            )
        });
        self.buf = buf;
        result?;
        if let Some(plan) = &shared.delta {
            plan.count_page_reads(incr.read_bytes);
        }
        let full = self.current.as_mut().is_some_and(|open| {
            open.content += size;
            open.content > shared.threshold
        });
        shared.content_total.fetch_add(size, Ordering::Relaxed);
        let corrupt = incr
            .check
            .take()
            .and_then(|c| c.done(&m.path, &shared.verified));
        self.record_as(
            &m.name,
            Some(&m.meta),
            Flag::Incremented,
            corrupt.as_deref(),
        )?;
        if full {
            self.close()?;
        }
        Ok(())
    }

    fn add_header(&mut self, m: &Member, kind: tar::EntryType, link: Option<&[u8]>) -> Result<()> {
        let mut header = header_from(&m.meta, kind, 0);
        let open = self.open()?;
        append(open, &mut header, &m.name, link, io::empty())?;
        self.record(&m.name, Some(&m.meta))
    }

    /// A file, exactly as long as `stat` said at walk time: a file that
    /// shrank meanwhile is padded with zeros, one that grew is cut, as
    /// PostgreSQL's own base backup does; WAL replay repairs both. A file
    /// that vanished before it was opened is skipped (still listed in its
    /// tar's set, as WAL-G lists it).
    fn add_file(&mut self, m: &Member) -> Result<()> {
        if let Some(plan) = self.shared.delta.clone() {
            let limit = self.shared.disk_limit.clone();
            match plan.prepare(&m.name, &m.path, &m.meta, &mut self.scan_buf, limit)? {
                Packed::Skip => return self.record_as(&m.name, Some(&m.meta), Flag::Skipped, None),
                Packed::Increment(incr) => return self.add_increment(m, incr),
                Packed::Whole => plan.count_whole(m.meta.len()),
            }
        }
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&m.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!("'{}' vanished during the backup; skipped", m.path.display());
                return self.record(&m.name, None);
            }
            Err(e) => return Err(Error::io(format!("opening '{}'", m.path.display()), e)),
        };
        let size = m.meta.len();
        let mut header = header_from(&m.meta, tar::EntryType::Regular, size);
        let reader = LimitedRead {
            inner: ExactSize {
                file,
                remaining: size,
                ended: false,
                path: m.path.clone(),
            },
            limit: self.shared.disk_limit.clone(),
        };
        let mut reader = PageCheck::for_member(reader, &m.name, size, self.shared.verify, &m.path);
        if self.buf.is_empty() && size > 0 {
            self.buf = vec![0; COPY_BUFFER];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let shared = self.shared.clone();
        let result = self.open().and_then(|open| {
            append_copy(
                open,
                &mut header,
                &m.name,
                &mut reader,
                size,
                &mut buf,
                &shared.abort,
            )
        });
        self.buf = buf;
        result?;
        let threshold = self.shared.threshold;
        let full = self.current.as_mut().is_some_and(|open| {
            open.content += size;
            open.content > threshold
        });
        self.shared.content_total.fetch_add(size, Ordering::Relaxed);
        let corrupt = reader.done(&m.path, &self.shared.verified);
        self.record_as(&m.name, Some(&m.meta), Flag::Whole, corrupt.as_deref())?;
        if full {
            self.close()?;
        }
        Ok(())
    }

    /// A member re-packed from another tar stream (a remote backup's
    /// BASE_BACKUP archives, `remote/`): `header` as received, renamed to
    /// `name`, `size` content bytes from `data`. As in WAL-G's remote
    /// backup a part is closed *before* a member that would take it past
    /// the threshold. `mtime`: listed in files_metadata.json's `Files`
    /// (and in no tar set, as WAL-G's remote backups list none).
    pub fn add_streamed(
        &mut self,
        header: &tar::Header,
        name: &[u8],
        data: &mut dyn Read,
        mtime: Option<std::time::SystemTime>,
    ) -> Result<()> {
        self.add_streamed_as(header, name, data, mtime, Flag::Whole)
    }

    /// [`Builder::add_streamed`] of a remote delta's member: `flag` says
    /// whether it is a `wi1` increment (`IsIncremented`).
    pub fn add_streamed_as(
        &mut self,
        header: &tar::Header,
        name: &[u8],
        data: &mut dyn Read,
        mtime: Option<std::time::SystemTime>,
        flag: Flag,
    ) -> Result<()> {
        let size = header.entry_size().unwrap_or(0);
        let threshold = self.shared.threshold;
        if self
            .current
            .as_ref()
            .is_some_and(|open| open.content > 0 && open.content + size > threshold)
        {
            self.close()?;
        }
        let mut out = tar::Header::new_ustar();
        out.set_entry_type(header.entry_type());
        out.set_mode(header.mode().unwrap_or(0o600));
        out.set_uid(header.uid().unwrap_or(0));
        out.set_gid(header.gid().unwrap_or(0));
        out.set_mtime(header.mtime().unwrap_or(0));
        out.set_size(size);
        // Owner names as PostgreSQL wrote them (Go's writer keeps them).
        let (user, group) = (header.username_bytes(), header.groupname_bytes());
        if let Some(ustar) = out.as_ustar_mut() {
            if let Some(u) = user {
                let n = u.len().min(31);
                ustar.uname[..n].copy_from_slice(&u[..n]);
            }
            if let Some(g) = group {
                let n = g.len().min(31);
                ustar.gname[..n].copy_from_slice(&g[..n]);
            }
        }
        let link = header.link_name_bytes().map(|l| l.into_owned());
        if self.buf.is_empty() && size > 0 {
            self.buf = vec![0; COPY_BUFFER];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let shared = self.shared.clone();
        let result = self.open().and_then(|open| {
            if size > 0 {
                append_copy(open, &mut out, name, data, size, &mut buf, &shared.abort)
            } else {
                append(open, &mut out, name, link.as_deref(), io::empty())
            }
        });
        self.buf = buf;
        result?;
        if let Some(open) = self.current.as_mut() {
            open.content += size;
        }
        shared.content_total.fetch_add(size, Ordering::Relaxed);
        if let (Some(spill), Some(t)) = (self.spill.as_mut(), mtime) {
            spill.record_as("", name, Some(t), flag, None, 0)?;
        }
        Ok(())
    }

    /// A synthetic member (`backup_label`, `tablespace_map`): mode 0600,
    /// time 0, no owner (spec §1.3).
    pub fn add_text(&mut self, member: &[u8], text: &[u8]) -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o600);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(text.len() as u64);
        let open = self.open()?;
        append(open, &mut header, member, None, text)?;
        open.content += text.len() as u64;
        self.shared
            .content_total
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Members of a backup, packed by `n` builders.
pub struct Pool {
    shared: Arc<Shared>,
    /// A composer's tar of every directory and symlink header, filled
    /// from the walk's thread (WAL-G puts them all into one tarball).
    headers: Option<Builder>,
    inline: Option<Builder>,
    jobs: Option<SyncSender<Member>>,
    workers: Vec<JoinHandle<Option<Spill>>>,
}

impl Pool {
    /// `separate_headers`: directories and symlinks go into a tar of their
    /// own (composers other than the regular one).
    pub fn start(shared: Arc<Shared>, n: usize, separate_headers: bool) -> Result<Pool> {
        let headers = if separate_headers {
            Some(Builder::new(shared.clone(), true)?)
        } else {
            None
        };
        if n <= 1 {
            return Ok(Pool {
                headers,
                inline: Some(Builder::new(shared.clone(), true)?),
                shared,
                jobs: None,
                workers: Vec::new(),
            });
        }
        // A few members per builder in flight: enough that a builder
        // finishing a file finds the next one waiting.
        let (tx, rx) = mpsc::sync_channel::<Member>(n * 4);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let builder = Builder::new(shared.clone(), true)?;
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tar-{i}"))
                .spawn(move || work(builder, &rx))
                .map_err(|e| Error::io("starting a tar builder thread", e))?;
            workers.push(handle);
        }
        Ok(Pool {
            shared,
            headers,
            inline: None,
            jobs: Some(tx),
            workers,
        })
    }

    pub fn add(&mut self, m: Member) -> Result<()> {
        if self.shared.abort.is_set() {
            return Err(self.shared.abort.error());
        }
        if let (Some(h), false) = (self.headers.as_mut(), matches!(m.what, What::File)) {
            return h.add(&m);
        }
        if let Some(b) = self.inline.as_mut() {
            return b.add(&m);
        }
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(m).is_ok());
        if sent {
            Ok(())
        } else {
            // Every builder stopped: the first one's error says why.
            Err(self.shared.abort.error())
        }
    }

    /// Close every open tar (after the walk) and hand back the spills.
    pub fn finish(mut self) -> Result<Vec<Spill>> {
        let mut spills = Vec::new();
        // The headers' tar first, as WAL-G closes it first.
        if let Some(mut h) = self.headers.take() {
            h.close()?;
            spills.extend(h.into_spill());
        }
        if let Some(mut b) = self.inline.take() {
            b.close()?;
            spills.extend(b.into_spill());
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(spill) => spills.extend(spill),
                Err(_) => self.shared.abort.set(Error::Other(
                    "internal: a tar builder thread panicked".into(),
                )),
            }
        }
        if self.shared.abort.is_set() {
            return Err(self.shared.abort.error());
        }
        Ok(spills)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // An error elsewhere: stop the builders without finishing their
        // uploads (an unfinished object is abandoned, never completed).
        if !self.workers.is_empty() {
            self.shared
                .abort
                .set(Error::Other("the backup was abandoned".into()));
            self.jobs = None;
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

fn work(mut builder: Builder, jobs: &Mutex<Receiver<Member>>) -> Option<Spill> {
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return None,
        };
        let Ok(member) = next else {
            break;
        };
        if builder.shared.abort.is_set() {
            return None;
        }
        if let Err(e) = builder.add(&member) {
            builder.shared.abort.set(e);
            return None;
        }
    }
    if builder.shared.abort.is_set() {
        return None;
    }
    if let Err(e) = builder.close() {
        builder.shared.abort.set(e);
        return None;
    }
    builder.into_spill()
}

/// Counts the bytes handed to storage (WAL-G's `CompressedSize`).
struct Counting {
    inner: Box<dyn FinishWrite>,
    count: Arc<AtomicU64>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FinishWrite for Counting {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.inner.finish()
    }
}

fn header_from(meta: &Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    // Go's tar writer rounds to the nearest second.
    let secs = meta.mtime() + i64::from(meta.mtime_nsec() >= 500_000_000);
    h.set_mtime(secs.max(0) as u64);
    h.set_size(size);
    h
}

fn member_error(member: &[u8], key: &str, e: io::Error) -> Error {
    Error::io(
        format!(
            "writing member '{}' into '{key}'",
            String::from_utf8_lossy(member)
        ),
        e,
    )
}

/// Name the header (and write a PAX record first when the name or link
/// does not fit USTAR), as [`append`] and [`append_copy`] need.
fn prepare(
    open: &mut OpenTar,
    header: &mut tar::Header,
    member: &[u8],
    link: Option<&[u8]>,
) -> Result<()> {
    let mut pax: Vec<(&str, &[u8])> = Vec::new();
    if !set_ustar_name(header, member) {
        pax.push(("path", member));
        set_ustar_name(header, &member[member.len().saturating_sub(99)..]);
    }
    if let Some(target) = link {
        if target.len() <= 100 {
            if let Some(old) = header.as_old_mut().linkname.get_mut(..target.len()) {
                old.copy_from_slice(target);
            }
        } else {
            pax.push(("linkpath", target));
        }
    }
    if !pax.is_empty() {
        open.builder
            .append_pax_extensions(pax)
            .map_err(|e| member_error(member, &open.key, e))?;
    }
    header.set_cksum();
    Ok(())
}

/// Append one member named `member` (WAL-G's names start with `/`, which
/// the tar crate's path setter refuses, so the name bytes are placed
/// here): the USTAR name field, split into prefix and name when longer,
/// or a PAX `path` record as Go writes for names USTAR cannot hold.
fn append(
    open: &mut OpenTar,
    header: &mut tar::Header,
    member: &[u8],
    link: Option<&[u8]>,
    data: impl Read,
) -> Result<()> {
    prepare(open, header, member, link)?;
    open.builder
        .append(header, data)
        .map_err(|e| member_error(member, &open.key, e))
}

/// [`append`] for file content, copied through the builder's own large
/// buffer (the tar crate copies in 8 KiB steps): header, exactly `size`
/// bytes, zero padding to the 512-byte block.
fn append_copy(
    open: &mut OpenTar,
    header: &mut tar::Header,
    member: &[u8],
    mut data: impl Read,
    size: u64,
    buf: &mut [u8],
    abort: &Abort,
) -> Result<()> {
    prepare(open, header, member, None)?;
    let key = open.key.clone();
    let out = open.builder.get_mut();
    let failed = |e| member_error(member, &key, e);
    out.write_all(header.as_bytes()).map_err(failed)?;
    let mut left = size;
    while left > 0 {
        // A large file must not hold up an abort (dead server, failed
        // upload elsewhere) until its end.
        if abort.is_set() {
            return Err(abort.error());
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = data.read(&mut buf[..want]).map_err(failed)?;
        if n == 0 {
            return Err(failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended early",
            )));
        }
        out.write_all(&buf[..n]).map_err(failed)?;
        left -= n as u64;
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize]).map_err(failed)
}

/// Put `name` into the USTAR name (and prefix) fields; false when it does
/// not fit.
fn set_ustar_name(header: &mut tar::Header, name: &[u8]) -> bool {
    let Some(ustar) = header.as_ustar_mut() else {
        return false;
    };
    ustar.name = [0; 100];
    ustar.prefix = [0; 155];
    if name.len() <= 100 {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that the prefix holds at most 155 bytes and the
    // rest at most 100 (POSIX ustar).
    let split = name
        .iter()
        .enumerate()
        .filter(|(i, &b)| b == b'/' && *i <= 155 && *i > 0 && name.len() - i - 1 <= 100)
        .map(|(i, _)| i)
        .next();
    match split {
        Some(i) => {
            ustar.prefix[..i].copy_from_slice(&name[..i]);
            ustar.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
            true
        }
        None => false,
    }
}

/// Yields exactly `remaining` bytes of `file`: zeros after an early end.
struct ExactSize {
    file: File,
    remaining: u64,
    ended: bool,
    path: PathBuf,
}

impl Read for ExactSize {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = if self.ended {
            0
        } else {
            match self.file.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading '{}': {e}", self.path.display()),
                    ))
                }
            }
        };
        let n = if n == 0 {
            if !self.ended {
                log::warn!(
                    "'{}' shrank during the backup; padded with zeros to its size at walk time",
                    self.path.display()
                );
                self.ended = true;
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_split_or_go_pax() {
        let mut h = tar::Header::new_ustar();
        assert!(set_ustar_name(&mut h, b"/base/1/123"));
        assert_eq!(h.path_bytes().as_ref(), b"/base/1/123");
        let long = format!("/{}/{}", "d".repeat(120), "f".repeat(50));
        assert!(set_ustar_name(&mut h, long.as_bytes()));
        assert_eq!(h.path_bytes().as_ref(), long.as_bytes());
        let too_long = format!("/{}", "x".repeat(300));
        assert!(!set_ustar_name(&mut h, too_long.as_bytes()));
    }

    #[test]
    fn shrunk_files_are_padded() {
        let path = std::env::temp_dir().join(format!("walden-exact-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let mut r = ExactSize {
            file: File::open(&path).unwrap(),
            remaining: 5,
            ended: false,
            path: path.clone(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0");
        let mut r = ExactSize {
            file: File::open(&path).unwrap(),
            remaining: 2,
            ended: false,
            path: path.clone(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
        std::fs::remove_file(path).unwrap();
    }
}
