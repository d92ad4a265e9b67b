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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        // A second client has to wait for a slot. Nothing tells the client
        // when the server has accepted it and found no idle connection to
        // close; a pause makes that the likely order (if it is not, the
        // test passes without testing the retry, never fails spuriously).
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting
            .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
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
