//! catchup-send/receive's encryption when WALG_LIBSODIUM_KEY is set.
//!
//! WAL-G puts its storage crypter on this stream (spec §11.3, W23), and
//! that cannot work: the crypter emits only whole 8192-byte chunks and is
//! never flushed or closed, so the receiver's file list never arrives
//! whole and both sides wait forever (seen with WAL-G 3.0.9 against
//! itself); a sender's last partial chunk (pg_control, the done mark)
//! would never be sent either. So walden does not copy it: with a key the
//! lz4 stream (compressed first, as storage objects are) is cut into
//! frames that each stand alone:
//!
//! ```text
//! "wldncat1"  24-byte secretstream header  { u32 LE n, n bytes sealed }*
//! ```
//!
//! Each frame is one `crypto_secretstream_xchacha20poly1305` message
//! (≤ 64 KiB of plaintext, so a flush can send a short one); the last is
//! tagged FINAL. Secretstream's nonces chain the frames, so a dropped,
//! reordered or altered frame fails authentication, and a stream that
//! ends before its FINAL frame is reported as cut. The additional data
//! names the direction, so one side's stream replayed back to it fails.
//! A WAL-G peer, encrypting or not, fails on the first bytes (they are not
//! an lz4 frame), and walden names it from the bytes it gets instead.

use std::io::{self, Read, Write};

use dryoc::dryocstream::{DryocStream, Header, Pull, Push, Tag};

use crate::codec::libsodium::SecretKey;
use crate::stream::read_full;

pub const MAGIC: [u8; 8] = *b"wldncat1";
const HEADER: usize = 24;
const ABYTES: usize = 17;
/// Plaintext per frame at most: one lz4 block and its size word fit.
const FRAME: usize = 64 << 10;
/// The first bytes of an lz4 frame: what WAL-G sends, key or not.
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// Which way the bytes go; bound into every frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Direction {
    ToSender,
    ToReceiver,
}

impl Direction {
    fn ad(self) -> &'static [u8] {
        match self {
            Direction::ToSender => b"walden catchup-receive to catchup-send",
            Direction::ToReceiver => b"walden catchup-send to catchup-receive",
        }
    }
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Encrypts what is written into frames; `flush` seals what it has.
pub struct SealedWriter<W: Write> {
    inner: W,
    stream: DryocStream<Push>,
    header: Option<Header>,
    ad: &'static [u8],
    buf: Vec<u8>,
    finished: bool,
}

impl<W: Write> SealedWriter<W> {
    pub fn new(inner: W, key: &SecretKey, direction: Direction) -> Self {
        let (stream, header): (DryocStream<Push>, Header) =
            DryocStream::init_push(&key.dryoc_key());
        SealedWriter {
            inner,
            stream,
            header: Some(header),
            ad: direction.ad(),
            buf: Vec::with_capacity(FRAME),
            finished: false,
        }
    }

    fn seal(&mut self, tag: Tag) -> io::Result<()> {
        if self.finished {
            return Err(io::Error::other("catch-up stream written after its end"));
        }
        if let Some(header) = self.header.take() {
            self.inner.write_all(&MAGIC)?;
            self.inner.write_all(header.as_ref())?;
        }
        let sealed = self
            .stream
            .push_to_vec(&self.buf, Some(self.ad), tag)
            .map_err(|e| io::Error::other(format!("encryption failed: {e}")))?;
        self.inner.write_all(&(sealed.len() as u32).to_le_bytes())?;
        self.inner.write_all(&sealed)?;
        self.buf.clear();
        Ok(())
    }

    /// The FINAL frame: the peer knows the stream ended here, not cut.
    pub fn finish(&mut self) -> io::Result<()> {
        self.seal(Tag::Final)?;
        self.finished = true;
        self.inner.flush()
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == FRAME {
            self.seal(Tag::Message)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.seal(Tag::Message)?;
        }
        self.inner.flush()
    }
}

/// Decrypts a [`SealedWriter`]'s frames; `Ok(0)` only after FINAL.
pub struct SealedReader<R: Read> {
    inner: R,
    key: SecretKey,
    ad: &'static [u8],
    stream: Option<DryocStream<Pull>>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> SealedReader<R> {
    pub fn new(inner: R, key: &SecretKey, direction: Direction) -> Self {
        SealedReader {
            inner,
            key: key.clone(),
            ad: direction.ad(),
            stream: None,
            plain: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        let mut first = [0u8; MAGIC.len() + HEADER];
        // A peer that gives up unread closes with a reset, not an end.
        let n = match read_full(&mut self.inner, &mut first[..MAGIC.len()]) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            other => other?,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without sending anything: it could not read this \
                 side's encrypted stream, so it is walden without WALG_LIBSODIUM_KEY, or WAL-G \
                 (which cannot encrypt this stream: WAL-G bug W23); configure the same key on \
                 both walden sides, or no key on either side",
            ));
        }
        if first[..n] != MAGIC[..n] || n < MAGIC.len() {
            return Err(bad(if first[..n.min(4)] == LZ4_MAGIC[..n.min(4)] {
                "the peer sends WAL-G's catch-up stream, not walden's encrypted one: it is walden \
                 without WALG_LIBSODIUM_KEY, or WAL-G, whose encrypted catch-up cannot work at all \
                 (its encryption is never flushed, so both sides would wait forever: WAL-G bug \
                 W23); configure the same key on both walden sides, or no key on either side \
                 (WAL-G and walden talk only in the clear)"
            } else {
                "the peer does not speak walden's encrypted catch-up stream (is it catchup-send / \
                 catchup-receive?)"
            }));
        }
        let m = read_full(&mut self.inner, &mut first[MAGIC.len()..])?;
        if m < HEADER {
            return Err(bad(
                "the encrypted catch-up stream ended inside its header: the connection was cut",
            ));
        }
        let header: [u8; HEADER] = first[MAGIC.len()..]
            .try_into()
            .map_err(|_| bad("header size"))?;
        self.stream = Some(DryocStream::init_pull(
            &self.key.dryoc_key(),
            &Header::from(header),
        ));
        Ok(())
    }

    fn next_frame(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            self.start()?;
        }
        let cut = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the encrypted catch-up stream ended before its end mark: the connection was cut \
                 (the peer failed or was stopped); run both sides again",
            )
        };
        let mut size = [0u8; 4];
        if read_full(&mut self.inner, &mut size)? < 4 {
            return Err(cut());
        }
        let n = u32::from_le_bytes(size) as usize;
        if !(ABYTES..=FRAME + ABYTES).contains(&n) {
            return Err(bad(format!(
                "the encrypted catch-up stream has a frame of {n} bytes, which it never sends: \
                 the data is damaged"
            )));
        }
        let mut sealed = vec![0u8; n];
        if read_full(&mut self.inner, &mut sealed)? < n {
            return Err(cut());
        }
        let stream = self.stream.as_mut().ok_or_else(|| bad("no stream"))?;
        let (plain, tag): (Vec<u8>, Tag) =
            stream.pull_to_vec(&sealed, Some(self.ad)).map_err(|_| {
                bad(
                    "the catch-up stream does not decrypt: the two sides have different \
                     WALG_LIBSODIUM_KEYs, or the data was altered on the way",
                )
            })?;
        match tag {
            Tag::Final => self.done = true,
            Tag::Message => {}
            _ => {
                return Err(bad(
                    "the encrypted catch-up stream has an unknown frame tag",
                ))
            }
        }
        self.plain = plain;
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Without a key: the peer's first bytes checked for [`MAGIC`], so that
/// a peer with a key is named rather than misread as gob.
pub struct Sniff<R: Read> {
    inner: R,
    first: Option<([u8; MAGIC.len()], usize)>,
    pos: usize,
}

impl<R: Read> Sniff<R> {
    pub fn new(inner: R) -> Self {
        Sniff {
            inner,
            first: None,
            pos: 0,
        }
    }
}

impl<R: Read> Read for Sniff<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.first.is_none() {
            let mut b = [0u8; MAGIC.len()];
            let n = read_full(&mut self.inner, &mut b)?;
            if n == MAGIC.len() && b == MAGIC {
                return Err(bad(
                    "the peer encrypts the catch-up stream (WALG_LIBSODIUM_KEY is set on its \
                     side) and this side has no key: configure the same key on both sides, or \
                     on neither",
                ));
            }
            self.first = Some((b, n));
        }
        if let Some((b, n)) = &self.first {
            if self.pos < *n {
                let k = out.len().min(n - self.pos);
                out[..k].copy_from_slice(&b[self.pos..self.pos + k]);
                self.pos += k;
                return Ok(k);
            }
        }
        self.inner.read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::transform(&format!("{}", b as char).repeat(32), "none").unwrap()
    }

    fn sealed(data: &[u8], flush_every: usize, finish: bool) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), &key(b'k'), Direction::ToReceiver);
        for part in data.chunks(flush_every) {
            w.write_all(part).unwrap();
            w.flush().unwrap();
        }
        if finish {
            w.finish().unwrap();
        }
        w.inner
    }

    fn open(bytes: &[u8], k: u8, d: Direction) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealedReader::new(bytes, &key(k), d).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_with_short_and_long_frames() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for every in [1000, 70_000, 300_000] {
            let bytes = sealed(&data, every, true);
            assert_eq!(&bytes[..8], b"wldncat1");
            assert_eq!(open(&bytes, b'k', Direction::ToReceiver).unwrap(), data);
        }
        // An empty stream is the header and one empty FINAL frame.
        let bytes = sealed(&[], 1, true);
        assert_eq!(bytes.len(), 8 + 24 + 4 + 17);
        assert!(open(&bytes, b'k', Direction::ToReceiver)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let data = vec![5u8; 150_000];
        let bytes = sealed(&data, 40_000, true);
        // Every cut: inside the header, at and inside frames, just before
        // the FINAL frame (a frame boundary), inside FINAL.
        for cut in (0..bytes.len())
            .step_by(997)
            .chain([bytes.len() - 21, bytes.len() - 1])
        {
            let e = open(&bytes[..cut], b'k', Direction::ToReceiver).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ),
                "{cut}: {e}"
            );
        }
        // Without FINAL, the stream is reported as cut.
        let open_end = sealed(&data, 40_000, false);
        let e = open(&open_end, b'k', Direction::ToReceiver).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("was cut"), "{e}");
    }

    #[test]
    fn dropped_altered_reflected_or_wrong_key_fail() {
        let data = vec![9u8; 10_000];
        let bytes = sealed(&data, 3000, true);
        // Frames are 4 + 3000 + 17 bytes after the 32-byte prologue.
        let frame = 4 + 3000 + 17;
        let mut dropped = bytes[..32].to_vec();
        dropped.extend_from_slice(&bytes[32 + frame..]);
        assert!(open(&dropped, b'k', Direction::ToReceiver).is_err());
        let mut altered = bytes.clone();
        altered[40] ^= 1;
        assert!(open(&altered, b'k', Direction::ToReceiver).is_err());
        let e = open(&bytes, b'k', Direction::ToSender).unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let e = open(&bytes, b'x', Direction::ToReceiver).unwrap_err();
        assert!(e.to_string().contains("different"), "{e}");
    }

    #[test]
    fn peers_that_do_not_match_are_named() {
        // WAL-G (or walden without a key): an lz4 frame.
        let lz4 = [0x04, 0x22, 0x4D, 0x18, 0x60, 0x70, 0x73, 1, 2, 3, 4, 5];
        let e = open(&lz4, b'k', Direction::ToSender).unwrap_err();
        assert!(e.to_string().contains("W23"), "{e}");
        let e = open(&[], b'k', Direction::ToSender).unwrap_err();
        assert!(e.to_string().contains("without sending anything"), "{e}");
        let e = open(b"GET / HTTP/1.1\r\n", b'k', Direction::ToSender).unwrap_err();
        assert!(e.to_string().contains("does not speak"), "{e}");
        // A side without a key reading an encrypted peer.
        let bytes = sealed(b"x", 1, true);
        let mut out = Vec::new();
        let e = Sniff::new(&bytes[..]).read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("no key"), "{e}");
        // ... and a plain peer's bytes come through unchanged.
        let mut out = Vec::new();
        Sniff::new(&lz4[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, lz4);
        let mut out = Vec::new();
        Sniff::new(&b"abc"[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
