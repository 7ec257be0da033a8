//! How one pgBackRest object becomes its plaintext (spec §2, §10):
//! decrypt when the repository is encrypted, then decompress by the
//! manifest's `option-compress-type` (backup files) or the name's extension
//! (WAL). Readers only; walden never writes pgBackRest objects.

use std::io::{self, Read};

use super::cipher::Decrypt;
use crate::codec::compression::{decoder, Method};

/// pgBackRest's compression types (`.xz` is reserved there and unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    Gz,
    Lz4,
    Zst,
    Bz2,
}

impl Compress {
    /// `option-compress-type` of a manifest.
    pub fn from_type(name: &str) -> Option<Compress> {
        match name {
            "none" => Some(Compress::None),
            "gz" => Some(Compress::Gz),
            "lz4" => Some(Compress::Lz4),
            "zst" => Some(Compress::Zst),
            "bz2" => Some(Compress::Bz2),
            _ => None,
        }
    }

    /// A repository file's extension, without the dot (empty for none).
    pub fn from_extension(ext: &str) -> Option<Compress> {
        match ext {
            "" => Some(Compress::None),
            other => Compress::from_type(other).filter(|c| *c != Compress::None),
        }
    }

    /// The suffix of a stored file: `""`, `".gz"`, ...
    pub fn suffix(self) -> &'static str {
        match self {
            Compress::None => "",
            Compress::Gz => ".gz",
            Compress::Lz4 => ".lz4",
            Compress::Zst => ".zst",
            Compress::Bz2 => ".bz2",
        }
    }
}

/// The plaintext of `source`: decrypted with `pass` when given, then
/// decompressed. The header of an encrypted object is read here.
pub fn open(
    source: Box<dyn Read + Send>,
    pass: Option<&str>,
    compress: Compress,
) -> io::Result<Box<dyn Read + Send>> {
    let plain: Box<dyn Read + Send> = match pass {
        Some(pass) => Box::new(Decrypt::new(source, pass)?),
        None => source,
    };
    Ok(match compress {
        Compress::None => plain,
        Compress::Lz4 => decoder(Method::Lz4, plain),
        Compress::Zst => decoder(Method::Zstd, plain),
        // One gzip member, as pgBackRest writes (its reader takes no other).
        Compress::Gz => Box::new(flate2::read::GzDecoder::new(plain)),
        Compress::Bz2 => Box::new(bzip2::read::BzDecoder::new(plain)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(compress: Compress, packed: Vec<u8>, plain: &[u8]) {
        let mut out = Vec::new();
        open(Box::new(io::Cursor::new(packed)), None, compress)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain, "{compress:?}");
    }

    /// gz and bz2 as the command-line tools write them (pgBackRest uses
    /// the same libraries): decoded by the pure-Rust readers.
    #[test]
    fn gz_and_bz2_from_the_reference_tools() {
        let plain: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (tool, compress) in [("gzip", Compress::Gz), ("bzip2", Compress::Bz2)] {
            let mut child = match std::process::Command::new(tool)
                .arg("-c")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("{tool} is needed for this test (scripts/install-deps.sh): {e}"),
            };
            let mut stdin = child.stdin.take().unwrap();
            let data = plain.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&data));
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            roundtrip(compress, out.stdout, &plain);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(b"x").unwrap();
        let mut damaged = gz.finish().unwrap();
        let n = damaged.len();
        damaged[n - 6] ^= 1; // the CRC
        let mut out = Vec::new();
        let err = open(Box::new(io::Cursor::new(damaged)), None, Compress::Gz)
            .unwrap()
            .read_to_end(&mut out);
        assert!(err.is_err());
    }
}
