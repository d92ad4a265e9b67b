//! The real binary on good and bad configurations: `check-config` reports
//! every violation with its path and says so by its exit status, and `serve`
//! refuses the same configuration before starting anything.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

const AVRO: &str = r#"{"type":"record","name":"r","fields":[{"name":"x","type":"double"}]}"#;

/// The binary run to completion with RUST_LOG=warn.
fn speedrelay(args: &[&std::ffi::OsStr]) -> Output {
    run_to_end(args, &[("RUST_LOG", "warn")])
}

fn check_config(path: &Path) -> Output {
    speedrelay(&["check-config".as_ref(), path.as_os_str()])
}

/// A config directory laid out as SpeedData's (`config/agents/*.avsc`,
/// schema paths written from the repository root), with one problem of
/// each kind in relay.yaml.
fn bad_config(root: &Path) -> PathBuf {
    let config = root.join("config");
    std::fs::create_dir_all(config.join("agents")).unwrap();
    std::fs::write(config.join("agents/good.avsc"), AVRO).unwrap();
    std::fs::write(config.join("agents/plain.avsc"), r#"{"type": "recordd"}"#).unwrap();
    std::fs::write(
        config.join("relay.yaml"),
        r#"channels:
  - name: "alpha"
    port: 26000
    schema: "config/agents/good.avsc"
  - name: "beta"
    port: "abc"
    schema: "config/agents/good.avsc"
  - name: "a/b"
    port: 26002
    schema: "config/agents/good.avsc"
  - name: "alpha"
    port: 26003
    schema: "config/agents/good.avsc"
  - name: "gamma"
    port: 26004
    schema: "config/agents/missing.avsc"
  - name: "delta"
    port: 26005
    schema: "config/agents/plain.avsc"

decimation:
  enabled: true
  factor: 0
  algorithm: "median"

decimashun: 3
"#,
    )
    .unwrap();
    config
}

/// What `bad_config` must be reported for: the JSON pointer, and a piece of
/// the message.
const EXPECTED: [(&str, &str); 8] = [
    ("/channels/1/port", r#""abc" is not of type "integer""#),
    ("/channels/2/name", r#""a/b" is not a channel name"#),
    ("/channels/3/name", r#"duplicate channel name "alpha""#),
    ("/channels/4/schema", "config/agents/missing.avsc not found"),
    ("/channels/5/schema", "not an Avro schema"),
    ("/decimashun", r#"unknown key; did you mean "decimation"?"#),
    ("/decimation/algorithm", r#""median" is not one of"#),
    ("/decimation/factor", "0 is less than the minimum of 1"),
];

/// Each expected violation on its own line, as `FILE: POINTER: message`,
/// in document order, and nothing else.
fn assert_reports_every_violation(report: &str, relay_yaml: &Path) {
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), EXPECTED.len(), "{report}");
    for (line, (pointer, message)) in lines.iter().zip(EXPECTED) {
        let prefix = format!("{}: {pointer}: ", relay_yaml.display());
        assert!(
            line.starts_with(&prefix) && line.contains(message),
            "expected {prefix}…{message}…, got {line}\nin\n{report}"
        );
    }
}

#[test]
fn shipped_config_is_valid() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}: ok (1 channel)\n", config.display())
    );
}

#[test]
fn one_yaml_file_holding_everything_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.avsc"), AVRO).unwrap();
    let file = dir.path().join("speedrelay.yaml");
    std::fs::write(
        &file,
        "channels:\n  - {name: a, port: 26000, schema: s.avsc}\n  - {name: b, port: 26001, schema: s.avsc, config: {decimation: 2}}\nports: {start: 26000, end: 27000}\nmulticast:\n  full_rate: {address: 239.1.1.1, port: 6000, interface: 127.0.0.1}\nstorage: {avro_path: ./data}\napi: {listen: \"127.0.0.1:8080\"}\n",
    )
    .unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        format!("{}: ok (2 channels)\n", file.display())
    );
}

#[test]
fn every_problem_is_printed_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = bad_config(dir.path());
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_reports_every_violation(&stdout(&out), &config.join("relay.yaml"));
}

#[test]
fn problems_in_both_files_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.yaml"), "rotation: {mode: weekly}\n").unwrap();
    std::fs::write(
        dir.path().join("global.yaml"),
        "multicast:\n  full_rate: {address: 239.1.1.1, port: 70000}\n",
    )
    .unwrap();
    let out = check_config(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    let relay = dir.path().join("relay.yaml");
    let global = dir.path().join("global.yaml");
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            format!(
                "{}: /rotation/mode: \"weekly\" is not one of \"time\", \"size\"",
                relay.display()
            ),
            format!(
                "{}: /multicast/full_rate/port: 70000 is greater than the maximum of 65535",
                global.display()
            ),
        ]
    );
}

#[test]
fn a_yaml_syntax_error_says_where() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.yaml"),
        "channels:\n  - name: a\n    port: 1\n   schema: x.avsc\n",
    )
    .unwrap();
    let out = check_config(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(
        report.starts_with(&dir.path().join("relay.yaml").display().to_string())
            && report.contains("line 4"),
        "{report}"
    );
}

#[test]
fn an_unreadable_path_is_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.yaml");
    let out = check_config(&missing);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(
        err.contains("cannot read") && err.contains("nowhere.yaml"),
        "{err}"
    );

    // A directory without relay.yaml names the file it looked for.
    let out = check_config(dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("relay.yaml"), "{}", stderr(&out));
}

#[test]
fn serve_refuses_the_same_config_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = bad_config(dir.path());
    let data = dir.path().join("data");
    let out = speedrelay(&[
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nothing was started"), "{err}");
    let report: String = err
        .lines()
        .filter(|l| l.starts_with(&config.display().to_string()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_reports_every_violation(&report, &config.join("relay.yaml"));
    assert!(!data.exists(), "no data directory was created");
}

/// The `cluster` section is part of the checked schema in every build:
/// a good one passes, each bad key is reported with its path.
#[test]
fn cluster_section_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "channels: []\ncluster:\n  nats: [nats://127.0.0.1:4222, nats://127.0.0.2:4222]\n  node: relay-a\n  bucket: speedrelay\n  credentials: nats.credentials\n",
    )
    .unwrap();
    let out = check_config(&good);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "channels: []\ncluster:\n  nats: []\n  node: \"no spaces\"\n  password: secret\n",
    )
    .unwrap();
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    for pointer in ["/cluster/nats", "/cluster/node", "/cluster/password"] {
        assert!(
            report.contains(pointer),
            "{pointer} not reported:\n{report}"
        );
    }
}
