//! Any bytes: parsing and peeking never panic, and agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = kmsplug_core::format::parse(data).is_ok();
    let peeked = kmsplug_core::peek(data).is_ok();
    // peek reads only the header, so it may accept what a full parse refuses; never the reverse
    assert!(!parsed || peeked, "parse accepted what peek refused");
});
