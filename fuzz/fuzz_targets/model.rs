#![no_main]

// See src/fuzz.rs for what this target feeds and what it must survive.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weightcast::fuzz::model(data);
});
