//! The rating composer (`--rating-composer`, spec §8.3): files in tars by
//! how often their relation is written, so that the rarely written ones
//! share tars that stay the same from one backup to the next (what
//! `backup-fetch --skip-redundant-tars` can skip).
//!
//! Rating of a file = `n_tup_ins + n_tup_upd + n_tup_del` of its relation
//! in `pg_stat_all_tables` (one connection per database, read before the
//! backup starts), 0 for every other file; it is the file's
//! `UpdatesCount` in files_metadata.json, as WAL-G writes it.
//!
//! WAL-G holds the whole file list, sorts it by rating and starts a new
//! tar at the threshold and where the rating turns from 0 to non-zero.
//! Memory here stays bounded instead: during the walk each file's name
//! and rating go into one of 65 spill files (anonymous temp files) by
//! rating bucket — 0, then one per power of two — and after the walk the
//! buckets are packed in ascending order, each bucket its own tar series.
//! So tars hold files of one bucket (ratings within a factor of two), in
//! walk order inside it: a coarser sort than WAL-G's, and a stricter
//! grouping. Only the ratings of relations written since the statistics
//! were reset are held (a hash map entry each, like WAL-G's map).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::relation_of;
use crate::backup::tars::{Member, What};
use crate::error::{Error, Result};
use crate::localfile::anonymous_file;
use crate::pg::{Client, ConnParams};

/// Rating 0, then 1 + ⌊log2 r⌋ for r ≥ 1.
pub const BUCKETS: usize = 65;

const RATINGS_SQL: &str =
    "SELECT c.reltablespace::int8, pg_catalog.pg_relation_filenode(c.oid)::int8, \
(s.n_tup_ins + s.n_tup_upd + s.n_tup_del)::int8 \
FROM pg_catalog.pg_stat_all_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid \
WHERE pg_catalog.pg_relation_filenode(c.oid) IS NOT NULL \
AND s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0";

/// Update counts by (tablespace, database, file node).
#[derive(Default)]
pub struct Ratings {
    counts: HashMap<(u32, u32, u32), u64>,
}

impl Ratings {
    /// Read the counts of every database that allows connections; a
    /// database walden cannot connect to rates 0 with a warning (its
    /// files are still backed up).
    pub fn load(params: &ConnParams) -> Result<Ratings> {
        let databases: Vec<(String, u32)> = {
            let mut pg = Client::connect(params)?;
            let rows = pg.query(
                "SELECT datname, oid::int8 FROM pg_catalog.pg_database WHERE datallowconn",
            )?;
            let mut list = Vec::with_capacity(rows.len());
            for row in &rows {
                let name = row.get_str(0)?.unwrap_or("").to_string();
                let oid = row.get_i64(1)?.unwrap_or(0);
                list.push((name, u32::try_from(oid).unwrap_or(0)));
            }
            list
        };
        let mut ratings = Ratings::default();
        for (name, db) in databases {
            let mut db_params = params.clone();
            db_params.database = name.clone();
            let mut pg = match Client::connect(&db_params) {
                Ok(pg) => pg,
                Err(e) => {
                    log::warn!("rating composer: cannot read the update counts of database '{name}', its files rate 0: {e}");
                    continue;
                }
            };
            let mut bad = None;
            pg.query_each(RATINGS_SQL, &mut |row| {
                let get = |i| row.get_i64(i).ok().flatten().unwrap_or(0);
                let (spc, node, count) = (get(0), get(1), get(2));
                let (Ok(spc), Ok(node)) = (u32::try_from(spc), u32::try_from(node)) else {
                    bad = Some(node);
                    return;
                };
                // Shared catalogs are in every database's statistics, under
                // the global tablespace and no database.
                let db = if spc == 1664 { 0 } else { db };
                let slot = ratings.counts.entry((spc, db, node)).or_insert(0);
                *slot = (*slot).max(count.max(0) as u64);
            })?;
            if let Some(node) = bad {
                log::warn!("rating composer: database '{name}' listed file node {node}, which is no OID; ignored");
            }
        }
        log::debug!(
            "rating composer: {} written relations",
            ratings.counts.len()
        );
        Ok(ratings)
    }

    /// The rating of the file `rel` (relative to PGDATA).
    pub fn of(&self, rel: &[u8]) -> u64 {
        relation_of(rel)
            .and_then(|key| self.counts.get(&key).copied())
            .unwrap_or(0)
    }

    #[cfg(test)]
    fn insert(&mut self, key: (u32, u32, u32), count: u64) {
        self.counts.insert(key, count);
    }
}

pub fn bucket(rating: u64) -> usize {
    if rating == 0 {
        0
    } else {
        1 + (63 - rating.leading_zeros() as usize)
    }
}

/// Called with (bucket, file relative to PGDATA, rating).
type Each<'a> = dyn FnMut(usize, &[u8], u64) -> Result<()> + 'a;

/// The walked files by rating bucket, spilled to temp files.
pub struct Sorter {
    buckets: Vec<Option<BufWriter<File>>>,
}

impl Default for Sorter {
    fn default() -> Self {
        Sorter {
            buckets: (0..BUCKETS).map(|_| None).collect(),
        }
    }
}

fn failed(e: io::Error) -> Error {
    Error::io(
        "writing the rating composer's file list to a temporary file",
        e,
    )
}

impl Sorter {
    /// Remember the file `rel` (relative to PGDATA) with its rating.
    pub fn push(&mut self, rel: &[u8], rating: u64) -> Result<()> {
        let slot = &mut self.buckets[bucket(rating)];
        if slot.is_none() {
            *slot = Some(BufWriter::with_capacity(
                16 * 1024,
                anonymous_file("the rating composer's file list")?,
            ));
        }
        let Some(out) = slot.as_mut() else {
            return Ok(());
        };
        // Length-prefixed: a file name may hold any byte but NUL.
        out.write_all(&rating.to_le_bytes()).map_err(failed)?;
        out.write_all(&(rel.len() as u32).to_le_bytes())
            .map_err(failed)?;
        out.write_all(rel).map_err(failed)
    }

    /// Call `f(bucket, rel, rating)` for every file, buckets in
    /// ascending order, walk order inside a bucket.
    pub fn drain(self, f: &mut Each) -> Result<()> {
        let mut rel = Vec::new();
        for (i, slot) in self.buckets.into_iter().enumerate() {
            let Some(out) = slot else { continue };
            let mut file = out.into_inner().map_err(|e| failed(e.into_error()))?;
            file.rewind().map_err(failed)?;
            let mut input = BufReader::with_capacity(16 * 1024, file);
            loop {
                let mut head = [0u8; 12];
                match input.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(failed(e)),
                }
                let (r, n) = head.split_at(8);
                let rating = u64::from_le_bytes(r.try_into().unwrap_or([0; 8]));
                let len = u32::from_le_bytes(n.try_into().unwrap_or([0; 4])) as usize;
                rel.resize(len, 0);
                input.read_exact(&mut rel).map_err(failed)?;
                f(i, &rel, rating)?;
            }
        }
        Ok(())
    }
}

/// Hand the sorted files to the builders: each bucket its own group,
/// `UpdatesCount` = the rating. Files are looked at again (`lstat`) as
/// they are packed: one that vanished since the walk is left out, as a
/// file vanishing before the walk reached it would be (WAL replay
/// recreates what the backup needs).
pub fn pack(
    sorter: Sorter,
    pgdata: &Path,
    add: &mut dyn FnMut(Member) -> Result<()>,
) -> Result<()> {
    sorter.drain(&mut |bucket, rel, rating| {
        let path = pgdata.join(std::ffi::OsStr::from_bytes(rel));
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                log::warn!("'{}' is no longer a file; skipped", path.display());
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!("'{}' vanished during the backup; skipped", path.display());
                return Ok(());
            }
            Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
        };
        add(Member {
            name: [b"/", rel].concat(),
            path,
            meta,
            what: What::File,
            group: Some(bucket as u64),
            updates: rating,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(2), 2);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 3);
        assert_eq!(bucket(u64::MAX), 64);
    }

    #[test]
    fn sorter_drains_ascending_by_bucket_in_walk_order() {
        let mut s = Sorter::default();
        s.push(b"base/5/a", 100).unwrap();
        s.push(b"PG_VERSION", 0).unwrap();
        s.push(b"base/5/b", 1).unwrap();
        s.push(b"base/5/c", 120).unwrap();
        let mut seen = Vec::new();
        s.drain(&mut |b, rel, r| {
            seen.push((b, String::from_utf8_lossy(rel).into_owned(), r));
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["PG_VERSION", "base/5/b", "base/5/a", "base/5/c"]);
        assert_eq!(seen[2].0, seen[3].0);
    }

    #[test]
    fn ratings_by_relation_file() {
        let mut r = Ratings::default();
        r.insert((0, 5, 16384), 42);
        assert_eq!(r.of(b"base/5/16384"), 42);
        assert_eq!(r.of(b"base/5/16384.1"), 42);
        assert_eq!(r.of(b"base/5/16385"), 0);
        assert_eq!(r.of(b"PG_VERSION"), 0);
    }
}
