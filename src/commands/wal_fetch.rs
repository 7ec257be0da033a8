//! `walden wal-fetch NAME DEST`: restore_command.
use std::ffi::OsString;

use crate::config::Settings;
use crate::error::{Error, Result};

pub fn run(_settings: &Settings, _args: Vec<OsString>) -> Result<()> {
    Err(Error::NotBuilt("wal-fetch".into()))
}

pub fn run_prefetch(_settings: &Settings, _args: Vec<OsString>) -> Result<()> {
    Err(Error::NotBuilt("wal-prefetch".into()))
}
