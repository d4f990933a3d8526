//! Eight bytes at a time in a `u64`: the core's word loads and compares, its byte scans
//! (SWAR), and the hashes of what it reads. The bit tricks live here and nowhere else.
//!
//! Each lane test sets the high bit of every byte lane that matches. A lane can also be set
//! falsely, but only above a true match (borrows run upwards), so the lowest set lane is
//! always exact — which is all `find` uses.

use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

use foldhash::fast::{FixedState, FoldHasher, RandomState};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Lanes equal to `c`.
#[inline(always)]
pub fn eq(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Lanes below `n` (`n <= 128`).
#[inline(always)]
pub fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// Lanes holding a byte in `lo..=hi` (`hi < 0x80`), exact in every lane: the high bits are
/// set aside before the adds, so no carry crosses a lane.
#[inline(always)]
pub fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
    let low = w & !HIGHS;
    let from_lo = low + ONES * u64::from(0x80 - lo);
    let past_hi = low + ONES * u64::from(0x80 - hi - 1);
    from_lo & !past_hi & !w & HIGHS
}

/// Lanes that are not ASCII digits, exact in every lane.
#[inline(always)]
fn non_digits(w: u64) -> u64 {
    !in_range(w, b'0', b'9') & HIGHS
}

/// Lanes at or above 0x80.
#[inline(always)]
pub fn high(w: u64) -> u64 {
    w & HIGHS
}

/// Index of the first byte at or after `i` that `lanes` flags; `b.len()` when none. Text
/// shorter than a word is tested as one zero-padded word, without a branch per byte.
#[inline(always)]
pub fn find(b: &[u8], mut i: usize, lanes: impl Fn(u64) -> u64) -> usize {
    let len = b.len();
    if len < 8 {
        let rest = b.get(i..).unwrap_or_default();
        // Lanes past the end hold padding: masked off, and a hit there flags nothing below.
        let hits = lanes(load_short(rest)) & ((1u64 << (8 * rest.len())) - 1);
        return if hits != 0 {
            i + (hits.trailing_zeros() / 8) as usize
        } else {
            len.max(i)
        };
    }
    while i + 8 <= len {
        let hits = lanes(load(b, i).unwrap_or(0));
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i < len {
        // The last word overlaps bytes before `i`; shift them out rather than mask their
        // lanes, since a hit there could flag the lane above it. The zero bytes shifted in sit
        // above the real ones, so they cannot disturb them; a hit among them is past the end.
        let last = len - 8;
        let hits = lanes(load(b, last).unwrap_or(0) >> ((i - last) * 8));
        if hits != 0 {
            return (i + (hits.trailing_zeros() / 8) as usize).min(len);
        }
    }
    len.max(i)
}

/// Index of the first byte at or after `i` that `stops` flags, 16 bytes at a time: `stops`
/// takes a block as its two little-endian words and returns one bit per flagged byte (lowest
/// bit: first byte). `Err(j)`: none in `i..j`, and fewer than 16 bytes remain from `j` (for
/// `find` to finish). Most string values and keys end within one block, where the word loop
/// takes two or three.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn find_blocks(b: &[u8], mut i: usize, stops: impl Fn(u64, u64) -> u32) -> Result<usize, usize> {
    loop {
        match find_in_block(b, i, &stops) {
            Some(Err(past)) => i = past,
            Some(found) => return found,
            None => return Err(i),
        }
    }
}

/// One step of `find_blocks`: `Ok` with the first flagged byte of the 16 from `i`, `Err` with
/// the index past them when none is flagged, `None` when fewer than 16 remain.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn find_in_block(
    b: &[u8],
    i: usize,
    stops: impl Fn(u64, u64) -> u32,
) -> Option<Result<usize, usize>> {
    // One range test for the block; the words are taken from within it.
    let block = b.get(i..i.wrapping_add(16))?;
    let (lo, hi) = (load(block, 0)?, load(block, 8)?);
    Some(match stops(lo, hi) {
        0 => Err(i + 16),
        mask => Ok(i + mask.trailing_zeros() as usize),
    })
}

/// `find_blocks` for the bytes that end a JSON string's plain run: `"`, `\\` and control
/// characters (below 0x20).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn find_string_stop(b: &[u8], i: usize) -> Result<usize, usize> {
    find_blocks(b, i, string_stops)
}

/// `find_string_stop` for one block only: `Err(j)` with `j` past the block when it holds no
/// stop, or `i` when fewer than 16 bytes remain. Most ids and names end within it, found
/// without the set-up of a longer scan.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn find_string_stop_in_block(b: &[u8], i: usize) -> Result<usize, usize> {
    find_in_block(b, i, string_stops).unwrap_or(Err(i))
}

/// Without SSE2 no block is taken.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn find_string_stop_in_block(_b: &[u8], i: usize) -> Result<usize, usize> {
    Err(i)
}

/// Index of the first `"`, `\\` or control character at or after `i`, or `b.len()`: for the
/// long runs of a blob, where 64 bytes a step with AVX2 take half the instructions of 16.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub fn find_string_stop_long(b: &[u8], mut i: usize) -> usize {
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above (the answer is cached).
        match unsafe { find_string_stop_avx2(b, i) } {
            Ok(j) => return j,
            Err(j) => i = j,
        }
    }
    find_string_stop(b, i).unwrap_or_else(|j| find(b, j, string_stop_lanes))
}

/// `find_string_stop_long` on a CPU without SSE2: a word at a time.
#[cfg(not(target_arch = "x86_64"))]
pub fn find_string_stop_long(b: &[u8], i: usize) -> usize {
    find(b, i, string_stop_lanes)
}

/// Lanes that end a JSON string's plain run (`"`, `\\`, control characters), for `find`.
#[inline(always)]
pub fn string_stop_lanes(w: u64) -> u64 {
    eq(w, b'"') | eq(w, b'\\') | below(w, 0x20)
}

/// `find_string_stop` 64 bytes a step: `Err(j)` when fewer than 64 bytes remain from `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn find_string_stop_avx2(b: &[u8], mut i: usize) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_testz_si256,
    };
    let stops = |v: __m256i| {
        _mm256_or_si256(
            _mm256_or_si256(
                _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8)),
                _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8)),
            ),
            // Unsigned `v <= 0x1f`: the minimum is `v` itself.
            _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v),
        )
    };
    while let Some(chunk) = b.get(i..i.wrapping_add(64)) {
        // SAFETY: both 32-byte loads read within `chunk`, which holds 64 bytes.
        let (lo, hi) = unsafe {
            let p = chunk.as_ptr();
            (
                stops(_mm256_loadu_si256(p.cast())),
                stops(_mm256_loadu_si256(p.add(32).cast())),
            )
        };
        let any = _mm256_or_si256(lo, hi);
        if _mm256_testz_si256(any, any) == 0 {
            let mask = u64::from(_mm256_movemask_epi8(lo) as u32)
                | u64::from(_mm256_movemask_epi8(hi) as u32) << 32;
            return Ok(i + mask.trailing_zeros() as usize);
        }
        i += 64;
    }
    Err(i)
}

/// Without SSE2 no block is taken: `find` does it all.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn find_string_stop(_b: &[u8], i: usize) -> Result<usize, usize> {
    Err(i)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn string_stops(lo: u64, hi: u64) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128};
    // SAFETY: SSE2 is part of the x86-64 baseline (compiled for x86-64 only); the intrinsics
    // work on registers only.
    unsafe {
        let v = block_of(lo, hi);
        let stops = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(v, splat(b'"')),
                _mm_cmpeq_epi8(v, splat(b'\\')),
            ),
            // Unsigned `v <= 0x1f`: the minimum is `v` itself.
            _mm_cmpeq_epi8(_mm_min_epu8(v, splat(0x1f)), v),
        );
        _mm_movemask_epi8(stops) as u32
    }
}

/// One bit per ASCII digit among the 16 bytes of `b` from `at` (lowest bit: byte `at`), and
/// one per `0`; `None` when fewer remain. A number token mostly fits in one block, whose digit
/// runs are then counted with bit operations instead of a scan per part.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn digit_bits(b: &[u8], at: usize) -> Option<(u32, u32)> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_setzero_si128, _mm_sub_epi8,
    };
    let block = b.get(at..at.wrapping_add(16))?;
    let (lo, hi) = (load(block, 0)?, load(block, 8)?);
    // SAFETY: SSE2 is part of the x86-64 baseline (compiled for x86-64 only); the intrinsics
    // work on registers only.
    unsafe {
        // A digit is a byte whose distance above `0`, unsigned, is at most 9.
        let d = _mm_sub_epi8(block_of(lo, hi), splat(b'0'));
        let digits = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(d, splat(9)), d)) as u32;
        let zeros = _mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128())) as u32;
        Some((digits, zeros))
    }
}

/// Without SSE2 no block is taken: the caller scans the token.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn digit_bits(_b: &[u8], _at: usize) -> Option<(u32, u32)> {
    None
}

/// The 16 bytes of `b` from `at` as bits (lowest bit: byte `at`): `=` or `,`, and `"` or
/// `\\`; `None` when fewer remain. A line protocol field set without quotes or backslashes is then
/// split at its `=` and `,` by bit operations instead of a scan per name and per value.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn field_marks(b: &[u8], at: usize) -> Option<(u32, u32)> {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128};
    let block = b.get(at..at.wrapping_add(16))?;
    let (lo, hi) = (load(block, 0)?, load(block, 8)?);
    // SAFETY: SSE2 is part of the x86-64 baseline (compiled for x86-64 only); the intrinsics
    // work on registers only.
    unsafe {
        let v = block_of(lo, hi);
        let either = |a, b| _mm_or_si128(_mm_cmpeq_epi8(v, splat(a)), _mm_cmpeq_epi8(v, splat(b)));
        Some((
            _mm_movemask_epi8(either(b'=', b',')) as u32,
            _mm_movemask_epi8(either(b'"', b'\\')) as u32,
        ))
    }
}

/// Without SSE2 no block is taken: the caller scans the fields.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn field_marks(_b: &[u8], _at: usize) -> Option<(u32, u32)> {
    None
}

/// The 16 bytes of two little-endian words (`lo` first) in an SSE2 register; the compiler
/// fuses the two word loads into one unaligned 16-byte load.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_of(lo: u64, hi: u64) -> std::arch::x86_64::__m128i {
    std::arch::x86_64::_mm_set_epi64x(hi as i64, lo as i64)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn splat(c: u8) -> std::arch::x86_64::__m128i {
    std::arch::x86_64::_mm_set1_epi8(c as i8)
}

/// Index of the first byte at or after `i` that is not an ASCII digit (or `b.len()`), a word
/// at a time: a number's parts mostly have under 8 digits, a count that varies at random, so a
/// byte loop's exit is often mispredicted.
#[inline(always)]
pub fn skip_digits(b: &[u8], mut i: usize) -> usize {
    while let Some(w) = load(b, i) {
        let stops = non_digits(w);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The 8 bytes of `b` from `at` as a little-endian word; `None` when fewer remain.
#[inline(always)]
pub fn load(b: &[u8], at: usize) -> Option<u64> {
    // One range test (`at <= end <= len`, the end wrapping past `at` when out of range); a
    // `get(at..)` then `first_chunk` tests twice and merges the tests in flag arithmetic.
    let w: &[u8; 8] = b.get(at..at.wrapping_add(8))?.try_into().ok()?;
    Some(u64::from_le_bytes(*w))
}

/// The bytes of `b` (fewer than 8) as a little-endian word, zero-padded: two overlapping
/// loads by length class instead of a branch per byte.
#[inline(always)]
pub fn load_short(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n < 8, "load_short takes fewer than 8 bytes");
    if let (Some(lo), Some(hi)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        // Bytes both loads hold land in the same lane, so the OR keeps them as they are.
        return u64::from(u32::from_le_bytes(*lo))
            | u64::from(u32::from_le_bytes(*hi)) << (8 * (n - 4));
    }
    match (b.first(), b.get(n / 2), b.last()) {
        (Some(&a), Some(&m), Some(&z)) => {
            u64::from(a) | u64::from(m) << (8 * (n / 2)) | u64::from(z) << (8 * (n - 1))
        }
        _ => 0,
    }
}

/// The last 8 bytes of `b` as a little-endian word; `None` when it is shorter.
#[inline(always)]
pub fn last(b: &[u8]) -> Option<u64> {
    b.last_chunk().map(|w| u64::from_le_bytes(*w))
}

/// Up to the first 8 bytes of `b` as a big-endian word, zero-padded: words order as their
/// bytes do. Built in a register: a byte copy into an array stalls the load that follows.
#[inline(always)]
pub fn head(b: &[u8]) -> u64 {
    match b.first_chunk::<8>() {
        Some(w) => u64::from_be_bytes(*w),
        None => load_short(b).swap_bytes(),
    }
}

/// `head` and `last` of the `len` bytes of `b` from `at`, for up to 16 of them (the tail of a
/// shorter one: its zero-padded head, little-endian), from two loads within one range test
/// whatever the length: names of a message vary in length at random, and `head`'s branches
/// on it would often be mispredicted. `None` when `len` is over 16 or the 8 bytes before `at`
/// or the 16 from it are not all within `b`.
#[inline(always)]
pub fn head_and_last(b: &[u8], at: usize, len: usize) -> Option<(u64, u64)> {
    let block: &[u8; 24] = b
        .get(at.wrapping_sub(8)..at.wrapping_add(16))?
        .try_into()
        .ok()?;
    if len > 16 {
        return None;
    }
    let word = |from: usize| load(block, from).expect("len <= 16: within the block");
    let kept = len.min(8);
    let first = word(8) & HEAD_BYTES[kept];
    // The 8 bytes that end the text, those before it shifted out (all 8 when it is empty):
    // a shift rather than a choice between two words, which the compiler makes a branch.
    let tail = (u128::from(word(len)) >> (8 * (8 - kept))) as u64;
    Some((first.swap_bytes(), tail))
}

/// Per length 0 to 8, the lanes of a word that hold a text of that length.
const HEAD_BYTES: [u64; 9] = {
    let mut masks = [u64::MAX; 9];
    let mut n = 0;
    while n < 8 {
        masks[n] = (1 << (8 * n)) - 1;
        n += 1;
    }
    masks
};

/// `a == b`, for 8 to 16 bytes in two overlapping word compares rather than a memcmp call.
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        return load(a, 0) == load(b, 0) && last(a) == last(b);
    }
    a == b
}

/// foldhash of `parts` in order, from `seed`. Seeds fixed, for tables of one request's ids:
/// a flood of colliding ids would only slow the request that sends them.
#[inline(always)]
pub fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = FixedState::with_seed(seed).build_hasher();
    for part in parts {
        h.write(part);
    }
    h.finish()
}

/// A foldhash hasher with seeds drawn at random once per process, for hashes a client must
/// not be able to aim collisions at (a line's shape: a collision with a verified one would
/// let a conflicting field type through). Every call hashes alike within the process.
#[inline(always)]
pub fn keyed() -> FoldHasher<'static> {
    static STATE: LazyLock<RandomState> = LazyLock::new(RandomState::default);
    STATE.build_hasher()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_range_flags_exactly_the_bytes_in_range() {
        for (lo, hi) in [(b'a', b'z'), (b'_', b'_'), (0, 0), (0x7f, 0x7f), (0, 0x7f)] {
            for c in 0..=255u8 {
                for (at, around) in [(0, 0u8), (3, lo), (7, hi ^ 1), (5, 0xff)] {
                    let w = u64::from_le_bytes([around; 8]) & !(0xff << (8 * at))
                        | u64::from(c) << (8 * at);
                    let want = (0..8).fold(0u64, |m, k| {
                        let byte = (w >> (8 * k)) as u8;
                        m | u64::from((lo..=hi).contains(&byte)) << (8 * k + 7)
                    });
                    assert_eq!(in_range(w, lo, hi), want, "{lo} {hi} {c} at {at}");
                }
            }
        }
    }

    #[test]
    fn non_digits_flags_exactly_the_bytes_that_are_not_digits() {
        for c in 0..=255u8 {
            for at in 0..8 {
                let w =
                    u64::from_le_bytes([b'5'; 8]) & !(0xff << (8 * at)) | u64::from(c) << (8 * at);
                let want = if c.is_ascii_digit() {
                    0
                } else {
                    0x80 << (8 * at)
                };
                assert_eq!(non_digits(w), want, "{c} at {at}");
            }
        }
    }

    #[test]
    fn digit_bits_flags_exactly_the_digits_of_a_block() {
        let bytes: Vec<u8> = (0..=255u8).chain(b"0123456789".iter().copied()).collect();
        for at in 0..bytes.len() {
            let want = bytes.get(at..at + 16).map(|block| {
                let bits = |is: fn(&u8) -> bool| {
                    block
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| is(c))
                        .fold(0u32, |m, (k, _)| m | 1 << k)
                };
                (bits(u8::is_ascii_digit), bits(|&c| c == b'0'))
            });
            if cfg!(target_arch = "x86_64") {
                assert_eq!(digit_bits(&bytes, at), want, "{at}");
            }
        }
    }

    #[test]
    fn same_bytes_is_slice_equality() {
        let texts: Vec<Vec<u8>> = (0..=20)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n).map(|i| b'a' + i as u8).collect();
                let mut variants = vec![base.clone()];
                for at in 0..n {
                    let mut v = base.clone();
                    v[at] = b'Z';
                    variants.push(v);
                }
                variants
            })
            .collect();
        for a in &texts {
            for b in &texts {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn short_loads_and_heads_hold_the_bytes_in_order() {
        for n in 0..=12usize {
            let b: Vec<u8> = (0..n).map(|i| 0xa0 + i as u8).collect();
            let want = b
                .iter()
                .take(8)
                .enumerate()
                .fold(0u64, |p, (i, &c)| p | u64::from(c) << (56 - 8 * i));
            assert_eq!(head(&b), want, "{n}");
            if n < 8 {
                assert_eq!(load_short(&b), want.swap_bytes(), "{n}");
            }
        }
    }

    #[test]
    fn head_and_last_are_head_and_last_of_the_bytes() {
        let b: Vec<u8> = (0..40).map(|i| 0xa0 + i as u8).collect();
        for at in 0..b.len() {
            for len in 0..=b.len() - at {
                let text = &b[at..at + len];
                let want = (head(text), last(text).unwrap_or(head(text).swap_bytes()));
                let fits = at >= 8 && at + 16 <= b.len() && len <= 16;
                let got = head_and_last(&b, at, len);
                assert_eq!(got, fits.then_some(want), "{at} {len}");
            }
        }
    }

    #[test]
    fn find_string_stop_agrees_with_a_byte_loop() {
        let stop = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        let alphabet = [b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'Z'];
        for len in 0..70usize {
            for special in 0..=len {
                for &c in &alphabet {
                    let mut b: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    if special < len {
                        b[special] = c;
                    }
                    for start in 0..=len {
                        let want = (start..len).find(|&i| stop(b[i]));
                        match find_string_stop(&b, start) {
                            Ok(j) => assert_eq!(Some(j), want, "{b:?} from {start}"),
                            Err(j) => {
                                assert!(j >= start && j + 16 > len.max(j), "{b:?} {start} {j}");
                                assert!(want.is_none_or(|w| w >= j), "{b:?} from {start}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn find_string_stop_long_agrees_with_a_byte_loop() {
        let stop = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for len in [0usize, 1, 15, 16, 63, 64, 65, 127, 128, 200, 1000] {
            for special in (0..len).step_by(7).chain([len.saturating_sub(1), len]) {
                for c in [b'"', b'\\', 0x00, 0x1f, 0x20, 0x80, 0xff] {
                    let mut b = vec![b'x'; len];
                    if special < len {
                        b[special] = c;
                    }
                    for start in [0, 1, 3, len / 2, len] {
                        let start = start.min(len);
                        let want = (start..len).find(|&i| stop(b[i])).unwrap_or(len);
                        assert_eq!(
                            find_string_stop_long(&b, start),
                            want,
                            "{len} {special} {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn find_agrees_with_a_byte_loop() {
        let lanes = |w| eq(w, b'"') | eq(w, b'\\') | below(w, 0x20) | high(w);
        let byte = |c: u8| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c);
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff, b'Z', 0x5b,
        ];
        let mut state: u64 = 0x2545_f491;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    // Mostly plain bytes, sometimes a special one.
                    let pick = (next() % 32) as usize;
                    alphabet
                        .get(pick)
                        .copied()
                        .unwrap_or(b'a' + (pick % 26) as u8)
                })
                .collect();
            for start in 0..=len {
                let want = (start..len).find(|&i| byte(b[i])).unwrap_or(len);
                assert_eq!(find(&b, start, lanes), want, "{b:?} from {start}");
            }
        }
    }
}
