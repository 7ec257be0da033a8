//! WAL objects in storage: `wal_005/<name>.<ext>`, stored compressed and
//! encrypted like every WAL-G object, read back whatever compression they
//! were written with.

use std::io::Read;
use std::sync::Arc;

use crate::codec::{Codecs, Method};
use crate::error::{Error, Result};
use crate::storage::upload::ObjectWriter;
use crate::storage::Storage;
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

/// Open the stored WAL file `name`, decoded. The configured compression's
/// extension is tried first, then every other one WAL-G writes; a GET that
/// answers "not found" is the probe, so a hit costs one request.
/// `Ok(None)` when no variant exists.
pub fn open(
    storage: &Arc<dyn Storage>,
    codecs: &Codecs,
    name: &str,
) -> Result<Option<(String, Box<dyn Read + Send>)>> {
    let mut methods = vec![codecs.method];
    for m in [
        Method::Lz4,
        Method::Zstd,
        Method::Lzma,
        Method::Brotli,
        Method::None,
    ] {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    for method in methods {
        let key = match method.extension() {
            "" => format!("{WAL_FOLDER}{name}"),
            ext => format!("{WAL_FOLDER}{name}.{ext}"),
        };
        match storage.get(&key, 0) {
            Ok(raw) => {
                let reader = codecs.reader(raw, &key, true, true)?;
                return Ok(Some((key, reader)));
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}
