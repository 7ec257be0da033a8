//! WAL-G's increment member (`wi1`, spec §6.4), written: a 16-byte header
//! (magic, the file's size at walk time, the page count), the block
//! numbers, then the page images in the same order. Stored under the
//! file's own member name; only `files_metadata.json` says it is one.
//!
//! The pages are read again, by offset, while the member streams out (the
//! scan that chose them kept only their numbers), so memory is one page
//! buffer however many pages there are.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// `w`, `i`, format version `1`, signature.
pub const MAGIC: [u8; 4] = [b'w', b'i', b'1', 0x55];
/// Magic, u64 file size, u32 page count.
pub const HEADER_LEN: u64 = 16;
/// PostgreSQL's page (BLCKSZ); WAL-G's increments only know 8 KiB pages
/// for PostgreSQL files.
pub const PAGE: u64 = 8192;

/// Pages fewer than one in this many of a file are read without
/// readahead: they are then on average more than 128 KiB apart, more
/// than the kernel's default readahead window, which would mostly read
/// pages not needed (README, "Delta from WAL summaries").
const SPARSE: u64 = 16;

/// Copy what `buf` holds room for of `src` from `*pos` on, advancing
/// `*pos`: the increment's header, served before its pages.
pub fn read_from(src: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let n = buf.len().min(src.len() - *pos);
    buf[..n].copy_from_slice(&src[*pos..*pos + n]);
    *pos += n;
    n
}

/// Size of the member for `n` pages.
pub fn member_len(n: usize) -> u64 {
    HEADER_LEN + 4 * n as u64 + PAGE * n as u64
}

/// The header and block list: everything before the first page image.
pub fn header(file_size: u64, blocks: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN as usize + 4 * blocks.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&file_size.to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&b.to_le_bytes());
    }
    out
}

/// The whole member as a stream: header, then each selected page read
/// from `file` at `block * PAGE`. A page the file no longer has (it was
/// truncated since the scan) reads as zeros: the member keeps the length
/// its tar header announced, and WAL replay applies the truncation.
pub struct IncrementReader {
    file: File,
    path: PathBuf,
    head: Vec<u8>,
    head_pos: usize,
    blocks: Vec<u32>,
    next_block: usize,
    page: Box<[u8]>,
    page_pos: usize,
    /// Bytes read from the file (for the per-backup read/stored line).
    pub read_bytes: u64,
    /// `--verify`: each page checked as it is read.
    pub check: Option<Box<crate::backup::pagecheck::BlockCheck>>,
}

impl IncrementReader {
    pub fn new(file: File, path: PathBuf, file_size: u64, blocks: Vec<u32>) -> IncrementReader {
        if (blocks.len() as u64) * PAGE * SPARSE < file_size {
            use std::os::fd::AsRawFd;
            // Few pages far apart (blocks from WAL summaries): readahead
            // would read the file between them, as much as a page scan.
            // SAFETY: fadvise only reads the descriptor, which `file`
            // keeps open; failure only loses the hint.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        }
        IncrementReader {
            head: header(file_size, &blocks),
            file,
            path,
            head_pos: 0,
            blocks,
            next_block: 0,
            page: vec![0u8; PAGE as usize].into_boxed_slice(),
            page_pos: PAGE as usize,
            read_bytes: 0,
            check: None,
        }
    }

    pub fn len(&self) -> u64 {
        member_len(self.blocks.len())
    }

    fn load_page(&mut self, block: u32) -> io::Result<()> {
        let mut filled = 0usize;
        let offset = u64::from(block) * PAGE;
        while filled < self.page.len() {
            match self
                .file
                .read_at(&mut self.page[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading '{}': {e}", self.path.display()),
                    ))
                }
            }
        }
        self.read_bytes += filled as u64;
        self.page[filled..].fill(0);
        self.page_pos = 0;
        if let Some(check) = self.check.as_mut() {
            check.check_block(&self.page, block);
        }
        Ok(())
    }
}

impl Read for IncrementReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head_pos < self.head.len() {
            return Ok(read_from(&self.head, &mut self.head_pos, buf));
        }
        let mut written = 0;
        while written < buf.len() {
            if self.page_pos == self.page.len() {
                let Some(&block) = self.blocks.get(self.next_block) else {
                    break;
                };
                self.next_block += 1;
                self.load_page(block)?;
            }
            let n = (buf.len() - written).min(self.page.len() - self.page_pos);
            buf[written..written + n].copy_from_slice(&self.page[self.page_pos..self.page_pos + n]);
            self.page_pos += n;
            written += n;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_walg_layout() {
        // The spec's worked vector (§6.4): a 65536-byte file, blocks 3..7.
        let h = header(65536, &[3, 4, 5, 6, 7]);
        let want: Vec<u8> = [
            &[0x77, 0x69, 0x31, 0x55][..],
            &[0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x05, 0x00, 0x00, 0x00],
            &[3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0],
        ]
        .concat();
        assert_eq!(h, want);
        assert_eq!(member_len(5), 40996);
        assert_eq!(
            header(0, &[]),
            [0x77, 0x69, 0x31, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn member_streams_selected_pages_and_zero_fills_a_cut_file() {
        let path = std::env::temp_dir().join(format!("walden-incr-{}", std::process::id()));
        let mut data = Vec::new();
        for b in 0..4u8 {
            data.extend(std::iter::repeat_n(b + 1, PAGE as usize));
        }
        std::fs::write(&path, &data).unwrap();
        // Block 5 is beyond the file (it shrank after the scan).
        let mut r = IncrementReader::new(
            File::open(&path).unwrap(),
            path.clone(),
            32768,
            vec![1, 3, 5],
        );
        assert_eq!(r.len(), member_len(3));
        let mut out = Vec::new();
        // Small reads cross the header/page boundaries.
        let mut chunk = [0u8; 1000];
        loop {
            let n = r.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out.len() as u64, member_len(3));
        assert_eq!(&out[..28], &header(32768, &[1, 3, 5])[..]);
        let pages = &out[28..];
        assert!(pages[..8192].iter().all(|&b| b == 2));
        assert!(pages[8192..16384].iter().all(|&b| b == 4));
        assert!(pages[16384..].iter().all(|&b| b == 0));
        assert_eq!(r.read_bytes, 16384);
        std::fs::remove_file(path).unwrap();
    }
}
