//! `files_metadata.json` (`FilesMetadataDto`, spec §3.3) without holding
//! it in memory: every tar builder appends one line per member to its own
//! unlinked temporary file as it packs; at the end the lines are streamed
//! twice into the object, once as `Files` and once, grouped by tar, as
//! `TarFileSets` (a builder fills one tar at a time, so each tar's members
//! are one run of lines in one spill file).
//!
//! Spill line: `<tar object name> TAB <member as a JSON string> TAB <MTime
//! as a JSON string, or empty when the member is not in Files> TAB <flag>`
//! [`TAB <CorruptBlocks JSON>` after `--verify` found some]; JSON holds no
//! raw tab or newline, so the split is unambiguous. The flag is empty, `I`
//! (an increment) or `S` (skipped: unchanged since the delta base, in no
//! tar, so its tar name is empty), followed by the member's `UpdatesCount`
//! in decimal when it is not 0 (rating composer, `composer/rating.rs`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// How a file of a delta backup is stored (`IsIncremented`, `IsSkipped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Whole,
    Incremented,
    Skipped,
}

pub struct Spill {
    out: BufWriter<File>,
    files: u64,
}

impl Spill {
    pub fn new() -> Result<Spill> {
        Ok(Spill {
            out: BufWriter::with_capacity(
                64 * 1024,
                crate::localfile::anonymous_file("files_metadata.json")?,
            ),
            files: 0,
        })
    }

    /// Member `member` assigned to `tar`; `mtime` when it is in `Files`
    /// (a file that vanished before it was read is only in the tar's set).
    #[cfg(test)]
    pub fn record(&mut self, tar: &str, member: &[u8], mtime: Option<SystemTime>) -> Result<()> {
        self.record_as(tar, member, mtime, Flag::Whole, None, 0)
    }

    /// [`Spill::record`] for a member of a delta backup, or with more keys
    /// for the `Files` entry, as JSON (`"CorruptBlocks":{…}` is written
    /// from `{…}`).
    pub fn record_as(
        &mut self,
        tar: &str,
        member: &[u8],
        mtime: Option<SystemTime>,
        flag: Flag,
        corrupt_blocks: Option<&str>,
        updates: u64,
    ) -> Result<()> {
        let name = go_string(&String::from_utf8_lossy(member));
        let time = mtime.map(|t| go_string(&crate::time::rfc3339_nano(t)));
        if time.is_some() {
            self.files += 1;
        }
        let flag = match flag {
            Flag::Whole => "",
            Flag::Incremented => "I",
            Flag::Skipped => "S",
        };
        let extra = corrupt_blocks.map_or_else(String::new, |c| format!("\t{c}"));
        let updates = if updates == 0 {
            String::new()
        } else {
            updates.to_string()
        };
        writeln!(
            self.out,
            "{tar}\t{name}\t{}\t{flag}{updates}{extra}",
            time.unwrap_or_default()
        )
        .map_err(|e| Error::io("writing the files_metadata.json spill file", e))
    }
}

fn go_string(s: &str) -> String {
    super::sentinel::go_json_string(s)
}

/// Stream the whole `files_metadata.json` from the spills into `out`;
/// `extra_sets` are tar sets known only at the end (the label tar);
/// `names` is the `DatabasesByNames` object, already JSON (`names.rs`).
pub fn write_json(
    spills: Vec<Spill>,
    extra_sets: &[(&str, &[&str])],
    names: Option<&mut dyn io::Read>,
    out: &mut dyn Write,
) -> Result<()> {
    let failed = |e| Error::io("assembling files_metadata.json", e);
    let mut files = Vec::with_capacity(spills.len());
    let mut count = 0;
    for s in spills {
        count += s.files;
        let mut f = s.out.into_inner().map_err(|e| failed(e.into_error()))?;
        f.rewind().map_err(failed)?;
        files.push(f);
    }
    out.write_all(b"{").map_err(failed)?;
    let mut first = true;
    if count > 0 {
        out.write_all(b"\"Files\":{").map_err(failed)?;
        for f in &mut files {
            for line in lines(f) {
                let line = line.map_err(failed)?;
                let (_, name, time, flag, corrupt) = split(&line)?;
                if time.is_empty() {
                    continue;
                }
                let corrupt = if corrupt.is_empty() {
                    String::new()
                } else {
                    format!(",\"CorruptBlocks\":{corrupt}")
                };
                if !first {
                    out.write_all(b",").map_err(failed)?;
                }
                first = false;
                let (flag, updates) = flag.split_at(
                    flag.find(|c: char| c.is_ascii_digit())
                        .unwrap_or(flag.len()),
                );
                let updates = if updates.is_empty() { "0" } else { updates };
                write!(
                    out,
                    "{name}:{{\"IsIncremented\":{},\"IsSkipped\":{},\"MTime\":{time}{corrupt},\"UpdatesCount\":{updates}}}",
                    flag == "I",
                    flag == "S"
                )
                .map_err(failed)?;
            }
        }
        out.write_all(b"}").map_err(failed)?;
    }
    // Omitted when empty (Go's omitempty): a remote backup lists no tar
    // sets, as WAL-G's.
    let mut sets_open = false;
    let mut open_sets = |out: &mut dyn Write| -> Result<()> {
        if !sets_open {
            let comma = if count > 0 { "," } else { "" };
            write!(out, "{comma}\"TarFileSets\":{{").map_err(failed)?;
            sets_open = true;
        }
        Ok(())
    };
    let mut first_set = true;
    for f in &mut files {
        f.rewind().map_err(failed)?;
        let mut current: Option<String> = None;
        for line in lines(f) {
            let line = line.map_err(failed)?;
            let (tar, name, _, _, _) = split(&line)?;
            if tar.is_empty() {
                continue;
            }
            if current.as_deref() != Some(tar) {
                open_sets(out)?;
                if current.is_some() {
                    out.write_all(b"]").map_err(failed)?;
                }
                if !first_set {
                    out.write_all(b",").map_err(failed)?;
                }
                first_set = false;
                write!(out, "{}:[{name}", go_string(tar)).map_err(failed)?;
                current = Some(tar.to_string());
            } else {
                write!(out, ",{name}").map_err(failed)?;
            }
        }
        if current.is_some() {
            out.write_all(b"]").map_err(failed)?;
        }
    }
    for (tar, members) in extra_sets {
        open_sets(out)?;
        if !first_set {
            out.write_all(b",").map_err(failed)?;
        }
        first_set = false;
        let list: Vec<String> = members.iter().map(|m| go_string(m)).collect();
        write!(out, "{}:[{}]", go_string(tar), list.join(",")).map_err(failed)?;
    }
    let any = count > 0 || !first_set;
    if !first_set {
        out.write_all(b"}").map_err(failed)?;
    }
    if let Some(names) = names {
        let comma = if any { "," } else { "" };
        write!(out, "{comma}\"DatabasesByNames\":").map_err(failed)?;
        io::copy(names, out).map_err(failed)?;
    }
    out.write_all(b"}").map_err(failed)?;
    Ok(())
}

fn lines(f: &mut File) -> impl Iterator<Item = io::Result<String>> + '_ {
    BufReader::with_capacity(64 * 1024, f).lines()
}

/// (tar, member, MTime, flag, CorruptBlocks), the last two possibly empty.
type SpillLine<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

fn split(line: &str) -> Result<SpillLine<'_>> {
    let mut it = line.splitn(5, '\t');
    match (it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), d, e) => Ok((a, b, c, d.unwrap_or(""), e.unwrap_or(""))),
        _ => Err(Error::Other(
            "internal: a files_metadata.json spill line is damaged".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A remote backup's members are in no tar set: `Files` only, as
    /// WAL-G's `omitempty` leaves out an empty `TarFileSets`.
    #[test]
    fn files_only_without_tar_sets() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        let mut a = Spill::new().unwrap();
        a.record("", b"base/1/2", Some(t)).unwrap();
        a.record("", b"global/pg_control", Some(t)).unwrap();
        let mut out = Vec::new();
        write_json(vec![a], &[], None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Files"].as_object().unwrap().len(), 2, "{text}");
        assert!(v.get("TarFileSets").is_none(), "{text}");
        // Nothing at all is still an object.
        let mut out = Vec::new();
        write_json(vec![Spill::new().unwrap()], &[], None, &mut out).unwrap();
        assert_eq!(out, b"{}");
    }

    #[test]
    fn streams_wal_g_json() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        let mut a = Spill::new().unwrap();
        a.record("part_001.tar.zst", b"/base", Some(t)).unwrap();
        a.record("part_001.tar.zst", b"/base/1/2", Some(t)).unwrap();
        a.record("part_003.tar.zst", b"/gone", None).unwrap();
        let mut b = Spill::new().unwrap();
        b.record("part_002.tar.zst", b"/a<b", Some(t)).unwrap();
        b.record_as(
            "part_002.tar.zst",
            b"/base/5/16384",
            Some(t),
            Flag::Whole,
            Some("{\"CorruptBlocksCount\":1,\"SomeCorruptBlocks\":[3]}"),
            0,
        )
        .unwrap();
        let mut out = Vec::new();
        write_json(
            vec![a, b],
            &[("backup_label.tar.zst", &["tablespace_map", "backup_label"])],
            Some(&mut &br#"{"postgres":{"oid":5}}"#[..]),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "{\"Files\":{\"/base\":{\"IsIncremented\":false,\"IsSkipped\":false,\"MTime\":\"2023-11-14T22:13:20.5Z\",\"UpdatesCount\":0},"
        ), "{text}");
        assert!(text.contains("\"/a\\u003cb\":"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Files"].as_object().unwrap().len(), 4);
        assert_eq!(
            v["Files"]["/base/5/16384"]["CorruptBlocks"],
            serde_json::json!({"CorruptBlocksCount": 1, "SomeCorruptBlocks": [3]})
        );
        assert!(v["Files"]["/base"].get("CorruptBlocks").is_none());
        assert!(v["Files"].get("/gone").is_none());
        assert_eq!(
            v["TarFileSets"]["part_001.tar.zst"],
            serde_json::json!(["/base", "/base/1/2"])
        );
        assert_eq!(
            v["TarFileSets"]["part_003.tar.zst"],
            serde_json::json!(["/gone"])
        );
        assert_eq!(
            v["TarFileSets"]["backup_label.tar.zst"],
            serde_json::json!(["tablespace_map", "backup_label"])
        );
        assert!(
            text.ends_with(r#"]},"DatabasesByNames":{"postgres":{"oid":5}}}"#),
            "{text}"
        );
    }

    #[test]
    fn delta_flags_and_skipped_files_in_no_tar() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        let mut a = Spill::new().unwrap();
        a.record_as(
            "part_001.tar.zst",
            b"/base/1/2",
            Some(t),
            Flag::Incremented,
            None,
            7,
        )
        .unwrap();
        a.record_as("", b"/base/1/3", Some(t), Flag::Skipped, None, 0)
            .unwrap();
        a.record("part_001.tar.zst", b"/base/1/4", Some(t)).unwrap();
        let mut out = Vec::new();
        write_json(vec![a], &[], None, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let f = &v["Files"];
        assert_eq!(f["/base/1/2"]["IsIncremented"], true);
        assert_eq!(f["/base/1/2"]["IsSkipped"], false);
        // The rating composer's count rides on the flag column.
        assert_eq!(f["/base/1/2"]["UpdatesCount"], 7);
        assert_eq!(f["/base/1/3"]["UpdatesCount"], 0);
        assert_eq!(f["/base/1/3"]["IsSkipped"], true);
        assert_eq!(f["/base/1/3"]["IsIncremented"], false);
        assert_eq!(f["/base/1/4"]["IsIncremented"], false);
        assert_eq!(
            v["TarFileSets"],
            serde_json::json!({"part_001.tar.zst": ["/base/1/2", "/base/1/4"]})
        );
    }
}
