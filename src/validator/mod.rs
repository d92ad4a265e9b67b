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
//! into a linear sequence of `Op`s; arrays, maps, union branches and
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
//!
//! One file each: `compile` (schema → program, once per schema), `run` (the
//! per-datagram walker); this file holds the public surface and the
//! `Op`/`Program` contract between the two.

mod compile;
mod run;
#[cfg(test)]
mod tests;

use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;

use compile::Compiler;
use run::run;

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
/// hot path can keep the last one in an atomic (see `InvalidDatum::pack`).
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
    pub(crate) fn pack(self) -> u64 {
        ((self.kind as u64) << 32) | self.offset as u64
    }

    /// The inverse of [`InvalidDatum::pack`]; `None` for 0 or a value that no
    /// `pack` produced.
    pub(crate) fn unpack(v: u64) -> Option<Self> {
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
///
/// Holds only the compiled programs, not the parsed schema: a thousand
/// idle channels each kept a few KiB of schema tree that nothing read.
#[derive(Debug)]
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
    pub(crate) fn validate_prefix(&self, data: &[u8]) -> Result<usize, InvalidDatum> {
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
