//! Hot standby of a multicast channel on a cluster node that does not hold
//! its lease: the node binds the channel's port and joins its group
//! already, receives what the group carries and discards it (counted in
//! `standby_received`), so that when it wins the lease the channel starts
//! on this very socket: no bind or join at the switch, and it forwards
//! from the first datagram after it.
//!
//! Only for a channel bound to a multicast group: receivers of a group on
//! one host share its port (SO_REUSEADDR, see [`udp::bind_receiver`]), so
//! the standby steals nothing from the owner. A unicast port cannot be
//! shared, and waits unbound as before.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelError, ChannelSpec};
use crate::counters::ChannelCounters;
use crate::udp::{self, BoundSocket};

/// Most datagrams discarded from the queue when the standby ends: what
/// arrived before the lease was won is not forwarded (the old owner may
/// have forwarded it). Bounds the hand-over of a flooded channel.
const DRAIN_AT_SWITCH: usize = 65_536;

/// A bound, joined socket whose datagrams are discarded until [`HotStandby::take`].
pub struct HotStandby {
    cancel: CancellationToken,
    task: JoinHandle<UdpSocket>,
    recv_buffer_granted: usize,
}

impl HotStandby {
    /// Whether a channel waits in hot standby rather than unbound.
    pub fn applies(spec: &ChannelSpec) -> bool {
        spec.settings.socket.bind.is_multicast()
    }

    /// Binds and joins as the channel would, and starts discarding.
    /// Must be called inside a tokio runtime.
    pub fn start(spec: &ChannelSpec, counters: Arc<ChannelCounters>) -> Result<Self, ChannelError> {
        let sock = &spec.settings.socket;
        let bind_error = |source| ChannelError::Bind {
            port: spec.port,
            source,
        };
        let bound = udp::bind_receiver(sock.bind, spec.port, sock.recv_buffer as usize)
            .map_err(bind_error)?;
        counters.binds.fetch_add(1, Relaxed);
        let recv_buffer_granted = bound.recv_buffer_granted;
        let socket = UdpSocket::from_std(bound.socket).map_err(bind_error)?;
        let cancel = CancellationToken::new();
        let max = sock.max_datagram as usize;
        let task = tokio::spawn(discard(socket, counters, cancel.clone(), max));
        Ok(HotStandby {
            cancel,
            task,
            recv_buffer_granted,
        })
    }

    /// Ends the standby: what is queued is discarded too, and the socket
    /// is handed back for the channel to run on. None if the task failed.
    pub async fn take(self) -> Option<BoundSocket> {
        self.cancel.cancel();
        let socket = self.task.await.ok()?.into_std().ok()?;
        Some(BoundSocket {
            socket,
            recv_buffer_granted: self.recv_buffer_granted,
        })
    }
}

/// Receives and discards until cancelled; per datagram a counter, no
/// allocation (one buffer for the standby's life).
async fn discard(
    socket: UdpSocket,
    counters: Arc<ChannelCounters>,
    cancel: CancellationToken,
    max_datagram: usize,
) -> UdpSocket {
    let mut buf = vec![0u8; max_datagram.max(1)];
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            received = socket.recv(&mut buf) => match received {
                Ok(_) => {
                    counters.standby_received.fetch_add(1, Relaxed);
                }
                // An unconnected UDP socket reports no peer's errors; any
                // other would repeat, so stop reading and wait for the end.
                Err(_) => {
                    cancel.cancelled().await;
                    break;
                }
            },
        }
    }
    for _ in 0..DRAIN_AT_SWITCH {
        if socket.try_recv(&mut buf).is_err() {
            break;
        }
        counters.standby_received.fetch_add(1, Relaxed);
    }
    socket
}
