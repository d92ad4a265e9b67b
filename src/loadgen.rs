//! The load generator behind `speedrelay send` (SPEC §2), the demo source:
//! random record generation for any Avro schema and the paced (or flood)
//! batched sending of those records to one UDP port. The command's flags
//! and printing are the binary's (`src/cli/send.rs`).
//!
//! Generation is off the hot path: a pool of [`POOL_SIZE`] random records is
//! encoded once, by our own encoder walking the parsed schema, into one
//! buffer. Sending cycles through the pool in batches of up to [`BATCH`]
//! datagrams per `sendmmsg`. A field named `time` whose type is a `long`
//! gets the current time in nanoseconds, encoded in a fixed 9 bytes (every
//! instant between 1971 and 2116 zig-zag-encodes to exactly 9 bytes), so it
//! is overwritten in place for each batch instead of re-encoding anything.
//!
//! Pacing is a token bucket refilled between batches: at high rates one
//! wake-up sends many datagrams, never one sleep per datagram.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, NamesRef, NamespaceRef, ResolvedSchema, UuidSchema};

use crate::avro::put_long;
use crate::config::Destination;
use crate::udp;

/// Distinct random records encoded up front and cycled through.
pub const POOL_SIZE: usize = 1024;
/// Most datagrams handed to one `sendmmsg` call.
pub const BATCH: usize = 256;
/// Largest UDP payload over IPv4; a record must fit in one datagram.
pub const MAX_DATAGRAM: usize = 65_507;
/// The encoded width of a `time` value (see the module docs).
pub const TIME_WIDTH: usize = 9;
/// Beyond this nesting, arrays and maps are empty and unions take their
/// least recursive branch, so recursive schemas end.
const SOFT_DEPTH: usize = 8;
/// A schema that still nests this deep has no finite value.
const HARD_DEPTH: usize = 64;
/// Items per generated array or map, at most.
const MAX_ITEMS: u64 = 4;
/// Characters per generated string, at most.
const MAX_STRING: u64 = 16;
/// Pacing never sleeps less than this: more datagrams per wake-up instead.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Nor longer than this, so Ctrl-C is seen promptly even at 1 record/s.
const MAX_TICK: Duration = Duration::from_millis(50);
/// How long the end of a short run waits for the refusals of its last
/// sends: on loopback they are there at once, from a remote host they take
/// a round trip.
const LAST_REFUSAL_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot read schema file {path}: {source}")]
    SchemaRead { path: PathBuf, source: io::Error },
    #[error("{path} is not an Avro schema: {reason}")]
    SchemaParse { path: PathBuf, reason: String },
    #[error("cannot generate a record: {0}")]
    Generate(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot open a UDP socket to {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("sending to {addr} failed after {sent} records: {source}")]
    Send {
        addr: SocketAddr,
        sent: u64,
        source: io::Error,
    },
    #[error(
        "no record was delivered: {addr} refused every send ({sent} records); \
         is a channel listening on port {port}?"
    )]
    AllRefused {
        addr: SocketAddr,
        port: u16,
        sent: u64,
    },
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Records the destination refused (ICMP port unreachable): nothing
    /// listened. Counted one by one from the socket's error queue; ICMP
    /// errors from a remote host may be rate-limited, so fewer may be seen.
    pub refused: u64,
}

impl Report {
    /// Every record sent was refused: none reached a listener.
    pub fn all_refused(&self) -> bool {
        self.records > 0 && self.refused >= self.records
    }

    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

pub fn load_schema(path: &std::path::Path) -> Result<Schema, SendError> {
    let text = std::fs::read_to_string(path).map_err(|source| SendError::SchemaRead {
        path: path.to_path_buf(),
        source,
    })?;
    // apache-avro logs warnings about schema style (e.g. a logicalType
    // placed beside a field's type instead of inside it); the relay reports
    // those when the channel is registered, so the demo source stays quiet
    // about them.
    let parsed =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            Schema::parse_str(&text)
        });
    parsed.map_err(|e| SendError::SchemaParse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A seed for [`RecordPool::generate`] that differs between runs and processes.
pub fn seed() -> u64 {
    let t = now_ns() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

/// When to stop and how fast to go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records per second; 0 = flood.
    pub rate: u64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// A connected socket and the pool it sends from.
pub struct Sender {
    socket: UdpSocket,
    addr: SocketAddr,
    pool: RecordPool,
}

impl Sender {
    /// A blocking socket connected to `addr`: a full send buffer makes us
    /// wait rather than drop, and the kernel skips a route lookup per
    /// datagram.
    pub fn connect(addr: SocketAddr, pool: RecordPool) -> Result<Self, SendError> {
        let socket_error = |source| SendError::Socket { addr, source };
        // The relay's own destination socket (4 MiB send buffer, connected),
        // made blocking.
        let socket = udp::connect_destination(&Destination::new(addr.ip(), addr.port()))
            .map_err(socket_error)?;
        socket.set_nonblocking(false).map_err(socket_error)?;
        // Each ICMP error is queued, so refusals can be counted one by one
        // (the socket's single pending error would merge them, and
        // sendmmsg drops the one that cuts a batch short).
        let (level, name) = match addr {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_RECVERR),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        };
        let on: libc::c_int = 1;
        udp::retry_eintr(|| {
            // SAFETY: a valid fd and an int option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    level,
                    name,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                ) as isize
            }
        })
        .map_err(socket_error)?;
        Ok(Sender { socket, addr, pool })
    }

    /// Sends until a limit is reached or `stop` is set.
    pub fn run(&mut self, limits: Limits, stop: &AtomicBool) -> Result<Report, SendError> {
        let start = Instant::now();
        // A deadline beyond what Instant holds is no deadline.
        let deadline = limits.duration.and_then(|d| start.checked_add(d));
        let mut report = Report {
            records: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            refused: 0,
        };
        let rate = limits.rate as f64;
        // Credit is kept for up to 100 ms of records (at least one batch):
        // enough that a sleep overshooting on a busy machine is made up,
        // not so much that a long stall (SIGSTOP) turns into a flood.
        let burst = (rate * 0.1).max(BATCH as f64);
        let mut tokens = 1.0f64;
        let mut refilled = start;
        let mut cursor = 0usize;
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            let mut want = BATCH as u64;
            if let Some(count) = limits.count {
                if report.records >= count {
                    break;
                }
                want = want.min(count - report.records);
            }
            if limits.rate > 0 {
                tokens = (tokens + rate * (now - refilled).as_secs_f64()).min(burst);
                refilled = now;
                if tokens < 1.0 {
                    let mut nap =
                        Duration::from_secs_f64((1.0 - tokens) / rate).clamp(MIN_TICK, MAX_TICK);
                    if let Some(d) = deadline {
                        nap = nap.min(d.saturating_duration_since(now));
                    }
                    std::thread::sleep(nap);
                    continue;
                }
                want = want.min(tokens as u64);
            }
            // A batch never wraps around the pool's end.
            let n = (want as usize).min(self.pool.len() - cursor);
            let (sent, bytes) = self.send_batch(cursor, n, &mut report)?;
            report.records += sent as u64;
            report.bytes += bytes;
            tokens -= sent as f64;
            cursor = (cursor + sent) % self.pool.len();
        }
        report.refused += self.take_refusals();
        // A short run may end before the refusals of its last sends came
        // back; wait for them a little (a long one shows its pattern).
        let outstanding = report.records.saturating_sub(report.refused);
        if outstanding > 0 && outstanding <= BATCH as u64 {
            let deadline = Instant::now() + LAST_REFUSAL_WAIT;
            while report.refused < report.records && self.wait_for_error(deadline) {
                let taken = self.take_refusals();
                if taken == 0 {
                    // Some other pending error: clear it, or poll spins.
                    let _ = self.socket.take_error();
                }
                report.refused += taken;
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Takes every queued ICMP error; returns how many were refusals.
    fn take_refusals(&self) -> u64 {
        /// Room for one `sock_extended_err` and the offender's address.
        #[repr(C, align(8))]
        struct Control([u8; 128]);
        const _: () = assert!(
            align_of::<Control>() >= align_of::<libc::cmsghdr>()
                && size_of::<libc::cmsghdr>()
                    + size_of::<libc::sock_extended_err>()
                    + size_of::<libc::sockaddr_in6>()
                    <= size_of::<Control>()
        );
        let fd = self.socket.as_raw_fd();
        let mut refused = 0;
        let mut control = Control([0; 128]);
        let mut byte = [0u8; 1];
        loop {
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: byte.len(),
            };
            // SAFETY: all-zero msghdr is valid; its pointers are set below to
            // buffers that outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = size_of::<Control>() as _;
            let r = udp::retry_eintr(|| {
                // SAFETY: msg points at live buffers of the sizes given.
                unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) }
            });
            if r.is_err() {
                // EAGAIN: the queue is empty.
                return refused;
            }
            // SAFETY: recvmsg filled `msg` in; its control buffer is
            // `control`, aligned for cmsghdr and alive for this loop.
            let cmsgs = unsafe { udp::Cmsgs::new(&msg) };
            for c in cmsgs {
                let (level, kind) = (c.header().cmsg_level, c.header().cmsg_type);
                if (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR)
                {
                    // SAFETY: sock_extended_err is plain integers.
                    let e = unsafe { c.read::<libc::sock_extended_err>() };
                    if e.is_some_and(|e| e.ee_errno == libc::ECONNREFUSED as u32) {
                        refused += 1;
                    }
                }
            }
        }
    }

    /// Waits until an error is pending on the socket or `deadline` passes;
    /// true when one is.
    fn wait_for_error(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            // POLLERR is reported whatever is asked for.
            events: 0,
            revents: 0,
        };
        let timeout = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        let ready = udp::retry_eintr(|| {
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, timeout) as isize }
        });
        matches!(ready, Ok(n) if n > 0) && pfd.revents & libc::POLLERR != 0
    }

    /// Stamps records `first..first + n` with the current time and sends
    /// them (a signal does not cut a batch short: the caller checks
    /// [`STOP`] between batches); returns how many went out and their bytes.
    fn send_batch(
        &mut self,
        first: usize,
        n: usize,
        report: &mut Report,
    ) -> Result<(usize, u64), SendError> {
        let now = now_ns();
        for i in 0..n {
            // Distinct instants within the batch keep records ordered.
            self.pool.stamp(first + i, now.saturating_add(i as i64));
        }
        let mut done = 0;
        while done < n {
            let records = (first + done..first + n).map(|i| self.pool.record(i));
            let r = udp::sendmmsg(&self.socket, records);
            report.refused += self.take_refusals();
            match r {
                Ok(sent) => done += sent,
                // An ICMP "port unreachable" for an earlier datagram, also
                // queued (and counted) by take_refusals: keep sending.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                Err(source) => {
                    return Err(SendError::Send {
                        addr: self.addr,
                        sent: report.records + done as u64,
                        source,
                    });
                }
            }
        }
        let bytes = (first..first + done)
            .map(|i| self.pool.record(i).len() as u64)
            .sum();
        Ok((done, bytes))
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Random records of one schema, encoded back to back in one buffer.
#[derive(Debug, Clone)]
pub struct RecordPool {
    buf: Vec<u8>,
    /// `(start, end)` of each record in `buf`.
    spans: Vec<(usize, usize)>,
    /// Offsets in `buf` of every 9-byte `time` value, record by record.
    times: Vec<usize>,
    /// `times[start..end]` belong to record `i`.
    time_spans: Vec<(usize, usize)>,
}

impl RecordPool {
    /// `n` random records of `schema`; `seed` makes them reproducible.
    pub fn generate(schema: &Schema, n: usize, seed: u64) -> Result<Self, SendError> {
        let resolved =
            ResolvedSchema::try_from(schema).map_err(|e| SendError::Generate(e.to_string()))?;
        let mut encoder = Encoder {
            names: resolved.get_names(),
            rng: Rng::new(seed),
            out: Vec::new(),
            times: Vec::new(),
        };
        let mut pool = RecordPool {
            buf: Vec::new(),
            spans: Vec::with_capacity(n),
            times: Vec::new(),
            time_spans: Vec::with_capacity(n),
        };
        let now = now_ns();
        for _ in 0..n {
            let mut tries = 0;
            loop {
                encoder.out.clear();
                encoder.times.clear();
                encoder.datum(schema, None, None, 0, now)?;
                if encoder.out.len() <= MAX_DATAGRAM {
                    break;
                }
                tries += 1;
                if tries == 10 {
                    return Err(SendError::Generate(format!(
                        "records of this schema do not fit in one datagram ({} bytes)",
                        encoder.out.len()
                    )));
                }
            }
            let start = pool.buf.len();
            pool.buf.extend_from_slice(&encoder.out);
            pool.spans.push((start, pool.buf.len()));
            let t = pool.times.len();
            pool.times.extend(encoder.times.iter().map(|o| start + o));
            pool.time_spans.push((t, pool.times.len()));
        }
        Ok(pool)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn record(&self, i: usize) -> &[u8] {
        let (s, e) = self.spans[i];
        &self.buf[s..e]
    }

    /// Sets every `time` field of record `i` to `ns`.
    pub fn stamp(&mut self, i: usize, ns: i64) {
        let (s, e) = self.time_spans[i];
        let encoded = time9(ns);
        for &off in &self.times[s..e] {
            self.buf[off..off + TIME_WIDTH].copy_from_slice(&encoded);
        }
    }

    /// Whether records carry a `time` field.
    pub fn has_time(&self) -> bool {
        !self.times.is_empty()
    }
}

/// `ns` as an Avro long in exactly [`TIME_WIDTH`] bytes. Instants between
/// 1971 and 2116 need exactly 9 bytes; anything outside is clamped so the
/// width never changes.
fn time9(ns: i64) -> [u8; TIME_WIDTH] {
    const LOW: i64 = 1 << 55; // zig-zag 2^56: the smallest 9-byte value
    const HIGH: i64 = (1 << 62) - 1; // zig-zag < 2^63: the largest
    let zz = (ns.clamp(LOW, HIGH) as u64) << 1;
    let mut out = [0u8; TIME_WIDTH];
    for (i, b) in out.iter_mut().enumerate() {
        let part = ((zz >> (7 * i)) & 0x7f) as u8;
        *b = if i + 1 < TIME_WIDTH {
            part | 0x80
        } else {
            part
        };
    }
    out
}

/// splitmix64: fast, good enough for test data, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Writes one random datum of a schema in Avro binary encoding.
struct Encoder<'s> {
    names: &'s NamesRef<'s>,
    rng: Rng,
    out: Vec<u8>,
    /// Offsets in `out` of the `time` values written.
    times: Vec<usize>,
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl<'s> Encoder<'s> {
    /// `field` is the name of the record field this datum fills, if any.
    fn datum(
        &mut self,
        schema: &'s Schema,
        ns: NamespaceRef<'s>,
        field: Option<&str>,
        depth: usize,
        now: i64,
    ) -> Result<(), SendError> {
        if depth > HARD_DEPTH {
            return Err(SendError::Generate(
                "the schema nests without end (a recursive type with no null or empty branch)"
                    .into(),
            ));
        }
        if field == Some("time") && is_long(schema) {
            self.times.push(self.out.len());
            self.out.extend_from_slice(&time9(now));
            return Ok(());
        }
        match schema {
            Schema::Null => {}
            Schema::Boolean => self.out.push((self.rng.next() & 1) as u8),
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                let v = self.rng.below(2_000_001) as i64 - 1_000_000;
                self.long(v);
            }
            // The same list as `is_long`, spelled out so the match stays
            // exhaustive (a new schema kind must be handled here).
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                let v = self.rng.below(2_000_000_000_001) as i64 - 1_000_000_000_000;
                self.long(v);
            }
            Schema::Float => {
                let v = (self.rng.unit() * 2000.0 - 1000.0) as f32;
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            Schema::Double => {
                let v = self.rng.unit() * 2000.0 - 1000.0;
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            Schema::Bytes => {
                let n = self.rng.below(MAX_STRING + 1) as usize;
                self.random_bytes_prefixed(n);
            }
            Schema::Decimal(d) => match &d.inner {
                // At least one byte: an empty two's-complement is no number.
                InnerDecimalSchema::Bytes => {
                    let n = 1 + self.rng.below(8) as usize;
                    self.random_bytes_prefixed(n);
                }
                InnerDecimalSchema::Fixed(f) => self.random_bytes(f.size),
            },
            Schema::BigDecimal => {
                // apache-avro's big-decimal: bytes holding a length-prefixed
                // big-endian integer, then the scale as a long.
                let digits = 1 + self.rng.below(8) as usize;
                let scale = self.rng.below(10) as i64;
                let mut inner = Vec::with_capacity(digits + 2);
                put_long(&mut inner, digits as i64);
                inner.extend((0..digits).map(|_| self.rng.next() as u8));
                put_long(&mut inner, scale);
                self.long(inner.len() as i64);
                self.out.extend_from_slice(&inner);
            }
            Schema::String => {
                let n = 1 + self.rng.below(MAX_STRING) as usize;
                self.long(n as i64);
                for _ in 0..n {
                    let c = ALNUM[self.rng.below(ALNUM.len() as u64) as usize];
                    self.out.push(c);
                }
            }
            Schema::Uuid(UuidSchema::String) => {
                let hi = self.rng.next();
                let lo = self.rng.next();
                let text = format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    hi >> 32,
                    (hi >> 16) & 0xffff,
                    hi & 0xfff,
                    0x8000 | (lo >> 48) & 0x3fff,
                    lo & 0xffff_ffff_ffff
                );
                self.long(text.len() as i64);
                self.out.extend_from_slice(text.as_bytes());
            }
            Schema::Uuid(UuidSchema::Bytes) => self.random_bytes_prefixed(16),
            Schema::Uuid(UuidSchema::Fixed(f)) => self.random_bytes(f.size),
            Schema::Fixed(f) | Schema::Duration(f) => self.random_bytes(f.size),
            Schema::Enum(e) => {
                if e.symbols.is_empty() {
                    return Err(SendError::Generate(format!(
                        "enum {} has no symbols",
                        e.name
                    )));
                }
                let i = self.rng.below(e.symbols.len() as u64);
                self.long(i as i64);
            }
            Schema::Array(a) => {
                let n = self.items(depth);
                if n > 0 {
                    self.long(n as i64);
                    for _ in 0..n {
                        self.datum(&a.items, ns, None, depth + 1, now)?;
                    }
                }
                self.long(0);
            }
            Schema::Map(m) => {
                let n = self.items(depth);
                if n > 0 {
                    self.long(n as i64);
                    for i in 0..n {
                        // Distinct keys: a repeated one would collapse on read.
                        let key = format!("k{i}");
                        self.long(key.len() as i64);
                        self.out.extend_from_slice(key.as_bytes());
                        self.datum(&m.types, ns, None, depth + 1, now)?;
                    }
                }
                self.long(0);
            }
            Schema::Union(u) => {
                let variants = u.variants();
                if variants.is_empty() {
                    return Err(SendError::Generate("a union has no branches".into()));
                }
                let i = if depth >= SOFT_DEPTH {
                    least_recursive(variants)
                } else {
                    self.rng.below(variants.len() as u64) as usize
                };
                self.long(i as i64);
                self.datum(&variants[i], ns, None, depth + 1, now)?;
            }
            Schema::Record(r) => {
                let inner = r.name.namespace().or(ns);
                for f in &r.fields {
                    self.datum(&f.schema, inner, Some(&f.name), depth + 1, now)?;
                }
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                let target = self.names.get(full.as_ref()).copied().ok_or_else(|| {
                    SendError::Generate(format!("unknown type {}", full.fullname(None)))
                })?;
                let inner = match target.name() {
                    Some(n) => n.namespace(),
                    None => ns,
                };
                self.datum(target, inner, field, depth + 1, now)?;
            }
        }
        Ok(())
    }

    fn items(&mut self, depth: usize) -> u64 {
        if depth >= SOFT_DEPTH {
            0
        } else {
            self.rng.below(MAX_ITEMS + 1)
        }
    }

    fn long(&mut self, v: i64) {
        put_long(&mut self.out, v);
    }

    fn random_bytes(&mut self, n: usize) {
        for _ in 0..n {
            let b = self.rng.next() as u8;
            self.out.push(b);
        }
    }

    fn random_bytes_prefixed(&mut self, n: usize) {
        self.long(n as i64);
        self.random_bytes(n);
    }
}

/// A `time` field gets now in ns only where the value is a plain 64-bit
/// integer (`long`, with or without a logical type).
fn is_long(schema: &Schema) -> bool {
    matches!(
        schema,
        Schema::Long
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::TimeMicros
    )
}

/// The union branch that ends recursion soonest: `null`, else any type
/// that is not a record or a reference to a named type.
fn least_recursive(variants: &[Schema]) -> usize {
    variants
        .iter()
        .position(|v| matches!(v, Schema::Null))
        .or_else(|| {
            variants
                .iter()
                .position(|v| !matches!(v, Schema::Record(_) | Schema::Ref { .. }))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use std::net::Ipv4Addr;

    /// Every Avro type, nested, named, logical and recursive.
    pub const EVERY_TYPE: &str = include_str!("../tests/data/every_type.avsc");

    fn decode(schema: &Schema, datum: &[u8]) -> Value {
        let mut slice = datum;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .and_then(|r| r.read_value(&mut slice))
            .unwrap_or_else(|e| panic!("datum {datum:?} does not decode: {e}"));
        assert!(slice.is_empty(), "datum has {} trailing bytes", slice.len());
        v
    }

    fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
        match v {
            Value::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap().1,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn time9_is_the_standard_encoding_for_current_instants() {
        for ns in [
            1i64 << 55,
            now_ns(),
            4_000_000_000_000_000_000,
            (1 << 62) - 1,
        ] {
            let mut standard = Vec::new();
            put_long(&mut standard, ns);
            assert_eq!(standard, time9(ns), "{ns}");
        }
        // Out of range: clamped, still 9 bytes.
        assert_eq!(time9(0), time9(1 << 55));
    }

    #[test]
    fn every_generated_datum_decodes_and_validates() {
        let schemas = [
            EVERY_TYPE,
            include_str!("../config/agents/example.avsc"),
            include_str!("../config/agents/temperature.avsc"),
            r#""string""#,
            r#"["null", "int", {"type": "array", "items": "double"}]"#,
            r#"{"type": "map", "values": {"type": "enum", "name": "e", "symbols": ["A", "B"]}}"#,
        ];
        for text in schemas {
            let schema = Schema::parse_str(text).unwrap();
            let validator = crate::validator::Validator::from_json(text).unwrap();
            let pool = RecordPool::generate(&schema, 300, 42).unwrap();
            assert_eq!(pool.len(), 300);
            for i in 0..pool.len() {
                decode(&schema, pool.record(i));
                assert!(
                    validator.validate(pool.record(i)).is_ok(),
                    "record {i} of {text} rejected by the relay's validator"
                );
            }
        }
    }

    #[test]
    fn records_vary() {
        let schema = Schema::parse_str(EVERY_TYPE).unwrap();
        let pool = RecordPool::generate(&schema, 100, 7).unwrap();
        let distinct: std::collections::HashSet<&[u8]> =
            (0..pool.len()).map(|i| pool.record(i)).collect();
        assert!(distinct.len() > 90, "{} distinct of 100", distinct.len());
        // Unions take every branch somewhere in the pool.
        let mut branches = std::collections::HashSet::new();
        for i in 0..pool.len() {
            if let Value::Union(b, _) = field(&decode(&schema, pool.record(i)), "choice") {
                branches.insert(*b);
            }
        }
        assert_eq!(branches.len(), 3);
    }

    #[test]
    fn time_fields_hold_now_and_are_restamped() {
        let schema = Schema::parse_str(EVERY_TYPE).unwrap();
        let mut pool = RecordPool::generate(&schema, 10, 1).unwrap();
        assert!(pool.has_time());
        let time_of = |pool: &RecordPool, i: usize| {
            let v = decode(&schema, pool.record(i));
            match (field(&v, "time"), field(field(&v, "nested"), "time")) {
                (Value::Long(a), Value::TimestampNanos(b)) => (*a, *b),
                other => panic!("time fields: {other:?}"),
            }
        };
        let now = now_ns();
        for i in 0..pool.len() {
            let (a, b) = time_of(&pool, i);
            assert!((now - a).abs() < 1_000_000_000, "time {a} is not now {now}");
            assert!(
                (now - b).abs() < 1_000_000_000,
                "nested time {b} is not now"
            );
        }
        pool.stamp(3, 1_800_000_000_123_456_789);
        assert_eq!(
            time_of(&pool, 3),
            (1_800_000_000_123_456_789, 1_800_000_000_123_456_789)
        );

        // example.avsc: the one `time` field, a timestamp-nanos long.
        let schema = Schema::parse_str(include_str!("../config/agents/example.avsc")).unwrap();
        let pool = RecordPool::generate(&schema, 5, 2).unwrap();
        let v = decode(&schema, pool.record(0));
        let Value::TimestampNanos(t) = field(&v, "time") else {
            panic!("time: {v:?}")
        };
        assert!((now_ns() - t).abs() < 1_000_000_000);
    }

    #[test]
    fn schemas_without_finite_values_are_refused() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"loop","fields":[{"name":"next","type":"loop"}]}"#,
        )
        .unwrap();
        let err = RecordPool::generate(&schema, 1, 0).unwrap_err();
        assert!(err.to_string().contains("nests without end"), "{err}");
    }

    #[test]
    fn recursive_schemas_terminate() {
        let text = r#"{"type":"record","name":"node","fields":[
            {"name":"v","type":"int"},
            {"name":"children","type":{"type":"array","items":"node"}},
            {"name":"next","type":["node","null"]}]}"#;
        let schema = Schema::parse_str(text).unwrap();
        let pool = RecordPool::generate(&schema, 50, 3).unwrap();
        for i in 0..pool.len() {
            decode(&schema, pool.record(i));
        }
    }

    #[test]
    fn paced_run_sends_exactly_count_at_the_rate() {
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
        let addr = sink.local_addr().unwrap();
        let schema = Schema::parse_str(include_str!("../config/agents/example.avsc")).unwrap();
        let pool = RecordPool::generate(&schema, 64, 5).unwrap();
        let expected: Vec<Vec<u8>> = (0..64).map(|i| pool.record(i).to_vec()).collect();
        let mut sender = Sender::connect(addr, pool).unwrap();
        let stop = AtomicBool::new(false);
        let limits = Limits {
            rate: 2000,
            count: Some(300),
            duration: Some(Duration::from_secs(10)),
        };
        let report = sender.run(limits, &stop).unwrap();
        assert_eq!(report.records, 300);
        // Paced: 300 records at 2000/s cannot take much under 150 ms (how
        // close to the rate it gets is measured by `benches/run.sh load send`).
        let secs = report.elapsed.as_secs_f64();
        assert!(secs >= 0.12, "took {secs} s: faster than 2000/s");
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..300 {
            let n = sink.recv(&mut buf).unwrap();
            // Same record as in the pool, except its 9 time bytes.
            assert_eq!(n, expected[i % 64].len());
            assert_eq!(buf[TIME_WIDTH..n], expected[i % 64][TIME_WIDTH..]);
        }
    }

    #[test]
    fn stop_flag_and_duration_end_a_flood() {
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = sink.local_addr().unwrap();
        let schema = Schema::parse_str(r#""long""#).unwrap();
        let mut sender =
            Sender::connect(addr, RecordPool::generate(&schema, 8, 0).unwrap()).unwrap();
        let limits = Limits {
            rate: 0,
            count: None,
            duration: Some(Duration::from_millis(100)),
        };
        let report = sender.run(limits, &AtomicBool::new(false)).unwrap();
        assert!(report.records > 0);
        assert!(report.elapsed >= Duration::from_millis(100), "ended early");
        let stopped = AtomicBool::new(true);
        let limits = Limits {
            duration: None,
            ..limits
        };
        assert_eq!(sender.run(limits, &stopped).unwrap().records, 0);
    }
}
