//! Backend message framing (1 tag byte, a u32 length, the body) and the
//! parsing of the bodies the client needs. Framing is ours, not
//! postgres-protocol's, so that the Copy messages of the replication
//! protocol (`W` CopyBothResponse, `d` CopyData) go through the same reader.

use std::io::{BufReader, Read, Write};

use bytes::BytesMut;

use super::error::{PgError, ServerMessage};
use super::transport::Stream;

/// Largest backend message accepted. A field can be up to 1 GB; a length
/// beyond that is a broken or hostile server, refused before allocating.
const MAX_MESSAGE: usize = (1 << 30) + 1024;

pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// The reader and writer of one session. `out` collects frontend messages
/// (postgres-protocol's encoders write into it) until `send`.
pub struct Wire {
    reader: BufReader<Stream>,
    pub out: BytesMut,
    pub target: String,
}

impl Wire {
    pub fn new(stream: Stream, target: String) -> Wire {
        Wire {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: BytesMut::with_capacity(1024),
            target,
        }
    }

    pub fn stream(&self) -> &Stream {
        self.reader.get_ref()
    }

    /// Writes what `out` holds, in one go.
    pub fn send(&mut self) -> Result<(), PgError> {
        let stream = self.reader.get_mut();
        let result = stream.write_all(&self.out).and_then(|_| stream.flush());
        self.out.clear();
        result.map_err(|e| PgError::io(&self.target, e))
    }

    /// The next backend message.
    pub fn read(&mut self) -> Result<Message, PgError> {
        let mut header = [0u8; 5];
        self.reader
            .read_exact(&mut header)
            .map_err(|e| PgError::io(&self.target, e))?;
        let [tag, a, b, c, d] = header;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(self.protocol(format!(
                "message '{}' has an impossible length {len}",
                tag.escape_ascii()
            )));
        }
        let want = len - 4;
        // take + read_to_end grows the buffer as bytes arrive, so a lying
        // length costs nothing until the data is really there.
        let mut body = Vec::with_capacity(want.min(64 * 1024));
        (&mut self.reader)
            .take(want as u64)
            .read_to_end(&mut body)
            .map_err(|e| PgError::io(&self.target, e))?;
        if body.len() != want {
            return Err(
                self.protocol("the server closed the connection in the middle of a message")
            );
        }
        Ok(Message { tag, body })
    }

    pub fn protocol(&self, problem: impl Into<String>) -> PgError {
        PgError::Protocol {
            target: self.target.clone(),
            problem: problem.into(),
        }
    }
}

/// A cursor over a message body; every read is bounds-checked.
pub struct Body<'a> {
    data: &'a [u8],
}

pub const SHORT: &str = "a message from the server is shorter than its contents";

impl<'a> Body<'a> {
    pub fn new(data: &'a [u8]) -> Body<'a> {
        Body { data }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.data.len() {
            return Err(SHORT);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn i16(&mut self) -> Result<i16, &'static str> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, &'static str> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(i32::from_be_bytes(a))
    }

    pub fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.bytes(1)?[0])
    }

    /// A NUL-terminated string, lossily decoded (the server's encoding is
    /// UTF-8 once we ask for it, but error texts may come before).
    pub fn cstr(&mut self) -> Result<String, &'static str> {
        let end = self.data.iter().position(|&b| b == 0).ok_or(SHORT)?;
        let s = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// ErrorResponse / NoticeResponse fields.
pub fn server_message(body: &[u8]) -> Result<ServerMessage, &'static str> {
    let mut b = Body::new(body);
    let mut m = ServerMessage::default();
    let mut localized_severity = String::new();
    loop {
        let code = b.u8()?;
        if code == 0 {
            break;
        }
        let value = b.cstr()?;
        match code {
            b'V' => m.severity = value,
            b'S' => localized_severity = value,
            b'C' => m.code = value,
            b'M' => m.message = value,
            b'D' => m.detail = Some(value),
            b'H' => m.hint = Some(value),
            _ => {}
        }
    }
    if m.severity.is_empty() {
        m.severity = localized_severity;
    }
    Ok(m)
}

/// RowDescription: the column names.
pub fn row_description(body: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut b = Body::new(body);
    let n = b.i16()?;
    let mut names = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        names.push(b.cstr()?);
        // table oid, column number, type oid, type size, modifier, format
        b.bytes(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    Ok(names)
}

/// DataRow: the values, None for NULL.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<Vec<u8>>>, &'static str> {
    let mut b = Body::new(body);
    let n = b.i16()?;
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = b.i32()?;
        values.push(if len < 0 {
            None
        } else {
            Some(b.bytes(len as usize)?.to_vec())
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_message_bodies_short_or_garbled_are_errors() {
        assert_eq!(data_row(&[0, 1, 0, 0, 0, 5, b'a']), Err(SHORT));
        assert_eq!(data_row(&[0, 1, 0xff, 0xff, 0xff, 0xff]), Ok(vec![None]));
        assert_eq!(
            data_row(&[0, 2, 0, 0, 0, 1, b'x', 0, 0, 0, 0]),
            Ok(vec![Some(b"x".to_vec()), Some(vec![])])
        );
        assert_eq!(data_row(&[0]), Err(SHORT));
        assert_eq!(row_description(&[0, 1, b'a', 0, 1]), Err(SHORT));
        assert_eq!(
            row_description(b"\0\x01id\0\0\0\0\0\0\0\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0"),
            Ok(vec!["id".to_string()])
        );
        assert_eq!(server_message(b"SERROR\0"), Err(SHORT));
        assert!(Body::new(b"abc").cstr().is_err());
    }

    #[test]
    fn pg_server_message_fields() {
        let m = server_message(b"SERREUR\0VERROR\0C42P01\0Mno such table\0Hcreate it\0\0").unwrap();
        assert_eq!(m.severity, "ERROR");
        assert_eq!(m.code, "42P01");
        assert_eq!(
            m.to_string(),
            "ERROR 42P01: no such table (HINT: create it)"
        );
        let m = server_message(b"SFATAL\0C28P01\0Mbad\0Dmore\0\0").unwrap();
        assert_eq!(m.to_string(), "FATAL 28P01: bad (DETAIL: more)");
    }
}
