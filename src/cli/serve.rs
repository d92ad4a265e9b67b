//! `speedrelay serve`: flags, configuration discovery, the runtime, start-up
//! and the clean stop on SIGINT/SIGTERM (SPEC §2, §6).

use std::path::{Path, PathBuf};

use clap::Parser;
use speedrelay::api::ApiOptions;
use speedrelay::config::files::{self, ConfigError, FileConfig};
use speedrelay::engine::{Engine, EngineOptions, Status};
use tokio_util::sync::CancellationToken;

/// Where a relay keeps its data, found the same way by `serve` and
/// `registry`.
#[derive(clap::Args, Default)]
pub struct DataLocation {
    /// A config directory (relay.yaml, optional global.yaml) or one YAML
    /// file. Default: ./config, else /etc/speedrelay, when it holds a
    /// relay.yaml; else built-in defaults and no channels.
    #[arg(long, env = "SPEEDRELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where archives and the registry go. Default: storage.avro_path of
    /// global.yaml, else ./data.
    #[arg(long, env = "SPEEDRELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl DataLocation {
    /// The configuration in force (discovery: --config, SPEEDRELAY_CONFIG,
    /// ./config, /etc/speedrelay), with where it came from logged.
    pub fn load(&self) -> Result<FileConfig, String> {
        let config = self.config.clone().or_else(|| {
            ["config", "/etc/speedrelay"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.join("relay.yaml").is_file())
        });
        match &config {
            Some(path) if self.config.is_none() => {
                tracing::info!(config = %path.display(), "configuration found");
            }
            Some(_) => {}
            None => tracing::info!(
                "no configuration found (no --config, SPEEDRELAY_CONFIG, ./config/relay.yaml or \
                 /etc/speedrelay/relay.yaml): running on built-in defaults, no channels until \
                 some are registered"
            ),
        }
        match &config {
            Some(path) => files::load(path).map_err(|e| match e {
                ConfigError::Violations { .. } => format!(
                    "invalid configuration {}; nothing was started:\n{e}",
                    path.display()
                ),
                e => e.to_string(),
            }),
            None => Ok(FileConfig::default()),
        }
    }

    /// --data-dir, SPEEDRELAY_DATA_DIR, storage.avro_path, ./data.
    pub fn data_dir(&self, baseline: &FileConfig) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| baseline.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("data"))
    }
}

#[derive(Parser, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    location: DataLocation,
    /// Address of the HTTP API. Default: api.listen of global.yaml, else
    /// 127.0.0.1:8080.
    #[arg(long, env = "SPEEDRELAY_API")]
    api: Option<String>,
    /// Runtime worker threads; 1 runs everything on one thread (the
    /// Raspberry Pi profile). Default: one per core.
    #[arg(long, env = "SPEEDRELAY_THREADS")]
    threads: Option<usize>,
    /// A host name the API answers to besides IP addresses and localhost
    /// (repeatable; requests naming another Host get 403). Adds to
    /// api.allowed_hosts of global.yaml.
    #[arg(
        long = "allowed-host",
        env = "SPEEDRELAY_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// An origin (scheme://host[:port]) whose pages may call the API from a
    /// browser (repeatable). Adds to api.cors_origins of global.yaml.
    #[arg(
        long = "cors-origin",
        env = "SPEEDRELAY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Join a cluster: NATS server URLs (nats://host:port, comma-separated
    /// or repeated). Credentials come from SPEEDRELAY_NATS_TOKEN,
    /// SPEEDRELAY_NATS_USER/SPEEDRELAY_NATS_PASSWORD or a credentials file,
    /// never from here. Needs a build with the `cluster` feature.
    #[arg(long, env = "SPEEDRELAY_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// This relay's name in the cluster. Default: cluster.node of
    /// global.yaml, else the host name.
    #[arg(long, env = "SPEEDRELAY_NODE")]
    node: Option<String>,
    /// A placement group this node belongs to (comma-separated or
    /// repeated): channels placed in the group may run here. Replaces
    /// cluster.groups of the config files.
    #[arg(long = "group", env = "SPEEDRELAY_GROUPS", value_delimiter = ',')]
    groups: Vec<String>,
}

pub fn serve(args: ServeArgs) -> Result<(), String> {
    let baseline = args.location.load()?;
    let data_dir = args.location.data_dir(&baseline);
    let runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let api = args
        .api
        .clone()
        .or_else(|| baseline.api_listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let api_options = api_options(&args, &baseline)?;
    let cluster = cluster_options(&args, &baseline)?;
    runtime.block_on(run(baseline, &data_dir, &api, api_options, cluster))
}

#[cfg(feature = "cluster")]
type ClusterOptions = speedrelay::cluster::ClusterOptions;
/// Without the feature there is nothing to configure.
#[cfg(not(feature = "cluster"))]
type ClusterOptions = std::convert::Infallible;

/// The cluster to join, if any: `--nats` or the `cluster` section.
fn cluster_options(
    args: &ServeArgs,
    baseline: &FileConfig,
) -> Result<Option<ClusterOptions>, String> {
    #[cfg(feature = "cluster")]
    {
        ClusterOptions::resolve(
            &args.nats,
            args.node.as_deref(),
            &args.groups,
            baseline.cluster.as_ref(),
        )
        .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cluster"))]
    {
        let asked = !args.nats.is_empty()
            || baseline
                .cluster
                .as_ref()
                .is_some_and(|c| !c.nats.is_empty());
        if asked {
            return Err(
                "--nats: this speedrelay was built without cluster support; build it \
                        with `cargo build --release --features cluster`"
                    .into(),
            );
        }
        Ok(None)
    }
}

/// The API's settings from the flags, environment and config files. Read
/// before anything starts, so a dangerous combination stops start-up.
fn api_options(args: &ServeArgs, baseline: &FileConfig) -> Result<ApiOptions, String> {
    // The token is read from the environment only here, never logged. Set
    // but empty would silently mean "no token": refuse it.
    let token = match std::env::var("SPEEDRELAY_API_TOKEN") {
        Ok(t) if t.is_empty() => {
            return Err(
                "SPEEDRELAY_API_TOKEN is set but empty: set a token, or unset the \
                        variable to run without one"
                    .into(),
            );
        }
        Ok(t) => Some(t),
        Err(_) => baseline.api_token.clone(),
    };
    let lower = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    };
    let mut allowed_hosts = lower(&baseline.allowed_hosts);
    allowed_hosts.extend(lower(&args.allowed_hosts));
    let mut cors_origins = lower(&baseline.cors_origins);
    cors_origins.extend(lower(&args.cors_origins));
    for origin in &cors_origins {
        let ok = origin == "*"
            || ["http://", "https://"].iter().any(|scheme| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
            });
        if !ok {
            return Err(format!(
                "--cors-origin {origin}: not an origin such as http://localhost:5000 (no path), nor *"
            ));
        }
    }
    if token.is_some() && cors_origins.iter().any(|o| o == "*") {
        return Err(
            "--cors-origin '*' with an API token would let any web page use the token a \
             browser holds: list the origins instead"
                .into(),
        );
    }
    // Descriptors: the API's connection cap is part of the reserve that
    // registrations leave free; a low limit lowers the cap.
    let fd_limit = speedrelay::descriptors::raise_limit()
        .map_err(|e| tracing::warn!(error = %e, "cannot raise the file descriptor limit"))
        .ok()
        .or_else(|| speedrelay::descriptors::limit().ok())
        .unwrap_or(1024);
    let max_connections =
        (fd_limit / 8).clamp(16, speedrelay::api::DEFAULT_MAX_CONNECTIONS as u64) as usize;
    Ok(ApiOptions {
        token,
        config_dir: baseline.config_dir.clone(),
        ports: baseline.ports,
        max_connections,
        allowed_hosts,
        cors_origins,
        ..ApiOptions::default()
    })
}

/// Start-up order of SPEC §6: config (already loaded) → registry → seed →
/// channels; then wait for a signal and stop every channel cleanly.
async fn run(
    baseline: FileConfig,
    data_dir: &Path,
    api: &str,
    api_options: ApiOptions,
    cluster: Option<ClusterOptions>,
) -> Result<(), String> {
    let mut signals = ShutdownSignals::install()?;
    // Not world-accessible: archives and the registry are the operator's.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
        .create(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    let mut options = EngineOptions::new(data_dir, baseline.defaults.clone());
    options.fd_reserve = api_options.max_connections as u64 + speedrelay::descriptors::SPARE;
    options.seed_locally = cluster.is_none();
    #[cfg(feature = "cluster")]
    {
        // With leases a channel waits in standby until this node holds it.
        options.standby = cluster.as_ref().is_some_and(|c| c.lease.is_some());
    }
    // Before the channels start: a channel with outputs.nats may start here
    // before NATS answers (its records are then counted as dropped).
    if cluster.is_some() {
        speedrelay::nats_out::node::enable();
    }
    let engine = Engine::start(options, &baseline.channels)
        .await
        .map_err(|e| e.to_string())?;
    #[cfg(feature = "cluster")]
    if let Some(options) = cluster {
        let node = options.node.clone();
        let servers = options.servers.join(",");
        match speedrelay::cluster::Cluster::connect(options).await {
            Ok(c) => {
                tracing::info!(node = %node, nats = %servers, "joining the cluster");
                speedrelay::nats_out::node::set_cluster(&c);
                engine.join(c, &baseline.channels);
            }
            Err(e) => {
                engine.shutdown().await;
                return Err(e.to_string());
            }
        }
    }
    #[cfg(not(feature = "cluster"))]
    let _ = cluster;
    let listener = match tokio::net::TcpListener::bind(api).await {
        Ok(l) => l,
        Err(e) => {
            engine.shutdown().await;
            return Err(format!("cannot listen on {api} for the API: {e}"));
        }
    };
    let api_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop_api = CancellationToken::new();
    let api_task = tokio::spawn(speedrelay::api::serve(
        listener,
        engine.clone(),
        api_options,
        stop_api.clone(),
    ));
    speedrelay::memory::release_startup_code();
    let channels = engine.list();
    let active = channels
        .iter()
        .filter(|c| c.status == Status::Active)
        .count();
    tracing::info!(
        channels = channels.len(),
        active,
        api = %api_addr,
        data_dir = %data_dir.display(),
        "speedrelay running; SIGINT or SIGTERM stops it"
    );
    notify_service_manager("READY=1");
    signals.recv().await;
    notify_service_manager("STOPPING=1");
    tracing::info!("stopping: flushing every archive");
    stop_api.cancel();
    let _ = api_task.await;
    #[cfg(feature = "cluster")]
    if let Some(c) = engine.cluster() {
        c.shutdown();
    }
    engine.shutdown().await;
    // Every channel has stopped: its lease can go to another node now.
    #[cfg(feature = "cluster")]
    if let Some(c) = engine.cluster() {
        c.release_leases().await;
    }
    Ok(())
}

/// SIGINT and SIGTERM, registered before anything starts so that a signal
/// arriving during start-up is never the default "terminate at once".
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let install =
            |kind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Tells systemd (`Type=notify`) how the service is doing: one datagram to
/// the unix socket named by `$NOTIFY_SOCKET` (a leading '@' names an
/// abstract socket). Without the variable, nothing happens; a failure is
/// logged and never stops the relay.
fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    }
    .and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager ({state})");
    }
}
