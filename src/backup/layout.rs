//! Every object key of a base backup, and the backup name, as WAL-G
//! spells them (spec §1.1, §1.2, §2).

use crate::wal::Segment;

pub const BASEBACKUPS: &str = "basebackups_005/";
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";

/// `base_` + the WAL file name of the segment holding `start_lsn - 1` on
/// `timeline`: what PostgreSQL's `pg_walfile_name(lsn)` returns, so the
/// name is the one WAL-G would give the same backup.
pub fn backup_name(timeline: u32, start_lsn: u64, wal_size_mb: u64) -> String {
    let seg_bytes = wal_size_mb.clamp(1, 1024) << 20;
    let seg = Segment {
        timeline,
        number: start_lsn.saturating_sub(1) / seg_bytes,
    };
    format!("base_{}", seg.name(wal_size_mb))
}

pub fn sentinel_key(name: &str) -> String {
    format!("{BASEBACKUPS}{name}{SENTINEL_SUFFIX}")
}

pub fn metadata_key(name: &str) -> String {
    format!("{BASEBACKUPS}{name}/metadata.json")
}

pub fn files_metadata_key(name: &str) -> String {
    format!("{BASEBACKUPS}{name}/files_metadata.json")
}

pub fn partitions_prefix(name: &str) -> String {
    format!("{BASEBACKUPS}{name}/tar_partitions/")
}

/// `part_001.tar.lz4`: at least three digits; no dot and no extension
/// when compression is `none` (WAL-G's `utility.AddFileExtension`).
pub fn tar_name(stem: &str, ext: &str) -> String {
    if ext.is_empty() {
        format!("{stem}.tar")
    } else {
        format!("{stem}.tar.{ext}")
    }
}

pub fn part_stem(number: u32) -> String {
    format!("part_{number:03}")
}

/// How a tar of a backup is restored relative to the others: WAL-G
/// extracts the pg_control and backup_label tars after all data tars
/// (`tars_to_extract_provider.go`); we also put pg_control last of all,
/// so an interrupted restore never has a pg_control to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TarKind {
    Data,
    Label,
    Control,
}

/// The kind of a tar by its object base name (`^.*?pg_control\.tar(\..+$|$)`).
pub fn tar_kind(base: &str) -> TarKind {
    let is = |stem: &str| {
        base.find(stem).is_some_and(|i| {
            let rest = &base[i + stem.len()..];
            rest.is_empty() || (rest.starts_with('.') && rest.len() > 1)
        })
    };
    if is("pg_control.tar") {
        TarKind::Control
    } else if is("backup_label.tar") {
        TarKind::Label
    } else {
        TarKind::Data
    }
}

/// A backup name given on the command line must name one object, never a
/// path elsewhere in storage.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Text LSN `X/Y` (hex halves, as PostgreSQL prints it) to a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some(((hi as u64) << 32) | lo as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_the_segment_before_the_start_lsn() {
        // Spec §2's worked example: 306/60000028 on timeline 0x43.
        let lsn = parse_lsn("306/60000028").unwrap();
        assert_eq!(lsn, 3325915299880);
        assert_eq!(backup_name(0x43, lsn, 16), "base_000000430000030600000060");
        // Exactly at a segment start: the previous segment.
        assert_eq!(
            backup_name(1, 0x0600_0000, 16),
            "base_000000010000000000000005"
        );
    }

    #[test]
    fn tar_names_and_kinds() {
        assert_eq!(tar_name(&part_stem(1), "lz4"), "part_001.tar.lz4");
        assert_eq!(tar_name(&part_stem(1000), ""), "part_1000.tar");
        assert_eq!(tar_kind("pg_control.tar.lz4"), TarKind::Control);
        assert_eq!(tar_kind("pg_control.tar"), TarKind::Control);
        assert_eq!(tar_kind("backup_label.tar.zst"), TarKind::Label);
        assert_eq!(tar_kind("part_001.tar.lz4"), TarKind::Data);
        assert_eq!(tar_kind("pg_control.tarx"), TarKind::Data);
    }

    #[test]
    fn names_and_lsns_are_checked() {
        assert!(valid_name("base_000000010000000000000005"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert_eq!(parse_lsn("0/5000028"), Some(0x5000028));
        assert_eq!(parse_lsn("zz"), None);
    }
}
