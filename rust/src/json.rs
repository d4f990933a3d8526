//! A strict JSON reader (RFC 8259) over validated UTF-8 text, built for one pass per body:
//! it validates while the caller walks the structure it cares about, skips the rest, hands out
//! strings and number tokens as borrowed slices, and knows each value's byte span.
//!
//! Accepts exactly what `serde_json` accepts (the tests hold it to that), except that nesting
//! deeper than `MAX_DEPTH` is an error everywhere, as in `serde_json::Value` parsing, and that
//! lone surrogate escapes are valid JSON (string *decoding* refuses them, see `Str::decode`).

use std::borrow::Cow;
use std::num::NonZeroUsize;

use crate::words;

/// Deepest nesting accepted: 127 arrays/objects open at once (`serde_json::Value` refuses 128).
pub const MAX_DEPTH: usize = 127;

/// A number token's `int_end` (never 0: the integer holds a digit) and `frac_end`, as
/// `Number` has them: two words, which a call returns in registers, not through memory.
type Parts = (NonZeroUsize, usize);

/// `Parts`, and for a token read from one block the bits of its digits other than `0`.
type BlockParts = (Parts, Option<u32>);

/// The text is not valid JSON (including too deep); which way does not matter to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

pub type Result<T> = std::result::Result<T, Invalid>;

/// A JSON string as it appears in the text, quotes removed, escapes (validated) kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'a> {
    pub raw: &'a str,
    pub escaped: bool,
}

impl<'a> Str<'a> {
    /// The string's value; `None` when it holds a lone surrogate escape.
    pub fn decode(&self) -> Option<Cow<'a, str>> {
        if self.escaped {
            unescape(self.raw).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(self.raw))
        }
    }

    /// Whether the string's value is exactly `s` (never true with a lone surrogate).
    pub fn is(&self, s: &str) -> bool {
        if self.escaped {
            unescape(self.raw).is_some_and(|v| v == s)
        } else {
            self.raw == s
        }
    }
}

/// A plain object key of 1 to 16 bytes as words, for `Reader::key_is`: its first 8 bytes
/// and its last 8 (all of it when shorter), little-endian and zero-padded, so a match needs no
/// memcmp call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWords {
    head: u64,
    /// The bytes of the first word `head` holds.
    mask: u64,
    tail: u64,
    len: usize,
}

impl KeyWords {
    /// From its words and length (1..=16), as described above.
    pub const fn new(head: u64, tail: u64, len: usize) -> KeyWords {
        let mask = if len >= 8 {
            u64::MAX
        } else {
            u64::MAX >> (64 - 8 * len)
        };
        KeyWords {
            head,
            mask,
            tail,
            len,
        }
    }

    /// The words of `raw`, key text without escapes, of 1 to 16 bytes.
    pub const fn plain(raw: &[u8]) -> KeyWords {
        let len = raw.len();
        assert!(len >= 1 && len <= 16, "keys of 1 to 16 bytes");
        let mut head = 0u64;
        let mut tail = 0u64;
        let mut i = 0;
        while i < 8 && i < len {
            head |= (raw[i] as u64) << (8 * i);
            i += 1;
        }
        let skip = len.saturating_sub(8);
        let mut j = skip;
        while j < len {
            tail |= (raw[j] as u64) << (8 * (j - skip));
            j += 1;
        }
        KeyWords::new(head, tail, len)
    }
}

/// Decodes validated escapes; `None` on a lone surrogate.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes();
        let simple = match b.get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b.get(i + 2..i + 6)?)?;
                let (c, used) = if (0xd800..0xdc00).contains(&hi) {
                    if b.get(i + 6..i + 8)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(b.get(i + 8..i + 12)?)?;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return None;
                    }
                    (0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00), 12)
                } else {
                    (hi, 6)
                };
                out.push(char::from_u32(c)?);
                rest = &rest[i + used..];
                continue;
            }
            _ => return None,
        };
        out.push(simple);
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(acc * 16 + u32::from(d))
    })
}

/// A cursor over JSON text. Containers opened with `begin_*` count towards the depth limit
/// exactly like those `skip_value` walks through.
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        Reader {
            text,
            pos: 0,
            depth: 0,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The text from byte `start` to the cursor.
    pub fn since(&self, start: usize) -> &'a str {
        self.text
            .get(start..self.pos)
            .expect("start is an earlier cursor position, on a char boundary")
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace and returns the next byte.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        // Compact JSON has no whitespace: one comparison (all whitespace is <= b' ').
        if let Some(&c) = b.get(self.pos) {
            if c > b' ' {
                return Some(c);
            }
        }
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Invalid),
        }
    }

    fn open(&mut self) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(Invalid);
        }
        self.depth += 1;
        self.pos += 1;
        Ok(())
    }

    /// At `{`: enters the object.
    pub fn begin_object(&mut self) -> Result<()> {
        if self.peek() != Some(b'{') {
            return Err(Invalid);
        }
        self.open()
    }

    /// The object's next key (and its `:`), or `None` after its closing `}`. `first` tells
    /// whether this is the call right after `begin_object`.
    #[inline(always)]
    pub fn next_key(&mut self, first: bool) -> Result<Option<Str<'a>>> {
        if !self.key_follows(first)? {
            return Ok(None);
        }
        self.key().map(Some)
    }

    /// Whether the object has another key (the cursor then at its `"`, past any `,`), or
    /// false after its closing `}`; `first` as for `next_key`.
    #[inline(always)]
    pub fn key_follows(&mut self, first: bool) -> Result<bool> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                if self.peek() != Some(b'"') {
                    return Err(Invalid);
                }
                Ok(true)
            }
            Some(b'"') if first => Ok(true),
            _ => Err(Invalid),
        }
    }

    /// After `key_follows`: the key and its `:`.
    #[inline(always)]
    pub fn key(&mut self) -> Result<Str<'a>> {
        let key = self.string_at_quote()?;
        self.expect(b':')?;
        Ok(key)
    }

    /// After `key_follows`: when the key is `k` written plainly and its `:` follows at once,
    /// moves past both. False (cursor unmoved) leaves the key to `key`. The bytes compared are
    /// those of a key read before without escapes, so a match is that same valid key.
    #[inline(always)]
    pub fn key_is(&mut self, k: &KeyWords) -> bool {
        let b = self.bytes();
        let at = self.pos + 1;
        let end = at + k.len;
        // The head first: a metric name other than the one at this place last time mostly
        // differs there, and is turned down before the other loads.
        let Some(head) = words::load(b, at) else {
            return false;
        };
        if head & k.mask != k.head {
            return false;
        }
        // The closing quote and the colon in one range test and one 2-byte compare.
        let Some(&[quote, colon]) = b.get(end..end + 2) else {
            return false;
        };
        if u16::from_le_bytes([quote, colon]) != u16::from_le_bytes(*b"\":") {
            return false;
        }
        // Keys of 9 to 16 bytes: the last 8 (of 8 or less, the head held them all).
        if k.len > 8 && b.get(..end).and_then(words::last) != Some(k.tail) {
            return false;
        }
        self.pos = end + 2;
        true
    }

    /// `words::head_and_last` of the `len` bytes of text from `at`.
    #[inline(always)]
    pub fn words_at(&self, at: usize, len: usize) -> Option<(u64, u64)> {
        words::head_and_last(self.bytes(), at, len)
    }

    /// At `[`: enters the array.
    pub fn begin_array(&mut self) -> Result<()> {
        if self.peek() != Some(b'[') {
            return Err(Invalid);
        }
        self.open()
    }

    /// Whether another element follows (consuming its `,`), or false after the closing `]`.
    #[inline]
    pub fn next_element(&mut self, first: bool) -> Result<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if first => Ok(true),
            _ => Err(Invalid),
        }
    }

    /// At `"`: the string, escapes validated.
    #[inline(always)]
    pub fn string(&mut self) -> Result<Str<'a>> {
        if self.peek() != Some(b'"') {
            return Err(Invalid);
        }
        self.string_at_quote()
    }

    /// `string` when the cursor is known to be at `"` (a `peek` saw it): no second look.
    #[inline(always)]
    pub fn string_at_quote(&mut self) -> Result<Str<'a>> {
        let b = self.bytes();
        let start = self.pos + 1;
        let mut escaped = false;
        // Ids, names and most values end within one block, timestamps and tokens within two:
        // found without `skip_plain`'s set-up for longer runs, which then goes on past the
        // blocks or after an escape.
        let mut i = words::find_string_stop_in_block(b, start)
            .or_else(|j| words::find_string_stop_in_block(b, j))
            .unwrap_or_else(|j| skip_plain(b, j));
        loop {
            match b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            hex4(b.get(i + 2..i + 6).ok_or(Invalid)?).ok_or(Invalid)?;
                            i += 6;
                        }
                        _ => return Err(Invalid),
                    }
                }
                _ => return Err(Invalid),
            }
            i = skip_plain(b, i);
        }
        self.pos = i + 1;
        debug_assert!(start <= i && i < b.len(), "the string lies within the text");
        // SAFETY: `start - 1` and `i` index quotes within the text (`b.get(i)` found one), so
        // `start <= i <= len` and both ends are on char boundaries (a quote is ASCII). A
        // checked slice tests both boundaries again: about 10 instructions per string.
        let raw = unsafe { self.text.get_unchecked(start..i) };
        Ok(Str { raw, escaped })
    }

    /// At a number, past any whitespace (a `peek` saw its first byte): its token,
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    #[inline(always)]
    pub fn number(&mut self) -> Result<Number<'a>> {
        self.number_digits().map(|(n, _)| n)
    }

    /// `number`, and for a token without exponent that ends within the 16 bytes from its start
    /// (most values) the bits of those bytes (lowest: its first) that are its digits other than
    /// `0`, counted along the way: enough to tell its shortest form without a scan.
    #[inline(always)]
    pub fn number_digits(&mut self) -> Result<(Number<'a>, Option<u32>)> {
        let start = self.pos;
        let ((int_end, frac_end), nonzero) = match self.number_in_block() {
            Some(parts) => parts?,
            None => (self.number_scanned()?, None),
        };
        debug_assert!(
            start < self.pos && self.pos <= self.text.len(),
            "a token was read"
        );
        // SAFETY: `start` was the cursor, on a char boundary, and the token read ends on an
        // ASCII digit within the text (or at its end), so the cursor is on one too; the token
        // holds a digit, so `start < pos <= len`. A checked slice tests both again, per value.
        let text = unsafe { self.text.get_unchecked(start..self.pos) };
        let n = Number {
            text,
            int_end: int_end.get(),
            frac_end,
        };
        Ok((n, nonzero))
    }

    /// `number`'s parts (`int_end`, `frac_end`) for a token without exponent that ends within
    /// the 16 bytes from the cursor (most values), counted from one block's digit bits, the
    /// cursor moved past it, and the bits of the token's digits other than `0`. `None` leaves
    /// it to `number_scanned`, cursor unmoved.
    #[inline(always)]
    fn number_in_block(&mut self) -> Option<Result<BlockParts>> {
        let b = self.bytes();
        let start = self.pos;
        let (digits, zeros) = words::digit_bits(b, start)?;
        let sign = usize::from(b.get(start) == Some(&b'-'));
        // The high half of `!digits` is all ones: every count below stops within the block.
        let int_end = sign + (!digits >> sign).trailing_zeros() as usize;
        let after_dot = int_end + 1;
        let dot = b.get(start + int_end) == Some(&b'.');
        // Values mix integers and decimals at random: the fraction is counted either way
        // (`after_dot` is at most 17) and taken or not without a branch.
        let frac_digits = (!digits >> after_dot).trailing_zeros() as usize;
        let frac_end = int_end + usize::from(dot) * (1 + frac_digits);
        if frac_end >= 16 || matches!(b.get(start + frac_end), Some(b'e' | b'E')) {
            return None;
        }
        // No digit, a leading zero with digits after it (no valid token goes on with a
        // digit), or a dot without digits: tested together, one branch.
        let leading_zero = (zeros >> sign & 1 != 0) & (int_end > sign + 1);
        let invalid = (int_end == sign) | leading_zero | (dot & (frac_digits == 0));
        let (false, Some(int_end)) = (invalid, NonZeroUsize::new(int_end)) else {
            return Some(Err(Invalid));
        };
        self.pos = start + frac_end;
        // `frac_end < 16`: the shift keeps the token's bits only.
        let nonzero = digits & !zeros & !(u32::MAX << frac_end);
        Some(Ok(((int_end, frac_end), Some(nonzero))))
    }

    /// `number`'s parts a part at a time, for any token, the cursor moved past it.
    fn number_scanned(&mut self) -> Result<Parts> {
        let b = self.bytes();
        let start = self.pos;
        let digits = start + usize::from(b.get(start) == Some(&b'-'));
        let mut i = words::skip_digits(b, digits);
        // A leading zero with digits after it: no valid token goes on with a digit, so the
        // text is invalid whatever follows.
        if i == digits || (b.get(digits) == Some(&b'0') && i > digits + 1) {
            return Err(Invalid);
        }
        // The integer holds a digit.
        let int_end = NonZeroUsize::new(i - start).ok_or(Invalid)?;
        // Metric values mix integers and decimals at random: the fraction is scanned either
        // way and taken or not without a branch, which would often be mispredicted.
        let dot = b.get(i) == Some(&b'.');
        let after = words::skip_digits(b, i + 1);
        if dot && after == i + 1 {
            return Err(Invalid);
        }
        i = if dot { after } else { i };
        let frac_end = i - start;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let after = words::skip_digits(b, i);
            if after == i {
                return Err(Invalid);
            }
            i = after;
        }
        self.pos = i;
        Ok((int_end, frac_end))
    }

    /// At `t`, `f` or `n`, past any whitespace (a `peek` saw it): the literal `true`, `false`
    /// or `null`.
    #[inline]
    pub fn literal(&mut self) -> Result<Literal> {
        let b = self.bytes();
        if let Some(w) = words::load(b, self.pos) {
            // Told from one word and a table row picked by the first byte, without a test per
            // literal: a bool metric's value is true or false at random, and a chain of tests
            // would often be mispredicted.
            let (text, mask, len, literal) = LITERALS[usize::from(w as u8 >> 3 & 3)];
            if w & mask != text {
                return Err(Invalid);
            }
            self.pos += len;
            return Ok(literal);
        }
        let rest = b.get(self.pos..).expect("the cursor is within the text");
        let (lit, len) = if rest.starts_with(b"true") {
            (Literal::True, 4)
        } else if rest.starts_with(b"false") {
            (Literal::False, 5)
        } else if rest.starts_with(b"null") {
            (Literal::Null, 4)
        } else {
            return Err(Invalid);
        };
        self.pos += len;
        Ok(lit)
    }

    /// Reads one value whatever it is, validating it; returns its text.
    pub fn skip_value(&mut self) -> Result<&'a str> {
        let start = match self.peek() {
            Some(_) => self.pos,
            None => return Err(Invalid),
        };
        let base = self.depth;
        // Bit `d` set: the container at depth `d` is an object (depth <= 127 fits in a u128).
        let mut objects: u128 = 0;
        loop {
            match self.peek().ok_or(Invalid)? {
                b'{' => {
                    self.open()?;
                    objects |= 1 << self.depth;
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        self.depth -= 1;
                    } else {
                        self.string()?;
                        self.expect(b':')?;
                        continue;
                    }
                }
                b'[' => {
                    self.open()?;
                    objects &= !(1 << self.depth);
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        self.depth -= 1;
                    } else {
                        continue;
                    }
                }
                b'"' => {
                    self.string_at_quote()?;
                }
                b't' | b'f' | b'n' => {
                    self.literal()?;
                }
                _ => {
                    self.number()?;
                }
            }
            // A value ended: close containers until one continues.
            loop {
                if self.depth == base {
                    return Ok(self.since(start));
                }
                let in_object = objects & (1 << self.depth) != 0;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if in_object {
                            self.string()?;
                            self.expect(b':')?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        self.depth -= 1;
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        self.depth -= 1;
                    }
                    _ => return Err(Invalid),
                }
            }
        }
    }
}

/// Index of the first `"`, `\\` or control character at or after `i` (or the end).
#[inline(always)]
fn skip_plain(b: &[u8], i: usize) -> usize {
    // Ids, keys and values end within a few words; past those, the string is a blob.
    let near = b.len().min(i + SHORT_STRING);
    let head = b.get(..near).expect("near is at most the length");
    let j = words::find_string_stop(head, i)
        .unwrap_or_else(|rest| words::find(head, rest, words::string_stop_lanes));
    if j < near || near == b.len() {
        return j;
    }
    words::find_string_stop_long(b, near)
}

/// Bytes of a string scanned a word at a time before `find_string_stop_long` takes over.
const SHORT_STRING: usize = 64;

/// A number token and where its parts end (byte offsets into `text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number<'a> {
    pub text: &'a str,
    /// End of the sign and integer digits.
    pub int_end: usize,
    /// End of the `.` and fraction digits (`int_end` when there are none); the exponent, if
    /// any, follows.
    pub frac_end: usize,
}

impl Number<'_> {
    /// No fraction and no exponent.
    pub fn is_integer(&self) -> bool {
        self.int_end == self.text.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    True,
    False,
    Null,
}

/// The literals by bits 3 and 4 of their first byte (`f` 0, `n` 1, `t` 2): each one's text as
/// a little-endian word, the bytes of a word it fills, its length and itself. Row 3 matches
/// nothing (no masked byte reaches 0x100).
const LITERALS: [(u64, u64, usize, Literal); 4] = [
    (
        u64::from_le_bytes(*b"false\0\0\0"),
        0xff_ffff_ffff,
        5,
        Literal::False,
    ),
    (
        u32::from_le_bytes(*b"null") as u64,
        0xffff_ffff,
        4,
        Literal::Null,
    ),
    (
        u32::from_le_bytes(*b"true") as u64,
        0xffff_ffff,
        4,
        Literal::True,
    ),
    (0x100, 0xff, 0, Literal::Null),
];

/// Whether `text` is one valid JSON value (surrounded by whitespace at most).
#[cfg(test)]
pub fn is_valid(text: &str) -> bool {
    let mut r = Reader::new(text);
    r.skip_value().is_ok() && r.end().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    /// serde_json is the oracle for everything but depth.
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[test]
    fn serde_json_skims_any_depth_but_parses_127_levels() {
        let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        let deep = nested(100_000);
        assert!(serde_json::from_str::<&serde_json::value::RawValue>(&deep).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
    }

    #[test]
    fn serde_json_skim_accepts_lone_surrogates_and_string_decode_refuses_them() {
        for s in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
        ] {
            assert!(
                serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok(),
                "{s}"
            );
            assert!(serde_json::from_str::<String>(s).is_err(), "{s}");
        }
        assert_eq!(
            serde_json::from_str::<String>(r#""\ud83d\ude00""#)
                .ok()
                .as_deref(),
            Some("😀")
        );
    }

    #[test]
    fn accepts_and_refuses_like_serde_json() {
        let cases = [
            "0",
            "-0",
            "1",
            "-1",
            "10",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e5",
            "1E+5",
            "1e-5",
            "1e",
            "1e+",
            "-",
            "+1",
            "1.5e3.2",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "True",
            // Literals with a word of text from them on, told from that word.
            "[true,false,null,1]",
            "[tru,1,1,1,1]",
            "[truee,1,1,1]",
            "[fals,1,1,1,1]",
            "[falsee,1,1,1]",
            "[nul,1,1,1,1]",
            "[nulll,1,1,1]",
            "[True,1,1,1,1]",
            "[f\u{e9}lse,1,1,1]",
            "\"\"",
            "\"a\"",
            "\"\\u00e9\"",
            "\"\\u00E9\"",
            "\"\\uD800\"",
            "\"\\ud800\\udc00\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\x\"",
            "\"\\'\"",
            "\"\\/\"",
            "\"a\u{1}\"",
            "\"a\u{7f}\"",
            "\"\t\"",
            "\"a",
            "[]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,2]",
            "{}",
            "{\"a\":1}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":}",
            "{1:1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[{\"b\":null}],\"c\":{}}",
            " \t\n\r[ 1 , { } ] \n",
            "\u{feff}1",
            "1 2",
            "[1]]",
            "[[1]",
            "{\"a\":1}}",
            "",
            " ",
            "\u{a0}1",
            "[1\u{0}]",
            "\"\\u0000\"",
            "[-]",
            "[1e99999]",
            "-0.0e-0",
            "[\"\\",
            "\"\\u",
        ];
        for text in cases {
            assert_eq!(is_valid(text), serde_accepts(text), "{text:?}");
        }
    }

    #[test]
    fn mutations_of_a_body_are_judged_like_serde_json() {
        let seeds = [
            r#"{"messages":[{"tenant_id":"t","device_id":"d\u00e9\n","x":[1,-2.5e3,true,false,null,{"y":"z"}],"metrics":{"a":1.0,"b":-0}}],"k":"\ud83d\ude00"}"#,
            r#" [ {"src":" p ","timestamp":1700000000,"params":{"switch:0":{"apower":1E+2,"voltage":0.5e-3}}} , "é\"\\\/\b\f\r\t" ] "#,
            r#"{"a":[[[[{}]]]],"b":{"c":{"d":[0,-0.0,12345678901234567890,1e-400]}},"e":"\u0041\uD800"}"#,
        ];
        let alphabet: &[u8] = b"{}[]\",:\\ 0123456789.eE+-tfnrulsabx\t\n\x01";
        let mut state: u64 = 0x1234_5678;
        let mut rnd = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for i in 0..30_000 {
            let mut b = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + rnd(3) {
                let at = rnd(b.len());
                match rnd(3) {
                    0 => b[at] = alphabet[rnd(alphabet.len())],
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, alphabet[rnd(alphabet.len())]),
                }
            }
            let Ok(text) = std::str::from_utf8(&b) else {
                continue;
            };
            assert_eq!(is_valid(text), serde_accepts(text), "{text}");
        }
    }

    #[test]
    fn depth_127_is_valid_and_128_is_not() {
        let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(is_valid(&nested(127)));
        assert!(!is_valid(&nested(128)));
        let objects = |d: usize| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d));
        assert!(is_valid(&objects(127)));
        assert!(!is_valid(&objects(128)));
        assert!(serde_json::from_str::<serde_json::Value>(&objects(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&objects(128)).is_err());
        // Containers entered with begin_* count too.
        let mut r = Reader::new("[[[]]]");
        assert!(r.begin_array().is_ok());
        assert_eq!(r.next_element(true), Ok(true));
        assert_eq!(r.skip_value(), Ok("[[]]"));
        assert_eq!(r.next_element(false), Ok(false));
        assert!(r.end().is_ok());
    }

    #[test]
    fn long_strings_end_and_fail_like_short_ones() {
        for len in [0, 7, 8, 31, 32, 33, 40, 100, 5000] {
            let plain = "x".repeat(len);
            for (text, escaped) in [
                (format!("\"{plain}\""), false),
                (format!("\"{plain}\\n{plain}\""), true),
                (format!("\"{plain}\\u00e9\""), true),
            ] {
                let s = Reader::new(&text).string();
                assert_eq!(
                    s.map(|s| (s.raw.len() + 2, s.escaped)),
                    Ok((text.len(), escaped))
                );
            }
            for bad in [
                format!("\"{plain}\u{1}\""),
                format!("\"{plain}\u{1f}{plain}\""),
                format!("\"{plain}\\x\""),
                format!("\"{plain}"),
            ] {
                assert_eq!(Reader::new(&bad).string(), Err(Invalid), "{len}");
                assert!(!serde_accepts(&bad));
            }
        }
    }

    #[test]
    fn strings_decode_like_serde_json_and_refuse_lone_surrogates() {
        let cases = [
            r#""plain""#,
            r#""a\"b\\c\/d\be\ff\ng\rh\ti""#,
            r#""\u00e9\u20AC\ud83d\ude00""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""x\ud800""#,
            r#""\ud800x""#,
        ];
        for text in cases {
            let s = Reader::new(text).string().ok().and_then(|s| s.decode());
            let oracle = serde_json::from_str::<String>(text).ok();
            assert_eq!(s.as_deref(), oracle.as_deref(), "{text}");
        }
        let s = Reader::new(r#""tenant\u005fid""#).string();
        assert!(s.is_ok_and(|s| s.escaped && s.is("tenant_id")));
    }

    #[test]
    fn numbers_in_a_block_read_as_scanned() {
        let tokens = [
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "01",
            "-01",
            "1.",
            "1.5",
            "-0.25",
            "1e5",
            "1.5E-3",
            "123456789012345",
            "1234567890123456",
            "12345678.1234567",
            "1234567.12345678",
            "-",
            "-.5",
            "0.",
            "00.1",
            "9.999999",
            "-12.5e",
        ];
        let mut in_block = 0;
        for token in tokens {
            let tails = ["", ",", "}", "]", ".", "x", "e1", ",\"a\":1}", "0"];
            // Without room for a whole block after the token, and with it.
            for (tail, pad) in tails
                .iter()
                .flat_map(|t| [(t, ""), (t, "                ")])
            {
                let text = format!("{token}{tail}{pad}");
                let mut fast = Reader::new(&text);
                let mut scanned = Reader::new(&text);
                let got = fast
                    .number_in_block()
                    .map(|n| (n.map(|(parts, _)| parts), fast.pos()));
                let want = (scanned.number_scanned(), scanned.pos());
                if let Some(got) = got {
                    in_block += 1;
                    // An invalid token fails either way; where the cursor is then is moot.
                    match want.0 {
                        Ok(_) => assert_eq!(got, want, "{text:?}"),
                        Err(_) => assert!(got.0.is_err(), "{text:?}"),
                    }
                }
                let parts = |n: Number<'_>| (n.int_end, n.frac_end, n.text.len());
                assert_eq!(
                    Reader::new(&text).number().map(parts),
                    want.0
                        .map(|(int_end, frac_end)| (int_end.get(), frac_end, want.1)),
                    "{text:?}"
                );
            }
        }
        assert!(in_block > 100, "{in_block}");
    }

    #[test]
    fn values_report_their_text() {
        let mut r = Reader::new(r#" { "a" : [ 1 , {"b":2} ] , "c":-1.5e3 } "#);
        assert!(r.begin_object().is_ok());
        assert_eq!(r.next_key(true).map(|k| k.map(|k| k.raw)), Ok(Some("a")));
        assert!(r.peek().is_some());
        assert_eq!(r.skip_value(), Ok(r#"[ 1 , {"b":2} ]"#));
        assert_eq!(r.next_key(false).map(|k| k.map(|k| k.raw)), Ok(Some("c")));
        assert!(r.peek().is_some());
        assert_eq!(
            r.number().map(|n| (n.text, n.int_end, n.frac_end)),
            Ok(("-1.5e3", 2, 4))
        );
        assert_eq!(r.next_key(false), Ok(None));
        assert!(r.end().is_ok());
    }
}
