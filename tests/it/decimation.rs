//! The decimator on known sequences (SPEC §3): exact values per algorithm,
//! fields taken from the last record, outputs that apache-avro decodes, and
//! a hot path (validate_capture + push) that allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use speedrelay::config::Algorithm;
use speedrelay::decimator::{DecimatedBatch, Decimator};
use speedrelay::validator::{Captured, Validator};

/// Counts this thread's allocations, so a test can assert that a loop
/// allocates nothing while other tests run on other threads.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// meets GlobalAlloc's contract; counting allocates nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Numeric slots: i, l, f, d, pos.x. Not numeric: the timestamp, the
/// string, the array inside `pos` and the union.
const SCHEMA: &str = r#"{
  "type": "record", "name": "Sample", "namespace": "test.dec",
  "fields": [
    {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "label", "type": "string"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "pos", "type": {"type": "record", "name": "Pos", "fields": [
      {"name": "x", "type": "double"},
      {"name": "tags", "type": {"type": "array", "items": "string"}}
    ]}},
    {"name": "opt", "type": ["null", "double"]}
  ]
}"#;

/// One record's values, in field order.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    time: i64,
    label: String,
    i: i32,
    l: i64,
    f: f32,
    d: f64,
    x: f64,
    tags: Vec<String>,
    opt: Option<f64>,
}

impl Sample {
    /// Record `n` of a sequence: numeric fields from the arguments, the
    /// others derived from `n` so that "taken from the last record" shows.
    fn new(n: i64, i: i32, l: i64, f: f32, d: f64, x: f64) -> Self {
        Self {
            time: 1_000 * n,
            label: format!("record {n}"),
            i,
            l,
            f,
            d,
            x,
            tags: (0..n).map(|k| format!("t{k}")).collect(),
            opt: (n % 2 == 0).then_some(n as f64),
        }
    }

    fn value(&self) -> Value {
        Value::Record(vec![
            ("time".into(), Value::TimestampMillis(self.time)),
            ("label".into(), Value::String(self.label.clone())),
            ("i".into(), Value::Int(self.i)),
            ("l".into(), Value::Long(self.l)),
            ("f".into(), Value::Float(self.f)),
            ("d".into(), Value::Double(self.d)),
            (
                "pos".into(),
                Value::Record(vec![
                    ("x".into(), Value::Double(self.x)),
                    (
                        "tags".into(),
                        Value::Array(self.tags.iter().cloned().map(Value::String).collect()),
                    ),
                ]),
            ),
            (
                "opt".into(),
                match self.opt {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(v) => Value::Union(1, Box::new(Value::Double(v))),
                },
            ),
        ])
    }

    fn from_value(v: Value) -> Self {
        let Value::Record(fields) = v else {
            panic!("not a record: {v:?}")
        };
        let mut s = Sample::new(0, 0, 0, 0.0, 0.0, 0.0);
        for (name, v) in fields {
            match (name.as_str(), v) {
                ("time", Value::TimestampMillis(t)) => s.time = t,
                ("label", Value::String(t)) => s.label = t,
                ("i", Value::Int(t)) => s.i = t,
                ("l", Value::Long(t)) => s.l = t,
                ("f", Value::Float(t)) => s.f = t,
                ("d", Value::Double(t)) => s.d = t,
                ("pos", Value::Record(pos)) => {
                    for (name, v) in pos {
                        match (name.as_str(), v) {
                            ("x", Value::Double(t)) => s.x = t,
                            ("tags", Value::Array(tags)) => {
                                s.tags = tags
                                    .into_iter()
                                    .map(|t| match t {
                                        Value::String(t) => t,
                                        t => panic!("tag {t:?}"),
                                    })
                                    .collect()
                            }
                            other => panic!("pos field {other:?}"),
                        }
                    }
                }
                ("opt", Value::Union(_, v)) => {
                    s.opt = match *v {
                        Value::Double(t) => Some(t),
                        _ => None,
                    }
                }
                other => panic!("field {other:?}"),
            }
        }
        s
    }
}

struct Fixture {
    schema: Schema,
    validator: Arc<Validator>,
}

impl Fixture {
    fn new() -> Self {
        let schema = Schema::parse_str(SCHEMA).expect("schema parses");
        let validator = Arc::new(Validator::compile(&schema).expect("compiles"));
        Self { schema, validator }
    }

    fn encode(&self, s: &Sample) -> Vec<u8> {
        GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(s.value()))
            .expect("apache-avro encodes")
    }

    /// apache-avro's decoding of an output, which must use every byte.
    fn decode(&self, mut datum: &[u8]) -> Sample {
        let v = GenericDatumReader::builder(&self.schema)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .expect("apache-avro decodes the output");
        assert!(datum.is_empty(), "{} bytes left", datum.len());
        Sample::from_value(v)
    }

    /// Validates, captures and pushes every sample; returns the outputs.
    fn run(&self, algorithm: Algorithm, factor: u32, samples: &[Sample]) -> Vec<Vec<u8>> {
        let mut dec = Decimator::new(self.validator.clone(), algorithm, factor);
        self.push_all(&mut dec, samples)
    }

    fn push_all(&self, dec: &mut Decimator, samples: &[Sample]) -> Vec<Vec<u8>> {
        let mut captured = vec![Captured::default(); self.validator.numeric_slots().len()];
        let mut out = DecimatedBatch::default();
        for s in samples {
            let datum = self.encode(s);
            self.validator
                .validate_capture(&datum, &mut captured)
                .expect("valid");
            dec.push(&datum, &captured, &mut out);
        }
        out.iter().map(<[u8]>::to_vec).collect()
    }

    fn run_decoded(&self, algorithm: Algorithm, factor: u32, samples: &[Sample]) -> Vec<Sample> {
        self.run(algorithm, factor, samples)
            .iter()
            .map(|d| self.decode(d))
            .collect()
    }
}

/// Records 1..=4 with every numeric field following 1, 2, 3, 4 (negated
/// for the long).
fn one_to_four() -> Vec<Sample> {
    (1..=4)
        .map(|n| Sample::new(n, n as i32, -n, n as f32, n as f64, n as f64))
        .collect()
}

/// `last` with its numeric fields replaced.
fn with(last: &Sample, i: i32, l: i64, f: f32, d: f64, x: f64) -> Sample {
    Sample {
        i,
        l,
        f,
        d,
        x,
        ..last.clone()
    }
}

#[test]
fn slots_are_the_plain_numeric_fields() {
    let fx = Fixture::new();
    assert_eq!(
        fx.validator.numeric_slot_paths(),
        &["i", "l", "f", "d", "pos.x"]
    );
}

#[test]
fn downsample_emits_the_last_record_of_each_window_unchanged() {
    let fx = Fixture::new();
    let samples: Vec<Sample> = (1..=7)
        .map(|n| Sample::new(n, n as i32, n, 0.5, 1.5, 2.5))
        .collect();
    let out = fx.run(Algorithm::Downsample, 3, &samples);
    assert_eq!(out, vec![fx.encode(&samples[2]), fx.encode(&samples[5])]);
}

#[test]
fn average_of_one_to_four() {
    let fx = Fixture::new();
    let samples = one_to_four();
    let out = fx.run_decoded(Algorithm::Average, 4, &samples);
    // int 2.5 → 3 and long −2.5 → −3 (ties away from zero).
    assert_eq!(out, vec![with(&samples[3], 3, -3, 2.5, 2.5, 2.5)]);
}

#[test]
fn minmax_of_one_to_four() {
    let fx = Fixture::new();
    let samples = one_to_four();
    let out = fx.run_decoded(Algorithm::Minmax, 4, &samples);
    assert_eq!(
        out,
        vec![
            with(&samples[3], 1, -4, 1.0, 1.0, 1.0),
            with(&samples[3], 4, -1, 4.0, 4.0, 4.0),
        ]
    );
}

#[test]
fn rms_of_one_to_four() {
    let fx = Fixture::new();
    let samples = one_to_four();
    let out = fx.run_decoded(Algorithm::Rms, 4, &samples);
    let r = 7.5f64.sqrt(); // 2.7386…
    assert_eq!(out, vec![with(&samples[3], 3, 3, r as f32, r, r)]);
}

#[test]
fn integer_means_round_half_away_from_zero_exactly() {
    let fx = Fixture::new();
    let window = |pairs: &[(i32, i64)]| {
        let samples: Vec<Sample> = pairs
            .iter()
            .enumerate()
            .map(|(n, &(i, l))| Sample::new(n as i64, i, l, 0.0, 0.0, 0.0))
            .collect();
        let out = fx.run_decoded(Algorithm::Average, pairs.len() as u32, &samples);
        assert_eq!(out.len(), 1);
        (out[0].i, out[0].l)
    };
    assert_eq!(window(&[(1, -1), (2, -2)]), (2, -2));
    assert_eq!(window(&[(1, 1), (2, 2), (2, 2)]), (2, 2));
    assert_eq!(window(&[(-1, 4), (-1, 4), (-2, 5)]), (-1, 4));
    // Sums beyond i64 are exact (i128): (MAX + MAX−1)/2 = MAX − ½ → MAX.
    assert_eq!(
        window(&[(i32::MAX, i64::MAX), (i32::MAX - 1, i64::MAX - 1)]),
        (i32::MAX, i64::MAX)
    );
    assert_eq!(
        window(&[(i32::MIN, i64::MIN), (i32::MIN + 1, i64::MIN + 1)]),
        (i32::MIN, i64::MIN)
    );
    // The varint grows from 1 to 6 bytes: the rest of the record follows it.
    assert_eq!(
        window(&[(0, 1), (0, 999_999_999_999)]),
        (0, 500_000_000_000)
    );
}

#[test]
fn rms_saturates_integers() {
    let fx = Fixture::new();
    let samples = vec![Sample::new(1, i32::MIN, i64::MIN, 0.0, -0.0, 3.0)];
    let out = fx.run_decoded(Algorithm::Rms, 1, &samples);
    assert_eq!((out[0].i, out[0].l), (i32::MAX, i64::MAX));
    // rms of a single sample is its magnitude.
    assert_eq!((out[0].d, out[0].x), (0.0, 3.0));
}

#[test]
fn nan_samples_are_skipped_unless_all_are_nan() {
    let fx = Fixture::new();
    let nan = f64::NAN;
    let samples: Vec<Sample> = [(nan, nan), (1.0, nan), (nan, nan), (3.0, nan)]
        .iter()
        .enumerate()
        .map(|(n, &(d, x))| Sample::new(n as i64, 0, 0, d as f32, d, x))
        .collect();
    let avg = &fx.run_decoded(Algorithm::Average, 4, &samples)[0];
    assert_eq!((avg.f, avg.d), (2.0, 2.0));
    assert!(avg.x.is_nan());
    let mm = fx.run_decoded(Algorithm::Minmax, 4, &samples);
    assert_eq!((mm[0].f, mm[0].d, mm[1].f, mm[1].d), (1.0, 1.0, 3.0, 3.0));
    assert!(mm[0].x.is_nan() && mm[1].x.is_nan());
    let rms = &fx.run_decoded(Algorithm::Rms, 4, &samples)[0];
    assert_eq!(rms.d, 5f64.sqrt());
    assert_eq!(rms.f, 5f64.sqrt() as f32);
    assert!(rms.x.is_nan());
}

#[test]
fn float_mean_is_computed_in_f64_then_rounded() {
    let fx = Fixture::new();
    // In f32, 16777216 + 1 + 1 would stay 16777216 at each step.
    let samples: Vec<Sample> = [16_777_216.0f32, 1.0, 1.0]
        .iter()
        .enumerate()
        .map(|(n, &f)| Sample::new(n as i64, 0, 0, f, f64::from(f), 0.0))
        .collect();
    let avg = &fx.run_decoded(Algorithm::Average, 3, &samples)[0];
    assert_eq!(avg.f, (16_777_218.0f64 / 3.0) as f32);
    assert_eq!(avg.d, 16_777_218.0 / 3.0);
}

#[test]
fn factor_one_passes_every_record() {
    let fx = Fixture::new();
    let samples: Vec<Sample> = (1..=5)
        .map(|n| Sample::new(n, -(n as i32), n << 40, -0.0, n as f64 / 3.0, -1.0))
        .collect();
    let encoded: Vec<Vec<u8>> = samples.iter().map(|s| fx.encode(s)).collect();
    assert_eq!(fx.run(Algorithm::Downsample, 1, &samples), encoded);
    assert_eq!(fx.run(Algorithm::Average, 1, &samples), encoded);
    let twice: Vec<Vec<u8>> = encoded
        .iter()
        .flat_map(|e| [e.clone(), e.clone()])
        .collect();
    assert_eq!(fx.run(Algorithm::Minmax, 1, &samples), twice);
    // rms of one sample is its magnitude.
    let magnitudes: Vec<Sample> = samples
        .iter()
        .map(|s| with(s, s.i.abs(), s.l, 0.0, s.d, 1.0))
        .collect();
    assert_eq!(fx.run_decoded(Algorithm::Rms, 1, &samples), magnitudes);
    // A factor of 0 is taken as 1.
    assert_eq!(fx.run(Algorithm::Downsample, 0, &samples), encoded);
}

#[test]
fn reconfigure_starts_a_new_window() {
    let fx = Fixture::new();
    let samples = one_to_four();
    let mut dec = Decimator::new(fx.validator.clone(), Algorithm::Downsample, 3);
    assert!(!dec.needs_values());
    assert!(fx.push_all(&mut dec, &samples[..2]).is_empty());
    dec.reconfigure(Algorithm::Average, 2);
    assert!(dec.needs_values());
    // Records 1 and 2 are forgotten: the first window is records 3 and 4.
    let out = fx.push_all(&mut dec, &samples[2..]);
    let out: Vec<Sample> = out.iter().map(|d| fx.decode(d)).collect();
    assert_eq!(out, vec![with(&samples[3], 4, -4, 3.5, 3.5, 3.5)]);
}

#[test]
fn windows_follow_each_other() {
    let fx = Fixture::new();
    let samples: Vec<Sample> = (1..=9)
        .map(|n| Sample::new(n, n as i32, n, n as f32, n as f64, n as f64))
        .collect();
    let out = fx.run_decoded(Algorithm::Average, 3, &samples);
    let means: Vec<i32> = out.iter().map(|s| s.i).collect();
    assert_eq!(means, [2, 5, 8]);
    assert_eq!(out[2].label, "record 9");
}

#[test]
fn missing_captures_leave_fields_unchanged() {
    let fx = Fixture::new();
    let samples = one_to_four();
    let mut dec = Decimator::new(fx.validator.clone(), Algorithm::Average, 2);
    let mut out = DecimatedBatch::default();
    for s in &samples[..2] {
        dec.push(&fx.encode(s), &[], &mut out);
    }
    assert_eq!(out.iter().next(), Some(&fx.encode(&samples[1])[..]));
}

#[test]
fn steady_state_allocates_nothing() {
    let fx = Fixture::new();
    let samples: Vec<Sample> = (1..=64)
        .map(|n| Sample::new(n, n as i32 * 1000, n << 30, n as f32, -(n as f64), 0.25))
        .collect();
    let datums: Vec<Vec<u8>> = samples.iter().map(|s| fx.encode(s)).collect();
    let mut captured = vec![Captured::default(); fx.validator.numeric_slots().len()];
    for algorithm in [
        Algorithm::Downsample,
        Algorithm::Average,
        Algorithm::Minmax,
        Algorithm::Rms,
    ] {
        let mut dec = Decimator::new(fx.validator.clone(), algorithm, 4);
        let mut out = DecimatedBatch::default();
        // Warm-up: the batch grows to its working capacity.
        for _ in 0..2 {
            out.clear();
            for d in &datums {
                fx.validator
                    .validate_capture(d, &mut captured)
                    .expect("valid");
                dec.push(d, &captured, &mut out);
            }
        }
        let before = allocations();
        // The counter does see this thread's allocations.
        drop(std::hint::black_box(vec![0u8; 16]));
        assert_eq!(allocations() - before, 1);
        let before = allocations();
        for _ in 0..10 {
            out.clear();
            for d in &datums {
                fx.validator.validate(d).expect("valid");
                fx.validator
                    .validate_capture(d, &mut captured)
                    .expect("valid");
                dec.push(d, &captured, &mut out);
            }
        }
        assert_eq!(allocations() - before, 0, "{algorithm:?}");
        assert_eq!(
            out.records.len(),
            16 * if algorithm == Algorithm::Minmax { 2 } else { 1 }
        );
    }
}
