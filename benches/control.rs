//! Control-plane figures at the engine level (the HTTP layer adds its own
//! parsing on top): register (port bound + durable registry commit) and
//! deregister over 200 channels, `list` with 1,000 channels, and start-up
//! time and RSS with 1,000 persisted channels, on a current-thread and a
//! multi-thread runtime. Binds UDP ports 30000-31199, so run it with
//! `benches/run.sh control` (a private network namespace).

use std::time::{Duration, Instant};

use serde_json::json;
use speedrelay::engine::{Engine, EngineOptions, Registration};

const SCHEMA: &str = include_str!("../config/agents/example.avsc");

fn main() {
    let in_netns = std::fs::read_to_string("/proc/net/dev")
        .map(|s| s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false);
    if !in_netns {
        eprintln!(
            "control bench: run it through benches/run.sh control (a private network namespace)"
        );
        return;
    }
    for threads in [1, 2] {
        let rt = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        .expect("runtime");
        println!("== runtime with {threads} thread(s)");
        rt.block_on(run());
    }
}

fn options(dir: &std::path::Path) -> EngineOptions {
    EngineOptions {
        data_dir: dir.to_path_buf(),
        defaults: json!({"socket": {"bind": "127.0.0.1", "recv_buffer": 262144}}),
    }
}

fn registration(i: u16) -> Registration {
    Registration {
        name: format!("ch{i}"),
        port: 30000 + i,
        schema_json: SCHEMA.into(),
        schema_path: None,
        config: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms (n={})",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::start(options(dir.path()), &[])
        .await
        .expect("engine");
    let mut reg = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        engine.register(registration(i)).await.expect("register");
        reg.push(t.elapsed());
    }
    report("register (bind + durable commit + start)", reg);
    let mut del = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        engine
            .deregister(&format!("ch{i}"))
            .await
            .expect("deregister");
        del.push(t.elapsed());
    }
    report("deregister (commit + stop + close)", del);
    for i in 200..1200 {
        engine.register(registration(i)).await.expect("register");
    }
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let n = engine.list().len();
        list.push(t.elapsed());
        assert_eq!(n, 1000);
    }
    report("list with 1,000 channels (engine, before JSON)", list);
    let mut json_list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let body = serde_json::to_vec(&json!({"channels": engine.list()})).expect("json");
        json_list.push(t.elapsed());
        assert!(body.len() > 1000);
    }
    report("list with 1,000 channels as JSON", json_list);
    engine.shutdown().await;
    drop(engine);

    let before = rss_kib();
    let t = Instant::now();
    let engine = Engine::start(options(dir.path()), &[])
        .await
        .expect("restart");
    let started = t.elapsed();
    let active = engine
        .list()
        .iter()
        .filter(|c| c.status == speedrelay::engine::Status::Active)
        .count();
    println!(
        "start-up with 1,000 persisted channels: {:.0} ms to all {active} active; RSS +{} KiB ({} KiB total)",
        started.as_secs_f64() * 1e3,
        rss_kib().saturating_sub(before),
        rss_kib()
    );
    engine.shutdown().await;
}
