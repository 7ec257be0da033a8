//! WAL objects in storage: `wal_005/<name>.<ext>`, stored compressed and
//! encrypted like every WAL-G object, read back whatever compression they
//! were written with.

use std::io::Read;
use std::sync::Arc;

use crate::codec::{Codecs, Method};
use crate::error::{Error, Result};
use crate::storage::upload::ObjectWriter;
use crate::storage::{Entry, Storage};
use crate::stream::upload_from;

pub const WAL_FOLDER: &str = "wal_005/";

/// The key a file named `name` is stored under with `codecs`.
pub fn key_for(codecs: &Codecs, name: &str) -> String {
    match codecs.extension() {
        "" => format!("{WAL_FOLDER}{name}"),
        ext => format!("{WAL_FOLDER}{name}.{ext}"),
    }
}

/// Compress, encrypt and store everything `source` yields as `name`;
/// returns the key. Durable when this returns.
pub fn upload(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
    source: &mut dyn Read,
    buf: &mut [u8],
) -> Result<String> {
    let key = key_for(codecs, name);
    let sink = Box::new(ObjectWriter::new(storage.clone(), &key));
    let writer = codecs
        .writer(sink, true, true)
        .map_err(|e| Error::io("starting the encoder", e))?;
    upload_from(source, &format!("WAL file '{name}'"), writer, &key, buf)
        .map_err(|e| Error::Other(format!("{e} (storage {})", storage.location())))?;
    Ok(key)
}

/// Which request looks for a WAL file first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// GET the configured extension; only if that is missing, one LIST
    /// finds any other. A hit costs one request, a miss two.
    GetFirst,
    /// One LIST of `wal_005/<name>`, then a GET of what it found. A miss
    /// costs one request, a hit two: for a name that was just missing,
    /// which a standby asks for again and again until it is archived.
    ListFirst,
}

/// Open the stored WAL file `name`, decoded, whatever compression it was
/// written with (the configured one is tried first). `Ok(None)` when no
/// variant exists. Never more than two requests to learn that it does not
/// exist, whatever the number of extensions: a standby polls for the next
/// segment forever, and each poll is a request someone pays for. (On a
/// filesystem, where a lookup is a system call, every extension is tried.)
pub fn open(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
    probe: Probe,
) -> Result<Option<(String, Box<dyn Read + Send>)>> {
    if storage.lookups_are_local() {
        return open_by_probing(storage, codecs, name);
    }
    if probe == Probe::GetFirst {
        let key = key_for(codecs, name);
        match storage.get(&key, 0) {
            Ok(raw) => return Ok(Some((key.clone(), codecs.reader(raw, &key, true, true)?))),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Some(key) = find_variant(storage, codecs, name)? else {
        return Ok(None);
    };
    match storage.get(&key, 0) {
        Ok(raw) => Ok(Some((key.clone(), codecs.reader(raw, &key, true, true)?))),
        // Listed a moment ago, deleted since (a concurrent delete): absent.
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Try every extension in turn: on a filesystem each miss is one failed
/// open(), cheaper than reading a wal_005 directory of many thousand files.
fn open_by_probing(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
) -> Result<Option<(String, Box<dyn Read + Send>)>> {
    let preferred = key_for(codecs, name);
    let others = ORDER.iter().map(|m| match m.extension() {
        "" => format!("{WAL_FOLDER}{name}"),
        ext => format!("{WAL_FOLDER}{name}.{ext}"),
    });
    for key in std::iter::once(preferred.clone()).chain(others.filter(|k| *k != preferred)) {
        match storage.get(&key, 0) {
            Ok(raw) => return Ok(Some((key.clone(), codecs.reader(raw, &key, true, true)?))),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The stored key of `name` with any extension WAL-G writes, found with
/// one listing; the configured extension wins if several exist.
fn find_variant(storage: &Arc<dyn Storage>, codecs: &Codecs, name: &str) -> Result<Option<String>> {
    let prefix = format!("{WAL_FOLDER}{name}");
    let preferred = key_for(codecs, name);
    let mut best: Option<(usize, String)> = None;
    storage.list(&prefix, false, &mut |entry| {
        let Entry::Object(info) = entry else {
            return Ok(());
        };
        let Some(rank) = info.key.strip_prefix(&prefix).and_then(rank_of) else {
            return Ok(());
        };
        let rank = if info.key == preferred { 0 } else { rank };
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, info.key));
        }
        Ok(())
    })?;
    Ok(best.map(|(_, key)| key))
}

/// The extensions WAL-G reads, in the order it tries them.
const ORDER: [Method; 5] = [
    Method::Lz4,
    Method::Zstd,
    Method::Lzma,
    Method::Brotli,
    Method::None,
];

/// Order of preference of what follows the WAL file name in a key (the
/// order WAL-G tries decompressors in); `None` for other objects sharing
/// the prefix, such as `<name>.partial` or a longer name.
fn rank_of(suffix: &str) -> Option<usize> {
    let ext = match suffix {
        "" => "",
        s => s.strip_prefix('.')?,
    };
    ORDER
        .iter()
        .position(|m| m.extension() == ext)
        .map(|i| i + 1)
}
