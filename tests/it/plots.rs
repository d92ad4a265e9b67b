//! Live plots, served by the real binary: the per-second history endpoint
//! and its bounds, the live record stream (Server-Sent Events) with its
//! rate limit, viewer caps, and the dropping of viewers that do not read
//! (bounded memory, counted in /metrics); the web page's sparkline and
//! stripchart in headless chromium (tests/plots_browser.py); and
//! `speedrelay top` driven in tmux.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::*;
use serde_json::{Value as Json, json};

/// A ramp: `time` in seconds and `value` = 2 × `time` volts.
const RAMP_SCHEMA: &str = r#"{"type":"record","name":"ramp","fields":[
    {"name":"time","type":"double","unit":"s","doc":"seconds since the start"},
    {"name":"value","type":"double","unit":"V","doc":"twice the time"},
    {"name":"note","type":"string"}]}"#;

fn ramp_record(schema: &apache_avro::Schema, i: u64) -> Vec<u8> {
    let t = i as f64 * 0.01;
    encode(
        schema,
        Value::Record(vec![
            ("time".into(), Value::Double(t)),
            ("value".into(), Value::Double(2.0 * t)),
            ("note".into(), Value::String(format!("n{i}"))),
        ]),
    )
}

/// A record schema of `n` doubles: wide events, to fill a viewer's
/// buffers quickly.
fn wide_schema(n: usize) -> String {
    let fields: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"name":"f{i}","type":"double"}}"#))
        .collect();
    format!(
        r#"{{"type":"record","name":"wide","fields":[{}]}}"#,
        fields.join(",")
    )
}

fn register(api: SocketAddr, name: &str, port: u16, schema_json: &str, config: Json) {
    let schema: Json = serde_json::from_str(schema_json).unwrap();
    let body = json!({"name": name, "port": port, "schema": schema, "config": config});
    let (status, answer) = post_json(api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 201, "{answer}");
}

fn no_outputs() -> Json {
    json!({"outputs": {"full_rate": [], "decimated": []}, "archive": {"enabled": false}})
}

/// One metric's value from /metrics.
fn metric(api: SocketAddr, name: &str) -> f64 {
    let (status, _, text) = http_get_text(api, "/metrics", &[]);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// An open live stream, read line by line (HTTP/1.0, so the body is the
/// rest of the connection, not chunked).
struct Viewer {
    reader: BufReader<TcpStream>,
}

impl Viewer {
    /// Connects with a small receive buffer when `small`, so one that does
    /// not read fills up soon. Returns the status and the viewer.
    fn open(api: SocketAddr, name: &str, small: bool) -> (u16, Viewer) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if small {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.connect(&api.into()).expect("connect");
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /api/v1/channels/{name}/live HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        if status == 200 {
            assert!(head.contains("content-type: text/event-stream"), "{head}");
        }
        (status, Viewer { reader })
    }

    /// The next event: its name (`message` by default) and data as JSON.
    fn event(&mut self) -> Option<(String, Json)> {
        let mut name = "message".to_string();
        let mut data = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                return Some((name, serde_json::from_str(&data).expect("event is JSON")));
            }
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// The rest of an error answer's body.
    fn body(mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

/// Sends `count` records made by `make` to `port` at about `per_second`.
fn send_paced(port: u16, count: u64, per_second: u64, make: impl Fn(u64) -> Vec<u8>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / per_second as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.send_to(&make(i), ("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn history_counts_each_second_and_refuses_bad_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let port = free_port();
    register(api, "ramp", port, RAMP_SCHEMA, no_outputs());
    let schema = schema(RAMP_SCHEMA);
    send_paced(port, 300, 1000, |i| ramp_record(&schema, i));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..7 {
        sock.send_to(b"\x01", ("127.0.0.1", port)).unwrap();
    }
    let mut last = Json::Null;
    wait_for(
        "history holds the 300 records and 7 invalid",
        Duration::from_secs(15),
        || {
            let (status, h) = http(api, "GET", "/api/v1/channels/ramp/history", &[], None);
            assert_eq!(status, 200, "{h}");
            let sum = |k: &str| -> u64 {
                h[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .sum()
            };
            let done = sum("records") == 300 && sum("invalid") == 7;
            last = h;
            done
        },
    );
    assert_eq!(last["name"], "ramp");
    assert_eq!(last["interval_ms"], 1000);
    let n = last["seconds"].as_u64().unwrap() as usize;
    for key in ["records", "invalid", "kernel_drops", "archive_bytes"] {
        assert_eq!(last[key].as_array().unwrap().len(), n, "{key}");
    }
    assert!(last["end_ms"].as_u64().unwrap() > 1_600_000_000_000);
    // A window smaller than what is kept: the newest seconds only.
    let (status, h) = http(
        api,
        "GET",
        "/api/v1/channels/ramp/history?seconds=1",
        &[],
        None,
    );
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["records"].as_array().unwrap().len(), 1);
    let (status, h) = http(
        api,
        "GET",
        "/api/v1/channels/ramp/history?seconds=600",
        &[],
        None,
    );
    assert_eq!(status, 200, "{h}");
    // Bad bounds: 400 naming the parameter; nothing else changes.
    for bad in ["0", "601", "-1", "abc", "1.5", "", "99999999999999999999"] {
        let (status, e) = http(
            api,
            "GET",
            &format!("/api/v1/channels/ramp/history?seconds={bad}"),
            &[],
            None,
        );
        assert_eq!(status, 400, "seconds={bad}: {e}");
        assert_eq!(e["field"], "seconds", "{e}");
        assert!(e["error"].as_str().unwrap().contains("1 to 600"), "{e}");
    }
    let (status, e) = http(api, "GET", "/api/v1/channels/nope/history", &[], None);
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("Channel not found"));
    let (status, _) = http(
        api,
        "POST",
        "/api/v1/channels/ramp/history",
        &[],
        Some(b"{}"),
    );
    assert_eq!(status, 405);
    // Stays at 10 minutes however long the relay runs: checked in the
    // unit tests of src/history.rs (600 samples, 16 bytes each).
    relay.stop();
}

#[test]
fn the_live_stream_describes_the_fields_then_sends_decoded_records_at_most_50_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let port = free_port();
    register(api, "ramp", port, RAMP_SCHEMA, no_outputs());
    let (status, body) = http(api, "GET", "/api/v1/channels/nope/live", &[], None);
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(api, "POST", "/api/v1/channels/ramp/live", &[], Some(b"{}"));
    assert_eq!(status, 405);

    let (status, mut viewer) = Viewer::open(api, "ramp", false);
    assert_eq!(status, 200);
    let (name, meta) = viewer.event().expect("meta event");
    assert_eq!(name, "meta");
    assert_eq!(meta["channel"], "ramp");
    assert_eq!(meta["source"], "sampled");
    assert_eq!(meta["max_rate"], 50);
    assert_eq!(meta["time"], 0, "the time field is the x-axis: {meta}");
    assert_eq!(
        meta["fields"],
        json!([
            {"name": "time", "type": "double", "unit": "s", "doc": "seconds since the start"},
            {"name": "value", "type": "double", "unit": "V", "doc": "twice the time"},
        ])
    );
    assert_eq!(metric(api, "speedrelay_live_viewers"), 1.0);

    // 1,000 records over 2 s: at most 50 a second reach the viewer, and
    // each is a record that was sent.
    let schema = schema(RAMP_SCHEMA);
    let sender =
        std::thread::spawn(move || send_paced(port, 1000, 500, |i| ramp_record(&schema, i)));
    let started = Instant::now();
    let mut events = Vec::new();
    while events.len() < 200 {
        let Some((name, data)) = viewer.event() else {
            break;
        };
        assert_eq!(name, "message");
        let t = data["values"][0].as_f64().unwrap();
        events.push((Instant::now(), data.clone()));
        // The last records sent: one of them is sampled.
        if t >= 9.8 {
            break;
        }
    }
    sender.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(events.len() >= 20, "only {} events", events.len());
    for (_, e) in &events {
        let v = e["values"].as_array().unwrap();
        let (t, value) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        assert!((value - 2.0 * t).abs() < 1e-9, "{e}");
        assert!(e["at"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let rate = events.len() as f64 / elapsed;
    assert!(rate <= 55.0, "{} events in {elapsed:.2} s", events.len());
    // An open stream does not hold up a stop (the drain limit is 5 s).
    let stopping = Instant::now();
    relay.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn viewers_that_do_not_read_are_dropped_and_counted_with_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    // ~6 KB of JSON per event, 300 KB/s per viewer: one that does not
    // read fills its socket and the relay's buffers within seconds.
    let wide = wide_schema(1000);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        register(api, &format!("w{i}"), *port, &wide, no_outputs());
    }
    let rss_before = relay.rss_kib();
    // 20 viewers that never read past the answer's head (7 + 7 + 6), and
    // one on w0 that reads everything.
    let mut stuck = Vec::new();
    for (i, n) in [7, 7, 6].into_iter().enumerate() {
        for _ in 0..n {
            let (status, v) = Viewer::open(api, &format!("w{i}"), true);
            assert_eq!(status, 200);
            stuck.push(v);
        }
    }
    let (status, mut reader) = Viewer::open(api, "w0", false);
    assert_eq!(status, 200);
    // The caps: 8 per channel.
    let (status, refused) = Viewer::open(api, "w0", false);
    assert_eq!(status, 503);
    let refused = refused.body();
    assert!(refused.contains("already has 8 live viewers"), "{refused}");
    assert_eq!(metric(api, "speedrelay_live_viewers"), 21.0);

    // Wide records to every channel until all 20 are dropped (bounded:
    // 60 s at most; a few seconds on a quiet machine).
    let schema = schema(&wide);
    let record = encode(
        &schema,
        Value::Record(
            (0..1000)
                .map(|i| (format!("f{i}"), Value::Double(i as f64 + 0.5)))
                .collect(),
        ),
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rss_peak = 0;
    let mut received = 0u64;
    reader.reader.get_ref().set_nonblocking(true).unwrap();
    let mut drain = vec![0u8; 1 << 16];
    loop {
        let dropped = metric(api, "speedrelay_live_viewers_dropped_total");
        if dropped >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {dropped} of 20 viewers dropped in 60 s"
        );
        for _ in 0..20 {
            for port in &ports {
                sock.send_to(&record, ("127.0.0.1", *port)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rss_peak = rss_peak.max(relay.rss_kib());
        // The reading viewer keeps up.
        while let Ok(n) = reader.reader.get_mut().read(&mut drain) {
            if n == 0 {
                break;
            }
            received += n as u64;
        }
    }
    assert_eq!(metric(api, "speedrelay_live_viewers_dropped_total"), 20.0);
    assert_eq!(
        metric(api, "speedrelay_live_viewers"),
        1.0,
        "the reader stays"
    );
    assert!(received > 0);
    // Their connections are closed: each reads to an end (whatever was
    // buffered, then EOF or a reset).
    for mut v in stuck {
        v.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = Vec::new();
        let r = v.reader.read_to_end(&mut sink);
        assert!(
            r.is_ok()
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "rss: before {rss_before} KiB, peak with 21 viewers {rss_peak} KiB: {} KiB per viewer",
        grown / 21
    );
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB with 21 viewers");
    // A freed slot can be taken again.
    let (status, _) = Viewer::open(api, "w1", false);
    assert_eq!(status, 200);
    relay.stop();
}

/// Where the screenshots go: target/screenshots.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("screenshots")
}

#[test]
fn the_page_plots_the_ramp_that_was_sent_and_the_sparkline_shows_the_pause() {
    let Some((python, chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let port = free_port();
    register(api, "ramp", port, RAMP_SCHEMA, no_outputs());
    // The ramp at 200 records/s: 4 s, a 4 s pause, then on until the
    // browser is done (90 s at most).
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let sender = std::thread::spawn(move || {
        let schema = schema(RAMP_SCHEMA);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
            let s = start.elapsed().as_secs_f64();
            if !(4.0..8.0).contains(&s) {
                sock.send_to(&ramp_record(&schema, i), ("127.0.0.1", port))
                    .unwrap();
                i += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        i
    });
    let artifacts = screenshots();
    let args = json!({
        "url": format!("http://{api}/"),
        "channel": "ramp",
        "chromium": chromium,
        "chromedriver": chromedriver,
        "artifacts": artifacts,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plots_browser.py");
    let (ok, output) = run_bounded(
        Command::new(python).arg(script).arg(args.to_string()),
        Duration::from_secs(150),
    );
    done.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    println!("{output}");
    assert!(ok, "the browser checks failed:\n{output}");
    assert!(sent > 0);
    for shot in [
        "plots-table.png",
        "plots-stripchart.png",
        "plots-stripchart-dark.png",
    ] {
        let path = artifacts.join(shot);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
        println!("screenshot: {}", path.display());
    }
    relay.stop();
}

/// A tmux server of this test's own (its socket in `dir`), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn screen(&self, session: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", session])
    }

    fn wait_screen(&self, session: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen(session);
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn top_shows_the_channels_in_tmux_and_quits_cleanly_on_q_and_ctrl_c() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(!under_test_script(), "tests/run.sh installs tmux");
        eprintln!("skipped: needs tmux");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let (alpha, beta) = (free_port(), free_port());
    register(api, "alpha", alpha, RAMP_SCHEMA, no_outputs());
    register(api, "beta", beta, RAMP_SCHEMA, no_outputs());
    let schema = schema(RAMP_SCHEMA);
    send_paced(alpha, 50, 1000, |i| ramp_record(&schema, i));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"\x01", ("127.0.0.1", alpha)).unwrap();

    let tmux = Tmux {
        socket: dir.path().join("tmux.sock"),
    };
    let bin = env!("CARGO_BIN_EXE_speedrelay");
    // After top exits: its status, and whether the terminal is back in
    // cooked mode (canonical input, echo).
    let shell = |keys: &str| {
        format!(
            "{bin} top --url http://{api} --interval 0.3; echo TOP-EXITED-$?-{keys}; \
             stty -a | grep -q ' icanon' && stty -a | grep -q ' echo ' && echo COOKED; sleep 60"
        )
    };
    for (session, key) in [("q", "q"), ("ctrlc", "C-c")] {
        tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "150",
            "-y",
            "20",
            &shell(session),
        ]);
        let screen = tmux.wait_screen(session, "both channels with their figures", |s| {
            s.contains("alpha")
                && s.contains("beta")
                && s.contains("speedrelay top")
                && s.contains("50 ")
        });
        assert!(screen.contains("active"), "{screen}");
        assert!(screen.contains("LAST MINUTE"), "{screen}");
        assert!(screen.contains("2 channels"), "{screen}");
        let alpha_line = screen.lines().find(|l| l.contains("alpha")).unwrap();
        assert!(
            alpha_line.contains(" 50 ") && alpha_line.contains(" 1 "),
            "records and invalid: {alpha_line}"
        );
        tmux.cmd(&["send-keys", "-t", session, key]);
        let after = tmux.wait_screen(session, "top to exit", |s| s.contains("COOKED"));
        assert!(
            after.contains(&format!("TOP-EXITED-0-{session}")),
            "{after}"
        );
        assert!(
            !after.contains("LAST MINUTE"),
            "the alternate screen is left: {after}"
        );
    }

    // Bad input: a clear error, no terminal left in raw mode.
    let out = Command::new(bin)
        .args(["top", "--url", "ftp://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http:// is supported"));
    let out = Command::new(bin)
        .args(["top", "--interval", "0.01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0.2 to 60"));
    // No terminal at all (stdout to a pipe): refused with the reason.
    let out = Command::new(bin)
        .args(["top", "--url", &format!("http://{api}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a terminal"),
        "{out:?}"
    );
    relay.stop();
}

#[test]
fn history_and_live_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 100);
    let relay = spawn_relay(
        &config,
        &dir.path().join("data"),
        &[("SPEEDRELAY_API_TOKEN", "plot-token")],
    );
    let api = relay.api;
    let auth = vec![("Authorization".to_string(), "Bearer plot-token".to_string())];
    let schema: Json = serde_json::from_str(RAMP_SCHEMA).unwrap();
    let body =
        json!({"name": "ramp", "port": free_port(), "schema": schema, "config": no_outputs()});
    let mut headers = auth.clone();
    headers.push(("Content-Type".into(), "application/json".into()));
    let (status, answer) = http(
        api,
        "POST",
        "/api/v1/channels",
        &headers,
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 201, "{answer}");
    for path in [
        "/api/v1/channels/ramp/history",
        "/api/v1/channels/ramp/live",
    ] {
        let (status, e) = http(api, "GET", path, &[], None);
        assert_eq!(status, 401, "{path}: {e}");
        let wrong = vec![("Authorization".to_string(), "Bearer nope".to_string())];
        let (status, _) = http(api, "GET", path, &wrong, None);
        assert_eq!(status, 401, "{path}");
    }
    let (status, h) = http(api, "GET", "/api/v1/channels/ramp/history", &auth, None);
    assert_eq!(status, 200, "{h}");
    // With the token, the stream opens (its first event read raw).
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/channels/ramp/live HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer plot-token\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("event: meta") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    relay.stop();
}
