//! The errors a command ends with, and the exit code each one gives.

use std::fmt;
use std::io;

use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::pg::PgError;
use crate::storage::StorageError;

#[derive(Debug)]
pub enum Error {
    /// Wrong arguments; the text says what is expected.
    Usage(String),
    Config(ConfigError),
    Storage(StorageError),
    Codec(CodecError),
    /// Boxed: a server error carries several strings.
    Pg(Box<PgError>),
    /// A local file or stream operation failed: what we were doing, then why.
    Io {
        context: String,
        source: io::Error,
    },
    /// wal-fetch found no such WAL in storage: exit 74 as WAL-G does.
    WalNotFound(String),
    /// A WAL-G command walden does not have yet.
    NotBuilt(String),
    /// Anything else, already worded for the user.
    Other(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::WalNotFound(_) => 74,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(text) => write!(f, "{text}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::Storage(e) => write!(f, "{e}"),
            Error::Codec(e) => write!(f, "{e}"),
            Error::Pg(e) => write!(f, "{e}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::WalNotFound(name) => write!(f, "Archive '{name}' does not exist."),
            Error::NotBuilt(cmd) => write!(
                f,
                "'{cmd}' is a WAL-G command that walden does not implement yet"
            ),
            Error::Other(text) => write!(f, "{text}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Codec(e)
    }
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Self {
        Error::Pg(Box::new(e))
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Self {
        Error::Usage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
