//! What handing a channel's filled batches from a receiving thread to a
//! processing thread costs per record (the two-stage design for one hot
//! channel on several cores, benches/README.md "Many cores").
//!
//! A fixed pool of batches (64 slots each) circulates between two threads
//! through two single-producer single-consumer rings of batch indices
//! (filled → worker, empty → receiver): no allocation, no lock, no copy
//! beyond the records themselves; order is kept (one ring, one worker).
//! The receiving stage writes each record into its slot as `recvmmsg`
//! would; the worker reads every byte (a checksum, standing in for
//! validation and the sends' reading of the buffer). Compared with both
//! stages run inline on one thread, the difference in CPU per record is
//! the hand-off's cost: ring operations, wake-ups of a side that slept,
//! and the records' cache lines moving between cores. The kernel's UDP
//! work (5–7 µs per record here) is not in it: this isolates what the
//! design adds. Bounded: a fixed record count per trial.
//!
//! `--work-ns N` adds N ns of CPU per record to each stage (burnt per
//! batch), standing in for the kernel's share: receiving on one side,
//! sending on the other (about half each of the 5–7 µs per record
//! measured here). With it the two stages overlap as they would in the
//! relay, and the rate shows what the split can gain.
//!
//! `cargo bench --bench handoff [-- --runs N] [--work-ns N]` (no traffic;
//! no namespace needed). Stages pinned to cores 0 and 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

const BATCH: usize = 64;
const POOL: usize = 4;
const RECORDS: u64 = 20_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |v| v.parse().expect("--runs N"));
    let work: u64 = args
        .iter()
        .position(|a| a == "--work-ns")
        .and_then(|i| args.get(i + 1))
        .map_or(0, |v| v.parse().expect("--work-ns N"));
    WORK_NS.store(work, Ordering::Relaxed);
    println!(
        "cpus: {}, pool of {POOL} batches of {BATCH}, {work} ns of stand-in kernel work per record and stage, {runs} runs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for size in [80usize, 1400] {
        let mut records = if size > 200 { RECORDS / 8 } else { RECORDS };
        // About 2 s of work per trial.
        if let Some(per_second) = 1_000_000_000u64.checked_div(work) {
            records = records.min(per_second / 64 * 64);
        }
        let mut inline = Vec::new();
        let mut piped = Vec::new();
        for run in 1..=runs {
            let a = run_inline(size, records);
            let b = run_pipeline(size, records);
            println!(
                "run {run} {size:>4} B: inline {:.1} ns/rec CPU ({:.1} ns/rec wall) | two stages {:.1} ns/rec CPU ({:.1} ns/rec wall, worker slept {} times)",
                a.cpu_ns / records as f64,
                a.wall_ns / records as f64,
                b.cpu_ns / records as f64,
                b.wall_ns / records as f64,
                b.sleeps
            );
            inline.push(a);
            piped.push(b);
        }
        let med = |v: &[Outcome], f: fn(&Outcome) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2] / records as f64
        };
        let (ci, cp) = (med(&inline, |o| o.cpu_ns), med(&piped, |o| o.cpu_ns));
        let (wi, wp) = (med(&inline, |o| o.wall_ns), med(&piped, |o| o.wall_ns));
        println!(
            "\nmedians, {size}-byte records: CPU per record inline {ci:.1} ns, two stages {cp:.1} ns: the hand-off adds {:.1} ns per record; wall time per record {wi:.1} vs {wp:.1} ns ({:.2}x the inline rate)\n",
            cp - ci,
            wi / wp
        );
    }
}

struct Outcome {
    cpu_ns: f64,
    wall_ns: f64,
    sleeps: u64,
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

/// One batch: 64 slots of `size` bytes and their lengths.
struct Batch {
    data: Vec<u8>,
    lens: [u32; BATCH],
    len: usize,
}

/// Stand-in kernel work per record and stage, ns of CPU (`--work-ns`).
static WORK_NS: AtomicU64 = AtomicU64::new(0);

/// Burns `records` × [`WORK_NS`] of this thread's CPU time.
fn kernel_work(records: usize) {
    let ns = WORK_NS.load(Ordering::Relaxed) * records as u64;
    if ns == 0 {
        return;
    }
    let end = thread_cpu_ns() + ns as f64;
    while thread_cpu_ns() < end {
        std::hint::spin_loop();
    }
}

/// What receiving does to a batch: each record written into its slot.
fn fill(b: &mut Batch, size: usize, seq: &mut u64) {
    kernel_work(BATCH);
    for (i, slot) in b.data.chunks_exact_mut(size).enumerate() {
        slot.fill(*seq as u8);
        slot[..8].copy_from_slice(&seq.to_le_bytes());
        b.lens[i] = size as u32;
        *seq += 1;
    }
    b.len = BATCH;
}

/// What processing does: reads every byte; checks the order.
fn process(b: &Batch, size: usize, next: &mut u64) -> u64 {
    kernel_work(b.len);
    let mut sum = 0u64;
    for (i, slot) in b.data.chunks_exact(size).take(b.len).enumerate() {
        let seq = u64::from_le_bytes(slot[..8].try_into().unwrap_or_default());
        assert_eq!(seq, *next, "records out of order");
        *next += 1;
        sum = slot[..b.lens[i] as usize]
            .iter()
            .fold(sum, |s, &x| s.wrapping_mul(31).wrapping_add(u64::from(x)));
    }
    sum
}

fn new_batch(size: usize) -> Batch {
    Batch {
        data: vec![0; size * BATCH],
        lens: [0; BATCH],
        len: 0,
    }
}

fn run_inline(size: usize, records: u64) -> Outcome {
    pin_to(0);
    let mut b = new_batch(size);
    let (mut seq, mut next) = (0u64, 0u64);
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    let mut sum = 0u64;
    while seq < records {
        fill(&mut b, size, &mut seq);
        sum = sum.wrapping_add(process(&b, size, &mut next));
    }
    std::hint::black_box(sum);
    Outcome {
        cpu_ns: thread_cpu_ns() - c0,
        wall_ns: t0.elapsed().as_nanos() as f64,
        sleeps: 0,
    }
}

/// A single-producer single-consumer ring of batch indices (capacity a
/// power of two at least the pool): one atomic store per push or pop.
struct Ring {
    slots: [AtomicUsize; POOL],
    head: AtomicU64,
    tail: AtomicU64,
    /// The consumer is (about to be) parked.
    sleeping: AtomicBool,
}

impl Ring {
    fn new() -> Self {
        Ring {
            slots: std::array::from_fn(|_| AtomicUsize::new(0)),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
        }
    }

    /// Never full: the pool holds only `POOL` batches.
    fn push(&self, v: usize, consumer: &std::thread::Thread) {
        let t = self.tail.load(Ordering::Relaxed);
        self.slots[(t as usize) % POOL].store(v, Ordering::Relaxed);
        self.tail.store(t + 1, Ordering::Release);
        if self.sleeping.load(Ordering::SeqCst) {
            consumer.unpark();
        }
    }

    /// Spins briefly, then parks until a push; counts the parks.
    fn pop(&self, sleeps: &mut u64) -> usize {
        let h = self.head.load(Ordering::Relaxed);
        let mut spins = 0u32;
        loop {
            if self.tail.load(Ordering::Acquire) > h {
                let v = self.slots[(h as usize) % POOL].load(Ordering::Relaxed);
                self.head.store(h + 1, Ordering::Release);
                return v;
            }
            spins += 1;
            if spins < 2_000 {
                std::hint::spin_loop();
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            if self.tail.load(Ordering::SeqCst) == h {
                *sleeps += 1;
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
            self.sleeping.store(false, Ordering::SeqCst);
            spins = 0;
        }
    }
}

fn run_pipeline(size: usize, records: u64) -> Outcome {
    let batches: Arc<Vec<std::sync::Mutex<Batch>>> = Arc::new(
        (0..POOL)
            .map(|_| std::sync::Mutex::new(new_batch(size)))
            .collect(),
    );
    let filled = Arc::new(Ring::new());
    let empty = Arc::new(Ring::new());
    let receiver = std::thread::current();
    let (f2, e2, b2) = (filled.clone(), empty.clone(), batches.clone());
    let t0 = Instant::now();
    // The worker: pops filled batches, processes, returns them.
    let worker = std::thread::spawn(move || {
        pin_to(1);
        let c0 = thread_cpu_ns();
        let (mut next, mut sleeps, mut sum) = (0u64, 0u64, 0u64);
        while next < records {
            let i = f2.pop(&mut sleeps);
            // Uncontended: the ring hands each batch to one side at a time
            // (a Mutex only to satisfy the borrow checker; never waits).
            let b = b2[i].lock().unwrap_or_else(|p| p.into_inner());
            sum = sum.wrapping_add(process(&b, size, &mut next));
            drop(b);
            e2.push(i, &receiver);
        }
        std::hint::black_box(sum);
        (thread_cpu_ns() - c0, sleeps)
    });
    pin_to(0);
    let c0 = thread_cpu_ns();
    let worker_thread = worker.thread().clone();
    let (mut seq, mut sleeps) = (0u64, 0u64);
    let mut free: Vec<usize> = (0..POOL).collect();
    while seq < records {
        let i = match free.pop() {
            Some(i) => i,
            None => empty.pop(&mut sleeps),
        };
        let mut b = batches[i].lock().unwrap_or_else(|p| p.into_inner());
        fill(&mut b, size, &mut seq);
        drop(b);
        filled.push(i, &worker_thread);
    }
    let recv_cpu = thread_cpu_ns() - c0;
    let (work_cpu, work_sleeps) = worker.join().expect("worker");
    Outcome {
        cpu_ns: recv_cpu + work_cpu,
        wall_ns: t0.elapsed().as_nanos() as f64,
        sleeps: work_sleeps,
    }
}
