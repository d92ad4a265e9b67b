//! Reading an archive file back (SPEC §2 `speedrelay verify`): is it a
//! complete Avro Object Container File, what does it hold, and where does
//! its readable part end.
//!
//! This module owns the reader side of the container format the
//! [archive](crate::archive) writer produces: header, blocks, sync markers,
//! codecs. A [`Report`] says how many blocks and records are complete and
//! whether anything follows the last complete block (a torn tail, left by a
//! crash or a full disk). [`repair`] keeps exactly the complete part.
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

use crate::avro::varint;
use crate::validator::Validator;

/// First four bytes of every Avro Object Container File.
const MAGIC: &[u8; 4] = b"Obj\x01";
/// Length of a sync marker.
const SYNC_LEN: usize = 16;
/// Largest decompressed block accepted. The writer's blocks are bounded by
/// the channel's block settings, far below this; the bound keeps a hostile
/// file from claiming gigabytes.
pub const MAX_BLOCK_BYTES: usize = 256 << 20;
/// Largest header (schema and metadata) accepted.
const MAX_HEADER_BYTES: u64 = 16 << 20;

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

/// A reader that knows how many bytes are left, so that no length read
/// from the file is trusted beyond it.
struct Input<R> {
    inner: R,
    pos: u64,
    len: u64,
}

/// `Ok(None)`: the input ended before the value did.
type Partial<T> = Result<Option<T>, ScanError>;

impl<R: Read> Input<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn byte(&mut self) -> Partial<u8> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        self.pos += 1;
        Ok(Some(b[0]))
    }

    /// An Avro `long`; `Some(Err(()))` for a varint longer than 64 bits.
    /// The bytes are gathered here, one read at a time so that nothing
    /// past the varint is consumed, and decoded by [`varint::read_long`].
    fn long(&mut self) -> Partial<Result<i64, ()>> {
        let mut bytes = [0u8; 10];
        let mut n = 0;
        loop {
            let Some(b) = self.byte()? else {
                return Ok(None);
            };
            bytes[n] = b;
            n += 1;
            if b < 0x80 || n == bytes.len() {
                break;
            }
        }
        Ok(Some(varint::read_long(&bytes[..n], &mut 0).map_err(drop)))
    }

    /// Exactly `n` bytes into `buf`, or `None` if fewer are left.
    fn bytes_into(&mut self, n: u64, buf: &mut Vec<u8>) -> Partial<()> {
        if n > self.remaining() {
            return Ok(None);
        }
        buf.clear();
        // `n <= remaining`, which the caller bounded; read through `take` so a
        // file that shrinks under us gives an error, not a hang.
        let got = (&mut self.inner).take(n).read_to_end(buf)?;
        if got as u64 != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank").into());
        }
        self.pos += n;
        Ok(Some(()))
    }
}

struct Header {
    schema: String,
    codec: String,
    sync: [u8; SYNC_LEN],
}

fn not_avro(reason: &str) -> ScanError {
    ScanError::Verify(VerifyError::NotAvro(reason.to_string()))
}

fn scan_reader<R: Read>(inner: R, len: u64) -> Result<Report, ScanError> {
    let mut input = Input { inner, pos: 0, len };
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
    let torn_header = |mut report: Report| {
        report.tail = Some(Tail {
            offset: 0,
            problem: TailProblem::Header,
        });
        Ok(report)
    };

    // The magic: a shorter prefix of it is a header cut short, anything
    // else is not ours.
    let mut magic = Vec::with_capacity(4);
    let have = input.remaining().min(4);
    input.bytes_into(have, &mut magic)?;
    if magic[..] != MAGIC[..have as usize] {
        return Err(not_avro("the file does not start with Obj\\x01"));
    }
    if have < 4 {
        return torn_header(report);
    }
    let Some(header) = read_header(&mut input)? else {
        return torn_header(report);
    };
    let validator = Validator::from_json(&header.schema)
        .map_err(|e| ScanError::Verify(VerifyError::Schema(e.to_string())))?;
    let codec = match header.codec.as_str() {
        "null" => apache_avro::Codec::Null,
        "deflate" => apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
        "snappy" => apache_avro::Codec::Snappy,
        "zstandard" => apache_avro::Codec::Zstandard(apache_avro::ZstandardSettings::default()),
        other => return Err(ScanError::Verify(VerifyError::Codec(other.to_string()))),
    };
    report.header_len = input.pos;
    report.complete_len = input.pos;
    report.schema = header.schema;
    report.codec = header.codec;

    let mut data = Vec::new();
    let mut sync = Vec::with_capacity(SYNC_LEN);
    while input.remaining() > 0 {
        let offset = input.pos;
        let problem = match read_block(
            &mut input,
            codec,
            &validator,
            &header.sync,
            &mut data,
            &mut sync,
        )? {
            Ok(count) => {
                report.blocks += 1;
                report.records += count;
                report.complete_len = input.pos;
                continue;
            }
            Err(problem) => problem,
        };
        report.tail = Some(Tail { offset, problem });
        break;
    }
    Ok(report)
}

/// The metadata map and sync marker after the magic; `None` when the file
/// ends inside them.
fn read_header<R: Read>(input: &mut Input<R>) -> Result<Option<Header>, ScanError> {
    let mut schema = None;
    let mut codec = None;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let Some(count) = input.long()? else {
            return Ok(None);
        };
        let count = count.map_err(|()| not_avro("invalid metadata count"))?;
        if count == 0 {
            break;
        }
        if count < 0 {
            // A negative count is followed by the block's byte size.
            let Some(size) = input.long()? else {
                return Ok(None);
            };
            size.map_err(|()| not_avro("invalid metadata block size"))?;
        }
        for _ in 0..count.unsigned_abs() {
            for buf in [&mut key, &mut value] {
                let Some(n) = input.long()? else {
                    return Ok(None);
                };
                let n = n.map_err(|()| not_avro("invalid metadata length"))?;
                let n = u64::try_from(n).map_err(|_| not_avro("negative metadata length"))?;
                if input.pos + n > MAX_HEADER_BYTES {
                    return Err(not_avro("header larger than 16 MiB"));
                }
                if input.bytes_into(n, buf)?.is_none() {
                    return Ok(None);
                }
            }
            // Metadata keys are Avro strings: Avro readers (apache-avro)
            // refuse a file whose key is not UTF-8, so it is not healthy.
            if std::str::from_utf8(&key).is_err() {
                return Err(not_avro("metadata key is not UTF-8"));
            }
            let text = || {
                String::from_utf8(value.clone())
                    .map_err(|_| not_avro("metadata value is not UTF-8"))
            };
            match key.as_slice() {
                b"avro.schema" => schema = Some(text()?),
                b"avro.codec" => codec = Some(text()?),
                _ => {}
            }
        }
    }
    let mut sync = Vec::with_capacity(SYNC_LEN);
    if input.bytes_into(SYNC_LEN as u64, &mut sync)?.is_none() {
        return Ok(None);
    }
    let schema = schema.ok_or_else(|| not_avro("the header has no avro.schema"))?;
    let mut marker = [0u8; SYNC_LEN];
    marker.copy_from_slice(&sync);
    Ok(Some(Header {
        schema,
        codec: codec.unwrap_or_else(|| "null".to_string()),
        sync: marker,
    }))
}

/// One block: count, size, data, sync. `Ok(Ok(records))` when complete and
/// every record checks out.
fn read_block<R: Read>(
    input: &mut Input<R>,
    codec: apache_avro::Codec,
    validator: &Validator,
    expected_sync: &[u8; SYNC_LEN],
    data: &mut Vec<u8>,
    sync: &mut Vec<u8>,
) -> Result<Result<u64, TailProblem>, ScanError> {
    let Some(count) = input.long()? else {
        return Ok(Err(TailProblem::Truncated));
    };
    let Some(size) = input.long()? else {
        return Ok(Err(TailProblem::Truncated));
    };
    let (Ok(count), Ok(size)) = (count, size) else {
        return Ok(Err(TailProblem::Framing));
    };
    let (Ok(count), Ok(size)) = (u64::try_from(count), u64::try_from(size)) else {
        return Ok(Err(TailProblem::Framing));
    };
    if size > MAX_BLOCK_BYTES as u64 {
        return Ok(Err(TailProblem::Framing));
    }
    if input.bytes_into(size, data)?.is_none() {
        return Ok(Err(TailProblem::Truncated));
    }
    if input.bytes_into(SYNC_LEN as u64, sync)?.is_none() {
        return Ok(Err(TailProblem::Truncated));
    }
    if sync[..] != expected_sync[..] {
        return Ok(Err(TailProblem::Sync));
    }
    if let Err(reason) = decompress(codec, data) {
        return Ok(Err(TailProblem::Decompress(reason)));
    }
    // The validator is deterministic: a record that takes zero bytes at
    // `pos` means every later one does too, so a huge count of empty
    // records ends the walk instead of looping.
    let mut pos = 0usize;
    for i in 0..count {
        match validator.validate_prefix(&data[pos..]) {
            Ok(0) => break,
            Ok(n) => pos += n,
            Err(e) => {
                return Ok(Err(TailProblem::Records(format!("record {i}: {e}"))));
            }
        }
    }
    if pos != data.len() {
        return Ok(Err(TailProblem::Records(format!(
            "{} bytes follow the block's {count} records",
            data.len() - pos
        ))));
    }
    Ok(Ok(count))
}

/// Decompresses in place, refusing output over [`MAX_BLOCK_BYTES`] where the
/// codec states its size up front (snappy).
fn decompress(codec: apache_avro::Codec, data: &mut Vec<u8>) -> Result<(), String> {
    match codec {
        apache_avro::Codec::Null => Ok(()),
        apache_avro::Codec::Snappy => {
            // Snappy's raw format starts with the decompressed length.
            let mut claimed: u64 = 0;
            for (i, b) in data.iter().take(5).enumerate() {
                claimed |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            if claimed > MAX_BLOCK_BYTES as u64 {
                return Err(format!("claims {claimed} bytes decompressed"));
            }
            codec.decompress(data).map_err(|e| e.to_string())
        }
        _ => {
            codec.decompress(data).map_err(|e| e.to_string())?;
            if data.len() > MAX_BLOCK_BYTES {
                return Err(format!("decompresses to {} bytes", data.len()));
            }
            Ok(())
        }
    }
}
