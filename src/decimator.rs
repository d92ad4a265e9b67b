//! The decimator (SPEC §3): turns the full-rate stream of valid records into
//! the decimated stream, re-encoding records in the channel's schema. It
//! owns the window, the per-field accumulators and the re-encoding; the
//! channel task owns when to call it and where its output goes.
//!
//! # Semantics
//!
//! A **window** is `factor` consecutive valid records passed to
//! [`Decimator::push`] (`factor` ≥ 1; a factor of 0 is taken as 1), counted
//! from the decimator's creation or its last [`Decimator::reconfigure`].
//! Nothing is emitted before a window is complete; a partial window is
//! dropped by `reconfigure` and never flushed.
//!
//! The **numeric fields** are the validator's numeric slots: fields of plain
//! type `int`, `long`, `float` or `double` reached from the root through
//! records only (not inside arrays, maps or unions). Logical types over
//! int/long (`date`, `time-*`, `timestamp-*`, also when the `logicalType` is
//! misplaced at the field level) are not numeric. Every other field, and
//! every byte of the record outside the numeric fields, comes from the
//! **last record of the window**.
//!
//! - `downsample`: the last record of each window, byte for byte (factor 3
//!   over records 1..6 emits records 3 and 6).
//! - `average`: the last record with each numeric field replaced by the
//!   window mean. int/long: the exact sum (in i128) divided by the count,
//!   rounded to nearest with ties away from zero (1,2,3,4 → 3; −1,−2 → −2).
//!   double: sum in f64 divided by the count. float: the same in f64, then
//!   rounded to f32.
//! - `minmax`: two records per window, first every numeric field set to its
//!   window minimum, then every numeric field set to its maximum.
//! - `rms`: √(Σx²/n) computed in f64; int/long results rounded to nearest
//!   (ties away from zero) and saturated to the type's range; float results
//!   rounded to f32.
//!
//! **NaN** (float/double) samples are skipped by `average`, `minmax` and
//! `rms`: the result is taken over the window's other samples, and is NaN
//! only when every sample of the window is NaN. Infinities take part as
//! ordinary values (so +∞ and −∞ in one window average to NaN). Sums are
//! plain f64: a double window sum beyond ±1.8e308 averages to ±∞, and
//! `rms` overflows to +∞ for |x| beyond about 1.3e154. Long values beyond
//! 2^53 lose precision in `rms` (f64), not in `average` (exact).
//!
//! **Re-encoding** copies the window's last record and replaces each numeric
//! field's bytes by the new value's encoding: zigzag varint for int/long
//! (its length may differ from the original's), little-endian IEEE 754 for
//! float/double. The output is a datum of the same schema.
//!
//! On the hot path `push` allocates nothing: accumulators are allocated in
//! [`Decimator::new`], and [`DecimatedBatch`] reuses its capacity when the
//! caller clears it per receive batch.

use std::sync::Arc;

use crate::avro::put_long;
use crate::config::Algorithm;
use crate::validator::{Captured, Num, NumericKind, Validator};

/// Output records of one receive batch, packed end to end.
#[derive(Debug, Default)]
pub struct DecimatedBatch {
    pub data: Vec<u8>,
    /// `(start, end)` of each record in `data`.
    pub records: Vec<(usize, usize)>,
}

impl DecimatedBatch {
    pub fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
    }
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.records
            .iter()
            .map(|&(s, e)| self.data.get(s..e).unwrap_or(&[]))
    }
}

/// One numeric slot's running statistics over the current window.
#[derive(Debug, Clone, Copy)]
struct SlotAcc {
    /// Samples captured for this slot in the window.
    seen: u32,
    /// Samples that take part (all ints; non-NaN floats).
    n: u32,
    int_sum: i128,
    int_min: i64,
    int_max: i64,
    /// Sum (average) or sum of squares (rms).
    float_sum: f64,
    float_min: f64,
    float_max: f64,
}

impl SlotAcc {
    const EMPTY: SlotAcc = SlotAcc {
        seen: 0,
        n: 0,
        int_sum: 0,
        int_min: i64::MAX,
        int_max: i64::MIN,
        // -0.0 is the identity of IEEE addition (0.0 would turn a lone -0.0
        // into +0.0).
        float_sum: -0.0,
        float_min: f64::NAN,
        float_max: f64::NAN,
    };
}

#[derive(Debug)]
pub struct Decimator {
    /// The channel's compiled schema: gives the slots' kinds.
    validator: Arc<Validator>,
    algorithm: Algorithm,
    factor: u32,
    /// Records pushed in the current window.
    count: u32,
    /// One per numeric slot; allocated once, reset per window.
    acc: Vec<SlotAcc>,
}

impl Decimator {
    pub fn new(validator: Arc<Validator>, algorithm: Algorithm, factor: u32) -> Self {
        let acc = vec![SlotAcc::EMPTY; validator.numeric_slots().len()];
        Self {
            validator,
            algorithm,
            factor: factor.max(1),
            count: 0,
            acc,
        }
    }

    /// Switches algorithm and factor and starts a new window (the records of
    /// the current one are dropped).
    pub fn reconfigure(&mut self, algorithm: Algorithm, factor: u32) {
        self.algorithm = algorithm;
        self.factor = factor.max(1);
        self.reset();
    }

    /// Whether `push` needs the captured numeric fields of each record.
    pub fn needs_values(&self) -> bool {
        !matches!(self.algorithm, Algorithm::Downsample)
    }

    /// Feeds one valid record; appends 0, 1 or 2 records to `out`.
    ///
    /// `captured` is what [`Validator::validate_capture`] filled for `datum`
    /// (ignored by `downsample`). Slots missing from it, or whose span does
    /// not fit `datum`, are left as they are in the last record.
    pub fn push(&mut self, datum: &[u8], captured: &[Captured], out: &mut DecimatedBatch) {
        if self.needs_values() {
            self.accumulate(captured);
        }
        self.count += 1;
        if self.count < self.factor {
            return;
        }
        let slots = self.validator.numeric_slots();
        match self.algorithm {
            Algorithm::Downsample => {
                let start = out.data.len();
                out.data.extend_from_slice(datum);
                out.records.push((start, out.data.len()));
            }
            Algorithm::Average => {
                reencode(datum, captured, slots, &self.acc, out, mean);
            }
            Algorithm::Minmax => {
                reencode(datum, captured, slots, &self.acc, out, minimum);
                reencode(datum, captured, slots, &self.acc, out, maximum);
            }
            Algorithm::Rms => {
                reencode(datum, captured, slots, &self.acc, out, rms);
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.count = 0;
        self.acc.fill(SlotAcc::EMPTY);
    }

    fn accumulate(&mut self, captured: &[Captured]) {
        let slots = self.validator.numeric_slots();
        let algorithm = self.algorithm;
        for ((acc, kind), c) in self.acc.iter_mut().zip(slots).zip(captured) {
            acc.seen += 1;
            match kind {
                NumericKind::Int | NumericKind::Long => {
                    let v = as_i64(c.value);
                    acc.n += 1;
                    match algorithm {
                        Algorithm::Average => acc.int_sum += i128::from(v),
                        Algorithm::Minmax => {
                            acc.int_min = acc.int_min.min(v);
                            acc.int_max = acc.int_max.max(v);
                        }
                        Algorithm::Rms => acc.float_sum += (v as f64) * (v as f64),
                        Algorithm::Downsample => {}
                    }
                }
                NumericKind::Float | NumericKind::Double => {
                    let v = as_f64(c.value);
                    if v.is_nan() {
                        continue;
                    }
                    match algorithm {
                        Algorithm::Average => acc.float_sum += v,
                        Algorithm::Minmax => {
                            // First sample, or strictly beyond: NaN-free here.
                            if acc.n == 0 || v < acc.float_min {
                                acc.float_min = v;
                            }
                            if acc.n == 0 || v > acc.float_max {
                                acc.float_max = v;
                            }
                        }
                        Algorithm::Rms => acc.float_sum += v * v,
                        Algorithm::Downsample => {}
                    }
                    acc.n += 1;
                }
            }
        }
    }
}

fn as_i64(v: Num) -> i64 {
    match v {
        Num::Int(i) => i,
        Num::Float(f) => f as i64,
    }
}

fn as_f64(v: Num) -> f64 {
    match v {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// Window mean of one slot (see the module doc for rounding).
fn mean(acc: &SlotAcc, kind: NumericKind) -> Num {
    match kind {
        NumericKind::Int | NumericKind::Long => {
            let n = i128::from(acc.n.max(1));
            let (q, r) = (acc.int_sum / n, acc.int_sum % n);
            // Ties away from zero: |r| ≥ n/2 moves one step away from zero.
            let q = if 2 * r.abs() >= n {
                q + acc.int_sum.signum()
            } else {
                q
            };
            // The mean of in-range values is in range.
            Num::Int(i64::try_from(q).unwrap_or(0))
        }
        NumericKind::Float | NumericKind::Double => Num::Float(if acc.n == 0 {
            f64::NAN
        } else {
            acc.float_sum / f64::from(acc.n)
        }),
    }
}

fn minimum(acc: &SlotAcc, kind: NumericKind) -> Num {
    match kind {
        NumericKind::Int | NumericKind::Long => Num::Int(acc.int_min),
        NumericKind::Float | NumericKind::Double => Num::Float(acc.float_min),
    }
}

fn maximum(acc: &SlotAcc, kind: NumericKind) -> Num {
    match kind {
        NumericKind::Int | NumericKind::Long => Num::Int(acc.int_max),
        NumericKind::Float | NumericKind::Double => Num::Float(acc.float_max),
    }
}

fn rms(acc: &SlotAcc, kind: NumericKind) -> Num {
    let r = if acc.n == 0 {
        f64::NAN
    } else {
        (acc.float_sum / f64::from(acc.n)).sqrt()
    };
    match kind {
        // `as` saturates (and maps NaN to 0); the int clamp is in `encode`.
        NumericKind::Int | NumericKind::Long => Num::Int(r.round() as i64),
        NumericKind::Float | NumericKind::Double => Num::Float(r),
    }
}

/// Appends `datum` to `out` with each numeric slot's bytes replaced by the
/// encoding of `value(slot accumulator, kind)`.
fn reencode(
    datum: &[u8],
    captured: &[Captured],
    slots: &[NumericKind],
    acc: &[SlotAcc],
    out: &mut DecimatedBatch,
    value: fn(&SlotAcc, NumericKind) -> Num,
) {
    let start = out.data.len();
    let mut copied = 0usize;
    for ((&kind, acc), c) in slots.iter().zip(acc).zip(captured) {
        let (s, e) = (c.start as usize, c.end as usize);
        // A slot with no samples or a span that does not fit after the
        // previous one keeps its bytes (defensive: the caller passes what
        // validate_capture filled).
        if acc.seen == 0 || s < copied || e < s || e > datum.len() {
            continue;
        }
        out.data
            .extend_from_slice(datum.get(copied..s).unwrap_or_default());
        encode(kind, value(acc, kind), &mut out.data);
        copied = e;
    }
    out.data
        .extend_from_slice(datum.get(copied..).unwrap_or_default());
    out.records.push((start, out.data.len()));
}

/// Avro binary encoding of `v` as `kind`.
fn encode(kind: NumericKind, v: Num, out: &mut Vec<u8>) {
    match kind {
        NumericKind::Int => {
            let i = as_i64(v).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
            put_long(out, i);
        }
        NumericKind::Long => put_long(out, as_i64(v)),
        NumericKind::Float => out.extend_from_slice(&(as_f64(v) as f32).to_le_bytes()),
        NumericKind::Double => out.extend_from_slice(&as_f64(v).to_le_bytes()),
    }
}
