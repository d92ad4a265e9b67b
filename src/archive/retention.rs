//! Retention (SPEC §4): which of a channel's archive files must go, by age
//! (`ttl`) or by the channel's total size (`quota`), oldest first by the
//! name's stamp.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use super::naming::parse_file_name;
use crate::config::{Retention, RetentionMode};

/// Deletes what `retention` says must go of `channel`'s files in `dir`,
/// never `open`. Errors are logged, never returned: retention must not stop
/// archiving.
pub(super) fn apply(dir: &Path, channel: &str, retention: Retention, open: Option<&Path>) {
    let mut files = match channel_files(dir, channel) {
        Ok(files) => files,
        Err(e) => {
            warn!(channel = %channel, dir = %dir.display(), error = %e,
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
                    delete(channel, &f.path);
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
                if delete(channel, &f.path) {
                    total = total.saturating_sub(f.size);
                }
            }
        }
    }
}

fn delete(channel: &str, path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            debug!(channel = %channel, path = %path.display(),
                "archive file deleted by retention");
            true
        }
        Err(e) => {
            warn!(channel = %channel, path = %path.display(), error = %e,
                "cannot delete archive file for retention");
            false
        }
    }
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
