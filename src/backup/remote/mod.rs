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
//!
//! Remote deltas (PostgreSQL 17+, `delta.rs`): the prior backup's manifest
//! is made from the base's objects and uploaded (UPLOAD_MANIFEST), the
//! backup is taken INCREMENTAL, and its `INCREMENTAL.<file>` members are
//! stored as WAL-G increments (`incremental.rs`).

mod archives;
mod delta;
mod incremental;
mod manifest;
mod repack;

use std::io::BufWriter;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::composer::Composer;
use super::push::{hostname, Options};
use super::sentinel::{self, BackupInfo, DeltaFields};
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
    let mut delta = delta::prepare(&storage, opts, &mut pg, version, &system, &show)?;
    if let Some(d) = delta.as_mut() {
        if let Err(e) = pg.upload_manifest(&mut d.manifest.file) {
            delta::refused(d, pg.target(), e)?;
            delta = None;
        }
    }
    let target = pg.target().to_string();
    let mut options = BaseBackupOptions {
        label: "wal-g".into(),
        fast: true,
        max_rate_kb: opts.disk_limit.map(|b| b / 1024),
        verify_checksums: verify,
        incremental: delta.is_some(),
    };
    let backup = match pg.base_backup(version, &options) {
        Ok(b) => b,
        Err(e) => match delta.take() {
            Some(d) => {
                delta::refused(&d, &target, e)?;
                options.incremental = false;
                pg.base_backup(version, &options)?
            }
            None => return Err(e.into()),
        },
    };
    let start_lsn = backup.start_lsn;
    let timeline = backup.timeline;
    let tablespaces = backup.tablespaces.clone();
    let mut name = layout::backup_name(timeline, start_lsn, opts.wal_size_mb);
    if let Some(d) = &delta {
        // WAL-G's `_D_` + the base's own start segment.
        let base_segment = super::retention::hex_run(&d.base.name).unwrap_or_default();
        name = format!("{name}_D_{base_segment}");
    }
    log::info!(
        "Starting remote {} {name} (start LSN {}, timeline {timeline}, {} tablespaces)",
        if delta.is_some() {
            "delta backup"
        } else {
            "backup"
        },
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
    let mut run = delta.as_ref().map(|d| repack::Delta {
        slash: d.manifest.slash,
        ..Default::default()
    });
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
                    run.as_mut(),
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
    let slash = run.as_ref().is_some_and(|r| r.slash);
    builder.add_streamed(
        &control.header,
        &repack::styled(b"global/pg_control".to_vec(), slash),
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
    match (&delta, &run) {
        (Some(d), Some(r)) => log::info!(
            "Remote delta backup from {}: received {received} bytes, stored {compressed} bytes compressed; \
             {} files whole ({} bytes), {} files as increments ({} changed pages); changed blocks from the server's WAL summaries",
            d.base.name,
            r.whole_files,
            r.whole_bytes,
            r.increments,
            r.pages
        ),
        _ => log::info!(
            "Remote backup: received {received} bytes, stored {compressed} bytes compressed"
        ),
    }
    let info = BackupInfo {
        start_lsn,
        delta: delta.as_ref().map(|d| DeltaFields {
            lsn: d.base.lsn,
            from: d.base.name.clone(),
            full_name: d.base.full_name.clone(),
            count: d.base.count,
        }),
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
    // A permanent delta keeps its chain, as a local one.
    if let (Some(d), true) = (&delta, opts.permanent) {
        for b in super::mark::chain_to_mark(&storage, &d.base.name)? {
            super::mark::set_permanent(&storage, &b, true)?;
        }
    }
    super::push::finalise(storage.as_ref(), &name, &info, progress)
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
