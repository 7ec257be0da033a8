//! A hostile S3 server: a tiny HTTP/1.1 server on 127.0.0.1 whose answers a
//! test scripts with a closure, for what a real server never does (bodies
//! cut short, no Content-Length, absurd listings, stalls). It checks no
//! signature and stores nothing; it records every request so a test can
//! assert what walden asked for (e.g. that a multipart upload was aborted).
//!
//! ```ignore
//! let s3 = FakeS3::start(|req: &FakeRequest| match req.key() {
//!     Some("pfx/wal_005/000000010000000000000001") => {
//!         FakeResponse::ok(vec![7; 16 << 20]).cut_after(8 << 20)
//!     }
//!     _ => FakeResponse::no_such_key(),
//! });
//! Walden::new().envs(s3.env("pfx")).args(["wal-fetch", ...]).run();
//! assert!(s3.requests().iter().any(|r| r.method == "DELETE" && r.query_value("uploadId").is_some()));
//! ```
//!
//! The handler runs on the connection's thread, one thread per connection,
//! so it must be `Send + Sync`; keep state in atomics or a `Mutex`. Requests
//! on one connection are answered in order (keep-alive), as walden's agent
//! expects.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The bucket `env()` points walden at; requests are path-style
/// (`/BUCKET/key`).
pub const BUCKET: &str = "hostile";

/// One request as walden sent it.
#[derive(Debug, Clone, Default)]
pub struct FakeRequest {
    pub method: String,
    /// Percent-decoded path, e.g. `/hostile/pfx/wal_005/x`.
    pub path: String,
    /// Percent-decoded query pairs in the order sent.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased, values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The object key for requests on an object (`/BUCKET/KEY`), `None` for
    /// requests on the bucket itself (listings, multi-delete).
    pub fn key(&self) -> Option<&str> {
        let rest = self.path.strip_prefix('/')?.strip_prefix(BUCKET)?;
        rest.strip_prefix('/').filter(|k| !k.is_empty())
    }

    /// A ListObjectsV2 request.
    pub fn is_list(&self) -> bool {
        self.method == "GET" && self.key().is_none() && self.query_value("list-type") == Some("2")
    }

    /// The start of a `Range: bytes=N-` header, if any.
    pub fn range_start(&self) -> Option<u64> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

/// How the answer declares its length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// `Content-Length` of the body (the default).
    Auto,
    /// No `Content-Length`, no chunking: the body ends when the connection
    /// closes (HTTP/1.0 style). The connection is closed after the answer.
    Omit,
    /// This `Content-Length` whatever the body's real size.
    Declared(u64),
}

/// The answer to one request, built with the methods below.
#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub length: Length,
    /// Send only this many body bytes, then close the connection.
    pub cut_after: Option<usize>,
    /// Send the body in pieces of this many bytes with this pause between.
    pub slow: Option<(usize, Duration)>,
    /// Wait this long before sending anything (a server that hangs).
    pub stall: Option<Duration>,
    /// Close the connection without answering at all.
    pub hang_up: bool,
}

impl FakeResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            length: Length::Auto,
            cut_after: None,
            slow: None,
            stall: None,
            hang_up: false,
        }
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse::new(200, body)
    }

    /// An XML document with its content type.
    pub fn xml(status: u16, body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse::new(status, body).header("content-type", "application/xml")
    }

    /// An S3 `<Error>` answer.
    pub fn error(status: u16, code: &str, message: &str) -> FakeResponse {
        FakeResponse::xml(
            status,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ),
        )
    }

    /// 404 NoSuchKey, what S3 answers for a missing object.
    pub fn no_such_key() -> FakeResponse {
        FakeResponse::error(404, "NoSuchKey", "The specified key does not exist.")
    }

    /// A ListObjectsV2 page (last page) holding these object keys, which
    /// are written as given (escape them yourself if needed).
    pub fn listing(keys: &[&str]) -> FakeResponse {
        let mut body = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Name>hostile</Name><IsTruncated>false</IsTruncated>",
        );
        for key in keys {
            body.push_str(&format!(
                "<Contents><Key>{key}</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified>\
                 <Size>1</Size></Contents>"
            ));
        }
        body.push_str("</ListBucketResult>");
        FakeResponse::xml(200, body)
    }

    pub fn header(mut self, name: &str, value: &str) -> FakeResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// No `Content-Length` and no chunking; see [`Length::Omit`].
    pub fn without_content_length(mut self) -> FakeResponse {
        self.length = Length::Omit;
        self
    }

    /// Declare `len` bytes whatever the body holds.
    pub fn content_length(mut self, len: u64) -> FakeResponse {
        self.length = Length::Declared(len);
        self
    }

    /// Send `n` bytes of the body, then close the connection.
    pub fn cut_after(mut self, n: usize) -> FakeResponse {
        self.cut_after = Some(n);
        self
    }

    /// Send the body `piece` bytes at a time, pausing `pause` in between.
    pub fn slow(mut self, piece: usize, pause: Duration) -> FakeResponse {
        self.slow = Some((piece.max(1), pause));
        self
    }

    /// Wait `d` before answering.
    pub fn stall(mut self, d: Duration) -> FakeResponse {
        self.stall = Some(d);
        self
    }

    /// Close the connection instead of answering.
    pub fn hang_up() -> FakeResponse {
        FakeResponse {
            hang_up: true,
            ..FakeResponse::new(500, Vec::new())
        }
    }
}

type Handler = dyn Fn(&FakeRequest) -> FakeResponse + Send + Sync;

pub struct FakeS3 {
    port: u16,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    stop: Arc<AtomicBool>,
}

impl FakeS3 {
    /// Listens on a free port of 127.0.0.1 and answers every request with
    /// `handler`, until dropped.
    pub fn start(handler: impl Fn(&FakeRequest) -> FakeResponse + Send + Sync + 'static) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake S3 server");
        let port = listener.local_addr().expect("fake S3 address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, stopped) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (handler, log) = (handler.clone(), log.clone());
                // Errors only mean the client went away; the test judges
                // walden by its exit code and output, not by this thread.
                thread::spawn(move || drop(serve(conn, &*handler, &log)));
            }
        });
        FakeS3 {
            port,
            requests,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Settings pointing walden at `s3://hostile/<prefix>` on this server,
    /// with one retry so failures come quickly.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "fakekey".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "fakesecret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_S3_FORCE_PATH_STYLE", "true".to_string()),
            ("S3_MAX_RETRIES", "1".to_string()),
            (
                "WALG_S3_PREFIX",
                format!("s3://{BUCKET}/{}", prefix.trim_matches('/')),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers requests on one connection until the client closes it or an
/// answer ends it.
fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<FakeRequest>>) -> io::Result<()> {
    // A client that vanishes without closing must not pin a thread forever.
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(req) = read_request(&mut reader)? {
        if let Ok(mut l) = log.lock() {
            l.push(req.clone());
        }
        let resp = handler(&req);
        let keep_alive = write_response(&mut writer, &req, &resp)?;
        if !keep_alive || req.header("connection") == Some("close") {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// `None` when the client closed the connection between requests.
fn read_request(r: &mut impl BufRead) -> io::Result<Option<FakeRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().ok_or_else(|| bad("empty request line"))?;
    let target = parts.next().ok_or_else(|| bad("no request target"))?;
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = FakeRequest {
        method: method.to_string(),
        path: percent_decode(raw_path),
        query: raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        ..FakeRequest::default()
    };
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or_else(|| bad("bad header line"))?;
        req.headers
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        req.body = read_chunked(r)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
        if n == 0 {
            // Trailers, if any, end with an empty line; `crlf` was the
            // first of them (normally that empty line itself).
            while !crlf.trim().is_empty() {
                crlf.clear();
                if r.read_line(&mut crlf)? == 0 {
                    break;
                }
            }
            return Ok(body);
        }
    }
}

/// Writes the answer; false when the connection must close afterwards.
fn write_response(w: &mut TcpStream, req: &FakeRequest, resp: &FakeResponse) -> io::Result<bool> {
    if let Some(d) = resp.stall {
        thread::sleep(d);
    }
    if resp.hang_up {
        return Ok(false);
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match resp.length {
        Length::Auto => head.push_str(&format!("content-length: {}\r\n", resp.body.len())),
        Length::Declared(n) => head.push_str(&format!("content-length: {n}\r\n")),
        Length::Omit => head.push_str("connection: close\r\n"),
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(resp.length != Length::Omit);
    }
    let body = match resp.cut_after {
        Some(n) => &resp.body[..n.min(resp.body.len())],
        None => &resp.body[..],
    };
    match resp.slow {
        Some((piece, pause)) => {
            for chunk in body.chunks(piece) {
                w.write_all(chunk)?;
                w.flush()?;
                thread::sleep(pause);
            }
        }
        None => w.write_all(body)?,
    }
    w.flush()?;
    let declared_matches = match resp.length {
        Length::Auto => true,
        Length::Declared(n) => n == body.len() as u64,
        Length::Omit => false,
    };
    Ok(resp.cut_after.is_none() && declared_matches)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
