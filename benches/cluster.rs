//! The cluster on three hosts (network namespaces joined by a bridge, one
//! clustered nats-server and one relay per host, the bucket with three
//! replicas: tests/it/common/netns.rs), two figures:
//!
//! - take-over: kill -9 the owner of a channel fed at 2,000 records/s on
//!   every host, and time until a destination receives from the new owner
//!   (the killed relay is started again before the next kill, so there are
//!   always three nodes); p50/p90/max over `--kills` kills;
//! - registry writes: `POST /channels` and `DELETE /channels/{name}`
//!   through one node's API, each a round trip to the replicated bucket;
//!   p50/p99 over `--writes` pairs.
//!
//! Run it with benches/cluster.sh (a private namespace, bounded): every
//! loop is bounded in count, and every wait by a deadline.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::*;
use common::*;
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

fn nats_bin() -> PathBuf {
    std::env::var_os("SPEEDRELAY_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file(".venv/bin/nats-server"))
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn main() {
    let kills = arg("--kills", 20);
    let writes = arg("--writes", 200);
    let lease_ms = arg("--lease-ms", 1000);
    let relay = Path::new(env!("CARGO_BIN_EXE_speedrelay"));
    let bin = nats_bin();
    assert!(bin.is_file(), "no nats-server at {}", bin.display());
    let t = Duration::from_secs(30);
    let mut c = Cluster3::start(&bin, relay, lease_ms);
    println!(
        "three hosts, lease_ms {lease_ms}, relay {}",
        relay.display()
    );

    // Registry writes through node 1 (no traffic yet).
    let mut post = Vec::new();
    let mut delete = Vec::new();
    for k in 0..writes {
        let name = format!("w{k}");
        let started = Instant::now();
        let (status, body) = register_example(c.api(0), &name, 20000 + k as u16, json!({}));
        post.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 201, "{body}");
        let started = Instant::now();
        let (status, body) = http(
            c.api(0),
            "DELETE",
            &format!("/api/v1/channels/{name}"),
            &[],
            None,
        );
        delete.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "{body}");
    }
    post.sort_by(f64::total_cmp);
    delete.sort_by(f64::total_cmp);
    println!(
        "registry writes through one node, {writes} each: POST p50 {:.2} ms p99 {:.2} ms; DELETE p50 {:.2} ms p99 {:.2} ms",
        quantile(&post, 0.5),
        quantile(&post, 0.99),
        quantile(&delete, 0.5),
        quantile(&delete, 0.99)
    );

    // Take-over after kill -9.
    let (status, body) = register_example(c.api(0), "takeover", FEED_PORT, local_destination());
    assert_eq!(status, 201, "{body}");
    let feeds = Feeds::start(&c.hosts, 2000, Duration::from_secs(600));
    let mut took = Vec::new();
    for k in 0..kills {
        let (owner, _) = c.wait_owner(&[0, 1, 2], "takeover");
        let from = feeds.count(owner);
        wait_for("the owner to forward", t, || {
            feeds.count(owner) >= from + 100
        });
        let killed = Instant::now();
        c.kill9(owner);
        let mut first = None;
        wait_for("another host to forward", t, || {
            first = (0..3)
                .filter(|i| *i != owner)
                .find_map(|i| feeds.first_after(i, killed));
            first.is_some()
        });
        let (_, at) = first.expect("a new owner");
        let ms = (at - killed).as_secs_f64() * 1e3;
        println!(
            "kill {}: {} -> forwarded after {ms:.0} ms",
            k + 1,
            c.names[owner]
        );
        took.push(ms);
        c.restart_relay(relay, owner);
    }
    drop(feeds);
    took.sort_by(f64::total_cmp);
    println!(
        "take-over after kill -9, {kills} kills: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms (lease {lease_ms} ms)",
        quantile(&took, 0.5),
        quantile(&took, 0.9),
        took[took.len() - 1]
    );
}
