//! Control-plane figures at the engine level (the HTTP layer adds its own
//! parsing on top): register (port bound + durable registry commit) and
//! deregister over 200 channels, `list` with 1,000 channels, and start-up
//! time and RSS with 1,000 persisted channels, on a current-thread and a
//! multi-thread runtime. Binds UDP ports 30000-31399, so run it with
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
    EngineOptions::new(
        dir,
        json!({"socket": {"bind": "127.0.0.1", "recv_buffer": 262144}}),
    )
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
    http_figures(engine.clone()).await;
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

/// The same operations through the real HTTP API on loopback: POST and
/// DELETE over 200 new channels, and GET /channels with the 1,000 present.
async fn http_figures(engine: std::sync::Arc<Engine>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let api = tokio::spawn(speedrelay::api::serve(
        listener,
        engine,
        speedrelay::api::ApiOptions::default(),
        stop.clone(),
    ));
    let (post, delete, get) = tokio::task::spawn_blocking(move || {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema");
        let mut post = Vec::new();
        for i in 0..200u16 {
            let body = serde_json::to_vec(
                &json!({"name": format!("h{i}"), "port": 31200 + i, "schema": schema}),
            )
            .expect("json");
            let t = Instant::now();
            assert_eq!(request(addr, "POST", "/api/v1/channels", Some(&body)), 201);
            post.push(t.elapsed());
        }
        let mut delete = Vec::new();
        for i in 0..200u16 {
            let t = Instant::now();
            assert_eq!(
                request(addr, "DELETE", &format!("/api/v1/channels/h{i}"), None),
                200
            );
            delete.push(t.elapsed());
        }
        let mut get = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(request(addr, "GET", "/api/v1/channels", None), 200);
            get.push(t.elapsed());
        }
        (post, delete, get)
    })
    .await
    .expect("client");
    report("HTTP POST /channels (bound + durable)", post);
    report("HTTP DELETE /channels/{name}", delete);
    report("HTTP GET /channels with 1,000 channels", get);
    stop.cancel();
    let _ = api.await;
}

/// One HTTP/1.1 request on a fresh connection; returns the status.
fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
