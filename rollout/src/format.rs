//! How cohort writes numbers for people: weights, shares, gate values and durations, in reasons,
//! progress lines, `cohort status` and the lab's tables. One function per meaning, so the
//! controller, the CLI and the lab print the same value the same way; the tests pin the exact
//! strings, since operators and the other crates' tests read them.

use std::time::Duration;

/// A weight in basis points as a percentage, without trailing zeros: `2500` → `25%`, `250` →
/// `2.5%`, `1` → `0.01%`.
pub fn weight_percent(weight_bp: u32) -> String {
    let whole = weight_bp / 100;
    match weight_bp % 100 {
        0 => format!("{whole}%"),
        fraction if fraction % 10 == 0 => format!("{whole}.{}%", fraction / 10),
        fraction => format!("{whole}.{fraction:02}%"),
    }
}

/// A share (`0.0123`) as a percentage with `decimals` fixed decimals: `1.23%` with 2. Fixed
/// decimals keep the gate reasons and the lab's columns aligned; non-finite shares print as
/// Rust writes them (`NaN%`).
pub fn share_percent(share: f64, decimals: usize) -> String {
    format!("{:.decimals$}%", share * 100.0)
}

/// [`share_percent`] with 2 decimals, or `unknown` for a non-finite share: a sequential test's
/// bound is infinite until there is exposure to bound.
pub fn share_percent_or_unknown(share: f64) -> String {
    if share.is_finite() {
        share_percent(share, 2)
    } else {
        "unknown".to_owned()
    }
}

/// A gate value with at most 4 significant digits and no trailing zeros, as people write
/// numbers: `1234.6` → `1235`, `0.012345` → `0.01235`, `3.0` → `3`.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value == 0.0 {
        return "0".to_owned();
    }
    // Digits after the point that keep 4 significant ones (none for values of 1000 and above).
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from(3 - magnitude).unwrap_or(0).min(12);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A request count, rounded to a whole number, with thousands separated: `1234.4` → `1,234`.
/// Window counts are increases, so they can be fractional; people count requests whole.
pub fn count(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value.round() < 0.0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A gate value with fixed decimals, 4 below 1 (error rates) and 1 from there up (latencies),
/// so the values of one gate keep their width from one progress line to the next:
/// `0.0123` → `0.0123`, `0.5` → `0.5000`, `123.456` → `123.5`.
pub fn fixed_number(value: f64) -> String {
    if value.abs() < 1.0 {
        format!("{value:.4}")
    } else {
        format!("{value:.1}")
    }
}

/// A share as a percentage with [`number`]'s 4 significant digits: `0.012345` → `1.234%`.
pub fn share_number_percent(share: f64) -> String {
    format!("{}%", number(share * 100.0))
}

/// A duration in seconds with one decimal: `1.5s`, `90.0s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Seconds as a whole number (rounded half to even): `59.6` → `60s`.
pub fn whole_seconds(seconds: f64) -> String {
    format!("{seconds:.0}s")
}

/// `render(value)`, or `-` for a value that is missing (no samples, no run detected).
pub fn or_dash<T>(value: Option<T>, render: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), render)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let table = [
            (0.0, "0"),
            (7.4, "7"),
            (999.5, "1,000"),
            (1000.0, "1,000"),
            (1234.4, "1,234"),
            (1_234_567.0, "1,234,567"),
            (-1500.0, "-1,500"),
            (f64::INFINITY, "inf"),
        ];
        for (value, expected) in table {
            assert_eq!(count(value), expected, "{value}");
        }
    }

    #[test]
    fn weights() {
        let table = [
            (0, "0%"),
            (1, "0.01%"),
            (5, "0.05%"),
            (10, "0.1%"),
            (50, "0.5%"),
            (99, "0.99%"),
            (100, "1%"),
            (250, "2.5%"),
            (2500, "25%"),
            (2525, "25.25%"),
            (9999, "99.99%"),
            (10_000, "100%"),
            (20_000, "200%"),
        ];
        for (bp, text) in table {
            assert_eq!(weight_percent(bp), text, "{bp} bp");
        }
    }

    #[test]
    fn shares() {
        // (share, 2 decimals, 1 decimal, or unknown, significant digits)
        let table = [
            (0.0, "0.00%", "0.0%", "0.00%", "0%"),
            (0.0001, "0.01%", "0.0%", "0.01%", "0.01%"),
            (0.00005, "0.01%", "0.0%", "0.01%", "0.005%"),
            (0.012345, "1.23%", "1.2%", "1.23%", "1.234%"),
            (0.025, "2.50%", "2.5%", "2.50%", "2.5%"),
            (0.5, "50.00%", "50.0%", "50.00%", "50%"),
            (0.99999, "100.00%", "100.0%", "100.00%", "100%"),
            (1.5, "150.00%", "150.0%", "150.00%", "150%"),
            (-0.01, "-1.00%", "-1.0%", "-1.00%", "-1%"),
            (f64::NAN, "NaN%", "NaN%", "unknown", "NaN%"),
            (f64::INFINITY, "inf%", "inf%", "unknown", "inf%"),
            (f64::NEG_INFINITY, "-inf%", "-inf%", "unknown", "-inf%"),
        ];
        for (share, two, one, or_unknown, significant) in table {
            assert_eq!(share_percent(share, 2), two, "{share}");
            assert_eq!(share_percent(share, 1), one, "{share}");
            assert_eq!(share_percent_or_unknown(share), or_unknown, "{share}");
            assert_eq!(share_number_percent(share), significant, "{share}");
        }
    }

    #[test]
    fn numbers() {
        // (value, significant digits, fixed decimals)
        let table = [
            (0.0, "0", "0.0000"),
            (-0.0, "0", "-0.0000"),
            (3.0, "3", "3.0"),
            (0.01, "0.01", "0.0100"),
            (0.012345, "0.01235", "0.0123"),
            (0.5, "0.5", "0.5000"),
            (0.99995, "1", "1.0000"),
            (-0.5, "-0.5", "-0.5000"),
            (1.0, "1", "1.0"),
            (-2.25, "-2.25", "-2.2"),
            (123.456, "123.5", "123.5"),
            (1234.6, "1235", "1234.6"),
            (12345.0, "12345", "12345.0"),
            (1e-7, "0.0000001", "0.0000"),
            (f64::INFINITY, "inf", "inf"),
            (f64::NAN, "NaN", "NaN"),
        ];
        for (value, significant, fixed) in table {
            assert_eq!(number(value), significant, "{value}");
            assert_eq!(fixed_number(value), fixed, "{value}");
        }
    }

    #[test]
    fn durations() {
        let table = [
            (0, "0.0s"),
            (49, "0.0s"),
            (50, "0.1s"),
            (1500, "1.5s"),
            (2000, "2.0s"),
            (90_000, "90.0s"),
            (3_600_000, "3600.0s"),
        ];
        for (millis, text) in table {
            assert_eq!(seconds(Duration::from_millis(millis)), text, "{millis} ms");
        }
        let whole = [
            (0.0, "0s"),
            (0.5, "0s"),
            (1.5, "2s"),
            (2.5, "2s"),
            (59.6, "60s"),
            (3600.2, "3600s"),
        ];
        for (value, text) in whole {
            assert_eq!(whole_seconds(value), text, "{value}");
        }
    }

    #[test]
    fn missing_values_read_as_a_dash() {
        assert_eq!(or_dash(None, fixed_number), "-");
        assert_eq!(or_dash(Some(0.5), fixed_number), "0.5000");
        assert_eq!(or_dash(None::<f64>, whole_seconds), "-");
        assert_eq!(
            or_dash(Some(0.25), |share| share_percent(share, 2)),
            "25.00%"
        );
    }
}
