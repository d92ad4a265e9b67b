//! The archive writer (SPEC §3, §4): standard Avro Object Container Files,
//! one directory per channel, rotated and pruned by the channel's settings.
//!
//! This module owns everything between "here is a block of encoded records"
//! and the disk: file naming, rotation, retention, durability on close, and
//! the per-channel tokio task that keeps disk I/O off the receive loop. The
//! bytes of the container (header, blocks, sync markers, block compression)
//! are [`crate::avro`]'s.
//!
//! Two layers:
//! - [`ArchiveWriter`] is synchronous and touches the disk. Its unit of write
//!   is one block, sent to the file in a single `write`, so a crash leaves
//!   every file readable up to its last complete block.
//! - [`spawn`] runs a writer in a task fed through an [`ArchiveHandle`]. The
//!   handle never blocks: when the queue is full or the task is gone the block
//!   comes back to the caller, who counts it dropped. Errors are counted in
//!   [`ChannelCounters`], and a failing disk is retried with backoff instead
//!   of on every block.
//!
//! The writer trusts its input: records are the channel's binary encodings,
//! already validated upstream, and the schema JSON is written as given.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{self, error::SendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, error, warn};

use crate::avro::codec;
use crate::avro::container::{self, SYNC_LEN};
use crate::config::{ArchiveSettings, Codec, Retention, RetentionMode, Rotation, RotationMode};
use crate::counters::ChannelCounters;

/// Length of `YYYYMMDDTHHMMSS.ffffffZ`.
const STAMP_LEN: usize = 23;
/// How many `-N` suffixes to try before giving up on a file name.
const MAX_NAME_SUFFIX: u32 = 1000;
/// First wait after an archive error; doubles on every further error.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts on a failing disk.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What can go wrong on the way to the disk. Each variant names the path it
/// failed on, so the text alone tells an operator where to look.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot create archive directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot create archive file {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write archive file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot sync archive file {}: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot compress a block for {} with {codec}: {source}", path.display())]
    Compress {
        path: PathBuf,
        codec: &'static str,
        source: apache_avro::Error,
    },
    /// A record count or size that an Avro `long` cannot hold.
    #[error("block of {count} records in {len} bytes is too large for an Avro block")]
    BlockTooLarge { count: u64, len: usize },
}

/// What one [`ArchiveWriter::write_block`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWritten {
    /// Bytes written, including the header if a file was opened.
    pub bytes: u64,
    /// The file opened for this block, if one was.
    pub opened: Option<PathBuf>,
    /// The file closed by rotation around this block, if one was.
    pub closed: Option<PathBuf>,
}

/// The synchronous, disk-touching archive of one channel.
pub struct ArchiveWriter {
    /// `<data_dir>/<channel>`, created with the first file, so a channel that
    /// never archives leaves nothing behind.
    channel_dir: PathBuf,
    /// File name prefix, and the field of every log line.
    channel: String,
    /// Written verbatim as `avro.schema`.
    schema_json: String,
    /// Only `codec` is read here; the flush bounds belong to the caller.
    settings: ArchiveSettings,
    rotation: Rotation,
    retention: Option<Retention>,
    /// The file blocks go to; `None` between files.
    file: Option<OpenFile>,
    /// Reused for every block: count, size, data and sync marker are
    /// assembled here so that the block reaches the file in one write.
    buf: Vec<u8>,
}

/// One archive file being written.
struct OpenFile {
    file: File,
    path: PathBuf,
    /// Monotonic, for time rotation: a wall clock step must not rotate.
    opened: Instant,
    /// Header plus complete blocks: where a failed write is cut back to.
    size: u64,
    sync: [u8; SYNC_LEN],
    /// The codec in this file's header; a reconfigured one waits for the
    /// next file.
    codec: Codec,
}

impl OpenFile {
    /// False once the file has no name left (deleted, or its directory
    /// removed). One fstat per block, never per record; an fstat that
    /// fails says nothing, and the write that follows reports the fault.
    fn is_linked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        !matches!(self.file.metadata(), Ok(m) if m.nlink() == 0)
    }
}

impl ArchiveWriter {
    /// Touches no disk. `channel_dir` is `<data_dir>/<channel>`.
    pub fn new(
        channel_dir: PathBuf,
        channel: &str,
        schema_json: &str,
        settings: ArchiveSettings,
        rotation: Rotation,
        retention: Option<Retention>,
    ) -> Self {
        Self {
            channel_dir,
            channel: channel.to_owned(),
            schema_json: schema_json.to_owned(),
            settings,
            rotation,
            retention,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Appends one Avro block holding `count` records whose binary encodings
    /// are concatenated in `records`.
    ///
    /// Opens a new file first if none is open (or time rotation is due);
    /// after the write, closes the file if size rotation is due. An empty
    /// block (`count == 0`) writes nothing and opens no file.
    ///
    /// On a failed write the file is cut back to its last complete block
    /// (best effort) and forgotten: the next block starts a new file. If a
    /// rotation close fails after the block was written, the error is
    /// returned: a failed `fsync` means the block may not be on disk.
    pub fn write_block(
        &mut self,
        records: &[u8],
        count: u64,
    ) -> Result<BlockWritten, ArchiveError> {
        let mut written = BlockWritten {
            bytes: 0,
            opened: None,
            closed: None,
        };
        if count == 0 {
            return Ok(written);
        }
        let (Ok(count_long), Ok(_)) = (i64::try_from(count), i64::try_from(records.len())) else {
            return Err(ArchiveError::BlockTooLarge {
                count,
                len: records.len(),
            });
        };

        if self.time_rotation_due() {
            written.closed = self.close_file()?;
        }
        // A file deleted under us (its directory removed, say) still takes
        // writes that nobody can ever read: start a new one instead.
        if let Some(gone) = self.file.take_if(|f| !f.is_linked()) {
            warn!(channel = %self.channel, path = %gone.path.display(),
                "archive file was deleted while open; starting a new one");
        }
        let open = match self.file.take() {
            Some(open) => open,
            None => {
                let open = self.open_file()?;
                written.bytes += open.size;
                written.opened = Some(open.path.clone());
                self.apply_retention(Some(&open.path));
                open
            }
        };
        let open = self.file.insert(open);

        match append_block(open, &mut self.buf, records, count_long) {
            Ok(n) => written.bytes += n,
            Err(err) => {
                if matches!(err, ArchiveError::Write { .. }) {
                    // What is on disk ends with a complete block (or we
                    // could not cut it back); either way no further block
                    // may follow a torn one.
                    self.file = None;
                }
                return Err(err);
            }
        }

        if self.size_rotation_due() {
            written.closed = self.close_file()?;
            self.apply_retention(None);
        }
        Ok(written)
    }

    /// flush + sync_all + forget the file; no-op when none is open. Applies
    /// retention. The file is forgotten even when syncing fails.
    pub fn close(&mut self) -> Result<(), ArchiveError> {
        if self.file.is_none() {
            return Ok(());
        }
        let result = self.close_file();
        self.apply_retention(None);
        result.map(drop)
    }

    /// The file blocks currently go to.
    pub fn current_path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// New settings; a codec change takes effect with the next file,
    /// rotation/retention immediately (at the next block, open or close:
    /// this touches no disk).
    pub fn reconfigure(
        &mut self,
        settings: ArchiveSettings,
        rotation: Rotation,
        retention: Option<Retention>,
    ) {
        self.settings = settings;
        self.rotation = rotation;
        self.retention = retention;
    }

    /// A threshold of 0 disables rotation: a file per block (or a file that
    /// rotates every block) is never what anyone means.
    fn time_rotation_due(&self) -> bool {
        let Some(open) = &self.file else { return false };
        self.rotation.mode == RotationMode::Time
            && self.rotation.threshold > 0
            && open.opened.elapsed() >= Duration::from_secs(self.rotation.threshold)
    }

    fn size_rotation_due(&self) -> bool {
        let Some(open) = &self.file else { return false };
        self.rotation.mode == RotationMode::Size
            && self.rotation.threshold > 0
            && open.size >= self.rotation.threshold
    }

    /// Creates the directory and a new file, and writes the header.
    fn open_file(&self) -> Result<OpenFile, ArchiveError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.channel_dir)
            .map_err(|source| ArchiveError::CreateDir {
                path: self.channel_dir.clone(),
                source,
            })?;
        let stamp = utc_stamp(SystemTime::now());
        let (mut file, path) = create_unique(&self.channel_dir, &self.channel, &stamp)?;

        let codec = self.settings.codec;
        let sync = container::sync_marker();
        let header = container::header(&self.schema_json, codec.as_str(), &sync);
        if let Err(source) = file.write_all(&header) {
            // A file without a whole header is unreadable: leave nothing.
            if let Err(e) = fs::remove_file(&path) {
                warn!(channel = %self.channel, path = %path.display(), error = %e,
                    "cannot remove archive file with a partial header");
            }
            return Err(ArchiveError::Write { path, source });
        }
        debug!(channel = %self.channel, path = %path.display(), codec = codec.as_str(),
            "archive file opened");
        Ok(OpenFile {
            file,
            path,
            opened: Instant::now(),
            size: header.len() as u64,
            sync,
            codec,
        })
    }

    /// flush + sync_all, then forget the file whatever happened.
    fn close_file(&mut self) -> Result<Option<PathBuf>, ArchiveError> {
        let Some(mut open) = self.file.take() else {
            return Ok(None);
        };
        // `File` has no user-space buffer: flush is for form, sync_all is
        // what makes the blocks durable.
        open.file.flush().map_err(|source| ArchiveError::Write {
            path: open.path.clone(),
            source,
        })?;
        open.file.sync_all().map_err(|source| ArchiveError::Sync {
            path: open.path.clone(),
            source,
        })?;
        // The file's name must survive a power loss too. Some file systems
        // refuse to sync a directory; that is not worth failing a close.
        if let Err(e) = File::open(&self.channel_dir).and_then(|d| d.sync_all()) {
            debug!(channel = %self.channel, dir = %self.channel_dir.display(), error = %e,
                "cannot sync archive directory");
        }
        debug!(channel = %self.channel, path = %open.path.display(), bytes = open.size,
            "archive file closed");
        Ok(Some(open.path))
    }

    /// Deletes what the retention setting says must go, never `open`.
    /// Errors are logged, never returned: retention must not stop archiving.
    fn apply_retention(&self, open: Option<&Path>) {
        let Some(retention) = self.retention else {
            return;
        };
        let mut files = match channel_files(&self.channel_dir, &self.channel) {
            Ok(files) => files,
            Err(e) => {
                warn!(channel = %self.channel, dir = %self.channel_dir.display(), error = %e,
                    "cannot list archive directory for retention");
                return;
            }
        };
        let deletable = |f: &ChannelFile| Some(f.path.as_path()) != open;
        match retention.mode {
            RetentionMode::Ttl => {
                let ttl = Duration::from_secs(retention.value);
                let now = SystemTime::now();
                for f in files.iter().filter(|f| deletable(f)) {
                    // A file modified "in the future" (clock step) is kept.
                    if now.duration_since(f.modified).is_ok_and(|age| age > ttl) {
                        self.delete(&f.path);
                    }
                }
            }
            RetentionMode::Quota => {
                files.sort_by(|a, b| a.key.cmp(&b.key));
                let mut total: u64 = files.iter().map(|f| f.size).sum();
                for f in files.iter().filter(|f| deletable(f)) {
                    if total <= retention.value {
                        break;
                    }
                    if self.delete(&f.path) {
                        total = total.saturating_sub(f.size);
                    }
                }
            }
        }
    }

    fn delete(&self, path: &Path) -> bool {
        match fs::remove_file(path) {
            Ok(()) => {
                debug!(channel = %self.channel, path = %path.display(),
                    "archive file deleted by retention");
                true
            }
            Err(e) => {
                warn!(channel = %self.channel, path = %path.display(), error = %e,
                    "cannot delete archive file for retention");
                false
            }
        }
    }
}

/// Compresses `records` and appends them as one block in one write.
/// Returns the bytes written.
fn append_block(
    open: &mut OpenFile,
    buf: &mut Vec<u8>,
    records: &[u8],
    count: i64,
) -> Result<u64, ArchiveError> {
    let data = codec::compress(open.codec, records).map_err(|source| ArchiveError::Compress {
        path: open.path.clone(),
        codec: open.codec.as_str(),
        source,
    })?;
    buf.clear();
    container::put_block(buf, count, &data, &open.sync);

    if let Err(source) = open.file.write_all(buf) {
        // A short write may have left part of the block: cut it off so the
        // file stays readable to its end.
        if let Err(e) = open.file.set_len(open.size) {
            warn!(path = %open.path.display(), error = %e,
                "cannot truncate archive file after a failed write");
        }
        return Err(ArchiveError::Write {
            path: open.path.clone(),
            source,
        });
    }
    open.size += buf.len() as u64;
    // Keep a huge block's buffer from pinning its memory forever.
    if buf.capacity() > 16 << 20 {
        *buf = Vec::new();
    }
    Ok(buf.len() as u64)
}

/// `YYYYMMDDTHHMMSS.ffffffZ` in UTC. Times before 1970 (a badly set clock)
/// print as the epoch.
fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for non-negative days).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift to eras of 400 years starting on 0000-03-01, so that the leap
    // day ends the year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Creates `<channel>-<stamp>.avro`, or `-1`, `-2`, … if the name is taken:
/// an existing file is never appended to.
fn create_unique(dir: &Path, channel: &str, stamp: &str) -> Result<(File, PathBuf), ArchiveError> {
    let mut path = dir.join(format!("{channel}-{stamp}.avro"));
    for n in 1..=MAX_NAME_SUFFIX + 1 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n <= MAX_NAME_SUFFIX => {
                path = dir.join(format!("{channel}-{stamp}-{n}.avro"));
            }
            Err(source) => return Err(ArchiveError::Create { path, source }),
        }
    }
    // The loop returns on its last round; this only satisfies the compiler.
    Err(ArchiveError::Create {
        path,
        source: io::ErrorKind::AlreadyExists.into(),
    })
}

/// One of the channel's archive files, as retention sees it.
struct ChannelFile {
    path: PathBuf,
    /// Age order: the stamp, then the `-N` suffix (a bare name is 0). Plain
    /// name order would put `-1` before the bare name.
    key: (String, u32),
    size: u64,
    modified: SystemTime,
}

/// The channel's `<channel>-<stamp>[-N].avro` files; anything else in the
/// directory is left alone. A missing directory holds no files.
fn channel_files(dir: &Path, channel: &str) -> io::Result<Vec<ChannelFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| parse_file_name(channel, n)) else {
            continue;
        };
        // Gone since the listing (another writer's retention): skip it.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        files.push(ChannelFile {
            path: entry.path(),
            key,
            size: meta.len(),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
        });
    }
    Ok(files)
}

/// `(stamp, suffix)` if `name` is one of `channel`'s archive file names.
fn parse_file_name(channel: &str, name: &str) -> Option<(String, u32)> {
    let rest = name
        .strip_prefix(channel)?
        .strip_prefix('-')?
        .strip_suffix(".avro")?;
    let stamp = rest.get(..STAMP_LEN)?;
    let shape_ok = stamp.bytes().enumerate().all(|(i, b)| match i {
        8 => b == b'T',
        15 => b == b'.',
        22 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let suffix = match &rest[STAMP_LEN..] {
        "" => 0,
        s => {
            let digits = s.strip_prefix('-')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()?
        }
    };
    Some((stamp.to_owned(), suffix))
}

/// A block of records for the archive task: binary encodings, concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub data: Vec<u8>,
    pub count: u64,
}

/// What the archive task is asked to do, in the order it was asked.
enum Command {
    /// The permit is the block's place in the bounded queue.
    Block(Block, OwnedSemaphorePermit),
    Reconfigure(ArchiveSettings, Rotation, Option<Retention>),
}

/// The receive loop's end of a channel's archive task.
pub struct ArchiveHandle {
    /// Unbounded so that `reconfigure` (rare) always gets in line behind the
    /// blocks; the blocks themselves are bounded by `slots`.
    tx: mpsc::UnboundedSender<Command>,
    /// One permit per queued block, `capacity` in all; `try_acquire` never
    /// waits, which is what the receive loop needs.
    slots: Arc<Semaphore>,
    task: JoinHandle<()>,
}

/// Spawns the writer task (`tokio::spawn`; each write runs in
/// `spawn_blocking` since it is disk I/O). `capacity` = queued blocks (at
/// least 1). Must be called inside a tokio runtime.
pub fn spawn(
    writer: ArchiveWriter,
    counters: Arc<ChannelCounters>,
    capacity: usize,
) -> ArchiveHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(capacity.max(1)));
    let task = tokio::spawn(run(writer, counters, rx));
    ArchiveHandle { tx, slots, task }
}

impl ArchiveHandle {
    /// Never blocks (called from the receive loop). On a full queue or a dead
    /// task returns the block back; the caller counts it dropped.
    pub fn try_send(&self, block: Block) -> Result<(), Block> {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Err(block);
        };
        match self.tx.send(Command::Block(block, permit)) {
            Ok(()) => Ok(()),
            Err(SendError(Command::Block(block, _))) => Err(block),
            Err(SendError(Command::Reconfigure(..))) => unreachable!("only a block was sent"),
        }
    }

    /// Queued in order with blocks: blocks sent before it are written with
    /// the old settings.
    pub fn reconfigure(
        &self,
        settings: ArchiveSettings,
        rotation: Rotation,
        retention: Option<Retention>,
    ) {
        if self
            .tx
            .send(Command::Reconfigure(settings, rotation, retention))
            .is_err()
        {
            debug!("archive task has ended; reconfiguration ignored");
        }
    }

    /// Drops the sender and awaits the task: every queued block written, file
    /// closed (flush + sync_all).
    pub async fn close(self) {
        let Self { tx, task, .. } = self;
        drop(tx);
        if let Err(e) = task.await {
            error!(error = %e, "archive task failed");
        }
    }
}

/// After an error, blocks are dropped until `until`; the wait doubles with
/// every error in a row, so a dead disk costs one attempt every few seconds
/// rather than one per block.
struct Backoff {
    delay: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: BACKOFF_MIN,
            until: None,
        }
    }

    fn holding(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Starts a wait; returns how long it is.
    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.until = Some(now + wait);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        wait
    }

    fn succeeded(&mut self) {
        self.delay = BACKOFF_MIN;
        self.until = None;
    }
}

/// Runs `f` on the writer in the blocking pool. The writer is moved in and
/// back out rather than shared behind a mutex: only this task ever uses it,
/// one call at a time, so ownership says that without a lock. The price is
/// that a panic inside `f` loses the writer (and its open file), which ends
/// the task.
async fn blocking<T, F>(mut writer: ArchiveWriter, f: F) -> Result<(ArchiveWriter, T), JoinError>
where
    T: Send + 'static,
    F: FnOnce(&mut ArchiveWriter) -> T + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let out = f(&mut writer);
        (writer, out)
    })
    .await
}

/// The archive task: writes queued blocks in order until every sender is
/// gone, then closes the file.
async fn run(
    mut writer: ArchiveWriter,
    counters: Arc<ChannelCounters>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let channel = writer.channel.clone();
    let mut backoff = Backoff::new();
    // Whether `counters` shows an archive error we must clear on success;
    // tracked here so that a good block does not take the error's lock.
    let mut error_shown = false;

    while let Some(command) = rx.recv().await {
        let (block, permit) = match command {
            Command::Block(block, permit) => (block, permit),
            Command::Reconfigure(settings, rotation, retention) => {
                writer.reconfigure(settings, rotation, retention);
                continue;
            }
        };
        // Frees the queue slot: the block is ours now.
        drop(permit);
        let count = block.count;
        if count == 0 {
            continue;
        }
        if backoff.holding(Instant::now()) {
            counters.archive_dropped.fetch_add(count, Relaxed);
            continue;
        }

        let result = blocking(writer, move |w| w.write_block(&block.data, block.count)).await;
        let result = match result {
            Ok((w, result)) => {
                writer = w;
                result
            }
            Err(e) => {
                counters.archive_errors.fetch_add(1, Relaxed);
                counters.archive_dropped.fetch_add(count, Relaxed);
                counters.set_archive_error(Some(format!("archive writer failed: {e}")));
                error!(channel = %channel, error = %e, "archive writer failed; archiving stopped");
                // Dropping `rx` makes every later `try_send` hand its block
                // back, to be counted dropped by the caller.
                return;
            }
        };

        match result {
            Ok(written) => {
                counters.archive_bytes.fetch_add(written.bytes, Relaxed);
                if written.opened.is_some() {
                    counters.archive_files.fetch_add(1, Relaxed);
                }
                if error_shown {
                    counters.set_archive_error(None);
                    error_shown = false;
                }
                backoff.succeeded();
            }
            Err(err) => {
                counters.archive_errors.fetch_add(1, Relaxed);
                counters.archive_dropped.fetch_add(count, Relaxed);
                counters.set_archive_error(Some(err.to_string()));
                error_shown = true;
                // Best effort: a file that failed once gets no more blocks.
                if writer.current_path().is_some() {
                    match blocking(writer, |w| w.close()).await {
                        Ok((w, close_result)) => {
                            writer = w;
                            if let Err(e) = close_result {
                                warn!(channel = %channel, error = %e,
                                    "cannot close archive file after an error");
                            }
                        }
                        Err(e) => {
                            error!(channel = %channel, error = %e,
                                "archive writer failed; archiving stopped");
                            return;
                        }
                    }
                }
                let wait = backoff.failed(Instant::now());
                warn!(channel = %channel, error = %err, retry_in = ?wait,
                    "archive write failed; dropping blocks until the retry");
            }
        }
    }

    // Every sender is gone and every queued block handled: close the file.
    match blocking(writer, |w| w.close()).await {
        Ok((_, Ok(()))) => {}
        Ok((_, Err(e))) => {
            counters.archive_errors.fetch_add(1, Relaxed);
            counters.set_archive_error(Some(e.to_string()));
            warn!(channel = %channel, error = %e, "cannot close archive file");
        }
        Err(e) => {
            counters.archive_errors.fetch_add(1, Relaxed);
            counters.set_archive_error(Some(format!("archive writer failed: {e}")));
            error!(channel = %channel, error = %e, "archive writer failed while closing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date-time, checked with `date -u`.
    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        // 2000 is a leap year (divisible by 400)…
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // …2100 is not (divisible by 100 only).
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
    }

    #[test]
    fn stamps_are_utc_with_microseconds() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000000Z");
        // date -u -d 2026-11-23T09:40:12Z +%s
        assert_eq!(
            utc_stamp(at(1_795_426_812, 123_456)),
            "20261123T094012.123456Z"
        );
        // date -u -d 2024-02-29T23:59:59Z +%s
        assert_eq!(
            utc_stamp(at(1_709_251_199, 999_999)),
            "20240229T235959.999999Z"
        );
        // Before the epoch: the epoch, not a panic.
        assert_eq!(
            utc_stamp(UNIX_EPOCH - Duration::from_secs(5)),
            "19700101T000000.000000Z"
        );
    }

    #[test]
    fn file_names_parse_and_order() {
        let p = |n| parse_file_name("ch", n);
        assert_eq!(
            p("ch-20261123T094012.123456Z.avro"),
            Some(("20261123T094012.123456Z".to_owned(), 0))
        );
        assert_eq!(
            p("ch-20261123T094012.123456Z-12.avro"),
            Some(("20261123T094012.123456Z".to_owned(), 12))
        );
        assert_eq!(p("ch-20261123T094012.123456Z-.avro"), None);
        assert_eq!(p("ch-20261123T094012.123456Z.avro.tmp"), None);
        assert_eq!(p("ch2-20261123T094012.123456Z.avro"), None);
        assert_eq!(p("ch-x-20261123T094012.123456Z.avro"), None);
        assert_eq!(p("ch-2026112xT094012.123456Z.avro"), None);
        assert_eq!(p("notes.txt"), None);
        assert!(p("ch-20261123T094012.123456Z.avro") < p("ch-20261123T094012.123456Z-1.avro"));
        assert!(p("ch-20261123T094012.123456Z-9.avro") < p("ch-20261123T094012.123456Z-10.avro"));
        assert!(p("ch-20261123T094012.123456Z-9.avro") < p("ch-20261123T094012.123457Z.avro"));
    }

    #[test]
    fn taken_names_get_a_suffix_and_are_never_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let stamp = "20261123T094012.123456Z";
        let (mut first, p0) = create_unique(dir.path(), "ch", stamp)?;
        first.write_all(b"first")?;
        let (_, p1) = create_unique(dir.path(), "ch", stamp)?;
        let (_, p2) = create_unique(dir.path(), "ch", stamp)?;
        assert_eq!(
            p0.file_name(),
            Some("ch-20261123T094012.123456Z.avro".as_ref())
        );
        assert_eq!(
            p1.file_name(),
            Some("ch-20261123T094012.123456Z-1.avro".as_ref())
        );
        assert_eq!(
            p2.file_name(),
            Some("ch-20261123T094012.123456Z-2.avro".as_ref())
        );
        assert_eq!(fs::read(&p0)?, b"first");
        // 0o640, less whatever the umask takes away.
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&p0)?.permissions());
        assert_eq!(mode & 0o7777 & !0o640, 0);
        Ok(())
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let now = Instant::now();
        assert!(!b.holding(now));
        assert_eq!(b.failed(now), Duration::from_millis(100));
        assert!(b.holding(now));
        assert!(!b.holding(now + Duration::from_millis(100)));
        assert_eq!(b.failed(now), Duration::from_millis(200));
        for _ in 0..10 {
            b.failed(now);
        }
        assert_eq!(b.failed(now), BACKOFF_MAX);
        b.succeeded();
        assert!(!b.holding(now));
        assert_eq!(b.failed(now), BACKOFF_MIN);
    }
}
