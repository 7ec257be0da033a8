//! Times as Go's `time.Time` prints them, because backup-list's output is
//! WAL-G's: RFC 3339 (`2006-01-02T15:04:05Z07:00`), RFC3339Nano in JSON
//! (trailing zeros of the fraction dropped) and RFC 850 (`Monday,
//! 02-Jan-06 15:04:05 MST`) in the pretty table. A time read from JSON
//! keeps its UTC offset, as Go's does; storage times are shown in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::{civil_from_days, parse_iso8601, to_time, unix_seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoTime {
    pub t: SystemTime,
    /// Seconds east of UTC.
    pub offset: i32,
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Go's zero `time.Time` in JSON.
pub const ZERO_JSON: &str = "0001-01-01T00:00:00Z";

impl GoTime {
    pub fn utc(t: SystemTime) -> GoTime {
        GoTime { t, offset: 0 }
    }

    /// RFC 3339 with `Z` or a `±hh:mm` offset, as Go's JSON decoder takes
    /// it. `None` for text that is not such a time, and for Go's zero time
    /// (what a missing time in WAL-G's JSON decodes to).
    pub fn parse(s: &str) -> Option<GoTime> {
        let t = parse_iso8601(s)?;
        if Some(t) == to_time(1, 1, 1, 0, 0, 0, 0) {
            return None;
        }
        let offset = if s.ends_with(['Z', 'z']) {
            0
        } else {
            let tail = s.get(s.len().checked_sub(6)?..)?;
            let sign = match tail.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i32 = tail.get(1..3)?.parse().ok()?;
            let m: i32 = tail.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        };
        Some(GoTime { t, offset })
    }

    /// (year, month, day, hour, minute, second, nanos, weekday) in the
    /// time's own offset.
    fn fields(&self) -> (i64, u32, u32, i64, i64, i64, u32, usize) {
        let secs = unix_seconds(self.t) + i64::from(self.offset);
        let nanos = match self.t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.subsec_nanos(),
            Err(e) => (1_000_000_000 - e.duration().subsec_nanos()) % 1_000_000_000,
        };
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let wd = (days + 4).rem_euclid(7) as usize;
        (y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60, nanos, wd)
    }

    fn zone_rfc3339(&self) -> String {
        if self.offset == 0 {
            return "Z".into();
        }
        let sign = if self.offset < 0 { '-' } else { '+' };
        let o = self.offset.abs();
        format!("{sign}{:02}:{:02}", o / 3600, o % 3600 / 60)
    }

    /// `2006-01-02T15:04:05Z07:00`
    pub fn rfc3339(&self) -> String {
        let (y, mo, d, h, mi, s, _, _) = self.fields();
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}",
            self.zone_rfc3339()
        )
    }

    /// `2006-01-02T15:04:05.999999999Z07:00`
    pub fn rfc3339_nano(&self) -> String {
        let (y, mo, d, h, mi, s, nanos, _) = self.fields();
        let mut frac = String::new();
        if nanos != 0 {
            frac = format!(".{nanos:09}");
            while frac.ends_with('0') {
                frac.pop();
            }
        }
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{}",
            self.zone_rfc3339()
        )
    }

    /// `Monday, 02-Jan-06 15:04:05 MST`; a zone without a name prints as
    /// `-0700`, as Go does for offsets read from text.
    pub fn rfc850(&self) -> String {
        let (y, mo, d, h, mi, s, _, wd) = self.fields();
        let zone = if self.offset == 0 {
            "UTC".to_string()
        } else {
            let sign = if self.offset < 0 { '-' } else { '+' };
            let o = self.offset.abs();
            format!("{sign}{:02}{:02}", o / 3600, o % 3600 / 60)
        };
        format!(
            "{}, {d:02}-{}-{:02} {h:02}:{mi:02}:{s:02} {zone}",
            WEEKDAYS[wd],
            MONTHS[(mo - 1) as usize],
            y.rem_euclid(100)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_as_go() {
        let t = GoTime::utc(UNIX_EPOCH + Duration::new(1787335355, 123_450_000));
        assert_eq!(t.rfc3339(), "2026-08-21T18:02:35Z");
        assert_eq!(t.rfc3339_nano(), "2026-08-21T18:02:35.12345Z");
        assert_eq!(t.rfc850(), "Friday, 21-Aug-26 18:02:35 UTC");
        let whole = GoTime::utc(UNIX_EPOCH + Duration::from_secs(1787335355));
        assert_eq!(whole.rfc3339_nano(), "2026-08-21T18:02:35Z");
    }

    #[test]
    fn parse_keeps_the_offset() {
        let t = GoTime::parse("2026-08-21T21:02:35.5+03:00").unwrap();
        assert_eq!(t.offset, 3 * 3600);
        assert_eq!(t.rfc3339(), "2026-08-21T21:02:35+03:00");
        assert_eq!(t.rfc3339_nano(), "2026-08-21T21:02:35.5+03:00");
        assert_eq!(t.rfc850(), "Friday, 21-Aug-26 21:02:35 +0300");
        assert_eq!(
            t.t,
            GoTime::parse("2026-08-21T18:02:35.5Z").unwrap().t,
            "the same instant"
        );
        assert_eq!(GoTime::parse(ZERO_JSON), None);
        assert_eq!(GoTime::parse("yesterday"), None);
    }
}
