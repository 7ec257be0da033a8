//! WAL-G's daemon socket protocol, as its `walg-daemon-client` and the
//! `walg_archive` archive library speak it (spec walg-wal-admin §8.2).
//!
//! A request is one type byte, a big-endian u16 length that counts these
//! three header bytes too, then `length - 3` bytes of body. A reply is one
//! byte. No handshake: a connection may send `C` (check) any number of
//! times, then at most one `F` (wal-push) or `f` (wal-fetch), after which
//! the daemon closes it.

use std::io::{self, Read};

pub const CHECK: u8 = b'C';
pub const WAL_PUSH: u8 = b'F';
pub const WAL_FETCH: u8 = b'f';

pub const OK: u8 = b'O';
pub const ERROR: u8 = b'E';
/// wal-fetch: storage has no such WAL file (the client exits 74).
pub const NOT_FOUND: u8 = b'N';

/// One request as it came off the socket.
#[derive(Debug, PartialEq)]
pub struct Message {
    pub kind: u8,
    pub body: Vec<u8>,
}

/// What went wrong reading a request.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection between requests: no reply owed.
    Closed,
    /// A length below the header's own three bytes.
    BadLength(u16),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "the client closed the connection"),
            ReadError::BadLength(n) => write!(
                f,
                "message length {n} is shorter than its 3-byte header (a client speaking another protocol?)"
            ),
            ReadError::Io(e) => write!(f, "reading the message: {e}"),
        }
    }
}

/// Read one request. The body is at most 65,532 bytes by construction.
pub fn read_message(conn: &mut impl Read) -> Result<Message, ReadError> {
    let mut header = [0u8; 3];
    // A clean end before the first byte is a client that is done.
    let mut got = 0;
    while got < header.len() {
        match conn.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended inside a message header",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let length = u16::from_be_bytes([header[1], header[2]]);
    if length < 3 {
        return Err(ReadError::BadLength(length));
    }
    let mut body = vec![0u8; usize::from(length) - 3];
    conn.read_exact(&mut body).map_err(ReadError::Io)?;
    Ok(Message {
        kind: header[0],
        body,
    })
}

/// A request as the clients frame it (used by tests and the benchmark).
#[cfg(test)]
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 3) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// WAL-G's argument list: a count byte, then each argument as a big-endian
/// u16 length and its bytes; nothing may follow the last one.
pub fn decode_args(body: &[u8]) -> Result<Vec<String>, String> {
    let (&count, mut rest) = body
        .split_first()
        .ok_or("the argument list is empty (no count byte)")?;
    let mut args = Vec::with_capacity(usize::from(count));
    for i in 0..count {
        if rest.len() < 2 {
            return Err(format!("argument {} has no length", i + 1));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if rest.len() < len {
            return Err(format!(
                "argument {} claims {len} bytes but {} remain",
                i + 1,
                rest.len()
            ));
        }
        let arg = std::str::from_utf8(&rest[..len])
            .map_err(|_| format!("argument {} is not UTF-8", i + 1))?;
        args.push(arg.to_string());
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes follow the last of {count} arguments",
            rest.len()
        ));
    }
    Ok(args)
}

#[cfg(test)]
pub fn encode_args(args: &[&str]) -> Vec<u8> {
    let mut out = vec![args.len() as u8];
    for a in args {
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(a.as_bytes());
    }
    out
}

/// The WAL file name of a wal-push body. walg_archive sends exactly 24
/// bytes of PostgreSQL's C string, so a shorter name (`00000002.history`)
/// arrives with its terminating NUL and whatever followed it: the name
/// ends at the first NUL. `walg-daemon-client wal-push` sends its argument
/// as given; `%f` is meant, but `pg_wal/NAME` or `$PGDATA/pg_wal/NAME`
/// (`%p` made absolute) name the same file and are taken too.
pub fn push_name(body: &[u8], pgdata: &str) -> Result<String, String> {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = std::str::from_utf8(&body[..end])
        .map_err(|_| "the WAL file name is not UTF-8".to_string())?;
    let pg_wal = format!("{}/pg_wal/", pgdata.trim_end_matches('/'));
    let name = text
        .strip_prefix("pg_wal/")
        .or_else(|| text.strip_prefix(pg_wal.as_str()))
        .unwrap_or(text);
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !plain {
        return Err(format!(
            "'{text}' is not a WAL file name in pg_wal; send the name alone (%f)"
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_walg_archive_check_and_push_on_one_connection() {
        // walg_archive's bytes: "C" + 8 + "CHECK", then "F" + 27 + 24 bytes.
        let mut wire = frame(CHECK, b"CHECK");
        assert_eq!(wire, b"C\x00\x08CHECK");
        wire.extend(frame(WAL_PUSH, b"000000010000000000000003"));
        assert_eq!(&wire[8..11], b"F\x00\x1b");
        let mut r = &wire[..];
        assert_eq!(read_message(&mut r).unwrap().kind, CHECK);
        let m = read_message(&mut r).unwrap();
        assert_eq!(
            (m.kind, &m.body[..]),
            (WAL_PUSH, &b"000000010000000000000003"[..])
        );
        assert!(matches!(read_message(&mut r), Err(ReadError::Closed)));
    }

    #[test]
    fn bad_frames() {
        assert!(matches!(
            read_message(&mut &b"F\x00\x02"[..]),
            Err(ReadError::BadLength(2))
        ));
        assert!(matches!(
            read_message(&mut &b"F\x00"[..]),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            read_message(&mut &b"F\x00\x09ab"[..]),
            Err(ReadError::Io(_))
        ));
        // An empty body is a valid frame (walg-daemon-client's zero args).
        assert_eq!(read_message(&mut &b"C\x00\x03"[..]).unwrap().body, b"");
    }

    #[test]
    fn argument_lists() {
        let body = encode_args(&["000000010000000000000003", "pg_wal/RECOVERYXLOG"]);
        assert_eq!(&body[..3], b"\x02\x00\x18");
        assert_eq!(
            decode_args(&body).unwrap(),
            ["000000010000000000000003", "pg_wal/RECOVERYXLOG"]
        );
        assert!(decode_args(b"").is_err());
        assert!(decode_args(b"\x01\x00").is_err());
        assert!(decode_args(b"\x01\x00\x05abc").is_err());
        assert!(decode_args(b"\x01\x00\x01ab").is_err());
        assert_eq!(decode_args(b"\x00").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn push_names() {
        let pgdata = "/var/lib/pg/data";
        assert_eq!(
            push_name(b"000000010000000000000003", pgdata).unwrap(),
            "000000010000000000000003"
        );
        // walg_archive's 24 bytes of a shorter C string.
        assert_eq!(
            push_name(b"00000002.history\0\x7f\x01abcd", pgdata).unwrap(),
            "00000002.history"
        );
        assert_eq!(
            push_name(b"pg_wal/000000010000000000000003", pgdata).unwrap(),
            "000000010000000000000003"
        );
        assert_eq!(
            push_name(b"/var/lib/pg/data/pg_wal/000000010000000000000003", pgdata).unwrap(),
            "000000010000000000000003"
        );
        for bad in [&b""[..], b"..", b"../../etc/passwd", b"/etc/passwd", b"a/b"] {
            assert!(push_name(bad, pgdata).is_err(), "{bad:?}");
        }
    }
}
