//! Shared helpers for the integration tests: records, sockets on loopback,
//! waiting for counters, reading archives back.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::{Record, Value};
use serde_json::Value as Json;
use speedrelay::channel::{BoundChannel, ChannelHandle, ChannelSpec};
use speedrelay::config::{ChannelSettings, Destination};

// Hosts in network namespaces and a three-host cluster (tests/it/cluster_net.rs).
#[cfg(feature = "cluster")]
pub mod netns;

pub const EXAMPLE_SCHEMA: &str = include_str!("../../../config/agents/example.avsc");

/// A record schema with one field of each numeric type and a string.
pub const NUMERIC_SCHEMA: &str = r#"{"type":"record","name":"sample","fields":[
    {"name":"label","type":"string"},
    {"name":"i","type":"int"},
    {"name":"l","type":"long"},
    {"name":"f","type":"float"},
    {"name":"d","type":"double"}]}"#;

pub fn schema(json: &str) -> Schema {
    Schema::parse_str(json).expect("test schema parses")
}

/// Record `n` of example.avsc; every field depends on `n` so order and
/// identity can be checked.
pub fn example_value(schema: &Schema, n: u64) -> Value {
    let mut r = Record::new(schema).expect("record schema");
    r.put(
        "time",
        Value::TimestampNanos(1_700_000_000_000_000_000 + n as i64),
    );
    r.put("message", Value::String(format!("record {n}")));
    r.put("counter", Value::Int(n as i32));
    r.put("sine_wave", Value::Double((n as f64).sin()));
    r.put("ramp", Value::Double(n as f64 * 0.5));
    r.put(
        "square_wave",
        Value::Double(if n.is_multiple_of(2) { 1.0 } else { -1.0 }),
    );
    r.put("noise", Value::Double(n as f64 * 1e-3));
    r.into()
}

pub fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("encodes")
}

/// Decodes one datum, asserting that it uses every byte.
pub fn decode(schema: &Schema, datum: &[u8]) -> Value {
    let mut slice = datum;
    let v = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut slice))
        .expect("datum decodes");
    assert!(slice.is_empty(), "datum has trailing bytes");
    v
}

pub fn example_records(count: u64) -> Vec<Vec<u8>> {
    let s = schema(EXAMPLE_SCHEMA);
    (0..count)
        .map(|n| encode(&s, example_value(&s, n)))
        .collect()
}

/// A UDP receiver on loopback with a large buffer and a read timeout, so a
/// missing datagram fails the test instead of hanging it.
pub fn receiver() -> (UdpSocket, Destination) {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
    let s2 = socket2::SockRef::from(&sock);
    let _ = s2.set_recv_buffer_size(8 << 20);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sock.local_addr().unwrap().port();
    (sock, Destination::new(Ipv4Addr::LOCALHOST.into(), port))
}

pub fn sender() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sender")
}

/// Settings with no outputs, archive flushing often, and decimation off
/// unless a test turns it on.
pub fn quiet_settings() -> ChannelSettings {
    let mut s = ChannelSettings::default();
    s.decimation.enabled = false;
    s.socket.bind = Ipv4Addr::LOCALHOST.into();
    s.socket.recv_buffer = 4 << 20;
    s.archive.flush_ms = 50;
    s
}

/// Binds and starts a channel on an ephemeral loopback port.
pub fn start(
    name: &str,
    schema_json: &str,
    settings: ChannelSettings,
    data_dir: &Path,
) -> (ChannelHandle, SocketAddr) {
    let spec = ChannelSpec {
        name: name.into(),
        port: 0,
        schema_json: schema_json.into(),
        settings,
    };
    let bound = BoundChannel::bind(spec, data_dir).expect("channel binds");
    let addr = bound.local_addr();
    (bound.spawn().expect("channel starts"), addr)
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// [`wait_until`] for blocking code: polls `cond` every 10 ms until it
/// holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Receives exactly `n` datagrams (blocking, with the socket's timeout).
pub fn recv_n(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    (0..n)
        .map(|i| {
            let len = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {i} of {n} did not arrive: {e}"));
            buf[..len].to_vec()
        })
        .collect()
}

/// Asserts nothing more arrives within a short grace period.
pub fn assert_silent(sock: &UdpSocket) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 65536];
    if let Ok(n) = sock.recv(&mut buf) {
        panic!("unexpected datagram of {n} bytes");
    }
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// The channel's archive files, oldest first.
pub fn archive_files(data_dir: &Path, channel: &str) -> Vec<PathBuf> {
    let dir = data_dir.join(channel);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "avro"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every record of every archive file, re-encoded as Avro binary so it can
/// be compared with what was sent; read with apache-avro's `Reader`.
pub fn archived_datums(data_dir: &Path, channel: &str, schema_json: &str) -> Vec<Vec<u8>> {
    let s = schema(schema_json);
    let mut out = Vec::new();
    for path in archive_files(data_dir, channel) {
        let file = std::fs::File::open(&path).unwrap();
        let reader = apache_avro::Reader::new(std::io::BufReader::new(file))
            .unwrap_or_else(|e| panic!("{} is not an Avro file: {e}", path.display()));
        for value in reader {
            let value = value.unwrap_or_else(|e| panic!("{}: bad record: {e}", path.display()));
            out.push(encode(&s, value));
        }
    }
    out
}

/// [`archived_datums`] for polling while the relay writes: None while a
/// file cannot be read whole yet (a file just created has no complete
/// header for a moment).
pub fn archived_datums_so_far(
    data_dir: &Path,
    channel: &str,
    schema_json: &str,
) -> Option<Vec<Vec<u8>>> {
    let s = schema(schema_json);
    let mut out = Vec::new();
    for path in archive_files(data_dir, channel) {
        let file = std::fs::File::open(&path).ok()?;
        let reader = apache_avro::Reader::new(std::io::BufReader::new(file)).ok()?;
        for value in reader {
            out.push(encode(&s, value.ok()?));
        }
    }
    Some(out)
}

/// True when this process runs in a network namespace that has only `lo`
/// (what tests/run.sh creates): the only place multicast may be sent.
pub fn in_private_netns() -> bool {
    match std::fs::read_to_string("/proc/net/dev") {
        Ok(s) => s.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")),
        Err(_) => false,
    }
}

/// Whether the suite runs under tests/run.sh, where every capability
/// (namespace, fastavro) must be present: a missing one is then a failure,
/// not a skip.
pub fn under_test_script() -> bool {
    std::env::var_os("SPEEDRELAY_TEST_NETNS").is_some()
}

/// A UDP port nothing is bound to, and no TCP listener either, never the
/// same twice in this process (as long as the range lasts). Taken below the kernel's ephemeral range
/// (32768-60999 in a fresh namespace): a port from that range, released
/// and handed to a relay a moment later, can meanwhile become the source
/// port of another test's HTTP connection, and the relay's listen then
/// fails with "address in use".
pub fn free_port() -> u16 {
    const FIRST: u16 = 27_100; // above SpeedData's default range 26000-27000
    const LAST: u16 = 32_700;
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(FIRST);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    while *next <= LAST {
        let port = *next;
        *next += 1;
        // A TCP listener on the same number (the API under test) would make
        // the registration a 400 for "the API's own port".
        let udp_free = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok();
        let tcp_free = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok();
        if udp_free && tcp_free {
            return port;
        }
    }
    // Past the range (not reached by today's suite): the kernel's choice.
    loop {
        let port = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .expect("bind a UDP socket")
            .local_addr()
            .expect("its address")
            .port();
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// One HTTP/1.1 exchange over a fresh connection: the status and the body
/// parsed as JSON (a non-JSON body comes back as a JSON string).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> (u16, Json) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if let (Some(b), false) = (body, chunked) {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        if chunked {
            for c in b.chunks(64 * 1024) {
                let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
                frame.extend_from_slice(c);
                frame.extend_from_slice(b"\r\n");
                if s.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        } else {
            let _ = s.write_all(b);
        }
    }
    let mut buf = Vec::new();
    // Data read before a reset is kept in `buf`.
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {text:?}"));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    if status != 204 {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{method} {path}: not JSON: {head}"
        );
    }
    let json = serde_json::from_str(body).unwrap_or(Json::String(body.to_string()));
    (status, json)
}

/// One HTTP/1.1 GET over a fresh connection, any content type: the status,
/// the response head (lower-cased) and the body as text.
pub fn http_get_text(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to GET {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The real `speedrelay serve` binary, started by [`spawn_relay`]: its API
/// address (from the start-up log line) and everything it wrote to stderr.
/// Dropping it kills the process, so no relay outlives a failed test.
pub struct RelayProcess {
    pub child: std::process::Child,
    pub api: SocketAddr,
    /// Every line of stderr so far, start-up included.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RelayProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().expect("relay exits")
    }

    /// SIGTERM, asserting a clean exit.
    pub fn stop(self) {
        assert!(self.terminate().success());
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Open file descriptors of the relay process; panics when /proc
    /// cannot tell (a leak check must not pass on a count of 0).
    pub fn fd_count(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
            .count()
    }

    /// Resident set size in KiB; panics when /proc cannot tell.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}"))
    }

    /// Threads of the relay process; panics when /proc cannot tell.
    pub fn thread_count(&self) -> usize {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
            .count()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `speedrelay serve --config CONFIG --data-dir DATA --api
/// 127.0.0.1:0` with `env` added, and returns once it logs that it runs.
/// Panics (with its stderr) if it exits first.
pub fn spawn_relay(config: &Path, data: &Path, env: &[(&str, &str)]) -> RelayProcess {
    spawn_relay_bin(
        Path::new(env!("CARGO_BIN_EXE_speedrelay")),
        config,
        data,
        env,
    )
}

/// [`spawn_relay`] with another build of the binary (a release build, for
/// figures).
pub fn spawn_relay_bin(
    bin: &Path,
    config: &Path,
    data: &Path,
    env: &[(&str, &str)],
) -> RelayProcess {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_relay_command(cmd)
}

/// Starts a prepared `speedrelay serve` command (stderr is captured) and
/// returns once it logs that it runs.
pub fn spawn_relay_command(mut cmd: std::process::Command) -> RelayProcess {
    use std::io::BufRead;
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stderr);
        let mut line = String::new();
        let mut announced = false;
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&line);
            if !announced && line.contains("speedrelay running") {
                let api = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("api="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                let _ = tx.send(api);
                announced = true;
            }
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(api)) => RelayProcess { child, api, log },
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let text = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            panic!("relay did not start:\n{text}");
        }
    }
}

/// A config directory with no channels, channels bound to loopback,
/// decimation off, archive blocks flushed every `flush_ms`, and
/// example.avsc beside relay.yaml.
pub fn loopback_config(dir: &Path, flush_ms: u32) -> PathBuf {
    example_config(
        dir,
        &format!(
            "channels: []\nsocket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: {flush_ms}}}\n"
        ),
    )
}

/// Sends raw bytes as one request and returns the status of the answer
/// (None when the connection closed without one) and the whole answer.
pub fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Option<u16>, String) {
    let mut s = TcpStream::connect_timeout(&addr, timeout).expect("connect to the API");
    s.set_read_timeout(Some(timeout)).unwrap();
    // The server may answer and close before taking it all.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (status, text)
}

/// POST /api/v1/channels for example.avsc given inline; returns the status.
pub fn register_example(api: SocketAddr, name: &str, port: u16, config: Json) -> (u16, Json) {
    let schema: Json = serde_json::from_str(EXAMPLE_SCHEMA).expect("example schema is JSON");
    let body = serde_json::json!({"name": name, "port": port, "schema": schema, "config": config});
    post_json(
        api,
        "/api/v1/channels",
        &serde_json::to_vec(&body).expect("serialises"),
    )
}

/// One POST of `body` (sent as is) with Content-Type application/json,
/// through [`http`]: the status and the answer.
pub fn post_json(api: SocketAddr, path: &str, body: &[u8]) -> (u16, Json) {
    http(
        api,
        "POST",
        path,
        &[("Content-Type".into(), "application/json".into())],
        Some(body),
    )
}

/// PATCH /api/v1/channels/NAME with `body`: the status and the answer.
pub fn patch(api: SocketAddr, name: &str, body: Json) -> (u16, Json) {
    http(
        api,
        "PATCH",
        &format!("/api/v1/channels/{name}"),
        &[("Content-Type".into(), "application/json".into())],
        Some(body.to_string().as_bytes()),
    )
}

/// GET /api/v1/channels/NAME, asserting a 200: the channel as JSON.
pub fn get_channel(api: SocketAddr, name: &str) -> Json {
    let (status, body) = http(api, "GET", &format!("/api/v1/channels/{name}"), &[], None);
    assert_eq!(status, 200, "{body}");
    body
}

/// A file of the repository, e.g. `config/agents/example.avsc`.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A config directory with no channels, no decimation and quick archive
/// flushing (50 ms), for tests that register their channels themselves.
pub fn quick_empty_config(dir: &Path) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("relay.yaml"),
        "channels: []\ndecimation: {enabled: false}\narchive: {flush_ms: 50}\n",
    )
    .unwrap();
    config
}

/// Records `from..from + n` of example.avsc (each carries its number).
pub fn example_range(from: u64, n: u64) -> Vec<Vec<u8>> {
    let s = schema(EXAMPLE_SCHEMA);
    (from..from + n)
        .map(|i| encode(&s, example_value(&s, i)))
        .collect()
}

/// `sock`'s loopback address as a destination in the API's JSON.
pub fn dest_json(sock: &UdpSocket) -> Json {
    let port = sock.local_addr().expect("bound socket").port();
    serde_json::json!({"address": "127.0.0.1", "port": port})
}

/// Sends `records` to a loopback `port` from a fresh socket, all at once.
pub fn send_all(port: u16, records: &[Vec<u8>]) {
    let tx = sender();
    for r in records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port))
            .expect("send on loopback");
    }
}

/// [`spawn_relay`] on [`loopback_config`] (archive blocks flushed every
/// `flush_ms`) in `dir`, with its data directory `dir/data`: the relay and
/// that directory.
pub fn loopback_relay(dir: &Path, flush_ms: u32) -> (RelayProcess, PathBuf) {
    let data = dir.join("data");
    let relay = spawn_relay(&loopback_config(dir, flush_ms), &data, &[]);
    (relay, data)
}

/// A config directory `dir/config` holding example.avsc and `relay_yaml`
/// as relay.yaml.
pub fn example_config(dir: &Path, relay_yaml: &str) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join("example.avsc"), EXAMPLE_SCHEMA).expect("schema");
    std::fs::write(config.join("relay.yaml"), relay_yaml).expect("relay.yaml");
    config
}

/// Whether this test may change routes or send multicast (it runs in a
/// private network namespace); outside one, a skip that says `why`, or a
/// failure under tests/run.sh, which always gives one.
pub fn private_netns_or_skip(why: &str) -> bool {
    if in_private_netns() {
        return true;
    }
    assert!(
        !under_test_script(),
        "tests/run.sh gives a private network namespace"
    );
    eprintln!("skipped: {why}");
    false
}

/// The Python tests/run.sh sets up (SPEEDRELAY_PYTHON, with fastavro,
/// prometheus_client and selenium); `None` (a skip that says `what` is
/// skipped) when it is unset outside tests/run.sh, a failure under it.
pub fn python_or_skip(what: &str) -> Option<PathBuf> {
    let python = std::env::var_os("SPEEDRELAY_PYTHON").map(PathBuf::from);
    if python.is_none() {
        assert!(!under_test_script(), "tests/run.sh sets SPEEDRELAY_PYTHON");
        eprintln!("skipped {what}: SPEEDRELAY_PYTHON not set (tests/run.sh sets it)");
    }
    python
}

/// Runs `python -c script ARGS` with `stdin` as its input and asserts that
/// it succeeds (failing with `what` and its stderr): its stdout.
pub fn run_python<A: AsRef<std::ffi::OsStr>>(
    python: &Path,
    script: &str,
    args: &[A],
    stdin: &[u8],
    what: &str,
) -> String {
    use std::process::Stdio;
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("python takes its input");
    drop(input);
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python, chromium and chromedriver for the browser scripts; `None`
/// (skip) outside tests/run.sh when one is missing, a failure under it.
pub fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let python = std::env::var_os("SPEEDRELAY_PYTHON").map(PathBuf::from);
    let chromium = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    match python {
        Some(p) if chromium.exists() && driver.exists() => Some((p, chromium, driver)),
        _ => {
            assert!(
                !under_test_script(),
                "tests/run.sh installs chromium, chromedriver and selenium and sets SPEEDRELAY_PYTHON"
            );
            eprintln!(
                "skipped: needs SPEEDRELAY_PYTHON with selenium, /usr/bin/chromium and /usr/bin/chromedriver (tests/run.sh)"
            );
            None
        }
    }
}

/// Runs the binary with `args` and `env` added to completion, its stdout
/// and stderr captured; a run still going after 30 s (a `serve` that
/// started after all) is killed and fails the test.
pub fn run_to_end<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[A],
    env: &[(&str, &str)],
) -> std::process::Output {
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait on the binary").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("killed binary reaped");
            panic!(
                "speedrelay {args:?} did not exit; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("binary output")
}

/// A finished command's stdout as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A finished command's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `speedrelay serve --config CONFIG --data-dir DATA --api 127.0.0.1:0
/// EXTRA` with `env` added, run to its end through [`run_to_end`]: for a
/// start that must be refused.
pub fn serve_to_end(
    config: &Path,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--api".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_to_end(&args, env)
}

/// Runs `cmd`, killing it after `limit`; whether it succeeded and its
/// stdout and stderr.
pub fn run_bounded(cmd: &mut std::process::Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}{}",
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
        if status.is_none() {
            "\n(killed: took too long)"
        } else {
            ""
        }
    );
    (status.is_some_and(|s| s.success()), text)
}
