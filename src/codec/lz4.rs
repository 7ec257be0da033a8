//! The lz4 frame writer. The frame header is WAL-G's byte for byte (blocks
//! independent, max block size 4 MiB, content checksum), but blocks are
//! written 1 MiB at a time: the format allows any block up to the declared
//! maximum, every decoder (WAL-G's included) reads them, and an encoder
//! then holds 2 MiB instead of the 8 MiB lz4_flex's frame encoder keeps.

use std::hash::Hasher;
use std::io::{self, Write};

use twox_hash::XxHash32;

use super::FinishWrite;

/// Magic, FLG (version 1, independent blocks, content checksum), BD (4 MiB).
const HEADER: [u8; 6] = [0x04, 0x22, 0x4D, 0x18, 0x64, 0x70];
const BLOCK: usize = 1 << 20;
const UNCOMPRESSED: u32 = 0x8000_0000;

pub struct Lz4Writer {
    inner: Option<Box<dyn FinishWrite>>,
    src: Vec<u8>,
    dst: Vec<u8>,
    content: XxHash32,
    started: bool,
}

impl Lz4Writer {
    pub fn new(inner: Box<dyn FinishWrite>) -> Self {
        Lz4Writer {
            inner: Some(inner),
            src: Vec::with_capacity(BLOCK),
            dst: Vec::new(),
            content: XxHash32::with_seed(0),
            started: false,
        }
    }

    fn inner(&mut self) -> io::Result<&mut Box<dyn FinishWrite>> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("lz4 writer used after finish"))
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            let descriptor_checksum = (XxHash32::oneshot(0, &HEADER[4..6]) >> 8) as u8;
            let inner = self.inner()?;
            inner.write_all(&HEADER)?;
            inner.write_all(&[descriptor_checksum])?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        self.start()?;
        if self.src.is_empty() {
            return Ok(());
        }
        self.content.write(&self.src);
        let bound = lz4_flex::block::get_maximum_output_size(self.src.len());
        self.dst.resize(bound, 0);
        let n = lz4_flex::block::compress_into(&self.src, &mut self.dst)
            .map_err(|e| io::Error::other(format!("lz4: {e}")))?;
        let mut src = std::mem::take(&mut self.src);
        let mut dst = std::mem::take(&mut self.dst);
        let result = (|| {
            let inner = self.inner()?;
            if n < src.len() {
                inner.write_all(&(n as u32).to_le_bytes())?;
                inner.write_all(&dst[..n])
            } else {
                // Incompressible: stored as is, flagged by the high bit.
                inner.write_all(&(src.len() as u32 | UNCOMPRESSED).to_le_bytes())?;
                inner.write_all(&src)
            }
        })();
        src.clear();
        dst.clear();
        self.src = src;
        self.dst = dst;
        result
    }
}

impl Write for Lz4Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(BLOCK - self.src.len());
        self.src.extend_from_slice(&buf[..take]);
        if self.src.len() == BLOCK {
            self.flush_block()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for Lz4Writer {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush_block()?;
        let checksum = self.content.finish_32();
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("lz4 writer used after finish"))?;
        inner.write_all(&[0, 0, 0, 0])?;
        inner.write_all(&checksum.to_le_bytes())?;
        inner.finish()
    }
}
