//! `socket.coalesce_us` against the real binary: a partial batch waits for
//! more datagrams and goes as one batch (one `sendmmsg` per destination),
//! 0 never waits, a batch full at its first receive never waits, a paced
//! stream is never held longer than the setting, outputs, archives and
//! counters are those of coalescing off (invalid records included), a
//! stop or a delete in the middle of a wait loses nothing, PATCH changes
//! it live, and a bad value is refused by every door (POST, PATCH, the
//! config files) with nothing changed.
//!
//! Waits are observed through the relay's own counters (`batches`,
//! `coalesce_waits`, and the batch ages it records: `coalesce_waited_us`,
//! `coalesce_longest_us`), never through sleeps or the test's clock.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
/// The longest wait accepted (1 s): long enough that the test's own steps
/// (an HTTP GET between two sends) happen well inside it.
const LONG: u64 = 1_000_000;
/// What a held batch's recorded age may exceed its wait by: the time the
/// relay's thread takes to run again after its timer fires, on a machine
/// busy with other builds. Far below what a wait that does not end at its
/// deadline would show in these tests (a whole stream's length).
const SCHEDULING: u64 = 200_000;

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
    hold_first(&tx, port, &r, api, "co");
    // Nothing has gone yet: the batch is held for more.
    assert_eq!(stat(api, "co", "batches"), 0);
    send(&tx, port, &r[1..]);
    assert_eq!(recv_n(&sink, 5), r);
    assert_eq!(stat(api, "co", "batches"), 1, "five datagrams, one batch");
    assert_eq!(stat(api, "co", "forwarded"), 5);
    assert_eq!(stat(api, "co", "coalesce_waits"), 1);
    // The wait ran to its deadline (a timer never ends early), and the
    // batch went once it was over.
    let held = stat(api, "co", "coalesce_longest_us");
    assert!(held >= LONG, "held {held} µs, less than the wait");
    assert!(held < LONG + SCHEDULING, "held {held} µs");
    assert_eq!(stat(api, "co", "coalesce_waited_us"), held);
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

/// A batch that is full at its first receive goes at once, without a
/// wait: 128 datagrams queued behind a held one make a batch filled by
/// the wait (the held one and 63), then a full one that does not wait,
/// then a partial one that does.
#[test]
fn a_batch_full_at_first_receive_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "full",
        Value::Null,
    );
    let api = relay.api;
    let r = records(0, 129);
    let tx = sender();
    hold_first(&tx, port, &r, api, "full");
    // Queued in the kernel while the channel sleeps.
    send(&tx, port, &r[1..]);
    assert_eq!(recv_n(&sink, 129), r);
    assert_eq!(stat(api, "full", "batches"), 3);
    assert_eq!(
        stat(api, "full", "coalesce_waits"),
        2,
        "the full batch in the middle did not wait"
    );
    assert_eq!(stat(api, "full", "forwarded"), 129);
    relay.stop();
    assert_eq!(archived_datums(&data, "full", EXAMPLE_SCHEMA), r);
}

/// A paced stream that never fills a batch: every batch waits, none ends
/// its wait early, and none is held longer than the setting (by the
/// relay's own account, beyond the time its thread takes to run again).
#[test]
fn a_paced_stream_is_never_held_longer_than_the_setting() {
    const WAIT: u64 = 30_000;
    const N: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), WAIT),
        &data,
        "paced",
        Value::Null,
    );
    let api = relay.api;
    let r = records(0, N);
    let tx = sender();
    // The input: one record every 5 ms, 0.3 s in all, about 6 per wait.
    for record in &r {
        send(&tx, port, std::slice::from_ref(record));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(recv_n(&sink, N as usize), r);
    let waits = stat(api, "paced", "coalesce_waits");
    assert_eq!(waits, stat(api, "paced", "batches"), "every batch waited");
    assert!((2..N).contains(&waits), "{waits} waits for {N} records");
    let waited = stat(api, "paced", "coalesce_waited_us");
    assert!(
        waited >= waits * WAIT,
        "a wait ended early: {waited} µs in {waits}"
    );
    let longest = stat(api, "paced", "coalesce_longest_us");
    assert!(
        (WAIT..WAIT + SCHEDULING).contains(&longest),
        "a batch was held {longest} µs with a wait of {WAIT} µs"
    );
    relay.stop();
}

/// The same input, valid and invalid records mixed, through a coalescing
/// channel and one that does not wait: the same records forwarded in the
/// same order, the same archive, the same counters.
#[test]
fn outputs_archives_and_counters_are_those_of_no_wait() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = spawn_relay(&config_with_default(dir.path(), 2_000), &data, &[]);
    let api = relay.api;
    let mut sinks = Vec::new();
    let mut ports = Vec::new();
    for (name, socket) in [("waits", Value::Null), ("plain", json!({"coalesce_us": 0}))] {
        let (sink, _) = receiver();
        let port = free_port();
        let mut body = json!({"outputs": {"full_rate": to(&sink)}});
        if !socket.is_null() {
            body["socket"] = socket;
        }
        assert_eq!(register_example(api, name, port, body).0, 201);
        sinks.push(sink);
        ports.push(port);
    }
    let valid = records(0, 300);
    let mut input = Vec::new();
    for (i, record) in valid.iter().enumerate() {
        input.push(record.clone());
        if i % 7 == 0 {
            input.push(vec![0xff; 3]); // not a record
        }
    }
    let tx = sender();
    // In bursts of various sizes, so some batches fill and some wait.
    for chunk in input.chunks(37) {
        for &port in &ports {
            send(&tx, port, chunk);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for sink in &sinks {
        assert_eq!(recv_n(sink, valid.len()), valid);
    }
    assert!(stat(api, "waits", "coalesce_waits") > 0);
    assert_eq!(stat(api, "plain", "coalesce_waits"), 0);
    let keys = [
        "packets",
        "bytes",
        "invalid",
        "forwarded",
        "send_errors",
        "kernel_drops",
    ];
    let (a, b) = (get_channel(api, "waits"), get_channel(api, "plain"));
    for key in keys {
        assert_eq!(a["stats"][key], b["stats"][key], "{key}");
    }
    assert_eq!(a["stats"]["last_invalid"], b["stats"]["last_invalid"]);
    relay.stop();
    for name in ["waits", "plain"] {
        assert_eq!(
            archived_datums(&data, name, EXAMPLE_SCHEMA),
            valid,
            "{name}"
        );
    }
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
    let r = records(0, 3);
    let tx = sender();
    hold_first(&tx, port, &r, api, "halt");
    // Queued while the channel sleeps: the stop's drain takes them.
    send(&tx, port, &r[1..]);
    assert!(relay.terminate().success());
    assert_eq!(recv_n(&sink, 3), r);
    assert_eq!(archived_datums(&data, "halt", EXAMPLE_SCHEMA), r);
}

/// A delete in the middle of a wait: the held datagram and those queued
/// behind it are forwarded and archived before the channel goes.
#[test]
fn a_delete_during_a_wait_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (relay, sink, port) = channel_to_sink(
        &config_with_default(dir.path(), LONG),
        &data,
        "gone",
        Value::Null,
    );
    let api = relay.api;
    let r = records(0, 3);
    let tx = sender();
    hold_first(&tx, port, &r, api, "gone");
    send(&tx, port, &r[1..]);
    let (status, answer) = http(api, "DELETE", "/api/v1/channels/gone", &[], None);
    assert!(status == 200 || status == 204, "{status} {answer}");
    assert_eq!(recv_n(&sink, 3), r);
    assert_eq!(archived_datums(&data, "gone", EXAMPLE_SCHEMA), r);
    relay.stop();
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
    hold_first(&tx, port, &r, api, "live");
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

/// Sends the first of `r` and returns once channel `name` waits on it
/// (its first coalescing wait has begun).
fn hold_first(tx: &UdpSocket, port: u16, r: &[Vec<u8>], api: SocketAddr, name: &str) {
    send(tx, port, &r[..1]);
    wait_for("the channel to start waiting", T, || {
        stat(api, name, "coalesce_waits") == 1
    });
}
