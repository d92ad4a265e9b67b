//! Replays every committed fuzz input on a stable toolchain: each file of
//! `fuzz/corpus/TARGET/` (the seed corpora) and `fuzz/regressions/TARGET/`
//! (inputs that once crashed, one per finding) goes through the same target
//! body libFuzzer runs (`fuzz/targets.rs`), so a regression panics here.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::Path;

/// Every file under `fuzz/{corpus,regressions}/TARGET`, through TARGET's body.
fn replay(target: &str, run: targets::Target) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            // Notes (`*.md`) say what a regression input was.
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("corpus file readable");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panicked", file.display());
            count += 1;
        }
    }
    count
}

fn replay_target(name: &str) {
    let (_, run) = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("target listed in fuzz/targets.rs");
    let n = replay(name, *run);
    assert!(n > 0, "no committed corpus for fuzz target {name}");
}

#[test]
fn validate_corpus() {
    replay_target("validate");
}

#[test]
fn schema_corpus() {
    replay_target("schema");
}

#[test]
fn decimate_corpus() {
    replay_target("decimate");
}

#[test]
fn config_corpus() {
    replay_target("config");
}

#[test]
fn api_body_corpus() {
    replay_target("api_body");
}

#[test]
fn verify_corpus() {
    replay_target("verify");
}

/// A target added to fuzz/targets.rs gets a test here too.
#[test]
fn every_target_is_replayed() {
    let tested = [
        "validate", "schema", "decimate", "config", "api_body", "verify",
    ];
    for (name, _) in targets::TARGETS {
        assert!(tested.contains(name), "add a test replaying {name}");
    }
}
