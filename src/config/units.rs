//! Human-written durations (`"30s"`, `"250ms"`) and sizes (`"64KiB"`, `"16MiB"`) in the config.

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m` (or `min`) or `h`, a space
/// between allowed (`"1.5s"`, `"10 ms"`); docs/configuration.md lists the forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A byte count written as a number and a unit: `B`, `KiB`, `MiB`, `GiB` (or `KB`, `MB`, `GB`,
/// which mean the same powers of 1024), or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("duration `{text}` has no unit (use ms, s, m or h, e.g. \"30s\")")
        })?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{text}` does not start with a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration `{text}` has unknown unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 86_400.0 * 365.0 {
        return Err(format!("duration `{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("size `{text}` does not start with a whole number"));
    }
    if unit.starts_with('.') {
        return Err(format!(
            "size `{text}` has a fraction; write it in a smaller unit (\"1536KiB\", not \"1.5MiB\")"
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size `{text}` is out of range"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "kB" | "kb" | "K" | "k" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "size `{text}` has unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size `{text}` is out of range"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(D::Error::custom)
    }
}

/// A duration that must be more than zero: a timeout of zero would fail every request.
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match parse_duration(&text).map_err(D::Error::custom)? {
            zero if zero.is_zero() => Err(D::Error::custom(format!(
                "timeout `{text}` must be more than zero (every request would time out)"
            ))),
            duration => Ok(Timeout(duration)),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a size such as \"64KiB\" or a number of bytes")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom("a size cannot be negative"))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_size(v).map(ByteSize).map_err(E::custom)
    }
}

/// A duration as people write it in the config: `10s`, `1.5s`, `200ms`, and `0s` (not
/// Rust's `0ns`).
pub fn shown(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    format!("{duration:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_shown_as_written() {
        assert_eq!(shown(Duration::ZERO), "0s");
        assert_eq!(shown(Duration::from_millis(1500)), "1.5s");
        assert_eq!(shown(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn durations() {
        let cases = [
            ("30s", Some(30_000)),
            ("250ms", Some(250)),
            ("1.5s", Some(1500)),
            ("2m", Some(120_000)),
            ("1h", Some(3_600_000)),
            ("10 ms", Some(10)),
            ("2min", Some(120_000)),
            ("10", None),
            ("10x", None),
            ("s", None),
        ];
        for (text, want) in cases {
            let got = parse_duration(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("64KiB", Some(65_536)),
            ("16MiB", Some(16 << 20)),
            ("1GiB", Some(1 << 30)),
            ("100", Some(100)),
            ("12B", Some(12)),
            ("4K", Some(4096)),
            ("64kB", Some(65_536)),
            ("1.5MiB", None),
            ("99999999999999999999GiB", None),
            ("2 MB", Some(2 << 20)),
            ("1G", Some(1 << 30)),
            ("3TiB", None),
            ("MiB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).ok(), want, "{text}");
        }
    }
}
