//! The id rules: tenant ids, and the ids, site ids, tokens and metric names written into line
//! protocol. Exported to Python (`valid_tenant`, `valid_id`) so the shell applies the same rules.

use crate::words;

/// Longest id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest tenant id (ASCII only, so characters and bytes alike).
pub const MAX_TENANT_CHARS: usize = 64;
/// The tenant rule as a regular expression (OpenAPI `pattern`); `valid_tenant` applies it.
pub const TENANT_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

/// An id: 1..=128 bytes, no control character, no backslash.
pub fn valid_id(s: &str) -> bool {
    checked_id(s).is_some()
}

/// `Some(escape)` for a valid id, `escape` telling whether line protocol escapes any of it.
#[inline]
pub fn checked_id(s: &str) -> Option<bool> {
    checked_id_headed(s, words::head(s.as_bytes()))
}

/// `checked_id` of `s` whose first 8 bytes `head` holds, as `words::head` gives them: metric
/// names come with theirs at hand.
#[inline]
pub fn checked_id_headed(s: &str, head: u64) -> Option<bool> {
    let b = s.as_bytes();
    let first = head.swap_bytes();
    // Most ids and names are short plain ASCII: one or two word tests settle them.
    let lanes = match b.len() {
        0 => return None,
        n @ 1..8 => suspect(first) & (u64::MAX >> (64 - 8 * n)),
        8..=16 => suspect(first) | suspect(words::last(b).unwrap_or(0)),
        17..=MAX_ID_BYTES => return scan_id(b),
        _ => return None,
    };
    if lanes == 0 {
        Some(false)
    } else {
        scan_id(b)
    }
}

/// A tenant id: 1..=64 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_tenant(s: &str) -> bool {
    let b = s.as_bytes();
    // A word at a time, not a branch per byte whose exit depends on the id's length; the
    // last word overlaps the one before when the length is not a multiple of 8.
    match b.len() {
        n @ 1..8 => not_tenant(words::load_short(b)) & (u64::MAX >> (64 - 8 * n)) == 0,
        8..=MAX_TENANT_CHARS => {
            let word = |w: &[u8]| words::last(w).unwrap_or(0);
            b.chunks_exact(8).all(|w| not_tenant(word(w)) == 0) && not_tenant(word(b)) == 0
        }
        _ => false,
    }
}

/// The lanes of `w` that hold a byte no tenant id may hold.
#[inline(always)]
fn not_tenant(w: u64) -> u64 {
    let ok = words::in_range(w, b'a', b'z')
        | words::in_range(w, b'0', b'9')
        | words::in_range(w, b'_', b'_')
        | words::in_range(w, b'-', b'-');
    !ok & 0x8080_8080_8080_8080
}

/// Bytes that are, or may start, a character no id or name may hold, and the bytes line
/// protocol escapes.
static SUSPECT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[0x7f] = true;
    t[b'\\' as usize] = true;
    t[0xc2] = true;
    t[b',' as usize] = true;
    t[b'=' as usize] = true;
    t[b' ' as usize] = true;
    t
};

/// The lanes of `w` that hold a `SUSPECT` byte, or a byte of a character starting with one.
#[inline(always)]
fn suspect(w: u64) -> u64 {
    words::below(w, b' ' + 1)
        | words::eq(w, 0x7f)
        | words::eq(w, b'\\')
        | words::eq(w, b',')
        | words::eq(w, b'=')
        | words::high(w)
}

/// `None` when `b` holds U+0000–U+001F, U+007F–U+009F (UTF-8 `C2 80`–`C2 9F`) or a
/// backslash; else whether it holds `,` `=` or space, which line protocol escapes. One pass
/// serves validation and encoding.
fn scan_id(b: &[u8]) -> Option<bool> {
    // Plain ASCII runs are skipped a word at a time; from the first suspect byte on, exactly.
    let first = words::find(b, 0, suspect);
    let b = b
        .get(first..)
        .expect("words::find returns a position within the bytes");
    let mut escape = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            _ if !SUSPECT[usize::from(c)] => {}
            b',' | b'=' | b' ' => escape = true,
            0xc2 if !b.get(i + 1).is_some_and(|&n| (0x80..=0x9f).contains(&n)) => {}
            _ => return None,
        }
    }
    Some(escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_scanned_for_escapes_in_one_pass() {
        for (id, expected) in [
            ("dev-1", Some(false)),
            ("a long device id, 8+ bytes", Some(true)),
            ("k=v", Some(true)),
            ("x y", Some(true)),
            ("caf\u{e9} \u{2028}\u{a0}", Some(true)),
            ("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}", Some(false)),
            ("", None),
            ("a\\b", None),
            ("a,b\u{7f}", None),
            ("a long name, then \u{1}", None),
            ("\u{85}", None),
            ("a=\u{9f}", None),
        ] {
            assert_eq!(checked_id(id), expected, "{id:?}");
            assert_eq!(valid_id(id), expected.is_some(), "{id:?}");
        }
        assert_eq!(checked_id(&"n".repeat(129)), None);
    }

    #[test]
    fn short_ids_checked_by_words_agree_with_the_rule_at_every_place() {
        let rule = |s: &str| {
            let bad = |c: char| c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) || c == '\\';
            ((1..=MAX_ID_BYTES).contains(&s.len()) && !s.chars().any(bad))
                .then(|| s.contains([',', '=', ' ']))
        };
        for len in 1..=20 {
            for at in 0..len {
                for c in [
                    'a', ' ', ',', '=', '\\', '\u{0}', '\u{1f}', '!', '~', '\u{7f}', '\u{80}',
                    '\u{a0}', '\u{e9}',
                ] {
                    let mut s: String = "x".repeat(at);
                    s.push(c);
                    s.push_str(&"y".repeat(len - at - 1));
                    assert_eq!(checked_id(&s), rule(&s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn tenants_are_checked_byte_for_byte_whatever_their_length() {
        let rule = |b: &[u8]| {
            (1..=MAX_TENANT_CHARS).contains(&b.len())
                && b.iter()
                    .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        };
        for len in 1..=66 {
            for at in [0, len / 2, len - 1] {
                for c in 0..=255u8 {
                    let mut b = vec![b'k'; len];
                    b[at] = c;
                    // Bytes of other lanes next to the probe: a carry from one must not
                    // flag or clear its neighbour.
                    if at + 1 < len {
                        b[at + 1] = b'_';
                    }
                    let Ok(s) = std::str::from_utf8(&b) else {
                        assert!(!valid_tenant(&String::from_utf8_lossy(&b)));
                        continue;
                    };
                    assert_eq!(valid_tenant(s), rule(&b), "{b:?}");
                }
            }
        }
    }

    #[test]
    fn tenants_are_lowercase_ascii_words_of_up_to_64() {
        for (s, ok) in [
            ("acme", true),
            ("a-b_9", true),
            (&"a".repeat(64), true),
            (&"a".repeat(65), false),
            ("", false),
            ("Acme", false),
            ("ac me", false),
            ("\u{e9}", false),
        ] {
            assert_eq!(valid_tenant(s), ok, "{s:?}");
        }
        assert_eq!(
            TENANT_PATTERN,
            format!("^[a-z0-9_-]{{1,{MAX_TENANT_CHARS}}}$")
        );
    }
}
