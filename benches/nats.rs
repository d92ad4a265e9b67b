//! The NATS output (`outputs.nats`, feature `cluster`) against a local
//! nats-server, with the real `speedrelay serve --nats` binary.
//!
//! (a) **Publish rate**: one channel paced at 25,000 to 200,000 records/s
//!     for 1.5 s per trial, 80-byte records on `.raw` without and with
//!     headers and 1400-byte records without: what the relay received, its
//!     `nats_published` per second, what it dropped (`nats_dropped`), and
//!     what a subscriber on the subject received per second and per message
//!     (bytes as delivered, headers included).
//! (b) **CPU per record**: two relays, each with one channel at 50,000
//!     records/s (150,000 per trial) to a full-rate and a decimated UDP
//!     destination (factor 10); one also has `outputs.nats` (`.raw` without
//!     headers, `.dec` with, a subscriber on `.raw`). Trials interleaved,
//!     CPU seconds per million records summed over the relay's threads
//!     (/proc/PID/task/*/schedstat); medians and the ratio NATS / UDP-only.
//!
//! The relays run pinned to core 0; nats-server, the generator and the
//! subscribers to core 1. `benches/nats.sh [--runs N] [--cpu-only]`
//! (default 3 runs; `--cpu-only` skips (a)):
//! inside a private network namespace (it refuses to run outside one);
//! nats-server from SPEEDRELAY_NATS_SERVER or the PATH.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::{Record, Value};
use serde_json::{Value as Json, json};

const SCHEMA: &str = include_str!("../config/agents/example.avsc");
const PACED_RATES: [u64; 4] = [25_000, 50_000, 100_000, 200_000];
const PACED_SECS: f64 = 1.5;
const CPU_RATE: u64 = 50_000;
const CPU_RECORDS: u64 = 150_000;
const RELAY_CORE: usize = 0;
const LOAD_CORE: usize = 1;
const T: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!("nats bench: run it through benches/nats.sh (a private network namespace)");
        return;
    }
    let Some(nats_bin) = nats_server() else {
        eprintln!("nats bench: no nats-server (set SPEEDRELAY_NATS_SERVER)");
        return;
    };
    let runs: usize = arg_value(&args, "--runs").map_or(3, |v| v.parse().expect("--runs N"));
    let dir = tempfile::tempdir().expect("tempdir");

    pin_to(LOAD_CORE);
    let nats_port = free_tcp_port();
    let _nats = Kill(
        Command::new(&nats_bin)
            // JetStream holds the cluster's registry.
            .args(["--jetstream", "--store_dir"])
            .arg(dir.path().join("js"))
            .args(["--addr", "127.0.0.1", "--port", &nats_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts"),
    );
    wait_for("nats-server", || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, nats_port)).is_ok()
    });
    let url = format!("nats://127.0.0.1:{nats_port}");
    // The relays on their own core; their threads inherit the mask.
    pin_to(RELAY_CORE);
    // Each its own registry bucket: without leases every node of one
    // registry would run every channel.
    let udp_only = Relay::start(&write_config(dir.path(), "u"), &dir.path().join("u"), &url);
    let with_nats = Relay::start(&write_config(dir.path(), "n"), &dir.path().join("n"), &url);
    pin_to(LOAD_CORE);
    println!(
        "cpus: {}, relays pinned to core {RELAY_CORE}, nats-server, generator and subscribers to core {LOAD_CORE}; {runs} runs",
        online_cpus()
    );

    if !args.iter().any(|a| a == "--cpu-only") {
        publish_rate(&with_nats, nats_port, runs);
    }
    cpu_per_record(&udp_only, &with_nats, nats_port, runs);
}

/// (a) What one channel publishes at paced rates: the highest rate with
/// no drop is its sustained publish rate on this machine.
fn publish_rate(relay: &Relay, nats_port: u16, runs: usize) {
    println!(
        "\n== (a) one channel, .raw only, paced for {PACED_SECS} s per trial; medians of {runs}"
    );
    println!(
        "{:>6} {:>8} {:>8} | {:>12} {:>12} {:>12} {:>10} {:>10}",
        "bytes",
        "headers",
        "rate/s",
        "relayed/s",
        "published/s",
        "received/s",
        "dropped %",
        "B/message"
    );
    for (i, (size, headers)) in [(80, false), (80, true), (1400, false)]
        .into_iter()
        .enumerate()
    {
        let record = record_of(size);
        let name = format!("p{i}");
        let port = free_udp_port();
        relay.register(
            &name,
            port,
            json!({"outputs": {"nats": {"raw_headers": headers, "decimated": false}}}),
        );
        for rate in PACED_RATES {
            let count = (rate as f64 * PACED_SECS) as u64;
            let (mut relayed, mut published, mut received, mut dropped, mut size) =
                (vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..runs {
                let sub = Counter::subscribe(nats_port, &format!("speedrelay.{name}.raw"));
                let before = relay.stats(&name);
                let t0 = Instant::now();
                paced(port, &record, rate, count);
                let secs = t0.elapsed().as_secs_f64();
                // Drained: the counters stop moving (bounded by T).
                let mut last = before;
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let now = relay.stats(&name);
                    if now == last || t0.elapsed() > T {
                        break;
                    }
                    last = now;
                }
                let after = relay.stats(&name);
                let (got, bytes) = sub.stop();
                relayed.push((after.2 - before.2) as f64 / secs);
                published.push((after.0 - before.0) as f64 / secs);
                received.push(got as f64 / secs);
                size.push(bytes as f64 / got.max(1) as f64);
                dropped.push(100.0 * (after.1 - before.1) as f64 / count as f64);
            }
            println!(
                "{:>6} {:>8} {:>8} | {:>12.0} {:>12.0} {:>12.0} {:>10.2} {:>10.1}",
                record.len(),
                if headers { "yes" } else { "no" },
                rate,
                median(&mut relayed),
                median(&mut published),
                median(&mut received),
                median(&mut dropped),
                median(&mut size)
            );
        }
        relay.delete(&name);
    }
}

/// (b) CPU per record at 50,000 records/s, UDP-only against UDP + NATS.
fn cpu_per_record(udp_only: &Relay, with_nats: &Relay, nats_port: u16, runs: usize) {
    let full = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sink");
    let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sink");
    let outputs = json!({
        "full_rate": {"address": "127.0.0.1", "port": full.local_addr().expect("bound").port()},
        "decimated": {"address": "127.0.0.1", "port": dec.local_addr().expect("bound").port()},
    });
    let mut with = outputs.clone();
    with["nats"] = json!({});
    let decimation = json!({"enabled": true, "factor": 10, "algorithm": "average"});
    let (pu, pn) = (free_udp_port(), free_udp_port());
    udp_only.register(
        "c",
        pu,
        json!({"outputs": outputs, "decimation": decimation}),
    );
    with_nats.register("c", pn, json!({"outputs": with, "decimation": decimation}));
    // The sinks are never read: loopback drops what overflows them at no
    // cost to the relays, and core 1 stays free for nats-server (a thread
    // draining them there made nats-server the bottleneck).
    let sub = Counter::subscribe(nats_port, "speedrelay.c.raw");
    println!(
        "\n== (b) CPU s per million records at {CPU_RATE}/s ({CPU_RECORDS} per trial), UDP full-rate + decimated, interleaved"
    );
    for size in [80, 1400] {
        let record = record_of(size);
        let (mut u, mut n) = (vec![], vec![]);
        // Records the relays did not receive (kernel drops), and records
        // the NATS output dropped, over the trials.
        let (mut lost, mut nats_dropped) = ([0u64; 2], 0u64);
        for _ in 0..runs {
            for (i, (relay, port, out)) in [(udp_only, pu, &mut u), (with_nats, pn, &mut n)]
                .into_iter()
                .enumerate()
            {
                let before = relay.stats("c");
                let c0 = cpu_secs(relay.pid());
                paced(port, &record, CPU_RATE, CPU_RECORDS);
                // The batches in flight: a moment for the last to be relayed.
                std::thread::sleep(Duration::from_millis(200));
                out.push((cpu_secs(relay.pid()) - c0) * 1e6 / CPU_RECORDS as f64);
                let after = relay.stats("c");
                lost[i] += CPU_RECORDS.saturating_sub(after.2 - before.2);
                nats_dropped += after.1 - before.1;
            }
        }
        let (mu, mn) = (median(&mut u), median(&mut n));
        println!(
            "{:>5} B: UDP only {mu:.3} s, with NATS {mn:.3} s per million records: ratio {:.2} (runs: {u:.3?} / {n:.3?}); not received: {} / {}, NATS dropped: {nats_dropped}",
            record.len(),
            mn / mu,
            lost[0],
            lost[1],
        );
    }
    let s = with_nats.stats("c");
    println!(
        "NATS relay: {} published, {} dropped; the subscriber on .raw received {}",
        s.0,
        s.1,
        sub.stop().0
    );
    drop((full, dec));
}

/// `speedrelay serve --nats` with leases off (the one node relays).
struct Relay {
    child: Kill,
    api: SocketAddr,
}

impl Relay {
    fn start(config: &Path, data: &Path, nats: &str) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--api", "127.0.0.1:0", "--nats", nats, "--node"])
            .arg(data.file_name().expect("named"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("speedrelay serve starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("speedrelay running") {
                    let api = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("api="))
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = tx.send(api);
                    sent = true;
                }
            }
        });
        let api = rx
            .recv_timeout(T)
            .ok()
            .flatten()
            .expect("the relay announces its API");
        let relay = Relay {
            child: Kill(child),
            api,
        };
        wait_for("the relay to join NATS", || {
            relay.get("/api/v1/health")["cluster"]["nats"] == "connected"
        });
        relay
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn register(&self, name: &str, port: u16, config: Json) {
        let schema: Json = serde_json::from_str(SCHEMA).expect("schema");
        let body = json!({"name": name, "port": port, "schema": schema, "config": config});
        let (status, answer) = http(self.api, "POST", "/api/v1/channels", Some(&body));
        assert_eq!(status, 201, "{answer}");
    }

    fn delete(&self, name: &str) {
        let (status, answer) = http(
            self.api,
            "DELETE",
            &format!("/api/v1/channels/{name}"),
            None,
        );
        assert!(status < 300, "{answer}");
    }

    fn get(&self, path: &str) -> Json {
        http(self.api, "GET", path, None).1
    }

    /// (nats_published, nats_dropped, packets) of a channel.
    fn stats(&self, name: &str) -> (u64, u64, u64) {
        let c = self.get(&format!("/api/v1/channels/{name}"));
        let n = |k: &str| c["stats"][k].as_u64().unwrap_or(0);
        (n("nats_published"), n("nats_dropped"), n("packets"))
    }
}

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A subscriber counting the messages it receives (NATS text protocol).
struct Counter {
    count: Arc<AtomicU64>,
    /// The messages' sizes as delivered: header block plus payload.
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Counter {
    fn subscribe(port: u16, subject: &str) -> Counter {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("nats");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::with_capacity(1 << 20, s);
        let mut line = String::new();
        r.read_line(&mut line).expect("INFO");
        write!(
            w,
            "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB {subject} 1\r\nPING\r\n"
        )
        .expect("subscribe");
        loop {
            line.clear();
            r.read_line(&mut line).expect("PONG");
            if line.starts_with("PONG") {
                break;
            }
        }
        let count = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, b, st) = (count.clone(), bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut body = vec![0u8; 1 << 17];
            while !st.load(Relaxed) {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) => continue,
                }
                if line.starts_with(b"PING") {
                    let _ = w.write_all(b"PONG\r\n");
                    continue;
                }
                if !(line.starts_with(b"MSG") || line.starts_with(b"HMSG")) {
                    continue;
                }
                // The last field is the total size; the body ends with \r\n.
                let total: usize = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut left = total + 2;
                while left > 0 {
                    let n = left.min(body.len());
                    match r.read_exact(&mut body[..n]) {
                        Ok(()) => left -= n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(_) => return,
                    }
                }
                c.fetch_add(1, Relaxed);
                b.fetch_add(total as u64, Relaxed);
            }
        });
        Counter {
            count,
            bytes,
            stop,
            thread,
        }
    }

    /// Stops and returns the count and the bytes.
    fn stop(self) -> (u64, u64) {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Relaxed);
        let _ = self.thread.join();
        (self.count.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Sends `count` records at `rate` per second, in 1 ms bursts.
fn paced(port: u16, record: &[u8], rate: u64, count: u64) {
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sender");
    tx.connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < count && t0.elapsed() < T {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(count) {
            let _ = tx.send(record);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn write_config(dir: &Path, node: &str) -> PathBuf {
    let config = dir.join(format!("config-{node}"));
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("example.avsc"), SCHEMA).expect("schema");
    std::fs::write(
        config.join("relay.yaml"),
        format!(
            "channels: []\nsocket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\ncluster: {{lease_ms: 0, bucket: bench-{node}}}\n"
        ),
    )
    .expect("relay.yaml");
    config
}

fn nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPEEDRELAY_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

/// One HTTP/1.1 request over a fresh connection: the status and JSON body.
fn http(api: SocketAddr, method: &str, path: &str, body: Option<&Json>) -> (u16, Json) {
    let mut s = TcpStream::connect(api).expect("API");
    s.set_read_timeout(Some(T)).expect("timeout");
    let body = body.map(Json::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Json::Null))
}

fn record_of(size: usize) -> Vec<u8> {
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let mut r = Record::new(&schema).expect("record");
    r.put("time", Value::TimestampNanos(1_763_900_000_000_000_000));
    r.put("counter", Value::Int(12345));
    r.put("sine_wave", Value::Double(0.5));
    r.put("ramp", Value::Double(1.5));
    r.put("square_wave", Value::Double(1.0));
    r.put("noise", Value::Double(0.01));
    let mut msg = String::new();
    loop {
        r.put("message", Value::String(msg.clone()));
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer")
            .write_value_to_vec(Value::from(r.clone()))
            .expect("encodes");
        if bytes.len() >= size {
            return bytes;
        }
        msg.push('x');
    }
}

/// Pins the calling thread (and what it spawns) to one CPU of the machine.
fn pin_to(cpu: usize) {
    let cpus = online_cpus();
    // SAFETY: all-zero is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the index is below the number of CPUs, within the set.
    unsafe { libc::CPU_SET(cpu % cpus, &mut set) };
    // SAFETY: a valid cpu_set_t of the size given, for the calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
}

/// CPUs online (not `available_parallelism`, which shrinks once pinned).
fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system setting; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// CPU time of every thread of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn arg_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}
