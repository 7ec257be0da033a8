//! The byte stream under the protocol: a unix socket, a TCP socket, or TLS
//! over TCP. Opening it is the only place that knows about addresses.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::error::PgError;
use super::params::{Endpoint, Target};

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// Opens the socket, trying each address a host name resolves to.
    pub fn open(target: &Target, timeout: Option<Duration>) -> Result<Stream, PgError> {
        let name = target.to_string();
        let fail = |source| PgError::Connect {
            target: name.clone(),
            source,
        };
        match &target.endpoint {
            Endpoint::Socket(dir) => {
                let path = Target::socket_path(dir, target.port);
                // A local connect does not wait: it succeeds or fails at once.
                UnixStream::connect(&path).map(Stream::Unix).map_err(fail)
            }
            Endpoint::Tcp(host) => {
                let addrs: Vec<_> = (host.as_str(), target.port)
                    .to_socket_addrs()
                    .map_err(|e| {
                        fail(io::Error::new(
                            e.kind(),
                            format!("cannot resolve host name \"{host}\": {e}"),
                        ))
                    })?
                    .collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
                for addr in addrs {
                    let attempt = match timeout {
                        Some(t) => TcpStream::connect_timeout(&addr, t),
                        None => TcpStream::connect(addr),
                    };
                    match attempt {
                        Ok(s) => {
                            // Small protocol messages must not wait for Nagle.
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Err(PgError::Timeout { target: name });
                        }
                        Err(e) => last = e,
                    }
                }
                Err(fail(last))
            }
        }
    }

    /// Bounds each read and write; None removes the bound (long queries).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tls(s) => {
                s.sock.set_read_timeout(timeout)?;
                s.sock.set_write_timeout(timeout)
            }
        }
    }

    /// The socket's descriptor, so that a stop signal can shut a blocked
    /// read down (`wal-receive`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.sock.as_raw_fd(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The effective user's name and home directory (PGUSER's default, and
/// where ~/.pgpass and ~/.postgresql live); HOME wins for the home, as in
/// libpq.
pub fn os_user() -> Option<(String, PathBuf)> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, whose sizes we pass;
    // the strings it points to live in `buf`, read before it is dropped.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated strings inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    let dir = if pwd.pw_dir.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: as above.
        let d = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
        PathBuf::from(d.to_string_lossy().into_owned())
    };
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or(dir);
    Some((name, home))
}
