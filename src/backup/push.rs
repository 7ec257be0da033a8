//! `walden backup-push [PGDATA]`: a full local backup (spec §1.6, §10.1).
//!
//! One session holds a non-exclusive backup open (pinged by the alive
//! check) while PGDATA is walked and its members packed into tar
//! partitions by `WALG_UPLOAD_DISK_CONCURRENCY` builders (`tars.rs`), each
//! streamed through the codecs into storage; then `pg_control.tar`, the
//! backup stop, `backup_label.tar`, `metadata.json`, `files_metadata.json`
//! (`files_metadata.rs`) and, last, the sentinel: a backup exists only once
//! its sentinel is written, so anything that fails earlier leaves garbage
//! that no restore will pick.

use std::ffi::OsString;
use std::io::BufWriter;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::alive::AliveCheck;
use super::composer::{self, copy, database, rating, Composer};
use super::delta::base::{self as delta_base, DeltaOptions};
use super::delta::index::BaseIndex;
use super::delta::Plan;
use super::sentinel::{self, BackupInfo, DeltaFields};
use super::standby;
use super::tablespaces;
use super::tars::{self, Builder, Member, Pool, What};
use super::throttle::RateLimit;
use super::walk::{self, Kind};
use super::{files_metadata, knobs, layout, pagecheck, stop};
use crate::codec::FinishWrite;
use crate::commands::{codecs, open_storage};
use crate::config::{ConfigError, Settings};
use crate::error::{Error, Result};
use crate::pg::{Client, ConnParams};
use crate::progress::Progress;
use crate::storage::upload::ObjectWriter;

const USAGE: &str = "walden backup-push [PGDATA] [--permanent] [--full] [--delta-from-name NAME] \
[--delta-from-user-data JSON] [--add-user-data JSON] [--without-files-metadata] [--verify] [--store-all-corrupt] \
[--rating-composer] [--database-composer] [--copy-composer] [--pghost HOST[,HOST...]]";

/// The options of one backup-push; a remote backup (`remote/`) reads the
/// ones that apply to it.
pub(super) struct Options {
    /// None: a remote backup over the replication protocol.
    pub(super) pgdata: Option<PathBuf>,
    /// `--pghost`: overrides PGHOST (a list: the first that answers).
    pub(super) pghost: Option<String>,
    pub(super) permanent: bool,
    pub(super) user_data: Option<Value>,
    pub(super) threshold: u64,
    pub(super) wal_size_mb: u64,
    /// Tar builders reading, packing and compressing at once (one
    /// upload stream each): `WALG_UPLOAD_DISK_CONCURRENCY`, at most
    /// `WALG_UPLOAD_CONCURRENCY`.
    builders: usize,
    pub(super) disk_limit: Option<u64>,
    pub(super) network_limit: Option<u64>,
    pub(super) files_metadata: bool,
    /// `DatabasesByNames` for partial restore, unless
    /// `WALG_DISABLE_PARTIAL_RESTORE` (and only with files metadata).
    database_names: bool,
    alive_every: Option<Duration>,
    stop_timeout: Option<Duration>,
    /// `--verify` / `WALG_VERIFY_PAGE_CHECKSUMS` (pagecheck.rs).
    pub(super) verify: bool,
    /// `--store-all-corrupt` / `WALG_STORE_ALL_CORRUPT_BLOCKS`.
    store_all_corrupt: bool,
    pub(super) delta: DeltaOptions,
    /// Which tar each file goes to (`composer/`).
    pub(super) composer: Composer,
    /// `catchup-push --from-lsn`: a catch-up from this LSN (`crate::catchup`).
    catchup: Option<u64>,
}

/// WAL-G's default `WALG_ALIVE_CHECK_INTERVAL` (PostgreSQL).
const ALIVE_DEFAULT: Duration = Duration::from_secs(60);

/// More tar streams than this only multiplies memory on any machine.
const MAX_BUILDERS: usize = 64;

fn options(settings: &Settings, args: Vec<OsString>) -> Result<Options> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut dir: Option<PathBuf> = None;
    let mut permanent = false;
    let mut without_files_metadata = settings.bool("WALG_WITHOUT_FILES_METADATA")?;
    let mut user_data_arg: Option<String> = None;
    let mut verify = settings.bool("WALG_VERIFY_PAGE_CHECKSUMS")?;
    let mut store_all_corrupt = settings.bool("WALG_STORE_ALL_CORRUPT_BLOCKS")?;
    let mut full = false;
    let mut delta_from_name: Option<String> = None;
    let mut delta_from_user_data: Option<String> = None;
    let mut composers = composer::Flags::default();
    let mut pghost = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('p') | Long("permanent") => permanent = true,
            Short('f') | Long("full") => full = true,
            Long("delta-from-name") => delta_from_name = Some(parser.value()?.string()?),
            Long("delta-from-user-data") => {
                delta_from_user_data = Some(parser.value()?.string()?);
            }
            Long("without-files-metadata") => without_files_metadata = true,
            Short('v') | Long("verify") => verify = true,
            Short('s') | Long("store-all-corrupt") => store_all_corrupt = true,
            Short('r') | Long("rating-composer") => composers.rating = true,
            Short('c') | Long("copy-composer") => composers.copy = true,
            Short('b') | Long("database-composer") => composers.database = true,
            Long("pghost") => pghost = Some(parser.value()?.string()?),
            Long("add-user-data") => {
                user_data_arg = Some(parser.value()?.string()?);
            }
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            _ => {
                return Err(Error::Usage(format!(
                    "{}; usage: {USAGE}",
                    arg.unexpected()
                )))
            }
        }
    }
    // Checked before anything is uploaded: a typo in the JSON must not
    // cost a whole backup (WAL-G: fatal, same order).
    let (source, text) = match user_data_arg {
        Some(t) => ("--add-user-data", Some(t)),
        None => (
            "WALG_SENTINEL_USER_DATA",
            settings.get_explicit("WALG_SENTINEL_USER_DATA"),
        ),
    };
    let user_data = match text {
        None => None,
        Some(t) => Some(sentinel::parse_user_data(&t).map_err(|e| {
            Error::Usage(format!(
                "{source} is not valid JSON ({e}); give a JSON value such as '{{\"k\":\"v\"}}' or '\"text\"'"
            ))
        })?),
    };
    let setting = settings.get_explicit("PGDATA").map(PathBuf::from);
    let pgdata = match (dir, setting) {
        (Some(d), Some(s)) => {
            if canonical(&d)? != canonical(&s)? {
                return Err(Error::Usage(format!(
                    "the directory argument '{}' and the PGDATA setting '{}' differ; give one, or make them agree",
                    d.display(),
                    s.display()
                )));
            }
            Some(d)
        }
        (Some(d), None) | (None, Some(d)) => Some(d),
        // No data directory: a remote backup (remote/).
        (None, None) => None,
    };
    let threshold_text = settings.get("WALG_TAR_SIZE_THRESHOLD").unwrap_or_default();
    let threshold = match threshold_text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(ConfigError::Invalid {
                name: "WALG_TAR_SIZE_THRESHOLD".into(),
                value: threshold_text,
                problem: "expected a positive number of bytes".into(),
            }
            .into())
        }
    };
    let composer = Composer::choose(settings, composers, without_files_metadata)?;
    // The copy composer makes full backups (WAL-G: it sets --full).
    let delta = DeltaOptions::from_settings(
        settings,
        full || composer == Composer::Copy,
        delta_from_name,
        delta_from_user_data,
        without_files_metadata,
    )?;
    let disk = settings.positive("WALG_UPLOAD_DISK_CONCURRENCY")?;
    let uploads = crate::commands::upload_concurrency(settings)?;
    Ok(Options {
        pgdata,
        pghost,
        permanent,
        user_data,
        threshold,
        wal_size_mb: crate::wal::segment_size_mb(settings)?,
        builders: disk.min(uploads).min(MAX_BUILDERS),
        disk_limit: knobs::rate(settings, "WALG_DISK_RATE_LIMIT")?,
        network_limit: knobs::rate(settings, "WALG_NETWORK_RATE_LIMIT")?,
        files_metadata: !without_files_metadata,
        database_names: !without_files_metadata
            && !settings.bool("WALG_DISABLE_PARTIAL_RESTORE")?,
        alive_every: knobs::duration(settings, "WALG_ALIVE_CHECK_INTERVAL", Some(ALIVE_DEFAULT))?,
        stop_timeout: knobs::duration(settings, "WALG_STOP_BACKUP_TIMEOUT", None)?,
        verify,
        store_all_corrupt,
        delta,
        composer,
        catchup: None,
    })
}

fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize()
        .map_err(|e| Error::io(format!("the data directory '{}'", p.display()), e))
}

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    let start_time = sentinel::round_up_micros(SystemTime::now());
    let opts = options(settings, args)?;
    super::delta::wal_delta::note(settings)?;
    let params = ConnParams::with_host(settings, opts.pghost.as_deref())?;
    let Some(given) = opts.pgdata.clone() else {
        return super::remote::run(settings, &opts, &params, start_time);
    };
    let storage = open_storage(settings)?;
    push(settings, opts, &given, &params, storage, start_time)
}

/// `catchup-push PGDATA --from-lsn LSN` (spec §11.1): this pipeline into
/// `storage` (the catch-up folder's view), with WAL-G's catch-up settings:
/// regular composer, no verify, not permanent, files metadata kept, and a
/// base that is only an LSN, so that every relation file is stored as an
/// increment of its pages at or after it.
pub(crate) fn catchup(
    settings: &Settings,
    pgdata: PathBuf,
    from_lsn: u64,
    storage: Arc<dyn crate::storage::Storage>,
) -> Result<()> {
    let start_time = sentinel::round_up_micros(SystemTime::now());
    let mut opts = options(settings, vec![pgdata.clone().into_os_string()])?;
    opts.catchup = Some(from_lsn);
    opts.permanent = false;
    opts.verify = false;
    opts.composer = Composer::Regular;
    opts.files_metadata = true;
    let params = ConnParams::with_host(settings, None)?;
    push(settings, opts, &pgdata, &params, storage, start_time)
}

/// The names catch-up leaves out besides the usual ones (WAL-G adds them
/// to its exclusions): the replica keeps its own server configuration.
fn catchup_excluded(rel: &[u8]) -> bool {
    let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
    matches!(
        base,
        b"pg_hba.conf" | b"postgresql.conf" | b"postgresql.auto.conf"
    )
}

fn push(
    settings: &Settings,
    opts: Options,
    given: &Path,
    params: &ConnParams,
    storage: Arc<dyn crate::storage::Storage>,
    start_time: SystemTime,
) -> Result<()> {
    let codecs = codecs(settings)?;
    let pgdata = canonical(given)?;
    for needed in ["global/pg_control", "PG_VERSION"] {
        if !pgdata.join(needed).is_file() {
            return Err(Error::Other(format!(
                "'{}' is not a PostgreSQL data directory: '{needed}' is missing",
                pgdata.display()
            )));
        }
    }

    let mut pg = Client::connect(params)?;
    let server = Server::query(&mut pg)?;
    server.check(&pgdata, opts.wal_size_mb)?;
    // Read before the backup starts, as WAL-G: the counts describe the
    // files as the walk will find them closely enough to group them.
    let ratings = match opts.composer {
        Composer::Rating => Some(rating::Ratings::load(params)?),
        _ => None,
    };
    let mut sorter = ratings.as_ref().map(|_| rating::Sorter::default());
    let mut copy_groups = copy::Groups::new(opts.threshold);
    let mut copier = match opts.composer {
        Composer::Copy => copy::Copier::find(&storage, server.system_identifier)?,
        _ => None,
    };
    // Before the backup starts: the base's file list is streamed from
    // storage, which must not hold the backup open.
    let base = match opts.catchup {
        Some(_) => None,
        None => delta_base::choose(
            &delta_base::InStorage(&storage),
            &opts.delta,
            opts.permanent,
        )?,
    };
    let plan = match (opts.catchup, base) {
        (Some(from_lsn), _) => Some(Plan::catchup(delta_base::Base {
            // WAL-G's fake base: no name, so no `_D_` suffix, and the
            // sentinel's DeltaFrom/DeltaFullName are "" with DeltaCount 1.
            name: String::new(),
            lsn: from_lsn,
            finish_lsn: None,
            full_name: String::new(),
            count: 1,
            system_identifier: None,
            start_time: None,
        })?),
        (None, Some(b)) => {
            let index = BaseIndex::load(&storage, &b.name)?;
            log::debug!("the delta base {} lists {} files", b.name, index.entries);
            Some(Plan::new(b, index))
        }
        (None, None) => None,
    };

    let label = crate::time::rfc3339_nano(start_time);
    // pg_walfile_name cannot run on a standby: its timeline comes from
    // the control file (standby.rs).
    let walfile_sql = if server.in_recovery {
        "''"
    } else {
        "pg_walfile_name(l)"
    };
    let start_sql = if server.version >= 150000 {
        format!("SELECT l::text, {walfile_sql} FROM pg_backup_start('{label}', true) AS l")
    } else {
        format!("SELECT l::text, {walfile_sql} FROM pg_start_backup('{label}', true, false) AS l")
    };
    let rows = pg.query(&start_sql)?;
    let (start_text, walfile) = two_strings(&rows, "starting the backup")?;
    let start_lsn = lsn(&start_text)?;
    let timeline = if server.in_recovery {
        standby::start_timeline(&mut pg)?
    } else {
        walfile
            .get(0..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| {
                Error::Other(format!(
                    "the server named the start WAL file '{walfile}', which is not a WAL file name"
                ))
            })?
    };
    let mut name = layout::backup_name(timeline, start_lsn, opts.wal_size_mb);
    let plan = match plan {
        Some(p) if p.is_catchup() => {
            if p.base.lsn > start_lsn {
                return Err(Error::Usage(format!(
                    "--from-lsn {} ({}) is after this server's backup start {start_text}: the replica is ahead \
                     of this server, so it is not a lagging copy of it; give the replica's checkpoint REDO \
                     location from pg_controldata as a decimal number",
                    p.base.lsn,
                    super::catalog::lsn_text(p.base.lsn)
                )));
            }
            Some(p)
        }
        Some(p) => {
            let usable = delta_base::check_started(
                &p.base,
                start_lsn,
                server.system_identifier,
                timeline,
                |tl| std::fs::read_to_string(pgdata.join(format!("pg_wal/{tl:08X}.history"))).ok(),
            )?;
            usable.then_some(p)
        }
        None => None,
    };
    if let Some(p) = plan.as_ref().filter(|p| p.is_catchup()) {
        log::info!(
            "Catch-up backup: relation pages at or after LSN {} are stored as increments",
            super::catalog::lsn_text(p.base.lsn)
        );
    }
    if let Some(p) = plan.as_ref().filter(|p| !p.is_catchup()) {
        log::info!("Delta backup enabled");
        // WAL-G's `_D_` + the base's own start segment.
        let base_segment = super::retention::hex_run(&p.base.name).unwrap_or_default();
        name = format!("{name}_D_{base_segment}");
        super::delta::summaries::attach(
            p,
            &opts.delta,
            &mut pg,
            server.version,
            timeline,
            start_lsn,
        );
    }
    log::info!(
        "Starting backup {name} of '{}' (start LSN {start_text})",
        pgdata.display()
    );
    if server.in_recovery {
        log::info!(
            "The server is a standby: its timeline ({timeline}) is watched during the backup"
        );
    }

    let mut codecs = codecs;
    // One zstd stream per builder: the cores are shared among them.
    codecs.zstd_workers = (codecs.zstd_workers / opts.builders as u32).max(1);
    let mut shared = tars::Shared::new(
        storage.clone(),
        codecs,
        &name,
        opts.threshold,
        opts.disk_limit.map(RateLimit::new),
        opts.network_limit.map(RateLimit::new),
        opts.files_metadata,
    );
    if opts.verify {
        shared.verify = pagecheck::rules_for(&mut pg, start_lsn, opts.store_all_corrupt)?;
    }
    shared.delta = plan.clone();
    let shared = Arc::new(shared);
    let alive = match opts.alive_every {
        Some(every) => Held::Checked(AliveCheck::start(pg, every, shared.clone())?),
        None => Held::Idle(pg),
    };
    let mut pool = Pool::start(
        shared.clone(),
        opts.builders,
        opts.composer.separate_headers(),
    )?;
    let mut catalog = 0u64;
    let progress = Progress::new(&format!("backup-push {name}"), None);
    let tablespaces = walk::walk(&pgdata, &mut catalog, &mut |e| {
        let rel = e.rel.as_os_str().as_bytes();
        if rel == b"global/pg_control" {
            // Uploaded on its own, last (spec §1.4).
            return Ok(());
        }
        if opts.catchup.is_some() && !matches!(e.kind, Kind::Dir) && catchup_excluded(rel) {
            return Ok(());
        }
        if let Some(c) = copier.as_mut() {
            if c.hold(rel, matches!(e.kind, Kind::File), e.meta)? {
                return Ok(());
            }
        }
        if matches!(e.kind, Kind::File) {
            // Counted when handed to a builder: with one builder (the
            // default) that is when it is read.
            progress.add(e.meta.len());
            // Packed after the walk, in rating order.
            if let (Some(sorter), Some(ratings)) = (sorter.as_mut(), ratings.as_ref()) {
                return sorter.push(rel, ratings.of(rel));
            }
        }
        let group = match (opts.composer, &e.kind) {
            (Composer::Database, Kind::File) => Some(database::group(rel)),
            (Composer::Copy, Kind::File) => Some(copy_groups.of(true, e.meta.len())),
            _ => None,
        };
        pool.add(Member {
            name: [b"/", rel].concat(),
            path: pgdata.join(e.rel),
            meta: e.meta.clone(),
            what: match e.kind {
                Kind::Dir => What::Dir,
                Kind::File => What::File,
                Kind::Symlink(target) => What::Symlink(target),
            },
            group,
            updates: 0,
        })
    })?;
    if let Some(sorter) = sorter {
        rating::pack(sorter, &pgdata, &mut |m| pool.add(m))?;
    }
    let copied = match copier {
        Some(c) => Some(
            c.finish(&storage, &pgdata, &name, &mut copy_groups, &mut |m| {
                pool.add(m)
            })?,
        ),
        None => None,
    };
    let mut spills = pool.finish()?;
    if let Some(c) = copied {
        shared.content_total.fetch_add(c.content, Ordering::Relaxed);
        shared.stored.fetch_add(c.stored, Ordering::Relaxed);
        spills.push(c.spill);
    }
    let mut pg = alive.finish()?;
    if shared.abort.is_set() {
        return Err(shared.abort.error());
    }
    // After the data upload, as WAL-G (but before the stop, so the names
    // describe the catalog as the tars hold it as closely as can be).
    let names = opts
        .database_names
        .then(|| super::names::collect(params))
        .and_then(|r| {
            r.map_err(|e| {
                log::warn!("partial restore will not be possible with this backup: listing the databases' relations failed: {e}")
            })
            .ok()
        });
    let corrupt_pages = shared.verify.map(|_| pagecheck::summary(&shared.verified));

    // pg_control after every data tar, still inside the backup.
    let control_path = pgdata.join("global/pg_control");
    let control_meta = std::fs::metadata(&control_path)
        .map_err(|e| Error::io(format!("reading '{}'", control_path.display()), e))?;
    let mut single = Builder::new(shared.clone(), false)?;
    single.start_named("pg_control")?;
    single.add(&Member {
        name: b"/global/pg_control".to_vec(),
        path: control_path,
        meta: control_meta,
        what: What::File,
        group: None,
        updates: 0,
    })?;
    single.close()?;

    // The WAL up to the backup's end must be archived before the backup
    // is usable; on a standby PostgreSQL does not wait either.
    let wait_archive = (!server.in_recovery
        && matches!(server.archive_mode.as_str(), "on" | "always"))
    .then(|| given.join("pg_wal").join("archive_status"));
    let stopped = stop::stop_backup(
        &mut pg,
        server.version,
        wait_archive.as_deref(),
        opts.stop_timeout,
    )?;
    let (finish_lsn, label_file, spcmap) = (stopped.finish_lsn, stopped.label, stopped.spcmap);
    // Everything is uploaded: a standby must still be on its timeline.
    let timeline_change = if server.in_recovery {
        standby::timeline_change(&mut pg, timeline)
    } else {
        None
    };
    drop(pg);

    single.start_named("backup_label")?;
    single.add_text(b"backup_label", label_file.as_bytes())?;
    single.add_text(b"tablespace_map", spcmap.as_bytes())?;
    single.close()?;

    if opts.files_metadata {
        let label_tar = shared.tar_name("backup_label");
        let key = layout::files_metadata_key(&name);
        let mut out =
            BufWriter::with_capacity(256 * 1024, ObjectWriter::new(storage.clone(), &key));
        files_metadata::write_json(
            spills,
            &[(label_tar.as_str(), &["tablespace_map", "backup_label"])],
            names
                .map(|n| n.file)
                .as_mut()
                .map(|f| f as &mut dyn std::io::Read),
            &mut out,
        )?;
        let object = out
            .into_inner()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e.into_error()))?;
        Box::new(object)
            .finish()
            .map_err(|e| Error::io(format!("uploading '{key}'"), e))?;
    }

    let uncompressed = shared.content_total.load(Ordering::Relaxed);
    let compressed = shared.stored.load(Ordering::Relaxed);
    match &plan {
        Some(p) => log::info!("{}", p.summary(uncompressed, compressed)),
        None => log::info!(
            "Full backup: read {uncompressed} bytes, stored {uncompressed} bytes ({compressed} compressed)"
        ),
    }
    let info = BackupInfo {
        start_lsn,
        delta: plan.as_ref().map(|p| DeltaFields {
            lsn: p.base.lsn,
            from: p.base.name.clone(),
            full_name: p.base.full_name.clone(),
            count: p.base.count,
        }),
        finish_lsn,
        pg_version: server.version,
        system_identifier: server.system_identifier,
        uncompressed_size: uncompressed,
        compressed_size: compressed,
        data_catalog_size: catalog,
        spec: tablespaces::spec_json(&pgdata, &tablespaces),
        user_data: opts.user_data,
        start_time,
        finish_time: sentinel::round_up_micros(SystemTime::now()),
        hostname: hostname(),
        data_dir: server.data_dir.display().to_string(),
        is_permanent: opts.permanent,
        files_metadata_disabled: !opts.files_metadata,
        corrupt_pages,
    };
    if let Some(why) = timeline_change {
        return Err(standby::unfinalised(
            &name,
            &why,
            &layout::metadata_key(&name),
            &sentinel::metadata_json(&info),
            &layout::sentinel_key(&name),
            &sentinel::sentinel_json(&info),
        ));
    }
    // A permanent delta keeps its chain: the base and its ancestors are
    // marked first (WAL-G, same order).
    if let (Some(p), true) = (&plan, opts.permanent) {
        for b in super::mark::chain_to_mark(&storage, &p.base.name)? {
            super::mark::set_permanent(&storage, &b, true)?;
        }
    }
    finalise(storage.as_ref(), &name, &info, progress)
}

/// The end of every backup-push, local or remote: `metadata.json`, then
/// the sentinel, last, for that is what makes the backup exist.
pub(super) fn finalise(
    storage: &dyn crate::storage::Storage,
    name: &str,
    info: &BackupInfo,
    progress: Progress,
) -> Result<()> {
    storage.put(
        &layout::metadata_key(name),
        sentinel::metadata_json(info).as_bytes(),
    )?;
    storage.put(
        &layout::sentinel_key(name),
        sentinel::sentinel_json(info).as_bytes(),
    )?;
    progress.finish();
    log::info!(
        "Wrote backup with name {name} to storage {}",
        storage.location()
    );
    log::debug!("peak memory (RSS) of backup-push: {} KiB", peak_rss_kib());
    Ok(())
}

/// This process's peak resident set size in KiB: `VmHWM` of this
/// program's own memory. getrusage's `ru_maxrss` is not used: Linux
/// carries it across exec, so it also counts what the parent held when it
/// forked us (a test harness or a script can hold far more than we do).
pub(super) fn peak_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The session holding the backup during the copy: pinged by the alive
/// check, or left idle when the check is off.
enum Held {
    Checked(AliveCheck),
    Idle(Client),
}

impl Held {
    fn finish(self) -> Result<Client> {
        match self {
            Held::Checked(a) => a.finish(),
            Held::Idle(pg) => Ok(pg),
        }
    }
}

fn two_strings(rows: &[crate::pg::Row], what: &str) -> Result<(String, String)> {
    let row = rows
        .first()
        .ok_or_else(|| Error::Other(format!("{what}: the server returned no row")))?;
    Ok((
        row.get_str(0)?.unwrap_or("").to_string(),
        row.get_str(1)?.unwrap_or("").to_string(),
    ))
}

pub(super) fn lsn(text: &str) -> Result<u64> {
    layout::parse_lsn(text)
        .ok_or_else(|| Error::Other(format!("the server returned '{text}', which is not an LSN")))
}

pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What the backup needs to know about the server before it starts.
struct Server {
    version: i64,
    data_dir: PathBuf,
    system_identifier: Option<u64>,
    in_recovery: bool,
    wal_segment_bytes: u64,
    archive_mode: String,
}

impl Server {
    fn query(pg: &mut Client) -> Result<Server> {
        let rows = pg.query(
            "SELECT current_setting('server_version_num'), current_setting('data_directory'), \
                    (SELECT system_identifier FROM pg_control_system())::text, \
                    pg_is_in_recovery(), \
                    current_setting('wal_segment_size', true), \
                    current_setting('archive_mode')",
        )?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Other("reading the server's settings: no row".into()))?;
        let version: i64 = row.get_str(0)?.unwrap_or("").parse().unwrap_or(0);
        let data_dir = PathBuf::from(row.get_str(1)?.unwrap_or(""));
        // bigint on the server: WAL-G reads it as int64 and reinterprets.
        let system_identifier = row
            .get_str(2)?
            .and_then(|s| s.parse::<i64>().ok())
            .map(|n| n as u64);
        let in_recovery = row.get_bool(3)?.unwrap_or(false);
        let wal_segment_bytes = parse_size(row.get_str(4)?.unwrap_or(""));
        let archive_mode = row.get_str(5)?.unwrap_or("").to_string();
        Ok(Server {
            version,
            data_dir: data_dir.canonicalize().unwrap_or(data_dir),
            system_identifier,
            in_recovery,
            wal_segment_bytes,
            archive_mode,
        })
    }

    fn check(&self, pgdata: &Path, wal_size_mb: u64) -> Result<()> {
        if self.version < 100000 {
            return Err(Error::Other(format!(
                "the server is PostgreSQL {} (server_version_num); backups of versions older than 10 are not built yet in walden",
                self.version
            )));
        }
        if self.data_dir != pgdata {
            return Err(Error::Usage(format!(
                "'{}' is not the data directory of the server walden connected to (its data_directory is '{}'); \
                 check PGDATA and PGHOST/PGPORT",
                pgdata.display(),
                self.data_dir.display()
            )));
        }
        if self.wal_segment_bytes != 0 && self.wal_segment_bytes != wal_size_mb << 20 {
            return Err(Error::Usage(format!(
                "the server's WAL segments are {} bytes but WALG_PG_WAL_SIZE is {wal_size_mb} (MiB); set WALG_PG_WAL_SIZE={}",
                self.wal_segment_bytes,
                self.wal_segment_bytes >> 20
            )));
        }
        // A standby's WAL is archived by its primary (WAL-G skips this
        // check there too).
        if !self.in_recovery && !matches!(self.archive_mode.as_str(), "on" | "always") {
            // WAL-G warns too: the backup is taken, but restoring it needs
            // the WAL from its start to its end from somewhere else.
            log::warn!(
                "archive_mode is '{}': this backup can only be restored with the WAL written during it, \
                 which is not being archived; set archive_mode = on and archive_command = 'walden wal-push %p'",
                self.archive_mode
            );
        }
        Ok(())
    }
}

/// `wal_segment_size` as `SHOW` prints it: `16MB`, `1GB`.
fn parse_size(text: &str) -> u64 {
    let t = text.trim();
    let (digits, mult) = if let Some(n) = t.strip_suffix("GB") {
        (n, 1u64 << 30)
    } else if let Some(n) = t.strip_suffix("MB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("kB") {
        (n, 1 << 10)
    } else {
        (t, 1)
    };
    digits.trim().parse::<u64>().map_or(0, |n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_show_prints_them() {
        assert_eq!(parse_size("16MB"), 16 << 20);
        assert_eq!(parse_size("1GB"), 1 << 30);
    }
}
