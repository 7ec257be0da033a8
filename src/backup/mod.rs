//! Full base backups in WAL-G's layout: `backup-push` (local mode, reading
//! PGDATA) and `backup-fetch`. See `../shared/spec/walg-backup-format.md`.

pub mod catalog;
pub mod extract;
pub mod fetch;
pub mod gotime;
pub mod layout;
pub mod list;
pub mod mark;
pub mod push;
pub mod recovery;
pub mod select;
pub mod sentinel;
pub mod show;
pub mod standby;
pub mod tablespaces;
pub mod unpack;
pub mod walk;
