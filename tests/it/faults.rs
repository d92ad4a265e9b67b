//! Faults around a running relay: the archive directory removed, a full
//! disk, a destination that refuses or vanishes, a broken registry, a
//! panicking channel task. Each is reported on the channel it affects (GET
//! /channels/{name}) or refused at start with a clear message, never a
//! crash, and the relay recovers by itself once the fault clears.
//!
//! What tests/it/channel.rs already covers at the channel level (an
//! unwritable directory counted, a refused destination counted) is not
//! repeated; these go through the real binary and check the recovery.

use crate::common;

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// Sends `records` to `port`, a few at a time so that no kernel buffer
/// overflows, and waits until the channel has counted them all.
fn send(api: SocketAddr, name: &str, port: u16, records: &[Vec<u8>]) {
    let before = get_channel(api, name)["stats"]["packets"]
        .as_u64()
        .unwrap_or(0);
    let tx = sender();
    for chunk in records.chunks(20) {
        for r in chunk {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let want = before + records.len() as u64;
    wait_for("the channel to count every datagram", T, || {
        get_channel(api, name)["stats"]["packets"].as_u64() >= Some(want)
    });
}

/// Mounts a tmpfs of `size` at `at` when this process may (root in the
/// mount namespace tests/run.sh gives it); unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let target = CString::new(at.as_os_str().as_encoded_bytes()).ok()?;
        let options = CString::new(format!("size={size},mode=0750")).ok()?;
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        (rc == 0).then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, read_only: bool) -> bool {
        let Ok(target) = CString::new(self.0.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        let flags = libc::MS_REMOUNT | if read_only { libc::MS_RDONLY } else { 0 };
        // SAFETY: as above; remounting our own mount.
        unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                std::ptr::null(),
            ) == 0
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: unmounting what `mount` mounted; lazily, in case a
            // killed relay still holds a file there.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The sequence numbers (`counter`) of every archived record, in order.
fn archived_numbers(data: &Path, name: &str) -> Vec<u64> {
    let s = schema(EXAMPLE_SCHEMA);
    archived_datums(data, name, EXAMPLE_SCHEMA)
        .iter()
        .map(|d| match decode(&s, d) {
            apache_avro::types::Value::Record(fields) => fields
                .iter()
                .find_map(|(k, v)| match (k.as_str(), v) {
                    ("counter", apache_avro::types::Value::Int(n)) => Some(*n as u64),
                    _ => None,
                })
                .unwrap_or(u64::MAX),
            _ => u64::MAX,
        })
        .collect()
}

#[test]
fn a_removed_archive_directory_is_recreated_with_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, data) = loopback_relay(dir.path(), 20);
    let port = free_port();
    let (status, body) = register_example(relay.api, "gone", port, json!({}));
    assert_eq!(status, 201, "{body}");
    send(relay.api, "gone", port, &example_range(0, 200));
    wait_for("the first file", T, || {
        get_channel(relay.api, "gone")["stats"]["archive_files"] == 1
    });
    std::fs::remove_dir_all(data.join("gone")).unwrap();

    let after = example_range(200, 300);
    send(relay.api, "gone", port, &after);
    wait_for("a second file", T, || {
        get_channel(relay.api, "gone")["stats"]["archive_files"] == 2
    });
    let c = get_channel(relay.api, "gone");
    assert_eq!(c["status"], "active");
    assert!(relay.log_text().contains("deleted while open"));
    assert!(relay.terminate().success());
    // The new file holds every record sent after the removal, and the
    // ones still waiting for their block when it happened.
    let archived = archived_numbers(&data, "gone");
    assert!(
        archived.ends_with(&(200..500).collect::<Vec<_>>()),
        "{archived:?}"
    );
    assert!(
        archived.windows(2).all(|w| w[1] == w[0] + 1),
        "{archived:?}"
    );
}

#[test]
fn a_full_disk_is_reported_and_archiving_resumes_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let channel_dir = data.join("full");
    // A 1 MiB file system for the channel's archive; where mounting is not
    // permitted, a regular file in place of the directory stands in for a
    // disk that refuses writes.
    let tmpfs = Tmpfs::mount(&channel_dir, "1m");
    let filler = channel_dir.join("filler");
    if tmpfs.is_some() {
        let chunk = vec![0u8; 64 * 1024];
        let mut f = std::fs::File::create(&filler).unwrap();
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    } else {
        assert!(
            !under_test_script(),
            "tests/run.sh gives a mount namespace: mount must work"
        );
        // Tmpfs::mount made the directory before mount(2) refused.
        std::fs::remove_dir(&channel_dir).unwrap();
        std::fs::write(&channel_dir, b"in the way").unwrap();
    }
    let relay = spawn_relay(&loopback_config(dir.path(), 20), &data, &[]);
    let port = free_port();
    let (status, body) = register_example(relay.api, "full", port, json!({}));
    assert_eq!(status, 201, "{body}");
    send(relay.api, "full", port, &example_range(0, 200));
    wait_for("the archive error", T, || {
        get_channel(relay.api, "full")["stats"]["archive_error"].is_string()
    });
    let c = get_channel(relay.api, "full");
    let err = c["stats"]["archive_error"].as_str().unwrap().to_string();
    // The operating system's reason: ENOSPC, or EEXIST for the file in
    // the directory's place.
    let expected = if tmpfs.is_some() {
        "No space left"
    } else {
        "File exists"
    };
    assert!(err.contains(expected), "{err}");
    assert!(c["stats"]["archive_dropped"].as_u64() > Some(0), "{c}");
    assert_eq!(c["status"], "active", "forwarding goes on: {c}");
    assert!(
        c["error"].as_str().is_some_and(|e| e.contains(expected)),
        "the channel's error says why: {c}"
    );

    // Space freed: blocks are written again, to a new file.
    if tmpfs.is_some() {
        std::fs::remove_file(&filler).unwrap();
    } else {
        std::fs::remove_file(&channel_dir).unwrap();
    }
    let mut n = 200;
    wait_for("archiving to resume", T, || {
        send(relay.api, "full", port, &example_range(n, 20));
        n += 20;
        get_channel(relay.api, "full")["stats"]["archive_error"].is_null()
    });
    let after = example_range(100_000, 300);
    send(relay.api, "full", port, &after);
    let c = get_channel(relay.api, "full");
    assert!(c["error"].is_null(), "{c}");
    assert!(relay.terminate().success());
    let archived = archived_numbers(&data, "full");
    assert!(
        archived.ends_with(&(100_000..100_300).collect::<Vec<_>>()),
        "every record after the recovery is archived: {archived:?}"
    );
    drop(tmpfs);
}

#[test]
fn a_refusing_destination_is_reported_and_served_again_once_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 20);
    let port = free_port();
    let dest_port = free_port();
    let (status, body) = register_example(
        relay.api,
        "refused",
        port,
        json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": dest_port}}}),
    );
    assert_eq!(status, 201, "{body}");
    // Nobody listens: ICMP port unreachable comes back to the relay.
    send(relay.api, "refused", port, &example_range(0, 100));
    assert_send_errors_reported(relay.api, "refused", "refused");

    // The destination comes up: it gets the records sent from then on.
    let dest = UdpSocket::bind((Ipv4Addr::LOCALHOST, dest_port)).unwrap();
    dest.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let after = example_range(100, 100);
    send(relay.api, "refused", port, &after);
    assert_eq!(recv_n(&dest, after.len()), after);
    assert!(relay.terminate().success());
}

/// Channel `name` counted send errors, the last one says `what`, and it
/// is still active (a destination's fault is not the channel's).
fn assert_send_errors_reported(api: SocketAddr, name: &str, what: &str) {
    let c = get_channel(api, name);
    assert!(c["stats"]["send_errors"].as_u64() > Some(0), "{c}");
    assert!(
        c["stats"]["last_send_error"]
            .as_str()
            .is_some_and(|e| e.contains(what)),
        "{c}"
    );
    assert_eq!(c["status"], "active");
}

/// Runs `ip ARGS` (inside the test's private namespace only).
fn ip(args: &str) -> bool {
    Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_vanished_destination_network_is_reported_and_recovered_from() {
    // Routes are changed: only inside the private namespace tests/run.sh creates.
    if !private_netns_or_skip("not in a private network namespace") {
        return;
    }
    // The destination's network is a route; deleting it makes the network
    // unreachable, as when an uplink goes away.
    let route = "10.254.7.0/24 dev lo";
    assert!(ip(&format!("route add {route}")), "cannot add a route");
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = loopback_relay(dir.path(), 20);
    let port = free_port();
    let (status, body) = register_example(
        relay.api,
        "vanish",
        port,
        json!({"outputs": {"full_rate": {"address": "10.254.7.2", "port": 9}}}),
    );
    assert_eq!(status, 201, "{body}");
    send(relay.api, "vanish", port, &example_range(0, 50));
    let c = get_channel(relay.api, "vanish");
    assert_eq!(c["stats"]["forwarded"], 50, "{c}");

    assert!(ip(&format!("route del {route}")));
    send(relay.api, "vanish", port, &example_range(50, 50));
    assert_send_errors_reported(relay.api, "vanish", "unreachable");

    assert!(
        ip(&format!("route add {route}")),
        "cannot restore the route"
    );
    let forwarded = c["stats"]["forwarded"].as_u64().unwrap();
    send(relay.api, "vanish", port, &example_range(100, 50));
    let c = get_channel(relay.api, "vanish");
    assert_eq!(
        c["stats"]["forwarded"].as_u64(),
        Some(forwarded + 50),
        "{c}"
    );
    ip(&format!("route del {route}"));
    assert!(relay.terminate().success());
}

#[test]
fn a_corrupt_registry_refuses_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = loopback_config(dir.path(), 20);
    let registry = speedrelay::engine::registry_path(&data).unwrap();
    std::fs::create_dir_all(registry.parent().unwrap()).unwrap();
    std::fs::write(&registry, vec![0x5a; 64 * 1024]).unwrap();
    let out = serve_to_end(&config, &data, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "a clean refusal, not a crash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registry.redb"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(&registry).unwrap(),
        vec![0x5a; 64 * 1024],
        "the file is left for the operator"
    );
    // Fault cleared (file moved aside): the relay starts.
    std::fs::rename(&registry, data.join("registry.redb.bad")).unwrap();
    let relay = spawn_relay(&config, &data, &[]);
    assert!(relay.terminate().success());
}

#[test]
fn a_read_only_registry_refuses_start_and_a_full_disk_is_survived_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(fs) = Tmpfs::mount(&data, "16m") else {
        assert!(
            !under_test_script(),
            "tests/run.sh gives a mount namespace: mount must work"
        );
        eprintln!("skipped: mount not permitted");
        return;
    };
    let config = loopback_config(dir.path(), 20);
    // Create a registry with one channel, then make it read-only.
    let relay = spawn_relay(&config, &data, &[]);
    let port = free_port();
    assert_eq!(
        register_example(relay.api, "before", port, json!({})).0,
        201
    );
    assert!(relay.terminate().success());
    assert!(fs.remount(true));
    let out = serve_to_end(&config, &data, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("registry.redb"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Writable again: it starts. Then the disk fills up under it (a file
    // open for writing keeps a remount read-only from happening, so a full
    // disk is the run-time fault). Registering fails with a clear error
    // and changes nothing; registering works again once space is freed.
    assert!(fs.remount(false));
    let relay = spawn_relay(&config, &data, &[]);
    let filler = data.join("filler");
    {
        let chunk = vec![0u8; 64 * 1024];
        let mut f = std::fs::File::create(&filler).unwrap();
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }
    // redb may still have room inside its file, so the registrations
    // carry schemas with a 256 KiB doc string: together 5 MiB, more than
    // the registry file can hold without growing on a full disk.
    let mut schema: serde_json::Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    schema["doc"] = json!("d".repeat(256 * 1024));
    let registry_len = std::fs::metadata(speedrelay::engine::registry_path(&data).unwrap())
        .unwrap()
        .len();
    assert!(registry_len < 20 * 256 * 1024, "{registry_len}");
    let mut refused = 0;
    for i in 0..20 {
        let body = json!({"name": format!("during{i}"), "port": free_port(), "schema": schema});
        let (status, body) = post_json(relay.api, "/api/v1/channels", body.to_string().as_bytes());
        match status {
            201 => continue,
            500..600 => {
                assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("registry")),
                    "{body}"
                );
                refused += 1;
                let (status, _) = http(
                    relay.api,
                    "GET",
                    &format!("/api/v1/channels/during{i}"),
                    &[],
                    None,
                );
                assert_eq!(status, 404, "a refused registration leaves nothing");
            }
            other => panic!("{other} {body}"),
        }
    }
    assert!(refused > 0, "no registration was refused on a full disk");
    assert_eq!(get_channel(relay.api, "before")["status"], "active");
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = register_example(relay.api, "after", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    let (_, list) = http(relay.api, "GET", "/api/v1/channels", &[], None);
    let names: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| !n.starts_with("during"))
        .collect();
    assert_eq!(names, ["after", "before"]);
    assert!(relay.terminate().success());
    // And the registrations made after the fault cleared are durable.
    let relay = spawn_relay(&config, &data, &[]);
    assert_eq!(get_channel(relay.api, "after")["status"], "active");
    assert!(relay.terminate().success());
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_channel_task_is_restarted_by_its_supervisor() {
    use speedrelay::engine::{Engine, EngineOptions, Registration, Status};
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions::new(
        dir.path().to_path_buf(),
        json!({
            "socket": {"bind": "127.0.0.1"},
            "decimation": {"enabled": false},
            "archive": {"flush_ms": 20}
        }),
    );
    let engine = Engine::start(options, &[]).await.unwrap();
    let (dest, d) = receiver();
    let port = free_port();
    engine
        .register(Registration {
            name: "panics".into(),
            port,
            schema_json: EXAMPLE_SCHEMA.into(),
            schema_path: None,
            config: Some(
                json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}}),
            ),
        })
        .await
        .unwrap();
    let relay = |from: u64, dest: UdpSocket| async move {
        let recs = example_range(from, 100);
        let sent = recs.clone();
        tokio::task::spawn_blocking(move || {
            let tx = sender();
            for r in &sent {
                tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            assert_eq!(recv_n(&dest, sent.len()), sent);
            dest
        })
        .await
        .unwrap()
    };
    let dest = relay(0, dest).await;
    assert!(engine.inject_panic("panics"));
    // The supervisor sees the panic (failed, with the reason) ...
    let mut seen = None;
    wait_until("the channel to fail", T, || {
        let info = engine.get("panics").unwrap();
        if info.status == Status::Failed {
            seen = info.error;
        }
        seen.is_some()
    })
    .await;
    let why = seen.unwrap();
    assert!(why.contains("panic"), "{why}");
    // ... and restarts it: active, relaying, counters kept.
    wait_until("the restart", T, || {
        engine.get("panics").unwrap().status == Status::Active
    })
    .await;
    let _dest = relay(100, dest).await;
    let info = engine.get("panics").unwrap();
    assert!(info.error.is_none());
    assert_eq!(info.stats.packets, 200);
    assert!(!engine.inject_panic("nobody"));
    engine.shutdown().await;
    // The archive holds what was flushed before the panic and everything after.
    let archived = archived_numbers(dir.path(), "panics");
    assert!(
        archived.ends_with(&(100..200).collect::<Vec<_>>()),
        "{archived:?}"
    );
}

#[test]
fn a_removed_data_directory_loses_no_registration_and_archiving_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 20);
    let data = dir.path().join("data");
    let relay = spawn_relay(&config, &data, &[]);
    let port = free_port();
    assert_eq!(register_example(relay.api, "kept", port, json!({})).0, 201);
    send(relay.api, "kept", port, &example_range(0, 100));
    wait_for("the first file", T, || {
        get_channel(relay.api, "kept")["stats"]["archive_files"] == 1
    });
    // Everything goes: the registry file and the archives.
    std::fs::remove_dir_all(&data).unwrap();

    // The next registration writes the registry again, with every row.
    let (status, body) = register_example(relay.api, "new", free_port(), json!({}));
    assert_eq!(status, 201, "{body}");
    assert!(
        relay
            .log_text()
            .contains("registry file was removed while open")
    );
    let after = example_range(100, 100);
    send(relay.api, "kept", port, &after);
    wait_for("a new archive file", T, || {
        get_channel(relay.api, "kept")["stats"]["archive_files"] == 2
    });
    assert!(relay.terminate().success());
    assert!(archived_numbers(&data, "kept").ends_with(&(100..200).collect::<Vec<_>>()));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(speedrelay::engine::registry_path(&data).unwrap())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);

    // Both registrations survive a restart.
    let relay = spawn_relay(&config, &data, &[]);
    assert_eq!(get_channel(relay.api, "kept")["status"], "active");
    assert_eq!(get_channel(relay.api, "new")["status"], "active");
    assert!(relay.terminate().success());
}
