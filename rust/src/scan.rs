//! Byte scanning eight bytes at a time in a `u64` (SWAR): where the core looks for a few
//! special bytes in mostly plain text.
//!
//! Each test sets the high bit of every byte lane that matches. A lane can also be set
//! falsely, but only above a true match (borrows run upwards), so the lowest set lane is
//! always exact — which is all `find` uses.

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

/// Lanes at or above 0x80.
#[inline(always)]
pub fn high(w: u64) -> u64 {
    w & HIGHS
}

/// Index of the first byte at or after `i` that `lanes` (per word) or `byte` (per byte, for
/// text shorter than a word) flags; `b.len()` when none.
#[inline(always)]
pub fn find(
    b: &[u8],
    mut i: usize,
    lanes: impl Fn(u64) -> u64,
    byte: impl Fn(u8) -> bool,
) -> usize {
    let len = b.len();
    if len < 8 {
        while let Some(&c) = b.get(i) {
            if byte(c) {
                return i;
            }
            i += 1;
        }
        return len.max(i);
    }
    while i + 8 <= len {
        let hits = lanes(word(b, i));
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
        let hits = lanes(word(b, last) >> ((i - last) * 8));
        if hits != 0 {
            return (i + (hits.trailing_zeros() / 8) as usize).min(len);
        }
    }
    len.max(i)
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(chunk) = b.get(at..at + 8) {
        w.copy_from_slice(chunk);
    }
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!(find(&b, start, lanes, byte), want, "{b:?} from {start}");
            }
        }
    }
}
