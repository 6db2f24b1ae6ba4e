//! Durations as CanaryRollout specs write them: Go / Flagger style, `30s`, `5m`, `1h30m`, `500ms`,
//! `1.5h`. The CRD schema checks the same shape with [`DURATION_PATTERN`], so a spec the API server
//! accepts always parses here, and `cohort run` (no API server) gets the same answers.

use std::time::Duration;

use crate::error::Error;

/// Regex the CRD schema applies to duration fields; [`parse`] accepts exactly these strings.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Parses a Go-style duration: one or more `<number>[.<fraction>]<unit>` parts, units `ms`, `s`,
/// `m`, `h`. Signs, spaces and bare numbers are refused.
pub fn parse(text: &str) -> Result<Duration, Error> {
    if text.is_empty() {
        return Err(Error::DurationEmpty);
    }
    let malformed = || Error::DurationMalformed(text.to_owned());
    let mut rest = text;
    let mut total_ms: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        let (number, after) = rest.split_at(number_len);
        let valid_number = !number.is_empty()
            && !number.starts_with('.')
            && !number.ends_with('.')
            && number.matches('.').count() <= 1;
        if !valid_number {
            return Err(malformed());
        }
        let value: f64 = number.parse().map_err(|_| malformed())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ms = match unit {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(malformed()),
        };
        total_ms += value * unit_ms;
        rest = next;
    }
    // Ten years is far beyond any bake or deadline; refusing more keeps the arithmetic exact.
    if !total_ms.is_finite() || total_ms > 10.0 * 365.0 * 24.0 * 3_600_000.0 {
        return Err(Error::DurationOverflow(text.to_owned()));
    }
    // Sub-millisecond parts ("1.0001s") are rounded to the millisecond.
    Ok(Duration::from_millis(total_ms.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let table: &[(&str, u64)] = &[
            ("0s", 0),
            ("1ms", 1),
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("2m30s", 150_000),
            ("1m0.5s", 60_500),
            ("10s250ms", 10_250),
            ("0.25s", 250),
        ];
        for (text, millis) in table {
            assert_eq!(
                parse(text),
                Ok(Duration::from_millis(*millis)),
                "duration {text:?}"
            );
        }
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        let table = [
            "", "30", "s", "-5m", "+5m", "5 m", "5min", "1d", ".5s", "5.s", "1..5s", "PT5M", "5m ",
            "1h-30m", "5M",
        ];
        for text in table {
            assert!(parse(text).is_err(), "duration {text:?} should be refused");
        }
        assert_eq!(
            parse("99999999999h"),
            Err(Error::DurationOverflow("99999999999h".into()))
        );
    }
}
