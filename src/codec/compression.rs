//! Compression formats byte-compatible with WAL-G: lz4 frames with content
//! checksum, zstd frames with checksum, raw brotli, LZMA-alone, and none.

use std::io::{self, Read, Write};

use super::{CodecError, FinishWrite};

pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Lz4,
    Lzma,
    Zstd,
    Brotli,
    None,
}

impl Method {
    pub fn from_setting(value: &str) -> Option<Method> {
        match value {
            "lz4" => Some(Method::Lz4),
            "lzma" => Some(Method::Lzma),
            "zstd" => Some(Method::Zstd),
            "brotli" => Some(Method::Brotli),
            "none" => Some(Method::None),
            _ => None,
        }
    }

    /// Extension without the dot; empty for `none`, whose objects get none.
    pub fn extension(self) -> &'static str {
        match self {
            Method::Lz4 => "lz4",
            Method::Lzma => "lzma",
            Method::Zstd => "zst",
            Method::Brotli => "br",
            Method::None => "",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Method> {
        match ext {
            "lz4" => Some(Method::Lz4),
            "lzma" => Some(Method::Lzma),
            "zst" => Some(Method::Zstd),
            "br" => Some(Method::Brotli),
            "" | "tar" => Some(Method::None),
            _ => None,
        }
    }

    /// The method an object was written with, from its name's last
    /// extension. Names without one (WAL segments stored with `none`,
    /// `x.history`, `x.partial`, `x.backup`) are uncompressed.
    pub fn from_object_name(name: &str) -> Result<Method, CodecError> {
        let base = name.rsplit('/').next().unwrap_or(name);
        let ext = match base.rsplit_once('.') {
            Some((_, ext)) => ext,
            None => return Ok(Method::None),
        };
        match ext {
            "history" | "partial" | "backup" | "json" => Ok(Method::None),
            _ if is_wal_offset_ext(ext) => Ok(Method::None),
            _ => {
                Method::from_extension(ext).ok_or_else(|| CodecError::UnknownExtension(ext.into()))
            }
        }
    }
}

/// `000000010000000000000002.00000028.backup` minus `.backup`: an 8-hex
/// part that is a name, not a format.
fn is_wal_offset_ext(ext: &str) -> bool {
    ext.len() == 8 && ext.bytes().all(|b| b.is_ascii_hexdigit())
}

/// WAL-G's `WALG_ZSTD_LEVEL` names, or a numeric level.
pub fn zstd_level(value: &str) -> Option<i32> {
    match value.to_lowercase().as_str() {
        "fastest" => Some(1),
        "default" => Some(3),
        "better" => Some(7),
        "best" => Some(11),
        other => other.parse::<i32>().ok().filter(|l| (1..=22).contains(l)),
    }
}

const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// `zstd_workers` > 1 spreads one zstd stream over that many threads; the
/// output is still one standard frame.
pub fn encoder(
    method: Method,
    zstd_level: i32,
    zstd_workers: u32,
    sink: Box<dyn FinishWrite>,
) -> io::Result<Box<dyn FinishWrite>> {
    Ok(match method {
        Method::None => sink,
        Method::Lz4 => Box::new(super::lz4::Lz4Writer::new(sink)),
        Method::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(sink, zstd_level)?;
            enc.include_checksum(true)?;
            if zstd_workers > 1 {
                enc.multithread(zstd_workers)?;
                // zstd's default job is 4 windows (8 MiB at level 3) and
                // each worker holds its input and output: small jobs keep
                // a stream's memory low at the same speed (measured).
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            Box::new(ZstdWriter(Some(enc)))
        }
        Method::Brotli => Box::new(BrotliWriter(Some(brotli::CompressorWriter::new(
            sink, 65536, 3, 22,
        )))),
        Method::Lzma => {
            let options = xz2::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
            let stream =
                xz2::stream::Stream::new_lzma_encoder(&options).map_err(io::Error::other)?;
            Box::new(LzmaWriter(Some(xz2::write::XzEncoder::new_stream(
                sink, stream,
            ))))
        }
    })
}

/// Memory the LZMA decoder may use. Its dictionary size comes from the
/// object's header, so a tiny hostile object could ask for 4 GiB; WAL-G
/// and walden write 8 MiB dictionaries (64 MiB at most at preset 9).
const LZMA_MEMORY_LIMIT: u64 = 128 << 20;

pub fn decoder(method: Method, source: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    match method {
        Method::None => source,
        Method::Lz4 => Box::new(StrictLz4 {
            decoder: lz4_flex::frame::FrameDecoder::new(Tail::new(source)),
            at_end: false,
        }),
        Method::Zstd => match zstd::stream::read::Decoder::new(source) {
            Ok(d) => Box::new(d),
            Err(e) => Box::new(FailingReader(Some(e))),
        },
        Method::Brotli => Box::new(EndChecked::new(
            BrotliEnd(brotli::Decompressor::new(source, 65536)),
            "brotli",
        )),
        Method::Lzma => match xz2::stream::Stream::new_lzma_decoder(LZMA_MEMORY_LIMIT) {
            Ok(stream) => Box::new(EndChecked::new(
                LzmaEnd(xz2::bufread::XzDecoder::new_stream(
                    io::BufReader::with_capacity(64 << 10, source),
                    stream,
                )),
                "lzma",
            )),
            Err(e) => Box::new(FailingReader(Some(io::Error::other(e)))),
        },
    }
}

/// A decoder that stops at the end of its stream, leaving whatever follows
/// unread; [`EndChecked`] asks it whether anything did.
trait StreamEnd: Read {
    /// True when input remains after the end of the compressed stream.
    fn trailing_data(&mut self) -> io::Result<bool>;
}

struct BrotliEnd<R: Read>(brotli::Decompressor<R>);

impl<R: Read> Read for BrotliEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> StreamEnd for BrotliEnd<R> {
    fn trailing_data(&mut self) -> io::Result<bool> {
        // Read once more past the end: the decoder reports input it
        // buffered but did not use as an error.
        if self.0.read(&mut [0u8; 1]).is_err() {
            return Ok(true);
        }
        Ok(self.0.get_mut().read(&mut [0u8; 1])? > 0)
    }
}

struct LzmaEnd<R: Read>(xz2::bufread::XzDecoder<io::BufReader<R>>);

impl<R: Read> Read for LzmaEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.to_string().contains("memory") {
                io::Error::other(format!(
                    "the lzma stream asks for a dictionary larger than walden allows ({} MiB): it is damaged or hostile ({e})",
                    LZMA_MEMORY_LIMIT >> 20
                ))
            } else {
                e
            }
        })
    }
}

impl<R: Read> StreamEnd for LzmaEnd<R> {
    fn trailing_data(&mut self) -> io::Result<bool> {
        let buffered = self.0.get_mut();
        if !buffered.buffer().is_empty() {
            return Ok(true);
        }
        Ok(buffered.get_mut().read(&mut [0u8; 1])? > 0)
    }
}

/// Refuses data after the end of the compressed stream: an object is one
/// stream, and bytes after it mean it is not what we wrote.
struct EndChecked<D> {
    decoder: D,
    format: &'static str,
    checked: bool,
}

impl<D: StreamEnd> EndChecked<D> {
    fn new(decoder: D, format: &'static str) -> Self {
        EndChecked {
            decoder,
            format,
            checked: false,
        }
    }
}

impl<D: StreamEnd> Read for EndChecked<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.checked {
            if self.decoder.trailing_data()? {
                return Err(trailing(self.format));
            }
            self.checked = true;
        }
        Ok(n)
    }
}

fn trailing(format: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("data follows the end of the {format} stream: the object is damaged"),
    )
}

/// Each wrapper below holds its encoder in an `Option` so that `finish`
/// can take it out: the encoders' own finish methods consume them.
struct ZstdWriter(Option<zstd::stream::write::Encoder<'static, Box<dyn FinishWrite>>>);
struct BrotliWriter(Option<brotli::CompressorWriter<Box<dyn FinishWrite>>>);
struct LzmaWriter(Option<xz2::write::XzEncoder<Box<dyn FinishWrite>>>);

fn gone() -> io::Error {
    io::Error::other("writer used after finish")
}

macro_rules! forward_write {
    ($t:ty) => {
        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.as_mut().ok_or_else(gone)?.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.as_mut().ok_or_else(gone)?.flush()
            }
        }
    };
}
forward_write!(ZstdWriter);
forward_write!(BrotliWriter);
forward_write!(LzmaWriter);

impl FinishWrite for ZstdWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.take().ok_or_else(gone)?.finish()?.finish()
    }
}

impl FinishWrite for BrotliWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let mut enc = self.0.take().ok_or_else(gone)?;
        // into_inner swallows errors; flushing first surfaces them. Any
        // error of the final close still reaches the sink, whose finish
        // reports it.
        enc.flush()?;
        enc.into_inner().finish()
    }
}

impl FinishWrite for LzmaWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.take().ok_or_else(gone)?.finish()?.finish()
    }
}

/// lz4_flex ends a stream quietly when the source stops where a block
/// header should be, even in the middle of a frame; a stream cut at a
/// block boundary would decode as a shorter, "valid" one. And it returns
/// end-of-stream at the end of each frame. So at each frame's end we check
/// that the last bytes read were its end mark (and checksum), then go on
/// with the next frame (lz4 streams may be concatenated frames), and at
/// the very end that nothing but whole frames was read.
struct StrictLz4<R: Read> {
    decoder: lz4_flex::frame::FrameDecoder<Tail<R>>,
    at_end: bool,
}

impl<R: Read> Read for StrictLz4<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.at_end {
            return Ok(0);
        }
        loop {
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let tail = self.decoder.get_ref();
            if tail.in_frame() == 0 {
                // Nothing read since the last frame ended: the real end.
                self.at_end = true;
                return Ok(0);
            }
            if !tail.ends_a_frame() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if tail.frames == 0 {
                        "the lz4 stream is truncated: it ends inside a frame"
                    } else {
                        "the lz4 stream is damaged: data after the last whole frame"
                    },
                ));
            }
            self.decoder.get_mut().next_frame();
        }
    }
}

/// Remembers, for the frame being read, its flags and the last 8 bytes
/// that passed through.
struct Tail<R> {
    inner: R,
    /// Bytes read since the current frame began.
    total: u64,
    /// Whole frames before the current one.
    frames: u64,
    flags: u8,
    last: [u8; 8],
}

impl<R> Tail<R> {
    fn new(inner: R) -> Self {
        Tail {
            inner,
            total: 0,
            frames: 0,
            flags: 0,
            last: [0xff; 8],
        }
    }

    fn in_frame(&self) -> u64 {
        self.total
    }

    fn next_frame(&mut self) {
        self.total = 0;
        self.frames += 1;
        self.flags = 0;
        self.last = [0xff; 8];
    }

    fn ends_a_frame(&self) -> bool {
        const CONTENT_CHECKSUM: u8 = 0x04;
        if self.total < 11 {
            // Shorter than the smallest frame (magic, 3 header bytes, end
            // mark): the decoder stopped on something that is not one.
            return false;
        }
        let end_mark = if self.flags & CONTENT_CHECKSUM != 0 {
            &self.last[0..4]
        } else {
            &self.last[4..8]
        };
        end_mark == [0, 0, 0, 0]
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        if self.total <= 4 && self.total + n as u64 > 4 {
            if let Some(&flags) = got.get((4 - self.total) as usize) {
                self.flags = flags;
            }
        }
        let keep = n.min(8);
        self.last.rotate_left(keep);
        self.last[8 - keep..].copy_from_slice(&got[n - keep..]);
        self.total += n as u64;
        Ok(n)
    }
}

struct FailingReader(Option<io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decoder failed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PlainSink;
    use std::sync::{Arc, Mutex};

    /// A sink that keeps what was written, readable after finish.
    #[derive(Clone, Default)]
    pub struct Shared(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encode(method: Method, data: &[u8]) -> Vec<u8> {
        let out = Shared::default();
        let mut w = encoder(method, 3, 2, Box::new(PlainSink(out.clone()))).unwrap();
        for chunk in data.chunks(7777) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap();
        let v = out.0.lock().unwrap().clone();
        v
    }

    fn decode(method: Method, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut r = decoder(method, Box::new(io::Cursor::new(data)));
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_method_round_trips() {
        for m in [
            Method::Lz4,
            Method::Lzma,
            Method::Zstd,
            Method::Brotli,
            Method::None,
        ] {
            let data = sample();
            let enc = encode(m, &data);
            assert_eq!(decode(m, enc).unwrap(), data, "{m:?}");
            assert_eq!(decode(m, encode(m, b"")).unwrap(), b"", "{m:?} empty");
        }
    }

    #[test]
    fn headers_match_walg() {
        let lz4 = encode(Method::Lz4, b"");
        assert_eq!(&lz4[..7], &[0x04, 0x22, 0x4D, 0x18, 0x64, 0x70, 0xB9]);
        assert_eq!(lz4.len(), 15);
        let lzma = encode(Method::Lzma, b"x");
        assert_eq!(
            &lzma[..13],
            &[0x5d, 0, 0, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        let zst = encode(Method::Zstd, b"x");
        assert_eq!(&zst[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        // Frame header descriptor: checksum flag (bit 2) set.
        assert_ne!(zst[4] & 0x04, 0);
    }

    #[test]
    fn truncated_streams_are_errors() {
        for m in [Method::Lz4, Method::Lzma, Method::Zstd, Method::Brotli] {
            let enc = encode(m, &sample());
            for cut in [
                enc.len() - 1,
                enc.len() - 5,
                enc.len() - 8,
                enc.len() / 2,
                5,
            ] {
                let r = decode(m, enc[..cut].to_vec());
                assert!(r.is_err(), "{m:?} cut at {cut} of {} decoded", enc.len());
            }
        }
    }

    #[test]
    fn lz4_cut_at_a_block_boundary_is_an_error() {
        // Several blocks; cut right after the first one.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
        let enc = encode(Method::Lz4, &data);
        let first_block = u32::from_le_bytes(enc[7..11].try_into().unwrap()) & 0x7fff_ffff;
        let cut = 7 + 4 + first_block as usize;
        assert!(cut < enc.len() - 8);
        assert!(decode(Method::Lz4, enc[..cut].to_vec()).is_err());
        assert_eq!(decode(Method::Lz4, enc).unwrap(), data);
    }

    #[test]
    fn corrupted_streams_are_errors() {
        for m in [Method::Lz4, Method::Zstd] {
            let mut enc = encode(m, &sample());
            let mid = enc.len() / 2;
            enc[mid] ^= 0x55;
            assert!(decode(m, enc).is_err(), "{m:?}");
        }
    }

    #[test]
    fn concatenated_lz4_frames_all_decode() {
        let a = sample();
        let b = b"second frame".to_vec();
        let mut both = encode(Method::Lz4, &a);
        both.extend(encode(Method::Lz4, b""));
        both.extend(encode(Method::Lz4, &b));
        assert_eq!(decode(Method::Lz4, both).unwrap(), [a, b].concat());
    }

    #[test]
    fn data_after_the_stream_is_refused() {
        for m in [Method::Lz4, Method::Lzma, Method::Zstd, Method::Brotli] {
            for garbage in [&b"x"[..], b"abcd", b"0123456789abcdef", &[0u8; 70_000][..]] {
                let mut enc = encode(m, &sample());
                enc.extend_from_slice(garbage);
                assert!(
                    decode(m, enc).is_err(),
                    "{m:?} with {} bytes of garbage after it decoded",
                    garbage.len()
                );
            }
        }
    }

    #[test]
    fn lzma_dictionary_bomb_is_refused() {
        // LZMA-alone header asking for a 4 GiB dictionary, unknown size.
        let mut enc = encode(Method::Lzma, &[0u8; 100_000]);
        enc[1..5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        let err = decode(Method::Lzma, enc).unwrap_err().to_string();
        assert!(err.contains("dictionary"), "{err}");
    }

    #[test]
    fn fuzz_decoders() {
        for m in [Method::Lz4, Method::Lzma, Method::Zstd, Method::Brotli] {
            let seeds = vec![
                encode(m, &sample()[..20_000]),
                encode(m, b""),
                encode(m, b"short"),
                [encode(m, b"one"), encode(m, b"two")].concat(),
            ];
            crate::fuzz::run(&format!("decode_{m:?}"), &seeds, |input| {
                let mut r = decoder(m, Box::new(io::Cursor::new(input.to_vec())));
                // Output is bounded by what the caller reads; reading a
                // bounded amount must end (with data, an end or an error).
                let mut out = Vec::new();
                let _ = (&mut r).take(64 << 20).read_to_end(&mut out);
            });
        }
    }

    #[test]
    fn names_to_methods() {
        assert_eq!(
            Method::from_object_name("wal_005/0001.lz4").unwrap(),
            Method::Lz4
        );
        assert_eq!(
            Method::from_object_name("a/part_1.tar.zst").unwrap(),
            Method::Zstd
        );
        assert_eq!(
            Method::from_object_name("a/part_1.tar").unwrap(),
            Method::None
        );
        assert_eq!(
            Method::from_object_name("wal_005/000000010000000000000002").unwrap(),
            Method::None
        );
        assert_eq!(
            Method::from_object_name("wal_005/000000010000000000000002.00000028.backup").unwrap(),
            Method::None
        );
        assert!(Method::from_object_name("x.gz").is_err());
        assert_eq!(zstd_level("BEST"), Some(11));
        assert_eq!(zstd_level("0"), None);
    }
}
