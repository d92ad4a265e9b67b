//! Rate history: per channel, a ring of the last [`SECONDS`] per-second
//! samples (valid records, invalid datagrams, kernel drops, archive bytes),
//! for `GET /api/v1/channels/{name}/history`, the page's sparklines and
//! `speedrelay top`.
//!
//! Filled once a second by one sampler task from the channel counters
//! ([`crate::engine::Engine::sample_history`]): the datagram path never
//! sees it. A ring is 600 × 16 bytes, allocated once when the channel is
//! registered; an idle channel costs nothing more.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::counters::ChannelStats;

/// Seconds of history kept per channel: 10 minutes.
pub const SECONDS: usize = 600;

/// One second of a channel: how much each counter grew during it.
/// u32: 4 billion a second is beyond any channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub records: u32,
    pub invalid: u32,
    pub kernel_drops: u32,
    pub archive_bytes: u32,
}

/// The counters a sample is a difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    records: u64,
    invalid: u64,
    kernel_drops: u64,
    archive_bytes: u64,
}

impl Totals {
    fn of(s: &ChannelStats) -> Self {
        Totals {
            records: s.packets.saturating_sub(s.invalid),
            invalid: s.invalid,
            kernel_drops: s.kernel_drops,
            archive_bytes: s.archive_bytes,
        }
    }
}

#[derive(Debug)]
struct Ring {
    samples: VecDeque<Sample>,
    /// The totals at the last sample.
    last: Totals,
    /// Unix milliseconds of the newest sample.
    end_ms: u64,
}

/// One channel's history.
#[derive(Debug)]
pub struct History {
    ring: Mutex<Ring>,
}

impl Default for History {
    fn default() -> Self {
        History {
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(SECONDS),
                // A channel's counters start at 0 when it is registered
                // (or the relay starts): its first second counts from there.
                last: Totals::default(),
                end_ms: 0,
            }),
        }
    }
}

/// What `GET /history` answers: columns, oldest first, one value a second.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HistoryView {
    pub interval_ms: u64,
    /// Unix milliseconds of the newest sample (0 when there is none yet).
    pub end_ms: u64,
    pub seconds: usize,
    pub records: Vec<u32>,
    pub invalid: Vec<u32>,
    pub kernel_drops: Vec<u32>,
    pub archive_bytes: Vec<u32>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the second that ended at `now_ms`, from the channel's counters
    /// now. A counter that went back (the kernel's drop count after a
    /// restart) counts 0.
    pub fn push(&self, stats: &ChannelStats, now_ms: u64) {
        let now = Totals::of(stats);
        let mut ring = self.lock();
        {
            let last = ring.last;
            let d = |a: u64, b: u64| u32::try_from(a.saturating_sub(b)).unwrap_or(u32::MAX);
            let sample = Sample {
                records: d(now.records, last.records),
                invalid: d(now.invalid, last.invalid),
                kernel_drops: d(now.kernel_drops, last.kernel_drops),
                archive_bytes: d(now.archive_bytes, last.archive_bytes),
            };
            if ring.samples.len() == SECONDS {
                ring.samples.pop_front();
            }
            ring.samples.push_back(sample);
            ring.end_ms = now_ms;
        }
        ring.last = now;
    }

    /// The last `seconds` samples (fewer when the channel is younger).
    pub fn view(&self, seconds: usize) -> HistoryView {
        let ring = self.lock();
        let n = seconds.min(ring.samples.len());
        let skip = ring.samples.len() - n;
        let col = |f: fn(&Sample) -> u32| ring.samples.iter().skip(skip).map(f).collect();
        HistoryView {
            interval_ms: 1000,
            end_ms: ring.end_ms,
            seconds: n,
            records: col(|s| s.records),
            invalid: col(|s| s.invalid),
            kernel_drops: col(|s| s.kernel_drops),
            archive_bytes: col(|s| s.archive_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, invalid: u64, drops: u64, archive: u64) -> ChannelStats {
        ChannelStats {
            packets,
            invalid,
            kernel_drops: drops,
            archive_bytes: archive,
            ..ChannelStats::default()
        }
    }

    #[test]
    fn samples_are_per_second_differences_and_the_ring_keeps_600() {
        let h = History::default();
        assert_eq!(h.view(SECONDS).seconds, 0);
        h.push(&stats(10, 1, 0, 0), 1000);
        assert_eq!(h.view(SECONDS).records, [9], "counted from registration");
        h.push(&stats(30, 3, 5, 100), 2000);
        let v = h.view(1);
        assert_eq!(v.records, [18]);
        assert_eq!(v.invalid, [2]);
        assert_eq!(v.kernel_drops, [5]);
        assert_eq!(v.archive_bytes, [100]);
        assert_eq!(v.end_ms, 2000);
        // The kernel's count restarts with the socket: not a negative second.
        h.push(&stats(30, 3, 0, 100), 3000);
        assert_eq!(h.view(1).kernel_drops, [0]);
        for i in 0..1000u64 {
            h.push(&stats(30 + i * 7, 3, 0, 100), 4000 + i * 1000);
        }
        let v = h.view(SECONDS);
        assert_eq!(v.seconds, SECONDS);
        assert_eq!(v.records.len(), SECONDS);
        assert_eq!(h.view(5).records, [7; 5]);
        assert!(h.ring.lock().unwrap().samples.capacity() < 2 * SECONDS);
    }

    #[test]
    fn a_sample_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Sample>(), 16);
    }
}
