//! Separate hosts on one network, inside the test's namespace: each host
//! is a child network namespace with one veth pair to a bridge in a "lab"
//! namespace, which has the subnet's address .254 and which the test's
//! thread enters (its HTTP requests and sockets go over the bridge; the
//! test's namespace keeps only `lo`). A namespace is held open by a `cat`
//! that ends when its stdin closes, so nothing outlives the test process.
//! Programs run in a host through `setns(2)` before `exec`, and sockets
//! are opened in a host by a thread that enters it: no tool beyond `ip`
//! and `unshare` is needed.
//!
//! On top: a three-host cluster (one clustered nats-server and one relay
//! per host, a key-value bucket with three replicas) and paced record
//! feeds with a destination per host, for tests/it/cluster_net.rs and
//! benches/cluster.rs. Everything is torn down on drop: the processes are
//! killed, the holders exit and their namespaces (bridge and veths with
//! them) vanish. Needs root in a namespace of its own (tests/run.sh's
//! `unshare --user --map-root-user --net`).

use super::*;

use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const T: Duration = Duration::from_secs(30);

/// The API port of every relay: each host has its own port space.
pub const API_PORT: u16 = 8080;
/// nats-server's client and route ports on every host.
pub const NATS_PORT: u16 = 4222;
pub const ROUTE_PORT: u16 = 6222;
/// The key-value bucket the relays use (their default).
pub const BUCKET: &str = "speedrelay";

/// One topology at a time in a process: three hosts each with a JetStream
/// server and a relay are a lot for two cores, and the timing checks
/// (a lease and a second) must not measure another test's start-up.
static SERIAL: Mutex<()> = Mutex::new(());
/// The subnet of the next network, 10.77.N.0/24, and its interface names.
static NEXT: AtomicU8 = AtomicU8::new(0);

/// Runs `ip ARGS` (in the current namespace, or in `ns`), asserting success.
fn ip(ns: Option<RawFd>, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    if let Some(fd) = ns {
        enter_before_exec(&mut cmd, fd);
    }
    let out = cmd.output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// setns(2) into the network namespace `fd`, for the calling thread only.
fn set_net_namespace(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: a plain system call on a namespace fd; it changes nothing
    // but the calling thread's network namespace.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `cmd` enter the network namespace `fd` between fork and exec.
fn enter_before_exec(cmd: &mut Command, fd: RawFd) {
    // SAFETY: setns(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || set_net_namespace(fd));
    }
}

/// Whether this test can build a network (root in its own namespace, as
/// tests/run.sh gives); otherwise a skip, or a failure under tests/run.sh.
pub fn can_build_networks() -> bool {
    private_netns_or_skip("building a network of namespaces needs tests/run.sh's namespace")
}

/// A new network namespace held open by a `cat` (it ends when its stdin
/// closes, so even a test that dies leaves no holder behind): the holder
/// and the namespace's file.
fn new_namespace() -> (Child, File) {
    let holder = Command::new("unshare")
        .args(["--net", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare starts");
    let pid = holder.id();
    // `unshare` enters the new namespace, then becomes `cat`: until then
    // its namespace is still ours.
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    wait_for("the new namespace", T, || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != ours)
    });
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("the new netns");
    (holder, ns)
}

/// Moves the calling thread into the network namespace `fd`.
fn enter(fd: RawFd) {
    if let Err(e) = set_net_namespace(fd) {
        panic!("setns: {e}");
    }
}

/// The network: a "lab" namespace with the bridge at 10.77.N.254, which
/// the calling thread (the test) enters until the network is dropped, so
/// its sockets and HTTP requests go over the bridge. The test's own
/// namespace keeps only `lo`: the other tests of the process still see the
/// private namespace they check for.
pub struct Net {
    index: u8,
    bridge: String,
    lab: File,
    lab_holder: Child,
    /// The thread's namespace before, restored on drop.
    before: File,
    _serial: MutexGuard<'static, ()>,
}

impl Net {
    pub fn new() -> Net {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        let before = File::open("/proc/thread-self/ns/net").expect("own netns");
        let (lab_holder, lab) = new_namespace();
        let bridge = "br0".to_string();
        let fd = Some(lab.as_raw_fd());
        ip(fd, &["link", "set", "lo", "up"]);
        ip(fd, &["link", "add", &bridge, "type", "bridge"]);
        // No spanning tree, no forwarding delay: ports forward at once.
        ip(
            fd,
            &[
                "link",
                "set",
                &bridge,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ],
        );
        let lab_addr = format!("10.77.{index}.254/24");
        ip(fd, &["addr", "add", &lab_addr, "dev", &bridge]);
        ip(fd, &["link", "set", &bridge, "up"]);
        enter(lab.as_raw_fd());
        Net {
            index,
            bridge,
            lab,
            lab_holder,
            before,
            _serial: serial,
        }
    }

    /// The lab's address on the bridge.
    pub fn lab(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, 254)
    }

    /// Host `i` (1 to 253): a new namespace at 10.77.N.i, linked to the bridge.
    pub fn host(&self, i: u8) -> Host {
        let (holder, ns) = new_namespace();
        let pid = holder.id();
        let addr = Ipv4Addr::new(10, 77, self.index, i);
        let outer = format!("veth{i}");
        // Owned from here: a failed step below still tears it down.
        let host = Host {
            addr,
            outer: outer.clone(),
            lab: self.lab.try_clone().expect("lab netns"),
            ns,
            holder,
        };
        let lab = Some(self.lab.as_raw_fd());
        ip(
            lab,
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0",
            ],
        );
        ip(lab, &["link", "set", &outer, "master", &self.bridge, "up"]);
        ip(lab, &["link", "set", "eth0", "netns", &pid.to_string()]);
        let fd = Some(host.ns.as_raw_fd());
        ip(fd, &["link", "set", "lo", "up"]);
        ip(fd, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(fd, &["link", "set", "eth0", "up"]);
        // Reachable from the lab before anything runs there.
        let probe = host.udp(SocketAddr::new(addr.into(), 0));
        let from_lab = UdpSocket::bind((self.lab(), 0)).expect("lab socket");
        from_lab
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let lab_at = from_lab.local_addr().expect("bound");
        wait_for("the host to answer over the bridge", T, || {
            let _ = probe.send_to(b"hello", lab_at);
            from_lab.recv(&mut [0u8; 8]).is_ok()
        });
        host
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Back into the namespace this thread came from.
        let _ = set_net_namespace(self.before.as_raw_fd());
        // The lab, its bridge and the veth ends on it vanish with the
        // holder (the hosts are dropped before).
        let _ = self.lab_holder.kill();
        let _ = self.lab_holder.wait();
    }
}

/// One host: a network namespace with `eth0` at `addr` on the bridge.
pub struct Host {
    pub addr: Ipv4Addr,
    /// The veth end in the lab (on the bridge).
    outer: String,
    lab: File,
    ns: File,
    holder: Child,
}

impl Host {
    /// `program` to be run inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter_before_exec(&mut cmd, self.ns.as_raw_fd());
        cmd
    }

    /// A UDP socket bound to `bind` inside this host (blocking, with a
    /// 50 ms read timeout).
    pub fn udp(&self, bind: SocketAddr) -> UdpSocket {
        let fd = self.ns.as_raw_fd();
        let sock = std::thread::scope(|s| {
            s.spawn(|| {
                // This thread alone enters the host; the socket stays in
                // the host's namespace after the thread has ended.
                enter(fd);
                UdpSocket::bind(bind)
            })
            .join()
            .expect("the socket thread")
        })
        .unwrap_or_else(|e| panic!("bind {bind} in host {}: {e}", self.addr));
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        sock
    }

    /// Cuts (`false`) or restores this host's link: the bridge's end of
    /// its veth pair goes down, and the host's `eth0` loses its carrier.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(
            Some(self.lab.as_raw_fd()),
            &["link", "set", &self.outer, state],
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The namespace vanishes with the last process in it, and the
        // veth pair with it.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A clustered nats-server with JetStream in a host; killed when dropped.
pub struct NatsNode {
    child: Child,
}

impl NatsNode {
    /// Server `name` at `host`, routed to `peers` (every server's
    /// address, its own included), its store in `store`.
    pub fn start(bin: &Path, host: &Host, name: &str, peers: &[Ipv4Addr], store: &Path) -> Self {
        let routes: Vec<String> = peers
            .iter()
            .map(|p| format!("nats://{p}:{ROUTE_PORT}"))
            .collect();
        let child = host
            .command(bin)
            .args(["--jetstream", "--server_name", name, "--addr", "0.0.0.0"])
            .args(["--port", &NATS_PORT.to_string()])
            .args(["--cluster_name", "speedrelay-test"])
            .args(["--cluster", &format!("nats://0.0.0.0:{ROUTE_PORT}")])
            .args(["--routes", &routes.join(",")])
            .arg("--store_dir")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let addr = SocketAddr::new(host.addr.into(), NATS_PORT);
        wait_for("nats-server to listen", T, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        NatsNode { child }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replica count the server reports for the relays' bucket, read
/// through `url` once a relay has created it (`cluster.replicas`),
/// retrying until JetStream has elected its leaders (bounded by `T`).
pub fn bucket_replicas(url: &str) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let deadline = Instant::now() + T;
        loop {
            let attempt = async {
                let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(client);
                let kv = js.get_key_value(BUCKET).await.map_err(|e| e.to_string())?;
                let status = kv.status().await.map_err(|e| e.to_string())?;
                Ok::<usize, String>(status.info.config.num_replicas)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(n)) => return n,
                Ok(Err(e)) if Instant::now() > deadline => panic!("bucket not read: {e}"),
                Err(_) if Instant::now() > deadline => panic!("bucket not read: timed out"),
                // The JetStream meta leader is elected a few seconds
                // after the routes connect: try again shortly.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

/// Three hosts, each with a clustered nats-server and a relay, the bucket
/// created by the first relay with three replicas (`cluster.replicas`). Field order is
/// drop order: relays, servers, hosts, the bridge, the files.
pub struct Cluster3 {
    pub relays: Vec<Option<RelayProcess>>,
    pub nats: Vec<Option<NatsNode>>,
    pub hosts: Vec<Host>,
    pub net: Net,
    pub names: Vec<String>,
    nats_bin: PathBuf,
    config: PathBuf,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster3 {
    /// Starts the topology with `cluster.lease_ms` = `lease_ms`, the relay
    /// binary `relay` (the test's own build, or a release build for a
    /// bench), and waits until every relay is connected and sees all three
    /// nodes live (with leases).
    pub fn start(nats_bin: &Path, relay: &Path, lease_ms: u64) -> Cluster3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        // Channels bind 0.0.0.0 (the default): reachable over the bridge
        // and on each host's loopback.
        let config = example_config(
            &root,
            &format!(
                "channels: []\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 50}}\ncluster: {{lease_ms: {lease_ms}, replicas: 3}}\n"
            ),
        );
        let net = Net::new();
        let hosts: Vec<Host> = (1..=3).map(|i| net.host(i)).collect();
        let names: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
        let mut c = Cluster3 {
            relays: Vec::new(),
            nats: Vec::new(),
            hosts,
            net,
            names,
            nats_bin: nats_bin.to_path_buf(),
            config,
            root,
            _dir: dir,
        };
        c.start_nats();
        for i in 0..3 {
            let r = c.start_relay(relay, i);
            c.relays.push(Some(r));
        }
        for i in 0..3 {
            wait_for(&format!("{} to join the cluster", c.names[i]), T, || {
                c.health(i)["cluster"]["nats"] == "connected"
            });
        }
        assert_eq!(bucket_replicas(&c.nats_url(0)), 3, "the bucket's replicas");
        if lease_ms > 0 {
            // Leases go by the live nodes a node sees: all three, before
            // anything is registered.
            wait_for("every node to see all three live", T, || {
                (0..3).all(|i| c.health(i)["cluster"]["nodes"] == serde_json::json!(c.names))
            });
        }
        c
    }

    /// (Re)starts the three nats-servers on their stores.
    pub fn start_nats(&mut self) {
        let peers: Vec<Ipv4Addr> = self.hosts.iter().map(|h| h.addr).collect();
        self.nats = (0..3)
            .map(|i| {
                Some(NatsNode::start(
                    &self.nats_bin,
                    &self.hosts[i],
                    &format!("nats{}", i + 1),
                    &peers,
                    &self.root.join(format!("js{}", i + 1)),
                ))
            })
            .collect();
    }

    /// Kills every nats-server (kill -9); their stores stay.
    pub fn stop_nats(&mut self) {
        self.nats.clear();
    }

    /// Host `i`'s nats-server URL.
    pub fn nats_url(&self, i: usize) -> String {
        format!("nats://{}:{NATS_PORT}", self.hosts[i].addr)
    }

    /// Relay `i` in its host, given every server's URL as the README's
    /// three-host set-up does: the client picks one, and moves to another
    /// when its server goes silent (a ping every quarter lease).
    fn start_relay(&self, bin: &Path, i: usize) -> RelayProcess {
        let urls: Vec<String> = (0..3).map(|j| self.nats_url(j)).collect();
        let mut cmd = self.hosts[i].command(bin);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.root.join(&self.names[i]))
            .args(["--api", &format!("0.0.0.0:{API_PORT}")])
            .args(["--nats", &urls.join(","), "--node", &self.names[i]])
            .env("RUST_LOG", "info");
        let mut relay = spawn_relay_command(cmd);
        // It logs 0.0.0.0; the lab reaches it over the bridge.
        relay.api = SocketAddr::new(self.hosts[i].addr.into(), API_PORT);
        relay
    }

    /// Starts relay `i` again (after [`Cluster3::kill9`]) on its data
    /// directory, and waits until it is connected and seen live by all.
    pub fn restart_relay(&mut self, bin: &Path, i: usize) {
        let r = self.start_relay(bin, i);
        self.relays[i] = Some(r);
        wait_for("the node to join again", T, || {
            self.health(i)["cluster"]["nats"] == "connected"
        });
        wait_for("every node to see all three live", T, || {
            (0..3).all(|j| self.health(j)["cluster"]["nodes"] == serde_json::json!(self.names))
        });
    }

    /// Relay `i`'s API address (over the bridge).
    pub fn api(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.hosts[i].addr.into(), API_PORT)
    }

    /// Index of node `name`.
    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn health(&self, i: usize) -> Json {
        let (status, body) = http(self.api(i), "GET", "/api/v1/health", &[], None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Kills relay `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(r) = self.relays[i].take() {
            r.kill9();
        }
    }

    /// The channel as each of `nodes` shows it: (status, owner, epoch).
    pub fn views(&self, nodes: &[usize], name: &str) -> Vec<(String, String, u64)> {
        nodes
            .iter()
            .map(|i| {
                let (_, c) = http(
                    self.api(*i),
                    "GET",
                    &format!("/api/v1/channels/{name}"),
                    &[],
                    None,
                );
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["owner"].as_str().unwrap_or_default().to_string(),
                    c["epoch"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// One of `nodes` shows itself the owner and `active`, the others
    /// `standby` with the same owner and epoch: the owner's index and the
    /// epoch.
    pub fn settled_owner(&self, nodes: &[usize], name: &str) -> Option<(usize, u64)> {
        let views = self.views(nodes, name);
        let (_, owner, epoch) = views[0].clone();
        let o = self.names.iter().position(|n| *n == owner)?;
        for (i, (status, who, e)) in nodes.iter().zip(&views) {
            let expected = if *i == o { "active" } else { "standby" };
            if *who != owner || *e != epoch || status != expected {
                return None;
            }
        }
        Some((o, epoch))
    }

    /// Waits (bounded) for one settled owner among `nodes`.
    pub fn wait_owner(&self, nodes: &[usize], name: &str) -> (usize, u64) {
        let mut settled = None;
        wait_for(&format!("{name} to settle on one owner"), T, || {
            settled = self.settled_owner(nodes, name);
            settled.is_some()
        });
        settled.expect("settled")
    }
}

/// The port channels listen on in the feed tests, and the port their
/// destinations listen on, in every host (each host has its own ports).
pub const FEED_PORT: u16 = 6000;
pub const DEST_PORT: u16 = 7000;

/// `outputs.full_rate` to [`DEST_PORT`] on the relaying host's loopback:
/// each host's datagrams reach that host's destination only, so the
/// destinations tell who forwarded.
pub fn local_destination() -> Json {
    serde_json::json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": DEST_PORT}}})
}

/// Records of example.avsc numbered from 0, sent at a fixed rate to
/// [`FEED_PORT`] on the loopback of every given host at once (as a
/// multicast group would reach every host), and the arrivals at each
/// host's destination ([`DEST_PORT`], its loopback): record number and
/// time. Bounded: the senders stop after `limit` or on `stop`.
/// One destination's arrivals: record number and time.
type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

pub struct Feeds {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    arrivals: Vec<Arrivals>,
}

impl Feeds {
    pub fn start(hosts: &[Host], rate: u64, limit: Duration) -> Feeds {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let mut arrivals = Vec::new();
        for h in hosts {
            let sink = h.udp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DEST_PORT));
            let got = Arc::new(Mutex::new(Vec::new()));
            arrivals.push(got.clone());
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let s = schema(EXAMPLE_SCHEMA);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sink.recv(&mut buf) {
                        let at = Instant::now();
                        let seq = record_number(&s, &buf[..n]);
                        got.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((seq, at));
                    }
                }
            }));
        }
        let senders: Vec<UdpSocket> = hosts
            .iter()
            .map(|h| h.udp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)))
            .collect();
        {
            let stop = stop.clone();
            let sent = sent.clone();
            threads.push(std::thread::spawn(move || {
                let s = schema(EXAMPLE_SCHEMA);
                let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, FEED_PORT);
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    // Paced: record n leaves at n / rate seconds.
                    let due = start + Duration::from_micros(n * 1_000_000 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let record = encode(&s, example_value(&s, n));
                    for tx in &senders {
                        let _ = tx.send_to(&record, to);
                    }
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
            }));
        }
        Feeds {
            stop,
            sent,
            threads,
            arrivals,
        }
    }

    /// Records sent so far (to each host).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// What host `i`'s destination has received so far.
    pub fn arrivals(&self, i: usize) -> Vec<(u64, Instant)> {
        self.arrivals[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many datagrams host `i`'s destination has received.
    pub fn count(&self, i: usize) -> usize {
        self.arrivals[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The first arrival at host `i` after `t`.
    pub fn first_after(&self, i: usize, t: Instant) -> Option<(u64, Instant)> {
        self.arrivals(i).into_iter().find(|(_, at)| *at > t)
    }

    /// Stops sending and receiving: records sent, and what each host's
    /// destination received.
    pub fn stop(mut self) -> (u64, Vec<Vec<(u64, Instant)>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let got = (0..self.arrivals.len()).map(|i| self.arrivals(i)).collect();
        (self.sent(), got)
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The `counter` field of an example.avsc record: its number in a feed.
pub fn record_number(s: &apache_avro::Schema, datum: &[u8]) -> u64 {
    match decode(s, datum) {
        apache_avro::types::Value::Record(fields) => fields
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("counter", apache_avro::types::Value::Int(n)) => Some(*n as u64),
                _ => None,
            })
            .expect("a counter field"),
        other => panic!("not a record: {other:?}"),
    }
}

/// The missing numbers of `0..sent` in `got` (any order, duplicates
/// allowed) as ranges `[from, to)`.
pub fn gaps(sent: u64, got: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut seen = vec![false; sent as usize];
    for n in got {
        if let Some(s) = seen.get_mut(n as usize) {
            *s = true;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < seen.len() {
        if seen[i] {
            i += 1;
            continue;
        }
        let from = i;
        while i < seen.len() && !seen[i] {
            i += 1;
        }
        out.push((from as u64, i as u64));
    }
    out
}
