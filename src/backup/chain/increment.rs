//! WAL-G's `wi1` increment members (spec §6.4) read and applied to a
//! restored file (§6.6).
//!
//! Layout, little-endian: `w i 1 0x55`, u64 file size at backup time, u32
//! page count N, N u32 block numbers (ascending), N pages of 8 KiB. The
//! tar member's size must be exactly `16 + 4N + 8192N`; anything else is a
//! damaged increment, refused before a byte of the file is touched.
//!
//! Two ways to apply one:
//! * forward (oldest backup first): the file from the older backups is
//!   cut or extended to the recorded size and the pages are written over
//!   it ([`apply_forward`]);
//! * reverse (newest backup first): the file is created at the recorded
//!   size as a sparse file and only the pages present are written; pages
//!   never written stay holes, and older backups fill holes only
//!   ([`fill_holes`]). Holes, not "first 24 bytes are zero" as WAL-G tests
//!   (W11), mark what is missing, so a page that is zero in the newer
//!   backup is never replaced by older content. A backup whose copy of the
//!   file was shorter turns the holes past its size into zeros: the file
//!   was truncated there, which forward restore gets by cutting the file.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// PostgreSQL's page size, the only one WAL-G's increments use for
/// PostgreSQL files.
pub const PAGE: u64 = 8192;

const MAGIC: [u8; 3] = *b"wi1";
const SIGNATURE: u8 = 0x55;
const HEADER: u64 = 16;

/// The largest file an increment may describe: a relation segment is 1
/// GiB unless PostgreSQL was built otherwise, and 64 GiB leaves room for
/// that while bounding what a damaged header makes a restore write (and
/// the block list it holds: 32 MiB).
const MAX_FILE: u64 = 64 << 30;

/// What is wrong with an increment, for a message that names it.
#[derive(Debug)]
pub enum IncrementError {
    /// Not an increment (or damaged): the first bytes are not `wi1`+0x55.
    BadMagic([u8; 4]),
    /// `wi` + a format version this reader does not know.
    UnknownVersion(u8),
    /// The member is shorter than its own header or than the pages it
    /// announces, or longer.
    SizeMismatch {
        pages: u64,
        expected: u64,
        actual: u64,
    },
    /// Block numbers must grow strictly.
    Unordered { index: usize, block: u32 },
    /// A file larger than any relation segment.
    TooLarge { size: u64, pages: u64 },
    /// A block at or past the recorded size.
    BeyondSize { block: u32, size: u64 },
    /// Reading the member (the tar stream) failed.
    Read(io::Error),
    /// Writing the file failed.
    Write(io::Error),
}

impl std::fmt::Display for IncrementError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            IncrementError::BadMagic(b) => write!(
                f,
                "it does not start with WAL-G's increment header 'wi1' 0x55 (found {:02x} {:02x} {:02x} {:02x})",
                b[0], b[1], b[2], b[3]
            ),
            IncrementError::UnknownVersion(v) => {
                write!(f, "its increment format version {v:#04x} is unknown (only '1' exists)")
            }
            IncrementError::SizeMismatch { pages, expected, actual } => write!(
                f,
                "its header announces {pages} pages ({expected} bytes in all) but the member has {actual} bytes"
            ),
            IncrementError::Unordered { index, block } => write!(
                f,
                "its block list is not ascending (entry {index} is block {block})"
            ),
            IncrementError::TooLarge { size, pages } => write!(
                f,
                "its header announces a file of {size} bytes with {pages} pages, more than the {MAX_FILE} bytes \
                 of any relation segment"
            ),
            IncrementError::BeyondSize { block, size } => write!(
                f,
                "it lists block {block}, past the end of the file's {size} bytes"
            ),
            IncrementError::Read(e) => write!(f, "reading it failed: {e}"),
            IncrementError::Write(e) => write!(f, "writing the file failed: {e}"),
        }
    }
}

type Result<T> = std::result::Result<T, IncrementError>;

/// An increment's header: the file's size at backup time and its pages.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub size: u64,
    pub blocks: Vec<u32>,
}

/// Read and check the header of an increment member of `member_size`
/// bytes; the pages follow in `r`, in block order.
pub fn read_header(r: &mut impl Read, member_size: u64) -> Result<Header> {
    let short = |expected| IncrementError::SizeMismatch {
        pages: 0,
        expected,
        actual: member_size,
    };
    if member_size < HEADER {
        return Err(short(HEADER));
    }
    let mut head = [0u8; HEADER as usize];
    r.read_exact(&mut head).map_err(IncrementError::Read)?;
    if head[0] != MAGIC[0] || head[1] != MAGIC[1] || head[3] != SIGNATURE {
        return Err(IncrementError::BadMagic([
            head[0], head[1], head[2], head[3],
        ]));
    }
    if head[2] != MAGIC[2] {
        return Err(IncrementError::UnknownVersion(head[2]));
    }
    let size = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
    let pages = u64::from(u32::from_le_bytes(
        head[12..16].try_into().unwrap_or_default(),
    ));
    if size > MAX_FILE || pages * PAGE > MAX_FILE {
        return Err(IncrementError::TooLarge { size, pages });
    }
    let expected = HEADER + pages * (4 + PAGE);
    if expected != member_size {
        return Err(IncrementError::SizeMismatch {
            pages,
            expected,
            actual: member_size,
        });
    }
    // `pages` is now bounded by the member's size, which the tar header
    // gave: the list costs 4 bytes per 8 KiB page of the member.
    let mut raw = vec![0u8; pages as usize * 4];
    r.read_exact(&mut raw).map_err(IncrementError::Read)?;
    let blocks: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (i, w) in blocks.windows(2).enumerate() {
        if w[1] <= w[0] {
            return Err(IncrementError::Unordered {
                index: i + 1,
                block: w[1],
            });
        }
    }
    // Ascending: the last is the largest.
    if let Some(&block) = blocks.last().filter(|&&b| u64::from(b) * PAGE >= size) {
        return Err(IncrementError::BeyondSize { block, size });
    }
    Ok(Header { size, blocks })
}

/// Forward apply onto `file`, the file as the older backups left it:
/// cut or extend it to the recorded size, then write the pages.
pub fn apply_forward(file: &File, header: &Header, pages: &mut impl Read) -> Result<()> {
    file.set_len(header.size).map_err(IncrementError::Write)?;
    let mut page = vec![0u8; PAGE as usize];
    for &b in &header.blocks {
        pages.read_exact(&mut page).map_err(IncrementError::Read)?;
        file.write_all_at(&page, u64::from(b) * PAGE)
            .map_err(IncrementError::Write)?;
    }
    Ok(())
}

/// Reverse apply onto a new, empty `file`: the recorded size with the
/// pages written and holes everywhere else.
pub fn create_sparse(file: &File, header: &Header, pages: &mut impl Read) -> Result<()> {
    // The same as forward onto an empty file: set_len leaves holes.
    apply_forward(file, header, pages)
}

/// The holes of `file` below `size`, as sorted `[start, end)` byte ranges.
pub fn holes(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek only reads the descriptor, which `file` keeps open.
        let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `off`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(hole) = seek(off, libc::SEEK_HOLE)? else {
            break;
        };
        if hole >= size {
            break;
        }
        let end = seek(hole, libc::SEEK_DATA)?.unwrap_or(size).min(size);
        out.push((hole, end));
        off = end;
    }
    Ok(out)
}

/// Whether `file` has a hole below `size`: pages no backup gave yet.
pub fn has_holes(file: &File, size: u64) -> io::Result<bool> {
    Ok(!holes(file, size)?.is_empty())
}

/// Write `data`, which belongs at `offset`, only where `holes` are.
fn write_into_holes(file: &File, holes: &[(u64, u64)], offset: u64, data: &[u8]) -> Result<()> {
    let end = offset + data.len() as u64;
    let first = holes.partition_point(|h| h.1 <= offset);
    for &(hs, he) in &holes[first..] {
        if hs >= end {
            break;
        }
        let (s, e) = (hs.max(offset), he.min(end));
        file.write_all_at(&data[(s - offset) as usize..(e - offset) as usize], s)
            .map_err(IncrementError::Write)?;
    }
    Ok(())
}

/// Zeros written into the holes at or past `from`: an older copy of the
/// file ended there, so whatever older backups have beyond it was cut off
/// before the newer ones were taken.
fn zero_holes_from(file: &File, holes: &[(u64, u64)], from: u64) -> Result<()> {
    let zeros = vec![0u8; PAGE as usize];
    for &(hs, he) in holes {
        let mut s = hs.max(from);
        while s < he {
            let n = (he - s).min(PAGE);
            file.write_all_at(&zeros[..n as usize], s)
                .map_err(IncrementError::Write)?;
            s += n;
        }
    }
    Ok(())
}

/// Reverse apply of an older backup's copy onto `file` (of `local_size`
/// bytes, with holes): `source` is either an increment (`header` given,
/// the pages follow in `source`) or the whole file of `source_size`
/// bytes. Only holes are written; holes past the copy's size become zeros.
/// Returns whether the file is complete afterwards.
pub fn fill_holes(
    file: &File,
    local_size: u64,
    header: Option<&Header>,
    source: &mut impl Read,
    source_size: u64,
    buf: &mut [u8],
) -> Result<bool> {
    let holes = holes(file, local_size).map_err(IncrementError::Write)?;
    let copy_size = match header {
        Some(h) => {
            let mut page = vec![0u8; PAGE as usize];
            for &b in &h.blocks {
                source.read_exact(&mut page).map_err(IncrementError::Read)?;
                write_into_holes(file, &holes, u64::from(b) * PAGE, &page)?;
            }
            h.size
        }
        None => {
            let mut offset = 0u64;
            loop {
                let n = match source.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(IncrementError::Read(e)),
                };
                if !holes.is_empty() {
                    write_into_holes(file, &holes, offset, &buf[..n])?;
                }
                offset += n as u64;
            }
            if offset != source_size {
                return Err(IncrementError::SizeMismatch {
                    pages: 0,
                    expected: source_size,
                    actual: offset,
                });
            }
            source_size
        }
    };
    zero_holes_from(file, &holes, copy_size)?;
    Ok(header.is_none() || !has_holes(file, local_size).map_err(IncrementError::Write)?)
}

/// Whether the file system of `dir` keeps holes the way [`fill_holes`]
/// relies on: a file cut to three pages with zeros written into the
/// middle one must show holes at the first and last page and data in the
/// middle. File systems that store written zeros as holes (ZFS with
/// compression) or have no SEEK_HOLE fail this.
pub fn holes_work(dir: &std::path::Path) -> io::Result<bool> {
    let path = dir.join(format!(".walden-hole-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let result = (|| {
        file.set_len(3 * PAGE)?;
        file.write_all_at(&[0u8; PAGE as usize], PAGE)?;
        Ok(holes(&file, 3 * PAGE)? == [(0, PAGE), (2 * PAGE, 3 * PAGE)])
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// The header of the spec's worked vector (§6.4): a 65536-byte file,
    /// blocks 3..7 changed since the base.
    const PINNED: [u8; 36] = [
        0x77, 0x69, 0x31, 0x55, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
        0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x06, 0x00,
        0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
    ];

    fn page(tag: u8) -> Vec<u8> {
        let mut p = vec![tag; PAGE as usize];
        p[0] = 0xA0 ^ tag;
        p
    }

    /// An increment of `size` bytes with `(block, tag)` pages.
    fn member(size: u64, pages: &[(u32, u8)]) -> Vec<u8> {
        let mut m = b"wi1\x55".to_vec();
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for (b, _) in pages {
            m.extend_from_slice(&b.to_le_bytes());
        }
        for (_, t) in pages {
            m.extend_from_slice(&page(*t));
        }
        m
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("walden-incr-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rw(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn pinned_vector_header() {
        let m = member(65536, &[(3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]);
        assert_eq!(&m[..36], &PINNED);
        assert_eq!(m.len(), 40996, "the spec's length");
        let mut r = Cursor::new(&m);
        let h = read_header(&mut r, m.len() as u64).unwrap();
        assert_eq!(
            h,
            Header {
                size: 65536,
                blocks: vec![3, 4, 5, 6, 7]
            }
        );
        assert_eq!(r.position(), 36);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let good = member(16384, &[(1, 1)]);
        let len = good.len() as u64;
        for (i, b, what) in [
            (3usize, 0x56u8, "0x55"),
            (0, b'x', "0x55"),
            (1, b'j', "0x55"),
            (2, b'2', "version"),
        ] {
            let mut m = good.clone();
            m[i] = b;
            let e = read_header(&mut Cursor::new(&m), len)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
        // Page count that does not match the member's size, both ways.
        let e = read_header(&mut Cursor::new(&good), len - 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("announces 1 pages"), "{e}");
        let e = read_header(&mut Cursor::new(&good), len + 8192).unwrap_err();
        assert!(matches!(e, IncrementError::SizeMismatch { .. }));
        let mut m = good.clone();
        m[12] = 200;
        assert!(read_header(&mut Cursor::new(&m), len).is_err());
        // Shorter than a header, and a block list out of order.
        assert!(read_header(&mut Cursor::new(&good[..10]), 10).is_err());
        let m = member(65536, &[(4, 1), (2, 2)]);
        let e = read_header(&mut Cursor::new(&m), m.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not ascending"), "{e}");
        // A block past the recorded size, and a size no segment has.
        let m = member(16384, &[(1, 1), (2, 2)]);
        let e = read_header(&mut Cursor::new(&m), m.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("block 2, past the end"), "{e}");
        let m = member(MAX_FILE + 1, &[(1, 1)]);
        let e = read_header(&mut Cursor::new(&m), m.len() as u64).unwrap_err();
        assert!(matches!(e, IncrementError::TooLarge { .. }), "{e}");
        // A page count no segment has is refused before any allocation.
        let mut m = member(16384, &[(1, 1)]);
        m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = HEADER + u64::from(u32::MAX) * (4 + PAGE);
        let e = read_header(&mut Cursor::new(&m), huge).unwrap_err();
        assert!(matches!(e, IncrementError::TooLarge { .. }), "{e}");
        // A member whose header is right but whose pages are cut short.
        let m = member(65536, &[(1, 1), (2, 2)]);
        let mut r = Cursor::new(&m[..m.len() - 100]);
        let h = read_header(&mut r, m.len() as u64).unwrap();
        let dir = tmp("short");
        let f = rw(&dir.join("f"));
        assert!(matches!(
            apply_forward(&f, &h, &mut r),
            Err(IncrementError::Read(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forward_patches_truncates_and_extends() {
        let dir = tmp("fwd");
        let path = dir.join("f");
        let base: Vec<u8> = (0..8u8).flat_map(page).collect();
        std::fs::write(&path, &base).unwrap();
        // Shrink to 3 pages, page 1 changed.
        let m = member(3 * PAGE, &[(1, 0x41)]);
        let mut r = Cursor::new(&m);
        let h = read_header(&mut r, m.len() as u64).unwrap();
        apply_forward(&rw(&path), &h, &mut r).unwrap();
        let got = std::fs::read(&path).unwrap();
        let want: Vec<u8> = [page(0), page(0x41), page(2)].concat();
        assert_eq!(got, want);
        // Grow to 5 pages with only page 4 given: page 3 is zeros.
        let m = member(5 * PAGE, &[(4, 0x44)]);
        let mut r = Cursor::new(&m);
        let h = read_header(&mut r, m.len() as u64).unwrap();
        apply_forward(&rw(&path), &h, &mut r).unwrap();
        let got = std::fs::read(&path).unwrap();
        let want: Vec<u8> = [want, vec![0; PAGE as usize], page(0x44)].concat();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The same chain as forward, newest first: full 8 pages, delta 1 cuts
    /// to 3 pages (page 1 changed), delta 2 grows to 5 (page 4 given, page
    /// 3 never written again), delta 3 changes page 0 into zeros.
    #[test]
    fn reverse_gives_forwards_bytes() {
        let dir = tmp("rev");
        if !holes_work(&dir).unwrap() {
            eprintln!("no holes in {}: skipping", dir.display());
            return;
        }
        let full: Vec<u8> = (0..8u8).flat_map(page).collect();
        let d1 = member(3 * PAGE, &[(1, 0x41)]);
        let d2 = member(5 * PAGE, &[(4, 0x44)]);
        let mut d3 = member(5 * PAGE, &[(0, 0)]);
        let l = d3.len();
        d3[l - PAGE as usize..].fill(0);

        let fwd = dir.join("fwd");
        std::fs::write(&fwd, &full).unwrap();
        for m in [&d1, &d2, &d3] {
            let mut r = Cursor::new(m);
            let h = read_header(&mut r, m.len() as u64).unwrap();
            apply_forward(&rw(&fwd), &h, &mut r).unwrap();
        }

        let rev = dir.join("rev");
        let f = rw(&rev);
        let mut r = Cursor::new(&d3);
        let h = read_header(&mut r, d3.len() as u64).unwrap();
        create_sparse(&f, &h, &mut r).unwrap();
        assert!(has_holes(&f, h.size).unwrap());
        let mut buf = vec![0u8; 3000];
        for m in [&d2, &d1] {
            let mut r = Cursor::new(m);
            let h = read_header(&mut r, m.len() as u64).unwrap();
            assert!(!fill_holes(&f, 5 * PAGE, Some(&h), &mut r, 0, &mut buf).unwrap());
        }
        let complete = fill_holes(
            &f,
            5 * PAGE,
            None,
            &mut Cursor::new(&full),
            full.len() as u64,
            &mut buf,
        )
        .unwrap();
        assert!(complete);
        assert!(!has_holes(&f, 5 * PAGE).unwrap());
        let want = std::fs::read(&fwd).unwrap();
        assert_eq!(want.len(), 5 * PAGE as usize);
        assert_eq!(&want[..PAGE as usize], &[0u8; PAGE as usize][..]);
        assert_eq!(std::fs::read(&rev).unwrap(), want);
        // A further (older) copy changes nothing.
        fill_holes(
            &f,
            5 * PAGE,
            None,
            &mut Cursor::new(&full),
            full.len() as u64,
            &mut buf,
        )
        .unwrap();
        assert_eq!(std::fs::read(&rev).unwrap(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
