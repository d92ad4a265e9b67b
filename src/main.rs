//! The `speedrelay` command line (SPEC §2).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::check_config::check_config;
use cli::registry::RegistryCommand;
use cli::serve::{DataLocation, ServeArgs, serve};
use cli::verify::verify;

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
    Channels(cli::channels::ChannelsArgs),
    /// A full-screen live table of a running relay's channels (rates,
    /// drops, invalid, archive, a sparkline of the last minute), refreshed
    /// from its HTTP API. q, Esc or Ctrl-C quit.
    Top(cli::top::TopArgs),
    /// Send valid random records of a schema to a port: the demo source and
    /// load generator.
    ///
    /// Every Avro type is filled with random values; a `long` field named
    /// `time` gets the current time in nanoseconds. 1024 records are
    /// generated up front and cycled through, sent in batches (sendmmsg).
    /// Prints the achieved rate at the end.
    Send(cli::send::SendArgs),
    /// Re-emit a NATS subject as UDP (a build with the `cluster` feature):
    /// each message's payload, byte-identical, as one datagram to a unicast
    /// or multicast address — a channel's `.raw` or `.dec` stream published
    /// by a relay's `outputs.nats`, on another host or site.
    #[cfg(feature = "cluster")]
    Subscribe(cli::subscribe::SubscribeArgs),
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
    /// Back up, restore or move the registry of a stopped relay (every
    /// registration with its settings, and the channels deleted through the
    /// API), as one JSON document.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
        #[command(flatten)]
        location: DataLocation,
    },
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
        Command::Channels(args) => cli::channels::run(args).map_err(|e| e.to_string()),
        Command::Top(args) => cli::top::run(args).map_err(|e| e.to_string()),
        Command::Send(args) => cli::send::run(args).map_err(|e| e.to_string()),
        #[cfg(feature = "cluster")]
        Command::Subscribe(args) => cli::subscribe::run(args).map_err(|e| e.to_string()),
        Command::Verify {
            files,
            repair,
            schema,
        } => return verify(&files, repair, schema),
        Command::Registry { command, location } => location
            .load()
            .and_then(|baseline| cli::registry::run(command, &location.data_dir(&baseline))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("speedrelay: {message}");
            ExitCode::FAILURE
        }
    }
}
