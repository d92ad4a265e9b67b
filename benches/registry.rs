//! The registry's three costs that matter to the engine and the API, on a
//! registry holding 1,000 channels (~420-byte records, schema included):
//! - `insert`: one durable commit (fsync), what POST /channels waits for;
//!   the inserted channel is removed again outside the timed section, so the
//!   registry stays at 1,000 (the removal is one more fsync per iteration,
//!   so a run takes about twice its measurement time);
//! - `get`: one channel by name, a read transaction;
//! - `list`: all 1,000 in one read transaction, what GET /channels and
//!   start-up do.
//!
//! The file lives in a temporary directory on the default temp filesystem,
//! so `insert` measures that disk's fsync.
//!
//! `cargo bench --bench registry`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use speedrelay::registry::{ChannelRecord, Registry};

const CHANNELS: u16 = 1000;
const FIRST_PORT: u16 = 26000;
const SCHEMA: &str = r#"{"type":"record","name":"Telemetry","fields":[{"name":"time","type":"long"},{"name":"x","type":"double"},{"name":"y","type":"double"},{"name":"z","type":"double"},{"name":"status","type":"int"}]}"#;

fn record(name: &str, port: u16) -> ChannelRecord {
    ChannelRecord {
        name: name.to_owned(),
        port,
        schema_json: SCHEMA.to_owned(),
        schema_path: Some("agents/telemetry.avsc".to_owned()),
        config: json!({ "decimation": { "factor": 10, "algorithm": "average" } }),
        created_at: 1_700_000_000_000,
    }
}

fn registry(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let reg = Registry::open(&dir.path().join("registry.redb")).expect("open registry");
    // Filled in one transaction: 1,000 fsyncs would only slow the set-up.
    let baseline: Vec<ChannelRecord> = (0..CHANNELS)
        .map(|i| record(&format!("channel-{i:04}"), FIRST_PORT + i))
        .collect();
    let report = reg.seed(&baseline).expect("seed");
    assert_eq!(report.inserted.len(), usize::from(CHANNELS));

    let mut group = c.benchmark_group("registry_1000");

    let extra = record("extra", FIRST_PORT + CHANNELS);
    group.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                reg.insert(black_box(&extra)).expect("insert");
                timed += start.elapsed();
                reg.remove("extra").expect("remove");
            }
            timed
        })
    });

    group.bench_function("get", |b| {
        b.iter(|| {
            reg.get(black_box("channel-0500"))
                .expect("get")
                .expect("present")
        })
    });

    group.bench_function("list", |b| {
        b.iter(|| {
            let all = reg.list().expect("list");
            assert_eq!(all.len(), usize::from(CHANNELS));
            all
        })
    });

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = registry
}
criterion_main!(benches);
