//! `walden backup-show NAME|LATEST [--json]`: one backup's sentinel and
//! metadata.json together. For people: aligned `key: value` lines. For
//! scripts: one JSON object with the keys of `backup-list --detail --json`
//! followed by what only the sentinel records (see walden-backup-show(1)).

use std::ffi::OsString;
use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::catalog::{self, field};
use super::list::{self, Row};
use crate::commands::open_storage;
use crate::config::Settings;
use crate::error::{Error, Result};

const USAGE: &str = "walden backup-show NAME|LATEST [--json]";

/// The sentinel-only keys, in this order after the backup-list ones.
const SENTINEL_KEYS: &[&str] = &[
    "data_catalog_size",
    "delta_from",
    "delta_full_name",
    "delta_count",
    "delta_lsn",
    "files_metadata_disabled",
    "tablespaces",
    "sentinel_version",
];

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut wanted: Option<String> = None;
    let mut as_json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => as_json = true,
            Value(v) if wanted.is_none() => {
                wanted =
                    Some(v.into_string().map_err(|_| {
                        Error::Usage(format!("the name must be UTF-8; usage: {USAGE}"))
                    })?)
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{}; usage: {USAGE}",
                    arg.unexpected()
                )))
            }
        }
    }
    let wanted =
        wanted.ok_or_else(|| Error::Usage(format!("no backup name given; usage: {USAGE}")))?;
    let storage = open_storage(settings)?;
    let entry = catalog::find(&storage, &wanted, USAGE)?;
    let sentinel = catalog::read_sentinel(&storage, &entry.name)?;
    let meta = catalog::read_metadata(&storage, &entry.name)?;
    let row = Row {
        entry,
        meta: Some(meta),
    };
    let mut obj = list::json_object(&row);
    sentinel_fields(&sentinel, &mut obj);
    drop(sentinel);
    let text = if as_json {
        let order: Vec<&str> = list::KEY_ORDER
            .iter()
            .chain(SENTINEL_KEYS.iter())
            .copied()
            .collect();
        super::sentinel::go_escape(list::ordered_json(&obj, &order, true, 0)) + "\n"
    } else {
        for_people(&obj)
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("writing to stdout", e))
}

/// What the sentinel has that metadata.json has not.
fn sentinel_fields(s: &Map<String, Value>, o: &mut Map<String, Value>) {
    let get = |k: &str| field(s, k).filter(|v| !v.is_null()).cloned();
    o.insert(
        "data_catalog_size".into(),
        get("DataCatalogSize").unwrap_or(json!(0)),
    );
    for (key, from) in [
        ("delta_from", "DeltaFrom"),
        ("delta_full_name", "DeltaFullName"),
        ("delta_count", "DeltaCount"),
        ("delta_lsn", "DeltaLSN"),
    ] {
        if let Some(v) = get(from) {
            o.insert(key.into(), v);
        }
    }
    o.insert(
        "files_metadata_disabled".into(),
        get("FilesMetadataDisabled").unwrap_or(json!(false)),
    );
    let spec = get("Spec").or_else(|| get("spec"));
    let tablespaces = spec
        .as_ref()
        .and_then(|s| s.get("tablespaces").cloned())
        .unwrap_or(json!([]));
    o.insert("tablespaces".into(), tablespaces);
    o.insert(
        "sentinel_version".into(),
        get("Version").unwrap_or(json!(1)),
    );
}

/// `key: value` lines, values aligned; LSNs also as `X/Y`, sizes also in
/// binary units, empty optional fields left out.
fn for_people(o: &Map<String, Value>) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let order = list::KEY_ORDER
        .iter()
        .chain(SENTINEL_KEYS.iter())
        .filter(|k| !matches!(**k, "storage_name" | "date_fmt"));
    for &k in order {
        let Some(v) = o.get(k) else { continue };
        let value = match k {
            "start_lsn" | "finish_lsn" | "delta_lsn" => match v.as_u64() {
                Some(n) => format!("{} ({n})", catalog::lsn_text(n)),
                None => text(v),
            },
            "uncompressed_size" | "compressed_size" | "data_catalog_size" => match v.as_u64() {
                Some(n) => format!("{} ({n} bytes)", crate::progress::human_bytes(n)),
                None => text(v),
            },
            "tablespaces" => match v.as_array() {
                Some(a) if a.is_empty() => "none".into(),
                Some(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
                None => text(v),
            },
            "system_identifier" if v.is_null() => continue,
            // Go's zero time: not recorded.
            "time" | "start_time" | "finish_time" if v == super::gotime::ZERO_JSON => "-".into(),
            _ => text(v),
        };
        if value.is_empty() {
            continue;
        }
        let label = match k {
            "time" => "sentinel_time",
            other => other,
        };
        lines.push((label.to_string(), value));
    }
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .into_iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_people_are_aligned() {
        let s: Map<String, Value> = serde_json::from_str(
            r#"{"LSN":1,"DeltaFrom":"base_000000010000000000000002","DeltaLSN":4294967336,"Version":2,"Spec":{"tablespaces":["16390"]}}"#,
        )
        .unwrap();
        let mut o = Map::new();
        o.insert("backup_name".into(), json!("base_x"));
        o.insert("start_lsn".into(), json!(83886120u64));
        o.insert("compressed_size".into(), json!(1536));
        o.insert("hostname".into(), json!(""));
        o.insert("finish_time".into(), json!("0001-01-01T00:00:00Z"));
        sentinel_fields(&s, &mut o);
        let text = for_people(&o);
        assert!(
            text.starts_with("backup_name:             base_x\n"),
            "{text}"
        );
        assert!(
            text.contains("start_lsn:               0/5000028 (83886120)\n"),
            "{text}"
        );
        assert!(
            text.contains("compressed_size:         1.5 KiB (1536 bytes)\n"),
            "{text}"
        );
        assert!(
            text.contains("delta_from:              base_000000010000000000000002\n"),
            "{text}"
        );
        assert!(
            text.contains("delta_lsn:               1/28 (4294967336)\n"),
            "{text}"
        );
        assert!(text.contains("tablespaces:             16390\n"), "{text}");
        assert!(text.contains("sentinel_version:        2\n"), "{text}");
        assert!(text.contains("finish_time:             -\n"), "{text}");
        assert!(!text.contains("hostname"), "{text}");
        assert_eq!(crate::progress::human_bytes(10), "10 B");
    }
}
