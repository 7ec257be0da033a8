//! The streaming replication protocol on a `replication=true` session:
//! IDENTIFY_SYSTEM, TIMELINE_HISTORY, slots, START_REPLICATION in
//! CopyBoth mode (XLogData 'w', keepalive 'k' in; standby status 'r' out),
//! and BASE_BACKUP (one CopyOut per archive before PostgreSQL 15, one
//! tagged CopyOut from 15 on).
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

    /// UPLOAD_MANIFEST (PostgreSQL 17+): the prior backup's manifest for
    /// an incremental BASE_BACKUP on this session, sent in CopyIn from
    /// `manifest` 64 KiB at a time. A read failure aborts the copy
    /// (CopyFail), so the server keeps no partial manifest.
    pub fn upload_manifest(&mut self, manifest: &mut dyn std::io::Read) -> Result<(), PgError> {
        frontend::query("UPLOAD_MANIFEST", &mut self.wire.out)
            .map_err(|e| self.bad(format!("the command cannot be sent: {e}")))?;
        self.wire.send()?;
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'G' => break,
                b'E' => {
                    let server = message::server_message(&msg.body).map_err(|e| self.bad(e))?;
                    self.drain_to_ready()?;
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                b'Z' => {
                    return Err(self.bad("UPLOAD_MANIFEST ended without asking for the manifest"))
                }
                other => self.on_async(other, &msg)?,
            }
        }
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match manifest.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    frontend::copy_fail("walden could not read the manifest", &mut self.wire.out)
                        .map_err(|e| self.bad(format!("CopyFail cannot be sent: {e}")))?;
                    self.wire.send()?;
                    let _ = self.drain_to_ready();
                    return Err(PgError::io(&self.wire.target, e));
                }
            };
            self.copy_data(&chunk[..n])?;
        }
        frontend::copy_done(&mut self.wire.out);
        self.wire.send()?;
        let mut failed = None;
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'C' => {}
                b'E' => {
                    failed = Some(message::server_message(&msg.body).map_err(|e| self.bad(e))?);
                }
                b'Z' => break,
                other => self.on_async(other, &msg)?,
            }
        }
        match failed {
            Some(server) => Err(PgError::Query {
                server: Box::new(server),
            }),
            None => Ok(()),
        }
    }

    fn bad(&self, problem: impl Into<String>) -> PgError {
        self.wire.protocol(problem)
    }
}

/// What BASE_BACKUP is asked for (spec §10.2: WAL-G's options).
pub struct BaseBackupOptions {
    pub label: String,
    /// CHECKPOINT 'fast' / FAST.
    pub fast: bool,
    /// MAX_RATE in kB/s (the server accepts 32..1048576).
    pub max_rate_kb: Option<u64>,
    /// false: VERIFY_CHECKSUMS false / NOVERIFY_CHECKSUMS (PG 11+ only).
    pub verify_checksums: bool,
    /// INCREMENTAL (PostgreSQL 17+): relative to the manifest sent with
    /// [`Client::upload_manifest`] on the same session.
    pub incremental: bool,
}

/// The BASE_BACKUP command as WAL-G (pglogrepl) sends it: the
/// parenthesised option list from PostgreSQL 15 on, the bare keywords
/// before (older servers do not know the list). TABLESPACE_MAP always: tablespaces then come back as
/// `tablespace_map` instead of symlinks.
pub fn base_backup_command(server_version: i64, o: &BaseBackupOptions) -> String {
    let label = o.label.replace('\'', "''");
    let rate = o.max_rate_kb.filter(|&r| r >= 32).map(|r| r.min(1_048_576));
    if server_version >= 150000 {
        let mut opts = vec![format!("LABEL '{label}'")];
        if o.fast {
            opts.push("CHECKPOINT 'fast'".into());
        }
        if let Some(r) = rate {
            opts.push(format!("MAX_RATE {r}"));
        }
        opts.push("TABLESPACE_MAP".into());
        if !o.verify_checksums {
            opts.push("VERIFY_CHECKSUMS false".into());
        }
        if o.incremental {
            opts.push("INCREMENTAL".into());
        }
        format!("BASE_BACKUP ({})", opts.join(", "))
    } else {
        let mut cmd = format!("BASE_BACKUP LABEL '{label}'");
        if o.fast {
            cmd.push_str(" FAST");
        }
        if let Some(r) = rate {
            cmd.push_str(&format!(" MAX_RATE {r}"));
        }
        cmd.push_str(" TABLESPACE_MAP");
        // Before 11 checksums cannot be skipped (nor are they checked).
        if !o.verify_checksums && server_version >= 110000 {
            cmd.push_str(" NOVERIFY_CHECKSUMS");
        }
        cmd
    }
}

/// A tablespace outside the data directory, as BASE_BACKUP lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupTablespace {
    pub oid: u32,
    pub location: String,
}

/// What the stream of a running BASE_BACKUP yields, in order: for each
/// archive its start, then its bytes; after the last one the end.
#[derive(Debug, PartialEq)]
pub enum BackupEvent {
    /// An archive begins: `base.tar` (tablespace None) or `<oid>.tar`.
    Archive {
        name: String,
        tablespace: Option<u32>,
    },
    /// Tar bytes of the current archive: `buf[start..]`.
    Data { buf: Vec<u8>, start: usize },
    /// The backup is complete: the server's end LSN and timeline.
    End { lsn: u64, timeline: u32 },
}

/// A running BASE_BACKUP on a replication session. `next` pulls one
/// message at a time, so memory is one CopyData message whatever the
/// cluster's size.
pub struct BaseBackup<'a> {
    client: &'a mut Client,
    pub start_lsn: u64,
    pub timeline: u32,
    pub tablespaces: Vec<BackupTablespace>,
    /// PostgreSQL 15+: one CopyOut with 'n'/'d'/'p'/'m' framing.
    tagged: bool,
    /// Before 15: the next archive is the tablespace at this index (the
    /// data directory after the last one).
    next_index: usize,
    in_copy: bool,
    in_manifest: bool,
    /// End LSN and timeline once their row came.
    end: Option<(u64, u32)>,
    finished: bool,
}

impl Client {
    /// Sends BASE_BACKUP and reads up to the first archive: the start LSN,
    /// the timeline and the tablespace list.
    pub fn base_backup(
        &mut self,
        server_version: i64,
        options: &BaseBackupOptions,
    ) -> Result<BaseBackup<'_>, PgError> {
        let sql = base_backup_command(server_version, options);
        log::debug!("{sql}");
        frontend::query(&sql, &mut self.wire.out)
            .map_err(|e| self.bad(format!("the command cannot be sent: {e}")))?;
        self.wire.send()?;
        let mut set = 0;
        let mut start = None;
        let mut tablespaces = Vec::new();
        loop {
            let msg = self.wire.read()?;
            match msg.tag {
                b'T' => set += 1,
                b'D' => {
                    let values = message::data_row(&msg.body).map_err(|e| self.bad(e))?;
                    let text = |i: usize| {
                        values
                            .get(i)
                            .and_then(|v| v.as_deref())
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    match set {
                        1 => {
                            let lsn = text(0).as_deref().and_then(parse_lsn);
                            let tli = text(1).and_then(|t| t.parse::<u32>().ok());
                            match (lsn, tli) {
                                (Some(l), Some(t)) => start = Some((l, t)),
                                _ => return Err(self.bad("BASE_BACKUP sent no start position")),
                            }
                        }
                        2 => {
                            // The data directory's row has no OID.
                            if let Some(oid) = text(0) {
                                let oid = oid.parse::<u32>().map_err(|_| {
                                    self.bad(format!("BASE_BACKUP listed tablespace '{oid}'"))
                                })?;
                                tablespaces.push(BackupTablespace {
                                    oid,
                                    location: text(1).unwrap_or_default(),
                                });
                            }
                        }
                        _ => {}
                    }
                }
                b'C' => {}
                b'H' => break,
                b'E' => {
                    let server = message::server_message(&msg.body).map_err(|e| self.bad(e))?;
                    self.drain_to_ready()?;
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                b'Z' => return Err(self.bad("BASE_BACKUP ended without sending the backup")),
                other => self.on_async(other, &msg)?,
            }
        }
        let (start_lsn, timeline) =
            start.ok_or_else(|| self.bad("BASE_BACKUP sent no start position"))?;
        Ok(BaseBackup {
            client: self,
            start_lsn,
            timeline,
            tablespaces,
            tagged: server_version >= 150000,
            next_index: 0,
            in_copy: true,
            in_manifest: false,
            end: None,
            finished: false,
        })
    }
}

impl BaseBackup<'_> {
    /// The next event; after `End` the session accepts commands again.
    pub fn next(&mut self) -> Result<BackupEvent, PgError> {
        if self.finished {
            return Err(self.client.bad("internal: BASE_BACKUP read past its end"));
        }
        // Before 15 the first CopyOutResponse is already read: it opens
        // the first archive.
        if !self.tagged && self.in_copy && self.next_index == 0 {
            return Ok(self.old_archive());
        }
        loop {
            let msg = self.client.wire.read()?;
            match msg.tag {
                b'd' if self.in_copy => {
                    if !self.tagged {
                        return Ok(BackupEvent::Data {
                            buf: msg.body,
                            start: 0,
                        });
                    }
                    if let Some(event) = self.tagged_data(msg.body)? {
                        return Ok(event);
                    }
                }
                b'c' if self.in_copy => self.in_copy = false,
                b'H' if !self.tagged && !self.in_copy => {
                    self.in_copy = true;
                    return Ok(self.old_archive());
                }
                b'T' | b'C' if !self.in_copy => {}
                b'D' if !self.in_copy => {
                    let values = message::data_row(&msg.body).map_err(|e| self.client.bad(e))?;
                    let text = |i: usize| {
                        values
                            .get(i)
                            .and_then(|v| v.as_deref())
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    let lsn = text(0).as_deref().and_then(parse_lsn);
                    let tli = text(1).and_then(|t| t.parse::<u32>().ok());
                    if let (Some(l), Some(t)) = (lsn, tli) {
                        self.end = Some((l, t));
                    }
                }
                b'Z' if !self.in_copy => {
                    self.finished = true;
                    let (lsn, timeline) = self.end.ok_or_else(|| {
                        self.client
                            .bad("BASE_BACKUP ended without its end position")
                    })?;
                    return Ok(BackupEvent::End { lsn, timeline });
                }
                b'E' => {
                    let server =
                        message::server_message(&msg.body).map_err(|e| self.client.bad(e))?;
                    self.finished = true;
                    let _ = self.client.drain_to_ready();
                    return Err(PgError::Query {
                        server: Box::new(server),
                    });
                }
                b'd' | b'c' | b'H' | b'T' | b'C' | b'D' | b'Z' => {
                    return Err(self.client.bad(format!(
                        "unexpected message '{}' during BASE_BACKUP",
                        msg.tag.escape_ascii()
                    )))
                }
                other => self.client.on_async(other, &msg)?,
            }
        }
    }

    /// Before 15: archives come in the order of the tablespace list, the
    /// data directory last.
    fn old_archive(&mut self) -> BackupEvent {
        let i = self.next_index;
        self.next_index += 1;
        match self.tablespaces.get(i) {
            Some(t) => BackupEvent::Archive {
                name: format!("{}.tar", t.oid),
                tablespace: Some(t.oid),
            },
            None => BackupEvent::Archive {
                name: "base.tar".into(),
                tablespace: None,
            },
        }
    }

    /// One CopyData of the 15+ framing: 'n' new archive (name, location),
    /// 'd' archive bytes, 'p' progress, 'm' a manifest follows.
    fn tagged_data(&mut self, body: Vec<u8>) -> Result<Option<BackupEvent>, PgError> {
        let Some(&tag) = body.first() else {
            return Err(self
                .client
                .bad("an empty CopyData message during BASE_BACKUP"));
        };
        match tag {
            b'd' if self.in_manifest => Ok(None),
            b'd' => Ok(Some(BackupEvent::Data {
                buf: body,
                start: 1,
            })),
            b'p' => Ok(None),
            b'm' => {
                // Never asked for; dropped as WAL-G drops it.
                log::warn!("the server sent a backup manifest, which is not stored");
                self.in_manifest = true;
                Ok(None)
            }
            b'n' => {
                let mut b = Body::new(&body[1..]);
                let name = b.cstr().map_err(|e| self.client.bad(e))?;
                let _location = b.cstr().map_err(|e| self.client.bad(e))?;
                let tablespace = if name == "base.tar" {
                    None
                } else {
                    let oid = name
                        .strip_suffix(".tar")
                        .and_then(|o| o.parse::<u32>().ok())
                        .filter(|o| self.tablespaces.iter().any(|t| t.oid == *o));
                    match oid {
                        Some(o) => Some(o),
                        None => {
                            return Err(self.client.bad(format!(
                                "BASE_BACKUP sent archive '{name}', which is neither base.tar nor a listed tablespace"
                            )))
                        }
                    }
                };
                Ok(Some(BackupEvent::Archive { name, tablespace }))
            }
            other => Err(self.client.bad(format!(
                "unknown BASE_BACKUP message '{}'",
                other.escape_ascii()
            ))),
        }
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

    use crate::pg::params::{targets, ConnParams, Secret, SslMode};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn columns(names: &[&str]) -> Vec<u8> {
        let mut b = (names.len() as i16).to_be_bytes().to_vec();
        for n in names {
            b.extend_from_slice(n.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0; 18]);
        }
        msg(b'T', &b)
    }

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        msg(b'D', &b)
    }

    /// A server that logs anyone in, then answers the first command with
    /// `script` (the start rows, then the copy) and the end rows.
    fn scripted(copy: Vec<u8>) -> Client {
        let mut script = msg(b'R', &0i32.to_be_bytes());
        script.extend(msg(b'Z', b"I"));
        script.extend(columns(&["recptr", "tli"]));
        script.extend(row(&[Some("0/5000028"), Some("1")]));
        script.extend(msg(b'C', b"SELECT\0"));
        script.extend(columns(&["spcoid", "spclocation", "size"]));
        script.extend(row(&[Some("16384"), Some("/ts"), None]));
        script.extend(row(&[None, None, None]));
        script.extend(msg(b'C', b"SELECT\0"));
        script.extend(copy);
        script.extend(columns(&["recptr", "tli"]));
        script.extend(row(&[Some("0/6000100"), Some("1")]));
        script.extend(msg(b'C', b"SELECT\0"));
        script.extend(msg(b'Z', b"I"));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&script);
                // Keep the socket open until the client hangs up.
                let _ = s.read(&mut buf);
                let _ = s.read(&mut buf);
            }
        });
        let params = ConnParams {
            targets: targets(Some("127.0.0.1"), Some(&port.to_string())).unwrap(),
            user: "u".into(),
            database: "d".into(),
            password: Some(Secret("pw".into())),
            passfile: None,
            ssl_mode: SslMode::Disable,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            application_name: "t".into(),
            extra: Vec::new(),
        };
        Client::connect(&params).unwrap()
    }

    fn options() -> BaseBackupOptions {
        BaseBackupOptions {
            label: "wal-g".into(),
            fast: true,
            max_rate_kb: None,
            verify_checksums: false,
            incremental: false,
        }
    }

    fn data(bytes: &[u8]) -> BackupEvent {
        BackupEvent::Data {
            buf: bytes.to_vec(),
            start: 0,
        }
    }

    /// Every event, with Data made comparable (start 0).
    fn events(b: &mut BaseBackup) -> Result<Vec<BackupEvent>, PgError> {
        let mut out = Vec::new();
        loop {
            let e = b.next()?;
            let end = matches!(e, BackupEvent::End { .. });
            out.push(match e {
                BackupEvent::Data { buf, start } => data(&buf[start..]),
                other => other,
            });
            if end {
                return Ok(out);
            }
        }
    }

    fn expected() -> Vec<BackupEvent> {
        vec![
            BackupEvent::Archive {
                name: "16384.tar".into(),
                tablespace: Some(16384),
            },
            data(b"abc"),
            BackupEvent::Archive {
                name: "base.tar".into(),
                tablespace: None,
            },
            data(b"xyz"),
            BackupEvent::End {
                lsn: 0x600_0100,
                timeline: 1,
            },
        ]
    }

    #[test]
    fn pg_base_backup_tagged_stream_of_15() {
        let mut copy = msg(b'H', &[0, 0, 0]);
        copy.extend(msg(b'd', b"n16384.tar\0/ts\0"));
        copy.extend(msg(b'd', b"dabc"));
        copy.extend(msg(b'd', b"p\0\0\0\0\0\0\0\x03"));
        copy.extend(msg(b'd', b"nbase.tar\0\0"));
        copy.extend(msg(b'd', b"dxyz"));
        copy.extend(msg(b'c', b""));
        let mut client = scripted(copy);
        let mut b = client.base_backup(150000, &options()).unwrap();
        assert_eq!((b.start_lsn, b.timeline), (0x500_0028, 1));
        assert_eq!(
            b.tablespaces,
            [BackupTablespace {
                oid: 16384,
                location: "/ts".into()
            }]
        );
        assert_eq!(events(&mut b).unwrap(), expected());
        // The session is usable again: nothing is left unread.
        drop(b);
    }

    #[test]
    fn pg_base_backup_one_copy_per_archive_before_15() {
        let mut copy = msg(b'H', &[0, 0, 0]);
        copy.extend(msg(b'd', b"abc"));
        copy.extend(msg(b'c', b""));
        copy.extend(msg(b'H', &[0, 0, 0]));
        copy.extend(msg(b'd', b"xyz"));
        copy.extend(msg(b'c', b""));
        let mut client = scripted(copy);
        let mut b = client.base_backup(140000, &options()).unwrap();
        assert_eq!(events(&mut b).unwrap(), expected());
    }

    #[test]
    fn pg_base_backup_refuses_unknown_archives() {
        let mut copy = msg(b'H', &[0, 0, 0]);
        copy.extend(msg(b'd', b"n../evil.tar\0/x\0"));
        let mut client = scripted(copy);
        let mut b = client.base_backup(160000, &options()).unwrap();
        let e = events(&mut b).unwrap_err().to_string();
        assert!(
            e.contains("'../evil.tar'") && e.contains("neither base.tar"),
            "{e}"
        );
    }

    #[test]
    fn pg_base_backup_syntax_by_version() {
        let mut o = BaseBackupOptions {
            label: "wal-g".into(),
            fast: true,
            max_rate_kb: None,
            verify_checksums: false,
            incremental: false,
        };
        assert_eq!(
            base_backup_command(150004, &o),
            "BASE_BACKUP (LABEL 'wal-g', CHECKPOINT 'fast', TABLESPACE_MAP, VERIFY_CHECKSUMS false)"
        );
        assert_eq!(
            base_backup_command(140010, &o),
            "BASE_BACKUP LABEL 'wal-g' FAST TABLESPACE_MAP NOVERIFY_CHECKSUMS"
        );
        assert_eq!(
            base_backup_command(100023, &o),
            "BASE_BACKUP LABEL 'wal-g' FAST TABLESPACE_MAP"
        );
        o.verify_checksums = true;
        o.max_rate_kb = Some(100);
        o.label = "it's".into();
        assert_eq!(
            base_backup_command(170000, &o),
            "BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast', MAX_RATE 100, TABLESPACE_MAP)"
        );
        assert_eq!(
            base_backup_command(130000, &o),
            "BASE_BACKUP LABEL 'it''s' FAST MAX_RATE 100 TABLESPACE_MAP"
        );
        // Below the server's minimum the limit is left out, as WAL-G does.
        o.max_rate_kb = Some(31);
        assert!(!base_backup_command(150000, &o).contains("MAX_RATE"));
        // A remote delta (PostgreSQL 17+).
        o.incremental = true;
        assert_eq!(
            base_backup_command(170000, &o),
            "BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast', TABLESPACE_MAP, INCREMENTAL)"
        );
    }
}
