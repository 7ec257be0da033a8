//! Integration tests: the real `walden` binary against real PostgreSQL (15,
//! and 13–18 in the version matrix) and a real S3-compatible server. Run
//! through scripts/test.sh, which prepares the Python venv holding the S3
//! server and fetches the other PostgreSQL majors. Add a test module with one `mod` line.

mod harness;

mod backup;
mod backup_catalog;
mod backup_push;
mod backup_verify;
mod catchup;
mod catchup_direct;
mod catchup_sealed;
mod composers;
mod config;
mod copy;
mod copy_part;
mod daemon;
mod delete;
mod delete_chains;
mod delta;
mod delta_fetch;
mod delta_summaries;
mod hardening;
mod harness_selftest;
mod hostile_backups;
mod hostile_s3;
mod interop;
mod page_checksums;
mod partial;
mod pg_client;
mod pg_client_certs;
mod pgbackrest;
mod pitr;
mod remote_backup;
mod remote_backup_more;
mod remote_delta;
mod s3_requests;
mod st;
mod standby;
mod store;
mod tablespaces;
mod versions;
mod wal;
mod wal_fetch_requests;
mod wal_receive;
mod wal_receive_slot;
mod wal_restore;
mod wal_show;
mod walg_backup;
mod walg_compat;
