//! The sentinel (`BackupSentinelDtoV2`) and `metadata.json`
//! (`ExtendedMetadataDto`) in WAL-G's field names, order and formats
//! (spec §3.1, §3.2): compact JSON, Go's HTML escaping, times in UTC
//! RFC 3339 with microseconds, LSNs as decimal numbers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// metadata.json key of the corrupt page count of a `--verify` backup:
/// not one of WAL-G's (whose decoder skips unknown keys), so that WAL-G
/// still reads the file and walden's `backup-list --detail` can report it
/// without reading files_metadata.json.
pub const CORRUPT_PAGES_KEY: &str = "walden_corrupt_pages";

pub const DATE_FMT: &str = "%Y-%m-%dT%H:%M:%S.%fZ";

/// A delta backup's sentinel fields (spec §3.1: `DeltaLSN`, `DeltaFrom`,
/// `DeltaFullName`, `DeltaCount`, right after `LSN`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaFields {
    pub lsn: u64,
    pub from: String,
    pub full_name: String,
    pub count: u64,
}

/// What one finished backup records.
pub struct BackupInfo {
    pub start_lsn: u64,
    /// `None` for a full backup.
    pub delta: Option<DeltaFields>,
    pub finish_lsn: u64,
    pub pg_version: i64,
    pub system_identifier: Option<u64>,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    pub data_catalog_size: u64,
    /// The tablespace spec, JSON as `tablespaces::spec_json` writes it;
    /// `None` without tablespaces (the key is then omitted).
    pub spec: Option<String>,
    pub user_data: Option<Value>,
    pub start_time: SystemTime,
    pub finish_time: SystemTime,
    pub hostname: String,
    pub data_dir: String,
    pub is_permanent: bool,
    /// No `files_metadata.json` was written (`--without-files-metadata`).
    pub files_metadata_disabled: bool,
    /// Corrupt pages `--verify` found (`None`: not verified). Kept in
    /// metadata.json under a walden key that WAL-G's reader ignores.
    pub corrupt_pages: Option<u64>,
}

/// Go's `encoding/json` output for a string: serde_json's escaping plus
/// `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`, which Go adds. Applied
/// to a whole serialized value it is still correct: those characters
/// only ever occur inside strings.
pub(crate) fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

pub fn string(s: &str) -> String {
    go_escape(Value::String(s.to_string()).to_string())
}

/// A string as Go's `encoding/json` writes it (quotes included).
pub fn go_json_string(s: &str) -> String {
    string(s)
}

/// WAL-G's `TimeNowCrossPlatformUTC`: UTC rounded up to microseconds.
pub fn round_up_micros(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let sub = d.subsec_nanos() % 1000;
    if sub == 0 {
        t
    } else {
        t + Duration::from_nanos(u64::from(1000 - sub))
    }
}

fn time(t: SystemTime) -> String {
    string(&crate::time::rfc3339_nano(t))
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |n| n.to_string())
}

/// The sentinel, keys in `BackupSentinelDtoV2`'s declaration order with
/// v1 `omitempty` (spec §3.1). A full local backup has no Delta* keys,
/// and no Spec without tablespaces.
pub fn sentinel_json(b: &BackupInfo) -> String {
    let mut out = format!("{{\"LSN\":{}", b.start_lsn);
    if let Some(d) = &b.delta {
        out.push_str(&format!(
            ",\"DeltaLSN\":{},\"DeltaFrom\":{},\"DeltaFullName\":{},\"DeltaCount\":{}",
            d.lsn,
            string(&d.from),
            string(&d.full_name),
            d.count
        ));
    }
    out.push_str(&format!(
        ",\"PgVersion\":{},\"FinishLSN\":{}",
        b.pg_version, b.finish_lsn
    ));
    if let Some(id) = b.system_identifier {
        out.push_str(&format!(",\"SystemIdentifier\":{id}"));
    }
    out.push_str(&format!(
        ",\"UncompressedSize\":{},\"CompressedSize\":{}",
        b.uncompressed_size, b.compressed_size
    ));
    if b.data_catalog_size != 0 {
        out.push_str(&format!(",\"DataCatalogSize\":{}", b.data_catalog_size));
    }
    if let Some(spec) = &b.spec {
        out.push_str(&format!(",\"Spec\":{spec}"));
    }
    if let Some(u) = &b.user_data {
        out.push_str(&format!(",\"UserData\":{}", go_escape(u.to_string())));
    }
    // omitempty: only `--without-files-metadata` backups carry it, and
    // WAL-G's restore then extracts every tar without the file list.
    if b.files_metadata_disabled {
        out.push_str(",\"FilesMetadataDisabled\":true");
    }
    out.push_str(&format!(
        ",\"ChkpNum\":null,\"Version\":2,\"StartTime\":{},\"FinishTime\":{},\"DateFmt\":{},\"Hostname\":{},\"DataDir\":{},\"IsPermanent\":{}}}",
        time(b.start_time),
        time(b.finish_time),
        string(DATE_FMT),
        string(&b.hostname),
        string(&b.data_dir),
        b.is_permanent
    ));
    out
}

/// `metadata.json` (spec §3.2).
pub fn metadata_json(b: &BackupInfo) -> String {
    let mut out = format!(
        "{{\"start_time\":{},\"finish_time\":{},\"date_fmt\":{},\"hostname\":{},\"data_dir\":{},\"pg_version\":{},\"start_lsn\":{},\"finish_lsn\":{},\"is_permanent\":{},\"system_identifier\":{},\"uncompressed_size\":{},\"compressed_size\":{}",
        time(b.start_time),
        time(b.finish_time),
        string(DATE_FMT),
        string(&b.hostname),
        string(&b.data_dir),
        b.pg_version,
        b.start_lsn,
        b.finish_lsn,
        b.is_permanent,
        opt_u64(b.system_identifier),
        b.uncompressed_size,
        b.compressed_size
    );
    if let Some(u) = &b.user_data {
        out.push_str(&format!(",\"user_data\":{}", go_escape(u.to_string())));
    }
    if let Some(n) = b.corrupt_pages {
        out.push_str(&format!(",\"{CORRUPT_PAGES_KEY}\":{n}"));
    }
    out.push('}');
    out
}

/// Parse user data as WAL-G does (`UnmarshalSentinelUserData`): any JSON
/// value. serde_json's map keeps keys sorted, as Go's re-serialization does.
pub fn parse_user_data(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BackupInfo {
        BackupInfo {
            start_lsn: 83886120,
            delta: None,
            finish_lsn: 83886376,
            pg_version: 150014,
            system_identifier: Some(7507672962298572862),
            uncompressed_size: 23456789,
            compressed_size: 3456789,
            data_catalog_size: 23999999,
            spec: None,
            user_data: None,
            start_time: UNIX_EPOCH + Duration::new(1787335355, 123457000),
            finish_time: UNIX_EPOCH + Duration::new(1787335360, 654321000),
            hostname: "db1".into(),
            data_dir: "/var/lib/postgresql/16/main".into(),
            is_permanent: false,
            files_metadata_disabled: true,
            corrupt_pages: None,
        }
    }

    #[test]
    fn sentinel_has_walg_keys_in_order() {
        let s = sentinel_json(&info());
        assert_eq!(
            s,
            "{\"LSN\":83886120,\"PgVersion\":150014,\"FinishLSN\":83886376,\"SystemIdentifier\":7507672962298572862,\
\"UncompressedSize\":23456789,\"CompressedSize\":3456789,\"DataCatalogSize\":23999999,\"FilesMetadataDisabled\":true,\"ChkpNum\":null,\
\"Version\":2,\"StartTime\":\"2026-08-21T18:02:35.123457Z\",\"FinishTime\":\"2026-08-21T18:02:40.654321Z\",\
\"DateFmt\":\"%Y-%m-%dT%H:%M:%S.%fZ\",\"Hostname\":\"db1\",\"DataDir\":\"/var/lib/postgresql/16/main\",\
\"IsPermanent\":false}"
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["LSN"], 83886120);
    }

    #[test]
    fn metadata_and_user_data() {
        let mut b = info();
        b.user_data = Some(parse_user_data(r#"{"z":1,"a":"<x>"}"#).unwrap());
        b.is_permanent = true;
        let m = metadata_json(&b);
        assert!(m.starts_with("{\"start_time\":\"2026-08-21T18:02:35.123457Z\""));
        assert!(
            m.ends_with(",\"user_data\":{\"a\":\"\\u003cx\\u003e\",\"z\":1}}"),
            "{m}"
        );
        assert!(m.contains("\"is_permanent\":true"));
        b.files_metadata_disabled = false;
        assert!(!sentinel_json(&b).contains("FilesMetadataDisabled"));
        assert!(sentinel_json(&b).contains(",\"UserData\":{\"a\":\"\\u003cx\\u003e\",\"z\":1},"));
        assert!(parse_user_data("{nope").is_err());
    }

    #[test]
    fn delta_keys_follow_lsn() {
        let mut b = info();
        b.delta = Some(DeltaFields {
            lsn: 0x0C00_0028,
            from: "base_000000010000000000000006_D_000000010000000000000004".into(),
            full_name: "base_000000010000000000000004".into(),
            count: 2,
        });
        let s = sentinel_json(&b);
        assert!(
            s.starts_with(
                "{\"LSN\":83886120,\"DeltaLSN\":201326632,\"DeltaFrom\":\"base_000000010000000000000006_D_000000010000000000000004\",\
\"DeltaFullName\":\"base_000000010000000000000004\",\"DeltaCount\":2,\"PgVersion\":150014,\"FinishLSN\":83886376,"
            ),
            "{s}"
        );
        assert!(!metadata_json(&b).contains("Delta"));
    }

    #[test]
    fn times_round_up_to_microseconds() {
        let t = UNIX_EPOCH + Duration::new(10, 1_000_001);
        assert_eq!(
            round_up_micros(t),
            UNIX_EPOCH + Duration::new(10, 1_001_000)
        );
        let t = UNIX_EPOCH + Duration::new(10, 5_000);
        assert_eq!(round_up_micros(t), t);
    }
}
