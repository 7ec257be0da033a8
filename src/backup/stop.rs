//! Ending the backup: `pg_backup_stop` without its built-in wait for the
//! archive, then a wait of our own.
//!
//! PostgreSQL's `wait_for_archive` checks the archive once a second, so
//! every backup pays up to a second (WAL-G's ~1 s in `pg_backup_stop`,
//! measured). We ask for the stop without waiting, then poll
//! `pg_stat_archiver` with short, growing sleeps until the segment holding
//! the backup's end is archived, whatever the archive_command. Both the
//! stop and the wait are bounded by `WALG_STOP_BACKUP_TIMEOUT`.
//!
//! A segment an earlier `wal-push` uploaded in the background is handed
//! back as `archive_status/<segment>.done` and never passes through the
//! archiver's statistics: that file counts as archived too, as it does for
//! PostgreSQL's own wait.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pg::Client;

pub struct Stopped {
    pub finish_lsn: u64,
    pub label: String,
    pub spcmap: String,
}

/// How often a long wait for the archive is reported (PostgreSQL's own
/// wait warns every minute too).
const REPORT_EVERY: Duration = Duration::from_secs(60);
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// `archive_status` is pg_wal's status directory when the backup must
/// wait for its WAL to be archived, else None.
pub fn stop_backup(
    pg: &mut Client,
    version: i64,
    archive_status: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<Stopped> {
    let started = Instant::now();
    let function = if version >= 150000 {
        "pg_backup_stop(false)"
    } else {
        "pg_stop_backup(false, false)"
    };
    // pg_walfile_name(lsn): the segment holding lsn - 1, the last one the
    // backup needs (what PostgreSQL's own wait waits for). It cannot be
    // called during recovery, where there is no wait anyway.
    let segment = if archive_status.is_some() {
        "pg_walfile_name(lsn)"
    } else {
        "''"
    };
    if let Some(t) = timeout {
        pg.execute(&format!("SET statement_timeout = {}", t.as_millis().max(1)))?;
    }
    let rows = match pg.query(&format!(
        "SELECT lsn::text, labelfile, spcmapfile, {segment} FROM {function}"
    )) {
        Ok(rows) => rows,
        Err(e) if e.to_string().contains("57014") => {
            return Err(timed_out(timeout, &e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("stopping the backup: the server returned no row".into()))?;
    let stopped = Stopped {
        finish_lsn: super::push::lsn(row.get_str(0)?.unwrap_or(""))?,
        label: row.get_str(1)?.unwrap_or("").to_string(),
        spcmap: row.get_str(2)?.unwrap_or("").to_string(),
    };
    let last_needed = row.get_str(3)?.unwrap_or("").to_string();
    if let Some(status) = archive_status.filter(|_| !last_needed.is_empty()) {
        wait_for_archive(pg, status, &last_needed, started, timeout)?;
    }
    Ok(stopped)
}

fn timed_out(timeout: Option<Duration>, detail: &str) -> Error {
    Error::Other(format!(
        "stopping the backup took longer than WALG_STOP_BACKUP_TIMEOUT ({:?}): the WAL the backup \
         needs is not archived yet (check archive_command and the server log); no sentinel was written{detail}",
        timeout.unwrap_or_default()
    ))
}

/// Until `segment` (or a later one) is the last archived WAL file.
fn wait_for_archive(
    pg: &mut Client,
    archive_status: &Path,
    segment: &str,
    started: Instant,
    timeout: Option<Duration>,
) -> Result<()> {
    let mut sleep = Duration::from_millis(2);
    let mut reported = Instant::now();
    loop {
        let rows = pg.query(
            "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        )?;
        let (archived, failed) = match rows.first() {
            Some(r) => (
                r.get_str(0)?.unwrap_or("").to_string(),
                r.get_str(1)?.unwrap_or("").to_string(),
            ),
            None => (String::new(), String::new()),
        };
        // Names sort in archive order (timeline, then segment); a backup
        // history file `<segment>.<offset>.backup` sorts after its segment.
        if archived.len() >= 24 && archived.as_str() >= segment {
            log::debug!("WAL up to {segment} is archived (last archived: {archived})");
            return Ok(());
        }
        if archive_status.join(format!("{segment}.done")).exists() {
            log::debug!("WAL up to {segment} is archived (its .done file is there)");
            return Ok(());
        }
        if let Some(t) = timeout {
            if started.elapsed() >= t {
                let detail = if failed.is_empty() {
                    String::new()
                } else {
                    format!(" (the last WAL file that failed to archive: {failed})")
                };
                return Err(timed_out(timeout, &detail));
            }
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = Instant::now();
            log::warn!(
                "still waiting for WAL file {segment} to be archived (last archived: '{archived}', last failed: '{failed}'); \
                 check archive_command, or set WALG_STOP_BACKUP_TIMEOUT to give up"
            );
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(MAX_SLEEP);
    }
}
