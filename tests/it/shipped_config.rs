//! The repository's own `config/`, as a fresh checkout runs it: the relay
//! starts on it, and takes the shipped agent schemas, without a warning
//! about them.

use crate::common;

use common::*;

#[test]
fn the_shipped_config_starts_without_schema_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(&repo_file("config"), &dir.path().join("data"), &[]);
    // Start-up parsed every shipped schema (the example channel of
    // relay.yaml, registered at seeding) before it said it runs.
    let channel = get_channel(relay.api, "example");
    assert_eq!(channel["status"], "active", "{channel}");
    // The other shipped agent schema, registered by path on a free port of
    // the shipped range.
    let port = (26001..27000)
        .find(|&p| std::net::UdpSocket::bind(("0.0.0.0", p)).is_ok())
        .expect("a free port in 26001-26999");
    let body = serde_json::json!({
        "name": "temperature", "port": port, "schema": "agents/temperature.avsc"
    });
    let (status, answer) = post_json(relay.api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 201, "{answer}");
    let log = relay.log_text();
    relay.stop();
    assert!(log.contains("speedrelay running"), "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("logicalType") && !line.contains("apache_avro"),
            "a warning about the shipped schemas: {line}"
        );
    }
}
