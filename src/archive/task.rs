//! The archive task: [`spawn`] runs an [`ArchiveWriter`] in a tokio task
//! fed through an [`ArchiveHandle`] that never blocks the receive loop, and
//! backs off a failing disk.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::SendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, error, warn};

use super::ArchiveWriter;
use crate::config::{ArchiveSettings, Retention, Rotation};
use crate::counters::ChannelCounters;

/// First wait after an archive error; doubles on every further error.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts on a failing disk.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
