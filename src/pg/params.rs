//! Connection parameters read the libpq way, once, into a typed struct:
//! PGHOST/PGPORT (lists), PGUSER, PGDATABASE, PGPASSWORD/PGPASSFILE,
//! PGSSLMODE and its files, PGCONNECT_TIMEOUT, PGAPPNAME.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, Settings};

/// libpq's compiled-in socket directory on Debian (DEFAULT_PGSOCKET_DIR).
/// Without PGHOST, libpq on Unix tries only this socket, never TCP.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_PORT: u16 = 5432;

#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// A directory holding `.s.PGSQL.<port>`.
    Socket(PathBuf),
    /// A host name or IP address.
    Tcp(String),
}

/// One place to try, in PGHOST order.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub endpoint: Endpoint,
    pub port: u16,
}

impl Target {
    pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
        dir.join(format!(".s.PGSQL.{port}"))
    }

    /// The host field a password file line is matched against: libpq
    /// matches `localhost` for the default socket directory only, other
    /// socket directories by their path.
    pub fn pgpass_host(&self) -> String {
        match &self.endpoint {
            Endpoint::Socket(dir) if dir == Path::new(DEFAULT_SOCKET_DIR) => "localhost".into(),
            Endpoint::Socket(dir) => dir.display().to_string(),
            Endpoint::Tcp(host) => host.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Socket(dir) => write!(f, "{}", Target::socket_path(dir, self.port).display()),
            Endpoint::Tcp(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            Endpoint::Tcp(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// TLS is a must: the connection fails rather than go in clear.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// A password that never shows in Debug output or logs.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--HIDDEN--")
    }
}

#[derive(Debug, Clone)]
pub struct ConnParams {
    pub targets: Vec<Target>,
    pub user: String,
    pub database: String,
    /// PGPASSWORD; when unset the password file is read for each target.
    pub password: Option<Secret>,
    pub passfile: Option<PathBuf>,
    pub ssl_mode: SslMode,
    /// CA certificates; None: `require` does not verify, verify-* fail.
    pub ssl_root_cert: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    /// Per-host limit on connecting and logging in; None waits forever.
    pub connect_timeout: Option<Duration>,
    pub application_name: String,
    /// More startup parameters; `("replication", "database")` goes here
    /// for the replication protocol.
    pub extra: Vec<(String, String)>,
}

impl ConnParams {
    /// Reads walden's settings (flag, environment, config file). Does no
    /// I/O beyond looking at which default files exist.
    pub fn from_settings(settings: &Settings) -> Result<ConnParams, ConfigError> {
        let os = crate::pg::transport::os_user();
        ConnParams::from_lookup(
            |name| settings.get(name),
            os.as_ref().map(|(name, _)| name.clone()),
            os.map(|(_, home)| home),
        )
    }

    /// [`ConnParams::from_settings`] with `host` (a command's `--pghost`,
    /// as WAL-G's) in place of PGHOST when given.
    pub fn with_host(settings: &Settings, host: Option<&str>) -> Result<ConnParams, ConfigError> {
        let os = crate::pg::transport::os_user();
        ConnParams::from_lookup(
            |name| match (name, host) {
                ("PGHOST", Some(h)) => Some(h.to_string()),
                _ => settings.get(name),
            },
            os.as_ref().map(|(name, _)| name.clone()),
            os.map(|(_, home)| home),
        )
    }

    /// `get` gives a setting's value; `os_user` and `home` are who runs us.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        os_user: Option<String>,
        home: Option<PathBuf>,
    ) -> Result<ConnParams, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.is_empty());
        let targets = targets(get("PGHOST").as_deref(), get("PGPORT").as_deref())?;
        let user = match get("PGUSER").or(os_user) {
            Some(u) => u,
            None => {
                return Err(ConfigError::Missing {
                    name: "PGUSER".into(),
                    hint: "the operating system user name could not be found; set PGUSER".into(),
                })
            }
        };
        let database = get("PGDATABASE").unwrap_or_else(|| user.clone());
        let ssl_mode = match get("PGSSLMODE") {
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(&v).ok_or_else(|| ConfigError::Invalid {
                name: "PGSSLMODE".into(),
                value: v.clone(),
                problem: "use disable, allow, prefer, require, verify-ca or verify-full".into(),
            })?,
        };
        let in_home = |rel: &str| home.as_ref().map(|h| h.join(rel));
        // Explicit files must exist (checked when used); default files are
        // used only when present, as libpq does.
        let existing = |p: Option<PathBuf>| p.filter(|p| p.exists());
        let ssl_root_cert = match get("PGSSLROOTCERT") {
            Some(p) => Some(PathBuf::from(p)),
            None => existing(in_home(".postgresql/root.crt")),
        };
        let ssl_cert = match get("PGSSLCERT") {
            Some(p) => Some(PathBuf::from(p)),
            None => existing(in_home(".postgresql/postgresql.crt")),
        };
        let ssl_key = match get("PGSSLKEY") {
            Some(p) => Some(PathBuf::from(p)),
            None => existing(in_home(".postgresql/postgresql.key")),
        };
        let passfile = get("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| in_home(".pgpass"));
        Ok(ConnParams {
            targets,
            user,
            database,
            password: get("PGPASSWORD").map(Secret),
            passfile,
            ssl_mode,
            ssl_root_cert,
            ssl_cert,
            ssl_key,
            connect_timeout: connect_timeout(get("PGCONNECT_TIMEOUT"))?,
            application_name: get("PGAPPNAME").unwrap_or_default(),
            extra: Vec::new(),
        })
    }
}

/// PGHOST and PGPORT as libpq pairs them: one port for all hosts, or one
/// port per host; an empty entry means the default.
pub fn targets(hosts: Option<&str>, ports: Option<&str>) -> Result<Vec<Target>, ConfigError> {
    let hosts: Vec<&str> = hosts.unwrap_or("").split(',').collect();
    let ports: Vec<u16> = ports
        .unwrap_or("")
        .split(',')
        .map(parse_port)
        .collect::<Result<_, _>>()?;
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(ConfigError::Invalid {
            name: "PGPORT".into(),
            value: ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            problem: format!(
                "{} ports cannot be matched to {} hosts in PGHOST; give one port, or one per host",
                ports.len(),
                hosts.len()
            ),
        });
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = host.trim();
            let endpoint = if host.is_empty() {
                Endpoint::Socket(PathBuf::from(DEFAULT_SOCKET_DIR))
            } else if host.starts_with('/') {
                Endpoint::Socket(PathBuf::from(host))
            } else {
                Endpoint::Tcp(host.to_string())
            };
            let port = ports
                .get(i)
                .or(ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT);
            Target { endpoint, port }
        })
        .collect())
}

fn parse_port(text: &str) -> Result<u16, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConfigError::Invalid {
            name: "PGPORT".into(),
            value: text.into(),
            problem: "a port is a number from 1 to 65535".into(),
        }),
    }
}

/// PGCONNECT_TIMEOUT in seconds; 0 or less waits forever, and libpq turns
/// 1 into 2 because a one-second timer can fire at once.
fn connect_timeout(value: Option<String>) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    match value.trim().parse::<i64>() {
        Ok(n) if n <= 0 => Ok(None),
        Ok(n) => Ok(Some(Duration::from_secs(n.max(2) as u64))),
        Err(_) => Err(ConfigError::Invalid {
            name: "PGCONNECT_TIMEOUT".into(),
            value,
            problem: "expected a whole number of seconds".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn params(vars: &[(&str, &str)]) -> Result<ConnParams, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnParams::from_lookup(|n| map.get(n).cloned(), Some("osuser".into()), None)
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target {
            endpoint: Endpoint::Tcp(host.into()),
            port,
        }
    }

    #[test]
    fn pg_defaults_are_libpq_defaults() {
        let p = params(&[]).unwrap();
        assert_eq!(
            p.targets,
            vec![Target {
                endpoint: Endpoint::Socket(DEFAULT_SOCKET_DIR.into()),
                port: 5432
            }]
        );
        assert_eq!(p.user, "osuser");
        assert_eq!(p.database, "osuser");
        assert_eq!(p.ssl_mode, SslMode::Prefer);
        assert_eq!(p.connect_timeout, None);
        assert!(p.password.is_none());
    }

    #[test]
    fn pg_host_and_port_lists() {
        let t = targets(Some("/tmp/s,db1,10.0.0.1,"), Some("6000")).unwrap();
        assert_eq!(
            t[0],
            Target {
                endpoint: Endpoint::Socket("/tmp/s".into()),
                port: 6000
            }
        );
        assert_eq!(t[1], tcp("db1", 6000));
        assert_eq!(t[2], tcp("10.0.0.1", 6000));
        assert_eq!(t[3].endpoint, Endpoint::Socket(DEFAULT_SOCKET_DIR.into()));
        let t = targets(Some("a,b"), Some("1,")).unwrap();
        assert_eq!(t, vec![tcp("a", 1), tcp("b", 5432)]);
        let e = targets(Some("a,b,c"), Some("1,2")).unwrap_err().to_string();
        assert!(e.contains("2 ports cannot be matched to 3 hosts"), "{e}");
        assert!(targets(Some("a"), Some("0")).is_err());
        assert!(targets(Some("a"), Some("x")).is_err());
        assert!(targets(Some("a"), Some("70000")).is_err());
        assert_eq!(tcp("::1", 5).to_string(), "[::1]:5");
        let s = Target {
            endpoint: Endpoint::Socket("/run/pg".into()),
            port: 5433,
        };
        assert_eq!(s.to_string(), "/run/pg/.s.PGSQL.5433");
    }

    #[test]
    fn pg_sslmode_and_timeout_parsing() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(params(&[("PGSSLMODE", text)]).unwrap().ssl_mode, mode);
        }
        let e = params(&[("PGSSLMODE", "on")]).unwrap_err().to_string();
        assert!(
            e.contains("PGSSLMODE='on'") && e.contains("verify-full"),
            "{e}"
        );
        let t = |v| params(&[("PGCONNECT_TIMEOUT", v)]).map(|p| p.connect_timeout);
        assert_eq!(t("0").unwrap(), None);
        assert_eq!(t("1").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(t("10").unwrap(), Some(Duration::from_secs(10)));
        assert!(t("soon").is_err());
    }

    #[test]
    fn pg_password_never_in_debug_or_errors() {
        let p = params(&[
            ("PGPASSWORD", "sekrit"),
            ("PGUSER", "u"),
            ("PGDATABASE", "d"),
        ])
        .unwrap();
        assert!(!format!("{p:?}").contains("sekrit"));
        assert_eq!((p.user.as_str(), p.database.as_str()), ("u", "d"));
    }

    #[test]
    fn pg_pgpass_host_for_sockets() {
        let default = Target {
            endpoint: Endpoint::Socket(DEFAULT_SOCKET_DIR.into()),
            port: 1,
        };
        assert_eq!(default.pgpass_host(), "localhost");
        let other = Target {
            endpoint: Endpoint::Socket("/tmp/x".into()),
            port: 1,
        };
        assert_eq!(other.pgpass_host(), "/tmp/x");
        assert_eq!(tcp("db", 1).pgpass_host(), "db");
    }
}
