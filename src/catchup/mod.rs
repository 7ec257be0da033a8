//! Catch-up of a lagging replica (spec §11, seed `catchup-push` /
//! `catchup-fetch`): `catchup-push` on the primary stores, under
//! `catchup_005/`, every relation page changed at or after the replica's
//! LSN (as WAL-G increments) and every other file whole; `catchup-fetch`
//! applies that onto the stopped replica's data directory, after which it
//! starts from the catch-up's `backup_label` and streams from the primary.
//!
//! Push is backup-push's pipeline (`crate::backup::push::catchup`) on a
//! view of storage whose `basebackups_005/` is `catchup_005/`
//! ([`folder`]); `catchup-list` is backup-list on that view; fetch is
//! [`fetch`].

mod control;
mod fetch;
pub mod folder;
mod gob;
mod receive;
mod sealed;
mod send;
mod tblspc;
mod wire;

use std::ffi::OsString;
use std::path::PathBuf;

use crate::commands::open_storage;
use crate::config::Settings;
use crate::error::{Error, Result};

const PUSH_USAGE: &str = "walden catchup-push PGDATA --from-lsn LSN";
const LIST_USAGE: &str = "walden catchup-list [--pretty] [--json] [--detail]";

pub use fetch::run as run_fetch;
pub use receive::run as run_receive;
pub use send::run as run_send;

/// `--from-lsn`: WAL-G takes a decimal number; `X/Y` as PostgreSQL and
/// pg_controldata print LSNs is accepted too.
fn parse_from_lsn(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.contains('/') {
        crate::backup::layout::parse_lsn(t)
    } else {
        t.parse().ok()
    }
}

pub fn run_push(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let usage = |what: String| Error::Usage(format!("{what}; usage: {PUSH_USAGE}"));
    let mut parser = lexopt::Parser::from_args(args);
    let mut dir: Option<PathBuf> = None;
    let mut from: Option<u64> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("from-lsn") => {
                let text = parser.value()?.string()?;
                from = Some(parse_from_lsn(&text).ok_or_else(|| {
                    usage(format!(
                        "--from-lsn '{text}' is not an LSN: give a decimal number (WAL-G's form) or X/Y"
                    ))
                })?);
            }
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }
    let Some(dir) = dir else {
        return Err(usage("PGDATA is missing".into()));
    };
    let Some(from) = from else {
        return Err(usage(
            "--from-lsn is missing: give the stopped replica's 'Latest checkpoint's REDO location' \
             from pg_controldata"
                .into(),
        ));
    };
    let storage = folder::catchup_view(open_storage(settings)?);
    crate::backup::push::catchup(settings, dir, from, storage)
}

pub fn run_list(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = crate::backup::list::Options::parse(args, LIST_USAGE)?;
    let storage = folder::catchup_view(open_storage(settings)?);
    crate::backup::list::print_list(&storage, opts)
}

/// The key catchup-send/receive encrypt their connection with, if any
/// ([`sealed`]; WAL-G's own encrypted stream cannot work, W23).
fn stream_key(settings: &Settings) -> Result<Option<crate::codec::libsodium::SecretKey>> {
    Ok(crate::commands::codecs(settings)?.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lsn_forms() {
        assert_eq!(parse_from_lsn("83886120"), Some(83886120));
        assert_eq!(parse_from_lsn("0/5000028"), Some(0x5000028));
        assert_eq!(parse_from_lsn("x"), None);
        assert_eq!(parse_from_lsn("-1"), None);
    }
}
