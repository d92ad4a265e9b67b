//! The `speedrelay` command line (SPEC §2).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use speedrelay::api::ApiOptions;
use speedrelay::config::files::{self, ConfigError, FileConfig};
use speedrelay::engine::{Engine, EngineOptions, Status};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "speedrelay", version, about = "UDP/Avro telemetry relay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeArgs),
    /// Check a configuration against the JSON Schemas shipped in config/
    /// (built into this binary), and each channel's Avro schema file. Prints
    /// every violation as `FILE: /json/pointer: message`, one per line.
    /// Exit status: 0 valid, 1 invalid, 2 unreadable.
    CheckConfig {
        /// A config directory (relay.yaml, optional global.yaml) or one YAML file.
        path: PathBuf,
    },
    /// Manage the channels of a running relay through its HTTP API.
    Channels(speedrelay::client::ChannelsArgs),
    /// Send valid random records of a schema to a port: the demo source and
    /// load generator.
    ///
    /// Every Avro type is filled with random values; a `long` field named
    /// `time` gets the current time in nanoseconds. 1024 records are
    /// generated up front and cycled through, sent in batches (sendmmsg).
    /// Prints the achieved rate at the end.
    Send(speedrelay::send::SendArgs),
    /// Check archive files: schema, codec, blocks, records, and whether the
    /// tail is torn (a crash or a full disk). One line per file. Exit status:
    /// 0 every file healthy (or repaired with --repair), 1 a torn tail found
    /// (without --repair), 2 a file is unreadable or not an Avro container.
    Verify {
        /// Archive files (.avro).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Cut a torn file back to its last complete block (atomically: the
        /// good part is written to a temporary file renamed over it).
        #[arg(long)]
        repair: bool,
        /// Also print each file's schema (JSON).
        #[arg(long)]
        schema: bool,
    },
}

#[derive(Parser, Default)]
struct ServeArgs {
    /// A config directory (relay.yaml, optional global.yaml) or one YAML
    /// file. Default: ./config, else /etc/speedrelay, when it holds a
    /// relay.yaml; else built-in defaults and no channels.
    #[arg(long, env = "SPEEDRELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Where archives go. Default: storage.avro_path of global.yaml, else ./data.
    #[arg(long, env = "SPEEDRELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { path } => return check_config(&path),
        Command::Channels(args) => speedrelay::client::run(args).map_err(|e| e.to_string()),
        Command::Send(args) => speedrelay::send::run(args).map_err(|e| e.to_string()),
        Command::Verify {
            files,
            repair,
            schema,
        } => return verify(&files, repair, schema),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("speedrelay: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    // Discovery: --config, SPEEDRELAY_CONFIG, ./config, /etc/speedrelay.
    let config = args.config.clone().or_else(|| {
        ["config", "/etc/speedrelay"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("relay.yaml").is_file())
    });
    match &config {
        Some(path) if args.config.is_none() => {
            tracing::info!(config = %path.display(), "configuration found");
        }
        Some(_) => {}
        None => tracing::info!(
            "no configuration found (no --config, SPEEDRELAY_CONFIG, ./config/relay.yaml or \
             /etc/speedrelay/relay.yaml): running on built-in defaults, no channels until \
             some are registered"
        ),
    }
    let baseline = match &config {
        Some(path) => files::load(path).map_err(|e| match e {
            ConfigError::Violations { .. } => format!(
                "invalid configuration {}; nothing was started:\n{e}",
                path.display()
            ),
            e => e.to_string(),
        })?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| baseline.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("data"));
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
        ClusterOptions::resolve(&args.nats, args.node.as_deref(), baseline.cluster.as_ref())
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

/// `speedrelay check-config PATH`: `PATH: ok (N channels)` and 0; every
/// violation on stdout and 1; a file that cannot be read, 2.
fn check_config(path: &Path) -> ExitCode {
    match files::load(path) {
        Ok(b) => {
            let n = b.channels.len();
            let plural = if n == 1 { "" } else { "s" };
            println!("{}: ok ({n} channel{plural})", path.display());
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("speedrelay: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            // Violations, or a YAML syntax error: the config itself is wrong.
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `speedrelay verify FILE... [--repair] [--schema]`: one line per file;
/// the exit status is the worst file's.
fn verify(files: &[PathBuf], repair: bool, print_schema: bool) -> ExitCode {
    use speedrelay::verify::{self, Repaired};
    let mut status = 0u8;
    for path in files {
        let p = path.display();
        let outcome = if repair {
            verify::repair(path)
        } else {
            verify::scan(path).map(Repaired::Healthy)
        };
        let report = match outcome {
            Err(e) => {
                eprintln!("speedrelay: {p}: {e}");
                status = 2;
                continue;
            }
            Ok(Repaired::Removed(before)) => {
                if before.file_len == 0 {
                    println!("{p}: removed: it was empty (0 bytes, no Avro header)");
                } else {
                    println!("{p}: removed: it held no complete header, so no record");
                }
                continue;
            }
            Ok(Repaired::Truncated { before, after }) => {
                println!(
                    "{p}: repaired: cut from {} to {} bytes ({}); kept {}",
                    before.file_len,
                    after.file_len,
                    before
                        .tail
                        .as_ref()
                        .map_or(String::new(), |t| t.problem.to_string()),
                    summary(&after)
                );
                after
            }
            Ok(Repaired::Healthy(report)) => {
                match &report.tail {
                    None => println!("{p}: healthy: {}", summary(&report)),
                    // No header, so nothing to keep: repair removes the file.
                    Some(_) if report.file_len == 0 => {
                        status = status.max(1);
                        println!("{p}: empty: no Avro header (0 bytes); --repair removes it");
                    }
                    Some(_) if report.header_len == 0 => {
                        status = status.max(1);
                        println!(
                            "{p}: torn: the Avro header is incomplete ({} bytes), so no \
                             record is readable; --repair removes it",
                            report.file_len
                        );
                    }
                    Some(tail) => {
                        status = status.max(1);
                        println!(
                            "{p}: torn: {} bytes unreadable {tail}; readable: {}; \
                             --repair cuts the file to these {} bytes",
                            report.file_len - report.complete_len,
                            summary(&report),
                            report.complete_len
                        );
                    }
                }
                report
            }
        };
        if print_schema && !report.schema.is_empty() {
            println!("{}", report.schema);
        }
    }
    ExitCode::from(status)
}

/// `12 blocks, 1200 records, codec zstandard, schema ns.Name, 45678 bytes`.
fn summary(r: &speedrelay::verify::Report) -> String {
    let name = serde_json::from_str::<serde_json::Value>(&r.schema)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Object(o) => {
                let name = o.get("name")?.as_str()?.to_string();
                match o.get("namespace").and_then(|n| n.as_str()) {
                    Some(ns) if !ns.is_empty() && !name.contains('.') => {
                        Some(format!("{ns}.{name}"))
                    }
                    _ => Some(name),
                }
            }
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| "(unnamed)".to_string());
    format!(
        "{} blocks, {} records, codec {}, schema {name}, {} bytes",
        r.blocks, r.records, r.codec, r.complete_len
    )
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
