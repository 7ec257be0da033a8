//! Page checksums of a relation file checked on the bytes as they stream
//! past (backup-push `--verify`, spec §7.2; backup-verify): [`PageCheck`]
//! wraps the reader the tar is fed from, so the file is read once.
//!
//! Which pages count as corrupt follows PostgreSQL rather than WAL-G:
//! `PageIsVerified` (a new page must be all zeros; a sane header and a
//! matching checksum otherwise), and, during a live backup, PostgreSQL's
//! own base backup: a page whose LSN is at or after the backup's start is
//! not judged (a concurrent write may have torn it; WAL replay rewrites it
//! from a full-page image), and a page that fails is re-read once from the
//! file before it is called corrupt (the read may have caught half of a
//! write).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pg::checksum::{self, Verdict, BLCKSZ, RELSEG_SIZE};

/// WAL-G keeps at most this many block numbers per file unless
/// `--store-all-corrupt`.
pub const SOME_BLOCKS: usize = 10;

/// How pages are judged, for a whole backup.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Pages with an LSN at or after this are not judged (live backup).
    pub skip_from_lsn: Option<u64>,
    /// Keep every corrupt block number, not the first [`SOME_BLOCKS`].
    pub store_all: bool,
}

/// Counters of a whole backup, for the summary line.
#[derive(Default)]
pub struct Totals {
    pub files: AtomicU64,
    pub pages: AtomicU64,
    pub corrupt_pages: AtomicU64,
    pub corrupt_files: AtomicU64,
}

/// The corrupt pages of one file (WAL-G's `CorruptBlocks`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub count: u64,
    /// Ascending block numbers (absolute, segment included).
    pub blocks: Vec<u32>,
    /// The first bad page: block, stored and computed checksum (0, 0 for
    /// a bad header).
    pub first: Option<(u32, u16, u16)>,
}

impl Corrupt {
    /// The `CorruptBlocks` value WAL-G writes into files_metadata.json.
    pub fn json(&self) -> String {
        let list: Vec<String> = self.blocks.iter().map(u32::to_string).collect();
        format!(
            "{{\"CorruptBlocksCount\":{},\"SomeCorruptBlocks\":[{}]}}",
            self.count,
            list.join(",")
        )
    }
}

/// The segment number of a file whose pages carry checksums, from its
/// member name (`/base/5/16384.2`), or `None` for any other file. As
/// PostgreSQL's base backup: files under `base/`, `global/` and
/// `pg_tblspc/`; only relation forks (`<filenode>[_fsm|_vm|_init][.<seg>]`),
/// so that `pg_filenode.map`, `pg_internal.init`, `PG_VERSION`,
/// temporary relations (`t3_…`) and `pg_control` are left out.
pub fn segment_of(member: &[u8]) -> Option<u32> {
    let name = member.strip_prefix(b"/").unwrap_or(member);
    if !(name.starts_with(b"base/")
        || name.starts_with(b"global/")
        || name.starts_with(b"pg_tblspc/"))
    {
        return None;
    }
    let base = name.rsplit(|&b| b == b'/').next()?;
    let base = std::str::from_utf8(base).ok()?;
    let (stem, seg) = match base.split_once('.') {
        Some((s, n)) => (s, n),
        None => (base, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let node = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|f| stem.strip_suffix(f))
        .unwrap_or(stem);
    if !digits(node) || !digits(seg) {
        return None;
    }
    seg.parse().ok()
}

/// Checks every page of one file as its bytes are read through it.
pub struct PageCheck<R> {
    inner: R,
    rules: Rules,
    first_block: u32,
    /// Pages seen so far.
    index: u32,
    /// A page cut by a read boundary.
    carry: Vec<u8>,
    /// Where to re-read a failing page (`None`: no second chance, e.g.
    /// in backup-verify, where the bytes are what was stored).
    reread: Option<PathBuf>,
    corrupt: Corrupt,
    /// False: bytes pass through unchecked.
    active: bool,
}

impl<R: Read> PageCheck<R> {
    /// `segment` from [`segment_of`]; `reread` is the file on disk.
    pub fn new(inner: R, segment: u32, rules: Rules, reread: Option<PathBuf>) -> PageCheck<R> {
        PageCheck {
            inner,
            rules,
            first_block: segment.wrapping_mul(RELSEG_SIZE),
            index: 0,
            carry: Vec::new(),
            reread,
            corrupt: Corrupt::default(),
            active: true,
        }
    }

    /// backup-push's hook: checks member `member` of `size` bytes read
    /// from `path` when `rules` are given and the file carries checksums;
    /// otherwise a plain pass-through.
    pub fn for_member(
        inner: R,
        member: &[u8],
        size: u64,
        rules: Option<Rules>,
        path: &std::path::Path,
    ) -> PageCheck<R> {
        let segment = rules.and(segment_of(member)).filter(|_| size > 0);
        if segment.is_some() && !size.is_multiple_of(BLCKSZ as u64) {
            log::warn!(
                "'{}' is {size} bytes, not a whole number of {BLCKSZ}-byte pages: its page checksums are not checked",
                path.display()
            );
        }
        let segment = segment.filter(|_| size.is_multiple_of(BLCKSZ as u64));
        let rules = rules.unwrap_or(Rules {
            skip_from_lsn: None,
            store_all: false,
        });
        let mut check = PageCheck::new(inner, segment.unwrap_or(0), rules, Some(path.into()));
        check.active = segment.is_some();
        check
    }

    /// For backup-push: log and count what was found, and give the
    /// `CorruptBlocks` JSON for files_metadata.json, if any.
    pub fn done(self, path: &std::path::Path, totals: &Totals) -> Option<String> {
        if !self.active {
            return None;
        }
        let (pages, corrupt) = self.finish();
        report(&path.display().to_string(), pages, &corrupt, totals);
        (corrupt.count > 0).then(|| corrupt.json())
    }

    /// Pages checked, and the corrupt ones; a partial last page (the
    /// caller skips files that are not whole pages) is ignored.
    pub fn finish(self) -> (u64, Corrupt) {
        (u64::from(self.index), self.corrupt)
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if !self.carry.is_empty() {
            let take = (BLCKSZ - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < BLCKSZ {
                return;
            }
            let page = std::mem::take(&mut self.carry);
            self.page(&page);
            self.carry = page;
            self.carry.clear();
        }
        let mut pages = bytes.chunks_exact(BLCKSZ);
        for page in &mut pages {
            self.page(page);
        }
        self.carry.extend_from_slice(pages.remainder());
    }

    fn page(&mut self, page: &[u8]) {
        let index = self.index;
        self.index += 1;
        self.judge_at(page, index);
    }

    /// A page of a delta's increment: block `block` of the file (not the
    /// next one in a stream), read back by its number.
    pub fn check_block(&mut self, page: &[u8], block: u32) {
        if self.active && page.len() == BLCKSZ {
            self.index += 1;
            self.judge_at(page, block);
        }
    }

    /// Judge the page at block `index` of the file (re-read from there).
    fn judge_at(&mut self, page: &[u8], index: u32) {
        let blkno = self.first_block.wrapping_add(index);
        let verdict = self.judge(page, blkno);
        if verdict.is_ok() {
            return;
        }
        // A second look at the file: a torn read is not corruption.
        let verdict = match &self.reread {
            Some(path) => match reread(path, index) {
                Some(again) => self.judge(&again, blkno),
                None => verdict,
            },
            None => verdict,
        };
        if verdict.is_ok() {
            return;
        }
        let c = &mut self.corrupt;
        c.count += 1;
        if self.rules.store_all || c.blocks.len() < SOME_BLOCKS {
            c.blocks.push(blkno);
        }
        if c.first.is_none() {
            c.first = Some(match verdict {
                Verdict::BadChecksum { stored, found } => (blkno, stored, found),
                _ => (blkno, 0, 0),
            });
        }
    }

    fn judge(&self, page: &[u8], blkno: u32) -> Verdict {
        let upper_set = page[14] != 0 || page[15] != 0;
        if let Some(from) = self.rules.skip_from_lsn {
            if upper_set && checksum::page_lsn(page) >= from {
                return Verdict::Good;
            }
        }
        checksum::verify_page(page, blkno)
    }
}

/// The checker of an increment's pages (they are read by block number,
/// so nothing streams through it).
pub type BlockCheck = PageCheck<io::Empty>;

impl BlockCheck {
    /// For backup-push `--verify` of a delta: the pages an increment of
    /// member `member` (read from `path`) stores are checked as full
    /// files' pages are, `None` when `rules` are not given or the file
    /// carries no checksums. WAL-G checks them too (`CorruptBlocks` of an
    /// incremented file).
    pub fn for_blocks(
        member: &[u8],
        rules: Option<Rules>,
        path: &std::path::Path,
    ) -> Option<Box<BlockCheck>> {
        let rules = rules?;
        let segment = segment_of(member)?;
        Some(Box::new(PageCheck::new(
            io::empty(),
            segment,
            rules,
            Some(path.into()),
        )))
    }
}

fn reread(path: &PathBuf, index: u32) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let mut page = vec![0u8; BLCKSZ];
    file.read_exact_at(&mut page, u64::from(index) * BLCKSZ as u64)
        .ok()?;
    Some(page)
}

impl<R: Read> Read for PageCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.active {
            self.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// backup-push `--verify`: the rules for a backup that started at
/// `start_lsn`, or `None` (said once) when the cluster has no data
/// checksums, as WAL-G decides from `SHOW data_checksums`.
pub fn rules_for(
    pg: &mut crate::pg::Client,
    start_lsn: u64,
    store_all: bool,
) -> crate::error::Result<Option<Rules>> {
    let rows = pg.query("SHOW data_checksums")?;
    let on = match rows.first() {
        Some(row) => row.get_str(0)?.unwrap_or("") == "on",
        None => false,
    };
    if !on {
        log::warn!(
            "--verify: this cluster was initialised without data checksums (data_checksums is off), \
             so there are no page checksums to verify; the backup goes on without (enable them with pg_checksums --enable on a stopped server)"
        );
        return Ok(None);
    }
    log::info!("Page checksums are verified as the files are read (--verify)");
    Ok(Some(Rules {
        skip_from_lsn: Some(start_lsn),
        store_all,
    }))
}

/// The summary line of a backup: one INFO line when all is well, one
/// WARNING when not. Gives the number of corrupt pages.
pub fn summary(totals: &Totals) -> u64 {
    let files = totals.files.load(Ordering::Relaxed);
    let pages = totals.pages.load(Ordering::Relaxed);
    let bad = totals.corrupt_pages.load(Ordering::Relaxed);
    let bad_files = totals.corrupt_files.load(Ordering::Relaxed);
    if bad == 0 {
        log::info!("Page checksums verified: {pages} pages in {files} files, no corrupt page");
    } else {
        log::warn!(
            "Page checksums verified: {pages} pages in {files} files, {bad} corrupt page(s) in {bad_files} file(s); \
             their block numbers are under CorruptBlocks in the backup's files_metadata.json"
        );
    }
    bad
}

/// Log what one file's check found (WAL-G warns per file) and count it.
pub fn report(path: &str, pages: u64, corrupt: &Corrupt, totals: &Totals) {
    totals.files.fetch_add(1, Ordering::Relaxed);
    totals.pages.fetch_add(pages, Ordering::Relaxed);
    if corrupt.count == 0 {
        return;
    }
    totals.corrupt_files.fetch_add(1, Ordering::Relaxed);
    totals
        .corrupt_pages
        .fetch_add(corrupt.count, Ordering::Relaxed);
    let list: Vec<String> = corrupt.blocks.iter().map(u32::to_string).collect();
    let more = if corrupt.count > corrupt.blocks.len() as u64 {
        " …"
    } else {
        ""
    };
    let detail = match corrupt.first {
        Some((b, stored, found)) if stored != 0 || found != 0 => {
            format!("; block {b}: expected checksum {stored:X}, found {found:X}")
        }
        Some((b, _, _)) => format!("; block {b}: invalid page header"),
        None => String::new(),
    };
    log::warn!(
        "Corruption found in {path}: {} corrupt page(s), blocks [{}{more}]{detail}",
        corrupt.count,
        list.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: &[u8] = include_bytes!("../pg/testdata/pg15-1259-blocks0-2.bin");

    /// Reads in odd-sized pieces, so that pages straddle reads.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn run(bytes: &[u8], piece: usize, rules: Rules) -> (u64, Corrupt) {
        let mut check = PageCheck::new(Dribble(bytes, piece), 0, rules, None);
        let mut out = Vec::new();
        check.read_to_end(&mut out).unwrap();
        assert_eq!(out, bytes);
        check.finish()
    }

    const RULES: Rules = Rules {
        skip_from_lsn: None,
        store_all: false,
    };

    #[test]
    fn clean_pages_in_any_read_sizes() {
        for piece in [1000, BLCKSZ, 3 * BLCKSZ, 5000] {
            let (pages, corrupt) = run(PAGES, piece, RULES);
            assert_eq!(pages, 3);
            assert_eq!(corrupt, Corrupt::default(), "piece {piece}");
        }
    }

    #[test]
    fn flipped_bytes_name_their_blocks() {
        let mut bytes = PAGES.to_vec();
        bytes.extend_from_slice(&[0u8; BLCKSZ]); // a new page: fine
        bytes[BLCKSZ + 4000] ^= 0xff;
        bytes[2 * BLCKSZ + 100] ^= 1;
        let (pages, corrupt) = run(&bytes, 3000, RULES);
        assert_eq!(pages, 4);
        assert_eq!(corrupt.count, 2);
        assert_eq!(corrupt.blocks, vec![1, 2]);
        assert_eq!(corrupt.first.map(|f| (f.0, f.1)), Some((1, 0x4125)));
        assert_eq!(
            corrupt.json(),
            "{\"CorruptBlocksCount\":2,\"SomeCorruptBlocks\":[1,2]}"
        );
        // A page newer than the backup's start is left to WAL replay.
        let lsn = checksum::page_lsn(&bytes[BLCKSZ..]);
        let rules = Rules {
            skip_from_lsn: Some(lsn),
            store_all: false,
        };
        let (_, corrupt) = run(&bytes, 3000, rules);
        assert!(corrupt.count <= 1 && !corrupt.blocks.contains(&1));
    }

    #[test]
    fn increment_pages_are_checked_by_their_block_numbers() {
        use crate::backup::delta::increment_writer::IncrementReader;
        let mut bytes = PAGES.to_vec();
        bytes[2 * BLCKSZ + 100] ^= 1;
        let path = std::env::temp_dir().join(format!("walden-pagecheck-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let member = b"/base/5/1259";
        assert!(BlockCheck::for_blocks(member, None, &path).is_none());
        assert!(BlockCheck::for_blocks(b"/base/5/PG_VERSION", Some(RULES), &path).is_none());
        let mut incr = IncrementReader::new(
            File::open(&path).unwrap(),
            path.clone(),
            bytes.len() as u64,
            vec![0, 2],
        );
        incr.check = BlockCheck::for_blocks(member, Some(RULES), &path);
        io::copy(&mut incr, &mut io::sink()).unwrap();
        let (pages, corrupt) = incr.check.take().unwrap().finish();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(corrupt.count, 1);
        assert_eq!(corrupt.blocks, vec![2]);
    }

    #[test]
    fn at_most_ten_blocks_unless_all_are_kept() {
        let mut bytes = Vec::new();
        for _ in 0..12 {
            let mut p = PAGES[..BLCKSZ].to_vec();
            p[3000] ^= 1;
            bytes.extend_from_slice(&p);
        }
        let (_, some) = run(&bytes, BLCKSZ * 2, RULES);
        assert_eq!(some.count, 12);
        assert_eq!(some.blocks, (0..10).collect::<Vec<u32>>());
        let all = Rules {
            skip_from_lsn: None,
            store_all: true,
        };
        let (_, every) = run(&bytes, BLCKSZ * 2, all);
        assert_eq!(every.blocks.len(), 12);
    }

    #[test]
    fn which_files_carry_checksums() {
        assert_eq!(segment_of(b"/base/5/16384"), Some(0));
        assert_eq!(segment_of(b"/base/5/16384.3"), Some(3));
        assert_eq!(segment_of(b"/base/5/16384_fsm"), Some(0));
        assert_eq!(segment_of(b"/base/5/16384_vm.1"), Some(1));
        assert_eq!(segment_of(b"/global/1262"), Some(0));
        assert_eq!(
            segment_of(b"/pg_tblspc/16390/PG_15_202209061/5/16391"),
            Some(0)
        );
        for other in [
            &b"/global/pg_control"[..],
            b"/global/pg_filenode.map",
            b"/base/5/pg_internal.init",
            b"/base/5/PG_VERSION",
            b"/base/5/t3_16400",
            b"/pg_xact/0000",
            b"/pg_commit_ts/0000",
            b"/base/5/16384.x",
        ] {
            assert_eq!(
                segment_of(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
