//! One stanza of a pgBackRest repository: its info files loaded with the
//! `.copy` fallback pgBackRest uses (spec §3.3), and what backup.info,
//! archive.info and a manifest say.

use std::io::BufReader;
use std::sync::Arc;

use serde_json::Value;

use super::ini::{self, Ini};
use super::PgbrError;
use crate::error::{Error, Result};
use crate::storage::Storage;

use super::cipher::{Decrypt, MAGIC as SALTED};

pub struct Repo {
    pub storage: Arc<dyn Storage>,
    pub stanza: String,
    /// The repository passphrase (`repo1-cipher-pass`), which opens
    /// backup.info and archive.info of an encrypted repository (§8.3).
    pub cipher_pass: Option<String>,
}

/// One `[backup:current]` entry of backup.info (spec §4).
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub label: String,
    pub kind: String,
    pub prior: Option<String>,
    pub references: Vec<String>,
    pub archive_start: Option<String>,
    pub archive_stop: Option<String>,
    pub lsn_start: Option<String>,
    pub lsn_stop: Option<String>,
    pub timestamp_start: i64,
    pub timestamp_stop: i64,
    pub size: u64,
    pub size_delta: u64,
    pub repo_size: u64,
    pub repo_size_delta: u64,
    /// backup.info carries a block map size only for block-incremental
    /// backups (§11).
    pub block_incremental: bool,
    pub error: bool,
    pub version: String,
    /// The `[db:history]` id the backup was taken under (its archive id
    /// is `<db-version>-<db-id>`).
    pub db_id: Option<u64>,
}

pub struct BackupInfo {
    /// Sorted by label, which is pgBackRest's order (§1.1).
    pub backups: Vec<BackupEntry>,
    /// `[cipher] cipher-pass`: opens every manifest of the stanza.
    pub cipher_pass: Option<String>,
}

/// archive.info (spec §5).
pub struct ArchiveInfo {
    pub db_version: String,
    pub system_id: u64,
    /// `(history id, db-version, system id)`, newest id first.
    pub history: Vec<(u64, String, u64)>,
    /// `[cipher] cipher-pass`: opens every file of the archive.
    pub cipher_pass: Option<String>,
}

/// The parts of a manifest backup-list shows (spec §6.1-6.3).
pub struct ManifestSummary {
    pub db_version: String,
    pub system_id: u64,
    pub compress_type: String,
    pub block_incremental: bool,
    pub bundle: bool,
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn format_err(what: &str, problem: impl Into<String>) -> PgbrError {
    PgbrError::Format {
        what: what.to_string(),
        problem: problem.into(),
    }
}

impl Repo {
    pub fn new(storage: Arc<dyn Storage>, stanza: String) -> Repo {
        Repo {
            storage,
            stanza,
            cipher_pass: None,
        }
    }

    pub fn with_cipher_pass(mut self, pass: Option<String>) -> Repo {
        self.cipher_pass = pass;
        self
    }

    pub fn backup_key(&self, rest: &str) -> String {
        format!("backup/{}/{rest}", self.stanza)
    }

    pub fn archive_key(&self, rest: &str) -> String {
        format!("archive/{}/{rest}", self.stanza)
    }

    /// Load `key`, or `key.copy` when `key` cannot be read for any reason;
    /// both errors are reported when neither can.
    /// `pass` opens the file when the repository is encrypted.
    fn load(&self, key: &str, pass: Option<&str>, keep: &dyn Fn(&str) -> bool) -> Result<Ini> {
        self.load_from(key, pass, keep).map(|(ini, _)| ini)
    }

    /// [`Repo::load`], also saying which of the twins was read.
    pub fn load_from(
        &self,
        key: &str,
        pass: Option<&str>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Ini, String)> {
        let first = match self.load_one(key, pass, keep) {
            Ok(ini) => return Ok((ini, key.to_string())),
            Err(e) => e,
        };
        let copy = format!("{key}.copy");
        match self.load_one(&copy, pass, keep) {
            Ok(ini) => {
                log::warn!("{first}; read {copy} instead");
                Ok((ini, copy))
            }
            Err(Error::Storage(e2)) if e2.is_not_found() && is_not_found(&first) => {
                Err(Error::Other(format!(
                    "no pgBackRest {key} in {} (is the storage prefix the repository root, repo1-path, and the stanza PGBACKREST_STANZA='{}' right?)",
                    self.storage.location(),
                    self.stanza
                )))
            }
            Err(second) => Err(Error::Other(format!(
                "neither {key} nor its .copy can be read: {first}; {second}"
            ))),
        }
    }

    /// Read `key` again, handing the lines of the sections `keep` skips to
    /// `sink` (a manifest's file list, too long to hold).
    pub fn stream(
        &self,
        key: &str,
        pass: Option<&str>,
        keep: &dyn Fn(&str) -> bool,
        sink: &mut dyn FnMut(&str, &str, Value) -> Result<()>,
    ) -> Result<()> {
        self.parse_one(key, pass, keep, sink).map(|_| ())
    }

    fn load_one(&self, key: &str, pass: Option<&str>, keep: &dyn Fn(&str) -> bool) -> Result<Ini> {
        self.parse_one(key, pass, keep, &mut |_, _, _| Ok(()))
    }

    fn parse_one(
        &self,
        key: &str,
        pass: Option<&str>,
        keep: &dyn Fn(&str) -> bool,
        sink: &mut dyn FnMut(&str, &str, Value) -> Result<()>,
    ) -> Result<Ini> {
        let mut reader = BufReader::new(self.storage.get(key, 0)?);
        let head = {
            use std::io::BufRead;
            reader
                .fill_buf()
                .map_err(|e| Error::io(format!("reading {key}"), e))?
                .to_vec()
        };
        if !head.starts_with(SALTED) {
            return ini::parse_with(&mut reader, key, keep, sink);
        }
        let Some(pass) = pass else {
            return Err(PgbrError::Unsupported {
                what: key.to_string(),
                problem: "is encrypted (repo1-cipher-type=aes-256-cbc): set PGBACKREST_REPO1_CIPHER_PASS to the repository's passphrase (pgBackRest's repo1-cipher-pass)".into(),
            }
            .into());
        };
        let plain = Decrypt::new(reader, pass).map_err(|e| PgbrError::Read {
            what: key.to_string(),
            problem: e.to_string(),
        })?;
        // Without a MAC a wrong passphrase shows as garbage, bad padding or
        // a checksum mismatch: say which fix to try first.
        ini::parse_with(&mut BufReader::new(plain), key, keep, sink).map_err(|e| {
            Error::Other(format!(
                "{e} (wrong PGBACKREST_REPO1_CIPHER_PASS, or a damaged file)"
            ))
        })
    }

    pub fn backup_info(&self) -> Result<BackupInfo> {
        let key = self.backup_key("backup.info");
        let ini = self.load(&key, self.cipher_pass.as_deref(), &|s| {
            s == "db" || s == "backup:current" || s == "cipher"
        })?;
        // The cluster must be named, even though the listing does not show it.
        text(ini.get("db", "db-version")).ok_or_else(|| format_err(&key, "no [db] db-version"))?;
        ini.get("db", "db-system-id")
            .and_then(Value::as_u64)
            .ok_or_else(|| format_err(&key, "no [db] db-system-id"))?;
        let mut backups = Vec::new();
        if let Some(current) = ini.section("backup:current") {
            for (label, v) in current {
                backups.push(entry(&key, label, v)?);
            }
        }
        backups.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(BackupInfo {
            backups,
            cipher_pass: text(ini.get("cipher", "cipher-pass")),
        })
    }

    pub fn archive_info(&self) -> Result<ArchiveInfo> {
        let key = self.archive_key("archive.info");
        let ini = self.load(&key, self.cipher_pass.as_deref(), &|s| {
            s == "db" || s == "db:history" || s == "cipher"
        })?;
        let db_version = text(ini.get("db", "db-version"))
            .ok_or_else(|| format_err(&key, "no [db] db-version"))?;
        let system_id = ini
            .get("db", "db-system-id")
            .and_then(Value::as_u64)
            .ok_or_else(|| format_err(&key, "no [db] db-system-id"))?;
        let mut history = Vec::new();
        for (id, v) in ini.section("db:history").into_iter().flatten() {
            let id: u64 = id
                .parse()
                .map_err(|_| format_err(&key, format!("[db:history] id '{id}' is not a number")))?;
            // The system id is under "db-id" here: pgBackRest's own typo (§5).
            let version = text(v.get("db-version"))
                .ok_or_else(|| format_err(&key, format!("[db:history] {id} has no db-version")))?;
            let sys = v
                .get("db-id")
                .and_then(Value::as_u64)
                .ok_or_else(|| format_err(&key, format!("[db:history] {id} has no db-id")))?;
            history.push((id, version, sys));
        }
        history.sort_by_key(|h| std::cmp::Reverse(h.0));
        Ok(ArchiveInfo {
            db_version,
            system_id,
            history,
            cipher_pass: text(ini.get("cipher", "cipher-pass")),
        })
    }

    /// `pass` is backup.info's cipher-pass.
    pub fn manifest_summary(&self, label: &str, pass: Option<&str>) -> Result<ManifestSummary> {
        let key = self.backup_key(&format!("{label}/backup.manifest"));
        let ini = self.load(&key, pass, &|s| {
            s == "backup" || s == "backup:db" || s == "backup:option"
        })?;
        let flag = |k: &str| ini.get("backup", k).and_then(Value::as_bool) == Some(true);
        let compress_type =
            text(ini.get("backup:option", "option-compress-type")).unwrap_or_else(|| {
                // Manifests before 2.42: a boolean, which meant gz (§6.3).
                if ini
                    .get("backup:option", "option-compress")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    "gz".into()
                } else {
                    "none".into()
                }
            });
        Ok(ManifestSummary {
            db_version: text(ini.get("backup:db", "db-version"))
                .ok_or_else(|| format_err(&key, "no [backup:db] db-version"))?,
            system_id: ini
                .get("backup:db", "db-system-id")
                .and_then(Value::as_u64)
                .ok_or_else(|| format_err(&key, "no [backup:db] db-system-id"))?,
            compress_type,
            block_incremental: flag("backup-block-incr"),
            bundle: flag("backup-bundle"),
        })
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Storage(s) if s.is_not_found())
}

fn entry(key: &str, label: &str, v: &Value) -> std::result::Result<BackupEntry, PgbrError> {
    let bad = |what: &str| format_err(key, format!("backup {label}: {what}"));
    if !is_label(label) {
        return Err(bad("not a pgBackRest backup label"));
    }
    let int = |k: &str| v.get(k).and_then(Value::as_i64);
    let size = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let kind = text(v.get("backup-type")).ok_or_else(|| bad("no backup-type"))?;
    if !matches!(kind.as_str(), "full" | "diff" | "incr") {
        return Err(bad(&format!("unknown backup-type '{kind}'")));
    }
    Ok(BackupEntry {
        label: label.to_string(),
        kind,
        prior: text(v.get("backup-prior")),
        references: v
            .get("backup-reference")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        archive_start: text(v.get("backup-archive-start")),
        archive_stop: text(v.get("backup-archive-stop")),
        lsn_start: text(v.get("backup-lsn-start")),
        lsn_stop: text(v.get("backup-lsn-stop")),
        timestamp_start: int("backup-timestamp-start")
            .ok_or_else(|| bad("no backup-timestamp-start"))?,
        timestamp_stop: int("backup-timestamp-stop")
            .ok_or_else(|| bad("no backup-timestamp-stop"))?,
        size: size("backup-info-size"),
        size_delta: size("backup-info-size-delta"),
        repo_size: size("backup-info-repo-size"),
        repo_size_delta: size("backup-info-repo-size-delta"),
        block_incremental: v.get("backup-info-repo-size-map").is_some(),
        error: v.get("backup-error").and_then(Value::as_bool) == Some(true),
        version: text(v.get("backrest-version")).unwrap_or_default(),
        db_id: v.get("db-id").and_then(Value::as_u64),
    })
}

/// `^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}(D|I))?$` (spec §1.1). Also
/// keeps a label from naming a path outside its directory.
pub fn is_label(s: &str) -> bool {
    let stamp = |t: &[u8]| {
        t.len() == 15
            && t[8] == b'-'
            && t.iter()
                .enumerate()
                .all(|(i, c)| i == 8 || c.is_ascii_digit())
    };
    let b = s.as_bytes();
    match b.len() {
        16 => stamp(&b[..15]) && b[15] == b'F',
        33 => {
            stamp(&b[..15])
                && b[15] == b'F'
                && b[16] == b'_'
                && stamp(&b[17..32])
                && matches!(b[32], b'D' | b'I')
        }
        _ => false,
    }
}
