//! Per-channel counters (SPEC §4), shared between the channel task that
//! writes them and whoever reads them (API, metrics, tests).
//!
//! Plain relaxed atomics: the receive loop adds once per batch, readers take
//! a [`ChannelStats`] snapshot. Nothing here locks on the datagram path; the
//! archive error text is written by the archive task only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::validator::InvalidDatum;

#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Datagrams received, valid or not.
    pub packets: AtomicU64,
    /// Payload bytes received.
    pub bytes: AtomicU64,
    /// Datagrams that were not exactly one record of the schema.
    pub invalid: AtomicU64,
    /// Records sent to a full-rate destination, counted once per destination.
    pub forwarded: AtomicU64,
    /// Records sent to a decimated destination, counted once per destination.
    pub decimated_sent: AtomicU64,
    /// Sends that failed (any destination, full-rate or decimated).
    pub send_errors: AtomicU64,
    /// Bytes written to archive files, headers included.
    pub archive_bytes: AtomicU64,
    /// Archive files opened.
    pub archive_files: AtomicU64,
    /// Failed archive operations (open, write, close).
    pub archive_errors: AtomicU64,
    /// Records that never reached a file because of an archive error or a
    /// writer that fell behind.
    pub archive_dropped: AtomicU64,
    /// Datagrams forwarded but not archived because they are not exactly
    /// one record of the schema: only with `validate: false`, which
    /// forwards unchecked but keeps archive files readable.
    pub archive_rejected: AtomicU64,
    /// Datagrams the kernel dropped because the receive buffer was full
    /// (SO_RXQ_OVFL: a running total kept by the kernel).
    pub kernel_drops: AtomicU64,
    /// Receive batches processed: each validated, forwarded with one
    /// `sendmmsg` per destination (more only for a full send buffer).
    pub batches: AtomicU64,
    /// Times a partial batch waited for more datagrams (`socket.coalesce_us`).
    pub coalesce_waits: AtomicU64,
    /// Microseconds those waits held their batch, summed: from the batch's
    /// first receive to the end of its wait.
    pub coalesce_waited_us: AtomicU64,
    /// The longest of those waits, in microseconds.
    pub coalesce_longest_us: AtomicU64,
    /// Records published to NATS (`outputs.nats`), raw and decimated.
    pub nats_published: AtomicU64,
    /// Records for NATS dropped: the publish queue was full (NATS slow or
    /// away) or the publish failed.
    pub nats_dropped: AtomicU64,
    /// Datagrams received and discarded in hot standby (a multicast
    /// channel on a node that does not hold its lease).
    pub standby_received: AtomicU64,
    /// Times this node bound the channel's port: at registration, for a
    /// hot standby, at each start; a take-over from hot standby adds none.
    pub binds: AtomicU64,
    /// Failed attempts to create or update the channel's JetStream stream
    /// (`outputs.nats.stream`).
    pub nats_stream_errors: AtomicU64,
    /// The last invalid datagram's error, packed by [`InvalidDatum::pack`]; 0 = none.
    last_invalid: AtomicU64,
    /// The last send error's errno; 0 = none.
    last_send_errno: AtomicU64,
    /// The last archive error, cleared when a block is written again.
    archive_error: Mutex<Option<String>>,
    /// Why the JetStream stream could not be set up, cleared once it is.
    nats_stream_error: Mutex<Option<String>>,
}

impl ChannelCounters {
    pub(crate) fn record_invalid(&self, err: InvalidDatum) {
        self.last_invalid.store(err.pack(), Relaxed);
    }

    pub(crate) fn record_send_errno(&self, errno: i32) {
        self.last_send_errno.store(errno as u64, Relaxed);
    }

    pub(crate) fn set_archive_error(&self, err: Option<String>) {
        let mut slot = self.archive_error.lock().unwrap_or_else(|p| p.into_inner());
        *slot = err;
    }

    pub fn archive_error(&self) -> Option<String> {
        self.archive_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set by the NATS output's stream keeper (feature `cluster`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_nats_stream_error(&self, err: Option<String>) {
        *self
            .nats_stream_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = err;
    }

    pub fn nats_stream_error(&self) -> Option<String> {
        self.nats_stream_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> ChannelStats {
        let last_invalid = InvalidDatum::unpack(self.last_invalid.load(Relaxed));
        let errno = self.last_send_errno.load(Relaxed) as i32;
        ChannelStats {
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            decimated_sent: self.decimated_sent.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            archive_bytes: self.archive_bytes.load(Relaxed),
            archive_files: self.archive_files.load(Relaxed),
            archive_errors: self.archive_errors.load(Relaxed),
            archive_dropped: self.archive_dropped.load(Relaxed),
            archive_rejected: self.archive_rejected.load(Relaxed),
            kernel_drops: self.kernel_drops.load(Relaxed),
            batches: self.batches.load(Relaxed),
            coalesce_waits: self.coalesce_waits.load(Relaxed),
            coalesce_waited_us: self.coalesce_waited_us.load(Relaxed),
            coalesce_longest_us: self.coalesce_longest_us.load(Relaxed),
            nats_published: self.nats_published.load(Relaxed),
            nats_dropped: self.nats_dropped.load(Relaxed),
            standby_received: self.standby_received.load(Relaxed),
            binds: self.binds.load(Relaxed),
            nats_stream_errors: self.nats_stream_errors.load(Relaxed),
            last_invalid: last_invalid.map(|e| e.to_string()),
            last_send_error: (errno != 0)
                .then(|| std::io::Error::from_raw_os_error(errno).to_string()),
            archive_error: self.archive_error(),
            nats_stream_error: self.nats_stream_error(),
        }
    }
}

/// A point-in-time copy of [`ChannelCounters`], as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    pub packets: u64,
    pub bytes: u64,
    pub invalid: u64,
    pub forwarded: u64,
    pub decimated_sent: u64,
    pub send_errors: u64,
    pub archive_bytes: u64,
    pub archive_files: u64,
    pub archive_errors: u64,
    pub archive_dropped: u64,
    pub archive_rejected: u64,
    pub kernel_drops: u64,
    pub batches: u64,
    pub coalesce_waits: u64,
    pub coalesce_waited_us: u64,
    pub coalesce_longest_us: u64,
    pub nats_published: u64,
    pub nats_dropped: u64,
    pub standby_received: u64,
    pub binds: u64,
    pub nats_stream_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_invalid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_send_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_stream_error: Option<String>,
}
