//! The API's one route table, seen from outside the real binary: a path is
//! answered by the route its request is counted under in `/metrics`, and a
//! method a route does not answer gets 405 with the route's `Allow`.

use crate::common;

use std::time::Duration;

use common::*;

/// Every route's 405: `(method, path, Allow)`.
const WRONG_METHODS: [(&str, &str, &str); 9] = [
    ("POST", "/", "GET, HEAD"),
    ("DELETE", "/app.js", "GET, HEAD"),
    ("POST", "/metrics", "GET"),
    ("PUT", "/api/v1/health", "GET"),
    ("DELETE", "/api/v1/channels", "GET, POST"),
    ("PUT", "/api/v1/channels/x", "GET, PATCH, DELETE"),
    ("GET", "/api/v1/channels/x/validate-schema", "POST"),
    ("POST", "/api/v1/ports/available", "GET"),
    ("DELETE", "/api/v1/ports/26001/status", "GET"),
];

#[test]
fn dispatch_and_metric_labels_come_from_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let timeout = Duration::from_secs(20);

    for (method, path, allow) in WRONG_METHODS {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, answer) = raw_request(relay.api, request.as_bytes(), timeout);
        assert_eq!(status, Some(405), "{method} {path}: {answer}");
        let head = answer.to_ascii_lowercase();
        assert!(
            head.contains(&format!("allow: {}\r\n", allow.to_ascii_lowercase())),
            "{method} {path}: wants Allow: {allow}\n{answer}"
        );
    }

    // A path that only starts like the API's prefix is no route of it (it
    // was once answered as /health while counted as "other").
    for path in ["/api/v1x/health", "/api/v1/health/", "/api/v1"] {
        let (status, body) = http(relay.api, "GET", path, &[], None);
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = http(relay.api, "GET", "/api/v1/channels/nobody", &[], None);
    assert_eq!(status, 404);

    let (status, _, text) = http_get_text(relay.api, "/metrics", &[]);
    assert_eq!(status, 200, "{text}");
    let count = |route: &str, method: &str, status: u16| -> u64 {
        let series = format!(
            "speedrelay_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("other", "GET", 404), 3, "{text}");
    assert_eq!(count("/api/v1/channels/{name}", "GET", 404), 1, "{text}");
    assert_eq!(count("/api/v1/channels/{name}", "other", 405), 1, "{text}");
    assert_eq!(count("/api/v1/health", "other", 405), 1, "{text}");
    assert_eq!(count("/{asset}", "DELETE", 405), 1, "{text}");
    assert_eq!(
        count("/api/v1/ports/{port}/status", "DELETE", 405),
        1,
        "{text}"
    );
    assert_eq!(count("/api/v1/health", "GET", 200), 0, "{text}");
    relay.stop();
}
