//! Whole-channel throughput: one real channel (validate + archive +
//! full-rate + decimated destinations) on one pinned core, flooded by a
//! batched generator on the other core, 80-byte example.avsc records.
//!
//! Run it with `benches/run.sh` (a private network namespace; the bench
//! refuses to run outside one). Bounded: a fixed number of records and a
//! time limit, whichever comes first.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::{Record, Value};
use speedrelay::channel::{BoundChannel, ChannelSpec};
use speedrelay::config::{ChannelSettings, Destination};

const SCHEMA: &str = include_str!("../config/agents/example.avsc");
const RECORDS: u64 = 3_000_000;
const TIME_LIMIT: Duration = Duration::from_secs(15);
const RUNS: usize = 3;

fn main() {
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!("relay bench: run it through benches/run.sh (a private network namespace)");
        return;
    }
    let record = record_of_80_bytes();
    println!("record size: {} bytes", record.len());
    let mut rates = Vec::new();
    for run in 1..=RUNS {
        let r = flood_once(&record);
        println!(
            "run {run}: {:.0} records/s processed, {} received, {} kernel drops, {} invalid, {:.2} s",
            r.rate, r.packets, r.drops, r.invalid, r.secs
        );
        rates.push(r.rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} records/s through one channel on one core",
        rates[rates.len() / 2]
    );
}

fn record_of_80_bytes() -> Vec<u8> {
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let mut r = Record::new(&schema).expect("record");
    r.put("time", Value::Long(1_763_900_000_000_000_000));
    r.put("counter", Value::Int(12345));
    r.put("sine_wave", Value::Double(0.5));
    r.put("ramp", Value::Double(1.5));
    r.put("square_wave", Value::Double(1.0));
    r.put("noise", Value::Double(0.01));
    // Pad the message so the whole record is 80 bytes.
    let mut msg = String::new();
    loop {
        r.put("message", Value::String(msg.clone()));
        let w = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        let bytes = w
            .write_value_to_vec(Value::from(r.clone()))
            .expect("encodes");
        if bytes.len() >= 80 {
            return bytes;
        }
        msg.push('x');
    }
}

struct Outcome {
    rate: f64,
    packets: u64,
    drops: u64,
    invalid: u64,
    secs: f64,
}

fn pin_to(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn flood_once(record: &[u8]) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    // Destinations nobody reads: the relay pays for every send, the kernel
    // drops at the full receive queue, as a slow consumer would.
    let full = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let dec = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut settings = ChannelSettings::default();
    settings.socket.bind = Ipv4Addr::LOCALHOST.into();
    settings.outputs.full_rate = vec![Destination::new(
        Ipv4Addr::LOCALHOST.into(),
        full.local_addr().expect("addr").port(),
    )];
    settings.outputs.decimated = vec![Destination::new(
        Ipv4Addr::LOCALHOST.into(),
        dec.local_addr().expect("addr").port(),
    )];
    settings.decimation.enabled = true;
    settings.decimation.factor = 10;
    let spec = ChannelSpec {
        name: "bench".into(),
        port: 0,
        schema_json: SCHEMA.into(),
        settings,
    };
    let data_dir = dir.path().to_path_buf();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = std::thread::spawn(move || {
        pin_to(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let bound = BoundChannel::bind(spec, &data_dir).expect("bind channel");
            let handle = bound.spawn().expect("spawn");
            addr_tx
                .send((handle.local_addr(), handle.counters().clone()))
                .expect("send addr");
            let _ = stop_rx.await;
            handle.stop().await.expect("stop");
        });
    });
    let (addr, counters): (SocketAddr, Arc<_>) = addr_rx.recv().expect("relay started");

    pin_to(1);
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    tx.connect(addr).expect("connect");
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < RECORDS && start.elapsed() < TIME_LIMIT {
        sent += send_batch(&tx, record, 64);
    }
    // Let the relay finish what the kernel queued, then read the counters.
    let settle = Instant::now();
    let c: Arc<speedrelay::counters::ChannelCounters> = counters;
    let mut last = u64::MAX;
    while c.packets.load(Relaxed) != last && settle.elapsed() < Duration::from_secs(2) {
        last = c.packets.load(Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let snapshot = c.snapshot();
    let _ = stop_tx.send(());
    relay.join().expect("relay thread");
    Outcome {
        rate: snapshot.packets as f64 / secs,
        packets: snapshot.packets,
        drops: snapshot.kernel_drops,
        invalid: snapshot.invalid,
        secs,
    }
}

/// One `sendmmsg` of `n` copies of `record`; returns how many went out.
fn send_batch(tx: &UdpSocket, record: &[u8], n: usize) -> u64 {
    let mut iovs: Vec<libc::iovec> = (0..n)
        .map(|_| libc::iovec {
            iov_base: record.as_ptr() as *mut libc::c_void,
            iov_len: record.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: zeroed header plus one iovec is a valid message.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: headers point at live iovecs over `record`.
    let r = unsafe { libc::sendmmsg(tx.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
    r.max(0) as u64
}
