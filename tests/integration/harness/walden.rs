//! Running the real `walden` binary with a clean, explicit environment.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tmp::{running_as_root, TempDir};

/// The binary cargo built for this test run.
pub fn walden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walden"))
}

/// A path to the walden binary that the `postgres` user can execute (for
/// archive_command / restore_command). Normally the build output itself;
/// if some directory on its path is not traversable by others, a copy is
/// placed in `dir` (which must be readable by postgres).
pub fn walden_bin_for_postgres(dir: &Path) -> PathBuf {
    let bin = walden_bin();
    if !running_as_root() || executable_by_others(&bin) {
        return bin;
    }
    let copy = dir.join("walden");
    std::fs::copy(&bin, &copy).expect("copy walden binary for the postgres user");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .expect("chmod 755 walden copy");
    copy
}

/// True if every ancestor directory has o+x and the file has o+x.
fn executable_by_others(bin: &Path) -> bool {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    if mode(bin) & 0o001 == 0 {
        return false;
    }
    bin.ancestors()
        .skip(1)
        .all(|d| d.as_os_str().is_empty() || mode(d) & 0o001 != 0)
}

/// Inherited variables with these prefixes would change walden's behaviour
/// (a developer's WALG_S3_PREFIX, PGHOST, AWS profile...), so they are dropped.
const SCRUBBED_PREFIXES: [&str; 5] = ["WALG_", "WALE_", "WALDEN_", "AWS_", "PG"];

/// Removes inherited variables that would leak into a child's configuration.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&k);
        }
    }
}

/// A command line for the walden binary, or (through [`Walden::program`])
/// for another program that reads the same settings, such as WAL-G.
pub struct Walden {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    dir: Option<PathBuf>,
    /// Run as this uid/gid (tests running as root start a daemon as postgres).
    user: Option<(u32, u32)>,
    timeout: Duration,
}

#[derive(Debug)]
pub struct Output {
    /// Exit code; 128 + signal number when killed by a signal (like a shell).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// The command line, for failure messages.
    pub cmdline: String,
}

impl Default for Walden {
    fn default() -> Self {
        Self::new()
    }
}

impl Walden {
    pub fn new() -> Walden {
        Walden::program(walden_bin())
    }

    /// Runs `bin` instead of walden, with the same scrubbed environment.
    pub fn program(bin: impl Into<PathBuf>) -> Walden {
        Walden {
            bin: bin.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            dir: None,
            user: None,
            // Generous: a hung command must fail the test, not hang CI forever.
            timeout: Duration::from_secs(600),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Accepts e.g. `s3.env("prefix")` or `pg.env()` directly.
    pub fn envs<I, K, V>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.envs
            .extend(it.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn stdin_bytes(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Run as `uid`/`gid` (only [`Walden::spawn`] honours it).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn run(self) -> Output {
        let timeout = self.timeout;
        let stdin = self.stdin.clone();
        let mut running = self.spawn();
        // A thread for stdin: writing all of it before reading stdout would
        // deadlock once both pipe buffers fill.
        let pipe = running.child.stdin.take();
        let stdin_thread = match (stdin, pipe) {
            (Some(data), Some(mut pipe)) => {
                // A broken pipe just means walden stopped reading; its exit code tells the story.
                Some(std::thread::spawn(move || drop(pipe.write_all(&data))))
            }
            _ => None,
        };
        let out = running.wait(timeout);
        if let Some(t) = stdin_thread {
            let _ = t.join();
        }
        out
    }

    /// Start the command and return at once, with stdin as a pipe the test
    /// writes to (and may keep open), to signal or kill it mid-way.
    pub fn spawn(self) -> Running {
        // A fresh HOME so ~/.walg.json of whoever runs the tests never leaks in.
        let home = TempDir::new("home");
        let mut cmd = Command::new(&self.bin);
        scrub_env(&mut cmd);
        cmd.env("HOME", home.path()).args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let program = self.bin.file_name().unwrap_or(self.bin.as_os_str());
        let cmdline = format!(
            "{} {}",
            program.to_string_lossy(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
        if self.stdin.is_none() {
            // Nothing to send: the command sees end of input at once.
            drop(child.stdin.take());
        }
        let mut out_pipe = child.stdout.take().expect("child stdout pipe");
        let mut err_pipe = child.stderr.take().expect("child stderr pipe");
        let out_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out_pipe.read_to_end(&mut b);
            b
        });
        let err_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err_pipe.read_to_end(&mut b);
            b
        });
        Running {
            child,
            cmdline,
            out_thread,
            err_thread,
            _home: home,
        }
    }
}

/// A command started with [`Walden::spawn`].
pub struct Running {
    pub child: std::process::Child,
    cmdline: String,
    out_thread: std::thread::JoinHandle<Vec<u8>>,
    err_thread: std::thread::JoinHandle<Vec<u8>>,
    _home: TempDir,
}

impl Running {
    /// Its stdin, for a test that feeds it by hand (see [`Walden::stdin_bytes`]
    /// to start with some bytes instead).
    pub fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.child
            .stdin
            .as_mut()
            .expect("stdin was given to the command")
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().to_string();
        let sig = format!("-{signal}");
        let ok = Command::new("kill")
            .args([sig.as_str(), pid.as_str()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Wait for the end (killing it after `timeout`) and collect its output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("wait for the child") {
                Some(st) => break st,
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    // What it printed says where it waited.
                    let stderr = self.err_thread.join().unwrap_or_default();
                    panic!(
                        "{} did not finish within {timeout:?}; its stderr:\n{}",
                        self.cmdline,
                        String::from_utf8_lossy(&stderr)
                    );
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let stdout = self.out_thread.join().expect("stdout reader thread");
        let stderr =
            String::from_utf8_lossy(&self.err_thread.join().expect("stderr reader thread"))
                .into_owned();
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Output {
            code,
            stdout,
            stderr,
            cmdline: self.cmdline,
        }
    }
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }

    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    pub fn assert_code(&self, code: i32) -> &Self {
        if self.code != code {
            panic!(
                "{}: expected exit code {code}, got {}\n{}",
                self.cmdline,
                self.code,
                self.dump()
            );
        }
        self
    }

    /// Asserts a non-zero exit, for tests where the exact code is not specified.
    pub fn assert_failed(&self) -> &Self {
        if self.code == 0 {
            panic!(
                "{}: expected failure, got exit code 0\n{}",
                self.cmdline,
                self.dump()
            );
        }
        self
    }

    /// stdout (truncated if large or binary) and stderr for failure messages.
    pub fn dump(&self) -> String {
        const MAX: usize = 8192;
        let out = if self.stdout.len() > MAX {
            format!(
                "{}... ({} bytes total)",
                String::from_utf8_lossy(&self.stdout[..MAX]),
                self.stdout.len()
            )
        } else {
            self.stdout_str()
        };
        format!("--- stdout ---\n{out}\n--- stderr ---\n{}", self.stderr)
    }
}

/// The WAL-G binary built by hand for the interop parts of tests
/// (`WALDEN_WALG_BIN`); without it, one line says which part is skipped.
pub fn walg_bin(skipped: &str) -> Option<PathBuf> {
    match std::env::var_os("WALDEN_WALG_BIN") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("WALDEN_WALG_BIN not set: skipping {skipped}");
            None
        }
    }
}
