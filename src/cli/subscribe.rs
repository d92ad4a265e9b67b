//! `speedrelay subscribe` (feature `cluster`): takes messages from a NATS
//! subject (a channel's `.raw` or `.dec`, published by `outputs.nats`) and
//! re-emits each payload, byte-identical, as one UDP datagram to a unicast
//! or multicast address, so consumers on another host or site receive a
//! channel as if they were next to the relay.
//!
//! With `--replay` it reads the channel's JetStream stream
//! (`outputs.nats.stream`) through an ordered consumer instead: what the
//! stream holds (all of it, or the last SECONDS), in order, then what is
//! published from there on, with no gap or duplicate between the two.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use speedrelay::cluster::ClusterOptions;
use speedrelay::config::Destination;

/// `speedrelay subscribe SUBJECT --to HOST:PORT …`
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// The NATS subject, e.g. speedrelay.engine.raw (wildcards work, but
    /// every message goes to the one --to address).
    pub subject: String,
    /// Where each message goes as one datagram: host:port, unicast or
    /// multicast (a multicast group is sent with --ttl and --interface).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// NATS server URLs, comma-separated. Credentials come from
    /// SPEEDRELAY_NATS_TOKEN, SPEEDRELAY_NATS_USER/SPEEDRELAY_NATS_PASSWORD
    /// or SPEEDRELAY_NATS_CREDENTIALS, and a TLS CA from SPEEDRELAY_NATS_CA,
    /// as for `serve`.
    #[arg(
        long,
        env = "SPEEDRELAY_NATS",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats: Vec<String>,
    /// Multicast TTL (default 1: this subnet only).
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Outgoing interface for multicast, by its IPv4 address.
    #[arg(long, value_name = "IPV4")]
    pub interface: Option<Ipv4Addr>,
    /// Stop after this many messages (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Replay from the JetStream stream that captures SUBJECT (a channel
    /// with outputs.nats.stream): `all` it holds, or the last SECONDS;
    /// then go on with new messages.
    #[arg(long, value_name = "all|SECONDS", value_parser = parse_replay)]
    pub replay: Option<Replay>,
}

/// Where `--replay` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    All,
    Last(Duration),
}

/// `all`, or whole seconds from 1 to a year (a stream keeps at most a year).
fn parse_replay(text: &str) -> Result<Replay, String> {
    if text == "all" {
        return Ok(Replay::All);
    }
    match text.parse::<u64>() {
        Ok(s @ 1..=31_536_000) => Ok(Replay::Last(Duration::from_secs(s))),
        _ => Err("expected `all` or whole seconds from 1 to 31536000".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("--to {0}: {1}")]
    To(String, String),
    #[error("{0}")]
    Nats(String),
    #[error("cannot open the UDP socket for {0}: {1}")]
    Socket(SocketAddr, std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn run(args: SubscribeArgs) -> Result<(), SubscribeError> {
    let to = resolve(&args.to)?;
    if to.ip().is_unspecified() {
        return Err(SubscribeError::To(
            args.to.clone(),
            "not a destination address".into(),
        ));
    }
    let dest = Destination {
        ttl: args.ttl,
        interface: args.interface,
        ..Destination::new(to.ip(), to.port())
    };
    let socket =
        speedrelay::udp::connect_destination(&dest).map_err(|e| SubscribeError::Socket(to, e))?;
    let options = ClusterOptions::resolve(&args.nats, Some("subscribe"), &[], None)
        .map_err(|e| SubscribeError::Nats(e.to_string()))?
        .ok_or_else(|| SubscribeError::Nats("--nats: no server given".into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SubscribeError::Runtime)?;
    runtime.block_on(relay(args, options, socket, to))
}

fn resolve(to: &str) -> Result<SocketAddr, SubscribeError> {
    let bad = |m: String| SubscribeError::To(to.into(), m);
    let mut addrs = to.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    let first = addrs
        .next()
        .ok_or_else(|| bad("the name has no address".into()))?;
    if first.port() == 0 {
        return Err(bad("port 0 is not a destination".into()));
    }
    Ok(first)
}

async fn relay(
    args: SubscribeArgs,
    options: ClusterOptions,
    socket: std::net::UdpSocket,
    to: SocketAddr,
) -> Result<(), SubscribeError> {
    let servers = options.servers.join(",");
    let addrs: Vec<async_nats::ServerAddr> = options
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| SubscribeError::Nats(format!("NATS URL: {e}")))?;
    let connect = options
        .secure(async_nats::ConnectOptions::new().name("speedrelay subscribe"))
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None);
    let client = connect
        .connect(addrs)
        .await
        .map_err(|e| SubscribeError::Nats(format!("NATS {servers}: {e}")))?;
    let mut messages = match args.replay {
        None => live(&client, &args.subject).await?,
        Some(from) => replay(&client, &args.subject, from).await?,
    };
    // The server has the subscription once a flush returns: from here no
    // message published to the subject is missed.
    client
        .flush()
        .await
        .map_err(|e| SubscribeError::Nats(format!("NATS {servers}: {e}")))?;
    let socket =
        tokio::net::UdpSocket::from_std(socket).map_err(|e| SubscribeError::Socket(to, e))?;
    eprintln!("speedrelay subscribe: {} -> {to}", args.subject);
    let (mut sent, mut failed) = (0u64, 0u64);
    let limit = args.count.unwrap_or(u64::MAX);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while sent + failed < limit {
        tokio::select! {
            _ = &mut ctrl_c => break,
            message = messages.next() => {
                let Some(message) = message else { break };
                let payload = match message {
                    Ok(p) => p,
                    // The ordered consumer recreates itself after a gap
                    // or a reconnection and goes on where it was.
                    Err(e) => {
                        eprintln!("speedrelay subscribe: {e}");
                        continue;
                    }
                };
                match socket.send(&payload).await {
                    Ok(_) => sent += 1,
                    // A consumer not (yet) listening on a unicast port: the
                    // next datagram may reach it; count and go on.
                    Err(_) => failed += 1,
                }
            }
        }
    }
    eprintln!("speedrelay subscribe: {sent} datagrams sent, {failed} failed");
    Ok(())
}

/// The payloads published to `subject` from now on.
async fn live(
    client: &async_nats::Client,
    subject: &str,
) -> Result<BoxStream<'static, Result<Bytes, String>>, SubscribeError> {
    let sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| SubscribeError::Nats(format!("subscribe {subject}: {e}")))?;
    Ok(sub.map(|m| Ok(m.payload)).boxed())
}

/// The payloads on `subject` that its JetStream stream holds from `from`,
/// in order, then the new ones.
async fn replay(
    client: &async_nats::Client,
    subject: &str,
    from: Replay,
) -> Result<BoxStream<'static, Result<Bytes, String>>, SubscribeError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let js = async_nats::jetstream::new(client.clone());
    let name = js.stream_by_subject(subject).await.map_err(|e| {
        SubscribeError::Nats(format!(
            "--replay: no JetStream stream captures {subject} ({e}); the channel needs \
             outputs.nats.stream"
        ))
    })?;
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| SubscribeError::Nats(format!("--replay: stream {name}: {e}")))?;
    let deliver_policy = match from {
        Replay::All => DeliverPolicy::All,
        Replay::Last(d) => DeliverPolicy::ByStartTime {
            start_time: SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .into(),
        },
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| SubscribeError::Nats(format!("--replay: consumer on {name}: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| SubscribeError::Nats(format!("--replay: read {name}: {e}")))?;
    eprintln!("speedrelay subscribe: replaying {subject} from stream {name}");
    Ok(messages
        .map(|m| m.map(|m| m.message.payload).map_err(|e| e.to_string()))
        .boxed())
}
