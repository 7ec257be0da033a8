//! `walden backup-mark NAME [-i]`: WAL-G's semantics (spec walg-wal-admin
//! §9.2). Permanence lives in `metadata.json`'s `is_permanent`, which is
//! what WAL-G's `delete` and walden read. Marking permanent also marks
//! every base a delta backup depends on (following `DeltaFrom` in the
//! sentinels), bases first; `-i` unmarks only NAME and is refused while a
//! permanent delta backup is taken against it.
//!
//! The sentinel is not rewritten, as WAL-G leaves it: a backup's age (its
//! place in backup-list, and what LATEST means) is the sentinel's
//! modification time, and rewriting it would make the marked backup the
//! newest. The sentinel's own `IsPermanent` records the state at
//! backup-push time; WAL-G never reads it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;

use super::catalog;
use super::layout;
use crate::commands::open_storage;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Storage;

const USAGE: &str = "walden backup-mark NAME [-i|--impermanent]";

/// A delta chain longer than this is a loop in damaged sentinels.
const MAX_CHAIN: usize = 10_000;

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut name: Option<String> = None;
    let mut permanent = true;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('i') | Long("impermanent") => permanent = false,
            Value(v) if name.is_none() => {
                name =
                    Some(v.into_string().map_err(|_| {
                        Error::Usage(format!("the name must be UTF-8; usage: {USAGE}"))
                    })?)
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{}; usage: {USAGE}",
                    arg.unexpected()
                )))
            }
        }
    }
    let name = name.ok_or_else(|| Error::Usage(format!("no backup name given; usage: {USAGE}")))?;
    catalog::check_name(&name, USAGE)?;
    let storage = open_storage(settings)?;
    if storage.stat(&layout::sentinel_key(&name))?.is_none() {
        return Err(catalog::not_found(&storage, &name));
    }
    log::info!("Retrieving previous related backups to be marked: toPermanent={permanent}");
    let meta = catalog::read_metadata(&storage, &name)?;
    if meta.is_permanent == permanent {
        let state = if permanent {
            "permanent"
        } else {
            "impermanent"
        };
        log::warn!("Backup {name} is already marked as {state}, ignoring...");
    }
    let to_mark = if permanent {
        chain_to_mark(&storage, &name)?
    } else {
        refuse_if_needed_by_permanent(&storage, &name)?;
        if meta.is_permanent {
            vec![name.clone()]
        } else {
            Vec::new()
        }
    };
    log::info!(
        "Retrieved backups to be marked, marking: [{}]",
        to_mark.join(" ")
    );
    for b in &to_mark {
        set_permanent(&storage, b, permanent)?;
    }
    Ok(())
}

/// NAME and the bases it depends on that are not permanent yet, the full
/// backup first (the order WAL-G marks them in).
pub(crate) fn chain_to_mark(storage: &Arc<dyn Storage>, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut current = name.to_string();
    loop {
        if !seen.insert(current.clone()) || seen.len() > MAX_CHAIN {
            return Err(Error::Other(format!(
                "the delta chain of backup {name} loops back to {current}: its sentinels are damaged"
            )));
        }
        if current != name && storage.stat(&layout::sentinel_key(&current))?.is_none() {
            return Err(Error::Other(format!(
                "backup {name} depends on {current}, which is not in {} (no sentinel); \
                 the chain is broken and cannot be marked permanent",
                storage.location()
            )));
        }
        if !catalog::read_metadata(storage, &current)?.is_permanent {
            out.push(current.clone());
        }
        // Sentinels are read one at a time and dropped.
        match catalog::delta_from(&catalog::read_sentinel(storage, &current)?) {
            Some(base) => {
                catalog::check_name(&base, USAGE).map_err(|_| {
                    Error::Other(format!(
                        "the sentinel of {current} names '{base}' as its base, which is not a backup name; it is damaged"
                    ))
                })?;
                current = base;
            }
            None => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// `-i`: refused while a permanent backup is a delta taken directly
/// against NAME (WAL-G checks direct children only).
fn refuse_if_needed_by_permanent(storage: &Arc<dyn Storage>, name: &str) -> Result<()> {
    for b in catalog::list(storage)? {
        if b.name == name {
            continue;
        }
        let sentinel = catalog::read_sentinel(storage, &b.name)?;
        if catalog::delta_from(&sentinel).as_deref() != Some(name) {
            continue;
        }
        if catalog::read_metadata(storage, &b.name)?.is_permanent {
            return Err(Error::Other(format!(
                "Can't mark backup '{name}' as impermanent. There is permanent increment backup that depends on this backup. \
                 (backup {} is a permanent delta of it; unmark that one first)",
                b.name
            )));
        }
    }
    Ok(())
}

/// Rewrite `metadata.json` with `is_permanent` set; every other byte
/// stays as it was. One PUT, which replaces the object whole.
pub(crate) fn set_permanent(storage: &Arc<dyn Storage>, name: &str, permanent: bool) -> Result<()> {
    let key = layout::metadata_key(name);
    let text = catalog::read_json_bytes(storage, &key, "metadata")?;
    let text = String::from_utf8(text).map_err(|_| {
        Error::Other(format!(
            "the metadata '{key}' is not UTF-8 text; it is damaged"
        ))
    })?;
    let new = set_bool_field(&text, "is_permanent", permanent)
        .map_err(|e| Error::Other(format!("the metadata '{key}' cannot be rewritten: {e}")))?;
    storage.put(&key, new.as_bytes())?;
    log::info!(
        "Backup {name} marked as {}",
        if permanent {
            "permanent"
        } else {
            "impermanent"
        }
    );
    Ok(())
}

/// `text` (a JSON object) with the top-level `key` (matched ignoring ASCII
/// case, as Go's decoder matches it) set to `value`, every other byte
/// unchanged; appended at the end when missing.
pub fn set_bool_field(text: &str, key: &str, value: bool) -> std::result::Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => return Err("it is not a JSON object".into()),
        Err(e) => return Err(format!("it is not valid JSON ({e})")),
    }
    let spans = top_level_values(text.as_bytes(), key)?;
    let literal = if value { "true" } else { "false" };
    let mut out = String::with_capacity(text.len() + 24);
    if spans.is_empty() {
        let end = text.rfind('}').ok_or("no closing brace")?;
        let body = text[..end].trim_end();
        out.push_str(body);
        if !body.ends_with('{') {
            out.push(',');
        }
        out.push_str(&format!("\"{key}\":{literal}"));
        out.push_str(&text[end..]);
    } else {
        let mut at = 0;
        for (s, e) in spans {
            out.push_str(&text[at..s]);
            out.push_str(literal);
            at = e;
        }
        out.push_str(&text[at..]);
    }
    debug_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    Ok(out)
}

/// Byte ranges of the values of top-level `key` in a valid JSON object.
fn top_level_values(b: &[u8], key: &str) -> std::result::Result<Vec<(usize, usize)>, String> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err("not an object".into());
    }
    i = skip_ws(b, i + 1);
    let mut spans = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Ok(spans);
    }
    loop {
        let k_end = skip_string(b, i)?;
        let raw_key = &b[i + 1..k_end - 1];
        i = skip_ws(b, k_end);
        if b.get(i) != Some(&b':') {
            return Err("a key without ':'".into());
        }
        let v_start = skip_ws(b, i + 1);
        let v_end = skip_value(b, v_start)?;
        if raw_key.eq_ignore_ascii_case(key.as_bytes()) {
            spans.push((v_start, v_end));
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(spans),
            _ => return Err("a value without ',' or '}' after it".into()),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `i`.
fn skip_string(b: &[u8], i: usize) -> std::result::Result<usize, String> {
    if b.get(i) != Some(&b'"') {
        return Err("expected a string".into());
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err("an unterminated string".into())
}

/// End (exclusive) of the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> std::result::Result<usize, String> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err("an unterminated object or array".into())
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Ok(j)
        }
        None => Err("a missing value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_field_changes_and_nothing_else() {
        let m = r#"{"start_time":"2026-08-21T18:02:35.123457Z","hostname":"a \"is_permanent\":false","user_data":{"is_permanent":false,"x":[{"y":"}"}]},"is_permanent":false,"system_identifier":null}"#;
        let out = set_bool_field(m, "is_permanent", true).unwrap();
        assert_eq!(
            out,
            m.replace(
                r#","is_permanent":false,"system"#,
                r#","is_permanent":true,"system"#
            )
        );
        assert_eq!(set_bool_field(&out, "is_permanent", false).unwrap(), m);
    }

    #[test]
    fn spacing_case_and_missing_key() {
        let m = "{ \"Is_Permanent\" : true ,\n \"a\": 1 }";
        assert_eq!(
            set_bool_field(m, "is_permanent", false).unwrap(),
            "{ \"Is_Permanent\" : false ,\n \"a\": 1 }"
        );
        assert_eq!(
            set_bool_field(r#"{"a":1}"#, "is_permanent", true).unwrap(),
            r#"{"a":1,"is_permanent":true}"#
        );
        assert_eq!(
            set_bool_field("{}", "is_permanent", true).unwrap(),
            r#"{"is_permanent":true}"#
        );
        assert!(set_bool_field("{nope", "is_permanent", true).is_err());
        assert!(set_bool_field("[1]", "is_permanent", true).is_err());
    }
}
