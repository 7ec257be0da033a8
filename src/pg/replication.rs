//! The streaming replication protocol on a `replication=true` session:
//! IDENTIFY_SYSTEM, TIMELINE_HISTORY, slots, and START_REPLICATION in
//! CopyBoth mode (XLogData 'w', keepalive 'k' in; standby status 'r' out).
//!
//! The commands that answer with rows go through `Client::query`; only the
//! CopyBoth stream needs its own reader, here.

use std::time::{SystemTime, UNIX_EPOCH};

use postgres_protocol::message::frontend;

use super::client::Client;
use super::error::PgError;
use super::message::{self, Body};
use super::params::ConnParams;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// `replication=true` added to ordinary connection parameters: a physical
/// walsender session (no SQL, replication commands only).
pub fn physical(params: &ConnParams) -> ConnParams {
    let mut p = params.clone();
    p.extra.retain(|(k, _)| k != "replication");
    p.extra.push(("replication".into(), "true".into()));
    p
}

/// `X/Y` → LSN.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: u64,
}

pub struct Slot {
    /// None when the slot has not reserved WAL yet.
    pub restart_lsn: Option<u64>,
}

/// What the server sends while streaming.
pub enum Stream {
    /// WAL bytes starting at `start`.
    XLogData { start: u64, data: Vec<u8> },
    /// The server's WAL end; `reply` asks for a status update at once.
    Keepalive { end: u64, reply: bool },
    /// The timeline ended (the server was promoted past it, or we asked
    /// for an old one): the next timeline and where it starts.
    EndOfTimeline { next_timeline: u32, start: u64 },
}

impl Client {
    pub fn identify_system(&mut self) -> Result<SystemInfo, PgError> {
        let rows = self.query("IDENTIFY_SYSTEM")?;
        let row = rows
            .first()
            .ok_or_else(|| self.bad("IDENTIFY_SYSTEM returned no row"))?;
        let system_id = row.get_str(0)?.unwrap_or_default().to_string();
        let timeline = row
            .get_str(1)?
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| self.bad("IDENTIFY_SYSTEM returned no timeline"))?;
        let xlogpos = row
            .get_str(2)?
            .and_then(parse_lsn)
            .ok_or_else(|| self.bad("IDENTIFY_SYSTEM returned no WAL position"))?;
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
        })
    }

    /// `SHOW wal_segment_size` in bytes ("16MB" → 16777216).
    pub fn wal_segment_size(&mut self) -> Result<u64, PgError> {
        let rows = self.query("SHOW wal_segment_size")?;
        let text = rows
            .first()
            .and_then(|r| r.get_str(0).ok().flatten().map(str::to_string))
            .unwrap_or_default();
        parse_size(&text).ok_or_else(|| self.bad(format!("unexpected wal_segment_size '{text}'")))
    }

    /// The history file of `timeline`: its name and content; None when the
    /// server has none (SQLSTATE 58P01).
    pub fn timeline_history(
        &mut self,
        timeline: u32,
    ) -> Result<Option<(String, Vec<u8>)>, PgError> {
        match self.query(&format!("TIMELINE_HISTORY {timeline}")) {
            Ok(rows) => {
                let row = rows
                    .first()
                    .ok_or_else(|| self.bad("TIMELINE_HISTORY returned no row"))?;
                let name = row.get_str(0)?.unwrap_or_default().to_string();
                let content = row.get_bytes(1)?.unwrap_or_default().to_vec();
                Ok(Some((name, content)))
            }
            Err(PgError::Query { server }) if server.code == "58P01" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A physical slot that keeps WAL from now on (RESERVE_WAL), so that
    /// nothing is removed between its creation and the first status update.
    pub fn create_physical_slot(&mut self, name: &str) -> Result<(), PgError> {
        self.query(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .map(drop)
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+): None when no such slot.
    pub fn read_replication_slot(&mut self, name: &str) -> Result<Option<Slot>, PgError> {
        let rows = self.query(&format!("READ_REPLICATION_SLOT {name}"))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        // slot_type is NULL for a slot that does not exist.
        if row.get_str(0)?.is_none() {
            return Ok(None);
        }
        Ok(Some(Slot {
            restart_lsn: row.get_str(1)?.and_then(parse_lsn),
        }))
    }

    /// START_REPLICATION ... PHYSICAL: enters CopyBoth mode.
    pub fn start_replication(
        &mut self,
        slot: &str,
        lsn: u64,
        timeline: u32,
    ) -> Result<(), PgError> {
        let sql = format!(
            "START_REPLICATION SLOT {slot} PHYSICAL {} TIMELINE {timeline}",
            format_lsn(lsn)
        );
        frontend::query(&sql, &mut self.wire.out)
            .map_err(|e| self.bad(format!("the command cannot be sent: {e}")))?;
        self.wire.send()?;
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let server = message::server_message(&msg.body).map_err(|e| self.bad(e))?;
                    // The session ends the command with ReadyForQuery.
                    self.drain_to_ready()?;
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                b'T' | b'D' | b'C' => {}
                b'Z' => return Err(self.bad("START_REPLICATION ended without streaming")),
                other => self.on_async(other, &msg)?,
            }
        }
    }

    /// The next message of the stream. After EndOfTimeline the session is
    /// back to accepting commands.
    pub fn next_wal(&mut self) -> Result<Stream, PgError> {
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'd' => {
                    let mut b = Body::new(&msg.body);
                    match b.u8().map_err(|e| self.bad(e))? {
                        b'w' => {
                            let start = u64_of(&mut b).map_err(|e| self.bad(e))?;
                            // walEnd and sendTime: not needed.
                            b.bytes(16).map_err(|e| self.bad(e))?;
                            return Ok(Stream::XLogData {
                                start,
                                data: b.rest().to_vec(),
                            });
                        }
                        b'k' => {
                            let end = u64_of(&mut b).map_err(|e| self.bad(e))?;
                            b.bytes(8).map_err(|e| self.bad(e))?;
                            let reply = b.u8().map_err(|e| self.bad(e))? != 0;
                            return Ok(Stream::Keepalive { end, reply });
                        }
                        other => {
                            return Err(self.bad(format!(
                                "unknown replication message '{}'",
                                other.escape_ascii()
                            )))
                        }
                    }
                }
                b'c' => return self.end_of_timeline(),
                // A shutting-down server ends the stream with
                // CommandComplete once we confirmed all it sent.
                b'C' => return Err(self.bad("the server ended streaming (it is shutting down)")),
                b'E' => {
                    let server = message::server_message(&msg.body).map_err(|e| self.bad(e))?;
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                other => self.on_async(other, &msg)?,
            }
        }
    }

    /// Standby status update: what we have written, flushed and applied.
    pub fn send_status(&mut self, write: u64, flush: u64, apply: u64) -> Result<(), PgError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_OFFSET_US;
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&write.to_be_bytes());
        body.extend_from_slice(&flush.to_be_bytes());
        body.extend_from_slice(&apply.to_be_bytes());
        body.extend_from_slice(&now.to_be_bytes());
        body.push(0);
        self.copy_data(&body)
    }

    /// The socket under the session, for shutting a blocked read down.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.wire.stream().raw_fd()
    }

    fn copy_data(&mut self, body: &[u8]) -> Result<(), PgError> {
        // CopyData by hand: postgres-protocol's encoder wants a Buf type.
        self.wire.out.extend_from_slice(b"d");
        self.wire
            .out
            .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        self.wire.out.extend_from_slice(body);
        self.wire.send()
    }

    /// The server ended the stream with CopyDone: answer with ours, then
    /// read the next timeline's row, CommandComplete and ReadyForQuery.
    fn end_of_timeline(&mut self) -> Result<Stream, PgError> {
        frontend::copy_done(&mut self.wire.out);
        self.wire.send()?;
        let mut next = None;
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'D' => {
                    let values = message::data_row(&msg.body).map_err(|e| self.bad(e))?;
                    let text = |i: usize| {
                        values
                            .get(i)
                            .and_then(|v| v.as_deref())
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    let tli = text(0).and_then(|t| t.parse::<u32>().ok());
                    let lsn = text(1).and_then(|t| parse_lsn(&t));
                    if let (Some(t), Some(l)) = (tli, lsn) {
                        next = Some((t, l));
                    }
                }
                b'd' | b'T' | b'C' => {}
                b'E' => {
                    let server = message::server_message(&msg.body).map_err(|e| self.bad(e))?;
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                b'Z' => break,
                other => self.on_async(other, &msg)?,
            }
        }
        match next {
            Some((next_timeline, start)) => Ok(Stream::EndOfTimeline {
                next_timeline,
                start,
            }),
            None => Err(self.bad("the server ended streaming without naming the next timeline")),
        }
    }

    fn drain_to_ready(&mut self) -> Result<(), PgError> {
        loop {
            if self.wire.read()?.tag == b'Z' {
                return Ok(());
            }
        }
    }

    fn bad(&self, problem: impl Into<String>) -> PgError {
        self.wire.protocol(problem)
    }
}

fn u64_of(b: &mut Body) -> Result<u64, &'static str> {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.bytes(8)?);
    Ok(u64::from_be_bytes(a))
}

/// A GUC size as SHOW prints it: "16MB", "1GB", "64kB", or plain bytes.
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let mult = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    Some(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_lsn_and_sizes() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1A/0"), Some(0x1A_0000_0000));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(format_lsn(0x1A_0016_B374), "1A/16B374");
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("16 parsecs"), None);
    }
}
