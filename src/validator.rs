//! The per-datagram Avro validator (SPEC §4): a schema compiled once into a
//! flat program that checks "exactly one datum of the schema, every byte
//! consumed" without allocating, and that can capture the numeric fields the
//! [decimator](crate::decimator) needs.
//!
//! This module owns the rules a datagram must follow to be archived and
//! forwarded. They are the Avro binary encoding rules, read strictly:
//!
//! - `int` is a zigzag varint of at most 5 bytes whose value fits in 32 bits;
//!   `long` one of at most 10 bytes whose value fits in 64 bits (the 10th
//!   byte may only be 0 or 1). An `enum` index is an `int` within the symbols;
//!   a union branch index is a `long` within the branches.
//! - `boolean` is one byte, 0 or 1; `float`/`double` 4/8 bytes; `fixed` its
//!   size; `bytes`/`string` a non-negative `long` length and that many bytes,
//!   strings being UTF-8.
//! - arrays and maps are blocks: a `long` count, then that many items; a
//!   negative count means `|count|` items preceded by a `long` byte size,
//!   which must match the items exactly; a count of 0 ends the sequence. Map
//!   keys are strings.
//! - logical types are checked as their underlying type (`decimal` on bytes
//!   or fixed, `date`/`time-*`/`timestamp-*` on int or long, `duration` on
//!   fixed 12, apache-avro's `big-decimal` on bytes), except `uuid`: on a
//!   string it must be a UUID in one of the textual forms apache-avro
//!   accepts (hyphenated, simple, braced or URN), on bytes exactly 16 bytes,
//!   so that every accepted datagram decodes with apache-avro as well.
//!
//! How the work stays bounded whatever the bytes say: records are inlined
//! into a linear sequence of [`Op`]s; arrays, maps, union branches and
//! recursive named types are subroutines run on a fixed-size explicit stack
//! of [`MAX_DEPTH`] frames (deeper data is [`InvalidKind::TooDeep`]), never on
//! the Rust stack. Every array or map item costs one unit of a per-datagram
//! budget of 8 items per byte (at least 256, at most 2^20), charged as soon
//! as a block count is read, so a count of 2^60 `null`s fails at once with
//! [`InvalidKind::Oversized`] instead of looping.
//!
//! **Numeric slots.** The decimator works on the fields of plain type `int`,
//! `long`, `float` and `double` reachable from the root through records only
//! (not inside arrays, maps or unions), in schema order, depth first; a root
//! schema that is itself one of those types is one slot. Logical types over
//! int/long (`date`, `time-*`, `timestamp-*`, `local-timestamp-*`) are *not*
//! numeric: they name instants, not measurements, so the decimated record
//! keeps the last record's value. The same holds for an int/long field
//! carrying one of these names as a field-level `"logicalType"` attribute (a
//! common misplacement that Avro itself ignores, e.g. `time` in SpeedData's
//! `example.avsc`). [`Validator::validate_capture`] validates exactly like
//! [`Validator::validate`] and also records each slot's value and the byte
//! span of its encoding; `validate` is a separate instantiation of the same
//! interpreter that pays nothing for capture.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    InnerDecimalSchema, Name, NamesRef, NamespaceRef, ResolvedSchema, UuidSchema,
};

/// Deepest nesting of arrays, maps, non-null union branches and recursive
/// references a datum may have.
pub const MAX_DEPTH: usize = 64;

/// Largest compiled program: bounds the memory a schema can make us use
/// (inlining named records that are reused many times could otherwise grow
/// exponentially).
const MAX_PROGRAM_OPS: usize = 1 << 18;

/// Array/map items allowed per datagram byte, and the floor and ceiling of
/// that budget. Items of zero-byte types (null, empty records) cost nothing
/// in data, so their number must be bounded another way.
const ITEMS_PER_BYTE: usize = 8;
const MIN_ITEM_BUDGET: usize = 256;
const MAX_ITEM_BUDGET: usize = 1 << 20;

/// Why a datagram is not one record of the schema. `Copy` and small so the
/// hot path can keep the last one in an atomic (see [`InvalidDatum::pack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidDatum {
    pub kind: InvalidKind,
    /// Byte offset in the datagram where decoding failed: the start of the
    /// value that is wrong (for [`InvalidKind::TrailingBytes`], where the
    /// record ended).
    pub offset: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InvalidKind {
    /// A zero-length datagram (for a schema whose datum is never empty).
    Empty = 1,
    /// The datagram ends inside a value.
    Truncated,
    /// Bytes left after one complete record.
    TrailingBytes,
    /// A varint longer than its type allows, or an int out of 32-bit range.
    BadVarint,
    /// A negative bytes/string length or array/map block byte size.
    NegativeLength,
    /// A boolean byte other than 0 or 1.
    BadBoolean,
    /// A union branch index outside the union.
    BadUnionIndex,
    /// An enum index outside the symbols.
    BadEnumIndex,
    /// A string that is not UTF-8.
    InvalidUtf8,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More array/map items than the datagram's budget, or a datagram over 4 GiB.
    Oversized,
    /// An array/map block whose byte size differs from its items' encoding.
    BadBlockSize,
    /// A `uuid` that is not a UUID (text form for strings, 16 bytes for bytes).
    BadUuid,
}

impl InvalidKind {
    const ALL: [InvalidKind; 13] = [
        InvalidKind::Empty,
        InvalidKind::Truncated,
        InvalidKind::TrailingBytes,
        InvalidKind::BadVarint,
        InvalidKind::NegativeLength,
        InvalidKind::BadBoolean,
        InvalidKind::BadUnionIndex,
        InvalidKind::BadEnumIndex,
        InvalidKind::InvalidUtf8,
        InvalidKind::TooDeep,
        InvalidKind::Oversized,
        InvalidKind::BadBlockSize,
        InvalidKind::BadUuid,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

impl InvalidDatum {
    fn at(kind: InvalidKind, offset: usize) -> Self {
        Self {
            kind,
            // Datagrams over u32::MAX bytes are refused up front.
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
        }
    }

    /// Packs into a non-zero u64 (0 means "none").
    pub fn pack(self) -> u64 {
        ((self.kind as u64) << 32) | self.offset as u64
    }

    /// The inverse of [`InvalidDatum::pack`]; `None` for 0 or a value that no
    /// `pack` produced.
    pub fn unpack(v: u64) -> Option<Self> {
        let kind = u8::try_from(v >> 32).ok().and_then(InvalidKind::from_u8)?;
        Some(Self {
            kind,
            offset: (v & u64::from(u32::MAX)) as u32,
        })
    }
}

impl fmt::Display for InvalidDatum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.kind {
            InvalidKind::Empty => write!(f, "empty datagram"),
            InvalidKind::Truncated => write!(f, "truncated at byte {at}"),
            InvalidKind::TrailingBytes => {
                write!(
                    f,
                    "trailing bytes after the record, which ends at byte {at}"
                )
            }
            InvalidKind::BadVarint => write!(f, "malformed or out-of-range varint at byte {at}"),
            InvalidKind::NegativeLength => write!(f, "negative length at byte {at}"),
            InvalidKind::BadBoolean => write!(f, "boolean neither 0 nor 1 at byte {at}"),
            InvalidKind::BadUnionIndex => write!(f, "union branch out of range at byte {at}"),
            InvalidKind::BadEnumIndex => write!(f, "enum index out of range at byte {at}"),
            InvalidKind::InvalidUtf8 => write!(f, "invalid UTF-8 at byte {at}"),
            InvalidKind::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} at byte {at}"),
            InvalidKind::Oversized => write!(f, "too many array or map items at byte {at}"),
            InvalidKind::BadBlockSize => {
                write!(
                    f,
                    "array or map block size does not match its items at byte {at}"
                )
            }
            InvalidKind::BadUuid => write!(f, "not a UUID at byte {at}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("not an Avro schema: {0}")]
    Parse(String),
    #[error("schema references an unknown type {0}")]
    UnknownName(String),
    #[error("schema too large: more than {MAX_PROGRAM_OPS} values once named types are expanded")]
    TooLarge,
}

/// Width of a numeric field the decimator works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericKind {
    Int,
    Long,
    Float,
    Double,
}

/// A numeric field's value in one datagram, and where its encoding sits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Captured {
    /// First byte of the field's encoding.
    pub start: u32,
    /// One past its last byte.
    pub end: u32,
    /// `Int` for int/long slots, `Float` for float/double ones.
    pub value: Num,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Default for Captured {
    fn default() -> Self {
        Self {
            start: 0,
            end: 0,
            value: Num::Int(0),
        }
    }
}

/// `slot` value of a numeric op that is not captured.
const NO_SLOT: u32 = u32::MAX;
/// Branch-table entry of a union branch that encodes to nothing (`null`).
const EMPTY_BRANCH: u32 = u32::MAX;

/// One instruction of the compiled program. Record fields are laid out
/// inline; everything that repeats or branches jumps to a subroutine that
/// ends with `Ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Boolean,
    Int {
        slot: u32,
    },
    Long {
        slot: u32,
    },
    Float {
        slot: u32,
    },
    Double {
        slot: u32,
    },
    Bytes,
    String,
    /// `uuid` on string: UTF-8 in a textual UUID form.
    UuidString,
    /// `uuid` on bytes: exactly 16 bytes.
    UuidBytes,
    Fixed(u32),
    /// Number of symbols.
    Enum(u32),
    /// Array, or map whose body starts with the key's `String`. `body` is
    /// the subroutine run once per item.
    Array {
        body: u32,
    },
    /// Array or map whose items encode to nothing: only the block headers
    /// are read, the items are counted against the budget.
    ArrayOfEmpty,
    /// `count` entries of the branch table from `table`: subroutine starts,
    /// or [`EMPTY_BRANCH`].
    Union {
        table: u32,
        count: u32,
    },
    /// A recursive named type.
    Call(u32),
    Ret,
}

/// A compiled schema.
#[derive(Debug)]
pub struct Validator {
    schema: Schema,
    /// Routine 0 (the root) first, then every subroutine.
    ops: Vec<Op>,
    /// Union branch targets, see [`Op::Union`].
    branches: Vec<u32>,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
    /// False when no op ever pushes a frame: the interpreter then runs
    /// without a stack (flat records such as SpeedData's schemas).
    needs_stack: bool,
}

impl Validator {
    /// Parses an Avro schema (JSON) and compiles it.
    pub fn from_json(schema_json: &str) -> Result<Self, SchemaError> {
        let schema =
            Schema::parse_str(schema_json).map_err(|e| SchemaError::Parse(e.to_string()))?;
        Self::compile(&schema)
    }

    /// Compiles a parsed schema.
    pub fn compile(schema: &Schema) -> Result<Self, SchemaError> {
        let resolved =
            ResolvedSchema::try_from(schema).map_err(|e| SchemaError::Parse(e.to_string()))?;
        let compiled = Compiler::run(schema, resolved.get_names())?;
        Ok(Self {
            schema: schema.clone(),
            ops: compiled.ops,
            branches: compiled.branches,
            slots: compiled.slots,
            slot_paths: compiled.slot_paths,
            needs_stack: compiled.needs_stack,
        })
    }

    /// The schema this validator was compiled from.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The kinds of the numeric slots, in schema order (see the module doc).
    pub fn numeric_slots(&self) -> &[NumericKind] {
        &self.slots
    }

    /// Each numeric slot's field path, dot-separated from the root record
    /// (`""` for a numeric root schema).
    pub fn numeric_slot_paths(&self) -> &[String] {
        &self.slot_paths
    }

    /// Checks that `datum` is exactly one datum of the schema.
    pub fn validate(&self, datum: &[u8]) -> Result<(), InvalidDatum> {
        self.check::<false>(datum, &mut [])
    }

    /// Validates exactly like [`Validator::validate`] and, when valid, fills
    /// `out[i]` with numeric slot `i`'s value and span. `out` should have
    /// [`Validator::numeric_slots`]`().len()` entries; slots beyond its
    /// length are not captured. On error `out` is partly written.
    pub fn validate_capture(&self, datum: &[u8], out: &mut [Captured]) -> Result<(), InvalidDatum> {
        self.check::<true>(datum, out)
    }

    #[inline]
    fn check<const CAPTURE: bool>(
        &self,
        datum: &[u8],
        out: &mut [Captured],
    ) -> Result<(), InvalidDatum> {
        if u32::try_from(datum.len()).map_or(true, |n| n == u32::MAX) {
            return Err(InvalidDatum::at(InvalidKind::Oversized, 0));
        }
        let result = if self.needs_stack {
            self.run::<CAPTURE, MAX_DEPTH>(datum, out)
        } else {
            self.run::<CAPTURE, 0>(datum, out)
        };
        match result {
            Ok(end) if end == datum.len() => Ok(()),
            Ok(end) => Err(InvalidDatum::at(InvalidKind::TrailingBytes, end)),
            // A schema whose datum can be zero bytes (null, a record of
            // nulls) accepts an empty datagram; any other gets `Empty`.
            Err(_) if datum.is_empty() => Err(InvalidDatum::at(InvalidKind::Empty, 0)),
            Err(e) => Err(e),
        }
    }

    /// Runs the program over `d`; returns where the datum ended.
    fn run<const CAPTURE: bool, const DEPTH: usize>(
        &self,
        d: &[u8],
        out: &mut [Captured],
    ) -> Result<usize, InvalidDatum> {
        use InvalidKind::*;
        let ops = self.ops.as_slice();
        let mut stack = [Frame::default(); DEPTH];
        let mut sp = 0usize;
        let mut pc = 0usize;
        let mut pos = 0usize;
        let mut budget =
            (d.len().saturating_mul(ITEMS_PER_BYTE)).clamp(MIN_ITEM_BUDGET, MAX_ITEM_BUDGET) as u32;

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
                Op::Union { table, count } => {
                    let start = pos;
                    let i = read_long(d, &mut pos)?;
                    let target = u32::try_from(i)
                        .ok()
                        .filter(|&i| i < count)
                        .and_then(|i| self.branches.get((table + i) as usize))
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
                    if let Some((count, block_end)) = read_block(d, &mut pos, &mut budget)? {
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
                    while let Some((_, block_end)) = read_block(d, &mut pos, &mut budget)? {
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
                        match read_block(d, &mut pos, &mut budget)? {
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

/// Reads a zigzag varint of at most `MAX_BYTES` bytes as the raw (still
/// zigzagged) u64. The 10th byte of a long may only carry the 64th bit.
#[inline(always)]
fn read_varint<const MAX_BYTES: u32>(d: &[u8], pos: &mut usize) -> Result<u64, InvalidDatum> {
    let start = *pos;
    // One-byte fast path: most lengths, counts, indexes and small ints.
    match d.get(start) {
        Some(&b) if b < 0x80 => {
            *pos = start + 1;
            return Ok(u64::from(b));
        }
        Some(_) => {}
        None => return Err(InvalidDatum::at(InvalidKind::Truncated, start)),
    }
    let mut value = 0u64;
    let mut i = 0u32;
    loop {
        let Some(&b) = d.get(start + i as usize) else {
            return Err(InvalidDatum::at(InvalidKind::Truncated, start));
        };
        if i == 9 && b > 1 {
            return Err(InvalidDatum::at(InvalidKind::BadVarint, start));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b < 0x80 {
            *pos = start + i as usize;
            return Ok(value);
        }
        if i == MAX_BYTES {
            return Err(InvalidDatum::at(InvalidKind::BadVarint, start));
        }
    }
}

#[inline(always)]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

#[inline(always)]
fn read_long(d: &[u8], pos: &mut usize) -> Result<i64, InvalidDatum> {
    read_varint::<10>(d, pos).map(unzigzag)
}

/// An int: at most 5 bytes, and the zigzagged value within 32 bits (which is
/// exactly "the value fits in an i32").
#[inline(always)]
fn read_int(d: &[u8], pos: &mut usize) -> Result<i64, InvalidDatum> {
    let start = *pos;
    let z = read_varint::<5>(d, pos)?;
    if z > u64::from(u32::MAX) {
        return Err(InvalidDatum::at(InvalidKind::BadVarint, start));
    }
    Ok(unzigzag(z))
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
#[inline]
fn read_block(
    d: &[u8],
    pos: &mut usize,
    budget: &mut u32,
) -> Result<Option<(u32, u32)>, InvalidDatum> {
    let start = *pos;
    let count = read_long(d, pos)?;
    if count == 0 {
        return Ok(None);
    }
    let mut block_end = NO_BLOCK_END;
    if count < 0 {
        let size_at = *pos;
        let size = read_long(d, pos)?;
        let Ok(size) = usize::try_from(size) else {
            return Err(InvalidDatum::at(InvalidKind::NegativeLength, size_at));
        };
        match pos.checked_add(size) {
            // d.len() < u32::MAX, checked on entry.
            Some(end) if end <= d.len() => block_end = end as u32,
            _ => return Err(InvalidDatum::at(InvalidKind::Truncated, size_at)),
        }
    }
    match u32::try_from(count.unsigned_abs()) {
        Ok(n) if n <= *budget => {
            *budget -= n;
            Ok(Some((n, block_end)))
        }
        _ => Err(InvalidDatum::at(InvalidKind::Oversized, start)),
    }
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
        45 => s[..9].eq_ignore_ascii_case(b"urn:uuid:") && hyphenated(&s[9..]),
        _ => false,
    }
}

/// Logical types that, when misplaced at the field level, still mark an
/// int/long field as an instant rather than a measurement.
const TIME_LOGICAL_TYPES: [&str; 10] = [
    "date",
    "time-millis",
    "time-micros",
    "timestamp-millis",
    "timestamp-micros",
    "timestamp-nanos",
    "local-timestamp-millis",
    "local-timestamp-micros",
    "local-timestamp-nanos",
    "duration",
];

/// The compiler's output.
struct Compiled {
    ops: Vec<Op>,
    branches: Vec<u32>,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
    needs_stack: bool,
}

/// A subroutine to compile.
struct Job<'s> {
    routine: u32,
    schema: &'s Schema,
    namespace: Option<String>,
    /// Map value: the routine reads the key first.
    map_value: bool,
    /// Named types being inlined where the job was created: a reference to
    /// one of them inside is recursion.
    ancestors: Vec<Name>,
}

/// Schema → program. Records are inlined (so a non-recursive schema is one
/// straight line plus subroutines for arrays, maps and union branches);
/// a reference to a named type being inlined (recursion) becomes a `Call`
/// to that type's own routine, compiled once.
struct Compiler<'s> {
    names: &'s NamesRef<'s>,
    /// Routine bodies; jump targets are routine ids until `layout`.
    routines: Vec<Vec<Op>>,
    branches: Vec<u32>,
    named: HashMap<Name, u32>,
    queue: Vec<Job<'s>>,
    /// Named types being inlined on the current path.
    ancestors: Vec<Name>,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
    total_ops: usize,
}

impl<'s> Compiler<'s> {
    fn run(root: &'s Schema, names: &'s NamesRef<'s>) -> Result<Compiled, SchemaError> {
        let mut c = Compiler {
            names,
            routines: vec![Vec::new()],
            branches: Vec::new(),
            named: HashMap::new(),
            queue: Vec::new(),
            ancestors: Vec::new(),
            slots: Vec::new(),
            slot_paths: Vec::new(),
            total_ops: 0,
        };
        let mut body = Vec::new();
        c.emit(&mut body, root, None, Some(""))?;
        c.finish(0, body)?;
        while let Some(job) = c.queue.pop() {
            let mut body = Vec::new();
            if job.map_value {
                body.push(Op::String);
            }
            c.ancestors = job.ancestors;
            c.emit(&mut body, job.schema, job.namespace.as_deref(), None)?;
            c.finish(job.routine, body)?;
        }
        Ok(c.layout())
    }

    fn finish(&mut self, routine: u32, mut body: Vec<Op>) -> Result<(), SchemaError> {
        body.push(Op::Ret);
        self.count(1)?;
        if let Some(r) = self.routines.get_mut(routine as usize) {
            *r = body;
        }
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), SchemaError> {
        self.total_ops += n;
        if self.total_ops > MAX_PROGRAM_OPS {
            return Err(SchemaError::TooLarge);
        }
        Ok(())
    }

    fn new_routine(
        &mut self,
        schema: &'s Schema,
        namespace: NamespaceRef,
        map_value: bool,
    ) -> Result<u32, SchemaError> {
        let id = u32::try_from(self.routines.len()).map_err(|_| SchemaError::TooLarge)?;
        self.count(1)?;
        self.routines.push(Vec::new());
        self.queue.push(Job {
            routine: id,
            schema,
            namespace: namespace.map(str::to_owned),
            map_value,
            ancestors: self.ancestors.clone(),
        });
        Ok(id)
    }

    /// Numeric slot for a value at `path` (None: not on the root's record path).
    fn slot(&mut self, path: Option<&str>, kind: NumericKind) -> u32 {
        match path {
            Some(p) => {
                self.slots.push(kind);
                self.slot_paths.push(p.to_owned());
                (self.slots.len() - 1) as u32
            }
            None => NO_SLOT,
        }
    }

    /// Appends the ops validating one value of `schema` to `out`.
    fn emit(
        &mut self,
        out: &mut Vec<Op>,
        schema: &'s Schema,
        namespace: NamespaceRef,
        path: Option<&str>,
    ) -> Result<(), SchemaError> {
        let op = match schema {
            Schema::Null => return Ok(()),
            Schema::Boolean => Op::Boolean,
            Schema::Int => Op::Int {
                slot: self.slot(path, NumericKind::Int),
            },
            Schema::Long => Op::Long {
                slot: self.slot(path, NumericKind::Long),
            },
            Schema::Float => Op::Float {
                slot: self.slot(path, NumericKind::Float),
            },
            Schema::Double => Op::Double {
                slot: self.slot(path, NumericKind::Double),
            },
            Schema::Date | Schema::TimeMillis => Op::Int { slot: NO_SLOT },
            Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Op::Long { slot: NO_SLOT },
            Schema::Bytes | Schema::BigDecimal => Op::Bytes,
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Op::Bytes,
                InnerDecimalSchema::Fixed(f) => fixed(f.size),
            },
            Schema::String => Op::String,
            Schema::Uuid(UuidSchema::String) => Op::UuidString,
            Schema::Uuid(UuidSchema::Bytes) => Op::UuidBytes,
            Schema::Uuid(UuidSchema::Fixed(f)) => fixed(f.size),
            Schema::Duration(f) => fixed(f.size),
            Schema::Fixed(f) => fixed(f.size),
            Schema::Enum(e) => Op::Enum(u32::try_from(e.symbols.len()).unwrap_or(u32::MAX)),
            Schema::Array(a) => self.array(&a.items, namespace, false)?,
            Schema::Map(m) => self.array(&m.types, namespace, true)?,
            Schema::Union(u) => {
                let variants = u.variants();
                let table =
                    u32::try_from(self.branches.len()).map_err(|_| SchemaError::TooLarge)?;
                let count = u32::try_from(variants.len()).map_err(|_| SchemaError::TooLarge)?;
                for v in variants {
                    let target = match v {
                        Schema::Null => EMPTY_BRANCH,
                        _ => self.new_routine(v, namespace, false)?,
                    };
                    self.branches.push(target);
                }
                Op::Union { table, count }
            }
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(namespace).into_owned();
                let inner_ns = name.namespace().map(str::to_owned);
                self.ancestors.push(name);
                for field in &r.fields {
                    let misplaced_time = field
                        .custom_attributes
                        .get("logicalType")
                        .and_then(|v| v.as_str())
                        .is_some_and(|t| TIME_LOGICAL_TYPES.contains(&t));
                    let field_path = match path {
                        Some(_) if misplaced_time => None,
                        Some("") => Some(field.name.clone()),
                        Some(p) => Some(format!("{p}.{}", field.name)),
                        None => None,
                    };
                    self.emit(
                        out,
                        &field.schema,
                        inner_ns.as_deref(),
                        field_path.as_deref(),
                    )?;
                }
                self.ancestors.pop();
                return Ok(());
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(namespace).into_owned();
                if self.ancestors.contains(&name) {
                    Op::Call(self.named_routine(&name)?)
                } else {
                    let target = self.lookup(&name)?;
                    return self.emit(out, target, name.namespace(), path);
                }
            }
        };
        self.count(1)?;
        out.push(op);
        Ok(())
    }

    fn lookup(&self, name: &Name) -> Result<&'s Schema, SchemaError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| SchemaError::UnknownName(name.fullname(None)))
    }

    /// The routine of a recursive named type, compiled once.
    fn named_routine(&mut self, name: &Name) -> Result<u32, SchemaError> {
        if let Some(&id) = self.named.get(name) {
            return Ok(id);
        }
        let target = self.lookup(name)?;
        // The type's own routine starts a fresh path: the record arm puts
        // the name back on it.
        let saved = std::mem::take(&mut self.ancestors);
        let id = self.new_routine(target, name.namespace(), false);
        self.ancestors = saved;
        let id = id?;
        self.named.insert(name.clone(), id);
        Ok(id)
    }

    fn array(
        &mut self,
        items: &'s Schema,
        namespace: NamespaceRef,
        map: bool,
    ) -> Result<Op, SchemaError> {
        Ok(Op::Array {
            body: self.new_routine(items, namespace, map)?,
        })
    }

    /// Concatenates the routines and turns routine ids into program counters.
    fn layout(self) -> Compiled {
        let mut starts = Vec::with_capacity(self.routines.len());
        let mut at = 0u32;
        for r in &self.routines {
            starts.push(at);
            at += r.len() as u32;
        }
        let start = |id: u32| starts.get(id as usize).copied().unwrap_or(u32::MAX);
        let empty = |id: u32| {
            self.routines
                .get(id as usize)
                .is_some_and(|r| r.as_slice() == [Op::Ret])
        };
        let mut ops = Vec::with_capacity(at as usize);
        let mut needs_stack = false;
        for r in &self.routines {
            for &op in r {
                ops.push(match op {
                    Op::Array { body } if empty(body) => Op::ArrayOfEmpty,
                    Op::Array { body } => {
                        needs_stack = true;
                        Op::Array { body: start(body) }
                    }
                    Op::Call(id) => {
                        needs_stack = true;
                        Op::Call(start(id))
                    }
                    op => op,
                });
            }
        }
        let branches = self
            .branches
            .iter()
            .map(|&id| {
                if id == EMPTY_BRANCH || empty(id) {
                    EMPTY_BRANCH
                } else {
                    needs_stack = true;
                    start(id)
                }
            })
            .collect();
        Compiled {
            ops,
            branches,
            slots: self.slots,
            slot_paths: self.slot_paths,
            needs_stack,
        }
    }
}

fn fixed(size: usize) -> Op {
    Op::Fixed(u32::try_from(size).unwrap_or(u32::MAX))
}
