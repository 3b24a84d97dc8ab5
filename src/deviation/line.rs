//! A record as one line of JSON, and the RFC 3339 timestamps in it.

use super::Record;
use crate::wire::{decimal, digits3};
use std::time::{SystemTime, UNIX_EPOCH};

/// The RFC 3339 text of the second last written: the records of one second differ only in
/// their milliseconds, and working out a date costs more than the rest of a line.
#[derive(Default)]
pub(super) struct Stamps {
    second: Option<u64>,
    text: [u8; 24],
}

impl Stamps {
    pub(super) fn write(&mut self, line: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let Some(text) = rfc3339_ms_digits(time) else {
                line.extend_from_slice(rfc3339_ms(time).as_bytes());
                return;
            };
            self.text = text;
            self.second = Some(since.as_secs());
        }
        let mut text = self.text;
        let ms = since.subsec_millis();
        text[20..23].copy_from_slice(&digits3(ms));
        line.extend_from_slice(&text);
    }
}

/// The record as one line of JSON, the same text `serde_json` makes of it (a test holds the
/// two together). Written by hand because serde's escaping goes byte by byte, and this runs
/// once per record on the proxy's CPU.
pub(super) fn json_line(line: &mut Vec<u8>, record: &Record, stamps: &mut Stamps) {
    head(line, record, stamps);
    middle(line, record);
    json_str(line, &record.path);
    tail(line, record);
    end(line, record.duration_ms);
}

/// The same line, with the text its record shares with others of its shape (see
/// [`middle`] and [`tail`]) written once and copied: most of a line is that text.
pub(super) fn json_line_shaped(
    line: &mut Vec<u8>,
    record: &Record,
    stamps: &mut Stamps,
    shared: (&[u8], &[u8]),
) {
    head(line, record, stamps);
    line.extend_from_slice(shared.0);
    json_str(line, &record.path);
    line.extend_from_slice(shared.1);
    end(line, record.duration_ms);
}

/// `{"ts":…,"request_id":…`: what differs between any two records.
fn head(line: &mut Vec<u8>, record: &Record, stamps: &mut Stamps) {
    line.extend_from_slice(b"{\"ts\":\"");
    stamps.write(line, record.ts.0);
    line.extend_from_slice(b"\",\"request_id\":");
    json_str(line, &record.request_id);
}

/// `,"route":…,"path":`, the same for records of one shape.
pub(super) fn middle(line: &mut Vec<u8>, record: &Record) {
    line.extend_from_slice(b",\"route\":");
    json_str(line, &record.route);
    line.extend_from_slice(b",\"rule\":");
    match &record.rule {
        Some(rule) => json_str(line, rule),
        None => line.extend_from_slice(b"null"),
    }
    for (key, value) in [
        ("action", record.action.as_str()),
        ("kind", record.kind.as_str()),
        ("source", record.source.as_str()),
    ] {
        line.extend_from_slice(b",\"");
        line.extend_from_slice(key.as_bytes());
        line.extend_from_slice(b"\":\"");
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    }
    if let Some(cause) = &record.cause {
        line.extend_from_slice(b",\"cause\":");
        json_str(line, cause);
    }
    // A method is a token (RFC 9110 §9.1), which holds nothing JSON escapes.
    line.extend_from_slice(b",\"method\":\"");
    line.extend_from_slice(record.method.as_str().as_bytes());
    line.extend_from_slice(b"\",\"path\":");
}

/// `,"upstream":…,"duration_ms":`, the same for records of one shape.
pub(super) fn tail(line: &mut Vec<u8>, record: &Record) {
    line.extend_from_slice(b",\"upstream\":");
    json_str(line, &record.upstream);
    line.extend_from_slice(b",\"upstream_status\":");
    status(line, record.upstream_status);
    line.extend_from_slice(b",\"status\":");
    status(line, record.status);
    if let Some(would) = record.would_status {
        line.extend_from_slice(b",\"would_status\":");
        status(line, would);
    }
    line.extend_from_slice(match record.body_inspected {
        true => b",\"body_inspected\":true,\"duration_ms\":",
        false => b",\"body_inspected\":false,\"duration_ms\":",
    });
}

fn end(line: &mut Vec<u8>, duration: f64) {
    duration_ms(line, duration);
    line.extend_from_slice(b"}\n");
}

/// A status code: three digits (RFC 9110 §15), or `0` in a record of no upstream status.
fn status(line: &mut Vec<u8>, code: u16) {
    match code {
        100..=999 => line.extend_from_slice(&digits3(u32::from(code))),
        _ => line.extend_from_slice(decimal(u64::from(code), &mut [0; 20])),
    }
}

/// A duration in milliseconds as serde writes it: the shortest text that reads back as the
/// same number. A whole number of microseconds (what a record holds) below 10^12 is written
/// from its digits: below that size doubles lie much closer together than 0.001, so no
/// shorter text reads back as the same number. Anything else goes through serde.
fn duration_ms(line: &mut Vec<u8>, ms: f64) {
    let micros = (ms * 1000.0).round();
    if !((0.0..1e12).contains(&micros) && micros / 1000.0 == ms) {
        if serde_json::to_writer(&mut *line, &ms).is_err() {
            line.extend_from_slice(b"null");
        }
        return;
    }
    let micros = micros as u64;
    line.extend_from_slice(decimal(micros / 1000, &mut [0; 20]));
    line.push(b'.');
    let fraction = (micros % 1000) as u32;
    // At least one digit after the point, as in `1.0`; no trailing zeros after it.
    let keep = match fraction {
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    line.extend_from_slice(&digits3(fraction)[..keep]);
}

/// A JSON string; text that needs no escaping (the usual case) is copied whole. Inlined: as a
/// call, saving and restoring registers cost more than the copy.
#[inline(always)]
fn json_str(line: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        line.push(b'"');
        line.extend_from_slice(text.as_bytes());
        line.push(b'"');
    } else if serde_json::to_writer(&mut *line, text).is_err() {
        line.extend_from_slice(b"null");
    }
}

/// Whether `text` holds a byte that JSON escapes: a control character, `"` or `\`. Text of
/// eight bytes or more is looked at eight bytes at a time.
fn needs_escape(text: &[u8]) -> bool {
    if text.len() < 8 {
        return text.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&text[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    let mut at = 0;
    while at + 8 <= text.len() {
        if special_in(word(at)) {
            return true;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the words already looked at.
    at < text.len() && special_in(word(text.len() - 8))
}

/// Whether a word of eight bytes holds a control character, `"` or `\`. Each test is exact
/// for the word as a whole ("Bit Twiddling Hacks", `hasless`: a byte below `n`, n <= 128).
fn special_in(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGH != 0;
    has_below(word, 0x20)
        || has_below(word ^ (ONES * u64::from(b'"')), 1)
        || has_below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// `2026-11-24T21:41:10.123Z`: RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(time: SystemTime) -> String {
    if let Some(digits) = rfc3339_ms_digits(time) {
        return digits.iter().map(|b| char::from(*b)).collect();
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The RFC 3339 text written digit by digit (a format string costs more than the rest of
/// writing the record); `None` past year 9999.
pub(super) fn rfc3339_ms_digits(time: SystemTime) -> Option<[u8; 24]> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let fields: [(usize, usize, u64); 7] = [
        (0, 4, year as u64),
        (5, 2, u64::from(month)),
        (8, 2, u64::from(day)),
        (11, 2, rem / 3600),
        (14, 2, rem % 3600 / 60),
        (17, 2, rem % 60),
        (20, 3, u64::from(since.subsec_millis())),
    ];
    for (at, width, mut value) in fields {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    Some(out)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's civil calendar method.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Action, Kind, Source, Timestamp};
    use super::*;
    use http::Method;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_556_470_456, "2026-11-24T21:41:10.456Z"),
        ];
        for (ms, want) in cases {
            let time = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(rfc3339_ms(time), want);
            assert_eq!(Timestamp(time).to_string(), want);
            let json = serde_json::to_string(&Timestamp(time)).expect("serializes");
            assert_eq!(json, format!("\"{want}\""));
        }
    }

    pub(crate) fn record(route: &str, status: u16) -> Record<'static> {
        Record {
            ts: Timestamp(UNIX_EPOCH),
            request_id: "".into(),
            route: route.to_string().into(),
            rule: Some("r".into()),
            action: Action::Rewrote,
            kind: Kind::Status,
            source: Source::Upstream,
            cause: None,
            method: Method::GET,
            path: "/".into(),
            upstream: "u".into(),
            upstream_status: 200,
            status,
            would_status: None,
            body_inspected: false,
            duration_ms: 0.0,
        }
    }

    #[test]
    fn lines_are_what_serde_writes() {
        let mut plain = record("app", 201);
        plain.request_id = "0f3a9c".into();
        plain.duration_ms = 0.412;
        let mut odd = record("r\"oute", 404);
        odd.ts = Timestamp(UNIX_EPOCH + Duration::from_secs(400_000_000_000));
        odd.request_id = "tab\there \\ \u{1} é".into();
        odd.rule = None;
        odd.action = Action::Left;
        odd.kind = Kind::Unsolicited100;
        odd.source = Source::Proxy;
        odd.method = Method::from_bytes(b"PROPFIND").expect("method");
        odd.path = "/a\u{7f}/\"b\"/ü".into();
        odd.body_inspected = true;
        odd.upstream_status = 0;
        odd.duration_ms = 12_345.5;
        let mut whole = record("app", 500);
        whole.action = Action::WouldRewrite;
        whole.would_status = Some(409);
        whole.kind = Kind::ExpectIgnored;
        whole.duration_ms = 3.0;
        let mut stamps = Stamps::default();
        for record in [plain, odd, whole] {
            let mut line = Vec::new();
            json_line(&mut line, &record, &mut stamps);
            let mut want = serde_json::to_vec(&record).expect("serializes");
            want.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&want)
            );
            let (mut shared_middle, mut shared_tail, mut shaped) = (vec![], vec![], vec![]);
            middle(&mut shared_middle, &record);
            tail(&mut shared_tail, &record);
            let shared = (&shared_middle[..], &shared_tail[..]);
            json_line_shaped(&mut shaped, &record, &mut stamps, shared);
            assert_eq!(
                String::from_utf8_lossy(&shaped),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn stamps_of_one_second_differ_in_milliseconds_only() {
        let mut stamps = Stamps::default();
        let base = 1_795_556_470_000u64;
        // Within a second, across a second, a day, and back to an earlier second.
        for ms in [
            base + 456,
            base + 7,
            base + 999,
            base + 1000,
            base + 86_399_999,
            base,
        ] {
            let time = UNIX_EPOCH + Duration::from_millis(ms);
            let mut line = Vec::new();
            stamps.write(&mut line, time);
            assert_eq!(String::from_utf8_lossy(&line), rfc3339_ms(time), "{ms}");
        }
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let mut line = Vec::new();
        stamps.write(&mut line, far);
        assert_eq!(String::from_utf8_lossy(&line), rfc3339_ms(far));
    }

    #[test]
    fn durations_are_what_serde_writes() {
        let micros = (0..3000u64)
            .chain((0..40).map(|i| 7u64.pow(i / 3) * (i as u64 % 3 + 1)))
            .chain([999_999_999_999, 1_000_000_000_000, 123_456_789_012_345]);
        let odd = [0.0004, 1.5e-7, 2.0f64.powi(60), 1e300, -1.0, f64::NAN];
        let values = micros.map(|m| m as f64 / 1000.0).chain(odd);
        for ms in values {
            let mut line = Vec::new();
            duration_ms(&mut line, ms);
            let want = serde_json::to_string(&ms).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&line), want, "{ms:?}");
        }
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        let plain = |b: u8| !(b < 0x20 || b == b'"' || b == b'\\');
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    assert_eq!(needs_escape(&text), !plain(b), "byte {b} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("/caf\u{e9}/\u{7f}~ !#".as_bytes()));
    }
}
