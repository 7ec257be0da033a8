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
    let mut got = Received::default();
    let peer = peer.to_string();
    let result = receive(&pgdata, &mut conn, &peer, &control, &mut got);
    match result {
        // Set aside by this run, or by an earlier one that failed.
        Err(e) if got.parked || pgdata.join(super::fetch::PARKED).exists() => {
            Err(Error::Other(format!(
            "{e}\nhint: '{}' is half caught up and will not start (its pg_control is set aside as \
             {}); run catchup-receive and catchup-send again",
            pgdata.display(),
            super::fetch::PARKED
        )))
        }
        other => other,
    }
}

/// What a run has received so far.
#[derive(Default)]
struct Received {
    /// The replica's pg_control is set aside: it will not start.
    parked: bool,
    /// The primary's pg_control, written last, after everything else is
    /// durable.
    control: Option<Vec<u8>>,
    backup_label: bool,
}

/// The size of `global/pg_control` (`PG_CONTROL_FILE_SIZE`).
const CONTROL_SIZE: usize = 8192;
/// backup_label and tablespace_map are a few lines.
const MAX_BIN_CONTENTS: usize = 1 << 20;

fn receive(
    pgdata: &Path,
    conn: &mut Conn,
    peer: &str,
    replica: &Control,
    got: &mut Received,
) -> Result<()> {
    let net = |e| Error::io(format!("catch-up connection with {peer}"), e);
    loop {
        let value = conn.recv().map_err(net)?;
        let cmd = Command::from_value(value).map_err(net)?;
        if cmd.is_done {
            conn.expect_end().map_err(net)?;
            break;
        }
        // A name the protocol never carries is refused before anything
        // changes.
        check_names(pgdata, &cmd)?;
        // The primary's pg_control is written only at the end: the
        // replica's own is set aside before the first change, so that it
        // does not start half caught up (a sender that refuses, or a key
        // that does not match, leaves the replica as it was).
        if !got.parked {
            super::fetch::park_control(pgdata)?;
            got.parked = true;
        }
        apply(pgdata, conn, cmd, peer, replica, got)?;
    }
    if !got.parked {
        return Err(Error::Other(
            "the catch-up sender ended without sending anything to apply (not even pg_control): \
             the replica is unchanged"
                .into(),
        ));
    }
    let Some(control) = got.control.take() else {
        return Err(Error::Other(
            "the catch-up sender ended without sending pg_control".into(),
        ));
    };
    if !got.backup_label {
        return Err(Error::Other(
            "the catch-up sender ended without sending backup_label (without it PostgreSQL \
             would start from the primary's checkpoint over files copied while it ran)"
                .into(),
        ));
    }
    // Everything written, on every file system it went to, is durable
    // before pg_control makes the directory startable.
    crate::backup::fetch::sync_filesystem(pgdata)?;
    for target in tablespace_targets(pgdata)? {
        crate::backup::fetch::sync_filesystem(&target)?;
    }
    let live = pgdata.join("global/pg_control");
    let written = crate::localfile::AtomicFile::create(&live).and_then(|mut f| {
        f.write_all(&control)?;
        f.commit()
    });
    written.map_err(|e| Error::io(format!("writing '{}'", live.display()), e))?;
    let parked = pgdata.join(super::fetch::PARKED);
    fs::remove_file(&parked)
        .map_err(|e| Error::io(format!("removing '{}'", parked.display()), e))?;
    crate::localfile::sync_dir(&pgdata.join("global"))
        .map_err(|e| Error::io(format!("syncing '{}'", pgdata.join("global").display()), e))?;
    log::info!("Receive done");
    Ok(())
}

/// Where the replica's tablespace links point (their file systems may
/// not be PGDATA's).
fn tablespace_targets(pgdata: &Path) -> Result<Vec<PathBuf>> {
    let dir = pgdata.join("pg_tblspc");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing '{}'", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        let path = entry.path();
        if fs::read_link(&path).is_ok() {
            out.push(path);
        }
    }
    Ok(out)
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
            // A file an interrupted run was receiving: never listed (the
            // sender sends the file again, whole), and removed.
            if name.as_encoded_bytes().ends_with(TMP.as_bytes()) {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("removing '{}'", path.display()), e))
                    }
                    _ => log::info!("Removed '{}', left by an interrupted run", path.display()),
                }
                continue;
            }
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

/// The suffix of the name a file is received under before it is renamed.
const TMP: &str = ".walden-tmp";

/// Where `path` is written before it is renamed into place.
fn tmp_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP);
    PathBuf::from(name)
}

/// A name from the sender, checked to stay inside PGDATA.
fn target(pgdata: &Path, name: &str) -> Result<PathBuf> {
    // PATH_MAX: a longer name is no file's (and is not worth logging).
    if name.len() > 4096 {
        return Err(Error::Other(format!(
            "the catch-up sender named a file with a name of {} bytes, longer than any path",
            name.len()
        )));
    }
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::Other(format!(
            "the catch-up sender named '{name}', a path outside the data directory"
        )));
    }
    Ok(pgdata.join(rel))
}

/// The configuration files (in PGDATA itself) the replica keeps its own
/// of: never written, never deleted.
fn config_file(name: &str) -> bool {
    matches!(
        name,
        "postgresql.conf" | "postgresql.auto.conf" | "pg_hba.conf" | "pg_ident.conf"
    )
}

/// Why the protocol never carries `name` (for a write, or a delete when
/// `delete`), if it does not: excluded names (pg_wal, postmaster.pid,
/// standby.signal, ... in any component), pg_control outside its own
/// command, the names this receiver writes itself, signal files.
fn never_sent(name: &str, delete: bool) -> Option<&'static str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if name
        .split('/')
        .any(|c| crate::backup::walk::is_excluded(c.as_bytes()))
    {
        return Some("backups and catch-ups leave it out (WAL-G's excluded names)");
    }
    if name == "global/pg_control" {
        return Some("pg_control comes only as the primary's control file, last");
    }
    if name == super::fetch::PARKED || name.contains(TMP) {
        return Some("it is walden's own name for a file it sets aside or writes");
    }
    if !delete && base.ends_with(".signal") {
        return Some("a signal file would change how the replica starts");
    }
    if !delete && !name.contains('/') && config_file(name) {
        return Some("the replica keeps its own configuration");
    }
    None
}

/// The refusals that need nothing but the command: made for every
/// command before it changes anything.
fn check_names(pgdata: &Path, cmd: &Command) -> Result<()> {
    if cmd.is_bin_contents {
        let name = cmd.file_name.as_str();
        target(pgdata, name)?;
        if !matches!(
            name,
            "global/pg_control" | "backup_label" | "tablespace_map"
        ) {
            return Err(refuse(
                name,
                "only backup_label, tablespace_map and global/pg_control come whole in a command",
            ));
        }
    } else if cmd.is_full || cmd.is_incremental {
        let name = cmd.file_name.as_str();
        target(pgdata, name)?;
        // WAL-G's sender sends some configuration files whole: kept
        // and dropped by apply, not refused.
        if cmd.is_full && config_file(name) {
            return Ok(());
        }
        if let Some(why) = never_sent(name, false) {
            return Err(refuse(name, why));
        }
        if matches!(name, "backup_label" | "tablespace_map") {
            return Err(refuse(name, "it comes whole in a command, at the end"));
        }
    } else if cmd.is_delete {
        for name in &cmd.files_to_delete {
            target(pgdata, name)?;
            if let Some(why) = never_sent(name, true) {
                return Err(refuse(name, why));
            }
        }
    }
    Ok(())
}

fn refuse(name: &str, why: &str) -> Error {
    Error::Other(format!(
        "the catch-up sender sent '{}', which the catch-up protocol never carries ({why}): \
         refused; is the sender a walden or WAL-G catchup-send?",
        name.escape_debug()
    ))
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

/// An error of the connection (or of what the sender sent), not of the
/// local file being written: [`Chunks`] marks its errors with it.
#[derive(Debug)]
struct FromPeer(io::Error);

impl std::fmt::Display for FromPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FromPeer {}

fn from_peer(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), FromPeer(e))
}

/// `e` from copying a file: blamed on the connection when the sender's
/// side failed, on writing `path` otherwise.
fn blame(e: io::Error, path: &Path, peer: &str) -> Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<FromPeer>()) {
        Some(_) if e.kind() == io::ErrorKind::UnexpectedEof => Error::Other(format!(
            "catch-up connection with {peer}: it ended in the middle of '{}' (the sender \
             stopped or the network failed; the sender's log says which)",
            path.display()
        )),
        Some(_) => Error::io(
            format!(
                "catch-up connection with {peer} (while receiving '{}')",
                path.display()
            ),
            e,
        ),
        None => Error::io(
            format!("writing '{}' from the catch-up sender", path.display()),
            e,
        ),
    }
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
            self.buf = self.conn.recv_chunk().map_err(from_peer)?;
            self.pos = 0;
            if self.buf.len() as u64 > self.left || self.buf.is_empty() {
                return Err(from_peer(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "file chunk beyond the announced size",
                )));
            }
            self.left -= self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn apply(
    pgdata: &Path,
    conn: &mut Conn,
    cmd: Command,
    peer: &str,
    replica: &Control,
    got: &mut Received,
) -> Result<()> {
    let ctx = |path: &Path| {
        let p = path.display().to_string();
        move |e| Error::io(format!("writing '{p}' from the catch-up sender"), e)
    };
    if cmd.is_bin_contents {
        let name = cmd.file_name.as_str();
        let path = target(pgdata, name)?;
        // Else backup_label or tablespace_map: check_names let no other through.
        if name == "global/pg_control" {
            let data = cmd.binary_contents;
            if data.len() != CONTROL_SIZE {
                return Err(Error::Other(format!(
                    "the catch-up sender's pg_control is {} bytes, not the {CONTROL_SIZE} of a \
                     PostgreSQL control file",
                    data.len()
                )));
            }
            let theirs = Control::parse(&data).map(|c| c.system_identifier);
            if theirs != Some(replica.system_identifier) {
                return Err(Error::Other(format!(
                    "the catch-up sender's pg_control is of the cluster with system identifier \
                     {}, the replica of {}",
                    theirs.unwrap_or(0),
                    replica.system_identifier
                )));
            }
            log::info!("Received pg_control: written last");
            got.control = Some(data);
            return Ok(());
        }
        if cmd.binary_contents.len() > MAX_BIN_CONTENTS {
            return Err(Error::Other(format!(
                "the catch-up sender sent {} bytes for {name}, more than any real one",
                cmd.binary_contents.len()
            )));
        }
        log::info!("Writing file {name}");
        let tmp = tmp_of(&path);
        let mut f = open(&tmp, true)?;
        let contents = if name == "tablespace_map" {
            super::tblspc::map_to_replica(pgdata, &cmd.binary_contents)
        } else {
            cmd.binary_contents
        };
        f.write_all(&contents)
            .and_then(|_| f.sync_all())
            .map_err(ctx(&tmp))?;
        fs::rename(&tmp, &path).map_err(ctx(&path))?;
        if name == "backup_label" {
            got.backup_label = true;
        }
        return Ok(());
    }
    if cmd.is_full || cmd.is_incremental {
        let name = cmd.file_name.as_str();
        let path = target(pgdata, name)?;
        let mut chunks = Chunks {
            conn,
            buf: Vec::new(),
            pos: 0,
            left: cmd.file_size,
        };
        // WAL-G's sender sends postgresql.auto.conf and pg_ident.conf whole
        // (it leaves out only postgresql.conf and pg_hba.conf).
        if cmd.is_full && config_file(name) {
            log::warn!("Keeping the replica's own {name}: the sender's is read and dropped");
            io::copy(&mut chunks, &mut io::sink()).map_err(|e| blame(e, &path, peer))?;
            return Ok(());
        }
        // A whole file goes under a temp name, renamed once complete: a
        // cut leaves the replica's old file (or none), never a short one,
        // which the next run would take for the replica's copy and patch
        // with increments only.
        let tmp = tmp_of(&path);
        // Files are written, never links replaced (pg_tblspc/OID).
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::Other(format!(
                "the catch-up sender sent '{name}', which is a symbolic link on the replica: refused"
            )));
        }
        let file = open(if cmd.is_full { &tmp } else { &path }, cmd.is_full)?;
        if cmd.is_full {
            log::info!("Full file {name}");
            io::copy(&mut chunks, &mut &file).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                blame(e, &path, peer)
            })?;
        } else {
            log::info!("Incremental file {name}");
            let damaged = |e: increment::IncrementError| match e {
                increment::IncrementError::Read(e) => blame(e, &path, peer),
                increment::IncrementError::Write(e) => ctx(&path)(e),
                e => Error::Other(format!(
                    "increment of '{name}' from the catch-up sender: {e}"
                )),
            };
            let header = increment::read_header(&mut chunks, cmd.file_size).map_err(damaged)?;
            increment::apply_forward(&file, &header, &mut chunks).map_err(damaged)?;
            io::copy(&mut chunks, &mut io::sink()).map_err(|e| blame(e, &path, peer))?;
        }
        if chunks.left != 0 || chunks.pos != chunks.buf.len() {
            if cmd.is_full {
                let _ = fs::remove_file(&tmp);
            }
            return Err(Error::Other(format!(
                "'{name}' from the catch-up sender is shorter than announced"
            )));
        }
        if cmd.is_full {
            file.sync_all().map_err(ctx(&tmp))?;
            return fs::rename(&tmp, &path).map_err(ctx(&path));
        }
        return file.sync_all().map_err(ctx(&path));
    }
    if cmd.is_delete {
        let mut names = cmd.files_to_delete;
        // Children before their directories.
        names.sort_by(|a, b| b.cmp(a));
        for name in names {
            let path = pgdata.join(&name);
            if config_file(&name) || (!name.contains('/') && name.ends_with(".signal")) {
                log::warn!("Keeping the replica's own {name}, which the primary does not have");
                continue;
            }
            log::info!("Deleting {name}");
            remove(&path)?;
        }
        return Ok(());
    }
    Err(Error::Other(format!(
        "unknown command from the catch-up sender: {}",
        cmd.describe()
    )))
}

/// Removes a file, link or (empty but for excluded entries) directory.
/// The sender never names excluded entries (pgsql_tmp, ...), which the
/// replica did not list: a directory holding one is emptied of them.
fn remove(path: &Path) -> Result<()> {
    let gone = |e: io::Error| Error::io(format!("deleting '{}'", path.display()), e);
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(gone(e)),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(gone(e)),
            _ => Ok(()),
        };
    }
    match fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::ENOTEMPTY) => return Err(gone(e)),
        Err(_) => {}
    }
    let entries = fs::read_dir(path).map_err(gone)?;
    for entry in entries {
        let entry = entry.map_err(gone)?;
        let name = entry.file_name();
        if !crate::backup::walk::is_excluded(name.as_encoded_bytes()) {
            return Err(Error::Other(format!(
                "deleting '{}': it holds '{}', which the catch-up sender did not name for deletion",
                path.display(),
                name.to_string_lossy()
            )));
        }
        let child = entry.path();
        let is_dir = fs::symlink_metadata(&child)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let removed = if is_dir {
            fs::remove_dir_all(&child)
        } else {
            fs::remove_file(&child)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(format!("deleting '{}'", child.display()), e))
            }
            _ => log::info!("Deleting {} (left out of catch-ups)", child.display()),
        }
    }
    fs::remove_dir(path).map_err(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_protocol_never_carries() {
        for name in [
            "pg_wal/000000010000000000000001",
            "base/1/pgsql_tmp/t1",
            "postmaster.pid",
            "postmaster.opts",
            "pg_tblspc/16384/PG_16_1/pgsql_tmp/x",
            "global/pg_control",
            "global/pg_control.walden-catchup",
            "backup_label.walden-tmp",
            "standby.signal",
            "recovery.signal",
            "postgresql.auto.conf",
            "pg_ident.conf",
        ] {
            assert!(never_sent(name, false).is_some(), "{name}");
        }
        for name in ["base/1/1259", "global/1262", "PG_VERSION", "pg_xact/0000"] {
            assert!(never_sent(name, false).is_none(), "{name}");
        }
        // A delete may name signal and configuration files (the primary
        // lacks them): they are kept, not refused.
        for name in ["recovery.signal", "postgresql.conf", "base/1/1259"] {
            assert!(never_sent(name, true).is_none(), "{name}");
        }
        assert!(never_sent("pg_wal", true).is_some());
        assert!(never_sent("global/pg_control", true).is_some());
    }

    #[test]
    fn a_directory_is_removed_with_its_excluded_entries() {
        let dir = std::env::temp_dir().join(format!("walden-receive-rm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ts = dir.join("PG_16_1");
        fs::create_dir_all(ts.join("pgsql_tmp/sub")).unwrap();
        fs::write(ts.join("pgsql_tmp/sub/t"), b"x").unwrap();
        fs::write(ts.join("pg_internal.init.x"), b"x").unwrap();
        // A child the sender did not name: refused, nothing removed.
        let e = remove(&ts).unwrap_err().to_string();
        assert!(e.contains("pg_internal.init.x"), "{e}");
        assert!(ts.join("pgsql_tmp").exists());
        fs::remove_file(ts.join("pg_internal.init.x")).unwrap();
        remove(&ts).unwrap();
        assert!(!ts.exists());
        remove(&ts).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
