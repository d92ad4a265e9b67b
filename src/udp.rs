//! Batched UDP I/O for the channel task: binding the receive socket,
//! `recvmmsg` into one reused buffer, and sends of slices of it to
//! destination sockets (`sendmmsg`, and one GSO `sendmsg` with
//! `UDP_SEGMENT` per run of equal-length datagrams), so a datagram is
//! never copied between receive and forward. Its [`sendmmsg`] is also the
//! load generator's (`send`).
//!
//! The unsafe code is held to quinn-udp's standard: message headers are
//! built on the stack for each call (no struct keeps pointers into a
//! buffer), control buffers are aligned for `cmsghdr` with their size
//! checked at compile time, cmsgs are read through one iterator that
//! checks lengths, and every unsafe operation has its own SAFETY comment.
//!
//! Linux only (recvmmsg, sendmmsg, UDP_SEGMENT, SO_RXQ_OVFL), like the relay itself.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::config::Destination;

/// Datagrams taken per `recvmmsg` call. Large enough to amortise the system
/// call, small enough that a batch stays in L2 for the validate-and-forward pass.
pub const BATCH: usize = 64;

/// How long a send may wait for a destination socket's buffer before the rest
/// of the batch is counted as send errors; bounds how long a slow
/// destination can hold up the channel.
const SEND_STALL: Duration = Duration::from_millis(5);

/// Control-message room per datagram: a `cmsghdr` and the u32 of
/// `SO_RXQ_OVFL`, with room to spare.
const CMSG_ROOM: usize = 32;

/// What the kernel writes for one `SO_RXQ_OVFL` message.
const CMSG_NEEDED: usize = {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE(size_of::<u32>() as libc::c_uint) as usize }
};
const _: () = assert!(CMSG_ROOM >= CMSG_NEEDED);

/// One datagram's control-message buffer, aligned as a `cmsghdr` so that
/// the headers `CMSG_FIRSTHDR`/`CMSG_NXTHDR` find in it are aligned.
#[derive(Clone, Copy)]
#[repr(C)]
union CmsgBuf {
    _align: libc::cmsghdr,
    bytes: [u8; CMSG_ROOM],
}

const _: () = assert!(align_of::<CmsgBuf>() >= align_of::<libc::cmsghdr>());

impl CmsgBuf {
    const ZERO: Self = Self {
        bytes: [0; CMSG_ROOM],
    };
}

/// Runs a system call again while a signal interrupts it (EINTR); a
/// negative result becomes the errno as an error. Every raw libc socket
/// call of this module and of `send` goes through here (std and socket2
/// retry their own).
pub(crate) fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An all-zero `msghdr`: no name, no iovec, no control buffer.
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain integers and raw pointers, for which all-zero
    // (null pointers, zero lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The receive socket as bound, with the buffer size the kernel granted.
pub struct BoundSocket {
    pub socket: StdUdpSocket,
    /// SO_RCVBUF as read back (Linux reports twice the usable size).
    pub recv_buffer_granted: usize,
}

/// Binds `addr:port` with the requested receive buffer and drop counting
/// (SO_RXQ_OVFL). Neither SO_REUSEADDR nor SO_REUSEPORT: with either, a
/// port whose holder set it too would be shared, and the kernel would hand
/// the relay the other program's unicast traffic. Without them a port held
/// by anyone else fails with `AddrInUse`, exactly when `GET
/// /ports/{p}/status` says `in_use`. UDP has no TIME_WAIT, so a restarted
/// relay rebinds at once without them.
///
/// A multicast `addr` is the exception: the socket is bound to the group
/// (so it receives that group's datagrams only) and joins it on the
/// interface the routing table gives the group. It sets SO_REUSEADDR, as
/// multicast receivers conventionally do: every receiver of a group on one
/// host shares its port, and each gets every datagram, so sharing steals
/// nothing (a cluster's hot standby on the same host is one of them).
pub fn bind_receiver(addr: IpAddr, port: u16, recv_buffer: usize) -> io::Result<BoundSocket> {
    let sa = SocketAddr::new(addr, port);
    let socket = Socket::new(Domain::for_address(sa), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps this at net.core.rmem_max; the caller reads back the grant.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    enable_drop_counter(&socket);
    socket.set_nonblocking(true)?;
    if addr.is_multicast() {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&sa.into())?;
    match addr {
        IpAddr::V4(group) if group.is_multicast() => {
            socket.join_multicast_v4(&group, &std::net::Ipv4Addr::UNSPECIFIED)?;
        }
        IpAddr::V6(group) if group.is_multicast() => socket.join_multicast_v6(&group, 0)?,
        _ => {}
    }
    let recv_buffer_granted = socket.recv_buffer_size().unwrap_or(0);
    Ok(BoundSocket {
        socket: socket.into(),
        recv_buffer_granted,
    })
}

/// The channel's receive socket as the runtime watches it. Without
/// coalescing the socket itself is registered with the runtime, which
/// wakes the channel for each arrival. With coalescing a private epoll
/// set holding the socket and a timerfd is registered instead: for a
/// wait the socket's interest is switched off in that set and the timer
/// armed, so the thread sleeps until the deadline however many datagrams
/// arrive meanwhile (one wake-up per batch), then the socket is switched
/// back on and the free slots filled with one receive.
pub struct Receiver {
    /// Declared before `socket`: it is dropped first, so the socket is
    /// deregistered before it closes. `None` only after a switch of
    /// [`Receiver::set_coalescing`] failed half-way: every wait then fails.
    watch: Option<AsyncFd<Watch>>,
    socket: StdUdpSocket,
}

/// What is registered with the runtime.
enum Watch {
    /// The socket's own descriptor (owned by [`Receiver::socket`]).
    Socket(RawFd),
    /// An epoll set with the socket and [`Waiter::timer`] in it.
    Waiter(Waiter),
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Watch::Socket(fd) => *fd,
            Watch::Waiter(w) => w.epoll.as_raw_fd(),
        }
    }
}

struct Waiter {
    epoll: OwnedFd,
    /// CLOCK_MONOTONIC, one-shot, non-blocking.
    timer: OwnedFd,
}

/// The socket's interest in a [`Waiter`]'s set: readable, edge-triggered
/// (the runtime's own registration of the set is edge-triggered too).
const SOCKET_ON: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;
/// Marks the timer's entry in the set.
const TIMER_KEY: u64 = 1;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `epoll_ctl` of `fd` in `epoll` with `events`.
fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: valid descriptors and an event struct alive for the call.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
}

impl Waiter {
    /// An epoll set with `socket` (on) and a new timer in it: two
    /// descriptors.
    fn new(socket: RawFd) -> io::Result<Self> {
        // SAFETY: creates a descriptor; no memory is touched.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a new descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: creates a descriptor; no memory is touched.
        let timer = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: a new descriptor that nothing else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(timer) };
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, socket, SOCKET_ON, 0)?;
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            timer.as_raw_fd(),
            SOCKET_ON,
            TIMER_KEY,
        )?;
        Ok(Self { epoll, timer })
    }

    /// Arms the timer to expire once, `after` from now.
    fn arm(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // At least 1 ns: an all-zero value would disarm it.
                tv_nsec: (after.subsec_nanos().max(u32::from(after.is_zero()))) as libc::c_long,
            },
        };
        // SAFETY: a valid timer descriptor and itimerspec; no old value asked.
        cvt(unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        })
        .map(|_| ())
    }

    /// Whether the timer expired (its count is read, so it is no longer
    /// readable).
    fn expired(&self) -> io::Result<bool> {
        let mut ticks = 0u64;
        // SAFETY: reads at most 8 bytes into a live u64.
        let r = unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                (&raw mut ticks).cast(),
                size_of::<u64>(),
            )
        };
        if r == size_of::<u64>() as isize {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
            _ => Err(e),
        }
    }
}

/// Registers `watch` with the runtime, for reading.
fn register(watch: Watch) -> io::Result<AsyncFd<Watch>> {
    // SAFETY: a `Watch` gives one descriptor for its whole life: its own
    // epoll set, or the socket of the `Receiver` holding it, which drops
    // the `AsyncFd` before the socket (field order) and replaces it only
    // while the socket stays open.
    unsafe { AsyncFd::register_with_interest(watch, Interest::READABLE) }.map_err(io::Error::from)
}

impl Receiver {
    /// Registers `socket` (non-blocking) with the runtime, with the
    /// coalescing set when `coalesce`. Must be called inside a tokio
    /// runtime.
    pub fn new(socket: StdUdpSocket, coalesce: bool) -> io::Result<Self> {
        let watch = if coalesce {
            Watch::Waiter(Waiter::new(socket.as_raw_fd())?)
        } else {
            Watch::Socket(socket.as_raw_fd())
        };
        let watch = Some(register(watch)?);
        Ok(Self { watch, socket })
    }

    pub fn socket(&self) -> &StdUdpSocket {
        &self.socket
    }

    fn watch(&self) -> io::Result<&AsyncFd<Watch>> {
        self.watch
            .as_ref()
            .ok_or_else(|| io::Error::other("the socket is not registered with the runtime"))
    }

    pub fn coalescing(&self) -> bool {
        matches!(
            self.watch.as_ref().map(AsyncFd::get_ref),
            Some(Watch::Waiter(_))
        )
    }

    /// Switches coalescing on or off (between two batches): registers
    /// the set or the socket instead. When no descriptor is left for the
    /// set, the receiver stays as it was.
    pub fn set_coalescing(&mut self, on: bool) -> io::Result<()> {
        if on == self.coalescing() && self.watch.is_some() {
            return Ok(());
        }
        let fd = self.socket.as_raw_fd();
        let watch = if on {
            Watch::Waiter(Waiter::new(fd)?)
        } else {
            Watch::Socket(fd)
        };
        // The old registration goes first: the socket may be in the
        // runtime's epoll only once.
        drop(self.watch.take());
        self.watch = Some(register(watch)?);
        Ok(())
    }

    /// Resolves when the runtime saw the socket (or, while coalescing,
    /// its set) readable; a receive through [`Receiver::try_io`] then
    /// says for certain.
    pub async fn readable(&self) -> io::Result<()> {
        self.watch()?.readable().await.map(|_| ())
    }

    /// Runs `f` (a receive on the socket) if the runtime has seen the
    /// socket readable; a `WouldBlock` from it clears that readiness.
    pub fn try_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.watch()?.try_io(Interest::READABLE, |_| f())
    }

    /// The coalescing wait: with the socket's interest off, sleeps until
    /// `after` from now, then switches it back on. Datagrams meanwhile
    /// queue in the kernel without waking anyone. Returns at once when
    /// not coalescing. If it is dropped (a stop), the socket stays off:
    /// the stop drains the socket without readiness.
    pub async fn wait(&self, after: Duration) -> io::Result<()> {
        let watch = self.watch()?;
        let Watch::Waiter(w) = watch.get_ref() else {
            return Ok(());
        };
        let socket = self.socket.as_raw_fd();
        epoll_ctl(&w.epoll, libc::EPOLL_CTL_MOD, socket, 0, 0)?;
        w.arm(after)?;
        loop {
            let mut guard = watch.readable().await?;
            if w.expired()? {
                // The readiness is left set: the next receive after the
                // batch goes to the kernel, which finds any datagram that
                // came after the wait's last receive.
                break;
            }
            // Readiness from before the socket went off.
            guard.clear_ready();
        }
        epoll_ctl(&w.epoll, libc::EPOLL_CTL_MOD, socket, SOCKET_ON, 0)
    }
}

/// Asks the kernel to attach its drop count to every received datagram.
/// Best effort: without it the drop counter stays 0.
fn enable_drop_counter(socket: &Socket) {
    let one: libc::c_int = 1;
    let _ = retry_eintr(|| {
        // SAFETY: a valid fd, and an option value pointing at a c_int of
        // the length given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RXQ_OVFL,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            ) as isize
        }
    });
}

/// Opens a socket connected to `dest`, with its multicast options applied.
/// Connected, so `sendmmsg` needs no address per message and ICMP errors
/// from the destination are reported to us (counted as send errors).
pub fn connect_destination(dest: &Destination) -> io::Result<StdUdpSocket> {
    let sa = SocketAddr::new(dest.address, dest.port);
    let socket = Socket::new(Domain::for_address(sa), Type::DGRAM, Some(Protocol::UDP))?;
    // A larger send buffer absorbs bursts of whole batches.
    let _ = socket.set_send_buffer_size(4 << 20);
    if dest.address.is_multicast() {
        match dest.address {
            IpAddr::V4(_) => {
                if let Some(iface) = dest.interface {
                    socket.set_multicast_if_v4(&iface)?;
                }
                socket.set_multicast_ttl_v4(dest.ttl.unwrap_or(1))?;
                socket.set_multicast_loop_v4(dest.multicast_loop.unwrap_or(true))?;
            }
            IpAddr::V6(_) => {
                socket.set_multicast_hops_v6(dest.ttl.unwrap_or(1))?;
                socket.set_multicast_loop_v6(dest.multicast_loop.unwrap_or(true))?;
            }
        }
    }
    socket.set_nonblocking(true)?;
    socket.connect(&sa.into())?;
    Ok(socket.into())
}

/// Receive memory mapped straight from the kernel: pages are only backed
/// (and count in RSS) once a datagram lands in them, whatever the
/// allocator's recycling, and an idle channel maps nothing at all (the
/// mapping is made at the first receive).
struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `PageBuf` owns its mapping alone, as a `Box<[u8]>` owns its
// allocation: moving it to another thread moves that ownership, and shared
// references only read through it.
unsafe impl Send for PageBuf {}
// SAFETY: as above; `&PageBuf` gives only `as_slice`, a read.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    fn map(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint touches
        // no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes (zero-filled by the
        // kernel), alive as long as `self`, and written only through
        // `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One reused receive buffer of [`BATCH`] slots with their control-message
/// buffers. The `mmsghdr`s and iovecs that point into it are built on the
/// stack for each `recvmmsg` and gone when it returns, so no pointer into
/// the buffer outlives a call.
pub struct RecvBatch {
    /// Mapped at the first receive.
    buf: Option<PageBuf>,
    slot: usize,
    /// [`BATCH`] entries from the first receive on; empty before.
    cmsg: Box<[CmsgBuf]>,
    lens: [u32; BATCH],
    truncated: [bool; BATCH],
    len: usize,
    /// Datagrams asked of one `recvmmsg` (1..=BATCH).
    limit: usize,
    /// The kernel's drop count as last reported, if it reported one.
    pub kernel_drops: Option<u32>,
}

impl RecvBatch {
    /// `max_datagram` bytes per slot. Nothing is allocated or mapped until
    /// the first receive, so an idle channel costs a few hundred bytes here.
    pub fn new(max_datagram: usize) -> Self {
        let slot = max_datagram.max(1);
        Self {
            buf: None,
            slot,
            cmsg: Box::default(),
            lens: [0; BATCH],
            truncated: [false; BATCH],
            len: 0,
            limit: BATCH,
            kernel_drops: None,
        }
    }

    /// Takes at most `limit` datagrams per receive (clamped to 1..=BATCH);
    /// 1 gives the single-datagram path the batching test compares against.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, BATCH);
    }

    /// Datagrams asked of one receive.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Datagram `i` of the last receive, and whether it was longer than a slot.
    pub fn get(&self, i: usize) -> (&[u8], bool) {
        let start = i * self.slot;
        let len = self.lens[i] as usize;
        match &self.buf {
            Some(buf) => (&buf.as_slice()[start..start + len], self.truncated[i]),
            None => (&[], false),
        }
    }

    /// Whether the batch holds as many datagrams as one receive asks for.
    pub fn is_full(&self) -> bool {
        self.len >= self.limit
    }

    /// One non-blocking `recvmmsg` into slots `start..limit`, after the
    /// `start` datagrams kept from before; how many came. `WouldBlock`
    /// when nothing is queued. The batch then holds `start` plus those.
    fn recv_now(&mut self, fd: BorrowedFd<'_>, start: usize) -> io::Result<usize> {
        let start = start.min(self.limit);
        self.len = start;
        if self.buf.is_none() {
            self.buf = Some(PageBuf::map(self.slot * BATCH)?);
            self.cmsg = vec![CmsgBuf::ZERO; BATCH].into_boxed_slice();
        }
        let Some(buf) = self.buf.as_mut() else {
            return Ok(0);
        };
        let limit = self.limit;
        let want = limit - start;
        if want == 0 {
            return Ok(0);
        }
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
        let slots = buf.as_mut_slice().chunks_exact_mut(self.slot);
        let free = slots.zip(self.cmsg.iter_mut()).skip(start).take(want);
        for (i, (slot, cmsg)) in free.enumerate() {
            let iov = iovs[i].write(libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            });
            let mut msg = empty_msghdr();
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            msg.msg_control = (&raw mut *cmsg).cast();
            msg.msg_controllen = size_of::<CmsgBuf>() as _;
            hdrs[i].write(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
        let n = retry_eintr(|| {
            // SAFETY: the first `want` headers are initialised above and
            // point at disjoint free slots of `buf` and at their `cmsg`
            // entries, all of the lengths given and alive until this call
            // returns.
            unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr().cast(),
                    want as libc::c_uint,
                    // The flags are a c_int in glibc's prototype, c_uint in musl's.
                    libc::MSG_DONTWAIT as _,
                    std::ptr::null_mut(),
                ) as isize
            }
        });
        let n = n?.min(want);
        for (j, h) in hdrs[..n].iter().enumerate() {
            // SAFETY: the first `want` >= n headers were initialised above.
            let h = unsafe { h.assume_init_ref() };
            self.lens[start + j] = h.msg_len.min(self.slot as u32);
            self.truncated[start + j] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if j + 1 == n {
                self.kernel_drops = read_drop_count(&h.msg_hdr).or(self.kernel_drops);
            }
        }
        self.len = start + n;
        Ok(n)
    }

    /// Like [`RecvBatch::try_recv`] but asks the kernel even when tokio has
    /// not yet seen the socket readable: for draining after a stop, which
    /// may come before the reactor reported datagrams already queued.
    pub fn recv_queued(&mut self, rx: &Receiver) -> io::Result<usize> {
        match self.recv_now(rx.socket().as_fd(), 0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.len = 0;
                Ok(0)
            }
            other => other,
        }
    }

    /// Receives one batch if any datagram is queued, without waiting;
    /// `Ok(0)` when the socket is drained. A batch shorter than the limit
    /// also means the queue was empty when the call returned, so readiness
    /// is cleared then too: the next `readable().await` sleeps until new
    /// data (whose arrival wakes epoll again) instead of costing one more
    /// `recvmmsg` that finds nothing.
    pub fn try_recv(&mut self, rx: &Receiver) -> io::Result<usize> {
        self.try_recv_from(rx, 0)
    }

    /// Like [`RecvBatch::try_recv`], but keeps the datagrams already in
    /// the batch and receives into the free slots after them; how many
    /// came. For coalescing a partial batch.
    pub fn try_recv_more(&mut self, rx: &Receiver) -> io::Result<usize> {
        self.try_recv_from(rx, self.len)
    }

    fn try_recv_from(&mut self, rx: &Receiver, start: usize) -> io::Result<usize> {
        let fd = rx.socket().as_fd();
        let mut got = 0;
        let r = rx.try_io(|| {
            got = self.recv_now(fd, start)?;
            if self.len < self.limit {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match r {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(got),
            Err(e) => Err(e),
        }
    }
}

/// The SO_RXQ_OVFL counter attached to a received message, if any.
fn read_drop_count(h: &libc::msghdr) -> Option<u32> {
    // SAFETY: `h` came back from recvmmsg, which filled its control buffer
    // (a `CmsgBuf`, aligned for `cmsghdr`, alive as long as `h`'s borrow).
    let mut cmsgs = unsafe { Cmsgs::new(h) };
    cmsgs.find_map(|c| {
        let hdr = c.header();
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SO_RXQ_OVFL {
            // SAFETY: any 4 bytes are a u32.
            unsafe { c.read::<u32>() }
        } else {
            None
        }
    })
}

/// The control messages of a message the kernel filled in, in order.
pub(crate) struct Cmsgs<'a> {
    msg: &'a libc::msghdr,
    next: *mut libc::cmsghdr,
}

/// One control message: its header and its payload's address.
pub(crate) struct Cmsg<'a> {
    header: &'a libc::cmsghdr,
    data: *const u8,
}

impl<'a> Cmsgs<'a> {
    /// # Safety
    /// `msg` was filled in by a receive call (`recvmsg`, `recvmmsg`): its
    /// `msg_control` is null or points at a live buffer aligned for
    /// `cmsghdr` that holds well-formed messages up to `msg_controllen`.
    pub(crate) unsafe fn new(msg: &'a libc::msghdr) -> Self {
        let next = if msg.msg_control.is_null() {
            std::ptr::null_mut()
        } else {
            // SAFETY: the caller's promise; null when the buffer holds no
            // whole header.
            unsafe { libc::CMSG_FIRSTHDR(msg) }
        };
        Self { msg, next }
    }
}

impl<'a> Iterator for Cmsgs<'a> {
    type Item = Cmsg<'a>;

    fn next(&mut self) -> Option<Cmsg<'a>> {
        if self.next.is_null() {
            return None;
        }
        let c = self.next;
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies
        // within the buffer `new`'s caller vouched for, aligned, and lives
        // as long as the borrow of `msg`.
        let header = unsafe { &*c };
        // SAFETY: as above; the payload follows its header in the buffer.
        let data = unsafe { libc::CMSG_DATA(c) }.cast_const();
        // SAFETY: as above; null after the last header.
        self.next = unsafe { libc::CMSG_NXTHDR(self.msg, c) };
        Some(Cmsg { header, data })
    }
}

impl Cmsg<'_> {
    pub(crate) fn header(&self) -> &libc::cmsghdr {
        self.header
    }

    /// The payload as a `T`, or `None` when the message is too short for one.
    ///
    /// # Safety
    /// Every bit pattern of `size_of::<T>()` bytes is a valid `T` (plain
    /// integers, as the kernel's structs are).
    pub(crate) unsafe fn read<T: Copy>(&self) -> Option<T> {
        // SAFETY: CMSG_LEN only computes a size.
        let needed = unsafe { libc::CMSG_LEN(size_of::<T>() as libc::c_uint) } as usize;
        // cmsg_len is a size_t in glibc, a socklen_t in musl.
        #[allow(clippy::unnecessary_cast)]
        let len = self.header.cmsg_len as usize;
        if len < needed {
            return None;
        }
        // SAFETY: the message's length covers a `T` after its header, in
        // the same live buffer; read unaligned as CMSG_DATA promises no
        // alignment for `T`, and the caller vouches any bytes are a `T`.
        Some(unsafe { std::ptr::read_unaligned(self.data.cast::<T>()) })
    }
}

/// Outcome of sending one batch to one destination.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: u64,
    pub failed: u64,
    /// errno of the last failure.
    pub last_errno: i32,
}

/// Most datagrams one [`sendmmsg`] call takes: the load generator's batch,
/// and more than a receive batch or its decimated output (at most two
/// records per input, for minmax).
pub const SENDMMSG_MAX: usize = 256;

/// One `sendmmsg` of the first [`SENDMMSG_MAX`] of `datagrams`, in order,
/// on the connected `socket`; how many the kernel took. Blocks or not as
/// the socket does. The headers and iovecs live on this call's stack, so no
/// pointer to a datagram outlives it. Used by the channel and by `send`.
pub fn sendmmsg<'a>(
    socket: &impl AsFd,
    datagrams: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; SENDMMSG_MAX];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SENDMMSG_MAX];
    let mut n = 0;
    for (d, (iov, hdr)) in datagrams
        .into_iter()
        .zip(iovs.iter_mut().zip(hdrs.iter_mut()))
    {
        // The kernel only reads through a send iovec; the pointer is `*mut`
        // because the struct serves receives too.
        let iov = iov.write(libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        });
        let mut msg = empty_msghdr();
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        hdr.write(libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        });
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    let fd = socket.as_fd().as_raw_fd();
    retry_eintr(|| {
        // SAFETY: the first `n` headers are initialised above, each pointing
        // at one iovec over a datagram borrowed for the whole call.
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().cast(), n as libc::c_uint, 0) as isize }
    })
}

/// `UDP_SEGMENT` (linux/udp.h): the cmsg, at level `SOL_UDP`, that asks
/// the kernel to cut one send into segments of the given size (GSO).
const UDP_SEGMENT: libc::c_int = 103;

/// Most segments one GSO send may hold: the kernel's `UDP_MAX_SEGMENTS`
/// (64 up to Linux 6.8, 128 since; the lower one is safe on both).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes one GSO send may hold: a UDP payload in an IPv4
/// packet (65,535 − 20 − 8); the kernel refuses a larger send (EMSGSIZE).
pub const GSO_MAX_BYTES: usize = 65_507;

/// Room for the `UDP_SEGMENT` cmsg (a u16 payload).
const GSO_CMSG_ROOM: usize = 24;
const GSO_CMSG_NEEDED: usize = {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as libc::c_uint) as usize }
};
const _: () = assert!(GSO_CMSG_ROOM >= GSO_CMSG_NEEDED);

/// The `UDP_SEGMENT` control buffer, aligned as a `cmsghdr`.
#[repr(C)]
union GsoCmsg {
    _align: libc::cmsghdr,
    bytes: [u8; GSO_CMSG_ROOM],
}

const _: () = assert!(align_of::<GsoCmsg>() >= align_of::<libc::cmsghdr>());

/// A connected destination socket with its GSO state: whether runs of
/// equal-length datagrams go out as one `sendmsg` with `UDP_SEGMENT`
/// (`outputs.gso`), and the largest segment the route takes unfragmented.
/// The flag turns off for good (for this socket) the first time the kernel
/// refuses GSO on its route (EIO, EINVAL); a reconfiguration opens new
/// sockets, which try again.
pub struct DestSocket {
    socket: StdUdpSocket,
    gso: AtomicBool,
    /// Largest GSO segment: the route's MTU less the IP and UDP headers.
    /// Longer datagrams are sent one by one (and fragmented), as GSO
    /// refuses segments over the MTU.
    max_segment: usize,
}

impl DestSocket {
    /// Wraps a socket from [`connect_destination`]; GSO is tried when `gso`.
    pub fn new(socket: StdUdpSocket, gso: bool) -> Self {
        let max_segment = route_mtu(&socket)
            .map(|(mtu, headers)| mtu.saturating_sub(headers))
            // Unknown: let the kernel say (EINVAL turns GSO off).
            .unwrap_or(GSO_MAX_BYTES);
        Self {
            socket,
            gso: AtomicBool::new(gso),
            max_segment,
        }
    }

    pub fn socket(&self) -> &StdUdpSocket {
        &self.socket
    }

    /// Whether runs are still sent with GSO (false once it fell back).
    pub fn gso(&self) -> bool {
        self.gso.load(Relaxed)
    }

    /// Longest datagram a GSO run may hold now; 0 when GSO is off.
    fn gso_segment_limit(&self) -> usize {
        if self.gso() { self.max_segment } else { 0 }
    }
}

/// The connected socket's path MTU (`IP_MTU`, `IPV6_MTU`) and the IP + UDP
/// header bytes of one packet on it.
fn route_mtu(socket: &StdUdpSocket) -> Option<(usize, usize)> {
    let (level, name, headers) = match socket.peer_addr().ok()? {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU, 28),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU, 48),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd, and an option buffer of the length given.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &mut len,
        )
    };
    (r == 0).then(|| (usize::try_from(mtu).unwrap_or(0), headers))
}

/// What [`send_all`] sends next from the front of what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// This many datagrams of one length, at least two: one GSO send.
    Run(usize),
    /// This many datagrams before the next run: a `sendmmsg`.
    Singles(usize),
}

/// Splits the front of `rest` (not empty) into the next [`Chunk`]: a run
/// of consecutive datagrams of equal length (at most [`GSO_MAX_SEGMENTS`],
/// [`GSO_MAX_BYTES`] in all, each non-empty and at most `max_segment`
/// long), or the datagrams before the next run. `max_segment` 0: no runs.
/// Reads no further than the end of the first run.
fn next_chunk<'a>(rest: impl Iterator<Item = &'a [u8]>, max_segment: usize) -> Chunk {
    let eligible = |len: usize| len > 0 && len <= max_segment && 2 * len <= GSO_MAX_BYTES;
    // Datagrams before the current candidate run, its length, its segment.
    let mut singles = 0;
    let mut run = 0;
    let mut segment = 0;
    for d in rest {
        let len = d.len();
        if run > 0 && len == segment && run < GSO_MAX_SEGMENTS && (run + 1) * len <= GSO_MAX_BYTES {
            run += 1;
            continue;
        }
        if run >= 2 {
            break;
        }
        singles += run;
        if eligible(len) {
            segment = len;
            run = 1;
        } else {
            singles += 1;
            run = 0;
        }
    }
    match (run >= 2, singles) {
        (true, 0) => Chunk::Run(run),
        (true, s) => Chunk::Singles(s),
        (false, s) => Chunk::Singles(s + run),
    }
}

/// One `sendmsg` of the `count` first of `run` (each `segment` bytes long,
/// at most [`GSO_MAX_SEGMENTS`]) with a `UDP_SEGMENT` cmsg: the kernel sends
/// them as `count` datagrams, in order. All or nothing; `count` when sent.
fn send_segments<'a>(
    socket: &impl AsFd,
    run: impl Iterator<Item = &'a [u8]>,
    count: usize,
    segment: usize,
) -> io::Result<usize> {
    let gso_size =
        u16::try_from(segment).map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; GSO_MAX_SEGMENTS];
    let mut n = 0;
    for (d, iov) in run.take(count.min(GSO_MAX_SEGMENTS)).zip(iovs.iter_mut()) {
        // Read only by the kernel; `*mut` because the struct serves receives too.
        iov.write(libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        });
        n += 1;
    }
    let mut control = GsoCmsg {
        bytes: [0; GSO_CMSG_ROOM],
    };
    let mut msg = empty_msghdr();
    msg.msg_iov = iovs.as_mut_ptr().cast();
    msg.msg_iovlen = n as _;
    msg.msg_control = (&raw mut control).cast();
    msg.msg_controllen = GSO_CMSG_NEEDED as _;
    // SAFETY: `msg` points at `control`, aligned for `cmsghdr` and
    // GSO_CMSG_NEEDED ≥ CMSG_SPACE(2) bytes long: the first header is in it.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if c.is_null() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: CMSG_LEN only computes a size.
    let cmsg_len = unsafe { libc::CMSG_LEN(size_of::<u16>() as libc::c_uint) };
    // SAFETY: `c` is the aligned, non-null first header within `control`,
    // which nothing else references.
    let header = unsafe { &mut *c };
    header.cmsg_level = libc::SOL_UDP;
    header.cmsg_type = UDP_SEGMENT;
    header.cmsg_len = cmsg_len as _;
    // SAFETY: `c` is a valid header; its payload follows it in `control`.
    let data = unsafe { libc::CMSG_DATA(c) };
    // SAFETY: the payload lies within `control` (its size covers
    // CMSG_SPACE(2)); written unaligned as CMSG_DATA promises no alignment.
    unsafe { std::ptr::write_unaligned(data.cast::<u16>(), gso_size) };
    let fd = socket.as_fd().as_raw_fd();
    retry_eintr(|| {
        // SAFETY: the first `n` iovecs are initialised above over datagrams
        // borrowed for the whole call; the control buffer lives on this stack.
        unsafe { libc::sendmsg(fd, &msg, 0) }
    })
    .map(|_| n)
}

/// Sends every one of `datagrams` to the connected `dest`, in order, in
/// as few system calls as the kernel allows: runs of two or more
/// equal-length datagrams as one GSO `sendmsg` each (while `dest` has GSO
/// on), the others with `sendmmsg`. A full socket buffer is waited on for
/// at most [`SEND_STALL`]; any other error skips that datagram and is
/// counted. A run that fails is sent again one by one with `sendmmsg`, so
/// the counts per datagram are what they would be without GSO; EIO or
/// EINVAL (no GSO on the route or device) also turns GSO off for `dest`.
///
/// The socket is a plain non-blocking one, not registered with the
/// runtime: a registered UDP socket is woken (EPOLLOUT) each time one of
/// its datagrams leaves the send buffer, which cost an extra `epoll_wait`
/// per batch and a wake-up callback per datagram. Only a full buffer
/// registers it, for the wait.
pub async fn send_all<'a>(
    dest: &DestSocket,
    datagrams: impl Iterator<Item = &'a [u8]> + Clone,
) -> SendReport {
    let socket = &dest.socket;
    let mut report = SendReport::default();
    let n = datagrams.clone().count();
    let mut done = 0;
    // Whether the datagram at `done` already met a stale refusal.
    let mut refused_once = false;
    // Datagrams before this index go with sendmmsg: a run whose GSO send
    // failed is sent again one by one.
    let mut singles_until = 0;
    while done < n {
        let limit = if done < singles_until {
            0
        } else {
            dest.gso_segment_limit()
        };
        let chunk = next_chunk(datagrams.clone().skip(done), limit);
        let result = match chunk {
            Chunk::Run(count) => {
                let rest = datagrams.clone().skip(done);
                let segment = rest.clone().next().map_or(0, <[u8]>::len);
                send_segments(socket, rest, count, segment).map_err(|e| (e, Some(count)))
            }
            Chunk::Singles(count) => {
                let end = if done < singles_until {
                    count.min(singles_until - done)
                } else {
                    count
                };
                sendmmsg(socket, datagrams.clone().skip(done).take(end)).map_err(|e| (e, None))
            }
        };
        match result {
            Ok(sent) => {
                done += sent;
                report.sent += sent as u64;
                refused_once = false;
            }
            Err((e, _)) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_writable(socket).await {
                    report.failed += (n - done) as u64;
                    report.last_errno = libc::EAGAIN;
                    return report;
                }
            }
            Err((e, _)) if e.raw_os_error() == Some(libc::ECONNREFUSED) && !refused_once => {
                // An ICMP refusal of an earlier datagram, reported now:
                // it is counted, but this datagram was not sent. Sent
                // again, it reaches a destination that is back up.
                report.failed += 1;
                report.last_errno = libc::ECONNREFUSED;
                refused_once = true;
            }
            Err((e, Some(count))) => {
                // The run was not sent: again one by one, so each datagram
                // meets its own error and is counted as without GSO.
                singles_until = done + count;
                if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                    gso_refused(dest, &e);
                }
            }
            Err((e, None)) => {
                refused_once = false;
                // The datagram at `done` failed (ICMP unreachable reported
                // late, no route, too big…): count it and go on.
                report.failed += 1;
                report.last_errno = e.raw_os_error().unwrap_or(libc::EIO);
                done += 1;
            }
        }
    }
    report
}

/// The kernel refused GSO on `dest`'s route or device: turns it off for
/// that socket and says so once.
#[cold]
fn gso_refused(dest: &DestSocket, e: &io::Error) {
    if dest.gso.swap(false, Relaxed) {
        let to = dest.socket.peer_addr().ok();
        tracing::warn!(destination = ?to, error = %e, "UDP GSO refused on this route; sending this destination's datagrams one by one");
    }
}

/// Waits at most [`SEND_STALL`] for room in `socket`'s send buffer,
/// registering it with the runtime only for this wait. False when the
/// buffer stayed full or the socket cannot be registered.
async fn wait_writable(socket: &impl AsFd) -> bool {
    // SAFETY: the `BorrowedFd` keeps the socket's fd open and the same for
    // as long as the `AsyncFd` holding it lives (it is dropped in this call).
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(socket.as_fd(), Interest::WRITABLE) })
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(SEND_STALL, fd.writable()).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn batch_round_trip_on_loopback() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 1 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = Receiver::new(rx.socket, false).unwrap();
        let tx = DestSocket::new(
            connect_destination(&Destination::new(lo, port)).unwrap(),
            false,
        );
        // More than one sendmmsg takes, so the rest goes in a second call.
        let payloads: Vec<Vec<u8>> = (0..300usize).map(|i| vec![i as u8; i % 200 + 1]).collect();
        let report = send_all(&tx, payloads.iter().map(|p| p.as_slice())).await;
        assert_eq!(report.sent, 300);
        let mut batch = RecvBatch::new(256);
        let mut got = Vec::new();
        while got.len() < 300 {
            rx.readable().await.unwrap();
            let n = batch.try_recv(&rx).unwrap();
            for i in 0..n {
                got.push(batch.get(i).0.to_vec());
            }
        }
        assert_eq!(got, payloads);
        // The kernel attaches the drop count only once it is non-zero.
        assert_eq!(batch.kernel_drops.unwrap_or(0), 0);
    }

    fn lens(chunk_of: &[usize], max_segment: usize) -> Chunk {
        let data: Vec<Vec<u8>> = chunk_of.iter().map(|&n| vec![0; n]).collect();
        next_chunk(data.iter().map(Vec::as_slice), max_segment)
    }

    #[test]
    fn runs_of_equal_lengths_are_found_and_bounded() {
        let max = GSO_MAX_BYTES;
        assert_eq!(lens(&[5, 5, 5, 7], max), Chunk::Run(3));
        assert_eq!(
            lens(&[5, 7, 7, 7], max),
            Chunk::Singles(1),
            "a single before a run"
        );
        assert_eq!(lens(&[5, 6, 7], max), Chunk::Singles(3));
        assert_eq!(lens(&[5], max), Chunk::Singles(1));
        assert_eq!(
            lens(&[0, 0, 0], max),
            Chunk::Singles(3),
            "empty datagrams: no GSO"
        );
        assert_eq!(lens(&[5, 5, 5], 0), Chunk::Singles(3), "GSO off");
        assert_eq!(
            lens(&[9, 9, 9, 4], 8),
            Chunk::Singles(4),
            "over the route's MTU"
        );
        assert_eq!(lens(&[80; 100], max), Chunk::Run(GSO_MAX_SEGMENTS));
        assert_eq!(lens(&[80; 65], max), Chunk::Run(64));
        // 1400 × 46 = 64,400 ≤ 65,507 < 1400 × 47.
        assert_eq!(lens(&[1400; 64], max), Chunk::Run(46));
        assert_eq!(lens(&[40_000; 3], max), Chunk::Singles(3), "two do not fit");
        assert_eq!(lens(&[30_000; 3], max), Chunk::Run(2));
    }

    /// Receives `n` datagrams from `rx`, each as it arrived; fails when
    /// they have not all come within 5 s.
    async fn receive(rx: &Receiver, n: usize) -> Vec<Vec<u8>> {
        let mut batch = RecvBatch::new(65_535);
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < n {
            let ready = tokio::time::timeout_at(deadline, rx.readable()).await;
            assert!(ready.is_ok(), "{} of {n} datagrams arrived", got.len());
            let Ok(k) = batch.try_recv(rx) else { continue };
            got.extend((0..k).map(|i| batch.get(i).0.to_vec()));
        }
        got
    }

    /// Mixed lengths with runs of every size (one over 64 segments, one
    /// over 64 KiB): with GSO on, each datagram arrives alone, in order,
    /// byte-identical, and the counts are the same as with it off.
    #[tokio::test]
    async fn gso_runs_arrive_as_separate_datagrams_in_order() {
        for lo in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ] {
            gso_round_trip(lo).await;
        }
    }

    async fn gso_round_trip(lo: IpAddr) {
        let rx = bind_receiver(lo, 0, 16 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = Receiver::new(rx.socket, false).unwrap();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut push = |len: usize, count: usize| {
            for _ in 0..count {
                let i = payloads.len();
                payloads.push((0..len).map(|j| (i * 7 + j) as u8).collect());
            }
        };
        push(10, 1);
        push(80, 100);
        push(3, 1);
        push(81, 2);
        push(1400, 50);
        push(7, 1);
        push(8, 1);
        push(60_000, 2);
        push(1, 3);
        for gso in [true, false] {
            let tx = DestSocket::new(
                connect_destination(&Destination::new(lo, port)).unwrap(),
                gso,
            );
            // As the relay sends: at most a batch's worth per call.
            let mut report = SendReport::default();
            for part in payloads.chunks(SENDMMSG_MAX) {
                let r = send_all(&tx, part.iter().map(Vec::as_slice)).await;
                report.sent += r.sent;
                report.failed += r.failed;
            }
            assert_eq!((report.sent, report.failed), (payloads.len() as u64, 0));
            assert_eq!(tx.gso(), gso, "loopback takes GSO");
            let got = receive(&rx, payloads.len()).await;
            assert_eq!(got.len(), payloads.len());
            for (i, (g, p)) in got.iter().zip(&payloads).enumerate() {
                assert!(
                    g == p,
                    "datagram {i} (gso {gso}): {} bytes, sent {}",
                    g.len(),
                    p.len()
                );
            }
        }
    }

    /// A route that refuses GSO: the kernel returns EINVAL for UDP_SEGMENT
    /// on a socket without UDP checksums (SO_NO_CHECK). The run is sent
    /// again one by one, nothing is lost or counted failed, and GSO stays
    /// off for that socket.
    #[tokio::test]
    async fn refused_gso_falls_back_to_sendmmsg_for_good() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 16 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = Receiver::new(rx.socket, false).unwrap();
        let socket = connect_destination(&Destination::new(lo, port)).unwrap();
        const SO_NO_CHECK: libc::c_int = 11;
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option of the length given.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NO_CHECK,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let tx = DestSocket::new(socket, true);
        let payloads: Vec<Vec<u8>> = (0..150u8)
            .map(|i| vec![i; if i % 50 == 49 { 9 } else { 100 }])
            .collect();
        let report = send_all(&tx, payloads.iter().map(Vec::as_slice)).await;
        assert_eq!((report.sent, report.failed), (150, 0));
        assert!(!tx.gso(), "the refusal turned GSO off");
        assert_eq!(receive(&rx, 150).await, payloads);
    }

    #[tokio::test]
    async fn receiving_more_appends_after_what_the_batch_holds() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 1 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = Receiver::new(rx.socket, false).unwrap();
        let tx = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut batch = RecvBatch::new(16);
        batch.set_limit(3);
        tx.send_to(b"one", (lo, port)).unwrap();
        rx.readable().await.unwrap();
        assert_eq!(batch.try_recv(&rx).unwrap(), 1);
        assert!(!batch.is_full());
        for d in [&b"two"[..], b"three", b"four"] {
            tx.send_to(d, (lo, port)).unwrap();
        }
        while !batch.is_full() {
            rx.readable().await.unwrap();
            batch.try_recv_more(&rx).unwrap();
        }
        let got: Vec<&[u8]> = (0..batch.len()).map(|i| batch.get(i).0).collect();
        assert_eq!(got, [&b"one"[..], b"two", b"three"], "kept, then appended");
        // The next batch starts afresh with what was left queued.
        rx.readable().await.unwrap();
        assert_eq!(batch.try_recv(&rx).unwrap(), 1);
        assert_eq!(batch.get(0).0, b"four");
    }

    /// A coalescing wait ends at its deadline, not before, however many
    /// datagrams arrive meanwhile; what came is then received into the
    /// free slots with one call, and what it left queued is found by the
    /// next receive. Switching coalescing off and on again keeps this.
    #[tokio::test]
    async fn a_wait_lasts_until_its_deadline_then_fills_the_batch() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 1 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let mut rx = Receiver::new(rx.socket, true).unwrap();
        let tx = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut batch = RecvBatch::new(16);
        batch.set_limit(4);
        for round in 0..3u8 {
            if round == 1 {
                rx.set_coalescing(false).unwrap();
                assert!(!rx.coalescing());
                rx.set_coalescing(true).unwrap();
            }
            assert!(rx.coalescing());
            tx.send_to(&[round, 0], (lo, port)).unwrap();
            rx.readable().await.unwrap();
            assert_eq!(batch.try_recv(&rx).unwrap(), 1);
            let after = Duration::from_millis(30);
            let started = std::time::Instant::now();
            let sender = {
                let tx = tx.try_clone().unwrap();
                std::thread::spawn(move || {
                    for i in 1..=5u8 {
                        tx.send_to(&[round, i], (lo, port)).unwrap();
                    }
                })
            };
            rx.wait(after).await.unwrap();
            assert!(started.elapsed() >= after, "the wait ended early");
            sender.join().unwrap();
            batch.try_recv_more(&rx).unwrap();
            let got: Vec<&[u8]> = (0..batch.len()).map(|i| batch.get(i).0).collect();
            assert_eq!(got, [[round, 0], [round, 1], [round, 2], [round, 3]]);
            // Two were left queued: the socket is watched again.
            let mut rest = Vec::new();
            while rest.len() < 2 {
                rx.readable().await.unwrap();
                let n = batch.try_recv(&rx).unwrap();
                rest.extend((0..n).map(|i| batch.get(i).0.to_vec()));
            }
            assert_eq!(rest, [vec![round, 4], vec![round, 5]]);
        }
    }

    #[tokio::test]
    async fn oversized_datagram_is_flagged_truncated() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 1 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = Receiver::new(rx.socket, false).unwrap();
        let tx = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.send_to(&[7; 100], (Ipv4Addr::LOCALHOST, port)).unwrap();
        let mut batch = RecvBatch::new(64);
        rx.readable().await.unwrap();
        assert_eq!(batch.try_recv(&rx).unwrap(), 1);
        let (data, truncated) = batch.get(0);
        assert!(truncated);
        assert_eq!(data.len(), 64);
    }

    #[tokio::test]
    async fn full_send_buffer_is_waited_on_then_given_up() {
        use std::os::unix::net::UnixDatagram;
        // A datagram socket pair whose peer does not read fills up, unlike
        // loopback UDP whose buffer empties at once.
        let (tx, rx) = UnixDatagram::pair().unwrap();
        tx.set_nonblocking(true).unwrap();
        while tx.send(&[0; 512]).is_ok() {}
        assert!(
            !wait_writable(&tx).await,
            "a full buffer is given up after SEND_STALL"
        );
        let waiter = tokio::spawn(async move { (wait_writable(&tx).await, tx) });
        // Lets the waiter register and park before the room is made.
        tokio::task::yield_now().await;
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0; 512];
        while rx.recv(&mut buf).is_ok() {}
        let (writable, _tx) = waiter.await.unwrap();
        assert!(writable, "room made by the peer ends the wait");
    }

    #[test]
    fn port_held_by_another_program_fails() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let other = StdUdpSocket::bind((lo, 0)).unwrap();
        let port = other.local_addr().unwrap().port();
        let err = bind_receiver(lo, port, 1 << 16).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
