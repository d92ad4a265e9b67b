//! `validate: false` on the real binary: every datagram is forwarded
//! unchecked, but the archive takes only datagrams that are exactly one
//! record, so its files stay readable by any Avro reader (`speedrelay
//! verify`, apache-avro, Python's fastavro); the others are counted in
//! `archive_rejected`.

use crate::common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn config(dir: &Path, port: u16, full: u16) -> PathBuf {
    example_config(
        dir,
        &format!(
            "channels:\n  - {{name: trusting, port: {port}, schema: example.avsc, config: {{validate: false}}}}\n\
         socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 50}}\n\
         outputs: {{full_rate: {{address: 127.0.0.1, port: {full}}}}}\n"
        ),
    )
}

/// The `counter` field of every record of `files`, read by fastavro; `None`
/// (skipped) where Python is not set up outside tests/run.sh.
fn fastavro_counters(files: &[PathBuf]) -> Option<Vec<u64>> {
    let python = python_or_skip("the fastavro check")?;
    let script = "import sys, fastavro\nfor p in sys.argv[1:]:\n    with open(p, 'rb') as f:\n        for rec in fastavro.reader(f): print(rec['counter'])\n";
    let out = run_python(
        &python,
        script,
        files,
        b"",
        "fastavro cannot read the archive",
    );
    Some(out.lines().map(|l| l.parse().expect("a counter")).collect())
}

#[test]
fn validate_off_forwards_every_datagram_and_archives_only_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (dest, d) = receiver();
    let port = free_port();
    let relay = spawn_relay(&config(dir.path(), port, d.port), &data, &[]);

    let records = example_records(20);
    // Not one record each: text, a record cut short, a record with a byte
    // after it (the worst: a reader would take the record, then misread
    // everything after it), and an empty datagram.
    let mut with_trailer = records[0].clone();
    with_trailer.push(0);
    let garbage: Vec<Vec<u8>> = vec![
        b"not avro at all".to_vec(),
        records[1][..records[1].len() - 3].to_vec(),
        with_trailer,
        Vec::new(),
    ];
    let mut sent = Vec::new();
    for (i, r) in records.iter().enumerate() {
        sent.push(r.clone());
        if i % 5 == 4 {
            sent.push(garbage[i / 5].clone());
        }
    }
    assert_eq!(sent.len(), 24);
    let tx = sender();
    for s in &sent {
        tx.send_to(s, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    // (a) Forwarded: every datagram, garbage included, in order.
    assert_eq!(recv_n(&dest, sent.len()), sent);
    wait_for("the counters", Duration::from_secs(10), || {
        get_channel(relay.api, "trusting")["stats"]["packets"] == 24
    });
    // (d) The channel's stats count what the archive refused.
    let stats = get_channel(relay.api, "trusting")["stats"].clone();
    assert_eq!(stats["invalid"], 0, "{stats}");
    assert_eq!(stats["forwarded"], 24, "{stats}");
    assert_eq!(stats["archive_rejected"], 4, "{stats}");
    let (status, _, text) = http_get_text(relay.api, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        text.lines()
            .any(|l| l
                == "speedrelay_channel_archive_rejected_packets_total{channel=\"trusting\"} 4"),
        "{text}"
    );
    relay.stop();

    // (b) `speedrelay verify`: healthy, exactly the records.
    let files = archive_files(&data, "trusting");
    assert_eq!(files.len(), 1, "{files:?}");
    let out = run_to_end(&["verify".as_ref(), files[0].as_os_str()], &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains(": healthy: "), "{said}");
    assert!(said.contains(" 20 records,"), "{said}");
    // apache-avro reads exactly the records sent, in order.
    assert_eq!(archived_datums(&data, "trusting", EXAMPLE_SCHEMA), records);
    // (c) So does fastavro.
    if let Some(counters) = fastavro_counters(&files) {
        assert_eq!(counters, (0..20).collect::<Vec<u64>>());
    }
}
