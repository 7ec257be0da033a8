//! WAL-G's object encodings: compression chosen by the object name's
//! extension, then libsodium encryption. Writing compresses, then encrypts;
//! reading decrypts, then decompresses. Everything streams.

pub mod compression;
pub mod libsodium;
mod lz4;

use std::fmt;
use std::io::{self, Read, Write};

use crate::config::{ConfigError, Settings};
pub use compression::Method;

/// A writer that must be told when the data ends, so that it can write its
/// trailer (frame end mark, FINAL chunk, last multipart part) and report
/// any error. Dropping it without `finish` abandons what was written.
pub trait FinishWrite: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

#[derive(Debug)]
pub enum CodecError {
    /// The object's extension names no format walden reads.
    UnknownExtension(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::UnknownExtension(ext) => write!(
                f,
                "unknown compression extension '.{ext}' (known: lz4, lzma, zst, br, gz is not supported)"
            ),
        }
    }
}

impl std::error::Error for CodecError {}

/// The encodings configured for this run.
#[derive(Clone)]
pub struct Codecs {
    pub method: Method,
    pub zstd_level: i32,
    /// Threads for one zstd stream: zstd is the one codec slower than
    /// disks and networks, so a lone stream uses every core. Callers that
    /// run several streams at once set it to 1.
    pub zstd_workers: u32,
    pub key: Option<libsodium::SecretKey>,
}

impl Codecs {
    pub fn from_settings(settings: &Settings) -> Result<Codecs, ConfigError> {
        let method_text = settings.get("WALG_COMPRESSION_METHOD").unwrap_or_default();
        let method = Method::from_setting(&method_text).ok_or_else(|| ConfigError::Invalid {
            name: "WALG_COMPRESSION_METHOD".into(),
            value: method_text.clone(),
            problem: "unknown compression method; use one of lz4, lzma, zstd, brotli, none".into(),
        })?;
        let zstd_level = match settings.get_explicit("WALG_ZSTD_LEVEL") {
            None => compression::ZSTD_DEFAULT_LEVEL,
            Some(text) => {
                if method != Method::Zstd {
                    return Err(ConfigError::Invalid {
                        name: "WALG_ZSTD_LEVEL".into(),
                        value: text,
                        problem: "only applies with WALG_COMPRESSION_METHOD=zstd".into(),
                    });
                }
                compression::zstd_level(&text).ok_or_else(|| ConfigError::Invalid {
                    name: "WALG_ZSTD_LEVEL".into(),
                    value: text,
                    problem: "use fastest, default, better, best or a level 1-22".into(),
                })?
            }
        };
        let key = libsodium::SecretKey::from_settings(settings)?;
        Ok(Codecs {
            method,
            zstd_level,
            // Counting cores reads cgroup files: only when zstd needs it.
            zstd_workers: match method {
                Method::Zstd => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                _ => 1,
            },
            key,
        })
    }

    /// Compress (unless `compress` is false), then encrypt (if a key is
    /// configured and `encrypt` is true), into `sink`.
    pub fn writer(
        &self,
        sink: Box<dyn FinishWrite>,
        compress: bool,
        encrypt: bool,
    ) -> io::Result<Box<dyn FinishWrite>> {
        let sink = match (&self.key, encrypt) {
            (Some(key), true) => Box::new(libsodium::EncryptWriter::new(sink, key)),
            _ => sink,
        };
        if compress {
            compression::encoder(self.method, self.zstd_level, self.zstd_workers, sink)
        } else {
            Ok(sink)
        }
    }

    /// The extension objects written by [`Codecs::writer`] get.
    pub fn extension(&self) -> &'static str {
        self.method.extension()
    }

    /// Decrypt (if a key is configured and `decrypt` is true), then
    /// decompress by the object name's extension (if `decompress`).
    pub fn reader(
        &self,
        source: Box<dyn Read + Send>,
        object_name: &str,
        decrypt: bool,
        decompress: bool,
    ) -> Result<Box<dyn Read + Send>, CodecError> {
        let method = if decompress {
            Method::from_object_name(object_name)?
        } else {
            Method::None
        };
        let source: Box<dyn Read + Send> = match (&self.key, decrypt) {
            (Some(key), true) => Box::new(libsodium::DecryptReader::new(source, key)),
            _ => source,
        };
        Ok(compression::decoder(method, source))
    }
}

/// The end of a writer chain: hands bytes to any `Write` and flushes it on
/// finish. Used for files and stdout.
pub struct PlainSink<W: Write + Send>(pub W);

impl<W: Write + Send> Write for PlainSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> FinishWrite for PlainSink<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}
