//! `walden st`: WAL-G's storage tools, for looking at and repairing what
//! is in storage by hand.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::sync::Arc;

use lexopt::prelude::*;

use super::{codecs, open_storage};
use crate::codec::{FinishWrite, PlainSink};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::localfile::AtomicFile;
use crate::storage::upload::ObjectWriter;
use crate::storage::{Entry, Storage};
use crate::stream::{buffer, copy_object, upload_from};

const USAGE: &str = "walden st ls|get|put|cat|rm|check ... (see walden help st)";

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next()? {
        Some(Value(v)) => v.string()?,
        _ => return Err(Error::Usage(format!("missing subcommand; usage: {USAGE}"))),
    };
    // Options and positionals of the subcommand, in any order.
    let mut switches: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('r') => switches.push("recursive".into()),
            Short('a') => switches.push("all".into()),
            Short('s') => switches.push("read-stdin".into()),
            Short('f') => switches.push("force".into()),
            Long(name) => switches.push(name.to_string()),
            Value(v) => values.push(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let allowed: &[&str] = match sub.as_str() {
        "ls" => &["recursive", "all"],
        "get" => &["no-decrypt", "no-decompress"],
        "put" => &["no-compress", "no-encrypt", "read-stdin", "force"],
        "cat" => &["decrypt", "decompress"],
        "rm" | "check" => &[],
        other => {
            return Err(Error::Usage(format!(
                "unknown st subcommand '{other}'; usage: {USAGE}"
            )))
        }
    };
    if let Some(bad) = switches.iter().find(|s| !allowed.contains(&s.as_str())) {
        return Err(Error::Usage(format!("st {sub} has no option '{bad}'")));
    }
    let has = |s: &str| switches.iter().any(|x| x == s);
    let arg = |i: usize, what: &str| -> Result<String> {
        values
            .get(i)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("st {sub}: missing {what}")))
    };
    match sub.as_str() {
        "ls" => ls(
            settings,
            values.first().map(String::as_str).unwrap_or(""),
            has("recursive"),
            has("all"),
        ),
        "get" => get(
            settings,
            &arg(0, "PATH")?,
            &arg(1, "DEST")?,
            !has("no-decrypt"),
            !has("no-decompress"),
        ),
        "put" => {
            let remote = if has("read-stdin") {
                arg(0, "PATH")?
            } else {
                arg(1, "PATH")?
            };
            let local = if has("read-stdin") {
                None
            } else {
                Some(arg(0, "SRC")?)
            };
            let options = PutOptions {
                compress: !has("no-compress"),
                encrypt: !has("no-encrypt"),
                force: has("force"),
            };
            put(settings, local.as_deref(), &remote, options)
        }
        "cat" => cat(
            settings,
            &arg(0, "PATH")?,
            has("decrypt"),
            has("decompress"),
        ),
        "rm" => rm(settings, &arg(0, "PATH")?),
        _ => match arg(0, "read|write")?.as_str() {
            "read" => check_read(settings, &values[1..]),
            "write" => check_write(settings),
            other => Err(Error::Usage(format!(
                "st check {other}: expected read or write"
            ))),
        },
    }
}

/// A user's path as a storage key: no leading `/`.
fn key_of(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

fn ls(settings: &Settings, path: &str, recursive: bool, all: bool) -> Result<()> {
    let storage = open_storage(settings)?;
    let mut prefix = key_of(path);
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let stdout = io::stdout();
    let mut out = Listing {
        out: io::BufWriter::new(stdout.lock()),
        header_written: false,
        failure: None,
    };
    let relative = |key: &str| key.strip_prefix(prefix.as_str()).unwrap_or(key).to_string();
    storage.list(&prefix, recursive, &mut |entry| {
        match entry {
            Entry::Dir(d) => out.line("dir", 0, None, &relative(&d)),
            Entry::Object(o) => out.line("obj", o.size, o.modified, &relative(&o.key)),
        }
        Ok(())
    })?;
    if all {
        // What writes that never finished (a killed process) left: temp
        // objects, unfinished multipart uploads. Hidden from every other
        // listing, shown here so they can be found and removed with `st rm`.
        storage.list_leftovers(&prefix, &mut |o| {
            out.line("tmp", o.size, o.modified, &relative(&o.key));
            Ok(())
        })?;
    }
    out.finish()
}

/// `st ls` output. The header is written with the first line (or at the
/// end), so that a listing that fails at once prints only the error.
struct Listing<W: Write> {
    out: W,
    header_written: bool,
    failure: Option<io::Error>,
}

impl<W: Write> Listing<W> {
    fn line(&mut self, kind: &str, size: u64, modified: Option<std::time::SystemTime>, name: &str) {
        if self.failure.is_some() {
            return;
        }
        let modified = modified
            .map(crate::time::rfc3339_nano)
            .unwrap_or_else(|| "-".into());
        let written = self
            .header()
            .and_then(|()| writeln!(self.out, "{kind}\t{size}\t{modified}\t{name}"));
        if let Err(e) = written {
            self.failure = Some(e);
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            writeln!(self.out, "type\tsize\tlast modified\tname")?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let write_err = |e: io::Error| Error::io("writing the listing", e);
        if let Some(e) = self.failure.take() {
            return Err(write_err(e));
        }
        self.header().map_err(write_err)?;
        self.out.flush().map_err(write_err)
    }
}

/// Open `key` and put the decoding the flags ask for in front of it.
fn open_decoded(
    settings: &Settings,
    storage: &Arc<dyn Storage>,
    key: &str,
    decrypt: bool,
    decompress: bool,
) -> Result<Box<dyn Read + Send>> {
    let raw = storage.get(key, 0)?;
    if !decrypt && !decompress {
        return Ok(raw);
    }
    Ok(codecs(settings)?.reader(raw, key, decrypt, decompress)?)
}

fn get(settings: &Settings, path: &str, dest: &str, decrypt: bool, decompress: bool) -> Result<()> {
    let storage = open_storage(settings)?;
    let key = key_of(path);
    let mut source = open_decoded(settings, &storage, &key, decrypt, decompress)?;
    let mut file = AtomicFile::create(dest.as_ref())
        .map_err(|e| Error::io(format!("cannot create '{dest}'"), e))?;
    copy_object(&mut source, &mut file, &key)?;
    file.commit()
        .map_err(|e| Error::io(format!("cannot write '{dest}'"), e))
}

struct PutOptions {
    compress: bool,
    encrypt: bool,
    /// Replace an existing object; without it that is refused, as in WAL-G.
    force: bool,
}

fn put(settings: &Settings, local: Option<&str>, path: &str, options: PutOptions) -> Result<()> {
    let PutOptions {
        compress,
        encrypt,
        force,
    } = options;
    let storage = open_storage(settings)?;
    let codecs = codecs(settings)?;
    let mut key = key_of(path);
    if compress && !codecs.extension().is_empty() {
        key = format!("{key}.{}", codecs.extension());
    }
    if !force && storage.stat(&key)?.is_some() {
        return Err(Error::Other(format!(
            "object '{key}' already exists. To overwrite it, add the -f flag"
        )));
    }
    let mut source: Box<dyn Read> = match local {
        Some(p) => Box::new(
            std::fs::File::open(p).map_err(|e| Error::io(format!("cannot open '{p}'"), e))?,
        ),
        None => Box::new(io::stdin().lock()),
    };
    let sink = Box::new(ObjectWriter::new(storage.clone(), &key));
    let writer = codecs
        .writer(sink, compress, encrypt)
        .map_err(|e| Error::io("starting the encoder", e))?;
    let what = match local {
        Some(p) => format!("'{p}'"),
        None => "stdin".to_string(),
    };
    upload_from(&mut source, &what, writer, &key, &mut buffer())?;
    log::info!("uploaded {} as {key}", local.unwrap_or("stdin"));
    Ok(())
}

fn cat(settings: &Settings, path: &str, decrypt: bool, decompress: bool) -> Result<()> {
    let storage = open_storage(settings)?;
    let key = key_of(path);
    let mut source = open_decoded(settings, &storage, &key, decrypt, decompress)?;
    let mut out: Box<dyn FinishWrite> = Box::new(PlainSink(io::BufWriter::new(io::stdout())));
    copy_object(&mut source, &mut out, &key)?;
    out.finish().map_err(|e| Error::io("writing to stdout", e))
}

fn rm(settings: &Settings, path: &str) -> Result<()> {
    let storage = open_storage(settings)?;
    let key = key_of(path);
    if storage.stat(&key)?.is_some() {
        storage.delete(std::slice::from_ref(&key))?;
        log::info!("deleted {key}");
        return Ok(());
    }
    // A folder: delete what is under it, a batch at a time, with the temp
    // objects of killed writes in it.
    let prefix = format!("{}/", key.trim_end_matches('/'));
    let mut batch = DeleteBatch {
        storage: storage.as_ref(),
        keys: Vec::new(),
        deleted: 0,
    };
    storage.list(&prefix, true, &mut |e| match e {
        Entry::Object(o) => batch.add(o.key),
        Entry::Dir(_) => Ok(()),
    })?;
    let mut aborted = 0;
    storage.list_leftovers(&prefix, &mut |l| match &l.upload_id {
        Some(id) => {
            storage.abort_multipart(&l.key, id)?;
            aborted += 1;
            Ok(())
        }
        None => batch.add(l.key),
    })?;
    let count = batch.finish()? + aborted;
    if count == 0 {
        return Err(Error::Other(format!(
            "nothing to delete: '{key}' is not in storage"
        )));
    }
    log::info!("deleted {count} objects under {prefix}");
    Ok(())
}

/// Keys to delete, sent to storage 1000 at a time (S3's batch limit).
struct DeleteBatch<'a> {
    storage: &'a dyn Storage,
    keys: Vec<String>,
    deleted: usize,
}

impl DeleteBatch<'_> {
    fn add(&mut self, key: String) -> crate::storage::Result<()> {
        self.keys.push(key);
        if self.keys.len() == 1000 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> crate::storage::Result<()> {
        self.storage.delete(&self.keys)?;
        self.deleted += self.keys.len();
        self.keys.clear();
        Ok(())
    }

    /// Delete what is left; the number of keys deleted.
    fn finish(mut self) -> crate::storage::Result<usize> {
        if !self.keys.is_empty() {
            self.flush()?;
        }
        Ok(self.deleted)
    }
}

fn check_read(settings: &Settings, paths: &[String]) -> Result<()> {
    let storage = open_storage(settings)?;
    storage.list("", false, &mut |_| Ok(()))?;
    for path in paths {
        let key = key_of(path);
        let mut r = storage.get(&key, 0)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| Error::io(format!("reading '{key}'"), e))?;
    }
    log::info!("read check passed on {}", storage.location());
    Ok(())
}

fn check_write(settings: &Settings) -> Result<()> {
    let storage = open_storage(settings)?;
    let key = "wal-g_storage_check";
    let probe: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
    storage.put(key, &probe)?;
    let mut back = Vec::new();
    storage
        .get(key, 0)?
        .read_to_end(&mut back)
        .map_err(|e| Error::io("reading the probe back", e))?;
    storage.delete(&[key.to_string()])?;
    if back != probe {
        return Err(Error::Other(format!(
            "write check failed on {}: the probe object came back different",
            storage.location()
        )));
    }
    log::info!("write check passed on {}", storage.location());
    Ok(())
}
