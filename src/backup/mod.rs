//! Full base backups in WAL-G's layout: `backup-push` (local mode, reading
//! PGDATA) and `backup-fetch`. See `../shared/spec/walg-backup-format.md`.

pub mod extract;
pub mod fetch;
pub mod layout;
pub mod push;
pub mod sentinel;
pub mod standby;
pub mod tablespaces;
pub mod walk;
