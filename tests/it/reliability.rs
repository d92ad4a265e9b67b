//! Reliability against careless operators and hostile neighbours, each
//! against the real binary: a schema path naming a FIFO, a port another
//! program holds, the file-descriptor limit, PATCH applying what it shows,
//! DNS rebinding, one settings validation for every door, and channel names
//! that meet the relay's own files.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn relay_command(config: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrelay"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--api", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("SPEEDRELAY_API_TOKEN");
    cmd
}

fn channel_names(api: SocketAddr) -> Vec<String> {
    let (status, list) = http(api, "GET", "/api/v1/channels", &[], None);
    assert_eq!(status, 200, "{list}");
    list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn health(api: SocketAddr) -> u16 {
    http(api, "GET", "/api/v1/health", &[], None).0
}

/// Sends `records` to `port` and asserts each arrives at `dest`.
fn assert_forwards(port: u16, dest: &UdpSocket, records: &[Vec<u8>]) {
    let tx = sender();
    for chunk in records.chunks(20) {
        for r in chunk {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        assert_eq!(recv_n(dest, chunk.len()), chunk);
    }
}

/// A schema "file" that is a FIFO: opening it for reading would wait for a
/// writer forever. The request is refused at once, and nothing else of the
/// relay stops: the API answers, another channel forwards every record,
/// SIGTERM stops the relay cleanly with the records archived.
#[test]
fn a_fifo_as_schema_path_is_refused_and_the_relay_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let fifo = config.join("fifo.avsc");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let api = relay.api;
    let (dest, d) = receiver();
    let port = free_port();
    let outputs = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    assert_eq!(register_example(api, "busy", port, outputs).0, 201);

    let body = json!({"name": "fifo", "port": free_port(), "schema": "fifo.avsc"});
    let asked = Instant::now();
    let (status, answer) = post_json(api, "/api/v1/channels", body.to_string().as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("FIFO, not a regular file"),
        "{answer}"
    );
    assert!(asked.elapsed() < Duration::from_secs(5), "answered at once");
    assert_eq!(health(api), 200);
    assert_eq!(channel_names(api), ["busy"], "nothing registered");
    let records = example_records(100);
    assert_forwards(port, &dest, &records);
    relay.stop();
    assert_eq!(
        archived_datums(&data, "busy", EXAMPLE_SCHEMA),
        records,
        "archived before the exit"
    );
}

/// A port another program holds, even with SO_REUSEADDR set, is a 409 and
/// stays that program's: status says in use, registration agrees, and the
/// holder still gets every datagram sent to it.
#[test]
fn a_port_held_by_another_program_is_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;

    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    holder.set_reuse_address(true).unwrap();
    holder
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    let holder: UdpSocket = holder.into();
    holder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = holder.local_addr().unwrap().port();

    let (status, s) = http(
        api,
        "GET",
        &format!("/api/v1/ports/{port}/status"),
        &[],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(s["status"], "in_use", "{s}");
    let (status, answer) = register_example(api, "thief", port, json!({}));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Port already in use"),
        "{answer}"
    );
    assert!(channel_names(api).is_empty());
    let records = example_records(100);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(
        recv_n(&holder, 100),
        records,
        "every datagram to its holder"
    );

    // Two relays with their own data directories: one port, one owner.
    let port = free_port();
    assert_eq!(register_example(api, "first", port, json!({})).0, 201);
    let other = spawn_relay(&config, &dir.path().join("data2"), &[]);
    let (status, answer) = register_example(other.api, "second", port, json!({}));
    assert_eq!(status, 409, "{answer}");
    let (_, s) = http(
        other.api,
        "GET",
        &format!("/api/v1/ports/{port}/status"),
        &[],
        None,
    );
    assert_eq!(s["status"], "in_use", "{s}");
    other.stop();
    relay.stop();
}

/// With a low descriptor limit the relay refuses registrations with 503 and
/// a clear message before it runs out, keeps answering, and every channel it
/// took archives every record.
#[test]
fn descriptor_exhaustion_is_a_503_and_loses_no_archive_record() {
    const LIMIT: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let mut cmd = relay_command(&config, &data);
    let child_setup = || {
        let lim = libc::rlimit {
            rlim_cur: LIMIT as libc::rlim_t,
            rlim_max: LIMIT as libc::rlim_t,
        };
        // SAFETY: a valid rlimit, soft equal to hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe { cmd.pre_exec(child_setup) };
    let relay = spawn_relay_command(cmd);
    let api = relay.api;
    let mut ports = Vec::new();
    let refusal = loop {
        assert!(ports.len() < LIMIT as usize, "never refused");
        let port = free_port();
        let (status, answer) = register_example(api, &format!("c{}", ports.len()), port, json!({}));
        match status {
            201 => ports.push(port),
            _ => break (status, answer),
        }
    };
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert!(
        refusal.1["error"]
            .as_str()
            .unwrap()
            .contains("out of file descriptors"),
        "{}",
        refusal.1
    );
    assert!(ports.len() >= 40, "only {} channels", ports.len());
    println!(
        "descriptor limit {LIMIT}: {} channels registered",
        ports.len()
    );
    assert_eq!(health(api), 200, "the API still answers");
    // Every channel archives at once: one more descriptor each.
    let records = example_records(3);
    let tx = sender();
    for port in &ports {
        for r in &records {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, *port)).unwrap();
        }
    }
    wait_for("every channel to write its archive", T, || {
        (0..ports.len()).all(|i| !archive_files(&data, &format!("c{i}")).is_empty())
    });
    assert_eq!(health(api), 200);
    let (_, list) = http(api, "GET", "/api/v1/channels", &[], None);
    for c in list["channels"].as_array().unwrap() {
        assert_eq!(c["stats"]["archive_dropped"], 0, "{c}");
        assert_eq!(c["stats"]["archive_errors"], 0, "{c}");
    }
    relay.stop();
    for i in 0..ports.len() {
        assert_eq!(
            archived_datums(&data, &format!("c{i}"), EXAMPLE_SCHEMA),
            records,
            "channel c{i}"
        );
    }
}

/// Every setting PATCH accepts is in effect on the running channel; what it
/// cannot apply it refuses, leaving the channel as it was.
#[test]
fn patch_applies_archive_and_socket_settings_or_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let api = relay.api;
    let (dest, d) = receiver();
    let port = free_port();
    let outputs = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}},
        "archive": {"enabled": false}});
    assert_eq!(register_example(api, "live", port, outputs).0, 201);
    let batch = |n: u64| example_records(n);

    // Archive off: forwarded, no file.
    assert_forwards(port, &dest, &batch(10));
    assert!(archive_files(&data, "live").is_empty());
    // On: the next records reach a file.
    let (status, ch) = patch(api, "live", json!({"archive": {"enabled": true}}));
    assert_eq!(status, 200, "{ch}");
    assert_eq!(ch["config"]["archive"]["enabled"], true);
    let archived = batch(7);
    assert_forwards(port, &dest, &archived);
    wait_for("the archive file", T, || {
        archived_datums_so_far(&data, "live", EXAMPLE_SCHEMA).is_some_and(|d| d.len() == 7)
    });
    // Off again: the file is closed with those records, and no more.
    let (status, _) = patch(api, "live", json!({"archive": {"enabled": false}}));
    assert_eq!(status, 200);
    assert_forwards(port, &dest, &batch(5));
    let files = archive_files(&data, "live");
    assert_eq!(files.len(), 1);
    let out = run_to_end(&["verify".as_ref(), files[0].as_os_str()], &[]);
    assert!(out.status.success(), "closed: {out:?}");
    assert_eq!(archived_datums(&data, "live", EXAMPLE_SCHEMA), archived);

    // The largest datagram: smaller than a record, then records are
    // counted invalid with that reason; back up, they pass again.
    let record_len = batch(1)[0].len();
    let (status, ch) = patch(
        api,
        "live",
        json!({"socket": {"max_datagram": record_len - 1}}),
    );
    assert_eq!(status, 200, "{ch}");
    sender()
        .send_to(&batch(1)[0], (Ipv4Addr::LOCALHOST, port))
        .unwrap();
    wait_for("the oversized datagram counted", T, || {
        get_channel(api, "live")["stats"]["invalid"] == 1
    });
    let (status, _) = patch(api, "live", json!({"socket": {"max_datagram": 65535}}));
    assert_eq!(status, 200);
    assert_forwards(port, &dest, &batch(3));

    // The receive buffer is resized on the bound socket.
    let (status, ch) = patch(api, "live", json!({"socket": {"recv_buffer": 65536}}));
    assert_eq!(status, 200, "{ch}");
    assert_eq!(ch["config"]["socket"]["recv_buffer"], 65536);
    assert_forwards(port, &dest, &batch(3));

    // The bind address cannot change on a bound socket: refused, unchanged.
    let before = get_channel(api, "live")["config"].clone();
    let (status, answer) = patch(api, "live", json!({"socket": {"bind": "0.0.0.0"}}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "config.socket.bind");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("delete the channel"),
        "{answer}"
    );
    assert_eq!(get_channel(api, "live")["config"], before);
    relay.stop();
}

/// DNS rebinding: a name that is not this relay's is refused; IP
/// addresses, localhost and allowed names are served. An empty token
/// stops start-up instead of silently disabling authentication.
#[test]
fn host_names_are_checked_and_an_empty_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let mut cmd = relay_command(&config, &dir.path().join("data"));
    cmd.args(["--allowed-host", "relay.lab"]);
    let relay = spawn_relay_command(cmd);
    let api = relay.api;
    let get = |host: &str| {
        let request =
            format!("GET /api/v1/channels HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        raw_request(api, request.as_bytes(), Duration::from_secs(10))
    };
    let port = api.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
        "127.0.0.1.evil.example".into(),
    ] {
        let (status, text) = get(&host);
        assert_eq!(status, Some(403), "{host}: {text}");
        assert!(text.contains("--allowed-host"), "{text}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "localhost".into(),
        format!("LOCALHOST:{port}"),
        format!("app.localhost:{port}"),
        format!("[::1]:{port}"),
        "10.1.2.3".into(),
        format!("relay.lab:{port}"),
        "Relay.Lab".into(),
    ] {
        assert_eq!(get(&host).0, Some(200), "{host}");
    }
    relay.stop();

    let out = relay_command(&config, &dir.path().join("data"))
        .env("SPEEDRELAY_API_TOKEN", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SPEEDRELAY_API_TOKEN is set but empty"),
        "{err}"
    );
}

/// The bounds of the config schema hold for API bodies too, with
/// check-config's message; nothing refused is stored.
#[test]
fn the_api_refuses_what_the_config_schema_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let relay = spawn_relay(&config, &dir.path().join("data"), &[]);
    let api = relay.api;
    let cases = [
        (
            json!({"decimation": 0}),
            "config.decimation.factor",
            "/decimation/factor: 0 is less than the minimum of 1",
        ),
        (
            json!({"decimation": {"factor": 0}}),
            "config.decimation.factor",
            "/decimation/factor: 0 is less than the minimum of 1",
        ),
        (
            json!({"socket": {"max_datagram": 0}}),
            "config.socket.max_datagram",
            "/socket/max_datagram: 0 is less than the minimum of 1",
        ),
        (
            json!({"archive": {"flush_records": 0}}),
            "config.archive.flush_records",
            "/archive/flush_records: 0 is less than the minimum of 1",
        ),
    ];
    for (config, field, message) in &cases {
        let (status, answer) = register_example(api, "bad", free_port(), config.clone());
        assert_eq!(status, 400, "{config}: {answer}");
        assert_eq!(answer["field"], *field, "{answer}");
        assert_eq!(answer["error"], *message, "{answer}");
    }
    assert!(channel_names(api).is_empty());
    // The same messages from check-config for the same settings in a file.
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "decimation: {factor: 0}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(cases[0].2), "{text}");

    // PATCH: refused, and the running channel keeps its settings.
    assert_eq!(register_example(api, "ok", free_port(), json!({})).0, 201);
    let before = get_channel(api, "ok")["config"].clone();
    for (config, field, _) in &cases {
        let (status, answer) = patch(api, "ok", config.clone());
        assert_eq!(status, 400, "{config}: {answer}");
        assert_eq!(answer["field"], *field, "{answer}");
    }
    assert_eq!(get_channel(api, "ok")["config"], before);

    // The command line goes through the same door.
    let schema = repo_file("config/agents/example.avsc");
    let out = Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .args(["channels", "--url", &format!("http://{api}")])
        .args(["add", "cli", "--port", &free_port().to_string(), "--schema"])
        .arg(&schema)
        .args(["--decimation", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("minimum of 1"), "{err}");
    assert_eq!(channel_names(api), ["ok"]);
    relay.stop();
}

/// A channel may be named like the registry file: the relay's own files
/// live in `.speedrelay/`, which no channel name can take. A registry left
/// where older versions kept it is moved there, channels and all.
#[test]
fn channel_names_never_meet_the_relays_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let port = free_port();
    assert_eq!(
        register_example(relay.api, "registry.redb", port, json!({})).0,
        201
    );
    let records = example_records(5);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    wait_for("the archive", T, || {
        !archive_files(&data, "registry.redb").is_empty()
    });
    assert_eq!(
        get_channel(relay.api, "registry.redb")["stats"]["archive_dropped"],
        0
    );
    relay.stop();
    assert_eq!(
        archived_datums(&data, "registry.redb", EXAMPLE_SCHEMA),
        records
    );

    // An older data directory: the registry beside the channel directories.
    let old = dir.path().join("old");
    let relay = spawn_relay(&config, &old, &[]);
    assert_eq!(
        register_example(relay.api, "kept", free_port(), json!({})).0,
        201
    );
    relay.stop();
    std::fs::rename(
        old.join(".speedrelay/registry.redb"),
        old.join("registry.redb"),
    )
    .unwrap();
    std::fs::remove_dir(old.join(".speedrelay")).unwrap();
    let relay = spawn_relay(&config, &old, &[]);
    assert_eq!(channel_names(relay.api), ["kept"], "registry carried over");
    assert!(old.join(".speedrelay/registry.redb").is_file());
    assert!(!old.join("registry.redb").exists());
    relay.stop();
}
