//! The errors of the PostgreSQL client, each one line naming the server
//! (host:port or socket path) and what to check. Passwords never appear.

use std::fmt;
use std::io;

/// An ErrorResponse or NoticeResponse from the server, its useful fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerMessage {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (DETAIL: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (HINT: {h})")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum PgError {
    /// The socket could not be opened (refused, no such socket, DNS).
    Connect {
        target: String,
        source: io::Error,
    },
    /// No answer within PGCONNECT_TIMEOUT (or the read timeout).
    Timeout {
        target: String,
    },
    /// Something answered that does not speak the PostgreSQL protocol.
    NotPostgres {
        target: String,
        seen: String,
    },
    /// The server refused the connection or the login (pg_hba, wrong
    /// password, unknown database); `hint` says what to check.
    Refused {
        target: String,
        server: Box<ServerMessage>,
        hint: &'static str,
    },
    /// The server wants a password and none is configured.
    NoPassword {
        target: String,
        user: String,
    },
    /// An authentication method walden does not do (GSS, SSPI...).
    Unsupported {
        target: String,
        what: String,
    },
    /// TLS could not be set up or the server's certificate was refused.
    Tls {
        target: String,
        problem: String,
    },
    /// A query failed on the server; the session stays usable.
    Query {
        server: Box<ServerMessage>,
    },
    /// The server broke the protocol or the connection dropped mid-session.
    Protocol {
        target: String,
        problem: String,
    },
    Io {
        target: String,
        source: io::Error,
    },
    /// A value in a result row is not what the caller asked for.
    Value {
        column: usize,
        problem: String,
    },
    /// Several hosts were tried; every one failed.
    AllFailed(Vec<PgError>),
}

impl PgError {
    /// An I/O error while talking to `target`, a timeout kept apart.
    pub fn io(target: &str, source: io::Error) -> PgError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PgError::Timeout {
                target: target.to_string(),
            },
            io::ErrorKind::UnexpectedEof => PgError::Protocol {
                target: target.to_string(),
                problem: "the server closed the connection unexpectedly".into(),
            },
            _ => PgError::Io {
                target: target.to_string(),
                source,
            },
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Connect { target, source } => {
                let check = match source.kind() {
                    io::ErrorKind::ConnectionRefused => {
                        "is the server running there and accepting connections? check PGHOST and PGPORT"
                    }
                    io::ErrorKind::NotFound => {
                        "no server socket there; is the server running locally? check PGHOST (the socket directory) and PGPORT"
                    }
                    _ => "check PGHOST and PGPORT",
                };
                write!(f, "cannot connect to PostgreSQL at {target}: {source}; {check}")
            }
            PgError::Timeout { target } => write!(
                f,
                "PostgreSQL at {target} did not answer in time; check PGHOST, PGPORT and PGCONNECT_TIMEOUT"
            ),
            PgError::NotPostgres { target, seen } => write!(
                f,
                "the server at {target} is not PostgreSQL (it answered {seen}); check PGHOST and PGPORT"
            ),
            PgError::Refused {
                target,
                server,
                hint,
            } => write!(f, "PostgreSQL at {target} refused the connection: {server}; {hint}"),
            PgError::NoPassword { target, user } => write!(
                f,
                "PostgreSQL at {target} asks for a password for user \"{user}\" and none is set; set PGPASSWORD or add a line to the password file (PGPASSFILE, ~/.pgpass)"
            ),
            PgError::Unsupported { target, what } => {
                write!(f, "PostgreSQL at {target} asks for {what}, which walden does not support; change pg_hba.conf to scram-sha-256, md5, password or trust")
            }
            PgError::Tls { target, problem } => {
                write!(f, "TLS with PostgreSQL at {target} failed: {problem}")
            }
            PgError::Query { server } => write!(f, "query failed: {server}"),
            PgError::Protocol { target, problem } => {
                write!(f, "connection to PostgreSQL at {target} failed: {problem}")
            }
            PgError::Io { target, source } => {
                write!(f, "connection to PostgreSQL at {target} failed: {source}")
            }
            PgError::Value { column, problem } => {
                write!(f, "unexpected value in result column {column}: {problem}")
            }
            PgError::AllFailed(errors) => {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", lines.join("; then "))
            }
        }
    }
}

impl std::error::Error for PgError {}
