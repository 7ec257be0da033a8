//! The backups in storage, as WAL-G sees them (spec walg-wal-admin §9.1):
//! a backup is a sentinel object `basebackups_005/NAME_backup_stop_sentinel.json`
//! directly under `basebackups_005/`, dated by the sentinel's modification
//! time. One non-recursive listing gives the names; a sentinel or a
//! `metadata.json` is read only when asked for, one at a time, size-capped.

use std::io::Read;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::gotime::GoTime;
use super::layout;
use crate::error::{Error, Result};
use crate::storage::{Entry, Storage};

/// A sentinel or metadata.json is a few hundred bytes (user data aside);
/// anything this large is not one, and is not read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// One backup of the listing. Small on purpose: a catalog holds one per
/// backup, never a sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEntry {
    pub name: String,
    /// The first run of 24 upper-case hex digits of the key, or 24 `Z`
    /// (WAL-G's `StripWalFileName`).
    pub wal_file_name: String,
    /// The sentinel's modification time; `None` if the storage gave none.
    pub modified: Option<SystemTime>,
}

impl BackupEntry {
    pub fn time(&self) -> Option<GoTime> {
        self.modified.map(GoTime::utc)
    }
}

/// WAL-G's `StripRightmostBackupName`: the key's last part up to its first
/// `_backup`.
fn name_of(base: &str) -> &str {
    base.split("_backup").next().unwrap_or(base)
}

/// WAL-G's `StripWalFileName`: the key's first run of 24 hex digits, or
/// 24 `Z` when it has none.
fn wal_file_name(key: &str) -> String {
    super::retention::hex_run(key).map_or_else(|| "Z".repeat(24), str::to_string)
}

/// Every backup (finished: it has its sentinel), oldest first: ordered by
/// the sentinel's modification time, ties kept in listing order (WAL-G's
/// stable sort). Backups without a time sort first, as Go's zero time.
pub fn list(storage: &Arc<dyn Storage>) -> Result<Vec<BackupEntry>> {
    let mut out = Vec::new();
    storage.list(layout::BASEBACKUPS, false, &mut |e| {
        if let Entry::Object(o) = e {
            let base = o.key.strip_prefix(layout::BASEBACKUPS).unwrap_or(&o.key);
            if base.ends_with(layout::SENTINEL_SUFFIX) && !base.contains('/') {
                out.push(BackupEntry {
                    name: name_of(base).to_string(),
                    wal_file_name: wal_file_name(&o.key),
                    modified: o.modified,
                });
            }
        }
        Ok(())
    })?;
    out.sort_by_key(|e| e.modified);
    Ok(out)
}

/// The backup `LATEST` means: the last of [`list`] (WAL-G's
/// `GetLatestBackup`). `None` when there is none.
pub fn latest(storage: &Arc<dyn Storage>) -> Result<Option<BackupEntry>> {
    Ok(list(storage)?.pop())
}

/// The message for an empty `basebackups_005/` where a backup was needed.
pub fn no_backups(storage: &Arc<dyn Storage>) -> Error {
    Error::Other(format!(
        "no backups found in {}: there is no finished backup (sentinel) under {}",
        storage.location(),
        layout::BASEBACKUPS
    ))
}

/// `NAME` or `LATEST` to a backup of the catalog, with a message that says
/// what to do when there is none.
pub fn find(storage: &Arc<dyn Storage>, wanted: &str, usage: &str) -> Result<BackupEntry> {
    if wanted == "LATEST" {
        return latest(storage)?.ok_or_else(|| no_backups(storage));
    }
    check_name(wanted, usage)?;
    match storage.stat(&layout::sentinel_key(wanted))? {
        Some(o) => Ok(BackupEntry {
            name: wanted.to_string(),
            wal_file_name: wal_file_name(&o.key),
            modified: o.modified,
        }),
        None => Err(not_found(storage, wanted)),
    }
}

pub fn check_name(name: &str, usage: &str) -> Result<()> {
    if layout::valid_name(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "'{name}' is not a backup name (base_...); usage: {usage}"
        )))
    }
}

pub fn not_found(storage: &Arc<dyn Storage>, name: &str) -> Error {
    Error::Other(format!(
        "backup {name} not found in {}: it has no sentinel '{}' (an unfinished backup has none); \
         'walden backup-list' shows the backups there are",
        storage.location(),
        layout::sentinel_key(name)
    ))
}

/// Read a small JSON object whole, refusing more than [`MAX_JSON`] bytes.
pub fn read_json_bytes(storage: &Arc<dyn Storage>, key: &str, what: &str) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    storage
        .get(key, 0)
        .map_err(|e| {
            if e.is_not_found() {
                Error::Other(format!(
                    "the {what} '{key}' does not exist in {}",
                    storage.location()
                ))
            } else {
                e.into()
            }
        })?
        .take(MAX_JSON + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::Other(format!("reading the {what} '{key}': {e}")))?;
    if text.len() as u64 > MAX_JSON {
        return Err(Error::Other(format!(
            "the {what} '{key}' is larger than {} MiB: it is not one written by WAL-G or walden",
            MAX_JSON >> 20
        )));
    }
    Ok(text)
}

fn parse_object(bytes: &[u8], key: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Other(format!(
            "the {what} '{key}' is not a JSON object; the backup's objects are damaged"
        ))),
        Err(e) => Err(Error::Other(format!(
            "the {what} '{key}' is not valid JSON ({e}); the backup's objects are damaged"
        ))),
    }
}

pub fn read_sentinel(storage: &Arc<dyn Storage>, name: &str) -> Result<Map<String, Value>> {
    let key = layout::sentinel_key(name);
    parse_object(
        &read_json_bytes(storage, &key, "sentinel")?,
        &key,
        "sentinel",
    )
}

/// A key of WAL-G's JSON as Go's decoder finds it: the exact name, else
/// any key equal ignoring ASCII case.
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The backup a delta backup was taken against (`DeltaFrom`).
pub fn delta_from(sentinel: &Map<String, Value>) -> Option<String> {
    match field(sentinel, "DeltaFrom")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// `metadata.json` (WAL-G's `ExtendedMetadataDto`), typed. Missing keys
/// take Go's zero values, as WAL-G's decoder gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub start_time: Option<GoTime>,
    pub finish_time: Option<GoTime>,
    pub date_fmt: String,
    pub hostname: String,
    pub data_dir: String,
    pub pg_version: i64,
    pub start_lsn: u64,
    pub finish_lsn: u64,
    pub is_permanent: bool,
    pub system_identifier: Option<u64>,
    pub uncompressed_size: i64,
    pub compressed_size: i64,
    pub user_data: Option<Value>,
    /// Corrupt pages a `--verify` backup-push found (walden's own key;
    /// `None` when the backup was not verified).
    pub corrupt_pages: Option<u64>,
}

impl Metadata {
    pub fn from_json(obj: &Map<String, Value>, key: &str) -> Result<Metadata> {
        let bad = |name: &str, want: &str| {
            Error::Other(format!(
                "'{key}': field {name} is not {want}; the backup's metadata is damaged"
            ))
        };
        let time = |name: &str| -> Result<Option<GoTime>> {
            match field(obj, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => match GoTime::parse(s) {
                    Some(t) => Ok(Some(t)),
                    None if s == super::gotime::ZERO_JSON => Ok(None),
                    None => Err(bad(name, "an RFC 3339 time")),
                },
                Some(_) => Err(bad(name, "an RFC 3339 time")),
            }
        };
        let string = |name: &str| -> Result<String> {
            match field(obj, name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(bad(name, "a string")),
            }
        };
        let int = |name: &str| -> Result<i64> {
            match field(obj, name) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v.as_i64().ok_or_else(|| bad(name, "an integer")),
            }
        };
        let uint = |name: &str| -> Result<Option<u64>> {
            match field(obj, name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(name, "an unsigned integer")),
            }
        };
        Ok(Metadata {
            start_time: time("start_time")?,
            finish_time: time("finish_time")?,
            date_fmt: string("date_fmt")?,
            hostname: string("hostname")?,
            data_dir: string("data_dir")?,
            pg_version: int("pg_version")?,
            start_lsn: uint("start_lsn")?.unwrap_or(0),
            finish_lsn: uint("finish_lsn")?.unwrap_or(0),
            is_permanent: match field(obj, "is_permanent") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("is_permanent", "true or false")),
            },
            system_identifier: uint("system_identifier")?,
            uncompressed_size: int("uncompressed_size")?,
            compressed_size: int("compressed_size")?,
            user_data: match field(obj, "user_data") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.clone()),
            },
            corrupt_pages: field(obj, super::sentinel::CORRUPT_PAGES_KEY).and_then(Value::as_u64),
        })
    }
}

pub fn read_metadata(storage: &Arc<dyn Storage>, name: &str) -> Result<Metadata> {
    let key = layout::metadata_key(name);
    let obj = parse_object(
        &read_json_bytes(storage, &key, "metadata")?,
        &key,
        "metadata",
    )?;
    Metadata::from_json(&obj, &key)
}

/// `X/Y`, PostgreSQL's and WAL-G's (`%X/%X`) way of printing an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_walg_strips_them() {
        assert_eq!(
            name_of("base_000000010000000000000002_backup_stop_sentinel.json"),
            "base_000000010000000000000002"
        );
        assert_eq!(
            name_of("base_00000001000000000000000B_D_000000010000000000000002_backup_stop_sentinel.json"),
            "base_00000001000000000000000B_D_000000010000000000000002"
        );
        assert_eq!(
            wal_file_name("basebackups_005/base_00000001000000000000000B_D_000000010000000000000002_backup_stop_sentinel.json"),
            "00000001000000000000000B"
        );
        assert_eq!(
            wal_file_name("basebackups_005/mine_backup_stop_sentinel.json"),
            "Z".repeat(24)
        );
        assert_eq!(lsn_text(0x1_0000_0028), "1/28");
    }

    #[test]
    fn metadata_decodes_like_go() {
        let obj: Map<String, Value> = serde_json::from_str(
            r#"{"start_time":"2026-08-21T18:02:35.123457Z","Finish_Time":"0001-01-01T00:00:00Z","pg_version":150014,
                "start_lsn":83886120,"is_permanent":true,"system_identifier":null,"user_data":{"a":1}}"#,
        )
        .unwrap();
        let m = Metadata::from_json(&obj, "k").unwrap();
        assert_eq!(
            m.start_time.unwrap().rfc3339_nano(),
            "2026-08-21T18:02:35.123457Z"
        );
        assert_eq!(m.finish_time, None);
        assert_eq!(m.pg_version, 150014);
        assert!(m.is_permanent);
        assert_eq!(m.system_identifier, None);
        assert_eq!(m.hostname, "");
        let bad: Map<String, Value> = serde_json::from_str(r#"{"start_lsn":"0/1"}"#).unwrap();
        let e = Metadata::from_json(&bad, "k").unwrap_err().to_string();
        assert!(e.contains("start_lsn"), "{e}");
    }
}
