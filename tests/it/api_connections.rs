//! The API's connection cap: a client that arrives while every connection
//! is inside a request is served as soon as one of them turns idle, not
//! when that idle connection's header-read timeout (10 s) closes it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use serde_json::json;
use speedrelay::api::{ApiOptions, serve};
use speedrelay::engine::{Engine, EngineOptions};
use tokio_util::sync::CancellationToken;

/// The inode of the server's socket for the connection from local port
/// `client` to `server`, from /proc/net/tcp: 0 while it waits in the
/// listen backlog, the socket's inode once the server has accepted it.
fn server_side_inode(server: u16, client: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.split(':').nth(1)?, 16).ok();
        (port(f[1]) == Some(server) && port(f[2]) == Some(client))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// The server runs on this test's one runtime thread, so once it has
/// accepted the waiting client (seen in /proc/net/tcp) it has also found
/// no idle connection to close, before the busy connection's request can
/// finish: the slot is then freed only by the retry.
#[tokio::test(flavor = "current_thread")]
async fn a_waiting_client_gets_the_slot_of_a_connection_that_turned_idle() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        EngineOptions::new(
            dir.path().join("data"),
            json!({"socket": {"bind": "127.0.0.1"}}),
        ),
        &[],
    )
    .await
    .expect("engine starts");
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let options = ApiOptions {
        max_connections: 1,
        ..ApiOptions::default()
    };
    let server = tokio::spawn(serve(listener, engine, options, shutdown.clone()));

    let outcome = tokio::task::spawn_blocking(move || {
        // The only slot: a request whose body is still coming. The server's
        // "100 Continue" says the request is being handled (busy).
        let mut busy = TcpStream::connect(addr).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        busy.write_all(
            b"POST /api/v1/channels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        let mut continue_line = [0u8; 25];
        busy.read_exact(&mut continue_line).unwrap();
        assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");
        // A second client has to wait for a slot: wait until the server
        // has accepted it (and so looked for an idle connection, found
        // none, and gone into its retry).
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting
            .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let client = waiting.local_addr().unwrap().port();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server_side_inode(addr.port(), client).unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "never accepted");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The first request completes; its connection stays open, idle.
        busy.write_all(b"{}").unwrap();
        let mut answer = [0u8; 12];
        busy.read_exact(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 4"), "{answer:?}");
        // Half the header-read timeout that would otherwise free the slot.
        waiting
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut head = [0u8; 15];
        waiting.read_exact(&mut head).map(|_| head)
    })
    .await
    .unwrap();
    let head = outcome.expect("the waiting client is answered before the idle one times out");
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    shutdown.cancel();
    let _ = server.await;
}
