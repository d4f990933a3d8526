//! RFC 3339 timestamps → nanoseconds since the Unix epoch, within InfluxDB's range.

/// InfluxDB 1.x refuses `i64::MIN` and `i64::MAX` (and one above the minimum) as timestamps.
pub const MIN_NS: i64 = -9_223_372_036_854_775_806;
pub const MAX_NS: i64 = 9_223_372_036_854_775_806;

/// `YYYY-MM-DD(T|t)HH:MM:SS(.d{1,9})?(Z|z|(+|-)HH:MM)` with real calendar values, as ns;
/// `None` when the text does not match or the instant is outside `MIN_NS..=MAX_NS`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    let year = two(head[0], head[1])? * 100 + two(head[2], head[3])?;
    let month = two(head[5], head[6])?;
    let day = two(head[8], head[9])?;
    let hour = two(head[11], head[12])?;
    let minute = two(head[14], head[15])?;
    let second = two(head[17], head[18])?;
    if head[4] != b'-' || head[7] != b'-' || !matches!(head[10], b'T' | b't') {
        return None;
    }
    if head[13] != b':' || head[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ns: i64 = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let mut n = 0;
        while let Some(d) = fraction.get(n).map(|c| c.wrapping_sub(b'0')) {
            if d >= 10 {
                break;
            }
            if n == 9 {
                return None;
            }
            frac_ns = frac_ns * 10 + i64::from(d);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        frac_ns *= POW10[9 - n];
        rest = fraction.get(n..)?;
    }
    let offset_s = match *rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = two(h1, h2)?;
            let om = two(m1, m2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(frac_ns);
    if ns < i128::from(MIN_NS) || ns > i128::from(MAX_NS) {
        return None;
    }
    i64::try_from(ns).ok()
}

const POW10: [i64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Two ASCII digits as a number.
fn two(a: u8, b: u8) -> Option<i64> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    (a < 10 && b < 10).then(|| i64::from(a * 10 + b))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01t00:00:00z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:30:00-00:30"), Some(0));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00-23:59"),
            Some(86_340_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:30:45.123456789Z"),
            Some(1_714_566_645_123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:30:45.5Z"),
            Some(1_714_566_645_500_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999999999Z"), Some(-1));
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_none());
        assert!(parse_rfc3339("1900-02-29T00:00:00Z").is_none());
        assert!(parse_rfc3339("2100-02-29T00:00:00Z").is_none());
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000_000)
        );
        assert!(parse_rfc3339("2024-04-31T00:00:00Z").is_none());
        assert!(parse_rfc3339("2024-12-31T00:00:00Z").is_some());
    }

    #[test]
    fn malformed_or_out_of_range_fields_are_refused() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:30:45",
            "2024-05-01 12:30:45Z",
            "2024-05-01T12:30:45.Z",
            "2024-05-01T12:30:45.1234567890Z",
            "2024-05-01T12:30:45+0100",
            "2024-05-01T12:30:45+01:00 ",
            " 2024-05-01T12:30:45Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-05-00T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T00:60:00Z",
            "2024-05-01T00:00:60Z",
            "2024-05-01T00:00:00+24:00",
            "2024-05-01T00:00:00+00:60",
            "+024-05-01T00:00:00Z",
            "2024-05-01T00:00:00ZZ",
            "2024-05-01T00:00:00\u{ff10}",
            "２024-05-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn range_limits_are_influxdb_limits() {
        assert_eq!(
            parse_rfc3339("2262-04-11T23:47:16.854775806Z"),
            Some(MAX_NS)
        );
        assert_eq!(parse_rfc3339("2262-04-11T23:47:16.854775807Z"), None);
        assert_eq!(
            parse_rfc3339("1677-09-21T00:12:43.145224194Z"),
            Some(MIN_NS)
        );
        assert_eq!(parse_rfc3339("1677-09-21T00:12:43.145224193Z"), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), None);
    }
}
