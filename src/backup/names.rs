//! `DatabasesByNames` of `files_metadata.json` (spec §3.3): which file
//! node each relation of each database has, so that `backup-fetch
//! --restore-only` can tell which files of `base/` belong to what.
//! Collected by backup-push after the data tars are uploaded (as WAL-G
//! does), one connection per database that allows connections, and
//! streamed row by row into an anonymous temp file as JSON: memory stays
//! one row whatever the number of relations.
//!
//! The layout is WAL-G's, with one addition that fixes its W10 (a table
//! restored without its indexes and TOAST data). WAL-G lists every
//! relation without an inheritance parent as a top-level key and its
//! inheritance descendants (partitions, children) flattened in its
//! `subtables`; a WAL-G reader restores a named table's own file node
//! plus every `subtables` file node. walden lists the same top-level keys
//! (so WAL-G's readers see everything they saw before, system catalogs
//! with OID < 16384 included), and adds to each table's `subtables` its
//! indexes, its TOAST table and the TOAST table's index, and those of
//! each descendant. WAL-G's readers then restore a named table with its
//! indexes and TOAST too; nothing they read changes meaning. Other fixes
//! against WAL-G's writer: a parent is found by OID, not by name in the
//! child's schema (W22), and a partition's index (whose inheritance
//! parent is a partitioned index without storage, which WAL-G drops
//! together with its children) is listed as a top-level key like every
//! other index.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};

use super::sentinel::go_json_string;
use crate::error::{Error, Result};
use crate::localfile::anonymous_file;
use crate::pg::{Client, ConnParams, Row};

/// One row per (top-level relation, subtable), the top-level relation
/// alone first (NULL subtable), grouped by top-level name. File node:
/// `relfilenode`, or for mapped catalogs (0) the last part of their path;
/// relations without storage are left out except partitioned tables
/// (kept with 0, as WAL-G keeps them: they carry their partitions).
const RELATIONS_SQL: &str = r#"WITH RECURSIVE
rel AS (
  SELECT c.oid, c.relkind, n.nspname || '.' || c.relname AS name,
         CASE WHEN c.relfilenode <> 0 THEN c.relfilenode::int8
              WHEN c.relkind = 'p' THEN 0
              ELSE substring(pg_catalog.pg_relation_filepath(c.oid) FROM '([0-9]+)$')::int8 END AS node
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
),
kept AS (SELECT * FROM rel WHERE node IS NOT NULL),
top AS (
  SELECT k.* FROM kept k
  WHERE k.relkind = 'i' OR NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_inherits i JOIN kept p ON p.oid = i.inhparent
    WHERE i.inhrelid = k.oid)
),
tree(top, member) AS (
  SELECT oid, oid FROM top
  UNION
  SELECT t.top, i.inhrelid FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.member
),
dep(top, sub) AS (
  SELECT top, member FROM tree WHERE member <> top
  UNION SELECT t.top, c.reltoastrelid FROM tree t JOIN pg_catalog.pg_class c ON c.oid = t.member
  UNION SELECT t.top, x.indexrelid FROM tree t JOIN pg_catalog.pg_index x ON x.indrelid = t.member
  UNION SELECT t.top, x.indexrelid FROM tree t JOIN pg_catalog.pg_class c ON c.oid = t.member
        JOIN pg_catalog.pg_index x ON x.indrelid = c.reltoastrelid
)
SELECT t.name, t.oid, t.node, s.name, s.oid, s.node
FROM top t LEFT JOIN (dep d JOIN kept s ON s.oid = d.sub) ON d.top = t.oid
ORDER BY t.name COLLATE "C", s.name COLLATE "C" NULLS FIRST"#;

/// The collected `DatabasesByNames` object, as JSON in a temp file.
pub struct Names {
    pub file: File,
}

/// Connect to every database that allows connections and list its
/// relations. A database walden cannot connect to is left out with a
/// warning (its tables then cannot be named in a partial restore); a
/// failure to list the databases at all is returned (the caller warns
/// and writes no `DatabasesByNames`).
pub fn collect(params: &ConnParams) -> Result<Names> {
    let databases: Vec<(String, u32)> = {
        let mut pg = Client::connect(params)?;
        let rows = pg.query(
            "SELECT datname, oid::int8 FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname COLLATE \"C\"",
        )?;
        let mut list = Vec::with_capacity(rows.len());
        for row in &rows {
            let name = row.get_str(0)?.unwrap_or("").to_string();
            list.push((name, oid(row, 1)?));
        }
        list
    };
    let file = anonymous_file("the database names of files_metadata.json")?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let failed = |e| Error::io("writing the database names of files_metadata.json", e);
    out.write_all(b"{").map_err(failed)?;
    let mut first = true;
    for (name, db_oid) in &databases {
        let mut db_params = params.clone();
        db_params.database = name.clone();
        let mut pg = match Client::connect(&db_params) {
            Ok(pg) => pg,
            Err(e) => {
                log::warn!(
                    "cannot list the relations of database '{name}' for partial restore, so it cannot be named in \
                     backup-fetch --restore-only of this backup: {e}"
                );
                continue;
            }
        };
        if !first {
            out.write_all(b",").map_err(failed)?;
        }
        first = false;
        let mut writer = DbWriter::begin(&mut out, name, *db_oid).map_err(failed)?;
        let mut error: Option<Error> = None;
        pg.query_each(RELATIONS_SQL, &mut |row| {
            if error.is_none() {
                if let Err(e) = writer.row(&row) {
                    error = Some(e);
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        writer.end().map_err(failed)?;
    }
    out.write_all(b"}").map_err(failed)?;
    let mut file = out.into_inner().map_err(|e| failed(e.into_error()))?;
    file.rewind().map_err(failed)?;
    Ok(Names { file })
}

fn oid(row: &Row, i: usize) -> Result<u32> {
    let n = row.get_i64(i)?.unwrap_or(0);
    u32::try_from(n).map_err(|_| {
        Error::Other(format!(
            "listing relations: the server returned {n} as an OID or file node"
        ))
    })
}

/// Writes one database's `DatabaseObjectsInfo` from rows in the order of
/// [`RELATIONS_SQL`], keys in WAL-G's struct order, `omitempty` kept.
struct DbWriter<'a> {
    out: &'a mut dyn Write,
    current: Option<String>,
    has_subtables: bool,
}

impl<'a> DbWriter<'a> {
    fn begin(out: &'a mut dyn Write, name: &str, oid: u32) -> std::io::Result<DbWriter<'a>> {
        write!(out, "{}:{{\"oid\":{oid}", go_json_string(name))?;
        Ok(DbWriter {
            out,
            current: None,
            has_subtables: false,
        })
    }

    fn row(&mut self, row: &Row) -> Result<()> {
        let top = row.get_str(0)?.unwrap_or("").to_string();
        let sub = match row.get_str(3)? {
            Some(s) => Some((s.to_string(), oid(row, 4)?, oid(row, 5)?)),
            None => None,
        };
        self.relation(&top, oid(row, 1)?, oid(row, 2)?, sub)
            .map_err(|e| Error::io("writing the database names of files_metadata.json", e))
    }

    /// One row: top-level relation `top`, and one of its subtables.
    fn relation(
        &mut self,
        top: &str,
        oid: u32,
        node: u32,
        sub: Option<(String, u32, u32)>,
    ) -> std::io::Result<()> {
        if self.current.as_deref() != Some(top) {
            match self.current {
                None => self.out.write_all(b",\"tables_new\":{")?,
                Some(_) => {
                    self.close_table()?;
                    self.out.write_all(b",")?;
                }
            }
            write!(
                self.out,
                "{}:{{\"oid\":{oid},\"relfilenode\":{node}",
                go_json_string(top)
            )?;
            self.current = Some(top.to_string());
            self.has_subtables = false;
        }
        if let Some((name, oid, node)) = sub {
            self.out.write_all(if self.has_subtables {
                b","
            } else {
                b",\"subtables\":{"
            })?;
            self.has_subtables = true;
            write!(
                self.out,
                "{}:{{\"oid\":{oid},\"relfilenode\":{node}}}",
                go_json_string(&name)
            )?;
        }
        Ok(())
    }

    fn close_table(&mut self) -> std::io::Result<()> {
        if self.has_subtables {
            self.out.write_all(b"}")?;
        }
        self.out.write_all(b"}")
    }

    fn end(mut self) -> std::io::Result<()> {
        if self.current.is_some() {
            self.close_table()?;
            self.out.write_all(b"}")?;
        }
        self.out.write_all(b"}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_spec_example_byte_for_byte() {
        // Spec §3.3's example, with keys in WAL-G's struct order.
        let mut out = Vec::new();
        out.push(b'{');
        let mut w = DbWriter::begin(&mut out, "postgres", 5).unwrap();
        w.relation("pg_catalog.pg_class", 1259, 1259, None).unwrap();
        w.end().unwrap();
        out.push(b'}');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"postgres":{"oid":5,"tables_new":{"pg_catalog.pg_class":{"oid":1259,"relfilenode":1259}}}}"#
        );
    }

    #[test]
    fn groups_subtables_and_escapes_names_as_go() {
        let mut out = Vec::new();
        let mut w = DbWriter::begin(&mut out, "db <2>", 16384).unwrap();
        w.relation("public.t", 16385, 16385, None).unwrap();
        w.relation(
            "public.t",
            16385,
            16385,
            Some(("public.t_pkey".into(), 16390, 16390)),
        )
        .unwrap();
        w.relation(
            "public.t",
            16385,
            16385,
            Some(("pg_toast.pg_toast_16385".into(), 16388, 16388)),
        )
        .unwrap();
        w.relation("public.t_pkey", 16390, 16390, None).unwrap();
        w.end().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\"db \\u003c2\\u003e\":{\"oid\":16384,\"tables_new\":{\
             \"public.t\":{\"oid\":16385,\"relfilenode\":16385,\"subtables\":{\
             \"public.t_pkey\":{\"oid\":16390,\"relfilenode\":16390},\
             \"pg_toast.pg_toast_16385\":{\"oid\":16388,\"relfilenode\":16388}}},\
             \"public.t_pkey\":{\"oid\":16390,\"relfilenode\":16390}}}"
        );
        // A database without relations: tables_new is omitted, as omitempty does.
        let mut out = Vec::new();
        DbWriter::begin(&mut out, "empty", 5)
            .unwrap()
            .end()
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#""empty":{"oid":5}"#);
    }
}
