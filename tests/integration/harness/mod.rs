//! Test harness: real servers as child processes, no mocks.
//!
//! - [`TempDir`]: self-deleting scratch directories.
//! - [`S3Server`]: nanio, an S3-compatible server that checks SigV4.
//! - [`FakeS3`]: a scripted, hostile S3 server for what real ones never do.
//! - [`PgCluster`]: a PostgreSQL cluster, Debian's 15 or another major 13–18
//!   (`PgBuilder::major`), run as `postgres` when root.
//! - [`Walden`]: runs the built `walden` binary (or another, e.g. WAL-G) with a
//!   clean environment.
//! - [`certs`]: a test CA and certificates it signs (openssl).
//! - [`scenario`]: the setups many tests share (a cluster archiving to
//!   walden, a restore started and its rows compared, a standby).
//!
//! Not every test module uses every item (or re-export), hence the allowances.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod fake_s3;
pub mod pg;
pub mod s3;
pub mod scenario;
pub mod tmp;
pub mod walden;

pub use fake_s3::{FakeRequest, FakeResponse, FakeS3};
pub use pg::{PgBuilder, PgCluster};
pub use s3::S3Server;
pub use tmp::TempDir;
pub use walden::{walden_bin, walden_bin_for_postgres, walg_bin, Output, Running, Walden};
