//! The validator's limits, seen through the real binary: arrays of many
//! items that encode to no byte (nulls, empty records) are valid Avro and
//! are forwarded, and a datagram longer than `socket.max_datagram` is
//! counted invalid with a reason that names its length.

use crate::common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apache_avro::types::Value;
use common::*;

/// A record of two arrays whose items take no byte.
const EMPTY_ITEMS: &str = r#"{"type": "record", "name": "empties", "fields": [
    {"name": "nulls", "type": {"type": "array", "items": "null"}},
    {"name": "records", "type": {"type": "array", "items":
        {"type": "record", "name": "nothing", "fields": []}}}]}"#;

fn config(dir: &Path, empties: u16, small: u16, full: u16) -> PathBuf {
    let config = example_config(
        dir,
        &format!(
            "channels:\n  - {{name: empties, port: {empties}, schema: empties.avsc}}\n  \
             - {{name: small, port: {small}, schema: example.avsc, config: {{socket: {{max_datagram: 64}}}}}}\n\
             socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 50}}\n\
             outputs: {{full_rate: {{address: 127.0.0.1, port: {full}}}}}\n"
        ),
    );
    std::fs::write(config.join("empties.avsc"), EMPTY_ITEMS).unwrap();
    config
}

#[test]
fn thousands_of_zero_byte_items_are_valid_and_an_overlong_datagram_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, d) = receiver();
    let (empties, small) = (free_port(), free_port());
    let relay = spawn_relay(
        &config(dir.path(), empties, small, d.port),
        &dir.path().join("data"),
        &[],
    );

    // 1000 nulls and 1000 empty records: 7 bytes, as apache-avro encodes it.
    let s = schema(EMPTY_ITEMS);
    let record = Value::Record(vec![
        ("nulls".into(), Value::Array(vec![Value::Null; 1000])),
        (
            "records".into(),
            Value::Array(vec![Value::Record(Vec::new()); 1000]),
        ),
    ]);
    let datum = encode(&s, record);
    assert!(datum.len() <= 8, "{datum:?}");
    let tx = sender();
    tx.send_to(&datum, (Ipv4Addr::LOCALHOST, empties)).unwrap();
    assert_eq!(recv_n(&dest, 1), vec![datum.clone()]);
    wait_for("the empties counters", Duration::from_secs(10), || {
        get_channel(relay.api, "empties")["stats"]["packets"] == 1
    });
    let stats = get_channel(relay.api, "empties")["stats"].clone();
    assert_eq!(stats["invalid"], 0, "{stats}");
    assert_eq!(stats["forwarded"], 1, "{stats}");

    // A 49-byte record fits in max_datagram 64; one 100 bytes long does not.
    let record = example_records(1).remove(0);
    assert!(record.len() <= 64);
    tx.send_to(&record, (Ipv4Addr::LOCALHOST, small)).unwrap();
    tx.send_to(&[7u8; 100], (Ipv4Addr::LOCALHOST, small))
        .unwrap();
    assert_eq!(recv_n(&dest, 1), vec![record]);
    wait_for("the small counters", Duration::from_secs(10), || {
        get_channel(relay.api, "small")["stats"]["packets"] == 2
    });
    let stats = get_channel(relay.api, "small")["stats"].clone();
    assert_eq!(stats["invalid"], 1, "{stats}");
    assert_eq!(
        stats["last_invalid"], "datagram longer than max_datagram (64 bytes)",
        "{stats}"
    );
    assert_silent(&dest);
    relay.stop();
}
