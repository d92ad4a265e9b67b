//! The real binary: `speedrelay serve` on a config directory relays, and
//! SIGTERM leaves every received record in a closed, complete archive.

use crate::common;

use std::net::Ipv4Addr;
use std::process::Command;

use common::*;

#[test]
fn serve_relays_from_config_and_flushes_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("agents")).unwrap();
    std::fs::write(config.join("agents/example.avsc"), EXAMPLE_SCHEMA).unwrap();
    let (dest, d) = receiver();
    let port = free_port();
    std::fs::write(
        config.join("relay.yaml"),
        format!(
            "channels:\n  - name: example\n    port: {port}\n    schema: config/agents/example.avsc\n    config: {{socket: {{bind: 127.0.0.1}}}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 600000}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        config.join("global.yaml"),
        format!(
            "multicast:\n  full_rate: {{address: 127.0.0.1, port: {}}}\n",
            d.port
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    // Returns once the relay logs that it runs: every channel is bound.
    let relay = spawn_relay(&config, &data, &[]);

    let records = example_records(1000);
    let tx = sender();
    for chunk in records.chunks(100) {
        for r in chunk {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        assert_eq!(recv_n(&dest, chunk.len()), chunk);
    }
    relay.stop();
    assert_eq!(archived_datums(&data, "example", EXAMPLE_SCHEMA), records);
}

#[test]
fn serve_refuses_an_invalid_config_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.yaml"),
        "decimation: {factor: many}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["serve", "--config"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay.yaml") && err.contains("factor"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

#[test]
fn a_second_relay_on_the_same_data_dir_is_refused_and_the_first_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, d) = receiver();
    let port = free_port();
    let config = example_config(
        dir.path(),
        &format!(
            "channels:\n  - {{name: ex, port: {port}, schema: example.avsc}}\nsocket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\noutputs: {{full_rate: {{address: 127.0.0.1, port: {}}}}}\n",
            d.port
        ),
    );
    let data = dir.path().join("data");
    let first = spawn_relay(&config, &data, &[]);
    let second = serve_to_end(&config, &data, &[], &[]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("registry.redb") && err.contains("already open"),
        "{err}"
    );
    let records = example_records(100);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(
        recv_n(&dest, records.len()),
        records,
        "the first relay still relays"
    );
    first.stop();

    // Restarted, the channel is back from the registry and relaying, in a new file.
    let again = spawn_relay(&config, &data, &[]);
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    again.stop();
    assert_eq!(archive_files(&data, "ex").len(), 2);
    let mut twice = records.clone();
    twice.extend(records);
    assert_eq!(archived_datums(&data, "ex", EXAMPLE_SCHEMA), twice);
}

fn empty_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("relay.yaml"),
        "channels: []\nsocket: {bind: 127.0.0.1}\ndecimation: {enabled: false}\n",
    )
    .unwrap();
    config
}

#[test]
fn registered_over_http_relays_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    // A baseline channel, deleted through the API below.
    std::fs::write(config.join("example.avsc"), EXAMPLE_SCHEMA).unwrap();
    std::fs::write(
        config.join("relay.yaml"),
        format!(
            "channels:\n  - {{name: base, port: {}, schema: example.avsc}}\nsocket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\n",
            free_port()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (status, body) = http(api, "GET", "/api/v1/health", &[], None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, base) = http(api, "GET", "/api/v1/channels/base", &[], None);
    assert_eq!((status, base["status"].as_str()), (200, Some("active")));
    let (status, _) = http(api, "DELETE", "/api/v1/channels/base", &[], None);
    assert_eq!(status, 200);

    let (dest, d) = receiver();
    let port = free_port();
    let request = serde_json::json!({
        "name": "viahttp",
        "port": port,
        "schema": serde_json::from_str::<serde_json::Value>(EXAMPLE_SCHEMA).unwrap(),
        "config": {"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}, "decimation": 3}
    });
    let body = serde_json::to_vec(&request).unwrap();
    let (status, answer) = post_json(api, "/api/v1/channels", &body);
    assert_eq!(status, 201, "{answer}");
    // No pause between the 201 and the first datagram.
    let records = example_records(100);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    relay.stop();

    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (status, channel) = http(api, "GET", "/api/v1/channels/viahttp", &[], None);
    assert_eq!(status, 200);
    assert_eq!(channel["status"], "active");
    assert_eq!(channel["config"]["decimation"]["factor"], 3);
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(
        recv_n(&dest, records.len()),
        records,
        "relaying after the restart"
    );
    let (status, _) = http(api, "DELETE", "/api/v1/channels/viahttp", &[], None);
    assert_eq!(status, 200);
    relay.stop();
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (status, _) = http(api, "GET", "/api/v1/channels/viahttp", &[], None);
    assert_eq!(status, 404, "a deleted channel stays deleted");
    let (status, _) = http(api, "GET", "/api/v1/channels/base", &[], None);
    assert_eq!(
        status, 404,
        "a deleted baseline channel stays deleted though still in relay.yaml"
    );
    relay.stop();
}

#[test]
fn fifty_clients_register_at_once_and_fifty_race_for_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let post = |name: String, port: u16| {
        let schema = schema.clone();
        std::thread::spawn(move || {
            let body = serde_json::to_vec(
                &serde_json::json!({"name": name, "port": port, "schema": schema}),
            )
            .unwrap();
            post_json(api, "/api/v1/channels", &body).0
        })
    };
    let distinct: Vec<_> = (0..50)
        .map(|i| post(format!("c{i}"), free_port()))
        .collect();
    for t in distinct {
        assert_eq!(t.join().unwrap(), 201);
    }
    let contested = free_port();
    let racing: Vec<_> = (0..50)
        .map(|i| post(format!("race{i}"), contested))
        .collect();
    let statuses: Vec<u16> = racing.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 201 || s == 409),
        "{statuses:?}"
    );
    let (_, list) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(list["channels"].as_array().map(Vec::len), Some(51));
    relay.stop();
}

/// Start-up code is given back once the relay runs, also while another
/// relay of the same binary runs (its code pages are then shared): the
/// executable's resident pages drop, as the relay reports and as /proc
/// shows from outside, and both relays still register and relay
/// afterwards.
#[test]
fn start_up_code_pages_are_released_once_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let data = dir.path().join("data");
    let other = spawn_relay(&config, &dir.path().join("other"), &[]);
    let relay = spawn_relay(&config, &data, &[("RUST_LOG", "info,speedrelay=debug")]);
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("start-up code pages released"))
        .unwrap_or_else(|| panic!("no release line in the start-up log:\n{log}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (before, after) = (field("before_kib="), field("after_kib="));
    assert!(
        after * 4 < before * 3,
        "at least a quarter released: {before} KiB -> {after} KiB"
    );

    let exe = std::fs::read_link(format!("/proc/{}/exe", relay.pid())).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", relay.pid())).unwrap();
    let mut in_exe = false;
    let mut resident = 0u64;
    for l in smaps.lines() {
        if let Some(kib) = l.strip_prefix("Rss:") {
            if in_exe {
                resident += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        } else if l.contains('-') && l.split_whitespace().count() >= 5 {
            let f: Vec<&str> = l.split_whitespace().collect();
            in_exe =
                f.get(5).map(std::path::Path::new) == Some(exe.as_path()) && !f[1].contains('w');
        }
    }
    assert!(
        resident < before,
        "seen from outside, {resident} KiB resident stays under the {before} KiB before release"
    );

    // The released code is read back when needed: the relay still works.
    let (dest, d) = receiver();
    let port = free_port();
    let (status, body) = register_example(
        relay.api,
        "after",
        port,
        serde_json::json!({"outputs": {"full_rate": [{"address": "127.0.0.1", "port": d.port}]}}),
    );
    assert_eq!(status, 201, "{body}");
    let records = example_records(10);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    assert!(relay.terminate().success());
    // The other relay's code was shared, never taken from it.
    let port = free_port();
    let (status, body) = register_example(
        other.api,
        "other",
        port,
        serde_json::json!({"outputs": {"full_rate": [{"address": "127.0.0.1", "port": d.port}]}}),
    );
    assert_eq!(status, 201, "{body}");
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    assert!(other.terminate().success());
}

/// A build without the `cluster` feature refuses `--nats` with a clear
/// error instead of silently running alone.
#[cfg(not(feature = "cluster"))]
#[test]
fn nats_needs_a_build_with_the_cluster_feature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path(), 50);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--api", "127.0.0.1:0", "--nats", "nats://127.0.0.1:4222"])
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("without cluster support"), "{stderr}");
}
