//! `files_metadata.json` (`FilesMetadataDto`, spec §3.3) without holding
//! it in memory: every tar builder appends one line per member to its own
//! unlinked temporary file as it packs; at the end the lines are streamed
//! twice into the object, once as `Files` and once, grouped by tar, as
//! `TarFileSets` (a builder fills one tar at a time, so each tar's members
//! are one run of lines in one spill file).
//!
//! Spill line: `<tar object name> TAB <member as a JSON string> TAB <MTime
//! as a JSON string, or empty when the member is not in Files> TAB <flag>`;
//! JSON strings hold no raw tab or newline, so the split is unambiguous.
//! The flag is empty, `I` (an increment) or `S` (skipped: unchanged since
//! the delta base, in no tar, so its tar name is empty).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
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

static SPILL_SEQ: AtomicU64 = AtomicU64::new(0);

impl Spill {
    /// An anonymous file in the temp directory: removed right after it is
    /// created, so a killed backup leaves nothing behind.
    pub fn new() -> Result<Spill> {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "walden-files-metadata-{}-{}",
            std::process::id(),
            SPILL_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let failed = |e| {
            Error::io(
                format!(
                    "creating a temporary file in '{}' for files_metadata.json (set TMPDIR to a writable directory)",
                    dir.display()
                ),
                e,
            )
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        std::fs::remove_file(&path).map_err(failed)?;
        Ok(Spill {
            out: BufWriter::with_capacity(64 * 1024, file),
            files: 0,
        })
    }

    /// Member `member` assigned to `tar`; `mtime` when it is in `Files`
    /// (a file that vanished before it was read is only in the tar's set).
    pub fn record(&mut self, tar: &str, member: &[u8], mtime: Option<SystemTime>) -> Result<()> {
        self.record_as(tar, member, mtime, Flag::Whole)
    }

    /// [`Spill::record`] for a member of a delta backup.
    pub fn record_as(
        &mut self,
        tar: &str,
        member: &[u8],
        mtime: Option<SystemTime>,
        flag: Flag,
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
        writeln!(
            self.out,
            "{tar}\t{name}\t{}\t{flag}",
            time.unwrap_or_default()
        )
        .map_err(|e| Error::io("writing the files_metadata.json spill file", e))
    }
}

fn go_string(s: &str) -> String {
    super::sentinel::go_json_string(s)
}

/// Stream the whole `files_metadata.json` from the spills into `out`;
/// `extra_sets` are tar sets known only at the end (the label tar).
pub fn write_json(
    spills: Vec<Spill>,
    extra_sets: &[(&str, &[&str])],
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
                let (_, name, time, flag) = split(&line)?;
                if time.is_empty() {
                    continue;
                }
                if !first {
                    out.write_all(b",").map_err(failed)?;
                }
                first = false;
                write!(
                    out,
                    "{name}:{{\"IsIncremented\":{},\"IsSkipped\":{},\"MTime\":{time},\"UpdatesCount\":0}}",
                    flag == "I",
                    flag == "S"
                )
                .map_err(failed)?;
            }
        }
        out.write_all(b"},").map_err(failed)?;
    }
    out.write_all(b"\"TarFileSets\":{").map_err(failed)?;
    let mut first_set = true;
    for f in &mut files {
        f.rewind().map_err(failed)?;
        let mut current: Option<String> = None;
        for line in lines(f) {
            let line = line.map_err(failed)?;
            let (tar, name, _, _) = split(&line)?;
            if tar.is_empty() {
                continue;
            }
            if current.as_deref() != Some(tar) {
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
        if !first_set {
            out.write_all(b",").map_err(failed)?;
        }
        first_set = false;
        let list: Vec<String> = members.iter().map(|m| go_string(m)).collect();
        write!(out, "{}:[{}]", go_string(tar), list.join(",")).map_err(failed)?;
    }
    out.write_all(b"}}").map_err(failed)?;
    Ok(())
}

fn lines(f: &mut File) -> impl Iterator<Item = io::Result<String>> + '_ {
    BufReader::with_capacity(64 * 1024, f).lines()
}

fn split(line: &str) -> Result<(&str, &str, &str, &str)> {
    let mut it = line.splitn(4, '\t');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), d) => Ok((a, b, c, d.unwrap_or(""))),
        _ => Err(Error::Other(
            "internal: a files_metadata.json spill line is damaged".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn streams_wal_g_json() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        let mut a = Spill::new().unwrap();
        a.record("part_001.tar.zst", b"/base", Some(t)).unwrap();
        a.record("part_001.tar.zst", b"/base/1/2", Some(t)).unwrap();
        a.record("part_003.tar.zst", b"/gone", None).unwrap();
        let mut b = Spill::new().unwrap();
        b.record("part_002.tar.zst", b"/a<b", Some(t)).unwrap();
        let mut out = Vec::new();
        write_json(
            vec![a, b],
            &[("backup_label.tar.zst", &["tablespace_map", "backup_label"])],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "{\"Files\":{\"/base\":{\"IsIncremented\":false,\"IsSkipped\":false,\"MTime\":\"2023-11-14T22:13:20.5Z\",\"UpdatesCount\":0},"
        ), "{text}");
        assert!(text.contains("\"/a\\u003cb\":"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Files"].as_object().unwrap().len(), 3);
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
    }

    #[test]
    fn delta_flags_and_skipped_files_in_no_tar() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        let mut a = Spill::new().unwrap();
        a.record_as("part_001.tar.zst", b"/base/1/2", Some(t), Flag::Incremented)
            .unwrap();
        a.record_as("", b"/base/1/3", Some(t), Flag::Skipped)
            .unwrap();
        a.record("part_001.tar.zst", b"/base/1/4", Some(t)).unwrap();
        let mut out = Vec::new();
        write_json(vec![a], &[], &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let f = &v["Files"];
        assert_eq!(f["/base/1/2"]["IsIncremented"], true);
        assert_eq!(f["/base/1/2"]["IsSkipped"], false);
        assert_eq!(f["/base/1/3"]["IsSkipped"], true);
        assert_eq!(f["/base/1/3"]["IsIncremented"], false);
        assert_eq!(f["/base/1/4"]["IsIncremented"], false);
        assert_eq!(
            v["TarFileSets"],
            serde_json::json!({"part_001.tar.zst": ["/base/1/2", "/base/1/4"]})
        );
    }
}
