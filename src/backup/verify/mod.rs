//! `walden backup-verify NAME|LATEST|--all [--json]`: can this backup be
//! restored? Every object is downloaded, decrypted, decompressed and
//! parsed as backup-fetch would, with nothing written to disk, and the
//! backup is held against what it claims:
//!
//! * the sentinel and `metadata.json` agree (start and finish LSN), the
//!   name matches the start LSN, and the sizes in the sentinel are those of
//!   the tars found;
//! * every tar partition named in `files_metadata.json` exists, every tar
//!   reads to its end marker, every member to its declared size;
//! * every file in `files_metadata.json` (not skipped) is in a tar;
//! * `pg_control` is there with a valid CRC, `backup_label` is there and
//!   names the sentinel's start LSN;
//! * where `pg_control` says the cluster has data checksums, every page of
//!   every relation file (pages newer than the backup's start excepted, as
//!   WAL replay rewrites them);
//! * the WAL from the backup's start segment to its finish segment is in
//!   `wal_005/`;
//! * a delta backup's chain of bases exists and verifies (their objects
//!   are read too: a delta restores only if they do), and its increments (`wi1`)
//!   decode: header consistent with the member's size, blocks inside the
//!   file's recorded size, pages passing the same page check as a full
//!   backup's files.
//!
//! Exit 0 only when everything holds; otherwise every problem is listed,
//! each with the object it concerns (text, or `--json`).

mod control;
mod tar_read;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::catalog;
use super::layout::{self, TarKind};
use super::pagecheck::Rules;
use crate::codec::Codecs;
use crate::commands::{codecs, open_storage};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::{Entry, Storage};
use crate::wal::ranges::{self, Scan};
use crate::wal::Segment;
use tar_read::{Judge, TarSeen};

const USAGE: &str = "walden backup-verify NAME|LATEST|--all [--json]";

/// Missing files listed per tar before the rest is only counted.
const LIST_AT_MOST: usize = 20;

/// The longest delta chain followed (a loop in damaged sentinels must
/// not hang the check).
const MAX_CHAIN: usize = 10_000;

struct Options {
    which: Which,
    json: bool,
    concurrency: usize,
    wal_size_mb: u64,
}

enum Which {
    Name(String),
    Latest,
    All,
}

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let usage = |what: String| Error::Usage(format!("{what}; usage: {USAGE}"));
    let mut parser = lexopt::Parser::from_args(args);
    let mut which = None;
    let mut json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json = true,
            Long("all") if which.is_none() => which = Some(Which::All),
            Value(v) if which.is_none() => {
                let v = v
                    .into_string()
                    .map_err(|_| usage("the backup name must be UTF-8".into()))?;
                which = Some(if v == "LATEST" {
                    Which::Latest
                } else if layout::valid_name(&v) {
                    Which::Name(v)
                } else {
                    return Err(usage(format!(
                        "'{v}' is not a backup name (base_...) or LATEST"
                    )));
                });
            }
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }
    let which = which.ok_or_else(|| usage("give NAME, LATEST or --all".into()))?;
    Ok(Options {
        which,
        json,
        concurrency: settings
            .positive("WALG_DOWNLOAD_CONCURRENCY")?
            .min(super::unpack::MAX_DOWNLOAD_CONCURRENCY),
        wal_size_mb: crate::wal::segment_size_mb(settings)?,
    })
}

/// One thing wrong, and the object it is about.
struct Problem {
    object: String,
    what: String,
}

/// The verdict on one backup.
#[derive(Default)]
struct Report {
    name: String,
    problems: Vec<Problem>,
    /// How many of `problems` are about the backup's own objects (the
    /// rest come from its delta bases); `None` until they are added.
    own_problems: Option<usize>,
    notes: Vec<String>,
    tars: usize,
    files: u64,
    pages: u64,
    corrupt_pages: u64,
    increments: u64,
    wal_segments: u64,
    chain: Vec<String>,
}

impl Report {
    fn problem(&mut self, object: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            object: object.into(),
            what: what.into(),
        });
    }
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = options(settings, args)?;
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    let names: Vec<String> = match &opts.which {
        Which::Name(n) => vec![catalog::find(&storage, n, USAGE)?.name],
        Which::Latest => match catalog::latest(&storage)? {
            Some(b) => vec![b.name],
            None => return Err(catalog::no_backups(&storage)),
        },
        Which::All => {
            let all: Vec<String> = catalog::list(&storage)?
                .into_iter()
                .map(|b| b.name)
                .filter(|n| layout::valid_name(n))
                .collect();
            if all.is_empty() {
                return Err(catalog::no_backups(&storage));
            }
            all
        }
    };
    // One listing of wal_005/ serves every backup.
    let wal = ranges::scan(&storage, opts.wal_size_mb)?;
    // Reports by name: a base shared by several deltas (or also asked
    // for itself with --all) is read once.
    let mut done: HashMap<String, Report> = HashMap::new();
    let mut order = Vec::with_capacity(names.len());
    for name in names {
        let mut report = match done.remove(&name) {
            Some(r) => r,
            None => {
                log::info!("Verifying backup {name}");
                verify(&storage, &codecs, &opts, &wal, &name)
            }
        };
        // A delta restores only if its bases do: their objects are read
        // too, and their problems are this backup's. Their WAL is not
        // needed to restore the delta, so missing base WAL is not.
        report.own_problems = Some(report.problems.len());
        for base in report.chain.clone() {
            let b = done.entry(base.clone()).or_insert_with(|| {
                log::info!("Verifying backup {base} (a delta base of {name})");
                verify(&storage, &codecs, &opts, &wal, &base)
            });
            // Only the base's own: its bases are in this chain too.
            let own = b.own_problems.unwrap_or(b.problems.len());
            for p in &b.problems[..own] {
                if !p.object.starts_with(crate::wal::object::WAL_FOLDER) {
                    report.problem(
                        p.object.clone(),
                        format!("(delta base {base} of this backup) {}", p.what),
                    );
                }
            }
        }
        if !opts.json {
            print_text(&report)?;
        }
        order.push(name.clone());
        done.insert(name, report);
    }
    let reports: Vec<Report> = order.iter().filter_map(|n| done.remove(n)).collect();
    if opts.json {
        let list: Vec<Value> = reports.iter().map(report_json).collect();
        let text = serde_json::to_string_pretty(&Value::Array(list))
            .map_err(|e| Error::Other(format!("writing the JSON report: {e}")))?;
        write_out(&format!("{text}\n"))?;
    }
    let bad: Vec<&Report> = reports.iter().filter(|r| !r.problems.is_empty()).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let count: usize = bad.iter().map(|r| r.problems.len()).sum();
    Err(Error::Other(format!(
        "backup-verify found {count} problem(s) in {} of {} backup(s): {}; \
         a backup with problems may not restore: take a new one",
        bad.len(),
        reports.len(),
        bad.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn write_out(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the report to stdout", e))
}

fn print_text(r: &Report) -> Result<()> {
    let mut text = String::new();
    let increments = match r.increments {
        0 => String::new(),
        n => format!(" ({n} increment(s) decoded)"),
    };
    let what = format!(
        "{} tar(s), {} file(s){increments}, {} page(s) checked, {} WAL segment(s)",
        r.tars, r.files, r.pages, r.wal_segments
    );
    if r.problems.is_empty() {
        text.push_str(&format!("backup {}: OK ({what})\n", r.name));
    } else {
        text.push_str(&format!(
            "backup {}: {} problem(s) ({what})\n",
            r.name,
            r.problems.len()
        ));
        for p in &r.problems {
            text.push_str(&format!("  {}: {}\n", p.object, p.what));
        }
    }
    for n in &r.notes {
        text.push_str(&format!("  note: {n}\n"));
    }
    write_out(&text)
}

fn report_json(r: &Report) -> Value {
    json!({
        "backup_name": r.name,
        "ok": r.problems.is_empty(),
        "problems": r.problems.iter().map(|p| json!({"object": p.object, "problem": p.what})).collect::<Vec<_>>(),
        "tars": r.tars,
        "files": r.files,
        "pages_checked": r.pages,
        "corrupt_pages": r.corrupt_pages,
        "increments": r.increments,
        "wal_segments": r.wal_segments,
        "delta_chain": r.chain,
        "notes": r.notes,
    })
}

/// What files_metadata.json says about the members.
#[derive(Default)]
struct FilesMeta {
    /// Members that must be in a tar (not skipped).
    expected: Vec<String>,
    increments: HashSet<String>,
    /// tar base name → its members.
    sets: HashMap<String, Vec<String>>,
}

fn verify(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    opts: &Options,
    wal: &Scan,
    name: &str,
) -> Report {
    let mut r = Report {
        name: name.to_string(),
        ..Report::default()
    };
    let sentinel_key = layout::sentinel_key(name);
    let sentinel = match catalog::read_sentinel(storage, name) {
        Ok(s) => s,
        Err(e) => {
            r.problem(&sentinel_key, e.to_string());
            return r;
        }
    };
    let lsn = |k: &str| catalog::field(&sentinel, k).and_then(Value::as_u64);
    let (start, finish) = (lsn("LSN"), lsn("FinishLSN"));
    let (Some(start), Some(finish)) = (start, finish) else {
        r.problem(
            &sentinel_key,
            "has no LSN or FinishLSN: the sentinel is damaged",
        );
        return r;
    };
    if finish < start {
        r.problem(
            &sentinel_key,
            format!("FinishLSN {finish} is before LSN {start}"),
        );
    }
    let timeline = name
        .get(5..13)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .unwrap_or(0);
    let own = name.split("_D_").next().unwrap_or(name);
    if layout::backup_name(timeline, start, opts.wal_size_mb) != own {
        r.problem(
            &sentinel_key,
            format!(
                "the start LSN {} does not fall in the WAL segment the name {own} gives",
                catalog::lsn_text(start)
            ),
        );
    }
    check_metadata(storage, name, start, finish, &mut r);
    check_chain(storage, &sentinel, &mut r);

    let disabled = catalog::field(&sentinel, "FilesMetadataDisabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let files = if disabled {
        r.notes
            .push("no files_metadata.json (backup taken without files metadata): the file list is not checked".into());
        None
    } else {
        read_files_metadata(storage, name, &mut r)
    };
    let files_meta = files.unwrap_or_default();

    // The tars in storage.
    let prefix = layout::partitions_prefix(name);
    let mut objects: Vec<(TarKind, String, u64)> = Vec::new();
    let listed = storage.list(&prefix, false, &mut |e| {
        if let Entry::Object(o) = e {
            let base = o.key.rsplit('/').next().unwrap_or(&o.key).to_string();
            objects.push((layout::tar_kind(&base), o.key, o.size));
        }
        Ok(())
    });
    if let Err(e) = listed {
        r.problem(&prefix, format!("cannot be listed: {e}"));
        return r;
    }
    objects.sort();
    r.tars = objects.len();
    let present: HashSet<String> = objects
        .iter()
        .map(|(_, k, _)| k.rsplit('/').next().unwrap_or(k).to_string())
        .collect();
    let mut missing_tars: HashSet<String> = HashSet::new();
    let mut sets: Vec<&String> = files_meta.sets.keys().collect();
    sets.sort();
    for tar in sets {
        if !present.contains(tar) {
            let lost = files_meta.sets.get(tar).map_or(0, Vec::len);
            r.problem(
                format!("{prefix}{tar}"),
                format!("tar partition listed in files_metadata.json is missing ({lost} member(s) lost with it)"),
            );
            missing_tars.insert(tar.clone());
        }
    }

    // pg_control first: whether pages carry checksums decides the rest.
    let no_increments = HashSet::new();
    let mut pages_rules = None;
    let control_key = objects
        .iter()
        .find(|(k, _, _)| *k == TarKind::Control)
        .map(|(_, k, _)| k.clone());
    let mut content_total = 0u64;
    let mut found: HashSet<String> = HashSet::new();
    match &control_key {
        None => r.problem(
            &prefix,
            "has no pg_control tar: the backup cannot be restored",
        ),
        Some(key) => {
            let judge = Judge {
                pages: None,
                increments: &no_increments,
                keep: &["global/pg_control"],
            };
            let (seen, why) = tar_read::read(storage, codecs, key, &judge);
            if let Some(why) = why {
                r.problem(key, why);
            }
            match seen
                .kept
                .iter()
                .find(|(n, _)| n.trim_start_matches('/') == "global/pg_control")
            {
                None => r.problem(key, "holds no global/pg_control"),
                Some((_, bytes)) => match control::read(bytes) {
                    None => r.problem(key, "global/pg_control is damaged: its CRC does not match"),
                    Some(c) if c.data_checksums => {
                        pages_rules = Some(Rules {
                            skip_from_lsn: Some(start),
                            store_all: false,
                        })
                    }
                    Some(_) => r
                        .notes
                        .push("the cluster has no data checksums: pages are not checked".into()),
                },
            }
            content_total += seen.content;
            found.extend(seen.members);
        }
    }

    // backup_label: there, and naming the sentinel's start.
    match objects.iter().find(|(k, _, _)| *k == TarKind::Label) {
        None => r.problem(
            &prefix,
            "has no backup_label tar: the backup cannot be restored",
        ),
        Some((_, key, _)) => {
            let judge = Judge {
                pages: None,
                increments: &no_increments,
                keep: &["backup_label"],
            };
            let (seen, why) = tar_read::read(storage, codecs, key, &judge);
            if let Some(why) = why {
                r.problem(key, why);
            }
            match seen.kept.iter().find(|(n, _)| n == "backup_label") {
                None => r.problem(key, "holds no backup_label"),
                Some((_, text)) => {
                    let text = String::from_utf8_lossy(text);
                    let label_lsn = text
                        .lines()
                        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(layout::parse_lsn);
                    if label_lsn != Some(start) {
                        r.problem(
                            key,
                            format!(
                                "backup_label's START WAL LOCATION is not the sentinel's LSN {}",
                                catalog::lsn_text(start)
                            ),
                        );
                    }
                }
            }
            content_total += seen.content;
            found.extend(seen.members);
        }
    }

    // The data tars, WALG_DOWNLOAD_CONCURRENCY at a time.
    let data: Vec<&String> = objects
        .iter()
        .filter(|(k, _, _)| *k == TarKind::Data)
        .map(|(_, k, _)| k)
        .collect();
    let judge = Judge {
        pages: pages_rules,
        increments: &files_meta.increments,
        keep: &[],
    };
    let results: Mutex<Vec<(String, TarSeen, Option<String>)>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.clamp(1, data.len().max(1)) {
            s.spawn(|| {
                while let Some(key) = data.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (seen, why) = tar_read::read(storage, codecs, key, &judge);
                    log::debug!("read '{key}'");
                    let mut out = results.lock().unwrap_or_else(|p| p.into_inner());
                    out.push(((*key).clone(), seen, why));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut all_read = r.problems.is_empty();
    for (key, seen, why) in results {
        if let Some(why) = why {
            r.problem(&key, why);
            all_read = false;
        }
        r.pages += seen.pages;
        r.increments += seen.increments;
        for (member, c) in &seen.corrupt {
            r.corrupt_pages += c.count;
            let list: Vec<String> = c.blocks.iter().map(u32::to_string).collect();
            r.problem(
                &key,
                format!(
                    "member '{member}': {} page(s) fail PostgreSQL's page check, blocks [{}]",
                    c.count,
                    list.join(" ")
                ),
            );
        }
        content_total += seen.content;
        found.extend(seen.members);
    }
    r.files = found.len() as u64;

    // Every file files_metadata.json lists is in a tar.
    let tar_of: HashMap<&str, &str> = files_meta
        .sets
        .iter()
        .flat_map(|(tar, members)| members.iter().map(move |m| (m.as_str(), tar.as_str())))
        .collect();
    let mut absent: HashMap<String, Vec<&str>> = HashMap::new();
    for member in &files_meta.expected {
        if found.contains(member) {
            continue;
        }
        let tar = tar_of.get(member.as_str()).copied().unwrap_or("");
        if missing_tars.contains(tar) {
            continue; // counted with its tar
        }
        absent.entry(tar.to_string()).or_default().push(member);
    }
    let mut absent: Vec<(String, Vec<&str>)> = absent.into_iter().collect();
    absent.sort();
    for (tar, members) in absent {
        let object = if tar.is_empty() {
            layout::files_metadata_key(name)
        } else {
            format!("{prefix}{tar}")
        };
        for m in members.iter().take(LIST_AT_MOST) {
            r.problem(
                &object,
                format!("file '{m}' listed in files_metadata.json is not in the backup's tars"),
            );
        }
        if members.len() > LIST_AT_MOST {
            r.problem(
                &object,
                format!("… and {} more such file(s)", members.len() - LIST_AT_MOST),
            );
        }
    }

    // The sentinel's sizes, when every tar was read whole.
    if all_read {
        let stored: u64 = objects.iter().map(|(_, _, s)| s).sum();
        let claim = |k: &str| catalog::field(&sentinel, k).and_then(Value::as_u64);
        if let Some(c) = claim("CompressedSize") {
            if c != stored {
                r.problem(
                    &sentinel_key,
                    format!("CompressedSize is {c} but the tars in storage hold {stored} bytes"),
                );
            }
        }
        // Remote backups count the raw stream instead (spec §3.1).
        let local = files_meta.expected.iter().any(|m| m.starts_with('/'));
        if let (Some(u), true) = (claim("UncompressedSize"), local) {
            if u != content_total {
                r.problem(
                    &sentinel_key,
                    format!(
                        "UncompressedSize is {u} but the tars' members hold {content_total} bytes"
                    ),
                );
            }
        }
    }

    check_wal(wal, opts.wal_size_mb, timeline, start, finish, &mut r);
    r
}

fn check_metadata(storage: &Arc<dyn Storage>, name: &str, start: u64, finish: u64, r: &mut Report) {
    let key = layout::metadata_key(name);
    match catalog::read_metadata(storage, name) {
        Err(e) => r.problem(&key, e.to_string()),
        Ok(m) => {
            if m.start_lsn != start || m.finish_lsn != finish {
                r.problem(
                    &key,
                    format!(
                        "start_lsn/finish_lsn {}/{} disagree with the sentinel's LSN/FinishLSN {start}/{finish}",
                        m.start_lsn, m.finish_lsn
                    ),
                );
            }
        }
    }
}

/// A delta backup's bases, each with its sentinel, down to a full one.
fn check_chain(storage: &Arc<dyn Storage>, sentinel: &Map<String, Value>, r: &mut Report) {
    let mut next = catalog::delta_from(sentinel);
    while let Some(base) = next {
        if r.chain.len() >= MAX_CHAIN || r.chain.contains(&base) {
            r.problem(
                layout::sentinel_key(&base),
                "the delta chain loops: the sentinels are damaged",
            );
            return;
        }
        r.chain.push(base.clone());
        match catalog::read_sentinel(storage, &base) {
            Ok(s) => next = catalog::delta_from(&s),
            Err(e) => {
                r.problem(
                    layout::sentinel_key(&base),
                    format!("delta base of this backup: {e}"),
                );
                return;
            }
        }
    }
}

fn read_files_metadata(
    storage: &Arc<dyn Storage>,
    name: &str,
    r: &mut Report,
) -> Option<FilesMeta> {
    let key = layout::files_metadata_key(name);
    let parsed: std::result::Result<Value, String> = match storage.get(&key, 0) {
        Ok(reader) => serde_json::from_reader(BufReader::with_capacity(256 * 1024, reader))
            .map_err(|e| format!("is not valid JSON ({e})")),
        Err(e) if e.is_not_found() => {
            Err("is missing (the sentinel does not say the backup was taken without it)".into())
        }
        Err(e) => Err(format!("cannot be read: {e}")),
    };
    let v = match parsed {
        Ok(v) => v,
        Err(why) => {
            r.problem(&key, why);
            return None;
        }
    };
    let mut meta = FilesMeta::default();
    if let Some(files) = v.get("Files").and_then(Value::as_object) {
        for (member, desc) in files {
            let flag = |k: &str| desc.get(k).and_then(Value::as_bool).unwrap_or(false);
            if flag("IsIncremented") {
                meta.increments.insert(member.clone());
            }
            if !flag("IsSkipped") {
                meta.expected.push(member.clone());
            }
        }
    }
    if let Some(sets) = v.get("TarFileSets").and_then(Value::as_object) {
        for (tar, members) in sets {
            let list = members
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            meta.sets.insert(tar.clone(), list);
        }
    }
    Some(meta)
}

/// Every WAL segment from the backup's start to its finish on its
/// timeline: without them the copy never becomes consistent.
fn check_wal(wal: &Scan, wal_size_mb: u64, timeline: u32, start: u64, finish: u64, r: &mut Report) {
    let seg_bytes = (wal_size_mb.clamp(1, 1024)) << 20;
    let first = start / seg_bytes;
    // The finish LSN is just after the backup's end record: at a
    // segment boundary that record ended in the previous segment.
    let last = finish.saturating_sub(1).max(start) / seg_bytes;
    let mut missing = Vec::new();
    for number in first..=last {
        let seg = Segment { timeline, number };
        if wal.contains(seg) {
            r.wal_segments += 1;
        } else {
            missing.push(seg.name(wal_size_mb));
        }
    }
    for (i, m) in missing.iter().enumerate() {
        if i == LIST_AT_MOST {
            r.problem(
                crate::wal::object::WAL_FOLDER,
                format!(
                    "… and {} more missing segment(s)",
                    missing.len() - LIST_AT_MOST
                ),
            );
            break;
        }
        r.problem(
            format!("{}{m}", crate::wal::object::WAL_FOLDER),
            "WAL segment missing: the backup needs the WAL from its start to its end to become consistent",
        );
    }
}
