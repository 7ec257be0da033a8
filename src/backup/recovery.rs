//! Point-in-time recovery in one command: the recovery target given to
//! `backup-fetch`, checked before DEST is touched, and the settings that
//! make "start PostgreSQL on DEST" the whole restore: `recovery.signal`
//! (or `standby.signal`) and, appended to `postgresql.auto.conf`, a
//! `restore_command` calling this same walden binary, the target and
//! `recovery_target_action = 'promote'`.
//!
//! Never a secret in that file: settings that came from the environment
//! or flags are not written; the log names the ones the server's
//! environment must provide. A config file is passed by its path.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{known, Settings};
use crate::error::{Error, Result};
use crate::localfile::AtomicFile;

/// Where recovery stops (PostgreSQL's `recovery_target*` settings).
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The first commit after this instant (UTC; the text PostgreSQL gets
    /// is the same instant written in UTC, so both read one moment).
    Time(SystemTime),
    Lsn(u64),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    /// As soon as the backup is consistent.
    Immediate,
}

/// What `backup-fetch` was asked to set up besides the files.
#[derive(Debug, Default)]
pub struct Recovery {
    pub target: Option<Target>,
    pub standby: bool,
}

impl Recovery {
    /// Whether any recovery configuration is to be written.
    pub fn requested(&self) -> bool {
        self.target.is_some() || self.standby
    }
}

/// PostgreSQL's `MAXFNAMELEN - 1`: the longest restore point name.
const MAX_NAME: usize = 63;

/// One target from the command line; `kind` is the flag's name for
/// messages.
/// The one recovery target given on the command line, as (flag without
/// `--`, value) pairs in the order given; none is fine, two are an error.
/// `usage` adds the command's usage line to the message.
pub fn one_target(
    mut given: Vec<(String, String)>,
    usage: impl Fn(String) -> Error,
) -> Result<Option<Target>> {
    if given.len() > 1 {
        let names: Vec<String> = given.iter().map(|(f, _)| format!("--{f}")).collect();
        return Err(usage(format!(
            "give one recovery target, not {}",
            names.join(" and ")
        )));
    }
    given
        .pop()
        .map(|(flag, text)| parse_target(&flag, &text))
        .transpose()
}

pub fn parse_target(kind: &str, text: &str) -> Result<Target> {
    let bad = |why: String| Error::Usage(format!("--{kind} '{text}' is invalid: {why}"));
    match kind {
        "recovery-target-time" => parse_time(text).map(Target::Time).map_err(bad),
        "recovery-target-lsn" => parse_lsn(text).map(Target::Lsn).ok_or_else(|| {
            bad(
                "an LSN is two hexadecimal numbers of at most 8 digits, as X/Y (e.g. 0/3000060)"
                    .into(),
            )
        }),
        "recovery-target-name" => {
            if text.is_empty() {
                Err(bad("a restore point name cannot be empty".into()))
            } else if text.len() > MAX_NAME {
                Err(bad(format!(
                    "PostgreSQL's restore point names have at most {MAX_NAME} bytes"
                )))
            } else if text.chars().any(char::is_control) {
                Err(bad("it contains a control character".into()))
            } else {
                Ok(Target::Name(text.to_string()))
            }
        }
        "recovery-target" if text == "immediate" => Ok(Target::Immediate),
        "recovery-target" => Err(bad("the only value is 'immediate'".into())),
        _ => Err(bad("unknown target".into())),
    }
}

/// `X/Y` with 1–8 hex digits on each side, as `pg_lsn` reads it.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some(((hex(hi)? as u64) << 32) | hex(lo)? as u64)
}

/// `YYYY-MM-DD HH:MM[:SS[.ffffff]]ZONE`, the ISO form PostgreSQL's
/// `timestamptz` input reads (`T` may stand for the space), where ZONE is
/// `Z`, `UTC`, `GMT` or an offset `+HH`, `+HHMM`, `+HH:MM` (or `-`),
/// optionally after a space. The zone is required: without one
/// PostgreSQL would read the time in the restored server's `TimeZone`,
/// which walden cannot know when it picks the backup.
pub fn parse_time(text: &str) -> std::result::Result<SystemTime, String> {
    const FORM: &str = "expected 'YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]' (or Z/UTC as the zone), e.g. '2026-12-05 14:30:00+00'";
    let s = text.trim();
    let num = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, rest) = s
        .split_once([' ', 'T'])
        .ok_or_else(|| format!("no time of day; {FORM}"))?;
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(day), None) = (
        d.next().and_then(|p| num(p, 4)),
        d.next().and_then(|p| num(p, 2)),
        d.next().and_then(|p| num(p, 2)),
        d.next(),
    ) else {
        return Err(format!("'{date}' is not a date YYYY-MM-DD; {FORM}"));
    };
    // Split the clock from the zone: the zone starts at a letter, '+' or '-'.
    let rest = rest.trim_start();
    let at = rest
        .find(|c: char| c.is_ascii_alphabetic() || c == '+' || c == '-')
        .ok_or_else(|| {
            format!(
                "no time zone; PostgreSQL would read it in the restored server's TimeZone, \
                 which walden cannot know: add one, e.g. '+00' or 'UTC'; {FORM}"
            )
        })?;
    let (clock, zone) = (rest[..at].trim_end(), &rest[at..]);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = hms.split(':');
    let (Some(h), Some(mi), sec, None) = (
        c.next().and_then(|p| num(p, 2)),
        c.next().and_then(|p| num(p, 2)),
        c.next().map(|p| num(p, 2)),
        c.next(),
    ) else {
        return Err(format!("'{clock}' is not a time HH:MM:SS; {FORM}"));
    };
    let sec = match sec {
        None => 0,
        Some(Some(s)) if s < 60 => s,
        Some(_) => return Err(format!("'{clock}' is not a time HH:MM:SS; {FORM}")),
    };
    if frac.len() > 6 || (!frac.is_empty() && !frac.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!(
            "the fraction '.{frac}' must be 1 to 6 digits (PostgreSQL keeps microseconds)"
        ));
    }
    let micros: u32 = format!("{frac:0<6}").parse().unwrap_or(0);
    let offset = zone_offset(zone).ok_or_else(|| {
        format!(
            "'{zone}' is not a time zone walden reads (Z, UTC, GMT, +HH, +HHMM, +HH:MM); {FORM}"
        )
    })?;
    let local = crate::time::to_time(y as i64, mo, day, h, mi, sec, micros * 1000)
        .filter(|_| day <= days_in_month(y, mo))
        .ok_or_else(|| format!("'{date} {clock}' is not a valid date and time"))?;
    let utc = if offset >= 0 {
        local.checked_sub(std::time::Duration::from_secs(offset as u64))
    } else {
        local.checked_add(std::time::Duration::from_secs(offset.unsigned_abs()))
    };
    utc.ok_or_else(|| "the time is out of range".to_string())
}

fn days_in_month(y: u32, mo: u32) -> u32 {
    match mo {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Seconds east of UTC.
fn zone_offset(zone: &str) -> Option<i64> {
    if matches!(zone, "Z" | "z" | "UTC" | "GMT" | "utc" | "gmt") {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &zone[1..];
    let (h, m) = match (body.len(), body.split_once(':')) {
        (_, Some((h, m))) => (h, m),
        (2, None) => (body, "00"),
        (4, None) => body.split_at(2),
        _ => return None,
    };
    if h.len() != 2 || m.len() != 2 || !(h.to_string() + m).bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 15 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// A value as a quoted string in a PostgreSQL configuration file: the
/// file's lexer reads `''` as a quote and `\` as an escape.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A word for `/bin/sh`, quoted only when it needs to be; then `%`
/// doubled, since PostgreSQL expands `%f`, `%p` and `%%` in
/// `restore_command`.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@=".contains(&b));
    let quoted = if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    };
    quoted.replace('%', "%%")
}

/// PostgreSQL's timestamptz text of `t` in UTC, with microseconds.
fn pg_time(t: SystemTime) -> String {
    // rfc3339_nano gives `2026-12-05T14:30:00.123456Z` (fraction trimmed).
    let text = crate::time::rfc3339_nano(t);
    let body = text.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{body}+00")
}

const TARGET_SETTINGS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The lines appended to `postgresql.auto.conf`. Every `recovery_target*`
/// setting is written, the unused ones empty: a backup of a server that
/// was itself restored to a target may carry old ones, and PostgreSQL
/// refuses two targets at once (its config reader keeps only the last
/// line of each name, so ours win).
pub fn conf_lines(recovery: &Recovery, exe: &Path, config: Option<&Path>, backup: &str) -> String {
    let mut command = shell_word(&exe.to_string_lossy());
    if let Some(c) = config {
        command.push_str(" --config ");
        command.push_str(&shell_word(&c.to_string_lossy()));
    }
    command.push_str(" wal-fetch %f %p");
    let chosen = match &recovery.target {
        Some(Target::Time(t)) => Some(("recovery_target_time", pg_time(*t))),
        Some(Target::Lsn(l)) => Some((
            "recovery_target_lsn",
            format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff),
        )),
        Some(Target::Name(n)) => Some(("recovery_target_name", n.clone())),
        Some(Target::Immediate) => Some(("recovery_target", "immediate".to_string())),
        None => None,
    };
    let mut out = format!("\n# Added by walden backup-fetch (backup {backup})\n");
    out.push_str(&format!("restore_command = {}\n", conf_quote(&command)));
    // The empty ones first: PostgreSQL applies settings in file order and
    // refuses any recovery_target* assigned after one that is set, even
    // an empty one.
    for setting in TARGET_SETTINGS {
        if chosen.as_ref().is_none_or(|(s, _)| *s != setting) {
            out.push_str(&format!("{setting} = ''\n"));
        }
    }
    if let Some((setting, value)) = &chosen {
        out.push_str(&format!("{setting} = {}\n", conf_quote(value)));
    }
    if recovery.target.is_some() && !recovery.standby {
        out.push_str("recovery_target_action = 'promote'\n");
    }
    out
}

/// Settings walden read from the environment or from flags that
/// `wal-fetch` may need: not written anywhere, so the server's environment
/// must provide them. libpq's connection settings are left out
/// (`wal-fetch` does not connect), and so is the config file's path
/// (`restore_command` names the file).
pub fn names_from_environment(settings: &Settings) -> Vec<String> {
    settings
        .names_set()
        .into_iter()
        .filter(|n| matches!(settings.origin(n), Some("environment" | "flag")))
        .filter(|n| known::KNOWN.contains(&n.as_str()))
        .filter(|n| !n.starts_with("PG") && n != "WALG_CONFIG_PATH")
        .collect()
}

/// After a restore: what was written, and what the server needs that
/// walden could not write.
pub fn report(settings: &Settings, recovery: &Recovery, dest: &Path) {
    let signal = if recovery.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    log::info!(
        "Wrote {signal} and the recovery settings to '{}': starting PostgreSQL on it completes the restore",
        dest.join("postgresql.auto.conf").display()
    );
    if let Ok(Some(config)) = config_file(settings) {
        log::info!(
            "restore_command reads the config file '{}': the server's user must be able to read it",
            config.display()
        );
    }
    let names = names_from_environment(settings);
    if !names.is_empty() {
        log::warn!(
            "These settings came from the environment or flags, and no secret goes into postgresql.auto.conf: \
             the restored server's environment must provide those its restore_command needs: {}",
            names.join(", ")
        );
    }
}

/// The absolute path of the config file this run read, if any.
pub fn config_file(settings: &Settings) -> Result<Option<PathBuf>> {
    match &settings.config_path {
        None => Ok(None),
        Some(p) => std::path::absolute(p)
            .map(Some)
            .map_err(|e| Error::io(format!("resolving the config file '{}'", p.display()), e)),
    }
}

/// Append `lines` to DEST's `postgresql.auto.conf` (kept as the backup
/// had it, or created) and write the signal file. Both are replaced
/// atomically, so a restore cut short never leaves half a setting; the
/// caller writes them before `pg_control`, so until they are complete
/// there is nothing PostgreSQL could start from.
pub fn write(dest: &Path, recovery: &Recovery, lines: &str) -> Result<()> {
    let auto = dest.join("postgresql.auto.conf");
    let mut text = match fs::read(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            b"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n".to_vec()
        }
        Err(e) => return Err(Error::io(format!("reading '{}'", auto.display()), e)),
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(lines.as_bytes());
    put(&auto, &text, 0o600)?;
    let (signal, other) = if recovery.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    // A backup taken from a standby may hold its standby.signal: left in
    // place it would keep a server meant to promote in standby mode.
    match fs::remove_file(dest.join(other)) {
        Ok(()) => log::info!("Removed the backup's {other}: this restore asks for {signal}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                format!("removing '{}'", dest.join(other).display()),
                e,
            ))
        }
    }
    put(&dest.join(signal), b"", 0o600)
}

fn put(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let context = || format!("writing '{}'", path.display());
    let mut f = AtomicFile::create(path).map_err(|e| Error::io(context(), e))?;
    f.write_all(data).map_err(|e| Error::io(context(), e))?;
    f.commit().map_err(|e| Error::io(context(), e))?;
    // PostgreSQL's own mode for the files it writes in the data directory.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(context(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64, micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
    }

    #[test]
    fn times_as_postgresql_writes_them() {
        // 2026-12-05 14:30:00 UTC
        let base = 1_796_481_000;
        assert_eq!(parse_time("2026-12-05 14:30:00+00").unwrap(), at(base, 0));
        assert_eq!(parse_time("2026-12-05T14:30:00Z").unwrap(), at(base, 0));
        assert_eq!(parse_time("2026-12-05 14:30:00 UTC").unwrap(), at(base, 0));
        assert_eq!(parse_time("2026-12-05 15:30:00+01").unwrap(), at(base, 0));
        assert_eq!(
            parse_time("2026-12-05 16:00:00+01:30").unwrap(),
            at(base, 0)
        );
        assert_eq!(parse_time("2026-12-05 09:30-0500").unwrap(), at(base, 0));
        assert_eq!(
            parse_time("2026-12-05 14:30:00.25+00").unwrap(),
            at(base, 250_000)
        );
        assert_eq!(
            parse_time("2026-12-05 14:30:00.123456+00:00").unwrap(),
            at(base, 123_456)
        );
        for bad in [
            "2026-12-05 14:30:00",
            "yesterday",
            "2026-13-05 14:30:00+00",
            "2026-02-30 14:30:00+00",
            "2026-12-05 25:30:00+00",
            "2026-12-05 14:30:00.1234567+00",
            "2026-12-05 14:30:00+0x",
            "2026-12-05 14:30:00 Europe/Paris",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse_time("2026-12-05 14:30:00")
            .unwrap_err()
            .contains("no time zone"));
        assert_eq!(pg_time(at(base, 250_000)), "2026-12-05 14:30:00.25+00");
        assert_eq!(pg_time(at(base, 0)), "2026-12-05 14:30:00+00");
    }

    #[test]
    fn lsns_and_targets() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("1A/FFFFFFFF"), Some(0x1A_FFFF_FFFF));
        for bad in ["", "0", "0/", "/1", "x/1", "123456789/0", "0/1/2", " 0/1"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
        assert_eq!(
            parse_target("recovery-target", "immediate").unwrap(),
            Target::Immediate
        );
        assert!(parse_target("recovery-target", "latest").is_err());
        assert!(parse_target("recovery-target-name", "").is_err());
        assert!(parse_target("recovery-target-name", &"n".repeat(64)).is_err());
        assert!(parse_target("recovery-target-name", "a\nb").is_err());
        let e = parse_target("recovery-target-lsn", "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--recovery-target-lsn 'nope'"), "{e}");
    }

    #[test]
    fn conf_lines_quote_and_name_every_target() {
        let r = Recovery {
            target: Some(Target::Name("it's".into())),
            standby: false,
        };
        let text = conf_lines(
            &r,
            Path::new("/opt/my tools/walden%1"),
            Some(Path::new("/etc/walg.json")),
            "base_1",
        );
        assert!(
            text.contains(
                "restore_command = '''/opt/my tools/walden%%1'' --config /etc/walg.json wal-fetch %f %p'\n"
            ),
            "{text}"
        );
        assert!(text.contains("recovery_target_name = 'it''s'\n"), "{text}");
        assert!(text.contains("recovery_target_time = ''\n"), "{text}");
        assert!(text.contains("recovery_target = ''\n"), "{text}");
        assert!(text.contains("recovery_target_action = 'promote'\n"));
        // The target set last, after every empty one.
        let set = text.find("recovery_target_name = 'it''s'").unwrap();
        assert!(text.rfind(" = ''\n").unwrap() < set, "{text}");
        let standby = Recovery {
            target: Some(Target::Lsn(0x1_0000_0028)),
            standby: true,
        };
        let text = conf_lines(&standby, Path::new("/usr/bin/walden"), None, "base_1");
        assert!(text.contains("restore_command = '/usr/bin/walden wal-fetch %f %p'\n"));
        assert!(text.contains("recovery_target_lsn = '1/28'\n"), "{text}");
        assert!(!text.contains("recovery_target_action"), "{text}");
        assert_eq!(shell_word("a'b"), "'a'\\''b'");
    }

    #[test]
    fn written_after_what_the_backup_had() {
        let dir = std::env::temp_dir().join(format!("walden-recovery-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("postgresql.auto.conf"), "work_mem = '8MB'").unwrap();
        fs::write(dir.join("standby.signal"), "").unwrap();
        let r = Recovery {
            target: Some(Target::Immediate),
            standby: false,
        };
        write(&dir, &r, "recovery_target = 'immediate'\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap(),
            "work_mem = '8MB'\nrecovery_target = 'immediate'\n"
        );
        assert!(dir.join("recovery.signal").is_file());
        assert!(!dir.join("standby.signal").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
