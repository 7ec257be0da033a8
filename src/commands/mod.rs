//! One module per command. Each gets the settings and its own arguments
//! and builds only what it needs (storage, codecs), when it needs it.

mod flags;
mod st;
mod wal_fetch;
mod wal_push;

use std::ffi::OsString;
use std::sync::Arc;

use crate::codec::Codecs;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::{self, Storage};

pub fn run(command: &str, settings: Settings, args: Vec<OsString>) -> Result<()> {
    match command {
        "st" => st::run(&settings, args),
        "wal-push" => wal_push::run(&settings, args),
        "wal-fetch" => wal_fetch::run(&settings, args),
        "wal-prefetch" => wal_fetch::run_prefetch(&settings, args),
        "flags" => flags::run(),
        other => Err(Error::NotBuilt(other.to_string())),
    }
}

pub fn open_storage(settings: &Settings) -> Result<Arc<dyn Storage>> {
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
