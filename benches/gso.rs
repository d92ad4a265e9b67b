//! Does GSO (`UDP_SEGMENT`) pay for the relay's sends on this machine?
//!
//! The sender runs in the bench's namespace and sends over a veth pair to
//! a receiver in a child network namespace (so the datagrams leave the
//! sending stack as they would through a NIC, instead of being delivered
//! on loopback inside the send call). Per record size it sends the same
//! records in batches of up to 64, alternately
//! - **sendmmsg**: one `sendmmsg` of the batch, one message per record, as
//!   the relay does today;
//! - **gso**: one `sendmsg` per batch with a `UDP_SEGMENT` control message
//!   of the record size: one 64-record message that the stack splits.
//!
//! Figures, per variant, medians of the runs: the sender thread's CPU per
//! record (what the relay's core would pay), the whole machine's busy CPU
//! per record (both cores, `/proc/stat`: it includes the receive side,
//! which on a real network would be another host) and the share that
//! arrived. Bounded: a fixed record count per trial, each trial at most a
//! few seconds.
//!
//! `benches/run.sh gso [--runs N] [--count N]`: inside the private
//! namespace made by run.sh; it makes the child namespace and the veth
//! pair itself (root in the user namespace is enough) and refuses to run
//! outside a private namespace.

use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 27_999;
/// The largest GSO message the kernel takes (64 KiB of payload).
const GSO_MAX_BYTES: usize = 65_000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("gso-recv") {
        return receive(args.get(1).is_some_and(|a| a == "gro"));
    }
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!("gso bench: run it through benches/run.sh gso (a private network namespace)");
        return;
    }
    let runs: usize = arg_value(&args, "--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let count: u64 =
        arg_value(&args, "--count").map_or(1_000_000, |v| v.parse().expect("--count N"));
    let gro = args.iter().any(|a| a == "--gro");

    let exe = std::env::current_exe().expect("own path");
    let mut peer = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&exe)
        .arg("gso-recv")
        .arg(if gro { "gro" } else { "plain" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare a child network namespace");
    let pid = peer.id().to_string();
    sh(&[
        "ip", "link", "add", "gso0", "type", "veth", "peer", "name", "gso1",
    ]);
    sh(&["ip", "link", "set", "gso1", "netns", &pid]);
    sh(&["ip", "addr", "add", &format!("{HOST}/24"), "dev", "gso0"]);
    sh(&["ip", "link", "set", "gso0", "up"]);
    let mut lines = BufReader::new(peer.stdout.take().expect("stdout")).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the receiver did not start");
    let features = Command::new("ethtool")
        .args(["-k", "gso0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for l in features.lines().filter(|l| l.contains("segmentation")) {
        println!("gso0 {}", l.trim());
    }
    println!(
        "cpus: {}, sender pinned to core 0; receiver in a child namespace over veth (UDP_GRO on its socket: {gro}); {count} records per trial, {runs} runs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    pin_to(0);
    let tx = UdpSocket::bind((HOST, 0)).expect("bind");
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(4 << 20);
    tx.connect(SocketAddrV4::new(PEER, PORT)).expect("connect");
    let mut stdin = peer.stdin.take().expect("stdin");

    for size in [80usize, 1400] {
        let mut results: [Vec<Trial>; 2] = [Vec::new(), Vec::new()];
        for run in 1..=runs {
            for (v, gso) in [false, true].into_iter().enumerate() {
                let t = trial(&tx, &mut stdin, &mut lines, size, count, gso);
                println!(
                    "run {run} {size:>4} B {:<8} sender {:.3} µs/rec, machine {:.3} µs/rec, arrived {:.2} %, {:.0} rec/s",
                    if gso { "gso" } else { "sendmmsg" },
                    t.sender_ns / t.sent as f64 / 1e3,
                    t.machine_ns / t.sent as f64 / 1e3,
                    t.arrived as f64 / t.sent as f64 * 100.0,
                    t.sent as f64 / t.secs,
                );
                results[v].push(t);
            }
        }
        let med = |v: &[Trial], f: &dyn Fn(&Trial) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let sender = |t: &Trial| t.sender_ns / t.sent as f64 / 1e3;
        let machine = |t: &Trial| t.machine_ns / t.sent as f64 / 1e3;
        let arrived = |t: &Trial| t.arrived as f64 / t.sent as f64 * 100.0;
        println!("\nmedians of {runs}, {size}-byte records:");
        println!(
            "| variant | sender CPU µs/record | machine CPU µs/record | arrived |\n|---|---:|---:|---:|"
        );
        for (v, name) in ["sendmmsg", "gso"].iter().enumerate() {
            println!(
                "| {name} | {:.3} | {:.3} | {:.2} % |",
                med(&results[v], &sender),
                med(&results[v], &machine),
                med(&results[v], &arrived)
            );
        }
        println!(
            "gso / sendmmsg: sender {:.2}, machine {:.2}\n",
            med(&results[1], &sender) / med(&results[0], &sender),
            med(&results[1], &machine) / med(&results[0], &machine)
        );
    }
    drop(stdin);
    let _ = peer.kill();
    let _ = peer.wait();
    let _ = Command::new("ip").args(["link", "del", "gso0"]).status();
}

fn arg_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn sh(cmd: &[&str]) {
    let ok = Command::new(cmd[0])
        .args(&cmd[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} failed", cmd.join(" "));
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

fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Busy time of the whole machine (every state but idle and iowait), ns.
fn machine_busy_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf only reads a value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz * 1e9
}

struct Trial {
    sent: u64,
    arrived: u64,
    secs: f64,
    sender_ns: f64,
    machine_ns: f64,
}

/// Sends `count` records of `size` bytes in batches, then asks the
/// receiver how many arrived.
fn trial(
    tx: &UdpSocket,
    ctl: &mut impl Write,
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    size: usize,
    count: u64,
    gso: bool,
) -> Trial {
    let per_msg = BATCH.min(GSO_MAX_BYTES / size);
    let buf = vec![0x5au8; size * per_msg];
    // The receiver counts bytes (a UDP_GRO read holds several records).
    writeln!(ctl, "size {size}\nreset").expect("receiver");
    ctl.flush().expect("receiver");
    let _ = (lines.next(), lines.next());
    let (c0, m0, t0) = (thread_cpu_ns(), machine_busy_ns(), Instant::now());
    let limit = Duration::from_secs(10);
    let mut sent = 0u64;
    while sent < count && t0.elapsed() < limit {
        let n = per_msg.min((count - sent) as usize);
        let r = if gso {
            send_gso(tx, &buf[..n * size], size)
        } else {
            send_mmsg(tx, &buf[..n * size], size)
        };
        match r {
            Ok(k) => sent += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("send: {e}"),
        }
    }
    let (c1, m1, secs) = (
        thread_cpu_ns(),
        machine_busy_ns(),
        t0.elapsed().as_secs_f64(),
    );
    // Let the receiver finish what is in flight.
    std::thread::sleep(Duration::from_millis(200));
    writeln!(ctl, "count").expect("receiver");
    ctl.flush().expect("receiver");
    let arrived = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    Trial {
        sent,
        arrived,
        secs,
        sender_ns: c1 - c0,
        machine_ns: m1 - m0,
    }
}

/// One `sendmmsg` of the records in `buf`; how many the kernel took.
fn send_mmsg(tx: &UdpSocket, buf: &[u8], size: usize) -> std::io::Result<usize> {
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = buf.len() / size;
    for (i, rec) in buf.chunks_exact(size).enumerate() {
        let iov = iovs[i].write(libc::iovec {
            iov_base: rec.as_ptr().cast_mut().cast(),
            iov_len: rec.len(),
        });
        hdrs[i].msg_hdr.msg_iov = iov;
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `n` headers, each over one record of `buf`, alive for the call.
    let r = unsafe { libc::sendmmsg(tx.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One `sendmsg` of `buf` with `UDP_SEGMENT` = `size`: the kernel splits
/// it into records of `size` bytes.
fn send_gso(tx: &UdpSocket, buf: &[u8], size: usize) -> std::io::Result<usize> {
    #[repr(C)]
    union Cmsg {
        _align: libc::cmsghdr,
        bytes: [u8; 32],
    }
    let mut cmsg = Cmsg { bytes: [0; 32] };
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut cmsg).cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer is aligned and large enough for one u16 cmsg.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `c` points at the aligned header at the start of `cmsg`.
    let hdr = unsafe { &mut *c };
    hdr.cmsg_level = libc::SOL_UDP;
    hdr.cmsg_type = libc::UDP_SEGMENT;
    // SAFETY: CMSG_LEN only computes a size.
    hdr.cmsg_len = unsafe { libc::CMSG_LEN(size_of::<u16>() as u32) } as _;
    // SAFETY: the payload follows the header within `cmsg`.
    let data = unsafe { libc::CMSG_DATA(c) };
    // SAFETY: `data` has room for a u16 in `cmsg`, written unaligned.
    unsafe { std::ptr::write_unaligned(data.cast::<u16>(), size as u16) };
    // SAFETY: `msg` points at `iov` over `buf` and at `cmsg`, alive for the call.
    let r = unsafe { libc::sendmsg(tx.as_raw_fd(), &msg, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize / size)
    }
}

/// Child, in its own network namespace: waits for the veth end, takes
/// the peer address, counts datagrams; `reset` and `count` on stdin.
fn receive(gro: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new("/sys/class/net/gso1").exists() {
        assert!(Instant::now() < deadline, "the veth end never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "addr", "add", &format!("{PEER}/24"), "dev", "gso1"]);
    sh(&["ip", "link", "set", "gso1", "up"]);
    let rx = UdpSocket::bind((PEER, PORT)).expect("bind");
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(8 << 20);
    if gro {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option of the size given.
        unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
    }
    rx.set_nonblocking(true).expect("nonblocking");
    pin_to(1);
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counted.clone();
    std::thread::spawn(move || {
        pin_to(1);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // With UDP_GRO a read may hold several records: bytes are
            // counted, divided by the trial's record size when asked.
            match rx.recv(&mut buf) {
                Ok(n) => {
                    c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {
                    let mut pfd = libc::pollfd {
                        fd: rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                }
            }
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut size = 1u64;
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "reset" => {
                counted.store(0, std::sync::atomic::Ordering::Relaxed);
                println!("ok");
            }
            s if s.starts_with("size ") => {
                size = s[5..].parse().unwrap_or(1);
                println!("ok");
            }
            "count" => println!(
                "{}",
                counted.load(std::sync::atomic::Ordering::Relaxed) / size.max(1)
            ),
            _ => println!("?"),
        }
        let _ = std::io::stdout().flush();
    }
}
