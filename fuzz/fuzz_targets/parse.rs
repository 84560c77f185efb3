//! Any bytes through the parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = portcloak::wire::parse(data);
});
