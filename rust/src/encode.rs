//! Output bytes: InfluxDB line protocol, Python-`repr` floats and JSON strings.
//! All escaping of the core lives here.

use crate::json::Number;
use crate::words;

/// Appends a tag value or field key, escaping `,` `=` and space. Callers have refused
/// backslashes and control characters, so no other byte needs escaping.
pub fn push_lp_key(out: &mut Vec<u8>, b: &[u8]) {
    let first = words::find(b, 0, |w| {
        words::eq(w, b',') | words::eq(w, b'=') | words::eq(w, b' ')
    });
    out.extend_from_slice(&b[..first]);
    for &c in &b[first..] {
        if matches!(c, b',' | b'=' | b' ') {
            out.push(b'\\');
        }
        out.push(c);
    }
}

/// Appends a measurement, escaping `,` and space (InfluxDB keeps `\=` in a measurement as
/// is, so `=` is written plain). Callers have refused backslashes and control characters.
pub fn push_lp_measurement(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        if matches!(c, b',' | b' ') {
            out.push(b'\\');
        }
        out.push(c);
    }
}

/// Appends a string field value between double quotes, escaping `"` and backslash.
pub fn push_lp_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        if matches!(c, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// A tag value or field key, and whether it may hold a byte line protocol escapes.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    text: &'a [u8],
    /// False only when the text is known to hold none of `,` `=` and space.
    may_escape: bool,
}

impl<'a> Key<'a> {
    /// Text the caller has already scanned: `escape` tells whether it holds `,` `=` or space.
    pub fn scanned(text: &'a [u8], escape: bool) -> Self {
        Key {
            text,
            may_escape: escape,
        }
    }

    pub fn push(self, out: &mut Vec<u8>) {
        if self.may_escape {
            push_lp_key(out, self.text);
        } else {
            // Most ids and names: the copy alone, without another scan.
            out.extend_from_slice(self.text);
        }
    }
}

impl<'a> From<&'a [u8]> for Key<'a> {
    fn from(text: &'a [u8]) -> Self {
        Key {
            text,
            may_escape: true,
        }
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Key<'a> {
    fn from(text: &'a [u8; N]) -> Self {
        Key::from(&text[..])
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(text: &'a str) -> Self {
        Key::from(text.as_bytes())
    }
}

/// A finite number as its significant decimal digits `d1 d2 … dn` (the integer `mantissa`,
/// no trailing zeros) and the decimal exponent `exp` of `d1`; zero has no digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: u64,
    exp: i32,
    negative: bool,
}

impl Decimal {
    /// The digits Python's `repr(float(text))` prints, read straight from a JSON number token,
    /// when the token has at most 15 significant digits and a modest exponent. Any two such
    /// decimals are distinct doubles (DBL_DIG = 15), so the shortest round-trip digits of the
    /// double are exactly the token's: no float parsing or formatting is needed.
    pub fn from_json_number(text: &str) -> Option<Decimal> {
        let b = text.as_bytes();
        let (negative, mut i) = match b.first() {
            Some(b'-') => (true, 1),
            _ => (false, 0),
        };
        let mut mantissa: u64 = 0;
        let mut n_digits: u32 = 0;
        let mut int_digits: i32 = 0;
        let mut leading_zeros: i32 = 0;
        let mut in_fraction = false;
        let mut pending_zeros: u32 = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'0'..=b'9' => {
                    if !in_fraction {
                        int_digits += 1;
                    }
                    if c == b'0' {
                        if n_digits == 0 {
                            leading_zeros += 1;
                        } else {
                            pending_zeros += 1;
                        }
                    } else {
                        n_digits += pending_zeros + 1;
                        if n_digits > 15 {
                            return None;
                        }
                        mantissa = mantissa * 10u64.pow(pending_zeros + 1) + u64::from(c - b'0');
                        pending_zeros = 0;
                    }
                }
                b'.' if !in_fraction => in_fraction = true,
                b'e' | b'E' => break,
                _ => return None,
            }
            i += 1;
        }
        let mut exp: i32 = 0;
        if let Some(rest) = b.get(i + 1..) {
            let (sign, digits) = match rest.split_first() {
                Some((b'-', r)) => (-1, r),
                Some((b'+', r)) => (1, r),
                _ => (1, rest),
            };
            if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            exp = sign * parse_exp(digits);
        }
        if n_digits == 0 {
            return Some(Decimal {
                mantissa: 0,
                exp: 0,
                negative,
            });
        }
        let exp = int_digits - leading_zeros - 1 + exp;
        (-300..=300).contains(&exp).then_some(Decimal {
            mantissa,
            exp,
            negative,
        })
    }

    /// The shortest round-trip digits of a finite double (from `ryu`).
    pub fn from_f64(v: f64) -> Decimal {
        let mut ryu_buf = ryu::Buffer::new();
        let text = ryu_buf.format_finite(v).as_bytes();
        let (negative, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mantissa_text, exp_part) = match text.iter().position(|&c| c == b'e') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &b""[..]),
        };
        let exp = match exp_part.split_first() {
            Some((b'-', digits)) => -parse_exp(digits),
            _ => parse_exp(exp_part),
        };
        let mut mantissa: u64 = 0;
        let mut n_digits = 0;
        let mut int_digits: i32 = 0;
        let mut leading_zeros: i32 = 0;
        let mut in_fraction = false;
        for &c in mantissa_text {
            if c == b'.' {
                in_fraction = true;
                continue;
            }
            if !in_fraction {
                int_digits += 1;
            }
            if n_digits == 0 && c == b'0' {
                leading_zeros += 1;
            } else if n_digits < 19 {
                mantissa = mantissa * 10 + u64::from(c.wrapping_sub(b'0'));
                n_digits += 1;
            }
        }
        while mantissa != 0 && mantissa % 10 == 0 {
            mantissa /= 10;
        }
        Decimal {
            mantissa,
            exp: int_digits - leading_zeros - 1 + exp,
            negative,
        }
    }
}

/// A JSON number token whose Python `repr(float(token))` is a prefix of the token itself,
/// perhaps followed by `.0`: `22` → `22.0`, `22.50` → `22.5`, `22.00` → `22.0`, `-0` → `-0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainNumber<'a> {
    pub text: &'a str,
    pub dot_zero: bool,
}

impl<'a> PlainNumber<'a> {
    /// The token as printed, when it has no exponent, at most 15 significant digits and is zero
    /// or at least 1e-4 in magnitude (see `Decimal::from_json_number` for why the digits are
    /// kept).
    #[inline(always)]
    pub fn of(n: &Number<'a>) -> Option<Self> {
        let b = n.text.as_bytes();
        if n.frac_end != b.len() {
            return None;
        }
        let int = b.get(usize::from(b.first() == Some(&b'-'))..n.int_end)?;
        if n.frac_end == n.int_end {
            return (int.len() <= 15).then_some(PlainNumber {
                text: n.text,
                dot_zero: true,
            });
        }
        let frac = b.get(n.int_end + 1..)?;
        // Most fractions end in a digit other than 0: that one test, not a scan back.
        let last = match frac.last() {
            Some(&c) if c != b'0' => Some(frac.len() - 1),
            _ => frac.iter().rposition(|&c| c != b'0'),
        };
        let Some(last) = last else {
            // All-zero fraction: keep its first zero.
            return (int.len() <= 15).then_some(PlainNumber {
                text: n.text.get(..n.int_end + 2)?,
                dot_zero: false,
            });
        };
        let significant = if int == b"0" {
            // 0.000ddd: the first significant digit at most 4 places after the point.
            let first = frac.iter().position(|&c| c != b'0')?;
            if first > 3 {
                return None;
            }
            last + 1 - first
        } else {
            int.len() + last + 1
        };
        (significant <= 15).then_some(PlainNumber {
            text: n.text.get(..n.int_end + 2 + last)?,
            dot_zero: false,
        })
    }

    pub fn push(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.text.as_bytes());
        if self.dot_zero {
            out.extend_from_slice(b".0");
        }
    }
}

/// A finite number to print as Python's `repr(float)` does: the token's own digits when they
/// are short (the common case: no float parsing or formatting), else the double.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Float<'a> {
    Plain(PlainNumber<'a>),
    Decimal(Decimal),
    Binary(f64),
}

impl<'a> Float<'a> {
    /// A JSON number token, correctly rounded; None when it overflows to infinity.
    #[inline(always)]
    pub fn of(n: &Number<'a>) -> Option<Self> {
        if let Some(plain) = PlainNumber::of(n) {
            return Some(Float::Plain(plain));
        }
        // Without an exponent, 16 digits or more mean more than 15 significant ones, mostly.
        let digits = n.frac_end - usize::from(n.text.starts_with('-'));
        if n.frac_end < n.text.len() || digits <= 16 {
            if let Some(d) = Decimal::from_json_number(n.text) {
                return Some(Float::Decimal(d));
            }
        }
        n.text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Float::Binary)
    }

    #[inline(always)]
    pub fn push(&self, out: &mut Vec<u8>) {
        match self {
            Float::Plain(n) => n.push(out),
            Float::Decimal(d) => push_decimal(out, d),
            Float::Binary(v) => push_f64(out, *v),
        }
    }
}

/// Appends `v` exactly as Python's `repr(float)` writes it. `v` must be finite.
pub fn push_f64(out: &mut Vec<u8>, v: f64) {
    if v == v.trunc() && v.abs() < 1e16 {
        if v == 0.0 {
            out.extend_from_slice(if v.is_sign_negative() {
                b"-0.0"
            } else {
                b"0.0"
            });
        } else {
            // Exact: |v| < 1e16 < 2**63 and v is integral.
            out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
            out.extend_from_slice(b".0");
        }
        return;
    }
    let mut ryu_buf = ryu::Buffer::new();
    let text = ryu_buf.format_finite(v);
    // ryu and Python agree on the digits, and on fixed notation for decimal exponents -4..16;
    // ryu also writes e = -5 as `0.0000d…` and uses no sign or padding in exponents.
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    if !text.contains('e') && !unsigned.starts_with("0.0000") {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    push_decimal(out, &Decimal::from_f64(v));
}

/// Appends the number as Python's `repr(float)`: fixed notation for decimal exponents in
/// `-4..16` (integral values get `.0`), else `d[.ddd]e±XX`.
pub fn push_decimal(out: &mut Vec<u8>, d: &Decimal) {
    if d.negative {
        out.push(b'-');
    }
    if d.mantissa == 0 {
        out.extend_from_slice(b"0.0");
        return;
    }
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(d.mantissa).as_bytes();
    let exp = d.exp;
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        } else {
            let int_digits = exp as usize + 1;
            if digits.len() > int_digits {
                out.extend_from_slice(&digits[..int_digits]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_digits..]);
            } else {
                out.extend_from_slice(digits);
                out.extend(std::iter::repeat_n(b'0', int_digits - digits.len()));
                out.extend_from_slice(b".0");
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.extend_from_slice(first);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(itoa::Buffer::new().format(abs).as_bytes());
    }
}

fn parse_exp(digits: &[u8]) -> i32 {
    digits
        .iter()
        .fold(0i32, |acc, &c| acc * 10 + i32::from(c.wrapping_sub(b'0')))
}

/// Appends `s` as a JSON string the way Python's `json.dumps(s, ensure_ascii=False)` does.
/// Inlined: most strings (ids in responses) need no escape, and then cost a scan, one
/// reservation and the copy, less than a call.
#[inline(always)]
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    push_json_member(out, b"", s);
}

/// `prefix` (a member's `,"name":`), then `s` as `push_json_str` writes it, under one
/// reservation when `s` needs no escape.
#[inline(always)]
pub fn push_json_member(out: &mut Vec<u8>, prefix: &[u8], s: &str) {
    let b = s.as_bytes();
    let first = find_json_escape(b, 0);
    if first == b.len() {
        let mut room = Room::reserve(out, prefix.len() + b.len() + 2);
        room.put(prefix);
        room.put_between(b'"', b, b'"');
        return;
    }
    out.extend_from_slice(prefix);
    push_json_escaped(out, b, first);
}

/// `push_json_str` of `b`, whose first byte to escape is at `first`.
#[cold]
#[inline(never)]
fn push_json_escaped(out: &mut Vec<u8>, b: &[u8], first: usize) {
    out.push(b'"');
    let mut start = 0;
    let mut i = first;
    loop {
        out.extend_from_slice(&b[start..i]);
        let Some(&c) = b.get(i) else {
            break;
        };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        start = i + 1;
        i = find_json_escape(b, start);
    }
    out.push(b'"');
}

/// The first byte at or after `i` that a JSON string escapes, or `b.len()`.
#[inline(always)]
fn find_json_escape(b: &[u8], i: usize) -> usize {
    words::find(b, i, |w| {
        words::eq(w, b'"') | words::eq(w, b'\\') | words::below(w, 0x20)
    })
}

/// Appends `v` in decimal, as `itoa` does, in the word-wide steps of `Room::decimal`.
#[inline(always)]
pub fn push_uint(out: &mut Vec<u8>, v: u64) {
    let mut room = Room::reserve(out, 20);
    room.decimal(v);
}

/// Appends `b`, copied inline when short (see `Room`): for pieces of unknown length, where
/// `extend_from_slice` calls libc `memcpy`.
#[inline(always)]
pub fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let mut room = Room::reserve(out, b.len());
    room.put(b);
}

/// Room reserved at the end of a `Vec<u8>` for one piece of a line, written with short copies
/// inline: the pieces (ids, metric names, number tokens) are mostly a few bytes, for which
/// `extend_from_slice` costs a capacity check and a libc `memcpy` call each, more than the copy
/// itself. Every write is checked against the reservation (one compare per write, or per
/// method that writes several pieces, always true unless a caller's bound is wrong: then a
/// panic, never a write past the buffer). What was written joins the `Vec` on drop.
pub(crate) struct Room<'o> {
    out: &'o mut Vec<u8>,
    /// The end of `out`'s initialized bytes when the room was reserved.
    end: *mut u8,
    /// Bytes written from `end`.
    at: usize,
    /// Bytes reserved from `end`: writes stay within.
    max: usize,
}

impl<'o> Room<'o> {
    /// Reserves `max` bytes, the piece's worst case.
    #[inline(always)]
    pub(crate) fn reserve(out: &'o mut Vec<u8>, max: usize) -> Self {
        out.reserve(max);
        let end = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        Room {
            out,
            end,
            at: 0,
            max,
        }
    }

    /// Where the next `n` bytes go.
    #[inline(always)]
    fn next(&mut self, n: usize) -> *mut u8 {
        assert!(n <= self.max - self.at, "a room's bound covers its writes");
        // SAFETY: `at + n <= max`, and `reserve` made room for `max` bytes from `end`.
        unsafe { self.end.add(self.at) }
    }

    #[inline(always)]
    pub(crate) fn byte(&mut self, c: u8) {
        let dst = self.next(1);
        // SAFETY: `next` checked the room for one byte.
        unsafe { dst.write(c) };
        self.at += 1;
    }

    /// Copies `b`.
    #[inline(always)]
    pub(crate) fn put(&mut self, b: &[u8]) {
        let dst = self.next(b.len());
        // SAFETY: `next` checked the room for `b.len()` bytes from `dst`.
        unsafe { copy_short(dst, b) };
        self.at += b.len();
    }

    /// `byte(open)`, `put(b)` and `byte(close)` under one check of the bound: most pieces
    /// are a key or string between two fixed bytes, and a check per write costs more than
    /// the write.
    #[inline(always)]
    fn put_between(&mut self, open: u8, b: &[u8], close: u8) {
        let n = b.len();
        let dst = self.next(n + 2);
        // SAFETY: `next` checked the room for `n + 2` bytes from `dst`.
        unsafe {
            dst.write(open);
            copy_short(dst.add(1), b);
            dst.add(n + 1).write(close);
        }
        self.at += n + 2;
    }

    /// Copies `b`, then `.0` when `dot_zero`: the two bytes are written either way (the room
    /// covers them) and counted only then, so a float's `.0` costs no branch.
    #[inline(always)]
    fn put_dot_zero(&mut self, b: &[u8], dot_zero: bool) {
        let n = b.len();
        let dst = self.next(n + 2);
        // SAFETY: `next` checked the room for `n + 2` bytes from `dst`.
        unsafe {
            copy_short(dst, b);
            dst.add(n).cast::<[u8; 2]>().write_unaligned(*b".0");
        }
        self.at += n + 2 * usize::from(dot_zero);
    }

    /// Writes `v` in decimal, eight digits at a time (`eight_digits`); up to 20 bytes, and
    /// needs room for 20.
    #[inline(always)]
    pub(crate) fn decimal(&mut self, v: u64) {
        const E8: u64 = 100_000_000;
        // The lead of a 17- to 20-digit `v` keeps at most 4 digits, so 4 + 16; checked once
        // here for the 8-byte stores below (the lead's store takes 8 bytes whatever it keeps).
        self.next(20);
        // SAFETY (each call): the check above covers the lead's 8-byte store and the 8 bytes
        // of each block after it: the lead keeps at most 4 digits when blocks follow.
        unsafe {
            if v < E8 {
                self.lead(v as u32);
            } else if v < E8 * E8 {
                self.lead((v / E8) as u32);
                self.block(eight_digits((v % E8) as u32));
            } else {
                self.lead((v / (E8 * E8)) as u32);
                self.block(eight_digits((v / E8 % E8) as u32));
                self.block(eight_digits((v % E8) as u32));
            }
        }
    }

    /// The digits of `v < 10^8` without leading zeros (one `0` for zero), in one 8-byte store
    /// (the bytes past the digits are overwritten next or left beyond the length).
    ///
    /// # Safety
    /// The room has 8 bytes left.
    #[inline(always)]
    unsafe fn lead(&mut self, v: u32) {
        let digits = eight_digits(v);
        // Leading zeros are the low lanes that hold 0 (the last digit is kept).
        let zeros = (digits.trailing_zeros() / 8).min(7);
        let shifted = (digits | ASCII_ZEROS) >> (8 * zeros);
        // SAFETY: the caller checked the room for 8 bytes.
        unsafe {
            let dst = self.end.add(self.at);
            dst.cast::<[u8; 8]>().write_unaligned(shifted.to_le_bytes());
        }
        self.at += 8 - zeros as usize;
    }

    /// # Safety
    /// The room has 8 bytes left.
    #[inline(always)]
    unsafe fn block(&mut self, digits: u64) {
        // SAFETY: the caller checked the room for 8 bytes.
        unsafe {
            let dst = self.end.add(self.at);
            dst.cast::<[u8; 8]>()
                .write_unaligned((digits | ASCII_ZEROS).to_le_bytes());
        }
        self.at += 8;
    }

    /// `put` of `b` with `,` `=` and space escaped (at most two bytes per byte).
    fn put_escaped_key(&mut self, b: &[u8]) {
        for &c in b {
            if matches!(c, b',' | b'=' | b' ') {
                self.byte(b'\\');
            }
            self.byte(c);
        }
    }
}

impl Drop for Room<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let len = self.out.len() + self.at;
        // SAFETY: the `at` bytes from `end` were written, within the reserved capacity.
        unsafe { self.out.set_len(len) };
    }
}

const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// The eight decimal digits of `v < 10^8` (leading zeros included) as the values 0-9 in the
/// bytes of a little-endian word, first digit first: split by 10^4, 10^2 and 10 in parallel
/// lanes, with division by multiplication (exact in these ranges). A loop of divisions by 10
/// (or itoa's two digits a step) takes several times the instructions for a 19-digit
/// timestamp.
#[inline(always)]
fn eight_digits(v: u32) -> u64 {
    let v = u64::from(v);
    // 32-bit lanes: the first four digits, then the last four.
    let x = (v / 10_000) | ((v % 10_000) << 32);
    // 16-bit lanes of two digits: x / 100 per lane is x * 5243 >> 19 below 10^4.
    let hundreds = ((x * 5243) >> 19) & 0x0000_007f_0000_007f;
    let x = hundreds | ((x - hundreds * 100) << 16);
    // Byte lanes of one digit: x / 10 per lane is x * 103 >> 10 below 100.
    let tens = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | ((x - tens * 10) << 8)
}

/// Copies `src` to `dst`, in at most two overlapping stores when it is at most 32 bytes long.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes.
#[inline(always)]
unsafe fn copy_short(dst: *mut u8, b: &[u8]) {
    let n = b.len();
    // SAFETY (each arm): the stores write `n` bytes from `dst`, some of them twice.
    unsafe {
        // Most common first: metric names, number tokens and ids of 4 to 7 bytes.
        match n {
            4..=7 => copy_ends::<4>(dst, b),
            8..=16 => copy_ends::<8>(dst, b),
            17..=32 => copy_ends::<16>(dst, b),
            1..=3 => {
                *dst = b[0];
                *dst.add(n / 2) = b[n / 2];
                *dst.add(n - 1) = b[n - 1];
            }
            _ => std::ptr::copy_nonoverlapping(b.as_ptr(), dst, n),
        }
    }
}

/// Copies `src` (`N..=2N` bytes) to `dst` as its first and last `N` bytes, which overlap: two
/// loads and two stores whatever the length.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes.
#[inline(always)]
unsafe fn copy_ends<const N: usize>(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    if let (Some(first), Some(last)) = (src.first_chunk::<N>(), src.last_chunk::<N>()) {
        // SAFETY: `N <= n`, so both stores lie within the `n` bytes from `dst`.
        unsafe {
            dst.cast::<[u8; N]>().write_unaligned(*first);
            dst.add(n - N).cast::<[u8; N]>().write_unaligned(*last);
        }
    }
}

impl Key<'_> {
    /// The most bytes `write` takes.
    #[inline(always)]
    fn max_len(&self) -> usize {
        if self.may_escape {
            2 * self.text.len()
        } else {
            self.text.len()
        }
    }

    /// Writes the key into `room`, which has `max_len()` bytes left.
    #[inline(always)]
    fn write(&self, room: &mut Room<'_>) {
        if self.may_escape {
            room.put_escaped_key(self.text);
        } else {
            room.put(self.text);
        }
    }

    /// Writes `{before}{key}=` into `room`, which has `max_len() + 2` bytes left.
    #[inline(always)]
    fn write_between(&self, before: u8, room: &mut Room<'_>) {
        if self.may_escape {
            room.byte(before);
            room.put_escaped_key(self.text);
            room.byte(b'=');
        } else {
            room.put_between(before, self.text, b'=');
        }
    }
}

/// One encoded line: `{measurement},{tags} {fields} {ts}\n`, written straight into `out`,
/// each piece after one reservation of its worst-case size. Every field is written after a
/// `,`, and `finish` turns the first one into the space that ends the tags: a flag tested and
/// set per field cost more.
pub struct Line<'o> {
    out: &'o mut Vec<u8>,
    /// Where the measurement and tags end: the first field's separator, or with no field the
    /// timestamp's own space.
    tags_end: usize,
}

impl<'o> Line<'o> {
    /// Starts a line with its measurement (a fixed name chosen by the core, never client text).
    #[inline(always)]
    pub fn start(out: &'o mut Vec<u8>, measurement: &str) -> Self {
        let mut room = Room::reserve(out, measurement.len());
        room.put(measurement.as_bytes());
        drop(room);
        let tags_end = out.len();
        Line { out, tags_end }
    }

    /// Inlined: the key is a constant, so its copy is a fixed-size move.
    #[inline(always)]
    pub fn tag<'k>(&mut self, key: &str, value: impl Into<Key<'k>>) {
        let value = value.into();
        let mut room = Room::reserve(self.out, key.len() + 2 + value.max_len());
        room.put_between(b',', key.as_bytes(), b'=');
        value.write(&mut room);
        drop(room);
        self.tags_end = self.out.len();
    }

    /// Writes the field's separator and `key=`, and leaves room for `value_max` more bytes.
    #[inline(always)]
    fn field(&mut self, key: Key<'_>, value_max: usize) -> Room<'_> {
        let mut room = Room::reserve(self.out, key.max_len() + 2 + value_max);
        key.write_between(b',', &mut room);
        room
    }

    pub fn float<'k>(&mut self, key: impl Into<Key<'k>>, v: f64) {
        drop(self.field(key.into(), 0));
        push_f64(self.out, v);
    }

    #[inline(always)]
    pub fn number<'k>(&mut self, key: impl Into<Key<'k>>, n: &Float<'_>) {
        match n {
            // The common case: the token's own text, and `.0` perhaps.
            Float::Plain(p) => {
                // The text and `.0`.
                let mut room = self.field(key.into(), p.text.len() + 2);
                room.put_dot_zero(p.text.as_bytes(), p.dot_zero);
            }
            _ => {
                drop(self.field(key.into(), 0));
                n.push(self.out);
            }
        }
    }

    #[inline(always)]
    pub fn bool<'k>(&mut self, key: impl Into<Key<'k>>, v: bool) {
        let text: &[u8] = if v { b"true" } else { b"false" };
        let mut room = self.field(key.into(), text.len());
        room.put(text);
    }

    #[inline(always)]
    pub fn uint<'k>(&mut self, key: impl Into<Key<'k>>, v: u64) {
        // 20 digits and `i`.
        let mut room = self.field(key.into(), 21);
        room.decimal(v);
        room.byte(b'i');
    }

    /// Ends the line with its timestamp (ns, or any integer unit the caller means).
    #[inline(always)]
    pub fn finish(self, ts: impl Into<i128>) {
        let ts: i128 = ts.into();
        if let Ok(magnitude) = u64::try_from(ts.unsigned_abs()) {
            // A space, a sign, 20 digits and a newline.
            let mut room = Room::reserve(self.out, 23);
            room.byte(b' ');
            if ts < 0 {
                room.byte(b'-');
            }
            room.decimal(magnitude);
            room.byte(b'\n');
        } else {
            // Beyond any nanosecond timestamp: rare, so the general formatter.
            self.out.push(b' ');
            push_bytes(self.out, itoa::Buffer::new().format(ts).as_bytes());
            self.out.push(b'\n');
        }
        if let Some(separator) = self.out.get_mut(self.tags_end) {
            *separator = b' ';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: f64) -> String {
        let mut out = Vec::new();
        push_f64(&mut out, v);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn floats_match_python_repr() {
        let cases: &[(f64, &str)] = &[
            (22.0, "22.0"),
            (0.0001, "0.0001"),
            (1e-05, "1e-05"),
            (1.5e-05, "1.5e-05"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (-1.0 / 3.0, "-0.3333333333333333"),
            (22.5, "22.5"),
            (-273.15, "-273.15"),
            (123456.789, "123456.789"),
            (0.00012345, "0.00012345"),
            (0.000012345, "1.2345e-05"),
            (1e100, "1e+100"),
            (1.25e-100, "1.25e-100"),
            (2.5e15, "2500000000000000.0"),
            (1234567890123456.7, "1234567890123456.8"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (9007199254740993.0, "9007199254740992.0"),
            (-5e-324, "-5e-324"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
            (100.5, "100.5"),
            (1e-4, "0.0001"),
            (9.999e-5, "9.999e-05"),
            (0.5, "0.5"),
            (3.0e-10, "3e-10"),
            (f64::from_bits(0x3ff0_0000_0000_0001), "1.0000000000000002"),
            (0.00001234, "1.234e-05"),
            (-0.00001234, "-1.234e-05"),
            (0.0001234, "0.0001234"),
            (1234.5678901234567, "1234.5678901234567"),
            (-9.87654321e15, "-9876543210000000.0"),
            (9.87654321e15 + 0.5, "9876543210000000.0"),
            (1.5e300, "1.5e+300"),
        ];
        for &(v, want) in cases {
            assert_eq!(repr(v), want, "{v:e}");
        }
    }

    fn token(text: &str) -> Number<'_> {
        let n = crate::json::Reader::new(text).number();
        n.unwrap_or(Number {
            text: "",
            int_end: 0,
            frac_end: 0,
        })
    }

    fn repr_of_token(text: &str) -> Option<String> {
        let mut out = Vec::new();
        push_decimal(&mut out, &Decimal::from_json_number(text)?);
        Some(String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn short_json_numbers_print_like_python_without_float_conversion() {
        let cases: &[(&str, &str)] = &[
            ("22", "22.0"),
            ("22.50", "22.5"),
            ("-0", "-0.0"),
            ("0", "0.0"),
            ("-0.000", "-0.0"),
            ("0e5", "0.0"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("0.000015", "1.5e-05"),
            ("1e16", "1e+16"),
            ("1E+15", "1000000000000000.0"),
            ("123456789012345", "123456789012345.0"),
            ("100.5", "100.5"),
            ("1.5e-7", "1.5e-07"),
            ("12.5e1", "125.0"),
            ("0.1", "0.1"),
            ("-273.15", "-273.15"),
            ("1000e-3", "1.0"),
            ("1e300", "1e+300"),
            ("1e-300", "1e-300"),
            ("120.000e-2", "1.2"),
        ];
        for &(text, want) in cases {
            assert_eq!(repr_of_token(text).as_deref(), Some(want), "{text}");
            if let Some(plain) = PlainNumber::of(&token(text)) {
                let mut out = Vec::new();
                plain.push(&mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap_or_default(),
                    want,
                    "{text} plain"
                );
            }
            let via_float = text.parse::<f64>().map(|v| {
                let mut out = Vec::new();
                push_f64(&mut out, v);
                String::from_utf8(out).unwrap_or_default()
            });
            assert_eq!(via_float.as_deref(), Ok(want), "{text} via f64");
        }
        for plain in [
            "22",
            "22.50",
            "-0",
            "0",
            "-0.000",
            "0.0001",
            "123456789012345",
            "100.5",
            "0.1",
            "-273.15",
            "0.000123456789012345",
            "123456789012345.000",
            "12345678901234.50",
        ] {
            assert!(PlainNumber::of(&token(plain)).is_some(), "{plain}");
        }
        for not_plain in [
            "0e5",
            "0.00001",
            "1e16",
            "1234567890123456",
            "1.5e-7",
            "0.0001234567890123456",
            "1234567890123456.0",
            "12345678901234.56",
            "-1234567890123456",
        ] {
            assert!(PlainNumber::of(&token(not_plain)).is_none(), "{not_plain}");
        }
        for long in [
            "1234567890123456",
            "0.1234567890123456",
            "1e301",
            "1e-301",
            "1e400",
            "1e00001",
        ] {
            assert_eq!(Decimal::from_json_number(long), None, "{long}");
        }
    }

    #[test]
    fn decimals_match_the_standard_formatter() {
        let mut cases = vec![0, 1, 9, 10, 99, 100, 12_345_678, 99_999_999, 100_000_000];
        cases.extend([1_714_566_645_000_000_001, u64::MAX, u64::MAX - 1]);
        cases.extend((0..20).map(|p| 10u64.pow(p)));
        cases.extend((1..20).map(|p| 10u64.pow(p) - 1));
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            cases.push(state >> (state % 64));
        }
        for v in cases {
            let mut out = b"x".to_vec();
            let mut room = Room::reserve(&mut out, 20);
            room.decimal(v);
            drop(room);
            assert_eq!(out, format!("x{v}").as_bytes(), "{v}");
        }
    }

    #[test]
    fn lp_keys_escape_comma_equals_space_only() {
        let mut out = Vec::new();
        push_lp_key(&mut out, "a,b=c d\"é".as_bytes());
        assert_eq!(out, "a\\,b\\=c\\ d\"é".as_bytes());
    }

    #[test]
    fn json_strings_escape_like_python() {
        let mut out = Vec::new();
        push_json_str(
            &mut out,
            "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j\u{7f}é😀",
        );
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj\u{7f}é😀\""
        );
    }

    #[test]
    fn a_line_has_measurement_tags_fields_and_timestamp() {
        let mut out = Vec::new();
        let mut line = Line::start(&mut out, "telemetry");
        line.tag("device_id", "d 1");
        line.tag("site_id", "s,1");
        line.float(b"t=x", 22.0);
        line.bool(b"on", true);
        line.uint(b"seq", 7);
        line.finish(-5i64);
        assert_eq!(
            out,
            b"telemetry,device_id=d\\ 1,site_id=s\\,1 t\\=x=22.0,on=true,seq=7i -5\n"
        );
        for (ts, text) in [
            (i128::MIN, "-170141183460469231731687303715884105728"),
            (-i128::from(u64::MAX), "-18446744073709551615"),
            (0, "0"),
        ] {
            let mut out = Vec::new();
            Line::start(&mut out, "m").finish(ts);
            assert_eq!(out, format!("m {text}\n").as_bytes());
        }
    }
}
