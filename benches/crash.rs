//! What a `kill -9` costs: the real binary (release build) is killed at a
//! random point 150-700 ms into each run while three channels each receive
//! about 1,000 records/s, then restarted, ROUNDS times (default 20). Per
//! round and stream it prints the records sent before the kill, archived
//! and lost, and how long before the kill the oldest lost record was sent;
//! then the worst case against the flush interval (`archive.flush_ms`, 50
//! here). tests/it/crash.rs asserts what must hold after every kill; this
//! measures how much of the last flush interval is lost.
//!
//! `benches/run.sh crash [ROUNDS]`, inside a private network namespace (the
//! bench refuses to run outside one). `CRASH_SEED` replays the kill delays.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::*;
use serde_json::json;

const STREAMS: usize = 3;
const FLUSH_MS: u64 = 50;
const PACE: Duration = Duration::from_millis(1);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if !in_private_netns() {
        eprintln!("crash bench: run it through benches/run.sh crash (a private network namespace)");
        return;
    }
    let rounds: usize = args.first().map_or(20, |v| v.parse().expect("ROUNDS"));
    let mut seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("CRASH_SEED={seed}");
    let mut between = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };

    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), FLUSH_MS as u32);
    let data = dir.path().join("data");
    let streams: Vec<(String, u16)> = (0..STREAMS)
        .map(|i| (format!("stream{i}"), free_port()))
        .collect();
    let mut next = [0u64; STREAMS];
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let (mut lost_all, mut sent_all) = (0usize, 0usize);
    let mut lost_per_kill = Vec::new();
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        let relay = spawn_relay(&config, &data, &[]);
        if round == 0 {
            for (name, port) in &streams {
                assert_eq!(register_example(relay.api, name, *port, json!({})).0, 201);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = streams
            .iter()
            .zip(next)
            .map(|((_, port), start)| pace(*port, start, stop.clone()))
            .collect();
        std::thread::sleep(Duration::from_millis(between(150, 700)));
        let kill_at = Instant::now();
        relay.kill9();
        stop.store(true, Ordering::Relaxed);
        let sent: Vec<Vec<Instant>> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        let mut line = format!("round {round:2}:");
        for (i, (name, _)) in streams.iter().enumerate() {
            let new: Vec<PathBuf> = archive_files(&data, name)
                .into_iter()
                .filter(|p| !seen.contains(p))
                .collect();
            let mut archived = 0usize;
            for path in &new {
                speedrelay::verify::repair(path).expect("repairable");
                if path.exists() {
                    archived += counters(path).len();
                }
                seen.insert(path.clone());
            }
            let before_kill = sent[i].iter().filter(|t| **t < kill_at).count();
            let lost = before_kill.saturating_sub(archived);
            let age = sent[i]
                .get(archived)
                .filter(|t| **t < kill_at)
                .map_or(Duration::ZERO, |t| kill_at - *t);
            worst = worst.max(age);
            lost_all += lost;
            sent_all += before_kill;
            lost_per_kill.push(lost);
            line.push_str(&format!(
                " {name} sent {before_kill} archived {archived} lost {lost} ({} ms);",
                age.as_millis()
            ));
            next[i] += sent[i].len() as u64;
        }
        println!("{line}");
    }
    let max_lost = lost_per_kill.iter().max().copied().unwrap_or(0);
    println!(
        "{rounds} kills x {STREAMS} streams: {lost_all} of {sent_all} records lost \
         (0-{max_lost} per stream per kill, mean {:.1}); the oldest lost record was sent \
         {} ms before its kill (flush interval {FLUSH_MS} ms)",
        lost_all as f64 / lost_per_kill.len().max(1) as f64,
        worst.as_millis()
    );
}

/// Sends records `start..` of example.avsc one per PACE until stopped;
/// returns when each was sent.
fn pace(port: u16, start: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Instant>> {
    std::thread::spawn(move || {
        let s = schema(EXAMPLE_SCHEMA);
        let tx = sender();
        let mut at = Vec::new();
        let mut seq = start;
        while !stop.load(Ordering::Relaxed) {
            let _ = tx.send_to(
                &encode(&s, example_value(&s, seq)),
                (Ipv4Addr::LOCALHOST, port),
            );
            at.push(Instant::now());
            seq += 1;
            std::thread::sleep(PACE);
        }
        at
    })
}

/// The `counter` field of every record of a healthy file.
fn counters(path: &Path) -> Vec<i32> {
    let file = std::fs::File::open(path).unwrap();
    apache_avro::Reader::new(std::io::BufReader::new(file))
        .unwrap()
        .map(|v| match v.unwrap() {
            Value::Record(fields) => fields
                .into_iter()
                .find_map(|(k, v)| match (k.as_str(), v) {
                    ("counter", Value::Int(n)) => Some(n),
                    _ => None,
                })
                .unwrap(),
            other => panic!("not a record: {other:?}"),
        })
        .collect()
}
