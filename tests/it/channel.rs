//! The channel data path end to end (SPEC §4): a real channel task on real
//! loopback sockets, checked at its destinations and in its archive files.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use apache_avro::types::Value;
use common::*;
use speedrelay::channel::ChannelHandle;
use speedrelay::config::{Algorithm, Codec, Destination, RotationMode};

const T: Duration = Duration::from_secs(20);

/// Sends `records` in steps of `step`, receiving each step at `dest` before
/// sending the next, so the kernel never has to drop for lack of buffer.
fn send_and_receive(
    to: SocketAddr,
    dest: &UdpSocket,
    records: &[Vec<u8>],
    step: usize,
) -> Vec<Vec<u8>> {
    let tx = sender();
    let mut got = Vec::with_capacity(records.len());
    for chunk in records.chunks(step) {
        for r in chunk {
            tx.send_to(r, to).unwrap();
        }
        got.extend(recv_n(dest, chunk.len()));
    }
    got
}

/// Stops the channel and reads its counters: they are added after a batch
/// is sent, so only once the task has ended are they final.
async fn stop_for_stats(channel: ChannelHandle) -> speedrelay::counters::ChannelStats {
    let c = channel.counters().clone();
    channel.stop().await.unwrap();
    c.snapshot()
}

/// Starts channel `name` (example.avsc) with `settings` and one more
/// full-rate destination, a receiver of ours, then sends `n` example records
/// through [`send_and_receive`]: the channel, the records and what the
/// receiver got.
async fn flood_through(
    name: &str,
    mut settings: speedrelay::config::ChannelSettings,
    dir: &std::path::Path,
    n: u64,
    step: usize,
) -> (ChannelHandle, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (dest, d) = receiver();
    settings.outputs.full_rate.push(d);
    let (channel, addr) = start(name, EXAMPLE_SCHEMA, settings, dir);
    let records = example_records(n);
    let sent = records.clone();
    let got = tokio::task::spawn_blocking(move || send_and_receive(addr, &dest, &sent, step))
        .await
        .unwrap();
    (channel, records, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_arrive_byte_identical_in_order_and_are_archived() {
    let dir = tempfile::tempdir().unwrap();
    let (channel, records, got) =
        flood_through("flood", quiet_settings(), dir.path(), 10_000, 200).await;
    assert!(got == records, "full-rate output differs from the input");

    let stats = stop_for_stats(channel).await;
    assert_eq!(stats.packets, 10_000);
    assert_eq!(stats.forwarded, 10_000);
    assert_eq!(stats.invalid, 0);
    assert_eq!(stats.kernel_drops, 0);
    assert_eq!(
        archived_datums(dir.path(), "flood", EXAMPLE_SCHEMA),
        records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_full_rate_destination_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (a, da) = receiver();
    let (b, db) = receiver();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![da, db];
    let (channel, addr) = start("two", EXAMPLE_SCHEMA, settings, dir.path());
    let records = example_records(300);
    let sent = records.clone();
    let (ga, gb) = tokio::task::spawn_blocking(move || {
        let tx = sender();
        for r in &sent {
            tx.send_to(r, addr).unwrap();
        }
        (recv_n(&a, sent.len()), recv_n(&b, sent.len()))
    })
    .await
    .unwrap();
    assert!(ga == records && gb == records);
    let stats = stop_for_stats(channel).await;
    assert_eq!(stats.forwarded, 600);
}

/// Six records of NUMERIC_SCHEMA: i = k, l = 10k, f = k/2, d = 1.5k for k = 1..=6.
fn numeric_records() -> Vec<Vec<u8>> {
    let s = schema(NUMERIC_SCHEMA);
    (1..=6)
        .map(|k| {
            let v = Value::Record(vec![
                ("label".into(), Value::String(format!("r{k}"))),
                ("i".into(), Value::Int(k)),
                ("l".into(), Value::Long(10 * k as i64)),
                ("f".into(), Value::Float(k as f32 / 2.0)),
                ("d".into(), Value::Double(1.5 * k as f64)),
            ]);
            encode(&s, v)
        })
        .collect()
}

#[derive(Debug, PartialEq)]
struct Sample {
    label: String,
    i: i32,
    l: i64,
    f: f32,
    d: f64,
}

fn sample(label: &str, i: i32, l: i64, f: f32, d: f64) -> Sample {
    Sample {
        label: label.into(),
        i,
        l,
        f,
        d,
    }
}

fn decode_sample(datum: &[u8]) -> Sample {
    let v = decode(&schema(NUMERIC_SCHEMA), datum);
    let Value::Record(fields) = v else {
        panic!("not a record")
    };
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    match (get("label"), get("i"), get("l"), get("f"), get("d")) {
        (
            Value::String(label),
            Value::Int(i),
            Value::Long(l),
            Value::Float(f),
            Value::Double(d),
        ) => Sample { label, i, l, f, d },
        other => panic!("unexpected field types {other:?}"),
    }
}

/// Runs the six numeric records through a channel with `algorithm`, factor 3.
async fn decimate(algorithm: Algorithm) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let (full, df) = receiver();
    let (dec, dd) = receiver();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![df];
    settings.outputs.decimated = vec![dd];
    settings.decimation.enabled = true;
    settings.decimation.factor = 3;
    settings.decimation.algorithm = algorithm;
    let (channel, addr) = start("dec", NUMERIC_SCHEMA, settings, dir.path());
    let records = numeric_records();
    let expected_outputs = if algorithm == Algorithm::Minmax { 4 } else { 2 };
    let sent = records.clone();
    let (got_full, got_dec) = tokio::task::spawn_blocking(move || {
        let tx = sender();
        for r in &sent {
            tx.send_to(r, addr).unwrap();
        }
        let full = recv_n(&full, sent.len());
        let dec_out = recv_n(&dec, expected_outputs);
        assert_silent(&dec);
        (full, dec_out)
    })
    .await
    .unwrap();
    assert_eq!(
        got_full, records,
        "decimation must not disturb the full-rate stream"
    );
    let stats = stop_for_stats(channel).await;
    assert_eq!(stats.decimated_sent, expected_outputs as u64);
    (records, got_dec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downsample_keeps_the_last_record_of_each_window() {
    let (records, out) = decimate(Algorithm::Downsample).await;
    assert_eq!(out, vec![records[2].clone(), records[5].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn average_gives_the_window_means() {
    let (_, out) = decimate(Algorithm::Average).await;
    let got: Vec<Sample> = out.iter().map(|d| decode_sample(d)).collect();
    assert_eq!(
        got,
        vec![sample("r3", 2, 20, 1.0, 3.0), sample("r6", 5, 50, 2.5, 7.5),]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minmax_gives_minimum_then_maximum_per_window() {
    let (_, out) = decimate(Algorithm::Minmax).await;
    let got: Vec<Sample> = out.iter().map(|d| decode_sample(d)).collect();
    assert_eq!(
        got,
        vec![
            sample("r3", 1, 10, 0.5, 1.5),
            sample("r3", 3, 30, 1.5, 4.5),
            sample("r6", 4, 40, 2.0, 6.0),
            sample("r6", 6, 60, 3.0, 9.0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rms_gives_the_root_mean_square() {
    let (_, out) = decimate(Algorithm::Rms).await;
    let got: Vec<Sample> = out.iter().map(|d| decode_sample(d)).collect();
    let rms = |xs: [f64; 3]| (xs.iter().map(|x| x * x).sum::<f64>() / 3.0).sqrt();
    let window = |k: f64| Sample {
        label: format!("r{}", k as i32 + 2),
        i: rms([k, k + 1.0, k + 2.0]).round() as i32,
        l: rms([10.0 * k, 10.0 * (k + 1.0), 10.0 * (k + 2.0)]).round() as i64,
        f: rms([k / 2.0, (k + 1.0) / 2.0, (k + 2.0) / 2.0]) as f32,
        d: rms([1.5 * k, 1.5 * (k + 1.0), 1.5 * (k + 2.0)]),
    };
    assert_eq!(got, vec![window(1.0), window(4.0)]);
    // Spot-check the arithmetic the expectation relies on.
    assert_eq!(got[0].i, 2);
    assert_eq!(got[0].l, 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_destination_receives_the_records() {
    if !private_netns_or_skip(
        "multicast is only sent inside a private network namespace (run tests/run.sh)",
    ) {
        return;
    }
    let group = Ipv4Addr::new(239, 255, 10, 1);
    let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    listener.set_reuse_address(true).unwrap();
    listener
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    listener
        .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .unwrap();
    let listener: UdpSocket = listener.into();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();

    let dir = tempfile::tempdir().unwrap();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![Destination {
        address: group.into(),
        port,
        interface: Some(Ipv4Addr::LOCALHOST),
        ttl: Some(1),
        multicast_loop: Some(true),
    }];
    let (channel, addr) = start("mcast", EXAMPLE_SCHEMA, settings, dir.path());
    let records = example_records(500);
    let sent = records.clone();
    let got = tokio::task::spawn_blocking(move || send_and_receive(addr, &listener, &sent, 100))
        .await
        .unwrap();
    assert!(got == records, "multicast output differs from the input");
    channel.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_datagrams_are_counted_and_go_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, d) = receiver();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![d];
    let (channel, addr) = start("bad", EXAMPLE_SCHEMA, settings, dir.path());
    let good = example_records(4);
    let mut trailing = good[0].clone();
    trailing.push(0);
    let truncated = good[1][..good[1].len() - 3].to_vec();
    // A string where `time` (a long) is expected, then garbage: wrong types.
    let s = schema(
        r#"{"type":"record","name":"x","fields":[{"name":"a","type":"string"},{"name":"b","type":"boolean"}]}"#,
    );
    let wrong_types = encode(
        &s,
        Value::Record(vec![
            ("a".into(), Value::String("hello world, not a long".into())),
            ("b".into(), Value::Boolean(true)),
        ]),
    );
    let bad = [trailing, truncated, wrong_types, Vec::new()];
    let mut sequence = Vec::new();
    for (g, b) in good.iter().zip(&bad) {
        sequence.push(g.clone());
        sequence.push(b.clone());
    }
    let expected = good.clone();
    let got = tokio::task::spawn_blocking(move || {
        let tx = sender();
        for r in &sequence {
            tx.send_to(r, addr).unwrap();
        }
        let got = recv_n(&dest, 4);
        assert_silent(&dest);
        got
    })
    .await
    .unwrap();
    assert_eq!(got, expected);
    let c = channel.counters().clone();
    wait_until("every datagram counted", T, || c.packets.load(Relaxed) == 8).await;
    channel.stop().await.unwrap();
    let stats = c.snapshot();
    assert_eq!(stats.invalid, 4);
    assert_eq!(stats.forwarded, 4);
    assert!(stats.last_invalid.is_some(), "the last error is kept");
    assert_eq!(archived_datums(dir.path(), "bad", EXAMPLE_SCHEMA), good);
}

/// Sends `records` in chunks of 250, each once the channel has received the
/// previous one, so nothing is lost to a full receive queue.
async fn send_paced(channel: &ChannelHandle, addr: SocketAddr, records: &[Vec<u8>]) {
    let tx = sender();
    let c = channel.counters().clone();
    for chunk in records.chunks(250) {
        let before = c.packets.load(Relaxed);
        for r in chunk {
            tx.send_to(r, addr).unwrap();
        }
        wait_until("the chunk to be received", T, || {
            c.packets.load(Relaxed) == before + chunk.len() as u64
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_are_readable_for_every_codec() {
    for codec in [Codec::Null, Codec::Deflate, Codec::Zstandard, Codec::Snappy] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = quiet_settings();
        settings.archive.codec = codec;
        settings.archive.flush_records = 100;
        let (channel, addr) = start("codec", EXAMPLE_SCHEMA, settings, dir.path());
        let records = example_records(1000);
        send_paced(&channel, addr, &records).await;
        channel.stop().await.unwrap();
        let files = archive_files(dir.path(), "codec");
        assert_eq!(files.len(), 1, "{codec:?}");
        let header = std::fs::read(&files[0]).unwrap();
        let codec_name = codec.as_str().as_bytes();
        assert!(
            header.windows(codec_name.len()).any(|w| w == codec_name),
            "{codec:?} named in the header"
        );
        assert_eq!(
            archived_datums(dir.path(), "codec", EXAMPLE_SCHEMA),
            records,
            "{codec:?}"
        );
        assert_python_reads(&files, &records, codec);
    }
}

/// Reads the files with Python's fastavro (an independent implementation)
/// and compares the `counter` field of every record.
fn assert_python_reads(files: &[std::path::PathBuf], records: &[Vec<u8>], codec: Codec) {
    let Some(python) = python_or_skip("the fastavro check") else {
        return;
    };
    let script = "import sys, fastavro\ncodec = sys.argv[1]\nfor p in sys.argv[2:]:\n    with open(p, 'rb') as f:\n        r = fastavro.reader(f)\n        assert r.codec == codec, (r.codec, codec)\n        for rec in r: print(rec['counter'])\n";
    let args: Vec<&std::ffi::OsStr> = std::iter::once(codec.as_str().as_ref())
        .chain(files.iter().map(|f| f.as_os_str()))
        .collect();
    let out = run_python(
        &python,
        script,
        &args,
        b"",
        &format!("fastavro failed on {codec:?}"),
    );
    let counters: Vec<usize> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        counters,
        (0..records.len()).collect::<Vec<_>>(),
        "fastavro read {codec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_spreads_records_over_files_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quiet_settings();
    settings.archive.flush_records = 50;
    settings.rotation.mode = RotationMode::Size;
    settings.rotation.threshold = 8 * 1024;
    let (channel, addr) = start("rot", EXAMPLE_SCHEMA, settings, dir.path());
    let records = example_records(2000);
    send_paced(&channel, addr, &records).await;
    let stats = stop_for_stats(channel).await;
    let files = archive_files(dir.path(), "rot");
    assert!(
        files.len() >= 5,
        "expected several files, got {}",
        files.len()
    );
    assert_eq!(stats.archive_files, files.len() as u64);
    assert_eq!(archived_datums(dir.path(), "rot", EXAMPLE_SCHEMA), records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_leaves_a_complete_file_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quiet_settings();
    // Bounds that are never reached: only the stop can write the block.
    settings.archive.flush_ms = 600_000;
    settings.archive.flush_records = 1_000_000;
    let (channel, addr) = start("stop", EXAMPLE_SCHEMA, settings, dir.path());
    let records = example_records(3000);
    send_paced(&channel, addr, &records).await;
    assert!(
        archive_files(dir.path(), "stop").is_empty(),
        "nothing written before the stop"
    );
    channel.stop().await.unwrap();
    assert_eq!(archived_datums(dir.path(), "stop", EXAMPLE_SCHEMA), records);
}

/// The datagrams are queued on the bound socket before its task starts, and
/// the stop comes before the task's first turn (one runtime thread, no
/// await in between): every record reaches the archive only through the
/// drain after the stop.
#[tokio::test(flavor = "current_thread")]
async fn stop_processes_datagrams_already_queued_in_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let spec = speedrelay::channel::ChannelSpec {
        name: "queued".into(),
        port: 0,
        schema_json: EXAMPLE_SCHEMA.into(),
        settings: quiet_settings(),
    };
    let bound = speedrelay::channel::BoundChannel::bind(spec, dir.path()).unwrap();
    let addr = bound.local_addr();
    let records = example_records(200);
    let tx = sender();
    for r in &records {
        tx.send_to(r, addr).unwrap();
    }
    let channel = bound.spawn().unwrap();
    let stats = stop_for_stats(channel).await;
    assert_eq!(stats.kernel_drops, 0, "all 200 fit the queue");
    assert_eq!(
        archived_datums(dir.path(), "queued", EXAMPLE_SCHEMA),
        records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_archive_directory_does_not_stop_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the channel's directory should be: no user, not
    // even root, can create files under it.
    std::fs::write(dir.path().join("blocked"), b"not a directory").unwrap();
    let mut settings = quiet_settings();
    settings.archive.flush_records = 10;
    let (channel, records, got) = flood_through("blocked", settings, dir.path(), 1000, 100).await;
    assert!(got == records, "forwarding continued");
    let c = channel.counters().clone();
    wait_until("an archive error", T, || c.archive_errors.load(Relaxed) > 0).await;
    let stats = c.snapshot();
    assert!(stats.archive_dropped > 0);
    let err = stats.archive_error.expect("the error is reported");
    assert!(err.contains("blocked"), "error names the path: {err}");
    channel.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_destination_is_counted_and_others_still_receive() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: the kernel answers with ICMP port unreachable.
    let closed = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![Destination::new(Ipv4Addr::LOCALHOST.into(), closed_port)];
    let (channel, records, got) = flood_through("refused", settings, dir.path(), 200, 1).await;
    assert!(got == records);
    let stats = stop_for_stats(channel).await;
    assert!(stats.send_errors > 0, "refusals are counted");
    assert!(stats.last_send_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_changes_decimation_without_losing_full_rate_records() {
    let dir = tempfile::tempdir().unwrap();
    let (full, df) = receiver();
    let (dec, dd) = receiver();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![df];
    settings.outputs.decimated = vec![dd];
    settings.decimation.enabled = true;
    settings.decimation.factor = 10;
    let (channel, addr) = start("live", EXAMPLE_SCHEMA, settings.clone(), dir.path());
    let records = example_records(400);
    let (first, second) = records.split_at(200);
    let (first, second) = (first.to_vec(), second.to_vec());
    let f1 = first.clone();
    let (full, dec) = tokio::task::spawn_blocking(move || {
        let got = send_and_receive(addr, &full, &f1, 50);
        // Downsample by 10: the last record of every ten.
        let every_tenth: Vec<Vec<u8>> = f1.iter().skip(9).step_by(10).cloned().collect();
        assert_eq!(recv_n(&dec, 20), every_tenth);
        assert_eq!(got, f1);
        (full, dec)
    })
    .await
    .unwrap();
    settings.decimation.factor = 2;
    channel.reconfigure(settings).unwrap();
    let s2 = second.clone();
    tokio::task::spawn_blocking(move || {
        let got = send_and_receive(addr, &full, &s2, 50);
        assert_eq!(got, s2);
        // By 2 from the first record after the change.
        let every_second: Vec<Vec<u8>> = s2.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(recv_n(&dec, 100), every_second);
        assert_silent(&dec);
    })
    .await
    .unwrap();
    let stats = stop_for_stats(channel).await;
    assert_eq!(stats.decimated_sent, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_receive_buffer_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quiet_settings();
    // The smallest buffer the kernel allows, and no task reading yet: the
    // queue overflows for sure.
    settings.socket.recv_buffer = 1;
    let spec = speedrelay::channel::ChannelSpec {
        name: "drops".into(),
        port: 0,
        schema_json: EXAMPLE_SCHEMA.into(),
        settings,
    };
    let bound = speedrelay::channel::BoundChannel::bind(spec, dir.path()).unwrap();
    let addr = bound.local_addr();
    let tx = sender();
    let records = example_records(500);
    for r in &records {
        tx.send_to(r, addr).unwrap();
    }
    let channel = bound.spawn().unwrap();
    let c = channel.counters().clone();
    wait_until("the queued datagrams", T, || c.packets.load(Relaxed) > 0).await;
    let queued = c.packets.load(Relaxed);
    // The kernel reports its drop count with the next datagram it queues.
    tx.send_to(&records[0], addr).unwrap();
    wait_until("one more datagram", T, || c.packets.load(Relaxed) > queued).await;
    channel.stop().await.unwrap();
    let stats = c.snapshot();
    assert!(stats.kernel_drops > 0, "drops reported: {stats:?}");
    assert_eq!(
        stats.packets + stats.kernel_drops,
        501,
        "every datagram is either received or counted as dropped: {stats:?}"
    );
}

/// When the disk falls behind, whole blocks are dropped and counted rather
/// than slowing reception: the archive task's one blocking thread is held,
/// so its first block waits, 64 more fill the queue and the rest are
/// dropped; once the disk is back, the queued ones are written.
#[test]
fn blocks_beyond_a_full_archive_queue_are_dropped_and_counted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = quiet_settings();
        // One record per block.
        settings.archive.flush_records = 1;
        let (channel, addr) = start("behind", EXAMPLE_SCHEMA, settings, dir.path());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || held.recv());
        let records = example_records(100);
        let tx = sender();
        let c = channel.counters().clone();
        for r in &records {
            tx.send_to(r, addr).unwrap();
        }
        wait_until("every record received", T, || {
            c.packets.load(Relaxed) == 100
        })
        .await;
        // At most 65 blocks are in the archive's hands: the one it took
        // and the 64 queued; when it took the first depends on scheduling.
        let dropped = c.archive_dropped.load(Relaxed);
        assert!(dropped >= 100 - 65, "{dropped} dropped");
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        channel.stop().await.unwrap();
        assert_eq!(c.kernel_drops.load(Relaxed), 0);
        assert_eq!(c.archive_dropped.load(Relaxed), dropped, "none after");
        // Every record is either archived, in order, or counted dropped.
        let archived = archived_datums(dir.path(), "behind", EXAMPLE_SCHEMA);
        assert_eq!(archived.len() as u64 + dropped, 100);
        assert_eq!(archived[..64], records[..64]);
        let mut rest = records.iter();
        assert!(
            archived.iter().all(|a| rest.any(|r| r == a)),
            "archived in the order received"
        );
    });
}
