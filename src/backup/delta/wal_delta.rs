//! `WALG_USE_WAL_DELTA` / `WALG_FORCE_WAL_DELTA` (spec §6.5): accepted,
//! not implemented, said once.
//!
//! With them WAL-G's wal-push parses every archived segment and writes
//! the block references of each group of 16 segments to
//! `wal_005/<first segment>_delta[.<ext>]`; a delta backup-push reads
//! those files (and the raw WAL of the last group) instead of scanning
//! pages. walden neither writes nor reads them: its delta backups take
//! the changed blocks from the server's WAL summaries (PostgreSQL 17+,
//! `summarize_wal = on`), else from a scan of every page, which finds
//! every block a delta file would name (a WAL-logged change moves the
//! page's LSN past the base's start).
//!
//! WAL-G sharing the storage stays safe: its backup-push, missing a delta
//! file walden's wal-push did not write, warns ("Error during loading
//! delta map … Fallback to full scan delta backup") and scans pages —
//! only `WALG_FORCE_WAL_DELTA=true` makes that a failure. Its wal-push
//! uploads a group's file only after recording all 16 segments itself,
//! so a group archived partly by walden never gets an incomplete file.

use crate::config::Settings;
use crate::error::Result;

/// Log the one INFO line when either setting is on.
pub fn note(settings: &Settings) -> Result<()> {
    let force = settings.bool("WALG_FORCE_WAL_DELTA")?;
    if !(settings.bool("WALG_USE_WAL_DELTA")? || force) {
        return Ok(());
    }
    let forced = if force {
        " (WALG_FORCE_WAL_DELTA has no effect either)"
    } else {
        ""
    };
    log::info!(
        "WALG_USE_WAL_DELTA is set, but walden neither writes nor reads WAL-G's WAL delta files (wal_005/*_delta){forced}: \
         a delta backup takes its changed blocks from the server's WAL summaries (PostgreSQL 17+ with summarize_wal = on), \
         else from a scan of every page, which finds the same blocks"
    );
    Ok(())
}
