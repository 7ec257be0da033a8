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
        "walden backup-push [PGDATA] [--permanent] [--full] [--add-user-data JSON]\n                   [--without-files-metadata]\n\n  Take a full backup of the local data directory PGDATA (the argument or the\n  PGDATA setting) through the server PGHOST/PGPORT, into basebackups_005/ in\n  WAL-G's layout, files_metadata.json included; the sentinel is written last.\n  --permanent marks it permanent; user data (or WALG_SENTINEL_USER_DATA) must\n  be JSON. WALG_UPLOAD_DISK_CONCURRENCY partitions are filled at once;\n  WALG_DISK_RATE_LIMIT / WALG_NETWORK_RATE_LIMIT (bytes/s),\n  WALG_ALIVE_CHECK_INTERVAL and WALG_STOP_BACKUP_TIMEOUT apply. Delta,\n  remote and standby backups and tablespaces are not built yet.",
        true,
    ),
    cmd(
        "backup-fetch",
        "restore a base backup",
        "walden backup-fetch DEST NAME|LATEST\n\n  Restore backup NAME (LATEST: the newest finished one) into DEST, which must\n  not exist or be empty. Members that would land outside DEST are refused.\n  Add recovery.signal and restore_command = 'walden wal-fetch %f %p' to replay.",
        true,
    ),
    cmd("backup-list", "list base backups", "walden backup-list [--detail] [--json] [--pretty]", false),
    cmd("backup-mark", "mark a backup permanent or not", "walden backup-mark NAME [-i]", false),
    cmd("delete", "delete old backups and WAL", "walden delete retain|before|everything|target|garbage ...", false),
    cmd("copy", "copy backups between storages", "walden copy --from CONFIG --to CONFIG", false),
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
    cmd("wal-show", "show WAL segments and timelines in storage", "walden wal-show [--detailed-json]", false),
    cmd("wal-verify", "check WAL integrity and timelines", "walden wal-verify integrity|timeline [--json]", false),
    cmd("wal-receive", "stream WAL over the replication protocol", "walden wal-receive", false),
    cmd("wal-restore", "restore missing WAL for pg_rewind", "walden wal-restore TARGET SOURCE", false),
    cmd("daemon", "serve wal-push/wal-fetch over a socket", "walden daemon SOCKET", false),
    cmd("catchup-push", "incremental catch-up backup", "walden catchup-push PGDATA --from-lsn LSN", false),
    cmd("catchup-fetch", "apply a catch-up backup", "walden catchup-fetch PGDATA NAME", false),
    cmd("catchup-list", "list catch-up backups", "walden catchup-list", false),
    cmd("catchup-send", "send a catch-up backup over TCP", "walden catchup-send PGDATA HOST:PORT", false),
    cmd("catchup-receive", "receive a catch-up backup over TCP", "walden catchup-receive PGDATA PORT", false),
    cmd("pgbackrest", "read pgBackRest repositories", "walden pgbackrest backup-list|backup-fetch|wal-fetch|wal-show", false),
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
         -a adds the temp objects of writes that never finished (type tmp)\n\
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
