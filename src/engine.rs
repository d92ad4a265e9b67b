//! The engine: owns every channel of the process and the registry that
//! makes them durable. Registering binds the port, commits the registry and
//! starts the channel in one step, and undoes what it did when a step
//! fails; each channel runs under a supervisor that restarts it with backoff
//! when its port cannot be bound or its task fails, while the others run on.
//!
//! Control-plane operations are serialised by one async mutex: they are
//! rare, and it makes "exactly one of 50 racing registrations wins" a
//! property of the code rather than of timing. The datagram path never
//! touches it.
//!
//! On a node of a cluster (feature `cluster`), those three writes go to the
//! cluster registry first (a compare-and-set in NATS, which decides between
//! nodes) and then to the local registry; changes made on other nodes
//! arrive through `mirror_put` and `mirror_delete`, under the same mutex.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::{BoundChannel, ChannelError, ChannelSpec};
use crate::config::ChannelSettings;
use crate::config::files::Seed;
use crate::config::{SettingsError, expand_shorthand, merge, settings_from};
use crate::counters::{ChannelCounters, ChannelStats};
use crate::history::{History, HistoryView};
use crate::live::{LiveHub, LiveTap};
use crate::registry::{ChannelRecord, Registry, RegistryError};
use crate::standby::HotStandby;
use crate::validator::Validator;

/// Why a channel of a cluster node was not bound at start: it waits for its lease.
const STANDBY: &str = "standby";

/// First and longest wait between two attempts to (re)start a channel.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input, naming the field it is about.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no channel named {name}")]
    NotFound { name: String },
    /// The name or port is taken; `used_by` names the holder when known.
    #[error("{message}")]
    Conflict {
        message: String,
        used_by: Option<String>,
    },
    /// The relay cannot do it now (out of file descriptors, a channel that
    /// did not take its new settings); nothing was changed.
    #[error("{message}")]
    Unavailable { message: String },
    #[error("registry: {0}")]
    Registry(RegistryError),
    /// The cluster registry refused the write by its limits (too large a
    /// registration, a full bucket): sending it again would not help.
    #[error("{message}")]
    Refused { message: String },
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NameTaken { name } => EngineError::Conflict {
                message: format!("a channel named {name} already exists"),
                used_by: Some(name),
            },
            RegistryError::PortTaken { port, used_by } => EngineError::Conflict {
                message: format!("Port already in use: port {port} is used by channel {used_by}"),
                used_by: Some(used_by),
            },
            RegistryError::NotFound { name } => EngineError::NotFound { name },
            other => EngineError::Registry(other),
        }
    }
}

#[cfg(feature = "cluster")]
impl From<crate::cluster::ClusterError> for EngineError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError as C;
        match e {
            C::NameTaken { ref name } => EngineError::Conflict {
                used_by: Some(name.clone()),
                message: e.to_string(),
            },
            C::PortTaken { ref used_by, .. } => EngineError::Conflict {
                used_by: Some(used_by.clone()),
                message: e.to_string(),
            },
            C::Changed { .. } => EngineError::Conflict {
                message: e.to_string(),
                used_by: None,
            },
            C::Unavailable(message) => EngineError::Unavailable { message },
            C::Refused { .. } => EngineError::Refused {
                message: e.to_string(),
            },
            C::Config(message) => EngineError::Unavailable { message },
        }
    }
}

/// The baseline channels as registry records.
pub fn seed_records(baseline: &[Seed]) -> Vec<ChannelRecord> {
    let now = unix_ms();
    baseline
        .iter()
        .map(|seed| ChannelRecord {
            name: seed.spec.name.clone(),
            port: seed.spec.port,
            schema_json: seed.spec.schema_json.clone(),
            schema_path: seed.schema_path.clone(),
            config: serde_json::to_value(&seed.spec.settings).unwrap_or(Value::Null),
            created_at: now,
        })
        .collect()
}

/// What the engine is started with.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub data_dir: PathBuf,
    /// The layered default channel settings (JSON), as the config files give them.
    pub defaults: Value,
    /// File descriptors a registration must leave free besides one archive
    /// file per channel: the API's connection cap plus
    /// [`crate::descriptors::SPARE`].
    pub fd_reserve: u64,
    /// Whether `relay.yaml`'s channels go into the local registry at start.
    /// False in a cluster: there the cluster registry is seeded instead
    /// (once, by the first node) and the local one is its mirror.
    pub seed_locally: bool,
    /// Whether a channel waits in `standby` (registered, not bound) until
    /// it is told it may run ([`Engine::set_owned`]): on a cluster node
    /// with leases, where only the lease holder binds the port.
    pub standby: bool,
}

impl EngineOptions {
    /// Options for `data_dir` and `defaults`, with the reserve of an API
    /// at its default connection cap.
    pub fn new(data_dir: impl Into<PathBuf>, defaults: Value) -> Self {
        EngineOptions {
            data_dir: data_dir.into(),
            defaults,
            fd_reserve: crate::api::DEFAULT_MAX_CONNECTIONS as u64 + crate::descriptors::SPARE,
            seed_locally: true,
            standby: false,
        }
    }
}

/// Whether a channel is relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Bound and running.
    Active,
    /// Not running; see `error`. Being retried with backoff.
    Failed,
    /// Registered but not bound: another node of the cluster holds its
    /// lease (or this node could not renew it).
    Standby,
}

/// A channel as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    pub name: String,
    pub port: u16,
    pub schema_path: Option<String>,
    pub status: Status,
    /// The relay's process id (one process for every channel).
    pub pid: u32,
    /// When it was registered, `YYYY-MM-DD HH:MM:SS` in UTC (SpeedData's form).
    pub created_at: String,
    /// The same instant in Unix milliseconds.
    pub created_at_ms: u64,
    pub config: ChannelSettings,
    pub stats: ChannelStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// In a cluster with leases: the node holding the channel's lease, as
    /// this node last read it, and the lease's epoch (one more per take-over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A registration request, already parsed from JSON.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub port: u16,
    pub schema_json: String,
    pub schema_path: Option<String>,
    /// Settings overrides, layered on the defaults.
    pub config: Option<Value>,
}

/// Status shared between a channel's supervisor and readers.
#[derive(Debug)]
struct Health {
    status: Status,
    error: Option<String>,
}

struct Slot {
    record: ChannelRecord,
    settings: ChannelSettings,
    counters: Arc<ChannelCounters>,
    /// Per-second samples of the counters, filled by the sampler task.
    history: Arc<History>,
    /// Where the channel task offers records to live viewers.
    live: Arc<LiveTap>,
    health: Arc<Mutex<Health>>,
    commands: mpsc::UnboundedSender<SupervisorCommand>,
    /// Whether this node may run the channel (holds its lease); always
    /// true outside a cluster with leases.
    owned: watch::Sender<bool>,
    cancel: CancellationToken,
    supervisor: JoinHandle<()>,
}

enum SupervisorCommand {
    Reconfigure {
        settings: Box<ChannelSettings>,
        reply: oneshot::Sender<Result<(), ChannelError>>,
    },
    /// Fault injection: make the running channel task panic.
    #[cfg(feature = "testing")]
    InjectPanic,
}

pub struct Engine {
    options: EngineOptions,
    /// Shared so its blocking, fsyncing writes can run off the runtime's threads.
    registry: Arc<Registry>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Serialises register, update and deregister.
    control: tokio::sync::Mutex<()>,
    /// Live viewers of every channel, counted for the caps and `/metrics`.
    live_hub: Arc<LiveHub>,
    /// The cluster registry every write goes through first, once joined.
    #[cfg(feature = "cluster")]
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// What a live viewer of a channel needs.
pub struct LiveSource {
    pub tap: Arc<LiveTap>,
    pub schema_json: String,
    /// Whether records come from the decimated stream (else sampled).
    pub decimated: bool,
}

impl Engine {
    /// Opens the registry in `data_dir`, seeds it from the baseline (new
    /// names only; names deleted through the API stay deleted) and starts
    /// every registered channel. A channel whose port cannot be bound is
    /// `failed` and retried; the others start normally.
    pub async fn start(
        options: EngineOptions,
        baseline: &[Seed],
    ) -> Result<Arc<Engine>, EngineError> {
        let registry = Registry::open(&registry_path(&options.data_dir)?)?;
        if options.seed_locally {
            let report = registry.seed(&seed_records(baseline))?;
            for (name, err) in &report.conflicts {
                tracing::warn!(channel = %name, error = %err, "baseline channel not registered");
            }
        }
        let engine = Arc::new(Engine {
            options,
            registry: Arc::new(registry),
            slots: Mutex::new(BTreeMap::new()),
            control: tokio::sync::Mutex::new(()),
            live_hub: Arc::default(),
            #[cfg(feature = "cluster")]
            cluster: std::sync::OnceLock::new(),
        });
        let records = engine.registry.list()?;
        let mut slots = BTreeMap::new();
        for record in records {
            let settings = match settings_from(&record.config) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(channel = %record.name, error = %e, "stored settings unreadable; using defaults");
                    ChannelSettings::default()
                }
            };
            // Bound here, before the API starts, so every channel that can
            // run is `active` as soon as `start` returns.
            let spec = spec_of(&record, &settings);
            let first = if engine.options.standby {
                Err(STANDBY.into())
            } else {
                BoundChannel::bind_with_counters(spec, &engine.options.data_dir, Arc::default())
                    .map_err(|e| e.to_string())
            };
            let name = record.name.clone();
            slots.insert(name, engine.supervise(record, settings, first));
        }
        *engine.lock_slots() = slots;
        tokio::spawn(sample_every_second(Arc::downgrade(&engine)));
        Ok(engine)
    }

    /// Adds the second that just ended to every channel's history.
    pub fn sample_history(&self) {
        let now = unix_ms();
        let slots = self.lock_slots();
        for slot in slots.values() {
            slot.history.push(&slot.counters.snapshot(), now);
        }
    }

    /// The last `seconds` of a channel's history.
    pub fn history(&self, name: &str, seconds: usize) -> Option<HistoryView> {
        self.lock_slots().get(name).map(|s| s.history.view(seconds))
    }

    /// What a live viewer of the channel needs.
    pub fn live_source(&self, name: &str) -> Option<LiveSource> {
        self.lock_slots().get(name).map(|s| LiveSource {
            tap: s.live.clone(),
            schema_json: s.record.schema_json.clone(),
            decimated: s.settings.decimation.enabled,
        })
    }

    /// Live viewers of all channels.
    pub fn live_hub(&self) -> &Arc<LiveHub> {
        &self.live_hub
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds, commits and starts a new channel; on any failure nothing is
    /// left behind.
    pub async fn register(&self, r: Registration) -> Result<ChannelInfo, EngineError> {
        check_identity(&r.name, r.port, &r.schema_json)?;
        let mut doc = self.options.defaults.clone();
        if let Some(overrides) = r.config.clone() {
            merge(&mut doc, expand_shorthand(overrides));
        }
        let settings = settings_from(&doc).map_err(invalid_config)?;
        self.check_placement(&settings)?;

        let _guard = self.control.lock().await;
        if self.lock_slots().contains_key(&r.name) {
            return Err(RegistryError::NameTaken { name: r.name }.into());
        }
        if let Some(owner) = self.registry.port_owner(r.port)? {
            return Err(RegistryError::PortTaken {
                port: r.port,
                used_by: owner,
            }
            .into());
        }
        // Refused while it would eat into what the API and the archives of
        // the other channels need (one file each, this one included).
        let outputs = &settings.outputs;
        // A coalescing channel's socket is watched through an epoll set
        // with a timer: two more.
        let coalescing = if settings.socket.coalesce_us > 0 {
            2
        } else {
            0
        };
        let needed = 1
            + coalescing
            + outputs.full_rate.len()
            + if settings.decimation.enabled {
                outputs.decimated.len()
            } else {
                0
            };
        let reserve = self.options.fd_reserve + self.lock_slots().len() as u64 + 1;
        tokio::task::spawn_blocking(move || {
            crate::descriptors::check_headroom(needed as u64, reserve)
        })
        .await
        .unwrap_or(Ok(()))
        .map_err(|message| EngineError::Unavailable { message })?;
        let spec = ChannelSpec {
            name: r.name.clone(),
            port: r.port,
            schema_json: r.schema_json.clone(),
            settings: settings.clone(),
        };
        let counters = Arc::new(ChannelCounters::default());
        let bound = BoundChannel::bind_with_counters(spec, &self.options.data_dir, counters)
            .map_err(|e| match e {
                ChannelError::Bind { source, .. } | ChannelError::Destination { source, .. }
                    if crate::descriptors::is_exhaustion(&source) =>
                {
                    EngineError::Unavailable {
                        message: format!("out of file descriptors: {source}"),
                    }
                }
                ChannelError::Bind { port, source } => EngineError::Conflict {
                    message: format!("Port already in use: port {port} cannot be bound: {source}"),
                    used_by: None,
                },
                e @ (ChannelError::Destination { .. } | ChannelError::Nats(_)) => {
                    invalid_settings(e)
                }
                other => invalid("schema", other.to_string()),
            })?;
        let record = ChannelRecord {
            name: r.name.clone(),
            port: r.port,
            schema_json: r.schema_json,
            schema_path: r.schema_path,
            config: serde_json::to_value(&settings).unwrap_or(Value::Null),
            created_at: unix_ms(),
        };
        // The cluster registry first: it decides between racing nodes.
        #[cfg(feature = "cluster")]
        let claimed = match self.cluster.get() {
            Some(cluster) => {
                cluster.claim(&record).await?;
                Some((cluster.clone(), record.clone()))
            }
            None => None,
        };
        // The bound socket is dropped (port released) if the commit fails.
        let record = match self
            .blocking(move |reg| reg.insert(&record).map(|()| record))
            .await
        {
            Ok(record) => record,
            Err(e) => {
                #[cfg(feature = "cluster")]
                if let Some((cluster, record)) = claimed
                    && let Err(undo) = cluster.release(&record).await
                {
                    tracing::warn!(channel = %record.name, error = %undo, "cannot take back a cluster registration");
                }
                return Err(e);
            }
        };
        let slot = self.supervise(record, settings, Ok(bound));
        let info = self.info_of(&slot);
        self.lock_slots().insert(r.name, slot);
        Ok(info)
    }

    /// Removes the channel from the registry, then stops it (its archive
    /// file is closed) and releases its port.
    pub async fn deregister(&self, name: &str) -> Result<(), EngineError> {
        let _guard = self.control.lock().await;
        let Some(record) = self.lock_slots().get(name).map(|s| s.record.clone()) else {
            return Err(EngineError::NotFound { name: name.into() });
        };
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.get() {
            cluster.release(&record).await?;
        }
        let _ = record;
        let owned = name.to_string();
        self.blocking(move |reg| reg.remove(&owned)).await?;
        let slot = self.lock_slots().remove(name);
        if let Some(slot) = slot {
            slot.cancel.cancel();
            let _ = slot.supervisor.await;
        }
        Ok(())
    }

    /// Merges `patch` into the channel's settings and applies them to the
    /// running channel without dropping its socket.
    pub async fn update(&self, name: &str, patch: Value) -> Result<ChannelInfo, EngineError> {
        let _guard = self.control.lock().await;
        let (mut doc, current, commands) = {
            let slots = self.lock_slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| EngineError::NotFound { name: name.into() })?;
            (
                slot.record.config.clone(),
                slot.settings.clone(),
                slot.commands.clone(),
            )
        };
        let patch = expand_shorthand(patch);
        // A placement is replaced whole, not merged: `{"group": ...}` over
        // `{"node": ...}` moves the channel to the group.
        if patch.get("placement").is_some()
            && let Some(doc) = doc.as_object_mut()
        {
            doc.remove("placement");
        }
        merge(&mut doc, patch);
        let settings = settings_from(&doc).map_err(invalid_config)?;
        if settings.placement != current.placement {
            self.check_placement(&settings)?;
        }
        if settings.socket.bind != current.socket.bind {
            return Err(invalid(
                "config.socket.bind",
                format!(
                    "/socket/bind: a running channel stays bound to {}; \
                     to listen on {} delete the channel and register it again",
                    current.socket.bind, settings.socket.bind
                ),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let command = SupervisorCommand::Reconfigure {
            settings: Box::new(settings.clone()),
            reply,
        };
        // Stored only once the channel has taken the settings (or, when it
        // is failed and waiting to restart, will start with them).
        let not_taken = || EngineError::Unavailable {
            message: format!("channel {name} is stopping and did not take the new settings"),
        };
        commands.send(command).map_err(|_| not_taken())?;
        match answer.await {
            Ok(Ok(())) => {}
            Ok(Err(ChannelError::Task(_))) | Err(_) => return Err(not_taken()),
            Ok(Err(e)) => return Err(invalid_settings(e)),
        }
        let config = serde_json::to_value(&settings).unwrap_or(Value::Null);
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.get() {
            let current_record = self.lock_slots().get(name).map(|s| s.record.clone());
            if let Some(current_record) = current_record {
                let new = ChannelRecord {
                    config: config.clone(),
                    ..current_record.clone()
                };
                if let Err(e) = cluster.replace(&current_record, &new).await {
                    // Back to the settings in effect before: nothing changed.
                    let (reply, _) = oneshot::channel();
                    let _ = commands.send(SupervisorCommand::Reconfigure {
                        settings: Box::new(current),
                        reply,
                    });
                    return Err(e.into());
                }
            }
        }
        let owned = name.to_string();
        let record = self
            .blocking(move |reg| reg.update_config(&owned, config))
            .await?;
        let mut slots = self.lock_slots();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| EngineError::NotFound { name: name.into() })?;
        slot.record = record;
        slot.settings = settings;
        Ok(self.info_of(slot))
    }

    /// Runs a registry write (a durable commit: an fsync) on the blocking
    /// pool, so the channels sharing this runtime never wait for the disk.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let registry = self.registry.clone();
        match tokio::task::spawn_blocking(move || f(&registry)).await {
            Ok(r) => r.map_err(EngineError::from),
            Err(e) => Err(EngineError::Registry(RegistryError::Storage {
                path: self.registry.path().to_path_buf(),
                detail: e.to_string(),
            })),
        }
    }

    pub fn list(&self) -> Vec<ChannelInfo> {
        self.lock_slots()
            .values()
            .map(|s| self.info_of(s))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<ChannelInfo> {
        self.lock_slots().get(name).map(|s| self.info_of(s))
    }

    /// The registered Avro schema text of a channel.
    pub fn schema(&self, name: &str) -> Option<String> {
        self.lock_slots()
            .get(name)
            .map(|s| s.record.schema_json.clone())
    }

    /// Which channel holds `port`, if any.
    pub fn port_owner(&self, port: u16) -> Option<String> {
        self.lock_slots()
            .values()
            .find(|s| s.record.port == port)
            .map(|s| s.record.name.clone())
    }

    /// Fault injection for tests: makes the channel's task panic, as a bug
    /// would, to exercise its supervisor. False when there is no such channel.
    #[cfg(feature = "testing")]
    pub fn inject_panic(&self, name: &str) -> bool {
        self.lock_slots()
            .get(name)
            .is_some_and(|s| s.commands.send(SupervisorCommand::InjectPanic).is_ok())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Joins the cluster: from now on every registry write goes through it
    /// first, and its changes are mirrored here. `baseline` seeds it if no
    /// node has yet.
    #[cfg(feature = "cluster")]
    pub fn join(self: &Arc<Self>, cluster: Arc<crate::cluster::Cluster>, baseline: &[Seed]) {
        cluster.spawn(Arc::downgrade(self), seed_records(baseline));
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this node belongs to, if any.
    #[cfg(feature = "cluster")]
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Applies a registration from the cluster registry: starts a channel
    /// new to this node, applies changed settings to a running one. The
    /// local registry is written first, so that a restart during a NATS
    /// outage brings it back.
    #[cfg(feature = "cluster")]
    pub(crate) async fn mirror_put(&self, record: ChannelRecord) -> Result<(), EngineError> {
        let _guard = self.control.lock().await;
        let existing = self
            .lock_slots()
            .get(&record.name)
            .map(|s| (s.record.clone(), s.commands.clone()));
        let settings = settings_from(&record.config).map_err(invalid_config)?;
        match existing {
            Some((current, _)) if current == record => Ok(()),
            Some((current, commands))
                if current.port == record.port && current.schema_json == record.schema_json =>
            {
                let (reply, answer) = oneshot::channel();
                let _ = commands.send(SupervisorCommand::Reconfigure {
                    settings: Box::new(settings.clone()),
                    reply,
                });
                if let Ok(Err(e)) = answer.await {
                    tracing::warn!(channel = %record.name, error = %e, "settings from the cluster not taken by the running channel");
                }
                let stored = record.clone();
                self.blocking(move |reg| reg.mirror_put(&stored)).await?;
                if let Some(slot) = self.lock_slots().get_mut(&record.name) {
                    slot.record = record;
                    slot.settings = settings;
                }
                Ok(())
            }
            _ => {
                // New here, or another port or schema: (re)start it.
                let old = self.lock_slots().remove(&record.name);
                if let Some(old) = old {
                    old.cancel.cancel();
                    let _ = old.supervisor.await;
                }
                let stored = record.clone();
                self.blocking(move |reg| reg.mirror_put(&stored)).await?;
                let spec = spec_of(&record, &settings);
                let first = if self.may_run(&record.name) {
                    BoundChannel::bind_with_counters(spec, &self.options.data_dir, Arc::default())
                        .map_err(|e| e.to_string())
                } else {
                    Err(STANDBY.into())
                };
                let name = record.name.clone();
                tracing::info!(channel = %name, "channel registered in the cluster; started here");
                let slot = self.supervise(record, settings, first);
                self.lock_slots().insert(name, slot);
                Ok(())
            }
        }
    }

    /// Applies a deletion from the cluster registry.
    #[cfg(feature = "cluster")]
    pub(crate) async fn mirror_delete(&self, name: &str) -> Result<(), EngineError> {
        let _guard = self.control.lock().await;
        let owned = name.to_string();
        match self.blocking(move |reg| reg.remove(&owned)).await {
            Ok(_) | Err(EngineError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let slot = self.lock_slots().remove(name);
        if let Some(slot) = slot {
            tracing::info!(channel = %name, "channel deleted in the cluster; stopped here");
            slot.cancel.cancel();
            let _ = slot.supervisor.await;
        }
        Ok(())
    }

    /// Stops every channel; each closes its archive file.
    pub async fn shutdown(&self) {
        let slots = std::mem::take(&mut *self.lock_slots());
        for slot in slots.values() {
            slot.cancel.cancel();
        }
        for (_, slot) in slots {
            let _ = slot.supervisor.await;
        }
    }

    fn info_of(&self, slot: &Slot) -> ChannelInfo {
        let health = slot.health.lock().unwrap_or_else(|p| p.into_inner());
        let stats = slot.counters.snapshot();
        // A failing disk leaves the channel relaying (active) but is still
        // its current fault: shown in `error` until a block is written again.
        #[cfg(feature = "cluster")]
        let lease = self
            .cluster
            .get()
            .and_then(|c| c.lease_of(&slot.record.name));
        #[cfg(not(feature = "cluster"))]
        let lease: Option<(String, u64)> = None;
        // A channel no live node may relay (placement) says so.
        #[cfg(feature = "cluster")]
        let unplaced = (health.status == Status::Standby)
            .then(|| self.cluster.get()?.unplaced(&slot.record.name))
            .flatten();
        #[cfg(not(feature = "cluster"))]
        let unplaced: Option<String> = None;
        let error = health
            .error
            .clone()
            .or(unplaced)
            .or_else(|| {
                stats
                    .archive_error
                    .as_ref()
                    .map(|e| format!("archive: {e}"))
            })
            .or_else(|| {
                stats
                    .nats_stream_error
                    .as_ref()
                    .map(|e| format!("nats stream: {e}"))
            });
        ChannelInfo {
            name: slot.record.name.clone(),
            port: slot.record.port,
            schema_path: slot.record.schema_path.clone(),
            status: health.status,
            pid: std::process::id(),
            created_at: utc_datetime(slot.record.created_at),
            created_at_ms: slot.record.created_at,
            config: slot.settings.clone(),
            stats,
            error,
            owner: lease.as_ref().map(|l| l.0.clone()),
            epoch: lease.map(|l| l.1),
        }
    }

    /// Starts the supervisor of one channel, given the outcome of its first
    /// bind (a registration holds the socket already).
    fn supervise(
        &self,
        record: ChannelRecord,
        settings: ChannelSettings,
        first: Result<BoundChannel, String>,
    ) -> Slot {
        let counters = first
            .as_ref()
            .map(|b| b.counters().clone())
            .unwrap_or_default();
        let live = Arc::new(LiveTap::new(self.live_hub.clone()));
        let may_run = self.may_run(&record.name);
        let (owned, owned_rx) = watch::channel(may_run);
        let (bound, health) = match first {
            // Bound to check the port (a registration), but not the owner:
            // the socket is dropped and the channel waits.
            _ if !may_run => (
                None,
                Health {
                    status: Status::Standby,
                    error: None,
                },
            ),
            Ok(b) => (
                Some(b.with_live(live.clone())),
                Health {
                    status: Status::Active,
                    error: None,
                },
            ),
            Err(e) => (
                None,
                Health {
                    status: Status::Failed,
                    error: Some(e),
                },
            ),
        };
        let health = Arc::new(Mutex::new(health));
        let cancel = CancellationToken::new();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            spec: spec_of(&record, &settings),
            data_dir: self.options.data_dir.clone(),
            counters: counters.clone(),
            live: live.clone(),
            health: health.clone(),
            cancel: cancel.clone(),
            commands: commands_rx,
            owned: owned_rx,
            hot: self.options.standby,
        };
        let supervisor = tokio::spawn(supervisor.run(bound));
        Slot {
            record,
            settings,
            counters,
            history: Arc::default(),
            live,
            health,
            commands,
            owned,
            cancel,
            supervisor,
        }
    }

    /// Whether a channel starting now may bind its port.
    fn may_run(&self, name: &str) -> bool {
        if !self.options.standby {
            return true;
        }
        #[cfg(feature = "cluster")]
        if let Some(c) = self.cluster.get() {
            return c.holds(name);
        }
        let _ = name;
        false
    }

    /// Lets the channel run (bind its port and relay) or sends it to
    /// `standby` (stops it and releases the port); the lease keeper calls
    /// it as leases are won, renewed or lost. False when there is no such
    /// channel.
    pub fn set_owned(&self, name: &str, owned: bool) -> bool {
        match self.lock_slots().get(name) {
            Some(slot) => {
                slot.owned
                    .send_if_modified(|v| std::mem::replace(v, owned) != owned);
                true
            }
            None => false,
        }
    }

    /// The names of every channel, for the lease keeper.
    pub fn names(&self) -> Vec<String> {
        self.lock_slots().keys().cloned().collect()
    }

    /// A channel's placement, for the lease keeper.
    pub fn placement(&self, name: &str) -> Option<crate::config::Placement> {
        self.lock_slots()
            .get(name)
            .and_then(|s| s.settings.placement.clone())
    }

    /// Whether the channel is in standby: its task has stopped (a lease
    /// may be handed over).
    pub fn is_standby(&self, name: &str) -> bool {
        self.lock_slots().get(name).is_some_and(|s| {
            s.health.lock().unwrap_or_else(|p| p.into_inner()).status == Status::Standby
        })
    }

    /// `placement` needs a cluster with leases: elsewhere every node (or
    /// the one relay) runs every channel, and a pin it cannot honour is
    /// refused rather than silently ignored.
    fn check_placement(&self, settings: &ChannelSettings) -> Result<(), EngineError> {
        if settings.placement.is_none() {
            return Ok(());
        }
        #[cfg(feature = "cluster")]
        if self.cluster.get().is_some_and(|c| c.leases()) {
            return Ok(());
        }
        Err(invalid(
            "config.placement",
            "placement needs a node of a cluster with leases (serve --nats, \
             cluster.lease_ms not 0): without one every relay runs its own channels",
        ))
    }
}

/// Keeps one channel running: binds, runs, and after a failure waits
/// (100 ms doubling to 30 s) and tries again, until cancelled.
struct Supervisor {
    spec: ChannelSpec,
    data_dir: PathBuf,
    counters: Arc<ChannelCounters>,
    live: Arc<LiveTap>,
    health: Arc<Mutex<Health>>,
    cancel: CancellationToken,
    commands: mpsc::UnboundedReceiver<SupervisorCommand>,
    owned: watch::Receiver<bool>,
    /// Whether standby is hot for multicast channels: on a node with leases.
    hot: bool,
}

impl Supervisor {
    async fn run(mut self, mut bound: Option<BoundChannel>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            // A hot standby's socket, once the lease is won: taken over as is.
            let mut taken = None;
            if !*self.owned.borrow_and_update() {
                // Not ours: release the port and wait until it is.
                drop(bound.take());
                set_health(&self.health, Status::Standby, None);
                let hot = self.hot_standby();
                let owned = self.wait_owned().await;
                if let Some(hot) = hot {
                    taken = hot.take().await;
                }
                if !owned {
                    return;
                }
                backoff = BACKOFF_FIRST;
            }
            let attempt = match (bound.take(), taken) {
                (Some(b), _) => Ok(b),
                (None, Some(socket)) => BoundChannel::with_socket(
                    self.spec.clone(),
                    &self.data_dir,
                    self.counters.clone(),
                    socket,
                ),
                (None, None) => BoundChannel::bind_with_counters(
                    self.spec.clone(),
                    &self.data_dir,
                    self.counters.clone(),
                ),
            }
            .map(|b| b.with_live(self.live.clone()));
            let mut handle = match attempt.and_then(BoundChannel::spawn) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(channel = %self.spec.name, error = %e, retry_in = ?backoff, "channel failed to start");
                    set_health(&self.health, Status::Failed, Some(e.to_string()));
                    if !self.wait(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            set_health(&self.health, Status::Active, None);
            backoff = BACKOFF_FIRST;
            let mut standby = false;
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => {
                        if let Err(e) = handle.stop().await {
                            tracing::warn!(channel = %self.spec.name, error = %e, "channel ended with an error");
                        }
                        return;
                    }
                    Some(command) = self.commands.recv() => match command {
                        SupervisorCommand::Reconfigure { settings, reply } => {
                            let result = handle.reconfigure((*settings).clone());
                            if result.is_ok() {
                                self.spec.settings = *settings;
                            }
                            let _ = reply.send(result);
                        }
                        #[cfg(feature = "testing")]
                        SupervisorCommand::InjectPanic => handle.inject_panic(),
                    },
                    changed = self.owned.changed() => {
                        if changed.is_ok() && *self.owned.borrow() {
                            continue;
                        }
                        // Lease lost or not renewed in time: stop relaying
                        // now, before the lease can expire elsewhere.
                        if let Err(e) = handle.stop().await {
                            tracing::warn!(channel = %self.spec.name, error = %e, "channel ended with an error");
                        }
                        if changed.is_err() {
                            return;
                        }
                        tracing::info!(channel = %self.spec.name, "standby: this node does not hold the channel's lease");
                        standby = true;
                        break;
                    }
                    ended = handle.finished() => {
                        let why = match ended {
                            Ok(()) => "channel task ended".to_string(),
                            Err(e) => e.to_string(),
                        };
                        tracing::error!(channel = %self.spec.name, error = %why, "channel failed; restarting");
                        set_health(&self.health, Status::Failed, Some(why));
                        break;
                    }
                }
            }
            if standby {
                continue;
            }
            if !self.wait(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// A multicast channel waits bound and joined (hot standby) on a node
    /// with leases; None for any other, or when that bind fails (said in
    /// `error`: the channel then binds at take-over, as a unicast one).
    fn hot_standby(&self) -> Option<HotStandby> {
        if !self.hot || !HotStandby::applies(&self.spec) {
            return None;
        }
        match HotStandby::start(&self.spec, self.counters.clone()) {
            Ok(hot) => Some(hot),
            Err(e) => {
                tracing::warn!(channel = %self.spec.name, error = %e, "no hot standby; the port is bound at take-over");
                set_health(
                    &self.health,
                    Status::Standby,
                    Some(format!("hot standby: {e}")),
                );
                None
            }
        }
    }

    /// Waits, in standby, until the channel may run; applies
    /// reconfigurations meanwhile. False when cancelled.
    async fn wait_owned(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                changed = self.owned.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if *self.owned.borrow_and_update() {
                        return true;
                    }
                }
                Some(command) = self.commands.recv() => match command {
                    SupervisorCommand::Reconfigure { settings, reply } => {
                        self.spec.settings = *settings;
                        let _ = reply.send(Ok(()));
                    }
                    #[cfg(feature = "testing")]
                    SupervisorCommand::InjectPanic => {}
                },
            }
        }
    }

    /// Sleeps `d` unless cancelled first; also applies reconfigurations to
    /// the settings the next attempt will use. False when cancelled.
    async fn wait(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                Some(command) = self.commands.recv() => match command {
                    SupervisorCommand::Reconfigure { settings, reply } => {
                        self.spec.settings = *settings;
                        let _ = reply.send(Ok(()));
                    }
                    // Nothing runs to panic.
                    #[cfg(feature = "testing")]
                    SupervisorCommand::InjectPanic => {}
                },
            }
        }
    }
}

/// The history sampler: once a second while the engine lives. A late tick
/// is skipped rather than bunched, so a sample stays about one second.
async fn sample_every_second(engine: std::sync::Weak<Engine>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        match engine.upgrade() {
            Some(engine) => engine.sample_history(),
            None => return,
        }
    }
}

fn spec_of(record: &ChannelRecord, settings: &ChannelSettings) -> ChannelSpec {
    ChannelSpec {
        name: record.name.clone(),
        port: record.port,
        schema_json: record.schema_json.clone(),
        settings: settings.clone(),
    }
}

fn set_health(health: &Mutex<Health>, status: Status, error: Option<String>) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    h.status = status;
    h.error = error;
}

/// A channel refusing its settings: a destination that cannot be opened is
/// the user's `config.outputs`, anything else their `config`.
fn invalid_settings(e: ChannelError) -> EngineError {
    match e {
        ChannelError::Destination { address, source } => {
            invalid("config.outputs", format!("destination {address}: {source}"))
        }
        ChannelError::Nats(e) => invalid("config.outputs.nats", e.to_string()),
        other => invalid("config", other.to_string()),
    }
}

/// Settings refused by the one validation: `field` names the setting
/// (`config.decimation.factor`), the message is check-config's.
fn invalid_config(e: SettingsError) -> EngineError {
    EngineError::Invalid {
        field: e.field(),
        message: e.to_string(),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The checks a registration through the API gets, for a record that comes
/// another way (`speedrelay registry import`): its name, port, schema and
/// stored settings.
pub fn check_record(record: &ChannelRecord) -> Result<(), EngineError> {
    check_identity(&record.name, record.port, &record.schema_json)?;
    settings_from(&record.config).map_err(invalid_config)?;
    Ok(())
}

/// A channel's name, port and Avro schema, as every registration needs them.
fn check_identity(name: &str, port: u16, schema_json: &str) -> Result<(), EngineError> {
    check_name(name)?;
    if port == 0 {
        return Err(invalid("port", "must be between 1 and 65535"));
    }
    Validator::from_json(schema_json).map_err(|e| invalid("schema", e.to_string()))?;
    Ok(())
}

/// Names follow `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub(crate) fn check_name(name: &str) -> Result<(), EngineError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        ))
    }
}

/// Where the registry of `data_dir` lives: `.speedrelay/registry.redb`,
/// a name no channel directory can take (channel names start with a letter
/// or digit). A registry left at `<data_dir>/registry.redb` by an older
/// version is moved there first.
pub fn registry_path(data_dir: &std::path::Path) -> Result<PathBuf, EngineError> {
    let dir = data_dir.join(".speedrelay");
    let path = dir.join("registry.redb");
    let old = data_dir.join("registry.redb");
    let old_is_registry = std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_file());
    if old_is_registry && !path.exists() {
        let storage = |detail: String| {
            EngineError::Registry(RegistryError::Storage {
                path: old.clone(),
                detail,
            })
        };
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
            .create(&dir)
            .map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
        std::fs::rename(&old, &path)
            .map_err(|e| storage(format!("cannot move it to {}: {e}", path.display())))?;
        tracing::info!(from = %old.display(), to = %path.display(), "registry moved beside the archives' directories");
    }
    Ok(path)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc_datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = crate::archive::civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
