//! The cluster (feature `cluster`): several relays sharing one registry in a
//! NATS JetStream key-value bucket.
//!
//! It owns the connection to NATS, the bucket and the node's mirror of it:
//! - `ch.<name>` holds a channel's registration (the registry's
//!   [`ChannelRecord`] as JSON); `port.<port>` holds a claim on a port
//!   (`{"name", "at"}`), so that two nodes racing for one port, or one name,
//!   get exactly one success: every write is a compare-and-set on the key's
//!   revision (`create`, `update`, `delete_expect_revision`);
//! - `meta.seeded` marks that the bucket was seeded from a node's
//!   `relay.yaml`, once, by the first node to connect;
//! - every node watches `ch.>` and applies each change to its engine, which
//!   writes it to the local redb: a node restarted during a NATS outage runs
//!   from that mirror, and catches up when NATS returns;
//! - with leases (`cluster.lease_ms`, on by default), `lease.<name>` says
//!   which node relays a channel (`{node, epoch, expires}`, written by
//!   compare-and-set on its revision) and `node.<name>` is each node's
//!   heartbeat. The lease keeper ([`Cluster::keep_leases`]) renews what this
//!   node holds every lease_ms/3, takes free or expired leases by rendezvous
//!   hashing over the live nodes, and its fence sends a channel to standby
//!   at 2/3 of lease_ms without a renewal, before the lease can expire and
//!   another node take it.
//!
//! The engine calls [`Cluster::claim`], [`Cluster::replace`] and
//! [`Cluster::release`] from its one registry write path; while NATS is
//! unreachable they fail with [`ClusterError::Unavailable`] (HTTP 503) and
//! nothing is written anywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::files::ClusterFile;
use crate::engine::Engine;
use crate::registry::ChannelRecord;

/// How long one JetStream request may take before the API answers 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A port claim whose channel does not exist is taken over only when it is
/// older than this: a registration in progress writes its claim first and
/// its channel a few milliseconds later (each write bounded by
/// [`REQUEST_TIMEOUT`]), so a younger claim may belong to one.
const STALE_CLAIM: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const SEED_KEY: &str = "meta.seeded";
/// `cluster.lease_ms` when not given.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(3000);
/// The shortest lease: a renewal every 100 ms, a fence at 200 ms.
pub const MIN_LEASE_MS: u64 = 300;
pub const MAX_LEASE_MS: u64 = 600_000;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A bad `--nats`, `--node` or credentials setting; start-up stops.
    #[error("cluster: {0}")]
    Config(String),
    /// NATS cannot be reached (or did not answer in time): nothing was written.
    #[error("{0}")]
    Unavailable(String),
    #[error("a channel named {name} already exists in the cluster")]
    NameTaken { name: String },
    #[error("Port already in use: port {port} is used by channel {used_by} in the cluster")]
    PortTaken { port: u16, used_by: String },
    /// The registration changed on another node between read and write.
    #[error("channel {name} was changed on another node at the same time; try again")]
    Changed { name: String },
    /// The bucket refused the write by its limits (value size, bytes,
    /// storage): the same request would be refused again.
    #[error("the cluster registry refused the registration: {reason}; nothing was written")]
    Refused { reason: String },
}

/// The server's reason when a write failed on a limit of the bucket or the
/// account (too large a value, bucket or storage full) rather than on the
/// connection; None for any other failure.
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use async_nats::jetstream::ErrorCode as C;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            let code = js.error_code();
            let text = js.to_string();
            let limit = [
                C::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
                C::STREAM_HEADER_EXCEEDS_MAXIMUM,
                C::STORAGE_RESOURCES_EXCEEDED,
                C::MEMORY_RESOURCES_EXCEEDED,
                C::ACCOUNT_RESOURCES_EXCEEDED,
                C::INSUFFICIENT_RESOURCES,
            ]
            .contains(&code)
                // "maximum bytes exceeded", "maximum messages exceeded";
                // not a failing disk.
                || (code == C::STREAM_STORE_FAILED && text.contains("maximum"));
            return limit.then_some(text);
        }
        if let Some(p) = err.downcast_ref::<PublishError>()
            && p.kind() == PublishErrorKind::MaxPayloadExceeded
        {
            return Some(format!("{p} (the NATS server's max_payload)"));
        }
        cause = err.source();
    }
    None
}

/// How to reach NATS; the secrets come from a file or the environment only.
#[derive(Clone)]
pub struct ClusterOptions {
    pub servers: Vec<String>,
    pub node: String,
    pub bucket: String,
    /// How long a channel lease lasts; None: no leases (every node runs
    /// every channel).
    pub lease: Option<Duration>,
    /// The placement groups this node belongs to (`cluster.groups`).
    pub groups: Vec<String>,
    /// Hand a channel over to the node ranking first for it
    /// (`cluster.rebalance`).
    pub rebalance: bool,
    /// Copies of the bucket when this node creates it (`cluster.replicas`).
    pub replicas: usize,
    auth: Auth,
    ca: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or password.
        f.debug_struct("ClusterOptions")
            .field("servers", &self.servers)
            .field("node", &self.node)
            .field("bucket", &self.bucket)
            .field("lease", &self.lease)
            .field("groups", &self.groups)
            .field("rebalance", &self.rebalance)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword(String, String),
}

impl ClusterOptions {
    /// Adds the credentials and the TLS CA to `connect` (also used by
    /// `speedrelay subscribe`).
    pub fn secure(&self, connect: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let mut connect = match self.auth.clone() {
            Auth::None => connect,
            Auth::Token(t) => connect.token(t),
            Auth::UserPassword(u, p) => connect.user_and_password(u, p),
        };
        if let Some(ca) = &self.ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        connect
    }

    /// Layers `--nats`/`--node`/`--group` (already merged with
    /// SPEEDRELAY_NATS, SPEEDRELAY_NODE and SPEEDRELAY_GROUPS by the caller)
    /// over the config file's `cluster` section, and reads the credentials.
    /// None when no server is given: the relay runs alone.
    pub fn resolve(
        nats: &[String],
        node: Option<&str>,
        groups: &[String],
        file: Option<&ClusterFile>,
    ) -> Result<Option<Self>, ClusterError> {
        let servers: Vec<String> = if nats.is_empty() {
            file.map(|f| f.nats.clone()).unwrap_or_default()
        } else {
            nats.to_vec()
        };
        let servers: Vec<String> = servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Ok(None);
        }
        for s in &servers {
            if s.contains('@') {
                return Err(ClusterError::Config(format!(
                    "NATS URL {}: credentials never go in a URL (it is logged); use \
                     SPEEDRELAY_NATS_TOKEN, SPEEDRELAY_NATS_USER/SPEEDRELAY_NATS_PASSWORD or a \
                     credentials file",
                    s.rsplit('@').next().unwrap_or_default()
                )));
            }
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| ClusterError::Config(format!("NATS URL {s}: {e}")))?;
        }
        let node = match node.map(str::to_string).or_else(|| file?.node.clone()) {
            Some(n) => n,
            None => hostname().ok_or_else(|| {
                ClusterError::Config("--node is required: the host name cannot be read".into())
            })?,
        };
        if !valid_name(&node) {
            return Err(ClusterError::Config(format!(
                "--node {node}: a node name is a letter or digit, then letters, digits, '_' or \
                 '-' (at most 64)"
            )));
        }
        let trimmed = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect()
        };
        let mut groups = if groups.is_empty() {
            file.map(|f| trimmed(&f.groups)).unwrap_or_default()
        } else {
            trimmed(groups)
        };
        if let Some(bad) = groups.iter().find(|g| !valid_name(g)) {
            return Err(ClusterError::Config(format!(
                "--group {bad}: a group name is a letter or digit, then letters, digits, '_' or \
                 '-' (at most 64)"
            )));
        }
        groups.sort();
        groups.dedup();
        let bucket = file
            .and_then(|f| f.bucket.clone())
            .unwrap_or_else(|| "speedrelay".into());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let credentials_file = env("SPEEDRELAY_NATS_CREDENTIALS")
            .map(PathBuf::from)
            .or_else(|| file.and_then(|f| f.credentials.clone()));
        let mut from_file = match &credentials_file {
            Some(path) => read_credentials(path)?,
            None => Credentials::default(),
        };
        if let Some(t) = env("SPEEDRELAY_NATS_TOKEN") {
            from_file.token = Some(t);
        }
        if let Some(u) = env("SPEEDRELAY_NATS_USER") {
            from_file.user = Some(u);
        }
        if let Some(p) = env("SPEEDRELAY_NATS_PASSWORD") {
            from_file.password = Some(p);
        }
        let auth = match from_file {
            Credentials {
                token: Some(_),
                user: Some(_),
                ..
            } => {
                return Err(ClusterError::Config(
                    "NATS credentials: give a token or a user and password, not both".into(),
                ));
            }
            Credentials {
                token: Some(t),
                user: None,
                password: None,
            } => Auth::Token(t),
            Credentials {
                user: Some(u),
                password: Some(p),
                token: None,
            } => Auth::UserPassword(u, p),
            Credentials {
                user: None,
                password: None,
                token: None,
            } => Auth::None,
            _ => {
                return Err(ClusterError::Config(
                    "NATS credentials: a user needs a password and a password a user".into(),
                ));
            }
        };
        let ca = env("SPEEDRELAY_NATS_CA")
            .map(PathBuf::from)
            .or_else(|| file.and_then(|f| f.ca.clone()));
        if let Some(ca) = &ca
            && !ca.is_file()
        {
            return Err(ClusterError::Config(format!(
                "NATS CA file {}: not a readable file",
                ca.display()
            )));
        }
        let lease = match file.and_then(|f| f.lease_ms) {
            None => Some(DEFAULT_LEASE),
            Some(0) => None,
            Some(ms) if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) => {
                Some(Duration::from_millis(ms))
            }
            Some(ms) => {
                return Err(ClusterError::Config(format!(
                    "cluster.lease_ms {ms}: 0 (no leases) or {MIN_LEASE_MS} to {MAX_LEASE_MS} \
                     milliseconds"
                )));
            }
        };
        let replicas = match file.and_then(|f| f.replicas) {
            None => 1,
            Some(n @ 1..=5) => n,
            Some(n) => {
                return Err(ClusterError::Config(format!(
                    "cluster.replicas {n}: 1 to 5 copies of the bucket"
                )));
            }
        };
        Ok(Some(ClusterOptions {
            servers,
            node,
            bucket,
            lease,
            groups,
            rebalance: file.and_then(|f| f.rebalance).unwrap_or(false),
            replicas,
            auth,
            ca,
        }))
    }
}

/// A quarter of the lease, between 250 ms and 5 s; 5 s without leases.
fn ping_interval(lease: Option<Duration>) -> Duration {
    lease.map_or(Duration::from_secs(5), |l| {
        (l / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
    })
}

/// Node and group names: a letter or digit, then letters, digits, '_' or
/// '-', at most 64 (they are parts of bucket keys).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Default)]
struct Credentials {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

/// `key=value` lines (`token`, `user`, `password`); `#` starts a comment.
fn read_credentials(path: &Path) -> Result<Credentials, ClusterError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClusterError::Config(format!("NATS credentials {}: {e}", path.display())))?;
    let mut c = Credentials::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ClusterError::Config(format!(
                "NATS credentials {} line {}: not key=value",
                path.display(),
                i + 1
            )));
        };
        let value = Some(value.trim().to_string());
        match key.trim() {
            "token" => c.token = value,
            "user" => c.user = value,
            "password" => c.password = value,
            other => {
                return Err(ClusterError::Config(format!(
                    "NATS credentials {} line {}: unknown key {other} (token, user, password)",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(c)
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The value of a `port.<port>` key.
#[derive(Debug, Serialize, Deserialize)]
struct PortClaim {
    name: String,
    /// Unix ms when claimed, to tell a stale claim from one in progress.
    at: u64,
}

/// This node's membership: the client, the bucket once opened, the state.
pub struct Cluster {
    options: ClusterOptions,
    client: async_nats::Client,
    /// Set once the bucket is open (NATS reached at least once).
    store: RwLock<Option<kv::Store>>,
    /// Whether the mirror has caught up with the bucket since the last
    /// (re)connection.
    synced: AtomicBool,
    stop: CancellationToken,
    /// The leases this node holds, and until when it may relay under each.
    held: Mutex<HashMap<String, Held>>,
    /// Every channel's lease as last read: (node, epoch).
    seen: Mutex<HashMap<String, (String, u64)>>,
    /// When this node first saw a never-held lease free (unix ms): the
    /// start of the wait of a node that is not the preferred one.
    free_since: Mutex<HashMap<String, u64>>,
    /// The live nodes as the last lease round read them.
    live: Mutex<Vec<Member>>,
    /// Channels no live node may relay (by their placement), with why.
    unplaced: Mutex<HashMap<String, String>>,
    /// Since when (unix ms) each live node has been seen live without a
    /// break: rebalancing hands channels only to a node live for a lease.
    live_since: Mutex<HashMap<String, u64>>,
    /// Rebalancing: the node each channel was last handed to, and when,
    /// so that a node that does not take it is not handed it again and
    /// again.
    yielded: Mutex<HashMap<String, (String, u64)>>,
    takeovers: AtomicU64,
}

/// A live node and its placement groups, from its heartbeat.
#[derive(Debug, Clone)]
struct Member {
    node: String,
    groups: Vec<String>,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    /// 2/3 of the lease after the last renewal was sent: past it the
    /// channel goes to standby, a third of a lease before anyone else may
    /// take it.
    fence: Instant,
}

/// The value of a `lease.<name>` key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    node: String,
    epoch: u64,
    /// Unix ms after which the lease is free to take.
    expires: u64,
}

/// The value of a `node.<name>` key: the node is live until `expires`.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    expires: u64,
    /// Its placement groups, so that every node ranks alike.
    #[serde(default)]
    groups: Vec<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects in the background: start-up never waits for NATS, and the
    /// client retries with backoff for as long as the relay runs.
    pub async fn connect(options: ClusterOptions) -> Result<Arc<Cluster>, ClusterError> {
        let servers = options.servers.join(",");
        let mut connect = async_nats::ConnectOptions::new()
            .name(format!("speedrelay {}", options.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // 100 ms doubling to 5 s: quick after a blip, quiet (one line
            // per attempt) while the servers stay away or refuse us.
            .reconnect_delay_callback(|attempts| {
                let shift = attempts.min(6) as u32;
                (Duration::from_millis(100) * 2u32.pow(shift)).min(Duration::from_secs(5))
            })
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            // The client notices a server gone silent (its host cut off,
            // not a closed socket) after about three missed pings; the
            // default of a ping a minute would leave a node blind for
            // minutes while the servers still reachable elect and serve.
            // A ping every quarter lease lets it move to another server
            // within a lease or so.
            .ping_interval(ping_interval(options.lease))
            .event_callback({
                let servers = servers.clone();
                move |event| {
                    let servers = servers.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                tracing::info!(nats = %servers, "connected to NATS");
                            }
                            async_nats::Event::Disconnected => tracing::warn!(
                                nats = %servers,
                                "disconnected from NATS; channels keep relaying, registrations \
                                 are refused until it returns"
                            ),
                            async_nats::Event::ClientError(e) => tracing::warn!(
                                nats = %servers,
                                error = %e,
                                "NATS refused or failed the connection (wrong credentials?); \
                                 retrying with backoff"
                            ),
                            other => tracing::warn!(nats = %servers, event = %other, "NATS"),
                        }
                    }
                }
            });
        connect = options.secure(connect);
        let addrs: Vec<async_nats::ServerAddr> = options
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| ClusterError::Config(format!("NATS URL: {e}")))?;
        let client = connect
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Config(format!("NATS {servers}: {e}")))?;
        Ok(Arc::new(Cluster {
            options,
            client,
            store: RwLock::new(None),
            synced: AtomicBool::new(false),
            stop: CancellationToken::new(),
            held: Mutex::default(),
            seen: Mutex::default(),
            live: Mutex::default(),
            unplaced: Mutex::default(),
            live_since: Mutex::default(),
            yielded: Mutex::default(),
            free_since: Mutex::default(),
            takeovers: AtomicU64::new(0),
        }))
    }

    /// The node's NATS connection, shared with the NATS outputs.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn node(&self) -> &str {
        &self.options.node
    }

    /// Whether this node uses leases (only the holder relays a channel).
    pub fn leases(&self) -> bool {
        self.options.lease.is_some()
    }

    /// Whether this node holds `name`'s lease now (and may relay it).
    pub fn holds(&self, name: &str) -> bool {
        let now = Instant::now();
        lock(&self.held).get(name).is_some_and(|h| now < h.fence)
    }

    /// The holder and epoch of `name`'s lease, as this node last read it.
    pub fn lease_of(&self, name: &str) -> Option<(String, u64)> {
        self.leases().then_some(())?;
        if let Some(h) = lock(&self.held).get(name) {
            return Some((self.options.node.clone(), h.epoch));
        }
        lock(&self.seen).get(name).cloned()
    }

    /// The live nodes (heartbeat not expired) as last read, sorted; empty
    /// without leases.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut live: Vec<String> = lock(&self.live).iter().map(|m| m.node.clone()).collect();
        live.sort();
        live
    }

    /// Why no node relays `name`, when its placement admits no live node.
    pub fn unplaced(&self, name: &str) -> Option<String> {
        lock(&self.unplaced).get(name).cloned()
    }

    /// Leases held now and taken since start, for /metrics; None without leases.
    pub fn lease_counts(&self) -> Option<(usize, u64)> {
        self.leases().then_some(())?;
        Some((
            lock(&self.held).len(),
            self.takeovers.load(Ordering::Relaxed),
        ))
    }

    /// `connected`, `connecting` or `disconnected`, for /health and /metrics.
    pub fn state(&self) -> &'static str {
        match self.client.connection_state() {
            async_nats::connection::State::Connected if self.synced.load(Ordering::Acquire) => {
                "connected"
            }
            async_nats::connection::State::Connected | async_nats::connection::State::Pending => {
                "connecting"
            }
            async_nats::connection::State::Disconnected => "disconnected",
        }
    }

    /// The bucket, when NATS is reachable now; else a 503 that says why.
    fn store(&self) -> Result<kv::Store, ClusterError> {
        let unavailable = || {
            ClusterError::Unavailable(format!(
                "the cluster registry (NATS {}) is not reachable from node {}: registrations, \
                 changes and deletions are refused until it returns; channels keep relaying",
                self.options.servers.join(","),
                self.options.node
            ))
        };
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(unavailable());
        }
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(unavailable)
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable(format!(
            "the cluster registry (NATS {}) did not {what}: {e}; nothing was changed",
            self.options.servers.join(",")
        ))
    }

    /// Registers `record` in the bucket: first the claim on its port, then
    /// the channel, each a create that only one writer can win. On any
    /// failure what this call wrote is taken back.
    pub async fn claim(&self, record: &ChannelRecord) -> Result<(), ClusterError> {
        let kv = self.store()?;
        let port_key = port_key(record.port);
        let claim = encode(&PortClaim {
            name: record.name.clone(),
            at: unix_ms(),
        })?;
        let port_revision = match kv.create(&port_key, claim.clone().into()).await {
            Ok(rev) => rev,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                self.take_stale_claim(&kv, record, claim).await?
            }
            Err(e) => match refusal(&e) {
                Some(reason) => return Err(ClusterError::Refused { reason }),
                None => return Err(self.failed("accept the port claim", e)),
            },
        };
        let value = encode(record)?;
        match kv.create(channel_key(&record.name), value.into()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Err(undo) = kv
                    .delete_expect_revision(&port_key, Some(port_revision))
                    .await
                {
                    tracing::warn!(port = record.port, error = %undo, "cannot take back a port claim");
                }
                if e.kind() == CreateErrorKind::AlreadyExists {
                    Err(ClusterError::NameTaken {
                        name: record.name.clone(),
                    })
                } else if let Some(reason) = refusal(&e) {
                    Err(ClusterError::Refused { reason })
                } else {
                    Err(self.failed("accept the registration", e))
                }
            }
        }
    }

    /// The port is claimed: by a live channel (409), or by a claim whose
    /// channel is gone (a node stopped between the two writes of a
    /// deletion), which is taken over by compare-and-set.
    async fn take_stale_claim(
        &self,
        kv: &kv::Store,
        record: &ChannelRecord,
        claim: Vec<u8>,
    ) -> Result<u64, ClusterError> {
        let port_key = port_key(record.port);
        let taken = |used_by: String| ClusterError::PortTaken {
            port: record.port,
            used_by,
        };
        let entry = kv
            .entry(&port_key)
            .await
            .map_err(|e| self.failed("answer", e))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            // Deleted between our create and this read: someone else's turn.
            return Err(taken("(another registration in progress)".into()));
        };
        let holder: PortClaim = serde_json::from_slice(&entry.value).unwrap_or(PortClaim {
            name: String::from_utf8_lossy(&entry.value).into_owned(),
            at: 0,
        });
        let young = unix_ms().saturating_sub(holder.at) < STALE_CLAIM.as_millis() as u64;
        let live = match kv.entry(channel_key(&holder.name)).await {
            Ok(Some(e)) if e.operation == Operation::Put => {
                serde_json::from_slice::<ChannelRecord>(&e.value)
                    .is_ok_and(|r| r.port == record.port)
            }
            Ok(_) => false,
            Err(e) => return Err(self.failed("answer", e)),
        };
        if live || young {
            return Err(taken(holder.name));
        }
        tracing::info!(port = record.port, stale = %holder.name, "taking over a stale port claim");
        match kv.update(&port_key, claim.into(), entry.revision).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(taken(holder.name)),
            Err(e) => Err(self.failed("accept the port claim", e)),
        }
    }

    /// Replaces the registration of `new.name`, provided the bucket still
    /// holds `current` (what this node's mirror shows): a compare-and-set
    /// on the key's revision.
    pub async fn replace(
        &self,
        current: &ChannelRecord,
        new: &ChannelRecord,
    ) -> Result<(), ClusterError> {
        let kv = self.store()?;
        let key = channel_key(&new.name);
        let changed = || ClusterError::Changed {
            name: new.name.clone(),
        };
        let entry = kv
            .entry(&key)
            .await
            .map_err(|e| self.failed("answer", e))?
            .filter(|e| e.operation == Operation::Put)
            .ok_or_else(changed)?;
        let stored: Option<ChannelRecord> = serde_json::from_slice(&entry.value).ok();
        if stored.as_ref() != Some(current) {
            return Err(changed());
        }
        match kv.update(&key, encode(new)?.into(), entry.revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(changed()),
            Err(e) => match refusal(&e) {
                Some(reason) => Err(ClusterError::Refused { reason }),
                None => Err(self.failed("accept the change", e)),
            },
        }
    }

    /// Deletes the registration (a delete marker: the tombstone that keeps
    /// a seeded channel deleted), then its port claim.
    pub async fn release(&self, record: &ChannelRecord) -> Result<(), ClusterError> {
        let kv = self.store()?;
        let key = channel_key(&record.name);
        let entry = kv.entry(&key).await.map_err(|e| self.failed("answer", e))?;
        if let Some(entry) = entry.filter(|e| e.operation == Operation::Put)
            && let Err(e) = kv.delete_expect_revision(&key, Some(entry.revision)).await
        {
            // Changed meanwhile, or NATS went away: tell which.
            return match kv.entry(&key).await {
                Ok(Some(now)) if now.revision != entry.revision => Err(ClusterError::Changed {
                    name: record.name.clone(),
                }),
                _ => Err(self.failed("accept the deletion", e)),
            };
        }
        self.release_port(&kv, record).await;
        Ok(())
    }

    /// Drops the port claim if `record` holds it. Best effort: a claim left
    /// behind is stale and taken over by the next registration of the port.
    async fn release_port(&self, kv: &kv::Store, record: &ChannelRecord) {
        let key = port_key(record.port);
        if let Ok(Some(e)) = kv.entry(&key).await {
            let ours = e.operation == Operation::Put
                && serde_json::from_slice::<PortClaim>(&e.value)
                    .is_ok_and(|c| c.name == record.name);
            if ours && let Err(err) = kv.delete_expect_revision(&key, Some(e.revision)).await {
                tracing::warn!(port = record.port, error = %err, "port claim left behind (it goes stale)");
            }
        }
    }

    /// Runs the membership until `shutdown`: opens the bucket (retrying
    /// while NATS is away), seeds it once, and mirrors every change into
    /// `engine`; after a lost connection it reconciles and mirrors again.
    pub fn spawn(self: &Arc<Self>, engine: Weak<Engine>, seeds: Vec<ChannelRecord>) {
        if let Some(lease) = self.options.lease {
            tokio::spawn(self.clone().keep_leases(engine.clone(), lease));
            tokio::spawn(self.clone().fence(engine.clone(), lease));
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            let mut seeds = Some(seeds);
            loop {
                let outcome = tokio::select! {
                    _ = cluster.stop.cancelled() => return,
                    r = cluster.session(&engine, &mut seeds) => r,
                };
                cluster.synced.store(false, Ordering::Release);
                match outcome {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cluster registry: mirroring interrupted");
                    }
                }
                tokio::select! {
                    _ = cluster.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// One connected stretch: open, seed, reconcile, then follow the watch.
    /// Ok(()) only when the engine is gone.
    async fn session(
        &self,
        engine: &Weak<Engine>,
        seeds: &mut Option<Vec<ChannelRecord>>,
    ) -> Result<(), String> {
        let kv = self.open_bucket().await?;
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = Some(kv.clone());
        if let Some(list) = seeds.take()
            && let Err(e) = self.seed(&kv, &list).await
        {
            *seeds = Some(list);
            return Err(e);
        }
        // Watch first, so that nothing written from here on is missed;
        // what it replays is applied idempotently.
        let mut watch = kv
            .watch_with_history("ch.>")
            .await
            .map_err(|e| format!("watch: {e}"))?;
        self.reconcile(&kv, engine).await?;
        self.synced.store(true, Ordering::Release);
        loop {
            let entry = match watch.next().await {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(format!("watch: {e}")),
                None => return Err("watch ended".into()),
            };
            let Some(engine) = engine.upgrade() else {
                return Ok(());
            };
            apply(&engine, &entry).await;
        }
    }

    async fn open_bucket(&self) -> Result<kv::Store, String> {
        let mut js = async_nats::jetstream::new(self.client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        match js.get_key_value(&self.options.bucket).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: self.options.bucket.clone(),
                    description: "speedrelay cluster registry".into(),
                    // The last value per key is all that is read; a delete
                    // marker is kept (it is the tombstone).
                    history: 1,
                    num_replicas: self.options.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("bucket {}: {e}", self.options.bucket)),
        }
    }

    /// The YAML baseline goes into the bucket once, from the first node that
    /// connects; later nodes' YAML channels are ignored (the API changes the
    /// cluster's registry). Names with any history in the bucket, deleted
    /// ones included, are never written again.
    async fn seed(&self, kv: &kv::Store, seeds: &[ChannelRecord]) -> Result<(), String> {
        if let Some(entry) = kv.entry(SEED_KEY).await.map_err(|e| e.to_string())? {
            if !seeds.is_empty() {
                tracing::info!(
                    seeded_by = %String::from_utf8_lossy(&entry.value),
                    ignored = seeds.len(),
                    "the cluster registry was seeded already; relay.yaml's channels are not added"
                );
            }
            return Ok(());
        }
        for record in seeds {
            match kv.entry(channel_key(&record.name)).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match self.claim(record).await {
                Ok(()) => {
                    tracing::info!(channel = %record.name, "seeded into the cluster registry")
                }
                Err(e @ ClusterError::Unavailable(_)) => return Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(channel = %record.name, error = %e, "baseline channel not registered")
                }
            }
        }
        match kv.create(SEED_KEY, self.options.node.clone().into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Local channels the watch would not mention: removed while this node
    /// was away (their delete marker replays anyway), or never in the bucket
    /// (registered before this node joined): those are offered to the
    /// cluster, and kept local-only with a warning if refused.
    async fn reconcile(&self, kv: &kv::Store, engine: &Weak<Engine>) -> Result<(), String> {
        let Some(engine) = engine.upgrade() else {
            return Ok(());
        };
        let local = engine
            .registry()
            .list()
            .map_err(|e| format!("local registry: {e}"))?;
        for record in local {
            match kv.entry(channel_key(&record.name)).await {
                Ok(Some(_)) => {}
                Ok(None) => match self.claim(&record).await {
                    Ok(()) => {
                        tracing::info!(channel = %record.name, "local channel added to the cluster registry")
                    }
                    Err(e @ ClusterError::Unavailable(_)) => return Err(e.to_string()),
                    Err(e) => tracing::warn!(channel = %record.name, error = %e,
                        "local channel not in the cluster registry and refused by it; it runs on this node only"),
                },
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

impl Cluster {
    /// The lease keeper: every lease/3, a heartbeat, then each channel's
    /// lease renewed, taken or left to its holder. A round that cannot
    /// reach NATS does nothing; the fence then sends channels to standby.
    async fn keep_leases(self: Arc<Self>, engine: Weak<Engine>, lease: Duration) {
        let mut tick = tokio::time::interval(lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let Ok(kv) = self.store() else { continue };
            // Each request gets a third of a lease: a slow NATS cannot hold
            // a round past the fence unnoticed (the fence runs apart).
            let budget = lease / 3;
            let now = unix_ms();
            let expires = now + lease.as_millis() as u64;
            let beat = encode(&Heartbeat {
                expires,
                groups: self.options.groups.clone(),
            })
            .unwrap_or_default();
            match tokio::time::timeout(budget, kv.put(node_key(&self.options.node), beat.into()))
                .await
            {
                Ok(Ok(_)) => {}
                _ => continue,
            }
            let live = match tokio::time::timeout(budget, live_nodes(&kv, now)).await {
                Ok(Ok(live)) => live,
                _ => continue,
            };
            lock(&self.live).clone_from(&live);
            let settled: Vec<String> = {
                let mut since = lock(&self.live_since);
                since.retain(|n, _| live.iter().any(|m| m.node == *n));
                live.iter()
                    .filter(|m| {
                        let first = *since.entry(m.node.clone()).or_insert(now);
                        now.saturating_sub(first) >= lease.as_millis() as u64
                    })
                    .map(|m| m.node.clone())
                    .collect()
            };
            let names = engine.names();
            // Channels deleted since: forget their leases here (their
            // `lease.` keys stay, and a new channel of that name takes
            // the next epoch).
            lock(&self.held).retain(|n, _| names.contains(n));
            lock(&self.seen).retain(|n, _| names.contains(n));
            lock(&self.free_since).retain(|n, _| names.contains(n));
            lock(&self.unplaced).retain(|n, _| names.contains(n));
            lock(&self.yielded).retain(|n, _| names.contains(n));
            for name in names {
                let round = Round {
                    kv: &kv,
                    engine: &engine,
                    live: &live,
                    settled: &settled,
                    now,
                    lease,
                    budget,
                };
                if self.tend(&round, &name).await.is_err() {
                    break;
                }
            }
        }
    }

    /// One channel's lease in one round. Err when NATS did not answer:
    /// the round ends.
    async fn tend(&self, r: &Round<'_>, name: &str) -> Result<(), ()> {
        let key = lease_key(name);
        let entry = match tokio::time::timeout(r.budget, r.kv.entry(&key)).await {
            Ok(Ok(e)) => e,
            _ => return Err(()),
        };
        let me = &self.options.node;
        // Only the live nodes its placement admits rank for the channel.
        let placement = r.engine.placement(name);
        let eligible: Vec<String> = r
            .live
            .iter()
            .filter(|m| {
                placement
                    .as_ref()
                    .is_none_or(|p| p.admits(&m.node, &m.groups))
            })
            .map(|m| m.node.clone())
            .collect();
        let admitted = placement
            .as_ref()
            .is_none_or(|p| p.admits(me, &self.options.groups));
        match (&placement, eligible.is_empty()) {
            (Some(p), true) => {
                lock(&self.unplaced).insert(
                    name.to_string(),
                    format!(
                        "placement: no live node is {p}; the channel is relayed nowhere until \
                         one is"
                    ),
                );
            }
            _ => {
                lock(&self.unplaced).remove(name);
            }
        }
        let current = entry.as_ref().map(|e| {
            let lease = (e.operation == Operation::Put)
                .then(|| serde_json::from_slice::<Lease>(&e.value).ok())
                .flatten();
            (lease, e.revision)
        });
        let lease_ms = r.lease.as_millis() as u64;
        // The lease runs from when this write is sent, and so does the
        // fence: a slow round cannot leave it longer than 2/3 of a lease.
        let sent = Instant::now();
        let mine = Lease {
            node: me.clone(),
            epoch: 0,
            expires: unix_ms() + lease_ms,
        };
        if let Some((Some(l), revision)) = &current {
            // An expired lease has no owner to show.
            if l.expires > r.now {
                lock(&self.seen).insert(name.to_string(), (l.node.clone(), l.epoch));
            } else {
                lock(&self.seen).remove(name);
            }
            let yield_to = if admitted && l.node == *me {
                self.yield_to(r, name, &eligible)
            } else {
                None
            };
            if l.node == *me && l.expires > r.now && (!admitted || yield_to.is_some()) {
                if lock(&self.held).contains_key(name) {
                    // Placed elsewhere now, or another node ranks first:
                    // stop relaying; the lease is handed over once the
                    // channel has stopped (below, next round).
                    let why = match &yield_to {
                        None => "placement: this node is no longer eligible".to_string(),
                        Some(first) => format!("rebalancing: node {first} ranks first"),
                    };
                    self.lose(r.engine, name, &why);
                } else if r.engine.is_standby(name) {
                    if let Some(first) = yield_to {
                        lock(&self.yielded).insert(name.to_string(), (first, r.now));
                    }
                    self.hand_over(r, name, l, *revision).await?;
                }
                return Ok(());
            }
            if l.node == *me && l.expires > r.now && lock(&self.held).contains_key(name) {
                let renewal = Lease {
                    epoch: l.epoch,
                    ..mine
                };
                let value = encode(&renewal).map_err(|_| ())?;
                return match tokio::time::timeout(
                    r.budget,
                    r.kv.update(&key, value.into(), *revision),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        self.hold(r, sent, name, l.epoch);
                        Ok(())
                    }
                    Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        self.lose(r.engine, name, "the lease was taken by another node");
                        Ok(())
                    }
                    _ => Err(()),
                };
            }
            if l.expires > r.now {
                // Held by another node (or by this one from before a
                // restart, which it must not trust): leave it.
                if lock(&self.held).contains_key(name) {
                    self.lose(r.engine, name, "another node holds the lease");
                }
                return Ok(());
            }
        }
        // Free or expired: the preferred live node takes it at once, the
        // next one a lease later, and so on, so that a preferred node that
        // is live but stuck does not keep the channel down.
        let since = match &current {
            Some((Some(l), _)) => {
                lock(&self.free_since).remove(name);
                l.expires
            }
            _ => *lock(&self.free_since)
                .entry(name.to_string())
                .or_insert(r.now),
        };
        let Some(rank) = rendezvous_rank(name, me, &eligible) else {
            return Ok(());
        };
        if r.now < since.saturating_add(rank as u64 * lease_ms) {
            return Ok(());
        }
        let epoch = match &current {
            Some((Some(l), _)) => l.epoch + 1,
            _ => 1,
        };
        let value = encode(&Lease { epoch, ..mine }).map_err(|_| ())?;
        let outcome = match &current {
            Some((_, revision)) => {
                tokio::time::timeout(r.budget, r.kv.update(&key, value.into(), *revision))
                    .await
                    .map(|o| {
                        o.map(|_| ())
                            .map_err(|e| e.kind() == UpdateErrorKind::WrongLastRevision)
                    })
            }
            None => tokio::time::timeout(r.budget, r.kv.create(&key, value.into()))
                .await
                .map(|o| {
                    o.map(|_| ())
                        .map_err(|e| e.kind() == CreateErrorKind::AlreadyExists)
                }),
        };
        match outcome {
            Ok(Ok(())) => {
                self.takeovers.fetch_add(1, Ordering::Relaxed);
                lock(&self.seen).insert(name.to_string(), (me.clone(), epoch));
                tracing::info!(channel = %name, epoch, eligible = ?eligible, "took the channel's lease; relaying it here");
                self.hold(r, sent, name, epoch);
                Ok(())
            }
            // Another node was quicker: its lease shows next round.
            Ok(Err(true)) => Ok(()),
            _ => Err(()),
        }
    }

    /// With `cluster.rebalance`: the node to hand `name` over to, when
    /// another admitted node ranks first for it and has been live for a
    /// lease (a node just started, or flapping, is not handed anything),
    /// and it was not handed this channel in the last ten leases (it did
    /// not take it then: it is live but stuck).
    fn yield_to(&self, r: &Round<'_>, name: &str, eligible: &[String]) -> Option<String> {
        if !self.options.rebalance {
            return None;
        }
        // The order of [`rendezvous_rank`]: score, then name.
        let first = eligible
            .iter()
            .max_by_key(|n| (score(name, n), n.as_str()))?;
        if *first == self.options.node || !r.settled.contains(first) {
            return None;
        }
        let lease_ms = r.lease.as_millis() as u64;
        if let Some((node, at)) = lock(&self.yielded).get(name)
            && node == first
            && r.now.saturating_sub(*at) < 10 * lease_ms
        {
            return None;
        }
        Some(first.clone())
    }

    /// Marks this node's lease on `name` expired now (by compare-and-set:
    /// a lease taken meanwhile is left alone), so that an eligible node
    /// takes it at its next round instead of a lease later. Only once the
    /// channel has stopped here: the lease is what keeps a second node
    /// from forwarding.
    async fn hand_over(
        &self,
        r: &Round<'_>,
        name: &str,
        lease: &Lease,
        revision: u64,
    ) -> Result<(), ()> {
        let value = encode(&Lease {
            expires: r.now,
            ..lease.clone()
        })
        .map_err(|_| ())?;
        match tokio::time::timeout(
            r.budget,
            r.kv.update(lease_key(name), value.into(), revision),
        )
        .await
        {
            Ok(Ok(_)) => {
                lock(&self.seen).remove(name);
                tracing::info!(channel = %name, "lease handed over (placement)");
                Ok(())
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(()),
            _ => Err(()),
        }
    }

    /// Records a lease won or renewed and lets the channel run, unless the
    /// answer came too late to trust it.
    fn hold(&self, r: &Round<'_>, sent: Instant, name: &str, epoch: u64) {
        let fence = sent + r.lease * 2 / 3;
        if Instant::now() >= fence {
            return;
        }
        lock(&self.held).insert(name.to_string(), Held { epoch, fence });
        r.engine.set_owned(name, true);
    }

    fn lose(&self, engine: &Engine, name: &str, why: &str) {
        lock(&self.held).remove(name);
        engine.set_owned(name, false);
        tracing::warn!(channel = %name, reason = why, "lease lost; standby");
    }

    /// Hands this node's leases over on a graceful stop: each is marked
    /// expired (by compare-and-set, so a lease taken meanwhile is left
    /// alone) and the heartbeat removed, so the next node takes the
    /// channels at its next round instead of a lease later. Call it only
    /// once every channel has stopped: the lease is what keeps a second
    /// node from forwarding.
    pub async fn release_leases(&self) {
        let Some(lease) = self.options.lease else {
            return;
        };
        let Ok(kv) = self.store() else { return };
        let budget = lease / 3;
        let held: Vec<(String, u64)> = lock(&self.held)
            .drain()
            .map(|(name, h)| (name, h.epoch))
            .collect();
        let me = &self.options.node;
        for (name, epoch) in held {
            let key = lease_key(&name);
            let Ok(Ok(Some(entry))) = tokio::time::timeout(budget, kv.entry(&key)).await else {
                continue;
            };
            let ours = entry.operation == Operation::Put
                && serde_json::from_slice::<Lease>(&entry.value)
                    .is_ok_and(|l| l.node == *me && l.epoch == epoch);
            if !ours {
                continue;
            }
            let Ok(value) = encode(&Lease {
                node: me.clone(),
                epoch,
                expires: 0,
            }) else {
                continue;
            };
            if let Ok(Ok(_)) =
                tokio::time::timeout(budget, kv.update(&key, value.into(), entry.revision)).await
            {
                tracing::info!(channel = %name, "lease handed over");
            }
        }
        let _ = tokio::time::timeout(budget, kv.delete(node_key(me))).await;
    }

    /// The fence: a held lease not renewed in time sends its channel to
    /// standby, a third of a lease before the lease expires.
    async fn fence(self: Arc<Self>, engine: Weak<Engine>, lease: Duration) {
        let mut tick = tokio::time::interval(lease / 20);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let now = Instant::now();
            let expired: Vec<String> = {
                let mut held = lock(&self.held);
                let gone: Vec<String> = held
                    .iter()
                    .filter(|(_, h)| now >= h.fence)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &gone {
                    held.remove(n);
                }
                gone
            };
            for name in expired {
                engine.set_owned(&name, false);
                tracing::warn!(channel = %name, "lease not renewed in time (NATS unreachable or slow); standby");
            }
        }
    }
}

/// What one round of the lease keeper shares between channels.
struct Round<'a> {
    kv: &'a kv::Store,
    engine: &'a Engine,
    live: &'a [Member],
    /// The live nodes live for a lease at least (rebalancing).
    settled: &'a [String],
    /// Unix ms at the round's start: what the leases read are compared to.
    now: u64,
    lease: Duration,
    budget: Duration,
}

/// The nodes whose heartbeat has not expired.
async fn live_nodes(kv: &kv::Store, now: u64) -> Result<Vec<Member>, String> {
    let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if let Some(node) = key.strip_prefix("node.") {
            nodes.push(node.to_string());
        }
    }
    let mut live = Vec::new();
    for node in nodes {
        if let Some(value) = kv.get(node_key(&node)).await.map_err(|e| e.to_string())?
            && let Ok(beat) = serde_json::from_slice::<Heartbeat>(&value)
            && beat.expires > now
        {
            live.push(Member {
                node,
                groups: beat.groups,
            });
        }
    }
    Ok(live)
}

/// Where `me` stands among the live nodes for `channel` (0: preferred);
/// None when `me` is not among them. Rendezvous hashing: each (channel,
/// node) pair gets a score, highest first, so channels spread evenly and
/// only those of a node that leaves move.
fn rendezvous_rank(channel: &str, me: &str, live: &[String]) -> Option<usize> {
    let mut ranked: Vec<(u64, &str)> = live
        .iter()
        .map(|n| (score(channel, n), n.as_str()))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.iter().position(|(_, n)| *n == me)
}

/// FNV-1a of `channel`, a separator and `node`, mixed: stable across
/// builds and platforms, so every node ranks alike.
fn score(channel: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes().chain([0u8]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final avalanche (splitmix64), so near names do not rank alike.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lease_key(name: &str) -> String {
    format!("lease.{name}")
}

fn node_key(node: &str) -> String {
    format!("node.{node}")
}

/// One change of the bucket, applied to this node.
async fn apply(engine: &Engine, entry: &kv::Entry) {
    let Some(name) = entry.key.strip_prefix("ch.") else {
        return;
    };
    match entry.operation {
        Operation::Put => match serde_json::from_slice::<ChannelRecord>(&entry.value) {
            Ok(record) if record.name == name => {
                if let Err(e) = engine.mirror_put(record).await {
                    tracing::warn!(channel = %name, error = %e, "cannot mirror a registration");
                }
            }
            Ok(_) | Err(_) => {
                tracing::warn!(key = %entry.key, "unreadable registration in the cluster registry; ignored");
            }
        },
        Operation::Delete | Operation::Purge => {
            if let Err(e) = engine.mirror_delete(name).await {
                tracing::warn!(channel = %name, error = %e, "cannot mirror a deletion");
            }
        }
    }
}

fn channel_key(name: &str) -> String {
    format!("ch.{name}")
}

fn port_key(port: u16) -> String {
    format!("port.{port}")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(value).map_err(|e| ClusterError::Config(format!("encode: {e}")))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
