//! `catchup-send PGDATA HOST:PORT` (spec §11.3, the primary side): read
//! the stopped replica's position and file list from catchup-receive,
//! then, inside a non-exclusive backup, send every file changed since —
//! relation files the replica has as WAL-G increments of the pages at or
//! after its position, others whole — the names it must delete, and
//! backup_label, tablespace_map and pg_control. Unlike WAL-G (W23) a
//! relation file with an invalid page is sent whole instead of aborting.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::gob::{self, Value};
use super::wire::{Command, Conn, Side, CHUNK};
use crate::backup::delta::increment_writer::IncrementReader;
use crate::backup::delta::scan;
use crate::backup::walk;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::pg::{Client, ConnParams};

const USAGE: &str = "walden catchup-send PGDATA HOST:PORT";

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let key = super::stream_key(settings)?;
    let usage = |what: &str| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut it = args.into_iter();
    let pgdata = PathBuf::from(it.next().ok_or_else(|| usage("PGDATA is missing"))?);
    let dest = it
        .next()
        .and_then(|d| d.into_string().ok())
        .ok_or_else(|| usage("HOST:PORT is missing"))?;
    if it.next().is_some() {
        return Err(usage("too many arguments"));
    }
    let pgdata = pgdata
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving '{}'", pgdata.display()), e))?;
    let params = ConnParams::from_settings(settings)?;
    let mut pg = Client::connect(&params)?;
    let rows = pg.query(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
                (SELECT timeline_id FROM pg_control_checkpoint())::text, \
                current_setting('server_version_num')",
    )?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("reading the server's identity: no row".into()))?;
    let num = |i| -> Result<i64> { Ok(row.get_str(i)?.unwrap_or("").parse().unwrap_or(0)) };
    let (system_identifier, timeline, version) = (num(0)? as u64, num(1)? as u64, num(2)?);

    log::info!("Sending {} to {dest}", pgdata.display());
    let stream = TcpStream::connect(&dest)
        .map_err(|e| Error::io(format!("connecting to catchup-receive at {dest}"), e))?;
    let net = |e| Error::io(format!("catch-up connection with {dest}"), e);
    let mut conn = Conn::new(stream, key.as_ref(), Side::Sender).map_err(net)?;
    let control = conn.recv().map_err(net)?;
    let (their_id, their_tli, checkpoint) = (
        control.uint("SystemIdentifier"),
        control.uint("CurrentTimeline"),
        control.uint("Checkpoint"),
    );
    if their_id != system_identifier {
        return Err(Error::Other(format!(
            "the replica is of another cluster (system identifier {their_id}, this server's {system_identifier})"
        )));
    }
    if their_tli != timeline {
        return Err(Error::Other(format!(
            "the replica is on timeline {their_tli}, this server on {timeline}: catch-up cannot cross timelines"
        )));
    }
    // The list is the one long message (about 45 bytes a file), read
    // entry by entry into the map the walk consults (~80 bytes a file);
    // the map may take at most 320 MiB (a peer's list of tiny distinct
    // names would otherwise cost ~14x its bytes).
    conn.allow_lists();
    let mut theirs: HashMap<String, Option<(i64, u32)>> = HashMap::new();
    let mut held = 0u64;
    let entry_cost = std::mem::size_of::<(String, Option<(i64, u32)>)>() as u64 + 8;
    conn.recv_map(|k, v| {
        if let Value::Bytes(k) = k {
            held += k.len() as u64 + entry_cost;
            if held > 4 * gob::MAX_LIST_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the replica's file list takes more memory than any real one",
                ));
            }
            theirs.insert(
                String::from_utf8_lossy(&k).into_owned(),
                gob::decode_time(v.bytes("MTime")),
            );
        }
        Ok(())
    })
    .map_err(|e| {
        Error::io(
            format!("reading the replica's file list from catchup-receive at {dest}"),
            e,
        )
    })?;
    log::info!("Received file list of {} files", theirs.len());
    // With a key the receiver ended its stream after the list: read to
    // that end (a cut is an error), and so that nothing is left unread,
    // which would make this side's close a reset that can cost the
    // receiver the last frames of this side's stream.
    conn.expect_end().map_err(net)?;
    super::tblspc::check_replica_has_all(&pgdata, &theirs)?;

    let start_sql = if version >= 150000 {
        "SELECT pg_backup_start('', true)::text"
    } else {
        "SELECT pg_start_backup('', true, false)::text"
    };
    let rows = pg.query(start_sql)?;
    let start_text = rows
        .first()
        .and_then(|r| r.get_str(0).ok().flatten())
        .unwrap_or("")
        .to_string();
    let start = crate::backup::layout::parse_lsn(&start_text).ok_or_else(|| {
        Error::Other(format!(
            "the server returned '{start_text}', which is not an LSN"
        ))
    })?;
    if start <= checkpoint {
        return Err(Error::Other(format!(
            "the replica is already ahead (this server's LSN {start:X}, the replica's {checkpoint:X})"
        )));
    }

    // WAL-G's receiver lists the data directory itself as "".
    let mut seen = HashSet::from([String::new()]);
    let mut sender = Sender {
        conn: &mut conn,
        theirs: &theirs,
        checkpoint,
        buf: Vec::new(),
        dest: &dest,
    };
    sender.walk(&pgdata, Path::new(""), &mut seen)?;
    let mut gone: Vec<String> = theirs
        .keys()
        .filter(|k| !seen.contains(*k))
        .filter(|k| !k.split('/').any(|c| walk::is_excluded(c.as_bytes())))
        .cloned()
        .collect();
    if !gone.is_empty() {
        gone.sort();
        conn.send_command(&Command {
            is_delete: true,
            files_to_delete: gone,
            ..Default::default()
        })
        .map_err(net)?;
    }

    let stop_sql = if version >= 150000 {
        "SELECT labelfile FROM pg_backup_stop(false)"
    } else {
        "SELECT labelfile FROM pg_stop_backup(false, false)"
    };
    let rows = pg.query(stop_sql)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("stopping the backup: the server returned no row".into()))?;
    let label = row.get_str(0)?.unwrap_or("").as_bytes().to_vec();
    // The replica keeps its own tablespace links (see `tblspc`): an
    // empty map, where WAL-G sends the primary's.
    let map = Vec::new();
    let control_path = pgdata.join("global/pg_control");
    let control = fs::read(&control_path)
        .map_err(|e| Error::io(format!("reading '{}'", control_path.display()), e))?;
    for (name, data) in [
        ("backup_label", label),
        ("tablespace_map", map),
        ("global/pg_control", control),
    ] {
        conn.send_command(&Command {
            is_bin_contents: true,
            file_name: name.into(),
            binary_contents: data,
            ..Default::default()
        })
        .map_err(net)?;
    }
    conn.send_command(&Command {
        is_done: true,
        ..Default::default()
    })
    .map_err(net)?;
    conn.finish().map_err(net)?;
    log::info!("Send done");
    Ok(())
}

struct Sender<'a> {
    conn: &'a mut Conn,
    theirs: &'a HashMap<String, Option<(i64, u32)>>,
    checkpoint: u64,
    buf: Vec<u8>,
    dest: &'a str,
}

/// The configuration files the replica keeps (WAL-G's catch-up exclusions,
/// and postgresql.auto.conf and pg_ident.conf, which the receiver keeps).
fn config_file(name: &[u8]) -> bool {
    matches!(
        name,
        b"pg_hba.conf" | b"postgresql.conf" | b"postgresql.auto.conf" | b"pg_ident.conf"
    )
}

impl Sender<'_> {
    fn walk(&mut self, pgdata: &Path, rel: &Path, seen: &mut HashSet<String>) -> Result<()> {
        let dir = pgdata.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?
            .collect::<io::Result<_>>()
            .map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let child = rel.join(&name);
            let Some(text) = child.to_str() else {
                log::warn!("'{}' is not a UTF-8 name: not sent", child.display());
                continue;
            };
            seen.insert(text.to_string());
            let bytes = name.as_encoded_bytes();
            if name == "pg_control" || walk::is_excluded(bytes) || config_file(bytes) {
                continue;
            }
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
            };
            if meta.is_dir() || super::tblspc::is_link(rel, &meta) {
                self.walk(pgdata, &child, seen)?;
            } else if meta.is_file() {
                let text = text.to_string();
                let theirs = self.theirs.get(&text);
                if theirs == Some(&Some((meta.mtime(), meta.mtime_nsec() as u32))) {
                    continue;
                }
                self.send_file(&path, &text, meta.len(), theirs.is_some())?;
            } else {
                log::warn!(
                    "'{}' is not a regular file or directory: not sent",
                    path.display()
                );
            }
        }
        Ok(())
    }

    fn send_file(&mut self, path: &Path, name: &str, size: u64, theirs: bool) -> Result<()> {
        let local = |e| Error::io(format!("reading '{}'", path.display()), e);
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local(e)),
        };
        let mut blocks = None;
        if theirs && scan::is_paged(format!("/{name}").as_bytes(), size) {
            match scan::select(&mut file, size, self.checkpoint, &mut self.buf).map_err(local)? {
                Ok(sel) => blocks = Some(sel.blocks),
                Err(bad) => {
                    log::warn!("'{name}' has an invalid page {}: sent whole", bad.block);
                    // The scan read on; the whole file is sent from its start.
                    file.rewind().map_err(local)?;
                }
            }
        }
        let dest = self.dest.to_string();
        let net = |e| Error::io(format!("catch-up connection with {dest}"), e);
        let (mut reader, len, inc): (Box<dyn Read>, u64, bool) = match blocks {
            Some(b) => {
                let r = IncrementReader::new(
                    File::open(path).map_err(local)?,
                    path.to_path_buf(),
                    size,
                    b,
                );
                let len = r.len();
                (Box::new(r), len, true)
            }
            // Cut or grown since the stat: exactly `size` bytes, zeros
            // past a cut (WAL replay brings the file to its state).
            None => (Box::new(file.take(size).chain(io::repeat(0))), size, false),
        };
        self.conn
            .send_command(&Command {
                file_name: name.into(),
                is_full: !inc,
                is_incremental: inc,
                file_size: len,
                ..Default::default()
            })
            .map_err(net)?;
        let mut left = len;
        let mut chunk = vec![0u8; CHUNK];
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            reader.read_exact(&mut chunk[..n]).map_err(local)?;
            self.conn.send_chunk(&chunk[..n]).map_err(net)?;
            left -= n as u64;
        }
        log::info!("Sent {name}, {len} bytes");
        Ok(())
    }
}
