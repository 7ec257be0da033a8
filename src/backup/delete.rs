//! `walden delete`: WAL-G's targets and modifiers (spec walg-wal-admin
//! §9.3), decided in [`super::retention`], plus a retention window.
//!
//! Storage requests follow the work, not the size of the storage (WAL-G
//! lists the whole root recursively and reads every sentinel): one
//! non-recursive listing of `basebackups_005/`, one sentinel and one
//! metadata.json per backup, one recursive listing per backup directory
//! that goes, one recursive listing of `wal_005/`, and deletes in batches
//! of [`BATCH`]. Sentinels go first, all of them, before any other object
//! of their backups, so an interrupted delete never leaves a backup that
//! looks finished and is not; the leftovers sort before the target like
//! any others, and a rerun removes them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::catalog;
use super::gotime::GoTime;
use super::layout;
use super::retention::{After, Backup, Catalog, Modifier, Plan, Scope};
use crate::commands::open_storage;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::{Entry, Storage};
use crate::wal::Segment;

const USAGE: &str =
    "walden delete retain [FULL|FIND_FULL] N [--after T|NAME] | retain --window D | \
before [FIND_FULL] NAME|TIME | everything [FORCE] | target [FIND_FULL] NAME|LATEST | \
target --target-user-data JSON | garbage [ARCHIVES|BACKUPS]  [--confirm] [--use-sentinel-time]";

const WAL: &str = "wal_005/";
/// S3's DeleteObjects takes at most 1000 keys.
const BATCH: usize = 1000;
pub const WINDOW_SETTING: &str = "WALDEN_RETENTION_WINDOW";

#[derive(Debug)]
enum Command {
    Retain {
        modifier: Modifier,
        count: usize,
        after: Option<After>,
    },
    Window(Duration),
    Before {
        modifier: Modifier,
        what: String,
    },
    Everything {
        force: bool,
    },
    Target {
        find_full: bool,
        wanted: Wanted,
    },
    Garbage(Scope),
}

#[derive(Debug)]
enum Wanted {
    Name(String),
    UserData(Value),
}

struct Options {
    command: Command,
    confirm: bool,
    use_sentinel_time: bool,
}

fn usage(problem: &str) -> Error {
    Error::Usage(format!("{problem}; usage: {USAGE}"))
}

fn parse_time(s: &str) -> Option<SystemTime> {
    GoTime::parse(s).map(|t| t.t)
}

fn parse(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut words: Vec<String> = Vec::new();
    let mut confirm = false;
    let mut use_sentinel_time = false;
    let mut after: Option<String> = None;
    let mut window: Option<String> = None;
    let mut user_data: Option<String> = None;
    let text = |v: OsString| {
        v.into_string()
            .map_err(|_| usage("arguments must be UTF-8"))
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("confirm") => confirm = true,
            Long("use-sentinel-time") => use_sentinel_time = true,
            Short('a') | Long("after") => after = Some(text(parser.value()?)?),
            Long("window") => window = Some(text(parser.value()?)?),
            Long("target-user-data") => user_data = Some(text(parser.value()?)?),
            Value(v) => words.push(text(v)?),
            _ => return Err(usage(&arg.unexpected().to_string())),
        }
    }
    let mut w = words.iter().map(String::as_str);
    let verb = w.next().ok_or_else(|| usage("no delete target given"))?;
    let rest: Vec<&str> = w.collect();
    let modifier_of = |rest: &[&str]| -> (Modifier, usize) {
        match rest.first() {
            Some(&"FULL") => (Modifier::Full, 1),
            Some(&"FIND_FULL") => (Modifier::FindFull, 1),
            _ => (Modifier::None, 0),
        }
    };
    let command = match verb {
        "retain" => {
            let (modifier, skip) = modifier_of(&rest);
            let args = &rest[skip..];
            match (args, &window) {
                ([], Some(_)) | ([], None)
                    if window.is_some() || settings.get_explicit(WINDOW_SETTING).is_some() =>
                {
                    let text = window
                        .clone()
                        .or_else(|| settings.get_explicit(WINDOW_SETTING))
                        .unwrap_or_default();
                    let d = super::retention::parse_window(&text).ok_or_else(|| {
                        usage(&format!(
                            "retention window '{text}' is not a duration such as 7d, 36h or 1w (units w d h m s)"
                        ))
                    })?;
                    Command::Window(d)
                }
                ([n], None) => {
                    let count = n.parse::<usize>().ok().filter(|&c| c > 0).ok_or_else(|| {
                        usage(&format!("retain count '{n}' must be an integer > 0"))
                    })?;
                    Command::Retain {
                        modifier,
                        count,
                        after: after.as_deref().map(|a| match parse_time(a) {
                            Some(t) => After::Time(t),
                            None => After::Name(a.to_string()),
                        }),
                    }
                }
                _ => return Err(usage("retain takes one count N, or --window D")),
            }
        }
        "before" => {
            let (modifier, skip) = modifier_of(&rest);
            if modifier == Modifier::Full {
                return Err(usage(
                    "before FULL is not a modifier WAL-G accepts; use FIND_FULL",
                ));
            }
            match &rest[skip..] {
                [what] => Command::Before {
                    modifier,
                    what: what.to_string(),
                },
                _ => return Err(usage("before takes one backup name or time")),
            }
        }
        "everything" => match rest.as_slice() {
            [] => Command::Everything { force: false },
            ["FORCE"] => Command::Everything { force: true },
            _ => return Err(usage("everything takes only FORCE")),
        },
        "target" => {
            let (find_full, args) = match rest.first() {
                Some(&"FIND_FULL") => (true, &rest[1..]),
                _ => (false, &rest[..]),
            };
            let wanted = match (args, user_data) {
                ([name], None) => Wanted::Name(name.to_string()),
                ([], Some(json)) => Wanted::UserData(
                    serde_json::from_str(&json)
                        .map_err(|e| usage(&format!("--target-user-data is not JSON ({e})")))?,
                ),
                _ => {
                    return Err(usage(
                        "target takes one backup name, LATEST, or --target-user-data JSON",
                    ))
                }
            };
            Command::Target { find_full, wanted }
        }
        "garbage" => match rest.as_slice() {
            [] => Command::Garbage(Scope::All),
            ["ARCHIVES"] => Command::Garbage(Scope::Archives),
            ["BACKUPS"] => Command::Garbage(Scope::Backups),
            _ => return Err(usage("garbage takes ARCHIVES or BACKUPS")),
        },
        other => return Err(usage(&format!("unknown delete target '{other}'"))),
    };
    Ok(Options {
        command,
        confirm,
        use_sentinel_time,
    })
}

/// What one non-recursive listing of `basebackups_005/` shows.
struct Listing {
    finished: Vec<String>,
    /// The sentinels' modification times, in `finished`'s order.
    times: Vec<Option<SystemTime>>,
    /// Directories `basebackups_005/NAME/`, finished or not.
    dirs: Vec<String>,
    /// Other top-level objects (neither sentinel nor directory).
    strays: Vec<String>,
}

fn list_top(storage: &Arc<dyn Storage>) -> Result<Listing> {
    let mut l = Listing {
        finished: Vec::new(),
        times: Vec::new(),
        dirs: Vec::new(),
        strays: Vec::new(),
    };
    storage.list(layout::BASEBACKUPS, false, &mut |e| {
        match e {
            Entry::Object(o) => {
                let base = o.key.strip_prefix(layout::BASEBACKUPS).unwrap_or(&o.key);
                match base.strip_suffix(layout::SENTINEL_SUFFIX) {
                    Some(name) if !base.contains('/') => {
                        l.finished.push(name.to_string());
                        l.times.push(o.modified);
                    }
                    _ => l.strays.push(o.key),
                }
            }
            Entry::Dir(d) => {
                let base = d.strip_prefix(layout::BASEBACKUPS).unwrap_or(&d);
                l.dirs.push(base.trim_end_matches('/').to_string());
            }
        }
        Ok(())
    })?;
    Ok(l)
}

fn load(
    storage: &Arc<dyn Storage>,
    names: &[String],
    times: &[Option<SystemTime>],
    use_time: bool,
    wal_size_mb: u64,
) -> Result<Catalog> {
    let seg_bytes = wal_size_mb << 20;
    let mut backups = Vec::with_capacity(names.len());
    for (name, &sentinel_time) in names.iter().zip(times) {
        let sentinel = catalog::read_sentinel(storage, name)?;
        let delta_from = catalog::delta_from(&sentinel);
        drop(sentinel);
        let mut b = Backup {
            name: name.clone(),
            time: sentinel_time,
            delta_from,
            ..Backup::default()
        };
        match catalog::read_metadata(storage, name) {
            Ok(m) => {
                b.permanent = m.is_permanent;
                b.start_time = m.start_time.map(|t| t.t);
                b.finish_time = m.finish_time.map(|t| t.t);
                if use_time && b.start_time.is_some() {
                    b.time = b.start_time;
                }
                let timeline = super::retention::hex_run(name)
                    .and_then(|r| u32::from_str_radix(&r[..8], 16).ok());
                if let (Some(tl), true) = (timeline, m.start_lsn > 0) {
                    let seg = |lsn: u64| Segment {
                        timeline: tl,
                        number: lsn.saturating_sub(1) / seg_bytes,
                    };
                    b.wal = Some((seg(m.start_lsn), seg(m.finish_lsn.max(m.start_lsn))));
                }
                b.user_data = m.user_data;
            }
            Err(_) if storage.stat(&layout::metadata_key(name))?.is_none() => {
                log::warn!("Backup {name} lacks metadata to check if it's permanent, ignoring...");
            }
            Err(e) => return Err(e),
        }
        backups.push(b);
    }
    Ok(Catalog::new(backups))
}

/// Collects keys and deletes them a batch at a time (or, in a dry run,
/// only counts them).
struct Deleter<'a> {
    storage: &'a Arc<dyn Storage>,
    confirm: bool,
    batch: Vec<String>,
    count: u64,
}

impl Deleter<'_> {
    fn push(&mut self, key: String) -> Result<()> {
        log::info!("Object marked for deletion: {key} storage=default");
        self.count += 1;
        self.batch.push(key);
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.confirm && !self.batch.is_empty() {
            self.storage.delete(&self.batch)?;
        }
        self.batch.clear();
        Ok(())
    }

    /// Every object under `prefix`, as the listing streams them.
    fn prefix(&mut self, prefix: &str, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        let mut err = None;
        self.storage.list(prefix, true, &mut |e| {
            // After a failed delete, no further request: the rest of the
            // listing is only read through.
            if let (Entry::Object(o), None) = (e, &err) {
                if !keep(&o.key) {
                    if let Err(e) = self.push(o.key) {
                        err = Some(e);
                    }
                }
            }
            Ok(())
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = parse(settings, args)?;
    let wal_size_mb = crate::wal::segment_size_mb(settings)?;
    let storage = open_storage(settings)?;
    let top = list_top(&storage)?;
    let catalog = load(
        &storage,
        &top.finished,
        &top.times,
        opts.use_sentinel_time,
        wal_size_mb,
    )?;
    let mut d = Deleter {
        storage: &storage,
        confirm: opts.confirm,
        batch: Vec::new(),
        count: 0,
    };
    let plan = |target: &Backup, scope| {
        Plan::before(&catalog, target, opts.use_sentinel_time, wal_size_mb, scope)
    };
    let not_full = |b: &Backup| {
        Error::Other(format!(
            "{} is incremental and it's predecessors cannot be deleted. Consider FIND_FULL option.",
            b.name
        ))
    };
    match &opts.command {
        Command::Retain {
            modifier,
            count,
            after,
        } => {
            let t1 = catalog.retain_target(*modifier, *count);
            let t2 = after
                .as_ref()
                .and_then(|a| catalog.after_target(a, *modifier));
            let target = match (t1, t2) {
                (Some(a), Some(b)) => Some(if a.time <= b.time { a } else { b }),
                (a, b) => a.or(b).filter(|_| after.is_none() || t1.is_some()),
            };
            let Some(target) = target else {
                log::info!("No backup found for deletion");
                return Ok(());
            };
            if !target.is_full() {
                return Err(not_full(target));
            }
            boundary(&mut d, &top, &plan(target, Scope::All))?;
        }
        Command::Window(window) => {
            let edge = SystemTime::now()
                .checked_sub(*window)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let Some(target) = catalog.window_target(edge) else {
                match catalog.backups.first() {
                    Some(b) => log::info!(
                        "No backup finished before {}: nothing is deleted; the oldest restorable moment is {}",
                        GoTime::utc(edge).rfc3339(),
                        GoTime::utc(b.finish_time.or(b.time).unwrap_or(edge)).rfc3339()
                    ),
                    None => log::info!("No backup found for deletion"),
                }
                return Ok(());
            };
            log::info!(
                "Retention window {}s: keeping {} (finished {}) and everything after it; oldest restorable moment: {}",
                window.as_secs(),
                target.name,
                target.finish_time.or(target.time).map(|t| GoTime::utc(t).rfc3339()).unwrap_or_default(),
                target.finish_time.or(target.time).map(|t| GoTime::utc(t).rfc3339()).unwrap_or_default(),
            );
            boundary(&mut d, &top, &plan(target, Scope::All))?;
        }
        Command::Before { modifier, what } => {
            let target = match parse_time(what) {
                Some(t) => {
                    if t > SystemTime::now() {
                        return Err(Error::Other(format!(
                            "cannot delete before future date {what}"
                        )));
                    }
                    catalog.before_time(t, *modifier)
                }
                None => catalog.before_name(what, *modifier),
            };
            let Some(target) = target else {
                log::info!("No backup found for deletion");
                return Ok(());
            };
            if !target.is_full() {
                return Err(not_full(target));
            }
            boundary(&mut d, &top, &plan(target, Scope::All))?;
        }
        Command::Everything { force } => {
            let permanent: Vec<&str> = catalog
                .backups
                .iter()
                .filter(|b| b.permanent)
                .map(|b| b.name.as_str())
                .collect();
            if !force && !permanent.is_empty() {
                return Err(Error::Other(format!(
                    "Found permanent backups=[{}]: 'delete everything' keeps them; \
                     use 'delete everything FORCE' to delete them too, or backup-mark -i them first",
                    permanent.join(" ")
                )));
            }
            for name in &top.finished {
                d.push(layout::sentinel_key(name))?;
            }
            d.flush()?;
            // WAL-G's everything is every object under the storage root,
            // not only the two prefixes (bulk WAL metadata, its storage
            // check object, whatever else a tool left there): one
            // recursive listing of the root.
            d.prefix("", &|k| {
                k.strip_prefix(layout::BASEBACKUPS).is_some_and(|rest| {
                    rest.ends_with(layout::SENTINEL_SUFFIX) && !rest.contains('/')
                })
            })?;
        }
        Command::Target { find_full, wanted } => {
            let target = match wanted {
                Wanted::Name(n) if n == "LATEST" => catalog.backups.last(),
                Wanted::Name(n) => catalog.get(n),
                Wanted::UserData(v) => {
                    let found: Vec<&Backup> = catalog
                        .backups
                        .iter()
                        .filter(|b| b.user_data.as_ref() == Some(v))
                        .collect();
                    if found.len() > 1 {
                        return Err(Error::Other(format!(
                            "more than one backup has this user data: {}",
                            found
                                .iter()
                                .map(|b| b.name.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        )));
                    }
                    found.first().copied()
                }
            };
            let target = target.ok_or_else(|| {
                Error::Other(format!(
                    "Requested backup was not found in {}; 'walden backup-list' shows the backups there are",
                    storage.location()
                ))
            })?;
            let set = catalog.target_set(target, *find_full);
            if let Some(p) = set
                .iter()
                .find(|n| catalog.get(n).is_some_and(|b| b.permanent))
            {
                return Err(Error::Other(format!(
                    "Unable to delete permanent backup {p}; 'walden backup-mark -i {p}' makes it deletable"
                )));
            }
            delete_backups(&mut d, &set, &[])?;
        }
        Command::Garbage(scope) => {
            let Some(target) = catalog.garbage_target() else {
                log::info!("Couldn't find any non-permanent backups in storage.");
                return Ok(());
            };
            if !target.is_full() {
                return Err(not_full(target));
            }
            boundary(&mut d, &top, &plan(target, *scope))?;
        }
    }
    d.flush()?;
    if d.count == 0 {
        log::info!("No objects matched the deletion criteria.");
    } else if opts.confirm {
        log::info!("Objects deleted successfully: count={}", d.count);
    } else {
        log::info!(
            "Dry run: objects would be deleted count={}, Run with --confirm to execute",
            d.count
        );
    }
    Ok(())
}

/// Finished backups `names`, sentinels first, then their directories and
/// the leftover directories `unfinished`.
fn delete_backups(d: &mut Deleter, names: &[String], unfinished: &[&String]) -> Result<()> {
    for name in names {
        d.push(layout::sentinel_key(name))?;
    }
    d.flush()?;
    let mut seen = HashSet::new();
    for name in names.iter().chain(unfinished.iter().copied()) {
        if seen.insert(name.as_str()) {
            d.prefix(&format!("{}{name}/", layout::BASEBACKUPS), &|_| false)?;
        }
    }
    d.flush()
}

/// Everything `plan` puts before its target: finished backups, leftover
/// directories, stray top-level objects, then WAL.
fn boundary(d: &mut Deleter, top: &Listing, plan: &Plan) -> Result<()> {
    let finished: HashSet<&String> = top.finished.iter().collect();
    let gone: Vec<String> = top
        .finished
        .iter()
        .filter(|n| plan.backup_deleted(n))
        .cloned()
        .collect();
    let unfinished: Vec<&String> = top
        .dirs
        .iter()
        .filter(|n| !finished.contains(n) && plan.backup_deleted(n))
        .collect();
    delete_backups(d, &gone, &unfinished)?;
    for key in &top.strays {
        let rel = &key[layout::BASEBACKUPS.len().min(key.len())..];
        if plan.backup_deleted(rel) {
            d.push(key.clone())?;
        }
    }
    d.prefix(WAL, &|k| !plan.wal_deleted(&k[WAL.len().min(k.len())..]))?;
    d.flush()
}
