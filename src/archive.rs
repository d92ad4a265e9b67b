//! The archive writer: standard Avro Object Container Files, one directory
//! per channel, rotated and pruned by the channel's settings.
//!
//! STUB: interface only (implemented on another branch).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ArchiveSettings, Retention, Rotation};
use crate::counters::ChannelCounters;

pub struct ArchiveWriter {
    path: Option<PathBuf>,
}

pub struct BlockWritten {
    pub bytes: u64,
    pub opened: Option<PathBuf>,
    pub closed: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("stub")]
    Stub,
}

impl ArchiveWriter {
    pub fn new(
        channel_dir: PathBuf,
        channel: &str,
        schema_json: &str,
        settings: ArchiveSettings,
        rotation: Rotation,
        retention: Option<Retention>,
    ) -> Self {
        let _ = (
            channel_dir,
            channel,
            schema_json,
            settings,
            rotation,
            retention,
        );
        Self { path: None }
    }
    pub fn current_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

pub struct Block {
    pub data: Vec<u8>,
    pub count: u64,
}

pub struct ArchiveHandle {}

pub fn spawn(
    writer: ArchiveWriter,
    counters: Arc<ChannelCounters>,
    capacity: usize,
) -> ArchiveHandle {
    let _ = (writer, counters, capacity);
    ArchiveHandle {}
}

impl ArchiveHandle {
    pub fn try_send(&self, block: Block) -> Result<(), Block> {
        Err(block)
    }
    pub fn reconfigure(
        &self,
        settings: ArchiveSettings,
        rotation: Rotation,
        retention: Option<Retention>,
    ) {
        let _ = (settings, rotation, retention);
    }
    pub async fn close(self) {}
}
