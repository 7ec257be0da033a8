//! Client certificates as PostgreSQL's documentation makes them:
//! `openssl x509 -req` without extensions gives an X.509 v1 certificate
//! (OpenSSL 3.0), which PostgreSQL accepts for `cert` authentication.
//! walden sends it (rustls's own loader would refuse it), the server
//! checks it against its `ssl_ca_file`, and one signed by another CA is
//! refused by the server.

use std::fs;

use crate::harness::certs::{ca, certificate_version, openssl_missing, signed};
use crate::harness::{Output, PgCluster, TempDir, Walden};

#[test]
fn a_v1_client_certificate_is_sent_and_accepted() {
    if openssl_missing() {
        return;
    }
    let dir = TempDir::new("pg-v1-certs");
    ca(dir.path(), "ca");
    ca(dir.path(), "other_ca");
    // The server's certificate names localhost in a SAN (v3); v1 server
    // certificates have their own test in pg_client.
    let san = dir.join("san.cnf");
    fs::write(&san, "subjectAltName=DNS:localhost\n").unwrap();
    signed(dir.path(), "ca", "server", "localhost", Some(&san));
    signed(dir.path(), "ca", "carol", "carol", None);
    signed(dir.path(), "other_ca", "stranger", "carol", None);
    assert!(
        certificate_version(&dir.join("carol.crt")).starts_with("Version: 1"),
        "the test needs a v1 client certificate: {}",
        certificate_version(&dir.join("carol.crt"))
    );
    dir.chown_postgres();
    let p = |f: &str| format!("'{}'", dir.join(f).display());
    let pg = PgCluster::builder()
        .hba("hostssl all carol 127.0.0.1/32 cert")
        .hba("host all carol 127.0.0.1/32 reject")
        .conf("ssl", "on")
        .conf("ssl_cert_file", &p("server.crt"))
        .conf("ssl_key_file", &p("server.key"))
        .conf("ssl_ca_file", &p("ca.crt"))
        .start();
    pg.psql("CREATE ROLE carol LOGIN");

    let info = |cert: &str| -> Output {
        Walden::new()
            .env("PGHOST", "localhost")
            .env("PGPORT", pg.port().to_string())
            .env("PGUSER", "carol")
            .env("PGDATABASE", "postgres")
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", dir.join("ca.crt"))
            .env("PGSSLCERT", dir.join(format!("{cert}.crt")))
            .env("PGSSLKEY", dir.join(format!("{cert}.key")))
            .arg("pg-info")
            .run()
    };
    let out = info("carol");
    out.assert_ok();
    let text = out.stdout_str();
    assert!(text.contains("tls: on\n"), "{}", out.dump());
    assert!(text.contains("user: carol\n"), "{}", out.dump());

    // The server, not walden, judges the certificate: another CA's is
    // sent and refused there.
    let out = info("stranger");
    assert_ne!(out.code, 0, "{}", out.dump());
    let log = fs::read_to_string(pg.log_path()).unwrap_or_default();
    assert!(
        log.contains("certificate") && log.contains("could not accept SSL connection"),
        "the server refused the certificate: {}\n{log}",
        out.dump()
    );
}
