//! The subset of Go's `encoding/gob` stream format that WAL-G's
//! catchup-send/receive speak (spec §11.3): unsigned/signed integers,
//! bools, strings, byte slices, structs, slices, maps and GobEncoder
//! values (`time.Time`). Decoding is generic — the type definitions the
//! peer sends first are read into a table and values are decoded into a
//! [`Value`] tree — so field order or extra fields on the peer's side do
//! not matter; encoding writes WAL-G's own type definitions.

use std::collections::HashMap;
use std::io::{self, Read, Write};

/// Largest message accepted from a peer: WAL-G's commands, `[]byte`
/// chunks (8 KiB) and `global/pg_control` (8 KiB) are far smaller; a
/// longer message is a corrupt or hostile stream.
pub const MAX_MESSAGE: u64 = 4 << 20;
/// Largest message of a struct or map type where the caller allows lists
/// ([`Decoder::allow_lists`]): the standby's file list (measured: ~40
/// bytes a file in `base/`, 66 with long tablespace names, so 1M files
/// take 40-66 MB) and a delete command naming every file of a dropped
/// database (about 26 bytes a name).
pub const MAX_LIST_MESSAGE: u64 = 80 << 20;
/// A type definition: WAL-G's largest (CatchupCommandDto) takes 170 bytes.
const MAX_TYPE_MESSAGE: u64 = 64 << 10;
/// Type ids a stream may define (WAL-G's streams define 8).
const MAX_TYPES: usize = 64;
/// Fields of one struct type (WAL-G's largest has 9).
const MAX_FIELDS: u64 = 256;

#[derive(Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Bool(bool),
    /// Strings and byte slices (and GobEncoder payloads).
    Bytes(Vec<u8>),
    Struct(Vec<(String, Value)>),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

/// A peer's value is never printed: only its kind and size (a value can
/// be megabytes, and printing it costs ~13 bytes of log per byte).
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind())
    }
}

impl Value {
    /// What the value is, for messages: its kind and size, not its bytes.
    pub fn kind(&self) -> String {
        match self {
            Value::Uint(_) => "an unsigned integer".into(),
            Value::Int(_) => "an integer".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Bytes(b) => format!("a byte string of {} bytes", b.len()),
            Value::Struct(f) => format!("a struct with {} fields set", f.len()),
            Value::List(l) => format!("a list of {} values", l.len()),
            Value::Map(m) => format!("a map of {} entries", m.len()),
        }
    }
    /// Takes a byte field out of a struct (no copy).
    pub fn take_bytes(&mut self, name: &str) -> Vec<u8> {
        match self {
            Value::Struct(fields) => match fields.iter_mut().find(|(n, _)| n == name) {
                Some((_, Value::Bytes(b))) => std::mem::take(b),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
    /// Zero values are not sent by gob: a missing field reads as zero.
    pub fn uint(&self, name: &str) -> u64 {
        match self.field(name) {
            Some(Value::Uint(u)) => *u,
            Some(Value::Int(i)) => *i as u64,
            _ => 0,
        }
    }
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.field(name), Some(Value::Bool(true)))
    }
    pub fn bytes(&self, name: &str) -> &[u8] {
        match self.field(name) {
            Some(Value::Bytes(b)) => b,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone)]
enum WireType {
    Slice(i64),
    Array(i64),
    Struct(Vec<(String, i64)>),
    Map(i64, i64),
    /// GobEncoder / BinaryMarshaler / TextMarshaler: opaque bytes.
    Opaque,
}

const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_FLOAT: i64 = 4;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_COMPLEX: i64 = 7;

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gob: {}", what.into()))
}

/// A cursor over one message's bytes.
struct Buf<'a> {
    b: &'a [u8],
}

impl<'a> Buf<'a> {
    fn byte(&mut self) -> io::Result<u8> {
        let (&first, rest) = self
            .b
            .split_first()
            .ok_or_else(|| bad("message too short"))?;
        self.b = rest;
        Ok(first)
    }
    fn uint(&mut self) -> io::Result<u64> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(first as u64);
        }
        let n = (!first).wrapping_add(1) as usize;
        if n > 8 {
            return Err(bad("integer longer than 8 bytes"));
        }
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | self.byte()? as u64;
        }
        Ok(v)
    }
    fn int(&mut self) -> io::Result<i64> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !((u >> 1) as i64)
        } else {
            (u >> 1) as i64
        })
    }
    fn left(&self) -> u64 {
        self.b.len() as u64
    }
    fn take(&mut self, n: u64) -> io::Result<&'a [u8]> {
        if n > self.b.len() as u64 {
            return Err(bad("length beyond the message"));
        }
        let (head, rest) = self.b.split_at(n as usize);
        self.b = rest;
        Ok(head)
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.uint()?;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> io::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("string is not UTF-8"))
    }
    /// A struct's fields as (index, cursor positioned on the value); the
    /// callback must consume the value.
    fn fields(&mut self, mut f: impl FnMut(&mut Self, u64) -> io::Result<()>) -> io::Result<()> {
        let mut index: i64 = -1;
        loop {
            let delta = self.uint()?;
            if delta == 0 {
                return Ok(());
            }
            index += delta as i64;
            f(self, index as u64)?;
        }
    }
    fn common_id(&mut self) -> io::Result<i64> {
        let mut id = 0;
        self.fields(|b, i| {
            match i {
                0 => drop(b.string()?),
                1 => id = b.int()?,
                _ => return Err(bad("unknown CommonType field")),
            }
            Ok(())
        })?;
        Ok(id)
    }
}

/// What a message may expand to as a [`Value`] tree: four times its
/// bytes (a name list costs ~2-3x: a 32-byte node per name) plus 1 MiB.
/// A list of one-byte elements would cost 32x without it.
fn budget_for(len: u64) -> u64 {
    len.saturating_mul(4).saturating_add(1 << 20)
}

const NODE: u64 = std::mem::size_of::<Value>() as u64;

/// Charges `cost` bytes of decoded tree against what is left.
fn charge(left: &mut u64, cost: u64) -> io::Result<()> {
    *left = left.checked_sub(cost).ok_or_else(|| {
        bad("the message expands to more memory than its size allows (a hostile or corrupt stream)")
    })?;
    Ok(())
}

pub struct Decoder {
    types: HashMap<i64, WireType>,
    /// Largest message of a struct or map type.
    list_cap: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            types: HashMap::new(),
            list_cap: MAX_MESSAGE,
        }
    }
}

impl Decoder {
    /// Messages of a struct or map type may take up to
    /// [`MAX_LIST_MESSAGE`] bytes (others stay within [`MAX_MESSAGE`]).
    pub fn allow_lists(&mut self) {
        self.list_cap = MAX_LIST_MESSAGE;
    }

    /// The next message of a value, type definitions before it read and
    /// remembered.
    fn next_value_message(&mut self, r: &mut impl Read) -> io::Result<Vec<u8>> {
        loop {
            let n = read_uint(r)?;
            let cap = self.list_cap.max(MAX_MESSAGE);
            if n > cap {
                return Err(bad(format!(
                    "a message of {n} bytes, more than the {cap} bytes allowed"
                )));
            }
            // Grows as bytes arrive: a length alone allocates nothing.
            let mut bytes = Vec::new();
            r.take(n).read_to_end(&mut bytes)?;
            if (bytes.len() as u64) < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("gob: the stream ended inside a message of {n} bytes"),
                ));
            }
            let mut b = Buf { b: &bytes };
            let id = b.int()?;
            if id < 0 {
                if n > MAX_TYPE_MESSAGE {
                    return Err(bad(format!("a type definition of {n} bytes")));
                }
                let t = wire_type(&mut b)?;
                let id = id
                    .checked_neg()
                    .ok_or_else(|| bad("type id out of range"))?;
                if !self.types.contains_key(&id) && self.types.len() >= MAX_TYPES {
                    return Err(bad(format!(
                        "more than {MAX_TYPES} type definitions (a hostile or corrupt stream)"
                    )));
                }
                self.types.insert(id, t);
                continue;
            }
            let listy = matches!(
                self.types.get(&id),
                Some(WireType::Struct(_)) | Some(WireType::Map(..))
            );
            if n > MAX_MESSAGE && !listy {
                return Err(bad(format!(
                    "a message of {n} bytes, more than the {MAX_MESSAGE} bytes allowed"
                )));
            }
            return Ok(bytes);
        }
    }

    /// The next value, reading (and remembering) type definitions before it.
    pub fn decode(&mut self, r: &mut impl Read) -> io::Result<Value> {
        let msg = self.next_value_message(r)?;
        let mut left = budget_for(msg.len() as u64);
        let mut b = Buf { b: &msg };
        let id = b.int()?;
        if !matches!(self.types.get(&id), Some(WireType::Struct(_))) && b.uint()? != 0 {
            return Err(bad("a non-struct value without its zero field delta"));
        }
        self.value(&mut b, id, 0, &mut left)
    }

    /// The next value, which must be a map, given to `f` entry by entry
    /// (the map is never held as a whole). Each entry may expand to
    /// [`budget_for`] its own bytes.
    pub fn decode_map(
        &mut self,
        r: &mut impl Read,
        mut f: impl FnMut(Value, Value) -> io::Result<()>,
    ) -> io::Result<()> {
        let msg = self.next_value_message(r)?;
        let mut b = Buf { b: &msg };
        let id = b.int()?;
        let Some(WireType::Map(k, e)) = self.types.get(&id).cloned() else {
            return Err(bad(format!(
                "expected a map, got a value of type {}",
                self.type_name(id)
            )));
        };
        if b.uint()? != 0 {
            return Err(bad("a non-struct value without its zero field delta"));
        }
        let n = b.uint()?;
        // Each entry takes at least two bytes (key and value).
        if n > b.left() / 2 {
            return Err(bad(format!("a map of {n} entries in a shorter message")));
        }
        for _ in 0..n {
            let before = b.left();
            let mut left = budget_for(before);
            let key = self.value(&mut b, k, 1, &mut left)?;
            let value = self.value(&mut b, e, 1, &mut left)?;
            f(key, value)?;
        }
        Ok(())
    }

    fn type_name(&self, id: i64) -> &'static str {
        match (id, self.types.get(&id)) {
            (T_BOOL, _) => "bool",
            (T_INT, _) => "int",
            (T_UINT, _) => "uint",
            (T_FLOAT, _) => "float",
            (T_BYTES, _) => "[]byte",
            (T_STRING, _) => "string",
            (T_COMPLEX, _) => "complex",
            (_, Some(WireType::Slice(_))) => "slice",
            (_, Some(WireType::Array(_))) => "array",
            (_, Some(WireType::Struct(_))) => "struct",
            (_, Some(WireType::Map(..))) => "map",
            (_, Some(WireType::Opaque)) => "encoded value",
            (_, None) => "undefined",
        }
    }

    fn value(&self, b: &mut Buf, id: i64, depth: u32, left: &mut u64) -> io::Result<Value> {
        if depth > 32 {
            return Err(bad("values nested too deeply"));
        }
        charge(left, NODE)?;
        match id {
            T_BOOL => Value::Bool(b.uint()? != 0),
            T_INT => Value::Int(b.int()?),
            T_UINT | T_FLOAT => Value::Uint(b.uint()?),
            T_BYTES | T_STRING => Value::Bytes(b.bytes()?),
            T_COMPLEX => {
                b.uint()?;
                Value::Uint(b.uint()?)
            }
            _ => match self.types.get(&id) {
                None => return Err(bad(format!("type {id} used before its definition"))),
                Some(WireType::Opaque) => Value::Bytes(b.bytes()?),
                Some(WireType::Slice(e)) | Some(WireType::Array(e)) => {
                    let n = b.uint()?;
                    // Each element takes at least one byte.
                    if n > b.left() {
                        return Err(bad(format!("a list of {n} elements in a shorter message")));
                    }
                    charge(left, n * NODE)?;
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.value(b, *e, depth + 1, left)?);
                    }
                    Value::List(v)
                }
                Some(WireType::Map(k, e)) => {
                    let n = b.uint()?;
                    if n > b.left() / 2 {
                        return Err(bad(format!("a map of {n} entries in a shorter message")));
                    }
                    charge(left, n * 2 * NODE)?;
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let key = self.value(b, *k, depth + 1, left)?;
                        v.push((key, self.value(b, *e, depth + 1, left)?));
                    }
                    Value::Map(v)
                }
                Some(WireType::Struct(fields)) => {
                    let mut v = Vec::new();
                    b.fields(|b, i| {
                        let (name, t) = fields
                            .get(i as usize)
                            .ok_or_else(|| bad("field number out of range"))?;
                        charge(left, name.len() as u64 + 24)?;
                        v.push((name.clone(), self.value(b, *t, depth + 1, left)?));
                        Ok(())
                    })?;
                    Value::Struct(v)
                }
            },
        }
        .charged(left)
    }
}

impl Value {
    /// Charges a decoded value's payload bytes.
    fn charged(self, left: &mut u64) -> io::Result<Value> {
        if let Value::Bytes(b) = &self {
            charge(left, b.len() as u64)?;
        }
        Ok(self)
    }
}

/// `wireType{ArrayT, SliceT, StructT, MapT, GobEncoderT, BinaryMarshalerT, TextMarshalerT}`.
fn wire_type(b: &mut Buf) -> io::Result<WireType> {
    let mut out = None;
    b.fields(|b, i| {
        let t;
        match i {
            0 => {
                let (mut elem, mut _len) = (0, 0);
                b.fields(|b, j| {
                    match j {
                        0 => drop(b.common_id()?),
                        1 => elem = b.int()?,
                        2 => _len = b.int()?,
                        _ => return Err(bad("unknown arrayType field")),
                    }
                    Ok(())
                })?;
                t = Some(WireType::Array(elem));
            }
            1 => {
                let mut elem = 0;
                b.fields(|b, j| {
                    match j {
                        0 => drop(b.common_id()?),
                        1 => elem = b.int()?,
                        _ => return Err(bad("unknown sliceType field")),
                    }
                    Ok(())
                })?;
                t = Some(WireType::Slice(elem));
            }
            2 => {
                let mut fields = Vec::new();
                b.fields(|b, j| {
                    match j {
                        0 => drop(b.common_id()?),
                        1 => {
                            let n = b.uint()?;
                            if n > MAX_FIELDS || n > b.left() {
                                return Err(bad(format!("a struct type of {n} fields")));
                            }
                            for _ in 0..n {
                                let (mut name, mut id) = (String::new(), 0);
                                b.fields(|b, k| {
                                    match k {
                                        0 => name = b.string()?,
                                        1 => id = b.int()?,
                                        _ => return Err(bad("unknown fieldType field")),
                                    }
                                    Ok(())
                                })?;
                                fields.push((name, id));
                            }
                        }
                        _ => return Err(bad("unknown structType field")),
                    }
                    Ok(())
                })?;
                t = Some(WireType::Struct(fields));
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                b.fields(|b, j| {
                    match j {
                        0 => drop(b.common_id()?),
                        1 => key = b.int()?,
                        2 => elem = b.int()?,
                        _ => return Err(bad("unknown mapType field")),
                    }
                    Ok(())
                })?;
                t = Some(WireType::Map(key, elem));
            }
            4..=6 => {
                b.common_id_struct()?;
                t = Some(WireType::Opaque);
            }
            _ => return Err(bad("unknown wireType field")),
        }
        out = t;
        Ok(())
    })?;
    out.ok_or_else(|| bad("empty type definition"))
}

impl Buf<'_> {
    /// `gobEncoderType{CommonType}`.
    fn common_id_struct(&mut self) -> io::Result<()> {
        self.fields(|b, j| match j {
            0 => b.common_id().map(drop),
            _ => Err(bad("unknown gobEncoderType field")),
        })
    }
}

fn read_uint(r: &mut impl Read) -> io::Result<u64> {
    let mut first = [0u8];
    r.read_exact(&mut first)?;
    if first[0] < 0x80 {
        return Ok(first[0] as u64);
    }
    let n = (!first[0]).wrapping_add(1) as usize;
    if n > 8 {
        return Err(bad("integer longer than 8 bytes"));
    }
    let mut rest = [0u8; 8];
    r.read_exact(&mut rest[..n])?;
    Ok(rest[..n].iter().fold(0, |v, &x| (v << 8) | x as u64))
}

/// Builds one message's bytes.
#[derive(Default)]
pub struct Out {
    b: Vec<u8>,
    last: Vec<i64>,
}

impl Out {
    pub fn uint(&mut self, v: u64) -> &mut Self {
        if v < 0x80 {
            self.b.push(v as u8);
        } else {
            let bytes = v.to_be_bytes();
            let skip = (v.leading_zeros() / 8) as usize;
            self.b.push((0u8).wrapping_sub((8 - skip) as u8));
            self.b.extend_from_slice(&bytes[skip..]);
        }
        self
    }
    pub fn int(&mut self, v: i64) -> &mut Self {
        let u = if v < 0 {
            ((!v as u64) << 1) | 1
        } else {
            (v as u64) << 1
        };
        self.uint(u)
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.uint(v.len() as u64);
        self.b.extend_from_slice(v);
        self
    }
    /// Opens a struct: fields follow as `field(i)` + value, then `end()`.
    pub fn begin(&mut self) -> &mut Self {
        self.last.push(-1);
        self
    }
    pub fn field(&mut self, index: i64) -> &mut Self {
        let last = self.last.last_mut().expect("field outside a struct");
        let delta = (index - *last) as u64;
        *last = index;
        self.uint(delta)
    }
    pub fn end(&mut self) -> &mut Self {
        self.last.pop();
        self.uint(0)
    }

    /// Writes the message (length prefix, then the bytes) and resets.
    pub fn send(&mut self, w: &mut impl Write) -> io::Result<()> {
        let mut head = Out::default();
        head.uint(self.b.len() as u64);
        w.write_all(&head.b)?;
        w.write_all(&self.b)?;
        self.b.clear();
        Ok(())
    }
}

/// Field kinds for type definitions.
pub const BOOL: i64 = T_BOOL;
pub const INT: i64 = T_INT;
pub const UINT: i64 = T_UINT;
pub const BYTES: i64 = T_BYTES;
pub const STRING: i64 = T_STRING;

fn common(o: &mut Out, name: &str, id: i64) {
    o.field(0).begin();
    if !name.is_empty() {
        o.field(0).bytes(name.as_bytes());
    }
    o.field(1).int(id).end();
}

/// Sends the definition of struct type `id`.
pub fn define_struct(
    w: &mut impl Write,
    id: i64,
    name: &str,
    fields: &[(&str, i64)],
) -> io::Result<()> {
    let mut o = Out::default();
    o.int(-id).begin().field(2).begin();
    common(&mut o, name, id);
    o.field(1).uint(fields.len() as u64);
    for (n, t) in fields {
        o.begin()
            .field(0)
            .bytes(n.as_bytes())
            .field(1)
            .int(*t)
            .end();
    }
    o.end().end();
    o.send(w)
}

pub fn define_slice(w: &mut impl Write, id: i64, name: &str, elem: i64) -> io::Result<()> {
    let mut o = Out::default();
    o.int(-id).begin().field(1).begin();
    common(&mut o, name, id);
    o.field(1).int(elem).end().end();
    o.send(w)
}

pub fn define_map(w: &mut impl Write, id: i64, name: &str, key: i64, elem: i64) -> io::Result<()> {
    let mut o = Out::default();
    o.int(-id).begin().field(3).begin();
    common(&mut o, name, id);
    o.field(1).int(key).field(2).int(elem).end().end();
    o.send(w)
}

pub fn define_gob_encoder(w: &mut impl Write, id: i64, name: &str) -> io::Result<()> {
    let mut o = Out::default();
    o.int(-id).begin().field(4).begin();
    common(&mut o, name, id);
    o.end().end();
    o.send(w)
}

/// Go's `time.Time` GobEncode (version 1, UTC): seconds since year 1,
/// nanoseconds, zone offset −1 (UTC).
pub fn encode_time(unix_secs: i64, nanos: u32) -> [u8; 15] {
    let mut t = [0u8; 15];
    t[0] = 1;
    t[1..9].copy_from_slice(&(unix_secs + UNIX_TO_INTERNAL).to_be_bytes());
    t[9..13].copy_from_slice(&(nanos as i32).to_be_bytes());
    t[13..15].copy_from_slice(&(-1i16).to_be_bytes());
    t
}

/// The instant of a `time.Time` GobEncode payload (versions 1 and 2).
pub fn decode_time(b: &[u8]) -> Option<(i64, u32)> {
    if b.len() < 15 || !(b[0] == 1 || b[0] == 2) {
        return None;
    }
    let secs = i64::from_be_bytes(b[1..9].try_into().ok()?) - UNIX_TO_INTERNAL;
    let nanos = i32::from_be_bytes(b[9..13].try_into().ok()?);
    Some((secs, u32::try_from(nanos).ok()?))
}

/// Seconds from 0001-01-01 to 1970-01-01 (Go's `unixToInternal`).
const UNIX_TO_INTERNAL: i64 = 62_135_596_800;

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Vectors printed by Go 1.26 encoding/gob for WAL-G's types (one
    // encoder, in this order).
    const CONTROL: &str = "527f0301010d5067436f6e74726f6c4461746101ff80000103011053797374656d4964656e746966696572010600010f43757272656e7454696d656c696e65010600010a436865636b706f696e74010600000015ff8001f865533227e8e4bac0010101fc0500002800";
    const LIST: &str = "1fff890401010e4261636b757046696c654c69737401ff8a00010c01ff8200005bff81030102ff82000105010d4973496e6372656d656e74656401020001094973536b697070656401020001054d54696d6501ff8400010d436f7272757074426c6f636b7301ff8600010c55706461746573436f756e74010600000010ff830501010454696d6501ff840000004dff8503010111436f7272757074426c6f636b73496e666f01ff860001020112436f7272757074426c6f636b73436f756e740104000111536f6d65436f7272757074426c6f636b7301ff8800000016ff87020101085b5d75696e74333201ff8800010600003fff8a00020b626173652f312f31323539030f010000000edce5e800075bcd150000000a50475f56455253494f4e030f010000000edce5e80100000005000000";
    const CMD_FULL: &str = "ffa6ff8b0301011143617463687570436f6d6d616e6444746f01ff8c00010901064973446f6e65010200010d4973496e6372656d656e74616c0102000106497346756c6c0102000108497344656c657465010200010d497342696e436f6e74656e7473010200010846696c6553697a65010600010846696c654e616d65010c00010e42696e617279436f6e74656e7473010a00010d46696c6573546f44656c65746501ff8e00000016ff8d020101085b5d737472696e6701ff8e00010c000011ff8c030103030108626173652f312f3200";
    const CHUNK: &str = "060a0003010203";
    const CMD_DEL: &str = "0cff8c04010502016102626300";
    const CMD_BIN: &str = "16ff8c0501020c6261636b75705f6c6162656c01017800";
    const CMD_DONE: &str = "05ff8c010100";

    #[test]
    fn decodes_go_vectors() {
        let all = [CONTROL, LIST, CMD_FULL, CHUNK, CMD_DEL, CMD_BIN, CMD_DONE].concat();
        let bytes = hex(&all);
        let mut r = &bytes[..];
        let mut d = Decoder::default();
        let c = d.decode(&mut r).unwrap();
        assert_eq!(c.uint("SystemIdentifier"), 7301234567890123456);
        assert_eq!(c.uint("CurrentTimeline"), 1);
        assert_eq!(c.uint("Checkpoint"), 0x5000028);
        let Value::Map(list) = d.decode(&mut r).unwrap() else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, Value::Bytes(b"base/1/1259".to_vec()));
        assert_eq!(
            decode_time(list[0].1.bytes("MTime")),
            Some((1700000000, 123456789))
        );
        assert_eq!(decode_time(list[1].1.bytes("MTime")), Some((1700000001, 5)));
        let full = d.decode(&mut r).unwrap();
        assert!(full.flag("IsFull") && !full.flag("IsDone"));
        assert_eq!(full.bytes("FileName"), b"base/1/2");
        assert_eq!(full.uint("FileSize"), 3);
        assert_eq!(d.decode(&mut r).unwrap(), Value::Bytes(vec![1, 2, 3]));
        let del = d.decode(&mut r).unwrap();
        assert!(del.flag("IsDelete"));
        assert_eq!(
            del.field("FilesToDelete"),
            Some(&Value::List(vec![
                Value::Bytes(b"a".to_vec()),
                Value::Bytes(b"bc".to_vec())
            ]))
        );
        let bin = d.decode(&mut r).unwrap();
        assert!(bin.flag("IsBinContents"));
        assert_eq!(bin.bytes("BinaryContents"), b"x");
        assert!(d.decode(&mut r).unwrap().flag("IsDone"));
        assert!(r.is_empty());
        assert!(d.decode(&mut r).is_err());
    }

    #[test]
    fn time_payloads_are_go_s() {
        assert_eq!(
            decode_time(&hex("010000000edce5e800075bcd150000")),
            Some((1700000000, 123456789))
        );
        let t = encode_time(1700000000, 123456789);
        assert_eq!(decode_time(&t), Some((1700000000, 123456789)));
        assert_eq!(&t[..13], &hex("010000000edce5e800075bcd15")[..]);
    }

    /// One message of `[]bool` (type 72) with `n` false elements.
    fn bools(n: u64) -> Vec<u8> {
        let mut w = Vec::new();
        define_slice(&mut w, 72, "[]bool", BOOL).unwrap();
        let mut o = Out::default();
        o.int(72).uint(0).uint(n);
        o.b.resize(o.b.len() + n as usize, 0);
        o.send(&mut w).unwrap();
        w
    }

    fn err(bytes: &[u8], d: &mut Decoder) -> String {
        d.decode(&mut &bytes[..]).unwrap_err().to_string()
    }

    #[test]
    fn a_long_message_is_refused_before_it_arrives() {
        // 1 GiB announced, 3 bytes sent: refused at once, nothing allocated.
        let mut o = Out::default();
        o.uint(1 << 30);
        o.b.extend_from_slice(&[1, 2, 3]);
        let e = err(&o.b, &mut Decoder::default());
        assert!(
            e.contains("a message of 1073741824 bytes, more than the 4194304 bytes allowed"),
            "{e}"
        );
        // Within the cap but cut: an EOF, after only the bytes that came.
        let mut o = Out::default();
        o.uint(1 << 20);
        o.b.extend_from_slice(&[1, 2, 3]);
        let e = Decoder::default().decode(&mut &o.b[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // Lists allowed: structs and maps may be longer, nothing else.
        let mut d = Decoder::default();
        d.allow_lists();
        let e = err(&bools(5 << 20), &mut d);
        assert!(e.contains("more than the 4194304 bytes allowed"), "{e}");
    }

    #[test]
    fn elements_cannot_expand_a_message_beyond_its_budget() {
        // 100 bools: fine.
        let Value::List(l) = Decoder::default().decode(&mut &bools(100)[..]).unwrap() else {
            panic!()
        };
        assert_eq!(l.len(), 100);
        // 3M one-byte bools would take 96 MB as values: refused before.
        let e = err(&bools(3 << 20), &mut Decoder::default());
        assert!(
            e.contains("expands to more memory than its size allows"),
            "{e}"
        );
        // More elements than bytes left.
        let mut w = Vec::new();
        define_slice(&mut w, 72, "[]bool", BOOL).unwrap();
        let mut o = Out::default();
        o.int(72).uint(0).uint(1 << 40).uint(0);
        o.send(&mut w).unwrap();
        let e = err(&w, &mut Decoder::default());
        assert!(
            e.contains("a list of 1099511627776 elements in a shorter message"),
            "{e}"
        );
        // A map likewise.
        let mut w = Vec::new();
        define_map(&mut w, 73, "m", STRING, STRING).unwrap();
        let mut o = Out::default();
        o.int(73).uint(0).uint(3).uint(0).uint(0);
        o.send(&mut w).unwrap();
        let e = err(&w, &mut Decoder::default());
        assert!(e.contains("a map of 3 entries in a shorter message"), "{e}");
    }

    #[test]
    fn type_definitions_are_bounded() {
        let mut w = Vec::new();
        for id in 0..=MAX_TYPES as i64 {
            define_slice(&mut w, 100 + id, "", BOOL).unwrap();
        }
        let e = err(&w, &mut Decoder::default());
        assert!(e.contains("more than 64 type definitions"), "{e}");
        // Redefining one id again and again is not a new type.
        let mut w = Vec::new();
        for _ in 0..1000 {
            define_slice(&mut w, 100, "", BOOL).unwrap();
        }
        w.extend_from_slice(&bools(1));
        assert!(Decoder::default().decode(&mut &w[..]).is_ok());
        // A struct of too many fields.
        let names: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
        let fields: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), BOOL)).collect();
        let mut w = Vec::new();
        define_struct(&mut w, 100, "S", &fields).unwrap();
        let e = err(&w, &mut Decoder::default());
        assert!(e.contains("a struct type of 300 fields"), "{e}");
        // A definition longer than any real one.
        let long = "x".repeat(70 << 10);
        let mut w = Vec::new();
        define_struct(&mut w, 100, &long, &[("a", BOOL)]).unwrap();
        let e = err(&w, &mut Decoder::default());
        assert!(e.contains("a type definition of"), "{e}");
    }

    #[test]
    fn values_print_as_their_kind_and_size() {
        let v = Value::List(vec![Value::Bool(false); 1000]);
        assert_eq!(format!("{v:?}"), "a list of 1000 values");
        let v = Value::Bytes(vec![7; 8192]);
        assert_eq!(format!("{v:?}"), "a byte string of 8192 bytes");
    }

    /// The standby's file list for many files in a tablespace (long
    /// names), read entry by entry; its size per file, for the cap.
    #[test]
    fn a_large_file_list_fits_and_streams() {
        let mut w = Vec::new();
        define_map(&mut w, 69, "BackupFileList", STRING, 65).unwrap();
        define_struct(&mut w, 65, "", &[("MTime", 66)]).unwrap();
        define_gob_encoder(&mut w, 66, "Time").unwrap();
        let n = 100_000u64;
        let mut o = Out::default();
        o.int(69).uint(0).uint(n);
        for i in 0..n {
            let name = format!(
                "pg_tblspc/16384/PG_16_202307071/16385/{}.{}",
                1_000_000 + i,
                i % 100
            );
            o.bytes(name.as_bytes())
                .begin()
                .field(0)
                .bytes(&encode_time(1700000000, 5))
                .end();
        }
        let per_file = o.b.len() as u64 / n;
        assert!(per_file < 70, "{per_file} bytes a file");
        // 1M such files fit the list cap.
        assert!(per_file * 1_000_000 < MAX_LIST_MESSAGE);
        o.send(&mut w).unwrap();
        let mut d = Decoder::default();
        assert!(err(&w, &mut d).contains("more than the 4194304 bytes allowed"));
        let mut d = Decoder::default();
        d.allow_lists();
        let mut seen = 0;
        d.decode_map(&mut &w[..], |k, v| {
            assert!(matches!(k, Value::Bytes(_)));
            assert_eq!(decode_time(v.bytes("MTime")), Some((1700000000, 5)));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n);
    }

    #[test]
    fn integers_round_trip() {
        for v in [0u64, 1, 127, 128, 255, 256, 0x5000028, u64::MAX] {
            let mut o = Out::default();
            o.uint(v);
            assert_eq!(Buf { b: &o.b }.uint().unwrap(), v);
        }
        for v in [0i64, -1, 1, -69, 69, i64::MIN, i64::MAX] {
            let mut o = Out::default();
            o.int(v);
            assert_eq!(Buf { b: &o.b }.int().unwrap(), v);
        }
        let mut o = Out::default();
        o.int(-69);
        assert_eq!(o.b, hex("ff89"));
    }
}
