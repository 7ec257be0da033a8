//! Partial restore, `backup-fetch --restore-only db,"db 2",db/table`
//! (spec §9.5): which members of a backup to write, judged from that
//! backup's `DatabasesByNames` (`names.rs` writes it).
//!
//! [`Request`] is the parsed argument; [`Filter`] is the request applied
//! to one backup's names, and answers [`Filter::keeps`] per member name.
//! A delta chain builds one filter per backup (each backup has its own
//! file nodes: a table rewritten between two backups has a new one).
//!
//! What is kept, as WAL-G keeps it: everything outside `base/` and
//! `pg_tblspc/`, every file of a database with OID < 16384 (template0,
//! template1, postgres), every file whose name is not a number
//! (`PG_VERSION`, `pg_filenode.map`), directories, and in every other
//! database the file nodes of its system relations (OID < 16384). Then
//! what the request names: a database whole (every file of it, not just
//! the relations the names list), or a table with its `subtables`:
//! partitions and children and, in backups walden wrote, their indexes
//! and TOAST. Unlike WAL-G: a name that matches nothing, or a backup
//! without names, is an error instead of a restore of nothing; `*` is
//! the only wildcard (WAL-G uses the names as regular expressions); for a
//! backup WAL-G wrote, a table's TOAST relation is found by its name
//! (`pg_toast.pg_toast_<table OID>`) and the missing indexes are named in
//! a warning.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{BufReader, Read};
use std::sync::Arc;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::layout;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// OIDs below this are assigned by initdb (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// One name of `--restore-only`: a database pattern and, for a table,
/// the table pattern as `schema.table`.
#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    text: String,
    database: String,
    table: Option<String>,
}

/// The parsed `--restore-only` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    patterns: Vec<Pattern>,
}

impl Request {
    /// Every `--restore-only` value given, in order. Each value is a
    /// comma-separated list read as one CSV record, as WAL-G's flag
    /// library reads it: a field may be quoted (`"a,b"`, `""` for a
    /// quote inside); a quote inside an unquoted field is an error.
    pub fn parse(values: &[String]) -> Result<Request> {
        let mut patterns = Vec::new();
        for value in values {
            for name in csv_fields(value)? {
                patterns.push(pattern(&name)?);
            }
        }
        Ok(Request { patterns })
    }

    /// The names as given, for messages.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.patterns.iter().map(|p| p.text.as_str()).collect();
        names.join(", ")
    }
}

fn usage(text: String) -> Error {
    Error::Usage(format!("--restore-only: {text}"))
}

/// The fields of one CSV record (Go's `encoding/csv`, not lazy, no
/// leading-space trimming). An empty value is no field at all.
fn csv_fields(value: &str) -> Result<Vec<String>> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(usage(format!(
                            "'{value}' has a quoted name without its closing quote"
                        )))
                    }
                    Some('"') => match chars.peek() {
                        Some('"') => {
                            chars.next();
                            field.push('"');
                        }
                        None | Some(',') => break,
                        Some(_) => {
                            return Err(usage(format!(
                                "'{value}' has text after a quoted name, or a lone quote inside it: quote a name whole (\"db 2/t\"), \
                                 a quote inside as two (\"\")"
                            )))
                        }
                    },
                    Some(c) => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err(usage(format!(
                        "'{value}' has a quote inside a name; quote the whole name (\"my db\")"
                    )));
                }
                field.push(c);
                chars.next();
            }
        }
        if field.contains(['\n', '\r']) {
            return Err(usage(format!("'{value}' has a line break in a name")));
        }
        fields.push(field);
        match chars.next() {
            Some(',') => continue,
            _ => return Ok(fields),
        }
    }
}

/// WAL-G's split: `db`, `db/table` (schema `public`), `db/schema.table`,
/// `db/schema/table`; anything else is refused.
fn pattern(name: &str) -> Result<Pattern> {
    let wrong = || {
        usage(format!(
            "'{name}' is not a database or table name; use 'db', 'db/table', 'db/schema.table' or 'db/schema/table'"
        ))
    };
    let parts: Vec<&str> = name.split('/').collect();
    let table = match parts.as_slice() {
        [_] => None,
        [_, t] => Some(table_name(t).ok_or_else(wrong)?),
        [_, s, t] => Some(table_name(&format!("{s}.{t}")).ok_or_else(wrong)?),
        _ => return Err(wrong()),
    };
    if parts[0].is_empty()
        || table
            .as_deref()
            .is_some_and(|t| t.split('.').any(str::is_empty))
    {
        return Err(wrong());
    }
    Ok(Pattern {
        text: name.to_string(),
        database: parts[0].to_string(),
        table,
    })
}

fn table_name(t: &str) -> Option<String> {
    match t.split('.').count() {
        1 => Some(format!("public.{t}")),
        2 => Some(t.to_string()),
        _ => None,
    }
}

/// `*` matches any run of characters (WAL-G turns it into `.*`); every
/// other character matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Greedy match with backtracking to the last star: linear enough for names.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One relation of `DatabasesByNames`: file node, OID, subtables.
#[derive(Debug, Default)]
struct Table {
    oid: u32,
    node: u32,
    subtables: Vec<(String, u32)>,
}

#[derive(Debug, Default)]
struct Database {
    oid: u32,
    tables: HashMap<String, Table>,
}

/// A backup's `DatabasesByNames`.
#[derive(Debug, Default)]
pub struct Names {
    databases: HashMap<String, Database>,
}

impl Names {
    /// Read `DatabasesByNames` out of backup `name`'s
    /// `files_metadata.json`, skipping its (large) `Files` and
    /// `TarFileSets` without holding them. `None`: the backup has no
    /// files metadata, or no names in it.
    pub fn read(storage: &Arc<dyn Storage>, name: &str) -> Result<Option<Names>> {
        let key = layout::files_metadata_key(name);
        let reader = match storage.get(&key, 0) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Names::from_reader(reader).map_err(|e| {
            Error::Other(format!(
                "reading the database names of backup {name} from '{key}': {e}"
            ))
        })
    }

    fn from_reader(reader: impl Read) -> std::result::Result<Option<Names>, String> {
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(256 * 1024, reader));
        let value = de.deserialize_map(OnlyNames).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Names::from_value(&v).map(Some),
        }
    }

    fn from_value(v: &Value) -> std::result::Result<Names, String> {
        let dbs = v
            .as_object()
            .ok_or("DatabasesByNames is not a JSON object")?;
        let mut names = Names::default();
        for (db_name, db) in dbs {
            let mut database = Database {
                oid: number(db.get("oid"), db_name)?,
                tables: HashMap::new(),
            };
            // "tables" (older WAL-G: name → OID, no file nodes) is
            // ignored, as WAL-G's reader ignores it.
            if let Some(tables) = db.get("tables_new").and_then(Value::as_object) {
                for (t_name, t) in tables {
                    let mut table = Table {
                        oid: number(t.get("oid"), t_name)?,
                        node: number(t.get("relfilenode"), t_name)?,
                        subtables: Vec::new(),
                    };
                    if let Some(subs) = t.get("subtables").and_then(Value::as_object) {
                        for (s_name, s) in subs {
                            table
                                .subtables
                                .push((s_name.clone(), number(s.get("relfilenode"), s_name)?));
                        }
                    }
                    database.tables.insert(t_name.clone(), table);
                }
            }
            names.databases.insert(db_name.clone(), database);
        }
        Ok(names)
    }
}

fn number(v: Option<&Value>, what: &str) -> std::result::Result<u32, String> {
    v.and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("'{what}' has no valid oid/relfilenode"))
}

/// Visits the top-level object, keeping only `DatabasesByNames`.
struct OnlyNames;

impl<'de> Visitor<'de> for OnlyNames {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a files_metadata.json object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut names = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "DatabasesByNames" {
                names = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(names)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
}

/// The request applied to one backup's names.
#[derive(Debug)]
pub struct Filter {
    /// Databases restored whole.
    whole: HashSet<u32>,
    /// Per database, the file nodes restored.
    nodes: HashMap<u32, HashSet<u32>>,
}

impl Filter {
    /// Build the filter for backup `backup` from its names. `strict`: a
    /// name that matches no database or table is an error (the backup
    /// being restored); for an older backup of a delta chain pass false,
    /// since a table may not have existed yet.
    pub fn new(request: &Request, names: &Names, backup: &str, strict: bool) -> Result<Filter> {
        let mut filter = Filter {
            whole: HashSet::new(),
            nodes: HashMap::new(),
        };
        for db in names.databases.values() {
            let set = filter.nodes.entry(db.oid).or_default();
            for t in db.tables.values().filter(|t| t.oid < FIRST_NORMAL_OID) {
                set.insert(t.node);
                set.extend(t.subtables.iter().map(|s| s.1));
            }
        }
        for p in &request.patterns {
            let mut databases = 0;
            let mut tables = 0;
            let mut sorted: Vec<(&String, &Database)> = names
                .databases
                .iter()
                .filter(|(n, _)| glob_matches(&p.database, n))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (db_name, db) in sorted {
                databases += 1;
                let Some(table_pattern) = &p.table else {
                    filter.whole.insert(db.oid);
                    log::info!("Partial restore: database '{db_name}' is restored whole");
                    continue;
                };
                let legacy = lists_toast_apart(db);
                let set = filter.nodes.entry(db.oid).or_default();
                let mut matched: Vec<(&String, &Table)> = db
                    .tables
                    .iter()
                    .filter(|(n, _)| glob_matches(table_pattern, n))
                    .collect();
                matched.sort_by(|a, b| a.0.cmp(b.0));
                for (t_name, t) in matched {
                    tables += 1;
                    set.insert(t.node);
                    set.extend(t.subtables.iter().map(|s| s.1));
                    log::info!(
                        "Partial restore: table '{t_name}' of database '{db_name}' is restored with {} partitions, indexes and TOAST relations",
                        t.subtables.len()
                    );
                    if legacy && t.oid >= FIRST_NORMAL_OID {
                        // WAL-G's names: TOAST found by its name, indexes unknown.
                        let toast = format!("pg_toast.pg_toast_{}", t.oid);
                        for n in [toast.clone(), format!("{toast}_index")] {
                            if let Some(rel) = db.tables.get(&n) {
                                set.insert(rel.node);
                            }
                        }
                        log::warn!(
                            "backup {backup} was taken by WAL-G, whose names do not list a table's indexes: the indexes \
                             of '{t_name}' in database '{db_name}' are not restored; run REINDEX TABLE {t_name} after recovery"
                        );
                    }
                }
            }
            if strict && databases == 0 {
                let mut known: Vec<&str> = names.databases.keys().map(String::as_str).collect();
                known.sort();
                return Err(Error::Usage(format!(
                    "--restore-only: '{}' names no database of backup {backup}; its databases are: {}",
                    p.text,
                    known.join(", ")
                )));
            }
            if strict && p.table.is_some() && tables == 0 {
                return Err(Error::Usage(format!(
                    "--restore-only: '{}' names no table of backup {backup} (tables are matched as schema.table, the \
                     schema 'public' when none is given)",
                    p.text
                )));
            }
        }
        Ok(filter)
    }

    /// Whether member `name` (as in the tar: `/base/16384/16385.1`) is
    /// written (spec §9.5 step 3).
    pub fn keeps(&self, name: &str) -> bool {
        let rel = name.strip_prefix('/').unwrap_or(name);
        if !(rel.starts_with("base/") || rel.starts_with("pg_tblspc/")) {
            return true;
        }
        let (parent, base) = match rel.rsplit_once('/') {
            Some(pair) => pair,
            None => return true,
        };
        let node = leading_number(base);
        let db = leading_number(parent.rsplit('/').next().unwrap_or(parent));
        if db < FIRST_NORMAL_OID || node == 0 || self.whole.contains(&db) {
            return true;
        }
        self.nodes.get(&db).is_some_and(|s| s.contains(&node))
    }
}

/// Whether `db`'s names come from WAL-G's writer, which lists a TOAST
/// relation only as a top-level key: some table has a TOAST relation
/// (`pg_toast.pg_toast_<its OID>`) that its `subtables` do not name.
/// walden's writer names every table's TOAST relation there.
fn lists_toast_apart(db: &Database) -> bool {
    db.tables.iter().any(|(_, t)| {
        let toast = format!("pg_toast.pg_toast_{}", t.oid);
        db.tables.contains_key(&toast) && !t.subtables.iter().any(|(n, _)| *n == toast)
    })
}

/// The number a file name starts with, up to its first `.` or `_`
/// (`16385.1`, `16385_fsm`); 0 when it is not a number.
fn leading_number(name: &str) -> u32 {
    let head = name.split(['.', '_']).next().unwrap_or("");
    head.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: &[&str]) -> Result<Request> {
        Request::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn pat(text: &str, db: &str, table: Option<&str>) -> Pattern {
        Pattern {
            text: text.into(),
            database: db.into(),
            table: table.map(Into::into),
        }
    }

    #[test]
    fn parses_restore_only_as_wal_g() {
        let r = req(&[r#"db,"db 2",db/table,db/schema.table,"a,b"/s/t"#]);
        // A quote in the middle of an unquoted field is refused, as Go's csv does.
        assert!(r.is_err());
        let r = req(&[r#"db,"db 2",db/table,db/schema.table,db/s/t,"x""y""#]).unwrap();
        assert_eq!(
            r.patterns,
            vec![
                pat("db", "db", None),
                pat("db 2", "db 2", None),
                pat("db/table", "db", Some("public.table")),
                pat("db/schema.table", "db", Some("schema.table")),
                pat("db/s/t", "db", Some("s.t")),
                pat("x\"y", "x\"y", None),
            ]
        );
        // Several flags add up; the shell has already removed its quotes.
        let r = req(&["my_database,another database", "\"a,b/t*\""]).unwrap();
        assert_eq!(
            r.patterns[1],
            pat("another database", "another database", None)
        );
        assert_eq!(r.patterns[2], pat("a,b/t*", "a,b", Some("public.t*")));
        assert_eq!(req(&[""]).unwrap().patterns, vec![]);
        for bad in [
            "db/a.b.c",
            "db/s/t/u",
            "db/s.x/t",
            ",db",
            "db/",
            "\"db",
            "\"db\"x",
            "\"a,b\"/t",
            "/t",
        ] {
            let e = req(&[bad]).unwrap_err().to_string();
            assert!(e.starts_with("--restore-only: "), "{bad}: {e}");
        }
    }

    #[test]
    fn stars_match_runs_and_nothing_else_is_special() {
        assert!(glob_matches("db*", "db"));
        assert!(glob_matches("db*", "db2"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("public.*_log", "public.a_b_log"));
        assert!(!glob_matches("public.*_log", "public.a_logx"));
        assert!(!glob_matches("my.db", "myxdb"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("db", "db2"));
    }

    const NAMES: &str = r#"{"Files":{"/base/16384/16385":{"IsIncremented":false}},"TarFileSets":{"part_001.tar":["/base"]},
      "DatabasesByNames":{
        "postgres":{"oid":5,"tables_new":{"pg_catalog.pg_class":{"oid":1259,"relfilenode":1259}}},
        "app":{"oid":16384,"tables_new":{
          "pg_catalog.pg_class":{"oid":1259,"relfilenode":16500},
          "pg_catalog.pg_class_oid_index":{"oid":2662,"relfilenode":2662},
          "public.t":{"oid":16385,"relfilenode":16390,"subtables":{
             "public.t_pkey":{"oid":16391,"relfilenode":16391},
             "pg_toast.pg_toast_16385":{"oid":16388,"relfilenode":16388}}},
          "public.u":{"oid":16400,"relfilenode":16400},
          "pg_toast.pg_toast_16385":{"oid":16388,"relfilenode":16388}}},
        "other":{"oid":16450,"tables_new":{"public.t":{"oid":16451,"relfilenode":16451}}}}}"#;

    #[test]
    fn filters_members_as_spec_9_5() {
        let names = Names::from_reader(NAMES.as_bytes()).unwrap().unwrap();
        let f = Filter::new(&req(&["app/t"]).unwrap(), &names, "b", true).unwrap();
        for keep in [
            "/global/1262",
            "/PG_VERSION",
            "/base/5/16999",
            "/base/16384",
            "/base/16384/PG_VERSION",
            "/base/16384/pg_filenode.map",
            "/base/16384/16500",
            "/base/16384/2662",
            "/base/16384/16390",
            "/base/16384/16390.1",
            "/base/16384/16390_fsm",
            "/base/16384/16391",
            "/base/16384/16388",
            "/pg_tblspc/17000/PG_15_202209061/16384/16390",
            "backup_label",
        ] {
            assert!(f.keeps(keep), "{keep}");
        }
        for drop in [
            "/base/16384/1259",
            "/base/16384/16400",
            "/base/16450/16451",
            "/pg_tblspc/17000/PG_15_202209061/16450/16451.2",
        ] {
            assert!(!f.keeps(drop), "{drop}");
        }
        let f = Filter::new(&req(&["oth*"]).unwrap(), &names, "b", true).unwrap();
        assert!(f.keeps("/base/16450/99999"));
        assert!(!f.keeps("/base/16384/16390"));
        // Nothing matched: a clear error, not a restore of nothing.
        let e = Filter::new(&req(&["nosuch"]).unwrap(), &names, "b", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'nosuch' names no database of backup b")
                && e.contains("app, other, postgres"),
            "{e}"
        );
        let e = Filter::new(&req(&["app/nosuch"]).unwrap(), &names, "b", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no table"), "{e}");
        assert!(Filter::new(&req(&["app/nosuch"]).unwrap(), &names, "b", false).is_ok());
    }

    #[test]
    fn wal_g_names_bring_toast_by_name() {
        let text = NAMES.replacen(
            r#""pg_toast.pg_toast_16385":{"oid":16388,"relfilenode":16388}}},"#,
            r#""public.t_pkey":{"oid":16391,"relfilenode":16391}}},"#,
            1,
        );
        let names = Names::from_reader(text.as_bytes()).unwrap().unwrap();
        assert!(lists_toast_apart(&names.databases["app"]));
        let f = Filter::new(&req(&["app/t"]).unwrap(), &names, "b", true).unwrap();
        assert!(f.keeps("/base/16384/16388"));
        let walden = Names::from_reader(NAMES.as_bytes()).unwrap().unwrap();
        assert!(!lists_toast_apart(&walden.databases["app"]));
    }

    #[test]
    fn backups_without_names() {
        let none = Names::from_reader(&br#"{"Files":{},"TarFileSets":{}}"#[..]).unwrap();
        assert!(none.is_none());
        assert!(Names::from_reader(&b"{"[..]).is_err());
    }
}
