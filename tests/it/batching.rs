//! The batched receive path changes nothing but speed: the same input, sent
//! to a channel that takes one datagram per system call and to one that
//! takes up to 64, gives byte-identical full-rate and decimated outputs, the
//! same archived records and the same counters, including batches that mix
//! valid and invalid datagrams.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use speedrelay::channel::{BoundChannel, ChannelSpec};
use speedrelay::config::Algorithm;

const T: Duration = Duration::from_secs(20);

/// 600 datagrams: example records with an invalid one every 5th (truncated,
/// trailing byte, empty, or a string length past the end), so every
/// 64-datagram batch holds both kinds.
fn mixed_input() -> (Vec<Vec<u8>>, usize) {
    let records = example_records(480);
    let mut out = Vec::new();
    let mut valid = 0;
    for (i, r) in records.iter().enumerate() {
        out.push(r.clone());
        valid += 1;
        if i % 4 == 3 {
            let bad = match (i / 4) % 4 {
                0 => r[..r.len() - 1].to_vec(),
                1 => [r.as_slice(), &[0]].concat(),
                2 => Vec::new(),
                // time (a long) then a string whose length is 63 bytes past the end.
                _ => [&r[..9], &[0x7e][..]].concat(),
            };
            out.push(bad);
        }
    }
    (out, valid)
}

/// Everything one run produced.
struct Outputs {
    full_rate: Vec<Vec<u8>>,
    decimated: Vec<Vec<u8>>,
    archived: Vec<Vec<u8>>,
    packets: u64,
    invalid: u64,
    forwarded: u64,
    decimated_sent: u64,
}

/// Queues the whole input in the channel's socket before its task starts,
/// so the first receive finds a full queue and a limit of 64 really takes
/// 64 at a time; then runs the channel until it has counted every datagram.
async fn run(algorithm: Algorithm, limit: usize, input: &[Vec<u8>], dir: &Path) -> Outputs {
    let (full, full_dest) = receiver();
    let (dec, dec_dest) = receiver();
    let mut settings = quiet_settings();
    settings.outputs.full_rate = vec![full_dest];
    settings.outputs.decimated = vec![dec_dest];
    settings.decimation.enabled = true;
    settings.decimation.algorithm = algorithm;
    settings.decimation.factor = 3;
    // Blocks are cut by count only, so both runs cut them at the same records.
    settings.archive.flush_records = 50;
    settings.archive.flush_ms = 60_000;
    let spec = ChannelSpec {
        name: "batching".into(),
        port: 0,
        schema_json: EXAMPLE_SCHEMA.into(),
        settings,
    };
    let bound = BoundChannel::bind(spec, dir)
        .expect("channel binds")
        .with_batch_limit(limit);
    let addr: SocketAddr = bound.local_addr();
    let tx = sender();
    for d in input {
        tx.send_to(d, addr).unwrap();
    }
    let channel = bound.spawn().expect("channel starts");
    let c = channel.counters().clone();
    let total = input.len() as u64;
    wait_until("every datagram counted", T, || {
        c.packets.load(Relaxed) == total
    })
    .await;
    channel.stop().await.unwrap();
    let s = c.snapshot();
    assert_eq!(s.kernel_drops, 0, "the input must fit the receive queue");
    Outputs {
        full_rate: drain(&full),
        decimated: drain(&dec),
        archived: archived_datums(dir, "batching", EXAMPLE_SCHEMA),
        packets: s.packets,
        invalid: s.invalid,
        forwarded: s.forwarded,
        decimated_sent: s.decimated_sent,
    }
}

/// Every datagram the socket holds, until it stays silent for 200 ms.
fn drain(sock: &UdpSocket) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_one_and_batch_of_64_give_identical_outputs_and_archives() {
    let (input, valid) = mixed_input();
    let expected_valid: Vec<Vec<u8>> = example_records(480);
    for algorithm in [
        Algorithm::Downsample,
        Algorithm::Average,
        Algorithm::Minmax,
        Algorithm::Rms,
    ] {
        let one_dir = tempfile::tempdir().unwrap();
        let many_dir = tempfile::tempdir().unwrap();
        let one = run(algorithm, 1, &input, one_dir.path()).await;
        let many = run(algorithm, 64, &input, many_dir.path()).await;

        // Each run is right on its own, so equality is not two equal failures.
        assert_eq!(one.full_rate, expected_valid, "{algorithm:?}: full rate");
        assert_eq!(one.archived, expected_valid, "{algorithm:?}: archive");
        assert_eq!(one.invalid, (input.len() - valid) as u64);
        assert_eq!(one.forwarded, valid as u64);
        assert!(
            !one.decimated.is_empty(),
            "{algorithm:?}: no decimated output"
        );
        assert_eq!(one.decimated_sent, one.decimated.len() as u64);

        for (what, same) in [
            ("full-rate output", one.full_rate == many.full_rate),
            ("decimated output", one.decimated == many.decimated),
            ("archived records", one.archived == many.archived),
        ] {
            assert!(same, "{algorithm:?}: batch 1 and batch 64 differ in {what}");
        }
        assert_eq!(
            (one.packets, one.invalid, one.forwarded, one.decimated_sent),
            (
                many.packets,
                many.invalid,
                many.forwarded,
                many.decimated_sent
            ),
            "{algorithm:?}: counters differ"
        );
    }
}
