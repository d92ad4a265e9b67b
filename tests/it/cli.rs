//! `speedrelay channels` (the real binary) against a running relay (the
//! real binary): output, exit status, and server errors as one line.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `speedrelay channels --url URL ARGS…` with a clean environment plus `env`.
fn channels(api: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Output {
    let url = format!("http://{api}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.arg("channels")
        .args(["--url", &url])
        .args(args)
        .env_remove("SPEEDRELAY_API_TOKEN")
        .env_remove("SPEEDRELAY_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("client runs")
}

/// `speedrelay channels add NAME --port PORT --schema SCHEMA EXTRA…`.
fn add(api: SocketAddr, name: &str, port: u16, schema: &str, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut args = vec!["add", name, "--port", &port, "--schema", schema];
    args.extend_from_slice(extra);
    channels(api, &args, &[])
}

/// Asserts success and returns stdout.
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}, stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// Asserts exit status 1, nothing on stdout, and exactly one line on
/// stderr, which it returns.
fn one_line_failure(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("speedrelay: "), "{err}");
    err.trim_end().to_string()
}

/// The cells of the table row whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_running_relay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&quick_empty_config(dir.path()), &data, &[]);
    let api = relay.api;
    let example = repo_file("config/agents/example.avsc");
    let example = example.to_str().unwrap();

    // An empty relay.
    assert_eq!(
        ok(channels(api, &["list"], &[])),
        "no channels registered\n"
    );

    // add: every flag lands in the channel's settings.
    let port = free_port();
    let (full, full_dest) = receiver();
    let (_decimated, dec_dest) = receiver();
    let out = ok(add(
        api,
        "demo",
        port,
        example,
        &[
            "--decimation",
            "4",
            "--algorithm",
            "average",
            "--output",
            &format!("127.0.0.1:{}", full_dest.port),
            "--decimated-output",
            &format!("127.0.0.1:{}", dec_dest.port),
        ],
    ));
    assert_eq!(out, format!("channel demo listening on port {port}\n"));

    // get: the channel as JSON.
    let got: Value = serde_json::from_str(&ok(channels(api, &["get", "demo"], &[]))).unwrap();
    assert_eq!(got["name"], "demo");
    assert_eq!(got["port"], port);
    assert_eq!(got["status"], "active");
    let decimation = &got["config"]["decimation"];
    assert_eq!(decimation["enabled"], true);
    assert_eq!(decimation["factor"], 4);
    assert_eq!(decimation["algorithm"], "average");
    let outputs = &got["config"]["outputs"];
    assert_eq!(outputs["full_rate"][0]["port"], full_dest.port);
    assert_eq!(outputs["full_rate"][0]["address"], "127.0.0.1");
    assert_eq!(outputs["decimated"][0]["port"], dec_dest.port);
    // The schema went inline: the registered one is example.avsc.
    let (_, schema) = http(api, "GET", "/api/v1/channels/demo/schema", &[], None);
    assert_eq!(schema["name"], "data");
    assert_eq!(schema["fields"][0]["name"], "time");

    // Records flow: 200 valid ones and 3 invalid ones.
    let records = example_records(200);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    for _ in 0..3 {
        tx.send_to(b"\xff", (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&full, 200), records);
    wait_until("203 packets counted", Duration::from_secs(10), || {
        get_channel(api, "demo")["stats"]["packets"] == 203
    })
    .await;
    wait_until("the archive written", Duration::from_secs(10), || {
        get_channel(api, "demo")["stats"]["archive_bytes"].as_u64() > Some(200 * 40)
    })
    .await;

    // list with one sample: no rate column.
    let kib =
        |s: &Value| (s["archive_bytes"].as_u64().unwrap() as f64 / 1024.0 * 10.0).round() / 10.0;
    let before = kib(&get_channel(api, "demo")["stats"]);
    let table = ok(channels(api, &["list", "--interval", "0"], &[]));
    let after = kib(&get_channel(api, "demo")["stats"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PORT", "STATUS", "PACKETS", "INVALID", "DROPS", "ARCHIVE"
        ]
    );
    let cells = row(&table, "demo");
    assert_eq!(
        cells[..6],
        ["demo", &port.to_string(), "active", "203", "3", "0"]
    );
    // Archive size in human units, e.g. "12.3 KiB" (a block may land meanwhile).
    assert_eq!(cells[7], "KiB", "{table}");
    let shown: f64 = cells[6].parse().unwrap();
    assert!(
        (before..=after).contains(&shown),
        "{shown} KiB, not {before}..{after}"
    );

    // list with two samples while `send` runs at 2000 records/s.
    let load = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["send", "--port", &port.to_string(), "--schema", example])
        .args(["--rate", "2000", "--duration", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("send to start", Duration::from_secs(10), || {
        get_channel(api, "demo")["stats"]["packets"].as_u64() > Some(400)
    })
    .await;
    // The rate is the packets counted between the two samples over at
    // least --interval seconds: above 0 while records flow, at most what
    // was counted while the command ran. (How fast send is, is measured
    // by benches/run.sh load send.)
    let packets = |api| {
        get_channel(api, "demo")["stats"]["packets"]
            .as_u64()
            .unwrap()
    };
    let before = packets(api);
    let table = ok(channels(api, &["list", "--interval", "1"], &[]));
    let after = packets(api);
    let load = load.wait_with_output().unwrap();
    assert!(load.status.success());
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[3], "PACKETS/S", "{table}");
    let rate: f64 = row(&table, "demo")[3].parse().unwrap();
    assert!(
        rate > 0.0 && rate <= (after - before) as f64,
        "rate {rate}, {before} -> {after} packets, in\n{table}"
    );
    // Idle (every record send reports sent has been counted): 0.
    let sent: u64 = String::from_utf8_lossy(&load.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("send's summary");
    wait_until("every record sent counted", Duration::from_secs(10), || {
        packets(api) == 203 + sent
    })
    .await;
    let table = ok(channels(api, &["list", "--interval", "0.2"], &[]));
    assert_eq!(row(&table, "demo")[3], "0.0", "{table}");

    // Server errors: one line naming the problem, exit 1, no state change.
    let taken = one_line_failure(add(api, "other", port, example, &[]));
    assert_eq!(
        taken,
        format!("speedrelay: Port already in use: port {port} is used by channel demo (409)")
    );
    let dup = one_line_failure(add(api, "demo", free_port(), example, &[]));
    assert!(dup.contains("demo") && dup.ends_with("(409)"), "{dup}");
    let not_avro = dir.path().join("not-avro.avsc");
    std::fs::write(&not_avro, r#"{"type": "recordd", "name": "x"}"#).unwrap();
    let bad = one_line_failure(add(
        api,
        "other",
        free_port(),
        not_avro.to_str().unwrap(),
        &[],
    ));
    assert!(bad.contains("schema") && bad.ends_with("(400)"), "{bad}");
    let bad_name = one_line_failure(add(api, "no/slash", free_port(), example, &[]));
    assert!(
        bad_name.starts_with("speedrelay: name") && bad_name.ends_with("(400)"),
        "{bad_name}"
    );
    // Refused before any request: the schema file is missing.
    let missing = one_line_failure(add(api, "other", free_port(), "/nonexistent.avsc", &[]));
    assert!(missing.contains("/nonexistent.avsc"), "{missing}");
    let unknown = one_line_failure(channels(api, &["get", "nope"], &[]));
    assert_eq!(
        unknown,
        "speedrelay: Channel not found: no channel named nope (404)"
    );
    let (_, listing) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(listing["channels"].as_array().unwrap().len(), 1);

    // rm, then rm again.
    assert_eq!(
        ok(channels(api, &["rm", "demo"], &[])),
        "channel demo removed\n"
    );
    assert_eq!(
        ok(channels(api, &["list"], &[])),
        "no channels registered\n"
    );
    let gone = one_line_failure(channels(api, &["rm", "demo"], &[]));
    assert_eq!(
        gone,
        "speedrelay: Channel not found: no channel named demo (404)"
    );

    relay.stop();
}

#[test]
fn refused_connection_and_bad_url_are_one_line() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let err = one_line_failure(channels(port, &["list"], &[]));
    assert!(
        err.contains(&format!("cannot connect to http://{port}"))
            && err.contains("connection refused"),
        "{err}"
    );
    for url in ["https://127.0.0.1:1", "127.0.0.1:8080"] {
        let o = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args(["channels", "--url", url, "list"])
            .output()
            .unwrap();
        let err = one_line_failure(o);
        assert!(err.contains("not a usable API URL"), "{err}");
    }
}

#[test]
fn token_and_url_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(
        &quick_empty_config(dir.path()),
        &dir.path().join("data"),
        &[("SPEEDRELAY_API_TOKEN", "s3cret")],
    );
    let api = relay.api;
    let denied = one_line_failure(channels(api, &["list"], &[]));
    assert!(
        denied.contains("(401)") && denied.contains("set SPEEDRELAY_API_TOKEN"),
        "{denied}"
    );
    let wrong = one_line_failure(channels(
        api,
        &["list"],
        &[("SPEEDRELAY_API_TOKEN", "guess")],
    ));
    assert!(
        wrong.contains("(401)") && wrong.contains("does not match"),
        "{wrong}"
    );
    assert_eq!(
        ok(channels(
            api,
            &["list"],
            &[("SPEEDRELAY_API_TOKEN", "s3cret")]
        )),
        "no channels registered\n"
    );
    // SPEEDRELAY_URL stands in for --url.
    let o = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["channels", "list", "--interval", "0"])
        .env("SPEEDRELAY_URL", format!("http://{api}"))
        .env("SPEEDRELAY_API_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert_eq!(ok(o), "no channels registered\n");
    relay.stop();
}
