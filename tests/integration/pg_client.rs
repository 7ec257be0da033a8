//! walden's own PostgreSQL client, driven through the hidden `pg-info`
//! command against a real PostgreSQL 15: trust over the socket, md5 and
//! SCRAM with PGPASSWORD and a password file, refusals, TLS modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::certs::{ca, certificate_version, openssl_missing, signed};
use crate::harness::tmp::free_port;
use crate::harness::{Output, PgCluster, TempDir, Walden};

const BOB_PW: &str = "bob-secret-pw";
const ALICE_PW: &str = "alice:pw\\x";

/// pg-info with exactly `env` as the PG* settings.
fn pg_info(env: &[(&str, &str)]) -> Output {
    Walden::new()
        .arg("pg-info")
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .run()
}

/// pg-info as bob (SCRAM) at `host`:`port` with `PGSSLMODE=mode`, the
/// server's certificate checked against `root`.
fn bob_over_tls(host: &str, port: &str, mode: &str, root: &str) -> Output {
    pg_info(&[
        ("PGHOST", host),
        ("PGPORT", port),
        ("PGUSER", "bob"),
        ("PGDATABASE", "postgres"),
        ("PGPASSWORD", BOB_PW),
        ("PGSSLMODE", mode),
        ("PGSSLROOTCERT", root),
    ])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failure: exit 1, one line on stderr, `secret` nowhere.
fn assert_one_line_failure(out: &Output, secret: &str) -> String {
    assert_eq!(out.code, 1, "{}", out.dump());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(
        !out.stderr.contains(secret) && !stdout(out).contains(secret),
        "{}",
        out.dump()
    );
    lines[0].to_string()
}

/// A cluster with alice (md5) and bob (SCRAM) who need passwords over TCP
/// and bob also over the socket; postgres stays trusted on the socket.
fn password_cluster() -> PgCluster {
    let pg = PgCluster::builder()
        .hba("host all alice 127.0.0.1/32 md5")
        .hba("host all bob 127.0.0.1/32 scram-sha-256")
        .hba("local all bob scram-sha-256")
        .start();
    pg.psql(&format!(
        "SET password_encryption = 'md5'; CREATE ROLE alice LOGIN PASSWORD '{ALICE_PW}'; \
         SET password_encryption = 'scram-sha-256'; CREATE ROLE bob LOGIN PASSWORD '{BOB_PW}';"
    ));
    pg
}

fn write_passfile(dir: &Path, text: &str, mode: u32) -> String {
    let path = dir.join("pgpass");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

#[test]
fn pg_info_trust_over_the_socket() {
    let pg = PgCluster::start(&[]);
    let env = pg.env();
    let out = Walden::new().arg("pg-info").envs(env).run();
    out.assert_ok();
    let text = stdout(&out);
    let socket = format!("{}/.s.PGSQL.{}", pg.socket_dir().display(), pg.port());
    assert!(
        text.contains(&format!("connected_to: {socket}\n")),
        "{text}"
    );
    assert!(text.contains("server_version: 15."), "{text}");
    assert!(
        text.contains("in_recovery: false\n") && text.contains("tls: off\n"),
        "{text}"
    );
    assert!(text.contains("integer_datetimes: on\n"), "{text}");
    let sysid = pg.psql("SELECT system_identifier FROM pg_control_system()");
    assert!(
        text.contains(&format!("system_identifier: {sysid}\n")),
        "{text}"
    );
    // pg-info is hidden from the command list.
    let help = Walden::new().arg("--help").run();
    assert!(!stdout(&help).contains("pg-info"));
}

#[test]
fn pg_info_md5_and_scram_with_password_and_passfile() {
    let pg = password_cluster();
    let port = pg.port().to_string();
    let socket = pg.socket_dir().display().to_string();
    let tcp = |user: &'static str| {
        vec![
            ("PGHOST", "127.0.0.1".to_string()),
            ("PGPORT", port.clone()),
            ("PGUSER", user.to_string()),
            ("PGDATABASE", "postgres".to_string()),
        ]
    };
    let run = |env: Vec<(&str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pg_info(&env)
    };
    // md5 and SCRAM with PGPASSWORD.
    let mut env = tcp("alice");
    env.push(("PGPASSWORD", ALICE_PW.into()));
    let out = run(env);
    out.assert_ok();
    assert!(stdout(&out).contains("user: alice\n"));
    let mut env = tcp("bob");
    env.push(("PGPASSWORD", BOB_PW.into()));
    run(env).assert_ok();

    // A password file, escapes included, over TCP and over the socket
    // (whose host field is the socket directory, as in libpq).
    let dir = TempDir::new("pgpass");
    let file = write_passfile(
        dir.path(),
        &format!(
            "# walden test\n127.0.0.1:{port}:*:alice:alice\\:pw\\\\x\n\
             127.0.0.1:{port}:postgres:bob:{BOB_PW}\n{socket}:*:*:bob:{BOB_PW}\n"
        ),
        0o600,
    );
    for user in ["alice", "bob"] {
        let mut env = tcp(user);
        env.push(("PGPASSFILE", file.clone()));
        let out = run(env);
        out.assert_ok();
        assert!(stdout(&out).contains(&format!("user: {user}\n")));
    }
    let out = run(vec![
        ("PGHOST", socket.clone()),
        ("PGPORT", port.clone()),
        ("PGUSER", "bob".into()),
        ("PGDATABASE", "postgres".into()),
        ("PGPASSFILE", file.clone()),
    ]);
    out.assert_ok();

    // A file others can read is ignored, as libpq does.
    let open = write_passfile(dir.path(), &format!("*:*:*:bob:{BOB_PW}\n"), 0o644);
    let mut env = tcp("bob");
    env.push(("PGPASSFILE", open));
    let out = run(env);
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(
        out.stderr.contains("group or world access"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("none is set"), "{}", out.dump());

    // A wrong password: one line, the server's SQLSTATE, what to check,
    // never the password.
    let mut env = tcp("bob");
    env.push(("PGPASSWORD", "wrong-pw-4711".into()));
    let line = assert_one_line_failure(&run(env), "wrong-pw-4711");
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) && line.contains("28P01"),
        "{line}"
    );
    assert!(line.contains("check PGPASSWORD"), "{line}");
    let mut env = tcp("alice");
    env.push(("PGPASSWORD", "wrong-md5-4711".into()));
    let line = assert_one_line_failure(&run(env), "wrong-md5-4711");
    assert!(line.contains("28P01"), "{line}");
}

#[test]
fn pg_info_refused_port_and_host_lists() {
    let pg = PgCluster::start(&[]);
    let dead = free_port().to_string();
    let out = pg_info(&[
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &dead),
        ("PGUSER", "postgres"),
    ]);
    let line = assert_one_line_failure(&out, "\u{0}");
    assert!(
        line.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{dead}")),
        "{line}"
    );
    assert!(line.contains("PGPORT"), "{line}");

    // The first host is refused, the second (the socket) answers.
    let hosts = format!("127.0.0.1,{}", pg.socket_dir().display());
    let ports = format!("{dead},{}", pg.port());
    let out = pg_info(&[
        ("PGHOST", &hosts),
        ("PGPORT", &ports),
        ("PGUSER", "postgres"),
    ]);
    out.assert_ok();
    assert!(stdout(&out).contains(".s.PGSQL."), "{}", out.dump());

    // A missing socket names its path.
    let out = pg_info(&[("PGHOST", "/nonexistent-dir"), ("PGUSER", "postgres")]);
    let line = assert_one_line_failure(&out, "\u{0}");
    assert!(line.contains("/nonexistent-dir/.s.PGSQL.5432"), "{line}");
}

#[test]
fn pg_info_tls_require_verify_ca_and_verify_full() {
    if openssl_missing() {
        return;
    }
    let certs = TempDir::new("pgtls");
    let (crt, key) = (certs.join("server.crt"), certs.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    certs.chown_postgres();
    let pg = PgCluster::builder()
        .hba("hostssl all bob 127.0.0.1/32 scram-sha-256")
        .hba("hostnossl all bob 127.0.0.1/32 reject")
        .conf("ssl", "on")
        .conf("ssl_cert_file", &format!("'{}'", crt.display()))
        .conf("ssl_key_file", &format!("'{}'", key.display()))
        .start();
    pg.psql(&format!("CREATE ROLE bob LOGIN PASSWORD '{BOB_PW}'"));
    let port = pg.port().to_string();
    let crt = crt.display().to_string();
    let run = |host: &str, mode: &str| bob_over_tls(host, &port, mode, &crt);
    // SCRAM over TLS, where the server also offers SCRAM-SHA-256-PLUS.
    for (host, mode) in [
        ("127.0.0.1", "require"),
        ("127.0.0.1", "prefer"),
        ("127.0.0.1", "verify-ca"),
        ("localhost", "verify-full"),
    ] {
        let out = run(host, mode);
        out.assert_ok();
        assert!(stdout(&out).contains("tls: on\n"), "{mode}: {}", out.dump());
    }
    // The certificate is for "localhost", not "127.0.0.1".
    let line = assert_one_line_failure(&run("127.0.0.1", "verify-full"), BOB_PW);
    assert!(
        line.contains("TLS") && line.contains(&format!("127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        line.contains("not valid for name") || line.contains("NotValidForName"),
        "{line}"
    );
    // Without TLS the server's pg_hba refuses bob: one clear line.
    let line = assert_one_line_failure(&run("127.0.0.1", "disable"), BOB_PW);
    assert!(line.contains("28000") && line.contains("pg_hba"), "{line}");
}

/// A CA-signed server certificate that names its host only in the Common
/// Name (no subjectAltName), as many older setups have: libpq's
/// verify-full accepts it for that host and refuses it for another.
#[test]
fn pg_info_verify_full_reads_a_common_name_without_alt_names() {
    if openssl_missing() {
        return;
    }
    let certs = TempDir::new("pgtls-cn");
    ca(certs.path(), "ca");
    // An extension file makes it v3 (webpki reads only v3) without a SAN.
    std::fs::write(certs.join("v3.ext"), "basicConstraints=CA:FALSE\n").unwrap();
    signed(
        certs.path(),
        "ca",
        "server",
        "localhost",
        Some(&certs.join("v3.ext")),
    );
    let key = certs.join("server.key");
    certs.chown_postgres();
    let pg = PgCluster::builder()
        .hba("hostssl all bob 127.0.0.1/32 scram-sha-256")
        .conf("ssl", "on")
        .conf(
            "ssl_cert_file",
            &format!("'{}'", certs.join("server.crt").display()),
        )
        .conf("ssl_key_file", &format!("'{}'", key.display()))
        .start();
    pg.psql(&format!("CREATE ROLE bob LOGIN PASSWORD '{BOB_PW}'"));
    let port = pg.port().to_string();
    let ca = certs.join("ca.crt").display().to_string();
    let run = |host: &str| bob_over_tls(host, &port, "verify-full", &ca);
    let out = run("localhost");
    out.assert_ok();
    assert!(stdout(&out).contains("tls: on\n"), "{}", out.dump());
    let line = assert_one_line_failure(&run("127.0.0.1"), BOB_PW);
    assert!(
        line.contains("not valid for name") || line.contains("NotValidForName"),
        "{line}"
    );
}

/// X.509 v1 server certificates, as PostgreSQL's documented recipe makes
/// them with OpenSSL 3.0 (`openssl x509 -req` without an extension file):
/// signed by the CA directly, and by an intermediate the server sends
/// after its certificate. Every mode connects, verify-full by the Common
/// Name; another CA's root and another host name are refused.
#[test]
fn pg_info_v1_server_certificates_signed_by_a_ca_and_an_intermediate() {
    if openssl_missing() {
        return;
    }
    let certs = TempDir::new("pgtls-v1");
    ca(certs.path(), "ca");
    ca(certs.path(), "other_ca");
    std::fs::write(
        certs.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    signed(
        certs.path(),
        "ca",
        "inter",
        "intermediate",
        Some(&certs.join("ca.ext")),
    );
    signed(certs.path(), "ca", "direct", "localhost", None);
    signed(certs.path(), "inter", "chained", "localhost", None);
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    // The server sends its certificate, then the intermediate.
    std::fs::write(
        certs.join("chained-bundle.crt"),
        [read("chained.crt"), read("inter.crt")].concat(),
    )
    .unwrap();
    let version = certificate_version(&certs.join("direct.crt"));
    assert!(
        version.starts_with("Version: 1"),
        "the test needs a v1 server certificate: {version}"
    );
    certs.chown_postgres();
    let ca_file = certs.join("ca.crt").display().to_string();
    let other_ca = certs.join("other_ca.crt").display().to_string();
    for (crt, key) in [
        ("direct.crt", "direct.key"),
        ("chained-bundle.crt", "chained.key"),
    ] {
        let pg = PgCluster::builder()
            .hba("hostssl all bob 127.0.0.1/32 scram-sha-256")
            .conf("ssl", "on")
            .conf("ssl_cert_file", &format!("'{}'", certs.join(crt).display()))
            .conf("ssl_key_file", &format!("'{}'", certs.join(key).display()))
            .start();
        pg.psql(&format!("CREATE ROLE bob LOGIN PASSWORD '{BOB_PW}'"));
        let port = pg.port().to_string();
        let run = |host: &str, mode: &str, root: &str| bob_over_tls(host, &port, mode, root);
        for (host, mode) in [
            ("127.0.0.1", "require"),
            ("127.0.0.1", "verify-ca"),
            ("localhost", "verify-full"),
        ] {
            let out = run(host, mode, &ca_file);
            out.assert_ok();
            assert!(
                stdout(&out).contains("tls: on\n"),
                "{crt} {mode}: {}",
                out.dump()
            );
        }
        let line = assert_one_line_failure(&run("127.0.0.1", "verify-full", &ca_file), BOB_PW);
        assert!(
            line.contains("not valid for name") || line.contains("NotValidForName"),
            "{crt}: {line}"
        );
        let line = assert_one_line_failure(&run("localhost", "verify-ca", &other_ca), BOB_PW);
        assert!(
            line.contains("UnknownIssuer") || line.contains("unknown issuer"),
            "{crt}: {line}"
        );
    }
}
