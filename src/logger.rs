//! A stderr (or file) logger writing WAL-G's line format:
//! `INFO: 2026/11/24 06:07:54.123456 message`, in local time.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// `WALG_LOG_LEVEL` values as WAL-G knows them.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value {
        "NORMAL" => Some(LevelFilter::Info),
        "DEVEL" => Some(LevelFilter::Debug),
        "ERROR" => Some(LevelFilter::Error),
        _ => None,
    }
}

struct Logger {
    sink: Mutex<Box<dyn Write + Send>>,
    /// Put before the level, e.g. "PREFETCH " for the prefetch child.
    prefix: &'static str,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Library logs (ureq, rustls) could show request headers; only
        // walden's own lines are written.
        metadata.level() <= log::max_level() && metadata.target().starts_with("walden")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
            Level::Debug | Level::Trace => "DEBUG",
        };
        let line = format!(
            "{}{}: {} {}\n",
            self.prefix,
            level,
            timestamp(),
            record.args()
        );
        if let Ok(mut sink) = self.sink.lock() {
            // A log line that cannot be written has nowhere else to go.
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
    }

    fn flush(&self) {
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.flush();
        }
    }
}

/// Install the logger. `destination` is `WALG_LOG_DESTINATION`: unset or
/// `stderr` means stderr, anything else a file opened for appending.
pub fn init(
    level: LevelFilter,
    destination: Option<&str>,
    prefix: &'static str,
) -> Result<(), String> {
    let sink: Box<dyn Write + Send> = match destination {
        None | Some("") | Some("stderr") => Box::new(std::io::stderr()),
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open WALG_LOG_DESTINATION '{path}': {e}"))?,
        ),
    };
    let logger = Logger {
        sink: Mutex::new(sink),
        prefix,
    };
    // A second init (only possible in tests) keeps the first logger.
    let _ = log::set_boxed_logger(Box::new(logger));
    log::set_max_level(level);
    Ok(())
}

/// `YYYY/MM/DD HH:MM:SS.uuuuuu` in local time, as Go's log package prints.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on our stack.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{}.{:06}", now.as_secs(), now.subsec_micros());
    }
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_as_walg() {
        assert_eq!(parse_level("NORMAL"), Some(LevelFilter::Info));
        assert_eq!(parse_level("DEVEL"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("ERROR"), Some(LevelFilter::Error));
        assert_eq!(parse_level("normal"), None);
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[4..5], "/");
        assert_eq!(&t[19..20], ".");
    }
}
