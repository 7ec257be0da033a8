//! WAL files: their names, where they go in storage, and the local state
//! WAL-G keeps about them under pg_wal.

pub mod archive_status;
pub mod metadata;
pub mod name;
pub mod object;

pub use name::Segment;
