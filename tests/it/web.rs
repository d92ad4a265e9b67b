//! The web page at `/`, served by the real binary: its files and headers
//! over plain HTTP, then the whole page in headless chromium (Debian's
//! chromium and chromedriver, driven by Python selenium through
//! tests/web_browser.py): it lists, registers (and the channel relays),
//! shows errors where the user acted, shows schemas, removes after a
//! confirmation, and asks for the token when the relay has one; the form's
//! Outputs fields send records where they say and refuse bad destinations
//! next to the field.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-web-token";

/// A config directory with one channel `name` on `port` whose full-rate
/// and decimated outputs go to `full` and `decimated` (ports on loopback).
fn config_with(dir: &Path, name: &str, port: u16, full: u16, decimated: u16) -> PathBuf {
    let config = dir.join(format!("config-{name}"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("example.avsc"), EXAMPLE_SCHEMA).unwrap();
    std::fs::write(
        config.join("relay.yaml"),
        format!(
            "channels:\n  - {{name: {name}, port: {port}, schema: example.avsc}}\n\
             socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\narchive: {{flush_ms: 100}}\n\
             outputs:\n  full_rate: {{address: 127.0.0.1, port: {full}}}\n  decimated: {{address: 127.0.0.1, port: {decimated}}}\n\
             ports: {{start: {}, end: {}}}\n",
            port_range(port).0,
            port_range(port).1
        ),
    )
    .unwrap();
    config
}

/// The range a test relay lets registrations use: from its channel's port
/// on, so that relays of tests running at once suggest different ports
/// (a port bound by one relay is refused to every other).
fn port_range(port: u16) -> (u16, u16) {
    let start = port.min(65_000);
    (start, start + 200)
}

/// Runs tests/web_browser.py with `args` (bounded to 2 min), printing
/// what it says and failing when one of its checks did.
fn run_browser_script(python: &Path, args: &serde_json::Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web_browser.py");
    let (ok, output) = run_bounded(
        Command::new(python).arg(script).arg(args.to_string()),
        Duration::from_secs(120),
    );
    println!("{output}");
    assert!(ok, "the browser checks failed:\n{output}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_page_is_public_with_strict_headers_and_the_api_still_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "base", free_port(), free_port(), free_port());
    let relay = spawn_relay(
        &config,
        &dir.path().join("data"),
        &[("SPEEDRELAY_API_TOKEN", TOKEN)],
    );
    let api = relay.api;
    for (path, kind, marker) in [
        ("/", "text/html", "<main"),
        ("/app.js", "text/javascript", "sessionStorage"),
        ("/style.css", "text/css", "prefers-color-scheme"),
    ] {
        let (status, head, body) = http_get_text(api, path, &[]);
        assert_eq!(status, 200, "{path} without a token");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(body.contains(marker), "{path}");
        // HEAD: the same head, the length of the body, and no body.
        let request =
            format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, answer) = raw_request(api, request.as_bytes(), Duration::from_secs(10));
        assert_eq!(status, Some(200), "HEAD {path}: {answer}");
        let (head_of_head, rest) = answer.split_once("\r\n\r\n").unwrap();
        assert!(rest.is_empty(), "HEAD {path} sent a body");
        let head_of_head = head_of_head.to_ascii_lowercase();
        assert!(
            head_of_head.contains(&format!("content-type: {kind}")),
            "{head_of_head}"
        );
        assert!(
            head_of_head.contains(&format!("content-length: {}", body.len())),
            "HEAD {path}: {head_of_head}"
        );
        // Offline: nothing is loaded from another origin.
        for external in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "fetch('http",
        ] {
            assert!(!body.contains(external), "{path} holds {external}");
        }
    }
    let (status, _) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(status, 401, "the data still needs the token");
    let auth = vec![("Authorization".to_string(), format!("Bearer {TOKEN}"))];
    let (status, list) = http(api, "GET", "/api/v1/channels", &auth, None);
    assert_eq!(status, 200);
    assert_eq!(list["channels"][0]["name"], "base");
    let (status, body) = http(api, "POST", "/", &auth, Some(b"{}"));
    assert_eq!(status, 405, "{body}");
    let (status, _) = http(api, "GET", "/index.html.bak", &[], None);
    assert_eq!(status, 404);
    relay.stop();
}

#[test]
fn the_page_lists_registers_relays_and_removes_in_a_real_browser() {
    let Some((python, chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (full, f) = receiver();
    let (decimated, d) = receiver();
    let base_port = free_port();
    let config = config_with(dir.path(), "base", base_port, f.port, d.port);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    // A second relay with a token, for the token prompt.
    let secured = config_with(dir.path(), "secured", free_port(), free_port(), free_port());
    let relay2 = spawn_relay(
        &secured,
        &dir.path().join("data2"),
        &[("SPEEDRELAY_API_TOKEN", TOKEN)],
    );
    let api2 = relay2.api;

    let schema_file = dir.path().join("upload.avsc");
    std::fs::write(&schema_file, EXAMPLE_SCHEMA).unwrap();
    let record = example_records(1).remove(0);
    let records = 5;
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let args = serde_json::json!({
        "url": format!("http://{api}/"),
        "existing": "base",
        "existing_port": base_port,
        "ports": port_range(base_port),
        "schema_file": schema_file,
        "payload_hex": hex(&record),
        "records": records,
        "token_url": format!("http://{api2}/"),
        "token": TOKEN,
        "token_existing": "secured",
        "chromium": chromium,
        "chromedriver": chromedriver,
        "artifacts": artifacts,
    });
    run_browser_script(&python, &args);

    // The channel registered through the form relayed, full-rate and
    // decimated with the form's factor and algorithm (2, average: five
    // records make two windows; the average of two equal records is the
    // record itself).
    assert_eq!(recv_n(&full, records), vec![record.clone(); records]);
    assert_eq!(recv_n(&decimated, 2), vec![record; 2]);
    assert_silent(&decimated);
    let (status, _) = http(api, "GET", "/api/v1/channels/webtest", &[], None);
    assert_eq!(status, 404, "removed through the page");
    let (status, _) = http(api, "GET", "/api/v1/channels/base", &[], None);
    assert_eq!(status, 200);
    for shot in [
        "web.png",
        "web-dark.png",
        "web-error.png",
        "web-confirm.png",
    ] {
        let path = artifacts.join(shot);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
        println!("screenshot: {}", path.display());
    }
    relay.stop();
    relay2.stop();
}

#[test]
fn the_form_sends_records_to_the_destinations_it_names() {
    let Some((python, chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The relay's defaults go elsewhere: the channel must not use them.
    let (default_full, df) = receiver();
    let (default_decimated, dd) = receiver();
    let config = config_with(dir.path(), "base", free_port(), df.port, dd.port);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let (full4, f4) = receiver();
    let full6 = std::net::UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]");
    full6
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let f6 = full6.local_addr().unwrap().port();
    let (decimated, d) = receiver();

    let schema_file = dir.path().join("upload.avsc");
    std::fs::write(&schema_file, EXAMPLE_SCHEMA).unwrap();
    let record = example_records(1).remove(0);
    let records = 5;
    let args = serde_json::json!({
        "flow": "outputs",
        "url": format!("http://{api}/"),
        "existing": "base",
        "name": "outtest",
        "bad_name": "badout",
        "schema_file": schema_file,
        // A comma, and whitespace, between entries; IPv6 in brackets.
        "full_rate": format!("127.0.0.1:{},  [::1]:{f6}", f4.port),
        "decimated": format!("127.0.0.1:{}", d.port),
        "factor": 2,
        "payload_hex": hex(&record),
        "records": records,
        "chromium": chromium,
        "chromedriver": chromedriver,
        "artifacts": PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    });
    run_browser_script(&python, &args);

    // Every record byte-identical at both full-rate destinations; the
    // decimated stream (downsample by 2: five records make two windows)
    // at the decimated one; nothing at the relay's defaults.
    assert_eq!(recv_n(&full4, records), vec![record.clone(); records]);
    assert_eq!(recv_n(&full6, records), vec![record.clone(); records]);
    assert_eq!(recv_n(&decimated, 2), vec![record; 2]);
    assert_silent(&decimated);
    assert_silent(&default_full);
    assert_silent(&default_decimated);
    let (status, channel) = http(api, "GET", "/api/v1/channels/outtest", &[], None);
    assert_eq!(status, 200, "{channel}");
    assert_eq!(
        channel["config"]["outputs"],
        serde_json::json!({
            "full_rate": [
                {"address": "127.0.0.1", "port": f4.port},
                {"address": "::1", "port": f6},
            ],
            "decimated": [{"address": "127.0.0.1", "port": d.port}],
        })
    );
    // The refused attempts registered nothing.
    let (status, list) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(status, 200);
    let mut names: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["base", "outtest"]);
    relay.stop();
}
