//! The core's JSON reader and the parsers built on it, on arbitrary bytes: nothing panics, and
//! the reader calls a text one valid JSON value exactly when serde_json does (both accept lone
//! surrogate escapes; compared below 100 brackets, as their depth limits differ).
#![no_main]

use _core::json::Reader;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fuzz_target!(|data: &[u8]| {
    let _ = _core::parse::parse_batch(data, 1_700_000_000_000_000_000, 1024);
    let _ = _core::shelly::parse_shelly(data, 1_714_566_645, 1000);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut r = Reader::new(text);
    let ours = r.skip_value().is_ok() && r.end().is_ok();
    if text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() < 100 {
        let serde = serde_json::from_str::<IgnoredAny>(text).is_ok();
        assert_eq!(ours, serde, "validity differs on {text:?}");
    }
});
