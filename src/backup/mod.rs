//! Full base backups in WAL-G's layout: `backup-push` (local mode, reading
//! PGDATA) and `backup-fetch`. See `../shared/spec/walg-backup-format.md`.

mod alive;
pub mod catalog;
pub mod chain;
pub mod composer;
pub mod delete;
pub mod delta;
pub mod extract;
pub mod fetch;
mod files_metadata;
pub mod gotime;
mod knobs;
pub mod layout;
pub mod list;
pub mod mark;
pub mod metadata_read;
mod names;
mod pagecheck;
pub mod partial;
mod partial_tars;
pub mod push;
pub mod recovery;
mod remote;
pub mod retention;
pub mod select;
pub mod sentinel;
pub mod show;
pub mod standby;
mod stop;
pub mod tablespaces;
mod tars;
mod throttle;
pub mod unpack;
pub mod verify;
pub mod walk;
