//! Avro's zigzag varints (`int`, `long`): the one writer and the one reader
//! that every module encoding or decoding Avro binary uses.
//!
//! Both are on the per-datagram path (the validator reads, the decimator
//! writes), so they are `#[inline]`, allocate nothing beyond the caller's
//! buffer, and never panic.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ends inside the varint.
    Truncated,
    /// Longer than its type allows, or an `int` beyond 32 bits.
    Overlong,
}

/// Appends `n` as an Avro `long`: zigzag, then base-128 varint (1 to 10
/// bytes). Also the encoding of an `int`.
#[inline]
pub(crate) fn put_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while z >= 0x80 {
        bytes[len] = (z as u8) | 0x80;
        z >>= 7;
        len += 1;
    }
    bytes[len] = z as u8;
    buf.extend_from_slice(&bytes[..=len]);
}

/// Reads a varint of at most `MAX_BYTES` bytes at `*pos` as the raw (still
/// zigzagged) u64 and moves `*pos` past it; on an error `*pos` is left
/// where the varint starts. The 10th byte of a long may only carry the 64th
/// bit.
#[inline(always)]
pub(crate) fn read_varint<const MAX_BYTES: u32>(
    d: &[u8],
    pos: &mut usize,
) -> Result<u64, VarintError> {
    let start = *pos;
    // One-byte fast path: most lengths, counts, indexes and small ints.
    match d.get(start) {
        Some(&b) if b < 0x80 => {
            *pos = start + 1;
            return Ok(u64::from(b));
        }
        Some(_) => {}
        None => return Err(VarintError::Truncated),
    }
    let mut value = 0u64;
    let mut i = 0u32;
    loop {
        let Some(&b) = d.get(start + i as usize) else {
            return Err(VarintError::Truncated);
        };
        if i == 9 && b > 1 {
            return Err(VarintError::Overlong);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b < 0x80 {
            *pos = start + i as usize;
            return Ok(value);
        }
        if i == MAX_BYTES {
            return Err(VarintError::Overlong);
        }
    }
}

#[inline(always)]
pub(crate) fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// An Avro `long`: at most 10 bytes, within 64 bits.
#[inline(always)]
pub(crate) fn read_long(d: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    read_varint::<10>(d, pos).map(unzigzag)
}

/// An Avro `int`: at most 5 bytes, and the zigzagged value within 32 bits
/// (which is exactly "the value fits in an i32").
#[inline(always)]
pub(crate) fn read_int(d: &[u8], pos: &mut usize) -> Result<i32, VarintError> {
    let start = *pos;
    let z = read_varint::<5>(d, pos)?;
    match u32::try_from(z) {
        Ok(z) => Ok(unzigzag(u64::from(z)) as i32),
        Err(_) => {
            *pos = start;
            Err(VarintError::Overlong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: i64) -> Vec<u8> {
        let mut b = Vec::new();
        put_long(&mut b, n);
        b
    }

    #[test]
    fn longs_are_zigzag_varints() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(-1), [0x01]);
        assert_eq!(enc(1), [0x02]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(1000), [0xd0, 0x0f]);
        assert_eq!(enc(i64::MAX).len(), 10);
        assert_eq!(enc(i64::MIN).len(), 10);
    }

    #[test]
    fn what_is_written_reads_back() {
        for n in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            1000,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let b = enc(n);
            let mut pos = 0;
            assert_eq!(read_long(&b, &mut pos), Ok(n));
            assert_eq!(pos, b.len());
        }
        for n in [0, -1, i32::MIN, i32::MAX] {
            let b = enc(i64::from(n));
            let mut pos = 0;
            assert_eq!(read_int(&b, &mut pos), Ok(n));
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn bad_varints_are_refused_in_place() {
        let mut pos = 0;
        assert_eq!(
            read_long(&[0x80, 0x80], &mut pos),
            Err(VarintError::Truncated)
        );
        assert_eq!(read_long(&[], &mut pos), Err(VarintError::Truncated));
        // A 10th byte carrying more than the 64th bit.
        let overlong = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(read_long(&overlong, &mut pos), Err(VarintError::Overlong));
        // An int beyond 32 bits, and one longer than 5 bytes.
        assert_eq!(
            read_int(&enc(i64::from(i32::MAX) + 1), &mut pos),
            Err(VarintError::Overlong)
        );
        assert_eq!(
            read_int(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut pos),
            Err(VarintError::Overlong)
        );
        assert_eq!(pos, 0);
    }
}
