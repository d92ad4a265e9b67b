//! The relay (release build, the real binary) under load: the figures
//! tests/it/load.rs and tests/it/send.rs leave out because they are speed, not
//! correctness.
//!
//! - `api [SECS]` (default 10): two channels flooded from two sender
//!   threads, a third paced at 2,000 records/s, a prober doing
//!   `GET /health` every 5 ms and a client registering and removing
//!   channels in a loop; prints p50/p99/max of each request kind, the
//!   flood's rates and kernel drops, and what the paced channel lost.
//! - `churn [CYCLES]` (default 10,000): register and remove one channel
//!   (same name and port; every 10th cycle carries a record); prints the
//!   time per cycle and fds, RSS, threads and registry size before/after.
//! - `send`: `speedrelay send` to a socket that is never read, paced
//!   (1,000, 10,000, 100,000 records/s) and flat out: asked and achieved
//!   rate.
//!
//! `benches/run.sh load MODE [ARG]`: inside a private network namespace
//! (the bench refuses to run outside one). Bounded in time and count.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if !in_private_netns() {
        eprintln!("load bench: run it through benches/run.sh load (a private network namespace)");
        return;
    }
    let arg = |default: u64| {
        args.get(1)
            .map_or(default, |v| v.parse().expect("a number"))
    };
    match args.first().map(String::as_str) {
        Some("api") | None => api_under_flood(arg(10)),
        Some("churn") => churn(arg(10_000)),
        Some("send") => send(),
        Some(other) => eprintln!("load bench: unknown mode {other} (api, churn, send)"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    );
}

/// Sends one record as fast as the kernel takes it, for `secs`; returns how
/// many were sent.
fn flood(port: u16, secs: f64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let datum = example_records(1).remove(0);
        let tx = sender();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while sent < 50_000_000 && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for _ in 0..256 {
                if tx.send_to(&datum, (Ipv4Addr::LOCALHOST, port)).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    })
}

fn api_under_flood(secs: u64) {
    let secs = secs as f64;
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let to_sink = json!({"outputs": {"full_rate": {"address": "127.0.0.1",
        "port": sink.local_addr().unwrap().port()}}});
    let flooded: Vec<(String, u16)> = (0..2)
        .map(|i| {
            let port = free_port();
            let name = format!("flood{i}");
            assert_eq!(register_example(api, &name, port, to_sink.clone()).0, 201);
            (name, port)
        })
        .collect();
    let (dest, d) = receiver();
    let paced_port = free_port();
    let to_dest = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    assert_eq!(register_example(api, "paced", paced_port, to_dest).0, 201);
    let paced_n = (secs * 2000.0) as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = flooded
        .iter()
        .map(|(_, port)| flood(*port, secs, stop.clone()))
        .collect();
    let receiving = std::thread::spawn(move || {
        dest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        while got < paced_n && dest.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let pacing = std::thread::spawn(move || {
        let record = example_records(1).remove(0);
        let tx = sender();
        let start = Instant::now();
        for i in 0..paced_n {
            let due = start + Duration::from_micros(500 * i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = tx.send_to(&record, (Ipv4Addr::LOCALHOST, paced_port));
        }
    });
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let prober = std::thread::spawn(move || {
        let mut health = Vec::new();
        while Instant::now() < until {
            let t = Instant::now();
            let (status, _) = http(api, "GET", "/api/v1/health", &[], None);
            health.push(t.elapsed());
            assert_eq!(status, 200);
            std::thread::sleep(Duration::from_millis(5));
        }
        health
    });
    let schema: Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let (mut post, mut delete) = (Vec::new(), Vec::new());
    let mut i = 0;
    while Instant::now() < until {
        let body = json!({"name": format!("load{i}"), "port": free_port(), "schema": schema});
        let t = Instant::now();
        let (status, answer) = post_json(api, "/api/v1/channels", body.to_string().as_bytes());
        post.push(t.elapsed());
        assert_eq!(status, 201, "{answer}");
        let t = Instant::now();
        let path = format!("/api/v1/channels/load{i}");
        assert_eq!(http(api, "DELETE", &path, &[], None).0, 200);
        delete.push(t.elapsed());
        i += 1;
    }
    let health = prober.join().unwrap();
    pacing.join().unwrap();
    let got = receiving.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = floods.into_iter().map(|t| t.join().unwrap()).collect();

    println!("== the API while two channels are flooded for {secs} s");
    summary("GET /health under load", health);
    summary("POST /channels under load", post);
    summary("DELETE /channels/{name} under load", delete);
    for ((name, _), sent) in flooded.iter().zip(&sent) {
        let stats = &get_channel(api, name)["stats"];
        let packets = stats["packets"].as_f64().unwrap_or(0.0);
        println!(
            "{name}: sent {sent} ({:.0}/s), received {packets} ({:.0}/s), kernel drops {}",
            *sent as f64 / secs,
            packets / secs,
            stats["kernel_drops"]
        );
    }
    let paced = &get_channel(api, "paced")["stats"];
    println!(
        "paced: sent {paced_n}, received by the relay {}, forwarded and received {got}, kernel drops {}",
        paced["packets"], paced["kernel_drops"]
    );
    relay.stop();
}

fn churn(cycles: u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (dest, d) = receiver();
    let to_dest = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    let port = free_port();
    let record = example_records(1).remove(0);
    let tx = sender();
    let cycle = |i: u64| {
        assert_eq!(register_example(api, "churn", port, to_dest.clone()).0, 201);
        if i.is_multiple_of(10) {
            tx.send_to(&record, (Ipv4Addr::LOCALHOST, port)).unwrap();
            assert_eq!(recv_n(&dest, 1)[0], record);
        }
        assert_eq!(
            http(api, "DELETE", "/api/v1/channels/churn", &[], None).0,
            200
        );
    };
    for i in 0..100 {
        cycle(i);
    }
    let (fds0, rss0, threads0) = (relay.fd_count(), relay.rss_kib(), relay.thread_count());
    let start = Instant::now();
    for i in 0..cycles {
        cycle(i);
    }
    let took = start.elapsed();
    let (fds1, rss1, threads1) = (relay.fd_count(), relay.rss_kib(), relay.thread_count());
    let registry = std::fs::metadata(speedrelay::engine::registry_path(&data).unwrap())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{cycles} register/remove cycles in {:.1} s ({:.2} ms each): fds {fds0} -> {fds1}, \
         RSS {rss0} -> {rss1} KiB, threads {threads0} -> {threads1}, registry file {} KiB",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / cycles as f64,
        registry / 1024
    );
    relay.stop();
}

/// `speedrelay send` at several rates to a socket nobody reads: the rate it
/// achieves against the rate asked (its own summary line).
fn send() {
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(8 << 20);
    let port = sink.local_addr().unwrap().port().to_string();
    let schema = repo_file("config/agents/example.avsc");
    println!("== speedrelay send, example.avsc, to a socket that is never read");
    for (rate, count) in [
        (1_000, 3_000),
        (10_000, 30_000),
        (100_000, 300_000),
        (0, 1_000_000),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args(["send", "--port", &port, "--schema"])
            .arg(&schema)
            .args(["--rate", &rate.to_string(), "--count", &count.to_string()])
            .output()
            .expect("send runs");
        let said = String::from_utf8_lossy(&out.stdout);
        let asked = if rate == 0 {
            "flat out".to_string()
        } else {
            format!("{rate}/s")
        };
        println!("asked {asked}: {}", said.trim());
    }
}
