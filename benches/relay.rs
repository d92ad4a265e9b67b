//! The whole relay against a ceiling, on the same machine in the same run.
//!
//! Subjects, each a child process of this bench pinned to core 0 (its
//! threads inherit the mask; the load generator and the full-rate sink run
//! in this process pinned to core 1):
//! - **relay**: one real channel (validate + archive + one full-rate and one
//!   decimated destination, factor 10) on a current-thread runtime, as
//!   `serve --threads 1` runs it, default settings otherwise;
//! - **ceiling**: the least a relay can do with the same sockets, written
//!   here: blocking `recvmmsg` of 64 → `sendmmsg` of the batch to the
//!   full-rate destination and of every 10th datagram to the decimated one →
//!   one `writev` of the batch to a file. No validation, no framing.
//!
//! Per record size (80 and 1400 bytes) and run it measures, at the full-rate
//! destination: the flood's delivered rate and loss, the loss at 100,000
//! records/s paced, the highest paced rate with < 0.1 % loss (a search on a
//! 10,000/s grid), and the subject's CPU seconds per million records at
//! 50,000/s (summed over the child's threads from /proc/PID/task/*/schedstat).
//! Medians over the runs, and each as a ratio to the ceiling's median.
//!
//! `benches/run.sh relay [--runs N] [--sizes 80,1400] [--many]`: inside a
//! private network namespace (the bench refuses to run outside one).
//! `--many` instead floods 4 channels at once on a runtime with 1 and with
//! 2 workers (unpinned) and reports the aggregate delivered rate.
//! `--coalesce-us 0,300` repeats it per wait, for both subjects (the relay's
//! `socket.coalesce_us`; the ceiling polls for the rest of the wait after a
//! partial `recvmmsg`). `--latency` instead measures one-way latency
//! (p50/p99/p99.9/max, generator → subject → sink, from a send time stamped
//! into each record's `time` field) and CPU per record at 10k, 50k and
//! 100k records/s; `--variants sleep,flush,patch` adds a ceiling that sleeps out the
//! wait, and the relay with large deflate blocks or reconfigured every 10 ms.
//! `--live` adds a third subject, the relay with one live viewer reading
//! its decoded stream (`GET /channels/{name}/live`'s body, in-process), and
//! prints its CPU per million records beside the relay's.
//! Bounded: every trial has a record count and a time limit.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::{Record, Value};
use speedrelay::channel::{BoundChannel, ChannelSpec};
use speedrelay::config::{ChannelSettings, Destination};
use speedrelay::live::{Decoder, LiveTap};

const SCHEMA: &str = include_str!("../config/agents/example.avsc");
const BATCH: usize = 64;
const DECIMATION: usize = 10;
/// Slot size of the ceiling's receive buffer: like the relay's default
/// `max_datagram`, so both accept any datagram.
const SLOT: usize = 65_536;
const FLOOD_RECORDS: u64 = 1_500_000;
const FLOOD_LIMIT: Duration = Duration::from_secs(3);
const PACED_SECS: f64 = 1.5;
const CPU_RATE: f64 = 50_000.0;
const CPU_SECS: f64 = 3.0;
/// Loss below this counts as "no loss" for the paced search.
const LOSS_OK: f64 = 0.001;
const RELAY_CORE: usize = 0;
const LOAD_CORE: usize = 1;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("serve-ceiling") => return serve_ceiling(&args[1..]),
        Some("serve-relay") => return serve_relay(&args[1..]),
        _ => {}
    }
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!("relay bench: run it through benches/run.sh (a private network namespace)");
        return;
    }
    let runs = arg_value(&args, "--runs").map_or(3, |v| v.parse().expect("--runs N"));
    if args.iter().any(|a| a == "--many") {
        return many_channels(runs);
    }
    let sizes: Vec<usize> = arg_value(&args, "--sizes").map_or(vec![80, 1400], |v| {
        v.split(',').map(|s| s.parse().expect("--sizes")).collect()
    });
    let waits: Vec<u32> = arg_value(&args, "--coalesce-us").map_or(vec![0], |v| {
        v.split(',')
            .map(|s| s.parse().expect("--coalesce-us"))
            .collect()
    });
    println!(
        "cpus: {}, relay and ceiling pinned to core {RELAY_CORE}, generator and sink to core {LOAD_CORE}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if args.iter().any(|a| a == "--latency") {
        let variants = arg_value(&args, "--variants").map_or(vec![], |v| v.split(',').collect());
        return latency_matrix(runs, &sizes, &waits, &variants);
    }
    for size in sizes {
        let record = record_of(size);
        for &wait in &waits {
            println!(
                "\n== {}-byte records, coalesce_us {wait}, {runs} runs",
                record.len()
            );
            let live = args.iter().any(|a| a == "--live");
            let mut subjects = vec![Subject::Ceiling, Subject::Relay];
            if live {
                subjects.push(Subject::RelayLive);
            }
            let mut results: [Vec<Figures>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for run in 1..=runs {
                for (i, &subject) in subjects.iter().enumerate() {
                    let f = measure(subject, &record, wait);
                    println!("run {run} {:<7} {f}", subject.name());
                    results[i].push(f);
                }
            }
            let ceiling = Figures::median(&results[0]);
            let relay = Figures::median(&results[1]);
            print_table(record.len(), &ceiling, &relay);
            if live {
                let watched = Figures::median(&results[2]);
                println!(
                    "CPU s per million records at {CPU_RATE}/s: relay {:.3}, relay with a live viewer {:.3} ({:.3}x)",
                    relay.cpu_per_million,
                    watched.cpu_per_million,
                    watched.cpu_per_million / relay.cpu_per_million
                );
            }
        }
    }
}

/// Paced rates at which latency and CPU per record are measured (the
/// relay variants run at `CPU_RATE` only).
const LATENCY_RATES: [f64; 3] = [10_000.0, 50_000.0, 100_000.0];
const LATENCY_SECS: f64 = 2.0;

/// One subject's figures at each of `LATENCY_RATES` (only `CPU_RATE` for a
/// variant): latency percentiles, loss, and CPU per million records.
#[derive(Clone, Copy, Default)]
struct LatencyFigures {
    at: [Percentiles; 3],
    loss: [f64; 3],
    cpu_per_million: [f64; 3],
}

/// Stamps survive a round trip through a record (which stays valid) and
/// the histogram's buckets are within 3 %: a wrong figure would otherwise
/// look like a plausible latency.
fn self_check() {
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let mut record = record_of(80);
    let stamp = Stamp {
        epoch: Instant::now(),
    };
    let t = stamp.now() + 123_456_789;
    Stamp::write(t, &mut record);
    assert_eq!(
        Stamp::read(&record),
        Some(t - Stamp::OFFSET),
        "stamp round trip"
    );
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .and_then(|r| r.read_value(&mut &record[..]))
        .expect("still valid");
    let Value::Record(fields) = value else {
        panic!("not a record")
    };
    assert_eq!(
        fields[0].1,
        Value::TimestampNanos(t as i64),
        "the time field holds the stamp"
    );
    for v in [0u64, 31, 32, 1_000, 123_456, 10_000_000, 1 << 40] {
        let mid = Latency::value(Latency::index(v));
        assert!(
            (mid - v as f64).abs() <= v as f64 / 32.0 + 0.5,
            "bucket of {v}: {mid}"
        );
    }
}

/// `--latency`: per run, per wait, the ceiling and the relay (and each
/// relay variant) in turn, each a fresh child; then medians per cell.
fn latency_matrix(runs: usize, sizes: &[usize], waits: &[u32], variants: &[&str]) {
    self_check();
    let mut subjects: Vec<(Subject, &str)> =
        vec![(Subject::Ceiling, "plain"), (Subject::Relay, "plain")];
    // `sleep` is a ceiling variant, the others the relay's.
    subjects.extend(variants.iter().map(|&v| match v {
        "sleep" => (Subject::Ceiling, v),
        _ => (Subject::Relay, v),
    }));
    for &size in sizes {
        let record = record_of(size);
        let mut all: Vec<Vec<LatencyFigures>> = vec![Vec::new(); waits.len() * subjects.len()];
        for run in 1..=runs {
            for (w, &wait) in waits.iter().enumerate() {
                for (s, &(subject, variant)) in subjects.iter().enumerate() {
                    let f = measure_latency(subject, variant, &record, wait);
                    let name = format!("{} {variant}", subject.name());
                    for (i, rate) in LATENCY_RATES.iter().enumerate() {
                        if f.at[i].count == 0 {
                            continue;
                        }
                        let p = f.at[i];
                        println!(
                            "run {run} {size} B wait {wait:>4} µs {name:<15} {rate:>7.0}/s: p50 {:>7.1} p99 {:>7.1} p99.9 {:>8.1} max {:>8.1} µs, loss {:.3} %, CPU {:.3} s per 1M rec",
                            p.p50 / 1e3,
                            p.p99 / 1e3,
                            p.p999 / 1e3,
                            p.max / 1e3,
                            f.loss[i] * 100.0,
                            f.cpu_per_million[i]
                        );
                    }
                    all[w * subjects.len() + s].push(f);
                }
            }
        }
        println!(
            "\nmedians of {runs} runs, {}-byte records; latency in µs (one way, generator → subject → sink)",
            record.len()
        );
        println!(
            "| wait µs | subject | rate/s | p50 | p99 | p99.9 | max | loss | CPU s/1M |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (w, &wait) in waits.iter().enumerate() {
            for (s, &(subject, variant)) in subjects.iter().enumerate() {
                let cell = &all[w * subjects.len() + s];
                let med = |f: &dyn Fn(&LatencyFigures) -> f64| {
                    let mut v: Vec<f64> = cell.iter().map(f).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                for (i, rate) in LATENCY_RATES.iter().enumerate() {
                    if cell.iter().all(|f| f.at[i].count == 0) {
                        continue;
                    }
                    println!(
                        "| {wait} | {} {variant} | {rate:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} % | {:.3} |",
                        subject.name(),
                        med(&|f| f.at[i].p50) / 1e3,
                        med(&|f| f.at[i].p99) / 1e3,
                        med(&|f| f.at[i].p999) / 1e3,
                        med(&|f| f.at[i].max) / 1e3,
                        med(&|f| f.loss[i]) * 100.0,
                        med(&|f| f.cpu_per_million[i]),
                    );
                }
            }
        }
    }
}

/// A fresh child of `subject`: paced trials with stamped records at each
/// rate (only `CPU_RATE` for a relay variant), latency at the sink.
fn measure_latency(
    subject: Subject,
    variant: &str,
    record: &[u8],
    coalesce_us: u32,
) -> LatencyFigures {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start(true);
    let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut args = subject_args(subject, &sink, &dec, dir.path(), coalesce_us);
    args.push(variant.into());
    let served = Served::start(&args);
    pin_to(LOAD_CORE);
    let mut generator = Generator::new(record, &served.ports);
    generator.stamp = Some(Stamp { epoch: sink.epoch });
    let mut out = LatencyFigures::default();
    for (i, &rate) in LATENCY_RATES.iter().enumerate() {
        if variant != "plain" && variant != "sleep" && rate != CPU_RATE {
            continue;
        }
        let secs = if rate == CPU_RATE {
            CPU_SECS
        } else {
            LATENCY_SECS
        };
        sink.settle();
        sink.latency.reset();
        sink.latency.on.store(true, Relaxed);
        let t = trial(
            &served,
            &sink,
            &mut generator,
            Some(rate),
            (rate * secs) as u64,
            Duration::from_secs_f64(secs * 2.0),
        );
        sink.latency.on.store(false, Relaxed);
        out.at[i] = sink.latency.percentiles();
        out.loss[i] = t.loss();
        out.cpu_per_million[i] = t.cpu / (t.sent.max(1) as f64 / 1e6);
    }
    out
}

fn arg_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

#[derive(Clone, Copy, PartialEq)]
enum Subject {
    Ceiling,
    Relay,
    /// The relay with one live viewer.
    RelayLive,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ceiling => "ceiling",
            Subject::Relay => "relay",
            Subject::RelayLive => "relay+live",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Figures {
    flood_rate: f64,
    flood_loss: f64,
    /// Share of the flood dropped at the subject's socket and at the sink's.
    flood_drop_in: f64,
    flood_drop_sink: f64,
    loss_at_100k: f64,
    drop_in_100k: f64,
    max_paced: f64,
    cpu_per_million: f64,
}

impl Figures {
    fn median(all: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = all.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Figures {
            flood_rate: m(|f| f.flood_rate),
            flood_loss: m(|f| f.flood_loss),
            flood_drop_in: m(|f| f.flood_drop_in),
            flood_drop_sink: m(|f| f.flood_drop_sink),
            loss_at_100k: m(|f| f.loss_at_100k),
            drop_in_100k: m(|f| f.drop_in_100k),
            max_paced: m(|f| f.max_paced),
            cpu_per_million: m(|f| f.cpu_per_million),
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flood {:>8.0} rec/s (loss {:5.1} %: {:.1} % at its socket, {:.1} % at the sink) | loss at 100k/s {:6.3} % ({:.3} % at its socket) | max paced {:>7.0}/s | CPU {:.3} s per 1M rec at 50k/s",
            self.flood_rate,
            self.flood_loss * 100.0,
            self.flood_drop_in * 100.0,
            self.flood_drop_sink * 100.0,
            self.loss_at_100k * 100.0,
            self.drop_in_100k * 100.0,
            self.max_paced,
            self.cpu_per_million
        )
    }
}

fn print_table(size: usize, c: &Figures, r: &Figures) {
    println!("\nmedians, {size}-byte records:");
    println!("| figure | ceiling | relay | relay / ceiling |\n|---|---:|---:|---:|");
    println!(
        "| flood delivered (records/s) | {:.0} | {:.0} | {:.2} |",
        c.flood_rate,
        r.flood_rate,
        r.flood_rate / c.flood_rate
    );
    println!(
        "| flood loss | {:.1} % | {:.1} % | |",
        c.flood_loss * 100.0,
        r.flood_loss * 100.0
    );
    println!(
        "| of which dropped at the subject's socket / at the sink | {:.1} % / {:.1} % | {:.1} % / {:.1} % | |",
        c.flood_drop_in * 100.0,
        c.flood_drop_sink * 100.0,
        r.flood_drop_in * 100.0,
        r.flood_drop_sink * 100.0
    );
    println!(
        "| loss at 100,000/s paced (at the subject's socket) | {:.3} % ({:.3} %) | {:.3} % ({:.3} %) | |",
        c.loss_at_100k * 100.0,
        c.drop_in_100k * 100.0,
        r.loss_at_100k * 100.0,
        r.drop_in_100k * 100.0
    );
    println!(
        "| highest paced rate with < 0.1 % loss (records/s) | {:.0} | {:.0} | {:.2} |",
        c.max_paced,
        r.max_paced,
        r.max_paced / c.max_paced
    );
    println!(
        "| CPU s per million records at 50,000/s | {:.3} | {:.3} | {:.2} |",
        c.cpu_per_million,
        r.cpu_per_million,
        r.cpu_per_million / c.cpu_per_million
    );
}

/// An example.avsc record whose message pads it to `size` bytes.
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

fn pin_to(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: all-zero is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the index is below the number of CPUs, within the set.
    unsafe { libc::CPU_SET(cpu % cpus, &mut set) };
    // SAFETY: a valid cpu_set_t of the size given, for the calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
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

/// A send time carried in the record itself: its first field, the
/// `long` `time`, as a zig-zag varint of exactly 9 bytes (every value in
/// [2^55, 2^62) is), so stamping rewrites 9 bytes in place and the record
/// stays valid. The value is nanoseconds since the sink's epoch (one
/// monotonic clock: generator and sink are threads of this process) plus
/// [`Stamp::OFFSET`], which keeps it in that range.
#[derive(Clone, Copy)]
struct Stamp {
    epoch: Instant,
}

impl Stamp {
    const OFFSET: u64 = 1 << 60;
    const WIDTH: usize = 9;

    fn now(self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + Self::OFFSET
    }

    fn write(t: u64, record: &mut [u8]) {
        let mut v = t << 1; // zig-zag of a positive long
        for b in record.iter_mut().take(Self::WIDTH) {
            *b = (v as u8 & 0x7f) | if v > 0x7f { 0x80 } else { 0 };
            v >>= 7;
        }
    }

    fn read(record: &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for (i, &b) in record.iter().take(Self::WIDTH).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (v >> 1).checked_sub(Self::OFFSET);
            }
        }
        None
    }
}

/// One-way latencies in a fixed log-linear histogram (32 buckets per
/// power of two, so within 3 %): recording is two atomic adds, no
/// allocation.
struct Latency {
    on: AtomicBool,
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Percentiles {
    count: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    const SUB: u32 = 5;

    fn new() -> Latency {
        Latency {
            on: AtomicBool::new(false),
            buckets: (0..64 << Self::SUB).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(ns: u64) -> usize {
        if ns < 1 << Self::SUB {
            return ns as usize;
        }
        let e = 63 - ns.leading_zeros();
        let sub = (ns >> (e - Self::SUB)) & ((1 << Self::SUB) - 1);
        (((e - Self::SUB + 1) << Self::SUB) as u64 + sub) as usize
    }

    /// The middle of bucket `i`, in nanoseconds.
    fn value(i: usize) -> f64 {
        let sub_n = 1usize << Self::SUB;
        if i < sub_n {
            return i as f64;
        }
        let e = (i >> Self::SUB) as u32 + Self::SUB - 1;
        let sub = (i & (sub_n - 1)) as u64;
        let lo = (sub_n as u64 + sub) << (e - Self::SUB);
        lo as f64 + (1u64 << (e - Self::SUB)) as f64 / 2.0
    }

    fn record(&self, ns: u64) {
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
        self.max.fetch_max(ns, Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.max.store(0, Relaxed);
    }

    fn percentiles(&self) -> Percentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Relaxed) as f64;
        // A bucket's middle can lie above the largest sample in it.
        let at = |q: f64| {
            let want = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return Latency::value(i).min(max);
                }
            }
            0.0
        };
        Percentiles {
            count,
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max,
        }
    }
}

/// The full-rate destination: counts what arrives, on the load core.
struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
    /// Nanoseconds since `epoch` of the last datagram.
    last_ns: Arc<AtomicU64>,
    epoch: Instant,
    /// Latencies of stamped records, while `latency.on`.
    latency: Arc<Latency>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Pinned to the load core when `pin`.
    fn start(pin: bool) -> Sink {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sink");
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let received = Arc::new(AtomicU64::new(0));
        let last_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let latency = Arc::new(Latency::new());
        let (r, l, s, lat) = (
            received.clone(),
            last_ns.clone(),
            stop.clone(),
            latency.clone(),
        );
        let stamp = Stamp { epoch };
        let thread = std::thread::spawn(move || {
            if pin {
                pin_to(LOAD_CORE);
            }
            let mut bufs = vec![0u8; BATCH * 2048];
            let mut iovs: Vec<libc::iovec> = bufs
                .chunks_mut(2048)
                .map(|c| libc::iovec {
                    iov_base: c.as_mut_ptr().cast(),
                    iov_len: c.len(),
                })
                .collect();
            // SAFETY: zeroed headers, each pointing at its own iovec.
            let mut hdrs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| unsafe {
                    let mut h: libc::mmsghdr = std::mem::zeroed();
                    h.msg_hdr.msg_iov = iov;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            while !s.load(Relaxed) {
                // SAFETY: headers point at live buffers owned by this thread.
                let n = unsafe {
                    libc::recvmmsg(
                        sock.as_raw_fd(),
                        hdrs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    let now = stamp.now();
                    r.fetch_add(n as u64, Relaxed);
                    l.store(now - Stamp::OFFSET, Relaxed);
                    if lat.on.load(Relaxed) {
                        for (h, b) in hdrs.iter().zip(bufs.chunks(2048)).take(n as usize) {
                            let len = (h.msg_len as usize).min(b.len());
                            if let Some(sent) = Stamp::read(&b[..len]) {
                                lat.record(now.saturating_sub(sent + Stamp::OFFSET));
                            }
                        }
                    }
                }
            }
        });
        Sink {
            port,
            received,
            last_ns,
            epoch,
            latency,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until nothing has arrived for 100 ms (at most 3 s).
    fn settle(&self) -> u64 {
        let start = Instant::now();
        let mut last = self.received.load(Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.received.load(Relaxed);
            if now == last || start.elapsed() > Duration::from_secs(3) {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A subject child process; killed on drop.
struct Served {
    child: Child,
    ports: Vec<u16>,
}

impl Served {
    fn start(args: &[String]) -> Served {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start subject");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("subject reports its ports");
        let ports = line
            .split_whitespace()
            .skip(1)
            .map(|p| p.parse().expect("port"))
            .collect();
        Served { child, ports }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reusable `sendmmsg` headers over `BATCH` copies of one record to the
/// subject's port(s); with `stamp`, each send first writes its time into
/// the record's leading `time` field (see [`Stamp`]).
struct Generator {
    sock: UdpSocket,
    hdrs: Vec<libc::mmsghdr>,
    _iovs: Vec<libc::iovec>,
    _names: Vec<libc::sockaddr_in>,
    /// `BATCH` copies of the record, `len` bytes apart.
    copies: Vec<u8>,
    len: usize,
    stamp: Option<Stamp>,
}

impl Generator {
    fn new(record: &[u8], targets: &[u16]) -> Generator {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind generator");
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20);
        let mut copies = record.repeat(BATCH);
        let len = record.len();
        let mut iovs: Vec<libc::iovec> = copies
            .chunks_mut(len)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        // Target i of a batch is targets[i % len], so several channels get
        // the same share.
        let mut names: Vec<libc::sockaddr_in> = (0..BATCH)
            .map(|i| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: targets[i % targets.len()].to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            })
            .collect();
        let hdrs = (0..BATCH)
            .map(|i| {
                // SAFETY: zeroed header plus one iovec and an address is a valid message.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                h
            })
            .collect();
        Generator {
            sock,
            hdrs,
            _iovs: iovs,
            _names: names,
            copies,
            len,
            stamp: None,
        }
    }

    fn send(&mut self, n: usize) -> u64 {
        let n = n.min(BATCH);
        if let Some(stamp) = self.stamp {
            let now = stamp.now();
            for c in self.copies.chunks_mut(self.len).take(n) {
                Stamp::write(now, c);
            }
        }
        // SAFETY: headers point at live iovecs (over `copies`, owned by the
        // generator and never reallocated) and addresses.
        let r =
            unsafe { libc::sendmmsg(self.sock.as_raw_fd(), self.hdrs.as_mut_ptr(), n as u32, 0) };
        r.max(0) as u64
    }

    /// Sends `count` records at `rate` per second (as fast as possible
    /// when `None`), stopping after `limit`; returns (sent, seconds).
    fn run(&mut self, rate: Option<f64>, count: u64, limit: Duration) -> (u64, f64) {
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let elapsed = start.elapsed();
            if elapsed > limit {
                break;
            }
            let due = match rate {
                None => count,
                Some(r) => ((elapsed.as_secs_f64() * r) as u64).min(count),
            };
            if due <= sent {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            sent += self.send((due - sent) as usize);
        }
        (sent, start.elapsed().as_secs_f64())
    }
}

/// Datagrams the kernel dropped at a full receive queue of the UDP socket
/// bound to `port` in this namespace (the last column of /proc/net/udp).
fn socket_drops(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&want)).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

struct Trial {
    sent: u64,
    delivered: u64,
    /// Dropped at the subject's receive queue and at the sink's.
    drops_in: u64,
    drops_sink: u64,
    /// From the first send to the last arrival.
    secs: f64,
    cpu: f64,
}

impl Trial {
    fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.sent.max(1) as f64
    }
}

fn trial(
    served: &Served,
    sink: &Sink,
    generator: &mut Generator,
    rate: Option<f64>,
    count: u64,
    limit: Duration,
) -> Trial {
    let before = sink.settle();
    let in0: u64 = served.ports.iter().map(|&p| socket_drops(p)).sum();
    let sink0 = socket_drops(sink.port);
    let cpu0 = cpu_secs(served.child.id());
    let t0 = sink.epoch.elapsed().as_nanos() as u64;
    let (sent, _) = generator.run(rate, count, limit);
    let after = sink.settle();
    let cpu1 = cpu_secs(served.child.id());
    let in1: u64 = served.ports.iter().map(|&p| socket_drops(p)).sum();
    let sink1 = socket_drops(sink.port);
    let last = sink.last_ns.load(Relaxed).max(t0 + 1);
    Trial {
        sent,
        delivered: after - before,
        drops_in: in1 - in0,
        drops_sink: sink1 - sink0,
        secs: (last - t0) as f64 / 1e9,
        // The idle settling time costs an idle subject nothing.
        cpu: cpu1 - cpu0,
    }
}

fn subject_args(
    subject: Subject,
    sink: &Sink,
    dec: &UdpSocket,
    dir: &Path,
    coalesce_us: u32,
) -> Vec<String> {
    let mode = match subject {
        Subject::Ceiling => "serve-ceiling",
        Subject::Relay | Subject::RelayLive => "serve-relay",
    };
    let mut args = vec![
        mode.into(),
        sink.port.to_string(),
        dec.local_addr().expect("addr").port().to_string(),
        dir.display().to_string(),
        "1".into(),
        "0".into(),
        coalesce_us.to_string(),
    ];
    if subject == Subject::RelayLive {
        args.push("live".into());
    }
    args
}

fn measure(subject: Subject, record: &[u8], coalesce_us: u32) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start(true);
    // The decimated destination nobody reads, as a slow consumer would be.
    let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let served = Served::start(&subject_args(subject, &sink, &dec, dir.path(), coalesce_us));
    pin_to(LOAD_CORE);
    let mut generator = Generator::new(record, &served.ports);

    let flood = trial(
        &served,
        &sink,
        &mut generator,
        None,
        FLOOD_RECORDS,
        FLOOD_LIMIT,
    );
    let flood_rate = flood.delivered as f64 / flood.secs;

    let paced = |generator: &mut Generator, rate: f64| {
        let count = (rate * PACED_SECS) as u64;
        let limit = Duration::from_secs_f64(PACED_SECS * 2.0);
        trial(&served, &sink, generator, Some(rate), count, limit)
    };
    let at_100k = paced(&mut generator, 100_000.0);
    // Highest rate with < 0.1 % loss on a 10,000/s grid.
    let (mut lo, mut hi) = if at_100k.loss() < LOSS_OK {
        (10u64, ((flood_rate * 1.3 / 10_000.0) as u64 + 2).max(12))
    } else {
        (0, 10)
    };
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let t = paced(&mut generator, mid as f64 * 10_000.0);
        if t.loss() < LOSS_OK && t.sent > 0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let cpu = trial(
        &served,
        &sink,
        &mut generator,
        Some(CPU_RATE),
        (CPU_RATE * CPU_SECS) as u64,
        Duration::from_secs_f64(CPU_SECS * 2.0),
    );
    Figures {
        flood_rate,
        flood_loss: flood.loss(),
        flood_drop_in: flood.drops_in as f64 / flood.sent.max(1) as f64,
        flood_drop_sink: flood.drops_sink as f64 / flood.sent.max(1) as f64,
        loss_at_100k: at_100k.loss(),
        drop_in_100k: at_100k.drops_in as f64 / at_100k.sent.max(1) as f64,
        max_paced: lo as f64 * 10_000.0,
        cpu_per_million: cpu.cpu / (cpu.sent as f64 / 1e6),
    }
}

/// 4 channels flooded at once on 1 and on 2 runtime workers.
fn many_channels(runs: usize) {
    let record = record_of(80);
    for workers in [1usize, 2] {
        let mut rates = Vec::new();
        for run in 1..=runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let sink = Sink::start(false);
            let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            let mut args = subject_args(Subject::Relay, &sink, &dec, dir.path(), 0);
            args[4] = "4".into();
            args[5] = workers.to_string();
            let served = Served::start(&args);
            let mut generator = Generator::new(&record, &served.ports);
            let t = trial(
                &served,
                &sink,
                &mut generator,
                None,
                4 * FLOOD_RECORDS / 2,
                FLOOD_LIMIT,
            );
            let rate = t.delivered as f64 / t.secs;
            println!(
                "{workers} worker(s), run {run}: {rate:.0} records/s delivered over 4 channels (loss {:.1} %, CPU {:.2} s in {:.2} s)",
                t.loss() * 100.0,
                t.cpu,
                t.secs
            );
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{workers} worker(s): median {:.0} records/s aggregate over 4 channels",
            rates[rates.len() / 2]
        );
    }
}

/// Child: `serve-ceiling SINK DEC DIR 1 0 COALESCE_US` — the ceiling relay
/// until killed. With COALESCE_US > 0 it waits like the relay's
/// `socket.coalesce_us`: after a partial `recvmmsg`, `ppoll` for the rest
/// of the wait and receive again into the free slots, until the batch is
/// full or the wait is over.
fn serve_ceiling(args: &[String]) {
    pin_to(RELAY_CORE);
    let full_port: u16 = args[0].parse().expect("sink port");
    let dec_port: u16 = args[1].parse().expect("dec port");
    let dir = Path::new(&args[2]);
    let wait = Duration::from_micros(args[5].parse().expect("coalesce_us"));
    // `sleep`: wait out the whole wait, then receive once (one wake-up per
    // batch) instead of polling for each datagram that arrives meanwhile.
    let sleep = args.get(6).is_some_and(|v| v == "sleep");
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(8 << 20);
    let full = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    full.connect((Ipv4Addr::LOCALHOST, full_port))
        .expect("connect");
    let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    dec.connect((Ipv4Addr::LOCALHOST, dec_port))
        .expect("connect");
    let file = std::fs::File::create(dir.join("ceiling.bin")).expect("file");
    println!("ready {}", rx.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");

    let mut buf = vec![0u8; SLOT * BATCH];
    let base = buf.as_mut_ptr();
    let zero_iov = || -> libc::iovec {
        // SAFETY: all-zero is a valid iovec.
        unsafe { std::mem::zeroed() }
    };
    let zero_hdr = || -> libc::mmsghdr {
        // SAFETY: all-zero is a valid mmsghdr.
        unsafe { std::mem::zeroed() }
    };
    let mut iovs: Vec<libc::iovec> = (0..BATCH).map(|_| zero_iov()).collect();
    let mut rhdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| zero_hdr()).collect();
    let mut shdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| zero_hdr()).collect();
    let mut dhdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| zero_hdr()).collect();
    let mut out: Vec<libc::iovec> = (0..BATCH).map(|_| zero_iov()).collect();
    let mut nth = 0usize;
    loop {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside `buf`.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            rhdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            rhdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: headers point at disjoint slots of `buf`.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                rhdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let mut n = n as usize;
        if n < BATCH && !wait.is_zero() {
            let deadline = Instant::now() + wait;
            let mut slept = sleep;
            if sleep {
                std::thread::sleep(wait);
            }
            while n < BATCH {
                // After the sleep, one receive of what came meanwhile.
                if !std::mem::take(&mut slept) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let ts = libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    };
                    let mut pfd = libc::pollfd {
                        fd: rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, a valid timeout, no signal mask.
                    if unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) } <= 0 {
                        break;
                    }
                }
                let free = rhdrs[n..].as_mut_ptr();
                // SAFETY: headers n.. point at free slots of `buf`.
                let more = unsafe {
                    libc::recvmmsg(
                        rx.as_raw_fd(),
                        free,
                        (BATCH - n) as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if more > 0 {
                    n += more as usize;
                }
            }
        }
        let mut d = 0;
        for i in 0..n {
            out[i] = libc::iovec {
                iov_base: iovs[i].iov_base,
                iov_len: rhdrs[i].msg_len as usize,
            };
            shdrs[i].msg_hdr.msg_iov = &mut out[i];
            shdrs[i].msg_hdr.msg_iovlen = 1;
            if nth.is_multiple_of(DECIMATION) {
                dhdrs[d].msg_hdr.msg_iov = &mut out[i];
                dhdrs[d].msg_hdr.msg_iovlen = 1;
                d += 1;
            }
            nth += 1;
        }
        // SAFETY: headers point at the received datagrams in `buf`.
        unsafe { libc::sendmmsg(full.as_raw_fd(), shdrs.as_mut_ptr(), n as u32, 0) };
        if d > 0 {
            // SAFETY: as above.
            unsafe { libc::sendmmsg(dec.as_raw_fd(), dhdrs.as_mut_ptr(), d as u32, 0) };
        }
        // SAFETY: `out` holds `n` iovecs over the datagrams in `buf`.
        unsafe { libc::writev(file.as_raw_fd(), out.as_ptr(), n as i32) };
    }
}

/// Child: `serve-relay SINK DEC DIR CHANNELS WORKERS` — real channels, on a
/// current-thread runtime when WORKERS is 0 (pinned), else on a
/// multi-thread runtime with that many workers (unpinned); until killed.
fn serve_relay(args: &[String]) {
    let full_port: u16 = args[0].parse().expect("sink port");
    let dec_port: u16 = args[1].parse().expect("dec port");
    let dir = Path::new(&args[2]).to_path_buf();
    let channels: usize = args[3].parse().expect("channels");
    let workers: usize = args[4].parse().expect("workers");
    let coalesce_us: u32 = args[5].parse().expect("coalesce_us");
    let variant = args.get(6).map_or("plain", String::as_str).to_owned();
    let rt = if workers == 0 {
        pin_to(RELAY_CORE);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async move {
        let mut handles = Vec::new();
        let mut spec_settings = ChannelSettings::default();
        for i in 0..channels {
            let mut settings = ChannelSettings::default();
            settings.socket.bind = Ipv4Addr::LOCALHOST.into();
            settings.outputs.full_rate =
                vec![Destination::new(Ipv4Addr::LOCALHOST.into(), full_port)];
            settings.outputs.decimated =
                vec![Destination::new(Ipv4Addr::LOCALHOST.into(), dec_port)];
            settings.decimation.enabled = true;
            settings.decimation.factor = DECIMATION as u32;
            settings.socket.coalesce_us = coalesce_us;
            if variant == "flush" {
                // Large deflate blocks, written by size about once a second
                // at 50,000 80-byte records/s: the compression runs in the
                // blocking pool, on the channel's core.
                settings.archive.codec = speedrelay::config::Codec::Deflate;
                settings.archive.flush_records = u32::MAX;
                settings.archive.flush_bytes = 4 << 20;
                settings.archive.flush_ms = 60_000;
            }
            spec_settings = settings.clone();
            let spec = ChannelSpec {
                name: format!("bench{i}"),
                port: 0,
                schema_json: SCHEMA.into(),
                settings,
            };
            let mut bound = BoundChannel::bind(spec, &dir).expect("bind channel");
            if variant == "live" {
                // One viewer reading every event, as a browser would.
                let tap = Arc::new(LiveTap::default());
                bound = bound.with_live(tap.clone());
                let decoder = Arc::new(Decoder::new(SCHEMA).expect("schema"));
                let mut body = speedrelay::live::open(
                    &tap,
                    "bench",
                    decoder,
                    "decimated",
                    tokio_util::sync::CancellationToken::new(),
                    tokio_util::sync::CancellationToken::new(),
                )
                .expect("viewer");
                tokio::spawn(async move {
                    use http_body_util::BodyExt;
                    while let Some(Ok(frame)) = body.frame().await {
                        std::hint::black_box(frame);
                    }
                });
            }
            handles.push(bound.spawn().expect("spawn"));
        }
        let ports: Vec<String> = handles
            .iter()
            .map(|h| h.local_addr().port().to_string())
            .collect();
        println!("ready {}", ports.join(" "));
        std::io::stdout().flush().expect("flush");
        if variant == "patch" {
            // What a PATCH does to the running channel once it is
            // validated and committed (the HTTP request and the registry's
            // fsync are not in it): new settings, destinations reopened,
            // every 10 ms.
            let mut settings = spec_settings.clone();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0u64.. {
                tick.tick().await;
                settings.archive.flush_ms = 1000 + (n % 2) as u32;
                for h in &handles {
                    h.reconfigure(settings.clone()).expect("reconfigure");
                }
            }
        }
        // Until the bench kills this process.
        std::future::pending::<()>().await;
        let _keep: Vec<SocketAddr> = handles.iter().map(|h| h.local_addr()).collect();
    });
}
