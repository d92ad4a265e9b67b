//! Where the memory of an idle channel goes: live heap bytes (glibc's
//! `mallinfo2`) and RSS per channel, for 1,000 idle channels registered
//! through the engine, and for the parts one channel is made of, each
//! kept alive 1,000 times over.
//!
//! Binds UDP ports 30000-30999 on loopback and sends nothing: run it with
//! `benches/run.sh footprint` (a private network namespace).

use std::net::Ipv4Addr;

use serde_json::json;
use speedrelay::channel::{BoundChannel, ChannelSpec};
use speedrelay::config::ChannelSettings;
use speedrelay::engine::{Engine, EngineOptions, Registration};
use speedrelay::udp::RecvBatch;
use speedrelay::validator::Validator;

const SCHEMA: &str = include_str!("../config/agents/example.avsc");
const N: usize = 1000;

fn heap() -> i64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2().uordblks as i64 }
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Keeps `N` results of `make` alive and prints the heap bytes each took.
fn part<T>(what: &str, mut make: impl FnMut(usize) -> T) -> Vec<T> {
    let h0 = heap();
    let kept: Vec<T> = (0..N).map(&mut make).collect();
    println!(
        "{what}: {} heap bytes each",
        (heap() - h0 - (N * size_of::<T>()) as i64) / N as i64 + size_of::<T>() as i64
    );
    kept
}

fn main() {
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!("footprint bench: run it through benches/run.sh footprint");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        println!("== parts of one channel, each kept alive {N} times");
        let _v = part("Validator (example.avsc)", |_| {
            Validator::from_json(SCHEMA).expect("schema")
        });
        let _r = part("RecvBatch (before its first receive)", |_| {
            RecvBatch::new(65_535)
        });
        let mut settings = ChannelSettings::default();
        settings.socket.bind = Ipv4Addr::LOCALHOST.into();
        let spec = |i: usize| ChannelSpec {
            name: format!("p{i}"),
            port: 30000 + i as u16,
            schema_json: SCHEMA.into(),
            settings: settings.clone(),
        };
        let bound = part("BoundChannel (socket bound, not started)", |i| {
            BoundChannel::bind(spec(i), dir.path()).expect("bind")
        });
        let h0 = heap();
        let handles: Vec<_> = bound
            .into_iter()
            .map(|b| b.spawn().expect("spawn"))
            .collect();
        tokio::task::yield_now().await;
        println!(
            "spawning it (channel task + archive task): {} heap bytes each",
            (heap() - h0) / N as i64
        );
        for h in handles {
            h.stop().await.expect("stop");
        }
        drop((_v, _r));

        println!("== {N} idle channels registered through the engine");
        let (h0, r0) = (heap(), rss_kib());
        let engine = Engine::start(
            EngineOptions::new(dir.path().join("engine"), json!({"socket": {"bind": "127.0.0.1"}})),
            &[],
        )
        .await
        .expect("engine");
        for i in 0..N {
            engine
                .register(Registration {
                    name: format!("ch{i}"),
                    port: 30000 + i as u16,
                    schema_json: SCHEMA.into(),
                    schema_path: None,
                    config: None,
                })
                .await
                .expect("register");
        }
        tokio::task::yield_now().await;
        println!(
            "engine with {N} channels: {} heap bytes and {} bytes of RSS per channel (heap {} KiB, RSS {} KiB total)",
            (heap() - h0) / N as i64,
            (rss_kib() - r0) * 1024 / N as i64,
            heap() / 1024,
            rss_kib()
        );
        engine.shutdown().await;
    });
}
