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
//!   [`ChannelCounters`](crate::counters::ChannelCounters), and a failing disk is retried with backoff instead
//!   of on every block.
//!
//! The writer trusts its input: records are the channel's binary encodings,
//! already validated upstream, and the schema JSON is written as given.
//!
//! One file each: `writer` ([`ArchiveWriter`]: files, blocks, rotation,
//! close), `task` ([`spawn`], [`ArchiveHandle`], backoff), `naming` (file
//! names, the UTC stamp and its calendar), `retention` (ttl and quota).

mod naming;
mod retention;
mod task;
mod writer;

use std::io;
use std::path::PathBuf;

pub(crate) use naming::civil_from_days;
pub use task::{ArchiveHandle, Block, spawn};
pub use writer::{ArchiveWriter, BlockWritten};

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
