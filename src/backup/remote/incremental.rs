//! PostgreSQL 17's `INCREMENTAL.<file>` members re-written, as they
//! stream, into WAL-G's `wi1` increments (spec §6.4), and the incremental
//! backup's `backup_label` made a plain one.
//!
//! PostgreSQL's format (basebackup_incremental.c, reconstruct.c): u32
//! magic 0xd3ae1f0d, u32 block count `n`, u32 truncation block length,
//! `n` u32 block numbers relative to the segment file, ascending; the
//! header is padded with zeros to a multiple of BLCKSZ when `n > 0` (17.0
//! and later; the member's size tells either way); then the `n` pages. All
//! in the server's byte order.
//!
//! pg_combinebackup's reconstruction: the file has `max(truncation block
//! length, last block + 1)` blocks; a block below the truncation length
//! and not sent comes from the prior backup; one at or above it and not
//! sent is zeros. A `wi1` restore truncates or extends the base's file to
//! the header's size and writes the listed pages, keeping the base's
//! other blocks: so the blocks at or above the truncation length that the
//! server did not send are written as explicit zero pages here, and the
//! two agree block for block.
//!
//! Memory: the block list of one file (at most 131072 numbers) and one
//! page.

use std::io::{self, Read};

use crate::backup::delta::increment_writer::{self, PAGE};
use crate::backup::delta::summaries::RELSEG_BLOCKS;

/// `INCREMENTAL_MAGIC`.
const MAGIC: u32 = 0xd3ae_1f0d;
/// The prefix PostgreSQL puts before an incrementally sent file's name.
pub const PREFIX: &[u8] = b"INCREMENTAL.";
/// Lines of an incremental backup's `backup_label` that PostgreSQL
/// refuses to start from ("this is an incremental backup, not a data
/// directory"); pg_combinebackup drops them, and so does walden.
const LABEL_LINES: [&str; 2] = ["INCREMENTAL FROM LSN: ", "INCREMENTAL FROM TLI: "];

/// The file name of `INCREMENTAL.<file>` as `<file>` (same directory);
/// None for any other member.
pub fn plain_name(name: &[u8]) -> Option<Vec<u8>> {
    let (dir, base) = match name.iter().rposition(|&c| c == b'/') {
        Some(i) => name.split_at(i + 1),
        None => (&name[..0], name),
    };
    let file = base.strip_prefix(PREFIX)?;
    if file.is_empty() {
        return None;
    }
    Some([dir, file].concat())
}

/// One `INCREMENTAL.` member as a `wi1` member stream.
pub struct Increment<'r> {
    src: &'r mut dyn Read,
    what: String,
    head: Vec<u8>,
    head_pos: usize,
    /// Per page of the `wi1` member, in order: sent by the server (read
    /// from `src`) or a zero page.
    sent: Vec<bool>,
    next: usize,
    page: Box<[u8]>,
    page_pos: usize,
    /// Pages the server sent.
    pub pages: u64,
    /// The `wi1` member's length.
    pub len: u64,
}

fn bad(what: &str, problem: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the server's incremental file {what} {problem}"),
    )
}

impl<'r> Increment<'r> {
    /// Reads the PostgreSQL header of `src` (a member of `size` bytes,
    /// named `what` in errors) up to its first page.
    pub fn open(src: &'r mut dyn Read, size: u64, what: &str) -> io::Result<Increment<'r>> {
        let mut fixed = [0u8; 12];
        src.read_exact(&mut fixed)
            .map_err(|e| bad(what, format_args!("is shorter than its header ({e})")))?;
        let le = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) == MAGIC;
        let be = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) == MAGIC;
        if !le && !be {
            return Err(bad(
                what,
                "does not start with PostgreSQL's incremental magic number",
            ));
        }
        let word = |b: &[u8]| {
            let w = [b[0], b[1], b[2], b[3]];
            if le {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        let n = word(&fixed[4..8]);
        let truncation = word(&fixed[8..12]);
        if u64::from(n) > RELSEG_BLOCKS || u64::from(truncation) > RELSEG_BLOCKS {
            return Err(bad(
                what,
                format_args!("claims {n} blocks and a length of {truncation} blocks, more than a segment file holds"),
            ));
        }
        let n64 = u64::from(n);
        let unpadded = 12 + 4 * n64;
        let padded = if n > 0 {
            unpadded.div_ceil(PAGE) * PAGE
        } else {
            unpadded
        };
        let padding = if size == padded + PAGE * n64 {
            padded - unpadded
        } else if size == unpadded + PAGE * n64 {
            0
        } else {
            return Err(bad(
                what,
                format_args!(
                    "is {size} bytes, which is not the size of {n} blocks with their header"
                ),
            ));
        };
        let mut raw = vec![0u8; 4 * n as usize];
        src.read_exact(&mut raw)
            .map_err(|e| bad(what, format_args!("ends inside its block list ({e})")))?;
        let blocks: Vec<u32> = raw.chunks_exact(4).map(word).collect();
        drop(raw);
        if blocks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(what, "lists its blocks out of order"));
        }
        if blocks
            .last()
            .is_some_and(|&b| u64::from(b) >= RELSEG_BLOCKS)
        {
            return Err(bad(what, "names a block beyond a segment file"));
        }
        io::copy(&mut (&mut *src).take(padding), &mut io::sink())?;

        // The reconstructed length, and the wi1 page list: the sent
        // blocks with zero pages for the unsent ones at or above the
        // truncation length.
        let length = blocks.last().map_or(truncation, |&b| truncation.max(b + 1));
        let mut list = Vec::with_capacity(blocks.len());
        let mut sent = Vec::with_capacity(blocks.len());
        let mut i = 0;
        for b in blocks.iter().copied().chain(std::iter::once(u32::MAX)) {
            // Zero pages between the previous block and this one.
            let from = list
                .last()
                .map_or(truncation, |&l: &u32| (l + 1).max(truncation));
            for z in from..b.min(length) {
                list.push(z);
                sent.push(false);
            }
            if b == u32::MAX {
                break;
            }
            list.push(b);
            sent.push(true);
            i += 1;
        }
        debug_assert_eq!(i, blocks.len());
        Ok(Increment {
            src,
            what: what.to_string(),
            head: increment_writer::header(u64::from(length) * PAGE, &list),
            head_pos: 0,
            len: increment_writer::member_len(list.len()),
            pages: n64,
            sent,
            next: 0,
            page: vec![0u8; PAGE as usize].into_boxed_slice(),
            page_pos: PAGE as usize,
        })
    }
}

impl Read for Increment<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head_pos < self.head.len() {
            return Ok(increment_writer::read_from(
                &self.head,
                &mut self.head_pos,
                buf,
            ));
        }
        if self.page_pos == self.page.len() {
            let Some(&from_server) = self.sent.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            if from_server {
                self.src
                    .read_exact(&mut self.page)
                    .map_err(|e| bad(&self.what, format_args!("ends inside its pages ({e})")))?;
            } else {
                self.page.fill(0);
            }
            self.page_pos = 0;
        }
        let n = buf.len().min(self.page.len() - self.page_pos);
        buf[..n].copy_from_slice(&self.page[self.page_pos..self.page_pos + n]);
        self.page_pos += n;
        Ok(n)
    }
}

/// `backup_label` without the lines that mark an incremental backup.
pub fn plain_label(label: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(label);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !LABEL_LINES.iter().any(|p| line.starts_with(p)) {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n_blocks: &[u32], truncation: u32, padded: bool) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(n_blocks.len() as u32).to_le_bytes());
        out.extend_from_slice(&truncation.to_le_bytes());
        for b in n_blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        if padded && !n_blocks.is_empty() {
            out.resize(out.len().div_ceil(8192) * 8192, 0);
        }
        for b in n_blocks {
            out.extend(std::iter::repeat_n(*b as u8 + 1, 8192));
        }
        out
    }

    fn convert(data: &[u8]) -> io::Result<(Vec<u8>, u64)> {
        let mut src = data;
        let mut inc = Increment::open(&mut src, data.len() as u64, "t")?;
        let len = inc.len;
        let mut out = Vec::new();
        let mut chunk = [0u8; 999];
        loop {
            let n = inc.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out.len() as u64, len);
        Ok((out, len))
    }

    #[test]
    fn names_lose_the_incremental_prefix() {
        assert_eq!(
            plain_name(b"base/5/INCREMENTAL.16384.1"),
            Some(b"base/5/16384.1".to_vec())
        );
        assert_eq!(plain_name(b"INCREMENTAL.x"), Some(b"x".to_vec()));
        assert_eq!(plain_name(b"base/5/16384"), None);
        assert_eq!(plain_name(b"base/INCREMENTAL./1"), None);
    }

    #[test]
    fn padded_and_unpadded_members_become_wi1_with_zero_pages_past_the_cut() {
        for padded in [true, false] {
            // Truncation length 2: blocks 0,1 from the base; block 3 sent,
            // block 2 was cut and not re-sent: a zero page; 5 blocks.
            let (out, len) = convert(&member(&[1, 3, 4], 2, padded)).unwrap();
            assert_eq!(len, increment_writer::member_len(4));
            assert_eq!(
                &out[..32],
                &increment_writer::header(5 * 8192, &[1, 2, 3, 4])[..]
            );
            let pages = &out[32..];
            assert!(pages[..8192].iter().all(|&b| b == 2));
            assert!(pages[8192..16384].iter().all(|&b| b == 0));
            assert!(pages[16384..24576].iter().all(|&b| b == 4));
            assert!(pages[24576..].iter().all(|&b| b == 5));
        }
    }

    #[test]
    fn unchanged_and_shrunk_files() {
        // No block changed: same length, no pages.
        let (out, _) = convert(&member(&[], 7, false)).unwrap();
        assert_eq!(out, increment_writer::header(7 * 8192, &[]));
        // Cut to 3 blocks, none re-sent.
        let (out, _) = convert(&member(&[], 3, true)).unwrap();
        assert_eq!(out, increment_writer::header(3 * 8192, &[]));
        // Blocks all below the truncation length: no zero pages.
        let (out, _) = convert(&member(&[0, 5], 9, true)).unwrap();
        assert_eq!(&out[..24], &increment_writer::header(9 * 8192, &[0, 5])[..]);
    }

    #[test]
    fn damaged_members_are_refused() {
        let mut m = member(&[1], 2, true);
        m.pop();
        assert!(convert(&m).is_err());
        assert!(convert(&member(&[3, 1], 2, true)).is_err());
        let mut m = member(&[1], 2, true);
        m[0] ^= 1;
        assert!(convert(&m).is_err());
    }

    #[test]
    fn label_loses_its_incremental_lines() {
        let label = b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\n\
CHECKPOINT LOCATION: 0/4000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
START TIME: 2026-12-06 00:00:00 UTC\nLABEL: wal-g\nSTART TIMELINE: 1\n\
INCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\n";
        let out = String::from_utf8(plain_label(label)).unwrap();
        assert!(out.ends_with("START TIMELINE: 1\n"));
        assert!(!out.contains("INCREMENTAL"));
    }
}
