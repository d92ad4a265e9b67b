//! Running under systemd (`Type=notify`): the relay tells the service
//! manager it is ready once its channels are bound and its API listens, and
//! that it is stopping when a signal arrives.

use crate::common;

use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;
use serde_json::json;

fn next_state(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 only after the configured channel relays and the API answers;
/// STOPPING=1 at SIGTERM, before the exit.
#[test]
fn ready_when_channels_and_api_are_up_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, d) = receiver();
    let port = free_port();
    let config = example_config(
        dir.path(),
        &format!(
            "channels:\n  - {{name: up, port: {port}, schema: example.avsc}}\n\
         socket: {{bind: 127.0.0.1}}\ndecimation: {{enabled: false}}\n\
         outputs: {{full_rate: {{address: 127.0.0.1, port: {}}}}}\n",
            d.port
        ),
    );
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let relay = spawn_relay(
        &config,
        &dir.path().join("data"),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    assert_eq!(next_state(&notify), "READY=1");
    // Ready means ready: the channel relays and the API answers at once.
    let records = example_records(3);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_eq!(recv_n(&dest, 3), records);
    assert_eq!(get_channel(relay.api, "up")["status"], json!("active"));
    let pid = relay.pid();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(next_state(&notify), "STOPPING=1");
    assert!(relay.terminate().success());
}

/// Without NOTIFY_SOCKET, or with one nobody listens on, the relay runs.
#[test]
fn a_missing_service_manager_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 50);
    let relay = spawn_relay(
        &config,
        &dir.path().join("data"),
        &[("NOTIFY_SOCKET", "/nonexistent/notify.sock")],
    );
    assert_eq!(
        register_example(relay.api, "a", free_port(), json!({})).0,
        201
    );
    relay.stop();
}
