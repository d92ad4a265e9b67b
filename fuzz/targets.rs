//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (libFuzzer, nightly) and by the stable regression test
//! `tests/it/fuzz_corpus.rs`, which replays every committed corpus and
//! regression input through the same functions. Each function takes one
//! input, must never panic on it, and asserts the properties the module
//! under test promises.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use serde_json::{Map, Value};
use speedrelay::api::{self, ApiOptions};
use speedrelay::config;
use speedrelay::config::{Algorithm, ChannelSettings};
use speedrelay::decimator::{DecimatedBatch, Decimator};
use speedrelay::validator::{Captured, Num, NumericKind, Validator};
use speedrelay::verify;

/// A target body: one input, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/NAME.rs` and of its
/// corpus directory `fuzz/corpus/NAME`.
pub const TARGETS: &[(&str, Target)] = &[
    ("validate", validate),
    ("schema", schema),
    ("decimate", decimate),
    ("config", config),
    ("api_body", api_body),
    ("verify", verify),
];

/// The repository root, whichever crate includes this file (the fuzz crate
/// lives in `fuzz/`, the regression test in the root).
pub fn repo_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if here.join("config").is_dir() {
        here.to_path_buf()
    } else {
        here.parent().unwrap_or(here).to_path_buf()
    }
}

/// The schemas `validate` runs every input against: the shipped ones and
/// one using every Avro type (recursive, so the stack is exercised).
pub const SCHEMAS: [&str; 3] = [
    include_str!("../config/agents/example.avsc"),
    include_str!("../config/agents/temperature.avsc"),
    r#"{"type":"record","name":"all","fields":[
        {"name":"n","type":"null"},{"name":"b","type":"boolean"},
        {"name":"i","type":"int"},{"name":"l","type":"long"},
        {"name":"f","type":"float"},{"name":"d","type":"double"},
        {"name":"by","type":"bytes"},{"name":"s","type":"string"},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
        {"name":"fx","type":{"type":"fixed","name":"F","size":3}},
        {"name":"a","type":{"type":"array","items":"long"}},
        {"name":"m","type":{"type":"map","values":"double"}},
        {"name":"u","type":["null","string","double"]},
        {"name":"id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"next","type":["null","all"]}]}"#,
];

fn validators() -> &'static [(Schema, Arc<Validator>)] {
    static V: OnceLock<Vec<(Schema, Arc<Validator>)>> = OnceLock::new();
    V.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|s| {
                let schema = Schema::parse_str(s).expect("fuzz schema parses");
                let v = Validator::compile(&schema).expect("fuzz schema compiles");
                (schema, Arc::new(v))
            })
            .collect()
    })
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Downsample,
    Algorithm::Average,
    Algorithm::Minmax,
    Algorithm::Rms,
];

/// What every accepted datum must satisfy, whatever the schema: `validate`
/// and `validate_capture` agree, apache-avro decodes exactly these bytes
/// (the validator's promise: an accepted datagram decodes with apache-avro),
/// and each decimator output is again a datum of the schema.
fn check_datum(schema: &Schema, v: &Arc<Validator>, data: &[u8]) {
    let plain = v.validate(data);
    let mut captured = vec![Captured::default(); v.numeric_slots().len()];
    let full = v.validate_capture(data, &mut captured);
    assert_eq!(plain, full, "validate and validate_capture disagree");
    if plain.is_err() {
        return;
    }
    let mut reader = data;
    let decoded = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut reader));
    if let Err(e) = decoded {
        panic!("accepted by the validator, refused by apache-avro: {e}");
    }
    assert!(
        reader.is_empty(),
        "accepted by the validator, apache-avro left {} bytes",
        reader.len()
    );
    for algorithm in ALGORITHMS {
        let mut d = Decimator::new(v.clone(), algorithm, 1);
        let mut out = DecimatedBatch::default();
        d.push(data, &captured, &mut out);
        for record in out.iter() {
            assert_eq!(v.validate(record), Ok(()), "decimator output must validate");
        }
    }
}

/// `validate`: arbitrary bytes as a datagram of each of [`SCHEMAS`].
pub fn validate(data: &[u8]) {
    for (schema, v) in validators() {
        check_datum(schema, v, data);
    }
}

/// `schema`: `SCHEMA_TEXT \0 DATUM`. Compiling any schema text refuses or
/// accepts without a panic; an accepted schema then checks the datum as
/// [`check_datum`] says.
pub fn schema(data: &[u8]) {
    let (text, datum) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    // As Validator::from_json does, keeping the parsed schema for apache-avro.
    let Ok(parsed) = Schema::parse_str(text) else {
        return;
    };
    let Ok(v) = Validator::compile(&parsed) else {
        return;
    };
    let _ = v.numeric_slot_paths();
    check_datum(&parsed, &Arc::new(v), datum);
}

/// The schema `decimate` builds its records in: every numeric kind, a
/// string and a timestamp (not numeric: kept from the last record).
pub const DECIMATE_SCHEMA: &str = r#"{"type":"record","name":"sample","fields":[
    {"name":"label","type":"string"},
    {"name":"i","type":"int"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"l","type":"long"},
    {"name":"f","type":"float"},
    {"name":"d","type":"double"}]}"#;

fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Reads fixed-size values off the front of the input, zero once it ends.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn byte(&mut self) -> u8 {
        self.take::<1>()[0]
    }
}

/// One window's numeric values per slot, to check what the decimator says.
#[derive(Default)]
struct Window {
    ints: [Vec<i64>; 2],
    floats: [Vec<f64>; 2],
    last: Vec<u8>,
}

/// `decimate`: a stream of valid records built from the input (byte 0 the
/// algorithm, byte 1 the factor, then per record a control byte and the
/// field values; a control byte with its top bit set reconfigures first).
/// Checks the decimator's documented semantics on each window: outputs
/// validate, downsample is the last record byte for byte, minmax gives the
/// exact extremes, int averages lie within the window, rms within its
/// largest magnitude.
pub fn decimate(data: &[u8]) {
    static V: OnceLock<Arc<Validator>> = OnceLock::new();
    let v = V.get_or_init(|| Arc::new(Validator::from_json(DECIMATE_SCHEMA).expect("compiles")));
    assert_eq!(
        v.numeric_slots(),
        [
            NumericKind::Int,
            NumericKind::Long,
            NumericKind::Float,
            NumericKind::Double
        ]
    );
    let mut input = Bytes(data);
    let mut algorithm = ALGORITHMS[usize::from(input.byte() % 4)];
    let mut factor = u32::from(input.byte() % 8) + 1;
    let mut d = Decimator::new(v.clone(), algorithm, factor);
    let mut window = Window::default();
    let mut captured = vec![Captured::default(); 4];
    let mut out = DecimatedBatch::default();
    let mut record = Vec::new();
    // Bounded by the input: every record consumes at least one byte.
    while !input.0.is_empty() {
        let control = input.byte();
        if control & 0x80 != 0 {
            algorithm = ALGORITHMS[usize::from(control % 4)];
            factor = u32::from((control >> 2) % 8) + 1;
            d.reconfigure(algorithm, factor);
            window = Window::default();
        }
        record.clear();
        let label_len = usize::from(control % 4);
        zigzag(label_len as i64, &mut record);
        record.extend(std::iter::repeat_n(b'x', label_len));
        let i = i64::from(i32::from_le_bytes(input.take()));
        let ts = i64::from_le_bytes(input.take());
        let l = i64::from_le_bytes(input.take());
        let f = f32::from_le_bytes(input.take());
        let dbl = f64::from_le_bytes(input.take());
        zigzag(i, &mut record);
        zigzag(ts, &mut record);
        zigzag(l, &mut record);
        record.extend_from_slice(&f.to_le_bytes());
        record.extend_from_slice(&dbl.to_le_bytes());
        assert_eq!(v.validate_capture(&record, &mut captured), Ok(()));
        window.ints[0].push(i);
        window.ints[1].push(l);
        window.floats[0].push(f64::from(f));
        window.floats[1].push(dbl);
        window.last.clone_from(&record);

        out.clear();
        d.push(&record, &captured, &mut out);
        let outputs: Vec<&[u8]> = out.iter().collect();
        if window.ints[0].len() < factor as usize {
            assert!(outputs.is_empty(), "output before the window is complete");
            continue;
        }
        let expected = if algorithm == Algorithm::Minmax { 2 } else { 1 };
        assert_eq!(outputs.len(), expected, "{algorithm:?} outputs per window");
        let mut values = Vec::new();
        for o in &outputs {
            let mut c = vec![Captured::default(); 4];
            assert_eq!(v.validate_capture(o, &mut c), Ok(()), "output validates");
            // Everything but the numeric fields is the last record's.
            assert!(o.starts_with(&window.last[..=label_len]), "label kept");
            values.push(c);
        }
        check_window(algorithm, &window, &values, &outputs);
        window = Window::default();
    }
}

fn check_window(algorithm: Algorithm, w: &Window, values: &[Vec<Captured>], outputs: &[&[u8]]) {
    let int_of = |c: &Captured| match c.value {
        Num::Int(i) => i,
        Num::Float(_) => panic!("int slot captured as float"),
    };
    let float_of = |c: &Captured| match c.value {
        Num::Float(f) => f,
        Num::Int(_) => panic!("float slot captured as int"),
    };
    // NaN-aware equality (and -0.0 == 0.0, which minmax may pick either of).
    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    match algorithm {
        Algorithm::Downsample => assert_eq!(outputs[0], &w.last[..], "downsample = last"),
        Algorithm::Minmax => {
            for (k, ints) in w.ints.iter().enumerate() {
                let (lo, hi) = (ints.iter().min(), ints.iter().max());
                assert_eq!(Some(&int_of(&values[0][k])), lo, "int min");
                assert_eq!(Some(&int_of(&values[1][k])), hi, "int max");
            }
            for (k, floats) in w.floats.iter().enumerate() {
                let real: Vec<f64> = floats.iter().copied().filter(|x| !x.is_nan()).collect();
                let lo = real.iter().copied().fold(f64::NAN, f64::min);
                let hi = real.iter().copied().fold(f64::NAN, f64::max);
                let (got_lo, got_hi) = (float_of(&values[0][k + 2]), float_of(&values[1][k + 2]));
                assert!(same(got_lo, lo), "float min {got_lo} != {lo}");
                assert!(same(got_hi, hi), "float max {got_hi} != {hi}");
            }
        }
        Algorithm::Average => {
            for (k, ints) in w.ints.iter().enumerate() {
                let got = int_of(&values[0][k]);
                let (lo, hi) = (ints.iter().min(), ints.iter().max());
                assert!(
                    lo.is_some_and(|lo| *lo <= got) && hi.is_some_and(|hi| got <= *hi),
                    "int mean {got} outside {lo:?}..{hi:?}"
                );
            }
            for (k, floats) in w.floats.iter().enumerate() {
                let got = float_of(&values[0][k + 2]);
                if floats.iter().all(|x| x.is_nan()) {
                    assert!(got.is_nan(), "mean of NaNs is NaN");
                }
            }
        }
        Algorithm::Rms => {
            for (k, ints) in w.ints.iter().enumerate() {
                let got = int_of(&values[0][k]);
                let top = ints.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
                // f64 rounding may overshoot the largest magnitude slightly.
                let slack = (top >> 40) + 1;
                assert!(
                    got >= 0 && got.unsigned_abs() <= top.saturating_add(slack),
                    "int rms {got} beyond the largest magnitude {top}"
                );
            }
            for (k, floats) in w.floats.iter().enumerate() {
                let got = float_of(&values[0][k + 2]);
                if floats.iter().all(|x| x.is_nan()) {
                    assert!(got.is_nan(), "rms of NaNs is NaN");
                } else {
                    assert!(got.is_nan() || got >= 0.0, "rms {got} is negative");
                }
            }
        }
    }
}

/// `config`: `RELAY_YAML [\0 GLOBAL_YAML]` through the configuration loader
/// (YAML, both JSON Schemas, the checks beyond them, layering), with schema
/// paths resolved in the shipped `config/`. Refuses or loads, never panics;
/// a loaded configuration's channels compile and their settings survive
/// the registry's round trip (serialize, deserialize).
pub fn config(data: &[u8]) {
    let (relay, global) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(relay) = std::str::from_utf8(relay) else {
        return;
    };
    let global = match global.map(std::str::from_utf8) {
        Some(Ok(g)) => Some(g),
        Some(Err(_)) => return,
        None => None,
    };
    // Schema paths are read as files: keep the fuzzer off device and
    // kernel files, which are no configuration's business.
    if [relay, global.unwrap_or("")]
        .iter()
        .any(|t| t.contains("/dev") || t.contains("/proc") || t.contains("/sys"))
    {
        return;
    }
    let dir = repo_dir().join("config");
    let result = config::files::load_texts(
        dir.clone(),
        (relay, &dir.join("relay.yaml")),
        global
            .map(|g| (g, dir.join("global.yaml")))
            .as_ref()
            .map(|(g, p)| (*g, p.as_path())),
    );
    match result {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(b) => {
            for ch in &b.channels {
                assert!(
                    Validator::from_json(&ch.spec.schema_json).is_ok(),
                    "loaded schema compiles"
                );
                round_trip(&ch.spec.settings);
            }
            let _ = config::settings_from(&b.defaults);
        }
    }
}

/// The registry stores settings as their JSON serialization and reads them
/// back at start-up: that must give the same settings.
fn round_trip(settings: &ChannelSettings) {
    let json = serde_json::to_value(settings).expect("settings serialize");
    match config::settings_from(&json) {
        Ok(back) => assert_eq!(&back, settings, "settings change through the registry"),
        Err(e) => panic!("stored settings do not load back: {e}: {json}"),
    }
}

/// `api_body`: byte 0 picks the route (registration, PATCH,
/// validate-schema), the rest is the request body. Each route's checks that
/// need no engine run as the API runs them; a refusal is a 4xx (never 5xx),
/// an accepted registration names a schema inside the config directory,
/// and settings that pass are the ones the engine would store.
pub fn api_body(data: &[u8]) {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let client_error = |e: &api::ApiError| {
        assert!(
            e.status.is_client_error(),
            "{} for a request body: {}",
            e.status,
            e.error
        );
    };
    let value = match api::body_json(body) {
        Ok(v) => v,
        Err(e) => return client_error(&e),
    };
    match route % 3 {
        0 => {
            let config_dir = repo_dir().join("config");
            let options = ApiOptions {
                config_dir: Some(config_dir.clone()),
                ports: Some((1024, 60000)),
                ..ApiOptions::default()
            };
            let r = match api::registration_from(value, &options, 8080) {
                Ok(r) => r,
                Err(e) => return client_error(&e),
            };
            if let Some(path) = &r.schema_path {
                let root = config_dir.canonicalize().expect("config dir");
                let full = speedrelay::schema_file::resolve(&config_dir, path)
                    .expect("read, so it resolves");
                assert!(
                    full.starts_with(&root),
                    "{path} leaves the config directory"
                );
            }
            // What Engine::register checks next, without binding.
            let _ = Validator::from_json(&r.schema_json);
            let mut doc = Value::Object(Map::new());
            if let Some(overrides) = r.config {
                config::merge(&mut doc, config::expand_shorthand(overrides));
            }
            if let Ok(settings) = config::settings_from(&doc) {
                round_trip(&settings);
            }
        }
        1 => {
            // PATCH: the API wants an object; Engine::update merges it into
            // the stored settings.
            if !value.is_object() {
                return;
            }
            let stored = ChannelSettings::default();
            let mut doc = serde_json::to_value(&stored).expect("settings serialize");
            config::merge(&mut doc, config::expand_shorthand(value));
            if let Ok(settings) = config::settings_from(&doc) {
                round_trip(&settings);
            }
        }
        _ => {
            if let Err(e) = api::compare_schemas(SCHEMAS[0], value) {
                client_error(&e);
            }
        }
    }
}

/// `verify`: arbitrary bytes as an archive file, through the reader of
/// `speedrelay verify`. Refuses or reports, never panics; the report is
/// consistent (the readable part ends where the tail starts); cutting the
/// file at `complete_len` (what `repair` keeps) gives a healthy file with
/// the same blocks and records; and a healthy file is one apache-avro reads
/// to the end, with as many records.
pub fn verify(data: &[u8]) {
    let Ok(report) = verify::scan_bytes(data) else {
        return;
    };
    assert_eq!(report.file_len, data.len() as u64);
    assert!(report.header_len <= report.complete_len && report.complete_len <= report.file_len);
    match &report.tail {
        None => assert_eq!(report.complete_len, report.file_len, "healthy = all read"),
        Some(tail) => {
            assert_eq!(
                tail.offset, report.complete_len,
                "tail starts where reading stopped"
            );
            // An empty file is a header cut short at byte 0 (repair removes it).
            assert!(
                report.complete_len < report.file_len || report.file_len == 0,
                "a tail has bytes"
            );
        }
    }
    if report.header_len == 0 {
        assert_eq!((report.blocks, report.records), (0, 0));
        return;
    }
    let kept = &data[..report.complete_len as usize];
    if report.tail.is_some() {
        let after = verify::scan_bytes(kept).expect("the complete part scans");
        assert!(
            after.is_healthy(),
            "the complete part is healthy: {:?}",
            after.tail
        );
        assert_eq!(
            (after.blocks, after.records),
            (report.blocks, report.records)
        );
    }
    let reader = match apache_avro::Reader::new(kept) {
        Ok(r) => r,
        Err(e) => panic!("verify reads a header apache-avro refuses: {e}"),
    };
    let mut records = 0u64;
    for value in reader {
        if let Err(e) = value {
            panic!("verify passes a block apache-avro cannot read: {e}");
        }
        records += 1;
    }
    assert_eq!(records, report.records, "apache-avro reads as many records");
}
