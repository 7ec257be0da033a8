//! Full base backups in WAL-G's layout: `backup-push` (local mode, reading
//! PGDATA) and `backup-fetch`. See `../shared/spec/walg-backup-format.md`.

mod alive;
pub mod extract;
pub mod fetch;
mod files_metadata;
mod knobs;
pub mod layout;
pub mod push;
pub mod sentinel;
mod stop;
mod tars;
mod throttle;
pub mod walk;
