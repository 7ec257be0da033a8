//! The prior backup's manifest that PostgreSQL 17's incremental
//! BASE_BACKUP needs (UPLOAD_MANIFEST), made from the delta base's own
//! objects, so that any walden or WAL-G backup, local or remote, full or
//! delta, can be the base.
//!
//! What the server reads of it (basebackup_incremental.c, PostgreSQL 17):
//! version 2 with `System-Identifier` (version 1 is refused, a different
//! identifier is refused); `WAL-Ranges`, whose start is where the WAL
//! summaries must begin (the base's start LSN) and whose end must not be
//! after this backup's start (the base's finish LSN); the `Path` of every
//! file, only to ask "was this relation file in the prior backup?" (a file
//! that was not is sent whole). `Size` must be present but is not used,
//! nor are checksums or times; `Manifest-Checksum` is the SHA-256 of every
//! line but the last, and is checked. All of that is in the base's
//! sentinel and `files_metadata.json`: nothing extra is stored.
//!
//! The manifest is written to an unlinked temporary file as the base's
//! `files_metadata.json` streams from storage: memory does not grow with
//! the number of files.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::sync::Arc;

use crate::backup::delta::base::Base;
use crate::backup::delta::index::visit_files_metadata;
use crate::backup::layout;
use crate::error::{Error, Result};
use crate::pg::replication::format_lsn;
use crate::storage::Storage;

/// A manifest ready to upload.
pub struct Manifest {
    /// Rewound to its start.
    pub file: File,
    pub files: u64,
    /// The base names its members with a leading `/` (a local backup):
    /// this delta's members must be named the same way, for a restore
    /// matches a delta's increments with its base's files by name.
    pub slash: bool,
}

/// Writes through to `out` and into the running SHA-256.
struct Hashing<W: Write> {
    out: W,
    sha: ring::digest::Context,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The manifest of `base` (on `timeline`, from its name), for a server
/// whose system identifier is `system_identifier` (the base's own when
/// its sentinel records one: the server then refuses a foreign base).
pub fn synthesise(
    storage: &Arc<dyn Storage>,
    base: &Base,
    timeline: u32,
    system_identifier: u64,
) -> Result<Manifest> {
    let key = layout::files_metadata_key(&base.name);
    let reader = match storage.get(&key, 0) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(Error::Other(format!(
                "the delta base {} has no '{key}': a remote delta needs the base's file list to tell \
                 PostgreSQL which files it holds; take a full backup (--full), or choose another base \
                 (--delta-from-name)",
                base.name
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let io_failed = |e| Error::io("writing the delta base's manifest to a temporary file", e);
    let spill = crate::localfile::anonymous_file("the delta base's manifest")?;
    let mut out = Hashing {
        out: BufWriter::with_capacity(64 * 1024, spill),
        sha: ring::digest::Context::new(&ring::digest::SHA256),
    };
    write!(
        out,
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {system_identifier},\n\"Files\": ["
    )
    .map_err(io_failed)?;
    let mut files = 0u64;
    let mut slash = None;
    let mut write_err = None;
    {
        let mut sink = |name: &str, _: Option<std::time::SystemTime>, _: Option<(&str, &str)>| {
            if write_err.is_some() {
                return;
            }
            let path = name.trim_start_matches('/');
            if path.is_empty() {
                return;
            }
            slash.get_or_insert(name.starts_with('/'));
            let sep = if files == 0 { "\n" } else { ",\n" };
            files += 1;
            let quoted = serde_json::Value::String(path.to_string()).to_string();
            if let Err(e) = write!(out, "{sep}{{ \"Path\": {quoted}, \"Size\": 0 }}") {
                write_err = Some(e);
            }
        };
        visit_files_metadata(reader, false, &mut sink).map_err(|e| {
            Error::Other(format!(
                "reading the delta base's '{key}': {e}; its files_metadata.json is damaged, take a full backup (--full)"
            ))
        })?;
    }
    if let Some(e) = write_err {
        return Err(io_failed(e));
    }
    if files == 0 {
        return Err(Error::Other(format!(
            "the delta base {} lists no files in '{key}' (pushed without files metadata?): a remote delta \
             needs the base's file list; take a full backup (--full)",
            base.name
        )));
    }
    let end = base.finish_lsn.unwrap_or(base.lsn).max(base.lsn);
    write!(
        out,
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        format_lsn(base.lsn),
        format_lsn(end)
    )
    .map_err(io_failed)?;
    let Hashing { out: mut rest, sha } = out;
    let checksum: String = sha
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    writeln!(rest, "\"Manifest-Checksum\": \"{checksum}\"}}").map_err(io_failed)?;
    let mut file = rest.into_inner().map_err(|e| io_failed(e.into_error()))?;
    file.rewind().map_err(io_failed)?;
    Ok(Manifest {
        file,
        files,
        slash: slash.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn base(name: &str) -> Base {
        Base {
            name: name.into(),
            lsn: 0x0200_0028,
            finish_lsn: Some(0x0200_0100),
            full_name: name.into(),
            count: 1,
            system_identifier: None,
            start_time: None,
        }
    }

    #[test]
    fn manifest_lists_the_base_files_and_checks_out() {
        let dir = std::env::temp_dir().join(format!("walden-manifest-{}", std::process::id()));
        let settings = crate::config::Settings::from_pairs(&[(
            "WALG_FILE_PREFIX",
            dir.to_str().unwrap_or_default(),
        )]);
        let storage = crate::commands::open_storage(&settings).unwrap();
        let name = "base_000000020000000000000002";
        storage
            .put(
                &layout::files_metadata_key(name),
                br#"{"Files":{"/base/5/16384":{"IsSkipped":true},"/global/1262":{},"/a\"b":{}},"TarFileSets":{"x":["/base/5/16384"]}}"#,
            )
            .unwrap();
        let mut m = synthesise(&storage, &base(name), 2, 7_412_345_678_901_234_567).unwrap();
        assert_eq!(m.files, 3);
        assert!(m.slash);
        let mut text = String::new();
        m.file.read_to_string(&mut text).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["PostgreSQL-Backup-Manifest-Version"], 2);
        assert_eq!(v["System-Identifier"], 7_412_345_678_901_234_567u64);
        assert_eq!(v["Files"][0]["Path"], "base/5/16384");
        assert_eq!(v["Files"][2]["Path"], "a\"b");
        assert_eq!(v["WAL-Ranges"][0]["Timeline"], 2);
        assert_eq!(v["WAL-Ranges"][0]["Start-LSN"], "0/2000028");
        assert_eq!(v["WAL-Ranges"][0]["End-LSN"], "0/2000100");
        // PostgreSQL's check: SHA-256 of everything up to the last line.
        assert!(text.ends_with("}\n"));
        let body = &text[..text[..text.len() - 1].rfind('\n').unwrap() + 1];
        let want: String = ring::digest::digest(&ring::digest::SHA256, body.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v["Manifest-Checksum"], want.as_str());
    }
}
