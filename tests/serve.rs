//! The real binary: `speedrelay serve` on a config directory relays, and
//! SIGTERM leaves every received record in a closed, complete archive.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_relays_from_config_and_flushes_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("agents")).unwrap();
    std::fs::write(config.join("agents/example.avsc"), EXAMPLE_SCHEMA).unwrap();
    let (dest, d) = receiver();
    let port = free_udp_port();
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

    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    // The log line is the event that says the port is bound.
    while !line.contains("channel started") {
        line.clear();
        assert!(Instant::now() < deadline, "no 'channel started' line");
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "relay exited early"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    let records = example_records(1000);
    let tx = sender();
    for chunk in records.chunks(100) {
        for r in chunk {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        assert_eq!(recv_n(&dest, chunk.len()), chunk);
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
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

/// Starts `speedrelay serve` and returns once it logs that it is running.
fn start_serve(config: &std::path::Path, data: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    while !line.contains("speedrelay running") {
        line.clear();
        assert!(Instant::now() < deadline, "relay did not start");
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "relay exited early"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    child
}

fn stop(mut child: std::process::Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_second_relay_on_the_same_data_dir_is_refused_and_the_first_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("example.avsc"), EXAMPLE_SCHEMA).unwrap();
    let (dest, d) = receiver();
    let port = free_udp_port();
    std::fs::write(
        config.join("relay.yaml"),
        format!("channels:\n  - {{name: ex, port: {port}, schema: example.avsc}}\nsocket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\noutputs: {{full_rate: {{address: 127.0.0.1, port: {}}}}}\n", d.port),
    )
    .unwrap();
    let data = dir.path().join("data");
    let first = start_serve(&config, &data);
    let second = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", "127.0.0.1:0"])
        .output()
        .unwrap();
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
    stop(first);

    // Restarted, the channel is back from the registry and relaying, in a new file.
    let again = start_serve(&config, &data);
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    stop(again);
    assert_eq!(archive_files(&data, "ex").len(), 2);
    let mut twice = records.clone();
    twice.extend(records);
    assert_eq!(archived_datums(&data, "ex", EXAMPLE_SCHEMA), twice);
}
