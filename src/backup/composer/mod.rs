//! Tar composers of backup-push (spec §8.3): which tar a file goes to.
//!
//! The regular composer lets any builder take any file. The others give
//! every file a group ([`crate::backup::tars::Member::group`]): a builder
//! closes its tar when a file of another group comes, so no tar holds
//! files of two groups, and directory/symlink headers go into one tar of
//! their own, as in WAL-G.
//! - database (`database.rs`): one group per database directory;
//! - rating (`rating.rs`): files ordered and grouped by how often their
//!   relation is written, from `pg_stat_all_tables`;
//! - copy (`copy.rs`): a full backup that copies the previous full
//!   backup's tars whose files did not change.

pub mod copy;
pub mod database;
pub mod rating;

use crate::config::Settings;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Composer {
    Regular,
    Rating,
    Database,
    Copy,
}

/// The composer flags of the command line (OR-ed with the settings).
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags {
    pub rating: bool,
    pub copy: bool,
    pub database: bool,
}

impl Composer {
    /// WAL-G's precedence: copy > database > rating > regular. Any of
    /// them with `--without-files-metadata` is refused, as WAL-G refuses
    /// it (spec §8.3): their tars are only useful with the files' list.
    pub fn choose(
        settings: &Settings,
        flags: Flags,
        without_files_metadata: bool,
    ) -> Result<Composer> {
        let rating = flags.rating || settings.bool("WALG_USE_RATING_COMPOSER")?;
        let copy = flags.copy || settings.bool("WALG_USE_COPY_COMPOSER")?;
        let database = flags.database || settings.bool("WALG_USE_DATABASE_COMPOSER")?;
        let (chosen, name) = if copy {
            (Composer::Copy, "--copy-composer (WALG_USE_COPY_COMPOSER)")
        } else if database {
            (
                Composer::Database,
                "--database-composer (WALG_USE_DATABASE_COMPOSER)",
            )
        } else if rating {
            (
                Composer::Rating,
                "--rating-composer (WALG_USE_RATING_COMPOSER)",
            )
        } else {
            return Ok(Composer::Regular);
        };
        if without_files_metadata {
            return Err(Error::Usage(format!(
                "{name} cannot be used with --without-files-metadata (WALG_WITHOUT_FILES_METADATA): \
                 its tars are described by files_metadata.json; drop one of the two"
            )));
        }
        Ok(chosen)
    }

    /// Directory and symlink headers in a tar of their own.
    pub fn separate_headers(self) -> bool {
        self != Composer::Regular
    }
}

/// The database OID and file node of a relation file, from its path
/// relative to PGDATA (`base/<db>/<node>[.<seg>|_fsm|_vm|_init]`,
/// `pg_tblspc/<spc>/<version>/<db>/<node>...`, `global/<node>...`):
/// (tablespace, database, node), tablespace 0 for `base/` and 1664 for
/// `global/` (pg_class.reltablespace's values).
pub fn relation_of(rel: &[u8]) -> Option<(u32, u32, u32)> {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    match parts.as_slice() {
        [b"base", db, file] => Some((0, number(db)?, node(file)?)),
        [b"global", file] => Some((1664, 0, node(file)?)),
        [b"pg_tblspc", spc, _, db, file] => Some((number(spc)?, number(db)?, node(file)?)),
        _ => None,
    }
}

/// The database directory a file is in (tablespace, database OID).
pub fn database_of(rel: &[u8]) -> Option<(u32, u32)> {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    match parts.as_slice() {
        [b"base", db, _, ..] => Some((0, number(db)?)),
        [b"pg_tblspc", spc, _, db, _, ..] => Some((number(spc)?, number(db)?)),
        _ => None,
    }
}

fn number(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The file node of a relation file's name: its leading digits, up to
/// `.` or `_`.
fn node(file: &[u8]) -> Option<u32> {
    let end = file
        .iter()
        .position(|&b| b == b'.' || b == b'_')
        .unwrap_or(file.len());
    number(&file[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_by_path() {
        assert_eq!(relation_of(b"base/5/1259"), Some((0, 5, 1259)));
        assert_eq!(relation_of(b"base/5/1259.2"), Some((0, 5, 1259)));
        assert_eq!(relation_of(b"base/5/1259_fsm"), Some((0, 5, 1259)));
        assert_eq!(relation_of(b"global/1262"), Some((1664, 0, 1262)));
        assert_eq!(
            relation_of(b"pg_tblspc/16390/PG_15_202209061/16384/16391"),
            Some((16390, 16384, 16391))
        );
        assert_eq!(relation_of(b"base/5/PG_VERSION"), None);
        assert_eq!(relation_of(b"pg_xact/0000"), None);
        assert_eq!(database_of(b"base/16384/PG_VERSION"), Some((0, 16384)));
        assert_eq!(database_of(b"base/16384"), None);
        assert_eq!(
            database_of(b"pg_tblspc/16390/PG_15_202209061/16384/16391"),
            Some((16390, 16384))
        );
        assert_eq!(database_of(b"global/1262"), None);
    }
}
