//! `WALG_UPLOAD_WAL_METADATA`: a small JSON record per WAL file with the
//! time it was created, stored plain beside the WAL objects.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wal::object::WAL_FOLDER;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    None,
    Individual,
    Bulk,
}

pub fn level(settings: &Settings) -> std::result::Result<Level, ConfigError> {
    let value = settings.get("WALG_UPLOAD_WAL_METADATA").unwrap_or_default();
    match value.as_str() {
        "NOMETADATA" => Ok(Level::None),
        "INDIVIDUAL" => Ok(Level::Individual),
        "BULK" => Ok(Level::Bulk),
        _ => Err(ConfigError::Invalid {
            name: "WALG_UPLOAD_WAL_METADATA".into(),
            value,
            problem: "expected one of BULK, INDIVIDUAL, NOMETADATA".into(),
        }),
    }
}

/// `{"<name>":{"created_time":"…","date_fmt":"%Y-%m-%dT%H:%M:%S.%fZ"}}`
pub fn record(name: &str, created: SystemTime) -> serde_json::Map<String, serde_json::Value> {
    let mut inner = serde_json::Map::new();
    inner.insert(
        "created_time".into(),
        crate::time::rfc3339_nano(created).into(),
    );
    inner.insert("date_fmt".into(), "%Y-%m-%dT%H:%M:%S.%fZ".into());
    let mut outer = serde_json::Map::new();
    outer.insert(name.to_string(), serde_json::Value::Object(inner));
    outer
}

/// Store the metadata of the WAL file `name` (found at `path`). `local_dir`
/// is where BULK records wait until their group of 16 is complete.
pub fn upload(
    storage: &Arc<dyn Storage>,
    level: Level,
    name: &str,
    path: &Path,
    local_dir: Option<&Path>,
) -> Result<()> {
    if level == Level::None {
        return Ok(());
    }
    let created = fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    let doc = serde_json::Value::Object(record(name, created)).to_string();
    match level {
        Level::None => Ok(()),
        Level::Individual => Ok(storage.put(&format!("{WAL_FOLDER}{name}.json"), doc.as_bytes())?),
        Level::Bulk => {
            let dir = local_dir.ok_or_else(|| {
                Error::Other("BULK WAL metadata needs pg_wal/walg_data/walg_archive_status".into())
            })?;
            let local = dir.join(format!("{name}.json"));
            fs::write(&local, &doc)
                .map_err(|e| Error::io(format!("writing {}", local.display()), e))?;
            // The last segment of a group of 16 closes the group.
            if name.len() == 24 && name.ends_with('F') {
                upload_bulk(storage, dir, &name[..23])?;
            }
            Ok(())
        }
    }
}

fn upload_bulk(storage: &Arc<dyn Storage>, dir: &Path, group: &str) -> Result<()> {
    let mut merged = serde_json::Map::new();
    let mut files = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !(file_name.starts_with(group) && file_name.ends_with(".json")) {
            continue;
        }
        match fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            Some(serde_json::Value::Object(map)) => merged.extend(map),
            _ => log::error!(
                "skipping unreadable WAL metadata {}",
                entry.path().display()
            ),
        }
        files.push(entry.path());
    }
    let doc = serde_json::Value::Object(merged).to_string();
    storage.put(&format!("{WAL_FOLDER}{group}.json"), doc.as_bytes())?;
    for f in files {
        let _ = fs::remove_file(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn record_shape() {
        let t = UNIX_EPOCH + Duration::new(1_795_500_474, 5_000);
        let doc = serde_json::Value::Object(record("000000010000000000000001", t)).to_string();
        assert_eq!(
            doc,
            r#"{"000000010000000000000001":{"created_time":"2026-11-24T06:07:54.000005Z","date_fmt":"%Y-%m-%dT%H:%M:%S.%fZ"}}"#
        );
    }
}
