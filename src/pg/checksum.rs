//! PostgreSQL's data page checksum (`pg_checksum_page`,
//! `src/include/storage/checksum_impl.h`) and the page check PostgreSQL
//! applies when it reads a page (`PageIsVerified`, `bufpage.c`).
//!
//! The checksum is FNV-1a-like, computed in 32 parallel lanes so that the
//! compiler can vectorise it: the page (with `pd_checksum` read as 0) is
//! seen as rows of 32 little-endian u32 words, each lane mixes its column,
//! two rounds of zeros finish the mixing, the lanes are XORed, the block
//! number is mixed in (so a page written at the wrong place fails), and
//! the result is folded to 16 bits and never 0 (0 means "no checksum").

/// PostgreSQL's default block size; walden handles no other (as WAL-G's
/// `--verify` in practice: spec W16).
pub const BLCKSZ: usize = 8192;

/// Blocks per 1 GiB relation segment file (`RELSEG_SIZE`): the block
/// number mixed into a page of segment `n` is `n * RELSEG_SIZE + index`.
pub const RELSEG_SIZE: u32 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;

/// The lanes' starting values (`checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// Offset of `pd_checksum` in the page header.
const CHECKSUM_AT: usize = 8;

#[inline(always)]
fn comp(sum: &mut u32, value: u32) {
    let t = *sum ^ value;
    *sum = t.wrapping_mul(FNV_PRIME) ^ (t >> 17);
}

/// `pg_checksum_page`: the checksum of `page` (exactly [`BLCKSZ`] bytes)
/// as block `blkno`, its stored checksum treated as 0.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len(), BLCKSZ);
    let mut sums = BASE_OFFSETS;
    for (row_no, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if row_no == 0 {
            // pd_checksum is the low half of word 2 (bytes 8..10).
            words[CHECKSUM_AT / 4] &= 0xFFFF_0000;
        }
        for (s, w) in sums.iter_mut().zip(words) {
            comp(s, w);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            comp(s, 0);
        }
    }
    let c = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((c % 65535) + 1) as u16
}

/// The checksum stored in the page header.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[CHECKSUM_AT], page[CHECKSUM_AT + 1]])
}

/// The page's LSN (`pd_lsn`: high half, then low half).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

/// What PostgreSQL would make of a page it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Header sane and checksum right.
    Good,
    /// `pd_upper == 0` and every byte zero: a page the relation was
    /// extended by and that was never written; PostgreSQL accepts it.
    Zero,
    /// The checksum does not match (`found` is what the bytes give).
    BadChecksum { stored: u16, found: u16 },
    /// A new page that is not all zeros, or a header PostgreSQL
    /// would refuse: "invalid page".
    BadHeader,
}

impl Verdict {
    pub fn is_ok(self) -> bool {
        matches!(self, Verdict::Good | Verdict::Zero)
    }
}

/// `PageIsVerified` of a cluster with data checksums: `page` is block
/// `blkno` (absolute, segment included).
pub fn verify_page(page: &[u8], blkno: u32) -> Verdict {
    let upper = u16_at(page, 14);
    if upper != 0 {
        let stored = stored_checksum(page);
        let found = page_checksum(page, blkno);
        if stored != found {
            return Verdict::BadChecksum { stored, found };
        }
        let flags = u16_at(page, 10);
        let lower = u16_at(page, 12);
        let special = u16_at(page, 16);
        // PD_VALID_FLAG_BITS = 0x7; pd_special MAXALIGNed (8).
        let sane = flags & !0x7 == 0
            && lower <= upper
            && upper <= special
            && usize::from(special) <= BLCKSZ
            && special.is_multiple_of(8);
        return if sane {
            Verdict::Good
        } else {
            Verdict::BadHeader
        };
    }
    if page.iter().all(|&b| b == 0) {
        Verdict::Zero
    } else {
        Verdict::BadHeader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks 0..2 of `base/1/1259` (pg_class of template1) of a cluster
    /// made by PostgreSQL 15's `initdb --data-checksums` (and checked
    /// clean by its `pg_checksums -c`).
    const PAGES: &[u8] = include_bytes!("testdata/pg15-1259-blocks0-2.bin");

    #[test]
    fn real_pages_verify() {
        assert_eq!(PAGES.len(), 3 * BLCKSZ);
        let want = [0x3c20u16, 0x4125, 0xdec7];
        for (i, page) in PAGES.chunks_exact(BLCKSZ).enumerate() {
            assert_eq!(stored_checksum(page), want[i]);
            assert_eq!(page_checksum(page, i as u32), want[i], "block {i}");
            assert_eq!(verify_page(page, i as u32), Verdict::Good);
        }
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_place_fails() {
        let mut page = PAGES[..BLCKSZ].to_vec();
        // The block number is part of the checksum.
        assert!(matches!(
            verify_page(&page, 1),
            Verdict::BadChecksum { stored: 0x3c20, .. }
        ));
        assert!(matches!(
            verify_page(&page, RELSEG_SIZE),
            Verdict::BadChecksum { .. }
        ));
        for at in [100usize, 4000, BLCKSZ - 1] {
            page[at] ^= 0x10;
            assert!(
                matches!(verify_page(&page, 0), Verdict::BadChecksum { .. }),
                "byte {at}"
            );
            page[at] ^= 0x10;
        }
        assert_eq!(verify_page(&page, 0), Verdict::Good);
        // Changing only the stored checksum fails too, and the computed
        // one does not depend on it.
        page[CHECKSUM_AT] ^= 1;
        assert_eq!(
            verify_page(&page, 0),
            Verdict::BadChecksum {
                stored: 0x3c20 ^ 1,
                found: 0x3c20
            }
        );
    }

    #[test]
    fn new_pages_as_postgres_treats_them() {
        let zero = vec![0u8; BLCKSZ];
        assert_eq!(verify_page(&zero, 7), Verdict::Zero);
        assert!(verify_page(&zero, 7).is_ok());
        // pd_upper 0 but something else written: not a new page.
        let mut junk = zero.clone();
        junk[5000] = 1;
        assert_eq!(verify_page(&junk, 7), Verdict::BadHeader);
        assert!(!verify_page(&junk, 7).is_ok());
    }

    #[test]
    fn checksum_is_never_zero_and_header_checked() {
        let mut page = PAGES[..BLCKSZ].to_vec();
        // pd_lower > pd_upper with a matching checksum: invalid page.
        page[12..14].copy_from_slice(&9000u16.to_le_bytes());
        let c = page_checksum(&page, 0);
        assert_ne!(c, 0);
        page[8..10].copy_from_slice(&c.to_le_bytes());
        assert_eq!(verify_page(&page, 0), Verdict::BadHeader);
        assert_eq!(page_lsn(&PAGES[..BLCKSZ]) >> 32, 0);
    }
}
