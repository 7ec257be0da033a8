//! `walden wal-receive`: streams WAL from the server over a physical
//! replication slot and stores each segment in `wal_005/` when complete,
//! as WAL-G's wal-receive does.
//!
//! One segment buffer is held in memory (WAL-G does the same); the server
//! is told that WAL is flushed only up to the start of that buffer, so the
//! slot keeps on the server whatever storage does not hold yet. When the
//! server asks for a reply and we hold all it sent (a shutting-down server
//! waits for exactly that), the segment so far is stored as
//! `<segment>.partial` first and then confirmed. A stop
//! signal uploads the buffer as `<segment>.partial` and ends with exit 0;
//! a lost connection (server restart) is retried for a while, streaming
//! again from the start of the buffered segment.

use std::ffi::OsString;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{codecs, open_storage, positionals};
use crate::codec::Codecs;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::pg::replication::{self, format_lsn, Stream};
use crate::pg::{Client, ConnParams, PgError};
use crate::storage::Storage;
use crate::wal::{history, metadata, object, Segment};

const USAGE: &str = "walden wal-receive";

/// How often the server hears our position without asking (WAL-G: 10 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How long a lost server is waited for before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Set by the signal thread; read by the streaming loop.
static STOP: AtomicBool = AtomicBool::new(false);
/// The replication socket, shut down by the signal thread so that a read
/// blocked on it returns at once.
static SOCKET: AtomicI32 = AtomicI32::new(-1);

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    positionals(args, USAGE, 0)?;
    install_signals();
    let slot = slot_name(settings.get("WALG_SLOTNAME").as_deref())?;
    let wal_mb = crate::wal::segment_size_mb(settings)?;
    let meta = metadata::level(settings)?;
    let storage = open_storage(settings)?;
    let mut codecs = codecs(settings)?;
    codecs.zstd_workers = 1;
    let params = ConnParams::from_settings(settings)?;
    let mut r = Receiver {
        slot,
        wal_mb,
        seg_size: wal_mb << 20,
        storage,
        codecs,
        meta,
        timeline: 0,
        buf_start: None,
        buf: vec![0u8; (wal_mb << 20) as usize],
        filled: 0,
        acked: 0,
        streamed: false,
        io_buf: crate::stream::buffer(),
    };
    let mut lost_since: Option<Instant> = None;
    loop {
        match r.session(&params) {
            Ok(()) => break,
            Err(_) if STOP.load(Ordering::SeqCst) => break,
            Err(e) if r.buf_start.is_some() && reconnectable(&e) => {
                // The window counts from the last time streaming worked.
                if std::mem::take(&mut r.streamed) {
                    lost_since = None;
                }
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(Error::Other(format!(
                        "wal-receive: the server is gone for {} s, giving up: {e}",
                        RECONNECT_FOR.as_secs()
                    )));
                }
                log::warn!("wal-receive: connection lost ({e}); reconnecting");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    r.upload_partial()?;
    log::info!("wal-receive: stopped");
    Ok(())
}

/// `WALG_SLOTNAME`, checked as WAL-G checks it.
fn slot_name(value: Option<&str>) -> Result<String> {
    let name = value.filter(|v| !v.is_empty()).unwrap_or("walg");
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(Error::Usage(format!(
            "Slot name ({name}) can only contain 1-63 word characters ([0-9A-Za-z_]); set WALG_SLOTNAME to such a name"
        )));
    }
    Ok(name.to_string())
}

/// Errors after which the server may come back: the connection dropped,
/// or the server is shutting down or starting (SQLSTATE classes 08, 57).
fn reconnectable(e: &Error) -> bool {
    let Error::Pg(pg) = e else {
        return false;
    };
    match pg.as_ref() {
        PgError::Io { .. }
        | PgError::Protocol { .. }
        | PgError::Connect { .. }
        | PgError::Timeout { .. }
        | PgError::AllFailed(_) => true,
        PgError::Query { server } | PgError::Refused { server, .. } => {
            server.code.starts_with("57") || server.code.starts_with("08")
        }
        _ => false,
    }
}

struct Receiver {
    slot: String,
    wal_mb: u64,
    seg_size: u64,
    storage: Arc<dyn Storage>,
    codecs: Codecs,
    meta: metadata::Level,
    timeline: u32,
    /// Start LSN of the segment being filled; None before the first start.
    buf_start: Option<u64>,
    buf: Vec<u8>,
    filled: usize,
    /// Confirmed to the server beyond `buf_start`: held in storage by a
    /// `.partial` object of the current segment.
    acked: u64,
    /// Streaming started on the current connection.
    streamed: bool,
    io_buf: Vec<u8>,
}

impl Receiver {
    /// One replication connection, until a stop signal (Ok) or an error.
    fn session(&mut self, params: &ConnParams) -> Result<()> {
        let mut client = Client::connect(&replication::physical(params))?;
        SOCKET.store(client.raw_fd(), Ordering::SeqCst);
        let result = self.stream(&mut client, params);
        SOCKET.store(-1, Ordering::SeqCst);
        result
    }

    fn stream(&mut self, client: &mut Client, params: &ConnParams) -> Result<()> {
        if STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
        let system = client.identify_system()?;
        let server_seg = client.wal_segment_size()?;
        if server_seg != self.seg_size {
            return Err(Error::Other(format!(
                "the server's wal_segment_size is {} MiB but WALG_PG_WAL_SIZE is {}; set WALG_PG_WAL_SIZE={}",
                server_seg >> 20,
                self.wal_mb,
                server_seg >> 20
            )));
        }
        let start = match self.buf_start {
            Some(s) => s,
            None => {
                let lsn = self.start_lsn(client, params, system.xlogpos)?;
                self.timeline = self.start_timeline(client, system.timeline, lsn)?;
                lsn - lsn % self.seg_size
            }
        };
        // Whatever was buffered is streamed again from the segment start.
        self.buf_start = Some(start);
        self.filled = 0;
        log::info!(
            "wal-receive: streaming from {} on timeline {} with slot {} (system {})",
            format_lsn(start),
            self.timeline,
            self.slot,
            system.system_id
        );
        client.start_replication(&self.slot, start, self.timeline)?;
        self.streamed = true;
        let mut last_status = Instant::now();
        loop {
            if STOP.load(Ordering::SeqCst) {
                return Ok(());
            }
            let msg = match client.next_wal() {
                Ok(m) => m,
                Err(_) if STOP.load(Ordering::SeqCst) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut reply = false;
            match msg {
                Stream::XLogData { start, data } => {
                    if self.take(start, &data)? {
                        reply = true;
                    }
                }
                Stream::Keepalive { end, reply: asked } => {
                    reply = asked;
                    let received = self.buf_start.unwrap_or(0) + self.filled as u64;
                    if asked && end <= received && received > self.acked {
                        // The server waits for us to confirm all it sent
                        // (a shutdown waits for exactly this): store the
                        // segment so far as .partial, then confirm it.
                        self.upload_partial()?;
                        self.acked = received;
                    }
                }
                Stream::EndOfTimeline {
                    next_timeline,
                    start,
                } => {
                    self.upload_partial()?;
                    log::info!(
                        "wal-receive: timeline {} ended at {}; following timeline {next_timeline}",
                        self.timeline,
                        format_lsn(start)
                    );
                    self.timeline = next_timeline;
                    self.upload_history(client, next_timeline)?;
                    let seg = start - start % self.seg_size;
                    self.buf_start = Some(seg);
                    self.filled = 0;
                    client.start_replication(&self.slot, seg, self.timeline)?;
                    continue;
                }
            }
            if reply || last_status.elapsed() >= STATUS_INTERVAL {
                let stored = self.buf_start.unwrap_or(0).max(self.acked);
                client.send_status(stored, stored, stored)?;
                last_status = Instant::now();
            }
        }
    }

    /// Where streaming starts: the slot's restart_lsn, or the server's
    /// current position for a slot made now.
    fn start_lsn(&mut self, client: &mut Client, params: &ConnParams, xlogpos: u64) -> Result<u64> {
        let major = client
            .parameter("server_version")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        let existing = if major >= 15 {
            client
                .read_replication_slot(&self.slot)?
                .map(|s| s.restart_lsn)
        } else {
            // No READ_REPLICATION_SLOT before 15: ask over SQL, as WAL-G does.
            let mut sql = Client::connect(params)?;
            let rows = sql.query(&format!(
                "SELECT restart_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = '{}'",
                self.slot
            ))?;
            match rows.first() {
                Some(row) => Some(row.get_str(0)?.and_then(replication::parse_lsn)),
                None => None,
            }
        };
        match existing {
            Some(Some(lsn)) => {
                log::info!(
                    "wal-receive: slot {} exists, restart_lsn {}",
                    self.slot,
                    format_lsn(lsn)
                );
                Ok(lsn)
            }
            Some(None) => Ok(xlogpos),
            None => {
                log::info!(
                    "wal-receive: creating physical replication slot {}",
                    self.slot
                );
                client.create_physical_slot(&self.slot)?;
                Ok(xlogpos)
            }
        }
    }

    /// The timeline `lsn` belongs to, from the current timeline's history
    /// (which is stored on the way).
    fn start_timeline(&mut self, client: &mut Client, current: u32, lsn: u64) -> Result<u32> {
        if current < 2 {
            return Ok(1);
        }
        let Some(text) = self.upload_history(client, current)? else {
            return Ok(current);
        };
        let mut records = history::parse(&text);
        records.sort_by_key(|r| r.parent);
        Ok(records
            .iter()
            .find(|r| r.switch_lsn > lsn)
            .map(|r| r.parent)
            .unwrap_or(current))
    }

    /// Fetch the history file of `timeline` and store it beside the WAL.
    fn upload_history(&mut self, client: &mut Client, timeline: u32) -> Result<Option<String>> {
        let Some((name, content)) = client.timeline_history(timeline)? else {
            return Ok(None);
        };
        let key = object::upload(
            &self.storage,
            &self.codecs,
            &name,
            &mut &content[..],
            &mut self.io_buf,
        )?;
        log::info!("FILE PATH: {}", key.trim_start_matches(object::WAL_FOLDER));
        Ok(Some(String::from_utf8_lossy(&content).into_owned()))
    }

    /// Copy WAL into the buffer, storing each segment it completes.
    /// True when a segment was stored (the server should hear of it).
    fn take(&mut self, start: u64, mut data: &[u8]) -> Result<bool> {
        let mut stored = false;
        let mut at = start;
        while !data.is_empty() {
            let buf_start = self.buf_start.unwrap_or(0);
            let expected = buf_start + self.filled as u64;
            if at != expected {
                return Err(Error::Other(format!(
                    "wal-receive: the server sent WAL at {} but {} was expected; run wal-receive again",
                    format_lsn(at),
                    format_lsn(expected)
                )));
            }
            let room = self.buf.len() - self.filled;
            let n = room.min(data.len());
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            at += n as u64;
            if self.filled == self.buf.len() {
                let name = self.segment().name(self.wal_mb);
                self.store(&name, self.buf.len())?;
                self.buf_start = Some(buf_start + self.seg_size);
                self.filled = 0;
                stored = true;
            }
        }
        Ok(stored)
    }

    fn segment(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.buf_start.unwrap_or(0) / self.seg_size,
        }
    }

    /// What was received of the current segment, zero-padded to the full
    /// size as WAL-G stores it, as `<segment>.partial`.
    fn upload_partial(&mut self) -> Result<()> {
        if self.filled == 0 || self.buf_start.is_none() {
            return Ok(());
        }
        let name = format!("{}.partial", self.segment().name(self.wal_mb));
        self.store(&name, self.filled)?;
        Ok(())
    }

    /// Upload `buf[..len]`, zero-padded to a segment, then its metadata.
    fn store(&mut self, name: &str, len: usize) -> Result<()> {
        let pad = self.seg_size - len as u64;
        let mut source = (&self.buf[..len]).chain(io::repeat(0).take(pad));
        let key = object::upload(
            &self.storage,
            &self.codecs,
            name,
            &mut source,
            &mut self.io_buf,
        )?;
        log::info!("FILE PATH: {}", key.trim_start_matches(object::WAL_FOLDER));
        match self.meta {
            metadata::Level::None => {}
            // No local pg_wal to gather BULK groups in: each record alone.
            metadata::Level::Individual | metadata::Level::Bulk => {
                let doc =
                    serde_json::Value::Object(metadata::record(name, std::time::SystemTime::now()))
                        .to_string();
                self.storage.put(
                    &format!("{}{name}.json", object::WAL_FOLDER),
                    doc.as_bytes(),
                )?;
            }
        }
        Ok(())
    }
}

/// Stop signals go to a thread of their own, which sets STOP and shuts the
/// replication socket's reading side so that a blocked read returns; the
/// streaming loop then stores what it holds and ends. A second signal ends
/// the process at once.
fn install_signals() {
    let set = {
        // SAFETY: sigemptyset/sigaddset only write into the set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            set
        }
    };
    // SAFETY: changes this thread's mask; threads started later inherit it.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return;
    }
    let started = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait writes the received signal into `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(128 + sig);
            }
            log::info!("wal-receive: stop signal received, storing what was received");
            let fd = SOCKET.load(Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: shutdown on a descriptor the session still owns
                // (it is unregistered before the socket is closed).
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
        });
    if started.is_err() {
        // SAFETY: as above; without the thread the signals must kill.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert_eq!(slot_name(None).unwrap(), "walg");
        assert_eq!(slot_name(Some("")).unwrap(), "walg");
        assert_eq!(slot_name(Some("my_Slot9")).unwrap(), "my_Slot9");
        let e = slot_name(Some("bad-name")).unwrap_err().to_string();
        assert!(e.contains("[0-9A-Za-z_]") && e.contains("bad-name"), "{e}");
        assert!(slot_name(Some(&"a".repeat(64))).is_err());
    }
}
