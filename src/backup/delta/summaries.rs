//! Where a delta's changed blocks come from on PostgreSQL 17+ with
//! `summarize_wal = on` (issue 14 item 2): the server's WAL summaries
//! name every block of every relation that WAL touched, so only those
//! blocks are read instead of every page of every changed file.
//!
//! Semantics (PostgreSQL's `pg_wal_summary_contents`): a relation fork
//! absent from the summaries of a range was not touched by WAL in it; a
//! row with `is_limit_block` says the relation was truncated to that many
//! blocks (0: created, or truncated to nothing) at some point in the range;
//! other rows name a modified block. Only the main fork matters here:
//! other forks are not paged files (they are stored whole, scan.rs).
//!
//! The summaries must cover [the base's start LSN, this backup's start
//! LSN] on one timeline, as PostgreSQL's own incremental backup requires;
//! when they do not, or when there are more changed blocks than
//! [`MAX_BLOCKS`], the caller scans pages as before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backup::layout::parse_lsn;
use crate::pg::Client;

/// Blocks PostgreSQL splits a relation into 1 GiB segment files by
/// (RELSEG_SIZE with 8 KiB pages).
pub const RELSEG_BLOCKS: u64 = 131_072;
/// The default tablespace's OID: `/base/<db>/...` files.
const DEFAULT_TABLESPACE: u32 = 1663;
/// More changed blocks than this (4 bytes each: 64 MiB) and the page scan
/// is used instead: memory stays bounded.
pub const MAX_BLOCKS: usize = 16 << 20;
/// How long to wait for the summarizer to reach the backup's start.
const WAIT: Duration = Duration::from_secs(30);

/// (tablespace, database, relfilenode) of a main fork.
type RelKey = (u32, u32, u32);

#[derive(Default)]
struct RelChanges {
    /// The smallest size the relation was cut to in the range.
    limit: Option<u32>,
    /// Blocks named as modified, ascending and unique once loaded.
    blocks: Vec<u32>,
}

/// The changed blocks of every relation in the range.
#[derive(Default)]
pub struct Changes {
    rels: HashMap<RelKey, RelChanges>,
    count: usize,
}

/// What the summaries say about one segment file.
#[derive(Debug, PartialEq, Eq)]
pub enum FileChanges {
    /// Created or cut below this segment's start in the range: store it
    /// whole (PostgreSQL does the same).
    Whole,
    /// These blocks (relative to the segment file, ascending) changed;
    /// empty: untouched by WAL since the base.
    Blocks(Vec<u32>),
}

impl Changes {
    fn add(&mut self, key: RelKey, block: u32, is_limit: bool) -> bool {
        let rel = self.rels.entry(key).or_default();
        if is_limit {
            rel.limit = Some(rel.limit.map_or(block, |l| l.min(block)));
        } else {
            rel.blocks.push(block);
            self.count += 1;
        }
        self.count <= MAX_BLOCKS
    }

    fn finish(&mut self) {
        for rel in self.rels.values_mut() {
            rel.blocks.sort_unstable();
            rel.blocks.dedup();
            rel.blocks.shrink_to_fit();
        }
    }

    /// The changes of paged member `name` (`/base/<db>/<rel>[.<seg>]` or
    /// `/pg_tblspc/<spc>/<version dir>/<db>/<rel>[.<seg>]`) of `size`
    /// bytes; None when the name is not one of those.
    pub fn for_file(&self, name: &[u8], size: u64) -> Option<FileChanges> {
        let (key, segno) = parse_member(name)?;
        let pages = size / super::increment_writer::PAGE;
        let start = segno * RELSEG_BLOCKS;
        let Some(rel) = self.rels.get(&key) else {
            return Some(FileChanges::Blocks(Vec::new()));
        };
        if let Some(limit) = rel.limit {
            if u64::from(limit) <= start {
                return Some(FileChanges::Whole);
            }
        }
        let end = start + pages;
        let first = rel.blocks.partition_point(|&b| u64::from(b) < start);
        let mut out: Vec<u32> = rel.blocks[first..]
            .iter()
            .take_while(|&&b| u64::from(b) < end)
            .map(|&b| (u64::from(b) - start) as u32)
            .collect();
        // Past the cut, the file's pages are all new since the base (some
        // zero-extended without WAL): every one of them is stored, so no
        // page of the base's longer file survives there.
        if let Some(limit) = rel.limit {
            let from = u64::from(limit) - start;
            if from < pages {
                out.retain(|&b| u64::from(b) < from);
                out.extend((from..pages).map(|b| b as u32));
            }
        }
        Some(FileChanges::Blocks(out))
    }
}

fn parse_member(name: &[u8]) -> Option<(RelKey, u64)> {
    let text = std::str::from_utf8(name).ok()?;
    let parts: Vec<&str> = text.trim_start_matches('/').split('/').collect();
    let (spc, db, file) = match parts.as_slice() {
        ["base", db, file] => (DEFAULT_TABLESPACE, *db, *file),
        ["pg_tblspc", spc, _, db, file] => (spc.parse().ok()?, *db, *file),
        _ => return None,
    };
    let (rel, seg) = match file.split_once('.') {
        Some((r, s)) => (r, s.parse().ok()?),
        None => (file, 0u64),
    };
    Some(((spc, db.parse().ok()?, rel.parse().ok()?), seg))
}

/// Whether summaries are used, and why not.
pub enum Loaded {
    Yes(Changes),
    No(String),
}

/// Summaries that cover [from, to) on `tli`, or why not. `ranges` are
/// (start, end) of the available summaries on that timeline.
fn covered(mut ranges: Vec<(u64, u64)>, from: u64, to: u64) -> bool {
    ranges.sort_unstable();
    let mut reached = from;
    for (start, end) in ranges {
        if start <= reached && end > reached {
            reached = end;
        }
    }
    reached >= to
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// Load the changed blocks between `base_lsn` (on `base_tli`) and
/// `start_lsn` (on `tli`) from the server's WAL summaries.
pub fn load(
    pg: &mut Client,
    version: i64,
    base_tli: Option<u32>,
    base_lsn: u64,
    tli: u32,
    start_lsn: u64,
) -> Loaded {
    if version < 170000 {
        return Loaded::No(format!(
            "the server is PostgreSQL {version} (WAL summaries need 17 or later)"
        ));
    }
    match pg.query("SELECT current_setting('summarize_wal', true)") {
        Ok(rows) => {
            let on = rows.first().and_then(|r| r.get_str(0).ok().flatten()) == Some("on");
            if !on {
                return Loaded::No("summarize_wal is off".into());
            }
        }
        Err(e) => return Loaded::No(format!("summarize_wal cannot be read: {e}")),
    }
    if base_tli != Some(tli) {
        return Loaded::No(format!(
            "the base is on timeline {} and this backup on {tli}",
            base_tli.map_or("?".into(), |t| t.to_string())
        ));
    }
    // The summarizer writes a summary at each checkpoint's redo point; the
    // backup's own checkpoint ends the range, once it is summarized.
    let deadline = Instant::now() + WAIT;
    loop {
        // Read before the listing: summarized past the start and still a
        // gap after (summaries removed by wal_summary_keep_time, or
        // summarize_wal turned on after the base), waiting will not help.
        let summarized = pg
            .query("SELECT summarized_lsn::text FROM pg_get_wal_summarizer_state()")
            .ok()
            .and_then(|rows| {
                rows.first()
                    .and_then(|r| r.get_str(0).ok().flatten().and_then(parse_lsn))
            });
        let mut ranges = Vec::new();
        let sql = format!(
            "SELECT start_lsn::text, end_lsn::text FROM pg_available_wal_summaries() WHERE tli = {tli}"
        );
        let read = pg.query_each(&sql, &mut |row| {
            let get = |i| row.get_str(i).ok().flatten().and_then(parse_lsn);
            if let (Some(s), Some(e)) = (get(0), get(1)) {
                ranges.push((s, e));
            }
        });
        if let Err(e) = read {
            return Loaded::No(format!("the WAL summaries cannot be listed: {e}"));
        }
        if covered(ranges, base_lsn, start_lsn) {
            break;
        }
        if summarized.is_some_and(|l| l >= start_lsn) || Instant::now() >= deadline {
            return Loaded::No(format!(
                "the WAL summaries on timeline {tli} do not cover {} to {}",
                lsn_text(base_lsn),
                lsn_text(start_lsn),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sql = format!(
        "SELECT c.reltablespace, c.reldatabase, c.relfilenode, c.relblocknumber, c.is_limit_block \
         FROM pg_available_wal_summaries() s, \
              pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c \
         WHERE s.tli = {tli} AND s.end_lsn > '{}' AND s.start_lsn < '{}' AND c.relforknumber = 0",
        lsn_text(base_lsn),
        lsn_text(start_lsn)
    );
    let mut changes = Changes::default();
    let mut within = true;
    let mut bad = None;
    let read = pg.query_each(&sql, &mut |row| {
        if !within || bad.is_some() {
            return;
        }
        let num = |i| row.get_i64(i).ok().flatten();
        let limit = row.get_bool(4).ok().flatten();
        match (num(0), num(1), num(2), num(3), limit) {
            (Some(spc), Some(db), Some(rel), Some(block), Some(limit)) => {
                // The global tablespace's files are not paged files.
                let spc = if spc == 0 {
                    DEFAULT_TABLESPACE
                } else {
                    spc as u32
                };
                within = changes.add((spc, db as u32, rel as u32), block as u32, limit);
            }
            _ => bad = Some("a row of pg_wal_summary_contents has an empty or non-numeric column"),
        }
    });
    if let Err(e) = read {
        return Loaded::No(format!("the WAL summaries cannot be read: {e}"));
    }
    if let Some(why) = bad {
        return Loaded::No(why.into());
    }
    if !within {
        return Loaded::No(format!(
            "more than {MAX_BLOCKS} blocks changed since the base"
        ));
    }
    changes.finish();
    Loaded::Yes(changes)
}

/// Once the backup has started: take the plan's changed blocks from WAL
/// summaries when the server has them for the whole range, or say (INFO)
/// why pages are scanned instead.
pub fn attach(
    plan: &super::Plan,
    opts: &super::base::DeltaOptions,
    pg: &mut Client,
    version: i64,
    tli: u32,
    start_lsn: u64,
) {
    if !opts.summaries {
        log::info!("WAL summaries are off (WALDEN_DELTA_SUMMARIES): changed pages are found by a page scan");
        return;
    }
    let base_tli = plan
        .base
        .name
        .strip_prefix("base_")
        .and_then(|h| h.get(0..8))
        .and_then(|t| u32::from_str_radix(t, 16).ok());
    match load(pg, version, base_tli, plan.base.lsn, tli, start_lsn) {
        Loaded::Yes(changes) => {
            log::info!(
                "Changed blocks since {} come from the server's WAL summaries ({} blocks in {} relations)",
                lsn_text(plan.base.lsn),
                changes.count,
                changes.rels.len()
            );
            plan.use_summaries(changes);
        }
        Loaded::No(why) => {
            log::info!(
                "WAL summaries cannot be used ({why}): changed pages are found by a page scan"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 8192;

    #[test]
    fn members_map_to_relations_and_segments() {
        assert_eq!(parse_member(b"/base/5/16384"), Some(((1663, 5, 16384), 0)));
        assert_eq!(
            parse_member(b"/base/5/16384.2"),
            Some(((1663, 5, 16384), 2))
        );
        assert_eq!(
            parse_member(b"/pg_tblspc/16400/PG_17_202406281/5/16401.1"),
            Some(((16400, 5, 16401), 1))
        );
        assert_eq!(parse_member(b"/global/1262"), None);
        assert_eq!(parse_member(b"/base/5/16384_fsm"), None);
    }

    #[test]
    fn coverage_needs_contiguous_summaries() {
        assert!(covered(vec![(10, 20), (20, 30)], 12, 30));
        assert!(covered(vec![(20, 30), (0, 20)], 12, 25));
        assert!(!covered(vec![(10, 20), (21, 30)], 12, 30));
        assert!(!covered(vec![(15, 30)], 12, 30));
        assert!(!covered(vec![(10, 20)], 12, 30));
    }

    #[test]
    fn blocks_per_segment_file_with_truncation_and_creation() {
        let mut c = Changes::default();
        for b in [7, 3, 3, RELSEG_BLOCKS as u32 + 5] {
            assert!(c.add((1663, 5, 100), b, false));
        }
        c.add((1663, 5, 200), 0, true); // created in the range
        c.add((1663, 5, 300), 4, false);
        c.add((1663, 5, 300), 10, true); // cut to 10 blocks
        c.add((1663, 5, 300), 12, false);
        c.finish();
        assert_eq!(
            c.for_file(b"/base/5/100", 10 * PAGE),
            Some(FileChanges::Blocks(vec![3, 7]))
        );
        assert_eq!(
            c.for_file(b"/base/5/100.1", 10 * PAGE),
            Some(FileChanges::Blocks(vec![5]))
        );
        // Only blocks within the file's size at walk time.
        assert_eq!(
            c.for_file(b"/base/5/100", 5 * PAGE),
            Some(FileChanges::Blocks(vec![3]))
        );
        assert_eq!(
            c.for_file(b"/base/5/200", 3 * PAGE),
            Some(FileChanges::Whole)
        );
        assert_eq!(
            c.for_file(b"/base/5/300", 14 * PAGE),
            Some(FileChanges::Blocks(vec![4, 10, 11, 12, 13]))
        );
        assert_eq!(
            c.for_file(b"/base/5/300", 8 * PAGE),
            Some(FileChanges::Blocks(vec![4]))
        );
        assert_eq!(
            c.for_file(b"/base/5/400", 8 * PAGE),
            Some(FileChanges::Blocks(vec![]))
        );
        assert_eq!(c.for_file(b"/base/5/400_vm", 8 * PAGE), None);
    }
}
