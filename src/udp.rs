//! Batched UDP I/O for the channel task: binding the receive socket,
//! `recvmmsg` into one reused buffer, and `sendmmsg` of slices of it to
//! destination sockets, so a datagram is never copied between receive and
//! forward.
//!
//! Linux only (recvmmsg, sendmmsg, SO_RXQ_OVFL), like the relay itself.

use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

use crate::config::Destination;

/// Datagrams taken per `recvmmsg` call. Large enough to amortise the system
/// call, small enough that a batch stays in L2 for the validate-and-forward pass.
pub const BATCH: usize = 64;

/// How long a send may wait for a destination socket's buffer before the rest
/// of the batch is counted as send errors; bounds how long a slow
/// destination can hold up the channel.
const SEND_STALL: Duration = Duration::from_millis(5);

/// Room for one `SO_RXQ_OVFL` control message (a u32) per datagram.
const CMSG_ROOM: usize = 32;

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
/// relay rebinds at once without them. (Channels receive unicast only; a
/// multicast receiver would need SO_REUSEADDR to share its group's port.)
pub fn bind_receiver(addr: IpAddr, port: u16, recv_buffer: usize) -> io::Result<BoundSocket> {
    let sa = SocketAddr::new(addr, port);
    let socket = Socket::new(Domain::for_address(sa), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps this at net.core.rmem_max; the caller reads back the grant.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    enable_drop_counter(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&sa.into())?;
    let recv_buffer_granted = socket.recv_buffer_size().unwrap_or(0);
    Ok(BoundSocket {
        socket: socket.into(),
        recv_buffer_granted,
    })
}

/// Asks the kernel to attach its drop count to every received datagram.
/// Best effort: without it the drop counter stays 0.
fn enable_drop_counter(socket: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value points at a c_int of the given length.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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
    ptr: *mut u8,
    len: usize,
}

impl PageBuf {
    fn map(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint.
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
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, zero-filled by the kernel.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One reused receive buffer of [`BATCH`] slots and the `mmsghdr`s that
/// point into it. The headers are re-pointed before every call, so the
/// struct holds no pointer across an `.await`.
pub struct RecvBatch {
    /// Mapped at the first receive.
    buf: Option<PageBuf>,
    slot: usize,
    cmsg: Vec<u8>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    lens: [u32; BATCH],
    truncated: [bool; BATCH],
    len: usize,
    /// Datagrams asked of one `recvmmsg` (1..=BATCH).
    limit: usize,
    /// The kernel's drop count as last reported, if it reported one.
    pub kernel_drops: Option<u32>,
}

// SAFETY: the raw pointers in `hdrs`/`iovs` only ever point into `buf` and
// `cmsg` of the same struct and are rewritten before each use.
unsafe impl Send for RecvBatch {}
// SAFETY: `&self` methods only read `buf` and the lengths; the pointers are
// used by `recv_now`, which takes `&mut self`.
unsafe impl Sync for RecvBatch {}

impl RecvBatch {
    /// `max_datagram` bytes per slot. Nothing is allocated or mapped until
    /// the first receive, so an idle channel costs a few hundred bytes here.
    pub fn new(max_datagram: usize) -> Self {
        let slot = max_datagram.max(1);
        Self {
            buf: None,
            slot,
            cmsg: Vec::new(),
            hdrs: Vec::new(),
            iovs: Vec::new(),
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

    /// One non-blocking `recvmmsg`; `WouldBlock` when nothing is queued.
    fn recv_now(&mut self, fd: i32) -> io::Result<usize> {
        if self.buf.is_none() {
            self.buf = Some(PageBuf::map(self.slot * BATCH)?);
            self.cmsg = vec![0; CMSG_ROOM * BATCH];
            (self.hdrs, self.iovs) = empty_headers(BATCH);
        }
        let base = match &self.buf {
            Some(buf) => buf.ptr,
            None => return Ok(0),
        };
        let cbase = self.cmsg.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * slot + slot <= buf.len().
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            // SAFETY: i * CMSG_ROOM + CMSG_ROOM <= cmsg.len().
            h.msg_control = unsafe { cbase.add(i * CMSG_ROOM) }.cast();
            h.msg_controllen = CMSG_ROOM as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live, disjoint buffers owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.limit as libc::c_uint,
                // The flags are a c_int in glibc's prototype, c_uint in musl's.
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.len = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens[i] = h.msg_len.min(self.slot as u32);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        if n > 0 {
            self.kernel_drops = read_drop_count(&self.hdrs[n - 1].msg_hdr).or(self.kernel_drops);
        }
        self.len = n;
        Ok(n)
    }

    /// Like [`RecvBatch::try_recv`] but asks the kernel even when tokio has
    /// not yet seen the socket readable: for draining after a stop, which
    /// may come before the reactor reported datagrams already queued.
    pub fn recv_queued(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        match self.recv_now(socket.as_raw_fd()) {
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
    pub fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let mut got = 0;
        let r = socket.try_io(Interest::READABLE, || {
            got = self.recv_now(fd)?;
            if got < self.limit {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match r {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.len = got;
                Ok(got)
            }
            Err(e) => Err(e),
        }
    }
}

/// The SO_RXQ_OVFL counter attached to a received message, if any.
fn read_drop_count(h: &libc::msghdr) -> Option<u32> {
    if h.msg_controllen == 0 || h.msg_control.is_null() {
        return None;
    }
    // SAFETY: the kernel filled msg_control with well-formed cmsgs up to msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// `n` empty message headers and iovecs, for a batch's first use.
pub(crate) fn empty_headers(n: usize) -> (Vec<libc::mmsghdr>, Vec<libc::iovec>) {
    // SAFETY: all-zero is a valid (empty) mmsghdr and iovec.
    unsafe {
        (
            (0..n).map(|_| std::mem::zeroed()).collect(),
            (0..n).map(|_| std::mem::zeroed()).collect(),
        )
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

/// Most datagrams one [`SendBatch::load`] takes: a receive batch, or the
/// decimated output of one (at most two records per input, for minmax).
pub const SEND_CAPACITY: usize = 2 * BATCH;

/// Reused `sendmmsg` headers: loaded once per batch with slices of the
/// receive buffer, then sent to every destination.
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the pointers are rewritten by `load` from slices that the returned
// `Loaded` borrows, and only dereferenced (by the kernel) while it lives.
unsafe impl Send for SendBatch {}

/// Empty: the headers are allocated by the first [`SendBatch::load`], so a
/// channel that never forwards does not hold them.
impl Default for SendBatch {
    fn default() -> Self {
        Self {
            hdrs: Vec::new(),
            iovs: Vec::new(),
        }
    }
}

impl SendBatch {
    /// Points the headers at up to [`SEND_CAPACITY`] datagrams, in order.
    pub fn load<'a>(&'a mut self, datagrams: impl Iterator<Item = &'a [u8]>) -> Loaded<'a> {
        if self.hdrs.is_empty() {
            (self.hdrs, self.iovs) = empty_headers(SEND_CAPACITY);
        }
        let mut len = 0;
        for d in datagrams.take(SEND_CAPACITY) {
            self.iovs[len] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            len += 1;
        }
        Loaded {
            batch: self,
            len,
            _slices: PhantomData,
        }
    }
}

/// A loaded [`SendBatch`]; the borrow keeps the datagrams alive.
pub struct Loaded<'a> {
    batch: &'a mut SendBatch,
    len: usize,
    _slices: PhantomData<&'a [u8]>,
}

impl Loaded<'_> {
    /// Sends every loaded datagram to the connected `socket`, in order, in
    /// as few `sendmmsg` calls as the kernel allows. A full socket buffer is
    /// waited on for at most [`SEND_STALL`]; any other error skips that
    /// datagram and is counted.
    ///
    /// The socket is a plain non-blocking one, not registered with the
    /// runtime: a registered UDP socket is woken (EPOLLOUT) each time one
    /// of its datagrams leaves the send buffer, which cost an extra
    /// `epoll_wait` per batch and a wake-up callback per datagram. Only a
    /// full buffer registers it, for the wait.
    pub async fn send_to(&mut self, socket: &StdUdpSocket) -> SendReport {
        let mut report = SendReport::default();
        let fd = socket.as_raw_fd();
        let n = self.len;
        let mut done = 0;
        // Whether the datagram at `done` already met a stale refusal.
        let mut refused_once = false;
        while done < n {
            let SendBatch { hdrs, iovs } = &mut *self.batch;
            for i in done..n {
                let h = &mut hdrs[i];
                // SAFETY: all-zero msghdr plus the iovec pointer is a valid message.
                h.msg_hdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_len = 0;
            }
            let pending = &mut hdrs[done..n];
            // SAFETY: headers point at iovecs over slices borrowed by `self`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    pending.as_mut_ptr(),
                    pending.len() as libc::c_uint,
                    libc::MSG_DONTWAIT as _, // c_int in glibc, c_uint in musl
                )
            };
            let r = if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            };
            match r {
                Ok(sent) => {
                    done += sent;
                    report.sent += sent as u64;
                    refused_once = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable(socket).await {
                        report.failed += (n - done) as u64;
                        report.last_errno = libc::EAGAIN;
                        return report;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && !refused_once => {
                    // An ICMP refusal of an earlier datagram, reported now:
                    // it is counted, but this datagram was not sent. Sent
                    // again, it reaches a destination that is back up.
                    report.failed += 1;
                    report.last_errno = libc::ECONNREFUSED;
                    refused_once = true;
                }
                Err(e) => {
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
}

/// Waits at most [`SEND_STALL`] for room in `socket`'s send buffer,
/// registering it with the runtime only for this wait. False when the
/// buffer stayed full or the socket cannot be registered.
async fn wait_writable(socket: &impl AsFd) -> bool {
    // SAFETY: the `BorrowedFd` keeps the socket's fd open and the same for
    // as long as the `AsyncFd` holding it lives.
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
        let rx = UdpSocket::from_std(rx.socket).unwrap();
        let tx = connect_destination(&Destination::new(lo, port)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; i as usize + 1]).collect();
        let mut send = SendBatch::default();
        let report = send
            .load(payloads.iter().map(|p| p.as_slice()))
            .send_to(&tx)
            .await;
        assert_eq!(report.sent, 100);
        let mut batch = RecvBatch::new(256);
        let mut got = Vec::new();
        while got.len() < 100 {
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

    #[tokio::test]
    async fn oversized_datagram_is_flagged_truncated() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rx = bind_receiver(lo, 0, 1 << 20).unwrap();
        let port = rx.socket.local_addr().unwrap().port();
        let rx = UdpSocket::from_std(rx.socket).unwrap();
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
