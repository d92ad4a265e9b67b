//! The channel task: one per channel, owning its UDP socket. Per receive
//! batch it validates every datagram, forwards the valid ones
//! byte-identical to the full-rate destinations, feeds the decimator whose
//! output goes to the decimated destinations, and packs records into archive
//! blocks that the archive task writes off the hot path.
//!
//! Life cycle: [`BoundChannel::bind`] does everything that can fail (schema,
//! port, destinations) without a runtime task; [`BoundChannel::spawn`] starts
//! the task; [`ChannelHandle::stop`] stops receiving, drains what the kernel
//! already queued, and returns once the archive file is closed.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveHandle, ArchiveWriter, Block};
use crate::config::{ChannelSettings, Destination, MAX_COALESCE_US};
use crate::counters::ChannelCounters;
use crate::decimator::{DecimatedBatch, Decimator};
use crate::live::{self, LiveTap};
use crate::nats_out::{self, NatsOutError, NatsPending, NatsTap};
use crate::udp::{self, BATCH, DestSocket, Receiver, RecvBatch, SendReport};
use crate::validator::{Captured, InvalidDatum, InvalidKind, SchemaError, Validator};

/// Batches taken in one wake-up before the task yields to its timers and
/// commands, so a flooded channel still flushes and obeys a stop.
const DRAIN_BATCHES: usize = 16;

/// Most batches drained from the kernel queue after a stop; bounds the stop
/// of a channel that is being flooded.
const STOP_DRAIN_BATCHES: usize = 4096;

/// Archive blocks that may wait for the disk before new ones are dropped.
const ARCHIVE_QUEUE: usize = 64;

/// What a channel is: its name, port, schema and settings.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    pub name: String,
    pub port: u16,
    /// The Avro schema as JSON text; also written into every archive header.
    pub schema_json: String,
    pub settings: ChannelSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid schema: {0}")]
    Schema(#[from] SchemaError),
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("cannot open destination {address}: {source}")]
    Destination {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("receiving on port {port} failed: {source}")]
    Receive { port: u16, source: io::Error },
    #[error(transparent)]
    Nats(#[from] NatsOutError),
    #[error("the channel task ended unexpectedly: {0}")]
    Task(String),
}

/// A channel whose socket is bound and whose destinations are open, not yet
/// receiving.
pub struct BoundChannel {
    spec: ChannelSpec,
    validator: Arc<Validator>,
    socket: StdUdpSocket,
    local_addr: SocketAddr,
    full_rate: Vec<DestSocket>,
    decimated: Vec<DestSocket>,
    nats: Option<NatsPending>,
    data_dir: PathBuf,
    counters: Arc<ChannelCounters>,
    live: Arc<LiveTap>,
    batch_limit: usize,
}

impl BoundChannel {
    /// Compiles the schema, binds the port and opens the destinations.
    /// Nothing is left open when it fails.
    pub fn bind(spec: ChannelSpec, data_dir: &Path) -> Result<Self, ChannelError> {
        Self::bind_with_counters(spec, data_dir, Arc::default())
    }

    /// Like [`BoundChannel::bind`], counting into `counters`, so that a
    /// restarted channel keeps its totals.
    pub fn bind_with_counters(
        spec: ChannelSpec,
        data_dir: &Path,
        counters: Arc<ChannelCounters>,
    ) -> Result<Self, ChannelError> {
        // The schema first: a bad one binds nothing.
        Validator::from_json(&spec.schema_json)?;
        let sock = &spec.settings.socket;
        let bound = udp::bind_receiver(sock.bind, spec.port, sock.recv_buffer as usize).map_err(
            |source| ChannelError::Bind {
                port: spec.port,
                source,
            },
        )?;
        counters.binds.fetch_add(1, Relaxed);
        Self::with_socket(spec, data_dir, counters, bound)
    }

    /// Like [`BoundChannel::bind_with_counters`] on a socket bound already:
    /// a hot standby's, taken over without binding again.
    pub fn with_socket(
        spec: ChannelSpec,
        data_dir: &Path,
        counters: Arc<ChannelCounters>,
        bound: udp::BoundSocket,
    ) -> Result<Self, ChannelError> {
        let validator = Arc::new(Validator::from_json(&spec.schema_json)?);
        let sock = &spec.settings.socket;
        // Linux reports twice the usable size; warn only when it is below
        // the request, and once per process: the cause (net.core.rmem_max)
        // is the same for every channel.
        let granted = bound.recv_buffer_granted / 2;
        if granted < sock.recv_buffer as usize {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Relaxed) {
                tracing::warn!(
                    channel = %spec.name,
                    requested = sock.recv_buffer,
                    granted,
                    "receive buffer clamped by the kernel (raise net.core.rmem_max); \
                     further channels clamped alike are logged at debug level"
                );
            } else {
                tracing::debug!(channel = %spec.name, requested = sock.recv_buffer, granted, "receive buffer clamped");
            }
        }
        let local_addr = bound
            .socket
            .local_addr()
            .map_err(|source| ChannelError::Bind {
                port: spec.port,
                source,
            })?;
        let (full_rate, decimated) = open_destinations(&spec.settings)?;
        let nats = nats_out::open(
            &spec.name,
            &spec.schema_json,
            spec.settings.outputs.nats.as_ref(),
            &counters,
        )?;
        let data_dir = data_dir.to_path_buf();
        Ok(Self {
            spec,
            validator,
            socket: bound.socket,
            local_addr,
            full_rate,
            decimated,
            nats,
            data_dir,
            counters,
            live: Arc::default(),
            batch_limit: BATCH,
        })
    }

    /// Offers records to the live viewers of `tap` (kept by the engine
    /// across restarts, like the counters).
    pub fn with_live(mut self, tap: Arc<LiveTap>) -> Self {
        self.live = tap;
        self
    }

    /// Receives at most `limit` datagrams per system call (1..=64; 64 by
    /// default). Not a user setting: the batching test runs the same input
    /// with 1 and with 64 to show the batched path changes no output.
    #[cfg(feature = "testing")]
    pub fn with_batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<ChannelCounters> {
        &self.counters
    }

    /// Starts the channel task. Must be called inside a tokio runtime.
    pub fn spawn(self) -> Result<ChannelHandle, ChannelError> {
        let port = self.spec.port;
        let settings = &self.spec.settings;
        // A coalescing channel's socket is watched through its own epoll
        // set with a timer (two more descriptors; see `udp::Receiver`).
        let rx = Receiver::new(self.socket, settings.socket.coalesce_us > 0)
            .map_err(|source| ChannelError::Bind { port, source })?;
        let archive = settings
            .archive
            .enabled
            .then(|| start_archive(&self.data_dir, &self.spec, &self.counters));
        let cancel = CancellationToken::new();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let slots = self.validator.numeric_slots().len();
        let mut batch = RecvBatch::new(settings.socket.max_datagram as usize);
        batch.set_limit(self.batch_limit);
        let task = ChannelTask {
            name: self.spec.name.clone(),
            port,
            rx,
            batch,
            decimator: Decimator::new(
                self.validator.clone(),
                settings.decimation.algorithm,
                settings.decimation.factor,
            ),
            decimation_enabled: settings.decimation.enabled,
            validator: self.validator,
            validate: settings.validate,
            captured: vec![Captured::default(); slots],
            decimated_out: DecimatedBatch::default(),
            full_rate: self.full_rate,
            decimated: self.decimated,
            nats: self.nats.map(NatsPending::spawn),
            archive,
            data_dir: self.data_dir,
            spec: self.spec.clone(),
            batch_limit: self.batch_limit,
            block: Vec::new(),
            block_count: 0,
            flush_records: u64::from(settings.archive.flush_records.max(1)),
            flush_bytes: settings.archive.flush_bytes.max(1) as usize,
            flush_after: Duration::from_millis(u64::from(settings.archive.flush_ms)),
            flush_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            counters: self.counters.clone(),
            live: self.live,
            live_next: std::time::Instant::now(),
            cancel: cancel.clone(),
            commands,
        };
        tracing::info!(channel = %self.spec.name, port, "channel started");
        let join = tokio::spawn(task.run());
        Ok(ChannelHandle {
            name: self.spec.name,
            schema_json: self.spec.schema_json,
            local_addr: self.local_addr,
            counters: self.counters,
            commands: commands_tx,
            cancel,
            join,
        })
    }
}

/// The channel's archive writer task, with the spec's settings.
fn start_archive(
    data_dir: &Path,
    spec: &ChannelSpec,
    counters: &Arc<ChannelCounters>,
) -> ArchiveHandle {
    let settings = &spec.settings;
    let writer = ArchiveWriter::new(
        settings.archive.layout.dir(data_dir, &spec.name),
        &spec.name,
        &spec.schema_json,
        settings.archive,
        settings.rotation,
        settings.retention,
    );
    archive::spawn(writer, counters.clone(), ARCHIVE_QUEUE)
}

fn open_destinations(
    settings: &ChannelSettings,
) -> Result<(Vec<DestSocket>, Vec<DestSocket>), ChannelError> {
    let open = |dests: &[Destination]| {
        dests
            .iter()
            .map(|d| {
                udp::connect_destination(d)
                    .map(|socket| DestSocket::new(socket, settings.outputs.gso))
                    .map_err(|source| ChannelError::Destination {
                        address: SocketAddr::new(d.address, d.port),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let full_rate = open(&settings.outputs.full_rate)?;
    let decimated = if settings.decimation.enabled {
        open(&settings.outputs.decimated)?
    } else {
        Vec::new()
    };
    Ok((full_rate, decimated))
}

/// Changes for a running channel, applied between two batches.
enum Command {
    Reconfigure {
        settings: Box<ChannelSettings>,
        full_rate: Vec<DestSocket>,
        decimated: Vec<DestSocket>,
        /// Opened from the new settings; used only if they changed, so an
        /// unchanged output keeps its queue and sequence numbers.
        nats: Option<NatsPending>,
    },
    /// Fault injection: the task panics, as a bug in it would.
    #[cfg(feature = "testing")]
    Panic,
}

/// The running channel, as its owner sees it. Dropping it does not stop the
/// task; call [`ChannelHandle::stop`].
pub struct ChannelHandle {
    name: String,
    /// For a NATS output opened by a reconfiguration (its fingerprint).
    schema_json: String,
    local_addr: SocketAddr,
    counters: Arc<ChannelCounters>,
    commands: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
    join: JoinHandle<Result<(), ChannelError>>,
}

impl ChannelHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<ChannelCounters> {
        &self.counters
    }

    /// Applies new settings to the running channel: destinations,
    /// decimation, validation, the archive (on, off, codec, rotation,
    /// retention, block bounds) and the socket's receive buffer, largest
    /// datagram and coalescing wait. The bind address cannot change on a bound socket; the
    /// engine refuses that before it gets here. New destinations are opened here so an error reaches the caller and
    /// leaves the running channel as it was.
    pub fn reconfigure(&self, settings: ChannelSettings) -> Result<(), ChannelError> {
        let (full_rate, decimated) = open_destinations(&settings)?;
        let nats = nats_out::open(
            &self.name,
            &self.schema_json,
            settings.outputs.nats.as_ref(),
            &self.counters,
        )?;
        let command = Command::Reconfigure {
            settings: Box::new(settings),
            full_rate,
            decimated,
            nats,
        };
        self.commands
            .send(command)
            .map_err(|_| ChannelError::Task("channel task is not running".into()))
    }

    /// Fault injection for tests: makes the channel task panic between two
    /// batches, as a bug would, so its supervisor's restart can be tested.
    #[cfg(feature = "testing")]
    pub fn inject_panic(&self) {
        let _ = self.commands.send(Command::Panic);
    }

    /// Resolves when the task ends on its own (an error or a panic); a
    /// stop requested through [`ChannelHandle::stop`] is not seen here.
    /// After it resolves, drop the handle instead of calling `stop`.
    pub async fn finished(&mut self) -> Result<(), ChannelError> {
        match (&mut self.join).await {
            Ok(r) => r,
            Err(e) => Err(ChannelError::Task(e.to_string())),
        }
    }

    /// Stops receiving, processes what the kernel already queued, writes and
    /// closes the archive file, and returns the task's outcome.
    pub async fn stop(self) -> Result<(), ChannelError> {
        self.cancel.cancel();
        let outcome = match self.join.await {
            Ok(r) => r,
            Err(e) => Err(ChannelError::Task(e.to_string())),
        };
        tracing::info!(channel = %self.name, "channel stopped");
        outcome
    }
}

/// The state the receive loop owns. Fields are grouped by the output they
/// feed; nothing here is shared except `counters`.
struct ChannelTask {
    name: String,
    port: u16,
    rx: Receiver,
    /// Reused receive buffers: the only copy of a datagram's bytes until the
    /// archive block.
    batch: RecvBatch,

    validator: Arc<Validator>,
    validate: bool,
    /// Numeric fields of the datagram being processed, for the decimator.
    captured: Vec<Captured>,

    decimator: Decimator,
    decimation_enabled: bool,
    decimated_out: DecimatedBatch,

    /// Destination sockets: non-blocking, not registered with the runtime
    /// (see [`udp::send_all`]).
    full_rate: Vec<DestSocket>,
    decimated: Vec<DestSocket>,
    /// The NATS output's queue (`outputs.nats`), if any.
    nats: Option<NatsTap>,

    archive: Option<ArchiveHandle>,
    /// What a (re)started archive needs: the data directory, and the spec
    /// with the settings in effect (also what a reconfiguration is
    /// compared with).
    data_dir: PathBuf,
    spec: ChannelSpec,
    batch_limit: usize,
    /// Encoded records of the block being filled.
    block: Vec<u8>,
    block_count: u64,
    flush_records: u64,
    flush_bytes: usize,
    flush_after: Duration,
    /// Armed when a block gets its first record, so an idle channel has no timer.
    flush_timer: Pin<Box<Sleep>>,

    counters: Arc<ChannelCounters>,
    /// Live viewers: looked at once per batch (one relaxed load).
    live: Arc<LiveTap>,
    /// No record is offered to live viewers before this.
    live_next: std::time::Instant,
    cancel: CancellationToken,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl ChannelTask {
    async fn run(mut self) -> Result<(), ChannelError> {
        let outcome = self.receive_until_cancelled().await;
        if outcome.is_ok() {
            self.drain_queued().await;
        }
        self.ship_block();
        if let Some(archive) = self.archive.take() {
            archive.close().await;
        }
        outcome
    }

    async fn receive_until_cancelled(&mut self) -> Result<(), ChannelError> {
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                Some(command) = self.commands.recv() => self.apply(command).await,
                _ = &mut self.flush_timer, if self.block_count > 0 => self.ship_block(),
                ready = self.rx.readable() => {
                    ready.map_err(|source| ChannelError::Receive { port: self.port, source })?;
                    let mut more = true;
                    for _ in 0..DRAIN_BATCHES {
                        let mut n = self.receive()?;
                        if n > 0 && !self.batch.is_full() && self.rx.coalescing() {
                            n = self.coalesce().await?;
                        }
                        if n > 0 {
                            self.process_batch().await;
                        }
                        if n < self.batch.limit() {
                            more = false;
                            break;
                        }
                    }
                    // Still flooded: let the other tasks of this worker (the
                    // API, quieter channels) run. tokio's budget alone only
                    // yields after 128 wake-ups, 131,072 datagrams here,
                    // which kept a flooded worker from the API for seconds.
                    if more {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    /// After a stop, processes what the kernel had already accepted.
    async fn drain_queued(&mut self) {
        for _ in 0..STOP_DRAIN_BATCHES {
            // Straight to the kernel: a stop right after datagrams arrived
            // may come before tokio saw the socket readable.
            match self.batch.recv_queued(&self.rx) {
                Ok(0) | Err(_) => return,
                Ok(_) => self.process_batch().await,
            }
        }
    }

    /// How long a partial batch may wait for more (`socket.coalesce_us`).
    fn coalesce_after(&self) -> Duration {
        let us = self.spec.settings.socket.coalesce_us.min(MAX_COALESCE_US);
        Duration::from_micros(u64::from(us))
    }

    /// Lets the partial batch gather for `socket.coalesce_us`, counted
    /// from now (just after its first receive): one sleep until the
    /// deadline, during which arrivals wake nobody, then one receive into
    /// the free slots; the batch's length. A stop ends the wait (what was
    /// received is processed and the queue drained as usual). Commands and
    /// the flush timer wait at most this long too. The batch's age when
    /// the wait ended is recorded (`coalesce_waited_us`,
    /// `coalesce_longest_us`): the relay's own account of how long a
    /// datagram was held.
    async fn coalesce(&mut self) -> Result<usize, ChannelError> {
        let first = std::time::Instant::now();
        let port = self.port;
        let failed = |source| ChannelError::Receive { port, source };
        self.counters.coalesce_waits.fetch_add(1, Relaxed);
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => {}
            waited = self.rx.wait(self.coalesce_after()) => {
                waited.map_err(failed)?;
                self.batch.try_recv_more(&self.rx).map_err(failed)?;
            }
        }
        let age = first.elapsed().as_micros() as u64;
        self.counters.coalesce_waited_us.fetch_add(age, Relaxed);
        self.counters.coalesce_longest_us.fetch_max(age, Relaxed);
        Ok(self.batch.len())
    }

    fn receive(&mut self) -> Result<usize, ChannelError> {
        self.batch
            .try_recv(&self.rx)
            .map_err(|source| ChannelError::Receive {
                port: self.port,
                source,
            })
    }

    /// The hot path: validate, decimate and pack the batch, then send it.
    async fn process_batch(&mut self) {
        let n = self.batch.len();
        let mut valid = [0u8; BATCH];
        let mut valid_count = 0;
        let mut bytes = 0u64;
        let mut invalid = 0u64;
        let mut last_invalid = None;
        let mut archive_rejected = 0u64;
        let needs_values = self.decimation_enabled && self.decimator.needs_values();
        let validate = self.validate;
        self.decimated_out.clear();

        for i in 0..n {
            let (datagram, truncated) = self.batch.get(i);
            bytes += datagram.len() as u64;
            // With validation off, a record the decimator cannot read is
            // still forwarded, just left out of the decimation; and only
            // datagrams that are one record are archived, so that every
            // archive file stays readable (checked only when archiving).
            let mut decimable = !needs_values;
            let mut archivable = true;
            let checked = if truncated {
                Err(InvalidDatum {
                    kind: InvalidKind::Oversized,
                    offset: datagram.len() as u32,
                })
            } else if needs_values {
                // Capturing validates too, so the datagram is walked once.
                let r = self
                    .validator
                    .validate_capture(datagram, &mut self.captured);
                decimable = r.is_ok();
                archivable = r.is_ok();
                if validate { r } else { Ok(()) }
            } else if validate {
                self.validator.validate(datagram)
            } else {
                if self.archive.is_some() {
                    archivable = self.validator.validate(datagram).is_ok();
                }
                Ok(())
            };
            if let Err(e) = checked {
                invalid += 1;
                last_invalid = Some(e);
                continue;
            }
            valid[valid_count] = i as u8;
            valid_count += 1;
            if self.decimation_enabled && decimable {
                self.decimator
                    .push(datagram, &self.captured, &mut self.decimated_out);
            }
            if self.archive.is_some() && !archivable {
                archive_rejected += 1;
            } else if self.archive.is_some() {
                if self.block_count == 0 {
                    let deadline = Instant::now() + self.flush_after;
                    self.flush_timer.as_mut().reset(deadline);
                }
                self.block.extend_from_slice(datagram);
                self.block_count += 1;
                if self.block_count >= self.flush_records || self.block.len() >= self.flush_bytes {
                    self.ship_block();
                }
            }
        }

        if self.live.watched() {
            self.offer_live(&valid[..valid_count]);
        }

        let c = &self.counters;
        c.batches.fetch_add(1, Relaxed);
        c.packets.fetch_add(n as u64, Relaxed);
        c.bytes.fetch_add(bytes, Relaxed);
        if let Some(e) = last_invalid {
            c.invalid.fetch_add(invalid, Relaxed);
            c.record_invalid(e);
        }
        if archive_rejected > 0 {
            c.archive_rejected.fetch_add(archive_rejected, Relaxed);
        }
        if let Some(drops) = self.batch.kernel_drops {
            c.kernel_drops.store(u64::from(drops), Relaxed);
        }

        let batch = &self.batch;
        let mut forwarded = SendReport::default();
        if valid_count > 0 && !self.full_rate.is_empty() {
            let datagrams = valid[..valid_count]
                .iter()
                .map(|&i| batch.get(usize::from(i)).0);
            for dest in &self.full_rate {
                add_report(&mut forwarded, udp::send_all(dest, datagrams.clone()).await);
            }
        }
        let mut decimated = SendReport::default();
        if !self.decimated_out.records.is_empty() && !self.decimated.is_empty() {
            for dest in &self.decimated {
                add_report(
                    &mut decimated,
                    udp::send_all(dest, self.decimated_out.iter()).await,
                );
            }
        }
        if let Some(nats) = &self.nats {
            if valid_count > 0 && nats.raw() {
                nats.offer_raw(
                    valid[..valid_count]
                        .iter()
                        .map(|&i| batch.get(usize::from(i)).0),
                );
            }
            if !self.decimated_out.records.is_empty() && nats.decimated() {
                nats.offer_decimated(self.decimated_out.iter());
            }
        }
        c.forwarded.fetch_add(forwarded.sent, Relaxed);
        c.decimated_sent.fetch_add(decimated.sent, Relaxed);
        let failed = forwarded.failed + decimated.failed;
        if failed > 0 {
            c.send_errors.fetch_add(failed, Relaxed);
            c.record_send_errno(forwarded.last_errno.max(decimated.last_errno));
        }
    }

    /// Gives live viewers this batch's last decimated record (or, with
    /// decimation off, its last valid one), at most once per
    /// [`live::MIN_INTERVAL`]. Only runs while someone watches.
    #[cold]
    fn offer_live(&mut self, valid: &[u8]) {
        let now = std::time::Instant::now();
        if now < self.live_next {
            return;
        }
        let record = if self.decimation_enabled {
            self.decimated_out.iter().last()
        } else {
            valid.last().map(|&i| self.batch.get(usize::from(i)).0)
        };
        if let Some(record) = record {
            self.live.offer(record);
            self.live_next = now + live::MIN_INTERVAL;
        }
    }

    /// Hands the filled block to the archive task; counted as dropped when
    /// the archive cannot keep up, so receiving never waits for the disk.
    fn ship_block(&mut self) {
        if self.block_count == 0 {
            return;
        }
        let Some(archive) = &self.archive else {
            return;
        };
        let capacity = self.flush_bytes.min(8 << 20);
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(capacity));
        let count = std::mem::take(&mut self.block_count);
        if let Err(lost) = archive.try_send(Block { data, count }) {
            self.counters.archive_dropped.fetch_add(lost.count, Relaxed);
        }
    }

    async fn apply(&mut self, command: Command) {
        match command {
            Command::Reconfigure {
                settings,
                full_rate,
                decimated,
                nats,
            } => {
                self.full_rate = full_rate;
                self.decimated = decimated;
                if settings.outputs.nats != self.spec.settings.outputs.nats {
                    self.nats = nats.map(NatsPending::spawn);
                }
                let d = &settings.decimation;
                self.decimation_enabled = d.enabled;
                self.decimator.reconfigure(d.algorithm, d.factor);
                self.validate = settings.validate;
                // A new block bound applies from the next block on.
                self.ship_block();
                let a = &settings.archive;
                self.flush_records = u64::from(a.flush_records.max(1));
                self.flush_bytes = a.flush_bytes.max(1) as usize;
                self.flush_after = Duration::from_millis(u64::from(a.flush_ms));
                let mut archive = self.archive.take();
                // Another directory: close this file, start anew there.
                if let Some(old) =
                    archive.take_if(|_| a.layout != self.spec.settings.archive.layout)
                {
                    old.close().await;
                }
                let socket_before = self.spec.settings.socket;
                self.spec.settings = (*settings).clone();
                match (archive, a.enabled) {
                    (Some(archive), true) => {
                        archive.reconfigure(*a, settings.rotation, settings.retention);
                        self.archive = Some(archive);
                    }
                    // Waits for the file to be closed (its last block
                    // synced): datagrams meanwhile wait in the kernel queue.
                    (Some(archive), false) => archive.close().await,
                    (None, true) => {
                        self.archive =
                            Some(start_archive(&self.data_dir, &self.spec, &self.counters));
                    }
                    (None, false) => {}
                }
                let sock = &settings.socket;
                // Registers the socket or its coalescing set instead (a
                // no-op when that does not change).
                if let Err(e) = self.rx.set_coalescing(sock.coalesce_us > 0) {
                    tracing::warn!(channel = %self.name, error = %e, "cannot switch coalescing; the channel does not wait");
                }
                if sock.max_datagram != socket_before.max_datagram {
                    // Every datagram already received was processed: the
                    // batch is empty between two batches.
                    self.batch = RecvBatch::new(sock.max_datagram as usize);
                    self.batch.set_limit(self.batch_limit);
                }
                if sock.recv_buffer != socket_before.recv_buffer {
                    let sock_ref = socket2::SockRef::from(self.rx.socket());
                    if let Err(e) = sock_ref.set_recv_buffer_size(sock.recv_buffer as usize) {
                        tracing::warn!(channel = %self.name, error = %e, "cannot resize the receive buffer");
                    }
                }
                tracing::info!(channel = %self.name, "channel reconfigured");
            }
            #[cfg(feature = "testing")]
            Command::Panic => panic!("injected fault: channel {} panics", self.name),
        }
    }
}

fn add_report(total: &mut SendReport, r: SendReport) {
    total.sent += r.sent;
    total.failed += r.failed;
    if r.last_errno != 0 {
        total.last_errno = r.last_errno;
    }
}
