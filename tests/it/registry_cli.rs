//! `speedrelay registry export|import` with the real binary: a registry
//! exported from one data directory and imported into another brings back
//! the same channels (and keeps the tombstones, so the seed does not bring
//! a deleted channel back); bad input changes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

fn speedrelay(args: &[&str], dirs: (&Path, &Path)) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(args)
        .arg("--config")
        .arg(dirs.0)
        .arg("--data-dir")
        .arg(dirs.1)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

/// A config that seeds channel `seeded` from relay.yaml, on loopback.
fn seeding_config(dir: &Path, port: u16) -> PathBuf {
    example_config(
        dir,
        &format!(
            "channels:\n  - {{name: seeded, port: {port}, schema: example.avsc}}\n\
         socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\n"
        ),
    )
}

/// Name → (port, config) of every channel the relay lists.
fn channels(api: std::net::SocketAddr) -> Vec<(String, u64, Value)> {
    let (status, body) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(status, 200, "{body}");
    let list = body
        .as_array()
        .or_else(|| body["channels"].as_array())
        .expect("a list of channels")
        .clone();
    list.iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["port"].as_u64().unwrap(),
                c["config"].clone(),
            )
        })
        .collect()
}

#[test]
fn export_then_import_into_a_new_data_directory_brings_back_the_same_relay() {
    let dir = TempDir::new().unwrap();
    let (seeded_port, a_port) = (free_port(), free_port());
    let config = seeding_config(dir.path(), seeded_port);
    let data = dir.path().join("data");

    let relay = spawn_relay(&config, &data, &[]);
    let (status, body) = register_example(
        relay.api,
        "a",
        a_port,
        json!({"decimation": {"enabled": true, "factor": 7}}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(relay.api, "DELETE", "/api/v1/channels/seeded", &[], None);
    assert!(status == 204 || status == 200, "{status} {body}");
    let before = channels(relay.api);
    assert_eq!(before.len(), 1, "{before:?}");

    // While it runs the registry is locked: a clear refusal.
    let out = speedrelay(&["registry", "export"], (&config, &data));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stop the relay first"),
        "{}",
        stderr(&out)
    );
    relay.stop();

    let file = dir.path().join("registry.json");
    let out = speedrelay(
        &["registry", "export", "--output", file.to_str().unwrap()],
        (&config, &data),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dump: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(dump["format"], "speedrelay-registry");
    assert_eq!(dump["channels"].as_array().unwrap().len(), 1);
    assert!(dump["deleted"]["seeded"].is_u64(), "{dump}");
    // Standard output gives the same document.
    let out = speedrelay(&["registry", "export"], (&config, &data));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), dump);

    let moved = dir.path().join("moved");
    let out = speedrelay(
        &["registry", "import", file.to_str().unwrap()],
        (&config, &moved),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported 1 channel(s) and 1 tombstone(s)"),
        "{}",
        stderr(&out)
    );

    // Same config, new data directory: the same channel, and the seed does
    // not bring back the one deleted through the API.
    let relay = spawn_relay(&config, &moved, &[]);
    assert_eq!(channels(relay.api), before);
    relay.stop();

    // Importing again clashes: refused, nothing changed.
    let out = speedrelay(
        &["registry", "import", file.to_str().unwrap()],
        (&config, &moved),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing was imported"),
        "{}",
        stderr(&out)
    );
    let out = speedrelay(&["registry", "export"], (&config, &moved));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), dump);
}

#[test]
fn bad_exports_are_refused_and_write_nothing() {
    let dir = TempDir::new().unwrap();
    let config = quick_empty_config(dir.path());
    let data = dir.path().join("data");
    let good = |channels: Value| json!({"format": "speedrelay-registry", "schema_version": 1, "channels": channels, "deleted": {}});
    let record = |name: &str, schema: &str, config: Value| {
        json!({"name": name, "port": 26001, "schema_json": schema, "schema_path": null,
               "config": config, "created_at": 1})
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not JSON", "{".into(), "not a registry export"),
        ("another document", r#"{"channels": []}"#.into(), "not a registry export"),
        (
            "another format",
            json!({"format": "x", "schema_version": 1, "channels": [], "deleted": {}}).to_string(),
            "format is 'x'",
        ),
        (
            "a newer speedrelay",
            json!({"format": "speedrelay-registry", "schema_version": 99, "channels": [], "deleted": {}}).to_string(),
            "newer speedrelay",
        ),
        (
            "a bad name",
            good(json!([record("-bad", EXAMPLE_SCHEMA, json!({}))])).to_string(),
            "channel '-bad'",
        ),
        (
            "a bad schema",
            good(json!([record("a", "{\"type\":\"nope\"}", json!({}))])).to_string(),
            "channel 'a'",
        ),
        (
            "bad settings",
            good(json!([record("a", EXAMPLE_SCHEMA, json!({"decimation": {"factor": "ten"}}))])).to_string(),
            "channel 'a'",
        ),
    ];
    for (what, text, expected) in cases {
        let file = dir.path().join("in.json");
        std::fs::write(&file, text).unwrap();
        let out = speedrelay(
            &["registry", "import", file.to_str().unwrap()],
            (&config, &data),
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        assert!(!data.exists(), "{what}: nothing may be written");
    }
    let out = speedrelay(
        &["registry", "import", "/nonexistent.json"],
        (&config, &data),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent.json"),
        "{}",
        stderr(&out)
    );
    let out = speedrelay(&["registry", "export"], (&config, &data));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no registry at"), "{}", stderr(&out));
    assert!(!data.exists(), "export creates nothing");
}
