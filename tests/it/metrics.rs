//! `GET /metrics` of the real binary: Prometheus text format 0.0.4 that
//! Python's prometheus_client parses, counters that move when records flow,
//! the token enforced, and request routes labelled by template only.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const TOKEN: &str = "metrics-token";

/// Parses with `prometheus_client.parser.text_string_to_metric_families`:
/// `{family: {type, help, samples: [[name, labels, value]]}}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

fn auth() -> Vec<(String, String)> {
    vec![("Authorization".to_string(), format!("Bearer {TOKEN}"))]
}

fn scrape(api: SocketAddr, path: &str) -> String {
    let bearer = format!("Bearer {TOKEN}");
    let (status, head, body) = http_get_text(api, path, &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// The exposition parsed by prometheus_client, or `None` (skipped) where
/// Python is not set up outside tests/run.sh.
fn parse(text: &str) -> Option<Value> {
    let python = python_or_skip("the prometheus_client parse")?;
    let no_args: [&str; 0] = [];
    let out = run_python(
        &python,
        PARSE,
        &no_args,
        text.as_bytes(),
        &format!("prometheus_client refused the exposition\n{text}"),
    );
    Some(serde_json::from_str(&out).expect("the parse script prints JSON"))
}

/// The value of sample `name` whose labels include every `labels` pair.
fn sample(families: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.as_object()?.values().find_map(|f| {
        f["samples"].as_array()?.iter().find_map(|s| {
            let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
            matches.then(|| s[2].as_f64()).flatten()
        })
    })
}

/// The value of `name{labels}` read straight from the text (no Python).
fn raw_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn config(dir: &Path, port: u16, full: u16) -> std::path::PathBuf {
    example_config(
        dir,
        &format!(
            "channels:\n  - {{name: m1, port: {port}, schema: example.avsc}}\n\
         socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 50}}\n\
         outputs: {{full_rate: {{address: 127.0.0.1, port: {full}}}}}\n"
        ),
    )
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_when_records_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, d) = receiver();
    let port = free_port();
    let relay = spawn_relay(
        &config(dir.path(), port, d.port),
        &dir.path().join("data"),
        &[("SPEEDRELAY_API_TOKEN", TOKEN)],
    );
    let api = relay.api;
    let packets = "speedrelay_channel_received_packets_total{channel=\"m1\"}";

    let before = scrape(api, "/metrics");
    assert_eq!(raw_sample(&before, packets), Some(0.0), "{before}");
    let before = parse(&before);

    let records = example_records(50);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    for bad in [&b""[..], b"\x01", b"not avro at all"] {
        tx.send_to(bad, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, records.len()), records);
    wait_for(
        "the counters and the archive",
        Duration::from_secs(10),
        || {
            let (_, c) = http(api, "GET", "/api/v1/channels/m1", &auth(), None);
            c["stats"]["packets"] == 53 && c["stats"]["archive_bytes"].as_u64() > Some(0)
        },
    );

    let text = scrape(api, "/metrics");
    // Every family has HELP and TYPE; counters end in _total.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("speedrelay_"), "{line}");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
    }
    assert_eq!(raw_sample(&text, packets), Some(53.0), "{text}");
    let Some(after) = parse(&text) else {
        relay.stop();
        return;
    };
    let m1 = [("channel", "m1")];
    let at = |name: &str| sample(&after, name, &m1);
    assert_eq!(at("speedrelay_channel_received_packets_total"), Some(53.0));
    assert_eq!(at("speedrelay_channel_invalid_packets_total"), Some(3.0));
    assert_eq!(at("speedrelay_channel_forwarded_records_total"), Some(50.0));
    assert_eq!(at("speedrelay_channel_kernel_drops_total"), Some(0.0));
    assert_eq!(at("speedrelay_channel_send_errors_total"), Some(0.0));
    // Validation is on: nothing is forwarded unchecked, so nothing is refused
    // by the archive alone.
    assert_eq!(
        at("speedrelay_channel_archive_rejected_packets_total"),
        Some(0.0)
    );
    assert_eq!(at("speedrelay_channel_up"), Some(1.0));
    let bytes: usize = records.iter().map(Vec::len).sum::<usize>() + 1 + 15;
    assert_eq!(
        at("speedrelay_channel_received_bytes_total"),
        Some(bytes as f64)
    );
    assert!(at("speedrelay_channel_archive_written_bytes_total") > Some(0.0));
    assert_eq!(at("speedrelay_channel_archive_files_total"), Some(1.0));
    assert_eq!(
        after["speedrelay_channel_received_packets"]["type"],
        "counter"
    );
    let before = before.expect("parsed before too");
    assert_eq!(
        sample(&before, "speedrelay_channel_received_packets_total", &m1),
        Some(0.0),
        "the counter moved from 0"
    );
    assert_eq!(
        sample(&after, "speedrelay_registry_channels", &[]),
        Some(1.0)
    );
    assert!(sample(&after, "speedrelay_registry_file_bytes", &[]) > Some(0.0));
    assert_eq!(
        sample(&after, "speedrelay_channels", &[("status", "active")]),
        Some(1.0)
    );
    let rss = sample(&after, "speedrelay_process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6 && rss < 1e10, "RSS {rss}");
    // The scrape before this one was counted, under its route.
    assert!(
        sample(
            &after,
            "speedrelay_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ) >= Some(1.0)
    );
    relay.stop();
}

#[test]
fn metrics_need_the_token_and_label_routes_by_template() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(
        &config(dir.path(), free_port(), free_port()),
        &dir.path().join("data"),
        &[("SPEEDRELAY_API_TOKEN", TOKEN)],
    );
    let api = relay.api;
    for path in ["/metrics", "/api/v1/metrics"] {
        let (status, body) = http(api, "GET", path, &[], None);
        assert_eq!(status, 401, "{path} without a token: {body}");
        let wrong = vec![("Authorization".to_string(), "Bearer nope".to_string())];
        let (status, _) = http(api, "GET", path, &wrong, None);
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, body) = http(api, "POST", path, &auth(), Some(b"{}"));
        assert_eq!(status, 405, "{path}: {body}");
    }
    // Requests with made-up names and paths: none may become a label.
    for name in ["secret-a", "secret-b", "secret-c"] {
        let (status, _) = http(
            api,
            "GET",
            &format!("/api/v1/channels/{name}"),
            &auth(),
            None,
        );
        assert_eq!(status, 404);
    }
    let (status, _) = http(api, "GET", "/api/v1/channels/m1/schema", &auth(), None);
    assert_eq!(status, 200);
    let (status, _) = http(api, "GET", "/secret-path/x", &auth(), None);
    assert_eq!(status, 404);
    let (status, _) = http(api, "GET", "/api/v1/health", &[], None);
    assert_eq!(status, 200);

    let text = scrape(api, "/api/v1/metrics");
    assert!(
        !text.contains("secret"),
        "a raw path leaked into a label:\n{text}"
    );
    let series = |route: &str, method: &str, status: u16| {
        raw_sample(
            &text,
            &format!(
                "speedrelay_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(series("/api/v1/channels/{name}", "GET", 404), Some(3.0));
    assert_eq!(
        series("/api/v1/channels/{name}/schema", "GET", 200),
        Some(1.0)
    );
    assert_eq!(series("other", "GET", 404), Some(1.0));
    assert_eq!(series("/api/v1/health", "GET", 200), Some(1.0));
    assert_eq!(series("/metrics", "GET", 401), Some(2.0));
    assert_eq!(series("/api/v1/metrics", "GET", 401), Some(2.0));
    assert_eq!(series("/metrics", "POST", 405), Some(1.0));
    if let Some(families) = parse(&text) {
        assert_eq!(families["speedrelay_http_requests"]["type"], "counter");
        let routes: Vec<&str> = families["speedrelay_http_requests"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s[1]["route"].as_str())
            .collect();
        assert!(
            routes.iter().all(|r| *r == "other" || r.starts_with('/')),
            "{routes:?}"
        );
    }
    relay.stop();
}

/// The series the first test cannot move: decimated records, archive
/// errors and dropped records, build_info, and a failed channel's
/// channel_up = 0 with its count among the failed.
#[test]
fn decimation_archive_faults_build_info_and_a_failed_channel_show() {
    let dir = tempfile::tempdir().unwrap();
    // "held" is in relay.yaml on a port another program holds: failed.
    let holder = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let held = holder.local_addr().unwrap().port();
    let (_full, f) = receiver();
    let config = config(dir.path(), free_port(), f.port);
    let yaml = std::fs::read_to_string(config.join("relay.yaml"))
        .unwrap()
        .replace(
            "channels:\n",
            &format!("channels:\n  - {{name: held, port: {held}, schema: example.avsc}}\n"),
        );
    std::fs::write(config.join("relay.yaml"), yaml).unwrap();
    let data = dir.path().join("data");
    // A file where "blocked"'s archive directory would go.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("blocked"), b"in the way").unwrap();
    let relay = spawn_relay(&config, &data, &[("SPEEDRELAY_API_TOKEN", TOKEN)]);
    let api = relay.api;
    let register = |name: &str, port: u16, config: Value| {
        let body = serde_json::json!({"name": name, "port": port,
            "schema": serde_json::from_str::<Value>(EXAMPLE_SCHEMA).unwrap(), "config": config});
        let mut headers = auth();
        headers.push(("Content-Type".into(), "application/json".into()));
        let (status, answer) = http(
            api,
            "POST",
            "/api/v1/channels",
            &headers,
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(status, 201, "{answer}");
    };
    let (dec, d) = receiver();
    let dec_port = free_port();
    register(
        "dec",
        dec_port,
        serde_json::json!({"decimation": {"enabled": true, "factor": 5},
            "outputs": {"decimated": {"address": "127.0.0.1", "port": d.port}}}),
    );
    let blocked_port = free_port();
    register("blocked", blocked_port, serde_json::json!({}));
    let tx = sender();
    let records = example_records(50);
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, dec_port)).unwrap();
        tx.send_to(r, (Ipv4Addr::LOCALHOST, blocked_port)).unwrap();
    }
    let every_fifth: Vec<Vec<u8>> = records.iter().skip(4).step_by(5).cloned().collect();
    assert_eq!(recv_n(&dec, 10), every_fifth);
    let stat = |name: &str, counter: &str| {
        let (_, c) = http(
            api,
            "GET",
            &format!("/api/v1/channels/{name}"),
            &auth(),
            None,
        );
        c["stats"][counter].as_u64().unwrap_or(0)
    };
    wait_for(
        "the decimated records counted",
        Duration::from_secs(10),
        || stat("dec", "decimated_sent") == 10,
    );
    wait_for(
        "every blocked record dropped",
        Duration::from_secs(10),
        || stat("blocked", "archive_dropped") == 50,
    );
    let errors = stat("blocked", "archive_errors");
    assert!(errors > 0);

    let text = scrape(api, "/metrics");
    let series = |s: &str| raw_sample(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(
        series("speedrelay_channel_decimated_records_total{channel=\"dec\"}"),
        10.0
    );
    assert_eq!(
        series("speedrelay_channel_archive_errors_total{channel=\"blocked\"}"),
        errors as f64
    );
    assert_eq!(
        series("speedrelay_channel_archive_dropped_records_total{channel=\"blocked\"}"),
        50.0
    );
    assert_eq!(
        series("speedrelay_channel_archive_dropped_records_total{channel=\"dec\"}"),
        0.0
    );
    assert_eq!(
        series(&format!(
            "speedrelay_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(series("speedrelay_channel_up{channel=\"held\"}"), 0.0);
    assert_eq!(series("speedrelay_channel_up{channel=\"dec\"}"), 1.0);
    assert_eq!(series("speedrelay_channels{status=\"failed\"}"), 1.0);
    assert_eq!(series("speedrelay_channels{status=\"active\"}"), 3.0);
    drop(holder);
    relay.stop();
}
