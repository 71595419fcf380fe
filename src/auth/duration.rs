//! Parsing of human durations for token lifetimes: `30m`, `12h`, `6 months`.

use std::time::Duration;

use super::AuthError;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Seconds in one unit, for every accepted unit spelling.
fn unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => MINUTE,
        "h" | "hr" | "hrs" | "hour" | "hours" => HOUR,
        "d" | "day" | "days" => DAY,
        "w" | "week" | "weeks" => 7 * DAY,
        "mo" | "month" | "months" => 30 * DAY,
        "y" | "yr" | "yrs" | "year" | "years" => 365 * DAY,
        _ => return None,
    })
}

/// Parses a positive duration: a whole number, optional spaces, and a unit.
///
/// Units: `s`, `m` (minutes), `h`, `d`, `w`/`weeks`, `mo`/`months` (30 days),
/// `y`/`years` (365 days), with the usual long spellings; case is ignored.
/// Examples: `"1s"`, `"30m"`, `"12h"`, `"30d"`, `"1y"`, `"6 months"`,
/// `"2 weeks"`.
pub fn parse_duration(s: &str) -> Result<Duration, AuthError> {
    let err = |why: &str| {
        let shown: String = s.chars().take(40).collect();
        AuthError::InvalidDuration(format!(
            "{shown:?} is not a valid duration ({why}); write a number and a unit, e.g. \"30m\", \"12h\", \"30d\", \"6 months\" or \"1y\""
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let unit = unit.trim_start();
    if unit.is_empty() {
        return Err(err("the unit is missing"));
    }
    let per_unit = unit_seconds(unit).ok_or_else(|| err("unknown unit"))?;
    let n: u64 = number.parse().map_err(|_| err("the number is too large"))?;
    if n == 0 {
        return Err(err("it must be longer than zero"));
    }
    // Cap at 1000 years so that now + duration never overflows SystemTime.
    let secs = n
        .checked_mul(per_unit)
        .filter(|&secs| secs <= 1000 * 365 * DAY)
        .ok_or_else(|| err("it is longer than 1000 years"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_secs()
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(secs("1s"), 1);
        assert_eq!(secs("30m"), 30 * 60);
        assert_eq!(secs("12h"), 12 * 3600);
        assert_eq!(secs("30d"), 30 * 86400);
        assert_eq!(secs("1y"), 365 * 86400);
        assert_eq!(secs("6 months"), 6 * 30 * 86400);
        assert_eq!(secs("2 weeks"), 14 * 86400);
        assert_eq!(secs("1 month"), 30 * 86400);
        assert_eq!(secs(" 5 Minutes "), 300);
        assert_eq!(secs("3mo"), 90 * 86400);
        assert_eq!(secs("1000y"), 1000 * 365 * 86400);
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "d",
            "30",
            "0s",
            "-1d",
            "1.5h",
            "1x",
            "1 d s",
            "1d2h",
            "1001y",
            "99999999999999999999s",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(matches!(e, AuthError::InvalidDuration(_)), "{bad}");
            assert!(e.to_string().contains("e.g."), "{e}");
        }
    }
}
