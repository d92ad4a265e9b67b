//! The NATS output (`outputs.nats`, feature `cluster`): a channel's valid
//! records, byte-identical, on `<prefix>.<channel>.raw` and its decimated
//! records on `<prefix>.<channel>.dec`.
//!
//! The receive loop never waits on NATS: per batch it copies the records it
//! publishes into one buffer (the one payload copy this output needs: the
//! receive buffers are reused by the next batch) and hands it to a bounded
//! queue with `try_send`. A full queue drops the batch and counts its
//! records in `nats_dropped`. A publisher task per channel drains the queue
//! with the node's NATS client, so a slow or absent server only ever fills
//! the queue.
//!
//! Messages with headers carry the channel's lease epoch
//! (`Speedrelay-Epoch`, 0 without leases), read when the output opens (the
//! channel binds, which it does only once this node holds its lease, or its
//! settings change): a channel that changes hands restarts on the new holder
//! under a higher epoch, so a receiver tells a take-over (new epoch,
//! sequence from 1) from a gap (same epoch, sequence jumps).
//!
//! With `stream`, the publisher first creates or updates a JetStream stream
//! capturing the channel's two subjects (off the receive loop, once per
//! channel start, then retried with backoff while it fails); records are
//! still published with core NATS, which the stream captures without any
//! acknowledgement to wait for.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::{NatsOutput, NatsStream};
use crate::counters::ChannelCounters;

/// Batches (of at most one receive batch each) that may wait for NATS
/// before new ones are dropped: 1,024 × 64 records.
pub const QUEUE_BATCHES: usize = 1024;

/// Header with the channel schema's Avro fingerprint (CRC-64-AVRO, hex).
pub const HEADER_FINGERPRINT: &str = "Speedrelay-Fingerprint";
/// Header with the record's sequence number on its subject, from 1 per
/// channel task (restarts begin again at 1).
pub const HEADER_SEQ: &str = "Speedrelay-Seq";
/// Header with the channel's lease epoch when its publisher started
/// (`cluster.lease_ms`); 0 on a node without leases.
pub const HEADER_EPOCH: &str = "Speedrelay-Epoch";

#[derive(Debug, thiserror::Error)]
pub enum NatsOutError {
    #[error(
        "outputs.nats needs a node in a cluster: start speedrelay with --nats \
         (a build with the `cluster` feature)"
    )]
    NotJoined,
    #[error("outputs.nats: the subject {0:?} is not a valid NATS subject")]
    Subject(String),
}

/// Which of the two subjects a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Raw,
    Dec,
}

/// Records of one receive batch, packed back to back.
struct Batch {
    stream: Stream,
    data: Bytes,
    /// End offset of each record in `data`.
    ends: Vec<u32>,
    /// Records of this subject dropped at the full queue just before this
    /// batch: the publisher skips their sequence numbers, so a receiver
    /// sees the loss as a jump.
    skipped: u64,
}

/// The channel task's end of the output: what it publishes and the queue.
pub struct NatsTap {
    raw: bool,
    dec: bool,
    /// Records dropped since the last batch queued, per subject (only the
    /// channel task touches them; atomics keep the tap `Sync`).
    raw_skipped: AtomicU64,
    dec_skipped: AtomicU64,
    tx: mpsc::Sender<Batch>,
    counters: Arc<ChannelCounters>,
}

impl NatsTap {
    /// Whether valid records go to `.raw`.
    pub fn raw(&self) -> bool {
        self.raw
    }

    /// Whether decimated records go to `.dec`.
    pub fn decimated(&self) -> bool {
        self.dec
    }

    /// Queues a batch of valid records for `.raw`; never waits.
    pub fn offer_raw<'a>(&self, records: impl Iterator<Item = &'a [u8]> + Clone) {
        self.offer(Stream::Raw, records);
    }

    /// Queues a batch of decimated records for `.dec`; never waits.
    pub fn offer_decimated<'a>(&self, records: impl Iterator<Item = &'a [u8]> + Clone) {
        self.offer(Stream::Dec, records);
    }

    fn offer<'a>(&self, stream: Stream, records: impl Iterator<Item = &'a [u8]> + Clone) {
        let count = records.clone().count() as u64;
        if count == 0 {
            return;
        }
        let skipped = match stream {
            Stream::Raw => &self.raw_skipped,
            Stream::Dec => &self.dec_skipped,
        };
        // Full: drop before copying anything.
        let Ok(permit) = self.tx.try_reserve() else {
            self.counters.nats_dropped.fetch_add(count, Relaxed);
            skipped.fetch_add(count, Relaxed);
            return;
        };
        let total = records.clone().map(<[u8]>::len).sum();
        let mut data = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(count as usize);
        for r in records {
            data.extend_from_slice(r);
            ends.push(data.len() as u32);
        }
        permit.send(Batch {
            stream,
            data: Bytes::from(data),
            ends,
            skipped: skipped.swap(0, Relaxed),
        });
    }
}

/// Opens the output of `channel`: `Ok(None)` when it has none, an error when
/// it has one this node cannot serve (not in a cluster) or whose subjects
/// are not valid. Starts no task: see [`NatsTap::spawn`].
pub fn open(
    channel: &str,
    schema_json: &str,
    settings: Option<&NatsOutput>,
    counters: &Arc<ChannelCounters>,
) -> Result<Option<NatsPending>, NatsOutError> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if !node::enabled() {
        return Err(NatsOutError::NotJoined);
    }
    let base = format!("{}.{channel}", settings.subject_prefix);
    // Channel names may hold dots (more tokens), but no empty token.
    if base.split('.').any(str::is_empty) {
        return Err(NatsOutError::Subject(format!("{base}.raw")));
    }
    let fingerprint = apache_avro::Schema::parse_str(schema_json)
        .map(|s| s.fingerprint::<apache_avro::rabin::Rabin>().to_string())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let stream = settings.stream.map(|limits| {
        Box::new(StreamSpec {
            channel: channel.to_string(),
            name: stream_name(&base),
            subjects: vec![format!("{base}.raw"), format!("{base}.dec")],
            limits,
        })
    });
    Ok(Some(NatsPending {
        tap: NatsTap {
            raw: settings.raw,
            dec: settings.decimated,
            raw_skipped: AtomicU64::new(0),
            dec_skipped: AtomicU64::new(0),
            tx,
            counters: counters.clone(),
        },
        publisher: Publisher {
            raw_subject: format!("{base}.raw").into(),
            dec_subject: format!("{base}.dec").into(),
            raw_headers: settings.raw_headers,
            dec_headers: settings.decimated_headers,
            fingerprint: fingerprint.into(),
            // The channel binds (and opens this) only once this node holds
            // its lease, so the epoch is the one it relays under.
            epoch: node::epoch(channel),
            stream,
            rx,
            counters: counters.clone(),
        },
    }))
}

/// The JetStream stream of a channel whose subjects start with `base`: the
/// subjects' tokens joined by `_` (stream names cannot hold dots).
pub fn stream_name(base: &str) -> String {
    base.replace('.', "_")
}

/// The stream a channel's publisher creates or updates.
#[derive(Debug, Clone)]
struct StreamSpec {
    channel: String,
    name: String,
    subjects: Vec<String>,
    limits: NatsStream,
}

/// An opened output whose publisher is not running yet (no runtime needed
/// to open one, so a channel's settings are checked before it starts).
pub struct NatsPending {
    tap: NatsTap,
    publisher: Publisher,
}

impl NatsPending {
    /// Starts the publisher task (inside a tokio runtime); it ends once the
    /// returned tap is dropped and the queue is drained.
    pub fn spawn(self) -> NatsTap {
        tokio::spawn(self.publisher.run());
        self.tap
    }
}

/// Strings boxed (`Box<str>`): an opened output travels in the channel's
/// reconfigure command, which clippy keeps small.
struct Publisher {
    raw_subject: Box<str>,
    dec_subject: Box<str>,
    raw_headers: bool,
    dec_headers: bool,
    fingerprint: Box<str>,
    /// The channel's lease epoch when opened (`Speedrelay-Epoch`).
    epoch: u64,
    /// Boxed: rarely set, and it keeps `NatsPending` small in commands.
    stream: Option<Box<StreamSpec>>,
    rx: mpsc::Receiver<Batch>,
    counters: Arc<ChannelCounters>,
}

impl Publisher {
    #[cfg(feature = "cluster")]
    async fn run(mut self) {
        use async_nats::{HeaderMap, Subject};
        let raw_subject = Subject::from(&*self.raw_subject);
        let dec_subject = Subject::from(&*self.dec_subject);
        let (mut raw_seq, mut dec_seq) = (0u64, 0u64);
        let epoch = self.epoch.to_string();
        // The stream first, so that it captures the first records (they
        // wait in the queue meanwhile); then kept trying beside publishing.
        let _keeper = match self.stream.take() {
            Some(spec) => {
                let keeper = StreamKeeper {
                    spec,
                    counters: self.counters.clone(),
                };
                if keeper.attempt().await {
                    None
                } else {
                    let retry = tokio::spawn(keeper.retry());
                    Some(tokio_util::task::AbortOnDropHandle::new(retry))
                }
            }
            None => None,
        };
        while let Some(batch) = self.rx.recv().await {
            let (subject, headers, seq) = match batch.stream {
                Stream::Raw => (&raw_subject, self.raw_headers, &mut raw_seq),
                Stream::Dec => (&dec_subject, self.dec_headers, &mut dec_seq),
            };
            *seq += batch.skipped;
            let Some(client) = node::client() else {
                // Joined, but not connected yet.
                let n = batch.ends.len() as u64;
                self.counters.nats_dropped.fetch_add(n, Relaxed);
                *seq += n;
                continue;
            };
            let mut start = 0usize;
            for &end in &batch.ends {
                let payload = batch.data.slice(start..end as usize);
                start = end as usize;
                *seq += 1;
                let sent = if headers {
                    let mut h = HeaderMap::new();
                    h.insert(HEADER_FINGERPRINT, &*self.fingerprint);
                    h.insert(HEADER_SEQ, seq.to_string());
                    h.insert(HEADER_EPOCH, epoch.as_str());
                    client
                        .publish_with_headers(subject.clone(), h, payload)
                        .await
                } else {
                    client.publish(subject.clone(), payload).await
                };
                let counter = match sent {
                    Ok(()) => &self.counters.nats_published,
                    Err(_) => &self.counters.nats_dropped,
                };
                counter.fetch_add(1, Relaxed);
            }
        }
    }

    /// Without the feature no node is ever joined, so [`open`] never gets
    /// here; the queue is drained and counted as dropped all the same.
    #[cfg(not(feature = "cluster"))]
    async fn run(mut self) {
        let _ = (
            &self.raw_subject,
            &self.dec_subject,
            self.raw_headers,
            self.dec_headers,
            &self.fingerprint,
            self.epoch,
        );
        if let Some(s) = &self.stream {
            let _ = (&s.channel, &s.name, &s.subjects, s.limits);
        }
        while let Some(batch) = self.rx.recv().await {
            let _ = (batch.stream, &batch.data, batch.skipped);
            let n = batch.ends.len() as u64;
            self.counters.nats_dropped.fetch_add(n, Relaxed);
        }
    }
}

/// Creates or updates a channel's JetStream stream.
#[cfg(feature = "cluster")]
struct StreamKeeper {
    spec: Box<StreamSpec>,
    counters: Arc<ChannelCounters>,
}

#[cfg(feature = "cluster")]
impl StreamKeeper {
    /// One attempt; true once the stream is as the settings say. A failure
    /// is logged, counted and shown in the channel's `error`.
    async fn attempt(&self) -> bool {
        let outcome = match node::client() {
            Some(client) => ensure_stream(client, &self.spec).await,
            None => Err("not connected to NATS yet".to_string()),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(channel = %self.spec.channel, stream = %self.spec.name, "JetStream stream ready");
                self.counters.set_nats_stream_error(None);
                true
            }
            Err(e) => {
                let e = format!("stream {}: {e}", self.spec.name);
                // Logged when it changes, not at every retry.
                if self.counters.nats_stream_error().as_deref() != Some(e.as_str()) {
                    tracing::warn!(channel = %self.spec.channel, error = %e, "cannot set up the JetStream stream; records are still published, retrying");
                }
                self.counters.nats_stream_errors.fetch_add(1, Relaxed);
                self.counters.set_nats_stream_error(Some(e));
                false
            }
        }
    }

    /// Retries every 1 s doubling to 30 s until an attempt succeeds; ends
    /// with the publisher (dropped with it).
    async fn retry(self) {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            if self.attempt().await {
                return;
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
        }
    }
}

/// Creates the stream, or updates its limits when it exists for these
/// subjects; refuses to touch a stream of that name that captures others.
#[cfg(feature = "cluster")]
async fn ensure_stream(client: &async_nats::Client, spec: &StreamSpec) -> Result<(), String> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    let js = async_nats::jetstream::new(client.clone());
    let max_age = std::time::Duration::from_secs(spec.limits.max_age_s);
    // The schema bounds max_bytes to 1 TiB, well inside i64.
    let max_bytes = i64::try_from(spec.limits.max_bytes).unwrap_or(i64::MAX);
    match js.get_stream(&spec.name).await {
        Ok(stream) => {
            let mut config = stream.cached_info().config.clone();
            let mut ours = spec.subjects.clone();
            let mut theirs = config.subjects.clone();
            ours.sort();
            theirs.sort();
            if ours != theirs {
                return Err(format!(
                    "exists and captures {theirs:?}, not this channel's {ours:?}; delete it or \
                     change subject_prefix"
                ));
            }
            if config.max_age == max_age && config.max_bytes == max_bytes {
                return Ok(());
            }
            config.max_age = max_age;
            config.max_bytes = max_bytes;
            js.update_stream(config).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(Config {
                name: spec.name.clone(),
                subjects: spec.subjects.clone(),
                max_age,
                max_bytes,
                max_messages: -1,
                max_messages_per_subject: -1,
                max_consumers: -1,
                discard: DiscardPolicy::Old,
                storage: StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// This node's NATS connection, for the outputs: set once by `serve`.
pub mod node {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    static ENABLED: AtomicBool = AtomicBool::new(false);

    #[cfg(feature = "cluster")]
    static CLIENT: std::sync::OnceLock<async_nats::Client> = std::sync::OnceLock::new();

    /// This process joins a cluster: channels may have `outputs.nats`.
    /// Called before the engine starts its channels, which the client can
    /// come after (start-up never waits for NATS).
    pub fn enable() {
        ENABLED.store(true, Relaxed);
    }

    pub(crate) fn enabled() -> bool {
        ENABLED.load(Relaxed)
    }

    /// The client every channel's publisher uses from now on.
    #[cfg(feature = "cluster")]
    pub fn set_client(client: async_nats::Client) {
        enable();
        let _ = CLIENT.set(client);
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn client() -> Option<&'static async_nats::Client> {
        CLIENT.get()
    }

    #[cfg(feature = "cluster")]
    static CLUSTER: std::sync::OnceLock<std::sync::Weak<crate::cluster::Cluster>> =
        std::sync::OnceLock::new();

    /// The cluster whose leases give the epoch header; sets its client as
    /// the publishers' one.
    #[cfg(feature = "cluster")]
    pub fn set_cluster(cluster: &std::sync::Arc<crate::cluster::Cluster>) {
        set_client(cluster.client().clone());
        let _ = CLUSTER.set(std::sync::Arc::downgrade(cluster));
    }

    /// The epoch of `channel`'s lease as this node knows it; 0 without
    /// leases (every node relays every channel: there is no take-over).
    pub(crate) fn epoch(channel: &str) -> u64 {
        #[cfg(feature = "cluster")]
        if let Some((_, epoch)) = CLUSTER
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|c| c.lease_of(channel))
        {
            return epoch;
        }
        let _ = channel;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records dropped at the full queue are numbered all the same: the
    /// next batch queued carries their count, and the publisher skips
    /// their sequence numbers (a receiver sees a jump, not a silent loss).
    #[test]
    fn records_dropped_at_the_queue_leave_a_jump_in_the_sequence() {
        node::enable();
        let counters = Arc::new(ChannelCounters::default());
        let settings = NatsOutput::default();
        let schema = r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}"#;
        let mut pending = open("c", schema, Some(&settings), &counters)
            .expect("opens")
            .expect("an output");
        let tap = &pending.tap;
        let one: [&[u8]; 1] = [b"x"];
        for _ in 0..QUEUE_BATCHES {
            tap.offer_raw(one.iter().copied());
        }
        // Full: 3 raw and 1 decimated record dropped.
        tap.offer_raw([&b"a"[..], b"b", b"c"].into_iter());
        tap.offer_decimated(one.iter().copied());
        assert_eq!(counters.nats_dropped.load(Relaxed), 4);
        // Room for two more.
        for _ in 0..2 {
            let b = pending.publisher.rx.try_recv().expect("queued");
            assert_eq!(b.skipped, 0);
        }
        tap.offer_raw(one.iter().copied());
        tap.offer_decimated(one.iter().copied());
        let mut rest = Vec::new();
        while let Ok(b) = pending.publisher.rx.try_recv() {
            rest.push(b);
        }
        let skips: Vec<_> = rest[QUEUE_BATCHES - 2..]
            .iter()
            .map(|b| (b.stream, b.skipped))
            .collect();
        assert_eq!(skips, [(Stream::Raw, 3), (Stream::Dec, 1)]);
        assert!(rest[..QUEUE_BATCHES - 2].iter().all(|b| b.skipped == 0));
    }
}
