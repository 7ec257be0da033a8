//! Integration tests: the real `walden` binary against real PostgreSQL 15 and
//! a real S3-compatible server. Run through scripts/test.sh, which prepares
//! the Python venv holding the S3 server. Add a test module with one `mod` line.

mod harness;

mod backup;
mod backup_push;
mod config;
mod hardening;
mod harness_selftest;
mod hostile_s3;
mod interop;
mod pg_client;
mod st;
mod store;
mod wal;
mod walg_compat;
