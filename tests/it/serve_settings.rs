//! `speedrelay serve`'s own settings against the real binary: where each
//! comes from (flag > environment variable > config file > default),
//! `--threads`, SIGINT, and the `ports:` range of relay.yaml at the API.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// `speedrelay serve` with none of the SPEEDRELAY_* variables of the
/// environment the tests run in, and RUST_LOG=info.
fn serve() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.arg("serve").env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SPEEDRELAY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A config directory whose global.yaml sets the API address, the token
/// and the data directory.
fn config_with_global(root: &Path, api: u16, data: &Path, token: &str) -> PathBuf {
    let config = loopback_config(root, 50);
    std::fs::write(
        config.join("global.yaml"),
        format!(
            "storage: {{avro_path: \"{}\"}}\napi: {{listen: \"{}\", token: \"{token}\"}}\n",
            data.display(),
            loopback(api)
        ),
    )
    .unwrap();
    config
}

/// The status of GET /api/v1/channels with `token` (or none).
fn channels_status(api: SocketAddr, token: Option<&str>) -> u16 {
    let auth: Vec<(String, String)> = token
        .map(|t| vec![("Authorization".into(), format!("Bearer {t}"))])
        .unwrap_or_default();
    http(api, "GET", "/api/v1/channels", &auth, None).0
}

fn registry_in(data: &Path) -> bool {
    speedrelay::engine::registry_path(data).unwrap().is_file()
}

/// api.listen, api.token and storage.avro_path of global.yaml take
/// effect; SPEEDRELAY_API, SPEEDRELAY_API_TOKEN and SPEEDRELAY_DATA_DIR
/// override them; --api and --data-dir override the environment; and
/// --config overrides SPEEDRELAY_CONFIG.
#[test]
fn flags_beat_the_environment_which_beats_the_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let (file_data, env_data, flag_data) = (
        dir.path().join("file-data"),
        dir.path().join("env-data"),
        dir.path().join("flag-data"),
    );
    let (file_api, env_api, flag_api) = (free_port(), free_port(), free_port());
    let config = config_with_global(dir.path(), file_api, &file_data, "file-token");

    // The files alone.
    let mut cmd = serve();
    cmd.arg("--config").arg(&config);
    let relay = spawn_relay_command(cmd);
    assert_eq!(relay.api, loopback(file_api).parse().unwrap());
    assert_eq!(channels_status(relay.api, None), 401);
    assert_eq!(channels_status(relay.api, Some("file-token")), 200);
    assert!(registry_in(&file_data));
    relay.stop();

    // The environment over the files.
    let env = [
        ("SPEEDRELAY_API", loopback(env_api)),
        ("SPEEDRELAY_API_TOKEN", "env-token".to_string()),
        ("SPEEDRELAY_DATA_DIR", env_data.display().to_string()),
    ];
    let mut cmd = serve();
    cmd.arg("--config").arg(&config).envs(env.clone());
    let relay = spawn_relay_command(cmd);
    assert_eq!(relay.api, loopback(env_api).parse().unwrap());
    assert_eq!(channels_status(relay.api, Some("file-token")), 401);
    assert_eq!(channels_status(relay.api, Some("env-token")), 200);
    assert!(registry_in(&env_data));
    relay.stop();

    // Flags over the environment; SPEEDRELAY_CONFIG names a directory
    // that does not exist, so only --config can have been read.
    let mut cmd = serve();
    cmd.arg("--config")
        .arg(&config)
        .args(["--api", &loopback(flag_api), "--data-dir"])
        .arg(&flag_data)
        .envs(env)
        .env("SPEEDRELAY_CONFIG", dir.path().join("nowhere"));
    let relay = spawn_relay_command(cmd);
    assert_eq!(relay.api, loopback(flag_api).parse().unwrap());
    assert_eq!(channels_status(relay.api, Some("env-token")), 200);
    assert!(registry_in(&flag_data));
    relay.stop();

    // SPEEDRELAY_CONFIG alone is read.
    let mut cmd = serve();
    cmd.env("SPEEDRELAY_CONFIG", &config)
        .args(["--api", "127.0.0.1:0"]);
    let relay = spawn_relay_command(cmd);
    assert_eq!(channels_status(relay.api, Some("file-token")), 200);
    relay.stop();
}

/// `--threads 1` (a current-thread runtime) relays; 0 is refused, from the
/// flag and from SPEEDRELAY_THREADS, and the flag wins over the variable.
#[test]
fn threads_one_relays_and_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let data = dir.path().join("data");
    for (flag, env) in [(Some("0"), None), (None, Some("0"))] {
        let mut cmd = serve();
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data);
        if let Some(n) = flag {
            cmd.args(["--threads", n]);
        }
        if let Some(n) = env {
            cmd.env("SPEEDRELAY_THREADS", n);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--threads must be at least 1"), "{err}");
    }
    assert!(!registry_in(&data), "nothing was started");

    let mut cmd = serve();
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", "127.0.0.1:0", "--threads", "1"])
        .env("SPEEDRELAY_THREADS", "0");
    let relay = spawn_relay_command(cmd);
    let (dest, d) = receiver();
    let port = free_port();
    let outputs = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    assert_eq!(register_example(relay.api, "one", port, outputs).0, 201);
    let records = example_records(100);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    relay.stop();
    assert_eq!(archived_datums(&data, "one", EXAMPLE_SCHEMA), records);
}

/// SIGINT (Ctrl-C) stops the relay as SIGTERM does: exit 0, every record
/// received before it in a closed, complete file.
#[test]
fn sigint_flushes_every_archive_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // Bounds never reached: only the stop writes the block.
    let config = loopback_config(dir.path(), 3_600_000);
    let data = dir.path().join("data");
    let mut relay = spawn_relay(&config, &data, &[]);
    let port = free_port();
    assert_eq!(register_example(relay.api, "ctrlc", port, json!({})).0, 201);
    let records = example_records(300);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    wait_for(
        "every record counted",
        std::time::Duration::from_secs(20),
        || get_channel(relay.api, "ctrlc")["stats"]["packets"] == 300,
    );
    assert!(
        archive_files(&data, "ctrlc").is_empty(),
        "nothing written yet"
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(relay.pid(), libc::SIGINT) };
    let status = relay.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        relay
            .log_text()
            .contains("stopping: flushing every archive")
    );
    let files = archive_files(&data, "ctrlc");
    assert_eq!(files.len(), 1);
    assert!(speedrelay::verify::scan(&files[0]).unwrap().is_healthy());
    assert_eq!(archived_datums(&data, "ctrlc", EXAMPLE_SCHEMA), records);
}

/// `ports:` of relay.yaml bounds what registrations may use.
#[test]
fn the_ports_range_of_relay_yaml_bounds_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let port = free_port();
    let mut yaml = std::fs::read_to_string(config.join("relay.yaml")).unwrap();
    yaml.push_str(&format!("ports: {{start: {port}, end: {port}}}\n"));
    std::fs::write(config.join("relay.yaml"), yaml).unwrap();
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let outside = if port > 1024 { port - 1 } else { port + 1 };
    let (status, answer) = register_example(relay.api, "out", outside, json!({}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "port", "{answer}");
    let (status, answer) = register_example(relay.api, "in", port, json!({}));
    assert_eq!(status, 201, "{answer}");
    let (_, list) = http(relay.api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(list["channels"].as_array().unwrap().len(), 1);
    relay.stop();
}

/// rotation and retention set in a channel's `config` in relay.yaml: a
/// threshold of 0 keeps one file; size rotation with a quota keeps the
/// channel's files under the quota, the newest kept.
#[test]
fn rotation_and_retention_from_a_channels_config_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let (one, many) = (free_port(), free_port());
    let yaml = std::fs::read_to_string(config.join("relay.yaml"))
        .unwrap()
        .replace(
            "channels: []\n",
            &format!(
                "channels:\n\
                 - {{name: one, port: {one}, schema: example.avsc, \
                     config: {{rotation: {{mode: size, threshold: 0}}}}}}\n\
                 - {{name: many, port: {many}, schema: example.avsc, \
                     config: {{rotation: {{mode: size, threshold: 1}}, \
                               retention: {{mode: quota, value: 3000}}}}}}\n"
            ),
        );
    std::fs::write(config.join("relay.yaml"), yaml).unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let tx = sender();
    let bytes = |name: &str| {
        get_channel(relay.api, name)["stats"]["archive_bytes"]
            .as_u64()
            .unwrap()
    };
    for (i, r) in example_records(8).iter().enumerate() {
        for (name, port) in [("one", one), ("many", many)] {
            let before = bytes(name);
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
            wait_for(
                &format!("block {i} of {name}"),
                std::time::Duration::from_secs(20),
                || bytes(name) > before,
            );
        }
    }
    let one_files = archive_files(&data, "one");
    assert_eq!(one_files.len(), 1, "threshold 0: no rotation");
    assert_eq!(speedrelay::verify::scan(&one_files[0]).unwrap().blocks, 8);
    assert_eq!(
        get_channel(relay.api, "many")["stats"]["archive_files"],
        8,
        "a file per block"
    );
    let kept = archive_files(&data, "many");
    let total: u64 = kept
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        kept.len() < 8 && total <= 3000,
        "{} files, {total} bytes",
        kept.len()
    );
    relay.stop();
    let last = archived_datums(&data, "many", EXAMPLE_SCHEMA);
    assert_eq!(last.last(), example_records(8).last(), "the newest is kept");
}
