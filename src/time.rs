//! The UTC time formats walden reads and writes: SigV4's
//! `20130524T000000Z` (also in temp file names), ISO-8601 in S3 listings,
//! RFC 1123 in `Last-Modified` headers, and Go's RFC3339Nano in WAL
//! metadata and `st ls`. Done by hand with the proleptic Gregorian
//! day-count conversions, because these are the only formats needed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Counting years from March puts the leap day at the end of the year,
    // so the day-of-year formula needs no leap-year branch.
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => {
            let d = e.duration();
            // Round towards minus infinity so sub-second times before the
            // epoch still land in the right second.
            -(d.as_secs() as i64) - if d.subsec_nanos() > 0 { 1 } else { 0 }
        }
    }
}

fn from_unix(secs: i64, nanos: u32) -> Option<SystemTime> {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    t.checked_add(Duration::from_nanos(nanos as u64))
}

/// `YYYYMMDDTHHMMSSZ`, the `x-amz-date` format.
pub fn amz_date(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (y, mo, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let sod = secs.rem_euclid(SECS_PER_DAY);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        y,
        mo,
        d,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Go's RFC3339Nano in UTC: `2026-11-24T06:07:54.123456789Z`, trailing
/// zeros of the fraction dropped.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let (y, mo, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

pub fn to_time(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> Option<SystemTime> {
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s <= 60;
    if !valid {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * SECS_PER_DAY + (h * 3600 + mi * 60 + s) as i64;
    from_unix(secs, nanos)
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `2026-11-24T06:07:54.000Z`; also accepts no fraction and a `+hh:mm` /
/// `-hh:mm` offset, which some S3-compatible servers send.
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut dp = date.split('-');
    let y = digits(dp.next()?)? as i64;
    let mo = digits(dp.next()?)?;
    let d = digits(dp.next()?)?;
    if dp.next().is_some() {
        return None;
    }
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
        (
            c,
            sign * (digits(oh)? as i64 * 3600 + digits(om)? as i64 * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut tp = hms.split(':');
    let h = digits(tp.next()?)?;
    let mi = digits(tp.next()?)?;
    let sec = digits(tp.next()?)?;
    if tp.next().is_some() {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut padded = String::from(&frac[..frac.len().min(9)]);
        while padded.len() < 9 {
            padded.push('0');
        }
        padded.parse().ok()?
    };
    let t = to_time(y, mo, d, h, mi, sec, nanos)?;
    if offset_secs >= 0 {
        t.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        t.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    }
}

/// RFC 1123 as in `Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?;
    let d = digits(it.next()?)?;
    let mon = it.next()?;
    let y = digits(it.next()?)? as i64;
    let clock = it.next()?;
    if !matches!(it.next(), Some("GMT") | Some("UTC") | None) {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mo = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as u32 + 1;
    let mut tp = clock.split(':');
    let h = digits(tp.next()?)?;
    let mi = digits(tp.next()?)?;
    let sec = digits(tp.next()?)?;
    if tp.next().is_some() {
        return None;
    }
    to_time(y, mo, d, h, mi, sec, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_as_go() {
        let t = UNIX_EPOCH + Duration::new(1_795_500_474, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2026-11-24T06:07:54.12Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn civil_round_trip_over_many_years() {
        for days in (-800_000i64..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn amz_date_format() {
        assert_eq!(amz_date(at(1_369_353_600)), "20130524T000000Z");
        assert_eq!(amz_date(at(0)), "19700101T000000Z");
        assert_eq!(amz_date(at(951_782_399)), "20000228T235959Z");
        assert_eq!(amz_date(at(1_709_164_800 + 3_723)), "20240229T010203Z");
    }

    #[test]
    fn iso8601_variants() {
        let want = at(1_795_500_474);
        assert_eq!(amz_date(want), "20261124T060754Z");
        assert_eq!(parse_iso8601("2026-11-24T06:07:54.000Z"), Some(want));
        assert_eq!(parse_iso8601("2026-11-24T06:07:54Z"), Some(want));
        assert_eq!(parse_iso8601("2026-11-24T08:07:54+02:00"), Some(want));
        assert_eq!(parse_iso8601("2026-11-24T05:37:54-00:30"), Some(want));
        assert_eq!(
            parse_iso8601("2026-11-24T06:07:54.5Z"),
            Some(want + Duration::from_millis(500))
        );
        assert_eq!(parse_iso8601("2026-13-24T06:07:54Z"), None);
        assert_eq!(parse_iso8601("2026-11-24"), None);
        assert_eq!(parse_iso8601("garbage"), None);
        assert_eq!(parse_iso8601("2026-11-24T06:07:5x.000Z"), None);
    }

    #[test]
    fn http_date() {
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(at(1_445_412_480))
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn before_epoch() {
        let t = parse_iso8601("1969-12-31T23:59:59Z");
        assert_eq!(t, Some(UNIX_EPOCH - Duration::from_secs(1)));
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_secs(1)),
            "19691231T235959Z"
        );
    }
}
