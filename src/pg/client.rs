//! A session with the server: connecting (hosts in order, TLS
//! negotiation, startup, authentication) and simple queries.
//!
//! The replication protocol goes in a sibling module built on the same
//! pieces: `ConnParams::extra` carries `replication=database`, and its
//! commands (IDENTIFY_SYSTEM, BASE_BACKUP, START_REPLICATION) read 'H'/'W'
//! and 'd' CopyData messages through `Wire::read` and answer through
//! `Wire::out` + `send` (postgres-protocol has CopyData/copy_done encoders).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::auth::{Auth, AuthError, PasswordOrigin, Step};
use super::error::{PgError, ServerMessage};
use super::message::{self, Body, Message, Wire};
use super::params::{ConnParams, Endpoint, Secret, SslMode, Target};
use super::pgpass;
use super::row::Row;
use super::tls;
use super::transport::Stream;

pub struct Client {
    /// The replication protocol (`replication.rs`) reads and writes Copy
    /// messages on it directly.
    pub(super) wire: Wire,
    parameters: HashMap<String, String>,
}

impl Client {
    /// Connects to the first target that accepts us, as libpq does.
    pub fn connect(params: &ConnParams) -> Result<Client, PgError> {
        let mut errors = Vec::new();
        for target in &params.targets {
            match connect_target(params, target) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    log::debug!("{e}");
                    errors.push(e);
                }
            }
        }
        Err(match errors.len() {
            1 => errors.remove(0),
            _ => PgError::AllFailed(errors),
        })
    }

    /// A run-time parameter the server reported (server_version,
    /// integer_datetimes, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// host:port or the socket path.
    pub fn target(&self) -> &str {
        &self.wire.target
    }

    pub fn is_tls(&self) -> bool {
        self.wire.stream().is_tls()
    }

    /// Runs `sql` (one or more statements) and returns the rows.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let mut rows = Vec::new();
        self.simple(sql, &mut |r| rows.push(r)).map(|_| rows)
    }

    /// Runs `sql` and hands each row to `each` as it arrives: memory stays
    /// one row whatever the result's size (a catalog listing of a large
    /// database).
    pub fn query_each(&mut self, sql: &str, each: &mut dyn FnMut(Row)) -> Result<(), PgError> {
        self.simple(sql, each).map(|_| ())
    }

    /// Runs `sql` and returns the row count of its last command tag
    /// ("INSERT 0 5" → 5; 0 for commands without one).
    #[allow(dead_code)] // the backup commands will use it
    pub fn execute(&mut self, sql: &str) -> Result<u64, PgError> {
        let tag = self.simple(sql, &mut |_| {})?;
        Ok(tag
            .as_deref()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    fn simple(&mut self, sql: &str, each: &mut dyn FnMut(Row)) -> Result<Option<String>, PgError> {
        frontend::query(sql, &mut self.wire.out)
            .map_err(|e| self.wire.protocol(format!("the query cannot be sent: {e}")))?;
        self.wire.send()?;
        let mut columns: Arc<[String]> = Arc::new([]);
        let mut tag = None;
        let mut error: Option<ServerMessage> = None;
        loop {
            let msg = self.wire.read()?;
            let bad = |w: &Wire, e: &str| w.protocol(e.to_string());
            match msg.tag {
                b'T' => {
                    columns = message::row_description(&msg.body)
                        .map_err(|e| bad(&self.wire, e))?
                        .into()
                }
                b'D' => {
                    let values = message::data_row(&msg.body).map_err(|e| bad(&self.wire, e))?;
                    each(Row::new(columns.clone(), values));
                }
                b'C' => {
                    tag = Some(
                        Body::new(&msg.body)
                            .cstr()
                            .map_err(|e| bad(&self.wire, e))?,
                    )
                }
                b'E' => {
                    let m = message::server_message(&msg.body).map_err(|e| bad(&self.wire, e))?;
                    // After FATAL the server hangs up without ReadyForQuery.
                    if matches!(m.severity.as_str(), "FATAL" | "PANIC") {
                        return Err(PgError::Query {
                            server: Box::new(m),
                        });
                    }
                    error = Some(m);
                }
                b'G' => {
                    // COPY FROM STDIN is not for this method: refuse it and
                    // the server ends the statement with an error.
                    frontend::copy_fail("walden does not send COPY data here", &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                    self.wire.send()?;
                }
                b'H' | b'd' | b'c' => {
                    // COPY TO STDOUT: drained and ignored.
                }
                b'W' => {
                    return Err(self
                        .wire
                        .protocol("unexpected CopyBoth outside replication"))
                }
                b'Z' => break,
                other => self.on_async(other, &msg)?,
            }
        }
        match error {
            Some(server) => Err(PgError::Query {
                server: Box::new(server),
            }),
            None => Ok(tag),
        }
    }

    /// Messages that may come at any time.
    pub(super) fn on_async(&mut self, tag: u8, msg: &Message) -> Result<(), PgError> {
        match tag {
            b'S' => {
                let mut b = Body::new(&msg.body);
                if let (Ok(k), Ok(v)) = (b.cstr(), b.cstr()) {
                    self.parameters.insert(k, v);
                }
                Ok(())
            }
            b'N' => {
                if let Ok(m) = message::server_message(&msg.body) {
                    // A warning says why a command waits (a backup's stop
                    // for archiving, an incremental one for WAL summaries):
                    // shown, as pg_basebackup shows it.
                    if m.severity == "WARNING" {
                        log::warn!("server {}: {m}", self.wire.target);
                    } else {
                        log::debug!("server {}: {m}", self.wire.target);
                    }
                }
                Ok(())
            }
            b'A' | b'I' | b'K' | b'n' | b'1' | b'2' | b'3' | b's' | b't' => Ok(()),
            other => Err(self.wire.protocol(format!(
                "unexpected message '{}' from the server",
                other.escape_ascii()
            ))),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A polite goodbye so the server logs no "unexpected EOF".
        frontend::terminate(&mut self.wire.out);
        let _ = self.wire.send();
    }
}

/// One target with libpq's PGSSLMODE fallbacks.
fn connect_target(params: &ConnParams, target: &Target) -> Result<Client, PgError> {
    // TLS is never used over unix sockets, whatever the mode, as in libpq.
    if matches!(target.endpoint, Endpoint::Socket(_)) {
        return attempt(params, target, false);
    }
    match params.ssl_mode {
        SslMode::Disable => attempt(params, target, false),
        SslMode::Allow => match attempt(params, target, false) {
            Err(PgError::Refused { .. }) => attempt(params, target, true),
            other => other,
        },
        SslMode::Prefer => match attempt(params, target, true) {
            Err(PgError::Refused { .. } | PgError::Tls { .. }) => attempt(params, target, false),
            other => other,
        },
        _ => attempt(params, target, true),
    }
}

fn attempt(params: &ConnParams, target: &Target, try_tls: bool) -> Result<Client, PgError> {
    let name = target.to_string();
    let mut stream = Stream::open(target, params.connect_timeout)?;
    stream
        .set_timeout(params.connect_timeout)
        .map_err(|e| PgError::io(&name, e))?;
    if try_tls {
        stream = negotiate_tls(stream, params, target, &name)?;
    }
    let mut wire = Wire::new(stream, name);
    let mut startup: Vec<(&str, &str)> = vec![
        ("user", &params.user),
        ("database", &params.database),
        ("client_encoding", "UTF8"),
    ];
    if !params.application_name.is_empty() {
        startup.push(("application_name", &params.application_name));
    }
    startup.extend(params.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut wire.out)
        .map_err(|e| wire.protocol(format!("the startup message cannot be built: {e}")))?;
    wire.send()?;

    let mut auth = Auth::new(&params.user, password(params, target));
    let mut client = Client {
        wire,
        parameters: HashMap::new(),
    };
    let mut first = true;
    loop {
        let msg = client
            .wire
            .read()
            .map_err(|e| not_postgres_if_first(e, first))?;
        if first && !matches!(msg.tag, b'R' | b'E') {
            return Err(PgError::NotPostgres {
                target: client.wire.target.clone(),
                seen: describe_bytes(&[msg.tag]),
            });
        }
        first = false;
        match msg.tag {
            b'R' => {
                let mut out = BytesMut::new();
                match auth.on_request(&msg.body, &mut out) {
                    Ok(Step::Done) => {}
                    Ok(Step::Reply) => {
                        client.wire.out = out;
                        client.wire.send()?;
                    }
                    Err(e) => return Err(auth_error(e, &client.wire.target, &params.user)),
                }
            }
            b'E' => {
                let server = message::server_message(&msg.body)
                    .map_err(|e| client.wire.protocol(e.to_string()))?;
                return Err(refused(&client.wire.target, server, auth.used.as_ref()));
            }
            b'Z' => break,
            other => client.on_async(other, &msg)?,
        }
    }
    // Queries (a backup's stop call) may take long: no bound from here on.
    client
        .wire
        .stream()
        .set_timeout(None)
        .map_err(|e| PgError::io(&client.wire.target, e))?;
    Ok(client)
}

/// SSLRequest, then TLS if the server agrees. The one-byte answer is read
/// unbuffered: nothing the server sends before the handshake may be taken
/// as protocol data (CVE-2021-23222).
fn negotiate_tls(
    mut stream: Stream,
    params: &ConnParams,
    target: &Target,
    name: &str,
) -> Result<Stream, PgError> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    stream
        .write_all(&out)
        .and_then(|_| stream.flush())
        .map_err(|e| PgError::io(name, e))?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .map_err(|e| not_postgres_if_first(PgError::io(name, e), true))?;
    match (answer[0], stream, &target.endpoint) {
        (b'S', Stream::Tcp(tcp), Endpoint::Tcp(host)) => tls::handshake(tcp, host, params, name),
        (b'N', stream, _) if !params.ssl_mode.requires_tls() => Ok(stream),
        (b'N', _, _) => Err(PgError::Tls {
            target: name.to_string(),
            problem: format!(
                "the server does not accept TLS connections, and PGSSLMODE={} requires TLS",
                ssl_mode_name(params.ssl_mode)
            ),
        }),
        (other, _, _) => Err(PgError::NotPostgres {
            target: name.to_string(),
            seen: describe_bytes(&[other]),
        }),
    }
}

fn ssl_mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// PGPASSWORD, else the password file's line for this target.
fn password(params: &ConnParams, target: &Target) -> Option<(Secret, PasswordOrigin)> {
    if let Some(p) = &params.password {
        return Some((p.clone(), PasswordOrigin::Env));
    }
    let path = params.passfile.as_ref()?;
    let host = target.pgpass_host();
    let port = target.port.to_string();
    let key = pgpass::Key {
        host: &host,
        port: &port,
        database: &params.database,
        user: &params.user,
    };
    pgpass::lookup(path, &key)
        .map(|p| (Secret(p), PasswordOrigin::File(path.display().to_string())))
}

/// A server that closes or garbles the very first answer is most likely
/// not PostgreSQL.
fn not_postgres_if_first(e: PgError, first: bool) -> PgError {
    match e {
        PgError::Protocol { target, problem } if first => PgError::NotPostgres {
            target,
            seen: format!("with something else: {problem}"),
        },
        other => other,
    }
}

fn describe_bytes(bytes: &[u8]) -> String {
    format!("'{}'", bytes.escape_ascii())
}

fn auth_error(e: AuthError, target: &str, user: &str) -> PgError {
    match e {
        AuthError::NoPassword => PgError::NoPassword {
            target: target.to_string(),
            user: user.to_string(),
        },
        AuthError::Unsupported(what) => PgError::Unsupported {
            target: target.to_string(),
            what,
        },
        AuthError::Protocol(problem) => PgError::Protocol {
            target: target.to_string(),
            problem: format!("during authentication: {problem}"),
        },
    }
}

fn refused(target: &str, server: ServerMessage, used: Option<&PasswordOrigin>) -> PgError {
    let hint = match (server.code.as_str(), used) {
        ("28P01", Some(PasswordOrigin::File(_))) => {
            "check the password for this server in the password file (PGPASSFILE, ~/.pgpass)"
        }
        ("28P01", _) => "check PGPASSWORD",
        ("28000", _) => "check PGUSER, PGSSLMODE and the server's pg_hba.conf",
        ("3D000", _) => "check PGDATABASE",
        ("57P03", _) => "the server is starting up or shutting down; try again",
        ("53300", _) => "the server has too many connections",
        _ => "check PGUSER and PGDATABASE",
    };
    PgError::Refused {
        target: target.to_string(),
        server: Box::new(server),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::params::{targets, Secret};
    use std::net::TcpListener;

    fn params_for(port: u16, mode: SslMode) -> ConnParams {
        ConnParams {
            targets: targets(Some("127.0.0.1"), Some(&port.to_string())).unwrap(),
            user: "u".into(),
            database: "d".into(),
            password: Some(Secret("topsecret".into())),
            passfile: None,
            ssl_mode: mode,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            connect_timeout: Some(std::time::Duration::from_secs(2)),
            application_name: "t".into(),
            extra: Vec::new(),
        }
    }

    /// A one-shot server that reads what the client sends, then writes
    /// `answer` and hangs up.
    fn fake_server(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        port
    }

    #[test]
    fn pg_http_server_is_not_postgres() {
        for mode in [SslMode::Disable, SslMode::Prefer] {
            let port = fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let e = Client::connect(&params_for(port, mode))
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains(&format!("127.0.0.1:{port} is not PostgreSQL")),
                "{e}"
            );
            assert!(!e.contains("topsecret"));
        }
    }

    #[test]
    fn pg_garbage_and_hangups_are_clear() {
        // A length that cannot be.
        let port = fake_server(b"R\xff\xff\xff\xff");
        let e = Client::connect(&params_for(port, SslMode::Disable))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("impossible length"), "{e}");
        // Hang-up at once.
        let port = fake_server(b"");
        let e = Client::connect(&params_for(port, SslMode::Disable))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not PostgreSQL"), "{e}");
        // A truncated authentication request.
        let port = fake_server(b"R\0\0\0\x08\0\0");
        let e = Client::connect(&params_for(port, SslMode::Disable))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not PostgreSQL") || e.contains("middle of a message"),
            "{e}"
        );
        // require: a server without TLS.
        let port = fake_server(b"N");
        let e = Client::connect(&params_for(port, SslMode::Require))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("does not accept TLS") && e.contains("require"),
            "{e}"
        );
    }

    #[test]
    fn pg_silent_server_times_out_and_refused_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = Client::connect(&params_for(port, SslMode::Disable))
            .err()
            .unwrap();
        assert!(matches!(e, PgError::Timeout { .. }), "{e}");
        drop(l);
        let e = Client::connect(&params_for(port, SslMode::Disable))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot connect") && e.contains("PGPORT"), "{e}");
    }
}
