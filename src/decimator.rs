//! The decimator: turns the full-rate stream of valid records into the
//! decimated stream (downsample, average, minmax, rms), re-encoding records
//! in the channel's schema.
//!
//! STUB: interface only, to be implemented.

use std::sync::Arc;

use crate::config::Algorithm;
use crate::validator::{Captured, Validator};

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
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|&(s, e)| &self.data[s..e])
    }
}

#[derive(Debug)]
pub struct Decimator {
    validator: Arc<Validator>,
    algorithm: Algorithm,
    factor: u32,
}

impl Decimator {
    pub fn new(validator: Arc<Validator>, algorithm: Algorithm, factor: u32) -> Self {
        Self {
            validator,
            algorithm,
            factor: factor.max(1),
        }
    }
    /// Starts a new window with new settings.
    pub fn reconfigure(&mut self, algorithm: Algorithm, factor: u32) {
        self.algorithm = algorithm;
        self.factor = factor.max(1);
    }
    /// Whether `push` needs the captured numeric fields of each record.
    pub fn needs_values(&self) -> bool {
        !matches!(self.algorithm, Algorithm::Downsample)
    }
    /// Feeds one valid record; appends 0, 1 or 2 records to `out`.
    pub fn push(&mut self, datum: &[u8], captured: &[Captured], out: &mut DecimatedBatch) {
        let _ = (datum, captured, out, &self.validator, self.factor);
    }
}
