//! Prometheus exposition (`GET /metrics`, text format 0.0.4): every
//! per-channel counter, registry size, API request counts and process RSS.
//!
//! Request counting is a fixed table of relaxed atomics indexed by route
//! ([`crate::routes`]), method and status, so recording a request never allocates or
//! locks and the number of series stays bounded whatever paths clients send.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hyper::Method;

use crate::counters::ChannelStats;
use crate::engine::{ChannelInfo, Status};
use crate::routes::Route;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PATCH", "DELETE", "other"];

/// Every status the API answers with (`StatusCode::…` in api.rs and
/// web.rs; 408 is the body timeout); anything else is counted as `other`.
const STATUSES: [u16; 11] = [200, 201, 400, 401, 404, 405, 408, 409, 413, 415, 500];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// API requests answered, by route template, method and status.
pub(crate) struct RequestCounts {
    counts: Box<[AtomicU64]>,
}

impl Default for RequestCounts {
    fn default() -> Self {
        let n = Route::ALL.len() * METHODS.len() * STATUS_SLOTS;
        RequestCounts {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl std::fmt::Debug for RequestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounts").finish_non_exhaustive()
    }
}

impl RequestCounts {
    /// Counts one answered request.
    pub(crate) fn record(&self, route: Route, method: &Method, status: u16) {
        let m = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PATCH => 3,
            Method::DELETE => 4,
            _ => 5,
        };
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        let i = (route.index() * METHODS.len() + m) * STATUS_SLOTS + s;
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// `(route, method, status, count)` of every series counted at least once.
    fn nonzero(&self) -> impl Iterator<Item = (&'static str, &'static str, String, u64)> + '_ {
        self.counts.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Relaxed);
            if n == 0 {
                return None;
            }
            let s = i % STATUS_SLOTS;
            let m = (i / STATUS_SLOTS) % METHODS.len();
            let r = i / STATUS_SLOTS / METHODS.len();
            let status = STATUSES
                .get(s)
                .map_or_else(|| "other".to_string(), u16::to_string);
            Some((Route::ALL[r].template(), METHODS[m], status, n))
        })
    }
}

/// What one scrape shows.
pub(crate) struct Exposition<'a> {
    pub channels: &'a [ChannelInfo],
    /// Rows in the registry; `None` when it could not be read.
    pub registry_channels: Option<usize>,
    /// Size of the registry file; `None` when it could not be read.
    pub registry_file_bytes: Option<u64>,
    pub requests: &'a RequestCounts,
    /// Resident set size; `None` where /proc is missing.
    pub resident_memory_bytes: Option<u64>,
    /// Live stream viewers now, and those dropped for not keeping up.
    pub live_viewers: usize,
    pub live_viewers_dropped: u64,
    /// On a node of a cluster: its name and whether its NATS registry is
    /// reachable now.
    pub cluster: Option<(&'a str, bool)>,
    /// With leases: the channel leases this node holds now, and the leases
    /// it has taken since it started.
    pub cluster_leases: Option<(usize, u64)>,
}

/// Per-channel counter families: name, help, and which counter.
type Field = fn(&ChannelStats) -> u64;
const CHANNEL_COUNTERS: [(&str, &str, Field); 18] = [
    (
        "speedrelay_channel_received_packets_total",
        "Datagrams received on the channel's port, valid or not.",
        |s| s.packets,
    ),
    (
        "speedrelay_channel_received_bytes_total",
        "Payload bytes received on the channel's port.",
        |s| s.bytes,
    ),
    (
        "speedrelay_channel_invalid_packets_total",
        "Datagrams that were not exactly one record of the channel's schema.",
        |s| s.invalid,
    ),
    (
        "speedrelay_channel_kernel_drops_total",
        "Datagrams the kernel dropped because the receive buffer was full.",
        |s| s.kernel_drops,
    ),
    (
        "speedrelay_channel_batches_total",
        "Receive batches processed (one sendmmsg per destination each).",
        |s| s.batches,
    ),
    (
        "speedrelay_channel_coalesce_waits_total",
        "Times a partial batch waited for more datagrams (socket.coalesce_us).",
        |s| s.coalesce_waits,
    ),
    (
        "speedrelay_channel_nats_published_total",
        "Records published to NATS (outputs.nats), raw and decimated.",
        |s| s.nats_published,
    ),
    (
        "speedrelay_channel_nats_dropped_total",
        "Records for NATS dropped: publish queue full (NATS slow or away) or publish failed.",
        |s| s.nats_dropped,
    ),
    (
        "speedrelay_channel_standby_received_total",
        "Datagrams received and discarded in hot standby (multicast channel, lease held elsewhere).",
        |s| s.standby_received,
    ),
    (
        "speedrelay_channel_nats_stream_errors_total",
        "Failed attempts to create or update the channel's JetStream stream (outputs.nats.stream).",
        |s| s.nats_stream_errors,
    ),
    (
        "speedrelay_channel_forwarded_records_total",
        "Records sent to full-rate destinations, once per destination.",
        |s| s.forwarded,
    ),
    (
        "speedrelay_channel_decimated_records_total",
        "Records sent to decimated destinations, once per destination.",
        |s| s.decimated_sent,
    ),
    (
        "speedrelay_channel_send_errors_total",
        "Sends to a destination that failed.",
        |s| s.send_errors,
    ),
    (
        "speedrelay_channel_archive_written_bytes_total",
        "Bytes written to archive files, headers included.",
        |s| s.archive_bytes,
    ),
    (
        "speedrelay_channel_archive_files_total",
        "Archive files opened.",
        |s| s.archive_files,
    ),
    (
        "speedrelay_channel_archive_errors_total",
        "Failed archive operations (open, write, close).",
        |s| s.archive_errors,
    ),
    (
        "speedrelay_channel_archive_dropped_records_total",
        "Records that never reached an archive file.",
        |s| s.archive_dropped,
    ),
    (
        "speedrelay_channel_archive_rejected_packets_total",
        "Datagrams forwarded unchecked (validate: false) but not archived: not one record of the schema.",
        |s| s.archive_rejected,
    ),
];

/// The whole exposition as text.
pub(crate) fn render(x: &Exposition<'_>) -> String {
    let mut out = String::with_capacity(1024 + x.channels.len() * 1024);
    family(
        &mut out,
        "speedrelay_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    let _ = writeln!(
        out,
        "speedrelay_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    family(
        &mut out,
        "speedrelay_channels",
        "gauge",
        "Channels known to the relay, by status.",
    );
    let active = x
        .channels
        .iter()
        .filter(|c| c.status == Status::Active)
        .count();
    let _ = writeln!(out, "speedrelay_channels{{status=\"active\"}} {active}");
    let standby = x
        .channels
        .iter()
        .filter(|c| c.status == Status::Standby)
        .count();
    let _ = writeln!(
        out,
        "speedrelay_channels{{status=\"failed\"}} {}",
        x.channels.len() - active - standby
    );
    let _ = writeln!(out, "speedrelay_channels{{status=\"standby\"}} {standby}");

    family(
        &mut out,
        "speedrelay_channel_up",
        "gauge",
        "1 when the channel is bound and relaying, 0 when it failed and is being retried.",
    );
    for c in x.channels {
        let up = u8::from(c.status == Status::Active);
        let _ = writeln!(
            out,
            "speedrelay_channel_up{{channel=\"{}\"}} {up}",
            Escaped(&c.name)
        );
    }
    for (name, help, field) in CHANNEL_COUNTERS {
        family(&mut out, name, "counter", help);
        for c in x.channels {
            let _ = writeln!(
                out,
                "{name}{{channel=\"{}\"}} {}",
                Escaped(&c.name),
                field(&c.stats)
            );
        }
    }

    if let Some(n) = x.registry_channels {
        family(
            &mut out,
            "speedrelay_registry_channels",
            "gauge",
            "Channels stored in the registry.",
        );
        let _ = writeln!(out, "speedrelay_registry_channels {n}");
    }
    if let Some(n) = x.registry_file_bytes {
        family(
            &mut out,
            "speedrelay_registry_file_bytes",
            "gauge",
            "Size of the registry file.",
        );
        let _ = writeln!(out, "speedrelay_registry_file_bytes {n}");
    }

    family(
        &mut out,
        "speedrelay_http_requests_total",
        "counter",
        "API requests answered, by route template, method and status.",
    );
    for (route, method, status, n) in x.requests.nonzero() {
        let _ = writeln!(
            out,
            "speedrelay_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
        );
    }

    family(
        &mut out,
        "speedrelay_live_viewers",
        "gauge",
        "Clients streaming a channel's records (GET /channels/{name}/live).",
    );
    let _ = writeln!(out, "speedrelay_live_viewers {}", x.live_viewers);
    family(
        &mut out,
        "speedrelay_live_viewers_dropped_total",
        "counter",
        "Live viewers disconnected because they did not read fast enough.",
    );
    let _ = writeln!(
        out,
        "speedrelay_live_viewers_dropped_total {}",
        x.live_viewers_dropped
    );

    if let Some(n) = x.resident_memory_bytes {
        family(
            &mut out,
            "speedrelay_process_resident_memory_bytes",
            "gauge",
            "Resident set size of the relay process.",
        );
        let _ = writeln!(out, "speedrelay_process_resident_memory_bytes {n}");
    }
    if let Some((node, up)) = x.cluster {
        family(
            &mut out,
            "speedrelay_cluster_nats_up",
            "gauge",
            "1 when this node reaches the cluster registry on NATS, 0 while registrations are refused with 503.",
        );
        let _ = writeln!(
            out,
            "speedrelay_cluster_nats_up{{node=\"{}\"}} {}",
            Escaped(node),
            u8::from(up)
        );
        if let Some((held, taken)) = x.cluster_leases {
            family(
                &mut out,
                "speedrelay_cluster_leases_held",
                "gauge",
                "Channel leases this node holds now: the channels it relays.",
            );
            let _ = writeln!(
                out,
                "speedrelay_cluster_leases_held{{node=\"{}\"}} {held}",
                Escaped(node)
            );
            family(
                &mut out,
                "speedrelay_cluster_takeovers_total",
                "counter",
                "Channel leases this node has taken (free or expired ones), each with a new epoch.",
            );
            let _ = writeln!(
                out,
                "speedrelay_cluster_takeovers_total{{node=\"{}\"}} {taken}",
                Escaped(node)
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Help texts here are constants without backslashes or newlines, so
    // they need no escaping.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped as the format requires
/// (channel names cannot hold them today; this keeps the output valid if
/// that ever changes).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for ch in self.0.chars() {
            match ch {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The process's resident set size: pages from /proc/self/statm times the
/// page size.
pub(crate) fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_and_unknown_paths_are_other() {
        let t = |p: &str| Route::of(p).route.template();
        assert_eq!(t("/"), "/");
        assert_eq!(t("/metrics"), "/metrics");
        assert_eq!(t("/api/v1/metrics"), "/api/v1/metrics");
        assert_eq!(t("/api/v1/health"), "/api/v1/health");
        assert_eq!(t("/api/v1/channels"), "/api/v1/channels");
        assert_eq!(t("/api/v1/channels/abc"), "/api/v1/channels/{name}");
        assert_eq!(
            t("/api/v1/channels/x/schema"),
            "/api/v1/channels/{name}/schema"
        );
        assert_eq!(
            t("/api/v1/channels/x/validate-schema"),
            "/api/v1/channels/{name}/validate-schema"
        );
        assert_eq!(t("/api/v1/ports/available"), "/api/v1/ports/available");
        assert_eq!(
            t("/api/v1/ports/26001/status"),
            "/api/v1/ports/{port}/status"
        );
        for p in [
            "/nope",
            "/api/v1/channels/x/y/z",
            "/api/v2/health",
            "/api/v1/ports/1",
        ] {
            assert_eq!(t(p), "other", "{p}");
        }
    }

    #[test]
    fn every_slot_is_reachable_and_counted_once() {
        let c = RequestCounts::default();
        c.record(Route::of("/api/v1/channels/a").route, &Method::GET, 404);
        c.record(Route::of("/api/v1/channels/b").route, &Method::GET, 404);
        c.record(Route::of("/x").route, &Method::PUT, 418);
        c.record(Route::of("/api/v1/channels").route, &Method::POST, 408);
        let got: Vec<_> = c.nonzero().collect();
        assert_eq!(
            got,
            vec![
                ("/api/v1/channels", "POST", "408".to_string(), 1),
                ("/api/v1/channels/{name}", "GET", "404".to_string(), 2),
                ("other", "other", "other".to_string(), 1),
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Escaped("a\\b\"c\nd").to_string(), "a\\\\b\\\"c\\nd");
    }
}
