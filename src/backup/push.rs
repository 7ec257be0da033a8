//! `walden backup-push [PGDATA]`: a full local backup (spec §1.6, §10.1).
//!
//! One session holds a non-exclusive backup open while PGDATA is walked
//! into tar partitions, each streamed through the codecs into storage;
//! then `pg_control.tar`, the backup stop, `backup_label.tar`,
//! `metadata.json` and, last, the sentinel: a backup exists only once its
//! sentinel is written, so anything that fails earlier leaves garbage that
//! no restore will pick.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::layout;
use super::sentinel::{self, BackupInfo};
use super::standby;
use super::tablespaces;
use super::walk::{self, Kind};
use crate::codec::{Codecs, FinishWrite};
use crate::commands::{codecs, open_storage};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::pg::{Client, ConnParams};
use crate::storage::upload::ObjectWriter;
use crate::storage::Storage;

const USAGE: &str = "walden backup-push [PGDATA] [--permanent] [--full] [--add-user-data JSON]";

struct Options {
    pgdata: PathBuf,
    permanent: bool,
    user_data: Option<Value>,
    threshold: u64,
    wal_size_mb: u64,
}

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut dir: Option<PathBuf> = None;
    let mut permanent = false;
    let mut user_data_arg: Option<String> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('p') | Long("permanent") => permanent = true,
            // Every backup walden takes is full for now.
            Short('f') | Long("full") => {}
            // walden writes no files_metadata.json yet (the sentinel says so).
            Long("without-files-metadata") => {}
            Long("add-user-data") => {
                user_data_arg = Some(parser.value()?.string()?);
            }
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            _ => {
                return Err(Error::Usage(format!(
                    "{}; usage: {USAGE}",
                    arg.unexpected()
                )))
            }
        }
    }
    // Checked before anything is uploaded: a typo in the JSON must not
    // cost a whole backup (WAL-G: fatal, same order).
    let (source, text) = match user_data_arg {
        Some(t) => ("--add-user-data", Some(t)),
        None => (
            "WALG_SENTINEL_USER_DATA",
            settings.get_explicit("WALG_SENTINEL_USER_DATA"),
        ),
    };
    let user_data = match text {
        None => None,
        Some(t) => Some(sentinel::parse_user_data(&t).map_err(|e| {
            Error::Usage(format!(
                "{source} is not valid JSON ({e}); give a JSON value such as '{{\"k\":\"v\"}}' or '\"text\"'"
            ))
        })?),
    };
    let setting = settings.get_explicit("PGDATA").map(PathBuf::from);
    let pgdata = match (dir, setting) {
        (Some(d), Some(s)) => {
            if canonical(&d)? != canonical(&s)? {
                return Err(Error::Usage(format!(
                    "the directory argument '{}' and the PGDATA setting '{}' differ; give one, or make them agree",
                    d.display(),
                    s.display()
                )));
            }
            d
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => {
            return Err(Error::Usage(format!(
                "no data directory: give it as the argument or the PGDATA setting \
                 (remote backups over the replication protocol are not built yet); usage: {USAGE}"
            )))
        }
    };
    let threshold_text = settings.get("WALG_TAR_SIZE_THRESHOLD").unwrap_or_default();
    let threshold = match threshold_text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(ConfigError::Invalid {
                name: "WALG_TAR_SIZE_THRESHOLD".into(),
                value: threshold_text,
                problem: "expected a positive number of bytes".into(),
            }
            .into())
        }
    };
    Ok(Options {
        pgdata,
        permanent,
        user_data,
        threshold,
        wal_size_mb: crate::wal::segment_size_mb(settings)?,
    })
}

fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize()
        .map_err(|e| Error::io(format!("the data directory '{}'", p.display()), e))
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let start_time = sentinel::round_up_micros(SystemTime::now());
    let opts = options(settings, args)?;
    for delta in [
        "WALG_DELTA_MAX_STEPS",
        "WALG_DELTA_FROM_NAME",
        "WALG_DELTA_FROM_USER_DATA",
    ] {
        if settings
            .get_explicit(delta)
            .is_some_and(|v| v.trim() != "0")
        {
            log::warn!(
                "{delta} is set, but walden takes only full backups for now: this one is full"
            );
        }
    }
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    let pgdata = canonical(&opts.pgdata)?;
    for needed in ["global/pg_control", "PG_VERSION"] {
        if !pgdata.join(needed).is_file() {
            return Err(Error::Other(format!(
                "'{}' is not a PostgreSQL data directory: '{needed}' is missing",
                pgdata.display()
            )));
        }
    }

    let mut pg = Client::connect(&ConnParams::from_settings(settings)?)?;
    let server = Server::query(&mut pg)?;
    server.check(&pgdata, opts.wal_size_mb)?;

    let label = crate::time::rfc3339_nano(start_time);
    // pg_walfile_name cannot run on a standby: its timeline comes from
    // the control file (standby.rs).
    let walfile_sql = if server.in_recovery {
        "''"
    } else {
        "pg_walfile_name(l)"
    };
    let start_sql = if server.version >= 150000 {
        format!("SELECT l::text, {walfile_sql} FROM pg_backup_start('{label}', true) AS l")
    } else {
        format!("SELECT l::text, {walfile_sql} FROM pg_start_backup('{label}', true, false) AS l")
    };
    let rows = pg.query(&start_sql)?;
    let (start_text, walfile) = two_strings(&rows, "starting the backup")?;
    let start_lsn = lsn(&start_text)?;
    let timeline = if server.in_recovery {
        standby::start_timeline(&mut pg)?
    } else {
        walfile
            .get(0..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| {
                Error::Other(format!(
                    "the server named the start WAL file '{walfile}', which is not a WAL file name"
                ))
            })?
    };
    let name = layout::backup_name(timeline, start_lsn, opts.wal_size_mb);
    log::info!(
        "Starting backup {name} of '{}' (start LSN {start_text})",
        pgdata.display()
    );
    if server.in_recovery {
        log::info!(
            "The server is a standby: its timeline ({timeline}) is watched during the backup"
        );
    }

    let mut tars = Tars::new(storage.clone(), codecs, &name, opts.threshold);
    let mut catalog = 0u64;
    let tablespaces = walk::walk(&pgdata, &mut catalog, &mut |e| {
        let rel = e.rel.as_os_str().as_bytes();
        if rel == b"global/pg_control" {
            // Uploaded on its own, last (spec §1.4).
            return Ok(());
        }
        let member = [b"/", rel].concat();
        match e.kind {
            Kind::Dir => tars.add_header(&member, e.meta, tar::EntryType::Directory, None),
            Kind::Symlink(target) => tars.add_header(
                &member,
                e.meta,
                tar::EntryType::Symlink,
                Some(target.as_os_str().as_bytes()),
            ),
            Kind::File => tars.add_file(&member, &pgdata.join(e.rel), e.meta),
        }
    })?;
    tars.close_current()?;

    // pg_control after every data tar, still inside the backup.
    let control_path = pgdata.join("global/pg_control");
    let control_meta = std::fs::metadata(&control_path)
        .map_err(|e| Error::io(format!("reading '{}'", control_path.display()), e))?;
    tars.start_named("pg_control")?;
    tars.add_file(b"/global/pg_control", &control_path, &control_meta)?;
    tars.close_current()?;

    // wait_for_archive: the backup is only usable once the WAL up to its
    // end is archived, so we wait for that before calling it done.
    let stop_sql = if server.version >= 150000 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
    };
    let rows = pg.query(stop_sql)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("stopping the backup: the server returned no row".into()))?;
    let finish_lsn = lsn(row.get_str(0)?.unwrap_or(""))?;
    let label_file = row.get_str(1)?.unwrap_or("").to_string();
    let spcmap = row.get_str(2)?.unwrap_or("").to_string();

    tars.start_named("backup_label")?;
    tars.add_text(b"backup_label", label_file.as_bytes())?;
    tars.add_text(b"tablespace_map", spcmap.as_bytes())?;
    tars.close_current()?;
    // Everything is uploaded: a standby must still be on its timeline.
    let timeline_change = if server.in_recovery {
        standby::timeline_change(&mut pg, timeline)
    } else {
        None
    };
    drop(pg);

    let info = BackupInfo {
        start_lsn,
        finish_lsn,
        pg_version: server.version,
        system_identifier: server.system_identifier,
        uncompressed_size: tars.content_total,
        compressed_size: tars.stored.load(Ordering::Relaxed),
        data_catalog_size: catalog,
        spec: tablespaces::spec_json(&pgdata, &tablespaces),
        user_data: opts.user_data,
        start_time,
        finish_time: sentinel::round_up_micros(SystemTime::now()),
        hostname: hostname(),
        data_dir: server.data_dir.display().to_string(),
        is_permanent: opts.permanent,
    };
    if let Some(why) = timeline_change {
        return Err(standby::unfinalised(
            &name,
            &why,
            &layout::metadata_key(&name),
            &sentinel::metadata_json(&info),
            &layout::sentinel_key(&name),
            &sentinel::sentinel_json(&info),
        ));
    }
    storage.put(
        &layout::metadata_key(&name),
        sentinel::metadata_json(&info).as_bytes(),
    )?;
    // Last: this is what makes the backup exist.
    storage.put(
        &layout::sentinel_key(&name),
        sentinel::sentinel_json(&info).as_bytes(),
    )?;
    log::info!(
        "Wrote backup with name {name} to storage {}",
        storage.location()
    );
    Ok(())
}

fn two_strings(rows: &[crate::pg::Row], what: &str) -> Result<(String, String)> {
    let row = rows
        .first()
        .ok_or_else(|| Error::Other(format!("{what}: the server returned no row")))?;
    Ok((
        row.get_str(0)?.unwrap_or("").to_string(),
        row.get_str(1)?.unwrap_or("").to_string(),
    ))
}

fn lsn(text: &str) -> Result<u64> {
    layout::parse_lsn(text)
        .ok_or_else(|| Error::Other(format!("the server returned '{text}', which is not an LSN")))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What the backup needs to know about the server before it starts.
struct Server {
    version: i64,
    data_dir: PathBuf,
    system_identifier: Option<u64>,
    in_recovery: bool,
    wal_segment_bytes: u64,
    archive_mode: String,
}

impl Server {
    fn query(pg: &mut Client) -> Result<Server> {
        let rows = pg.query(
            "SELECT current_setting('server_version_num'), current_setting('data_directory'), \
                    (SELECT system_identifier FROM pg_control_system())::text, \
                    pg_is_in_recovery(), \
                    current_setting('wal_segment_size', true), \
                    current_setting('archive_mode')",
        )?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Other("reading the server's settings: no row".into()))?;
        let version: i64 = row.get_str(0)?.unwrap_or("").parse().unwrap_or(0);
        let data_dir = PathBuf::from(row.get_str(1)?.unwrap_or(""));
        // bigint on the server: WAL-G reads it as int64 and reinterprets.
        let system_identifier = row
            .get_str(2)?
            .and_then(|s| s.parse::<i64>().ok())
            .map(|n| n as u64);
        let in_recovery = row.get_bool(3)?.unwrap_or(false);
        let wal_segment_bytes = parse_size(row.get_str(4)?.unwrap_or(""));
        let archive_mode = row.get_str(5)?.unwrap_or("").to_string();
        Ok(Server {
            version,
            data_dir: data_dir.canonicalize().unwrap_or(data_dir),
            system_identifier,
            in_recovery,
            wal_segment_bytes,
            archive_mode,
        })
    }

    fn check(&self, pgdata: &Path, wal_size_mb: u64) -> Result<()> {
        if self.version < 100000 {
            return Err(Error::Other(format!(
                "the server is PostgreSQL {} (server_version_num); backups of versions older than 10 are not built yet in walden",
                self.version
            )));
        }
        if self.data_dir != pgdata {
            return Err(Error::Usage(format!(
                "'{}' is not the data directory of the server walden connected to (its data_directory is '{}'); \
                 check PGDATA and PGHOST/PGPORT",
                pgdata.display(),
                self.data_dir.display()
            )));
        }
        if self.wal_segment_bytes != 0 && self.wal_segment_bytes != wal_size_mb << 20 {
            return Err(Error::Usage(format!(
                "the server's WAL segments are {} bytes but WALG_PG_WAL_SIZE is {wal_size_mb} (MiB); set WALG_PG_WAL_SIZE={}",
                self.wal_segment_bytes,
                self.wal_segment_bytes >> 20
            )));
        }
        // A standby's WAL is archived by its primary (WAL-G skips this
        // check there too).
        if !self.in_recovery && !matches!(self.archive_mode.as_str(), "on" | "always") {
            // WAL-G warns too: the backup is taken, but restoring it needs
            // the WAL from its start to its end from somewhere else.
            log::warn!(
                "archive_mode is '{}': this backup can only be restored with the WAL written during it, \
                 which is not being archived; set archive_mode = on and archive_command = 'walden wal-push %p'",
                self.archive_mode
            );
        }
        Ok(())
    }
}

/// `wal_segment_size` as `SHOW` prints it: `16MB`, `1GB`.
fn parse_size(text: &str) -> u64 {
    let t = text.trim();
    let (digits, mult) = if let Some(n) = t.strip_suffix("GB") {
        (n, 1u64 << 30)
    } else if let Some(n) = t.strip_suffix("MB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("kB") {
        (n, 1 << 10)
    } else {
        (t, 1)
    };
    digits.trim().parse::<u64>().map_or(0, |n| n * mult)
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

struct OpenTar {
    key: String,
    builder: tar::Builder<Box<dyn FinishWrite>>,
    content: u64,
}

/// The tar partitions of one backup: members go into the open tar; a tar
/// is closed (and its upload finished) once its content exceeds the
/// threshold, as WAL-G does (spec §1.2), and the next one is opened when
/// a member arrives.
struct Tars {
    storage: Arc<dyn Storage>,
    codecs: Codecs,
    prefix: String,
    threshold: u64,
    counter: u32,
    current: Option<OpenTar>,
    content_total: u64,
    stored: Arc<AtomicU64>,
    /// For the progress line: a long backup says how far it is every
    /// [`PROGRESS_EVERY`], a short one never pays for it.
    name: String,
    last_report: Instant,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(30);

impl Tars {
    fn new(storage: Arc<dyn Storage>, codecs: Codecs, name: &str, threshold: u64) -> Tars {
        Tars {
            storage,
            codecs,
            prefix: layout::partitions_prefix(name),
            threshold,
            counter: 0,
            current: None,
            content_total: 0,
            stored: Arc::new(AtomicU64::new(0)),
            name: name.to_string(),
            last_report: Instant::now(),
        }
    }

    /// Open the tar `stem` (`part_001`, `pg_control`), closing any open one.
    fn start_named(&mut self, stem: &str) -> Result<()> {
        self.close_current()?;
        self.counter += 1;
        let key = format!(
            "{}{}",
            self.prefix,
            layout::tar_name(stem, self.codecs.extension())
        );
        let sink = Box::new(Counting {
            inner: Box::new(ObjectWriter::new(self.storage.clone(), &key)),
            count: self.stored.clone(),
        });
        let writer = self
            .codecs
            .writer(sink, true, true)
            .map_err(|e| Error::io(format!("starting the upload of '{key}'"), e))?;
        self.current = Some(OpenTar {
            key,
            builder: tar::Builder::new(writer),
            content: 0,
        });
        Ok(())
    }

    fn open(&mut self) -> Result<&mut OpenTar> {
        if self.current.is_none() {
            let stem = layout::part_stem(self.counter + 1);
            self.start_named(&stem)?;
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Other("internal: no tar open".into()))
    }

    /// Write the end-of-archive blocks and finish the object's upload.
    fn close_current(&mut self) -> Result<()> {
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

    fn add_header(
        &mut self,
        member: &[u8],
        meta: &std::fs::Metadata,
        kind: tar::EntryType,
        link: Option<&[u8]>,
    ) -> Result<()> {
        let mut header = header_from(meta, kind, 0);
        let open = self.open()?;
        append(open, &mut header, member, link, io::empty())
    }

    /// A file, exactly as long as `stat` said at walk time: a file that
    /// shrank meanwhile is padded with zeros, one that grew is cut, as
    /// PostgreSQL's own base backup does; WAL replay repairs both. A file
    /// that vanished before it was opened is skipped.
    fn add_file(&mut self, member: &[u8], path: &Path, meta: &std::fs::Metadata) -> Result<()> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!("'{}' vanished during the backup; skipped", path.display());
                return Ok(());
            }
            Err(e) => return Err(Error::io(format!("opening '{}'", path.display()), e)),
        };
        let size = meta.len();
        let mut header = header_from(meta, tar::EntryType::Regular, size);
        let reader = ExactSize {
            file,
            remaining: size,
            ended: false,
            path: path.to_path_buf(),
        };
        let threshold = self.threshold;
        let open = self.open()?;
        append(open, &mut header, member, None, reader)?;
        open.content += size;
        let full = open.content > threshold;
        self.content_total += size;
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            log::info!(
                "backup {}: {} MiB read, {} MiB stored, partition {}",
                self.name,
                self.content_total >> 20,
                self.stored.load(Ordering::Relaxed) >> 20,
                self.counter
            );
        }
        if full {
            self.close_current()?;
        }
        Ok(())
    }

    /// A synthetic member (`backup_label`, `tablespace_map`): mode 0600,
    /// time 0, no owner (spec §1.3).
    fn add_text(&mut self, member: &[u8], text: &[u8]) -> Result<()> {
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
        self.content_total += text.len() as u64;
        Ok(())
    }
}

fn header_from(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
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
    let key = open.key.clone();
    let failed = |e: io::Error| {
        Error::io(
            format!(
                "writing member '{}' into '{key}'",
                String::from_utf8_lossy(member)
            ),
            e,
        )
    };
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
        open.builder.append_pax_extensions(pax).map_err(failed)?;
    }
    header.set_cksum();
    open.builder.append(header, data).map_err(failed)
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
        assert_eq!(parse_size("16MB"), 16 << 20);
        assert_eq!(parse_size("1GB"), 1 << 30);
    }
}
