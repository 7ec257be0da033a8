//! Backups from a standby (spec §10.1): the backup is non-exclusive on the
//! standby as on a primary, but `pg_walfile_name` cannot run during
//! recovery, so the start timeline is read from the control file; and the
//! timeline is watched: if the standby was promoted, or follows an upstream
//! that was, while the backup ran, the backup is uploaded but not
//! finalised (no metadata, no sentinel), and the error says how to
//! finalise it for those who accept the risk, as WAL-G does.

use crate::error::{Error, Result};
use crate::pg::Client;

/// What the standby says about its timeline now.
struct Now {
    checkpoint: u32,
    in_recovery: bool,
    /// The timeline of the minimum recovery point: it moves with replay,
    /// so it shows a switch before the next restartpoint does (0 once
    /// promoted).
    min_recovery: u32,
}

fn read(pg: &mut Client) -> Result<Now> {
    let rows = pg.query(
        "SELECT c.timeline_id::text, pg_is_in_recovery(), r.min_recovery_end_timeline::text \
         FROM pg_control_checkpoint() c, pg_control_recovery() r",
    )?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("reading the server's timeline: no row".into()))?;
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    Ok(Now {
        checkpoint: num(row.get_str(0)?),
        in_recovery: row.get_bool(1)?.unwrap_or(false),
        min_recovery: num(row.get_str(2)?),
    })
}

/// The timeline a backup started on a standby is on: that of the
/// restartpoint `pg_backup_start` just made (WAL-G reads the same).
pub fn start_timeline(pg: &mut Client) -> Result<u32> {
    let now = read(pg)?;
    if now.checkpoint == 0 {
        return Err(Error::Other(
            "the standby's control file names no timeline (pg_control_checkpoint); the backup cannot be named"
                .into(),
        ));
    }
    Ok(now.checkpoint)
}

/// After the backup stopped and everything is uploaded: why the backup
/// must not be finalised, if the timeline moved away from `started`.
pub fn timeline_change(pg: &mut Client, started: u32) -> Option<String> {
    match read(pg) {
        Err(e) => Some(format!(
            "its timeline could not be read after the backup ({e})"
        )),
        Ok(now) if !now.in_recovery => Some(format!(
            "it was promoted during the backup (it started on timeline {started})"
        )),
        Ok(now) if now.checkpoint != started || now.min_recovery > started => Some(format!(
            "its timeline changed during the backup, from {started} to {}",
            now.checkpoint.max(now.min_recovery)
        )),
        Ok(_) => None,
    }
}

/// The error for a backup left unfinalised: what happened, and the two
/// objects (metadata, then the sentinel) that would finalise it.
pub fn unfinalised(
    name: &str,
    why: &str,
    metadata_key: &str,
    metadata: &str,
    sentinel_key: &str,
    sentinel: &str,
) -> Error {
    Error::Other(format!(
        "backup {name} was taken from a standby, and {why}: the backup was uploaded but not finalised, \
         so no restore will pick it. Take a new backup. To finalise this one anyway, if you understand the \
         risks (a backup that spans a timeline switch may not recover to a consistent state), store its \
         metadata and then its sentinel, unencoded:\n\
         walden st put --read-stdin --no-compress --no-encrypt {metadata_key} <<'EOF'\n{metadata}\nEOF\n\
         walden st put --read-stdin --no-compress --no-encrypt {sentinel_key} <<'EOF'\n{sentinel}\nEOF"
    ))
}
