//! `walden wal-push PATH`: archive_command.
use std::ffi::OsString;

use crate::config::Settings;
use crate::error::{Error, Result};

pub fn run(_settings: &Settings, _args: Vec<OsString>) -> Result<()> {
    Err(Error::NotBuilt("wal-push".into()))
}
