//! libFuzzer entry of the `api_body` target; its body is `targets::api_body` in
//! `fuzz/targets.rs`, which `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::api_body(data));
