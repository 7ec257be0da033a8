//! WAL-G's "archive status" markers: an empty file
//! `walg_data/walg_archive_status/<name>` under pg_wal says that a
//! background upload already stored `<name>`, so the later archive_command
//! call for it can return at once. Kept compatible so that markers WAL-G
//! left behind are honoured after the swap, and the other way round.

use std::fs;
use std::path::{Path, PathBuf};

pub struct Markers {
    dir: Option<PathBuf>,
}

/// The marker name of a WAL file: its name minus the last extension
/// (`X.partial` → `X`, `00000002.history` → `00000002`).
pub fn marker_name(file_name: &str) -> &str {
    match file_name.rsplit_once('.') {
        Some((stem, _)) => stem,
        None => file_name,
    }
}

impl Markers {
    /// `wal_dir` is pg_wal. Without a usable directory nothing is ever
    /// marked, which only costs a redundant upload.
    pub fn new(wal_dir: &Path) -> Markers {
        let dir = wal_dir.join("walg_data").join("walg_archive_status");
        let dir = match fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                log::warn!(
                    "cannot use {}: {e}; background uploads will not be remembered",
                    dir.display()
                );
                None
            }
        };
        Markers { dir }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// A marker is a file: a name whose marker would be the directory
    /// itself or its parent (`.history`, `...`) is never marked.
    pub fn is_marked(&self, file_name: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| d.join(marker_name(file_name)).is_file())
    }

    pub fn mark(&self, file_name: &str) {
        if let Some(d) = &self.dir {
            if let Err(e) = fs::File::create(d.join(marker_name(file_name))) {
                log::warn!("cannot mark {file_name} as uploaded: {e}");
            }
        }
    }

    pub fn unmark(&self, file_name: &str) {
        if let Some(d) = &self.dir {
            let _ = fs::remove_file(d.join(marker_name(file_name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names() {
        assert_eq!(
            marker_name("000000010000000000000002"),
            "000000010000000000000002"
        );
        assert_eq!(marker_name("00000002.history"), "00000002");
        assert_eq!(
            marker_name("000000010000000000000005.partial"),
            "000000010000000000000005"
        );
        assert_eq!(
            marker_name("000000010000000000000002.00000028.backup"),
            "000000010000000000000002.00000028"
        );
    }

    #[test]
    fn names_whose_marker_is_a_directory_are_never_marked() {
        let wal = std::env::temp_dir().join(format!("walden-markers-{}", std::process::id()));
        let markers = Markers::new(&wal);
        for name in [".history", "...", "..x", "."] {
            assert!(!markers.is_marked(name), "{name}");
        }
        markers.mark("000000010000000000000002");
        assert!(markers.is_marked("000000010000000000000002"));
        fs::remove_dir_all(&wal).unwrap();
    }
}
