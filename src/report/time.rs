//! RFC 3339 timestamps as milliseconds since the Unix epoch, for filtering and ordering records.

use std::time::{Duration, UNIX_EPOCH};

/// Parses an RFC 3339 timestamp (`2026-11-24T10:15:02Z`, `2026-11-24T10:15:02.331+02:00`,
/// lower-case `t`/`z` or a space between date and time, RFC 3339 §5.6) or a bare date
/// (`2026-11-24`, midnight UTC) into milliseconds since the Unix epoch.
pub fn parse(text: &str) -> Result<i64, String> {
    parse_bytes(text.as_bytes()).ok_or_else(|| {
        format!(
            "`{text}` is not an RFC 3339 timestamp (like 2026-11-24T10:15:02Z, \
             2026-11-24T12:15:02.5+02:00 or 2026-11-24)"
        )
    })
}

fn parse_bytes(b: &[u8]) -> Option<i64> {
    let days = date(b)?;
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b.get(10)?, b'T' | b't' | b' ') {
        return None;
    }
    let (ms_of_day, rest) = time_of_day(&b[11..])?;
    let offset = offset_minutes(rest)?;
    Some(days * 86_400_000 + ms_of_day - offset * 60_000)
}

/// `YYYY-MM-DD` as days since 1970-01-01.
fn date(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (number(&b[0..4])?, number(&b[5..7])?, number(&b[8..10])?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// `HH:MM:SS[.fraction]`, returning milliseconds into the day and what follows.
fn time_of_day(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (hour, minute, second) = (number(&b[0..2])?, number(&b[3..5])?, number(&b[6..8])?);
    // Second 60 is a leap second (RFC 3339 §5.7).
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[8..];
    let mut millis = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Only the first three digits matter; the rest is truncated, not rounded.
        let mut scale = 100;
        for c in &rest[1..=digits.min(3)] {
            millis += i64::from(c - b'0') * scale;
            scale /= 10;
        }
        rest = &rest[1 + digits..];
    }
    Some((((hour * 60 + minute) * 60 + second) * 1000 + millis, rest))
}

/// `Z`, `z` or `±HH:MM`, as minutes east of UTC.
fn offset_minutes(b: &[u8]) -> Option<i64> {
    match b {
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            Some(if *sign == b'-' { -total } else { total })
        }
        _ => None,
    }
}

fn number(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01, after Howard Hinnant's civil calendar method.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as `2026-11-24T10:15:02.331Z`.
pub fn format(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    crate::deviation::rfc3339_ms(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let base = 1_795_556_470_000; // 2026-11-24T21:41:10Z
        let cases = [
            ("2026-11-24T21:41:10Z", base),
            ("2026-11-24t21:41:10z", base),
            ("2026-11-24 21:41:10Z", base),
            ("2026-11-24T21:41:10.456Z", base + 456),
            ("2026-11-24T21:41:10.4567891Z", base + 456),
            ("2026-11-24T21:41:10.5Z", base + 500),
            ("2026-11-24T23:41:10+02:00", base),
            ("2026-11-24T20:41:10-01:00", base),
            ("2026-11-24", base - (21 * 3600 + 41 * 60 + 10) * 1000),
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_forms() {
        for text in [
            "",
            "yesterday",
            "2026-11-24T21:41:10",
            "2026-11-24T21:41Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T21:41:10.Z",
            "2026-11-24T21:41:10+0200",
            "1795556470",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(1_795_556_470_456), "2026-11-24T21:41:10.456Z");
        assert_eq!(parse(&format(1_795_556_470_456)), Ok(1_795_556_470_456));
    }
}
