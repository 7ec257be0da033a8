//! `walden wal-restore TARGET-PGDATA SOURCE-PGDATA`: before
//! `pg_rewind -D TARGET --source-pgdata=SOURCE`, put back into pg_wal the
//! archived WAL segments the rewind and the rewound server need, so that
//! neither needs a restore_command (WAL-G's wal-restore, spec
//! walg-wal-admin §7).
//!
//! The two clusters (the old primary TARGET and the promoted SOURCE) share
//! history up to the last common point of their timeline histories. WAL-G
//! fetches into SOURCE's pg_wal every segment missing there from that
//! point to SOURCE's newest segment, following SOURCE's timelines: pg_rewind
//! copies them into TARGET, which replays them when it starts. walden does
//! that, and the same for TARGET's own timelines into TARGET's pg_wal
//! (from the common point to TARGET's newest segment), which pg_rewind
//! reads to find the blocks TARGET changed after the split.
//!
//! pg_rewind starts that reading at the last checkpoint record before the
//! split, found by walking TARGET's WAL backwards (findLastCheckpoint), and
//! the rewound server replays from that checkpoint's redo. So walden walks
//! TARGET's segments back from the split's, fetching those pg_wal lacks,
//! until one holds such a checkpoint (`wal::records`), and puts the
//! segments from its redo to the split into SOURCE's pg_wal: pg_rewind
//! makes TARGET's pg_wal a copy of SOURCE's, keeping (in recent minor
//! releases) only the TARGET segments it read itself.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{codecs, open_storage, positionals, wal_fetch};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::wal::history::{self, Record};
use crate::wal::object::{self, Probe};
use crate::wal::records::{self, Checkpoint};
use crate::wal::Segment;

const USAGE: &str = "walden wal-restore TARGET-PGDATA SOURCE-PGDATA";

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let values = positionals(args, USAGE, 2)?;
    let wal_mb = crate::wal::segment_size_mb(settings)?;
    let target = Cluster::open(Path::new(&values[0]))?;
    let source = Cluster::open(Path::new(&values[1]))?;
    if target.control.system_id != source.control.system_id {
        return Err(Error::Other(format!(
            "System identifiers of target and source clusters are not equal ({} in {}, {} in {}): they are not copies of one cluster",
            target.control.system_id,
            target.dir.display(),
            source.control.system_id,
            source.dir.display()
        )));
    }
    if target.control.timeline == source.control.timeline {
        return Err(Error::Other(format!(
            "Latest checkpoint timelines of target and source clusters are equal ({}): nothing diverged, pg_rewind has nothing to do",
            target.control.timeline
        )));
    }
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    let open_history = |cluster: &Cluster| -> Result<Vec<Record>> {
        cluster.history(|name| {
            // Not in pg_wal (removed, or a cluster restored without it):
            // the archive has it.
            let (_, reader) = object::open(&storage, &codecs, name, Probe::GetFirst).ok()??;
            let mut text = String::new();
            reader.take(1 << 20).read_to_string(&mut text).ok()?;
            Some(history::parse(&text))
        })
    };
    let target_history = open_history(&target)?;
    let source_history = open_history(&source)?;
    let (common_lsn, common_tl) = last_common_point(&target_history, &source_history)?;
    let seg_bytes = wal_mb << 20;
    let common_seg = common_lsn / seg_bytes;
    log::info!(
        "last common point: {:X}/{:X} on timeline {common_tl}",
        common_lsn >> 32,
        common_lsn & 0xFFFF_FFFF
    );

    let mut plan = Vec::new();
    for (cluster, history) in [(&source, &source_history), (&target, &target_history)] {
        let local = cluster.local_segments(wal_mb)?;
        let end = cluster.control.checkpoint / seg_bytes;
        // A cluster shut down cleanly (pg_rewind wants both so) ends with
        // its shutdown checkpoint: segments named past it are recycled
        // files, not WAL. Otherwise, as WAL-G: the newest segment there.
        let newest = if cluster.control.shut_down {
            end
        } else {
            local
                .iter()
                .filter(|s| s.timeline == cluster.control.timeline)
                .map(|s| s.number)
                .max()
                .unwrap_or(0)
                .max(end)
        };
        let spans = timeline_spans(history, cluster.control.timeline, seg_bytes);
        for seg in missing(&spans, newest, common_seg, common_tl, &local) {
            plan.push((cluster.wal_dir.clone(), seg.name(wal_mb)));
        }
    }
    let mut failed = 0;
    if !plan.is_empty() {
        log::info!(
            "WAL files to restore: {:?}",
            plan.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>()
        );
        failed = fetch_plan(&storage, &codecs, &plan, wal_mb);
    }
    // pg_rewind reads TARGET's WAL backwards from the split to the last
    // checkpoint before it, and the rewound server replays from that
    // checkpoint's redo: those segments, older than the split, too.
    let fetched = std::cell::Cell::new(plan.len());
    let walk = Walk {
        target: &target,
        spans: timeline_spans(&target_history, target.control.timeline, seg_bytes),
        fork: common_lsn,
        seg_bytes,
        wal_mb,
    };
    let fetch = |dest: &Path, name: &str| {
        fetched.set(fetched.get() + 1);
        fetch_one(&storage, &codecs, name, dest, wal_mb)
    };
    match walk.last_checkpoint(&fetch) {
        Some(cp) => {
            log::info!(
                "last checkpoint before the split: {}, redo {}",
                lsn_text(cp.lsn),
                lsn_text(cp.redo)
            );
            let source_spans = timeline_spans(&source_history, source.control.timeline, seg_bytes);
            failed += put_redo_segments(
                &source,
                &target,
                &source_spans,
                cp.redo / seg_bytes..common_seg,
                wal_mb,
                &fetch,
            )?;
        }
        None => failed += 1,
    }
    if fetched.get() == 0 {
        log::info!("No WAL files to restore");
    }
    // As WAL-G: a segment that could not be fetched is reported, not
    // fatal; pg_rewind says precisely what it then lacks.
    if failed > 0 {
        log::warn!(
            "{failed} WAL files could not be restored; pg_rewind may need a restore_command for them"
        );
    }
    Ok(())
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Download `name` into `dest` (temp name, then rename); false, logged,
/// when it cannot be had.
fn fetch_one(
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    codecs: &crate::codec::Codecs,
    name: &str,
    dest: &Path,
    wal_mb: u64,
) -> bool {
    match wal_fetch::download_to(storage, codecs, name, dest, wal_mb) {
        Ok(true) => {
            log::info!("Successfully download WAL file {name}");
            true
        }
        Ok(false) => {
            log::error!("Failed to download WAL file {name}: not in storage");
            false
        }
        Err(e) => {
            log::error!("Failed to download WAL file {name}: {e}");
            false
        }
    }
}

/// Fetch every (pg_wal, name) of `plan`; the number that failed.
fn fetch_plan(
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    codecs: &crate::codec::Codecs,
    plan: &[(PathBuf, String)],
    wal_mb: u64,
) -> usize {
    let mut failed = 0;
    for (dir, name) in plan {
        if !fetch_one(storage, codecs, name, &dir.join(name), wal_mb) {
            failed += 1;
        }
    }
    failed
}

/// What wal-restore reads of `global/pg_control`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Control {
    system_id: u64,
    /// The timeline of the latest checkpoint.
    timeline: u32,
    /// The latest checkpoint's location.
    checkpoint: u64,
    /// State "shut down" or "shut down in recovery".
    shut_down: bool,
}

/// The fields by position: system identifier at 0, pg_control_version at
/// 8, the state at 16 (1 and 2: shut down), the checkpoint location at 32, then the checkpoint copy whose
/// ThisTimeLineID is at 48 (56 before version 1100, which kept the
/// previous checkpoint's location in between).
fn parse_control(bytes: &[u8]) -> Option<Control> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let version = u32_at(8)?;
    let timeline = if version >= 1100 {
        u32_at(48)?
    } else {
        u32_at(56)?
    };
    if timeline == 0 {
        return None;
    }
    Some(Control {
        system_id: u64_at(0)?,
        timeline,
        checkpoint: u64_at(32)?,
        shut_down: matches!(u32_at(16)?, 1 | 2),
    })
}

struct Cluster {
    dir: PathBuf,
    wal_dir: PathBuf,
    control: Control,
}

impl Cluster {
    fn open(dir: &Path) -> Result<Cluster> {
        let control_path = dir.join("global").join("pg_control");
        let bytes = fs::read(&control_path).map_err(|e| {
            Error::io(
                format!(
                    "cannot read {}; is {} a PostgreSQL data directory?",
                    control_path.display(),
                    dir.display()
                ),
                e,
            )
        })?;
        let control = parse_control(&bytes).ok_or_else(|| {
            Error::Other(format!(
                "{} is not a pg_control file walden can read",
                control_path.display()
            ))
        })?;
        let wal_dir = ["pg_wal", "pg_xlog"]
            .iter()
            .map(|d| dir.join(d))
            .find(|d| d.is_dir())
            .ok_or_else(|| {
                Error::Other(format!("{} has neither pg_wal nor pg_xlog", dir.display()))
            })?;
        Ok(Cluster {
            dir: dir.to_path_buf(),
            wal_dir,
            control,
        })
    }

    /// The history of the cluster's current timeline: none on timeline 1;
    /// else `<tli>.history` from pg_wal, or from storage through `fetch`.
    fn history(&self, fetch: impl FnOnce(&str) -> Option<Vec<Record>>) -> Result<Vec<Record>> {
        let tl = self.control.timeline;
        if tl == 1 {
            return Ok(Vec::new());
        }
        let name = format!("{tl:08X}.history");
        match fs::read_to_string(self.wal_dir.join(&name)) {
            Ok(text) => Ok(history::parse(&text)),
            Err(e) => fetch(&name).ok_or_else(|| {
                Error::io(
                    format!(
                        "cannot read {} (timeline {tl}'s history), nor find it in storage",
                        self.wal_dir.join(&name).display()
                    ),
                    e,
                )
            }),
        }
    }

    fn local_segments(&self, wal_mb: u64) -> Result<BTreeSet<Segment>> {
        let entries = fs::read_dir(&self.wal_dir)
            .map_err(|e| Error::io(format!("cannot list {}", self.wal_dir.display()), e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| Segment::parse(&n, wal_mb))
            .collect())
    }
}

/// The last point both histories share, as WAL-G finds it: rows compared
/// pairwise while their switch points agree; at the first difference the
/// earlier of the two points on the target's timeline; a cluster without
/// history (timeline 1) shares the other's first row.
fn last_common_point(target: &[Record], source: &[Record]) -> Result<(u64, u32)> {
    if target.len() == source.len() {
        return Err(Error::Other(
            "the target and source clusters have timeline histories of equal length (two clusters on the same timeline): nothing to rewind".into(),
        ));
    }
    let mut point = (1, 1);
    if let Some(first) = source.first().filter(|_| target.is_empty()) {
        point = (first.switch_lsn, first.parent);
    }
    if let Some(first) = target.first().filter(|_| source.is_empty()) {
        point = (first.switch_lsn, first.parent);
    }
    for (t, s) in target.iter().zip(source) {
        if t.switch_lsn == s.switch_lsn {
            point = (t.switch_lsn, t.parent);
        } else {
            point = (t.switch_lsn.min(s.switch_lsn), t.parent);
            break;
        }
    }
    Ok(point)
}

/// The timelines of a history, oldest first, each with its first segment:
/// the first timeline from segment 1, each next one from the segment of
/// the switch that began it; the current timeline last.
fn timeline_spans(history: &[Record], current: u32, seg_bytes: u64) -> Vec<(u32, u64)> {
    let mut spans = Vec::with_capacity(history.len() + 1);
    let mut start = 1;
    for r in history {
        spans.push((r.parent, start));
        start = r.switch_lsn / seg_bytes;
    }
    spans.push((current, start));
    spans
}

/// Segments absent from `local`, from `newest` on the current timeline
/// down through the history's timelines to segment `stop` (included) on
/// timeline `stop_tl` or a later one, as WAL-G walks them.
fn missing(
    spans: &[(u32, u64)],
    newest: u64,
    stop: u64,
    stop_tl: u32,
    local: &BTreeSet<Segment>,
) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut seg = newest;
    for &(timeline, start) in spans.iter().rev() {
        if timeline < stop_tl {
            break;
        }
        while seg >= start.max(1) {
            let s = Segment {
                timeline,
                number: seg,
            };
            if !local.contains(&s) {
                out.push(s);
            }
            if seg <= stop {
                return out;
            }
            seg -= 1;
        }
    }
    out
}

/// How far back from the split the walk for a checkpoint goes: PostgreSQL
/// checkpoints at least every max_wal_size (1 GB by default), so 4 GiB of
/// WAL without one means something else is wrong.
const WALK_LIMIT_BYTES: u64 = 4 << 30;

/// The search, in TARGET's WAL, for the checkpoint pg_rewind starts from
/// (findLastCheckpoint in its parsexlog.c): the last checkpoint record
/// that starts before the split, found by walking TARGET's segments back
/// from the split's, each named on the timeline TARGET's history gives it.
struct Walk<'a> {
    target: &'a Cluster,
    spans: Vec<(u32, u64)>,
    /// The last common point: where pg_rewind starts reading backwards.
    fork: u64,
    seg_bytes: u64,
    wal_mb: u64,
}

impl Walk<'_> {
    fn path(&self, number: u64) -> (String, PathBuf) {
        let name = Segment {
            timeline: timeline_of(&self.spans, number),
            number,
        }
        .name(self.wal_mb);
        let path = self.target.wal_dir.join(&name);
        (name, path)
    }

    /// The checkpoint, after fetching into TARGET's pg_wal each walked
    /// segment it lacks (pg_rewind reads every one of them, from the
    /// checkpoint's segment to the split's). `None`, with a warning
    /// saying why, when the walk cannot find it.
    fn last_checkpoint(&self, fetch: &dyn Fn(&Path, &str) -> bool) -> Option<Checkpoint> {
        let limit = (WALK_LIMIT_BYTES / self.seg_bytes).max(2);
        let mut number = self.fork / self.seg_bytes;
        for _ in 0..limit {
            if number == 0 {
                break;
            }
            let (name, path) = self.path(number);
            if !path.exists() && !fetch(&path, &name) {
                log::warn!(
                    "cannot search {name} for the last checkpoint before the split at {}: it is neither in {} nor in storage; pg_rewind will fail to find it",
                    lsn_text(self.fork),
                    self.target.wal_dir.display()
                );
                return None;
            }
            match self.scan(number, &path) {
                Ok(Some(cp)) => return Some(cp),
                Ok(None) => log::debug!("{name}: no checkpoint before the split"),
                Err(e) => {
                    log::warn!(
                        "cannot read {} while searching for the last checkpoint before the split: {e}",
                        path.display()
                    );
                    return None;
                }
            }
            number -= 1;
        }
        log::warn!(
            "no checkpoint record in TARGET's WAL within {} MiB before the split at {}: pg_rewind may need a restore_command for older segments",
            (limit * self.seg_bytes) >> 20,
            lsn_text(self.fork)
        );
        None
    }

    /// The last checkpoint starting in segment `number` before the fork;
    /// the next segment, when there, completes a record crossing into it.
    fn scan(&self, number: u64, path: &Path) -> std::io::Result<Option<Checkpoint>> {
        let file = fs::File::open(path)?;
        let next: Box<dyn Read> = match fs::File::open(self.path(number + 1).1) {
            Ok(f) => Box::new(f.take(self.seg_bytes)),
            Err(_) => Box::new(std::io::empty()),
        };
        let reader = std::io::BufReader::new(file.take(self.seg_bytes).chain(next));
        let scan =
            records::scan_segment(reader, number * self.seg_bytes, self.seg_bytes, self.fork)?;
        Ok(scan.checkpoint)
    }
}

/// The timeline a history's spans give segment `number`.
fn timeline_of(spans: &[(u32, u64)], number: u64) -> u32 {
    spans
        .iter()
        .rev()
        .find(|(_, start)| *start <= number)
        .or(spans.first())
        .map_or(1, |(tl, _)| *tl)
}

/// Put into SOURCE's pg_wal the segments `range` (from the checkpoint's
/// redo to before the split's, on SOURCE's timelines) it lacks: pg_rewind
/// makes TARGET's pg_wal a copy of SOURCE's (a segment only in TARGET's is
/// removed), and the rewound server replays from the redo. A copy from
/// TARGET's pg_wal when it has the segment, else storage's. The number
/// that could not be had.
fn put_redo_segments(
    source: &Cluster,
    target: &Cluster,
    spans: &[(u32, u64)],
    range: std::ops::Range<u64>,
    wal_mb: u64,
    fetch: &dyn Fn(&Path, &str) -> bool,
) -> Result<usize> {
    let mut failed = 0;
    for number in range {
        let name = Segment {
            timeline: timeline_of(spans, number),
            number,
        }
        .name(wal_mb);
        let dest = source.wal_dir.join(&name);
        if dest.exists() {
            continue;
        }
        let local = target.wal_dir.join(&name);
        if local.exists() {
            copy_atomically(&local, &dest)?;
            log::info!("Copied WAL file {name} from {}", target.wal_dir.display());
        } else if !fetch(&dest, &name) {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Copy `from` to `to` under a temporary name, renamed when whole.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let what = || format!("cannot copy {} to {}", from.display(), to.display());
    let mut input = fs::File::open(from).map_err(|e| Error::io(what(), e))?;
    let mut out = crate::localfile::AtomicFile::create(to).map_err(|e| Error::io(what(), e))?;
    std::io::copy(&mut input, &mut out).map_err(|e| Error::io(what(), e))?;
    out.commit().map_err(|e| Error::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn rec(parent: u32, lsn: u64) -> Record {
        Record {
            parent,
            switch_lsn: lsn,
        }
    }

    #[test]
    fn reads_pg_control_fields() {
        let mut b = vec![0u8; 8192];
        b[0..8].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        b[32..40].copy_from_slice(&0x0500_0028u64.to_le_bytes());
        b[48..52].copy_from_slice(&3u32.to_le_bytes());
        b[16..20].copy_from_slice(&1u32.to_le_bytes());
        let c = parse_control(&b).unwrap();
        assert_eq!(
            c,
            Control {
                system_id: 7_000_000_000_000_000_001,
                timeline: 3,
                checkpoint: 0x0500_0028,
                shut_down: true
            }
        );
        // Before 1100 the timeline sat 8 bytes further.
        b[8..12].copy_from_slice(&1002u32.to_le_bytes());
        b[56..60].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse_control(&b).unwrap().timeline, 2);
        assert!(parse_control(&b[..40]).is_none());
    }

    #[test]
    fn common_point_of_histories() {
        // Old primary on 1, promoted standby on 2 from 0/5000100.
        assert_eq!(
            last_common_point(&[], &[rec(1, 5 * SEG + 0x100)]).unwrap(),
            (5 * SEG + 0x100, 1)
        );
        // Both went through 2; they split at different points of it.
        let t = [rec(1, 3 * SEG), rec(2, 9 * SEG)];
        let s = [rec(1, 3 * SEG), rec(2, 7 * SEG), rec(3, 12 * SEG)];
        assert_eq!(last_common_point(&t, &s).unwrap(), (7 * SEG, 2));
        assert!(last_common_point(&[], &[]).is_err());
    }

    #[test]
    fn missing_segments_follow_timelines() {
        let history = [rec(1, 5 * SEG + 0x100)];
        let spans = timeline_spans(&history, 2, SEG);
        assert_eq!(spans, [(1, 1), (2, 5)]);
        let local: BTreeSet<Segment> = [
            Segment {
                timeline: 2,
                number: 8,
            },
            Segment {
                timeline: 2,
                number: 6,
            },
        ]
        .into();
        // From 2/8 down to the split's segment on timeline 2.
        let got: Vec<String> = missing(&spans, 8, 5, 1, &local)
            .iter()
            .map(|s| s.name(16))
            .collect();
        assert_eq!(
            got,
            ["000000020000000000000007", "000000020000000000000005"]
        );
        // The old primary's side: timeline 1 from its newest down to 5.
        let old = timeline_spans(&[], 1, SEG);
        let got: Vec<String> = missing(&old, 7, 5, 1, &BTreeSet::new())
            .iter()
            .map(|s| s.name(16))
            .collect();
        assert_eq!(
            got,
            [
                "000000010000000000000007",
                "000000010000000000000006",
                "000000010000000000000005"
            ]
        );
        // A split further back than the newest timeline's start walks on
        // into the parent timeline.
        let got = missing(&spans, 6, 3, 1, &local);
        assert_eq!(
            got.iter()
                .map(|s| (s.timeline, s.number))
                .collect::<Vec<_>>(),
            [(2, 5), (1, 4), (1, 3)]
        );
    }

    #[test]
    fn timelines_of_segments() {
        let spans = timeline_spans(&[rec(1, 5 * SEG + 0x100), rec(2, 9 * SEG)], 3, SEG);
        let got: Vec<u32> = [1, 4, 5, 8, 9, 12]
            .iter()
            .map(|&n| timeline_of(&spans, n))
            .collect();
        assert_eq!(got, [1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn redo_segments_go_to_source_from_target_or_storage() {
        let root = std::env::temp_dir().join(format!("walden-walrestore-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cluster = |name: &str| {
            let dir = root.join(name);
            fs::create_dir_all(dir.join("pg_wal")).unwrap();
            Cluster {
                wal_dir: dir.join("pg_wal"),
                dir,
                control: Control {
                    system_id: 1,
                    timeline: 1,
                    checkpoint: 0,
                    shut_down: true,
                },
            }
        };
        let (source, target) = (cluster("source"), cluster("target"));
        let name = |n: u64| {
            Segment {
                timeline: 1,
                number: n,
            }
            .name(16)
        };
        fs::write(target.wal_dir.join(name(3)), b"three").unwrap();
        fs::write(source.wal_dir.join(name(4)), b"four").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let fetch = |dest: &Path, n: &str| {
            asked.borrow_mut().push(n.to_string());
            if n == name(5) {
                fs::write(dest, b"five").unwrap();
                true
            } else {
                false
            }
        };
        let spans = timeline_spans(&[], 1, SEG);
        // 3 is copied from TARGET, 4 is there, 5 fetched, 6 nowhere.
        let failed = put_redo_segments(&source, &target, &spans, 3..7, 16, &fetch).unwrap();
        assert_eq!(failed, 1);
        assert_eq!(*asked.borrow(), [name(5), name(6)]);
        assert_eq!(fs::read(source.wal_dir.join(name(3))).unwrap(), b"three");
        assert_eq!(fs::read(source.wal_dir.join(name(5))).unwrap(), b"five");
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&source.wal_dir).unwrap().count(), 3);
        fs::remove_dir_all(&root).unwrap();
    }
}
