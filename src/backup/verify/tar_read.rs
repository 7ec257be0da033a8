//! One tar object of a backup, read as a restore would read it (download,
//! decrypt, decompress, untar) with nothing written to disk: every member's
//! content is read to its end (so a cut object fails), relation files
//! through the page check, and the archive must end with its end marker
//! followed only by zeros, as backup-fetch demands.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use super::super::chain::increment::{self, IncrementError};
use super::super::pagecheck::{self, PageCheck, Rules};
use crate::codec::Codecs;
use crate::pg::checksum::{self, BLCKSZ, RELSEG_SIZE};
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
    /// Increment members decoded.
    pub increments: u64,
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
            } else if judge.increments.contains(&name) {
                increment(&mut entry, &name, size, judge.pages, seen)?;
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

/// A delta backup's increment member (`wi1`, spec §6.4): the header must
/// hold together with the member's size, every block must lie inside the
/// file's recorded size, and, with page rules, every page must pass the
/// page check at its own block number, as in a full backup's file.
fn increment(
    entry: &mut impl Read,
    name: &str,
    size: u64,
    rules: Option<Rules>,
    seen: &mut TarSeen,
) -> Result<(), String> {
    let bad = |e: IncrementError| format!("member '{name}' is not a readable increment: {e}");
    // read_header also refuses a block past the recorded size.
    let header = increment::read_header(entry, size).map_err(bad)?;
    let first_block = pagecheck::segment_of(name.as_bytes())
        .filter(|_| rules.is_some())
        .map(|seg| seg.wrapping_mul(RELSEG_SIZE));
    let mut page = vec![0u8; BLCKSZ];
    let mut corrupt = pagecheck::Corrupt::default();
    for &block in &header.blocks {
        entry
            .read_exact(&mut page)
            .map_err(|e| bad(IncrementError::Read(e)))?;
        let (Some(first), Some(rules)) = (first_block, rules) else {
            continue;
        };
        let blkno = first.wrapping_add(block);
        seen.pages += 1;
        // As for whole files: pages changed after the backup's start may
        // be torn; WAL replay writes them again.
        let upper_set = page[14] != 0 || page[15] != 0;
        if rules
            .skip_from_lsn
            .is_some_and(|from| upper_set && checksum::page_lsn(&page) >= from)
        {
            continue;
        }
        if !checksum::verify_page(&page, blkno).is_ok() {
            corrupt.count += 1;
            if corrupt.blocks.len() < pagecheck::SOME_BLOCKS {
                corrupt.blocks.push(blkno);
            }
        }
    }
    seen.increments += 1;
    if corrupt.count > 0 {
        seen.corrupt.push((name.to_string(), corrupt));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap-like page with a valid checksum as block `blkno`.
    fn page(blkno: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        p[4..8].copy_from_slice(&0x100u32.to_le_bytes()); // pd_lsn low half
        p[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
        p[14..16].copy_from_slice(&8000u16.to_le_bytes()); // pd_upper
        p[16..18].copy_from_slice(&8192u16.to_le_bytes()); // pd_special
        p[18..20].copy_from_slice(&0x2004u16.to_le_bytes()); // size/version
        p[8000..].fill(fill);
        let sum = checksum::page_checksum(&p, blkno);
        p[8..10].copy_from_slice(&sum.to_le_bytes());
        p
    }

    fn wi1(size: u64, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"wi1\x55".to_vec();
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for (b, _) in pages {
            out.extend_from_slice(&b.to_le_bytes());
        }
        for (_, p) in pages {
            out.extend_from_slice(p);
        }
        out
    }

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn judge_all(tar: Vec<u8>, increments: &[&str]) -> (TarSeen, Result<(), String>) {
        let set: HashSet<String> = increments.iter().map(|s| s.to_string()).collect();
        let judge = Judge {
            pages: Some(Rules {
                skip_from_lsn: Some(1 << 40),
                store_all: false,
            }),
            increments: &set,
            keep: &[],
        };
        let mut seen = TarSeen::default();
        let r = members(Box::new(io::Cursor::new(tar)), &judge, &mut seen);
        (seen, r)
    }

    #[test]
    fn increments_are_decoded_and_their_pages_checked() {
        // Segment 1 of the relation: block numbers are relative to the
        // file, checksums use the absolute ones.
        let abs = |b: u32| RELSEG_SIZE + b;
        let good = wi1(
            10 * BLCKSZ as u64,
            &[(2, page(abs(2), 1)), (7, page(abs(7), 2))],
        );
        let (seen, r) = judge_all(tar_of(&[("base/5/16384.1", &good)]), &["base/5/16384.1"]);
        r.unwrap();
        assert_eq!((seen.increments, seen.pages), (1, 2));
        assert!(seen.corrupt.is_empty());

        // A page stored for block 7 carrying block 6's checksum.
        let bad = wi1(
            10 * BLCKSZ as u64,
            &[(2, page(abs(2), 1)), (7, page(abs(6), 2))],
        );
        let (seen, r) = judge_all(tar_of(&[("base/5/16384.1", &bad)]), &["base/5/16384.1"]);
        r.unwrap();
        assert_eq!(seen.corrupt.len(), 1);
        assert_eq!(seen.corrupt[0].1.blocks, vec![abs(7)]);

        // Framing: a header announcing more pages than the member holds,
        // a block past the recorded size, not an increment at all.
        let mut short = good.clone();
        short[12] = 3;
        let past = wi1(4 * BLCKSZ as u64, &[(7, page(abs(7), 2))]);
        let plain = page(0, 3);
        for (data, what) in [
            (&short, "announces 3 pages"),
            (&past, "block 7, past the end"),
            (&plain, "increment header"),
        ] {
            let (_, r) = judge_all(tar_of(&[("base/5/16384.1", data)]), &["base/5/16384.1"]);
            let e = r.unwrap_err();
            assert!(e.contains("base/5/16384.1") && e.contains(what), "{e}");
        }
    }
}
