//! `walden backup-push` without a data directory: a remote backup through
//! the replication protocol's BASE_BACKUP (spec §10.2), for servers whose
//! files walden cannot read (managed servers, other hosts, Windows).
//!
//! One replication session: IDENTIFY_SYSTEM and SHOW for what the
//! sentinel needs, then BASE_BACKUP. Its tar archives (the data directory
//! and each tablespace) are read member by member as they arrive and
//! re-packed into WAL-G's partitions (`part_NNN.tar.<ext>`, tablespace
//! members under `pg_tblspc/<oid>/`, PostgreSQL's own names without a
//! leading `/`), a copy of `global/pg_control` in `pg_control.tar`, then
//! `metadata.json`, `files_metadata.json` (`Files` only) and, last, the
//! sentinel (`Spec` always). `backup_label` and `tablespace_map` are
//! members of the data directory's archive, where the server puts them.
//! Memory: one CopyData message, one copy buffer, one codec and upload.

mod archives;
mod repack;

use std::io::BufWriter;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::composer::Composer;
use super::delta::base::From as DeltaFrom;
use super::push::{hostname, Options};
use super::sentinel::{self, BackupInfo};
use super::tars::{self, Builder};
use super::throttle::RateLimit;
use super::{files_metadata, layout};
use crate::codec::FinishWrite;
use crate::commands::{codecs, open_storage};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::pg::replication::{self, BaseBackupOptions};
use crate::pg::{Client, ConnParams, PgError};
use crate::progress::Progress;
use crate::storage::upload::ObjectWriter;
use archives::{Archives, Boundary};

pub(super) fn run(
    settings: &Settings,
    opts: &Options,
    params: &ConnParams,
    start_time: SystemTime,
) -> Result<()> {
    refuse_delta(opts)?;
    if opts.composer != Composer::Regular {
        log::warn!(
            "tar composers apply to local backups only: a remote backup is packed in the order the server sends"
        );
    }
    let storage = open_storage(settings)?;
    let mut codecs = codecs(settings)?;
    codecs.zstd_workers = codecs.zstd_workers.max(1);

    let mut pg = Client::connect(&replication::physical(params))?;
    log::info!(
        "Running remote backup through the replication connection to {}",
        pg.target()
    );
    let system = pg.identify_system()?;
    let version = show(&mut pg, "server_version_num")?
        .trim()
        .parse::<i64>()
        .unwrap_or(0);
    if version < 100000 {
        return Err(Error::Other(format!(
            "the server at {} is PostgreSQL {version} (server_version_num); remote backups of versions older than 10 are not built in walden",
            pg.target()
        )));
    }
    let segment = pg.wal_segment_size()?;
    if segment != opts.wal_size_mb << 20 {
        return Err(Error::Usage(format!(
            "the server's WAL segments are {segment} bytes but WALG_PG_WAL_SIZE is {} (MiB); set WALG_PG_WAL_SIZE={}",
            opts.wal_size_mb,
            segment >> 20
        )));
    }
    // Reading data_directory needs pg_read_all_settings; a plain
    // replication role has no such right. It only names the tablespace
    // links' base in the sentinel.
    let data_dir = match show(&mut pg, "data_directory") {
        Ok(d) => d,
        Err(e) => {
            log::warn!(
                "the server's data_directory cannot be read ({e}); the sentinel records none: \
                 grant pg_read_all_settings to the backup role to record it"
            );
            String::new()
        }
    };
    let system_identifier = system.system_id.trim().parse::<u64>().ok();
    // PostgreSQL before 11 cannot skip checksum checks (WAL-G: forced on).
    let verify = opts.verify || version < 110000;
    let backup = pg.base_backup(
        version,
        &BaseBackupOptions {
            label: "wal-g".into(),
            fast: true,
            max_rate_kb: opts.disk_limit.map(|b| b / 1024),
            verify_checksums: verify,
        },
    )?;
    let start_lsn = backup.start_lsn;
    let timeline = backup.timeline;
    let tablespaces = backup.tablespaces.clone();
    let name = layout::backup_name(timeline, start_lsn, opts.wal_size_mb);
    log::info!(
        "Starting remote backup {name} (start LSN {}, timeline {timeline}, {} tablespaces)",
        replication::format_lsn(start_lsn),
        tablespaces.len()
    );

    let shared = Arc::new(tars::Shared::new(
        storage.clone(),
        codecs,
        &name,
        opts.threshold,
        None,
        opts.network_limit.map(RateLimit::new),
        opts.files_metadata,
    ));
    let mut builder = Builder::new(shared.clone(), true)?;
    let progress = Progress::new(&format!("backup-push {name}"), None);
    let mut archives = Archives::new(backup);
    let mut control = None;
    let finish_lsn = loop {
        match archives.boundary()? {
            Boundary::Archive { name, tablespace } => {
                match tablespace {
                    Some(oid) => log::info!("Adding tablespace {oid} ({name})"),
                    None => log::info!("Adding data directory ({name})"),
                }
                repack::archive(
                    &mut archives,
                    &mut builder,
                    tablespace,
                    &mut control,
                    &progress,
                )?;
                // Each archive ends its last part, as in WAL-G.
                builder.close()?;
            }
            Boundary::End { lsn } => break lsn,
        }
    };
    let received = archives.received;
    drop(archives);
    drop(pg);

    let control = control.ok_or_else(|| {
        Error::Other(
            "the server's base backup held no global/pg_control; nothing was finalised".into(),
        )
    })?;
    builder.start_named("pg_control")?;
    builder.add_streamed(
        &control.header,
        b"global/pg_control",
        &mut &control.bytes[..],
        None,
    )?;
    builder.close()?;
    let spill = builder.into_spill();

    if let Some(spill) = spill {
        let key = layout::files_metadata_key(&name);
        let mut out =
            BufWriter::with_capacity(256 * 1024, ObjectWriter::new(storage.clone(), &key));
        files_metadata::write_json(vec![spill], &[], None, &mut out)?;
        let object = out
            .into_inner()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e.into_error()))?;
        Box::new(object)
            .finish()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e))?;
    }

    let compressed = shared.stored.load(Ordering::Relaxed);
    log::info!("Remote backup: received {received} bytes, stored {compressed} bytes compressed");
    let info = BackupInfo {
        start_lsn,
        delta: None,
        finish_lsn,
        pg_version: version,
        system_identifier,
        uncompressed_size: received,
        compressed_size: compressed,
        data_catalog_size: 0,
        spec: Some(spec_json(&data_dir, &tablespaces)),
        user_data: opts.user_data.clone(),
        start_time,
        finish_time: sentinel::round_up_micros(SystemTime::now()),
        hostname: hostname(),
        data_dir,
        is_permanent: opts.permanent,
        files_metadata_disabled: !opts.files_metadata,
        corrupt_pages: None,
    };
    super::push::finalise(storage.as_ref(), &name, &info, progress)
}

/// An explicit delta base cannot be honoured over BASE_BACKUP here;
/// `WALG_DELTA_MAX_STEPS` alone only means "deltas where possible", so a
/// remote backup is then full, as WAL-G's.
fn refuse_delta(opts: &Options) -> Result<()> {
    if !matches!(opts.delta.from, DeltaFrom::Latest) {
        return Err(Error::Usage(
            "remote delta backups are not built in walden (over the replication protocol they would need \
             PostgreSQL 17's INCREMENTAL base backups); give the data directory for a local delta backup, \
             or leave out --delta-from-name/--delta-from-user-data (WALG_DELTA_FROM_*) for a full remote backup"
                .into(),
        ));
    }
    if opts.delta.max_steps > 0 && !opts.delta.full {
        log::info!(
            "WALG_DELTA_MAX_STEPS is set, but remote backups are always full (remote deltas are not built in walden)"
        );
    }
    Ok(())
}

/// `SHOW name` on the replication session.
fn show(pg: &mut Client, name: &str) -> std::result::Result<String, PgError> {
    let rows = pg.query(&format!("SHOW {name}"))?;
    Ok(rows
        .first()
        .and_then(|r| r.get_str(0).ok().flatten().map(str::to_string))
        .unwrap_or_default())
}

/// The sentinel's `Spec` of a remote backup, always present as in WAL-G:
/// the server's data directory as `base_prefix` and each tablespace the
/// server listed, in WAL-G's key order (a Go map: sorted).
fn spec_json(data_dir: &str, tablespaces: &[replication::BackupTablespace]) -> String {
    use std::collections::BTreeMap;
    let string = sentinel::string;
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for t in tablespaces {
        keys.insert(
            t.oid.to_string(),
            format!(
                "{{\"loc\":{},\"link\":{}}}",
                string(t.location.trim_end_matches('/')),
                string(&format!("pg_tblspc/{}", t.oid))
            ),
        );
    }
    keys.insert(
        "base_prefix".into(),
        string(data_dir.trim_end_matches('/')).to_string(),
    );
    let names: Vec<String> = tablespaces
        .iter()
        .map(|t| string(&t.oid.to_string()).to_string())
        .collect();
    // Go marshals a nil slice as null: WAL-G's spec without tablespaces.
    let list = if names.is_empty() {
        "null".to_string()
    } else {
        format!("[{}]", names.join(","))
    };
    keys.insert("tablespaces".into(), list);
    let body: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{}:{v}", string(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_spec_is_always_written() {
        assert_eq!(
            spec_json("/var/lib/pg/", &[]),
            "{\"base_prefix\":\"/var/lib/pg\",\"tablespaces\":null}"
        );
        let t = [replication::BackupTablespace {
            oid: 16390,
            location: "/ts/one".into(),
        }];
        assert_eq!(
            spec_json("/d", &t),
            "{\"16390\":{\"loc\":\"/ts/one\",\"link\":\"pg_tblspc/16390\"},\"base_prefix\":\"/d\",\"tablespaces\":[\"16390\"]}"
        );
    }
}
