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
//!   fixed 12), except `uuid`: on a string it must be a UUID in one of the
//!   textual forms apache-avro accepts (hyphenated, simple, braced or URN),
//!   on bytes exactly 16 bytes; and apache-avro's `big-decimal` on bytes,
//!   whose content must be what apache-avro writes: a `long` length, that
//!   many bytes of unscaled integer, a `long` scale, nothing more. So every
//!   accepted datagram decodes with apache-avro as well.
//!
//! How the work stays bounded whatever the bytes say: records are inlined
//! into a linear sequence of [`Op`]s; arrays, maps, union branches and
//! recursive named types are subroutines run on a fixed-size explicit stack
//! of [`MAX_DEPTH`] frames (deeper data is [`InvalidKind::TooDeep`]), never on
//! the Rust stack. Every op but a call or a return reads at least one byte,
//! and a zero-size `fixed` compiles to nothing, so an array or map item
//! either encodes to no byte at all — its items type is `null`, an empty
//! record, a zero-size `fixed`, or records of those — or reads at least one
//! byte. A block of items of the first kind is skipped in O(1) whatever
//! its count; a block of the second kind whose count exceeds the bytes left
//! is [`InvalidKind::Truncated`] at once, before any item is run. So the
//! work is linear in the datagram's length, and a count of 2^60 fails (or
//! is skipped) without looping.
//!
//! **The one limit beyond the Avro rules**: a datum holds at most
//! [`MAX_ITEMS`] (2^20 = 1,048,576) array and map items in all, counted as
//! block counts are read ([`InvalidKind::TooManyItems`]). Items that take
//! bytes never reach it in a UDP datagram (at most 65,507 bytes); it exists
//! for items that take none: 2^60 `null`s fit in ten bytes, are valid Avro,
//! and would make every reader of the archive (apache-avro, fastavro, the
//! live view) build a list of 2^60 values. apache-avro itself refuses an
//! array of more than 512 MiB of decoded values (about 10^7 items), so
//! every datum accepted here still decodes with it.
//!
//! **Numeric slots.** The decimator works on the fields of plain type `int`,
//! `long`, `float` and `double` reachable from the root through records only
//! (not inside arrays, maps or unions), in schema order, depth first; a root
//! schema that is itself one of those types is one slot. Logical types over
//! int/long (`date`, `time-*`, `timestamp-*`, `local-timestamp-*`) are *not*
//! numeric: they name instants, not measurements, so the decimated record
//! keeps the last record's value. The same holds for an int/long field
//! carrying one of these names as a field-level `"logicalType"` attribute (a
//! common misplacement that Avro itself ignores, e.g. `time` in the
//! `example.avsc` of SpeedData v0.x). [`Validator::validate_capture`] validates exactly like
//! [`Validator::validate`] and also records each slot's value and the byte
//! span of its encoding.
//!
//! **Cost.** `validate` pays nothing for capture: it runs its own copy of
//! the program, in which each run of fixed-size values (float, double,
//! fixed) is one bounds check, through an instantiation of the interpreter
//! with the capture code compiled out. When it fails, the datagram is
//! checked again with the one-op-per-value program so that the error's
//! offset is that of the exact value (invalid datagrams pay twice).

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    InnerDecimalSchema, Name, NamesRef, NamespaceRef, ResolvedSchema, UuidSchema,
};

use crate::avro::varint::{self, VarintError};

/// Deepest nesting of arrays, maps, non-null union branches and recursive
/// references a datum may have.
pub const MAX_DEPTH: usize = 64;

/// Largest compiled program: bounds the memory a schema can make us use
/// (inlining named records that are reused many times could otherwise grow
/// exponentially).
const MAX_PROGRAM_OPS: usize = 1 << 18;

/// Most array and map items one datum may hold, across all its arrays and
/// maps (see the module doc: it bounds items that encode to no byte).
pub const MAX_ITEMS: u32 = 1 << 20;

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
    /// A datagram longer than the channel's `socket.max_datagram`: the
    /// kernel cut it, so it cannot be the whole record. Flagged by the
    /// channel, not the validator; [`InvalidDatum::offset`] holds
    /// `max_datagram`.
    Oversized,
    /// An array/map block whose byte size differs from its items' encoding.
    BadBlockSize,
    /// A `uuid` that is not a UUID (text form for strings, 16 bytes for bytes).
    BadUuid,
    /// More than [`MAX_ITEMS`] array and map items in one datum.
    TooManyItems,
    /// Input of 4 GiB or more, which offsets cannot address (no datagram is
    /// that long).
    TooLarge,
    /// A `big-decimal` whose bytes are not a length-prefixed unscaled
    /// integer followed by a scale.
    BadBigDecimal,
}

impl InvalidKind {
    const ALL: [InvalidKind; 16] = [
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
        InvalidKind::TooManyItems,
        InvalidKind::TooLarge,
        InvalidKind::BadBigDecimal,
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
            InvalidKind::Oversized => {
                write!(f, "datagram longer than max_datagram ({at} bytes)")
            }
            InvalidKind::TooManyItems => {
                write!(
                    f,
                    "more than {MAX_ITEMS} array or map items in one record at byte {at}"
                )
            }
            InvalidKind::TooLarge => write!(f, "datagram of 4 GiB or more"),
            InvalidKind::BadBigDecimal => write!(f, "malformed big-decimal at byte {at}"),
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
    /// apache-avro's `big-decimal`: bytes holding a length-prefixed
    /// unscaled integer and a scale.
    BigDecimal,
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

/// Laid-out routines, ready to run.
#[derive(Debug)]
struct Program {
    /// Routine 0 (the root) first, then every subroutine.
    ops: Vec<Op>,
    /// Union branch targets, see [`Op::Union`].
    branches: Vec<u32>,
    /// False when no op ever pushes a frame: the interpreter then runs
    /// without a stack (flat records such as SpeedData's schemas).
    needs_stack: bool,
}

/// A compiled schema.
#[derive(Debug)]
/// Holds only the compiled programs, not the parsed schema: a thousand
/// idle channels each kept a few KiB of schema tree that nothing read.
pub struct Validator {
    /// One op per value, numeric ops tagged with their slot: what
    /// `validate_capture` runs, and what reports an error's exact offset.
    full: Program,
    /// The same with each run of fixed-size values (float, double, fixed)
    /// merged into one `Fixed`: what `validate` runs. A run of 100 doubles
    /// is one bounds check.
    plain: Program,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
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
            full: compiled.full,
            plain: compiled.plain,
            slots: compiled.slots,
            slot_paths: compiled.slot_paths,
        })
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
        match self.check::<false>(&self.plain, datum, &mut []) {
            Ok(()) => Ok(()),
            // The merged program knows where a run of fixed-size values
            // starts, not which of them is cut short: the full program
            // (slower, but only for invalid datagrams) says exactly.
            Err(_) => self.check::<false>(&self.full, datum, &mut []),
        }
    }

    /// Validates exactly like [`Validator::validate`] and, when valid, fills
    /// `out[i]` with numeric slot `i`'s value and span. `out` should have
    /// [`Validator::numeric_slots`]`().len()` entries; slots beyond its
    /// length are not captured. On error `out` is partly written.
    pub fn validate_capture(&self, datum: &[u8], out: &mut [Captured]) -> Result<(), InvalidDatum> {
        self.check::<true>(&self.full, datum, out)
    }

    /// Checks that `data` starts with one datum of the schema and returns
    /// its length: how records packed back to back (an archive block) are
    /// walked. Off the hot path: reading archives back.
    pub fn validate_prefix(&self, data: &[u8]) -> Result<usize, InvalidDatum> {
        if u32::try_from(data.len()).map_or(true, |n| n == u32::MAX) {
            return Err(InvalidDatum::at(InvalidKind::TooLarge, 0));
        }
        if self.full.needs_stack {
            run::<false, MAX_DEPTH>(&self.full, data, &mut [])
        } else {
            run::<false, 0>(&self.full, data, &mut [])
        }
    }

    #[inline]
    fn check<const CAPTURE: bool>(
        &self,
        program: &Program,
        datum: &[u8],
        out: &mut [Captured],
    ) -> Result<(), InvalidDatum> {
        if u32::try_from(datum.len()).map_or(true, |n| n == u32::MAX) {
            return Err(InvalidDatum::at(InvalidKind::TooLarge, 0));
        }
        let result = if program.needs_stack {
            run::<CAPTURE, MAX_DEPTH>(program, datum, out)
        } else {
            run::<CAPTURE, 0>(program, datum, out)
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
}

/// Runs `program` over `d`; returns where the datum ended. `DEPTH` is
/// [`MAX_DEPTH`], or 0 for a program that never pushes a frame (which then
/// skips initialising a stack).
fn run<const CAPTURE: bool, const DEPTH: usize>(
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
    full: Program,
    plain: Program,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
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
        Ok(Compiled {
            full: c.layout(false),
            plain: c.layout(true),
            slots: c.slots,
            slot_paths: c.slot_paths,
        })
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
            Schema::Bytes => Op::Bytes,
            Schema::BigDecimal => Op::BigDecimal,
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
        // A zero-size fixed reads nothing: no op, so that every op left
        // reads at least one byte (see the module doc).
        if op == Op::Fixed(0) {
            return Ok(());
        }
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

    /// Concatenates the routines and turns routine ids into program
    /// counters; `merge` folds runs of fixed-size values into one `Fixed`.
    fn layout(&self, merge: bool) -> Program {
        let routines: Vec<Vec<Op>> = if merge {
            self.routines.iter().map(|r| merge_fixed(r)).collect()
        } else {
            self.routines.clone()
        };
        let mut starts = Vec::with_capacity(routines.len());
        let mut at = 0u32;
        for r in &routines {
            starts.push(at);
            at += r.len() as u32;
        }
        // A routine that only calls another (a union branch or array item
        // naming a recursive type) is that other routine: jumping straight
        // there saves a frame per level of recursion.
        let alias = |mut id: u32| {
            for _ in 0..self.routines.len() {
                match self.routines.get(id as usize).map(Vec::as_slice) {
                    Some([Op::Call(target), Op::Ret]) if *target != id => id = *target,
                    _ => break,
                }
            }
            id
        };
        let start = |id: u32| starts.get(alias(id) as usize).copied().unwrap_or(u32::MAX);
        let empty = |id: u32| {
            self.routines
                .get(id as usize)
                .is_some_and(|r| r.as_slice() == [Op::Ret])
        };
        let mut ops = Vec::with_capacity(at as usize);
        let mut needs_stack = false;
        for r in &routines {
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
        Program {
            ops,
            branches,
            needs_stack,
        }
    }
}

/// `routine` with each run of float/double/fixed ops made one `Fixed` of
/// their total size (a run larger than any datagram saturates, which still
/// fails as `Truncated`).
fn merge_fixed(routine: &[Op]) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(routine.len());
    for &op in routine {
        let size = match op {
            Op::Float { .. } => 4,
            Op::Double { .. } => 8,
            Op::Fixed(n) => n,
            op => {
                out.push(op);
                continue;
            }
        };
        match out.last_mut() {
            Some(Op::Fixed(run)) => *run = run.saturating_add(size),
            _ => out.push(Op::Fixed(size)),
        }
    }
    out
}

fn fixed(size: usize) -> Op {
    Op::Fixed(u32::try_from(size).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::schema::{NamesRef, NamespaceRef, ResolvedSchema, Schema, UuidSchema};
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{Days, Decimal, Duration, Millis, Months, Uuid};

    use super::*;

    const EXAMPLE: &str = include_str!("../config/agents/example.avsc");
    const TEMPERATURE: &str = include_str!("../config/agents/temperature.avsc");

    /// Every Avro type: nested and reused records, a recursive linked list,
    /// enum, fixed, arrays (of records, of arrays, of nulls), maps, unions,
    /// and the logical types.
    const EVERYTHING: &str = r#"{
      "type": "record", "name": "Everything", "namespace": "test.all",
      "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
          {"name": "x", "type": "int"},
          {"name": "y", "type": "double"},
          {"name": "deeper", "type": {"type": "record", "name": "Deeper",
            "namespace": "test.other", "fields": [{"name": "z", "type": "long"}]}}
        ]}},
        {"name": "inner2", "type": "Inner"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {"name": "list", "type": {"type": "record", "name": "Node", "fields": [
          {"name": "value", "type": "int"},
          {"name": "next", "type": ["null", "Node"]}
        ]}},
        {"name": "ints", "type": {"type": "array", "items": "int"}},
        {"name": "records", "type": {"type": "array", "items": "Inner"}},
        {"name": "nested", "type": {"type": "array", "items": {"type": "array", "items": "string"}}},
        {"name": "nulls", "type": {"type": "array", "items": "null"}},
        {"name": "m", "type": {"type": "map", "values": "long"}},
        {"name": "mcolor", "type": {"type": "map", "values": "Color"}},
        {"name": "opt", "type": ["null", "double"]},
        {"name": "u", "type": ["null", "string", "Hash", {"type": "array", "items": "boolean"}, "Inner"]},
        {"name": "dec_b", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "dec_f", "type": {"type": "fixed", "name": "Dec", "size": 8, "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "uuid_s", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "uuid_f", "type": {"type": "fixed", "name": "UuidF", "size": 16, "logicalType": "uuid"}},
        {"name": "date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tmil", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "tmic", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "tsm", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "tsn", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        {"name": "ltsm", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "ltsu", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "ltsn", "type": {"type": "long", "logicalType": "local-timestamp-nanos"}},
        {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}},
        {"name": "tail", "type": "float"}
      ]
    }"#;

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn text(&mut self) -> String {
            const CHARS: [&str; 6] = ["a", "Z", "0", " ", "é", "温"];
            let n = self.below(6) as usize;
            (0..n).map(|_| CHARS[self.below(6) as usize]).collect()
        }
        /// Mostly small numbers, sometimes extremes: exercises every varint length.
        fn long(&mut self) -> i64 {
            match self.below(4) {
                0 => self.below(100) as i64 - 50,
                1 => [i64::MIN, i64::MAX, 0, -1][self.below(4) as usize],
                _ => (self.next() as i64) >> self.below(63),
            }
        }
    }

    /// apache-avro's encoder (`to_avro_datum`, without its deprecation).
    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .expect("apache-avro encodes")
    }

    /// apache-avro's decoder (`from_avro_datum`, without its deprecation).
    fn decode(schema: &Schema, datum: &mut &[u8]) -> Option<Value> {
        GenericDatumReader::builder(schema)
            .build()
            .and_then(|r| r.read_value(datum))
            .ok()
    }

    fn parse(json: &str) -> (Schema, Validator) {
        let schema = Schema::parse_str(json).expect("schema parses");
        let v = Validator::compile(&schema).expect("schema compiles");
        (schema, v)
    }

    /// A random value of `schema` (recursion bounded by `depth`).
    fn gen_value(
        schema: &Schema,
        names: &NamesRef,
        ns: NamespaceRef,
        rng: &mut Rng,
        depth: u32,
    ) -> Value {
        // Collections empty out with depth, so recursive types stay finite.
        let n = |rng: &mut Rng| if depth > 8 { 0 } else { rng.below(4) as usize };
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(rng.below(2) == 1),
            Schema::Int => Value::Int(rng.long() as i32),
            Schema::Long => Value::Long(rng.long()),
            Schema::Float => Value::Float(f32::from_bits(rng.next() as u32)),
            Schema::Double => Value::Double(f64::from_bits(rng.next())),
            Schema::Bytes => {
                let len = n(rng);
                Value::Bytes(rng.bytes(len))
            }
            Schema::String => Value::String(rng.text()),
            Schema::Fixed(f) => Value::Fixed(f.size, rng.bytes(f.size)),
            Schema::Enum(e) => {
                let i = rng.below(e.symbols.len() as u64) as usize;
                Value::Enum(i as u32, e.symbols[i].clone())
            }
            Schema::Array(a) => Value::Array(
                (0..n(rng))
                    .map(|_| gen_value(&a.items, names, ns, rng, depth + 1))
                    .collect(),
            ),
            Schema::Map(m) => Value::Map(
                (0..n(rng))
                    .map(|_| (rng.text(), gen_value(&m.types, names, ns, rng, depth + 1)))
                    .collect::<HashMap<_, _>>(),
            ),
            Schema::Union(u) => {
                let variants = u.variants();
                // Deep enough: take the null branch when there is one.
                let i = match variants.iter().position(|v| *v == Schema::Null) {
                    Some(null) if depth > 8 => null,
                    _ => rng.below(variants.len() as u64) as usize,
                };
                let v = gen_value(&variants[i], names, ns, rng, depth + 1);
                Value::Union(i as u32, Box::new(v))
            }
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(ns);
                Value::Record(
                    r.fields
                        .iter()
                        .map(|f| {
                            let v = gen_value(&f.schema, names, name.namespace(), rng, depth + 1);
                            (f.name.clone(), v)
                        })
                        .collect(),
                )
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let target = names[name.as_ref()];
                gen_value(target, names, name.namespace(), rng, depth + 1)
            }
            Schema::Decimal(_) => {
                let len = 1 + n(rng);
                Value::Decimal(Decimal::from(rng.bytes(len)))
            }
            Schema::BigDecimal => Value::BigDecimal(apache_avro::BigDecimal::from(rng.long())),
            Schema::Uuid(_) => Value::Uuid(Uuid::from_u64_pair(rng.next(), rng.next())),
            Schema::Date => Value::Date(rng.long() as i32),
            Schema::TimeMillis => Value::TimeMillis(rng.long() as i32),
            Schema::TimeMicros => Value::TimeMicros(rng.long()),
            Schema::TimestampMillis => Value::TimestampMillis(rng.long()),
            Schema::TimestampMicros => Value::TimestampMicros(rng.long()),
            Schema::TimestampNanos => Value::TimestampNanos(rng.long()),
            Schema::LocalTimestampMillis => Value::LocalTimestampMillis(rng.long()),
            Schema::LocalTimestampMicros => Value::LocalTimestampMicros(rng.long()),
            Schema::LocalTimestampNanos => Value::LocalTimestampNanos(rng.long()),
            Schema::Duration(_) => Value::Duration(Duration::new(
                Months::new(rng.next() as u32),
                Days::new(rng.next() as u32),
                Millis::new(rng.next() as u32),
            )),
        }
    }

    fn random_datums(schema: &Schema, count: usize, seed: u64) -> Vec<Vec<u8>> {
        let resolved = ResolvedSchema::try_from(schema).expect("resolves");
        let mut rng = Rng(seed);
        (0..count)
            .map(|_| {
                let v = gen_value(schema, resolved.get_names(), None, &mut rng, 0);
                encode(schema, v)
            })
            .collect()
    }

    /// Whether apache-avro decodes `datum` as one datum with no byte left.
    fn avro_accepts(schema: &Schema, datum: &[u8]) -> bool {
        let mut rest = datum;
        decode(schema, &mut rest).is_some() && rest.is_empty()
    }

    fn err(kind: InvalidKind, offset: u32) -> Result<(), InvalidDatum> {
        Err(InvalidDatum { kind, offset })
    }

    /// Zigzag varint, as the test's own reference encoder.
    fn zz(v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        while z >= 0x80 {
            out.push(z as u8 | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
        out
    }

    #[test]
    fn random_valid_datums_validate() {
        for (json, seed) in [(EXAMPLE, 1), (TEMPERATURE, 2), (EVERYTHING, 3)] {
            let (schema, v) = parse(json);
            let mut out = vec![Captured::default(); v.numeric_slots().len()];
            for datum in random_datums(&schema, 500, seed) {
                assert_eq!(v.validate(&datum), Ok(()), "{datum:?}");
                assert_eq!(v.validate_capture(&datum, &mut out), Ok(()));
            }
        }
    }

    #[test]
    fn scalar_and_special_schemas() {
        let (_, v) = parse(r#""double""#);
        assert_eq!(v.numeric_slots(), &[NumericKind::Double]);
        assert_eq!(v.numeric_slot_paths(), &[String::new()]);
        assert_eq!(v.validate(&1.5f64.to_le_bytes()), Ok(()));
        assert_eq!(v.validate(&[0; 7]), err(InvalidKind::Truncated, 0));
        assert_eq!(v.validate(&[]), err(InvalidKind::Empty, 0));

        // A datum that encodes to nothing: the empty datagram is that datum.
        let (_, v) = parse(r#""null""#);
        assert_eq!(v.validate(&[]), Ok(()));
        assert_eq!(v.validate(&[0]), err(InvalidKind::TrailingBytes, 0));

        // apache-avro's big-decimal: bytes holding a length-prefixed
        // integer and a scale, exactly.
        let (schema, v) = parse(r#"{"type": "bytes", "logicalType": "big-decimal"}"#);
        let d = encode(
            &schema,
            Value::BigDecimal(apache_avro::BigDecimal::from(-12345)),
        );
        assert_eq!(v.validate(&d), Ok(()));
        // Found by the `schema` fuzz target: length 4 holding an inner
        // length of -3, which apache-avro cannot read.
        let inner_negative = [0x08, 0xfc, 0x04, 0xd2, 0x04];
        assert!(!avro_accepts(&schema, &inner_negative));
        assert_eq!(
            v.validate(&inner_negative),
            err(InvalidKind::BadBigDecimal, 0)
        );
        for bad in [
            vec![0x02, 0x04],                   // integer cut short
            vec![0x04, 0x02, 0x07],             // no scale
            vec![0x08, 0x02, 0x07, 0x00, 0x00], // a byte after the scale
        ] {
            assert_eq!(
                v.validate(&bad),
                err(InvalidKind::BadBigDecimal, 0),
                "{bad:?}"
            );
        }
        assert_eq!(v.validate(&[0x06, 0x02, 0x07, 0x04]), Ok(()));
        assert!(avro_accepts(&schema, &[0x06, 0x02, 0x07, 0x04]));

        // uuid on bytes (apache-avro only): exactly 16 bytes.
        let (schema, v) = parse(r#"{"type": "bytes", "logicalType": "uuid"}"#);
        assert!(matches!(schema, Schema::Uuid(UuidSchema::Bytes)));
        let d = encode(&schema, Value::Uuid(Uuid::from_u64_pair(1, 2)));
        assert_eq!(v.validate(&d), Ok(()));
        assert_eq!(v.validate(&[2, 0]), err(InvalidKind::BadUuid, 0));
    }

    #[test]
    fn uuid_text_forms() {
        let (schema, v) = parse(r#"{"type": "string", "logicalType": "uuid"}"#);
        for text in [
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67E5504410B1426F9247BB680E5FE0C8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            let d = [zz(text.len() as i64), text.as_bytes().to_vec()].concat();
            assert_eq!(v.validate(&d), Ok(()), "{text}");
            assert!(avro_accepts(&schema, &d), "{text}");
        }
        for text in [
            "",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044x10b1-426f-9247-bb680e5fe0c8",
            "URN:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            let d = [zz(text.len() as i64), text.as_bytes().to_vec()].concat();
            assert_eq!(v.validate(&d), err(InvalidKind::BadUuid, 0), "{text}");
        }
    }

    #[test]
    fn each_error_kind() {
        use InvalidKind::*;
        let (schema, example) = parse(EXAMPLE);
        let good = random_datums(&schema, 1, 7).remove(0);

        assert_eq!(example.validate(&[]), err(Empty, 0));
        // Cut inside `square_wave` (the last 16 bytes are two doubles): the
        // offset is that double's, though `validate` checks the doubles as
        // one run.
        let cut = &good[..good.len() - 10];
        assert_eq!(
            example.validate(cut),
            err(Truncated, good.len() as u32 - 16)
        );
        assert_eq!(
            example
                .validate(&good[..good.len() - 1])
                .map_err(|e| e.kind),
            Err(Truncated)
        );
        let mut long = good.clone();
        long.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            example.validate(&long),
            err(TrailingBytes, good.len() as u32)
        );

        // Wrong types: a string where the first double is expected. The
        // string's bytes are taken as part of a double, and the record then
        // runs out of bytes.
        let mut wrong = [zz(1), zz(2), b"hi".to_vec(), zz(3)].concat();
        let strings_at = wrong.len();
        wrong.extend([zz(5), b"hello".to_vec()].concat());
        assert_eq!(example.validate(&wrong), err(Truncated, strings_at as u32));
        // ... and an int where a string is expected: 6 = length 3, not there.
        assert_eq!(example.validate(&[2, 6, 0]), err(Truncated, 1));

        // Varints: an int of 6 bytes, an int over i32, a long of 11 bytes,
        // a 10-byte long whose last byte carries more than the 64th bit.
        let (_, int) = parse(r#""int""#);
        assert_eq!(
            int.validate(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            err(BadVarint, 0)
        );
        assert_eq!(
            int.validate(&zz(i64::from(i32::MAX) + 1)),
            err(BadVarint, 0)
        );
        assert_eq!(int.validate(&zz(i64::from(i32::MIN))), Ok(()));
        assert_eq!(int.validate(&[0x80, 0x80]), err(Truncated, 0));
        let (_, long_v) = parse(r#""long""#);
        assert_eq!(long_v.validate(&[0xff; 11]), err(BadVarint, 0));
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        assert_eq!(long_v.validate(&ten), err(BadVarint, 0));
        assert_eq!(long_v.validate(&zz(i64::MIN)), Ok(()));
        assert_eq!(long_v.validate(&zz(i64::MAX)), Ok(()));

        let (_, boolean) = parse(r#""boolean""#);
        assert_eq!(boolean.validate(&[1]), Ok(()));
        assert_eq!(boolean.validate(&[2]), err(BadBoolean, 0));

        let (_, union) = parse(r#"["null", "int"]"#);
        assert_eq!(union.validate(&[0]), Ok(()));
        assert_eq!(union.validate(&[2, 4]), Ok(()));
        assert_eq!(union.validate(&zz(2)), err(BadUnionIndex, 0));
        assert_eq!(union.validate(&zz(-1)), err(BadUnionIndex, 0));

        let (_, en) = parse(r#"{"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}"#);
        assert_eq!(en.validate(&zz(2)), Ok(()));
        assert_eq!(en.validate(&zz(3)), err(BadEnumIndex, 0));
        assert_eq!(en.validate(&zz(-1)), err(BadEnumIndex, 0));

        let (_, string) = parse(r#""string""#);
        assert_eq!(string.validate(&zz(-1)), err(NegativeLength, 0));
        assert_eq!(string.validate(&[6, b'a', b'b']), err(Truncated, 0));
        assert_eq!(string.validate(&[6, b'a', 0xff, 0xfe]), err(InvalidUtf8, 2));

        // A block with a negative count is preceded by its byte size.
        let (schema, ints) = parse(r#"{"type": "array", "items": "int"}"#);
        let block = [zz(-2), zz(2), zz(1), zz(2), zz(0)].concat();
        assert_eq!(ints.validate(&block), Ok(()));
        assert!(avro_accepts(&schema, &block));
        let wrong_size = [zz(-2), zz(3), zz(1), zz(2), zz(0), vec![0]].concat();
        assert_eq!(ints.validate(&wrong_size), err(BadBlockSize, 4));
        let negative_size = [zz(-2), zz(-2), zz(1), zz(2), zz(0)].concat();
        assert_eq!(ints.validate(&negative_size), err(NegativeLength, 1));
        let past_end = [zz(-2), zz(9), zz(1), zz(2), zz(0)].concat();
        assert_eq!(ints.validate(&past_end), err(Truncated, 1));
        let (_, map) = parse(r#"{"type": "map", "values": "null"}"#);
        assert_eq!(
            map.validate(&[zz(-1), zz(2), vec![2, b'k', 0]].concat()),
            Ok(())
        );

        // Recursion: every level of the list is a union branch frame.
        let (schema, list) = parse(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}"#,
        );
        let nested = |levels: usize| {
            let mut d = Vec::new();
            for _ in 0..levels {
                d.extend([zz(7), zz(1)].concat());
            }
            d.extend([zz(7), zz(0)].concat());
            d
        };
        assert_eq!(list.validate(&nested(MAX_DEPTH)), Ok(()));
        // (apache-avro recurses on the Rust stack: kept shallow for debug builds.)
        assert!(avro_accepts(&schema, &nested(16)));
        assert_eq!(
            list.validate(&nested(MAX_DEPTH + 1)),
            err(TooDeep, 2 * (MAX_DEPTH as u32 + 1))
        );

        // Items of no bytes cost no work per item: any count that fits
        // MAX_ITEMS is one block header. 2^60 nulls: refused at the count,
        // no loop.
        let (schema, nulls) = parse(r#"{"type": "array", "items": "null"}"#);
        let many = [zz(100_000), zz(0)].concat();
        assert_eq!(many.len(), 4);
        assert_eq!(nulls.validate(&many), Ok(()));
        assert!(avro_accepts(&schema, &many));
        let limit = i64::from(MAX_ITEMS);
        assert_eq!(nulls.validate(&[zz(limit), zz(0)].concat()), Ok(()));
        assert_eq!(
            nulls.validate(&[zz(limit + 1), zz(0)].concat()),
            err(TooManyItems, 0)
        );
        // The limit is per datum, across blocks.
        let split = [zz(limit - 1), zz(2), zz(0)].concat();
        assert_eq!(
            nulls.validate(&split),
            err(TooManyItems, zz(limit - 1).len() as u32)
        );
        assert_eq!(
            nulls.validate(&[zz(1 << 60), zz(0)].concat()),
            err(TooManyItems, 0)
        );
        assert_eq!(
            nulls.validate(&[zz(-(1 << 60)), zz(0), zz(0)].concat()),
            err(TooManyItems, 0)
        );
        assert_eq!(
            nulls.validate(&[zz(i64::MIN), zz(0), zz(0)].concat()),
            err(TooManyItems, 0)
        );
        // ... also behind a frame: items of empty records inside a list.
        let (schema, empties) = parse(
            r#"{"type": "array", "items": {"type": "array", "items":
                {"type": "record", "name": "E", "fields": [{"name": "n", "type": "null"},
                  {"name": "z", "type": {"type": "fixed", "name": "Z", "size": 0}}]}}}"#,
        );
        let three = [
            zz(3),
            zz(1000),
            zz(0),
            zz(-1000),
            zz(0),
            zz(0),
            zz(1000),
            zz(0),
            zz(0),
        ];
        let three = three.concat();
        assert_eq!(empties.validate(&three), Ok(()));
        assert!(avro_accepts(&schema, &three));
        assert_eq!(
            empties.validate(&[zz(1), zz(1 << 40), zz(0), zz(0)].concat()),
            err(TooManyItems, 1)
        );
        // Items that take bytes: a count beyond the bytes left is cut short
        // at the count (or beyond its block's size), before any item runs.
        let (_, ints_deep) =
            parse(r#"{"type": "array", "items": {"type": "array", "items": "int"}}"#);
        assert_eq!(
            ints_deep.validate(&[zz(1), zz(1 << 40)].concat()),
            err(Truncated, 1)
        );
        assert_eq!(
            ints.validate(&[zz(3), zz(1), zz(2)].concat()),
            err(Truncated, 0)
        );
        assert_eq!(
            ints.validate(&[zz(3), zz(1), zz(2), zz(3), zz(0)].concat()),
            Ok(())
        );
        assert_eq!(
            ints.validate(&[zz(-3), zz(2), zz(1), zz(2), zz(0)].concat()),
            err(BadBlockSize, 0)
        );
    }

    #[test]
    fn validator_is_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Validator>();
    }

    #[test]
    fn pack_round_trips_and_messages() {
        for kind in InvalidKind::ALL {
            for offset in [0, 1, 12, u32::MAX] {
                let e = InvalidDatum { kind, offset };
                assert_ne!(e.pack(), 0);
                assert_eq!(InvalidDatum::unpack(e.pack()), Some(e));
            }
        }
        assert_eq!(InvalidDatum::unpack(0), None);
        assert_eq!(InvalidDatum::unpack(99 << 32), None);
        let shown = |kind, offset| InvalidDatum { kind, offset }.to_string();
        assert_eq!(shown(InvalidKind::Truncated, 12), "truncated at byte 12");
        assert_eq!(
            shown(InvalidKind::BadUnionIndex, 7),
            "union branch out of range at byte 7"
        );
        assert_eq!(
            shown(InvalidKind::TrailingBytes, 40),
            "trailing bytes after the record, which ends at byte 40"
        );
        // Each cause of a refused length says which.
        assert_eq!(
            shown(InvalidKind::Oversized, 512),
            "datagram longer than max_datagram (512 bytes)"
        );
        assert_eq!(
            shown(InvalidKind::TooManyItems, 3),
            "more than 1048576 array or map items in one record at byte 3"
        );
        assert_eq!(shown(InvalidKind::TooLarge, 0), "datagram of 4 GiB or more");
    }

    #[test]
    fn schema_errors() {
        assert!(matches!(
            Validator::from_json("{"),
            Err(SchemaError::Parse(_))
        ));
        assert!(matches!(
            Validator::from_json(
                r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}"#
            ),
            Err(SchemaError::Parse(_))
        ));
        // Each level uses the previous record twice: 2^30 fields once inlined.
        let mut json = String::from(
            r#"{"type": "record", "name": "L0", "fields": [{"name": "a", "type": "int"}]}"#,
        );
        for i in 1..=30 {
            json = format!(
                r#"{{"type": "record", "name": "L{i}", "fields": [{{"name": "a", "type": {json}}}, {{"name": "b", "type": "L{}"}}]}}"#,
                i - 1
            );
        }
        assert!(matches!(
            Validator::from_json(&json),
            Err(SchemaError::TooLarge)
        ));
    }

    #[test]
    fn recursive_types_compile_and_validate() {
        // A tree through an array, and mutual recursion through unions.
        for json in [
            r#"{"type": "record", "name": "Tree", "fields": [
                {"name": "v", "type": "long"},
                {"name": "kids", "type": {"type": "array", "items": "Tree"}}]}"#,
            r#"{"type": "record", "name": "A", "namespace": "n1", "fields": [
                {"name": "b", "type": ["null", {"type": "record", "name": "B", "namespace": "n2",
                  "fields": [{"name": "a", "type": ["null", "n1.A"]}, {"name": "m", "type": {"type": "map", "values": "B"}}]}]},
                {"name": "x", "type": "double"}]}"#,
        ] {
            let (schema, v) = parse(json);
            for datum in random_datums(&schema, 300, 11) {
                assert_eq!(v.validate(&datum), Ok(()));
            }
        }
    }

    #[test]
    fn captures_of_example_are_exact() {
        let (schema, v) = parse(EXAMPLE);
        // `time` is a timestamp-nanos: not a slot.
        assert_eq!(
            v.numeric_slots(),
            &[
                NumericKind::Int,
                NumericKind::Double,
                NumericKind::Double,
                NumericKind::Double,
                NumericKind::Double
            ]
        );
        assert_eq!(
            v.numeric_slot_paths(),
            &["counter", "sine_wave", "ramp", "square_wave", "noise"]
        );
        let record = Value::Record(vec![
            (
                "time".into(),
                Value::TimestampNanos(1_700_000_000_000_000_000),
            ),
            ("message".into(), Value::String("hello".into())),
            ("counter".into(), Value::Int(-300)),
            ("sine_wave".into(), Value::Double(0.5)),
            ("ramp".into(), Value::Double(-2.25)),
            ("square_wave".into(), Value::Double(1.0)),
            ("noise".into(), Value::Double(f64::MIN_POSITIVE)),
        ]);
        let datum = encode(&schema, record);
        let mut out = [Captured::default(); 5];
        assert_eq!(v.validate_capture(&datum, &mut out), Ok(()));
        // time: 9-byte varint; message: 1 + 5; counter: zz(-300) = 599, 2 bytes.
        let c = |start, end, value| Captured { start, end, value };
        assert_eq!(
            out,
            [
                c(15, 17, Num::Int(-300)),
                c(17, 25, Num::Float(0.5)),
                c(25, 33, Num::Float(-2.25)),
                c(33, 41, Num::Float(1.0)),
                c(41, 49, Num::Float(f64::MIN_POSITIVE)),
            ]
        );
        assert_eq!(datum.len(), 49);
        assert_eq!(datum[15..17], zz(-300)[..]);

        // SpeedData v0.x wrote the logicalType beside the type, where Avro
        // ignores it: still an instant, not a slot.
        let (_, old) = parse(
            r#"{"type": "record", "name": "data", "fields": [
                {"name": "time", "type": "long", "logicalType": "timestamp-nanos"},
                {"name": "counter", "type": "int"}]}"#,
        );
        assert_eq!(old.numeric_slot_paths(), &["counter"]);

        // temperature.avsc: `time` is a plain long there.
        let (_, t) = parse(TEMPERATURE);
        assert_eq!(
            t.numeric_slot_paths(),
            &[
                "time",
                "temperature_c",
                "temperature_f",
                "pressure_pa",
                "humidity_pct"
            ]
        );
    }

    #[test]
    fn captures_through_nested_and_referenced_records_only() {
        let (schema, v) = parse(EVERYTHING);
        assert_eq!(
            v.numeric_slot_paths(),
            &[
                "i",
                "l",
                "f",
                "d",
                "inner.x",
                "inner.y",
                "inner.deeper.z",
                "inner2.x",
                "inner2.y",
                "inner2.deeper.z",
                "list.value",
                "tail"
            ]
        );
        let mut out = vec![Captured::default(); v.numeric_slots().len()];
        for datum in random_datums(&schema, 200, 5) {
            v.validate_capture(&datum, &mut out).expect("valid");
            let Some(Value::Record(fields)) = decode(&schema, &mut &datum[..]) else {
                panic!("apache-avro decodes");
            };
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let Some(Value::Float(tail)) = get("tail") else {
                panic!()
            };
            let last = out[out.len() - 1];
            assert_eq!(last.end as usize, datum.len());
            assert!(
                matches!(last.value, Num::Float(f) if f.to_bits() == f64::from(tail).to_bits())
            );
            // Spans are in byte order and hold the value's encoding.
            for w in out.windows(2) {
                assert!(w[0].end <= w[1].start);
            }
            for c in &out {
                let bytes = &datum[c.start as usize..c.end as usize];
                match c.value {
                    Num::Int(i) => assert_eq!(bytes, &zz(i)[..]),
                    Num::Float(f) => {
                        let decoded = match <[u8; 8]>::try_from(bytes) {
                            Ok(b) => f64::from_le_bytes(b),
                            Err(_) => f64::from(f32::from_le_bytes(bytes.try_into().unwrap())),
                        };
                        assert_eq!(decoded.to_bits(), f.to_bits());
                    }
                }
            }
        }
    }

    /// Whenever we accept bytes, apache-avro decodes them as one datum with
    /// nothing left over. Only this direction must hold: apache-avro is more
    /// lenient in places (it ignores array block byte sizes, accepts
    /// overlong int varints, returns Null for a string or union cut short
    /// at the end of input, and has no depth or item budget), so it may
    /// accept what we refuse.
    #[test]
    fn differential_against_apache_avro() {
        let mut rng = Rng(0x5eed);
        let mut accepted_mutants = 0;
        // Small and collection-heavy, so that random bytes are often a datum.
        const SMALL: &str = r#"{"type": "array", "items": ["null", "int",
            {"type": "map", "values": "boolean"}, {"type": "enum", "name": "E", "symbols": ["A", "B"]}]}"#;
        let mut accepted_random = 0;
        for (json, seed) in [
            (EXAMPLE, 21),
            (TEMPERATURE, 22),
            (EVERYTHING, 23),
            (SMALL, 24),
        ] {
            let (schema, v) = parse(json);
            for datum in random_datums(&schema, 300, seed) {
                for _ in 0..20 {
                    let mut m = datum.clone();
                    match rng.below(6) {
                        0 if !m.is_empty() => {
                            let i = rng.below(m.len() as u64) as usize;
                            m[i] ^= 1 << rng.below(8);
                        }
                        1 if !m.is_empty() => {
                            let i = rng.below(m.len() as u64) as usize;
                            m[i] = rng.next() as u8;
                        }
                        2 => m.truncate(rng.below(m.len() as u64 + 1) as usize),
                        3 => {
                            let i = rng.below(m.len() as u64 + 1) as usize;
                            m.insert(i, rng.next() as u8);
                        }
                        4 if !m.is_empty() => {
                            m.remove(rng.below(m.len() as u64) as usize);
                        }
                        _ => m.push(rng.next() as u8),
                    }
                    if v.validate(&m).is_ok() {
                        accepted_mutants += 1;
                        assert!(avro_accepts(&schema, &m), "{json}: {m:?}");
                    }
                }
            }
            let tries = if json == SMALL { 50_000 } else { 3_000 };
            for _ in 0..tries {
                let max_len = if rng.below(2) == 0 { 48 } else { 8 };
                let n = rng.below(max_len) as usize;
                // Half of them from small byte values: short varints, valid
                // booleans and indexes, zero terminators.
                let m = if rng.below(2) == 0 {
                    rng.bytes(n)
                } else {
                    (0..n).map(|_| rng.below(8) as u8).collect()
                };
                if v.validate(&m).is_ok() {
                    accepted_random += 1;
                    assert!(avro_accepts(&schema, &m), "{json}: {m:?}");
                }
            }
        }
        assert!(accepted_random > 100, "{accepted_random}");
        // The mutations do reach the "accepted" side (e.g. flipped double bits).
        assert!(accepted_mutants > 1000, "{accepted_mutants}");
    }

    #[test]
    fn capture_does_not_change_the_verdict() {
        let (schema, v) = parse(EVERYTHING);
        let mut rng = Rng(99);
        let mut out = vec![Captured::default(); v.numeric_slots().len()];
        let mut short = [Captured::default(); 2];
        for datum in random_datums(&schema, 200, 31) {
            for _ in 0..10 {
                let mut m = datum.clone();
                let i = rng.below(m.len() as u64) as usize;
                m[i] = rng.next() as u8;
                let plain = v.validate(&m);
                assert_eq!(v.validate_capture(&m, &mut out), plain);
                assert_eq!(v.validate_capture(&m, &mut short), plain);
                assert_eq!(v.validate_capture(&m, &mut []), plain);
            }
        }
    }

    #[test]
    fn named_refs_resolve_across_namespaces() {
        let (schema, v) = parse(
            r#"{"type": "record", "name": "outer.R", "fields": [
                {"name": "p", "type": {"type": "record", "name": "P", "namespace": "geo",
                    "fields": [{"name": "lat", "type": "double"}]}},
                {"name": "q", "type": "geo.P"},
                {"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}},
                {"name": "g", "type": "outer.F"}]}"#,
        );
        assert_eq!(v.numeric_slot_paths(), &["p.lat", "q.lat"]);
        for datum in random_datums(&schema, 50, 3) {
            assert_eq!(datum.len(), 8 + 8 + 2 + 2);
            assert_eq!(v.validate(&datum), Ok(()));
        }
    }
}
