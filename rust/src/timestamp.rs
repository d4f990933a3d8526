//! RFC 3339 timestamps → nanoseconds since the Unix epoch, within InfluxDB's range.

/// InfluxDB 1.x refuses `i64::MIN` and `i64::MAX` (and one above the minimum) as timestamps.
pub const MIN_NS: i64 = -9_223_372_036_854_775_806;
pub const MAX_NS: i64 = 9_223_372_036_854_775_806;

/// `YYYY-MM-DD(T|t)HH:MM:SS(.d{1,9})?(Z|z|(+|-)HH:MM)` with real calendar values, as ns;
/// `None` when the text does not match or the instant is outside `MIN_NS..=MAX_NS`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut pos = 19;
    let mut frac_ns: i64 = 0;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        let n = pos - start;
        if n == 0 || n > 9 {
            return None;
        }
        frac_ns = digits(b, start, n)?;
        for _ in n..9 {
            frac_ns *= 10;
        }
    }
    let offset_s = match b.get(pos..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2], 0, 2)?;
            let om = digits(&[*m1, *m2], 0, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
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

/// The `n` ASCII digits at `b[at..at + n]` as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    b.get(at..at + n)?.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
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
