//! `walden daemon SOCKET`: WAL-G's daemon. Serves wal-push and wal-fetch
//! to `walg-daemon-client` and the `walg_archive` archive library over a
//! UNIX stream socket (the protocol is in [`protocol`]).
//!
//! The point of it is what a process per segment cannot keep: storage is
//! opened once, so its connections (TLS, keep-alive) stay warm from one
//! segment to the next, and codecs and settings are read once. Each
//! connection has a thread; at most `WALG_UPLOAD_CONCURRENCY` requests
//! run at once (each holds a segment's buffers), later ones wait their
//! turn. SIGTERM or SIGINT stop accepting, let requests in progress finish
//! (within `WALG_DAEMON_WAL_UPLOAD_TIMEOUT`), remove the socket file and
//! exit 0.

mod duration;
mod protocol;

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::commands::{positionals, upload_concurrency, wal_fetch, wal_push::Pusher};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use protocol::{Message, ReadError};

const USAGE: &str = "walden daemon SOCKET";
/// WAL-G's default of `WALG_DAEMON_WAL_UPLOAD_TIMEOUT`.
const DEFAULT_UPLOAD_TIMEOUT: &str = "60s";
/// A connection silent this long between requests is closed: its client
/// is gone (walg_archive never closes the connection of a check).
const IDLE: Duration = Duration::from_secs(600);
/// systemd's watchdog hears from us this often, as from WAL-G.
const WATCHDOG_EVERY: Duration = Duration::from_secs(30);

/// Set by the signal thread when a stop signal came.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let socket = PathBuf::from(positionals(args, USAGE, 1)?.remove(0));
    // WAL-G finds the pushed file and the fetch destination under PGDATA.
    let pgdata = settings.get_explicit("PGDATA").ok_or_else(|| {
        Error::Usage(
            "walden daemon needs PGDATA (the cluster's data directory): wal-push requests name files in its pg_wal, wal-fetch destinations are relative to it".into(),
        )
    })?;
    let timeout = upload_timeout(settings)?;
    let slots = upload_concurrency(settings)?;
    let pusher = Pusher::new(settings)?;

    install_signals(socket.clone());
    let listener = bind(&socket)?;
    let _socket_file = RemoveOnDrop(socket.clone());
    log::info!(
        "walden daemon: serving wal-push and wal-fetch on {}",
        socket.display()
    );
    start_watchdog();

    let shared = Arc::new(Shared {
        fetch: wal_fetch::FetchOptions::new(settings)?,
        pgdata,
        pusher,
        timeout,
        slots: Slots::new(slots),
        prefetching: Arc::new(AtomicBool::new(false)),
    });
    for conn in listener.incoming() {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(conn) => {
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || serve(conn, &shared));
                if let Err(e) = spawned {
                    log::error!("cannot start a thread for a connection: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("accepting a connection on {}: {e}", socket.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Requests in progress end by themselves (each is bounded by the
    // timeout); their clients get their answers.
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    if !shared.slots.wait_idle(deadline) {
        log::warn!("walden daemon: requests still running at exit; their clients will retry");
    }
    log::info!("walden daemon: stopped");
    Ok(())
}

/// `WALG_DAEMON_WAL_UPLOAD_TIMEOUT`, a Go duration (`60s`, `2m30s`).
fn upload_timeout(settings: &Settings) -> Result<Duration> {
    let text = settings
        .get("WALG_DAEMON_WAL_UPLOAD_TIMEOUT")
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_UPLOAD_TIMEOUT.to_string());
    match duration::parse_go(&text) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(ConfigError::Invalid {
            name: "WALG_DAEMON_WAL_UPLOAD_TIMEOUT".into(),
            value: text,
            problem: "use a positive Go duration such as 60s, 2m or 1m30s".into(),
        }
        .into()),
    }
}

/// Listen at `path`. A socket left there by an earlier run is replaced,
/// as WAL-G does; any other file is not ours to remove.
fn bind(path: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| {
                Error::io(
                    format!("cannot remove the old socket {}", path.display()),
                    e,
                )
            })?;
        }
        Ok(_) => {
            return Err(Error::Other(format!(
                "{} exists and is not a socket; give walden daemon a path of its own",
                path.display()
            )))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Shared {
    fetch: wal_fetch::FetchOptions,
    pgdata: String,
    pusher: Pusher,
    timeout: Duration,
    slots: Slots,
    /// A prefetch thread is running (one at a time).
    prefetching: Arc<AtomicBool>,
}

/// One connection: checks, then one wal-push or wal-fetch, as WAL-G's
/// daemon handles them; every failure is answered with `E` and ends the
/// connection.
fn serve(mut conn: UnixStream, shared: &Arc<Shared>) {
    let _ = conn.set_read_timeout(Some(IDLE));
    loop {
        let message = match protocol::read_message(&mut conn) {
            Ok(m) => m,
            Err(ReadError::Closed) => return,
            Err(e) => {
                fail(&mut conn, &format!("read message: {e}"));
                return;
            }
        };
        match message.kind {
            protocol::CHECK => {
                if reply(&mut conn, protocol::OK).is_err() {
                    return;
                }
                log::debug!("configuration successfully checked");
            }
            protocol::WAL_PUSH | protocol::WAL_FETCH => {
                let answer = request(shared, message);
                let _ = reply(&mut conn, answer);
                return;
            }
            other => {
                fail(
                    &mut conn,
                    &format!(
                        "unexpected message type {:?} (0x{other:02x})",
                        char::from(other)
                    ),
                );
                return;
            }
        }
    }
}

/// Run a wal-push or wal-fetch in a slot and within the timeout; the
/// reply byte.
fn request(shared: &Arc<Shared>, message: Message) -> u8 {
    let slot = take_slot(shared);
    let (tx, rx) = mpsc::channel();
    let kind = message.kind;
    // On a thread of its own so that the client hears of a timeout; the
    // work itself cannot be cut off, and ends (or fails) on its own.
    let spawned = std::thread::Builder::new()
        .name("request".into())
        .spawn(move || {
            let answer = match message.kind {
                protocol::WAL_PUSH => push(&slot.0, &message.body),
                _ => fetch(&slot.0, &message.body),
            };
            drop(slot);
            let _ = tx.send(answer);
        });
    if let Err(e) = spawned {
        log::error!("Message loop failure: cannot start a thread: {e}");
        return protocol::ERROR;
    }
    match rx.recv_timeout(shared.timeout) {
        Ok(answer) => answer,
        Err(_) => {
            let what = if kind == protocol::WAL_PUSH {
                "wal-push"
            } else {
                "wal-fetch"
            };
            log::error!(
                "Message loop failure: {what} did not finish within WALG_DAEMON_WAL_UPLOAD_TIMEOUT ({} s); answered E, the client will retry",
                shared.timeout.as_secs_f64()
            );
            protocol::ERROR
        }
    }
}

fn push(shared: &Shared, body: &[u8]) -> u8 {
    let name = match protocol::push_name(body, &shared.pgdata) {
        Ok(n) => n,
        Err(e) => {
            log::error!("Message loop failure: wal-push: {e}");
            return protocol::ERROR;
        }
    };
    let path = Path::new(&shared.pgdata).join("pg_wal").join(&name);
    log::debug!("starting wal-push: {}", path.display());
    match shared.pusher.push(&path) {
        Ok(()) => {
            log::debug!("successfully archived: {name}");
            protocol::OK
        }
        Err(e) => {
            log::error!("Message loop failure: file archiving failed: {e}");
            protocol::ERROR
        }
    }
}

fn fetch(shared: &Shared, body: &[u8]) -> u8 {
    let args = match protocol::decode_args(body) {
        Ok(a) if a.len() == 2 => a,
        Ok(a) => {
            log::error!(
                "Message loop failure: wal-fetch takes 2 arguments (name, destination), got {}",
                a.len()
            );
            return protocol::ERROR;
        }
        Err(e) => {
            log::error!("Message loop failure: wal-fetch: corrupted message body: {e}");
            return protocol::ERROR;
        }
    };
    let (name, location) = (&args[0], &args[1]);
    if name.is_empty() || name.contains('/') {
        log::error!("Message loop failure: wal-fetch: '{name}' is not a WAL file name");
        return protocol::ERROR;
    }
    let Some(dest) = fetch_destination(Path::new(&shared.pgdata), location) else {
        log::error!(
            "Message loop failure: wal-fetch: destination '{location}' leaves the data directory"
        );
        return protocol::ERROR;
    };
    log::debug!("starting wal-fetch: {name} -> {}", dest.display());
    let pusher = &shared.pusher;
    match wal_fetch::fetch_on(
        &shared.fetch,
        pusher.storage(),
        pusher.codecs(),
        name,
        &dest,
        &shared.prefetching,
    ) {
        Ok(()) => protocol::OK,
        Err(Error::WalNotFound(_)) => {
            log::warn!("ArchiveNonExistenceError: Archive '{name}' does not exist.");
            protocol::NOT_FOUND
        }
        Err(e) => {
            log::error!("Message loop failure: WAL fetch failed: {e}");
            protocol::ERROR
        }
    }
}

fn reply(conn: &mut UnixStream, byte: u8) -> io::Result<()> {
    conn.write_all(&[byte]).inspect_err(|e| {
        log::error!("Message loop failure: socket write failed: {e}");
    })
}

fn fail(conn: &mut UnixStream, why: &str) {
    log::error!("Message loop failure: {why}");
    let _ = conn.write_all(&[protocol::ERROR]);
}

/// Requests at once: each holds a segment's buffers, so memory stays
/// bounded however many clients connect. A slot is held by the thread
/// doing the work, so a request that timed out keeps its slot until its
/// work really ends, and shutdown waits for that too.
struct Slots {
    running: Mutex<usize>,
    changed: Condvar,
    limit: usize,
}

struct Slot(Arc<Shared>);

impl Slots {
    fn new(limit: usize) -> Slots {
        Slots {
            running: Mutex::new(0),
            changed: Condvar::new(),
            limit,
        }
    }

    /// Wait until no work runs, or the deadline passes.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            running = self
                .changed
                .wait_timeout(running, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Wait for a free slot of `shared`.
fn take_slot(shared: &Arc<Shared>) -> Slot {
    let slots = &shared.slots;
    let mut running = slots.running.lock().unwrap_or_else(|p| p.into_inner());
    while *running >= slots.limit {
        running = slots
            .changed
            .wait(running)
            .unwrap_or_else(|p| p.into_inner());
    }
    *running += 1;
    Slot(shared.clone())
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0.slots;
        let mut running = slots.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        slots.changed.notify_all();
    }
}

/// Every 30 s, `WATCHDOG=1` to systemd's `NOTIFY_SOCKET` when it is set
/// (a path, or `@name` for the abstract namespace), as WAL-G's daemon does.
fn start_watchdog() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(WATCHDOG_EVERY);
            if let Err(e) = notify(&target, b"WATCHDOG=1") {
                log::error!("systemd notification to {target}: {e}");
            }
        });
}

fn notify(target: &str, state: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state, &addr)?;
        }
        None => {
            socket.send_to(state, target)?;
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT stop the daemon: the signal thread sets STOP and
/// connects to the socket once, which wakes the accept loop. SIGHUP and
/// SIGUSR1 (WAL-G reopens its log then; walden's log needs no reopening:
/// it appends) are logged and ignored rather than killing the daemon.
fn install_signals(socket: PathBuf) {
    let set = {
        // SAFETY: sigemptyset/sigaddset only write into the set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
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
            if sig == libc::SIGHUP || sig == libc::SIGUSR1 {
                log::info!("walden daemon: signal {sig} ignored (WALG_LOG_DESTINATION is not reopened: rotate it with copytruncate)");
                continue;
            }
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(128 + sig);
            }
            log::info!("walden daemon: stop signal received; finishing requests in progress");
            // Wake accept(); the loop sees STOP and ends.
            let _ = UnixStream::connect(&socket);
        });
    if started.is_err() {
        // SAFETY: as above; without the thread the signals must kill.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Where a wal-fetch request's destination is: PostgreSQL's `%p` is
/// relative to the data directory, the daemon's working directory is not.
/// As WAL-G, a destination that already names the data directory is
/// taken as is and any other is joined to it (an absolute one too, as
/// Go's `path.Join` does); a `..` anywhere is refused, so nothing is
/// written outside the data directory.
fn fetch_destination(pgdata: &Path, location: &str) -> Option<PathBuf> {
    let location = Path::new(location);
    if location
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return None;
    }
    if location.starts_with(pgdata) {
        return Some(location.to_path_buf());
    }
    let relative: PathBuf = location
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    (!relative.as_os_str().is_empty()).then(|| pgdata.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_destinations_stay_in_the_data_directory() {
        let pgdata = Path::new("/var/lib/pg/data");
        let dest = |l: &str| fetch_destination(pgdata, l);
        assert_eq!(
            dest("pg_wal/RECOVERYXLOG"),
            Some(PathBuf::from("/var/lib/pg/data/pg_wal/RECOVERYXLOG"))
        );
        assert_eq!(
            dest("/var/lib/pg/data/pg_wal/RECOVERYXLOG"),
            Some(PathBuf::from("/var/lib/pg/data/pg_wal/RECOVERYXLOG"))
        );
        // Another absolute path goes under the data directory, as in WAL-G.
        assert_eq!(
            dest("/tmp/stolen"),
            Some(PathBuf::from("/var/lib/pg/data/tmp/stolen"))
        );
        for bad in [
            "../outside/x",
            "pg_wal/../../x",
            "/var/lib/pg/data/../x",
            "",
            "/",
            ".",
        ] {
            assert_eq!(dest(bad), None, "{bad}");
        }
    }
}
