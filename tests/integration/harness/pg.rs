//! A real PostgreSQL server per test: Debian's 15 by default, or another
//! major's binaries fetched by scripts/pg-versions.sh (`PgBuilder::major`).
//! Client tools (psql, pgbench, pg_basebackup) are always Debian's 15,
//! which talk to every major the tests use. PostgreSQL refuses to run
//! as root, so when the tests run as root every server-side command goes
//! through `runuser -u postgres`; client tools (psql, pgbench) connect over
//! the unix socket with trust auth and run as whoever we are.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::tmp::{chown_postgres, free_port, running_as_root, TempDir};
use super::walden::{scrub_env, walden_bin_for_postgres};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The server binaries of PostgreSQL `major`: Debian's for 15, otherwise
/// the cache scripts/pg-versions.sh fills (`WALDEN_PG_CACHE`, else
/// /var/cache/walden/pg as root, else ~/.cache/walden/pg). Panics with
/// what to run when they are missing: a matrix test must not pass by not
/// running.
pub fn server_bin(major: u32) -> PathBuf {
    if major == 15 {
        return PathBuf::from(PG_BIN);
    }
    let cache = match std::env::var_os("WALDEN_PG_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ if running_as_root() => PathBuf::from("/var/cache/walden/pg"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/walden/pg"),
    };
    let bin = cache.join(major.to_string()).join("bin");
    if !bin.join("postgres").is_file() {
        panic!(
            "PostgreSQL {major} binaries not found in {}; run scripts/pg-versions.sh (scripts/test.sh does)",
            bin.display()
        );
    }
    bin
}

pub struct PgCluster {
    data: PathBuf,
    /// Directory of initdb, pg_ctl and postgres for this cluster's major.
    bin: PathBuf,
    port: u16,
    running: bool,
    /// Environment of the postmaster, hence of archive_command/restore_command.
    server_env: Vec<(String, String)>,
    walden: PathBuf,
    /// Socket, server log, and (for fresh clusters) the data directory.
    /// Declared last so it is removed only after the server is stopped.
    tmp: TempDir,
}

/// Options for a cluster; `PgCluster::start` and `start_restored` are shortcuts.
///
/// Configuration values are written verbatim, so callers quote strings
/// themselves. `{walden}` inside a value is replaced by a walden binary path
/// the postgres user can execute, e.g.
/// `.conf("archive_command", "'{walden} wal-push %p'")`.
#[derive(Default)]
pub struct PgBuilder {
    conf: Vec<(String, String)>,
    env: Vec<(String, String)>,
    hba: Vec<String>,
    major: Option<u32>,
}

impl PgBuilder {
    /// Run this PostgreSQL major's server (13–18) instead of Debian's 15.
    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }

    fn bin(&self) -> PathBuf {
        server_bin(self.major.unwrap_or(15))
    }

    pub fn conf(mut self, key: &str, value: &str) -> Self {
        self.conf.push((key.to_string(), value.to_string()));
        self
    }

    pub fn confs(mut self, kv: &[(&str, &str)]) -> Self {
        self.conf
            .extend(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Environment for the server process, e.g. `S3Server::env(prefix)` so
    /// that archive_command finds its storage without a config file.
    pub fn env<I, K, V>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(it.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// A pg_hba.conf line placed before initdb's trust lines, so it wins
    /// (e.g. `host all alice 127.0.0.1/32 scram-sha-256`).
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }

    /// initdb a new cluster in a fresh temp dir and start it.
    pub fn start(self) -> PgCluster {
        let tmp = TempDir::new("pg");
        tmp.chown_postgres();
        let data = tmp.join("data");
        let bin = self.bin();
        let mut pg = PgCluster::new(tmp, data, bin, self.env);
        let out = pg
            .server_cmd("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "--data-checksums",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            // Only skips initdb's final flush; the server's fsync stays on.
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        check(&out, "initdb");
        if !self.hba.is_empty() {
            let path = pg.data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&path).expect("read pg_hba.conf");
            std::fs::write(&path, format!("{}\n{old}", self.hba.join("\n")))
                .expect("write pg_hba.conf");
        }
        pg.write_conf(&self.conf);
        pg.start_server();
        pg
    }

    /// Start a server on a data directory a test restored (e.g. with
    /// backup-fetch). The directory stays owned by the caller and is not
    /// removed on drop; it is chowned to postgres and chmod 700 because
    /// PostgreSQL insists on both. Port and socket settings are appended to
    /// its postgresql.conf; write recovery.signal/standby.signal yourself.
    pub fn start_restored(self, data_dir: PathBuf) -> PgCluster {
        let tmp = TempDir::new("pgr");
        tmp.chown_postgres();
        chown_postgres(&data_dir);
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700 restored data dir");
        let bin = self.bin();
        let mut pg = PgCluster::new(tmp, data_dir, bin, self.env);
        pg.write_conf(&self.conf);
        pg.start_server();
        pg
    }
}

impl PgCluster {
    pub fn builder() -> PgBuilder {
        PgBuilder::default()
    }

    pub fn start(extra_conf: &[(&str, &str)]) -> PgCluster {
        PgCluster::builder().confs(extra_conf).start()
    }

    pub fn start_restored(data_dir: PathBuf, extra_conf: &[(&str, &str)]) -> PgCluster {
        PgCluster::builder()
            .confs(extra_conf)
            .start_restored(data_dir)
    }

    fn new(
        tmp: TempDir,
        data: PathBuf,
        bin: PathBuf,
        server_env: Vec<(String, String)>,
    ) -> PgCluster {
        let walden = walden_bin_for_postgres(tmp.path());
        PgCluster {
            data,
            bin,
            port: free_port(),
            running: false,
            server_env,
            walden,
            tmp,
        }
    }

    /// A command for a server-side binary, run as postgres when we are root,
    /// with a scrubbed environment and HOME pointing at our temp dir.
    fn server_cmd(&self, prog: &str) -> Command {
        let bin = self.bin.join(prog);
        let mut cmd = if running_as_root() {
            // runuser resets HOME, so set it through env(1) after the switch.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"])
                .arg(format!("HOME={}", self.tmp.path().display()))
                .arg(bin);
            c
        } else {
            let mut c = Command::new(bin);
            c.env("HOME", self.tmp.path());
            c
        };
        scrub_env(&mut cmd);
        cmd.current_dir(self.tmp.path()).stdin(Stdio::null());
        cmd
    }

    /// A client tool connected to this server over the unix socket.
    fn client_cmd(&self, prog: &str) -> Command {
        let mut cmd = Command::new(format!("{PG_BIN}/{prog}"));
        scrub_env(&mut cmd);
        cmd.current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    /// Appends our settings; later lines win, so they override whatever a
    /// restored postgresql.conf carried over from the original cluster.
    fn write_conf(&self, extra: &[(String, String)]) {
        use std::io::Write;
        let walden = self.walden.display().to_string();
        let mut s = String::from("\n# walden test harness\n");
        s += &format!("port = {}\n", self.port);
        s += "listen_addresses = '127.0.0.1'\n";
        s += &format!(
            "unix_socket_directories = '{}'\n",
            self.socket_dir().display()
        );
        s += "wal_level = replica\nmax_wal_senders = 4\n";
        for (k, v) in extra {
            s += &format!("{k} = {}\n", v.replace("{walden}", &walden));
        }
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(s.as_bytes())
            .expect("append to postgresql.conf");
    }

    /// Starts the server again after `stop`/`kill`, waiting up to 120 s
    /// (recovery can be slow). No-op if running.
    pub fn start_server(&mut self) {
        if self.running {
            return;
        }
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "start"]);
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed\n{}\n--- server log ---\n{}",
                describe(&out),
                self.log_tail()
            );
        }
        self.running = true;
    }

    /// Fast shutdown (a clean checkpoint). Idempotent.
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl_stop("fast", true);
        }
    }

    /// Immediate shutdown, i.e. a crash as far as recovery is concerned.
    pub fn kill(&mut self) {
        if self.running {
            self.pg_ctl_stop("immediate", true);
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    fn pg_ctl_stop(&mut self, mode: &str, must_succeed: bool) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "120", "stop"])
            .output();
        self.running = false;
        match out {
            Ok(o) if o.status.success() || !must_succeed => {}
            Ok(o) => panic!(
                "pg_ctl stop -m {mode} failed\n{}\n{}",
                describe(&o),
                self.log_tail()
            ),
            Err(e) if must_succeed => panic!("run pg_ctl stop: {e}"),
            Err(_) => {}
        }
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn socket_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Scratch directory owned by this cluster (writable by postgres).
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Walden binary path usable in archive_command/restore_command.
    pub fn walden_path(&self) -> &Path {
        &self.walden
    }

    /// libpq environment for walden's backup-push etc.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.socket_dir().display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGDATA".into(), self.data.display().to_string()),
        ]
    }

    /// Runs SQL and returns the unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql failed: {sql}\n{e}"))
    }

    /// `psql` in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("psql in {db} failed: {sql}\n{e}"))
    }

    /// Like `psql` but returns stderr instead of panicking, for expected errors.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in("postgres", sql)
    }

    fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .client_cmd("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(describe(&out))
        }
    }

    /// Polls `sql` until it returns `expected`; panics after `timeout`.
    pub fn wait_for_sql(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = self.try_psql(sql);
            if last.as_deref() == Ok(expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{sql}: wanted {expected:?}, last got {last:?} after {timeout:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until recovery has ended (e.g. after recovery_target_action=promote).
    pub fn wait_for_promotion(&self, timeout: Duration) {
        self.wait_for_sql("SELECT pg_is_in_recovery()", "f", timeout);
    }

    /// A base backup with PostgreSQL's own pg_basebackup (fast checkpoint,
    /// no WAL: replaying it needs the archive).
    pub fn base_backup(&self, dest: &Path) {
        let out = Command::new(format!("{PG_BIN}/pg_basebackup"))
            .args([
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", "postgres", "-X", "none", "-c", "fast", "-D"])
            .arg(dest)
            .output()
            .expect("run pg_basebackup");
        check(&out, "pg_basebackup");
    }

    /// Forces a WAL switch and returns the name of the segment just closed.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until the archiver reports `walfile` (or a later one) archived.
    /// Segment names compare lexically within a timeline.
    pub fn wait_for_archive(&self, walfile: &str, timeout: Duration) {
        let sql =
            format!("SELECT coalesce(last_archived_wal, '') >= '{walfile}' FROM pg_stat_archiver");
        self.wait_for_sql(&sql, "t", timeout);
    }

    pub fn pgbench_init(&self, scale: u32) {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    }

    /// Runs pgbench with `args` against database postgres; returns stdout.
    pub fn pgbench(&self, args: &[&str]) -> String {
        let out = self
            .client_cmd("pgbench")
            .args(args)
            .arg("postgres")
            .output()
            .expect("run pgbench");
        check(&out, "pgbench");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_path(&self) -> PathBuf {
        self.tmp.join("log")
    }

    /// Last 50 lines of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(50)..].join("\n")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing to preserve, and it must also work while a
        // failed test is unwinding, so errors are ignored.
        if std::thread::panicking() {
            // The server's side of a failure (a wait, a refused command).
            eprintln!(
                "--- server log of the cluster in {} ---\n{}",
                self.tmp.path().display(),
                self.log_tail()
            );
        }
        if self.running {
            self.pg_ctl_stop("immediate", false);
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(out: &Output, what: &str) {
    if !out.status.success() {
        panic!("{what} failed\n{}", describe(out));
    }
}
