//! Crash safety (SPEC §4, §6): the real binary is killed with SIGKILL at
//! random points while channels stream and registrations come and go, 20
//! times, and restarted each time. After every kill:
//!
//! - the registry opens and holds exactly the acknowledged channels (a
//!   request cut off by the kill may have gone either way);
//! - every archive file passes `speedrelay verify`, or is repaired by
//!   `verify --repair`;
//! - every byte the relay reported written (`archive_bytes`) just before
//!   the kill is in the run's files afterwards;
//! - the files of a run hold a prefix of what was sent to it, in order,
//!   nothing repeated;
//! - each run starts new files, and a file from an earlier run (even one
//!   with a torn tail) is never written to again.
//!
//! How many records a kill loses, and how old the oldest of them is, are
//! figures, measured by `benches/run.sh crash` (benches/crash.rs).
//! Records carry their sequence number (the `counter` field); each round
//! is printed (`cargo test --test it crash:: -- --nocapture`).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::*;
use serde_json::json;
use speedrelay::registry::Registry;
use speedrelay::verify;

const ROUNDS: usize = 20;
const STREAMS: usize = 3;
/// The archive block flush interval of the relay under test.
const FLUSH_MS: u64 = 50;
/// Gap between two records of one paced sender.
const PACE: Duration = Duration::from_millis(1);

/// One HTTP exchange that may fail (the relay is killed under it): the
/// status, or None when the connection broke before an answer.
fn try_http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A small xorshift generator: the kill points vary per run and the seed is
/// printed, so a failing run can be replayed with CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// What one paced sender sent in one round: record `start + i` at `at[i]`.
struct Sent {
    start: u64,
    at: Vec<Instant>,
}

fn pace_sender(port: u16, start: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Sent> {
    std::thread::spawn(move || {
        let s = schema(EXAMPLE_SCHEMA);
        let tx = sender();
        let mut at = Vec::new();
        let mut seq = start;
        while !stop.load(Ordering::Relaxed) {
            let datum = encode(&s, example_value(&s, seq));
            // A refused send (the relay is gone) is simply not counted.
            let _ = tx.send_to(&datum, (Ipv4Addr::LOCALHOST, port));
            at.push(Instant::now());
            seq += 1;
            std::thread::sleep(PACE);
        }
        Sent { start, at }
    })
}

/// Registers and removes channels one after another until stopped. The
/// names whose last acknowledged operation was a registration are
/// committed; the one cut off by the kill is uncertain.
fn churn_registrations(
    api: SocketAddr,
    round: usize,
    committed: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("reg{round}x{i}");
            let body = json!({"name": name, "port": free_port(), "schema": schema}).to_string();
            match try_http(api, "POST", "/api/v1/channels", Some(&body)) {
                Some(201) => {
                    committed.lock().unwrap().insert(name.clone());
                }
                Some(s) => panic!("registration of {name} answered {s}"),
                None => return Some(name),
            }
            // Every other channel stays, so the registry grows a little.
            if i % 2 == 0 {
                match try_http(api, "DELETE", &format!("/api/v1/channels/{name}"), None) {
                    Some(200) => {
                        committed.lock().unwrap().remove(&name);
                    }
                    Some(s) => panic!("removal of {name} answered {s}"),
                    None => return Some(name),
                }
            }
            i += 1;
        }
        None
    })
}

fn counter_of(v: &Value) -> u64 {
    match v {
        Value::Record(fields) => fields
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("counter", Value::Int(n)) => Some(*n as u64),
                _ => None,
            })
            .expect("a counter field"),
        other => panic!("not a record: {other:?}"),
    }
}

/// The sequence numbers in a healthy archive file, in order.
fn sequence_numbers(path: &Path) -> Vec<u64> {
    let file = std::fs::File::open(path).unwrap();
    apache_avro::Reader::new(std::io::BufReader::new(file))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|v| counter_of(&v.unwrap_or_else(|e| panic!("{}: {e}", path.display()))))
        .collect()
}

/// `speedrelay verify [--repair] FILE`: the exit code.
fn verify_cli(path: &Path, repair: bool) -> i32 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.arg("verify");
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.arg(path).output().unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn sigkill_at_random_points_keeps_what_was_written_and_never_appends() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), FLUSH_MS as u32);
    let data = dir.path().join("data");

    let streams: Vec<(String, u16)> = (0..STREAMS)
        .map(|i| (format!("stream{i}"), free_port()))
        .collect();
    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next_seq = vec![0u64; STREAMS];
    // Every file checked so far and its bytes: none may change afterwards.
    let mut known: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    // A file torn on purpose, to be checked untouched after the next run.
    let mut torn_on_purpose: Option<(PathBuf, Vec<u8>)> = None;
    // Records archived per stream over every round.
    let mut archived = [0usize; STREAMS];

    for round in 0..ROUNDS {
        let relay = spawn_relay(&config, &data, &[]);
        let spawned = Instant::now();
        let api = relay.api;
        if round == 0 {
            for (name, port) in &streams {
                let (status, body) = register_example(api, name, *port, json!({}));
                assert_eq!(status, 201, "{body}");
                committed.lock().unwrap().insert(name.clone());
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = streams
            .iter()
            .zip(&next_seq)
            .map(|((_, port), &start)| pace_sender(*port, start, stop.clone()))
            .collect();
        let registrar = churn_registrations(api, round, committed.clone(), stop.clone());

        std::thread::sleep(Duration::from_millis(rng.between(150, 700)));
        // What the relay says it has written to its files so far: a kill
        // must not take any of it back.
        let written: Vec<u64> = streams
            .iter()
            .map(|(name, _)| {
                get_channel(api, name)["stats"]["archive_bytes"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let kill_at = Instant::now();
        relay.kill9();
        stop.store(true, Ordering::Relaxed);
        let sent: Vec<Sent> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        let uncertain = registrar.join().unwrap();

        // The registry opens and holds exactly the acknowledged channels.
        let names: BTreeSet<String> = {
            let registry = Registry::open(&speedrelay::engine::registry_path(&data).unwrap())
                .unwrap_or_else(|e| panic!("round {round}: the registry does not open: {e}"));
            registry
                .list()
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        let mut expected = committed.lock().unwrap().clone();
        if let Some(name) = &uncertain {
            // Cut off by the kill: either outcome is right. Settle it.
            if names.contains(name) {
                expected.insert(name.clone());
            } else {
                expected.remove(name);
            }
            *committed.lock().unwrap() = expected.clone();
        }
        assert_eq!(names, expected, "round {round}: registry content");

        // Files of earlier runs are untouched, a torn one included.
        for (path, bytes) in &known {
            if path.exists() {
                assert!(
                    std::fs::read(path).unwrap() == *bytes,
                    "round {round}: {} was written to after a restart",
                    path.display()
                );
            }
        }
        if let Some((path, bytes)) = torn_on_purpose.take() {
            assert!(
                std::fs::read(&path).unwrap() == bytes,
                "round {round}: something was appended after a torn tail"
            );
            assert_eq!(verify_cli(&path, false), 1, "torn is reported");
            assert_eq!(verify_cli(&path, true), 0, "and repaired");
            assert!(verify::scan(&path).unwrap().is_healthy());
            known.insert(path.clone(), std::fs::read(&path).unwrap());
        }

        let mut line = format!(
            "round {round:2}: killed after {} ms, registry {} channels{};",
            (kill_at - spawned).as_millis(),
            names.len(),
            if uncertain.is_some() {
                " (one request cut off)"
            } else {
                ""
            }
        );
        for (i, (name, _)) in streams.iter().enumerate() {
            let new_files: Vec<PathBuf> = archive_files(&data, name)
                .into_iter()
                .filter(|p| !known.contains_key(p))
                .collect();
            let on_disk: u64 = new_files
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert!(
                on_disk >= written[i],
                "round {round} {name}: {on_disk} bytes in this run's files, \
                 {} reported written before the kill",
                written[i]
            );
            let mut torn = 0;
            let mut seqs = Vec::new();
            for path in &new_files {
                let scanned = verify::scan(path)
                    .unwrap_or_else(|e| panic!("{}: not an archive: {e}", path.display()));
                if !scanned.is_healthy() {
                    torn += 1;
                    assert_eq!(verify_cli(path, true), 0, "{} repaired", path.display());
                    if !path.exists() {
                        continue;
                    }
                    assert!(verify::scan(path).unwrap().is_healthy());
                }
                seqs.extend(sequence_numbers(path));
                known.insert(path.clone(), std::fs::read(path).unwrap());
            }
            // A prefix of what this run was sent, in order, nothing repeated.
            // With the check above that no earlier file changed, this is
            // "each run starts new files": this run's records are only in
            // files it created.
            let s = &sent[i];
            let prefix: Vec<u64> = (s.start..s.start + seqs.len() as u64).collect();
            assert_eq!(seqs, prefix, "round {round} {name}: not a prefix");
            let before_kill = s.at.iter().filter(|t| **t < kill_at).count();
            assert!(
                seqs.len() <= s.at.len(),
                "round {round} {name}: more archived than sent"
            );
            archived[i] += seqs.len();
            line.push_str(&format!(
                " {name} sent {before_kill} archived {} files {} torn {torn};",
                seqs.len(),
                new_files.len()
            ));
            // The next run continues the numbering after everything sent.
            next_seq[i] = s.start + s.at.len() as u64;
        }
        eprintln!("{line}");

        // Every few rounds, tear the newest file of a stream by hand (as a
        // kill inside a write would): the next run must leave it alone.
        if round % 5 == 2
            && let Some(path) = archive_files(&data, &streams[0].0).pop()
        {
            let len = std::fs::metadata(&path).unwrap().len();
            let scanned = verify::scan(&path).unwrap();
            if scanned.blocks > 0 {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(len - 3).unwrap();
                known.remove(&path);
                torn_on_purpose = Some((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }

    // After the last kill, a clean start still relays and has every channel.
    let relay = spawn_relay(&config, &data, &[]);
    let (_, list) = http(relay.api, "GET", "/api/v1/channels", &[], None);
    let names: BTreeSet<String> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, *committed.lock().unwrap());
    assert!(relay.terminate().success());

    // Blocks reached the files at all: every stream has records archived.
    for (i, (name, _)) in streams.iter().enumerate() {
        assert!(
            archived[i] > 0,
            "{name}: nothing archived in {ROUNDS} rounds"
        );
    }
}
