//! The WAL segments of `wal_005/` as ranges per timeline, built from one
//! listing: for each timeline the first and last segment number, the count
//! and the holes between them. Memory grows with timelines and holes, never
//! with segments, which is what lets `wal-show` and `wal-verify` read a
//! storage of millions of segments (WAL-G keeps every name in a map).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::name::Segment;
use super::object::WAL_FOLDER;
use crate::error::Result;
use crate::storage::{Entry, Storage};

/// The segments of one timeline seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    /// Distinct segment numbers present.
    pub count: u64,
    /// Missing runs inside `first..=last`: start → end, both inclusive.
    gaps: BTreeMap<u64, u64>,
}

impl Range {
    fn new(n: u64) -> Range {
        Range {
            first: n,
            last: n,
            count: 1,
            gaps: BTreeMap::new(),
        }
    }

    /// Record segment `n`. In key order each call extends the range or
    /// repeats the last number (`X.lz4` next to `X.json`); any other order
    /// still works by splitting a gap.
    fn add(&mut self, n: u64) {
        if n > self.last {
            if n > self.last + 1 {
                self.gaps.insert(self.last + 1, n - 1);
            }
            self.last = n;
            self.count += 1;
        } else if n < self.first {
            if n + 1 < self.first {
                self.gaps.insert(n + 1, self.first - 1);
            }
            self.first = n;
            self.count += 1;
        } else if let Some((&start, &end)) = self.gaps.range(..=n).next_back() {
            if n <= end {
                self.gaps.remove(&start);
                if start < n {
                    self.gaps.insert(start, n - 1);
                }
                if n < end {
                    self.gaps.insert(n + 1, end);
                }
                self.count += 1;
            }
        }
    }

    pub fn contains(&self, n: u64) -> bool {
        if n < self.first || n > self.last {
            return false;
        }
        match self.gaps.range(..=n).next_back() {
            Some((_, &end)) => n > end,
            None => true,
        }
    }

    /// `last − first + 1`.
    pub fn size(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The missing runs, lowest first, as (start, end) inclusive.
    pub fn gaps(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
        self.gaps.iter().map(|(&s, &e)| (s, e))
    }
}

/// What one listing of `wal_005/` tells.
#[derive(Debug, Default)]
pub struct Scan {
    pub timelines: BTreeMap<u32, Range>,
    /// The key of each timeline's `.history` object (one per timeline).
    pub histories: BTreeMap<u32, String>,
}

impl Scan {
    /// Take one object name under `wal_005/` into account.
    pub fn add_name(&mut self, base: &str, wal_size_mb: u64) {
        // WAL-G strips one extension (`path.Ext`): `X.lz4` and the
        // INDIVIDUAL metadata `X.json` are both segment X.
        let stem = match base.rfind('.') {
            Some(i) => &base[..i],
            None => base,
        };
        if let Some(s) = Segment::parse(stem, wal_size_mb) {
            match self.timelines.get_mut(&s.timeline) {
                Some(r) => r.add(s.number),
                None => {
                    self.timelines.insert(s.timeline, Range::new(s.number));
                }
            }
        } else if let Some(tli) = history_timeline(base) {
            self.histories
                .entry(tli)
                .or_insert_with(|| base.to_string());
        }
    }

    pub fn contains(&self, s: Segment) -> bool {
        self.timelines
            .get(&s.timeline)
            .is_some_and(|r| r.contains(s.number))
    }

    /// The highest timeline named by a segment or a `.history` file, 0
    /// when there is none (WAL-G's timeline check).
    pub fn highest_timeline(&self) -> u32 {
        let seg = self.timelines.keys().next_back().copied().unwrap_or(0);
        let hist = self.histories.keys().next_back().copied().unwrap_or(0);
        seg.max(hist)
    }
}

/// `^([0-9a-fA-F]+)\.history(\.\w+)?$` → the timeline.
pub fn history_timeline(base: &str) -> Option<u32> {
    let (hex, rest) = base.split_once(".history")?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ext_ok = rest.is_empty()
        || rest.strip_prefix('.').is_some_and(|e| {
            !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if !ext_ok {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// One non-recursive listing of `wal_005/`, folded into ranges as it
/// streams by.
pub fn scan(storage: &Arc<dyn Storage>, wal_size_mb: u64) -> Result<Scan> {
    let mut out = Scan::default();
    storage.list(WAL_FOLDER, false, &mut |e| {
        if let Entry::Object(o) = e {
            let base = o.key.strip_prefix(WAL_FOLDER).unwrap_or(&o.key);
            out.add_name(base, wal_size_mb);
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_of(numbers: &[u64]) -> Range {
        let mut r = Range::new(numbers[0]);
        for &n in &numbers[1..] {
            r.add(n);
        }
        r
    }

    #[test]
    fn in_order_with_duplicates_and_holes() {
        let r = range_of(&[2, 3, 3, 4, 7, 8, 10]);
        assert_eq!((r.first, r.last, r.count, r.size()), (2, 10, 6, 9));
        assert_eq!(r.gaps().collect::<Vec<_>>(), vec![(5, 6), (9, 9)]);
        assert!(r.contains(4) && r.contains(7) && r.contains(10));
        assert!(!r.contains(5) && !r.contains(9) && !r.contains(1) && !r.contains(11));
    }

    #[test]
    fn any_order_gives_the_same_ranges() {
        let sorted = range_of(&[1, 2, 5, 6, 7, 12]);
        let shuffled = range_of(&[7, 12, 1, 6, 2, 5, 5, 12]);
        assert_eq!(sorted, shuffled);
        let filled = range_of(&[1, 12, 6, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
        assert_eq!(filled.gaps().count(), 0);
        assert_eq!(filled.count, 12);
    }

    #[test]
    fn names_are_read_as_walg_reads_them() {
        let mut s = Scan::default();
        for name in [
            "000000010000000000000001.lz4",
            "000000010000000000000001.json",
            "000000010000000000000002.00000028.backup.lz4",
            "000000010000000000000003",
            "000000010000000000000004.partial.lz4",
            "00000002.history.lz4",
            "000000020000000000000004.zst",
            "0000000100000000000000.json",
            "garbage",
        ] {
            s.add_name(name, 16);
        }
        let t1 = &s.timelines[&1];
        assert_eq!((t1.first, t1.last, t1.count), (1, 3, 2));
        assert_eq!(t1.gaps().collect::<Vec<_>>(), vec![(2, 2)]);
        assert_eq!(s.timelines[&2].count, 1);
        assert_eq!(s.histories[&2], "00000002.history.lz4");
        assert_eq!(s.highest_timeline(), 2);
        assert_eq!(history_timeline("0000000A.history"), Some(10));
        assert_eq!(history_timeline("0000000A.history.x-y"), None);
        assert_eq!(history_timeline(".history"), None);
    }
}
