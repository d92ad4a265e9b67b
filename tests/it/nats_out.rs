//! The NATS output (`outputs.nats`) and `speedrelay subscribe` against a
//! real nats-server and real relay processes: records published
//! byte-identical on `.raw` and `.dec`, headers where the settings say,
//! re-emitted as UDP by `subscribe`; NATS away never stops the UDP path;
//! bad settings are refused. Built only with `--features cluster`.

use crate::cluster::{Nats, listen, nats_server_bin, nats_state, node, wait_connected};
use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("nats url has a port")
}

/// A minimal NATS subscriber speaking the text protocol over TCP, so the
/// test sees exactly what the server delivers (headers included).
struct RawSub {
    r: BufReader<TcpStream>,
}

/// One delivered message: its header block (None for a plain MSG) and payload.
struct Delivered {
    headers: Option<String>,
    payload: Vec<u8>,
}

impl RawSub {
    fn new(port: u16, subject: &str) -> RawSub {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect nats");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("INFO");
        assert!(line.starts_with("INFO"), "{line}");
        write!(
            r.get_mut(),
            "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB {subject} 1\r\nPING\r\n"
        )
        .expect("subscribe");
        loop {
            line.clear();
            r.read_line(&mut line).expect("PONG");
            if line.starts_with("PONG") {
                return RawSub { r };
            }
        }
    }

    fn next(&mut self) -> Delivered {
        let mut line = String::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("a message arrives");
            if line.starts_with("PING") {
                self.r.get_mut().write_all(b"PONG\r\n").expect("pong");
                continue;
            }
            break;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (hdr_len, total) = match parts[0] {
            "MSG" => (0, parts[parts.len() - 1].parse::<usize>().expect("len")),
            "HMSG" => (
                parts[parts.len() - 2].parse::<usize>().expect("hdr len"),
                parts[parts.len() - 1].parse::<usize>().expect("len"),
            ),
            other => panic!("unexpected NATS line {other}: {line}"),
        };
        let mut body = vec![0u8; total + 2];
        self.r.read_exact(&mut body).expect("message body");
        body.truncate(total);
        let payload = body.split_off(hdr_len);
        Delivered {
            headers: (parts[0] == "HMSG").then(|| String::from_utf8_lossy(&body).into_owned()),
            payload,
        }
    }

    /// A JetStream API request over the same connection (its subscription
    /// must be the reply subject `_INBOX.test`); the reply as JSON.
    fn request(&mut self, subject: &str, body: &serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        write!(
            self.r.get_mut(),
            "PUB {subject} _INBOX.test {}\r\n{body}\r\n",
            body.len()
        )
        .expect("request");
        serde_json::from_slice(&self.next().payload).expect("a JSON reply")
    }
}

/// A connection for JetStream API requests.
fn js_api(nats: &Nats) -> RawSub {
    RawSub::new(port_of(&nats.url()), "_INBOX.test")
}

/// The stream's info (config and state), or the API's error reply.
fn stream_info(js: &mut RawSub, name: &str) -> serde_json::Value {
    js.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))
}

/// The value of a header in a header block.
fn header(block: &str, name: &str) -> u64 {
    block
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in {block}"))
}

/// `speedrelay subscribe SUBJECT --to 127.0.0.1:PORT`, ready (subscribed)
/// when returned; killed when dropped.
struct Subscriber(Child);

impl Subscriber {
    fn start(nats: &str, subject: &str, to: &UdpSocket) -> Subscriber {
        Self::start_with(nats, subject, to, &[])
    }

    /// With more arguments (`--replay`, `--count`).
    fn start_with(nats: &str, subject: &str, to: &UdpSocket, more: &[&str]) -> Subscriber {
        let port = to.local_addr().expect("bound").port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args(["subscribe", subject, "--to"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--nats", nats])
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("speedrelay subscribe starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" -> ") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(T)
            .expect("subscribe reports its subscription");
        Subscriber(child)
    }
}

impl Subscriber {
    /// Owns `child`: killed when dropped, even if the test fails.
    fn spawn(child: Child) -> Subscriber {
        Subscriber(child)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP receiver on loopback that waits up to 10 s per datagram.
fn sink() -> UdpSocket {
    let s = listen();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

fn stat(api: std::net::SocketAddr, name: &str, key: &str) -> u64 {
    get_channel(api, name)["stats"][key].as_u64().unwrap_or(0)
}

#[test]
fn records_reach_nats_byte_identical_and_subscribe_re_emits_them() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats_config(dir.path());
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let a = node(&config, &dir.path().join("a"), &nats.url(), "a");
    wait_connected(&a);

    let raw_sink = sink();
    let dec_sink = sink();
    let _raw = Subscriber::start(&nats.url(), "speedrelay.nc.raw", &raw_sink);
    let _dec = Subscriber::start(&nats.url(), "lab.nc.dec", &dec_sink);
    let mut dec_headers = RawSub::new(port_of(&nats.url()), "lab.nc.dec");
    let mut raw_plain = RawSub::new(port_of(&nats.url()), "speedrelay.nc.raw");

    // The UDP decimated stream is the reference for .dec.
    let udp_dec = sink();
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "nc",
        port,
        json!({
            "decimation": {"enabled": true, "factor": 2, "algorithm": "average"},
            "outputs": {"decimated": dest_json(&udp_dec), "nats": {}},
        }),
    );
    assert_eq!(status, 201, "{body}");
    let nats_settings = &get_channel(a.api, "nc")["config"]["outputs"]["nats"];
    assert_eq!(nats_settings["raw_headers"], false, "{nats_settings}");
    assert_eq!(
        nats_settings["subject_prefix"], "speedrelay",
        "{nats_settings}"
    );
    let records = example_records(40);
    send_all(port, &records);
    let raw = recv_n(&raw_sink, records.len());
    assert_eq!(raw, records, "subscribe re-emits .raw byte-identical");
    for r in &records {
        let m = raw_plain.next();
        assert_eq!(m.headers, None, ".raw carries no headers by default");
        assert_eq!(&m.payload, r);
    }
    assert_eq!(stat(a.api, "nc", "nats_dropped"), 0);
    // These went to speedrelay.nc.dec, which nobody here follows.
    recv_n(&udp_dec, records.len() / 2);

    // .dec on another prefix: headers on by default.
    let (status, body) = patch(
        a.api,
        "nc",
        json!({"outputs": {"nats": {"subject_prefix": "lab", "raw": false}}}),
    );
    assert_eq!(status, 200, "{body}");
    let more = example_range(100, 40);
    send_all(port, &more);
    let reference = recv_n(&udp_dec, 20);
    let dec = recv_n(&dec_sink, 20);
    assert_eq!(
        dec, reference,
        ".dec is the decimated stream, byte-identical"
    );
    for (i, r) in reference.iter().enumerate() {
        let m = dec_headers.next();
        let h = m.headers.expect(".dec carries headers by default");
        assert!(h.contains(&format!("Speedrelay-Seq: {}", i + 1)), "{h}");
        assert!(h.contains("Speedrelay-Fingerprint: "), "{h}");
        // Leases off: no take-over to tell, epoch 0.
        assert_eq!(header(&h, "Speedrelay-Epoch"), 0, "{h}");
        assert_eq!(&m.payload, r);
    }
    let metrics = http_get_text(a.api, "/metrics", &[]).2;
    assert!(
        metrics.contains("speedrelay_channel_nats_published_total{channel=\"nc\"} 80"),
        "{metrics}"
    );
    a.stop();
}

#[test]
fn nats_away_never_stops_the_udp_path_and_drops_are_counted() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats_config(dir.path());
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let a = node(&config, &dir.path().join("a"), &nats.url(), "a");
    wait_connected(&a);
    let out = listen();
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "away",
        port,
        json!({"outputs": {"full_rate": dest_json(&out), "nats": {"decimated": false}}}),
    );
    assert_eq!(status, 201, "{body}");
    let _ = nats.stop();
    wait_for("the node to see NATS gone", T, || {
        nats_state(a.api) != "connected"
    });

    // Bounded flood: until NATS drops are counted, at most 400,000 records
    // or T; the full-rate destination keeps receiving throughout.
    let records = example_records(64);
    let tx = sender();
    let deadline = Instant::now() + T;
    let mut sent = 0u64;
    let mut buf = [0u8; 2048];
    let mut received = 0u64;
    out.set_nonblocking(true).expect("nonblocking");
    while stat(a.api, "away", "nats_dropped") == 0 {
        assert!(
            Instant::now() < deadline && sent < 400_000,
            "no NATS drop counted"
        );
        for r in &records {
            let _ = tx.send_to(r, (Ipv4Addr::LOCALHOST, port));
        }
        sent += records.len() as u64;
        while out.recv(&mut buf).is_ok() {
            received += 1;
        }
    }
    out.set_nonblocking(false).expect("blocking");
    assert!(received > 0, "the full-rate destination got nothing");
    // Still relaying, promptly, with NATS away and its queue full.
    let (status, _) = http(a.api, "GET", "/api/v1/channels/away", &[], None);
    assert_eq!(status, 200);
    let t0 = Instant::now();
    let probe = example_range(9000, 1);
    let forwarded = stat(a.api, "away", "forwarded");
    send_all(port, &probe);
    wait_for("the record to be forwarded", T, || {
        stat(a.api, "away", "forwarded") > forwarded
    });
    assert!(t0.elapsed() < Duration::from_secs(5));
    let metrics = http_get_text(a.api, "/metrics", &[]).2;
    assert!(
        metrics.contains("speedrelay_channel_nats_dropped_total{channel=\"away\"}"),
        "{metrics}"
    );
    a.stop();
}

#[test]
fn bad_nats_settings_are_refused_and_change_nothing() {
    // A relay that is not in a cluster cannot publish.
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, _) = loopback_relay(dir.path(), 50);
    let port = free_port();
    let (status, body) = register_example(relay.api, "n0", port, json!({"outputs": {"nats": {}}}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "config.outputs.nats", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--nats"),
        "{body}"
    );
    let (status, _) = http(relay.api, "GET", "/api/v1/channels/n0", &[], None);
    assert_eq!(status, 404, "a refused channel was left registered");
    // Off (null) is fine anywhere.
    let (status, body) =
        register_example(relay.api, "n1", port, json!({"outputs": {"nats": null}}));
    assert_eq!(status, 201, "{body}");
    let (status, body) = patch(relay.api, "n1", json!({"outputs": {"nats": {}}}));
    assert_eq!(status, 400, "{body}");
    assert!(get_channel(relay.api, "n1")["config"]["outputs"]["nats"].is_null());
    relay.stop();

    let Some(bin) = nats_server_bin() else { return };
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let a = node(
        &nats_config(dir.path()),
        &dir.path().join("a"),
        &nats.url(),
        "a",
    );
    wait_connected(&a);
    for bad in [
        json!({"subject_prefix": "a..b"}),
        json!({"subject_prefix": "lab.*"}),
        json!({"subject_prefix": "a b"}),
        json!({"subject_prefix": ""}),
        json!({"raw": "yes"}),
        json!({"queue": 5}),
        json!(7),
        json!({"stream": {"max_age_s": 0}}),
        json!({"stream": {"max_age_s": 31_536_001}}),
        json!({"stream": {"max_age_s": -5}}),
        json!({"stream": {"max_age_s": "1h"}}),
        json!({"stream": {"max_bytes": 1000}}),
        json!({"stream": {"max_bytes": 1_099_511_627_777u64}}),
        json!({"stream": {"replicas": 3}}),
        json!({"stream": true}),
    ] {
        let (status, body) =
            register_example(a.api, "bad", free_port(), json!({"outputs": {"nats": bad}}));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["field"]
                .as_str()
                .unwrap_or_default()
                .starts_with("config.outputs.nats"),
            "{bad}: {body}"
        );
        let (status, _) = http(a.api, "GET", "/api/v1/channels/bad", &[], None);
        assert_eq!(status, 404, "{bad} left a channel");
    }
    // A refused stream setting made no stream.
    let info = stream_info(&mut js_api(&nats), "speedrelay_bad");
    assert_eq!(info["error"]["err_code"], 10059, "{info}");
    // A channel name with two dots in a row would make an empty token.
    let (status, body) =
        register_example(a.api, "x..y", free_port(), json!({"outputs": {"nats": {}}}));
    assert_eq!(status, 400, "{body}");
    a.stop();
}

#[test]
fn subscribe_refuses_bad_arguments_with_a_clear_error() {
    let free = free_port();
    let nowhere = format!("nats://127.0.0.1:{free}");
    for (args, expect) in [
        (vec!["s.raw", "--to", "127.0.0.1:0"], "port 0"),
        (vec!["s.raw", "--to", "0.0.0.0:9"], "not a destination"),
        (vec!["s.raw", "--to", "nohost"], "--to nohost"),
        (
            vec!["s.raw", "--to", "127.0.0.1:9", "--replay", "0"],
            "--replay",
        ),
        (
            vec!["s.raw", "--to", "127.0.0.1:9", "--replay", "last"],
            "`all` or whole seconds",
        ),
        (
            vec![
                "s.raw",
                "--to",
                "127.0.0.1:9",
                "--nats",
                "nats://u:p@127.0.0.1:4222",
            ],
            "credentials never go in a URL",
        ),
        (
            vec!["s.raw", "--to", "127.0.0.1:9", "--nats", &nowhere],
            &nowhere,
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
        cmd.arg("subscribe")
            .args(&args)
            .env_remove("SPEEDRELAY_NATS");
        let (ok, text) = run_bounded(&mut cmd, T);
        assert!(!ok, "{args:?} succeeded: {text}");
        assert!(text.contains(expect), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

#[test]
fn subscribe_re_emits_to_a_multicast_group() {
    if !private_netns_or_skip("multicast on loopback") {
        return;
    }
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let group = Ipv4Addr::new(239, 7, 7, 7);
    let member = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind member");
    member
        .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .expect("join group");
    member
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let to = format!("{group}:{}", member.local_addr().expect("bound").port());
    let mut child = Subscriber::spawn(
        Command::new(env!("CARGO_BIN_EXE_speedrelay"))
            .args([
                "subscribe",
                "lab.m.raw",
                "--to",
                &to,
                "--interface",
                "127.0.0.1",
            ])
            .args(["--nats", &nats.url(), "--count", "3"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("subscribe starts"),
    );
    let stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" -> ") || line.contains("datagrams sent") {
                let _ = tx.send(line);
            }
        }
    });
    let first = rx
        .recv_timeout(T)
        .expect("subscribe reports its subscription");
    assert!(first.contains(&to), "{first}");
    // Publish three messages with the text protocol.
    let mut p = TcpStream::connect((Ipv4Addr::LOCALHOST, port_of(&nats.url()))).expect("nats");
    let records = example_records(3);
    let mut out = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for r in &records {
        out.extend_from_slice(format!("PUB lab.m.raw {}\r\n", r.len()).as_bytes());
        out.extend_from_slice(r);
        out.extend_from_slice(b"\r\n");
    }
    p.write_all(&out).expect("publish");
    assert_eq!(recv_n(&member, 3), records);
    let done = rx.recv_timeout(T).expect("a summary after --count");
    assert!(done.contains("3 datagrams sent, 0 failed"), "{done}");
    let status = child.0.wait().expect("subscribe ends");
    assert!(status.success());
}

#[test]
fn the_epoch_header_tells_a_take_over_from_a_gap() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path(), 50);
    let yaml = config.join("relay.yaml");
    let mut text = std::fs::read_to_string(&yaml).expect("relay.yaml");
    text.push_str("cluster: {lease_ms: 1000}\n");
    std::fs::write(&yaml, text).expect("relay.yaml");
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let mut nodes = vec![
        ("a", node(&config, &dir.path().join("a"), &nats.url(), "a")),
        ("b", node(&config, &dir.path().join("b"), &nats.url(), "b")),
    ];
    for (_, n) in &nodes {
        wait_connected(n);
    }
    let port = free_port();
    let (status, body) = register_example(
        nodes[0].1.api,
        "ep",
        port,
        json!({"outputs": {"nats": {"raw_headers": true, "decimated": false}}}),
    );
    assert_eq!(status, 201, "{body}");
    let mut raw = RawSub::new(port_of(&nats.url()), "speedrelay.ep.raw");
    // The active node relays under the epoch it shows.
    let owner = |nodes: &[(&str, RelayProcess)]| {
        nodes.iter().find_map(|(name, n)| {
            let c = get_channel(n.api, "ep");
            (c["status"] == "active" && c["owner"] == *name)
                .then(|| (name.to_string(), c["epoch"].as_u64().unwrap_or(0)))
        })
    };
    let mut first = None;
    wait_for("a node to hold ep", T, || {
        first = owner(&nodes);
        first.is_some()
    });
    let (holder, epoch) = first.expect("held");
    assert!(epoch >= 1, "epoch {epoch}");
    send_all(port, &example_records(3));
    for seq in 1..=3 {
        let h = raw.next().headers.expect(".raw headers on");
        assert_eq!(header(&h, "Speedrelay-Epoch"), epoch, "{h}");
        assert_eq!(header(&h, "Speedrelay-Seq"), seq, "{h}");
    }
    // The holder stops; the other node takes over under a higher epoch and
    // its sequence starts again at 1: a take-over, not a gap.
    let i = nodes
        .iter()
        .position(|(n, _)| *n == holder)
        .expect("holder");
    nodes.remove(i).1.stop();
    let mut second = None;
    wait_for("the other node to take ep over", T, || {
        second = owner(&nodes).filter(|(_, e)| *e > epoch);
        second.is_some()
    });
    let (_, next) = second.expect("taken over");
    send_all(port, &example_range(50, 2));
    for seq in 1..=2 {
        let h = raw.next().headers.expect(".raw headers on");
        assert_eq!(header(&h, "Speedrelay-Epoch"), next, "{h}");
        assert_eq!(header(&h, "Speedrelay-Seq"), seq, "{h}");
    }
    nodes.remove(0).1.stop();
}

#[test]
fn a_stream_keeps_records_for_replay_within_its_limits() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats_config(dir.path());
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let a = node(&config, &dir.path().join("a"), &nats.url(), "a");
    wait_connected(&a);
    let mut js = js_api(&nats);
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "rp",
        port,
        json!({"outputs": {"nats": {"decimated": false,
            "stream": {"max_age_s": 600, "max_bytes": 1_048_576}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let mut info = json!(null);
    wait_for("the stream speedrelay_rp", T, || {
        info = stream_info(&mut js, "speedrelay_rp");
        info["config"].is_object()
    });
    let c = &info["config"];
    assert_eq!(c["max_age"], 600_000_000_000u64, "{info}");
    assert_eq!(c["max_bytes"], 1_048_576, "{info}");
    assert_eq!(
        c["subjects"],
        json!(["speedrelay.rp.raw", "speedrelay.rp.dec"]),
        "{info}"
    );
    let channel = get_channel(a.api, "rp");
    assert!(channel["error"].is_null(), "{channel}");

    let records = example_records(40);
    send_all(port, &records);
    wait_for("40 records in the stream", T, || {
        stream_info(&mut js, "speedrelay_rp")["state"]["messages"] == 40
    });
    // A subscriber that comes later gets them all, in order, byte-identical,
    // then goes on with new ones.
    let to = sink();
    let _replay = Subscriber::start_with(
        &nats.url(),
        "speedrelay.rp.raw",
        &to,
        &["--replay", "all", "--count", "50"],
    );
    assert_eq!(recv_n(&to, 40), records, "replayed");
    let more = example_range(1000, 10);
    send_all(port, &more);
    assert_eq!(recv_n(&to, 10), more, "live after the replay");
    let last_sent = Instant::now();

    // New limits update the stream; its records stay.
    let (status, body) = patch(
        a.api,
        "rp",
        json!({"outputs": {"nats": {"decimated": false,
            "stream": {"max_age_s": 1200, "max_bytes": 2_097_152}}}}),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the new limits on the stream", T, || {
        info = stream_info(&mut js, "speedrelay_rp");
        info["config"]["max_age"] == 1_200_000_000_000u64
    });
    assert_eq!(info["config"]["max_bytes"], 2_097_152, "{info}");
    assert_eq!(info["state"]["messages"], 50, "{info}");

    // --replay SECONDS: only what the stream got in the last SECONDS. The
    // 50 are made at least 6 s old (a wait on the clock: age is what is
    // tested), then 5 more are sent and replayed from the last 3 s.
    while last_sent.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let recent = example_range(2000, 5);
    send_all(port, &recent);
    wait_for("55 records in the stream", T, || {
        stream_info(&mut js, "speedrelay_rp")["state"]["messages"] == 55
    });
    let to = sink();
    let _recent = Subscriber::start_with(
        &nats.url(),
        "speedrelay.rp.raw",
        &to,
        &["--replay", "3", "--count", "5"],
    );
    assert_eq!(recv_n(&to, 5), recent, "only the last 3 s replayed");

    // No stream for a subject: a clear error.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["subscribe", "speedrelay.none.raw", "--to", "127.0.0.1:9"])
        .args(["--nats", &nats.url(), "--replay", "all"]);
    let (ok, text) = run_bounded(&mut cmd, T);
    assert!(
        !ok && text.contains("no JetStream stream captures"),
        "{text}"
    );
    a.stop();
}

#[test]
fn a_stream_that_cannot_be_made_is_shown_and_records_still_flow() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats_config(dir.path());
    let nats = Nats::start(&bin, free_port(), &dir.path().join("js"));
    let a = node(&config, &dir.path().join("a"), &nats.url(), "a");
    wait_connected(&a);
    // Someone else's stream under the name the channel's would take.
    let mut js = js_api(&nats);
    let made = js.request(
        "$JS.API.STREAM.CREATE.speedrelay_sc",
        &json!({"name": "speedrelay_sc", "subjects": ["other.sc"]}),
    );
    assert!(made["config"].is_object(), "{made}");
    let mut raw = RawSub::new(port_of(&nats.url()), "speedrelay.sc.raw");
    let port = free_port();
    let (status, body) = register_example(
        a.api,
        "sc",
        port,
        json!({"outputs": {"nats": {"stream": {}}}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("the stream error on the channel", T, || {
        get_channel(a.api, "sc")["error"]
            .as_str()
            .is_some_and(|e| e.contains("nats stream") && e.contains("other.sc"))
    });
    let channel = get_channel(a.api, "sc");
    assert_eq!(channel["status"], "active", "{channel}");
    assert!(
        channel["stats"]["nats_stream_errors"].as_u64() >= Some(1),
        "{channel}"
    );
    let metrics = http_get_text(a.api, "/metrics", &[]).2;
    assert!(
        metrics.contains("speedrelay_channel_nats_stream_errors_total{channel=\"sc\"}"),
        "{metrics}"
    );
    // Published all the same, and the other stream left as it was.
    let records = example_records(5);
    send_all(port, &records);
    for r in &records {
        assert_eq!(&raw.next().payload, r);
    }
    let info = stream_info(&mut js, "speedrelay_sc");
    assert_eq!(info["config"]["subjects"], json!(["other.sc"]), "{info}");
    a.stop();
}

/// `loopback_config` with leases off (`cluster.lease_ms: 0`): the one node
/// relays its channels at once and through a NATS outage, which is what
/// these tests are about; ownership is tested in `cluster`.
fn nats_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = loopback_config(dir, 50);
    let yaml = config.join("relay.yaml");
    let mut text = std::fs::read_to_string(&yaml).expect("relay.yaml");
    text.push_str("cluster: {lease_ms: 0}\n");
    std::fs::write(&yaml, text).expect("relay.yaml");
    config
}
