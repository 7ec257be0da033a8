//! pgBackRest's `aes-256-cbc` objects (spec §8.1), which are exactly what
//! `openssl enc -aes-256-cbc -md sha1` writes: `Salted__`, an 8-byte salt,
//! then the CBC ciphertext with PKCS#7 padding; key and IV from OpenSSL's
//! `EVP_BytesToKey` with SHA-1 and one round. Decrypted as a stream: only
//! the last block is held back, for the padding.
//!
//! CBC has no MAC: a wrong passphrase or a damaged file shows at the end
//! (bad padding) or not at all, so every caller also checks the SHA-1 the
//! format gives for the plaintext (info-file checksum, manifest checksum,
//! the SHA-1 in a WAL name).

use std::io::{self, Read};

use aes::cipher::{Array, BlockModeDecrypt, KeyIvInit};
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};

pub const MAGIC: &[u8] = b"Salted__";
const BLOCK: usize = 16;
/// Ciphertext read per refill.
const CHUNK: usize = 64 << 10;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// OpenSSL's `EVP_BytesToKey(aes-256-cbc, sha1, salt, pass, count = 1)`:
/// D1 = SHA1(pass salt), Di = SHA1(Di-1 pass salt); key = 32 bytes, IV = 16.
fn key_iv(pass: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut material = Vec::with_capacity(60);
    let mut previous: Vec<u8> = Vec::new();
    while material.len() < 48 {
        let mut h = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
        h.update(&previous);
        h.update(pass);
        h.update(salt);
        previous = h.finish().as_ref().to_vec();
        material.extend_from_slice(&previous);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&material[..32]);
    iv.copy_from_slice(&material[32..48]);
    (key, iv)
}

fn bad(problem: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, problem.to_string())
}

/// The plaintext of an encrypted object read from `inner`.
pub struct Decrypt<R> {
    inner: R,
    dec: Aes256CbcDec,
    /// Ciphertext not yet decrypted: a partial block, or the last full
    /// block held back until the end shows whether it carries the padding.
    pending: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> Decrypt<R> {
    /// Read the 16-byte header and set up the key. `pass` is used as raw
    /// bytes: the user's passphrase as given, sub-passphrases as their
    /// base64 text (spec §8.1).
    pub fn new(mut inner: R, pass: &str) -> io::Result<Decrypt<R>> {
        let mut header = [0u8; 16];
        read_full(&mut inner, &mut header).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("shorter than the 16-byte header of an encrypted file (truncated?)")
            } else {
                e
            }
        })?;
        if &header[..8] != MAGIC {
            return Err(bad(
                "has no 'Salted__' header, so it is not encrypted as pgBackRest encrypts (is the repository encrypted?)",
            ));
        }
        let (key, iv) = key_iv(pass.as_bytes(), &header[8..]);
        Ok(Decrypt {
            inner,
            dec: Aes256CbcDec::new(&Array(key), &Array(iv)),
            pending: Vec::with_capacity(CHUNK + BLOCK),
            plain: Vec::with_capacity(CHUNK + BLOCK),
            pos: 0,
            done: false,
        })
    }

    fn decrypt_in_place(&mut self, data: &mut [u8]) {
        let (blocks, rest) = Array::slice_as_chunks_mut(data);
        debug_assert!(rest.is_empty());
        self.dec.decrypt_blocks(blocks);
    }

    fn refill(&mut self) -> io::Result<()> {
        self.plain.clear();
        self.pos = 0;
        let start = self.pending.len();
        self.pending.resize(start + CHUNK, 0);
        let n = loop {
            match self.inner.read(&mut self.pending[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.pending.truncate(start);
                    return Err(e);
                }
            }
        };
        self.pending.truncate(start + n);
        if n == 0 {
            self.done = true;
            if self.pending.len() != BLOCK {
                return Err(bad(
                    "encrypted data is not a whole number of 16-byte blocks (truncated file?)",
                ));
            }
            let mut last = std::mem::take(&mut self.pending);
            self.decrypt_in_place(&mut last);
            let pad = usize::from(last[BLOCK - 1]);
            if pad == 0 || pad > BLOCK || last[BLOCK - pad..].iter().any(|&b| usize::from(b) != pad)
            {
                return Err(bad(
                    "bad padding after decryption: wrong passphrase or damaged file",
                ));
            }
            last.truncate(BLOCK - pad);
            self.plain = last;
            return Ok(());
        }
        // Every full block but the last can be decrypted now; when the
        // data ends on a block boundary the last one may hold the padding.
        let full = self.pending.len() / BLOCK * BLOCK;
        let ready = if full == self.pending.len() {
            full - BLOCK
        } else {
            full
        };
        // Swap the buffers instead of allocating: `plain` takes the
        // decrypted blocks, `pending` keeps the few bytes after them.
        std::mem::swap(&mut self.plain, &mut self.pending);
        self.pending.clear();
        self.pending.extend_from_slice(&self.plain[ready..]);
        self.plain.truncate(ready);
        let mut plain = std::mem::take(&mut self.plain);
        self.decrypt_in_place(&mut plain);
        self.plain = plain;
        Ok(())
    }
}

impl<R: Read> Read for Decrypt<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf 'hello pgbackrest\n' | openssl enc -aes-256-cbc -md sha1
    /// -pass pass:walrus -S 0102030405060708` after the 16-byte header
    /// (OpenSSL 3 leaves the header out when given the salt).
    const OPENSSL: &str = "19347621cd4c5085acdc6fef521d7ebeb45253f64835fac83b17a440ccb24aac";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn encrypt(plain: &[u8], pass: &str, salt: [u8; 8]) -> Vec<u8> {
        use aes::cipher::BlockModeEncrypt;
        let (key, iv) = key_iv(pass.as_bytes(), &salt);
        let mut enc = cbc::Encryptor::<aes::Aes256>::new(&Array(key), &Array(iv));
        let pad = BLOCK - plain.len() % BLOCK;
        let mut data = plain.to_vec();
        data.extend(std::iter::repeat_n(pad as u8, pad));
        let (blocks, _) = Array::slice_as_chunks_mut(&mut data);
        enc.encrypt_blocks(blocks);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&salt);
        out.extend(data);
        out
    }

    fn decrypt(bytes: &[u8], pass: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Decrypt::new(bytes, pass)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_all_lengths_around_blocks_and_chunks() {
        for len in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            33,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let enc = encrypt(&plain, "walrus", [1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(enc.len(), 16 + (len / 16 + 1) * 16, "{len}");
            assert_eq!(decrypt(&enc, "walrus").unwrap(), plain, "{len}");
        }
    }

    #[test]
    fn header_matches_openssl_and_errors_are_clear() {
        let enc = encrypt(b"hello pgbackrest\n", "walrus", [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(enc[16..], hex(OPENSSL)[..]);
        let mut openssl = b"Salted__\x01\x02\x03\x04\x05\x06\x07\x08".to_vec();
        openssl.extend(hex(OPENSSL));
        assert_eq!(decrypt(&openssl, "walrus").unwrap(), b"hello pgbackrest\n");
        // A wrong passphrase: the padding check catches it (almost always;
        // the callers' SHA-1 checks catch the rest).
        let err = decrypt(&enc, "walrus2").unwrap_err().to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        let err = decrypt(&enc[..enc.len() - 3], "walrus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = decrypt(b"[backrest]\nbackrest-format=5\n", "walrus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Salted__"), "{err}");
    }
}
