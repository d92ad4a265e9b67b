//! The Object Container File's framing: the magic, the header (metadata map
//! and sync marker) and the blocks (record count, byte size, data, sync
//! marker), written by the [archive](crate::archive) and read back by
//! [verify](crate::verify).
//!
//! Writing trusts its input (the schema JSON and the records were checked
//! upstream). Reading trusts nothing: [`Reader`] knows how many bytes the
//! file holds, so no length read from it is trusted beyond what is left, and
//! a header or block that claims more than [`MAX_HEADER_BYTES`] or
//! [`MAX_BLOCK_BYTES`] is refused before anything is allocated.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use super::varint::{self, put_long};

/// First four bytes of every Avro Object Container File.
pub(crate) const MAGIC: &[u8; 4] = b"Obj\x01";
/// Length of a sync marker.
pub(crate) const SYNC_LEN: usize = 16;
/// Largest decompressed block accepted. The writer's blocks are bounded by
/// the channel's block settings, far below this; the bound keeps a hostile
/// file from claiming gigabytes.
pub const MAX_BLOCK_BYTES: usize = 256 << 20;
/// Largest header (schema and metadata) accepted.
pub(crate) const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The container header: magic, metadata map (`avro.schema`, `avro.codec`),
/// sync marker.
pub(crate) fn header(schema_json: &str, codec: &str, sync: &[u8; SYNC_LEN]) -> Vec<u8> {
    let mut h = Vec::with_capacity(schema_json.len() + 64);
    h.extend_from_slice(MAGIC);
    // The metadata map as one block of two entries, then the empty block.
    put_long(&mut h, 2);
    put_bytes(&mut h, b"avro.schema");
    put_bytes(&mut h, schema_json.as_bytes());
    put_bytes(&mut h, b"avro.codec");
    put_bytes(&mut h, codec.as_bytes());
    put_long(&mut h, 0);
    h.extend_from_slice(sync);
    h
}

/// Avro `bytes`/`string`: length, then the bytes.
fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_long(buf, b.len() as i64);
    buf.extend_from_slice(b);
}

/// Appends one block: `count` records in `data` (already compressed), then
/// the file's sync marker.
pub(crate) fn put_block(buf: &mut Vec<u8>, count: i64, data: &[u8], sync: &[u8; SYNC_LEN]) {
    put_long(buf, count);
    // A slice never holds more than isize::MAX bytes, so this cannot wrap.
    put_long(buf, data.len() as i64);
    buf.extend_from_slice(data);
    buf.extend_from_slice(sync);
}

/// 16 bytes no other file will have. Hashes rather than a random-number
/// crate: `RandomState` is seeded randomly per thread, and time, pid and a
/// counter make every call different.
pub(crate) fn sync_marker() -> [u8; SYNC_LEN] {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = std::process::id();
    let mut marker = [0u8; SYNC_LEN];
    for (half, chunk) in marker.chunks_exact_mut(8).enumerate() {
        let h = RandomState::new().hash_one((nanos, pid, call, half));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    marker
}

/// What a container header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// `avro.schema`.
    pub schema: String,
    /// `avro.codec`, `null` when absent.
    pub codec: String,
    pub sync: [u8; SYNC_LEN],
}

/// Why a header cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not an Avro container file; the reason, for the operator.
    #[error("not an Avro container file: {0}")]
    NotAvro(&'static str),
}

/// Why the bytes after the last complete block are not a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// The input ends inside the block.
    Truncated,
    /// A negative, overlong or too large record count or byte size.
    Framing,
    /// The block's sync marker is not the header's.
    Sync,
}

/// `Ok(None)`: the input ended before the value did.
type Partial<T> = io::Result<Option<T>>;

/// Reads a container from `inner`, which holds `len` bytes.
pub(crate) struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Self { inner, pos: 0, len }
    }

    /// Bytes read so far: after a complete header or block, where it ends.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// The magic, metadata map and sync marker; `Ok(None)` when the input
    /// ends inside them (a prefix of a header).
    pub(crate) fn read_header(&mut self) -> Result<Option<Header>, HeaderError> {
        let not_avro = |reason| Err(HeaderError::NotAvro(reason));
        // The magic: a shorter prefix of it is a header cut short, anything
        // else is not ours.
        let mut magic = Vec::with_capacity(4);
        let have = self.remaining().min(4);
        self.bytes_into(have, &mut magic)?;
        if magic[..] != MAGIC[..have as usize] {
            return not_avro("the file does not start with Obj\\x01");
        }
        if have < 4 {
            return Ok(None);
        }

        let mut schema = None;
        let mut codec = None;
        let mut key = Vec::new();
        let mut value = Vec::new();
        loop {
            let Some(count) = self.long()? else {
                return Ok(None);
            };
            let Ok(count) = count else {
                return not_avro("invalid metadata count");
            };
            if count == 0 {
                break;
            }
            if count < 0 {
                // A negative count is followed by the block's byte size.
                let Some(size) = self.long()? else {
                    return Ok(None);
                };
                if size.is_err() {
                    return not_avro("invalid metadata block size");
                }
            }
            for _ in 0..count.unsigned_abs() {
                for buf in [&mut key, &mut value] {
                    let Some(n) = self.long()? else {
                        return Ok(None);
                    };
                    let Ok(n) = n else {
                        return not_avro("invalid metadata length");
                    };
                    let Ok(n) = u64::try_from(n) else {
                        return not_avro("negative metadata length");
                    };
                    if self.pos + n > MAX_HEADER_BYTES {
                        return not_avro("header larger than 16 MiB");
                    }
                    if self.bytes_into(n, buf)?.is_none() {
                        return Ok(None);
                    }
                }
                // Metadata keys are Avro strings: Avro readers (apache-avro)
                // refuse a file whose key is not UTF-8, so it is not healthy.
                if std::str::from_utf8(&key).is_err() {
                    return not_avro("metadata key is not UTF-8");
                }
                let text = || {
                    String::from_utf8(value.clone())
                        .map_err(|_| HeaderError::NotAvro("metadata value is not UTF-8"))
                };
                match key.as_slice() {
                    b"avro.schema" => schema = Some(text()?),
                    b"avro.codec" => codec = Some(text()?),
                    _ => {}
                }
            }
        }
        let mut sync = Vec::with_capacity(SYNC_LEN);
        if self.bytes_into(SYNC_LEN as u64, &mut sync)?.is_none() {
            return Ok(None);
        }
        let Some(schema) = schema else {
            return not_avro("the header has no avro.schema");
        };
        let mut marker = [0u8; SYNC_LEN];
        marker.copy_from_slice(&sync);
        Ok(Some(Header {
            schema,
            codec: codec.unwrap_or_else(|| "null".to_string()),
            sync: marker,
        }))
    }

    /// One block's framing: count, size, data, sync. `Ok(Ok(count))` when
    /// it is complete and ends with `expected_sync`; `data` then holds the
    /// block's (still compressed) data. `sync` is scratch space.
    pub(crate) fn read_block(
        &mut self,
        expected_sync: &[u8; SYNC_LEN],
        data: &mut Vec<u8>,
        sync: &mut Vec<u8>,
    ) -> io::Result<Result<u64, BlockError>> {
        let Some(count) = self.long()? else {
            return Ok(Err(BlockError::Truncated));
        };
        let Some(size) = self.long()? else {
            return Ok(Err(BlockError::Truncated));
        };
        let (Ok(count), Ok(size)) = (count, size) else {
            return Ok(Err(BlockError::Framing));
        };
        let (Ok(count), Ok(size)) = (u64::try_from(count), u64::try_from(size)) else {
            return Ok(Err(BlockError::Framing));
        };
        if size > MAX_BLOCK_BYTES as u64 {
            return Ok(Err(BlockError::Framing));
        }
        if self.bytes_into(size, data)?.is_none() {
            return Ok(Err(BlockError::Truncated));
        }
        if self.bytes_into(SYNC_LEN as u64, sync)?.is_none() {
            return Ok(Err(BlockError::Truncated));
        }
        if sync[..] != expected_sync[..] {
            return Ok(Err(BlockError::Sync));
        }
        Ok(Ok(count))
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
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        self.pos += n;
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_markers_differ() {
        let a = sync_marker();
        let b = sync_marker();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }

    #[test]
    fn what_is_written_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let sync = sync_marker();
        let mut file = header(r#""long""#, "null", &sync);
        let header_len = file.len() as u64;
        put_block(&mut file, 2, &[0x02, 0x04], &sync);
        let mut reader = Reader::new(file.as_slice(), file.len() as u64);
        let Ok(Some(h)) = reader.read_header() else {
            panic!("no header");
        };
        assert_eq!(
            h,
            Header {
                schema: r#""long""#.into(),
                codec: "null".into(),
                sync
            }
        );
        assert_eq!(reader.pos(), header_len);
        let (mut data, mut scratch) = (Vec::new(), Vec::new());
        assert_eq!(reader.read_block(&sync, &mut data, &mut scratch)?, Ok(2));
        assert_eq!(data, [0x02, 0x04]);
        assert_eq!(reader.remaining(), 0);

        // Cut anywhere inside the header: a prefix, not an error.
        for cut in 0..header_len as usize {
            let mut reader = Reader::new(&file[..cut], cut as u64);
            assert!(matches!(reader.read_header(), Ok(None)), "cut at {cut}");
        }
        // Cut inside the block, or another file's marker.
        let cut = file.len() - 1;
        let mut reader = Reader::new(&file[..cut], cut as u64);
        reader.read_header()?;
        let got = reader.read_block(&sync, &mut data, &mut scratch)?;
        assert_eq!(got, Err(BlockError::Truncated));
        let mut reader = Reader::new(file.as_slice(), file.len() as u64);
        reader.read_header()?;
        let got = reader.read_block(&sync_marker(), &mut data, &mut scratch)?;
        assert_eq!(got, Err(BlockError::Sync));
        Ok(())
    }
}
