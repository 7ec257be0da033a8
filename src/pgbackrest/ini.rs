//! pgBackRest's info-file format (backup.info, archive.info,
//! backup.manifest): INI sections whose values are JSON, sealed by a SHA-1
//! of the whole content (spec §3). Read line by line: the checksum is
//! computed as the lines pass, and only the sections the caller asks for
//! are kept, so a manifest of a million files costs no memory.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
use serde_json::Value;

use super::PgbrError;
use crate::error::Result;

/// The only repository format pgBackRest has written up to 2.60.
const FORMAT: u64 = 5;

/// The longest line read. pgBackRest's longest are a manifest's file
/// entries: a path (at most PATH_MAX, 4 KiB) and a few hundred bytes of
/// JSON. Without a cap, a file without newlines would be held whole.
const MAX_LINE: usize = 1 << 20;

/// The kept sections of one info file, repeated sections merged.
#[derive(Debug, Default)]
pub struct Ini {
    pub sections: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Ini {
    pub fn section(&self, name: &str) -> Option<&BTreeMap<String, Value>> {
        self.sections.get(name)
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections.get(section).and_then(|s| s.get(key))
    }
}

/// Parse `input` (named `what` in errors), keeping the sections for which
/// `keep` is true, and verify `[backrest] backrest-checksum` and
/// `backrest-format`.
#[cfg(test)]
pub fn parse(input: &mut dyn BufRead, what: &str, keep: &dyn Fn(&str) -> bool) -> Result<Ini> {
    parse_with(input, what, keep, &mut |_, _, _| Ok(()))
}

/// [`parse`], handing every line of a section that is not kept to `sink`
/// as it passes (a manifest's `[target:file]`, streamed). The checksum is
/// known only at the end: `sink` must not publish anything that depends
/// on it being right.
pub fn parse_with(
    input: &mut dyn BufRead,
    what: &str,
    keep: &dyn Fn(&str) -> bool,
    sink: &mut dyn FnMut(&str, &str, Value) -> Result<()>,
) -> Result<Ini> {
    let bad = |line: usize, problem: String| PgbrError::Format {
        what: what.to_string(),
        problem: format!("line {line}: {problem}"),
    };
    let mut ini = Ini::default();
    // Sections that hold what this reader checks itself, always kept.
    let keep = |s: &str| s == "backrest" || keep(s);
    let mut hash = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(b"{");
    let mut section: Option<String> = None;
    let mut previous: Option<String> = None;
    let mut stored_checksum: Option<String> = None;
    let mut raw = Vec::new();
    let mut number = 0;
    loop {
        raw.clear();
        let n = (&mut *input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)
            .map_err(|e| PgbrError::Read {
                what: what.to_string(),
                problem: e.to_string(),
            })?;
        if n == 0 {
            break;
        }
        number += 1;
        if n > MAX_LINE && raw.last() != Some(&b'\n') {
            return Err(bad(
                number,
                format!(
                    "longer than {} MiB, which no pgBackRest info file or manifest has: \
                     the file is damaged or not pgBackRest's",
                    MAX_LINE >> 20
                ),
            )
            .into());
        }
        if raw.last() == Some(&b'\n') {
            raw.pop();
        }
        let line = std::str::from_utf8(&raw).map_err(|_| {
            bad(
                number,
                "not UTF-8 (wrong passphrase or not an info file?)".into(),
            )
        })?;
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = Some(line[1..line.len() - 1].to_string());
            continue;
        }
        let s = section
            .as_deref()
            .ok_or_else(|| bad(number, "a key before any [section]".into()))?;
        let (key, value_text, value) =
            split_key_value(line).ok_or_else(|| bad(number, "not key=JSON value".into()))?;
        if s == "backrest" && key == "backrest-checksum" {
            stored_checksum = Some(value.as_str().unwrap_or_default().to_string());
            continue;
        }
        // spec §3.2: the content re-encoded as one JSON object.
        match previous.as_deref() {
            None => {
                hash.update(b"\"");
                hash.update(s.as_bytes());
                hash.update(b"\":{");
            }
            Some(p) if p != s => {
                hash.update(b"},\"");
                hash.update(s.as_bytes());
                hash.update(b"\":{");
            }
            Some(_) => hash.update(b","),
        }
        hash.update(json_key(key).as_bytes());
        hash.update(b":");
        hash.update(value_text.as_bytes());
        if previous.as_deref() != Some(s) {
            previous = Some(s.to_string());
        }
        if keep(s) {
            ini.sections
                .entry(s.to_string())
                .or_default()
                .insert(key.to_string(), value);
        } else {
            sink(s, key, value)?;
        }
    }
    hash.update(b"}}");
    let actual: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match stored_checksum {
        None => {
            return Err(PgbrError::Format {
                what: what.to_string(),
                problem: "no [backrest] backrest-checksum (truncated file?)".into(),
            }
            .into())
        }
        Some(stored) if stored != actual => {
            return Err(PgbrError::Format {
                what: what.to_string(),
                problem: format!("invalid checksum: stored {stored}, content hashes to {actual}"),
            }
            .into())
        }
        Some(_) => {}
    }
    match ini
        .get("backrest", "backrest-format")
        .and_then(Value::as_u64)
    {
        Some(FORMAT) => Ok(ini),
        other => Err(PgbrError::Format {
            what: what.to_string(),
            problem: format!(
                "backrest-format is {}, walden reads format {FORMAT} (pgBackRest 2.x)",
                other.map_or_else(|| "missing".to_string(), |v| v.to_string())
            ),
        }
        .into()),
    }
}

/// Split at the first `=` whose right side is valid JSON: file names in a
/// manifest may contain `=` (spec §3.1).
fn split_key_value(line: &str) -> Option<(&str, &str, Value)> {
    let mut from = 0;
    while let Some(i) = line[from..].find('=') {
        let at = from + i;
        let text = &line[at + 1..];
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            return Some((&line[..at], text, v));
        }
        from = at + 1;
    }
    None
}

/// pgBackRest's `jsonWriteStr`: only `"` `\` and five control characters
/// escaped, everything else as is (spec §3.2).
fn json_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(body: &str) -> String {
        // Compute the checksum the way the spec describes, through parse's
        // own error message, then write it in.
        let probe = format!("{body}\n[backrest]\nbackrest-checksum=\"0\"\n");
        let err = parse(&mut probe.as_bytes(), "t", &|_| true).unwrap_err();
        let text = err.to_string();
        let sum = text.rsplit(' ').next().unwrap().to_string();
        format!("{body}\n[backrest]\nbackrest-checksum=\"{sum}\"\n")
    }

    #[test]
    fn parses_json_values_and_keys_with_equals() {
        let text = sealed(
            "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n[target:file]\npg_data/a=b={\"size\":1}\npg_data/x={\"size\":18446744073709551615}\n",
        );
        let ini = parse(&mut text.as_bytes(), "t", &|_| true).unwrap();
        assert_eq!(ini.get("target:file", "pg_data/a=b").unwrap()["size"], 1);
        assert_eq!(
            ini.get("target:file", "pg_data/x").unwrap()["size"].as_u64(),
            Some(u64::MAX)
        );
        let skipped = parse(&mut text.as_bytes(), "t", &|s| s != "target:file").unwrap();
        assert!(skipped.section("target:file").is_none());
    }

    #[test]
    fn a_changed_byte_fails_the_checksum() {
        let text = sealed("[backrest]\nbackrest-format=5\n\n[db]\ndb-id=1\n");
        let changed = text.replace("db-id=1", "db-id=2");
        let err = parse(&mut changed.as_bytes(), "backup.info", &|_| true).unwrap_err();
        assert!(err.to_string().contains("invalid checksum"), "{err}");
        let truncated = &text[..text.find("[backrest]\nbackrest-checksum").unwrap()];
        let err = parse(&mut truncated.as_bytes(), "backup.info", &|_| true).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_line_over_the_cap_is_refused_without_holding_it() {
        let body = "[backrest]\nbackrest-format=5\n\n[db]\ndb-id=1\n";
        // Exactly the cap, newline included, is read.
        let fits = format!("{body}[junk]\nk=\"{}\"\n", "a".repeat(MAX_LINE - 5));
        let err = parse(&mut fits.as_bytes(), "t", &|_| true).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        for tail in ["", "\n"] {
            let long = format!("{body}[junk]\nk=\"{}\"{tail}", "a".repeat(MAX_LINE));
            let err = parse(&mut long.as_bytes(), "backup.manifest", &|_| true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("backup.manifest") && err.contains("line 7: longer than 1 MiB"),
                "{err}"
            );
        }
    }

    #[test]
    fn other_formats_are_refused() {
        let text = sealed("[backrest]\nbackrest-format=4\n");
        let err = parse(&mut text.as_bytes(), "t", &|_| true).unwrap_err();
        assert!(err.to_string().contains("backrest-format is 4"), "{err}");
    }
}
