//! The database composer (`--database-composer`, spec §8.3): the files
//! of each database directory (`base/<oid>`, and a tablespace's
//! `<oid>` directories) in tars of their own, all other files in other
//! tars, so that `backup-fetch --restore-only` of one database can skip
//! whole tars of the others.
//!
//! Needs no memory: the group is the file's database directory, and the
//! builders close a tar when the group changes. The walk reads one
//! directory to its end before the next, so each database's files come
//! in one run and make one tar series.

use super::database_of;

/// The group of every file outside a database directory.
const OTHERS: u64 = u64::MAX;

/// The group of the file `rel` (relative to PGDATA).
pub fn group(rel: &[u8]) -> u64 {
    match database_of(rel) {
        Some((spc, db)) => (u64::from(spc) << 32) | u64::from(db),
        None => OTHERS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_database_directory() {
        assert_eq!(group(b"base/5/1259"), group(b"base/5/PG_VERSION"));
        assert_ne!(group(b"base/5/1259"), group(b"base/1/1259"));
        assert_eq!(group(b"global/1262"), group(b"pg_xact/0000"));
        assert_ne!(group(b"base/5/1259"), group(b"global/1262"));
    }
}
