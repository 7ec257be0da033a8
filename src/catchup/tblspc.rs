//! Tablespaces on catchup-send/receive. WAL-G's walk does not follow the
//! `pg_tblspc/OID` links and aborts on them ("read …/pg_tblspc/OID: is a
//! directory", WAL-G 3.0.9), so it has no rule to copy. walden walks
//! through the links on both sides, so a tablespace's files travel under
//! `pg_tblspc/OID/…` and land wherever the replica's own link points. The
//! replica keeps its links: the primary's locations (its tablespace_map)
//! would point the replica at the primary's directories when both run on
//! one host, or at paths the replica's host may not have.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// Whether `name` (a member path) is a tablespace link to walk through.
pub fn is_link(rel_dir: &Path, meta: &fs::Metadata) -> bool {
    rel_dir == Path::new("pg_tblspc") && meta.file_type().is_symlink()
}

/// The primary's tablespaces the replica has no link for: refused before
/// anything is sent, with what to do.
pub fn check_replica_has_all<V>(pgdata: &Path, theirs: &HashMap<String, V>) -> Result<()> {
    let dir = pgdata.join("pg_tblspc");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing '{}'", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing '{}'", dir.display()), e))?;
        let path = entry.path();
        let Ok(location) = fs::read_link(&path) else {
            continue; // an in-place tablespace: a directory, sent as one
        };
        let oid = entry.file_name().to_string_lossy().into_owned();
        if !theirs.contains_key(&format!("pg_tblspc/{oid}")) {
            return Err(Error::Other(format!(
                "tablespace {oid} (at '{}' on this server) is newer than the replica, which has \
                 no pg_tblspc/{oid}: on the replica's host make an empty directory for it, owned \
                 by the PostgreSQL user, link it (ln -s DIR REPLICA-PGDATA/pg_tblspc/{oid}), then \
                 run catchup-receive and catchup-send again",
                location.display()
            )));
        }
    }
    Ok(())
}

/// A tablespace_map from the sender, each tablespace the replica has a
/// link for pointed at that link's target (PostgreSQL recreates the links
/// from the map when it starts from backup_label). walden sends an empty
/// map; WAL-G sends the primary's.
pub fn map_to_replica(pgdata: &Path, map: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(map);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mine = body.split_once(' ').and_then(|(oid, _)| {
            let oid_ok = !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit());
            let target = fs::read_link(pgdata.join("pg_tblspc").join(oid)).ok()?;
            let target = target.to_str()?;
            (oid_ok && !target.contains(['\n', '\r'])).then(|| format!("{oid} {target}\n"))
        });
        match mine {
            Some(l) => {
                log::info!("tablespace_map: keeping the replica's {}", l.trim_end());
                out.push_str(&l);
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_points_at_the_replicas_links() {
        let dir = std::env::temp_dir().join(format!("walden-tblspc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink("/replica/ts", dir.join("pg_tblspc/16384")).unwrap();
        let map = b"16384 /primary/ts\n16999 /primary/other\n";
        assert_eq!(
            map_to_replica(&dir, map),
            b"16384 /replica/ts\n16999 /primary/other\n"
        );
        assert_eq!(map_to_replica(&dir, b""), b"");
        let mut theirs = HashMap::new();
        theirs.insert("pg_tblspc/16384".to_string(), ());
        check_replica_has_all(&dir, &theirs).unwrap();
        theirs.clear();
        let e = check_replica_has_all(&dir, &theirs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tablespace 16384 (at '/replica/ts'"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
