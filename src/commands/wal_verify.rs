//! `walden wal-verify integrity|timeline... [--json]` (spec
//! walg-wal-admin §5): is every segment from the oldest backup's start to
//! the cluster's current segment in storage, and is the cluster on the
//! highest timeline there. The cluster's position comes from PostgreSQL;
//! storage is listed once and folded into ranges (memory does not grow
//! with segments), and the walk keeps only runs of one status.

use std::ffi::OsString;
use std::io::{self, Write};
use std::sync::Arc;

use serde_json::json;

use crate::backup::catalog;
use crate::backup::layout::parse_lsn;
use crate::commands::{codecs, open_storage, upload_concurrency};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::pg::{Client, ConnParams};
use crate::storage::Storage;
use crate::wal::history::{self, Record};
use crate::wal::name::Segment;
use crate::wal::ranges::{self, Scan};
use crate::wal::{segment_size_mb, table};

const USAGE: &str =
    "walden wal-verify integrity|timeline... [--json] [--timeline N --lsn LSN] [--backup-name NAME]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Integrity,
    Timeline,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Integrity => "integrity",
            Check::Timeline => "timeline",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    checks: Vec<Check>,
    /// `--timeline N --lsn LSN`: the position to verify from, instead of
    /// asking the cluster.
    position: Option<(u32, u64)>,
    /// `--backup-name`: verify from this backup's start, not the oldest.
    backup: Option<String>,
    json: bool,
    wal_size_mb: u64,
    /// `WALG_INTEGRITY_MAX_DELAYED_WALS` (0: no segment is "delayed").
    max_delayed: u64,
    /// `WALG_UPLOAD_CONCURRENCY`: how many may be uploading at once.
    uploading: u64,
}

impl Options {
    fn parse(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
        use lexopt::prelude::*;
        let mut checks = Vec::new();
        let mut json = false;
        let mut timeline: Option<u32> = None;
        let mut lsn: Option<u64> = None;
        let mut backup = None;
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("json") => json = true,
                Long("timeline") => {
                    let v = parser.value()?;
                    timeline = Some(v.to_str().and_then(|t| t.parse().ok()).ok_or_else(|| {
                        Error::Usage(format!(
                            "--timeline takes a timeline number, not '{}'; usage: {USAGE}",
                            v.to_string_lossy()
                        ))
                    })?);
                }
                Long("lsn") => {
                    let v = parser.value()?;
                    lsn = Some(v.to_str().and_then(parse_lsn).ok_or_else(|| {
                        Error::Usage(format!(
                            "--lsn takes an LSN such as 0/3000060, not '{}'; usage: {USAGE}",
                            v.to_string_lossy()
                        ))
                    })?);
                }
                Long("backup-name") => {
                    let v = parser.value()?;
                    backup = Some(v.into_string().map_err(|_| {
                        Error::Usage(format!("the backup name must be UTF-8; usage: {USAGE}"))
                    })?);
                }
                Value(v) => {
                    let check = match v.to_str() {
                        Some("integrity") => Check::Integrity,
                        Some("timeline") => Check::Timeline,
                        _ => {
                            return Err(Error::Usage(format!(
                                "invalid check specified: {}; usage: {USAGE}",
                                v.to_string_lossy()
                            )))
                        }
                    };
                    if !checks.contains(&check) {
                        checks.push(check);
                    }
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "{}; usage: {USAGE}",
                        arg.unexpected()
                    )))
                }
            }
        }
        if checks.is_empty() {
            return Err(Error::Usage(format!(
                "at least one of the following checks should be specified: integrity, timeline; usage: {USAGE}"
            )));
        }
        let max_delayed = match settings.get("WALG_INTEGRITY_MAX_DELAYED_WALS") {
            None => 0,
            Some(v) => v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                name: "WALG_INTEGRITY_MAX_DELAYED_WALS".into(),
                value: v.clone(),
                problem: "expected a whole number of segments, 0 or more".into(),
            })?,
        };
        let position = match (timeline, lsn) {
            (Some(t), Some(l)) => Some((t, l)),
            (None, None) => None,
            _ => {
                return Err(Error::Usage(format!(
                    "--timeline and --lsn go together; usage: {USAGE}"
                )))
            }
        };
        Ok(Options {
            checks,
            position,
            backup,
            json,
            wal_size_mb: segment_size_mb(settings)?,
            max_delayed,
            uploading: upload_concurrency(settings)? as u64,
        })
    }
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = Options::parse(settings, args)?;
    let (current, timeline) = match opts.position {
        Some((timeline, lsn)) => (
            Segment {
                timeline,
                number: lsn.saturating_sub(1) / (opts.wal_size_mb << 20),
            },
            timeline,
        ),
        None => cluster_position(settings, opts.wal_size_mb)?,
    };
    log::info!("Current WAL segment: {}", current.name(opts.wal_size_mb));
    let storage = open_storage(settings)?;
    let scan = ranges::scan(&storage, opts.wal_size_mb)?;
    let mut results = Vec::new();
    for check in &opts.checks {
        results.push(match check {
            Check::Integrity => {
                let codecs = codecs(settings)?;
                let records = match scan.histories.get(&timeline) {
                    Some(base) => history::read(&storage, &codecs, base)?,
                    None => Vec::new(),
                };
                let stop = match &opts.backup {
                    Some(name) => Some(named_backup(
                        &storage,
                        name,
                        &records,
                        timeline,
                        opts.wal_size_mb,
                    )?),
                    None => earliest_backup(&storage, &records, timeline, opts.wal_size_mb),
                };
                let groups = integrity(&scan, &records, current, stop, &opts);
                let status = integrity_status(&groups, stop.is_none());
                Outcome::Integrity(status, groups)
            }
            Check::Timeline => Outcome::Timeline(timeline, scan.highest_timeline()),
        });
    }
    let text = if opts.json {
        render_json(&results, opts.wal_size_mb)
    } else {
        render_text(&results, opts.wal_size_mb)
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the verification report to stdout", e))
}

/// The cluster's current segment (the one holding LSN − 1) and timeline.
fn cluster_position(settings: &Settings, wal_size_mb: u64) -> Result<(Segment, u32)> {
    let mut pg = Client::connect(&ConnParams::from_settings(settings)?)?;
    let rows = pg.query(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
         ELSE pg_current_wal_lsn() END)::text, \
         (SELECT timeline_id FROM pg_control_checkpoint()), \
         (SELECT bytes_per_wal_segment FROM pg_control_init())",
    )?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Other("the server returned no row for its WAL position".into()))?;
    let lsn = row.get_str(0)?.and_then(parse_lsn).ok_or_else(|| {
        Error::Other(
            "the server reports no WAL position (a standby that has received no WAL yet); \
                 run wal-verify against the primary"
                .into(),
        )
    })?;
    let timeline = row.get_i64(1)?.unwrap_or(0) as u32;
    let seg_bytes = row.get_i64(2)?.unwrap_or(0) as u64;
    if seg_bytes != wal_size_mb << 20 {
        return Err(Error::Other(
            "bytes_per_wal_segment of the server does not match expected value, \
             you may need to set WALG_PG_WAL_SIZE"
                .into(),
        ));
    }
    let number = lsn.saturating_sub(1) / seg_bytes;
    Ok((Segment { timeline, number }, timeline))
}

/// The switch segment of the record whose parent is `tli`.
fn ended_at(records: &[Record], tli: u32, seg_bytes: u64) -> Option<u64> {
    records
        .iter()
        .find(|r| r.parent == tli)
        .map(|r| r.switch_lsn / seg_bytes)
}

/// Whether a backup starting at `start` cannot be restored along the
/// current timeline's history (WAL-G's "incorrect" backups; only judged
/// when there is a history).
fn off_history(records: &[Record], start: Segment, current: u32, seg_bytes: u64) -> bool {
    if records.is_empty() {
        return false;
    }
    let t = start.timeline;
    let in_history = t == current || records.iter().any(|r| r.parent == t);
    let before_own = t > 1 && ended_at(records, t - 1, seg_bytes).is_some_and(|s| start.number < s);
    let after_end = ended_at(records, t, seg_bytes).is_some_and(|s| start.number >= s);
    !in_history || before_own || after_end
}

/// `--backup-name`: the start segment of that backup, which must exist
/// and lie on the current history (permanent ones allowed).
fn named_backup(
    storage: &Arc<dyn Storage>,
    name: &str,
    records: &[Record],
    current: u32,
    wal_size_mb: u64,
) -> Result<u64> {
    let entry = catalog::find(storage, name, USAGE)?;
    let start = Segment::parse(&entry.wal_file_name, wal_size_mb).ok_or_else(|| {
        Error::Other(format!(
            "backup {name}: its name holds no WAL segment name to verify from"
        ))
    })?;
    if off_history(records, start, current, wal_size_mb << 20) {
        return Err(Error::Other(format!(
            "backup {name} is not on the history of timeline {current}: WAL from it cannot reach the cluster's position"
        )));
    }
    Ok(start.number)
}

/// The smallest start segment among the backups a restore on this
/// timeline can use (WAL-G's `FindEarliestBackup`): not permanent, and on
/// the current history. `None` when there is none ("no backups" mode).
fn earliest_backup(
    storage: &Arc<dyn Storage>,
    records: &[Record],
    current: u32,
    wal_size_mb: u64,
) -> Option<u64> {
    let seg_bytes = wal_size_mb << 20;
    let found = (|| -> Result<Option<u64>> {
        let mut best: Option<u64> = None;
        for b in catalog::list(storage)? {
            let meta = catalog::read_metadata(storage, &b.name)?;
            if meta.is_permanent {
                continue;
            }
            let Some(start) = Segment::parse(&b.wal_file_name, wal_size_mb) else {
                continue;
            };
            if off_history(records, start, current, seg_bytes) {
                continue;
            }
            best = Some(best.map_or(start.number, |n| n.min(start.number)));
        }
        Ok(best)
    })();
    match found {
        Ok(Some(n)) => Some(n),
        Ok(None) => {
            log::warn!(
                "Failed to detect earliest backup WAL segment no: no backup to verify against, will scan until the {} segment.",
                Segment { timeline: 1, number: 1 }.name(wal_size_mb)
            );
            None
        }
        Err(e) => {
            log::warn!(
                "Failed to detect earliest backup WAL segment no: {e}, will scan until the {} segment.",
                Segment { timeline: 1, number: 1 }.name(wal_size_mb)
            );
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegStatus {
    Found,
    MissingDelayed,
    MissingUploading,
    MissingLost,
}

impl SegStatus {
    fn name(self) -> &'static str {
        match self {
            SegStatus::Found => "FOUND",
            SegStatus::MissingDelayed => "MISSING_DELAYED",
            SegStatus::MissingUploading => "MISSING_UPLOADING",
            SegStatus::MissingLost => "MISSING_LOST",
        }
    }
}

/// A run of consecutive segments of one timeline and one status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    timeline: u32,
    first: u64,
    last: u64,
    status: SegStatus,
}

impl Group {
    fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Walk back from the segment before `current` to `stop` (1 without a
/// backup), following the timeline switches of `records`, and classify
/// each segment as WAL-G's three passes do. Groups come oldest first.
fn integrity(
    scan: &Scan,
    records: &[Record],
    current: Segment,
    stop: Option<u64>,
    opts: &Options,
) -> Vec<Group> {
    let seg_bytes = opts.wal_size_mb << 20;
    let stop = stop.unwrap_or(1).max(1);
    let parent_at = |n: u64| {
        records
            .iter()
            .rev()
            .find(|r| r.switch_lsn / seg_bytes == n)
            .map(|r| r.parent)
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut add = |s: Segment, status: SegStatus| {
        if let Some(g) = groups.last_mut() {
            if g.timeline == s.timeline && g.status == status && g.first == s.number + 1 {
                g.first = s.number;
                return;
            }
        }
        groups.push(Group {
            timeline: s.timeline,
            first: s.number,
            last: s.number,
            status,
        });
    };
    let mut at = current;
    let mut next = || -> Option<Segment> {
        if at.number <= stop {
            return None;
        }
        let mut tli = at.timeline;
        if let Some(parent) = parent_at(at.number) {
            let same = Segment {
                timeline: at.timeline,
                number: at.number - 1,
            };
            if scan.contains(same) {
                log::warn!(
                    "timeline switch at segment {} is not from our history. Skipping it",
                    at.name(opts.wal_size_mb)
                );
            } else {
                tli = parent;
            }
        }
        at = Segment {
            timeline: tli,
            number: at.number - 1,
        };
        Some(at)
    };
    // Pass a: the newest segments may not have been handed to
    // archive_command yet; it ends at the first one found.
    let mut steps = 0;
    while steps < opts.max_delayed {
        let Some(s) = next() else { break };
        steps += 1;
        if scan.contains(s) {
            add(s, SegStatus::Found);
            break;
        }
        add(s, SegStatus::MissingDelayed);
    }
    // Pass b: as many as may be uploading at once.
    for _ in 0..opts.uploading {
        let Some(s) = next() else { break };
        let status = if scan.contains(s) {
            SegStatus::Found
        } else {
            SegStatus::MissingUploading
        };
        add(s, status);
    }
    // Pass c: everything else down to the stop segment.
    while let Some(s) = next() {
        let status = if scan.contains(s) {
            SegStatus::Found
        } else {
            SegStatus::MissingLost
        };
        add(s, status);
    }
    groups.reverse();
    groups
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckStatus {
    Ok,
    Warning,
    Failure,
}

impl CheckStatus {
    fn name(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Failure => "FAILURE",
        }
    }
}

/// FAILURE at a lost segment, except that without a backup the lost ones
/// older than the first found are only a WARNING (nothing can restore
/// from them anyway); WARNING for delayed or uploading ones.
fn integrity_status(groups: &[Group], no_backups: bool) -> CheckStatus {
    let mut seen_found = false;
    let mut status = CheckStatus::Ok;
    for g in groups {
        match g.status {
            SegStatus::Found => seen_found = true,
            SegStatus::MissingLost if no_backups && !seen_found => status = CheckStatus::Warning,
            SegStatus::MissingLost => return CheckStatus::Failure,
            SegStatus::MissingDelayed | SegStatus::MissingUploading => {
                status = CheckStatus::Warning
            }
        }
    }
    status
}

fn timeline_status(current: u32, highest: u32) -> CheckStatus {
    if highest == 0 {
        CheckStatus::Warning
    } else if current == highest {
        CheckStatus::Ok
    } else {
        CheckStatus::Failure
    }
}

enum Outcome {
    Integrity(CheckStatus, Vec<Group>),
    /// Current cluster timeline, highest in storage.
    Timeline(u32, u32),
}

fn seg_name(tli: u32, n: u64, wal_size_mb: u64) -> String {
    Segment {
        timeline: tli,
        number: n,
    }
    .name(wal_size_mb)
}

fn render_text(results: &[Outcome], wal_size_mb: u64) -> String {
    let mut out = String::new();
    for r in results {
        let (check, status, details) = match r {
            Outcome::Integrity(status, groups) => {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.timeline.to_string(),
                            seg_name(g.timeline, g.first, wal_size_mb),
                            seg_name(g.timeline, g.last, wal_size_mb),
                            g.count().to_string(),
                            g.status.name().to_string(),
                        ]
                    })
                    .collect();
                let t = table::render(
                    &["TLI", "Start", "End", "Segments count", "Status"],
                    &[true, false, false, true, true],
                    &rows,
                );
                (Check::Integrity, *status, t)
            }
            Outcome::Timeline(current, highest) => (
                Check::Timeline,
                timeline_status(*current, *highest),
                format!(
                    "Highest timeline found in storage: {highest}\nCurrent cluster timeline: {current}\n"
                ),
            ),
        };
        out.push_str(&format!(
            "[wal-verify] {} check status: {}\n[wal-verify] {} check details:\n{details}",
            check.name(),
            status.name(),
            check.name()
        ));
    }
    out
}

/// Compact, keys sorted as Go marshals a map: integrity before timeline.
fn render_json(results: &[Outcome], wal_size_mb: u64) -> String {
    let mut parts: Vec<(&str, String)> = results
        .iter()
        .map(|r| match r {
            Outcome::Integrity(status, groups) => {
                let details = if groups.is_empty() {
                    "null".to_string()
                } else {
                    let items: Vec<String> = groups
                        .iter()
                        .map(|g| {
                            format!(
                                "{{\"timeline_id\":{},\"start_segment\":{},\"end_segment\":{},\"segments_count\":{},\"status\":{}}}",
                                g.timeline,
                                json!(seg_name(g.timeline, g.first, wal_size_mb)),
                                json!(seg_name(g.timeline, g.last, wal_size_mb)),
                                g.count(),
                                json!(g.status.name())
                            )
                        })
                        .collect();
                    format!("[{}]", items.join(","))
                };
                (
                    "integrity",
                    format!("{{\"status\":{},\"details\":{details}}}", json!(status.name())),
                )
            }
            Outcome::Timeline(current, highest) => (
                "timeline",
                format!(
                    "{{\"status\":{},\"details\":{{\"current_timeline_id\":{current},\"highest_storage_timeline_id\":{highest}}}}}",
                    json!(timeline_status(*current, *highest).name())
                ),
            ),
        })
        .collect();
    parts.sort_by_key(|(k, _)| *k);
    let body: Vec<String> = parts
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_delayed: u64, uploading: u64) -> Options {
        Options {
            checks: vec![Check::Integrity],
            position: None,
            backup: None,
            json: false,
            wal_size_mb: 16,
            max_delayed,
            uploading,
        }
    }

    fn scan_of(names: &[&str]) -> Scan {
        let mut s = Scan::default();
        for n in names {
            s.add_name(n, 16);
        }
        s
    }

    fn seg(t: u32, n: u64) -> Segment {
        Segment {
            timeline: t,
            number: n,
        }
    }

    #[test]
    fn passes_classify_as_walg() {
        // Present: 2..=5 and 8; missing 6, 7, 9, 10; current is 11.
        let scan = scan_of(&[
            "000000010000000000000002.lz4",
            "000000010000000000000003.lz4",
            "000000010000000000000004.lz4",
            "000000010000000000000005.lz4",
            "000000010000000000000008.lz4",
        ]);
        let g = integrity(&scan, &[], seg(1, 11), Some(2), &opts(1, 2));
        let got: Vec<(u64, u64, SegStatus)> =
            g.iter().map(|g| (g.first, g.last, g.status)).collect();
        assert_eq!(
            got,
            vec![
                (2, 5, SegStatus::Found),
                (6, 7, SegStatus::MissingLost),
                (8, 8, SegStatus::Found),
                (9, 9, SegStatus::MissingUploading),
                (10, 10, SegStatus::MissingDelayed),
            ]
        );
        assert_eq!(integrity_status(&g, false), CheckStatus::Failure);
        // Without a backup, lost segments before the first found one warn.
        let g = integrity(&scan, &[], seg(1, 6), None, &opts(0, 1));
        assert_eq!(g[0].status, SegStatus::MissingLost);
        assert_eq!(integrity_status(&g, true), CheckStatus::Warning);
        let g = integrity(&scan, &[], seg(1, 6), Some(2), &opts(0, 16));
        assert_eq!(integrity_status(&g, false), CheckStatus::Ok);
        assert_eq!(
            render_json(&[Outcome::Integrity(CheckStatus::Ok, g)], 16),
            r#"{"integrity":{"status":"OK","details":[{"timeline_id":1,"start_segment":"000000010000000000000002","end_segment":"000000010000000000000005","segments_count":4,"status":"FOUND"}]}}"#
        );
    }

    #[test]
    fn walk_follows_the_timeline_switch() {
        // Timeline 2 starts in segment 4 (switch LSN 0/4000100).
        let scan = scan_of(&[
            "000000010000000000000002.lz4",
            "000000010000000000000003.lz4",
            "000000010000000000000004.partial.lz4",
            "00000002.history.lz4",
            "000000020000000000000004.lz4",
            "000000020000000000000005.lz4",
        ]);
        let records = [Record {
            parent: 1,
            switch_lsn: 0x4000100,
        }];
        let g = integrity(&scan, &records, seg(2, 6), Some(2), &opts(0, 16));
        let got: Vec<(u32, u64, u64, SegStatus)> = g
            .iter()
            .map(|g| (g.timeline, g.first, g.last, g.status))
            .collect();
        assert_eq!(
            got,
            vec![(1, 2, 3, SegStatus::Found), (2, 4, 5, SegStatus::Found)]
        );
        assert_eq!(timeline_status(2, scan.highest_timeline()), CheckStatus::Ok);
        assert_eq!(timeline_status(1, 2), CheckStatus::Failure);
        assert_eq!(timeline_status(1, 0), CheckStatus::Warning);
        assert_eq!(
            render_json(&[Outcome::Timeline(2, 2)], 16),
            r#"{"timeline":{"status":"OK","details":{"current_timeline_id":2,"highest_storage_timeline_id":2}}}"#
        );
    }
}
