//! libFuzzer entry of the `verify` target; its body is `targets::verify` in
//! `fuzz/targets.rs`, which `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::verify(data));
