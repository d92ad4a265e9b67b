//! Arbitrary bytes against the validator and the decimator, for each
//! shipped schema and one using every Avro type: never a panic, and a
//! datum the validator accepts is one the decimator can re-encode.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use speedrelay::config::Algorithm;
use speedrelay::decimator::{DecimatedBatch, Decimator};
use speedrelay::validator::{Captured, Validator};

const SCHEMAS: [&str; 3] = [
    include_str!("../../config/agents/example.avsc"),
    include_str!("../../config/agents/temperature.avsc"),
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
        {"name":"next","type":["null","all"]}]}"#,
];

fn validators() -> &'static [Arc<Validator>] {
    static V: OnceLock<Vec<Arc<Validator>>> = OnceLock::new();
    V.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|s| Arc::new(Validator::from_json(s).expect("fuzz schema compiles")))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for v in validators() {
        let _ = v.validate(data);
        let mut captured = vec![Captured::default(); v.numeric_slots().len()];
        if v.validate_capture(data, &mut captured).is_ok() {
            assert!(v.validate(data).is_ok(), "capture and validate disagree");
            for algorithm in [Algorithm::Average, Algorithm::Minmax, Algorithm::Rms] {
                let mut d = Decimator::new(v.clone(), algorithm, 1);
                let mut out = DecimatedBatch::default();
                d.push(data, &captured, &mut out);
                for record in out.iter() {
                    assert!(v.validate(record).is_ok(), "decimator output must validate");
                }
            }
        }
    }
});
