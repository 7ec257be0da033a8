//! Reading WAL-G's `files_metadata.json` (spec §3.3) for a restore: per
//! file only what backup-fetch needs (`IsIncremented`, `IsSkipped`) and,
//! per tar, which of those files it holds (`TarFileSets`).
//!
//! WAL-G keeps the decoded map (a Go map of structs with a time and a
//! string key each, for every file of every backup of the chain, W3).
//! Here the object is decoded as a stream, never as a whole JSON value,
//! and only the names the restore can use are kept (`keep`), in one sorted
//! byte arena: a name's bytes, a 4-byte end offset and a flag byte. The
//! `CorruptBlocks`, `MTime`, `UpdatesCount` and `DatabasesByNames` parts
//! are skipped as they stream by.

use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// `IsIncremented`: the member is a `wi1` increment, not the file.
pub const INCREMENTED: u8 = 1;
/// `IsSkipped`: unchanged since the delta base, in no tar of this backup.
pub const SKIPPED: u8 = 2;

/// Names with their flags, sorted by name bytes.
#[derive(Default)]
pub struct FileSet {
    arena: Vec<u8>,
    ends: Vec<u32>,
    flags: Vec<u8>,
}

impl FileSet {
    /// Built from names appended to `arena` in any order, each given as
    /// `(start, end, flags)`; a repeated name keeps its last flags (as a
    /// JSON object decoder does). The arena is rebuilt in sorted order.
    pub fn from_spans(arena: &[u8], mut spans: Vec<(u32, u32, u8)>) -> FileSet {
        let name = |s: &(u32, u32, u8)| &arena[s.0 as usize..s.1 as usize];
        // Stable: among equal names the last one read stays last.
        spans.sort_by(|a, b| name(a).cmp(name(b)));
        let mut out = FileSet::default();
        out.arena.reserve_exact(arena.len());
        out.ends.reserve_exact(spans.len());
        out.flags.reserve_exact(spans.len());
        for s in &spans {
            if !out.is_empty() && out.name(out.len() - 1) == name(s) {
                let last = out.flags.len() - 1;
                out.flags[last] = s.2;
                continue;
            }
            out.arena.extend_from_slice(name(s));
            out.ends.push(out.arena.len() as u32);
            out.flags.push(s.2);
        }
        out.arena.shrink_to_fit();
        out.ends.shrink_to_fit();
        out.flags.shrink_to_fit();
        out
    }

    /// Built from `(name, flags)` pairs.
    pub fn from_pairs<'n>(pairs: impl IntoIterator<Item = (&'n [u8], u8)>) -> FileSet {
        let mut arena = Vec::new();
        let mut spans = Vec::new();
        for (n, f) in pairs {
            let start = arena.len() as u32;
            arena.extend_from_slice(n);
            spans.push((start, arena.len() as u32, f));
        }
        FileSet::from_spans(&arena, spans)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    pub fn flags_at(&self, i: usize) -> u8 {
        self.flags[i]
    }

    pub fn index(&self, name: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn flags(&self, name: &[u8]) -> Option<u8> {
        self.index(name).map(|i| self.flags[i])
    }

    /// Heap bytes held (what the restore pays per backup of the chain).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.ends.capacity() * 4 + self.flags.capacity()
    }
}

/// One tar's entry of `TarFileSets`: the indices (into the [`FileSet`]) of
/// the kept names it lists.
pub struct TarSet {
    pub tar: String,
    pub members: Vec<u32>,
}

/// What is kept of one `files_metadata.json`.
#[derive(Default)]
pub struct FilesMetadata {
    pub files: FileSet,
    /// How many entries `Files` had, kept or not.
    pub files_listed: usize,
    /// `None` when the object has no `TarFileSets` at all.
    pub tar_sets: Option<Vec<TarSet>>,
}

impl FilesMetadata {
    #[cfg(test)]
    pub fn tar_set(&self, tar: &str) -> Option<&TarSet> {
        self.tar_sets.as_ref()?.iter().find(|t| t.tar == tar)
    }

    pub fn heap_bytes(&self) -> usize {
        self.files.heap_bytes()
            + self.tar_sets.as_ref().map_or(0, |s| {
                s.iter()
                    .map(|t| t.tar.capacity() + t.members.capacity() * 4 + 40)
                    .sum()
            })
    }
}

/// Decode `files_metadata.json` from `input`, keeping the `Files` entries
/// whose name `keep` accepts; `extra` names are added (as whole files,
/// flags 0) when `Files` lacks them. Errors are the decoder's text.
pub fn read(
    input: impl Read,
    keep: &dyn Fn(&[u8]) -> bool,
) -> std::result::Result<FilesMetadata, String> {
    let mut raw = Raw {
        keep,
        arena: Vec::new(),
        spans: Vec::new(),
        listed: 0,
        sorted: None,
        tars: None,
    };
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(256 * 1024, input));
    TopSeed(&mut raw)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(raw.finish())
}

struct Raw<'k> {
    keep: &'k dyn Fn(&[u8]) -> bool,
    /// Kept names as read, one after another, and where each is.
    arena: Vec<u8>,
    spans: Vec<(u32, u32, u8)>,
    listed: usize,
    /// `Files`, sorted as soon as it has been read.
    sorted: Option<FileSet>,
    /// Tar name and the kept names it lists: indices when `Files` came
    /// first (WAL-G's order), else names until `Files` is read.
    tars: Option<Vec<(String, Names)>>,
}

enum Names {
    Resolved(Vec<u32>),
    Pending { arena: Vec<u8>, ends: Vec<u32> },
}

impl Raw<'_> {
    /// Sort what `Files` gave so far.
    fn sort_files(&mut self) {
        let arena = std::mem::take(&mut self.arena);
        let spans = std::mem::take(&mut self.spans);
        if self.sorted.is_none() || !spans.is_empty() {
            self.sorted = Some(FileSet::from_spans(&arena, spans));
        }
    }

    fn finish(mut self) -> FilesMetadata {
        if self.sorted.is_none() {
            self.sort_files();
        }
        let files = self.sorted.take().unwrap_or_default();
        let tar_sets = self.tars.map(|tars| {
            tars.into_iter()
                .map(|(tar, names)| TarSet {
                    tar,
                    members: match names {
                        Names::Resolved(m) => m,
                        Names::Pending { arena, ends } => (0..ends.len())
                            .filter_map(|i| {
                                let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                                files
                                    .index(&arena[start..ends[i] as usize])
                                    .map(|i| i as u32)
                            })
                            .collect(),
                    },
                })
                .collect()
        });
        FilesMetadata {
            files,
            files_listed: self.listed,
            tar_sets,
        }
    }
}

/// Go's decoder matches keys ignoring ASCII case.
fn is_key(k: &str, name: &str) -> bool {
    k.eq_ignore_ascii_case(name)
}

struct TopSeed<'a, 'k>(&'a mut Raw<'k>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a files_metadata.json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut files_seen, mut tars_seen) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            // A second list would leave the tar sets' indices pointing
            // into the first: refused, as json/v2 refuses duplicate names.
            let once = |seen: &mut bool| {
                if std::mem::replace(seen, true) {
                    return Err(de::Error::custom(format!("the key {key:?} appears twice")));
                }
                Ok(())
            };
            if is_key(&key, "Files") {
                once(&mut files_seen)?;
                map.next_value_seed(Nullable(FilesSeed(self.0)))?;
                self.0.sort_files();
            } else if is_key(&key, "TarFileSets") {
                once(&mut tars_seen)?;
                self.0.tars = Some(Vec::new());
                map.next_value_seed(Nullable(TarsSeed(self.0)))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `null` is what an empty map was before json/v2: nothing.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for Nullable<S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for Nullable<S> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.deserialize(d)
    }
}

struct FilesSeed<'a, 'k>(&'a mut Raw<'k>);

impl<'de> DeserializeSeed<'de> for FilesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FilesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the Files object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            let flags = map.next_value_seed(DescSeed)?;
            self.0.listed += 1;
            if (self.0.keep)(name.as_bytes()) {
                let raw = &mut *self.0;
                let start = raw.arena.len();
                raw.arena.extend_from_slice(name.as_bytes());
                if raw.arena.len() > u32::MAX as usize {
                    return Err(de::Error::custom("more than 4 GiB of file names"));
                }
                raw.spans
                    .push((start as u32, raw.arena.len() as u32, flags));
            }
        }
        Ok(())
    }
}

/// One `BackupFileDescription`, to its two flags.
struct DescSeed;

impl<'de> DeserializeSeed<'de> for DescSeed {
    type Value = u8;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u8, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DescSeed {
    type Value = u8;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a file description object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u8, A::Error> {
        let mut flags = 0;
        while let Some(key) = map.next_key::<String>()? {
            if is_key(&key, "IsIncremented") {
                if map.next_value::<Option<bool>>()?.unwrap_or(false) {
                    flags |= INCREMENTED;
                }
            } else if is_key(&key, "IsSkipped") {
                if map.next_value::<Option<bool>>()?.unwrap_or(false) {
                    flags |= SKIPPED;
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(flags)
    }
}

struct TarsSeed<'a, 'k>(&'a mut Raw<'k>);

impl<'de> DeserializeSeed<'de> for TarsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TarsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the TarFileSets object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(tar) = map.next_key::<String>()? {
            let mut names = match self.0.sorted {
                Some(_) => Names::Resolved(Vec::new()),
                None => Names::Pending {
                    arena: Vec::new(),
                    ends: Vec::new(),
                },
            };
            map.next_value_seed(Nullable(NamesSeed {
                keep: self.0.keep,
                files: self.0.sorted.as_ref(),
                out: &mut names,
            }))?;
            self.0.tars.get_or_insert_with(Vec::new).push((tar, names));
        }
        Ok(())
    }
}

struct NamesSeed<'a, 'k> {
    keep: &'k dyn Fn(&[u8]) -> bool,
    files: Option<&'a FileSet>,
    out: &'a mut Names,
}

impl<'de> DeserializeSeed<'de> for NamesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for NamesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of member names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(name) = seq.next_element::<String>()? {
            if !(self.keep)(name.as_bytes()) {
                continue;
            }
            match (&mut *self.out, self.files) {
                (Names::Resolved(m), Some(files)) => {
                    if let Some(i) = files.index(name.as_bytes()) {
                        m.push(i as u32);
                    }
                }
                (Names::Pending { arena, ends }, _) => {
                    arena.extend_from_slice(name.as_bytes());
                    ends.push(arena.len() as u32);
                }
                (Names::Resolved(_), None) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"Files":{"/base":{"IsIncremented":false,"IsSkipped":false,"MTime":"2026-08-21T19:55:01.5+02:00","UpdatesCount":0},
  "/base/5/1259":{"IsIncremented":true,"IsSkipped":false,"MTime":"2026-08-21T20:01:12.871532011+02:00","UpdatesCount":0,
     "CorruptBlocks":{"CorruptBlocksCount":1,"SomeCorruptBlocks":[3]}},
  "/base/5/2619":{"isskipped":true,"MTime":"2026-08-20T03:10:44.102+02:00"}},
 "TarFileSets":{"part_001.tar.lz4":["/base","/base/5/1259","/gone"],"backup_label.tar.lz4":["tablespace_map","backup_label"]},
 "DatabasesByNames":{"postgres":{"oid":5,"tables_new":{"pg_catalog.pg_class":{"oid":1259,"relfilenode":1259}}}}}"#;

    #[test]
    fn reads_flags_and_tar_sets() {
        let m = read(SAMPLE.as_bytes(), &|_| true).unwrap();
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files_listed, 3);
        assert_eq!(m.files.flags(b"/base"), Some(0));
        assert_eq!(m.files.flags(b"/base/5/1259"), Some(INCREMENTED));
        assert_eq!(m.files.flags(b"/base/5/2619"), Some(SKIPPED));
        assert_eq!(m.files.flags(b"/base/5"), None);
        let part = m.tar_set("part_001.tar.lz4").unwrap();
        let names: Vec<&[u8]> = part
            .members
            .iter()
            .map(|&i| m.files.name(i as usize))
            .collect();
        assert_eq!(names, [&b"/base"[..], b"/base/5/1259"]);
        assert!(m
            .tar_set("backup_label.tar.lz4")
            .unwrap()
            .members
            .is_empty());
        assert!(m.tar_set("part_002.tar.lz4").is_none());
    }

    #[test]
    fn tar_sets_before_files() {
        let text =
            r#"{"TarFileSets":{"p1":["/b","/a","/zz"]},"Files":{"/a":{"IsSkipped":true},"/b":{}}}"#;
        let m = read(text.as_bytes(), &|_| true).unwrap();
        let p = m.tar_set("p1").unwrap();
        let names: Vec<&[u8]> = p
            .members
            .iter()
            .map(|&i| m.files.name(i as usize))
            .collect();
        assert_eq!(names, [&b"/b"[..], b"/a"]);
        assert_eq!(m.files.flags(b"/a"), Some(SKIPPED));
    }

    #[test]
    fn a_list_given_twice_is_refused() {
        // Go matches keys ignoring case: "files" is "Files" again.
        let text =
            r#"{"Files":{"/a":{},"/b":{},"/c":{}},"TarFileSets":{"p1":["/c"]},"files":{"/a":{}}}"#;
        let e = read(text.as_bytes(), &|_| true).err().unwrap();
        assert!(e.contains("\"files\" appears twice"), "{e}");
        let text = r#"{"TarFileSets":{"p1":["/c"]},"Files":{"/c":{}},"tarFileSets":{"p2":["/c"]}}"#;
        let e = read(text.as_bytes(), &|_| true).err().unwrap();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn keeps_only_what_is_asked() {
        let m = read(SAMPLE.as_bytes(), &|n| n.starts_with(b"/base/")).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files_listed, 3);
        assert_eq!(m.tar_set("part_001.tar.lz4").unwrap().members.len(), 1);
    }

    #[test]
    fn empty_and_null_parts() {
        let m = read(&b"{}"[..], &|_| true).unwrap();
        assert!(m.files.is_empty() && m.tar_sets.is_none());
        let m = read(&br#"{"Files":null,"TarFileSets":null}"#[..], &|_| true).unwrap();
        assert!(m.files.is_empty());
        assert!(read(&b"{\"Files\":[]}"[..], &|_| true).is_err());
        assert!(read(&b"{\"Files\":{}} x"[..], &|_| true).is_err());
        assert!(read(&b"{\"Files\":{\"/a\":{\"IsSkipped\""[..], &|_| true).is_err());
    }

    /// What a 200k-file backup costs: the kept structure's heap bytes and
    /// the process's resident set growth while decoding it from a file.
    /// `cargo test --release metadata_read -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn memory_for_200k_files() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("walden-fm-{}.json", std::process::id()));
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            write!(f, "{{\"Files\":{{").unwrap();
            let n = 200_000;
            for i in 0..n {
                let sep = if i + 1 < n { "," } else { "" };
                write!(f, "\"/base/{}/{}.{}\":{{\"IsIncremented\":{},\"IsSkipped\":{},\"MTime\":\"2026-08-21T20:01:12.871532011+02:00\",\"UpdatesCount\":0}}{sep}",
                    16384 + i % 7, 16385 + i / 3, i % 3, i % 5 == 0, i % 5 == 1).unwrap();
            }
            write!(f, "}},\"TarFileSets\":{{").unwrap();
            for t in 0..200 {
                let sep = if t + 1 < 200 { "," } else { "" };
                let names: Vec<String> = (t * 1000..(t + 1) * 1000)
                    .map(|i| format!("\"/base/{}/{}.{}\"", 16384 + i % 7, 16385 + i / 3, i % 3))
                    .collect();
                write!(
                    f,
                    "\"part_{:03}.tar.lz4\":[{}]{sep}",
                    t + 1,
                    names.join(",")
                )
                .unwrap();
            }
            write!(f, "}}}}").unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        let rss = || {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        let before = rss();
        let start = std::time::Instant::now();
        let m = read(std::fs::File::open(&path).unwrap(), &|_| true).unwrap();
        let took = start.elapsed();
        let after = rss();
        println!(
            "files_metadata.json of {} files, {size} bytes: decoded in {took:?}; kept {} heap bytes ({:.1} B/file); RSS +{} bytes",
            m.files.len(),
            m.heap_bytes(),
            m.heap_bytes() as f64 / m.files.len() as f64,
            after.saturating_sub(before)
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.files.len(), 200_000);
        assert!(m.heap_bytes() < 10 << 20);
    }
}
