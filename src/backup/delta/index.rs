//! The delta base's `Files` map (spec §3.3, §6.2), for the per-file
//! decision: was the file in the base, and with which mtime.
//!
//! WAL-G loads the whole map into memory (W3: GBs for millions of files).
//! Here `files_metadata.json` is streamed from storage one entry at a time
//! into an unlinked temporary file, then placed into an open-addressing
//! hash table in a second unlinked file, read with `pread` per lookup: the
//! process's memory does not grow with the number of files (the table
//! lives in the page cache, which the kernel can evict). A slot holds
//! 128 bits of the member name's SHA-256, so two names colliding is not a
//! practical concern (a collision could only make a changed file look
//! like the base's one: 2^-128 per pair).
//!
//! The copy composer (`composer/copy.rs`) also needs which tar of the
//! previous backup holds each file: [`BaseIndex::load_with_tars`] reads
//! `TarFileSets` too, numbers its tars in the order they come and keeps
//! each file's tar number in its slot.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;

use crate::backup::layout;
use crate::error::{Error, Result};
use crate::storage::Storage;

const SLOT: u64 = 32;
/// Slot flag: occupied. Mtime known: second flag.
const USED: u32 = 1;
const HAS_TIME: u32 = 2;
const HAS_TAR: u32 = 4;
/// The tar number sits in the flags word above this bit.
const TAR_SHIFT: u32 = 8;
/// Tar numbers must fit in the bits above [`TAR_SHIFT`].
pub const MAX_TARS: u32 = 1 << (32 - TAR_SHIFT);

/// One base entry as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseFile {
    /// `MTime` as an instant, if the entry had one walden could read.
    pub mtime: Option<SystemTime>,
    /// The number of the tar `TarFileSets` lists it in (only with
    /// [`BaseIndex::load_with_tars`]).
    pub tar: Option<u32>,
}

pub struct BaseIndex {
    table: File,
    mask: u64,
    pub entries: u64,
}

fn key_of(name: &[u8]) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, name);
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// 16 bytes key, i64 seconds, u32 nanoseconds, u32 flags (tar number in
/// the high bits).
fn encode(key: &[u8; 16], mtime: Option<SystemTime>, tar: Option<u32>) -> [u8; SLOT as usize] {
    let mut s = [0u8; SLOT as usize];
    s[..16].copy_from_slice(key);
    let mut flags = USED;
    if let Some(t) = tar {
        flags |= HAS_TAR | (t << TAR_SHIFT);
    }
    if let Some(d) = mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        s[16..24].copy_from_slice(&(d.as_secs() as i64).to_le_bytes());
        s[24..28].copy_from_slice(&d.subsec_nanos().to_le_bytes());
        flags |= HAS_TIME;
    }
    s[28..32].copy_from_slice(&flags.to_le_bytes());
    s
}

fn decode(s: &[u8; SLOT as usize]) -> (u32, BaseFile) {
    let flags = u32::from_le_bytes([s[28], s[29], s[30], s[31]]);
    let mtime = (flags & HAS_TIME != 0).then(|| {
        let secs = i64::from_le_bytes(s[16..24].try_into().unwrap_or_default());
        let nanos = u32::from_le_bytes(s[24..28].try_into().unwrap_or_default());
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos)
    });
    let tar = (flags & HAS_TAR != 0).then_some(flags >> TAR_SHIFT);
    (flags, BaseFile { mtime, tar })
}

/// One slot from two records of the same name: a `Files` entry and a
/// `TarFileSets` one (each field from the record that has it, the later
/// one when both do, as a Go map keeps a duplicate's last value).
fn merge(old: &[u8; SLOT as usize], new: &[u8; SLOT as usize]) -> [u8; SLOT as usize] {
    let (_, a) = decode(old);
    let (_, b) = decode(new);
    let mut key = [0u8; 16];
    key.copy_from_slice(&new[..16]);
    encode(&key, b.mtime.or(a.mtime), b.tar.or(a.tar))
}

/// Called with each `TarFileSets` (tar, member) pair; returns the tar's
/// number.
pub type SetSink<'a> = dyn FnMut(&str, &str) -> std::io::Result<u32> + 'a;

impl BaseIndex {
    /// Stream `files_metadata.json` of backup `name` into an index.
    pub fn load(storage: &Arc<dyn Storage>, name: &str) -> Result<BaseIndex> {
        let key = layout::files_metadata_key(name);
        match storage.get(&key, 0) {
            Ok(reader) => Self::from_reader(reader, &key),
            // WAL-G goes on with an empty list: every file is stored whole.
            Err(e) if e.is_not_found() => {
                log::warn!(
                    "the delta base {name} has no '{key}': every file of this delta is stored whole"
                );
                Self::from_reader(&b"{}"[..], &key)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn from_reader(reader: impl Read, key: &str) -> Result<BaseIndex> {
        Self::build(reader, key, None)
    }

    /// [`BaseIndex::load`] that also reads `TarFileSets`: `sets` gets every
    /// (tar, member) pair and numbers the tars; the index keeps each
    /// member's number. A missing `files_metadata.json` is an error here
    /// (the caller decides what to do without one).
    pub fn load_with_tars(
        storage: &Arc<dyn Storage>,
        name: &str,
        sets: &mut SetSink,
    ) -> Result<BaseIndex> {
        let key = layout::files_metadata_key(name);
        let reader = storage.get(&key, 0)?;
        Self::build(reader, &key, Some(sets))
    }

    fn build(reader: impl Read, key: &str, mut sets: Option<&mut SetSink>) -> Result<BaseIndex> {
        let spill = crate::localfile::anonymous_file("the delta base's file list")?;
        let mut out = BufWriter::with_capacity(64 * 1024, spill);
        let mut count = 0u64;
        let mut write_err: Option<std::io::Error> = None;
        let want_sets = sets.is_some();
        {
            let mut sink = |name: &str, mtime: Option<SystemTime>, tar: Option<(&str, &str)>| {
                if write_err.is_some() {
                    return;
                }
                count += 1;
                let result = match tar {
                    Some((tar, member)) => match sets.as_mut().map(|f| f(tar, member)) {
                        Some(Ok(n)) if n < MAX_TARS => {
                            out.write_all(&encode(&key_of(member.as_bytes()), None, Some(n)))
                        }
                        Some(Ok(_)) => Err(std::io::Error::other("more tars than walden numbers")),
                        Some(Err(e)) => Err(e),
                        None => Ok(()),
                    },
                    None => out.write_all(&encode(&key_of(name.as_bytes()), mtime, None)),
                };
                if let Err(e) = result {
                    write_err = Some(e);
                }
            };
            visit_files_metadata(reader, want_sets, &mut sink).map_err(|e| {
                    Error::Other(format!(
                        "reading the delta base's '{key}': {e}; its files_metadata.json is damaged, take a full backup (--full)"
                    ))
                })?;
        }
        let io_failed = |e| Error::io("writing the delta base's file list to a temporary file", e);
        if let Some(e) = write_err {
            return Err(io_failed(e));
        }
        let mut spill = out.into_inner().map_err(|e| io_failed(e.into_error()))?;
        let cap = (count * 2).next_power_of_two().max(16);
        let table = crate::localfile::anonymous_file("the delta base's file index")?;
        table.set_len(cap * SLOT).map_err(io_failed)?;
        let index = BaseIndex {
            table,
            mask: cap - 1,
            entries: count,
        };
        spill.rewind().map_err(io_failed)?;
        let mut input = BufReader::with_capacity(64 * 1024, spill);
        let mut rec = [0u8; SLOT as usize];
        for _ in 0..count {
            input.read_exact(&mut rec).map_err(io_failed)?;
            index.insert(&rec).map_err(io_failed)?;
        }
        Ok(index)
    }

    fn home(&self, key: &[u8]) -> u64 {
        u64::from_le_bytes(key[..8].try_into().unwrap_or_default()) & self.mask
    }

    fn insert(&self, rec: &[u8; SLOT as usize]) -> std::io::Result<()> {
        let mut i = self.home(&rec[..16]);
        let mut slot = [0u8; SLOT as usize];
        loop {
            self.table.read_exact_at(&mut slot, i * SLOT)?;
            let (flags, _) = decode(&slot);
            if flags & USED == 0 {
                return self.table.write_all_at(rec, i * SLOT);
            }
            if slot[..16] == rec[..16] {
                return self.table.write_all_at(&merge(&slot, rec), i * SLOT);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The base's entry for member `name`, if it has one.
    pub fn get(&self, name: &[u8]) -> Result<Option<BaseFile>> {
        let key = key_of(name);
        let mut i = self.home(&key);
        let mut slot = [0u8; SLOT as usize];
        loop {
            self.table
                .read_exact_at(&mut slot, i * SLOT)
                .map_err(|e| Error::io("reading the delta base's file list (temporary file)", e))?;
            let (flags, file) = decode(&slot);
            if flags & USED == 0 {
                return Ok(None);
            }
            if slot[..16] == key {
                return Ok(Some(file));
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// (name, MTime) of a `Files` entry, or (tar, member) of a `TarFileSets`
/// one as the third argument.
pub type Sink<'a> = dyn FnMut(&str, Option<SystemTime>, Option<(&str, &str)>) + 'a;

/// Stream a `files_metadata.json` into `sink`: each `Files` entry, and
/// with `sets` each `TarFileSets` member, without holding the document
/// (a large cluster lists millions of files).
pub fn visit_files_metadata(
    reader: impl Read,
    sets: bool,
    sink: &mut Sink<'_>,
) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, reader));
    de.deserialize_map(TopVisitor { sink, sets })
}

/// `{"Files":{...},"TarFileSets":...}`: `Files` is looked into, and
/// `TarFileSets` when `sets` (keys matched ignoring case, as WAL-G's
/// decoder does).
struct TopVisitor<'a, 'b> {
    sink: &'a mut Sink<'b>,
    sets: bool,
}

impl<'de> Visitor<'de> for TopVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a files_metadata.json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(k) = map.next_key::<String>()? {
            if k.eq_ignore_ascii_case("Files") {
                map.next_value_seed(FilesSeed { sink: self.sink })?;
            } else if self.sets && k.eq_ignore_ascii_case("TarFileSets") {
                map.next_value_seed(SetsSeed { sink: self.sink })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct FilesSeed<'a, 'b> {
    sink: &'a mut Sink<'b>,
}

impl<'de> DeserializeSeed<'de> for FilesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FilesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the Files object")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            let mtime = map.next_value_seed(DescSeed)?;
            (self.sink)(&name, mtime, None);
        }
        Ok(())
    }
}

/// `TarFileSets`: `{"part_001.tar.lz4":["/base",...],...}`, streamed.
struct SetsSeed<'a, 'b> {
    sink: &'a mut Sink<'b>,
}

impl<'de> DeserializeSeed<'de> for SetsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SetsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the TarFileSets object")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(tar) = map.next_key::<String>()? {
            map.next_value_seed(SetSeed {
                tar: &tar,
                sink: &mut *self.sink,
            })?;
        }
        Ok(())
    }
}

/// One tar's member list.
struct SetSeed<'a, 'b, 'c> {
    tar: &'c str,
    sink: &'a mut Sink<'b>,
}

impl<'de> DeserializeSeed<'de> for SetSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SetSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of tar members")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(member) = seq.next_element::<String>()? {
            (self.sink)("", None, Some((self.tar, &member)));
        }
        Ok(())
    }
}

/// One `BackupFileDescription`: its `MTime`.
struct DescSeed;

impl<'de> DeserializeSeed<'de> for DescSeed {
    type Value = Option<SystemTime>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DescSeed {
    type Value = Option<SystemTime>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a file description object")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut mtime = None;
        while let Some(k) = map.next_key::<String>()? {
            if k.eq_ignore_ascii_case("MTime") {
                let v: Option<String> = map.next_value()?;
                mtime = v.as_deref().and_then(crate::time::parse_iso8601);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_walg_entries_by_name_with_their_instant() {
        let json = r#"{"Files":{"/base":{"IsIncremented":false,"IsSkipped":false,"MTime":"2026-08-21T19:55:01.5+02:00","UpdatesCount":0},
          "/base/5/1259":{"IsIncremented":true,"IsSkipped":false,"MTime":"2026-08-21T20:01:12.871532011+02:00","UpdatesCount":0},
          "/base/5/2619":{"isskipped":true,"mtime":"2026-08-20T03:10:44.102+02:00"},
          "/odd":{}},
          "TarFileSets":{"part_001.tar.lz4":["/base","/base/5/1259"]},
          "DatabasesByNames":{"postgres":{"oid":5}}}"#;
        let idx = BaseIndex::from_reader(json.as_bytes(), "k").unwrap();
        assert_eq!(idx.entries, 4);
        let t = idx.get(b"/base/5/1259").unwrap().unwrap().mtime.unwrap();
        assert_eq!(
            crate::time::rfc3339_nano(t),
            "2026-08-21T18:01:12.871532011Z"
        );
        assert!(idx.get(b"/base/5/2619").unwrap().unwrap().mtime.is_some());
        assert_eq!(
            idx.get(b"/odd").unwrap(),
            Some(BaseFile {
                mtime: None,
                tar: None
            })
        );
        assert_eq!(idx.get(b"/base/5/9999").unwrap(), None);
        assert_eq!(idx.get(b"part_001.tar.lz4").unwrap(), None);
    }

    #[test]
    fn tar_numbers_with_their_files_in_either_order() {
        // WAL-G's keys come in any order: TarFileSets before Files here.
        let json = r#"{"TarFileSets":{"part_001.tar.lz4":["/base","/base/5/1259"],"part_002.tar.lz4":["/gone"]},
          "Files":{"/base":{"MTime":"2026-08-21T19:55:01.5+02:00"},
          "/base/5/1259":{"MTime":"2026-08-21T20:01:12.871532011+02:00"},"/alone":{"MTime":"2026-08-21T20:01:12Z"}}}"#;
        let mut seen: Vec<(String, String)> = Vec::new();
        let idx = BaseIndex::build(
            json.as_bytes(),
            "k",
            Some(&mut |tar: &str, member: &str| {
                seen.push((tar.into(), member.into()));
                Ok(if tar == "part_001.tar.lz4" { 0 } else { 1 })
            }),
        )
        .unwrap();
        assert_eq!(seen.len(), 3);
        let f = idx.get(b"/base/5/1259").unwrap().unwrap();
        assert_eq!(f.tar, Some(0));
        assert!(f.mtime.is_some());
        let gone = idx.get(b"/gone").unwrap().unwrap();
        assert_eq!((gone.tar, gone.mtime), (Some(1), None));
        let alone = idx.get(b"/alone").unwrap().unwrap();
        assert_eq!(alone.tar, None);
        assert!(alone.mtime.is_some());
        // Without a sink TarFileSets is not looked into.
        let plain = BaseIndex::from_reader(json.as_bytes(), "k").unwrap();
        assert_eq!(plain.get(b"/gone").unwrap(), None);
        assert_eq!(plain.get(b"/base").unwrap().unwrap().tar, None);
    }

    #[test]
    fn many_entries_and_no_files() {
        let mut json = String::from("{\"Files\":{");
        for i in 0..5000 {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!(
                "\"/base/1/{i}\":{{\"MTime\":\"2026-01-01T00:00:{:02}Z\"}}",
                i % 60
            ));
        }
        json.push_str("}}");
        let idx = BaseIndex::from_reader(json.as_bytes(), "k").unwrap();
        for i in (0..5000).step_by(7) {
            let t = idx
                .get(format!("/base/1/{i}").as_bytes())
                .unwrap()
                .unwrap()
                .mtime
                .unwrap();
            assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs() % 60, i % 60);
        }
        assert_eq!(idx.get(b"/base/1/5000").unwrap(), None);
        let empty = BaseIndex::from_reader(&b"{\"TarFileSets\":{}}"[..], "k").unwrap();
        assert_eq!(empty.get(b"/base").unwrap(), None);
        assert!(BaseIndex::from_reader(&b"{\"Files\":"[..], "k").is_err());
    }
}
