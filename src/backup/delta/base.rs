//! Choosing the delta base (spec §6.1, WAL-G's
//! `RegularDeltaBackupConfigurator`), with WAL-G's log lines, and the
//! checks once the new backup has started (§6.1 end, §10.1 step 7).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::backup::catalog::{self, Metadata};
use crate::backup::select::json_equal;
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::storage::Storage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Chain deltas: the base is the candidate itself.
    Latest,
    /// Every delta against the candidate's full backup.
    LatestFull,
}

#[derive(Debug, Clone, PartialEq)]
pub enum From {
    Latest,
    Name(String),
    UserData(Value),
}

/// The delta settings of one backup-push, built once with its options.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaOptions {
    /// `WALG_DELTA_MAX_STEPS`; 0: every backup is full.
    pub max_steps: u64,
    pub origin: Origin,
    pub from: From,
    /// `--full`, or implied (`--without-files-metadata`).
    pub full: bool,
    /// `WALDEN_DELTA_SUMMARIES` (default on): changed blocks from the
    /// server's WAL summaries where PostgreSQL 17+ has them; off: always
    /// scan pages.
    pub summaries: bool,
}

impl DeltaOptions {
    pub fn from_settings(
        settings: &Settings,
        full: bool,
        from_name: Option<String>,
        from_user_data: Option<String>,
        without_files_metadata: bool,
    ) -> Result<DeltaOptions> {
        let text = settings.get("WALG_DELTA_MAX_STEPS").unwrap_or_default();
        let max_steps = if text.trim().is_empty() {
            0
        } else {
            text.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                name: "WALG_DELTA_MAX_STEPS".into(),
                value: text.clone(),
                problem: "expected a whole number of delta backups between full ones (0: every backup is full)".into(),
            })?
        };
        let origin_text = settings.get("WALG_DELTA_ORIGIN").unwrap_or_default();
        let origin = match origin_text.trim() {
            "" | "LATEST" => Origin::Latest,
            "LATEST_FULL" => Origin::LatestFull,
            other => {
                return Err(ConfigError::Invalid {
                    name: "WALG_DELTA_ORIGIN".into(),
                    value: other.to_string(),
                    problem: "expected LATEST or LATEST_FULL".into(),
                }
                .into())
            }
        };
        let name = from_name.or_else(|| settings.get_explicit("WALG_DELTA_FROM_NAME"));
        let data = from_user_data.or_else(|| settings.get_explicit("WALG_DELTA_FROM_USER_DATA"));
        let name = name.filter(|n| !n.is_empty());
        let data = data.filter(|d| !d.is_empty());
        if without_files_metadata && (name.is_some() || data.is_some()) {
            return Err(Error::Usage(
                "--without-files-metadata cannot be used with --delta-from-name, --delta-from-user-data: \
                 a delta needs its base's files_metadata.json and writes its own"
                    .into(),
            ));
        }
        let from = match (name, data) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "only one delta target should be specified: give --delta-from-name (WALG_DELTA_FROM_NAME) \
                     or --delta-from-user-data (WALG_DELTA_FROM_USER_DATA), not both"
                        .into(),
                ))
            }
            (Some(n), None) => From::Name(n),
            (None, Some(d)) => From::UserData(serde_json::from_str(&d).map_err(|e| {
                Error::Usage(format!(
                    "the delta base's user data ({d}) is not valid JSON ({e}); give it as in --add-user-data"
                ))
            })?),
            (None, None) => From::Latest,
        };
        let summaries = match settings
            .get_explicit("WALDEN_DELTA_SUMMARIES")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "on" | "true" | "1" => true,
            "off" | "false" | "0" => false,
            other => {
                return Err(ConfigError::Invalid {
                    name: "WALDEN_DELTA_SUMMARIES".into(),
                    value: other.to_string(),
                    problem: "expected on or off".into(),
                }
                .into())
            }
        };
        if without_files_metadata {
            log::info!("Files metadata tracking is disabled");
        }
        Ok(DeltaOptions {
            max_steps,
            origin,
            from,
            full: full || without_files_metadata,
            summaries,
        })
    }
}

/// The backup a delta is taken against, as its sentinel describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub name: String,
    /// Its start LSN: pages at or after it changed since.
    pub lsn: u64,
    pub finish_lsn: Option<u64>,
    /// The full backup at the root of the chain.
    pub full_name: String,
    /// `DeltaCount` of the new backup.
    pub count: u64,
    pub system_identifier: Option<u64>,
    /// When backup-push of the base started: a file whose mtime is this
    /// close to it may have been written during the base's copy.
    pub start_time: Option<SystemTime>,
}

/// What the choice needs from storage (a trait so the rules are tested
/// without one).
pub trait Backups {
    fn latest(&self) -> Result<Option<String>>;
    fn exists(&self, name: &str) -> Result<bool>;
    fn sentinel(&self, name: &str) -> Result<Map<String, Value>>;
    fn metadata(&self, name: &str) -> Result<Metadata>;
    /// Every backup name, oldest first.
    fn names(&self) -> Result<Vec<String>>;
    fn location(&self) -> String;
}

pub struct InStorage<'a>(pub &'a Arc<dyn Storage>);

impl Backups for InStorage<'_> {
    fn latest(&self) -> Result<Option<String>> {
        Ok(catalog::latest(self.0)?.map(|e| e.name))
    }
    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .0
            .stat(&crate::backup::layout::sentinel_key(name))?
            .is_some())
    }
    fn sentinel(&self, name: &str) -> Result<Map<String, Value>> {
        catalog::read_sentinel(self.0, name)
    }
    fn metadata(&self, name: &str) -> Result<Metadata> {
        catalog::read_metadata(self.0, name)
    }
    fn names(&self) -> Result<Vec<String>> {
        Ok(catalog::list(self.0)?.into_iter().map(|e| e.name).collect())
    }
    fn location(&self) -> String {
        self.0.location()
    }
}

fn uint(s: &Map<String, Value>, key: &str) -> Option<u64> {
    catalog::field(s, key).and_then(Value::as_u64)
}

fn text(s: &Map<String, Value>, key: &str) -> Option<String> {
    match catalog::field(s, key) {
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        _ => None,
    }
}

/// The base for the next backup, or `None` for a full backup (WAL-G's
/// reasons, with its INFO lines).
pub fn choose(backups: &dyn Backups, opts: &DeltaOptions, permanent: bool) -> Result<Option<Base>> {
    if opts.full || opts.max_steps == 0 {
        return Ok(None);
    }
    let candidate = match &opts.from {
        From::Latest => backups.latest()?,
        From::Name(name) => {
            log::info!(
                "Selecting the backup with name {name} as the base for the current delta backup..."
            );
            if !backups.exists(name)? {
                return Err(Error::Other(format!(
                    "the delta base {name} (--delta-from-name / WALG_DELTA_FROM_NAME) is not in {}: it has no sentinel; \
                     'walden backup-list' shows the backups there are",
                    backups.location()
                )));
            }
            Some(name.clone())
        }
        From::UserData(data) => {
            log::info!(
                "Selecting the backup with specified user data as the base for the current delta backup..."
            );
            by_user_data(backups, data)?
        }
    };
    let Some(candidate) = candidate else {
        log::info!("Couldn't find previous backup. Doing full backup.");
        return Ok(None);
    };
    let sentinel = backups.sentinel(&candidate)?;
    let count = uint(&sentinel, "DeltaCount").map_or(1, |c| c + 1);
    if count > opts.max_steps {
        log::info!("Reached max delta steps. Doing full backup.");
        return Ok(None);
    }
    if uint(&sentinel, "LSN").is_none() {
        log::info!(
            "LATEST backup was made without support for delta feature. Fallback to full backup with LSN marker for future deltas."
        );
        return Ok(None);
    }
    let meta = match backups.metadata(&candidate) {
        Ok(m) => m,
        Err(e) => {
            log::info!("Failed to get previous backup metadata: {e}. Doing full backup.");
            return Ok(None);
        }
    };
    if !permanent && opts.origin != Origin::LatestFull && meta.is_permanent {
        log::info!("Can't do a delta backup from permanent backup. Doing full backup.");
        return Ok(None);
    }
    let (name, sentinel) = if opts.origin == Origin::LatestFull {
        log::info!("Delta will be made from full backup.");
        match text(&sentinel, "DeltaFullName") {
            Some(full) if full != candidate => {
                if !backups.exists(&full)? {
                    return Err(Error::Other(format!(
                        "the full backup {full} of {candidate}'s chain is not in {} (no sentinel): \
                         the chain is broken; take a full backup (--full)",
                        backups.location()
                    )));
                }
                let s = backups.sentinel(&full)?;
                (full, s)
            }
            _ => (candidate, sentinel),
        }
    } else {
        (candidate, sentinel)
    };
    let lsn = uint(&sentinel, "LSN").ok_or_else(|| {
        Error::Other(format!(
            "the sentinel of the delta base {name} has no LSN; take a full backup (--full)"
        ))
    })?;
    if text(&sentinel, "DeltaFrom").is_some() && text(&sentinel, "DeltaFullName").is_none() {
        return Err(Error::Other(format!(
            "the sentinel of the delta base {name} has DeltaFrom but no DeltaFullName: it is damaged; take a full backup (--full)"
        )));
    }
    log::info!(
        "Delta backup from {name} with LSN {}.",
        catalog::lsn_text(lsn)
    );
    Ok(Some(Base {
        full_name: text(&sentinel, "DeltaFullName").unwrap_or_else(|| name.clone()),
        lsn,
        finish_lsn: uint(&sentinel, "FinishLSN"),
        count,
        system_identifier: uint(&sentinel, "SystemIdentifier"),
        start_time: text(&sentinel, "StartTime").and_then(|t| crate::time::parse_iso8601(&t)),
        name,
    }))
}

/// The one backup whose `metadata.json` user data equals `data`; none is
/// "no previous backup" (a full backup), several an error (WAL-G).
fn by_user_data(backups: &dyn Backups, data: &Value) -> Result<Option<String>> {
    let mut found: Vec<String> = Vec::new();
    for name in backups.names()? {
        match backups.metadata(&name) {
            Ok(m) => {
                if m.user_data.as_ref().is_some_and(|u| json_equal(u, data))
                    && !found.contains(&name)
                {
                    found.push(name);
                }
            }
            Err(e) => log::warn!("Failed to get metadata of backup {name}, error: {e}"),
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(Error::Other(format!(
            "too many backups ({n}) found with specified user data: {}; give the base's name with --delta-from-name",
            found.join(" ")
        ))),
    }
}

/// The checks WAL-G makes once the new backup has started, plus one it
/// does not: a base on another timeline is only used when this server's
/// timeline history shows it branched off the base's timeline after the
/// base had finished; otherwise pages written on the other branch after
/// the switch could carry LSNs below the base's and be missed, so the
/// backup is taken full instead (`Ok(false)`).
pub fn check_started(
    base: &Base,
    start_lsn: u64,
    system_identifier: Option<u64>,
    timeline: u32,
    history: impl FnOnce(u32) -> Option<String>,
) -> Result<bool> {
    if base.finish_lsn.is_some_and(|f| f > start_lsn) {
        return Err(Error::Other(format!(
            "Finish LSN of backup {} greater than current LSN: the base is from the future of this server \
             (was the cluster restored from an older backup?); take a full backup (--full)",
            base.name
        )));
    }
    if let (Some(a), Some(b)) = (base.system_identifier, system_identifier) {
        if a != b {
            return Err(Error::Other(format!(
                "Current database and database of base backup are not equal: {} has system identifier {a}, this server {b}; \
                 take a full backup (--full), or point WALG_*_PREFIX at this cluster's storage",
                base.name
            )));
        }
    }
    let base_tl = base_timeline(&base.name);
    let Some(base_tl) = base_tl else {
        return Ok(true);
    };
    if base_tl == timeline {
        return Ok(true);
    }
    let switch = history(timeline).and_then(|h| switch_point(&h, base_tl));
    match (switch, base.finish_lsn) {
        (Some(at), Some(finish)) if at >= finish => Ok(true),
        _ => {
            log::info!(
                "The delta base {} is on timeline {base_tl}, this server on {timeline}, and its history does not show \
                 the switch after the base finished. Doing full backup.",
                base.name
            );
            Ok(false)
        }
    }
}

/// The timeline in a backup name (`base_TTTTTTTT...`).
pub fn base_timeline(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("base_")?.get(..8)?;
    u32::from_str_radix(hex, 16).ok()
}

/// Where the history (`0000000N.history`) says timeline `parent` ended:
/// lines `parentTLI <tab> X/Y <tab> reason`.
pub fn switch_point(history: &str, parent: u32) -> Option<u64> {
    history.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let tl: u32 = f.next()?.parse().ok()?;
        let lsn = crate::backup::layout::parse_lsn(f.next()?)?;
        (tl == parent).then_some(lsn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake {
        order: Vec<String>,
        sentinels: BTreeMap<String, Value>,
        metas: BTreeMap<String, Value>,
    }

    impl Fake {
        fn add(&mut self, name: &str, sentinel: Value, meta: Value) {
            self.order.push(name.into());
            self.sentinels.insert(name.into(), sentinel);
            self.metas.insert(name.into(), meta);
        }
    }

    impl Backups for Fake {
        fn latest(&self) -> Result<Option<String>> {
            Ok(self.order.last().cloned())
        }
        fn exists(&self, name: &str) -> Result<bool> {
            Ok(self.sentinels.contains_key(name))
        }
        fn sentinel(&self, name: &str) -> Result<Map<String, Value>> {
            Ok(self.sentinels[name].as_object().unwrap().clone())
        }
        fn metadata(&self, name: &str) -> Result<Metadata> {
            match self.metas.get(name) {
                Some(Value::Object(m)) => Metadata::from_json(m, name),
                _ => Err(Error::Other("no metadata.json".into())),
            }
        }
        fn names(&self) -> Result<Vec<String>> {
            Ok(self.order.clone())
        }
        fn location(&self) -> String {
            "fake".into()
        }
    }

    const FULL: &str = "base_000000010000000000000004";
    const D1: &str = "base_000000010000000000000006_D_000000010000000000000004";

    fn chain() -> Fake {
        let mut f = Fake::default();
        f.add(
            FULL,
            json!({"LSN": 100, "FinishLSN": 150, "SystemIdentifier": 7, "StartTime": "2026-01-01T00:00:00.5Z"}),
            json!({"is_permanent": false, "user_data": {"n": 1}}),
        );
        f.add(
            D1,
            json!({"LSN": 200, "DeltaLSN": 100, "DeltaFrom": FULL, "DeltaFullName": FULL, "DeltaCount": 1, "FinishLSN": 250}),
            json!({"is_permanent": false, "user_data": {"n": 2}}),
        );
        f
    }

    fn opts(max: u64, origin: Origin, from: From) -> DeltaOptions {
        DeltaOptions {
            max_steps: max,
            origin,
            from,
            full: false,
            summaries: true,
        }
    }

    #[test]
    fn latest_chains_and_counts_steps() {
        let f = chain();
        let b = choose(&f, &opts(3, Origin::Latest, From::Latest), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (b.name.as_str(), b.lsn, b.count, b.full_name.as_str()),
            (D1, 200, 2, FULL)
        );
        assert_eq!(b.finish_lsn, Some(250));
        // One step allowed, the latest is already one: full.
        assert_eq!(
            choose(&f, &opts(1, Origin::Latest, From::Latest), false).unwrap(),
            None
        );
        // Never with 0 steps or --full.
        assert_eq!(
            choose(&f, &opts(0, Origin::Latest, From::Latest), false).unwrap(),
            None
        );
        let mut full = opts(3, Origin::Latest, From::Latest);
        full.full = true;
        assert_eq!(choose(&f, &full, false).unwrap(), None);
        // No backups at all: full.
        assert_eq!(
            choose(
                &Fake::default(),
                &opts(3, Origin::Latest, From::Latest),
                false
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn latest_full_keeps_the_count_and_bases_on_the_full() {
        let f = chain();
        let b = choose(&f, &opts(5, Origin::LatestFull, From::Latest), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (b.name.as_str(), b.lsn, b.count, b.full_name.as_str()),
            (FULL, 100, 2, FULL)
        );
        assert_eq!(b.system_identifier, Some(7));
        assert!(b.start_time.is_some());
    }

    #[test]
    fn by_name_user_data_and_permanence() {
        let mut f = chain();
        let b = choose(&f, &opts(5, Origin::Latest, From::Name(FULL.into())), false)
            .unwrap()
            .unwrap();
        assert_eq!((b.name.as_str(), b.count), (FULL, 1));
        assert!(choose(
            &f,
            &opts(
                5,
                Origin::Latest,
                From::Name("base_000000010000000000000009".into())
            ),
            false
        )
        .is_err());
        let b = choose(
            &f,
            &opts(5, Origin::Latest, From::UserData(json!({"n": 2.0}))),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(b.name, D1);
        assert_eq!(
            choose(
                &f,
                &opts(5, Origin::Latest, From::UserData(json!({"n": 3}))),
                false
            )
            .unwrap(),
            None
        );
        // A permanent candidate: full unless this one is permanent too or the origin is the full backup.
        f.metas.insert(D1.into(), json!({"is_permanent": true}));
        assert_eq!(
            choose(&f, &opts(5, Origin::Latest, From::Latest), false).unwrap(),
            None
        );
        assert!(choose(&f, &opts(5, Origin::Latest, From::Latest), true)
            .unwrap()
            .is_some());
        assert!(
            choose(&f, &opts(5, Origin::LatestFull, From::Latest), false)
                .unwrap()
                .is_some()
        );
        // Unreadable metadata: full.
        f.metas.remove(D1);
        assert_eq!(
            choose(&f, &opts(5, Origin::Latest, From::Latest), true).unwrap(),
            None
        );
        // Two backups with the same user data: an error.
        let mut g = chain();
        g.metas.insert(D1.into(), json!({"user_data": {"n": 1}}));
        assert!(choose(
            &g,
            &opts(5, Origin::Latest, From::UserData(json!({"n": 1}))),
            false
        )
        .is_err());
    }

    #[test]
    fn a_base_without_lsn_gives_a_full_backup() {
        let mut f = Fake::default();
        f.add(FULL, json!({"LSN": null}), json!({}));
        assert_eq!(
            choose(&f, &opts(5, Origin::Latest, From::Latest), false).unwrap(),
            None
        );
    }

    #[test]
    fn started_checks() {
        let f = chain();
        let b = choose(&f, &opts(5, Origin::LatestFull, From::Latest), false)
            .unwrap()
            .unwrap();
        let none = |_| None;
        assert!(check_started(&b, 300, Some(7), 1, none).unwrap());
        assert!(check_started(&b, 120, Some(7), 1, none).is_err());
        assert!(check_started(&b, 300, Some(8), 1, none).is_err());
        assert!(check_started(&b, 300, None, 1, none).unwrap());
        // Timeline 2 branched off 1 after the base finished (150): usable.
        let h = |tl| (tl == 2).then(|| "1\t0/200\tno recovery target specified\n".to_string());
        assert!(check_started(&b, 300, Some(7), 2, h).unwrap());
        let early = |_| Some("1\t0/90\tbefore the base\n".to_string());
        assert!(!check_started(&b, 300, Some(7), 2, early).unwrap());
        assert!(!check_started(&b, 300, Some(7), 2, none).unwrap());
        assert_eq!(
            switch_point("1\t0/3000000\tx\n2\t1/10\ty\n", 2),
            Some(0x1_0000_0010)
        );
    }
}
