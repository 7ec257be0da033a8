//! One tar object of a backup, read as a restore would read it (download,
//! decrypt, decompress, untar) with nothing written to disk: every member's
//! content is read to its end (so a cut object fails), relation files
//! through the page check, and the archive must end with its end marker
//! followed only by zeros, as backup-fetch demands.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use super::super::pagecheck::{self, PageCheck, Rules};
use crate::codec::Codecs;
use crate::pg::checksum::BLCKSZ;
use crate::storage::Storage;

/// How members are judged.
pub struct Judge<'a> {
    /// Page rules when the cluster has data checksums.
    pub pages: Option<Rules>,
    /// Members stored as increments (files_metadata.json `IsIncremented`):
    /// their bytes are not pages.
    pub increments: &'a HashSet<String>,
    /// Keep small members' content (pg_control, backup_label).
    pub keep: &'a [&'a str],
}

/// What one tar held.
#[derive(Default)]
pub struct TarSeen {
    /// Member names (as in files_metadata.json: WAL-G's `/base/...`).
    pub members: Vec<String>,
    /// Sum of regular members' content sizes.
    pub content: u64,
    pub pages: u64,
    /// (member, corrupt pages).
    pub corrupt: Vec<(String, pagecheck::Corrupt)>,
    /// Contents of the members named in [`Judge::keep`].
    pub kept: Vec<(String, Vec<u8>)>,
}

/// Reading stops at the first damage: what was seen so far, and why.
pub type Outcome = (TarSeen, Option<String>);

/// Small members kept whole at most this large (pg_control is 8 KiB).
const KEEP_MAX: u64 = 64 * 1024;

pub fn read(storage: &Arc<dyn Storage>, codecs: &Codecs, key: &str, judge: &Judge) -> Outcome {
    let mut seen = TarSeen::default();
    let raw = match storage.get(key, 0) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return (seen, Some("the object is missing".into())),
        Err(e) => return (seen, Some(format!("cannot be downloaded: {e}"))),
    };
    let base = key.rsplit('/').next().unwrap_or(key);
    let source = match codecs.reader(raw, base, true, true) {
        Ok(s) => s,
        Err(e) => return (seen, Some(format!("cannot be decoded: {e}"))),
    };
    let why = members(source, judge, &mut seen).err();
    (seen, why)
}

fn members(source: Box<dyn Read + Send>, judge: &Judge, seen: &mut TarSeen) -> Result<(), String> {
    let damaged = |e: io::Error| format!("is damaged or cannot be read: {e}");
    let mut archive = tar::Archive::new(EofWatch {
        inner: source,
        eof: false,
    });
    let mut buf = vec![0u8; 256 * 1024];
    {
        let entries = archive.entries().map_err(damaged)?;
        for entry in entries {
            let mut entry = entry.map_err(damaged)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                seen.members.push(name);
                continue;
            }
            let size = entry.size();
            let cut =
                |e: io::Error| format!("member '{name}' cannot be read whole ({size} bytes): {e}");
            let whole = |got: u64| {
                if got == size {
                    Ok(())
                } else {
                    Err(format!(
                        "is truncated: member '{name}' has {got} of its {size} bytes"
                    ))
                }
            };
            let keep = judge
                .keep
                .iter()
                .any(|k| name.trim_start_matches('/') == *k);
            if keep && size <= KEEP_MAX {
                let mut content = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut content).map_err(cut)?;
                whole(content.len() as u64)?;
                seen.kept.push((name.clone(), content));
            } else {
                let segment = judge
                    .pages
                    .and_then(|_| pagecheck::segment_of(name.as_bytes()))
                    .filter(|_| size > 0 && size.is_multiple_of(BLCKSZ as u64))
                    .filter(|_| !judge.increments.contains(&name));
                match (segment, judge.pages) {
                    (Some(seg), Some(rules)) => {
                        let mut check = PageCheck::new(&mut entry, seg, rules, None);
                        let got = drain(&mut check, &mut buf).map_err(cut)?;
                        whole(got)?;
                        let (pages, corrupt) = check.finish();
                        seen.pages += pages;
                        if corrupt.count > 0 {
                            seen.corrupt.push((name.clone(), corrupt));
                        }
                    }
                    _ => {
                        let got = drain(&mut entry, &mut buf).map_err(cut)?;
                        whole(got)?;
                    }
                }
            }
            seen.content += size;
            seen.members.push(name);
        }
    }
    let mut rest = archive.into_inner();
    if rest.eof {
        return Err("is truncated: its tar archive has no end marker".into());
    }
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(damaged(e)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err("has data after the end of its tar archive".into());
        }
    }
}

/// Remembers whether the stream ever reported its end (the tar crate
/// ends quietly when a stream stops between members).
struct EofWatch {
    inner: Box<dyn Read + Send>,
    eof: bool,
}

impl Read for EofWatch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Read to the end, discarding; the member's declared size must arrive.
fn drain(from: &mut impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
