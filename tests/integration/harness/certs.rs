//! Test certificates made with the openssl command, for PostgreSQL's
//! `ssl`/`cert` settings and walden's PGSSL* variables: a CA and
//! certificates it signs, the way PostgreSQL's documentation makes them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Whether the openssl command is missing (then no certificate can be
/// made): says the test skips.
pub fn openssl_missing() -> bool {
    let missing = !Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if missing {
        eprintln!("skipped: the openssl command is missing, no certificate can be made");
    }
    missing
}

/// `openssl ARGS`, which must succeed.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `<name>.crt` / `<name>.key` in `dir` (CN `name`).
pub fn ca(dir: &Path, name: &str) {
    let p = |f: &str| dir.join(f).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &p(&format!("{name}.key")),
        "-out",
        &p(&format!("{name}.crt")),
    ]);
}

/// `<name>.crt` for CN `cn` in `dir`, signed by CA `ca` the documented way
/// (no extensions: a v1 certificate) unless `ext` names an extension file,
/// and its `<name>.key` (mode 0600, as libpq and PostgreSQL demand).
pub fn signed(dir: &Path, ca: &str, name: &str, cn: &str, ext: Option<&Path>) {
    let p = |f: &str| dir.join(f).display().to_string();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &p(&format!("{name}.key")),
        "-out",
        &p(&format!("{name}.csr")),
    ]);
    let (csr, ca_crt, ca_key, crt) = (
        p(&format!("{name}.csr")),
        p(&format!("{ca}.crt")),
        p(&format!("{ca}.key")),
        p(&format!("{name}.crt")),
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &crt,
    ];
    let ext = ext.map(|e| e.display().to_string());
    if let Some(e) = &ext {
        args.extend(["-extfile", e.as_str()]);
    }
    openssl(&args);
    fs::set_permissions(
        dir.join(format!("{name}.key")),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// The "Version: N (0x..)" line `openssl x509 -text` prints for `cert`.
pub fn certificate_version(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .unwrap_or("")
        .trim()
        .to_string()
}
