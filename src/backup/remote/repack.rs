//! One BASE_BACKUP archive re-packed member by member into the backup's
//! partitions, as WAL-G's `TarballStreamer` does: names as PostgreSQL
//! sent them (tablespace members prefixed `pg_tblspc/<oid>/`), headers
//! kept, content streamed; `global/pg_control` is also kept aside (8 KiB)
//! for `pg_control.tar`.

use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use super::archives::Archives;
use crate::backup::tars::Builder;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// pg_control is 8 KiB; anything much larger is not a control file.
const MAX_CONTROL: u64 = 64 * 1024;

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
        let name = match tablespace {
            Some(oid) => [format!("pg_tblspc/{oid}/").as_bytes(), raw].concat(),
            None => raw.to_vec(),
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
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
        if tablespace.is_none() && name == b"global/pg_control" {
            if size > MAX_CONTROL {
                return Err(Error::Other(format!(
                    "global/pg_control in {what} is {size} bytes, which is not a control file"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut bytes)
                .map_err(failed)?;
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
