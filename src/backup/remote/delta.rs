//! Whether a remote backup-push is a delta, and its base: PostgreSQL 17+
//! with `summarize_wal = on` takes an INCREMENTAL BASE_BACKUP against the
//! manifest walden makes from the base's objects (`manifest.rs`); older
//! servers cannot send changed blocks only over the replication protocol.
//!
//! The base is chosen as for a local delta (`delta/base.rs`: max steps,
//! origin, --delta-from-*), with the same system and timeline checks,
//! made against the server's current WAL position (the backup's start is
//! only known once it has begun; the server checks that too). An explicit
//! base (--delta-from-name/--delta-from-user-data) that cannot be honoured
//! is an error; `WALG_DELTA_MAX_STEPS` alone falls back to a full backup
//! with one line saying why.

use std::sync::Arc;

use crate::backup::delta::base::{self, Base, From};
use crate::backup::push::Options;
use crate::error::{Error, Result};
use crate::pg::replication::SystemInfo;
use crate::pg::{Client, PgError};
use crate::storage::Storage;

use super::manifest::{self, Manifest};

/// PostgreSQL 17: BASE_BACKUP INCREMENTAL and UPLOAD_MANIFEST.
pub const FIRST_VERSION: i64 = 170000;

pub struct RemoteDelta {
    pub base: Base,
    pub manifest: Manifest,
    /// --delta-from-name/--delta-from-user-data: a refusal is an error.
    pub explicit: bool,
}

/// What to tell the user when the delta cannot be taken: an error for an
/// explicit base, else an INFO line and a full backup.
fn refuse(explicit: bool, why: String) -> Result<Option<RemoteDelta>> {
    if explicit {
        return Err(Error::Usage(format!(
            "{why}; take a full remote backup (--full, or leave out --delta-from-name/--delta-from-user-data), \
             or run backup-push with the data directory on the database host for a local delta"
        )));
    }
    log::info!("WALG_DELTA_MAX_STEPS is set, but {why}: doing a full backup");
    Ok(None)
}

/// The delta to take, or None for a full backup; `show` reads a setting
/// on the replication session.
pub fn prepare(
    storage: &Arc<dyn Storage>,
    opts: &Options,
    pg: &mut Client,
    version: i64,
    system: &SystemInfo,
    show: &dyn Fn(&mut Client, &str) -> std::result::Result<String, PgError>,
) -> Result<Option<RemoteDelta>> {
    let explicit = !matches!(opts.delta.from, From::Latest);
    if opts.delta.full || opts.delta.max_steps == 0 {
        return Ok(None);
    }
    if version < FIRST_VERSION {
        return refuse(
            explicit,
            format!(
                "remote delta backups need PostgreSQL 17 or later (BASE_BACKUP INCREMENTAL with WAL summaries); \
                 the server at {} is {version} (server_version_num)",
                pg.target()
            ),
        );
    }
    let summarize = show(pg, "summarize_wal")?;
    if summarize.trim() != "on" {
        return refuse(
            explicit,
            format!(
                "remote delta backups need summarize_wal = on, and the server at {} has summarize_wal = {}: \
                 set it (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()); WAL is summarised \
                 from then on, so the first backup after that is full",
                pg.target(),
                summarize.trim()
            ),
        );
    }
    let Some(base) = base::choose(&base::InStorage(storage), &opts.delta, opts.permanent)? else {
        return Ok(None);
    };
    let system_identifier = system.system_id.trim().parse::<u64>().ok();
    let usable = base::check_started(
        &base,
        system.xlogpos,
        system_identifier,
        system.timeline,
        |tl| {
            pg.timeline_history(tl)
                .ok()
                .flatten()
                .map(|(_, c)| String::from_utf8_lossy(&c).into_owned())
        },
    )?;
    if !usable {
        return Ok(None);
    }
    let Some(sysid) = base.system_identifier.or(system_identifier) else {
        return Err(Error::Other(format!(
            "the server at {} sent system identifier '{}', which is not a number",
            pg.target(),
            system.system_id
        )));
    };
    let timeline = base::base_timeline(&base.name).unwrap_or(system.timeline);
    let manifest = manifest::synthesise(storage, &base, timeline, sysid)?;
    log::info!(
        "Remote delta from {}: its manifest lists {} files",
        base.name,
        manifest.files
    );
    Ok(Some(RemoteDelta {
        base,
        manifest,
        explicit,
    }))
}

/// The server refused the incremental backup (UPLOAD_MANIFEST or BASE_BACKUP
/// INCREMENTAL): an error for an explicit base, else a WARN and a full
/// backup (Ok).
pub fn refused(delta: &RemoteDelta, target: &str, e: PgError) -> Result<()> {
    let PgError::Query { server } = &e else {
        return Err(e.into());
    };
    let why = format!(
        "the server at {target} cannot take an incremental backup from {}: {server}",
        delta.base.name
    );
    if delta.explicit {
        return Err(Error::Other(format!(
            "{why}; take a full backup (--full) to be the base of later deltas, or give the data directory \
             for a local delta"
        )));
    }
    log::warn!("{why}; doing a full backup instead");
    Ok(())
}
