//! Durations written the way upstream's Go configuration and CLI write them: `1h`, `30m`,
//! `90s`, `1h30m`, `720h`, `1.5h`, `300ms` (Go's `time.ParseDuration`), and printed the way Go
//! prints them (`1h30m0s`).

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration; write a number and a unit such as \"1h\", \"30m\" or \"90s\"")]
    Empty,
    /// A number without a unit, or a malformed number.
    #[error("invalid duration {0:?}: write a number and a unit such as \"1h\", \"30m\" or \"90s\"")]
    Invalid(String),
    /// A unit other than ns, us, µs, ms, s, m, h.
    #[error("unknown unit {unit:?} in duration {input:?}: use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The unit found.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// A negative duration where only positive ones make sense.
    #[error("duration {0:?} is negative")]
    Negative(String),
    /// More than Go's maximum of about 292 years.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const NANOS_PER: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's limit: the largest `time.Duration` is `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration string; negative durations are refused.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut rest = input;
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_end);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(end)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_end = after_num
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_end);
        if unit.is_empty() {
            return Err(invalid());
        }
        let scale = NANOS_PER
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, n)| *n)
            .ok_or_else(|| DurationError::UnknownUnit {
                unit: unit.to_owned(),
                input: input.to_owned(),
            })?;
        let overflow = || DurationError::Overflow(input.to_owned());
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_part.is_empty() {
            // Keep at most 30 fractional digits: more cannot change a nanosecond count.
            let digits = frac_part
                .get(..frac_part.len().min(30))
                .unwrap_or(frac_part);
            let frac: u128 = digits.parse().map_err(|_| invalid())?;
            let denom = 10u128.pow(u32::try_from(digits.len()).map_err(|_| invalid())?);
            nanos = nanos
                .checked_add(frac.checked_mul(scale).ok_or_else(overflow)? / denom)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
        rest = next;
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    let subsec = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, subsec))
}

/// Formats like Go's `Duration.String()`: `1h30m0s`, `1m30s`, `1.5s`, `300ms`, `0s`.
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, scale));
    }
    let total_secs = nanos / 1_000_000_000;
    let hours = total_secs / 3600;
    let minutes = (total_secs % 3600) / 60;
    let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

/// `value / scale` with Go's trimmed decimal fraction (`1.5`, `2`, `0.001`).
fn fraction(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rem = value % scale;
    if rem == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let frac = format!("{rem:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Serde support for `Duration` fields written as Go duration strings in config files.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads a Go duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(deserializer)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    /// Writes a Go duration string.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*value))
    }

    /// The same for `Option<Duration>`, where an absent key means "use the default".
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Reads an optional Go duration string.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|s| super::super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }

        /// Writes an optional Go duration string.
        pub fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(d) => serializer.serialize_str(&super::super::format(*d)),
                None => serializer.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn upstream_config_values_parse() {
        let cases = [
            ("1h", secs(3600)),
            ("30m", secs(1800)),
            ("90s", secs(90)),
            ("1h30m", secs(5400)),
            ("720h", secs(720 * 3600)),
            ("168h", secs(168 * 3600)),
            ("5m", secs(300)),
            ("24h", secs(86400)),
            ("1.5h", secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("300ms", Duration::from_millis(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h0m0s", secs(3600)),
            (
                "2h45m30.5s",
                Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500),
            ),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5s", secs(5)),
            ("-0s", Duration::ZERO),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        for bad in ["1", "h", "1.h.", ".", "1hh", "abc", "1 h", "-", "1h-5m"] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
        let err = parse("10d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown unit \"d\" in duration \"10d\": use ns, us, ms, s, m or h"
        );
        assert!(parse("30").unwrap_err().to_string().contains("\"1h\""));
        assert_eq!(parse("-5m"), Err(DurationError::Negative("-5m".into())));
        assert!(matches!(
            parse("99999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(secs(3600)), "1h0m0s");
        assert_eq!(format(secs(5400)), "1h30m0s");
        assert_eq!(format(secs(90)), "1m30s");
        assert_eq!(format(secs(720 * 3600)), "720h0m0s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(300)), "300ms");
        assert_eq!(format(Duration::from_micros(1)), "1µs");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    #[test]
    fn format_then_parse_is_identity() {
        for n in [1u64, 999, 1_000_000, 59_999_999_999, 3_600_000_000_001] {
            let d = Duration::from_nanos(n);
            assert_eq!(parse(&format(d)), Ok(d), "{n}");
        }
    }
}
