//! RFC 3339 timestamps → nanoseconds since the Unix epoch, within InfluxDB's range.

/// InfluxDB 1.x refuses `i64::MIN` and `i64::MAX` (and one above the minimum) as timestamps.
pub const MIN_NS: i64 = -9_223_372_036_854_775_806;
pub const MAX_NS: i64 = 9_223_372_036_854_775_806;

/// `YYYY-MM-DD(T|t)HH:MM:SS(.d{1,9})?(Z|z|(+|-)HH:MM)` with real calendar values, as ns;
/// `None` when the text does not match or the instant is outside `MIN_NS..=MAX_NS`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    Dates::default().parse_rfc3339(s)
}

/// The last valid date read and its day count: the timestamps of a batch mostly share their
/// date, which is then checked and counted once.
#[derive(Debug, Default)]
pub struct Dates {
    /// `YYYY-MM-DD(T|t)` as `date_text` gives it; all zero (no date's) before the first.
    text: (u64, u64),
    days: i64,
}

impl Dates {
    /// `parse_rfc3339`, remembering the date.
    pub fn parse_rfc3339(&mut self, s: &str) -> Option<i64> {
        let b = s.as_bytes();
        let head = b.first_chunk()?;
        let date = date_text(head);
        let days = if date == self.text {
            self.days
        } else {
            let days = date_days(head)?;
            (self.text, self.days) = (date, days);
            days
        };
        let [hour, minute, second] = time_fields(head)?;
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        time_of(days, hour * 3600 + minute * 60 + second, &b[19..])
    }
}

/// The nanoseconds of the instant `seconds` into day `days` (since the epoch), `rest` being the
/// timestamp after those seconds.
fn time_of(days: i64, seconds: i64, mut rest: &[u8]) -> Option<i64> {
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
    let secs = days * 86_400 + seconds - offset_s;
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(frac_ns);
    if ns < i128::from(MIN_NS) || ns > i128::from(MAX_NS) {
        return None;
    }
    i64::try_from(ns).ok()
}

/// The head's `YYYY-MM-DD(T|t)` as two words, the second's lanes past it zero.
fn date_text(head: &[u8; 19]) -> (u64, u64) {
    (word(head, 0), word(head, 8) & 0xff_ffff)
}

/// Days since the epoch of the head's date; `None` when it is not a real calendar date.
fn date_days(head: &[u8; 19]) -> Option<i64> {
    let [year, month, day] = date_fields(head)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// `YYYY-MM-DD(T|t)` as its three numbers. The head is read as words, each checked and
/// converted in a few word operations rather than a branch per character.
fn date_fields(head: &[u8; 19]) -> Option<[i64; 3]> {
    let date = Pattern::DATE.pairs(word(head, 0))?;
    let day = Pattern::DAY.pairs(word(head, 8))?;
    Some([
        lane(date, 0) * 100 + lane(date, 2),
        lane(date, 5),
        lane(day, 0),
    ])
}

/// `HH:MM:SS` after the date, as `date_fields` reads it.
fn time_fields(head: &[u8; 19]) -> Option<[i64; 3]> {
    let time = Pattern::TIME.pairs(word(head, 11))?;
    Some([lane(time, 0), lane(time, 3), lane(time, 6)])
}

/// The 8 bytes of `head` from `at`, little-endian.
fn word(head: &[u8; 19], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&head[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Lane `i` (byte `i`) of a word.
fn lane(w: u64, i: u32) -> i64 {
    ((w >> (8 * i)) & 0xff) as i64
}

/// Eight characters of the head: which are digits, which must be given separators.
struct Pattern {
    /// 0xff in the lanes of digits.
    digits: u64,
    /// 0xff in the lanes of separators.
    sep_lanes: u64,
    /// The separators in their lanes, in lower case.
    seps: u64,
    /// 0x20 in the lane of a letter whose case does not matter (`T` or `t`).
    any_case: u64,
}

impl Pattern {
    /// `YYYY-MM-`
    const DATE: Pattern = Pattern::new(0x00ff_ff00_ffff_ffff, 0x2d00_002d_0000_0000, 0);
    /// `DDt`, the rest of its word left to `TIME`.
    const DAY: Pattern = Pattern::new(0x0000_ffff, 0x0074_0000, 0x0020_0000);
    /// `HH:MM:SS`
    const TIME: Pattern = Pattern::new(0xffff_00ff_ff00_ffff, 0x0000_3a00_003a_0000, 0);

    const fn new(digits: u64, seps: u64, any_case: u64) -> Pattern {
        let mut sep_lanes = 0;
        let mut i = 0;
        while i < 8 {
            if (seps >> (8 * i)) & 0xff != 0 {
                sep_lanes |= 0xff << (8 * i);
            }
            i += 1;
        }
        Pattern {
            digits,
            sep_lanes,
            seps,
            any_case,
        }
    }

    /// When `w` matches: the value of each digit pair in its tens digit's lane. A lane is a
    /// digit exactly when its high nibble is 3 before and after adding 6 (no lane then carries
    /// into the next); the pair values (at most 99) do not carry either.
    fn pairs(&self, w: u64) -> Option<u64> {
        if (w | self.any_case) & self.sep_lanes != self.seps {
            return None;
        }
        let d = w & self.digits;
        let high = 0xf0f0_f0f0_f0f0_f0f0 & self.digits;
        let three = 0x3030_3030_3030_3030 & self.digits;
        let six = 0x0606_0606_0606_0606 & self.digits;
        if d & high != three || (d + six) & high != three {
            return None;
        }
        let v = d & !high;
        Some(v * 10 + (v >> 8))
    }
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

/// Days from 1970-01-01 to the given proleptic Gregorian date, for years 0 to 9999 (Howard
/// Hinnant's algorithm, with years counted from March). Shifted one 400-year era up, the year
/// is never negative, so the divisions are unsigned ones by constants: multiplies and shifts.
#[inline]
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    /// Days from March 1 to the first of each month, January first.
    const BEFORE_MONTH: [u16; 12] = [306, 337, 0, 31, 61, 92, 122, 153, 184, 214, 245, 275];
    debug_assert!((0..=9999).contains(&year) && (1..=12).contains(&month));
    let y = (year + 400 - i64::from(month <= 2)) as u64;
    let doy = u64::from(BEFORE_MONTH[(month - 1) as usize]) + day as u64 - 1;
    let days = y * 365 + y / 4 - y / 100 + y / 400 + doy;
    days as i64 - 719_468 - 146_097
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

    /// `date_fields` and `time_fields` together.
    fn head_fields(h: &[u8; 19]) -> Option<[i64; 6]> {
        let [year, month, day] = date_fields(h)?;
        let [hour, minute, second] = time_fields(h)?;
        Some([year, month, day, hour, minute, second])
    }

    /// `head_fields` byte by byte.
    fn head_fields_bytewise(h: &[u8; 19]) -> Option<[i64; 6]> {
        let num = |at: usize, n: usize| {
            h[at..at + n].iter().try_fold(0i64, |v, &c| {
                c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0'))
            })
        };
        let seps = h[4] == b'-'
            && h[7] == b'-'
            && matches!(h[10], b'T' | b't')
            && h[13] == b':'
            && h[16] == b':';
        seps.then_some(())?;
        Some([
            num(0, 4)?,
            num(5, 2)?,
            num(8, 2)?,
            num(11, 2)?,
            num(14, 2)?,
            num(17, 2)?,
        ])
    }

    #[test]
    fn a_remembered_date_reads_like_a_fresh_one() {
        let mut dates = Dates::default();
        for ts in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T13:00:00.5Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01t00:00:00+01:00",
            "2024-02-30T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-02-29T00:00:00Z",
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00",
        ] {
            assert_eq!(dates.parse_rfc3339(ts), parse_rfc3339(ts), "{ts}");
        }
    }

    #[test]
    fn heads_read_as_words_read_like_byte_by_byte() {
        let base = *b"2024-05-01T12:30:45";
        let mut state: u64 = 0x9e37_79b9;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for at in 0..19 {
            for c in 0..=255u8 {
                let mut h = base;
                h[at] = c;
                assert_eq!(head_fields(&h), head_fields_bytewise(&h), "{h:?}");
            }
        }
        for _ in 0..200_000 {
            let mut h = base;
            for _ in 0..2 {
                h[next(19) as usize] = b"0123456789-:Tt/ \x7f\x80"[next(18) as usize];
            }
            assert_eq!(head_fields(&h), head_fields_bytewise(&h), "{h:?}");
        }
    }

    #[test]
    fn days_count_like_the_signed_algorithm() {
        // Howard Hinnant's days_from_civil as published, signed.
        let reference = |year: i64, month: i64, day: i64| {
            let y = if month <= 2 { year - 1 } else { year };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
            era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
        };
        for year in 0..=9999 {
            for month in 1..=12 {
                for day in [1, 28, days_in_month(year, month)] {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        reference(year, month, day),
                        "{year}-{month}-{day}"
                    );
                }
            }
        }
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
