//! [`ArchiveWriter`]: the synchronous, disk-touching archive of one
//! channel. It opens files, writes each block in one `write`, rotates by
//! time or size, closes with flush + `sync_all`, and applies retention.

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use super::naming::{create_unique, utc_stamp};
use super::{ArchiveError, retention};
use crate::avro::codec;
use crate::avro::container::{self, SYNC_LEN};
use crate::config::{ArchiveSettings, Codec, Retention, Rotation, RotationMode};

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
    pub(super) channel: String,
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

    /// Applies the retention setting, if any; never deletes `open`.
    fn apply_retention(&self, open: Option<&Path>) {
        if let Some(r) = self.retention {
            retention::apply(&self.channel_dir, &self.channel, r, open);
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
