//! Reading backup-push's tuning settings: WAL-G's Go durations
//! (`WALG_ALIVE_CHECK_INTERVAL`, `WALG_STOP_BACKUP_TIMEOUT`) and byte rates.

use std::time::Duration;

use crate::config::{ConfigError, Settings};

/// Go's `time.ParseDuration`: `1m`, `30s`, `1h30m`, `250ms`, `1.5s`, `0`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = t;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// A duration setting, `default` when unset; `None` when zero.
pub fn duration(
    settings: &Settings,
    name: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = settings.get_explicit(name) else {
        return Ok(default);
    };
    match parse_go_duration(&text) {
        Some(d) if d.is_zero() => Ok(None),
        Some(d) => Ok(Some(d)),
        None => Err(ConfigError::Invalid {
            name: name.into(),
            value: text,
            problem: "expected a duration such as 30s, 1m or 1h30m".into(),
        }),
    }
}

/// A bytes-per-second limit; `None` when unset or zero.
pub fn rate(settings: &Settings, name: &str) -> Result<Option<u64>, ConfigError> {
    let Some(text) = settings.get_explicit(name) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(ConfigError::Invalid {
            name: name.into(),
            value: text,
            problem: "expected a whole number of bytes per second".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("1m"), Some(Duration::from_secs(60)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("10"), None);
        assert_eq!(d("1x"), None);
        assert_eq!(d(""), None);
    }
}
