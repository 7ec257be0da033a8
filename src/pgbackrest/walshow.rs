//! `walden pgbackrest wal-show [--json]`: the WAL archive of the stanza
//! (spec §9.3): per archive id (`<pg version>-<history id>`), per
//! timeline, the first and last segment, how many are stored, the holes
//! between them and the parent timeline from `<tli>.history`. One listing
//! per archive id; memory grows with timelines and holes, not segments.

use std::ffi::OsString;
use std::io::{self, Read, Write};

use serde_json::{json, Value};

use super::codec::{self, Compress};
use super::repo::Repo;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Entry;
use crate::wal::name::Segment;
use crate::wal::{history, ranges, table};

const USAGE: &str = "walden pgbackrest wal-show [--json]";
/// pgBackRest archives 16 MiB segments unless the cluster says otherwise;
/// the segment numbering below only needs it for names.
const WAL_SIZE_MB: u64 = 16;

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
}

pub fn timelines(repo: &Repo) -> Result<Vec<Timeline>> {
    let info = repo.archive_info()?;
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
                if let Some(s) = Segment::parse(name, WAL_SIZE_MB) {
                    if rest.starts_with(".partial-") {
                        *partial.entry(s.timeline).or_default() += 1;
                    } else if rest.starts_with('-') {
                        scan.add_name(name, WAL_SIZE_MB);
                    }
                } else if base.ends_with(".history") {
                    scan.add_name(base, WAL_SIZE_MB);
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
            out.push(Timeline {
                archive_id: archive_id.clone(),
                id: tli,
                parent,
                range,
                partial: partial.get(&tli).copied().unwrap_or(0),
            });
        }
    }
    Ok(out)
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

fn seg(tli: u32, n: u64) -> String {
    Segment {
        timeline: tli,
        number: n,
    }
    .name(WAL_SIZE_MB)
}

pub fn report(repo: &Repo, json_out: bool) -> Result<String> {
    let tls = timelines(repo)?;
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
        ],
        &[false, true, true, false, false, true, true, false],
        &rows,
    ))
}
