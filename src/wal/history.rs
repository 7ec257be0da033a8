//! Timeline history files (`0000000N.history`): one line per switch that
//! led to timeline N, `parentTLI<TAB>switchLSN<TAB>reason`, oldest first.

use std::io::Read;
use std::sync::Arc;

use super::object::WAL_FOLDER;
use crate::backup::layout::parse_lsn;
use crate::codec::Codecs;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// A history file is a line per timeline; more than this is not one.
const MAX_HISTORY: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub parent: u32,
    pub switch_lsn: u64,
}

/// The records of a history file's text, as WAL-G's regex
/// `^(\d+)\t(.+)\t(.+)$` takes them; other lines are skipped.
pub fn parse(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let parent = parts.next()?;
            let lsn = parts.next()?;
            let reason = parts.next()?;
            if parent.is_empty() || !parent.bytes().all(|b| b.is_ascii_digit()) || reason.is_empty()
            {
                return None;
            }
            Some(Record {
                parent: parent.parse().ok()?,
                switch_lsn: parse_lsn(lsn)?,
            })
        })
        .collect()
}

/// Read and parse the history object `base` (a name under `wal_005/`, as
/// listed), decoded by its extension.
pub fn read(storage: &Arc<dyn Storage>, codecs: &Codecs, base: &str) -> Result<Vec<Record>> {
    let key = format!("{WAL_FOLDER}{base}");
    let raw = storage.get(&key, 0)?;
    let mut text = Vec::new();
    codecs
        .reader(raw, &key, true, true)?
        .take(MAX_HISTORY)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(format!("reading the timeline history '{key}'"), e))?;
    Ok(parse(&String::from_utf8_lossy(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_as_walg_parses_them() {
        let text = "1\t0/3000148\tno recovery target specified\n\n\
                    2\t0/50000A0\tbefore 2026-12-05 10:00:00+00\nnot a record\n3\tbad\tx\n";
        assert_eq!(
            parse(text),
            vec![
                Record {
                    parent: 1,
                    switch_lsn: 0x3000148
                },
                Record {
                    parent: 2,
                    switch_lsn: 0x50000A0
                }
            ]
        );
    }
}
