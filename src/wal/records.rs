//! Walking the records of one WAL segment, forward, far enough to find its
//! checkpoint records: what `pg_rewind` looks for when it reads the
//! target's WAL backwards from the point of divergence (findLastCheckpoint
//! in its parsexlog.c) and needs the segment that holds it.
//!
//! Layout (PostgreSQL's xlog_internal.h and xlogrecord.h, unchanged since
//! 9.5): every page starts with a header, 40 bytes (MAXALIGNed long form,
//! carrying the segment and page sizes) on a segment's first page and 24
//! bytes on the others; `xlp_pageaddr` is the page's own LSN and
//! `xlp_rem_len` how much of a record begun on an earlier page continues
//! here. Records start MAXALIGNed (8) and may cross pages (their 24-byte
//! header too); the header is `xl_tot_len` u32, `xl_xid` u32, `xl_prev`
//! u64 (the previous record's start), `xl_info` u8, `xl_rmid` u8, two pad
//! bytes, `xl_crc` u32: CRC-32C of the body, then of the header's first 20
//! bytes. A checkpoint record (resource manager XLOG, 0, with info
//! CHECKPOINT_SHUTDOWN 0x00 or CHECKPOINT_ONLINE 0x10) has no block
//! references: its body is the main-data id (255 and a one-byte length, or
//! 254 and a u32), possibly after the replication-origin (253, u16) or
//! top-level-xid (252, u32) ids, then a CheckPoint struct whose first
//! fields are `redo` u64 and `ThisTimeLineID` u32.
//!
//! The walk streams page by page, so memory does not grow with the
//! segment size; it ends at the first thing that is not valid WAL (a page
//! address that does not match: a recycled file; a zero length; a broken
//! `xl_prev` chain; a CRC mismatch), as PostgreSQL's reader does.

use std::io::{self, Read};

const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const RM_XLOG_ID: u8 = 0;
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
const XLR_INFO_MASK: u8 = 0x0F;
/// Enough of a checkpoint record's body for its block ids and CheckPoint.
const KEEP: usize = 256;

/// A checkpoint record found in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where the record starts.
    pub lsn: u64,
    /// Where replay from this checkpoint begins.
    pub redo: u64,
    /// The checkpoint's ThisTimeLineID.
    pub timeline: u32,
    pub shutdown: bool,
}

/// What a walk through one segment saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The last checkpoint record starting in the segment before the limit.
    pub checkpoint: Option<Checkpoint>,
    /// Valid records that start in the segment.
    pub records: u64,
}

/// Walk the records that start in the segment beginning at LSN
/// `seg_start` (`seg_bytes` long) read from `reader` and return the last
/// checkpoint record that starts before `before`. `reader` may go on with
/// the next segment's bytes, to complete a record that crosses into it.
/// Errors are read errors and a segment whose first page is not a WAL
/// page of this segment and size.
pub fn scan_segment(
    reader: impl Read,
    seg_start: u64,
    seg_bytes: u64,
    before: u64,
) -> io::Result<Scan> {
    let mut pages = Pages::open(reader, seg_start, seg_bytes)?;
    let mut scan = Scan::default();
    let mut prev: Option<u64> = None;
    loop {
        if !pages.at_record()? {
            break;
        }
        let start = pages.lsn();
        if start >= seg_start + seg_bytes {
            break;
        }
        let mut header = [0u8; RECORD_HEADER];
        let mut got = 0;
        if !pages.take(RECORD_HEADER, |c| {
            header[got..got + c.len()].copy_from_slice(c);
            got += c.len();
        })? {
            break;
        }
        let tot_len = u32_at(&header, 0) as usize;
        let xl_prev = u64_at(&header, 8);
        let info = header[16];
        let rmid = header[17];
        if tot_len < RECORD_HEADER || prev.is_some_and(|p| p != xl_prev) {
            break;
        }
        let rm_info = info & !XLR_INFO_MASK;
        let is_checkpoint = rmid == RM_XLOG_ID
            && (rm_info == XLOG_CHECKPOINT_SHUTDOWN || rm_info == XLOG_CHECKPOINT_ONLINE);
        let mut crc = Crc32c::new();
        let mut kept = Vec::new();
        if !pages.take(tot_len - RECORD_HEADER, |c| {
            crc.update(c);
            if is_checkpoint && kept.len() < KEEP {
                kept.extend_from_slice(&c[..c.len().min(KEEP - kept.len())]);
            }
        })? {
            break;
        }
        crc.update(&header[..20]);
        if crc.value() != u32_at(&header, 20) {
            break;
        }
        scan.records += 1;
        if is_checkpoint && start < before {
            if let Some((redo, timeline)) = checkpoint_data(&kept) {
                scan.checkpoint = Some(Checkpoint {
                    lsn: start,
                    redo,
                    timeline,
                    shutdown: rm_info == XLOG_CHECKPOINT_SHUTDOWN,
                });
            }
        }
        prev = Some(start);
        pages.align();
    }
    Ok(scan)
}

/// The redo LSN and timeline of a checkpoint record's main data.
fn checkpoint_data(body: &[u8]) -> Option<(u64, u32)> {
    let mut at = 0;
    let data = loop {
        match *body.get(at)? {
            255 => {
                let len = *body.get(at + 1)? as usize;
                break body.get(at + 2..at + 2 + len)?;
            }
            254 => {
                let len = u32::from_le_bytes(body.get(at + 1..at + 5)?.try_into().ok()?) as usize;
                // Only the start is kept; the CheckPoint's first fields suffice.
                break body.get(at + 5..(at + 5 + len).min(body.len()))?;
            }
            253 => at += 3,
            252 => at += 5,
            // A block reference: not a checkpoint's layout.
            _ => return None,
        }
    };
    if data.len() < 12 {
        return None;
    }
    Some((u64_at(data, 0), u32_at(data, 8)))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The WAL's bytes page by page, page headers skipped.
struct Pages<R> {
    reader: R,
    page: Vec<u8>,
    seg_bytes: u64,
    /// The LSN of the page in `page`.
    page_lsn: u64,
    /// Read position in `page`.
    off: usize,
}

impl<R: Read> Pages<R> {
    fn open(mut reader: R, seg_start: u64, seg_bytes: u64) -> io::Result<Pages<R>> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut head = [0u8; LONG_HEADER];
        reader.read_exact(&mut head)?;
        let info = u16::from_le_bytes([head[2], head[3]]);
        let page_addr = u64_at(&head, 8);
        let seg_size = u32_at(&head, 32) as u64;
        let block = u32_at(&head, 36) as usize;
        if info & XLP_LONG_HEADER == 0 || page_addr != seg_start {
            return Err(bad(format!(
                "not the start of the WAL segment at {:X}/{:X} (page address {:X}/{:X})",
                seg_start >> 32,
                seg_start & 0xFFFF_FFFF,
                page_addr >> 32,
                page_addr & 0xFFFF_FFFF
            )));
        }
        if seg_size != seg_bytes || !block.is_power_of_two() || !(1024..=65536).contains(&block) {
            return Err(bad(format!(
                "WAL segment of {seg_size} bytes in pages of {block}: WALG_PG_WAL_SIZE says {seg_bytes}"
            )));
        }
        let mut page = vec![0u8; block];
        page[..LONG_HEADER].copy_from_slice(&head);
        reader.read_exact(&mut page[LONG_HEADER..])?;
        let mut pages = Pages {
            reader,
            page,
            seg_bytes,
            page_lsn: seg_start,
            off: LONG_HEADER,
        };
        // The tail of a record begun in the previous segment comes first.
        if info & XLP_FIRST_IS_CONTRECORD != 0 {
            let rem = u32_at(&pages.page, 16) as usize;
            if pages.take(rem, |_| ())? {
                pages.align();
            }
        }
        Ok(pages)
    }

    fn lsn(&self) -> u64 {
        self.page_lsn + self.off as u64
    }

    fn align(&mut self) {
        self.off = (self.off + 7) & !7;
    }

    /// Read the next page; false at the end of the input or at a page
    /// that is not the next page of this WAL.
    fn next_page(&mut self) -> io::Result<bool> {
        let lsn = self.page_lsn + self.page.len() as u64;
        match self.reader.read_exact(&mut self.page) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if u64_at(&self.page, 8) != lsn {
            return Ok(false);
        }
        self.page_lsn = lsn;
        self.off = if lsn.is_multiple_of(self.seg_bytes) {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        Ok(true)
    }

    /// Move past a page's end to the next page's first record position.
    fn at_record(&mut self) -> io::Result<bool> {
        if self.off >= self.page.len() {
            return self.next_page();
        }
        Ok(true)
    }

    /// Pass the next `n` bytes to `sink`, across pages; false when the WAL
    /// ends first.
    fn take(&mut self, mut n: usize, mut sink: impl FnMut(&[u8])) -> io::Result<bool> {
        while n > 0 {
            if self.off >= self.page.len() && !self.next_page()? {
                return Ok(false);
            }
            let k = n.min(self.page.len() - self.off);
            sink(&self.page[self.off..self.off + k]);
            self.off += k;
            n -= k;
        }
        Ok(true)
    }
}

/// CRC-32C (Castagnoli), PostgreSQL's `pg_crc32c`, through a table built
/// at compile time: every record of a walked segment goes through it.
pub struct Crc32c(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(0xFFFF_FFFF)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut s = self.0;
        for &b in bytes {
            s = CRC_TABLE[((s ^ u32::from(b)) & 0xFF) as usize] ^ (s >> 8);
        }
        self.0 = s;
    }

    pub fn value(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 8192;
    const SEG: u64 = 1 << 20;

    /// Writes WAL as PostgreSQL lays it out: records MAXALIGNed, split
    /// across pages behind page headers, a segment's first page long.
    struct Writer {
        bytes: Vec<u8>,
        start: u64,
        prev: u64,
        /// Bytes still owed to a record continuing onto the next page.
        pending: usize,
    }

    impl Writer {
        fn new(start: u64) -> Writer {
            Writer {
                bytes: Vec::new(),
                start,
                prev: 0,
                pending: 0,
            }
        }

        fn lsn(&self) -> u64 {
            self.start + self.bytes.len() as u64
        }

        fn page_header(&mut self) {
            let lsn = self.lsn();
            let long = lsn.is_multiple_of(SEG);
            let mut info = if long { XLP_LONG_HEADER } else { 0 };
            if self.pending > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            let mut h = vec![0u8; if long { LONG_HEADER } else { SHORT_HEADER }];
            h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            h[2..4].copy_from_slice(&info.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&lsn.to_le_bytes());
            h[16..20].copy_from_slice(&(self.pending as u32).to_le_bytes());
            if long {
                h[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                h[36..40].copy_from_slice(&(BLOCK as u32).to_le_bytes());
            }
            self.bytes.extend_from_slice(&h);
        }

        fn put(&mut self, mut data: &[u8]) {
            while !data.is_empty() {
                if self.bytes.len().is_multiple_of(BLOCK) {
                    self.page_header();
                }
                let room = BLOCK - self.bytes.len() % BLOCK;
                let k = room.min(data.len());
                self.bytes.extend_from_slice(&data[..k]);
                data = &data[k..];
                self.pending -= k;
            }
        }

        /// Append a record; returns its LSN.
        fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> u64 {
            while !self.bytes.len().is_multiple_of(8) {
                self.bytes.push(0);
            }
            if self.bytes.len().is_multiple_of(BLOCK) {
                self.page_header();
            }
            let lsn = self.lsn();
            let tot = RECORD_HEADER + body.len();
            let mut h = [0u8; RECORD_HEADER];
            h[0..4].copy_from_slice(&(tot as u32).to_le_bytes());
            h[8..16].copy_from_slice(&self.prev.to_le_bytes());
            h[16] = info;
            h[17] = rmid;
            let mut crc = Crc32c::new();
            crc.update(body);
            crc.update(&h[..20]);
            h[20..24].copy_from_slice(&crc.value().to_le_bytes());
            self.pending = tot;
            self.put(&h);
            self.put(body);
            self.prev = lsn;
            lsn
        }

        fn checkpoint(&mut self, redo: u64, online: bool) -> u64 {
            let mut cp = vec![0u8; 88];
            cp[0..8].copy_from_slice(&redo.to_le_bytes());
            cp[8..12].copy_from_slice(&1u32.to_le_bytes());
            let mut body = vec![255, cp.len() as u8];
            body.extend_from_slice(&cp);
            let info = if online {
                XLOG_CHECKPOINT_ONLINE
            } else {
                XLOG_CHECKPOINT_SHUTDOWN
            };
            self.record(RM_XLOG_ID, info, &body)
        }

        /// Zero-fill to `len` bytes from the start, with page headers.
        fn pad_to(&mut self, len: usize) {
            while self.bytes.len() < len {
                if self.bytes.len().is_multiple_of(BLOCK) {
                    self.page_header();
                }
                self.bytes.push(0);
            }
        }
    }

    fn data_record(w: &mut Writer, len: usize) -> u64 {
        // A heap-like record: a block reference id first, then bytes.
        let mut body = vec![0u8; len];
        body[0] = 0;
        w.record(10, 0x00, &body)
    }

    #[test]
    fn finds_the_last_checkpoint_before_the_limit() {
        let mut w = Writer::new(3 * SEG);
        data_record(&mut w, 100);
        let first = w.checkpoint(3 * SEG + 40, true);
        // Records crossing pages, one with its header split by a page end.
        for len in [9000, 5000, 8100, 30] {
            data_record(&mut w, len);
        }
        let second = w.checkpoint(first, false);
        let after = data_record(&mut w, 64);
        let third = w.checkpoint(after, true);
        w.pad_to(SEG as usize);

        let scan = scan_segment(&w.bytes[..], 3 * SEG, SEG, u64::MAX).unwrap();
        assert_eq!(scan.records, 9);
        assert_eq!(scan.checkpoint.unwrap().lsn, third);
        let scan = scan_segment(&w.bytes[..], 3 * SEG, SEG, third).unwrap();
        assert_eq!(
            scan.checkpoint,
            Some(Checkpoint {
                lsn: second,
                redo: first,
                timeline: 1,
                shutdown: true
            })
        );
        let scan = scan_segment(&w.bytes[..], 3 * SEG, SEG, second).unwrap();
        assert_eq!(scan.checkpoint.unwrap().redo, 3 * SEG + 40);
        assert_eq!(
            scan_segment(&w.bytes[..], 3 * SEG, SEG, first)
                .unwrap()
                .checkpoint,
            None
        );
    }

    #[test]
    fn skips_a_record_continued_from_the_previous_segment() {
        // A record that began in segment 2 runs 20000 bytes into 3.
        let mut w = Writer::new(2 * SEG);
        w.pad_to(SEG as usize - 4096);
        w.bytes.truncate(SEG as usize - 4096);
        let before = data_record(&mut w, 24000);
        assert!(before < 3 * SEG);
        let cp = w.checkpoint(before, true);
        w.pad_to(2 * SEG as usize);
        let seg3 = &w.bytes[SEG as usize..];
        let scan = scan_segment(seg3, 3 * SEG, SEG, u64::MAX).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(scan.checkpoint.unwrap().lsn, cp);
    }

    #[test]
    fn completes_a_checkpoint_that_crosses_into_the_next_segment() {
        let mut w = Writer::new(0);
        w.pad_to(LONG_HEADER);
        w.bytes.truncate(LONG_HEADER);
        // Fill the segment so the checkpoint starts 32 bytes before its end.
        let fill = SEG as usize - 32 - LONG_HEADER - RECORD_HEADER;
        let pages = SEG as usize / BLOCK - 1;
        data_record(&mut w, fill - pages * SHORT_HEADER);
        let cp = w.checkpoint(LONG_HEADER as u64, true);
        assert_eq!(cp, SEG - 32);
        w.pad_to(SEG as usize + BLOCK);
        let scan = scan_segment(&w.bytes[..], 0, SEG, u64::MAX).unwrap();
        assert_eq!(scan.checkpoint.unwrap().lsn, cp);
        // Without the next segment it cannot be read whole.
        let scan = scan_segment(&w.bytes[..SEG as usize], 0, SEG, u64::MAX).unwrap();
        assert_eq!(scan.checkpoint, None);
        assert_eq!(scan.records, 1);
    }

    #[test]
    fn stops_at_what_is_not_valid_wal() {
        let mut w = Writer::new(0);
        let a = w.checkpoint(0, true);
        let b = w.checkpoint(a, true);
        w.pad_to(SEG as usize);
        // A flipped byte in b's body: its CRC fails, a is the last.
        let mut bad = w.bytes.clone();
        bad[(b + 30) as usize] ^= 1;
        let scan = scan_segment(&bad[..], 0, SEG, u64::MAX).unwrap();
        assert_eq!((scan.records, scan.checkpoint.unwrap().lsn), (1, a));
        // A recycled segment: the right size, another segment's pages.
        assert!(scan_segment(&w.bytes[..], 5 * SEG, SEG, u64::MAX).is_err());
        // A segment size other than the configured one.
        assert!(scan_segment(&w.bytes[..], 0, 2 * SEG, u64::MAX).is_err());
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xE306_9283);
    }
}
