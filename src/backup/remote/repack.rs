//! One BASE_BACKUP archive re-packed member by member into the backup's
//! partitions, as WAL-G's `TarballStreamer` does: names as PostgreSQL
//! sent them (tablespace members prefixed `pg_tblspc/<oid>/`), headers
//! kept, content streamed; `global/pg_control` is also kept aside (8 KiB)
//! for `pg_control.tar`.
//!
//! In a remote delta (PostgreSQL 17's INCREMENTAL), `INCREMENTAL.<file>`
//! members become `wi1` increments under the file's own name
//! (`incremental.rs`), `backup_label` loses its INCREMENTAL lines, and
//! names follow the base's style (a leading `/` when the base is a local
//! backup), for a restore matches a delta's files with its base's by name.

use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use super::archives::Archives;
use super::incremental::{self, Increment};
use crate::backup::files_metadata::Flag;
use crate::backup::tars::Builder;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// pg_control is 8 KiB; anything much larger is not a control file.
const MAX_CONTROL: u64 = 64 * 1024;
/// A backup_label is a few hundred bytes.
const MAX_LABEL: u64 = 64 * 1024;

/// A remote delta's state while its archives stream.
#[derive(Default)]
pub struct Delta {
    /// Names get a leading `/` (the base is a local backup).
    pub slash: bool,
    pub increments: u64,
    pub pages: u64,
    pub whole_files: u64,
    pub whole_bytes: u64,
}

/// A member walden keeps in memory (`backup_label`, `pg_control`), refused
/// when it is larger than `max`: a member that big is not what it is
/// named.
fn read_small(
    entry: &mut impl Read,
    size: u64,
    max: u64,
    member: &str,
    what: &str,
) -> Result<Vec<u8>> {
    if size > max {
        return Err(Error::Other(format!(
            "{member} in {what} is {size} bytes, which is too large for one: the server's archive is not as expected"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {what} from the server"), e))?;
    Ok(bytes)
}

/// `name` in the base's style: the top-level `backup_label` and
/// `tablespace_map` never have a leading `/` (WAL-G's local backups).
pub fn styled(name: Vec<u8>, slash: bool) -> Vec<u8> {
    if !slash || name == b"backup_label" || name == b"tablespace_map" {
        return name;
    }
    [&b"/"[..], &name].concat()
}

pub struct Control {
    pub header: tar::Header,
    pub bytes: Vec<u8>,
}

pub fn archive(
    from: &mut Archives<'_>,
    builder: &mut Builder,
    tablespace: Option<u32>,
    control: &mut Option<Control>,
    progress: &Progress,
    mut delta: Option<&mut Delta>,
) -> Result<()> {
    let what = match tablespace {
        Some(oid) => format!("the archive of tablespace {oid}"),
        None => "the data directory's archive".to_string(),
    };
    let failed = |e: std::io::Error| Error::io(format!("reading {what} from the server"), e);
    let mut tar = tar::Archive::new(from);
    for entry in tar.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        let raw = entry.path_bytes().into_owned();
        let raw = raw.strip_prefix(b"./").unwrap_or(&raw);
        let header = entry.header().clone();
        let kind = header.entry_type();
        let increment = match delta {
            Some(_) if kind.is_file() => incremental::plain_name(raw),
            _ => None,
        };
        let raw = increment.as_deref().unwrap_or(raw);
        let name = match tablespace {
            Some(oid) => [format!("pg_tblspc/{oid}/").as_bytes(), raw].concat(),
            None => raw.to_vec(),
        };
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(Error::Other(format!(
                "{what} holds '{}' of tar type {:?}, which a PostgreSQL base backup does not have",
                String::from_utf8_lossy(&name),
                kind
            )));
        }
        // Directories are not in `Files` (WAL-G lists files and links).
        let mtime =
            (!kind.is_dir()).then(|| UNIX_EPOCH + Duration::from_secs(header.mtime().unwrap_or(0)));
        let size = header.entry_size().unwrap_or(0);
        let name = match delta.as_deref() {
            Some(d) => styled(name, d.slash),
            None => name,
        };
        if let Some(d) = delta.as_deref_mut() {
            if increment.is_some() {
                let what = format!("'{}' in {what}", String::from_utf8_lossy(raw));
                let mut inc = Increment::open(&mut entry, size, &what).map_err(failed)?;
                let mut out = header.clone();
                out.set_size(inc.len);
                d.increments += 1;
                d.pages += inc.pages;
                builder.add_streamed_as(&out, &name, &mut inc, mtime, Flag::Incremented)?;
                progress.add(size);
                continue;
            }
            if kind.is_file() {
                d.whole_files += 1;
                d.whole_bytes += size;
            }
            if tablespace.is_none() && raw == b"backup_label" {
                let bytes = read_small(&mut entry, size, MAX_LABEL, "backup_label", &what)?;
                let label = incremental::plain_label(&bytes);
                let mut out = header.clone();
                out.set_size(label.len() as u64);
                builder.add_streamed(&out, &name, &mut &label[..], mtime)?;
                progress.add(size);
                continue;
            }
        }
        if tablespace.is_none() && raw == b"global/pg_control" {
            let bytes = read_small(&mut entry, size, MAX_CONTROL, "global/pg_control", &what)?;
            builder.add_streamed(&header, &name, &mut &bytes[..], mtime)?;
            *control = Some(Control { header, bytes });
        } else {
            builder.add_streamed(&header, &name, &mut entry, mtime)?;
        }
        if kind.is_file() {
            progress.add(size);
        }
    }
    Ok(())
}
