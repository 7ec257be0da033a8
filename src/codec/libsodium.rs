//! libsodium `crypto_secretstream_xchacha20poly1305` as WAL-G frames it:
//! a 24-byte header, then 8192-byte plaintext chunks tagged MESSAGE, then
//! one FINAL chunk with the remaining 0..8191 bytes.
//!
//! Unlike WAL-G we refuse a stream that ends without its FINAL chunk (a
//! stream cut at a chunk boundary) and data after it.

use std::fmt;
use std::io::{self, Read, Write};

use dryoc::dryocstream::{DryocStream, Header, Key, Pull, Push, Tag};

use super::FinishWrite;
use crate::config::{ConfigError, Settings};
use crate::encoding::{decode_base64, decode_hex};
use crate::stream::read_full;

pub const CHUNK: usize = 8192;
const ABYTES: usize = 17;
const HEADER: usize = 24;

/// A 32-byte key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(--HIDDEN--)")
    }
}

impl SecretKey {
    /// `WALG_LIBSODIUM_KEY` (or the file `WALG_LIBSODIUM_KEY_PATH`) through
    /// `WALG_LIBSODIUM_KEY_TRANSFORM`; `None` when neither is set.
    pub fn from_settings(settings: &Settings) -> Result<Option<SecretKey>, ConfigError> {
        let transform = settings
            .get("WALG_LIBSODIUM_KEY_TRANSFORM")
            .unwrap_or_else(|| "none".into());
        let (name, raw) = if let Some(k) = settings.get_explicit("WALG_LIBSODIUM_KEY") {
            ("WALG_LIBSODIUM_KEY", k)
        } else if let Some(path) = settings.get_explicit("WALG_LIBSODIUM_KEY_PATH") {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                name: "WALG_LIBSODIUM_KEY_PATH".into(),
                value: path.clone(),
                problem: format!("cannot read the key file: {e}"),
            })?;
            ("WALG_LIBSODIUM_KEY_PATH", text.trim().to_string())
        } else {
            return Ok(None);
        };
        SecretKey::transform(&raw, &transform)
            .map(Some)
            .map_err(|problem| ConfigError::Invalid {
                name: name.into(),
                value: String::new(),
                problem: format!("{problem} (WALG_LIBSODIUM_KEY_TRANSFORM={transform})"),
            })
    }

    /// WAL-G's key rules: `none` takes the raw bytes (at least 25, cut or
    /// zero-padded to 32); `hex` and `base64` must decode to exactly 32.
    pub fn transform(raw: &str, transform: &str) -> Result<SecretKey, String> {
        let bytes = match transform {
            "none" => {
                let b = raw.as_bytes();
                if b.len() < 25 {
                    return Err(format!(
                        "the key is {} bytes long; it must be at least 25",
                        b.len()
                    ));
                }
                let mut key = [0u8; 32];
                let n = b.len().min(32);
                key[..n].copy_from_slice(&b[..n]);
                return Ok(SecretKey(key));
            }
            "hex" => decode_hex(raw).ok_or("the key is not valid hex")?,
            "base64" => decode_base64(raw).ok_or("the key is not valid padded base64")?,
            other => {
                return Err(format!(
                    "unknown key transform '{other}' (must be base64, hex or none)"
                ))
            }
        };
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("the key decodes to {} bytes; it must be 32", bytes.len()))?;
        Ok(SecretKey(key))
    }

    pub(crate) fn dryoc_key(&self) -> Key {
        Key::from(self.0)
    }
}

/// Encrypts everything written to it into `inner`.
pub struct EncryptWriter {
    inner: Option<Box<dyn FinishWrite>>,
    stream: DryocStream<Push>,
    header: Option<Header>,
    buffer: Vec<u8>,
}

impl EncryptWriter {
    pub fn new(inner: Box<dyn FinishWrite>, key: &SecretKey) -> Self {
        let (stream, header): (DryocStream<Push>, Header) =
            DryocStream::init_push(&key.dryoc_key());
        EncryptWriter {
            inner: Some(inner),
            stream,
            header: Some(header),
            buffer: Vec::with_capacity(CHUNK),
        }
    }

    fn push(&mut self, tag: Tag) -> io::Result<()> {
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| io::Error::other("used after finish"))?;
        if let Some(header) = self.header.take() {
            inner.write_all(header.as_ref())?;
        }
        let sealed = self
            .stream
            .push_to_vec(&self.buffer, None, tag)
            .map_err(|e| io::Error::other(format!("encryption failed: {e}")))?;
        inner.write_all(&sealed)?;
        self.buffer.clear();
        Ok(())
    }
}

impl Write for EncryptWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..take]);
        if self.buffer.len() == CHUNK {
            self.push(Tag::Message)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for EncryptWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.push(Tag::Final)?;
        match self.inner.take() {
            Some(inner) => inner.finish(),
            None => Err(io::Error::other("used after finish")),
        }
    }
}

/// Decrypts a WAL-G libsodium stream; any damage is an `InvalidData` error.
pub struct DecryptReader {
    inner: Box<dyn Read + Send>,
    key: SecretKey,
    stream: Option<DryocStream<Pull>>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl DecryptReader {
    pub fn new(inner: Box<dyn Read + Send>, key: &SecretKey) -> Self {
        DecryptReader {
            inner,
            key: key.clone(),
            stream: None,
            plain: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            let mut header = [0u8; HEADER];
            let n = read_full(&mut self.inner, &mut header)?;
            if n < HEADER {
                return Err(bad(
                    "the object is too short to be libsodium-encrypted (is it encrypted at all?)",
                ));
            }
            let header = Header::from(header);
            self.stream = Some(DryocStream::init_pull(&self.key.dryoc_key(), &header));
        }
        let mut sealed = vec![0u8; CHUNK + ABYTES];
        let n = read_full(&mut self.inner, &mut sealed)?;
        if n < ABYTES {
            return Err(bad(
                "the encrypted stream is truncated: it ends without its final chunk",
            ));
        }
        let stream = self.stream.as_mut().ok_or_else(|| bad("no stream"))?;
        let (plain, tag): (Vec<u8>, Tag) =
            stream.pull_to_vec(&sealed[..n], None).map_err(|_| {
                bad("decryption failed: wrong WALG_LIBSODIUM_KEY, or the object is corrupt")
            })?;
        if tag == Tag::Final {
            let mut probe = [0u8; 1];
            if read_full(&mut self.inner, &mut probe)? != 0 {
                return Err(bad("data follows the final chunk of the encrypted stream"));
            }
            self.done = true;
        } else if n < CHUNK + ABYTES {
            return Err(bad(
                "the encrypted stream is truncated: it ends without its final chunk",
            ));
        }
        self.plain = plain;
        self.pos = 0;
        Ok(())
    }
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

impl Read for DecryptReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PlainSink;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn key() -> SecretKey {
        SecretKey::transform("0123456789abcdef0123456789abcdef", "none").unwrap()
    }

    pub fn encrypt(key: &SecretKey, data: &[u8]) -> Vec<u8> {
        let out = Shared::default();
        let mut w = Box::new(EncryptWriter::new(Box::new(PlainSink(out.clone())), key));
        w.write_all(data).unwrap();
        w.finish().unwrap();
        let v = out.0.lock().unwrap().clone();
        v
    }

    fn decrypt(key: &SecretKey, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut r = DecryptReader::new(Box::new(io::Cursor::new(data)), key);
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn layout_is_walgs() {
        for (len, expect) in [
            (0usize, 24 + 17),
            (1, 24 + 18),
            (8192, 24 + 8209 + 17),
            (8193, 24 + 8209 + 18),
        ] {
            let enc = encrypt(&key(), &vec![7u8; len]);
            assert_eq!(enc.len(), expect, "plaintext {len}");
            assert_eq!(decrypt(&key(), enc).unwrap(), vec![7u8; len]);
        }
    }

    #[test]
    fn damage_is_refused() {
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let enc = encrypt(&key(), &data);
        let other = SecretKey::transform("ZZZZZZZZZZabcdef0123456789abcdef", "none").unwrap();
        let e = decrypt(&other, enc.clone()).unwrap_err();
        assert!(e.to_string().contains("wrong WALG_LIBSODIUM_KEY"), "{e}");
        // Cut exactly at a chunk boundary: WAL-G accepts this, we do not.
        let boundary = 24 + 8209 * 3;
        let e = decrypt(&key(), enc[..boundary].to_vec()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(decrypt(&key(), enc[..enc.len() - 1].to_vec()).is_err());
        assert!(decrypt(&key(), enc[..10].to_vec()).is_err());
        let mut tampered = enc.clone();
        tampered[5000] ^= 1;
        assert!(decrypt(&key(), tampered).is_err());
        let mut extra = enc;
        extra.push(0);
        assert!(decrypt(&key(), extra).is_err());
    }

    #[test]
    fn key_transforms() {
        assert!(SecretKey::transform("short", "none").is_err());
        let long = SecretKey::transform(&"a".repeat(40), "none").unwrap();
        assert_eq!(long.0, [b'a'; 32]);
        let padded = SecretKey::transform(&"b".repeat(25), "none").unwrap();
        assert_eq!(&padded.0[..25], &[b'b'; 25]);
        assert_eq!(&padded.0[25..], &[0u8; 7]);
        let hex = "00".repeat(31) + "ff";
        assert_eq!(SecretKey::transform(&hex, "hex").unwrap().0[31], 0xff);
        assert!(SecretKey::transform("00ff", "hex").is_err());
        // 32 bytes 0..32, standard padded base64.
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let k = SecretKey::transform(b64, "base64").unwrap();
        assert_eq!(k.0[31], 31);
        assert!(SecretKey::transform("AAEC", "base64").is_err());
        assert!(SecretKey::transform(b64, "rot13").is_err());
        assert_eq!(format!("{k:?}"), "SecretKey(--HIDDEN--)");
    }

    #[test]
    fn fuzz_decrypt() {
        let k = key();
        let seeds = vec![
            encrypt(&k, b""),
            encrypt(&k, b"short"),
            encrypt(&k, &vec![7u8; 3 * CHUNK + 5]),
        ];
        crate::fuzz::run("libsodium", &seeds, |input| {
            let out = decrypt(&k, input.to_vec());
            // Only an untouched stream may decrypt; a changed one never
            // yields data silently (authentication or framing refuses it).
            if let Ok(plain) = out {
                assert!(
                    seeds.iter().any(|s| s == input),
                    "a modified stream decrypted to {} bytes",
                    plain.len()
                );
            }
        });
    }
}
