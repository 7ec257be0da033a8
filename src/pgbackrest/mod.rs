//! `walden pgbackrest ...`: reading a pgBackRest repository (spec
//! pgbackrest-repo-format.md) through walden's storage, whose prefix points
//! at the repository root (`repo1-path`, or the bucket prefix), as WAL-G
//! reads it.

mod cipher;
mod codec;
mod fetch;
mod ini;
mod list;
mod owner;
mod rck;
mod repo;
mod sha1;
mod tablespaces;
mod wal;
mod walshow;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;

use crate::config::Settings;
use crate::error::{Error, Result};

/// What can go wrong reading a pgBackRest repository.
#[derive(Debug)]
pub enum PgbrError {
    /// A file is not what the format says; `what` names it.
    Format { what: String, problem: String },
    /// Reading a file failed part way.
    Read { what: String, problem: String },
    /// Something walden recognises but does not read (yet).
    Unsupported { what: String, problem: String },
}

impl fmt::Display for PgbrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgbrError::Format { what, problem } => write!(f, "pgBackRest {what}: {problem}"),
            PgbrError::Read { what, problem } => {
                write!(f, "reading pgBackRest {what} failed: {problem}")
            }
            PgbrError::Unsupported { what, problem } => write!(f, "pgBackRest {what}: {problem}"),
        }
    }
}

impl std::error::Error for PgbrError {}

impl From<PgbrError> for Error {
    fn from(e: PgbrError) -> Self {
        Error::Other(e.to_string())
    }
}

const USAGE: &str = "walden pgbackrest backup-list [--pretty] [--json] [--detail]\n\
walden pgbackrest backup-fetch DEST LABEL|LATEST [--tablespace-map NAME=DIR] [--tablespace-map-all DIR] [--recovery-target...]\n\
walden pgbackrest wal-fetch NAME DEST\n\
walden pgbackrest wal-show [--json]";

pub fn run(settings: &Settings, mut args: Vec<OsString>) -> Result<()> {
    if args.is_empty() {
        return Err(Error::Usage(format!(
            "a subcommand is needed; usage:\n{USAGE}"
        )));
    }
    let sub = args.remove(0).to_string_lossy().into_owned();
    match sub.as_str() {
        "backup-list" => list::run(settings, args),
        "wal-fetch" => wal::run_fetch(settings, args),
        "backup-fetch" => fetch::run(settings, args),
        "wal-show" => walshow::run(settings, args),
        other => Err(Error::Usage(format!(
            "unknown subcommand '{other}'; usage:\n{USAGE}"
        ))),
    }
}

/// The stanza, as WAL-G reads it: `PGBACKREST_STANZA` (also set as
/// `WALG_PGBACKREST_STANZA`), default `main`.
pub fn stanza(settings: &Settings) -> Result<String> {
    let name = settings
        .get_explicit("PGBACKREST_STANZA")
        .or_else(|| settings.get_explicit("WALG_PGBACKREST_STANZA"))
        .unwrap_or_else(|| "main".into());
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Usage(format!(
            "PGBACKREST_STANZA '{name}' is not a stanza name"
        )));
    }
    Ok(name)
}

/// The repository at walden's storage, with the stanza and the
/// repository passphrase (`PGBACKREST_REPO1_CIPHER_PASS`, pgBackRest's own
/// name for it) of the settings.
pub fn open_repo(settings: &Settings) -> Result<repo::Repo> {
    let pass = settings
        .get_explicit("PGBACKREST_REPO1_CIPHER_PASS")
        .filter(|p| !p.is_empty());
    Ok(
        repo::Repo::new(crate::commands::open_storage(settings)?, stanza(settings)?)
            .with_cipher_pass(pass),
    )
}
