//! Load on the real binary: while channels are flooded as fast as this
//! machine can send, every API request is answered correctly and a paced
//! channel next to them loses nothing; and registering and removing
//! channels over and over leaks no descriptor, socket, task or memory.
//!
//! Only correctness is asserted here. How fast the API answers under the
//! flood (p50/p99/max) and what a register/remove cycle costs are figures:
//! `benches/run.sh load api` and `benches/run.sh load churn`
//! (benches/load.rs) measure them on a release build.

use crate::common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);
/// Register/remove cycles measured by the leak test (after 100 of warm-up).
const CYCLES: u64 = 600;

/// Sends one record as fast as the kernel takes it, from one thread, until
/// `stop` or FLOOD has passed.
fn flood(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let datum = example_records(1).remove(0);
        let tx = sender();
        let deadline = Instant::now() + FLOOD;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for _ in 0..256 {
                let _ = tx.send_to(&datum, (Ipv4Addr::LOCALHOST, port));
            }
        }
    })
}

#[test]
fn the_api_answers_and_a_paced_channel_loses_nothing_while_others_flood() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 100);
    let api = relay.api;

    // Two flooded channels, each forwarding to a socket nobody reads.
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let to_sink = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": sink_port}}});
    let flooded: Vec<(String, u16)> = (0..2)
        .map(|i| {
            let port = free_port();
            let name = format!("flood{i}");
            assert_eq!(register_example(api, &name, port, to_sink.clone()).0, 201);
            (name, port)
        })
        .collect();
    // The paced channel: 2,000 records/s, far under its capacity.
    let (dest, d) = receiver();
    let paced_port = free_port();
    let to_dest = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    assert_eq!(register_example(api, "paced", paced_port, to_dest).0, 201);
    let paced_n = (FLOOD.as_secs_f64() * 2000.0) as u64;
    let records = example_records(paced_n);

    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = flooded
        .iter()
        .map(|(_, port)| flood(*port, stop.clone()))
        .collect();
    let receiving = {
        let n = records.len();
        std::thread::spawn(move || {
            dest.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            recv_n(&dest, n)
        })
    };
    let pacing = {
        let records = records.clone();
        std::thread::spawn(move || {
            let tx = sender();
            let start = Instant::now();
            for (i, r) in records.iter().enumerate() {
                // Absolute schedule, so a late wake-up does not slow the rate.
                let due = start + Duration::from_micros(500 * i as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                tx.send_to(r, (Ipv4Addr::LOCALHOST, paced_port)).unwrap();
            }
        })
    };

    // The control plane under that load: a health prober and a client
    // registering and removing channels, side by side; every answer right.
    let until = Instant::now() + FLOOD;
    let prober = std::thread::spawn(move || {
        let mut answered = 0;
        while Instant::now() < until {
            let (status, body) = http(api, "GET", "/api/v1/health", &[], None);
            assert_eq!(status, 200);
            assert_eq!(body["status"], "ok");
            answered += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        answered
    });
    let schema: Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let mut cycles = 0;
    while Instant::now() < until {
        let name = format!("load{cycles}");
        let body = json!({"name": name, "port": free_port(), "schema": schema});
        let (status, answer) = post_json(api, "/api/v1/channels", body.to_string().as_bytes());
        assert_eq!(status, 201, "{answer}");
        assert_eq!(get_channel(api, &name)["status"], "active");
        let path = format!("/api/v1/channels/{name}");
        let (status, _) = http(api, "DELETE", &path, &[], None);
        assert_eq!(status, 200);
        assert_eq!(http(api, "GET", &path, &[], None).0, 404);
        cycles += 1;
    }
    let answered = prober.join().unwrap();
    assert!(
        answered > 0 && cycles > 0,
        "the API answered under the flood"
    );
    pacing.join().unwrap();
    let got = receiving.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    for (name, _) in &flooded {
        let stats = &get_channel(api, name)["stats"];
        assert!(stats["packets"].as_u64() > Some(0), "{name}: {stats}");
    }

    // The paced channel lost nothing: forwarded in order, all archived.
    assert!(
        got == records,
        "the paced channel's destination got every record in order"
    );
    let paced = get_channel(api, "paced");
    assert_eq!(paced["stats"]["packets"], paced_n, "{paced}");
    assert_eq!(paced["stats"]["kernel_drops"], 0, "{paced}");
    assert!(relay.terminate().success());
    assert!(
        archived_datums(&data, "paced", EXAMPLE_SCHEMA) == records,
        "the paced channel's archive holds every record"
    );
}

#[test]
fn registration_churn_leaks_no_descriptor_socket_task_or_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let (dest, d) = receiver();
    let to_dest = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    // The same name and port every time: each removal must free both.
    let port = free_port();
    let record = example_records(1).remove(0);
    let tx = sender();
    let cycle = |i: u64| {
        let (status, body) = register_example(api, "churn", port, to_dest.clone());
        assert_eq!(status, 201, "cycle {i}: {body}");
        // Every 10th cycle carries a record: the task runs, forwards and
        // opens an archive file, which the removal must close.
        if i.is_multiple_of(10) {
            tx.send_to(&record, (Ipv4Addr::LOCALHOST, port)).unwrap();
            assert_eq!(recv_n(&dest, 1)[0], record, "cycle {i}");
        }
        let (status, body) = http(api, "DELETE", "/api/v1/channels/churn", &[], None);
        assert_eq!(status, 200, "cycle {i}: {body}");
    };
    // Warm-up: allocator arenas, the registry's pages and the runtime's
    // blocking threads reach their working size.
    for i in 0..100 {
        cycle(i);
    }
    let (fds0, rss0, threads0) = (relay.fd_count(), relay.rss_kib(), relay.thread_count());
    assert!(fds0 > 0 && rss0 > 0 && threads0 > 0);
    for i in 0..CYCLES {
        cycle(i);
    }
    // The blocking pool's idle threads time out after 10 s; compare fds
    // and memory now, threads with a bound.
    let (fds1, rss1, threads1) = (relay.fd_count(), relay.rss_kib(), relay.thread_count());
    // +2: the API connection of the last request may still be closing.
    assert!(fds1 <= fds0 + 2, "descriptors leaked: {fds0} -> {fds1}");
    assert!(
        threads1 <= threads0 + 8,
        "threads: {threads0} -> {threads1}"
    );
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew by {} KiB",
        rss1.saturating_sub(rss0)
    );
    // Every closed archive file is whole: the removals closed them.
    let files = archive_files(&data, "churn");
    assert_eq!(
        files.len() as u64,
        (100 + CYCLES).div_ceil(10),
        "one per record"
    );
    for f in &files {
        let report = speedrelay::verify::scan(f).unwrap();
        assert!(
            report.is_healthy() && report.records == 1,
            "{}",
            f.display()
        );
    }
    let (_, list) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(list["channels"], json!([]));
    // The port is free for anyone once the relay stops.
    assert!(relay.terminate().success());
    assert!(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok());
}
