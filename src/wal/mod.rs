//! WAL files: their names, where they go in storage, and the local state
//! WAL-G keeps about them under pg_wal.

pub mod archive_status;
pub mod history;
pub mod metadata;
pub mod name;
pub mod object;
pub mod ranges;
pub mod records;
pub mod table;

pub use name::Segment;

use crate::config::{ConfigError, Settings};

/// `WALG_PG_WAL_SIZE`: the cluster's segment size in MiB, which
/// PostgreSQL allows to be a power of two from 1 to 1024.
pub fn segment_size_mb(settings: &Settings) -> Result<u64, ConfigError> {
    let size = settings.positive("WALG_PG_WAL_SIZE")? as u64;
    if size > 1024 || !size.is_power_of_two() {
        return Err(ConfigError::Invalid {
            name: "WALG_PG_WAL_SIZE".into(),
            value: size.to_string(),
            problem: "the WAL segment size in MiB is a power of two from 1 to 1024 (the cluster's wal_segment_size)".into(),
        });
    }
    Ok(size)
}
