//! Writing a local file so that nobody ever sees it half-written: bytes go
//! to a temp name in the same directory, which is fsynced and renamed into
//! place only when everything arrived. A failure, or a stop signal, leaves
//! nothing behind.
//!
//! The temp file is created exclusively (`O_EXCL`, `O_NOFOLLOW`) under an
//! unpredictable name: DEST's directory may be writable by others (a
//! shared spool, /tmp), and a name they could guess and pre-create as a
//! symlink would make us write through it into any file we can write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::cleanup::{self, Tracked};

pub struct AtomicFile {
    temp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
    _tracked: Tracked,
}

/// 16 random hex digits, for temp names no one else can predict.
pub fn random_suffix() -> String {
    let mut random = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        // No system randomness: still unique, less unpredictable; the
        // exclusive create below is what keeps us safe.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        random = (now ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// An unlinked read-write file in the temp directory, for `what` (named
/// in the error): removed right after it is created, so a killed command
/// leaves nothing behind.
pub fn anonymous_file(what: &str) -> crate::error::Result<File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("walden-tmp-{}", random_suffix()));
    let failed = |e| {
        crate::error::Error::io(
            format!(
                "creating a temporary file in '{}' for {what} (set TMPDIR to a writable directory)",
                dir.display()
            ),
            e,
        )
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(failed)?;
    fs::remove_file(&path).map_err(failed)?;
    Ok(file)
}

/// Create `path` for writing; fails if anything (a file, a symlink) is
/// already there.
pub fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".walden-tmp.{}", random_suffix()));
        let temp = dest.with_file_name(temp_name);
        let file = create_exclusive(&temp)?;
        Ok(AtomicFile {
            _tracked: cleanup::track_file(temp.clone()),
            temp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    /// Make the file visible under its real name, complete but not yet
    /// durable: for a file whose reader makes it durable itself before it
    /// relies on it (see [`postgres_syncs`]). On failure the temp file is
    /// removed and DEST is as it was.
    pub fn commit_unsynced(mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        drop(file);
        fs::rename(&self.temp, &self.dest).inspect_err(|_| {
            let _ = fs::remove_file(&self.temp);
        })
    }

    /// Make the file durable and visible under its real name. On failure
    /// the temp file is removed and DEST is as it was.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        let published = file
            .sync_all()
            .and_then(|()| {
                drop(file);
                fs::rename(&self.temp, &self.dest)
            })
            .inspect_err(|_| {
                let _ = fs::remove_file(&self.temp);
            });
        published?;
        let dir = match self.dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        sync_dir(&dir)
    }
}

/// True for the names PostgreSQL gives `restore_command`'s `%p`: it
/// removes any such file before the call and, after it, moves the file to
/// its real name in pg_wal with `durable_rename` (fsync of the file, the
/// rename and the directory; `KeepFileRestoredFromArchive`), or reads and
/// removes it. An fsync of ours there would be done twice (about 9 ms of
/// a 16 MiB segment's fetch, measured).
pub fn postgres_syncs(dest: &Path) -> bool {
    dest.file_name()
        .is_some_and(|n| n == "RECOVERYXLOG" || n == "RECOVERYHISTORY")
}

/// Ask the kernel to start writing `len` bytes of `file` from `offset`
/// to disk now (`sync_file_range`, which does not wait; `len` 0: to the
/// end): disk writes then overlap the work that produces the next bytes,
/// and the fsync or syncfs that follows finds little left to write. A
/// failure is harmless, that sync covers it.
pub fn start_writeback(fd: std::os::fd::RawFd, offset: u64, len: u64) {
    // SAFETY: the callers' descriptors stay open for the call; the flag
    // only starts writeback.
    unsafe {
        libc::sync_file_range(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// Make a directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_only_after_commit() {
        let dir = std::env::temp_dir().join(format!("walden-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("f");
        let mut a = AtomicFile::create(&dest).unwrap();
        a.write_all(b"x").unwrap();
        assert!(!dest.exists());
        a.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"x");
        let mut b = AtomicFile::create(&dir.join("g")).unwrap();
        b.write_all(b"y").unwrap();
        drop(b);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "the abandoned temp file is gone"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("walden-atomic-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // DEST is a non-empty directory: the rename fails after the fsync.
        fs::create_dir_all(dir.join("dest/inside")).unwrap();
        let mut a = AtomicFile::create(&dir.join("dest")).unwrap();
        a.write_all(b"x").unwrap();
        assert!(a.commit().is_err());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["dest"], "only DEST is left");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temp_names_are_created_exclusively() {
        let dir = std::env::temp_dir().join(format!("walden-atomic-excl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("victim");
        fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            create_exclusive(&link).is_err(),
            "a symlink is not followed"
        );
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_ne!(random_suffix(), random_suffix());
        fs::remove_dir_all(dir).unwrap();
    }
}
