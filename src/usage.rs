//! The command table: every WAL-G PostgreSQL command name, a line about
//! it, its usage text, and whether walden has it yet.

pub struct Command {
    pub name: &'static str,
    pub summary: &'static str,
    pub usage: &'static str,
    pub built: bool,
    /// Hidden commands (WAL-G's `wal-prefetch`) are not listed.
    pub hidden: bool,
}

const fn cmd(
    name: &'static str,
    summary: &'static str,
    usage: &'static str,
    built: bool,
) -> Command {
    Command {
        name,
        summary,
        usage,
        built,
        hidden: false,
    }
}

pub const COMMANDS: &[Command] = &[
    cmd(
        "backup-push",
        "make a base backup",
        "walden backup-push [PGDATA] [--permanent] [--full] [--delta-from-name NAME]\n                   [--delta-from-user-data JSON] [--add-user-data JSON]\n                   [--without-files-metadata] [--verify] [--store-all-corrupt]\n                   [--database-composer | --rating-composer | --copy-composer]\n       walden backup-push [--pghost HOST[,HOST...]] [--permanent] [--full]\n                   [--delta-from-name NAME] [--delta-from-user-data JSON]\n                   [--add-user-data JSON] [--without-files-metadata] [--verify]\n\n  Take a full or delta backup of the local data directory PGDATA (the argument or the\n  PGDATA setting) through the server PGHOST/PGPORT, into basebackups_005/ in\n  WAL-G's layout, files_metadata.json included; the sentinel is written last.\n  --permanent marks it permanent; user data (or WALG_SENTINEL_USER_DATA) must\n  be JSON. WALG_UPLOAD_DISK_CONCURRENCY partitions are filled at once;\n  WALG_DISK_RATE_LIMIT / WALG_NETWORK_RATE_LIMIT (bytes/s),\n  WALG_ALIVE_CHECK_INTERVAL and WALG_STOP_BACKUP_TIMEOUT apply. Each\n  database's relations are recorded for backup-fetch --restore-only unless\n  WALG_DISABLE_PARTIAL_RESTORE=true.\n  Tablespaces are included; against a standby the backup is taken there,\n  and a timeline change meanwhile leaves it unfinalised (the error says how\n  to finalise it). Deltas: WALG_DELTA_MAX_STEPS (default 0: always full)\n  deltas between full backups, against the latest backup or, with\n  WALG_DELTA_ORIGIN=LATEST_FULL, its full backup; --delta-from-name\n  (WALG_DELTA_FROM_NAME) or --delta-from-user-data (WALG_DELTA_FROM_USER_DATA)\n  choose the base; --full forces a full backup. Unchanged files are skipped,\n  changed relation files stored as WAL-G increments of their changed pages\n  (on PostgreSQL 17+ with summarize_wal=on, found from the server's WAL\n  summaries instead of a page scan; WALDEN_DELTA_SUMMARIES=off scans).\n  --verify (WALG_VERIFY_PAGE_CHECKSUMS) checks every page's checksum as it\n  is read (in deltas, the pages of increments too) and records corrupt blocks\n  in files_metadata.json (at most 10 per file unless --store-all-corrupt).\n  Composers (flags OR-ed with WALG_USE_DATABASE_COMPOSER,\n  WALG_USE_RATING_COMPOSER, WALG_USE_COPY_COMPOSER; copy > database > rating):\n  --database-composer (-b) packs each database directory's files in tars of\n  their own; --rating-composer (-r) groups files by their relation's update\n  count from pg_stat_all_tables (UpdatesCount in files_metadata.json);\n  --copy-composer (-c) takes a full backup that copies the previous full\n  backup's tars whose files all kept their mtime (copy_<k>.tar.*, by S3\n  CopyObject where it can). Composers cannot be combined with\n  --without-files-metadata. WALG_USE_WAL_DELTA is accepted: walden writes\n  and reads no WAL delta files (one INFO line says so).\n  Remote: with no PGDATA the backup is streamed over a replication connection\n  (BASE_BACKUP; the user needs REPLICATION) from PGHOST, or --pghost: in a\n  list (h1,h2) the first server that answers is used; socket, TCP, SCRAM\n  and PGSSLMODE as for any connection. Same layout, sentinel, user data and\n  --permanent; tablespaces included; WALG_DISK_RATE_LIMIT becomes the\n  server's MAX_RATE. Remote deltas (same settings as local ones) need\n  PostgreSQL 17+ with summarize_wal=on: BASE_BACKUP INCREMENTAL against a\n  manifest made from the base's objects (any walden or WAL-G backup), its\n  INCREMENTAL files stored as WAL-G increments. Otherwise --delta-from-* is\n  refused and WALG_DELTA_MAX_STEPS alone gives a full backup.",
        true,
    ),
    cmd(
        "backup-fetch",
        "restore a base backup",
        concat!(
            "walden backup-fetch DEST NAME|LATEST [--recovery-target-time T | --recovery-target-lsn L |\n",
            "    --recovery-target-name N | --recovery-target immediate] [--standby] [--restore-spec FILE]\n",
            "    [--restore-only DB[,DB/TABLE,DB/SCHEMA.TABLE,...]]\n",
            "    [--reverse-unpack [--skip-redundant-tars]]\n",
            "walden backup-fetch DEST --target-user-data JSON [recovery options]\n\n",
            "  Restore backup NAME (LATEST: the newest finished one; --target-user-data:\n",
            "  the one whose user data equals JSON) into DEST, which must not exist or be\n",
            "  empty. Data tars are extracted WALG_DOWNLOAD_CONCURRENCY at a time,\n",
            "  pg_control last. Members that would land outside DEST are refused.\n",
            "  Tablespaces go back to their recorded directories, or where FILE (WAL-G's\n",
            "  spec JSON) says; each must be absent or empty.\n\n",
            "  With a recovery target (T as '2026-12-05 14:30:00+01', L as 0/3000060, N a\n",
            "  restore point), LATEST is the newest backup that finished before it, and\n",
            "  recovery.signal (standby.signal with --standby) and a restore_command\n",
            "  calling this walden go into DEST: starting PostgreSQL is the whole restore.\n",
            "  Settings from the environment are not written; the log names them.\n\n",
            "  --restore-only (experimental, as in WAL-G): restore only the databases\n",
            "  and tables named (comma-separated, CSV quoting, '*' matches any run;\n",
            "  TABLE alone means public.TABLE), plus every system catalog, global/ and\n",
            "  the databases template0, template1, postgres. A table comes with its\n",
            "  partitions, indexes and TOAST. Needs the database names backup-push\n",
            "  stores (not with WALG_DISABLE_PARTIAL_RESTORE=true); a name matching\n",
            "  nothing is an error. Drop what was left out after recovery.\n",
            "  A delta backup is restored with its chain (DeltaFrom links back to the full\n",
            "  backup; a missing link, a damaged increment or a missing files_metadata.json\n",
            "  is an error naming the object): oldest first by default, each delta\n",
            "  patching pages; --reverse-unpack (WALG_USE_REVERSE_UNPACK) writes the newest\n",
            "  first and fills only missing pages from older backups; with it\n",
            "  --skip-redundant-tars (WALG_SKIP_REDUNDANT_TARS) downloads no tar whose files\n",
            "  are all complete. Both give the same bytes; tars holding nothing needed are\n",
            "  never downloaded.",
        ),
        true,
    ),
    cmd(
        "backup-list",
        "list base backups",
        "walden backup-list [--pretty] [--json] [--detail]\n\n  List the finished backups (those with a sentinel), oldest first, in WAL-G's\n  formats: a tab-aligned table, a boxed table with --pretty, a JSON array with\n  --json (indented with --pretty). --detail adds each backup's metadata.json\n  (start and finish time, host, data directory, version, LSNs, permanence)\n  and sorts by start time.",
        true,
    ),
    cmd(
        "backup-mark",
        "mark a backup permanent or not",
        "walden backup-mark NAME [-i|--impermanent]\n\n  Mark backup NAME permanent (delete keeps it), with every base a delta backup\n  depends on. -i marks NAME impermanent again, refused while a permanent delta\n  backup depends on it. Only metadata.json changes, as with WAL-G.",
        true,
    ),
    cmd(
        "backup-verify",
        "check that a backup can be restored, without restoring it",
        "walden backup-verify NAME|LATEST|--all [--json]\n\n  Download every object of the backup (LATEST: the newest; --all: every one),\n  decrypt, decompress and parse every tar with nothing written to disk, and\n  check: sentinel and metadata.json agree; every tar partition and every file\n  of files_metadata.json is there, read whole; pg_control (CRC) and\n  backup_label (start LSN) are there; every page's checksum where pg_control\n  says the cluster has them; the WAL from the start to the finish segment is\n  in wal_005/; a delta's bases verify too and its increments decode, their\n  pages checked at their block numbers. Prints OK or each problem\n  with the object it concerns (--json: a JSON array); exit 0 only when all\n  holds. WALG_DOWNLOAD_CONCURRENCY tars at a time; see walden-backup-verify(1).",
        true,
    ),
    cmd(
        "backup-show",
        "show one backup's sentinel and metadata",
        "walden backup-show NAME|LATEST [--json]\n\n  Print what the sentinel and metadata.json of backup NAME (LATEST: the newest)\n  record, as aligned 'key: value' lines, or with --json as one JSON object\n  with backup-list --detail --json's keys and the sentinel's own (delta base,\n  tablespaces, files metadata); see walden-backup-show(1).",
        true,
    ),
    cmd(
        "delete",
        "delete old backups and WAL",
        concat!(
            "walden delete retain [FULL|FIND_FULL] N [--after TIME|NAME] | retain --window D\n",
            "              before [FIND_FULL] NAME|TIME | everything [FORCE]\n",
            "              target [FIND_FULL] NAME|LATEST | target --target-user-data JSON\n",
            "              garbage [ARCHIVES|BACKUPS]     [--confirm] [--use-sentinel-time]\n\n",
            "  Delete backups and WAL by WAL-G's rules: everything older than a target\n",
            "  backup goes (retain: the N-th newest; before: NAME or the first at TIME;\n",
            "  garbage: the oldest non-permanent one), except permanent backups, the WAL\n",
            "  from their start to their end, and the delta bases of kept backups.\n",
            "  retain --window D (or WALDEN_RETENTION_WINDOW; 7d, 36h, 1w) keeps what a\n",
            "  restore to any moment of the last D needs. everything: every object under\n",
            "  the storage root, as WAL-G's. Without --confirm nothing is deleted: the\n",
            "  objects that would go are listed. Sentinels go first, so an interrupted\n",
            "  delete leaves no backup that looks whole; rerun to finish."
        ),
        true,
    ),
    cmd(
        "copy",
        "copy backups between storages",
        concat!(
            "walden copy --from CONFIG --to CONFIG [--backup-name NAME|LATEST] [--without-history]\n\n",
            "  Copy objects as they are stored (no decompression or decryption) from the\n",
            "  storage CONFIG --from describes to the one --to describes; each file must\n",
            "  name its storage (WALG_FILE_PREFIX, WALG_S3_PREFIX), other settings it lacks\n",
            "  come from the environment. Without --backup-name: every object. With it:\n",
            "  that backup, the delta bases it needs, .history files and the WAL from its\n",
            "  start onward (--without-history: only up to its end). Data goes first,\n",
            "  sentinels last; objects the destination has with the same size are\n",
            "  skipped, so a rerun finishes an interrupted copy. Within one S3 service\n",
            "  the copy is server-side. WALG_UPLOAD_CONCURRENCY objects at once (8).",
        ),
        true,
    ),
    cmd(
        "wal-push",
        "archive one WAL file (archive_command)",
        "walden wal-push PATH\n\n  Compress, encrypt and upload PATH to wal_005/ in storage; other .ready\n  segments next to it are uploaded in parallel. Exits 0 only once the\n  object is durable. For archive_command = 'walden wal-push %p'.",
        true,
    ),
    cmd(
        "wal-fetch",
        "restore one WAL file (restore_command)",
        "walden wal-fetch NAME DEST\n\n  Download WAL file NAME from storage to DEST, then prefetch the next\n  WALG_DOWNLOAD_CONCURRENCY segments in the background. Exit 74 when NAME\n  is not in storage. For restore_command = 'walden wal-fetch %f %p'.",
        true,
    ),
    Command {
        name: "wal-prefetch",
        summary: "internal: prefetch segments after NAME",
        usage: "walden wal-prefetch NAME LOCATION",
        built: true,
        hidden: true,
    },
    Command {
        name: "pg-info",
        summary: "internal: connect with the PG* settings and show the server",
        usage: "walden pg-info\n\n  Connect as the backup commands will (PGHOST, PGPORT, PGUSER, PGSSLMODE...)\n  and print the server's version, system identifier and recovery state.",
        built: true,
        hidden: true,
    },
    cmd(
        "wal-show",
        "show WAL segments and timelines in storage",
        "walden wal-show [--without-backups] [--detailed-json]\n\n  One listing of wal_005/: per timeline its parent and switch point (from its\n  .history file), first and last segment, range size, segment count, status\n  (OK, or LOST_SEGMENTS when segments are missing inside the range) and the\n  backups taken on it. --detailed-json prints WAL-G's JSON array, with the\n  missing segments and the backups' details; see walden-wal-show(1).",
        true,
    ),
    cmd(
        "wal-verify",
        "check WAL integrity and timelines",
        "walden wal-verify integrity|timeline... [--json] [--timeline N --lsn LSN]\n                  [--backup-name NAME]\n\n  integrity: every segment from the oldest non-permanent backup's start (or\n  segment 1) up to the cluster's current one is in storage, following timeline\n  switches: FOUND, MISSING_DELAYED (WALG_INTEGRITY_MAX_DELAYED_WALS newest),\n  MISSING_UPLOADING (the next WALG_UPLOAD_CONCURRENCY), MISSING_LOST; status\n  OK, WARNING or FAILURE. timeline: the cluster is on the highest timeline in\n  storage. Connects to PostgreSQL (PGHOST...) unless --timeline/--lsn give\n  the position; --backup-name walks down to that backup. Exit 0 whatever the\n  status.",
        true,
    ),
    cmd(
        "wal-receive",
        "stream WAL over the replication protocol",
        "walden wal-receive\n\n  Stream WAL from PostgreSQL (PGHOST...; the user needs REPLICATION) through\n  the physical slot WALG_SLOTNAME (default walg, [0-9A-Za-z_]), created when\n  missing, and store each completed segment in wal_005/ like wal-push. The\n  server hears as flushed only what storage holds. Follows timeline switches\n  (storing .history files), reconnects after a server restart, and on SIGTERM\n  or SIGINT stores the current segment as <name>.partial and exits 0.",
        true,
    ),
    cmd(
        "wal-restore",
        "restore missing WAL for pg_rewind",
        "walden wal-restore TARGET-PGDATA SOURCE-PGDATA\n\n  Before pg_rewind -D TARGET-PGDATA --source-pgdata=SOURCE-PGDATA (both local,\n  stopped): from the last point the two clusters' timeline histories share\n  (pg_control and pg_wal/*.history, or storage's), fetch every WAL segment\n  missing from SOURCE's pg_wal up to its newest one, and from TARGET's up to\n  its newest one; then walks TARGET's WAL back from the split to the last\n  checkpoint before it (fetching the segments pg_wal lacks) and puts the\n  segments from that checkpoint's redo into SOURCE's pg_wal, so that\n  pg_rewind and the rewound server need no restore_command. Refuses clusters of different systems or on the same\n  timeline; a segment storage lacks is logged. See walden-wal-restore(1).",
        true,
    ),
    cmd(
        "daemon",
        "serve wal-push/wal-fetch over a socket",
        "walden daemon SOCKET\n\n  WAL-G's daemon: listen on the UNIX socket SOCKET (an old socket there is\n  replaced) and serve wal-push and wal-fetch to WAL-G's walg-daemon-client and\n  the walg_archive archive library, in WAL-G's protocol. Storage is opened\n  once and its connections stay warm between segments. PGDATA is required:\n  pushed names are files of $PGDATA/pg_wal, fetch destinations are relative\n  to PGDATA. At most WALG_UPLOAD_CONCURRENCY requests run at once; each\n  must end within WALG_DAEMON_WAL_UPLOAD_TIMEOUT (default 60s) or is\n  answered E. NOTIFY_SOCKET gets WATCHDOG=1 every 30 s. SIGTERM or SIGINT\n  finish the requests in progress, remove SOCKET and exit 0.\n\n  archive_command = 'walg-daemon-client SOCKET wal-push %f'\n  restore_command = 'walg-daemon-client SOCKET wal-fetch %f %p'",
        true,
    ),
    cmd(
        "catchup-push",
        "incremental catch-up backup",
        concat!(
            "walden catchup-push PGDATA --from-lsn LSN\n\n",
            "  On the primary: a backup of PGDATA (through the server PGHOST/PGPORT) into\n",
            "  catchup_005/ in WAL-G's layout, for a stopped replica whose position is\n",
            "  LSN (its 'Latest checkpoint's REDO location' from pg_controldata; decimal\n",
            "  as WAL-G takes it, or X/Y). Relation files are stored as increments of\n",
            "  their pages at or after LSN, other files whole; postgresql.conf,\n",
            "  postgresql.auto.conf and pg_hba.conf are left out. Apply it with\n",
            "  catchup-fetch.",
        ),
        true,
    ),
    cmd(
        "catchup-fetch",
        "apply a catch-up backup",
        concat!(
            "walden catchup-fetch PGDATA NAME|LATEST [--use-new-unwrap]\n\n",
            "  Apply catch-up backup NAME (LATEST: the newest in catchup_005/) to the\n",
            "  stopped replica's data directory PGDATA: increments patched in place, other\n",
            "  files replaced, new ones created, files the primary no longer has removed,\n",
            "  backup_label written and pg_control last. Refused if the replica is running,\n",
            "  of another cluster, or behind the catch-up's LSN. Until it ends pg_control\n",
            "  is set aside, so a half caught-up replica cannot start; run it again after\n",
            "  a failure. The replica keeps its configuration, standby.signal and\n",
            "  tablespace links; start it as a standby of the primary.\n",
            "  --use-new-unwrap (WAL-G's) is accepted and changes nothing.",
        ),
        true,
    ),
    cmd(
        "catchup-list",
        "list catch-up backups",
        "walden catchup-list [--pretty] [--json] [--detail]\n\n  The catch-up backups in catchup_005/, in backup-list's formats.",
        true,
    ),
    cmd(
        "catchup-send",
        "send a catch-up backup over TCP",
        concat!(
            "walden catchup-send PGDATA HOST:PORT\n\n",
            "  On the primary: connect to catchup-receive (walden's or WAL-G's) at\n",
            "  HOST:PORT and, inside a backup through the server PGHOST/PGPORT, send the\n",
            "  stopped replica every file changed since its position: relation files as\n",
            "  their pages at or after it, others whole (postgresql.conf,\n",
            "  postgresql.auto.conf, pg_hba.conf and pg_ident.conf are left to the\n",
            "  replica), the files\n",
            "  to delete, then backup_label, an empty tablespace_map and pg_control. Same\n",
            "  system identifier and timeline required. Tablespaces are sent through the\n",
            "  pg_tblspc links into the replica's own; one the replica lacks is refused.\n",
            "  With WALG_LIBSODIUM_KEY set (the same on both sides) the connection is\n",
            "  encrypted in walden's framing (WAL-G's encrypted stream cannot work, W23).",
        ),
        true,
    ),
    cmd(
        "catchup-receive",
        "receive a catch-up backup over TCP",
        concat!(
            "walden catchup-receive PGDATA PORT\n\n",
            "  On the stopped replica: listen on TCP PORT for one catchup-send (walden's\n",
            "  or WAL-G's), tell it the replica's pg_control position and files, then\n",
            "  write what it sends into PGDATA: changed pages patched in, other files\n",
            "  replaced or created, files the primary no longer has removed,\n",
            "  backup_label, then pg_control once everything is synced; tablespace files\n",
            "  through the replica's pg_tblspc links. Names the protocol never carries\n",
            "  (pg_wal, signal and configuration files, ...) are refused; messages are\n",
            "  bounded in size and memory. WAL-G's protocol: Go gob messages\n",
            "  in an lz4 stream, in the clear (use a trusted network or a tunnel), or with\n",
            "  WALG_LIBSODIUM_KEY encrypted in walden's framing (same key on both sides).\n",
            "  Start the replica afterwards as a standby.",
        ),
        true,
    ),
    cmd(
        "pgbackrest",
        "read pgBackRest repositories: backup-list, backup-fetch, wal-fetch, wal-show",
        concat!(
            "walden pgbackrest backup-list [--pretty] [--json] [--detail]\n",
            "walden pgbackrest backup-fetch DEST LABEL|LATEST [--tablespace-map NAME=DIR]...\n",
            "    [--tablespace-map-all DIR] [--recovery-target-time T | --recovery-target-lsn L |\n",
            "    --recovery-target-name N | --recovery-target immediate] [--standby]\n",
            "walden pgbackrest wal-fetch NAME DEST\n",
            "walden pgbackrest wal-show [--json]\n\n",
            "  Read a pgBackRest 2.x repository (the storage prefix is its root, repo1-path;\n",
            "  the stanza is PGBACKREST_STANZA, default main; an encrypted repository's\n",
            "  passphrase PGBACKREST_REPO1_CIPHER_PASS). backup-list: every backup of\n",
            "  backup.info with its type (full/diff/incr), in backup-list's formats;\n",
            "  --detail adds prior, references, times, WAL stop, LSNs, sizes, compression,\n",
            "  bundle and block incremental from each manifest. backup-fetch: full, diff\n",
            "  or incr backups, bundled or not, aes-256-cbc or not, gz/lz4/zst/bz2/none,\n",
            "  into an empty DEST, each file checked against the manifest's SHA-1,\n",
            "  pg_control last; tablespaces moved with pgBackRest's own options; recovery\n",
            "  targets as backup-fetch's, restore_command = walden pgbackrest wal-fetch.\n",
            "  wal-fetch: for restore_command; checks the SHA-1 in the stored name; exit 74\n",
            "  when absent. wal-show: per archive id and timeline, ranges and holes.\n",
            "  The pgBackRest 2.45 beta block-incremental format is refused.",
        ),
        true,
    ),
    cmd(
        "st",
        "storage tools: ls, get, put, cat, rm, check",
        "walden st ls [-r] [-a] [PATH]\n\
walden st get PATH DEST [--no-decrypt] [--no-decompress]\n\
walden st put SRC PATH [-f] [--no-compress] [--no-encrypt]\n\
walden st cat PATH [--decrypt] [--decompress]\n\
walden st rm PATH\n\
walden st check read [PATH...] | write\n\n\
  ls     list objects under PATH (recursively with -r): type, size, time, name;\n\
         -a adds what killed writes left: temp objects, unfinished S3 uploads (tmp)\n\
  get    download PATH to DEST, decrypting and decompressing by its extension\n\
  put    upload SRC as PATH plus the compression extension (.lz4 by default)\n\
  cat    write PATH to stdout, raw unless --decrypt/--decompress\n\
  rm     delete PATH, or every object under PATH/ when it is a folder\n\
         (with the temp objects of unfinished writes in it)\n\
  check  read: list the storage and read the given objects; write: store,\n\
         read back and delete a probe object",
        true,
    ),
    cmd("flags", "list the setting flags", "walden flags", true),
];

pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

pub fn overview() -> String {
    let mut out = String::from(
        "walden: PostgreSQL backups and WAL archiving, compatible with WAL-G\n\n\
Usage: walden [--config FILE] [--SETTING-NAME=VALUE...] COMMAND [ARGS]\n\
       walden help COMMAND | walden COMMAND --help | walden --version\n\nCommands:\n",
    );
    for c in COMMANDS.iter().filter(|c| !c.hidden) {
        let note = if c.built { "" } else { " (not built yet)" };
        out.push_str(&format!("  {:<16} {}{}\n", c.name, c.summary, note));
    }
    out.push_str(
        "\nSettings come from WALG_*/WALE_*/AWS_*/PG* environment variables or the\n\
config file (--config, WALG_CONFIG_PATH, ~/.walg.json). See walden(1).\n",
    );
    out
}

pub fn command_help(c: &Command) -> String {
    format!("walden {}: {}\n\nUsage: {}\n", c.name, c.summary, c.usage)
}
