//! Security defaults of the real binary: the API on loopback unless told
//! otherwise, the token never in the log, nothing it creates open to other
//! users, and no request reaching outside the config and data directories.
//! (The token check itself, on every route, is in tests/it/api.rs.)

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn serve_cmd(config: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("SPEEDRELAY_API")
        .env_remove("SPEEDRELAY_API_TOKEN");
    cmd
}

#[test]
fn the_api_listens_on_loopback_port_8080_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay_command(serve_cmd(&config, &dir.path().join("data")));
    assert_eq!(
        relay.api,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        "{}",
        relay.log_text()
    );
    // Bound to loopback only: the listening socket's address says so.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|a| a.ends_with(":1F90"))
        .collect();
    assert_eq!(listening, ["0100007F:1F90"], "only 127.0.0.1:8080");
    assert!(relay.terminate().success());
}

#[test]
fn the_token_never_appears_in_the_log_even_at_trace_level() {
    let token = "tok-4f1c9b2e-never-log-me";
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let mut cmd = serve_cmd(&config, &dir.path().join("data"));
    cmd.args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .env("SPEEDRELAY_API_TOKEN", token);
    let relay = spawn_relay_command(cmd);
    let api = relay.api;
    let bearer = |t: &str| vec![("Authorization".to_string(), format!("Bearer {t}"))];
    let json_bearer = |t: &str| {
        let mut h = bearer(t);
        h.push(("Content-Type".into(), "application/json".into()));
        h
    };
    assert_eq!(http(api, "GET", "/api/v1/channels", &[], None).0, 401);
    assert_eq!(
        http(api, "GET", "/api/v1/channels", &bearer("wrong"), None).0,
        401
    );
    let near_miss = format!("{token}x");
    assert_eq!(
        http(api, "GET", "/api/v1/channels", &bearer(&near_miss), None).0,
        401
    );
    assert_eq!(http(api, "GET", "/api/v1/health", &[], None).0, 200);
    assert_eq!(
        http(api, "GET", "/api/v1/channels", &bearer(token), None).0,
        200
    );
    let schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let body = json!({"name": "t", "port": free_port(), "schema": schema}).to_string();
    let (status, answer) = http(
        api,
        "POST",
        "/api/v1/channels",
        &json_bearer(token),
        Some(body.as_bytes()),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, _) = http(
        api,
        "POST",
        "/api/v1/channels",
        &json_bearer(token),
        Some(b"{not json"),
    );
    assert_eq!(status, 400);
    let log_path = dir.path().join("log");
    assert!(relay.log_text().contains("speedrelay running"));
    let log = {
        let text = relay.log_text();
        assert!(relay.terminate().success());
        text
    };
    std::fs::write(&log_path, &log).unwrap();
    assert!(
        !log.contains(token),
        "the token is in the log ({})",
        log_path.display()
    );
    assert!(!log.contains("tok-4f1c9b2e"), "part of the token is logged");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn nothing_created_is_open_to_other_users_even_with_umask_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let mut cmd = serve_cmd(&config, &data);
    cmd.args(["--api", "127.0.0.1:0"]);
    let child_setup = || {
        // SAFETY: umask(2) has no preconditions.
        unsafe { libc::umask(0) };
        Ok(())
    };
    // SAFETY: umask(2) is async-signal-safe; nothing else runs in the child.
    unsafe { cmd.pre_exec(child_setup) };
    let relay = spawn_relay_command(cmd);
    let port = free_port();
    assert_eq!(register_example(relay.api, "perm", port, json!({})).0, 201);
    let tx = sender();
    for r in example_records(10) {
        tx.send_to(&r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while archive_files(&data, "perm").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no archive file");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(relay.terminate().success());
    assert_eq!(mode(&data), 0o750, "data directory");
    assert_eq!(
        mode(&data.join(".speedrelay")),
        0o750,
        "relay's own directory"
    );
    assert_eq!(
        mode(&speedrelay::engine::registry_path(&data).unwrap()),
        0o640,
        "registry"
    );
    assert_eq!(mode(&data.join("perm")), 0o750, "channel directory");
    for f in archive_files(&data, "perm") {
        assert_eq!(mode(&f), 0o640, "{}", f.display());
    }

    // A registry file that exists keeps the mode its owner gave it, through
    // a restart and a registry write.
    let registry = speedrelay::engine::registry_path(&data).unwrap();
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o600)).unwrap();
    let relay = spawn_relay(&config, &data, &[]);
    assert_eq!(
        register_example(relay.api, "later", free_port(), json!({})).0,
        201
    );
    assert!(relay.terminate().success());
    assert_eq!(
        mode(&registry),
        0o600,
        "an existing registry keeps its mode"
    );
}

#[test]
fn no_request_reaches_outside_the_config_and_data_directories() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    std::fs::write(dir.path().join("secret.avsc"), EXAMPLE_SCHEMA).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.avsc"), config.join("link.avsc")).unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay_command({
        let mut cmd = serve_cmd(&config, &data);
        cmd.args(["--api", "127.0.0.1:0"]);
        cmd
    });
    let api = relay.api;
    let post =
        |body: serde_json::Value| post_json(api, "/api/v1/channels", body.to_string().as_bytes());
    let schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    for name in [
        "..",
        ".",
        "../escape",
        "a/../../escape",
        "/tmp/escape",
        "a\\..\\b",
        "%2e%2e",
        "a\0b",
        "\u{2025}",
        "-rf",
        ".hidden",
    ] {
        let (status, body) = post(json!({"name": name, "port": free_port(), "schema": schema}));
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(body["field"], "name", "{name:?}");
    }
    for path in [
        "/etc/passwd",
        "../secret.avsc",
        "link.avsc",
        "./../secret.avsc",
        "example.avsc/../../secret.avsc",
        "",
        "/proc/self/environ",
    ] {
        let (status, body) = post(json!({"name": "ok", "port": free_port(), "schema": path}));
        assert_eq!(status, 400, "{path:?}: {body}");
        assert_eq!(body["field"], "schema", "{path:?}");
    }
    for target in [
        "/api/v1/channels/..%2F..%2Fsecret",
        "/api/v1/channels/../../secret/schema",
        "/api/v1/channels/%2e%2e/schema",
    ] {
        let (status, _) = http(api, "GET", target, &[], None);
        assert_eq!(status, 404, "{target}");
        let (status, _) = http(api, "DELETE", target, &[], None);
        assert!(status == 404 || status == 405, "{target}: {status}");
    }
    // A schema path inside the config directory works.
    let (status, body) =
        post(json!({"name": "inside", "port": free_port(), "schema": "example.avsc"}));
    assert_eq!(status, 201, "{body}");
    assert!(relay.terminate().success());
    // Nothing appeared beside the config and data directories, and the data
    // directory holds the registry and the one channel's directory only.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["config", "data", "secret.avsc"]);
    let mut inside: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    inside.sort();
    assert!(
        inside.iter().all(|n| n == ".speedrelay" || n == "inside"),
        "{inside:?}"
    );
}
