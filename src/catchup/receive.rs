//! `catchup-receive PGDATA PORT` (spec §11.3, the standby side): listen,
//! tell the sender where the stopped replica is (pg_control, file list
//! with mtimes), then apply its commands. Unlike WAL-G (W23) every file
//! written is fsynced, new directories are created, backup_label /
//! pg_control are replaced atomically, tablespaces are listed and written
//! through the replica's own `pg_tblspc` links ([`super::tblspc`]), and a
//! key encrypts the connection in a way that works ([`super::sealed`]).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::control::Control;
use super::wire::{self, Command, Conn, Side};
use crate::backup::chain::increment;
use crate::error::{Error, Result};

const USAGE: &str = "walden catchup-receive PGDATA PORT";

pub fn run(settings: &crate::config::Settings, args: Vec<OsString>) -> Result<()> {
    let key = super::stream_key(settings)?;
    let usage = |what: &str| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut it = args.into_iter();
    let pgdata = PathBuf::from(it.next().ok_or_else(|| usage("PGDATA is missing"))?);
    let port: u16 = it
        .next()
        .and_then(|p| p.to_str().and_then(|p| p.parse().ok()))
        .ok_or_else(|| usage("PORT is missing or not a port number"))?;
    if it.next().is_some() {
        return Err(usage("too many arguments"));
    }
    super::fetch::check_stopped(&pgdata)?;
    // A previous run that was interrupted set pg_control aside.
    let parked = pgdata.join(super::fetch::PARKED);
    let control_path = if parked.is_file() {
        log::info!(
            "'{}' is from an interrupted catch-up: receiving again",
            parked.display()
        );
        parked.clone()
    } else {
        pgdata.join("global/pg_control")
    };
    let raw = fs::read(&control_path)
        .map_err(|e| Error::io(format!("reading '{}'", control_path.display()), e))?;
    let control = Control::read(&control_path)?;
    let timeline = super::control::timeline(&raw).ok_or_else(|| {
        Error::Other(format!(
            "'{}' is too short to be a PostgreSQL control file",
            control_path.display()
        ))
    })?;
    let files = list(&pgdata)?;
    log::info!("Receiving {} on port {port}", pgdata.display());
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| Error::io(format!("listening on port {port}"), e))?;
    let (stream, peer) = listener
        .accept()
        .map_err(|e| Error::io(format!("accepting on port {port}"), e))?;
    log::info!("Catch-up sender connected from {peer}");
    let net = |e| Error::io(format!("catch-up connection with {peer}"), e);
    let mut conn = Conn::new(stream, key.as_ref(), Side::Receiver).map_err(net)?;
    // The sender computes increments from this LSN: the REDO point unless
    // the replica shut down cleanly (WAL-G sends the checkpoint always).
    let sent = wire::control(
        &mut conn.out,
        control.system_identifier,
        timeline,
        control.catchup_limit(),
    )
    .and_then(|_| wire::file_list(&mut conn.out, &files))
    .and_then(|_| conn.finish());
    match sent {
        Ok(()) => {}
        // The sender read the first bytes, did not like them, and left.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            return Err(Error::Other(format!(
                "catch-up connection with {peer}: the sender closed the connection before taking \
                 the replica's file list ({e}); its log says why: with WALG_LIBSODIUM_KEY on one \
                 side only, different keys, or WAL-G with a key (which cannot encrypt this \
                 stream, WAL-G bug W23), it cannot read this side; the replica is unchanged"
            )))
        }
        Err(e) => return Err(net(e)),
    }
    drop(files);
    // A delete command names every file of a dropped database.
    conn.allow_lists();
    let mut parked_now = false;
    loop {
        let value = conn.recv().map_err(net)?;
        let cmd = Command::from_value(value).map_err(net)?;
        if cmd.is_done {
            conn.expect_end().map_err(net)?;
            break;
        }
        // Until the primary's pg_control arrives last, the replica must
        // not start half caught up: its own is set aside before the first
        // change (a sender that refuses, or a key that does not match,
        // leaves the replica as it was).
        if !parked_now {
            super::fetch::park_control(&pgdata)?;
            parked_now = true;
        }
        apply(&pgdata, &mut conn, cmd)?;
    }
    if !parked_now {
        return Err(Error::Other(
            "the catch-up sender ended without sending anything to apply (not even pg_control):              the replica is unchanged"
                .into(),
        ));
    }
    if !pgdata.join("global/pg_control").is_file() {
        return Err(Error::Other(format!(
            "the catch-up sender ended without sending pg_control: '{}' is half caught up and will \
             not start; run catchup-receive and catchup-send again",
            pgdata.display()
        )));
    }
    sync_all(&pgdata)?;
    fs::remove_file(&parked)
        .map_err(|e| Error::io(format!("removing '{}'", parked.display()), e))?;
    sync_all(&pgdata)?;
    log::info!("Receive done");
    Ok(())
}

/// Every file and directory below PGDATA but pg_control and WAL-G's
/// excluded names, with its modification time.
fn list(pgdata: &Path) -> Result<Vec<(String, i64, u32)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = pgdata.join(&rel);
        let entries =
            fs::read_dir(&dir).map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
            let name = entry.file_name();
            if name == "pg_control"
                || name == "pg_control.walden-catchup"
                || crate::backup::walk::is_excluded(name.as_encoded_bytes())
            {
                continue;
            }
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("reading '{}'", path.display()), e))?;
            let child = rel.join(&name);
            let text = child.to_str().ok_or_else(|| {
                Error::Other(format!(
                    "'{}' is not a UTF-8 name, which the catch-up protocol cannot carry",
                    path.display()
                ))
            })?;
            out.push((text.to_string(), meta.mtime(), meta.mtime_nsec() as u32));
            if meta.is_dir() || super::tblspc::is_link(&rel, &meta) {
                stack.push(child);
            }
        }
    }
    Ok(out)
}

/// A name from the sender, checked to stay inside PGDATA.
fn target(pgdata: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::Other(format!(
            "the catch-up sender named '{name}', a path outside the data directory"
        )));
    }
    Ok(pgdata.join(rel))
}

fn open(path: &Path, truncate: bool) -> Result<File> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating '{}'", parent.display()), e))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))
}

/// A file's content as the sender's chunks, `left` bytes in all.
struct Chunks<'a> {
    conn: &'a mut Conn,
    buf: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(0);
            }
            self.buf = self.conn.recv_chunk()?;
            self.pos = 0;
            if self.buf.len() as u64 > self.left || self.buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "file chunk beyond the announced size",
                ));
            }
            self.left -= self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn apply(pgdata: &Path, conn: &mut Conn, cmd: Command) -> Result<()> {
    let ctx = |path: &Path| {
        let p = path.display().to_string();
        move |e| Error::io(format!("writing '{p}' from the catch-up sender"), e)
    };
    if cmd.is_bin_contents {
        let path = target(pgdata, &cmd.file_name)?;
        log::info!("Writing file {}", cmd.file_name);
        let tmp = path.with_extension("walden-tmp");
        let mut f = open(&tmp, true)?;
        let contents = if cmd.file_name == "tablespace_map" {
            super::tblspc::map_to_replica(pgdata, &cmd.binary_contents)
        } else {
            cmd.binary_contents
        };
        f.write_all(&contents)
            .and_then(|_| f.sync_all())
            .map_err(ctx(&tmp))?;
        return fs::rename(&tmp, &path).map_err(ctx(&path));
    }
    if cmd.is_full || cmd.is_incremental {
        let path = target(pgdata, &cmd.file_name)?;
        let mut chunks = Chunks {
            conn,
            buf: Vec::new(),
            pos: 0,
            left: cmd.file_size,
        };
        let file = open(&path, cmd.is_full)?;
        if cmd.is_full {
            log::info!("Full file {}", cmd.file_name);
            io::copy(&mut chunks, &mut &file).map_err(ctx(&path))?;
        } else {
            log::info!("Incremental file {}", cmd.file_name);
            let damaged = |e| {
                Error::Other(format!(
                    "increment of '{}' from the catch-up sender: {e}",
                    cmd.file_name
                ))
            };
            let header = increment::read_header(&mut chunks, cmd.file_size).map_err(damaged)?;
            increment::apply_forward(&file, &header, &mut chunks).map_err(damaged)?;
            io::copy(&mut chunks, &mut io::sink()).map_err(ctx(&path))?;
        }
        if chunks.left != 0 || chunks.pos != chunks.buf.len() {
            return Err(Error::Other(format!(
                "'{}' from the catch-up sender is shorter than announced",
                cmd.file_name
            )));
        }
        return file.sync_all().map_err(ctx(&path));
    }
    if cmd.is_delete {
        let mut names = cmd.files_to_delete;
        // Children before their directories.
        names.sort_by(|a, b| b.cmp(a));
        for name in names {
            let path = target(pgdata, &name)?;
            log::info!("Deleting {name}");
            let result = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("deleting '{}'", path.display()), e)),
            }
        }
        return Ok(());
    }
    Err(Error::Other(format!(
        "unknown command from the catch-up sender: {}",
        cmd.describe()
    )))
}

/// Directory entries (new files, renames, deletions) durable too.
fn sync_all(pgdata: &Path) -> Result<()> {
    let dir =
        File::open(pgdata).map_err(|e| Error::io(format!("opening '{}'", pgdata.display()), e))?;
    // SAFETY: syncfs on a valid descriptor we own.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(Error::io(
            format!("syncing '{}'", pgdata.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}
