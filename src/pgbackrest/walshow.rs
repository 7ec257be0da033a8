//! `walden pgbackrest wal-show [--json]`: the WAL archive of the stanza
//! (spec §9.3): per archive id (`<pg version>-<history id>`), per
//! timeline, the first and last segment, how many are stored, the holes
//! between them and the parent timeline from `<tli>.history`. One listing
//! per archive id; memory grows with timelines and holes, not segments.

use std::ffi::OsString;
use std::io::{self, Read, Write};

use serde_json::{json, Value};

use super::codec::{self, Compress};
use super::repo::{BackupEntry, Repo};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Entry;
use crate::wal::name::Segment;
use crate::wal::{history, ranges, table};

const USAGE: &str = "walden pgbackrest wal-show [--json]";
/// The segment size when the repository does not tell (no backup with
/// its start LSN and segment), PostgreSQL's default.
const DEFAULT_WAL_SIZE_MB: u64 = 16;

/// The cluster's segment size, as the backups of backup.info show it:
/// their start LSN lies in the start segment they name only with the
/// right size (pgBackRest records no size; names mean different LSNs
/// under different sizes). The default when no backup tells.
pub fn segment_size_mb(backups: &[BackupEntry]) -> u64 {
    for b in backups.iter().rev() {
        let (Some(lsn), Some(name)) = (&b.lsn_start, &b.archive_start) else {
            continue;
        };
        let Some(lsn) = parse_lsn(lsn) else {
            continue;
        };
        let fits: Vec<u64> = (0..=10)
            .map(|p| 1u64 << p)
            .filter(|&mb| Segment::parse(name, mb).is_some_and(|s| s.number == lsn / (mb << 20)))
            .collect();
        // A start LSN below 1 GiB can fit more than one size: then the
        // default, when it is among them.
        match fits.as_slice() {
            [one] => return *one,
            many if many.contains(&DEFAULT_WAL_SIZE_MB) => return DEFAULT_WAL_SIZE_MB,
            _ => {}
        }
    }
    DEFAULT_WAL_SIZE_MB
}

/// `X/Y` in hex, as manifests write LSNs.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut json_out = false;
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json_out = true,
            _ => {
                return Err(Error::Usage(format!(
                    "{}; usage: {USAGE}",
                    arg.unexpected()
                )))
            }
        }
    }
    let repo = super::open_repo(settings)?;
    let text = report(&repo, json_out)?;
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the WAL report to stdout", e))
}

/// One timeline of one archive id.
pub struct Timeline {
    pub archive_id: String,
    pub id: u32,
    pub parent: Option<u32>,
    pub range: ranges::Range,
    pub partial: u64,
    /// Labels of the backups whose WAL (start to stop segment) lies in
    /// this timeline's range, as walden's wal-show attaches them.
    pub backups: Vec<String>,
}

pub fn timelines(repo: &Repo) -> Result<(Vec<Timeline>, u64)> {
    let info = repo.archive_info()?;
    let backups = match repo.backup_info() {
        Ok(b) => b.backups,
        Err(e) => {
            log::warn!("{e}: WAL shown without backups");
            Vec::new()
        }
    };
    let wal_size_mb = segment_size_mb(&backups);
    let mut out = Vec::new();
    // Oldest history id first: the order the archive grew in.
    for (id, version, _) in info.history.iter().rev() {
        let archive_id = format!("{version}-{id}");
        let prefix = repo.archive_key(&format!("{archive_id}/"));
        let mut scan = ranges::Scan::default();
        let mut partial: std::collections::BTreeMap<u32, u64> = Default::default();
        repo.storage.list(&prefix, true, &mut |entry| {
            if let Entry::Object(o) = entry {
                let base = o.key.rsplit('/').next().unwrap_or(&o.key);
                let name = base.get(..24).unwrap_or("");
                let rest = base.get(24..).unwrap_or("");
                if let Some(s) = Segment::parse(name, wal_size_mb) {
                    if rest.starts_with(".partial-") {
                        *partial.entry(s.timeline).or_default() += 1;
                    } else if rest.starts_with('-') {
                        scan.add_name(name, wal_size_mb);
                    }
                } else if base.ends_with(".history") {
                    scan.add_name(base, wal_size_mb);
                }
            }
            Ok(())
        })?;
        for (tli, range) in scan.timelines {
            let parent = match scan.histories.get(&tli) {
                Some(base) => read_history(repo, &archive_id, base, info.cipher_pass.as_deref())?
                    .last()
                    .map(|r| r.parent),
                None => None,
            };
            let attached = backups
                .iter()
                .filter(|b| b.db_id.is_none_or(|d| d == *id))
                .filter(|b| {
                    let seg = |n: &Option<String>| {
                        n.as_deref().and_then(|n| Segment::parse(n, wal_size_mb))
                    };
                    match (seg(&b.archive_start), seg(&b.archive_stop)) {
                        (Some(a), Some(z)) => {
                            a.timeline == tli && a.number >= range.first && z.number <= range.last
                        }
                        _ => false,
                    }
                })
                .map(|b| b.label.clone())
                .collect();
            out.push(Timeline {
                archive_id: archive_id.clone(),
                id: tli,
                parent,
                range,
                partial: partial.get(&tli).copied().unwrap_or(0),
                backups: attached,
            });
        }
    }
    Ok((out, wal_size_mb))
}

fn read_history(
    repo: &Repo,
    archive_id: &str,
    base: &str,
    pass: Option<&str>,
) -> Result<Vec<history::Record>> {
    let key = repo.archive_key(&format!("{archive_id}/{base}"));
    let mut text = String::new();
    codec::open(repo.storage.get(&key, 0)?, pass, Compress::None)
        .and_then(|r| r.take(16 << 20).read_to_string(&mut text))
        .map_err(|e| Error::Other(format!("reading pgBackRest {key} failed: {e}")))?;
    Ok(history::parse(&text))
}

pub fn report(repo: &Repo, json_out: bool) -> Result<String> {
    let (tls, wal_size_mb) = timelines(repo)?;
    let seg = |tli: u32, n: u64| {
        Segment {
            timeline: tli,
            number: n,
        }
        .name(wal_size_mb)
    };
    if json_out {
        let items: Vec<Value> = tls
            .iter()
            .map(|t| {
                let gaps: Vec<Value> = t
                    .range
                    .gaps()
                    .map(|(a, b)| json!({"start": seg(t.id, a), "end": seg(t.id, b)}))
                    .collect();
                json!({
                    "archive_id": t.archive_id,
                    "timeline": t.id,
                    "parent": t.parent,
                    "start_segment": seg(t.id, t.range.first),
                    "end_segment": seg(t.id, t.range.last),
                    "segments": t.range.count,
                    "missing_segments": t.range.size() - t.range.count,
                    "partial_segments": t.partial,
                    "gaps": gaps,
                    "segment_size_mb": wal_size_mb,
                    "backups": t.backups,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&items).unwrap_or_default() + "\n");
    }
    let rows: Vec<Vec<String>> = tls
        .iter()
        .map(|t| {
            let gaps: Vec<String> = t
                .range
                .gaps()
                .map(|(a, b)| format!("{}-{}", seg(t.id, a), seg(t.id, b)))
                .collect();
            vec![
                t.archive_id.clone(),
                t.id.to_string(),
                t.parent.map_or("-".into(), |p| p.to_string()),
                seg(t.id, t.range.first),
                seg(t.id, t.range.last),
                t.range.count.to_string(),
                (t.range.size() - t.range.count).to_string(),
                if gaps.is_empty() {
                    "OK".into()
                } else {
                    gaps.join(",")
                },
                t.backups.len().to_string(),
            ]
        })
        .collect();
    Ok(table::render(
        &[
            "archive id",
            "tli",
            "parent tli",
            "start segment",
            "end segment",
            "segments",
            "missing",
            "gaps",
            "backups",
        ],
        &[false, true, true, false, false, true, true, false, true],
        &rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(lsn: &str, start: &str) -> BackupEntry {
        BackupEntry {
            label: "20261124-053849F".into(),
            kind: "full".into(),
            prior: None,
            references: Vec::new(),
            archive_start: Some(start.into()),
            archive_stop: Some(start.into()),
            lsn_start: Some(lsn.into()),
            lsn_stop: None,
            timestamp_start: 0,
            timestamp_stop: 0,
            size: 0,
            size_delta: 0,
            repo_size: 0,
            repo_size_delta: 0,
            block_incremental: false,
            error: false,
            version: "2.45".into(),
            db_id: Some(1),
        }
    }

    /// The size under which a backup's start LSN lies in the segment it
    /// names; 16 MiB when nothing tells.
    #[test]
    fn segment_size_from_start_lsn_and_segment() {
        assert_eq!(segment_size_mb(&[]), 16);
        assert_eq!(
            segment_size_mb(&[backup("0/3000028", "000000010000000000000003")]),
            16
        );
        // 0/C000028 is segment 3 of 64 MiB, segment 12 (0C) of 16 MiB.
        assert_eq!(
            segment_size_mb(&[backup("0/C000028", "000000010000000000000003")]),
            64
        );
        // 1 MiB: 256 segments per 4 GiB, 2/3500000 is segment 0x35 of xlogid 2.
        assert_eq!(
            segment_size_mb(&[backup("2/3500000", "000000010000000200000035")]),
            1
        );
    }
}
