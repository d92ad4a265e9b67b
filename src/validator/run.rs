//! Running a compiled program over one datagram: the per-datagram walker,
//! on the hot path (no allocation, no lock, no log line), and the readers of
//! the values it checks.

use super::{
    Captured, EMPTY_BRANCH, InvalidDatum, InvalidKind, MAX_ITEMS, NO_SLOT, Num, Op, Program,
};
use crate::avro::varint::{self, VarintError};

/// Runs `program` over `d`; returns where the datum ended. `DEPTH` is
/// [`MAX_DEPTH`], or 0 for a program that never pushes a frame (which then
/// skips initialising a stack).
pub(super) fn run<const CAPTURE: bool, const DEPTH: usize>(
    program: &Program,
    d: &[u8],
    out: &mut [Captured],
) -> Result<usize, InvalidDatum> {
    use InvalidKind::*;
    let ops = program.ops.as_slice();
    let mut stack = [Frame::default(); DEPTH];
    let mut sp = 0usize;
    let mut pc = 0usize;
    let mut pos = 0usize;
    // Items still allowed in this datum (see MAX_ITEMS).
    let mut budget = MAX_ITEMS;

    // Pushes a frame or fails with TooDeep.
    macro_rules! push {
        ($frame:expr) => {
            match stack.get_mut(sp) {
                Some(slot) => {
                    *slot = $frame;
                    sp += 1;
                }
                None => return Err(InvalidDatum::at(TooDeep, pos)),
            }
        };
    }

    loop {
        // The compiler ends every routine with Ret, so running off the
        // program cannot happen; treating it as Ret keeps this panic-free.
        let op = ops.get(pc).copied().unwrap_or(Op::Ret);
        pc += 1;
        match op {
            Op::Int { slot } => {
                let start = pos;
                let v = read_int(d, &mut pos)?;
                if CAPTURE && slot != NO_SLOT {
                    capture(out, slot, start, pos, Num::Int(v));
                }
            }
            Op::Long { slot } => {
                let start = pos;
                let v = read_long(d, &mut pos)?;
                if CAPTURE && slot != NO_SLOT {
                    capture(out, slot, start, pos, Num::Int(v));
                }
            }
            Op::Double { slot } => {
                let bytes = take(d, &mut pos, 8)?;
                if CAPTURE && slot != NO_SLOT {
                    let v = <[u8; 8]>::try_from(bytes).map_or(0.0, f64::from_le_bytes);
                    capture(out, slot, pos - 8, pos, Num::Float(v));
                }
            }
            Op::Float { slot } => {
                let bytes = take(d, &mut pos, 4)?;
                if CAPTURE && slot != NO_SLOT {
                    let v = <[u8; 4]>::try_from(bytes).map_or(0.0, f32::from_le_bytes);
                    capture(out, slot, pos - 4, pos, Num::Float(f64::from(v)));
                }
            }
            Op::String => {
                let s = read_bytes(d, &mut pos)?;
                if let Err(e) = std::str::from_utf8(s) {
                    return Err(InvalidDatum::at(
                        InvalidUtf8,
                        (pos - s.len()) + e.valid_up_to(),
                    ));
                }
            }
            Op::Boolean => match d.get(pos) {
                Some(0 | 1) => pos += 1,
                Some(_) => return Err(InvalidDatum::at(BadBoolean, pos)),
                None => return Err(InvalidDatum::at(Truncated, pos)),
            },
            Op::Bytes => {
                read_bytes(d, &mut pos)?;
            }
            Op::Fixed(n) => {
                take(d, &mut pos, n as usize)?;
            }
            Op::Enum(n) => {
                let start = pos;
                let i = read_int(d, &mut pos)?;
                if i < 0 || i >= i64::from(n) {
                    return Err(InvalidDatum::at(BadEnumIndex, start));
                }
            }
            Op::UuidString => {
                let start = pos;
                let s = read_bytes(d, &mut pos)?;
                if !is_uuid_text(s) {
                    return Err(InvalidDatum::at(BadUuid, start));
                }
            }
            Op::UuidBytes => {
                let start = pos;
                if read_bytes(d, &mut pos)?.len() != 16 {
                    return Err(InvalidDatum::at(BadUuid, start));
                }
            }
            Op::BigDecimal => {
                let start = pos;
                if !is_big_decimal(read_bytes(d, &mut pos)?) {
                    return Err(InvalidDatum::at(BadBigDecimal, start));
                }
            }
            Op::Union { table, count } => {
                let start = pos;
                let i = read_long(d, &mut pos)?;
                let target = u32::try_from(i)
                    .ok()
                    .filter(|&i| i < count)
                    .and_then(|i| program.branches.get(table as usize + i as usize))
                    .copied()
                    .ok_or(InvalidDatum::at(BadUnionIndex, start))?;
                if target != EMPTY_BRANCH {
                    push!(Frame::call(pc));
                    pc = target as usize;
                }
            }
            Op::Call(target) => {
                push!(Frame::call(pc));
                pc = target as usize;
            }
            Op::Array { body } => {
                if let Some((count, block_end)) = read_block(d, &mut pos, &mut budget, false)? {
                    push!(Frame {
                        ret: pc as u32,
                        body,
                        remaining: count - 1,
                        block_end,
                    });
                    pc = body as usize;
                }
            }
            Op::ArrayOfEmpty => {
                // Items of no bytes: a block is its header, whatever its count.
                while let Some((_, block_end)) = read_block(d, &mut pos, &mut budget, true)? {
                    if block_end != NO_BLOCK_END && block_end as usize != pos {
                        return Err(InvalidDatum::at(BadBlockSize, pos));
                    }
                }
            }
            Op::Ret => {
                let Some(top) = sp.checked_sub(1) else {
                    return Ok(pos);
                };
                let Some(frame) = stack.get_mut(top) else {
                    return Ok(pos);
                };
                if frame.body == CALL_FRAME {
                    pc = frame.ret as usize;
                    sp = top;
                } else if frame.remaining > 0 {
                    frame.remaining -= 1;
                    pc = frame.body as usize;
                } else {
                    if frame.block_end != NO_BLOCK_END && frame.block_end as usize != pos {
                        return Err(InvalidDatum::at(BadBlockSize, pos));
                    }
                    match read_block(d, &mut pos, &mut budget, false)? {
                        Some((count, block_end)) => {
                            frame.remaining = count - 1;
                            frame.block_end = block_end;
                            pc = frame.body as usize;
                        }
                        None => {
                            pc = frame.ret as usize;
                            sp = top;
                        }
                    }
                }
            }
        }
    }
}

/// `Frame::body` of a call (union branch or recursive type) frame.
const CALL_FRAME: u32 = u32::MAX;
/// `Frame::block_end` of a block without a byte size.
const NO_BLOCK_END: u32 = u32::MAX;

/// Where to go back to, and for an array/map, where its items stand.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    ret: u32,
    /// Item subroutine, or [`CALL_FRAME`].
    body: u32,
    /// Items of the current block still to run after the current one.
    remaining: u32,
    /// Where the current block must end, or [`NO_BLOCK_END`].
    block_end: u32,
}

impl Frame {
    fn call(ret: usize) -> Self {
        Self {
            ret: ret as u32,
            body: CALL_FRAME,
            remaining: 0,
            block_end: NO_BLOCK_END,
        }
    }
}

#[inline(always)]
fn capture(out: &mut [Captured], slot: u32, start: usize, end: usize, value: Num) {
    if let Some(c) = out.get_mut(slot as usize) {
        *c = Captured {
            start: start as u32,
            end: end as u32,
            value,
        };
    }
}

/// An Avro `long`; a bad one is an error at its first byte.
#[inline(always)]
fn read_long(d: &[u8], pos: &mut usize) -> Result<i64, InvalidDatum> {
    let start = *pos;
    varint::read_long(d, pos).map_err(|e| InvalidDatum::at(e.into(), start))
}

/// An Avro `int` (at most 5 bytes, within 32 bits), widened.
#[inline(always)]
fn read_int(d: &[u8], pos: &mut usize) -> Result<i64, InvalidDatum> {
    let start = *pos;
    match varint::read_int(d, pos) {
        Ok(v) => Ok(i64::from(v)),
        Err(e) => Err(InvalidDatum::at(e.into(), start)),
    }
}

impl From<VarintError> for InvalidKind {
    #[inline(always)]
    fn from(e: VarintError) -> Self {
        match e {
            VarintError::Truncated => InvalidKind::Truncated,
            VarintError::Overlong => InvalidKind::BadVarint,
        }
    }
}

/// The next `n` bytes.
#[inline(always)]
fn take<'d>(d: &'d [u8], pos: &mut usize, n: usize) -> Result<&'d [u8], InvalidDatum> {
    let start = *pos;
    match start.checked_add(n).and_then(|end| d.get(start..end)) {
        Some(bytes) => {
            *pos = start + n;
            Ok(bytes)
        }
        None => Err(InvalidDatum::at(InvalidKind::Truncated, start)),
    }
}

/// A `long` length and that many bytes.
#[inline(always)]
fn read_bytes<'d>(d: &'d [u8], pos: &mut usize) -> Result<&'d [u8], InvalidDatum> {
    let start = *pos;
    let len = read_long(d, pos)?;
    let Ok(len) = usize::try_from(len) else {
        return Err(InvalidDatum::at(InvalidKind::NegativeLength, start));
    };
    take(d, pos, len).map_err(|_| InvalidDatum::at(InvalidKind::Truncated, start))
}

/// Reads an array/map block header: `None` at the terminating 0, otherwise
/// the item count (charged to `budget`) and where the block must end.
/// Unless `empty_items`, every item reads at least one byte (module doc), so
/// a count beyond the bytes left cannot be complete.
#[inline]
fn read_block(
    d: &[u8],
    pos: &mut usize,
    budget: &mut u32,
    empty_items: bool,
) -> Result<Option<(u32, u32)>, InvalidDatum> {
    let start = *pos;
    let count = read_long(d, pos)?;
    if count == 0 {
        return Ok(None);
    }
    let mut block_end = NO_BLOCK_END;
    // d.len() < u32::MAX, checked on entry.
    let mut room = d.len() - *pos;
    if count < 0 {
        let size_at = *pos;
        let size = read_long(d, pos)?;
        let Ok(size) = usize::try_from(size) else {
            return Err(InvalidDatum::at(InvalidKind::NegativeLength, size_at));
        };
        match pos.checked_add(size) {
            Some(end) if end <= d.len() => {
                block_end = end as u32;
                room = size;
            }
            _ => return Err(InvalidDatum::at(InvalidKind::Truncated, size_at)),
        }
    }
    let n = count.unsigned_abs();
    if !empty_items && n > room as u64 {
        let kind = if block_end == NO_BLOCK_END {
            InvalidKind::Truncated
        } else {
            InvalidKind::BadBlockSize
        };
        return Err(InvalidDatum::at(kind, start));
    }
    match u32::try_from(n) {
        Ok(n) if n <= *budget => {
            *budget -= n;
            Ok(Some((n, block_end)))
        }
        _ => Err(InvalidDatum::at(InvalidKind::TooManyItems, start)),
    }
}

/// Whether `b` is what apache-avro writes for a `big-decimal` (and reads
/// back): a `long` length, that many bytes, a `long` scale, and no more.
fn is_big_decimal(b: &[u8]) -> bool {
    let mut pos = 0;
    let Ok(len) = read_long(b, &mut pos).map(usize::try_from) else {
        return false;
    };
    len.is_ok_and(|len| take(b, &mut pos, len).is_ok())
        && read_long(b, &mut pos).is_ok()
        && pos == b.len()
}

/// Whether `s` is a UUID in a form `uuid::Uuid::parse_str` (used by
/// apache-avro) accepts: simple (32 hex digits), hyphenated (36), braced
/// (38) or URN (45).
fn is_uuid_text(s: &[u8]) -> bool {
    let hyphenated = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    match s.len() {
        32 => s.iter().all(u8::is_ascii_hexdigit),
        36 => hyphenated(s),
        38 => s.first() == Some(&b'{') && s.last() == Some(&b'}') && hyphenated(&s[1..37]),
        // Lowercase prefix only: older uuid releases refuse any other case.
        45 => s.starts_with(b"urn:uuid:") && hyphenated(&s[9..]),
        _ => false,
    }
}
