//! Extracting one tar of a backup into DEST, refusing anything that would
//! write outside it: a member with `..`, an absolute path, a symlink
//! whose target leaves DEST, a hard link to something outside, or a path
//! through a symlink. Errors name the member.
//!
//! WAL-G names members `/base/1/123`: one leading `/` is its way of saying
//! "relative to the data directory" and is dropped; what remains must be
//! relative (so `//etc/passwd` is refused).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::partial::Filter;
use super::tablespaces::{Plan, Route};
use crate::error::{Error, Result};
use crate::localfile::AtomicFile;

/// The relative path a member name stands for, or why it is refused.
pub fn safe_relative(name: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    let rest = name.strip_prefix(b"/").unwrap_or(name);
    if rest.starts_with(b"/") {
        return Err("it is an absolute path");
    }
    let mut out = PathBuf::new();
    for part in rest.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("it contains '..'"),
            p => out.push(std::ffi::OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

/// Whether a symlink at `rel` (relative to DEST) with target `target`
/// stays inside DEST, judged on the names alone: an absolute target, or
/// one whose `..` climb above DEST, is refused. So is a `..` after a
/// name: that name may be a symlink (made by the same backup, or a
/// tablespace's link), and climbing out of it leaves where the names say.
/// Leading `..`s climb from the link's own directory, which is a real one.
pub fn link_stays_inside(rel: &Path, target: &[u8]) -> bool {
    if target.starts_with(b"/") || target.is_empty() {
        return false;
    }
    let mut depth = rel.parent().map_or(0, |p| p.components().count()) as i64;
    let mut descended = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 || descended {
                    return false;
                }
            }
            _ => {
                depth += 1;
                descended = true;
            }
        }
    }
    true
}

/// Remembers whether the stream ever reported its end.
pub struct EofWatch {
    inner: Box<dyn Read + Send>,
    eof: bool,
}

impl Read for EofWatch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Large reads from the decoder and large writes: a file of a backup is
/// often 1 GiB, and io::copy's 8 KiB would mean 128k calls of each.
const COPY_BUFFER: usize = 1 << 20;

/// Copy all of `from` into `to` through `buf`.
fn copy_all(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    copy_with(from, to, buf, &mut |_, _| {})
}

/// Writeback is started every this many bytes of a file.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Copy all of `from` into `file`, asking the kernel to start writing
/// each [`WRITEBACK_EVERY`] bytes to disk at once (`sync_file_range`,
/// which does not wait). The sync before `pg_control` then finds little
/// left to write, and disk writes overlap decompression instead of
/// following it.
fn copy_with_writeback(from: &mut impl Read, file: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut started = 0u64;
    let mut kick = |written: u64, last: bool| {
        if written - started >= WRITEBACK_EVERY || (last && written > started) {
            crate::localfile::start_writeback(fd, started, written - started);
            started = written;
        }
    };
    copy_with(from, file, buf, &mut kick)
}

/// The copy loop; `after(total, last)` runs after each write and at the end.
fn copy_with(
    from: &mut impl Read,
    to: &mut impl Write,
    buf: &mut [u8],
    after: &mut dyn FnMut(u64, bool),
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => {
                after(total, true);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
        after(total, false);
    }
}

/// What a restore of a chain of backups does with a member, decided per
/// member by the chain's code (`super::chain`): extract it as usual, skip
/// it, or write it itself (an increment, or a copy that only fills what
/// newer backups left missing).
pub enum Decision {
    Extract,
    Skip,
    Custom,
}

/// A regular member handed to [`MemberPolicy::write`], its path checked
/// and its parent directories made.
pub struct Member<'a> {
    pub name: &'a [u8],
    pub path: &'a Path,
    pub mode: u32,
    pub size: u64,
    /// The tar object it comes from, for messages.
    pub key: &'a str,
}

pub trait MemberPolicy: Sync {
    fn decide(&self, name: &[u8], kind: tar::EntryType) -> Result<Decision>;
    /// Write a member `decide` returned [`Decision::Custom`] for; `data`
    /// is its content, exactly `member.size` bytes.
    fn write(&self, member: &Member, data: &mut dyn Read, buf: &mut [u8]) -> Result<()>;
    /// A regular member `decide` returned [`Decision::Extract`] for has
    /// been written whole.
    fn written(&self, _name: &[u8]) {}
}

/// Files are not synced one by one: the caller syncs each file system
/// once (`syncfs`) before `pg_control` arrives, which measured 2–3 times
/// faster than an fsync per file (`../shared/research/backup-speed.md`).
pub struct Extractor<'a> {
    pub dest: &'a Path,
    /// A sync follows: start writing files back as they are written.
    pub writeback: bool,
    /// For messages: the object being extracted.
    pub key: &'a str,
    /// Write each file under a temp name and rename it into place (for
    /// `pg_control`: never half a file where PostgreSQL reads it).
    pub atomic: bool,
    /// Members `/pg_tblspc/<oid>/...` of tablespaces go below their
    /// directories, with the same checks as below DEST.
    pub tablespaces: &'a Plan,
    /// Partial restore: only the files this keeps are written
    /// (directories always are).
    pub keep: Option<&'a Filter>,
    /// Per-member decisions when restoring a chain of delta backups.
    pub policy: Option<&'a dyn MemberPolicy>,
}

impl Extractor<'_> {
    fn refuse(&self, member: &[u8], why: &str) -> Error {
        Error::Other(format!(
            "tar '{}' has a member '{}' that would be written outside the destination ({why}); \
             the backup is refused: it was not written by WAL-G or walden, or it was tampered with",
            self.key,
            String::from_utf8_lossy(member)
        ))
    }

    fn damaged(&self, e: io::Error) -> Error {
        Error::Other(format!(
            "object '{}' is damaged or cannot be read: {e}",
            self.key
        ))
    }

    /// Extract every member of `source`, then check that only zero bytes
    /// follow the end of the archive (WAL-G's check; it also makes the
    /// decoders read, and verify, their trailers).
    pub fn extract(&self, source: Box<dyn Read + Send>) -> Result<()> {
        let mut archive = tar::Archive::new(EofWatch {
            inner: source,
            eof: false,
        });
        let mut buf = vec![0u8; COPY_BUFFER];
        {
            let entries = archive.entries().map_err(|e| self.damaged(e))?;
            for entry in entries {
                let entry = entry.map_err(|e| self.damaged(e))?;
                self.member(entry, &mut buf)?;
            }
        }
        let mut rest = archive.into_inner();
        // The tar crate ends quietly when the stream ends between members;
        // only a zero block (read without reaching the end) marks a whole
        // archive. Without it the object was cut short (compression `none`
        // and no encryption have no trailer of their own to tell).
        if rest.eof {
            return Err(Error::Other(format!(
                "object '{}' is truncated: its tar archive has no end marker",
                self.key
            )));
        }
        loop {
            let n = match rest.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.damaged(e)),
            };
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(Error::Other(format!(
                    "object '{}' has data after the end of its tar archive; it is damaged",
                    self.key
                )));
            }
        }
    }

    fn member(&self, mut entry: tar::Entry<'_, EofWatch>, buf: &mut [u8]) -> Result<()> {
        let name = entry.path_bytes().into_owned();
        let rel = safe_relative(&name).map_err(|why| self.refuse(&name, why))?;
        if let Some(filter) = self.keep {
            if !entry.header().entry_type().is_dir()
                && !filter.keeps(&String::from_utf8_lossy(&name))
            {
                return Ok(());
            }
        }
        let (root, rel) = match self.tablespaces.route(&rel) {
            Route::Skip => return Ok(()),
            Route::Dest => (self.dest, rel.as_path()),
            Route::Tablespace { root, rel } => (root, rel),
        };
        let kind = entry.header().entry_type();
        if !self.atomic && root == self.dest && rel == Path::new("global/pg_control") {
            // WAL-G's remote backups carry a copy in a data tar too; the
            // pg_control tar's, written last, is the one restored, so that
            // no unfinished restore has a pg_control PostgreSQL would start.
            log::debug!(
                "'{}' in '{}' skipped: pg_control comes last, from its own tar",
                String::from_utf8_lossy(&name),
                self.key
            );
            return Ok(());
        }
        let mode = entry.header().mode().map_err(|e| self.damaged(e))? & 0o777;
        if rel.as_os_str().is_empty() {
            // `/` or `./`: DEST itself (or a tablespace's directory), which exists.
            if kind.is_dir() {
                return Ok(());
            }
            return Err(self.refuse(&name, "it names the destination itself"));
        }
        if let Some(policy) = self.policy {
            match policy.decide(&name, kind)? {
                Decision::Extract => {}
                Decision::Skip => return Ok(()),
                Decision::Custom => {
                    let path = self.parent_dirs(root, &name, rel)?;
                    let member = Member {
                        name: &name,
                        path: &path,
                        mode,
                        size: entry.size(),
                        key: self.key,
                    };
                    return policy.write(&member, &mut entry, buf);
                }
            }
        }
        let path = self.parent_dirs(root, &name, rel)?;
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(self.refuse(&name, "a non-directory is in the way")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.make_dir(&name, &path, 0o777)?
                    }
                    Err(e) => return Err(self.local(&path, e)),
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.local(&path, e))
            }
            tar::EntryType::Regular | tar::EntryType::Continuous if self.atomic => {
                self.atomic_file(&name, &path, mode, entry.size(), &mut entry, buf)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let mut file = self.create(&name, &path)?;
                let copied = if self.writeback {
                    copy_with_writeback(&mut entry, &mut file, buf)
                } else {
                    copy_all(&mut entry, &mut file, buf)
                }
                .map_err(|e| {
                    Error::Other(format!(
                        "extracting '{}' from '{}' to '{}': {e}",
                        String::from_utf8_lossy(&name),
                        self.key,
                        path.display()
                    ))
                })?;
                if copied != size {
                    return Err(Error::Other(format!(
                        "object '{}' is truncated: member '{}' has {copied} of its {size} bytes",
                        self.key,
                        String::from_utf8_lossy(&name)
                    )));
                }
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| self.local(&path, e))?;
                if let Some(policy) = self.policy {
                    policy.written(&name);
                }
                Ok(())
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(rel, &target) {
                    return Err(self.refuse(
                        &name,
                        &format!(
                            "it is a symlink to '{}', outside the destination",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                self.clear(&name, &path)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(|e| self.local(&path, e))
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = safe_relative(&target).map_err(|why| {
                    self.refuse(&name, &format!("it is a hard link whose target {why}"))
                })?;
                let source = self.parent_dirs(self.dest, &target, &target_rel)?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(self.refuse(
                            &name,
                            "it is a hard link to something that is not a file extracted before it",
                        ))
                    }
                }
                self.clear(&name, &path)?;
                fs::hard_link(&source, &path).map_err(|e| self.local(&path, e))
            }
            // Extension headers the tar crate has not folded into the
            // next entry carry nothing to write.
            tar::EntryType::XGlobalHeader => Ok(()),
            other => Err(Error::Other(format!(
                "tar '{}' has a member '{}' of type {other:?}, which a data directory never holds; the backup is refused",
                self.key,
                String::from_utf8_lossy(&name)
            ))),
        }
    }

    /// A regular member written under a temp name, made durable, then
    /// renamed over `path`.
    fn atomic_file(
        &self,
        name: &[u8],
        path: &Path,
        mode: u32,
        size: u64,
        entry: &mut impl Read,
        buf: &mut [u8],
    ) -> Result<()> {
        let mut file = AtomicFile::create(path).map_err(|e| self.local(path, e))?;
        let copied = copy_all(entry, &mut file, buf).map_err(|e| {
            Error::Other(format!(
                "extracting '{}' from '{}' to '{}': {e}",
                String::from_utf8_lossy(name),
                self.key,
                path.display()
            ))
        })?;
        if copied != size {
            return Err(Error::Other(format!(
                "object '{}' is truncated: member '{}' has {copied} of its {} bytes",
                self.key,
                String::from_utf8_lossy(name),
                size
            )));
        }
        file.commit().map_err(|e| self.local(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| self.local(path, e))
    }

    fn local(&self, path: &Path, e: io::Error) -> Error {
        Error::io(
            format!("writing '{}' (from '{}')", path.display(), self.key),
            e,
        )
    }

    /// Make sure every directory between `root` (DEST or a tablespace's
    /// directory) and `rel` is a real directory (never a symlink, which
    /// could lead out of it), creating missing ones; returns root/rel.
    fn parent_dirs(&self, root: &Path, name: &[u8], rel: &Path) -> Result<PathBuf> {
        let mut p = root.to_path_buf();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                if let Component::Normal(part) = c {
                    p.push(part);
                } else {
                    return Err(self.refuse(name, "its path is not a plain relative path"));
                }
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(self.refuse(name, "its path goes through a symlink or a file"))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.make_dir(name, &p, 0o700)?
                    }
                    Err(e) => return Err(self.local(&p, e)),
                }
            }
        }
        Ok(root.join(rel))
    }

    /// Create one directory. Tars are extracted in parallel, so another
    /// one may have created it just now: that is fine if it is a real
    /// directory.
    fn make_dir(&self, name: &[u8], path: &Path, mode: u32) -> Result<()> {
        match std::fs::DirBuilder::new().mode(mode).create(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => Ok(()),
                    _ => Err(self.refuse(name, "its path goes through a symlink or a file")),
                }
            }
            Err(e) => Err(self.local(path, e)),
        }
    }

    /// Remove what a later member replaces (WAL-G's `backup_label` tar
    /// overwrites a stale one from a data tar); never a directory.
    fn clear(&self, name: &[u8], path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(self.refuse(name, "a directory is in the way")),
            Ok(_) => fs::remove_file(path).map_err(|e| self.local(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.local(path, e)),
        }
    }

    /// A new file at `path`, created exclusively and without following a
    /// symlink.
    fn create(&self, name: &[u8], path: &Path) -> Result<File> {
        self.clear(name, path)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| self.local(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(safe_relative(b"/base/1/2").unwrap(), Path::new("base/1/2"));
        assert_eq!(
            safe_relative(b"backup_label").unwrap(),
            Path::new("backup_label")
        );
        assert_eq!(safe_relative(b"./global/x").unwrap(), Path::new("global/x"));
        assert!(safe_relative(b"../evil").is_err());
        assert!(safe_relative(b"/base/../../evil").is_err());
        assert!(safe_relative(b"//etc/passwd").is_err());
    }

    #[test]
    fn link_targets() {
        assert!(link_stays_inside(Path::new("a/b"), b"c"));
        assert!(link_stays_inside(Path::new("a/b"), b"../c"));
        assert!(!link_stays_inside(Path::new("a/b"), b"../../c"));
        assert!(!link_stays_inside(Path::new("a"), b"/etc/passwd"));
        assert!(!link_stays_inside(Path::new("a"), b""));
        // Through a name that may be a link: `a/b/up -> ..` makes
        // a/b/up/../../../x leave DEST though its names do not.
        assert!(link_stays_inside(Path::new("a/b/up"), b".."));
        assert!(!link_stays_inside(
            Path::new("pg_wal"),
            b"a/b/up/../../../x"
        ));
        assert!(!link_stays_inside(
            Path::new("pg_wal"),
            b"pg_tblspc/16384/../../outside"
        ));
        assert!(!link_stays_inside(Path::new("a/b"), b"../c/../d"));
        assert!(link_stays_inside(Path::new("a/b/c"), b"../../d/e"));
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(tar: Vec<u8>, dest: &Path) -> Result<()> {
        Extractor {
            dest,
            writeback: false,
            key: "t.tar",
            atomic: false,
            tablespaces: &Plan::default(),
            keep: None,
            policy: None,
        }
        .extract(Box::new(io::Cursor::new(tar)))
    }

    #[test]
    fn hostile_members_are_refused() {
        use tar::EntryType as T;
        let root = std::env::temp_dir().join(format!("walden-extract-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dest = root.join("dest");
        fs::create_dir_all(&dest).unwrap();
        run(
            tar_with(&[
                ("/base", T::Directory, b"", ""),
                ("/base/1", T::Regular, b"x", ""),
            ]),
            &dest,
        )
        .unwrap();
        assert_eq!(fs::read(dest.join("base/1")).unwrap(), b"x");
        for bad in [
            tar_with(&[("../evil", T::Regular, b"x", "")]),
            tar_with(&[("//evil", T::Regular, b"x", "")]),
            tar_with(&[("/l", T::Symlink, b"", "/")]),
            tar_with(&[("/l", T::Symlink, b"", "..")]),
            tar_with(&[("/h", T::Link, b"", "../evil")]),
            tar_with(&[
                ("/l", T::Symlink, b"", "base"),
                ("/l/evil", T::Regular, b"x", ""),
            ]),
        ] {
            let e = run(bad, &dest).unwrap_err().to_string();
            assert!(e.contains("outside the destination"), "{e}");
        }
        assert!(!root.join("evil").exists());
        // A tar cut between members, or inside one, is an error.
        let whole = tar_with(&[
            ("/a", T::Regular, b"1", ""),
            ("/b", T::Regular, &[7u8; 700], ""),
        ]);
        for cut in [512 + 512, 512 + 512 + 512 + 100, 0] {
            let e = run(whole[..cut].to_vec(), &dest).unwrap_err().to_string();
            assert!(
                e.contains("truncated") || e.contains("damaged"),
                "{cut}: {e}"
            );
        }
        run(whole, &dest).unwrap();
        // Garbage after the archive is an error.
        let mut t = tar_with(&[("/ok", T::Regular, b"y", "")]);
        t.extend_from_slice(b"junk");
        assert!(run(t, &dest).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
