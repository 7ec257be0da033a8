//! The archives of a running BASE_BACKUP as `Read` streams, one after
//! another: reads end at the next archive (or the backup's end), and
//! [`Archives::boundary`] moves on. Only the CopyData message being read
//! is held.

use std::io::{self, Read};

use crate::error::Result;
use crate::pg::replication::{BackupEvent, BaseBackup};

/// Where the stream stands between archives.
pub enum Boundary {
    /// The next archive: the data directory (`tablespace` None) or a
    /// tablespace's.
    Archive {
        name: String,
        tablespace: Option<u32>,
    },
    /// No more archives: the backup's end LSN and timeline.
    End { lsn: u64 },
}

pub struct Archives<'a> {
    backup: BaseBackup<'a>,
    buf: Vec<u8>,
    pos: usize,
    next: Option<Boundary>,
    /// Archive bytes received (WAL-G's `UncompressedSize` of a remote
    /// backup).
    pub received: u64,
}

impl<'a> Archives<'a> {
    pub fn new(backup: BaseBackup<'a>) -> Archives<'a> {
        Archives {
            backup,
            buf: Vec::new(),
            pos: 0,
            next: None,
            received: 0,
        }
    }

    /// Skip what is left of the current archive (the tar's end blocks)
    /// and say what comes next.
    pub fn boundary(&mut self) -> Result<Boundary> {
        self.buf.clear();
        self.pos = 0;
        loop {
            if let Some(b) = self.next.take() {
                return Ok(b);
            }
            self.pull()?;
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// One event from the server into `buf` or `next`.
    fn pull(&mut self) -> std::result::Result<(), crate::pg::PgError> {
        match self.backup.next()? {
            BackupEvent::Data { buf, start } => {
                self.received += (buf.len() - start) as u64;
                self.buf = buf;
                self.pos = start;
            }
            BackupEvent::Archive { name, tablespace } => {
                self.next = Some(Boundary::Archive { name, tablespace })
            }
            BackupEvent::End { lsn, .. } => self.next = Some(Boundary::End { lsn }),
        }
        Ok(())
    }
}

impl Read for Archives<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.next.is_some() || out.is_empty() {
                return Ok(0);
            }
            self.pull().map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
}
