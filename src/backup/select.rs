//! Choosing the backup `backup-fetch` restores (spec §9.1): a name,
//! `LATEST`, the one whose user data equals `--target-user-data`, and,
//! with a recovery target, the newest backup that finished before it.
//!
//! A backup exists only once its sentinel does. Sentinels are read one at
//! a time and only the best candidate is kept, so memory does not grow
//! with the number of backups.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::recovery::Target;
use super::{catalog, layout};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The backup argument of the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    Latest,
    Name(String),
    /// `--target-user-data` / `WALG_FETCH_TARGET_USER_DATA`.
    UserData(Value),
}

pub struct Chosen {
    pub name: String,
    pub sentinel: Value,
}

pub fn choose(
    storage: &Arc<dyn Storage>,
    wanted: &Wanted,
    target: Option<&Target>,
) -> Result<Chosen> {
    let chosen = match (wanted, target) {
        (Wanted::Name(name), _) => by_name(storage, name)?,
        (Wanted::UserData(data), _) => by_user_data(storage, data)?,
        (Wanted::Latest, Some(t @ (Target::Time(_) | Target::Lsn(_)))) => {
            before_target(storage, t)?
        }
        (Wanted::Latest, Some(Target::Name(point))) => {
            let chosen = latest(storage)?;
            log::warn!(
                "Restore point '{point}': where it lies cannot be known before replay, so LATEST is the newest backup, {}; \
                 if the restore point was made before that backup finished, recovery will end without reaching it: \
                 give an older backup's name instead",
                chosen.name
            );
            chosen
        }
        (Wanted::Latest, _) => latest(storage)?,
    };
    // A backup chosen by name or user data must still end before the
    // target, or PostgreSQL would stop at once with "requested recovery
    // stop point is before consistent recovery point".
    if let Some(t) = target {
        if let Some(why) = ends_after(&chosen, t) {
            return Err(Error::Usage(format!(
                "backup {} cannot be recovered to the target: {why}; choose an older backup, or LATEST",
                chosen.name
            )));
        }
    }
    Ok(chosen)
}

fn by_name(storage: &Arc<dyn Storage>, name: &str) -> Result<Chosen> {
    let entry = catalog::find(storage, name, "walden backup-fetch DEST NAME|LATEST")?;
    read(storage, &entry.name)
}

/// Every finished backup's name, oldest first. Names that could point
/// elsewhere in storage (`..`, `/`) are skipped: they are never ours.
fn each_backup(storage: &Arc<dyn Storage>, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    for entry in catalog::list(storage)? {
        if layout::valid_name(&entry.name) {
            f(&entry.name)?;
        }
    }
    Ok(())
}

/// `LATEST`: the backup whose sentinel was stored last (spec §9.1).
fn latest(storage: &Arc<dyn Storage>) -> Result<Chosen> {
    let entry = catalog::latest(storage)?.ok_or_else(|| catalog::no_backups(storage))?;
    read(storage, &entry.name)
}

/// The sentinel's `FinishTime`, if it has one walden can read.
fn finish_time(sentinel: &Value) -> Option<SystemTime> {
    sentinel
        .get("FinishTime")
        .and_then(Value::as_str)
        .and_then(crate::time::parse_iso8601)
}

fn finish_lsn(sentinel: &Value) -> Option<u64> {
    sentinel.get("FinishLSN").and_then(Value::as_u64)
}

/// Where the backup ends, on the target's scale, if known.
fn end_on_scale(sentinel: &Value, target: &Target) -> Option<Ends> {
    match target {
        Target::Time(_) => finish_time(sentinel).map(Ends::Time),
        Target::Lsn(_) => finish_lsn(sentinel).map(Ends::Lsn),
        _ => None,
    }
}

#[derive(PartialEq, PartialOrd)]
enum Ends {
    Time(SystemTime),
    Lsn(u64),
}

/// Whether a backup ending at `end` can be recovered to `target`: it
/// must finish strictly before a time, and at or before an LSN.
fn usable(end: &Ends, target: &Target) -> bool {
    match (end, target) {
        (Ends::Time(e), Target::Time(t)) => e < t,
        (Ends::Lsn(e), Target::Lsn(t)) => e <= t,
        _ => false,
    }
}

/// Why the chosen backup cannot reach the target, if it cannot.
fn ends_after(chosen: &Chosen, target: &Target) -> Option<String> {
    let end = end_on_scale(&chosen.sentinel, target)?;
    if usable(&end, target) {
        return None;
    }
    Some(match (&end, target) {
        (Ends::Time(e), _) => format!(
            "it finished at {}, not before the target time",
            crate::time::rfc3339_nano(*e)
        ),
        (Ends::Lsn(e), _) => format!(
            "it finished at LSN {:X}/{:X}, after the target LSN",
            e >> 32,
            e & 0xffff_ffff
        ),
    })
}

/// LATEST with a time or LSN target: of the backups that finished before
/// it, the one that finished last.
fn before_target(storage: &Arc<dyn Storage>, target: &Target) -> Result<Chosen> {
    let mut best: Option<(Ends, Chosen)> = None;
    let mut seen = 0usize;
    each_backup(storage, &mut |name| {
        seen += 1;
        let candidate = read(storage, name)?;
        let Some(end) = end_on_scale(&candidate.sentinel, target) else {
            log::warn!(
                "Backup {name}: its sentinel has no {} walden can read; it is not considered for the recovery target",
                if matches!(target, Target::Time(_)) { "FinishTime" } else { "FinishLSN" }
            );
            return Ok(());
        };
        if usable(&end, target) && best.as_ref().is_none_or(|(b, _)| end > *b) {
            best = Some((end, candidate));
        }
        Ok(())
    })?;
    match best {
        Some((_, chosen)) => {
            log::info!(
                "Backup {} is the newest that finished before the recovery target",
                chosen.name
            );
            Ok(chosen)
        }
        None if seen == 0 => Err(catalog::no_backups(storage)),
        None => Err(Error::Usage(format!(
            "none of the {seen} backups in {} finished before the recovery target: \
             the target is too early to be reached from any backup",
            storage.location()
        ))),
    }
}

/// The one backup whose user data equals `data` (WAL-G compares JSON
/// values, numbers as float64). None, or several, is an error.
fn by_user_data(storage: &Arc<dyn Storage>, data: &Value) -> Result<Chosen> {
    let mut found: Option<Chosen> = None;
    let mut extra: Vec<String> = Vec::new();
    each_backup(storage, &mut |name| {
        let candidate = read(storage, name)?;
        let user = candidate
            .sentinel
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("UserData")))
            .map(|(_, v)| v);
        if user.is_some_and(|u| json_equal(u, data)) {
            if found.is_none() {
                found = Some(candidate);
            } else if extra.len() < 5 {
                extra.push(name.to_string());
            }
        }
        Ok(())
    })?;
    match found {
        None => Err(Error::Other(format!(
            "no backup in {} has the user data {data}",
            storage.location()
        ))),
        Some(first) if extra.is_empty() => Ok(first),
        Some(first) => Err(Error::Other(format!(
            "several backups have the user data {data}: {}, {}; give the backup's name instead",
            first.name,
            extra.join(", ")
        ))),
    }
}

/// JSON equality as Go's `reflect.DeepEqual` on decoded values sees it:
/// every number is a float64, so `1` equals `1.0`.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn read(storage: &Arc<dyn Storage>, name: &str) -> Result<Chosen> {
    Ok(Chosen {
        name: name.to_string(),
        sentinel: Value::Object(catalog::read_sentinel(storage, name)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_data_compares_as_go_does() {
        assert!(json_equal(
            &json!({"a": 1, "b": [1, "x"]}),
            &json!({"b": [1.0, "x"], "a": 1.0})
        ));
        assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_equal(&json!("1"), &json!(1)));
        assert!(json_equal(&json!(null), &json!(null)));
    }

    #[test]
    fn targets_against_backup_ends() {
        let t = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let chosen = Chosen {
            name: "base_1".into(),
            sentinel: json!({"FinishLSN": 100, "FinishTime": "1970-01-01T00:01:40.000001Z"}),
        };
        assert!(ends_after(&chosen, &Target::Lsn(100)).is_none());
        assert!(ends_after(&chosen, &Target::Lsn(99))
            .unwrap()
            .contains("0/64"));
        assert!(ends_after(&chosen, &Target::Time(t(101))).is_none());
        assert!(ends_after(&chosen, &Target::Time(t(100))).is_some());
        assert!(ends_after(&chosen, &Target::Immediate).is_none());
    }
}
