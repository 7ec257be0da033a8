//! What `walden delete` removes, decided without touching storage (spec
//! walg-wal-admin §9.3). WAL-G's model: a target backup is chosen, and
//! every object whose first 24-hex-digit run sorts before the target's
//! goes, except what a permanent backup needs (its objects and its WAL
//! from start to finish segment). Objects without such a run (`.history`,
//! bulk metadata) never go. Here a backup that is kept also keeps its
//! delta bases, whatever the target, so no rule can orphan a delta.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::wal::Segment;

/// One finished backup, reduced to what the decision needs.
#[derive(Debug, Clone, Default)]
pub struct Backup {
    pub name: String,
    /// Order of backups: the sentinel's time, or with `--use-sentinel-time`
    /// metadata `start_time` (WAL-G's naming).
    pub time: Option<SystemTime>,
    pub finish_time: Option<SystemTime>,
    /// From metadata `start_time`; orders `garbage`'s target.
    pub start_time: Option<SystemTime>,
    pub delta_from: Option<String>,
    pub permanent: bool,
    /// First and last WAL segment the backup needs, from metadata LSNs.
    pub wal: Option<(Segment, Segment)>,
    pub user_data: Option<Value>,
}

impl Backup {
    pub fn is_full(&self) -> bool {
        self.delta_from.is_none()
    }
}

/// WAL-G's `retain`/`before` modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    Full,
    FindFull,
}

/// The first run of 24 upper-case hex digits in `key`: what WAL-G orders
/// objects by.
pub fn hex_run(key: &str) -> Option<&str> {
    let b = key.as_bytes();
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_digit() || (b'A'..=b'F').contains(c) {
            run += 1;
            if run == 24 {
                return Some(&key[i + 1 - 24..=i]);
            }
        } else {
            run = 0;
        }
    }
    None
}

/// Backups keyed by name, with the relations the rules walk.
pub struct Catalog {
    pub backups: Vec<Backup>,
    by_name: HashMap<String, usize>,
}

/// A delta chain longer than this is a loop in damaged sentinels.
const MAX_CHAIN: usize = 10_000;

impl Catalog {
    /// `backups` in any order; kept sorted oldest first by `time`, ties
    /// in name order.
    pub fn new(mut backups: Vec<Backup>) -> Catalog {
        backups.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)));
        let by_name = backups
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.clone(), i))
            .collect();
        Catalog { backups, by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Backup> {
        self.by_name.get(name).map(|&i| &self.backups[i])
    }

    /// The full backup at the root of `name`'s delta chain, if the chain
    /// is whole.
    pub fn full_of<'a>(&'a self, b: &'a Backup) -> Option<&'a Backup> {
        let mut cur = b;
        for _ in 0..MAX_CHAIN {
            match &cur.delta_from {
                None => return Some(cur),
                Some(base) => cur = self.get(base)?,
            }
        }
        None
    }

    /// Names a kept backup depends on: its delta bases, transitively.
    fn bases_of(&self, b: &Backup, out: &mut HashSet<String>) {
        let mut cur = b;
        for _ in 0..MAX_CHAIN {
            let Some(base) = &cur.delta_from else { return };
            out.insert(base.clone());
            match self.get(base) {
                Some(next) => cur = next,
                None => return,
            }
        }
    }

    /// Newest first.
    fn newest_first(&self) -> impl Iterator<Item = &Backup> {
        self.backups.iter().rev()
    }

    /// `retain [FULL|FIND_FULL] N`: the N-th newest backup (full only
    /// with FULL; with FIND_FULL the first full one at or before it).
    pub fn retain_target(&self, modifier: Modifier, n: usize) -> Option<&Backup> {
        let pick = match modifier {
            Modifier::Full => return self.newest_first().filter(|b| b.is_full()).nth(n - 1),
            _ => self.newest_first().nth(n - 1)?,
        };
        self.resolve(pick, modifier)
    }

    /// FIND_FULL moves a delta target to the next older full backup.
    fn resolve<'a>(&'a self, pick: &'a Backup, modifier: Modifier) -> Option<&'a Backup> {
        if modifier == Modifier::FindFull && !pick.is_full() {
            let i = self.by_name[&pick.name];
            return self.backups[..i].iter().rev().find(|b| b.is_full());
        }
        Some(pick)
    }

    /// `--after T|NAME`: the oldest backup at or after T, or from the
    /// first backup named with that prefix (full only with a modifier).
    pub fn after_target(&self, after: &After, modifier: Modifier) -> Option<&Backup> {
        let full_only = modifier != Modifier::None;
        let mut candidates = self.backups.iter().filter(|b| !full_only || b.is_full());
        match after {
            After::Time(t) => candidates.find(|b| b.time.is_some_and(|bt| bt >= *t)),
            After::Name(prefix) => candidates.find(|b| b.name.starts_with(prefix.as_str())),
        }
    }

    /// `before NAME`: the newest backup whose name starts with NAME.
    pub fn before_name(&self, prefix: &str, modifier: Modifier) -> Option<&Backup> {
        let pick = self.newest_first().find(|b| b.name.starts_with(prefix))?;
        self.resolve(pick, modifier)
    }

    /// `before TIME`: the oldest backup at or after TIME.
    pub fn before_time(&self, t: SystemTime, modifier: Modifier) -> Option<&Backup> {
        let pick = self
            .backups
            .iter()
            .find(|b| b.time.is_some_and(|bt| bt >= t))?;
        self.resolve(pick, modifier)
    }

    /// The retention window: the newest backup that finished at or before
    /// `edge` (its full base when it is a delta). Restoring to any moment
    /// after `edge` starts from it.
    pub fn window_target(&self, edge: SystemTime) -> Option<&Backup> {
        let pick = self
            .newest_first()
            .find(|b| b.finish_time.or(b.time).is_some_and(|t| t <= edge))?;
        self.full_of(pick)
    }

    /// `garbage`: the oldest non-permanent backup by metadata start time.
    pub fn garbage_target(&self) -> Option<&Backup> {
        self.backups
            .iter()
            .filter(|b| !b.permanent && b.start_time.is_some())
            .min_by_key(|b| b.start_time)
    }

    /// `target`: NAME and every backup taken against it, transitively;
    /// with FIND_FULL, NAME's full backup and everything built on it.
    pub fn target_set(&self, target: &Backup, find_full: bool) -> Vec<String> {
        let root = if find_full {
            self.full_of(target).unwrap_or(target)
        } else {
            target
        };
        let mut set: HashSet<String> = HashSet::from([root.name.clone()]);
        // Oldest first: a delta comes after its base, one pass suffices
        // for the usual order; loop until nothing changes for any other.
        loop {
            let before = set.len();
            for b in &self.backups {
                if let Some(base) = &b.delta_from {
                    if set.contains(base) {
                        set.insert(b.name.clone());
                    }
                }
            }
            if set.len() == before {
                break;
            }
        }
        self.backups
            .iter()
            .filter(|b| set.contains(&b.name))
            .map(|b| b.name.clone())
            .collect()
    }
}

/// `--after` value.
#[derive(Debug, Clone)]
pub enum After {
    Time(SystemTime),
    Name(String),
}

/// Which objects the boundary applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Archives,
    Backups,
}

/// The decision for boundary rules: objects before `target` go unless
/// protected.
pub struct Plan {
    /// The target's 24-hex run; objects sorting before it go.
    pub run: String,
    /// With `--use-sentinel-time`: backups compare by time, WAL by
    /// segment number only.
    pub time: Option<SystemTime>,
    pub wal_size_mb: u64,
    pub scope: Scope,
    /// Backups (and sentinel-less leftovers) that stay whatever their place.
    pub protected: HashSet<String>,
    /// WAL segments that stay: (timeline, first, last) per kept backup.
    pub wal_kept: Vec<(u32, u64, u64)>,
    /// Backup times for `--use-sentinel-time`.
    times: HashMap<String, Option<SystemTime>>,
}

impl Plan {
    /// Everything older than `target` except what the permanent backups,
    /// and the backups that stay, need.
    pub fn before(
        catalog: &Catalog,
        target: &Backup,
        use_time: bool,
        wal_size_mb: u64,
        scope: Scope,
    ) -> Plan {
        let run = hex_run(&target.name).unwrap_or("").to_string();
        let mut plan = Plan {
            run,
            time: if use_time { target.time } else { None },
            wal_size_mb,
            scope,
            protected: HashSet::new(),
            wal_kept: Vec::new(),
            times: catalog
                .backups
                .iter()
                .map(|b| (b.name.clone(), b.time))
                .collect(),
        };
        let kept: Vec<&Backup> = catalog
            .backups
            .iter()
            .filter(|b| b.permanent || !plan.backup_goes(&b.name))
            .collect();
        for b in kept {
            plan.protected.insert(b.name.clone());
            catalog.bases_of(b, &mut plan.protected);
        }
        for name in plan.protected.clone() {
            if let Some(b) = catalog.get(&name) {
                if let Some((first, last)) = b.wal {
                    plan.wal_kept
                        .push((first.timeline, first.number, last.number));
                }
            }
        }
        plan
    }

    /// The backup (or leftover directory) `name` is older than the target.
    fn backup_goes(&self, name: &str) -> bool {
        if let (Some(t), Some(Some(bt))) = (self.time, self.times.get(name)) {
            return *bt < t;
        }
        if self.time.is_some() {
            // Not a backup of the catalog: segment numbers only.
            return self.seg_less(name);
        }
        hex_run(name).is_some_and(|r| r < self.run.as_str())
    }

    fn seg_less(&self, key: &str) -> bool {
        match (hex_run(key), hex_run(&self.run)) {
            (Some(a), Some(b)) => a[8..] < b[8..],
            _ => false,
        }
    }

    /// A backup or leftover directory under `basebackups_005/` goes.
    pub fn backup_deleted(&self, name: &str) -> bool {
        self.scope != Scope::Archives && !self.protected.contains(name) && self.backup_goes(name)
    }

    /// An object under `wal_005/` (key relative to it) goes.
    pub fn wal_deleted(&self, key: &str) -> bool {
        if self.scope == Scope::Backups {
            return false;
        }
        let Some(run) = hex_run(key) else {
            return false;
        };
        let less = if self.time.is_some() {
            self.seg_less(key)
        } else {
            run < self.run.as_str()
        };
        if !less {
            return false;
        }
        match Segment::parse(run, self.wal_size_mb) {
            Some(s) => !self
                .wal_kept
                .iter()
                .any(|&(tl, a, b)| tl == s.timeline && a <= s.number && s.number <= b),
            None => true,
        }
    }
}

/// `7d`, `12h`, `1w2d`, `90m`, `30s`: a retention window.
pub fn parse_window(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn seg(tl: u32, n: u64) -> Segment {
        Segment {
            timeline: tl,
            number: n,
        }
    }

    fn b(name_seg: u64, t: u64, delta: Option<u64>, permanent: bool) -> Backup {
        let name = format!("base_{}", seg(1, name_seg).name(16));
        Backup {
            name,
            time: Some(UNIX_EPOCH + Duration::from_secs(t)),
            finish_time: Some(UNIX_EPOCH + Duration::from_secs(t + 1)),
            start_time: Some(UNIX_EPOCH + Duration::from_secs(t - 1)),
            delta_from: delta.map(|d| format!("base_{}", seg(1, d).name(16))),
            permanent,
            wal: Some((seg(1, name_seg), seg(1, name_seg + 1))),
            user_data: None,
        }
    }

    fn wal(n: u64) -> String {
        format!("{}.lz4", seg(1, n).name(16))
    }

    #[test]
    fn retain_keeps_n_and_permanent_ones_and_their_wal() {
        let c = Catalog::new(vec![
            b(2, 100, None, true),
            b(5, 200, None, false),
            b(8, 300, None, false),
            b(11, 400, None, false),
        ]);
        let t = c.retain_target(Modifier::None, 2).unwrap();
        assert_eq!(t.name, c.backups[2].name);
        let p = Plan::before(&c, t, false, 16, Scope::All);
        assert!(!p.backup_deleted(&c.backups[0].name), "permanent");
        assert!(p.backup_deleted(&c.backups[1].name));
        assert!(!p.backup_deleted(&c.backups[2].name));
        assert!(p.wal_deleted(&wal(1)));
        assert!(!p.wal_deleted(&wal(2)), "permanent backup's start");
        assert!(!p.wal_deleted(&wal(3)), "permanent backup's end");
        assert!(p.wal_deleted(&wal(4)));
        assert!(p.wal_deleted(&wal(7)));
        assert!(!p.wal_deleted(&wal(8)));
        assert!(!p.wal_deleted("00000002.history"));
        // Leftover of a killed backup older than the target.
        assert!(p.backup_deleted(&format!("base_{}", seg(1, 6).name(16))));
        assert!(!p.backup_deleted(&format!("base_{}", seg(1, 12).name(16))));
        assert!(c.retain_target(Modifier::None, 5).is_none());
    }

    #[test]
    fn deltas_keep_their_bases() {
        let c = Catalog::new(vec![
            b(2, 100, None, false),
            b(5, 200, Some(2), false),
            b(8, 300, Some(5), false),
        ]);
        let t = c.retain_target(Modifier::None, 1).unwrap();
        assert!(!t.is_full());
        // Whatever the target, a kept delta keeps its chain.
        let p = Plan::before(&c, t, false, 16, Scope::All);
        assert!(!p.backup_deleted(&c.backups[0].name));
        assert!(!p.backup_deleted(&c.backups[1].name));
        assert_eq!(
            c.retain_target(Modifier::FindFull, 1).unwrap().name,
            c.backups[0].name
        );
        assert_eq!(
            c.retain_target(Modifier::Full, 1).unwrap().name,
            c.backups[0].name
        );
        assert_eq!(c.target_set(&c.backups[1], false).len(), 2);
        assert_eq!(c.target_set(&c.backups[1], true).len(), 3);
        assert_eq!(
            c.window_target(UNIX_EPOCH + Duration::from_secs(350))
                .unwrap()
                .name,
            c.backups[0].name
        );
    }

    #[test]
    fn window_and_garbage_targets() {
        let c = Catalog::new(vec![
            b(2, 100, None, true),
            b(5, 200, None, false),
            b(8, 300, None, false),
        ]);
        let edge = UNIX_EPOCH + Duration::from_secs(250);
        assert_eq!(c.window_target(edge).unwrap().name, c.backups[1].name);
        assert!(c.window_target(UNIX_EPOCH).is_none());
        assert_eq!(c.garbage_target().unwrap().name, c.backups[1].name);
        let p = Plan::before(&c, c.garbage_target().unwrap(), false, 16, Scope::Archives);
        assert!(!p.backup_deleted(&format!("base_{}", seg(1, 1).name(16))));
        assert!(p.wal_deleted(&wal(4)));
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            parse_window("1w2h"),
            Some(Duration::from_secs(7 * 86_400 + 7200))
        );
        assert_eq!(parse_window("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("7"), None);
        assert_eq!(parse_window("0d"), None);
        assert_eq!(parse_window("7x"), None);
        assert_eq!(
            hex_run("wal_005/000000010000000000000003.lz4"),
            Some("000000010000000000000003")
        );
    }
}
