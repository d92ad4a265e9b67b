//! The typed channel settings: what `relay.yaml`, `global.yaml` and the
//! API's `config` objects say about one channel.
//!
//! Every field has a default, so a partial document deserializes; layers
//! are merged as JSON and checked ([`super::layers`]) before they get here.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Deserializer, Serialize};

/// Everything that shapes one channel's data path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    pub decimation: Decimation,
    pub outputs: Outputs,
    pub rotation: Rotation,
    /// `None` keeps every file.
    pub retention: Option<Retention>,
    pub archive: ArchiveSettings,
    /// Check every datagram against the schema before forwarding it
    /// (default). `false` trusts senders: every datagram is forwarded
    /// unchecked at full rate, but the archive still takes only datagrams
    /// that decode as exactly one record (checked only while archiving is
    /// enabled), so archive files stay readable; the others are counted in
    /// `archive_rejected`. The decimator leaves them out as well (except
    /// `downsample`, which does not read records).
    pub validate: bool,
    pub socket: SocketSettings,
    /// In a cluster with leases: which nodes may relay the channel. `None`
    /// (the default): any node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Pins a channel to one node, or to the nodes of one group
/// (`cluster.groups` of each node): only those rank for its lease.
/// `{"node": "relay-a"}` or `{"group": "lab-b"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Node(String),
    Group(String),
}

impl Placement {
    /// Whether the node `node`, member of `groups`, may relay the channel.
    pub fn admits(&self, node: &str, groups: &[String]) -> bool {
        match self {
            Placement::Node(n) => n == node,
            Placement::Group(g) => groups.iter().any(|x| x == g),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Node(n) => write!(f, "node {n}"),
            Placement::Group(g) => write!(f, "group {g}"),
        }
    }
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            decimation: Decimation::default(),
            outputs: Outputs::default(),
            rotation: Rotation::default(),
            retention: None,
            archive: ArchiveSettings::default(),
            validate: true,
            socket: SocketSettings::default(),
            placement: None,
        }
    }
}

/// The decimated stream: one output per window of `factor` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Decimation {
    pub enabled: bool,
    /// Window length in records, at least 1.
    pub factor: u32,
    pub algorithm: Algorithm,
}

impl Default for Decimation {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 10,
            algorithm: Algorithm::Downsample,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The last record of every window, unchanged.
    Downsample,
    /// Per numeric field, the arithmetic mean of the window.
    Average,
    /// Two records per window: per-field minimum, then maximum.
    Minmax,
    /// Per numeric field, the root mean square of the window.
    Rms,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Downsample => "downsample",
            Algorithm::Average => "average",
            Algorithm::Minmax => "minmax",
            Algorithm::Rms => "rms",
        }
    }
}

/// Where valid records go: byte-identical at full rate, and decimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outputs {
    #[serde(deserialize_with = "one_or_many")]
    pub full_rate: Vec<Destination>,
    #[serde(deserialize_with = "one_or_many")]
    pub decimated: Vec<Destination>,
    /// Publish the channel's records to NATS too (feature `cluster`, a
    /// node started with `--nats`); `None` (the default) publishes nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsOutput>,
    /// Send runs of equal-length datagrams to a UDP destination as one
    /// `sendmsg` with `UDP_SEGMENT` (GSO): a fraction of the sender's CPU
    /// per datagram. Default on; where the kernel refuses it on a route,
    /// that destination falls back by itself. Written out only when off.
    #[serde(skip_serializing_if = "is_true")]
    pub gso: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            full_rate: Vec::new(),
            decimated: Vec::new(),
            nats: None,
            gso: true,
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The NATS output: every valid record, byte-identical, on
/// `<subject_prefix>.<channel>.raw` and every decimated one on
/// `<subject_prefix>.<channel>.dec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOutput {
    /// The subjects' first tokens; default `speedrelay`.
    pub subject_prefix: String,
    /// Publish the full-rate stream on `.raw` (default true).
    pub raw: bool,
    /// Publish the decimated stream on `.dec` (default true).
    pub decimated: bool,
    /// Headers (schema fingerprint, sequence number) on `.raw` messages:
    /// off by default, as they would double the size of small records.
    pub raw_headers: bool,
    /// Headers on `.dec` messages: on by default.
    pub decimated_headers: bool,
    /// A JetStream stream capturing the channel's two subjects, for replay
    /// (`speedrelay subscribe --replay`); `None` (the default): no stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<NatsStream>,
}

/// `outputs.nats.stream`: the limits of the channel's JetStream stream
/// (the oldest records are discarded past either). Bounded by
/// `config/relay.schema.json`: 1 s to a year; 64 KiB (a datagram fits) to
/// 1 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsStream {
    /// Records older than this many seconds are discarded (default 3600).
    pub max_age_s: u64,
    /// The stream keeps at most this many bytes (default 1 GiB).
    pub max_bytes: u64,
}

impl Default for NatsStream {
    fn default() -> Self {
        Self {
            max_age_s: 3600,
            max_bytes: 1 << 30,
        }
    }
}

impl Default for NatsOutput {
    fn default() -> Self {
        Self {
            subject_prefix: "speedrelay".into(),
            raw: true,
            decimated: true,
            raw_headers: false,
            decimated_headers: true,
            stream: None,
        }
    }
}

/// One UDP destination, unicast or multicast. The multicast options are
/// ignored for unicast addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(deserialize_with = "destination_address")]
    pub address: IpAddr,
    #[serde(deserialize_with = "destination_port")]
    pub port: u16,
    /// Outgoing interface for multicast, by its IPv4 address. `None` lets the
    /// kernel's routing table choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<Ipv4Addr>,
    /// Multicast TTL; 1 (this subnet only) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Deliver multicast to listeners on this host too; true when absent.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub multicast_loop: Option<bool>,
}

impl Destination {
    pub fn new(address: IpAddr, port: u16) -> Self {
        Self {
            address,
            port,
            interface: None,
            ttl: None,
            multicast_loop: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rotation {
    pub mode: RotationMode,
    /// Seconds for `time`, bytes for `size`.
    pub threshold: u64,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            mode: RotationMode::Time,
            threshold: 3600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationMode {
    Time,
    Size,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub mode: RetentionMode,
    /// Seconds for `ttl`, bytes for `quota`.
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    Ttl,
    Quota,
}

/// The archive of a channel and when its blocks reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    pub enabled: bool,
    pub codec: Codec,
    pub layout: Layout,
    /// A block is written when it holds this many records…
    pub flush_records: u32,
    /// …or this many bytes of records…
    pub flush_bytes: u32,
    /// …or its first record is this old (the most a crash can lose).
    pub flush_ms: u32,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            codec: Codec::Null,
            layout: Layout::Channel,
            flush_records: 10_000,
            flush_bytes: 1 << 20,
            flush_ms: 1000,
        }
    }
}

/// Where a channel's archive files go in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `<data_dir>/<channel>/<channel>-<stamp>.avro`.
    #[default]
    Channel,
    /// `<data_dir>/<channel>-<stamp>.avro`: SpeedData's readers look for
    /// `data/*.avro`.
    Flat,
}

impl Layout {
    /// The directory a channel's files go to.
    pub fn dir(self, data_dir: &std::path::Path, channel: &str) -> std::path::PathBuf {
        match self {
            Layout::Channel => data_dir.join(channel),
            Layout::Flat => data_dir.to_path_buf(),
        }
    }
}

/// Avro container block codecs (the names are Avro's `avro.codec` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Null,
    Deflate,
    Zstandard,
    Snappy,
}

impl Codec {
    /// The `avro.codec` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Null => "null",
            Codec::Deflate => "deflate",
            Codec::Zstandard => "zstandard",
            Codec::Snappy => "snappy",
        }
    }
}

/// The receiving socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketSettings {
    /// Address to bind the channel's port on.
    pub bind: IpAddr,
    /// SO_RCVBUF to request, in bytes; the kernel may grant less
    /// (`net.core.rmem_max`), which is logged.
    pub recv_buffer: u32,
    /// Largest datagram accepted; longer ones are counted invalid.
    pub max_datagram: u32,
    /// After the first datagram of a partial batch, wait at most this many
    /// microseconds for more before processing it (0: never wait). Fewer
    /// wake-ups and sends per record at moderate rates, for at most this
    /// much added latency. Bounded by [`MAX_COALESCE_US`].
    pub coalesce_us: u32,
}

/// The longest `socket.coalesce_us` accepted: one second.
pub const MAX_COALESCE_US: u32 = 1_000_000;

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            recv_buffer: 8 << 20,
            max_datagram: 65_535,
            coalesce_us: 0,
        }
    }
}

/// One destination (SpeedData writes one) or a list of them; `null` is none. Written out rather
/// than as an untagged enum so that an error inside a destination (a bad
/// address, port 0) reaches the user with its field, instead of "did not
/// match any variant".
fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<Destination>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    use serde::de::{MapAccess, SeqAccess, Visitor};

    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<Destination>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a destination {address, port} or a list of them")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Destination::deserialize(MapAccessDeserializer::new(map)).map(|d| vec![d])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// A destination port: 0 means "any" when binding, and nothing to send to.
fn destination_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let port = u64::deserialize(deserializer)?;
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(serde::de::Error::custom(format!(
            "{port} is not a port to send to (1-65535)"
        ))),
    }
}

/// A destination address: the unspecified address (0.0.0.0, ::) is for
/// binding; as a destination it is almost surely a mistaken bind address.
fn destination_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let address = IpAddr::deserialize(deserializer)?;
    if address.is_unspecified() {
        return Err(serde::de::Error::custom(format!(
            "{address} is the bind-any address, not a destination (127.0.0.1 or ::1 is this host)"
        )));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_document_takes_defaults() {
        let s: ChannelSettings =
            serde_yaml::from_str("decimation: {factor: 3, algorithm: rms}").unwrap();
        assert_eq!(s.decimation.factor, 3);
        assert_eq!(s.decimation.algorithm, Algorithm::Rms);
        assert!(s.validate);
        assert_eq!(s.archive.codec, Codec::Null);
    }

    #[test]
    fn outputs_take_one_or_a_list() {
        let s: ChannelSettings = serde_yaml::from_str(
            "outputs:\n  full_rate: {address: 239.1.1.1, port: 6000, ttl: 2, loop: false}\n  decimated: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 2}]",
        )
        .unwrap();
        assert_eq!(s.outputs.full_rate.len(), 1);
        assert_eq!(s.outputs.full_rate[0].ttl, Some(2));
        assert_eq!(s.outputs.full_rate[0].multicast_loop, Some(false));
        assert_eq!(s.outputs.decimated.len(), 2);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<ChannelSettings, _> = serde_yaml::from_str("decimashun: 3");
        assert!(r.is_err());
    }
}
