//! Per-datagram cost of the validator (ours, with and without capture) next
//! to apache-avro decoding the same datum, per schema; and of
//! `Decimator::push` per algorithm.
//!
//! `cargo bench --bench validate` (short runs: 2 s, 20 samples).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, criterion_group, criterion_main};
use speedrelay::config::Algorithm;
use speedrelay::decimator::{DecimatedBatch, Decimator};
use speedrelay::validator::{Captured, Validator};

const EXAMPLE: &str = include_str!("../config/agents/example.avsc");
const TEMPERATURE: &str = include_str!("../config/agents/temperature.avsc");

fn wide_schema() -> String {
    let fields: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"name": "v{i}", "type": "double"}}"#))
        .collect();
    format!(
        r#"{{"type": "record", "name": "wide", "fields": [{}]}}"#,
        fields.join(", ")
    )
}

fn example_value(n: i64) -> Value {
    let x = n as f64 / 10.0;
    Value::Record(vec![
        (
            "time".into(),
            Value::TimestampNanos(1_760_000_000_000_000_000 + n),
        ),
        ("message".into(), Value::String(format!("sample {n}"))),
        ("counter".into(), Value::Int(n as i32)),
        ("sine_wave".into(), Value::Double(x.sin())),
        ("ramp".into(), Value::Double(x)),
        ("square_wave".into(), Value::Double(x.sin().signum())),
        (
            "noise".into(),
            Value::Double((n * 7919 % 101) as f64 / 101.0),
        ),
    ])
}

fn temperature_value(n: i64) -> Value {
    let c = 20.0 + n as f64 / 100.0;
    Value::Record(vec![
        ("time".into(), Value::Long(1_760_000_000_000 + n)),
        ("device_id".into(), Value::String("sensor-0042".into())),
        ("temperature_c".into(), Value::Double(c)),
        ("temperature_f".into(), Value::Double(c * 1.8 + 32.0)),
        ("pressure_pa".into(), Value::Double(101_325.0 + n as f64)),
        ("humidity_pct".into(), Value::Double(45.5)),
        ("status".into(), Value::String("ok".into())),
    ])
}

fn wide_value(n: i64) -> Value {
    Value::Record(
        (0..100)
            .map(|i| (format!("v{i}"), Value::Double((n * 100 + i) as f64 * 0.5)))
            .collect(),
    )
}

fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("apache-avro encodes")
}

/// Name, schema and a generator of the datum's value.
type Case<'a> = (&'a str, &'a str, fn(i64) -> Value);

fn validation(c: &mut Criterion) {
    let wide = wide_schema();
    let cases: [Case; 3] = [
        ("example", EXAMPLE, example_value),
        ("temperature", TEMPERATURE, temperature_value),
        ("wide100", &wide, wide_value),
    ];
    for (name, json, value) in cases {
        let schema = Schema::parse_str(json).expect("schema parses");
        let validator = Validator::compile(&schema).expect("compiles");
        let datum = encode(&schema, value(12_345));
        validator.validate(&datum).expect("valid");
        let mut out = vec![Captured::default(); validator.numeric_slots().len()];
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");

        let mut group = c.benchmark_group(format!("validate/{name}"));
        group.bench_function("ours/validate", |b| {
            b.iter(|| validator.validate(black_box(&datum)))
        });
        group.bench_function("ours/validate_capture", |b| {
            b.iter(|| validator.validate_capture(black_box(&datum), &mut out))
        });
        // The reader (schema resolution) built once, as a relay would.
        group.bench_function("apache-avro/read_value", |b| {
            b.iter(|| reader.read_value(&mut black_box(&datum[..])))
        });
        // What `from_avro_datum` does: a reader built per datum.
        #[allow(deprecated)]
        group.bench_function("apache-avro/from_avro_datum", |b| {
            b.iter(|| apache_avro::from_avro_datum(&schema, &mut black_box(&datum[..]), None))
        });
        group.finish();
    }
}

fn decimation(c: &mut Criterion) {
    let schema = Schema::parse_str(EXAMPLE).expect("schema parses");
    let validator = Arc::new(Validator::compile(&schema).expect("compiles"));
    let datums: Vec<Vec<u8>> = (0..64).map(|n| encode(&schema, example_value(n))).collect();
    let captures: Vec<Vec<Captured>> = datums
        .iter()
        .map(|d| {
            let mut out = vec![Captured::default(); validator.numeric_slots().len()];
            validator.validate_capture(d, &mut out).expect("valid");
            out
        })
        .collect();

    let mut group = c.benchmark_group("decimator/example/factor10");
    for algorithm in [
        Algorithm::Downsample,
        Algorithm::Average,
        Algorithm::Minmax,
        Algorithm::Rms,
    ] {
        let mut dec = Decimator::new(validator.clone(), algorithm, 10);
        let mut out = DecimatedBatch::default();
        let mut i = 0usize;
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                // A receive batch of 64 records, then the caller clears.
                if i.is_multiple_of(datums.len()) {
                    out.clear();
                }
                let k = i % datums.len();
                dec.push(black_box(&datums[k]), &captures[k], &mut out);
                i += 1;
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    targets = validation, decimation
}
criterion_main!(benches);
