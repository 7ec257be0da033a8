//! `walden backup-list [--pretty] [--json] [--detail]`: WAL-G's output,
//! byte for byte (spec walg-wal-admin §9.1): a tab-aligned table, a
//! go-pretty table with `--pretty`, or a JSON array with `--json`
//! (indented by four spaces with `--pretty`).

use std::ffi::OsString;
use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::catalog::{self, BackupEntry, Metadata};
use super::gotime::{GoTime, ZERO_JSON};
use crate::commands::open_storage;
use crate::config::Settings;
use crate::error::{Error, Result};

const USAGE: &str = "walden backup-list [--pretty] [--json] [--detail]";

/// walden reads one storage; WAL-G names the primary one `default`.
pub(crate) const STORAGE_NAME: &str = "default";

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub pretty: bool,
    pub json: bool,
    pub detail: bool,
}

impl Options {
    /// The flags of `backup-list` (and of `pgbackrest backup-list`, whose
    /// usage line is `usage`).
    pub(crate) fn parse(args: Vec<OsString>, usage: &str) -> Result<Options> {
        use lexopt::prelude::*;
        let mut o = Options::default();
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("pretty") => o.pretty = true,
                Long("json") => o.json = true,
                Long("detail") => o.detail = true,
                _ => {
                    return Err(Error::Usage(format!(
                        "{}; usage: {usage}",
                        arg.unexpected()
                    )))
                }
            }
        }
        Ok(o)
    }
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let opts = Options::parse(args, USAGE)?;
    let storage = open_storage(settings)?;
    print_list(&storage, opts)
}

/// The listing of the backups `storage` holds under `basebackups_005/`
/// (`catchup-list` passes its folder's view).
pub(crate) fn print_list(
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    opts: Options,
) -> Result<()> {
    let storage = storage.clone();
    log::info!("List backups from storages: [{STORAGE_NAME}]");
    let backups = catalog::list(&storage)?;
    if backups.is_empty() && !opts.json {
        log::info!("No backups found");
        return Ok(());
    }
    let rows: Vec<Row> = if opts.detail {
        // WAL-G reads the details newest first, then sorts them.
        let mut rows = Vec::with_capacity(backups.len());
        for b in backups.into_iter().rev() {
            let meta = catalog::read_metadata(&storage, &b.name)?;
            rows.push(Row {
                entry: b,
                meta: Some(meta),
            });
        }
        sort_details(&mut rows);
        corrupt_pages_note(&rows);
        rows
    } else {
        backups
            .into_iter()
            .map(|entry| Row { entry, meta: None })
            .collect()
    };
    let text = render(&rows, opts);
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing the backup list to stdout", e))
}

/// `--verify` results of `--detail` rows, on stderr as log lines: stdout
/// stays byte for byte WAL-G's table or JSON (no column or key added), so
/// that every script parsing WAL-G's output keeps working.
fn corrupt_pages_note(rows: &[Row]) {
    for r in rows {
        match r.meta.as_ref().and_then(|m| m.corrupt_pages) {
            Some(0) => log::info!(
                "Backup {}: page checksums verified at backup time, no corrupt page",
                r.entry.name
            ),
            Some(n) => log::warn!(
                "Backup {}: {n} corrupt page(s) found by --verify at backup time \
                 (block numbers under CorruptBlocks in its files_metadata.json)",
                r.entry.name
            ),
            None => {}
        }
    }
}

/// One line of the listing: the backup, and its metadata with `--detail`.
pub struct Row {
    pub entry: BackupEntry,
    pub meta: Option<Metadata>,
}

/// By start time, unless a backup has none: then by the sentinel's time
/// (WAL-G's `SortBackupDetails`).
fn sort_details(rows: &mut [Row]) {
    let all_started = rows
        .iter()
        .all(|r| r.meta.as_ref().is_some_and(|m| m.start_time.is_some()));
    if all_started {
        rows.sort_by_key(|r| r.meta.as_ref().and_then(|m| m.start_time).map(|t| t.t));
    } else {
        rows.sort_by_key(|r| r.entry.modified);
    }
}

pub fn render(rows: &[Row], opts: Options) -> String {
    if opts.json {
        return json_list(rows, opts.pretty);
    }
    table(rows.iter().map(fields).collect(), opts.pretty)
}

/// The rows as a boxed table (`--pretty`) or a tab-aligned one; nothing
/// for no rows. Shared with `pgbackrest backup-list`.
pub(crate) fn table(fields: Vec<Vec<Field>>, pretty: bool) -> String {
    if fields.is_empty() {
        String::new()
    } else if pretty {
        pretty_table(&fields)
    } else {
        tabbed(&fields)
    }
}

/// One cell; shared with `pgbackrest backup-list`.
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) pretty_name: &'static str,
    pub(crate) value: String,
    pub(crate) pretty_value: Option<String>,
}

fn time_plain(t: Option<GoTime>) -> String {
    t.map_or_else(|| "-".into(), |t| t.rfc3339())
}

fn time_pretty(t: Option<GoTime>) -> String {
    t.map_or_else(|| "-".into(), |t| t.rfc850())
}

/// WAL-G's `PrintableFields` of `BackupTime`, then of `BackupDetail`.
fn fields(row: &Row) -> Vec<Field> {
    let f = |name, pretty_name, value: String, pretty_value| Field {
        name,
        pretty_name,
        value,
        pretty_value,
    };
    let t = row.entry.time();
    let mut out = vec![
        f("backup_name", "Backup name", row.entry.name.clone(), None),
        f("modified", "Modified", time_plain(t), Some(time_pretty(t))),
        f(
            "wal_file_name",
            "WAL file name",
            row.entry.wal_file_name.clone(),
            None,
        ),
        f("storage_name", "Storage name", STORAGE_NAME.into(), None),
    ];
    if let Some(m) = &row.meta {
        out.extend([
            f(
                "start_time",
                "Start time",
                time_plain(m.start_time),
                Some(time_pretty(m.start_time)),
            ),
            f(
                "finish_time",
                "Finish time",
                time_plain(m.finish_time),
                Some(time_pretty(m.finish_time)),
            ),
            f("hostname", "Hostname", m.hostname.clone(), None),
            f("data_dir", "Datadir", m.data_dir.clone(), None),
            f("pg_version", "PG version", m.pg_version.to_string(), None),
            f(
                "start_lsn",
                "Start LSN",
                catalog::lsn_text(m.start_lsn),
                None,
            ),
            f(
                "finish_lsn",
                "Finish LSN",
                catalog::lsn_text(m.finish_lsn),
                None,
            ),
            f(
                "is_permanent",
                "Permanent",
                m.is_permanent.to_string(),
                None,
            ),
        ]);
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Go's `tabwriter.NewWriter(out, 0, 0, 1, ' ', 0)`: every cell but the
/// last of a line padded to its column's widest cell plus one space.
pub(crate) fn tabbed(rows: &[Vec<Field>]) -> String {
    let header: Vec<&str> = rows[0].iter().map(|f| f.name).collect();
    let lines: Vec<Vec<&str>> = std::iter::once(header)
        .chain(
            rows.iter()
                .map(|r| r.iter().map(|f| f.value.as_str()).collect()),
        )
        .collect();
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| width(s)))
                .max()
                .unwrap_or(0)
                + 1
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        for (c, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < line.len() {
                out.push_str(&" ".repeat(widths[c] - width(cell)));
            }
        }
        out.push('\n');
    }
    out
}

/// go-pretty's default style as WAL-G uses it: a `#` column of row
/// numbers (numeric, so right-aligned, header too), upper-case headers,
/// other cells left-aligned, `+---+` rules above and below the header and
/// at the end.
pub(crate) fn pretty_table(rows: &[Vec<Field>]) -> String {
    let header: Vec<String> = std::iter::once("#".to_string())
        .chain(rows[0].iter().map(|f| f.pretty_name.to_uppercase()))
        .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            std::iter::once(i.to_string())
                .chain(
                    r.iter()
                        .map(|f| f.pretty_value.clone().unwrap_or_else(|| f.value.clone())),
                )
                .collect()
        })
        .collect();
    // The row-number column is numeric (right-aligned), the rest text.
    let right: Vec<bool> = (0..header.len()).map(|c| c == 0).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    crate::wal::table::render(&header, &right, &body)
}

/// One backup as WAL-G's JSON encoder writes `BackupTime` or
/// `BackupDetail` (embedded structs flattened, in declaration order).
pub fn json_object(row: &Row) -> Map<String, Value> {
    let mut o = Map::new();
    // serde_json's map is sorted; the order is restored in `ordered_json`.
    o.insert("backup_name".into(), json!(row.entry.name));
    o.insert(
        "time".into(),
        json!(row
            .entry
            .time()
            .map_or_else(|| ZERO_JSON.to_string(), |t| t.rfc3339_nano())),
    );
    o.insert("wal_file_name".into(), json!(row.entry.wal_file_name));
    o.insert("storage_name".into(), json!(STORAGE_NAME));
    if let Some(m) = &row.meta {
        metadata_fields(m, &mut o);
    }
    o
}

/// `ExtendedMetadataDto`'s fields, as Go marshals them.
pub fn metadata_fields(m: &Metadata, o: &mut Map<String, Value>) {
    let t =
        |t: Option<GoTime>| json!(t.map_or_else(|| ZERO_JSON.to_string(), |t| t.rfc3339_nano()));
    o.insert("start_time".into(), t(m.start_time));
    o.insert("finish_time".into(), t(m.finish_time));
    o.insert("date_fmt".into(), json!(m.date_fmt));
    o.insert("hostname".into(), json!(m.hostname));
    o.insert("data_dir".into(), json!(m.data_dir));
    o.insert("pg_version".into(), json!(m.pg_version));
    o.insert("start_lsn".into(), json!(m.start_lsn));
    o.insert("finish_lsn".into(), json!(m.finish_lsn));
    o.insert("is_permanent".into(), json!(m.is_permanent));
    o.insert("system_identifier".into(), json!(m.system_identifier));
    o.insert("uncompressed_size".into(), json!(m.uncompressed_size));
    o.insert("compressed_size".into(), json!(m.compressed_size));
    if let Some(u) = &m.user_data {
        o.insert("user_data".into(), u.clone());
    }
}

/// The keys of one listed backup in Go's declaration order.
pub const KEY_ORDER: &[&str] = &[
    "backup_name",
    "time",
    "wal_file_name",
    "storage_name",
    "start_time",
    "finish_time",
    "date_fmt",
    "hostname",
    "data_dir",
    "pg_version",
    "start_lsn",
    "finish_lsn",
    "is_permanent",
    "system_identifier",
    "uncompressed_size",
    "compressed_size",
    "user_data",
];

/// Serialize `o` with its keys in `order` (then any others, sorted), as
/// Go's `json.Marshal` (compact) or `Encoder.SetIndent("", "    ")` at
/// nesting `depth` would. Nested values keep Go's sorted map keys.
pub fn ordered_json(o: &Map<String, Value>, order: &[&str], pretty: bool, depth: usize) -> String {
    let keys = order
        .iter()
        .copied()
        .filter(|k| o.contains_key(*k))
        .chain(o.keys().map(String::as_str).filter(|k| !order.contains(k)));
    let parts: Vec<String> = keys
        .map(|k| {
            let v = &o[k];
            let key = Value::String(k.to_string()).to_string();
            if pretty {
                format!("{key}: {}", indented(v, depth + 1))
            } else {
                format!("{key}:{v}")
            }
        })
        .collect();
    if parts.is_empty() {
        return "{}".into();
    }
    if pretty {
        let inner = "    ".repeat(depth + 1);
        format!(
            "{{\n{inner}{}\n{}}}",
            parts.join(&format!(",\n{inner}")),
            "    ".repeat(depth)
        )
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A value as Go's `json.Indent` with four spaces writes it, its first
/// line not indented, nested lines at `depth` and below.
fn indented(v: &Value, depth: usize) -> String {
    let pad = |d: usize| "    ".repeat(d);
    match v {
        Value::Object(m) if !m.is_empty() => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}{}: {}",
                        pad(depth + 1),
                        Value::String(k.clone()),
                        indented(v, depth + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{}}}", items.join(",\n"), pad(depth))
        }
        Value::Array(a) if !a.is_empty() => {
            let items: Vec<String> = a
                .iter()
                .map(|v| format!("{}{}", pad(depth + 1), indented(v, depth + 1)))
                .collect();
            format!("[\n{}\n{}]", items.join(",\n"), pad(depth))
        }
        other => other.to_string(),
    }
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
    super::sentinel::go_escape(text) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn row(name: &str, secs: u64, meta: bool) -> Row {
        Row {
            entry: BackupEntry {
                name: name.into(),
                wal_file_name: name[5..29].into(),
                modified: Some(UNIX_EPOCH + Duration::new(secs, 500_000_000)),
            },
            meta: meta.then(|| Metadata {
                start_time: GoTime::parse("2026-08-21T18:02:35.123457Z"),
                finish_time: GoTime::parse("2026-08-21T18:02:40.5Z"),
                date_fmt: "%Y-%m-%dT%H:%M:%S.%fZ".into(),
                hostname: "db1".into(),
                data_dir: "/var/lib/postgresql/15/main".into(),
                pg_version: 150014,
                start_lsn: 0x5000028,
                finish_lsn: 0x5000100,
                is_permanent: false,
                system_identifier: Some(7507672962298572862),
                uncompressed_size: 100,
                compressed_size: 50,
                user_data: Some(json!({"b": "<x>", "a": [1]})),
                corrupt_pages: None,
            }),
        }
    }

    #[test]
    fn plain_table_is_tabwriter() {
        let rows = [
            row("base_000000010000000000000002", 1787335355, false),
            row("base_000000010000000000000004", 1787335999, false),
        ];
        assert_eq!(
            render(&rows, Options::default()),
            "backup_name                   modified             wal_file_name            storage_name\n\
base_000000010000000000000002 2026-08-21T18:02:35Z 000000010000000000000002 default\n\
base_000000010000000000000004 2026-08-21T18:13:19Z 000000010000000000000004 default\n"
        );
    }

    #[test]
    fn pretty_table_is_go_pretty() {
        let rows: Vec<Row> = (0..11)
            .map(|i| row("base_000000010000000000000002", 1787335355 + i, false))
            .collect();
        let text = render(
            &rows,
            Options {
                pretty: true,
                ..Options::default()
            },
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "+----+-------------------------------+--------------------------------+--------------------------+--------------+"
        );
        assert_eq!(
            lines[1],
            "|  # | BACKUP NAME                   | MODIFIED                       | WAL FILE NAME            | STORAGE NAME |"
        );
        assert_eq!(
            lines[3],
            "|  0 | base_000000010000000000000002 | Friday, 21-Aug-26 18:02:35 UTC | 000000010000000000000002 | default      |"
        );
        assert!(lines[13].starts_with("| 10 | "));
        assert_eq!(lines[14], lines[0]);
        assert_eq!(lines.len(), 15);
    }

    #[test]
    fn json_as_go_encodes_it() {
        let rows = [row("base_000000010000000000000002", 1787335355, true)];
        let compact = render(
            &rows,
            Options {
                json: true,
                detail: true,
                ..Options::default()
            },
        );
        assert_eq!(
            compact,
            "[{\"backup_name\":\"base_000000010000000000000002\",\"time\":\"2026-08-21T18:02:35.5Z\",\
\"wal_file_name\":\"000000010000000000000002\",\"storage_name\":\"default\",\
\"start_time\":\"2026-08-21T18:02:35.123457Z\",\"finish_time\":\"2026-08-21T18:02:40.5Z\",\
\"date_fmt\":\"%Y-%m-%dT%H:%M:%S.%fZ\",\"hostname\":\"db1\",\"data_dir\":\"/var/lib/postgresql/15/main\",\
\"pg_version\":150014,\"start_lsn\":83886120,\"finish_lsn\":83886336,\"is_permanent\":false,\
\"system_identifier\":7507672962298572862,\"uncompressed_size\":100,\"compressed_size\":50,\
\"user_data\":{\"a\":[1],\"b\":\"\\u003cx\\u003e\"}}]\n"
        );
        let pretty = render(
            &rows,
            Options {
                json: true,
                detail: true,
                pretty: true,
            },
        );
        assert!(
            pretty.starts_with("[\n    {\n        \"backup_name\": \"base_"),
            "{pretty}"
        );
        assert!(
            pretty.ends_with(
                "        \"user_data\": {\n            \"a\": [\n                1\n            ],\n            \"b\": \"\\u003cx\\u003e\"\n        }\n    }\n]\n"
            ),
            "{pretty}"
        );
        let v: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(v[0]["start_lsn"], 83886120);
        let none = render(
            &[],
            Options {
                json: true,
                ..Options::default()
            },
        );
        assert_eq!(none, "[]\n");
    }

    #[test]
    fn detail_plain_has_walg_columns() {
        let rows = [row("base_000000010000000000000002", 1787335355, true)];
        let text = render(
            &rows,
            Options {
                detail: true,
                ..Options::default()
            },
        );
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "backup_name",
                "modified",
                "wal_file_name",
                "storage_name",
                "start_time",
                "finish_time",
                "hostname",
                "data_dir",
                "pg_version",
                "start_lsn",
                "finish_lsn",
                "is_permanent"
            ]
        );
        let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(values[4], "2026-08-21T18:02:35Z");
        assert_eq!(values[9], "0/5000028");
        assert_eq!(values[11], "false");
    }
}
