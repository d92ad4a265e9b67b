//! `socket.coalesce_us` against the real binary: a partial batch waits for
//! more datagrams and goes as one batch (one `sendmmsg` per destination),
//! 0 never waits, a full batch is never held, a stop in the middle of a
//! wait loses nothing, PATCH changes it live, and a bad value is refused
//! by every door (POST, PATCH, the config files) with nothing changed.
//!
//! Waits are observed through the relay's own counters (`batches`,
//! `coalesce_waits`), never through sleeps; the only clock assertions are
//! generous upper bounds on a deliberately long setting.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
/// The longest wait accepted (1 s): long enough that the test's own steps
/// (an HTTP GET between two sends) happen well inside it.
const LONG: u64 = 1_000_000;

fn stat(api: SocketAddr, name: &str, counter: &str) -> u64 {
    get_channel(api, name)["stats"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {counter}"))
}

fn coalesce_us(api: SocketAddr, name: &str) -> Value {
    get_channel(api, name)["config"]["socket"]["coalesce_us"].clone()
}

fn to(sock: &UdpSocket) -> Value {
    json!({"address": "127.0.0.1", "port": sock.local_addr().unwrap().port()})
}

/// Records `from..from + n` of example.avsc.
fn records(from: u64, n: u64) -> Vec<Vec<u8>> {
    let s = schema(EXAMPLE_SCHEMA);
    (from..from + n)
        .map(|i| encode(&s, example_value(&s, i)))
        .collect()
}

fn send(tx: &UdpSocket, port: u16, records: &[Vec<u8>]) {
    for r in records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}

/// loopback_config with `socket.coalesce_us` set in relay.yaml's defaults.
fn config_with_default(dir: &Path, coalesce_us: u64) -> std::path::PathBuf {
    let config = loopback_config(dir, 20);
    std::fs::write(
        config.join("relay.yaml"),
        format!(
            "channels: []\nsocket: {{bind: 127.0.0.1, coalesce_us: {coalesce_us}}}\n\
             decimation: {{enabled: false}}\narchive: {{flush_ms: 20}}\n"
        ),
    )
    .unwrap();
    config
}

/// Starts the relay on `config` with its data in `data`, and registers
/// channel `name` on a free port forwarding to a new sink, with `socket`
/// settings when not null: the relay, the sink and the port.
fn channel_to_sink(
    config: &Path,
    data: &Path,
    name: &str,
    socket: Value,
) -> (RelayProcess, UdpSocket, u16) {
    let relay = spawn_relay(config, data, &[]);
    let (sink, _) = receiver();
    let port = free_port();
    let mut body = json!({"outputs": {"full_rate": to(&sink)}});
    if !socket.is_null() {
        body["socket"] = socket;
    }
    assert_eq!(register_example(relay.api, name, port, body).0, 201);
    (relay, sink, port)
}

/// The default from relay.yaml: the first datagram waits, those sent
/// during the wait join it, and all go out as one batch, within the
/// setting (plus slack for a busy machine).
#[test]
fn a_partial_batch_waits_and_goes_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "co",
        Value::Null,
    );
    let api = relay.api;
    assert_eq!(coalesce_us(api, "co"), json!(LONG));

    let r = records(0, 5);
    let tx = sender();
    let first_sent = Instant::now();
    send(&tx, port, &r[..1]);
    wait_for("the channel to start waiting", T, || {
        stat(api, "co", "coalesce_waits") == 1
    });
    // Nothing has gone yet: the batch is held for more.
    assert_eq!(stat(api, "co", "batches"), 0);
    send(&tx, port, &r[1..]);
    assert_eq!(recv_n(&sink, 5), r);
    let waited = first_sent.elapsed();
    assert!(
        waited < Duration::from_micros(LONG) + Duration::from_secs(3),
        "the batch waited {waited:?}, far beyond the setting"
    );
    assert_eq!(stat(api, "co", "batches"), 1, "five datagrams, one batch");
    assert_eq!(stat(api, "co", "forwarded"), 5);
    assert_eq!(stat(api, "co", "coalesce_waits"), 1);
    relay.stop();
    assert_eq!(archived_datums(&data, "co", EXAMPLE_SCHEMA), r);
}

/// `coalesce_us: 0` in a channel's config overrides the default: every
/// datagram that finds the channel idle is a batch of its own, at once.
#[test]
fn zero_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "zero",
        json!({"coalesce_us": 0}),
    );
    let api = relay.api;
    assert_eq!(coalesce_us(api, "zero"), json!(0));
    let r = records(0, 4);
    let tx = sender();
    for (i, record) in r.iter().enumerate() {
        send(&tx, port, std::slice::from_ref(record));
        assert_eq!(recv_n(&sink, 1), std::slice::from_ref(record), "record {i}");
    }
    assert_eq!(stat(api, "zero", "batches"), 4);
    assert_eq!(stat(api, "zero", "coalesce_waits"), 0);
    relay.stop();
}

/// A batch that fills up (64 datagrams) during the wait goes at once,
/// however long the setting: here well before the 1 s wait could end.
#[test]
fn a_full_batch_is_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "full",
        Value::Null,
    );
    let api = relay.api;
    let r = records(0, 64);
    let tx = sender();
    send(&tx, port, &r[..1]);
    wait_for("the channel to start waiting", T, || {
        stat(api, "full", "coalesce_waits") == 1
    });
    let sent = Instant::now();
    send(&tx, port, &r[1..]);
    assert_eq!(recv_n(&sink, 64), r);
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "a full batch was held for {took:?} (the wait is 1 s)"
    );
    assert_eq!(stat(api, "full", "batches"), 1);
    assert_eq!(stat(api, "full", "forwarded"), 64);
    relay.stop();
}

/// SIGTERM in the middle of a wait: the datagram being held is forwarded
/// and archived, not lost.
#[test]
fn a_stop_during_a_wait_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "halt",
        Value::Null,
    );
    let api = relay.api;
    let r = records(0, 1);
    send(&sender(), port, &r);
    wait_for("the channel to start waiting", T, || {
        stat(api, "halt", "coalesce_waits") == 1
    });
    assert!(relay.terminate().success());
    assert_eq!(recv_n(&sink, 1), r);
    assert_eq!(archived_datums(&data, "halt", EXAMPLE_SCHEMA), r);
}

/// PATCH turns coalescing on and off on the running channel.
#[test]
fn patch_changes_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) =
        channel_to_sink(&loopback_config(dir.path(), 20), &data, "live", Value::Null);
    let api = relay.api;
    assert_eq!(coalesce_us(api, "live"), json!(0), "off by default");
    let r = records(0, 4);
    let tx = sender();

    let (status, answer) = patch(api, "live", json!({"socket": {"coalesce_us": LONG}}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["config"]["socket"]["coalesce_us"], json!(LONG));
    send(&tx, port, &r[..1]);
    wait_for("the channel to start waiting", T, || {
        stat(api, "live", "coalesce_waits") == 1
    });
    send(&tx, port, &r[1..2]);
    assert_eq!(recv_n(&sink, 2), r[..2]);
    assert_eq!(stat(api, "live", "batches"), 1);

    let (status, answer) = patch(api, "live", json!({"socket": {"coalesce_us": 0}}));
    assert_eq!(status, 200, "{answer}");
    for record in &r[2..] {
        send(&tx, port, std::slice::from_ref(record));
        assert_eq!(recv_n(&sink, 1), std::slice::from_ref(record));
    }
    assert_eq!(stat(api, "live", "batches"), 3);
    assert_eq!(stat(api, "live", "coalesce_waits"), 1, "no wait once off");
    relay.stop();
}

const BAD: [(&str, &str); 4] = [
    ("-1", "less than the minimum"),
    ("1000001", "greater than the maximum"),
    ("\"300\"", "not of type"),
    ("2.5", "not of type"),
];

/// A negative, too large, fractional or string value: 400 naming the
/// field from POST (no channel made) and PATCH (the setting kept).
#[test]
fn bad_values_are_refused_by_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&loopback_config(dir.path(), 20), &data, &[]);
    let api = relay.api;
    let port = free_port();
    assert_eq!(
        register_example(api, "kept", port, json!({"socket": {"coalesce_us": 300}})).0,
        201
    );
    for (bad, why) in BAD {
        let value: Value = serde_json::from_str(bad).unwrap();
        let config = json!({"socket": {"coalesce_us": value}});
        let (status, answer) = register_example(api, "refused", free_port(), config);
        assert_eq!(status, 400, "POST with {bad}: {answer}");
        let text = answer.to_string();
        assert!(text.contains("coalesce_us") && text.contains(why), "{text}");
        let (status, _) = http(api, "GET", "/api/v1/channels/refused", &[], None);
        assert_eq!(status, 404, "no channel made by a refused POST");

        let (status, answer) = patch(api, "kept", json!({"socket": {"coalesce_us": value}}));
        assert_eq!(status, 400, "PATCH with {bad}: {answer}");
        assert!(answer.to_string().contains("coalesce_us"), "{answer}");
        assert_eq!(coalesce_us(api, "kept"), json!(300), "unchanged by {bad}");
    }
    relay.stop();
}

/// The same values in relay.yaml (defaults or a channel's config):
/// `check-config` reports them and `serve` does not start.
#[test]
fn bad_values_are_refused_in_config_files() {
    for (bad, why) in BAD {
        for yaml in [
            format!("channels: []\nsocket: {{coalesce_us: {bad}}}\n"),
            format!(
                "channels:\n  - name: c\n    port: 26001\n    schema: example.avsc\n    \
                 config: {{socket: {{coalesce_us: {bad}}}}}\n"
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = loopback_config(dir.path(), 20);
            std::fs::write(config.join("relay.yaml"), &yaml).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
                .arg("check-config")
                .arg(&config)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{yaml}\n{text}");
            assert!(
                text.contains("coalesce_us") && text.contains(why),
                "{yaml}\n{text}"
            );

            let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
                .args(["serve", "--api", "127.0.0.1:0", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .output()
                .unwrap();
            assert!(!out.status.success(), "serve started with {yaml}");
        }
    }
}
