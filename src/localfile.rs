//! Writing a local file so that nobody ever sees it half-written: bytes go
//! to a temp name in the same directory, which is fsynced and renamed into
//! place only when everything arrived. A failure leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct AtomicFile {
    temp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".walden-tmp.{}", std::process::id()));
        let temp = dest.with_file_name(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        Ok(AtomicFile {
            temp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    /// Make the file durable and visible under its real name.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp, &self.dest)?;
        let dir = match self.dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(dir)?.sync_all()
    }
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
}
