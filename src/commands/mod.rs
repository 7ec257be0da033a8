//! One module per command. Each gets the settings and its own arguments
//! and builds only what it needs (storage, codecs), when it needs it.

mod copy;
mod flags;
mod pg_info;
mod st;
pub mod wal_fetch;
pub mod wal_push;
mod wal_receive;
mod wal_restore;
mod wal_show;
mod wal_verify;

use std::ffi::OsString;
use std::sync::Arc;

use crate::codec::Codecs;
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::storage::{self, Storage};

pub fn run(command: &str, settings: Settings, args: Vec<OsString>) -> Result<()> {
    // These create temp files or uploads that a stop signal must not leave
    // behind; set up before any thread starts.
    if matches!(
        command,
        "st" | "copy"
            | "wal-push"
            | "wal-fetch"
            | "wal-prefetch"
            | "backup-push"
            | "backup-fetch"
            | "catchup-push"
            | "catchup-fetch"
    ) {
        crate::cleanup::install();
    }
    match command {
        "backup-push" => crate::backup::push::run(&settings, args),
        "backup-fetch" => crate::backup::fetch::run(&settings, args),
        "backup-list" => crate::backup::list::run(&settings, args),
        "backup-mark" => crate::backup::mark::run(&settings, args),
        "backup-show" => crate::backup::show::run(&settings, args),
        "backup-verify" => crate::backup::verify::run(&settings, args),
        "delete" => crate::backup::delete::run(&settings, args),
        "st" => st::run(&settings, args),
        "copy" => copy::run(&settings, args),
        "wal-push" => wal_push::run(&settings, args),
        "wal-receive" => wal_receive::run(&settings, args),
        "daemon" => crate::daemon::run(&settings, args),
        "wal-restore" => wal_restore::run(&settings, args),
        "wal-fetch" => wal_fetch::run(&settings, args),
        "wal-prefetch" => wal_fetch::run_prefetch(&settings, args),
        "wal-show" => wal_show::run(&settings, args),
        "wal-verify" => wal_verify::run(&settings, args),
        "catchup-push" => crate::catchup::run_push(&settings, args),
        "catchup-fetch" => crate::catchup::run_fetch(&settings, args),
        "catchup-list" => crate::catchup::run_list(&settings, args),
        "catchup-receive" => crate::catchup::run_receive(&settings, args),
        "catchup-send" => crate::catchup::run_send(&settings, args),
        "flags" => flags::run(),
        "pg-info" => pg_info::run(&settings, args),
        "pgbackrest" => crate::pgbackrest::run(&settings, args),
        other => Err(Error::NotBuilt(other.to_string())),
    }
}

/// Most parts of one object, or WAL files, uploaded at once. WAL-G sets no
/// bound; a value beyond this is a typo, and would ask for that many
/// threads and part buffers.
const MAX_UPLOAD_CONCURRENCY: usize = 1024;

/// `WALG_UPLOAD_CONCURRENCY`, checked.
pub fn upload_concurrency(settings: &Settings) -> Result<usize> {
    let n = settings.positive("WALG_UPLOAD_CONCURRENCY")?;
    if n > MAX_UPLOAD_CONCURRENCY {
        return Err(ConfigError::Invalid {
            name: "WALG_UPLOAD_CONCURRENCY".into(),
            value: n.to_string(),
            problem: format!("at most {MAX_UPLOAD_CONCURRENCY} uploads at once are allowed"),
        }
        .into());
    }
    Ok(n)
}

pub fn open_storage(settings: &Settings) -> Result<Arc<dyn Storage>> {
    upload_concurrency(settings)?;
    Ok(storage::select::open(settings)?)
}

pub fn codecs(settings: &Settings) -> Result<Codecs> {
    Ok(Codecs::from_settings(settings)?)
}

/// Positional arguments of a command that takes no options but `-h`.
pub fn positionals(args: Vec<OsString>, usage: &str, count: usize) -> Result<Vec<String>> {
    let values: Vec<String> = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|_| Error::Usage(format!("arguments must be UTF-8; usage: {usage}")))
        })
        .collect::<Result<_>>()?;
    if values.len() != count || values.iter().any(|v| v.starts_with("--")) {
        return Err(Error::Usage(format!(
            "expected {count} argument(s); usage: {usage}"
        )));
    }
    Ok(values)
}
