//! One block of 1,000 example.avsc records (~80 bytes each) appended to a
//! file and flushed to the OS, per codec: our `ArchiveWriter`, given the
//! records' encodings as the receive loop has them, side by side with
//! apache-avro's `Writer` given the same records as pre-built `Value`s
//! (`append_value_ref` × 1,000, then `flush`).
//!
//! Neither syncs: the per-block cost is compression plus one trip to the
//! page cache. Files are restarted every `BLOCKS_PER_FILE` blocks to bound
//! the disk used; opening a file (ours on the first block, theirs by
//! construction) is timed for both, deleting it for neither.
//!
//! Also the per-record append that fills a block, without the flush: ours
//! copies the datagram's bytes (what the channel task does), apache-avro
//! encodes the `Value` into its block buffer (what `Writer::append` does).
//!
//! `cargo bench --bench archive`

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use apache_avro::types::{Record, Value};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Schema, Writer};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use speedrelay::archive::ArchiveWriter;
use speedrelay::avro::codec::avro_codec;
use speedrelay::config::{ArchiveSettings, Codec, Rotation, RotationMode};

const SCHEMA: &str = include_str!("../config/agents/example.avsc");
const RECORDS: usize = 1000;
const BLOCKS_PER_FILE: u64 = 256;

fn records(schema: &Schema) -> (Vec<Value>, Vec<u8>) {
    let writer = GenericDatumWriter::builder(schema)
        .build()
        .expect("datum writer");
    let mut values = Vec::with_capacity(RECORDS);
    let mut data = Vec::new();
    for i in 0..RECORDS {
        let t = i as f64 / 100.0;
        let mut r = Record::new(schema).expect("a record schema");
        r.put(
            "time",
            Value::TimestampNanos(1_795_426_812_000_000_000 + i as i64 * 1_000_000),
        );
        r.put(
            "message",
            Value::String(format!("sample {i:06} from the example agent")),
        );
        r.put("counter", Value::Int(i as i32));
        r.put("sine_wave", Value::Double(t.sin()));
        r.put("ramp", Value::Double(t % 1.0));
        r.put(
            "square_wave",
            Value::Double(if t.sin() >= 0.0 { 1.0 } else { -1.0 }),
        );
        // Deterministic but not compressible the way a constant is.
        r.put(
            "noise",
            Value::Double(((i * 7919) % 1000) as f64 / 1000.0 - 0.5),
        );
        let v = Value::from(r);
        writer.write_value_ref(&mut data, &v).expect("encodes");
        values.push(v);
    }
    (values, data)
}

fn ours(dir: &Path, codec: Codec) -> ArchiveWriter {
    let settings = ArchiveSettings {
        codec,
        ..ArchiveSettings::default()
    };
    let rotation = Rotation {
        mode: RotationMode::Time,
        threshold: 3600,
    };
    ArchiveWriter::new(dir.join("ch"), "ch", SCHEMA, settings, rotation, None)
}

fn theirs<'a>(schema: &'a Schema, path: &Path, codec: Codec) -> Writer<'a, File> {
    Writer::builder()
        .schema(schema)
        .writer(File::create(path).expect("bench file"))
        .codec(avro_codec(codec))
        // One block per flush, as ours writes: the default 16 kB would
        // split 80 kB of records into five.
        .block_size(1 << 20)
        .build()
        .expect("apache-avro writer")
}

fn bench(c: &mut Criterion) {
    let schema = Schema::parse_str(SCHEMA).expect("example.avsc parses");
    let (values, data) = records(&schema);
    eprintln!("block: {RECORDS} records, {} bytes encoded", data.len());

    let mut group = c.benchmark_group("archive_block_1000");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for codec in [Codec::Null, Codec::Deflate, Codec::Zstandard, Codec::Snappy] {
        group.bench_function(BenchmarkId::new("speedrelay", codec.as_str()), |b| {
            b.iter_custom(|iters| {
                let tmp = tempfile::tempdir().expect("tempdir");
                let mut total = Duration::ZERO;
                let mut w = ours(tmp.path(), codec);
                for i in 0..iters {
                    if i > 0 && i % BLOCKS_PER_FILE == 0 {
                        // Drop without close: a close would fsync, which
                        // apache-avro's writer does not do either.
                        let old = w.current_path().map(Path::to_owned);
                        w = ours(tmp.path(), codec);
                        if let Some(old) = old {
                            std::fs::remove_file(old).expect("remove");
                        }
                    }
                    let start = Instant::now();
                    black_box(w.write_block(&data, RECORDS as u64).expect("write_block"));
                    total += start.elapsed();
                }
                total
            });
        });
        group.bench_function(BenchmarkId::new("apache-avro", codec.as_str()), |b| {
            b.iter_custom(|iters| {
                let tmp = tempfile::tempdir().expect("tempdir");
                let path = tmp.path().join("theirs.avro");
                let mut total = Duration::ZERO;
                let start = Instant::now();
                let mut w = theirs(&schema, &path, codec);
                total += start.elapsed();
                for i in 0..iters {
                    if i > 0 && i % BLOCKS_PER_FILE == 0 {
                        drop(w);
                        std::fs::remove_file(&path).expect("remove");
                        let start = Instant::now();
                        w = theirs(&schema, &path, codec);
                        total += start.elapsed();
                    }
                    let start = Instant::now();
                    for v in &values {
                        w.append_value_ref(v).expect("append");
                    }
                    black_box(w.flush().expect("flush"));
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

/// 1,000 records appended to a block buffer that is reused (cleared, not freed).
fn append(c: &mut Criterion) {
    let schema = Schema::parse_str(SCHEMA).expect("example.avsc parses");
    let (values, _) = records(&schema);
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("datum writer");
    let datagrams: Vec<Vec<u8>> = values
        .iter()
        .map(|v| writer.write_value_to_vec(v.clone()).expect("encodes"))
        .collect();
    let mut group = c.benchmark_group("archive_append_1000");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let mut block = Vec::new();
    group.bench_function("speedrelay", |b| {
        b.iter(|| {
            block.clear();
            for d in &datagrams {
                block.extend_from_slice(black_box(d));
            }
            black_box(block.len())
        })
    });
    group.bench_function("apache-avro", |b| {
        b.iter(|| {
            block.clear();
            for v in &values {
                writer
                    .write_value_ref(&mut block, black_box(v))
                    .expect("encodes");
            }
            black_box(block.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench, append);
criterion_main!(benches);
