//! `walden wal-show [--without-backups] [--detailed-json]`: the timelines
//! of `wal_005/`, their segment ranges and holes, and the backups on each,
//! in WAL-G's table or JSON (spec walg-wal-admin §4). One listing of
//! `wal_005/`, one read per `.history` file, one `metadata.json` per
//! backup.

use std::ffi::OsString;
use std::io::{self, Write};

use serde_json::{json, Value};

use crate::backup::catalog::{self, lsn_text};
use crate::backup::list::{json_object, ordered_json, Row, KEY_ORDER};
use crate::commands::{codecs, open_storage};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::wal::name::Segment;
use crate::wal::{history, ranges, segment_size_mb, table};

const USAGE: &str = "walden wal-show [--without-backups] [--detailed-json]";

#[derive(Debug, Clone, Copy, Default)]
struct Options {
    without_backups: bool,
    detailed_json: bool,
    wal_size_mb: u64,
}

impl Options {
    fn parse(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
        use lexopt::prelude::*;
        let mut o = Options {
            wal_size_mb: segment_size_mb(settings)?,
            ..Options::default()
        };
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("without-backups") => o.without_backups = true,
                Long("detailed-json") => o.detailed_json = true,
                _ => {
                    return Err(Error::Usage(format!(
                        "{}; usage: {USAGE}",
                        arg.unexpected()
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// One timeline of the report.
struct Timeline {
    id: u32,
    parent: u32,
    switch_lsn: u64,
    range: ranges::Range,
    backups: Vec<Row>,
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = Options::parse(settings, args)?;
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    let scan = ranges::scan(&storage, opts.wal_size_mb)?;
    let mut timelines = Vec::with_capacity(scan.timelines.len());
    for (&id, range) in &scan.timelines {
        // The last record of a timeline's history is the switch that
        // started it; no history file (timeline 1) gives 0 and 0/0.
        let last = match scan.histories.get(&id) {
            Some(base) => history::read(&storage, &codecs, base)?.pop(),
            None => None,
        };
        timelines.push(Timeline {
            id,
            parent: last.map_or(0, |r| r.parent),
            switch_lsn: last.map_or(0, |r| r.switch_lsn),
            range: range.clone(),
            backups: Vec::new(),
        });
    }
    if !opts.without_backups {
        attach_backups(&storage, &mut timelines, opts.wal_size_mb)?;
    }
    let text = if opts.detailed_json {
        render_json(&timelines, !opts.without_backups, opts.wal_size_mb)
    } else {
        render_table(&timelines, !opts.without_backups, opts.wal_size_mb)
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the WAL report to stdout", e))
}

/// A backup belongs to the timeline of its name when its start and finish
/// segments lie in the timeline's range (WAL-G's rule).
fn attach_backups(
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    timelines: &mut [Timeline],
    wal_size_mb: u64,
) -> Result<()> {
    let backups = catalog::list(storage)?;
    if backups.is_empty() {
        log::info!("No backups found in storage.");
        return Ok(());
    }
    let seg_bytes = wal_size_mb << 20;
    for entry in backups {
        let meta = catalog::read_metadata(storage, &entry.name)?;
        let Some(tli) = u32::from_str_radix(&entry.wal_file_name[..8], 16).ok() else {
            continue;
        };
        let start = meta.start_lsn / seg_bytes;
        let finish = meta.finish_lsn / seg_bytes;
        if let Some(t) = timelines
            .iter_mut()
            .find(|t| t.id == tli && start >= t.range.first && finish <= t.range.last)
        {
            t.backups.push(Row {
                entry,
                meta: Some(meta),
            });
        }
    }
    Ok(())
}

fn name(timeline: u32, number: u64, wal_size_mb: u64) -> String {
    Segment { timeline, number }.name(wal_size_mb)
}

fn status(t: &Timeline) -> &'static str {
    if t.range.gaps().next().is_none() {
        "OK"
    } else {
        "LOST_SEGMENTS"
    }
}

fn render_table(timelines: &[Timeline], with_backups: bool, wal_size_mb: u64) -> String {
    let mut header = vec![
        "TLI",
        "Parent TLI",
        "Switchpoint LSN",
        "Start segment",
        "End segment",
        "Segment range",
        "Segments count",
        "Status",
    ];
    let mut right = vec![true, true, true, false, false, true, true, false];
    if with_backups {
        header.push("Backups count");
        right.push(true);
    }
    let rows: Vec<Vec<String>> = timelines
        .iter()
        .map(|t| {
            let mut r = vec![
                t.id.to_string(),
                t.parent.to_string(),
                lsn_text(t.switch_lsn),
                name(t.id, t.range.first, wal_size_mb),
                name(t.id, t.range.last, wal_size_mb),
                t.range.size().to_string(),
                t.range.count.to_string(),
                status(t).to_string(),
            ];
            if with_backups {
                r.push(t.backups.len().to_string());
            }
            r
        })
        .collect();
    table::render(&header, &right, &rows)
}

/// WAL-G's `TimelineInfo` marshalled compactly, keys in its declaration
/// order; missing segments newest first.
fn render_json(timelines: &[Timeline], with_backups: bool, wal_size_mb: u64) -> String {
    let items: Vec<String> = timelines
        .iter()
        .map(|t| {
            let missing: Vec<Value> = t
                .range
                .gaps()
                .rev()
                .flat_map(|(s, e)| (s..=e).rev())
                .map(|n| json!(name(t.id, n, wal_size_mb)))
                .collect();
            let mut parts = vec![
                format!("\"id\":{}", t.id),
                format!("\"parent_id\":{}", t.parent),
                format!("\"switch_point_lsn\":{}", t.switch_lsn),
                format!(
                    "\"start_segment\":{}",
                    json!(name(t.id, t.range.first, wal_size_mb))
                ),
                format!(
                    "\"end_segment\":{}",
                    json!(name(t.id, t.range.last, wal_size_mb))
                ),
                format!("\"segments_count\":{}", t.range.count),
                format!("\"missing_segments\":{}", Value::Array(missing)),
            ];
            if with_backups && !t.backups.is_empty() {
                let list: Vec<String> = t
                    .backups
                    .iter()
                    .map(|b| ordered_json(&json_object(b), KEY_ORDER, false, 0))
                    .collect();
                parts.push(format!("\"backups\":[{}]", list.join(",")));
            }
            parts.push(format!("\"segment_range_size\":{}", t.range.size()));
            parts.push(format!("\"status\":{}", json!(status(t))));
            format!("{{{}}}", parts.join(","))
        })
        .collect();
    format!("[{}]", items.join(","))
}
