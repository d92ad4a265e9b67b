//! libFuzzer entry of the `schema` target; its body is `targets::schema` in
//! `fuzz/targets.rs`, which `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::schema(data));
