//! `PATCH /api/v1/channels/{name}` against the real binary: for every
//! setting PATCH accepts, the running channel's outputs or files show the
//! change (not only the config the API returns), and a change the channel
//! cannot take is refused with the channel left as it was.
//!
//! `archive.enabled`, `socket.max_datagram` and `socket.bind` are covered
//! in tests/it/reliability.rs; everything else is here.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use common::*;
use serde_json::{Value, json};
use speedrelay::verify;

const T: Duration = Duration::from_secs(20);

/// PATCH that must succeed; returns the channel.
fn patch_ok(api: SocketAddr, name: &str, body: Value) -> Value {
    let (status, answer) = patch(api, name, body.clone());
    assert_eq!(status, 200, "PATCH {body}: {answer}");
    answer
}

/// The `ramp` field (record n has n / 2) of an example.avsc datum.
fn ramp(datum: &[u8]) -> f64 {
    match decode(&schema(EXAMPLE_SCHEMA), datum) {
        Avro::Record(fields) => fields
            .into_iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("ramp", Avro::Double(x)) => Some(x),
                _ => None,
            })
            .expect("a ramp field"),
        other => panic!("not a record: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Every `.avro` file of the channel in `dir` (its own directory, or the
/// data directory for `layout: flat`), oldest first.
fn files_in(dir: &Path, channel: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|x| x == "avro")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{channel}-")))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Records in the complete blocks of `files` (the open file included: it
/// is readable up to its last block).
fn records_in(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| verify::scan(f).map_or(0, |r| r.records))
        .sum()
}

fn stat(api: SocketAddr, name: &str, counter: &str) -> u64 {
    get_channel(api, name)["stats"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {counter}"))
}

/// `rb` of `ss -m` for the UDP socket bound to `port`: the receive buffer
/// the kernel gave the relay's socket.
fn kernel_recv_buffer(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-u", "-a", "-n", "-m", "-H"])
        .arg(format!("sport = :{port}"))
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| c == ',' || c == '(' || c.is_whitespace())
        .find_map(|w| w.strip_prefix("rb").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no rb for port {port} in: {text}"))
}

/// Where the full-rate and decimated records go: the change is at once,
/// the old destinations get nothing more, the new ones everything.
#[test]
fn outputs_change_where_records_go_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let ((full_a, _), (dec_a, _)) = (receiver(), receiver());
    let ((full_b, _), (full_c, _), (dec_b, _)) = (receiver(), receiver(), receiver());
    let port = free_port();
    let config = json!({
        "outputs": {"full_rate": dest_json(&full_a), "decimated": dest_json(&dec_a)},
        "decimation": {"enabled": true, "factor": 2, "algorithm": "downsample"}
    });
    assert_eq!(register_example(api, "out", port, config).0, 201);

    let first = example_range(0, 4);
    send_all(port, &first);
    assert_eq!(recv_n(&full_a, 4), first);
    assert_eq!(recv_n(&dec_a, 2), [first[1].clone(), first[3].clone()]);

    patch_ok(
        api,
        "out",
        json!({"outputs": {"full_rate": [dest_json(&full_b), dest_json(&full_c)], "decimated": dest_json(&dec_b)}}),
    );
    let second = example_range(4, 4);
    send_all(port, &second);
    assert_eq!(recv_n(&full_b, 4), second);
    assert_eq!(recv_n(&full_c, 4), second);
    assert_eq!(recv_n(&dec_b, 2), [second[1].clone(), second[3].clone()]);
    assert_silent(&full_a);
    assert_silent(&dec_a);
    relay.stop();
}

/// decimation.enabled, factor and algorithm, each seen in the decimated
/// stream of the running channel.
#[test]
fn decimation_settings_change_the_decimated_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let (dec, _) = receiver();
    let port = free_port();
    let config = json!({
        "outputs": {"decimated": dest_json(&dec)},
        "decimation": {"enabled": true, "factor": 2, "algorithm": "downsample"}
    });
    assert_eq!(register_example(api, "dec", port, config).0, 201);
    let r = example_range(0, 30);
    send_all(port, &r[0..2]);
    assert_eq!(recv_n(&dec, 1), [r[1].clone()]);

    // Off: nothing decimated; the records still count.
    patch_ok(api, "dec", json!({"decimation": {"enabled": false}}));
    send_all(port, &r[2..6]);
    wait_for("the records counted", T, || {
        stat(api, "dec", "packets") == 6
    });
    assert_silent(&dec);
    // On again, then factor 3: the last record of every 3.
    patch_ok(api, "dec", json!({"decimation": {"enabled": true}}));
    send_all(port, &r[6..8]);
    assert_eq!(recv_n(&dec, 1), [r[7].clone()]);
    patch_ok(api, "dec", json!({"decimation": {"factor": 3}}));
    send_all(port, &r[8..14]);
    assert_eq!(recv_n(&dec, 2), [r[10].clone(), r[13].clone()]);

    // Algorithms over records 14..17 (ramp 7.0, 7.5, 8.0).
    let window = |k: usize| [k as f64 / 2.0, (k + 1) as f64 / 2.0, (k + 2) as f64 / 2.0];
    patch_ok(api, "dec", json!({"decimation": {"algorithm": "average"}}));
    send_all(port, &r[14..17]);
    let got = recv_n(&dec, 1);
    let w = window(14);
    assert!(close(ramp(&got[0]), w.iter().sum::<f64>() / 3.0), "average");
    assert_ne!(got[0], r[16], "re-encoded, not the last record");

    patch_ok(api, "dec", json!({"decimation": {"algorithm": "minmax"}}));
    send_all(port, &r[17..20]);
    let got = recv_n(&dec, 2);
    let w = window(17);
    assert!(
        close(ramp(&got[0]), w[0]) && close(ramp(&got[1]), w[2]),
        "minmax"
    );

    patch_ok(api, "dec", json!({"decimation": {"algorithm": "rms"}}));
    send_all(port, &r[20..23]);
    let got = recv_n(&dec, 1);
    let w = window(20);
    let rms = (w.iter().map(|x| x * x).sum::<f64>() / 3.0).sqrt();
    assert!(close(ramp(&got[0]), rms), "rms");
    assert_silent(&dec);
    relay.stop();
}

/// validate: true drops what is not a record, false forwards it as
/// received (and keeps it out of the archive), true again drops it.
#[test]
fn validate_switches_between_dropping_and_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let (full, _) = receiver();
    let port = free_port();
    let config = json!({"outputs": {"full_rate": dest_json(&full)}, "validate": true});
    assert_eq!(register_example(api, "val", port, config).0, 201);
    let garbage = b"\xff\xff\xff not a record".to_vec();
    let r = example_range(0, 6);

    send_all(port, &[r[0].clone(), garbage.clone(), r[1].clone()]);
    assert_eq!(recv_n(&full, 2), r[0..2]);
    assert_eq!(stat(api, "val", "invalid"), 1);

    patch_ok(api, "val", json!({"validate": false}));
    send_all(port, &[r[2].clone(), garbage.clone(), r[3].clone()]);
    assert_eq!(
        recv_n(&full, 3),
        [r[2].clone(), garbage.clone(), r[3].clone()]
    );
    assert_eq!(stat(api, "val", "invalid"), 1);
    wait_for("the rejection counted", T, || {
        stat(api, "val", "archive_rejected") == 1
    });

    patch_ok(api, "val", json!({"validate": true}));
    send_all(port, &[r[4].clone(), garbage, r[5].clone()]);
    assert_eq!(recv_n(&full, 2), r[4..6]);
    assert_silent(&full);
    assert_eq!(stat(api, "val", "invalid"), 2);
    relay.stop();
    assert_eq!(archived_datums(&data, "val", EXAMPLE_SCHEMA), r);
}

/// flush_records, flush_bytes and flush_ms: each, once patched, is what
/// writes the next block; the bounds the channel started with would keep
/// the records in memory for an hour.
#[test]
fn block_bounds_decide_when_the_next_block_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let port = free_port();
    let never =
        json!({"flush_records": 1_000_000, "flush_bytes": 1_073_741_824, "flush_ms": 3_600_000});
    assert_eq!(
        register_example(api, "blocks", port, json!({"archive": never})).0,
        201
    );
    let on_disk = || records_in(&archive_files(&data, "blocks"));

    patch_ok(api, "blocks", json!({"archive": {"flush_records": 5}}));
    send_all(port, &example_range(0, 5));
    wait_for("a block of 5 records", T, || on_disk() == 5);

    patch_ok(
        api,
        "blocks",
        json!({"archive": {"flush_records": 1_000_000, "flush_bytes": 1}}),
    );
    send_all(port, &example_range(5, 1));
    wait_for("a block of 1 record", T, || on_disk() == 6);

    patch_ok(
        api,
        "blocks",
        json!({"archive": {"flush_bytes": 1_073_741_824, "flush_ms": 20}}),
    );
    send_all(port, &example_range(6, 2));
    wait_for("the block written by its age", T, || on_disk() == 8);
    let report = verify::scan(&archive_files(&data, "blocks")[0]).unwrap();
    assert_eq!(report.blocks, 3, "5, 1 and 2 records");
    relay.stop();
    assert_eq!(
        archived_datums(&data, "blocks", EXAMPLE_SCHEMA),
        example_range(0, 8)
    );
}

/// archive.codec with the next file, rotation (size, time, and 0 for off)
/// and retention from the next block, all on the running channel.
#[test]
fn codec_rotation_and_retention_apply_to_the_running_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let port = free_port();
    let config = json!({"rotation": {"mode": "time", "threshold": 3600}});
    assert_eq!(register_example(api, "rot", port, config).0, 201);
    let mut next = 0;
    // Sends one batch and waits until its block is in a file.
    let mut batch = |n: u64| {
        let before = stat(api, "rot", "archive_bytes");
        send_all(port, &example_range(next, n));
        next += n;
        wait_for("the block written", T, || {
            stat(api, "rot", "archive_bytes") > before
        });
    };
    batch(3);
    let first = archive_files(&data, "rot");
    assert_eq!(first.len(), 1);

    // The codec changes with the next file: the open one stays null.
    patch_ok(api, "rot", json!({"archive": {"codec": "zstandard"}}));
    batch(3);
    assert_eq!(archive_files(&data, "rot"), first, "no new file yet");
    // Size rotation at 1 byte: the block just written closes the file...
    patch_ok(
        api,
        "rot",
        json!({"rotation": {"mode": "size", "threshold": 1}}),
    );
    batch(3);
    // ...so every block now gets a file of its own, in the new codec.
    batch(3);
    batch(3);
    let files = archive_files(&data, "rot");
    assert_eq!(files.len(), 3, "{files:?}");
    let codecs: Vec<String> = files
        .iter()
        .map(|f| verify::scan(f).unwrap().codec)
        .collect();
    assert_eq!(codecs, ["null", "zstandard", "zstandard"]);
    assert_eq!(verify::scan(&files[0]).unwrap().records, 9);

    // Threshold 0 turns rotation off: three blocks, one new file.
    patch_ok(api, "rot", json!({"rotation": {"threshold": 0}}));
    batch(3);
    batch(3);
    batch(3);
    let files = archive_files(&data, "rot");
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(verify::scan(&files[3]).unwrap().blocks, 3);

    // Time rotation at 1 s: a block that arrives once the open file is a
    // second old starts a new one.
    patch_ok(
        api,
        "rot",
        json!({"rotation": {"mode": "time", "threshold": 1}}),
    );
    wait_for("a file started by time rotation", T, || {
        batch(1);
        archive_files(&data, "rot").len() == 5
    });

    // Retention: a quota of what all files but the oldest hold deletes
    // the oldest at the next close, and keeps the newest.
    let before = archive_files(&data, "rot");
    let size = |f: &PathBuf| std::fs::metadata(f).unwrap().len();
    let quota: u64 = before[1..].iter().map(size).sum();
    patch_ok(
        api,
        "rot",
        json!({"retention": {"mode": "quota", "value": quota},
               "rotation": {"mode": "size", "threshold": 1}}),
    );
    batch(3);
    let after = archive_files(&data, "rot");
    assert!(!after.contains(&before[0]), "the oldest file is deleted");
    assert_eq!(after.last(), before.last(), "the newest file is kept");
    let total: u64 = after.iter().map(size).sum();
    assert!(total <= quota, "{total} bytes kept, quota {quota}");
    relay.stop();
}

/// archive.layout: the open file is closed and the next records go to a
/// file straight in the data directory; and back.
#[test]
fn layout_moves_the_next_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let port = free_port();
    assert_eq!(register_example(api, "lay", port, json!({})).0, 201);
    let own_dir = data.join("lay");
    send_all(port, &example_range(0, 3));
    wait_for("the first file", T, || {
        records_in(&files_in(&own_dir, "lay")) == 3
    });

    patch_ok(api, "lay", json!({"archive": {"layout": "flat"}}));
    // The file in the channel's directory was closed whole.
    let closed = files_in(&own_dir, "lay");
    assert_eq!(closed.len(), 1);
    assert!(verify::scan(&closed[0]).unwrap().is_healthy());
    send_all(port, &example_range(3, 4));
    wait_for("a file in the data directory", T, || {
        records_in(&files_in(&data, "lay")) == 4
    });

    patch_ok(api, "lay", json!({"archive": {"layout": "channel"}}));
    send_all(port, &example_range(7, 2));
    wait_for("a second file in the channel's directory", T, || {
        files_in(&own_dir, "lay").len() == 2 && records_in(&files_in(&own_dir, "lay")) == 5
    });
    assert_eq!(files_in(&data, "lay").len(), 1);
    relay.stop();
}

/// socket.recv_buffer resizes the bound socket's kernel receive buffer
/// (what `ss -m` shows as rb: twice the size asked for).
#[test]
fn recv_buffer_resizes_the_bound_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let port = free_port();
    let config = json!({"socket": {"recv_buffer": 65536}});
    assert_eq!(register_example(api, "buf", port, config).0, 201);
    assert_eq!(kernel_recv_buffer(port), 2 * 65536);
    patch_ok(api, "buf", json!({"socket": {"recv_buffer": 98304}}));
    assert_eq!(kernel_recv_buffer(port), 2 * 98304);
    relay.stop();
}

/// A change the channel cannot take (a destination that cannot be opened:
/// its network is unreachable) is a 400; the channel keeps its settings
/// and its destinations, and the registry keeps the old settings.
#[test]
fn a_change_the_channel_cannot_take_is_refused_and_changes_nothing() {
    // 10.0.0.0/8 is unreachable only in the private namespace.
    if !private_netns_or_skip("not in a private network namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (full, _) = receiver();
    let port = free_port();
    let outputs = json!({"outputs": {"full_rate": dest_json(&full)}});
    assert_eq!(register_example(api, "keep", port, outputs).0, 201);
    let before = get_channel(api, "keep")["config"].clone();

    let (status, answer) = patch(
        api,
        "keep",
        json!({"outputs": {"full_rate": [dest_json(&full), {"address": "10.9.9.9", "port": 9}]},
               "validate": false}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "config.outputs", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("10.9.9.9"),
        "{answer}"
    );
    assert_eq!(get_channel(api, "keep")["config"], before);
    // Still validating (the refused PATCH also turned validation off) and
    // still forwarding to the one destination.
    let r = example_range(0, 2);
    send_all(port, &[r[0].clone(), b"\xff".to_vec(), r[1].clone()]);
    assert_eq!(recv_n(&full, 2), r);
    assert_silent(&full);
    relay.stop();
    let relay = spawn_relay(&config, &data, &[]);
    assert_eq!(get_channel(relay.api, "keep")["config"], before);
    relay.stop();
}
