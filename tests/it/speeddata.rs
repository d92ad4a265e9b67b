//! SpeedData compatibility, against the real binary over HTTP: SpeedData's
//! clients, tests, page and tools work unchanged. Schema paths as SpeedData
//! writes them, a config directory copied anywhere, its number shorthands,
//! its port range and status filters, ports as strings, `created_at` text,
//! the error texts its clients match on, CORS for a page served from
//! another origin (in a real browser too), archives laid out flat where its
//! readers look, and a relay with no config directory at all.

use crate::common;
use common::*;

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const TEMPERATURE_SCHEMA: &str = include_str!("../../config/agents/temperature.avsc");

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_speedrelay"))
}

fn post(api: SocketAddr, body: &Value) -> (u16, Value) {
    post_json(api, "/api/v1/channels", body.to_string().as_bytes())
}

/// The names `GET /api/v1/channels` lists, sorted.
fn names(api: SocketAddr) -> Vec<String> {
    names_of(api, "/api/v1/channels")
}

fn names_of(api: SocketAddr, path: &str) -> Vec<String> {
    let (status, body) = http(api, "GET", path, &[], None);
    assert_eq!(status, 200, "GET {path}: {body}");
    let mut names: Vec<String> = body["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {path}: no channel list: {body}"))
        .iter()
        .map(|c| c["name"].as_str().expect("a name").to_string())
        .collect();
    names.sort();
    names
}

fn example_schema() -> Value {
    serde_json::from_str(EXAMPLE_SCHEMA).unwrap()
}

/// Asserts a 4xx `status` whose `error` contains `needle`.
fn assert_refused(what: &str, (status, body): (u16, Value), want: u16, needle: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(needle),
        "{what}: error {error:?} lacks {needle:?}"
    );
}

/// `<root>/config` as SpeedData lays it out: relay.yaml (no channels,
/// decimation off, quick archive blocks) and the repository's
/// `config/agents/*.avsc`.
fn speeddata_config(root: &Path) -> PathBuf {
    let config = quick_empty_config(root);
    copy_agents(&config);
    config
}

fn copy_agents(config: &Path) {
    std::fs::create_dir_all(config.join("agents")).unwrap();
    for entry in std::fs::read_dir(repo_file("config/agents")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "avsc") {
            std::fs::copy(&path, config.join("agents").join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Copies a directory tree (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Waits until the channel's status is `status`.
fn wait_status(api: SocketAddr, name: &str, status: &str) {
    wait_for(
        &format!("{name} to be {status}"),
        Duration::from_secs(10),
        || get_channel(api, name)["status"] == status,
    );
}

// ---------------------------------------------------------------- item 1

#[test]
fn schema_paths_as_speeddata_writes_them_are_found_in_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = speeddata_config(dir.path());
    std::fs::write(dir.path().join("outside.avsc"), TEMPERATURE_SCHEMA).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("outside.avsc"),
        config.join("agents/link.avsc"),
    )
    .unwrap();
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let temperature: Value = serde_json::from_str(TEMPERATURE_SCHEMA).unwrap();

    // SpeedData's form, from its repository root, and the plain one.
    for (name, path) in [
        ("rooted", "config/agents/temperature.avsc"),
        ("plain", "agents/temperature.avsc"),
    ] {
        let body = json!({"name": name, "port": free_port(), "schema": path});
        let (status, answer) = post(api, &body);
        assert_eq!(status, 201, "schema {path}: {answer}");
        let channel = get_channel(api, name);
        assert_eq!(channel["schema_path"], path);
        assert_eq!(channel["status"], "active");
        let (status, schema) = http(
            api,
            "GET",
            &format!("/api/v1/channels/{name}/schema"),
            &[],
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(schema, temperature, "{name} holds temperature.avsc");
    }
    let registered = vec!["plain".to_string(), "rooted".to_string()];
    assert_eq!(names(api), registered);

    // A missing file: the error names both places looked.
    let root = config.canonicalize().unwrap();
    let answer = post(
        api,
        &json!({"name": "missing", "port": free_port(), "schema": "config/agents/x.avsc"}),
    );
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["field"], "schema");
    let error = answer.1["error"].as_str().unwrap();
    for looked in [
        root.join("config/agents/x.avsc"),
        root.join("agents/x.avsc"),
    ] {
        assert!(
            error.contains(&looked.display().to_string()),
            "{error:?} does not name {}",
            looked.display()
        );
    }
    assert_eq!(names(api), registered, "nothing left by the 400");

    // Nothing outside the config directory: `..`, an absolute path (even
    // to the very file inside it), a link leading out.
    let absolute = root.join("agents/temperature.avsc");
    for (name, path) in [
        ("dotdot", "../x.avsc".to_string()),
        ("dotdot2", "agents/../../outside.avsc".to_string()),
        ("absolute", absolute.display().to_string()),
        (
            "abs-outside",
            dir.path().join("outside.avsc").display().to_string(),
        ),
        ("link", "agents/link.avsc".to_string()),
        ("link-rooted", "config/agents/link.avsc".to_string()),
    ] {
        let answer = post(
            api,
            &json!({"name": name, "port": free_port(), "schema": path}),
        );
        assert_eq!(answer.0, 400, "schema {path}: {}", answer.1);
        assert_eq!(answer.1["field"], "schema", "schema {path}");
        assert_eq!(names(api), registered, "nothing left by schema {path}");
    }
    relay.stop();
}

// ------------------------------------------------------------ items 2, 7

#[test]
fn a_config_directory_works_wherever_it_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped directory, copied where a package would put it.
    let etc = dir.path().join("etc/speedrelay");
    copy_tree(&repo_file("config"), &etc);
    let out = run_to_end(
        &["check-config".as_ref(), etc.as_os_str()],
        &[("RUST_LOG", "info")],
    );
    assert!(
        out.status.success(),
        "check-config {}: {}{}",
        etc.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = spawn_relay(&etc, &dir.path().join("data1"), &[]);
    wait_status(relay.api, "example", "active");
    let example = get_channel(relay.api, "example");
    assert_eq!(example["schema_path"], "agents/example.avsc");
    assert_eq!(example["port"], 26000);
    assert_eq!(names(relay.api), ["example"]);
    relay.stop();

    // The same directory with SpeedData's own form of the path.
    let port = free_port();
    std::fs::write(
        etc.join("relay.yaml"),
        format!(
            "channels:\n  - name: \"example\"\n    port: {port}\n    schema: \"config/agents/example.avsc\"\n\
             decimation: {{enabled: false}}\n"
        ),
    )
    .unwrap();
    let out = run_to_end(
        &["check-config".as_ref(), etc.as_os_str()],
        &[("RUST_LOG", "info")],
    );
    assert!(
        out.status.success(),
        "check-config with config/agents/example.avsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = spawn_relay(&etc, &dir.path().join("data2"), &[]);
    wait_status(relay.api, "example", "active");
    let example = get_channel(relay.api, "example");
    assert_eq!(example["schema_path"], "config/agents/example.avsc");
    assert_eq!(example["port"], port);
    let (status, schema) = http(
        relay.api,
        "GET",
        "/api/v1/channels/example/schema",
        &[],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(schema, example_schema());
    relay.stop();
}

// ---------------------------------------------------------------- item 3

#[test]
fn rotation_and_decimation_take_speeddata_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let body = json!({
        "name": "numbers", "port": free_port(), "schema": example_schema(),
        "config": {"decimation": 5, "rotation": 3600},
    });
    let (status, answer) = post(api, &body);
    assert_eq!(status, 201, "{answer}");
    let channel = get_channel(api, "numbers");
    assert_eq!(
        channel["config"]["rotation"],
        json!({"mode": "time", "threshold": 3600})
    );
    assert_eq!(channel["config"]["decimation"]["factor"], 5);

    let (status, answer) = patch(api, "numbers", json!({"rotation": 60}));
    assert_eq!(status, 200, "{answer}");
    let config_after = get_channel(api, "numbers")["config"].clone();
    assert_eq!(
        config_after["rotation"],
        json!({"mode": "time", "threshold": 60})
    );
    assert_eq!(
        config_after["decimation"]["factor"], 5,
        "PATCH kept the rest"
    );

    for bad in [json!(-1), json!("hourly"), json!(1.5)] {
        let (status, answer) = patch(api, "numbers", json!({"rotation": bad}));
        assert_eq!(status, 400, "PATCH rotation {bad}: {answer}");
        assert_eq!(
            get_channel(api, "numbers")["config"],
            config_after,
            "PATCH rotation {bad} changed nothing"
        );
        let body = json!({
            "name": "badrotation", "port": free_port(), "schema": example_schema(),
            "config": {"rotation": bad},
        });
        let (status, answer) = post(api, &body);
        assert_eq!(status, 400, "POST rotation {bad}: {answer}");
        assert_eq!(
            names(api),
            ["numbers"],
            "POST rotation {bad} registered nothing"
        );
    }
    relay.stop();
}

// ---------------------------------------------------------------- item 4

#[test]
fn ports_available_without_a_query_scans_the_configured_range() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let start = free_port().min(65_000);
    let end = start + 20;
    let mut yaml = std::fs::read_to_string(config.join("relay.yaml")).unwrap();
    yaml.push_str(&format!("ports: {{start: {start}, end: {end}}}\n"));
    std::fs::write(config.join("relay.yaml"), yaml).unwrap();
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;

    let (status, answer) = http(api, "GET", "/api/v1/ports/available", &[], None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["range"], json!({"start": start, "end": end}));
    let available: Vec<u64> = answer["available"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(!available.is_empty(), "{answer}");
    assert!(
        available
            .iter()
            .all(|p| (u64::from(start)..=u64::from(end)).contains(p)),
        "{answer}"
    );
    assert_eq!(answer["count"], available.len());

    assert_refused(
        "start == end",
        http(
            api,
            "GET",
            &format!("/api/v1/ports/available?start={start}&end={start}"),
            &[],
            None,
        ),
        400,
        "start must be < end",
    );
    let (status, answer) = http(
        api,
        "GET",
        &format!("/api/v1/ports/available?start={end}&end={start}"),
        &[],
        None,
    );
    assert_eq!(status, 400, "start > end: {answer}");
    relay.stop();
}

#[test]
fn ports_available_without_a_range_anywhere_is_speeddatas() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let (status, answer) = http(relay.api, "GET", "/api/v1/ports/available", &[], None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["range"], json!({"start": 26000, "end": 27000}));
    relay.stop();
}

// ------------------------------------------------------------ items 5, 7

#[test]
fn status_filters_speak_speeddata() {
    let dir = tempfile::tempdir().unwrap();
    // A socket of another program holds the port of `down` for the whole
    // test (a failed channel is retried).
    let holder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let held = holder.local_addr().unwrap().port();
    let up = free_port();
    let config = example_config(
        dir.path(),
        &format!(
            "channels:\n  - {{name: up, port: {up}, schema: example.avsc}}\n  \
         - {{name: down, port: {held}, schema: example.avsc}}\n\
         socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\n"
        ),
    );
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    wait_status(api, "up", "active");
    let down = get_channel(api, "down");
    assert_eq!(down["status"], "failed", "{down}");
    // Item 7: the path relay.yaml wrote, not null.
    assert_eq!(down["schema_path"], "example.avsc");
    assert_eq!(get_channel(api, "up")["schema_path"], "example.avsc");

    let both = ["down", "up"];
    assert_eq!(names_of(api, "/api/v1/channels"), both);
    assert_eq!(names_of(api, "/api/v1/channels?status=registered"), both);
    assert_eq!(names_of(api, "/api/v1/channels?status=running"), ["up"]);
    assert_eq!(names_of(api, "/api/v1/channels?status=active"), ["up"]);
    assert_eq!(names_of(api, "/api/v1/channels?status=failed"), ["down"]);
    let (status, answer) = http(api, "GET", "/api/v1/channels?status=bogus", &[], None);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "status");
    // Still held, still failed.
    assert_eq!(get_channel(api, "down")["status"], "failed");
    drop(holder);
    relay.stop();
}

// ---------------------------------------------------------------- item 6

#[test]
fn a_port_given_as_a_string_of_digits_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let port = free_port();
    let body = json!({"name": "stringport", "port": port.to_string(), "schema": example_schema()});
    let (status, answer) = post(api, &body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["port"], port);
    let channel = get_channel(api, "stringport");
    assert_eq!(channel["port"], json!(port), "a number, not a string");
    assert_eq!(channel["status"], "active");

    for bad in ["12ab", "", " 26005", "-1", "70000", "0x10"] {
        let body = json!({"name": "badport", "port": bad, "schema": example_schema()});
        let (status, answer) = post(api, &body);
        assert_eq!(status, 400, "port {bad:?}: {answer}");
        assert_eq!(answer["field"], "port", "port {bad:?}");
        assert_eq!(
            names(api),
            ["stringport"],
            "port {bad:?} registered nothing"
        );
    }
    relay.stop();
}

// ---------------------------------------------------------------- item 8

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS`, read as UTC, in Unix seconds; None unless it
/// has exactly that shape.
fn parse_utc(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

#[test]
fn created_at_is_speeddata_utc_text() {
    assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
    assert_eq!(parse_utc("2024-02-29 12:34:56"), Some(1_709_210_096));
    assert_eq!(parse_utc("2024-02-29T12:34:56"), None);
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    // A zone far from UTC (and not by whole hours): local time would show.
    let relay = spawn_relay(&config, &dir.path().join("data"), &[("TZ", "XST-5:30")]);
    let api = relay.api;
    let (status, answer) = register_example(api, "stamped", free_port(), json!({}));
    assert_eq!(status, 201, "{answer}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let channel = get_channel(api, "stamped");
    let text = channel["created_at"].as_str().expect("created_at is text");
    let secs =
        parse_utc(text).unwrap_or_else(|| panic!("created_at {text:?} is not YYYY-MM-DD HH:MM:SS"));
    let now_secs = now.as_secs() as i64;
    assert!(
        (now_secs - 120..=now_secs + 5).contains(&secs),
        "created_at {text} is not the current UTC time ({now_secs} s since 1970, it says {secs})"
    );
    let ms = channel["created_at_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("created_at_ms is not a number: {channel}"));
    let now_ms = now.as_millis() as u64;
    assert!(
        (now_ms - 120_000..=now_ms + 5_000).contains(&ms),
        "created_at_ms {ms}, now {now_ms}"
    );
    assert_eq!(ms as i64 / 1000, secs, "created_at and created_at_ms agree");
    // The list shows the same.
    let (_, list) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(list["channels"][0]["created_at"], text);
    relay.stop();
}

// ---------------------------------------------------------------- item 9

#[test]
fn errors_read_as_speeddata_clients_expect() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let port = free_port();
    let (status, answer) = register_example(api, "first", port, json!({}));
    assert_eq!(status, 201, "{answer}");

    // A port a channel holds.
    let (status, answer) = register_example(api, "second", port, json!({}));
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("Port already in use"), "{error:?}");
    assert_eq!(names(api), ["first"]);

    // A port another program holds: refused, and that program keeps it.
    let other = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let taken = other.local_addr().unwrap().port();
    let (status, answer) = register_example(api, "thief", taken, json!({}));
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("Port already in use"), "{error:?}");
    assert_eq!(names(api), ["first"]);
    sender()
        .send_to(b"still mine", (Ipv4Addr::LOCALHOST, taken))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = other
        .recv(&mut buf)
        .expect("the program holding the port still receives its datagrams");
    assert_eq!(&buf[..n], b"still mine");

    // Missing fields.
    let (status, answer) = post(api, &json!({"port": free_port()}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "Missing required fields: name, schema");
    assert_eq!(answer["field"], "name");
    assert_eq!(names(api), ["first"]);

    // An unknown channel, by every method that names one.
    for (method, body) in [
        ("GET", None),
        ("DELETE", None),
        ("PATCH", Some(b"{}".as_slice())),
    ] {
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        let (status, answer) = http(api, method, "/api/v1/channels/nosuch", &headers, body);
        assert_eq!(status, 404, "{method}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("Channel not found"),
            "{method}: {error:?}"
        );
    }
    assert_eq!(names(api), ["first"]);
    relay.stop();
}

// --------------------------------------------------------------- item 10

/// The value of response header `name` in a raw HTTP answer.
fn header(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn preflight(api: SocketAddr, origin: &str, method: &str) -> (Option<u16>, String) {
    let request = format!(
        "OPTIONS /api/v1/channels HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: {method}\r\n\
         Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
    );
    raw_request(api, request.as_bytes(), Duration::from_secs(10))
}

fn get_with_origin(api: SocketAddr, origin: &str) -> (Option<u16>, String) {
    let request = format!(
        "GET /api/v1/channels HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
         Connection: close\r\n\r\n"
    );
    raw_request(api, request.as_bytes(), Duration::from_secs(10))
}

fn spawn_with_cors(dir: &Path, origin: &str) -> RelayProcess {
    let config = quick_empty_config(dir);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--api", "127.0.0.1:0", "--cors-origin", origin])
        .env("RUST_LOG", "info")
        .env_remove("SPEEDRELAY_API_TOKEN")
        .env_remove("SPEEDRELAY_CORS_ORIGINS");
    spawn_relay_command(cmd)
}

#[test]
fn cors_answers_listed_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let listed = format!("http://127.0.0.1:{}", free_port());
    let relay = spawn_with_cors(dir.path(), &listed);
    let api = relay.api;

    for method in ["POST", "PATCH", "DELETE"] {
        let (status, answer) = preflight(api, &listed, method);
        assert_eq!(status, Some(204), "{answer}");
        assert_eq!(
            header(&answer, "access-control-allow-origin").as_deref(),
            Some(listed.as_str()),
            "{answer}"
        );
        let methods = header(&answer, "access-control-allow-methods").unwrap_or_default();
        for m in ["POST", "PATCH", "DELETE"] {
            assert!(
                methods.split(',').any(|x| x.trim() == m),
                "{m} not allowed: {answer}"
            );
        }
        let headers = header(&answer, "access-control-allow-headers").unwrap_or_default();
        assert!(
            headers.to_ascii_lowercase().contains("content-type"),
            "{answer}"
        );
    }
    let other_port = format!("http://127.0.0.1:{}", free_port());
    for unlisted in [
        "http://evil.example",
        other_port.as_str(),
        "https://127.0.0.1",
        "null",
    ] {
        let (status, answer) = preflight(api, unlisted, "POST");
        assert_eq!(status, Some(403), "{unlisted}: {answer}");
        assert_eq!(
            header(&answer, "access-control-allow-origin"),
            None,
            "{unlisted}: {answer}"
        );
        let (status, answer) = get_with_origin(api, unlisted);
        assert_eq!(status, Some(200), "{answer}");
        assert_eq!(
            header(&answer, "access-control-allow-origin"),
            None,
            "{unlisted}: {answer}"
        );
    }
    let (status, answer) = get_with_origin(api, &listed);
    assert_eq!(status, Some(200), "{answer}");
    assert_eq!(
        header(&answer, "access-control-allow-origin").as_deref(),
        Some(listed.as_str()),
        "{answer}"
    );
    assert!(names(api).is_empty(), "preflights changed nothing");
    relay.stop();
}

#[test]
fn cors_any_origin_with_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let data = dir.path().join("data");
    let out = serve_to_end(
        &config,
        &data,
        &["--cors-origin", "*"],
        &[
            ("RUST_LOG", "info"),
            ("SPEEDRELAY_API_TOKEN", "s3cret-cors-token"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(!stderr.contains("speedrelay running"), "{stderr}");
    assert!(
        stderr.contains("--cors-origin '*'") && stderr.contains("token"),
        "the refusal says why: {stderr}"
    );
}

/// The browser script: dropped (a failed check), its stdin is closed so
/// that it stops and quits the browser itself; killed if it has not within
/// 15 s.
struct Script {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_page_on_a_listed_origin_manages_channels_in_a_real_browser() {
    let Some((python, chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page_port = free_port();
    let relay = spawn_with_cors(dir.path(), &format!("http://127.0.0.1:{page_port}"));
    let api = relay.api;
    let port = free_port();
    let args = json!({
        "api": format!("http://{api}"),
        "listed_port": page_port,
        "name": "frombrowser",
        "blocked_name": "blocked",
        "port": port,
        "schema": example_schema(),
        "chromium": chromium,
        "chromedriver": chromedriver,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cors_browser.py");
    let mut child = Command::new(python)
        .arg(path)
        .arg(args.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut script = Script {
        stdin: child.stdin.take(),
        child,
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut output = String::new();
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                drop(script);
                panic!("the browser checks took over 120 s:\n{output}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        output.push_str(&line);
        output.push('\n');
        let Some(checkpoint) = line.strip_prefix("await: ") else {
            continue;
        };
        match checkpoint {
            "registered" => {
                let channel = get_channel(api, "frombrowser");
                assert_eq!(channel["port"], port);
                wait_status(api, "frombrowser", "active");
                assert_eq!(names(api), ["frombrowser"]);
            }
            "deleted" => {
                let (status, answer) = http(api, "GET", "/api/v1/channels/frombrowser", &[], None);
                assert_eq!(status, 404, "deleted through the page: {answer}");
                assert!(names(api).is_empty());
            }
            "blocked" => {
                let (status, _) = http(api, "GET", "/api/v1/channels/blocked", &[], None);
                assert_eq!(status, 404, "the unlisted origin registered nothing");
                assert!(names(api).is_empty());
            }
            other => panic!("unknown checkpoint {other:?}:\n{output}"),
        }
        seen.push(checkpoint.to_string());
        let stdin = script.stdin.as_mut().unwrap();
        writeln!(stdin, "go").expect("the script waits for go");
        stdin.flush().unwrap();
    }
    let mut status = None;
    wait_for(
        "the browser script to exit",
        deadline.saturating_duration_since(Instant::now()),
        || {
            status = script.child.try_wait().unwrap();
            status.is_some()
        },
    );
    output.push_str(&err_thread.join().unwrap_or_default());
    println!("{output}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser checks failed:\n{output}"
    );
    assert_eq!(seen, ["registered", "deleted", "blocked"], "{output}");
    assert!(output.lines().any(|l| l == "ok"), "{output}");
    relay.stop();
}

// --------------------------------------------------------------- item 11

/// `*.avro` files directly in `dir`, sorted.
fn avro_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "avro"))
        .collect();
    files.sort();
    files
}

/// Every record of `files`, re-encoded as Avro binary (apache-avro's
/// reader), in file order.
fn datums_of(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let s = schema(EXAMPLE_SCHEMA);
    let mut out = Vec::new();
    for path in files {
        let file = std::fs::File::open(path).unwrap();
        let reader = apache_avro::Reader::new(std::io::BufReader::new(file))
            .unwrap_or_else(|e| panic!("{} is not an Avro file: {e}", path.display()));
        for value in reader {
            out.push(encode(&s, value.expect("a record")));
        }
    }
    out
}

/// The same with Python's fastavro (an independent reader, what SpeedData's
/// tools use): each record re-encoded by fastavro, in file order. None
/// (skip) without SPEEDRELAY_PYTHON outside tests/run.sh.
fn fastavro_datums(files: &[PathBuf]) -> Option<Vec<Vec<u8>>> {
    let python = python_or_skip("the fastavro check")?;
    let script = "import io, sys, fastavro\n\
                  for p in sys.argv[1:]:\n    \
                  with open(p, 'rb') as f:\n        \
                  r = fastavro.reader(f)\n        \
                  s = fastavro.parse_schema(r.writer_schema)\n        \
                  for rec in r:\n            \
                  b = io.BytesIO()\n            \
                  fastavro.schemaless_writer(b, s, rec)\n            \
                  print(b.getvalue().hex())\n";
    let out = run_python(&python, script, files, b"", "fastavro failed");
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    Some(out.lines().map(hex).collect())
}

/// Sends `records` to `port` and waits until the channel counted them all.
fn send_and_wait(api: SocketAddr, name: &str, port: u16, records: &[Vec<u8>]) {
    let tx = sender();
    for r in records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    let want = records.len() as u64;
    wait_for(
        &format!("{want} records at {name}"),
        Duration::from_secs(10),
        || get_channel(api, name)["stats"]["packets"].as_u64() == Some(want),
    );
}

#[test]
fn flat_layout_writes_archives_where_speeddata_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_empty_config(dir.path());
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let all = example_records(60);
    // Different records per channel, so a mix-up shows.
    let plan = [
        (
            "north",
            &all[0..20],
            json!({"archive": {"layout": "flat", "flush_ms": 50}}),
        ),
        (
            "north-2",
            &all[20..40],
            json!({"archive": {"layout": "flat", "flush_ms": 50}}),
        ),
        ("nested", &all[40..60], json!({})),
    ];
    let mut ports = Vec::new();
    for (name, _, config) in &plan {
        let port = free_port();
        let (status, answer) = register_example(api, name, port, config.clone());
        assert_eq!(status, 201, "{name}: {answer}");
        ports.push(port);
    }
    assert_eq!(
        get_channel(api, "north")["config"]["archive"]["layout"],
        "flat"
    );
    assert_eq!(
        get_channel(api, "nested")["config"]["archive"]["layout"],
        "channel"
    );
    for ((name, records, _), port) in plan.iter().zip(&ports) {
        send_and_wait(api, name, *port, records);
    }
    relay.stop();

    // Flat: `<data_dir>/<name>-<stamp>.avro`, nothing under `<data_dir>/<name>/`.
    let top = avro_files_in(&data);
    let file_name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    // `north-2-…` also starts with `north-`: tell them apart by what follows
    // (the stamp starts with a digit of the year, never `2-`).
    let of = |name: &str| -> Vec<PathBuf> {
        top.iter()
            .filter(|p| {
                let f = file_name(p);
                f.strip_prefix(&format!("{name}-"))
                    .is_some_and(|rest| rest.len() > 2 && !rest.starts_with("2-"))
            })
            .cloned()
            .collect()
    };
    let north = of("north");
    let north2 = of("north-2");
    assert!(
        !north.is_empty(),
        "no north-*.avro in {}: {top:?}",
        data.display()
    );
    assert!(
        !north2.is_empty(),
        "no north-2-*.avro in {}: {top:?}",
        data.display()
    );
    assert_eq!(
        north.len() + north2.len(),
        top.len(),
        "only the flat channels' files at the top: {top:?}"
    );
    for name in ["north", "north-2"] {
        let sub = data.join(name);
        assert!(
            !sub.exists() || avro_files_in(&sub).is_empty(),
            "{name} wrote under {}",
            sub.display()
        );
    }
    assert_eq!(datums_of(&north), plan[0].1, "north's records, in order");
    assert_eq!(datums_of(&north2), plan[1].1, "north-2's records, in order");
    if let Some(read) = fastavro_datums(&north) {
        assert_eq!(read, plan[0].1, "fastavro reads north's records");
    }
    if let Some(read) = fastavro_datums(&north2) {
        assert_eq!(read, plan[1].1, "fastavro reads north-2's records");
    }

    // The default layout is still one directory per channel.
    let nested = archive_files(&data, "nested");
    assert!(!nested.is_empty(), "no {}/nested/*.avro", data.display());
    assert_eq!(datums_of(&nested), plan[2].1);
    assert!(
        top.iter().all(|p| !file_name(p).starts_with("nested")),
        "{top:?}"
    );
}

// --------------------------------------------------------------- item 12

#[test]
fn a_relay_without_a_config_directory_registers_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("empty");
    std::fs::create_dir_all(&cwd).unwrap();
    let data = dir.path().join("data");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&cwd)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    for var in [
        "SPEEDRELAY_CONFIG",
        "SPEEDRELAY_DATA_DIR",
        "SPEEDRELAY_API",
        "SPEEDRELAY_API_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let relay = spawn_relay_command(cmd);
    let api = relay.api;
    assert!(
        relay.log_text().contains("built-in defaults"),
        "{}",
        relay.log_text()
    );
    let port = free_port();
    let body = json!({"name": "bare", "port": port, "schema": example_schema()});
    let (status, answer) = post(api, &body);
    assert_eq!(status, 201, "{answer}");
    let channel = get_channel(api, "bare");
    assert_eq!(channel["status"], "active");
    assert_eq!(channel["port"], port);
    // Without a config directory a schema path has nowhere to be.
    let body = json!({"name": "bypath", "port": free_port(), "schema": "agents/example.avsc"});
    let (status, answer) = post(api, &body);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "schema");
    assert_eq!(names(api), ["bare"]);
    relay.stop();
}
