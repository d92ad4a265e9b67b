//! `speedrelay send` (the real binary) into a real relay: every record it
//! sends is valid for the channel's schema and lands in the archive, for
//! the shipped agent schemas and for a schema using every Avro type.

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value as Avro;
use common::*;
use serde_json::{Value, json};

fn send(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .arg("send")
        .args(args)
        .output()
        .expect("send runs")
}

/// `speedrelay send ARGS`, asserting it succeeds: what it printed.
fn send_ok(args: &[&str]) -> String {
    let out = send(args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn register(api: std::net::SocketAddr, name: &str, port: u16, schema_text: &str) {
    let schema: Value = serde_json::from_str(schema_text).unwrap();
    let body = json!({"name": name, "port": port, "schema": schema});
    let (status, answer) = post_json(api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 201, "{answer}");
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn field<'a>(v: &'a Avro, name: &str) -> &'a Avro {
    match v {
        Avro::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap().1,
        other => panic!("not a record: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_records_are_valid_and_archived_for_every_schema() {
    const N: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&quick_empty_config(dir.path()), &data, &[]);
    let api = relay.api;
    let schemas = [
        ("example", repo_file("config/agents/example.avsc")),
        ("temperature", repo_file("config/agents/temperature.avsc")),
        ("every_type", repo_file("tests/data/every_type.avsc")),
    ];
    let started = now_ns();
    for (name, path) in &schemas {
        let text = std::fs::read_to_string(path).unwrap();
        let port = free_port();
        register(api, name, port, &text);
        // Paced, so that a debug-build relay on a busy machine keeps up:
        // the test is about validity, not speed.
        let summary = send_ok(&[
            "--port",
            &port.to_string(),
            "--schema",
            path.to_str().unwrap(),
            "--count",
            &N.to_string(),
            "--rate",
            "2000",
        ]);
        assert!(
            summary.starts_with(&format!("sent {N} records (")) && summary.contains("records/s"),
            "{summary}"
        );
        wait_until(
            &format!("{N} packets on {name}"),
            Duration::from_secs(20),
            || get_channel(api, name)["stats"]["packets"].as_u64() >= Some(N),
        )
        .await;
        let s = &get_channel(api, name)["stats"];
        assert_eq!(s["packets"], N, "{name}: {s}");
        assert_eq!(s["invalid"], 0, "{name}: {s}");
        assert_eq!(s["kernel_drops"], 0, "{name}: {s}");
        assert!(s.get("last_invalid").is_none(), "{name}: {s}");
    }
    // SIGTERM closes every archive: then exactly N records each.
    relay.stop();
    for (name, path) in &schemas {
        let text = std::fs::read_to_string(path).unwrap();
        let datums = archived_datums(&data, name, &text);
        assert_eq!(datums.len() as u64, N, "{name}");
        let schema = schema(&text);
        let distinct: std::collections::HashSet<&Vec<u8>> = datums.iter().collect();
        assert!(distinct.len() as u64 > N / 2, "{name}: records do not vary");
        for d in &datums {
            let v = decode(&schema, d);
            // Every record of these schemas has a long `time` (in
            // example.avsc a timestamp-nanos): now, in ns.
            let (Avro::Long(t) | Avro::TimestampNanos(t)) = field(&v, "time") else {
                panic!("{name}: time is {:?}", field(&v, "time"))
            };
            assert!(
                (started..=now_ns()).contains(t),
                "{name}: time {t} is not the send time"
            );
        }
    }
}

#[test]
fn sigint_stops_an_endless_send_and_reports_the_rate() {
    let sink = sender();
    let port = sink.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["send", "--port", &port.to_string(), "--schema"])
        .arg(repo_file("config/agents/temperature.avsc"))
        .args(["--rate", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first datagram shows that it is sending.
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    sink.recv(&mut buf).expect("send started");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("send ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("sent ") && text.contains("records/s"),
        "{text}"
    );
}

#[test]
fn bad_schemas_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let not_avro = dir.path().join("x.avsc");
    std::fs::write(&not_avro, r#"{"type": "recordd"}"#).unwrap();
    let endless = dir.path().join("loop.avsc");
    std::fs::write(
        &endless,
        r#"{"type":"record","name":"loop","fields":[{"name":"next","type":"loop"}]}"#,
    )
    .unwrap();
    let missing = dir.path().join("missing.avsc");
    for (path, says) in [
        (&not_avro, "is not an Avro schema"),
        (&endless, "nests without end"),
        (&missing, "cannot read schema file"),
    ] {
        let out = send(&[
            "--port",
            "9",
            "--schema",
            path.to_str().unwrap(),
            "--count",
            "1",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn sending_to_a_port_nobody_listens_on_exits_1() {
    let schema = repo_file("config/agents/temperature.avsc");
    for count in ["1", "5", "300"] {
        let port = free_port();
        let out = send(&[
            "--port",
            &port.to_string(),
            "--schema",
            schema.to_str().unwrap(),
            "--count",
            count,
            "--rate",
            "0",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--count {count}: {err}");
        assert!(out.stdout.is_empty(), "no 'sent' summary");
        assert!(
            err.contains(&format!(
                "no record was delivered: 127.0.0.1:{port} refused every send ({count} records)"
            )) && err.contains(&format!("is a channel listening on port {port}?")),
            "{err}"
        );
    }
    // The same with a listener: delivered, exit 0, even for one record.
    let sink = sender();
    let port = sink.local_addr().unwrap().port().to_string();
    for count in ["1", "300"] {
        let said = send_ok(&[
            "--port",
            &port,
            "--schema",
            schema.to_str().unwrap(),
            "--count",
            count,
            "--rate",
            "0",
        ]);
        assert!(
            said.starts_with(&format!("sent {count} records (")),
            "{said}"
        );
    }
}

/// `--host` names the destination: records reach a socket on [::1] only
/// when sent there; a name that does not resolve is one error line.
#[test]
fn host_picks_the_destination() {
    let sink = std::net::UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]");
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sink.local_addr().unwrap().port().to_string();
    let schema = repo_file("config/agents/temperature.avsc");
    let schema = schema.to_str().unwrap();
    let out = send_ok(&[
        "--host", "::1", "--port", &port, "--schema", schema, "--count", "3",
    ]);
    assert!(out.contains(&format!("to [::1]:{port}")), "{out}");
    let got = recv_n(&sink, 3);
    let s = schema_of(schema);
    for d in &got {
        decode(&s, d);
    }
    // Without --host, 127.0.0.1: nothing reaches [::1].
    let out = send(&["--port", &port, "--schema", schema, "--count", "3"]);
    assert_eq!(out.status.code(), Some(1), "refused at 127.0.0.1");
    assert_silent(&sink);
    let out = send(&[
        "--host",
        "no-such-host.invalid",
        "--port",
        &port,
        "--schema",
        schema,
        "--count",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-host.invalid"), "{err}");
}

fn schema_of(path: &str) -> apache_avro::Schema {
    schema(&std::fs::read_to_string(path).unwrap())
}
