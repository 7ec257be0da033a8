//! What `copy --backup-name` takes (spec walg-wal-admin §9.4): the backup
//! and the delta bases it needs, and the WAL from each one's start, to its
//! end (`--without-history`) or onward; `.history` files always.

use std::collections::HashSet;
use std::sync::Arc;

use crate::backup::{catalog, layout, retention::hex_run};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wal::name::Segment;
use crate::wal::ranges::{self, history_timeline};

/// The compression extensions WAL-G strips to get a WAL object's name.
const COMPRESSIONS: &[&str] = &[".br", ".gz", ".lz4", ".lzma", ".lzo", ".zst"];

/// The WAL one backup brings along: segment names from `first`, to
/// `last` when the history is left out.
#[derive(Debug, Clone, PartialEq)]
pub struct WalSpan {
    pub first: String,
    pub last: Option<String>,
}

/// A backup chain and its WAL.
#[derive(Debug)]
pub struct Selection {
    /// Bases first, the backup asked for last: the order sentinels are
    /// written in.
    pub chain: Vec<String>,
    pub wal: Vec<WalSpan>,
}

impl Selection {
    /// Whether the object `base` (a name under `wal_005/`) goes along.
    pub fn wants_wal(&self, base: &str) -> bool {
        if history_timeline(base).is_some() {
            return true;
        }
        let logical = logical_name(base);
        if logical.len() != 24 || !logical.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        self.wal
            .iter()
            .any(|s| s.first.as_str() <= logical && s.last.as_deref().is_none_or(|l| logical <= l))
    }

    /// Whether `key` (under `basebackups_005/`) belongs to a backup of
    /// the chain: its objects, not its sentinel.
    pub fn in_chain(&self, key: &str) -> bool {
        let rest = key.strip_prefix(layout::BASEBACKUPS).unwrap_or(key);
        rest.split_once('/')
            .is_some_and(|(name, _)| self.chain.iter().any(|c| c == name))
    }
}

/// WAL-G's logical name of a WAL object: the compression suffix off,
/// then everything from the first dot (`X.00000028.backup`, `X.partial`,
/// the `X.json` of INDIVIDUAL metadata are all X).
pub fn logical_name(base: &str) -> &str {
    let bare = COMPRESSIONS
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    bare.split('.').next().unwrap_or(bare)
}

/// `name` (or LATEST) and every delta base it needs, with the WAL spans;
/// checked to be restorable from the source: every segment from each
/// backup's start to its end is there.
pub fn backup(
    src: &Arc<dyn Storage>,
    wanted: &str,
    with_history: bool,
    wal_size_mb: u64,
    usage: &str,
) -> Result<Selection> {
    let entry = catalog::find(src, wanted, usage)?;
    let mut chain = vec![entry.name.clone()];
    let mut seen: HashSet<String> = chain.iter().cloned().collect();
    let mut current = entry.name;
    while let Some(base) = catalog::delta_from(&catalog::read_sentinel(src, &current)?) {
        if !seen.insert(base.clone()) {
            return Err(Error::Other(format!(
                "the delta bases of backup {wanted} form a cycle at {base}: the sentinels \
                 are damaged"
            )));
        }
        if src.stat(&layout::sentinel_key(&base))?.is_none() {
            return Err(Error::Other(format!(
                "backup {current} is a delta of {base}, which has no sentinel in {}: \
                 the chain cannot be copied whole",
                src.location()
            )));
        }
        chain.push(base.clone());
        current = base;
    }
    chain.reverse();

    let scan = ranges::scan(src, wal_size_mb)?;
    let seg_bytes = wal_size_mb << 20;
    let mut wal = Vec::new();
    for name in &chain {
        let timeline = hex_run(name)
            .and_then(|hex| Segment::parse(hex, wal_size_mb))
            .map(|s| s.timeline)
            .ok_or_else(|| {
                Error::Other(format!(
                    "'{name}' has no WAL file name in it: not a backup name"
                ))
            })?;
        let meta = catalog::read_metadata(src, name)?;
        let segment = |lsn: u64| Segment {
            timeline,
            number: lsn / seg_bytes,
        };
        // WAL-G starts one byte before the start LSN, which takes the
        // previous segment too when the backup began on a boundary.
        let first = segment(meta.start_lsn.saturating_sub(1));
        let last = segment(meta.finish_lsn);
        // What recovery needs to reach consistency must be there.
        let needed_end = segment(meta.finish_lsn.saturating_sub(1).max(meta.start_lsn));
        let mut n = segment(meta.start_lsn).number;
        while n <= needed_end.number {
            let s = Segment {
                timeline,
                number: n,
            };
            if !scan.contains(s) {
                return Err(Error::Other(format!(
                    "WAL segment {} that backup {name} needs to be consistent is not in {}; \
                     nothing was copied",
                    s.name(wal_size_mb),
                    src.location()
                )));
            }
            n += 1;
        }
        wal.push(WalSpan {
            first: first.name(wal_size_mb),
            last: (!with_history).then(|| last.name(wal_size_mb)),
        });
    }
    for (tli, range) in &scan.timelines {
        if let Some((start, end)) = range.gaps().next() {
            log::warn!(
                "WAL of timeline {tli} has a gap from {} to {} in the source; it is copied as it is",
                Segment { timeline: *tli, number: start }.name(wal_size_mb),
                Segment { timeline: *tli, number: end }.name(wal_size_mb)
            );
        }
    }
    Ok(Selection { chain, wal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_names_as_walg_cuts_them() {
        assert_eq!(
            logical_name("000000010000000000000003.lz4"),
            "000000010000000000000003"
        );
        assert_eq!(
            logical_name("000000010000000000000003.00000028.backup.zst"),
            "000000010000000000000003"
        );
        assert_eq!(
            logical_name("000000010000000000000003.partial"),
            "000000010000000000000003"
        );
        assert_eq!(
            logical_name("000000010000000000000003"),
            "000000010000000000000003"
        );
        assert_eq!(logical_name("00000002.history.br"), "00000002");
    }

    #[test]
    fn wal_spans_pick_by_name() {
        let sel = Selection {
            chain: vec!["base_000000010000000000000004".into()],
            wal: vec![WalSpan {
                first: "000000010000000000000004".into(),
                last: Some("000000010000000000000006".into()),
            }],
        };
        assert!(!sel.wants_wal("000000010000000000000003.lz4"));
        assert!(sel.wants_wal("000000010000000000000004.lz4"));
        assert!(sel.wants_wal("000000010000000000000004.00000028.backup.lz4"));
        assert!(sel.wants_wal("000000010000000000000006.zst"));
        assert!(!sel.wants_wal("000000010000000000000007.zst"));
        assert!(!sel.wants_wal("000000020000000000000005.zst"));
        assert!(sel.wants_wal("00000002.history.lz4"));
        assert!(!sel.wants_wal("garbage"));
        let history = Selection {
            wal: vec![WalSpan {
                first: "000000010000000000000004".into(),
                last: None,
            }],
            ..sel
        };
        assert!(history.wants_wal("000000010000000000000099.zst"));
        assert!(history.wants_wal("000000020000000000000005.zst"));
        assert!(!history.wants_wal("000000010000000000000003.zst"));
        assert!(history.in_chain(
            "basebackups_005/base_000000010000000000000004/tar_partitions/part_1.tar.lz4"
        ));
        assert!(!history
            .in_chain("basebackups_005/base_000000010000000000000004_backup_stop_sentinel.json"));
        assert!(!history.in_chain("basebackups_005/base_000000010000000000000005/metadata.json"));
    }
}
