//! Our formats against independent implementations: the lz4, zstd and xz
//! command-line tools, and libsodium through PyNaCl. Streams they make we
//! read; streams we make they read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::TempDir;
use crate::store::{noise, text, Store};

fn tool(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} is needed (apt-get install {cmd}): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sample() -> Vec<u8> {
    // The noise fills whole lz4 blocks, which are then stored uncompressed.
    [text(3 << 20), noise(5 << 19, 3), vec![0u8; 1 << 20]].concat()
}

/// Put raw bytes as `key`, read them back decoded.
fn decode_with_walden(
    store: &Store,
    tmp: &TempDir,
    key: &str,
    raw: &[u8],
    env: &[(&str, &str)],
) -> Vec<u8> {
    store.put_raw(tmp.path(), key, raw);
    let out = store
        .walden()
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .args(["st", "cat", key, "--decompress", "--decrypt"])
        .run();
    out.assert_ok();
    out.stdout
}

/// Encode with walden, return the stored bytes.
fn encode_with_walden(
    store: &Store,
    tmp: &TempDir,
    name: &str,
    ext: &str,
    data: &[u8],
    env: &[(&str, &str)],
) -> Vec<u8> {
    let f = tmp.join("plain");
    fs::write(&f, data).unwrap();
    store
        .walden()
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .args(["st", "put"])
        .arg(&f)
        .arg(name)
        .run()
        .assert_ok();
    let out = store
        .walden()
        .args(["st", "cat", &format!("{name}{ext}")])
        .run();
    out.assert_ok();
    out.stdout
}

#[test]
fn compression_tools_read_ours_and_we_read_theirs() {
    let store = Store::fs();
    let tmp = TempDir::new("interop-cli");
    let data = sample();
    // (method, extension, tool, tool's compress flags, its decompress flags)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<&'a str>, Vec<&'a str>);
    let cases: [Case; 3] = [
        (
            "lz4",
            ".lz4",
            "lz4",
            vec!["-c", "-q"],
            vec!["-d", "-c", "-q"],
        ),
        (
            "zstd",
            ".zst",
            "zstd",
            vec!["-c", "-q", "-3"],
            vec!["-d", "-c", "-q"],
        ),
        (
            "lzma",
            ".lzma",
            "xz",
            vec!["--format=lzma", "-c"],
            vec!["--format=lzma", "-d", "-c"],
        ),
    ];
    for (method, ext, cli, comp, decomp) in cases {
        let theirs = tool(cli, &comp, &data);
        let key = format!("theirs/x{ext}");
        assert!(
            decode_with_walden(&store, &tmp, &key, &theirs, &[]) == data,
            "{cli} → walden"
        );
        let ours = encode_with_walden(
            &store,
            &tmp,
            &format!("ours/{method}"),
            ext,
            &data,
            &[("WALG_COMPRESSION_METHOD", method)],
        );
        assert!(tool(cli, &decomp, &ours) == data, "walden → {cli}");
    }
}

fn python() -> PathBuf {
    let venv = std::env::var("WALDEN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv"));
    venv.join("bin/python")
}

#[test]
fn libsodium_streams_interoperate_with_pynacl() {
    let store = Store::fs();
    let tmp = TempDir::new("interop-sodium");
    let key = "0123456789abcdef0123456789abcdef";
    let keyfile = tmp.join("key");
    fs::write(&keyfile, key).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/tools/sodium_stream.py");
    let env = [
        ("WALG_LIBSODIUM_KEY", key),
        ("WALG_COMPRESSION_METHOD", "none"),
    ];
    for len in [0usize, 1, 8191, 8192, 8193, 3 * 8192, 100_000] {
        let data = noise(len, len as u64 + 1);
        // Theirs → ours.
        let sealed = tool(
            python().to_str().unwrap(),
            &[
                script.to_str().unwrap(),
                "encrypt",
                keyfile.to_str().unwrap(),
            ],
            &data,
        );
        assert_eq!(
            sealed.len(),
            24 + len + 17 * (len / 8192 + 1),
            "WAL-G framing"
        );
        let back = decode_with_walden(&store, &tmp, &format!("sodium/{len}"), &sealed, &env);
        assert!(back == data, "PyNaCl → walden, {len} bytes");
        // Ours → theirs.
        let ours = encode_with_walden(&store, &tmp, &format!("ours/{len}"), "", &data, &env);
        let opened = tool(
            python().to_str().unwrap(),
            &[
                script.to_str().unwrap(),
                "decrypt",
                keyfile.to_str().unwrap(),
            ],
            &ours,
        );
        assert!(opened == data, "walden → PyNaCl, {len} bytes");
    }
}
