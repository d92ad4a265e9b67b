//! Reading an archive file back (SPEC §2 `speedrelay verify`): is it a
//! complete Avro Object Container File, what does it hold, and where does
//! its readable part end.
//!
//! This module owns the verdict on a file the [archive](crate::archive)
//! writer produced; the container's framing and codecs it reads through
//! [`crate::avro`]. A [`Report`] says how many blocks and records are
//! complete and whether anything follows the last complete block (a torn
//! tail, left by a crash or a full disk). [`repair`] keeps exactly the
//! complete part.
//!
//! It trusts nothing in the file: every length is checked against what is
//! left before anything is allocated, each block is decompressed and its
//! records walked with the schema's [`Validator`], and the first block that
//! fails any check ends the readable part — nothing after a torn or corrupt
//! block is ever counted, because a reader cannot resynchronise safely.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::avro::codec;
use crate::avro::container::{BlockError, HeaderError, Reader, SYNC_LEN};
use crate::validator::Validator;

pub use crate::avro::container::MAX_BLOCK_BYTES;

/// Why a file cannot be read as an archive at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not an Avro container file: {0}")]
    NotAvro(String),
    #[error("the header's schema is not a usable Avro schema: {0}")]
    Schema(String),
    #[error("unsupported codec {0:?} (speedrelay reads null, deflate, snappy, zstandard)")]
    Codec(String),
    #[error("cannot repair {path}: {source}")]
    Repair {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The writer schema, as stored in the header (empty when the header is
    /// incomplete).
    pub schema: String,
    /// `avro.codec` from the header (`null` when absent).
    pub codec: String,
    /// Complete blocks.
    pub blocks: u64,
    /// Records in the complete blocks.
    pub records: u64,
    /// Bytes of the header (0 when it is incomplete).
    pub header_len: u64,
    /// Bytes from the start through the last complete block: what a reader
    /// can use, and what [`repair`] keeps.
    pub complete_len: u64,
    /// Bytes in the file.
    pub file_len: u64,
    /// What follows `complete_len`, if anything.
    pub tail: Option<Tail>,
}

impl Report {
    /// True when every byte belongs to the header or a complete block.
    pub fn is_healthy(&self) -> bool {
        self.tail.is_none()
    }
}

/// The first problem after the readable part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Where the unreadable part starts (== `Report::complete_len`).
    pub offset: u64,
    pub problem: TailProblem,
}

/// Why the bytes at [`Tail::offset`] are not a complete block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailProblem {
    #[error("the header is incomplete")]
    Header,
    #[error("the file ends inside a block")]
    Truncated,
    #[error("a block's record count or size is invalid")]
    Framing,
    #[error("a block's sync marker does not match the header's")]
    Sync,
    #[error("a block does not decompress: {0}")]
    Decompress(String),
    #[error("a block's records do not match the schema: {0}")]
    Records(String),
}

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.problem)
    }
}

/// Scans the file at `path`. An `Err` means it is not an archive at all
/// (unreadable, wrong magic, unusable schema or codec); a torn or corrupt
/// tail is an `Ok` report with [`Report::tail`] set.
pub fn scan(path: &Path) -> Result<Report, VerifyError> {
    let io_err = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    scan_reader(BufReader::with_capacity(1 << 16, file), len).map_err(|e| match e {
        ScanError::Io(source) => io_err(source),
        ScanError::Verify(e) => e,
    })
}

/// [`scan`] on bytes in memory (what the fuzz target drives).
pub fn scan_bytes(data: &[u8]) -> Result<Report, VerifyError> {
    scan_reader(data, data.len() as u64).map_err(|e| match e {
        ScanError::Io(source) => VerifyError::NotAvro(source.to_string()),
        ScanError::Verify(e) => e,
    })
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repaired {
    /// The file was healthy; nothing was written.
    Healthy(Report),
    /// The file now holds exactly its complete part.
    Truncated { before: Report, after: Report },
    /// The file held no complete header, so no readable part: it was removed.
    Removed(Report),
}

/// Cuts the file back to its last complete block. Atomic: the complete part
/// is copied to a temporary file beside it, synced, and renamed over the
/// original, so a crash during repair leaves either the old or the new file.
/// A file with no complete header has nothing worth keeping and is removed.
pub fn repair(path: &Path) -> Result<Repaired, VerifyError> {
    let before = scan(path)?;
    if before.is_healthy() {
        return Ok(Repaired::Healthy(before));
    }
    let repair_err = |source| VerifyError::Repair {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if before.header_len == 0 {
        fs::remove_file(path).map_err(repair_err)?;
        sync_dir(&dir).map_err(repair_err)?;
        return Ok(Repaired::Removed(before));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.repair-{}", std::process::id()));
    let result = (|| {
        let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        let mut src = File::open(path)?.take(before.complete_len);
        let copied = io::copy(&mut src, &mut out)?;
        if copied != before.complete_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being repaired",
            ));
        }
        out.flush()?;
        out.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(repair_err(source));
    }
    let after = scan(path)?;
    Ok(Repaired::Truncated { before, after })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

enum ScanError {
    Io(io::Error),
    Verify(VerifyError),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

fn scan_reader<R: Read>(inner: R, len: u64) -> Result<Report, ScanError> {
    let mut input = Reader::new(inner, len);
    let mut report = Report {
        schema: String::new(),
        codec: String::new(),
        blocks: 0,
        records: 0,
        header_len: 0,
        complete_len: 0,
        file_len: len,
        tail: None,
    };

    let header = match input.read_header() {
        Ok(Some(header)) => header,
        Ok(None) => {
            report.tail = Some(Tail {
                offset: 0,
                problem: TailProblem::Header,
            });
            return Ok(report);
        }
        Err(HeaderError::Io(e)) => return Err(ScanError::Io(e)),
        Err(HeaderError::NotAvro(reason)) => {
            return Err(ScanError::Verify(VerifyError::NotAvro(reason.to_string())));
        }
    };
    let validator = Validator::from_json(&header.schema)
        .map_err(|e| ScanError::Verify(VerifyError::Schema(e.to_string())))?;
    let Some(codec) = codec::from_name(&header.codec) else {
        return Err(ScanError::Verify(VerifyError::Codec(header.codec)));
    };
    report.header_len = input.pos();
    report.complete_len = input.pos();
    report.schema = header.schema;
    report.codec = header.codec;

    let mut data = Vec::new();
    let mut sync = Vec::with_capacity(SYNC_LEN);
    while input.remaining() > 0 {
        let offset = input.pos();
        let problem = match input.read_block(&header.sync, &mut data, &mut sync)? {
            Ok(count) => match check_block(codec, &validator, count, &mut data) {
                Ok(()) => {
                    report.blocks += 1;
                    report.records += count;
                    report.complete_len = input.pos();
                    continue;
                }
                Err(problem) => problem,
            },
            Err(BlockError::Truncated) => TailProblem::Truncated,
            Err(BlockError::Framing) => TailProblem::Framing,
            Err(BlockError::Sync) => TailProblem::Sync,
        };
        report.tail = Some(Tail { offset, problem });
        break;
    }
    Ok(report)
}

/// Decompresses a framed block's `data` and walks its `count` records.
fn check_block(
    codec: apache_avro::Codec,
    validator: &Validator,
    count: u64,
    data: &mut Vec<u8>,
) -> Result<(), TailProblem> {
    codec::decompress(codec, data).map_err(TailProblem::Decompress)?;
    // The validator is deterministic: a record that takes zero bytes at
    // `pos` means every later one does too, so a huge count of empty
    // records ends the walk instead of looping.
    let mut pos = 0usize;
    for i in 0..count {
        match validator.validate_prefix(&data[pos..]) {
            Ok(0) => break,
            Ok(n) => pos += n,
            Err(e) => return Err(TailProblem::Records(format!("record {i}: {e}"))),
        }
    }
    if pos != data.len() {
        return Err(TailProblem::Records(format!(
            "{} bytes follow the block's {count} records",
            data.len() - pos
        )));
    }
    Ok(())
}
