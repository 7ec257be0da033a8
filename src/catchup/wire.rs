//! catchup-send/receive's connection (spec §11.3): gob messages in an lz4
//! frame stream, each direction its own frame, over one TCP connection;
//! with an encryption key the lz4 stream goes in [`super::sealed`] frames.
//! The message types are WAL-G's (`PgControlData`, `BackupFileList`,
//! `CatchupCommandDto`, `[]byte` chunks) with its type ids, so the bytes
//! equal what Go's encoder writes.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;

use super::gob::{self, Decoder, Out, Value, BOOL, BYTES, INT, STRING, UINT};
use super::sealed::{Direction, SealedReader, SealedWriter, Sniff};
use crate::codec::libsodium::SecretKey;

const CONTROL: i64 = 64;
const DESCRIPTION: i64 = 65;
const TIME: i64 = 66;
const CORRUPT: i64 = 67;
const UINT32S: i64 = 68;
const FILE_LIST: i64 = 69;
const COMMAND: i64 = 70;
const STRINGS: i64 = 71;

/// WAL-G sends file contents in chunks of at most this many bytes.
pub const CHUNK: usize = 8192;

/// Magic, FLG (version 1, independent blocks, no checksums), BD (4 MiB).
const FRAME_HEADER: [u8; 6] = [0x04, 0x22, 0x4D, 0x18, 0x60, 0x70];
const BLOCK: usize = 64 << 10;

/// An lz4 frame whose `flush` ends the current block, so the peer can
/// read everything written so far (the frame itself never ends: WAL-G's
/// does not either).
pub struct Lz4Out<W: Write> {
    w: W,
    src: Vec<u8>,
    started: bool,
}

impl<W: Write> Lz4Out<W> {
    pub fn new(w: W) -> Self {
        Lz4Out {
            w,
            src: Vec::with_capacity(BLOCK),
            started: false,
        }
    }
    fn block(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            let check = (twox_hash::XxHash32::oneshot(0, &FRAME_HEADER[4..6]) >> 8) as u8;
            self.w.write_all(&FRAME_HEADER)?;
            self.w.write_all(&[check])?;
        }
        if self.src.is_empty() {
            return Ok(());
        }
        let packed = lz4_flex::block::compress(&self.src);
        if packed.len() < self.src.len() {
            self.w.write_all(&(packed.len() as u32).to_le_bytes())?;
            self.w.write_all(&packed)?;
        } else {
            self.w
                .write_all(&(self.src.len() as u32 | 0x8000_0000).to_le_bytes())?;
            self.w.write_all(&self.src)?;
        }
        self.src.clear();
        Ok(())
    }
}

impl<W: Write> Lz4Out<W> {
    /// The pending block and the frame's end mark, then a flush.
    pub fn end(&mut self) -> io::Result<()> {
        self.block()?;
        self.w.write_all(&0u32.to_le_bytes())?;
        self.w.flush()
    }
}

impl<W: Write> Write for Lz4Out<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(BLOCK - self.src.len());
        self.src.extend_from_slice(&buf[..take]);
        if self.src.len() == BLOCK {
            self.block()?;
        }
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.block()?;
        self.w.flush()
    }
}

/// What the lz4 stream is written to: the socket, or sealed frames.
pub enum Wire {
    Plain(io::BufWriter<TcpStream>),
    Sealed(SealedWriter<io::BufWriter<TcpStream>>),
}

impl Write for Wire {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(w) => w.write(b),
            Wire::Sealed(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(w) => w.flush(),
            Wire::Sealed(w) => w.flush(),
        }
    }
}

/// What the lz4 stream is read from.
enum WireIn {
    Plain(Sniff<BufReader<TcpStream>>),
    Sealed(SealedReader<BufReader<TcpStream>>),
}

impl Read for WireIn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            WireIn::Plain(r) => r.read(b),
            WireIn::Sealed(r) => r.read(b),
        }
    }
}

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Sender,
    Receiver,
}

pub struct Conn {
    pub out: Lz4Out<Wire>,
    input: lz4_flex::frame::FrameDecoder<WireIn>,
    dec: Decoder,
    sent_types: bool,
}

impl Conn {
    pub fn new(stream: TcpStream, key: Option<&SecretKey>, side: Side) -> io::Result<Conn> {
        let read = BufReader::new(stream.try_clone()?);
        let write = io::BufWriter::new(stream);
        let (mine, theirs) = match side {
            Side::Sender => (Direction::ToReceiver, Direction::ToSender),
            Side::Receiver => (Direction::ToSender, Direction::ToReceiver),
        };
        let (out, input) = match key {
            Some(key) => (
                Wire::Sealed(SealedWriter::new(write, key, mine)),
                WireIn::Sealed(SealedReader::new(read, key, theirs)),
            ),
            None => (Wire::Plain(write), WireIn::Plain(Sniff::new(read))),
        };
        Ok(Conn {
            out: Lz4Out::new(out),
            input: lz4_flex::frame::FrameDecoder::new(input),
            dec: Decoder::default(),
            sent_types: false,
        })
    }

    /// Everything written so far on its way; with a key, the lz4 frame and
    /// the sealed stream are ended so that the peer can tell the end from a
    /// cut. (WAL-G ends neither, and its peer would not expect it.)
    pub fn finish(&mut self) -> io::Result<()> {
        if let Wire::Sealed(_) = self.out.w {
            self.out.end()?;
            if let Wire::Sealed(w) = &mut self.out.w {
                return w.finish();
            }
        }
        self.out.flush()
    }

    /// With a key: the peer's stream ends here with its end mark (an
    /// error when it was cut). Without a key there is no end mark.
    pub fn expect_end(&mut self) -> io::Result<()> {
        if let WireIn::Sealed(_) = self.input.get_ref() {
            let mut rest = Vec::new();
            (&mut self.input).take(1 << 20).read_to_end(&mut rest)?;
            // The lz4 frame may end at its end mark, before the FINAL
            // frame is read: read the sealed stream itself to FINAL too,
            // so that nothing is left unread (closing with unread data
            // resets the connection, which can cost the peer its last
            // frames).
            if let WireIn::Sealed(sealed) = self.input.get_mut() {
                sealed.take(1 << 20).read_to_end(&mut rest)?;
            }
            if !rest.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} bytes follow the peer's last message", rest.len()),
                ));
            }
        }
        Ok(())
    }

    pub fn recv(&mut self) -> io::Result<Value> {
        self.dec.decode(&mut self.input)
    }

    /// Lets the peer's struct and map messages (the file list, a delete
    /// command) be up to [`gob::MAX_LIST_MESSAGE`] bytes.
    pub fn allow_lists(&mut self) {
        self.dec.allow_lists();
    }

    /// The next message, a map, entry by entry.
    pub fn recv_map(&mut self, f: impl FnMut(Value, Value) -> io::Result<()>) -> io::Result<()> {
        self.dec.decode_map(&mut self.input, f)
    }

    /// One `[]byte` chunk of a file.
    pub fn recv_chunk(&mut self) -> io::Result<Vec<u8>> {
        match self.recv()? {
            Value::Bytes(b) => Ok(b),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a file chunk, got {}", other.kind()),
            )),
        }
    }

    pub fn send_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        chunk(&mut self.out, data)
    }

    pub fn send_command(&mut self, cmd: &Command) -> io::Result<()> {
        if !self.sent_types {
            self.sent_types = true;
            define_command(&mut self.out)?;
        }
        command(&mut self.out, cmd)
    }
}

pub fn chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut o = Out::default();
    o.int(BYTES).uint(0).bytes(data);
    o.send(w)
}

pub fn control(
    w: &mut impl Write,
    system_identifier: u64,
    timeline: u32,
    checkpoint: u64,
) -> io::Result<()> {
    gob::define_struct(
        w,
        CONTROL,
        "PgControlData",
        &[
            ("SystemIdentifier", UINT),
            ("CurrentTimeline", UINT),
            ("Checkpoint", UINT),
        ],
    )?;
    let mut o = Out::default();
    o.int(CONTROL).begin();
    for (i, v) in [system_identifier, timeline as u64, checkpoint]
        .into_iter()
        .enumerate()
    {
        if v != 0 {
            o.field(i as i64).uint(v);
        }
    }
    o.end().send(w)
}

/// `BackupFileList`: relative path → modification time (seconds, nanos).
pub fn file_list(w: &mut impl Write, files: &[(String, i64, u32)]) -> io::Result<()> {
    gob::define_map(w, FILE_LIST, "BackupFileList", STRING, DESCRIPTION)?;
    gob::define_struct(
        w,
        DESCRIPTION,
        "",
        &[
            ("IsIncremented", BOOL),
            ("IsSkipped", BOOL),
            ("MTime", TIME),
            ("CorruptBlocks", CORRUPT),
            ("UpdatesCount", UINT),
        ],
    )?;
    gob::define_gob_encoder(w, TIME, "Time")?;
    gob::define_struct(
        w,
        CORRUPT,
        "CorruptBlocksInfo",
        &[("CorruptBlocksCount", INT), ("SomeCorruptBlocks", UINT32S)],
    )?;
    gob::define_slice(w, UINT32S, "[]uint32", UINT)?;
    let mut o = Out::default();
    o.int(FILE_LIST).uint(0).uint(files.len() as u64);
    for (name, secs, nanos) in files {
        o.bytes(name.as_bytes())
            .begin()
            .field(2)
            .bytes(&gob::encode_time(*secs, *nanos))
            .end();
    }
    o.send(w)
}

#[derive(Default, Clone, PartialEq)]
pub struct Command {
    pub is_done: bool,
    pub is_incremental: bool,
    pub is_full: bool,
    pub is_delete: bool,
    pub is_bin_contents: bool,
    pub file_size: u64,
    pub file_name: String,
    pub binary_contents: Vec<u8>,
    pub files_to_delete: Vec<String>,
}

/// Names and sizes only: contents come from the peer and can be large.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Command {
    /// What the command says, for messages (never its contents).
    pub fn describe(&self) -> String {
        let flags: Vec<&str> = [
            (self.is_done, "IsDone"),
            (self.is_incremental, "IsIncremental"),
            (self.is_full, "IsFull"),
            (self.is_delete, "IsDelete"),
            (self.is_bin_contents, "IsBinContents"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        format!(
            "flags [{}], FileName '{}', FileSize {}, {} bytes of BinaryContents, {} FilesToDelete",
            flags.join(" "),
            self.file_name.escape_debug(),
            self.file_size,
            self.binary_contents.len(),
            self.files_to_delete.len()
        )
    }

    pub fn from_value(mut v: Value) -> io::Result<Command> {
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"))
        };
        if !matches!(v, Value::Struct(_)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a CatchupCommandDto, got {}", v.kind()),
            ));
        }
        let mut files_to_delete = Vec::new();
        if let Value::Struct(fields) = &mut v {
            if let Some((_, Value::List(l))) = fields.iter_mut().find(|(n, _)| n == "FilesToDelete")
            {
                for f in std::mem::take(l) {
                    if let Value::Bytes(b) = f {
                        files_to_delete.push(String::from_utf8(b).map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8")
                        })?);
                    }
                }
            }
        }
        let binary_contents = v.take_bytes("BinaryContents");
        Ok(Command {
            is_done: v.flag("IsDone"),
            is_incremental: v.flag("IsIncremental"),
            is_full: v.flag("IsFull"),
            is_delete: v.flag("IsDelete"),
            is_bin_contents: v.flag("IsBinContents"),
            file_size: v.uint("FileSize"),
            file_name: text(v.bytes("FileName"))?,
            binary_contents,
            files_to_delete,
        })
    }
}

fn define_command(w: &mut impl Write) -> io::Result<()> {
    gob::define_struct(
        w,
        COMMAND,
        "CatchupCommandDto",
        &[
            ("IsDone", BOOL),
            ("IsIncremental", BOOL),
            ("IsFull", BOOL),
            ("IsDelete", BOOL),
            ("IsBinContents", BOOL),
            ("FileSize", UINT),
            ("FileName", STRING),
            ("BinaryContents", BYTES),
            ("FilesToDelete", STRINGS),
        ],
    )?;
    gob::define_slice(w, STRINGS, "[]string", STRING)
}

fn command(w: &mut impl Write, c: &Command) -> io::Result<()> {
    let mut o = Out::default();
    o.int(COMMAND).begin();
    let flags = [
        c.is_done,
        c.is_incremental,
        c.is_full,
        c.is_delete,
        c.is_bin_contents,
    ];
    for (i, f) in flags.into_iter().enumerate() {
        if f {
            o.field(i as i64).uint(1);
        }
    }
    if c.file_size != 0 {
        o.field(5).uint(c.file_size);
    }
    if !c.file_name.is_empty() {
        o.field(6).bytes(c.file_name.as_bytes());
    }
    if !c.binary_contents.is_empty() {
        o.field(7).bytes(&c.binary_contents);
    }
    if !c.files_to_delete.is_empty() {
        o.field(8).uint(c.files_to_delete.len() as u64);
        for f in &c.files_to_delete {
            o.bytes(f.as_bytes());
        }
    }
    o.end().send(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Printed by Go 1.26 encoding/gob for WAL-G's types (one encoder).
    #[test]
    fn bytes_equal_go_s() {
        let mut w = Vec::new();
        control(&mut w, 7301234567890123456, 1, 0x5000028).unwrap();
        assert_eq!(hex(&w), "527f0301010d5067436f6e74726f6c4461746101ff80000103011053797374656d4964656e746966696572010600010f43757272656e7454696d656c696e65010600010a436865636b706f696e74010600000015ff8001f865533227e8e4bac0010101fc0500002800");
        let mut w = Vec::new();
        define_command(&mut w).unwrap();
        command(
            &mut w,
            &Command {
                file_name: "base/1/2".into(),
                is_full: true,
                file_size: 3,
                ..Default::default()
            },
        )
        .unwrap();
        chunk(&mut w, &[1, 2, 3]).unwrap();
        command(
            &mut w,
            &Command {
                is_delete: true,
                files_to_delete: vec!["a".into(), "bc".into()],
                ..Default::default()
            },
        )
        .unwrap();
        command(
            &mut w,
            &Command {
                binary_contents: b"x".to_vec(),
                file_name: "backup_label".into(),
                is_bin_contents: true,
                ..Default::default()
            },
        )
        .unwrap();
        command(
            &mut w,
            &Command {
                is_done: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(hex(&w), concat!(
            "ffa6ff8b0301011143617463687570436f6d6d616e6444746f01ff8c00010901064973446f6e65010200010d4973496e6372656d656e74616c0102000106497346756c6c0102000108497344656c657465010200010d497342696e436f6e74656e7473010200010846696c6553697a65010600010846696c654e616d65010c00010e42696e617279436f6e74656e7473010a00010d46696c6573546f44656c65746501ff8e00000016ff8d020101085b5d737472696e6701ff8e00010c000011ff8c030103030108626173652f312f3200",
            "060a0003010203",
            "0cff8c04010502016102626300",
            "16ff8c0501020c6261636b75705f6c6162656c01017800",
            "05ff8c010100"));
    }

    #[test]
    fn file_list_equals_go_s_but_the_zone() {
        let mut w = Vec::new();
        file_list(&mut w, &[("base/1/1259".into(), 1700000000, 123456789)]).unwrap();
        // Go's vector for this one-entry list, the time in UTC (zone ffff).
        assert_eq!(hex(&w), "1fff890401010e4261636b757046696c654c69737401ff8a00010c01ff8200005bff81030102ff82000105010d4973496e6372656d656e74656401020001094973536b697070656401020001054d54696d6501ff8400010d436f7272757074426c6f636b7301ff8600010c55706461746573436f756e74010600000010ff830501010454696d6501ff840000004dff8503010111436f7272757074426c6f636b73496e666f01ff860001020112436f7272757074426c6f636b73436f756e740104000111536f6d65436f7272757074426c6f636b7301ff8800000016ff87020101085b5d75696e74333201ff88000106000022ff8a00010b626173652f312f31323539030f010000000edce5e800075bcd15ffff00");
        let mut d = Decoder::default();
        let Value::Map(m) = d.decode(&mut &w[..]).unwrap() else {
            panic!()
        };
        assert_eq!(
            gob::decode_time(m[0].1.bytes("MTime")),
            Some((1700000000, 123456789))
        );
    }
}
