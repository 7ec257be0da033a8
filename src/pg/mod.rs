//! A blocking PostgreSQL client of our own: std sockets, rustls for TLS,
//! `postgres-protocol` for message encoding and SCRAM/md5. No async runtime.
//!
//! `ConnParams::from_settings` reads the libpq environment once;
//! `Client::connect` tries each host in order; `query`/`execute` run simple
//! queries. The replication protocol (`replication=database` in
//! `ConnParams::extra`, CopyBoth) is meant to sit on the same `Wire` reader
//! and writer in a module of its own (see `client.rs`).

mod auth;
pub mod checksum;
mod client;
mod error;
mod message;
mod params;
mod pgpass;
pub mod replication;
mod row;
mod tls;
mod transport;
mod v1_certs;
mod x509;

pub use client::Client;
pub use error::PgError;
pub use params::ConnParams;
#[allow(unused_imports)] // the backup commands will use rows directly
pub use row::Row;
