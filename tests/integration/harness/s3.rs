//! A real S3-compatible server (nanio, which verifies SigV4 signatures) run
//! as a child process. Buckets are directories and objects are plain files,
//! so tests can inspect or corrupt stored objects directly on disk.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tmp::{free_port, TempDir};

pub const BUCKET: &str = "walden-test";
pub const ACCESS_KEY: &str = "testkey";
pub const SECRET_KEY: &str = "testsecret";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    child: Option<Child>,
    port: u16,
    nanio: PathBuf,
    /// nanio logs every request (see [`S3Server::start_counting`]).
    access_log: bool,
    // Declared last so the directory outlives the process during Drop.
    tmp: TempDir,
}

/// `$WALDEN_TEST_VENV/bin/nanio`, else the venv scripts/setup-test-env.sh
/// creates by default.
fn nanio_path() -> PathBuf {
    let venv = match std::env::var_os("WALDEN_TEST_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv"),
    };
    let bin = venv.join("bin/nanio");
    if !bin.is_file() {
        panic!(
            "nanio not found: run scripts/setup-test-env.sh (looked at {})",
            bin.display()
        );
    }
    bin
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::launch(false)
    }

    /// A server that logs every request it answers, so that a test can
    /// count them ([`S3Server::requests`]).
    pub fn start_counting() -> S3Server {
        S3Server::launch(true)
    }

    fn launch(access_log: bool) -> S3Server {
        let tmp = TempDir::new("s3");
        let bucket = tmp.join("data").join(BUCKET);
        std::fs::create_dir_all(&bucket).expect("create bucket directory for nanio");
        let mut s = S3Server {
            child: None,
            port: free_port(),
            nanio: nanio_path(),
            access_log,
            tmp,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        // Appending keeps the log of a previous run across restart().
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open nanio log file");
        let log2 = log.try_clone().expect("clone nanio log handle");
        let mut cmd = Command::new(&self.nanio);
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
        ])
        .arg("--data-dir")
        .arg(self.tmp.join("data"));
        if !self.access_log {
            cmd.arg("--no-access-log");
        }
        let child = cmd
            .env("NANIO_ACCESS_KEY", ACCESS_KEY)
            .env("NANIO_SECRET_KEY", SECRET_KEY)
            .env("NANIO_REGION", REGION)
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn nanio");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until a TCP connect succeeds; fails fast if nanio exits early
    /// (bad venv, port taken) so the panic shows the real cause.
    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = self
                .child
                .as_mut()
                .expect("nanio child present while waiting");
            if let Ok(Some(st)) = child.try_wait() {
                panic!("nanio exited early ({st}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "nanio not listening on {addr} after 10s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where objects of the test bucket appear as plain files
    /// (`bucket_dir().join("<prefix>/basebackups_005/...")`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.tmp.join("data").join(BUCKET)
    }

    /// The file backing `key` in the test bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.bucket_dir().join(key.trim_start_matches('/'))
    }

    /// Keys stored under `prefix` (e.g. "mytest/wal_005/"), sorted, read from
    /// disk; nanio's own `.nanio-meta` bookkeeping is skipped.
    pub fn list_objects(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        collect_files(&self.bucket_dir(), "", &mut keys);
        keys.retain(|k| k.starts_with(prefix.trim_start_matches('/')));
        keys.sort();
        keys
    }

    /// Flips one byte in the middle of an object. The length must stay the
    /// same: nanio serves the size recorded in `.nanio-meta` at upload time,
    /// so a longer or shorter file would be silently cut or fail mid-read.
    pub fn corrupt_object(&self, key: &str) {
        let path = self.object_path(key);
        let mut bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(!bytes.is_empty(), "cannot corrupt empty object {key}");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Deletes an object behind the server's back (file and its metadata).
    pub fn remove_object(&self, key: &str) {
        let key = key.trim_start_matches('/');
        let path = self.object_path(key);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        let _ = std::fs::remove_file(
            self.bucket_dir()
                .join(".nanio-meta")
                .join(format!("{key}.json")),
        );
    }

    /// Requests answered so far, as `METHOD /path?query` (needs
    /// [`S3Server::start_counting`]), from nanio's access log.
    pub fn requests(&self) -> Vec<String> {
        assert!(
            self.access_log,
            "requests() needs S3Server::start_counting()"
        );
        self.log()
            .lines()
            .filter_map(|l| l.split(" - \"").nth(1))
            .filter_map(|r| r.rsplit_once(" HTTP/").map(|(req, _)| req.to_string()))
            .collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.tmp.join("nanio.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Environment for walden (or wal-g) pointing at `s3://walden-test/<prefix_path>`.
    /// Give each test its own prefix if it shares a server.
    pub fn env(&self, prefix_path: &str) -> Vec<(String, String)> {
        let prefix = prefix_path.trim_start_matches('/');
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_S3_FORCE_PATH_STYLE", "true".to_string()),
            ("WALG_S3_PREFIX", format!("s3://{BUCKET}/{prefix}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Kills the server ("storage down"); data on disk is kept. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Walks `dir` collecting relative file paths, skipping nanio's dot-dirs.
fn collect_files(dir: &std::path::Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && name.starts_with(".nanio") {
            continue;
        }
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_files(&entry.path(), &key, out),
            Ok(_) => out.push(key),
            Err(_) => {}
        }
    }
}
