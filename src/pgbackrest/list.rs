//! `walden pgbackrest backup-list [--pretty] [--json] [--detail]`: every
//! backup of the stanza from backup.info (with `--detail` also each
//! manifest), in the formats of walden's `backup-list`.

use std::ffi::OsString;
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::repo::{BackupEntry, ManifestSummary, Repo};
use crate::backup::gotime::GoTime;
use crate::backup::list::{ordered_json, table, Field};
use crate::config::Settings;
use crate::error::{Error, Result};

const USAGE: &str = "walden pgbackrest backup-list [--pretty] [--json] [--detail]";
pub use crate::backup::list::Options;
use crate::backup::list::STORAGE_NAME;

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = Options::parse(args, USAGE)?;
    let repo = super::open_repo(settings)?;
    let text = listing(&repo, opts)?;
    if text.is_empty() {
        log::info!("No backups found");
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the backup list to stdout", e))
}

/// One listed backup, with its manifest's facts under `--detail`.
pub struct Row {
    pub entry: BackupEntry,
    pub manifest: Option<ManifestSummary>,
}

pub fn listing(repo: &Repo, opts: Options) -> Result<String> {
    let info = repo.backup_info()?;
    let mut rows = Vec::with_capacity(info.backups.len());
    for entry in info.backups {
        let manifest = if opts.detail {
            Some(repo.manifest_summary(&entry.label, info.cipher_pass.as_deref())?)
        } else {
            None
        };
        rows.push(Row { entry, manifest });
    }
    Ok(render(&rows, opts))
}

pub fn render(rows: &[Row], opts: Options) -> String {
    if opts.json {
        return json_list(rows, opts.pretty);
    }
    table(rows.iter().map(fields).collect(), opts.pretty)
}

fn time(secs: i64) -> GoTime {
    GoTime::utc(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn fields(row: &Row) -> Vec<Field> {
    let f = |name, pretty_name, value: String, pretty_value| Field {
        name,
        pretty_name,
        value,
        pretty_value,
    };
    let e = &row.entry;
    let stop = time(e.timestamp_stop);
    let mut out = vec![
        f("backup_name", "Backup name", e.label.clone(), None),
        f("modified", "Modified", stop.rfc3339(), Some(stop.rfc850())),
        f(
            "wal_file_name",
            "WAL file name",
            or_dash(&e.archive_start),
            None,
        ),
        f("storage_name", "Storage name", STORAGE_NAME.into(), None),
        f("type", "Type", e.kind.clone(), None),
    ];
    if let Some(m) = &row.manifest {
        let start = time(e.timestamp_start);
        let refs = if e.references.is_empty() {
            "-".to_string()
        } else {
            e.references.join(",")
        };
        out.extend([
            f("prior", "Prior", or_dash(&e.prior), None),
            f("references", "References", refs, None),
            f(
                "start_time",
                "Start time",
                start.rfc3339(),
                Some(start.rfc850()),
            ),
            f(
                "finish_time",
                "Finish time",
                stop.rfc3339(),
                Some(stop.rfc850()),
            ),
            f(
                "wal_stop_file_name",
                "WAL stop file name",
                or_dash(&e.archive_stop),
                None,
            ),
            f("start_lsn", "Start LSN", or_dash(&e.lsn_start), None),
            f("finish_lsn", "Finish LSN", or_dash(&e.lsn_stop), None),
            f("pg_version", "PG version", m.db_version.clone(), None),
            f("size", "Size", e.size.to_string(), None),
            f("repo_size", "Repo size", e.repo_size.to_string(), None),
            f("compression", "Compression", m.compress_type.clone(), None),
            f(
                "block_incremental",
                "Block incremental",
                (m.block_incremental || e.block_incremental).to_string(),
                None,
            ),
        ]);
    }
    out
}

const KEY_ORDER: &[&str] = &[
    "backup_name",
    "time",
    "wal_file_name",
    "storage_name",
    "type",
    "prior",
    "references",
    "start_time",
    "finish_time",
    "wal_stop_file_name",
    "start_lsn",
    "finish_lsn",
    "pg_version",
    "system_identifier",
    "uncompressed_size",
    "compressed_size",
    "uncompressed_size_delta",
    "compressed_size_delta",
    "compression",
    "bundle",
    "block_incremental",
    "backrest_version",
    "error",
];

fn json_object(row: &Row) -> Map<String, Value> {
    let e = &row.entry;
    let mut o = Map::new();
    o.insert("backup_name".into(), json!(e.label));
    o.insert("time".into(), json!(time(e.timestamp_stop).rfc3339_nano()));
    o.insert("wal_file_name".into(), json!(e.archive_start));
    o.insert("storage_name".into(), json!(STORAGE_NAME));
    o.insert("type".into(), json!(e.kind));
    if let Some(m) = &row.manifest {
        o.insert("prior".into(), json!(e.prior));
        o.insert("references".into(), json!(e.references));
        o.insert(
            "start_time".into(),
            json!(time(e.timestamp_start).rfc3339_nano()),
        );
        o.insert(
            "finish_time".into(),
            json!(time(e.timestamp_stop).rfc3339_nano()),
        );
        o.insert("wal_stop_file_name".into(), json!(e.archive_stop));
        o.insert("start_lsn".into(), json!(e.lsn_start));
        o.insert("finish_lsn".into(), json!(e.lsn_stop));
        o.insert("pg_version".into(), json!(m.db_version));
        o.insert("system_identifier".into(), json!(m.system_id));
        o.insert("uncompressed_size".into(), json!(e.size));
        o.insert("compressed_size".into(), json!(e.repo_size));
        o.insert("uncompressed_size_delta".into(), json!(e.size_delta));
        o.insert("compressed_size_delta".into(), json!(e.repo_size_delta));
        o.insert("compression".into(), json!(m.compress_type));
        o.insert("bundle".into(), json!(m.bundle));
        o.insert(
            "block_incremental".into(),
            json!(m.block_incremental || e.block_incremental),
        );
        o.insert("backrest_version".into(), json!(e.version));
        o.insert("error".into(), json!(e.error));
    }
    o
}

fn json_list(rows: &[Row], pretty: bool) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| ordered_json(&json_object(r), KEY_ORDER, pretty, 1))
        .collect();
    let text = if items.is_empty() {
        "[]".to_string()
    } else if pretty {
        format!("[\n    {}\n]", items.join(",\n    "))
    } else {
        format!("[{}]", items.join(","))
    };
    text + "\n"
}
